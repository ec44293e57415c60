# Issue 20: how should GIMVI's decoder and the spatial panel's nearest sequencing cells be
# combined? On the leave-genes-out folds of bench_gimvi.R (same data, folds, seeds, 200
# epochs), every fold's model is trained once and the held-out genes of the spatial cells are
# imputed as
#   (1 - w) * decoder + w * (mean over the k nearest sequencing cells, in log-normalised panel
#   expression, of their counts / panel total)      [normalized view; x panel total: counts]
# for a grid of w and k; the table is the pooled median per-gene Spearman, averaged over
# seeds (w = 0: the decoder; w = 1: the panel kNN on the decoder's scale).
#
#   Rscript bench/gimvi_blend_grid.R [datasets] [seeds]     (default merfish,osmfish 0)

suppressPackageStartupMessages(library(rscvi))
args <- commandArgs(trailingOnly = TRUE)
datasets <- strsplit(if (length(args) >= 1) args[[1]] else "merfish,osmfish", ",")[[1]]
seeds <- as.integer(strsplit(if (length(args) >= 2) args[[2]] else "0", ",")[[1]])
here <- dirname(normalizePath(sub("^--file=", "", grep("^--file=", commandArgs(FALSE),
                                                      value = TRUE)[1])))
data_root <- Sys.getenv("RSCVI_SHARED_DATA", file.path(here, "..", "..", "shared", "data"))
Sys.setenv(RAYON_NUM_THREADS = "2")
source(file.path(here, "gimvi_common.R"))

weights <- c(0, 0.25, 0.4, 0.5, 0.6, 0.75, 1)
ks <- c(5L, 15L, 30L, 50L)

# Indices of the k nearest rows of `b` for every row of `a` (squared Euclidean).
nearest <- function(a, b, k) {
  d <- outer(rowSums(a^2), rowSums(b^2), `+`) - 2 * tcrossprod(a, b)
  t(apply(d, 1L, function(r) order(r)[seq_len(k)]))
}

log_norm <- function(m) {
  tot <- Matrix::colSums(m)
  t(as.matrix(log1p(1e4 * Matrix::t(Matrix::t(m) / pmax(tot, 1)))))
}

rows <- list()
for (name in datasets) {
  pair <- load_pair(name)
  seq <- pair$seq[, Matrix::colSums(pair$seq) > 0]
  colnames(seq) <- paste0("s", seq_len(ncol(seq)))
  for (seed in seeds) {
    for (f in sort(unique(pair$folds$fold))) {
      test <- pair$genes[pair$genes %in% pair$folds$gene[pair$folds$fold == f]]
      train_genes <- setdiff(pair$genes, test)
      partial <- pair$spatial[train_genes, ]
      keep <- Matrix::colSums(partial) > 0
      full <- pair$spatial[, keep]
      partial <- partial[, keep]
      colnames(partial) <- paste0("p", seq_len(ncol(partial)))
      model <- train(suppressWarnings(gimvi(seq, partial)), seed = seed, progress = FALSE)
      truth <- t(as.matrix(full[test, , drop = FALSE])) / Matrix::colSums(full)
      dec <- get_imputed_values(model, normalized = TRUE)$spatial[, test, drop = FALSE]
      dec_raw <- get_imputed_values(model, normalized = FALSE)$spatial[, test, drop = FALSE]
      lib <- Matrix::colSums(partial)
      # Sequencing cells with panel counts, their test-gene proportions of the panel total.
      panel_tot <- Matrix::colSums(seq[train_genes, ])
      cand <- which(panel_tot > 0)
      prop <- t(as.matrix(seq[test, cand, drop = FALSE])) / panel_tot[cand]
      nn_all <- nearest(log_norm(partial), log_norm(seq[train_genes, cand]), max(ks))
      for (k in ks) {
        nn <- nn_all[, seq_len(k), drop = FALSE]
        knn <- vapply(seq_along(test), function(g) rowMeans(matrix(prop[nn, g], nrow(nn))),
                      numeric(nrow(nn)))
        knn <- matrix(knn, nrow(nn), dimnames = list(NULL, test))
        for (w in weights) {
          if (w == 0 && k != ks[[1]]) next
          norm <- (1 - w) * dec + w * knn
          raw <- (1 - w) * dec_raw + w * knn * lib
          rows[[length(rows) + 1L]] <- data.frame(
            dataset = name, seed = seed, fold = f, gene = test, w = w, k = if (w == 0) NA else k,
            normalized = vapply(test, function(g) spearman(truth[, g], norm[, g]), 0),
            unnormalized = vapply(test, function(g) spearman(truth[, g], raw[, g]), 0))
        }
      }
      cat(sprintf("%s seed %d fold %d done\n", name, seed, f))
    }
  }
}
res <- do.call(rbind, rows)
summ <- stats::aggregate(cbind(normalized, unnormalized) ~ dataset + w + k + seed,
                         data = transform(res, k = ifelse(is.na(k), 0L, k)),
                         FUN = function(v) stats::median(v, na.rm = TRUE), na.action = na.pass)
summ <- stats::aggregate(cbind(normalized, unnormalized) ~ dataset + w + k, data = summ, FUN = mean)
summ <- summ[order(summ$dataset, summ$k, summ$w), ]
print(summ, row.names = FALSE, digits = 3)
