# Data layer: turns what a user passes (SingleCellExperiment, Seurat, Matrix/base matrix plus
# a cell data.frame) into the plain structures the Rust core takes, and registers the setup
# fields exactly as scvi-tools' `setup_anndata` does (design/scvi.md section 1).
# Conversion and validation only: no model math here.

`%||%` <- function(a, b) if (is.null(a)) b else a

# ---------------------------------------------------------------------------------------------
# Small argument checkers. Each returns the normalised value or stops with a message naming
# the argument, what was expected and what was given.

# A short, readable description of a value for error messages.
.describe <- function(x) {
  if (is.null(x)) return("NULL")
  if (is.function(x)) return("a function")
  if (!is.atomic(x)) return(paste0("an object of class ", class(x)[1]))
  if (length(x) != 1L) {
    return(sprintf("a %s vector of length %d", class(x)[1], length(x)))
  }
  if (is.character(x)) return(encodeString(x, quote = "\""))
  format(x)
}

.stop <- function(...) stop(sprintf(...), call. = FALSE)
.warn <- function(...) warning(sprintf(...), call. = FALSE)

# A handler for withCallingHandlers() that muffles the warnings matching `pattern` (those
# about the data that matter for training, not for applying a fitted model to new data).
.muffle <- function(pattern) {
  function(w) if (grepl(pattern, conditionMessage(w))) invokeRestart("muffleWarning")
}

# "a", "b", "c", ... (n more): keeps messages short for long lists.
.enum <- function(x, max = 5L, quote = TRUE) {
  x <- as.character(x)
  shown <- utils::head(x, max)
  if (quote) shown <- encodeString(shown, quote = "'")
  s <- paste(shown, collapse = ", ")
  if (length(x) > max) s <- sprintf("%s, ... (%d more)", s, length(x) - max)
  s
}

.range_text <- function(min, max, kind) {
  if (is.finite(min) && is.finite(max)) sprintf("%s between %s and %s", kind, min, max)
  else if (is.finite(min)) sprintf("%s >= %s", kind, min)
  else if (is.finite(max)) sprintf("%s <= %s", kind, max)
  else kind
}

.check_scalar_int <- function(x, arg, min = -Inf, max = Inf, null_ok = FALSE) {
  if (is.null(x) && null_ok) return(NULL)
  ok <- is.numeric(x) && length(x) == 1L && !is.na(x) &&
    is.finite(x) && x == round(x) && x >= min && x <= max && abs(x) <= .Machine$integer.max
  if (!ok) {
    .stop("`%s` must be a single %s%s, got %s", arg,
          .range_text(min, max, "integer"), if (null_ok) " (or NULL)" else "", .describe(x))
  }
  as.integer(x)
}

.check_scalar_num <- function(x, arg, min = -Inf, max = Inf, min_open = FALSE,
                              null_ok = FALSE) {
  if (is.null(x) && null_ok) return(NULL)
  ok <- is.numeric(x) && length(x) == 1L && !is.na(x) && is.finite(x) &&
    (if (min_open) x > min else x >= min) && x <= max
  if (!ok) {
    lower <- if (min_open && is.finite(min)) sprintf("number > %s", min) else NULL
    what <- if (!is.null(lower) && is.finite(max)) sprintf("%s and <= %s", lower, max)
            else lower %||% .range_text(min, max, "number")
    .stop("`%s` must be a single finite %s%s, got %s", arg, what,
          if (null_ok) " (or NULL)" else "", .describe(x))
  }
  as.double(x)
}

.check_scalar_bool <- function(x, arg) {
  if (!(is.logical(x) && length(x) == 1L && !is.na(x))) {
    .stop("`%s` must be TRUE or FALSE, got %s", arg, .describe(x))
  }
  x
}

.check_scalar_string <- function(x, arg, null_ok = FALSE) {
  if (is.null(x) && null_ok) return(NULL)
  if (!(is.character(x) && length(x) == 1L && !is.na(x) && nzchar(x))) {
    .stop("`%s` must be a single non-empty string%s, got %s", arg,
          if (null_ok) " (or NULL)" else "", .describe(x))
  }
  x
}

.check_choice <- function(x, choices, arg) {
  if (!(is.character(x) && length(x) == 1L && !is.na(x) && x %in% choices)) {
    .stop("`%s` must be one of %s, got %s", arg,
          paste(encodeString(choices, quote = "\""), collapse = ", "), .describe(x))
  }
  x
}

# NULL or a character vector of distinct column names; character(0) is treated as NULL.
.check_keys <- function(x, arg) {
  if (is.null(x) || (is.character(x) && length(x) == 0L)) return(NULL)
  if (!is.character(x) || anyNA(x) || !all(nzchar(x))) {
    .stop("`%s` must be NULL or a character vector of column names, got %s", arg,
          .describe(x))
  }
  if (anyDuplicated(x)) {
    .stop("`%s` names a column more than once: %s", arg, .enum(unique(x[duplicated(x)])))
  }
  x
}

# Cell (or gene) selection -> 0-based integer indices for the Rust side.
# NULL = all; a logical of length n; or 1-based whole numbers in 1..n.
.resolve_indices <- function(indices, n, arg = "indices", names = NULL) {
  if (is.null(indices)) return(seq_len(n) - 1L)
  if (is.character(indices) && !is.null(names)) {
    idx <- match(indices, names)
    if (anyNA(idx)) {
      .stop("`%s` names %d cells the data do not have: %s", arg, sum(is.na(idx)),
            .enum(indices[is.na(idx)], 5L))
    }
  } else if (is.logical(indices)) {
    if (length(indices) != n || anyNA(indices)) {
      .stop("`%s`: a logical selection must have one TRUE/FALSE per cell (%d) and no NA, got %s",
            arg, n, .describe(indices))
    }
    idx <- which(indices)
  } else if (is.numeric(indices)) {
    bad <- is.na(indices) | !is.finite(indices) | indices != round(indices) |
      indices < 1 | indices > n
    if (any(bad)) {
      .stop("`%s` must hold whole numbers between 1 and %d (1-based positions), got %s",
            arg, n, .enum(format(indices[bad]), quote = FALSE))
    }
    idx <- as.integer(indices)
  } else {
    .stop(paste0("`%s` must be NULL, a logical vector of length %d, 1-based integer positions",
                 "%s, got %s"), arg, n, if (is.null(names)) "" else " or cell names",
          .describe(indices))
  }
  # Downstream queries on zero cells have nothing to return; catch it here, not in Rust.
  if (length(idx) == 0L) .stop("`%s` selects no cells", arg)
  idx - 1L
}

# Names -> 0-based positions (kept in the model's order), for gene_list / region_list /
# junction_list.
.feature_positions <- function(list, features, arg, unit) {
  if (is.null(list)) return(NULL)
  if (!(is.character(list) || is.factor(list)) || length(list) == 0L || anyNA(list)) {
    .stop("`%s` must be NULL or a character vector of %s names, got %s", arg, unit,
          .describe(list))
  }
  list <- as.character(list)
  unknown <- setdiff(list, features)
  if (length(unknown)) {
    .stop("`%s` has %d %ss that are not in the model: %s", arg, length(unknown), unit,
          .enum(unknown))
  }
  which(features %in% list) - 1L
}

# ---------------------------------------------------------------------------------------------
# Count input.

# Any Matrix / base matrix -> dgCMatrix with double values and no stored zeros.
.to_dgc <- function(m, arg) {
  if (is.data.frame(m)) {
    .stop("`%s` is a data.frame; pass a genes x cells matrix (as.matrix() or a dgCMatrix)", arg)
  }
  if (is.logical(m) || methods::is(m, "lMatrix") || methods::is(m, "nMatrix")) {
    .stop(paste0("`%s` is a logical (TRUE/FALSE) matrix, not counts; if it marks presence ",
                 "(e.g. binary accessibility), convert it with %s * 1"), arg, arg)
  }
  if (is.matrix(m) && !is.numeric(m)) {
    .stop("`%s` must hold numeric counts, got a %s matrix", arg, typeof(m))
  }
  if (!is.matrix(m) && !methods::is(m, "Matrix")) {
    # DelayedArray and friends (e.g. HDF5-backed SCE assays) can become a sparse or dense
    # matrix; try the cheap sparse route first.
    converted <- NULL
    for (to in c("dgCMatrix", "CsparseMatrix", "matrix")) {
      converted <- tryCatch(methods::as(m, to), error = function(e) NULL)
      if (!is.null(converted)) break
    }
    if (is.null(converted)) {
      .stop(paste0("`%s` must be a SingleCellExperiment, a Seurat object, or a genes x cells ",
                   "count matrix (dgCMatrix, other Matrix, or base matrix), got an object of ",
                   "class %s"), arg, class(m)[1])
    }
    m <- converted
  }
  m <- methods::as(m, "CsparseMatrix")
  m <- methods::as(methods::as(m, "generalMatrix"), "dMatrix")
  if (!methods::is(m, "dgCMatrix")) m <- methods::as(m, "dgCMatrix")
  m
}

# The names of the arguments saying which assay to read, for messages.
.source_args <- c(layer = "layer", assay = "assay")

.from_sce <- function(x, layer, assay, arg, names = .source_args) {
  if (!requireNamespace("SummarizedExperiment", quietly = TRUE)) {
    .stop("`%s` is a %s, which needs the SummarizedExperiment package: install it first",
          arg, class(x)[1])
  }
  if (!is.null(assay)) {
    .stop(paste0("`%s` names the assay of a Seurat object; `%s` is a %s: name its assay of ",
                 "counts with `%s`"), names[["assay"]], arg, class(x)[1], names[["layer"]])
  }
  layer <- .check_scalar_string(layer %||% "counts", names[["layer"]])
  available <- SummarizedExperiment::assayNames(x)
  if (!layer %in% available) {
    .stop("`%s` '%s' is not an assay of `%s`; available assays: %s", names[["layer"]], layer, arg,
          if (length(available)) .enum(available, 10L) else "none")
  }
  m <- SummarizedExperiment::assay(x, layer, withDimnames = TRUE)
  list(m = m, cells = .col_data(x), layer = layer, assay = NULL)
}

# The cell data (colData) of a SummarizedExperiment as a data.frame.
.col_data <- function(x) as.data.frame(SummarizedExperiment::colData(x), optional = TRUE)

# Stops unless SeuratObject is there to read the Seurat object `arg`.
.require_seurat <- function(arg) {
  if (!requireNamespace("SeuratObject", quietly = TRUE)) {
    .stop("`%s` is a Seurat object, which needs the SeuratObject package: install it first", arg)
  }
}

# The raw counts of assay `assay` (default: the default assay, as Seurat's own functions) of
# the Seurat object `x`.
.from_seurat <- function(x, layer, assay, arg, names = .source_args) {
  .require_seurat(arg)
  assays <- SeuratObject::Assays(x)
  if (!is.null(layer)) {
    .stop(paste0("`%s` names an assay of a SingleCellExperiment; for the Seurat object `%s` ",
                 "name the assay with `%s` (one of %s)"), names[["layer"]], arg,
          names[["assay"]], .enum(assays, 10L))
  }
  assay <- .check_scalar_string(assay %||% SeuratObject::DefaultAssay(x), names[["assay"]])
  if (!assay %in% assays) {
    .stop("`%s` '%s' is not an assay of `%s`; available assays: %s", names[["assay"]], assay, arg,
          .enum(assays, 10L))
  }
  list(m = .seurat_counts(x, assay, arg), cells = x[[]], layer = NULL, assay = assay)
}

# The counts of assay `assay` of a Seurat object. SeuratObject 5 renamed `slot` to `layer`;
# Debian ships 4.1.3 where only `slot` works. LayerData is looked up at run time: 4.1.3 does
# not export it (R CMD check would warn).
.seurat_counts <- function(x, assay, arg) {
  m <- if (utils::packageVersion("SeuratObject") >= "5.0.0") {
    layer_data <- getExportedValue("SeuratObject", "LayerData")
    layer_data(x, assay = assay, layer = "counts")
  } else {
    SeuratObject::GetAssayData(x, slot = "counts", assay = assay)
  }
  if (length(m) == 0L) {
    .stop("assay '%s' of `%s` has no counts; name an assay of raw counts with `assay` (e.g. \"RNA\")",
          assay, arg)
  }
  m
}

#' Convert user input into a validated genes x cells count matrix plus cell data
#'
#' @param x SingleCellExperiment/SummarizedExperiment, Seurat, Matrix or base matrix
#'   (genes x cells).
#' @param cells NULL or a data.frame with one row per cell (matrix input only).
#' @param layer SCE assay name (default "counts"); NULL for other input.
#' @param assay Seurat assay name (default: the default assay); NULL for other input.
#' @param arg name of `x` in the caller, used in messages.
#' @param source_args the caller's names of `layer` and `assay`, used in messages.
#' @return list(counts = dgCMatrix genes x cells (double, dimnames set),
#'   cell_data = data.frame (row names = cell names), gene_names, cell_names,
#'   layer / assay = the SCE / Seurat assay used, or NULL)
#' @noRd
.as_count_input <- function(x, cells = NULL, layer = NULL, assay = NULL, arg = "x",
                            source_args = .source_args, file_ok = FALSE) {
  if (is.null(x)) .stop("`%s` is NULL; pass a genes x cells count matrix or a single-cell object", arg)
  .refuse_file_name(x, arg)
  if (methods::is(x, "SummarizedExperiment") || methods::is(x, "Seurat")) {
    if (!is.null(cells)) {
      .stop(paste0("`cells` is only used with a matrix `%s`; for a %s the cell data come from ",
                   "the object itself (add columns to it instead)"), arg, class(x)[1])
    }
    src <- if (methods::is(x, "Seurat")) .from_seurat(x, layer, assay, arg, source_args)
           else .from_sce(x, layer, assay, arg, source_args)
    m <- src$m
    cells <- src$cells
    layer <- src$layer
    assay <- src$assay
    file <- if (file_ok) .backed_file(m)
    if (!is.null(file)) {
      return(.file_input(file, colnames(m) %||% paste0("cell", seq_len(ncol(m))),
                         rownames(m) %||% paste0("gene", seq_len(nrow(m))), cells, layer, assay,
                         arg))
    }
  } else {
    if (!is.null(layer) || !is.null(assay)) {
      .stop(paste0("`%s` only applies to a SingleCellExperiment (`%s`) or a Seurat object ",
                   "(`%s`); `%s` is a %s"),
            source_args[[if (is.null(layer)) "assay" else "layer"]], source_args[["layer"]],
            source_args[["assay"]], arg, class(x)[1])
    }
    m <- x
    if (!is.null(cells) && !is.data.frame(cells)) {
      if (methods::is(cells, "DataFrame")) cells <- as.data.frame(cells, optional = TRUE)
      else .stop("`cells` must be NULL or a data.frame with one row per cell, got %s",
                 .describe(cells))
    }
    if (!is.matrix(m) && !methods::is(m, "Matrix") && length(dim(m)) != 2L) {
      .stop(paste0("`%s` must be a SingleCellExperiment, a Seurat object, or a genes x cells ",
                   "count matrix (dgCMatrix, other Matrix, or base matrix), got %s"),
            arg, .describe(m))
    }
  }

  # Shape checks before conversion: they explain the most common mistakes.
  if (ncol(m) == 0L) .stop("`%s` has no cells (0 columns); rscvi expects genes x cells", arg)
  if (nrow(m) == 0L) .stop("`%s` has no genes (0 rows); rscvi expects genes x cells", arg)
  if (!is.null(cells)) {
    if (nrow(cells) == nrow(m) && nrow(m) != ncol(m)) {
      .stop(paste0("`%s` looks like cells x genes (%d rows = rows of `cells`, %d columns); ",
                   "rscvi expects genes x cells, transpose it with t()"), arg, nrow(m), ncol(m))
    }
    if (nrow(cells) != ncol(m)) {
      .stop("`cells` has %d rows but `%s` has %d cells (columns); give one row per cell",
            nrow(cells), arg, ncol(m))
    }
  }

  # scvi-tools only warns on non-integers, but the count likelihoods are defined on integers
  # and non-integer input is almost always normalised or log-transformed data by mistake.
  m <- .checked_counts(.to_dgc(m, arg), arg, "rscvi",
                       "raw counts, not normalised or log-transformed data")

  gene_names <- rownames(m) %||% paste0("gene", seq_len(nrow(m)))
  cell_names <- colnames(m)
  if (is.null(cell_names) && !is.null(cells) && .row_names_info(cells) > 0L) {
    cell_names <- rownames(cells)
  }
  cell_names <- cell_names %||% paste0("cell", seq_len(ncol(m)))
  if (anyDuplicated(cell_names)) {
    # Results come back with cell names as row names; duplicates make them ambiguous.
    .stop("`%s` has %d duplicated cell names (e.g. %s); make them unique (e.g. prefix the batch)",
          arg, sum(duplicated(cell_names)), .enum(unique(cell_names[duplicated(cell_names)]), 3L))
  }
  if (anyDuplicated(gene_names)) {
    # Genes are matched by name when a model is applied to new data.
    .warn("`%s` has %d duplicated gene names (e.g. %s); make them unique to apply a model to new data",
          arg, sum(duplicated(gene_names)), .enum(unique(gene_names[duplicated(gene_names)]), 3L))
  }
  dimnames(m) <- list(gene_names, cell_names)

  if (is.null(cells)) {
    cells <- data.frame(row.names = cell_names)
  } else {
    # Real (non-automatic) row names that name the same cells in another order are a
    # silent misalignment: refuse them rather than guess.
    if (.row_names_info(cells) > 0L && !identical(rownames(cells), cell_names) &&
        setequal(rownames(cells), cell_names)) {
      .stop("rows of `cells` are not in the order of the cells of `%s`; reorder with cells[colnames(%s), ]",
            arg, arg)
    }
    rownames(cells) <- cell_names
  }

  .check_no_empty_cells(m, arg)
  .warn_empty_genes(m, arg)

  list(counts = m, cell_data = cells, gene_names = gene_names, cell_names = cell_names,
       layer = layer, assay = assay)
}

.is_h5ad_path <- function(x) {
  is.character(x) && length(x) == 1L && !is.na(x) && grepl("[.]h5ad$", x, ignore.case = TRUE)
}

# Where counts are read in memory, a file name gets a pointer to the reader, not a type error.
.refuse_file_name <- function(x, arg) {
  if (is.character(x) && length(x) == 1L && grepl("[.](h5ad|h5mu|h5)$", x, ignore.case = TRUE)) {
    .stop(paste0("`%s` is a file name; only scvi() and SCVI's queries read counts from a ",
                 "file: read it first with read_h5ad(), read_h5mu() or read_10x_h5()"), arg)
  }
}

# An .h5ad file as count input: its obs and var names are read, its counts stay in the file
# (`layer`: one of its layers, NULL for X) for the core to stream.
.h5ad_input <- function(path, cells = NULL, layer = NULL, assay = NULL, arg = "x",
                        source_args = .source_args) {
  if (!is.null(cells)) {
    .stop("`cells` must be NULL when `%s` is an .h5ad file: the cell data come from its obs",
          arg)
  }
  if (!is.null(assay)) {
    .stop("`%s` only applies to a Seurat object; `%s` is an .h5ad file (use `%s` for a layer)",
          source_args[["assay"]], arg, source_args[["layer"]])
  }
  if (!is.null(layer)) layer <- .check_scalar_string(layer, source_args[["layer"]])
  if (!file.exists(path) || dir.exists(path)) {
    .stop("`%s` names the file '%s', which does not exist", arg, path)
  }
  path <- normalizePath(path)
  frames <- .rs(rs_read_h5ad_frames(path))
  cell_data <- data.frame(.io_columns(frames$obs), check.names = FALSE)
  if (ncol(cell_data) == 0L) cell_data <- data.frame(row.names = seq_along(frames$obs$index))
  group <- if (is.null(layer)) "X" else paste0("layers/", layer)
  .file_input(list(path = path, group = group), frames$obs$index, frames$var$index, cell_data,
              layer, NULL, arg)
}

# The file behind an HDF5Array matrix that reads straight from a sparse matrix stored with
# cells as rows (HDF5Array's CSC genes x cells: an AnnData matrix stored CSR, a CellRanger
# matrix), untouched but for its names; NULL for anything else (it is read into memory).
.backed_file <- function(m) {
  if (!methods::is(m, "DelayedMatrix") || !requireNamespace("DelayedArray", quietly = TRUE) ||
      !DelayedArray::isPristine(m, ignore.dimnames = TRUE)) {
    return(NULL)
  }
  seed <- DelayedArray::seed(m)
  if (!methods::is(seed, "CSC_H5SparseMatrixSeed")) return(NULL)
  list(path = normalizePath(seed@filepath), group = seed@group)
}

# Count input whose counts stay in `file` (list(path, group)): what .as_count_input() returns,
# with `counts` NULL and `file` set.
.file_input <- function(file, cell_names, gene_names, cell_data, layer, assay, arg) {
  if (anyDuplicated(cell_names)) {
    .stop("`%s` has %d duplicated cell names (e.g. %s); make them unique", arg,
          sum(duplicated(cell_names)), .enum(unique(cell_names[duplicated(cell_names)]), 3L))
  }
  if (anyDuplicated(gene_names)) {
    .warn("`%s` has %d duplicated gene names (e.g. %s); make them unique to apply a model to new data",
          arg, sum(duplicated(gene_names)), .enum(unique(gene_names[duplicated(gene_names)]), 3L))
  }
  rownames(cell_data) <- cell_names
  list(counts = NULL, file = file, cell_data = cell_data, gene_names = gene_names,
       cell_names = cell_names, layer = layer, assay = assay)
}

# A cell without counts has log-library -Inf: the model cannot use it. `what` says which
# counts were summed.
.check_no_empty_cells <- function(m, arg, what = "") {
  totals <- Matrix::colSums(m)
  if (any(totals == 0)) {
    empty <- colnames(m)[totals == 0]
    .stop("`%s` has %d cells with no counts%s (all zero): %s; remove them first",
          arg, length(empty), what, .enum(empty))
  }
}

# Warns of the genes (rows of `m`, from `arg`) without counts in any cell.
.warn_empty_genes <- function(m, arg) {
  zero <- Matrix::rowSums(m) == 0
  if (any(zero)) {
    .warn("`%s` has %d genes with no counts in any cell (e.g. %s); consider removing them",
          arg, sum(zero), .enum(rownames(m)[zero], 3L))
  }
  invisible(TRUE)
}

# ---------------------------------------------------------------------------------------------
# Field registration (scvi.md section 1).

# The column `key` of the cell data, or an error naming the argument and the columns.
.get_column <- function(cell_data, key, key_arg) {
  if (!key %in% names(cell_data)) {
    .stop("%s '%s' is not a column of the cell data; available: %s", key_arg, key,
          if (ncol(cell_data)) .enum(names(cell_data), 20L) else "none (no cell data given)")
  }
  v <- cell_data[[key]]
  if (!is.atomic(v) && !is.factor(v)) {
    .stop("%s column '%s' must be an atomic vector or factor, got %s", key_arg, key,
          class(v)[1])
  }
  n_na <- sum(is.na(v))
  if (n_na > 0L) {
    .stop("%s column '%s' has %d missing values (NA); every cell needs a value", key_arg,
          key, n_na)
  }
  v
}

# Sorted distinct values as strings: numbers numerically, strings by Unicode code point
# (radix sort = C-locale byte order = code-point order for UTF-8), like pandas' categories.
.sorted_categories <- function(v) {
  u <- unique(v)
  if (is.character(u)) u <- enc2utf8(u)
  unique(as.character(sort(u, method = "radix")))
}

# A numeric column as categories is usually the wrong column (a count, a score, a cell
# index): refuse fractions, and more distinct numbers than half the cells (beyond 50),
# unless the user says they are categories with as.factor().
.check_categorical_numbers <- function(v, key_arg, key) {
  if (!is.numeric(v)) return(invisible(TRUE))
  n_distinct <- length(unique(v))
  if (any(v != round(v))) {
    .stop(paste0("%s column '%s' holds fractional numbers, not categories; name a column of ",
                 "categories (or convert it with as.factor() if the numbers are labels)"),
          key_arg, key)
  }
  if (n_distinct > 50L && n_distinct > length(v) / 2) {
    .stop(paste0("%s column '%s' is numeric with %d distinct values for %d cells: each would ",
                 "be its own category; name a column of categories (or convert it with ",
                 "as.factor() if the numbers are labels)"), key_arg, key, n_distinct, length(v))
  }
  invisible(TRUE)
}

# Category codes (0-based) for one column, fresh or against a stored mapping.
.encode_categorical <- function(v, key_arg, key, mapping = NULL, extend = FALSE) {
  if (is.null(mapping)) {
    .check_categorical_numbers(v, key_arg, key)
    # A factor's declared levels are its categories, unused levels included.
    categories <- if (is.factor(v)) enc2utf8(levels(v)) else .sorted_categories(v)
  } else {
    values <- if (is.factor(v)) v[!duplicated(v)] else unique(v)
    unknown <- values[!as.character(values) %in% mapping]
    if (length(unknown)) {
      if (!extend) {
        .stop(paste0("%s column '%s' has values the model was not set up with: %s ",
                     "(known: %s); map cells of new categories with load_query_data()"), key_arg, key,
              .enum(.sorted_categories(as.character(unknown))), .enum(mapping))
      }
      new <- if (is.factor(unknown)) .sorted_categories(as.character(unknown))
             else .sorted_categories(unknown)
      mapping <- c(mapping, new)
    }
    categories <- mapping
  }
  codes <- match(enc2utf8(as.character(v)), categories) - 1L
  # Category counts over the values present (unused factor levels do not warn, as pandas'
  # value_counts on the codes only sees present codes).
  n <- tabulate(codes + 1L, nbins = length(categories))
  small <- n > 0L & n < 3L
  if (any(small)) {
    .warn("%s column '%s' has categories with fewer than 3 cells: %s", key_arg, key,
          .enum(sprintf("'%s' (%d)", categories[small], n[small]), quote = FALSE))
  }
  list(codes = codes, categories = categories)
}

.numeric_column <- function(cell_data, key, key_arg, positive = FALSE) {
  v <- .get_column(cell_data, key, key_arg)
  if (!is.numeric(v)) {
    .stop("%s column '%s' must be numeric, got %s", key_arg, key, class(v)[1])
  }
  v <- as.double(v)
  if (any(!is.finite(v))) {
    .stop("%s column '%s' has %d infinite values; values must be finite", key_arg, key,
          sum(!is.finite(v)))
  }
  if (positive && any(v <= 0)) {
    .stop("%s column '%s' must be > 0 (a size factor per cell), found %d values <= 0",
          key_arg, key, sum(v <= 0))
  }
  v
}

# `size_factor_key` naming `n` columns (MULTIVI: the RNA and the ATAC size factor).
.check_size_factor_keys <- function(keys, n) {
  if (is.null(keys)) return(NULL)
  if (!is.character(keys) || length(keys) != n || anyNA(keys) || !all(nzchar(keys))) {
    .stop(paste0("`size_factor_key` must be NULL or %d column names (the RNA and the ATAC ",
                 "size factor), got %s"), n, .describe(keys))
  }
  keys
}

# With a registry, key arguments may be left NULL (then the registry's keys are used) or
# must repeat the registered ones.
.registry_key <- function(given, stored, arg) {
  if (is.null(given)) return(stored)
  if (!identical(given, stored)) {
    .stop("`%s` = %s differs from the model's registered %s = %s", arg, .describe_keys(given),
          arg, .describe_keys(stored))
  }
  given
}
.describe_keys <- function(k) {
  if (is.null(k)) "NULL" else paste0("c(", paste(encodeString(k, quote = "\""), collapse = ", "), ")")
}

#' Register batch/labels/covariates/size factors for SCVI
#'
#' @param input result of `.as_count_input()`; its `counts` may also be a list of dgCMatrix
#'   blocks over the same cells, stacked by rows (the modalities of a joint model).
#' @param registry NULL to set up new fields, or a stored registry to transfer its mappings
#'   to new data (key arguments may then be NULL = use the registered keys).
#' @param extend_categories with a registry: append unseen categories (sorted) instead of
#'   failing.
#' @param n_size_factors columns `size_factor_key` names (MULTIVI: 2, RNA and ATAC).
#' @return list(counts = .count_slots() of the counts, batch, labels (0-based integer codes), cat_covs (integer n_cells x K),
#'   cat_sizes (integer K), cont_covs (double n_cells x U), size_factor (double n_cells x
#'   n_size_factors, or NULL),
#'   registry, cell_data, cell_names)
#' @noRd
.register_fields <- function(input, batch_key = NULL, labels_key = NULL,
                             size_factor_key = NULL, categorical_covariate_keys = NULL,
                             continuous_covariate_keys = NULL, registry = NULL,
                             extend_categories = FALSE, n_size_factors = 1L) {
  batch_key <- .check_scalar_string(batch_key, "batch_key", null_ok = TRUE)
  labels_key <- .check_scalar_string(labels_key, "labels_key", null_ok = TRUE)
  size_factor_key <- if (n_size_factors == 1L) {
    .check_scalar_string(size_factor_key, "size_factor_key", null_ok = TRUE)
  } else {
    .check_size_factor_keys(size_factor_key, n_size_factors)
  }
  categorical_covariate_keys <- .check_keys(categorical_covariate_keys,
                                            "categorical_covariate_keys")
  continuous_covariate_keys <- .check_keys(continuous_covariate_keys,
                                           "continuous_covariate_keys")
  extend_categories <- .check_scalar_bool(extend_categories, "extend_categories")
  transfer <- !is.null(registry)

  if (transfer) {
    sa <- registry$setup_args
    batch_key <- .registry_key(batch_key, sa$batch_key, "batch_key")
    labels_key <- .registry_key(labels_key, sa$labels_key, "labels_key")
    size_factor_key <- .registry_key(size_factor_key, sa$size_factor_key, "size_factor_key")
    categorical_covariate_keys <- .registry_key(categorical_covariate_keys,
                                                sa$categorical_covariate_keys,
                                                "categorical_covariate_keys")
    continuous_covariate_keys <- .registry_key(continuous_covariate_keys,
                                               sa$continuous_covariate_keys,
                                               "continuous_covariate_keys")
    in_memory <- !is.null(input$counts)
    n_genes <- if (in_memory) .count_rows(input$counts)
    if (in_memory && !is.list(input$counts)) {
      input$counts <- .model_rows(input$counts, registry$gene_names)
      input$gene_names <- rownames(input$counts)
    }
    .check_gene_names(input$gene_names, registry$gene_names)
    if (in_memory && .count_rows(input$counts) < n_genes) {
      .check_no_empty_cells(input$counts, "x", " in the model's genes")
    }
  }

  cd <- input$cell_data
  n_cells <- length(input$cell_names)

  categorical <- function(key, key_arg, mapping) {
    # Absent key: one constant category "0" (scvi-tools adds a column of zeros).
    if (is.null(key)) return(list(codes = integer(n_cells), categories = "0"))
    .encode_categorical(.get_column(cd, key, key_arg), key_arg, key, mapping,
                        extend_categories)
  }
  batch <- categorical(batch_key, "`batch_key`", registry$batch_categories)
  labels <- categorical(labels_key, "`labels_key`", registry$label_categories)

  cat_names <- categorical_covariate_keys %||% character(0)
  cat_list <- lapply(cat_names, function(k) {
    categorical(k, "`categorical_covariate_keys`",
                registry$categorical_covariate_categories[[k]])
  })
  cat_covs <- matrix(vapply(cat_list, `[[`, integer(n_cells), "codes"), nrow = n_cells,
                     ncol = length(cat_names), dimnames = list(NULL, cat_names))
  cat_categories <- stats::setNames(lapply(cat_list, `[[`, "categories"), cat_names)
  cat_sizes <- stats::setNames(lengths(cat_categories, use.names = FALSE), cat_names)

  cont_names <- continuous_covariate_keys %||% character(0)
  cont_covs <- matrix(vapply(cont_names, function(k) {
    .numeric_column(cd, k, "`continuous_covariate_keys`")
  }, double(n_cells)), nrow = n_cells, ncol = length(cont_names),
  dimnames = list(NULL, cont_names))

  size_factor <- if (is.null(size_factor_key)) NULL else {
    cols <- lapply(size_factor_key, function(k) {
      .numeric_column(cd, k, "`size_factor_key`", positive = TRUE)
    })
    if (length(cols) == 1L) cols[[1]] else do.call(cbind, cols)
  }

  new_registry <- list(
    model = "SCVI",
    gene_names = input$gene_names,
    setup_args = list(layer = input$layer, assay = input$assay, batch_key = batch_key,
                      labels_key = labels_key, size_factor_key = size_factor_key,
                      categorical_covariate_keys = categorical_covariate_keys,
                      continuous_covariate_keys = continuous_covariate_keys),
    batch_categories = batch$categories,
    label_categories = labels$categories,
    categorical_covariate_categories = cat_categories,
    continuous_covariate_keys = cont_names,
    n_batch = length(batch$categories),
    n_labels = length(labels$categories),
    n_cells = n_cells
  )
  list(
    counts = if (is.null(input$file)) .count_slots(input$counts) else
      c(input$file, list(n_genes = length(input$gene_names), n_cells = n_cells)),
    batch = batch$codes,
    labels = labels$codes,
    cat_covs = cat_covs,
    cat_sizes = cat_sizes,
    cont_covs = cont_covs,
    size_factor = size_factor,
    registry = new_registry,
    cell_data = cd,
    cell_names = input$cell_names
  )
}

# Features of a count matrix, or of a list of blocks stacked by rows.
.count_rows <- function(counts) {
  if (is.list(counts)) sum(vapply(counts, nrow, 1L)) else nrow(counts)
}

# What the core reads of the counts: each block's dgCMatrix slots (CSC features x cells =
# CSR cells x features, not copied; the core stacks several blocks by features).
.count_slots <- function(counts) {
  blocks <- if (is.list(counts)) unname(counts) else list(counts)
  list(blocks = lapply(blocks, function(m) list(p = m@p, i = m@i, x = m@x, n_rows = nrow(m))),
       n_genes = .count_rows(counts), n_cells = ncol(blocks[[1]]))
}

# A dgCMatrix whose stored values are finite, non-negative integers (`who` expects
# `integers`: what the error says instead of non-integer values), checked in one pass over
# the nonzeros without temporaries; stored zeros are dropped (a copy only when there are some).
.checked_counts <- function(m, arg, who, integers) {
  s <- rs_count_summary(m@x)
  if (s$non_finite > 0L) {
    .stop("`%s` contains %d missing or infinite values (NA/NaN/Inf); counts must be finite",
          arg, s$non_finite)
  }
  if (s$negative > 0L) {
    .stop("`%s` contains %d negative values (min %s); %s expects raw non-negative counts",
          arg, s$negative, format(s$min), who)
  }
  if (s$non_integer > 0L) {
    .stop("`%s` contains %d non-integer values (e.g. %s); %s expects %s", arg,
          s$non_integer, format(s$first_fraction), who, integers)
  }
  if (s$zeros > 0L) m <- Matrix::drop0(m)
  m
}

# New data must carry the model's genes, in the model's order.
.check_gene_names <- function(genes, model_genes, arg = "x") {
  .check_feature_names(genes, model_genes, arg, unit = "genes", model_unit = "genes",
                       reorder = "x[model_genes, ]",
                       hint = "subset/reorder the rows to the model's genes")
}

# The rows of `m` named `model_features`, in that order, when `m` holds them all among others
# or in another order (a model fitted on a subset of the genes of an object applies to the
# whole object); otherwise `m` itself, for .check_feature_names() to explain the mismatch.
.model_rows <- function(m, model_features) {
  features <- rownames(m)
  if (is.null(features) || identical(as.character(features), as.character(model_features))) {
    return(m)
  }
  pos <- match(model_features, features)
  if (anyNA(pos) || anyDuplicated(features[features %in% model_features])) return(m)
  m[pos, , drop = FALSE]
}

# New data must carry the model's features (`unit`: "genes", "regions"), in its order.
.check_feature_names <- function(features, model_features, arg, unit, model_unit, reorder,
                                 hint) {
  if (identical(as.character(features), as.character(model_features))) {
    return(invisible(TRUE))
  }
  missing <- setdiff(model_features, features)
  extra <- setdiff(features, model_features)
  if (!length(missing) && !length(extra)) {
    .stop(paste0("`%s` has the model's %d %s but in a different order; reorder its rows ",
                 "to the model's %s order first (e.g. %s)"),
          arg, length(model_features), unit, sub("s$", "", unit), reorder)
  }
  parts <- c(
    if (length(missing)) sprintf("%d of the model's %d %s are missing (%s)",
                                 length(missing), length(model_features), unit,
                                 .enum(missing)),
    if (length(extra)) sprintf("%d %s are not in the model (%s)", length(extra), unit,
                               .enum(extra))
  )
  .stop("`%s` %s do not match the model's %s: %s; %s", arg, unit, model_unit,
        paste(parts, collapse = "; "), hint)
}

# ---------------------------------------------------------------------------------------------
# Registry <-> JSON. Vectors stay JSON arrays even at length 0 or 1 (the Rust side parses
# them as Vec<String>), keys that are absent are null, and the map of covariate categories is
# always an object.

.registry_to_json <- function(registry, pretty = FALSE) {
  as.character(jsonlite::toJSON(.registry_list(registry), auto_unbox = TRUE, null = "null",
                                digits = NA, pretty = pretty))
}

# A character vector that stays a JSON array (NULL: the empty one).
.json_array <- function(x) I(as.character(x %||% character(0)))

# fromJSON() turns [] into list() and may leave nulls in lists: a character vector
# (`.json_chr`, character(0) for none) or a key (`.json_key`, NULL for none).
.json_chr <- function(x) if (is.null(x) || length(x) == 0L) character(0) else as.character(unlist(x))
.json_key <- function(x) if (is.null(x) || length(x) == 0L) NULL else as.character(unlist(x))

# The registry's shared fields, ready for toJSON() (models add their own fields to it).
.registry_list <- function(registry) {
  arr <- .json_array
  key_arr <- function(x) if (is.null(x)) NULL else arr(x)
  sa <- registry$setup_args
  cc <- registry$categorical_covariate_categories
  # A named empty list serialises as {} (an unnamed one would be []).
  cc_json <- if (length(cc)) lapply(cc, arr) else stats::setNames(list(), character(0))
  list(
    model = registry$model,
    gene_names = arr(registry$gene_names),
    setup_args = list(layer = sa$layer, assay = sa$assay, batch_key = sa$batch_key,
                      labels_key = sa$labels_key,
                      size_factor_key = sa$size_factor_key,
                      categorical_covariate_keys = key_arr(sa$categorical_covariate_keys),
                      continuous_covariate_keys = key_arr(sa$continuous_covariate_keys)),
    batch_categories = arr(registry$batch_categories),
    label_categories = arr(registry$label_categories),
    categorical_covariate_categories = cc_json,
    continuous_covariate_keys = arr(registry$continuous_covariate_keys),
    n_batch = as.integer(registry$n_batch),
    n_labels = as.integer(registry$n_labels),
    n_cells = as.integer(registry$n_cells)
  )
}

.registry_from_json <- function(json) {
  .registry_from_list(jsonlite::fromJSON(json, simplifyVector = TRUE))
}

# The shared fields of a registry parsed from JSON.
.registry_from_list <- function(r) {
  chr <- .json_chr
  key <- .json_key
  sa <- r$setup_args
  cc <- r$categorical_covariate_categories
  cc <- if (length(cc)) lapply(cc, chr) else stats::setNames(list(), character(0))
  list(
    model = as.character(r$model),
    gene_names = chr(r$gene_names),
    setup_args = list(layer = key(sa$layer), assay = key(sa$assay), batch_key = key(sa$batch_key),
                      labels_key = key(sa$labels_key),
                      size_factor_key = key(sa$size_factor_key),
                      categorical_covariate_keys = key(sa$categorical_covariate_keys),
                      continuous_covariate_keys = key(sa$continuous_covariate_keys)),
    batch_categories = chr(r$batch_categories),
    label_categories = chr(r$label_categories),
    categorical_covariate_categories = cc,
    continuous_covariate_keys = chr(r$continuous_covariate_keys),
    n_batch = as.integer(r$n_batch),
    n_labels = as.integer(r$n_labels),
    n_cells = as.integer(r$n_cells)
  )
}
