"""Writes the synthetic .npy CSR dataset of `rscvi-cli synth` as an AnnData .h5ad file
(X sparse CSR, obs with a categorical `batch`), streaming the arrays from memory-mapped .npy
files so that an atlas-sized file is written in bounded memory. Checks that anndata opens
the result. Used by bench/bench_io.R (out-of-core training).

    python bench/npy_to_h5ad.py SYNTH_DIR OUT.h5ad
"""

import json
import sys

import anndata as ad
import h5py
import numpy as np

CHUNK = 50_000_000


def strings(group, name, values):
    d = group.create_dataset(name, data=np.array(values, dtype=object),
                             dtype=h5py.string_dtype())
    d.attrs["encoding-type"] = "string-array"
    d.attrs["encoding-version"] = "0.2.0"


def frame(group, index, columns):
    group.attrs["encoding-type"] = "dataframe"
    group.attrs["encoding-version"] = "0.2.0"
    group.attrs["_index"] = "_index"
    # anndata writes no columns as an empty float array (strings have no empty HDF5 type)
    group.attrs["column-order"] = (np.array(list(columns), dtype=object) if columns
                                   else np.array([], dtype=np.float64))
    strings(group, "_index", index)


def copy_streamed(group, name, source, dtype):
    d = group.create_dataset(name, shape=source.shape, dtype=dtype)
    for start in range(0, source.shape[0], CHUNK):
        d[start:start + CHUNK] = source[start:start + CHUNK]


def main(src, out):
    meta = json.load(open(f"{src}/meta.json"))
    n, g = meta["n_cells"], meta["n_genes"]
    arrays = {k: np.load(f"{src}/{k}.npy", mmap_mode="r")
              for k in ("indptr", "indices", "data", "batch")}
    with h5py.File(out, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        x = f.create_group("X")
        x.attrs["encoding-type"] = "csr_matrix"
        x.attrs["encoding-version"] = "0.1.0"
        x.attrs["shape"] = np.array([n, g], dtype=np.int64)
        copy_streamed(x, "indptr", arrays["indptr"], np.int64)
        copy_streamed(x, "indices", arrays["indices"], np.int32)
        copy_streamed(x, "data", arrays["data"], np.float32)
        obs = f.create_group("obs")
        frame(obs, [f"c{i + 1}" for i in range(n)], ["batch"])
        batch = obs.create_group("batch")
        batch.attrs["encoding-type"] = "categorical"
        batch.attrs["encoding-version"] = "0.2.0"
        batch.attrs["ordered"] = False
        strings(batch, "categories", [f"b{k}" for k in range(meta["n_batch"])])
        batch.create_dataset("codes", data=np.asarray(arrays["batch"], dtype=np.int8))
        frame(f.create_group("var"), [f"g{j + 1}" for j in range(g)], [])
    backed = ad.read_h5ad(out, backed="r")
    assert backed.shape == (n, g), backed.shape
    assert list(backed.obs["batch"].cat.categories) == [f"b{k}" for k in range(meta["n_batch"])]
    print(json.dumps({"h5ad": out, "n_cells": n, "n_genes": g, "nnz": meta["nnz"]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
