#!/usr/bin/env python3
"""Writes the small real files the readers are tested on, with the
reference writers: anndata (h5ad, current and pre-0.8 categorical encodings, CSR / CSC /
dense X), and h5py in CellRanger's layout (10x h5, genes + peaks). The CSR h5ad and the 10x
file ship with the package (inst/extdata: examples); the other variants are test fixtures
(tests/testthat/fixtures). Run it with the bench venv
(bench/setup-venv.sh), from the repository root:

  ~/.cache/rscvi/bench-venv/bin/python tools/make-io-fixtures.py ../shared/data

CI only reads the files it wrote; it needs no Python.
"""

import gzip
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

data = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
out = Path("tests/testthat/fixtures")
out.mkdir(parents=True, exist_ok=True)
shipped = Path("inst/extdata")


def read_mtx(d: Path):
    with gzip.open(d / "matrix.mtx.gz", "rb") as fh:
        m = scipy.io.mmread(fh).tocsc()  # features x cells
    feats = pd.read_csv(d / "features.tsv.gz", sep="\t")
    barcodes = pd.read_csv(d / "barcodes.tsv.gz", header=None)[0].astype(str).to_numpy()
    obs = pd.read_csv(d / "obs.tsv.gz", sep="\t", dtype={"barcode": str})
    return m, feats, barcodes, obs


# --- h5ad: 40 cellbench cells x 30 of its most expressed genes -------------------------------
m, feats, barcodes, obs = read_mtx(data / "cellbench")
genes = feats["gene_id"].astype(str).to_numpy()
cells = np.r_[0:20, 600:620]
counts = m[:, cells].T.tocsr()  # cells x genes
top = np.argsort(-np.asarray(counts.sum(axis=0)).ravel())[:30]
top.sort()
x = counts[:, top].astype(np.float32)
o = obs.iloc[cells].reset_index(drop=True)
obs_df = pd.DataFrame(
    {
        "batch": pd.Categorical(o["batch"].astype(str)),
        "cell_line": pd.Categorical(
            o["cell_line"].astype(str), categories=["HCC827", "H838", "H2228", "H1975", "A549"]
        ),
        "n_counts": np.asarray(x.sum(axis=1)).ravel().astype(np.float64),
        "n_genes": np.asarray((x > 0).sum(axis=1)).ravel().astype(np.int32),
        "is_first_batch": (o["batch"] == o["batch"].iloc[0]).to_numpy(),
        "barcode": o["barcode"].astype(str).to_numpy(),
    },
    index=pd.Index(o["barcode"].astype(str).to_numpy()),
)
var_df = pd.DataFrame(
    {"mean": np.asarray(x.mean(axis=0)).ravel(), "symbol": genes[top]},
    index=pd.Index(genes[top]),
)
a = ad.AnnData(X=x, obs=obs_df, var=var_df)
a.layers["counts"] = x.copy()
a.layers["dense_log"] = np.log1p(x.toarray())
a.obsm["X_pca"] = np.random.default_rng(0).normal(size=(a.n_obs, 3)).astype(np.float32)
a.write_h5ad(shipped / "cellbench_small.h5ad")
b = a.copy()
b.X = sp.csc_matrix(b.X)
b.write_h5ad(out / "cellbench_csc.h5ad")
c = a.copy()
c.X = c.X.toarray()
c.write_h5ad(out / "cellbench_dense.h5ad")

# the pre-0.8 encoding: categoricals as integer codes with a "categories" reference into
# /obs/__categories (what old files and some tools still write), written by hand with h5py
with h5py.File(out / "cellbench_old_categories.h5ad", "w") as f:
    g = f.create_group("X")
    g.attrs["h5sparse_format"] = "csr"
    g.attrs["h5sparse_shape"] = np.array(x.shape)
    g.create_dataset("data", data=x.data)
    g.create_dataset("indices", data=x.indices)
    g.create_dataset("indptr", data=x.indptr)
    str_dt = h5py.string_dtype("utf-8")
    rec = np.empty(a.n_obs, dtype=[("index", object), ("batch", np.int8), ("n_counts", np.float64)])
    rec["index"] = a.obs_names.to_numpy()
    rec["batch"] = a.obs["batch"].cat.codes.to_numpy()
    rec["n_counts"] = a.obs["n_counts"].to_numpy()
    obs_g = f.create_group("obs")
    obs_g.attrs["_index"] = "index"
    obs_g.attrs.create("column-order", ["batch", "n_counts"], dtype=str_dt)
    obs_g.attrs["encoding-type"] = "dataframe"
    obs_g.attrs["encoding-version"] = "0.1.0"
    obs_g.create_dataset("index", data=rec["index"].astype(object), dtype=str_dt)
    cats = f.create_group("obs/__categories")
    cat_ds = cats.create_dataset(
        "batch", data=np.array(a.obs["batch"].cat.categories, dtype=object), dtype=str_dt
    )
    codes = obs_g.create_dataset("batch", data=rec["batch"])
    codes.attrs["categories"] = cat_ds.ref
    obs_g.create_dataset("n_counts", data=rec["n_counts"])
    var_g = f.create_group("var")
    var_g.attrs["_index"] = "index"
    var_g.attrs.create("column-order", np.array([], dtype=object), dtype=str_dt)
    var_g.attrs["encoding-type"] = "dataframe"
    var_g.attrs["encoding-version"] = "0.1.0"
    var_g.create_dataset("index", data=a.var_names.to_numpy().astype(object), dtype=str_dt)

# --- 10x h5 (CellRanger v3+ layout): 25 SNARE-seq2 nuclei, 20 genes + 15 peaks -----------------
m, feats, barcodes, obs = read_mtx(data / "mop_snareseq2")
ftype = feats["feature_type"].astype(str).to_numpy()
fid = feats["id"].astype(str).to_numpy()
fname = feats["name"].astype(str).to_numpy()
genes_i = np.flatnonzero(ftype == "Gene Expression")
peaks_i = np.flatnonzero(ftype == "Peaks")
nuclei = np.arange(25)
sub = m[:, nuclei]
gsum = np.asarray(sub[genes_i].sum(axis=1)).ravel()
psum = np.asarray(sub[peaks_i].sum(axis=1)).ravel()
rows = np.r_[np.sort(genes_i[np.argsort(-gsum)[:20]]), np.sort(peaks_i[np.argsort(-psum)[:15]])]
mat = sub[rows].tocsc().astype(np.int32)  # features x barcodes, CSC as CellRanger writes it
with h5py.File(shipped / "snareseq2_10x.h5", "w") as f:
    g = f.create_group("matrix")
    g.create_dataset("barcodes", data=np.array(barcodes[nuclei], dtype="S"))
    g.create_dataset("data", data=mat.data)
    g.create_dataset("indices", data=mat.indices.astype(np.int64))
    g.create_dataset("indptr", data=mat.indptr.astype(np.int64))
    g.create_dataset("shape", data=np.array(mat.shape, dtype=np.int32))
    fg = g.create_group("features")
    fg.create_dataset("id", data=np.array(fid[rows], dtype="S"))
    fg.create_dataset("name", data=np.array(fname[rows], dtype="S"))
    fg.create_dataset("feature_type", data=np.array(ftype[rows], dtype="S"))
    fg.create_dataset("genome", data=np.array(["mm10"] * len(rows), dtype="S"))
    fg.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))
    f.attrs["library_ids"] = np.array(["snareseq2"], dtype="S")
    f.attrs["filetype"] = "matrix"

# --- h5mu (mudata): the same nuclei as RNA + ATAC modalities, paired and mosaic ---------------
import mudata as md

o = obs.iloc[nuclei].reset_index(drop=True)
bc = barcodes[nuclei].astype(str)
obs_df = pd.DataFrame(
    {"library": pd.Categorical(o["library"].astype(str)), "cell_type": pd.Categorical(o["cell_type"].astype(str))},
    index=pd.Index(bc),
)
n_g = 20
rna = ad.AnnData(
    X=sp.csr_matrix(mat[:n_g].T.astype(np.float32)),
    obs=obs_df.copy(),
    var=pd.DataFrame(index=pd.Index(fid[rows[:n_g]])),
)
atac = ad.AnnData(
    X=sp.csr_matrix(mat[n_g:].T.astype(np.float32)),
    obs=obs_df.copy(),
    var=pd.DataFrame(index=pd.Index(fid[rows[n_g:]])),
)
md.MuData({"rna": rna, "atac": atac}).write(shipped / "snareseq2_small.h5mu")
md.MuData({"rna": rna[:20].copy(), "atac": atac[5:].copy()}).write(out / "snareseq2_mosaic.h5mu")

for p in sorted([*out.iterdir(), *shipped.glob("*.h5*")]):
    print(f"{p}: {p.stat().st_size} bytes")
