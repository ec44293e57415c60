# The one-call wrappers keep their model with the object they fill.

test_that("models stored by the wrappers survive saveRDS() / readRDS() of the object", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- runSCVI(rscvi_example_sce(), batch_key = "batch", max_epochs = 2L, seed = 0L)
  m <- S4Vectors::metadata(sce)$rscvi$SCVI
  expect_s3_class(m, "SCVI")
  z <- get_latent_representation(m, x = sce)
  f <- tempfile(fileext = ".rds")
  on.exit(unlink(f), add = TRUE)
  saveRDS(sce, f)
  back <- readRDS(f)
  m2 <- S4Vectors::metadata(back)$rscvi$SCVI
  expect_output(print(m2), "SCVI model")
  expect_equal(get_latent_representation(m2, x = back), z)
  # A model kept by the user (no saved copy) says what to do instead.
  plain <- scvi(back, batch_key = "batch")
  saveRDS(plain, f)
  expect_error(get_latent_representation(readRDS(f)), "save_model\\(\\) and restore them")
  expect_output(print(readRDS(f)), "handle lost")
})

test_that("a Seurat reduction's model survives saveRDS() / readRDS()", {
  skip_if_not_installed("SeuratObject")
  sce <- rscvi_example_sce()
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(
    SingleCellExperiment::counts(sce),
    meta.data = as.data.frame(SummarizedExperiment::colData(sce))))
  so <- RunSCVI(so, batch_key = "batch", max_epochs = 2L, seed = 0L)
  f <- tempfile(fileext = ".rds")
  on.exit(unlink(f), add = TRUE)
  saveRDS(so, f)
  back <- readRDS(f)
  m <- SeuratObject::Misc(back[["scvi"]], "model")
  expect_equal(get_latent_representation(m, x = back),
               SeuratObject::Embeddings(so, "scvi"), ignore_attr = TRUE, tolerance = 1e-6)
})

test_that("view_setup_args() takes a model or a saved model's directory", {
  d <- rscvi_example_multiome()
  m <- suppressWarnings(multivi(d$rna[, 1:60], d$atac[, 1:60], cells = d$cells[1:60, ],
                                batch_key = "library"))
  expect_output(view_setup_args(m), "batch_key")
  dir <- tempfile("setup-args-")
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  save_model(m, dir)
  s <- NULL
  expect_output(s <- view_setup_args(dir), "library")
  expect_identical(s$setup_args$batch_key, "library")
  expect_error(view_setup_args(file.path(dir, "nope")), "is not a directory")
  expect_error(view_setup_args(42), "`model` must be an rscvi model")
})
