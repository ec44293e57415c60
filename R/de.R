#' Differential expression
#'
#' Bayesian differential expression between groups of cells from the fitted model, as
#' scvi-tools' `differential_expression()`: posterior samples of each group's normalized
#' expression \eqn{\rho} are paired and compared. In `"change"` mode a gene is called
#' differentially expressed when its log2 fold change exceeds `delta` in absolute value with
#' high posterior probability (`proba_de`), and genes are flagged by controlling the
#' posterior expected false discovery rate at `fdr_target`; `"vanilla"` mode gives the
#' probability that expression is higher in group 1.
#'
#' @inheritParams get_latent_representation
#' @param object an `SCVI` model.
#' @param groupby name of a cell-metadata column defining the groups.
#' @param group1 levels of `groupby` to test, each against `group2`; `NULL` = every level in
#'   turn (each against the rest).
#' @param group2 one level of `groupby`, or `NULL` for all other cells ("Rest").
#' @param idx1,idx2 instead of `groupby`: cells of group 1 / group 2 as a logical vector,
#'   1-based positions, or a string condition on the cell metadata such as
#'   `"cell_line == 'H1975'"`; `idx2 = NULL` means all other cells.
#' @param mode `"change"` (log fold change test, with `delta`) or `"vanilla"`.
#' @param delta LFC threshold of the change-mode test.
#' @param batch_size cells per minibatch (`NULL`: 128).
#' @param all_stats add the raw count statistics (`raw_mean1`, ... columns).
#' @param batch_correction `FALSE` decodes each cell in its own batch; `TRUE` marginalises
#'   over `batchid1` / `batchid2` (default: all batches).
#' @param batchid1,batchid2 batch categories to marginalise over with `batch_correction`.
#' @param fdr_target target of the posterior expected FDR (column `is_de_fdr_<target>`).
#' @param silent `TRUE` hides the per-comparison progress messages.
#' @param weights how each group's posterior draws are resampled: `"uniform"`, or
#'   `"importance"` to weight every draw by how well it explains the whole group (see
#'   [get_normalized_expression()]); with `batch_correction` each batch is weighted on its own.
#' @param filter_outlier_cells drop the 10% of each group's cells farthest from the group in
#'   latent space (robust Gaussian fit, as scvi-tools' `EllipticEnvelope`; not bitwise
#'   identical) before sampling; the raw statistics still use every cell.
#' @param importance_weighting_kwargs with `weights = "importance"`, a named list of the
#'   options described in [get_normalized_expression()].
#' @param ... `n_samples_overall` (default 5000), `test_mode` (`"three"`/`"two"`),
#'   `pseudocounts` (default: estimated), `cred_interval_lvls` (HPD levels).
#' @return A data.frame with one row per gene (per comparison), sorted by `proba_de` (change)
#'   or `bayes_factor` (vanilla), columns as in scvi-tools: `proba_de`, `proba_not_de`,
#'   `bayes_factor`, `scale1`, `scale2`, `pseudocounts`, `delta`, `lfc_mean`, `lfc_median`,
#'   `lfc_std`, `lfc_min`, `lfc_max`, the raw statistics, `is_de_fdr_<target>`, and with
#'   `groupby`: `comparison`, `group1`, `group2`. Row names are the genes (made unique when
#'   several comparisons are stacked).
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' sce <- rscvi_example_sce()
#' model <- train(scvi(sce, batch_key = "batch"), max_epochs = 5, seed = 0)
#' de <- differential_expression(model, groupby = "cell_line", group1 = "H1975")
#' head(de[, c("proba_de", "lfc_mean", "is_de_fdr_0.05")])
# The first formal is `object`, not `model`: UseMethod() picks its dispatch argument by
# partial matching, and `mode = ` would be taken for `model`.
differential_expression <- function(object, ...) UseMethod("differential_expression")

#' @rdname differential_expression
#' @export
differential_expression.SCVI <- function(object, x = NULL, groupby = NULL, group1 = NULL,
                                         group2 = NULL, idx1 = NULL, idx2 = NULL,
                                         mode = c("change", "vanilla"), delta = 0.25,
                                         batch_size = NULL, all_stats = TRUE,
                                         batch_correction = FALSE, batchid1 = NULL,
                                         batchid2 = NULL, fdr_target = 0.05, silent = FALSE,
                                         weights = c("uniform", "importance"),
                                         filter_outlier_cells = FALSE,
                                         importance_weighting_kwargs = NULL, device = "auto",
                                         ...) {
  model <- object
  mode <- .match_choice(mode, c("change", "vanilla"), "mode")
  weights <- .match_choice(weights, c("uniform", "importance"), "weights")
  importance_json <- .importance_json(weights, importance_weighting_kwargs)
  filter_outlier_cells <- .check_scalar_bool(filter_outlier_cells, "filter_outlier_cells")
  delta <- .check_scalar_num(delta, "delta", min = 0)
  fdr_target <- .check_scalar_num(fdr_target, "fdr_target", min = 0, max = 1)
  batch_size <- .check_batch_size(batch_size %||% 128L)
  all_stats <- .check_scalar_bool(all_stats, "all_stats")
  silent <- .check_scalar_bool(silent, "silent")
  batch_correction <- .check_scalar_bool(batch_correction, "batch_correction")
  device <- .check_device(device)
  extra <- list(...)
  unknown <- setdiff(names(extra), c("n_samples_overall", "test_mode", "pseudocounts",
                                      "cred_interval_lvls"))
  if (length(unknown)) .stop("unknown argument(s): %s", paste0("`", unknown, "`", collapse = ", "))
  n_samples <- .check_scalar_int(extra$n_samples_overall %||% 5000L, "n_samples_overall", min = 1)
  test_mode <- .match_choice(extra$test_mode %||% "three", c("three", "two"), "test_mode")
  pseudocount <- if (is.null(extra$pseudocounts)) NaN else
    .check_scalar_num(extra$pseudocounts, "pseudocounts", min = 0)
  levels_ci <- extra$cred_interval_lvls
  if (!is.null(levels_ci) && (!is.numeric(levels_ci) || any(!is.finite(levels_ci)) ||
                              any(levels_ci <= 0 | levels_ci >= 1))) {
    .stop("`cred_interval_lvls` must be numbers in (0, 1)")
  }

  q <- .query_data(model, x)
  cats <- model$registry$batch_categories
  codes <- function(ids, arg) {
    bad <- setdiff(as.character(ids), cats)
    if (length(bad)) .stop("`%s` has unknown batches: %s (known: %s)", arg,
                           paste(bad, collapse = ", "), paste(cats, collapse = ", "))
    match(as.character(ids), cats) - 1L
  }
  b1 <- .de_batch_codes(batchid1, "batchid1", batch_correction, cats, codes)
  b2 <- .de_batch_codes(batchid2, "batchid2", batch_correction, cats, codes)

  comparisons <- .query_comparisons(model, q, groupby, group1, group2, idx1, idx2)
  .compare_groups(comparisons, "DE", silent, function(cmp) {
    res <- .rs(rs_model_de(model$model, "expression", q$data, cmp$cells1 - 1L,
                           cmp$cells2 - 1L, mode == "change", delta, test_mode == "three",
                           pseudocount, b1, b2, n_samples, batch_size, fdr_target, levels_ci,
                           floor(stats::runif(1, 0, 2^31)), filter_outlier_cells,
                           importance_json, device))
    df <- as.data.frame(res$columns, check.names = FALSE)
    if (!all_stats) df <- df[, !grepl("^(raw_|non_zeros_)", names(df)), drop = FALSE]
    if (mode == "change") df[[paste0("is_de_fdr_", .py_float(fdr_target))]] <- res$is_de
    rownames(df) <- model$gene_names %||% model$registry$gene_names
    key <- if (mode == "change") df$proba_de else df$bayes_factor
    df[order(-key, method = "radix"), , drop = FALSE]
  })
}

# The batches the draws of a group are decoded in (0-based codes): none without
# `batch_correction` (then `ids`, named `arg`, must not be given), else `ids` (`codes(ids,
# arg)`), all `categories` by default.
.de_batch_codes <- function(ids, arg, batch_correction, categories,
                            codes = function(ids, arg) .transform_batch_codes(ids, categories)) {
  if (!batch_correction) {
    if (!is.null(ids)) .stop("`%s` needs batch_correction = TRUE", arg)
    return(NULL)
  }
  if (is.null(ids)) return(seq_along(categories) - 1L)
  codes(ids, arg)
}

# The comparisons of a differential analysis on the query data `q` of `model`.
.query_comparisons <- function(model, q, groupby, group1, group2, idx1, idx2) {
  .de_comparisons(q$cell_data %||% model$cell_data, length(q$cell_names), groupby, group1,
                  group2, idx1, idx2)
}

# The table of `one(cmp)` for every comparison, bound by .bind_comparisons(); says which
# comparison runs (`what`: "DE", "DA", "DS") when there are several, unless `silent`.
.compare_groups <- function(comparisons, what, silent, one) {
  tables <- lapply(comparisons, function(cmp) {
    if (!silent && length(comparisons) > 1) message(what, ": ", cmp$label)
    one(cmp)
  })
  .bind_comparisons(tables, comparisons)
}

# One table of per-comparison results, each labelled with its groups when there are groups.
.bind_comparisons <- function(tables, comparisons) {
  tables <- Map(function(df, cmp) {
    if (!is.null(cmp$group1)) {
      df$comparison <- cmp$label
      df$group1 <- cmp$group1
      df$group2 <- cmp$group2
    }
    df
  }, tables, comparisons)
  out <- do.call(rbind, unname(tables))
  if (length(tables) > 1) rownames(out) <- make.unique(unlist(lapply(tables, rownames)))
  out
}

# Python's str(float): 0.05 -> "0.05", 1 -> "1.0".
.py_float <- function(x) {
  s <- format(x, digits = 15)
  if (!grepl("[.e]", s)) s <- paste0(s, ".0")
  s
}

# The comparisons to run: list(cells1, cells2 (1-based), label, group1, group2).
.de_comparisons <- function(cell_data, n, groupby, group1, group2, idx1, idx2) {
  cells_of <- function(idx, arg) {
    if (is.character(idx) && length(idx) == 1) {
      sel <- tryCatch(eval(parse(text = idx), envir = cell_data, enclos = baseenv()),
                      error = function(e) .stop("`%s` = \"%s\" could not be evaluated on the cell data: %s",
                                                arg, idx, conditionMessage(e)))
      if (!is.logical(sel) || length(sel) != n) {
        .stop("`%s` = \"%s\" must give one TRUE/FALSE per cell", arg, idx)
      }
      idx <- sel
    }
    which_cells <- .resolve_indices(idx, n, arg) + 1L
    if (!length(which_cells)) .stop("`%s` selects no cells", arg)
    which_cells
  }
  if (!is.null(idx1)) {
    c1 <- cells_of(idx1, "idx1")
    c2 <- if (is.null(idx2)) setdiff(seq_len(n), c1) else cells_of(idx2, "idx2")
    if (!length(c2)) .stop("group 2 has no cells")
    return(list(list(cells1 = c1, cells2 = c2, label = "one vs two", group1 = NULL, group2 = NULL)))
  }
  if (is.null(groupby)) .stop("give `groupby` (a cell-metadata column) or `idx1`")
  groupby <- .check_scalar_string(groupby, "groupby")
  if (is.null(cell_data) || !groupby %in% names(cell_data)) {
    .stop("`groupby` = \"%s\" is not a column of the cell data; available: %s", groupby,
          paste(names(cell_data), collapse = ", "))
  }
  col <- cell_data[[groupby]]
  values <- as.character(col)
  lv <- if (is.factor(col)) levels(col) else sort(unique(values), method = "radix")
  if (is.null(group1)) {
    if (length(lv) < 2) .stop("`groupby` column \"%s\" has only one category", groupby)
    group1 <- lv
  }
  group1 <- as.character(group1)
  bad <- setdiff(c(group1, group2), lv)
  if (length(bad)) .stop("unknown group(s) %s in `%s`; categories: %s",
                         paste0("\"", bad, "\"", collapse = ", "), groupby, paste(lv, collapse = ", "))
  if (!is.null(group2)) {
    group2 <- .check_scalar_string(group2, "group2")
    if (group2 %in% group1) .stop("`group1` and `group2` must differ (both contain \"%s\")", group2)
  }
  lapply(group1, function(g1) {
    c1 <- which(values == g1)
    c2 <- if (is.null(group2)) which(values != g1) else which(values == group2)
    if (!length(c1)) .stop("group \"%s\" has no cells", g1)
    if (!length(c2)) .stop("the comparison group of \"%s\" has no cells", g1)
    g2 <- group2 %||% "Rest"
    list(cells1 = c1, cells2 = c2, label = paste(g1, "vs", g2), group1 = g1, group2 = g2)
  })
}

# "" for uniform row draws, else the JSON of the importance-weight options (scvi.md 8.10)
# that the core reads; shared by get_normalized_expression() and differential_expression().
.importance_json <- function(weights, importance_weighting_kwargs) {
  kw <- importance_weighting_kwargs
  if (weights == "uniform") {
    if (length(kw)) .stop("`importance_weighting_kwargs` needs weights = \"importance\"")
    return("")
  }
  kw <- kw %||% list()
  if (!is.list(kw) || (length(kw) && (is.null(names(kw)) || any(names(kw) == "")))) {
    .stop("`importance_weighting_kwargs` must be a named list, got %s", .describe(kw))
  }
  known <- c("max_cells", "truncation", "n_mc_samples", "n_mc_samples_per_pass")
  unknown <- setdiff(names(kw), known)
  if (length(unknown)) {
    .stop("`importance_weighting_kwargs` has unknown entries %s; known: %s", .enum(unknown),
          .enum(known))
  }
  arg <- function(name) paste0("importance_weighting_kwargs$", name)
  # The pass size only bounds memory (rscvi sizes its passes itself); it is checked so that
  # scvi-tools calls carry over.
  .check_scalar_int(kw$n_mc_samples_per_pass %||% 250L, arg("n_mc_samples_per_pass"), min = 1)
  opts <- list(
    max_cells = .check_scalar_int(kw$max_cells %||% 1024L, arg("max_cells"), min = 1),
    truncation = .check_scalar_bool(kw$truncation %||% FALSE, arg("truncation")),
    n_mc_samples = .check_scalar_int(kw$n_mc_samples %||% 500L, arg("n_mc_samples"), min = 1)
  )
  as.character(jsonlite::toJSON(opts, auto_unbox = TRUE))
}
