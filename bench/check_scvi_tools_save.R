#!/usr/bin/env Rscript
# Models rscvi writes in scvi-tools' layout (save_model(format = "scvi-tools")) load in
# scvi-tools 1.5.1 and give rscvi's latent means there: a model read from scvi-tools' own
# files (tests/testthat/fixtures/scvi-tools) and models trained by rscvi (with and without
# covariates), on the shipped CellBench subsample; GIMVI models (scvi-tools' fixture, and one
# trained by rscvi) on the fixture's MERFISH + scRNA-seq subsample. Needs the venv of
# bench/setup-venv.sh.
#
#   Rscript bench/check_scvi_tools_save.R
#
# Writes bench/results/scvi-tools-save.md.
suppressPackageStartupMessages(library(rscvi))
here <- if (file.exists("bench/check_scvi_tools_save.R")) "bench" else stop("run from the repository root")
# RSCVI_BENCH_VENV: another scvi-tools (bench/check_scvi_tools_versions.R), used as it is;
# RSCVI_BENCH_RESULTS: where the table goes.
venv <- Sys.getenv("RSCVI_BENCH_VENV")
if (!nzchar(venv)) {
  venv <- file.path(Sys.getenv("HOME"), ".cache/rscvi/bench-venv")
  if (system2("bash", file.path(here, "setup-venv.sh")) != 0) stop("bench/setup-venv.sh failed")
}
results <- Sys.getenv("RSCVI_BENCH_RESULTS", file.path(here, "results", "scvi-tools-save.md"))
h5ad <- system.file("extdata", "cellbench_small.h5ad", package = "rscvi")
sce <- read_h5ad(h5ad)
out <- file.path(tempdir(), "rscvi-to-scvi-tools")
models <- list(
  from_scvi_tools = load_model("tests/testthat/fixtures/scvi-tools/scvi-covariates", x = sce),
  trained_by_rscvi = train(scvi(sce, layer = "X", batch_key = "batch", n_latent = 5),
                           max_epochs = 20, seed = 0, progress = FALSE),
  with_covariates = train(scvi(sce, layer = "X", batch_key = "batch",
                               categorical_covariate_keys = "cell_line",
                               continuous_covariate_keys = "n_genes", dispersion = "gene-batch",
                               use_observed_lib_size = FALSE),
                          max_epochs = 20, seed = 0, progress = FALSE))
lines <- c("# rscvi models saved in scvi-tools' layout, loaded by scvi-tools",
           "", "bench/check_scvi_tools_save.R; CellBench subsample (40 cells x 30 genes).", "",
           "| model | scvi-tools' latent means vs rscvi's (max abs difference) |", "|---|---|")
gimvi_dir <- "tests/testthat/fixtures/scvi-tools/gimvi"
gimvi_files <- file.path(gimvi_dir, c("adata_seq.h5ad", "adata_spatial.h5ad"))
gimvi_data <- list(seq = read_h5ad(gimvi_files[1]), spatial = read_h5ad(gimvi_files[2]))
models$gimvi_from_scvi_tools <- load_model(gimvi_dir)
models$gimvi_trained_by_rscvi <- train(
  gimvi(gimvi_data$seq, gimvi_data$spatial, layer_seq = "X", layer_spatial = "X",
        batch_key_seq = "library", n_latent = 5),
  max_epochs = 20, seed = 0, progress = FALSE)
h5mu <- system.file("extdata", "snareseq2_small.h5mu", package = "rscvi")
mv_protein <- "tests/testthat/fixtures/scvi-tools/multivi-protein"
models$multivi_from_scvi_tools <- load_model("tests/testthat/fixtures/scvi-tools/multivi",
                                             x = read_h5mu(h5mu))
models$multivi_protein_from_scvi_tools <- load_model(mv_protein)
models$multivi_trained_by_rscvi <- train(
  multivi(read_h5mu(h5mu), layer = "X", atac_layer = "X", batch_key = "library", n_latent = 4),
  max_epochs = 20, seed = 0, progress = FALSE)
# several batches injected everywhere, in the encoders too, with batch norm: the shapes of the
# protein networks scvi-tools builds without proteins follow all of these
models$multivi_covariates_by_rscvi <- train(
  multivi(read_h5mu(h5mu), layer = "X", atac_layer = "X", batch_key = "cell_type",
          encode_covariates = TRUE, deeply_inject_covariates = TRUE, use_batch_norm = "both",
          modality_weights = "cell", n_latent = 4),
  max_epochs = 20, seed = 0, progress = FALSE)
lines[3] <- paste("bench/check_scvi_tools_save.R; CellBench subsample (40 cells x 30 genes);",
                  "GIMVI: MERFISH + scRNA-seq subsample (131 + 75 cells); MULTIVI: SNARE-seq2",
                  "subsample (25 nuclei; with five stand-in proteins in the fixture).")
for (name in names(models)) {
  dir <- file.path(out, name)
  m <- models[[name]]
  save_model(m, dir, overwrite = TRUE, format = "scvi-tools")
  z <- get_latent_representation(m)
  if (inherits(m, "GIMVI")) {
    for (part in names(z)) {
      utils::write.csv(z[[part]], file.path(dir, sprintf("latent_%s.csv", part)))
    }
  } else {
    utils::write.csv(z, file.path(dir, "latent.csv"))
  }
  files <- if (inherits(m, "GIMVI")) gimvi_files else if (inherits(m, "MULTIVI")) {
    if (name == "multivi_protein_from_scvi_tools") file.path(mv_protein, "mdata.h5mu") else h5mu
  } else h5ad
  said <- system2(file.path(venv, "bin", "python"), c(file.path(here, "scvi_tools_load.py"),
                                                        dir, files), stdout = TRUE)
  if (!is.null(attr(said, "status"))) stop("scvi-tools could not load ", dir)
  said <- utils::tail(said, 1)
  cat(said, "\n")
  lines <- c(lines, sprintf("| %s | %s |", name, sub(".*difference ", "", said)))
}
writeLines(c(lines, "", sub(".*: (scvi-tools [^ ]+).*", "Loaded with \\1.", said)),
           results)
