#!/usr/bin/env Rscript
# scArches across tools: does a query mapped in R onto a reference trained in Python (a folder
# saved by scvi-tools 1.5.1) reach the label-transfer accuracy of the same mapping in Python?
# Data: "cellbench" (rscvi_example_sce(): 1,021 cells, 2,000 genes; query = Dropseq_3cl,
# labels = cell line) or "mop" (the RNA of mop_snareseq2: 10,309 nuclei, 1,677 genes, 10
# libraries; query = the last two libraries by name, labels = the 15 cell types,
# "Mis" left out of voting and scoring). Each mapping: the query latent's 15 nearest
# reference cells vote its label (the same code scores every row). Rows: scvi-tools
# reference + scvi-tools query; scvi-tools reference + rscvi query (load_query_data() on the
# saved folder); rscvi reference + rscvi query. Needs the venv of bench/setup-venv.sh.
#
#   Rscript bench/bench_scvi_tools_arches.R [epochs] [seed] [data]   (default 100, 0, cellbench)
#
# Writes bench/results/scvi-tools-arches-<data>-<epochs>.md.
args <- commandArgs(trailingOnly = TRUE)
epochs <- if (length(args) >= 1) as.integer(args[[1]]) else 100L
seed <- if (length(args) >= 2) as.integer(args[[2]]) else 0L
data_name <- if (length(args) >= 3) args[[3]] else "cellbench"
Sys.setenv(RAYON_NUM_THREADS = "2")
suppressPackageStartupMessages(library(rscvi))
here <- if (file.exists("bench/bench_scvi_tools_arches.R")) "bench" else stop("run from the repository root")
venv <- Sys.getenv("RSCVI_BENCH_VENV", file.path(Sys.getenv("HOME"), ".cache/rscvi/bench-venv"))
if (system2("bash", file.path(here, "setup-venv.sh")) != 0) stop("bench/setup-venv.sh failed")

if (data_name == "cellbench") {
  sce <- rscvi_example_sce()
  sce$label <- as.character(sce$cell_line)
  sce$is_query <- sce$batch == "Dropseq_3cl"
} else if (data_name == "mop") {
  data_dir <- file.path(normalizePath(Sys.getenv("RSCVI_SHARED_DATA", file.path("..", "shared", "data"))),
                        "mop_snareseq2")
  n_cells <- NA
  n_regions <- 2L   # the ATAC is not used; two peaks keep the loader cheap
  source(file.path(here, "multivi_data.R"))
  query_libraries <- utils::tail(sort(unique(obs$library)), 2)
  sce <- SingleCellExperiment::SingleCellExperiment(
    list(counts = rna[Matrix::rowSums(rna) > 0, ]),
    colData = S4Vectors::DataFrame(batch = obs$library, label = obs$cell_type,
                                   is_query = obs$library %in% query_libraries,
                                   row.names = colnames(rna)))
} else {
  stop("data must be cellbench or mop")
}
is_query <- sce$is_query
out <- file.path(tempdir(), "arches")
dir.create(out, showWarnings = FALSE)
h5ad <- file.path(out, "data.h5ad")
write_h5ad(sce, h5ad, overwrite = TRUE)
status <- system2(file.path(venv, "bin", "python"),
                  c(file.path(here, "scvi_tools_arches.py"), h5ad, out, epochs, seed))
if (status != 0) stop("the scvi-tools run failed")

labels <- stats::setNames(as.character(sce$label), colnames(sce))
transfer_accuracy <- function(z_ref, z_query) {
  d <- as.matrix(stats::dist(rbind(z_query, z_ref)))[seq_len(nrow(z_query)),
                                                       nrow(z_query) + seq_len(nrow(z_ref))]
  ref_labels <- labels[rownames(z_ref)]
  voters <- ref_labels != "Mis"
  voted <- apply(d, 1, function(row) {
    votes <- table(ref_labels[voters][order(row[voters])[1:15]])
    names(votes)[which.max(votes)]
  })
  scored <- labels[rownames(z_query)] != "Mis"
  mean(voted[scored] == labels[rownames(z_query)][scored])
}
read_latent <- function(f) as.matrix(utils::read.csv(file.path(out, f), row.names = 1))

ref_dir <- file.path(out, "reference")
py_ref <- load_model(ref_dir, x = sce[, !is_query])
q <- train(load_query_data(sce[, is_query], ref_dir), max_epochs = epochs, seed = seed,
           progress = FALSE)
r_ref <- train(scvi(sce[, !is_query], batch_key = "batch"), max_epochs = epochs, seed = seed,
               progress = FALSE)
r_q <- train(load_query_data(sce[, is_query], r_ref), max_epochs = epochs, seed = seed,
             progress = FALSE)
rows <- data.frame(
  reference = c("scvi-tools", "scvi-tools (read by rscvi)", "rscvi"),
  query = c("scvi-tools", "rscvi", "rscvi"),
  accuracy = c(
    transfer_accuracy(read_latent("reference_latent.csv"), read_latent("query_latent.csv")),
    transfer_accuracy(get_latent_representation(py_ref), get_latent_representation(q)),
    transfer_accuracy(get_latent_representation(r_ref), get_latent_representation(r_q))))
# the reference as rscvi reads it: its latent means against scvi-tools' own
ref_gap <- max(abs(get_latent_representation(py_ref) - read_latent("reference_latent.csv")))
print(rows, row.names = FALSE)
lines <- c(sprintf("# scArches across tools (bench/bench_scvi_tools_arches.R, %s, %d epochs, seed %d)",
                   data_name, epochs, seed), "",
           sprintf(paste0("Reference %d cells (%d batches), query %d cells (batches %s); ",
                          "15-NN label transfer from reference to query latent; load %s."),
                   sum(!is_query), length(unique(sce$batch[!is_query])), sum(is_query),
                   paste(unique(sce$batch[is_query]), collapse = ", "),
                   readLines("/proc/loadavg")), "",
           "| reference | query | label transfer accuracy |", "|---|---|---|",
           sprintf("| %s | %s | %.3f |", rows$reference, rows$query, rows$accuracy), "",
           sprintf(paste0("The scvi-tools reference read by rscvi gives scvi-tools' reference ",
                          "latent means to %.1e (max abs difference)."), ref_gap))
writeLines(lines, file.path(here, "results",
                            sprintf("scvi-tools-arches-%s-%d.md", data_name, epochs)))
