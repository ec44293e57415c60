#!/usr/bin/env Rscript
# Data-parallel training (issue 18, part 1): one worker vs several on the same data, seed and
# settings, each run in its own process, the settings alternated.
#
#   Rscript bench/bench_parallel.R [--devices 1,2] [--rounds 2] [--epochs 50]
#       [--data DIR --cells 100000 --cli-epochs 3] [--out bench/results/parallel.md]
#
# cellbench (the shipped 1,021-cell subsample, 2,000 genes) through R: s/epoch and the final
# validation ELBO (train(devices = k), batch_size 128 split between the workers). With --data
# (an `rscvi-cli synth` folder, as bench_scale.R takes) also the first --cells cells through
# rscvi-cli bench --devices k. Prints one table, the load, and the traffic of one step.

args <- commandArgs(trailingOnly = TRUE)
opt <- function(name, default = NULL) {
  k <- match(paste0("--", name), args)
  if (is.na(k)) default else args[[k + 1L]]
}

if (identical(args[1], "--worker")) {
  suppressPackageStartupMessages(library(rscvi))
  devices <- as.integer(args[2])
  epochs <- as.integer(args[3])
  m <- scvi(rscvi_example_sce(), batch_key = "batch")
  m <- train(m, max_epochs = epochs, seed = 0L, devices = devices, device = "cpu",
             progress = FALSE)
  h <- history(m)
  cat(sprintf("RESULT %d %.6f %.4f\n", devices, tail(h$elbo_validation, 1),
              mean(h$seconds[-1])))
  quit(save = "no")
}

devices <- as.integer(strsplit(opt("devices", "1,2"), ",")[[1]])
rounds <- as.integer(opt("rounds", "2"))
epochs <- as.integer(opt("epochs", "50"))
data <- opt("data")
cells <- as.integer(opt("cells", "100000"))
cli_epochs <- as.integer(opt("cli-epochs", "3"))
out <- opt("out", "bench/results/parallel.md")
script <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE))
cli <- Sys.getenv("RSCVI_CLI", file.path(Sys.getenv("HOME"), ".cache/rscvi/target/release",
                                         "rscvi-cli"))
env <- c("RAYON_NUM_THREADS=2")

rows <- list()
load_before <- readLines("/proc/loadavg")
for (r in seq_len(rounds)) {
  for (k in devices) {
    res <- system2("Rscript", c(script, "--worker", k, epochs), stdout = TRUE, env = env)
    v <- strsplit(grep("^RESULT", res, value = TRUE), " ")[[1]]
    rows[[length(rows) + 1]] <- data.frame(data = "cellbench 1,021 cells (R)", devices = k,
                                           round = r, s_per_epoch = as.numeric(v[4]),
                                           elbo_validation = as.numeric(v[3]))
    if (!is.null(data)) {
      tmp <- tempfile()
      system2(cli, c("bench", "--data", data, "--max-cells", cells, "--epochs", cli_epochs,
                     "--batch-size", 128, "--device", "cpu", "--devices", k, "--out", tmp),
              stdout = FALSE, stderr = FALSE, env = env)
      j <- jsonlite::fromJSON(file.path(tmp, "metrics.json"))
      rows[[length(rows) + 1]] <- data.frame(
        data = sprintf("synthetic %s cells (CLI)", format(cells, big.mark = ",")),
        devices = k, round = r, s_per_epoch = j$seconds_per_epoch_after_first,
        elbo_validation = j$elbo_validation)
      n_parameters <- j$n_parameters
    }
  }
}
load_after <- readLines("/proc/loadavg")
tab <- do.call(rbind, rows)
agg <- aggregate(cbind(s_per_epoch, elbo_validation) ~ data + devices, tab, mean)
base <- agg$s_per_epoch[match(paste(agg$data, 1), paste(agg$data, agg$devices))]
agg$speedup <- round(base / agg$s_per_epoch, 2)
agg$s_per_epoch <- round(agg$s_per_epoch, 3)
agg$elbo_validation <- round(agg$elbo_validation, 2)
print(agg, row.names = FALSE)

# One step's traffic: one all-reduce of every gradient (4 bytes each) plus a few flags; per
# epoch three more small ones (loss sums, running statistics, validation sums).
n_parameters <- if (exists("n_parameters")) n_parameters else NA
md <- c(
  "# Data-parallel training: one worker vs several",
  "",
  sprintf("`Rscript bench/bench_parallel.R %s` on %s, %s; %d rounds alternated, %d epochs",
          paste(args, collapse = " "), Sys.info()[["nodename"]], format(Sys.time(), "%Y-%m-%d"),
          rounds, epochs),
  sprintf("(cellbench), 2 rayon threads per process. Load average before: %s; after: %s.",
          paste(strsplit(load_before, " ")[[1]][1:3], collapse = " "),
          paste(strsplit(load_after, " ")[[1]][1:3], collapse = " ")),
  "",
  "| data | devices | s/epoch | speed-up | validation ELBO |",
  "|---|---|---|---|---|",
  sprintf("| %s | %d | %.3f | %.2f | %.2f |", agg$data, agg$devices, agg$s_per_epoch,
          agg$speedup, agg$elbo_validation),
  "",
  if (!is.na(n_parameters)) sprintf(
    "SCVI on 2,000 genes has %s weights: one all-reduce of %.1f MB per step.",
    format(n_parameters, big.mark = ","), 4 * n_parameters / 1e6)
)
writeLines(md, out)
cat("wrote", out, "\n")
