# Writes the small real MULTIVI and SPLICEVI datasets of inst/extdata as Matrix Market +
# TSV, the formats rscvi-cli reads (it has no R and no HDF5 on the GPU machine), into
# .gpu/snareseq2 and .gpu/splikit for `rscvi-cli gpu-check --multivi DIR --splicevi DIR`.
#   Rscript bench/gpu/export_small.R [out = .gpu]
suppressPackageStartupMessages(library(Matrix))
out <- commandArgs(trailingOnly = TRUE)[1]
if (is.na(out)) out <- ".gpu"

write_set <- function(dir, counts, obs, extra) {
  dir.create(dir, recursive = TRUE, showWarnings = FALSE)
  mtx <- file.path(dir, "matrix.mtx")
  writeMM(as(counts, "CsparseMatrix"), mtx)
  system2("gzip", c("-f", "-9", shQuote(mtx)))
  con <- gzfile(file.path(dir, "obs.tsv.gz"), "w")
  write.table(obs, con, sep = "\t", quote = FALSE, row.names = FALSE)
  close(con)
  for (name in names(extra)) writeLines(as.character(extra[[name]]), file.path(dir, name))
}

snare <- readRDS("inst/extdata/mop_snareseq2_small.rds")
write_set(file.path(out, "snareseq2"), rbind(snare$rna, snare$atac), snare$cells,
          list(n_genes.txt = nrow(snare$rna)))

spl <- readRDS("inst/extdata/splikit_small.rds")
atse <- match(spl$atse, unique(spl$atse)) - 1L
write_set(file.path(out, "splikit"), rbind(spl$expression, spl$junctions), spl$cells,
          list(n_genes.txt = nrow(spl$expression), atse.txt = atse))
cat("snareseq2:", nrow(snare$rna), "genes +", nrow(snare$atac), "regions x", ncol(snare$rna),
    "cells; splikit:", nrow(spl$expression), "genes +", nrow(spl$junctions), "junctions x",
    ncol(spl$junctions), "cells\n")
