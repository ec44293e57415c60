# Every model option and registered field trains and answers queries with finite values.

option_data <- function() {
  d <- small_data()
  cells <- d$cells
  totals <- Matrix::colSums(d$counts)
  cells$protocol <- ifelse(grepl("Dropseq", cells$batch), "Drop-seq", "CEL-seq2")
  cells$log_depth <- log(totals)
  cells$size_factor <- totals / mean(totals)
  list(counts = d$counts, cells = cells)
}

fit_ok <- function(model) {
  model <- train(model, max_epochs = 2L, seed = 1L, device = "cpu", progress = FALSE)
  h <- history(model)
  expect_true(all(is.finite(h$elbo_train)))
  expect_true(is.finite(get_elbo(model)))
  z <- get_latent_representation(model)
  expect_identical(dim(z), c(300L, model$config$n_latent))
  expect_true(all(is.finite(z)))
  rho <- get_normalized_expression(model, indices = 1:5)
  expect_true(all(is.finite(rho)) && all(rho >= 0))
  invisible(model)
}

test_that("registered covariates and a size factor are used", {
  d <- option_data()
  m <- scvi(d$counts, cells = d$cells, batch_key = "batch", labels_key = "cell_line",
            categorical_covariate_keys = "protocol", continuous_covariate_keys = "log_depth",
            size_factor_key = "size_factor", n_latent = 4L)
  expect_identical(m$registry$categorical_covariate_categories$protocol, c("CEL-seq2", "Drop-seq"))
  expect_identical(m$config$n_continuous_cov, 1L)
  expect_true(m$config$use_size_factor)
  m <- fit_ok(m)
  # with a size factor the decoder scale is a softplus: rows no longer sum to 1
  rho <- get_normalized_expression(m, indices = 1:5)
  expect_false(isTRUE(all.equal(unname(rowSums(rho)), rep(1, 5), tolerance = 1e-3)))
  m2 <- fit_ok(scvi(d$counts, cells = d$cells, batch_key = "batch",
                    categorical_covariate_keys = "protocol", encode_covariates = TRUE,
                    continuous_covariate_keys = "log_depth", n_latent = 4L))
  expect_true(m2$config$encode_covariates)
})

test_that("every dispersion, likelihood and architecture option trains", {
  d <- small_data()
  base <- function(...) scvi(d$counts, cells = d$cells, batch_key = "batch",
                             labels_key = "cell_line", n_latent = 3L, n_hidden = 32L, ...)
  for (disp in c("gene", "gene-batch", "gene-label", "gene-cell")) {
    m <- fit_ok(base(dispersion = disp))
    rho <- get_normalized_expression(m, indices = 1:5)
    expect_equal(unname(rowSums(rho)), rep(1, 5), tolerance = 1e-4)
  }
  for (lik in c("nb", "poisson")) fit_ok(base(gene_likelihood = lik))
  fit_ok(base(latent_distribution = "ln", use_observed_lib_size = FALSE, n_layers = 2L,
              use_batch_norm = "none", use_layer_norm = "both", deeply_inject_covariates = FALSE,
              dropout_rate = 0))
  fit_ok(base(use_observed_lib_size = FALSE))
  # "latent" library size with the observed library: mu = exp(l) rho sums to each cell's total
  m <- fit_ok(base())
  lib <- get_normalized_expression(m, library_size = "latent", indices = 1:5)
  expect_equal(unname(rowSums(lib)), unname(Matrix::colSums(d$counts)[1:5]), tolerance = 1e-4)
})

test_that("a model keeps learning after a query, a second train() call and a reload", {
  d <- small_data()
  m <- scvi(d$counts, cells = d$cells, batch_key = "batch", n_latent = 3L)
  # the untrained model is used first; the ELBO must then improve with each train() call
  # (running batch-norm statistics alone would change the latent space, not fit the data)
  expect_warning(e0 <- get_elbo(m), "has not been trained")
  m <- train(m, max_epochs = 2L, seed = 1L, progress = FALSE)
  e1 <- get_elbo(m)
  expect_gt(e1, e0 + 5)
  m <- train(m, max_epochs = 5L, seed = 2L, progress = FALSE)
  e2 <- get_elbo(m)
  expect_gt(e2, e1 + 5)
  z2 <- get_latent_representation(m)
  expect_identical(history(m)$epoch, 1:7)
  dir <- file.path(tempdir(), "retrain")
  save_model(m, dir, overwrite = TRUE)
  m2 <- load_model(dir, x = list(counts = d$counts, cells = d$cells))
  m2 <- train(m2, max_epochs = 1L, seed = 3L, progress = FALSE)
  expect_false(isTRUE(all.equal(get_latent_representation(m2), z2)))
})

test_that("batch_representation = \"embedding\" learns one embedding row per batch", {
  d <- small_data()
  m <- scvi(d$counts, cells = d$cells, batch_key = "batch", n_latent = 4L,
            batch_representation = "embedding")
  expect_output(print(m), "batch_representation = \"embedding\"")
  untrained <- suppressWarnings(get_batch_representation(m))
  m <- fit_ok(m)
  rep <- get_batch_representation(m)
  expect_identical(dim(rep), c(300L, 5L))
  expect_identical(rownames(rep), colnames(d$counts))
  # one row per batch, shared by its cells, distinct between batches, learnt in training
  rows <- unique(rep)
  expect_identical(nrow(rows), length(unique(d$cells$batch)))
  expect_identical(nrow(unique(rep[d$cells$batch == d$cells$batch[1], , drop = FALSE])), 1L)
  expect_false(isTRUE(all.equal(rep, untrained)))
  expect_identical(get_batch_representation(m, indices = 3:4), rep[3:4, ])
  # the decoder follows the embedding of transform_batch
  b <- m$registry$batch_categories
  set.seed(1)
  e1 <- get_normalized_expression(m, indices = 1:20, transform_batch = b[1], n_samples = 5L)
  set.seed(1)
  e2 <- get_normalized_expression(m, indices = 1:20, transform_batch = b[2], n_samples = 5L)
  expect_gt(mean(abs(log(e1) - log(e2))), 1e-3)
  # saved and loaded unchanged
  dir <- tempfile("embedding-")
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  save_model(m, dir)
  expect_identical(get_batch_representation(load_model(dir, x = d)), rep)
  # scArches: the query's new batch gets a fresh row; the reference's rows stay where they were
  ref_cells <- d$cells$batch != b[1]
  ref <- train(scvi(d$counts[, ref_cells], cells = d$cells[ref_cells, ], batch_key = "batch",
                    batch_representation = "embedding"), max_epochs = 2L, seed = 1L,
               progress = FALSE)
  q <- suppressWarnings(load_query_data(list(counts = d$counts[, !ref_cells],
                                             cells = d$cells[!ref_cells, ]), ref))
  expect_identical(q$config$n_batch, ref$config$n_batch + 1L)
  expect_identical(dim(get_batch_representation(train(q, max_epochs = 1L, progress = FALSE))),
                   c(sum(!ref_cells), 5L))
  # one-hot models have no batch representation
  one_hot <- scvi(d$counts, cells = d$cells, batch_key = "batch")
  expect_error(suppressWarnings(get_batch_representation(one_hot)),
               "represents batches as one-hot columns")
  expect_error(scvi(d, batch_representation = "embeding"), "batch_representation")
})

test_that("gene_likelihood = \"normal\" trains and samples continuous values", {
  d <- small_data()
  m <- fit_ok(scvi(d$counts, cells = d$cells, batch_key = "batch", n_latent = 3L,
                   gene_likelihood = "normal"))
  x <- posterior_predictive_sample(m, indices = 1:10)
  expect_true(any(x@x != round(x@x)))
  expect_true(all(is.finite(get_reconstruction_error(m, return_mean = FALSE))))
  p <- get_likelihood_parameters(m, indices = 1:3)
  expect_true(all(p$dispersions > 0))
  expect_null(p$dropout)
  expect_error(get_feature_correlation_matrix(m, indices = 1:5, n_samples = 2L),
               "Poisson or Normal likelihood")
  de <- differential_expression(m, groupby = "cell_line", group1 = d$cells$cell_line[1],
                                weights = "importance")
  expect_true(all(is.finite(de$lfc_mean)))
  expect_error(multivi(d$counts, gene_likelihood = "normal"), "gene_likelihood")
})

test_that("minify_adata() keeps the latent posterior, answers z-only queries and saves", {
  d <- small_data()
  m <- train(scvi(d$counts, cells = d$cells, batch_key = "batch", labels_key = "cell_line",
                  n_latent = 4L), max_epochs = 3L, seed = 1L, progress = FALSE)
  s <- minify_adata(m)
  expect_output(print(s), "minified \\(latent posterior; no counts\\)")
  expect_output(print(m), "from a dgCMatrix")          # the original keeps its counts
  z <- get_latent_representation(m)
  expect_identical(get_latent_representation(s), z)    # the stored posterior means
  # z-only queries: the same estimates up to the z draws
  set.seed(3)
  e_s <- get_normalized_expression(s, n_samples = 25L)
  e_m <- get_normalized_expression(m, n_samples = 25L)
  expect_gt(cor(log(as.vector(e_s)), log(as.vector(e_m))), 0.95)
  de <- differential_expression(s, groupby = "cell_line", group1 = d$cells$cell_line[1])
  expect_true(all(is.finite(de$lfc_mean)))
  expect_identical(dim(posterior_predictive_sample(s, indices = 1:4)), c(4L, 200L))
  # what needs the counts says so
  expect_error(get_elbo(s), "minified model .*the ELBO .* needs the counts: pass them as `x`")
  expect_error(get_marginal_ll(s, indices = 1:3), "marginal log-likelihood needs the counts")
  expect_error(train(s, max_epochs = 1L), "`model` is minified")
  expect_error(minify_adata(s), "minified already")
  # ...and works with them
  expect_equal(get_elbo(s, x = d), get_elbo(m), tolerance = 0.05)
  # saved with the model; a later save of an ordinary model into the folder drops it
  dir <- tempfile("minified-")
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  save_model(s, dir)
  back <- load_model(dir)
  expect_identical(back$cell_names, colnames(d$counts))
  expect_identical(get_latent_representation(back), z)
  de2 <- differential_expression(back, groupby = "cell_line", group1 = d$cells$cell_line[1])
  expect_identical(dim(de2), dim(de))
  save_model(m, dir, overwrite = TRUE)
  expect_false(file.exists(file.path(dir, "minified.mpk")))
  expect_null(load_model(dir)$data)
  expect_error(minify_adata(load_model(dir)), "no data attached")
  expect_error(minify_adata(m, batch_size = 0), "batch_size")
})

test_that("model_device() says where the weights are and where training ran", {
  m <- scvi(small_data(), batch_key = "batch")
  expect_identical(model_device(m), list(weights = "cpu", trained_on = NA_character_))
  m <- train(m, max_epochs = 1L, device = "cpu", progress = FALSE)
  expect_identical(model_device(m)$trained_on, "cpu")
  expect_error(model_device(m, "x"), "unknown")
})
