# The CPU thread pool's size is set once, before the first computation (in a child process:
# the pool lives as long as the R session).
test_that("set_num_threads() sizes the thread pool before it starts, and says when too late", {
  skip_if_not_installed("callr")
  res <- callr::r(function() {
    library(rscvi)
    set <- set_num_threads(1)
    late <- tryCatch(set_num_threads(2), error = conditionMessage)
    list(set = set, now = get_num_threads(), late = late)
  })
  expect_identical(res$set, 1L)
  expect_identical(res$now, 1L)
  expect_match(res$late, "already runs with 1 threads")
  from_option <- callr::r(function() {
    options(rscvi.num_threads = 1)
    library(rscvi)
    get_num_threads()
  })
  expect_identical(from_option, 1L)
  expect_error(set_num_threads(0), "`n`")
})
