//! GIMVI models saved by scvi-tools (`scvi.external.GIMVI.save()`): one `model.pt` with the
//! state dict, the genes of each dataset (`seq_var_names`, `spatial_var_names`) and the two
//! registries (`registries_`); the hyperparameters from `init_params_`, the weights by their
//! state-dict names (gimvi.md §3, §8).

use std::path::Path;

use serde_json::json;

use super::model::GimviKind;
use super::{GimviConfig, SEQ, SPATIAL};
use crate::error::Result;
use crate::family::{Model, ModelKind, NoExtra};
use crate::io::pickle::Value;
use crate::io::scvi_tools::{
    checkpoint_path, from_json, registry_for_scvi_tools, with_batch_counters, SavedByScviTools,
};
use crate::io::torch::{
    load_state_dict, nn_torch_name, state_dict_of, state_dict_value, write_checkpoint, TorchName,
    TorchTensor,
};

/// Constructor arguments of scvi-tools' GIMVI (and the JVAE keywords it passes on) that
/// rscvi reproduces.
const KNOWN: &[&str] = &[
    "generative_distributions",
    "model_library_size",
    "n_latent",
    "n_layers_encoder_individual",
    "n_layers_encoder_shared",
    "dim_hidden_encoder",
    "n_layers_decoder_individual",
    "n_layers_decoder_shared",
    "dim_hidden_decoder_individual",
    "dim_hidden_decoder_shared",
    "dropout_rate_encoder",
    "dropout_rate_decoder",
    "dispersion",
    "log_variational",
];

/// rscvi keeps both datasets' library priors in one (2, K) state; scvi-tools has a (1, K)
/// buffer per dataset whose library it models.
const PRIORS: [(&str, f32); 2] = [("library_log_means", 0.0), ("library_log_vars", 1.0)];

/// The scvi-tools name of the GIMVI parameter at Burn path `path`.
fn torch_name(path: &str, linear_weight: bool) -> TorchName {
    match path {
        // scvi-tools: (genes, columns)
        "px_r" => TorchName {
            name: path.into(),
            transpose: true,
            shape: None,
        },
        _ => {
            let path = path.replace("px_scale_decoder.", "px_scale_decoder.0.");
            nn_torch_name(&path, linear_weight)
        }
    }
}

/// A list argument of two strings / booleans, or `default`.
fn pair<T: Copy>(
    saved: &SavedByScviTools,
    key: &str,
    default: [T; 2],
    read: impl Fn(&Value) -> Option<T>,
) -> Result<[T; 2]> {
    let Some(v) = saved.param(key) else {
        return Ok(default);
    };
    match v
        .items()
        .map(|xs| xs.iter().map(&read).collect::<Option<Vec<T>>>())
    {
        Some(Some(xs)) if xs.len() == 2 => Ok([xs[0], xs[1]]),
        _ => Err(saved.error(format!("`{key}` is not a list of two values"))),
    }
}

impl Model<GimviKind> {
    /// The GIMVI model scvi-tools saved in `dir`.
    pub fn from_scvi_tools(dir: &Path) -> Result<Self> {
        let mut saved = SavedByScviTools::read_kind(dir, GimviKind::NAME, KNOWN)?;
        let data = [saved.dataset(SEQ)?, saved.dataset(SPATIAL)?];
        let [seq_genes, spatial_genes] = [&data[SEQ].var_names, &data[SPATIAL].var_names];
        let spatial_gene_index = spatial_genes
            .iter()
            .map(|g| {
                seq_genes.iter().position(|s| s == g).ok_or_else(|| {
                    saved.error(format!("spatial gene `{g}` is not a sequencing gene"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let fields = [data[SEQ].fields()?, data[SPATIAL].fields()?];
        let likelihoods = pair(&saved, "generative_distributions", ["zinb", "nb"], |v| {
            v.as_str()
                .and_then(|s| ["zinb", "nb", "poisson"].into_iter().find(|k| *k == s))
        })?;
        let library = pair(&saved, "model_library_size", [true, false], Value::as_bool)?;
        let defaults = GimviConfig::new(0, Vec::new(), [1, 1]);
        let config: GimviConfig = serde_json::from_value(json!({
            "n_genes": seq_genes.len(),
            "spatial_gene_index": spatial_gene_index,
            "n_batch": [fields[SEQ].batches.len(), fields[SPATIAL].batches.len()],
            "generative_distributions": likelihoods,
            "model_library_size": library,
            "n_latent": saved.param_usize("n_latent", defaults.n_latent)?,
            "n_layers_encoder_individual": saved
                .param_usize("n_layers_encoder_individual", defaults.n_layers_encoder_individual)?,
            "n_layers_encoder_shared": saved
                .param_usize("n_layers_encoder_shared", defaults.n_layers_encoder_shared)?,
            "dim_hidden_encoder": saved
                .param_usize("dim_hidden_encoder", defaults.dim_hidden_encoder)?,
            "n_layers_decoder_individual": saved
                .param_usize("n_layers_decoder_individual", defaults.n_layers_decoder_individual)?,
            "n_layers_decoder_shared": saved
                .param_usize("n_layers_decoder_shared", defaults.n_layers_decoder_shared)?,
            "dim_hidden_decoder_individual": saved.param_usize(
                "dim_hidden_decoder_individual",
                defaults.dim_hidden_decoder_individual
            )?,
            "dim_hidden_decoder_shared": saved
                .param_usize("dim_hidden_decoder_shared", defaults.dim_hidden_decoder_shared)?,
            "dropout_rate_encoder": saved
                .param_f64("dropout_rate_encoder", defaults.dropout_rate_encoder)?,
            "dropout_rate_decoder": saved
                .param_f64("dropout_rate_decoder", defaults.dropout_rate_decoder)?,
            "dispersion": saved.param_str("dispersion", "gene-batch")?,
            "log_variational": saved.param_bool("log_variational", defaults.log_variational)?,
        }))
        .map_err(|e| saved.error(format!("unsupported hyperparameters: {e}")))?;
        if !matches!(
            config.dispersion,
            crate::models::options::Dispersion::Gene
                | crate::models::options::Dispersion::GeneBatch
        ) {
            return Err(saved.error("only dispersion \"gene\" or \"gene-batch\" can be read"));
        }
        // the per-dataset library priors as rscvi's one (2, K) state
        let k = config.n_batch_total();
        for (name, fill) in PRIORS {
            let mut values = vec![fill; 2 * k];
            for dataset in [SEQ, SPATIAL] {
                if let Some(t) = saved.tensors.get(&format!("{name}_{dataset}")) {
                    if t.values.len() != k {
                        return Err(saved.error(format!(
                            "`{name}_{dataset}` holds {} values for {k} batches",
                            t.values.len()
                        )));
                    }
                    values[dataset * k..(dataset + 1) * k].copy_from_slice(&t.values);
                }
            }
            let stacked = TorchTensor {
                shape: vec![2, k],
                values,
            };
            saved.tensors.insert(name.to_string(), stacked);
        }
        let blank = GimviKind::blank::<crate::backend::Cpu>(&config, &Default::default())?;
        let module = load_state_dict(
            blank,
            &saved.tensors,
            |p, lw| Some(torch_name(p, lw)),
            |name| {
                name.ends_with("num_batches_tracked")
                    || PRIORS
                        .iter()
                        .any(|(p, _)| name.starts_with(&format!("{p}_")))
            },
        )
        .map_err(|e| saved.error(e))?;
        let part = |d: &SavedByScviTools, fields: &crate::io::scvi_tools::Fields| {
            let mut registry = fields.registry(d);
            registry.insert("model".into(), json!(GimviKind::NAME));
            registry.insert("gene_names".into(), json!(d.var_names));
            if let Some(serde_json::Value::Object(setup)) = registry.get_mut("setup_args") {
                setup.insert("layer".into(), d.layer_arg("layer"));
                setup.insert("assay".into(), serde_json::Value::Null);
            }
            serde_json::Value::Object(registry)
        };
        let registry = json!({
            "model": GimviKind::NAME,
            "seq": part(&data[SEQ], &fields[SEQ]),
            "spatial": part(&data[SPATIAL], &fields[SPATIAL]),
        });
        let mut model = Model::from_module(module, registry, NoExtra {});
        model.state = saved.state;
        Ok(model)
    }
}

impl Model<GimviKind> {
    /// Writes the model as scvi-tools' `GIMVI.save()` does (`dir/model.pt`), so that
    /// `scvi.external.GIMVI.load(dir, adata_seq, adata_spatial)` reads it.
    pub fn save_scvi_tools(&self, dir: &Path, overwrite: bool) -> Result<()> {
        let c = self.config();
        let path = checkpoint_path(dir, overwrite)?;
        let k = c.n_batch_total();
        let mut tensors = Vec::new();
        for (name, t) in state_dict_of(&self.module, |p, lw| Some(torch_name(p, lw))) {
            match PRIORS.iter().find(|(p, _)| *p == name) {
                // one (1, K) buffer per dataset whose library is modelled
                Some(_) => {
                    for dataset in [SEQ, SPATIAL]
                        .into_iter()
                        .filter(|&d| c.model_library_size[d])
                    {
                        let row = TorchTensor {
                            shape: vec![1, k],
                            values: t.values[dataset * k..(dataset + 1) * k].to_vec(),
                        };
                        tensors.push((format!("{name}_{dataset}"), row));
                    }
                }
                None => tensors.push((name, t)),
            }
        }
        let (state_dict, storages) = state_dict_value(&with_batch_counters(tensors), |n| {
            n.ends_with("num_batches_tracked")
        });
        let registries: Vec<serde_json::Value> = ["seq", "spatial"]
            .iter()
            .map(|part| registry_for_scvi_tools(&self.registry[*part], GimviKind::NAME, &[]))
            .collect();
        let init_params = json!({
            "non_kwargs": {
                "generative_distributions": c.generative_distributions,
                "model_library_size": c.model_library_size,
                "n_latent": c.n_latent,
            },
            "kwargs": {"model_kwargs": {
                "n_layers_encoder_individual": c.n_layers_encoder_individual,
                "n_layers_encoder_shared": c.n_layers_encoder_shared,
                "dim_hidden_encoder": c.dim_hidden_encoder,
                "n_layers_decoder_individual": c.n_layers_decoder_individual,
                "n_layers_decoder_shared": c.n_layers_decoder_shared,
                "dim_hidden_decoder_individual": c.dim_hidden_decoder_individual,
                "dim_hidden_decoder_shared": c.dim_hidden_decoder_shared,
                "dropout_rate_encoder": c.dropout_rate_encoder,
                "dropout_rate_decoder": c.dropout_rate_decoder,
                "dispersion": c.dispersion,
                "log_variational": c.log_variational,
            }},
        });
        let splits = &self.state.splits;
        let indices = |f: fn(&crate::data::Split) -> &Vec<usize>| {
            json!([SEQ, SPATIAL].map(|d| splits.get(d).map(f).cloned().unwrap_or_default()))
        };
        let attrs = json!({
            "init_params_": init_params,
            "registries_": registries,
            "is_trained_": self.state.is_trained,
            "train_indices_": indices(|s| &s.train),
            "validation_indices_": indices(|s| &s.validation),
            "test_indices_": indices(|s| &s.test),
            "history_": null,
        });
        let genes = |part: &str| from_json(&self.registry[part]["gene_names"]);
        let root = Value::Dict(vec![
            (Value::Str("model_state_dict".into()), state_dict),
            (Value::Str("seq_var_names".into()), genes("seq")),
            (Value::Str("spatial_var_names".into()), genes("spatial")),
            (Value::Str("attr_dict".into()), from_json(&attrs)),
        ]);
        write_checkpoint(&path, &root, &storages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gimvi_saved_by_scvi_tools_reads_and_writes_back_the_same() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../tests/testthat/fixtures/scvi-tools/gimvi");
        let m = Model::<GimviKind>::from_scvi_tools(&dir).unwrap();
        let c = m.config();
        assert_eq!((c.n_latent, c.n_batch), (4, [6, 1]));
        // half the genes, in reverse order
        let index = &c.spatial_gene_index;
        assert_eq!(index.len(), c.n_genes / 2);
        assert!(index.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(m.state.splits.len(), 2);
        let out = std::env::temp_dir().join(format!("rscvi-gimvi-st-{}", std::process::id()));
        m.save_scvi_tools(&out, true).unwrap();
        assert!(m.save_scvi_tools(&out, false).is_err(), "overwrite refused");
        let again = Model::<GimviKind>::from_scvi_tools(&out).unwrap();
        let weights = |m: &Model<GimviKind>| {
            crate::io::torch::state_dict_of(&m.module, |p, lw| Some(torch_name(p, lw)))
        };
        let (a, b) = (weights(&m), weights(&again));
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!((na, &ta.shape, &ta.values), (nb, &tb.shape, &tb.values));
        }
        assert_eq!(m.registry, again.registry);
        assert_eq!(m.state.splits[1].train, again.state.splits[1].train);
        std::fs::remove_dir_all(&out).unwrap();
    }
}
