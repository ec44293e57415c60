# Builds inst/extdata/cellbench_hvg2000.rds from the CellBench copy in the shared data folder
# (see inst/extdata/README.md). Run from the repository root:
#   Rscript tools/make-extdata.R [path/to/shared/data/cellbench]
# Output: list(counts = dgCMatrix genes x cells, cells = data.frame) for the 1,021 singlets
# and the 2,000 genes of hvg2000.txt (the gene set of the scvi-tools reference runs).
args <- commandArgs(trailingOnly = TRUE)
src <- if (length(args)) args[[1]] else file.path("..", "shared", "data", "cellbench")
stopifnot(dir.exists(src))

read_tsv <- function(f, ...) utils::read.delim(file.path(src, f), stringsAsFactors = FALSE,
                                               check.names = FALSE, ...)
counts <- methods::as(Matrix::readMM(file.path(src, "matrix.mtx.gz")), "CsparseMatrix")
genes <- read_tsv("features.tsv.gz")$gene_id
barcodes <- read_tsv("barcodes.tsv.gz", header = FALSE)[[1]]
obs <- read_tsv("obs.tsv.gz")
hvg <- readLines(file.path(src, "hvg2000.txt"))
hvg <- hvg[nzchar(hvg)]
stopifnot(nrow(counts) == length(genes), ncol(counts) == length(barcodes),
          identical(obs$barcode, barcodes), length(hvg) == 2000L, all(hvg %in% genes))
dimnames(counts) <- list(genes, barcodes)

# Singlets only (doublet calls have no single cell-line label); matrix order is kept so that
# validation_cells_seed0.txt (matrix order, singlets) still describes the reference split.
keep <- obs$demuxlet_cls == "SNG"
stopifnot(sum(keep) == 1021L)
counts <- counts[hvg, keep]
obs <- obs[keep, ]

# Character columns, not factors: registration then sorts categories by code point, as
# scvi-tools does for string columns. total_counts is the authors' column sum over all
# 11,533 genes of the shared matrix (not over the 2,000 kept genes).
cells <- data.frame(barcode = obs$barcode, batch = obs$batch, cell_line = obs$cell_line,
                    protocol = obs$protocol, total_counts = as.numeric(obs$total_counts),
                    row.names = obs$barcode, stringsAsFactors = FALSE)
stopifnot(all(Matrix::colSums(counts) > 0), all(counts@x == round(counts@x)))

out <- file.path("inst", "extdata", "cellbench_hvg2000.rds")
dir.create(dirname(out), recursive = TRUE, showWarnings = FALSE)
saveRDS(list(counts = counts, cells = cells), out, compress = "xz")
cat(sprintf("wrote %s: %d genes x %d cells, %d non-zeros, %.2f MB\n", out, nrow(counts),
            ncol(counts), length(counts@x), file.size(out) / 2^20))
