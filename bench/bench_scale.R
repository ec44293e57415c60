# Atlas scale (issue 16): SCVI through R, through rscvi-cli and in scvi-tools 1.5.1 on the
# same synthetic counts, 10k to 1M cells, each run in its own process, the tools alternated.
#
#   Rscript bench/bench_scale.R --data DIR [--cells 10000,100000,300000,1000000]
#       [--epochs 2] [--tools r,cli,scvi-tools] [--out bench/results/scale.md]
#
# DIR holds the .npy CSR dataset of `rscvi-cli synth` (indptr int64, indices int32, data
# float32, batch int32, meta.json); every run reads the first N cells (a row prefix), e.g.
#   rscvi-cli synth --source-mtx shared/data/cellbench/matrix.mtx.gz --source-obs ... \
#       --source-genes hvg2000.txt --source-batch-key batch --cells 1000000 --out DIR
#
# Per run: s/epoch (the mean over the epochs after the first), peak RSS of the whole process
# (/usr/bin/time -v) and, for R, the peak from the moment the counts are in R's memory
# (VmHWM reset through /proc/self/clear_refs): what registration, training and the latent
# query add to the user's session. Its baseline is the R session with rscvi loaded plus the
# dgCMatrix (object.size). 2 threads for every tool (RAYON_NUM_THREADS, torch threads).
# The R worker is this script with --worker.

args <- commandArgs(trailingOnly = TRUE)
opt <- function(name, default = NULL) {
  k <- match(paste0("--", name), args)
  if (is.na(k)) default else args[[k + 1L]]
}

rss_kb <- function(field) {
  line <- grep(paste0("^", field, ":"), readLines("/proc/self/status"), value = TRUE)
  as.numeric(gsub("[^0-9]", "", line))
}

# The first `n` elements of a 1-D .npy array (int32, int64 as its low words, float32).
read_npy <- function(path, n) {
  con <- file(path, "rb")
  on.exit(close(con))
  readBin(con, "raw", 8L)
  hlen <- readBin(con, "integer", 1L, size = 2L, signed = FALSE, endian = "little")
  header <- rawToChar(readBin(con, "raw", hlen))
  descr <- sub(".*'descr': *'([^']+)'.*", "\\1", header)
  switch(descr,
    "<i4" = readBin(con, "integer", n, size = 4L, endian = "little"),
    "<f4" = readBin(con, "numeric", n, size = 4L, endian = "little"),
    "<i8" = {
      words <- readBin(con, "integer", 2L * n, size = 4L, endian = "little")
      stopifnot(all(words[c(FALSE, TRUE)] == 0L))
      words[c(TRUE, FALSE)]
    },
    stop("unsupported .npy type ", descr))
}

worker <- function() {
  dir <- opt("data")
  n <- as.integer(opt("cells"))
  epochs <- as.integer(opt("epochs", "2"))
  suppressPackageStartupMessages(library(rscvi))
  options(rscvi.progress = FALSE)
  invisible(get_num_threads())
  gc()
  base_kb <- rss_kb("VmRSS")

  meta <- jsonlite::fromJSON(file.path(dir, "meta.json"))
  indptr <- read_npy(file.path(dir, "indptr.npy"), n + 1L)
  nnz <- indptr[[n + 1L]]
  counts <- methods::new("dgCMatrix", i = read_npy(file.path(dir, "indices.npy"), nnz),
                         p = indptr, x = read_npy(file.path(dir, "data.npy"), nnz),
                         Dim = c(as.integer(meta$n_genes), n),
                         Dimnames = list(paste0("g", seq_len(meta$n_genes)),
                                         paste0("c", seq_len(n))))
  cells <- data.frame(batch = factor(read_npy(file.path(dir, "batch.npy"), n)),
                      row.names = colnames(counts))
  rm(indptr)
  gc()
  data_bytes <- as.numeric(utils::object.size(counts)) + as.numeric(utils::object.size(cells))
  data_kb <- rss_kb("VmRSS")
  writeLines("5", "/proc/self/clear_refs")

  t0 <- proc.time()[["elapsed"]]
  m <- scvi(counts, cells = cells, batch_key = "batch")
  t_setup <- proc.time()[["elapsed"]] - t0
  setup_peak_kb <- rss_kb("VmHWM")
  m <- train(m, max_epochs = epochs, seed = 0L, check_val_every_n_epoch = epochs,
             device = "cpu", progress = FALSE)
  train_peak_kb <- rss_kb("VmHWM")
  t0 <- proc.time()[["elapsed"]]
  z <- get_latent_representation(m)
  t_latent <- proc.time()[["elapsed"]] - t0
  secs <- history(m)$seconds
  out <- list(tool = "rscvi (R)", n_cells = n, nnz = nnz, epochs = epochs,
              setup_seconds = t_setup, latent_seconds = t_latent,
              seconds_per_epoch = if (length(secs) > 1L) mean(secs[-1L]) else secs[[1L]],
              base_mb = base_kb / 1024, data_mb = data_bytes / 2^20,
              rss_with_data_mb = data_kb / 1024, setup_peak_mb = setup_peak_kb / 1024,
              peak_after_data_mb = rss_kb("VmHWM") / 1024, train_peak_mb = train_peak_kb / 1024,
              elbo_validation = utils::tail(history(m)$elbo_validation, 1L))
  writeLines(jsonlite::toJSON(out, auto_unbox = TRUE, digits = NA), opt("json"))
}

# One run in its own process under /usr/bin/time -v: its JSON result plus the peak RSS.
run_one <- function(tool, n, data, epochs, tmp) {
  json <- file.path(tmp, sprintf("%s-%d.json", tool, n))
  log <- file.path(tmp, sprintf("%s-%d.log", tool, n))
  env <- c("RAYON_NUM_THREADS=2", "OMP_NUM_THREADS=2", "MKL_NUM_THREADS=2")
  cmd <- switch(tool,
    r = c(file.path(R.home("bin"), "Rscript"), script, "--worker", "--data", data,
          "--cells", n, "--epochs", epochs, "--json", json),
    cli = c(cli, "bench", "--data", data, "--max-cells", n, "--epochs", epochs,
            "--batch-size", 128, "--device", "cpu", "--out", file.path(tmp, paste0("cli-", n))),
    "scvi-tools" = c(python, file.path(dirname(script), "gpu", "scvi_tools_synthetic.py"),
                     "--data", data, "--max-cells", n, "--epochs", epochs, "--batch-size",
                     128, "--accelerator", "cpu", "--threads", 2,
                     "--out", file.path(tmp, paste0("scvi-tools-", n))))
  t0 <- proc.time()[["elapsed"]]
  status <- system2("/usr/bin/time", c("-v", cmd), env = env, stdout = log, stderr = log)
  wall <- proc.time()[["elapsed"]] - t0
  text <- readLines(log)
  if (status != 0) stop(tool, " at ", n, " cells failed; see ", log)
  peak_kb <- as.numeric(sub(".*: ", "", grep("Maximum resident set size", text, value = TRUE)))
  res <- switch(tool,
    r = jsonlite::fromJSON(json),
    cli = jsonlite::fromJSON(file.path(tmp, paste0("cli-", n), "metrics.json")),
    "scvi-tools" = jsonlite::fromJSON(file.path(tmp, paste0("scvi-tools-", n), "metrics.json")))
  spe <- switch(tool,
    r = res$seconds_per_epoch,
    cli = res$seconds_per_epoch_after_first,
    "scvi-tools" = {
      e <- res$epoch_train_seconds
      if (length(e) > 1L) mean(e[-1L]) else e[[1L]]
    })
  list(tool = tool, n = n, s_epoch = spe, peak_mb = peak_kb / 1024, wall = wall, res = res,
       load = paste(round(as.numeric(strsplit(readLines("/proc/loadavg"), " ")[[1]][1:3]), 2),
                    collapse = " "))
}

driver <- function() {
  data <- opt("data")
  if (is.null(data)) stop("--data DIR is required (see the header)")
  sizes <- as.integer(strsplit(opt("cells", "10000,100000,300000,1000000"), ",")[[1]])
  tools <- strsplit(opt("tools", "r,cli,scvi-tools"), ",")[[1]]
  epochs <- as.integer(opt("epochs", "2"))
  tmp <- opt("tmp", tempfile("bench-scale-"))
  dir.create(tmp, showWarnings = FALSE, recursive = TRUE)
  rows <- list()
  for (k in seq_along(sizes)) {
    order <- if (k %% 2L == 1L) tools else rev(tools)
    for (tool in order) {
      r <- run_one(tool, sizes[[k]], data, epochs, tmp)
      message(sprintf("%-10s %8d cells: %.2f s/epoch, peak %.0f MB (load %s)", tool,
                      r$n, r$s_epoch, r$peak_mb, r$load))
      rows[[length(rows) + 1L]] <- r
    }
  }
  get <- function(tool, n, f) {
    hit <- Filter(function(r) r$tool == tool && r$n == n, rows)
    if (length(hit)) f(hit[[1]]) else NA
  }
  fmt <- function(x, d = 2) ifelse(is.na(x), "-", formatC(x, format = "f", digits = d))
  lines <- c(
    sprintf("SCVI on synthetic counts (%s), %d epochs, batch size 128, 2 threads; s/epoch = mean over epochs after the first.", basename(normalizePath(data)), epochs),
    sprintf("Machine: %s, %d cores; run %s.", Sys.info()[["nodename"]], parallel::detectCores(), format(Sys.time(), "%Y-%m-%d %H:%M")),
    "",
    "| cells | nnz (M) | s/epoch R / cli / scvi-tools | R / scvi-tools | peak RSS R / cli / scvi-tools (GB) | R: data in R (GB) | R: peak from data / (data + R baseline) | R: scvi() s | R: latent s |",
    "|---|---|---|---|---|---|---|---|---|")
  for (n in sizes) {
    rr <- function(f) get("r", n, function(r) f(r$res))
    ratio <- rr(function(x) x$peak_after_data_mb / (x$data_mb + x$base_mb))
    lines <- c(lines, sprintf("| %s | %s | %s / %s / %s | %s | %s / %s / %s | %s | %s | %s | %s |",
      format(n, big.mark = ","), fmt(rr(function(x) x$nnz / 1e6), 0),
      fmt(get("r", n, function(r) r$s_epoch)), fmt(get("cli", n, function(r) r$s_epoch)),
      fmt(get("scvi-tools", n, function(r) r$s_epoch)),
      fmt(get("r", n, function(r) r$s_epoch) / get("scvi-tools", n, function(r) r$s_epoch)),
      fmt(get("r", n, function(r) r$peak_mb) / 1024), fmt(get("cli", n, function(r) r$peak_mb) / 1024),
      fmt(get("scvi-tools", n, function(r) r$peak_mb) / 1024),
      fmt(rr(function(x) x$data_mb) / 1024), fmt(ratio), fmt(rr(function(x) x$setup_seconds), 1),
      fmt(rr(function(x) x$latent_seconds), 1)))
  }
  lines <- c(lines, "", "Loads (1-min average at the end of each run): ",
             vapply(rows, function(r) sprintf("- %s %d: %s", r$tool, r$n, r$load), ""))
  cat(lines, sep = "\n")
  out <- opt("out")
  if (!is.null(out)) writeLines(lines, out)
}

script <- normalizePath(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)))
cli <- Sys.getenv("RSCVI_CLI", path.expand("~/.cache/rscvi/target/release/rscvi-cli"))
python <- Sys.getenv("RSCVI_BENCH_PYTHON", path.expand("~/.cache/rscvi/bench-venv/bin/python"))
if ("--worker" %in% args) worker() else driver()
