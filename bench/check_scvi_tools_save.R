#!/usr/bin/env Rscript
# Models rscvi writes in scvi-tools' layout (save_model(format = "scvi-tools")) load in
# scvi-tools 1.5.1 and give rscvi's latent means there: a model read from scvi-tools' own
# files (tests/testthat/fixtures/scvi-tools) and models trained by rscvi (with and without
# covariates), on the shipped CellBench subsample. Needs the venv of bench/setup-venv.sh.
#
#   Rscript bench/check_scvi_tools_save.R
#
# Writes bench/results/scvi-tools-save.md.
suppressPackageStartupMessages(library(rscvi))
here <- if (file.exists("bench/check_scvi_tools_save.R")) "bench" else stop("run from the repository root")
venv <- Sys.getenv("RSCVI_BENCH_VENV", file.path(Sys.getenv("HOME"), ".cache/rscvi/bench-venv"))
if (system2("bash", file.path(here, "setup-venv.sh")) != 0) stop("bench/setup-venv.sh failed")
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
for (name in names(models)) {
  dir <- file.path(out, name)
  save_model(models[[name]], dir, overwrite = TRUE, format = "scvi-tools")
  utils::write.csv(get_latent_representation(models[[name]]), file.path(dir, "latent.csv"))
  said <- system2(file.path(venv, "bin", "python"), c(file.path(here, "scvi_tools_load.py"),
                                                        dir, h5ad), stdout = TRUE)
  if (!is.null(attr(said, "status"))) stop("scvi-tools could not load ", dir)
  said <- utils::tail(said, 1)
  cat(said, "\n")
  lines <- c(lines, sprintf("| %s | %s |", name, sub(".*difference ", "", said)))
}
writeLines(c(lines, "", sub(".*: (scvi-tools [^ ]+).*", "Loaded with \\1.", said)),
           file.path(here, "results", "scvi-tools-save.md"))
