# GIMVI from R: setup checks, the imputation protocol of gimvi.md §7.1 on the shipped MERFISH
# pair, output shapes and normalisation, save/load, conveniences.

merfish <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      d <- rscvi_example_merfish()
      d$seq$counts <- d$seq$counts[, Matrix::colSums(d$seq$counts) > 0]
      d$seq$cells <- d$seq$cells[colnames(d$seq$counts), ]
      cache <<- d
    }
    cache
  }
})

# Fold 0 of the reference's leave-genes-out folds, trained once with the defaults.
fold0 <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      d <- merfish()
      # merfish_hypothalamus/folds.tsv, fold 0 (the reference runs' held-out genes).
      test <- c("Gad1", "Ano3", "Htr2c", "Npy2r", "Cckar", "Lepr", "Ndnf", "Sgk1", "Cd24a",
                "Ccnd2", "Egr2", "Bdnf", "Grpr", "Crhr2", "Oxtr", "Avpr1a", "Synpr", "Cyp19a1",
                "Scgn", "Serpinb1b", "Galr1", "Gjc3", "Avpr2", "Adora2a", "Fbxw13", "Ermn",
                "Lmod1")
      genes <- rownames(d$spatial$counts)
      partial <- d$spatial$counts[setdiff(genes, test), ]
      keep <- Matrix::colSums(partial) > 0
      model <- suppressWarnings(gimvi(d$seq$counts, partial[, keep]))
      model <- train(model, seed = 0, progress = FALSE)
      cache <<- list(model = model, test = test, full = d$spatial$counts[, keep])
    }
    cache
  }
})

median_spearman <- function(truth, imputed, genes) {
  s <- vapply(genes, function(g) {
    if (length(unique(truth[, g])) < 2) return(NA_real_)
    suppressWarnings(stats::cor(truth[, g], imputed[, g], method = "spearman"))
  }, 0)
  stats::median(s, na.rm = TRUE)
}

test_that("gimvi() checks its inputs and names what is wrong", {
  d <- merfish()
  sp <- d$spatial$counts[1:20, 1:50]
  sp <- sp[, Matrix::colSums(sp) > 0]
  # The reference has two genes without counts: their warning is not what is tested here.
  gimvi <- function(...) suppressWarnings(rscvi::gimvi(...))
  seq <- d$seq$counts[5:134, ]
  seq <- seq[, Matrix::colSums(seq) > 0]
  expect_error(gimvi(seq, sp), "4 of the 20 spatial genes are not among the sequencing genes.*Rnd3")
  expect_error(gimvi(d$seq$counts, sp, dispersion = "gene-label"), "not supported by GIMVI")
  expect_error(gimvi(d$seq$counts, sp, generative_distributions = "zinb"),
               "`generative_distributions` must be two")
  expect_error(gimvi(d$seq$counts, sp, model_library_size = TRUE),
               "`model_library_size` must be two")
  expect_error(gimvi(d$seq$counts, sp, n_latent = 0), "`n_latent`")
  expect_error(gimvi(d$seq$counts, sp, dropout_rate_encoder = 1), "dropout_rate_encoder")
  expect_error(gimvi(d$seq$counts), "`x_spatial` is missing")
  expect_error(gimvi(rscvi_example_merfish()$seq$counts, sp), "`x_seq` has 4 cells with no counts")
  expect_error(gimvi(d$seq$counts, sp, labels_key = "nope"), "neither `x_seq` nor `x_spatial`")
  expect_error(gimvi(d$seq$counts, sp, max_epochs = 3), "only with train = TRUE")
  neg <- sp
  neg[1, 1] <- -1
  expect_error(gimvi(d$seq$counts, neg), "`x_spatial` contains 1 negative")
  m <- gimvi(d$seq$counts, sp[c(3, 1, 2, 4:20), ])   # any gene order
  expect_error(train(m, kappa = -1, max_epochs = 1), "`kappa`")
  expect_error(train(m, max_epochs = 1, early_stopping = TRUE), "unknown arguments")
  expect_error(get_imputed_values(m, decode_mode = "both"), "`decode_mode`")
})

test_that("GIMVI imputes held-out MERFISH genes from the scRNA-seq reference", {
  f <- fold0()
  m <- f$model
  truth <- t(as.matrix(f$full[f$test, ])) / Matrix::colSums(f$full)
  imp <- get_imputed_values(m)
  raw <- get_imputed_values(m, normalized = FALSE)
  # scvi-tools on the same fold (seeds 0-2): 0.10-0.15 normalised, 0.21-0.24 unnormalised;
  # an untrained decoder gives about 0.
  expect_gt(median_spearman(truth, imp$spatial, f$test), 0.10)
  expect_gt(median_spearman(truth, raw$spatial, f$test), 0.17)
  untrained <- suppressWarnings(gimvi(merfish()$seq$counts, f$full[setdiff(rownames(f$full), f$test), ]))
  expect_lt(median_spearman(truth, get_imputed_values(untrained)$spatial, f$test), 0.08)

  # The two datasets share the latent space (the adversarial classifier mixes them).
  z <- get_latent_representation(m)
  emb <- rbind(z$seq, z$spatial)
  mixing <- batch_mixing(emb, rep("all", nrow(emb)),
                         rep(c("seq", "spatial"), c(nrow(z$seq), nrow(z$spatial))))
  expect_gt(mixing, 0.3)

  # Default schedule: 200 epochs, KL warm-up over 400 epochs never reaches 1 (G1).
  h <- history(m)
  expect_equal(nrow(h), 200L)
  expect_equal(h$kl_weight[200], 199 / 400)
  expect_lt(h$elbo_train[200], 0.6 * h$elbo_train[1])
  expect_true(all(is.na(h$elbo_validation)))
})

test_that("the blend of decoder and panel neighbours beats both over the folds", {
  # The five leave-genes-out folds of the benchmark (merfish_hypothalamus/folds.tsv), seed 0.
  # Pooled medians there: decoder 0.211, neighbours alone 0.220, blend 0.241; single folds
  # vary (fold 0: 0.165 / 0.170 / 0.153).
  folds <- utils::read.delim(test_path("fixtures", "merfish_folds.tsv"))
  d <- merfish()
  scores <- do.call(rbind, lapply(sort(unique(folds$fold)), function(k) {
    test <- folds$gene[folds$fold == k]
    if (k == 0) {
      f <- fold0()
    } else {
      partial <- d$spatial$counts[setdiff(rownames(d$spatial$counts), test), ]
      keep <- Matrix::colSums(partial) > 0
      f <- list(model = train(suppressWarnings(gimvi(d$seq$counts, partial[, keep])), seed = 0,
                              progress = FALSE),
                full = d$spatial$counts[, keep])
    }
    truth <- t(as.matrix(f$full[test, ])) / Matrix::colSums(f$full)
    one <- function(v) vapply(test, function(g) {
      if (length(unique(truth[, g])) < 2) return(NA_real_)
      suppressWarnings(stats::cor(truth[, g], v[, g], method = "spearman"))
    }, 0)
    data.frame(decoder = one(get_imputed_values(f$model)$spatial),
               neighbours = one(get_imputed_values(f$model, method = "blend", weight = 1)$spatial),
               blend = one(get_imputed_values(f$model, method = "blend")$spatial))
  }))
  med <- vapply(scores, stats::median, 0, na.rm = TRUE)
  expect_gt(med[["blend"]], med[["decoder"]] + 0.01)
  expect_gt(med[["blend"]], med[["neighbours"]] + 0.01)
})

test_that("the blend keeps the decoder's scale and checks its arguments", {
  f <- fold0()
  m <- f$model
  dec <- get_imputed_values(m)
  blend <- get_imputed_values(m, method = "blend")
  neighbours <- get_imputed_values(m, method = "blend", weight = 1)$spatial
  # Sequencing cells are decoded either way; weight 0 is the decoder.
  expect_identical(blend$seq, dec$seq)
  expect_identical(get_imputed_values(m, method = "blend", weight = 0)$spatial, dec$spatial)
  # Neighbour proportions are on the decoder's scale (shares of the panel total: they sum to
  # one over the panel, as the decoder's do), counts on the cell's panel total.
  panel <- setdiff(rownames(f$full), f$test)
  expect_equal(unname(rowSums(neighbours[, panel])), rep(1, nrow(neighbours)), tolerance = 1e-5)
  expect_equal(unname(rowSums(dec$spatial[, panel])), rep(1, nrow(neighbours)), tolerance = 1e-5)
  raw <- get_imputed_values(m, normalized = FALSE, method = "blend", weight = 1)$spatial
  expect_equal(raw, neighbours * Matrix::colSums(f$full[panel, ]), tolerance = 1e-5)
  expect_error(get_imputed_values(m, method = "knn"), "`method`")
  expect_error(get_imputed_values(m, k = 5), "`k` and `weight` apply to method = \"blend\"")
  expect_error(get_imputed_values(m, method = "blend", weight = 2), "`weight`")
  expect_error(get_imputed_values(m, method = "blend", k = 1e6), "`k` must be in \\[1, ")
})

test_that("imputed values have the reference's shapes and normalisation", {
  f <- fold0()
  m <- f$model
  panel <- m$spatial_gene_names
  imp <- get_imputed_values(m)
  expect_named(imp, c("seq", "spatial"))
  expect_equal(dim(imp$spatial), c(ncol(f$full), 134L))
  expect_identical(colnames(imp$spatial), m$gene_names)
  expect_equal(unname(rowSums(imp$spatial[, panel])), rep(1, ncol(f$full)), tolerance = 1e-4)
  expect_equal(unname(rowSums(imp$seq)), rep(1, nrow(imp$seq)), tolerance = 1e-4)
  # Unnormalised spatial values are on the scale of the observed panel total.
  raw <- get_imputed_values(m, normalized = FALSE)$spatial
  expect_equal(unname(rowSums(raw[, panel])), unname(Matrix::colSums(f$full[panel, ])),
               tolerance = 1e-3)
  # Decode mode "seq" renormalises spatial cells over all genes.
  all_genes <- get_imputed_values(m, decode_mode = "seq")$spatial
  expect_equal(unname(rowSums(all_genes)), rep(1, nrow(all_genes)), tolerance = 1e-4)
  expect_equal(all_genes, get_imputed_values(m, decode_mode = 0)$spatial)
  # Sampling gives different values; the posterior mean is deterministic.
  expect_identical(imp, get_imputed_values(m))
  expect_false(identical(imp$spatial, get_imputed_values(m, deterministic = FALSE)$spatial))
  z <- get_latent_representation(m)
  expect_equal(dim(z$seq), c(ncol(merfish()$seq$counts), 10L))
  expect_identical(rownames(z$spatial), colnames(f$full))
})

test_that("GIMVI models save, load and keep training", {
  d <- merfish()
  sp <- d$spatial$counts[1:60, 1:200]
  sp <- sp[, Matrix::colSums(sp) > 0]
  cells <- data.frame(slide = rep(c("a", "b"), length.out = ncol(sp)), row.names = colnames(sp))
  m <- suppressWarnings(gimvi(d$seq$counts, sp, cells_seq = d$seq$cells, cells_spatial = cells,
                              batch_key_seq = "library", batch_key_spatial = "slide",
                              labels_key = "cell_type"))
  x_seq <- list(counts = d$seq$counts, cells = d$seq$cells)
  x_spatial <- list(counts = sp, cells = cells)
  m <- train(m, max_epochs = 3, seed = 1, progress = FALSE)
  expect_output(print(m), "spatial: +[0-9]+ cells x 60 genes.*\"slide\" \\(2 batches\\)")
  dir <- file.path(tempdir(), "gimvi-roundtrip")
  save_model(m, dir, overwrite = TRUE)
  expect_error(save_model(m, dir), "overwrite = TRUE")
  back <- load_model(dir)
  expect_s3_class(back, "GIMVI")
  expect_error(get_latent_representation(back), "pass `x_seq`")
  z <- get_latent_representation(back, x_seq = x_seq, x_spatial = x_spatial)
  expect_equal(z, get_latent_representation(m))
  back <- load_model(dir, x = list(seq = x_seq, spatial = x_spatial))
  expect_equal(get_imputed_values(back), get_imputed_values(m))
  back <- train(back, max_epochs = 2, seed = 2, progress = FALSE)
  expect_equal(nrow(history(back)), 5L)
  expect_false(isTRUE(all.equal(get_latent_representation(back), z)))
  expect_length(train_indices(m)$spatial, ceiling(0.9 * ncol(sp)))
  expect_error(load_model(dir, x = sp), "list\\(seq = ..., spatial = ...\\)")
  expect_error(get_latent_representation(m, x_spatial = d$spatial$counts[1:60, 1:5]),
               "`batch_key` 'slide' is not a column")
  expect_error(get_imputed_values(m, x_spatial = d$spatial$counts[2:61, 1:5]),
               "genes do not match")
  grDevices::pdf(NULL)
  on.exit(grDevices::dev.off(), add = TRUE)
  expect_invisible(plot(m))
})
