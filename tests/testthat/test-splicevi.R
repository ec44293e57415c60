# SPLICEVI from R: construction from matrices, SingleCellExperiment (junctions in an altExp)
# and Seurat; cell matching across the modalities; every bad input of the issue; the shape and
# invariants of every query on a short fit to the shipped splikit subsample; save/load; and a
# cheap imputation check (held-out PSI) that an untrained model fails.

# Cells `j` of the example (their cell data kept a data.frame), with the genes that have
# counts in them unless `all_genes` (new data for a model of all cells).
splice_part <- function(j = seq_len(600), all_genes = FALSE) {
  d <- rscvi_example_splicing()
  e <- d$expression[, j]
  if (!all_genes) e <- e[Matrix::rowSums(e) > 0, ]
  list(expression = e, junctions = d$junctions[, j], atse = d$atse,
       cells = d$cells[j, , drop = FALSE])
}

# ATSE totals of junction counts whose rows alternate inclusion / exclusion of one event.
event_totals <- function(junctions) {
  inc <- seq(1, nrow(junctions), 2)
  tot <- junctions[inc, ] + junctions[inc + 1, ]
  out <- junctions
  out[inc, ] <- tot
  out[inc + 1, ] <- tot
  out
}

splice_sce <- function(p = splice_part(), altexp = "junctions", atse_column = "event_id") {
  skip_if_not_installed("SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = p$expression), colData = S4Vectors::DataFrame(p$cells))
  rows <- S4Vectors::DataFrame(p$atse)
  names(rows) <- atse_column
  SingleCellExperiment::altExp(sce, altexp) <- SummarizedExperiment::SummarizedExperiment(
    assays = list(counts = p$junctions, totals = event_totals(p$junctions)), rowData = rows)
  sce
}

# The whole example trained once, 3 epochs.
splice_model <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      p <- splice_part()
      m <- splicevi(p$expression, p$junctions, atse = p$atse, cells = p$cells,
                    batch_key = "library")
      cache <<- train(m, max_epochs = 3L, seed = 0L, device = "cpu", progress = FALSE)
    }
    cache
  }
})

test_that("the shipped example is a paired expression + junction subsample", {
  d <- rscvi_example_splicing()
  expect_identical(dim(d$expression), c(482L, 600L))
  expect_identical(dim(d$junctions), c(1000L, 600L))
  expect_identical(colnames(d$expression), colnames(d$junctions))
  expect_identical(rownames(d$cells), colnames(d$expression))
  expect_identical(length(d$atse), 1000L)
  expect_identical(rownames(d$junctions)[1:2], paste0(d$atse[1], c(":inc", ":exc")))
  expect_identical(length(unique(d$cells$library)), 11L)
  expect_true(all(Matrix::colSums(d$expression) > 0))
})

test_that("splicevi() builds a model from matrices with SpliceVI's defaults", {
  p <- splice_part()
  m <- splicevi(p$expression, p$junctions, atse = p$atse, cells = p$cells,
                batch_key = "library")
  expect_s3_class(m, c("SPLICEVI", "rscvi_model"))
  cfg <- m$config
  expect_identical(cfg[c("n_genes", "n_junctions", "n_atse", "n_batch", "n_hidden",
                         "n_latent")],
                   list(n_genes = 482L, n_junctions = 1000L, n_atse = 500L, n_batch = 11L,
                        n_hidden = 31L, n_latent = 5L))   # floor(sqrt(1000)), floor(sqrt(31))
  expect_identical(cfg[c("gene_likelihood", "dispersion", "modality_weights",
                         "modality_penalty", "splicing_encoder_architecture",
                         "splicing_decoder_architecture", "expression_architecture",
                         "splicing_loss_type", "dm_concentration", "pool_mode",
                         "use_batch_norm", "use_layer_norm", "latent_distribution")],
                   list(gene_likelihood = "zinb", dispersion = "gene",
                        modality_weights = "equal", modality_penalty = "Jeffreys",
                        splicing_encoder_architecture = "partial",
                        splicing_decoder_architecture = "linear",
                        expression_architecture = "linear",
                        splicing_loss_type = "dirichlet_multinomial", dm_concentration = "atse",
                        pool_mode = "mean", use_batch_norm = "none", use_layer_norm = "both",
                        latent_distribution = "normal"))
  expect_identical(cfg[c("encoder_hidden_dim", "code_dim", "h_hidden_dim", "max_nobs")],
                   list(encoder_hidden_dim = 128L, code_dim = 16L, h_hidden_dim = 64L,
                        max_nobs = -1L))
  expect_null(cfg$splicing_concentration)
  expect_identical(c(cfg$dropout_rate, cfg$splicing_loss_weight, cfg$lambda_prior),
                   c(0.1, 1, 0.01))
  expect_false(cfg$fully_paired || cfg$initialize_embeddings_from_pca ||
                 cfg$encode_covariates || cfg$deeply_inject_covariates)
  # ATSEs in sorted (C-locale) order of the event ids; junctions keep their own order.
  levels <- sort(unique(p$atse), method = "radix")
  expect_identical(m$registry$atse_levels, levels)
  expect_identical(cfg$junction_atse, match(p$atse, levels) - 1L)
  expect_identical(m$junction_names, rownames(p$junctions))
  expect_identical(m$atse, p$atse)
  expect_true(all(m$modality == "paired"))
  expect_output(print(m),
                "600 paired, 0 expression only, 0 splicing only.*1,000 junctions in 500 ATSEs")
  expect_output(print(summary(m)), "SPLICEVI model summary")

  # Every option reaches the config; dense input and numeric event ids work; an event with
  # one junction is allowed.
  s <- splice_part(1:80)
  ids <- match(s$atse, unique(s$atse))
  ids[3] <- 1000L                            # junction 3 alone in its ATSE
  m2 <- splicevi(as.matrix(s$expression), as.matrix(s$junctions), atse = ids,
                 n_hidden = 12L, n_latent = 3L, n_layers_encoder = 1L, n_layers_decoder = 3L,
                 dropout_rate = 0.2, gene_likelihood = "nb", dispersion = "gene-batch",
                 modality_weights = "concatenate", modality_penalty = "MMD",
                 splicing_encoder_architecture = "vanilla",
                 splicing_decoder_architecture = "vanilla", expression_architecture = "vanilla",
                 splicing_loss_type = "beta_binomial", splicing_concentration = 20,
                 dm_concentration = "scalar", encoder_hidden_dim = 32L, code_dim = 8L,
                 h_hidden_dim = 16L, pool_mode = "sum", max_nobs = 100L, fully_paired = TRUE,
                 use_batch_norm = "both", use_layer_norm = "none", latent_distribution = "ln",
                 deeply_inject_covariates = TRUE, encode_covariates = TRUE,
                 splicing_loss_weight = 2, lambda_prior = 0)
  expect_identical(m2$config[c("n_hidden", "n_latent", "n_atse", "gene_likelihood",
                               "modality_weights", "splicing_loss_type",
                               "splicing_concentration", "pool_mode", "max_nobs")],
                   list(n_hidden = 12L, n_latent = 3L, n_atse = 501L, gene_likelihood = "nb",
                        modality_weights = "concatenate",
                        splicing_loss_type = "beta_binomial", splicing_concentration = 20,
                        pool_mode = "sum", max_nobs = 100L))
  expect_identical(m2$registry$atse_levels, as.character(sort(unique(ids))))  # numeric order
  expect_true(m2$config$fully_paired && m2$config$encode_covariates)
  expect_error(splicevi(s$expression, s$junctions, atse = s$atse,
                        splicing_encoder_architecture = "vanilla",
                        initialize_embeddings_from_pca = TRUE),
               "`initialize_embeddings_from_pca`.*partial")
})

test_that("every SPLICEVI option trains", {
  s <- splice_part(1:120)
  s$cells$depth <- log(Matrix::colSums(s$expression))
  s$cells$plate <- rep(c("p1", "p2", "p3"), length.out = 120)
  options <- list(
    list(splicing_loss_type = "beta_binomial"),
    list(splicing_loss_type = "beta_binomial", splicing_concentration = 10),
    list(splicing_loss_type = "binomial"),
    list(dm_concentration = "scalar", pool_mode = "sum", max_nobs = 50L),
    list(splicing_encoder_architecture = "vanilla", splicing_decoder_architecture = "vanilla",
         expression_architecture = "vanilla", gene_likelihood = "poisson"),
    list(modality_weights = "cell", modality_penalty = "MMD"),
    list(modality_weights = "universal", modality_penalty = "None", dispersion = "gene-cell",
         expression_architecture = "vanilla"),
    list(modality_weights = "concatenate", latent_distribution = "ln"),
    list(modality_weights = "per_dimension_weighted_average", dispersion = "gene-batch",
         initialize_embeddings_from_pca = TRUE),
    list(categorical_covariate_keys = "plate", continuous_covariate_keys = "depth",
         encode_covariates = TRUE, deeply_inject_covariates = TRUE, use_batch_norm = "both",
         dispersion = "gene-label")
  )
  for (opt in options) {
    m <- do.call(splicevi, c(list(s$expression, s$junctions, atse = s$atse, cells = s$cells,
                                  batch_key = "library"), opt))
    m <- train(m, max_epochs = 1L, early_stopping = FALSE, seed = 1L, progress = FALSE)
    label <- paste(names(opt), unlist(opt), collapse = ", ")
    expect_true(all(is.finite(history(m)$elbo_train)), info = label)
    z <- get_latent_representation(m)
    width <- if (identical(opt$modality_weights, "concatenate")) 2L else 1L
    expect_identical(dim(z), c(120L, width * m$config$n_latent), info = label)
    expect_true(all(is.finite(z)), info = label)
    psi <- get_normalized_splicing(m, indices = 1:5)
    expect_true(all(psi > 0 & psi < 1), info = label)
  }
})

test_that("splicevi() matches cells by name across the modalities", {
  p <- splice_part()
  cells <- colnames(p$expression)
  # Junction counts for cells 101-600 only: the first 100 cells are expression-only.
  shuffled <- p$cells[sample(600), , drop = FALSE]
  expect_message(m <- splicevi(p$expression, p$junctions[, 600:101], atse = p$atse,
                               cells = shuffled),
                 "100 cells have gene expression only and 0 junction counts only")
  expect_identical(m$cell_names, rownames(shuffled))   # cell data naming every cell orders them
  expect_identical(m$cell_data$library, shuffled$library)
  m <- splicevi(p$expression, p$junctions[, 600:101], atse = p$atse, cells = p$cells)
  expect_identical(m$cell_names, cells)
  expect_identical(unname(m$modality[c(1, 101)]), c("expression", "paired"))
  expect_identical(m$cell_data$library, p$cells$library)
  expect_output(print(m), "500 paired, 100 expression only, 0 splicing only")
  # A mosaic: cells 1-100 without junction counts, cells 501-600 without expression (one
  # of them has no junction reads either and is left out).
  e <- p$expression[, 1:500]
  e <- e[Matrix::rowSums(e) > 0, ]
  j <- p$junctions[, 101:600]
  j <- j[, Matrix::colSums(j) > 0]
  expect_message(mos <- splicevi(e, j, atse = p$atse, cells = p$cells, batch_key = "library"),
                 "100 cells have gene expression only and 99 junction counts only")
  expect_output(print(mos), "400 paired, 100 expression only, 99 splicing only")
  mos <- train(mos, max_epochs = 1L, seed = 0L, progress = FALSE)
  expect_true(all(is.finite(get_latent_representation(mos))))
  splicing_only <- mos$modality == "splicing"
  expect_equal(unname(get_library_size_factors(mos)$expression[splicing_only]),
               rep(log(1e-6), 99), tolerance = 1e-5)
  # Unnamed matrices of the same cells are matched by position.
  q <- splice_part(1:50)
  e <- q$expression
  j <- q$junctions
  colnames(e) <- colnames(j) <- NULL
  expect_identical(splicevi(e, j, atse = p$atse)$cell_names, paste0("cell", 1:50))
  expect_error(splicevi(e, q$junctions, atse = p$atse),
               "`junctions` has cell \\(column\\) names but `expression` has none")
})

test_that("splicevi() reads a SingleCellExperiment with the junctions in an altExp", {
  sce <- splice_sce()
  m <- splicevi(sce, batch_key = "library", atse_totals = "totals")
  expect_identical(m$registry$setup_args[c("layer", "altexp", "junction_assay", "atse_column")],
                   list(layer = "counts", altexp = "junctions", junction_assay = "counts",
                        atse_column = "event_id"))
  expect_identical(m$atse, rscvi_example_splicing()$atse)
  expect_identical(m$config$n_junctions, 1000L)
  other <- splice_sce(altexp = "SJcounts", atse_column = "cluster")
  expect_error(splicevi(other), "no junction alternative experiment.*`altexp`")
  expect_error(splicevi(other, altexp = "SJcounts"),
               "`atse` is NULL and .* has no row-data column 'event_id'.*cluster")
  m2 <- splicevi(other, altexp = "SJcounts", atse_column = "cluster")
  expect_identical(m2$registry$setup_args$atse_column, "cluster")
  expect_error(splicevi(sce, altexp = "nope"), "`altexp` 'nope' is not an alternative")
  expect_error(splicevi(sce, junction_assay = "psi"), "`junction_assay` 'psi' is not an assay")
  expect_error(splicevi(sce, layer = "logcounts"), "`layer` 'logcounts' is not an assay")
  # The junctions as their own SingleCellExperiment, with row data.
  p <- splice_part()
  junc <- SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = p$junctions), colData = S4Vectors::DataFrame(p$cells),
    rowData = S4Vectors::DataFrame(event_id = p$atse, gene_name = "g"))
  m3 <- splicevi(p$expression, junc, batch_key = "library")
  expect_identical(m3$registry$junction_gene_names, rep("g", 1000))
  expect_identical(m3$cell_data$library, p$cells$library)
  expect_error(splicevi(p$expression, junc, cells = p$cells), "`cells` is only used with")
})

test_that("splicevi() reads a Seurat object with a junction assay", {
  skip_if_not_installed("SeuratObject")
  p <- splice_part(1:100)
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(p$expression, meta.data = p$cells))
  so[["junctions"]] <- suppressWarnings(SeuratObject::CreateAssayObject(counts = p$junctions))
  m <- splicevi(so, atse = p$atse, batch_key = "library")
  expect_identical(m$registry$setup_args[c("assay", "junction_assay")],
                   list(assay = "RNA", junction_assay = "junctions"))
  expect_identical(m$config$n_junctions, 1000L)
  expect_error(splicevi(so), "`atse` is NULL")
  expect_error(splicevi(so, junction_assay = "nope"), "`junction_assay` 'nope' is not an assay")
})

test_that("splicevi() names what is wrong with bad input", {
  p <- splice_part(1:40)
  e <- p$expression
  j <- p$junctions
  atse <- p$atse
  # Junctions without an event id, or a map of the wrong length.
  bad <- atse
  bad[c(3, 8)] <- c(NA, "")
  expect_error(splicevi(e, j, atse = bad),
               "`atse` has 2 junctions without an event id.*e.g. junction 3, 8")
  expect_error(splicevi(e, j, atse = atse[-1]), "`atse` has 999 values but `junctions` has 1000")
  expect_error(splicevi(e, j), "`atse` is NULL")
  expect_error(splicevi(e, j, atse = list(atse)), "`atse` must be a vector")
  # ATSE totals that disagree with the junction counts.
  tot <- event_totals(j)
  expect_s3_class(splicevi(e, j, atse = atse, atse_totals = tot), "SPLICEVI")
  wrong <- tot
  wrong[1, 1] <- wrong[1, 1] + 1
  expect_error(splicevi(e, j, atse = atse, atse_totals = wrong),
               "`atse_totals` disagrees with the junction counts in 1 \\(cell, junction\\)")
  expect_error(splicevi(e, j, atse = atse, atse_totals = tot[-1, ]),
               "`atse_totals` must have the rows")
  expect_error(splicevi(e, j, atse = atse, atse_totals = tot[, -1]),
               "`atse_totals` must have the cells")
  expect_error(splicevi(e, j, atse = atse, atse_totals = "totals"),
               "`atse_totals` = \"totals\" names an assay")
  # Counts that are not counts, in either modality.
  bj <- as.matrix(j)
  bj[1, 1] <- NA
  expect_error(splicevi(e, bj, atse = atse), "`junctions` contains 1 missing")
  bj[1, 1] <- -1
  expect_error(splicevi(e, bj, atse = atse), "`junctions` contains 1 negative")
  bj[1, 1] <- 0.5
  expect_error(splicevi(e, bj, atse = atse),
               "`junctions` contains 1 non-integer.*junction read counts")
  be <- as.matrix(e)
  be[2, 2] <- 1.5
  expect_error(splicevi(be, j, atse = atse), "`expression` contains 1 non-integer.*raw counts")
  # Duplicated names.
  dup <- j
  rownames(dup)[2] <- rownames(dup)[1]
  expect_error(splicevi(e, dup, atse = atse), "`junctions` has 1 duplicated junction names")
  # Cells missing from one modality, or no cells in common.
  expect_error(splicevi(e[, 1:30], j[, 11:40], atse = atse, fully_paired = TRUE),
               "`fully_paired` = TRUE but 10 cells of `expression` are missing from `junctions`")
  renamed <- j
  colnames(renamed) <- paste0("x", seq_len(ncol(j)))
  expect_error(splicevi(e, renamed, atse = atse), "have no cell names in common")
  empty <- e
  empty[, 5] <- 0
  expect_error(splicevi(Matrix::drop0(empty), j[, -5], atse = atse),
               "1 cells have no counts in any modality")
  expect_error(splicevi(e, atse = atse), "`junctions` is NULL")
  expect_error(splicevi(), "both NULL")
  # Cell data and keys.
  expect_error(splicevi(e, j, atse = atse, cells = p$cells[1:10, , drop = FALSE]),
               "`cells` has no row for 30")
  expect_error(splicevi(e, j, atse = atse, cells = p$cells, batch_key = "batch"),
               "`batch_key` 'batch' is not a column")
  expect_error(splicevi(e, j, atse = atse, layer = "counts"), "`layer` names the expression assay")
  expect_error(splicevi(e, j, atse = atse, altexp = "junctions"), "`altexp`")
  # Hyperparameters and unknown arguments.
  expect_error(splicevi(e, j, atse = atse, n_latent = 0), "`n_latent`")
  expect_error(splicevi(e, j, atse = atse, modality_weights = "mean"), "`modality_weights`")
  expect_error(splicevi(e, j, atse = atse, splicing_loss_type = "dm"), "`splicing_loss_type`")
  expect_error(splicevi(e, j, atse = atse, splicing_concentration = 5),
               "`splicing_concentration`.*beta_binomial")
  expect_error(splicevi(e, j, atse = atse, max_nobs = 0), "`max_nobs`")
  expect_error(splicevi(e, j, atse = atse, code_dim = 0), "`code_dim`")
  expect_error(splicevi(e, j, atse = atse, dropout_rate = 1), "`dropout_rate`")
  expect_error(splicevi(e, j, atse = atse, n_latnet = 3), "does not use: n_latnet")
  expect_error(splicevi(e, j, atse = atse, train = TRUE, max_epoch = 1),
               "unknown training arguments: 'max_epoch'")
  # R survives: the same data still make a model.
  expect_s3_class(splicevi(e, j, atse = atse), "SPLICEVI")
})

test_that("a trained SPLICEVI model answers every query with the right shapes", {
  m <- splice_model()
  p <- splice_part()
  n <- 600L
  Z <- m$config$n_latent
  h <- history(m)
  expect_identical(nrow(h), 3L)
  expect_true(all(is.finite(h$elbo_train)) && all(is.finite(h$elbo_validation)))
  expect_equal(h$kl_weight, c(0, 1, 2) / 50)

  z <- get_latent_representation(m)
  expect_identical(dim(z), c(n, Z))
  expect_identical(dimnames(z), list(colnames(p$expression), paste0("SPLICEVI_", 1:Z)))
  ze <- get_latent_representation(m, modality = "expression", indices = 1:10)
  zs <- get_latent_representation(m, modality = "splicing", indices = 1:10)
  expect_identical(dim(ze), c(10L, Z))
  expect_identical(dim(zs), c(10L, Z))
  expect_true(all(zs >= 0))                   # the partial encoder's mean is non-negative
  expect_false(isTRUE(all.equal(ze, zs)))
  dist <- get_latent_representation(m, return_dist = TRUE, indices = 1:5)
  expect_equal(dist$mean, z[1:5, ], tolerance = 1e-6)
  expect_true(all(dist$var > 0))

  # PSI: in (0, 1); under DM the junctions of an ATSE sum to 1; the posterior mean moves
  # towards a cell's reads and equals the decoder where the ATSE has no reads.
  psi <- get_normalized_splicing(m)
  expect_identical(dim(psi), c(n, 1000L))
  expect_identical(dimnames(psi), list(colnames(p$expression), rownames(p$junctions)))
  expect_true(all(psi > 0 & psi < 1))
  sums <- psi[, seq(1, 1000, 2)] + psi[, seq(2, 1000, 2)]
  expect_equal(unname(sums), matrix(1, n, 500), tolerance = 1e-5)
  post <- get_normalized_splicing(m, norm_splicing_function = "dm_posterior_mean")
  expect_true(all(post > 0 & post < 1))
  totals <- t(as.matrix(event_totals(p$junctions)))
  reads <- totals > 0
  expect_gt(mean(abs(post - psi)[reads]), 0.01)
  expect_lt(max(abs(post - psi)[!reads]), 1e-5)
  # Posterior mean PSI lies between the decoder's PSI and the observed ratio.
  ratio <- t(as.matrix(p$junctions)) / pmax(totals, 1)
  lo <- pmin(psi, ratio) - 1e-5
  hi <- pmax(psi, ratio) + 1e-5
  expect_true(all(post[reads] >= lo[reads] & post[reads] <= hi[reads]))
  sub <- get_normalized_splicing(m, indices = 1:4, junction_list = rownames(p$junctions)[c(9, 2)],
                                 transform_batch = c("A01", "B08"))
  expect_identical(dimnames(sub), list(colnames(p$expression)[1:4],
                                       rownames(p$junctions)[c(2, 9)]))
  draws <- get_normalized_splicing(m, indices = 1:3, use_z_mean = FALSE, n_samples = 4L,
                                   return_mean = FALSE)
  expect_identical(dim(draws), c(4L, 3L, 1000L))
  expect_identical(dimnames(draws)[[2]], colnames(p$expression)[1:3])
  expect_false(isTRUE(all.equal(draws[1, , ], draws[2, , ])))

  lib <- get_library_size_factors(m)
  expect_identical(names(lib), "expression")
  expect_equal(lib$expression, log(Matrix::colSums(p$expression) + 1e-6), tolerance = 1e-5)

  rho <- get_normalized_expression(m)
  expect_identical(dim(rho), c(n, nrow(p$expression)))
  expect_equal(unname(rowSums(rho)), rep(1, n), tolerance = 1e-4)
  expect_true(is.finite(get_elbo(m)) && get_elbo(m) < 0)
  expect_true(get_reconstruction_error(m, indices = 1:50) > 0)
  parts <- get_reconstruction_error(m, indices = 1:50, by_modality = TRUE)
  expect_named(parts, c("expression", "splicing"))
  expect_equal(parts$expression + parts$splicing, get_reconstruction_error(m, indices = 1:50),
               tolerance = 0.05)   # one posterior draw per call

  de <- differential_expression(m, idx1 = 1:100, idx2 = 101:200, n_samples_overall = 200L)
  expect_setequal(rownames(de), rownames(p$expression))

  ds <- differential_splicing(m, idx1 = 1:100, idx2 = 101:200, n_samples_overall = 300L)
  expect_identical(names(ds), c("junction_id", "proba_ds", "is_ds_fdr", "bayes_factor",
                                "effect_size", "emp_effect", "est_prob1", "est_prob2",
                                "emp_prob1", "emp_prob2", "n_obs_group1", "n_obs_group2"))
  expect_identical(ds$junction_id, rownames(p$junctions))      # junction order
  expect_true(all(ds$proba_ds >= 0 & ds$proba_ds <= 1))
  expect_type(ds$is_ds_fdr, "logical")
  expect_equal(ds$effect_size, ds$est_prob2 - ds$est_prob1, tolerance = 1e-6)
  # Empirical PSI over the cells of group 1 with reads in the ATSE.
  obs1 <- colSums(reads[1:100, ])
  expect_identical(ds$n_obs_group1, as.integer(obs1))
  emp1 <- ifelse(obs1 > 0, colSums((ratio * reads)[1:100, ]) / pmax(obs1, 1), -1)
  expect_equal(ds$emp_prob1, unname(emp1), tolerance = 1e-5)
  va <- differential_splicing(m, groupby = "library", group1 = c("A01", "B01"),
                              group2 = "C01", mode = "vanilla", all_stats = FALSE,
                              norm_splicing_function = "decoder", n_samples_overall = 100L,
                              silent = TRUE)
  expect_identical(nrow(va), 2000L)
  expect_true(all(is.na(va$is_ds_fdr)) && all(is.na(va$emp_prob1)))
  expect_identical(unique(va$comparison), c("A01 vs C01", "B01 vs C01"))
  bc <- differential_splicing(m, idx1 = 1:50, idx2 = 51:100, batch_correction = TRUE,
                              batchid1 = "A01", batchid2 = "A01", n_samples_overall = 50L)
  expect_identical(nrow(bc), 1000L)
  expect_error(differential_splicing(m, idx1 = 1:5, batchid1 = "A01"), "batch_correction")
  expect_error(differential_splicing(m, idx1 = 1:5, nope = 1), "unknown arguments.*nope")

  expect_output(print(m), "3 epochs")
  expect_plots(m)
})

test_that("SPLICEVI queries check and take new data", {
  m <- splice_model()
  p <- splice_part(1:30, all_genes = TRUE)
  z <- get_latent_representation(m, indices = 1:30)
  expect_equal(get_latent_representation(m, x = p[c("expression", "junctions", "cells")]), z,
               tolerance = 1e-5)
  expect_equal(get_latent_representation(m, x = p), z, tolerance = 1e-5)   # with the same atse
  expr_only <- get_normalized_splicing(m, x = list(expression = p$expression, cells = p$cells))
  expect_identical(dim(expr_only), c(30L, 1000L))
  shuffled <- p
  shuffled$junctions <- p$junctions[c(2:1000, 1), ]
  expect_error(get_latent_representation(m, x = shuffled[c("expression", "junctions", "cells")]),
               "different order")
  renamed <- p$junctions
  rownames(renamed)[1] <- "chrZ:1-2"
  expect_error(get_latent_representation(m, x = list(expression = p$expression,
                                                      junctions = renamed, cells = p$cells)),
               "junctions do not match the model's junctions")
  moved <- p
  moved$atse[1:2] <- moved$atse[3:4]
  expect_error(get_latent_representation(m, x = moved),
               "event \\(ATSE\\) ids of the junctions of `x\\$junctions` differ .* for 2 junctions")
  expect_error(get_latent_representation(m, x = p$expression), "must hold the modalities")
  expect_error(get_latent_representation(m, modality = "accessibility"), "`modality`")
  expect_error(get_normalized_splicing(m, junction_list = "chrZ:1-2"), "not in the model")
  expect_error(get_normalized_splicing(m, norm_splicing_function = "psi"),
               "`norm_splicing_function`")
  expect_error(get_normalized_splicing(m, transform_batch = "Z99"), "unknown batch")
  expect_error(get_normalized_splicing(m, n_samples = 0), "`n_samples`")
  expect_error(get_normalized_splicing(m, frobnicate = TRUE), "unknown arguments.*frobnicate")
  expect_error(get_library_size_factors(m, indices = 0), "`indices`")
  s <- splice_part(1:40)
  paired <- splicevi(s$expression, s$junctions, atse = s$atse, fully_paired = TRUE)
  expect_error(get_latent_representation(paired, modality = "splicing"), "fully_paired")
  cw <- splicevi(s$expression, s$junctions, atse = s$atse, modality_weights = "cell")
  expect_error(suppressWarnings(get_latent_representation(cw, x = s)),
               "modality_weights = \"cell\".*new data")
})

test_that("SPLICEVI models save and load", {
  m <- splice_model()
  p <- splice_part()
  dir <- tempfile("splicevi-")
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  save_model(m, dir)
  back <- load_model(dir)
  expect_s3_class(back, "SPLICEVI")
  expect_identical(back$gene_names, m$gene_names)
  expect_identical(back$junction_names, m$junction_names)
  expect_identical(back$atse, m$atse)
  expect_identical(back$registry$atse_levels, m$registry$atse_levels)
  expect_identical(back$registry$batch_categories, m$registry$batch_categories)
  expect_identical(back$config, m$config)
  expect_identical(nrow(history(back)), 3L)
  expect_error(get_latent_representation(back), "no data attached")
  expect_output(print(back), "none attached")
  again <- load_model(dir, x = p)
  expect_identical(get_latent_representation(again), get_latent_representation(m))
  expect_identical(get_normalized_splicing(again, indices = 1:20),
                   get_normalized_splicing(m, indices = 1:20))
  expect_error(load_model(dir, cells = p$cells), "do not apply to a SPLICEVI model")
})

test_that("train() of a SPLICEVI model has SpliceVI's defaults and options", {
  f <- formals(train.SPLICEVI)
  expect_identical(f[c("max_epochs", "lr", "weight_decay", "eps", "early_stopping",
                       "early_stopping_patience", "early_stopping_monitor",
                       "n_epochs_kl_warmup", "adversarial_mixing", "gradient_clipping",
                       "gradient_clipping_max_norm", "batch_size")],
                   list(max_epochs = 500L, lr = 1e-4, weight_decay = 1e-3, eps = 1e-8,
                        early_stopping = TRUE, early_stopping_patience = 50L,
                        early_stopping_monitor = "reconstruction_loss_validation",
                        n_epochs_kl_warmup = 50L, adversarial_mixing = TRUE,
                        gradient_clipping = TRUE, gradient_clipping_max_norm = 5,
                        batch_size = 128L))
  s <- splice_part(1:100)
  m <- splicevi(s$expression, s$junctions, atse = s$atse, cells = s$cells,
                batch_key = "library")
  m <- train(m, max_epochs = 1L, gradient_clipping = FALSE, adversarial_mixing = FALSE,
             progress = FALSE)
  m <- train(m, max_epochs = 1L, gradient_clipping_max_norm = 0.5, progress = FALSE)
  expect_identical(nrow(history(m)), 2L)
  expect_error(train(m, optimizer = "Adam"), "AdamW")
  expect_error(train(m, gradient_clipping_max_norm = 0), "`gradient_clipping_max_norm`")
  expect_error(train(m, gradient_clipping = "yes"), "`gradient_clipping`")
  expect_error(train(m, lr_scheduler_type = "cosine"), "lr_scheduler_type")
  fitted <- splicevi(s$expression, s$junctions, atse = s$atse, train = TRUE, max_epochs = 1L,
                     progress = FALSE)
  expect_identical(nrow(history(fitted)), 1L)
  one <- splicevi(s$expression, s$junctions, atse = s$atse)
  expect_warning(train(one, max_epochs = 1L, adversarial_mixing = TRUE, progress = FALSE),
                 "more than one batch")
})

test_that("runSPLICEVI() and RunSPLICEVI() store the joint latent space", {
  p <- splice_part(1:80)
  sce <- runSPLICEVI(splice_sce(p), batch_key = "library", n_latent = 3L, max_epochs = 2L,
                     seed = 0L, progress = FALSE)
  expect_identical(dim(SingleCellExperiment::reducedDim(sce, "SPLICEVI")), c(80L, 3L))
  expect_error(runSPLICEVI(p$expression), "SingleCellExperiment")
  expect_error(runSPLICEVI(sce, n_latnet = 3L), "n_latnet")
  skip_if_not_installed("SeuratObject")
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(p$expression, meta.data = p$cells))
  so[["junctions"]] <- suppressWarnings(SeuratObject::CreateAssayObject(counts = p$junctions))
  so <- RunSPLICEVI(so, atse = p$atse, batch_key = "library", n_latent = 3L, max_epochs = 2L,
                    seed = 0L, progress = FALSE)
  expect_run_reduction(so, "splicevi", "SPLICEVI", c(80L, 3L), RunSPLICEVI)
})

test_that("SPLICEVI imputes held-out PSI, which an untrained model cannot", {
  # The authors' masking rule (splicevi.md §2.2): per cell, 20% of its observed events
  # (at least one) lose their reads; the truth is their inclusion PSI.
  p <- splice_part()
  inc <- seq(1, 1000, 2)
  j <- as.matrix(p$junctions)
  tot <- j[inc, ] + j[inc + 1, ]
  set.seed(0)
  mask <- matrix(FALSE, nrow(tot), ncol(tot))
  for (i in seq_len(ncol(tot))) {
    obs <- which(tot[, i] > 0)
    k <- max(1L, floor(0.2 * length(obs)))
    if (length(obs)) mask[obs[sample.int(length(obs), k)], i] <- TRUE
  }
  truth <- (j[inc, ] / pmax(tot, 1))[mask]
  j[inc, ][mask] <- 0
  j[inc + 1, ][mask] <- 0
  spearman <- function(model) {
    psi <- t(get_normalized_splicing(model, norm_splicing_function = "decoder"))[inc, ]
    stats::cor(truth, psi[mask], method = "spearman")
  }
  fit <- function(model) {
    train(model, max_epochs = 20L, lr = 1e-2, n_epochs_kl_warmup = 10L, early_stopping = FALSE,
          seed = 0L, device = "cpu", progress = FALSE)
  }
  jm <- Matrix::Matrix(j, sparse = TRUE)
  # SpliceVI's random start imputes nothing before training.
  m <- splicevi(p$expression, jm, atse = p$atse, cells = p$cells, batch_key = "library",
                initialize_bias_from_psi = FALSE)
  untrained <- spearman(m)
  trained <- spearman(fit(m))
  # Measured on 2 cores: untrained about 0.00, trained 0.84-0.85 (seeds 0, 1); the
  # per-junction mean of the training entries reaches 0.85 on this split.
  expect_lt(abs(untrained), 0.2)
  expect_gt(trained, 0.75)
  # rscvi's default start is each junction's mean PSI: the baseline before any training,
  # and training keeps it (measured: baseline 0.853, untrained 0.853, trained 0.850).
  train_tot <- j[inc, ] + j[inc + 1, ]
  junction_mean <- rowSums(j[inc, ] / pmax(train_tot, 1)) / pmax(rowSums(train_tot > 0), 1)
  baseline <- stats::cor(truth, matrix(junction_mean, nrow(tot), ncol(tot))[mask],
                         method = "spearman")
  m <- splicevi(p$expression, jm, atse = p$atse, cells = p$cells, batch_key = "library")
  expect_gt(spearman(m), baseline - 0.01)
  expect_gt(spearman(fit(m)), baseline - 0.01)
})

test_that("SPLICEVI's learning-rate schedules change the recorded learning rate", {
  p <- splice_part(1:80)
  # A fresh model each time: training continues a model's history.
  fresh <- function() splicevi(p$expression, p$junctions, atse = p$atse, cells = p$cells,
                               n_latent = 3L)
  step <- train(fresh(), max_epochs = 4L, lr = 1e-3, lr_scheduler_type = "step",
                step_size = 2L, lr_factor = 0.5, seed = 0L, progress = FALSE)
  expect_equal(history(step)$lr, c(1e-3, 1e-3, 5e-4, 5e-4))
  # Off by default (the plateau rule needs reduce_lr_on_plateau = TRUE).
  expect_equal(history(train(fresh(), max_epochs = 2L, seed = 0L, progress = FALSE))$lr,
               c(1e-4, 1e-4))
  plateau <- train(fresh(), max_epochs = 3L, lr = 1e-3, reduce_lr_on_plateau = TRUE,
                   lr_patience = 0L, lr_threshold = 1e9, lr_factor = 0.5, seed = 0L,
                   progress = FALSE)
  expect_equal(history(plateau)$lr, c(1e-3, 1e-3, 5e-4))
  m <- fresh()
  expect_error(train(m, lr_factor = 1.5, reduce_lr_on_plateau = TRUE), "lr_factor")
  expect_error(train(m, reduce_lr_on_plateau = TRUE, early_stopping = FALSE,
                     check_val_every_n_epoch = 0L), "never validates")
  expect_error(train(m, reduce_lr_on_plateau = TRUE, lr_scheduler_metric = "elbo"),
               "lr_scheduler_metric")
})

# A STARsolo SJ folder: `features` rows are SJ.out.tab lines.
write_sj <- function(features, counts, barcodes, gz = FALSE) {
  dir <- tempfile("sj-")
  dir.create(dir)
  utils::write.table(features, file.path(dir, "features.tsv"), sep = "\t", quote = FALSE,
                     row.names = FALSE, col.names = FALSE)
  writeLines(barcodes, file.path(dir, "barcodes.tsv"))
  Matrix::writeMM(methods::as(counts, "CsparseMatrix"), file.path(dir, "matrix.mtx"))
  if (gz) system2("gzip", file.path(dir, c("features.tsv", "barcodes.tsv", "matrix.mtx")))
  dir
}

test_that("read_starsolo_sj() reads STARsolo's SJ output and clusters junctions", {
  skip_if_not_installed("SingleCellExperiment")
  features <- data.frame(chr = c("1", "1", "1", "1", "2"), start = c(100, 100, 150, 500, 100),
                         end = c(200, 300, 300, 600, 200), strand = c(1, 1, 1, 1, 0),
                         motif = 1, annotated = c(1, 0, 1, 1, 0), u = 3, m = 0, o = 30)
  counts <- Matrix::sparseMatrix(i = 1:5, j = c(1, 2, 1, 2, 1), x = 1:5, dims = c(5, 2))
  for (gz in c(FALSE, TRUE)) {
    sj <- read_starsolo_sj(write_sj(features, counts, c("A-1", "B-1"), gz = gz))
    rd <- SummarizedExperiment::rowData(sj)
    # 1-3 chained by shared sites, 4 alone, 5 on another chromosome with no strand
    expect_identical(rd$event_id, c("clu_1_+", "clu_1_+", "clu_1_+", "clu_2_+", "clu_3_NA"))
    expect_identical(rownames(sj)[5], "2:100-200:*")
    expect_equal(as.matrix(SummarizedExperiment::assay(sj)), as.matrix(counts),
                 ignore_attr = TRUE)
  }
  expect_error(read_starsolo_sj(write_sj(features[c(1:5, 5), ], counts[c(1:5, 5), ],
                                          c("A-1", "B-1"))), "lists 1 junctions more than once")
  bad <- write_sj(features, counts[1:4, ], c("A-1", "B-1"))
  expect_error(read_starsolo_sj(bad), "matrix.mtx is 4 x 2 but there are 5 junctions")
  expect_error(read_starsolo_sj(tempfile()), "not a folder")
  empty <- tempfile()
  dir.create(empty)
  expect_error(read_starsolo_sj(empty), "no matrix.mtx|no features.tsv|no barcodes.tsv")
})

test_that("read_starsolo_sj() finds the donor/acceptor clusters of real STARsolo junctions", {
  dir <- skip_if_no_shared_data("splikit_splicing/junctions_sj")
  skip_if_not_installed("SingleCellExperiment")
  rows <- utils::read.delim(gzfile(file.path(dir, "junctions.tsv.gz")))
  counts <- Matrix::readMM(gzfile(file.path(dir, "junction_counts.mtx.gz")))
  # The conversion of the splikit object repeated some rows; STARsolo writes each once.
  once <- !duplicated(rows[c("chr", "start", "end", "strand")])
  rows <- rows[once, ]
  counts <- counts[once, ]
  barcodes <- utils::read.delim(gzfile(file.path(dir, "barcodes.tsv.gz")))$barcode
  features <- data.frame(rows$chr, rows$start, rows$end, rows$strand, rows$intron_motif,
                         rows$is_annot, 0, 0, 0)
  sj <- read_starsolo_sj(write_sj(features, counts, barcodes))
  ours <- SummarizedExperiment::rowData(sj)$event_id
  # The data's own atse_id: components of shared donor or acceptor ids (PROVENANCE.md).
  expect_identical(length(unique(ours)), length(unique(rows$atse_id)))
  expect_identical(as.vector(table(table(ours))), as.vector(table(table(rows$atse_id))))
  expect_true(all(tapply(rows$atse_id, ours, function(v) length(unique(v))) == 1))
  # The reader's output goes straight into splicevi() (event ids from its row data).
  expression <- Matrix::Matrix(rep(seq_len(ncol(sj)) %% 5 + 1, each = 3), 3, ncol(sj),
                               sparse = TRUE, dimnames = list(paste0("g", 1:3), colnames(sj)))
  m <- splicevi(expression, sj)
  expect_identical(as.integer(m$config$n_atse), length(unique(ours)))
})
