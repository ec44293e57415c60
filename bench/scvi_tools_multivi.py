#!/usr/bin/env python3
"""scvi-tools reference side of the rscvi MULTIVI benchmark (bench/bench_multivi.R).

Data: mop_snareseq2 (SNARE-seq2 mouse MOp, genes then peaks, batch = library), optionally
subsampled: --cells N keeps every (total // N)-th cell, the first N of them, --regions K
keeps the K peaks open in the most cells of the full data (ties: feature order). Two settings:
  paired  every cell with both modalities;
  mosaic  mosaic_groups.tsv: "rna_only" cells lose their ATAC row, "atac_only" cells their
          RNA row (all zeros, as scvi-tools needs); cells left with no count are dropped;
  protein every cell with RNA and ATAC, and the stand-in ADT counts of --adt (cells x
          proteins, written by bench_multivi.R) in the cells that are not "atac_only".
Model: MULTIVI defaults (batch_key = library), scvi.settings.seed = seed right before the
model is built, train(max_epochs = --epochs) with every other train() default (early stopping
on reconstruction_loss_validation, validation every epoch), torch threads = --threads.
Outputs per setting under --out/<setting>/:
  summary.json  train seconds, s/epoch, peak RSS (MB), last history row, all-cell ELBO and
                reconstruction error, cells and features kept, versions; mosaic only:
                hidden-ATAC AUROC (mean over rna_only cells of the AUROC of the cell's
                normalized accessibility against its binarised hidden ATAC row, cells with
                no or all regions open skipped) and hidden-RNA Spearman (median over genes of
                the Spearman correlation, over atac_only cells, between normalized expression
                and the hidden counts / the cell's hidden RNA total; constant columns skipped);
                protein only: the protein share of the all-cell reconstruction error and the
  foreground.csv protein foreground probabilities, cells x proteins (protein only)
  latent.csv    joint latent (posterior means), cells x n_latent, with the cell names
  history.csv   per-epoch ELBO, reconstruction and KL, training and validation sets
  de.csv, da.csv with --de A,B (paired only): differential expression and accessibility of
                cell type A vs B (default arguments), rows = genes / regions
rscvi's side computes the same numbers with the same definitions.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import time

import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp
from scipy.stats import rankdata


def load(data_dir: str, n_cells: int | None, n_regions: int | None):
    m = scipy.io.mmread(gzip.open(os.path.join(data_dir, "matrix.mtx.gz"))).tocsr()
    features = pd.read_csv(os.path.join(data_dir, "features.tsv.gz"), sep="\t")
    obs = pd.read_csv(os.path.join(data_dir, "obs.tsv.gz"), sep="\t")
    barcodes = pd.read_csv(os.path.join(data_dir, "barcodes.tsv.gz"), header=None)[0].values
    groups = pd.read_csv(os.path.join(data_dir, "mosaic_groups.tsv"), sep="\t")
    genes = np.where(features["feature_type"].values == "Gene Expression")[0]
    peaks = np.where(features["feature_type"].values == "Peaks")[0]
    if n_regions:
        open_cells = np.asarray((m[peaks] > 0).sum(axis=1)).ravel()
        order = np.argsort(-open_cells, kind="stable")[:n_regions]
        peaks = peaks[np.sort(order)]
    cells = np.arange(m.shape[1])
    if n_cells:
        cells = np.arange(0, m.shape[1], max(m.shape[1] // n_cells, 1))[:n_cells]
    rna = m[genes][:, cells].T.tocsr().astype(np.float32)
    atac = m[peaks][:, cells].T.tocsr().astype(np.float32)
    group = groups.set_index("barcode").loc[barcodes[cells], "group"].values
    return (rna, atac, barcodes[cells], obs.iloc[cells].reset_index(drop=True), group,
            features["name"].values[genes], features["id"].values[peaks])


def auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    pos = truth.sum()
    neg = truth.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * neg))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def run(args, setting: str):
    import anndata as ad
    import mudata as md
    import scvi
    import torch

    torch.set_num_threads(args.threads)
    rna, atac, names, obs, group, gene_names, region_names = load(
        args.data, args.cells, args.regions)
    truth_rna, truth_atac = rna.copy(), atac.copy()
    if setting == "mosaic":
        keep_rna = sp.diags((group != "atac_only").astype(np.float32))
        keep_atac = sp.diags((group != "rna_only").astype(np.float32))
        rna = (keep_rna @ rna).tocsr()
        atac = (keep_atac @ atac).tocsr()
    total = np.asarray(rna.sum(axis=1)).ravel() + np.asarray(atac.sum(axis=1)).ravel()
    kept = total > 0
    rna, atac, truth_rna, truth_atac = rna[kept], atac[kept], truth_rna[kept], truth_atac[kept]
    names, group, obs = names[kept], group[kept], obs[kept].reset_index(drop=True)
    obs.index = names
    a_rna = ad.AnnData(rna, obs=obs.copy())
    a_rna.var_names = gene_names
    a_atac = ad.AnnData(atac, obs=obs.copy())
    a_atac.var_names = region_names
    mods = {"rna": a_rna, "atac": a_atac}
    layers = {"rna_layer": "rna", "atac_layer": "atac", "batch_key": "rna"}
    if setting == "protein":
        adt = pd.read_csv(args.adt, index_col=0).loc[names]
        adt.loc[group == "atac_only"] = 0
        a_prot = ad.AnnData(sp.csr_matrix(adt.values.astype(np.float32)), obs=obs.copy())
        a_prot.var_names = list(adt.columns)
        mods["protein"] = a_prot
        layers["protein_layer"] = "protein"
    mdata = md.MuData(mods)
    scvi.model.MULTIVI.setup_mudata(mdata, batch_key="library", modalities=layers)
    scvi.settings.seed = args.seed
    model = scvi.model.MULTIVI(mdata, n_genes=rna.shape[1], n_regions=atac.shape[1])
    t0 = time.time()
    model.train(max_epochs=args.epochs, enable_progress_bar=False)
    seconds = time.time() - t0
    epochs = len(model.history["elbo_train"])
    reconstruction = model.get_reconstruction_error()
    hist = {k: float(v.iloc[-1, 0]) for k, v in model.history.items()
            if k in ("elbo_train", "elbo_validation", "reconstruction_loss_train",
                     "reconstruction_loss_validation", "kl_local_train")}
    summary = {
        "setting": setting, "n_cells": int(rna.shape[0]), "n_genes": int(rna.shape[1]),
        "n_regions": int(atac.shape[1]), "epochs": epochs, "train_seconds": seconds,
        "s_per_epoch": seconds / max(epochs, 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "history_last": hist,
        "elbo_all": float(model.get_elbo()),
        "reconstruction_all": float(np.sum(list(reconstruction.values()))),
        "versions": {"scvi-tools": scvi.__version__, "torch": torch.__version__},
    }
    z = model.get_latent_representation()
    out = os.path.join(args.out, setting)
    os.makedirs(out, exist_ok=True)
    pd.DataFrame(z, index=names).to_csv(os.path.join(out, "latent.csv"))
    logged = [k for k in ("elbo_train", "elbo_validation", "reconstruction_loss_train",
                          "reconstruction_loss_validation", "kl_local_train",
                          "kl_local_validation") if k in model.history]
    pd.concat([model.history[k] for k in logged], axis=1).to_csv(
        os.path.join(out, "history.csv"), index=False)
    if setting == "protein":
        summary["reconstruction_error"] = {k: float(v) for k, v in reconstruction.items()}
        fg = model.get_protein_foreground_probability(return_numpy=True)
        pd.DataFrame(fg, index=names, columns=list(adt.columns)).to_csv(
            os.path.join(out, "foreground.csv"))
    if args.de and setting == "paired":
        a, b = args.de.split(",")
        idx1 = np.where(obs["cell_type"].values == a)[0]
        idx2 = np.where(obs["cell_type"].values == b)[0]
        model.differential_expression(idx1=idx1, idx2=idx2).to_csv(os.path.join(out, "de.csv"))
        model.differential_accessibility(idx1=idx1, idx2=idx2).to_csv(
            os.path.join(out, "da.csv"))
    if setting == "mosaic":
        rna_only = np.where(group == "rna_only")[0]
        acc = np.asarray(model.get_normalized_accessibility(indices=rna_only))
        hidden = truth_atac[rna_only].toarray() > 0
        summary["hidden_atac_auroc"] = float(np.nanmean(
            [auroc(acc[i], hidden[i]) for i in range(len(rna_only))]))
        atac_only = np.where(group == "atac_only")[0]
        expr = np.asarray(model.get_normalized_expression(indices=atac_only))
        counts = truth_rna[atac_only].toarray()
        totals = np.maximum(counts.sum(axis=1, keepdims=True), 1)
        truth = counts / totals
        rho = [spearman(truth[:, g], expr[:, g]) for g in range(truth.shape[1])]
        summary["hidden_rna_spearman"] = float(np.nanmedian(rho))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--settings", nargs="+", default=["paired", "mosaic"])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--cells", type=int, default=None)
    p.add_argument("--regions", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adt", default=None)
    p.add_argument("--de", default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    for setting in args.settings:
        run(args, setting)


if __name__ == "__main__":
    main()
