//! The query entry points every model shares, dispatched on the model's kind: the latent
//! representation and ELBO terms (every model), normalized expression, the
//! `n_samples_overall` sampler and differential expression (models with an expression
//! head). A model's own queries are in its file.

use extendr_api::prelude::*;
use extendr_api::Result;
use std::path::Path;

use rscvi_core::de;
use rscvi_core::family::{ExpressionModule, Head};
use rscvi_core::infer::{self, ExpressionQuery, Matrix, RowWeights};
use rscvi_core::io::h5;
use rscvi_core::models::gimvi::GimviKind;
use rscvi_core::models::multivi::MultiviKind;
use rscvi_core::models::scvi::ScviKind;
use rscvi_core::models::splicevi::SpliceviKind;

use crate::models::{with_kind, Query};
use crate::{indices, ints, on_device_guarded, other, reals, transform_batches};

/// A row-major core matrix as an R matrix.
pub(crate) fn r_matrix(m: &Matrix) -> Robj {
    crate::matrix(&m.values, m.n_rows, m.n_cols)
}

/// A latent query's (representation, mean, variance) as an R list.
pub(crate) fn latent_list((z, mean, var): (Matrix, Matrix, Matrix)) -> Robj {
    list!(
        z = r_matrix(&z),
        mean = r_matrix(&mean),
        var = r_matrix(&var)
    )
    .into()
}

/// Latent representation of cells of dataset `dataset` (0-based): the representation (mean
/// or a draw), the posterior mean and variance.
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_model_latent(
    model: Robj,
    dataset: i32,
    ds: Robj,
    idx: Robj,
    give_mean: bool,
    mc_samples: i32,
    batch_size: i32,
    device: &str,
) -> Result<Robj> {
    let (i, mc) = (dataset.max(0) as usize, mc_samples.max(1) as usize);
    let latent = with_kind!(
        &model,
        [ScviKind, GimviKind, MultiviKind, SpliceviKind],
        |m| {
            let q = Query::new(m, &ds, &idx, batch_size)?;
            on_device_guarded!(q.model, device, |module, dev| {
                infer::latent(
                    module,
                    i,
                    q.data,
                    &q.cells,
                    give_mean,
                    mc,
                    q.batch_size,
                    dev,
                )
            })
        }
    )?;
    Ok(latent_list(latent))
}

/// Per-cell reconstruction loss (and its parts by modality) and local KL of cells of dataset
/// `dataset` (0-based).
#[extendr]
fn rs_model_elbo_terms(
    model: Robj,
    dataset: i32,
    ds: Robj,
    idx: Robj,
    batch_size: i32,
    device: &str,
) -> Result<Robj> {
    let i = dataset.max(0) as usize;
    let terms = with_kind!(
        &model,
        [ScviKind, GimviKind, MultiviKind, SpliceviKind],
        |m| {
            let q = Query::new(m, &ds, &idx, batch_size)?;
            on_device_guarded!(q.model, device, |module, dev| {
                infer::elbo_terms(module, i, q.data, &q.cells, q.batch_size, dev)
            })
        }
    )?;
    let by_modality = List::from_pairs(
        (terms.reconstruction_by_modality.into_iter()).map(|(name, v)| (name, Robj::from(v))),
    );
    Ok(list!(
        reconstruction_loss = terms.reconstruction,
        kl_local = terms.kl_local,
        by_modality = by_modality
    )
    .into())
}

/// The genes (0-based, None = all of the module's expression head) an expression query
/// selects from R's `genes`, and how many it returns.
fn selected_genes<M: ExpressionModule<rscvi_core::backend::Cpu>>(
    genes: &Robj,
    module: &M,
) -> Result<(Option<Vec<usize>>, usize)> {
    let width = module.head_columns(Head::Expression).map_or(0, |c| c.len());
    let genes = (!genes.is_null())
        .then(|| indices(genes, width))
        .transpose()?;
    let n = genes.as_ref().map_or(width, Vec::len);
    Ok((genes, n))
}

/// Posterior normalised expression; `library_size` NaN = the latent library (μ).
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_model_normalized_expression(
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
    let tb = transform_batches(&transform_batch)?;
    let out = with_kind!(&model, [ScviKind, MultiviKind, SpliceviKind], |m| {
        let q = Query::new(m, &ds, &idx, batch_size)?;
        let (genes, _) = selected_genes(&genes, &q.model.module)?;
        let request = ExpressionQuery {
            cells: &q.cells,
            transform_batch: tb,
            genes: genes.as_deref(),
            library_size: library_size.is_finite().then_some(library_size),
            n_samples: n_samples.max(1) as usize,
            batch_size: q.batch_size,
        };
        on_device_guarded!(q.model, device, |module, dev| {
            infer::normalized_expression(module, q.data, &request, dev)
        })
    })?;
    Ok(r_matrix(&out))
}

/// Normalized expression written into a new `.h5ad` file (`path`; X = cells x genes, `obs`
/// and `var` from the R layer) a block of cells at a time, so that a result larger than
/// memory never exists in full.
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_model_normalized_expression_to_h5ad(
    model: Robj,
    ds: Robj,
    idx: Robj,
    transform_batch: Robj,
    genes: Robj,
    library_size: f64,
    n_samples: i32,
    batch_size: i32,
    device: &str,
    path: &str,
    obs: Robj,
    var: Robj,
    overwrite: bool,
) -> Result<Robj> {
    let tb = transform_batches(&transform_batch)?;
    let (obs, var) = (crate::io::frame_from(&obs)?, crate::io::frame_from(&var)?);
    with_kind!(&model, [ScviKind, MultiviKind, SpliceviKind], |m| {
        let q = Query::new(m, &ds, &idx, batch_size)?;
        let (genes, n_genes) = selected_genes(&genes, &q.model.module)?;
        if obs.index.len() != q.cells.len() || var.index.len() != n_genes {
            return Err(other("internal: the file's names do not match the query"));
        }
        on_device_guarded!(q.model, device, |module, dev| {
            h5::write_h5ad_rows(Path::new(path), &obs, &var, overwrite, |block, write| {
                for (k, cells) in q.cells.chunks(block).enumerate() {
                    let request = ExpressionQuery {
                        cells,
                        transform_batch: tb.clone(),
                        genes: genes.as_deref(),
                        library_size: library_size.is_finite().then_some(library_size),
                        n_samples: n_samples.max(1) as usize,
                        batch_size: q.batch_size,
                    };
                    let out = infer::normalized_expression(module, q.data, &request, dev)?;
                    write(k * block, &out.values)?;
                }
                Ok(())
            })
        })?;
        Ok(().into())
    })
}

/// Uniform row draws for "", else importance weights with the options of this JSON object.
fn row_weights(importance_json: &str) -> Result<RowWeights> {
    if importance_json.is_empty() {
        return Ok(RowWeights::Uniform);
    }
    let opts = serde_json::from_str(importance_json)
        .map_err(|e| other(format!("`importance_weighting_kwargs`: {e}")))?;
    Ok(RowWeights::Importance(opts))
}

/// The head a differential analysis or sampler reads: "expression" or "accessibility".
fn head(name: &str) -> Result<Head> {
    match name {
        "expression" => Ok(Head::Expression),
        "accessibility" => Ok(Head::Accessibility),
        _ => Err(other(format!("internal: unknown head {name}"))),
    }
}

/// `m` rows of the head's normalised values (rho * library_size for expression) drawn from
/// the posterior of `idx` (n_samples_overall), uniformly or with importance weights
/// (`importance_json`, see `row_weights`).
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_model_scale_samples(
    model: Robj,
    head_name: &str,
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
    let rows = m.max(1) as usize;
    let head = head(head_name)?;
    let weights = row_weights(importance_json)?;
    let tb = (transform_batch >= 0).then_some(transform_batch as u32);
    let mut rng = rscvi_core::rand_seeded(seed.max(0.0) as u64);
    let (values, g) = with_kind!(&model, [ScviKind, MultiviKind, SpliceviKind], |mdl| {
        let q = Query::new(mdl, &ds, &idx, batch_size)?;
        let (cells, size) = (&q.cells, library_size as f32);
        let v = on_device_guarded!(q.model, device, |module, dev| {
            infer::scale_samples(
                module,
                head,
                q.data,
                cells,
                tb,
                size,
                rows,
                &weights,
                q.batch_size,
                &mut rng,
                dev,
            )
        })?;
        let width = q.model.module.head_columns(head).map_or(0, |c| c.len());
        Ok((v, width))
    })?;
    Ok(crate::matrix(&values, rows, g))
}

/// Batch codes to marginalise over, or NULL for each cell's observed batch.
pub(crate) fn batch_codes(b: &Robj) -> Result<Option<Vec<u32>>> {
    if b.is_null() {
        return Ok(None);
    }
    let codes = ints(b, "batches")?;
    Ok(Some(codes.into_iter().map(|v| v.max(0) as u32).collect()))
}

/// Differential expression (or accessibility, `head_name`) between two cell sets
/// (0-based); `pseudocount` NaN = estimate; `batches1/2` NULL = observed batches, else
/// batch codes to marginalise over.
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_model_de(
    model: Robj,
    head_name: &str,
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
    let interval_levels = match levels.is_null() {
        true => vec![],
        false => reals(&levels, "levels")?,
    };
    let test_mode = match three_states {
        true => de::TestMode::Three,
        false => de::TestMode::Two,
    };
    let (batches1, batches2) = (batch_codes(&batches1)?, batch_codes(&batches2)?);
    let weights = row_weights(importance_json)?;
    let head = head(head_name)?;
    let table = with_kind!(&model, [ScviKind, MultiviKind, SpliceviKind], |m| {
        let q = Query::new(m, &ds, &idx1, batch_size)?;
        let cells2 = indices(&idx2, q.data.n_cells())?;
        let req = de::DeRequest {
            cells1: &q.cells,
            cells2: &cells2,
            change_mode,
            delta,
            test_mode,
            pseudocount: pseudocount.is_finite().then_some(pseudocount),
            batches1,
            batches2,
            n_samples_overall: n_samples_overall.max(1) as usize,
            batch_size: q.batch_size,
            fdr_target,
            interval_levels,
            seed: seed.max(0.0) as u64,
            weights,
            head,
            filter_outlier_cells,
        };
        on_device_guarded!(q.model, device, |module, dev| {
            de::differential_expression(module, q.data, &req, dev)
        })
    })?;
    let names: Vec<String> = table.columns.iter().map(|(n, _)| n.clone()).collect();
    let values = table.columns.into_iter().map(|(_, v)| Robj::from(v));
    let mut cols = List::from_values(values);
    cols.set_names(names)?;
    let is_de = table.is_de.map(Robj::from).unwrap_or(().into());
    Ok(list!(columns = cols, is_de = is_de).into())
}

extendr_module! {
    mod queries;
    fn rs_model_latent;
    fn rs_model_elbo_terms;
    fn rs_model_normalized_expression;
    fn rs_model_normalized_expression_to_h5ad;
    fn rs_model_scale_samples;
    fn rs_model_de;
}
