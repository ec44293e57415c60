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

/// A model saved by scvi-tools, read.
pub struct SavedByScviTools {
    /// `SCVI`, `MULTIVI`, ...
    pub model_name: String,
    pub scvi_version: String,
    /// `init_params_`: the constructor's arguments, keyword arguments merged in.
    pub params: Vec<(String, Value)>,
    /// `registry_`.
    pub registry: Value,
    pub var_names: Vec<String>,
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
        let registry = attrs
            .get("registry_")
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
        // one array (AnnData), or one per modality (MuData), kept in modality order
        let var_names = match ckpt.root.get("var_names") {
            Some(Value::Dict(per_modality)) => per_modality
                .iter()
                .map(|(_, v)| strings(v))
                .collect::<Option<Vec<_>>>()
                .map(|v| v.concat()),
            Some(v) => strings(v),
            None => None,
        }
        .ok_or_else(|| err("var_names (the features) are missing or not strings"))?;
        let splits = match attrs.get("train_indices_") {
            Some(train) => vec![Split {
                train: indices(Some(train)),
                validation: indices(attrs.get("validation_indices_")),
                test: indices(attrs.get("test_indices_")),
            }],
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
            var_names,
            state,
            tensors,
            file,
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
