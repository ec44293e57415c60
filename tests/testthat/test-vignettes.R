# The vignettes must knit: run each one's code end to end (knitr only; no pandoc needed).
test_that("vignettes knit", {
  skip_if_not_installed("knitr")
  skip_if_not_installed("SingleCellExperiment")
  dir <- file.path("..", "..", "vignettes")
  if (!dir.exists(dir)) dir <- system.file("doc", package = "rscvi")
  rmds <- list.files(dir, pattern = "\\.Rmd$", full.names = TRUE)
  skip_if(length(rmds) == 0, "vignette sources not found")
  for (rmd in rmds) {
    out <- file.path(tempdir(), sub("\\.Rmd$", ".md", basename(rmd)))
    old <- setwd(tempdir())
    on.exit(setwd(old), add = TRUE)
    expect_no_error(suppressMessages(knitr::knit(normalizePath(file.path(old, rmd)), out,
                                                 quiet = TRUE, envir = new.env())))
    setwd(old)
    md <- readLines(out)
    expect_false(any(grepl("^## Error", md)), info = basename(rmd))
  }
})
