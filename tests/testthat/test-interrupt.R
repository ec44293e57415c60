# Ctrl-C during train() stops after the current step: interactively the call returns
# normally, the model stays usable and a message says how many epochs ran; in a script the
# interrupt stops the script. SIGINT is sent to a child R process.

test_that("an interrupt stops training cleanly and keeps the model usable", {
  skip_on_os("windows")
  skip_if_not_installed("callr")
  p <- interrupted_child(function() {
    library(rscvi)
    options(rscvi.interactive = TRUE)
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
  })
  res <- p$get_result()
  expect_match(res$message, "interrupted after [0-9]+ of 100000 epochs")
  expect_gt(res$epochs, 0)
  expect_identical(res$latent, c(1021L, 10L))
})

test_that("in a script an interrupt stops the script", {
  skip_on_os("windows")
  skip_if_not_installed("callr")
  p <- interrupted_child(function() {
    library(rscvi)
    m <- scvi(rscvi_example_data(), batch_key = "batch")
    m <- train(m, max_epochs = 100000L, seed = 0L, progress = FALSE)
    "went on"
  })
  expect_error(p$get_result(), "training interrupted \\(Ctrl-C\\) after [0-9]+ of 100000 epochs")
})

test_that("training reports progress as lines in scripts, and verbose = FALSE silences it", {
  m <- scvi(rscvi_example_data(), batch_key = "batch")
  # Progress goes to the message stream (stderr), as message() does.
  out <- capture.output(invisible(train(m, max_epochs = 20L, seed = 0L, progress = TRUE)),
                        type = "message")
  expect_length(out, 20L)   # every 5% of the epochs
  expect_match(out[[1]], "^Epoch 1/20 \\(5%\\) .* elapsed, ETA .* \\| elbo_train [0-9.]+")
  expect_match(out[[20]], "^Epoch 20/20 \\(100%\\)")
  long <- capture.output(invisible(train(m, max_epochs = 60L, progress = TRUE)),
                         type = "message")
  expect_identical(sub(" .*", "", sub("^Epoch ", "", long)),
                   paste0(c(1, seq(3, 60, by = 3)), "/60"))   # epoch 1, then every 3rd
  quiet <- capture.output(invisible(train(m, max_epochs = 2L, progress = TRUE, verbose = FALSE)),
                          type = "message")
  expect_length(quiet, 0L)
  expect_error(train(m, max_epochs = 2L, verbose = NA), "`verbose`")
})

test_that("an interrupt stops a long query with an error", {
  skip_on_os("windows")
  skip_if_not_installed("callr")
  p <- interrupted_child(function() {
    library(rscvi)
    m <- train(scvi(rscvi_example_data(), batch_key = "batch"), max_epochs = 1L,
               progress = FALSE)
    cat("ready\n")
    tryCatch({
      get_normalized_expression(m, n_samples = 1e7L)
      "finished"
    }, error = conditionMessage)
  }, wait = 30)
  expect_match(p$get_result(), "interrupted \\(Ctrl-C\\)")
})

test_that("long queries report their progress in scripts", {
  skip_on_os("windows")
  skip_if_not_installed("callr")
  err <- tempfile()
  on.exit(unlink(err), add = TRUE)
  callr::r(function() {
    library(rscvi)
    options(rscvi.progress = TRUE, rscvi.interactive = FALSE)
    m <- train(scvi(rscvi_example_data(), batch_key = "batch"), max_epochs = 1L,
               progress = FALSE)
    # all 1,021 cells x 300 importance samples: ~10 s, well past the 3-s quiet start
    invisible(get_marginal_ll(m, n_mc_samples = 300L))
  }, stderr = err)
  lines <- grep("^query [0-9]+% done, .* elapsed, ETA", readLines(err), value = TRUE)
  expect_gte(length(lines), 2L)
  pct <- as.integer(sub("^query ([0-9]+)%.*", "\\1", lines))
  expect_true(all(diff(pct) > 0))
})
