//! Persistence: a saved model is a folder with its description (model.json: format, model
//! kind, config, training state, registry) and its weights (model.mpk); plus moving a module
//! between backends.

pub mod h5;
pub mod pickle;
pub mod scvi_tools;
pub mod torch;

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::Cpu;
use crate::error::{Error, Result};

pub const FORMAT: &str = "rscvi";
/// 2: the training state holds one split per dataset (`splits`); format 1 is still read.
pub const FORMAT_VERSION: u32 = 2;
const WEIGHTS_FILE: &str = "model.mpk";
const META_FILE: &str = "model.json";

/// Writes `path` through a temporary file beside it, moved into place when `write` succeeds
/// and removed when it fails: a failure leaves no half-written file and an existing one
/// untouched.
pub(crate) fn write_beside(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.rscvi-tmp"));
    match write(&tmp) {
        Ok(()) => std::fs::rename(&tmp, path)
            .map_err(|e| Error::File(format!("cannot move the file into {}: {e}", path.display()))),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Moves a module between backends through Burn's byte recorder: the record of `m` is
/// loaded over `blank`, a module of the same architecture on the target backend.
pub fn transfer<A: Backend, Z: Backend, MA: Module<A>, MZ: Module<Z>>(
    m: &MA,
    blank: MZ,
    device: &Z::Device,
) -> Result<MZ> {
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder
        .record(m.clone().into_record(), ())
        .map_err(|e| Error::Io(format!("could not serialise the module: {e}")))?;
    let record = recorder
        .load(bytes, device)
        .map_err(|e| Error::Io(format!("could not move the module: {e}")))?;
    Ok(blank.load_record(record))
}

/// Writes a saved model into `dir`: its description `meta` (model.json) and the weights of
/// `module` (model.mpk).
pub(crate) fn save_files<M: Module<Cpu>>(
    dir: &Path,
    overwrite: bool,
    module: &M,
    meta: &impl Serialize,
) -> Result<()> {
    let meta_path = dir.join(META_FILE);
    if meta_path.exists() && !overwrite {
        return Err(Error::Io(format!(
            "{} already holds a saved model; use overwrite = TRUE",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
    let json = serde_json::to_string_pretty(meta).map_err(|e| Error::Io(e.to_string()))?;
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    module
        .clone()
        .save_file(dir.join(WEIGHTS_FILE), &recorder)
        .map_err(|e| Error::Io(format!("cannot write weights: {e}")))?;
    std::fs::write(&meta_path, json)
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", meta_path.display())))
}

const MINIFIED_FILE: &str = "minified.mpk";

/// Writes a minified dataset (each cell's latent posterior, covariates and library; no
/// counts) next to the model saved in `dir`, so that the model loads ready for its queries.
pub fn save_minified(dir: &Path, data: &crate::data::DataSet) -> Result<()> {
    let bytes = rmp_serde::to_vec_named(data)
        .map_err(|e| Error::Io(format!("cannot encode the minified data: {e}")))?;
    let path = dir.join(MINIFIED_FILE);
    std::fs::write(&path, bytes)
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))
}

/// The minified dataset saved with the model in `dir`, if there is one.
pub fn load_minified(dir: &Path) -> Result<Option<crate::data::DataSet>> {
    let path = dir.join(MINIFIED_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(&path)
        .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
    let data: crate::data::DataSet = rmp_serde::from_slice(&bytes).map_err(|e| {
        Error::Io(format!(
            "{} is not a valid minified dataset: {e}",
            path.display()
        ))
    })?;
    data.check_minified()
        .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    Ok(Some(data))
}

fn read_description(dir: &Path) -> Result<(std::path::PathBuf, serde_json::Value)> {
    let meta_path = dir.join(META_FILE);
    let text = std::fs::read_to_string(&meta_path)
        .map_err(|e| Error::Io(format!("cannot read {}: {e}", meta_path.display())))?;
    let v = serde_json::from_str(&text).map_err(|e| {
        Error::Io(format!(
            "{} is not a valid rscvi model description: {e}",
            meta_path.display()
        ))
    })?;
    Ok((meta_path, v))
}

/// The kind ("SCVI", "GIMVI", ...) of the model saved in `dir` (by rscvi, or by scvi-tools
/// when `dir` holds its model.pt and no model.json).
pub fn saved_model_kind(dir: &Path) -> Result<String> {
    if !dir.join(META_FILE).exists() && scvi_tools::is_scvi_tools_dir(dir) {
        return scvi_tools::saved_model_name(dir);
    }
    let (meta_path, v) = read_description(dir)?;
    match (
        v.get("format").and_then(|f| f.as_str()),
        v.get("model").and_then(|m| m.as_str()),
    ) {
        (Some(FORMAT), Some(m)) => Ok(m.to_string()),
        _ => Err(Error::Io(format!(
            "{} does not describe an rscvi model",
            meta_path.display()
        ))),
    }
}

/// The description of a saved model of kind `kind`, checked for kind and format version.
pub(crate) fn read_meta<T: DeserializeOwned>(dir: &Path, kind: &str) -> Result<T> {
    let (meta_path, v) = read_description(dir)?;
    let is_kind = v.get("format").and_then(|f| f.as_str()) == Some(FORMAT)
        && v.get("model").and_then(|m| m.as_str()) == Some(kind);
    if !is_kind {
        return Err(Error::Io(format!(
            "{} does not describe an rscvi {kind} model",
            meta_path.display()
        )));
    }
    let version = v
        .get("format_version")
        .and_then(|f| f.as_u64())
        .unwrap_or(0);
    if version > FORMAT_VERSION as u64 {
        return Err(Error::Io(format!(
            "the model was saved by a newer rscvi (format {version}); update rscvi"
        )));
    }
    serde_json::from_value(v).map_err(|e| {
        Error::Io(format!(
            "{} is not a valid rscvi model description: {e}",
            meta_path.display()
        ))
    })
}

/// Loads the weights saved in `dir` over `blank`. Burn loads tensors whatever their shape:
/// weights that do not match the description would otherwise fail later, or silently
/// compute nonsense, so they are refused here.
pub(crate) fn load_weights<M: Module<Cpu>>(dir: &Path, blank: M) -> Result<M> {
    let expected = shapes(&blank);
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let module = blank
        .load_file(dir.join(WEIGHTS_FILE), &recorder, &Default::default())
        .map_err(|e| Error::Io(format!("cannot read the weights in {}: {e}", dir.display())))?;
    if shapes(&module) != expected {
        return Err(Error::Io(format!(
            "the weights in {} do not match the model description in {META_FILE}",
            dir.display()
        )));
    }
    Ok(module)
}

/// Collects parameter shapes in visiting order (without materialising lazy parameters).
struct Shapes(Vec<Vec<usize>>);

impl<B: Backend> ModuleVisitor<B> for Shapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.lazy_shape().dims::<D>().to_vec());
    }
}

fn shapes<B: Backend, M: Module<B>>(m: &M) -> Vec<Vec<usize>> {
    let mut v = Shapes(Vec::new());
    m.visit(&mut v);
    v.0
}

#[cfg(test)]
mod minified_tests {
    use super::*;
    use crate::data::{toy_dataset, LatentPosterior};

    #[test]
    fn a_minified_dataset_round_trips_and_a_corrupt_one_is_refused() {
        let data = toy_dataset(2);
        let n = data.n_cells();
        let posterior = LatentPosterior {
            n_latent: 3,
            qz_mean: (0..n * 3).map(|i| i as f32).collect(),
            qz_var: vec![0.5; n * 3],
        };
        let mini = data.minified(posterior).unwrap();
        assert!(mini.is_minified() && mini.counts.values.is_empty());
        assert_eq!(mini.log_library, data.log_library);
        assert!(mini.require_counts("training").is_err());
        assert!(data.require_counts("training").is_ok());
        let host = mini.host_batch(&[2, 0], None);
        let (m, v) = host.latent_posterior.unwrap();
        assert_eq!(m, vec![6.0, 7.0, 8.0, 0.0, 1.0, 2.0]);
        assert_eq!(v, vec![0.5; 6]);

        let dir = std::env::temp_dir().join(format!("rscvi-minified-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load_minified(&dir).unwrap().is_none());
        save_minified(&dir, &mini).unwrap();
        let back = load_minified(&dir).unwrap().unwrap();
        assert_eq!(back.latent_posterior.unwrap().qz_mean.len(), n * 3);
        assert_eq!(back.batch.codes, data.batch.codes);
        std::fs::write(dir.join(MINIFIED_FILE), b"not a dataset").unwrap();
        assert!(load_minified(&dir).is_err());
        // well-formed but inconsistent: a posterior for fewer cells
        let mut bad = mini.clone();
        bad.latent_posterior.as_mut().unwrap().qz_mean.truncate(3);
        save_minified(&dir, &bad).unwrap();
        assert!(load_minified(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        // the posterior must match the cells
        let short = LatentPosterior {
            n_latent: 3,
            qz_mean: vec![0.0; 3],
            qz_var: vec![1.0; 3],
        };
        assert!(data.minified(short).is_err());
    }
}
