# Expectations that the model tests share.

# plot() of a trained model draws its training curves (on a null device) and returns the
# model.
expect_plots <- function(model) {
  grDevices::pdf(NULL)
  on.exit(grDevices::dev.off(), add = TRUE)
  expect_identical(plot(model), model)
}

# The reduction `name` that `run` (Run<KIND>()) added to the Seurat object `so`: an embedding
# of dimensions `dims` with columns <KIND>_1, ..., and the model in its misc slot; `run`
# refuses a malformed key. Returns the embedding and the model, invisibly.
expect_run_reduction <- function(so, name, kind, dims, run) {
  emb <- SeuratObject::Embeddings(so, name)
  expect_identical(dim(emb), dims)
  expect_identical(colnames(emb), paste0(kind, "_", seq_len(dims[[2]])))
  model <- SeuratObject::Misc(so[[name]], "model")
  expect_s3_class(model, kind)
  expect_error(run(so, reduction.key = "bad key"), "reduction.key")
  invisible(list(embedding = emb, model = model))
}
