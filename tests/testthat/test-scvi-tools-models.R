# SCVI models trained and saved by scvi-tools 1.5.1 (tools/make-scvi-tools-fixtures.py, on
# the shipped CellBench subsample), loaded without Python and checked against what
# scvi-tools computed for the same cells.

saved_by_scvi_tools <- function(name) test_path("fixtures", "scvi-tools", name)
cellbench_small <- function() {
  skip_if_not_installed("SingleCellExperiment")
  read_h5ad(system.file("extdata", "cellbench_small.h5ad", package = "rscvi"))
}
reference_latent <- function(name) {
  as.matrix(utils::read.csv(file.path(saved_by_scvi_tools(name), "latent.csv"), row.names = 1,
                            check.names = FALSE))
}

test_that("load_model() reads scvi-tools' SCVI models and gives scvi-tools' latent means", {
  sce <- cellbench_small()
  for (name in c("scvi", "scvi-covariates")) {
    m <- load_model(saved_by_scvi_tools(name), x = sce)
    expect_s3_class(m, "SCVI")
    expect_true(is_trained(m))
    z <- get_latent_representation(m)
    ref <- reference_latent(name)
    expect_identical(rownames(z), rownames(ref))
    expect_lt(max(abs(z - ref)), 1e-5)
  }
  m <- load_model(saved_by_scvi_tools("scvi-covariates"), x = sce)
  expect_identical(m$config$dispersion, "gene-batch")
  expect_identical(m$config$gene_likelihood, "nb")
  expect_false(m$config$use_observed_lib_size)
  expect_true(m$config$encode_covariates)
  expect_identical(m$registry$batch_categories, c("CELseq2_3cl", "CELseq2_5cl_p1"))
  expect_identical(m$registry$categorical_covariate_categories$cell_line,
                   c("HCC827", "H838", "H2228", "H1975", "A549"))
  expect_identical(m$registry$continuous_covariate_keys, "n_genes")
  expect_length(train_indices(m), 36L)
  expect_length(validation_indices(m), 4L)
  expect_output(print(m), "no training history")
  expr <- get_normalized_expression(m, n_samples = 2)
  expect_identical(dim(expr), c(40L, 30L))
})

test_that("an scvi-tools SCVI model saves natively, maps queries and reports what it cannot read", {
  sce <- cellbench_small()
  dir <- saved_by_scvi_tools("scvi")
  m <- load_model(dir, x = sce)
  native <- file.path(tempdir(), "from-scvi-tools")
  save_model(m, native, overwrite = TRUE)
  again <- load_model(native, x = sce)
  expect_equal(get_latent_representation(again), get_latent_representation(m))
  # scArches onto the scvi-tools reference: a new batch grows the reference's weights
  query <- sce
  query$batch <- paste0(query$batch, "-query")
  q <- load_query_data(query, dir)
  expect_identical(q$registry$batch_categories,
                   c("CELseq2_3cl", "CELseq2_5cl_p1", "CELseq2_3cl-query", "CELseq2_5cl_p1-query"))
  q <- train(q, max_epochs = 2, seed = 0, progress = FALSE)
  expect_true(all(is.finite(get_latent_representation(q))))
  # without x, no data are attached (none were saved with this model)
  expect_null(load_model(dir)$data)
  # a model.pt that is not a torch archive, and a kind rscvi does not read from scvi-tools
  bad <- file.path(tempdir(), "bad-scvi-tools")
  dir.create(bad, showWarnings = FALSE)
  writeLines("not a zip file", file.path(bad, "model.pt"))
  expect_error(load_model(bad), "not a torch archive")
  empty <- file.path(tempdir(), "no-model-here")
  dir.create(empty, showWarnings = FALSE)
  expect_error(load_model(empty), "no model.json, nor scvi-tools' model.pt")
})

test_that("save_model(format = \"scvi-tools\") writes what load_model() and scvi-tools read", {
  sce <- cellbench_small()
  m <- train(scvi(sce, layer = "X", batch_key = "batch", categorical_covariate_keys = "cell_line",
                  n_latent = 3), max_epochs = 3, seed = 0, progress = FALSE)
  dir <- file.path(tempdir(), "rscvi-as-scvi-tools")
  save_model(m, dir, overwrite = TRUE, format = "scvi-tools")
  expect_true(file.exists(file.path(dir, "model.pt")))
  expect_error(save_model(m, dir, format = "scvi-tools"), "overwrite = TRUE")
  back <- load_model(dir, x = sce)
  expect_equal(get_latent_representation(back), get_latent_representation(m), tolerance = 1e-6)
  expect_identical(back$registry$categorical_covariate_categories,
                   m$registry$categorical_covariate_categories)
  expect_identical(validation_indices(back), validation_indices(m))
  expect_error(save_model(m, dir, format = "anndata"), "`format`")
})

test_that("load_model() reads scvi-tools' MULTIVI models (RNA + ATAC, MuData setup)", {
  skip_if_not_installed("SingleCellExperiment")
  x <- read_h5mu(system.file("extdata", "snareseq2_small.h5mu", package = "rscvi"))
  m <- load_model(saved_by_scvi_tools("multivi"), x = x)
  expect_s3_class(m, "MULTIVI")
  expect_identical(m$config$modality_weights, "universal")
  expect_identical(m$config$n_hidden, 3L)       # scvi-tools' rule for n_hidden = None
  z <- get_latent_representation(m)
  ref <- reference_latent("multivi")
  expect_lt(max(abs(z - ref[rownames(z), ])), 1e-5)
  expect_identical(dim(get_normalized_accessibility(m)), c(25L, 15L))
  # written back in scvi-tools' layout, it reads the same
  again <- file.path(tempdir(), "multivi-scvi-tools-again")
  save_model(m, again, overwrite = TRUE, format = "scvi-tools")
  expect_equal(get_latent_representation(load_model(again, x = x)), z, tolerance = 1e-6)
  # scArches onto the scvi-tools MULTIVI reference
  x$library <- paste0(x$library, "-query")
  q <- load_query_data(x, saved_by_scvi_tools("multivi"))
  expect_identical(q$registry$batch_categories, c("09A", "09A-query"))
  q <- train(q, max_epochs = 2, seed = 0, progress = FALSE)
  expect_true(all(is.finite(get_latent_representation(q))))
})

test_that("load_model() reads scvi-tools' GIMVI models with their two datasets", {
  skip_if_not_installed("SingleCellExperiment")
  dir <- saved_by_scvi_tools("gimvi")
  # without x: the two AnnData files saved with the model (save_anndata=True)
  m <- load_model(dir)
  expect_s3_class(m, "GIMVI")
  expect_true(is_trained(m))
  expect_identical(m$config$n_latent, 4L)
  expect_identical(m$config$dispersion, "gene-batch")
  # half the sequencing genes, in another order, were measured in space
  expect_length(m$spatial_gene_names, length(m$gene_names) %/% 2L)
  expect_identical(m$gene_names[m$config$spatial_gene_index + 1L], m$spatial_gene_names)
  z <- get_latent_representation(m)
  for (part in c("seq", "spatial")) {
    ref <- as.matrix(utils::read.csv(file.path(dir, sprintf("latent_%s.csv", part)),
                                     row.names = 1, check.names = FALSE))
    expect_identical(rownames(z[[part]]), rownames(ref))
    expect_lt(max(abs(z[[part]] - ref)), 1e-5)
  }
  ref <- as.matrix(utils::read.csv(file.path(dir, "imputed.csv"), row.names = 1,
                                   check.names = FALSE))
  imputed <- get_imputed_values(m)$spatial[rownames(ref), ]
  expect_identical(dimnames(imputed), dimnames(ref))
  expect_lt(max(abs(imputed - ref) / pmax(ref, 1e-3)), 1e-4)
  # the split per dataset, and the same model given the data explicitly
  expect_length(train_indices(m)[[1]], ceiling(0.9 * nrow(z$seq)))
  data <- list(seq = read_h5ad(file.path(dir, "adata_seq.h5ad")),
               spatial = read_h5ad(file.path(dir, "adata_spatial.h5ad")))
  again <- load_model(dir, x = data)
  expect_equal(get_latent_representation(again), z)
  # saved natively, it reads back the same
  native <- file.path(tempdir(), "gimvi-from-scvi-tools")
  save_model(m, native, overwrite = TRUE)
  expect_equal(get_latent_representation(load_model(native, x = data)), z)
})

test_that("load_model() reads scvi-tools' MULTIVI models with proteins", {
  skip_if_not_installed("SingleCellExperiment")
  dir <- saved_by_scvi_tools("multivi-protein")
  # without x: the MuData saved with the model (rna; atac and protein as altExps)
  m <- load_model(dir)
  expect_s3_class(m, "MULTIVI")
  expect_identical(m$registry$protein_names, paste0("ADT_", c("Celf2", "Cntn4", "Cntn5",
                                                              "Cntnap2", "Fam19a1")))
  expect_identical(m$registry$setup_args$protein, "protein")
  z <- get_latent_representation(m)
  ref <- reference_latent("multivi-protein")
  expect_lt(max(abs(z - ref[rownames(z), ])), 1e-5)
  z_protein <- get_latent_representation(m, modality = "protein")
  expect_identical(dim(z_protein), dim(z))
  expect_true(all(is.finite(get_protein_foreground_probability(m))))
})
