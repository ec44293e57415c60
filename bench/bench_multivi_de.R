#!/usr/bin/env Rscript
# MULTIVI differential expression and accessibility: does rscvi agree with scvi-tools 1.5.1
# as well as scvi-tools agrees with itself across seeds? On mop_snareseq2 (paired, subsample
# as in bench_multivi.R), each tool trains with MULTIVI's defaults (max_epochs as given,
# early stopping on) for each seed, then compares cell type A vs B: DE of the genes and DA of
# the regions, default arguments. Top-50 sets: the 50 features with the largest absolute
# posterior mean LFC (DE, lfc_mean) or effect size (DA, effect_size): with thousands of
# draws the probability of a change saturates at 1 for hundreds of features, so it cannot
# rank them. Agreement of two runs = |top-50 A ∩ top-50 B| / 50. rscvi's tables are kept
# next to scvi-tools' (bench/results/multivi-de-rscvi-<epochs>/seed<k>/). Each
# run's fit is reported too: all-cell ELBO and reconstruction error, kNN label purity and
# within-cell-type batch mixing of the joint latent (k = 15, "Mis" cells left out). Each run's
# summary (epochs, fit, both top-50 sets) is kept in <tool dir>/seed<k>/run.json, committed:
# one scvi-tools run takes over half an hour on 2 cores, so seeds accumulate across sessions.
#
#   Rscript bench/bench_multivi_de.R [epochs] [cells] [seeds] [A,B]   (RSCVI_BENCH_REUSE=1: reuse
#                                    the run.json of runs already done, both tools, per seed;
#                                    RSCVI_BENCH_REFERENCE_SEEDS: scvi-tools' seeds if not [seeds])
#                                    (default: 100, 3000, 0,1, L2/3,L6)
#
# Writes bench/results/multivi-de-<epochs>.md and every pair's overlaps to
# multivi-de-<epochs>-pairs.csv; scvi-tools' tables under
# bench/results/multivi-de-scvi-tools-<epochs>/seed<k>/paired/, rscvi's (and both tools'
# per-epoch history.csv) beside them.

args <- commandArgs(trailingOnly = TRUE)
epochs <- if (length(args) >= 1) as.integer(args[[1]]) else 100L
n_cells <- if (length(args) >= 2 && args[[2]] != "all") as.integer(args[[2]]) else 3000L
seeds <- if (length(args) >= 3) as.integer(strsplit(args[[3]], ",")[[1]]) else 0:1
contrast <- if (length(args) >= 4) strsplit(args[[4]], ",")[[1]] else c("L2/3", "L6")
n_regions <- NA
Sys.setenv(RAYON_NUM_THREADS = "2")
suppressPackageStartupMessages(library(rscvi))
if (!file.exists("bench/bench_multivi_de.R")) stop("run from the repository root")
here <- "bench"
data_root <- normalizePath(Sys.getenv("RSCVI_SHARED_DATA", file.path("..", "shared", "data")))
data_dir <- file.path(data_root, "mop_snareseq2")
venv <- Sys.getenv("RSCVI_BENCH_VENV", file.path(Sys.getenv("HOME"), ".cache/rscvi/bench-venv"))
if (system2("bash", file.path(here, "setup-venv.sh")) != 0) stop("bench/setup-venv.sh failed")
out_dir <- file.path(here, "results", sprintf("multivi-de-scvi-tools-%d", epochs))
source(file.path(here, "multivi_data.R"))

top50 <- function(effect, names) names[order(-abs(effect))][1:50]

keep <- function(run, out) {
  dir.create(out, recursive = TRUE, showWarnings = FALSE)
  jsonlite::write_json(utils::modifyList(run, list(fit = as.list(run$fit))),
                       file.path(out, "run.json"), digits = NA, pretty = TRUE, auto_unbox = TRUE)
  run
}
reusable <- function(out) {
  path <- file.path(out, "run.json")
  if (Sys.getenv("RSCVI_BENCH_REUSE") != "1" || !file.exists(path)) return(NULL)
  run <- jsonlite::read_json(path, simplifyVector = TRUE)
  run$epochs <- as.integer(run$epochs)
  run$fit <- vapply(run$fit, as.numeric, 0)
  run
}

run_rscvi <- function(seed) {
  out <- file.path(here, "results", sprintf("multivi-de-rscvi-%d", epochs), sprintf("seed%d", seed))
  cached <- reusable(out)
  if (!is.null(cached)) return(cached)
  model <- multivi(rna = rna, atac = atac, cells = obs, batch_key = "library")
  model <- train(model, max_epochs = epochs, seed = seed, device = "cpu", progress = FALSE)
  idx1 <- which(obs$cell_type == contrast[[1]])
  idx2 <- which(obs$cell_type == contrast[[2]])
  de <- differential_expression(model, idx1 = idx1, idx2 = idx2)
  da <- differential_accessibility(model, idx1 = idx1, idx2 = idx2)
  dir.create(out, recursive = TRUE, showWarnings = FALSE)
  utils::write.csv(de, file.path(out, "de.csv"))
  utils::write.csv(da, file.path(out, "da.csv"))
  utils::write.csv(history(model), file.path(out, "history.csv"), row.names = FALSE)
  z <- get_latent_representation(model)[cell_names, ]
  run <- list(epochs = nrow(history(model)),
              fit = c(elbo_all = get_elbo(model),
                      reconstruction_all = get_reconstruction_error(model),
                      knn_metrics(z, obs$cell_type != "Mis")),
              de = top50(de$lfc_mean, rownames(de)),
              da = top50(da$effect_size, rownames(da)))
  keep(run, out)
}

run_reference <- function(seed) {
  out <- file.path(out_dir, sprintf("seed%d", seed))
  cached <- reusable(out)
  if (!is.null(cached)) return(cached)
  # A finished Python run (e.g. started by hand) is reused as well.
  done <- file.path(out, "paired", c("de.csv", "da.csv", "latent.csv", "summary.json"))
  if (Sys.getenv("RSCVI_BENCH_REUSE") != "1" || !all(file.exists(done))) {
    status <- system2(file.path(venv, "bin", "python"), c(
      file.path(here, "scvi_tools_multivi.py"), "--data", data_dir, "--out", out,
      "--settings", "paired", "--epochs", epochs, "--threads", "2", "--cells", n_cells,
      "--seed", seed, "--de", shQuote(paste(contrast, collapse = ","))))
    if (status != 0) stop("scvi-tools reference run failed")
  }
  de <- utils::read.csv(file.path(out, "paired", "de.csv"), row.names = 1, check.names = FALSE)
  da <- utils::read.csv(file.path(out, "paired", "da.csv"), row.names = 1, check.names = FALSE)
  s <- jsonlite::fromJSON(file.path(out, "paired", "summary.json"))
  lat <- utils::read.csv(file.path(out, "paired", "latent.csv"), row.names = 1)
  z <- as.matrix(lat)[cell_names, ]
  keep(list(epochs = s$epochs,
            fit = c(elbo_all = s$elbo_all, reconstruction_all = s$reconstruction_all,
                    knn_metrics(z, obs$cell_type != "Mis")),
            de = top50(de$lfc_mean, rownames(de)),
            da = top50(da$effect_size, rownames(da))), out)
}

# RSCVI_BENCH_TOOLS=rscvi runs only rscvi's seeds (scvi-tools' may be running by hand meanwhile);
# RSCVI_BENCH_REFERENCE_SEEDS=0,1,... gives scvi-tools other seeds than rscvi's.
only_rscvi <- Sys.getenv("RSCVI_BENCH_TOOLS") == "rscvi"
reference_seeds <- Sys.getenv("RSCVI_BENCH_REFERENCE_SEEDS")
reference_seeds <- if (nzchar(reference_seeds)) {
  as.integer(strsplit(reference_seeds, ",")[[1]])
} else {
  seeds
}
runs <- list()
for (seed in seeds) {
  cat(sprintf("== rscvi seed %d\n", seed))
  runs[[sprintf("rscvi_s%d", seed)]] <- run_rscvi(seed)
}
if (only_rscvi) quit(save = "no")
for (seed in reference_seeds) {
  cat(sprintf("== scvi-tools seed %d\n", seed))
  runs[[sprintf("scvi_tools_s%d", seed)]] <- run_reference(seed)
}
table_rows <- function(d) apply(d, 1, function(r) paste0("| ", paste(r, collapse = " | "), " |"))
overlap <- function(a, b, what) length(intersect(runs[[a]][[what]], runs[[b]][[what]])) / 50
pairs <- utils::combn(names(runs), 2, simplify = FALSE)
tool <- function(run) sub("_s[0-9]+$", "", run)
kind_of <- function(a, b) {
  t <- sort(c(tool(a), tool(b)))
  if (t[[1]] == t[[2]]) paste(t[[1]], "seed to seed") else "rscvi vs scvi_tools"
}
agree <- do.call(rbind, lapply(pairs, function(p) {
  data.frame(run1 = p[[1]], run2 = p[[2]], kind = kind_of(p[[1]], p[[2]]),
             de_top50 = overlap(p[[1]], p[[2]], "de"), da_top50 = overlap(p[[1]], p[[2]], "da"))
}))
utils::write.csv(agree, file.path(here, "results", sprintf("multivi-de-%d-pairs.csv", epochs)),
                 row.names = FALSE)
# The issue's test: the mean agreement across tools against scvi-tools' own across seeds (one
# pair of seeds is too noisy to decide it; each kind of pair is summarised over all seeds).
summary_of <- function(v) sprintf("%.3f (%.2f-%.2f)", mean(v), min(v), max(v))
by_kind <- do.call(rbind, lapply(unique(agree$kind), function(k) {
  a <- agree[agree$kind == k, ]
  data.frame(pairs = k, n = nrow(a), de_top50 = summary_of(a$de_top50),
             da_top50 = summary_of(a$da_top50))
}))
print(by_kind, row.names = FALSE)
# How sure is the difference (across tools minus scvi-tools with itself)? Pairs share seeds, so
# the seeds, not the pairs, are resampled: each bootstrap draw takes each tool's seeds with
# replacement and averages the pairs of distinct seeds.
ours <- names(runs)[tool(names(runs)) == "rscvi"]
theirs <- names(runs)[tool(names(runs)) == "scvi_tools"]
difference_interval <- function(what) {
  o <- outer(names(runs), names(runs), Vectorize(function(a, b) overlap(a, b, what)))
  dimnames(o) <- list(names(runs), names(runs))
  difference <- function(r, s) {
    distinct <- outer(s, s, "!=") & upper.tri(diag(length(s)))
    mean(o[r, s]) - mean(o[s, s][distinct])
  }
  set.seed(1)
  draws <- replicate(2000, difference(sample(ours, replace = TRUE),
                                      sample(theirs, replace = TRUE)))
  c(estimate = difference(ours, theirs), stats::quantile(draws, c(0.05, 0.95), na.rm = TRUE))
}
intervals <- rbind(DE = difference_interval("de"), DA = difference_interval("da"))
print(round(intervals, 3))
# The whole profiles (every gene's lfc_mean, every region's effect_size), from the tables on
# disk (they are not committed): how much each feature moves between seeds in each tool, and
# how close the tools' seed-averaged profiles are. NULL when a run's tables are missing.
table_path <- function(run, what) {
  seed <- sub("^.*_s", "", run)
  if (tool(run) == "rscvi") {
    file.path(here, "results", sprintf("multivi-de-rscvi-%d", epochs), paste0("seed", seed),
              paste0(what, ".csv"))
  } else {
    file.path(out_dir, paste0("seed", seed), "paired", paste0(what, ".csv"))
  }
}
profiles <- function(what) {
  column <- if (what == "de") "lfc_mean" else "effect_size"
  paths <- vapply(names(runs), table_path, "", what = what)
  if (!all(file.exists(paths))) return(NULL)
  tables <- lapply(paths, utils::read.csv, row.names = 1, check.names = FALSE)
  features <- rownames(tables[[1]])
  vapply(tables, function(t) t[features, column], numeric(length(features)))
}
mean_pair_cor <- function(a, b = NULL) {
  r <- if (is.null(b)) stats::cor(a)[upper.tri(diag(ncol(a)))] else stats::cor(a, b)
  mean(r)
}
profile_rows <- function(what) {
  x <- profiles(what)
  if (is.null(x)) return(NULL)
  a <- x[, ours, drop = FALSE]
  b <- x[, theirs, drop = FALSE]
  top <- function(v) order(-abs(v))[1:50]
  c(sd_rscvi = mean(apply(a, 1, stats::sd)), sd_scvi_tools = mean(apply(b, 1, stats::sd)),
    cor_rscvi = mean_pair_cor(a), cor_scvi_tools = mean_pair_cor(b),
    cor_across = mean_pair_cor(a, b),
    mean_cor = stats::cor(rowMeans(a), rowMeans(b)),
    mean_top50 = length(intersect(top(rowMeans(a)), top(rowMeans(b)))) / 50)
}
profile_stats <- list(DE = profile_rows("de"), DA = profile_rows("da"))
print(profile_stats)
profile_lines <- if (any(vapply(profile_stats, is.null, TRUE))) {
  c("(Whole-profile statistics: the per-feature tables of some runs are not on disk.)", "")
} else {
  f <- function(k, digits) {
    vapply(profile_stats, function(v) formatC(v[[k]], digits = digits, format = "f"), "")
  }
  rows <- rbind(
    c("per-feature sd across seeds, rscvi", f("sd_rscvi", 4)),
    c("per-feature sd across seeds, scvi-tools", f("sd_scvi_tools", 4)),
    c("Pearson, rscvi seed to seed (mean)", f("cor_rscvi", 3)),
    c("Pearson, scvi-tools seed to seed (mean)", f("cor_scvi_tools", 3)),
    c("Pearson, rscvi vs scvi-tools (mean over pairs)", f("cor_across", 3)),
    c("Pearson of the two tools' seed-averaged profiles", f("mean_cor", 3)),
    c("top-50 overlap of the seed-averaged profiles", f("mean_top50", 2)))
  c("Whole profiles (DE: every gene's `lfc_mean`; DA: every region's `effect_size`):",
    "", "| | DE | DA |", "|---|---|---|", table_rows(rows), "")
}
fit <- data.frame(run = names(runs), epochs = vapply(runs, `[[`, 1L, "epochs"),
                  t(vapply(runs, function(r) signif(r$fit, 5), numeric(4))),
                  row.names = NULL)
print(fit, row.names = FALSE)
lines <- c("# MULTIVI DE / DA agreement: rscvi vs scvi-tools 1.5.1 (bench/bench_multivi_de.R)",
           "", sprintf(paste0("mop_snareseq2, paired: %d cells, %d genes, %d regions; %s vs %s; ",
                              "MULTIVI defaults, max_epochs %d; rscvi seeds %s, scvi-tools seeds ",
                              "%s; 2 threads; load %s."),
                       length(cells), nrow(rna), nrow(atac), contrast[[1]], contrast[[2]], epochs,
                       paste(seeds, collapse = ","), paste(reference_seeds, collapse = ","),
                       readLines("/proc/loadavg")), "",
           "Top-50 overlap, mean (min-max) over each kind of pair (every pair:",
           sprintf("[multivi-de-%d-pairs.csv](multivi-de-%d-pairs.csv)):", epochs, epochs),
           "",
           "| pairs | n | DE top-50 | DA top-50 |", "|---|---|---|---|", table_rows(by_kind), "",
           "Across tools minus scvi-tools seed to seed, with a 90% interval from a bootstrap",
           "over each tool's seeds:", "",
           "| | difference | 5% | 95% |", "|---|---|---|---|",
           table_rows(data.frame(rownames(intervals), sprintf("%.3f", intervals[, 1]),
                                 sprintf("%.3f", intervals[, 2]), sprintf("%.3f", intervals[, 3]))),
           "", profile_lines, paste0("| ", paste(names(fit), collapse = " | "), " |"),
           paste0("|", paste(rep("---", ncol(fit)), collapse = "|"), "|"), table_rows(fit), "")
writeLines(lines, file.path(here, "results", sprintf("multivi-de-%d.md", epochs)))
