# Everything a user can get wrong must end in an R error (or warning) that names the argument,
# never in a crash.

bad_counts <- function() {
  d <- small_data()
  d$counts <- as.matrix(d$counts)
  d
}

test_that("bad count values are refused (or warned about) naming `x`", {
  d <- bad_counts()
  m <- d$counts
  m[1, 1] <- 1.5
  expect_error(scvi(m, cells = d$cells), "`x`.*non-integer")
  m <- d$counts
  m[2, 3] <- -1
  expect_error(scvi(m, cells = d$cells), "`x`.*negative")
  m <- d$counts
  m[2, 3] <- NA
  expect_error(scvi(m, cells = d$cells), "`x`.*missing or infinite")
  m <- d$counts
  m[4, 4] <- Inf
  expect_error(scvi(m, cells = d$cells), "`x`.*infinite")
  m <- d$counts
  m[, 7] <- 0
  expect_error(scvi(m, cells = d$cells), "`x`.*no counts")
  expect_error(scvi(d$counts[, 0], cells = d$cells[0, ]), "`x`.*no cells")
  expect_error(scvi(t(d$counts), cells = d$cells), "`x`.*cells x genes")
  expect_error(scvi(as.data.frame(d$counts)), "`x`")
  expect_error(scvi("counts.mtx"), "`x`")
  expect_error(scvi(NULL), "`x`")
})

test_that("bad setup keys are refused naming the key argument", {
  d <- small_data()
  expect_error(scvi(d, batch_key = "plate"), "batch_key.*'plate'.*not a column")
  expect_error(scvi(d, labels_key = c("a", "b")), "labels_key")
  expect_error(scvi(d, categorical_covariate_keys = "nope"), "categorical_covariate_keys")
  expect_error(scvi(d, continuous_covariate_keys = "batch"), "continuous_covariate_keys.*numeric")
  expect_error(scvi(d, size_factor_key = "cell_line"), "size_factor_key")
  expect_error(scvi(d$counts, cells = d$cells, layer = "counts"), "layer")
  sce <- small_sce()
  expect_error(scvi(sce, layer = "logcounts"), "layer.*logcounts")
})

test_that("bad hyperparameters are refused naming the argument", {
  d <- small_data()
  expect_error(scvi(d, n_latent = 0), "`n_latent` must be a single integer >= 1, got 0",
               fixed = TRUE)
  expect_error(scvi(d, n_latent = 2.5), "n_latent")
  expect_error(scvi(d, n_hidden = -1), "n_hidden")
  expect_error(scvi(d, n_layers = NA), "n_layers")
  expect_error(scvi(d, dropout_rate = 1), "dropout_rate")
  expect_error(scvi(d, dispersion = "cell"), "dispersion")
  expect_error(scvi(d, gene_likelihood = "gaussian"), "gene_likelihood")
  expect_error(scvi(d, gene_likelihood = "zi"), "gene_likelihood")  # no partial matching
  expect_error(scvi(d, latent_distribution = "lognormal"), "latent_distribution")
  expect_error(scvi(d, use_batch_norm = TRUE), "use_batch_norm")
  expect_error(scvi(d, use_layer_norm = "all"), "use_layer_norm")
  expect_error(scvi(d, use_observed_lib_size = "yes"), "use_observed_lib_size")
  expect_error(scvi(d, train = NA), "train")
})

test_that("bad training arguments are refused naming the argument", {
  m <- scvi(small_data(), batch_key = "batch")
  tr <- function(...) train(m, progress = FALSE, ...)
  expect_error(tr(max_epochs = 0), "max_epochs")
  expect_error(tr(train_size = 0), "train_size")
  expect_error(tr(train_size = 1.2), "train_size")
  expect_error(tr(train_size = 0.8, validation_size = 0.5), "validation_size")
  expect_error(tr(batch_size = 1), "batch_size")
  expect_error(tr(lr = 0), "`lr`")
  expect_error(tr(weight_decay = -1), "weight_decay")
  expect_error(tr(eps = 0), "`eps`")
  expect_error(tr(optimizer = "SGD"), "optimizer")
  expect_error(tr(early_stopping_monitor = "elbo"), "early_stopping_monitor")
  expect_error(tr(early_stopping_patience = 0), "early_stopping_patience")
  expect_error(tr(n_epochs_kl_warmup = -1), "n_epochs_kl_warmup")
  expect_error(tr(seed = -1), "`seed`")
  expect_error(tr(seed = 1.5), "`seed`")
  expect_error(tr(seed = 2^32), "`seed`")
  expect_error(tr(seed = "a"), "`seed`")
  expect_error(tr(device = "gpu"), "`device`")
  expect_error(tr(device = c("cpu", "cuda")), "`device`")
  if (!isTRUE(rscvi_devices()$cuda_compiled)) {
    expect_error(tr(device = "cuda"), "`device`.*CUDA")
  }
  expect_error(tr(progress = NA), "progress")
  expect_error(tr(epochs = 2), "epochs")
  expect_error(tr(min_kl_weight = 2), "min_kl_weight")
  expect_error(train(list(), max_epochs = 1), "no applicable method|SCVI")
  # a rejected call leaves the model untouched
  expect_identical(nrow(history(m)), 0L)
})

test_that("bad query arguments are refused naming the argument", {
  m <- small_model()
  expect_error(get_normalized_expression(m, transform_batch = "Smart-seq2"),
               "`transform_batch`.*'Smart-seq2'.*CELseq2_3cl")
  expect_error(get_normalized_expression(m, transform_batch = 1), "transform_batch")
  expect_error(get_normalized_expression(m, gene_list = "GENE_X"), "gene_list.*GENE_X")
  expect_error(get_normalized_expression(m, library_size = 0), "library_size")
  expect_error(get_normalized_expression(m, library_size = "observed"), "library_size")
  expect_error(get_normalized_expression(m, n_samples = 0), "n_samples")
  expect_error(get_latent_representation(m, indices = 0), "indices")
  expect_error(get_latent_representation(m, indices = 301), "indices")
  expect_error(get_latent_representation(m, indices = integer(0)), "indices")
  expect_error(get_latent_representation(m, device = "tpu"), "`device`")
  expect_error(get_latent_representation(m, batch_size = 0), "batch_size")
  expect_error(get_latent_representation(m, give_mean = NA), "give_mean")
  expect_error(get_marginal_ll(m, n_mc_samples = 0), "n_mc_samples")
  expect_error(get_elbo(m, x = small_data()$counts[1:100, ]), "`x`.*genes")
  expect_error(knn_purity(matrix(1:4, 2), c("a", "b"), k = 5), "`k`")
  expect_error(knn_purity(matrix(c(1, NA, 3, 4), 2), c("a", "b"), k = 1), "embedding")
  expect_error(knn_purity(matrix(1:6, 3), c("a", "b"), k = 1), "labels")
  expect_error(knn_purity("z", "a"), "embedding")
  expect_error(batch_mixing(matrix(1:6, 3), c("a", "b", "c"), c(1, NA, 2), k = 1), "batches")
})

test_that("corrupt model folders give R errors, not crashes", {
  m <- small_model()
  expect_error(load_model(file.path(tempdir(), "no-such-model")), "`dir`.*does not exist")
  empty <- tempfile("scvi-empty-")
  dir.create(empty)
  expect_error(load_model(empty), "`dir`.*no saved model")
  expect_error(load_model(c("a", "b")), "`dir`")

  good <- tempfile("scvi-good-")
  save_model(m, good)
  corrupt_copy <- function() {
    d <- tempfile("scvi-corrupt-")
    dir.create(d)
    file.copy(list.files(good, full.names = TRUE), d)
    d
  }
  d1 <- corrupt_copy()
  writeLines("this is not json {", file.path(d1, "model.json"))
  expect_error(load_model(d1), "model.json")
  d2 <- corrupt_copy()
  writeBin(as.raw(sample(0:255, 4096, replace = TRUE)), file.path(d2, "model.mpk"))
  expect_error(load_model(d2), "weights|model.mpk")
  d3 <- corrupt_copy()
  mpk <- readBin(file.path(d3, "model.mpk"), "raw", file.size(file.path(d3, "model.mpk")))
  writeBin(mpk[seq_len(length(mpk) %/% 2)], file.path(d3, "model.mpk"))
  expect_error(load_model(d3), "weights|model.mpk")
  d4 <- corrupt_copy()
  unlink(file.path(d4, "model.mpk"))
  expect_error(load_model(d4), "weights|model.mpk")
  d5 <- corrupt_copy()
  json <- jsonlite::fromJSON(file.path(d5, "model.json"), simplifyVector = FALSE)
  json$config$n_latent <- 7L   # weights no longer fit the description
  writeLines(jsonlite::toJSON(json, auto_unbox = TRUE, null = "null", digits = NA),
             file.path(d5, "model.json"))
  expect_error(load_model(d5))
  d6 <- corrupt_copy()
  writeLines('{"format": "something else"}', file.path(d6, "model.json"))
  expect_error(load_model(d6), "model.json")
  # the good copy still loads
  expect_s3_class(load_model(good), "SCVI")
  expect_error(save_model(m, c("a", "b")), "`dir`")
})

test_that("a model restored with readRDS() gives a clear error", {
  m <- small_model()
  f <- tempfile(fileext = ".rds")
  saveRDS(m, f)
  restored <- readRDS(f)
  msg <- "no longer usable.*save_model\\(\\).*load_model\\(\\)"
  expect_error(get_latent_representation(restored), msg)
  expect_error(train(restored, max_epochs = 1L), msg)
  expect_error(get_elbo(restored), msg)
  expect_error(history(restored), msg)
  expect_error(save_model(restored, tempfile()), msg)
  expect_output(print(restored), "handle lost")
  expect_error(get_latent_representation(list(model = 1)), "SCVI|no applicable method")
})

# A network too large to allocate would abort R (allocation failures cannot be caught):
# every model refuses such sizes before building anything, naming the argument. In a child
# process, so that a regression cannot take the test run down.
test_that("absurd network sizes are refused by every model, not allocated", {
  skip_if_not_installed("callr")
  msgs <- callr::r(function() {
    library(rscvi)
    err <- function(expr) tryCatch({expr; "built"}, error = conditionMessage)
    x <- rscvi_example_data()
    d <- rscvi_example_multiome()
    s <- rscvi_example_splicing()
    m <- rscvi_example_merfish()
    seq <- m$seq$counts[, Matrix::colSums(m$seq$counts) > 0]
    c(scvi_hidden = err(scvi(x, n_hidden = 1e9)),
      scvi_latent = err(scvi(x, n_latent = 1e9)),
      scvi_layers = err(scvi(x, n_layers = 1e7)),
      multivi = err(multivi(d$rna, d$atac, n_hidden = 1e9)),
      splicevi = err(splicevi(s$expression, s$junctions, atse = s$atse, n_latent = 1e9)),
      gimvi = suppressWarnings(err(gimvi(seq, m$spatial$counts, n_latent = 1e9))))
  })
  expect_match(msgs[["scvi_hidden"]], "`n_hidden` = 1000000000 asks for about .* network weights")
  expect_match(msgs[["scvi_latent"]], "`n_latent` = 1000000000")
  expect_match(msgs[["scvi_layers"]], "`n_layers` = 10000000")
  expect_match(msgs[["multivi"]], "`n_hidden`")
  expect_match(msgs[["splicevi"]], "`n_latent`")
  expect_match(msgs[["gimvi"]], "`n_latent`")
})

test_that("differential expression refuses more samples than memory holds", {
  skip_if_not_installed("callr")
  msg <- callr::r(function() {
    library(rscvi)
    m <- train(scvi(rscvi_example_data(), batch_key = "batch"), max_epochs = 1L,
               progress = FALSE)
    tryCatch(differential_expression(m, idx1 = 1:100, idx2 = 101:200,
                                     n_samples_overall = 2e9),
             error = conditionMessage)
  })
  expect_match(msg, "`n_samples_overall` needs about .* GB, more than the .* GB of memory")
})

test_that("queries refuse misspelled arguments and warn on an untrained model", {
  m <- scvi(rscvi_example_data(), batch_key = "batch")
  expect_warning(z <- get_latent_representation(m), "has not been trained")
  expect_identical(dim(z), c(1021L, 10L))
  m <- train(m, max_epochs = 1L, seed = 0L)
  expect_error(get_normalized_expression(m, libary_size = 1e4),
               paste("get_normalized_expression\\(\\) got unknown arguments for a SCVI",
                     "model: libary_size"))
  expect_error(get_latent_representation(m, give_means = TRUE), "unknown arguments")
  expect_error(posterior_predictive_sample(m, nsamples = 2L), "unknown arguments")
  expect_error(history(m, foo = 1), "history\\(\\) got unknown arguments")
  expect_error(train_indices(m, 1), "unknown arguments")
})

test_that("logical matrices, numeric category columns and one-cell training are refused", {
  d <- small_data()
  lgl <- as.matrix(d$counts) > 0
  expect_error(scvi(lgl, cells = d$cells), "`x` is a logical \\(TRUE/FALSE\\) matrix.*x \\* 1")
  expect_error(scvi(Matrix::Matrix(lgl, sparse = TRUE), cells = d$cells), "logical")
  expect_error(multivi(d$counts, Matrix::Matrix(lgl, sparse = TRUE)),
               "`atac` is a logical.*atac \\* 1")
  cells <- d$cells
  cells$index <- seq_len(nrow(cells))
  cells$score <- stats::runif(nrow(cells))
  cells$plate <- rep(1:3, length.out = nrow(cells))
  expect_error(scvi(d$counts, cells = cells, batch_key = "index"),
               "`batch_key` column 'index' is numeric with 300 distinct values")
  expect_error(scvi(d$counts, cells = cells, categorical_covariate_keys = "score"),
               "'score' holds fractional numbers")
  # a few numbered plates are categories; as.factor() says so for many
  expect_identical(scvi(d$counts, cells = cells, batch_key = "plate")$registry$n_batch, 3L)
  cells$index <- as.factor(cells$index)
  expect_identical(suppressWarnings(scvi(d$counts, cells = cells,
                                         labels_key = "index"))$registry$n_labels, 300L)
  one <- suppressWarnings(scvi(d$counts[, 1, drop = FALSE]))
  expect_error(train(one, max_epochs = 1L), "at least 2 cells.*have 1")
  m <- scvi(d, batch_key = "batch")
  other <- d
  other$cells$batch[1:3] <- "new_batch"
  expect_error(suppressWarnings(get_latent_representation(m, x = other)),
               "map cells of new categories with load_query_data\\(\\)")
})
