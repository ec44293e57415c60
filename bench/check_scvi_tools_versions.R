#!/usr/bin/env Rscript
# Which scvi-tools versions rscvi exchanges models with, both ways. For each Python
# environment given (default: ~/.cache/rscvi/venv-scvi13 and venv-scvi14 with scvi-tools
# 1.3.3 and 1.4.3, and the bench venv with 1.5.1), that scvi-tools trains and saves the
# fixture models of tools/make-scvi-tools-fixtures.py (SCVI x2, MULTIVI with and without
# proteins, GIMVI) into a temporary folder, rscvi reads them and compares its latent means
# with what that version computed; then bench/check_scvi_tools_save.R has that version load
# what rscvi writes.
#
#   Rscript bench/check_scvi_tools_versions.R [venv ...]
#
# An environment for another version, sharing the bench venv's packages (torch etc.):
#   python3.12 -m venv ~/.cache/rscvi/venv-scvi13
#   echo ~/.cache/rscvi/bench-venv/lib/python3.12/site-packages \
#     > ~/.cache/rscvi/venv-scvi13/lib/python3.12/site-packages/bench-venv.pth
#   ~/.cache/rscvi/venv-scvi13/bin/pip install "scvi-tools==1.3.3"
#
# Writes bench/results/scvi-tools-versions.md.
suppressPackageStartupMessages(library(rscvi))
if (!file.exists("bench/check_scvi_tools_versions.R")) stop("run from the repository root")
home <- Sys.getenv("HOME")
venvs <- commandArgs(trailingOnly = TRUE)
if (!length(venvs)) {
  venvs <- file.path(home, ".cache/rscvi", c("venv-scvi13", "venv-scvi14", "bench-venv"))
}
shipped <- function(f) system.file("extdata", f, package = "rscvi")
latent_csv <- function(f) as.matrix(utils::read.csv(f, row.names = 1, check.names = FALSE))

# rscvi's latent means of each fixture model in `dir` against the saving version's
read_side <- function(dir) {
  sce <- read_h5ad(shipped("cellbench_small.h5ad"))
  diff <- function(z, ref) max(abs(z - ref[rownames(z), , drop = FALSE]))
  c(scvi = diff(get_latent_representation(load_model(file.path(dir, "scvi"), x = sce)),
                latent_csv(file.path(dir, "scvi", "latent.csv"))),
    `scvi-covariates` = diff(get_latent_representation(
      load_model(file.path(dir, "scvi-covariates"), x = sce)),
      latent_csv(file.path(dir, "scvi-covariates", "latent.csv"))),
    multivi = diff(get_latent_representation(
      load_model(file.path(dir, "multivi"), x = read_h5mu(shipped("snareseq2_small.h5mu")))),
      latent_csv(file.path(dir, "multivi", "latent.csv"))),
    `multivi-protein` = diff(
      get_latent_representation(load_model(file.path(dir, "multivi-protein"))),
      latent_csv(file.path(dir, "multivi-protein", "latent.csv"))),
    gimvi = {
      z <- get_latent_representation(load_model(file.path(dir, "gimvi")))
      max(vapply(names(z), function(p) {
        diff(z[[p]], latent_csv(file.path(dir, "gimvi", sprintf("latent_%s.csv", p))))
      }, numeric(1)))
    })
}

rows <- character(0)
for (venv in venvs) {
  python <- file.path(venv, "bin", "python")
  version <- system2(python, c("-c", shQuote("import scvi; print(scvi.__version__)")),
                     stdout = TRUE, stderr = FALSE)
  version <- utils::tail(version, 1)
  out <- file.path(tempdir(), paste0("scvi-tools-", version))
  status <- system2(python, "tools/make-scvi-tools-fixtures.py",
                    env = paste0("RSCVI_FIXTURE_OUT=", out), stdout = FALSE, stderr = FALSE)
  if (status != 0) stop("scvi-tools ", version, " could not write the fixture models")
  read <- read_side(out)
  written <- file.path(tempdir(), paste0("written-", version, ".md"))
  status <- system2(file.path(R.home("bin"), "Rscript"), "bench/check_scvi_tools_save.R",
                    env = c(paste0("RSCVI_BENCH_VENV=", venv),
                            paste0("RSCVI_BENCH_RESULTS=", written)),
                    stdout = FALSE, stderr = FALSE)
  if (status != 0) stop("scvi-tools ", version, " could not load what rscvi writes")
  table <- grep("^\\| [a-z_]+ \\| [0-9.e+-]+ \\|$", readLines(written), value = TRUE)
  worst_written <- max(as.numeric(sub(".*\\| ([0-9.e+-]+) \\|$", "\\1", table)))
  rows <- c(rows, sprintf("| %s | %s | %.1e (%d models) |", version,
                          paste(sprintf("%s %.1e", names(read), read), collapse = ", "),
                          worst_written, length(table)))
  cat(utils::tail(rows, 1), "\n")
}
writeLines(c(
  "# scvi-tools versions rscvi exchanges models with",
  "",
  paste("bench/check_scvi_tools_versions.R: each version trains and saves the fixture models",
        "(tools/make-scvi-tools-fixtures.py) and rscvi reads them (largest latent-mean",
        "difference, rscvi vs that version); that version loads the models rscvi writes",
        "(bench/check_scvi_tools_save.R; largest difference over its models)."),
  "",
  "| scvi-tools | rscvi reads its models | it reads rscvi's models |",
  "|---|---|---|", rows, "",
  sprintf("Run %s.", format(Sys.time(), "%Y-%m-%d %H:%M"))),
  "bench/results/scvi-tools-versions.md")
