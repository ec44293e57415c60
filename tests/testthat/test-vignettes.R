# The vignettes must knit: run each one's code end to end (knitr only; no pandoc needed).
test_that("vignettes knit", {
  skip_if_not_installed("knitr")
  skip_if_not_installed("SingleCellExperiment")
  # Run from the source tree (make test); R CMD check knits the vignettes itself.
  dir <- file.path("..", "..", "vignettes")
  skip_if_not(dir.exists(dir), "vignette sources not found (R CMD check builds them itself)")
  rmds <- normalizePath(list.files(dir, pattern = "\\.Rmd$", full.names = TRUE))
  for (rmd in rmds) {
    out <- file.path(tempdir(), sub("\\.Rmd$", ".md", basename(rmd)))
    old <- setwd(tempdir())
    on.exit(setwd(old), add = TRUE)
    expect_no_error(suppressMessages(knitr::knit(rmd, out,
                                                 quiet = TRUE, envir = new.env())))
    setwd(old)
    md <- readLines(out)
    # knitr writes errors as output lines ("#> Error" with the vignettes' comment prefix)
    expect_false(any(grepl("^(##|#>) Error", md)), info = basename(rmd))
  }
})
