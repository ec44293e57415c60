# What every model of the family shares in R. A model object is a list of class
# c("<KIND>", "rscvi_model") holding the Rust handle (`model`), its data handle(s) (`data`:
# one handle, or a named list of one per dataset) and R copies of its registry and config.
# The methods below serve every kind through the bridge's shared entry points
# (rs_model_train/history/state/save); each model's own file adds only what is its own.

# The kinds and how users build them, for messages.
.model_makers <- c(SCVI = "scvi()", GIMVI = "gimvi()", MULTIVI = "multivi()",
                   SPLICEVI = "splicevi()")

.check_kind <- function(model, kind, arg = "model") {
  if (!inherits(model, kind)) {
    article <- if (grepl("^[AEFHILMNORSX]", kind)) "an" else "a"
    .stop("`%s` must be %s %s model (from %s or load_model()), got %s", arg, article, kind,
          .model_makers[[kind]], .describe(model))
  }
  .revive(model, arg)
  invisible(model)
}

# A model that carries its saved bytes (`saved`: the files of save_model(), by name), so
# that it survives saveRDS() / readRDS() inside the objects the wrappers put it in: its
# handle is revived from them on first use (.revive()). Costs one copy of the weights in R.
.keep_model <- function(model) {
  dir <- tempfile("rscvi-model-")
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  .rs(rs_model_save(model$model, dir, FALSE))
  files <- list.files(dir)
  model$saved <- stats::setNames(lapply(file.path(dir, files), function(f) {
    readBin(f, "raw", file.size(f))
  }), files)
  model
}

# The model's Rust handle, revived in place from its saved bytes when readRDS() (or a
# restored workspace) left it empty; without saved bytes, an error naming `arg`.
.revive <- function(model, arg) {
  if (!.null_ptr(model$model)) return(invisible(TRUE))
  if (is.null(model$saved)) .lost_handle(arg)
  dir <- tempfile("rscvi-model-")
  dir.create(dir)
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  for (f in names(model$saved)) writeBin(model$saved[[f]], file.path(dir, f))
  .rs(rs_model_restore(model$model, dir))
  invisible(TRUE)
}

# The model's data handles in its dataset order (NULL entries when detached).
.model_datasets <- function(model) {
  if (inherits(model$data, "externalptr")) list(model$data) else unname(as.list(model$data))
}

# Queries of a model that was never trained answer from its random initial weights: say so
# (scvi-tools warns the same way).
.warn_untrained <- function(model) {
  if (inherits(model, "rscvi_model") && !.null_ptr(model$model) &&
      !isTRUE(.rs(rs_model_is_trained(model$model)))) {
    .warn(paste0("the model has not been trained: its outputs come from random initial ",
                 "weights; call train(model) first"))
  }
  invisible(TRUE)
}

# Training state: is_trained, config and registry (JSON), and the split of every dataset
# (1-based cells), named as the model's datasets are.
.model_state <- function(model) {
  st <- .rs(rs_model_state(model$model))
  parts <- names(model$data) %||% .dataset_names(model)
  empty <- list(train = integer(), validation = integer(), test = integer())
  splits <- lapply(seq_along(parts), function(i) {
    if (i <= length(st$splits)) st$splits[[i]] else empty
  })
  st$splits <- stats::setNames(splits, parts)
  st
}

# Any model of the family (for the shared methods).
.check_any_model <- function(model, arg = "model") {
  if (!inherits(model, "rscvi_model")) {
    .stop("`%s` must be an rscvi model (%s, or load_model()), got %s", arg,
          paste(names(.model_makers), "from", .model_makers, collapse = ", "),
          .describe(model))
  }
  .revive(model, arg)
  invisible(model)
}

# Dataset names of a model (one unnamed dataset for single-dataset models, MULTIVI's
# included: its modalities are columns of one dataset).
.dataset_names <- function(model) if (inherits(model, "GIMVI")) .gimvi_parts else "cells"

# The train() options every model shares, checked, under the names of the core's TrainConfig.
.train_config <- function(max_epochs, train_size, validation_size, shuffle_set_split,
                          batch_size, lr, weight_decay, eps, n_epochs_kl_warmup,
                          n_steps_kl_warmup, check_val_every_n_epoch, seed) {
  sizes <- .check_split_sizes(train_size, validation_size)
  list(
    max_epochs = .check_scalar_int(max_epochs, "max_epochs", min = 1, null_ok = TRUE),
    train_size = sizes$train_size,
    validation_size = sizes$validation_size,
    shuffle_set_split = .check_scalar_bool(shuffle_set_split, "shuffle_set_split"),
    batch_size = .check_scalar_int(batch_size, "batch_size", min = 2),
    lr = .check_scalar_num(lr, "lr", min = 0, min_open = TRUE),
    weight_decay = .check_scalar_num(weight_decay, "weight_decay", min = 0),
    eps = .check_scalar_num(eps, "eps", min = 0, min_open = TRUE),
    n_epochs_kl_warmup = .check_scalar_int(n_epochs_kl_warmup, "n_epochs_kl_warmup", min = 0,
                                           null_ok = TRUE),
    n_steps_kl_warmup = .check_scalar_int(n_steps_kl_warmup, "n_steps_kl_warmup", min = 0,
                                          null_ok = TRUE),
    check_val_every_n_epoch = .check_scalar_int(check_val_every_n_epoch,
                                                "check_val_every_n_epoch", min = 0),
    seed = .check_seed(seed)
  )
}

.early_stopping_monitors <- c("elbo_validation", "reconstruction_loss_validation",
                              "validation_loss", "elbo_train", "reconstruction_loss_train",
                              "train_loss")

# The early-stopping options of train(), checked.
.early_stopping_config <- function(early_stopping, monitor, patience, min_delta) {
  list(
    early_stopping = .check_scalar_bool(early_stopping, "early_stopping"),
    early_stopping_monitor = .check_choice(monitor, .early_stopping_monitors,
                                           "early_stopping_monitor"),
    early_stopping_patience = .check_scalar_int(patience, "early_stopping_patience", min = 1),
    early_stopping_min_delta = .check_scalar_num(min_delta, "early_stopping_min_delta",
                                                 min = 0)
  )
}

# train()'s default `progress`: the option rscvi.progress, else on except while knitting.
.progress_default <- function() {
  getOption("rscvi.progress", !isTRUE(getOption("knitr.in.progress")))
}

# train()'s other name for `progress` (in `...`), read by .progress_mode().
.progress_alias <- "verbose"

# train()'s `...` without the progress alias.
.train_dots <- function(dots) {
  dots[(names(dots) %||% rep("", length(dots))) != .progress_alias]
}

# How training reports progress: train()'s `progress` (.progress_default()), or `verbose` in
# `...` (the name other packages give it). Interactively a
# bar redrawn in place; under Rscript and in batch jobs a line every 5% of the epochs, which
# logs keep; or nothing.
.progress_mode <- function(progress, dots) {
  arg <- "progress"
  if (.progress_alias %in% names(dots)) {
    progress <- dots[[.progress_alias]]
    arg <- .progress_alias
  }
  if (!.check_scalar_bool(progress, arg)) return("none")
  if (.interactive_session()) "bar" else "lines"
}

# interactive(), which the option rscvi.interactive overrides (for tests of both behaviours
# in child processes).
.interactive_session <- function() getOption("rscvi.interactive", interactive())

# Runs the shared training entry point with the checked train() options `cfg`, reporting
# progress as `progress` says (.progress_mode()). A Ctrl-C keeps the model reached
# interactively; in a script it stops the script, as R users expect.
.train_model <- function(model, cfg, device, progress, devices = 1L) {
  cfg$devices <- .check_scalar_int(devices, "devices", min = 1, max = 256)
  datasets <- .model_datasets(model)
  if (is.null(model$data) || any(vapply(datasets, .null_ptr, logical(1)))) {
    hint <- if (length(datasets) > 1) {
      sprintf("x = list(%s)", paste0(names(model$data) %||% .dataset_names(model), " = ...",
                                    collapse = ", "))
    } else {
      "x = <data>"
    }
    .stop(paste0("`model` has no training data attached (it was loaded without `x`); ",
                 "load it with load_model(dir, %s) to train it further"), hint)
  }
  if (inherits(model, "SCVI") && .is_minified(model)) {
    .stop(paste0("`model` is minified (its data are each cell's latent posterior, no counts): ",
                 "train the model it was minified from, or one loaded with its counts ",
                 "(load_model(dir, x = <counts>))"))
  }
  # One cell gives batch normalisation nothing to normalise and minibatches nothing to
  # average (scvi-tools fails inside torch); refuse it here, naming the data.
  n_cells <- if (is.list(model$cell_names)) lengths(model$cell_names) else length(model$cell_names)
  if (any(n_cells < 2L)) {
    .stop("training needs at least 2 cells in each dataset; the model's data have %s",
          paste(n_cells, collapse = " and "))
  }
  json <- as.character(jsonlite::toJSON(cfg, auto_unbox = TRUE, null = "null", digits = NA))
  # R's copy semantics: train a copy, so `m2 <- train(m)` leaves `m` as it was (the copy
  # costs one set of weights).
  model$model <- .rs(rs_model_copy(model$model))
  res <- .rs(rs_model_train(model$model, datasets, json, device, progress))
  if (isTRUE(res$interrupted)) {
    if (!.interactive_session()) {
      .stop("training interrupted (Ctrl-C) after %d of %d epochs", res$epochs_run,
            res$max_epochs)
    }
    .message_interrupted(res)
  } else if (isTRUE(res$early_stopped)) {
    message(sprintf(paste0("Early stopping: %s did not improve for %d epochs; stopped ",
                           "after %d of %d epochs."),
                    cfg$early_stopping_monitor, cfg$early_stopping_patience, res$epochs_run,
                    res$max_epochs))
  }
  model$last_training <- res
  model
}

# The train() options of the models that train with AdamW and stop early by default
# (MULTIVI, SPLICEVI), checked as far as they share them (`dots`: train()'s `...` for a model
# of kind `kind`): validation every epoch when early stopping is on (never by default
# otherwise), and no adversarial classifier (weight 0) without `adversarial_mixing`, with a
# warning when it was asked for (`asked_mixing`) and there is only one batch.
.adamw_train_config <- function(model, kind, dots, max_epochs, lr, train_size,
                                validation_size, shuffle_set_split, batch_size, weight_decay,
                                eps, early_stopping, early_stopping_patience,
                                early_stopping_monitor, early_stopping_min_delta,
                                check_val_every_n_epoch, n_epochs_kl_warmup,
                                n_steps_kl_warmup, adversarial_mixing, asked_mixing, seed) {
  if (length(dots)) {
    hint <- if ("optimizer" %in% names(dots)) {
      sprintf(" (%s always trains with AdamW)", kind)
    } else ""
    .stop("train() got unknown arguments for a %s model: %s%s; see ?train", kind,
          .dots_names(dots), hint)
  }
  early_stopping <- .check_scalar_bool(early_stopping, "early_stopping")
  adversarial_mixing <- .check_scalar_bool(adversarial_mixing, "adversarial_mixing")
  if (adversarial_mixing && model$registry$n_batch < 2L && asked_mixing) {
    .warn("`adversarial_mixing` needs more than one batch: training without the batch classifier")
  }
  check_val <- check_val_every_n_epoch %||% (if (early_stopping) 1L else 0L)
  cfg <- c(
    .train_config(.check_scalar_int(max_epochs, "max_epochs", min = 1), train_size,
                  validation_size, shuffle_set_split, batch_size, lr, weight_decay, eps,
                  n_epochs_kl_warmup, n_steps_kl_warmup, check_val, seed),
    .early_stopping_config(early_stopping, early_stopping_monitor, early_stopping_patience,
                           early_stopping_min_delta),
    list(optimizer = "AdamW")
  )
  if (early_stopping && cfg$check_val_every_n_epoch == 0L &&
      grepl("validation", cfg$early_stopping_monitor)) {
    .stop(paste0("`check_val_every_n_epoch` = 0 never validates, but early stopping monitors ",
                 "\"%s\""), cfg$early_stopping_monitor)
  }
  # The classifier's weight: the model's default (1) with mixing, none without.
  if (!adversarial_mixing) cfg$kappa <- 0
  cfg
}

# The learning-rate schedule of train() (NULL: constant): StepLR when `type` is "step",
# ReduceLROnPlateau when it is "plateau" and `reduce_lr_on_plateau`; `cfg` is the checked
# training config (a validation metric needs validation epochs).
.lr_schedule_config <- function(cfg, type, reduce_lr_on_plateau, lr_factor, lr_patience,
                                lr_threshold, lr_min, lr_scheduler_metric, step_size) {
  type <- .match_choice(type, c("plateau", "step"), "lr_scheduler_type")
  reduce <- .check_scalar_bool(reduce_lr_on_plateau, "reduce_lr_on_plateau")
  factor <- .check_scalar_num(lr_factor, "lr_factor", min = 0, min_open = TRUE)
  if (factor >= 1) .stop("`lr_factor` must be below 1, got %s", format(factor))
  if (type == "step") {
    return(list(type = "step", gamma = factor,
                step_size = .check_scalar_int(step_size, "step_size", min = 1)))
  }
  if (!reduce) return(NULL)
  metric <- .check_choice(lr_scheduler_metric, .early_stopping_monitors, "lr_scheduler_metric")
  if (grepl("validation", metric) && cfg$check_val_every_n_epoch == 0L) {
    .stop(paste0("`reduce_lr_on_plateau` monitors \"%s\", but `check_val_every_n_epoch` = 0 ",
                 "never validates"), metric)
  }
  list(type = "plateau", factor = factor,
       patience = .check_scalar_int(lr_patience, "lr_patience", min = 0),
       threshold = .check_scalar_num(lr_threshold, "lr_threshold", min = 0),
       min_lr = .check_scalar_num(lr_min, "lr_min", min = 0), metric = metric)
}

# `...` of a constructor (`caller`) holds arguments of train(), used only with `do_train`.
.check_constructor_dots <- function(dots, do_train, caller) {
  if (length(dots) && !do_train) {
    .stop(paste0("%s() got arguments it does not use: %s; training arguments apply only ",
                 "with train = TRUE (or call train(model, ...))"), caller, .dots_names(dots))
  }
  invisible(TRUE)
}

# `...` of a query method `fun` must be empty; `kind` names the model in the message.
.no_dots <- function(dots, fun, kind = NULL) {
  if (length(dots)) {
    .stop("%s() got unknown arguments%s: %s", fun,
          if (is.null(kind)) "" else sprintf(" for a %s model", kind), .dots_names(dots))
  }
  invisible(TRUE)
}

# Arguments that a constructor (`caller`) passes on to `train_fun`, the train() method of
# `kind`, checked by name before any work is done.
.check_kind_train_dots <- function(dots, caller, train_fun, kind) {
  nms <- names(dots) %||% rep("", length(dots))
  if (any(!nzchar(nms))) .stop("%s(): arguments passed on to train() must be named", caller)
  known <- c(setdiff(names(formals(train_fun)), c("model", "...")), .progress_alias)
  unknown <- setdiff(nms, known)
  if (length(unknown)) {
    .stop("%s(): unknown training arguments: %s; train() of a %s model takes %s", caller,
          .enum(unknown, 10L), kind, .enum(known, 30L))
  }
  invisible(TRUE)
}

# print()'s first line; FALSE (after saying so) when the Rust handle is gone for good.
.print_title <- function(x, kind) {
  cat(sprintf("%s model (rscvi)\n", kind))
  if (!.null_ptr(x$model)) return(TRUE)
  revived <- !is.null(x$saved) && isTRUE(tryCatch(.revive(x, "x"), error = function(e) FALSE))
  if (revived) return(TRUE)
  cat("  <Rust model handle lost (restored with readRDS()?): use save_model()/load_model()>\n")
  FALSE
}

#' @rdname history
#' @export
history.rscvi_model <- function(model, ...) {
  .no_dots(list(...), "history")
  .check_any_model(model)
  .history_frame(.rs(rs_model_history(model$model)))
}

# The split's `part` ("train", "validation" or "test") of every dataset: a vector for a model of one
# dataset, a named list of vectors otherwise.
.split_indices <- function(model, part) {
  .check_any_model(model)
  splits <- .model_state(model)$splits
  idx <- lapply(splits, function(s) as.integer(s[[part]]))
  if (length(idx) == 1) idx[[1]] else idx
}

#' @rdname train_indices
#' @return GIMVI: a list with `seq` and `spatial` index vectors.
#' @export
train_indices.rscvi_model <- function(model, ...) {
  .no_dots(list(...), "train_indices")
  .split_indices(model, "train")
}

#' @rdname train_indices
#' @export
validation_indices.rscvi_model <- function(model, ...) {
  .no_dots(list(...), "validation_indices")
  .split_indices(model, "validation")
}

#' @rdname train_indices
#' @export
test_indices.rscvi_model <- function(model, ...) {
  .no_dots(list(...), "test_indices")
  .split_indices(model, "test")
}

#' The device of a model
#'
#' scvi-tools' `model.device`. rscvi keeps a model's weights in main memory between calls
#' and moves them to the GPU for the work asked to run there (`device = "cuda"` or `"auto"`
#' with a GPU); this says where the weights are and where the model's last [train()] call
#' in this session ran.
#'
#' @param model a model.
#' @param ... unused.
#' @return A list: `weights` ("cpu") and `trained_on` ("cpu", "cuda", or `NA` when the model
#'   has not been trained in this session, e.g. after [load_model()]).
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- train(scvi(rscvi_example_sce(), batch_key = "batch"), max_epochs = 2, seed = 0)
#' model_device(model)
model_device <- function(model, ...) UseMethod("model_device")

#' @rdname model_device
#' @export
model_device.rscvi_model <- function(model, ...) {
  .no_dots(list(...), "model_device")
  .check_any_model(model)
  list(weights = "cpu", trained_on = model$last_training$device %||% NA_character_)
}

#' @rdname train_indices
#' @export
is_trained.rscvi_model <- function(model, ...) {
  .no_dots(list(...), "is_trained")
  .check_any_model(model)
  .rs(rs_model_is_trained(model$model))
}

#' @rdname save_model
#' @export
save_model.rscvi_model <- function(model, dir, overwrite = FALSE, format = c("rscvi", "scvi-tools"),
                                   ...) {
  .no_dots(list(...), "save_model")
  .check_any_model(model)
  dir <- .check_scalar_string(dir, "dir")
  overwrite <- .check_scalar_bool(overwrite, "overwrite")
  format <- .match_choice(format, c("rscvi", "scvi-tools"), "format")
  if (file.exists(dir) && !dir.exists(dir)) .stop("`dir` '%s' is a file, not a folder", dir)
  if (format == "scvi-tools") {
    if (!inherits(model, c("SCVI", "GIMVI", "MULTIVI"))) {
      .stop("`format` = \"scvi-tools\" is available for SCVI, GIMVI and MULTIVI models, not %s",
            class(model)[1])
    }
    .rs(rs_model_save_scvi_tools(model$model, path.expand(dir), overwrite))
    return(invisible(dir))
  }
  .rs(rs_model_save(model$model, path.expand(dir), overwrite))
  .save_minified(model, dir)
  invisible(dir)
}
