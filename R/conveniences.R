# One-call workflows for Bioconductor (scater conventions: calculateX() returns the result,
# runX() stores it in the object) and Seurat (RunX() adds a DimReduc). All three share
# .fit_scvi(): it splits `...` between scvi() and train() by their formal arguments, so the
# parameter lists live only in those two functions. The run/Run functions of the other
# models check their object and store their results with the helpers below.

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
# `train_fun` (the arguments in `dots` go to whichever takes them) and returns the model
# and its latent representation.
.fit_embedding <- function(x, dots, caller, kind, build, train_fun) {
  maker <- .model_makers[[kind]]
  nms <- names(dots) %||% rep("", length(dots))
  if (any(!nzchar(nms))) {
    .stop("%s(): arguments in `...` must be named (they are passed to %s and train())",
          caller, maker)
  }
  setup_args <- setdiff(names(formals(build))[-1], c("train", "..."))
  train_args <- c(setdiff(names(formals(train_fun)), c("model", "...")), .progress_alias)
  unknown <- setdiff(nms, c(setup_args, train_args))
  if (length(unknown)) {
    .stop("%s(): unknown arguments: %s; `...` takes arguments of %s and train()",
          caller, .enum(unknown, 10L), maker)
  }
  model <- do.call(build, c(list(x), dots[nms %in% setup_args]))
  model <- do.call(train_fun, c(list(model), dots[nms %in% train_args]))
  z <- get_latent_representation(model, device = dots$device %||% "auto")
  list(model = .keep_model(model), latent = z)
}

# run<KIND>() of a model built by `build` and trained by `train_fun` (.fit_embedding()):
# `x` with the latent representation as reducedDim `name`.
.run_embedding <- function(x, dots, kind, build, train_fun, name) {
  .check_sce_input(x, kind)
  name <- .check_scalar_string(name, "name")
  fit <- .fit_embedding(x, dots, paste0("run", kind), kind, build, train_fun)
  SingleCellExperiment::reducedDim(x, name) <- fit$latent
  .store_model(x, name, fit$model)
}

# Run<KIND>() likewise: `object` with the latent representation as the reduction
# `reduction.name`, of the assay the model read (or the default assay).
.Run_embedding <- function(object, dots, kind, build, train_fun, reduction.name,
                           reduction.key) {
  .check_seurat_input(object, kind)
  reduction.name <- .check_scalar_string(reduction.name, "reduction.name")
  reduction.key <- .check_reduction_key(reduction.key, kind)
  fit <- .fit_embedding(object, dots, paste0("Run", kind), kind, build, train_fun)
  .add_reduction(object, reduction.name, reduction.key, fit$latent,
                 fit$model$registry$setup_args$assay %||% SeuratObject::DefaultAssay(object),
                 fit$model)
}

.fit_scvi <- function(x, dots, caller) {
  nms <- names(dots) %||% rep("", length(dots))
  if (any(!nzchar(nms))) {
    .stop("%s(): arguments in `...` must be named (they are passed to scvi() and train())",
          caller)
  }
  setup_args <- setdiff(names(formals(scvi)), c("x", "train", "..."))
  train_args <- .train_arg_names()
  unknown <- setdiff(nms, c(setup_args, train_args))
  if (length(unknown)) {
    .stop("%s(): unknown arguments: %s; `...` takes arguments of scvi() and train()", caller,
          .enum(unknown, 10L))
  }
  model <- do.call(scvi, c(list(x), dots[nms %in% setup_args]))
  model <- do.call(train.SCVI, c(list(model), dots[nms %in% train_args]))
  # The embedding is computed where training ran.
  z <- get_latent_representation.SCVI(model, device = dots$device %||% "auto")
  list(model = .keep_model(model), latent = z)
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
#' @param name name of the reduced dimension to store.
#' @return `calculateSCVI()`: a cells x `n_latent` matrix. `runSCVI()`: `x` with the matrix
#'   in `reducedDim(x, name)`.
#' @export
#' @rdname calculateSCVI
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' sce <- rscvi_example_sce()
#' sce <- runSCVI(sce, batch_key = "batch", max_epochs = 3, seed = 0)
#' SingleCellExperiment::reducedDimNames(sce)
#' dim(SingleCellExperiment::reducedDim(sce, "SCVI"))
runSCVI <- function(x, ..., name = "SCVI") {
  if (!methods::is(x, "SingleCellExperiment")) {
    .stop(paste0("`x` must be a SingleCellExperiment for runSCVI(), got %s; use ",
                 "calculateSCVI() for a matrix or RunSCVI() for Seurat"), .describe(x))
  }
  name <- .check_scalar_string(name, "name")
  fit <- .fit_scvi(x, list(...), "runSCVI")
  SingleCellExperiment::reducedDim(x, name) <- fit$latent
  .store_model(x, name, fit$model)
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
calculateSCVI <- function(x, ...) {
  .fit_scvi(x, list(...), "calculateSCVI")$latent
}

#' SCVI embedding for Seurat objects
#'
#' Builds and trains an SCVI model on the raw counts of a Seurat assay and adds its latent
#' representation as a dimensional reduction, for `FindNeighbors()`, `RunUMAP()` and
#' friends. The model itself is kept in the reduction's `misc` slot
#' (`Misc(object[[reduction.name]], "model")`), with a copy of its weights, so that it works
#' again after `saveRDS()` / `readRDS()` of the object (pass the object to its queries as
#' new data).
#'
#' @param object a `Seurat` object.
#' @param ... arguments of [scvi()] (e.g. `batch_key` naming a column of the object's
#'   meta data, `layer` naming the assay, default `"RNA"`) and of [train()] (e.g.
#'   `max_epochs`, `seed`), by name.
#' @param reduction.name name of the reduction to add.
#' @param reduction.key key (column prefix) of the reduction, ending in `"_"`.
#' @return `object` with the reduction added.
#' @export
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' d <- rscvi_example_data()
#' so <- SeuratObject::CreateSeuratObject(d$counts, meta.data = d$cells)
#' so <- RunSCVI(so, batch_key = "batch", max_epochs = 3, seed = 0)
#' head(SeuratObject::Embeddings(so, "scvi")[, 1:3])
RunSCVI <- function(object, ..., reduction.name = "scvi", reduction.key = "SCVI_") {
  .check_seurat_input(object, "SCVI")
  reduction.name <- .check_scalar_string(reduction.name, "reduction.name")
  reduction.key <- .check_reduction_key(reduction.key, "SCVI")
  fit <- .fit_scvi(object, list(...), "RunSCVI")
  .add_reduction(object, reduction.name, reduction.key, fit$latent, fit$model$input$layer,
                 fit$model)
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
#' so <- RunGIMVI(so, reference, layer_spatial = "MERFISH", max_epochs = 5, seed = 0)
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
