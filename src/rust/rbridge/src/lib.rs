//! extendr glue: converts R vectors to rscvi-core types and back, turns core errors and panics
//! into R errors, and drives the progress display and Ctrl-C checks. No model logic here.

//!
//! One file per model (`scvi.rs`, `gimvi.rs`) holds that model's constructor and its own
//! queries; `models.rs` the model handles and the entry points every model shares (train,
//! history, state, save, load), `queries.rs` the shared queries (latent, ELBO, expression,
//! DE); this file the conversions and the guarded call they all use.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use extendr_api::prelude::*;
use extendr_api::{Error, Result};
use rscvi_core::backend::resolve_device;
use std::sync::Arc;

use rscvi_core::data::{
    check_counts_memory, count_summary, Categorical, CountBlock, CsrMatrix, DataSet, Indices,
    SharedIndices,
};
use rscvi_core::io::h5;
use rscvi_core::metrics;

mod gimvi;
mod io;
mod models;
mod multivi;
mod progress;
mod queries;
mod scvi;
mod splicevi;

/// A query on a model on the device the user named, with errors and panics turned into R
/// errors: `guarded` around `on_device!`.
macro_rules! on_device_guarded {
    ($model:expr, $device:expr, |$m:ident, $d:ident| $body:expr) => {
        $crate::guarded(|| {
            let kind = rscvi_core::backend::resolve_device($device)?;
            rscvi_core::on_device!($model, kind, |$m, $d| $body)
        })
    };
}
pub(crate) use on_device_guarded;

/// Runs core code, converting its errors and any panic into an R error message.
pub(crate) fn guarded<T>(f: impl FnOnce() -> rscvi_core::Result<T>) -> Result<T> {
    rscvi_core::alloc::tune_allocator();
    // Long queries poll for Ctrl-C and report their progress on this, R's, thread.
    rscvi_core::interrupt::set_poll(crate::progress::interrupt_pending);
    rscvi_core::interrupt::set_reporter(crate::progress::report_query);
    crate::progress::start_query();
    let result = catch_unwind(AssertUnwindSafe(f));
    crate::progress::end_query();
    match result {
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

pub(crate) fn reals(x: &Robj, name: &str) -> Result<Vec<f64>> {
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
pub(crate) fn transform_batches(x: &Robj) -> Result<Vec<Option<u32>>> {
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

/// A dgCMatrix's `i` slot read in place as the core's column indices: the R vector stays
/// protected while the core holds it, so the user's counts are not copied.
struct RIndices {
    _owner: Robj,
    ptr: *const u32,
    len: usize,
}

// SAFETY: R never moves a vector, and copies one that is referenced from elsewhere (here:
// this protected handle) before changing it, so the memory stays valid and unchanged while
// `_owner` lives; the core only reads it. The handle is dropped with its dataset by R's
// finalizer, on R's thread.
unsafe impl Send for RIndices {}
unsafe impl Sync for RIndices {}

impl SharedIndices for RIndices {
    fn indices(&self) -> &[u32] {
        // SAFETY: see above; an i32 reads as the u32 of the same bits (a negative index
        // becomes one out of range, which CsrMatrix::new refuses).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// The cells x features CSR matrix of a features x cells dgCMatrix's slots: `i` borrowed,
/// `x` converted to f32 in one pass (no double copy).
pub(crate) fn csr_counts(p: &Robj, i: Robj, x: &Robj, n_cols: i32) -> Result<CsrMatrix> {
    let indptr: Vec<usize> = p
        .as_integer_slice()
        .ok_or_else(|| other("internal: `p` must be an integer vector"))?
        .iter()
        .map(|&v| v.max(0) as usize)
        .collect();
    let n_rows = indptr.len().saturating_sub(1);
    let slice = i
        .as_integer_slice()
        .ok_or_else(|| other("internal: `i` must be an integer vector"))?;
    let (ptr, len) = (slice.as_ptr() as *const u32, slice.len());
    let indices = Indices::Shared(Arc::new(RIndices {
        _owner: i,
        ptr,
        len,
    }));
    let x = x
        .as_real_slice()
        .ok_or_else(|| other("internal: `x` must be a double vector"))?;
    guarded(|| {
        check_counts_memory(x.len(), 4)?;
        let values = x.iter().map(|&v| v as f32).collect();
        CsrMatrix::new(n_rows, n_cols.max(0) as usize, indptr, indices, values)
    })
}

/// The values of a count matrix in one pass, without temporaries (`data::count_summary`).
#[extendr]
fn rs_count_summary(x: Robj) -> Result<Robj> {
    let v = x
        .as_real_slice()
        .ok_or_else(|| other("internal: `x` must be a double vector"))?;
    let s = count_summary(v);
    Ok(list!(
        non_finite = s.non_finite as f64,
        negative = s.negative as f64,
        min = s.min,
        non_integer = s.non_integer as f64,
        first_fraction = s.first_fraction,
        zeros = s.zeros as f64
    )
    .into())
}

/// The slots of one dgCMatrix block: p, i, x and its number of rows (features).
fn block_slots(block: Robj) -> Result<(Robj, Robj, Robj, i32)> {
    let l: List = block
        .try_into()
        .map_err(|_| other("internal: a count block must be a list"))?;
    let get = |k: &str| {
        l.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v)
            .ok_or_else(|| other(format!("internal: a count block lacks `{k}`")))
    };
    let n_rows = get("n_rows")?
        .as_integer()
        .ok_or_else(|| other("internal: `n_rows` must be an integer"))?;
    Ok((get("p")?, get("i")?, get("x")?, n_rows))
}

/// The cells x features CSR matrix of features x cells dgCMatrix blocks over the same cells,
/// stacked by features (the modalities of MULTIVI and SPLICEVI). One block is borrowed as
/// `csr_counts` does; several are stacked here, once, instead of by rbind() in R.
fn block_counts(blocks: List) -> Result<CsrMatrix> {
    let mut blocks = blocks
        .values()
        .map(block_slots)
        .collect::<Result<Vec<_>>>()?;
    if blocks.len() == 1 {
        let (p, i, x, n_rows) = blocks.remove(0);
        return csr_counts(&p, i, &x, n_rows);
    }
    let slices = blocks
        .iter()
        .map(|(p, i, x, n_rows)| {
            Some(CountBlock {
                indptr: p.as_integer_slice()?,
                indices: i.as_integer_slice()?,
                values: x.as_real_slice()?,
                n_features: (*n_rows).max(0) as usize,
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| other("internal: bad count block slots"))?;
    guarded(|| {
        crate::progress::name_query("setting up the data:");
        CsrMatrix::stack(&slices)
    })
}

/// The per-cell fields the R layer registered (codes, covariates, size factors), for
/// `n_cells` cells.
struct CellFields {
    batch: Categorical,
    labels: Categorical,
    cats: Vec<Categorical>,
    conts: Vec<Vec<f32>>,
    size_factors: Vec<Vec<f32>>,
}

#[allow(clippy::too_many_arguments)]
fn cell_fields(
    n_cells: usize,
    batch: Robj,
    n_batch: i32,
    labels: Robj,
    n_labels: i32,
    cat_covs: Robj,
    cat_sizes: Robj,
    cont_covs: Robj,
    size_factor: Robj,
) -> Result<CellFields> {
    let cat_codes = ints(&cat_covs, "cat_covs")?;
    let cat_sizes = ints(&cat_sizes, "cat_sizes")?;
    if cat_codes.len() != cat_sizes.len() * n_cells {
        return Err(other(
            "internal: categorical covariates do not match the cells",
        ));
    }
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
    // Columns of n_cells values each (NULL: none).
    let columns = |v: Vec<f64>| -> Vec<Vec<f32>> {
        if n_cells == 0 {
            return vec![];
        }
        v.chunks(n_cells)
            .map(|c| c.iter().map(|&v| v as f32).collect())
            .collect()
    };
    let conts = columns(reals(&cont_covs, "cont_covs")?);
    let size_factors = if size_factor.is_null() {
        vec![]
    } else {
        columns(reals(&size_factor, "size_factor")?)
    };
    Ok(CellFields {
        batch: codes(&batch, n_batch, "batch")?,
        labels: codes(&labels, n_labels, "labels")?,
        cats,
        conts,
        size_factors,
    })
}

/// Counts (dgCMatrix slots of genes x cells blocks = CSR of cells x genes) and covariates.
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_dataset_new(
    blocks: List,
    batch: Robj,
    n_batch: i32,
    labels: Robj,
    n_labels: i32,
    cat_covs: Robj,
    cat_sizes: Robj,
    cont_covs: Robj,
    size_factor: Robj,
) -> Result<Robj> {
    let counts = block_counts(blocks)?;
    let f = cell_fields(
        counts.n_rows,
        batch,
        n_batch,
        labels,
        n_labels,
        cat_covs,
        cat_sizes,
        cont_covs,
        size_factor,
    )?;
    let ds = guarded(|| {
        crate::progress::name_query("setting up the data:");
        DataSet::new(counts, f.batch, f.labels, f.cats, f.conts, f.size_factors)
    })?;
    Ok(ExternalPtr::new(ds).into())
}

/// A dataset of `n_cells` x `n_genes` whose counts stay in the group `group` of an HDF5 file
/// (see `h5::open_csr_counts`), with the covariates the R layer registered.
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_dataset_from_file(
    path: &str,
    group: &str,
    n_cells: i32,
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
    let (n_cells, n_genes) = (n_cells.max(0) as usize, n_genes.max(0) as usize);
    let file = guarded(|| h5::open_csr_counts(Path::new(path), group, n_cells, n_genes))?;
    let f = cell_fields(
        n_cells,
        batch,
        n_batch,
        labels,
        n_labels,
        cat_covs,
        cat_sizes,
        cont_covs,
        size_factor,
    )?;
    let ds = guarded(|| {
        crate::progress::name_query("reading the counts:");
        DataSet::from_file(file, f.batch, f.labels, f.cats, f.conts, f.size_factors)
    })?;
    Ok(ExternalPtr::new(ds).into())
}
/// A JSON argument written by the R layer (model or training options, registry).
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| other(format!("internal: bad {what}: {e}")))
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
    guarded(|| rscvi_core::io::saved_model_kind(Path::new(dir)))
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

/// Starts the core's CPU thread pool with `n` threads. Only possible before it has started
/// (the first computation of the session starts it, with RAYON_NUM_THREADS or all cores).
#[extendr]
fn rs_set_num_threads(n: i32) -> Result<i32> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n.max(1) as usize)
        .build_global()
        .map_err(|_| {
            other(format!(
                "the CPU thread pool already runs with {} threads (it starts with the first \
                 computation of the session); set the number of threads before that, or set \
                 RAYON_NUM_THREADS before starting R",
                rayon::current_num_threads()
            ))
        })?;
    Ok(rayon::current_num_threads() as i32)
}

/// Threads of the core's CPU thread pool (starting it if it has not started).
#[extendr]
fn rs_num_threads() -> i32 {
    rayon::current_num_threads() as i32
}

extendr_module! {
    mod rscvi;
    use models;
    use queries;
    use scvi;
    use gimvi;
    use io;
    use multivi;
    use splicevi;
    fn rs_dataset_new;
    fn rs_dataset_from_file;
    fn rs_count_summary;
    fn rs_knn_purity;
    fn rs_batch_mixing;
    fn rs_saved_model_kind;
    fn rs_device_info;
    fn rs_set_num_threads;
    fn rs_num_threads;
}
