# The data of the MULTIVI benchmarks (bench_multivi.R, bench_multivi_de.R), loaded as
# scvi_tools_multivi.py loads them (same subsample rules): `data_dir`, `n_cells` and
# `n_regions` must be set. Defines rna, atac (features x cells), obs, group (mosaic group),
# cell_names, the stand-in ADT counts `adt` (proteins x cells) with the types they mark, and
# the latent-space metrics both benchmarks report.

m <- methods::as(Matrix::readMM(file.path(data_dir, "matrix.mtx.gz")), "CsparseMatrix")
features <- utils::read.delim(gzfile(file.path(data_dir, "features.tsv.gz")))
obs <- utils::read.delim(gzfile(file.path(data_dir, "obs.tsv.gz")), stringsAsFactors = FALSE)
barcodes <- local({
  con <- gzfile(file.path(data_dir, "barcodes.tsv.gz"))
  on.exit(close(con))
  readLines(con)
})
groups <- utils::read.delim(file.path(data_dir, "mosaic_groups.tsv"), stringsAsFactors = FALSE)
genes <- which(features$feature_type == "Gene Expression")
peaks <- which(features$feature_type == "Peaks")
if (!is.na(n_regions)) {
  open_cells <- Matrix::rowSums(m[peaks, ] > 0)
  peaks <- sort(peaks[order(-open_cells, seq_along(open_cells))[seq_len(n_regions)]])
}
cells <- seq_len(ncol(m))
if (!is.na(n_cells)) cells <- seq(1L, ncol(m), by = max(ncol(m) %/% n_cells, 1L))[seq_len(n_cells)]
rna <- m[genes, cells]
atac <- m[peaks, cells]
rownames(rna) <- features$name[genes]
rownames(atac) <- features$id[peaks]
colnames(rna) <- colnames(atac) <- barcodes[cells]
obs <- obs[cells, ]
rownames(obs) <- barcodes[cells]
group <- groups$group[match(barcodes[cells], groups$barcode)]
cell_names <- barcodes[cells]

# Stand-in ADT counts (proteins x cells): 6 antibodies each mark one annotated cell type.
marked <- c(ADT_L23 = "L2/3", ADT_L45 = "L4/5", ADT_L6 = "L6", ADT_Oligo = "Oligo",
            ADT_Astro = "Astro", ADT_Pvalb = "Pvalb")
adt <- local({
  set.seed(0)
  depth <- stats::rlnorm(length(cells), 0, 0.3)
  background <- c(3, 5, 8, 4, 6, 10)
  out <- t(vapply(seq_along(marked), function(k) {
    as.numeric(stats::rpois(length(cells), depth * (background[k] +
                                                     50 * (obs$cell_type == marked[[k]]))))
  }, numeric(length(cells))))
  dimnames(out) <- list(names(marked), cell_names)
  out
})

# kNN label purity and within-cell-type batch mixing of a latent space (k = 15) over the
# cells `keep`.
knn_metrics <- function(z, keep) c(
  knn_purity = knn_purity(z[keep, ], obs$cell_type[keep], 15L),
  batch_mixing = batch_mixing(z[keep, ], obs$cell_type[keep], obs$library[keep], 15L))
