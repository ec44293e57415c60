#!/usr/bin/env python3
"""scvi-tools reference side of the rscvi GIMVI imputation benchmark (leave-genes-out).

For one dataset pair (scRNA-seq reference + spatial panel) and each of five gene folds,
the genes of the fold are hidden from the spatial side, scvi-tools' GIMVI (defaults,
200 epochs) is trained on the seq cells (all panel genes) and the spatial cells (train
genes only), and the hidden genes are imputed for the spatial cells. A deterministic
kNN baseline (no model) is scored the same way. rscvi replicates this protocol exactly.

Datasets (under --data):
  merfish  seq = merfish_hypothalamus/scrna (1,308 cells), spatial =
           merfish_hypothalamus/spatial (750 cells), the 134 panel genes in spatial
           order; folds from merfish_hypothalamus/folds.tsv
  osmfish  spatial = osmfish cells with Valid == 1, seq = mop_snareseq2 RNA (10,309
           cells), both restricted to the 20 genes of osmfish/folds_mop20.tsv in
           osmfish feature order; folds from that file

Per fold f: test genes = fold f, train genes = the rest (panel order). Spatial cells whose
total over the train genes is 0 and seq cells whose total over all panel genes is 0 are
dropped. GIMVI: GIMVI.setup_anndata(adata) without keys for both AnnData objects,
scvi.settings.seed = seed right before GIMVI(adata_seq, adata_spatial), then
model.train(max_epochs=epochs) with defaults (progress bar off only). Imputed values:
get_imputed_values(normalized=True / False)[1], test-gene columns.
Truth = spatial counts of the test genes / the cell's total over all panel genes.
Score per test gene = Spearman correlation (average ranks) over the kept spatial cells;
NaN if the truth column is constant, else 0 if the imputed column is identically 0
(else NaN if the imputed column is constant otherwise; not expected).
kNN baseline: features log1p(1e4 * counts_train / total_train) (0 for cells without
train counts) for seq and spatial cells, Euclidean distance computed directly in float64,
the 15 nearest kept seq cells per spatial cell (ties broken by seq cell order, i.e. a
stable sort), imputation = neighbour mean of seq count / seq total over all panel genes.

Outputs in --out:
  genes.tsv     dataset, method (scvi-tools | knn), seed (NA for knn), fold, gene,
                spearman_normalized, spearman_unnormalized (identical for knn)
  runs.tsv      dataset, seed, fold, n_seq, n_spatial, n_train_genes, n_test_genes,
                train_seconds, s_per_epoch
  genes_truth_counts.tsv  the same, but scored against the raw spatial counts of the
                test genes (not divided by the cell totals); a secondary view only
  summary.json  NaN-ignoring medians over all genes pooled across the 5 folds and per
                fold, per method (scvi-tools per seed and mean over seeds), timings,
                cells kept per fold, versions

Run it with the interpreter of the venv that bench/setup-venv.sh builds, e.g.

  nice -n 10 ~/.cache/rscvi/bench-venv/bin/python bench/scvi_tools_gimvi.py \
      --dataset merfish --seeds 0 1 2 --threads 2 \
      --out bench/results/gimvi-scvi-tools/merfish

(--folds restricts the run to some folds, for a cost estimate; summary.json is only
meaningful when all five folds ran.)
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

N_NEIGHBOURS = 15


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("/work/shared/data"),
                   help="shared data directory (holds merfish_hypothalamus/, osmfish/, mop_snareseq2/)")
    p.add_argument("--dataset", required=True, choices=["merfish", "osmfish"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="scvi.settings.seed values")
    p.add_argument("--epochs", type=int, default=200, help="max_epochs for train()")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="folds to run (default all five)")
    p.add_argument("--no-knn", action="store_true", help="skip the kNN baseline")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- data


def read_mtx_cells_by_features(path: Path):
    """MatrixMarket features x cells -> dense float64 cells x features."""
    import numpy as np
    import scipy.io

    with gzip.open(path, "rb") as fh:
        m = scipy.io.mmread(fh)
    return np.asarray(m.T.todense(), dtype=np.float64)


def load_merfish(data: Path):
    import numpy as np
    import pandas as pd

    base = data / "merfish_hypothalamus"
    sp_genes = pd.read_csv(base / "spatial" / "features.tsv.gz", sep="\t")["gene"].astype(str).tolist()
    sq_genes = pd.read_csv(base / "scrna" / "features.tsv.gz", sep="\t")["gene"].astype(str).tolist()
    spatial = read_mtx_cells_by_features(base / "spatial" / "matrix.mtx.gz")
    seq = read_mtx_cells_by_features(base / "scrna" / "matrix.mtx.gz")
    if spatial.shape[1] != len(sp_genes) or seq.shape[1] != len(sq_genes):
        raise ValueError("matrix / features.tsv.gz size mismatch")
    pos = {g: i for i, g in enumerate(sq_genes)}
    missing = [g for g in sp_genes if g not in pos]
    if missing:
        raise ValueError(f"spatial genes missing from scrna: {missing[:5]}")
    seq = seq[:, [pos[g] for g in sp_genes]]
    folds = pd.read_csv(base / "folds.tsv", sep="\t")
    fold_of = dict(zip(folds["gene"].astype(str), folds["fold"].astype(int)))
    if set(fold_of) != set(sp_genes):
        raise ValueError("folds.tsv genes differ from the panel")
    fold = np.array([fold_of[g] for g in sp_genes])
    return seq, spatial, sp_genes, fold


def load_osmfish(data: Path):
    import numpy as np
    import pandas as pd

    osm = data / "osmfish"
    mop = data / "mop_snareseq2"
    folds = pd.read_csv(osm / "folds_mop20.tsv", sep="\t")
    fold_of = dict(zip(folds["gene"].astype(str), folds["fold"].astype(int)))

    osm_genes = pd.read_csv(osm / "features.tsv.gz", sep="\t")["gene"].astype(str).tolist()
    obs = pd.read_csv(osm / "obs.tsv.gz", sep="\t")
    spatial_all = read_mtx_cells_by_features(osm / "matrix.mtx.gz")
    if spatial_all.shape != (len(obs), len(osm_genes)):
        raise ValueError("osmfish matrix / obs / features size mismatch")
    genes = [g for g in osm_genes if g in fold_of]  # osmFISH feature order
    if len(genes) != len(fold_of):
        raise ValueError("folds_mop20.tsv genes not all in osmfish features")
    valid = (obs["Valid"].to_numpy() == 1)
    opos = {g: i for i, g in enumerate(osm_genes)}
    spatial = spatial_all[valid][:, [opos[g] for g in genes]]

    feat = pd.read_csv(mop / "features.tsv.gz", sep="\t", dtype=str, keep_default_na=False)
    is_rna = (feat["feature_type"] == "Gene Expression").to_numpy()
    rna_rows = np.flatnonzero(is_rna)
    rna_names = feat["name"].to_numpy()[rna_rows]
    mpos = {}
    for r, n in zip(rna_rows, rna_names):
        if n in mpos:
            raise ValueError(f"duplicate RNA gene name {n}")
        mpos[n] = r
    missing = [g for g in genes if g not in mpos]
    if missing:
        raise ValueError(f"genes missing from mop RNA: {missing}")
    import scipy.io

    with gzip.open(mop / "matrix.mtx.gz", "rb") as fh:
        m = scipy.io.mmread(fh).tocsr()  # features x cells
    seq = np.asarray(m[[mpos[g] for g in genes], :].T.todense(), dtype=np.float64)
    fold = np.array([fold_of[g] for g in genes])
    return seq, spatial, genes, fold


# --------------------------------------------------------------------------- scoring


def spearman(truth, pred):
    """Spearman with average ranks; NaN for constant truth, 0 for an all-zero prediction."""
    import numpy as np
    from scipy.stats import rankdata

    truth = np.asarray(truth, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if np.all(truth == truth[0]):
        return float("nan")
    if np.all(pred == 0):
        return 0.0
    if np.all(pred == pred[0]):
        return float("nan")
    rt = rankdata(truth, method="average")
    rp = rankdata(pred, method="average")
    rt -= rt.mean()
    rp -= rp.mean()
    return float(np.sum(rt * rp) / np.sqrt(np.sum(rt * rt) * np.sum(rp * rp)))


def knn_features(counts_train):
    import numpy as np

    tot = counts_train.sum(axis=1, keepdims=True)
    out = np.zeros_like(counts_train, dtype=np.float64)
    nz = tot[:, 0] > 0
    out[nz] = np.log1p(1e4 * counts_train[nz] / tot[nz])
    return out


def knn_impute(seq_train, spatial_train, seq_test_frac, k=N_NEIGHBOURS, chunk=256):
    """Mean of seq_test_frac over the k nearest seq cells of each spatial cell."""
    import numpy as np

    fs = knn_features(seq_train)
    fp = knn_features(spatial_train)
    out = np.empty((fp.shape[0], seq_test_frac.shape[1]), dtype=np.float64)
    for s in range(0, fp.shape[0], chunk):
        block = fp[s:s + chunk]
        d2 = np.zeros((block.shape[0], fs.shape[0]), dtype=np.float64)
        for j in range(fs.shape[1]):  # exact per-gene squared differences (ties stay ties)
            diff = block[:, j:j + 1] - fs[None, :, j]
            d2 += diff * diff
        nn = np.argsort(d2, axis=1, kind="stable")[:, :k]
        out[s:s + chunk] = seq_test_frac[nn].mean(axis=1)
    return out


def nanmedian(x):
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(np.median(x)) if len(x) else None


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    import torch

    torch.set_num_threads(args.threads)

    import anndata as ad
    import scvi
    from scvi.external import GIMVI

    scvi.settings.dl_num_workers = 0
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        """Wall time of every training epoch (read-only: no effect on the model or RNG)."""

        def __init__(self):
            self.times = []
            self._start = None

        def on_train_epoch_start(self, trainer, pl_module):
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(time.perf_counter() - self._start)

    t0 = time.perf_counter()
    if args.dataset == "merfish":
        seq_full, spatial_full, genes, fold = load_merfish(args.data)
    else:
        seq_full, spatial_full, genes, fold = load_osmfish(args.data)
    genes = np.array(genes)
    print(f"[{args.dataset}] loaded in {time.perf_counter() - t0:.1f} s: seq {seq_full.shape[0]} cells, "
          f"spatial {spatial_full.shape[0]} cells, {len(genes)} genes", flush=True)

    gene_rows, run_rows, cells = [], [], {}
    epoch_median = {}  # (seed, fold) -> median epoch wall time (robust to load spikes)
    gene_rows_counts = []  # same scores against raw counts (secondary)
    gene_cols = ["dataset", "method", "seed", "fold", "gene",
                 "spearman_normalized", "spearman_unnormalized"]

    def flush():
        for rows, name in [(gene_rows, "genes.tsv"), (gene_rows_counts, "genes_truth_counts.tsv")]:
            pd.DataFrame(rows, columns=gene_cols).to_csv(
                args.out / name, sep="\t", index=False, na_rep="NA", float_format="%.6g")
        pd.DataFrame(run_rows, columns=["dataset", "seed", "fold", "n_seq", "n_spatial",
                                        "n_train_genes", "n_test_genes", "train_seconds",
                                        "s_per_epoch"]
                     ).to_csv(args.out / "runs.tsv", sep="\t", index=False, na_rep="NA",
                              float_format="%.6g")

    for f in args.folds:
        test = np.flatnonzero(fold == f)
        train = np.flatnonzero(fold != f)
        sp_keep = spatial_full[:, train].sum(axis=1) > 0
        sq_keep = seq_full.sum(axis=1) > 0
        spatial = spatial_full[sp_keep]
        seq = seq_full[sq_keep]
        sp_tot = spatial.sum(axis=1, keepdims=True)
        sq_tot = seq.sum(axis=1, keepdims=True)
        truth = spatial[:, test] / sp_tot
        truth_counts = spatial[:, test]
        cells[f] = {"n_seq": int(seq.shape[0]), "n_spatial": int(spatial.shape[0]),
                    "n_seq_dropped": int((~sq_keep).sum()),
                    "n_spatial_dropped": int((~sp_keep).sum()),
                    "n_train_genes": int(len(train)), "n_test_genes": int(len(test))}
        print(f"[{args.dataset}] fold {f}: {len(train)} train / {len(test)} test genes, "
              f"seq {seq.shape[0]} cells (-{(~sq_keep).sum()}), spatial {spatial.shape[0]} "
              f"cells (-{(~sp_keep).sum()})", flush=True)

        if not args.no_knn:
            t1 = time.perf_counter()
            imp = knn_impute(seq[:, train], spatial[:, train], seq[:, test] / sq_tot)
            for j, g in enumerate(test):
                r = spearman(truth[:, j], imp[:, j])
                gene_rows.append([args.dataset, "knn", None, f, genes[g], r, r])
                rc = spearman(truth_counts[:, j], imp[:, j])
                gene_rows_counts.append([args.dataset, "knn", None, f, genes[g], rc, rc])
            print(f"  knn: median {nanmedian([row[5] for row in gene_rows if row[1] == 'knn' and row[3] == f]):.4f}"
                  f" ({time.perf_counter() - t1:.1f} s)", flush=True)
            flush()

        for seed in args.seeds:
            obs_seq = pd.DataFrame(index=pd.Index([f"seq{i}" for i in range(seq.shape[0])]))
            obs_sp = pd.DataFrame(index=pd.Index([f"sp{i}" for i in range(spatial.shape[0])]))
            adata_seq = ad.AnnData(X=sp.csr_matrix(seq.astype(np.float32)), obs=obs_seq,
                                   var=pd.DataFrame(index=pd.Index(genes, dtype=str)))
            adata_sp = ad.AnnData(X=sp.csr_matrix(spatial[:, train].astype(np.float32)), obs=obs_sp,
                                  var=pd.DataFrame(index=pd.Index(genes[train], dtype=str)))
            GIMVI.setup_anndata(adata_seq)
            GIMVI.setup_anndata(adata_sp)
            scvi.settings.seed = seed
            model = GIMVI(adata_seq, adata_sp)
            t1 = time.perf_counter()
            timer = EpochTimer()
            model.train(max_epochs=args.epochs, enable_progress_bar=False, callbacks=[timer])
            train_seconds = time.perf_counter() - t1
            epoch_median[(seed, f)] = float(np.median(timer.times)) if timer.times else None
            imp_norm = model.get_imputed_values(normalized=True)[1][:, test]
            imp_raw = model.get_imputed_values(normalized=False)[1][:, test]
            if imp_norm.shape[0] != spatial.shape[0]:
                raise RuntimeError("imputed rows != kept spatial cells")
            rs = []
            for j, g in enumerate(test):
                rn = spearman(truth[:, j], imp_norm[:, j])
                ru = spearman(truth[:, j], imp_raw[:, j])
                rs.append((rn, ru))
                gene_rows.append([args.dataset, "scvi-tools", seed, f, genes[g], rn, ru])
                gene_rows_counts.append([args.dataset, "scvi-tools", seed, f, genes[g],
                                         spearman(truth_counts[:, j], imp_norm[:, j]),
                                         spearman(truth_counts[:, j], imp_raw[:, j])])
            run_rows.append([args.dataset, seed, f, seq.shape[0], spatial.shape[0], len(train),
                             len(test), train_seconds, train_seconds / args.epochs])
            print(f"  scvi-tools seed {seed}: {train_seconds:.1f} s "
                  f"({train_seconds / args.epochs:.3f} s/epoch, median epoch "
                  f"{epoch_median[(seed, f)]:.3f} s, load {os.getloadavg()[0]:.1f}), median normalized "
                  f"{nanmedian([r[0] for r in rs]):.4f}, unnormalized {nanmedian([r[1] for r in rs]):.4f}",
                  flush=True)
            flush()
            del model

    # ------------------------------------------------------------------ summary
    rdf = pd.DataFrame(run_rows, columns=["dataset", "seed", "fold", "n_seq", "n_spatial",
                                          "n_train_genes", "n_test_genes", "train_seconds",
                                          "s_per_epoch"])

    def summarise(df):
        res = {"n_genes": int(len(df)),
               "n_nan_normalized": int(df["spearman_normalized"].isna().sum()),
               "n_nan_unnormalized": int(df["spearman_unnormalized"].isna().sum())}
        for col, key in [("spearman_normalized", "normalized"),
                         ("spearman_unnormalized", "unnormalized")]:
            res[f"median_{key}"] = nanmedian(df[col])
            res[f"fold_median_{key}"] = {str(f): nanmedian(df.loc[df["fold"] == f, col])
                                         for f in args.folds}
        return res

    def methods_of(gdf):
        methods = {}
        if not args.no_knn:
            k = summarise(gdf[gdf["method"] == "knn"])
            k["n_neighbours"] = N_NEIGHBOURS
            methods["knn"] = k
        per_seed = {}
        for seed in args.seeds:
            s = summarise(gdf[(gdf["method"] == "scvi-tools") & (gdf["seed"] == seed)])
            rr = rdf[rdf["seed"] == seed]
            s["train_seconds_total"] = float(rr["train_seconds"].sum())
            s["s_per_epoch_mean"] = float(rr["s_per_epoch"].mean())
            s["epoch_seconds_median_per_fold"] = {str(f): epoch_median.get((seed, f))
                                                  for f in args.folds}
            per_seed[str(seed)] = s
        mean = {}
        for key in ["median_normalized", "median_unnormalized"]:
            vals = [v[key] for v in per_seed.values() if v[key] is not None]
            mean[key] = float(np.mean(vals)) if vals else None
            mean[key.replace("median", "sd_of_median")] = (
                float(np.std(vals, ddof=1)) if len(vals) > 1 else None)
        mean["s_per_epoch_mean"] = float(rdf["s_per_epoch"].mean()) if len(rdf) else None
        mean["s_per_epoch_min"] = float(rdf["s_per_epoch"].min()) if len(rdf) else None
        em = [x for x in epoch_median.values() if x is not None]
        mean["epoch_seconds_median_all_runs"] = float(np.median(em)) if em else None
        methods["scvi-tools"] = {"per_seed": per_seed, "mean_over_seeds": mean}
        return methods

    from importlib.metadata import version as pkg_version

    def v(name):
        try:
            return pkg_version(name)
        except Exception:
            return None

    summary = {
        "datasets": {
            args.dataset: {
                "n_genes": int(len(genes)),
                "folds": [int(f) for f in args.folds],
                "seeds": args.seeds,
                "epochs": args.epochs,
                "cells_per_fold": {str(f): c for f, c in cells.items()},
                "methods": methods_of(pd.DataFrame(gene_rows, columns=gene_cols)),
                "methods_truth_counts": methods_of(pd.DataFrame(gene_rows_counts, columns=gene_cols)),
            }
        },
        "pooled_median": "NaN-ignoring median over all test genes of all folds run (each gene held out once)",
        "truth": "methods: counts of the test genes / cell total over all panel genes (the protocol); "
                 "methods_truth_counts: raw counts of the test genes (secondary view)",
        "loadavg_1_5_15_at_end": list(os.getloadavg()),
        "threads": args.threads,
        "torch_num_threads": torch.get_num_threads(),
        "versions": {
            "scvi-tools": scvi.__version__,
            "torch": torch.__version__,
            "lightning": v("lightning"),
            "anndata": v("anndata"),
            "numpy": np.__version__,
            "scipy": v("scipy"),
            "python": platform.python_version(),
        },
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
    }
    with open(args.out / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=2)
        fh.write("\n")
    flush()
    print(f"wrote {args.out}/genes.tsv, runs.tsv, summary.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
