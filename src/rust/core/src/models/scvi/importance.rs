//! Importance weights of posterior draws (scvi.md §8.10), the `weights = "importance"` option
//! of `n_samples_overall` and of differential expression. Every draw z of the group's cells
//! is weighted by how well it explains the group as a whole, p(z) · mean_a p(x_a | z) / p(x_a),
//! relative to the mixture of the group's posteriors it was drawn from, over up to
//! `max_cells` anchor cells a.

use burn::tensor::backend::Backend;
use rayon::prelude::*;

use crate::data::batch::{host, Batch};
use crate::data::{ln_factorial, DataSet};
use crate::dist::fused::{self, SparseCounts, Theta};
use crate::error::{invalid_arg, Error, Result};
use crate::infer::expression::ImportanceOptions;
use crate::models::options::Dispersion;
use crate::models::scvi::Scvi;

/// Every posterior draw of a group, row = draw · n_cells + cell position (the reference's
/// sample-major flattening), with what the weights need.
pub struct Draws {
    pub n_cells: usize,
    pub n_genes: usize,
    pub n_latent: usize,
    /// Transformed latent draws, rows x latent.
    pub z: Vec<f32>,
    /// Normalised expression ρ, rows x genes.
    pub rho: Vec<f32>,
    /// θ per gene, or rows x genes when it depends on the cell.
    pub theta: Vec<f32>,
    pub theta_per_gene: bool,
    /// Zero-inflation logits (ZINB), rows x genes.
    pub dropout_logits: Option<Vec<f32>>,
    /// Each cell's posterior mean and variance, cells x latent.
    pub qz_mean: Vec<f32>,
    pub qz_var: Vec<f32>,
}

impl Draws {
    pub fn n_rows(&self) -> usize {
        self.rho.len() / self.n_genes.max(1)
    }
}

/// Refuses draw sets that would not fit in memory (an allocation failure aborts R).
fn check_memory(rows: usize, g: usize, per_element: usize) -> Result<()> {
    let need = (rows as u64)
        .saturating_mul(g as u64)
        .saturating_mul(4 * per_element as u64);
    match crate::train::available_memory() {
        Some(avail) if need > avail => Err(invalid_arg(
            "n_samples_overall",
            format!(
                "with importance weights keeps {rows} posterior draws x {g} genes, about {:.1} GB, \
                 more than the {:.1} GB of memory available; use fewer samples or cells",
                need as f64 / 1e9,
                avail as f64 / 1e9
            ),
        )),
        _ => Ok(()),
    }
}

/// `s` posterior draws of every cell of `cells`, decoded with `transform_batch` (None = each
/// cell's own batch). The first draw of a cell is the inference pass's own sample, as in
/// [`crate::infer::scale_samples`].
pub fn draw<B: Backend>(
    model: &Scvi<B>,
    data: &DataSet,
    cells: &[usize],
    transform_batch: Option<u32>,
    s: usize,
    batch_size: usize,
    device: &B::Device,
) -> Result<Draws> {
    let (n, g, d) = (cells.len(), data.n_genes(), model.config.n_latent);
    let theta_per_gene = model.config.dispersion == Dispersion::Gene;
    let zinb = model.config.gene_likelihood == crate::models::options::GeneLikelihood::Zinb;
    let rows = s * n;
    check_memory(rows, g, 2 + zinb as usize + !theta_per_gene as usize)?;
    let mut out = Draws {
        n_cells: n,
        n_genes: g,
        n_latent: d,
        z: vec![0.0; rows * d],
        rho: vec![0.0; rows * g],
        theta: vec![0.0; if theta_per_gene { g } else { rows * g }],
        theta_per_gene,
        dropout_logits: zinb.then(|| vec![0.0; rows * g]),
        qz_mean: Vec::with_capacity(n * d),
        qz_var: Vec::with_capacity(n * d),
    };
    let place = |dst: &mut [f32], width: usize, first_row: usize, values: &[f32]| {
        dst[first_row * width..first_row * width + values.len()].copy_from_slice(values);
    };
    for (chunk_idx, chunk) in cells.chunks(batch_size).enumerate() {
        let offset = chunk_idx * batch_size;
        let b = Batch::<B>::from_host(&data.host_batch(chunk, transform_batch), g, device);
        let inf = model.inference(&b, false);
        out.qz_mean.extend(host(&inf.qz_mean));
        out.qz_var.extend(host(&inf.qz_var));
        for smp in 0..s {
            let z = model.latent_draw(&inf, smp);
            let gen = model.generative(&b, z.clone(), inf.library.clone(), false);
            let first = smp * n + offset;
            place(&mut out.z, d, first, &host(&z));
            place(&mut out.rho, g, first, &host(&gen.scale));
            let theta = host(&gen.theta);
            if theta_per_gene {
                out.theta.copy_from_slice(&theta[..g]);
            } else {
                place(&mut out.theta, g, first, &theta);
            }
            if let (Some(dst), Some(pi)) = (out.dropout_logits.as_mut(), &gen.dropout_logits) {
                place(dst, g, first, &host(pi));
            }
        }
    }
    Ok(out)
}

fn log_sum_exp(v: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = v.clone().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + v.map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// Unnormalised log importance weight of every draw:
/// log w = logsumexp_a [log p(z) + log p(x_a | z) - log p(x_a) - logsumexp_a' log q_a'(z)],
/// with p(x_a | z) the draw's likelihood at mean ρ·Σx_a and p(x_a) each anchor's marginal
/// log-likelihood.
#[allow(clippy::too_many_arguments)]
pub fn log_weights<B: Backend>(
    model: &Scvi<B>,
    data: &DataSet,
    cells: &[usize],
    draws: &Draws,
    opts: &ImportanceOptions,
    batch_size: usize,
    rng: &mut impl rand::Rng,
    device: &B::Device,
) -> Result<Vec<f64>> {
    if opts.max_cells == 0 {
        return Err(invalid_arg("max_cells", "must be >= 1"));
    }
    data.require_counts("importance weights (weights = \"importance\")")?;
    if let Some(f) = &data.file {
        return Err(invalid_arg(
            "weights",
            format!(
                "\"importance\" needs the counts in memory, but they are read from {}; use \
                 weights = \"uniform\" or pass the data as `x`",
                f.describe()
            ),
        ));
    }
    let n = cells.len();
    let positions: Vec<usize> = if n > opts.max_cells {
        rand::seq::index::sample(rng, n, opts.max_cells).into_vec()
    } else {
        (0..n).collect()
    };
    let anchor_cells: Vec<usize> = positions.iter().map(|&p| cells[p]).collect();
    let log_px = crate::models::scvi::queries::marginal_ll(
        model,
        data,
        &anchor_cells,
        opts.n_mc_samples,
        batch_size,
        device,
    )?;
    let anchors: Vec<SparseCounts> = anchor_cells
        .iter()
        .map(|&c| {
            let (genes, counts) = data.counts.row(c);
            SparseCounts {
                genes,
                counts,
                total: counts.iter().sum(),
            }
        })
        .collect();
    // The kernel leaves out Σ lgamma(x+1); the marginal log-likelihood includes it.
    let log_px_const: Vec<f64> = anchors
        .iter()
        .zip(&log_px)
        .map(|(a, &lp)| {
            lp + a
                .counts
                .iter()
                .map(|&x| ln_factorial(x as f64))
                .sum::<f64>()
        })
        .collect();
    let (g, d) = (draws.n_genes, draws.n_latent);
    let log_px_z = fused::cross_log_likelihood(
        model.fused_kind(),
        &draws.rho,
        Theta {
            values: &draws.theta,
            per_gene: draws.theta_per_gene,
        },
        draws.dropout_logits.as_deref(),
        &anchors,
        g,
    );
    let n_anchors = anchors.len();
    let zero = vec![0f32; d];
    let one = vec![1f32; d];
    let w: Vec<f64> = (0..draws.n_rows())
        .into_par_iter()
        .map(|r| {
            let z = &draws.z[r * d..(r + 1) * d];
            let log_q = log_sum_exp(positions.iter().map(|&p| {
                let cell = p * d..(p + 1) * d;
                crate::dist::normal_log_density_host(
                    z,
                    &draws.qz_mean[cell.clone()],
                    &draws.qz_var[cell],
                )
            }));
            let scores = &log_px_z[r * n_anchors..(r + 1) * n_anchors];
            let fit = log_sum_exp(scores.iter().zip(&log_px_const).map(|(&l, &p)| l - p));
            crate::dist::normal_log_density_host(z, &zero, &one) - log_q + fit
        })
        .collect();
    Ok(w)
}

/// Selection probabilities from log weights, optionally truncated from below at the log of
/// their mean.
pub fn probabilities(log_w: &[f64], truncation: bool) -> Result<Vec<f64>> {
    let mut lw = log_w.to_vec();
    if truncation {
        let tau = log_sum_exp(lw.iter().copied()) - (lw.len() as f64).ln();
        for v in &mut lw {
            *v = v.max(tau);
        }
    }
    let total = log_sum_exp(lw.iter().copied());
    if !total.is_finite() || lw.iter().any(|v| v.is_nan()) {
        return Err(Error::NonFinite(
            "importance weights are not finite (the model gives some cells no likelihood); \
             use weights = \"uniform\""
                .into(),
        ));
    }
    Ok(lw.iter().map(|v| (v - total).exp()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Cpu, CpuTrain};
    use crate::models::scvi::{ScviConfig, ScviExtra, ScviKind};
    use crate::train::{train, Silent, TrainConfig, TrainState};

    /// For a group of identical cells the weights reduce to p(x, z) / (q(z|x) p(x)), whose
    /// mean over draws from q is 1: a check of every term and of their scales (a missing
    /// factorial constant or a wrong library would move it by orders of magnitude).
    #[test]
    fn weights_of_identical_cells_average_to_one() {
        let _rng = crate::TEST_RNG_LOCK.lock();
        let dev = Default::default();
        // Cells c and c + 5 of the toy data are identical.
        let data = crate::data::toy_dataset(1);
        let prior = crate::data::library_prior(&data);
        let fresh = Scvi::<Cpu>::new(ScviConfig::new(6, 1), prior, &dev).unwrap();
        let cfg = TrainConfig {
            max_epochs: Some(60),
            seed: Some(2),
            batch_size: 20,
            ..Default::default()
        };
        let (model, r) = train::<ScviKind, CpuTrain>(
            fresh,
            &[&data],
            &cfg,
            &ScviExtra::default(),
            &mut TrainState::default(),
            &mut Silent,
            &[dev],
            None,
        );
        r.unwrap();
        let mut rng = crate::rand_seeded(4);
        for (first, max_cells) in [(0, 1024), (3, 3)] {
            let cells: Vec<usize> = (0..8).map(|i| first + 5 * i).collect();
            let draws = draw(&model, &data, &cells, None, 500, 128, &dev).unwrap();
            assert_eq!(draws.n_rows(), 4000);
            let opts = ImportanceOptions {
                max_cells,
                n_mc_samples: 4000,
                ..Default::default()
            };
            let lw =
                log_weights(&model, &data, &cells, &draws, &opts, 128, &mut rng, &dev).unwrap();
            let log_mean = log_sum_exp(lw.iter().copied()) - (lw.len() as f64).ln();
            assert!(
                log_mean.abs() < 0.2,
                "cell {first}: log mean weight {log_mean}"
            );
        }
    }

    #[test]
    fn probabilities_normalise_and_truncate() {
        let lw = [0.0f64, 2f64.ln(), f64::NEG_INFINITY, 5f64.ln()];
        let p = probabilities(&lw, false).unwrap();
        for (got, want) in p.iter().zip([0.125, 0.25, 0.0, 0.625]) {
            assert!((got - want).abs() < 1e-12);
        }
        // mean weight 2: every weight below it is raised to it -> (2, 2, 2, 5) / 11
        let t = probabilities(&lw, true).unwrap();
        for (got, want) in t
            .iter()
            .zip([2.0 / 11.0, 2.0 / 11.0, 2.0 / 11.0, 5.0 / 11.0])
        {
            assert!((got - want).abs() < 1e-12);
        }
        assert!(probabilities(&[f64::NEG_INFINITY; 2], false).is_err());
        assert!(probabilities(&[0.0, f64::NAN], false).is_err());
    }
}
