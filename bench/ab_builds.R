#!/usr/bin/env Rscript
# A/B of two rscvi builds on the same data and seeds, for refactors that must not change
# behaviour or speed: each build is installed in its own R library, and the runs alternate
# between them (A B A B ...) in one invocation so that machine load hits both alike.
#
#   Rscript bench/ab_builds.R <lib A> <lib B> [rounds]      (default: 3 rounds)
#
# Per run, in a fresh R process with that library first on .libPaths():
#   SCVI  cellbench, 50 epochs, seed 0, validation after the last epoch (bench_scvi.R's
#         protocol): a hash of the validation cells, validation and all-cell ELBO, s/epoch;
#   GIMVI MERFISH pair, fold 0, seed 0, 200 epochs (bench_gimvi.R's protocol): median per-gene
#         Spearman of the held-out genes (normalised / unnormalised imputation), s/epoch.
# Prints one table and writes bench/results/ab-builds.md. Needs ../shared/data (or
# RSCVI_SHARED_DATA); 2 threads per run.

args <- commandArgs(trailingOnly = TRUE)
if (length(args) >= 1 && args[[1]] == "--run") {
  # One run inside the child process: print "key=value" lines.
  suppressPackageStartupMessages(library(rscvi))
  data_root <- args[[2]]
  sce <- rscvi_example_sce()
  model <- scvi(sce, batch_key = "batch", labels_key = "cell_line")
  t0 <- proc.time()[["elapsed"]]
  model <- train(model, max_epochs = 50L, seed = 0L, device = "cpu", progress = FALSE,
                 check_val_every_n_epoch = 50L)
  scvi_s <- (proc.time()[["elapsed"]] - t0) / 50
  val <- validation_indices(model)
  out <- c(
    scvi_validation_cells = sprintf("n%d-sq%.0f", length(val), sum(as.numeric(sort(val))^2)),
    scvi_elbo_validation = sprintf("%.4f", -get_elbo(model, indices = val, device = "cpu")),
    scvi_elbo_all = sprintf("%.4f", -get_elbo(model, device = "cpu")),
    scvi_history_elbo_validation = sprintf("%.4f", utils::tail(history(model)$elbo_validation, 1)),
    scvi_s_per_epoch = sprintf("%.4f", scvi_s))

  source(file.path(args[[3]], "gimvi_common.R"))
  pair <- load_pair("merfish")
  genes <- pair$genes
  seq <- pair$seq[, Matrix::colSums(pair$seq) > 0]
  colnames(seq) <- paste0("s", seq_len(ncol(seq)))
  test <- genes[genes %in% pair$folds$gene[pair$folds$fold == 0]]
  sp <- list(m = pair$spatial)
  partial <- sp$m[setdiff(genes, test), ]
  keep <- Matrix::colSums(partial) > 0
  full <- sp$m[, keep]
  partial <- partial[, keep]
  colnames(partial) <- paste0("p", seq_len(ncol(partial)))
  g <- suppressWarnings(gimvi(seq, partial))
  t0 <- proc.time()[["elapsed"]]
  g <- train(g, seed = 0L, progress = FALSE)
  gimvi_s <- (proc.time()[["elapsed"]] - t0) / 200
  truth <- t(as.matrix(full[test, , drop = FALSE])) / Matrix::colSums(full)
  med <- function(im) {
    stats::median(vapply(test, function(x) spearman(truth[, x], im[, x]), 0), na.rm = TRUE)
  }
  out <- c(out,
    gimvi_median_normalized = sprintf("%.4f", med(get_imputed_values(g)$spatial)),
    gimvi_median_unnormalized = sprintf("%.4f",
                                        med(get_imputed_values(g, normalized = FALSE)$spatial)),
    gimvi_elbo_train_last = sprintf("%.4f", utils::tail(history(g)$elbo_train, 1)),
    gimvi_s_per_epoch = sprintf("%.4f", gimvi_s))
  cat(paste0(names(out), "=", out), sep = "\n")
  quit(save = "no")
}

if (length(args) < 2) stop("usage: Rscript bench/ab_builds.R <lib A> <lib B> [rounds]")
libs <- c(A = normalizePath(args[[1]]), B = normalizePath(args[[2]]))
rounds <- if (length(args) >= 3) as.integer(args[[3]]) else 3L
here <- if (file.exists("bench/ab_builds.R")) "bench" else stop("run from the repository root")
data_root <- normalizePath(Sys.getenv("RSCVI_SHARED_DATA", file.path("..", "shared", "data")))
Sys.setenv(RAYON_NUM_THREADS = "2")

one_run <- function(lib) {
  env <- c(sprintf("R_LIBS=%s", paste(c(lib, .libPaths()), collapse = ":")))
  out <- system2("Rscript", c(file.path(here, "ab_builds.R"), "--run", data_root,
                              normalizePath(here)),
                 stdout = TRUE, env = env)
  kv <- strsplit(grep("=", out, value = TRUE), "=", fixed = TRUE)
  stats::setNames(vapply(kv, `[[`, "", 2), vapply(kv, `[[`, "", 1))
}

runs <- list()
for (r in seq_len(rounds)) {
  for (build in names(libs)) {
    cat(sprintf("round %d, build %s\n", r, build))
    runs[[length(runs) + 1]] <- c(build = build, round = r, one_run(libs[[build]]))
  }
}
tab <- as.data.frame(do.call(rbind, runs), stringsAsFactors = FALSE)
print(tab, row.names = FALSE)

load <- tryCatch(readLines("/proc/loadavg"), error = function(e) "unknown")
md <- c("# A/B of two rscvi builds (bench/ab_builds.R)", "",
        sprintf("A: `%s`; B: `%s`; %d rounds alternating A, B; 2 threads; load average at the end: %s.",
                libs[["A"]], libs[["B"]], rounds, load), "",
        paste0("| ", paste(names(tab), collapse = " | "), " |"),
        paste0("|", paste(rep("---", ncol(tab)), collapse = "|"), "|"),
        apply(tab, 1, function(row) paste0("| ", paste(row, collapse = " | "), " |")))
writeLines(md, file.path(here, "results", "ab-builds.md"))
cat(sprintf("wrote %s\n", file.path(here, "results", "ab-builds.md")))
