# The MULTIVI model object (multivi.md): gene expression, chromatin accessibility and
# optionally surface proteins of the same or of different cells in one model. The R layer
# gathers the modalities from matrices, SingleCellExperiment (ATAC and proteins in altExps)
# or Seurat (RNA, ATAC and protein assays), matches cells by name across them, pads the
# modality a cell lacks with zeros (the reference's layout: multivi.md §1.1), and sends the
# core one dataset whose features are the genes, then the regions, then the proteins. As
# everywhere, the numbers come from the Rust core.

.check_multivi <- function(model, arg = "model") .check_kind(model, "MULTIVI", arg)

# The modalities (a cell measured in one only is "expression" or "accessibility"; in both,
# "paired"), as in the `modality` of queries; "protein" where the model has proteins.
.multivi_modalities <- c("expression", "accessibility")

# The modalities of `model` (with "protein" when it has proteins).
.multivi_model_modalities <- function(model) {
  c(.multivi_modalities, if (length(model$protein_names)) "protein")
}

# The ATAC altExp / assay names looked for when none is given.
.atac_names <- c("ATAC", "Peaks", "peaks", "atac")

# ---------------------------------------------------------------------------------------------
# Gathering the modalities (the readers they share with SPLICEVI are in modalities.R).

# The modalities and their cell data from what the user passed. Returns list(rna, atac,
# setup) where rna / atac are NULL or list(m, cells (data.frame or NULL), class, arg) and
# setup holds the assays used. `args` names rna and atac in messages. `atac_mode` says what
# to do when `atac` is NULL and `rna` is a SingleCellExperiment or Seurat object: look for
# its ATAC altExp / assay and fail without one ("required"), use it if there is one
# ("optional", for new data of a query), or not look ("none").
.multivi_sources <- function(rna, atac, cells, layer, atac_layer, altexp, assay, atac_assay,
                             protein = NULL, protein_layer = NULL,
                             args = c(rna = "rna", atac = "atac", protein = "protein"),
                             atac_mode = c("required", "optional", "none")) {
  atac_mode <- match.arg(atac_mode)
  a_rna <- args[["rna"]]
  a_atac <- args[["atac"]]
  layer <- .check_scalar_string(layer, "layer", null_ok = TRUE)
  atac_layer <- .check_scalar_string(atac_layer, "atac_layer", null_ok = TRUE)
  altexp <- .check_scalar_string(altexp, "altexp", null_ok = TRUE)
  assay <- .check_scalar_string(assay, "assay", null_ok = TRUE)
  atac_assay <- .check_scalar_string(atac_assay, "atac_assay", null_ok = TRUE)
  if (is.null(rna) && is.null(atac)) {
    .stop("`%s` and `%s` are both NULL: MULTIVI needs gene expression, accessibility or both",
          a_rna, a_atac)
  }
  .check_modality_args(rna, atac, cells, layer, assay, altexp, args, c("RNA", "ATAC"))
  rna_sce <- methods::is(rna, "SingleCellExperiment")
  if (!is.null(atac_layer) && !.is_sce(atac) && !(rna_sce && is.null(atac))) {
    .stop(paste0("`atac_layer` names the ATAC assay of a SingleCellExperiment (`%s`, or the ",
                 "altExp of `%s`); it does not apply here"), a_atac, a_rna)
  }
  if (!is.null(atac_assay) && !.is_seurat(atac) && !(.is_seurat(rna) && is.null(atac))) {
    .stop(paste0("`atac_assay` names the ATAC assay of a Seurat object (`%s`, or `%s`); it ",
                 "does not apply here"), a_atac, a_rna)
  }
  setup <- list(layer = NULL, atac_layer = NULL, altexp = NULL, assay = NULL,
                atac_assay = NULL, protein = NULL, protein_layer = NULL)
  out <- list(rna = NULL, atac = NULL, protein = NULL)

  # RNA, and ATAC held by the same object.
  if (.is_sce(rna)) {
    a <- .sce_assay(rna, layer, a_rna, "layer")
    setup$layer <- a$layer
    out$rna <- list(m = a$m, cells = .col_data(rna), class = class(rna)[1], arg = a_rna)
    if (is.null(atac) && atac_mode != "none") {
      altexp <- .find_altexp(rna, altexp, .atac_names, a_rna, a_atac, "ATAC",
                             required = atac_mode == "required")
      if (!is.null(altexp)) {
        alt_arg <- sprintf("altExp(%s, \"%s\")", a_rna, altexp)
        alt <- SingleCellExperiment::altExp(rna, altexp, withDimnames = TRUE)
        b <- .sce_assay(alt, atac_layer, alt_arg, "atac_layer")
        setup$altexp <- altexp
        setup$atac_layer <- b$layer
        out$atac <- list(m = b$m, cells = NULL, class = class(rna)[1], arg = alt_arg)
      }
    }
  } else if (.is_seurat(rna)) {
    .require_seurat(a_rna)
    assays <- SeuratObject::Assays(rna)
    if (is.null(atac) && atac_mode != "none" && is.null(atac_assay)) {
      atac_assay <- .find_seurat_assay(rna, .atac_names, a_rna, a_atac, "ATAC", "atac_assay",
                                       required = atac_mode == "required")
    }
    if (is.null(atac) && atac_mode == "none") atac_assay <- NULL
    if (is.null(assay)) {
      # The default assay, unless it is the ATAC one (Signac workflows often make it so).
      assay <- SeuratObject::DefaultAssay(rna)
      if (is.null(atac) && identical(assay, atac_assay)) {
        if (!"RNA" %in% assays) {
          .stop(paste0("the default assay of `%s` is its ATAC assay '%s'; name the RNA assay ",
                       "with `assay`"), a_rna, assay)
        }
        assay <- "RNA"
      }
    }
    if (is.null(atac) && identical(assay, atac_assay)) {
      .stop("`assay` and `atac_assay` both name '%s'; they must be the RNA and the ATAC assay",
            assay)
    }
    setup$assay <- assay
    out$rna <- list(m = .seurat_assay_counts(rna, assay, a_rna, "assay"), cells = rna[[]],
                    class = class(rna)[1], arg = a_rna)
    if (is.null(atac) && !is.null(atac_assay)) {
      setup$atac_assay <- atac_assay
      out$atac <- list(m = .seurat_assay_counts(rna, atac_assay, a_rna, "atac_assay"),
                       cells = NULL, class = class(rna)[1],
                       arg = sprintf("%s[[\"%s\"]]", a_rna, atac_assay))
    }
  } else if (!is.null(rna)) {
    out$rna <- list(m = rna, cells = NULL, class = class(rna)[1], arg = a_rna)
  }

  # ATAC given on its own.
  if (.is_sce(atac)) {
    b <- .sce_assay(atac, atac_layer, a_atac, "atac_layer")
    setup$atac_layer <- b$layer
    out$atac <- list(m = b$m, cells = .col_data(atac), class = class(atac)[1], arg = a_atac)
  } else if (.is_seurat(atac)) {
    atac_assay <- atac_assay %||%
      .find_seurat_assay(atac, .atac_names, a_atac, a_atac, "ATAC", "atac_assay",
                         required = FALSE) %||%
      SeuratObject::DefaultAssay(atac)
    setup$atac_assay <- atac_assay
    out$atac <- list(m = .seurat_assay_counts(atac, atac_assay, a_atac, "atac_assay"),
                     cells = atac[[]], class = class(atac)[1], arg = a_atac)
  } else if (!is.null(atac)) {
    out$atac <- list(m = atac, cells = NULL, class = class(atac)[1], arg = a_atac)
  }
  if (!is.null(protein)) {
    p <- .multivi_protein_source(protein, protein_layer, rna, a_rna, args[["protein"]])
    out$protein <- p$src
    setup$protein <- p$name
    setup$protein_layer <- p$layer
  } else if (!is.null(protein_layer)) {
    .stop("`protein_layer` names the assay of the protein counts, but `protein` is NULL")
  }
  out$setup <- setup
  out
}

# The protein modality: `protein` is a proteins x cells count matrix, a
# SingleCellExperiment (assay `protein_layer`), a Seurat object (its "ADT" assay, else its
# default one), or the name of an altExp of the SingleCellExperiment `rna` / an assay of the
# Seurat object `rna`. Returns list(src, name (the altExp / assay name, or NULL), layer).
.multivi_protein_source <- function(protein, protein_layer, rna, a_rna, a_protein) {
  protein_layer <- .check_scalar_string(protein_layer, "protein_layer", null_ok = TRUE)
  if (is.character(protein)) {
    name <- .check_scalar_string(protein, a_protein)
    if (methods::is(rna, "SingleCellExperiment")) {
      alts <- SingleCellExperiment::altExpNames(rna)
      if (!name %in% alts) {
        .stop("`%s` '%s' is not an alternative experiment of `%s`; available: %s", a_protein,
              name, a_rna, if (length(alts)) .enum(alts, 10L) else "none")
      }
      alt_arg <- sprintf("altExp(%s, \"%s\")", a_rna, name)
      alt <- SingleCellExperiment::altExp(rna, name, withDimnames = TRUE)
      b <- .sce_assay(alt, protein_layer, alt_arg, "protein_layer")
      return(list(src = list(m = b$m, cells = NULL, class = class(rna)[1], arg = alt_arg),
                  name = name, layer = b$layer))
    }
    if (.is_seurat(rna)) {
      if (!is.null(protein_layer)) {
        .stop("`protein_layer` names an assay of a SingleCellExperiment; it does not apply here")
      }
      m <- .seurat_assay_counts(rna, name, a_rna, a_protein)
      return(list(src = list(m = m, cells = NULL, class = class(rna)[1],
                             arg = sprintf("%s[[\"%s\"]]", a_rna, name)),
                  name = name, layer = NULL))
    }
    .stop(paste0("`%s` = \"%s\" names an altExp of a SingleCellExperiment `%s` or an assay of ",
                 "a Seurat object `%s`; `%s` is %s"), a_protein, name, a_rna, a_rna, a_rna,
          .describe(rna))
  }
  if (.is_sce(protein)) {
    b <- .sce_assay(protein, protein_layer, a_protein, "protein_layer")
    return(list(src = list(m = b$m, cells = .col_data(protein), class = class(protein)[1],
                           arg = a_protein), name = NULL, layer = b$layer))
  }
  if (!is.null(protein_layer)) {
    .stop("`protein_layer` names an assay of a SingleCellExperiment `%s`; `%s` is %s",
          a_protein, a_protein, .describe(protein))
  }
  if (.is_seurat(protein)) {
    .require_seurat(a_protein)
    assay <- if ("ADT" %in% SeuratObject::Assays(protein)) "ADT" else
      SeuratObject::DefaultAssay(protein)
    return(list(src = list(m = .seurat_assay_counts(protein, assay, a_protein, a_protein),
                           cells = protein[[]], class = class(protein)[1], arg = a_protein),
                name = NULL, layer = NULL))
  }
  list(src = list(m = protein, cells = NULL, class = class(protein)[1], arg = a_protein),
       name = NULL, layer = NULL)
}

# The modalities combined (.combine_modalities()) over the union of the cells (in the order
# of `cells`, or RNA's cells first, then the ATAC-only ones, then those with proteins only),
# with their `genes`, `regions` and `proteins`. A cell is measured in a modality where it has
# counts in it; a modality the data lack (new data of a query) is all zeros, `n_features`
# rows of it. The proteins take part when given or when the model has them
# (`n_features[3] > 0`).
.multivi_combine <- function(src, cells = NULL, n_features = c(0L, 0L, 0L)) {
  mats <- list(
    rna = if (!is.null(src$rna)) {
      .modality_matrix(src$rna, "genes", "MULTIVI",
                       "raw counts, not normalised or log-transformed data")
    },
    atac = if (!is.null(src$atac)) {
      .modality_matrix(src$atac, "regions", "MULTIVI", paste0(
        "raw counts or binary (0/1) accessibility, not TF-IDF or other normalised values"))
    })
  with_protein <- !is.null(src$protein) || isTRUE(n_features[3] > 0L)
  if (with_protein) {
    mats["protein"] <- list(if (!is.null(src$protein)) {
      .modality_matrix(src$protein, "proteins", "MULTIVI",
                       "raw antibody (ADT) counts, not CLR-normalised values")
    })
  }
  args <- c(src$rna$arg %||% "rna", src$atac$arg %||% "atac", src$protein$arg %||% "protein")
  what <- c("RNA", "ATAC", "protein")
  # A modality given without any counts is a mistake, not unmeasured cells.
  no_counts <- function(mats, cell_names) {
    for (k in which(!vapply(mats, is.null, logical(1)))) {
      if (all(Matrix::colSums(mats[[k]]) == 0)) {
        .stop("`%s` has no counts in any cell: remove it or give the %s counts", args[[k]],
              what[[k]])
      }
    }
  }
  k <- seq_along(mats)
  comb <- .combine_modalities(mats, args[k], list(src$rna$cells, src$atac$cells,
                                                  src$protein$cells)[k], cells,
                              c(.multivi_modalities, "protein")[k],
                              paste(paste(what[k], collapse = ", "), "counts"),
                              by_counts = TRUE, check = no_counts, n_features = n_features[k],
                              cells_args = c("rna", "atac", "protein")[k],
                              second_only = "ATAC- or protein-only")
  c(comb, list(genes = rownames(comb$mats$rna) %||% character(0),
               regions = rownames(comb$mats$atac) %||% character(0),
               proteins = rownames(comb$mats$protein) %||% character(0)))
}

# ---------------------------------------------------------------------------------------------
# Registry <-> JSON: gene and region names kept apart, the assays the data came from.

.multivi_setup_keys <- c("layer", "atac_layer", "altexp", "assay", "atac_assay", "protein",
                         "protein_layer")

.multivi_registry_to_json <- function(reg) {
  .modality_registry_to_json(reg, .multivi_setup_keys, list(
    region_names = .json_array(reg$region_names),
    protein_names = .json_array(reg$protein_names %||% character(0)),
    n_genes = length(reg$gene_names), n_regions = length(reg$region_names),
    n_proteins = length(reg$protein_names)))
}

.multivi_registry_from_json <- function(json) {
  .modality_registry_from_json(json, "MULTIVI", .multivi_setup_keys, function(r) {
    list(region_names = .json_chr(r$region_names),
         protein_names = .json_chr(r$protein_names))
  })
}

.new_multivi <- function(ptr, data, registry, config, cell_names, cell_data, modality, input,
                         dir = NULL) {
  .new_modality_model("MULTIVI", ptr, data, registry, config,
                      list(region_names = registry$region_names,
                           protein_names = registry$protein_names %||% character(0)),
                      cell_names, cell_data, modality, input, dir)
}

.multivi_input_info <- function(src, comb) {
  labels <- c(.multivi_modalities, if (length(comb$proteins)) "protein")
  list(class = .input_classes(list(src$rna, src$atac, src$protein)),
       n_cells = length(comb$cell_names), n_genes = length(comb$genes),
       n_regions = length(comb$regions), n_proteins = length(comb$proteins),
       modality_cells = .modality_counts(comb$modality, labels))
}

# ---------------------------------------------------------------------------------------------
# Construction.

#' Set up and build a MULTIVI model
#'
#' MULTIVI (Ashuach et al. 2023) is one variational autoencoder over gene expression (RNA)
#' and chromatin accessibility (ATAC). Each modality has its own encoder; the posteriors of
#' the modalities a cell has are mixed into one joint latent space, which the expression and
#' the accessibility decoders both read. Cells measured in both modalities (paired, e.g. 10x
#' Multiome) and cells measured in only one (RNA-only, ATAC-only) can be fitted together in
#' one model (a "mosaic"): the joint latent space integrates them, and the decoders impute
#' the modality a cell lacks.
#'
#' Cells are matched across modalities by name (the column names). A cell present in only
#' one of `rna` and `atac` is unmeasured in the other; a cell present in both but without
#' counts in one modality is also treated as unmeasured there (scvi-tools' rule). Pass each
#' modality with only the cells it measured: there is no need to pad with zeros.
#'
#' The data can come as
#' * two count matrices, `rna` (genes x cells) and `atac` (regions x cells), dgCMatrix or
#'   dense, with cell annotations for all cells in `cells`;
#' * a `SingleCellExperiment` `rna` whose ATAC counts sit in the alternative experiment
#'   `altexp` (found automatically when it is named `"ATAC"`, `"Peaks"` or `"peaks"`), or two
#'   `SingleCellExperiment`s (cell annotations from their `colData`);
#' * a `Seurat` object `rna` with an RNA assay (`assay`, default its default assay, or
#'   `"RNA"` when the default is the ATAC assay) and an ATAC assay (`atac_assay`, found
#'   automatically when named `"ATAC"`, `"Peaks"` or `"peaks"`), counts of both.
#'
#' RNA must be raw counts; ATAC may be counts or binary (the likelihood binarises it).
#' Either modality may be left out (`NULL`) for an expression-only or accessibility-only
#' model.
#'
#' Surface proteins (antibody-derived tags of CITE-seq, TEA-seq, DOGMA-seq) are a third
#' modality when `protein` is given: raw ADT counts, as a proteins x cells matrix, a
#' `SingleCellExperiment` or `Seurat` object, or the name of the altExp (assay) of `rna`
#' holding them (e.g. `protein = "ADT"`). They get their own encoder, whose posterior joins
#' the mixture, and the totalVI-style decoder of scvi-tools (a background and a foreground
#' negative binomial per protein); cells without protein counts are unmeasured there.
#'
#' Defaults are those of scvi-tools' `MULTIVI`: `n_hidden` = min(128, floor(sqrt(regions)))
#' (from the genes without ATAC), `n_latent` = floor(sqrt(n_hidden)), two hidden layers in
#' every encoder and decoder, ZINB expression likelihood, learned region factors, equal
#' modality weights and the symmetric-KL (Jeffreys) penalty between the modality posteriors
#' of paired cells.
#'
#' As for [scvi()], the object holds handles to the Rust model and data: it is changed in
#' place by [train()], and must be kept with [save_model()] / [load_model()], not `saveRDS()`.
#'
#' @param rna gene expression: a genes x cells count matrix (`dgCMatrix`, other `Matrix` or
#'   base matrix), a `SingleCellExperiment` (assay `layer`; with the ATAC in its altExp
#'   `altexp`), a `Seurat` object (assays `assay` and `atac_assay`), or `NULL`.
#' @param atac chromatin accessibility: a regions x cells count or binary matrix, a
#'   `SingleCellExperiment` (assay `atac_layer`) or a `Seurat` object (assay `atac_assay`), or
#'   `NULL` (ATAC taken from `rna` when it is a SingleCellExperiment with an ATAC altExp or a
#'   Seurat object; otherwise an expression-only model).
#' @param protein surface protein (ADT) counts: a proteins x cells count matrix, a
#'   `SingleCellExperiment` (assay `protein_layer`), a `Seurat` object (its `"ADT"` assay,
#'   else its default assay), the name of the altExp of the `SingleCellExperiment` `rna` or of
#'   the assay of the `Seurat` object `rna` holding them, or `NULL` (no proteins).
#' @param cells for matrix input: a data.frame of cell annotations with one row per cell of
#'   `rna` and `atac` (row names = cell names, or rows in the order of the cells of `rna`
#'   followed by the cells only in `atac`), holding the columns named by the `*_key`
#'   arguments. When its row names name every cell, the model's cells (and every per-cell
#'   result) follow its order, as in an AnnData or MuData, so a seeded split holds out the
#'   cells scvi-tools would; otherwise `rna`'s cells come first, then those only in `atac`.
#' @param layer,atac_layer assays of the `SingleCellExperiment`s (or of the altExp) with the
#'   RNA / ATAC counts (default `"counts"`).
#' @param altexp name of the alternative experiment of `rna` holding the ATAC counts.
#' @param assay,atac_assay Seurat assays with the RNA / ATAC counts.
#' @param protein_layer assay of the `SingleCellExperiment` (or of the altExp) with the
#'   protein counts (default `"counts"`).
#' @param batch_key cell-data column with each cell's batch (for mosaic data often the
#'   modality or technology of the cell), or `NULL` (one batch). With several batches,
#'   training also runs an adversarial batch classifier (see [train()]).
#' @param size_factor_key `NULL` (library sizes are encoded from the counts), or two
#'   cell-data columns holding each cell's RNA size factor (> 0, linear scale) and ATAC size
#'   factor (in (0, 1]), as scvi-tools registers them: they then replace the library
#'   encoders, and the expression decoder's \eqn{\rho} is a softplus (no longer summing to 1
#'   over the genes).
#' @param categorical_covariate_keys,continuous_covariate_keys cell-data columns of extra
#'   covariates.
#' @param n_hidden nodes per hidden layer; `NULL`: min(128, floor(sqrt(n_regions))), from the
#'   genes when there are no regions.
#' @param n_latent dimension of the latent space; `NULL`: floor(sqrt(n_hidden)).
#' @param n_layers_encoder,n_layers_decoder hidden layers of the encoders and decoders.
#' @param dropout_rate dropout rate of the latent encoders, in \[0, 1).
#' @param region_factors learn a factor per region (cell-independent accessibility bias).
#' @param gene_likelihood `"zinb"`, `"nb"` or `"poisson"`.
#' @param modality_weights how the modality posteriors are mixed: `"equal"`, `"universal"`
#'   (one learned weight per modality) or `"cell"` (learned per cell; the model then applies
#'   only to its training cells).
#' @param modality_penalty penalty aligning the modality posteriors of paired cells:
#'   `"Jeffreys"` (symmetric KL), `"MMD"` or `"None"`.
#' @param use_batch_norm,use_layer_norm where batch / layer normalisation is used: `"none"`,
#'   `"encoder"`, `"decoder"` or `"both"`.
#' @param latent_distribution `"normal"` or `"ln"` (logistic normal).
#' @param deeply_inject_covariates feed covariates to every hidden layer.
#' @param encode_covariates let the encoders see the batch and covariates.
#' @param fully_paired declare every cell paired: refuses unpaired cells (and the per-modality
#'   latent representations).
#' @param protein_dispersion with proteins: one dispersion per protein (`"protein"`) or per
#'   protein and batch (`"protein-batch"`).
#' @param train train the model right away with `train(model, ...)`.
#' @param ... with `train = TRUE`: arguments of [train()].
#' @return An object of class `MULTIVI`. Its element `modality` names, for each cell, what
#'   was measured: `"paired"` (every modality of the model), `"expression"` (RNA only),
#'   `"accessibility"` (ATAC only), or with proteins also e.g. `"expression+protein"`;
#'   `gene_names`, `region_names` and `protein_names` hold the features.
#' @seealso [train()], [get_latent_representation()], [get_normalized_accessibility()],
#'   [get_protein_foreground_probability()], [runMULTIVI()], [RunMULTIVI()],
#'   [rscvi_example_multiome()].
#' @references Ashuach T, Gabitto MI, Koodli RV, Saldi G-A, Jordan MI, Yosef N (2023).
#'   MultiVI: deep generative model for the integration of multimodal data. Nature Methods
#'   20, 1222-1231. \doi{10.1038/s41592-023-01909-9}
#' @export
#' @examples
#' d <- rscvi_example_multiome()
#' # paired cells
#' model <- multivi(d$rna, d$atac, cells = d$cells, batch_key = "library")
#' model
#' # a mosaic: 100 cells with RNA only, 100 with ATAC only, the rest paired
#' mosaic <- multivi(d$rna[, 1:500], d$atac[, 101:600], cells = d$cells)
#' table(mosaic$modality)
#' mosaic <- train(mosaic, max_epochs = 3, seed = 0)
#' dim(get_latent_representation(mosaic))
multivi <- function(rna = NULL, atac = NULL, protein = NULL, cells = NULL, layer = NULL,
                    atac_layer = NULL, altexp = NULL, assay = NULL, atac_assay = NULL,
                    protein_layer = NULL, batch_key = NULL, size_factor_key = NULL,
                    categorical_covariate_keys = NULL, continuous_covariate_keys = NULL,
                    n_hidden = NULL, n_latent = NULL, n_layers_encoder = 2L,
                    n_layers_decoder = 2L, dropout_rate = 0.1, region_factors = TRUE,
                    gene_likelihood = c("zinb", "nb", "poisson"),
                    modality_weights = c("equal", "universal", "cell"),
                    modality_penalty = c("Jeffreys", "MMD", "None"),
                    use_batch_norm = c("none", "encoder", "decoder", "both"),
                    use_layer_norm = c("both", "none", "encoder", "decoder"),
                    latent_distribution = c("normal", "ln"),
                    deeply_inject_covariates = FALSE, encode_covariates = FALSE,
                    fully_paired = FALSE, protein_dispersion = c("protein", "protein-batch"),
                    train = FALSE, ...) {
  # Cheap argument checks first, so a typo fails before the data are converted.
  size_factor_key <- .check_size_factor_keys(size_factor_key, 2L)
  n_hidden <- .check_scalar_int(n_hidden, "n_hidden", min = 1, null_ok = TRUE)
  n_latent <- .check_scalar_int(n_latent, "n_latent", min = 1, null_ok = TRUE)
  hp <- c(.joint_hyperparameters(n_layers_encoder, n_layers_decoder, dropout_rate,
                                 gene_likelihood, modality_penalty, use_batch_norm,
                                 use_layer_norm, latent_distribution, deeply_inject_covariates,
                                 encode_covariates, fully_paired),
          list(region_factors = .check_scalar_bool(region_factors, "region_factors"),
               modality_weights = .match_choice(modality_weights, c("equal", "universal", "cell"),
                                                "modality_weights"),
               protein_dispersion = .match_choice(protein_dispersion,
                                                  c("protein", "protein-batch"),
                                                  "protein_dispersion")))
  do_train <- .check_scalar_bool(train, "train")
  dots <- list(...)
  .check_constructor_dots(dots, do_train, "multivi")
  if (do_train) .check_kind_train_dots(dots, "multivi", train.MULTIVI, "MULTIVI")

  src <- .multivi_sources(rna, atac, cells, layer, atac_layer, altexp, assay, atac_assay,
                          protein, protein_layer)
  comb <- .multivi_combine(src, cells)
  info <- .multivi_input_info(src, comb)
  n_mod <- info$modality_cells
  if (hp$fully_paired && any(comb$modality != "paired")) {
    unpaired <- n_mod[names(n_mod) != "paired" & n_mod > 0]
    .stop(paste0("`fully_paired` = TRUE but %d cells lack a modality (%s; e.g. %s); use ",
                 "fully_paired = FALSE for unpaired cells"), sum(unpaired),
          paste(unpaired, names(unpaired), "only", collapse = ", "),
          .enum(comb$cell_names[comb$modality != "paired"], 3L))
  }
  .warn_empty_genes(comb$full$rna, src$rna$arg)
  ds <- .modality_dataset(comb, if (!is.null(src$rna)) src$rna$arg else src$atac$arg,
                          batch_key = batch_key, size_factor_key = size_factor_key,
                          n_size_factors = 2L,
                          categorical_covariate_keys = categorical_covariate_keys,
                          continuous_covariate_keys = continuous_covariate_keys)
  # n_hidden / n_latent NULL: scvi-tools' rule (n_hidden from the regions or genes, n_latent
  # from n_hidden).
  config <- .joint_config(list(n_genes = length(comb$genes), n_regions = length(comb$regions),
                               n_proteins = length(comb$proteins)),
                          ds$fields, length(comb$cell_names), n_hidden, n_latent,
                          c(hp, list(use_size_factor = !is.null(size_factor_key))))
  registry <- .modality_registry(ds$fields, "MULTIVI", src$setup,
                                 list(gene_names = comb$genes, region_names = comb$regions,
                                      protein_names = comb$proteins),
                                 n_mod)
  ptr <- .rs(rs_multivi_new(ds$data, .config_to_json(config),
                            .multivi_registry_to_json(registry)))
  config <- .config_from_json(.rs(rs_model_state(ptr))$config)
  model <- .new_multivi(ptr, ds$data, registry, config, comb$cell_names, comb$cell_data,
                        comb$modality, info)
  if (do_train) model <- train.MULTIVI(model, ...)
  model
}

# ---------------------------------------------------------------------------------------------
# Training.

#' @rdname train
#' @param adversarial_mixing MULTIVI, SPLICEVI: train an adversarial batch classifier on the joint
#'   latent space and push the encoders to fool it (weight 1), mixing the batches; off by
#'   itself with a single batch. `FALSE` trains without it.
#' @section MULTIVI: `train()` of a `MULTIVI` model uses scvi-tools' `MULTIVI.train()`
#'   defaults: AdamW (decoupled weight decay 1e-3, `eps` 1e-8) with learning rate 1e-4, up to
#'   500 epochs, KL warm-up over 50 epochs, and early stopping when
#'   `reconstruction_loss_validation` has not improved for 50 epochs (validation every
#'   epoch). The optimizer cannot be changed.
#' @export
train.MULTIVI <- function(model, max_epochs = 500L, lr = 1e-4, train_size = NULL,
                          validation_size = NULL, shuffle_set_split = TRUE, batch_size = 128L,
                          weight_decay = 1e-3, eps = 1e-8, early_stopping = TRUE,
                          early_stopping_patience = 50L,
                          early_stopping_monitor = "reconstruction_loss_validation",
                          early_stopping_min_delta = 0, check_val_every_n_epoch = NULL,
                          n_epochs_kl_warmup = 50L, n_steps_kl_warmup = NULL,
                          adversarial_mixing = TRUE, seed = NULL,
                          device = c("auto", "cpu", "cuda"), devices = 1L,
                          progress = .progress_default(), ...) {
  .check_multivi(model)
  cfg <- .adamw_train_config(model, "MULTIVI", .train_dots(list(...)), max_epochs, lr,
                             train_size, validation_size, shuffle_set_split, batch_size,
                             weight_decay, eps, early_stopping, early_stopping_patience,
                             early_stopping_monitor,
                             early_stopping_min_delta, check_val_every_n_epoch,
                             n_epochs_kl_warmup, n_steps_kl_warmup, adversarial_mixing,
                             !missing(adversarial_mixing), seed)
  .train_model(model, cfg, .check_device(device), .progress_mode(progress, list(...)),
               devices)
}

# ---------------------------------------------------------------------------------------------
# Query data.

# New data for a query (or for load_model()), registered against the model. `x` is
# list(rna = , atac = , protein = , cells = ) (any modality may be left out: its cells are
# then unmeasured there), or a SingleCellExperiment / Seurat object holding the modalities as
# at setup, or a count matrix for a model of one modality. Returns list(data, cell_names,
# cell_data, modality, class).
.multivi_register_query <- function(model, x, arg = "x", allow_cell_weights = FALSE,
                                    extend_categories = FALSE) {
  reg <- model$registry
  sa <- reg$setup_args
  G <- length(reg$gene_names)
  R <- length(reg$region_names)
  P <- length(reg$protein_names)
  .check_new_data_allowed(model, arg, allow_cell_weights)
  rna <- atac <- protein <- cells <- NULL
  layer <- atac_layer <- altexp <- assay <- atac_assay <- protein_layer <- NULL
  args <- c(rna = arg, atac = arg, protein = arg)
  atac_mode <- "none"
  if (.is_plain_list(x)) {
    args <- .check_query_list(x, arg, c("rna", "atac", if (P > 0L) "protein"), "cells")
    rna <- x$rna
    atac <- x$atac
    protein <- x$protein
    cells <- x$cells
  } else if (.is_sce(x) || .is_seurat(x)) {
    if (G == 0L) atac <- x else rna <- x
    if (G > 0L && R > 0L) atac_mode <- "optional"
    # Proteins from the altExp / assay named at setup, where `x` has it.
    has <- if (.is_sce(x)) SingleCellExperiment::altExpNames else SeuratObject::Assays
    if (G > 0L && P > 0L && isTRUE(sa$protein %in% has(x))) {
      protein <- sa$protein
    }
  } else if (G == 0L) {
    atac <- x
  } else if (R == 0L) {
    rna <- x
  } else {
    .stop(paste0("`%s` must hold the modalities of this model: list(rna = <genes x cells>, ",
                 "atac = <regions x cells>, cells = <data.frame>) (either modality may be ",
                 "left out), a SingleCellExperiment with the ATAC in an altExp, or a Seurat ",
                 "object; got %s"), arg, .describe(x))
  }
  if (!is.null(rna) && G == 0L) {
    .stop("`%s` has gene expression but this model has no genes (it was built without `rna`)",
          args[["rna"]])
  }
  if (!is.null(atac) && R == 0L) {
    .stop("`%s` has accessibility but this model has no regions (it was built without `atac`)",
          args[["atac"]])
  }
  # The assays the model was set up with, where the new objects have them.
  if (.is_sce(rna)) {
    layer <- .layer_like_sce(rna, sa$layer)
    if (atac_mode != "none") {
      alt <- .altexp_like(rna, sa$altexp, sa$atac_layer)
      altexp <- alt$altexp
      atac_layer <- alt$layer
    }
  }
  if (.is_sce(atac)) atac_layer <- .layer_like_sce(atac, sa$atac_layer)
  if (.is_seurat(rna)) {
    assay <- .seurat_assay_like(rna, sa$assay)
    if (atac_mode != "none") atac_assay <- .seurat_assay_like(rna, sa$atac_assay)
  }
  if (.is_seurat(atac)) atac_assay <- .seurat_assay_like(atac, sa$atac_assay)
  if (is.character(protein) && .is_sce(rna)) {
    protein_layer <- .layer_like_sce(SingleCellExperiment::altExp(rna, protein),
                                     sa$protein_layer)
  }
  if (.is_sce(protein)) protein_layer <- .layer_like_sce(protein, sa$protein_layer)
  src <- .multivi_sources(rna, atac, cells, layer, atac_layer, altexp, assay, atac_assay,
                          protein, protein_layer, args, atac_mode = atac_mode)
  src <- .sources_model_rows(src, list(rna = reg$gene_names, atac = reg$region_names,
                                       protein = reg$protein_names))
  # Modalities the new data lack are unmeasured: zero rows.
  comb <- .multivi_combine(src, cells, n_features = c(G, R, P))
  if (!is.null(src$rna)) .check_gene_names(comb$genes, reg$gene_names, src$rna$arg)
  if (!is.null(src$atac)) .check_region_names(comb$regions, reg$region_names, src$atac$arg)
  if (!is.null(src$protein)) {
    .check_feature_names(comb$proteins, reg$protein_names, src$protein$arg, unit = "proteins",
                         model_unit = "proteins", reorder = "protein[model$protein_names, ]",
                         hint = paste0("MULTIVI applies only to the proteins it was trained ",
                                       "on: subset/reorder the rows to model$protein_names"))
  }
  ds <- .modality_dataset(comb, arg, reg, c(reg$gene_names, reg$region_names,
                                            reg$protein_names),
                          extend_categories = extend_categories)
  .query_result(comb, ds, list(src$rna, src$atac, src$protein))
}

# A scArches query model of the MULTIVI `reference` for `x_query` (laid out as the new data
# of a query), with the freezing options `freeze`: the query's new batches and covariate
# categories are appended after the reference's (load_query_data()).
.multivi_load_query <- function(x_query, reference, freeze) {
  if (identical(reference$config$modality_weights, "cell")) {
    .stop(paste0("`reference` was built with modality_weights = \"cell\" (one weight per ",
                 "training cell); it cannot map query cells"))
  }
  q <- .multivi_register_query(reference, x_query, arg = "x_query", extend_categories = TRUE)
  reg <- reference$registry
  config <- reference$config
  config$n_batch <- q$fields$registry$n_batch
  config$n_cats_per_cov <- as.integer(unname(q$fields$cat_sizes))
  config$n_cells <- length(q$cell_names)
  labels <- .multivi_model_modalities(reference)
  n_mod <- .modality_counts(q$modality, labels)
  registry <- .modality_registry(q$fields, "MULTIVI", reg$setup_args[.multivi_setup_keys],
                                 list(gene_names = reg$gene_names,
                                      region_names = reg$region_names,
                                      protein_names = reg$protein_names), n_mod)
  ptr <- .rs(rs_multivi_query_new(reference$model, q$data, .config_to_json(config),
                                  .multivi_registry_to_json(registry),
                                  as.character(jsonlite::toJSON(freeze, auto_unbox = TRUE))))
  input <- list(class = q$class, n_cells = length(q$cell_names),
                n_genes = length(reg$gene_names), n_regions = length(reg$region_names),
                n_proteins = length(reg$protein_names), modality_cells = n_mod)
  .new_multivi(ptr, q$data, registry, .config_from_json(.rs(rs_model_state(ptr))$config),
               q$cell_names, q$cell_data, q$modality, input)
}

# New data must carry the model's regions, in the model's order.
.check_region_names <- function(regions, model_regions, arg) {
  .check_feature_names(regions, model_regions, arg, unit = "regions",
                       model_unit = "ATAC regions", reorder = "atac[model$region_names, ]",
                       hint = paste0("MULTIVI applies only to the regions (peaks) it was ",
                                     "trained on: subset/reorder the rows to ",
                                     "model$region_names"))
}

# The data a MULTIVI query runs on: the model's own, or `x` registered against the model.
.multivi_query_data <- function(model, x, arg = "x") {
  .check_multivi(model)
  .modality_query_data(model, x, arg, "list(rna = ..., atac = ...)", .multivi_register_query)
}

.require_modality <- function(model, what, arg, value) {
  k <- match(what, c("expression", "accessibility", "protein"))
  n <- length(list(model$gene_names, model$region_names, model$protein_names)[[k]])
  if (n == 0L) {
    .stop("%s needs %s data, but this model has no %s (it was built without `%s`)",
          if (is.null(value)) arg else sprintf("`%s` = \"%s\"", arg, value),
          c("gene expression", "accessibility (ATAC)", "protein")[[k]],
          c("genes", "regions", "proteins")[[k]], c("rna", "atac", "protein")[[k]])
  }
  invisible(n)
}

# ---------------------------------------------------------------------------------------------
# Queries.

#' @rdname get_latent_representation
#' @param modality MULTIVI: the latent space of `"joint"` (the modalities mixed, the
#'   default), or of one modality's own encoder, `"expression"`, `"accessibility"` or
#'   `"protein"` (refused for `fully_paired` models). SPLICEVI: `"joint"`, `"expression"` or
#'   `"splicing"` (whose posterior mean is non-negative by construction).
#' @return MULTIVI: a cells x `n_latent` matrix (columns `MULTIVI_1`, ...), or with
#'   `return_dist = TRUE` a list with `mean` and `var`. For `x`, a MULTIVI model takes
#'   `list(rna = , atac = , protein = , cells = )` (any modality may be left out), or a
#'   SingleCellExperiment / Seurat object laid out as for [multivi()].
#' @export
get_latent_representation.MULTIVI <- function(model, x = NULL, indices = NULL,
                                               modality = c("joint", "expression",
                                                            "accessibility", "protein"),
                                               give_mean = TRUE, return_dist = FALSE,
                                               batch_size = 128L, device = "auto", ...) {
  .check_multivi(model)
  .no_dots(list(...), "get_latent_representation", "MULTIVI")
  .modality_latent(model, "MULTIVI", x, indices, modality,
                   c(.multivi_modalities, "protein"), give_mean,
                   return_dist, batch_size, device, rs_multivi_latent,
                   check_modality = function(m) .require_modality(model, m, "modality", m))
}

#' @rdname get_normalized_expression
#' @return MULTIVI: a cells x genes matrix of \eqn{\rho} (`library_size = 1`, scvi-tools'
#'   `px_scale`) decoded from the posterior mean of the joint latent, for every cell,
#'   including cells without RNA (imputed expression).
#' @export
get_normalized_expression.MULTIVI <- function(model, x = NULL, indices = NULL,
                                              transform_batch = NULL, gene_list = NULL,
                                              library_size = 1, n_samples = 1L,
                                              batch_size = 128L, device = "auto", file = NULL,
                                              overwrite = FALSE, ...) {
  .check_multivi(model)
  .no_dots(list(...), "get_normalized_expression", "MULTIVI")
  .require_modality(model, "expression", "get_normalized_expression()", NULL)
  .normalized_expression(model, x, library_size, n_samples, transform_batch, gene_list,
                         indices, batch_size, device, file = file, overwrite = overwrite)
}

#' Normalized accessibility from a MULTIVI model
#'
#' The decoder's probability that each region is accessible in each cell, decoded from the
#' joint latent space, for every cell including those measured without ATAC (imputed
#' accessibility), as scvi-tools' `get_normalized_accessibility()`. By default it is the
#' cell- and region-independent probability; `normalize_cells` multiplies by each cell's
#' accessibility factor (its sequencing depth), `normalize_regions` by the learned region
#' factors. `get_accessibility_estimates()` is the former name (same arguments).
#'
#' @param model a `MULTIVI` model.
#' @param x new data instead of the model's own (see [get_latent_representation()]).
#' @param indices cells to use (1-based positions, cell names or a logical vector); `NULL` =
#'   all.
#' @param transform_batch `NULL` (each cell's own batch) or one batch category: decode every
#'   cell as if it came from that batch.
#' @param region_list `NULL` (all regions) or names of the model's regions to return (in the
#'   model's order).
#' @param threshold `NULL`, or a probability in \[0, 1\]: values below it are set to 0 and a
#'   sparse `dgCMatrix` is returned.
#' @param normalize_cells multiply by each cell's accessibility factor.
#' @param normalize_regions multiply by the region factors.
#' @param use_z_mean decode the posterior mean of the latent (`TRUE`) or one sample.
#' @param batch_size cells per minibatch.
#' @param device `"auto"`, `"cpu"` or `"cuda"`.
#' @param ... unused.
#' @return A cells x regions matrix (a `dgCMatrix` with `threshold`).
#' @export
#' @examples
#' d <- rscvi_example_multiome()
#' model <- train(multivi(d$rna, d$atac, cells = d$cells), max_epochs = 3, seed = 0)
#' p <- get_normalized_accessibility(model, indices = 1:10)
#' dim(p)
#' sparse <- get_normalized_accessibility(model, indices = 1:10, threshold = 0.1)
#' class(sparse)
get_normalized_accessibility <- function(model, ...) {
  UseMethod("get_normalized_accessibility")
}

#' @rdname get_normalized_accessibility
#' @export
get_normalized_accessibility.MULTIVI <- function(model, x = NULL, indices = NULL,
                                                 transform_batch = NULL, region_list = NULL,
                                                 threshold = NULL, normalize_cells = FALSE,
                                                 normalize_regions = FALSE, use_z_mean = TRUE,
                                                 batch_size = 128L, device = "auto", ...) {
  .check_multivi(model)
  .no_dots(list(...), "get_normalized_accessibility")
  .require_modality(model, "accessibility", "get_normalized_accessibility()", NULL)
  normalize_cells <- .check_scalar_bool(normalize_cells, "normalize_cells")
  normalize_regions <- .check_scalar_bool(normalize_regions, "normalize_regions")
  use_z_mean <- .check_scalar_bool(use_z_mean, "use_z_mean")
  threshold <- .check_scalar_num(threshold, "threshold", min = 0, max = 1, null_ok = TRUE)
  if (normalize_regions && !isTRUE(model$config$region_factors)) {
    .stop(paste0("`normalize_regions` = TRUE needs region factors; the model was built with ",
                 "region_factors = FALSE"))
  }
  batch_size <- .check_batch_size(batch_size)
  device <- .check_device(device)
  tb <- -1L
  if (!is.null(transform_batch)) {
    if (length(transform_batch) != 1L) {
      .stop("`transform_batch` must be NULL or one batch category, got %s",
            .describe(transform_batch))
    }
    tb <- .transform_batch_codes(transform_batch, model$registry$batch_categories)
  }
  regions <- model$region_names
  region_idx <- .feature_positions(region_list, regions, "region_list", "region")
  q <- .multivi_query_data(model, x)
  cells <- .query_cells(q, indices)
  out <- .rs(rs_multivi_normalized_accessibility(model$model, q$data, cells$idx, tb,
                                                 region_idx, use_z_mean, normalize_cells,
                                                 normalize_regions, batch_size, device))
  dimnames(out) <- list(cells$names,
                        if (is.null(region_idx)) regions else regions[region_idx + 1L])
  if (!is.null(threshold)) {
    out[out < threshold] <- 0
    out <- Matrix::drop0(methods::as(methods::as(out, "CsparseMatrix"), "generalMatrix"))
  }
  out
}

#' @rdname get_normalized_accessibility
#' @export
get_accessibility_estimates <- function(model, ...) get_normalized_accessibility(model, ...)

#' Protein foreground probability from a MULTIVI model
#'
#' For a `MULTIVI` model with proteins: the probability that each protein's count in each
#' cell comes from the foreground (specific binding) rather than the background component of
#' the protein decoder, \eqn{1 - \sigma(\pi)}, decoded from the joint latent space (so also
#' for cells measured without proteins), as scvi-tools'
#' `MULTIVI.get_protein_foreground_probability()`.
#'
#' @param model a `MULTIVI` model with proteins.
#' @param x,indices,batch_size,device as for [get_normalized_accessibility()].
#' @param transform_batch `NULL` (each cell's own batch) or batch categories: decode every
#'   cell as if from each of them and average the probabilities.
#' @param protein_list `NULL` (all proteins) or names of the model's proteins to return (in
#'   the model's order).
#' @param use_z_mean decode the posterior mean of the latent (`TRUE`) or one sample.
#' @param ... unused.
#' @return A cells x proteins matrix of probabilities.
#' @export
#' @examples
#' d <- rscvi_example_multiome()
#' # Stand-in ADT counts (the package ships no CITE-seq data): a background for every
#' # antibody, and a foreground in the cell type each one marks.
#' set.seed(1)
#' marked <- c(ADT_L23 = "L2/3", ADT_L6 = "L6", ADT_Oligo = "Oligo")
#' adt <- t(sapply(marked, function(type) {
#'   stats::rpois(ncol(d$rna), 5 + 60 * (d$cells$cell_type == type))
#' }))
#' colnames(adt) <- colnames(d$rna)
#' model <- multivi(d$rna, d$atac, protein = adt, cells = d$cells)
#' model <- train(model, max_epochs = 3, seed = 0)
#' fg <- get_protein_foreground_probability(model, indices = 1:10)
#' dim(fg)
get_protein_foreground_probability <- function(model, ...) {
  UseMethod("get_protein_foreground_probability")
}

#' @rdname get_protein_foreground_probability
#' @export
get_protein_foreground_probability.MULTIVI <- function(model, x = NULL, indices = NULL,
                                                       transform_batch = NULL,
                                                       protein_list = NULL, use_z_mean = TRUE,
                                                       batch_size = 128L, device = "auto",
                                                       ...) {
  .check_multivi(model)
  .no_dots(list(...), "get_protein_foreground_probability")
  .require_modality(model, "protein", "get_protein_foreground_probability()", NULL)
  use_z_mean <- .check_scalar_bool(use_z_mean, "use_z_mean")
  batch_size <- .check_batch_size(batch_size)
  device <- .check_device(device)
  tb <- if (is.null(transform_batch)) -1L else
    .transform_batch_codes(transform_batch, model$registry$batch_categories)
  proteins <- model$protein_names
  protein_idx <- .feature_positions(protein_list, proteins, "protein_list", "protein")
  q <- .multivi_query_data(model, x)
  cells <- .query_cells(q, indices)
  out <- .rs(rs_multivi_protein_foreground_probability(model$model, q$data, cells$idx,
                                                       as.integer(tb), protein_idx,
                                                       use_z_mean, batch_size, device))
  dimnames(out) <- list(cells$names,
                        if (is.null(protein_idx)) proteins else proteins[protein_idx + 1L])
  out
}

#' Library size factors and region factors of a MULTIVI model
#'
#' `get_library_size_factors()`: each cell's encoded library sizes, as scvi-tools returns
#' them: the expression library on the log scale, and the accessibility factor (in (0, 1)).
#' `get_region_factors()`: the learned per-region accessibility factors (sigmoid scale).
#'
#' @param model a `MULTIVI` or `SPLICEVI` model.
#' @param x,indices,batch_size,device as for [get_normalized_accessibility()].
#' @param ... unused.
#' @return `get_library_size_factors()`: a list with named vectors `expression` (log scale)
#'   and `accessibility`. `get_region_factors()`: a vector named by region.
#' @export
#' @examples
#' d <- rscvi_example_multiome()
#' model <- train(multivi(d$rna, d$atac, cells = d$cells), max_epochs = 3, seed = 0)
#' str(get_library_size_factors(model, indices = 1:5))
#' summary(get_region_factors(model))
get_library_size_factors <- function(model, ...) UseMethod("get_library_size_factors")

#' @rdname get_library_size_factors
#' @export
get_library_size_factors.MULTIVI <- function(model, x = NULL, indices = NULL,
                                             batch_size = 128L, device = "auto", ...) {
  .check_multivi(model)
  .no_dots(list(...), "get_library_size_factors")
  batch_size <- .check_batch_size(batch_size)
  device <- .check_device(device)
  q <- .multivi_query_data(model, x)
  cells <- .query_cells(q, indices)
  res <- .rs(rs_multivi_library_size_factors(model$model, q$data, cells$idx, batch_size,
                                             device))
  list(expression = stats::setNames(res$expression, cells$names),
       accessibility = stats::setNames(res$accessibility, cells$names))
}

#' @rdname get_library_size_factors
#' @export
get_region_factors <- function(model, ...) UseMethod("get_region_factors")

#' @rdname get_library_size_factors
#' @export
get_region_factors.MULTIVI <- function(model, ...) {
  .no_dots(list(...), "get_region_factors", "MULTIVI")
  .check_multivi(model)
  .require_modality(model, "accessibility", "get_region_factors()", NULL)
  if (!isTRUE(model$config$region_factors)) {
    .stop("`model` has no region factors: it was built with region_factors = FALSE")
  }
  stats::setNames(.rs(rs_multivi_region_factors(model$model)), model$region_names)
}

#' @rdname get_elbo
#' @export
get_elbo.MULTIVI <- function(model, x = NULL, indices = NULL, batch_size = 128L,
                             device = "auto", return_mean = TRUE, ...) {
  .elbo_query(model, "elbo", x, indices, batch_size, device, return_mean, list(...))
}

#' @rdname get_elbo
#' @export
get_reconstruction_error.MULTIVI <- function(model, x = NULL, indices = NULL,
                                             batch_size = 128L, device = "auto",
                                             return_mean = TRUE, by_modality = FALSE, ...) {
  .elbo_query(model, "reconstruction", x, indices, batch_size, device, return_mean,
              list(...), by_modality)
}

#' @rdname differential_expression
#' @section MULTIVI: differential expression of the genes (rows) between groups of cells of
#'   a `MULTIVI` model, from the expression decoded at each sampled cell's posterior mean
#'   (scvi-tools' MULTIVI: every draw is a resampled cell); cells without RNA take part with
#'   their imputed expression. `pseudocounts` defaults to 1e-6; importance weights are not
#'   available. For the regions see [differential_accessibility()].
#' @export
differential_expression.MULTIVI <- .joint_differential_expression("MULTIVI", function(object) {
  .check_multivi(object, "object")
  .require_modality(object, "expression", "differential_expression()", NULL)
})

#' Differential accessibility
#'
#' Bayesian differential accessibility of the regions between groups of cells of a
#' `MULTIVI` model, as scvi-tools' `MULTIVI.differential_accessibility()`: accessibility
#' probabilities of each group are drawn from the joint posterior (without cell or region
#' factors) and compared with the machinery of [differential_expression()]. In `"change"`
#' mode `prob_da` is the posterior probability that the log2 fold change of a region's
#' accessibility is at least `delta` in its more likely direction (scvi-tools' default
#' three-state test: the larger of P(LFC >= delta) and P(LFC < -delta); `test_mode = "two"`
#' gives their sum, P(|LFC| >= delta)); `"vanilla"` gives the probability that accessibility
#' is higher in group 1. Cells without ATAC take part with their imputed accessibility.
#'
#' @inheritParams differential_expression
#' @param object a `MULTIVI` model with regions.
#' @param delta threshold on the log2 fold change of the accessibility probability.
#' @param all_stats add the empirical columns (`emp_effect`, `emp_prob1`, `emp_prob2`: the
#'   fraction of cells of each group with ATAC counts in the region).
#' @param ... `n_samples_overall` (default 5000), `test_mode` (`"three"`/`"two"`),
#'   `pseudocounts` (default 1e-6).
#' @return A data.frame with one row per region, in the model's region order (row names =
#'   regions), and columns `prob_da`, `is_da_fdr` (change mode: within the posterior expected
#'   FDR `fdr_target`), `bayes_factor`, `effect_size` (`est_prob2 - est_prob1`), `emp_effect`,
#'   `est_prob1`, `est_prob2`, `emp_prob1`, `emp_prob2`; with `groupby`, also `comparison`,
#'   `group1`, `group2` (comparisons stacked, row names made unique).
#' @export
#' @examples
#' d <- rscvi_example_multiome()
#' model <- train(multivi(d$rna, d$atac, cells = d$cells), max_epochs = 3, seed = 0)
#' da <- differential_accessibility(model, groupby = "cell_type", group1 = "L2/3",
#'                                  group2 = "L6", n_samples_overall = 500)
#' head(da[order(-da$prob_da), ])
differential_accessibility <- function(object, ...) UseMethod("differential_accessibility")

#' @rdname differential_accessibility
#' @export
differential_accessibility.MULTIVI <- function(object, x = NULL, groupby = NULL,
                                               group1 = NULL, group2 = NULL, idx1 = NULL,
                                               idx2 = NULL, mode = c("change", "vanilla"),
                                               delta = 0.05, batch_size = NULL,
                                               all_stats = TRUE, batch_correction = FALSE,
                                               batchid1 = NULL, batchid2 = NULL,
                                               fdr_target = 0.05, silent = FALSE,
                                               device = "auto", ...) {
  model <- object
  .check_multivi(model, "object")
  .require_modality(model, "accessibility", "differential_accessibility()", NULL)
  mode <- .match_choice(mode, c("change", "vanilla"), "mode")
  delta <- .check_scalar_num(delta, "delta", min = 0)
  fdr_target <- .check_scalar_num(fdr_target, "fdr_target", min = 0, max = 1)
  batch_size <- .check_batch_size(batch_size %||% 128L)
  all_stats <- .check_scalar_bool(all_stats, "all_stats")
  silent <- .check_scalar_bool(silent, "silent")
  batch_correction <- .check_scalar_bool(batch_correction, "batch_correction")
  device <- .check_device(device)
  extra <- list(...)
  unknown <- setdiff(names(extra) %||% rep("", length(extra)),
                     c("n_samples_overall", "test_mode", "pseudocounts"))
  if (length(unknown)) {
    .stop(paste0("differential_accessibility() got unknown arguments: %s; `...` takes ",
                 "`n_samples_overall`, `test_mode` and `pseudocounts`"), .enum(unknown))
  }
  test_mode <- .match_choice(extra$test_mode %||% "three", c("three", "two"), "test_mode")
  n_samples <- .check_scalar_int(extra$n_samples_overall %||% 5000L, "n_samples_overall",
                                 min = 1)
  pseudocount <- .check_scalar_num(extra$pseudocounts %||% 1e-6, "pseudocounts", min = 0)
  q <- .multivi_query_data(model, x)
  cats <- model$registry$batch_categories
  b1 <- .de_batch_codes(batchid1, "batchid1", batch_correction, cats)
  b2 <- .de_batch_codes(batchid2, "batchid2", batch_correction, cats)
  comparisons <- .query_comparisons(model, q, groupby, group1, group2, idx1, idx2)
  .compare_groups(comparisons, "DA", silent, function(cmp) {
    res <- .rs(rs_model_de(model$model, "accessibility", q$data, cmp$cells1 - 1L,
                           cmp$cells2 - 1L, mode == "change", delta, test_mode == "three",
                           pseudocount, b1, b2, n_samples, batch_size, fdr_target, NULL,
                           floor(stats::runif(1, 0, 2^31)), FALSE, "", device))
    col <- res$columns
    df <- data.frame(prob_da = if (mode == "change") col$proba_de else col$proba_m1,
                     row.names = model$region_names)
    if (mode == "change") df$is_da_fdr <- res$is_de
    df$bayes_factor <- col$bayes_factor
    df$effect_size <- col$scale2 - col$scale1
    if (all_stats) df$emp_effect <- col$non_zeros_proportion2 - col$non_zeros_proportion1
    df$est_prob1 <- col$scale1
    df$est_prob2 <- col$scale2
    if (all_stats) {
      df$emp_prob1 <- col$non_zeros_proportion1
      df$emp_prob2 <- col$non_zeros_proportion2
    }
    df
  })
}

# ---------------------------------------------------------------------------------------------
# print / summary / plot.

.multivi_data_text <- function(model) {
  inp <- model$input
  n_proteins <- inp$n_proteins %||% 0L
  .modality_data_text(model, c(expression = "RNA", accessibility = "ATAC"),
                      sprintf("%s genes + %s regions%s", .fmt_int(inp$n_genes),
                              .fmt_int(inp$n_regions),
                              if (n_proteins > 0L) {
                                sprintf(" + %s proteins", .fmt_int(n_proteins))
                              } else ""))
}

#' @rdname summary.SCVI
#' @method print MULTIVI
#' @export
print.MULTIVI <- function(x, ...) {
  cfg <- x$config
  .print_model(x, "MULTIVI", .multivi_data_text(x), sprintf(paste0(
    "n_latent = %d, n_hidden = %d, layers %d / %d (encoder / decoder), gene_likelihood = ",
    "\"%s\",\n            modality_weights = \"%s\", modality_penalty = \"%s\", ",
    "region_factors = %s%s"), cfg$n_latent, cfg$n_hidden, cfg$n_layers_encoder,
    cfg$n_layers_decoder, cfg$gene_likelihood, cfg$modality_weights, cfg$modality_penalty,
    cfg$region_factors, if (isTRUE(cfg$fully_paired)) ", fully_paired" else ""))
}

#' @rdname summary.SCVI
#' @method summary MULTIVI
#' @export
summary.MULTIVI <- function(object, ...) {
  .check_multivi(object, "object")
  .summary_of(object, "MULTIVI", .multivi_data_text(object))
}

#' @rdname plot.SCVI
#' @export
plot.MULTIVI <- function(x, which = c("elbo", "reconstruction", "kl"), ...) {
  .check_multivi(x, "x")
  .plot_history(history(x), which, ...)
  invisible(x)
}

# ---------------------------------------------------------------------------------------------
# Save / load.

.load_multivi <- function(dir, x, ...) {
  saved <- .load_modality_model(dir, list(...), "MULTIVI",
                                "list(rna = , atac = , protein = , cells = )",
                                .multivi_registry_from_json)
  registry <- saved$registry
  config <- saved$config
  n_proteins <- config$n_proteins %||% 0L
  if (length(registry$gene_names) != config$n_genes ||
      length(registry$region_names) != config$n_regions ||
      length(registry$protein_names) != n_proteins) {
    .stop(paste0("`dir` '%s': the saved registry lists %d genes, %d regions and %d proteins ",
                 "but the model has %d, %d and %d"), dir, length(registry$gene_names),
          length(registry$region_names), length(registry$protein_names), config$n_genes,
          config$n_regions, n_proteins)
  }
  input <- list(class = NA_character_, n_cells = registry$n_cells,
                n_genes = config$n_genes, n_regions = config$n_regions,
                n_proteins = n_proteins, modality_cells = registry$modality_cells)
  model <- .new_multivi(saved$ptr, NULL, registry, config, NULL, NULL, NULL, input,
                        dir = normalizePath(dir))
  .attach_modality_data(model, x, .multivi_register_query, .multivi_model_modalities(model))
}

# ---------------------------------------------------------------------------------------------
# Conveniences: SingleCellExperiment and Seurat.

#' MULTIVI embedding for SingleCellExperiment and Seurat objects
#'
#' Builds a MULTIVI model ([multivi()]) on a multiome object, trains it ([train()]) and
#' stores the joint latent representation: `runMULTIVI()` as `reducedDim(x, name)` of a
#' `SingleCellExperiment` whose ATAC counts are in an altExp (`altexp`, found automatically
#' when named `"ATAC"`, `"Peaks"` or `"peaks"`); `RunMULTIVI()` as a dimensional reduction of
#' a `Seurat` object with an RNA and an ATAC assay (`assay`, `atac_assay`), the model in its
#' `misc` slot. Cells of the object without counts in one modality are unpaired there.
#'
#' @param x a `SingleCellExperiment`.
#' @param object a `Seurat` object.
#' @param ... arguments of [multivi()] (e.g. `batch_key`, `altexp`, `atac_assay`,
#'   `n_latent`) and of [train()] (e.g. `max_epochs`, `seed`, `device`), by name.
#' @param subset_row,features the genes to fit the model on (names, a logical per gene, or
#'   positions; Bioconductor's `subset_row`, Seurat's `features`, e.g. highly variable
#'   genes); `NULL` for all. The other modalities keep all their features.
#' @param name name of the reduced dimension.
#' @param reduction.name,reduction.key name and key (column prefix, ending in `"_"`) of the
#'   Seurat reduction.
#' @return `x` / `object` with the embedding added.
#' @export
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' d <- rscvi_example_multiome()
#' sce <- SingleCellExperiment::SingleCellExperiment(
#'   assays = list(counts = d$rna), colData = S4Vectors::DataFrame(d$cells))
#' SingleCellExperiment::altExp(sce, "ATAC") <-
#'   SummarizedExperiment::SummarizedExperiment(assays = list(counts = d$atac))
#' sce <- runMULTIVI(sce, batch_key = "library", max_epochs = 3, seed = 0)
#' dim(SingleCellExperiment::reducedDim(sce, "MULTIVI"))
runMULTIVI <- function(x, ..., subset_row = NULL, name = "MULTIVI") {
  .run_embedding(x, list(...), "MULTIVI", multivi, train.MULTIVI, name, subset_row)
}

#' @rdname runMULTIVI
#' @export
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' d <- rscvi_example_multiome()
#' so <- SeuratObject::CreateSeuratObject(d$rna, meta.data = d$cells)
#' so[["ATAC"]] <- SeuratObject::CreateAssayObject(counts = d$atac)
#' so <- RunMULTIVI(so, batch_key = "library", max_epochs = 3, seed = 0)
#' dim(SeuratObject::Embeddings(so, "multivi"))
RunMULTIVI <- function(object, ..., features = NULL, reduction.name = "multivi",
                       reduction.key = "MULTIVI_") {
  .Run_embedding(object, list(...), "MULTIVI", multivi, train.MULTIVI, reduction.name,
                 reduction.key, features)
}

# ---------------------------------------------------------------------------------------------
# Example data.

#' Example data: paired RNA + ATAC (SNARE-seq2) of the mouse primary motor cortex
#'
#' A small real multiome dataset shipped with the package for the MULTIVI examples and
#' tests: 600 nuclei (200 from each of three SNARE-seq2 libraries) of adult mouse primary
#' motor cortex with gene expression counts of 1,592 genes (those of the source's 1,677 genes
#' with counts in these nuclei) and accessibility counts of the 2,000 regions open in the
#' most of these nuclei, and the authors' cell types (BICCN,
#' Nature 598, 86-102 (2021), \doi{10.1038/s41586-021-03950-0}, as redistributed by the
#' scMoMaT authors, Nat Commun 14, 384 (2023), \doi{10.1038/s41467-023-36066-2}). Every
#' nucleus is paired; drop columns of `rna` or `atac` to make RNA-only / ATAC-only cells. See
#' `system.file("extdata", "README.md", package = "rscvi")` for provenance.
#'
#' @return A list with `rna` (`dgCMatrix`, genes x cells), `atac` (`dgCMatrix`, regions
#'   `chrN:start-end` x cells, counts 1-4) and `cells` (data.frame, row names = cell names;
#'   `library` (batch), `cell_type` (14 of scMoMaT's 15 cell types; `Mis` = unassigned),
#'   `cluster`).
#' @export
#' @examples
#' d <- rscvi_example_multiome()
#' sapply(d[c("rna", "atac")], dim)
#' table(d$cells$cell_type)
rscvi_example_multiome <- function() {
  readRDS(system.file("extdata", "mop_snareseq2_small.rds", package = "rscvi",
                      mustWork = TRUE))
}
