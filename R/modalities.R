# Models of two modalities in one latent space (MULTIVI: gene expression + chromatin
# accessibility; SPLICEVI: gene expression + splicing): what their R layers share. Reading
# the modalities (matrices, a SingleCellExperiment with the second modality in an altExp, a
# Seurat object with a second assay), matching cells by name across them, the registry's
# JSON, the core's dataset of both (the first modality's features, then the second's), new
# data for queries, loading, and the queries both answer. Each model's file says what its
# modalities are called and adds what is its own. Conversion and checks only: the numbers
# come from the Rust core.

# The setup arguments every model registers, after the ones that say where a model of two
# modalities read them from.
.shared_setup_keys <- c("batch_key", "labels_key", "size_factor_key",
                        "categorical_covariate_keys", "continuous_covariate_keys")

# ---------------------------------------------------------------------------------------------
# Reading the modalities.

# Counts of a Seurat assay named by argument `assay_arg`.
.seurat_assay_counts <- function(x, assay, arg, assay_arg) {
  .require_seurat(arg)
  assays <- SeuratObject::Assays(x)
  if (!assay %in% assays) {
    .stop("`%s` '%s' is not an assay of `%s`; available assays: %s", assay_arg, assay, arg,
          .enum(assays, 10L))
  }
  .seurat_counts(x, assay, arg)
}

.sce_assay <- function(x, layer, arg, layer_arg) {
  if (!requireNamespace("SummarizedExperiment", quietly = TRUE)) {
    .stop("`%s` is a %s, which needs the SummarizedExperiment package: install it first",
          arg, class(x)[1])
  }
  layer <- .check_scalar_string(layer %||% "counts", layer_arg)
  available <- SummarizedExperiment::assayNames(x)
  if (!layer %in% available) {
    .stop("`%s` '%s' is not an assay of `%s`; available assays: %s", layer_arg, layer, arg,
          if (length(available)) .enum(available, 10L) else "none")
  }
  list(m = SummarizedExperiment::assay(x, layer, withDimnames = TRUE), layer = layer)
}

# The count sources `src` (each list(m, ...)) with their rows taken to the model's features
# (`features`, by source name) where they hold them among others or in another order.
.sources_model_rows <- function(src, features) {
  for (k in intersect(names(features), names(src))) {
    if (!is.null(src[[k]])) src[[k]]$m <- .model_rows(src[[k]]$m, features[[k]])
  }
  src
}

.is_sce <- function(x) methods::is(x, "SummarizedExperiment")
.is_seurat <- function(x) methods::is(x, "Seurat")

# The checks the readers share of the arguments saying where the modalities are: `layer` /
# `assay` name the first modality's assay of a SingleCellExperiment / Seurat object `first`,
# `altexp` the altExp of `first` holding the second modality (then not given as `second`),
# and `cells` is the cell data of count matrices only. `args` names `first` and `second`,
# `what` the two modalities, in messages.
.check_modality_args <- function(first, second, cells, layer, assay, altexp, args, what) {
  if (!is.null(layer) && !.is_sce(first)) {
    .stop("`layer` names the %s assay of a SingleCellExperiment `%s`; `%s` is %s", what[[1]],
          args[[1]], args[[1]], .describe(first))
  }
  if (!is.null(assay) && !.is_seurat(first)) {
    .stop("`assay` names the %s assay of a Seurat object `%s`; `%s` is %s", what[[1]],
          args[[1]], args[[1]], .describe(first))
  }
  if (!is.null(altexp) && !methods::is(first, "SingleCellExperiment")) {
    .stop(paste0("`altexp` names the %s alternative experiment of a SingleCellExperiment ",
                 "`%s`; `%s` is %s"), what[[2]], args[[1]], args[[1]], .describe(first))
  }
  if (!is.null(altexp) && !is.null(second)) {
    .stop("give the %s counts either as `%s` or as `altexp` of `%s`, not both", what[[2]],
          args[[2]], args[[1]])
  }
  if (!is.null(cells) && (.is_sce(first) || .is_sce(second) || .is_seurat(first) ||
                          .is_seurat(second))) {
    .stop(paste0("`cells` is only used with count matrices; for a SingleCellExperiment or ",
                 "Seurat object the cell data come from the object itself"))
  }
  invisible(TRUE)
}

# The altExp of `x` (named `arg`) holding the second modality (`what`): `altexp` if given
# (it must be there), else the first of `candidates` that `x` has. Without one: an error
# that also points to `second_arg` when the modality is `required`, else NULL.
.find_altexp <- function(x, altexp, candidates, arg, second_arg, what, required) {
  alts <- if (methods::is(x, "SingleCellExperiment")) {
    SingleCellExperiment::altExpNames(x)
  } else {
    character(0)
  }
  available <- if (length(alts)) .enum(alts, 10L) else "none"
  if (!is.null(altexp)) {
    if (!altexp %in% alts) {
      .stop("`altexp` '%s' is not an alternative experiment of `%s`; available: %s", altexp,
            arg, available)
    }
    return(altexp)
  }
  hit <- intersect(candidates, alts)
  if (length(hit)) return(hit[[1]])
  if (required) {
    .stop(paste0("`%s` has no %s alternative experiment named %s: name it with `altexp` ",
                 "(altExps: %s), or pass the %s counts as `%s`"), arg, what,
          paste(candidates, collapse = "/"), available, what, second_arg)
  }
  NULL
}

# The assay of the Seurat object `x` (named `arg`) holding the second modality (`what`,
# named by the argument `assay_arg`): the first of `candidates` that `x` has. Without one:
# an error that also points to `second_arg` when the modality is `required`, else NULL.
.find_seurat_assay <- function(x, candidates, arg, second_arg, what, assay_arg, required) {
  assays <- SeuratObject::Assays(x)
  hit <- intersect(candidates, assays)
  if (length(hit)) return(hit[[1]])
  if (required) {
    .stop(paste0("`%s` is a Seurat object without an assay named %s: name its %s assay with ",
                 "`%s` (assays: %s), or pass the %s counts as `%s`"), arg,
          paste(candidates, collapse = "/"), what, assay_arg, .enum(assays, 10L), what,
          second_arg)
  }
  NULL
}

# One modality as a checked features x cells dgCMatrix with dimnames; `unit` names its
# features ("genes", "regions", "junctions"), `kind` the model, `integers` what the model
# expects instead of non-integer values. Cells without counts are allowed (they are
# unmeasured in this modality).
.modality_matrix <- function(src, unit, kind, integers) {
  arg <- src$arg
  m <- src$m
  feature <- sub("s$", "", unit)
  .refuse_file_name(m, arg)
  if (!is.matrix(m) && !methods::is(m, "Matrix") && length(dim(m)) != 2L) {
    .stop(paste0("`%s` must be a SingleCellExperiment, a Seurat object, or a %s x cells ",
                 "count matrix (dgCMatrix, other Matrix, or base matrix), got %s"), arg,
          feature, .describe(m))
  }
  if (ncol(m) == 0L) .stop("`%s` has no cells (0 columns); %s expects %s x cells", arg, kind, unit)
  if (nrow(m) == 0L) .stop("`%s` has no %s (0 rows); %s expects %s x cells", arg, unit, kind, unit)
  m <- .checked_counts(.to_dgc(m, arg), arg, kind, integers)
  features <- rownames(m) %||% paste0(feature, seq_len(nrow(m)))
  if (anyDuplicated(features)) {
    dup <- unique(features[duplicated(features)])
    .stop("`%s` has %d duplicated %s names (e.g. %s); feature names must be unique", arg,
          sum(duplicated(features)), feature, .enum(dup, 3L))
  }
  cell_names <- colnames(m)
  if (!is.null(cell_names) && anyDuplicated(cell_names)) {
    dup <- unique(cell_names[duplicated(cell_names)])
    .stop(paste0("`%s` has %d duplicated cell names (e.g. %s); cells are matched across ",
                 "modalities by name, make them unique"), arg, sum(duplicated(cell_names)),
          .enum(dup, 3L))
  }
  if (!is.null(cell_names) && (anyNA(cell_names) || !all(nzchar(cell_names)))) {
    .stop("`%s` has missing or empty cell names (column names)", arg)
  }
  dimnames(m) <- list(features, cell_names)
  m
}

# The classes of the objects the modalities came from, for print().
.input_classes <- function(sources) {
  paste(unique(unlist(lapply(sources, `[[`, "class"))), collapse = " + ")
}

# ---------------------------------------------------------------------------------------------
# Matching cells by name.

# Place the columns of `m` (features x its cells) at their cells' positions among
# `cell_names` (all cells); cells it lacks get zero columns.
.spread_columns <- function(m, cell_names) {
  if (identical(colnames(m), cell_names)) return(m)
  pos <- match(colnames(m), cell_names)
  t <- methods::as(m, "TsparseMatrix")
  Matrix::sparseMatrix(i = t@i + 1L, j = pos[t@j + 1L], x = as.double(t@x),
                       dims = c(nrow(m), length(cell_names)),
                       dimnames = list(rownames(m), cell_names))
}

# Cell data of every cell, merged over the modalities' own cell data (the first's first).
.merge_cell_data <- function(parts, cell_names) {
  parts <- Filter(function(p) !is.null(p) && ncol(p) > 0L, parts)
  out <- data.frame(row.names = cell_names)
  n <- length(cell_names)
  for (col in unique(unlist(lapply(parts, names)))) {
    v <- NULL
    filled <- logical(n)
    for (p in parts) {
      if (!col %in% names(p)) next
      new <- p[[col]]
      pos <- match(rownames(p), cell_names)
      ok <- !is.na(pos)
      pos <- pos[ok]
      new <- new[ok]
      take <- !filled[pos]
      if (is.null(v)) {
        v <- new[rep(NA_integer_, n)]
      } else if (is.factor(v) != is.factor(new)) {
        v <- as.character(v)
        new <- as.character(new)
      } else if (is.factor(v)) {
        levels(v) <- union(levels(v), levels(new))
        new <- factor(as.character(new), levels = levels(v))
      }
      v[pos[take]] <- new[take]
      filled[pos] <- TRUE
    }
    out[[col]] <- v
  }
  out
}

# The user's `cells` data.frame for matrix input, aligned to all cells. `args` names the
# modalities' inputs; `second_only` describes the cells the first one lacks.
.align_cells_arg <- function(cells, cell_names, args, second_only) {
  inputs <- paste0("`", args, "`", collapse = " and ")
  if (methods::is(cells, "DataFrame")) cells <- as.data.frame(cells, optional = TRUE)
  if (!is.data.frame(cells)) {
    .stop("`cells` must be NULL or a data.frame with one row per cell, got %s",
          .describe(cells))
  }
  if (.row_names_info(cells) > 0L) {
    missing <- setdiff(cell_names, rownames(cells))
    if (!length(missing)) return(cells[cell_names, , drop = FALSE])
    .stop(paste0("`cells` has no row for %d of the %d cells (e.g. %s); give one row per cell ",
                 "of %s, named by cell"), length(missing), length(cell_names),
          .enum(missing, 3L), inputs)
  }
  if (nrow(cells) != length(cell_names)) {
    .stop(paste0("`cells` has %d rows but %s have %d cells in all; give one row ",
                 "per cell (row names = cell names, or in the order of the cells of `%s` ",
                 "followed by the %s cells)"), nrow(cells), inputs,
          length(cell_names), args[[1]], second_only)
  }
  rownames(cells) <- cell_names
  cells
}

# The modalities combined over the union of their cells, matched by name: in the order of
# the rows of `cells` when they name every cell, else the first modality's cells, then those
# only the others have, in order. `mats` holds the modalities' checked matrices
# (.modality_matrix(); NULL where not given), `args` their inputs' names,
# `parts` their own cell data (or NULL). Unnamed matrices take the row names of `cells` when
# it has one row per cell, or are matched by position when none has cell names. `check(mats,
# cell_names)` applies the model's own rules before the matrices are spread over all cells;
# a modality not given becomes `n_features` rows of zeros. A cell is measured in a modality
# where it has counts in it (`by_counts`, MULTIVI: scvi-tools' rule) or where it is present
# (SPLICEVI). `labels` names the modalities: a cell measured in all is "paired", in one
# its label, in some their labels joined by "+"; `needs` says what a cell needs, and
# `cells_args` and `second_only` describe the inputs, in messages. Returns list(mats (with
# cell names), full (features x all cells), cell_names, cell_data, modality (per cell, named
# by cell)).
.combine_modalities <- function(mats, args, parts, cells, labels, needs, by_counts,
                                check = NULL, n_features = integer(length(mats)),
                                cells_args = args, second_only) {
  given <- !vapply(mats, is.null, logical(1))
  named <- vapply(mats, function(m) !is.null(colnames(m)), logical(1))
  if (!any(named) && is.data.frame(cells) && .row_names_info(cells) > 0L &&
      all(vapply(mats[given], ncol, 1L) == nrow(cells))) {
    for (k in which(given)) colnames(mats[[k]]) <- rownames(cells)
    named <- given
  }
  if (sum(given) > 1L) {
    if (any(named[given]) && !all(named[given])) {
      .stop(paste0("`%s` has cell (column) names but `%s` has none; cells are matched across ",
                   "modalities by name"), args[given & named][[1]], args[given & !named][[1]])
    }
    n_cols <- vapply(mats[given], ncol, 1L)
    if (!any(named[given]) && any(n_cols != n_cols[[1]])) {
      .stop(paste0("%s (%s cells) have no cell names to match cells by; name the columns of ",
                   "all"), paste0("`", args[given], "`", collapse = ", "),
            paste(n_cols, collapse = ", "))
    }
  }
  for (k in which(given & !named)) colnames(mats[[k]]) <- paste0("cell", seq_len(ncol(mats[[k]])))
  cell_names <- unique(unlist(lapply(mats[given], colnames)))
  # Cell data naming every cell sets the cells' order (the user's own, as in an AnnData or
  # MuData), and with it the cells a seeded split holds out.
  named_rows <- if (methods::is(cells, "DataFrame") ||
                    is.data.frame(cells) && .row_names_info(cells) > 0L) rownames(cells)
  if (!is.null(named_rows) && all(cell_names %in% named_rows)) {
    cell_names <- intersect(named_rows, cell_names)
  }
  if (!is.null(check)) check(mats, cell_names)
  full <- lapply(seq_along(mats), function(k) {
    if (given[[k]]) return(.spread_columns(mats[[k]], cell_names))
    Matrix::sparseMatrix(i = integer(0), j = integer(0), x = numeric(0),
                         dims = c(n_features[[k]], length(cell_names)),
                         dimnames = list(NULL, cell_names))
  })
  names(full) <- names(mats)
  none <- Reduce(`&`, lapply(full, function(m) Matrix::colSums(m) == 0))
  if (any(none)) {
    .stop(paste0("%d cells have no counts in any modality (e.g. %s): a cell needs %s; remove ",
                 "them from %s"), sum(none), .enum(cell_names[none], 3L), needs,
          paste0("`", args[given], "`", collapse = " and "))
  }
  measured <- if (by_counts) {
    lapply(full, function(m) Matrix::colSums(m) > 0)
  } else {
    lapply(mats, function(m) cell_names %in% colnames(m))
  }
  # Each cell's combination of modalities as a bit code, named once per code.
  bits <- 2^(seq_along(labels) - 1)
  code <- as.vector(do.call(cbind, measured) %*% bits)
  codes <- unique(code)
  kind <- vapply(codes, function(k) {
    m <- bitwAnd(k, bits) > 0
    if (all(m)) "paired" else paste(labels[m], collapse = "+")
  }, character(1))
  modality <- kind[match(code, codes)]
  cell_data <- if (!is.null(cells)) {
    .align_cells_arg(cells, cell_names, cells_args, second_only)
  } else {
    .merge_cell_data(parts, cell_names)
  }
  list(mats = mats, full = full, cell_names = cell_names, cell_data = cell_data,
       modality = stats::setNames(modality, cell_names))
}

# How many cells are paired, measured in each one modality (`labels`), and in each other
# combination of modalities that occurs.
.modality_counts <- function(modality, labels) {
  kinds <- union(c("paired", labels), sort(unique(modality)))
  vapply(kinds, function(l) sum(modality == l), integer(1))
}

# ---------------------------------------------------------------------------------------------
# Registry, dataset and model object.

# The registry of a new model of kind `kind` from the registered fields `f`: the setup
# arguments saying where the modalities came from (`setup`) before the shared ones, the
# model's own `fields` (its features by modality) and the cells of each modality.
.modality_registry <- function(f, kind, setup, fields, modality_cells) {
  registry <- f$registry
  registry$model <- kind
  for (k in names(fields)) registry[[k]] <- fields[[k]]
  registry$setup_args <- c(setup, registry$setup_args[.shared_setup_keys])
  registry$modality_cells <- modality_cells
  registry
}

# The registry as JSON: the shared fields (.registry_list()) with the setup arguments
# `setup_keys` of the modalities first, the model's own `fields` (ready for toJSON()) and the
# cells of each modality.
.modality_registry_to_json <- function(reg, setup_keys, fields) {
  out <- .registry_list(reg)
  own <- lapply(stats::setNames(nm = setup_keys), function(k) reg$setup_args[[k]])
  out$setup_args <- c(own, out$setup_args[.shared_setup_keys])
  out <- c(out, fields, list(modality_cells = as.list(reg$modality_cells)))
  as.character(jsonlite::toJSON(out, auto_unbox = TRUE, null = "null", digits = NA))
}

# The registry read back from JSON (.modality_registry_to_json()); `own(r)` gives the model's
# own fields from the parsed JSON `r`.
.modality_registry_from_json <- function(json, kind, setup_keys, own) {
  r <- jsonlite::fromJSON(json, simplifyVector = TRUE)
  reg <- .registry_from_list(r)
  reg$model <- kind
  setup <- lapply(stats::setNames(nm = setup_keys), function(k) .json_key(r$setup_args[[k]]))
  reg$setup_args <- c(setup, reg$setup_args[.shared_setup_keys])
  fields <- own(r)
  for (k in names(fields)) reg[[k]] <- fields[[k]]
  mc <- r$modality_cells
  reg$modality_cells <- if (length(mc)) unlist(lapply(mc, as.integer)) else integer(0)
  reg
}

# The core's dataset of the combined modalities (.combine_modalities()), every feature a
# "gene" there, registered fresh (`...`: the keys) or against `registry`, a model's registry
# whose features are `features` (each modality's in order: they name the rows of a modality
# the new data lack; `extend_categories`: new categories are appended, for scArches).
# Returns list(data, fields).
.modality_dataset <- function(comb, arg, registry = NULL, features = NULL,
                              extend_categories = FALSE, ...) {
  # The modalities go to the core as blocks (stacked there, once): no rbind() copy in R.
  blocks <- unname(comb$full)
  if (!is.null(registry)) registry$gene_names <- features
  genes <- features %||% unlist(lapply(blocks, function(m) rownames(m) %||% character(nrow(m))))
  input <- list(counts = blocks, cell_data = comb$cell_data, gene_names = genes,
                cell_names = comb$cell_names, layer = NULL)
  f <- if (is.null(registry)) {
    .register_fields(input, ...)
  } else {
    withCallingHandlers(.register_fields(input, registry = registry,
                                         extend_categories = extend_categories),
                        warning = .muffle("fewer than 3 cells"))
  }
  list(data = .new_dataset(f, arg), fields = f)
}

# The hyperparameters MULTIVI and SPLICEVI share, checked, as the core's config names them.
.joint_hyperparameters <- function(n_layers_encoder, n_layers_decoder, dropout_rate,
                                   gene_likelihood, modality_penalty, use_batch_norm,
                                   use_layer_norm, latent_distribution,
                                   deeply_inject_covariates, encode_covariates, fully_paired) {
  norms <- c("none", "encoder", "decoder", "both")
  list(
    n_layers_encoder = .check_scalar_int(n_layers_encoder, "n_layers_encoder", min = 1),
    n_layers_decoder = .check_scalar_int(n_layers_decoder, "n_layers_decoder", min = 1),
    dropout_rate = .check_dropout(dropout_rate),
    gene_likelihood = .match_choice(gene_likelihood, c("zinb", "nb", "poisson"),
                                    "gene_likelihood"),
    modality_penalty = .match_choice(modality_penalty, c("Jeffreys", "MMD", "None"),
                                     "modality_penalty"),
    use_batch_norm = .match_choice(use_batch_norm, norms, "use_batch_norm"),
    use_layer_norm = .match_choice(use_layer_norm, c("both", "none", "encoder", "decoder"),
                                   "use_layer_norm"),
    latent_distribution = .match_choice(latent_distribution, c("normal", "ln"),
                                        "latent_distribution"),
    deeply_inject_covariates = .check_scalar_bool(deeply_inject_covariates,
                                                  "deeply_inject_covariates"),
    encode_covariates = .check_scalar_bool(encode_covariates, "encode_covariates"),
    fully_paired = .check_scalar_bool(fully_paired, "fully_paired")
  )
}

# The config of a new model: its features (`dims`), the covariates of the registered fields
# `f`, its cells, and the hyperparameters `hp`. `n_hidden` / `n_latent` NULL (0) ask the
# core for the model's rule; the config read back from the core holds the values used.
.joint_config <- function(dims, f, n_cells, n_hidden, n_latent, hp) {
  c(dims, list(n_batch = f$registry$n_batch, n_cats_per_cov = as.integer(unname(f$cat_sizes)),
               n_continuous_cov = ncol(f$cont_covs), n_cells = n_cells,
               n_hidden = n_hidden %||% 0L, n_latent = n_latent %||% 0L), hp)
}

# The model object of kind `kind`; `features` holds its features by modality (named as the
# object's elements), between the genes and the cells.
.new_modality_model <- function(kind, ptr, data, registry, config, features, cell_names,
                                cell_data, modality, input, dir = NULL) {
  structure(c(
    list(
      model = ptr,                # Rust model (parameters, training state, registry)
      data = data,                # Rust data set (both modalities' features), or NULL
      registry = registry,        # R copy of the registry (features, categories, setup)
      config = config,            # hyperparameters as the core holds them
      gene_names = registry$gene_names
    ),
    features,
    list(
      cell_names = cell_names,
      cell_data = cell_data,
      modality = modality,        # per cell: "paired", or the one modality it was measured in
      input = input,              # classes / dimensions of the data, for print()
      dir = dir
    )
  ), class = c(kind, "rscvi_model"))
}

# ---------------------------------------------------------------------------------------------
# New data for queries.

# Refuses new data for a model with one weight per training cell, unless
# `allow_cell_weights` (load_model() attaching the training data).
.check_new_data_allowed <- function(model, arg, allow_cell_weights) {
  if (!allow_cell_weights && identical(model$config$modality_weights, "cell")) {
    .stop(paste0("`%s`: a model built with modality_weights = \"cell\" has one weight per ",
                 "training cell and cannot be applied to new data"), arg)
  }
  invisible(TRUE)
}

# Is `x` new data given as a plain list of the modalities?
.is_plain_list <- function(x) is.list(x) && !is.data.frame(x) && !is.object(x)

# New data given as a list: its elements must be named `inputs` or `optional`. Returns how
# messages name the `inputs` (e.g. "x$rna").
.check_query_list <- function(x, arg, inputs, optional) {
  nms <- names(x) %||% rep("", length(x))
  bad <- setdiff(nms, c(inputs, optional))
  if (!length(x) || any(!nzchar(nms)) || length(bad)) {
    .stop("`%s` as a list must have elements named %s and optionally %s%s", arg,
          paste0("`", inputs, "`", collapse = ", "),
          paste0("`", optional, "`", collapse = " and "),
          if (length(bad)) sprintf(", got %s", .enum(bad)) else "")
  }
  stats::setNames(paste0(arg, "$", inputs), inputs)
}

# The setup of `x` (a SingleCellExperiment with the second modality in an altExp) that the
# model was set up with, where `x` has it: list(altexp, layer (the altExp's assay)), or NULL.
.altexp_like <- function(x, altexp, layer) {
  if (!methods::is(x, "SingleCellExperiment") ||
      !isTRUE(altexp %in% SingleCellExperiment::altExpNames(x))) {
    return(NULL)
  }
  list(altexp = altexp,
       layer = .layer_like_sce(SingleCellExperiment::altExp(x, altexp), layer))
}

# The assay `layer` of `x` if it has one of that name (new data laid out as at setup).
.layer_like_sce <- function(x, layer) {
  if (!is.null(layer) && layer %in% SummarizedExperiment::assayNames(x)) layer else NULL
}

# The Seurat assay `assay` of `x` if it has one of that name.
.seurat_assay_like <- function(x, assay) {
  if (!is.null(assay) && assay %in% SeuratObject::Assays(x)) assay else NULL
}

# New data registered against the model (.modality_dataset()), as a query takes them.
.query_result <- function(comb, ds, sources) {
  list(data = ds$data, fields = ds$fields, cell_names = comb$cell_names,
       cell_data = comb$cell_data, modality = comb$modality, class = .input_classes(sources))
}

# The data a query runs on: the model's own, or `x` registered against the model by
# `register`; `example` shows how `x` is given.
.modality_query_data <- function(model, x, arg, example, register) {
  if (is.null(x)) {
    if (is.null(model$data) || .null_ptr(model$data)) {
      .stop(paste0("this model has no data attached (it was loaded with load_model() without ",
                   "`x`): pass the data as `%s`, e.g. %s = %s"), arg, arg, example)
    }
    return(list(data = model$data, cell_names = model$cell_names,
                cell_data = model$cell_data, modality = model$modality))
  }
  register(model, x, arg = arg)
}

# ---------------------------------------------------------------------------------------------
# Load.

# The saved model in `dir` of kind `kind`: list(ptr, registry (read by `read_registry`),
# config). `dots` are load_model()'s other arguments, which do not apply; `x_form` says how
# `x` is given instead.
.load_modality_model <- function(dir, dots, kind, x_form, read_registry) {
  if (length(dots)) {
    .stop(paste0("load_model(): %s do not apply to a %s model; pass `x` as %s or a ",
                 "SingleCellExperiment / Seurat object"), .dots_names(dots), kind, x_form)
  }
  ptr <- .rs(rs_model_load(path.expand(dir)))
  st <- .rs(rs_model_state(ptr))
  registry <- tryCatch(read_registry(st$registry), error = function(e) {
    .stop("`dir` '%s': the saved registry is not readable (%s)", dir, conditionMessage(e))
  })
  list(ptr = ptr, registry = registry, config = .config_from_json(st$config))
}

# A loaded model with new data `x` attached (registered by `register`), or as it is without.
.attach_modality_data <- function(model, x, register, labels) {
  if (is.null(x)) return(model)
  q <- register(model, x, allow_cell_weights = TRUE)
  model$data <- q$data
  model$cell_names <- q$cell_names
  model$cell_data <- q$cell_data
  model$modality <- q$modality
  model$input <- utils::modifyList(model$input, list(
    class = q$class, n_cells = length(q$cell_names),
    modality_cells = .modality_counts(q$modality, labels)))
  model
}

# ---------------------------------------------------------------------------------------------
# Queries.

# The latent representation of a model of kind `kind`: of the joint latent space, or of one
# modality's encoder (`modality`: "joint" or one of `modalities`), from the bridge's
# `latent` (rs_<kind>_latent); `check_modality(modality)` refuses a modality the model lacks.
.modality_latent <- function(model, kind, x, indices, modality, modalities, give_mean,
                             return_dist, batch_size, device, latent,
                             check_modality = NULL) {
  modality <- .match_choice(modality, c("joint", modalities), "modality")
  give_mean <- .check_scalar_bool(give_mean, "give_mean")
  return_dist <- .check_scalar_bool(return_dist, "return_dist")
  batch_size <- .check_batch_size(batch_size)
  device <- .check_device(device)
  if (modality != "joint") {
    if (!is.null(check_modality)) check_modality(modality)
    if (isTRUE(model$config$fully_paired)) {
      .stop(paste0("`modality` = \"%s\": a model built with fully_paired = TRUE has only the ",
                   "joint latent representation; use modality = \"joint\""), modality)
    }
  }
  q <- .query_data(model, x)
  cells <- .query_cells(q, indices)
  res <- .rs(latent(model$model, q$data, cells$idx, modality, give_mean, batch_size, device))
  .label_latent(res, cells$names, kind, return_dist)
}

# The differential_expression() method of a model of kind `kind` with an expression head
# next to another modality: SCVI's method, which serves every model with an expression head
# (its data come from .query_data(), which registers each model's data its own way), with
# uniform draws (no importance weights) and pseudocounts 1e-6 unless given. `check(object)`
# checks the model first.
.joint_differential_expression <- function(kind, check) {
  function(object, x = NULL, groupby = NULL, group1 = NULL, group2 = NULL, idx1 = NULL,
           idx2 = NULL, mode = c("change", "vanilla"), delta = 0.25, batch_size = NULL,
           all_stats = TRUE, batch_correction = FALSE, batchid1 = NULL, batchid2 = NULL,
           fdr_target = 0.05, silent = FALSE, filter_outlier_cells = FALSE, device = "auto",
           ...) {
    check(object)
    extra <- list(...)
    if (any(c("weights", "importance_weighting_kwargs") %in% names(extra))) {
      .stop("`weights`: importance weights are not available for %s models", kind)
    }
    extra$pseudocounts <- extra$pseudocounts %||% 1e-6
    do.call(differential_expression.SCVI, c(list(
      object, x = x, groupby = groupby, group1 = group1, group2 = group2, idx1 = idx1,
      idx2 = idx2, mode = mode, delta = delta, batch_size = batch_size, all_stats = all_stats,
      batch_correction = batch_correction, batchid1 = batchid1, batchid2 = batchid2,
      fdr_target = fdr_target, silent = silent, weights = "uniform",
      filter_outlier_cells = filter_outlier_cells, importance_weighting_kwargs = NULL,
      device = device), extra))
  }
}

# ---------------------------------------------------------------------------------------------
# print() and summary().

# print()'s data line: the cells (paired, and measured in one modality only: `only` says
# how, named by the modalities) and `features`, and where the data came from, or that none
# are attached.
.modality_data_text <- function(model, only, features) {
  inp <- model$input
  mc <- inp$modality_cells
  mods <- if (length(mc) >= 3L) {
    # Paired and each of the first two modalities alone always; other combinations that
    # occur, named as `only` names the modalities.
    first <- intersect(c("paired", names(only)[1:2]), names(mc))
    mc <- mc[c(first, sort(setdiff(names(mc), first)))]
    shown <- names(mc) %in% first | mc > 0
    text <- vapply(names(mc)[shown], function(k) {
      if (k == "paired") return("paired")
      parts <- strsplit(k, "+", fixed = TRUE)[[1]]
      label <- paste(ifelse(parts %in% names(only), only[parts], parts), collapse = "+")
      if (length(parts) == 1L) paste(label, "only") else label
    }, character(1))
    sprintf(" (%s)", paste(.fmt_int(mc[shown]), text, collapse = ", "))
  } else ""
  dims <- sprintf("%s cells%s x %s", .fmt_int(inp$n_cells), mods, features)
  if (is.null(model$data) || .null_ptr(model$data)) {
    return(sprintf("none attached (model set up on %s); pass `x` to queries", dims))
  }
  src <- if (is.na(inp$class %||% NA)) "" else sprintf(" from %s", inp$class)
  paste0(dims, src)
}

# summary() of a model of two modalities (MULTIVI, SPLICEVI) of kind `kind`; `drop` names
# config entries that are not hyperparameters.
.summary_of <- function(object, kind, data_text, drop = "n_cells") {
  reg <- object$registry
  cats <- c(list(batch = reg$batch_categories), reg$categorical_covariate_categories)
  sa <- reg$setup_args
  structure(list(
    kind = kind,
    data = data_text,
    setup_args = sa[!vapply(sa, is.null, logical(1)) |
                      names(sa) %in% c("batch_key", "categorical_covariate_keys",
                                       "continuous_covariate_keys")],
    categories = cats,
    continuous_covariates = reg$continuous_covariate_keys,
    hyperparameters = object$config[setdiff(names(object$config), drop)],
    training = .training_summary(object)
  ), class = c(paste0("summary.", kind), "summary.SCVI"))
}
