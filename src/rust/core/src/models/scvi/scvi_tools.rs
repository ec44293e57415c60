//! SCVI models saved by scvi-tools: the hyperparameters from `init_params_` (scvi-tools'
//! defaults where not given), the registry in the front end's form, the weights by their
//! state-dict names (scvi.md §3.5, §11).

use std::path::Path;

use serde_json::json;

use super::model::{ScviExtra, ScviKind};
use super::ScviConfig;
use crate::error::Result;
use crate::family::{Model, ModelKind};
use crate::io::pickle::Value;
use crate::io::scvi_tools::{
    attr_dict, checkpoint_path, from_json, registry_for_scvi_tools, with_batch_counters,
    SavedByScviTools,
};
use crate::io::torch::{
    load_state_dict, nn_torch_name, state_dict_of, state_dict_value, write_checkpoint, TorchName,
};
use crate::models::options::{BatchRepresentation, Dispersion};

/// Constructor arguments of scvi-tools' SCVI (and its VAE keywords) that rscvi reproduces.
const KNOWN: &[&str] = &[
    "n_hidden",
    "n_latent",
    "n_layers",
    "dropout_rate",
    "dispersion",
    "gene_likelihood",
    "latent_distribution",
    "use_observed_lib_size",
    "log_variational",
    "encode_covariates",
    "deeply_inject_covariates",
    "use_batch_norm",
    "use_layer_norm",
    "batch_representation",
    "var_activation",
];

/// The scvi-tools state-dict name of the SCVI parameter at Burn path `path` (None: torch
/// has no such tensor for this configuration).
fn torch_name(config: &ScviConfig, path: &str, linear_weight: bool) -> Option<TorchName> {
    match path {
        "px_r" => match config.dispersion {
            Dispersion::GeneCell => None,
            Dispersion::Gene => Some(TorchName {
                name: "px_r".into(),
                transpose: false,
                shape: Some(vec![config.n_input]),
            }),
            Dispersion::GeneBatch | Dispersion::GeneLabel => Some(TorchName {
                name: "px_r".into(),
                transpose: true,
                shape: None,
            }),
        },
        "library_log_means" | "library_log_vars" if !config.uses_latent_library() => None,
        "library_log_means" | "library_log_vars" => Some(TorchName {
            name: path.into(),
            transpose: false,
            shape: Some(vec![1, config.n_batch]),
        }),
        _ => {
            let path = path.replace("px_scale_decoder.", "px_scale_decoder.0.");
            Some(nn_torch_name(&path, linear_weight))
        }
    }
}

impl Model<ScviKind> {
    /// The SCVI model scvi-tools saved in `dir`.
    pub fn from_scvi_tools(dir: &Path) -> Result<Self> {
        let saved = SavedByScviTools::read_kind(dir, ScviKind::NAME, KNOWN)?;
        if saved.param("var_activation").is_some() {
            return Err(saved.error(
                "the model was built with a custom `var_activation`, which rscvi cannot reproduce",
            ));
        }
        let fields = saved.fields()?;
        let use_size_factor = saved.field_state("size_factor").is_some()
            || !saved.setup_arg("size_factor_key").is_null();
        let config: ScviConfig = serde_json::from_value(json!({
            "n_input": saved.var_names.len(),
            "n_batch": fields.batches.len(),
            "n_labels": fields.labels.len(),
            "n_cats_per_cov": fields.n_cats_per_cov(),
            "n_continuous_cov": fields.continuous.len(),
            "use_size_factor": use_size_factor,
            "n_hidden": saved.param_usize("n_hidden", 128)?,
            "n_latent": saved.param_usize("n_latent", 10)?,
            "n_layers": saved.param_usize("n_layers", 1)?,
            "dropout_rate": saved.param_f64("dropout_rate", 0.1)?,
            "dispersion": saved.param_str("dispersion", "gene")?,
            "gene_likelihood": saved.param_str("gene_likelihood", "zinb")?,
            "latent_distribution": saved.param_str("latent_distribution", "normal")?,
            "use_observed_lib_size": saved.param_bool("use_observed_lib_size", true)?,
            "log_variational": saved.param_bool("log_variational", true)?,
            "encode_covariates": saved.param_bool("encode_covariates", false)?,
            "deeply_inject_covariates": saved.param_bool("deeply_inject_covariates", true)?,
            "use_batch_norm": saved.param_str("use_batch_norm", "both")?,
            "use_layer_norm": saved.param_str("use_layer_norm", "none")?,
            "var_eps": 1e-4,
            "batch_representation": saved.param_str("batch_representation", "one-hot")?,
        }))
        .map_err(|e| saved.error(format!("unsupported hyperparameters: {e}")))?;
        if config.batch_representation == BatchRepresentation::Embedding {
            return Err(saved.error(
                "batch_representation = \"embedding\" models cannot be read yet (one-hot only)",
            ));
        }
        let blank = ScviKind::blank::<crate::backend::Cpu>(&config, &Default::default())?;
        let latent_library = config.uses_latent_library();
        let module = load_state_dict(
            blank,
            &saved.tensors,
            |p, lw| torch_name(&config, p, lw),
            |name| {
                name.ends_with("num_batches_tracked")
                    || (!latent_library && name.starts_with("library_log_"))
            },
        )
        .map_err(|e| saved.error(e))?;
        let mut registry = fields.registry(&saved);
        registry.insert("model".into(), json!(ScviKind::NAME));
        registry.insert("gene_names".into(), json!(saved.var_names));
        if let Some(serde_json::Value::Object(setup)) = registry.get_mut("setup_args") {
            setup.insert("layer".into(), saved.layer_arg("layer"));
            setup.insert("assay".into(), serde_json::Value::Null);
        }
        let registry = serde_json::Value::Object(registry);
        let mut model = Model::from_module(module, registry, ScviExtra::default());
        model.state = saved.state;
        Ok(model)
    }
}

impl Model<ScviKind> {
    /// Writes the model as scvi-tools' `model.save()` does (`dir/model.pt`), so that
    /// `scvi.model.SCVI.load(dir, adata)` reads it: the weights under their state-dict names,
    /// `var_names`, and `attr_dict` with the constructor arguments, the registry and the split.
    pub fn save_scvi_tools(&self, dir: &Path, overwrite: bool) -> Result<()> {
        let c = self.config();
        if c.batch_representation == BatchRepresentation::Embedding {
            return Err(crate::error::invalid_arg(
                "format",
                "\"scvi-tools\" is not available for batch_representation = \"embedding\" models yet",
            ));
        }
        let path = checkpoint_path(dir, overwrite)?;
        let tensors =
            with_batch_counters(state_dict_of(&self.module, |p, lw| torch_name(c, p, lw)));
        let (state_dict, storages) =
            state_dict_value(&tensors, |n| n.ends_with("num_batches_tracked"));
        let reg = &self.registry;
        let genes = reg["gene_names"].clone();
        let registry = registry_for_scvi_tools(reg, ScviKind::NAME, &c.n_cats_per_cov);
        let init_params = json!({
            "non_kwargs": {
                "n_hidden": c.n_hidden,
                "n_latent": c.n_latent,
                "n_layers": c.n_layers,
                "dropout_rate": c.dropout_rate,
                "dispersion": c.dispersion,
                "gene_likelihood": c.gene_likelihood,
                "use_observed_lib_size": c.use_observed_lib_size,
                "latent_distribution": c.latent_distribution,
            },
            "kwargs": {"kwargs": {
                "log_variational": c.log_variational,
                "encode_covariates": c.encode_covariates,
                "deeply_inject_covariates": c.deeply_inject_covariates,
                "use_batch_norm": c.use_batch_norm,
                "use_layer_norm": c.use_layer_norm,
            }},
        });
        let attrs = attr_dict(
            init_params,
            registry,
            &self.state,
            "get_normalized_expression",
        );
        let root = Value::Dict(vec![
            (Value::Str("model_state_dict".into()), state_dict),
            (Value::Str("var_names".into()), from_json(&genes)),
            (Value::Str("attr_dict".into()), from_json(&attrs)),
        ]);
        write_checkpoint(&path, &root, &storages)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::backend::{host_values, Cpu};
    use crate::data::batch::Batch;
    use crate::data::{Categorical, CsrMatrix, DataSet};
    use crate::io::h5::{read_h5ad, Column, FeatureMatrix};

    fn repo_file(rel: &str) -> Option<PathBuf> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../..")
            .join(rel);
        p.exists().then_some(p)
    }

    /// A CSV written by pandas (header row, index column) as row-major values.
    fn csv(path: &Path) -> Vec<f32> {
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .skip(1)
            .flat_map(|l| {
                l.split(',')
                    .skip(1)
                    .map(|v| v.parse::<f32>().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The shipped CellBench subsample registered as scvi-tools registered it for `model`.
    fn cellbench(model: &Model<ScviKind>) -> DataSet {
        let a = read_h5ad(
            &repo_file("inst/extdata/cellbench_small.h5ad").unwrap(),
            true,
        )
        .unwrap();
        let (_, counts) = a.layers.iter().find(|(n, _)| n == "counts").unwrap();
        // features x cells compressed by column = cells x features compressed by row
        let FeatureMatrix::Sparse {
            n_features,
            n_cells,
            indptr,
            indices,
            values,
        } = counts
        else {
            panic!("sparse counts expected")
        };
        let counts = CsrMatrix::new(
            *n_cells,
            *n_features,
            indptr.clone(),
            indices.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            values.iter().map(|&v| v as f32).collect(),
        )
        .unwrap();
        let column = |name: &str| &a.obs.columns.iter().find(|(n, _)| n == name).unwrap().1;
        let coded = |name: &str, cats: &serde_json::Value| {
            let Column::Factor { codes, levels, .. } = column(name) else {
                panic!()
            };
            let cats: Vec<&str> = cats
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            Categorical {
                codes: codes
                    .iter()
                    .map(|c| cats.iter().position(|k| *k == levels[c.unwrap()]).unwrap() as u32)
                    .collect(),
                n_categories: cats.len(),
            }
        };
        let r = &model.registry;
        let covs = r["categorical_covariate_categories"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, cats)| coded(k, cats))
            .collect();
        let cont = r["continuous_covariate_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| match column(k.as_str().unwrap()) {
                Column::Integer(v) => v.iter().map(|&x| x as f32).collect(),
                Column::Double(v) => v.iter().map(|&x| x as f32).collect(),
                _ => panic!("numeric covariate expected"),
            })
            .collect();
        DataSet::new(
            counts,
            coded("batch", &r["batch_categories"]),
            Categorical::constant(*n_cells),
            covs,
            cont,
            Vec::new(),
        )
        .unwrap()
    }

    fn assert_close(what: &str, ours: &[f32], theirs: &[f32], tol: f32) {
        assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
        let worst = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0f32, f32::max);
        assert!(worst < tol, "{what}: largest difference {worst}");
    }

    /// Models trained and saved by scvi-tools 1.5.1 (tools/make-scvi-tools-fixtures.py) give
    /// scvi-tools' posterior means and decoder outputs for the same cells.
    #[test]
    fn scvi_tools_models_compute_what_scvi_tools_computed() {
        for name in ["scvi", "scvi-covariates"] {
            let Some(dir) = repo_file(&format!("tests/testthat/fixtures/scvi-tools/{name}")) else {
                eprintln!("skipped: fixture {name} not found");
                return;
            };
            let model = Model::<ScviKind>::from_scvi_tools(&dir).unwrap();
            assert!(model.state.is_trained);
            let data = cellbench(&model);
            let cells: Vec<usize> = (0..data.n_cells()).collect();
            let device = Default::default();
            let b =
                Batch::<Cpu>::from_host(&data.host_batch(&cells, None), data.n_genes(), &device);
            let m = &model.module;
            let inf = m.inference(&b, false);
            assert_close(
                name,
                &host_values(&inf.qz_mean),
                &csv(&dir.join("latent.csv")),
                1e-4,
            );
            let library = inf
                .ql
                .as_ref()
                .map_or(inf.library.clone(), |(mean, _)| mean.clone());
            let gen = m.generative(&b, inf.qz_mean.clone(), library, false);
            assert_close(
                name,
                &host_values(&gen.scale),
                &csv(&dir.join("scale.csv")),
                1e-4,
            );
            let theta = gen
                .theta
                .expand([cells.len() as i64, data.n_genes() as i64]);
            assert_close(
                name,
                &host_values(&theta),
                &csv(&dir.join("theta.csv")),
                1e-4,
            );
            if let Some(p) = gen.dropout_logits {
                assert_close(name, &host_values(&p), &csv(&dir.join("dropout.csv")), 1e-4);
            }
        }
    }

    /// What rscvi writes in scvi-tools' layout reads back to the same weights, registry and
    /// split (scvi-tools itself reads it in bench/check-scvi-tools-save.py).
    #[test]
    fn scvi_tools_layout_round_trips() {
        for name in ["scvi", "scvi-covariates"] {
            let Some(dir) = repo_file(&format!("tests/testthat/fixtures/scvi-tools/{name}")) else {
                return;
            };
            let model = Model::<ScviKind>::from_scvi_tools(&dir).unwrap();
            let out = std::env::temp_dir()
                .join(format!("rscvi-scvi-tools-{name}-{}", std::process::id()));
            model.save_scvi_tools(&out, true).unwrap();
            assert!(model.save_scvi_tools(&out, false).is_err());
            let again = Model::<ScviKind>::from_scvi_tools(&out).unwrap();
            let c = model.config();
            let ours = state_dict_of(&model.module, |p, lw| torch_name(c, p, lw));
            let back = state_dict_of(&again.module, |p, lw| torch_name(c, p, lw));
            assert_eq!(ours.len(), back.len());
            for ((n1, t1), (n2, t2)) in ours.iter().zip(&back) {
                assert_eq!((n1, &t1.shape, &t1.values), (n2, &t2.shape, &t2.values));
            }
            assert_eq!(
                model.registry["batch_categories"],
                again.registry["batch_categories"]
            );
            assert_eq!(
                model.registry["categorical_covariate_categories"],
                again.registry["categorical_covariate_categories"]
            );
            assert_eq!(
                model.state.splits[0].validation,
                again.state.splits[0].validation
            );
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::to_value(again.config()).unwrap()
            );
            std::fs::remove_dir_all(&out).unwrap();
        }
    }
}
