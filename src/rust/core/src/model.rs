//! A trained-or-not SCVI model as users hold it: the module (kept on the CPU between calls),
//! its training state and the data registry; save/load; device dispatch.

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backend::{Cpu, CpuTrain, DeviceKind};
use crate::data::{library_prior, DataSet};
use crate::error::{Error, Result};
use crate::scvi::{Scvi, ScviConfig};
use crate::train::{self, Observer, TrainConfig, TrainState, TrainSummary};

pub const FORMAT_VERSION: u32 = 1;
const WEIGHTS_FILE: &str = "model.mpk";
const META_FILE: &str = "model.json";

pub struct ScviModel {
    pub module: Scvi<Cpu>,
    /// scArches freezing of a query model (None: everything trains).
    pub freeze: Option<crate::scarches::FreezeSpec>,
    pub state: TrainState,
    /// Registry written by the front end (gene names, category mappings, setup arguments);
    /// stored verbatim.
    pub registry: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct SavedMeta {
    format: String,
    format_version: u32,
    package_version: String,
    model: String,
    config: ScviConfig,
    state: TrainState,
    registry: serde_json::Value,
    #[serde(default)]
    freeze: Option<crate::scarches::FreezeSpec>,
}

/// Moves a module between backends through Burn's byte recorder: the record of `m` is
/// loaded over `blank`, a module of the same architecture on the target backend.
pub(crate) fn transfer<A: Backend, Z: Backend, MA: Module<A>, MZ: Module<Z>>(
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

/// An SCVI module with blank parameters of the right shapes (weights are loaded over it).
fn blank_scvi<B: Backend>(c: &ScviConfig, device: &B::Device) -> Result<Scvi<B>> {
    Scvi::new(
        c.clone(),
        (vec![0.0; c.n_batch], vec![1.0; c.n_batch]),
        device,
    )
}

fn convert<A: Backend, Z: Backend>(m: &Scvi<A>, device: &Z::Device) -> Result<Scvi<Z>> {
    transfer(m, blank_scvi::<Z>(&m.config, device)?, device)
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

/// The kind ("SCVI", "GIMVI", ...) of the model saved in `dir`.
pub fn saved_model_kind(dir: &Path) -> Result<String> {
    let (meta_path, v) = read_description(dir)?;
    match (
        v.get("format").and_then(|f| f.as_str()),
        v.get("model").and_then(|m| m.as_str()),
    ) {
        (Some("rscvi"), Some(m)) => Ok(m.to_string()),
        _ => Err(Error::Io(format!(
            "{} does not describe an rscvi model",
            meta_path.display()
        ))),
    }
}

/// The description of a saved model of kind `kind`, checked for kind and format version.
pub(crate) fn read_meta<T: DeserializeOwned>(dir: &Path, kind: &str) -> Result<T> {
    let (meta_path, v) = read_description(dir)?;
    let is_kind = v.get("format").and_then(|f| f.as_str()) == Some("rscvi")
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

/// Runs `$body` with `$m` bound to the module on the requested device and `$d` to the device.
#[macro_export]
macro_rules! on_device {
    ($model:expr, $kind:expr, |$m:ident, $d:ident| $body:expr) => {{
        match $kind {
            $crate::backend::DeviceKind::Cpu => {
                let $d = &Default::default();
                let $m = &$model.module;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::backend::DeviceKind::Cuda => {
                let dev: $crate::backend::GpuDevice = Default::default();
                let moved = $model.module_on::<$crate::backend::Gpu>(&dev)?;
                let $d = &dev;
                let $m = &moved;
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::backend::DeviceKind::Cuda => {
                return Err($crate::error::Error::Device(
                    "rscvi was built without CUDA support".into(),
                )
                .into())
            }
        }
    }};
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

/// Device memory the resident dataset may take (RSCVI_GPU_DATA_GB, default 32 GB).
#[cfg(feature = "cuda")]
fn gpu_data_budget() -> usize {
    let gb = std::env::var("RSCVI_GPU_DATA_GB")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(32.0);
    (gb * 1e9) as usize
}

impl ScviModel {
    pub fn new(config: ScviConfig, data: &DataSet, registry: serde_json::Value) -> Result<Self> {
        if data.n_genes() != config.n_input || data.batch.n_categories != config.n_batch {
            return Err(Error::InvalidData(
                "model dimensions do not match the data".into(),
            ));
        }
        let prior = library_prior(data);
        Ok(Self {
            module: Scvi::new(config, prior, &Default::default())?,
            state: TrainState::default(),
            registry,
            freeze: None,
        })
    }

    /// A query model for `data` (scArches): `config` has the query's (extended) category
    /// counts; weights come from `reference`, grown where categories were added; `freeze`
    /// says what trains.
    pub fn for_query(
        reference: &ScviModel,
        config: ScviConfig,
        data: &DataSet,
        registry: serde_json::Value,
        freeze: crate::scarches::FreezeSpec,
    ) -> Result<Self> {
        let fresh = Self::new(config, data, registry)?;
        let module = crate::scarches::transfer_weights(&reference.module, fresh.module)?;
        let module = crate::scarches::apply_module_freeze(module, &freeze);
        Ok(Self {
            module,
            freeze: Some(freeze),
            state: fresh.state,
            registry: fresh.registry,
        })
    }

    pub fn config(&self) -> &ScviConfig {
        &self.module.config
    }

    pub fn module_on<Z: Backend>(&self, device: &Z::Device) -> Result<Scvi<Z>> {
        convert::<Cpu, Z>(&self.module, device)
    }

    /// Trains in place. On failure the model keeps the parameters of the last completed
    /// epoch (or its previous parameters when no epoch completed).
    pub fn train(
        &mut self,
        data: &DataSet,
        cfg: &TrainConfig,
        device: DeviceKind,
        observer: &mut dyn Observer,
    ) -> Result<TrainSummary> {
        match device {
            DeviceKind::Cpu => {
                let (m, r) = train::train::<CpuTrain>(
                    self.module.clone(),
                    data,
                    cfg,
                    &mut self.state,
                    observer,
                    &Default::default(),
                    None,
                    self.freeze.as_ref(),
                );
                self.module = m;
                r
            }
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => {
                let dev = Default::default();
                let on_gpu = self.module_on::<crate::backend::Gpu>(&dev)?;
                let (m, r) = train::train::<crate::backend::GpuTrain>(
                    on_gpu,
                    data,
                    cfg,
                    &mut self.state,
                    observer,
                    &dev,
                    Some(gpu_data_budget()),
                    self.freeze.as_ref(),
                );
                self.module = convert::<crate::backend::Gpu, Cpu>(&m, &Default::default())?;
                r
            }
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda => Err(Error::Device("rscvi was built without CUDA support".into())),
        }
    }

    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<()> {
        let meta = SavedMeta {
            format: "rscvi".into(),
            format_version: FORMAT_VERSION,
            package_version: env!("CARGO_PKG_VERSION").into(),
            model: "SCVI".into(),
            config: self.module.config.clone(),
            state: self.state.clone(),
            registry: self.registry.clone(),
            freeze: self.freeze.clone(),
        };
        save_files(dir, overwrite, &self.module, &meta)
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let meta: SavedMeta = read_meta(dir, "SCVI")?;
        let module = load_weights(dir, blank_scvi::<Cpu>(&meta.config, &Default::default())?)?;
        let module = match &meta.freeze {
            Some(f) => crate::scarches::apply_module_freeze(module, f),
            None => module,
        };
        Ok(Self {
            module,
            freeze: meta.freeze,
            state: meta.state,
            registry: meta.registry,
        })
    }
}
