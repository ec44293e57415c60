# One-call workflows for Bioconductor (scater conventions: calculateX() returns the result,
# runX() stores it in the object) and Seurat (RunX() adds a DimReduc). All share
# .fit_embedding(): it splits `...` between the model maker and train() by their formal
# arguments, so the parameter lists live only in those functions.

# `x` of run<KIND>() must be a SingleCellExperiment.
.check_sce_input <- function(x, kind) {
  if (!methods::is(x, "SingleCellExperiment")) {
    .stop(paste0("`x` must be a SingleCellExperiment for run%s(), got %s; use Run%s() for ",
                 "Seurat, or %s for matrices"), kind, .describe(x), kind,
          .model_makers[[kind]])
  }
  invisible(x)
}

# `object` of Run<KIND>() must be a Seurat object.
.check_seurat_input <- function(object, kind) {
  if (!methods::is(object, "Seurat")) {
    .stop(paste0("`object` must be a Seurat object for Run%s(), got %s; use run%s() for a ",
                 "SingleCellExperiment"), kind, .describe(object), kind)
  }
  invisible(object)
}

# A Seurat reduction key: letters and digits ending in "_" (e.g. "<KIND>_").
.check_reduction_key <- function(key, kind) {
  key <- .check_scalar_string(key, "reduction.key")
  if (!grepl("^[A-Za-z][A-Za-z0-9]*_$", key)) {
    .stop("`reduction.key` must be letters/digits ending in \"_\" (e.g. \"%s_\"), got \"%s\"",
          kind, key)
  }
  key
}

# `object` with the embedding `latent` as its reduction `name` (columns `key`1, `key`2, ...,
# of assay `assay`), the model in the reduction's `misc` slot.
.add_reduction <- function(object, name, key, latent, assay, model) {
  colnames(latent) <- paste0(key, seq_len(ncol(latent)))
  object[[name]] <- SeuratObject::CreateDimReducObject(
    embeddings = latent, key = key, assay = assay, misc = list(model = model))
  object
}

# run<KIND>() / Run<KIND>(): builds a model of `kind` on `x` with `build`, trains it with
# `train_fun` (the arguments in `dots` go to whichever takes them: `train_args`, by default
# the formals of `train_fun`) and returns the model and its latent representation.
.fit_embedding <- function(x, dots, caller, kind, build, train_fun,
                           train_args = .formal_train_args(train_fun)) {
  maker <- .model_makers[[kind]]
  nms <- names(dots) %||% rep("", length(dots))
  if (any(!nzchar(nms))) {
    .stop("%s(): arguments in `...` must be named (they are passed to %s and train())",
          caller, maker)
  }
  setup_args <- setdiff(names(formals(build))[-1], c("train", "..."))
  unknown <- setdiff(nms, c(setup_args, train_args))
  if (length(unknown)) {
    .stop("%s(): unknown arguments: %s; `...` takes arguments of %s and train()",
          caller, .enum(unknown, 10L), maker)
  }
  model <- do.call(build, c(list(x), dots[nms %in% setup_args]))
  model <- do.call(train_fun, c(list(model), dots[nms %in% train_args]))
  # The embedding is computed where training ran.
  z <- get_latent_representation(model, device = dots$device %||% "auto")
  list(model = .keep_model(model), latent = z)
}

.formal_train_args <- function(train_fun) {
  c(setdiff(names(formals(train_fun)), c("model", "...")), .progress_alias)
}

# run<KIND>() of a model built by `build` and trained by `train_fun` (.fit_embedding()) on
# the genes `subset_row`: `x` with the latent representation as reducedDim `name`.
.run_embedding <- function(x, dots, kind, build, train_fun, name, subset_row,
                           train_args = .formal_train_args(train_fun)) {
  .check_sce_input(x, kind)
  name <- .check_scalar_string(name, "name")
  genes <- .sce_genes(x, subset_row, dots$layer)
  fit <- .fit_embedding(genes, dots, paste0("run", kind), kind, build, train_fun, train_args)
  SingleCellExperiment::reducedDim(x, name) <- fit$latent
  .store_model(x, name, fit$model)
}

# Run<KIND>() likewise on the genes `features`: `object` with the latent representation as
# the reduction `reduction.name`, of the assay the model read, and the call in its commands.
.Run_embedding <- function(object, dots, kind, build, train_fun, reduction.name,
                           reduction.key, features, train_args = .formal_train_args(train_fun)) {
  .check_seurat_input(object, kind)
  call <- sys.call(-1L)
  reduction.name <- .check_scalar_string(reduction.name, "reduction.name")
  reduction.key <- .check_reduction_key(reduction.key, kind)
  genes <- .seurat_genes(object, features, dots$assay)
  fit <- .fit_embedding(genes, dots, paste0("Run", kind), kind, build, train_fun, train_args)
  assay <- fit$model$registry$setup_args$assay %||% SeuratObject::DefaultAssay(object)
  object <- .add_reduction(object, reduction.name, reduction.key, fit$latent, assay,
                           fit$model)
  .log_command(object, call, paste0("Run", kind), assay, reduction.name,
               c(dots, list(features = features, reduction.name = reduction.name,
                            reduction.key = reduction.key)))
}

# `x` (a SingleCellExperiment) reduced to the genes `subset_row` (NULL: all) of its counts
# assay `layer`: the other assays are dropped first, so that only the counts are copied.
.sce_genes <- function(x, subset_row, layer) {
  if (is.null(subset_row)) return(x)
  rows <- .resolve_rows(subset_row, rownames(x), "subset_row")
  layer <- layer %||% "counts"
  if (layer %in% SummarizedExperiment::assayNames(x)) {
    SummarizedExperiment::assays(x) <- SummarizedExperiment::assays(x)[layer]
  }
  x[rows, ]
}

# `object` (a Seurat object) with its assay `assay` (default: the default assay) reduced to
# the genes `features` (NULL: all); the counts of the other genes are not copied.
.seurat_genes <- function(object, features, assay) {
  if (is.null(features)) return(object)
  assay <- .check_scalar_string(assay %||% SeuratObject::DefaultAssay(object), "assay")
  if (!assay %in% SeuratObject::Assays(object)) {
    .stop("`assay` '%s' is not an assay of `object`; available assays: %s", assay,
          .enum(SeuratObject::Assays(object), 10L))
  }
  counts <- .seurat_counts(object, assay, "object")
  rows <- .resolve_rows(features, rownames(counts), "features")
  object[[assay]] <- SeuratObject::CreateAssayObject(counts = counts[rows, , drop = FALSE])
  object
}

# Gene selection (Bioconductor's subset_row, Seurat's features): gene names, a logical with
# one value per gene, or 1-based positions, as positions into `genes`.
.resolve_rows <- function(rows, genes, arg) {
  if (is.character(rows)) {
    if (!length(rows) || anyNA(rows)) {
      .stop("`%s` must name genes, got %s", arg, .describe(rows))
    }
    unknown <- setdiff(rows, genes)
    if (length(unknown)) {
      .stop("`%s` names %d genes the data do not have: %s", arg, length(unknown),
            .enum(unknown))
    }
    pos <- match(unique(rows), genes)
  } else {
    pos <- unique(.resolve_indices(rows, length(genes), arg) + 1L)
  }
  if (length(pos) < 2L) .stop("`%s` selects %d gene; a model needs at least 2", arg, length(pos))
  pos
}

# `object` with the command `call` of `fun` logged in its commands (as Seurat's own Run*()
# functions do), under "<fun>.<assay>.<reduction>"; `params` keeps the plain values.
.log_command <- function(object, call, fun, assay, reduction, params) {
  plain <- vapply(params, function(v) is.null(v) || (is.atomic(v) && is.null(dim(v))),
                  logical(1))
  name <- paste(fun, assay, reduction, sep = ".")
  object@commands[[name]] <- methods::new(
    "SeuratCommand", name = name, time.stamp = Sys.time(), assay.used = assay,
    call.string = paste(deparse(call), collapse = " "), params = params[plain])
  object
}

#' SCVI embedding for SingleCellExperiment objects
#'
#' Builds an SCVI model on `x` ([scvi()]), trains it ([train()]) and returns its latent
#' representation: `calculateSCVI()` as a cells x `n_latent` matrix, `runSCVI()` stored as
#' `reducedDim(x, name)` (conventions of the scater package), with the model in
#' `metadata(x)$rscvi[[name]]` for other queries (pass `x` to them as new data). The model
#' stored by a wrapper keeps a copy of its weights, so that it works again after
#' `saveRDS()` / `readRDS()` of the object.
#'
#' @param x a `SingleCellExperiment` (`calculateSCVI()` also takes anything [scvi()] takes).
#' @param ... arguments of [scvi()] (e.g. `batch_key`, `n_latent`, `layer`) and of
#'   [train()] (e.g. `max_epochs`, `seed`, `device`), by name.
#' @param subset_row the genes to fit the model on (names, a logical per gene, or positions),
#'   e.g. the highly variable genes from `scran::getTopHVGs()`; `NULL` for all genes. Queries
#'   of the stored model accept the whole object.
#' @param name name of the reduced dimension to store.
#' @return `calculateSCVI()`: a cells x `n_latent` matrix. `runSCVI()`: `x` with the matrix
#'   in `reducedDim(x, name)`.
#' @export
#' @rdname calculateSCVI
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' sce <- rscvi_example_sce()
#' sce <- runSCVI(sce, batch_key = "batch", subset_row = 1:1000, max_epochs = 3, seed = 0)
#' SingleCellExperiment::reducedDimNames(sce)
#' dim(SingleCellExperiment::reducedDim(sce, "SCVI"))
runSCVI <- function(x, ..., subset_row = NULL, name = "SCVI") {
  .run_embedding(x, list(...), "SCVI", scvi, train.SCVI, name, subset_row,
                 train_args = .train_arg_names())
}

# `x` (a SingleCellExperiment) with `model` in metadata(x)$rscvi[[name]].
.store_model <- function(x, name, model) {
  md <- S4Vectors::metadata(x)
  md$rscvi[[name]] <- model
  S4Vectors::metadata(x) <- md
  x
}

#' @rdname calculateSCVI
#' @export
calculateSCVI <- function(x, ..., subset_row = NULL) {
  if (!is.null(subset_row)) {
    if (!methods::is(x, "SingleCellExperiment")) {
      .stop("`subset_row` applies to a SingleCellExperiment; subset the rows of `x` instead")
    }
    x <- .sce_genes(x, subset_row, list(...)$layer)
  }
  .fit_embedding(x, list(...), "calculateSCVI", "SCVI", scvi, train.SCVI,
                 .train_arg_names())$latent
}

#' SCVI embedding for Seurat objects
#'
#' Builds and trains an SCVI model on the raw counts of a Seurat assay and adds its latent
#' representation as a dimensional reduction, for `FindNeighbors()`, `RunUMAP()` and
#' friends. The model itself is kept in the reduction's `misc` slot
#' (`Misc(object[[reduction.name]], "model")`), with a copy of its weights, so that it works
#' again after `saveRDS()` / `readRDS()` of the object (pass the object to its queries as
#' new data). The call is logged in the object's commands, as Seurat's own `Run*()`.
#'
#' @param object a `Seurat` object.
#' @param ... arguments of [scvi()] (e.g. `batch_key` naming a column of the object's
#'   meta data, `assay`, default `DefaultAssay(object)`) and of [train()] (e.g.
#'   `max_epochs`, `seed`), by name.
#' @param features the genes to fit the model on, e.g. `VariableFeatures(object)`; `NULL`
#'   (default) for all genes of the assay. Queries of the stored model accept the whole
#'   object.
#' @param reduction.name name of the reduction to add.
#' @param reduction.key key (column prefix) of the reduction, ending in `"_"`.
#' @return `object` with the reduction added.
#' @export
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' d <- rscvi_example_data()
#' so <- SeuratObject::CreateSeuratObject(d$counts, meta.data = d$cells)
#' so <- RunSCVI(so, batch_key = "batch", features = rownames(so)[1:1000],
#'               max_epochs = 3, seed = 0)
#' head(SeuratObject::Embeddings(so, "scvi")[, 1:3])
RunSCVI <- function(object, ..., features = NULL, reduction.name = "scvi",
                    reduction.key = "SCVI_") {
  .Run_embedding(object, list(...), "SCVI", scvi, train.SCVI, reduction.name, reduction.key,
                 features, train_args = .train_arg_names())
}

# GIMVI: fit on (reference, spatial object) and write the results into the spatial object.
.fit_gimvi <- function(x, reference, dots, caller) {
  nms <- names(dots) %||% rep("", length(dots))
  if (any(!nzchar(nms))) {
    .stop("%s(): arguments in `...` must be named (they are passed to gimvi() and train())",
          caller)
  }
  setup_args <- setdiff(names(formals(gimvi)), c("x_seq", "x_spatial", "train", "..."))
  train_args <- c(setdiff(names(formals(train.GIMVI)), c("model", "...")), .progress_alias)
  unknown <- setdiff(nms, c(setup_args, train_args, "normalized"))
  if (length(unknown)) {
    .stop("%s(): unknown arguments: %s; `...` takes arguments of gimvi() and train()", caller,
          .enum(unknown, 10L))
  }
  normalized <- .check_scalar_bool(dots$normalized %||% TRUE, "normalized")
  model <- do.call(gimvi, c(list(reference, x), dots[nms %in% setup_args]))
  model <- do.call(train.GIMVI, c(list(model), dots[nms %in% train_args]))
  list(model = .keep_model(model), latent = get_latent_representation.GIMVI(model)$spatial,
       imputed = get_imputed_values.GIMVI(model, normalized = normalized)$spatial)
}

#' GIMVI imputation into SingleCellExperiment and Seurat objects
#'
#' Fits a GIMVI model on a spatial object and an scRNA-seq reference ([gimvi()], [train()])
#' and stores the results in the spatial object: the imputed expression of every reference
#' gene (genes x spatial cells) and the joint latent space of the spatial cells.
#' `runGIMVI()` adds an alternative experiment `name` (assay `"imputed"`, the model in its
#' `metadata()`) and `reducedDim(x, name)`; `RunGIMVI()` adds an assay `assay.name` (imputed
#' values in its data layer) and a reduction `reduction.name` (the model in its `misc`).
#'
#' @param x,object the spatial `SingleCellExperiment` / `Seurat` object.
#' @param reference the scRNA-seq reference: anything [gimvi()] takes as `x_seq`.
#' @param ... arguments of [gimvi()] (e.g. `batch_key_spatial`, `layer_seq`) and [train()]
#'   (e.g. `max_epochs`, `seed`), by name, and `normalized` (default `TRUE`: proportions;
#'   `FALSE`: expected counts at each cell's observed panel total) for the imputed values.
#' @param name name of the alternative experiment and of the reduced dimension.
#' @param assay.name,reduction.name,reduction.key names of the Seurat assay and reduction
#'   (the key ends in `"_"`).
#' @return `x` / `object` with the results added.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' d <- rscvi_example_merfish()
#' spatial <- SingleCellExperiment::SingleCellExperiment(
#'   assays = list(counts = d$spatial$counts[1:100, ]))
#' reference <- d$seq$counts[, Matrix::colSums(d$seq$counts) > 0]
#' spatial <- runGIMVI(spatial, reference, max_epochs = 5, seed = 0)
#' SingleCellExperiment::altExp(spatial, "GIMVI")
runGIMVI <- function(x, reference, ..., name = "GIMVI") {
  .check_sce_input(x, "GIMVI")
  name <- .check_scalar_string(name, "name")
  fit <- .fit_gimvi(x, reference, list(...), "runGIMVI")
  imputed <- SummarizedExperiment::SummarizedExperiment(
    assays = list(imputed = t(fit$imputed)), metadata = list(model = fit$model))
  SingleCellExperiment::altExp(x, name) <- imputed
  SingleCellExperiment::reducedDim(x, name) <- fit$latent
  x
}

#' @rdname runGIMVI
#' @export
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' d <- rscvi_example_merfish()
#' so <- SeuratObject::CreateSeuratObject(d$spatial$counts[1:100, ], assay = "MERFISH")
#' reference <- d$seq$counts[, Matrix::colSums(d$seq$counts) > 0]
#' so <- RunGIMVI(so, reference, assay_spatial = "MERFISH", max_epochs = 5, seed = 0)
#' SeuratObject::Assays(so)
RunGIMVI <- function(object, reference, ..., assay.name = "GIMVI", reduction.name = "gimvi",
                     reduction.key = "GIMVI_") {
  .check_seurat_input(object, "GIMVI")
  assay.name <- .check_scalar_string(assay.name, "assay.name")
  reduction.name <- .check_scalar_string(reduction.name, "reduction.name")
  reduction.key <- .check_reduction_key(reduction.key, "GIMVI")
  fit <- .fit_gimvi(object, reference, list(...), "RunGIMVI")
  object[[assay.name]] <- SeuratObject::CreateAssayObject(data = t(fit$imputed))
  .add_reduction(object, reduction.name, reduction.key, fit$latent, assay.name, fit$model)
}

# ---------------------------------------------------------------------------------------------
# Results as assays.

# What add_model_assay() can store: the query (a cells x features result) of each name.
.assay_queries <- c(
  normalized_expression = "get_normalized_expression",
  posterior_predictive_sample = "posterior_predictive_sample",
  normalized_accessibility = "get_normalized_accessibility",
  normalized_splicing = "get_normalized_splicing"
)

#' Store a model's per-cell estimates as an assay of the object
#'
#' Runs a query of a model fitted on `x` (by default the one [runSCVI()] / [RunSCVI()] and
#' the other wrappers stored in it) over the cells of `x` and stores the result as features
#' x cells, where Bioconductor and Seurat users look for it, without transposing by hand.
#'
#' In a `SingleCellExperiment`, the result becomes the assay `name` of `x` when it covers
#' the rows of `x` (e.g. normalized expression of all genes), or of the alternative experiment
#' whose rows it covers (e.g. normalized accessibility of the `"ATAC"` altExp); otherwise
#' (a gene subset, `gene_list`) it is stored in a new altExp `name`. In a `Seurat` object it
#' becomes a new assay `name`, the values in its `data` layer. Posterior predictive samples
#' stay sparse. Normalized values are dense (cells x features doubles): restrict them with
#' `gene_list` / `region_list` on large data.
#'
#' @param x a `SingleCellExperiment` or a `Seurat` object.
#' @param what the query: `"normalized_expression"` ([get_normalized_expression()]),
#'   `"posterior_predictive_sample"` ([posterior_predictive_sample()], SCVI),
#'   `"normalized_accessibility"` ([get_normalized_accessibility()], MULTIVI) or
#'   `"normalized_splicing"` ([get_normalized_splicing()], SPLICEVI).
#' @param ... arguments of that query (e.g. `library_size`, `transform_batch`, `gene_list`,
#'   `n_samples`), by name.
#' @param model the model: `NULL` for the one stored in `x` by a wrapper, the name it was
#'   stored under (`name` of `runSCVI()`, `reduction.name` of `RunSCVI()`), or a model.
#' @param name the name of the assay (default: `what`).
#' @return `x` with the assay added.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' sce <- runSCVI(rscvi_example_sce(), batch_key = "batch", max_epochs = 3, seed = 0)
#' sce <- add_model_assay(sce, "normalized_expression", library_size = 1e4)
#' SummarizedExperiment::assayNames(sce)
add_model_assay <- function(x, what = names(.assay_queries), ..., model = NULL, name = what) {
  is_seurat <- methods::is(x, "Seurat")
  if (!is_seurat && !methods::is(x, "SingleCellExperiment")) {
    .stop("`x` must be a SingleCellExperiment or a Seurat object, got %s", .describe(x))
  }
  what <- .match_choice(what, names(.assay_queries), "what")
  name <- .check_scalar_string(name, "name")
  dots <- list(...)
  if (!is.null(names(dots)) && "x" %in% names(dots)) {
    .stop("`...` holds arguments of the query; the data are `x` itself")
  }
  model <- .stored_model(x, model)
  # The model's own data when it was fitted on these cells, else `x` as new data.
  own <- !is.null(model$data) && !.null_ptr(.model_datasets(model)[[1]]) &&
    identical(model$cell_names, colnames(x))
  query <- .assay_queries[[what]]
  kind <- class(model)[1]
  if (is.null(utils::getS3method(query, kind, optional = TRUE))) {
    has <- names(.assay_queries)[vapply(.assay_queries, function(q) {
      !is.null(utils::getS3method(q, kind, optional = TRUE))
    }, logical(1))]
    .stop("`what` = \"%s\" is not a query of a %s model; it has %s", what, kind,
          if (length(has)) .enum(has) else "none of them")
  }
  values <- do.call(query, c(list(model, x = if (!own) x), dots))
  if (length(dim(values)) != 2L) {
    .stop(paste0("`%s` with these arguments gives one matrix per sample; an assay holds one ",
                 "(use n_samples = 1, or return_mean = TRUE)"), what)
  }
  values <- Matrix::t(values)
  if (is_seurat) return(.add_seurat_assay(x, values, name))
  .add_sce_assay(x, values, name)
}

# The model `model` names in `x` (see add_model_assay()).
.stored_model <- function(x, model) {
  if (inherits(model, "rscvi_model")) return(model)
  stored <- if (methods::is(x, "Seurat")) {
    reds <- SeuratObject::Reductions(x)
    models <- lapply(reds, function(r) SeuratObject::Misc(x[[r]], "model"))
    stats::setNames(models, reds)[!vapply(models, is.null, logical(1))]
  } else {
    S4Vectors::metadata(x)$rscvi %||% list()
  }
  where <- if (methods::is(x, "Seurat")) "reductions" else "metadata(x)$rscvi"
  if (is.null(model)) {
    if (length(stored) == 1L) return(stored[[1]])
    if (!length(stored)) {
      .stop(paste0("`x` holds no model (fit one with the run/Run wrappers, e.g. runSCVI()), ",
                   "or pass one as `model`"))
    }
    .stop("`x` holds %d models (%s); name one with `model`", length(stored),
          .enum(names(stored)))
  }
  model <- .check_scalar_string(model, "model")
  if (is.null(stored[[model]])) {
    .stop("`model` '%s' is not a model stored in `x` (%s: %s)", model, where,
          if (length(stored)) .enum(names(stored)) else "none")
  }
  stored[[model]]
}

# `x` (a SingleCellExperiment) with `values` (features x cells) as assay `name` of `x` or of
# the altExp whose rows they are (in its row order), else of a new altExp `name`.
.add_sce_assay <- function(x, values, name) {
  covers <- function(se) setequal(rownames(se), rownames(values)) && nrow(se) == nrow(values)
  if (covers(x)) {
    SummarizedExperiment::assay(x, name, withDimnames = FALSE) <- values[rownames(x), ,
                                                                          drop = FALSE]
    return(x)
  }
  for (alt in SingleCellExperiment::altExpNames(x)) {
    se <- SingleCellExperiment::altExp(x, alt)
    if (covers(se)) {
      SummarizedExperiment::assay(se, name, withDimnames = FALSE) <- values[rownames(se), ,
                                                                           drop = FALSE]
      SingleCellExperiment::altExp(x, alt) <- se
      return(x)
    }
  }
  SingleCellExperiment::altExp(x, name) <- SummarizedExperiment::SummarizedExperiment(
    assays = stats::setNames(list(values), name))
  x
}

# `x` (a Seurat object) with `values` (features x cells) as the data of a new assay `name`.
.add_seurat_assay <- function(x, values, name) {
  if (methods::is(values, "sparseMatrix")) values <- methods::as(values, "CsparseMatrix")
  assay <- SeuratObject::CreateAssayObject(data = values)
  SeuratObject::Key(assay) <- paste0(gsub("[^A-Za-z0-9]", "", tolower(name)), "_")
  x[[name]] <- assay
  x
}
