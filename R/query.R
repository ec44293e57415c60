#' Align a query dataset's genes with a reference model
#'
#' Reorders the query's genes to the reference model's order, adds all-zero rows for the
#' reference genes the query lacks and drops genes the reference does not know, as
#' scvi-tools' `prepare_query_anndata()`. Warns when fewer than 80% of the reference genes
#' are present.
#'
#' @param x_query a SingleCellExperiment, a Seurat object or a genes x cells matrix.
#' @param reference an `SCVI` model, or the directory of a model saved with [save_model()].
#' @param layer the assay with the counts (default: `"counts"` / the RNA assay).
#' @return An object of the same kind as `x_query` holding only the aligned counts and the
#'   cell metadata (a SingleCellExperiment, a Seurat object, or a `dgCMatrix`).
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' sce <- rscvi_example_sce()
#' model <- scvi(sce[1:1500, ], batch_key = "batch")
#' q <- prepare_query_data(sce[c(10:1, 1600:1700), 1:20], model)
#' dim(q)
prepare_query_data <- function(x_query, reference, layer = NULL) {
  ref_genes <- .reference_genes(reference)
  # genes without counts are expected in a query (e.g. the ones padded later): no warning
  input <- withCallingHandlers(
    .as_count_input(x_query, layer = layer, arg = "x_query"),
    warning = function(w) {
      if (grepl("genes with no counts", conditionMessage(w))) invokeRestart("muffleWarning")
    })
  present <- ref_genes %in% input$gene_names
  if (mean(present) < 0.8) {
    .warn("`x_query` has only %d of the reference's %d genes (%.0f%%); the missing ones are set to 0",
          sum(present), length(ref_genes), 100 * mean(present))
  }
  counts <- Matrix::sparseMatrix(i = integer(0), j = integer(0), x = numeric(0),
                                 dims = c(length(ref_genes), ncol(input$counts)),
                                 dimnames = list(ref_genes, input$cell_names))
  counts[present, ] <- input$counts[ref_genes[present], , drop = FALSE]
  counts <- methods::as(counts, "CsparseMatrix")
  if (methods::is(x_query, "SingleCellExperiment")) {
    return(SingleCellExperiment::SingleCellExperiment(
      assays = stats::setNames(list(counts), input$layer %||% "counts"),
      colData = SummarizedExperiment::colData(x_query)))
  }
  if (methods::is(x_query, "Seurat")) {
    return(suppressWarnings(SeuratObject::CreateSeuratObject(counts, meta.data = x_query[[]])))
  }
  counts
}

.reference_genes <- function(reference) {
  if (inherits(reference, "SCVI")) return(reference$registry$gene_names)
  if (is.character(reference) && length(reference) == 1 && dir.exists(reference)) {
    meta <- file.path(reference, "model.json")
    if (!file.exists(meta)) .stop("`reference` = \"%s\" holds no saved model (no model.json)", reference)
    genes <- tryCatch(jsonlite::fromJSON(meta)$registry$gene_names, error = function(e) NULL)
    if (!is.character(genes) || !length(genes)) {
      .stop("`reference` = \"%s\": model.json has no gene names", reference)
    }
    return(genes)
  }
  .stop("`reference` must be an SCVI model or the directory of a saved model")
}
