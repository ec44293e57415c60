test_that("prepare_query_data pads, reorders and drops genes to the reference's", {
  d <- small_data()
  ref <- scvi(d$counts, cells = d$cells, batch_key = "batch")
  genes <- rownames(d$counts)
  # a query with genes reversed, 30 reference genes missing and 2 foreign ones
  qc <- d$counts[rev(genes[31:200]), 1:10]
  extra <- Matrix::Matrix(1, nrow = 2, ncol = 10, sparse = TRUE,
                          dimnames = list(c("foreign1", "foreign2"), colnames(qc)))
  qc <- rbind(qc, extra)
  p <- prepare_query_data(qc, ref)
  expect_s4_class(p, "dgCMatrix")
  expect_identical(rownames(p), genes)
  expect_identical(colnames(p), colnames(qc))
  expect_equal(sum(p[genes[1:30], ]), 0)
  expect_equal(as.matrix(p[genes[31:200], ]), as.matrix(d$counts[genes[31:200], 1:10]))
  # usable with the reference model as new data
  m <- train(ref, max_epochs = 1L, seed = 0L, progress = FALSE)
  p <- p[, Matrix::colSums(p) > 0]
  z <- get_latent_representation(m, x = list(counts = p, cells = d$cells[colnames(p), ]))
  expect_identical(nrow(z), ncol(p))
  # warns below 80% of the reference genes, and works from a saved model
  dir <- file.path(tempdir(), "query-ref")
  save_model(m, dir, overwrite = TRUE)
  expect_warning(prepare_query_data(d$counts[1:100, 1:5], dir), "only 100 of the reference's 200")
  expect_error(prepare_query_data(qc, tempdir()), "no saved model")
  expect_error(prepare_query_data(qc, 42), "`reference`")
})

test_that("prepare_query_data keeps the container type and cell metadata", {
  sce <- small_sce()
  ref <- scvi(sce, batch_key = "batch")
  expect_warning(prepare_query_data(sce[200:150, 1:6], ref), "only 51 of the reference's 200")
  q <- suppressWarnings(prepare_query_data(sce[200:150, 1:6], ref))
  expect_s4_class(q, "SingleCellExperiment")
  expect_identical(rownames(q), rownames(sce))
  expect_identical(q$batch, sce$batch[1:6])
})
