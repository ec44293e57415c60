# Downstream queries (scvi.md section 8), training history and split, and print / summary /
# plot of SCVI models. Each query resolves its data (the model's own, or `x` registered
# against the model), calls one bridge function and labels the result.

.check_batch_size <- function(batch_size) .check_scalar_int(batch_size, "batch_size", min = 1)

# A positive number, or "latent" for the cell's own library; NaN (not NA, which the bridge's
# f64 refuses) asks the core for the latent library.
.check_library_size <- function(library_size) {
  if (identical(library_size, "latent")) return(NaN)
  ok <- is.numeric(library_size) && length(library_size) == 1L && !is.na(library_size) &&
    is.finite(library_size) && library_size > 0
  if (!ok) {
    .stop("`library_size` must be a single positive number or \"latent\", got %s",
          .describe(library_size))
  }
  as.double(library_size)
}

# Cell selection on the query data: 0-based indices for the bridge and the cells' names.
.query_cells <- function(q, indices) {
  idx <- .resolve_indices(indices, length(q$cell_names), "indices", q$cell_names)
  list(idx = idx, names = q$cell_names[idx + 1L])
}

#' Latent representation of cells
#'
#' The posterior of each cell's latent vector \eqn{z} under the encoder \eqn{q(z \mid x)}:
#' its mean (the usual embedding for neighbours, clustering and UMAP), one posterior sample,
#' or the mean and variance of the posterior.
#'
#' @param model an `SCVI` model.
#' @param x optional new data (as for [scvi()]) to embed with this model: it must have the
#'   model's genes in the model's order and only known categories. Default: the model's data.
#' @param give_mean `TRUE` for the posterior mean (for `latent_distribution = "ln"`, a
#'   Monte Carlo mean of the softmax over `mc_samples` draws); `FALSE` for one sample.
#' @param return_dist return the posterior mean and variance of \eqn{z} instead.
#' @param indices cells to use (1-based positions, cell names or a logical vector); `NULL` =
#'   all.
#' @param mc_samples Monte Carlo samples for `give_mean` with `latent_distribution = "ln"`.
#' @param batch_size cells per minibatch.
#' @param device `"auto"`, `"cpu"` or `"cuda"`.
#' @param ... unused.
#' @return A cells x `n_latent` matrix with row names = cell names and column names
#'   `SCVI_1`, `SCVI_2`, ...; with `return_dist = TRUE` a list with matrices `mean` and `var`.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- train(scvi(rscvi_example_sce(), batch_key = "batch"), max_epochs = 3, seed = 0)
#' z <- get_latent_representation(model)
#' head(z)
#' str(get_latent_representation(model, return_dist = TRUE, indices = 1:5))
get_latent_representation <- function(model, ...) UseMethod("get_latent_representation")

#' @rdname get_latent_representation
#' @export
get_latent_representation.SCVI <- function(model, x = NULL, give_mean = TRUE,
                                           return_dist = FALSE, indices = NULL,
                                           mc_samples = 5000L, batch_size = 128L,
                                           device = "auto", ...) {
  .no_dots(list(...), "get_latent_representation", "SCVI")
  give_mean <- .check_scalar_bool(give_mean, "give_mean")
  return_dist <- .check_scalar_bool(return_dist, "return_dist")
  mc_samples <- .check_scalar_int(mc_samples, "mc_samples", min = 1)
  batch_size <- .check_batch_size(batch_size)
  device <- .check_device(device)
  q <- .query_data(model, x)
  cells <- .query_cells(q, indices)
  res <- .rs(rs_model_latent(model$model, 0L, q$data, cells$idx, give_mean || return_dist,
                             mc_samples, batch_size, device))
  .label_latent(res, cells$names, "SCVI", return_dist)
}

# The bridge's latent representation labelled: cells (`cell_names`) x dimensions
# `<prefix>_1`, ...; with `return_dist` the posterior's `mean` and `var` (the untransformed
# Gaussian q(z|x), also for the "ln" latent: scvi.md §8.1).
.label_latent <- function(res, cell_names, prefix, return_dist) {
  dn <- list(cell_names, paste0(prefix, "_", seq_len(ncol(res$z))))
  if (return_dist) {
    dimnames(res$mean) <- dn
    dimnames(res$var) <- dn
    return(list(mean = res$mean, var = res$var))
  }
  z <- res$z
  dimnames(z) <- dn
  z
}

#' Normalized expression
#'
#' The decoder's expected expression \eqn{\rho} for each cell (a fraction of the cell's
#' counts per gene, summing to 1 over all genes) scaled by `library_size`, averaged over
#' `n_samples` posterior draws of \eqn{z}. With `transform_batch`, the decoder is run as if
#' the cells came from that batch (several batches are averaged): batch-corrected
#' expression.
#'
#' @inheritParams get_latent_representation
#' @param library_size a positive number to scale \eqn{\rho} by (1: fractions, 1e4: counts per
#'   10k), or `"latent"` for the expected counts \eqn{\mu} with each cell's own library size.
#' @param n_samples posterior draws of \eqn{z} to average (1 = one random draw, as in
#'   scvi-tools).
#' @param transform_batch `NULL` (each cell's own batch) or batch category names of the
#'   model's `batch_key` to decode with; several names are averaged.
#' @param gene_list `NULL` (all genes) or names of the model's genes to return (returned in
#'   the model's gene order).
#' @param n_samples_overall if given, return this many rows drawn with replacement from the
#'   `n_samples_overall / n_cells + 1` posterior draws of every selected cell (the sampler of
#'   differential expression); rows are then not cells.
#' @param weights with `n_samples_overall`: `"uniform"` draws every posterior draw with the
#'   same probability; `"importance"` weights each draw \eqn{z} by how well it explains the
#'   selected cells as a group, \eqn{p(z) \sum_a p(x_a|z)/p(x_a)} over up to `max_cells`
#'   anchor cells \eqn{a}, divided by the mixture of their posteriors it was drawn from
#'   (scvi-tools' importance-weighted sampler). Needs a single `transform_batch`.
#' @param importance_weighting_kwargs with `weights = "importance"`, a named list of:
#'   `max_cells` (anchor cells, default 1024), `truncation` (raise weights below their mean
#'   to the mean, default `FALSE`), `n_mc_samples` (samples of each anchor's marginal
#'   likelihood, default 500); `n_mc_samples_per_pass` is accepted for scvi-tools
#'   compatibility and does not change the result (rscvi sizes its passes itself).
#' @param return_mean with `n_samples > 1`, `FALSE` returns all draws as an array
#'   (draws x cells x genes) instead of their mean.
#' @param file `NULL`, or the path of a new `.h5ad` file to write the result into instead of
#'   returning it (X = cells x genes, float32; `obs` and `var` name them), computed and
#'   written a block of cells at a time: the result of an atlas never has to fit in memory.
#'   Read it back with [read_h5ad()] or `HDF5Array::HDF5Array(file, "X")`.
#' @param overwrite with `file`, replace an existing file.
#' @return A cells x genes matrix with dimnames (with `file`: the path, invisibly).
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- train(scvi(rscvi_example_sce(), batch_key = "batch"), max_epochs = 3, seed = 0)
#' rho <- get_normalized_expression(model, library_size = 1e4, indices = 1:10)
#' rho[1:3, 1:4]
#' # batch-corrected: decode every cell as if it came from one batch
#' corrected <- get_normalized_expression(model, transform_batch = "Dropseq_3cl",
#'                                        indices = 1:10)
#' # 200 rows resampled from the posterior draws of 20 cells with importance weights
#' rows <- get_normalized_expression(model, indices = 1:20, n_samples_overall = 200,
#'                                   weights = "importance",
#'                                   importance_weighting_kwargs = list(n_mc_samples = 100))
get_normalized_expression <- function(model, ...) UseMethod("get_normalized_expression")

#' @rdname get_normalized_expression
#' @export
get_normalized_expression.SCVI <- function(model, x = NULL, library_size = 1, n_samples = 1L,
                                           transform_batch = NULL, gene_list = NULL,
                                           indices = NULL, batch_size = 128L,
                                           device = "auto", n_samples_overall = NULL,
                                           return_mean = TRUE,
                                           weights = c("uniform", "importance"),
                                           importance_weighting_kwargs = NULL, file = NULL,
                                           overwrite = FALSE, ...) {
  .no_dots(list(...), "get_normalized_expression", "SCVI")
  .check_model(model)
  weights <- .match_choice(weights, c("uniform", "importance"), "weights")
  importance_json <- .importance_json(weights, importance_weighting_kwargs)
  if (weights == "importance" && is.null(n_samples_overall)) {
    .stop("`weights` = \"importance\" weights the draws of `n_samples_overall`; give it too")
  }
  .normalized_expression(model, x, library_size, n_samples, transform_batch, gene_list,
                         indices, batch_size, device, n_samples_overall, return_mean,
                         importance_json, file, overwrite)
}

# Normalized expression of any model with an expression head (SCVI; MULTIVI and SPLICEVI,
# decoded from the joint latent, without the sampler's options); its data come from
# .query_data(). `importance_json`: .importance_json().
.normalized_expression <- function(model, x, library_size, n_samples, transform_batch,
                                   gene_list, indices, batch_size, device,
                                   n_samples_overall = NULL, return_mean = TRUE,
                                   importance_json = "", file = NULL, overwrite = FALSE) {
  lib <- .check_library_size(library_size)
  n_samples <- .check_scalar_int(n_samples, "n_samples", min = 1)
  batch_size <- .check_batch_size(batch_size)
  device <- .check_device(device)
  tb <- .transform_batch_codes(transform_batch, model$registry$batch_categories)
  genes <- model$gene_names
  gene_idx <- .feature_positions(gene_list, genes, "gene_list", "gene")
  return_mean <- .check_scalar_bool(return_mean, "return_mean")
  q <- .query_data(model, x)
  cells <- .query_cells(q, indices)
  gene_names <- if (is.null(gene_idx)) genes else genes[gene_idx + 1L]
  if (!is.null(file)) {
    file <- .check_scalar_string(file, "file")
    overwrite <- .check_scalar_bool(overwrite, "overwrite")
    if (!is.null(n_samples_overall) || !return_mean) {
      .stop(paste("`file` holds one cells x genes matrix: not `n_samples_overall` or",
                  "`return_mean` = FALSE"))
    }
    if (file.exists(file) && !overwrite) {
      .stop("`file` '%s' exists; use overwrite = TRUE to replace it", file)
    }
    if (anyDuplicated(cells$names) || anyDuplicated(gene_names)) {
      .stop("`file`: AnnData needs unique cell and gene names")
    }
    obs <- .io_frame_out(data.frame(row.names = seq_along(cells$names)), cells$names, "obs")
    var <- .io_frame_out(data.frame(row.names = seq_along(gene_names)), gene_names, "var")
    .rs(rs_model_normalized_expression_to_h5ad(model$model, q$data, cells$idx, tb, gene_idx,
                                               lib, n_samples, batch_size, device,
                                               path.expand(file), obs, var, overwrite))
    return(invisible(file))
  }
  if (!is.null(n_samples_overall)) {
    # scvi-tools' DE sampler: rows drawn with replacement from n_samples x cells draws
    m <- .check_scalar_int(n_samples_overall, "n_samples_overall", min = 1)
    if (is.nan(lib)) .stop("`n_samples_overall` needs a numeric `library_size`, not \"latent\"")
    if (length(tb) > 1) .stop("`n_samples_overall` takes at most one `transform_batch`")
    out <- .rs(rs_model_scale_samples(model$model, "expression", q$data, cells$idx,
                                      if (is.null(tb)) -1L else tb, lib, m, importance_json,
                                      batch_size, floor(stats::runif(1, 0, 2^31)), device))
    out <- out[, if (is.null(gene_idx)) seq_along(genes) else gene_idx + 1L, drop = FALSE]
    colnames(out) <- gene_names
    return(out)
  }
  one <- function(s) {
    out <- .rs(rs_model_normalized_expression(model$model, q$data, cells$idx, tb, gene_idx,
                                              lib, s, batch_size, device))
    dimnames(out) <- list(cells$names, gene_names)
    out
  }
  if (return_mean || n_samples == 1) return(one(n_samples))
  # samples x cells x genes, as scvi-tools returns them
  draws <- lapply(seq_len(n_samples), function(i) one(1L))
  arr <- array(unlist(draws), dim = c(length(cells$names), length(gene_names), n_samples),
               dimnames = list(cells$names, gene_names, NULL))
  aperm(arr, c(3, 1, 2))
}

# Batch category names -> 0-based codes (scvi.md section 8: a number is looked up as a
# category name, never used as a code).
.transform_batch_codes <- function(transform_batch, categories) {
  if (is.null(transform_batch)) return(NULL)
  if (!(is.atomic(transform_batch) || is.factor(transform_batch)) ||
      length(transform_batch) == 0L || anyNA(transform_batch)) {
    .stop("`transform_batch` must be NULL or batch category names, got %s",
          .describe(transform_batch))
  }
  tb <- as.character(transform_batch)
  codes <- match(tb, categories)
  if (anyNA(codes)) {
    .stop("`transform_batch` has unknown batch categories: %s; the model's batches are %s",
          .enum(unique(tb[is.na(codes)])), .enum(categories, 20L))
  }
  as.integer(codes - 1L)
}

.elbo_terms <- function(model, x, indices, batch_size, device) {
  batch_size <- .check_batch_size(batch_size)
  device <- .check_device(device)
  q <- .query_data(model, x)
  cells <- .query_cells(q, indices)
  t <- .rs(rs_model_elbo_terms(model$model, 0L, q$data, cells$idx, batch_size, device))
  t$names <- cells$names
  t
}

# get_elbo() (`what` = "elbo") or get_reconstruction_error() ("reconstruction") of any model
# with ELBO terms: the mean over cells, or per cell (named) with return_mean = FALSE; with
# `by_modality` (models of several modalities) the reconstruction error as a list by
# modality.
.elbo_query <- function(model, what, x, indices, batch_size, device, return_mean, dots,
                        by_modality = FALSE) {
  fun <- c(elbo = "get_elbo", reconstruction = "get_reconstruction_error")[[what]]
  .no_dots(dots, fun, class(model)[1])
  return_mean <- .check_scalar_bool(return_mean, "return_mean")
  by_modality <- .check_scalar_bool(by_modality, "by_modality")
  t <- .elbo_terms(model, x, indices, batch_size, device)
  summarise <- function(v) if (return_mean) mean(v) else stats::setNames(v, t$names)
  if (by_modality) return(lapply(t$by_modality, summarise))
  summarise(if (what == "elbo") -(t$reconstruction_loss + t$kl_local) else t$reconstruction_loss)
}

#' ELBO, reconstruction error and marginal log-likelihood
#'
#' Goodness of fit on the model's data or on new data `x`, averaged over cells, for
#' comparing models and checking for overfitting (compare the training and validation
#' cells, see [train_indices()]).
#'
#' * `get_elbo()`: the evidence lower bound with unit KL weight, mean over cells of
#'   \eqn{-(\mathrm{reconstruction\ loss} + \mathrm{KL}(q(z|x) \| p(z)))} (and the library's
#'   KL when it is latent), from one posterior sample per cell. Higher is better; a negative
#'   number for count data. `-get_elbo()` is the "elbo" that scvi-tools' training history
#'   reports as a loss.
#' * `get_reconstruction_error()`: mean over cells of the negative log-likelihood of the counts
#'   under one posterior sample. Lower is better (a positive number).
#' * `get_marginal_ll()`: importance-sampled estimate of \eqn{\log p(x)} with the encoder as
#'   proposal and `n_mc_samples` samples per cell; as in scvi-tools, the mean of per-minibatch
#'   means (cells in order, minibatches of `batch_size`). Higher is better.
#'
#' @inheritParams get_latent_representation
#' @param n_mc_samples importance samples per cell.
#' @param return_mean `TRUE`: the mean over cells (scvi-tools' default); `FALSE`: one value
#'   per cell, named by cell.
#' @param by_modality MULTIVI, SPLICEVI: the reconstruction error of each modality (only
#'   over the cells measured in it; their sum is the total), as scvi-tools' MULTIVI reports
#'   it: a named list (`expression`, `accessibility` and with proteins `protein`; SPLICEVI:
#'   `expression` and `splicing`) of numbers, or of per-cell vectors with
#'   `return_mean = FALSE`.
#' @return A single number, or a named vector with `return_mean = FALSE`.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- train(scvi(rscvi_example_sce(), batch_key = "batch"), max_epochs = 3, seed = 0)
#' get_elbo(model)
#' get_elbo(model, indices = validation_indices(model))
#' get_reconstruction_error(model)
#' get_marginal_ll(model, indices = 1:20, n_mc_samples = 50)
get_elbo <- function(model, ...) UseMethod("get_elbo")

#' @rdname get_elbo
#' @export
get_elbo.SCVI <- function(model, x = NULL, indices = NULL, batch_size = 128L,
                          device = "auto", return_mean = TRUE, ...) {
  .elbo_query(model, "elbo", x, indices, batch_size, device, return_mean, list(...))
}

#' @rdname get_elbo
#' @export
get_reconstruction_error <- function(model, ...) UseMethod("get_reconstruction_error")

#' @rdname get_elbo
#' @export
get_reconstruction_error.SCVI <- function(model, x = NULL, indices = NULL, batch_size = 128L,
                                          device = "auto", return_mean = TRUE, ...) {
  .elbo_query(model, "reconstruction", x, indices, batch_size, device, return_mean,
              list(...))
}

#' @rdname get_elbo
#' @export
get_marginal_ll <- function(model, ...) UseMethod("get_marginal_ll")

#' @rdname get_elbo
#' @export
get_marginal_ll.SCVI <- function(model, x = NULL, indices = NULL, n_mc_samples = 1000L,
                                 batch_size = 128L, device = "auto", return_mean = TRUE,
                                 ...) {
  .no_dots(list(...), "get_marginal_ll", "SCVI")
  return_mean <- .check_scalar_bool(return_mean, "return_mean")
  n_mc_samples <- .check_scalar_int(n_mc_samples, "n_mc_samples", min = 1)
  batch_size <- .check_batch_size(batch_size)
  device <- .check_device(device)
  q <- .query_data(model, x)
  cells <- .query_cells(q, indices)
  v <- .rs(rs_scvi_marginal_ll(model$model, q$data, cells$idx, n_mc_samples, batch_size,
                               device))
  if (!return_mean) return(stats::setNames(v, cells$names))
  # scvi-tools averages per-minibatch means (scvi.md section 8.8).
  minibatch <- (seq_along(v) - 1L) %/% batch_size
  mean(vapply(split(v, minibatch), mean, numeric(1)))
}

# ---------------------------------------------------------------------------------------------
# Training history and split.

.history_columns <- c("epoch", "elbo_train", "elbo_validation", "reconstruction_loss_train",
                      "reconstruction_loss_validation", "kl_local_train",
                      "kl_local_validation", "kl_weight", "train_loss", "validation_loss",
                      "lr", "seconds")

#' Training history of a model
#'
#' One row per training epoch (continued across repeated [train()] calls). Losses are means
#' per cell: `elbo_*` is the negative ELBO with unit KL weight (lower is better),
#' `reconstruction_loss_*` the negative log-likelihood of the counts, `kl_local_*` the KL
#' divergence of the posterior from the prior, `train_loss` / `validation_loss` the loss that
#' was optimised (KL weighted by `kl_weight`, the warm-up weight of that epoch). Validation
#' columns are `NA` in epochs without validation. `lr` is the learning rate of the epoch's
#' steps (it changes only with a learning-rate schedule). `seconds` is the epoch's wall time.
#'
#' `history()` with anything other than a model (or no argument) is R's command history,
#' [utils::history()], which this generic masks.
#'
#' @param model a model (`SCVI`, `GIMVI`); for the default method, arguments of
#'   [utils::history()].
#' @param ... passed to [utils::history()] by the default method.
#' @return A data.frame with columns `epoch`, `elbo_train`, `elbo_validation`,
#'   `reconstruction_loss_train`, `reconstruction_loss_validation`, `kl_local_train`,
#'   `kl_local_validation`, `kl_weight`, `train_loss`, `validation_loss`, `lr`, `seconds`.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- train(scvi(rscvi_example_sce(), batch_key = "batch"), max_epochs = 3, seed = 0)
#' history(model)
history <- function(model, ...) UseMethod("history")

#' @rdname history
#' @export
history.default <- function(model, ...) {
  if (missing(model)) utils::history(...) else utils::history(model, ...)
}

# The bridge's history columns as a data.frame.
.history_frame <- function(h) {
  h <- lapply(h[.history_columns], function(col) col %||% numeric(0))
  h$epoch <- as.integer(h$epoch)
  as.data.frame(h, optional = TRUE)
}

#' Cells used for training, validation and testing
#'
#' The 1-based positions (in the model's data) of the cells in the training, validation and
#' test sets of the last [train()] call (scvi-tools' `train_indices`, `validation_indices`,
#' `test_indices`); empty before training. The test set holds the cells left over when
#' `train_size + validation_size < 1`. `is_trained()` says whether the model has been trained.
#'
#' @param model a model (`SCVI`, `GIMVI`, `MULTIVI`, `SPLICEVI`).
#' @param ... unused.
#' @return An integer vector (GIMVI: one per dataset); `is_trained()`: `TRUE` or `FALSE`.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- scvi(rscvi_example_sce(), batch_key = "batch")
#' is_trained(model)
#' model <- train(model, max_epochs = 2, train_size = 0.8, validation_size = 0.1, seed = 0)
#' is_trained(model)
#' length(train_indices(model))
#' head(validation_indices(model))
#' length(test_indices(model))
train_indices <- function(model, ...) UseMethod("train_indices")

#' @rdname train_indices
#' @export
validation_indices <- function(model, ...) UseMethod("validation_indices")

#' @rdname train_indices
#' @export
test_indices <- function(model, ...) UseMethod("test_indices")

#' @rdname train_indices
#' @export
is_trained <- function(model, ...) UseMethod("is_trained")

# ---------------------------------------------------------------------------------------------
# print / summary / plot.

.fmt_int <- function(n) format(n, big.mark = ",", scientific = FALSE, trim = TRUE)

.key_text <- function(key, n, what) {
  if (is.null(key)) sprintf("none (1 %s)", what)
  else sprintf("\"%s\" (%d %s%s)", key, n, what, if (n == 1L) "" else "es")
}

.data_text <- function(model) {
  inp <- model$input
  if (is.null(model$data) || .null_ptr(model$data)) {
    return(sprintf("none attached (model set up on %s cells x %s genes); pass `x` to queries",
                   .fmt_int(inp$n_cells), .fmt_int(inp$n_genes)))
  }
  src <- if (is.na(inp$class %||% NA)) "" else sprintf(" from a %s", inp$class)
  src_assay <- inp$layer %||% inp$assay
  lay <- if (is.null(src_assay)) "" else sprintf(", assay \"%s\"", src_assay)
  if (inherits(model, "SCVI") && .is_minified(model)) {
    return(sprintf("%s cells x %s genes, minified (latent posterior; no counts)",
                   .fmt_int(length(model$cell_names)), .fmt_int(inp$n_genes)))
  }
  sprintf("%s cells x %s genes%s%s", .fmt_int(inp$n_cells), .fmt_int(inp$n_genes), src, lay)
}

#' @rdname summary.SCVI
#' @method print SCVI
#' @export
print.SCVI <- function(x, ...) {
  cfg <- x$config
  embedding <- if (identical(cfg$batch_representation, "embedding")) {
    ",\n            batch_representation = \"embedding\""
  }
  .print_model(x, "SCVI", .data_text(x), paste0(sprintf(paste0(
    "n_latent = %d, n_hidden = %d, n_layers = %d, dropout_rate = %s,\n            ",
    "dispersion = \"%s\", gene_likelihood = \"%s\", latent_distribution = \"%s\""),
    cfg$n_latent, cfg$n_hidden, cfg$n_layers, format(cfg$dropout_rate), cfg$dispersion,
    cfg$gene_likelihood, cfg$latent_distribution), embedding))
}

# print() of a model of one dataset (SCVI, MULTIVI, SPLICEVI) of kind `kind`: its data
# (`data_text`), setup, architecture (`model_text`) and training; only the title when the
# Rust handle is gone (the texts are not evaluated then).
.print_model <- function(x, kind, data_text, model_text) {
  if (!.print_title(x, kind)) return(invisible(x))
  reg <- x$registry
  sa <- reg$setup_args
  cat(sprintf("  data:     %s\n", data_text))
  cat(sprintf("  batch:    %s\n", .key_text(sa$batch_key, reg$n_batch, "batch")))
  if (!is.null(sa$labels_key)) {
    cat(sprintf("  labels:   \"%s\" (%d labels)\n", sa$labels_key, reg$n_labels))
  }
  cov <- c(sa$categorical_covariate_keys, sa$continuous_covariate_keys)
  if (length(cov)) cat(sprintf("  covariates: %s\n", .enum(cov, 10L)))
  if (!is.null(sa$size_factor_key)) {
    cat(sprintf("  size factor: \"%s\"\n", sa$size_factor_key))
  }
  cat(sprintf("  model:    %s\n", model_text))
  cat(sprintf("  training: %s\n", .training_text(x)))
  invisible(x)
}

.training_text <- function(model) {
  st <- .state(model)
  h <- history(model)
  if (!isTRUE(st$is_trained) && nrow(h) == 0L) return("not trained yet; call train(model)")
  # Models read from scvi-tools' files come without their history.
  if (nrow(h) == 0L) {
    return(sprintf("trained (%s training / %s validation cells; no training history)",
                   .fmt_int(length(st$train)), .fmt_int(length(st$validation))))
  }
  last <- h[nrow(h), ]
  val <- if (is.na(last$elbo_validation)) "" else
    sprintf(", elbo_validation %.1f", last$elbo_validation)
  sprintf("%d epochs (%s training / %s validation cells); last elbo_train %.1f%s",
          nrow(h), .fmt_int(length(st$train)), .fmt_int(length(st$validation)),
          last$elbo_train, val)
}

#' Print and summarise an SCVI model
#'
#' `print()` shows the data, setup and architecture of a model and how far it was trained,
#' in a few lines. `summary()` shows how the model was set up (as scvi-tools'
#' `view_setup_args()`): the setup arguments and registered categories, all
#' hyperparameters, and the training state.
#'
#' @param object an `SCVI` model.
#' @param x an `SCVI` model (`print()`), or a `summary.SCVI` object.
#' @param ... unused.
#' @return `summary()`: an object of class `summary.SCVI`, a list with `data`, `setup_args`,
#'   `categories`, `continuous_covariates`, `hyperparameters` and `training`. The print
#'   methods return their argument invisibly.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- scvi(rscvi_example_sce(), batch_key = "batch", labels_key = "cell_line")
#' model
#' summary(model)
#' @method summary SCVI
summary.SCVI <- function(object, ...) {
  .check_model(object)
  reg <- object$registry
  cats <- c(list(batch = reg$batch_categories, labels = reg$label_categories),
            reg$categorical_covariate_categories)
  structure(list(
    data = .data_text(object),
    setup_args = reg$setup_args,
    categories = cats,
    continuous_covariates = reg$continuous_covariate_keys,
    hyperparameters = object$config,
    training = .training_summary(object)
  ), class = "summary.SCVI")
}

# summary()'s training state of a model: trained or not, epochs, the split, the last epoch.
.training_summary <- function(object) {
  st <- .state(object)
  h <- history(object)
  list(
    is_trained = isTRUE(st$is_trained),
    epochs = nrow(h),
    n_train = length(st$train), n_validation = length(st$validation),
    n_test = length(st$test),
    last = if (nrow(h)) as.list(h[nrow(h), c("elbo_train", "elbo_validation",
                                              "reconstruction_loss_train",
                                              "kl_local_train", "kl_weight")])
  )
}

#' @rdname summary.SCVI
#' @method print summary.SCVI
#' @export
print.summary.SCVI <- function(x, ...) {
  show <- function(v) {
    if (is.null(v)) "NULL"
    else if (length(v) == 0L) "(none)"
    else if (is.character(v)) paste(encodeString(v, quote = "\""), collapse = ", ")
    else paste(format(v), collapse = ", ")
  }
  table_lines <- function(l) {
    w <- max(nchar(names(l)))
    for (n in names(l)) cat(sprintf("  %-*s  %s\n", w, n, show(l[[n]])))
  }
  cat(sprintf("%s model summary\n\nData\n", x$kind %||% "SCVI"))
  cat(sprintf("  %s\n", x$data))
  cat("\nSetup arguments\n")
  table_lines(x$setup_args)
  cat("\nRegistered categories\n")
  for (n in names(x$categories)) {
    v <- x$categories[[n]]
    cat(sprintf("  %s (%d): %s\n", n, length(v), .enum(v, 10L)))
  }
  if (length(x$continuous_covariates)) {
    cat(sprintf("  continuous covariates: %s\n", .enum(x$continuous_covariates, 10L)))
  }
  cat("\nHyperparameters\n")
  table_lines(x$hyperparameters)
  tr <- x$training
  cat("\nTraining\n")
  if (!tr$is_trained && tr$epochs == 0L) {
    cat("  not trained yet\n")
  } else {
    cat(sprintf("  %d epochs; split: %s train / %s validation / %s test cells\n", tr$epochs,
                .fmt_int(tr$n_train), .fmt_int(tr$n_validation), .fmt_int(tr$n_test)))
    if (!is.null(tr$last)) {
      cat("  last epoch: ")
      cat(paste(sprintf("%s %s", names(tr$last),
                        vapply(tr$last, function(v) format(round(v, 4)), "")),
                collapse = ", "), "\n")
    }
  }
  invisible(x)
}

#' Plot the training curves of a model
#'
#' Base-graphics panels of the training history against the epoch: the ELBO loss
#' (per-cell negative ELBO, training and validation), the reconstruction loss, and the KL
#' divergence (with the warm-up KL weight on a second axis).
#'
#' @param x an `SCVI` or `GIMVI` model.
#' @param which panels to draw, any of `"elbo"`, `"reconstruction"`, `"kl"`.
#' @param ... passed to [graphics::plot()] for every panel.
#' @return `x`, invisibly.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- train(scvi(rscvi_example_sce(), batch_key = "batch"), max_epochs = 5, seed = 0)
#' plot(model)
plot.SCVI <- function(x, which = c("elbo", "reconstruction", "kl"), ...) {
  .check_model(x, "x")
  .plot_history(history(x), which, ...)
  invisible(x)
}

# Training-curve panels of a history data.frame.
.plot_history <- function(h, which, ...) {
  panels <- c("elbo", "reconstruction", "kl")
  if (!is.character(which) || !length(which) || anyNA(which) || !all(which %in% panels)) {
    .stop("`which` must hold some of %s, got %s",
          paste(encodeString(panels, quote = "\""), collapse = ", "), .describe(which))
  }
  which <- unique(which)
  if (nrow(h) == 0L) .stop("`x` has no training history yet: train it with train(x)")
  old <- graphics::par(mfrow = c(1L, length(which)), mar = c(4, 4.2, 2.5, 2.5))
  on.exit(graphics::par(old), add = TRUE)
  # Draw all panels at once on screen devices.
  grDevices::dev.hold()
  on.exit(grDevices::dev.flush(), add = TRUE)
  cols <- c(train = "#1b6ca8", validation = "#d1495b")
  curve <- function(train, validation, ylab, main) {
    ys <- c(train, validation)
    ys <- ys[is.finite(ys)]
    graphics::plot(h$epoch, train, type = "l", lwd = 2, col = cols[["train"]],
                   ylim = range(ys), xlab = "epoch", ylab = ylab, main = main, ...)
    has_val <- any(is.finite(validation))
    if (has_val) {
      ok <- is.finite(validation)
      graphics::lines(h$epoch[ok], validation[ok], lwd = 2, col = cols[["validation"]])
      if (sum(ok) == 1L) {
        graphics::points(h$epoch[ok], validation[ok], pch = 19, col = cols[["validation"]])
      }
    }
    graphics::legend("topright", legend = c("train", if (has_val) "validation"),
                     col = cols[c("train", if (has_val) "validation")], lwd = 2, bty = "n")
  }
  for (p in which) {
    switch(p,
      elbo = curve(h$elbo_train, h$elbo_validation, "negative ELBO per cell", "ELBO loss"),
      reconstruction = curve(h$reconstruction_loss_train, h$reconstruction_loss_validation,
                             "reconstruction loss per cell", "Reconstruction"),
      kl = {
        curve(h$kl_local_train, h$kl_local_validation, "KL divergence per cell",
              "KL (local)")
        # The warm-up weight on the right axis, rescaled into the panel.
        usr <- graphics::par("usr")
        w <- usr[3] + h$kl_weight * (usr[4] - usr[3])
        graphics::lines(h$epoch, w, lty = 2, col = "grey40")
        graphics::axis(4, at = usr[3] + c(0, 0.5, 1) * (usr[4] - usr[3]),
                       labels = c("0", "0.5", "1"), col.axis = "grey40", cex.axis = 0.8)
        graphics::legend("bottomright", legend = "KL weight (right axis)", lty = 2,
                         col = "grey40", bty = "n", cex = 0.8)
      })
  }
  invisible(h)
}

#' How a model was set up
#'
#' scvi-tools' `view_setup_args()`: the registration arguments, categories, hyperparameters
#' and training state of a model (the same as `summary(model)`), or of a model saved with
#' [save_model()], given by its directory (as scvi-tools takes it).
#'
#' @param model an rscvi model, or the directory of a saved one.
#' @return The model's summary object, printed.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- scvi(rscvi_example_sce(), batch_key = "batch")
#' view_setup_args(model)
#' dir <- tempfile()
#' save_model(model, dir)
#' view_setup_args(dir)
view_setup_args <- function(model) {
  if (is.character(model)) {
    dir <- .check_scalar_string(model, "model")
    if (!dir.exists(dir)) {
      .stop("`model` '%s' is not a directory; give a model or the directory of a saved one",
            dir)
    }
    model <- load_model(dir)
  }
  .check_any_model(model)
  s <- summary(model)
  print(s)
  invisible(s)
}
