# Runs the testthat suite against the installed rscvi and prints one summary line the CI
# harness parses: "rscvi: N passed, N failed, N skipped". Exits 1 on any failure or error.
# Run from the repository root (make test / make test-r).
suppressPackageStartupMessages(library(testthat))
# The progress reporter shows a line per file and, at the end, every failure with its
# location and message; by default it gives up after 10 failures, which hides the rest.
options(testthat.progress.max_fails = .Machine$integer.max, warn = 1)
# Spinner updates become one line each in a CI log: only update on a terminal.
reporter <- ProgressReporter$new(show_praise = FALSE,
                                 update_interval = if (isatty(stdout())) 0.1 else Inf)

res <- tryCatch(
  as.data.frame(test_dir("tests/testthat", package = "rscvi", load_package = "installed",
                         reporter = reporter, stop_on_failure = FALSE,
                         stop_on_warning = FALSE)),
  error = function(e) {
    # An error outside any test (e.g. in a helper file) aborts the whole run.
    message("rscvi: test run aborted: ", conditionMessage(e))
    NULL
  })

if (is.null(res)) {
  cat("rscvi: 0 passed, 1 failed, 0 skipped\n")
  quit(status = 1)
}
passed <- sum(res$passed)
failed <- sum(res$failed) + sum(res$error)
skipped <- sum(res$skipped)
cat(sprintf("rscvi: %d passed, %d failed, %d skipped\n", passed, failed, skipped))
quit(status = if (failed > 0) 1 else 0)
