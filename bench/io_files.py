#!/usr/bin/env python3
"""Writes the files bench/bench_io.R reads: all MOp SNARE-seq2 nuclei (genes + peaks) as an
h5ad (anndata, CSR float32 counts, categorical obs) and as a CellRanger-layout h5 (h5py).

  python bench/io_files.py ../shared/data/mop_snareseq2 <out dir>
"""

import gzip
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io

src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
with gzip.open(src / "matrix.mtx.gz", "rb") as fh:
    m = scipy.io.mmread(fh).tocsc()  # features x cells
feats = pd.read_csv(src / "features.tsv.gz", sep="\t")
barcodes = pd.read_csv(src / "barcodes.tsv.gz", header=None)[0].astype(str).to_numpy()
obs = pd.read_csv(src / "obs.tsv.gz", sep="\t", dtype={"barcode": str})
o = pd.DataFrame(
    {"library": pd.Categorical(obs["library"].astype(str)),
     "cell_type": pd.Categorical(obs["cell_type"].astype(str))},
    index=pd.Index(obs["barcode"].astype(str).to_numpy()),
)
var = pd.DataFrame({"feature_type": pd.Categorical(feats["feature_type"].astype(str))},
                   index=pd.Index(feats["id"].astype(str).to_numpy()))
ad.AnnData(X=m.T.tocsr().astype(np.float32), obs=o, var=var).write_h5ad(out / "mop_snareseq2.h5ad")
mat = m.astype(np.int32)
with h5py.File(out / "mop_snareseq2_10x.h5", "w") as f:
    g = f.create_group("matrix")
    g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
    g.create_dataset("data", data=mat.data)
    g.create_dataset("indices", data=mat.indices.astype(np.int64))
    g.create_dataset("indptr", data=mat.indptr.astype(np.int64))
    g.create_dataset("shape", data=np.array(mat.shape, dtype=np.int32))
    fg = g.create_group("features")
    for key, col in [("id", "id"), ("name", "name"), ("feature_type", "feature_type")]:
        fg.create_dataset(key, data=np.array(feats[col].astype(str), dtype="S"))
    fg.create_dataset("genome", data=np.array(["mm10"] * mat.shape[0], dtype="S"))
print(f"wrote {out}")
