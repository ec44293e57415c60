#' rscvi: single-cell variational inference in Rust for R
#'
#' SCVI (scvi-tools) implemented in Rust on the Burn framework and called from R through
#' extendr. Start with [rscvi_example_sce()] for a small real dataset.
#'
#' @keywords internal
#' @useDynLib rscvi, .registration = TRUE
#' @importFrom methods as is new
#' @importClassesFrom Matrix dgCMatrix
"_PACKAGE"
