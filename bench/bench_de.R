#!/usr/bin/env Rscript
# Differential expression: rscvi vs scvi-tools 1.5.1 on the cellbench singlets, each cell line
# against the rest in change mode, both models trained with defaults (400 epochs, seed 0,
# 2 threads). Reports per cell line the overlap of the top-50 genes and the Spearman
# correlation of lfc_mean over all genes; scvi-tools agrees with itself (other seed) on
# 36-43 of its top 50 (mean 40) and at Spearman 0.91-0.94.
#
#   Rscript bench/bench_de.R [epochs] [uniform|importance]
#
# proba_de saturates at 1 for many genes, so "top 50" ranks by proba_de, then |lfc_mean|
# (the same rule on both sides).
#
# With "importance", both tools run DE with importance weights (and uniform, for context) on
# the cell lines of RSCVI_BENCH_LINES (default H1975; scvi-tools needs minutes per line), and
# rscvi also repeats its importance DE with another seed (its own sampling noise).
# RSCVI_BENCH_REUSE=DIR reuses a finished scvi-tools output directory.

Sys.setenv(RAYON_NUM_THREADS = 2)
suppressPackageStartupMessages(library(rscvi))
args <- commandArgs(trailingOnly = TRUE)
epochs <- if (length(args)) as.integer(args[1]) else 400L
weights <- if (length(args) > 1) args[2] else "uniform"
stopifnot(weights %in% c("uniform", "importance"))
lines_arg <- if (weights == "importance") Sys.getenv("RSCVI_BENCH_LINES", "H1975") else ""
data_dir <- Sys.getenv("RSCVI_SHARED_DATA", file.path("..", "shared", "data"))
cellbench <- file.path(data_dir, "cellbench")
venv <- Sys.getenv("RSCVI_BENCH_VENV", file.path(Sys.getenv("HOME"), ".cache/rscvi/bench-venv"))
if (system2("bash", "bench/setup-venv.sh") != 0) stop("bench/setup-venv.sh failed")

out <- Sys.getenv("RSCVI_BENCH_REUSE", "")
if (!nzchar(out)) {
  out <- file.path(tempdir(), "scvi-tools-de")
  st_weights <- if (weights == "importance") "uniform,importance" else "uniform"
  if (system2(file.path(venv, "bin", "python"),
              c("bench/scvi_tools_de.py", "--data", cellbench, "--epochs", epochs, "--seed", 0,
                "--threads", 2, "--out", out, "--weights", st_weights,
                if (nzchar(lines_arg)) c("--lines", lines_arg))) != 0) {
    stop("the scvi-tools DE run failed")
  }
}
ref_time <- jsonlite::fromJSON(file.path(out, "de_timing.json"))

sce <- rscvi_example_sce()
model <- train(scvi(sce, batch_key = "batch", labels_key = "cell_line"), max_epochs = epochs,
               seed = 0, device = "cpu", progress = FALSE)
top50 <- function(genes, proba, lfc) genes[order(-proba, -abs(lfc), method = "radix")][1:50]
read_ref <- function(prefix, line) {
  utils::read.csv(file.path(out, paste0(prefix, line, ".csv")), row.names = 1)
}
# top-50 overlap and lfc_mean Spearman of two DE tables on the genes of `a`
agree <- function(a, b) {
  genes <- rownames(a)
  b <- b[genes, ]
  c(overlap = length(intersect(top50(genes, a$proba_de, a$lfc_mean),
                               top50(genes, b$proba_de, b$lfc_mean))),
    spearman = stats::cor(a$lfc_mean, b$lfc_mean, method = "spearman"))
}
timed_de <- function(line, ...) {
  t0 <- proc.time()[["elapsed"]]
  de <- differential_expression(model, groupby = "cell_line", group1 = line, device = "cpu", ...)
  list(de = de, secs = proc.time()[["elapsed"]] - t0)
}
set.seed(0)
dir.create("bench/results", showWarnings = FALSE)

if (weights == "importance") {
  rows <- lapply(strsplit(lines_arg, ",")[[1]], function(line) {
    ours <- timed_de(line, weights = "importance")
    again <- timed_de(line, weights = "importance")
    uniform <- timed_de(line)
    ref <- read_ref("de_importance_", line)
    ref_uniform <- read_ref("de_", line)
    vs_ref <- agree(ref, ours$de)
    self <- agree(ours$de, again$de)
    ref_shift <- agree(ref, ref_uniform)
    our_shift <- agree(ours$de, uniform$de)
    data.frame(cell_line = line, overlap = vs_ref[[1]], spearman = vs_ref[[2]],
               self_overlap = self[[1]], self_spearman = self[[2]],
               ref_shift_overlap = ref_shift[[1]], ref_shift_spearman = ref_shift[[2]],
               our_shift_overlap = our_shift[[1]], our_shift_spearman = our_shift[[2]],
               rscvi_seconds = ours$secs, scvi_tools_seconds = ref_time$importance[[line]])
  })
  tab <- do.call(rbind, rows)
  lines <- c(
    sprintf("### DE with importance weights, cell line vs rest (change mode), %d epochs, seed 0, 2 threads",
            epochs), "",
    paste("| cell line | rscvi vs scvi-tools: top-50 / Spearman | rscvi vs rscvi (other seed) |",
          "scvi-tools: importance vs uniform | rscvi: importance vs uniform | rscvi s | scvi-tools s |"),
    "|---|---|---|---|---|---|---|",
    sprintf("| %s | %d / %.3f | %d / %.3f | %d / %.3f | %d / %.3f | %.1f | %.1f |", tab$cell_line,
            tab$overlap, tab$spearman, tab$self_overlap, tab$self_spearman,
            tab$ref_shift_overlap, tab$ref_shift_spearman, tab$our_shift_overlap,
            tab$our_shift_spearman, tab$rscvi_seconds, tab$scvi_tools_seconds))
  writeLines(lines)
  writeLines(lines, sprintf("bench/results/de-importance-%d.md", epochs))
  quit(save = "no")
}

rows <- lapply(sort(unique(sce$cell_line)), function(line) {
  ours <- timed_de(line)
  ref <- read_ref("de_", line)
  a <- agree(ref, ours$de)
  data.frame(cell_line = line, top50_overlap = a[[1]], lfc_spearman = a[[2]],
             rscvi_seconds = ours$secs, scvi_tools_seconds = ref_time$uniform[[line]])
})
tab <- do.call(rbind, rows)
lines <- c(sprintf("### DE, each cell line vs rest (change mode), %d epochs, seed 0, 2 threads", epochs), "",
           "| cell line | top-50 overlap | lfc_mean Spearman | rscvi s | scvi-tools s |",
           "|---|---|---|---|---|",
           sprintf("| %s | %d | %.3f | %.2f | %.2f |", tab$cell_line, tab$top50_overlap,
                   tab$lfc_spearman, tab$rscvi_seconds, tab$scvi_tools_seconds),
           sprintf("| mean | %.1f | %.3f | %.2f | %.2f |", mean(tab$top50_overlap),
                   mean(tab$lfc_spearman), mean(tab$rscvi_seconds), mean(tab$scvi_tools_seconds)))
writeLines(lines)
writeLines(lines, sprintf("bench/results/de-%d.md", epochs))
