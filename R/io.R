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
.io_frame <- function(f) {
  cols <- lapply(f$columns, function(col) {
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
  S4Vectors::DataFrame(cols, row.names = f$index, check.names = FALSE)
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
  .anndata_sce(.rs(rs_read_h5ad(path, "X")), X_name, layers, reducedDims, "read_h5ad")
}

# A SingleCellExperiment from an AnnData the core read (`a`), as read_h5ad() describes.
.anndata_sce <- function(a, X_name, layers, reducedDims, caller) {
  cells <- a$obs$index
  genes <- a$var$index
  assays <- stats::setNames(list(.io_matrix(a$matrix, genes, cells)), X_name)
  if (layers) {
    extra <- lapply(a$layers, .io_matrix, rownames = genes, colnames = cells)
    clash <- intersect(names(extra), X_name)
    if (length(clash)) .stop("`X_name` '%s' is also the name of a layer; choose another", clash)
    assays <- c(assays, extra)
  }
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
  mu <- .rs(rs_read_h5mu(path))
  mods <- lapply(mu$modalities, .anndata_sce, X_name = X_name, layers = layers,
                 reducedDims = reducedDims, caller = "read_h5mu")
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
