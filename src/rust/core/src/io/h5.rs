//! Readers of the HDF5 files single-cell users have: AnnData's `.h5ad` (current encodings
//! and the pre-0.8 categorical one) and CellRanger's feature-barcode `.h5`. Matrices come
//! back as features x cells (the R layout: a CSR cells x features matrix is already the
//! CSC of its transpose), data frames as typed columns.

use std::path::Path;
use std::sync::Arc;

use hdf5::types::{FixedAscii, FixedUnicode, IntSize, TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{Dataset, File, Group};

use crate::data::file::{FileCounts, RowReader};
use crate::error::{Error, Result};

/// A features x cells matrix: compressed sparse columns (one column per cell) or dense,
/// column-major.
pub enum FeatureMatrix {
    Sparse {
        n_features: usize,
        n_cells: usize,
        indptr: Vec<usize>,
        indices: Vec<i32>,
        values: Vec<f64>,
    },
    Dense {
        n_features: usize,
        n_cells: usize,
        values: Vec<f64>,
    },
}

/// One column of a data frame.
pub enum Column {
    Double(Vec<f64>),
    Integer(Vec<i32>),
    Logical(Vec<Option<bool>>),
    Text(Vec<Option<String>>),
    /// Category codes (None = missing) and the categories in their stored order.
    Factor {
        codes: Vec<Option<usize>>,
        levels: Vec<String>,
        ordered: bool,
    },
}

pub struct Frame {
    pub index: Vec<String>,
    pub columns: Vec<(String, Column)>,
}

/// What `read_h5ad` returns: the matrix asked for, `obs`, `var`, the other layers (with
/// `X` itself when another layer was asked for) and the dense `obsm` embeddings (cells x
/// dims, column-major).
pub struct AnnData {
    pub matrix: FeatureMatrix,
    pub obs: Frame,
    pub var: Frame,
    pub layers: Vec<(String, FeatureMatrix)>,
    pub obsm: Vec<(String, FeatureMatrix)>,
    pub skipped: Vec<String>,
}

/// A CellRanger feature-barcode matrix: features x barcodes, with each feature's id, name
/// and type ("Gene Expression", "Peaks", "Antibody Capture", ...).
pub struct TenX {
    pub matrix: FeatureMatrix,
    pub barcodes: Vec<String>,
    pub feature_ids: Vec<String>,
    pub feature_names: Vec<String>,
    pub feature_types: Vec<String>,
}

/// HDF5's automatic error handler belongs to the process's one library, shared with its
/// other users in the R session: rhdf5 (under HDF5Array) installs a handler that its own
/// checks rely on, and hdf5-metno switches the handler off for good on first use. A
/// `QuietHdf5` keeps it off while rscvi reads or writes and puts back what was there when
/// dropped, so that neither side runs the other's handler.
pub(crate) struct QuietHdf5 {
    saved: SavedHandler,
}

#[allow(deprecated)] // a handler installed through the 1.6 API is saved through it
enum SavedHandler {
    V2(hdf5_sys::h5e::H5E_auto2_t, *mut std::ffi::c_void),
    V1(hdf5_sys::h5e::H5E_auto1_t, *mut std::ffi::c_void),
}

impl QuietHdf5 {
    #[allow(deprecated)] // a handler installed through the 1.6 API is saved through it
    pub(crate) fn new() -> Self {
        use hdf5_sys::h5e::*;
        let _lock = hdf5_sys::LOCK.lock();
        let mut is_v2 = 1;
        let mut data = std::ptr::null_mut();
        // SAFETY: plain calls into the library with valid out-pointers, under its lock.
        let saved = unsafe {
            H5Eauto_is_v2(H5E_DEFAULT, &mut is_v2);
            if is_v2 != 0 {
                let mut func = None;
                if H5Eget_auto2(H5E_DEFAULT, &mut func, &mut data) < 0 {
                    func = None;
                }
                H5Eset_auto2(H5E_DEFAULT, None, std::ptr::null_mut());
                SavedHandler::V2(func, data)
            } else {
                let mut func = None;
                if H5Eget_auto1(&mut func, &mut data) < 0 {
                    func = None;
                }
                H5Eset_auto1(None, std::ptr::null_mut());
                SavedHandler::V1(func, data)
            }
        };
        Self { saved }
    }
}

impl Drop for QuietHdf5 {
    #[allow(deprecated)]
    fn drop(&mut self) {
        use hdf5_sys::h5e::*;
        let _lock = hdf5_sys::LOCK.lock();
        // SAFETY: restores exactly what `new` read from the library.
        unsafe {
            match self.saved {
                SavedHandler::V2(func, data) => H5Eset_auto2(H5E_DEFAULT, func, data),
                SavedHandler::V1(func, data) => H5Eset_auto1(func, data),
            };
        }
    }
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::File(format!("{}: {what}", path.display()))
}

fn open(path: &Path) -> Result<File> {
    if !path.exists() {
        return Err(Error::File(format!("{} does not exist", path.display())));
    }
    // HDF5 prints its own error stack to stderr unless told not to.
    hdf5::silence_errors(true);
    File::open(path).map_err(|e| bad(path, format!("not a readable HDF5 file ({e})")))
}

fn attr_string(obj: &hdf5::Location, name: &str) -> Option<String> {
    let a = obj.attr(name).ok()?;
    a.read_scalar::<VarLenUnicode>()
        .map(|s| s.as_str().to_string())
        .or_else(|_| {
            a.read_scalar::<VarLenAscii>()
                .map(|s| s.as_str().to_string())
        })
        .or_else(|_| {
            a.read_scalar::<FixedAscii<256>>()
                .map(|s| s.as_str().to_string())
        })
        .ok()
}

fn attr_strings(obj: &hdf5::Location, name: &str) -> Vec<String> {
    let Ok(a) = obj.attr(name) else {
        return vec![];
    };
    if let Ok(v) = a.read_raw::<VarLenUnicode>() {
        return v.iter().map(|s| s.as_str().to_string()).collect();
    }
    if let Ok(v) = a.read_raw::<VarLenAscii>() {
        return v.iter().map(|s| s.as_str().to_string()).collect();
    }
    a.read_raw::<FixedAscii<256>>()
        .map(|v| v.iter().map(|s| s.as_str().to_string()).collect())
        .unwrap_or_default()
}

fn encoding(obj: &hdf5::Location) -> Option<String> {
    attr_string(obj, "encoding-type")
}

/// Strings of a dataset, whatever their HDF5 string type.
fn strings(ds: &Dataset, path: &Path) -> Result<Vec<String>> {
    let name = ds.name();
    let td = ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(|e| bad(path, format!("{name}: unreadable type ({e})")))?;
    let err = |e: hdf5::Error| bad(path, format!("{name}: {e}"));
    macro_rules! fixed {
        ($t:ident, $n:expr) => {
            match $n {
                0..=32 => ds
                    .read_raw::<$t<32>>()
                    .map_err(err)?
                    .iter()
                    .map(|s| s.as_str().to_string())
                    .collect(),
                33..=128 => ds
                    .read_raw::<$t<128>>()
                    .map_err(err)?
                    .iter()
                    .map(|s| s.as_str().to_string())
                    .collect(),
                129..=1024 => ds
                    .read_raw::<$t<1024>>()
                    .map_err(err)?
                    .iter()
                    .map(|s| s.as_str().to_string())
                    .collect(),
                n => {
                    return Err(bad(
                        path,
                        format!("{name}: strings of {n} bytes are not supported"),
                    ))
                }
            }
        };
    }
    Ok(match td {
        TypeDescriptor::VarLenUnicode => ds
            .read_raw::<VarLenUnicode>()
            .map_err(err)?
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        TypeDescriptor::VarLenAscii => ds
            .read_raw::<VarLenAscii>()
            .map_err(err)?
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        TypeDescriptor::FixedAscii(n) => fixed!(FixedAscii, n),
        TypeDescriptor::FixedUnicode(n) => fixed!(FixedUnicode, n),
        other => {
            return Err(bad(
                path,
                format!("{name}: expected strings, found {other:?}"),
            ))
        }
    })
}

/// An n x k matrix's values in the other memory order: row-major `values` (n rows of k)
/// become column-major, and column-major ones (k rows of n, read as such) row-major.
fn reorder(values: &[f64], k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0f64; values.len()];
    for r in 0..n {
        for c in 0..k {
            out[c * n + r] = values[r * k + c];
        }
    }
    out
}

/// The stored type of a dataset.
fn descriptor(ds: &Dataset) -> Option<TypeDescriptor> {
    ds.dtype().and_then(|t| t.to_descriptor()).ok()
}

/// Reads in the stored type `S` and converts here: HDF5's own conversion is several times
/// slower on large arrays.
fn read_as<S: hdf5::H5Type + Copy, T>(
    ds: &Dataset,
    path: &Path,
    convert: impl Fn(S) -> T,
) -> Result<Vec<T>> {
    ds.read_raw::<S>()
        .map(|v| v.into_iter().map(convert).collect())
        .map_err(|e| bad(path, format!("{}: {e}", ds.name())))
}

fn numbers(ds: &Dataset, path: &Path) -> Result<Vec<f64>> {
    use hdf5::types::FloatSize;
    match descriptor(ds) {
        Some(TypeDescriptor::Float(FloatSize::U4)) => read_as(ds, path, |x: f32| x as f64),
        Some(TypeDescriptor::Integer(IntSize::U4)) => read_as(ds, path, |x: i32| x as f64),
        _ => read_as(ds, path, |x: f64| x),
    }
}

/// Integer arrays (sparse indices and pointers), read in their stored width.
fn integers(ds: &Dataset, path: &Path) -> Result<Vec<i64>> {
    match descriptor(ds) {
        Some(TypeDescriptor::Integer(IntSize::U4)) => read_as(ds, path, |x: i32| x as i64),
        Some(TypeDescriptor::Unsigned(IntSize::U4)) => read_as(ds, path, |x: u32| x as i64),
        _ => read_as(ds, path, |x: i64| x),
    }
}

fn check_filters(ds: &Dataset, path: &Path) -> Result<()> {
    // Reading fails on a filter this HDF5 lacks; name it instead of HDF5's generic error.
    if let Ok(filters) = ds.create_plist().map(|p| p.filters()) {
        for f in filters {
            if !f.is_available() {
                return Err(bad(
                    path,
                    format!(
                        "{} is compressed with {:?}, which this HDF5 library cannot read",
                        ds.name(),
                        f
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A matrix stored as an AnnData element (cells x features) at `name` of `parent`, returned
/// as features x cells.
fn anndata_matrix(parent: &Group, name: &str, path: &Path) -> Result<FeatureMatrix> {
    if let Ok(g) = parent.group(name) {
        let enc = encoding(&g);
        let old = attr_string(&g, "h5sparse_format");
        let format = match (enc.as_deref(), old.as_deref()) {
            (Some("csr_matrix"), _) | (None, Some("csr")) => "csr",
            (Some("csc_matrix"), _) | (None, Some("csc")) => "csc",
            (e, _) => {
                return Err(bad(
                    path,
                    format!(
                        "{} is not a sparse matrix AnnData can store (encoding {:?})",
                        g.name(),
                        e.unwrap_or("none")
                    ),
                ))
            }
        };
        let shape_attr = if enc.is_some() {
            "shape"
        } else {
            "h5sparse_shape"
        };
        let shape: Vec<u64> = g
            .attr(shape_attr)
            .and_then(|a| a.read_raw::<u64>())
            .map_err(|e| bad(path, format!("{}: no shape ({e})", g.name())))?;
        if shape.len() != 2 {
            return Err(bad(path, format!("{}: shape is not 2-D", g.name())));
        }
        let (n_obs, n_var) = (shape[0] as usize, shape[1] as usize);
        let ds = |n: &str| {
            g.dataset(n)
                .map_err(|e| bad(path, format!("{}/{n} is missing ({e})", g.name())))
        };
        let (data, indices, indptr) = (ds("data")?, ds("indices")?, ds("indptr")?);
        for d in [&data, &indices, &indptr] {
            check_filters(d, path)?;
        }
        let values = numbers(&data, path)?;
        let idx = integers(&indices, path)?;
        let ptr = integers(&indptr, path)?;
        let (major, minor) = if format == "csr" {
            (n_obs, n_var)
        } else {
            (n_var, n_obs)
        };
        check_compressed(&ptr, &idx, values.len(), major, minor, &g.name(), path)?;
        let indptr: Vec<usize> = ptr.iter().map(|&p| p as usize).collect();
        let indices: Vec<i32> = idx.iter().map(|&i| i as i32).collect();
        if format == "csr" {
            return Ok(FeatureMatrix::Sparse {
                n_features: n_var,
                n_cells: n_obs,
                indptr,
                indices,
                values,
            });
        }
        // CSC of cells x features = CSR of features x cells: transpose to columns of cells.
        let (indptr, indices, values) = transpose(n_var, n_obs, &indptr, &indices, &values);
        return Ok(FeatureMatrix::Sparse {
            n_features: n_var,
            n_cells: n_obs,
            indptr,
            indices,
            values,
        });
    }
    let ds = parent
        .dataset(name)
        .map_err(|_| bad(path, format!("{}/{name} does not exist", parent.name())))?;
    check_filters(&ds, path)?;
    let shape = ds.shape();
    if shape.len() != 2 {
        return Err(bad(path, format!("{} is not a 2-D matrix", ds.name())));
    }
    // Row-major cells x features is column-major features x cells: the same values.
    Ok(FeatureMatrix::Dense {
        n_features: shape[1],
        n_cells: shape[0],
        values: numbers(&ds, path)?,
    })
}

fn check_compressed(
    ptr: &[i64],
    idx: &[i64],
    nnz: usize,
    major: usize,
    minor: usize,
    name: &str,
    path: &Path,
) -> Result<()> {
    let ok = ptr.len() == major + 1
        && ptr.first() == Some(&0)
        && ptr.last().map(|&p| p as usize) == Some(nnz)
        && idx.len() == nnz
        && ptr.windows(2).all(|w| w[0] <= w[1])
        && idx.iter().all(|&i| i >= 0 && (i as usize) < minor);
    if !ok {
        return Err(bad(
            path,
            format!("{name}: inconsistent sparse matrix arrays"),
        ));
    }
    if nnz > i32::MAX as usize {
        return Err(bad(
            path,
            format!("{name} has {nnz} nonzeros, more than an R sparse matrix can hold"),
        ));
    }
    Ok(())
}

/// Compressed rows of an r x c matrix -> compressed rows of its transpose (c x r).
fn transpose(
    r: usize,
    c: usize,
    indptr: &[usize],
    indices: &[i32],
    values: &[f64],
) -> (Vec<usize>, Vec<i32>, Vec<f64>) {
    let mut counts = vec![0usize; c + 1];
    for &j in indices {
        counts[j as usize + 1] += 1;
    }
    for k in 0..c {
        counts[k + 1] += counts[k];
    }
    let mut next = counts.clone();
    let mut out_idx = vec![0i32; indices.len()];
    let mut out_val = vec![0f64; values.len()];
    for row in 0..r {
        for k in indptr[row]..indptr[row + 1] {
            let col = indices[k] as usize;
            out_idx[next[col]] = row as i32;
            out_val[next[col]] = values[k];
            next[col] += 1;
        }
    }
    (counts, out_idx, out_val)
}

/// One column of an AnnData data frame group, with `n` values when given.
fn column(df: &Group, name: &str, n: Option<usize>, path: &Path) -> Result<Column> {
    let col = if let Ok(g) = df.group(name) {
        let enc = encoding(&g).unwrap_or_default();
        match enc.as_str() {
            "categorical" => {
                let cats = g
                    .dataset("categories")
                    .map_err(|e| bad(path, format!("{}: no categories ({e})", g.name())))?;
                let levels = category_levels(&cats, path)?;
                let codes = g
                    .dataset("codes")
                    .and_then(|d| d.read_raw::<i64>())
                    .map_err(|e| bad(path, format!("{}: no codes ({e})", g.name())))?;
                let ordered = g
                    .attr("ordered")
                    .and_then(|a| a.read_scalar::<bool>())
                    .unwrap_or(false);
                factor(codes, levels, ordered, &g.name(), path)?
            }
            "nullable-integer" | "nullable-boolean" | "nullable-string-array" => {
                let values = g
                    .dataset("values")
                    .map_err(|e| bad(path, format!("{}: no values ({e})", g.name())))?;
                let mask: Vec<bool> = g
                    .dataset("mask")
                    .and_then(|d| d.read_raw::<bool>())
                    .unwrap_or_default();
                let keep = |i: usize| !mask.get(i).copied().unwrap_or(false);
                match enc.as_str() {
                    "nullable-boolean" => {
                        let v = values
                            .read_raw::<bool>()
                            .map_err(|e| bad(path, format!("{}: {e}", g.name())))?;
                        Column::Logical(
                            v.into_iter()
                                .enumerate()
                                .map(|(i, b)| keep(i).then_some(b))
                                .collect(),
                        )
                    }
                    "nullable-integer" => {
                        let v = numbers(&values, path)?;
                        Column::Double(
                            v.into_iter()
                                .enumerate()
                                .map(|(i, x)| if keep(i) { x } else { f64::NAN })
                                .collect(),
                        )
                    }
                    _ => Column::Text(
                        strings(&values, path)?
                            .into_iter()
                            .enumerate()
                            .map(|(i, s)| keep(i).then_some(s))
                            .collect(),
                    ),
                }
            }
            other => {
                return Err(bad(
                    path,
                    format!("{}: column encoding {other:?} is not supported", g.name()),
                ))
            }
        }
    } else {
        let ds = df
            .dataset(name)
            .map_err(|e| bad(path, format!("{}/{name} is missing ({e})", df.name())))?;
        // The pre-0.8 encoding: integer codes pointing at __categories/<name>.
        if ds.attr("categories").is_ok() {
            let cats = df
                .dataset(&format!("__categories/{name}"))
                .map_err(|e| bad(path, format!("{}: categories not found ({e})", ds.name())))?;
            let levels = category_levels(&cats, path)?;
            let codes = ds
                .read_raw::<i64>()
                .map_err(|e| bad(path, format!("{}: {e}", ds.name())))?;
            factor(codes, levels, false, &ds.name(), path)?
        } else {
            plain_column(&ds, path)?
        }
    };
    let len = match &col {
        Column::Double(v) => v.len(),
        Column::Integer(v) => v.len(),
        Column::Logical(v) => v.len(),
        Column::Text(v) => v.len(),
        Column::Factor { codes, .. } => codes.len(),
    };
    if let Some(n) = n.filter(|&n| n != len) {
        return Err(bad(
            path,
            format!("{}/{name} has {len} values for {n} rows", df.name()),
        ));
    }
    Ok(col)
}

fn category_levels(ds: &Dataset, path: &Path) -> Result<Vec<String>> {
    strings(ds, path).or_else(|_| {
        // numeric categories, as pandas writes them: their text
        Ok(numbers(ds, path)?
            .into_iter()
            .map(|v| format!("{v}"))
            .collect())
    })
}

fn factor(
    codes: Vec<i64>,
    levels: Vec<String>,
    ordered: bool,
    name: &str,
    path: &Path,
) -> Result<Column> {
    if codes.iter().any(|&c| c >= levels.len() as i64) {
        return Err(bad(
            path,
            format!("{name}: a code is beyond its categories"),
        ));
    }
    Ok(Column::Factor {
        codes: codes
            .into_iter()
            .map(|c| (c >= 0).then_some(c as usize))
            .collect(),
        levels,
        ordered,
    })
}

fn plain_column(ds: &Dataset, path: &Path) -> Result<Column> {
    let td = ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(|e| bad(path, format!("{}: unreadable type ({e})", ds.name())))?;
    Ok(match td {
        TypeDescriptor::Boolean | TypeDescriptor::Enum(_) => Column::Logical(
            ds.read_raw::<bool>()
                .map_err(|e| bad(path, format!("{}: {e}", ds.name())))?
                .into_iter()
                .map(Some)
                .collect(),
        ),
        TypeDescriptor::Integer(IntSize::U1 | IntSize::U2 | IntSize::U4)
        | TypeDescriptor::Unsigned(IntSize::U1 | IntSize::U2) => Column::Integer(
            ds.read_raw::<i32>()
                .map_err(|e| bad(path, format!("{}: {e}", ds.name())))?,
        ),
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) | TypeDescriptor::Float(_) => {
            Column::Double(numbers(ds, path)?)
        }
        _ => Column::Text(strings(ds, path)?.into_iter().map(Some).collect()),
    })
}

/// An AnnData data frame (`obs` or `var`) with `n` rows.
/// The data frame group `name` of `root` and its row names (the `_index` column).
fn frame_index(root: &Group, name: &str, path: &Path) -> Result<(Group, String, Vec<String>)> {
    let df = root
        .group(name)
        .map_err(|_| bad(path, format!("no /{name} group: not an AnnData file")))?;
    let index_name = attr_string(&df, "_index").unwrap_or_else(|| "_index".into());
    let index: Vec<String> = match column(&df, &index_name, None, path)? {
        Column::Text(v) => v.into_iter().map(|s| s.unwrap_or_default()).collect(),
        Column::Factor { codes, levels, .. } => codes
            .into_iter()
            .map(|c| c.map(|c| levels[c].clone()).unwrap_or_default())
            .collect(),
        Column::Integer(v) => v.iter().map(|i| i.to_string()).collect(),
        Column::Double(v) => v.iter().map(|x| x.to_string()).collect(),
        Column::Logical(_) => return Err(bad(path, format!("{name}: the index is not text"))),
    };
    Ok((df, index_name, index))
}

/// The cell (`obs`) and feature (`var`) names of an `.h5ad` file, without reading the rest.
pub fn h5ad_names(path: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let _quiet = QuietHdf5::new();
    let file = open(path)?;
    Ok((
        frame_index(&file, "obs", path)?.2,
        frame_index(&file, "var", path)?.2,
    ))
}

fn frame(root: &Group, name: &str, path: &Path) -> Result<Frame> {
    let (df, index_name, index) = frame_index(root, name, path)?;
    let n = index.len();
    let mut order = attr_strings(&df, "column-order");
    if order.is_empty() {
        order = df
            .member_names()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m != &index_name && m != "__categories")
            .collect();
    }
    let columns = order
        .into_iter()
        .map(|c| column(&df, &c, Some(n), path).map(|col| (c, col)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Frame { index, columns })
}

fn matrix_dims(m: &FeatureMatrix) -> (usize, usize) {
    match m {
        FeatureMatrix::Sparse {
            n_features,
            n_cells,
            ..
        }
        | FeatureMatrix::Dense {
            n_features,
            n_cells,
            ..
        } => (*n_features, *n_cells),
    }
}

/// The `obs` and `var` data frames of an `.h5ad` file, without its matrices.
pub fn read_h5ad_frames(path: &Path) -> Result<(Frame, Frame)> {
    let _quiet = QuietHdf5::new();
    let file = open(path)?;
    Ok((frame(&file, "obs", path)?, frame(&file, "var", path)?))
}

/// Reads an `.h5ad` file: X, `obs` and `var` as typed columns, the layers (when
/// `with_layers`) and the 2-D `obsm` arrays.
pub fn read_h5ad(path: &Path, with_layers: bool) -> Result<AnnData> {
    let _quiet = QuietHdf5::new();
    let file = open(path)?;
    read_anndata(&file, with_layers, path)
}

/// The AnnData stored in the group `root` (a file's root, or a MuData modality).
fn read_anndata(root: &Group, with_layers: bool, path: &Path) -> Result<AnnData> {
    let obs = frame(root, "obs", path)?;
    let var = frame(root, "var", path)?;
    let (n_obs, n_var) = (obs.index.len(), var.index.len());
    if !root.link_exists("X") {
        return Err(bad(path, format!("{} has no X matrix", root.name())));
    }
    let check = |m: &FeatureMatrix, what: &str| -> Result<()> {
        if matrix_dims(m) != (n_var, n_obs) {
            return Err(bad(
                path,
                format!("{what} is not {n_obs} cells x {n_var} features, as obs and var say"),
            ));
        }
        Ok(())
    };
    let matrix = anndata_matrix(root, "X", path)?;
    check(&matrix, "X")?;
    let mut layers = Vec::new();
    let mut skipped = Vec::new();
    if let Some(g) = root.group("layers").ok().filter(|_| with_layers) {
        for l in g.member_names().unwrap_or_default() {
            let m = anndata_matrix(&g, &l, path)?;
            check(&m, &format!("layers/{l}"))?;
            layers.push((l, m));
        }
    }
    let mut obsm = Vec::new();
    if let Ok(g) = root.group("obsm") {
        for name in g.member_names().unwrap_or_default() {
            match g.dataset(&name) {
                Ok(ds) if ds.shape().len() == 2 && ds.shape()[0] == n_obs => {
                    let k = ds.shape()[1];
                    let values = reorder(&numbers(&ds, path)?, k, n_obs);
                    obsm.push((
                        name,
                        FeatureMatrix::Dense {
                            n_features: n_obs,
                            n_cells: k,
                            values,
                        },
                    ));
                }
                _ => skipped.push(format!("obsm/{name}")),
            }
        }
    }
    Ok(AnnData {
        matrix,
        obs,
        var,
        layers,
        obsm,
        skipped,
    })
}

/// A MuData `.h5mu` file: the global `obs` and each modality (`/mod/<name>`) as an AnnData,
/// in the file's modality order.
pub struct MuData {
    pub obs: Frame,
    pub modalities: Vec<(String, AnnData)>,
}

/// Reads a `.h5mu` file (MuData): each modality's X, layers, obs, var and obsm.
pub fn read_h5mu(path: &Path, with_layers: bool) -> Result<MuData> {
    let _quiet = QuietHdf5::new();
    let file = open(path)?;
    let mods = file
        .group("mod")
        .map_err(|_| bad(path, "no /mod group: not a MuData file"))?;
    let mut names = attr_strings(&mods, "mod-order");
    if names.is_empty() {
        names = mods.member_names().unwrap_or_default();
    }
    let modalities = names
        .into_iter()
        .map(|n| {
            let g = mods
                .group(&n)
                .map_err(|e| bad(path, format!("/mod/{n} is not a modality ({e})")))?;
            read_anndata(&g, with_layers, path).map(|a| (n, a))
        })
        .collect::<Result<Vec<_>>>()?;
    if modalities.is_empty() {
        return Err(bad(path, "has no modalities"));
    }
    Ok(MuData {
        obs: frame(&file, "obs", path)?,
        modalities,
    })
}

/// Reads a CellRanger (v3+) feature-barcode matrix `.h5`.
pub fn read_10x_h5(path: &Path) -> Result<TenX> {
    let _quiet = QuietHdf5::new();
    let file = open(path)?;
    let g = file.group("matrix").map_err(|_| {
        bad(
            path,
            "no /matrix group: not a CellRanger v3+ feature-barcode matrix (v2 files keep one \
             group per genome)",
        )
    })?;
    let ds = |n: &str| {
        g.dataset(n)
            .map_err(|e| bad(path, format!("/matrix/{n} is missing ({e})")))
    };
    let shape: Vec<i64> = ds("shape")?
        .read_raw::<i64>()
        .map_err(|e| bad(path, format!("/matrix/shape: {e}")))?;
    if shape.len() != 2 || shape.iter().any(|&s| s < 0) {
        return Err(bad(path, "/matrix/shape is not 2-D"));
    }
    let (n_features, n_cells) = (shape[0] as usize, shape[1] as usize);
    let (data, indices, indptr) = (ds("data")?, ds("indices")?, ds("indptr")?);
    for d in [&data, &indices, &indptr] {
        check_filters(d, path)?;
    }
    let values = numbers(&data, path)?;
    let idx = integers(&indices, path)?;
    let ptr = integers(&indptr, path)?;
    check_compressed(
        &ptr,
        &idx,
        values.len(),
        n_cells,
        n_features,
        "/matrix",
        path,
    )?;
    let barcodes = strings(&ds("barcodes")?, path)?;
    let features = g
        .group("features")
        .map_err(|_| bad(path, "no /matrix/features group: not a CellRanger v3+ file"))?;
    let feature = |n: &str| -> Result<Vec<String>> {
        let d = features
            .dataset(n)
            .map_err(|e| bad(path, format!("/matrix/features/{n} is missing ({e})")))?;
        strings(&d, path)
    };
    let (ids, names, types) = (feature("id")?, feature("name")?, feature("feature_type")?);
    if barcodes.len() != n_cells || [&ids, &names, &types].iter().any(|v| v.len() != n_features) {
        return Err(bad(path, "barcodes or features do not match /matrix/shape"));
    }
    Ok(TenX {
        matrix: FeatureMatrix::Sparse {
            n_features,
            n_cells,
            indptr: ptr.iter().map(|&p| p as usize).collect(),
            indices: idx.iter().map(|&i| i as i32).collect(),
            values,
        },
        barcodes,
        feature_ids: ids,
        feature_names: names,
        feature_types: types,
    })
}

// ---------------------------------------------------------------------------------------------
// Counts read from the file while training (out of core).

/// The rows of a sparse matrix stored with cells as rows (see [`open_csr_counts`]), read on
/// demand: straight from the file's bytes when its arrays allow it ([`RawRows`]), through
/// the HDF5 library otherwise.
struct StoredRows {
    what: String,
    data: Dataset,
    indices: Dataset,
    /// The arrays' stored types, read without conversion.
    types: [Stored; 2],
    n_cols: usize,
    raw: Option<Arc<RawRows>>,
    stamp: Arc<FileStamp>,
}

/// The size and modification time of the file a model opened: rows read after it changed
/// in place would belong to other cells, so every read checks them first. (A file replaced
/// by another under the same name is still the opened one for the open handles.)
struct FileStamp {
    path: std::path::PathBuf,
    file: std::fs::File,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    fn of(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
        let m = file.metadata().map_err(|e| bad(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            len: m.len(),
            modified: m.modified().ok(),
            file,
        })
    }

    fn check(&self) -> Result<()> {
        let m = self.file.metadata().map_err(|e| bad(&self.path, e))?;
        if (m.len(), m.modified().ok()) != (self.len, self.modified) {
            return Err(bad(
                &self.path,
                "the file changed since the model opened it, so its rows may no longer be the \
                 model's cells; give the file again as `x` to read it anew",
            ));
        }
        Ok(())
    }
}

/// A stored numeric type, as HDF5 describes it.
#[derive(Clone, Copy, Debug)]
enum Stored {
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
}

impl Stored {
    fn of(ds: &Dataset) -> Option<Self> {
        use hdf5::types::{FloatSize as F, IntSize as I};
        Some(match descriptor(ds)? {
            TypeDescriptor::Float(F::U4) => Self::F32,
            TypeDescriptor::Float(F::U8) => Self::F64,
            TypeDescriptor::Integer(I::U1) => Self::I8,
            TypeDescriptor::Integer(I::U2) => Self::I16,
            TypeDescriptor::Integer(I::U4) => Self::I32,
            TypeDescriptor::Integer(I::U8) => Self::I64,
            TypeDescriptor::Unsigned(I::U1) => Self::U8,
            TypeDescriptor::Unsigned(I::U2) => Self::U16,
            TypeDescriptor::Unsigned(I::U4) => Self::U32,
            TypeDescriptor::Unsigned(I::U8) => Self::U64,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::I8 | Self::U8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::F32 | Self::I32 | Self::U32 => 4,
            Self::F64 | Self::I64 | Self::U64 => 8,
        }
    }

    /// The little-endian elements in `bytes`, each through `conv` (from f64: exact for
    /// every count and index a matrix holds); one loop per stored type.
    fn decode<T>(self, bytes: &[u8], conv: impl Fn(f64) -> T) -> Vec<T> {
        fn run<const N: usize, T>(
            bytes: &[u8],
            get: impl Fn([u8; N]) -> f64,
            conv: impl Fn(f64) -> T,
        ) -> Vec<T> {
            bytes
                .chunks_exact(N)
                .map(|b| conv(get(b.try_into().unwrap_or([0; N]))))
                .collect()
        }
        match self {
            Self::F32 => run(bytes, |b| f32::from_le_bytes(b) as f64, conv),
            Self::F64 => run(bytes, f64::from_le_bytes, conv),
            Self::I8 => run(bytes, |b| i8::from_le_bytes(b) as f64, conv),
            Self::I16 => run(bytes, |b| i16::from_le_bytes(b) as f64, conv),
            Self::I32 => run(bytes, |b| i32::from_le_bytes(b) as f64, conv),
            Self::I64 => run(bytes, |b| i64::from_le_bytes(b) as f64, conv),
            Self::U8 => run(bytes, |b| u8::from_le_bytes(b) as f64, conv),
            Self::U16 => run(bytes, |b| u16::from_le_bytes(b) as f64, conv),
            Self::U32 => run(bytes, |b| u32::from_le_bytes(b) as f64, conv),
            Self::U64 => run(bytes, |b| u64::from_le_bytes(b) as f64, conv),
        }
    }

    /// `ds[range]` read through the library in this stored type (HDF5 converts nothing),
    /// each element through `conv`.
    fn read_slice<T>(
        self,
        ds: &Dataset,
        range: std::ops::Range<usize>,
        what: &str,
        conv: impl Fn(f64) -> T,
    ) -> Result<Vec<T>> {
        macro_rules! read {
            ($t:ty) => {
                slice_raw::<$t>(ds, range, what)?
                    .into_iter()
                    .map(|x| conv(x as f64))
                    .collect()
            };
        }
        Ok(match self {
            Self::F32 => read!(f32),
            Self::F64 => read!(f64),
            Self::I8 => read!(i8),
            Self::I16 => read!(i16),
            Self::I32 => read!(i32),
            Self::I64 => read!(i64),
            Self::U8 => read!(u8),
            Self::U16 => read!(u16),
            Self::U32 => read!(u32),
            Self::U64 => read!(u64),
        })
    }
}

/// A stored column index as a gene's position, or u32::MAX for one that is no gene's
/// (negative, fractional, `n_cols` or more).
fn gene_index(n_cols: usize) -> impl Fn(f64) -> u32 {
    let n_cols = n_cols as f64;
    move |j| {
        if (0.0..n_cols).contains(&j) && j.fract() == 0.0 {
            j as u32
        } else {
            u32::MAX
        }
    }
}

/// The rows' values and gene positions, or an error naming `what` if a position was no gene's.
fn checked_rows(indices: Vec<u32>, values: Vec<f32>, what: &str) -> Result<(Vec<u32>, Vec<f32>)> {
    if indices.contains(&u32::MAX) {
        return Err(Error::File(format!("{what}: a gene index is out of range")));
    }
    Ok((indices, values))
}

/// Where a 1-D array's elements lie in the file.
enum Extents {
    /// One run of bytes from this offset.
    Contiguous(u64),
    /// Chunks of `chunk` elements, each at its offset.
    Chunked { chunk: usize, offsets: Vec<u64> },
}

/// A 1-D array of the file read without the HDF5 library: little-endian numbers stored
/// unfiltered (not compressed), contiguously or in allocated chunks.
struct RawArray {
    stored: Stored,
    extents: Extents,
}

/// Chunks a raw array may have (each looked up once when the file is opened).
const RAW_MAX_CHUNKS: usize = 1 << 20;

impl RawArray {
    /// How `ds` lies in the file (`base`: where HDF5's addresses start), or None when the
    /// library must read it (filters, big-endian or unallocated storage, compact layout).
    fn locate(ds: &Dataset, base: u64) -> Option<Self> {
        use hdf5::dataset::Layout;
        let stored = Stored::of(ds)?;
        let dtype = ds.dtype().ok()?;
        let little = matches!(dtype.byte_order(), hdf5::datatype::ByteOrder::LittleEndian);
        if !little || !ds.filters().is_empty() || ds.ndim() != 1 {
            return None;
        }
        let n = ds.size();
        let extents = match ds.layout() {
            Layout::Contiguous if n == 0 => Extents::Contiguous(base),
            Layout::Contiguous => Extents::Contiguous(base + ds.offset()?),
            Layout::Chunked => {
                let chunk = *ds.chunk()?.first()?;
                let n_chunks = n.div_ceil(chunk.max(1));
                if chunk == 0 || n_chunks > RAW_MAX_CHUNKS {
                    return None;
                }
                let mut offsets = Vec::with_capacity(n_chunks);
                for k in 0..n_chunks {
                    let at = [(k * chunk) as hdf5_sys::h5::hsize_t];
                    let (mut mask, mut addr, mut size) = (0, 0, 0);
                    // SAFETY: a valid dataset id, a 1-element coordinate for a 1-D dataset
                    // and valid out-pointers, under the library's lock.
                    let status = {
                        let _lock = hdf5_sys::LOCK.lock();
                        unsafe {
                            hdf5_sys::h5d::H5Dget_chunk_info_by_coord(
                                ds.id(),
                                at.as_ptr(),
                                &mut mask,
                                &mut addr,
                                &mut size,
                            )
                        }
                    };
                    let whole = (chunk * stored.size()) as u64;
                    if status < 0 || addr == hdf5_sys::h5::HADDR_UNDEF || size != whole {
                        return None;
                    }
                    offsets.push(base + addr);
                }
                Extents::Chunked { chunk, offsets }
            }
            _ => return None,
        };
        Some(Self { stored, extents })
    }

    /// The bytes of elements `range`.
    fn read(
        &self,
        file: &std::fs::File,
        range: std::ops::Range<usize>,
    ) -> std::io::Result<Vec<u8>> {
        let size = self.stored.size();
        let mut out = vec![0u8; range.len() * size];
        match &self.extents {
            Extents::Contiguous(at) => read_at(file, &mut out, at + (range.start * size) as u64)?,
            Extents::Chunked { chunk, offsets } => {
                let mut pos = range.start;
                while pos < range.end {
                    let (k, within) = (pos / chunk, pos % chunk);
                    let take = (chunk - within).min(range.end - pos);
                    let dst = (pos - range.start) * size;
                    read_at(
                        file,
                        &mut out[dst..dst + take * size],
                        offsets[k] + (within * size) as u64,
                    )?;
                    pos += take;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(unix)]
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// A CSR matrix's `indices` and `data` read from the file's bytes, without the HDF5 library:
/// what a thread other than R's may read. (HDF5 serialises its callers on one lock, and an
/// R error raised inside an rhdf5 call leaves that lock held by R's thread for good; a read
/// through the library on any other thread would then wait forever.)
struct RawRows {
    what: String,
    file: std::fs::File,
    data: RawArray,
    indices: RawArray,
    n_cols: usize,
    stamp: Arc<FileStamp>,
}

impl RawRows {
    fn open(path: &Path, file: &File, rows: &StoredRows) -> Option<Self> {
        let base = file.userblock();
        Some(Self {
            what: rows.what.clone(),
            file: std::fs::File::open(path).ok()?,
            data: RawArray::locate(&rows.data, base)?,
            indices: RawArray::locate(&rows.indices, base)?,
            n_cols: rows.n_cols,
            stamp: rows.stamp.clone(),
        })
    }
}

impl RowReader for RawRows {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn read(&self, nnz: std::ops::Range<usize>) -> Result<(Vec<u32>, Vec<f32>)> {
        self.stamp.check()?;
        let w = &self.what;
        let io = |e: std::io::Error| Error::File(format!("{w}: reading the counts: {e}"));
        let bytes = self.data.read(&self.file, nnz.clone()).map_err(io)?;
        let values = self.data.stored.decode(&bytes, |x| x as f32);
        let bytes = self.indices.read(&self.file, nnz).map_err(io)?;
        let indices = self.indices.stored.decode(&bytes, gene_index(self.n_cols));
        checked_rows(indices, values, w)
    }
}

/// `ds[range]` read as `S` (its stored type, so that HDF5 converts nothing) into a vector
/// without a second copy.
fn slice_raw<S: hdf5::H5Type>(
    ds: &Dataset,
    range: std::ops::Range<usize>,
    what: &str,
) -> Result<Vec<S>> {
    let a = ds
        .read_slice_1d::<S, _>(range)
        .map_err(|e| Error::File(format!("{what}: reading {}: {e}", ds.name())))?;
    let n = a.len();
    match a.into_raw_vec_and_offset() {
        (v, Some(0) | None) if v.len() == n => Ok(v),
        (v, offset) => {
            let start = offset.unwrap_or(0);
            Ok(v.into_iter().skip(start).take(n).collect())
        }
    }
}

impl RowReader for StoredRows {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn background(&self) -> Option<Arc<dyn RowReader>> {
        self.raw.clone().map(|r| r as Arc<dyn RowReader>)
    }

    /// From the bytes when it can; else through the library, each array in its stored type.
    fn read(&self, nnz: std::ops::Range<usize>) -> Result<(Vec<u32>, Vec<f32>)> {
        if let Some(raw) = &self.raw {
            return raw.read(nnz);
        }
        self.stamp.check()?;
        let _quiet = QuietHdf5::new();
        let (w, [value_type, index_type]) = (&self.what, self.types);
        let values = value_type.read_slice(&self.data, nnz.clone(), w, |x| x as f32)?;
        let indices = index_type.read_slice(&self.indices, nnz, w, gene_index(self.n_cols))?;
        checked_rows(indices, values, w)
    }
}

/// A count matrix of `n_cells` x `n_genes` left in the file, stored with cells as rows: an
/// AnnData sparse matrix stored CSR (`X`, `layers/<name>`; AnnData's default for counts) or
/// a CellRanger `matrix` group (CSC of features x barcodes). What training from a file reads.
pub fn open_csr_counts(
    path: &Path,
    group: &str,
    n_cells: usize,
    n_genes: usize,
) -> Result<FileCounts> {
    let _quiet = QuietHdf5::new();
    let file = open(path)?;
    let name = group.trim_start_matches('/');
    let g = match file.group(name) {
        Ok(g) => g,
        Err(_) if file.link_exists(name) => {
            return Err(bad(
                path,
                format!(
                    "{name} is a dense matrix; training from the file reads sparse counts stored \
                     by cells (read it into memory with read_h5ad() instead)"
                ),
            ))
        }
        Err(_) => return Err(bad(path, format!("has no matrix {name}"))),
    };
    let enc = encoding(&g).or_else(|| attr_string(&g, "h5sparse_format"));
    match enc.as_deref() {
        Some("csr_matrix") | Some("csr") => {}
        Some("csc_matrix") | Some("csc") => {
            return Err(bad(
                path,
                format!(
                    "{name} is stored by genes (CSC); training from the file reads cells as rows \
                     (CSR): rewrite it (in Python: adata.X = adata.X.tocsr()) or read it into \
                     memory with read_h5ad()"
                ),
            ))
        }
        None if g.link_exists("barcodes") => {} // CellRanger: one column per barcode
        e => {
            return Err(bad(
                path,
                format!("{name} is not a sparse count matrix (encoding {e:?})"),
            ))
        }
    }
    let ds = |n: &str| {
        g.dataset(n)
            .map_err(|e| bad(path, format!("{name}/{n} is missing ({e})")))
    };
    let (data, indices, indptr) = (ds("data")?, ds("indices")?, ds("indptr")?);
    for d in [&data, &indices, &indptr] {
        check_filters(d, path)?;
    }
    let ptr = integers(&indptr, path)?;
    let nnz = data.size();
    let consistent = ptr.len() == n_cells + 1
        && ptr.first() == Some(&0)
        && ptr.last().map(|&p| p as usize) == Some(nnz)
        && indices.size() == nnz
        && ptr.windows(2).all(|w| w[0] <= w[1]);
    if !consistent {
        return Err(bad(
            path,
            format!(
                "{name} does not hold one row per cell ({n_cells} cells) or its arrays disagree"
            ),
        ));
    }
    let stored = |d: &Dataset, n: &str| {
        Stored::of(d).ok_or_else(|| {
            bad(
                path,
                format!("{name}/{n} holds {:?}, not numbers", descriptor(d)),
            )
        })
    };
    let types = [stored(&data, "data")?, stored(&indices, "indices")?];
    let mut reader = StoredRows {
        what: format!("{} ({name})", path.display()),
        data,
        indices,
        types,
        n_cols: n_genes,
        raw: None,
        stamp: Arc::new(FileStamp::of(path)?),
    };
    reader.raw = RawRows::open(path, &file, &reader).map(Arc::new);
    FileCounts::new(
        Arc::new(reader),
        ptr.into_iter().map(|p| p as usize).collect(),
        n_genes,
    )
}

// ---------------------------------------------------------------------------------------------
// Writing AnnData.

/// What `write_h5ad` writes: `x` and the layers (features x cells), `obs`, `var`, and the
/// `obsm` embeddings (cells x dims, column-major: `Dense` with n_features = cells).
pub struct AnnDataOut {
    pub x: FeatureMatrix,
    pub obs: Frame,
    pub var: Frame,
    pub layers: Vec<(String, FeatureMatrix)>,
    pub obsm: Vec<(String, FeatureMatrix)>,
}

fn h5err(path: &Path, what: &str) -> impl Fn(hdf5::Error) -> Error {
    let (path, what) = (path.to_path_buf(), what.to_string());
    move |e| bad(&path, format!("cannot write {what} ({e})"))
}

fn vstr(s: &str) -> Result<VarLenUnicode> {
    s.parse::<VarLenUnicode>()
        .map_err(|e| Error::InvalidData(format!("the text {s:?} cannot be stored ({e})")))
}

fn set_attr(loc: &hdf5::Location, name: &str, value: &str, path: &Path) -> Result<()> {
    let v = vstr(value)?;
    loc.new_attr::<VarLenUnicode>()
        .create(name)
        .and_then(|a| a.write_scalar(&v))
        .map_err(h5err(path, name))
}

/// The encoding attributes AnnData reads every element by.
fn set_encoding(loc: &hdf5::Location, kind: &str, version: &str, path: &Path) -> Result<()> {
    set_attr(loc, "encoding-type", kind, path)?;
    set_attr(loc, "encoding-version", version, path)
}

fn write_strings(g: &Group, name: &str, values: &[String], path: &Path) -> Result<Dataset> {
    let v = values.iter().map(|s| vstr(s)).collect::<Result<Vec<_>>>()?;
    let ds = g
        .new_dataset::<VarLenUnicode>()
        .shape(v.len())
        .create(name)
        .map_err(h5err(path, name))?;
    ds.write_raw(&v).map_err(h5err(path, name))?;
    set_encoding(&ds, "string-array", "0.2.0", path)?;
    Ok(ds)
}

fn write_array<T: hdf5::H5Type>(
    g: &Group,
    name: &str,
    values: &[T],
    shape: &[usize],
    path: &Path,
) -> Result<Dataset> {
    let ds = g
        .new_dataset::<T>()
        .shape(shape)
        .create(name)
        .map_err(h5err(path, name))?;
    ds.write_raw(values).map_err(h5err(path, name))?;
    set_encoding(&ds, "array", "0.2.0", path)?;
    Ok(ds)
}

/// An embedding (n cells x k, column-major) as AnnData's row-major `obsm` array `name`.
fn write_embedding(
    g: &Group,
    name: &str,
    values: &[f64],
    n: usize,
    k: usize,
    path: &Path,
) -> Result<()> {
    write_array(g, name, &reorder(values, n, k), &[n, k], path)?;
    Ok(())
}

/// Counts are stored as float32 (exact up to 2^24, as AnnData files usually hold them);
/// other values as float64.
fn write_values(g: &Group, name: &str, v: &[f64], shape: &[usize], path: &Path) -> Result<()> {
    if v.iter()
        .all(|x| x.fract() == 0.0 && x.abs() <= 16_777_216.0)
    {
        let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        write_array(g, name, &f, shape, path)?;
    } else {
        write_array(g, name, v, shape, path)?;
    }
    Ok(())
}

/// A features x cells matrix as AnnData's cells x features element `name` of `g`.
fn write_matrix(g: &Group, name: &str, m: &FeatureMatrix, path: &Path) -> Result<()> {
    match m {
        FeatureMatrix::Sparse {
            n_features,
            n_cells,
            indptr,
            indices,
            values,
        } => {
            // CSC of features x cells = CSR of cells x features
            let sg = g.create_group(name).map_err(h5err(path, name))?;
            set_encoding(&sg, "csr_matrix", "0.1.0", path)?;
            sg.new_attr::<u64>()
                .shape(2)
                .create("shape")
                .and_then(|a| a.write_raw(&[*n_cells as u64, *n_features as u64]))
                .map_err(h5err(path, "shape"))?;
            write_values(&sg, "data", values, &[values.len()], path)?;
            write_array(&sg, "indices", indices, &[indices.len()], path)?;
            let ptr: Vec<i64> = indptr.iter().map(|&p| p as i64).collect();
            write_array(&sg, "indptr", &ptr, &[ptr.len()], path)?;
        }
        FeatureMatrix::Dense {
            n_features,
            n_cells,
            values,
        } => {
            // column-major features x cells = row-major cells x features
            write_values(g, name, values, &[*n_cells, *n_features], path)?;
        }
    }
    Ok(())
}

fn write_column(g: &Group, name: &str, col: &Column, path: &Path) -> Result<()> {
    match col {
        Column::Double(v) => {
            write_array(g, name, v, &[v.len()], path)?;
        }
        Column::Integer(v) => {
            write_array(g, name, v, &[v.len()], path)?;
        }
        Column::Logical(v) if v.iter().all(Option::is_some) => {
            let b: Vec<bool> = v.iter().map(|x| x.unwrap_or(false)).collect();
            write_array(g, name, &b, &[b.len()], path)?;
        }
        Column::Logical(v) => {
            let cg = g.create_group(name).map_err(h5err(path, name))?;
            set_encoding(&cg, "nullable-boolean", "0.1.0", path)?;
            let b: Vec<bool> = v.iter().map(|x| x.unwrap_or(false)).collect();
            let mask: Vec<bool> = v.iter().map(Option::is_none).collect();
            write_array(&cg, "values", &b, &[b.len()], path)?;
            write_array(&cg, "mask", &mask, &[mask.len()], path)?;
        }
        Column::Text(v) if v.iter().all(Option::is_some) => {
            let s: Vec<String> = v.iter().map(|x| x.clone().unwrap_or_default()).collect();
            write_strings(g, name, &s, path)?;
        }
        Column::Text(v) => {
            let cg = g.create_group(name).map_err(h5err(path, name))?;
            set_encoding(&cg, "nullable-string-array", "0.1.0", path)?;
            let s: Vec<String> = v.iter().map(|x| x.clone().unwrap_or_default()).collect();
            let mask: Vec<bool> = v.iter().map(Option::is_none).collect();
            write_strings(&cg, "values", &s, path)?;
            write_array(&cg, "mask", &mask, &[mask.len()], path)?;
        }
        Column::Factor {
            codes,
            levels,
            ordered,
        } => {
            let cg = g.create_group(name).map_err(h5err(path, name))?;
            set_encoding(&cg, "categorical", "0.2.0", path)?;
            cg.new_attr::<bool>()
                .create("ordered")
                .and_then(|a| a.write_scalar(ordered))
                .map_err(h5err(path, "ordered"))?;
            write_strings(&cg, "categories", levels, path)?;
            let c: Vec<i32> = codes.iter().map(|c| c.map_or(-1, |c| c as i32)).collect();
            write_array(&cg, "codes", &c, &[c.len()], path)?;
        }
    }
    Ok(())
}

fn write_frame(root: &Group, name: &str, f: &Frame, path: &Path) -> Result<()> {
    let g = root.create_group(name).map_err(h5err(path, name))?;
    set_encoding(&g, "dataframe", "0.2.0", path)?;
    set_attr(&g, "_index", "_index", path)?;
    let order = f
        .columns
        .iter()
        .map(|(n, _)| vstr(n))
        .collect::<Result<Vec<_>>>()?;
    g.new_attr::<VarLenUnicode>()
        .shape(order.len())
        .create("column-order")
        .and_then(|a| a.write_raw(&order))
        .map_err(h5err(path, "column-order"))?;
    write_strings(&g, "_index", &f.index, path)?;
    for (n, c) in &f.columns {
        if n == "_index" {
            return Err(Error::InvalidData(format!(
                "{name} has a column named \"_index\", which AnnData reserves"
            )));
        }
        write_column(&g, n, c, path)?;
    }
    Ok(())
}

fn dict_group(root: &Group, name: &str, path: &Path) -> Result<Group> {
    let g = root.create_group(name).map_err(h5err(path, name))?;
    set_encoding(&g, "dict", "0.1.0", path)?;
    Ok(g)
}

/// Writes `a` as an `.h5ad` file (AnnData 0.8+ encodings, readable by anndata and by
/// [`read_h5ad`]). The file is written beside `path` and moved into place at the end, so a
/// failure leaves no half-written file and an existing one untouched.
pub fn write_h5ad(path: &Path, a: &AnnDataOut, overwrite: bool) -> Result<()> {
    let _quiet = QuietHdf5::new();
    if path.exists() && !overwrite {
        return Err(Error::File(format!(
            "{} exists; use overwrite = TRUE to replace it",
            path.display()
        )));
    }
    hdf5::silence_errors(true);
    super::write_beside(path, |tmp| {
        let file = File::create(tmp).map_err(|e| bad(path, format!("cannot create ({e})")))?;
        set_encoding(&file, "anndata", "0.1.0", path)?;
        write_matrix(&file, "X", &a.x, path)?;
        write_frame(&file, "obs", &a.obs, path)?;
        write_frame(&file, "var", &a.var, path)?;
        let layers = dict_group(&file, "layers", path)?;
        for (n, m) in &a.layers {
            write_matrix(&layers, n, m, path)?;
        }
        let obsm = dict_group(&file, "obsm", path)?;
        for (n, m) in &a.obsm {
            if let FeatureMatrix::Dense {
                n_features: n_obs,
                n_cells: k,
                values,
            } = m
            {
                write_embedding(&obsm, n, values, *n_obs, *k, path)?;
            }
        }
        for g in ["obsp", "varm", "varp", "uns"] {
            dict_group(&file, g, path)?;
        }
        file.close().map_err(h5err(path, "the file"))
    })
}

/// Bytes a row block of [`write_h5ad_rows`] holds at most (its HDF5 chunks too).
const ROW_BLOCK_BYTES: usize = 16 << 20;

/// Writes an `.h5ad` file whose X is a dense cells x features float32 matrix that `fill`
/// produces a block of rows at a time, handing each block (rows from `start`, row-major) to
/// the writer it is given: a result larger than memory goes to disk block by block. The
/// blocks must cover the rows in order. `obs` and `var` name the rows and columns. Written
/// beside `path` and moved into place at the end, as [`write_h5ad`] does.
pub fn write_h5ad_rows(
    path: &Path,
    obs: &Frame,
    var: &Frame,
    overwrite: bool,
    fill: impl FnOnce(usize, &mut dyn FnMut(usize, &[f32]) -> Result<()>) -> Result<()>,
) -> Result<()> {
    let _quiet = QuietHdf5::new();
    if path.exists() && !overwrite {
        return Err(Error::File(format!(
            "{} exists; use overwrite = TRUE to replace it",
            path.display()
        )));
    }
    let (n_rows, n_cols) = (obs.index.len(), var.index.len());
    let block = (ROW_BLOCK_BYTES / (4 * n_cols.max(1))).clamp(1, n_rows.max(1));
    hdf5::silence_errors(true);
    super::write_beside(path, |tmp| {
        let file = File::create(tmp).map_err(|e| bad(path, format!("cannot create ({e})")))?;
        set_encoding(&file, "anndata", "0.1.0", path)?;
        let x = file
            .new_dataset::<f32>()
            .shape([n_rows, n_cols])
            .chunk([block, n_cols.max(1)])
            .create("X")
            .map_err(h5err(path, "X"))?;
        set_encoding(&x, "array", "0.2.0", path)?;
        let mut next = 0;
        let mut write = |start: usize, values: &[f32]| -> Result<()> {
            let rows = values.len() / n_cols.max(1);
            if start != next || rows * n_cols != values.len() || start + rows > n_rows {
                return Err(Error::File(format!(
                    "{}: rows {start}.. do not continue the rows written so far",
                    path.display()
                )));
            }
            let view =
                nd::ArrayView2::from_shape((rows, n_cols), values).map_err(|e| bad(path, e))?;
            x.write_slice(view, nd::s![start..start + rows, ..])
                .map_err(h5err(path, "X"))?;
            next += rows;
            Ok(())
        };
        fill(block, &mut write)?;
        if next != n_rows {
            return Err(bad(path, format!("{next} of {n_rows} rows were written")));
        }
        write_frame(&file, "obs", obs, path)?;
        write_frame(&file, "var", var, path)?;
        for g in ["layers", "obsm", "obsp", "varm", "varp", "uns"] {
            dict_group(&file, g, path)?;
        }
        file.close().map_err(h5err(path, "the file"))
    })
}

/// Adds elements to an existing `.h5ad` file: `obsm` embeddings (cells x dims, column-major)
/// and `layers` (features x cells), in the file's cell and feature order (the caller
/// matches names). An element of the same name is an error unless `overwrite`. Everything
/// is checked before the file is touched.
pub fn add_to_h5ad(
    path: &Path,
    obsm: &[(String, FeatureMatrix)],
    layers: &[(String, FeatureMatrix)],
    overwrite: bool,
) -> Result<()> {
    let _quiet = QuietHdf5::new();
    let (n_obs, n_var) = {
        let (obs, var) = h5ad_names(path)?;
        (obs.len(), var.len())
    };
    hdf5::silence_errors(true);
    let file =
        File::open_rw(path).map_err(|e| bad(path, format!("cannot open for writing ({e})")))?;
    let group = |name: &str| -> Result<Group> {
        match file.group(name) {
            Ok(g) => Ok(g),
            Err(_) => dict_group(&file, name, path),
        }
    };
    let (obsm_g, layers_g) = (group("obsm")?, group("layers")?);
    for (g, items, what) in [(&obsm_g, obsm, "obsm"), (&layers_g, layers, "layers")] {
        for (name, m) in items {
            let (rows, cols) = matrix_dims(m);
            let fits = if what == "obsm" {
                rows == n_obs && matches!(m, FeatureMatrix::Dense { .. })
            } else {
                (rows, cols) == (n_var, n_obs)
            };
            if !fits {
                return Err(bad(
                    path,
                    format!(
                        "{what}/{name} does not match the file's {n_obs} cells x {n_var} features"
                    ),
                ));
            }
            if g.link_exists(name) && !overwrite {
                return Err(bad(
                    path,
                    format!("already has {what}/{name}; use overwrite = TRUE to replace it"),
                ));
            }
        }
    }
    for (name, m) in obsm {
        if obsm_g.link_exists(name) {
            obsm_g.unlink(name).map_err(h5err(path, name))?;
        }
        if let FeatureMatrix::Dense {
            n_features: n,
            n_cells: k,
            values,
        } = m
        {
            write_embedding(&obsm_g, name, values, *n, *k, path)?;
        }
    }
    for (name, m) in layers {
        if layers_g.link_exists(name) {
            layers_g.unlink(name).map_err(h5err(path, name))?;
        }
        write_matrix(&layers_g, name, m, path)?;
    }
    file.close().map_err(h5err(path, "the file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposing_compressed_rows_keeps_every_entry() {
        // 2 x 3: [[1, 0, 2], [0, 3, 0]]
        let (p, i, x) = transpose(2, 3, &[0, 2, 3], &[0, 2, 1], &[1.0, 2.0, 3.0]);
        assert_eq!(p, vec![0, 1, 2, 3]);
        assert_eq!(i, vec![0, 1, 0]);
        assert_eq!(x, vec![1.0, 3.0, 2.0]);
    }

    #[test]
    fn missing_and_non_hdf5_files_are_errors() {
        let missing = Path::new("/nonexistent/file.h5ad");
        assert!(read_h5ad(missing, true).is_err());
        let not_h5 = std::env::temp_dir().join(format!("rscvi-not-h5-{}", std::process::id()));
        std::fs::write(&not_h5, b"plain text").unwrap();
        let e = read_h5ad(&not_h5, true).err().unwrap().to_string();
        assert!(e.contains("not a readable HDF5 file"), "{e}");
        assert!(read_10x_h5(&not_h5).is_err());
        std::fs::remove_file(&not_h5).unwrap();
    }

    #[test]
    fn a_file_backed_matrix_reads_the_rows_read_h5ad_reads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../inst/extdata/cellbench_small.h5ad");
        let FeatureMatrix::Sparse {
            n_features,
            n_cells,
            indptr,
            indices,
            values,
        } = read_h5ad(&path, false).unwrap().matrix
        else {
            panic!("X of the fixture is sparse");
        };
        for group in ["X", "/layers/counts"] {
            let file = open_csr_counts(&path, group, n_cells, n_features).unwrap();
            assert_eq!((file.n_rows(), file.n_cols()), (n_cells, n_features));
            let order: Vec<usize> = (0..n_cells).rev().collect();
            let mut seen = 0;
            file.gather(&order, |r, idx, val| {
                let c = order[r];
                let want = indptr[c]..indptr[c + 1];
                let want_idx: Vec<u32> = indices[want.clone()].iter().map(|&j| j as u32).collect();
                let want_val: Vec<f32> = values[want].iter().map(|&v| v as f32).collect();
                assert_eq!((idx, val), (&want_idx[..], &want_val[..]), "cell {c}");
                seen += 1;
            })
            .unwrap();
            assert_eq!(seen, n_cells);
        }
        let err = |group, cells| {
            open_csr_counts(&path, group, cells, n_features)
                .err()
                .unwrap()
                .to_string()
        };
        assert!(err("layers/dense_log", n_cells).contains("dense matrix"));
        assert!(err("layers/nope", n_cells).contains("has no matrix layers/nope"));
        assert!(err("X", n_cells + 1).contains("does not hold one row per cell"));
        // A CellRanger matrix is stored by barcodes: read as is.
        let tenx = path.with_file_name("snareseq2_10x.h5");
        let mtx = read_10x_h5(&tenx).unwrap();
        let (n_features, n_cells) = (mtx.feature_ids.len(), mtx.barcodes.len());
        assert!(open_csr_counts(&tenx, "matrix", n_cells, n_features).is_ok());
    }

    /// The library's reading of `group`'s arrays in `path`, and the raw reader of them.
    fn both_readers(path: &Path, group: &str) -> (StoredRows, Option<RawRows>) {
        let file = File::open(path).unwrap();
        let g = file.group(group).unwrap();
        let (data, indices) = (g.dataset("data").unwrap(), g.dataset("indices").unwrap());
        let rows = StoredRows {
            what: group.into(),
            types: [Stored::of(&data).unwrap(), Stored::of(&indices).unwrap()],
            data,
            indices,
            n_cols: 1 << 30,
            raw: None,
            stamp: Arc::new(FileStamp::of(path).unwrap()),
        };
        let raw = RawRows::open(path, &file, &rows);
        (rows, raw)
    }

    #[test]
    fn raw_reads_equal_the_library_reads_and_compressed_arrays_are_left_to_it() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
        let cases = [
            // anndata's writer: chunked; an older one: contiguous
            (root.join("inst/extdata/cellbench_small.h5ad"), "X", true),
            (
                root.join("tests/testthat/fixtures/cellbench_old_categories.h5ad"),
                "X",
                false,
            ),
        ];
        for (path, group, chunked) in cases {
            let (rows, raw) = both_readers(&path, group);
            let raw = raw.expect("stored unfiltered and little-endian");
            assert_eq!(
                matches!(raw.data.extents, Extents::Chunked { .. }),
                chunked,
                "{}",
                path.display()
            );
            let n = rows.data.size();
            for r in [0..n, 3..n / 2, n / 3..n, 7..7] {
                assert_eq!(raw.read(r.clone()).unwrap(), rows.read(r).unwrap());
            }
        }
        // Compressed chunks: only the library can read them (on the thread that asks).
        let path = std::env::temp_dir().join(format!("rscvi-deflate-{}.h5", std::process::id()));
        {
            let f = File::create(&path).unwrap();
            let g = f.create_group("X").unwrap();
            let idx: Vec<i64> = (0..1000).map(|k| k % 7).collect();
            let val: Vec<f64> = (0..1000).map(|k| (k % 5) as f64).collect();
            let deflated = || g.new_dataset_builder().chunk(64).deflate(4);
            deflated().with_data(&idx).create("indices").unwrap();
            deflated().with_data(&val).create("data").unwrap();
        }
        let (rows, raw) = both_readers(&path, "X");
        assert!(raw.is_none());
        let (i, v) = rows.read(10..20).unwrap();
        assert_eq!(i, (10..20).map(|k| (k % 7) as u32).collect::<Vec<_>>());
        assert_eq!(v, (10..20).map(|k| (k % 5) as f32).collect::<Vec<_>>());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn reading_a_file_that_changed_under_the_model_is_an_error() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../inst/extdata/cellbench_small.h5ad");
        let path = std::env::temp_dir().join(format!("rscvi-changed-{}.h5ad", std::process::id()));
        std::fs::copy(&fixture, &path).unwrap();
        let FeatureMatrix::Sparse {
            n_features,
            n_cells,
            ..
        } = read_h5ad(&path, false).unwrap().matrix
        else {
            panic!("X of the fixture is sparse");
        };
        let counts = open_csr_counts(&path, "X", n_cells, n_features).unwrap();
        let all: Vec<usize> = (0..n_cells).collect();
        counts.gather(&all, |_, _, _| {}).unwrap();
        counts.release();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let err = counts.gather(&all, |_, _, _| {}).unwrap_err().to_string();
        assert!(err.contains("changed since the model opened it"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
