#!/usr/bin/env Rscript
# MULTIVI benchmark: rscvi vs scvi-tools 1.5.1 on mop_snareseq2 (SNARE-seq2 mouse MOp), same
# data, same settings, same metrics, in one run (protocol in bench/scvi_tools_multivi.py).
#
#   Rscript bench/bench_multivi.R [epochs] [cells] [regions] [settings] [seed]
#                                 (default: 20, all, all, paired,mosaic, 0)
#
# Settings: "paired" (every cell has RNA and ATAC), "mosaic" (mosaic_groups.tsv: a third
# of the cells lose their ATAC, a third their RNA) and "protein" (paired, plus stand-in ADT
# counts in the two thirds of the cells that are not "atac_only": the shared data have no
# CITE-seq, so 6 antibodies each mark one annotated cell type, Poisson counts of a
# per-antibody background plus 50 in the marked type, times a log-normal per-cell ADT depth;
# bench/multivi_data.R). Per tool: s/epoch, peak memory, the last history row, all-cell ELBO
# and reconstruction error, kNN label purity and within-cell-type batch mixing of the joint
# latent (k = 15, "Mis" cells left out); protein: the AUROC of each antibody's foreground
# probability for its marked cell type (mean over antibodies, all cells); mosaic: hidden-ATAC
# AUROC, hidden-RNA Spearman and the accuracy of 15-NN label transfer from the paired to the
# unpaired cells in the joint latent, with a 15-NN baseline (the nearest paired cells in the
# observed modality's log-normalised PCA space; their mean hidden profile and majority
# label). Needs the
# installed rscvi, ../shared/data (or RSCVI_SHARED_DATA) and the venv of
# bench/setup-venv.sh. 2 threads each; the tools run one after the other.
# RSCVI_BENCH_REUSE=1 reads scvi-tools results already in
# bench/results/multivi-scvi-tools-<run>/ instead of rerunning them (<run>: the epochs, the
# cells when subsampled, the seed when not 0). Writes bench/results/multivi-<run>-<settings>.md,
# with both tools' training loss at the shorter run's last epoch (early stopping ends them at
# different epochs).

args <- commandArgs(trailingOnly = TRUE)
epochs <- if (length(args) >= 1) as.integer(args[[1]]) else 20L
n_cells <- if (length(args) >= 2 && args[[2]] != "all") as.integer(args[[2]]) else NA
n_regions <- if (length(args) >= 3 && args[[3]] != "all") as.integer(args[[3]]) else NA
settings <- if (length(args) >= 4) strsplit(args[[4]], ",")[[1]] else c("paired", "mosaic")
seed <- if (length(args) >= 5) as.integer(args[[5]]) else 0L
Sys.setenv(RAYON_NUM_THREADS = "2")
suppressPackageStartupMessages(library(rscvi))
here <- if (file.exists("bench/bench_multivi.R")) "bench" else stop("run from the repository root")
data_root <- normalizePath(Sys.getenv("RSCVI_SHARED_DATA", file.path("..", "shared", "data")))
data_dir <- file.path(data_root, "mop_snareseq2")
venv <- Sys.getenv("RSCVI_BENCH_VENV", file.path(Sys.getenv("HOME"), ".cache/rscvi/bench-venv"))
if (system2("bash", file.path(here, "setup-venv.sh")) != 0) stop("bench/setup-venv.sh failed")
# Seed 0 keeps the directory names of the first runs.
run_name <- paste0(epochs, if (!is.na(n_cells)) sprintf("-%dcells", n_cells),
                   if (seed != 0L) sprintf("-seed%d", seed))
out_dir <- file.path(here, "results", sprintf("multivi-scvi-tools-%s", run_name))

source(file.path(here, "multivi_data.R"))
# The ADT counts, where the reference reads them.
adt_file <- file.path(out_dir, "adt.csv")
if ("protein" %in% settings) {
  dir.create(out_dir, showWarnings = FALSE, recursive = TRUE)
  utils::write.csv(t(adt), adt_file)
}
foreground_auroc <- function(fg) {
  mean(vapply(names(marked), function(k) {
    auroc(fg[, k], obs$cell_type == marked[[k]])
  }, 0))
}

# Peak resident memory of this R process (high-water mark: data loading included, as on the
# Python side; a later setting reports at least the earlier one's peak).
peak_rss_mb <- function() {
  line <- grep("^VmHWM", readLines("/proc/self/status"), value = TRUE)
  as.numeric(gsub("[^0-9]", "", line)) / 1024
}


auroc <- function(scores, truth) {
  pos <- sum(truth)
  neg <- length(truth) - pos
  if (pos == 0 || neg == 0) return(NA_real_)
  (sum(rank(scores)[truth]) - pos * (pos + 1) / 2) / (pos * neg)
}
spearman <- function(a, b) {
  if (length(unique(a)) < 2 || length(unique(b)) < 2) return(NA_real_)
  suppressWarnings(stats::cor(a, b, method = "spearman"))
}
hidden_scores <- function(acc, expr, rna_only, atac_only) {
  truth_atac <- as.matrix(atac[, rna_only] > 0)
  counts <- as.matrix(rna[, atac_only])
  truth_rna <- t(t(counts) / pmax(colSums(counts), 1))
  c(hidden_atac_auroc = mean(vapply(seq_along(rna_only), function(i) {
      auroc(acc[i, ], truth_atac[, i])
    }, 0), na.rm = TRUE),
    hidden_rna_spearman = stats::median(vapply(seq_len(nrow(truth_rna)), function(g) {
      spearman(truth_rna[g, ], expr[, g])
    }, 0), na.rm = TRUE))
}

# Label transfer across groups: each unpaired cell takes the majority label of its 15
# nearest paired cells ("Mis" cells neither give nor receive labels); accuracy over the
# RNA-only and the ATAC-only cells. `nn(cells)` gives, for each of `cells`, the positions
# (in `paired`) of its paired neighbours, nearest first.
label_transfer <- function(nn, rna_only, atac_only, paired) {
  accuracy <- function(cells) {
    keep <- obs$cell_type[cells] != "Mis"
    votes <- nn(cells[keep])
    pred <- vapply(seq_len(nrow(votes)), function(i) {
      labels <- obs$cell_type[paired][votes[i, ]]
      names(which.max(table(labels)))
    }, "")
    mean(pred == obs$cell_type[cells[keep]])
  }
  c(label_transfer_rna_only = accuracy(rna_only),
    label_transfer_atac_only = accuracy(atac_only))
}

# The 15 nearest labelled paired cells of each query row in the latent space `z`.
latent_neighbours <- function(z, paired) {
  known <- paired[obs$cell_type[paired] != "Mis"]
  function(cells) {
    d <- outer(rowSums(z[cells, , drop = FALSE]^2), rowSums(z[known, , drop = FALSE]^2), "+") -
      2 * z[cells, , drop = FALSE] %*% t(z[known, , drop = FALSE])
    t(apply(d, 1, function(r) match(known[order(r)[1:15]], paired)))
  }
}

# 15-NN baseline, no model: for an RNA-only cell, the 15 paired cells nearest in the
# log-normalised RNA PCA space (30 components fitted on the paired cells), their mean binary
# ATAC row and majority label; for an ATAC-only cell, the 15 paired cells with the highest
# cosine similarity of binary ATAC rows, their mean normalised RNA and majority label.
knn_baseline <- function(rna_only, atac_only, paired) {
  lognorm <- function(x) log1p(t(t(x) / pmax(Matrix::colSums(x), 1)) * 1e4)
  nn_mean <- function(dist_rows, values) {
    t(vapply(seq_len(nrow(dist_rows)), function(i) {
      colMeans(values[order(dist_rows[i, ])[1:15], , drop = FALSE])
    }, numeric(ncol(values))))
  }
  ln <- lognorm(as.matrix(rna[, c(paired, rna_only)]))
  fit <- stats::prcomp(t(ln[, seq_along(paired)]), rank. = 30)
  query <- scale(t(ln[, -seq_along(paired)]), fit$center, FALSE) %*% fit$rotation
  d_rna <- outer(rowSums(query^2), rowSums(fit$x^2), "+") - 2 * query %*% t(fit$x)
  acc <- nn_mean(d_rna, t(as.matrix(atac[, paired] > 0)) * 1)
  bin <- function(cols) methods::as(atac[, cols] > 0, "CsparseMatrix") * 1
  bq <- bin(atac_only)
  bp <- bin(paired)
  sim <- as.matrix(Matrix::crossprod(bq, bp)) /
    outer(sqrt(Matrix::colSums(bq)), sqrt(Matrix::colSums(bp)))
  counts <- as.matrix(rna[, paired])
  expr <- nn_mean(-sim, t(counts) / pmax(colSums(counts), 1))
  # Neighbours for the labels: the same distances, restricted to labelled paired cells.
  labelled <- obs$cell_type[paired] != "Mis"
  nn_of <- function(dist_rows, rows) {
    function(cells) {
      t(vapply(match(cells, rows), function(i) {
        order(ifelse(labelled, dist_rows[i, ], Inf))[1:15]
      }, integer(15)))
    }
  }
  nn_rna <- nn_of(d_rna, rna_only)
  nn_atac <- nn_of(-sim, atac_only)
  c(hidden_scores(acc, expr, rna_only, atac_only),
    label_transfer(function(cells) {
      if (all(cells %in% rna_only)) nn_rna(cells) else nn_atac(cells)
    }, rna_only, atac_only, paired))
}

run_rscvi <- function(setting) {
  r <- rna
  a <- atac
  if (setting == "mosaic") {
    r <- r[, group != "atac_only"]
    a <- a[, group != "rna_only"]
  }
  protein <- if (setting == "protein") adt[, group != "atac_only"]
  model <- multivi(rna = r, atac = a, protein = protein, cells = obs, batch_key = "library")
  t0 <- proc.time()[["elapsed"]]
  model <- train(model, max_epochs = epochs, seed = seed, device = "cpu", progress = FALSE)
  secs <- proc.time()[["elapsed"]] - t0
  h <- history(model)
  train_loss[[setting]]$rscvi <<- h$elbo_train
  z <- get_latent_representation(model)
  z <- z[match(cell_names, rownames(z)), , drop = FALSE]
  res <- c(s_per_epoch = secs / nrow(h), epochs = nrow(h),
           peak_memory_mb = peak_rss_mb(),
           elbo_validation = utils::tail(h$elbo_validation, 1),
           reconstruction_loss_validation = utils::tail(h$reconstruction_loss_validation, 1),
           elbo_all = get_elbo(model), reconstruction_all = get_reconstruction_error(model),
           knn_metrics(z, obs$cell_type != "Mis"))
  if (setting == "protein") {
    fg <- get_protein_foreground_probability(model)
    res <- c(res, foreground_auroc = foreground_auroc(fg[cell_names, , drop = FALSE]))
  }
  if (setting == "mosaic") {
    cn <- rownames(get_latent_representation(model))
    rna_only <- which(group == "rna_only")
    atac_only <- which(group == "atac_only")
    acc <- get_normalized_accessibility(model, indices = match(cell_names[rna_only], cn))
    expr <- get_normalized_expression(model, indices = match(cell_names[atac_only], cn))
    res <- c(res, hidden_scores(as.matrix(acc), as.matrix(expr), rna_only, atac_only),
             label_transfer(latent_neighbours(z, which(group == "paired")), rna_only,
                            atac_only, which(group == "paired")))
  }
  res
}

run_reference <- function(setting) {
  reuse <- Sys.getenv("RSCVI_BENCH_REUSE") == "1" &&
    file.exists(file.path(out_dir, setting, "summary.json"))
  status <- if (reuse) 0L else system2(file.path(venv, "bin", "python"), c(
    file.path(here, "scvi_tools_multivi.py"), "--data", data_dir, "--out", out_dir,
    "--settings", setting, "--epochs", epochs, "--threads", "2", "--adt", adt_file,
    "--seed", seed,
    if (!is.na(n_regions)) c("--regions", n_regions),
    if (!is.na(n_cells)) c("--cells", n_cells)))
  if (status != 0) stop("scvi-tools reference run failed")
  s <- jsonlite::fromJSON(file.path(out_dir, setting, "summary.json"))
  hist_file <- file.path(out_dir, setting, "history.csv")
  if (file.exists(hist_file)) train_loss[[setting]]$scvi_tools <<- utils::read.csv(hist_file)$elbo_train
  lat <- utils::read.csv(file.path(out_dir, setting, "latent.csv"), row.names = 1)
  z <- as.matrix(lat)[match(cell_names, rownames(lat)), , drop = FALSE]
  res <- c(s_per_epoch = s$s_per_epoch, epochs = s$epochs, peak_memory_mb = s$peak_rss_mb,
           elbo_validation = s$history_last$elbo_validation,
           reconstruction_loss_validation = s$history_last$reconstruction_loss_validation,
           elbo_all = s$elbo_all, reconstruction_all = s$reconstruction_all,
           knn_metrics(z, obs$cell_type != "Mis" & !is.na(z[, 1])))
  if (setting == "protein") {
    fg <- as.matrix(utils::read.csv(file.path(out_dir, setting, "foreground.csv"),
                                    row.names = 1, check.names = FALSE))
    res <- c(res, foreground_auroc = foreground_auroc(fg[cell_names, , drop = FALSE]))
  }
  if (setting == "mosaic") {
    res <- c(res, hidden_atac_auroc = s$hidden_atac_auroc,
             hidden_rna_spearman = s$hidden_rna_spearman,
             label_transfer(latent_neighbours(z, which(group == "paired")),
                            which(group == "rna_only"), which(group == "atac_only"),
                            which(group == "paired")))
  }
  res
}

lines <- c(sprintf("# MULTIVI: rscvi vs scvi-tools 1.5.1 (bench/bench_multivi.R, %d epochs, seed %d)",
                   epochs, seed),
           "", sprintf("mop_snareseq2: %d cells, %d genes, %d regions; 2 threads each; load %s.",
                       length(cells), nrow(rna), nrow(atac), readLines("/proc/loadavg")),
           if (Sys.getenv("RSCVI_BENCH_REUSE") == "1") {
             c("", sprintf("scvi-tools' results read from %s (RSCVI_BENCH_REUSE=1), not rerun.",
                           out_dir))
           }, "")
# Per-epoch training loss of each tool: with early stopping the runs end at different
# epochs, so the table also compares them at the shorter run's last epoch.
train_loss <- list()
at_same_epoch <- function(setting) {
  l <- train_loss[[setting]]
  if (length(l$rscvi) == 0 || length(l$scvi_tools) == 0) return(list())
  e <- min(length(l$rscvi), length(l$scvi_tools))
  name <- sprintf("elbo_train_at_epoch_%d", e)
  list(rscvi = stats::setNames(l$rscvi[e], name), scvi_tools = stats::setNames(l$scvi_tools[e], name))
}
for (setting in settings) {
  cat(sprintf("== %s\n", setting))
  ours <- run_rscvi(setting)
  ref <- run_reference(setting)
  same <- at_same_epoch(setting)
  ours <- c(ours, same$rscvi)
  ref <- c(ref, same$scvi_tools)
  rows <- union(names(ours), names(ref))
  tab <- data.frame(metric = rows, rscvi = signif(ours[rows], 5), scvi_tools = signif(ref[rows], 5))
  if (setting == "mosaic") {
    base <- knn_baseline(which(group == "rna_only"), which(group == "atac_only"),
                         which(group == "paired"))
    tab$knn_baseline <- signif(base[rows], 4)
  }
  print(tab, row.names = FALSE)
  lines <- c(lines, sprintf("## %s", setting), "",
             paste0("| ", paste(names(tab), collapse = " | "), " |"),
             paste0("|", paste(rep("---", ncol(tab)), collapse = "|"), "|"),
             apply(tab, 1, function(r) paste0("| ", paste(r, collapse = " | "), " |")), "")
}
writeLines(lines, file.path(here, "results",
                            sprintf("multivi-%s-%s.md", run_name, paste(settings, collapse = "-"))))
