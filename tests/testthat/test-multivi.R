# MULTIVI from R: construction from matrices, SingleCellExperiment (ATAC in an altExp) and
# Seurat; mosaic data (paired, RNA-only and ATAC-only cells in one model); the shape of every
# query; a short fit on the shipped SNARE-seq2 subsample; save/load; bad input.

# The shipped example without the genes that have no counts in its first 500 cells (the RNA
# cells of the mosaic below; the warning about such genes is tested once).
multiome <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      d <- rscvi_example_multiome()
      d$rna <- d$rna[Matrix::rowSums(d$rna[, 1:500]) > 0, ]
      cache <<- d
    }
    cache
  }
})

# Cells `j` of the example, paired, with the genes that have counts in them.
part <- function(j) {
  d <- multiome()
  rna <- d$rna[, j]
  list(rna = rna[Matrix::rowSums(rna) > 0, ], atac = d$atac[, j], cells = d$cells[j, ])
}

# A mosaic: cells 1-100 RNA only, 101-500 paired, 501-600 ATAC only.
mosaic_parts <- function() {
  d <- multiome()
  list(rna = d$rna[, 1:500], atac = d$atac[, 101:600], cells = d$cells)
}

# The mosaic trained once (30 epochs). Batch normalisation in place of the default layer
# normalisation: on this small, sparse subsample it learns a usable latent space in 30 epochs.
mosaic_model <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      p <- mosaic_parts()
      m <- multivi(p$rna, p$atac, cells = p$cells, batch_key = "library",
                   use_batch_norm = "both", use_layer_norm = "none")
      cache <<- train(m, max_epochs = 30L, lr = 1e-2, n_epochs_kl_warmup = 10L,
                      early_stopping = FALSE, seed = 0L, device = "cpu", progress = FALSE)
    }
    cache
  }
})

multiome_sce <- function(d = multiome(), altexp = "ATAC") {
  skip_if_not_installed("SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = d$rna), colData = S4Vectors::DataFrame(d$cells, check.names = FALSE))
  SingleCellExperiment::altExp(sce, altexp) <-
    SummarizedExperiment::SummarizedExperiment(assays = list(counts = d$atac))
  sce
}

multiome_seurat <- function(d = multiome(), atac_assay = "ATAC") {
  skip_if_not_installed("SeuratObject")
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(d$rna, meta.data = d$cells))
  so[[atac_assay]] <- suppressWarnings(SeuratObject::CreateAssayObject(counts = d$atac))
  so
}

test_that("the shipped example is a paired RNA + ATAC subsample", {
  d <- rscvi_example_multiome()
  expect_identical(dim(d$rna), c(1592L, 600L))
  expect_identical(dim(d$atac), c(2000L, 600L))
  expect_identical(colnames(d$rna), colnames(d$atac))
  expect_identical(rownames(d$cells), colnames(d$rna))
  expect_true(all(c("library", "cell_type") %in% names(d$cells)))
  expect_true(all(Matrix::colSums(d$rna) > 0) && all(Matrix::colSums(d$atac) > 0))
  expect_warning(multivi(d$rna[, 1:40], d$atac[, 1:40]), "`rna` has .* genes with no counts")
})

test_that("multivi() builds a paired model from matrices with scvi-tools' defaults", {
  d <- multiome()
  m <- multivi(d$rna, d$atac, cells = d$cells, batch_key = "library")
  expect_s3_class(m, c("MULTIVI", "rscvi_model"))
  cfg <- m$config
  expect_identical(cfg$n_genes, nrow(d$rna))
  expect_identical(cfg$n_regions, 2000L)
  expect_identical(cfg$n_hidden, 44L)          # min(128, floor(sqrt(2000)))
  expect_identical(cfg$n_latent, 6L)           # floor(sqrt(44))
  expect_identical(cfg$n_batch, 3L)
  expect_identical(c(cfg$n_layers_encoder, cfg$n_layers_decoder), c(2L, 2L))
  expect_identical(cfg$dropout_rate, 0.1)
  expect_true(cfg$region_factors)
  expect_identical(cfg[c("gene_likelihood", "modality_weights", "modality_penalty",
                         "use_batch_norm", "use_layer_norm", "latent_distribution")],
                   list(gene_likelihood = "zinb", modality_weights = "equal",
                        modality_penalty = "Jeffreys", use_batch_norm = "none",
                        use_layer_norm = "both", latent_distribution = "normal"))
  expect_false(cfg$deeply_inject_covariates || cfg$encode_covariates || cfg$fully_paired)
  expect_identical(m$gene_names, rownames(d$rna))
  expect_identical(m$region_names, rownames(d$atac))
  expect_identical(m$cell_names, colnames(d$rna))
  expect_true(all(m$modality == "paired"))
  expect_identical(m$registry$batch_categories, c("09A", "09B", "09C"))
  expect_output(print(m), "600 paired, 0 RNA only, 0 ATAC only")
  expect_output(print(summary(m)), "MULTIVI model summary")

  # Every option reaches the config; dense input works; an RNA-only model sizes from genes.
  s <- part(1:60)
  m2 <- multivi(as.matrix(s$rna), as.matrix(s$atac), n_hidden = 16L,
                n_latent = 3L, n_layers_encoder = 1L, n_layers_decoder = 3L,
                dropout_rate = 0.2, region_factors = FALSE, gene_likelihood = "nb",
                modality_weights = "universal", modality_penalty = "MMD",
                use_batch_norm = "both", use_layer_norm = "none", latent_distribution = "ln",
                deeply_inject_covariates = TRUE, encode_covariates = TRUE, fully_paired = TRUE)
  expect_identical(m2$config[c("n_hidden", "n_latent", "n_layers_encoder", "n_layers_decoder",
                               "gene_likelihood", "modality_weights", "modality_penalty",
                               "latent_distribution")],
                   list(n_hidden = 16L, n_latent = 3L, n_layers_encoder = 1L,
                        n_layers_decoder = 3L, gene_likelihood = "nb",
                        modality_weights = "universal", modality_penalty = "MMD",
                        latent_distribution = "ln"))
  expect_true(m2$config$fully_paired && m2$config$encode_covariates)
  rna_only <- multivi(d$rna, cells = d$cells)
  expect_identical(rna_only$config$n_regions, 0L)
  expect_identical(rna_only$config$n_hidden, as.integer(min(128, floor(sqrt(nrow(d$rna))))))
  atac_only <- multivi(atac = d$atac)
  expect_identical(atac_only$config$n_genes, 0L)
})

test_that("multivi() matches cells by name and builds a mosaic without padding", {
  p <- mosaic_parts()
  d <- multiome()
  m <- multivi(p$rna, p$atac, batch_key = "library",
               cells = p$cells[c(1:100, 501:600, 101:500), ])
  # Cell data naming every cell orders the cells (so a seeded split holds out the cells
  # scvi-tools holds out of the same AnnData); without names, RNA's cells, then ATAC-only.
  expect_identical(m$cell_names, rownames(p$cells)[c(1:100, 501:600, 101:500)])
  m <- multivi(p$rna, p$atac, cells = p$cells, batch_key = "library")
  expect_identical(m$cell_names, colnames(d$rna))
  expect_identical(as.vector(table(m$modality)[c("paired", "expression", "accessibility")]),
                   c(400L, 100L, 100L))
  expect_identical(unname(m$modality[c(1, 101, 501)]),
                   c("expression", "paired", "accessibility"))
  expect_identical(m$cell_data$library, d$cells$library)
  expect_output(print(m), "400 paired, 100 RNA only, 100 ATAC only")
  # Cell data in the order of the cells (RNA's, then ATAC-only), without row names.
  cd <- d$cells
  rownames(cd) <- NULL
  m2 <- multivi(p$rna, p$atac, cells = cd, batch_key = "library")
  expect_identical(m2$cell_data$library, d$cells$library)
  # A cell with an all-zero ATAC column is unmeasured in ATAC.
  s <- part(1:50)
  atac <- s$atac
  atac[, 3] <- 0
  m3 <- multivi(s$rna, Matrix::drop0(atac))
  expect_identical(unname(m3$modality[3]), "expression")
  expect_identical(sum(m3$modality == "paired"), 49L)
})

test_that("multivi() reads a SingleCellExperiment with the ATAC in an altExp", {
  sce <- multiome_sce()
  m <- multivi(sce, batch_key = "library")
  expect_identical(m$registry$setup_args$altexp, "ATAC")
  expect_identical(m$registry$setup_args$layer, "counts")
  expect_identical(m$config$n_regions, 2000L)
  expect_true(all(m$modality == "paired"))
  other <- multiome_sce(altexp = "chromatin")
  expect_error(multivi(other), "no ATAC alternative experiment.*`altexp`")
  m2 <- multivi(other, altexp = "chromatin")
  expect_identical(m2$registry$setup_args$altexp, "chromatin")
  expect_error(multivi(sce, altexp = "nope"), "`altexp` 'nope' is not an alternative")
  expect_error(multivi(sce, layer = "logcounts"), "`layer` 'logcounts' is not an assay")
  # Two SingleCellExperiments of different cells: a mosaic with merged colData.
  p <- mosaic_parts()
  d <- multiome()
  rna <- SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = p$rna), colData = S4Vectors::DataFrame(d$cells[1:500, ]))
  atac <- SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = p$atac), colData = S4Vectors::DataFrame(d$cells[101:600, ]))
  m3 <- multivi(rna, atac, batch_key = "library")
  expect_identical(as.vector(table(m3$modality)[c("paired", "expression", "accessibility")]),
                   c(400L, 100L, 100L))
  expect_identical(m3$cell_data$library, d$cells$library)
})

test_that("multivi() reads a Seurat object with an RNA and an ATAC assay", {
  so <- multiome_seurat()
  m <- multivi(so, batch_key = "library")
  expect_identical(m$registry$setup_args$assay, "RNA")
  expect_identical(m$registry$setup_args$atac_assay, "ATAC")
  expect_identical(m$config$n_regions, 2000L)
  expect_identical(m$cell_names, colnames(so))
  peaks <- multiome_seurat(atac_assay = "chromatin")
  expect_error(multivi(peaks), "without an assay named.*`atac_assay`")
  expect_identical(multivi(peaks, atac_assay = "chromatin")$registry$setup_args$atac_assay,
                   "chromatin")
  expect_error(multivi(so, atac_assay = "nope"), "`atac_assay` 'nope' is not an assay")
  # The default assay is the RNA one unless it is the ATAC assay.
  SeuratObject::DefaultAssay(so) <- "ATAC"
  expect_identical(multivi(so)$registry$setup_args$assay, "RNA")
})

test_that("a trained MULTIVI model answers every query with the right shapes", {
  m <- mosaic_model()
  d <- multiome()
  h <- history(m)
  expect_identical(nrow(h), 30L)
  expect_true(all(is.finite(h$elbo_train)))
  n <- 600L
  G <- nrow(d$rna)
  z <- get_latent_representation(m)
  expect_identical(dim(z), c(n, m$config$n_latent))
  expect_identical(rownames(z), colnames(d$rna))
  expect_identical(colnames(z), paste0("MULTIVI_", seq_len(m$config$n_latent)))
  # The joint latent space separates the cell types better than chance, for paired and
  # unpaired cells together (unassigned "Mis" cells left out).
  types <- d$cells[rownames(z), "cell_type"]
  keep <- types != "Mis"
  purity <- knn_purity(z[keep, ], types[keep])
  set.seed(1)
  chance <- mean(replicate(5, knn_purity(z[keep, ], sample(types[keep]))))
  expect_gt(purity, chance + 0.1)

  ze <- get_latent_representation(m, modality = "expression", indices = 1:10)
  za <- get_latent_representation(m, modality = "accessibility", indices = 1:10)
  expect_identical(dim(ze), c(10L, m$config$n_latent))
  expect_false(isTRUE(all.equal(ze, za)))
  dist <- get_latent_representation(m, return_dist = TRUE, indices = 1:5)
  expect_identical(names(dist), c("mean", "var"))
  expect_equal(dist$mean, z[1:5, ], tolerance = 1e-6)
  expect_true(all(dist$var > 0))
  expect_false(isTRUE(all.equal(get_latent_representation(m, give_mean = FALSE, indices = 1:5),
                                z[1:5, ])))

  rho <- get_normalized_expression(m)
  expect_identical(dim(rho), c(n, G))
  expect_identical(dimnames(rho), list(colnames(d$rna), rownames(d$rna)))
  expect_equal(unname(rowSums(rho)), rep(1, n), tolerance = 1e-4)
  genes <- rownames(d$rna)[c(10, 3)]
  sub <- get_normalized_expression(m, gene_list = genes, indices = 1:4,
                                   transform_batch = "09B")
  expect_identical(colnames(sub), rownames(d$rna)[c(3, 10)])
  expect_identical(dim(get_normalized_expression(m, library_size = "latent", indices = 1:3)),
                   c(3L, G))

  acc <- get_normalized_accessibility(m)
  expect_identical(dim(acc), c(n, 2000L))
  expect_identical(colnames(acc), rownames(d$atac))
  expect_true(all(acc >= 0 & acc <= 1))
  sparse <- get_normalized_accessibility(m, threshold = 0.2)
  expect_s4_class(sparse, "dgCMatrix")
  expect_true(all(sparse@x >= 0.2))
  expect_equal(as.matrix(sparse)[acc >= 0.2], acc[acc >= 0.2])
  regions <- rownames(d$atac)[c(5, 1)]
  r2 <- get_normalized_accessibility(m, region_list = regions, indices = 1:3,
                                     transform_batch = "09C", normalize_cells = TRUE,
                                     normalize_regions = TRUE)
  expect_identical(dimnames(r2), list(colnames(d$rna)[1:3], rownames(d$atac)[c(1, 5)]))
  expect_true(all(r2 <= acc[1:3, c(1, 5)] + 1e-6))
  expect_identical(get_accessibility_estimates(m, indices = 1:3),
                   get_normalized_accessibility(m, indices = 1:3))

  lib <- get_library_size_factors(m)
  expect_identical(names(lib), c("expression", "accessibility"))
  expect_identical(names(lib$accessibility), colnames(d$rna))
  expect_true(all(lib$accessibility > 0 & lib$accessibility < 1))
  rf <- get_region_factors(m)
  expect_identical(names(rf), rownames(d$atac))
  expect_true(all(rf > 0 & rf < 1))

  elbo <- get_elbo(m)
  rec <- get_reconstruction_error(m, indices = 1:100)
  expect_true(is.finite(elbo) && elbo < 0)
  expect_true(is.finite(rec) && rec > 0)
  # By modality, each over the cells measured in it (RNA only: 1-100, ATAC only: 501-600).
  cells <- c(1:3, 501:503, 201:203)
  parts <- get_reconstruction_error(m, indices = cells, by_modality = TRUE, return_mean = FALSE)
  expect_named(parts, c("expression", "accessibility"))
  expect_identical(names(parts$expression), m$cell_names[cells])
  expect_equal(unname(parts$accessibility[1:3]), rep(0, 3))
  expect_equal(unname(parts$expression[4:6]), rep(0, 3))
  expect_true(all(parts$expression[c(1:3, 7:9)] > 0 & parts$accessibility[4:9] > 0))
  # One posterior draw per call: the parts of one call and the total of another agree to a
  # few percent.
  means <- get_reconstruction_error(m, indices = 1:300, by_modality = TRUE)
  expect_equal(means$expression + means$accessibility,
               get_reconstruction_error(m, indices = 1:300), tolerance = 0.05)

  de <- differential_expression(m, groupby = "cell_type", group1 = "L2/3", group2 = "L6",
                                n_samples_overall = 200L)
  expect_setequal(rownames(de), rownames(d$rna))
  expect_true(all(de$proba_de >= 0 & de$proba_de <= 1))
  expect_true("is_de_fdr_0.05" %in% names(de))

  da <- differential_accessibility(m, groupby = "cell_type", group1 = "L2/3", group2 = "L6",
                                   n_samples_overall = 200L)
  expect_identical(rownames(da), rownames(d$atac))     # region order
  expect_identical(names(da), c("prob_da", "is_da_fdr", "bayes_factor", "effect_size",
                                "emp_effect", "est_prob1", "est_prob2", "emp_prob1",
                                "emp_prob2", "comparison", "group1", "group2"))
  expect_true(all(da$prob_da >= 0 & da$prob_da <= 1))
  expect_equal(da$effect_size, da$est_prob2 - da$est_prob1)
  # Empirical accessibility over all cells of the group (RNA-only ones count as closed).
  l23 <- d$cells$cell_type == "L2/3"
  open1 <- Matrix::rowSums(d$atac[, l23 & m$modality != "expression"] > 0) / sum(l23)
  expect_equal(da$emp_prob1, unname(open1))
  va <- differential_accessibility(m, idx1 = 1:50, idx2 = 51:100, mode = "vanilla",
                                   n_samples_overall = 100L, all_stats = FALSE)
  expect_identical(names(va), c("prob_da", "bayes_factor", "effect_size", "est_prob1",
                                "est_prob2"))
  expect_error(differential_accessibility(m, idx1 = 1:5, nope = 1), "unknown arguments")
  # scvi-tools' default three-state test: with delta = 0, P(LFC >= 0) + P(LFC < 0) is 1 for
  # every region (the two-state sum), while the larger of the two is below 1 wherever the
  # posterior is unsure of the direction.
  set.seed(1)
  three <- differential_accessibility(m, idx1 = 1:50, idx2 = 51:100, delta = 0,
                                      n_samples_overall = 200L, all_stats = FALSE)
  expect_true(all(three$prob_da >= 0.5 & three$prob_da <= 1))
  expect_gt(mean(three$prob_da < 1), 0.1)
  set.seed(1)
  two <- differential_accessibility(m, idx1 = 1:50, idx2 = 51:100, delta = 0,
                                    n_samples_overall = 200L, all_stats = FALSE,
                                    test_mode = "two")
  expect_equal(two$prob_da, rep(1, nrow(two)))
  expect_error(differential_accessibility(m, idx1 = 1:5, test_mode = "one"), "test_mode")

  expect_output(print(m), "30 epochs")
  expect_plots(m)
})

test_that("MULTIVI queries take new data of one or both modalities", {
  m <- mosaic_model()
  d <- multiome()
  z <- get_latent_representation(m)
  cells <- colnames(d$rna)[101:150]   # paired in the model's data
  both <- list(rna = d$rna[, cells], atac = d$atac[, cells], cells = d$cells[cells, ])
  expect_equal(get_latent_representation(m, x = both), z[cells, ], tolerance = 1e-5)
  rna_only <- get_latent_representation(m, x = list(rna = d$rna[, cells],
                                                     cells = d$cells[cells, ]))
  expect_identical(dim(rna_only), c(50L, m$config$n_latent))
  acc <- get_normalized_accessibility(m, x = list(rna = d$rna[, cells],
                                                  cells = d$cells[cells, ]))
  expect_identical(dim(acc), c(50L, 2000L))    # imputed accessibility of RNA-only cells
  expect_error(get_latent_representation(m, x = d$rna[, cells]), "must hold the modalities")
  # regions in another order are taken in the model's order, by name
  other <- d$atac[c(2:2000, 1), cells]
  expect_equal(get_latent_representation(m, x = list(atac = other, cells = d$cells[cells, ])),
               get_latent_representation(m, x = list(atac = d$atac[, cells],
                                                     cells = d$cells[cells, ])))
  renamed <- d$atac[, cells]
  rownames(renamed)[1:3] <- c("chrZ:1-2", "chrZ:3-4", "chrZ:5-6")
  expect_error(get_latent_representation(m, x = list(atac = renamed, cells = d$cells[cells, ])),
               "regions do not match the model's ATAC regions")
  expect_error(get_latent_representation(m, x = list(rna = d$rna[, cells])),
               "batch_key.*library.*not a column")
})

test_that("MULTIVI models save and load", {
  m <- mosaic_model()
  p <- mosaic_parts()
  dir <- tempfile("multivi-")
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  save_model(m, dir)
  back <- load_model(dir)
  expect_s3_class(back, "MULTIVI")
  expect_identical(back$gene_names, m$gene_names)
  expect_identical(back$region_names, m$region_names)
  expect_identical(back$registry$batch_categories, m$registry$batch_categories)
  expect_identical(back$config, m$config)
  expect_identical(nrow(history(back)), 30L)
  expect_error(get_latent_representation(back), "no data attached")
  expect_output(print(back), "none attached")
  again <- load_model(dir, x = list(rna = p$rna, atac = p$atac, cells = p$cells))
  expect_equal(get_latent_representation(again), get_latent_representation(m),
               tolerance = 1e-6)
  expect_equal(get_region_factors(again), get_region_factors(m))
  expect_error(load_model(dir, cells = p$cells), "do not apply to a MULTIVI model")
})

test_that("train() of a MULTIVI model has MULTIVI's defaults and options", {
  s <- part(1:120)
  m <- multivi(s$rna, s$atac, cells = s$cells, batch_key = "library")
  expect_identical(formals(train.MULTIVI)$max_epochs, 500L)
  expect_identical(formals(train.MULTIVI)$lr, 1e-4)
  expect_identical(formals(train.MULTIVI)$early_stopping_monitor,
                   "reconstruction_loss_validation")
  m <- train(m, max_epochs = 2L, seed = 0L, progress = FALSE)
  h <- history(m)
  expect_identical(nrow(h), 2L)
  expect_true(all(is.finite(h$elbo_validation)))   # validated every epoch
  expect_equal(h$kl_weight, c(0, 1 / 50))
  m <- train(m, max_epochs = 1L, adversarial_mixing = FALSE, early_stopping = FALSE,
             progress = FALSE)
  expect_identical(nrow(history(m)), 3L)
  expect_error(train(m, optimizer = "Adam"), "AdamW")
  expect_error(train(m, lr = 0), "`lr`")
  expect_error(train(m, adversarial_mixing = NA), "`adversarial_mixing`")
  s <- part(1:60)
  one <- multivi(s$rna, s$atac)
  expect_warning(train(one, max_epochs = 1L, adversarial_mixing = TRUE, progress = FALSE),
                 "more than one batch")
  # Covariates and the other options train.
  cells <- s$cells
  cells$depth <- log(Matrix::colSums(s$rna))
  cells$plate <- rep(c("p1", "p2", "p3"), length.out = nrow(cells))
  cov <- multivi(s$rna, s$atac, cells = cells, categorical_covariate_keys = "plate",
                 continuous_covariate_keys = "depth", encode_covariates = TRUE,
                 deeply_inject_covariates = TRUE, modality_weights = "cell",
                 modality_penalty = "MMD", latent_distribution = "ln", gene_likelihood = "nb")
  expect_identical(cov$config$n_cats_per_cov, 3L)
  expect_identical(cov$config$n_continuous_cov, 1L)
  expect_identical(cov$registry$setup_args$categorical_covariate_keys, "plate")
  cov <- train(cov, max_epochs = 2L, early_stopping = FALSE, seed = 1L, progress = FALSE)
  expect_true(all(is.finite(history(cov)$elbo_train)))
  expect_true(all(is.finite(get_latent_representation(cov))))
  fitted <- multivi(s$rna, s$atac, train = TRUE, max_epochs = 1L, progress = FALSE)
  expect_identical(nrow(history(fitted)), 1L)
  expect_error(multivi(s$rna, s$atac, max_epochs = 1L), "only with train = TRUE")
  expect_error(multivi(s$rna, s$atac, train = TRUE, max_epoch = 1L),
               "unknown training arguments")
})

test_that("runMULTIVI() and RunMULTIVI() store the joint latent space", {
  d <- multiome()
  small <- part(1:80)
  sce <- multiome_sce(small)
  sce <- runMULTIVI(sce, batch_key = "library", n_latent = 3L, max_epochs = 2L, seed = 0L,
                    progress = FALSE)
  expect_identical(dim(SingleCellExperiment::reducedDim(sce, "MULTIVI")), c(80L, 3L))
  expect_error(runMULTIVI(d$rna), "SingleCellExperiment")
  expect_error(runMULTIVI(sce, n_latnet = 3L), "n_latnet")
  so <- multiome_seurat(small)
  so <- RunMULTIVI(so, batch_key = "library", n_latent = 3L, max_epochs = 2L, seed = 0L,
                   progress = FALSE)
  expect_run_reduction(so, "multivi", "MULTIVI", c(80L, 3L), RunMULTIVI)
})

test_that("multivi() names what is wrong with bad input", {
  d <- multiome()
  s <- part(1:40)
  rna <- s$rna
  atac <- s$atac
  expect_error(multivi(rna, atac, size_factor_key = "sf"),
               "`size_factor_key` must be NULL or 2 column names")
  expect_error(multivi(), "`rna` and `atac` are both NULL")
  # A cell with counts in no modality.
  empty <- rna
  empty[, 5] <- 0
  expect_error(multivi(Matrix::drop0(empty), atac[, -5]),
               "1 cells have no counts in any modality.*remove them")
  # A modality without cells, or without counts.
  expect_error(multivi(rna, atac[, 0]), "`atac` has no cells")
  expect_error(multivi(rna, atac * 0), "`atac` has no counts in any cell")
  # Duplicated names.
  dup <- rna
  rownames(dup)[2] <- rownames(dup)[1]
  expect_error(multivi(dup, atac), "`rna` has 1 duplicated gene names")
  dupr <- atac
  rownames(dupr)[2] <- rownames(dupr)[1]
  expect_error(multivi(rna, dupr), "`atac` has 1 duplicated region names")
  dupc <- atac
  colnames(dupc)[2] <- colnames(dupc)[1]
  expect_error(multivi(rna, dupc), "`atac` has 1 duplicated cell names")
  # Counts that are not counts.
  bad <- rna
  bad[1, 1] <- NA
  expect_error(multivi(bad, atac), "`rna` contains 1 missing")
  bad[1, 1] <- -1
  expect_error(multivi(bad, atac), "`rna` contains 1 negative")
  bad[1, 1] <- 0.5
  expect_error(multivi(bad, atac), "`rna` contains 1 non-integer.*raw counts")
  bada <- atac
  bada@x[1] <- 0.3
  expect_error(multivi(rna, bada), "`atac` contains 1 non-integer.*counts or binary")
  expect_identical(multivi(rna, (atac > 0) * 1)$config$n_regions, 2000L)   # binary is fine
  # Unpaired cells in a model declared fully paired.
  expect_error(multivi(rna[, 1:30], atac[, 11:40], fully_paired = TRUE),
               paste("`fully_paired` = TRUE but 20 cells lack a modality",
                     "\\(10 expression only, 10 accessibility only"))
  # Cells that cannot be matched by name.
  unnamed <- rna
  colnames(unnamed) <- NULL
  expect_error(multivi(unnamed, atac), "cells are matched across modalities by name")
  expect_error(multivi(rna, atac, cells = d$cells[1:10, ]), "`cells` has no row for 30")
  expect_error(multivi(rna, atac, cells = s$cells, batch_key = "batch"),
               "`batch_key` 'batch' is not a column")
  expect_error(multivi(rna, atac, layer = "counts"), "`layer` names the RNA assay")
  expect_error(multivi(rna, atac, atac_assay = "ATAC"), "`atac_assay`")
  # Hyperparameters.
  expect_error(multivi(rna, atac, n_latent = 0), "`n_latent`")
  expect_error(multivi(rna, atac, modality_weights = "bogus"), "`modality_weights`")
  expect_error(multivi(rna, atac, modality_penalty = "jeffreys"), "`modality_penalty`")
  expect_error(multivi(rna, atac, dropout_rate = 1), "`dropout_rate`")
  expect_error(multivi(rna, atac, region_factors = NA), "`region_factors`")
})

test_that("MULTIVI queries refuse what the model cannot do", {
  d <- multiome()
  s <- part(1:40)
  rna_only <- multivi(s$rna)
  expect_error(get_latent_representation(rna_only, modality = "accessibility"),
               "`modality` = \"accessibility\" needs accessibility.*no regions")
  expect_error(get_normalized_accessibility(rna_only), "no regions")
  expect_error(get_region_factors(rna_only), "no regions")
  expect_error(differential_accessibility(rna_only, idx1 = 1:5), "no regions")
  expect_error(suppressWarnings(get_latent_representation(rna_only,
                                                          x = list(atac = d$atac[, 1:5]))),
               "has accessibility but this model has no regions")
  atac_only <- multivi(atac = s$atac)
  expect_error(get_normalized_expression(atac_only), "no genes")
  paired <- multivi(s$rna, s$atac, fully_paired = TRUE)
  expect_error(get_latent_representation(paired, modality = "expression"), "fully_paired")
  m <- multivi(s$rna, s$atac, region_factors = FALSE)
  expect_error(get_region_factors(m), "region_factors = FALSE")
  expect_error(get_normalized_accessibility(m, normalize_regions = TRUE), "region factors")
  expect_error(get_normalized_accessibility(m, threshold = 2), "`threshold`")
  expect_error(get_normalized_accessibility(m, transform_batch = "x"), "unknown batch")
  expect_error(get_normalized_accessibility(m, region_list = "chrZ:1-2"), "not in the model")
  expect_error(get_normalized_expression(m, gene_list = "nope"), "not in the model")
  expect_error(get_latent_representation(m, modality = "protein"), "`modality`")
  cw <- multivi(s$rna, s$atac, modality_weights = "cell")
  expect_error(suppressWarnings(get_latent_representation(cw, x = list(rna = s$rna[, 1:5]))),
               "modality_weights = \"cell\".*new data")
  expect_warning(z_untrained <- get_latent_representation(cw), "has not been trained")
  expect_identical(dim(z_untrained), c(40L, cw$config$n_latent))
  expect_error(differential_expression(m, idx1 = 1:10, weights = "importance"),
               "importance weights are not available")
})

# Stand-in ADT counts for the example's cells (the package ships no CITE-seq data): a Poisson
# background of 5 for every antibody, and a foreground of 60 more in the cell type it marks.
adt_counts <- function(d = multiome()) {
  marked <- c(ADT_L23 = "L2/3", ADT_L6 = "L6", ADT_Oligo = "Oligo")
  set.seed(1)
  adt <- t(vapply(marked, function(type) {
    as.numeric(stats::rpois(ncol(d$rna), 5 + 60 * (d$cells$cell_type == type)))
  }, numeric(ncol(d$rna))))
  colnames(adt) <- colnames(d$rna)
  adt
}

# The mosaic with proteins in cells 1-300: RNA + protein (1-100), all three (101-300), RNA +
# ATAC (301-500), ATAC only (501-600); trained as mosaic_model(), for 60 epochs (the
# proteins' association with the other modalities takes longer to learn).
protein_model <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      p <- mosaic_parts()
      m <- multivi(p$rna, p$atac, protein = adt_counts()[, 1:300], cells = p$cells,
                   batch_key = "library", use_batch_norm = "both", use_layer_norm = "none")
      cache <<- train(m, max_epochs = 60L, lr = 1e-2, n_epochs_kl_warmup = 10L,
                      early_stopping = FALSE, seed = 0L, device = "cpu", progress = FALSE)
    }
    cache
  }
})

test_that("multivi() takes surface proteins as a third modality", {
  m <- protein_model()
  d <- multiome()
  expect_identical(m$config$n_proteins, 3L)
  expect_identical(m$config$protein_dispersion, "protein")
  expect_identical(m$protein_names, c("ADT_L23", "ADT_L6", "ADT_Oligo"))
  expect_identical(as.vector(table(m$modality)[c("expression+protein", "paired",
                                                 "expression+accessibility",
                                                 "accessibility")]),
                   c(100L, 200L, 200L, 100L))
  expect_output(print(m), "3 proteins")
  expect_output(print(m), "100 RNA\\+protein")

  # Queries: the protein latent space and the foreground probability, for every cell.
  expect_identical(dim(get_latent_representation(m, modality = "protein")), c(600L, 6L))
  parts <- get_reconstruction_error(m, indices = c(1, 150, 550), by_modality = TRUE,
                                    return_mean = FALSE)
  expect_named(parts, c("expression", "accessibility", "protein"))
  expect_true(parts$protein[[1]] > 0 && parts$protein[[2]] > 0 && parts$protein[[3]] == 0)
  fg <- get_protein_foreground_probability(m)
  expect_identical(dimnames(fg), list(m$cell_names, m$protein_names))
  expect_true(all(fg >= 0 & fg <= 1))
  two <- get_protein_foreground_probability(m, indices = 1:20, protein_list = "ADT_L6",
                                            transform_batch = m$registry$batch_categories[1:2])
  expect_identical(dim(two), c(20L, 1L))
  b1 <- get_protein_foreground_probability(m, indices = 1:20, protein_list = "ADT_L6",
                                           transform_batch = m$registry$batch_categories[1])
  b2 <- get_protein_foreground_probability(m, indices = 1:20, protein_list = "ADT_L6",
                                           transform_batch = m$registry$batch_categories[2])
  expect_equal(two, (b1 + b2) / 2, tolerance = 1e-4)   # averaged over the batches

  # The model has learnt which proteins go with which cells: each cell's own ADT counts
  # reconstruct better than the same counts shuffled over the cells (by 11 nats a cell; the
  # proteins' own share of the error is 8 nats a cell).
  cells <- colnames(d$rna)[101:300]
  adt <- adt_counts()[, cells]
  set.seed(2)
  shuffled <- adt[, sample(ncol(adt))]
  colnames(shuffled) <- cells
  x <- function(protein) list(rna = d$rna[, cells], atac = d$atac[, cells], protein = protein,
                              cells = d$cells[cells, ])
  own <- get_reconstruction_error(m, x = x(adt))
  other <- get_reconstruction_error(m, x = x(shuffled))
  expect_gt(other, own + 5)

  # New data without proteins are cells unmeasured there; proteins in another order are
  # taken in the model's order.
  expect_identical(dim(get_latent_representation(m, x = list(rna = d$rna[, cells],
                                                             cells = d$cells[cells, ]))),
                   c(200L, 6L))
  expect_equal(get_latent_representation(m, x = x(adt[3:1, ])),
               get_latent_representation(m, x = x(adt)))
  expect_error(get_protein_foreground_probability(m, protein_list = "CD4"),
               "`protein_list` has 1 proteins that are not in the model")

  # Save and load keep the proteins.
  dir <- tempfile("multivi-protein-")
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  save_model(m, dir)
  p <- mosaic_parts()
  back <- load_model(dir, x = list(rna = p$rna, atac = p$atac, protein = adt_counts()[, 1:300],
                                   cells = p$cells))
  expect_identical(back$protein_names, m$protein_names)
  expect_equal(get_latent_representation(back), get_latent_representation(m), tolerance = 1e-6)
})

test_that("multivi() reads proteins from SingleCellExperiment and Seurat objects", {
  d <- part(1:60)
  adt <- adt_counts()[, 1:60]
  sce <- multiome_sce(d)
  SingleCellExperiment::altExp(sce, "ADT") <-
    SummarizedExperiment::SummarizedExperiment(assays = list(counts = adt))
  m <- multivi(sce, protein = "ADT", protein_dispersion = "protein-batch",
               batch_key = "library")
  expect_identical(m$protein_names, rownames(adt))
  expect_identical(m$registry$setup_args$protein, "ADT")
  expect_identical(m$config$protein_dispersion, "protein-batch")
  m <- train(m, max_epochs = 2L, seed = 0L, progress = FALSE)
  expect_identical(dim(get_protein_foreground_probability(m, x = sce)), c(60L, 3L))
  expect_error(multivi(sce, protein = "CITE"),
               paste("`protein` 'CITE' is not an alternative experiment of `rna`;",
                     "available: 'ATAC', 'ADT'"))
  prot_sce <- SingleCellExperiment::SingleCellExperiment(assays = list(raw = adt))
  expect_identical(multivi(sce, protein = prot_sce, protein_layer = "raw")$config$n_proteins,
                   3L)

  so <- multiome_seurat(d)
  so[["ADT"]] <- suppressWarnings(SeuratObject::CreateAssayObject(counts = adt))
  ms <- multivi(so, protein = "ADT")
  expect_identical(ms$protein_names, sub("_", "-", rownames(adt)))   # Seurat's feature names
  expect_identical(ms$registry$setup_args$assay, "RNA")
})

test_that("multivi() names what is wrong with protein input", {
  d <- part(1:60)
  adt <- adt_counts()[, 1:60]
  neg <- adt
  neg[1, 1] <- -1
  expect_error(multivi(d$rna, d$atac, protein = neg), "`protein`.*negative")
  frac <- adt
  frac[1, 1] <- 0.5
  expect_error(multivi(d$rna, d$atac, protein = frac), "`protein`.*ADT")
  expect_error(multivi(d$rna, d$atac, protein = adt * 0), "`protein` has no counts in any cell")
  expect_error(multivi(d$rna, d$atac, protein_layer = "counts"), "`protein` is NULL")
  expect_error(multivi(d$rna, d$atac, protein = "ADT"), "names an altExp")
  expect_error(multivi(d$rna, d$atac, protein = adt, protein_dispersion = "protein-label"),
               "protein_dispersion")
  expect_error(multivi(d$rna, d$atac[, 1:50], protein = adt, fully_paired = TRUE),
               "10 expression\\+protein only")
  plain <- multivi(d$rna, d$atac)
  expect_error(get_protein_foreground_probability(plain), "has no proteins")
  expect_error(get_latent_representation(plain, modality = "protein"), "has no proteins")
})

test_that("multivi() takes registered RNA and ATAC size factors", {
  p <- part(1:60)
  cells <- p$cells
  cells$rna_sf <- Matrix::colSums(p$rna) / mean(Matrix::colSums(p$rna))
  cells$atac_sf <- Matrix::colSums(p$atac > 0) / nrow(p$atac)
  m <- multivi(p$rna, p$atac, cells = cells, size_factor_key = c("rna_sf", "atac_sf"))
  expect_true(m$config$use_size_factor)
  expect_identical(m$registry$setup_args$size_factor_key, c("rna_sf", "atac_sf"))
  m <- train(m, max_epochs = 3L, seed = 0L, progress = FALSE)
  lib <- get_library_size_factors(m)
  expect_equal(unname(lib$expression), log(cells$rna_sf + 1e-6), tolerance = 1e-6)
  expect_equal(unname(lib$accessibility), cells$atac_sf, tolerance = 1e-6)
  # Softplus scale: rho no longer sums to 1 over the genes.
  rho <- get_normalized_expression(m, indices = 1:5)
  expect_true(all(rho > 0) && all(abs(rowSums(rho) - 1) > 1e-3))
  # New data are registered with the model's keys.
  q <- get_library_size_factors(m, x = list(rna = p$rna[, 1:10], atac = p$atac[, 1:10],
                                            cells = cells[1:10, ]))
  expect_equal(q$accessibility, lib$accessibility[1:10], tolerance = 1e-6)
  dir <- tempfile("multivi-sf-")
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  save_model(m, dir)
  back <- load_model(dir, x = list(rna = p$rna, atac = p$atac, cells = cells))
  expect_true(back$config$use_size_factor)
  expect_equal(get_library_size_factors(back), lib, tolerance = 1e-6)

  expect_error(multivi(p$rna, p$atac, cells = cells, size_factor_key = "rna_sf"),
               "`size_factor_key` must be NULL or 2 column names")
  bad <- cells
  bad$atac_sf <- bad$atac_sf + 1
  expect_error(multivi(p$rna, p$atac, cells = bad, size_factor_key = c("rna_sf", "atac_sf")),
               "ATAC size factors .* must lie in \\(0, 1\\]")
  bad <- cells
  bad$rna_sf[3] <- 0
  expect_error(multivi(p$rna, p$atac, cells = bad, size_factor_key = c("rna_sf", "atac_sf")),
               "'rna_sf' must be > 0")
})

test_that("load_query_data() maps new MULTIVI cells onto a reference (scArches)", {
  ref <- mosaic_model()
  z_ref <- get_latent_representation(ref)
  d <- multiome()
  cells <- colnames(d$rna)[201:300]
  cd <- d$cells[cells, ]
  cd$library <- ifelse(seq_along(cells) %% 2 == 0, "new-library", cd$library)
  x <- list(rna = d$rna[, cells], atac = d$atac[, cells], cells = cd)
  query <- load_query_data(x, ref)
  expect_s3_class(query, "MULTIVI")
  expect_identical(query$registry$batch_categories,
                   c(ref$registry$batch_categories, "new-library"))
  expect_identical(query$config$n_batch, 4L)
  expect_identical(query$config$n_latent, ref$config$n_latent)
  query <- train(query, max_epochs = 5L, lr = 1e-2, seed = 0L, progress = FALSE)
  zq <- get_latent_representation(query)
  expect_identical(dim(zq), c(100L, ref$config$n_latent))
  expect_true(all(is.finite(zq)))
  # The reference is untouched, and the frozen query keeps the reference's encoders: cells of
  # the reference's batches land near where the reference put them.
  expect_identical(get_latent_representation(ref), z_ref)
  old <- cells[seq_along(cells) %% 2 == 1]
  expect_lt(mean(abs(zq[old, ] - z_ref[old, ])), 0.5 * mean(abs(z_ref[old, ])))
  expect_error(load_query_data(x, ref, layer = "counts"), "`cells`, `layer` and `assay` apply to SCVI")
  cellw <- suppressWarnings(multivi(d$rna[, 1:50], d$atac[, 1:50], modality_weights = "cell"))
  expect_error(load_query_data(list(rna = d$rna[, 1:50], atac = d$atac[, 1:50]), cellw),
               "modality_weights = \"cell\"")
})
