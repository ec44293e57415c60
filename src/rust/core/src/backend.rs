//! The one place that names concrete Burn backends. CPU: Flex (faster than NdArray on every
//! SCVI-sized measurement in toolchain.md §7). CUDA: behind the `cuda` feature, chosen at run
//! time after probing the driver, so a missing driver is an error, not a backend panic.

use std::any::Any;

use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};

use crate::error::{Error, Result};

#[cfg(not(feature = "ndarray"))]
pub type Cpu = burn::backend::Flex;
/// NdArray instead of Flex, only to re-measure the choice (`--features ndarray`).
#[cfg(feature = "ndarray")]
pub type Cpu = burn::backend::NdArray;
pub type CpuTrain = burn::backend::Autodiff<Cpu>;

/// Whether `B` computes on the host (the CPU backend, with or without autodiff). The fused
/// host kernels pay off only there: on a GPU they would copy a minibatch's activations to
/// the host and back at every step, so the tensor formulas run on the device instead.
pub fn computes_on_host<B: Backend>() -> bool {
    let b = std::any::TypeId::of::<B>();
    b == std::any::TypeId::of::<Cpu>() || b == std::any::TypeId::of::<CpuTrain>()
}

/// The contiguous f32 values of a float tensor primitive of the CPU backend (plain or under
/// autodiff), borrowed in place; None for any other backend, dtype or layout.
#[cfg(not(feature = "ndarray"))]
fn cpu_values(p: &dyn Any) -> Option<&[f32]> {
    type Autodiffed = burn::tensor::ops::FloatTensor<CpuTrain>;
    let flex = p
        .downcast_ref::<burn::backend::flex::FlexTensor>()
        .or_else(|| p.downcast_ref::<Autodiffed>().map(|a| &a.primitive))?;
    flex.as_slice::<f32>()
}

#[cfg(feature = "ndarray")]
fn cpu_values(_: &dyn Any) -> Option<&[f32]> {
    None
}

/// The values of a float tensor on the host, row-major: borrowed from the CPU backend's
/// storage where it can be (Burn's `into_data` copies a shared buffer up to three times, a
/// large share of a MULTIVI step on its 24,744-region matrices), else one copy.
pub enum HostValues<B: Backend> {
    Borrowed(burn::tensor::ops::FloatTensor<B>),
    Owned(Vec<f32>),
}

impl<B: Backend> std::ops::Deref for HostValues<B> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            // Checked when made; the primitive cannot change since.
            Self::Borrowed(p) => cpu_values(p).unwrap_or(&[]),
            Self::Owned(v) => v,
        }
    }
}

/// `t`'s values on the host (see [`HostValues`]).
pub fn host_values<B: Backend, const D: usize>(t: &Tensor<B, D>) -> HostValues<B> {
    if let TensorPrimitive::Float(p) = t.clone().into_primitive() {
        if cpu_values(&p).is_some() {
            return HostValues::Borrowed(p);
        }
    }
    HostValues::Owned(
        t.clone()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default(),
    )
}

/// The contiguous f32 storage of a CPU-backend tensor primitive for writing in place: None
/// for another backend, dtype or layout. A buffer shared with another tensor is copied
/// first, so the other keeps its values.
pub(crate) fn cpu_values_mut(p: &mut dyn Any) -> Option<&mut [f32]> {
    #[cfg(not(feature = "ndarray"))]
    {
        let flex = p.downcast_mut::<burn::backend::flex::FlexTensor>()?;
        let whole = flex.is_contiguous()
            && flex.layout().start_offset() == 0
            && flex.dtype() == burn::tensor::DType::F32
            && flex.bytes().len() == flex.layout().num_elements() * 4;
        whole.then(|| flex.storage_mut::<f32>())
    }
    #[cfg(feature = "ndarray")]
    {
        let _ = p;
        None
    }
}

#[cfg(feature = "cuda")]
pub type Gpu = burn::backend::Cuda;
#[cfg(feature = "cuda")]
pub type GpuTrain = burn::backend::Autodiff<Gpu>;
#[cfg(feature = "cuda")]
pub type GpuDevice = burn::tensor::Device<Gpu>;

/// The first `n` GPUs, one per data-parallel worker.
#[cfg(feature = "cuda")]
pub fn gpu_devices(n: usize) -> Result<Vec<GpuDevice>> {
    if n == 0 {
        return Err(crate::error::invalid_arg("devices", "must be at least 1"));
    }
    Ok((0..n).map(burn::backend::cuda::CudaDevice::new).collect())
}

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
        "auto" if cuda_compiled() && cuda_driver_available() => resolve_device("cuda"),
        "auto" => Ok(DeviceKind::Cpu),
        "cuda" if !cuda_compiled() => Err(Error::Device(
            "rscvi was built without CUDA support; reinstall with RSCVI_FEATURES=cuda".into(),
        )),
        "cuda" if !cuda_driver_available() => Err(Error::Device(
            "no NVIDIA driver found (libcuda.so.1 could not be loaded)".into(),
        )),
        "cuda" => {
            #[cfg(feature = "cuda")]
            configure_gpu_compiler();
            Ok(DeviceKind::Cuda)
        }
        other => Err(Error::InvalidArgument {
            arg: "device".into(),
            msg: format!("must be \"auto\", \"cpu\" or \"cuda\", got \"{other}\""),
        }),
    }
}

/// Where compiled GPU kernels and autotune results are kept between runs:
/// `RSCVI_GPU_CACHE`, else `$XDG_CACHE_HOME/rscvi/cubecl` or `~/.cache/rscvi/cubecl`.
#[cfg(feature = "cuda")]
pub fn gpu_cache_dir() -> Option<std::path::PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dir) = var("RSCVI_GPU_CACHE") {
        return Some(dir.into());
    }
    let base = var("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| var("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("rscvi").join("cubecl"))
}

/// CubeCL's settings for rscvi, made once before the first CUDA device. By default CubeCL
/// compiles every GPU kernel through NVRTC in each new process, and a build with autotune
/// (feature cuda-autotune) compiles and times some 20 candidate kernels per new
/// matrix-product shape: on an H200 the first SCVI epoch had not ended after 200 s, all of
/// it spent compiling. Kept on disk in [`gpu_cache_dir`], compiled kernels (and autotune
/// choices) are paid once per machine; the coarsest autotune keys (level "minimal") leave
/// fewer shapes to tune. A cubecl.toml (or burn.toml) in the working directory or above, or
/// `CUBECL_AUTOTUNE_LEVEL`, still decides.
#[cfg(feature = "cuda")]
fn configure_gpu_compiler() {
    use cubecl_runtime::config::autotune::AutotuneLevel;
    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut config = CubeClRuntimeConfig::from_current_dir();
        let user_file = serde_json::to_value(&config).ok()
            != serde_json::to_value(CubeClRuntimeConfig::default()).ok();
        if !user_file {
            config.autotune.level = AutotuneLevel::Minimal;
            if let Some(dir) = gpu_cache_dir().filter(|d| std::fs::create_dir_all(d).is_ok()) {
                config.compilation.cache = Some(CacheConfig::File(dir.clone()));
                config.autotune.cache = CacheConfig::File(dir);
            }
        }
        let config = config.override_from_env();
        // Not `RuntimeConfig::set`, which panics when CubeCL has read its settings already.
        let mut slot = CubeClRuntimeConfig::storage().lock();
        if slot.is_none() {
            *slot = Some(std::sync::Arc::new(config));
        }
    });
}
