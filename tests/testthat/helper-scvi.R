# Small inputs for the model tests: 300 random cells x the first 200 genes of the example data
# (every cell and gene has counts), so a 3-epoch fit takes well under a second.
small_data <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      d <- rscvi_example_data()
      set.seed(1)
      j <- sort(sample(ncol(d$counts), 300))
      cache <<- list(counts = d$counts[1:200, j], cells = d$cells[j, c("batch", "cell_line")])
    }
    cache
  }
})

small_sce <- function() {
  testthat::skip_if_not_installed("SingleCellExperiment")
  d <- small_data()
  SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = d$counts),
    colData = S4Vectors::DataFrame(d$cells, check.names = FALSE))
}

# A trained small model (3 epochs, seed 0), built once per test file that asks for it.
small_model <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      d <- small_data()
      cache <<- train(scvi(d$counts, cells = d$cells, batch_key = "batch",
                           labels_key = "cell_line", n_latent = 5L),
                      max_epochs = 3L, seed = 0L, device = "cpu", progress = FALSE)
    }
    cache
  }
})

# A model's training history without the timing column (what a seed reproduces).
untimed <- function(m) history(m)[names(history(m)) != "seconds"]
