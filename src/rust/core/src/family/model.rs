//! A model as users hold it: the module (kept on the CPU between calls), its training state,
//! the registry the front end wrote and the model's own extras; training on any device,
//! save/load and device transfer, written once for every model of the family.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use crate::backend::{Cpu, CpuTrain, DeviceKind};
use crate::data::DataSet;
use crate::error::Result;
use crate::family::{FamilyModule, ModelKind};
use crate::io;
use crate::train::{self, Observer, TrainConfig, TrainState, TrainSummary};

pub struct Model<K: ModelKind> {
    pub module: K::Module<Cpu>,
    pub state: TrainState,
    /// Written by the front end (feature names, category mappings, setup arguments) and
    /// stored verbatim.
    pub registry: serde_json::Value,
    pub extra: K::Extra,
}

impl<K: ModelKind> Clone for Model<K> {
    /// An independent copy (parameters not yet drawn stay lazy in the copy too).
    fn clone(&self) -> Self {
        Self {
            module: self.module.clone(),
            state: self.state.clone(),
            registry: self.registry.clone(),
            extra: self.extra.clone(),
        }
    }
}

/// A model kind whose module trains on backend `B` (its autodiff module wraps the inner one).
pub trait TrainsOn<B: AutodiffBackend>: ModelKind {
    #[allow(clippy::too_many_arguments)]
    fn train_on(
        module: Self::Module<B::InnerBackend>,
        data: &[&DataSet],
        cfg: &TrainConfig,
        extra: &Self::Extra,
        state: &mut TrainState,
        observer: &mut dyn Observer,
        devices: &[B::Device],
        resident_budget: Option<usize>,
    ) -> (Self::Module<B::InnerBackend>, Result<TrainSummary>);
}

impl<K: ModelKind, B: AutodiffBackend> TrainsOn<B> for K
where
    K::Module<B>: AutodiffModule<B, InnerModule = K::Module<B::InnerBackend>>,
{
    fn train_on(
        module: K::Module<B::InnerBackend>,
        data: &[&DataSet],
        cfg: &TrainConfig,
        extra: &K::Extra,
        state: &mut TrainState,
        observer: &mut dyn Observer,
        devices: &[B::Device],
        resident_budget: Option<usize>,
    ) -> (K::Module<B::InnerBackend>, Result<TrainSummary>) {
        train::train::<K, B>(
            module,
            data,
            cfg,
            extra,
            state,
            observer,
            devices,
            resident_budget,
        )
    }
}

/// A model kind that trains on every backend of this build (the CPU, and CUDA with the
/// `cuda` feature); every model of the family is one.
#[cfg(not(feature = "cuda"))]
pub trait TrainableEverywhere: TrainsOn<CpuTrain> {}
#[cfg(not(feature = "cuda"))]
impl<K: TrainsOn<CpuTrain>> TrainableEverywhere for K {}

#[cfg(feature = "cuda")]
pub trait TrainableEverywhere: TrainsOn<CpuTrain> + TrainsOn<crate::backend::GpuTrain> {}
#[cfg(feature = "cuda")]
impl<K: TrainsOn<CpuTrain> + TrainsOn<crate::backend::GpuTrain>> TrainableEverywhere for K {}

/// Device memory the resident dataset may take (RSCVI_GPU_DATA_GB, default 32 GB).
#[cfg(feature = "cuda")]
fn gpu_data_budget() -> usize {
    let gb = std::env::var("RSCVI_GPU_DATA_GB")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(32.0);
    (gb * 1e9) as usize
}

/// The description saved beside the weights (model.json).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SavedMeta<K: ModelKind> {
    format: String,
    format_version: u32,
    package_version: String,
    model: String,
    config: K::Config,
    state: TrainState,
    registry: serde_json::Value,
    #[serde(flatten)]
    extra: K::Extra,
}

impl<K: ModelKind> Model<K> {
    pub fn from_module(
        module: K::Module<Cpu>,
        registry: serde_json::Value,
        extra: K::Extra,
    ) -> Self {
        Self {
            module,
            state: TrainState::default(),
            registry,
            extra,
        }
    }

    pub fn config(&self) -> &K::Config {
        self.module.config()
    }

    /// The number of weights (what a data-parallel step adds up across workers).
    pub fn n_parameters(&self) -> usize {
        burn::module::Module::num_params(&self.module)
    }

    /// A copy of the module on another backend.
    pub fn module_on<Z: Backend>(&self, device: &Z::Device) -> Result<K::Module<Z>> {
        io::transfer(&self.module, K::blank::<Z>(self.config(), device)?, device)
    }

    /// Trains in place. On failure the model keeps the parameters of the last completed
    /// epoch (or its previous parameters when no epoch completed).
    pub fn train(
        &mut self,
        data: &[&DataSet],
        cfg: &TrainConfig,
        device: DeviceKind,
        observer: &mut dyn Observer,
    ) -> Result<TrainSummary>
    where
        K: TrainableEverywhere,
    {
        match device {
            DeviceKind::Cpu => {
                let (m, r) = <K as TrainsOn<CpuTrain>>::train_on(
                    self.module.clone(),
                    data,
                    cfg,
                    &self.extra,
                    &mut self.state,
                    observer,
                    &vec![Default::default(); cfg.devices.max(1)],
                    None,
                );
                self.module = m;
                r
            }
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => {
                let dev = Default::default();
                let on_gpu = self.module_on::<crate::backend::Gpu>(&dev)?;
                let devices = crate::backend::gpu_devices(cfg.devices)?;
                let (m, r) = <K as TrainsOn<crate::backend::GpuTrain>>::train_on(
                    on_gpu,
                    data,
                    cfg,
                    &self.extra,
                    &mut self.state,
                    observer,
                    &devices,
                    Some(gpu_data_budget()),
                );
                let blank = K::blank::<Cpu>(self.config(), &Default::default())?;
                self.module = io::transfer(&m, blank, &Default::default())?;
                r
            }
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda => Err(crate::error::Error::Device(
                "rscvi was built without CUDA support".into(),
            )),
        }
    }

    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<()> {
        let meta = SavedMeta::<K> {
            format: io::FORMAT.into(),
            format_version: io::FORMAT_VERSION,
            package_version: env!("CARGO_PKG_VERSION").into(),
            model: K::NAME.into(),
            config: self.config().clone(),
            state: self.state.clone(),
            registry: self.registry.clone(),
            extra: self.extra.clone(),
        };
        io::save_files(dir, overwrite, &self.module, &meta)
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let meta: SavedMeta<K> = io::read_meta(dir, K::NAME)?;
        let blank = K::blank::<Cpu>(&meta.config, &Default::default())?;
        let module = K::restore(io::load_weights(dir, blank)?, &meta.extra);
        Ok(Self {
            module,
            state: meta.state,
            registry: meta.registry,
            extra: meta.extra,
        })
    }
}

/// Runs `$body` with `$m` bound to the module of `$model` on the requested device and `$d`
/// to the device.
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
