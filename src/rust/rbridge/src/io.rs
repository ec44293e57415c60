//! extendr glue of the file readers (core io::h5): matrices as the slots of a features x
//! cells dgCMatrix or a dense matrix, data frames as typed columns the R layer assembles.

use std::path::Path;

use extendr_api::prelude::*;
use extendr_api::Result;
use rscvi_core::io::h5::{self, Column, FeatureMatrix, Frame};

use crate::{guarded, ints, other, reals};

fn r_feature_matrix(m: FeatureMatrix) -> Robj {
    match m {
        FeatureMatrix::Sparse {
            n_features,
            n_cells,
            indptr,
            indices,
            values,
        } => list!(
            kind = "sparse",
            p = indptr.iter().map(|&p| p as i32).collect::<Vec<i32>>(),
            i = indices,
            x = values,
            dim = vec![n_features as i32, n_cells as i32]
        )
        .into(),
        FeatureMatrix::Dense {
            n_features,
            n_cells,
            values,
        } => list!(
            kind = "dense",
            x = values,
            dim = vec![n_features as i32, n_cells as i32]
        )
        .into(),
    }
}

fn r_column(c: Column) -> Robj {
    match c {
        Column::Double(v) => list!(kind = "double", values = v).into(),
        Column::Integer(v) => list!(kind = "integer", values = v).into(),
        Column::Logical(v) => list!(
            kind = "logical",
            values = v.into_iter().map(Rbool::from).collect::<Vec<Rbool>>()
        )
        .into(),
        Column::Text(v) => {
            let na: Vec<bool> = v.iter().map(Option::is_none).collect();
            let text: Vec<String> = v.into_iter().map(Option::unwrap_or_default).collect();
            list!(kind = "text", values = text, na = na).into()
        }
        Column::Factor {
            codes,
            levels,
            ordered,
        } => list!(
            kind = "factor",
            // 1-based codes, 0 for a missing value
            codes = codes
                .into_iter()
                .map(|c| c.map_or(0, |c| c as i32 + 1))
                .collect::<Vec<i32>>(),
            levels = levels,
            ordered = ordered
        )
        .into(),
    }
}

fn r_frame(f: Frame) -> Result<Robj> {
    let (names, cols): (Vec<String>, Vec<Robj>) =
        f.columns.into_iter().map(|(n, c)| (n, r_column(c))).unzip();
    let mut columns = List::from_values(cols);
    columns.set_names(names)?;
    Ok(list!(index = f.index, columns = columns).into())
}

fn named(items: Vec<(String, FeatureMatrix)>) -> Result<Robj> {
    let (names, ms): (Vec<String>, Vec<Robj>) = items
        .into_iter()
        .map(|(n, m)| (n, r_feature_matrix(m)))
        .unzip();
    let mut l = List::from_values(ms);
    l.set_names(names)?;
    Ok(l.into())
}

fn r_anndata(a: h5::AnnData) -> Result<Robj> {
    Ok(list!(
        matrix = r_feature_matrix(a.matrix),
        obs = r_frame(a.obs)?,
        var = r_frame(a.var)?,
        layers = named(a.layers)?,
        obsm = named(a.obsm)?,
        skipped = a.skipped
    )
    .into())
}

#[extendr]
fn rs_read_h5ad(path: &str, layers: bool) -> Result<Robj> {
    r_anndata(guarded(|| h5::read_h5ad(Path::new(path), layers))?)
}

/// `obs` and `var` of an `.h5ad` file, its matrices left in the file.
#[extendr]
fn rs_read_h5ad_frames(path: &str) -> Result<Robj> {
    let (obs, var) = guarded(|| h5::read_h5ad_frames(Path::new(path)))?;
    Ok(list!(obs = r_frame(obs)?, var = r_frame(var)?).into())
}

#[extendr]
fn rs_read_h5mu(path: &str, layers: bool) -> Result<Robj> {
    let mu = guarded(|| h5::read_h5mu(Path::new(path), layers))?;
    let (names, mods): (Vec<String>, Vec<h5::AnnData>) = mu.modalities.into_iter().unzip();
    let mut l = List::from_values(
        mods.into_iter()
            .map(r_anndata)
            .collect::<Result<Vec<_>>>()?,
    );
    l.set_names(names)?;
    Ok(list!(obs = r_frame(mu.obs)?, modalities = l).into())
}

#[extendr]
fn rs_read_10x_h5(path: &str) -> Result<Robj> {
    let t = guarded(|| h5::read_10x_h5(Path::new(path)))?;
    Ok(list!(
        matrix = r_feature_matrix(t.matrix),
        barcodes = t.barcodes,
        id = t.feature_ids,
        name = t.feature_names,
        feature_type = t.feature_types
    )
    .into())
}

fn field(l: &List, name: &str) -> Result<Robj> {
    l.dollar(name)
        .map_err(|_| other(format!("internal: no `{name}` in a written element")))
}

fn texts(x: &Robj, name: &str) -> Result<Vec<String>> {
    x.as_str_vector()
        .map(|v| v.into_iter().map(str::to_string).collect())
        .ok_or_else(|| other(format!("internal: `{name}` must be a character vector")))
}

/// A matrix the R layer described as list(kind, p, i, x, dim) or list(kind, x, dim).
fn feature_matrix(m: &Robj) -> Result<FeatureMatrix> {
    let l: List = m
        .try_into()
        .map_err(|_| other("internal: a matrix must be a list"))?;
    let dim = ints(&field(&l, "dim")?, "dim")?;
    let (n_features, n_cells) = (dim[0].max(0) as usize, dim[1].max(0) as usize);
    let values = reals(&field(&l, "x")?, "x")?;
    Ok(match field(&l, "kind")?.as_str() {
        Some("sparse") => FeatureMatrix::Sparse {
            n_features,
            n_cells,
            indptr: ints(&field(&l, "p")?, "p")?
                .into_iter()
                .map(|p| p.max(0) as usize)
                .collect(),
            indices: ints(&field(&l, "i")?, "i")?,
            values,
        },
        _ => FeatureMatrix::Dense {
            n_features,
            n_cells,
            values,
        },
    })
}

pub(crate) fn frame_from(f: &Robj) -> Result<Frame> {
    let l: List = f
        .try_into()
        .map_err(|_| other("internal: a frame must be a list"))?;
    let index = texts(&field(&l, "index")?, "index")?;
    let cols: List = field(&l, "columns")?
        .try_into()
        .map_err(|_| other("internal: columns must be a list"))?;
    let mut columns = Vec::new();
    for (name, c) in cols.iter() {
        let c: List = c
            .try_into()
            .map_err(|_| other("internal: a column must be a list"))?;
        let values = field(&c, "values")?;
        let col = match field(&c, "kind")?.as_str() {
            Some("double") => Column::Double(reals(&values, name)?),
            Some("integer") => Column::Integer(ints(&values, name)?),
            Some("logical") => Column::Logical(
                values
                    .as_logical_slice()
                    .ok_or_else(|| other("internal: logical column"))?
                    .iter()
                    .map(|b| (!b.is_na()).then(|| b.is_true()))
                    .collect(),
            ),
            Some("text") => {
                let na = field(&c, "na")?;
                let na = na
                    .as_logical_slice()
                    .ok_or_else(|| other("internal: text mask"))?;
                Column::Text(
                    texts(&values, name)?
                        .into_iter()
                        .zip(na)
                        .map(|(s, m)| (!m.is_true()).then_some(s))
                        .collect(),
                )
            }
            _ => Column::Factor {
                codes: ints(&values, name)?
                    .into_iter()
                    .map(|c| (c > 0).then(|| c as usize - 1))
                    .collect(),
                levels: texts(&field(&c, "levels")?, "levels")?,
                ordered: field(&c, "ordered")?.as_bool().unwrap_or(false),
            },
        };
        columns.push((name.to_string(), col));
    }
    Ok(Frame { index, columns })
}

fn named_matrices(l: &Robj) -> Result<Vec<(String, FeatureMatrix)>> {
    let l: List = l
        .try_into()
        .map_err(|_| other("internal: matrices must be a list"))?;
    l.iter()
        .map(|(n, m)| feature_matrix(&m).map(|m| (n.to_string(), m)))
        .collect()
}

#[extendr]
fn rs_write_h5ad(
    path: &str,
    x: Robj,
    obs: Robj,
    var: Robj,
    layers: Robj,
    obsm: Robj,
    overwrite: bool,
) -> Result<Robj> {
    let a = h5::AnnDataOut {
        x: feature_matrix(&x)?,
        obs: frame_from(&obs)?,
        var: frame_from(&var)?,
        layers: named_matrices(&layers)?,
        obsm: named_matrices(&obsm)?,
    };
    guarded(|| h5::write_h5ad(Path::new(path), &a, overwrite))?;
    Ok(().into())
}

#[extendr]
fn rs_h5ad_names(path: &str) -> Result<Robj> {
    let (obs, var) = guarded(|| h5::h5ad_names(Path::new(path)))?;
    Ok(list!(obs = obs, var = var).into())
}

#[extendr]
fn rs_add_to_h5ad(path: &str, obsm: Robj, layers: Robj, overwrite: bool) -> Result<Robj> {
    let (obsm, layers) = (named_matrices(&obsm)?, named_matrices(&layers)?);
    guarded(|| h5::add_to_h5ad(Path::new(path), &obsm, &layers, overwrite))?;
    Ok(().into())
}

extendr_module! {
    mod io;
    fn rs_read_h5ad;
    fn rs_read_h5mu;
    fn rs_read_h5ad_frames;
    fn rs_read_10x_h5;
    fn rs_write_h5ad;
    fn rs_h5ad_names;
    fn rs_add_to_h5ad;
}
