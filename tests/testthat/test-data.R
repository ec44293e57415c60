# Tests of the R data layer (R/data.R) and of the example data (R/example-data.R).

toy_counts <- function(n_genes = 4, n_cells = 6) {
  m <- matrix(rep_len(c(1, 0, 2, 5, 0, 3, 1), n_genes * n_cells), n_genes, n_cells,
              dimnames = list(paste0("g", seq_len(n_genes)), paste0("c", seq_len(n_cells))))
  m[1, ] <- m[1, ] + 1  # every cell has counts
  Matrix::Matrix(m, sparse = TRUE)
}

toy_input <- function(cells = NULL, n_cells = 6) {
  m <- toy_counts(n_cells = n_cells)
  if (is.null(cells)) cells <- data.frame(row.names = colnames(m))
  .as_count_input(m, cells = cells)
}

quiet <- function(expr) suppressWarnings(expr)

# --- argument checkers ------------------------------------------------------------------

test_that("scalar checkers return normalised values and name the argument", {
  expect_identical(.check_scalar_int(5, "n_latent", min = 1), 5L)
  expect_error(.check_scalar_int(0, "n_latent", min = 1),
               "`n_latent` must be a single integer >= 1, got 0", fixed = TRUE)
  expect_error(.check_scalar_int(1.5, "n_hidden"), "`n_hidden` must be a single integer")
  expect_error(.check_scalar_int(c(1, 2), "n_layers"), "got a numeric vector of length 2")
  expect_error(.check_scalar_int(NA, "seed"), "`seed`")
  expect_error(.check_scalar_int("3", "seed"), "got \"3\"", fixed = TRUE)
  expect_error(.check_scalar_int(11, "k", min = 1, max = 10), "between 1 and 10")
  expect_null(.check_scalar_int(NULL, "seed", null_ok = TRUE))
  expect_error(.check_scalar_int(NULL, "seed"), "got NULL")

  expect_identical(.check_scalar_num(1L, "lr", min = 0, min_open = TRUE), 1)
  expect_error(.check_scalar_num(0, "lr", min = 0, min_open = TRUE),
               "`lr` must be a single finite number > 0, got 0", fixed = TRUE)
  expect_error(.check_scalar_num(Inf, "lr"), "`lr`")
  expect_error(.check_scalar_num(1.5, "dropout_rate", min = 0, max = 1, min_open = FALSE),
               "between 0 and 1")

  expect_true(.check_scalar_bool(TRUE, "flag"))
  expect_error(.check_scalar_bool(NA, "flag"), "`flag` must be TRUE or FALSE, got NA",
               fixed = TRUE)
  expect_error(.check_scalar_bool(1, "flag"), "`flag`")

  expect_identical(.check_choice("nb", c("zinb", "nb"), "gene_likelihood"), "nb")
  expect_error(.check_choice("x", c("zinb", "nb"), "gene_likelihood"),
               "`gene_likelihood` must be one of \"zinb\", \"nb\", got \"x\"", fixed = TRUE)

  expect_identical(.check_scalar_string("a", "batch_key"), "a")
  expect_error(.check_scalar_string(c("a", "b"), "batch_key"), "`batch_key`")
  expect_error(.check_scalar_string("", "batch_key"), "`batch_key`")
})

test_that(".resolve_indices gives 0-based integers and rejects bad selections", {
  expect_identical(.resolve_indices(NULL, 3, "indices"), 0:2)
  expect_identical(.resolve_indices(c(TRUE, FALSE, TRUE), 3, "indices"), c(0L, 2L))
  expect_identical(.resolve_indices(c(3, 1), 3, "indices"), c(2L, 0L))
  expect_identical(.resolve_indices(2L, 3, "indices"), 1L)
  expect_error(.resolve_indices(c(TRUE, FALSE), 3, "indices"), "`indices`.*one TRUE/FALSE per cell")
  expect_error(.resolve_indices(c(TRUE, NA, TRUE), 3, "indices"), "`indices`")
  expect_error(.resolve_indices(0, 3, "indices"), "`indices` must hold whole numbers between 1 and 3")
  expect_error(.resolve_indices(4, 3, "cells_idx"), "`cells_idx`")
  expect_error(.resolve_indices(1.5, 3, "indices"), "1.5")
  expect_error(.resolve_indices(NA_real_, 3, "indices"), "`indices`")
  expect_error(.resolve_indices("c1", 3, "indices"), "`indices` must be NULL, a logical")
  expect_error(.resolve_indices(c(FALSE, FALSE), 2, "indices"), "`indices` selects no cells")
})

# --- count input ------------------------------------------------------------------------

test_that(".as_count_input accepts dgCMatrix, base matrices and other Matrix classes", {
  m <- toy_counts()
  r <- .as_count_input(m)
  expect_s4_class(r$counts, "dgCMatrix")
  expect_identical(r$gene_names, rownames(m))
  expect_identical(r$cell_names, colnames(m))
  expect_identical(rownames(r$cell_data), colnames(m))
  expect_equal(ncol(r$cell_data), 0L)
  expect_null(r$layer)

  base <- as.matrix(m)
  storage.mode(base) <- "integer"
  r2 <- .as_count_input(base)
  expect_s4_class(r2$counts, "dgCMatrix")
  expect_type(r2$counts@x, "double")
  expect_equal(as.matrix(r2$counts), as.matrix(m))

  r3 <- .as_count_input(methods::as(m, "TsparseMatrix"))
  expect_equal(r3$counts, r$counts)
  r4 <- .as_count_input(Matrix::Matrix(as.matrix(m), sparse = FALSE))
  expect_equal(r4$counts, r$counts)
})

test_that("missing dimnames become gene1.. / cell1..", {
  m <- toy_counts()
  dimnames(m) <- list(NULL, NULL)
  r <- .as_count_input(m)
  expect_identical(r$gene_names, paste0("gene", 1:4))
  expect_identical(r$cell_names, paste0("cell", 1:6))
  expect_identical(rownames(r$counts), paste0("gene", 1:4))
  # Real row names of `cells` name the cells when the matrix has none.
  cells <- data.frame(b = 1:6, row.names = paste0("bc", 1:6))
  expect_identical(.as_count_input(m, cells)$cell_names, paste0("bc", 1:6))
})

test_that("bad counts give errors naming the argument", {
  m <- as.matrix(toy_counts())
  bad <- m; bad[2, 2] <- NA
  expect_error(.as_count_input(bad, arg = "data"), "`data` contains 1 missing or infinite")
  bad <- m; bad[2, 2] <- Inf
  expect_error(.as_count_input(bad), "`x` contains 1 missing or infinite")
  bad <- m; bad[2, 2] <- NaN
  expect_error(.as_count_input(bad), "`x`.*NA/NaN/Inf")
  bad <- m; bad[2, 2] <- -1
  expect_error(.as_count_input(bad), "`x` contains 1 negative values")
  bad <- m; bad[2, 2] <- 0.5
  expect_error(.as_count_input(bad), "`x` contains 1 non-integer values")
  expect_error(.as_count_input(m[, 0, drop = FALSE]), "`x` has no cells")
  expect_error(.as_count_input(m[0, , drop = FALSE]), "`x` has no genes")
  expect_error(.as_count_input(NULL), "`x` is NULL")
  expect_error(.as_count_input(as.data.frame(m)), "`x` is a data.frame")
  expect_error(.as_count_input(letters), "`x` must be a SingleCellExperiment")
  expect_error(.as_count_input(matrix("a", 2, 2)), "`x` must hold numeric counts")
  expect_error(.as_count_input(m, layer = "counts"), "`layer` only applies")
})

test_that("sparse counts are checked in one pass over the stored values", {
  m <- toy_counts()
  bad <- m; bad@x[c(2, 5)] <- c(NA, -3); bad@x[7] <- 2.5
  expect_error(.as_count_input(bad), "`x` contains 1 missing or infinite")
  bad@x[2] <- 1
  expect_error(.as_count_input(bad), "`x` contains 1 negative values \\(min -3\\)")
  bad@x[5] <- 1
  expect_error(.as_count_input(bad), "`x` contains 1 non-integer values \\(e.g. 2.5\\)")
  # Stored zeros are dropped without touching the user's matrix; a cell whose stored
  # values are all zero is empty.
  zeros <- m; zeros@x[zeros@p[2] + 1] <- 0
  before <- zeros
  input <- .as_count_input(zeros)
  expect_identical(zeros, before)
  expect_identical(length(input$counts@x), length(m@x) - 1L)
  expect_false(any(input$counts@x == 0))
  empty <- m; empty@x[(empty@p[3] + 1):empty@p[4]] <- 0
  expect_error(.as_count_input(empty), "`x` has 1 cells with no counts.*'c3'")
  # Clean input is passed on as it is, not copied.
  clean <- .as_count_input(m)$counts
  expect_identical(clean@x, m@x)
  expect_identical(clean@i, m@i)
})

test_that("a model keeps its counts when the user's matrix changes or goes", {
  d <- small_data()
  counts <- d$counts
  m <- scvi(counts, cells = d$cells, batch_key = "batch", n_latent = 5L)
  m <- train(m, max_epochs = 1L, seed = 0L, device = "cpu", progress = FALSE)
  latent <- get_latent_representation(m)
  # The core reads the matrix's row indices in place: R must copy them before this change.
  counts@i[seq_len(100)] <- 0L
  counts@x[] <- 1
  expect_identical(get_latent_representation(m), latent)
  rm(counts, d)
  gc(full = TRUE)
  expect_identical(get_latent_representation(m), latent)
})

test_that("cell checks: transposed input, row count, order, empty cells and genes", {
  m <- as.matrix(toy_counts())
  cells <- data.frame(batch = rep(c("a", "b"), 3))
  expect_error(.as_count_input(t(m), cells), "`x` looks like cells x genes.*transpose it with t\\(\\)")
  expect_error(.as_count_input(m, cells[1:5, , drop = FALSE]),
               "`cells` has 5 rows but `x` has 6 cells")
  expect_error(.as_count_input(m, cells = list(1)), "`cells` must be NULL or a data.frame")
  shuffled <- data.frame(batch = 1:6, row.names = rev(colnames(m)))
  expect_error(.as_count_input(m, shuffled), "rows of `cells` are not in the order")

  empty <- m; empty[, c(2, 5)] <- 0
  expect_error(.as_count_input(empty), "`x` has 2 cells with no counts.*'c2', 'c5'")
  zero_gene <- m; zero_gene[3, ] <- 0
  expect_warning(.as_count_input(zero_gene), "`x` has 1 genes with no counts.*'g3'")
  dup <- m; colnames(dup)[2] <- "c1"
  expect_error(.as_count_input(dup), "`x` has 1 duplicated cell names")
  dup <- m; rownames(dup)[2] <- "g1"
  expect_warning(.as_count_input(dup), "duplicated gene names")
})

test_that(".as_count_input reads a SingleCellExperiment", {
  skip_if_not_installed("SingleCellExperiment")
  m <- toy_counts()
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = m, raw = m * 2),
    colData = S4Vectors::DataFrame(batch = rep(c("a", "b"), 3), row.names = colnames(m)))
  r <- .as_count_input(sce)
  expect_equal(r$counts, .as_count_input(m)$counts)
  expect_identical(r$cell_data$batch, rep(c("a", "b"), 3))
  expect_identical(r$layer, "counts")
  expect_equal(sum(.as_count_input(sce, layer = "raw")$counts), 2 * sum(m))
  expect_error(.as_count_input(sce, layer = "logcounts"),
               "`layer` 'logcounts' is not an assay of `x`; available assays: 'counts', 'raw'")
  expect_error(.as_count_input(sce, cells = data.frame(a = 1:6)), "`cells` is only used")
})

test_that("array-like assays (DelayedArray) are converted", {
  skip_if_not_installed("DelayedArray")
  m <- toy_counts()
  r <- .as_count_input(DelayedArray::DelayedArray(as.matrix(m)))
  expect_s4_class(r$counts, "dgCMatrix")
  expect_equal(as.matrix(r$counts), as.matrix(m))
})

test_that(".as_count_input reads a Seurat object", {
  skip_if_not_installed("SeuratObject")
  m <- toy_counts(n_genes = 4, n_cells = 6)
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(
    counts = m, meta.data = data.frame(batch = rep(c("a", "b"), 3), row.names = colnames(m))))
  r <- .as_count_input(so)
  expect_equal(as.matrix(r$counts), as.matrix(m))
  expect_identical(r$cell_data$batch, rep(c("a", "b"), 3))
  expect_identical(r$assay, "RNA")
  expect_null(r$layer)
  expect_error(.as_count_input(so, assay = "ADT"), "`assay` 'ADT' is not an assay")
  # Seurat's `assay` defaults to the default assay (as.Seurat(sce) makes "originalexp")
  so[["originalexp"]] <- SeuratObject::CreateAssayObject(counts = m * 2)
  SeuratObject::DefaultAssay(so) <- "originalexp"
  r2 <- .as_count_input(so)
  expect_identical(r2$assay, "originalexp")
  expect_equal(as.matrix(r2$counts), as.matrix(m * 2))
  # `layer` is the SingleCellExperiment's name for it; each is refused on the other object
  expect_error(.as_count_input(so, layer = "RNA"),
               "`layer` names an assay of a SingleCellExperiment.*name the assay with `assay`")
  sce <- SingleCellExperiment::SingleCellExperiment(assays = list(counts = m))
  expect_error(.as_count_input(sce, assay = "RNA"),
               "`assay` names the assay of a Seurat object.*with `layer`")
  expect_error(.as_count_input(m, assay = "RNA"), "`assay` only applies to")
})

# --- registration -----------------------------------------------------------------------

test_that("absent keys give one category \"0\" and zero codes", {
  f <- .register_fields(toy_input())
  expect_identical(f$batch, integer(6))
  expect_identical(f$labels, integer(6))
  expect_identical(f$registry$batch_categories, "0")
  expect_identical(f$registry$label_categories, "0")
  expect_identical(f$registry$n_batch, 1L)
  expect_identical(f$registry$n_labels, 1L)
  expect_identical(f$registry$n_cells, 6L)
  expect_identical(dim(f$cat_covs), c(6L, 0L))
  expect_identical(dim(f$cont_covs), c(6L, 0L))
  expect_identical(f$cat_sizes, stats::setNames(integer(0), character(0)))
  expect_null(f$size_factor)
  expect_identical(f$registry$model, "SCVI")
  expect_identical(f$registry$setup_args$layer, NULL)
  expect_true("batch_key" %in% names(f$registry$setup_args))
})

test_that("counts are passed as CSC genes x cells (= CSR cells x genes), 0-based", {
  input <- toy_input()
  f <- .register_fields(input)
  m <- input$counts
  expect_identical(f$counts$blocks[[1]]$p, m@p)
  expect_identical(f$counts$blocks[[1]]$i, m@i)
  expect_identical(f$counts$blocks[[1]]$x, m@x)
  expect_identical(f$counts$n_genes, 4L)
  expect_identical(f$counts$n_cells, 6L)
  # Rebuild cell 3's row from the CSR view.
  cell <- 3
  rng <- (f$counts$blocks[[1]]$p[cell] + 1):f$counts$blocks[[1]]$p[cell + 1]
  dense <- numeric(4); dense[f$counts$blocks[[1]]$i[rng] + 1] <- f$counts$blocks[[1]]$x[rng]
  expect_equal(dense, unname(as.matrix(m)[, cell]))
})

test_that("string categories use code-point order, numbers numeric order", {
  cells <- data.frame(batch = c("b", "B", "a", "b", "B", "a"),
                      num = c(10, 2, 1, 10, 2, 1),
                      stringsAsFactors = FALSE)
  f <- quiet(.register_fields(toy_input(cells), batch_key = "batch", labels_key = "num"))
  expect_identical(f$registry$batch_categories, c("B", "a", "b"))
  expect_identical(f$batch, c(2L, 0L, 1L, 2L, 0L, 1L))
  expect_identical(f$registry$label_categories, c("1", "2", "10"))
  expect_identical(f$labels, c(2L, 1L, 0L, 2L, 1L, 0L))
  expect_identical(f$registry$n_batch, 3L)
})

test_that("factor levels keep their declared order, unused levels included", {
  cells <- data.frame(batch = factor(c("x", "y", "x", "y", "x", "y"),
                                     levels = c("y", "unused", "x")))
  f <- quiet(.register_fields(toy_input(cells), batch_key = "batch"))
  expect_identical(f$registry$batch_categories, c("y", "unused", "x"))
  expect_identical(f$batch, c(2L, 0L, 2L, 0L, 2L, 0L))
  expect_identical(f$registry$n_batch, 3L)
})

test_that("categories with fewer than 3 cells warn", {
  cells <- data.frame(batch = c("a", "a", "a", "a", "b", "b"))
  expect_warning(.register_fields(toy_input(cells), batch_key = "batch"),
                 "`batch_key` column 'batch' has categories with fewer than 3 cells: 'b' \\(2\\)")
  cells <- data.frame(batch = c("a", "a", "a", "b", "b", "b"))
  expect_silent(.register_fields(toy_input(cells), batch_key = "batch"))
})

test_that("key columns are checked by name, with NA and type errors", {
  cells <- data.frame(batch = rep(c("a", "b"), 3), sf = c(1, 2, 1, 2, 1, 0),
                      txt = letters[1:6], bad = c(1, NA, 1, 1, 1, 1))
  input <- toy_input(cells)
  expect_error(.register_fields(input, batch_key = "foo"),
               "`batch_key` 'foo' is not a column of the cell data; available: 'batch', 'sf', 'txt', 'bad'",
               fixed = TRUE)
  expect_error(.register_fields(input, labels_key = "foo"), "`labels_key` 'foo'")
  expect_error(.register_fields(input, batch_key = "bad"),
               "`batch_key` column 'bad' has 1 missing values")
  expect_error(.register_fields(input, batch_key = 1), "`batch_key` must be a single")
  expect_error(.register_fields(input, size_factor_key = "sf"),
               "`size_factor_key` column 'sf' must be > 0")
  expect_error(.register_fields(input, size_factor_key = "txt"),
               "`size_factor_key` column 'txt' must be numeric")
  expect_error(.register_fields(input, continuous_covariate_keys = "txt"),
               "`continuous_covariate_keys` column 'txt' must be numeric")
  expect_error(.register_fields(input, categorical_covariate_keys = c("batch", "nope")),
               "`categorical_covariate_keys` 'nope' is not a column")
  expect_error(.register_fields(input, categorical_covariate_keys = c("batch", "batch")),
               "`categorical_covariate_keys` names a column more than once")
  expect_error(.register_fields(input, extend_categories = NA), "`extend_categories`")
  expect_error(.register_fields(.as_count_input(toy_counts()), batch_key = "b"),
               "available: none")
})

test_that("covariates and size factors are registered in list order", {
  cells <- data.frame(batch = rep(c("a", "b"), 3), donor = rep(c("d2", "d1", "d3"), 2),
                      sex = rep(c("m", "f"), each = 3), pct = c(0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
                      depth = 1:6, sf = c(1, 2, 1, 2, 1, 0.5))
  f <- quiet(.register_fields(toy_input(cells), batch_key = "batch", size_factor_key = "sf",
                              categorical_covariate_keys = c("sex", "donor"),
                              continuous_covariate_keys = c("depth", "pct")))
  expect_identical(colnames(f$cat_covs), c("sex", "donor"))
  expect_type(f$cat_covs, "integer")
  expect_identical(f$cat_covs[, "donor"], c(1L, 0L, 2L, 1L, 0L, 2L))
  expect_identical(f$cat_covs[, "sex"], c(1L, 1L, 1L, 0L, 0L, 0L))
  expect_identical(f$cat_sizes, c(sex = 2L, donor = 3L))
  expect_identical(f$registry$categorical_covariate_categories,
                   list(sex = c("f", "m"), donor = c("d1", "d2", "d3")))
  expect_identical(colnames(f$cont_covs), c("depth", "pct"))
  expect_type(f$cont_covs, "double")
  expect_equal(f$cont_covs[, "pct"], cells$pct)
  expect_identical(f$registry$continuous_covariate_keys, c("depth", "pct"))
  expect_identical(f$size_factor, cells$sf)
  expect_identical(f$registry$setup_args$categorical_covariate_keys, c("sex", "donor"))
  expect_identical(f$registry$setup_args$size_factor_key, "sf")
})

test_that("transfer reuses mappings, rejects or extends unknown categories", {
  ref_cells <- data.frame(batch = rep(c("b", "a", "c"), 2), cov = rep(c("u", "v"), 3))
  ref <- quiet(.register_fields(toy_input(ref_cells), batch_key = "batch",
                                categorical_covariate_keys = "cov"))
  reg <- ref$registry
  expect_identical(reg$batch_categories, c("a", "b", "c"))

  # Same categories, different order of appearance: codes follow the stored mapping.
  q <- quiet(.register_fields(toy_input(data.frame(batch = rep(c("c", "c", "a"), 2),
                                                   cov = rep("v", 6))), registry = reg))
  expect_identical(q$batch, rep(c(2L, 2L, 0L), 2))
  expect_identical(q$registry$batch_categories, c("a", "b", "c"))
  expect_identical(q$cat_covs[, "cov"], rep(1L, 6))
  expect_identical(q$registry$n_batch, 3L)

  new_cells <- data.frame(batch = rep(c("a", "z", "d"), 2), cov = rep(c("u", "w"), 3))
  expect_error(.register_fields(toy_input(new_cells), registry = reg),
               "`batch_key` column 'batch' has values the model was not set up with: 'd', 'z'.*load_query_data\\(\\)")
  ext <- quiet(.register_fields(toy_input(new_cells), registry = reg, extend_categories = TRUE))
  expect_identical(ext$registry$batch_categories, c("a", "b", "c", "d", "z"))
  expect_identical(ext$batch, rep(c(0L, 4L, 3L), 2))
  expect_identical(ext$registry$n_batch, 5L)
  expect_identical(ext$registry$categorical_covariate_categories$cov, c("u", "v", "w"))
  expect_identical(ext$cat_sizes, c(cov = 3L))

  # Keys come from the registry; explicit different keys are an error.
  expect_error(.register_fields(toy_input(ref_cells), batch_key = "cov", registry = reg),
               "`batch_key` = c\\(\"cov\"\\) differs from the model's registered batch_key")
})

test_that("transfer takes the model's genes by name and names the missing ones", {
  reg <- .register_fields(toy_input())$registry
  m <- toy_counts()
  same <- .register_fields(.as_count_input(m), registry = reg)$counts
  # other order, or extra genes: the model's genes are taken by name, in its order
  expect_identical(.register_fields(.as_count_input(m[4:1, ]), registry = reg)$counts, same)
  extra <- rbind(m, extra = 1)
  expect_identical(.register_fields(.as_count_input(extra[c(5, 2, 1, 4, 3), ]),
                                    registry = reg)$counts, same)
  # cells whose counts are all in other genes cannot be used
  only_extra <- rbind(m, extra = 1)
  only_extra[1:4, 2] <- 0
  expect_error(.register_fields(.as_count_input(only_extra), registry = reg),
               "1 cells with no counts in the model's genes")
  m2 <- m; rownames(m2)[c(1, 3)] <- c("new1", "new2")
  expect_error(.register_fields(.as_count_input(m2), registry = reg),
               "`x` genes do not match the model's genes: 2 of the model's 4 genes are missing \\('g1', 'g3'\\); 2 genes are not in the model")
  expect_error(.register_fields(.as_count_input(m[1:3, ]), registry = reg),
               "1 of the model's 4 genes are missing \\('g4'\\)")
})

# --- registry JSON ----------------------------------------------------------------------

test_that("registries round-trip through JSON, empty and length-1 fields included", {
  bare <- .register_fields(toy_input())$registry
  json <- .registry_to_json(bare)
  expect_identical(.registry_from_json(json), bare)
  # Arrays stay arrays for the Rust side, absent keys are null, the map is an object.
  expect_match(json, "\"label_categories\":[\"0\"]", fixed = TRUE)
  expect_match(json, "\"categorical_covariate_categories\":{}", fixed = TRUE)
  expect_match(json, "\"continuous_covariate_keys\":[]", fixed = TRUE)
  expect_match(json, "\"batch_key\":null", fixed = TRUE)
  expect_match(json, "\"n_batch\":1", fixed = TRUE)

  cells <- data.frame(batch = rep(c("b", "B", "\u00e9"), 2), one = rep("k", 6),
                      cont = 1:6, sf = 1:6)
  full <- quiet(.register_fields(toy_input(cells), batch_key = "batch", labels_key = "one",
                                 size_factor_key = "sf", categorical_covariate_keys = "one",
                                 continuous_covariate_keys = "cont"))$registry
  json <- .registry_to_json(full, pretty = TRUE)
  back <- .registry_from_json(json)
  expect_identical(back, full)
  expect_identical(back$categorical_covariate_categories, list(one = "k"))
  expect_identical(back$setup_args$continuous_covariate_keys, "cont")
  expect_identical(back$batch_categories, c("B", "b", "\u00e9"))
  expect_true(jsonlite::validate(json))
})

# --- example data -----------------------------------------------------------------------

test_that("rscvi_example_data() has the documented shape", {
  d <- rscvi_example_data()
  expect_s4_class(d$counts, "dgCMatrix")
  expect_identical(dim(d$counts), c(2000L, 1021L))
  expect_identical(colnames(d$counts), rownames(d$cells))
  expect_identical(names(d$cells), c("barcode", "batch", "cell_line", "protocol", "total_counts"))
  expect_true(all(d$counts@x == round(d$counts@x)))
  expect_setequal(unique(d$cells$cell_line), c("A549", "H1975", "H2228", "H838", "HCC827"))
  expect_length(unique(d$cells$batch), 5L)
})

test_that("rscvi_example_sce() returns a registrable SingleCellExperiment", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- rscvi_example_sce()
  expect_s4_class(sce, "SingleCellExperiment")
  expect_identical(SummarizedExperiment::assayNames(sce), "counts")
  expect_true(all(c("batch", "cell_line", "protocol") %in% names(SummarizedExperiment::colData(sce))))
  expect_identical(dim(sce), c(2000L, 1021L))

  f <- .register_fields(.as_count_input(sce), batch_key = "batch", labels_key = "cell_line")
  expect_identical(f$registry$batch_categories,
                   c("CELseq2_3cl", "CELseq2_5cl_p1", "CELseq2_5cl_p2", "CELseq2_5cl_p3",
                     "Dropseq_3cl"))
  expect_identical(f$registry$label_categories, c("A549", "H1975", "H2228", "H838", "HCC827"))
  expect_identical(f$registry$setup_args$layer, "counts")
  expect_identical(length(f$counts$blocks[[1]]$p), 1022L)
  expect_identical(.registry_from_json(.registry_to_json(f$registry)), f$registry)
})

test_that("example data match the shared CellBench files", {
  dir <- skip_if_no_shared_data("cellbench")
  d <- rscvi_example_data()
  hvg <- readLines(file.path(dir, "hvg2000.txt"))
  expect_identical(rownames(d$counts), hvg[nzchar(hvg)])
  val <- readLines(file.path(dir, "validation_cells_seed0.txt"))
  val <- val[nzchar(val)]
  expect_length(val, 102L)
  expect_true(all(val %in% colnames(d$counts)))
})

test_that("new data are read from the assay the model was set up with, where they have it", {
  skip_if_not_installed("SeuratObject")
  m <- toy_counts(n_genes = 4, n_cells = 6)
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = m))
  sce <- SingleCellExperiment::SingleCellExperiment(assays = list(raw = m))
  expect_identical(.source_like(so, list(assay = "RNA")), list(layer = NULL, assay = "RNA"))
  # models saved before `assay` existed named the Seurat assay `layer`
  expect_identical(.source_like(so, list(layer = "RNA")), list(layer = NULL, assay = "RNA"))
  expect_identical(.source_like(so, list(assay = "ADT")), list(layer = NULL, assay = NULL))
  expect_identical(.source_like(sce, list(layer = "raw")), list(layer = "raw", assay = NULL))
  expect_identical(.source_like(sce, list(assay = "RNA")), list(layer = NULL, assay = NULL))
  expect_identical(.source_like(m, list(layer = "raw")), list(layer = NULL, assay = NULL))
})
