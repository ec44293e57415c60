#' Align a query dataset's genes with a reference model
#'
#' Reorders the query's genes to the reference model's order, adds all-zero rows for the
#' reference genes the query lacks and drops genes the reference does not know, as
#' scvi-tools' `prepare_query_anndata()`. Warns when fewer than 80% of the reference genes
#' are present.
#'
#' @param x_query a SingleCellExperiment, a Seurat object or a genes x cells matrix.
#' @param reference an `SCVI` model, or the directory of a model saved with [save_model()].
#' @param layer,assay the assay with the counts of a SingleCellExperiment (`layer`, default
#'   `"counts"`) or a Seurat object (`assay`, default its default assay).
#' @return An object of the same kind as `x_query` holding only the aligned counts and the
#'   cell metadata (a SingleCellExperiment, a Seurat object, or a `dgCMatrix`).
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' sce <- rscvi_example_sce()
#' model <- scvi(sce[1:1500, ], batch_key = "batch")
#' q <- prepare_query_data(sce[c(10:1, 1600:1700), 1:20], model)
#' dim(q)
prepare_query_data <- function(x_query, reference, layer = NULL, assay = NULL) {
  ref_genes <- .reference_genes(reference)
  # genes without counts are expected in a query (e.g. the ones padded later): no warning
  input <- withCallingHandlers(.as_count_input(x_query, layer = layer, assay = assay,
                                                               arg = "x_query"),
                               warning = .muffle("genes with no counts"))
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
    if (!file.exists(meta) && file.exists(file.path(reference, "model.pt"))) {
      return(load_model(reference)$registry$gene_names)
    }
    if (!file.exists(meta)) .stop("`reference` = \"%s\" holds no saved model (no model.json)", reference)
    genes <- tryCatch(jsonlite::fromJSON(meta)$registry$gene_names, error = function(e) NULL)
    if (!is.character(genes) || !length(genes)) {
      .stop("`reference` = \"%s\": model.json has no gene names", reference)
    }
    return(genes)
  }
  .stop("`reference` must be an SCVI model or the directory of a saved model")
}

#' Map a query dataset onto a trained reference model (scArches)
#'
#' Builds a model for `x_query` that starts from the reference's weights: the query's new
#' batch (and label / covariate) categories are appended after the reference's, their new
#' weights start fresh, and by default only the weights tied to the covariate one-hots (plus
#' the decoder's batch-norm scale and shift and the library encoder) are trained, as
#' scvi-tools' `load_query_data()`. Train the result with [train()]; the latent space of the
#' query cells is then comparable with the reference's.
#'
#' For a `MULTIVI` reference the query data are given as for its queries
#' (`list(rna = , atac = , protein = , cells = )`, any modality may be left out, or a
#' SingleCellExperiment / Seurat object laid out as the reference's data), with the
#' reference's features; the same rules decide what trains, by scvi-tools' module names (a
#' reference built with `modality_weights = "cell"` cannot map new cells).
#'
#' @param x_query the query data (as for [scvi()], or for a MULTIVI reference as above), with
#'   the reference's genes in its order (see [prepare_query_data()]) and the reference's
#'   setup columns.
#' @param reference a trained `SCVI` or `MULTIVI` model, or the directory of one saved with
#'   [save_model()].
#' @param cells,layer,assay as in [scvi()] (SCVI references only).
#' @param unfrozen train every weight.
#' @param freeze_dropout switch dropout off outside the library encoder.
#' @param freeze_expression keep the encoder's first layer frozen except its covariate
#'   columns.
#' @param freeze_decoder_first_layer the same for the decoder's first layer.
#' @param freeze_batchnorm_encoder,freeze_batchnorm_decoder freeze the batch-norm scale and
#'   shift (and running statistics) of the encoder / decoder.
#' @return An untrained model of the reference's kind over the query cells.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' sce <- rscvi_example_sce()
#' ref_cells <- sce$batch != "Dropseq_3cl"
#' ref <- train(scvi(sce[, ref_cells], batch_key = "batch"), max_epochs = 5, seed = 0)
#' query <- train(load_query_data(sce[, !ref_cells], ref), max_epochs = 5, seed = 0)
#' dim(get_latent_representation(query))
load_query_data <- function(x_query, reference, cells = NULL, layer = NULL, assay = NULL,
                            unfrozen = FALSE,
                            freeze_dropout = FALSE, freeze_expression = TRUE,
                            freeze_decoder_first_layer = TRUE, freeze_batchnorm_encoder = TRUE,
                            freeze_batchnorm_decoder = FALSE) {
  if (!inherits(reference, c("SCVI", "MULTIVI"))) {
    if (!(is.character(reference) && length(reference) == 1 && dir.exists(reference))) {
      .stop("`reference` must be an SCVI or MULTIVI model or the directory of a saved model")
    }
    reference <- load_model(reference)
  }
  if (!inherits(reference, c("SCVI", "MULTIVI"))) {
    .stop("`reference`: scArches mapping is available for SCVI and MULTIVI models, got a %s model",
          class(reference)[1])
  }
  freeze <- list(
    unfrozen = .check_scalar_bool(unfrozen, "unfrozen"),
    freeze_dropout = .check_scalar_bool(freeze_dropout, "freeze_dropout"),
    freeze_expression = .check_scalar_bool(freeze_expression, "freeze_expression"),
    freeze_decoder_first_layer = .check_scalar_bool(freeze_decoder_first_layer, "freeze_decoder_first_layer"),
    freeze_batchnorm_encoder = .check_scalar_bool(freeze_batchnorm_encoder, "freeze_batchnorm_encoder"),
    freeze_batchnorm_decoder = .check_scalar_bool(freeze_batchnorm_decoder, "freeze_batchnorm_decoder"))
  if (inherits(reference, "MULTIVI")) {
    if (!is.null(cells) || !is.null(layer) || !is.null(assay)) {
      .stop(paste0("`cells`, `layer` and `assay` apply to SCVI references; for a MULTIVI reference pass ",
                   "`x_query` as list(rna = , atac = , cells = ) or a SingleCellExperiment / ",
                   "Seurat object"))
    }
    return(.multivi_load_query(x_query, reference, freeze))
  }
  .check_model(reference, "reference")
  if (is.null(layer) && is.null(assay)) {
    like <- .source_like(x_query, reference$registry$setup_args)
    layer <- like$layer
    assay <- like$assay
  }
  input <- .input_from(x_query, cells = cells, layer = layer, assay = assay, arg = "x_query",
                       file_ok = TRUE)
  # new categories are appended after the reference's (scvi.md §1, extend_categories)
  f <- .register_fields(input, registry = reference$registry, extend_categories = TRUE)
  config <- reference$config
  config$n_batch <- f$registry$n_batch
  config$n_labels <- f$registry$n_labels
  config$n_cats_per_cov <- as.integer(unname(f$cat_sizes))
  data <- .new_dataset(f)
  ptr <- .rs(rs_scvi_query_new(reference$model, data, .config_to_json(config),
                               .registry_to_json(f$registry),
                               as.character(jsonlite::toJSON(freeze, auto_unbox = TRUE))))
  input_info <- c(list(class = .input_class(x_query)), .input_summary(input, f$counts$n_genes))
  .new_scvi(ptr, data, f$registry, config, input$cell_names, input$cell_data, input_info)
}
