//! Downstream queries on a trained model in eval mode (scvi.md §8). Every function walks the
//! requested cells in order, in minibatches of `batch_size`.

use burn::tensor::{backend::Backend, Tensor};

use crate::data::DataSet;
use crate::dist;
use crate::error::{invalid_arg, Result};
use crate::importance;
pub use crate::importance::{ImportanceOptions, RowWeights};
use crate::scvi::{host, Batch, LatentDistribution, Scvi};

fn check_cells(data: &DataSet, cells: &[usize], model: &Scvi<impl Backend>) -> Result<()> {
    if data.n_genes() != model.config.n_input {
        return Err(invalid_arg(
            "x",
            format!(
                "has {} genes but the model expects {}",
                data.n_genes(),
                model.config.n_input
            ),
        ));
    }
    if let Some(&c) = cells.iter().find(|&&c| c >= data.n_cells()) {
        return Err(invalid_arg(
            "indices",
            format!("cell {} is out of range", c + 1),
        ));
    }
    Ok(())
}

/// Refuses minibatches that could not be allocated (an allocation failure aborts R).
fn check_batch(batch_size: usize, cells: &[usize], data: &DataSet) -> Result<()> {
    crate::train::check_minibatch_memory(batch_size.min(cells.len()), data.n_genes())
}

/// Row-major (cells x dims) matrices returned to callers.
pub struct Matrix {
    pub n_rows: usize,
    pub n_cols: usize,
    pub values: Vec<f32>,
}

/// Latent representation (posterior mean if `give_mean`, else one sample; for the `ln` latent
/// the mean is a Monte-Carlo average of `mc_samples` transformed draws), plus the
/// untransformed posterior mean and variance.
pub fn latent<B: Backend>(
    model: &Scvi<B>,
    data: &DataSet,
    cells: &[usize],
    give_mean: bool,
    mc_samples: usize,
    batch_size: usize,
    device: &B::Device,
) -> Result<(Matrix, Matrix, Matrix)> {
    check_cells(data, cells, model)?;
    check_batch(batch_size, cells, data)?;
    let l = model.config.n_latent;
    let (mut out, mut mean, mut var) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in cells.chunks(batch_size) {
        let b = Batch::<B>::from_host(&data.host_batch(chunk, None), data.n_genes(), device);
        let inf = model.inference(&b, false);
        let z = match (give_mean, model.config.latent_distribution) {
            (true, LatentDistribution::Normal) => inf.qz_mean.clone(),
            (true, LatentDistribution::Ln) => {
                let mut acc = inf.qz_mean.zeros_like();
                for _ in 0..mc_samples.max(1) {
                    acc = acc
                        + model.transform_latent(crate::nn::resample(&inf.qz_mean, &inf.qz_var));
                }
                acc / mc_samples.max(1) as f64
            }
            (false, _) => inf.z,
        };
        out.extend(host(&z));
        mean.extend(host(&inf.qz_mean));
        var.extend(host(&inf.qz_var));
    }
    let mk = |values| Matrix {
        n_rows: cells.len(),
        n_cols: l,
        values,
    };
    Ok((mk(out), mk(mean), mk(var)))
}

/// Options of [`normalized_expression`].
pub struct ExpressionQuery<'a> {
    pub cells: &'a [usize],
    /// Batch codes to decode with (averaged); `None` in the list = each cell's own batch.
    pub transform_batch: Vec<Option<u32>>,
    pub genes: Option<&'a [usize]>,
    /// `None` = "latent": μ_x with the cell's library; else ρ times this number.
    pub library_size: Option<f64>,
    pub n_samples: usize,
    pub batch_size: usize,
}

/// Posterior normalised expression averaged over `n_samples` draws and the transform batches.
pub fn normalized_expression<B: Backend>(
    model: &Scvi<B>,
    data: &DataSet,
    q: &ExpressionQuery,
    device: &B::Device,
) -> Result<Matrix> {
    check_cells(data, q.cells, model)?;
    check_batch(q.batch_size, q.cells, data)?;
    if q.transform_batch.is_empty() {
        return Err(invalid_arg(
            "transform_batch",
            "must name at least one batch",
        ));
    }
    if let Some(&b) = q
        .transform_batch
        .iter()
        .flatten()
        .find(|&&b| b as usize >= model.config.n_batch)
    {
        return Err(invalid_arg(
            "transform_batch",
            format!("batch code {b} is unknown to the model"),
        ));
    }
    let g = data.n_genes();
    let genes: Vec<usize> = q.genes.map_or_else(|| (0..g).collect(), |s| s.to_vec());
    let s = q.n_samples.max(1);
    let n_tb = q.transform_batch.len().max(1);
    let mut values = Vec::with_capacity(q.cells.len() * genes.len());
    let gene_index = Tensor::<B, 1, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(
            genes.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            [genes.len()],
        ),
        device,
    );
    for chunk in q.cells.chunks(q.batch_size) {
        let mut acc: Option<Tensor<B, 2>> = None;
        for tb in &q.transform_batch {
            let b = Batch::<B>::from_host(&data.host_batch(chunk, *tb), g, device);
            let inf = model.inference(&b, false);
            for k in 0..s {
                let z = model.latent_draw(&inf, k);
                let lib = if k == 0 {
                    inf.library.clone()
                } else {
                    match &inf.ql {
                        Some((m, v)) => crate::nn::resample(m, v),
                        None => inf.library.clone(),
                    }
                };
                let gen = model.generative(&b, z, lib, false);
                let e = match q.library_size {
                    Some(ls) => gen.scale * ls,
                    None => gen.rate,
                };
                let e = e.select(1, gene_index.clone());
                acc = Some(match acc {
                    Some(a) => a + e,
                    None => e,
                });
            }
        }
        let mean = acc.expect("at least one sample") / (s * n_tb) as f64;
        values.extend(host(&mean));
    }
    Ok(Matrix {
        n_rows: q.cells.len(),
        n_cols: genes.len(),
        values,
    })
}

/// Per-cell ELBO terms with unit KL weight: (reconstruction, kl_local) for each cell.
pub fn elbo_terms<B: Backend>(
    model: &Scvi<B>,
    data: &DataSet,
    cells: &[usize],
    batch_size: usize,
    device: &B::Device,
) -> Result<(Vec<f64>, Vec<f64>)> {
    check_cells(data, cells, model)?;
    check_batch(batch_size, cells, data)?;
    let (mut rec, mut kl) = (Vec::new(), Vec::new());
    for chunk in cells.chunks(batch_size) {
        let b = Batch::<B>::from_host(&data.host_batch(chunk, None), data.n_genes(), device);
        let t = model.loss(&b, 1.0, false);
        let r: Vec<f32> = t
            .reconstruction
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        let k: Vec<f32> = (t.kl_z + t.kl_l)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        rec.extend(r.iter().map(|&v| v as f64));
        kl.extend(k.iter().map(|&v| v as f64));
    }
    Ok((rec, kl))
}

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
    check_cells(data, cells, model)?;
    if n_mc_samples == 0 {
        return Err(invalid_arg("n_mc_samples", "must be >= 1"));
    }
    const MAX_ROWS: usize = 8192;
    let mut out = Vec::with_capacity(cells.len());
    for chunk in cells.chunks(batch_size) {
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

/// `m` rows of ρ·`library_size` for `cells` decoded with `transform_batch` (None = each cell's own batch),
/// drawn with replacement from S·N posterior draws, S = m / N + 1 (scvi.md §8.2
/// `n_samples_overall`, the DE sampler of §9.2), uniformly or with importance weights
/// (§8.10). Row-major m x genes. Uniform draws keep only the drawn rows, so memory stays at
/// m x genes whatever S·N is; importance weights need every draw.
#[allow(clippy::too_many_arguments)]
pub fn scale_samples<B: Backend>(
    model: &Scvi<B>,
    data: &DataSet,
    cells: &[usize],
    transform_batch: Option<u32>,
    library_size: f32,
    m: usize,
    weights: &RowWeights,
    batch_size: usize,
    rng: &mut impl rand::Rng,
    device: &B::Device,
) -> Result<Vec<f32>> {
    use rand::RngExt;
    check_cells(data, cells, model)?;
    check_batch(batch_size, cells, data)?;
    if cells.is_empty() {
        return Err(invalid_arg("idx1", "selects no cells"));
    }
    let (n, g) = (cells.len(), data.n_genes());
    let s = m / n + 1;
    if let RowWeights::Importance(opts) = weights {
        let draws = importance::draw(model, data, cells, transform_batch, s, batch_size, device)?;
        let log_w =
            importance::log_weights(model, data, cells, &draws, opts, batch_size, rng, device)?;
        let p = importance::probabilities(&log_w, opts.truncation)?;
        let pick = rand::distr::weighted::WeightedIndex::new(&p)
            .map_err(|e| crate::Error::NonFinite(format!("importance weights: {e}")))?;
        let mut out = Vec::with_capacity(m * g);
        for _ in 0..m {
            let r = rng.sample(&pick);
            out.extend(
                draws.rho[r * g..(r + 1) * g]
                    .iter()
                    .map(|&v| v * library_size),
            );
        }
        return Ok(out);
    }
    // (sample, cell position) -> output rows that take it
    let mut wanted: std::collections::HashMap<(usize, usize), Vec<usize>> = Default::default();
    for row in 0..m {
        let k = rng.random_range(0..s * n);
        wanted.entry((k / n, k % n)).or_default().push(row);
    }
    let mut out = vec![0f32; m * g];
    for (chunk_idx, chunk) in cells.chunks(batch_size).enumerate() {
        let offset = chunk_idx * batch_size;
        let needed: Vec<usize> = (0..s)
            .filter(|&smp| (0..chunk.len()).any(|p| wanted.contains_key(&(smp, offset + p))))
            .collect();
        if needed.is_empty() {
            continue;
        }
        let b = Batch::<B>::from_host(&data.host_batch(chunk, transform_batch), g, device);
        let inf = model.inference(&b, false);
        for smp in needed {
            let z = model.latent_draw(&inf, smp);
            let gen = model.generative(&b, z, inf.library.clone(), false);
            let rho = host(&gen.scale);
            for p in 0..chunk.len() {
                if let Some(targets) = wanted.get(&(smp, offset + p)) {
                    for &row in targets {
                        for (o, &r) in out[row * g..(row + 1) * g]
                            .iter_mut()
                            .zip(&rho[p * g..(p + 1) * g])
                        {
                            *o = r * library_size;
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Arguments of [`differential_expression`] (scvi.md §9.1 defaults).
pub struct DeRequest<'a> {
    pub cells1: &'a [usize],
    pub cells2: &'a [usize],
    pub change_mode: bool,
    pub delta: f64,
    pub test_mode: crate::de::TestMode,
    pub pseudocount: Option<f64>,
    /// None: condition on each cell's observed batch; Some(list): marginalise over these.
    pub batches1: Option<Vec<u32>>,
    pub batches2: Option<Vec<u32>>,
    pub n_samples_overall: usize,
    pub batch_size: usize,
    pub fdr_target: f64,
    pub interval_levels: Vec<f64>,
    pub seed: u64,
    pub weights: RowWeights,
    /// Drop each group's latent-space outliers (10%) before sampling (raw statistics keep
    /// every cell).
    pub filter_outlier_cells: bool,
}

/// Named per-gene columns in the reference's order, plus the FDR flags in change mode.
pub struct DeTable {
    pub columns: Vec<(String, Vec<f64>)>,
    pub is_de: Option<Vec<bool>>,
}

/// Raw count statistics of a group (scvi.md §9.7): mean, fraction nonzero, mean of
/// counts per 10k.
fn raw_stats(data: &DataSet, cells: &[usize]) -> [Vec<f64>; 3] {
    let g = data.n_genes();
    let (mut mean, mut nz, mut norm) = (vec![0.0; g], vec![0.0; g], vec![0.0; g]);
    for &c in cells {
        let (idx, val) = data.counts.row(c);
        let total: f64 = val.iter().map(|&v| v as f64).sum();
        for (&j, &v) in idx.iter().zip(val) {
            mean[j as usize] += v as f64;
            nz[j as usize] += (v > 0.0) as u8 as f64;
            norm[j as usize] += v as f64 * 1e4 / total;
        }
    }
    let k = cells.len().max(1) as f64;
    [mean, nz, norm].map(|v| v.into_iter().map(|x| x / k).collect())
}

/// Samples both groups, pairs them and computes the DE statistics (scvi.md §9.2-9.7).
pub fn differential_expression<B: Backend>(
    model: &Scvi<B>,
    data: &DataSet,
    req: &DeRequest,
    device: &B::Device,
) -> Result<DeTable> {
    use rand::SeedableRng;
    // Both the row draws and the posterior noise follow the seed (R passes one drawn from its
    // own RNG, so set.seed() makes DE reproducible).
    B::seed(device, req.seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(req.seed);
    let g = data.n_genes();
    let sample_group =
        |cells: &[usize], batches: &Option<Vec<u32>>, rng: &mut rand::rngs::StdRng| {
            let list: Vec<Option<u32>> = match batches {
                None => vec![None],
                Some(b) => b.iter().map(|&x| Some(x)).collect(),
            };
            // int(n_samples_overall / #batches), and 2 when that truncates to 0
            let per = match req.n_samples_overall / list.len() {
                0 => 2,
                v => v,
            };
            let mut all = Vec::with_capacity(per * list.len() * g);
            for tb in list {
                all.extend(scale_samples(
                    model,
                    data,
                    cells,
                    tb,
                    1.0,
                    per,
                    &req.weights,
                    req.batch_size,
                    rng,
                    device,
                )?);
            }
            Ok::<_, crate::Error>(all)
        };
    let keep = |cells: &[usize]| -> Result<Vec<usize>> {
        if !req.filter_outlier_cells {
            return Ok(cells.to_vec());
        }
        let (mean, _, _) = latent(model, data, cells, true, 1, req.batch_size, device)?;
        let flags = crate::de::inliers(&mean.values, mean.n_cols, 0.1, req.seed);
        Ok(cells
            .iter()
            .zip(flags)
            .filter(|(_, k)| *k)
            .map(|(&c, _)| c)
            .collect())
    };
    let (kept1, kept2) = (keep(req.cells1)?, keep(req.cells2)?);
    let a1 = sample_group(&kept1, &req.batches1, &mut rng)?;
    let a2 = sample_group(&kept2, &req.batches2, &mut rng)?;
    let j = (a1.len() / g).min(a2.len() / g);
    let (p1, p2) = (
        crate::de::Samples {
            values: &a1[..j * g],
            n_genes: g,
        },
        crate::de::Samples {
            values: &a2[..j * g],
            n_genes: g,
        },
    );
    let [mean1, nz1, norm1] = raw_stats(data, req.cells1);
    let [mean2, nz2, norm2] = raw_stats(data, req.cells2);
    let mut columns: Vec<(String, Vec<f64>)> = Vec::new();
    let mut is_de = None;
    if req.change_mode {
        let pc = match req.pseudocount {
            Some(pc) => pc,
            None => {
                let zero = |m: &[f64]| m.iter().map(|&v| v < 0.01).collect::<Vec<bool>>();
                crate::de::pseudocount(&p1, &p2, &zero(&mean1), &zero(&mean2))
            }
        };
        let s =
            crate::de::change_mode(&p1, &p2, pc, req.delta, req.test_mode, &req.interval_levels)?;
        is_de = Some(crate::de::fdr_flags(&s.proba_de, req.fdr_target));
        columns.push(("proba_de".into(), s.proba_de));
        columns.push(("proba_not_de".into(), s.proba_not_de));
        columns.push(("bayes_factor".into(), s.bayes_factor));
        columns.push(("scale1".into(), s.scale1));
        columns.push(("scale2".into(), s.scale2));
        columns.push(("pseudocounts".into(), vec![pc; g]));
        columns.push(("delta".into(), vec![req.delta; g]));
        columns.push(("lfc_mean".into(), s.lfc_mean));
        columns.push(("lfc_median".into(), s.lfc_median));
        columns.push(("lfc_std".into(), s.lfc_std));
        columns.push(("lfc_min".into(), s.lfc_min));
        columns.push(("lfc_max".into(), s.lfc_max));
        for (lvl, lo, hi) in s.intervals {
            let name: String = format!("{lvl:?}").chars().take(5).collect();
            columns.push((format!("lfc_confidence_interval_{name}_min"), lo));
            columns.push((format!("lfc_confidence_interval_{name}_max"), hi));
        }
    } else {
        let [m1, m2, bf, s1, s2] = crate::de::vanilla_mode(&p1, &p2)?;
        for (name, v) in [
            ("proba_m1", m1),
            ("proba_m2", m2),
            ("bayes_factor", bf),
            ("scale1", s1),
            ("scale2", s2),
        ] {
            columns.push((name.into(), v));
        }
    }
    for (name, v) in [
        ("raw_mean1", mean1),
        ("raw_mean2", mean2),
        ("non_zeros_proportion1", nz1),
        ("non_zeros_proportion2", nz2),
        ("raw_normalized_mean1", norm1),
        ("raw_normalized_mean2", norm2),
    ] {
        columns.push((name.into(), v));
    }
    Ok(DeTable { columns, is_de })
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
    check_cells(data, cells, model)?;
    check_batch(batch_size, cells, data)?;
    let g = data.n_genes();
    let (mut mean, mut disp, mut drop) = (Vec::new(), Vec::new(), Vec::new());
    let poisson = model.config.gene_likelihood == crate::scvi::GeneLikelihood::Poisson;
    for chunk in cells.chunks(batch_size) {
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
    check_cells(data, cells, model)?;
    check_batch(batch_size, cells, data)?;
    if give_mean && !model.config.uses_latent_library() {
        return Err(invalid_arg(
            "give_mean",
            "= TRUE needs a latent library (use_observed_lib_size = FALSE and no size factor); \
             this model uses the observed library, use give_mean = FALSE",
        ));
    }
    let mut out = Vec::with_capacity(cells.len());
    for chunk in cells.chunks(batch_size) {
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
    check_cells(data, cells, model)?;
    check_batch(batch_size, cells, data)?;
    B::seed(device, seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let g = data.n_genes();
    let keep: Vec<usize> = genes.map_or_else(|| (0..g).collect(), |s| s.to_vec());
    let lik = model.config.gene_likelihood;
    let mut out = Vec::with_capacity(cells.len() * keep.len());
    for chunk in cells.chunks(batch_size) {
        let b = Batch::<B>::from_host(&data.host_batch(chunk, None), g, device);
        let inf = model.inference(&b, false);
        let gen = model.generative(&b, inf.z, inf.library, false);
        let per_gene = gen.theta.dims()[0] == 1;
        let (mu, theta) = (host(&gen.rate), host(&gen.theta));
        let pi = gen.dropout_logits.as_ref().map(host);
        for r in 0..chunk.len() {
            for &j in &keep {
                let m = mu[r * g + j] as f64;
                let w = match lik {
                    crate::scvi::GeneLikelihood::Poisson => m.min(1e8),
                    _ => {
                        let th = theta[if per_gene { j } else { r * g + j }] as f64;
                        (crate::synth::gamma(&mut rng, th) * m / th).min(1e8)
                    }
                };
                let mut x = crate::synth::poisson(&mut rng, w);
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
    check_cells(data, cells, model)?;
    check_batch(batch_size * n_samples.max(1), cells, data)?;
    // all draws are kept (f64, plus ranks): n_samples x cells x genes
    let draws_bytes = (n_samples.max(1) * cells.len()) as u64 * data.n_genes() as u64 * 16;
    crate::train::check_memory(
        draws_bytes,
        "n_samples",
        "use fewer cells (indices) or fewer samples",
    )?;
    if model.config.gene_likelihood == crate::scvi::GeneLikelihood::Poisson {
        return Err(invalid_arg(
            "model",
            "has a Poisson likelihood: there is no dispersion to draw with",
        ));
    }
    B::seed(device, seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let g = data.n_genes();
    let mut total = vec![0f64; g * g];
    for tb in transform_batch {
        let mut draws: Vec<f64> = Vec::with_capacity(n_samples * cells.len() * g);
        for chunk in cells.chunks(batch_size) {
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
                        draws.push(crate::synth::gamma(&mut rng, th) * lambda / th);
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
