# scArches reference mapping on real data: train on the three 5-cell-line CEL-seq2 plates,
# map the 3-cell-line CEL-seq2 and Drop-seq batches as a query; query cells must land next
# to reference cells of their own cell line (15-NN label transfer accuracy >= 0.95).
test_that("query cells map next to their own cell line (kNN label transfer >= 0.95)", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- rscvi_example_sce()
  in_ref <- grepl("5cl", sce$batch)
  ref <- train(scvi(sce[, in_ref], batch_key = "batch"), max_epochs = 100L, seed = 0L,
               progress = FALSE)
  query <- load_query_data(sce[, !in_ref], ref)
  expect_identical(query$registry$batch_categories,
                   c(ref$registry$batch_categories, "CELseq2_3cl", "Dropseq_3cl"))
  query <- train(query, max_epochs = 100L, seed = 0L, progress = FALSE)
  z_ref <- get_latent_representation(query, x = sce[, in_ref])
  z_query <- get_latent_representation(query)
  d2 <- outer(rowSums(z_query^2), rowSums(z_ref^2), "+") - 2 * z_query %*% t(z_ref)
  ref_labels <- sce$cell_line[in_ref]
  predicted <- apply(d2, 1, function(d) {
    votes <- table(ref_labels[order(d)[1:15]])
    names(votes)[which.max(votes)]
  })
  accuracy <- mean(predicted == sce$cell_line[!in_ref])
  message(sprintf("scArches kNN label transfer accuracy: %.3f (%d query cells)", accuracy,
                  sum(!in_ref)))
  expect_gte(accuracy, 0.95)
})

test_that("load_query_data checks its arguments and keeps the reference untouched", {
  d <- small_data()
  ref <- train(scvi(d$counts, cells = d$cells, batch_key = "batch", n_latent = 3L),
               max_epochs = 2L, seed = 0L, progress = FALSE)
  z_before <- get_latent_representation(ref)
  cells <- d$cells
  cells$batch <- paste0("new_", cells$batch)
  q <- train(load_query_data(d$counts, ref, cells = cells), max_epochs = 2L, seed = 0L,
             progress = FALSE)
  expect_identical(q$registry$n_batch, 10L)
  expect_identical(get_latent_representation(ref), z_before)
  expect_error(load_query_data(d$counts, 42, cells = cells), "`reference`")
  expect_error(load_query_data(d$counts, ref, cells = cells, unfrozen = NA), "`unfrozen`")
  expect_error(load_query_data(d$counts[1:150, ], ref, cells = cells), "genes")
  dir <- file.path(tempdir(), "scarches-ref")
  save_model(ref, dir, overwrite = TRUE)
  q2 <- load_query_data(d$counts, dir, cells = cells)
  expect_s3_class(q2, "SCVI")
})
