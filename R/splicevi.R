# The SPLICEVI model object (splicevi.md): gene expression and alternative splicing (junction
# read counts, grouped into ATSEs) of the same cells in one latent space. The R layer reads
# the modalities (matrices, a SingleCellExperiment with the junctions in an altExp, a Seurat
# object with a junction assay), matches cells by name, maps every junction to its ATSE
# (sorted event ids, splicevi.md §2.2) and sends the core one dataset whose features are the
# genes, then the junctions. ATSE totals, PSI and the observed mask are computed in the core.

.check_splicevi <- function(model, arg = "model") .check_kind(model, "SPLICEVI", arg)

# The modalities (a cell measured in one only is "expression" or "splicing"; in both,
# "paired"), as in the `modality` of queries.
.splicevi_modalities <- c("expression", "splicing")

# The altExp / Seurat assay names looked for when none is given.
.junction_names <- c("junctions", "splicing", "Junctions", "Splicing", "SJ")

.splicevi_integers <- c(genes = "raw counts, not normalised or log-transformed data",
                        junctions = "raw junction read counts, not PSI or other ratios")

# ---------------------------------------------------------------------------------------------
# Gathering the modalities (the readers they share with MULTIVI are in modalities.R).

# The modalities from what the user passed: list(expr, junc, setup), where expr / junc are
# NULL or list(m, cells (data.frame or NULL), rows (the junctions' row data or NULL), obj (a
# junction SummarizedExperiment, for `atse_totals` given as an assay name), class, arg).
# `junction_mode`: "required" fails when `junctions` is NULL and `expression` holds no
# junction altExp / assay; "optional" (new data of a query) then goes on without junctions.
.splicevi_sources <- function(expression, junctions, cells, layer, assay, altexp,
                              junction_assay,
                              args = c(expression = "expression", junctions = "junctions"),
                              junction_mode = c("required", "optional")) {
  junction_mode <- match.arg(junction_mode)
  a_e <- args[["expression"]]
  a_j <- args[["junctions"]]
  layer <- .check_scalar_string(layer, "layer", null_ok = TRUE)
  assay <- .check_scalar_string(assay, "assay", null_ok = TRUE)
  altexp <- .check_scalar_string(altexp, "altexp", null_ok = TRUE)
  junction_assay <- .check_scalar_string(junction_assay, "junction_assay", null_ok = TRUE)
  if (is.null(expression) && is.null(junctions)) {
    .stop("`%s` and `%s` are both NULL: SPLICEVI needs gene expression and junction counts",
          a_e, a_j)
  }
  .check_modality_args(expression, junctions, cells, layer, assay, altexp, args,
                       c("expression", "junction"))
  e_sce <- methods::is(expression, "SingleCellExperiment")
  if (!is.null(junction_assay) && !.is_sce(junctions) && !(is.null(junctions) &&
                                                          (e_sce || .is_seurat(expression)))) {
    .stop(paste0("`junction_assay` names the assay with the junction counts of a ",
                 "SingleCellExperiment `%s` (or of the altExp / junction assay of `%s`); it ",
                 "does not apply here"), a_j, a_e)
  }
  setup <- list(layer = NULL, assay = NULL, altexp = NULL, junction_assay = NULL)
  out <- list(expr = NULL, junc = NULL)
  # A junction SummarizedExperiment (given, or an altExp): its counts, assay and row data.
  junction_se <- function(x, arg, cells) {
    a <- .sce_assay(x, junction_assay, arg, "junction_assay")
    list(m = a$m, layer = a$layer, cells = cells, obj = x, class = class(x)[1], arg = arg,
         rows = as.data.frame(SummarizedExperiment::rowData(x), optional = TRUE))
  }

  if (.is_sce(expression)) {
    a <- .sce_assay(expression, layer, a_e, "layer")
    setup$layer <- a$layer
    out$expr <- list(m = a$m, cells = .col_data(expression), class = class(expression)[1],
                     arg = a_e)
    if (is.null(junctions) && e_sce) {
      altexp <- .find_altexp(expression, altexp, .junction_names, a_e, a_j, "junction",
                             required = junction_mode == "required")
      if (!is.null(altexp)) {
        setup$altexp <- altexp
        out$junc <- junction_se(SingleCellExperiment::altExp(expression, altexp,
                                                             withDimnames = TRUE),
                                sprintf("altExp(%s, \"%s\")", a_e, altexp), NULL)
        setup$junction_assay <- out$junc$layer
      }
    }
  } else if (.is_seurat(expression)) {
    .require_seurat(a_e)
    if (is.null(junctions) && is.null(junction_assay)) {
      junction_assay <- .find_seurat_assay(expression, .junction_names, a_e, a_j, "junction",
                                           "junction_assay",
                                           required = junction_mode == "required")
    }
    if (is.null(assay)) {
      # The default assay, unless it is the junction one.
      assay <- SeuratObject::DefaultAssay(expression)
      if (identical(assay, junction_assay)) assay <- "RNA"
    }
    if (identical(assay, junction_assay)) {
      .stop(paste0("`assay` and `junction_assay` both name '%s'; they must be the expression ",
                   "and the junction assay"), assay)
    }
    setup$assay <- assay
    out$expr <- list(m = .seurat_assay_counts(expression, assay, a_e, "assay"),
                     cells = expression[[]], class = class(expression)[1], arg = a_e)
    if (is.null(junctions) && !is.null(junction_assay)) {
      setup$junction_assay <- junction_assay
      out$junc <- list(m = .seurat_assay_counts(expression, junction_assay, a_e,
                                                "junction_assay"),
                       cells = NULL, rows = expression[[junction_assay]][[]],
                       class = class(expression)[1],
                       arg = sprintf("%s[[\"%s\"]]", a_e, junction_assay))
    }
  } else if (!is.null(expression)) {
    out$expr <- list(m = expression, cells = NULL, class = class(expression)[1], arg = a_e)
  }

  if (.is_sce(junctions)) {
    out$junc <- junction_se(junctions, a_j, .col_data(junctions))
    setup$junction_assay <- out$junc$layer
  } else if (.is_seurat(junctions)) {
    .stop(paste0("`%s` is a Seurat object: give the junction counts as an assay of the ",
                 "Seurat object `%s` (`junction_assay`), or as a junctions x cells matrix"),
          a_j, a_e)
  } else if (!is.null(junctions)) {
    out$junc <- list(m = junctions, cells = NULL, class = class(junctions)[1], arg = a_j)
  }
  out$setup <- setup
  out
}

# One event (ATSE) id per junction: `atse`, or the row-data column `atse_column` of the
# junction input. NULL when neither is there and `required` is FALSE.
.splicevi_atse <- function(atse, atse_column, junc, n_junctions, required = TRUE) {
  if (is.null(atse)) {
    col <- .check_scalar_string(atse_column, "atse_column", null_ok = TRUE)
    if (!is.null(col) && col %in% names(junc$rows)) {
      atse <- junc$rows[[col]]
    } else if (required) {
      .stop(paste0("`atse` is NULL and %s: give one event (ATSE) id per junction as `atse`, ",
                   "or name the row-data column holding them with `atse_column`"),
            if (is.null(junc$rows)) sprintf("`%s` has no row data", junc$arg) else
              sprintf("`%s` has no row-data column '%s' (columns: %s)", junc$arg, col %||% "",
                      if (ncol(junc$rows)) .enum(names(junc$rows), 10L) else "none"))
    } else {
      return(NULL)
    }
  }
  if (!(is.atomic(atse) || is.factor(atse))) {
    .stop("`atse` must be a vector of event (ATSE) ids, one per junction, got %s",
          .describe(atse))
  }
  if (length(atse) != n_junctions) {
    .stop(paste0("`atse` has %d values but `%s` has %d junctions (rows); give one event ",
                 "(ATSE) id per junction"), length(atse), junc$arg, n_junctions)
  }
  atse <- if (is.factor(atse)) as.character(atse) else atse
  no_id <- is.na(atse) | !nzchar(as.character(atse))
  if (any(no_id)) {
    .stop(paste0("`atse` has %d junctions without an event id (NA or \"\"), e.g. junction %s: ",
                 "every junction must belong to one ATSE"), sum(no_id),
          .enum(which(no_id), 3L, quote = FALSE))
  }
  atse
}

# The modalities combined (.combine_modalities()) over the union of the cells (in the order
# of `cells`, or the expression's cells first, then the junction-only ones), with their `genes`,
# `junction_names` and the cells with junction counts (`junction_cells`). A cell is measured
# in a modality where it is given; a modality the data lack (new data of a query) is all
# zeros, `n_features` rows of it.
.splicevi_combine <- function(src, cells = NULL, fully_paired = FALSE,
                              n_features = c(genes = 0L, junctions = 0L)) {
  mats <- list(
    expression = if (!is.null(src$expr)) {
      .modality_matrix(src$expr, "genes", "SPLICEVI", .splicevi_integers[["genes"]])
    },
    junctions = if (!is.null(src$junc)) {
      .modality_matrix(src$junc, "junctions", "SPLICEVI", .splicevi_integers[["junctions"]])
    })
  args <- c(src$expr$arg %||% "expression", src$junc$arg %||% "junctions")
  pairing <- function(mats, cell_names) {
    e_cells <- colnames(mats$expression)
    j_cells <- colnames(mats$junctions)
    in_e <- cell_names %in% e_cells
    in_j <- cell_names %in% j_cells
    if (!is.null(e_cells) && !is.null(j_cells) && !any(in_e & in_j)) {
      .stop(paste0("`%s` and `%s` have no cell names in common (e.g. %s and %s): cells are ",
                   "matched across the modalities by name"), args[[1]], args[[2]],
            .enum(e_cells, 2L), .enum(j_cells, 2L))
    }
    if (fully_paired && !all(in_e & in_j)) {
      .stop(paste0("`fully_paired` = TRUE but %d cells of `%s` are missing from `%s` and %d ",
                   "cells of `%s` from `%s` (e.g. %s); give every cell in both, or use ",
                   "fully_paired = FALSE"), sum(!in_j), args[[1]], args[[2]], sum(!in_e),
            args[[2]], args[[1]], .enum(cell_names[!(in_e & in_j)], 3L))
    }
  }
  comb <- .combine_modalities(mats, args, list(src$expr$cells, src$junc$cells), cells,
                              .splicevi_modalities, "gene or junction counts",
                              by_counts = FALSE, check = pairing, n_features = n_features,
                              second_only = "junction-only")
  c(comb, list(genes = rownames(comb$mats$expression),
               junction_names = rownames(comb$mats$junctions),
               junction_cells = colnames(comb$mats$junctions)))
}

# User-given ATSE totals (junctions x cells, or an assay name of the junction
# SummarizedExperiment), checked against the totals computed from the junction counts.
.splicevi_check_totals <- function(atse_totals, src, comb, data, junction_atse) {
  arg <- "atse_totals"
  if (is.character(atse_totals) && length(atse_totals) == 1L) {
    if (is.null(src$junc$obj)) {
      .stop(paste0("`atse_totals` = \"%s\" names an assay, but the junction counts do not come ",
                   "from a SingleCellExperiment; pass the totals as a junctions x cells matrix"),
            atse_totals)
    }
    raw <- .sce_assay(src$junc$obj, atse_totals, src$junc$arg, arg)$m
  } else {
    raw <- atse_totals
  }
  tot <- .modality_matrix(list(m = raw, arg = arg), "junctions", "SPLICEVI",
                          "raw read counts (ATSE totals)")
  junc <- src$junc$arg
  j_cells <- comb$junction_cells
  # Unnamed rows / columns are taken in the order of the junction counts.
  renamed <- !is.null(rownames(raw)) && !identical(rownames(tot), comb$junction_names)
  if (nrow(tot) != length(comb$junction_names) || renamed) {
    .stop(paste0("`atse_totals` must have the rows of `%s` (%d junctions, same names and ",
                 "order), got %d rows"), junc, length(comb$junction_names), nrow(tot))
  }
  if (ncol(tot) == length(j_cells) && is.null(colnames(raw))) colnames(tot) <- j_cells
  if (ncol(tot) != length(j_cells) || !setequal(colnames(tot), j_cells)) {
    .stop("`atse_totals` must have the cells (columns) of `%s` (%d cells), got %d columns",
          junc, length(j_cells), ncol(tot))
  }
  tot <- .spread_columns(tot, comb$cell_names)
  bad <- .rs(rs_splicevi_check_totals(data, length(comb$genes), junction_atse, tot@p, tot@i,
                                      tot@x))
  if (bad > 0) {
    .stop(paste0("`atse_totals` disagrees with the junction counts in %s (cell, junction) ",
                 "entries: an ATSE total must be the sum of the counts of all junctions of ",
                 "that ATSE in the cell; leave `atse_totals` NULL to have them computed"),
          .fmt_int(bad))
  }
  invisible(TRUE)
}

# ---------------------------------------------------------------------------------------------
# Registry <-> JSON: gene and junction names, the junction -> ATSE map, the assays used.

.splicevi_setup_keys <- c("layer", "assay", "altexp", "junction_assay", "atse_column")

.splicevi_registry_to_json <- function(reg) {
  arr <- .json_array
  .modality_registry_to_json(reg, .splicevi_setup_keys, list(
    junction_names = arr(reg$junction_names),
    atse = arr(reg$atse),
    atse_levels = arr(reg$atse_levels),
    junction_gene_names = if (!is.null(reg$junction_gene_names)) arr(reg$junction_gene_names),
    n_genes = length(reg$gene_names),
    n_junctions = length(reg$junction_names),
    n_atse = length(reg$atse_levels)
  ))
}

.splicevi_registry_from_json <- function(json) {
  .modality_registry_from_json(json, "SPLICEVI", .splicevi_setup_keys, function(r) {
    list(junction_names = .json_chr(r$junction_names), atse = .json_chr(r$atse),
         atse_levels = .json_chr(r$atse_levels),
         junction_gene_names = .json_key(r$junction_gene_names))
  })
}

# 0-based ATSE code of every junction, in the sorted order of the event ids.
.atse_codes <- function(atse, levels) match(as.character(atse), levels) - 1L

.new_splicevi <- function(ptr, data, registry, config, cell_names, cell_data, modality, input,
                          dir = NULL) {
  # atse: the event id of every junction.
  .new_modality_model("SPLICEVI", ptr, data, registry, config,
                      list(junction_names = registry$junction_names, atse = registry$atse),
                      cell_names, cell_data, modality, input, dir)
}

.splicevi_input_info <- function(src, comb, n_atse) {
  list(class = .input_classes(list(src$expr, src$junc)), n_cells = length(comb$cell_names),
       n_genes = nrow(comb$full$expression), n_junctions = nrow(comb$full$junctions),
       n_atse = n_atse, modality_cells = .modality_counts(comb$modality, .splicevi_modalities))
}

# ---------------------------------------------------------------------------------------------
# Construction.

#' Set up and build a SPLICEVI model
#'
#' SPLICEVI (Vaidyanathan et al. 2025) is one variational autoencoder over gene expression
#' and alternative splicing of the same cells. Splicing is read as junction counts grouped
#' into alternative transcript structure events (ATSEs: the junctions competing for one
#' splicing choice, e.g. a LeafCutter intron cluster); each junction belongs to exactly one
#' ATSE. The expression encoder and a set encoder over each cell's observed junctions give
#' two posteriors that are mixed into one joint latent space, read by an expression decoder
#' (negative binomial family) and a splicing decoder (Dirichlet-multinomial over the
#' junctions of each ATSE by default).
#'
#' From the junction counts and the junction -> ATSE map, the ATSE totals (the sum of the
#' counts of an ATSE's junctions in a cell), the junction ratios (PSI) and the observed mask
#' (ATSE total > 0) are computed for you. If you also have the totals (e.g. a
#' `cell_by_cluster_matrix`), pass them as `atse_totals`: they are checked against the
#' junction counts. An ATSE with a single junction is allowed (it adds nothing to the
#' Dirichlet-multinomial likelihood). ATSEs are ordered by their sorted event ids.
#'
#' Cells are matched across the modalities by name (column names). With `fully_paired =
#' FALSE` (the default) a cell present in only one of them gets zero counts in the other (a
#' message says how many); a cell without any count is refused.
#'
#' The data can come as
#' * two count matrices, `expression` (genes x cells) and `junctions` (junctions x cells),
#'   dgCMatrix or dense, with `atse` and, for cell annotations, `cells`;
#' * a `SingleCellExperiment` `expression` (assay `layer`) whose junction counts sit in the
#'   alternative experiment `altexp` (found automatically when named `"junctions"`,
#'   `"splicing"`, `"Junctions"`, `"Splicing"` or `"SJ"`; assay `junction_assay`, default
#'   `"counts"`), with the event ids in the altExp's `rowData` column `atse_column`; or two
#'   `SingleCellExperiment`s;
#' * a `Seurat` object `expression` with an expression assay (`assay`) and a junction assay
#'   (`junction_assay`, found automatically by the names above), the event ids in the
#'   junction assay's feature metadata column `atse_column` or in `atse`.
#'
#' Defaults are those of SpliceVI (`daklab/SpliceVI`): `n_hidden` = min(128,
#' floor(sqrt(n_junctions))), `n_latent` = floor(sqrt(n_hidden)) per encoder, linear
#' expression and splicing decoders, the partial (set) splicing encoder, ZINB expression
#' likelihood, equal modality weights with a Jeffreys penalty, layer norm everywhere.
#'
#' As for [scvi()], the object holds handles to the Rust model and data: it is changed in
#' place by [train()], and must be kept with [save_model()] / [load_model()], not `saveRDS()`.
#'
#' @param expression gene expression: a genes x cells count matrix (`dgCMatrix`, other
#'   `Matrix` or base matrix), a `SingleCellExperiment` (junctions in an altExp) or a `Seurat`
#'   object (with a junction assay).
#' @param junctions junction read counts: a junctions x cells count matrix or a
#'   `SingleCellExperiment`; `NULL` to take them from `expression`'s altExp or assay.
#' @param atse the event (ATSE) id of every junction (a character, factor or numeric vector,
#'   one value per row of the junctions); `NULL` to read it from the row data column
#'   `atse_column` of the junction `SingleCellExperiment`, altExp or Seurat assay.
#' @param atse_totals optional ATSE totals to check (junctions x cells, the total of each
#'   junction's ATSE in each cell), or the name of an assay of the junction
#'   `SingleCellExperiment` holding them.
#' @param cells for matrix input: a data.frame of cell annotations with one row per cell
#'   (row names = cell names, or rows in the order of the cells of `expression` followed by
#'   the junction-only cells), holding the columns named by the `*_key` arguments. When its
#'   row names name every cell, the model's cells (and every per-cell result) follow its
#'   order; otherwise the expression's cells come first, then the junction-only ones.
#' @param layer assay of the expression `SingleCellExperiment` (default `"counts"`).
#' @param assay Seurat assay with the expression counts (default: the default assay, or
#'   `"RNA"` when that is the junction assay).
#' @param altexp alternative experiment of `expression` holding the junction counts.
#' @param junction_assay assay with the junction counts: of the junction
#'   `SingleCellExperiment` / altExp (default `"counts"`), or of the Seurat object.
#' @param atse_column row data column with the event ids (when `atse` is `NULL`).
#' @param batch_key cell-data column with each cell's batch, or `NULL` (one batch). With
#'   several batches, training also runs an adversarial batch classifier (see [train()]).
#' @param categorical_covariate_keys,continuous_covariate_keys cell-data columns of extra
#'   covariates.
#' @param n_hidden nodes per hidden layer; `NULL`: min(128, floor(sqrt(n_junctions))).
#' @param n_latent dimension of each encoder's latent space; `NULL`: floor(sqrt(n_hidden))
#'   (doubled in the joint space with `modality_weights = "concatenate"`).
#' @param n_layers_encoder,n_layers_decoder hidden layers of the encoders (and of the
#'   partial encoder's network after pooling) and of the vanilla decoders.
#' @param dropout_rate dropout rate of the encoders, in \[0, 1).
#' @param gene_likelihood `"zinb"`, `"nb"` or `"poisson"`.
#' @param dispersion `"gene"`, `"gene-batch"`, `"gene-label"` or `"gene-cell"`.
#' @param modality_weights how the two posteriors are mixed: `"equal"`, `"cell"` (learned
#'   per cell; the model then applies only to its training cells), `"universal"` (learned per
#'   modality), `"concatenate"` (the two latent spaces side by side) or
#'   `"per_dimension_weighted_average"` (learned per latent dimension).
#' @param modality_penalty penalty aligning the two posteriors: `"Jeffreys"`, `"MMD"` or
#'   `"None"`.
#' @param splicing_encoder_architecture `"partial"` (a set encoder over each cell's observed
#'   junctions) or `"vanilla"` (a dense encoder of the junction ratios).
#' @param splicing_decoder_architecture,expression_architecture `"linear"` or `"vanilla"`
#'   (a multi-layer network).
#' @param splicing_loss_type `"dirichlet_multinomial"` (over the junctions of each ATSE),
#'   `"beta_binomial"` or `"binomial"` (each junction against its ATSE total).
#' @param splicing_concentration with `"beta_binomial"`: a fixed concentration (not
#'   learned); `NULL` learns one per junction.
#' @param dm_concentration Dirichlet-multinomial concentration: one per ATSE (`"atse"`) or
#'   one for all (`"scalar"`).
#' @param encoder_hidden_dim,code_dim,h_hidden_dim sizes of the partial encoder: hidden
#'   width after pooling, junction embedding and code width, hidden width of the
#'   per-junction network.
#' @param pool_mode the partial encoder's pooling over observed junctions: `"mean"` or
#'   `"sum"`.
#' @param max_nobs the partial encoder processes the observed (cell, junction) pairs in
#'   chunks of this many (memory only; -1 = all at once).
#' @param initialize_bias_from_psi start the splicing decoder at each junction's mean
#'   observed PSI (an rscvi addition; `FALSE` starts it at random as SpliceVI does). At
#'   SpliceVI's learning rate the random start takes thousands of steps to reach junctions
#'   that are rarely or mostly used, and the imputed PSI stays near 0.5 meanwhile.
#' @param initialize_embeddings_from_pca initialise the partial encoder's junction
#'   embeddings from a PCA of the junction ratios.
#' @param fully_paired declare every cell measured in both modalities: refuses cells missing
#'   from one (and the per-modality latent representations).
#' @param use_batch_norm,use_layer_norm where batch / layer normalisation is used: `"none"`,
#'   `"encoder"`, `"decoder"` or `"both"`.
#' @param latent_distribution `"normal"` or `"ln"` (logistic normal).
#' @param deeply_inject_covariates feed covariates to every hidden layer.
#' @param encode_covariates let the encoders see the batch and covariates.
#' @param splicing_loss_weight weight of the splicing reconstruction loss.
#' @param lambda_prior weight of the prior on the concentrations.
#' @param train train the model right away with `train(model, ...)`.
#' @param ... with `train = TRUE`: arguments of [train()].
#' @return An object of class `SPLICEVI`. Its elements `gene_names`, `junction_names` and
#'   `atse` (the event id of each junction) describe the features; `modality` names, for each
#'   cell, what was given: `"paired"`, `"expression"` (no junction counts) or `"splicing"`
#'   (no expression counts).
#' @seealso [train()], [get_latent_representation()], [get_normalized_splicing()],
#'   [differential_splicing()], [runSPLICEVI()], [rscvi_example_splicing()].
#' @references Vaidyanathan S, Isaev K, Zweig A, Knowles DA (2025). Robust integration of
#'   sparse single-cell alternative splicing and gene expression data with SpliceVI. bioRxiv.
#'   \doi{10.1101/2025.11.26.690853}
#' @export
#' @examples
#' d <- rscvi_example_splicing()
#' model <- splicevi(d$expression, d$junctions, atse = d$atse, cells = d$cells,
#'                   batch_key = "library")
#' model
#' model <- train(model, max_epochs = 3, seed = 0)
#' dim(get_latent_representation(model))
splicevi <- function(expression = NULL, junctions = NULL, atse = NULL, atse_totals = NULL,
                     cells = NULL, layer = NULL, assay = NULL, altexp = NULL,
                     junction_assay = NULL, atse_column = "event_id", batch_key = NULL,
                     categorical_covariate_keys = NULL, continuous_covariate_keys = NULL,
                     n_hidden = NULL, n_latent = NULL, n_layers_encoder = 2L,
                     n_layers_decoder = 2L, dropout_rate = 0.1,
                     gene_likelihood = c("zinb", "nb", "poisson"),
                     dispersion = c("gene", "gene-batch", "gene-label", "gene-cell"),
                     modality_weights = c("equal", "cell", "universal", "concatenate",
                                          "per_dimension_weighted_average"),
                     modality_penalty = c("Jeffreys", "MMD", "None"),
                     splicing_encoder_architecture = c("partial", "vanilla"),
                     splicing_decoder_architecture = c("linear", "vanilla"),
                     expression_architecture = c("linear", "vanilla"),
                     splicing_loss_type = c("dirichlet_multinomial", "beta_binomial",
                                            "binomial"),
                     splicing_concentration = NULL, dm_concentration = c("atse", "scalar"),
                     encoder_hidden_dim = 128L, code_dim = 16L, h_hidden_dim = 64L,
                     pool_mode = c("mean", "sum"), max_nobs = -1L,
                     initialize_embeddings_from_pca = FALSE, initialize_bias_from_psi = TRUE,
                     fully_paired = FALSE, use_batch_norm = c("none", "encoder", "decoder", "both"),
                     use_layer_norm = c("both", "none", "encoder", "decoder"),
                     latent_distribution = c("normal", "ln"), deeply_inject_covariates = FALSE,
                     encode_covariates = FALSE, splicing_loss_weight = 1, lambda_prior = 0.01,
                     train = FALSE, ...) {
  # Cheap argument checks first, so a typo fails before the data are converted.
  n_hidden <- .check_scalar_int(n_hidden, "n_hidden", min = 1, null_ok = TRUE)
  n_latent <- .check_scalar_int(n_latent, "n_latent", min = 1, null_ok = TRUE)
  max_nobs <- .check_scalar_int(max_nobs, "max_nobs", min = -1)
  if (max_nobs == 0L) {
    .stop("`max_nobs` must be a positive chunk size, or -1 for no chunking, got 0")
  }
  hp <- c(.joint_hyperparameters(n_layers_encoder, n_layers_decoder, dropout_rate,
                                 gene_likelihood, modality_penalty, use_batch_norm,
                                 use_layer_norm, latent_distribution, deeply_inject_covariates,
                                 encode_covariates, fully_paired), list(
    dispersion = .match_choice(dispersion, c("gene", "gene-batch", "gene-label", "gene-cell"),
                               "dispersion"),
    modality_weights = .match_choice(modality_weights, c("equal", "cell", "universal",
                                                         "concatenate",
                                                         "per_dimension_weighted_average"),
                                     "modality_weights"),
    splicing_encoder_architecture = .match_choice(splicing_encoder_architecture,
                                                  c("partial", "vanilla"),
                                                  "splicing_encoder_architecture"),
    splicing_decoder_architecture = .match_choice(splicing_decoder_architecture,
                                                  c("linear", "vanilla"),
                                                  "splicing_decoder_architecture"),
    expression_architecture = .match_choice(expression_architecture, c("linear", "vanilla"),
                                            "expression_architecture"),
    splicing_loss_type = .match_choice(splicing_loss_type,
                                       c("dirichlet_multinomial", "beta_binomial", "binomial"),
                                       "splicing_loss_type"),
    splicing_concentration = .check_scalar_num(splicing_concentration,
                                               "splicing_concentration", min = 0,
                                               min_open = TRUE, null_ok = TRUE),
    dm_concentration = .match_choice(dm_concentration, c("atse", "scalar"), "dm_concentration"),
    encoder_hidden_dim = .check_scalar_int(encoder_hidden_dim, "encoder_hidden_dim", min = 1),
    code_dim = .check_scalar_int(code_dim, "code_dim", min = 1),
    h_hidden_dim = .check_scalar_int(h_hidden_dim, "h_hidden_dim", min = 1),
    pool_mode = .match_choice(pool_mode, c("mean", "sum"), "pool_mode"),
    max_nobs = max_nobs,
    initialize_embeddings_from_pca = .check_scalar_bool(initialize_embeddings_from_pca,
                                                        "initialize_embeddings_from_pca"),
    initialize_bias_from_psi = .check_scalar_bool(initialize_bias_from_psi,
                                                  "initialize_bias_from_psi"),
    splicing_loss_weight = .check_scalar_num(splicing_loss_weight, "splicing_loss_weight",
                                             min = 0),
    lambda_prior = .check_scalar_num(lambda_prior, "lambda_prior", min = 0)
  ))
  if (!is.null(hp$splicing_concentration) && hp$splicing_loss_type != "beta_binomial") {
    .stop(paste0("`splicing_concentration` is the fixed concentration of the beta-binomial ",
                 "likelihood; it needs splicing_loss_type = \"beta_binomial\", got \"%s\""),
          hp$splicing_loss_type)
  }
  do_train <- .check_scalar_bool(train, "train")
  dots <- list(...)
  .check_constructor_dots(dots, do_train, "splicevi")
  if (do_train) .check_kind_train_dots(dots, "splicevi", train.SPLICEVI, "SPLICEVI")

  src <- .splicevi_sources(expression, junctions, cells, layer, assay, altexp, junction_assay)
  for (k in c("expr", "junc")) {
    if (is.null(src[[k]])) {
      .stop("`%s` is NULL: SPLICEVI needs both gene expression and junction counts",
            c(expr = "expression", junc = "junctions")[[k]])
    }
  }
  comb <- .splicevi_combine(src, cells, hp$fully_paired)
  atse_column <- if (is.null(atse)) .check_scalar_string(atse_column, "atse_column")
  atse <- .splicevi_atse(atse, atse_column, src$junc, length(comb$junction_names))
  n_mod <- .modality_counts(comb$modality, .splicevi_modalities)
  if (n_mod[["expression"]] > 0 || n_mod[["splicing"]] > 0) {
    message(sprintf(paste0("splicevi(): %d cells have gene expression only and %d junction ",
                           "counts only; they get zero counts in the other modality"),
                    n_mod[["expression"]], n_mod[["splicing"]]))
  }
  .warn_empty_genes(comb$full$expression, src$expr$arg)
  ds <- .modality_dataset(comb, src$expr$arg, batch_key = batch_key,
                          categorical_covariate_keys = categorical_covariate_keys,
                          continuous_covariate_keys = continuous_covariate_keys)
  atse_levels <- .sorted_categories(atse)
  junction_atse <- .atse_codes(atse, atse_levels)
  if (!is.null(atse_totals)) {
    .splicevi_check_totals(atse_totals, src, comb, ds$data, junction_atse)
  }

  # n_hidden / n_latent NULL: SpliceVI's rule (n_hidden from the junctions, n_latent from
  # n_hidden).
  config <- .joint_config(list(n_genes = length(comb$genes),
                               n_junctions = length(comb$junction_names),
                               n_atse = length(atse_levels), junction_atse = I(junction_atse)),
                          ds$fields, length(comb$cell_names), n_hidden, n_latent, hp)
  registry <- .modality_registry(
    ds$fields, "SPLICEVI", c(src$setup, list(atse_column = atse_column)),
    list(gene_names = comb$genes, junction_names = comb$junction_names,
         atse = as.character(atse), atse_levels = atse_levels,
         junction_gene_names = if (is.character(src$junc$rows$gene_name)) {
           src$junc$rows$gene_name
         }),
    n_mod)
  ptr <- .rs(rs_splicevi_new(ds$data, .config_to_json(config),
                             .splicevi_registry_to_json(registry)))
  config <- .config_from_json(.rs(rs_model_state(ptr))$config)
  model <- .new_splicevi(ptr, ds$data, registry, config, comb$cell_names, comb$cell_data,
                         comb$modality,
                         .splicevi_input_info(src, comb, length(atse_levels)))
  if (do_train) model <- train.SPLICEVI(model, ...)
  model
}

# ---------------------------------------------------------------------------------------------
# Training.

#' @rdname train
#' @param gradient_clipping,gradient_clipping_max_norm SPLICEVI: clip the norm of all
#'   gradients together to `gradient_clipping_max_norm` before each optimizer step.
#' @param lr_scheduler_type,reduce_lr_on_plateau,lr_factor,lr_patience,lr_threshold,lr_min,lr_scheduler_metric,step_size
#'   SCVI, SPLICEVI: learning-rate schedule, off by default (scvi-tools' `plan_kwargs`).
#'   `reduce_lr_on_plateau = TRUE` multiplies the learning rate by `lr_factor` (not below
#'   `lr_min`) once `lr_scheduler_metric` has not fallen by more than `lr_threshold` for more
#'   than `lr_patience` epochs (PyTorch's `ReduceLROnPlateau`, absolute threshold). SPLICEVI
#'   only: `lr_scheduler_type = "step"` multiplies it by `lr_factor` every `step_size`
#'   validation epochs instead. `history()` shows each epoch's learning rate (`lr`).
#' @section SPLICEVI: `train()` of a `SPLICEVI` model uses SpliceVI's defaults: AdamW
#'   (decoupled weight decay 1e-3, `eps` 1e-8) with learning rate 1e-4, up to 500 epochs,
#'   KL warm-up over 50 epochs, gradient clipping at norm 5, the adversarial batch classifier
#'   with several batches, and early stopping when `reconstruction_loss_validation` has not
#'   improved for 50 epochs (validation every epoch; the checks of the KL warm-up epochs are
#'   ignored). Until the warm-up ends, each training step encodes the joint latent from one
#'   modality picked at random (both halves stay separate with `concatenate`). The optimizer
#'   cannot be changed.
#' @export
train.SPLICEVI <- function(model, max_epochs = 500L, lr = 1e-4, train_size = NULL,
                           validation_size = NULL, shuffle_set_split = TRUE,
                           batch_size = 128L, weight_decay = 1e-3, eps = 1e-8,
                           early_stopping = TRUE, early_stopping_patience = 50L,
                           early_stopping_monitor = "reconstruction_loss_validation",
                           early_stopping_min_delta = 0, check_val_every_n_epoch = NULL,
                           n_epochs_kl_warmup = 50L, n_steps_kl_warmup = NULL,
                           adversarial_mixing = TRUE, gradient_clipping = TRUE,
                           gradient_clipping_max_norm = 5,
                           lr_scheduler_type = c("plateau", "step"),
                           reduce_lr_on_plateau = FALSE, lr_factor = 0.6, lr_patience = 30L,
                           lr_threshold = 0, lr_min = 0,
                           lr_scheduler_metric = "elbo_validation", step_size = 10L,
                           seed = NULL, device = c("auto", "cpu", "cuda"), devices = 1L,
                           progress = .progress_default(), ...) {
  .check_splicevi(model)
  cfg <- .adamw_train_config(model, "SPLICEVI", .train_dots(list(...)), max_epochs, lr,
                             train_size, validation_size, shuffle_set_split, batch_size,
                             weight_decay, eps, early_stopping, early_stopping_patience,
                             early_stopping_monitor,
                             early_stopping_min_delta, check_val_every_n_epoch,
                             n_epochs_kl_warmup, n_steps_kl_warmup, adversarial_mixing,
                             !missing(adversarial_mixing), seed)
  gradient_clipping <- .check_scalar_bool(gradient_clipping, "gradient_clipping")
  max_norm <- .check_scalar_num(gradient_clipping_max_norm, "gradient_clipping_max_norm",
                                min = 0, min_open = TRUE)
  if (gradient_clipping) cfg$gradient_clipping_max_norm <- max_norm
  cfg$lr_scheduler <- .lr_schedule_config(cfg, lr_scheduler_type, reduce_lr_on_plateau,
                                          lr_factor, lr_patience, lr_threshold, lr_min,
                                          lr_scheduler_metric, step_size)
  # Early stopping ignores the validation checks of the KL warm-up epochs.
  cfg$early_stopping_warmup_epochs <- as.integer(cfg$n_epochs_kl_warmup %||% 0L)
  .train_model(model, cfg, .check_device(device), .progress_mode(progress, list(...)),
               devices)
}

# ---------------------------------------------------------------------------------------------
# Query data.

# New data for a query (or for load_model()), registered against the model. `x` is
# list(expression = , junctions = , atse = , cells = ) (either modality may be left out:
# its cells are then unmeasured there), or a SingleCellExperiment / Seurat object laid out
# as at setup. Returns list(data, cell_names, cell_data, modality, class).
.splicevi_register_query <- function(model, x, arg = "x", allow_cell_weights = FALSE) {
  reg <- model$registry
  sa <- reg$setup_args
  .check_new_data_allowed(model, arg, allow_cell_weights)
  expression <- junctions <- atse <- cells <- NULL
  layer <- assay <- altexp <- junction_assay <- NULL
  args <- c(expression = arg, junctions = arg)
  if (.is_plain_list(x)) {
    args <- .check_query_list(x, arg, c("expression", "junctions"), c("atse", "cells"))
    expression <- x$expression
    junctions <- x$junctions
    atse <- x$atse
    cells <- x$cells
  } else if (.is_sce(x) || .is_seurat(x)) {
    expression <- x
    if (.is_sce(x)) {
      layer <- .layer_like_sce(x, sa$layer)
      alt <- .altexp_like(x, sa$altexp, sa$junction_assay)
      altexp <- alt$altexp
      junction_assay <- alt$layer
    } else {
      assay <- .seurat_assay_like(x, sa$assay)
      junction_assay <- .seurat_assay_like(x, sa$junction_assay)
    }
  } else {
    .stop(paste0("`%s` must hold the modalities of this model: list(expression = <genes x ",
                 "cells>, junctions = <junctions x cells>, atse = , cells = <data.frame>) ",
                 "(either modality may be left out), a SingleCellExperiment with the ",
                 "junctions in an altExp, or a Seurat object; got %s"), arg, .describe(x))
  }
  src <- .splicevi_sources(expression, junctions, cells, layer, assay, altexp, junction_assay,
                           args, junction_mode = "optional")
  # Junctions keep their order: their event ids (row data or `atse`) follow the rows.
  src <- .sources_model_rows(src, list(expr = reg$gene_names))
  G <- length(reg$gene_names)
  J <- length(reg$junction_names)
  comb <- .splicevi_combine(src, cells, n_features = c(genes = G, junctions = J))
  if (!is.null(src$expr)) .check_gene_names(comb$genes, reg$gene_names, src$expr$arg)
  if (!is.null(src$junc)) {
    .check_feature_names(comb$junction_names, reg$junction_names, src$junc$arg,
                         unit = "junctions", model_unit = "junctions",
                         reorder = "junctions[model$junction_names, ]",
                         hint = paste0("SPLICEVI applies only to the junctions it was ",
                                       "trained on: subset/reorder the rows to ",
                                       "model$junction_names"))
    new_atse <- .splicevi_atse(atse, sa$atse_column, src$junc, J, required = FALSE)
    if (!is.null(new_atse) && !identical(as.character(new_atse), reg$atse)) {
      differ <- which(as.character(new_atse) != reg$atse)
      .stop(paste0("the event (ATSE) ids of the junctions of `%s` differ from the model's for ",
                   "%d junctions (e.g. %s): the model's junction -> ATSE map is fixed"),
            src$junc$arg, length(differ), .enum(reg$junction_names[differ], 3L))
    }
  }
  ds <- .modality_dataset(comb, arg, reg, c(reg$gene_names, reg$junction_names))
  .query_result(comb, ds, list(src$expr, src$junc))
}

# The data a SPLICEVI query runs on: the model's own, or `x` registered against the model.
.splicevi_query_data <- function(model, x, arg = "x") {
  .check_splicevi(model)
  .modality_query_data(model, x, arg, "list(expression = ..., junctions = ...)",
                       .splicevi_register_query)
}

# ---------------------------------------------------------------------------------------------
# Queries.

#' @rdname get_latent_representation
#' @return SPLICEVI: a cells x latent matrix (columns `SPLICEVI_1`, ...; twice `n_latent`
#'   columns for the joint space of `modality_weights = "concatenate"`), or with
#'   `return_dist = TRUE` a list with `mean` and `var`. For `x`, a SPLICEVI model takes
#'   `list(expression = , junctions = , cells = )` or an object laid out as for
#'   [splicevi()].
#' @export
get_latent_representation.SPLICEVI <- function(model, x = NULL, indices = NULL,
                                                modality = c("joint", "expression",
                                                             "splicing"),
                                                give_mean = TRUE, return_dist = FALSE,
                                                batch_size = 128L, device = "auto", ...) {
  .check_splicevi(model)
  .no_dots(list(...), "get_latent_representation", "SPLICEVI")
  .modality_latent(model, "SPLICEVI", x, indices, modality, .splicevi_modalities, give_mean,
                   return_dist, batch_size, device, rs_splicevi_latent)
}

#' @rdname get_normalized_expression
#' @return SPLICEVI: as for MULTIVI, including cells without expression counts.
#' @export
get_normalized_expression.SPLICEVI <- function(model, x = NULL, indices = NULL,
                                               transform_batch = NULL, gene_list = NULL,
                                               library_size = 1, n_samples = 1L,
                                               batch_size = 128L, device = "auto", ...) {
  .check_splicevi(model)
  .no_dots(list(...), "get_normalized_expression", "SPLICEVI")
  .normalized_expression(model, x, library_size, n_samples, transform_batch, gene_list,
                         indices, batch_size, device)
}

#' Normalized splicing (PSI) from a SPLICEVI model
#'
#' The splicing decoder's expected junction ratio (PSI) of every junction in every cell,
#' decoded from the joint latent space, so also for junctions and cells without reads
#' (imputed splicing), as SpliceVI's `get_normalized_splicing()`. Under the
#' Dirichlet-multinomial likelihood the ratios of the junctions of one ATSE sum to 1.
#' `norm_splicing_function = "dm_posterior_mean"` gives instead the posterior mean of each
#' cell's own PSI (SpliceVI's PSI*): the decoder's ratio updated with the cell's reads,
#' \eqn{(c_j p_{ij} + y_{ij}) / (c_j + t_{ij})} with the learned concentration \eqn{c_j}
#' (the decoder's ratio for a binomial likelihood); where a cell has no reads it equals the
#' decoder's ratio.
#'
#' @param model a `SPLICEVI` model.
#' @param x new data instead of the model's own (see [get_latent_representation()]).
#' @param indices cells to use (1-based positions, cell names or a logical vector); `NULL` =
#'   all.
#' @param transform_batch `NULL` (each cell's own batch) or batch categories: decode every
#'   cell as if it came from each of them and average.
#' @param junction_list `NULL` (all junctions) or names of the model's junctions to return
#'   (in the model's order).
#' @param use_z_mean decode the posterior mean of the latent (`TRUE`) or samples.
#' @param n_samples posterior samples to decode (with `use_z_mean = FALSE`).
#' @param return_mean with `n_samples > 1`: average the samples (`TRUE`) or return them all.
#' @param norm_splicing_function `"decoder"` (the decoder's PSI) or `"dm_posterior_mean"`
#'   (the posterior mean given the cell's reads).
#' @param batch_size cells per minibatch (`NULL`: 128).
#' @param device `"auto"`, `"cpu"` or `"cuda"`.
#' @param ... unused.
#' @return A cells x junctions matrix of values in (0, 1); with `n_samples > 1` and
#'   `return_mean = FALSE` an array samples x cells x junctions.
#' @export
#' @examples
#' d <- rscvi_example_splicing()
#' model <- train(splicevi(d$expression, d$junctions, atse = d$atse, cells = d$cells),
#'                max_epochs = 3, seed = 0)
#' psi <- get_normalized_splicing(model, indices = 1:5)
#' psi[, 1:4]
#' post <- get_normalized_splicing(model, indices = 1:5,
#'                                 norm_splicing_function = "dm_posterior_mean")
get_normalized_splicing <- function(model, ...) UseMethod("get_normalized_splicing")

#' @rdname get_normalized_splicing
#' @export
get_normalized_splicing.SPLICEVI <- function(model, x = NULL, indices = NULL,
                                             transform_batch = NULL, junction_list = NULL,
                                             use_z_mean = TRUE, n_samples = 1L,
                                             return_mean = TRUE,
                                             norm_splicing_function = c("decoder",
                                                                        "dm_posterior_mean"),
                                             batch_size = NULL, device = "auto", ...) {
  .check_splicevi(model)
  .no_dots(list(...), "get_normalized_splicing", "SPLICEVI")
  use_z_mean <- .check_scalar_bool(use_z_mean, "use_z_mean")
  n_samples <- .check_scalar_int(n_samples, "n_samples", min = 1)
  return_mean <- .check_scalar_bool(return_mean, "return_mean")
  fun <- .match_choice(norm_splicing_function, c("decoder", "dm_posterior_mean"),
                       "norm_splicing_function")
  batch_size <- .check_batch_size(batch_size %||% 128L)
  device <- .check_device(device)
  tb <- .transform_batch_codes(transform_batch, model$registry$batch_categories) %||% integer(0)
  junctions <- model$junction_names
  j_idx <- .feature_positions(junction_list, junctions, "junction_list", "junction")
  q <- .splicevi_query_data(model, x)
  cells <- .query_cells(q, indices)
  out <- .rs(rs_splicevi_normalized_splicing(model$model, q$data, cells$idx, tb, j_idx,
                                             use_z_mean, n_samples, return_mean, fun,
                                             batch_size, device))
  names_j <- if (is.null(j_idx)) junctions else junctions[j_idx + 1L]
  if (nrow(out) == length(cells$idx)) {
    dimnames(out) <- list(cells$names, names_j)
    return(out)
  }
  # Sample-major rows: sample s holds rows (s - 1) * n_cells + 1:n_cells.
  arr <- array(out, dim = c(length(cells$idx), n_samples, length(names_j)),
               dimnames = list(cells$names, NULL, names_j))
  aperm(arr, c(2, 1, 3))
}

#' @rdname get_library_size_factors
#' @return SPLICEVI: a list with `expression`, each cell's log library size
#'   \eqn{\log(s + 10^{-6})} (natural log of its expression count total, as SpliceVI
#'   returns it).
#' @export
get_library_size_factors.SPLICEVI <- function(model, x = NULL, indices = NULL,
                                              batch_size = 128L, device = "auto", ...) {
  .check_splicevi(model)
  .no_dots(list(...), "get_library_size_factors", "SPLICEVI")
  batch_size <- .check_batch_size(batch_size)
  device <- .check_device(device)
  q <- .splicevi_query_data(model, x)
  cells <- .query_cells(q, indices)
  res <- .rs(rs_splicevi_library_size_factors(model$model, q$data, cells$idx, batch_size,
                                              device))
  list(expression = stats::setNames(as.double(res), cells$names))
}

#' @rdname get_elbo
#' @export
get_elbo.SPLICEVI <- function(model, x = NULL, indices = NULL, batch_size = 128L,
                              device = "auto", return_mean = TRUE, ...) {
  .elbo_query(model, "elbo", x, indices, batch_size, device, return_mean, list(...))
}

#' @rdname get_elbo
#' @export
get_reconstruction_error.SPLICEVI <- function(model, x = NULL, indices = NULL,
                                              batch_size = 128L, device = "auto",
                                              return_mean = TRUE, by_modality = FALSE, ...) {
  .elbo_query(model, "reconstruction", x, indices, batch_size, device, return_mean,
              list(...), by_modality)
}

#' @rdname differential_expression
#' @section SPLICEVI: differential expression of the genes between groups of cells of a
#'   `SPLICEVI` model, as for MULTIVI (every draw is a resampled cell decoded at its
#'   posterior mean; `pseudocounts` defaults to 1e-6; no importance weights). For the
#'   junctions see [differential_splicing()].
#' @export
differential_expression.SPLICEVI <- .joint_differential_expression("SPLICEVI", function(object) {
  .check_splicevi(object, "object")
})

#' Differential splicing
#'
#' Bayesian differential splicing of the junctions between groups of cells of a `SPLICEVI`
#' model, as SpliceVI's `differential_splicing()`: `n_samples_overall` cells are drawn with
#' replacement from each group, their PSI is computed at the posterior mean of the latent
#' (the DM posterior mean given each cell's reads by default, see
#' [get_normalized_splicing()]), and the paired draws are compared. In `"change"` mode a
#' junction is differentially spliced when its PSI differs by at least `delta` between the
#' groups with high posterior probability (`proba_ds`), and junctions are flagged by
#' controlling the posterior expected false discovery rate at `fdr_target`; `"vanilla"`
#' mode gives the probability that the PSI is higher in group 1.
#'
#' @inheritParams differential_expression
#' @param object a `SPLICEVI` model.
#' @param delta threshold on the PSI difference.
#' @param norm_splicing_function `"dm_posterior_mean"` or `"decoder"` (see
#'   [get_normalized_splicing()]).
#' @param batch_correction `FALSE` decodes each cell in its own batch; `TRUE` decodes the
#'   draws in each of `batchid1` / `batchid2` (default: all batches) and pairs them batch by
#'   batch.
#' @param n_samples_overall cells drawn per group (divided among the batches with
#'   `batch_correction`).
#' @param all_stats add the empirical columns (`emp_effect`, `emp_prob1`, `emp_prob2`: the
#'   mean observed PSI of each group, -1 where nothing is observed); `FALSE` leaves them
#'   `NA`.
#' @param ... unused.
#' @return A data.frame with one row per junction, in the model's junction order (row names
#'   = junctions), and columns `junction_id`, `gene_name` (when the junctions' row data had
#'   one), `proba_ds`, `is_ds_fdr` (change mode; `NA` in vanilla mode), `bayes_factor`,
#'   `effect_size` (`est_prob2 - est_prob1`), `emp_effect` (`emp_prob2 - emp_prob1`),
#'   `est_prob1`, `est_prob2`, `emp_prob1`, `emp_prob2`, `n_obs_group1`, `n_obs_group2`
#'   (cells of each group with reads in the junction's ATSE); with `groupby`, also
#'   `comparison`, `group1`, `group2` (comparisons stacked, row names made unique).
#' @export
#' @examples
#' d <- rscvi_example_splicing()
#' model <- train(splicevi(d$expression, d$junctions, atse = d$atse, cells = d$cells),
#'                max_epochs = 3, seed = 0)
#' ds <- differential_splicing(model, idx1 = 1:100, idx2 = 101:200,
#'                             n_samples_overall = 500)
#' head(ds[order(-ds$proba_ds), ])
differential_splicing <- function(object, ...) UseMethod("differential_splicing")

#' @rdname differential_splicing
#' @export
differential_splicing.SPLICEVI <- function(object, x = NULL, groupby = NULL, group1 = NULL,
                                           group2 = NULL, idx1 = NULL, idx2 = NULL,
                                           mode = c("change", "vanilla"), delta = 0.1,
                                           fdr_target = 0.05,
                                           norm_splicing_function = c("dm_posterior_mean",
                                                                      "decoder"),
                                           batch_correction = FALSE, batchid1 = NULL,
                                           batchid2 = NULL, n_samples_overall = 5000L,
                                           all_stats = TRUE, batch_size = NULL,
                                           silent = FALSE, device = "auto", ...) {
  model <- object
  .check_splicevi(model, "object")
  .no_dots(list(...), "differential_splicing", "SPLICEVI")
  mode <- .match_choice(mode, c("change", "vanilla"), "mode")
  delta <- .check_scalar_num(delta, "delta", min = 0)
  fdr_target <- .check_scalar_num(fdr_target, "fdr_target", min = 0, max = 1)
  fun <- .match_choice(norm_splicing_function, c("dm_posterior_mean", "decoder"),
                       "norm_splicing_function")
  batch_correction <- .check_scalar_bool(batch_correction, "batch_correction")
  n_samples <- .check_scalar_int(n_samples_overall, "n_samples_overall", min = 1)
  all_stats <- .check_scalar_bool(all_stats, "all_stats")
  batch_size <- .check_batch_size(batch_size %||% 128L)
  silent <- .check_scalar_bool(silent, "silent")
  device <- .check_device(device)
  q <- .splicevi_query_data(model, x)
  cats <- model$registry$batch_categories
  b1 <- .de_batch_codes(batchid1, "batchid1", batch_correction, cats)
  b2 <- .de_batch_codes(batchid2, "batchid2", batch_correction, cats)
  comparisons <- .query_comparisons(model, q, groupby, group1, group2, idx1, idx2)
  junctions <- model$junction_names
  genes <- model$registry$junction_gene_names
  emp <- c("emp_effect", "emp_prob1", "emp_prob2")
  .compare_groups(comparisons, "DS", silent, function(cmp) {
    col <- .rs(rs_splicevi_differential_splicing(model$model, q$data, cmp$cells1 - 1L,
                                                 cmp$cells2 - 1L, b1, b2, n_samples, delta,
                                                 fdr_target, fun, mode, batch_size,
                                                 floor(stats::runif(1, 0, 2^31)), device))
    df <- data.frame(junction_id = junctions, row.names = junctions)
    if (!is.null(genes)) df$gene_name <- genes
    df <- cbind(df, as.data.frame(col[c("proba_ds", "is_ds_fdr", "bayes_factor",
                                         "effect_size", "emp_effect", "est_prob1",
                                         "est_prob2", "emp_prob1", "emp_prob2")]))
    df$n_obs_group1 <- as.integer(col$n_obs_group1)
    df$n_obs_group2 <- as.integer(col$n_obs_group2)
    if (!all_stats) df[emp] <- NA_real_
    df
  })
}

# ---------------------------------------------------------------------------------------------
# print / summary / plot.

.splicevi_data_text <- function(model) {
  inp <- model$input
  .modality_data_text(model, c(expression = "expression", splicing = "splicing"),
                      sprintf("%s genes + %s junctions in %s ATSEs", .fmt_int(inp$n_genes),
                              .fmt_int(inp$n_junctions), .fmt_int(inp$n_atse)))
}

#' @rdname summary.SCVI
#' @method print SPLICEVI
#' @export
print.SPLICEVI <- function(x, ...) {
  cfg <- x$config
  .print_model(x, "SPLICEVI", .splicevi_data_text(x), sprintf(paste0(
    "n_latent = %d, n_hidden = %d, gene_likelihood = \"%s\", splicing_loss_type = \"%s\",\n",
    "            encoders: expression / %s splicing, decoders: %s / %s,\n",
    "            modality_weights = \"%s\", modality_penalty = \"%s\"%s"),
    cfg$n_latent, cfg$n_hidden, cfg$gene_likelihood, cfg$splicing_loss_type,
    cfg$splicing_encoder_architecture, cfg$expression_architecture,
    cfg$splicing_decoder_architecture, cfg$modality_weights, cfg$modality_penalty,
    if (isTRUE(cfg$fully_paired)) ", fully_paired" else ""))
}

#' @rdname summary.SCVI
#' @method summary SPLICEVI
#' @export
summary.SPLICEVI <- function(object, ...) {
  .check_splicevi(object, "object")
  .summary_of(object, "SPLICEVI", .splicevi_data_text(object),
              drop = c("n_cells", "junction_atse"))
}

#' @rdname plot.SCVI
#' @export
plot.SPLICEVI <- function(x, which = c("elbo", "reconstruction", "kl"), ...) {
  .check_splicevi(x, "x")
  .plot_history(history(x), which, ...)
  invisible(x)
}

# ---------------------------------------------------------------------------------------------
# Save / load.

.load_splicevi <- function(dir, x, ...) {
  saved <- .load_modality_model(dir, list(...), "SPLICEVI",
                                "list(expression = , junctions = , cells = )",
                                .splicevi_registry_from_json)
  registry <- saved$registry
  config <- saved$config
  if (length(registry$gene_names) != config$n_genes ||
      length(registry$junction_names) != config$n_junctions ||
      !identical(.atse_codes(registry$atse, registry$atse_levels),
                 as.integer(config$junction_atse))) {
    .stop(paste0("`dir` '%s': the saved registry (%d genes, %d junctions and their ATSEs) ",
                 "does not match the model (%d genes, %d junctions)"), dir,
          length(registry$gene_names), length(registry$junction_names), config$n_genes,
          config$n_junctions)
  }
  input <- list(class = NA_character_, n_cells = registry$n_cells, n_genes = config$n_genes,
                n_junctions = config$n_junctions, n_atse = config$n_atse,
                modality_cells = registry$modality_cells)
  model <- .new_splicevi(saved$ptr, NULL, registry, config, NULL, NULL, NULL, input,
                         dir = normalizePath(dir))
  .attach_modality_data(model, x, .splicevi_register_query, .splicevi_modalities)
}

# ---------------------------------------------------------------------------------------------
# Conveniences: SingleCellExperiment and Seurat.

#' SPLICEVI embedding for SingleCellExperiment and Seurat objects
#'
#' Builds a SPLICEVI model ([splicevi()]) on an object with gene expression and junction
#' counts, trains it ([train()]) and stores the joint latent representation:
#' `runSPLICEVI()` as `reducedDim(x, name)` of a `SingleCellExperiment` whose junction
#' counts are in an altExp (`altexp`, found automatically when named `"junctions"`,
#' `"splicing"`, `"Junctions"`, `"Splicing"` or `"SJ"`; event ids in its `rowData` column
#' `atse_column`); `RunSPLICEVI()` as a dimensional reduction of a `Seurat` object with an
#' expression and a junction assay (`assay`, `junction_assay`), the model in its `misc`
#' slot.
#'
#' @param x a `SingleCellExperiment`.
#' @param object a `Seurat` object.
#' @param ... arguments of [splicevi()] (e.g. `batch_key`, `altexp`, `atse`, `n_latent`) and
#'   of [train()] (e.g. `max_epochs`, `seed`, `device`), by name.
#' @param subset_row,features the genes to fit the model on (names, a logical per gene, or
#'   positions; Bioconductor's `subset_row`, Seurat's `features`, e.g. highly variable
#'   genes); `NULL` for all. The other modalities keep all their features.
#' @param name name of the reduced dimension.
#' @param reduction.name,reduction.key name and key (column prefix, ending in `"_"`) of the
#'   Seurat reduction.
#' @return `x` / `object` with the embedding added.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' d <- rscvi_example_splicing()
#' sce <- SingleCellExperiment::SingleCellExperiment(
#'   assays = list(counts = d$expression), colData = S4Vectors::DataFrame(d$cells))
#' SingleCellExperiment::altExp(sce, "junctions") <-
#'   SummarizedExperiment::SummarizedExperiment(
#'     assays = list(counts = d$junctions),
#'     rowData = S4Vectors::DataFrame(event_id = d$atse))
#' sce <- runSPLICEVI(sce, batch_key = "library", max_epochs = 3, seed = 0)
#' dim(SingleCellExperiment::reducedDim(sce, "SPLICEVI"))
runSPLICEVI <- function(x, ..., subset_row = NULL, name = "SPLICEVI") {
  .run_embedding(x, list(...), "SPLICEVI", splicevi, train.SPLICEVI, name, subset_row)
}

#' @rdname runSPLICEVI
#' @export
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' d <- rscvi_example_splicing()
#' so <- SeuratObject::CreateSeuratObject(d$expression, meta.data = d$cells)
#' so[["junctions"]] <- SeuratObject::CreateAssayObject(counts = d$junctions)
#' so <- RunSPLICEVI(so, atse = d$atse, batch_key = "library", max_epochs = 3, seed = 0)
#' dim(SeuratObject::Embeddings(so, "splicevi"))
RunSPLICEVI <- function(object, ..., features = NULL, reduction.name = "splicevi",
                        reduction.key = "SPLICEVI_") {
  .Run_embedding(object, list(...), "SPLICEVI", splicevi, train.SPLICEVI, reduction.name,
                 reduction.key, features)
}

# ---------------------------------------------------------------------------------------------
# Readers.

#' Read STARsolo's splice-junction counts
#'
#' Reads the `SJ` output of STARsolo (`--soloFeatures SJ`): a folder such as
#' `Solo.out/SJ/raw` holding `matrix.mtx`, `barcodes.tsv` and `features.tsv` (the columns of
#' STAR's `SJ.out.tab`: chromosome, first and last intron base, strand 0/1/2, motif,
#' annotation flag, ...), plain or gzipped. Junctions are grouped into ATSEs the way
#' LeafCutter clusters introns: the connected components of the junctions that share a
#' donor or an acceptor site on the same chromosome and strand. The result goes straight into
#' [splicevi()] as `junctions` (its `event_id` row data are the ATSEs).
#'
#' @param path the folder.
#' @return A `SingleCellExperiment` (junctions x cells) with assay `counts` and row data
#'   `chr`, `start`, `end`, `strand` (`"+"`, `"-"` or `"*"`), `motif`, `annotated` and
#'   `event_id`; rows are named `chr:start-end:strand`.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' dir <- tempfile("sj-")
#' dir.create(dir)
#' # three junctions: the first two share a donor, the third stands alone
#' writeLines(c("1\t100\t200\t1\t1\t1\t5\t0\t30", "1\t100\t300\t1\t1\t0\t2\t0\t30",
#'              "2\t50\t90\t2\t2\t1\t4\t0\t30"), file.path(dir, "features.tsv"))
#' writeLines(c("AAAC-1", "AAAG-1"), file.path(dir, "barcodes.tsv"))
#' Matrix::writeMM(Matrix::sparseMatrix(i = c(1, 2, 3), j = c(1, 2, 2), x = c(3, 1, 2),
#'                                      dims = c(3, 2)), file.path(dir, "matrix.mtx"))
#' sj <- read_starsolo_sj(dir)
#' SummarizedExperiment::rowData(sj)$event_id
read_starsolo_sj <- function(path) {
  path <- .check_scalar_string(path, "path")
  if (!dir.exists(path)) .stop("`path` '%s' is not a folder", path)
  if (!requireNamespace("SingleCellExperiment", quietly = TRUE)) {
    .stop("read_starsolo_sj() needs the 'SingleCellExperiment' package (Bioconductor)")
  }
  file <- function(name) {
    hit <- file.path(path, paste0(name, c("", ".gz")))
    hit <- hit[file.exists(hit)]
    if (!length(hit)) {
      .stop("`path` '%s' has no %s (STARsolo's SJ output: matrix.mtx, barcodes.tsv, features.tsv)",
            path, name)
    }
    hit[[1]]
  }
  features <- tryCatch(
    utils::read.delim(file("features.tsv"), header = FALSE, stringsAsFactors = FALSE),
    error = function(e) .stop("`path`: cannot read features.tsv as SJ.out.tab: %s",
                              conditionMessage(e)))
  if (ncol(features) < 4) {
    .stop("`path`: features.tsv has %d columns; STAR's SJ.out.tab has 9", ncol(features))
  }
  barcodes <- readLines(file("barcodes.tsv"))
  counts <- tryCatch(methods::as(Matrix::readMM(file("matrix.mtx")), "CsparseMatrix"),
                     error = function(e) .stop("`path`: cannot read matrix.mtx: %s",
                                               conditionMessage(e)))
  if (!identical(dim(counts), c(nrow(features), length(barcodes)))) {
    .stop("`path`: matrix.mtx is %d x %d but there are %d junctions and %d barcodes",
          nrow(counts), ncol(counts), nrow(features), length(barcodes))
  }
  strand <- c("*", "+", "-")[match(features[[4]], 0:2)]
  if (anyNA(strand)) .stop("`path`: features.tsv has strand codes other than 0, 1, 2")
  rows <- data.frame(chr = as.character(features[[1]]), start = features[[2]],
                     end = features[[3]], strand = strand)
  if (ncol(features) >= 5) rows$motif <- as.integer(features[[5]])
  if (ncol(features) >= 6) rows$annotated <- features[[6]] == 1
  codes <- .rs(rs_junction_clusters(rows$chr, as.numeric(rows$start), as.numeric(rows$end),
                                    rows$strand))
  rows$event_id <- sprintf("clu_%d_%s", codes + 1L,
                           c("*" = "NA", "+" = "+", "-" = "-")[rows$strand])
  names <- sprintf("%s:%d-%d:%s", rows$chr, as.integer(rows$start), as.integer(rows$end),
                   rows$strand)
  if (anyDuplicated(names)) {
    .stop("`path`: features.tsv lists %d junctions more than once (e.g. %s); STARsolo writes each once",
          sum(duplicated(names)), .enum(unique(names[duplicated(names)]), 3L))
  }
  dimnames(counts) <- list(names, barcodes)
  rownames(rows) <- rownames(counts)
  SingleCellExperiment::SingleCellExperiment(assays = list(counts = counts), rowData = rows)
}
