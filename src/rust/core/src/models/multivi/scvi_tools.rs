//! MULTIVI models saved by scvi-tools (RNA + ATAC, and proteins): the hyperparameters
//! from `init_params_` (the sizes scvi-tools derived when `n_hidden` / `n_latent` were None
//! follow the same rule here), the registry in the front end's form, the weights by their
//! state-dict names (multivi.md §3.2).

use std::path::Path;

use serde_json::json;

use super::model::{MultiviExtra, MultiviKind};
use super::MultiviConfig;
use crate::error::Result;
use crate::family::{Model, ModelKind};
use crate::io::scvi_tools::SavedByScviTools;
use crate::io::torch::{load_state_dict, nn_torch_name, TorchName};

/// Constructor arguments of scvi-tools' MULTIVI that rscvi reproduces.
const KNOWN: &[&str] = &[
    "n_genes",
    "n_regions",
    "modality_weights",
    "modality_penalty",
    "n_hidden",
    "n_latent",
    "n_layers_encoder",
    "n_layers_decoder",
    "dropout_rate",
    "region_factors",
    "gene_likelihood",
    "dispersion",
    "use_batch_norm",
    "use_layer_norm",
    "latent_distribution",
    "deeply_inject_covariates",
    "encode_covariates",
    "fully_paired",
    "protein_dispersion",
];

/// The protein decoder's Linear heads (scvi-tools: FCLayers of one layer).
const PROTEIN_HEADS: [&str; 4] = [
    "py_back_mean_log_alpha",
    "py_back_mean_log_beta",
    "py_fore_scale_decoder",
    "py_background_decoder",
];

/// The scvi-tools name of the MULTIVI parameter at Burn path `path`.
fn torch_name(config: &MultiviConfig, path: &str, linear_weight: bool) -> Option<TorchName> {
    let vector = |n: usize| TorchName {
        name: path.into(),
        transpose: false,
        shape: Some(vec![n]),
    };
    match path {
        "mod_weights" if config.modality_weights == super::ModalityWeights::Universal => {
            Some(vector(2 + usize::from(config.n_proteins > 0)))
        }
        _ => {
            let path = path.replace("px_scale_decoder.", "px_scale_decoder.0.");
            let path = path.replace(".output.", ".output.0.");
            // the protein decoder's heads are one-layer FCLayers in scvi-tools
            let path = PROTEIN_HEADS.iter().fold(path, |p, head| {
                p.replace(&format!(".{head}."), &format!(".{head}.layers.0.linear."))
            });
            Some(nn_torch_name(&path, linear_weight))
        }
    }
}

impl Model<MultiviKind> {
    /// The MULTIVI model scvi-tools saved in `dir`.
    pub fn from_scvi_tools(dir: &Path) -> Result<Self> {
        let mut saved = SavedByScviTools::read_kind(dir, MultiviKind::NAME, KNOWN)?;
        if saved.param_str("dispersion", "gene")? != "gene" {
            return Err(saved.error("only dispersion = \"gene\" MULTIVI models can be read"));
        }
        let names = |saved: &SavedByScviTools, field: &str| {
            saved
                .field_state(field)
                .and_then(|s| s.get("column_names"))
                .and_then(|v| v.items())
                .map(|v| {
                    v.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        let proteins = names(&saved, "proteins");
        let n_genes = saved.param_usize("n_genes", 0)?;
        let n_regions = saved.param_usize("n_regions", 0)?;
        let fields = saved.fields()?;
        let n_hidden = match saved.param_usize("n_hidden", 0)? {
            0 => super::default_n_hidden(n_genes, n_regions),
            n => n,
        };
        let n_latent = match saved.param_usize("n_latent", 0)? {
            0 => super::default_n_latent(n_hidden),
            n => n,
        };
        let config: MultiviConfig = serde_json::from_value(json!({
            "n_genes": n_genes,
            "n_regions": n_regions,
            "n_proteins": proteins.len(),
            "protein_dispersion": saved.param_str("protein_dispersion", "protein")?,
            "n_batch": fields.batches.len(),
            "n_cats_per_cov": fields.n_cats_per_cov(),
            "n_continuous_cov": fields.continuous.len(),
            "n_cells": saved.n_cells(),
            "n_hidden": n_hidden,
            "n_latent": n_latent,
            "n_layers_encoder": saved.param_usize("n_layers_encoder", 2)?,
            "n_layers_decoder": saved.param_usize("n_layers_decoder", 2)?,
            "dropout_rate": saved.param_f64("dropout_rate", 0.1)?,
            "region_factors": saved.param_bool("region_factors", true)?,
            "gene_likelihood": saved.param_str("gene_likelihood", "zinb")?,
            "modality_weights": saved.param_str("modality_weights", "equal")?,
            "modality_penalty": saved.param_str("modality_penalty", "Jeffreys")?,
            "use_batch_norm": saved.param_str("use_batch_norm", "none")?,
            "use_layer_norm": saved.param_str("use_layer_norm", "both")?,
            "latent_distribution": saved.param_str("latent_distribution", "normal")?,
            "deeply_inject_covariates": saved.param_bool("deeply_inject_covariates", false)?,
            "encode_covariates": saved.param_bool("encode_covariates", false)?,
            "fully_paired": saved.param_bool("fully_paired", false)?,
            "use_size_factor": saved.field_state("size_factor").is_some(),
        }))
        .map_err(|e| saved.error(format!("unsupported hyperparameters: {e}")))?;
        let blank = MultiviKind::blank::<crate::backend::Cpu>(&config, &Default::default())?;
        // scvi-tools keeps a mixing logit for proteins whether or not there are any; without
        // proteins it is masked out of the mixing, so rscvi keeps the RNA and ATAC ones
        if let Some(w) = saved.tensors.get_mut("mod_weights") {
            if w.shape.last() == Some(&3) && proteins.is_empty() {
                w.values = w
                    .values
                    .chunks(3)
                    .flat_map(|row| row[..2].to_vec())
                    .collect();
                if let Some(last) = w.shape.last_mut() {
                    *last = 2;
                }
            }
        }
        let module = load_state_dict(
            blank,
            &saved.tensors,
            |p, lw| torch_name(&config, p, lw),
            |name| {
                // scvi-tools allocates these whatever the data: an unused dispersion head,
                // the protein background prior it never uses, empty protein networks when
                // there are no proteins, the equal-weights placeholder
                let no_proteins = proteins.is_empty();
                name.ends_with("num_batches_tracked")
                    || name.starts_with("z_decoder_expression.px_r_decoder.")
                    || name.starts_with("background_pro_")
                    || (no_proteins
                        && (name.starts_with("z_encoder_protein.")
                            || name.starts_with("z_decoder_pro.")
                            || name == "py_r"))
                    || name == "mod_weights"
            },
        )
        .map_err(|e| saved.error(e))?;
        let genes = names(&saved, "X");
        let regions = names(&saved, "atac");
        if genes.len() != n_genes || regions.len() != n_regions {
            return Err(saved.error(format!(
                "the registry names {} genes and {} regions, the model has {n_genes} and {n_regions}",
                genes.len(),
                regions.len()
            )));
        }
        let n_cells = saved.n_cells();
        let mut registry = fields.registry(&saved);
        let own = json!({
            "model": MultiviKind::NAME,
            "gene_names": genes,
            "region_names": regions,
            "protein_names": proteins,
            "n_genes": n_genes,
            "n_regions": n_regions,
            "n_proteins": proteins.len(),
            "modality_cells": {"paired": n_cells, "expression": 0, "accessibility": 0},
        });
        if let serde_json::Value::Object(own) = own {
            registry.extend(own);
        }
        if let Some(serde_json::Value::Object(setup)) = registry.get_mut("setup_args") {
            setup.insert("layer".into(), saved.layer_arg("rna_layer"));
            setup.insert("atac_layer".into(), saved.layer_arg("atac_layer"));
            setup.insert("altexp".into(), saved.modality_arg("atac_layer"));
            for key in ["assay", "atac_assay"] {
                setup.insert(key.into(), serde_json::Value::Null);
            }
            // proteins: read_h5mu() makes the modality an altExp of that name
            let (protein, protein_layer) = if proteins.is_empty() {
                (serde_json::Value::Null, serde_json::Value::Null)
            } else {
                (
                    saved.modality_arg("protein_layer"),
                    saved.layer_arg("protein_layer"),
                )
            };
            setup.insert("protein".into(), protein);
            setup.insert("protein_layer".into(), protein_layer);
            // MULTIVI has no labels field in the front end
            setup.insert("labels_key".into(), serde_json::Value::Null);
        }
        let registry = serde_json::Value::Object(registry);
        let mut model = Model::from_module(module, registry, MultiviExtra::default());
        model.state = saved.state;
        Ok(model)
    }
}
