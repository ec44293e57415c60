#!/usr/bin/env python3
"""scArches in scvi-tools 1.5.1: an SCVI reference trained on the cells whose obs column
`is_query` is false and saved (model.save), then the query cells mapped onto it
(load_query_data, query training with weight_decay 0); batch_key "batch". Writes the
reference folder (read by rscvi in bench/bench_scvi_tools_arches.R) and both latent spaces.

  python bench/scvi_tools_arches.py <h5ad> <out dir> <epochs> <seed>
"""

import sys
from pathlib import Path

import anndata as ad
import pandas as pd
import scvi

h5ad, out, epochs, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
scvi.settings.seed = seed
adata = ad.read_h5ad(h5ad)
is_query = adata.obs["is_query"].values.astype(bool)
ref = adata[~is_query].copy()
query = adata[is_query].copy()
scvi.model.SCVI.setup_anndata(ref, batch_key="batch")
model = scvi.model.SCVI(ref)
model.train(max_epochs=epochs, enable_progress_bar=False)
model.save(out / "reference", overwrite=True)
pd.DataFrame(model.get_latent_representation(), index=ref.obs_names).to_csv(
    out / "reference_latent.csv")
q = scvi.model.SCVI.load_query_data(query, str(out / "reference"))
q.train(max_epochs=epochs, plan_kwargs=dict(weight_decay=0.0), enable_progress_bar=False)
pd.DataFrame(q.get_latent_representation(), index=query.obs_names).to_csv(out / "query_latent.csv")
print("scvi-tools", scvi.__version__, "done")
