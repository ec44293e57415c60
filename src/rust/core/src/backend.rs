//! The one place that names concrete Burn backends. CPU: Flex (faster than NdArray on every
//! SCVI-sized measurement in toolchain.md §7). CUDA: behind the `cuda` feature, chosen at run
//! time after probing the driver, so a missing driver is an error, not a backend panic.

use crate::error::{Error, Result};

#[cfg(not(feature = "ndarray"))]
pub type Cpu = burn::backend::Flex;
/// NdArray instead of Flex, only to re-measure the choice (`--features ndarray`).
#[cfg(feature = "ndarray")]
pub type Cpu = burn::backend::NdArray;
pub type CpuTrain = burn::backend::Autodiff<Cpu>;

#[cfg(feature = "cuda")]
pub type Gpu = burn::backend::Cuda;
#[cfg(feature = "cuda")]
pub type GpuTrain = burn::backend::Autodiff<Gpu>;
#[cfg(feature = "cuda")]
pub type GpuDevice = burn::tensor::Device<Gpu>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// Whether this build can use CUDA at all.
pub fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// Whether the CUDA driver library can be loaded (checked without touching the backend).
pub fn cuda_driver_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        // SAFETY: loading the driver library runs its initialisers only; no symbol is called.
        unsafe { libloading::Library::new("libcuda.so.1").is_ok() }
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

/// Resolves the user's `device` argument ("auto", "cpu", "cuda").
pub fn resolve_device(request: &str) -> Result<DeviceKind> {
    match request {
        "cpu" => Ok(DeviceKind::Cpu),
        "auto" => Ok(if cuda_compiled() && cuda_driver_available() {
            DeviceKind::Cuda
        } else {
            DeviceKind::Cpu
        }),
        "cuda" if !cuda_compiled() => Err(Error::Device(
            "rscvi was built without CUDA support; reinstall with RSCVI_FEATURES=cuda".into(),
        )),
        "cuda" if !cuda_driver_available() => Err(Error::Device(
            "no NVIDIA driver found (libcuda.so.1 could not be loaded)".into(),
        )),
        "cuda" => Ok(DeviceKind::Cuda),
        other => Err(Error::InvalidArgument {
            arg: "device".into(),
            msg: format!("must be \"auto\", \"cpu\" or \"cuda\", got \"{other}\""),
        }),
    }
}
