//! Folders saved by scvi-tools' `model.save()`: `model.pt` holds the module's state dict,
//! the genes (`var_names`) and the model's attributes (`attr_dict`: `init_params_`,
//! `registry_`, the split, `is_trained_`). This reads what every model kind needs from them;
//! each kind maps the hyperparameters and weight names onto its own module.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value as Json};

use super::pickle::Value;
use super::torch::{read_checkpoint, TorchTensor};
use crate::data::Split;
use crate::error::{Error, Result};
use crate::train::TrainState;

pub const CHECKPOINT_FILE: &str = "model.pt";
/// The scvi-tools version whose layout the writers here follow.
pub const SCVI_TOOLS_VERSION: &str = "1.5.1";

/// A model saved by scvi-tools, read.
pub struct SavedByScviTools {
    /// `SCVI`, `MULTIVI`, ...
    pub model_name: String,
    pub scvi_version: String,
    /// `init_params_`: the constructor's arguments, keyword arguments merged in.
    pub params: Vec<(String, Value)>,
    /// `registry_`; for a model of two datasets (GIMVI), the first dataset's.
    pub registry: Value,
    /// `registries_` of a model of two datasets (GIMVI: sequencing, spatial); else the one
    /// registry.
    pub registries: Vec<Value>,
    pub var_names: Vec<String>,
    /// The features of each dataset (`seq_var_names`, `spatial_var_names` of GIMVI); else
    /// `var_names`.
    pub dataset_var_names: Vec<Vec<String>>,
    pub state: TrainState,
    pub tensors: HashMap<String, TorchTensor>,
    pub file: String,
}

/// Whether `dir` holds a model saved by scvi-tools.
pub fn is_scvi_tools_dir(dir: &Path) -> bool {
    dir.join(CHECKPOINT_FILE).is_file()
}

/// The model class (`SCVI`, `MULTIVI`, ...) of the scvi-tools model saved in `dir`.
pub fn saved_model_name(dir: &Path) -> Result<String> {
    Ok(SavedByScviTools::read(dir)?.model_name)
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.items()?
        .into_iter()
        .map(|x| match x {
            Value::Str(s) => Some(s),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(if b { "True" } else { "False" }.to_string()),
            _ => None,
        })
        .collect()
}

fn indices(v: Option<&Value>) -> Vec<usize> {
    v.and_then(Value::items)
        .map(|xs| {
            xs.iter()
                .filter_map(|x| x.as_i64().and_then(|i| usize::try_from(i).ok()))
                .collect()
        })
        .unwrap_or_default()
}

impl SavedByScviTools {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(CHECKPOINT_FILE);
        let file = path.display().to_string();
        let ckpt = read_checkpoint(&path)?;
        let err = |msg: &str| Error::File(format!("{file}: {msg}"));
        let attrs = ckpt
            .root
            .get("attr_dict")
            .ok_or_else(|| err("no attr_dict: not a model saved by scvi-tools' model.save()"))?;
        let registries = match (attrs.get("registry_"), attrs.get("registries_")) {
            (Some(r), _) => vec![r.clone()],
            (None, Some(rs)) => rs.items().unwrap_or_default(),
            (None, None) => Vec::new(),
        };
        let registry = registries
            .first()
            .cloned()
            .ok_or_else(|| err("attr_dict has no registry_"))?;
        let model_name = registry
            .get("model_name")
            .and_then(Value::as_str)
            .ok_or_else(|| err("the registry names no model"))?
            .to_string();
        let scvi_version = registry
            .get("scvi_version")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        // `non_kwargs`, then each group of keyword arguments (`kwargs`, `model_kwargs`, ...)
        // flattened, as scvi-tools' load does
        let mut params = Vec::new();
        let mut add = |d: &Value| {
            if let Value::Dict(items) = d {
                for (k, v) in items {
                    if let Value::Str(k) = k {
                        params.push((k.clone(), v.clone()));
                    }
                }
            }
        };
        if let Some(init) = attrs.get("init_params_") {
            if let Some(d) = init.get("non_kwargs") {
                add(d);
            }
            if let Some(Value::Dict(groups)) = init.get("kwargs") {
                for (_, group) in groups {
                    add(group);
                }
            }
        }
        // one array (AnnData), or one per modality (MuData), kept in modality order; GIMVI:
        // one per dataset
        let per_dataset: Option<Vec<Vec<String>>> = ["seq_var_names", "spatial_var_names"]
            .iter()
            .map(|k| ckpt.root.get(k).and_then(strings))
            .collect();
        let var_names = match ckpt.root.get("var_names") {
            Some(Value::Dict(per_modality)) => per_modality
                .iter()
                .map(|(_, v)| strings(v))
                .collect::<Option<Vec<_>>>()
                .map(|v| v.concat()),
            Some(v) => strings(v),
            None => per_dataset.as_ref().and_then(|v| v.first().cloned()),
        }
        .ok_or_else(|| err("var_names (the features) are missing or not strings"))?;
        let dataset_var_names = per_dataset.unwrap_or_else(|| vec![var_names.clone()]);
        // one array of indices, or (GIMVI) one per dataset
        let per_dataset = |key: &str| -> Vec<Vec<usize>> {
            match attrs.get(key).and_then(Value::items) {
                Some(xs) if registries.len() > 1 => xs.iter().map(|x| indices(Some(x))).collect(),
                _ => vec![indices(attrs.get(key))],
            }
        };
        let splits = match attrs.get("train_indices_") {
            Some(_) => {
                let (train, validation, test) = (
                    per_dataset("train_indices_"),
                    per_dataset("validation_indices_"),
                    per_dataset("test_indices_"),
                );
                (0..train.len())
                    .map(|k| Split {
                        train: train[k].clone(),
                        validation: validation.get(k).cloned().unwrap_or_default(),
                        test: test.get(k).cloned().unwrap_or_default(),
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        let state = TrainState {
            is_trained: attrs
                .get("is_trained_")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            history: Vec::new(),
            splits,
        };
        let tensors = ckpt.state_dict("model_state_dict")?;
        Ok(Self {
            model_name,
            scvi_version,
            params,
            registry,
            registries,
            var_names,
            dataset_var_names,
            state,
            tensors,
            file,
        })
    }

    /// The registry and features of dataset `k` of a model of several datasets, as the
    /// model of that one dataset (without its weights), for the field readers below.
    pub fn dataset(&self, k: usize) -> Result<Self> {
        let (Some(registry), Some(var_names)) =
            (self.registries.get(k), self.dataset_var_names.get(k))
        else {
            return Err(self.error(format!("the model has no dataset {}", k + 1)));
        };
        Ok(Self {
            model_name: self.model_name.clone(),
            scvi_version: self.scvi_version.clone(),
            params: self.params.clone(),
            registry: registry.clone(),
            registries: vec![registry.clone()],
            var_names: var_names.clone(),
            dataset_var_names: vec![var_names.clone()],
            state: TrainState::default(),
            tensors: HashMap::new(),
            file: self.file.clone(),
        })
    }

    /// An error about this file naming the scvi-tools version that wrote it.
    pub fn error(&self, msg: impl std::fmt::Display) -> Error {
        Error::Io(format!(
            "{} ({} saved by scvi-tools {}): {msg}",
            self.file, self.model_name, self.scvi_version
        ))
    }

    /// The constructor argument `key`, if the model was given it.
    pub fn param(&self, key: &str) -> Option<&Value> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .filter(|v| !matches!(v, Value::None))
    }

    /// Constructor arguments other than `known` (refused: the model would not be the same).
    pub fn check_params(&self, known: &[&str]) -> Result<()> {
        match self
            .params
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            Some((k, v)) => Err(self.error(format!(
                "the model was built with `{k}` = {}, which rscvi cannot reproduce",
                show(v)
            ))),
            None => Ok(()),
        }
    }

    /// The constructor argument `key` read by `read` (None: not of the type `what`), or
    /// `default` when the model was not given it.
    fn param_as<T>(
        &self,
        key: &str,
        default: T,
        what: &str,
        read: impl Fn(&Value) -> Option<T>,
    ) -> Result<T> {
        match self.param(key) {
            None => Ok(default),
            Some(v) => {
                read(v).ok_or_else(|| self.error(format!("`{key}` is {}, not {what}", v.kind())))
            }
        }
    }

    pub fn param_usize(&self, key: &str, default: usize) -> Result<usize> {
        self.param_as(key, default, "a count", |v| {
            v.as_i64().and_then(|i| usize::try_from(i).ok())
        })
    }

    pub fn param_f64(&self, key: &str, default: f64) -> Result<f64> {
        self.param_as(key, default, "a number", Value::as_f64)
    }

    pub fn param_bool(&self, key: &str, default: bool) -> Result<bool> {
        self.param_as(key, default, "a boolean", Value::as_bool)
    }

    pub fn param_str(&self, key: &str, default: &str) -> Result<String> {
        self.param_as(key, default.to_string(), "a string", |v| {
            v.as_str().map(str::to_string)
        })
    }

    /// `state_registry` of the registered field `field`.
    pub fn field_state(&self, field: &str) -> Option<&Value> {
        self.registry
            .get("field_registries")?
            .get(field)?
            .get("state_registry")
            .filter(|s| !matches!(s, Value::Dict(items) if items.is_empty()))
    }

    /// The categories of the categorical field `field` in code order, as strings.
    pub fn categories(&self, field: &str) -> Result<Vec<String>> {
        match self.field_state(field) {
            None => Ok(vec!["0".to_string()]),
            Some(s) => s
                .get("categorical_mapping")
                .and_then(strings)
                .ok_or_else(|| self.error(format!("the {field} categories are not readable"))),
        }
    }

    /// The extra categorical covariates: (key, categories) in registration order.
    pub fn covariate_categories(&self) -> Result<Vec<(String, Vec<String>)>> {
        let Some(s) = self.field_state("extra_categorical_covs") else {
            return Ok(Vec::new());
        };
        let keys = s.get("field_keys").and_then(strings).unwrap_or_default();
        keys.into_iter()
            .map(|k| {
                let cats = s
                    .get("mappings")
                    .and_then(|m| m.get(&k))
                    .and_then(strings)
                    .ok_or_else(|| {
                        self.error(format!("the categories of covariate `{k}` are missing"))
                    })?;
                Ok((k, cats))
            })
            .collect()
    }

    /// The model of kind `kind` saved in `dir`, checked for its kind and for constructor
    /// arguments other than `known`.
    pub fn read_kind(dir: &Path, kind: &str, known: &[&str]) -> Result<Self> {
        let saved = Self::read(dir)?;
        if saved.model_name != kind {
            return Err(saved.error(format!("not a {kind} model")));
        }
        saved.check_params(known)?;
        Ok(saved)
    }

    /// The registered batch, label and covariate fields.
    pub fn fields(&self) -> Result<Fields> {
        Ok(Fields {
            batches: self.categories("batch")?,
            labels: self.categories("labels")?,
            covariates: self.covariate_categories()?,
            continuous: self.continuous_covariates(),
        })
    }

    /// The extra continuous covariates' names.
    pub fn continuous_covariates(&self) -> Vec<String> {
        self.field_state("extra_continuous_covs")
            .and_then(|s| s.get("columns"))
            .and_then(strings)
            .unwrap_or_default()
    }

    /// The number of cells the model was set up with.
    pub fn n_cells(&self) -> usize {
        self.field_state("X")
            .and_then(|s| s.get("n_obs"))
            .and_then(Value::as_i64)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
    }

    /// The layer setup argument `key` as the front end names it: scvi-tools' None is the
    /// AnnData's X, which read_h5ad() / read_h5mu() name "X".
    pub fn layer_arg(&self, key: &str) -> Json {
        match self.setup_arg(key) {
            Json::Null => json!("X"),
            layer => layer,
        }
    }

    /// The MuData modality registered for `key` (`rna_layer`, `atac_layer`, ...), which
    /// read_h5mu() makes the name of an altExp.
    pub fn modality_arg(&self, key: &str) -> Json {
        match self
            .registry
            .get("setup_args")
            .and_then(|s| s.get("modalities"))
            .and_then(|m| m.get(key))
        {
            Some(Value::Str(s)) => json!(s),
            _ => Json::Null,
        }
    }

    /// A setup argument as JSON (null when not given).
    pub fn setup_arg(&self, key: &str) -> Json {
        match self.registry.get("setup_args").and_then(|s| s.get(key)) {
            Some(Value::Str(s)) => json!(s),
            Some(v @ (Value::List(_) | Value::Tuple(_))) => json!(strings(v).unwrap_or_default()),
            _ => Json::Null,
        }
    }
}

/// The categorical and continuous fields of a registry, as every model kind registers them.
pub struct Fields {
    pub batches: Vec<String>,
    pub labels: Vec<String>,
    /// (key, categories) of the extra categorical covariates, in registration order.
    pub covariates: Vec<(String, Vec<String>)>,
    pub continuous: Vec<String>,
}

impl Fields {
    /// Categories per covariate, as the config counts them.
    pub fn n_cats_per_cov(&self) -> Vec<usize> {
        self.covariates.iter().map(|(_, c)| c.len()).collect()
    }

    /// The registry entries every kind shares, in the front end's form (`setup_args` holds
    /// the keys; each kind adds its own).
    pub fn registry(&self, saved: &SavedByScviTools) -> serde_json::Map<String, Json> {
        let or_null = |keys: Vec<&String>| {
            if keys.is_empty() {
                Json::Null
            } else {
                json!(keys)
            }
        };
        let setup = json!({
            "batch_key": saved.setup_arg("batch_key"),
            "labels_key": saved.setup_arg("labels_key"),
            "size_factor_key": saved.setup_arg("size_factor_key"),
            "categorical_covariate_keys": or_null(self.covariates.iter().map(|(k, _)| k).collect()),
            "continuous_covariate_keys": or_null(self.continuous.iter().collect()),
        });
        let entries = json!({
            "setup_args": setup,
            "batch_categories": self.batches,
            "label_categories": self.labels,
            "categorical_covariate_categories": self
                .covariates
                .iter()
                .map(|(k, c)| (k.clone(), json!(c)))
                .collect::<serde_json::Map<_, _>>(),
            "continuous_covariate_keys": self.continuous,
            "n_batch": self.batches.len(),
            "n_labels": self.labels.len(),
            "n_cells": saved.n_cells(),
            "scvi_tools_version": saved.scvi_version,
        });
        match entries {
            Json::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }
}

/// Where a model saved in scvi-tools' layout goes in `dir` (created if needed), unless one
/// is there already and `overwrite` is false.
pub fn checkpoint_path(dir: &Path, overwrite: bool) -> Result<std::path::PathBuf> {
    let path = dir.join(CHECKPOINT_FILE);
    if path.exists() && !overwrite {
        return Err(Error::Io(format!(
            "{} already holds a saved model; use overwrite = TRUE",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
    Ok(path)
}

/// The `attr_dict` scvi-tools saves for a model of one registry: its constructor arguments,
/// the registry, the split and the name of its normalized-output query.
pub fn attr_dict(init_params: Json, registry: Json, state: &TrainState, normalized: &str) -> Json {
    let split = state.splits.first();
    let indices = |f: fn(&Split) -> &Vec<usize>| json!(split.map(f).cloned().unwrap_or_default());
    json!({
        "init_params_": init_params,
        "registry_": registry,
        "is_trained_": state.is_trained,
        "train_indices_": indices(|s| &s.train),
        "validation_indices_": indices(|s| &s.validation),
        "test_indices_": indices(|s| &s.test),
        "history_": null,
        "get_normalized_function_name_": normalized,
    })
}

/// The registry scvi-tools 1.5.1 saves (`registry_`, or one of GIMVI's `registries_`) for the
/// front end's registry `reg` of a model of class `model_name` set up with `setup_anndata`.
pub fn registry_for_scvi_tools(reg: &Json, model_name: &str, n_cats_per_cov: &[usize]) -> Json {
    let setup = &reg["setup_args"];
    let genes = reg["gene_names"].clone();
    let count = |key: &str| reg[key].as_array().map_or(0, Vec::len);
    let (n_vars, n_batch, n_labels) = (
        count("gene_names"),
        count("batch_categories"),
        count("label_categories"),
    );
    let cat_keys: Vec<String> = setup["categorical_covariate_keys"]
        .as_array()
        .map(|k| {
            k.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let cont: serde_json::Value = reg["continuous_covariate_keys"].clone();
    let n_cont = cont.as_array().map_or(0, Vec::len);
    // read_h5ad() names an AnnData's X "X"; scvi-tools calls it no layer
    let layer = match setup["layer"].as_str() {
        Some("X") | None => serde_json::Value::Null,
        Some(l) => json!(l),
    };
    let empty = json!({"data_registry": {}, "state_registry": {}, "summary_stats": {}});
    let extra_cat = if cat_keys.is_empty() {
        json!({"data_registry": {}, "state_registry": {},
               "summary_stats": {"n_extra_categorical_covs": 0}})
    } else {
        let cats = &reg["categorical_covariate_categories"];
        json!({
            "data_registry": {"attr_key": "_scvi_extra_categorical_covs", "attr_name": "obsm"},
            "state_registry": {
                "mappings": cat_keys.iter().map(|k| (k.clone(), cats[k].clone())).collect::<serde_json::Map<_, _>>(),
                "field_keys": cat_keys,
                "n_cats_per_key": n_cats_per_cov,
            },
            "summary_stats": {"n_extra_categorical_covs": cat_keys.len()},
        })
    };
    let extra_cont = if n_cont == 0 {
        json!({"data_registry": {}, "state_registry": {},
               "summary_stats": {"n_extra_continuous_covs": 0}})
    } else {
        json!({
            "data_registry": {"attr_key": "_scvi_extra_continuous_covs", "attr_name": "obsm"},
            "state_registry": {"columns": cont},
            "summary_stats": {"n_extra_continuous_covs": n_cont},
        })
    };
    let size_factor = match setup["size_factor_key"].as_str() {
        Some(k) => json!({"data_registry": {"attr_key": k, "attr_name": "obs"},
                          "state_registry": {}, "summary_stats": {}}),
        None => empty,
    };
    let n_cells = reg["n_cells"].as_u64().unwrap_or(0);
    json!({
        "scvi_version": SCVI_TOOLS_VERSION,
        "model_name": model_name,
        "setup_method_name": "setup_anndata",
        "setup_args": {
            "layer": layer,
            "batch_key": setup["batch_key"],
            "labels_key": setup["labels_key"],
            "size_factor_key": setup["size_factor_key"],
            "categorical_covariate_keys": setup["categorical_covariate_keys"],
            "continuous_covariate_keys": setup["continuous_covariate_keys"],
        },
        "field_registries": {
            "X": {
                "data_registry": {"attr_key": layer,
                                  "attr_name": if layer.is_null() { "X" } else { "layers" }},
                "state_registry": {"n_obs": n_cells, "n_vars": n_vars, "column_names": genes},
                "summary_stats": {"n_cells": n_cells, "n_vars": n_vars},
            },
            "batch": {
                "data_registry": {"attr_key": "_scvi_batch", "attr_name": "obs"},
                "state_registry": {
                    "categorical_mapping": mapping(reg, "batch_categories", &setup["batch_key"]),
                    "original_key": setup["batch_key"].as_str().unwrap_or("_scvi_batch"),
                },
                "summary_stats": {"n_batch": n_batch},
            },
            "labels": {
                "data_registry": {"attr_key": "_scvi_labels", "attr_name": "obs"},
                "state_registry": {
                    "categorical_mapping": mapping(reg, "label_categories", &setup["labels_key"]),
                    "original_key": setup["labels_key"].as_str().unwrap_or("_scvi_labels"),
                },
                "summary_stats": {"n_labels": n_labels},
            },
            "size_factor": size_factor,
            "extra_categorical_covs": extra_cat,
            "extra_continuous_covs": extra_cont,
        },
    })
}

/// The registry categories `key` as scvi-tools maps them: a column the model was not given
/// (`setup_key` null) is scvi-tools' own column of zeros, whose one category is the integer 0.
fn mapping(reg: &Json, key: &str, setup_key: &Json) -> Json {
    if setup_key.is_null() {
        json!([0])
    } else {
        reg[key].clone()
    }
}

/// A JSON value as a Python value (objects become dicts with string keys).
pub fn from_json(v: &Json) -> Value {
    match v {
        Json::Null => Value::None,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(xs) => Value::List(xs.iter().map(from_json).collect()),
        Json::Object(m) => Value::Dict(
            m.iter()
                .map(|(k, x)| (Value::Str(k.clone()), from_json(x)))
                .collect(),
        ),
    }
}

/// BatchNorm's `num_batches_tracked` counters beside each running mean (torch's
/// `load_state_dict` wants them; rscvi does not count, so they are 0).
pub fn with_batch_counters(tensors: Vec<(String, TorchTensor)>) -> Vec<(String, TorchTensor)> {
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let counter = name
            .strip_suffix(".running_var")
            .map(|base| format!("{base}.num_batches_tracked"));
        out.push((name, t));
        if let Some(c) = counter {
            out.push((
                c,
                TorchTensor {
                    shape: Vec::new(),
                    values: vec![0.0],
                },
            ));
        }
    }
    out
}

fn show(v: &Value) -> String {
    match v {
        Value::Str(s) => format!("\"{s}\""),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        other => other.kind(),
    }
}
