# Builds inst/extdata/mop_snareseq2_small.rds, the small paired RNA + ATAC example of
# rscvi_example_multiome() (MULTIVI examples and tests), from the SNARE-seq2 copy in the
# shared data folder (see inst/extdata/README.md). Run from the repository root:
#   Rscript tools/make-extdata-multiome.R [path/to/shared/data/mop_snareseq2]
# Output: list(rna = dgCMatrix genes x cells, atac = dgCMatrix regions x cells,
#              cells = data.frame) for 600 cells of three libraries, the genes (of 1,677)
# with counts in those cells and the 2,000 regions accessible in the most of them.
args <- commandArgs(trailingOnly = TRUE)
src <- if (length(args)) args[[1]] else file.path("..", "shared", "data", "mop_snareseq2")
stopifnot(dir.exists(src))

read_tsv <- function(f, ...) utils::read.delim(file.path(src, f), stringsAsFactors = FALSE,
                                               check.names = FALSE, ...)
counts <- methods::as(Matrix::readMM(file.path(src, "matrix.mtx.gz")), "CsparseMatrix")
features <- read_tsv("features.tsv.gz")
barcodes <- read_tsv("barcodes.tsv.gz", header = FALSE)[[1]]
obs <- read_tsv("obs.tsv.gz")
stopifnot(nrow(counts) == nrow(features), ncol(counts) == length(barcodes),
          identical(obs$barcode, barcodes))
dimnames(counts) <- list(features$id, barcodes)
is_gene <- features$feature_type == "Gene Expression"
stopifnot(sum(is_gene) == 1677L, all(features$feature_type[!is_gene] == "Peaks"),
          all(which(is_gene) < min(which(!is_gene))))

# 200 random cells from each of three libraries (batches), in matrix order.
set.seed(20240601)
libraries <- c("09A", "09B", "09C")
keep <- sort(unlist(lapply(libraries, function(l) sample(which(obs$library == l), 200L))))
rna <- counts[is_gene, keep]
rna <- rna[Matrix::rowSums(rna) > 0, ]   # genes without counts here would only warn
atac_all <- counts[!is_gene, keep]
# The 2,000 regions with counts in the most of these cells (ties: matrix order), kept in
# matrix (genomic) order.
n_cells_open <- Matrix::rowSums(atac_all > 0)
top <- sort(order(-n_cells_open, seq_along(n_cells_open), method = "radix")[1:2000])
atac <- atac_all[top, ]
stopifnot(all(Matrix::colSums(rna) > 0), all(rna@x == round(rna@x)),
          all(atac@x == round(atac@x)))

cells <- data.frame(library = obs$library[keep], cell_type = obs$cell_type[keep],
                    cluster = obs$cluster[keep], row.names = barcodes[keep],
                    stringsAsFactors = FALSE)
rna <- methods::as(rna, "dgCMatrix")
atac <- methods::as(atac, "dgCMatrix")

out <- file.path("inst", "extdata", "mop_snareseq2_small.rds")
dir.create(dirname(out), recursive = TRUE, showWarnings = FALSE)
saveRDS(list(rna = rna, atac = atac, cells = cells), out, compress = "xz")
cat(sprintf(paste0("wrote %s: %d genes + %d regions x %d cells, %d + %d non-zeros, ",
                   "%d cells without ATAC counts, %.2f MB\n"), out, nrow(rna), nrow(atac),
            ncol(rna), length(rna@x), length(atac@x), sum(Matrix::colSums(atac) == 0),
            file.size(out) / 2^20))
