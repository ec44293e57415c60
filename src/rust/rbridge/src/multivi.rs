//! extendr glue of MULTIVI: the constructor and MULTIVI's own queries (the entry points
//! every model shares are in models.rs and queries.rs).

use extendr_api::prelude::*;
use extendr_api::Result;
use rscvi_core::models::multivi::model::{self as multivi, AccessibilityQuery, ProteinQuery};
use rscvi_core::models::multivi::{Modality, MultiviKind, MultiviModel};

use crate::models::{build_model, build_query_model, handle, Query};
use crate::queries::{latent_list, r_matrix};
use crate::{dataset, guarded, indices, on_device_guarded, other};

/// `ds`: one dataset whose columns are the genes, then the regions, then the proteins.
#[extendr]
fn rs_multivi_new(ds: Robj, config_json: &str, registry_json: &str) -> Result<Robj> {
    let data = dataset(&ds)?;
    build_model(config_json, registry_json, |c, r| {
        MultiviModel::new(c, data, r)
    })
}

/// A scArches query model from `reference` for the query data `ds`.
#[extendr]
fn rs_multivi_query_new(
    reference: Robj,
    ds: Robj,
    config_json: &str,
    registry_json: &str,
    freeze_json: &str,
) -> Result<Robj> {
    build_query_model::<MultiviKind>(
        &reference,
        &ds,
        config_json,
        registry_json,
        freeze_json,
        MultiviModel::for_query,
    )
}

/// Latent representation of one modality: "joint", "expression", "accessibility" or
/// "protein".
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_multivi_latent(
    model: Robj,
    ds: Robj,
    idx: Robj,
    modality: &str,
    give_mean: bool,
    batch_size: i32,
    device: &str,
) -> Result<Robj> {
    let modality = match modality {
        "joint" => Modality::Joint,
        "expression" => Modality::Expression,
        "accessibility" => Modality::Accessibility,
        "protein" => Modality::Protein,
        _ => return Err(other(format!("internal: unknown modality {modality}"))),
    };
    let q = Query::<MultiviKind>::of(&model, &ds, &idx, batch_size)?;
    let latent = on_device_guarded!(q.model, device, |module, dev| {
        let bs = q.batch_size;
        multivi::modality_latent(module, q.data, &q.cells, modality, give_mean, bs, dev)
    })?;
    Ok(latent_list(latent))
}

/// Region accessibility probabilities; `transform_batch` < 0: each cell's own batch;
/// `regions` NULL: all, else 0-based region indices.
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_multivi_normalized_accessibility(
    model: Robj,
    ds: Robj,
    idx: Robj,
    transform_batch: i32,
    regions: Robj,
    use_z_mean: bool,
    normalize_cells: bool,
    normalize_regions: bool,
    batch_size: i32,
    device: &str,
) -> Result<Robj> {
    let q = Query::<MultiviKind>::of(&model, &ds, &idx, batch_size)?;
    let n_regions = q.model.config().n_regions;
    let regions = (!regions.is_null())
        .then(|| indices(&regions, n_regions))
        .transpose()?;
    let request = AccessibilityQuery {
        cells: &q.cells,
        transform_batch: (transform_batch >= 0).then_some(transform_batch as u32),
        regions: regions.as_deref(),
        use_z_mean,
        normalize_cells,
        normalize_regions,
        batch_size: q.batch_size,
    };
    let out = on_device_guarded!(q.model, device, |module, dev| {
        multivi::normalized_accessibility(module, q.data, &request, dev)
    })?;
    Ok(r_matrix(&out))
}

/// Foreground probability of each protein; `transform_batch`: batch codes to average over
/// (-1: each cell's own); `proteins` NULL: all, else 0-based protein indices.
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_multivi_protein_foreground_probability(
    model: Robj,
    ds: Robj,
    idx: Robj,
    transform_batch: Vec<i32>,
    proteins: Robj,
    use_z_mean: bool,
    batch_size: i32,
    device: &str,
) -> Result<Robj> {
    let q = Query::<MultiviKind>::of(&model, &ds, &idx, batch_size)?;
    let n_proteins = q.model.config().n_proteins;
    let proteins = (!proteins.is_null())
        .then(|| indices(&proteins, n_proteins))
        .transpose()?;
    let request = ProteinQuery {
        cells: &q.cells,
        transform_batch: transform_batch
            .iter()
            .map(|&b| (b >= 0).then_some(b as u32))
            .collect(),
        proteins: proteins.as_deref(),
        use_z_mean,
        batch_size: q.batch_size,
    };
    let out = on_device_guarded!(q.model, device, |module, dev| {
        multivi::protein_foreground_probability(module, q.data, &request, dev)
    })?;
    Ok(r_matrix(&out))
}

/// Per cell: the expression log library and the accessibility factor.
#[extendr]
fn rs_multivi_library_size_factors(
    model: Robj,
    ds: Robj,
    idx: Robj,
    batch_size: i32,
    device: &str,
) -> Result<Robj> {
    let q = Query::<MultiviKind>::of(&model, &ds, &idx, batch_size)?;
    let (e, a) = on_device_guarded!(q.model, device, |module, dev| {
        multivi::library_size_factors(module, q.data, &q.cells, q.batch_size, dev)
    })?;
    let to_f64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
    Ok(list!(expression = to_f64(e), accessibility = to_f64(a)).into())
}

#[extendr]
fn rs_multivi_region_factors(model: Robj) -> Result<Robj> {
    let m = handle::<MultiviKind>(&model)?;
    let v = guarded(|| multivi::region_factors(&m.module))?;
    Ok(v.into_iter().map(f64::from).collect::<Vec<f64>>().into())
}

extendr_module! {
    mod multivi;
    fn rs_multivi_new;
    fn rs_multivi_query_new;
    fn rs_multivi_latent;
    fn rs_multivi_normalized_accessibility;
    fn rs_multivi_protein_foreground_probability;
    fn rs_multivi_library_size_factors;
    fn rs_multivi_region_factors;
}
