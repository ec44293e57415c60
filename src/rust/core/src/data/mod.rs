//! Count data and per-cell covariates as the models consume them, the train/validation split
//! and host-side minibatch assembly. Counts stay sparse (CSR, cells x genes) until a
//! minibatch is densified.

pub mod batch;
pub mod file;
pub mod junctions;
pub mod mt;
pub mod resident;

use std::ops::Deref;
use std::sync::Arc;

use crate::data::file::FileCounts;
use crate::data::mt::numpy_permutation;
use crate::error::{invalid_arg, Error, Result};

/// Memory another owner keeps alive and unchanged for as long as this handle lives (R's
/// dgCMatrix `i` slot, protected by the R bridge), read as the column indices of a CSR
/// matrix.
pub trait SharedIndices: Send + Sync {
    fn indices(&self) -> &[u32];
}

/// The column indices of a CSR matrix: owned, or borrowed from the front end so that a
/// user's counts are not copied (an atlas' indices are gigabytes).
#[derive(Clone)]
pub enum Indices {
    Owned(Vec<u32>),
    Shared(Arc<dyn SharedIndices>),
}

impl Deref for Indices {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        match self {
            Indices::Owned(v) => v,
            Indices::Shared(s) => s.indices(),
        }
    }
}

impl From<Vec<u32>> for Indices {
    fn from(v: Vec<u32>) -> Self {
        Indices::Owned(v)
    }
}

impl std::fmt::Debug for Indices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Indices({} entries)", self.len())
    }
}

// Saved as the plain sequence it reads as; read back owned.
impl serde::Serialize for Indices {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.deref().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Indices {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Vec::<u32>::deserialize(d).map(Indices::Owned)
    }
}

/// Cells x genes sparse counts in compressed-row form.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CsrMatrix {
    pub n_rows: usize,
    pub n_cols: usize,
    pub indptr: Vec<usize>,
    pub indices: Indices,
    pub values: Vec<f32>,
}

impl CsrMatrix {
    /// Builds and validates a CSR matrix. `indptr` has `n_rows + 1` entries.
    pub fn new(
        n_rows: usize,
        n_cols: usize,
        indptr: Vec<usize>,
        indices: impl Into<Indices>,
        values: Vec<f32>,
    ) -> Result<Self> {
        let indices = indices.into();
        if indptr.len() != n_rows + 1 || indptr[0] != 0 {
            return Err(Error::InvalidData(
                "row pointer array does not match the number of cells".into(),
            ));
        }
        if indices.len() != values.len() || indptr.last() != Some(&values.len()) {
            return Err(Error::InvalidData(
                "index and value arrays of the count matrix differ in length".into(),
            ));
        }
        if indptr.windows(2).any(|w| w[0] > w[1]) {
            return Err(Error::InvalidData(
                "row pointers must be non-decreasing".into(),
            ));
        }
        if indices.iter().any(|&j| j as usize >= n_cols) {
            return Err(Error::InvalidData("a gene index is out of range".into()));
        }
        Ok(Self {
            n_rows,
            n_cols,
            indptr,
            indices,
            values,
        })
    }

    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[i], self.indptr[i + 1]);
        (&self.indices[a..b], &self.values[a..b])
    }
}

/// Features x cells counts in the compressed-column layout of R's dgCMatrix (column
/// pointers, row indices, values), which reads as the CSR matrix of cells x its features.
pub struct CountBlock<'a> {
    pub indptr: &'a [i32],
    pub indices: &'a [i32],
    pub values: &'a [f64],
    pub n_features: usize,
}

impl CsrMatrix {
    /// Blocks over the same cells stacked by features (the modalities of a joint model), in
    /// one pass: the only copy of the counts, polling for Ctrl-C and reporting progress.
    pub fn stack(blocks: &[CountBlock]) -> Result<Self> {
        let n_cells = blocks
            .first()
            .map_or(0, |b| b.indptr.len().saturating_sub(1));
        if blocks.iter().any(|b| b.indptr.len() != n_cells + 1) {
            return Err(Error::InvalidData(
                "the count blocks have different cells".into(),
            ));
        }
        let nnz: usize = blocks.iter().map(|b| b.values.len()).sum();
        check_counts_memory(nnz, 8)?;
        let (mut indptr, mut indices, mut values) = (
            Vec::with_capacity(n_cells + 1),
            Vec::with_capacity(nnz),
            Vec::with_capacity(nnz),
        );
        indptr.push(0);
        for c in 0..n_cells {
            if c % 65_536 == 0 {
                crate::interrupt::step(c, n_cells)?;
            }
            let mut offset = 0;
            for b in blocks {
                let (start, end) = (b.indptr[c].max(0) as usize, b.indptr[c + 1].max(0) as usize);
                let (Some(rows), Some(vals)) =
                    (b.indices.get(start..end), b.values.get(start..end))
                else {
                    return Err(Error::InvalidData(
                        "a count block's column pointers are out of range".into(),
                    ));
                };
                for (&r, &v) in rows.iter().zip(vals) {
                    if r < 0 || r as usize >= b.n_features {
                        return Err(Error::InvalidData(
                            "a count block's row index is out of range".into(),
                        ));
                    }
                    indices.push((offset + r as usize) as u32);
                    values.push(v as f32);
                }
                offset += b.n_features;
            }
            indptr.push(indices.len());
        }
        let n_features = blocks.iter().map(|b| b.n_features).sum();
        Self::new(n_cells, n_features, indptr, indices, values)
    }
}

/// A copy of `nnz` counts (`bytes` each) must fit: an allocation failure would abort the
/// front end's process.
pub fn check_counts_memory(nnz: usize, bytes: u64) -> Result<()> {
    crate::train::memory::check_memory(
        (nnz as u64).saturating_mul(bytes),
        "counts",
        "free memory (e.g. remove objects you no longer need) or use fewer cells",
    )
}

/// What one pass over a count matrix's stored values finds: missing or infinite values,
/// negative ones (and the smallest), non-integers (and the first), stored zeros.
#[derive(Debug, Default, PartialEq)]
pub struct CountSummary {
    pub non_finite: usize,
    pub negative: usize,
    pub min: f64,
    pub non_integer: usize,
    pub first_fraction: Option<f64>,
    pub zeros: usize,
}

pub fn count_summary(values: &[f64]) -> CountSummary {
    let mut s = CountSummary {
        min: f64::INFINITY,
        ..Default::default()
    };
    for &x in values {
        if !x.is_finite() {
            s.non_finite += 1;
        } else if x < 0.0 {
            s.negative += 1;
            s.min = s.min.min(x);
        } else if x.fract() != 0.0 {
            s.non_integer += 1;
            s.first_fraction.get_or_insert(x);
        } else if x == 0.0 {
            s.zeros += 1;
        }
    }
    s
}

/// A categorical per-cell covariate: 0-based codes and the number of categories.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Categorical {
    pub codes: Vec<u32>,
    pub n_categories: usize,
}

impl Categorical {
    pub fn constant(n_cells: usize) -> Self {
        Self {
            codes: vec![0; n_cells],
            n_categories: 1,
        }
    }

    fn validate(&self, name: &str, n_cells: usize) -> Result<()> {
        if self.codes.len() != n_cells {
            return Err(invalid_arg(
                name,
                format!("has {} codes for {} cells", self.codes.len(), n_cells),
            ));
        }
        if self.n_categories == 0 {
            return Err(invalid_arg(name, "must have at least one category"));
        }
        if let Some(&c) = self
            .codes
            .iter()
            .find(|&&c| c as usize >= self.n_categories)
        {
            return Err(invalid_arg(
                name,
                format!("code {c} is outside its {} categories", self.n_categories),
            ));
        }
        Ok(())
    }
}

/// Each cell's posterior q(z | x) (means and variances, n x n_latent, row-major): what a
/// minified dataset keeps of its counts (scvi-tools' "latent_posterior_parameters").
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LatentPosterior {
    pub n_latent: usize,
    pub qz_mean: Vec<f32>,
    pub qz_var: Vec<f32>,
}

/// Everything a model reads per cell.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DataSet {
    pub counts: CsrMatrix,
    pub batch: Categorical,
    pub labels: Categorical,
    pub categorical_covariates: Vec<Categorical>,
    /// One vector per continuous covariate, each of length n_cells.
    pub continuous_covariates: Vec<Vec<f32>>,
    /// Registered size factors, one vector per column (scvi-tools registers them as one joint
    /// field: SCVI reads one column, MULTIVI one for RNA and one for ATAC); empty when none.
    pub size_factors: Vec<Vec<f32>>,
    /// log of each cell's total count.
    pub log_library: Vec<f32>,
    /// sum over genes of lgamma(x + 1): the constant part of every count likelihood.
    pub log_factorial: Vec<f32>,
    /// Set in a minified dataset, whose counts are dropped: the model reads z from it.
    pub latent_posterior: Option<LatentPosterior>,
    /// Set when the counts stay in a file (`counts` then holds no rows): minibatches read
    /// them through it.
    #[serde(skip)]
    pub file: Option<Arc<FileCounts>>,
}

/// Checks the per-cell fields of `n` cells.
fn check_fields(
    n: usize,
    batch: &Categorical,
    labels: &Categorical,
    categorical_covariates: &[Categorical],
    continuous_covariates: &[Vec<f32>],
    size_factors: &[Vec<f32>],
) -> Result<()> {
    batch.validate("batch", n)?;
    labels.validate("labels", n)?;
    for (k, c) in categorical_covariates.iter().enumerate() {
        c.validate(&format!("categorical covariate {}", k + 1), n)?;
    }
    for (k, c) in continuous_covariates.iter().enumerate() {
        if c.len() != n || c.iter().any(|v| !v.is_finite()) {
            return Err(invalid_arg(
                &format!("continuous covariate {}", k + 1),
                format!("must hold {n} finite values"),
            ));
        }
    }
    for sf in size_factors {
        if sf.len() != n || sf.iter().any(|v| !v.is_finite() || *v <= 0.0) {
            return Err(invalid_arg(
                "size_factor",
                format!("must hold {n} finite positive values"),
            ));
        }
    }
    Ok(())
}

/// A cell's log library size and the sum of log(x!) over its counts; an empty cell is an
/// error (its log library would be -inf).
fn cell_constants(cell: usize, values: &[f32]) -> Result<(f32, f32)> {
    let total: f64 = values.iter().map(|&v| v as f64).sum();
    if total <= 0.0 {
        return Err(Error::InvalidData(format!(
            "cell {} has no counts; remove empty cells first",
            cell + 1
        )));
    }
    let log_factorial = values.iter().map(|&v| ln_factorial(v as f64)).sum::<f64>();
    Ok((total.ln() as f32, log_factorial as f32))
}

fn bad_count(v: f32) -> Option<Error> {
    (!v.is_finite() || v < 0.0 || v.fract() != 0.0).then(|| {
        Error::InvalidData(format!(
            "counts must be finite non-negative integers, found {v}"
        ))
    })
}

impl DataSet {
    pub fn new(
        counts: CsrMatrix,
        batch: Categorical,
        labels: Categorical,
        categorical_covariates: Vec<Categorical>,
        continuous_covariates: Vec<Vec<f32>>,
        size_factors: Vec<Vec<f32>>,
    ) -> Result<Self> {
        let n = counts.n_rows;
        if n == 0 {
            return Err(Error::InvalidData("the data have zero cells".into()));
        }
        if counts.n_cols == 0 {
            return Err(Error::InvalidData("the data have zero genes".into()));
        }
        if let Some(e) = counts.values.iter().find_map(|&v| bad_count(v)) {
            return Err(e);
        }
        check_fields(
            n,
            &batch,
            &labels,
            &categorical_covariates,
            &continuous_covariates,
            &size_factors,
        )?;
        // One pass over the cells, polling for Ctrl-C and reporting progress (an atlas
        // takes seconds).
        let (mut log_library, mut log_factorial) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            if i % 65_536 == 0 {
                crate::interrupt::step(i, n)?;
            }
            let (l, f) = cell_constants(i, counts.row(i).1)?;
            log_library.push(l);
            log_factorial.push(f);
        }
        Ok(Self {
            counts,
            batch,
            labels,
            categorical_covariates,
            continuous_covariates,
            size_factors,
            log_library,
            log_factorial,
            latent_posterior: None,
            file: None,
        })
    }

    /// A dataset whose counts stay in `file`: one streaming pass checks the counts and
    /// computes each cell's library size and likelihood constant; minibatches read their
    /// rows from the file.
    pub fn from_file(
        file: FileCounts,
        batch: Categorical,
        labels: Categorical,
        categorical_covariates: Vec<Categorical>,
        continuous_covariates: Vec<Vec<f32>>,
        size_factors: Vec<Vec<f32>>,
    ) -> Result<Self> {
        let (n, g) = (file.n_rows(), file.n_cols());
        if n == 0 || g == 0 {
            return Err(Error::InvalidData(format!(
                "{} has {n} cells and {g} genes",
                file.describe()
            )));
        }
        check_fields(
            n,
            &batch,
            &labels,
            &categorical_covariates,
            &continuous_covariates,
            &size_factors,
        )?;
        let (mut log_library, mut log_factorial) = (Vec::with_capacity(n), Vec::with_capacity(n));
        file.scan(|c, _, values| {
            if let Some(e) = values.iter().find_map(|&v| bad_count(v)) {
                return Err(e);
            }
            let (l, f) = cell_constants(c, values)?;
            log_library.push(l);
            log_factorial.push(f);
            Ok(())
        })?;
        Ok(Self {
            counts: CsrMatrix {
                n_rows: n,
                n_cols: g,
                indptr: vec![0; n + 1],
                indices: Vec::new().into(),
                values: vec![],
            },
            batch,
            labels,
            categorical_covariates,
            continuous_covariates,
            size_factors,
            log_library,
            log_factorial,
            latent_posterior: None,
            file: Some(Arc::new(file)),
        })
    }

    /// Readies the rows of `cells` for a minibatch: a read when the counts are in a file
    /// (so that its errors are returned here), nothing when they are in memory.
    pub fn load(&self, cells: &[usize]) -> Result<()> {
        self.file.as_ref().map_or(Ok(()), |f| f.load(cells))
    }

    /// Calls `f(position in cells, column indices, values)` for each of `cells`, from
    /// memory or from the file a chunk at a time.
    pub fn for_rows(
        &self,
        cells: &[usize],
        mut f: impl FnMut(usize, &[u32], &[f32]),
    ) -> Result<()> {
        match &self.file {
            None => {
                for (r, &c) in cells.iter().enumerate() {
                    let (idx, val) = self.counts.row(c);
                    f(r, idx, val);
                }
                Ok(())
            }
            // `gather` reads what the cache lacks; chunks bound what one read holds.
            Some(file) => {
                const CHUNK: usize = 4096;
                for (k, chunk) in cells.chunks(CHUNK).enumerate() {
                    file.gather(chunk, |r, idx, val| f(k * CHUNK + r, idx, val))?;
                }
                Ok(())
            }
        }
    }

    /// This dataset without its counts, holding each cell's latent posterior instead
    /// (n_cells x n_latent means and variances): the observed library, batches, labels,
    /// covariates and size factors stay, so queries that only need z still run.
    pub fn minified(&self, posterior: LatentPosterior) -> Result<Self> {
        let n = self.n_cells();
        let expected = n * posterior.n_latent;
        if posterior.qz_mean.len() != expected || posterior.qz_var.len() != expected {
            return Err(Error::InvalidData(
                "the latent posterior does not match the cells".into(),
            ));
        }
        Ok(Self {
            counts: CsrMatrix {
                n_rows: n,
                n_cols: self.n_genes(),
                indptr: vec![0; n + 1],
                indices: Vec::new().into(),
                values: vec![],
            },
            log_factorial: vec![0.0; n],
            latent_posterior: Some(posterior),
            file: None,
            ..self.clone()
        })
    }

    /// Checks a minified dataset read from a file: every per-cell field has one entry per
    /// cell, codes are within their categories, the posterior matches the cells.
    pub fn check_minified(&self) -> Result<()> {
        let n = self.n_cells();
        let bad = |what: &str| Error::InvalidData(format!("the minified data: {what}"));
        let Some(p) = &self.latent_posterior else {
            return Err(bad("no latent posterior"));
        };
        if p.qz_mean.len() != n * p.n_latent || p.qz_var.len() != n * p.n_latent {
            return Err(bad("the latent posterior does not match the cells"));
        }
        if self.log_library.len() != n
            || self.log_factorial.len() != n
            || self.counts.indptr.len() != n + 1
            || self.continuous_covariates.iter().any(|c| c.len() != n)
            || self.size_factors.iter().any(|c| c.len() != n)
        {
            return Err(bad("per-cell fields of different lengths"));
        }
        self.batch.validate("batch", n)?;
        self.labels.validate("labels", n)?;
        for c in &self.categorical_covariates {
            c.validate("categorical covariate", n)?;
        }
        Ok(())
    }

    pub fn is_minified(&self) -> bool {
        self.latent_posterior.is_some()
    }

    /// An error for work that needs the counts (training, the ELBO, likelihoods of the
    /// observed data) when this dataset is minified.
    pub fn require_counts(&self, what: &str) -> Result<()> {
        if self.is_minified() {
            return Err(invalid_arg(
                "x",
                format!(
                    "is the data of a minified model (each cell's latent posterior, no counts), \
                     but {what} needs the counts: pass them as `x`"
                ),
            ));
        }
        Ok(())
    }

    /// Counts and batches only: no labels, covariates or size factors.
    pub fn with_batches(counts: CsrMatrix, batch: Categorical) -> Result<Self> {
        let n = counts.n_rows;
        Self::new(
            counts,
            batch,
            Categorical::constant(n),
            vec![],
            vec![],
            vec![],
        )
    }

    /// The first registered size factor column, the one SCVI and SPLICEVI read.
    pub fn size_factor(&self) -> Option<&[f32]> {
        self.size_factors.first().map(Vec::as_slice)
    }

    pub fn n_cells(&self) -> usize {
        self.counts.n_rows
    }

    pub fn n_genes(&self) -> usize {
        self.counts.n_cols
    }
}

/// log(1 + x) of a count (the encoder's input), from a table for the common small counts:
/// computed per minibatch instead of stored for every nonzero of the dataset.
pub fn log1p_count(x: f32) -> f32 {
    const N: usize = 1024;
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| (0..N).map(|k| (k as f32).ln_1p()).collect());
    let k = x as usize;
    if k < N && k as f32 == x {
        table[k]
    } else {
        x.ln_1p()
    }
}

/// log(k!) for a non-negative integer k (as f64): from a table for the common small counts
/// (a dataset's likelihood constant sums it over every nonzero).
pub fn ln_factorial(k: f64) -> f64 {
    const N: usize = 1024;
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| (0..N).map(|k| ln_factorial_uncached(k as f64)).collect());
    if k >= 0.0 && k < N as f64 && k.fract() == 0.0 {
        table[k as usize]
    } else {
        ln_factorial_uncached(k)
    }
}

/// log(k!), exact summation for small k.
fn ln_factorial_uncached(k: f64) -> f64 {
    if k < 2.0 {
        return 0.0;
    }
    if k < 64.0 {
        return (2..=k as u64).map(|i| (i as f64).ln()).sum();
    }
    // Stirling series is accurate to ~1e-15 relative here.
    let x = k + 1.0;
    (x - 0.5) * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI).ln() + 1.0 / (12.0 * x)
        - 1.0 / (360.0 * x.powi(3))
        + 1.0 / (1260.0 * x.powi(5))
}

/// Sizes of the train / validation / test split, scvi.md §7.1.
pub fn split_sizes(
    n: usize,
    train_size: Option<f64>,
    validation_size: Option<f64>,
    batch_size: usize,
    drop_last: bool,
) -> Result<(usize, usize, usize)> {
    let given = train_size.is_some();
    let t = train_size.unwrap_or(0.9);
    if !(t > 0.0 && t <= 1.0) {
        return Err(invalid_arg(
            "train_size",
            format!("must be in (0, 1], got {t}"),
        ));
    }
    let mut n_train = (t * n as f64).ceil() as usize;
    let mut n_val = match validation_size {
        None => n - n_train,
        Some(v) => {
            if !(0.0..1.0).contains(&v) || t + v > 1.0 {
                return Err(invalid_arg(
                    "validation_size",
                    format!("must be in [0, 1) with train_size + validation_size <= 1, got {v}"),
                ));
            }
            (n as f64 * v).floor() as usize
        }
    };
    if n_train == 0 {
        return Err(invalid_arg("train_size", "leaves no training cells"));
    }
    if !drop_last {
        let r = n_train % batch_size;
        if r == 1 || r == 2 {
            if given {
                return Err(invalid_arg(
                    "train_size",
                    format!(
                        "leaves a last training minibatch of {r} cell(s), which batch norm cannot \
                         use; change train_size or batch_size"
                    ),
                ));
            }
            n_train -= r;
            if n_val > 0 {
                n_val += r;
            }
        }
    }
    let n_test = n - n_train - n_val;
    Ok((n_train, n_val, n_test))
}

/// 0-based cell indices of each part of the split.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Split {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
    pub test: Vec<usize>,
}

/// The split scvi-tools makes: validation first in the permutation, then train, then test.
pub fn make_split(n: usize, sizes: (usize, usize, usize), shuffle: bool, seed: u32) -> Split {
    let perm: Vec<usize> = if shuffle {
        numpy_permutation(n, seed)
    } else {
        (0..n).collect()
    };
    let (n_train, n_val, _) = sizes;
    Split {
        validation: perm[..n_val].to_vec(),
        train: perm[n_val..n_val + n_train].to_vec(),
        test: perm[n_val + n_train..].to_vec(),
    }
}

/// What the decoder/encoder see about a cell's covariates, assembled on the host.
pub struct HostBatch {
    pub n: usize,
    /// Dense counts, n x genes, row-major.
    pub x: Vec<f32>,
    /// log(1 + x), the encoder's input, computed from the nonzeros only.
    pub x_log: Vec<f32>,
    pub log_library: Vec<f32>,
    pub log_factorial: Vec<f32>,
    /// One-hot of the batch used by the decoder (n x n_batch), always present.
    pub batch_onehot: Vec<f32>,
    /// One-hot of the labels (n x n_labels), always present.
    pub labels_onehot: Vec<f32>,
    /// Concatenated one-hots of the covariates with more than one category (n x width).
    pub covariates: Vec<f32>,
    pub covariate_width: usize,
    /// Continuous covariates, n x U.
    pub continuous: Vec<f32>,
    pub size_factor: Option<Vec<f32>>,
    /// A minified dataset's posterior means and variances of the cells (n x n_latent).
    pub latent_posterior: Option<(Vec<f32>, Vec<f32>)>,
}

/// Width of the one-hot covariate block: batch and categorical covariates with > 1 category.
pub fn covariate_width(n_batch: usize, cat_sizes: &[usize]) -> usize {
    std::iter::once(n_batch)
        .chain(cat_sizes.iter().copied())
        .filter(|&c| c > 1)
        .sum()
}

/// The covariates of a minibatch's cells, row-major.
pub struct CovariateRows {
    /// One-hot of the batch (n x n_batch), always present.
    pub batch_onehot: Vec<f32>,
    /// Concatenated one-hots of the batch and the covariates with more than one category
    /// (n x width).
    pub covariates: Vec<f32>,
    pub width: usize,
    /// Continuous covariates, n x U.
    pub continuous: Vec<f32>,
}

impl DataSet {
    /// The covariates of `cells`; `batch_override` replaces every cell's batch code.
    pub fn covariate_rows(&self, cells: &[usize], batch_override: Option<u32>) -> CovariateRows {
        let n = cells.len();
        let n_batch = self.batch.n_categories;
        let batch_code = |c: usize| batch_override.unwrap_or(self.batch.codes[c]) as usize;
        let mut batch_onehot = vec![0f32; n * n_batch];
        let cat_sizes: Vec<usize> = self
            .categorical_covariates
            .iter()
            .map(|c| c.n_categories)
            .collect();
        let width = covariate_width(n_batch, &cat_sizes);
        let mut covariates = vec![0f32; n * width];
        for (r, &c) in cells.iter().enumerate() {
            let b = batch_code(c);
            batch_onehot[r * n_batch + b] = 1.0;
            let mut offset = 0;
            if n_batch > 1 {
                covariates[r * width + b] = 1.0;
                offset += n_batch;
            }
            for cov in &self.categorical_covariates {
                if cov.n_categories > 1 {
                    covariates[r * width + offset + cov.codes[c] as usize] = 1.0;
                    offset += cov.n_categories;
                }
            }
        }
        let u = self.continuous_covariates.len();
        let mut continuous = vec![0f32; n * u];
        for (r, &c) in cells.iter().enumerate() {
            for (k, col) in self.continuous_covariates.iter().enumerate() {
                continuous[r * u + k] = col[c];
            }
        }
        CovariateRows {
            batch_onehot,
            covariates,
            width,
            continuous,
        }
    }

    /// Assemble a minibatch. `batch_override` replaces every cell's batch code
    /// (counterfactual `transform_batch`).
    pub fn host_batch(&self, cells: &[usize], batch_override: Option<u32>) -> HostBatch {
        let n = cells.len();
        let g = self.n_genes();
        let mut x = vec![0f32; n * g];
        let mut x_log = vec![0f32; n * g];
        let read = self.for_rows(cells, |r, idx, val| {
            for (&j, &v) in idx.iter().zip(val) {
                let j = r * g + j as usize;
                x[j] = v;
                x_log[j] = log1p_count(v);
            }
        });
        if let Err(e) = read {
            // Only file-backed counts fail here, and only for a caller that did not `load`
            // the cells first (training and the shared queries do); the bridge turns the
            // panic into an R error.
            panic!("{e}");
        }
        let n_labels = self.labels.n_categories;
        let mut labels_onehot = vec![0f32; n * n_labels];
        for (r, &c) in cells.iter().enumerate() {
            labels_onehot[r * n_labels + self.labels.codes[c] as usize] = 1.0;
        }
        let cov = self.covariate_rows(cells, batch_override);
        HostBatch {
            n,
            x,
            x_log,
            log_library: cells.iter().map(|&c| self.log_library[c]).collect(),
            log_factorial: cells.iter().map(|&c| self.log_factorial[c]).collect(),
            batch_onehot: cov.batch_onehot,
            labels_onehot,
            covariates: cov.covariates,
            covariate_width: cov.width,
            continuous: cov.continuous,
            size_factor: self
                .size_factor()
                .map(|sf| cells.iter().map(|&c| sf[c]).collect()),
            latent_posterior: self.latent_posterior.as_ref().map(|p| {
                let rows = |v: &[f32]| -> Vec<f32> {
                    let l = p.n_latent;
                    cells
                        .iter()
                        .flat_map(|&c| v[c * l..(c + 1) * l].iter().copied())
                        .collect()
                };
                (rows(&p.qz_mean), rows(&p.qz_var))
            }),
        }
    }
}

/// Per-batch mean and population variance of the log library (scvi.md §1.1).
pub fn library_prior(data: &DataSet) -> (Vec<f32>, Vec<f32>) {
    let nb = data.batch.n_categories;
    let mut groups: Vec<Vec<f64>> = vec![Vec::new(); nb];
    for (c, &b) in data.batch.codes.iter().enumerate() {
        groups[b as usize].push(data.log_library[c] as f64);
    }
    let mut means = vec![0f32; nb];
    let mut vars = vec![1f32; nb];
    for (b, vals) in groups.iter().enumerate() {
        if vals.is_empty() {
            continue;
        }
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let v = vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / vals.len() as f64;
        means[b] = m as f32;
        vars[b] = v as f32;
    }
    (means, vars)
}

/// 40 cells x 6 genes with counts from a fixed pattern, batches alternating over `n_batch`:
/// the small dataset of the training and reference-mapping tests.
#[cfg(test)]
pub(crate) fn toy_dataset(n_batch: u32) -> DataSet {
    let (n, g) = (40, 6);
    let mut indptr = vec![0];
    let (mut idx, mut val) = (vec![], vec![]);
    for c in 0..n {
        for j in 0..g {
            let v = ((c * 7 + j * 3) % 5) as f32;
            if v > 0.0 {
                idx.push(j as u32);
                val.push(v);
            }
        }
        indptr.push(val.len());
    }
    let counts = CsrMatrix::new(n, g, indptr, idx, val).unwrap();
    let batch = Categorical {
        codes: (0..n).map(|c| c as u32 % n_batch).collect(),
        n_categories: n_batch as usize,
    };
    DataSet::with_batches(counts, batch).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_split_sizes_match_reference() {
        let cases = [
            (5, (5, 0, 0)),
            (10, (9, 1, 0)),
            (143, (128, 15, 0)),
            (144, (128, 16, 0)),
            (145, (131, 14, 0)),
            (1000, (900, 100, 0)),
            (2846, (2560, 286, 0)),
            (12345, (11111, 1234, 0)),
        ];
        for (n, expected) in cases {
            assert_eq!(
                split_sizes(n, None, None, 128, false).unwrap(),
                expected,
                "n = {n}"
            );
        }
    }

    #[test]
    fn given_train_size_with_tiny_last_batch_is_an_error() {
        assert!(split_sizes(129, Some(1.0), None, 128, false).is_err());
        assert!(split_sizes(100, Some(0.0), None, 128, false).is_err());
    }

    #[test]
    fn split_puts_validation_first() {
        let s = make_split(10, (9, 1, 0), true, 0);
        assert_eq!(s.validation, vec![2]);
        assert_eq!(s.train, vec![8, 4, 9, 1, 6, 7, 3, 0, 5]);
    }

    fn toy(totals: &[Vec<f32>], batches: Vec<u32>) -> DataSet {
        let n = totals.len();
        let mut indptr = vec![0];
        let mut indices = vec![];
        let mut values = vec![];
        for row in totals {
            for (j, &v) in row.iter().enumerate() {
                if v > 0.0 {
                    indices.push(j as u32);
                    values.push(v);
                }
            }
            indptr.push(values.len());
        }
        let counts = CsrMatrix::new(n, 2, indptr, indices, values).unwrap();
        let nb = *batches.iter().max().unwrap() as usize + 1;
        DataSet::with_batches(
            counts,
            Categorical {
                codes: batches,
                n_categories: nb,
            },
        )
        .unwrap()
    }

    #[test]
    fn library_prior_matches_reference() {
        let d = toy(
            &[
                vec![6.0, 0.0],
                vec![2.0, 3.0],
                vec![10.0, 0.0],
                vec![12.0, 0.0],
                vec![1.0, 1.0],
            ],
            vec![0, 0, 0, 1, 1],
        );
        let (m, v) = library_prior(&d);
        assert!((m[0] - 1.901_260_8).abs() < 1e-5 && (v[0] - 0.086_070_78).abs() < 1e-5);
        assert!((m[1] - 1.589_026_9).abs() < 1e-5 && (v[1] - 0.802_600_5).abs() < 1e-5);
    }

    #[test]
    fn bad_counts_and_empty_cells_are_errors() {
        let c = CsrMatrix::new(1, 2, vec![0, 1], vec![0], vec![1.5]).unwrap();
        let r = DataSet::new(
            c,
            Categorical::constant(1),
            Categorical::constant(1),
            vec![],
            vec![],
            vec![],
        );
        assert!(matches!(r, Err(Error::InvalidData(_))));
        let c = CsrMatrix::new(2, 2, vec![0, 1, 1], vec![0], vec![1.0]).unwrap();
        let r = DataSet::new(
            c,
            Categorical::constant(2),
            Categorical::constant(2),
            vec![],
            vec![],
            vec![],
        );
        assert!(r.unwrap_err().to_string().contains("cell 2 has no counts"));
    }

    #[test]
    fn ln_factorial_table_is_the_formula() {
        for k in 0..2000 {
            assert_eq!(ln_factorial(k as f64), ln_factorial_uncached(k as f64));
        }
    }

    #[test]
    fn ln_factorial_is_accurate() {
        assert!((ln_factorial(10.0) - 15.104_412_573_075_516).abs() < 1e-12);
        assert!((ln_factorial(100.0) - 363.739_375_555_563_5).abs() < 1e-9);
    }

    #[test]
    fn log1p_count_matches_ln_1p() {
        for x in (0..3000).map(|k| k as f32).chain([0.5, 1e7, 2.5e9]) {
            assert_eq!(log1p_count(x), x.ln_1p());
        }
    }

    #[test]
    fn blocks_stack_by_features_and_counts_are_summarised() {
        // Two cells; block 1 has 2 features, block 2 has 3 (dgCMatrix layout).
        let a = CountBlock {
            indptr: &[0, 1, 3],
            indices: &[1, 0, 1],
            values: &[2.0, 1.0, 5.0],
            n_features: 2,
        };
        let b = CountBlock {
            indptr: &[0, 1, 1],
            indices: &[2],
            values: &[7.0],
            n_features: 3,
        };
        let m = CsrMatrix::stack(&[a, b]).unwrap();
        assert_eq!((m.n_rows, m.n_cols), (2, 5));
        assert_eq!(m.row(0), (&[1u32, 4][..], &[2.0f32, 7.0][..]));
        assert_eq!(m.row(1), (&[0u32, 1][..], &[1.0f32, 5.0][..]));
        let bad = CountBlock {
            indptr: &[0, 1, 1],
            indices: &[3],
            values: &[1.0],
            n_features: 3,
        };
        let ok = CountBlock {
            indptr: &[0, 0, 0],
            indices: &[],
            values: &[],
            n_features: 1,
        };
        assert!(CsrMatrix::stack(&[ok, bad]).is_err());
        let s = count_summary(&[1.0, f64::NAN, -2.0, -5.0, 0.5, 2.5, 0.0, 3.0]);
        assert_eq!(
            s,
            CountSummary {
                non_finite: 1,
                negative: 2,
                min: -5.0,
                non_integer: 2,
                first_fraction: Some(0.5),
                zeros: 1
            }
        );
    }

    #[test]
    fn shared_indices_read_as_owned_ones() {
        struct Fixed(Vec<u32>);
        impl SharedIndices for Fixed {
            fn indices(&self) -> &[u32] {
                &self.0
            }
        }
        let shared = Indices::Shared(Arc::new(Fixed(vec![1, 0, 1])));
        let m = CsrMatrix::new(2, 2, vec![0, 1, 3], shared, vec![2.0, 3.0, 4.0]).unwrap();
        assert_eq!(m.row(1), (&[0u32, 1][..], &[3.0f32, 4.0][..]));
        let saved = rmp_serde::to_vec(&m).unwrap();
        let back: CsrMatrix = rmp_serde::from_slice(&saved).unwrap();
        assert!(matches!(back.indices, Indices::Owned(_)));
        assert_eq!(&back.indices[..], &m.indices[..]);
        let bad = Indices::Shared(Arc::new(Fixed(vec![2])));
        assert!(CsrMatrix::new(1, 2, vec![0, 1], bad, vec![1.0]).is_err());
    }

    #[test]
    fn host_batch_builds_covariate_block() {
        let d = toy(&[vec![1.0, 2.0], vec![3.0, 0.0]], vec![0, 1]);
        let b = d.host_batch(&[1, 0], None);
        assert_eq!(b.x, vec![3.0, 0.0, 1.0, 2.0]);
        assert_eq!(b.covariates, vec![0.0, 1.0, 1.0, 0.0]);
        let b = d.host_batch(&[1, 0], Some(0));
        assert_eq!(b.batch_onehot, vec![1.0, 0.0, 1.0, 0.0]);
    }
}
