#!/usr/bin/env python3
"""Loads a folder rscvi wrote with save_model(format = "scvi-tools") into scvi-tools and
prints the largest difference between scvi-tools' latent means and rscvi's (latent.csv in
the folder, written by bench/check_scvi_tools_save.R).

  python bench/scvi_tools_load.py <model dir> <h5ad with the model's cells and genes>
"""

import sys

import anndata as ad
import numpy as np
import pandas as pd
import scvi

folder, h5ad = sys.argv[1], sys.argv[2]
adata = ad.read_h5ad(h5ad)
model = scvi.model.SCVI.load(folder, adata=adata)
ours = pd.read_csv(f"{folder}/latent.csv", index_col=0)
theirs = model.get_latent_representation()
diff = np.abs(theirs - ours.loc[adata.obs_names].values).max()
print(f"{folder}: scvi-tools {scvi.__version__} loaded it; largest latent difference {diff:.2e}")
