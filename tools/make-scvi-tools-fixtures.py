#!/usr/bin/env python3
"""Writes small SCVI models saved by scvi-tools (model.save()) on the shipped CellBench
subsample (inst/extdata/cellbench_small.h5ad: 40 cells x 30 genes, real counts), and a
MULTIVI model on the shipped SNARE-seq2 subsample (inst/extdata/snareseq2_small.h5mu: 25
nuclei, 20 genes + 15 peaks; latent.csv only), and a GIMVI model on a subsample of the
shipped MERFISH + scRNA-seq example (inst/extdata/merfish_hypothalamus.rds, written as two
h5ad files by rscvi; latent_seq.csv, latent_spatial.csv, imputed.csv: the spatial cells'
imputed sequencing genes), with what scvi-tools computes from them, so that load_model()
can be checked against the reference without Python in CI:

  latent.csv   get_latent_representation() (posterior means), cells x latent
  scale.csv    the decoder's px.scale at z = the posterior mean (and, for a learned library,
               the library posterior mean), cells x genes
  theta.csv    px.theta there (inverse dispersion), cells x genes
  dropout.csv  px.zi_logits there (ZINB only), cells x genes

Run with the bench venv (bench/setup-venv.sh) from the repository root:

  ~/.cache/rscvi/bench-venv/bin/python tools/make-scvi-tools-fixtures.py [scvi|multivi|multivi-protein|gimvi ...]
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scvi
import torch

# RSCVI_FIXTURE_OUT: somewhere else (bench/check_scvi_tools_versions.R writes other versions'
# models there)
out = Path(os.environ.get("RSCVI_FIXTURE_OUT", "tests/testthat/fixtures/scvi-tools"))


def scvi_models():
    adata = ad.read_h5ad("inst/extdata/cellbench_small.h5ad")
    adata.X = adata.layers["counts"].copy()

    # Two models between them cover the layouts the reader maps: deep covariate injection over
    # two layers; covariates (categorical and continuous) in the encoder, per-batch dispersion,
    # a learned library, layer norm without batch norm.
    models = {
        "scvi": dict(setup=dict(batch_key="batch"),
                     model=dict(n_hidden=16, n_latent=4, n_layers=2)),
        "scvi-covariates": dict(
            setup=dict(batch_key="batch", categorical_covariate_keys=["cell_line"],
                       continuous_covariate_keys=["n_genes"]),
            model=dict(n_hidden=16, n_latent=3, dispersion="gene-batch", gene_likelihood="nb",
                       use_observed_lib_size=False, encode_covariates=True,
                       use_batch_norm="none", use_layer_norm="both")),
    }

    for name, spec in models.items():
        a = adata.copy()
        scvi.settings.seed = 0
        scvi.model.SCVI.setup_anndata(a, **spec["setup"])
        model = scvi.model.SCVI(a, **spec["model"])
        model.train(max_epochs=40, enable_progress_bar=False)
        folder = out / name
        model.save(folder, overwrite=True)
        cells, genes = a.obs_names, a.var_names
        pd.DataFrame(model.get_latent_representation(), index=cells).to_csv(folder / "latent.csv")
        module = model.module.eval()
        loader = model._make_data_loader(adata=a, batch_size=a.n_obs)
        batch = next(iter(loader))
        with torch.no_grad():
            inference = module.inference(**module._get_inference_input(batch))
            gen_input = module._get_generative_input(batch, inference)
            gen_input["z"] = inference["qz"].loc
            if inference.get("ql") is not None:
                gen_input["library"] = inference["ql"].loc
            px = module.generative(**gen_input)["px"]
        pd.DataFrame(px.scale.numpy(), index=cells, columns=genes).to_csv(folder / "scale.csv")
        theta = px.theta.expand_as(px.scale)
        pd.DataFrame(theta.numpy(), index=cells, columns=genes).to_csv(folder / "theta.csv")
        if getattr(px, "zi_logits", None) is not None:
            pd.DataFrame(px.zi_logits.numpy(), index=cells, columns=genes).to_csv(
                folder / "dropout.csv")
        print(name, "written with scvi-tools", scvi.__version__)


def multivi_model():
    mdata = md.read_h5mu("inst/extdata/snareseq2_small.h5mu")
    scvi.settings.seed = 0
    scvi.model.MULTIVI.setup_mudata(mdata, batch_key="library",
                                    modalities={"rna_layer": "rna", "atac_layer": "atac",
                                                "batch_key": "rna"})
    model = scvi.model.MULTIVI(mdata, n_genes=mdata["rna"].n_vars, n_regions=mdata["atac"].n_vars,
                               n_latent=3, modality_weights="universal")
    model.train(max_epochs=40, enable_progress_bar=False)
    folder = out / "multivi"
    model.save(folder, overwrite=True)
    pd.DataFrame(model.get_latent_representation(), index=mdata.obs_names).to_csv(
        folder / "latent.csv")
    print("multivi written with scvi-tools", scvi.__version__)


def multivi_protein_model():
    # Proteins as scvi-tools' MULTIVI takes them (a third MuData modality); no CITE-seq data
    # are shipped, so five genes' counts stand in for antibody counts
    mdata = md.read_h5mu("inst/extdata/snareseq2_small.h5mu")
    rna = mdata["rna"]
    adt = ad.AnnData(X=np.asarray(rna.X[:, :5].todense() if hasattr(rna.X, "todense")
                                  else rna.X[:, :5], dtype=np.float32) * 3)
    adt.obs_names = rna.obs_names
    adt.var_names = [f"ADT_{g}" for g in rna.var_names[:5]]
    mdata = md.MuData({"rna": rna, "atac": mdata["atac"], "protein": adt})
    mdata.update()
    scvi.settings.seed = 0
    scvi.model.MULTIVI.setup_mudata(mdata, batch_key="library",
                                    modalities={"rna_layer": "rna", "atac_layer": "atac",
                                                "protein_layer": "protein",
                                                "batch_key": "rna"})
    model = scvi.model.MULTIVI(mdata, n_genes=rna.n_vars, n_regions=mdata["atac"].n_vars,
                               n_latent=3, modality_weights="universal")
    model.train(max_epochs=40, enable_progress_bar=False)
    folder = out / "multivi-protein"
    model.save(folder, overwrite=True, save_anndata=True)
    pd.DataFrame(model.get_latent_representation(), index=mdata.obs_names).to_csv(
        folder / "latent.csv")
    print("multivi-protein written with scvi-tools", scvi.__version__)

def gimvi_model():
    # GIMVI: the example's two datasets, subsampled, as h5ad files written by rscvi (R)
    tmp = Path(tempfile.mkdtemp())
    subprocess.run(["Rscript", "-e", f"""
    suppressPackageStartupMessages(library(rscvi))
    d <- rscvi_example_merfish()
    seq_cells <- d$seq$cells[seq(1, ncol(d$seq$counts), by = 10), ]
    keep <- colnames(d$seq$counts) %in% rownames(seq_cells)
    seq <- d$seq$counts[, keep]
    # half the genes, in another order: the spatial genes map onto the sequencing ones
    spatial_genes <- rev(rownames(d$spatial$counts))[c(TRUE, FALSE)]
    spatial <- d$spatial$counts[spatial_genes, seq(1, ncol(d$spatial$counts), by = 10)]
    for (p in list(list(seq, d$seq$cells, 'seq'), list(spatial, d$spatial$cells, 'spatial'))) {{
      sce <- SingleCellExperiment::SingleCellExperiment(list(X = p[[1]]),
        colData = p[[2]][colnames(p[[1]]), , drop = FALSE])
      write_h5ad(sce, file.path('{tmp}', paste0(p[[3]], '.h5ad')), X_name = 'X')
    }}
    """], check=True)
    seq = ad.read_h5ad(tmp / "seq.h5ad")
    spatial = ad.read_h5ad(tmp / "spatial.h5ad")
    seq.obs["library"] = seq.obs["library"].astype(str)
    scvi.settings.seed = 0
    scvi.external.GIMVI.setup_anndata(seq, batch_key="library")
    scvi.external.GIMVI.setup_anndata(spatial)
    model = scvi.external.GIMVI(seq, spatial, n_latent=4)
    model.train(max_epochs=40, enable_progress_bar=False)
    folder = out / "gimvi"
    # with the two AnnData files: load_model(dir) reads them when no data are given
    model.save(folder, overwrite=True, save_anndata=True)
    latent_seq, latent_spatial = model.get_latent_representation()
    pd.DataFrame(latent_seq, index=seq.obs_names).to_csv(folder / "latent_seq.csv")
    pd.DataFrame(latent_spatial, index=spatial.obs_names).to_csv(folder / "latent_spatial.csv")
    imputed = model.get_imputed_values(normalized=True)[1][:20]  # 20 cells keep the file small
    pd.DataFrame(imputed, index=spatial.obs_names[:20], columns=seq.var_names).to_csv(
        folder / "imputed.csv")
    print("gimvi written with scvi-tools", scvi.__version__)



# Each part alone when named (scvi, multivi, multivi-protein, gimvi): the others' files stay as they are.
parts = {"scvi": scvi_models, "multivi": multivi_model,
         "multivi-protein": multivi_protein_model, "gimvi": gimvi_model}
for name in sys.argv[1:] or parts:
    parts[name]()
