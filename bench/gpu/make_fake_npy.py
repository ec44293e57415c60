#!/usr/bin/env python3
"""Write a fake count dataset in the .npy CSR format of `rscvi-cli synth`.

For testing bench/gpu/scvi_tools_synthetic.py without rscvi, and as session.sh's fallback
data source when `rscvi-cli synth` fails (timings only; the counts are not SCVI draws).

Counts: x[c, g] ~ Poisson(s_c * b_{batch(c), g} * m_g) with log-normal gene means m_g,
cell size factors s_c and per-batch gene effects b; `--mean` scales m so that a typical
density (fraction of non-zeros) near that of the cellbench singlets (~0.4) comes out.

  python bench/gpu/make_fake_npy.py --cells 2000 --genes 2000 --batches 5 --out /tmp/fake
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, required=True)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--mean", type=float, default=0.6, help="median gene mean (counts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=20000, help="cells per worker task")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def _params(n_genes, n_batches, mean, seed):
    rng = np.random.default_rng([seed, 0])
    m = mean * rng.lognormal(0.0, 1.2, size=n_genes)
    b = rng.lognormal(0.0, 0.3, size=(n_batches, n_genes))
    return m, b


def _chunk(task):
    start, stop, n_genes, n_batches, mean, seed = task
    m, b = _params(n_genes, n_batches, mean, seed)
    rng = np.random.default_rng([seed, 1, start])
    n = stop - start
    batch = rng.integers(0, n_batches, size=n).astype(np.int32)
    s = rng.lognormal(0.0, 0.5, size=n)
    lam = (s[:, None] * m[None, :]) * b[batch]
    x = rng.poisson(lam).astype(np.float32)
    rows, cols = np.nonzero(x)
    counts = np.bincount(rows, minlength=n).astype(np.int64)
    return batch, counts, cols.astype(np.int32), x[rows, cols]


def main(argv=None) -> int:
    a = parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    tasks = [(i, min(i + a.chunk, a.cells), a.genes, a.batches, a.mean, a.seed)
             for i in range(0, a.cells, a.chunk)]
    if a.workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(a.workers) as ex:
            parts = list(ex.map(_chunk, tasks))
    else:
        parts = [_chunk(t) for t in tasks]
    batch = np.concatenate([p[0] for p in parts])
    indptr = np.zeros(a.cells + 1, dtype=np.int64)
    np.cumsum(np.concatenate([p[1] for p in parts]), out=indptr[1:])
    nnz = int(indptr[-1])
    indices = np.empty(nnz, dtype=np.int32)
    data = np.empty(nnz, dtype=np.float32)
    pos = 0
    for p in parts:
        k = p[2].size
        indices[pos:pos + k], data[pos:pos + k] = p[2], p[3]
        pos += k
    del parts
    np.save(a.out / "indptr.npy", indptr)
    np.save(a.out / "indices.npy", indices)
    np.save(a.out / "data.npy", data)
    np.save(a.out / "batch.npy", batch)
    meta = {"n_cells": a.cells, "n_genes": a.genes, "n_batch": a.batches, "nnz": nnz,
            "source": "make_fake_npy.py", "seed": a.seed}
    (a.out / "meta.json").write_text(json.dumps(meta) + "\n")
    print(json.dumps({**meta, "density": nnz / (a.cells * a.genes)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
