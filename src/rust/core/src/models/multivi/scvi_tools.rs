//! MULTIVI models saved by scvi-tools (RNA + ATAC, and proteins): the hyperparameters
//! from `init_params_` (the sizes scvi-tools derived when `n_hidden` / `n_latent` were None
//! follow the same rule here), the registry in the front end's form, the weights by their
//! state-dict names (multivi.md §3.2).

use std::path::Path;

use serde_json::json;

use super::model::{MultiviExtra, MultiviKind};
use super::{ModalityWeights, MultiviConfig, ProteinDispersion};
use crate::error::Result;
use crate::family::{Model, ModelKind};
use crate::io::pickle::Value;
use crate::io::scvi_tools::{
    attr_dict, checkpoint_path, from_json, registry_for_scvi_tools, with_batch_counters,
    SavedByScviTools,
};
use crate::io::torch::{
    load_state_dict, nn_torch_name, state_dict_of, state_dict_value, write_checkpoint, TorchName,
    TorchTensor,
};

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
        "mod_weights" if config.modality_weights == ModalityWeights::Universal => {
            Some(vector(2 + usize::from(config.n_proteins > 0)))
        }
        // scvi-tools: a vector per protein, rscvi a column
        "py_r" if config.protein_dispersion == ProteinDispersion::Protein => {
            Some(vector(config.n_proteins))
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

/// A tensor of zeros of `shape`.
fn zeros(shape: &[usize]) -> TorchTensor {
    TorchTensor {
        shape: shape.to_vec(),
        values: vec![0.0; shape.iter().product()],
    }
}

/// The tensors scvi-tools' MULTIVAE holds that rscvi's module does not (scvi-tools builds
/// them whatever the data, and its `load_state_dict` wants every one): the protein networks
/// of a model without proteins (no protein ever reaches them), the protein background prior
/// (never used) and the unused expression dispersion head. Zeros, in scvi-tools' shapes.
fn unused_tensors(c: &MultiviConfig) -> Vec<(String, TorchTensor)> {
    let mut out = Vec::new();
    let (h, d, k, p) = (c.n_hidden, c.n_latent, c.n_batch, c.n_proteins);
    // FCLayers count a covariate's one-hot only when it has more than one category
    let cat_dim: usize = std::iter::once(k)
        .chain(c.n_cats_per_cov.iter().copied())
        .filter(|&n| n > 1)
        .sum();
    let mut stack = |prefix: &str, n_in: usize, n_layers: usize, cats: usize, norm: bool| {
        for i in 0..n_layers {
            let base = format!("{prefix}.fc_layers.Layer {i}");
            let fan_in = if i == 0 { n_in } else { h } + cats;
            out.push((format!("{base}.0.weight"), zeros(&[h, fan_in])));
            out.push((format!("{base}.0.bias"), zeros(&[h])));
            if norm {
                for t in ["weight", "bias", "running_mean"] {
                    out.push((format!("{base}.1.{t}"), zeros(&[h])));
                }
                let ones = TorchTensor {
                    shape: vec![h],
                    values: vec![1.0; h],
                };
                out.push((format!("{base}.1.running_var"), ones));
            }
        }
    };
    if p == 0 {
        let enc_cats = if c.encode_covariates { cat_dim } else { 0 };
        let n_in = 1 + if c.encode_covariates {
            c.n_continuous_cov
        } else {
            0
        };
        let bn_enc = c.use_batch_norm.encoder();
        stack(
            "z_encoder_protein.encoder",
            n_in,
            c.n_layers_encoder,
            enc_cats,
            bn_enc,
        );
        let n_in = d + c.n_continuous_cov;
        let bn_dec = c.use_batch_norm.decoder();
        for s in ["py_fore_decoder", "sigmoid_decoder", "py_back_decoder"] {
            let prefix = format!("z_decoder_pro.{s}");
            stack(&prefix, n_in, c.n_layers_decoder, cat_dim, bn_dec);
        }
        for head in ["mean_encoder", "var_encoder"] {
            out.push((format!("z_encoder_protein.{head}.weight"), zeros(&[d, h])));
            out.push((format!("z_encoder_protein.{head}.bias"), zeros(&[d])));
        }
        for head in PROTEIN_HEADS {
            let base = format!("z_decoder_pro.{head}.fc_layers.Layer 0.0");
            out.push((format!("{base}.weight"), zeros(&[0, h + n_in + cat_dim])));
            out.push((format!("{base}.bias"), zeros(&[0])));
        }
        let py_r = match c.protein_dispersion {
            ProteinDispersion::Protein => zeros(&[0]),
            ProteinDispersion::ProteinBatch => zeros(&[0, k]),
        };
        out.push(("py_r".into(), py_r));
    }
    for name in ["background_pro_alpha", "background_pro_log_beta"] {
        out.push((name.into(), zeros(&[p, k])));
    }
    if c.n_genes > 0 {
        let g = c.n_genes;
        out.push((
            "z_decoder_expression.px_r_decoder.weight".into(),
            zeros(&[g, h]),
        ));
        out.push(("z_decoder_expression.px_r_decoder.bias".into(), zeros(&[g])));
    }
    out
}

impl Model<MultiviKind> {
    /// Writes the model as scvi-tools' `model.save()` does (`dir/model.pt`), so that
    /// `scvi.model.MULTIVI.load(dir, mdata)` reads it with a MuData whose modalities are named
    /// `rna`, `atac` (the altExp of the setup, if named) and `protein`.
    pub fn save_scvi_tools(&self, dir: &Path, overwrite: bool) -> Result<()> {
        let c = self.config();
        let path = checkpoint_path(dir, overwrite)?;
        // scvi-tools keeps three mixing logits whatever the data (equal weights: a buffer)
        let n_mod = 2 + usize::from(c.n_proteins > 0);
        let mut tensors = Vec::new();
        for (name, t) in state_dict_of(&self.module, |p, lw| torch_name(c, p, lw)) {
            if name != "mod_weights" {
                tensors.push((name, t));
                continue;
            }
            let rows = t.values.len() / n_mod;
            let mut values = Vec::with_capacity(rows * 3);
            for row in t.values.chunks(n_mod) {
                values.extend_from_slice(row);
                values.extend(std::iter::repeat_n(0.0, 3 - n_mod));
            }
            let shape = match c.modality_weights {
                ModalityWeights::Cell => vec![rows, 3],
                _ => vec![3],
            };
            tensors.push((name, TorchTensor { shape, values }));
        }
        if c.modality_weights == ModalityWeights::Equal {
            let ones = TorchTensor {
                shape: vec![3],
                values: vec![1.0; 3],
            };
            tensors.push(("mod_weights".into(), ones));
        }
        tensors.extend(unused_tensors(c));
        let (state_dict, storages) = state_dict_value(&with_batch_counters(tensors), |n| {
            n.ends_with("num_batches_tracked")
        });
        let reg = &self.registry;
        let setup = &reg["setup_args"];
        let atac = setup["altexp"].as_str().unwrap_or("atac").to_string();
        let protein = setup["protein"].as_str().unwrap_or("protein").to_string();
        // read_h5mu() names each AnnData's X "X"; scvi-tools calls it no layer
        let layer = |key: &str| match setup[key].as_str() {
            Some("X") | None => serde_json::Value::Null,
            Some(l) => json!(l),
        };
        let mut registry = registry_for_scvi_tools(reg, MultiviKind::NAME, &c.n_cats_per_cov);
        let n_cells = reg["n_cells"].as_u64().unwrap_or(c.n_cells as u64);
        let mut modalities = serde_json::Map::new();
        modalities.insert("rna_layer".into(), json!("rna"));
        modalities.insert("atac_layer".into(), json!(atac));
        if c.n_proteins > 0 {
            modalities.insert("protein_layer".into(), json!(protein));
        }
        for key in [
            "batch_key",
            "size_factor_key",
            "categorical_covariate_keys",
            "continuous_covariate_keys",
        ] {
            if !setup[key].is_null() {
                modalities.insert(key.into(), json!("rna"));
            }
        }
        registry["setup_method_name"] = json!("setup_mudata");
        registry["setup_args"] = json!({
            "rna_layer": layer("layer"),
            "atac_layer": layer("atac_layer"),
            "protein_layer": if c.n_proteins > 0 { layer("protein_layer") } else { json!(null) },
            "batch_key": setup["batch_key"],
            "size_factor_key": setup["size_factor_key"],
            "categorical_covariate_keys": setup["categorical_covariate_keys"],
            "continuous_covariate_keys": setup["continuous_covariate_keys"],
            "idx_layer": null,
            "modalities": modalities,
        });
        let fields = &mut registry["field_registries"];
        fields["X"]["data_registry"]["mod_key"] = json!("rna");
        fields["atac"] = json!({
            "data_registry": {"attr_name": "X", "attr_key": layer("atac_layer"), "mod_key": atac},
            "state_registry": {"n_obs": n_cells, "n_vars": c.n_regions,
                               "column_names": reg["region_names"]},
            "summary_stats": {"n_atac": c.n_regions},
        });
        if c.n_proteins > 0 {
            fields["proteins"] = json!({
                "data_registry": {"attr_name": "X", "attr_key": layer("protein_layer"),
                                  "mod_key": protein},
                "state_registry": {"n_obs": n_cells, "n_vars": c.n_proteins,
                                   "column_names": reg["protein_names"]},
                "summary_stats": {"n_proteins": c.n_proteins},
            });
        }
        if !setup["batch_key"].is_null() {
            fields["batch"]["data_registry"]["mod_key"] = json!("rna");
        }
        fields["ind_x"] = json!({"data_registry": {"attr_name": "obs", "attr_key": "_indices"},
                                 "state_registry": {}, "summary_stats": {}});
        let init_params = json!({
            "non_kwargs": {
                "n_genes": c.n_genes,
                "n_regions": c.n_regions,
                "modality_weights": c.modality_weights,
                "modality_penalty": c.modality_penalty,
                "n_hidden": c.n_hidden,
                "n_latent": c.n_latent,
                "n_layers_encoder": c.n_layers_encoder,
                "n_layers_decoder": c.n_layers_decoder,
                "dropout_rate": c.dropout_rate,
                "region_factors": c.region_factors,
                "gene_likelihood": c.gene_likelihood,
                "dispersion": "gene",
                "use_batch_norm": c.use_batch_norm,
                "use_layer_norm": c.use_layer_norm,
                "latent_distribution": c.latent_distribution,
                "deeply_inject_covariates": c.deeply_inject_covariates,
                "encode_covariates": c.encode_covariates,
                "fully_paired": c.fully_paired,
                "protein_dispersion": c.protein_dispersion,
            },
            "kwargs": {"model_kwargs": {}},
        });
        let attrs = attr_dict(
            init_params,
            registry,
            &self.state,
            "get_normalized_accessibility",
        );
        let mut var_names = vec![
            ("rna", &reg["gene_names"]),
            (atac.as_str(), &reg["region_names"]),
        ];
        if c.n_proteins > 0 {
            var_names.push((protein.as_str(), &reg["protein_names"]));
        }
        let var_names = Value::Dict(
            var_names
                .into_iter()
                .map(|(m, names)| (Value::Str(m.to_string()), from_json(names)))
                .collect(),
        );
        let root = Value::Dict(vec![
            (Value::Str("model_state_dict".into()), state_dict),
            (Value::Str("var_names".into()), var_names),
            (Value::Str("attr_dict".into()), from_json(&attrs)),
        ]);
        write_checkpoint(&path, &root, &storages)
    }
}
