//! extendr glue of SPLICEVI: the constructor, the check of user-given ATSE totals and
//! SPLICEVI's own queries (the entry points every model shares are in models.rs and
//! queries.rs).

use extendr_api::prelude::*;
use extendr_api::Result;
use rscvi_core::de::{DeRequest, TestMode};
use rscvi_core::family::Head;
use rscvi_core::infer::expression::RowWeights;
use rscvi_core::models::splicevi::queries::{self, Modality, SplicingQuery};
use rscvi_core::models::splicevi::{SpliceviConfig, SpliceviKind, SpliceviModel};

use crate::models::{build_model, Query};
use crate::queries::{batch_codes, latent_list, r_matrix};
use crate::{dataset, guarded, indices, ints, on_device_guarded, other, reals};

/// `ds`: one dataset whose columns are the genes, then the junctions.
#[extendr]
fn rs_splicevi_new(ds: Robj, config_json: &str, registry_json: &str) -> Result<Robj> {
    let data = dataset(&ds)?;
    build_model(config_json, registry_json, |c, r| {
        SpliceviModel::new(c, data, r)
    })
}

/// Number of entries where the user's ATSE totals (dgCMatrix slots of junctions x cells)
/// differ from the sums of the junction counts over each ATSE.
#[extendr]
fn rs_splicevi_check_totals(
    ds: Robj,
    n_genes: i32,
    junction_atse: Robj,
    p: Robj,
    i: Robj,
    x: Robj,
) -> Result<i32> {
    let data = dataset(&ds)?;
    let atse: Vec<u32> = ints(&junction_atse, "junction_atse")?
        .into_iter()
        .map(|a| a.max(0) as u32)
        .collect();
    let n_junctions = atse.len();
    let config = SpliceviConfig::new(n_genes.max(0) as usize, atse, 1);
    let totals = crate::csr_counts(&p, i, &x, n_junctions as i32)?;
    let n = guarded(|| {
        if totals.n_rows != data.n_cells() {
            return Err(rscvi_core::Error::InvalidData(
                "the junction totals do not match the cells".into(),
            ));
        }
        queries::count_total_mismatches(&config, data, &totals)
    })?;
    Ok(n as i32)
}

/// Latent representation of one modality: "joint", "expression" or "splicing".
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_splicevi_latent(
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
        "splicing" => Modality::Splicing,
        _ => return Err(other(format!("internal: unknown modality {modality}"))),
    };
    let q = Query::<SpliceviKind>::of(&model, &ds, &idx, batch_size)?;
    let latent = on_device_guarded!(q.model, device, |module, dev| {
        let bs = q.batch_size;
        queries::modality_latent(module, q.data, &q.cells, modality, give_mean, bs, dev)
    })?;
    Ok(latent_list(latent))
}

/// The head of a `norm_splicing_function`.
fn splicing_head(name: &str) -> Result<Head> {
    match name {
        "decoder" => Ok(Head::Splicing),
        "dm_posterior_mean" => Ok(Head::SplicingPosterior),
        _ => Err(other(format!(
            "internal: unknown norm_splicing_function {name}"
        ))),
    }
}

/// Junction probabilities; `transform_batch`: batch codes to average over (empty: each
/// cell's own); `junctions` NULL: all, else 0-based.
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_splicevi_normalized_splicing(
    model: Robj,
    ds: Robj,
    idx: Robj,
    transform_batch: Robj,
    junctions: Robj,
    use_z_mean: bool,
    n_samples: i32,
    return_mean: bool,
    norm_splicing_function: &str,
    batch_size: i32,
    device: &str,
) -> Result<Robj> {
    let head = splicing_head(norm_splicing_function)?;
    let q = Query::<SpliceviKind>::of(&model, &ds, &idx, batch_size)?;
    let n_junctions = q.model.config().n_junctions;
    let junctions = (!junctions.is_null())
        .then(|| indices(&junctions, n_junctions))
        .transpose()?;
    let transform_batch = match transform_batch.is_null() {
        true => vec![],
        false => ints(&transform_batch, "transform_batch")?
            .into_iter()
            .map(|b| b.max(0) as u32)
            .collect(),
    };
    let request = SplicingQuery {
        cells: &q.cells,
        transform_batch,
        junctions: junctions.as_deref(),
        use_z_mean,
        n_samples: n_samples.max(1) as usize,
        return_mean,
        posterior_mean: head == Head::SplicingPosterior,
        batch_size: q.batch_size,
    };
    let out = on_device_guarded!(q.model, device, |module, dev| {
        queries::normalized_splicing(module, q.data, &request, dev)
    })?;
    Ok(r_matrix(&out))
}

/// Per cell: the log library log(s + 1e-6).
#[extendr]
fn rs_splicevi_library_size_factors(
    model: Robj,
    ds: Robj,
    idx: Robj,
    batch_size: i32,
    device: &str,
) -> Result<Robj> {
    let q = Query::<SpliceviKind>::of(&model, &ds, &idx, batch_size)?;
    let v = on_device_guarded!(q.model, device, |module, dev| {
        queries::library_size_factors(module, q.data, &q.cells, q.batch_size, dev)
    })?;
    Ok(v.into_iter().map(f64::from).collect::<Vec<f64>>().into())
}

/// Differential splicing between two cell sets (0-based); `batches1/2` NULL = observed
/// batches, else batch codes to marginalise over. Columns in junction order.
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_splicevi_differential_splicing(
    model: Robj,
    ds: Robj,
    idx1: Robj,
    idx2: Robj,
    batches1: Robj,
    batches2: Robj,
    n_samples_overall: i32,
    delta: f64,
    fdr_target: f64,
    norm_splicing_function: &str,
    mode: &str,
    batch_size: i32,
    seed: f64,
    device: &str,
) -> Result<Robj> {
    let head = splicing_head(norm_splicing_function)?;
    let (batches1, batches2) = (batch_codes(&batches1)?, batch_codes(&batches2)?);
    let q = Query::<SpliceviKind>::of(&model, &ds, &idx1, batch_size)?;
    let cells2 = indices(&idx2, q.data.n_cells())?;
    let req = DeRequest {
        cells1: &q.cells,
        cells2: &cells2,
        change_mode: mode == "change",
        delta,
        test_mode: TestMode::Three,
        pseudocount: None,
        batches1,
        batches2,
        n_samples_overall: n_samples_overall.max(1) as usize,
        batch_size: q.batch_size,
        fdr_target,
        interval_levels: vec![],
        seed: seed.max(0.0) as u64,
        weights: RowWeights::Uniform,
        head,
        filter_outlier_cells: false,
    };
    let table = on_device_guarded!(q.model, device, |module, dev| {
        queries::differential_splicing(module, q.data, &req, dev)
    })?;
    let mut names: Vec<String> = table.columns.iter().map(|(n, _)| n.clone()).collect();
    let mut values: Vec<Robj> = table
        .columns
        .into_iter()
        .map(|(_, v)| Robj::from(v))
        .collect();
    let n = values.first().map_or(0, |v| v.len());
    let flags: Robj = match table.is_ds {
        Some(f) => f.into(),
        None => Robj::from(vec![Rbool::na(); n]),
    };
    names.insert(1, "is_ds_fdr".into());
    values.insert(1, flags);
    let mut cols = List::from_values(values);
    cols.set_names(names)?;
    Ok(cols.into())
}

/// LeafCutter-style ATSE code (0-based) of every junction from its coordinates.
#[extendr]
fn rs_junction_clusters(
    chrom: Vec<String>,
    start: Robj,
    end: Robj,
    strand: Vec<String>,
) -> Result<Robj> {
    let pos = |x: &Robj, name: &str| -> Result<Vec<i64>> {
        Ok(reals(x, name)?.into_iter().map(|v| v as i64).collect())
    };
    let (start, end) = (pos(&start, "start")?, pos(&end, "end")?);
    let codes =
        guarded(|| rscvi_core::data::junctions::junction_clusters(&chrom, &start, &end, &strand))?;
    Ok(codes
        .into_iter()
        .map(|c| c as i32)
        .collect::<Vec<i32>>()
        .into())
}

extendr_module! {
    mod splicevi;
    fn rs_junction_clusters;
    fn rs_splicevi_new;
    fn rs_splicevi_check_totals;
    fn rs_splicevi_latent;
    fn rs_splicevi_normalized_splicing;
    fn rs_splicevi_library_size_factors;
    fn rs_splicevi_differential_splicing;
}
