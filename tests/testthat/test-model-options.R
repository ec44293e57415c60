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
