# Fidelity to scvi-tools 1.5.1 on the CellBench example data (1,021 singlets x the 2,000
# reference HVGs): the same seed-0 validation split, and fit quality within 1% of the
# reference run's figures (SCVI defaults, batch_key = "batch", 50 epochs, seed 0).
# Reference values are losses per cell (lower is better) except the marginal log-likelihood.

test_that("SCVI on CellBench matches the scvi-tools reference (split, ELBO, marginal LL, purity)", {
  sce <- rscvi_example_sce()
  model <- scvi(sce, batch_key = "batch", labels_key = "cell_line")
  started <- Sys.time()
  model <- train(model, max_epochs = 50L, seed = 0L, device = "cpu", progress = FALSE)
  train_seconds <- as.numeric(difftime(Sys.time(), started, units = "secs"))

  # scvi-tools' validation cells for scvi.settings.seed = 0 and train_size = 0.9
  ref_file <- system.file("extdata", "cellbench_validation_cells_seed0.txt", package = "rscvi",
                          mustWork = TRUE)
  ref_cells <- readLines(ref_file)
  val <- validation_indices(model)
  expect_length(val, 102L)
  expect_setequal(colnames(sce)[val], ref_cells)

  elbo_val <- -get_elbo(model, indices = val)
  elbo_all <- -get_elbo(model)
  mll_val <- get_marginal_ll(model, indices = val, n_mc_samples = 1000L)
  z <- get_latent_representation(model)
  purity <- knn_purity(z, sce$cell_line, k = 15L)
  mixing <- batch_mixing(z, sce$cell_line, sce$batch, k = 15L)
  message(sprintf(paste0(
    "cellbench fidelity (50 epochs, seed 0, %.1f s training): ",
    "validation ELBO loss %.1f (reference 2536.6, limit %.1f); ",
    "all-cell ELBO loss %.1f (reference 2464.9, limit %.1f); ",
    "validation marginal LL %.1f (reference -2525.9, limit %.1f); ",
    "kNN purity %.4f (limit 0.99); batch mixing %.3f"),
    train_seconds, elbo_val, 2536.6 * 1.01, elbo_all, 2464.9 * 1.01, mll_val, -2525.9 * 1.01,
    purity, mixing))

  expect_lte(elbo_val, 2536.6 * 1.01)
  expect_lte(elbo_all, 2464.9 * 1.01)
  expect_gte(mll_val, -2525.9 * 1.01)
  expect_gte(purity, 0.99)
})
