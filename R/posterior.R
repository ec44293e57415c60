# Posterior queries beyond the latent space: likelihood parameters, library sizes and
# posterior predictive samples (scvi.md §8.3-8.5).

.gene_selection <- function(model, gene_list) {
  genes <- model$registry$gene_names
  if (is.null(gene_list)) return(list(idx = NULL, names = genes))
  gene_list <- as.character(gene_list)
  missing <- setdiff(gene_list, genes)
  if (length(missing)) {
    .stop("`gene_list` has %d gene(s) the model does not know, e.g. %s", length(missing),
          paste(utils::head(missing, 5), collapse = ", "))
  }
  keep <- which(genes %in% gene_list)
  list(idx = keep - 1L, names = genes[keep])
}

#' Parameters of the count likelihood
#'
#' For each cell, the parameters of \eqn{p(x \mid z, \ell)} at posterior draws of \eqn{z}:
#' the mean \eqn{\mu}, the inverse dispersion \eqn{\theta} (not for Poisson) and the
#' zero-inflation probability (ZINB only).
#'
#' @inheritParams get_latent_representation
#' @param n_samples posterior draws.
#' @param give_mean with `n_samples > 1`, average over the draws instead of returning them.
#' @return A list with cells x genes matrices `mean`, `dispersions`, `dropout` (`NULL` when the
#'   likelihood has no such parameter); with `n_samples > 1` and `give_mean = FALSE`, arrays
#'   of dimension `n_samples` x cells x genes.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- train(scvi(rscvi_example_sce(), batch_key = "batch"), max_epochs = 3, seed = 0)
#' p <- get_likelihood_parameters(model, indices = 1:5)
#' p$mean[, 1:3]
get_likelihood_parameters <- function(model, ...) UseMethod("get_likelihood_parameters")

#' @rdname get_likelihood_parameters
#' @export
get_likelihood_parameters.SCVI <- function(model, x = NULL, indices = NULL, n_samples = 1L,
                                           give_mean = FALSE, batch_size = 128L,
                                           device = "auto", ...) {
  .no_dots(list(...), "get_likelihood_parameters", "SCVI")
  n_samples <- .check_scalar_int(n_samples, "n_samples", min = 1)
  give_mean <- .check_scalar_bool(give_mean, "give_mean")
  batch_size <- .check_batch_size(batch_size)
  device <- .check_device(device)
  q <- .query_data(model, x)
  cells <- .query_cells(q, indices)
  dn <- list(cells$names, model$registry$gene_names)
  draws <- lapply(seq_len(n_samples), function(i) {
    res <- .rs(rs_scvi_likelihood_parameters(model$model, q$data, cells$idx, batch_size, device))
    lapply(res, function(m) if (is.null(m)) NULL else `dimnames<-`(m, dn))
  })
  if (n_samples == 1) return(draws[[1]])
  combine <- function(key) {
    mats <- lapply(draws, `[[`, key)
    if (is.null(mats[[1]])) return(NULL)
    if (give_mean) return(Reduce(`+`, mats) / n_samples)
    arr <- array(unlist(mats), dim = c(dim(mats[[1]]), n_samples), dimnames = c(dn, list(NULL)))
    aperm(arr, c(3, 1, 2))
  }
  list(mean = combine("mean"), dispersions = combine("dispersions"), dropout = combine("dropout"))
}

#' Library size of each cell
#'
#' With `give_mean = TRUE`, the posterior mean \eqn{\exp(\mu_\ell + v_\ell / 2)} of the latent
#' library size (models with `use_observed_lib_size = FALSE`); with `give_mean = FALSE`, the
#' library of one forward pass (the observed total count, or one posterior draw).
#'
#' @inheritParams get_latent_representation
#' @param give_mean see Description.
#' @return A numeric vector named by cell.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- scvi(rscvi_example_sce(), batch_key = "batch", use_observed_lib_size = FALSE)
#' model <- train(model, max_epochs = 3, seed = 0)
#' head(get_latent_library_size(model))
get_latent_library_size <- function(model, ...) UseMethod("get_latent_library_size")

#' @rdname get_latent_library_size
#' @export
get_latent_library_size.SCVI <- function(model, x = NULL, indices = NULL, give_mean = TRUE,
                                         batch_size = 128L, device = "auto", ...) {
  .no_dots(list(...), "get_latent_library_size", "SCVI")
  give_mean <- .check_scalar_bool(give_mean, "give_mean")
  batch_size <- .check_batch_size(batch_size)
  device <- .check_device(device)
  q <- .query_data(model, x)
  cells <- .query_cells(q, indices)
  v <- .rs(rs_scvi_library_size(model$model, q$data, cells$idx, give_mean, batch_size, device))
  stats::setNames(v, cells$names)
}

#' Batch representation of each cell
#'
#' The row of the learned batch embedding for each cell's batch (scvi-tools'
#' `get_batch_representation()`), for a model built with
#' `batch_representation = "embedding"`: cells with similar batch effects have nearby rows.
#'
#' @inheritParams get_latent_representation
#' @return A cells x 5 matrix (the embedding's width), named by cell.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- scvi(rscvi_example_sce(), batch_key = "batch", batch_representation = "embedding")
#' model <- train(model, max_epochs = 3, seed = 0)
#' rep <- get_batch_representation(model)
#' unique(round(rep, 3))
get_batch_representation <- function(model, ...) UseMethod("get_batch_representation")

#' @rdname get_batch_representation
#' @export
get_batch_representation.SCVI <- function(model, x = NULL, indices = NULL, batch_size = 128L,
                                          ...) {
  .no_dots(list(...), "get_batch_representation", "SCVI")
  batch_size <- .check_batch_size(batch_size)
  q <- .query_data(model, x)
  cells <- .query_cells(q, indices)
  m <- .rs(rs_scvi_batch_representation(model$model, q$data, cells$idx, batch_size))
  dimnames(m) <- list(cells$names, paste0("batch_rep_", seq_len(ncol(m))))
  m
}

#' Posterior predictive samples of counts
#'
#' Draws counts from \eqn{p(x \mid z, \ell)} with \eqn{z} from the posterior of each cell
#' (gamma-Poisson draws for NB, plus structural zeros for ZINB; continuous values for the
#' Normal likelihood).
#'
#' @inheritParams get_latent_representation
#' @inheritParams get_normalized_expression
#' @param n_samples draws per cell.
#' @return With `n_samples = 1`, a sparse cells x genes `dgCMatrix`; otherwise a cells x genes x
#'   `n_samples` array.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- train(scvi(rscvi_example_sce(), batch_key = "batch"), max_epochs = 3, seed = 0)
#' x <- posterior_predictive_sample(model, indices = 1:5)
#' x[, 1:4]
posterior_predictive_sample <- function(model, ...) UseMethod("posterior_predictive_sample")

#' @rdname posterior_predictive_sample
#' @export
posterior_predictive_sample.SCVI <- function(model, x = NULL, indices = NULL, n_samples = 1L,
                                             gene_list = NULL, batch_size = 128L,
                                             device = "auto", ...) {
  .no_dots(list(...), "posterior_predictive_sample", "SCVI")
  n_samples <- .check_scalar_int(n_samples, "n_samples", min = 1)
  batch_size <- .check_batch_size(batch_size)
  device <- .check_device(device)
  q <- .query_data(model, x)
  cells <- .query_cells(q, indices)
  genes <- .gene_selection(model, gene_list)
  draw <- function() {
    m <- .rs(rs_scvi_posterior_predictive(model$model, q$data, cells$idx, genes$idx, batch_size,
                                          floor(stats::runif(1, 0, 2^31)), device))
    dimnames(m) <- list(cells$names, genes$names)
    m
  }
  if (n_samples == 1) return(methods::as(Matrix::Matrix(draw(), sparse = TRUE), "CsparseMatrix"))
  arr <- vapply(seq_len(n_samples), function(i) draw(),
                matrix(0, length(cells$names), length(genes$names)))
  dimnames(arr) <- list(cells$names, genes$names, NULL)
  arr
}

#' Gene-gene correlation of denoised expression
#'
#' Correlation between genes across posterior draws of denoised expression: for each cell,
#' `n_samples` draws of \eqn{z}, expression \eqn{\lambda = } `rna_size_factor` \eqn{\rho}, and
#' one gamma draw with the model's dispersion (scvi-tools' `get_feature_correlation_matrix`).
#'
#' @inheritParams get_normalized_expression
#' @param n_samples posterior draws per cell.
#' @param rna_size_factor library size the expression is scaled to.
#' @param correlation_type `"spearman"` or `"pearson"`.
#' @return A genes x genes correlation matrix with the gene names as dimnames (averaged over
#'   `transform_batch` when several batches are given).
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' model <- train(scvi(rscvi_example_sce(), batch_key = "batch"), max_epochs = 3, seed = 0)
#' r <- get_feature_correlation_matrix(model, indices = 1:50, n_samples = 2)
#' r[1:3, 1:3]
get_feature_correlation_matrix <- function(model, ...) UseMethod("get_feature_correlation_matrix")

#' @rdname get_feature_correlation_matrix
#' @export
get_feature_correlation_matrix.SCVI <- function(model, x = NULL, indices = NULL, n_samples = 10L,
                                                batch_size = 64L, rna_size_factor = 1000,
                                                transform_batch = NULL,
                                                correlation_type = c("spearman", "pearson"),
                                                device = "auto", ...) {
  .no_dots(list(...), "get_feature_correlation_matrix", "SCVI")
  n_samples <- .check_scalar_int(n_samples, "n_samples", min = 1)
  batch_size <- .check_batch_size(batch_size)
  rna_size_factor <- .check_scalar_num(rna_size_factor, "rna_size_factor", min = 0, min_open = TRUE)
  correlation_type <- .match_choice(correlation_type, c("spearman", "pearson"), "correlation_type")
  device <- .check_device(device)
  q <- .query_data(model, x)
  cells <- .query_cells(q, indices)
  tb <- .transform_batch_codes(transform_batch, model$registry$batch_categories)
  r <- .rs(rs_scvi_feature_correlation(model$model, q$data, cells$idx, tb, n_samples,
                                       rna_size_factor, correlation_type == "spearman",
                                       batch_size, floor(stats::runif(1, 0, 2^31)), device))
  dimnames(r) <- list(model$registry$gene_names, model$registry$gene_names)
  r
}
