//! Model handles and the entry points every model shares: training, history, state, save
//! and load. A model handle is an external pointer to a `Model<K>`; a new model adds its kind
//! to [`any_model`] and [`rs_model_load`] and gets these entry points for free.

use std::path::Path;

use extendr_api::prelude::*;
use extendr_api::Result;
use rscvi_core::backend::{resolve_device, DeviceKind};
use rscvi_core::data::DataSet;
use rscvi_core::family::arches::FreezeSpec;
use rscvi_core::family::{Model, ModelKind, TrainableEverywhere};
use rscvi_core::models::gimvi::GimviKind;
use rscvi_core::models::multivi::MultiviKind;
use rscvi_core::models::scvi::ScviKind;
use rscvi_core::models::splicevi::SpliceviKind;
use rscvi_core::train::{EpochRecord, Observer, TrainConfig, TrainState, TrainSummary};

use crate::progress::{ProgressMode, RProgress};
use crate::{dataset, from_json, guarded, indices, other};

const STALE_HANDLE: &str = "the model handle is no longer valid (models restored with readRDS() \
                            must be saved with save_model() and loaded with load_model())";

/// The model of kind `K` behind an R handle.
pub(crate) fn handle<K: ModelKind>(m: &Robj) -> Result<&Model<K>> {
    let p: &ExternalPtr<Model<K>> = m
        .try_into()
        .map_err(|_| other(format!("invalid {} model handle", K::NAME)))?;
    p.try_addr().map_err(|_| other(STALE_HANDLE))
}

/// Whether the R handle holds a model of kind `K`.
pub(crate) fn is_kind<K: ModelKind>(m: &Robj) -> bool {
    <&ExternalPtr<Model<K>>>::try_from(m).is_ok()
}

/// Runs `$body` with `$m` bound to the `Model<K>` behind the R handle `$robj`, for the kind
/// `K` among `$kinds` that it is: one branch per kind, each compiled for its own `K`.
macro_rules! with_kind {
    ($robj:expr, [$($kind:ty),+], |$m:ident| $body:expr) => {{
        let robj: &Robj = $robj;
        $(
            if $crate::models::is_kind::<$kind>(robj) {
                let $m = $crate::models::handle::<$kind>(robj)?;
                $body
            } else
        )+
        {
            Err($crate::other("this model does not support this query"))
        }
    }};
}
pub(crate) use with_kind;

/// What a query entry point receives besides its own options: the model, its data, the
/// selected cells (0-based) and the minibatch size.
pub(crate) struct Query<'a, K: ModelKind> {
    pub model: &'a Model<K>,
    pub data: &'a DataSet,
    pub cells: Vec<usize>,
    pub batch_size: usize,
}

impl<'a, K: ModelKind> Query<'a, K> {
    /// The query on the model of kind `K` behind the R handle `model`.
    pub fn of(model: &'a Robj, ds: &'a Robj, idx: &Robj, batch_size: i32) -> Result<Self> {
        Self::new(handle::<K>(model)?, ds, idx, batch_size)
    }

    pub fn new(model: &'a Model<K>, ds: &'a Robj, idx: &Robj, batch_size: i32) -> Result<Self> {
        let data = dataset(ds)?;
        Ok(Self {
            model,
            data,
            cells: indices(idx, data.n_cells())?,
            batch_size: batch_size.max(1) as usize,
        })
    }
}

/// A new R handle owning `model`.
pub(crate) fn new_handle<K: ModelKind>(model: Model<K>) -> Robj {
    ExternalPtr::new(model).into()
}

/// A new model of kind `K`, built by `build` from the R layer's config and registry (JSON).
pub(crate) fn build_model<K: ModelKind>(
    config_json: &str,
    registry_json: &str,
    build: impl FnOnce(K::Config, serde_json::Value) -> rscvi_core::Result<Model<K>>,
) -> Result<Robj> {
    let config: K::Config = from_json(config_json, "model config")?;
    let registry = from_json(registry_json, "registry")?;
    Ok(new_handle(guarded(|| build(config, registry))?))
}

/// A scArches query model of kind `K` from the model `reference` for the query data `ds`:
/// `for_query(reference, config, data, registry, freeze)` builds it.
pub(crate) fn build_query_model<K: ModelKind>(
    reference: &Robj,
    ds: &Robj,
    config_json: &str,
    registry_json: &str,
    freeze_json: &str,
    for_query: impl FnOnce(
        &Model<K>,
        K::Config,
        &DataSet,
        serde_json::Value,
        FreezeSpec,
    ) -> rscvi_core::Result<Model<K>>,
) -> Result<Robj> {
    let (r, data) = (handle::<K>(reference)?, dataset(ds)?);
    let freeze: FreezeSpec = from_json(freeze_json, "freeze options")?;
    build_model(config_json, registry_json, |c, reg| {
        for_query(r, c, data, reg, freeze)
    })
}

/// What the shared entry points need of a model, whatever its kind.
trait AnyModel {
    /// A new handle to an independent copy.
    fn duplicate(&self) -> Robj;
    fn state(&self) -> &TrainState;
    fn config_json(&self) -> String;
    fn registry(&self) -> &serde_json::Value;
    fn save(&self, dir: &Path, overwrite: bool) -> rscvi_core::Result<()>;
    fn train(
        &mut self,
        data: &[&DataSet],
        cfg: &TrainConfig,
        device: DeviceKind,
        observer: &mut dyn Observer,
    ) -> rscvi_core::Result<TrainSummary>;
}

impl<K: TrainableEverywhere> AnyModel for Model<K> {
    fn duplicate(&self) -> Robj {
        new_handle(self.clone())
    }
    fn state(&self) -> &TrainState {
        &self.state
    }
    fn config_json(&self) -> String {
        serde_json::to_string(self.config()).unwrap_or_default()
    }
    fn registry(&self) -> &serde_json::Value {
        &self.registry
    }
    fn save(&self, dir: &Path, overwrite: bool) -> rscvi_core::Result<()> {
        Model::save(self, dir, overwrite)
    }
    fn train(
        &mut self,
        data: &[&DataSet],
        cfg: &TrainConfig,
        device: DeviceKind,
        observer: &mut dyn Observer,
    ) -> rscvi_core::Result<TrainSummary> {
        Model::train(self, data, cfg, device, observer)
    }
}

/// The model behind an R handle, whatever its kind.
fn any_model(m: &mut Robj) -> Result<&mut dyn AnyModel> {
    fn as_kind<K: TrainableEverywhere>(m: &mut Robj) -> Result<&mut dyn AnyModel> {
        let p: &mut ExternalPtr<Model<K>> =
            m.try_into().map_err(|_| other("invalid model handle"))?;
        let model = p.try_addr_mut().map_err(|_| other(STALE_HANDLE))?;
        Ok(model)
    }
    if is_kind::<ScviKind>(m) {
        as_kind::<ScviKind>(m)
    } else if is_kind::<GimviKind>(m) {
        as_kind::<GimviKind>(m)
    } else if is_kind::<MultiviKind>(m) {
        as_kind::<MultiviKind>(m)
    } else if is_kind::<SpliceviKind>(m) {
        as_kind::<SpliceviKind>(m)
    } else {
        Err(other("invalid model handle"))
    }
}

/// Trains the model on its datasets (a list of data handles, in the model's dataset order).
#[extendr]
fn rs_model_train(
    mut model: Robj,
    data: List,
    train_json: &str,
    device: &str,
    progress: &str,
) -> Result<Robj> {
    let handles: Vec<Robj> = data.values().collect();
    let data = handles.iter().map(dataset).collect::<Result<Vec<_>>>()?;
    let cfg: TrainConfig = from_json(train_json, "train config")?;
    let mode = ProgressMode::parse(progress)
        .ok_or_else(|| other(format!("internal: unknown progress mode {progress}")))?;
    let m = any_model(&mut model)?;
    let mut observer = RProgress::new(mode);
    let summary = guarded(|| {
        let kind = resolve_device(device)?;
        m.train(&data, &cfg, kind, &mut observer)
            .map(|summary| (summary, kind))
    });
    observer.finish(summary.is_err());
    let (s, kind) = summary?;
    Ok(list!(
        epochs_run = s.epochs_run as i32,
        max_epochs = s.max_epochs as i32,
        interrupted = s.interrupted,
        early_stopped = s.early_stopped,
        seconds = s.seconds,
        device = kind.name()
    )
    .into())
}

/// The training history as an R list of columns (epochs 1-based).
#[extendr]
fn rs_model_history(mut model: Robj) -> Result<Robj> {
    let h = &any_model(&mut model)?.state().history;
    let opt =
        |f: fn(&EpochRecord) -> Option<f64>| -> Vec<Option<f64>> { h.iter().map(f).collect() };
    let req = |f: fn(&EpochRecord) -> f64| -> Vec<f64> { h.iter().map(f).collect() };
    Ok(list!(
        epoch = h.iter().map(|r| r.epoch as i32 + 1).collect::<Vec<i32>>(),
        elbo_train = req(|r| r.elbo_train),
        elbo_validation = opt(|r| r.elbo_validation),
        reconstruction_loss_train = req(|r| r.reconstruction_loss_train),
        reconstruction_loss_validation = opt(|r| r.reconstruction_loss_validation),
        kl_local_train = req(|r| r.kl_local_train),
        kl_local_validation = opt(|r| r.kl_local_validation),
        kl_weight = req(|r| r.kl_weight),
        train_loss = req(|r| r.train_loss),
        validation_loss = opt(|r| r.validation_loss),
        lr = opt(|r| r.lr),
        seconds = req(|r| r.seconds)
    )
    .into())
}

/// Whether the model is trained, its split of every dataset (1-based cells), its config and
/// registry (JSON).
#[extendr]
fn rs_model_state(mut model: Robj) -> Result<Robj> {
    let m = any_model(&mut model)?;
    let one_based = |v: &Vec<usize>| v.iter().map(|&i| i as i32 + 1).collect::<Vec<i32>>();
    let splits: Vec<Robj> = m
        .state()
        .splits
        .iter()
        .map(|s| {
            list!(
                train = one_based(&s.train),
                validation = one_based(&s.validation),
                test = one_based(&s.test)
            )
            .into()
        })
        .collect();
    Ok(list!(
        is_trained = m.state().is_trained,
        splits = List::from_values(splits),
        config = m.config_json(),
        registry = m.registry().to_string()
    )
    .into())
}

#[extendr]
fn rs_model_save(mut model: Robj, dir: &str, overwrite: bool) -> Result<Robj> {
    let m = any_model(&mut model)?;
    guarded(|| m.save(Path::new(dir), overwrite))?;
    Ok(().into())
}

/// Saves a model in scvi-tools' layout (`dir/model.pt`), for the kinds that have one.
#[extendr]
fn rs_model_save_scvi_tools(model: Robj, dir: &str, overwrite: bool) -> Result<Robj> {
    with_kind!(&model, [ScviKind, GimviKind, MultiviKind], |m| {
        guarded(|| m.save_scvi_tools(Path::new(dir), overwrite))?;
        Ok(().into())
    })
}

/// An independent copy of the model (train() trains a copy: R's copy semantics).
#[extendr]
fn rs_model_copy(mut model: Robj) -> Result<Robj> {
    Ok(any_model(&mut model)?.duplicate())
}

/// Loads the model saved in `dir`, of whatever kind it is.
#[extendr]
fn rs_model_load(dir: &str) -> Result<Robj> {
    let dir = Path::new(dir);
    let kind = guarded(|| rscvi_core::io::saved_model_kind(dir))?;
    if !dir.join("model.json").exists() && rscvi_core::io::scvi_tools::is_scvi_tools_dir(dir) {
        return match kind.as_str() {
            ScviKind::NAME => Ok(new_handle(guarded(|| {
                Model::<ScviKind>::from_scvi_tools(dir)
            })?)),
            MultiviKind::NAME => Ok(new_handle(guarded(|| {
                Model::<MultiviKind>::from_scvi_tools(dir)
            })?)),
            GimviKind::NAME => Ok(new_handle(guarded(|| {
                Model::<GimviKind>::from_scvi_tools(dir)
            })?)),
            other_kind => Err(other(format!(
                "{} holds a {other_kind} model saved by scvi-tools; rscvi reads scvi-tools' SCVI, \
                 MULTIVI and GIMVI models so far",
                dir.display()
            ))),
        };
    }
    match kind.as_str() {
        ScviKind::NAME => Ok(new_handle(guarded(|| Model::<ScviKind>::load(dir))?)),
        GimviKind::NAME => Ok(new_handle(guarded(|| Model::<GimviKind>::load(dir))?)),
        MultiviKind::NAME => Ok(new_handle(guarded(|| Model::<MultiviKind>::load(dir))?)),
        SpliceviKind::NAME => Ok(new_handle(guarded(|| Model::<SpliceviKind>::load(dir))?)),
        other_kind => Err(other(format!(
            "{} holds a {other_kind} model, which this version of rscvi does not know",
            dir.display()
        ))),
    }
}

// R's external-pointer API (SEXP passed as an opaque pointer).
extern "C" {
    fn R_ExternalPtrAddr(s: *mut std::ffi::c_void) -> *mut std::ffi::c_void;
    fn R_SetExternalPtrAddr(s: *mut std::ffi::c_void, p: *mut std::ffi::c_void);
}

/// Frees the model behind a handle revived by [`rs_model_restore`] (laid out as extendr's
/// ExternalPtr, `Box<Box<dyn Any>>`, so that handle() downcasts it as any other).
extern "C" fn free_restored(x: extendr_api::SEXP) {
    unsafe {
        let ptr = R_ExternalPtrAddr(x.cast()).cast::<Box<dyn std::any::Any>>();
        if !ptr.is_null() {
            R_SetExternalPtrAddr(x.cast(), std::ptr::null_mut());
            drop(Box::from_raw(ptr));
        }
    }
}

/// Revives `handle`, an external pointer left empty by readRDS(), in place with the model
/// saved in `dir`: every R copy of the object holding it works again. A live handle is
/// left as it is.
#[extendr]
fn rs_model_restore(handle: Robj, dir: &str) -> Result<()> {
    if !handle.is_external_pointer() {
        return Err(other(
            "internal: a model handle must be an external pointer",
        ));
    }
    if unsafe { !R_ExternalPtrAddr(handle.get().cast()).is_null() } {
        return Ok(());
    }
    let dir = Path::new(dir);
    let kind = guarded(|| rscvi_core::io::saved_model_kind(dir))?;
    fn boxed<K: ModelKind>(dir: &Path) -> Result<Box<dyn std::any::Any>> {
        Ok(Box::new(guarded(|| Model::<K>::load(dir))?))
    }
    let model = match kind.as_str() {
        ScviKind::NAME => boxed::<ScviKind>(dir)?,
        GimviKind::NAME => boxed::<GimviKind>(dir)?,
        MultiviKind::NAME => boxed::<MultiviKind>(dir)?,
        SpliceviKind::NAME => boxed::<SpliceviKind>(dir)?,
        other_kind => {
            return Err(other(format!(
                "the saved model is a {other_kind} model, which this version of rscvi does not know"
            )))
        }
    };
    // SAFETY: `handle` is an external pointer with no address (checked above): it takes
    // ownership of the boxed model, which its finalizer frees.
    unsafe {
        R_SetExternalPtrAddr(handle.get().cast(), Box::into_raw(Box::new(model)).cast());
        handle.register_c_finalizer(Some(free_restored));
    }
    Ok(())
}

/// Whether the model was trained (cheaper than rs_model_state for a check before queries).
#[extendr]
fn rs_model_is_trained(mut model: Robj) -> Result<bool> {
    Ok(any_model(&mut model)?.state().is_trained)
}

extendr_module! {
    mod models;
    fn rs_model_is_trained;
    fn rs_model_restore;
    fn rs_model_train;
    fn rs_model_history;
    fn rs_model_state;
    fn rs_model_save;
    fn rs_model_save_scvi_tools;
    fn rs_model_copy;
    fn rs_model_load;
}
