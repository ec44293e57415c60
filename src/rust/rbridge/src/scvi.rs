//! extendr glue of SCVI: the constructor, the scArches query model and SCVI's own queries
//! (the entry points every model shares are in models.rs and queries.rs).

use extendr_api::prelude::*;
use extendr_api::Result;
use rscvi_core::models::scvi::{queries, ScviKind, ScviModel};

use crate::models::{build_model, build_query_model, Query};
use crate::queries::r_matrix;
use crate::{dataset, indices, on_device_guarded, transform_batches};

#[extendr]
fn rs_scvi_new(ds: Robj, config_json: &str, registry_json: &str) -> Result<Robj> {
    let data = dataset(&ds)?;
    build_model(config_json, registry_json, |c, r| {
        ScviModel::new(c, data, r)
    })
}

/// The SCVI model and the query arguments every SCVI query has.
fn scvi_query<'a>(m: &'a Robj, ds: &'a Robj, idx: &Robj, bs: i32) -> Result<Query<'a, ScviKind>> {
    Query::of(m, ds, idx, bs)
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
    let q = scvi_query(&model, &ds, &idx, batch_size)?;
    let n = n_mc_samples.max(0) as usize;
    let v = on_device_guarded!(q.model, device, |module, dev| {
        queries::marginal_ll(module, q.data, &q.cells, n, q.batch_size, dev)
    })?;
    Ok(v.into())
}

#[extendr]
fn rs_scvi_likelihood_parameters(
    model: Robj,
    ds: Robj,
    idx: Robj,
    batch_size: i32,
    device: &str,
) -> Result<Robj> {
    let q = scvi_query(&model, &ds, &idx, batch_size)?;
    let p = on_device_guarded!(q.model, device, |module, dev| {
        queries::likelihood_parameters(module, q.data, &q.cells, q.batch_size, dev)
    })?;
    let opt = |x: Option<rscvi_core::infer::Matrix>| x.as_ref().map_or(().into(), r_matrix);
    Ok(list!(
        mean = r_matrix(&p.mean),
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
    let q = scvi_query(&model, &ds, &idx, batch_size)?;
    let v = on_device_guarded!(q.model, device, |module, dev| {
        queries::latent_library_size(module, q.data, &q.cells, give_mean, q.batch_size, dev)
    })?;
    Ok(v.into())
}

/// The model's data minified (each cell's latent posterior instead of its counts).
#[extendr]
fn rs_scvi_minify(model: Robj, ds: Robj, batch_size: i32, device: &str) -> Result<Robj> {
    let q = scvi_query(&model, &ds, &().into(), batch_size)?;
    let data = on_device_guarded!(q.model, device, |module, dev| {
        queries::minify(module, q.data, q.batch_size, dev)
    })?;
    Ok(ExternalPtr::new(data).into())
}

#[extendr]
fn rs_dataset_is_minified(ds: Robj) -> Result<bool> {
    Ok(dataset(&ds)?.is_minified())
}

#[extendr]
fn rs_dataset_n_cells(ds: Robj) -> Result<i32> {
    Ok(dataset(&ds)?.n_cells() as i32)
}

/// Saves a minified dataset into the folder of its saved model.
#[extendr]
fn rs_minified_save(ds: Robj, dir: &str) -> Result<Robj> {
    let data = dataset(&ds)?;
    crate::guarded(|| rscvi_core::io::save_minified(std::path::Path::new(dir), data))?;
    Ok(().into())
}

/// The minified dataset saved with the model in `dir`, or NULL.
#[extendr]
fn rs_minified_load(dir: &str) -> Result<Robj> {
    let data = crate::guarded(|| rscvi_core::io::load_minified(std::path::Path::new(dir)))?;
    Ok(data.map_or(().into(), |d| ExternalPtr::new(d).into()))
}

#[extendr]
fn rs_scvi_batch_representation(model: Robj, ds: Robj, idx: Robj, batch_size: i32) -> Result<Robj> {
    let q = scvi_query(&model, &ds, &idx, batch_size)?;
    // a lookup in the embedding table: no network pass, no device
    let out = crate::guarded(|| queries::batch_representation(&q.model.module, q.data, &q.cells))?;
    Ok(r_matrix(&out))
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
    let q = scvi_query(&model, &ds, &idx, batch_size)?;
    let genes = (!genes.is_null())
        .then(|| indices(&genes, q.data.n_genes()))
        .transpose()?;
    let seed = seed.max(0.0) as u64;
    let out = on_device_guarded!(q.model, device, |module, dev| {
        let (cells, genes) = (&q.cells, genes.as_deref());
        queries::posterior_predictive_sample(module, q.data, cells, genes, q.batch_size, seed, dev)
    })?;
    Ok(r_matrix(&out))
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
    let q = scvi_query(&model, &ds, &idx, batch_size)?;
    let tb = transform_batches(&transform_batch)?;
    let (n, g, seed) = (
        n_samples.max(1) as usize,
        q.data.n_genes(),
        seed.max(0.0) as u64,
    );
    let v = on_device_guarded!(q.model, device, |module, dev| {
        queries::feature_correlation(
            module,
            q.data,
            &q.cells,
            &tb,
            n,
            rna_size_factor,
            spearman,
            q.batch_size,
            seed,
            dev,
        )
    })?;
    Ok(RMatrix::new_matrix(g, g, |r, c| v[r * g + c]).into())
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
    build_query_model::<ScviKind>(
        &reference,
        &ds,
        config_json,
        registry_json,
        freeze_json,
        ScviModel::for_query,
    )
}

extendr_module! {
    mod scvi;
    fn rs_scvi_new;
    fn rs_scvi_marginal_ll;
    fn rs_scvi_likelihood_parameters;
    fn rs_scvi_library_size;
    fn rs_scvi_batch_representation;
    fn rs_scvi_minify;
    fn rs_dataset_is_minified;
    fn rs_dataset_n_cells;
    fn rs_minified_save;
    fn rs_minified_load;
    fn rs_scvi_posterior_predictive;
    fn rs_scvi_feature_correlation;
    fn rs_scvi_query_new;
}
