//! SCVI's own posterior queries (scvi.md §8): marginal log-likelihood, likelihood
//! parameters, latent library sizes, posterior predictive samples and gene-gene correlation.
//! The queries every model shares (latent, ELBO, normalized expression, DE) are in `infer`
//! and `de`.

use burn::tensor::{backend::Backend, Tensor};

use crate::data::batch::{host, Batch};
use crate::data::DataSet;
use crate::dist;
use crate::error::{invalid_arg, Result};
use crate::infer::{check_batch, check_cells, Matrix};
use crate::models::options::{GeneLikelihood, BATCH_EMBEDDING_DIM};
use crate::models::scvi::Scvi;

/// Importance-sampled log p(x) per cell with `n_mc_samples` draws from the encoder
/// (scvi.md §8.8). Draws are evaluated several at a time by tiling the minibatch.
pub fn marginal_ll<B: Backend>(
    model: &Scvi<B>,
    data: &DataSet,
    cells: &[usize],
    n_mc_samples: usize,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<f64>> {
    check_cells(model, 0, data, cells)?;
    data.require_counts("the marginal log-likelihood")?;
    if n_mc_samples == 0 {
        return Err(invalid_arg("n_mc_samples", "must be >= 1"));
    }
    const MAX_ROWS: usize = 8192;
    let mut out = Vec::with_capacity(cells.len());
    for (done, chunk) in cells.chunks(batch_size).enumerate() {
        crate::interrupt::step(done, cells.len().div_ceil(batch_size))?;
        let n = chunk.len();
        let host = data.host_batch(chunk, None);
        let b = Batch::<B>::from_host(&host, data.n_genes(), device);
        let inf = model.inference(&b, false);
        let per_pass = (MAX_ROWS / n).clamp(1, n_mc_samples);
        let tiled = |t: &Tensor<B, 2>, k: usize| t.clone().repeat_dim(0, k);
        // Running log-sum-exp per cell, in f64 on the host.
        let mut lse = vec![f64::NEG_INFINITY; n];
        let mut done = 0;
        while done < n_mc_samples {
            let k = per_pass.min(n_mc_samples - done);
            let bt = Batch {
                x: tiled(&b.x, k),
                x_log: tiled(&b.x_log, k),
                log_library: tiled(&b.log_library, k),
                log_factorial: b.log_factorial.clone().repeat_dim(0, k),
                batch_onehot: tiled(&b.batch_onehot, k),
                labels_onehot: tiled(&b.labels_onehot, k),
                covariates: b.covariates.as_ref().map(|c| tiled(c, k)),
                continuous: b.continuous.as_ref().map(|c| tiled(c, k)),
                log_size_factor: b.log_size_factor.as_ref().map(|c| tiled(c, k)),
                latent_posterior: None,
            };
            let (qm, qv) = (tiled(&inf.qz_mean, k), tiled(&inf.qz_var, k));
            let z_raw = crate::nn::resample(&qm, &qv);
            let z = model.transform_latent(z_raw);
            // The reference evaluates both densities at the transformed sample.
            let mut w = dist::normal_log_prob(z.clone(), z.zeros_like(), z.ones_like()).sum_dim(1)
                - dist::normal_log_prob(z.clone(), qm, qv).sum_dim(1);
            let library = match &inf.ql {
                Some((m, v)) => {
                    let (m, v) = (tiled(m, k), tiled(v, k));
                    let l = crate::nn::resample(&m, &v);
                    let (pm, pv) = model.library_prior(&bt);
                    w = w + dist::normal_log_prob(l.clone(), pm, pv)
                        - dist::normal_log_prob(l.clone(), m, v);
                    l
                }
                None => bt.log_library.clone(),
            };
            let gen = model.generative(&bt, z, library, false);
            let ll = model.log_likelihood_unnormalized(bt.x.clone(), &gen, false)
                - bt.log_factorial.clone();
            let w = w.squeeze_dim::<1>(1) + ll;
            let wv: Vec<f32> = w.into_data().convert::<f32>().to_vec().unwrap_or_default();
            for (j, &v) in wv.iter().enumerate() {
                let c = j % n;
                let (a, b) = (lse[c], v as f64);
                let m = a.max(b);
                lse[c] = if m == f64::NEG_INFINITY {
                    m
                } else {
                    m + ((a - m).exp() + (b - m).exp()).ln()
                };
            }
            done += k;
        }
        let log_m = (n_mc_samples as f64).ln();
        out.extend(lse.iter().map(|v| v - log_m));
    }
    Ok(out)
}

/// The reference's `return_mean=True` marginal LL: a mean of per-minibatch means.
pub fn mean_of_minibatch_means(values: &[f64], batch_size: usize) -> f64 {
    let means: Vec<f64> = values
        .chunks(batch_size)
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    means.iter().sum::<f64>() / means.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marginal_ll_combiner_parity() {
        // logsumexp(-10, -11, -12) - log 3, scvi.md §12.4
        let w = [-10.0f64, -11.0, -12.0];
        let m = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let v = m + w.iter().map(|x| (x - m).exp()).sum::<f64>().ln() - 3f64.ln();
        assert!((v - -10.691_006_32).abs() < 1e-8);
        assert!((mean_of_minibatch_means(&[1.0, 3.0, 5.0], 2) - 3.5).abs() < 1e-12);
    }
}

/// Parameters of p(x | z, ℓ) for one posterior draw per cell (scvi.md §8.4): the mean μ,
/// the inverse dispersion θ broadcast to cells x genes (not for Poisson) and the
/// zero-inflation probability σ(π) (ZINB only).
pub struct LikelihoodParameters {
    pub mean: Matrix,
    pub dispersions: Option<Matrix>,
    pub dropout: Option<Matrix>,
}

pub fn likelihood_parameters<B: Backend>(
    model: &Scvi<B>,
    data: &DataSet,
    cells: &[usize],
    batch_size: usize,
    device: &B::Device,
) -> Result<LikelihoodParameters> {
    check_cells(model, 0, data, cells)?;
    check_batch(batch_size, cells, data)?;
    let g = data.n_genes();
    let (mut mean, mut disp, mut drop) = (Vec::new(), Vec::new(), Vec::new());
    let poisson = model.config.gene_likelihood == GeneLikelihood::Poisson;
    for (done, chunk) in cells.chunks(batch_size).enumerate() {
        crate::interrupt::step(done, cells.len().div_ceil(batch_size))?;
        let b = Batch::<B>::from_host(&data.host_batch(chunk, None), g, device);
        let inf = model.inference(&b, false);
        let gen = model.generative(&b, inf.z, inf.library, false);
        mean.extend(host(&gen.rate));
        if !poisson {
            let n = chunk.len();
            disp.extend(host(&gen.theta.expand([n as i64, g as i64])));
        }
        if let Some(p) = gen.dropout_logits {
            drop.extend(host(&burn::tensor::activation::sigmoid(p)));
        }
    }
    let mk = |values: Vec<f32>| Matrix {
        n_rows: cells.len(),
        n_cols: g,
        values,
    };
    Ok(LikelihoodParameters {
        mean: mk(mean),
        dispersions: (!poisson).then(|| mk(disp)),
        dropout: (!drop.is_empty()).then(|| mk(drop)),
    })
}

/// The model's data minified (scvi-tools' `minify_adata`): each cell's posterior q(z | x)
/// from the encoder in eval mode replaces its counts (see [`DataSet::minified`]).
pub fn minify<B: Backend>(
    model: &Scvi<B>,
    data: &DataSet,
    batch_size: usize,
    device: &B::Device,
) -> Result<DataSet> {
    if data.is_minified() {
        return Err(invalid_arg("model", "is minified already"));
    }
    let cells: Vec<usize> = (0..data.n_cells()).collect();
    check_cells(model, 0, data, &cells)?;
    check_batch(batch_size, &cells, data)?;
    let (mut qz_mean, mut qz_var) = (Vec::new(), Vec::new());
    let n_chunks = cells.len().div_ceil(batch_size);
    for (done, chunk) in cells.chunks(batch_size).enumerate() {
        crate::interrupt::step(done, n_chunks)?;
        let b = Batch::<B>::from_host(&data.host_batch(chunk, None), data.n_genes(), device);
        let inf = model.inference(&b, false);
        qz_mean.extend(host(&inf.qz_mean));
        qz_var.extend(host(&inf.qz_var));
    }
    data.minified(crate::data::LatentPosterior {
        n_latent: model.config.n_latent,
        qz_mean,
        qz_var,
    })
}

/// Each cell's row of the batch embedding, cells x BATCH_EMBEDDING_DIM (scvi-tools'
/// `get_batch_representation`); an error for a model with one-hot batches.
pub fn batch_representation<B: Backend>(
    model: &Scvi<B>,
    data: &DataSet,
    cells: &[usize],
) -> Result<Matrix> {
    check_cells(model, 0, data, cells)?;
    let Some(embedding) = &model.batch_embedding else {
        return Err(invalid_arg(
            "model",
            "represents batches as one-hot columns (batch_representation = \"one-hot\"); only \
             a model built with batch_representation = \"embedding\" has batch representations",
        ));
    };
    let d = BATCH_EMBEDDING_DIM;
    let table = host(&embedding.val());
    let values = cells
        .iter()
        .flat_map(|&c| {
            let b = data.batch.codes[c] as usize;
            table[b * d..(b + 1) * d].iter().copied()
        })
        .collect();
    Ok(Matrix {
        n_rows: cells.len(),
        n_cols: d,
        values,
    })
}

/// Library size per cell (scvi.md §8.5): with `give_mean`, the log-normal mean
/// exp(μ_ℓ + v_ℓ/2) of the latent library (an error with the observed library); otherwise
/// exp(ℓ) of the forward pass (observed total, or one draw from q(ℓ | x)).
pub fn latent_library_size<B: Backend>(
    model: &Scvi<B>,
    data: &DataSet,
    cells: &[usize],
    give_mean: bool,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<f64>> {
    check_cells(model, 0, data, cells)?;
    check_batch(batch_size, cells, data)?;
    if give_mean && !model.config.uses_latent_library() {
        return Err(invalid_arg(
            "give_mean",
            "= TRUE needs a latent library (use_observed_lib_size = FALSE and no size factor); \
             this model uses the observed library, use give_mean = FALSE",
        ));
    }
    let mut out = Vec::with_capacity(cells.len());
    for (done, chunk) in cells.chunks(batch_size).enumerate() {
        crate::interrupt::step(done, cells.len().div_ceil(batch_size))?;
        let b = Batch::<B>::from_host(&data.host_batch(chunk, None), data.n_genes(), device);
        let inf = model.inference(&b, false);
        let lib = match (give_mean, inf.ql) {
            (true, Some((m, v))) => (m + v / 2.0).exp(),
            _ => inf.library.exp(),
        };
        out.extend(host(&lib).into_iter().map(f64::from));
    }
    Ok(out)
}

/// One draw of counts from the posterior predictive p(x | z, ℓ), z ~ q(z | x) (scvi.md §8.3,
/// samplers of §5.5), for the genes `genes` (None = all). Row-major cells x genes.
#[allow(clippy::too_many_arguments)]
pub fn posterior_predictive_sample<B: Backend>(
    model: &Scvi<B>,
    data: &DataSet,
    cells: &[usize],
    genes: Option<&[usize]>,
    batch_size: usize,
    seed: u64,
    device: &B::Device,
) -> Result<Matrix> {
    use rand::{RngExt, SeedableRng};
    check_cells(model, 0, data, cells)?;
    check_batch(batch_size, cells, data)?;
    B::seed(device, seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let g = data.n_genes();
    let keep: Vec<usize> = genes.map_or_else(|| (0..g).collect(), |s| s.to_vec());
    let lik = model.config.gene_likelihood;
    let mut out = Vec::with_capacity(cells.len() * keep.len());
    for (done, chunk) in cells.chunks(batch_size).enumerate() {
        crate::interrupt::step(done, cells.len().div_ceil(batch_size))?;
        let b = Batch::<B>::from_host(&data.host_batch(chunk, None), g, device);
        let inf = model.inference(&b, false);
        let gen = model.generative(&b, inf.z, inf.library, false);
        let per_gene = gen.theta.dims()[0] == 1;
        let (mu, theta) = (host(&gen.rate), host(&gen.theta));
        let pi = gen.dropout_logits.as_ref().map(host);
        for r in 0..chunk.len() {
            for &j in &keep {
                let m = mu[r * g + j] as f64;
                let th = theta[if per_gene { j } else { r * g + j }] as f64;
                let w = match lik {
                    GeneLikelihood::Normal => {
                        // a continuous draw, as the reference's Normal gives
                        out.push((m + th * crate::dist::sample::normal(&mut rng)) as f32);
                        continue;
                    }
                    GeneLikelihood::Poisson => m.min(1e8),
                    _ => (crate::dist::sample::gamma(&mut rng, th) * m / th).min(1e8),
                };
                let mut x = crate::dist::sample::poisson(&mut rng, w);
                if let Some(pi) = &pi {
                    let p_zero = 1.0 / (1.0 + (-(pi[r * g + j] as f64)).exp());
                    if rng.random::<f64>() <= p_zero {
                        x = 0.0;
                    }
                }
                out.push(x as f32);
            }
        }
    }
    Ok(Matrix {
        n_rows: cells.len(),
        n_cols: keep.len(),
        values: out,
    })
}

/// Pearson correlation of the columns of a row-major n x g matrix (g x g, row-major).
pub fn column_correlation(values: &[f64], n: usize, g: usize) -> Vec<f64> {
    let mut centered = values.to_vec();
    let mut norms = vec![0f64; g];
    for j in 0..g {
        let mean = (0..n).map(|r| values[r * g + j]).sum::<f64>() / n as f64;
        for r in 0..n {
            centered[r * g + j] -= mean;
            norms[j] += centered[r * g + j].powi(2);
        }
    }
    let mut out = vec![0f64; g * g];
    for a in 0..g {
        for b in a..g {
            let dot: f64 = (0..n)
                .map(|r| centered[r * g + a] * centered[r * g + b])
                .sum();
            let c = dot / (norms[a] * norms[b]).sqrt();
            out[a * g + b] = c;
            out[b * g + a] = c;
        }
    }
    out
}

/// Average ranks (ties share their mean rank) of each column, in place.
pub fn rank_columns(values: &mut [f64], n: usize, g: usize) {
    let mut idx: Vec<usize> = Vec::with_capacity(n);
    for j in 0..g {
        idx.clear();
        idx.extend(0..n);
        idx.sort_by(|&a, &b| values[a * g + j].total_cmp(&values[b * g + j]));
        let mut ranks = vec![0f64; n];
        let mut i = 0;
        while i < n {
            let mut k = i;
            while k + 1 < n && values[idx[k + 1] * g + j] == values[idx[i] * g + j] {
                k += 1;
            }
            let r = (i + k) as f64 / 2.0 + 1.0;
            for &p in &idx[i..=k] {
                ranks[p] = r;
            }
            i = k + 1;
        }
        for (r, &v) in ranks.iter().enumerate() {
            values[r * g + j] = v;
        }
    }
}

/// Gene-gene correlation of denoised expression (scvi.md §8.9): for each transform batch,
/// `n_samples` posterior draws, λ = `rna_size_factor`·ρ, one Gamma(θ, θ/λ) draw per entry;
/// Spearman (`spearman`) or Pearson correlation over all draws, averaged over the batches.
#[allow(clippy::too_many_arguments)]
pub fn feature_correlation<B: Backend>(
    model: &Scvi<B>,
    data: &DataSet,
    cells: &[usize],
    transform_batch: &[Option<u32>],
    n_samples: usize,
    rna_size_factor: f64,
    spearman: bool,
    batch_size: usize,
    seed: u64,
    device: &B::Device,
) -> Result<Vec<f64>> {
    use rand::SeedableRng;
    check_cells(model, 0, data, cells)?;
    check_batch(batch_size * n_samples.max(1), cells, data)?;
    // all draws are kept (f64, plus ranks): n_samples x cells x genes
    let draws_bytes = (n_samples.max(1) * cells.len()) as u64 * data.n_genes() as u64 * 16;
    crate::train::check_memory(
        draws_bytes,
        "n_samples",
        "use fewer cells (indices) or fewer samples",
    )?;
    match model.config.gene_likelihood {
        GeneLikelihood::Poisson | GeneLikelihood::Normal => {
            return Err(invalid_arg(
                "model",
                "has a Poisson or Normal likelihood: there is no gamma dispersion to draw with",
            ));
        }
        GeneLikelihood::Zinb | GeneLikelihood::Nb => {}
    }
    B::seed(device, seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let g = data.n_genes();
    let mut total = vec![0f64; g * g];
    let n_chunks = cells.len().div_ceil(batch_size);
    for (t, tb) in transform_batch.iter().enumerate() {
        let mut draws: Vec<f64> = Vec::with_capacity(n_samples * cells.len() * g);
        for (done, chunk) in cells.chunks(batch_size).enumerate() {
            crate::interrupt::step(t * n_chunks + done, transform_batch.len() * n_chunks)?;
            let b = Batch::<B>::from_host(&data.host_batch(chunk, *tb), g, device);
            let inf = model.inference(&b, false);
            for k in 0..n_samples.max(1) {
                let z = model.latent_draw(&inf, k);
                let gen = model.generative(&b, z, inf.library.clone(), false);
                let per_gene = gen.theta.dims()[0] == 1;
                let (rho, theta) = (host(&gen.scale), host(&gen.theta));
                for r in 0..chunk.len() {
                    for j in 0..g {
                        let lambda = rna_size_factor * rho[r * g + j] as f64;
                        let th = theta[if per_gene { j } else { r * g + j }] as f64;
                        draws.push(crate::dist::sample::gamma(&mut rng, th) * lambda / th);
                    }
                }
            }
        }
        let n = draws.len() / g;
        if spearman {
            rank_columns(&mut draws, n, g);
        }
        for (t, c) in total.iter_mut().zip(column_correlation(&draws, n, g)) {
            *t += c;
        }
    }
    let k = transform_batch.len().max(1) as f64;
    Ok(total.into_iter().map(|v| v / k).collect())
}

#[cfg(test)]
mod correlation_tests {
    use super::*;

    #[test]
    fn ranks_and_correlations() {
        // columns: x, 2x (perfect), x^3 (monotone), reversed with a tie
        let x = [1.0, 2.0, 3.0, 4.0];
        let mut v: Vec<f64> = x
            .iter()
            .flat_map(|&a| [a, 2.0 * a, a * a * a, if a < 3.0 { 5.0 } else { 5.0 - a }])
            .collect();
        let pearson = column_correlation(&v, 4, 4);
        assert!((pearson[1] - 1.0).abs() < 1e-12);
        assert!(pearson[2] < 0.99);
        rank_columns(&mut v, 4, 4);
        // ties share their average rank: 5, 5, 2, 1 -> 3.5, 3.5, 2, 1
        assert_eq!([v[3], v[7], v[11], v[15]], [3.5, 3.5, 2.0, 1.0]);
        let spearman = column_correlation(&v, 4, 4);
        assert!((spearman[2] - 1.0).abs() < 1e-12);
        assert!(spearman[3] < -0.9);
    }
}
