# The GIMVI model object (gimvi.md): construction from a sequencing and a spatial dataset,
# training, latent space and imputation, save/load. As for SCVI, the numbers come from the
# Rust core; this file converts, checks and presents.

.gimvi_parts <- c("seq", "spatial")

.check_gimvi <- function(model, arg = "model") .check_kind(model, "GIMVI", arg)

# Registration of one of the two datasets; `labels_key` applies where the column exists.
.gimvi_register <- function(x, cells, layer, assay, batch_key, labels_key, arg) {
  part <- sub("^x_", "", arg)
  input <- .input_from(x, cells = cells, layer = layer, assay = assay, arg = arg,
                       source_args = c(layer = paste0("layer_", part),
                                       assay = paste0("assay_", part)))
  if (!is.null(labels_key) && !labels_key %in% names(input$cell_data)) labels_key <- NULL
  f <- .register_fields(input, batch_key = batch_key, labels_key = labels_key)
  f$input <- input
  f
}

.gimvi_registry_json <- function(registries) {
  sprintf('{"model":"GIMVI","seq":%s,"spatial":%s}', .registry_to_json(registries$seq),
          .registry_to_json(registries$spatial))
}

.gimvi_registry_from_json <- function(json) {
  r <- jsonlite::fromJSON(json, simplifyVector = FALSE)
  part <- function(p) {
    .registry_from_json(as.character(jsonlite::toJSON(p, auto_unbox = TRUE, null = "null")))
  }
  list(seq = part(r$seq), spatial = part(r$spatial))
}

.new_gimvi <- function(ptr, data, registries, config, cell_names, cell_data, input,
                       dir = NULL) {
  structure(list(
    model = ptr,                 # Rust model (parameters, training state, registries)
    data = data,                 # list(seq, spatial) of Rust data sets, or NULL
    registry = registries,       # list(seq, spatial) of R registries
    config = config,
    gene_names = registries$seq$gene_names,
    spatial_gene_names = registries$spatial$gene_names,
    cell_names = cell_names,     # list(seq, spatial)
    cell_data = cell_data,       # list(seq, spatial)
    input = input,               # list(seq, spatial): class / cells / genes / layer
    dir = dir
  ), class = c("GIMVI", "rscvi_model"))
}

#' GIMVI: impute unmeasured genes of spatial data from an scRNA-seq reference
#'
#' Sets up scvi-tools' gimVI model (Lopez et al. 2019, \doi{10.48550/arXiv.1905.02269}): one
#' variational autoencoder over a single-cell RNA-seq dataset and a spatial transcriptomics
#' dataset whose genes are a subset of the sequencing genes. Each dataset has its own encoder
#' head; the latent space and the decoder are shared, and an adversarial classifier pushes the
#' two datasets to mix in the latent space. The decoder outputs every sequencing gene, so
#' [get_imputed_values()] predicts the genes the spatial panel did not measure.
#'
#' Defaults are those of scvi-tools' `GIMVI`: ZINB likelihood with a modelled library size
#' for the sequencing data, NB with the observed library for the spatial data, dispersion per
#' gene and batch (batches of both datasets are numbered jointly, spatial ones after the
#' sequencing ones), no hidden decoder layer.
#'
#' @param x_seq,x_spatial the sequencing and the spatial data: each a `SingleCellExperiment`,
#'   a `Seurat` object, or a genes x cells count matrix. Every spatial gene must be among the
#'   sequencing genes (matched by name; any order). Cells without counts must be removed.
#' @param cells_seq,cells_spatial cell data (data.frames) for matrix input.
#' @param layer_seq,layer_spatial the assay of a `SingleCellExperiment` holding the counts
#'   (default `"counts"`).
#' @param assay_seq,assay_spatial the assay of a `Seurat` object whose counts to use
#'   (default: its default assay).
#' @param batch_key_seq,batch_key_spatial cell-data columns with each dataset's batches.
#' @param labels_key a cell-data column with cell labels, registered in each dataset that has
#'   it (kept with the model; the likelihoods do not use it).
#' @param generative_distributions likelihood of the sequencing and of the spatial counts,
#'   each `"zinb"`, `"nb"` or `"poisson"`.
#' @param model_library_size for each dataset, model the library size as a latent variable
#'   (`TRUE`) or use the observed total count (`FALSE`).
#' @param n_latent dimension of the latent space.
#' @param n_layers_encoder_individual,n_layers_encoder_shared hidden layers of each
#'   dataset's encoder head and of the shared encoder.
#' @param dim_hidden_encoder width of the encoder layers.
#' @param n_layers_decoder_individual,n_layers_decoder_shared hidden decoder layers
#'   conditioned on the batch, and shared (none by default: the decoder is linear).
#' @param dim_hidden_decoder_individual,dim_hidden_decoder_shared widths of those layers.
#' @param dropout_rate_encoder,dropout_rate_decoder dropout rates.
#' @param dispersion `"gene-batch"`, `"gene"` or `"gene-cell"` (`"gene-label"` cannot be
#'   trained in scvi-tools either).
#' @param train train right away; `...` then goes to [train()].
#' @param ... with `train = TRUE`, arguments of [train()].
#' @return A `GIMVI` model.
#' @export
#' @examples
#' d <- rscvi_example_merfish()
#' keep <- Matrix::colSums(d$seq$counts) > 0
#' model <- gimvi(d$seq$counts[, keep], d$spatial$counts[, 1:300])
#' model
#' model <- train(model, max_epochs = 5, seed = 0)
#' imputed <- get_imputed_values(model)
#' dim(imputed$spatial)
gimvi <- function(x_seq, x_spatial, cells_seq = NULL, cells_spatial = NULL, layer_seq = NULL,
                  layer_spatial = NULL, assay_seq = NULL, assay_spatial = NULL, batch_key_seq = NULL, batch_key_spatial = NULL,
                  labels_key = NULL, generative_distributions = c("zinb", "nb"),
                  model_library_size = c(TRUE, FALSE), n_latent = 10L,
                  n_layers_encoder_individual = 1L, n_layers_encoder_shared = 1L,
                  dim_hidden_encoder = 64L, n_layers_decoder_individual = 0L,
                  n_layers_decoder_shared = 0L, dim_hidden_decoder_individual = 64L,
                  dim_hidden_decoder_shared = 64L, dropout_rate_encoder = 0.2,
                  dropout_rate_decoder = 0.2, dispersion = c("gene-batch", "gene", "gene-cell"),
                  train = FALSE, ...) {
  lik <- c("zinb", "nb", "poisson")
  if (!is.character(generative_distributions) || length(generative_distributions) != 2L ||
      anyNA(generative_distributions) || !all(generative_distributions %in% lik)) {
    .stop(paste0("`generative_distributions` must be two of \"zinb\", \"nb\", \"poisson\" ",
                 "(sequencing, spatial), got %s"), .describe(generative_distributions))
  }
  if (!is.logical(model_library_size) || length(model_library_size) != 2L ||
      anyNA(model_library_size)) {
    .stop("`model_library_size` must be two TRUE/FALSE values (sequencing, spatial), got %s",
          .describe(model_library_size))
  }
  if (identical(dispersion, "gene-label")) {
    .stop(paste0("`dispersion` = \"gene-label\" is not supported by GIMVI (scvi-tools cannot ",
                 "train it either); use \"gene-batch\", \"gene\" or \"gene-cell\""))
  }
  n_dec_ind <- .check_scalar_int(n_layers_decoder_individual, "n_layers_decoder_individual",
                                 min = 0)
  n_dec_sh <- .check_scalar_int(n_layers_decoder_shared, "n_layers_decoder_shared", min = 0)
  hp <- list(
    generative_distributions = I(generative_distributions),
    model_library_size = I(model_library_size),
    n_latent = .check_scalar_int(n_latent, "n_latent", min = 1),
    n_layers_encoder_individual = .check_scalar_int(n_layers_encoder_individual,
                                                    "n_layers_encoder_individual", min = 1),
    n_layers_encoder_shared = .check_scalar_int(n_layers_encoder_shared,
                                                "n_layers_encoder_shared", min = 1),
    dim_hidden_encoder = .check_scalar_int(dim_hidden_encoder, "dim_hidden_encoder", min = 1),
    n_layers_decoder_individual = n_dec_ind,
    n_layers_decoder_shared = n_dec_sh,
    dim_hidden_decoder_individual = .check_scalar_int(dim_hidden_decoder_individual,
                                                      "dim_hidden_decoder_individual", min = 1),
    dim_hidden_decoder_shared = .check_scalar_int(dim_hidden_decoder_shared,
                                                  "dim_hidden_decoder_shared", min = 1),
    dropout_rate_encoder = .check_scalar_num(dropout_rate_encoder, "dropout_rate_encoder",
                                             min = 0, max = 1),
    dropout_rate_decoder = .check_scalar_num(dropout_rate_decoder, "dropout_rate_decoder",
                                             min = 0, max = 1),
    dispersion = .match_choice(dispersion, c("gene-batch", "gene", "gene-cell"), "dispersion"),
    log_variational = TRUE
  )
  for (p in c("dropout_rate_encoder", "dropout_rate_decoder")) {
    if (hp[[p]] >= 1) .stop("`%s` must be in [0, 1), got %s", p, hp[[p]])
  }
  labels_key <- .check_scalar_string(labels_key, "labels_key", null_ok = TRUE)
  do_train <- .check_scalar_bool(train, "train")
  .check_constructor_dots(list(...), do_train, "gimvi")
  if (missing(x_spatial)) .stop("`x_spatial` is missing: gimvi() needs a spatial dataset")

  f <- list(
    seq = .gimvi_register(x_seq, cells_seq, layer_seq, assay_seq, batch_key_seq, labels_key,
                          "x_seq"),
    spatial = .gimvi_register(x_spatial, cells_spatial, layer_spatial, assay_spatial,
                              batch_key_spatial, labels_key, "x_spatial")
  )
  if (!is.null(labels_key) && is.null(f$seq$registry$setup_args$labels_key) &&
      is.null(f$spatial$registry$setup_args$labels_key)) {
    .stop("`labels_key` \"%s\" is a column of neither `x_seq` nor `x_spatial`", labels_key)
  }
  seq_genes <- f$seq$input$gene_names
  sp_genes <- f$spatial$input$gene_names
  missing <- setdiff(sp_genes, seq_genes)
  if (length(missing)) {
    .stop(paste0("%d of the %d spatial genes are not among the sequencing genes of `x_seq`: ",
                 "%s; every spatial gene must be measured in the sequencing data (subset ",
                 "`x_spatial` to shared genes)"), length(missing), length(sp_genes),
          .enum(missing, 10L))
  }
  for (p in .gimvi_parts) f[[p]]$registry$model <- "GIMVI"
  data <- list(seq = .new_dataset(f$seq, "x_seq"), spatial = .new_dataset(f$spatial, "x_spatial"))
  config <- c(list(n_genes = length(seq_genes),
                   spatial_gene_index = I(match(sp_genes, seq_genes) - 1L),
                   n_batch = I(c(f$seq$registry$n_batch, f$spatial$registry$n_batch))), hp)
  registries <- list(seq = f$seq$registry, spatial = f$spatial$registry)
  ptr <- .rs(rs_gimvi_new(data$seq, data$spatial, .gimvi_config_json(config),
                          .gimvi_registry_json(registries)))
  inputs <- list(seq = x_seq, spatial = x_spatial)
  input_info <- lapply(stats::setNames(.gimvi_parts, .gimvi_parts), function(p) {
    c(list(class = .input_class(inputs[[p]])),
      .input_summary(f[[p]]$input, f[[p]]$counts$n_genes))
  })
  model <- .new_gimvi(ptr, data, registries, config,
                      lapply(f, function(x) x$input$cell_names),
                      lapply(f, function(x) x$input$cell_data), input_info)
  if (do_train) model <- train.GIMVI(model, ...)
  model
}

.gimvi_config_json <- function(config) {
  as.character(jsonlite::toJSON(config, auto_unbox = TRUE, null = "null", digits = NA))
}

.gimvi_config_from_json <- function(json) {
  cfg <- jsonlite::fromJSON(json, simplifyVector = TRUE)
  cfg$spatial_gene_index <- as.integer(cfg$spatial_gene_index)
  cfg$n_batch <- as.integer(cfg$n_batch)
  cfg
}

#' @rdname train
#' @param kappa GIMVI: weight of the adversarial terms that make the two datasets
#'   indistinguishable in the latent space (0 turns the classifier off).
#' @param check_val_every_n_epoch GIMVI: evaluate the validation cells every this many
#'   epochs (`NULL`, the reference's default: never).
#' @export
train.GIMVI <- function(model, max_epochs = 200L, kappa = 5, train_size = NULL,
                        validation_size = NULL, shuffle_set_split = TRUE, batch_size = 128L,
                        lr = 1e-3, weight_decay = 1e-6, eps = 0.01, n_epochs_kl_warmup = 400L,
                        n_steps_kl_warmup = NULL, check_val_every_n_epoch = NULL, seed = NULL,
                        device = c("auto", "cpu", "cuda"), devices = 1L,
                        progress = .progress_default(), ...) {
  .check_gimvi(model)
  dots <- .train_dots(list(...))
  if (length(dots)) {
    .stop("train() got unknown arguments for a GIMVI model: %s; see ?train",
          .dots_names(dots))
  }
  cfg <- c(
    .train_config(.check_scalar_int(max_epochs, "max_epochs", min = 1), train_size,
                  validation_size, shuffle_set_split, batch_size, lr, weight_decay, eps,
                  n_epochs_kl_warmup, n_steps_kl_warmup, check_val_every_n_epoch %||% 0L,
                  seed),
    list(early_stopping = FALSE)
  )
  cfg$kappa <- .check_scalar_num(kappa, "kappa", min = 0)
  .train_model(model, cfg, .check_device(device), .progress_mode(progress, list(...)),
               devices)
}

# The data a GIMVI query runs on: for each requested part, the model's own data or new data
# registered against that part's registry.
.gimvi_query_data <- function(model, x_seq, x_spatial) {
  .warn_untrained(model)
  new <- list(seq = x_seq, spatial = x_spatial)
  lapply(stats::setNames(.gimvi_parts, .gimvi_parts), function(p) {
    arg <- paste0("x_", p)
    x <- new[[p]]
    if (is.null(x)) {
      if (is.null(model$data) || .null_ptr(model$data[[p]])) {
        .stop(paste0("this model has no data attached (it was loaded with load_model() ",
                     "without `x`): pass `%s`"), arg)
      }
      return(list(data = model$data[[p]], cell_names = model$cell_names[[p]]))
    }
    .register_against(x, model$registry[[p]], arg = arg)
  })
}

.gimvi_batch_size <- function(batch_size) .check_scalar_int(batch_size, "batch_size", min = 1)

#' @rdname get_latent_representation
#' @param x_seq,x_spatial GIMVI: new sequencing / spatial data to embed instead of the
#'   model's own (same genes and categories as the model's; a `list(counts, cells)` carries
#'   cell data for matrix input).
#' @param deterministic GIMVI: the posterior mean (`TRUE`) or one sample of z.
#' @return GIMVI: a list with `seq` and `spatial`, each a cells x `n_latent` matrix.
#' @export
get_latent_representation.GIMVI <- function(model, x_seq = NULL, x_spatial = NULL,
                                             deterministic = TRUE, batch_size = 128L, ...) {
  .check_gimvi(model)
  .no_dots(list(...), "get_latent_representation", "GIMVI")
  deterministic <- .check_scalar_bool(deterministic, "deterministic")
  batch_size <- .gimvi_batch_size(batch_size)
  q <- .gimvi_query_data(model, x_seq, x_spatial)
  lapply(stats::setNames(seq_along(.gimvi_parts), .gimvi_parts), function(k) {
    z <- .rs(rs_model_latent(model$model, k - 1L, q[[k]]$data, NULL, deterministic, 1L,
                             batch_size, "cpu"))$z
    dimnames(z) <- list(q[[k]]$cell_names, paste0("GIMVI_", seq_len(ncol(z))))
    z
  })
}

#' Imputed expression from a GIMVI model
#'
#' Decodes every cell of both datasets into expression of all sequencing genes: for spatial
#' cells this predicts the genes the panel did not measure. With `normalized = TRUE` the
#' values are expression proportions, renormalised to sum to one over the genes of the decode
#' mode (the spatial panel for spatial cells by default); with `normalized = FALSE` they are
#' expected counts on the scale of the cell's library (the observed panel total for spatial
#' cells).
#'
#' @param model a trained `GIMVI` model.
#' @param ... unused.
#' @return A list with `seq` and `spatial`: cells x sequencing-genes matrices.
#' @export
#' @examples
#' d <- rscvi_example_merfish()
#' keep <- Matrix::colSums(d$seq$counts) > 0
#' model <- train(gimvi(d$seq$counts[, keep], d$spatial$counts), max_epochs = 5, seed = 0)
#' imputed <- get_imputed_values(model, normalized = FALSE)
#' imputed$spatial[1:3, 1:4]
get_imputed_values <- function(model, ...) UseMethod("get_imputed_values")

#' @rdname get_imputed_values
#' @param x_seq,x_spatial new sequencing / spatial data instead of the model's own.
#' @param normalized proportions (`TRUE`) or expected counts (`FALSE`).
#' @param decode_mode `NULL` (each dataset its own), or `"seq"` / `"spatial"` (or 0 / 1):
#'   the gene set the proportions are renormalised over.
#' @param deterministic use the posterior means (`TRUE`) or one posterior sample.
#' @param batch_size cells per minibatch.
#' @param method how the spatial cells are imputed: `"decoder"` (scvi-tools' estimator, the
#'   default) decodes each cell's latent posterior; `"blend"` mixes that with the expression
#'   of the cell's `k` nearest sequencing cells in the measured panel (log-normalised,
#'   Euclidean; their counts over their panel total, times the cell's panel total for
#'   `normalized = FALSE`), at `weight` (0: the decoder, 1: the neighbours). On the
#'   leave-genes-out benchmarks the blend beats both the decoder and a plain neighbour
#'   average (bench/README.md); use it to predict unmeasured genes, and the decoder for
#'   parity with scvi-tools. The sequencing cells are always decoded.
#' @param k,weight the neighbours and their weight in `method = "blend"`; the defaults
#'   scored best, averaged over the two benchmark pairs, on the folds of seed 0
#'   (`bench/gimvi_blend_grid.R`).
#' @export
get_imputed_values.GIMVI <- function(model, x_seq = NULL, x_spatial = NULL, normalized = TRUE,
                                     decode_mode = NULL, deterministic = TRUE,
                                     batch_size = 128L, method = c("decoder", "blend"),
                                     k = 30L, weight = 0.75, ...) {
  .check_gimvi(model)
  .no_dots(list(...), "get_imputed_values")
  method <- .match_choice(method, c("decoder", "blend"), "method")
  if (method == "blend") {
    k <- .check_scalar_int(k, "k", min = 1)
    weight <- .check_scalar_num(weight, "weight", min = 0, max = 1)
  } else if (!missing(k) || !missing(weight)) {
    .stop("`k` and `weight` apply to method = \"blend\"; the decoder has neither")
  }
  normalized <- .check_scalar_bool(normalized, "normalized")
  deterministic <- .check_scalar_bool(deterministic, "deterministic")
  batch_size <- .gimvi_batch_size(batch_size)
  mode <- -1L
  if (!is.null(decode_mode)) {
    ok <- length(decode_mode) == 1L && !is.na(decode_mode) &&
      (decode_mode %in% .gimvi_parts || decode_mode %in% c(0, 1))
    if (!ok) {
      .stop("`decode_mode` must be NULL, \"seq\", \"spatial\", 0 or 1, got %s",
            .describe(decode_mode))
    }
    mode <- if (is.character(decode_mode)) match(decode_mode, .gimvi_parts) - 1L
            else as.integer(decode_mode)
  }
  q <- .gimvi_query_data(model, x_seq, x_spatial)
  lapply(stats::setNames(seq_along(.gimvi_parts), .gimvi_parts), function(part) {
    v <- if (method == "blend" && .gimvi_parts[[part]] == "spatial") {
      .rs(rs_gimvi_imputed_blend(model$model, q$seq$data, q$spatial$data, deterministic,
                                 normalized, mode, batch_size, k, weight))
    } else {
      .rs(rs_gimvi_imputed(model$model, part - 1L, q[[part]]$data, NULL, deterministic,
                           normalized, mode, batch_size))
    }
    dimnames(v) <- list(q[[part]]$cell_names, model$gene_names)
    v
  })
}

#' @rdname summary.SCVI
#' @method print GIMVI
#' @export
print.GIMVI <- function(x, ...) {
  if (!.print_title(x, "GIMVI")) return(invisible(x))
  cfg <- x$config
  for (p in .gimvi_parts) {
    inp <- x$input[[p]]
    reg <- x$registry[[p]]
    src <- if (is.na(inp$class %||% NA)) "" else sprintf(" from a %s", inp$class)
    attached <- !is.null(x$data) && !.null_ptr(x$data[[p]])
    cat(sprintf("  %-8s  %s cells x %s genes%s%s; batch %s\n", paste0(p, ":"),
                .fmt_int(inp$n_cells), .fmt_int(inp$n_genes), src,
                if (attached) "" else " (not attached)",
                .key_text(reg$setup_args$batch_key, reg$n_batch, "batch")))
  }
  n_imp <- length(x$gene_names) - length(x$spatial_gene_names)
  cat(sprintf("  imputes:   %s sequencing genes not in the spatial panel\n", .fmt_int(n_imp)))
  cat(sprintf(paste0("  model:     n_latent = %d, likelihoods %s / %s, library %s / %s, ",
                     "dispersion = \"%s\"\n"), cfg$n_latent, cfg$generative_distributions[1],
              cfg$generative_distributions[2],
              if (cfg$model_library_size[1]) "latent" else "observed",
              if (cfg$model_library_size[2]) "latent" else "observed", cfg$dispersion))
  h <- history(x)
  training <- if (nrow(h) == 0L) "not trained yet; call train(model)" else
    sprintf("%d epochs; last elbo_train %.1f (KL weight %.3f)", nrow(h),
            h$elbo_train[nrow(h)], h$kl_weight[nrow(h)])
  cat(sprintf("  training:  %s\n", training))
  invisible(x)
}

#' @rdname plot.SCVI
#' @export
plot.GIMVI <- function(x, which = c("elbo", "reconstruction", "kl"), ...) {
  .check_gimvi(x, "x")
  .plot_history(history(x), which, ...)
  invisible(x)
}

.load_gimvi <- function(dir, x) {
  ptr <- .rs(rs_model_load(path.expand(dir)))
  st <- .rs(rs_model_state(ptr))
  registries <- tryCatch(.gimvi_registry_from_json(st$registry), error = function(e) {
    .stop("`dir` '%s': the saved registries are not readable (%s)", dir, conditionMessage(e))
  })
  config <- .gimvi_config_from_json(st$config)
  input <- lapply(registries, function(r) {
    list(class = NA_character_, n_cells = r$n_cells, n_genes = length(r$gene_names),
         layer = r$setup_args$layer, assay = r$setup_args$assay)
  })
  model <- .new_gimvi(ptr, NULL, registries, config, NULL, NULL, input,
                      dir = normalizePath(dir))
  if (!is.null(x)) {
    if (!is.list(x) || is.object(x) || !all(.gimvi_parts %in% names(x))) {
      .stop("`x` must be a list(seq = ..., spatial = ...) of the two datasets for a GIMVI model")
    }
    q <- .gimvi_query_data(model, x$seq, x$spatial)
    model$data <- lapply(q, `[[`, "data")
    model$cell_names <- lapply(q, `[[`, "cell_names")
    model$input <- lapply(stats::setNames(.gimvi_parts, .gimvi_parts), function(p) {
      utils::modifyList(input[[p]], list(class = .input_class(x[[p]]),
                                         n_cells = length(q[[p]]$cell_names)))
    })
  }
  model
}

#' Example data: MERFISH and scRNA-seq of the mouse hypothalamic preoptic region
#'
#' A small real GIMVI pair shipped with the package (Moffitt et al. 2018, Science 362,
#' eaau5324, \doi{10.1126/science.aau5324}, as subset by the spacexr authors): MERFISH counts
#' of a 134-gene panel in 750 cells with x/y coordinates, and 10x scRNA-seq UMI counts of
#' 1,308 cells of the same region restricted to the same genes, with cell types. Four
#' sequencing cells have no counts on these genes: remove them before fitting. See
#' `system.file("extdata", "README.md", package = "rscvi")` for provenance.
#'
#' @return A list with `seq` and `spatial`, each a list of `counts` (`dgCMatrix`, genes x
#'   cells) and `cells` (data.frame; `cell_type`, `library`, `total_counts` for `seq`; `x`,
#'   `y`, `total_counts` for `spatial`).
#' @export
#' @examples
#' d <- rscvi_example_merfish()
#' sapply(d, function(p) dim(p$counts))
rscvi_example_merfish <- function() {
  readRDS(system.file("extdata", "merfish_hypothalamus.rds", package = "rscvi",
                      mustWork = TRUE))
}
