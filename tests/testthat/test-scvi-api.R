# The user-facing model API (R/scvi.R, R/methods.R, R/conveniences.R, R/metrics.R) on small
# subsets of the example data: construction from every input type, short training runs,
# shapes and dimnames of every query, reproducibility, save/load, conveniences, printing.

quick_train <- function(model, seed = 0L, epochs = 3L) {
  train(model, max_epochs = epochs, seed = seed, device = "cpu", progress = FALSE)
}

# --- construction ---------------------------------------------------------------------------

test_that("scvi() builds a model from a SingleCellExperiment", {
  sce <- small_sce()
  m <- scvi(sce, batch_key = "batch", labels_key = "cell_line")
  expect_s3_class(m, "SCVI")
  expect_identical(m$gene_names, rownames(sce))
  expect_identical(m$cell_names, colnames(sce))
  expect_identical(m$registry$batch_categories, sort(unique(sce$batch)))
  expect_identical(m$registry$setup_args$layer, "counts")
  expect_identical(m$config$n_input, 200L)
  expect_identical(m$config$n_batch, 5L)
  expect_identical(m$config$n_labels, 5L)
  # scvi-tools defaults
  expect_identical(m$config$n_latent, 10L)
  expect_identical(m$config$n_hidden, 128L)
  expect_identical(m$config$dispersion, "gene")
  expect_identical(m$config$gene_likelihood, "zinb")
  expect_identical(m$config$use_batch_norm, "both")
  expect_identical(m$config$use_layer_norm, "none")
  expect_identical(train_indices(m), integer(0))
  expect_identical(nrow(history(m)), 0L)
})

test_that("scvi() builds a model from a dgCMatrix + data.frame, a base matrix and a list", {
  d <- small_data()
  m1 <- scvi(d$counts, cells = d$cells, batch_key = "batch")
  expect_identical(m1$cell_names, colnames(d$counts))
  expect_identical(m1$registry$n_batch, 5L)
  m2 <- scvi(as.matrix(d$counts), n_latent = 3L, gene_likelihood = "nb")
  expect_identical(m2$registry$n_batch, 1L)
  expect_identical(m2$config$gene_likelihood, "nb")
  m3 <- scvi(d, batch_key = "batch")
  expect_identical(m3$registry$batch_categories, m1$registry$batch_categories)
  # every choice argument goes through
  m4 <- scvi(d, dispersion = "gene-batch", latent_distribution = "ln", batch_key = "batch",
             use_batch_norm = "none", use_layer_norm = "both", use_observed_lib_size = FALSE,
             encode_covariates = TRUE, n_layers = 2L)
  expect_identical(m4$config$dispersion, "gene-batch")
  expect_identical(m4$config$use_layer_norm, "both")
  expect_false(m4$config$use_observed_lib_size)
})

test_that("scvi() builds a model from a Seurat object", {
  skip_if_not_installed("SeuratObject")
  d <- small_data()
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(d$counts, meta.data = d$cells))
  m <- scvi(so, batch_key = "batch")
  expect_identical(m$registry$setup_args$assay, "RNA")
  expect_null(m$registry$setup_args$layer)
  expect_identical(m$cell_names, colnames(d$counts))
  expect_identical(m$config$n_input, 200L)
})

test_that("scvi(train = TRUE) passes ... to train()", {
  d <- small_data()
  m <- scvi(d, batch_key = "batch", train = TRUE, max_epochs = 2L, seed = 1L, device = "cpu",
            progress = FALSE)
  expect_identical(nrow(history(m)), 2L)
  expect_error(scvi(d, max_epochs = 2L), "train = TRUE")
  expect_error(scvi(d, train = TRUE, max_epoch = 2L), "max_epoch")
})

# --- training and queries ---------------------------------------------------------------------

test_that("train() records a history with the documented columns", {
  m <- small_model()
  h <- history(m)
  expect_s3_class(h, "data.frame")
  expect_identical(names(h), c("epoch", "elbo_train", "elbo_validation",
                               "reconstruction_loss_train", "reconstruction_loss_validation",
                               "kl_local_train", "kl_local_validation", "kl_weight",
                               "train_loss", "validation_loss", "lr", "seconds"))
  expect_identical(h$epoch, 1:3)
  expect_true(all(is.finite(h$elbo_train)))
  expect_true(all(is.finite(h$elbo_validation)))
  # KL warm-up over 400 epochs: weight 0, 1/400, 2/400
  expect_equal(h$kl_weight, c(0, 1, 2) / 400)
  # elbo = reconstruction + KL with unit weight
  expect_equal(h$elbo_train, h$reconstruction_loss_train + h$kl_local_train, tolerance = 1e-5)
  # the split: 90% train, disjoint, covering every cell
  tr <- train_indices(m)
  va <- validation_indices(m)
  expect_length(tr, 270L)
  expect_length(va, 30L)
  expect_setequal(c(tr, va), 1:300)
})

test_that("train() returns the model visibly and continues the history", {
  d <- small_data()
  m <- scvi(d, batch_key = "batch")
  res <- withVisible(train(m, max_epochs = 2L, seed = 3L, progress = FALSE, device = "cpu"))
  expect_true(res$visible)
  m2 <- res$value
  expect_identical(nrow(history(m2)), 2L)
  # a copy: the object passed in is unchanged
  expect_identical(nrow(history(m)), 0L)
  m2 <- train(m2, max_epochs = 1L, seed = 4L, progress = FALSE, device = "cpu")
  expect_identical(history(m2)$epoch, 1:3)
})

test_that("get_latent_representation() returns labelled cells x n_latent matrices", {
  m <- small_model()
  z <- get_latent_representation(m)
  expect_true(is.matrix(z))
  expect_identical(dim(z), c(300L, 5L))
  expect_identical(dimnames(z), list(m$cell_names, paste0("SCVI_", 1:5)))
  expect_true(all(is.finite(z)))
  # deterministic posterior mean
  expect_identical(get_latent_representation(m), z)
  sub <- get_latent_representation(m, indices = c(5, 2))
  expect_identical(rownames(sub), m$cell_names[c(5, 2)])
  expect_equal(sub, z[c(5, 2), ], tolerance = 1e-6)
  expect_identical(get_latent_representation(m, indices = seq_len(300) <= 4), z[1:4, ])
  sample1 <- get_latent_representation(m, give_mean = FALSE, indices = 1:10)
  expect_identical(dim(sample1), c(10L, 5L))
  expect_false(isTRUE(all.equal(sample1, z[1:10, ])))
  dist <- get_latent_representation(m, return_dist = TRUE, indices = 1:4)
  expect_named(dist, c("mean", "var"))
  expect_equal(dist$mean, z[1:4, ], tolerance = 1e-6)
  expect_identical(dimnames(dist$var), dimnames(dist$mean))
  expect_true(all(dist$var > 0))
})

test_that("get_normalized_expression() returns labelled cells x genes matrices", {
  m <- small_model()
  ne <- get_normalized_expression(m, indices = 1:7)
  expect_identical(dim(ne), c(7L, 200L))
  expect_identical(dimnames(ne), list(m$cell_names[1:7], m$gene_names))
  expect_equal(unname(rowSums(ne)), rep(1, 7), tolerance = 1e-4)
  ne4 <- get_normalized_expression(m, indices = 1:7, library_size = 1e4, n_samples = 3L)
  expect_equal(unname(rowSums(ne4)), rep(1e4, 7), tolerance = 1e-4)
  genes <- m$gene_names[c(10, 3)]
  sub <- get_normalized_expression(m, gene_list = genes, transform_batch = "Dropseq_3cl")
  expect_identical(dim(sub), c(300L, 2L))
  expect_identical(colnames(sub), m$gene_names[c(3, 10)])   # the model's gene order
  two <- get_normalized_expression(m, indices = 1:3,
                                   transform_batch = c("CELseq2_3cl", "Dropseq_3cl"))
  expect_identical(dim(two), c(3L, 200L))
  lat <- get_normalized_expression(m, indices = 1:3, library_size = "latent")
  expect_true(all(lat >= 0))
})

test_that("get_elbo(), get_reconstruction_error(), get_marginal_ll() have the right signs", {
  m <- small_model()
  elbo <- get_elbo(m)
  rec <- get_reconstruction_error(m)
  expect_length(elbo, 1L)
  expect_lt(elbo, 0)                 # higher is better, negative for counts
  expect_gt(rec, 0)                  # a negative log-likelihood
  expect_lt(-elbo, rec * 1.5)
  expect_gte(-elbo, rec * 0.99)      # the ELBO loss adds a non-negative KL (one sample)
  ll <- get_marginal_ll(m, indices = 1:40, n_mc_samples = 20L, batch_size = 16L)
  expect_length(ll, 1L)
  expect_lt(ll, 0)
  expect_true(is.finite(get_elbo(m, indices = validation_indices(m))))
})

test_that("queries accept new data registered against the model", {
  m <- small_model()
  d <- small_data()
  sce <- small_sce()
  z <- get_latent_representation(m)
  z_sce <- get_latent_representation(m, x = sce[, 11:20])
  expect_identical(rownames(z_sce), colnames(sce)[11:20])
  expect_equal(z_sce, z[11:20, ], tolerance = 1e-6)
  ne <- get_normalized_expression(m, x = sce[, 1:5], library_size = 10)
  expect_identical(dim(ne), c(5L, 200L))
  expect_true(is.finite(get_elbo(m, x = sce[, 1:30])))
})

test_that("the same seed reproduces a fit on the CPU, another seed does not", {
  d <- small_data()
  fit <- function(seed) quick_train(scvi(d, batch_key = "batch", n_latent = 4L), seed = seed)
  a <- fit(7L)
  b <- fit(7L)
  c <- fit(8L)
  expect_identical(train_indices(a), train_indices(b))
  expect_identical(untimed(a), untimed(b))
  expect_identical(get_latent_representation(a), get_latent_representation(b))
  expect_false(identical(train_indices(a), train_indices(c)))
  expect_false(isTRUE(all.equal(history(a)$elbo_train, history(c)$elbo_train)))
})

test_that("the same seed reproduces training from the same starting weights", {
  d <- small_data()
  dir <- tempfile("scvi-untrained-")
  save_model(scvi(d, batch_key = "batch", n_latent = 4L), dir)
  a <- quick_train(load_model(dir, x = d), seed = 11L)
  b <- quick_train(load_model(dir, x = d), seed = 11L)
  expect_identical(untimed(a), untimed(b))
  expect_identical(get_latent_representation(a), get_latent_representation(b))
})

test_that("early stopping and the logistic-normal latent space work through the API", {
  d <- small_data()
  m <- scvi(d, batch_key = "batch")
  expect_message(
    m <- train(m, max_epochs = 50L, early_stopping = TRUE, early_stopping_patience = 1L,
               early_stopping_min_delta = 1e6, seed = 0L, progress = FALSE),
    "Early stopping.*stopped after 2 of 50 epochs")
  expect_identical(nrow(history(m)), 2L)
  ln <- quick_train(scvi(d, latent_distribution = "ln", n_latent = 4L), epochs = 1L)
  z <- get_latent_representation(ln, mc_samples = 20L)
  expect_equal(unname(rowSums(z)), rep(1, 300), tolerance = 1e-5)   # a softmax mean
  dist <- get_latent_representation(ln, return_dist = TRUE)
  # the untransformed Gaussian: its mean does not sum to 1 like the softmax mean does
  expect_false(isTRUE(all.equal(unname(rowSums(dist$mean)), rep(1, 300))))
  expect_true(all(dist$var > 0))
})

# --- save / load ------------------------------------------------------------------------------

test_that("save_model() and load_model() round-trip a trained model", {
  m <- small_model()
  d <- small_data()
  dir <- file.path(tempdir(), "scvi-api-roundtrip")
  unlink(dir, recursive = TRUE)
  expect_invisible(save_model(m, dir))
  expect_true(file.exists(file.path(dir, "model.json")))
  expect_error(save_model(m, dir), "overwrite")
  save_model(m, dir, overwrite = TRUE)

  loaded <- load_model(dir, x = d)
  expect_s3_class(loaded, "SCVI")
  expect_identical(loaded$registry, m$registry)
  expect_identical(loaded$config, m$config)
  expect_identical(get_latent_representation(loaded), get_latent_representation(m))
  expect_equal(history(loaded), history(m), tolerance = 1e-12)
  expect_identical(validation_indices(loaded), validation_indices(m))

  bare <- load_model(dir)
  expect_null(bare$data)
  expect_error(get_latent_representation(bare), "no data attached.*`x`")
  expect_error(train(bare, max_epochs = 1L, progress = FALSE), "load_model")
  expect_identical(get_latent_representation(bare, x = d), get_latent_representation(m))
  expect_output(print(bare), "none attached")
})

test_that("loading onto data with other genes or categories fails with a clear message", {
  m <- small_model()
  d <- small_data()
  dir <- file.path(tempdir(), "scvi-api-genes")
  save_model(m, dir, overwrite = TRUE)
  fewer <- list(counts = d$counts[-(1:2), ], cells = d$cells)
  expect_error(load_model(dir, x = fewer), "2 of the model's 200 genes are missing")
  # genes in another order are taken in the model's order
  swapped <- list(counts = d$counts[c(2, 1, 3:200), ], cells = d$cells)
  expect_equal(get_latent_representation(load_model(dir, x = swapped)),
               get_latent_representation(m))
  other <- d
  other$cells$batch[1] <- "new_batch"
  expect_error(load_model(dir, x = other), "new_batch")
  expect_error(get_latent_representation(m, x = fewer), "genes")
})

# --- conveniences, metrics, printing ----------------------------------------------------------

test_that("runSCVI() and calculateSCVI() add / return the embedding", {
  sce <- small_sce()
  out <- runSCVI(sce, batch_key = "batch", n_latent = 4L, max_epochs = 2L, seed = 0L,
                 device = "cpu", progress = FALSE)
  expect_s4_class(out, "SingleCellExperiment")
  z <- SingleCellExperiment::reducedDim(out, "SCVI")
  expect_identical(dim(z), c(300L, 4L))
  expect_identical(rownames(z), colnames(sce))
  out2 <- runSCVI(sce, name = "scvi_b", max_epochs = 1L, progress = FALSE)
  expect_true("scvi_b" %in% SingleCellExperiment::reducedDimNames(out2))
  z2 <- calculateSCVI(small_data(), batch_key = "batch", n_latent = 3L, max_epochs = 1L,
                      progress = FALSE)
  expect_identical(dim(z2), c(300L, 3L))
  expect_error(runSCVI(sce, n_latnet = 3L), "n_latnet")
  expect_error(runSCVI(small_data()$counts), "SingleCellExperiment")
})

test_that("RunSCVI() adds a DimReduc holding the model", {
  skip_if_not_installed("SeuratObject")
  d <- small_data()
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(d$counts, meta.data = d$cells))
  so <- RunSCVI(so, batch_key = "batch", n_latent = 4L, max_epochs = 2L, seed = 0L,
                progress = FALSE)
  expect_true("scvi" %in% SeuratObject::Reductions(so))
  run <- expect_run_reduction(so, "scvi", "SCVI", c(300L, 4L), RunSCVI)
  expect_identical(rownames(run$embedding), colnames(so))
  expect_equal(get_latent_representation(run$model), run$embedding, ignore_attr = TRUE,
               tolerance = 1e-6)
})

test_that("knn_purity() and batch_mixing() measure what they document", {
  set.seed(2)
  labels <- rep(c("a", "b"), each = 40)
  batches <- rep(rep(c("x", "y"), each = 20), 2)
  # two far apart clusters (by label), batches interleaved inside each
  emb <- cbind(rnorm(80) + ifelse(labels == "a", 0, 50), rnorm(80))
  expect_equal(knn_purity(emb, labels, k = 10L), 1)
  expect_gt(batch_mixing(emb, labels, batches, k = 10L), 0.8)
  # batches pulled apart inside each label: poor mixing
  emb_sep <- emb + cbind(0, ifelse(batches == "x", 0, 30))
  expect_lt(batch_mixing(emb_sep, labels, batches, k = 10L), 0.1)
  expect_lt(knn_purity(cbind(rnorm(80), rnorm(80)), labels, k = 10L), 0.8)
  expect_warning(out <- batch_mixing(emb, labels, rep("x", 80)), "undefined")
  expect_true(is.nan(out))
  dev <- rscvi_devices()
  expect_named(dev, c("cuda_compiled", "cuda_driver", "auto"))
})

test_that("print(), summary() and plot() work on untrained and trained models", {
  d <- small_data()
  untrained <- scvi(d, batch_key = "batch")
  expect_output(print(untrained), "not trained yet")
  expect_output(print(summary(untrained)), "Setup arguments")
  expect_error(plot(untrained), "no training history")
  m <- small_model()
  expect_output(print(m), "3 epochs")
  s <- summary(m)
  expect_s3_class(s, "summary.SCVI")
  expect_identical(s$setup_args$batch_key, "batch")
  expect_identical(s$categories$batch, m$registry$batch_categories)
  expect_identical(s$training$epochs, 3L)
  expect_output(print(s), "Registered categories")
  expect_output(print(s), "n_latent")
  png_file <- file.path(tempdir(), "scvi-plot.png")
  grDevices::png(png_file, width = 900, height = 300)
  expect_invisible(plot(m))
  plot(m, which = "kl")
  grDevices::dev.off()
  expect_gt(file.size(png_file), 0)
  expect_error(plot(m, which = "loss"), "`which`")
})

test_that("history() without a model is R's command history", {
  skip_if(interactive(), "utils::history() would open a pager")
  # utils::history() errors when R has no command history (Rscript); either way it must be
  # the utils function that answers, not the SCVI method.
  res <- tryCatch(history(), error = function(e) conditionMessage(e))
  expect_false(grepl("SCVI", paste(res, collapse = " ")))
  expect_error(history.rscvi_model(1), "must be an rscvi model")
})

test_that("reduce_lr_on_plateau lowers the learning rate on a plateau, as scvi-tools' plan", {
  d <- small_data()
  m <- train(scvi(d, batch_key = "batch", n_latent = 4L), max_epochs = 3L, lr = 1e-3,
             reduce_lr_on_plateau = TRUE, lr_patience = 0L, lr_threshold = 1e9,
             lr_factor = 0.5, seed = 0L, progress = FALSE)
  expect_equal(history(m)$lr, c(1e-3, 1e-3, 5e-4))
  plain <- train(scvi(d, batch_key = "batch", n_latent = 4L), max_epochs = 2L, seed = 0L,
                 progress = FALSE)
  expect_equal(history(plain)$lr, c(1e-3, 1e-3))
  expect_error(train(plain, reduce_lr_on_plateau = TRUE, lr_factor = 0), "lr_factor")
  expect_error(train(plain, lr_scheduler_type = "step"), "unknown arguments")
})

test_that("test_indices() holds the cells left out of training and validation", {
  d <- small_data()
  m <- scvi(d, batch_key = "batch", n_latent = 4L)
  expect_false(is_trained(m))
  m <- train(m, max_epochs = 1L, train_size = 0.8, validation_size = 0.1, seed = 0L,
             progress = FALSE)
  expect_true(is_trained(m))
  parts <- list(train_indices(m), validation_indices(m), test_indices(m))
  expect_identical(lengths(parts), c(240L, 30L, 30L))
  expect_identical(sort(unlist(parts)), seq_len(300L))
})

test_that("gradient_clip_val clips the gradients, as scvi-tools' trainer option", {
  d <- small_data()
  fit <- function(...) untimed(train(scvi(d, batch_key = "batch", n_latent = 4L),
                                     max_epochs = 2L, seed = 0L, progress = FALSE, ...))
  free <- fit()
  expect_identical(fit(gradient_clip_val = 0), free)
  expect_false(isTRUE(all.equal(fit(gradient_clip_val = 1e-3)$elbo_train, free$elbo_train)))
  expect_error(fit(gradient_clip_val = -1), "gradient_clip_val")
})

test_that("get_elbo() and friends give one value per cell with return_mean = FALSE", {
  d <- small_data()
  m <- quick_train(scvi(d, batch_key = "batch", n_latent = 4L))
  set.seed(1)
  per_cell <- get_reconstruction_error(m, indices = 1:20, return_mean = FALSE)
  expect_identical(names(per_cell), colnames(d$counts)[1:20])
  expect_length(get_elbo(m, indices = 1:20, return_mean = FALSE), 20L)
  ll <- get_marginal_ll(m, indices = 1:20, n_mc_samples = 5L, return_mean = FALSE)
  expect_length(ll, 20L)
  expect_true(all(is.finite(ll)))
  expect_error(get_elbo(m, return_mean = NA), "return_mean")
  expect_error(get_elbo(m, n_samples = 2), "unknown arguments")
})

test_that("plan_kwargs passes training-plan options as scvi-tools takes them", {
  d <- small_data()
  fit <- function(...) untimed(train(scvi(d, batch_key = "batch", n_latent = 4L),
                                     max_epochs = 2L, seed = 0L, progress = FALSE, ...))
  expect_identical(fit(plan_kwargs = list(lr = 5e-3, optimizer = "AdamW")),
                   fit(lr = 5e-3, optimizer = "AdamW"))
  expect_error(fit(lr = 1e-3, plan_kwargs = list(lr = 5e-3)), "lr.*both")
  expect_error(fit(plan_kwargs = list(max_epochs = 3)), "not training-plan options")
  expect_error(fit(plan_kwargs = list(1e-3)), "named list")
})

test_that("train() leaves the model it was given as it was (R's copy semantics)", {
  d <- small_data()
  m <- scvi(d, batch_key = "batch", n_latent = 4L)
  m2 <- quick_train(m)
  expect_false(is_trained(m))
  expect_identical(nrow(history(m)), 0L)
  m3 <- quick_train(m2, epochs = 2L)
  expect_identical(nrow(history(m2)), 3L)
  expect_identical(nrow(history(m3)), 5L)
  expect_false(identical(get_latent_representation(m2), get_latent_representation(m3)))
})

test_that("indices accept cell names", {
  d <- small_data()
  m <- quick_train(scvi(d, batch_key = "batch", n_latent = 4L))
  cells <- colnames(d$counts)[c(5, 2, 9)]
  expect_identical(get_latent_representation(m, indices = cells),
                   get_latent_representation(m, indices = c(5L, 2L, 9L)))
  expect_identical(rownames(get_latent_representation(m, indices = cells)), cells)
  expect_error(get_latent_representation(m, indices = c(cells[1], "nope")),
               "names 1 cells the data do not have: 'nope'")
})
