#!/usr/bin/env Rscript
# Files (issue 15), in two parts, each table written to bench/results/io.md:
#
# read: rscvi's read_h5ad() / read_10x_h5() (Rust core on libhdf5, into a
#   SingleCellExperiment) vs Python's anndata.read_h5ad (what R users reach through
#   reticulate / zellkonverter), same files, one run. The files are written first by
#   bench/io_files.py (anndata / h5py) from ../shared/data/mop_snareseq2: all 10,309 nuclei x
#   26,421 features (genes + peaks) as h5ad (CSR) and as a CellRanger h5.
# file: SCVI trained from an .h5ad file (scvi("x.h5ad"): counts streamed from disk) vs the
#   same file read into memory first (read_h5ad() then scvi(sce)), each in its own process
#   under /usr/bin/time -v, 2 threads: peak RSS of the whole process, s/epoch (the mean over
#   the epochs after the first), the validation ELBO. The file is a synthetic atlas
#   (`rscvi-cli synth` from cellbench, 2,000 genes, ~742 nonzeros per cell, 5 batches)
#   written as h5ad by bench/npy_to_h5ad.py, kept in RSCVI_BENCH_WORK between runs.
#
#   Rscript bench/bench_io.R [--parts read,file] [--repeats 3] [--cells 1000000]
#       [--epochs 2]
#
# The worker of the second part is this script with --worker file|memory.

args <- commandArgs(trailingOnly = TRUE)
opt <- function(name, default = NULL) {
  k <- match(paste0("--", name), args)
  if (is.na(k)) default else args[[k + 1L]]
}
elapsed <- function() proc.time()[["elapsed"]]

# One training run: from the file or from memory; writes its numbers as JSON.
worker <- function(mode, path, epochs, json) {
  suppressPackageStartupMessages(library(rscvi))
  options(rscvi.progress = FALSE)
  t0 <- elapsed()
  x <- if (mode == "memory") read_h5ad(path, layers = FALSE, reducedDims = FALSE) else path
  t_read <- elapsed() - t0
  t0 <- elapsed()
  m <- scvi(x, layer = if (mode == "memory") "X", batch_key = "batch")
  t_setup <- elapsed() - t0
  m <- train(m, max_epochs = epochs, seed = 0L, check_val_every_n_epoch = epochs,
             device = "cpu", progress = FALSE)
  t0 <- elapsed()
  z <- get_latent_representation(m)
  t_latent <- elapsed() - t0
  secs <- history(m)$seconds
  jsonlite::write_json(list(
    mode = mode, n_cells = nrow(z), read_s = t_read, setup_s = t_setup,
    s_per_epoch = if (length(secs) > 1L) mean(secs[-1L]) else secs[[1L]],
    latent_s = t_latent, elbo_validation = utils::tail(history(m)$elbo_validation, 1L)
  ), json, auto_unbox = TRUE, digits = NA)
}

if (!is.null(opt("worker"))) {
  worker(opt("worker"), opt("h5ad"), as.integer(opt("epochs")), opt("json"))
  quit(save = "no")
}

suppressPackageStartupMessages(library(rscvi))
parts <- strsplit(opt("parts", "read,file"), ",")[[1]]
repeats <- as.integer(opt("repeats", "3"))
here <- if (file.exists("bench/bench_io.R")) "bench" else stop("run from the repository root")
data_dir <- Sys.getenv("RSCVI_SHARED_DATA", file.path("..", "shared", "data"))
venv <- Sys.getenv("RSCVI_BENCH_VENV", file.path(Sys.getenv("HOME"), ".cache/rscvi/bench-venv"))
if (system2("bash", file.path(here, "setup-venv.sh")) != 0) stop("bench/setup-venv.sh failed")
python <- file.path(venv, "bin", "python")
work <- Sys.getenv("RSCVI_BENCH_WORK", file.path(tempdir(), "bench-io"))
dir.create(work, showWarnings = FALSE, recursive = TRUE)
load_average <- function() paste(readLines("/proc/loadavg"), collapse = " ")

read_part <- function() {
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
}

# One training run in its own process: its JSON plus the peak RSS of the process.
run_worker <- function(mode, path, epochs) {
  json <- file.path(work, sprintf("train-%s.json", mode))
  log <- file.path(work, sprintf("train-%s.log", mode))
  env <- c("RAYON_NUM_THREADS=2", "OMP_NUM_THREADS=2")
  cmd <- c(file.path(R.home("bin"), "Rscript"), file.path(here, "bench_io.R"), "--worker", mode,
           "--h5ad", path, "--epochs", epochs, "--json", json)
  status <- system2("/usr/bin/time", c("-v", cmd), env = env, stdout = log, stderr = log)
  if (status != 0) stop("training from ", mode, " failed; see ", log)
  text <- readLines(log)
  peak_kb <- as.numeric(sub(".*: ", "", grep("Maximum resident set size", text, value = TRUE)))
  c(jsonlite::fromJSON(json), peak_gb = peak_kb / 1024^2, load = load_average())
}

file_part <- function() {
  n <- as.integer(opt("cells", "1000000"))
  epochs <- as.integer(opt("epochs", "2"))
  synth <- file.path(work, sprintf("synth-%d", n))
  path <- file.path(work, sprintf("synth-%d.h5ad", n))
  if (!file.exists(file.path(synth, "meta.json"))) {
    cli <- Sys.getenv("RSCVI_CLI", path.expand("~/.cache/rscvi/target/release/rscvi-cli"))
    cb <- file.path(data_dir, "cellbench")
    status <- system2(cli, c("synth", "--source-mtx", file.path(cb, "matrix.mtx.gz"),
                             "--source-obs", file.path(cb, "obs.tsv.gz"),
                             "--source-features", file.path(cb, "features.tsv.gz"),
                             "--source-genes", file.path(cb, "hvg2000.txt"),
                             "--source-batch-key", "batch", "--cells", n, "--out", synth))
    if (status != 0) stop("rscvi-cli synth failed (build it: cargo build --release -p rscvi-cli)")
  }
  if (!file.exists(path) &&
      system2(python, c(file.path(here, "npy_to_h5ad.py"), synth, path)) != 0) {
    stop("bench/npy_to_h5ad.py failed")
  }
  meta <- jsonlite::fromJSON(file.path(synth, "meta.json"))
  # Both runs start with the file in the page cache (read once here): a cold cache would
  # charge the first run with the disk, not with how it reads.
  system2("cat", shQuote(path), stdout = FALSE)
  runs <- lapply(c("file", "memory"), run_worker, path = path, epochs = epochs)
  row <- function(r, label) {
    sprintf("| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f | %s |", label, r$peak_gb,
            r$read_s, r$setup_s, r$s_per_epoch, r$latent_s, r$elbo_validation, r$load)
  }
  f <- runs[[1]]
  m <- runs[[2]]
  lines <- c(
    sprintf(paste0("### SCVI trained from an .h5ad file vs in memory (%s cells x %s genes, ",
                   "%s nonzeros, %.1f GB file; %d epochs, 2 threads)"),
            format(n, big.mark = ","), format(meta$n_genes, big.mark = ","),
            format(meta$nnz, big.mark = ","), file.size(path) / 1e9, epochs),
    "", paste0("| run | peak RSS (GB) | read_h5ad s | scvi() s | s/epoch | latent s | ",
               "validation ELBO | load after |"),
    "|---|---|---|---|---|---|---|---|",
    row(f, "from the file: `scvi(\"x.h5ad\")`"),
    row(m, "in memory: `scvi(read_h5ad(\"x.h5ad\"), layer = \"X\")`"),
    "", sprintf("File-backed / in-memory: peak RSS %.0f%%, s/epoch %.2fx. Run %s.",
                100 * f$peak_gb / m$peak_gb, f$s_per_epoch / m$s_per_epoch,
                format(Sys.time(), "%Y-%m-%d %H:%M")))
  writeLines(lines)
  writeLines(lines, file.path(here, "results", "io-file-training.md"))
}

if ("read" %in% parts) read_part()
if ("file" %in% parts) file_part()
