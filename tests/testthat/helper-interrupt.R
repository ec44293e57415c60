# Shared by the tests of Ctrl-C (test-interrupt.R, test-parallel.R).

# Runs `fun` in a child R process, sends it SIGINT once it printed "ready" (or after `wait`
# seconds) and returns the process after it ended.
interrupted_child <- function(fun, wait = 8) {
  p <- callr::r_bg(fun, supervise = TRUE)
  for (i in seq_len(wait * 2)) {
    if (any(grepl("ready", p$read_output_lines()))) break
    Sys.sleep(0.5)
  }
  Sys.sleep(2)
  expect_true(p$is_alive())
  p$interrupt()
  p$wait(30000)
  expect_false(p$is_alive())
  if (p$is_alive()) p$kill()
  p
}
