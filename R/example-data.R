#' Example data: CellBench lung adenocarcinoma cell-line mixtures
#'
#' A small real single-cell RNA-seq dataset shipped with the package: UMI counts of 1,021
#' cells (demuxlet singlets) from five CellBench mixture experiments profiled with CEL-seq2
#' and Drop-seq (Tian et al. 2019, Nature Methods 16:479-487,
#' \doi{10.1038/s41592-019-0425-8}), restricted to 2,000 highly variable genes. Five cell
#' lines (`cell_line`) were profiled in five batches (`batch`) with two protocols
#' (`protocol`); the three-cell-line batches contain only H1975, H2228 and HCC827. See
#' `system.file("extdata", "README.md", package = "rscvi")` for provenance and processing.
#'
#' @return `rscvi_example_data()`: a list with
#'   * `counts`: a `dgCMatrix` of UMI counts, genes (Ensembl IDs) x cells (barcodes);
#'   * `cells`: a data.frame with one row per cell (row names = barcodes) and columns
#'     `barcode`, `batch`, `cell_line`, `protocol` and `total_counts` (the cell's count
#'     total over all 11,533 genes of the source matrix).
#' @export
#' @examples
#' d <- rscvi_example_data()
#' dim(d$counts)
#' table(d$cells$batch, d$cells$cell_line)
rscvi_example_data <- function() {
  path <- system.file("extdata", "cellbench_hvg2000.rds", package = "rscvi", mustWork = TRUE)
  readRDS(path)
}

#' @rdname rscvi_example_data
#' @return `rscvi_example_sce()`: a `SingleCellExperiment` with assay `counts` and colData
#'   columns `batch`, `cell_line` and `protocol`. Needs the SingleCellExperiment package.
#' @export
#' @examples
#' if (requireNamespace("SingleCellExperiment", quietly = TRUE)) {
#'   sce <- rscvi_example_sce()
#'   sce
#' }
rscvi_example_sce <- function() {
  for (pkg in c("SingleCellExperiment", "S4Vectors")) {
    if (!requireNamespace(pkg, quietly = TRUE)) {
      stop(sprintf(paste0("rscvi_example_sce() needs the '%s' package (Bioconductor); ",
                          "install it, or use rscvi_example_data() for a plain ",
                          "matrix + data.frame"), pkg), call. = FALSE)
    }
  }
  d <- rscvi_example_data()
  col_data <- S4Vectors::DataFrame(d$cells[, c("batch", "cell_line", "protocol")],
                                   check.names = FALSE)
  SingleCellExperiment::SingleCellExperiment(assays = list(counts = d$counts),
                                             colData = col_data)
}

#' Example data: single-cell splice junction counts with gene expression
#'
#' A small real dataset shipped with the package for the SPLICEVI examples, tests and
#' vignette: 600 mouse cells (droplet data, STARsolo counts) from 11 library tags, with UMI
#' counts of 482 genes and the junction reads of 500 alternative splicing events, each an
#' ATSE of two junctions: the event's inclusion junction (`<event>:inc`) and its competing
#' exclusion junctions (`<event>:exc`). From the toy data of the splikit R package (csglab,
#' MIT licence); there are no cell-type labels. See
#' `system.file("extdata", "README.md", package = "rscvi")` for provenance.
#'
#' @return A list with `expression` (`dgCMatrix`, genes x cells), `junctions` (`dgCMatrix`,
#'   1,000 junctions x the same cells), `atse` (the event id of each junction row, for
#'   [splicevi()]'s `atse`) and `cells` (data.frame, row names = cell names; `library`, the
#'   library tag, to use as batch).
#' @export
#' @examples
#' d <- rscvi_example_splicing()
#' sapply(d[c("expression", "junctions")], dim)
#' head(d$atse)
#' table(d$cells$library)
rscvi_example_splicing <- function() {
  readRDS(system.file("extdata", "splikit_small.rds", package = "rscvi", mustWork = TRUE))
}
