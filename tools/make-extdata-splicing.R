# Builds inst/extdata/splikit_small.rds, the small splicing + expression example of
# rscvi_example_splicing() (SPLICEVI examples, tests and vignette), from splikit's toy data in
# the shared data folder (see inst/extdata/README.md). Run from the repository root:
#   Rscript tools/make-extdata-splicing.R [path/to/shared/data/splikit_splicing]
# Output: list(expression = dgCMatrix genes x cells, junctions = dgCMatrix junctions x cells,
#              atse = event id per junction, cells = data.frame(library))
# for 600 cells (stratified over the 11 library tags), the genes (of 500) with counts in them
# and the 500 events observed in the most of those cells. Each event is one 2-junction ATSE:
# its inclusion junction (M1 reads) and its exclusion junction (M2 reads), so the ATSE total
# is M1 + M2.
args <- commandArgs(trailingOnly = TRUE)
root <- if (length(args)) args[[1]] else file.path("..", "shared", "data", "splikit_splicing")
src <- file.path(root, "events_m1m2")
stopifnot(dir.exists(src))

read_mm <- function(f) {
  Matrix::drop0(methods::as(Matrix::readMM(file.path(src, f)), "CsparseMatrix"))
}
read_tsv <- function(f) utils::read.delim(file.path(src, f), stringsAsFactors = FALSE)
barcodes <- read_tsv("barcodes.tsv.gz")
events <- read_tsv("events.tsv.gz")$event_id
genes <- read_tsv("genes.tsv.gz")$gene_id
m1 <- read_mm("m1_inclusion.mtx.gz")
m2 <- read_mm("m2_exclusion.mtx.gz")
expr <- read_mm("gene_expression.mtx.gz")
stopifnot(identical(dim(m1), c(length(events), nrow(barcodes))), identical(dim(m2), dim(m1)),
          identical(dim(expr), c(length(genes), nrow(barcodes))), !anyDuplicated(events))

# 600 cells, each library tag in proportion to its size (largest remainders), in matrix order.
set.seed(20240607)
n_lib <- table(barcodes$suffix)
quota <- 600 * n_lib / sum(n_lib)
alloc <- floor(quota)
extra <- 600 - sum(alloc)
top_rem <- order(-(quota - alloc), names(alloc), method = "radix")[seq_len(extra)]
alloc[top_rem] <- alloc[top_rem] + 1
keep <- sort(unlist(lapply(names(alloc), function(l) {
  sample(which(barcodes$suffix == l), alloc[[l]])
})))

# The 500 events observed (M1 + M2 > 0) in the most of these cells (ties: matrix order), kept
# in matrix order.
observed <- Matrix::rowSums((m1[, keep] + m2[, keep]) > 0)
ev <- sort(order(-observed, seq_along(observed), method = "radix")[1:500])

# Junction rows interleaved per event: <event>:inc (M1), <event>:exc (M2).
junctions <- rbind(m1[ev, keep], m2[ev, keep])[as.vector(rbind(seq_along(ev),
                                                               length(ev) + seq_along(ev))), ]
cell_names <- barcodes$barcode[keep]
dimnames(junctions) <- list(paste0(rep(events[ev], each = 2), c(":inc", ":exc")), cell_names)
expression <- expr[, keep]
dimnames(expression) <- list(genes, cell_names)
expression <- expression[Matrix::rowSums(expression) > 0, ]   # others would only warn
atse <- rep(events[ev], each = 2)
stopifnot(all(junctions@x == round(junctions@x)), all(expression@x == round(expression@x)),
          all(Matrix::colSums(expression) > 0 | Matrix::colSums(junctions) > 0))

cells <- data.frame(library = barcodes$suffix[keep], row.names = cell_names,
                    stringsAsFactors = FALSE)
out <- file.path("inst", "extdata", "splikit_small.rds")
dir.create(dirname(out), recursive = TRUE, showWarnings = FALSE)
saveRDS(list(expression = methods::as(expression, "dgCMatrix"),
             junctions = methods::as(junctions, "dgCMatrix"), atse = atse, cells = cells),
        out, compress = "xz")
tot <- junctions[c(TRUE, FALSE), ] + junctions[c(FALSE, TRUE), ]
cat(sprintf(paste0("wrote %s: %d genes, %d junctions (%d events) x %d cells; %.1f%% of ",
                   "(event, cell) pairs observed; %d cells without junction reads, %d ",
                   "without expression; %.2f MB\n"), out, nrow(expression), nrow(junctions),
            length(ev), length(keep), 100 * mean(as.matrix(tot) > 0),
            sum(Matrix::colSums(junctions) == 0), sum(Matrix::colSums(expression) == 0),
            file.size(out) / 2^20))
