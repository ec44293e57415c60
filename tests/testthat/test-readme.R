# The README's "Use" block is what new users run first: it must run as written.
test_that("the README's Use block runs end to end", {
  skip_if_not_installed("SingleCellExperiment")
  skip_if_not_installed("SeuratObject")
  readme <- file.path("..", "..", "README.md")
  skip_if_not(file.exists(readme), "README.md not found (R CMD check runs the examples instead)")
  lines <- readLines(readme)
  start <- which(lines == "## Use") + 2L
  expect_identical(lines[start], "```r")
  end <- start + which(lines[-seq_len(start)] == "```")[1]
  code <- lines[(start + 1L):(end - 1L)]
  dir <- tempfile("readme-")
  dir.create(dir)
  old <- setwd(dir)
  on.exit(setwd(old), add = TRUE)
  grDevices::pdf(NULL)
  on.exit(grDevices::dev.off(), add = TRUE)
  env <- new.env(parent = globalenv())
  expect_no_error(suppressWarnings(suppressMessages(
    eval(parse(text = code, keep.source = FALSE), envir = env))))
  # what the block promises
  expect_identical(dim(env$de)[2] > 0, TRUE)
  # the model saw 1,000 genes: their normalized expression sits in an altExp of that name
  expect_identical(dim(SingleCellExperiment::altExp(env$sce, "normalized_expression")),
                   c(1000L, 1021L))
  expect_true("scvi" %in% SeuratObject::Reductions(env$seu))
  expect_s4_class(env$acc, "dgCMatrix")
  expect_identical(dim(env$psi), c(600L, 1000L))
})
