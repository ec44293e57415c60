test_that("likelihood parameters have the right shapes and meaning", {
  m <- small_model()
  p <- get_likelihood_parameters(m, indices = 1:4)
  expect_identical(dim(p$mean), c(4L, 200L))
  expect_identical(colnames(p$mean), m$registry$gene_names)
  # with the observed library, mu sums to each cell's total count
  d <- small_data()
  expect_equal(unname(rowSums(p$mean)), unname(Matrix::colSums(d$counts)[1:4]), tolerance = 1e-4)
  expect_true(all(p$dispersions > 0) && all(p$dropout > 0 & p$dropout < 1))
  # gene dispersion: the same theta in every cell
  expect_equal(unname(p$dispersions[1, ]), unname(p$dispersions[4, ]))
  many <- get_likelihood_parameters(m, indices = 1:3, n_samples = 3L)
  expect_identical(dim(many$mean), c(3L, 3L, 200L))
  avg <- get_likelihood_parameters(m, indices = 1:3, n_samples = 3L, give_mean = TRUE)
  expect_identical(dim(avg$mean), c(3L, 200L))
  pois <- train(scvi(d, gene_likelihood = "poisson", n_latent = 3L), max_epochs = 1L,
                seed = 0L, progress = FALSE)
  pp <- get_likelihood_parameters(pois, indices = 1:2)
  expect_null(pp$dispersions)
  expect_null(pp$dropout)
})

test_that("library sizes: observed totals, and the latent posterior mean", {
  m <- small_model()
  d <- small_data()
  obs <- get_latent_library_size(m, give_mean = FALSE, indices = 1:5)
  expect_equal(unname(obs), unname(Matrix::colSums(d$counts)[1:5]), tolerance = 1e-4)
  expect_error(get_latent_library_size(m), "give_mean")
  lat <- train(scvi(d, use_observed_lib_size = FALSE, n_latent = 3L), max_epochs = 2L,
               seed = 0L, progress = FALSE)
  v <- get_latent_library_size(lat, indices = 1:5)
  expect_true(all(is.finite(v) & v > 0))
  expect_identical(names(v), colnames(d$counts)[1:5])
})

test_that("posterior predictive samples are non-negative integer counts", {
  m <- small_model()
  set.seed(3)
  s <- posterior_predictive_sample(m, indices = 1:10)
  expect_s4_class(s, "dgCMatrix")
  expect_identical(dim(s), c(10L, 200L))
  expect_true(all(s@x > 0) && all(s@x == round(s@x)))
  # totals on the scale of the observed libraries (the model's mean sums to them)
  d <- small_data()
  ratio <- Matrix::rowSums(s) / Matrix::colSums(d$counts)[1:10]
  expect_true(all(ratio > 0.3 & ratio < 3))
  g <- m$registry$gene_names[c(5, 2)]
  arr <- posterior_predictive_sample(m, indices = 1:3, n_samples = 4L, gene_list = g)
  expect_identical(dim(arr), c(3L, 2L, 4L))
  expect_identical(colnames(arr), m$registry$gene_names[c(2, 5)])   # model order
  expect_error(posterior_predictive_sample(m, gene_list = "nope"), "gene_list")
  set.seed(3)
  expect_identical(posterior_predictive_sample(m, indices = 1:10), s)
})

test_that("feature correlation is a symmetric correlation matrix over genes", {
  m <- small_model()
  set.seed(2)
  r <- get_feature_correlation_matrix(m, indices = 1:40, n_samples = 3L)
  expect_identical(dim(r), c(200L, 200L))
  expect_equal(unname(diag(r)), rep(1, 200), tolerance = 1e-10)
  expect_equal(r, t(r))
  expect_true(all(abs(r) <= 1 + 1e-10))
  p <- get_feature_correlation_matrix(m, indices = 1:40, n_samples = 2L,
                                      correlation_type = "pearson",
                                      transform_batch = m$registry$batch_categories[1:2])
  expect_equal(unname(diag(p)), rep(1, 200), tolerance = 1e-10)
  expect_error(get_feature_correlation_matrix(m, correlation_type = "kendall"), "correlation_type")
})

test_that("normalized expression: all draws, and the n_samples_overall sampler", {
  m <- small_model()
  arr <- get_normalized_expression(m, n_samples = 3L, return_mean = FALSE, indices = 1:4)
  expect_identical(dim(arr), c(3L, 4L, 200L))
  expect_equal(unname(apply(arr, c(1, 2), sum)), matrix(1, 3, 4), tolerance = 1e-4)
  set.seed(5)
  s <- get_normalized_expression(m, n_samples_overall = 50L, indices = 1:10, library_size = 1e4,
                                 gene_list = m$registry$gene_names[1:7])
  expect_identical(dim(s), c(50L, 7L))
  expect_true(all(s > 0))
  full <- get_normalized_expression(m, n_samples_overall = 20L, indices = 1:10, library_size = 1e4)
  expect_equal(unname(rowSums(full)), rep(1e4, 20), tolerance = 1e-3)
  expect_error(get_normalized_expression(m, n_samples_overall = 5L, library_size = "latent"),
               "library_size")
})
