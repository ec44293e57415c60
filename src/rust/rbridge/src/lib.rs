//! extendr glue: converts R vectors to rscvi-core types and back, turns core errors and panics
//! into R errors, and drives the progress display and Ctrl-C checks. No model logic here.

use std::os::raw::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

use extendr_api::prelude::*;
use extendr_api::{Error, Result};
use rscvi_core::backend::resolve_device;
use rscvi_core::data::{Categorical, CsrMatrix, DataSet};
use rscvi_core::infer::{self, ExpressionQuery};
use rscvi_core::model::ScviModel;
use rscvi_core::scvi::ScviConfig;
use rscvi_core::train::{EpochRecord, Observer, TrainConfig, TrainSummary};
use rscvi_core::{metrics, on_device};

/// A query on an SCVI model on the device the user named, with errors and panics turned into
/// R errors: `guarded` around `on_device!`.
macro_rules! on_device_guarded {
    ($model:expr, $device:expr, |$m:ident, $d:ident| $body:expr) => {
        guarded(|| {
            let kind = resolve_device($device)?;
            on_device!($model, kind, |$m, $d| $body)
        })
    };
}

/// Runs core code, converting its errors and any panic into an R error message.
pub(crate) fn guarded<T>(f: impl FnOnce() -> rscvi_core::Result<T>) -> Result<T> {
    rscvi_core::alloc::tune_allocator();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::Other(e.to_string())),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown cause".into());
            Err(Error::Other(format!(
                "internal error in rscvi (please report it): {msg}"
            )))
        }
    }
}

pub(crate) fn other(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

pub(crate) fn ints(x: &Robj, name: &str) -> Result<Vec<i32>> {
    x.as_integer_slice()
        .map(|s| s.to_vec())
        .ok_or_else(|| other(format!("internal: `{name}` must be an integer vector")))
}

fn reals(x: &Robj, name: &str) -> Result<Vec<f64>> {
    x.as_real_slice()
        .map(|s| s.to_vec())
        .ok_or_else(|| other(format!("internal: `{name}` must be a double vector")))
}

pub(crate) fn indices(x: &Robj, n: usize) -> Result<Vec<usize>> {
    if x.is_null() {
        return Ok((0..n).collect());
    }
    ints(x, "indices")?
        .into_iter()
        .map(|i| {
            if i >= 0 && (i as usize) < n {
                Ok(i as usize)
            } else {
                Err(other(format!("`indices` must lie in 1..{n}")))
            }
        })
        .collect()
}

/// NULL = each cell's own batch; else batch codes, -1 meaning "own batch".
fn transform_batches(x: &Robj) -> Result<Vec<Option<u32>>> {
    if x.is_null() {
        return Ok(vec![None]);
    }
    Ok(ints(x, "transform_batch")?
        .into_iter()
        .map(|b| (b >= 0).then_some(b as u32))
        .collect())
}

fn codes(x: &Robj, n_categories: i32, name: &str) -> Result<Categorical> {
    Ok(Categorical {
        codes: ints(x, name)?
            .into_iter()
            .map(|c| c.max(0) as u32)
            .collect(),
        n_categories: n_categories.max(0) as usize,
    })
}

pub(crate) fn matrix(values: &[f32], n_rows: usize, n_cols: usize) -> Robj {
    RMatrix::new_matrix(n_rows, n_cols, |r, c| values[r * n_cols + c] as f64).into()
}

pub(crate) fn dataset(ds: &Robj) -> Result<&DataSet> {
    let p: &ExternalPtr<DataSet> = ds.try_into().map_err(|_| other("invalid data handle"))?;
    p.try_addr()
        .map_err(|_| other("the data handle is no longer valid"))
}

fn model_ref(m: &Robj) -> Result<&ScviModel> {
    let p: &ExternalPtr<ScviModel> = m.try_into().map_err(|_| other("invalid model handle"))?;
    p.try_addr().map_err(|_| {
        other("the model handle is no longer valid (models restored with readRDS() must be saved with save_model() and loaded with load_model())")
    })
}

/// The model, its data and the selected cells (0-based) of a query call.
fn model_data_cells<'a>(
    model: &'a Robj,
    ds: &'a Robj,
    idx: &Robj,
) -> Result<(&'a ScviModel, &'a DataSet, Vec<usize>)> {
    let (m, data) = (model_ref(model)?, dataset(ds)?);
    let cells = indices(idx, data.n_cells())?;
    Ok((m, data, cells))
}

fn model_mut(m: &mut Robj) -> Result<&mut ScviModel> {
    let p: &mut ExternalPtr<ScviModel> = m.try_into().map_err(|_| other("invalid model handle"))?;
    p.try_addr_mut()
        .map_err(|_| other("the model handle is no longer valid"))
}

/// `library_size`: a number, or NaN for the latent library.
/// Counts (dgCMatrix slots of a genes x cells matrix = CSR of cells x genes) and covariates.
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_dataset_new(
    p: Robj,
    i: Robj,
    x: Robj,
    n_genes: i32,
    batch: Robj,
    n_batch: i32,
    labels: Robj,
    n_labels: i32,
    cat_covs: Robj,
    cat_sizes: Robj,
    cont_covs: Robj,
    size_factor: Robj,
) -> Result<Robj> {
    let p = ints(&p, "p")?;
    let n_cells = p.len().saturating_sub(1);
    let indptr = p.iter().map(|&v| v.max(0) as usize).collect();
    let indices = ints(&i, "i")?
        .into_iter()
        .map(|v| v.max(0) as u32)
        .collect();
    let values = reals(&x, "x")?.into_iter().map(|v| v as f32).collect();
    let cat_codes = ints(&cat_covs, "cat_covs")?;
    let cat_sizes = ints(&cat_sizes, "cat_sizes")?;
    let cats = cat_sizes
        .iter()
        .enumerate()
        .map(|(k, &size)| Categorical {
            codes: cat_codes[k * n_cells..(k + 1) * n_cells]
                .iter()
                .map(|&c| c.max(0) as u32)
                .collect(),
            n_categories: size.max(0) as usize,
        })
        .collect();
    let cont = reals(&cont_covs, "cont_covs")?;
    let conts = if n_cells == 0 {
        vec![]
    } else {
        cont.chunks(n_cells)
            .map(|c| c.iter().map(|&v| v as f32).collect())
            .collect()
    };
    let sf = if size_factor.is_null() {
        None
    } else {
        Some(
            reals(&size_factor, "size_factor")?
                .into_iter()
                .map(|v| v as f32)
                .collect(),
        )
    };
    let batch = codes(&batch, n_batch, "batch")?;
    let labels = codes(&labels, n_labels, "labels")?;
    let ds = guarded(|| {
        let counts = CsrMatrix::new(n_cells, n_genes.max(0) as usize, indptr, indices, values)?;
        DataSet::new(counts, batch, labels, cats, conts, sf)
    })?;
    Ok(ExternalPtr::new(ds).into())
}

#[extendr]
fn rs_scvi_new(ds: Robj, config_json: &str, registry_json: &str) -> Result<Robj> {
    let data = dataset(&ds)?;
    let config: ScviConfig = serde_json::from_str(config_json)
        .map_err(|e| other(format!("internal: bad model config: {e}")))?;
    let registry: serde_json::Value = serde_json::from_str(registry_json)
        .map_err(|e| other(format!("internal: bad registry: {e}")))?;
    let model = guarded(|| ScviModel::new(config, data, registry))?;
    Ok(ExternalPtr::new(model).into())
}

extern "C" {
    fn R_ToplevelExec(fun: Option<unsafe extern "C" fn(*mut c_void)>, data: *mut c_void) -> c_int;
    fn R_CheckUserInterrupt();
}

unsafe extern "C" fn check_interrupt(_: *mut c_void) {
    R_CheckUserInterrupt();
}

/// True when the user pressed Ctrl-C. R_CheckUserInterrupt would longjmp over Rust frames;
/// inside R_ToplevelExec the jump ends there and only the return value tells.
pub(crate) fn interrupt_pending() -> bool {
    unsafe { R_ToplevelExec(Some(check_interrupt), std::ptr::null_mut()) == 0 }
}

pub(crate) struct RProgress {
    show: bool,
    last_draw: Option<Instant>,
    interrupted: bool,
}

impl RProgress {
    pub(crate) fn new(show: bool) -> Self {
        Self {
            show,
            last_draw: None,
            interrupted: false,
        }
    }

    /// Ends the progress line when training stopped early (Ctrl-C or an error).
    pub(crate) fn finish(&self, failed: bool) {
        if self.show && self.last_draw.is_some() && (self.interrupted || failed) {
            reprint!("\n");
        }
    }
}

fn fmt_secs(s: f64) -> String {
    if s >= 3600.0 {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    } else if s >= 60.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{s:.0}s")
    }
}

impl Observer for RProgress {
    fn on_epoch(&mut self, r: &EpochRecord, done: usize, total: usize, elapsed: f64) {
        if !self.show {
            return;
        }
        let finished = done == total;
        if !finished
            && self
                .last_draw
                .is_some_and(|t| t.elapsed().as_secs_f64() < 0.2)
        {
            return;
        }
        self.last_draw = Some(Instant::now());
        let width = 20;
        let filled = done * width / total.max(1);
        let eta = elapsed / done as f64 * (total - done) as f64;
        let val = r
            .elbo_validation
            .map_or(String::new(), |v| format!(" elbo_validation {v:.1}"));
        reprint!(
            "\rEpoch {done}/{total} [{}{}] {} elapsed, ETA {} | elbo_train {:.1}{val}   ",
            "=".repeat(filled),
            " ".repeat(width - filled),
            fmt_secs(elapsed),
            fmt_secs(eta),
            r.elbo_train
        );
        if finished {
            reprint!("\n");
        }
    }

    fn should_stop(&mut self) -> bool {
        if interrupt_pending() {
            self.interrupted = true;
        }
        self.interrupted
    }
}

#[extendr]
fn rs_scvi_train(
    mut model: Robj,
    ds: Robj,
    train_json: &str,
    device: &str,
    progress: bool,
) -> Result<Robj> {
    let data = dataset(&ds)?.clone();
    let cfg: TrainConfig = serde_json::from_str(train_json)
        .map_err(|e| other(format!("internal: bad train config: {e}")))?;
    let m = model_mut(&mut model)?;
    let mut observer = RProgress::new(progress);
    let summary = guarded(|| {
        let kind = resolve_device(device)?;
        m.train(&data, &cfg, kind, &mut observer)
    });
    observer.finish(summary.is_err());
    Ok(summary_list(&summary?))
}

pub(crate) fn summary_list(s: &TrainSummary) -> Robj {
    list!(
        epochs_run = s.epochs_run as i32,
        max_epochs = s.max_epochs as i32,
        interrupted = s.interrupted,
        early_stopped = s.early_stopped,
        seconds = s.seconds
    )
    .into()
}

#[extendr]
fn rs_scvi_history(model: Robj) -> Result<Robj> {
    Ok(history_list(&model_ref(&model)?.state.history))
}

/// A training history as an R list of columns (epochs 1-based).
pub(crate) fn history_list(h: &[EpochRecord]) -> Robj {
    let opt =
        |f: fn(&EpochRecord) -> Option<f64>| -> Vec<Option<f64>> { h.iter().map(f).collect() };
    let req = |f: fn(&EpochRecord) -> f64| -> Vec<f64> { h.iter().map(f).collect() };
    list!(
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
        seconds = req(|r| r.seconds)
    )
    .into()
}

#[extendr]
fn rs_scvi_state(model: Robj) -> Result<Robj> {
    let m = model_ref(&model)?;
    let one_based = |v: &Vec<usize>| v.iter().map(|&i| i as i32 + 1).collect::<Vec<i32>>();
    let s = &m.state.split;
    Ok(list!(
        is_trained = m.state.is_trained,
        train = one_based(&s.train),
        validation = one_based(&s.validation),
        test = one_based(&s.test),
        config = serde_json::to_string(m.config()).unwrap_or_default(),
        registry = m.registry.to_string()
    )
    .into())
}

#[extendr]
fn rs_scvi_latent(
    model: Robj,
    ds: Robj,
    idx: Robj,
    give_mean: bool,
    mc_samples: i32,
    batch_size: i32,
    device: &str,
) -> Result<Robj> {
    let (m, data, cells) = model_data_cells(&model, &ds, &idx)?;
    let (z, mean, var) = on_device_guarded!(m, device, |module, dev| infer::latent(
        module,
        data,
        &cells,
        give_mean,
        mc_samples.max(1) as usize,
        batch_size.max(1) as usize,
        dev
    ))?;
    Ok(list!(
        z = matrix(&z.values, z.n_rows, z.n_cols),
        mean = matrix(&mean.values, mean.n_rows, mean.n_cols),
        var = matrix(&var.values, var.n_rows, var.n_cols)
    )
    .into())
}

#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_scvi_normalized_expression(
    model: Robj,
    ds: Robj,
    idx: Robj,
    transform_batch: Robj,
    genes: Robj,
    library_size: f64,
    n_samples: i32,
    batch_size: i32,
    device: &str,
) -> Result<Robj> {
    let (m, data, cells) = model_data_cells(&model, &ds, &idx)?;
    let tb = transform_batches(&transform_batch)?;
    let gene_idx = if genes.is_null() {
        None
    } else {
        Some(indices(&genes, data.n_genes())?)
    };
    let q = ExpressionQuery {
        cells: &cells,
        transform_batch: tb,
        genes: gene_idx.as_deref(),
        library_size: library_size.is_finite().then_some(library_size),
        n_samples: n_samples.max(1) as usize,
        batch_size: batch_size.max(1) as usize,
    };
    let out = on_device_guarded!(m, device, |module, dev| infer::normalized_expression(
        module, data, &q, dev
    ))?;
    Ok(matrix(&out.values, out.n_rows, out.n_cols))
}

#[extendr]
fn rs_scvi_elbo_terms(
    model: Robj,
    ds: Robj,
    idx: Robj,
    batch_size: i32,
    device: &str,
) -> Result<Robj> {
    let (m, data, cells) = model_data_cells(&model, &ds, &idx)?;
    let (rec, kl) = on_device_guarded!(m, device, |module, dev| infer::elbo_terms(
        module,
        data,
        &cells,
        batch_size.max(1) as usize,
        dev
    ))?;
    Ok(list!(reconstruction_loss = rec, kl_local = kl).into())
}

#[extendr]
fn rs_scvi_marginal_ll(
    model: Robj,
    ds: Robj,
    idx: Robj,
    n_mc_samples: i32,
    batch_size: i32,
    device: &str,
) -> Result<Robj> {
    let (m, data, cells) = model_data_cells(&model, &ds, &idx)?;
    let v = on_device_guarded!(m, device, |module, dev| infer::marginal_ll(
        module,
        data,
        &cells,
        n_mc_samples.max(0) as usize,
        batch_size.max(1) as usize,
        dev
    ))?;
    Ok(v.into())
}

/// Differential expression between two cell sets (0-based); `pseudocount` NaN = estimate;
/// `batches1/2` NULL = observed batches, else batch codes to marginalise over.
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_scvi_de(
    model: Robj,
    ds: Robj,
    idx1: Robj,
    idx2: Robj,
    change_mode: bool,
    delta: f64,
    three_states: bool,
    pseudocount: f64,
    batches1: Robj,
    batches2: Robj,
    n_samples_overall: i32,
    batch_size: i32,
    fdr_target: f64,
    levels: Robj,
    seed: f64,
    filter_outlier_cells: bool,
    importance_json: &str,
    device: &str,
) -> Result<Robj> {
    let (m, data) = (model_ref(&model)?, dataset(&ds)?);
    let cells1 = indices(&idx1, data.n_cells())?;
    let cells2 = indices(&idx2, data.n_cells())?;
    let codes = |b: &Robj| -> Result<Option<Vec<u32>>> {
        if b.is_null() {
            return Ok(None);
        }
        Ok(Some(
            ints(b, "batches")?
                .into_iter()
                .map(|v| v.max(0) as u32)
                .collect(),
        ))
    };
    let req = infer::DeRequest {
        cells1: &cells1,
        cells2: &cells2,
        change_mode,
        delta,
        test_mode: if three_states {
            rscvi_core::de::TestMode::Three
        } else {
            rscvi_core::de::TestMode::Two
        },
        pseudocount: pseudocount.is_finite().then_some(pseudocount),
        batches1: codes(&batches1)?,
        batches2: codes(&batches2)?,
        n_samples_overall: n_samples_overall.max(1) as usize,
        batch_size: batch_size.max(1) as usize,
        fdr_target,
        interval_levels: if levels.is_null() {
            vec![]
        } else {
            reals(&levels, "levels")?
        },
        seed: seed.max(0.0) as u64,
        weights: row_weights(importance_json)?,
        filter_outlier_cells,
    };
    let table = on_device_guarded!(m, device, |module, dev| infer::differential_expression(
        module, data, &req, dev
    ))?;
    let names: Vec<String> = table.columns.iter().map(|(n, _)| n.clone()).collect();
    let values: Vec<Robj> = table
        .columns
        .into_iter()
        .map(|(_, v)| Robj::from(v))
        .collect();
    let mut cols = List::from_values(values);
    cols.set_names(names)?;
    Ok(list!(
        columns = cols,
        is_de = table.is_de.map(Robj::from).unwrap_or(().into())
    )
    .into())
}

#[extendr]
fn rs_scvi_likelihood_parameters(
    model: Robj,
    ds: Robj,
    idx: Robj,
    batch_size: i32,
    device: &str,
) -> Result<Robj> {
    let (m, data, cells) = model_data_cells(&model, &ds, &idx)?;
    let p = on_device_guarded!(m, device, |module, dev| infer::likelihood_parameters(
        module,
        data,
        &cells,
        batch_size.max(1) as usize,
        dev
    ))?;
    let opt =
        |x: Option<infer::Matrix>| x.map_or(().into(), |x| matrix(&x.values, x.n_rows, x.n_cols));
    Ok(list!(
        mean = matrix(&p.mean.values, p.mean.n_rows, p.mean.n_cols),
        dispersions = opt(p.dispersions),
        dropout = opt(p.dropout)
    )
    .into())
}

#[extendr]
fn rs_scvi_library_size(
    model: Robj,
    ds: Robj,
    idx: Robj,
    give_mean: bool,
    batch_size: i32,
    device: &str,
) -> Result<Robj> {
    let (m, data, cells) = model_data_cells(&model, &ds, &idx)?;
    let v = on_device_guarded!(m, device, |module, dev| infer::latent_library_size(
        module,
        data,
        &cells,
        give_mean,
        batch_size.max(1) as usize,
        dev
    ))?;
    Ok(v.into())
}

#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_scvi_posterior_predictive(
    model: Robj,
    ds: Robj,
    idx: Robj,
    genes: Robj,
    batch_size: i32,
    seed: f64,
    device: &str,
) -> Result<Robj> {
    let (m, data, cells) = model_data_cells(&model, &ds, &idx)?;
    let gene_idx = if genes.is_null() {
        None
    } else {
        Some(indices(&genes, data.n_genes())?)
    };
    let out = on_device_guarded!(m, device, |module, dev| infer::posterior_predictive_sample(
        module,
        data,
        &cells,
        gene_idx.as_deref(),
        batch_size.max(1) as usize,
        seed.max(0.0) as u64,
        dev
    ))?;
    Ok(matrix(&out.values, out.n_rows, out.n_cols))
}

#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_scvi_feature_correlation(
    model: Robj,
    ds: Robj,
    idx: Robj,
    transform_batch: Robj,
    n_samples: i32,
    rna_size_factor: f64,
    spearman: bool,
    batch_size: i32,
    seed: f64,
    device: &str,
) -> Result<Robj> {
    let (m, data, cells) = model_data_cells(&model, &ds, &idx)?;
    let tb = transform_batches(&transform_batch)?;
    let g = data.n_genes();
    let v = on_device_guarded!(m, device, |module, dev| infer::feature_correlation(
        module,
        data,
        &cells,
        &tb,
        n_samples.max(1) as usize,
        rna_size_factor,
        spearman,
        batch_size.max(1) as usize,
        seed.max(0.0) as u64,
        dev
    ))?;
    Ok(RMatrix::new_matrix(g, g, |r, c| v[r * g + c]).into())
}

/// Uniform row draws for "", else importance weights with the options of this JSON object.
fn row_weights(importance_json: &str) -> Result<infer::RowWeights> {
    if importance_json.is_empty() {
        return Ok(infer::RowWeights::Uniform);
    }
    let opts = serde_json::from_str(importance_json)
        .map_err(|e| other(format!("`importance_weighting_kwargs`: {e}")))?;
    Ok(infer::RowWeights::Importance(opts))
}

/// `m` rows of rho * library_size drawn from the posterior of `idx` (n_samples_overall),
/// uniformly or with importance weights (`importance_json`, see `row_weights`).
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_scvi_scale_samples(
    model: Robj,
    ds: Robj,
    idx: Robj,
    transform_batch: i32,
    library_size: f64,
    m: i32,
    importance_json: &str,
    batch_size: i32,
    seed: f64,
    device: &str,
) -> Result<Robj> {
    use rscvi_core::rand_seeded;
    let (mdl, data, cells) = model_data_cells(&model, &ds, &idx)?;
    let g = data.n_genes();
    let m = m.max(1) as usize;
    let weights = row_weights(importance_json)?;
    let mut rng = rand_seeded(seed.max(0.0) as u64);
    let v = on_device_guarded!(mdl, device, |module, dev| infer::scale_samples(
        module,
        data,
        &cells,
        (transform_batch >= 0).then_some(transform_batch as u32),
        library_size as f32,
        m,
        &weights,
        batch_size.max(1) as usize,
        &mut rng,
        dev
    ))?;
    Ok(matrix(&v, m, g))
}

/// A scArches query model from `reference` for the query data `ds`.
#[extendr]
fn rs_scvi_query_new(
    reference: Robj,
    ds: Robj,
    config_json: &str,
    registry_json: &str,
    freeze_json: &str,
) -> Result<Robj> {
    let (r, data) = (model_ref(&reference)?, dataset(&ds)?);
    let config: ScviConfig = serde_json::from_str(config_json)
        .map_err(|e| other(format!("internal: bad model config: {e}")))?;
    let registry: serde_json::Value = serde_json::from_str(registry_json)
        .map_err(|e| other(format!("internal: bad registry: {e}")))?;
    let freeze: rscvi_core::scarches::FreezeSpec = serde_json::from_str(freeze_json)
        .map_err(|e| other(format!("internal: bad freeze options: {e}")))?;
    let m = guarded(|| ScviModel::for_query(r, config, data, registry, freeze))?;
    Ok(ExternalPtr::new(m).into())
}

#[extendr]
fn rs_scvi_save(model: Robj, dir: &str, overwrite: bool) -> Result<Robj> {
    let m = model_ref(&model)?;
    guarded(|| m.save(Path::new(dir), overwrite))?;
    Ok(().into())
}

#[extendr]
fn rs_scvi_load(dir: &str) -> Result<Robj> {
    let m = guarded(|| ScviModel::load(Path::new(dir)))?;
    Ok(ExternalPtr::new(m).into())
}

fn embedding(emb: &Robj) -> Result<(Vec<f32>, usize)> {
    let v = reals(emb, "embedding")?;
    let dims = emb
        .dim()
        .ok_or_else(|| other("`embedding` must be a matrix"))?;
    let dims: Vec<i32> = dims.iter().map(|x| x.0).collect();
    if dims.len() != 2 {
        return Err(other("`embedding` must be a matrix"));
    }
    let (n, d) = (dims[0].max(0) as usize, dims[1].max(0) as usize);
    let mut rows = vec![0f32; n * d];
    for c in 0..d {
        for r in 0..n {
            rows[r * d + c] = v[c * n + r] as f32;
        }
    }
    Ok((rows, d))
}

#[extendr]
fn rs_knn_purity(emb: Robj, labels: Robj, k: i32) -> Result<f64> {
    let (rows, d) = embedding(&emb)?;
    let labels: Vec<u32> = ints(&labels, "labels")?
        .into_iter()
        .map(|v| v.max(0) as u32)
        .collect();
    guarded(|| metrics::knn_purity(&rows, d, &labels, k.max(0) as usize))
}

#[extendr]
fn rs_batch_mixing(emb: Robj, labels: Robj, batches: Robj, k: i32) -> Result<f64> {
    let (rows, d) = embedding(&emb)?;
    let labels: Vec<u32> = ints(&labels, "labels")?
        .into_iter()
        .map(|v| v.max(0) as u32)
        .collect();
    let batches: Vec<u32> = ints(&batches, "batches")?
        .into_iter()
        .map(|v| v.max(0) as u32)
        .collect();
    guarded(|| metrics::batch_mixing(&rows, d, &labels, &batches, k.max(0) as usize))
}

/// The kind of model saved in `dir` ("SCVI", "GIMVI").
#[extendr]
fn rs_saved_model_kind(dir: &str) -> Result<String> {
    guarded(|| rscvi_core::model::saved_model_kind(Path::new(dir)))
}

#[extendr]
fn rs_device_info() -> Robj {
    list!(
        cuda_compiled = rscvi_core::backend::cuda_compiled(),
        cuda_driver = rscvi_core::backend::cuda_driver_available(),
        auto = resolve_device("auto").map(|d| d.name()).unwrap_or("cpu")
    )
    .into()
}

mod gimvi;

extendr_module! {
    mod rscvi;
    use gimvi;
    fn rs_dataset_new;
    fn rs_scvi_new;
    fn rs_scvi_train;
    fn rs_scvi_history;
    fn rs_scvi_state;
    fn rs_scvi_latent;
    fn rs_scvi_normalized_expression;
    fn rs_scvi_elbo_terms;
    fn rs_scvi_marginal_ll;
    fn rs_scvi_de;
    fn rs_scvi_likelihood_parameters;
    fn rs_scvi_library_size;
    fn rs_scvi_posterior_predictive;
    fn rs_scvi_feature_correlation;
    fn rs_scvi_scale_samples;
    fn rs_scvi_query_new;
    fn rs_scvi_save;
    fn rs_scvi_load;
    fn rs_knn_purity;
    fn rs_batch_mixing;
    fn rs_saved_model_kind;
    fn rs_device_info;
}
