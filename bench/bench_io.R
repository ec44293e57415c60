#!/usr/bin/env Rscript
# File reading: rscvi's read_h5ad() / read_10x_h5() (Rust core on libhdf5, into a
# SingleCellExperiment) vs Python's anndata.read_h5ad (what R users reach through
# reticulate / zellkonverter), same files, one run. The files are written first by
# bench/io_files.py (anndata / h5py) from ../shared/data/mop_snareseq2: all 10,309 nuclei x
# 26,421 features (genes + peaks) as h5ad (CSR) and as a CellRanger h5.
#
#   Rscript bench/bench_io.R [repeats]       (default 3; the median is reported)
#
# Writes bench/results/io.md. Peak memory of training from a file (out-of-core) is not
# measured: rscvi reads files into memory today.

suppressPackageStartupMessages(library(rscvi))
args <- commandArgs(trailingOnly = TRUE)
repeats <- if (length(args)) as.integer(args[[1]]) else 3L
here <- if (file.exists("bench/bench_io.R")) "bench" else stop("run from the repository root")
data_dir <- Sys.getenv("RSCVI_SHARED_DATA", file.path("..", "shared", "data"))
venv <- Sys.getenv("RSCVI_BENCH_VENV", file.path(Sys.getenv("HOME"), ".cache/rscvi/bench-venv"))
if (system2("bash", file.path(here, "setup-venv.sh")) != 0) stop("bench/setup-venv.sh failed")
python <- file.path(venv, "bin", "python")
work <- file.path(tempdir(), "bench-io")
dir.create(work, showWarnings = FALSE)
if (system2(python, c(file.path(here, "io_files.py"), file.path(data_dir, "mop_snareseq2"),
                      work)) != 0) {
  stop("bench/io_files.py failed")
}
h5ad <- file.path(work, "mop_snareseq2.h5ad")
tenx <- file.path(work, "mop_snareseq2_10x.h5")

median_seconds <- function(expr_fun) {
  stats::median(vapply(seq_len(repeats), function(i) {
    gc()
    t0 <- proc.time()[["elapsed"]]
    expr_fun()
    proc.time()[["elapsed"]] - t0
  }, 0))
}
ours_h5ad <- median_seconds(function() read_h5ad(h5ad))
ours_10x <- median_seconds(function() read_10x_h5(tenx))
sce <- read_h5ad(h5ad)
py <- system2(python, c("-c", shQuote(sprintf(paste0(
  "import time, statistics, anndata as ad\n",
  "t = []\n",
  "for _ in range(%d):\n",
  "    t0 = time.perf_counter(); a = ad.read_h5ad('%s'); t.append(time.perf_counter() - t0)\n",
  "print(statistics.median(t))"), repeats, h5ad))), stdout = TRUE, stderr = FALSE)
ref_h5ad <- as.numeric(utils::tail(py, 1))

nnz <- length(SummarizedExperiment::assay(sce, "X")@x)
lines <- c(
  sprintf("### Reading files (%s cells x %s features, %s nonzeros; median of %d, 1 thread)",
          format(ncol(sce), big.mark = ","), format(nrow(sce), big.mark = ","),
          format(nnz, big.mark = ","), repeats),
  "", "| file | rscvi | anndata (Python) |", "|---|---|---|",
  sprintf("| .h5ad -> SingleCellExperiment / AnnData | %.2f s | %.2f s |", ours_h5ad, ref_h5ad),
  sprintf("| CellRanger .h5 -> SingleCellExperiment | %.2f s | |", ours_10x),
  "", sprintf("File sizes: h5ad %.1f MB, 10x h5 %.1f MB. Machine: %s; load average before: %s.",
              file.size(h5ad) / 1e6, file.size(tenx) / 1e6, R.version$platform,
              paste(readLines("/proc/loadavg"), collapse = " ")))
writeLines(lines)
dir.create(file.path(here, "results"), showWarnings = FALSE)
writeLines(lines, file.path(here, "results", "io.md"))
