# Ctrl-C during train() stops after the current step: the call returns normally, the model
# stays usable and a message says how many epochs ran. SIGINT is sent to a child R process.
test_that("an interrupt stops training cleanly and keeps the model usable", {
  skip_on_os("windows")
  skip_if_not_installed("callr")
  p <- callr::r_bg(function() {
    library(rscvi)
    d <- rscvi_example_data()
    m <- scvi(d, batch_key = "batch")
    msg <- NULL
    m <- withCallingHandlers(
      train(m, max_epochs = 100000L, seed = 0L, progress = FALSE),
      message = function(e) {
        msg <<- conditionMessage(e)
        invokeRestart("muffleMessage")
      })
    list(message = msg, epochs = nrow(history(m)), latent = dim(get_latent_representation(m)))
  }, supervise = TRUE)
  on.exit(p$kill(), add = TRUE)
  # wait until training is under way (library load + first epochs), then interrupt
  Sys.sleep(8)
  expect_true(p$is_alive())
  p$interrupt()
  p$wait(30000)
  expect_false(p$is_alive())
  res <- p$get_result()
  expect_match(res$message, "interrupted after [0-9]+ of 100000 epochs")
  expect_gt(res$epochs, 0)
  expect_identical(res$latent, c(1021L, 10L))
})
