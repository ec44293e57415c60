//! Downstream queries on a trained model in eval mode (scvi.md §8), written once against the
//! family's traits: the latent representation and ELBO terms here (any model), expression
//! queries in `expression` (any model with an expression head). Every function walks the
//! requested cells in order, in minibatches of `batch_size`. A model's own queries live in
//! its folder (e.g. `models::scvi::queries`).

pub mod expression;

use burn::tensor::{backend::Backend, Tensor};

use crate::data::batch::host;
use crate::data::DataSet;
use crate::error::{invalid_arg, Result};
use crate::family::{FamilyModule, LatentPosterior};

pub use expression::{normalized_expression, scale_samples, ExpressionQuery};
pub use expression::{ImportanceOptions, RowWeights};

/// The data fit the module as dataset `dataset` and the cells exist.
pub(crate) fn check_cells<B: Backend, M: FamilyModule<B>>(
    module: &M,
    dataset: usize,
    data: &DataSet,
    cells: &[usize],
) -> Result<()> {
    if dataset >= module.n_datasets() {
        let n = module.n_datasets();
        return Err(invalid_arg(
            "dataset",
            format!("must be below {n}, got {dataset}"),
        ));
    }
    M::check_query_data(module.config(), dataset, data)?;
    if let Some(&c) = cells.iter().find(|&&c| c >= data.n_cells()) {
        return Err(invalid_arg(
            "indices",
            format!("cell {} is out of range", c + 1),
        ));
    }
    Ok(())
}

/// [`check_cells`], and a minibatch fits in memory.
pub(crate) fn check_query<B: Backend, M: FamilyModule<B>>(
    module: &M,
    dataset: usize,
    data: &DataSet,
    cells: &[usize],
    batch_size: usize,
) -> Result<()> {
    check_cells(module, dataset, data, cells)?;
    check_batch(batch_size, cells, data)
}

/// Refuses minibatches that could not be allocated (an allocation failure aborts R).
pub(crate) fn check_batch(batch_size: usize, cells: &[usize], data: &DataSet) -> Result<()> {
    crate::train::check_minibatch_memory(batch_size.min(cells.len()), data.n_genes())
}

/// Row-major (cells x dims) matrices returned to callers.
pub struct Matrix {
    pub n_rows: usize,
    pub n_cols: usize,
    pub values: Vec<f32>,
}

/// Latent representation of `cells` of dataset `dataset` (posterior mean if `give_mean`,
/// else one draw; for a transformed latent the mean is a Monte-Carlo average of
/// `mc_samples` transformed draws), plus the untransformed posterior mean and variance.
/// Written once for every model of the family.
#[allow(clippy::too_many_arguments)]
pub fn latent<B: Backend, M: FamilyModule<B>>(
    module: &M,
    dataset: usize,
    data: &DataSet,
    cells: &[usize],
    give_mean: bool,
    mc_samples: usize,
    batch_size: usize,
    device: &B::Device,
) -> Result<(Matrix, Matrix, Matrix)> {
    let request = LatentRequest {
        dataset,
        cells,
        give_mean,
        mc_samples,
        batch_size,
        width: module.n_latent(),
    };
    posterior_latent(module, data, &request, device, |b| {
        module.latent_posterior(b)
    })
}

/// What [`posterior_latent`] reads.
pub struct LatentRequest<'a> {
    pub dataset: usize,
    pub cells: &'a [usize],
    pub give_mean: bool,
    pub mc_samples: usize,
    pub batch_size: usize,
    /// Width of the posterior.
    pub width: usize,
}

/// As [`latent`] for any posterior of a minibatch (the joint one, or a modality's own in the
/// multimodal models).
pub fn posterior_latent<B: Backend, M: FamilyModule<B>>(
    module: &M,
    data: &DataSet,
    q: &LatentRequest,
    device: &B::Device,
    posterior: impl Fn(&M::Batch) -> LatentPosterior<B>,
) -> Result<(Matrix, Matrix, Matrix)> {
    check_query::<B, M>(module, q.dataset, data, q.cells, q.batch_size)?;
    let (mut out, mut mean, mut var) = (Vec::new(), Vec::new(), Vec::new());
    for (done, chunk) in q.cells.chunks(q.batch_size).enumerate() {
        crate::interrupt::step(done, q.cells.len().div_ceil(q.batch_size))?;
        data.load(chunk)?;
        let b = M::minibatch(module.config(), q.dataset, data, chunk, device);
        let p = posterior(&b);
        let z = match (q.give_mean, module.latent_is_transformed()) {
            (true, false) => p.mean.clone(),
            (true, true) => {
                let mut acc = p.mean.zeros_like();
                for _ in 0..q.mc_samples.max(1) {
                    acc = acc + module.transform_latent(crate::nn::resample(&p.mean, &p.var));
                }
                acc / q.mc_samples.max(1) as f64
            }
            (false, _) => p.z,
        };
        out.extend(host(&z));
        mean.extend(host(&p.mean));
        var.extend(host(&p.var));
    }
    let mk = |values| Matrix {
        n_rows: q.cells.len(),
        n_cols: q.width,
        values,
    };
    Ok((mk(out), mk(mean), mk(var)))
}

/// Per-cell ELBO terms with unit KL weight of `cells` of one dataset.
pub struct ElboTerms {
    pub reconstruction: Vec<f64>,
    pub kl_local: Vec<f64>,
    /// The reconstruction's parts by modality (models of several modalities; else empty).
    pub reconstruction_by_modality: Vec<(&'static str, Vec<f64>)>,
}

/// The [`ElboTerms`] of `cells` of dataset `dataset`. Written once for every model of the
/// family.
pub fn elbo_terms<B: Backend, M: FamilyModule<B>>(
    module: &M,
    dataset: usize,
    data: &DataSet,
    cells: &[usize],
    batch_size: usize,
    device: &B::Device,
) -> Result<ElboTerms> {
    check_query::<B, M>(module, dataset, data, cells, batch_size)?;
    data.require_counts("the ELBO (reconstruction error)")?;
    let mut out = ElboTerms {
        reconstruction: Vec::new(),
        kl_local: Vec::new(),
        reconstruction_by_modality: Vec::new(),
    };
    let to_host = |t: Tensor<B, 1>| -> Vec<f64> {
        let v: Vec<f32> = t.into_data().convert::<f32>().to_vec().unwrap_or_default();
        v.into_iter().map(f64::from).collect()
    };
    for (done, chunk) in cells.chunks(batch_size).enumerate() {
        crate::interrupt::step(done, cells.len().div_ceil(batch_size))?;
        data.load(chunk)?;
        let b = M::minibatch(module.config(), dataset, data, chunk, device);
        for t in module.step_loss(&[b], 1.0, false).terms {
            out.reconstruction.extend(to_host(t.reconstruction));
            out.kl_local.extend(to_host(t.kl_local));
            for (k, (name, part)) in t.reconstruction_by_modality.into_iter().enumerate() {
                if out.reconstruction_by_modality.len() == k {
                    out.reconstruction_by_modality.push((name, Vec::new()));
                }
                out.reconstruction_by_modality[k].1.extend(to_host(part));
            }
        }
    }
    Ok(out)
}
