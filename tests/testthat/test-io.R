# The file readers: small real files written by the reference writers
# (tools/make-io-fixtures.py with anndata 0.13 / h5py), read without Python.

fixture <- function(name) test_path("fixtures", name)
shipped <- function(name) system.file("extdata", name, package = "rscvi")

test_that("read_h5ad() reads X, layers, obs, var and obsm as anndata wrote them", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- read_h5ad(shipped("cellbench_small.h5ad"))
  expect_s4_class(sce, "SingleCellExperiment")
  expect_identical(dim(sce), c(30L, 40L))
  expect_identical(SummarizedExperiment::assayNames(sce), c("X", "counts", "dense_log"))
  x <- SummarizedExperiment::assay(sce, "X")
  expect_s4_class(x, "dgCMatrix")
  expect_identical(x, SummarizedExperiment::assay(sce, "counts"))
  expect_equal(as.matrix(log1p(x)), SummarizedExperiment::assay(sce, "dense_log"),
               tolerance = 1e-6)
  expect_true(all(x@x == round(x@x)) && all(x@x > 0))
  expect_match(colnames(sce)[1], "^CELseq2_3cl:")
  expect_match(rownames(sce)[1], "^ENSG")
  # obs: categoricals as factors in their stored order, numbers, logicals, strings
  expect_identical(levels(sce$cell_line), c("HCC827", "H838", "H2228", "H1975", "A549"))
  expect_identical(levels(sce$batch), sort(unique(as.character(sce$batch))))
  expect_type(sce$n_genes, "integer")
  expect_equal(sce$n_counts, unname(Matrix::colSums(x)))
  expect_identical(sce$n_genes, unname(as.integer(Matrix::colSums(x > 0))))
  expect_type(sce$is_first_batch, "logical")
  expect_identical(sce$is_first_batch, sce$batch == sce$batch[1])
  expect_identical(sce$barcode, colnames(sce))
  expect_identical(SummarizedExperiment::rowData(sce)$symbol, rownames(sce))
  expect_identical(dim(SingleCellExperiment::reducedDim(sce, "X_pca")), c(40L, 3L))
  # the same matrix stored as CSC or dense
  csc <- read_h5ad(fixture("cellbench_csc.h5ad"))
  expect_identical(SummarizedExperiment::assay(csc, "X"), x)
  dense <- read_h5ad(fixture("cellbench_dense.h5ad"), X_name = "counts_dense")
  expect_equal(SummarizedExperiment::assay(dense, "counts_dense"), as.matrix(x))
  # options
  lean <- read_h5ad(shipped("cellbench_small.h5ad"), layers = FALSE, reducedDims = FALSE)
  expect_identical(SummarizedExperiment::assayNames(lean), "X")
  expect_length(SingleCellExperiment::reducedDimNames(lean), 0L)
  expect_error(read_h5ad(shipped("cellbench_small.h5ad"), X_name = "counts"),
               "`X_name` 'counts' is also the name of a layer")
})

test_that("read_h5ad() reads the pre-0.8 categorical encoding", {
  skip_if_not_installed("SingleCellExperiment")
  old <- read_h5ad(fixture("cellbench_old_categories.h5ad"))
  new <- read_h5ad(shipped("cellbench_small.h5ad"))
  expect_identical(old$batch, new$batch)
  expect_identical(old$n_counts, new$n_counts)
  expect_identical(SummarizedExperiment::assay(old, "X"), SummarizedExperiment::assay(new, "X"))
})

test_that("a model trains on what read_h5ad() read", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- read_h5ad(shipped("cellbench_small.h5ad"))
  m <- train(scvi(sce, layer = "counts", batch_key = "batch", n_latent = 3L),
             max_epochs = 2L, seed = 0L, progress = FALSE)
  expect_identical(dim(get_latent_representation(m)), c(40L, 3L))
})

test_that("scvi() trains from an .h5ad file as well as from the same counts in memory", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- rscvi_example_sce()
  path <- tempfile(fileext = ".h5ad")
  on.exit(unlink(path), add = TRUE)
  write_h5ad(sce, path)
  fit <- function(x) {
    scvi(x, batch_key = "batch", n_latent = 5L, train = TRUE, max_epochs = 20L, seed = 1L,
         progress = FALSE)
  }
  on_file <- fit(path)
  in_memory <- fit(sce)
  expect_identical(on_file$cell_names, colnames(sce))
  expect_identical(on_file$gene_names, rownames(sce))
  expect_identical(on_file$registry$batch_categories, in_memory$registry$batch_categories)
  expect_identical(on_file$input$class, "h5ad file")
  # Same split and schedule; only the minibatch order differs (blocks read from the file).
  expect_lt(abs(get_elbo(on_file) / get_elbo(in_memory) - 1), 0.01)
  # The same model gives the same answers whether its data are read from the file or memory.
  expect_equal(get_latent_representation(in_memory, x = path),
               get_latent_representation(in_memory))
  group <- as.character(sce$cell_line[1])
  de <- function(x) {
    differential_expression(on_file, x = x, groupby = "cell_line", group1 = group)
  }
  from_file <- de(NULL)
  from_memory <- de(sce)
  expect_setequal(rownames(from_file), rownames(from_memory))
  raw <- c("raw_mean1", "raw_mean2", "non_zeros_proportion1", "raw_normalized_mean2")
  expect_equal(from_file[rownames(from_memory), raw], from_memory[raw])
  expect_error(differential_expression(on_file, groupby = "cell_line", group1 = group,
                                       weights = "importance"), "counts in memory")
})

test_that("an HDF5Array-backed SingleCellExperiment trains from its file", {
  skip_if_not_installed("SingleCellExperiment")
  skip_if_not_installed("HDF5Array")
  # (HDF5Array 1.26 opens anndata's own files, not every h5ad: use the shipped one)
  path <- shipped("cellbench_small.h5ad")
  loadNamespace("HDF5Array") # rhdf5 installs its HDF5 error handler, which it relies on
  # rscvi's reads leave that handler as they found it: H5ADMatrix() below needs it
  sce <- read_h5ad(path, layers = FALSE, reducedDims = FALSE)
  # (HDF5Array warns that the file's obs index is not where it looks for names)
  backed <- SingleCellExperiment::SingleCellExperiment(
    list(X = suppressWarnings(HDF5Array::H5ADMatrix(path))),
    colData = SummarizedExperiment::colData(sce))
  dimnames(backed) <- dimnames(sce)
  m <- scvi(backed, layer = "X", batch_key = "batch", n_latent = 5L, train = TRUE,
            max_epochs = 2L, progress = FALSE)
  expect_identical(m$cell_names, colnames(sce))
  expect_identical(dim(get_latent_representation(m)), c(ncol(sce), 5L))
  # the same model on the same counts held in memory
  expect_equal(get_latent_representation(m, x = sce), get_latent_representation(m))
  # subset (a delayed operation): read into memory instead, same answer
  expect_equal(get_latent_representation(m, x = backed[, 1:20]),
               get_latent_representation(m)[1:20, ])
  # a CellRanger file: TENxMatrix reads its barcodes as columns
  tenx <- shipped("snareseq2_10x.h5")
  # HDF5Array 1.26's own C code switches rhdf5's handler off: put it back, as its users must
  rhdf5::h5errorHandling("normal")
  m10x <- SingleCellExperiment::SingleCellExperiment(list(counts = HDF5Array::TENxMatrix(tenx)))
  fit10x <- scvi(m10x, n_latent = 3L, train = TRUE, max_epochs = 2L, progress = FALSE)
  expect_identical(fit10x$cell_names, colnames(m10x))
  in_memory10x <- as(SummarizedExperiment::assay(m10x), "dgCMatrix")
  expect_equal(get_latent_representation(fit10x, x = in_memory10x),
               get_latent_representation(fit10x))
})

test_that("training from a file does not hang after an rhdf5 error in the same session", {
  skip_if_not_installed("rhdf5")
  skip_if(!nzchar(Sys.which("timeout")), "no timeout command")
  # An R error raised inside an rhdf5 call leaves HDF5's lock held by R's thread: a read on
  # any other thread would wait forever. Run in a child R so that a regression fails here
  # instead of hanging the suite.
  script <- tempfile(fileext = ".R")
  on.exit(unlink(script))
  writeLines(c(
    "suppressPackageStartupMessages(library(rscvi))",
    "try(rhdf5::H5Fopen(tempfile(fileext = '.h5')), silent = TRUE)",
    sprintf("m <- scvi('%s', batch_key = 'batch', n_latent = 3L, train = TRUE,",
            shipped("cellbench_small.h5ad")),
    "          max_epochs = 2L, progress = FALSE)",
    "cat(nrow(get_latent_representation(m)), '\\n')"), script)
  out <- suppressWarnings(system2("timeout", c("300", file.path(R.home("bin"), "Rscript"),
                                               script), stdout = TRUE, stderr = TRUE))
  expect_null(attr(out, "status"))
  expect_match(out[length(out)], "^40")
})

test_that("training from a file refuses what it cannot stream, naming the problem", {
  skip_if_not_installed("SingleCellExperiment")
  expect_error(scvi(fixture("cellbench_csc.h5ad")), "stored by genes \\(CSC\\)")
  expect_error(scvi(shipped("cellbench_small.h5ad"), layer = "dense_log"), "dense matrix")
  expect_error(scvi(shipped("cellbench_small.h5ad"), layer = "nope"), "has no matrix layers/nope")
  expect_error(scvi(tempfile(fileext = ".h5ad")), "`x` names the file .* does not exist")
  expect_error(scvi(shipped("cellbench_small.h5ad"), cells = data.frame()), "`cells` must be NULL")
  expect_error(scvi(shipped("cellbench_small.h5ad"), batch_key = "nope"),
               "'nope' is not a column .*'cell_line'")
  expect_error(multivi(rna = shipped("cellbench_small.h5ad"), atac = NULL),
               "`rna` is a file name")
  # counts that are not counts: found in the streaming pass
  sce <- read_h5ad(shipped("cellbench_small.h5ad"), layers = FALSE, reducedDims = FALSE)
  SummarizedExperiment::assay(sce, "X") <- SummarizedExperiment::assay(sce, "X") / 3
  path <- tempfile(fileext = ".h5ad")
  on.exit(unlink(path), add = TRUE)
  write_h5ad(sce, path)
  expect_error(scvi(path), "non-negative integers")
})

test_that("read_10x_h5() splits feature types into the main and alternative experiments", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- read_10x_h5(shipped("snareseq2_10x.h5"))
  expect_identical(dim(sce), c(20L, 25L))
  expect_identical(SingleCellExperiment::altExpNames(sce), "Peaks")
  peaks <- SingleCellExperiment::altExp(sce, "Peaks")
  expect_identical(dim(peaks), c(15L, 25L))
  expect_identical(unique(SummarizedExperiment::rowData(sce)$Type), "Gene Expression")
  expect_match(rownames(peaks)[1], "^chr[0-9XY]+:[0-9]+-[0-9]+$")
  counts <- SingleCellExperiment::counts(sce)
  expect_s4_class(counts, "dgCMatrix")
  expect_true(all(counts@x == round(counts@x)) && all(counts@x > 0))
  expect_identical(colnames(sce), sce$Barcode)
  # the same counts as the shared data, where they are available
  mop <- file.path(shared_data_dir(), "mop_snareseq2")
  if (dir.exists(mop)) {
    full <- Matrix::readMM(gzfile(file.path(mop, "matrix.mtx.gz")))
    feats <- utils::read.delim(file.path(mop, "features.tsv.gz"))
    rownames(full) <- feats$id
    expect_equal(as.matrix(counts), as.matrix(full[rownames(sce), 1:25]),
                 ignore_attr = TRUE)
  }
  # a Multiome file feeds multivi() directly (Peaks is found as the ATAC altExp)
  m <- suppressWarnings(multivi(sce))
  expect_identical(m$config$n_regions, 15L)
})

test_that("bad files give clear errors and leave R running", {
  expect_error(read_h5ad(tempfile(fileext = ".h5ad")), "`path` .* does not exist")
  expect_error(read_h5ad(tempdir()), "is a folder")
  not_h5 <- tempfile(fileext = ".h5ad")
  writeLines("not HDF5", not_h5)
  on.exit(unlink(not_h5), add = TRUE)
  expect_error(read_h5ad(not_h5), "not a readable HDF5 file")
  expect_error(read_10x_h5(not_h5), "not a readable HDF5 file")
  # valid HDF5 of the other kind
  expect_error(read_10x_h5(shipped("cellbench_small.h5ad")), "no /matrix group")
  expect_error(read_h5ad(shipped("snareseq2_10x.h5")), "no /obs group: not an AnnData file")
  # truncated
  trunc <- tempfile(fileext = ".h5ad")
  on.exit(unlink(trunc), add = TRUE)
  bytes <- readBin(shipped("cellbench_small.h5ad"), "raw", 5000)
  writeBin(bytes, trunc)
  expect_error(read_h5ad(trunc), "cellbench|h5ad")
  expect_error(read_h5ad(42), "`path` must be a single non-empty string")
})

test_that("read_h5mu() gives one object for paired modalities, a list for a mosaic", {
  skip_if_not_installed("SingleCellExperiment")
  mo <- read_h5mu(shipped("snareseq2_small.h5mu"))
  expect_s4_class(mo, "SingleCellExperiment")
  expect_identical(dim(mo), c(20L, 25L))
  expect_identical(SingleCellExperiment::altExpNames(mo), "atac")
  expect_identical(dim(SingleCellExperiment::altExp(mo, "atac")), c(15L, 25L))
  expect_s3_class(mo$cell_type, "factor")
  # the same counts as the 10x file of these nuclei
  tenx <- read_10x_h5(shipped("snareseq2_10x.h5"))
  expect_equal(as.matrix(SummarizedExperiment::assay(mo, "X")),
               as.matrix(SingleCellExperiment::counts(tenx)), ignore_attr = TRUE)
  atac_first <- read_h5mu(shipped("snareseq2_small.h5mu"), main = "atac")
  expect_identical(SingleCellExperiment::altExpNames(atac_first), "rna")
  expect_error(read_h5mu(shipped("snareseq2_small.h5mu"), main = "adt"), "`main` must be one of")
  # a mosaic: one object per modality, which multivi() matches by cell name
  mosaic <- read_h5mu(fixture("snareseq2_mosaic.h5mu"))
  expect_type(mosaic, "list")
  expect_identical(names(mosaic), c("rna", "atac"))
  expect_identical(ncol(mosaic$rna), 20L)
  expect_identical(ncol(mosaic$atac), 20L)
  # (so few features leave some nuclei empty in a modality: drop those there)
  observed <- function(s) s[, Matrix::colSums(SummarizedExperiment::assay(s, "X")) > 0]
  rna <- observed(mosaic$rna)
  atac <- observed(mosaic$atac)
  m <- suppressWarnings(multivi(rna = rna, atac = atac, layer = "X", atac_layer = "X"))
  expect_identical(as.integer(m$config$n_cells),
                   length(union(colnames(rna), colnames(atac))))
  expect_error(read_h5mu(shipped("cellbench_small.h5ad")), "no /mod group: not a MuData file")
})

test_that("write_h5ad() round-trips assays, obs, var and obsm; refuses what it cannot write", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- read_h5ad(shipped("cellbench_small.h5ad"))
  sce$with_na <- c(NA, sce$n_genes[-1])
  sce$text_na <- c(NA, sce$barcode[-1])
  sce$flag_na <- c(NA, sce$is_first_batch[-1])
  sce$grade <- factor(c(NA, rep(c("lo", "hi"), length.out = 39)), levels = c("lo", "hi"),
                      ordered = TRUE)
  SingleCellExperiment::reducedDim(sce, "X_scVI") <- matrix(seq_len(80) / 7, 40, 2)
  f <- tempfile(fileext = ".h5ad")
  on.exit(unlink(f), add = TRUE)
  expect_identical(write_h5ad(sce, f), f)
  back <- read_h5ad(f)
  for (a in SummarizedExperiment::assayNames(sce)) {
    expect_equal(SummarizedExperiment::assay(back, a), SummarizedExperiment::assay(sce, a),
                 info = a)
  }
  expect_s4_class(SummarizedExperiment::assay(back, "X"), "dgCMatrix")
  cd <- SummarizedExperiment::colData(back)
  expect_identical(levels(cd$cell_line), levels(sce$cell_line))
  expect_identical(cd$grade, sce$grade)
  expect_identical(cd$text_na, sce$text_na)
  expect_identical(cd$flag_na, sce$flag_na)
  expect_equal(cd$with_na, as.double(sce$with_na))
  expect_identical(cd$n_genes, sce$n_genes)
  expect_identical(SummarizedExperiment::rowData(back)$symbol, rownames(sce))
  expect_equal(SingleCellExperiment::reducedDim(back, "X_scVI"),
               SingleCellExperiment::reducedDim(sce, "X_scVI"), ignore_attr = TRUE)
  # X_name chooses X; the others become layers
  # (the assay named "X" is then a layer "X": reading it back needs another X_name, and a
  # layer is never dropped for sharing the name)
  write_h5ad(sce, f, X_name = "dense_log", overwrite = TRUE)
  expect_error(read_h5ad(f), "`X_name` 'X' is also the name of a layer")
  swapped <- read_h5ad(f, X_name = "main")
  expect_equal(SummarizedExperiment::assay(swapped, "main"),
               SummarizedExperiment::assay(sce, "dense_log"))
  expect_equal(SummarizedExperiment::assay(swapped, "X"), SummarizedExperiment::assay(sce, "X"))
  expect_error(write_h5ad(sce, f), "exists; use overwrite = TRUE")
  expect_error(write_h5ad(sce, f, X_name = "nope", overwrite = TRUE), "`X_name` must be one of")
  expect_error(write_h5ad(SingleCellExperiment::counts, f), "`x` must be a SingleCellExperiment")
  expect_error(write_h5ad(sce, file.path(tempfile(), "a.h5ad")), "folder of `path`")
  # a failure leaves the existing file as it was and no half-written one
  bad <- sce
  bad$`_index` <- 1
  before <- unname(tools::md5sum(f))
  expect_error(write_h5ad(bad, f, overwrite = TRUE), "_index")
  expect_identical(unname(tools::md5sum(f)), before)
  expect_length(list.files(dirname(f), pattern = "rscvi-tmp", all.files = TRUE), 0L)
})

test_that("add_to_h5ad() writes a model's results where scvi-tools users look for them", {
  skip_if_not_installed("SingleCellExperiment")
  f <- tempfile(fileext = ".h5ad")
  on.exit(unlink(f), add = TRUE)
  file.copy(shipped("cellbench_small.h5ad"), f)
  sce <- read_h5ad(f)
  model <- train(scvi(sce, layer = "counts", batch_key = "batch", n_latent = 3L),
                 max_epochs = 2L, seed = 0L, progress = FALSE)
  z <- get_latent_representation(model)
  expr <- get_normalized_expression(model)                     # cells x genes
  shuffled <- z[rev(seq_len(nrow(z))), ]                         # matched by name
  add_to_h5ad(f, obsm = list(X_scVI = shuffled), layers = list(scvi_normalized = expr))
  back <- read_h5ad(f)
  expect_equal(SingleCellExperiment::reducedDim(back, "X_scVI"), z, ignore_attr = TRUE)
  expect_equal(SummarizedExperiment::assay(back, "scvi_normalized"), t(expr),
               tolerance = 1e-12, ignore_attr = TRUE)
  # what was there is unchanged
  expect_identical(SummarizedExperiment::assay(back, "X"), SummarizedExperiment::assay(sce, "X"))
  expect_identical(back$cell_line, sce$cell_line)
  # replacing needs overwrite; genes x cells work too; mismatches name the element
  expect_error(add_to_h5ad(f, obsm = list(X_scVI = z)), "already has obsm/X_scVI")
  add_to_h5ad(f, layers = list(scvi_normalized = t(expr) * 2), overwrite = TRUE)
  expect_equal(SummarizedExperiment::assay(read_h5ad(f), "scvi_normalized"), t(expr) * 2,
               ignore_attr = TRUE, tolerance = 1e-12)
  expect_error(add_to_h5ad(f, obsm = list(X_bad = z[-1, ])), "`obsm\\$X_bad`: its names")
  expect_error(add_to_h5ad(f, obsm = list(z)), "`obsm` must be a list of matrices with distinct names")
  expect_error(add_to_h5ad(f), "nothing to add")
  expect_error(add_to_h5ad(tempfile(), obsm = list(a = z)), "does not exist")
})

test_that("get_normalized_expression(file = ) writes the result into an h5ad a block at a time", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- read_h5ad(shipped("cellbench_small.h5ad"))
  m <- train(scvi(sce, layer = "counts", batch_key = "batch", n_latent = 3L), max_epochs = 2L,
             seed = 0, progress = FALSE)
  f <- tempfile(fileext = ".h5ad")
  genes <- rownames(sce)[c(5, 1, 9)]
  expect_identical(get_normalized_expression(m, file = f, gene_list = genes, indices = 3:30,
                                             library_size = 1e4, n_samples = 50), f)
  back <- read_h5ad(f)
  expect_identical(colnames(back), colnames(sce)[3:30])
  expect_identical(rownames(back), rownames(sce)[c(1, 5, 9)]) # the model's gene order
  ref <- get_normalized_expression(m, gene_list = genes, indices = 3:30, library_size = 1e4,
                                   n_samples = 50)
  written <- t(as.matrix(SummarizedExperiment::assay(back, "X")))
  # means of other posterior draws: the same cells and genes, close numbers
  expect_gt(stats::cor(as.vector(log(written)), as.vector(log(ref))), 0.9)
  # all genes: each cell's fractions sum to 1
  get_normalized_expression(m, file = f, overwrite = TRUE)
  all_genes <- as.matrix(SummarizedExperiment::assay(read_h5ad(f), "X"))
  expect_equal(unname(colSums(all_genes)), rep(1, ncol(sce)), tolerance = 1e-5)
  expect_error(get_normalized_expression(m, file = f), "overwrite = TRUE")
  expect_error(get_normalized_expression(m, file = f, overwrite = TRUE, n_samples_overall = 5),
               "one cells x genes matrix")
  # MULTIVI decodes the posterior mean: the file holds exactly what is returned
  mv <- rscvi_example_multiome()
  keep <- 1:100
  fit <- suppressWarnings(multivi(mv$rna[, keep], mv$atac[, keep], cells = mv$cells[keep, ],
                                  batch_key = "library"))
  fit <- train(fit, max_epochs = 2L, seed = 0, progress = FALSE)
  get_normalized_expression(fit, file = f, overwrite = TRUE)
  expect_equal(t(as.matrix(SummarizedExperiment::assay(read_h5ad(f), "X"))),
               get_normalized_expression(fit), tolerance = 1e-6, ignore_attr = TRUE)
})
