#!/usr/bin/env python3
"""Loads a folder rscvi wrote with save_model(format = "scvi-tools") into scvi-tools and
prints the largest difference between scvi-tools' latent means and rscvi's (latent.csv in
the folder; for GIMVI latent_seq.csv and latent_spatial.csv; written by
bench/check_scvi_tools_save.R).

  python bench/scvi_tools_load.py <model dir> <h5ad with the model's cells and genes>
  python bench/scvi_tools_load.py <GIMVI model dir> <sequencing h5ad> <spatial h5ad>
  python bench/scvi_tools_load.py <MULTIVI model dir> <h5mu with modalities rna, atac, ...>
"""

import sys

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scvi

folder, files = sys.argv[1], sys.argv[2:]
if files[0].endswith(".h5mu"):
    adatas = [md.read_h5mu(files[0])]
    model = scvi.model.MULTIVI.load(folder, adata=adatas[0])
    theirs, names = [model.get_latent_representation()], ["latent"]
else:
    adatas = [ad.read_h5ad(f) for f in files]
if files[0].endswith(".h5mu"):
    pass
elif len(adatas) == 1:
    model = scvi.model.SCVI.load(folder, adata=adatas[0])
    theirs, names = [model.get_latent_representation()], ["latent"]
else:
    model = scvi.external.GIMVI.load(folder, adata_seq=adatas[0], adata_spatial=adatas[1])
    theirs, names = model.get_latent_representation(), ["latent_seq", "latent_spatial"]
diff = 0.0
for adata, z, name in zip(adatas, theirs, names, strict=True):
    ours = pd.read_csv(f"{folder}/{name}.csv", index_col=0)
    diff = max(diff, np.abs(z - ours.loc[adata.obs_names].values).max())
print(f"{folder}: scvi-tools {scvi.__version__} loaded it; largest latent difference {diff:.2e}")
