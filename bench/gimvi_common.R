# What the GIMVI benchmarks share (bench_gimvi.R, gimvi_blend_grid.R): the shared pairs
# with their folds, and the per-gene score. Sourced; needs `data_root`.

read_part <- function(dir, feature_col = "gene") {
  m <- methods::as(Matrix::readMM(gzfile(file.path(dir, "matrix.mtx.gz"))), "CsparseMatrix")
  features <- utils::read.delim(gzfile(file.path(dir, "features.tsv.gz")))
  obs <- utils::read.delim(gzfile(file.path(dir, "obs.tsv.gz")), stringsAsFactors = FALSE)
  list(m = methods::as(m, "dgCMatrix"), features = features, obs = obs)
}

# Panel genes (spatial order), seq and spatial counts (genes x cells) and the folds.
load_pair <- function(name) {
  if (name == "merfish") {
    base <- file.path(data_root, "merfish_hypothalamus")
    sp <- read_part(file.path(base, "spatial"))
    sq <- read_part(file.path(base, "scrna"))
    genes <- sp$features$gene
    rownames(sp$m) <- genes
    rownames(sq$m) <- sq$features$gene
    folds <- utils::read.delim(file.path(base, "folds.tsv"))
    return(list(genes = genes, seq = sq$m[genes, ], spatial = sp$m, folds = folds))
  }
  folds <- utils::read.delim(file.path(data_root, "osmfish", "folds_mop20.tsv"))
  sp <- read_part(file.path(data_root, "osmfish"))
  genes <- sp$features$gene[sp$features$gene %in% folds$gene]
  spatial <- sp$m[match(genes, sp$features$gene), sp$obs$Valid == 1]
  rownames(spatial) <- genes
  mop <- read_part(file.path(data_root, "mop_snareseq2"))
  rna <- mop$features$feature_type == "Gene Expression"
  seq <- mop$m[which(rna)[match(genes, mop$features$name[rna])], ]
  rownames(seq) <- genes
  list(genes = genes, seq = seq, spatial = spatial, folds = folds)
}

spearman <- function(truth, imputed) {
  if (all(imputed == 0)) return(0)
  if (length(unique(truth)) < 2) return(NA_real_)
  suppressWarnings(stats::cor(truth, imputed, method = "spearman"))
}
