//! extendr glue of the file readers (core io::h5): matrices as the slots of a features x
//! cells dgCMatrix or a dense matrix, data frames as typed columns the R layer assembles.

use std::path::Path;

use extendr_api::prelude::*;
use extendr_api::Result;
use rscvi_core::io::h5::{self, Column, FeatureMatrix, Frame};

use crate::guarded;

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
fn rs_read_h5ad(path: &str, matrix: &str) -> Result<Robj> {
    r_anndata(guarded(|| h5::read_h5ad(Path::new(path), matrix))?)
}

#[extendr]
fn rs_read_h5mu(path: &str) -> Result<Robj> {
    let mu = guarded(|| h5::read_h5mu(Path::new(path)))?;
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

extendr_module! {
    mod io;
    fn rs_read_h5ad;
    fn rs_read_h5mu;
    fn rs_read_10x_h5;
}
