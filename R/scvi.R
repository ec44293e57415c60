# The SCVI model object: construction (scvi()), training (train()), save/load, and the
# internal plumbing every query shares (handles, data pointers, registration of new data).
# No model math here: everything numeric happens in the Rust core behind the bridge.

# ---------------------------------------------------------------------------------------------
# Internal helpers.

# Bridge errors carry the bridge call (".Call(wrap__...)") as their call; users should see
# only the message.
.rs <- function(expr) {
  tryCatch(expr, error = function(e) stop(conditionMessage(e), call. = FALSE))
}

# An external pointer whose address is NULL: what saveRDS()/readRDS() or a restored workspace
# leaves of a handle. identical() compares external pointers by address.
.null_ptr <- function(p) !inherits(p, "externalptr") || identical(p, methods::new("externalptr"))

.lost_handle <- function(arg) {
  .stop(paste0("`%s` is no longer usable: its Rust model handle was lost (objects restored ",
               "with readRDS(), load() or a saved workspace keep only the R part); save ",
               "models with save_model() and restore them with load_model()"), arg)
}

.check_model <- function(model, arg = "model") .check_kind(model, "SCVI", arg)

# match.arg() with rscvi's messages: the full default vector means "first choice", anything
# else must be exactly one of the choices (no partial matching).
.match_choice <- function(x, choices, arg) {
  if (identical(x, choices)) return(choices[[1]])
  .check_choice(x, choices, arg)
}

.check_device <- function(device) {
  device <- .match_choice(device, c("auto", "cpu", "cuda"), "device")
  if (device == "cuda") {
    info <- rs_device_info()
    if (!isTRUE(info$cuda_compiled)) {
      .stop(paste0("`device` = \"cuda\" is not available: this rscvi was built without CUDA ",
                   "support (reinstall with RSCVI_FEATURES=cuda), use \"auto\" or \"cpu\""))
    }
    if (!isTRUE(info$cuda_driver)) {
      .stop(paste0("`device` = \"cuda\" is not available: no NVIDIA driver was found ",
                   "(libcuda.so.1); use \"auto\" or \"cpu\""))
    }
  }
  device
}

# Seeds are u32 in the core (numpy's legacy RandomState takes 0..2^32-1), wider than R ints.
.check_seed <- function(seed) {
  if (is.null(seed)) return(NULL)
  ok <- is.numeric(seed) && length(seed) == 1L && !is.na(seed) && is.finite(seed) &&
    seed == round(seed) && seed >= 0 && seed <= 4294967295
  if (!ok) {
    .stop("`seed` must be NULL or a single whole number between 0 and 4294967295, got %s",
          .describe(seed))
  }
  as.double(seed)
}

# Accepted count inputs: what .as_count_input() takes, plus list(counts, cells) as returned
# by rscvi_example_data(). With `file_ok` (SCVI's training and queries) counts may stay in a
# file: the path of an .h5ad file, or a SingleCellExperiment whose assay is an HDF5Array
# matrix over one (see .backed_file()).
.input_from <- function(x, cells = NULL, layer = NULL, assay = NULL, arg = "x",
                        source_args = .source_args, file_ok = FALSE) {
  if (file_ok && .is_h5ad_path(x)) {
    return(.h5ad_input(x, cells = cells, layer = layer, assay = assay, arg = arg,
                       source_args = source_args))
  }
  if (is.list(x) && !is.data.frame(x) && !is.object(x) && "counts" %in% names(x)) {
    if (!is.null(cells)) {
      .stop("`cells` must be NULL when `%s` is a list with `counts` and `cells`", arg)
    }
    return(.as_count_input(x$counts, cells = x$cells, layer = layer, assay = assay, arg = arg,
                           source_args = source_args))
  }
  .as_count_input(x, cells = cells, layer = layer, assay = assay, arg = arg,
                  source_args = source_args, file_ok = file_ok)
}

# The core re-checks the data (a file's counts in one streaming pass); its complaints are
# about `x`.
.new_dataset <- function(f, arg = "x") {
  fields <- list(as.integer(f$batch), as.integer(f$registry$n_batch),
                 as.integer(f$labels), as.integer(f$registry$n_labels),
                 as.integer(f$cat_covs), as.integer(unname(f$cat_sizes)),
                 as.double(f$cont_covs), f$size_factor)
  tryCatch(if (is.null(f$counts$path)) {
    do.call(rs_dataset_new, c(list(f$counts$blocks), fields))
  } else {
    do.call(rs_dataset_from_file, c(list(f$counts$path, f$counts$group,
                                         as.integer(f$counts$n_cells),
                                         as.integer(f$counts$n_genes)), fields))
  }, error = function(e) .stop("`%s`: %s", arg, conditionMessage(e)))
}

.config_to_json <- function(config) {
  config$n_cats_per_cov <- I(as.integer(config$n_cats_per_cov))
  as.character(jsonlite::toJSON(config, auto_unbox = TRUE, null = "null", digits = NA))
}

.config_from_json <- function(json) {
  cfg <- jsonlite::fromJSON(json, simplifyVector = TRUE)
  cfg$n_cats_per_cov <- as.integer(unlist(cfg$n_cats_per_cov))
  cfg
}

.input_class <- function(x) {
  if (.is_h5ad_path(x)) return("h5ad file")
  if (is.list(x) && !is.object(x) && "counts" %in% names(x)) class(x$counts)[1] else class(x)[1]
}

.input_summary <- function(input, n_genes) {
  list(n_cells = length(input$cell_names), n_genes = n_genes, layer = input$layer,
       assay = input$assay)
}

.new_scvi <- function(ptr, data, registry, config, cell_names, cell_data, input, dir = NULL) {
  structure(list(
    model = ptr,            # Rust model (parameters, training state, registry)
    data = data,            # Rust data set the model was built or loaded with, or NULL
    registry = registry,    # R copy of the registry (genes, categories, setup arguments)
    config = config,        # hyperparameters as sent to the core
    gene_names = registry$gene_names,
    cell_names = cell_names,
    cell_data = cell_data,
    input = input,          # class / layer / dimensions of the data, for print()
    dir = dir               # where a loaded model came from
  ), class = c("SCVI", "rscvi_model"))
}

# Register `x` against the model's registry (same genes in the same order, known
# categories) for a query. Returns list(data, cell_names, cell_data, layer, assay).
.register_query <- function(model, x, cells = NULL, layer = NULL, assay = NULL, arg = "x") {
  .register_against(x, model$registry, cells = cells, layer = layer, assay = assay, arg = arg,
                    file_ok = TRUE)
}

# Register new data against a fitted model's `registry`. Warnings about genes without counts
# or rare categories matter for training, not for applying a fitted model to a few cells.
.register_against <- function(x, registry, cells = NULL, layer = NULL, assay = NULL,
                              arg = "x", file_ok = FALSE) {
  if (is.null(layer) && is.null(assay)) {
    like <- .source_like(x, registry$setup_args)
    layer <- like$layer
    assay <- like$assay
  }
  input <- withCallingHandlers(.input_from(x, cells = cells, layer = layer, assay = assay,
                                           arg = arg, file_ok = file_ok),
                               warning = .muffle("genes with no counts"))
  f <- withCallingHandlers(.register_fields(input, registry = registry),
                           warning = .muffle("fewer than 3 cells"))
  list(data = .new_dataset(f, arg), cell_names = input$cell_names, cell_data = input$cell_data,
       layer = input$layer, assay = input$assay)
}

# Where to read new data `x` from: the SingleCellExperiment assay (`layer`) or Seurat assay
# (`assay`) the model was set up with (`setup_args`), if `x` has one of that name; otherwise
# the default. Models saved before `assay` existed named the Seurat assay `layer`.
.source_like <- function(x, setup_args) {
  has <- function(name, names) !is.null(name) && name %in% names
  if (methods::is(x, "SummarizedExperiment")) {
    layer <- setup_args$layer
    return(list(layer = if (has(layer, SummarizedExperiment::assayNames(x))) layer,
                assay = NULL))
  }
  if (methods::is(x, "Seurat")) {
    assay <- setup_args$assay %||% setup_args$layer
    return(list(layer = NULL, assay = if (has(assay, SeuratObject::Assays(x))) assay))
  }
  list(layer = NULL, assay = NULL)
}

# The data a query runs on: the model's own, or `x` registered against the model. Shared
# queries written for SCVI (ELBO terms, differential expression) also serve MULTIVI and
# SPLICEVI, whose data are registered their own way.
.query_data <- function(model, x, arg = "x") {
  .warn_untrained(model)
  if (inherits(model, "MULTIVI")) return(.multivi_query_data(model, x, arg))
  if (inherits(model, "SPLICEVI")) return(.splicevi_query_data(model, x, arg))
  .check_model(model)
  if (is.null(x)) {
    if (is.null(model$data) || .null_ptr(model$data)) {
      .stop(paste0("this model has no data attached (it was loaded with load_model() without ",
                   "`x`): pass the data as `%s`, e.g. get_latent_representation(model, x = sce)"),
            arg)
    }
    return(list(data = model$data, cell_names = model$cell_names))
  }
  .register_query(model, x, arg = arg)
}

# Training state with the split of the model's cells as `train`, `validation`, `test`.
.state <- function(model) {
  st <- .model_state(model)
  c(st[c("is_trained", "config", "registry")], st$splits[[1]])
}

# ---------------------------------------------------------------------------------------------
# Construction.

#' Set up and build an SCVI model
#'
#' Registers the counts and cell annotations of `x` (as scvi-tools' `setup_anndata()` does)
#' and builds an untrained SCVI model (Lopez et al. 2018) with scvi-tools' default
#' hyperparameters. Train it with [train()], or pass `train = TRUE`.
#'
#' Categories of `batch_key`, `labels_key` and `categorical_covariate_keys` are taken in
#' sorted order (a factor's levels in level order); the registry of the model keeps that
#' mapping, so new data given to a query must carry the same genes (same order) and only
#' known categories.
#'
#' The returned object is a list holding handles to the Rust model and data; [train()]
#' returns a trained copy and leaves it as it was. It cannot be kept with `saveRDS()`: use
#' [save_model()] and [load_model()].
#'
#' @section Training from a file:
#' When `x` is the path of an `.h5ad` file, only its `obs` (the cell data, for the `*_key`
#' arguments) and the cell and gene names are read into R; the counts (`X`, or the layer
#' `layer`, stored sparse by cells as AnnData stores counts) stay in the file. One streaming
#' pass checks them and computes each cell's library size; each epoch then reads the cells in
#' shuffled blocks of 256 neighbouring cells, a window of about 8 million nonzeros at a
#' time, shuffled within the window, with the next window read by a second thread while the
#' current one trains. Memory is bounded by the window and the model, not by the file.
#' Queries on the model's data ([get_latent_representation()], [get_normalized_expression()],
#' [differential_expression()], ...) stream the same way, and any of them also takes another
#' `.h5ad` file with the model's genes as `x`. Importance-weighted queries (`weights =
#' "importance"`) need the counts in memory. The second thread reads the file's bytes itself
#' when its arrays are stored uncompressed (AnnData's default); compressed ones are read
#' between minibatches instead. A file changed in place while a model reads it is an error
#' (a file replaced under the same name is read as it was when opened).
#'
#' A `SingleCellExperiment` whose assay `layer` is an HDF5Array matrix reading straight from
#' such a file (`HDF5Array::H5ADMatrix()` of a matrix stored by cells, or
#' `HDF5Array::TENxMatrix()` of a CellRanger file), not subset or transformed, is streamed
#' the same way, its cell data taken from the object. Any other delayed matrix is read into
#' memory.
#'
#' @param x the counts: a `SingleCellExperiment` (assay `layer`, default `"counts"`), a
#'   `Seurat` object (the raw counts of assay `assay`, default `DefaultAssay(x)`), a genes x cells
#'   `dgCMatrix`, other `Matrix` or base matrix of raw counts (cell annotations in `cells`),
#'   a list with elements `counts` and `cells` (as from [rscvi_example_data()]), or the path
#'   of an `.h5ad` file whose counts stay in the file (see "Training from a file").
#' @param cells for matrix input: a data.frame with one row per cell (column order of `x`)
#'   holding the columns named by the `*_key` arguments.
#' @param layer the assay of a `SingleCellExperiment` holding the counts; for an `.h5ad`
#'   file, the layer holding them (default `NULL`: `X`).
#' @param assay the assay of a `Seurat` object whose `counts` to use.
#' @param batch_key column with the batch of each cell, or `NULL` (one batch).
#' @param labels_key column with cell labels (used only by `dispersion = "gene-label"`), or
#'   `NULL`.
#' @param size_factor_key column with a positive size factor per cell; when given, the
#'   library size is that factor (and `use_observed_lib_size` is forced to `TRUE`).
#' @param categorical_covariate_keys columns of extra categorical covariates (injected into
#'   the decoder, and the encoder when `encode_covariates = TRUE`).
#' @param continuous_covariate_keys columns of numeric covariates.
#' @param n_hidden nodes per hidden layer.
#' @param n_latent dimension of the latent space.
#' @param n_layers hidden layers of the encoder and decoder.
#' @param dropout_rate dropout rate of the encoders, in \[0, 1).
#' @param dispersion `"gene"` (one per gene), `"gene-batch"`, `"gene-label"` or `"gene-cell"`.
#' @param gene_likelihood `"zinb"` (zero-inflated negative binomial), `"nb"`, `"poisson"`,
#'   or `"normal"` (Normal with mean \eqn{\mu} and standard deviation the exponentiated
#'   dispersion parameter; experimental, as in scvi-tools, and not a count model: its
#'   posterior predictive samples are continuous).
#' @param batch_representation how the networks see the batch: `"one-hot"` columns at every
#'   layer, or a learned `"embedding"` of 5 numbers per batch appended to the decoder's input
#'   (and the encoders' with `encode_covariates`); see [get_batch_representation()].
#' @param latent_distribution `"normal"` or `"ln"` (logistic normal).
#' @param use_observed_lib_size use each cell's observed total count as its library size
#'   (`FALSE` learns a latent library size with a per-batch log-normal prior).
#' @param encode_covariates whether the encoder also sees batch and covariates.
#' @param deeply_inject_covariates whether covariates are fed to every hidden layer.
#' @param use_batch_norm,use_layer_norm where batch / layer normalisation is used: `"none"`,
#'   `"encoder"`, `"decoder"` or `"both"`.
#' @param train if `TRUE`, train the model right away with `train(model, ...)`.
#' @param ... with `train = TRUE`: arguments of [train()].
#' @return An object of class `SCVI`.
#' @seealso [train()], [get_latent_representation()], [runSCVI()], [RunSCVI()].
#' @references Lopez R, Regier J, Cole MB, Jordan MI, Yosef N (2018). Deep generative
#'   modeling for single-cell transcriptomics. Nature Methods 15, 1053-1058.
#'   \doi{10.1038/s41592-018-0229-2}
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' sce <- rscvi_example_sce()
#' model <- scvi(sce, batch_key = "batch", n_latent = 5)
#' model
#' # or set up and train in one go (a real fit uses the default number of epochs)
#' model <- scvi(sce, batch_key = "batch", train = TRUE, max_epochs = 3, seed = 1)
#' dim(get_latent_representation(model))
scvi <- function(x, cells = NULL, layer = NULL, assay = NULL, batch_key = NULL,
                 labels_key = NULL,
                 size_factor_key = NULL, categorical_covariate_keys = NULL,
                 continuous_covariate_keys = NULL,
                 n_hidden = 128L, n_latent = 10L, n_layers = 1L, dropout_rate = 0.1,
                 dispersion = c("gene", "gene-batch", "gene-label", "gene-cell"),
                 gene_likelihood = c("zinb", "nb", "poisson", "normal"),
                 latent_distribution = c("normal", "ln"),
                 use_observed_lib_size = TRUE, encode_covariates = FALSE,
                 deeply_inject_covariates = TRUE,
                 use_batch_norm = c("both", "encoder", "decoder", "none"),
                 use_layer_norm = c("none", "encoder", "decoder", "both"),
                 batch_representation = c("one-hot", "embedding"),
                 train = FALSE, ...) {
  # Cheap argument checks first, so a typo fails before the data are converted.
  norms <- c("none", "encoder", "decoder", "both")
  hp <- list(
    n_hidden = .check_scalar_int(n_hidden, "n_hidden", min = 1),
    n_latent = .check_scalar_int(n_latent, "n_latent", min = 1),
    n_layers = .check_scalar_int(n_layers, "n_layers", min = 1),
    dropout_rate = .check_dropout(dropout_rate),
    dispersion = .match_choice(dispersion, c("gene", "gene-batch", "gene-label", "gene-cell"),
                               "dispersion"),
    gene_likelihood = .match_choice(gene_likelihood, c("zinb", "nb", "poisson", "normal"),
                                    "gene_likelihood"),
    latent_distribution = .match_choice(latent_distribution, c("normal", "ln"),
                                        "latent_distribution"),
    use_observed_lib_size = .check_scalar_bool(use_observed_lib_size, "use_observed_lib_size"),
    log_variational = TRUE,
    encode_covariates = .check_scalar_bool(encode_covariates, "encode_covariates"),
    deeply_inject_covariates = .check_scalar_bool(deeply_inject_covariates,
                                                  "deeply_inject_covariates"),
    use_batch_norm = .match_choice(use_batch_norm, c("both", "encoder", "decoder", "none"),
                                   "use_batch_norm"),
    use_layer_norm = .match_choice(use_layer_norm, norms, "use_layer_norm"),
    var_eps = 1e-4,
    batch_representation = .match_choice(batch_representation, c("one-hot", "embedding"),
                                         "batch_representation")
  )
  do_train <- .check_scalar_bool(train, "train")
  dots <- list(...)
  .check_constructor_dots(dots, do_train, "scvi")
  if (do_train) .check_train_dots(dots, "scvi")

  input <- .input_from(x, cells = cells, layer = layer, assay = assay, arg = "x", file_ok = TRUE)
  f <- .register_fields(input, batch_key = batch_key, labels_key = labels_key,
                        size_factor_key = size_factor_key,
                        categorical_covariate_keys = categorical_covariate_keys,
                        continuous_covariate_keys = continuous_covariate_keys)
  if (hp$dispersion == "gene-label" && is.null(f$registry$setup_args$labels_key)) {
    .warn("`dispersion` = \"gene-label\" without `labels_key`: all cells share one label")
  }
  data <- .new_dataset(f)
  has_sf <- !is.null(f$size_factor)
  config <- c(
    list(n_input = f$counts$n_genes, n_batch = f$registry$n_batch,
         n_labels = f$registry$n_labels, n_cats_per_cov = as.integer(unname(f$cat_sizes)),
         n_continuous_cov = ncol(f$cont_covs), use_size_factor = has_sf),
    hp
  )
  # scvi-tools: a registered size factor always means the observed library.
  config$use_observed_lib_size <- config$use_observed_lib_size || has_sf
  ptr <- .rs(rs_scvi_new(data, .config_to_json(config), .registry_to_json(f$registry)))
  input_info <- c(list(class = .input_class(x)), .input_summary(input, f$counts$n_genes))
  model <- .new_scvi(ptr, data, f$registry, config, input$cell_names, input$cell_data,
                     input_info)
  if (do_train) model <- train.SCVI(model, ...)
  model
}

.check_dropout <- function(x) {
  ok <- is.numeric(x) && length(x) == 1L && !is.na(x) && is.finite(x) && x >= 0 && x < 1
  if (!ok) .stop("`dropout_rate` must be a single number in [0, 1), got %s", .describe(x))
  as.double(x)
}

# Names of `...` arguments for messages ("<unnamed argument 2>" for unnamed ones); `keep`
# selects which to show.
.dots_names <- function(dots, keep = rep(TRUE, length(dots))) {
  nms <- names(dots) %||% rep("", length(dots))
  nms[!nzchar(nms)] <- sprintf("<unnamed argument %d>", which(!nzchar(nms)))
  .enum(nms[keep], 10L, quote = FALSE)
}

# ---------------------------------------------------------------------------------------------
# Training.

#' Train a model
#'
#' Fits the model by stochastic gradient descent on the negative ELBO, with scvi-tools'
#' defaults: Adam with learning rate 1e-3, `eps` 0.01 and weight decay 1e-6, minibatches of
#' 128 cells, a KL warm-up over 400 epochs, and a 90% / 10% train / validation split.
#'
#' `train()` trains a copy of the model and returns it, as R functions do: after
#' `m2 <- train(m)`, `m` is unchanged. Calling `train()` on a trained model continues from
#' its parameters (the history continues). Pressing Ctrl-C (Esc in RStudio) stops after the
#' current minibatch; the returned model is usable with the parameters of the last completed
#' epoch. A non-finite loss is an error and the
#' model keeps the parameters of the last finite epoch.
#'
#' With a `seed`, the train / validation split is the one scvi-tools draws with
#' `scvi.settings.seed = seed` (NumPy's legacy permutation), and the minibatch order and
#' sampling noise are reproducible on the CPU.
#'
#' @param model an `SCVI` or `GIMVI` model.
#' @param max_epochs number of passes over the training cells; `NULL` uses scvi-tools'
#'   heuristic `min(round(20000 / n_cells * 400), 400)`.
#' @param train_size fraction of cells to train on, in (0, 1]; `NULL` = 0.9 (then a last
#'   minibatch of 1 or 2 cells is moved to the validation set).
#' @param validation_size fraction of cells for validation; `NULL` = all cells not used for
#'   training.
#' @param shuffle_set_split whether to draw the split at random (otherwise cells are taken in
#'   order: validation first).
#' @param batch_size minibatch size (>= 2).
#' @param early_stopping stop when `early_stopping_monitor` has not improved by more than
#'   `early_stopping_min_delta` for `early_stopping_patience` epochs.
#' @param early_stopping_patience,early_stopping_min_delta see `early_stopping`.
#' @param early_stopping_monitor one of `"elbo_validation"`,
#'   `"reconstruction_loss_validation"`, `"validation_loss"`, `"elbo_train"`,
#'   `"reconstruction_loss_train"`, `"train_loss"`.
#' @param lr learning rate.
#' @param weight_decay weight decay (Adam: L2 penalty added to the gradient; AdamW: decoupled).
#' @param eps Adam's epsilon (scvi-tools uses 0.01, not PyTorch's 1e-8).
#' @param optimizer `"Adam"` or `"AdamW"`.
#' @param n_epochs_kl_warmup epochs over which the KL weight grows linearly from 0 to 1;
#'   `NULL` or 0 to use `n_steps_kl_warmup` instead.
#' @param n_steps_kl_warmup optimizer steps of KL warm-up (used only when
#'   `n_epochs_kl_warmup` is `NULL` or 0); `NULL` or 0 = no warm-up.
#' @param seed `NULL` (random) or a whole number in 0..4294967295 for a reproducible split
#'   and minibatch order.
#' @param device `"auto"` (CUDA when available, else CPU), `"cpu"` or `"cuda"`.
#' @param devices data-parallel training: the number of workers, one per device, each with
#'   a copy of the model (on the CPU they share the cores; with `device = "cuda"`, GPUs
#'   `0..devices-1`). Every minibatch of `batch_size` cells is split between them and their
#'   gradients are added up before each step, so the model takes the steps one worker would
#'   take (each part has its own batch-norm statistics); the split, the minibatch order and
#'   each worker's random draws come from `seed`; the validation loss, and with it early
#'   stopping, covers all validation cells. Needs counts in memory (not streamed from a
#'   file) and at least 2 cells per worker in a minibatch. One worker (the default) trains
#'   as before.
#' @param progress report progress (epoch, elapsed time, ETA, ELBO): interactively a line
#'   redrawn in place, under `Rscript` and in batch jobs a new line every 5% of the epochs.
#'   Default: the option `rscvi.progress` if set (e.g. `options(rscvi.progress = FALSE)`),
#'   else on, except while knitting. `verbose = FALSE` is accepted as well. Ctrl-C stops
#'   training at the end of a step: interactively the model keeps the parameters reached; in
#'   a script the interrupt also stops the script.
#' @param plan_kwargs SCVI: the training-plan options as one named list, as scvi-tools takes
#'   them (`plan_kwargs = list(lr = 1e-3, reduce_lr_on_plateau = TRUE)`); each entry acts as
#'   the argument of that name, which must then not be given separately.
#' @param ... for `SCVI` models, advanced options: `min_kl_weight` (0), `max_kl_weight` (1),
#'   `check_val_every_n_epoch` (1: the validation ELBO is recorded every epoch; 0 = never),
#'   `gradient_clip_val` (Lightning's trainer option as scvi-tools passes it on: clip the
#'   norm of all gradients together to this value before each step; 0 or `NULL` = none).
#' @return The trained model, a new object: the model passed in is left as it was (as
#'   everywhere in R, `m2 <- train(m)` does not change `m`; the copy costs one set of
#'   weights, the size of a saved `model.mpk`).
#' @seealso [history()], [plot.SCVI()] for the training curves.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- scvi(rscvi_example_sce(), batch_key = "batch")
#' model <- train(model, max_epochs = 3, seed = 0)
#' history(model)[, c("epoch", "elbo_train", "elbo_validation")]
train <- function(model, ...) UseMethod("train")

# train() options that are not formal arguments of train.SCVI (rarely changed).
.train_extra_args <- c("min_kl_weight", "max_kl_weight", "check_val_every_n_epoch",
                       "gradient_clip_val")

# What scvi-tools' TrainingPlan takes through `plan_kwargs`.
.plan_arg_names <- c("lr", "weight_decay", "eps", "optimizer", "n_epochs_kl_warmup",
                     "n_steps_kl_warmup", "reduce_lr_on_plateau", "lr_factor", "lr_patience",
                     "lr_threshold", "lr_min", "lr_scheduler_metric", "min_kl_weight",
                     "max_kl_weight")

.train_arg_names <- function() {
  c(setdiff(names(formals(train.SCVI)), c("model", "...")), .train_extra_args, .progress_alias)
}

# Arguments meant for train(), checked by name before any work is done.
.check_train_dots <- function(dots, caller) {
  nms <- names(dots) %||% rep("", length(dots))
  if (any(!nzchar(nms))) {
    .stop("%s(): arguments passed on to train() must be named", caller)
  }
  unknown <- setdiff(nms, .train_arg_names())
  if (length(unknown)) {
    .stop("%s(): unknown training arguments: %s; train() takes %s", caller,
          .enum(unknown, 10L), .enum(.train_arg_names(), 30L))
  }
  invisible(TRUE)
}

# train_size / validation_size as scvi-tools' DataSplitter accepts them.
.check_split_sizes <- function(train_size, validation_size) {
  train_size <- .check_scalar_num(train_size, "train_size", min = 0, max = 1, min_open = TRUE,
                                  null_ok = TRUE)
  validation_size <- .check_scalar_num(validation_size, "validation_size", min = 0, max = 1,
                                       null_ok = TRUE)
  if (!is.null(validation_size) &&
      (validation_size >= 1 || (train_size %||% 0.9) + validation_size > 1)) {
    .stop("`validation_size` must be in [0, 1) with train_size + validation_size <= 1, got %s",
          validation_size)
  }
  list(train_size = train_size, validation_size = validation_size)
}

.message_interrupted <- function(res) {
  message(sprintf(paste0("Training interrupted after %d of %d epochs (stopped at the end of ",
                         "a step); the model keeps the parameters reached and can be used ",
                         "or trained further."), res$epochs_run, res$max_epochs))
}

#' @rdname train
#' @export
train.SCVI <- function(model, max_epochs = NULL, train_size = NULL, validation_size = NULL,
                       shuffle_set_split = TRUE, batch_size = 128L, early_stopping = FALSE,
                       early_stopping_patience = 45L,
                       early_stopping_monitor = "elbo_validation",
                       early_stopping_min_delta = 0, lr = 1e-3, weight_decay = 1e-6,
                       eps = 0.01, optimizer = c("Adam", "AdamW"), n_epochs_kl_warmup = 400L,
                       n_steps_kl_warmup = NULL, reduce_lr_on_plateau = FALSE, lr_factor = 0.6,
                       lr_patience = 30L, lr_threshold = 0, lr_min = 0,
                       lr_scheduler_metric = "elbo_validation", plan_kwargs = NULL,
                       seed = NULL, device = c("auto", "cpu", "cuda"), devices = 1L,
                       progress = .progress_default(), ...) {
  .check_model(model)
  if (!is.null(plan_kwargs)) {
    named <- is.list(plan_kwargs) && !is.null(names(plan_kwargs)) &&
      all(nzchar(names(plan_kwargs)))
    if (!named) {
      .stop("`plan_kwargs` must be a named list of training-plan options, e.g. list(lr = 1e-3)")
    }
    unknown <- setdiff(names(plan_kwargs), .plan_arg_names)
    if (length(unknown)) {
      .stop("`plan_kwargs` has entries that are not training-plan options: %s; allowed: %s",
            .enum(unknown), .enum(.plan_arg_names, 20L))
    }
    both <- intersect(names(match.call())[-1], names(plan_kwargs))
    if (length(both)) .stop("%s given both as arguments and in `plan_kwargs`", .enum(both))
    args <- c(mget(setdiff(names(formals()), c("...", "plan_kwargs"))), list(...))
    args[names(plan_kwargs)] <- plan_kwargs
    return(do.call(train.SCVI, args))
  }
  extra <- .train_dots(list(...))
  nms <- names(extra) %||% rep("", length(extra))
  known <- nzchar(nms) & nms %in% .train_extra_args
  if (!all(known)) {
    .stop("train() got unknown arguments: %s; see ?train for the accepted ones",
          .dots_names(extra, !known))
  }
  min_kl <- .check_scalar_num(extra$min_kl_weight %||% 0, "min_kl_weight", min = 0)
  max_kl <- .check_scalar_num(extra$max_kl_weight %||% 1, "max_kl_weight", min = 0)
  if (min_kl > max_kl) {
    .stop("`min_kl_weight` (%s) must not exceed `max_kl_weight` (%s)", min_kl, max_kl)
  }
  cfg <- c(
    .train_config(max_epochs, train_size, validation_size, shuffle_set_split, batch_size, lr,
                  weight_decay, eps, n_epochs_kl_warmup, n_steps_kl_warmup,
                  extra$check_val_every_n_epoch %||% 1L, seed),
    .early_stopping_config(early_stopping, early_stopping_monitor, early_stopping_patience,
                           early_stopping_min_delta),
    list(optimizer = .match_choice(optimizer, c("Adam", "AdamW"), "optimizer"),
         min_kl_weight = min_kl, max_kl_weight = max_kl)
  )
  clip <- .check_scalar_num(extra$gradient_clip_val %||% 0, "gradient_clip_val", min = 0)
  if (clip > 0) cfg$gradient_clipping_max_norm <- clip
  cfg$lr_scheduler <- .lr_schedule_config(cfg, "plateau", reduce_lr_on_plateau, lr_factor,
                                          lr_patience, lr_threshold, lr_min,
                                          lr_scheduler_metric, NULL)
  .train_model(model, cfg, .check_device(device), .progress_mode(progress, list(...)),
               devices)
}

# ---------------------------------------------------------------------------------------------
# Save / load.

#' Save a model to a folder, and load it back
#'
#' `save_model()` writes the model's parameters (`model.mpk`) and a JSON description
#' (`model.json`: hyperparameters, registry with genes and categories, training history and
#' split) into `dir`. `load_model()` restores it. Data are not saved: pass them to
#' `load_model()` as `x` (registered against the saved genes and categories), or give `x` to
#' each query.
#'
#' `load_model()` also reads SCVI, MULTIVI (RNA + ATAC, proteins) and GIMVI models saved by
#' scvi-tools' `model.save()` (a folder with `model.pt`; checked with scvi-tools 1.3.3, 1.4.3
#' and 1.5.1), without Python: the weights under their scvi-tools names, the
#' hyperparameters, the registry (features, batch, label and covariate categories in their
#' order, setup arguments; AnnData's X is the assay `"X"` of [read_h5ad()] / [read_h5mu()]
#' objects) and the train/validation split; not the training history. Such a model answers
#' every query of a native one, can be saved natively, and serves as the reference of
#' [load_query_data()] to map new cells onto a published atlas. When `x` is not given, the
#' data saved with it
#' (`adata.h5ad` / `mdata.h5mu` / GIMVI's `adata_seq.h5ad` and `adata_spatial.h5ad`, with
#' `save_anndata=True`) are read, as scvi-tools' `load()` does.
#'
#' @param model an `SCVI`, `GIMVI`, `MULTIVI` or `SPLICEVI` model.
#' @param dir a folder (created if needed).
#' @param overwrite replace a model already saved in `dir`.
#' @param format `"rscvi"` (default) or `"scvi-tools"`: an SCVI, GIMVI or MULTIVI model
#'   written as scvi-tools' `model.save()` writes it (`model.pt`, the layout of scvi-tools
#'   1.5.1, which 1.3.3 and 1.4.3 read too), for `scvi.model.SCVI.load(dir, adata)`,
#'   `scvi.external.GIMVI.load(dir, adata_seq, adata_spatial)` or
#'   `scvi.model.MULTIVI.load(dir, mdata)` in Python (the data need the model's features and
#'   setup columns; a MULTIVI's MuData its modalities named `rna`, `atac` (or the altExp of
#'   the setup) and `protein`; the training history is not written).
#' @param x optional data to attach, as for [scvi()] (for a GIMVI model a
#'   `list(seq = , spatial = )` of both datasets; for a MULTIVI model
#'   `list(rna = , atac = , cells = )` or a SingleCellExperiment / Seurat object laid out as
#'   for [multivi()]; for a SPLICEVI model `list(expression = , junctions = , atse = ,
#'   cells = )` or an object laid out as for [splicevi()]): it must hold the model's genes
#'   (and regions or junctions, with the same events) in the model's order and only known
#'   batch / label / covariate categories.
#' @param ... for `load_model()`: `cells`, `layer` and `assay`, as for [scvi()], describing `x` (SCVI
#'   only).
#' @return `save_model()`: `dir`, invisibly. `load_model()`: an `SCVI`, `GIMVI`, `MULTIVI`
#'   or `SPLICEVI` model (whichever was saved).
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' sce <- rscvi_example_sce()
#' model <- train(scvi(sce, batch_key = "batch"), max_epochs = 2, seed = 0)
#' dir <- file.path(tempdir(), "scvi-example")
#' save_model(model, dir, overwrite = TRUE)
#' again <- load_model(dir, x = sce)
#' all.equal(get_latent_representation(model), get_latent_representation(again))
save_model <- function(model, ...) UseMethod("save_model")

#' @rdname save_model
#' @export
load_model <- function(dir, x = NULL, ...) {
  dir <- .check_scalar_string(dir, "dir")
  if (!dir.exists(dir)) .stop("`dir` '%s' does not exist", dir)
  native <- file.exists(file.path(dir, "model.json"))
  if (!native && !file.exists(file.path(dir, "model.pt"))) {
    .stop(paste0("`dir` '%s' holds no saved model (no model.json, nor scvi-tools' model.pt); ",
                 "save one with save_model()"), dir)
  }
  kind <- .rs(rs_saved_model_kind(path.expand(dir)))
  if (!native) {
    if (!kind %in% c("SCVI", "MULTIVI", "GIMVI")) {
      .stop(paste0("`dir` '%s' holds a %s model saved by scvi-tools; rscvi reads scvi-tools' ",
                   "SCVI, MULTIVI and GIMVI models so far"), dir, kind)
    }
    # scvi-tools' load() takes the data saved with the model when none are given.
    saved_data <- file.path(dir, switch(kind, SCVI = "adata.h5ad", MULTIVI = "mdata.h5mu",
                                        GIMVI = c("adata_seq.h5ad", "adata_spatial.h5ad")))
    if (is.null(x) && all(file.exists(saved_data))) {
      x <- switch(kind, SCVI = read_h5ad(saved_data), MULTIVI = read_h5mu(saved_data),
                  GIMVI = list(seq = read_h5ad(saved_data[1]),
                               spatial = read_h5ad(saved_data[2])))
    }
  }
  if (kind == "MULTIVI") return(.load_multivi(dir, x, ...))
  if (kind == "SPLICEVI") return(.load_splicevi(dir, x, ...))
  dots <- list(...)
  known <- (names(dots) %||% rep("", length(dots))) %in% c("cells", "layer", "assay")
  if (!all(known)) {
    .stop("load_model() got unknown arguments: %s; it takes `cells`, `layer` and `assay` for `x`",
          .dots_names(dots, !known))
  }
  if (kind == "GIMVI") {
    if (length(dots)) .stop("load_model(): `cells`, `layer` and `assay` do not apply to a GIMVI model")
    return(.load_gimvi(dir, x))
  }
  ptr <- .rs(rs_model_load(path.expand(dir)))
  st <- .rs(rs_model_state(ptr))
  registry <- tryCatch(.registry_from_json(st$registry), error = function(e) {
    .stop("`dir` '%s': the saved registry is not readable (%s)", dir, conditionMessage(e))
  })
  config <- .config_from_json(st$config)
  if (length(registry$gene_names) != config$n_input) {
    .stop("`dir` '%s': the saved registry lists %d genes but the model has %d inputs", dir,
          length(registry$gene_names), config$n_input)
  }
  input_info <- list(class = NA_character_, n_cells = registry$n_cells,
                     n_genes = config$n_input, layer = registry$setup_args$layer,
                     assay = registry$setup_args$assay)
  model <- .new_scvi(ptr, NULL, registry, config, NULL, NULL, input_info,
                     dir = normalizePath(dir))
  if (!is.null(x)) {
    q <- .register_query(model, x, cells = dots$cells, layer = dots$layer, assay = dots$assay)
    model$data <- q$data
    model$cell_names <- q$cell_names
    model$cell_data <- q$cell_data
    model$input <- list(class = .input_class(x), n_cells = length(q$cell_names),
                        n_genes = config$n_input, layer = q$layer, assay = q$assay)
  } else {
    model <- .load_minified(model, dir)
  }
  model
}

# ---------------------------------------------------------------------------------------------
# Minified models.

#' Minify a model: keep each cell's latent posterior instead of its counts
#'
#' The R analogue of scvi-tools' `minify_adata()` (`"latent_posterior_parameters"`): returns a
#' copy of `model` whose data are each cell's posterior \eqn{q(z \mid x)} (means and
#' variances from the encoder), observed library size, batch and covariates, without the
#' count matrix. Queries that need only \eqn{z} run as before, drawing \eqn{z} from the
#' stored posterior: [get_latent_representation()], [get_normalized_expression()],
#' [differential_expression()] (uniform weights), [posterior_predictive_sample()],
#' [get_likelihood_parameters()], [get_feature_correlation_matrix()]. What needs the counts
#' ([train()], [get_elbo()], [get_reconstruction_error()], [get_marginal_ll()], importance
#' weights) says so; pass the counts as `x` there. [save_model()] keeps the posterior with
#' the model, so [load_model()] gives a model ready for those queries without any data.
#' As in scvi-tools, a model with a learned library size (`use_observed_lib_size = FALSE`)
#' uses the observed library once minified.
#'
#' @inheritParams get_latent_representation
#' @return A minified copy of `model` (`model` itself is unchanged).
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- train(scvi(rscvi_example_sce(), batch_key = "batch"), max_epochs = 3, seed = 0)
#' small <- minify_adata(model)
#' small
#' dim(get_normalized_expression(small, indices = 1:5))
minify_adata <- function(model, ...) UseMethod("minify_adata")

#' @rdname minify_adata
#' @export
minify_adata.SCVI <- function(model, batch_size = 128L, device = "auto", ...) {
  .no_dots(list(...), "minify_adata", "SCVI")
  batch_size <- .check_batch_size(batch_size)
  device <- .check_device(device)
  if (is.null(model$data) || .null_ptr(model$data)) {
    .stop(paste0("`model` has no data attached (it was loaded with load_model() without ",
                 "`x`): load it with its data first"))
  }
  model$data <- .rs(rs_scvi_minify(model$model, model$data, batch_size, device))
  model$saved <- NULL
  model
}

.is_minified <- function(model) {
  !is.null(model$data) && inherits(model$data, "externalptr") && !.null_ptr(model$data) &&
    isTRUE(.rs(rs_dataset_is_minified(model$data)))
}

# A minified model's posterior and its cells' names and data go with the saved model (and a
# stale posterior from an earlier save into the same folder goes away).
.save_minified <- function(model, dir) {
  files <- file.path(dir, c("minified.mpk", "minified-cells.rds"))
  if (!.is_minified(model)) {
    unlink(files)
    return(invisible(dir))
  }
  .rs(rs_minified_save(model$data, path.expand(dir)))
  saveRDS(list(cell_names = model$cell_names, cell_data = model$cell_data), files[2])
  invisible(dir)
}

# `model` (loaded from `dir` without data) with the minified data saved with it, if any.
.load_minified <- function(model, dir) {
  data <- .rs(rs_minified_load(path.expand(dir)))
  if (is.null(data)) return(model)
  cells <- tryCatch(readRDS(file.path(dir, "minified-cells.rds")), error = function(e) {
    .stop("`dir` '%s': the minified model's cells are not readable (%s)", dir,
          conditionMessage(e))
  })
  n <- .rs(rs_dataset_n_cells(data))
  if (!is.character(cells$cell_names) || length(cells$cell_names) != n) {
    .stop("`dir` '%s': the minified model's cell names do not match its %d cells", dir, n)
  }
  model$data <- data
  model$cell_names <- cells$cell_names
  model$cell_data <- cells$cell_data
  model$input$n_cells <- n
  model
}
