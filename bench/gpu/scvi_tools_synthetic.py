#!/usr/bin/env python3
"""scvi-tools side of the rscvi GPU benchmark on a synthetic .npy CSR dataset.

Reads the dataset that `rscvi-cli synth` writes (DIR/indptr.npy int64, indices.npy int32,
data.npy float32 counts, batch.npy int32 codes, meta.json), trains scvi-tools' SCVI with
its defaults and the batch covariate, and writes OUT/metrics.json with the keys of
`rscvi-cli bench` where they exist:

  seconds_per_epoch   train() wall time / epochs (includes Lightning's set-up and the one
                      validation pass after the last epoch, as rscvi's mean would)
  epoch_seconds       wall time of every training epoch (on_train_epoch_start ->
                      on_train_epoch_end; the last one includes the validation pass, which
                      Lightning runs before on_train_epoch_end)
  epoch_train_seconds epoch_seconds minus the validation time inside that epoch
  elbo_train_last     model.history["elbo_train"] at the last epoch
  elbo_validation     model.history["elbo_validation"] at the last epoch
  n_cells, batch_size, device
  + torch_max_memory_allocated_mib / _reserved_mib, settings, versions

Settings are scvi-tools 1.5.1 defaults except those the command line names:
  train(max_epochs=E, batch_size=B, accelerator=..., devices=1,
        check_val_every_n_epoch=E, train_size=0.9)
train_size=0.9 is the value the default (None) stands for; the default additionally moves a
last training minibatch of 1-2 cells into validation, which --train-size 0 restores (None).
`--load-sparse-tensor` and `--pin-memory` switch on the DataSplitter options of the same
names (both off by default in scvi-tools; EXPERIMENTAL / non-default, noted in metrics.json).

  python bench/gpu/scvi_tools_synthetic.py --data DIR --epochs 5 --batch-size 1024 \
      --out OUT [--accelerator gpu|cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="directory of the .npy dataset")
    p.add_argument("--epochs", required=True, type=int)
    p.add_argument("--batch-size", required=True, type=int)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--accelerator", default="gpu", choices=["gpu", "cpu", "cuda", "auto"])
    p.add_argument("--seed", type=int, default=0, help="scvi.settings.seed")
    p.add_argument("--train-size", type=float, default=0.9,
                   help="train() train_size; 0 passes None (the scvi-tools default)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: leave torch's default)")
    p.add_argument("--load-sparse-tensor", action="store_true",
                   help="train(load_sparse_tensor=True): non-default, EXPERIMENTAL in scvi-tools")
    p.add_argument("--pin-memory", action="store_true",
                   help="datasplitter_kwargs={'pin_memory': True}: non-default")
    p.add_argument("--max-cells", type=int, default=None,
                   help="use only the first N cells of the dataset (CSR row prefix)")
    return p.parse_args(argv)


def load_npy_dataset(data_dir: Path, max_cells: int | None = None):
    """The .npy CSR (cells x genes) + batch codes as an AnnData with float32 CSR X."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    meta = json.loads((data_dir / "meta.json").read_text())
    indptr = np.load(data_dir / "indptr.npy", mmap_mode="r")
    batch = np.load(data_dir / "batch.npy")
    n_cells, n_genes = int(meta["n_cells"]), int(meta["n_genes"])
    n_batch = int(meta.get("n_batch", int(batch.max()) + 1))
    if indptr.shape != (n_cells + 1,) or batch.shape != (n_cells,):
        raise ValueError(f"indptr {indptr.shape} / batch {batch.shape} vs n_cells {n_cells}")
    nnz = int(indptr[-1])
    if "nnz" in meta and int(meta["nnz"]) != nnz:
        raise ValueError(f"meta nnz {meta['nnz']} != indptr[-1] {nnz}")
    if max_cells is not None and max_cells < n_cells:
        n_cells, nnz = max_cells, int(indptr[max_cells])
        batch = batch[:n_cells]
    indices = np.load(data_dir / "indices.npy", mmap_mode="r")[:nnz]
    data = np.load(data_dir / "data.npy", mmap_mode="r")[:nnz]
    # one index dtype for indptr and indices (scipy would otherwise upcast both to int64)
    idx_t = np.int32 if nnz < np.iinfo(np.int32).max else np.int64
    indptr = np.ascontiguousarray(indptr[: n_cells + 1], dtype=idx_t)
    indices = np.ascontiguousarray(indices, dtype=idx_t)
    data = np.ascontiguousarray(data, dtype=np.float32)
    if n_cells and (batch.min() < 0 or batch.max() >= n_batch):
        raise ValueError(f"batch codes outside 0..{n_batch - 1}")
    x = sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes), copy=False)
    # categories in code order, so scvi-tools' batch encoding equals the codes
    obs = pd.DataFrame(
        {"batch": pd.Categorical.from_codes(batch.astype(np.int64),
                                            categories=[f"b{i}" for i in range(n_batch)])},
        index=pd.Index([f"c{i}" for i in range(n_cells)], dtype=str),
    )
    var = pd.DataFrame(index=pd.Index([f"g{j}" for j in range(n_genes)], dtype=str))
    return ad.AnnData(X=x, obs=obs, var=var), meta


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    import numpy as np
    import torch
    from lightning.pytorch.callbacks import Callback

    if args.threads:
        torch.set_num_threads(args.threads)

    import scvi

    scvi.settings.seed = args.seed
    accel = "gpu" if args.accelerator == "cuda" else args.accelerator
    on_cuda = accel in ("gpu", "auto") and torch.cuda.is_available()
    if accel == "gpu" and not torch.cuda.is_available():
        print("error: --accelerator gpu but torch.cuda.is_available() is False", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    adata, meta = load_npy_dataset(args.data, args.max_cells)
    load_seconds = time.perf_counter() - t0
    n_batch = adata.obs["batch"].cat.categories.size
    print(f"data: {adata.n_obs} cells x {adata.n_vars} genes, nnz {adata.X.nnz}, "
          f"{n_batch} batches ({load_seconds:.1f} s to load)", flush=True)

    t0 = time.perf_counter()
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.SCVI(adata)
    setup_seconds = time.perf_counter() - t0

    def sync():
        if on_cuda:
            torch.cuda.synchronize()

    class EpochTimer(Callback):
        """Clock reads at epoch / validation boundaries; touches neither model nor RNG."""

        def __init__(self):
            self.epoch_seconds, self.val_in_epoch = [], []
            self._t = self._v = None
            self._val_acc = 0.0
            self.first_epoch_start = None

        def on_train_epoch_start(self, trainer, pl_module):
            sync()
            self._t = time.perf_counter()
            if self.first_epoch_start is None:
                self.first_epoch_start = self._t
            self._val_acc = 0.0

        def on_validation_epoch_start(self, trainer, pl_module):
            sync()
            self._v = time.perf_counter()

        def on_validation_epoch_end(self, trainer, pl_module):
            sync()
            if self._v is not None:
                self._val_acc += time.perf_counter() - self._v
                self._v = None

        def on_train_epoch_end(self, trainer, pl_module):
            sync()
            self.epoch_seconds.append(time.perf_counter() - self._t)
            self.val_in_epoch.append(self._val_acc)
            e = len(self.epoch_seconds)
            print(f"epoch {e}/{args.epochs} {self.epoch_seconds[-1]:.3f} s"
                  + (f" (validation {self._val_acc:.3f} s)" if self._val_acc else ""), flush=True)

    timer = EpochTimer()
    train_kwargs = dict(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        accelerator=accel,
        devices=1,
        check_val_every_n_epoch=args.epochs,
        train_size=args.train_size if args.train_size > 0 else None,
        enable_progress_bar=False,
        callbacks=[timer],
    )
    non_default = {}
    if args.load_sparse_tensor:
        train_kwargs["load_sparse_tensor"] = True
        non_default["load_sparse_tensor"] = True
    if args.pin_memory:
        train_kwargs["datasplitter_kwargs"] = {"pin_memory": True}
        non_default["datasplitter_kwargs.pin_memory"] = True

    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    model.train(**train_kwargs)
    sync()
    train_seconds = time.perf_counter() - t0
    train_cpu_seconds = time.process_time() - c0
    startup_seconds = (timer.first_epoch_start - t0) if timer.first_epoch_start else None

    mem = {}
    if on_cuda:
        mib = 1024.0 ** 2
        mem = {
            "torch_max_memory_allocated_mib": torch.cuda.max_memory_allocated() / mib,
            "torch_max_memory_reserved_mib": torch.cuda.max_memory_reserved() / mib,
        }

    def last(key):
        df = model.history.get(key)
        if df is None or len(df) == 0:
            return None
        s = df.iloc[:, 0].dropna()
        return float(s.iloc[-1]) if len(s) else None

    epochs_done = len(timer.epoch_seconds)
    train_only = [e - v for e, v in zip(timer.epoch_seconds, timer.val_in_epoch)]
    steady = train_only[1:] if len(train_only) > 1 else train_only

    from importlib.metadata import version as pkg_version

    def v(name):
        try:
            return pkg_version(name)
        except Exception:
            return None

    dev_name = torch.cuda.get_device_name(0) if on_cuda else platform.processor() or "cpu"
    metrics = {
        "tool": "scvi-tools",
        "seconds_per_epoch": train_seconds / max(epochs_done, 1),
        "epoch_seconds": timer.epoch_seconds,
        "epoch_train_seconds": train_only,
        "validation_seconds": float(sum(timer.val_in_epoch)),
        "seconds_per_epoch_steady_median": float(np.median(steady)) if steady else None,
        "elbo_train_last": last("elbo_train"),
        "elbo_validation": last("elbo_validation"),
        "reconstruction_loss_train_last": last("reconstruction_loss_train"),
        "kl_local_train_last": last("kl_local_train"),
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_batch": int(n_batch),
        "nnz": int(adata.X.nnz),
        "n_train": int(len(model.train_indices)),
        "n_validation": int(len(model.validation_indices)),
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "epochs_completed": epochs_done,
        "device": f"cuda ({dev_name})" if on_cuda else "cpu",
        "accelerator": accel,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "train_startup_seconds": startup_seconds,
        "load_seconds": load_seconds,
        "setup_seconds": setup_seconds,
        "total_seconds": time.perf_counter() - t_start,
        **mem,
        "torch_num_threads": torch.get_num_threads(),
        "dl_num_workers": scvi.settings.dl_num_workers,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "train_kwargs": {k: val for k, val in train_kwargs.items() if k != "callbacks"},
        "non_default_options": non_default,
        "seed": args.seed,
        "data_meta": meta,
        "versions": {
            "scvi-tools": scvi.__version__,
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "lightning": v("lightning"),
            "anndata": v("anndata"),
            "numpy": np.__version__,
            "scipy": v("scipy"),
            "python": platform.python_version(),
        },
        "command": " ".join([Path(sys.argv[0]).name]
                            + (list(argv) if argv is not None else sys.argv[1:])),
    }
    with open(args.out / "metrics.json", "w") as fh:
        json.dump(metrics, fh, indent=2)
        fh.write("\n")
    print(json.dumps({k: metrics[k] for k in (
        "seconds_per_epoch", "seconds_per_epoch_steady_median", "elbo_train_last",
        "elbo_validation", "n_cells", "batch_size", "device")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
