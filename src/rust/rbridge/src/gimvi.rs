//! extendr glue of GIMVI: the constructor over two datasets (0 = sequencing, 1 = spatial)
//! and its queries (the shared entry points are in models.rs).

use extendr_api::prelude::*;
use extendr_api::Result;
use rscvi_core::models::gimvi::{self, GimviKind, GimviModel};

use crate::models::{build_model, handle};
use crate::{dataset, guarded, indices, matrix, other};

fn which_dataset(i: i32) -> Result<usize> {
    match i {
        0 | 1 => Ok(i as usize),
        _ => Err(other("internal: dataset must be 0 (seq) or 1 (spatial)")),
    }
}

/// `decode_mode` < 0: the dataset's own mode (None).
fn decode_mode_of(decode_mode: i32) -> Result<Option<usize>> {
    if decode_mode < 0 {
        Ok(None)
    } else {
        which_dataset(decode_mode).map(Some)
    }
}

#[extendr]
fn rs_gimvi_new(seq: Robj, spatial: Robj, config_json: &str, registry_json: &str) -> Result<Robj> {
    let data = [dataset(&seq)?, dataset(&spatial)?];
    build_model(config_json, registry_json, |c, r| {
        GimviModel::new(c, data, r)
    })
}

#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_gimvi_imputed(
    model: Robj,
    which: i32,
    ds: Robj,
    idx: Robj,
    deterministic: bool,
    normalized: bool,
    decode_mode: i32,
    batch_size: i32,
) -> Result<Robj> {
    let (m, data, i) = (
        handle::<GimviKind>(&model)?,
        dataset(&ds)?,
        which_dataset(which)?,
    );
    let cells = indices(&idx, data.n_cells())?;
    let mode = decode_mode_of(decode_mode)?;
    let v = guarded(|| {
        gimvi::imputed_values(
            &m.module,
            i,
            data,
            &cells,
            deterministic,
            normalized,
            mode,
            batch_size.max(1) as usize,
            &Default::default(),
        )
    })?;
    Ok(matrix(&v, cells.len(), m.config().n_genes))
}

/// The spatial cells' imputation blended with their nearest sequencing cells in the panel
/// (`get_imputed_values(method = "blend")`).
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_gimvi_imputed_blend(
    model: Robj,
    seq: Robj,
    spatial: Robj,
    deterministic: bool,
    normalized: bool,
    decode_mode: i32,
    batch_size: i32,
    k: i32,
    weight: f64,
) -> Result<Robj> {
    let m = handle::<GimviKind>(&model)?;
    let data = [dataset(&seq)?, dataset(&spatial)?];
    let cells: Vec<usize> = (0..data[1].n_cells()).collect();
    let mode = decode_mode_of(decode_mode)?;
    let v = guarded(|| {
        gimvi::neighbours::blended_imputed_values(
            &m.module,
            data,
            &cells,
            deterministic,
            normalized,
            mode,
            batch_size.max(1) as usize,
            k.max(0) as usize,
            weight,
            &Default::default(),
        )
    })?;
    Ok(matrix(&v, cells.len(), m.config().n_genes))
}

extendr_module! {
    mod gimvi;
    fn rs_gimvi_new;
    fn rs_gimvi_imputed;
    fn rs_gimvi_imputed_blend;
}
