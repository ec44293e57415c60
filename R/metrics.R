# Embedding quality metrics (exact Euclidean kNN in the Rust core) and device information.

.check_embedding <- function(embedding) {
  if (is.data.frame(embedding)) embedding <- as.matrix(embedding)
  if (!is.matrix(embedding) || !is.numeric(embedding) || ncol(embedding) < 1L ||
      nrow(embedding) < 2L) {
    .stop(paste0("`embedding` must be a numeric matrix with one row per cell (at least 2) ",
                 "and at least one column, got %s"),
          if (is.matrix(embedding)) sprintf("a %d x %d %s matrix", nrow(embedding),
                                             ncol(embedding), typeof(embedding))
          else .describe(embedding))
  }
  if (any(!is.finite(embedding))) {
    .stop("`embedding` has %d missing or infinite values", sum(!is.finite(embedding)))
  }
  storage.mode(embedding) <- "double"
  embedding
}

# Groups -> 0-based codes, one per embedding row.
.check_groups <- function(g, n, arg) {
  if (!(is.atomic(g) || is.factor(g)) || length(g) != n) {
    .stop("`%s` must be a vector with one value per row of `embedding` (%d), got %s", arg, n,
          .describe(g))
  }
  if (anyNA(g)) .stop("`%s` has %d missing values (NA)", arg, sum(is.na(g)))
  as.integer(factor(g)) - 1L
}

.check_k <- function(k, n) .check_scalar_int(k, "k", min = 1, max = n - 1)

#' Embedding quality: label purity and batch mixing
#'
#' Two k-nearest-neighbour summaries of an embedding (e.g. [get_latent_representation()]),
#' with exact Euclidean neighbours:
#'
#' * `knn_purity()`: the mean, over cells, of the fraction of a cell's `k` nearest
#'   neighbours that share its label. 1 = every neighbourhood is pure; biological
#'   structure (cell types) is preserved.
#' * `batch_mixing()`: within-label batch mixing. For each cell, its `k` nearest neighbours
#'   among the cells of the same label; the fraction of them from another batch, summed over
#'   cells, divided by the same sum expected if batches were perfectly mixed within each
#'   label (the share of the label's other cells that come from other batches). 1 = ideal
#'   mixing, 0 = batches fully separated. Comparing within labels keeps batches with
#'   different cell-type composition from counting as unmixed; labels seen in only one batch
#'   are skipped.
#'
#' @param embedding a numeric matrix, cells x dimensions.
#' @param labels cell labels (e.g. cell types), one per row of `embedding`.
#' @param batches batch of each cell, one per row of `embedding`.
#' @param k number of neighbours (at most one less than the number of cells; for
#'   `batch_mixing()` capped at the label's size minus 1).
#' @return A single number; `batch_mixing()` returns `NaN` (with a warning) when no label
#'   occurs in two batches.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' sce <- rscvi_example_sce()
#' model <- train(scvi(sce, batch_key = "batch"), max_epochs = 5, seed = 0)
#' z <- get_latent_representation(model)
#' knn_purity(z, sce$cell_line)
#' batch_mixing(z, sce$cell_line, sce$batch)
knn_purity <- function(embedding, labels, k = 15L) {
  embedding <- .check_embedding(embedding)
  labels <- .check_groups(labels, nrow(embedding), "labels")
  k <- .check_k(k, nrow(embedding))
  .rs(rs_knn_purity(embedding, labels, k))
}

#' @rdname knn_purity
#' @export
batch_mixing <- function(embedding, labels, batches, k = 15L) {
  embedding <- .check_embedding(embedding)
  labels <- .check_groups(labels, nrow(embedding), "labels")
  batches <- .check_groups(batches, nrow(embedding), "batches")
  k <- .check_k(k, nrow(embedding))
  out <- .rs(rs_batch_mixing(embedding, labels, batches, k))
  if (is.nan(out)) .warn("no label occurs in more than one batch: batch mixing is undefined")
  out
}

#' Compute devices available to rscvi
#'
#' Whether this build of rscvi includes CUDA support, whether an NVIDIA driver was found,
#' and which device `device = "auto"` selects.
#'
#' @return A list with `cuda_compiled` (logical), `cuda_driver` (logical) and `auto`
#'   (`"cpu"` or `"cuda"`).
#' @export
#' @examples
#' rscvi_devices()
rscvi_devices <- function() rs_device_info()

#' Number of CPU threads
#'
#' rscvi computes on the CPU with a pool of threads, by default one per core (as
#' scvi-tools' `settings.num_threads`). `set_num_threads()` sets its size; the pool starts
#' with the first training or query of the R session and keeps its size after that, so call
#' it first (or set the environment variable `RAYON_NUM_THREADS` before starting R, e.g. in
#' a batch job's script or `.Renviron`). The option `rscvi.num_threads`, when set before
#' the package loads, does the same.
#'
#' @param n number of threads, at least 1.
#' @return `set_num_threads()`: the number of threads, invisibly. `get_num_threads()`: the
#'   number of threads of the pool (starting it if it has not started).
#' @export
#' @examples
#' get_num_threads()
set_num_threads <- function(n) {
  n <- .check_scalar_int(n, "n", min = 1)
  invisible(.rs(rs_set_num_threads(n)))
}

#' @rdname set_num_threads
#' @export
get_num_threads <- function() rs_num_threads()

.onLoad <- function(libname, pkgname) {
  n <- getOption("rscvi.num_threads")
  if (!is.null(n)) {
    tryCatch(set_num_threads(n), error = function(e) {
      warning("rscvi: option rscvi.num_threads not applied: ", conditionMessage(e),
              call. = FALSE)
    })
  }
}
