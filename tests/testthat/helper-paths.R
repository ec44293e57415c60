# Locates the shared data folder that sits beside the repository (not part of the package).
# Tests run with working directory tests/testthat, so the repository root is ../.. and the
# shared folder ../../../shared/data; under R CMD check (rscvi.Rcheck/tests/testthat inside
# the repository) it is one level further up. RSCVI_SHARED_DATA overrides both.
shared_data_dir <- function() {
  d <- Sys.getenv("RSCVI_SHARED_DATA", "")
  if (nzchar(d)) return(d)
  candidates <- c(file.path("..", "..", "..", "shared", "data"),
                  file.path("..", "..", "..", "..", "shared", "data"))
  hit <- candidates[dir.exists(candidates)]
  normalizePath(if (length(hit)) hit[[1]] else candidates[[1]], mustWork = FALSE)
}

skip_if_no_shared_data <- function(subdir = NULL) {
  d <- shared_data_dir()
  if (!is.null(subdir)) d <- file.path(d, subdir)
  testthat::skip_if_not(dir.exists(d), paste("shared data not found:", d))
  invisible(d)
}
