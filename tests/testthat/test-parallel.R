# Data-parallel training (train(devices = )): workers on threads of this process, each with a
# replica of the model and its part of every minibatch. Compared with one worker on the same
# data and seed; every model of the family goes through the same loop.

fit_cellbench <- function(devices, seed = 0L, max_epochs = 20L) {
  m <- scvi(rscvi_example_sce(), batch_key = "batch")
  train(m, max_epochs = max_epochs, seed = seed, devices = devices, device = "cpu",
        progress = FALSE)
}

test_that("two workers fit cellbench as well as one, and a seed reproduces them", {
  skip_if_not_installed("SingleCellExperiment")
  one <- fit_cellbench(1L)
  two <- fit_cellbench(2L)
  again <- fit_cellbench(2L)
  v1 <- tail(history(one)$elbo_validation, 1)
  v2 <- tail(history(two)$elbo_validation, 1)
  expect_lt(abs(v2 - v1) / abs(v1), 0.01)
  # Both learned: far below the untrained model's validation ELBO.
  untrained <- history(fit_cellbench(1L, max_epochs = 1L))$elbo_validation
  expect_lt(v2, untrained - 0.1 * abs(untrained))
  expect_identical(get_latent_representation(two), get_latent_representation(again))
  expect_identical(untimed(two), untimed(again))
  expect_identical(nrow(history(two)), 20L)
  expect_identical(two$last_training$epochs_run, 20L)
  # A different seed is a different run.
  other <- fit_cellbench(2L, seed = 1L)
  expect_false(identical(get_latent_representation(two), get_latent_representation(other)))
})

test_that("early stopping works with several workers", {
  skip_if_not_installed("SingleCellExperiment")
  m <- scvi(rscvi_example_sce(), batch_key = "batch")
  expect_message(
    m <- train(m, max_epochs = 50L, seed = 0L, devices = 2L, device = "cpu", progress = FALSE,
               early_stopping = TRUE, early_stopping_patience = 2L,
               early_stopping_min_delta = 1e6),
    "Early stopping")
  expect_identical(m$last_training$epochs_run, 3L)
  expect_true(m$last_training$early_stopped)
})

test_that("`devices` is checked and named", {
  skip_if_not_installed("SingleCellExperiment")
  m <- scvi(rscvi_example_sce(), batch_key = "batch")
  expect_error(train(m, devices = 0L), "`devices` must be a single")
  expect_error(train(m, devices = "two"), "`devices`")
  expect_error(train(m, devices = 1.5), "`devices`")
  expect_error(train(m, devices = 4L, batch_size = 6L),
               paste0("`batch_size` must be at least 2 cells per device \\(>= 8\\) ",
                      "with devices = 4, got 6"))
  f <- system.file("extdata", "cellbench_small.h5ad", package = "rscvi")
  streamed <- scvi(f, batch_key = "batch")
  expect_error(train(streamed, max_epochs = 1L, devices = 2L, progress = FALSE),
               "`devices` must be 1 when the counts stay in a file")
})

test_that("GIMVI, MULTIVI and SPLICEVI train on several workers", {
  d <- rscvi_example_merfish()
  seq_counts <- d$seq$counts[, Matrix::colSums(d$seq$counts) > 0]
  g <- suppressWarnings(gimvi(seq_counts, d$spatial$counts))
  g <- train(g, max_epochs = 2L, seed = 0L, devices = 2L, device = "cpu", progress = FALSE)
  expect_identical(nrow(history(g)), 2L)
  expect_true(all(is.finite(history(g)$elbo_train)))

  mv <- rscvi_example_multiome()
  j <- 1:300
  rna <- mv$rna[, j]
  rna <- rna[Matrix::rowSums(rna) > 0, ]
  m <- multivi(rna, mv$atac[, j], cells = mv$cells[j, ], batch_key = "library")
  # The adversarial batch classifier's gradients are summed across workers too.
  m <- train(m, max_epochs = 2L, seed = 0L, devices = 2L, device = "cpu", progress = FALSE,
             adversarial_mixing = TRUE)
  expect_identical(nrow(history(m)), 2L)
  expect_true(all(is.finite(history(m)$reconstruction_loss_validation)))

  s <- rscvi_example_splicing()
  k <- 1:300
  e <- s$expression[, k]
  s_model <- splicevi(e[Matrix::rowSums(e) > 0, ], s$junctions[, k], atse = s$atse,
                      cells = s$cells[k, , drop = FALSE], batch_key = "library")
  s_model <- train(s_model, max_epochs = 2L, seed = 0L, devices = 2L, device = "cpu",
                   progress = FALSE)
  expect_identical(nrow(history(s_model)), 2L)
  expect_true(all(is.finite(history(s_model)$elbo_train)))
})

test_that("Ctrl-C stops every worker at the same step and keeps the model usable", {
  skip_on_os("windows")
  skip_if_not_installed("callr")
  p <- interrupted_child(function() {
    library(rscvi)
    options(rscvi.interactive = TRUE)
    m <- scvi(rscvi_example_data(), batch_key = "batch")
    cat("ready\n")
    msg <- NULL
    m <- withCallingHandlers(
      train(m, max_epochs = 100000L, seed = 0L, devices = 2L, progress = FALSE),
      message = function(e) {
        msg <<- conditionMessage(e)
        invokeRestart("muffleMessage")
      })
    list(message = msg, epochs = nrow(history(m)), latent = dim(get_latent_representation(m)))
  }, wait = 20)
  res <- p$get_result()
  expect_match(res$message, "interrupted after [0-9]+ of 100000 epochs")
  expect_gt(res$epochs, 0)
  expect_identical(res$latent, c(1021L, 10L))
})

test_that("rank 0 reports progress", {
  m <- scvi(rscvi_example_data(), batch_key = "batch")
  out <- capture.output(invisible(train(m, max_epochs = 20L, seed = 0L, devices = 2L,
                                        progress = TRUE)), type = "message")
  expect_length(out, 20L)
  expect_match(out[[20]], "^Epoch 20/20 \\(100%\\)")
})

test_that("more workers than the training cells can feed is an error", {
  d <- rscvi_example_data()
  m <- suppressWarnings(scvi(d$counts[, 1:20], cells = d$cells[1:20, ], batch_key = "batch"))
  expect_error(train(m, max_epochs = 1L, devices = 16L, progress = FALSE),
               "`devices` = 16 needs at least 32 training cells in each dataset")
})
