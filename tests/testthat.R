# R CMD check entry point; `make test` runs tools/run-tests.R instead.
library(testthat)
library(rscvi)

test_check("rscvi")
