#!/usr/bin/env python3
"""Checks with Python's anndata that a file rscvi's write_h5ad() wrote opens and holds what
R holds (a helper for the round trip that CI, without Python, cannot run). Run from the
repository root with the bench venv (bench/setup-venv.sh):

  Rscript -e 'library(rscvi); sce <- read_h5ad(system.file("extdata", "cellbench_small.h5ad",
      package = "rscvi")); write_h5ad(sce, "/tmp/rscvi-written.h5ad", overwrite = TRUE)'
  ~/.cache/rscvi/bench-venv/bin/python tools/check-h5ad-written.py /tmp/rscvi-written.h5ad \
      inst/extdata/cellbench_small.h5ad
"""

import sys

import anndata as ad
import numpy as np

written, original = ad.read_h5ad(sys.argv[1]), ad.read_h5ad(sys.argv[2])
assert written.shape == original.shape, (written.shape, original.shape)
assert list(written.obs_names) == list(original.obs_names)
assert list(written.var_names) == list(original.var_names)
assert (written.X != original.X).nnz == 0
for layer in original.layers:
    a, b = written.layers[layer], original.layers[layer]
    a = a.toarray() if hasattr(a, "toarray") else a
    b = b.toarray() if hasattr(b, "toarray") else b
    assert np.allclose(a, b), layer
for col in original.obs.columns:
    a, b = written.obs[col], original.obs[col]
    if hasattr(b, "cat"):
        assert list(a.cat.categories) == list(b.cat.categories), col
    assert (a.astype(str) == b.astype(str)).all(), col
for key in original.obsm:
    assert np.allclose(written.obsm[key], original.obsm[key]), key
print(f"{sys.argv[1]}: opens in anndata and matches {sys.argv[2]}")
