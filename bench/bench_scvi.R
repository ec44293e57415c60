#!/usr/bin/env Rscript
# SCVI benchmark: rscvi vs scvi-tools 1.5.1 on the cellbench singlets (1,021 cells x the
# 2,000 genes of hvg2000.txt), same data, same settings (scvi-tools defaults, seed 0),
# 2 threads each, in one run. Prints a table and writes bench/results/scvi-<epochs>.md.
#
#   Rscript bench/bench_scvi.R [epochs ...]        (default: 50 400)
#   RSCVI_BATCH_REPRESENTATION=embedding Rscript bench/bench_scvi.R 400
#                                                  (batch_representation on both sides;
#                                                  writes scvi-embedding-<epochs>.md)
#
# Needs the installed rscvi, ../shared/data/cellbench (or RSCVI_SHARED_DATA), and the
# scvi-tools venv made by bench/setup-venv.sh (run here if missing; several GB from PyPI).
# Both sides validate only after the last epoch, so per-epoch times compare equal work.

threads <- 2L
Sys.setenv(RAYON_NUM_THREADS = threads)      # before rscvi's first tensor op
suppressPackageStartupMessages(library(rscvi))

args <- commandArgs(trailingOnly = TRUE)
epochs_list <- if (length(args)) as.integer(args) else c(50L, 400L)
batch_rep <- Sys.getenv("RSCVI_BATCH_REPRESENTATION", "one-hot")
stopifnot(batch_rep %in% c("one-hot", "embedding"))
tag <- if (batch_rep == "one-hot") "" else paste0(batch_rep, "-")
here <- if (file.exists("bench/bench_scvi.R")) "bench" else stop("run from the repository root")
data_dir <- Sys.getenv("RSCVI_SHARED_DATA", file.path("..", "shared", "data"))
cellbench <- file.path(data_dir, "cellbench")
if (!dir.exists(cellbench)) stop("cellbench data not found at ", cellbench)
venv <- Sys.getenv("RSCVI_BENCH_VENV", file.path(Sys.getenv("HOME"), ".cache/rscvi/bench-venv"))
if (system2("bash", file.path(here, "setup-venv.sh")) != 0) stop("bench/setup-venv.sh failed")

sce <- rscvi_example_sce()     # the same cells and genes as the reference script loads
cells <- colnames(sce)
labels <- sce$cell_line
batches <- sce$batch

metrics_for <- function(z) c(
  knn_purity = knn_purity(z, labels, 15L),
  batch_mixing = batch_mixing(z, labels, batches, 15L)
)

# PCA on log-normalised counts: the uncorrected baseline for batch mixing.
counts <- SingleCellExperiment::counts(sce)
counts <- as.matrix(counts)
lognorm <- log1p(t(t(counts) / colSums(counts)) * 1e4)
pca <- stats::prcomp(t(lognorm), rank. = 10)$x
pca_metrics <- metrics_for(pca)

run_rscvi <- function(epochs) {
  model <- scvi(sce, batch_key = "batch", labels_key = "cell_line",
                batch_representation = batch_rep)
  t0 <- proc.time()[["elapsed"]]
  model <- train(model, max_epochs = epochs, seed = 0, device = "cpu", progress = FALSE,
                 check_val_every_n_epoch = epochs)
  train_s <- proc.time()[["elapsed"]] - t0
  val <- validation_indices(model)
  t1 <- proc.time()[["elapsed"]]
  mll <- get_marginal_ll(model, indices = val, n_mc_samples = 1000L, device = "cpu")
  mll_s <- proc.time()[["elapsed"]] - t1
  z <- get_latent_representation(model, device = "cpu")
  c(seconds_per_epoch = train_s / epochs,
    elbo_validation = -get_elbo(model, indices = val, device = "cpu"),
    elbo_all = -get_elbo(model, device = "cpu"),
    marginal_ll_validation = mll,
    marginal_ll_seconds = mll_s,
    metrics_for(z),
    validation_matches = setequal(cells[val], readLines(file.path(cellbench, "validation_cells_seed0.txt"))))
}

run_reference <- function(epochs) {
  out <- file.path(tempdir(), paste0("scvi-tools-", tag, epochs))
  status <- system2(file.path(venv, "bin", "python"), c(
    file.path(here, "scvi_tools_reference.py"), "--data", cellbench, "--epochs", epochs,
    "--seed", 0, "--threads", threads, "--batch-representation", batch_rep, "--out", out))
  if (status != 0) stop("the scvi-tools reference run failed")
  m <- jsonlite::fromJSON(file.path(out, "metrics.json"))
  lat <- utils::read.csv(file.path(out, "latent.csv"), row.names = 1, check.names = FALSE)
  z <- as.matrix(lat[cells, , drop = FALSE])
  c(seconds_per_epoch = m$seconds_per_epoch,
    elbo_validation = m$elbo_validation,
    elbo_all = m$elbo_all,
    marginal_ll_validation = m$marginal_ll_validation,
    marginal_ll_seconds = m$marginal_ll_seconds,
    metrics_for(z),
    validation_matches = isTRUE(m$validation_matches_reference))
}

fmt <- function(x) formatC(x, format = "f", digits = 3, big.mark = ",")
for (epochs in epochs_list) {
  message("== ", epochs, " epochs: rscvi")
  ours <- run_rscvi(epochs)
  message("== ", epochs, " epochs: scvi-tools")
  ref <- run_reference(epochs)
  rows <- c("seconds_per_epoch", "elbo_validation", "elbo_all", "marginal_ll_validation",
            "marginal_ll_seconds", "knn_purity", "batch_mixing")
  tab <- data.frame(metric = rows, rscvi = fmt(ours[rows]), scvi_tools = fmt(ref[rows]),
                    ratio = formatC(ours[rows] / ref[rows], format = "f", digits = 3),
                    pca = c(rep("", 5), fmt(pca_metrics)))
  lines <- c(
    sprintf(paste0("### %d epochs (cellbench singlets, 1,021 cells x 2,000 genes, seed 0, ",
                   "%d threads, batch_representation = \"%s\")"), epochs, threads, batch_rep),
    "", "| metric | rscvi | scvi-tools 1.5.1 | rscvi / scvi-tools | PCA (10 PCs) |",
    "|---|---|---|---|---|",
    sprintf("| %s | %s | %s | %s | %s |", tab$metric, tab$rscvi, tab$scvi_tools, tab$ratio, tab$pca),
    "", sprintf("Validation cells identical to scvi-tools' seed-0 split: rscvi %s, scvi-tools %s.",
               as.logical(ours[["validation_matches"]]), as.logical(ref[["validation_matches"]])),
    sprintf("Machine: %s, %s; load average before: %s.", R.version$platform,
            paste(utils::sessionInfo()$running), paste(readLines("/proc/loadavg"), collapse = " ")))
  writeLines(lines)
  dir.create(file.path(here, "results"), showWarnings = FALSE)
  writeLines(lines, file.path(here, "results", sprintf("scvi-%s%d.md", tag, epochs)))
}
