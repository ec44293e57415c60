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

test_that("runSCVI(subset_row) fits the chosen genes and its queries take the whole object", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- rscvi_example_sce()[1:400, 1:300]
  SummarizedExperiment::assay(sce, "logcounts") <- log1p(SingleCellExperiment::counts(sce))
  hvg <- rownames(sce)[seq(2, 400, by = 2)]
  out <- runSCVI(sce, batch_key = "batch", subset_row = hvg, max_epochs = 2L, seed = 0L)
  m <- S4Vectors::metadata(out)$rscvi$SCVI
  expect_identical(m$gene_names, hvg)
  expect_identical(dim(out), dim(sce))
  expect_identical(SummarizedExperiment::assayNames(out), c("counts", "logcounts"))
  # the full object (other genes, other order) is taken to the model's genes by name
  z <- get_latent_representation(m, x = out)
  expect_equal(get_latent_representation(m, x = out[rev(hvg), ]), z)
  expect_equal(z, SingleCellExperiment::reducedDim(out, "SCVI"), tolerance = 1e-6)
  # a logical per gene and positions select the same genes
  by_lgl <- runSCVI(sce, subset_row = rownames(sce) %in% hvg, max_epochs = 1L)
  expect_identical(S4Vectors::metadata(by_lgl)$rscvi$SCVI$gene_names, hvg)
  expect_error(runSCVI(sce, subset_row = c("nope", hvg)), "`subset_row` names 1 genes")
  expect_error(runSCVI(sce, subset_row = 500), "`subset_row` must hold whole numbers")
  expect_error(runSCVI(sce, subset_row = 3), "`subset_row` selects 1 gene")
  expect_error(calculateSCVI(SingleCellExperiment::counts(sce), subset_row = hvg),
               "`subset_row` applies to a SingleCellExperiment")
  # data lacking some model genes still fails, naming them
  expect_error(get_latent_representation(m, x = sce[hvg[-1], ]), "1 of the model's 200 genes")
})

test_that("RunSCVI() reads the default assay, fits `features` and logs its command", {
  skip_if_not_installed("SeuratObject")
  sce <- rscvi_example_sce()[, 1:300]
  # as.Seurat(sce) names its assay "originalexp"
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(
    SingleCellExperiment::counts(sce), assay = "originalexp",
    meta.data = as.data.frame(SummarizedExperiment::colData(sce))))
  genes <- rownames(so)[1:300]
  SeuratObject::VariableFeatures(so) <- genes
  so <- RunSCVI(so, batch_key = "batch", features = SeuratObject::VariableFeatures(so),
                max_epochs = 2L, seed = 0L)
  m <- SeuratObject::Misc(so[["scvi"]], "model")
  expect_identical(m$registry$setup_args$assay, "originalexp")
  expect_identical(m$gene_names, genes)
  expect_identical(nrow(so[["originalexp"]]), 2000L)
  expect_identical(SeuratObject::DefaultAssay(so[["scvi"]]), "originalexp")
  cmd <- so@commands[["RunSCVI.originalexp.scvi"]]
  expect_s4_class(cmd, "SeuratCommand")
  expect_match(cmd@call.string, "RunSCVI\\(so, batch_key = \"batch\"")
  expect_identical(cmd@params$max_epochs, 2L)
  expect_identical(cmd@params$features, genes)
  expect_equal(get_latent_representation(m, x = so), SeuratObject::Embeddings(so, "scvi"),
               ignore_attr = TRUE, tolerance = 1e-6)
  expect_error(RunSCVI(so, features = "nope"), "`features` names 1 genes")
  expect_error(RunSCVI(so, layer = "counts"), "name the assay with `assay`")
})

test_that("add_model_assay() stores query results as features x cells assays", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- runSCVI(rscvi_example_sce()[, 1:300], batch_key = "batch", max_epochs = 2L,
                 seed = 0L)
  m <- S4Vectors::metadata(sce)$rscvi$SCVI
  out <- add_model_assay(sce, "normalized_expression", library_size = 1e4)
  a <- SummarizedExperiment::assay(out, "normalized_expression")
  expect_identical(dim(a), dim(sce))
  expect_equal(unname(colSums(a)), rep(1e4, ncol(sce)), tolerance = 1e-3)
  # each query draws z anew: the same estimate up to sampling noise
  ne <- get_normalized_expression(m, library_size = 1e4)
  expect_identical(dimnames(t(a)), dimnames(ne))
  expect_gt(cor(log(as.vector(t(a))), log(as.vector(ne))), 0.8)
  out <- add_model_assay(out, "posterior_predictive_sample", name = "sampled")
  expect_s4_class(SummarizedExperiment::assay(out, "sampled"), "dgCMatrix")
  # a gene subset cannot be an assay of x: it becomes an altExp
  out <- add_model_assay(out, gene_list = rownames(sce)[1:5], name = "top5")
  expect_identical(dim(SingleCellExperiment::altExp(out, "top5")), c(5L, 300L))
  expect_error(add_model_assay(sce, "normalized_splicing"),
               "not a query of a SCVI model; it has 'normalized_expression'")
  expect_error(add_model_assay(sce, libary_size = 3), "unknown arguments.*libary_size")
  expect_error(add_model_assay(sce, model = "nope"), "'nope' is not a model stored in `x`")
  expect_error(add_model_assay(rscvi_example_sce()), "`x` holds no model")
  expect_error(add_model_assay(sce, n_samples = 2L, return_mean = FALSE), "one matrix per sample")
  expect_error(add_model_assay(m), "must be a SingleCellExperiment or a Seurat object")
  # MULTIVI: accessibility goes to the ATAC altExp, next to its counts
  d <- rscvi_example_multiome()
  mo <- SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = d$rna[, 1:120]), colData = S4Vectors::DataFrame(d$cells[1:120, ]))
  SingleCellExperiment::altExp(mo, "ATAC") <-
    SummarizedExperiment::SummarizedExperiment(assays = list(counts = d$atac[, 1:120]))
  mo <- suppressWarnings(runMULTIVI(mo, max_epochs = 2L, seed = 0L))
  mo <- add_model_assay(mo, "normalized_accessibility")
  expect_identical(SummarizedExperiment::assayNames(SingleCellExperiment::altExp(mo, "ATAC")),
                   c("counts", "normalized_accessibility"))
})

test_that("add_model_assay() adds a Seurat assay", {
  skip_if_not_installed("SeuratObject")
  d <- rscvi_example_data()
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(d$counts[, 1:300],
                                                          meta.data = d$cells[1:300, ]))
  so <- RunSCVI(so, max_epochs = 2L, seed = 0L)
  so <- add_model_assay(so, library_size = 1e4, name = "scvi_normalized")
  expect_true("scvi_normalized" %in% SeuratObject::Assays(so))
  v <- SeuratObject::GetAssayData(so, slot = "data", assay = "scvi_normalized")
  expect_identical(dim(v), c(2000L, 300L))
  expect_equal(unname(Matrix::colSums(v)), rep(1e4, 300), tolerance = 1e-3)
})
