#!/usr/bin/env python3
"""scvi-tools reference side of the rscvi SCVI benchmark (cellbench data).

Trains scvi-tools' SCVI with its defaults on the cellbench singlets (hvg2000 genes)
and records the numbers that rscvi is compared against:

  out/metrics.json  timings, validation / all-cell ELBO (as a per-cell loss, i.e.
                    -model.get_elbo(): positive, lower is better), validation
                    marginal log-likelihood (higher is better), split check, versions
  out/latent.csv    posterior means of z, one row per singlet (barcode + 10 columns)
  out/history.csv   model.history, one row per epoch

Run it with the interpreter of the venv that bench/setup-venv.sh builds, e.g.

  nice -n 10 ~/.cache/rscvi/bench-venv/bin/python bench/scvi_tools_reference.py \
      --data /work/shared/data/cellbench --epochs 50 --seed 0 --threads 2 \
      --out bench/results/scvi-tools-50
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="cellbench directory")
    p.add_argument("--epochs", required=True, type=int, help="max_epochs for train()")
    p.add_argument("--seed", type=int, default=0, help="scvi.settings.seed")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--val-every",
        type=int,
        default=None,
        help="check_val_every_n_epoch (default: --epochs, i.e. one validation pass "
        "after the last epoch, which leaves training untouched); 0 = never",
    )
    p.add_argument("--marginal-ll-samples", type=int, default=1000)
    p.add_argument(
        "--batch-representation",
        choices=["one-hot", "embedding"],
        default="one-hot",
        help="SCVI(batch_representation=...)",
    )
    p.add_argument(
        "--torch-seed",
        type=int,
        default=None,
        help="re-seed torch after scvi.settings.seed: same train/validation split (NumPy, "
        "from --seed) but other weight init / minibatch / sampling draws; for measuring "
        "run-to-run spread",
    )
    return p.parse_args(argv)


def load_cellbench(data_dir: Path):
    """Singlets x hvg2000 genes as an AnnData (counts as float32 CSR)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.io
    import scipy.sparse as sp

    with gzip.open(data_dir / "matrix.mtx.gz", "rb") as fh:
        genes_by_cells = scipy.io.mmread(fh)
    counts = sp.csr_matrix(genes_by_cells.T, dtype=np.float32)  # cells x genes

    genes = pd.read_csv(data_dir / "features.tsv.gz", sep="\t")["gene_id"].astype(str).to_numpy()
    obs = pd.read_csv(data_dir / "obs.tsv.gz", sep="\t", dtype={"barcode": str})
    barcodes = pd.read_csv(data_dir / "barcodes.tsv.gz", header=None)[0].astype(str).to_numpy()
    if counts.shape != (len(barcodes), len(genes)):
        raise ValueError(f"matrix {counts.shape} vs {len(barcodes)} barcodes x {len(genes)} genes")
    if not np.array_equal(obs["barcode"].to_numpy(), barcodes):
        raise ValueError("obs.tsv.gz rows are not in barcodes.tsv.gz order")

    hvg = [line.strip() for line in open(data_dir / "hvg2000.txt") if line.strip()]
    gene_pos = {g: i for i, g in enumerate(genes)}
    missing = [g for g in hvg if g not in gene_pos]
    if missing:
        raise ValueError(f"{len(missing)} hvg2000 genes not in features.tsv.gz, e.g. {missing[:3]}")
    gene_idx = np.array([gene_pos[g] for g in hvg])
    if not np.all(np.diff(gene_idx) > 0):
        print("note: hvg2000.txt is not in matrix order; using file order", file=sys.stderr)

    keep = (obs["demuxlet_cls"] == "SNG").to_numpy()
    x = counts[keep][:, gene_idx]
    o = obs.loc[keep, ["barcode", "batch", "cell_line"]].reset_index(drop=True)
    o.index = o.pop("barcode").to_numpy()
    o.index.name = None
    o["batch"] = o["batch"].astype("category")
    o["cell_line"] = o["cell_line"].astype("category")
    adata = ad.AnnData(X=x, obs=o, var=pd.DataFrame(index=pd.Index(hvg, dtype=str)))
    return adata


def history_frame(history: dict):
    """model.history (dict of one-column DataFrames) -> one table indexed by epoch."""
    import pandas as pd

    frames = []
    for key, df in history.items():
        if df is None or len(df) == 0:
            continue
        f = df.copy()
        if f.shape[1] == 1:
            f.columns = [key]
        frames.append(f)
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, axis=1, join="outer").sort_index()
    out.index.name = "epoch"
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    import numpy as np
    import pandas as pd
    import torch
    from lightning.pytorch.callbacks import Callback

    torch.set_num_threads(args.threads)

    import scvi

    scvi.settings.seed = args.seed  # seed_everything: torch, numpy, random
    if args.torch_seed is not None:
        torch.manual_seed(args.torch_seed)
    # keep the worker/thread setup explicit and identical between runs
    scvi.settings.dl_num_workers = 0

    t0 = time.perf_counter()
    adata = load_cellbench(args.data)
    load_seconds = time.perf_counter() - t0
    print(f"data: {adata.n_obs} singlets x {adata.n_vars} genes "
          f"({adata.obs['batch'].nunique()} batches, {adata.obs['cell_line'].nunique()} cell lines)")

    scvi.model.SCVI.setup_anndata(adata, batch_key="batch", labels_key="cell_line")
    model = scvi.model.SCVI(adata, batch_representation=args.batch_representation)

    class EpochTimer(Callback):
        """Wall time of every training epoch (read-only, does not touch the model or RNG)."""

        def __init__(self):
            self.times = []
            self._start = None

        def on_train_epoch_start(self, trainer, pl_module):
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(time.perf_counter() - self._start)

    timer = EpochTimer()
    val_every = args.epochs if args.val_every is None else args.val_every
    train_kwargs = dict(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        callbacks=[timer],
    )
    if val_every > 0:
        train_kwargs["check_val_every_n_epoch"] = val_every

    load_before = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    model.train(**train_kwargs)
    train_seconds = time.perf_counter() - t0
    train_cpu_seconds = time.process_time() - c0
    load_after = os.getloadavg()
    spe = train_seconds / args.epochs
    print(f"train: {train_seconds:.2f} s for {args.epochs} epochs = {spe:.4f} s/epoch")

    # --- split check -------------------------------------------------------
    val_idx = np.asarray(model.validation_indices)
    val_barcodes = adata.obs_names[val_idx].tolist()
    ref_path = args.data / "validation_cells_seed0.txt"
    ref = [l.strip() for l in open(ref_path) if l.strip()] if ref_path.exists() else []
    same_order = val_barcodes == ref
    same_set = set(val_barcodes) == set(ref) and len(val_barcodes) == len(ref)
    print(f"validation cells: {len(val_barcodes)}; match {ref_path.name}: "
          f"set={same_set} order={same_order}")
    if args.seed != 0:
        print("note: the reference file is for seed 0")

    # --- metrics -----------------------------------------------------------
    elbo_val = -float(model.get_elbo(indices=val_idx))  # get_elbo: mean per-cell ELBO (negative)
    elbo_all = -float(model.get_elbo())
    recon_val = float(model.get_reconstruction_error(indices=val_idx)["reconstruction_loss"])
    t0 = time.perf_counter()
    mll_val = float(model.get_marginal_ll(indices=val_idx, n_mc_samples=args.marginal_ll_samples))
    mll_seconds = time.perf_counter() - t0
    print(f"elbo_validation (loss) = {elbo_val:.4f}")
    print(f"elbo_all (loss)        = {elbo_all:.4f}")
    print(f"marginal_ll_validation = {mll_val:.4f}  ({mll_seconds:.2f} s)")

    latent = model.get_latent_representation()
    lat = pd.DataFrame(latent, index=adata.obs_names,
                       columns=[f"z{i + 1}" for i in range(latent.shape[1])])
    lat.index.name = "barcode"
    lat.to_csv(args.out / "latent.csv", float_format="%.7g")

    hist = history_frame(model.history)
    if len(timer.times) == len(hist):
        hist["epoch_wall_seconds"] = timer.times
    hist.to_csv(args.out / "history.csv", float_format="%.7g")

    def last_of(key):
        if key in hist.columns:
            s = hist[key].dropna()
            return float(s.iloc[-1]) if len(s) else None
        return None

    from importlib.metadata import version as pkg_version

    def v(name):
        try:
            return pkg_version(name)
        except Exception:
            return None

    times = timer.times
    steady = times[1:] if len(times) > 1 else times
    metrics = {
        "n_epochs": args.epochs,
        "epochs_completed": len(times),
        "seed": args.seed,
        "torch_seed": args.torch_seed,
        "threads": args.threads,
        "torch_num_threads": torch.get_num_threads(),
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_train": int(len(model.train_indices)),
        "n_validation": int(len(val_idx)),
        "check_val_every_n_epoch": val_every if val_every > 0 else None,
        "load_seconds": load_seconds,
        "train_seconds": train_seconds,
        "seconds_per_epoch": spe,
        "train_cpu_seconds": train_cpu_seconds,
        "loadavg_1min_before_after_train": [load_before[0], load_after[0]],
        "niceness": os.nice(0),
        "epoch_seconds_median": float(np.median(times)) if times else None,
        "epoch_seconds_min": float(np.min(times)) if times else None,
        "epoch_seconds_p90": float(np.percentile(times, 90)) if times else None,
        "epoch_seconds_mean_after_first": float(np.mean(steady)) if steady else None,
        "epoch_seconds_first": float(times[0]) if times else None,
        "elbo_validation": elbo_val,
        "elbo_all": elbo_all,
        "reconstruction_loss_validation": recon_val,
        "marginal_ll_validation": mll_val,
        "marginal_ll_n_mc_samples": args.marginal_ll_samples,
        "marginal_ll_seconds": mll_seconds,
        "history_last": {
            "elbo_train": last_of("elbo_train"),
            "elbo_validation": last_of("elbo_validation"),
            "reconstruction_loss_train": last_of("reconstruction_loss_train"),
            "kl_local_train": last_of("kl_local_train"),
        },
        "validation_matches_reference": bool(same_set and same_order),
        "validation_same_set_as_reference": bool(same_set),
        "validation_same_order_as_reference": bool(same_order),
        "sign_conventions": (
            "elbo_* = -model.get_elbo(): mean per-cell negative ELBO (unit KL weight), "
            "lower is better; marginal_ll_validation = model.get_marginal_ll(): mean of "
            "per-minibatch means of log p(x), higher is better"
        ),
        "versions": {
            "scvi-tools": scvi.__version__,
            "torch": torch.__version__,
            "lightning": v("lightning"),
            "anndata": v("anndata"),
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
    }
    with open(args.out / "metrics.json", "w") as fh:
        json.dump(metrics, fh, indent=2)
        fh.write("\n")
    print(f"wrote {args.out}/metrics.json, latent.csv, history.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
