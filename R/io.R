# Readers of the files users have (AnnData .h5ad, CellRanger .h5), in the Rust core on HDF5:
# no Python. This file turns what the core read into Bioconductor objects.

# A features x cells matrix from the core's description: a dgCMatrix or a dense matrix.
.io_matrix <- function(m, rownames, colnames) {
  if (identical(m$kind, "sparse")) {
    methods::new("dgCMatrix", p = m$p, i = m$i, x = m$x, Dim = m$dim,
                 Dimnames = list(rownames, colnames))
  } else {
    matrix(m$x, nrow = m$dim[1], ncol = m$dim[2], dimnames = list(rownames, colnames))
  }
}

# A data frame's columns as R vectors: factors keep their stored level order.
.io_columns <- function(f) {
  lapply(f$columns, function(col) {
    switch(col$kind,
      text = { v <- col$values; v[col$na] <- NA_character_; v },
      factor = {
        codes <- col$codes
        codes[codes == 0L] <- NA_integer_
        structure(codes, levels = col$levels,
                  class = c(if (isTRUE(col$ordered)) "ordered", "factor"))
      },
      col$values)
  })
}

.io_frame <- function(f) {
  S4Vectors::DataFrame(.io_columns(f), row.names = f$index, check.names = FALSE)
}

.check_readable_file <- function(path) {
  path <- .check_scalar_string(path, "path")
  if (!file.exists(path)) .stop("`path` '%s' does not exist", path)
  if (dir.exists(path)) .stop("`path` '%s' is a folder, not a file", path)
  normalizePath(path)
}

.require_sce <- function(what) {
  if (!requireNamespace("SingleCellExperiment", quietly = TRUE)) {
    .stop("%s() returns a SingleCellExperiment: install the SingleCellExperiment package", what)
  }
}

#' Read an AnnData `.h5ad` file
#'
#' Reads the file directly (HDF5 in rscvi's Rust core; no Python, no conversion step) into a
#' `SingleCellExperiment`: `X` and every layer become assays (genes x cells; sparse stays
#' sparse), `obs` the column data (categoricals become factors with their categories in
#' order, also in the pre-0.8 `__categories` encoding), `var` the row data, and the 2-D
#' `obsm` arrays (e.g. `X_pca`, `X_scVI`) reduced dimensions. Pass the result to [scvi()]
#' and friends with `layer` naming the assay of raw counts.
#'
#' @param path the `.h5ad` file.
#' @param X_name the assay name for `X` (many files keep normalised values in `X` and the
#'   raw counts in a layer, often `"counts"`).
#' @param layers,reducedDims whether to read the layers and the `obsm` embeddings.
#' @return A `SingleCellExperiment`.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' f <- system.file("extdata", "cellbench_small.h5ad", package = "rscvi")
#' sce <- read_h5ad(f)
#' sce
#' table(sce$batch)
read_h5ad <- function(path, X_name = "X", layers = TRUE, reducedDims = TRUE) {
  path <- .check_readable_file(path)
  X_name <- .check_scalar_string(X_name, "X_name")
  layers <- .check_scalar_bool(layers, "layers")
  reducedDims <- .check_scalar_bool(reducedDims, "reducedDims")
  .require_sce("read_h5ad")
  .anndata_sce(.rs(rs_read_h5ad(path, layers)), X_name, reducedDims, "read_h5ad")
}

# A SingleCellExperiment from an AnnData the core read (`a`, with its layers when they were
# asked for), as read_h5ad() describes.
.anndata_sce <- function(a, X_name, reducedDims, caller) {
  cells <- a$obs$index
  genes <- a$var$index
  extra <- lapply(a$layers, .io_matrix, rownames = genes, colnames = cells)
  clash <- intersect(names(extra), X_name)
  if (length(clash)) .stop("`X_name` '%s' is also the name of a layer; choose another", clash)
  assays <- c(stats::setNames(list(.io_matrix(a$matrix, genes, cells)), X_name), extra)
  dims <- if (reducedDims) {
    lapply(a$obsm, function(m) .io_matrix(m, cells, NULL))
  } else {
    list()
  }
  if (length(a$skipped)) {
    message(caller, "(): not read (not 2-D arrays of cells): ", .enum(a$skipped, 10L))
  }
  SingleCellExperiment::SingleCellExperiment(
    assays = assays, colData = .io_frame(a$obs), rowData = .io_frame(a$var),
    reducedDims = dims)
}

#' Read a MuData `.h5mu` file
#'
#' Reads a multimodal MuData file (e.g. RNA + ATAC of a multiome experiment, written by
#' muon / mudata) directly, each modality as [read_h5ad()] reads an AnnData. When every
#' modality holds the same cells (paired data), the result is one `SingleCellExperiment`:
#' the first modality (by default) as the main experiment and each other one as an
#' alternative experiment named after it, the file's global `obs` as column data. Otherwise
#' (cells measured in only some modalities, the mosaic case) it is a named list of
#' `SingleCellExperiment`s, one per modality, which [multivi()] takes as `rna` / `atac` /
#' `protein` (cells are matched by name).
#'
#' @inheritParams read_h5ad
#' @param main the modality of the main experiment (default: the first in the file).
#' @return A `SingleCellExperiment`, or a named list of them (see Description).
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' f <- system.file("extdata", "snareseq2_small.h5mu", package = "rscvi")
#' mo <- read_h5mu(f)
#' mo
#' SingleCellExperiment::altExpNames(mo)
read_h5mu <- function(path, main = NULL, X_name = "X", layers = TRUE, reducedDims = TRUE) {
  path <- .check_readable_file(path)
  X_name <- .check_scalar_string(X_name, "X_name")
  layers <- .check_scalar_bool(layers, "layers")
  reducedDims <- .check_scalar_bool(reducedDims, "reducedDims")
  .require_sce("read_h5mu")
  mu <- .rs(rs_read_h5mu(path, layers))
  mods <- lapply(mu$modalities, .anndata_sce, X_name = X_name, reducedDims = reducedDims,
                 caller = "read_h5mu")
  main <- .check_choice(main %||% names(mods)[1], names(mods), "main")
  cells <- lapply(mods, colnames)
  if (!all(vapply(cells, identical, logical(1), cells[[main]]))) return(mods)
  sce <- mods[[main]]
  global <- .io_frame(mu$obs)
  new <- setdiff(names(global), names(SummarizedExperiment::colData(sce)))
  if (length(new) && identical(rownames(global), colnames(sce))) {
    SummarizedExperiment::colData(sce) <- cbind(SummarizedExperiment::colData(sce),
                                                global[, new, drop = FALSE])
  }
  for (m in setdiff(names(mods), main)) {
    alt <- mods[[m]]
    SingleCellExperiment::reducedDims(alt) <- list()
    SingleCellExperiment::altExp(sce, m) <- SummarizedExperiment::SummarizedExperiment(
      assays = SummarizedExperiment::assays(alt),
      rowData = SummarizedExperiment::rowData(alt))
  }
  sce
}

#' Read a 10x Genomics feature-barcode matrix (`.h5`)
#'
#' Reads a CellRanger (v3 or later) `filtered_feature_bc_matrix.h5` or
#' `raw_feature_bc_matrix.h5` into a `SingleCellExperiment` (assay `"counts"`, features
#' x barcodes), as DropletUtils' `read10xCounts()` lays it out: feature ids as row names,
#' `ID`, `Symbol` and `Type` in the row data. Gene expression is the main experiment and
#' every other feature type an alternative experiment named after it (`"Peaks"` of a
#' Multiome file, `"Antibody Capture"` of CITE-seq), so a 10x Multiome file feeds
#' [multivi()] directly.
#'
#' @param path the `.h5` file.
#' @return A `SingleCellExperiment`.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' f <- system.file("extdata", "snareseq2_10x.h5", package = "rscvi")
#' sce <- read_10x_h5(f)
#' sce
#' SingleCellExperiment::altExpNames(sce)
read_10x_h5 <- function(path) {
  path <- .check_readable_file(path)
  .require_sce("read_10x_h5")
  t <- .rs(rs_read_10x_h5(path))
  counts <- .io_matrix(t$matrix, t$id, t$barcodes)
  types <- unique(t$feature_type)
  main <- if ("Gene Expression" %in% types) "Gene Expression" else types[1]
  part <- function(type) {
    rows <- t$feature_type == type
    list(assays = list(counts = counts[rows, , drop = FALSE]),
         rowData = S4Vectors::DataFrame(ID = t$id[rows], Symbol = t$name[rows],
                                        Type = t$feature_type[rows], row.names = t$id[rows]))
  }
  m <- part(main)
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = m$assays, rowData = m$rowData,
    colData = S4Vectors::DataFrame(Barcode = t$barcodes, row.names = t$barcodes))
  for (type in setdiff(types, main)) {
    p <- part(type)
    SingleCellExperiment::altExp(sce, type) <- SummarizedExperiment::SummarizedExperiment(
      assays = p$assays, rowData = p$rowData)
  }
  sce
}

# A matrix (features x cells) as the core's writer takes it: a dgCMatrix's slots or a dense
# matrix's values.
.io_matrix_out <- function(m, what) {
  if (methods::is(m, "sparseMatrix") || methods::is(m, "DelayedArray")) {
    m <- .to_dgc_values(m, what)
    return(list(kind = "sparse", p = m@p, i = m@i, x = m@x, dim = dim(m)))
  }
  if (!is.matrix(m) || !(is.numeric(m) || is.logical(m))) {
    .stop("%s must be a numeric matrix or a sparse Matrix, got %s", what, class(m)[1])
  }
  list(kind = "dense", x = as.double(m), dim = dim(m))
}

# Any sparse or delayed matrix as a dgCMatrix with double values (not necessarily counts).
.to_dgc_values <- function(m, what) {
  m <- tryCatch(methods::as(methods::as(methods::as(m, "CsparseMatrix"), "generalMatrix"),
                            "dMatrix"),
                error = function(e) .stop("%s cannot be converted to a sparse matrix (%s)",
                                          what, conditionMessage(e)))
  methods::as(m, "dgCMatrix")
}

# A data frame's columns as the core's writer takes them; columns it cannot store (lists,
# nested data frames) are left out with a message.
.io_frame_out <- function(df, index, what) {
  keep <- list()
  dropped <- character(0)
  for (n in names(df)) {
    v <- df[[n]]
    col <- if (is.factor(v)) {
      codes <- as.integer(v)
      codes[is.na(codes)] <- 0L
      list(kind = "factor", values = codes, levels = levels(v), ordered = is.ordered(v))
    } else if (is.logical(v) && is.null(dim(v))) {
      list(kind = "logical", values = v)
    } else if (is.integer(v) && is.null(dim(v))) {
      if (anyNA(v)) list(kind = "double", values = as.double(v))
      else list(kind = "integer", values = v)
    } else if (is.numeric(v) && is.null(dim(v))) {
      list(kind = "double", values = as.double(v))
    } else if (is.character(v) && is.null(dim(v))) {
      na <- is.na(v)
      v[na] <- ""
      list(kind = "text", values = enc2utf8(v), na = na)
    } else {
      NULL
    }
    if (is.null(col)) dropped <- c(dropped, n) else keep[[n]] <- col
  }
  if (length(dropped)) {
    message(sprintf("write_h5ad(): %s columns not written (not vectors): %s", what,
                    .enum(dropped, 10L)))
  }
  list(index = enc2utf8(as.character(index)), columns = keep)
}

#' Write a SingleCellExperiment as an AnnData `.h5ad` file
#'
#' Writes the file directly (HDF5 in rscvi's Rust core; no Python) with AnnData's current
#' encodings, so scanpy, scvi-tools and anndata open it: one assay becomes `X` and the others
#' layers (cells x features, sparse stays sparse; integer-valued matrices as float32), the
#' column data `obs` (factors become categoricals with their levels in order; logical,
#' integer, numeric and character columns as themselves, missing values included), the row
#' data `var`, and the reduced dimensions `obsm` (e.g. an SCVI embedding stored by
#' [runSCVI()] as `"SCVI"`: name it `"X_scVI"` first for scanpy's conventions). The file is
#' written beside `path` and moved into place at the end, so a failure never leaves a
#' half-written file.
#'
#' @param x a `SingleCellExperiment` (or `SummarizedExperiment`).
#' @param path the `.h5ad` file to write.
#' @param X_name the assay written as `X` (default: the first assay).
#' @param overwrite replace an existing file.
#' @return `path`, invisibly.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' sce <- read_h5ad(system.file("extdata", "cellbench_small.h5ad", package = "rscvi"))
#' f <- tempfile(fileext = ".h5ad")
#' write_h5ad(sce, f)
#' identical(SummarizedExperiment::assay(read_h5ad(f), "X"),
#'           SummarizedExperiment::assay(sce, "X"))
write_h5ad <- function(x, path, X_name = NULL, overwrite = FALSE) {
  if (!methods::is(x, "SummarizedExperiment")) {
    .stop("`x` must be a SingleCellExperiment or SummarizedExperiment, got %s", .describe(x))
  }
  path <- .check_scalar_string(path, "path")
  overwrite <- .check_scalar_bool(overwrite, "overwrite")
  if (dir.exists(path)) .stop("`path` '%s' is a folder, not a file", path)
  if (file.exists(path) && !overwrite) {
    .stop("`path` '%s' exists; use overwrite = TRUE to replace it", path)
  }
  if (!dir.exists(dirname(path))) .stop("the folder of `path` '%s' does not exist", path)
  assays <- SummarizedExperiment::assayNames(x)
  if (!length(assays)) .stop("`x` has no assays to write")
  if (is.null(assays) || any(!nzchar(assays))) .stop("every assay of `x` needs a name")
  X_name <- .check_choice(X_name %||% assays[1], assays, "X_name")
  cells <- colnames(x) %||% as.character(seq_len(ncol(x)))
  genes <- rownames(x) %||% as.character(seq_len(nrow(x)))
  if (anyDuplicated(cells)) .stop("`x` has duplicated cell names; AnnData needs unique ones")
  if (anyDuplicated(genes)) .stop("`x` has duplicated gene names; AnnData needs unique ones")
  mat <- function(a) {
    .io_matrix_out(SummarizedExperiment::assay(x, a, withDimnames = FALSE),
                   sprintf("assay '%s'", a))
  }
  layers <- lapply(stats::setNames(nm = setdiff(assays, X_name)), mat)
  obsm <- list()
  if (methods::is(x, "SingleCellExperiment")) {
    for (d in SingleCellExperiment::reducedDimNames(x)) {
      m <- SingleCellExperiment::reducedDim(x, d)
      if (is.matrix(m) && is.numeric(m) && nrow(m) == ncol(x)) {
        obsm[[d]] <- list(kind = "dense", x = as.double(m), dim = dim(m))
      } else {
        message(sprintf("write_h5ad(): reduced dimension '%s' not written (not a numeric matrix)",
                        d))
      }
    }
  }
  obs <- .io_frame_out(as.data.frame(SummarizedExperiment::colData(x), optional = TRUE),
                       cells, "obs")
  var <- .io_frame_out(as.data.frame(SummarizedExperiment::rowData(x), optional = TRUE),
                       genes, "var")
  .rs(rs_write_h5ad(path.expand(path), mat(X_name), obs, var, layers, obsm, overwrite))
  invisible(path)
}

#' Add a model's results to an existing `.h5ad` file
#'
#' Writes embeddings into `obsm` and per-cell matrices into `layers` of an AnnData file
#' that already holds the cells, so that Python users find them where scvi-tools puts them
#' (`obsm["X_scVI"]`, `layers["scvi_normalized"]`). Rows are matched to the file's cells
#' (and layer columns to its genes) by name, in any order; matrices without names must be
#' in the file's order. Everything is checked before the file is touched, and nothing else
#' in it changes.
#'
#' @param path an existing `.h5ad` file.
#' @param obsm a named list of cells x dims matrices (e.g. `X_scVI =
#'   get_latent_representation(model)`).
#' @param layers a named list of cells x genes matrices (as [get_normalized_expression()]
#'   returns them) or genes x cells matrices (Bioconductor's orientation), dense or sparse.
#' @param overwrite replace elements of the same name.
#' @return `path`, invisibly.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' f <- tempfile(fileext = ".h5ad")
#' file.copy(system.file("extdata", "cellbench_small.h5ad", package = "rscvi"), f)
#' sce <- read_h5ad(f)
#' model <- train(scvi(sce, layer = "counts", batch_key = "batch", n_latent = 3),
#'                max_epochs = 3, seed = 0)
#' add_to_h5ad(f, obsm = list(X_scVI = get_latent_representation(model)),
#'             layers = list(scvi_normalized = get_normalized_expression(model)))
#' SingleCellExperiment::reducedDimNames(read_h5ad(f))
add_to_h5ad <- function(path, obsm = list(), layers = list(), overwrite = FALSE) {
  path <- .check_readable_file(path)
  overwrite <- .check_scalar_bool(overwrite, "overwrite")
  named <- function(l, arg) {
    if (!is.list(l) || (length(l) && (is.null(names(l)) || any(!nzchar(names(l))) ||
                                      anyDuplicated(names(l))))) {
      .stop("`%s` must be a list of matrices with distinct names, got %s", arg, .describe(l))
    }
    l
  }
  obsm <- named(obsm, "obsm")
  layers <- named(layers, "layers")
  if (!length(obsm) && !length(layers)) .stop("nothing to add: give `obsm` or `layers`")
  names_in_file <- .rs(rs_h5ad_names(path))
  cells <- names_in_file$obs
  genes <- names_in_file$var
  # `ids` (row or column names of an element) taken to the file's `want` order
  order_of <- function(ids, want, what) {
    if (is.null(ids)) return(NULL)
    pos <- match(want, ids)
    if (anyNA(pos) || length(ids) != length(want)) {
      .stop("%s: its names do not match the file's %d %s (e.g. %s missing)", what,
            length(want), if (identical(want, cells)) "cells" else "genes",
            .enum(setdiff(want, ids), 3L))
    }
    pos
  }
  obsm_out <- lapply(names(obsm), function(n) {
    m <- obsm[[n]]
    what <- sprintf("`obsm$%s`", n)
    if (!(is.matrix(m) && is.numeric(m))) .stop("%s must be a numeric matrix", what)
    if (is.null(rownames(m)) && nrow(m) != length(cells)) {
      .stop("%s has %d rows; the file has %d cells", what, nrow(m), length(cells))
    }
    pos <- order_of(rownames(m), cells, what)
    if (!is.null(pos)) m <- m[pos, , drop = FALSE]
    list(kind = "dense", x = as.double(m), dim = dim(m))
  })
  layers_out <- lapply(names(layers), function(n) {
    m <- layers[[n]]
    what <- sprintf("`layers$%s`", n)
    if (length(dim(m)) != 2L) .stop("%s must be a matrix", what)
    cells_by_genes <- if (!is.null(rownames(m)) && !is.null(colnames(m))) {
      setequal(rownames(m), cells) && setequal(colnames(m), genes)
    } else {
      identical(dim(m), c(length(cells), length(genes)))
    }
    if (cells_by_genes) m <- Matrix::t(m)
    if (!identical(dim(m), c(length(genes), length(cells)))) {
      .stop("%s is not cells x genes or genes x cells of the file (%d cells, %d genes)", what,
            length(cells), length(genes))
    }
    rows <- order_of(rownames(m), genes, what)
    cols <- order_of(colnames(m), cells, what)
    m <- m[rows %||% seq_len(nrow(m)), cols %||% seq_len(ncol(m)), drop = FALSE]
    .io_matrix_out(m, what)
  })
  .rs(rs_add_to_h5ad(path, stats::setNames(obsm_out, names(obsm)),
                     stats::setNames(layers_out, names(layers)), overwrite))
  invisible(path)
}
