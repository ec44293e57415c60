//! SPLICEVI's own queries (splicevi.md §8): modality latents, normalized splicing (p or the
//! DM posterior mean ψ*), the log library, differential splicing, and the check of
//! user-given ATSE totals.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::data::batch::host;
use crate::data::{CsrMatrix, DataSet};
use crate::de::{fdr_flags, paired_samples, DeRequest};
use crate::error::{invalid_arg, Result};
use crate::family::{Head, LatentPosterior};
use crate::infer::{check_query, posterior_latent, LatentRequest, Matrix};
use crate::models::splicevi::{SpliceVae, SpliceviBatch, SpliceviConfig};

/// A modality of SPLICEVI's latent queries (§8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modality {
    Joint,
    Expression,
    Splicing,
}

/// Latent representation of `cells` for `modality`: (representation, mean, variance).
#[allow(clippy::too_many_arguments)]
pub fn modality_latent<B: Backend>(
    module: &SpliceVae<B>,
    data: &DataSet,
    cells: &[usize],
    modality: Modality,
    give_mean: bool,
    batch_size: usize,
    device: &B::Device,
) -> Result<(Matrix, Matrix, Matrix)> {
    let m = match modality {
        Modality::Joint => {
            return crate::infer::latent(module, 0, data, cells, give_mean, 1, batch_size, device)
        }
        Modality::Expression => 0,
        Modality::Splicing => 1,
    };
    if module.config.fully_paired {
        return Err(invalid_arg(
            "modality",
            "must be \"joint\" for a model built with fully_paired = TRUE",
        ));
    }
    let request = LatentRequest {
        dataset: 0,
        cells,
        give_mean,
        mc_samples: 1,
        batch_size,
        width: module.config.n_latent,
    };
    posterior_latent(module, data, &request, device, |b| {
        let inf = module.inference(b, false, 1.0);
        let [mean, var, z] = [inf.qz_m, inf.qz_v, inf.z_m].map(|t| t[m].clone());
        LatentPosterior { mean, var, z }
    })
}

/// Options of [`normalized_splicing`] (§8.4–8.5).
pub struct SplicingQuery<'a> {
    pub cells: &'a [usize],
    /// Batch codes to decode with, averaged; empty: each cell's own batch.
    pub transform_batch: Vec<u32>,
    pub junctions: Option<&'a [usize]>,
    pub use_z_mean: bool,
    pub n_samples: usize,
    /// Average over the draws; otherwise rows are draw-major (S·n rows).
    pub return_mean: bool,
    /// ψ* (the DM posterior mean given the cell's counts) instead of the decoder's p.
    pub posterior_mean: bool,
    pub batch_size: usize,
}

/// Junction probabilities of `cells` (cells x junctions, or draw-major S·n rows).
pub fn normalized_splicing<B: Backend>(
    module: &SpliceVae<B>,
    data: &DataSet,
    q: &SplicingQuery,
    device: &B::Device,
) -> Result<Matrix> {
    check_query(module, 0, data, q.cells, q.batch_size)?;
    let c = &module.config;
    if let Some(&b) = q.transform_batch.iter().find(|&&b| b as usize >= c.n_batch) {
        return Err(invalid_arg(
            "transform_batch",
            format!("batch code {b} is unknown to the model"),
        ));
    }
    if let Some(&j) = q
        .junctions
        .into_iter()
        .flatten()
        .find(|&&j| j >= c.n_junctions)
    {
        return Err(invalid_arg(
            "junction_list",
            format!("junction {} is beyond the model's {}", j + 1, c.n_junctions),
        ));
    }
    let junctions: Vec<usize> = q
        .junctions
        .map_or_else(|| (0..c.n_junctions).collect(), |s| s.to_vec());
    let index = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            junctions.iter().map(|&j| j as i64).collect::<Vec<_>>(),
            [junctions.len()],
        ),
        device,
    );
    let s = q.n_samples.max(1);
    let batches: Vec<Option<u32>> = if q.transform_batch.is_empty() {
        vec![None]
    } else {
        q.transform_batch.iter().map(|&b| Some(b)).collect()
    };
    let head = if q.posterior_mean {
        Head::SplicingPosterior
    } else {
        Head::Splicing
    };
    let (n, w) = (q.cells.len(), junctions.len());
    let draws_out = if q.return_mean { 1 } else { s };
    let mut values = vec![0f32; draws_out * n * w];
    let mut offset = 0;
    for (done, chunk) in q.cells.chunks(q.batch_size).enumerate() {
        crate::interrupt::step(done, q.cells.len().div_ceil(q.batch_size))?;
        let mut per_draw: Vec<Option<Tensor<B, 2>>> = vec![None; s];
        for tb in &batches {
            let b = SpliceviBatch::<B>::new(c, data, chunk, *tb, device);
            let inf = module.inference(&b, false, 1.0);
            for slot in per_draw.iter_mut() {
                let z = if q.use_z_mean {
                    inf.qz_mean.clone()
                } else {
                    module.transform_latent(crate::nn::resample(&inf.qz_mean, &inf.qz_var))
                };
                let p = module.head_values(&b, z, head).select(1, index.clone());
                *slot = Some(match slot.take() {
                    Some(a) => a + p,
                    None => p,
                });
            }
        }
        let draws: Vec<Vec<f32>> = per_draw
            .into_iter()
            .map(|t| host(&(t.expect("one batch at least") / batches.len() as f64)))
            .collect();
        let rows = chunk.len();
        if q.return_mean {
            for d in &draws {
                for (k, v) in d.iter().enumerate() {
                    values[offset * w + k] += v / s as f32;
                }
            }
        } else {
            for (k, d) in draws.iter().enumerate() {
                let start = (k * n + offset) * w;
                values[start..start + rows * w].copy_from_slice(d);
            }
        }
        offset += rows;
    }
    Ok(Matrix {
        n_rows: draws_out * n,
        n_cols: w,
        values,
    })
}

/// The log library ℓ = log(s + 1e-6) of every cell (§8.2).
pub fn library_size_factors<B: Backend>(
    module: &SpliceVae<B>,
    data: &DataSet,
    cells: &[usize],
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<f32>> {
    check_query(module, 0, data, cells, batch_size)?;
    let mut out = Vec::with_capacity(cells.len());
    for (done, chunk) in cells.chunks(batch_size).enumerate() {
        crate::interrupt::step(done, cells.len().div_ceil(batch_size))?;
        let b = SpliceviBatch::<B>::new(&module.config, data, chunk, None, device);
        out.extend(host(&b.library));
    }
    Ok(out)
}

/// Differential splicing (§8.7): per junction, in junction order.
pub struct DsTable {
    pub columns: Vec<(String, Vec<f64>)>,
    /// FDR flags (change mode only).
    pub is_ds: Option<Vec<bool>>,
}

/// Compares the splicing of two groups of cells; `req.head` chooses p or ψ*, `req.change_mode`
/// the three-way test on Ψ2 − Ψ1 with `delta` (else the vanilla P(Ψ1 > Ψ2)).
pub fn differential_splicing<B: Backend>(
    module: &SpliceVae<B>,
    data: &DataSet,
    req: &DeRequest,
    device: &B::Device,
) -> Result<DsTable> {
    if !matches!(req.head, Head::Splicing | Head::SplicingPosterior) {
        return Err(invalid_arg(
            "norm_splicing_function",
            "must name a splicing head",
        ));
    }
    let (a1, a2, j) = paired_samples(module, data, req, device)?;
    let stats = splicing_change(&a1, &a2, j, req.delta, req.change_mode, req.fdr_target);
    let (proba, is_ds, scale1, scale2) = (stats.proba, stats.is_ds, stats.scale1, stats.scale2);
    let bayes = |p: f64| (p + 1e-8).ln() - (1.0 - p + 1e-8).ln();
    let [(emp1, n1), (emp2, n2)] =
        [req.cells1, req.cells2].map(|cells| empirical_psi(&module.config, data, cells));
    let columns = vec![
        ("proba_ds".to_string(), proba.clone()),
        (
            "bayes_factor".into(),
            proba.iter().map(|&p| bayes(p)).collect(),
        ),
        (
            "effect_size".into(),
            scale2.iter().zip(&scale1).map(|(b, a)| b - a).collect(),
        ),
        (
            "emp_effect".into(),
            emp2.iter().zip(&emp1).map(|(b, a)| b - a).collect(),
        ),
        ("est_prob1".into(), scale1),
        ("est_prob2".into(), scale2),
        ("emp_prob1".into(), emp1),
        ("emp_prob2".into(), emp2),
        ("n_obs_group1".into(), n1),
        ("n_obs_group2".into(), n2),
    ];
    Ok(DsTable { columns, is_ds })
}

/// Statistics of paired PSI draws (rows of `j` junctions, group 1 and group 2).
pub struct SplicingChange {
    /// Change mode: max(P(Ψ2 − Ψ1 ≥ δ), P(Ψ2 − Ψ1 < −δ)); vanilla: P(Ψ1 > Ψ2).
    pub proba: Vec<f64>,
    /// Posterior-FDR flags (change mode).
    pub is_ds: Option<Vec<bool>>,
    pub scale1: Vec<f64>,
    pub scale2: Vec<f64>,
}

/// §8.7 steps 2–6 on paired draws.
pub fn splicing_change(
    a1: &[f32],
    a2: &[f32],
    j: usize,
    delta: f64,
    change_mode: bool,
    fdr_target: f64,
) -> SplicingChange {
    let k = a1.len() / j.max(1);
    let (mut scale1, mut scale2) = (vec![0f64; j], vec![0f64; j]);
    let (mut up, mut down, mut greater) = (vec![0f64; j], vec![0f64; j], vec![0f64; j]);
    for row in 0..k {
        for col in 0..j {
            let (p1, p2) = (a1[row * j + col] as f64, a2[row * j + col] as f64);
            scale1[col] += p1;
            scale2[col] += p2;
            let r = p2 - p1;
            up[col] += (r >= delta) as u8 as f64;
            down[col] += (r < -delta) as u8 as f64;
            greater[col] += (p1 > p2) as u8 as f64;
        }
    }
    let kf = k.max(1) as f64;
    let mean = |v: Vec<f64>| v.into_iter().map(|x| x / kf).collect::<Vec<f64>>();
    let (proba, is_ds) = if change_mode {
        let proba: Vec<f64> = mean(up)
            .into_iter()
            .zip(mean(down))
            .map(|(u, d)| u.max(d))
            .collect();
        let flags = fdr_flags(&proba, fdr_target);
        (proba, Some(flags))
    } else {
        (mean(greater), None)
    };
    SplicingChange {
        proba,
        is_ds,
        scale1: mean(scale1),
        scale2: mean(scale2),
    }
}

/// Mean observed ratio of each junction over `cells` (−1 where never observed) and the number
/// of cells observing it (§8.7 step 7).
fn empirical_psi(c: &SpliceviConfig, data: &DataSet, cells: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let (indptr, indices, values) = super::model::junction_ratios_of(c, data, cells);
    let (mut sum, mut count) = (vec![0f64; c.n_junctions], vec![0f64; c.n_junctions]);
    for r in 0..cells.len() {
        for k in indptr[r]..indptr[r + 1] {
            sum[indices[k] as usize] += values[k] as f64;
            count[indices[k] as usize] += 1.0;
        }
    }
    let emp = sum
        .iter()
        .zip(&count)
        .map(|(&s, &n)| if n > 0.0 { s / n } else { -1.0 })
        .collect();
    (emp, count)
}

/// Number of (cell, junction) entries where user-given ATSE totals (cells x junctions) differ
/// from the sum of the junction counts of the junction's ATSE (the §2.1 invariants).
pub fn count_total_mismatches(
    c: &SpliceviConfig,
    data: &DataSet,
    totals: &CsrMatrix,
) -> Result<usize> {
    if totals.n_rows != data.n_cells() || totals.n_cols != c.n_junctions {
        return Err(invalid_arg(
            "atse_totals",
            format!(
                "is {} x {} but the junction counts are {} x {} (junctions x cells)",
                totals.n_cols,
                totals.n_rows,
                c.n_junctions,
                data.n_cells()
            ),
        ));
    }
    let all: Vec<usize> = (0..data.n_cells()).collect();
    let (indptr, indices, _) = super::model::junction_ratios_of(c, data, &all);
    let g = c.n_genes;
    let mut sums = vec![0f64; c.n_atse];
    let mut expected = vec![0f64; c.n_junctions];
    let mut mismatches = 0;
    for cell in all {
        let (idx, val) = data.counts.row(cell);
        for (&j, &v) in idx.iter().zip(val) {
            if j as usize >= g {
                sums[c.junction_atse[j as usize - g] as usize] += v as f64;
            }
        }
        let observed = &indices[indptr[cell]..indptr[cell + 1]];
        for &j in observed {
            expected[j as usize] = sums[c.junction_atse[j as usize] as usize];
        }
        let (tidx, tval) = totals.row(cell);
        let mut given_observed = 0;
        for (&j, &v) in tidx.iter().zip(tval) {
            let e = expected[j as usize];
            given_observed += (e != 0.0) as usize;
            mismatches += (v as f64 != e) as usize;
        }
        // Observed junctions whose total the user left out (an implicit zero).
        mismatches += observed.len() - given_observed;
        for &j in observed {
            expected[j as usize] = 0.0;
            sums[c.junction_atse[j as usize] as usize] = 0.0;
        }
    }
    Ok(mismatches)
}
