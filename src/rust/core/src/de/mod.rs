//! Differential expression (scvi.md §9): the pipeline that samples both groups from any
//! model with an expression head ([`ExpressionModule`]) and pairs the draws, and the
//! statistics on the paired samples (`stats`).

mod stats;

pub use stats::*;

use burn::tensor::backend::Backend;

use crate::data::DataSet;
use crate::error::Result;
use crate::family::{ExpressionModule, Head};
use crate::infer::expression::{scale_samples, RowWeights};
use crate::infer::latent;

/// Arguments of [`differential_expression`] (scvi.md §9.1 defaults).
pub struct DeRequest<'a> {
    pub cells1: &'a [usize],
    pub cells2: &'a [usize],
    pub change_mode: bool,
    pub delta: f64,
    pub test_mode: TestMode,
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
    /// What is compared: expression (DE) or accessibility (DA).
    pub head: Head,
    /// Drop each group's latent-space outliers (10%) before sampling (raw statistics keep
    /// every cell).
    pub filter_outlier_cells: bool,
}

/// Named per-gene columns in the reference's order, plus the FDR flags in change mode.
pub struct DeTable {
    pub columns: Vec<(String, Vec<f64>)>,
    pub is_de: Option<Vec<bool>>,
}

/// Raw count statistics of a group over the `columns` of the head (scvi.md §9.7): mean,
/// fraction nonzero, mean of counts per 10k of the cell's total over those columns.
fn raw_stats(
    data: &DataSet,
    cells: &[usize],
    columns: &std::ops::Range<usize>,
) -> Result<[Vec<f64>; 3]> {
    let g = columns.len();
    let (mut mean, mut nz, mut norm) = (vec![0.0; g], vec![0.0; g], vec![0.0; g]);
    data.for_rows(cells, |_, idx, val| {
        let genes = || {
            idx.iter()
                .zip(val)
                .filter(|(&j, _)| columns.contains(&(j as usize)))
                .map(|(&j, v)| (j as usize - columns.start, v))
        };
        let total: f64 = genes().map(|(_, &v)| v as f64).sum();
        for (j, &v) in genes() {
            mean[j] += v as f64;
            nz[j] += (v > 0.0) as u8 as f64;
            norm[j] += v as f64 * 1e4 / total;
        }
    })?;
    let k = cells.len().max(1) as f64;
    Ok([mean, nz, norm].map(|v| v.into_iter().map(|x| x / k).collect()))
}

/// Both groups' draws of the head's normalised values, paired row by row (scvi.md §9.2–9.4):
/// each group sampled with replacement (`n_samples_overall`, spread over its batch list),
/// truncated to the same number of rows. Returns (group 1, group 2, features), row-major.
pub fn paired_samples<B: Backend, M: ExpressionModule<B>>(
    model: &M,
    data: &DataSet,
    req: &DeRequest,
    device: &B::Device,
) -> Result<(Vec<f32>, Vec<f32>, usize)> {
    use rand::SeedableRng;
    // Both the row draws and the posterior noise follow the seed (R passes one drawn from its
    // own RNG, so set.seed() makes DE reproducible).
    B::seed(device, req.seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(req.seed);
    let columns = model
        .head_columns(req.head)
        .ok_or_else(|| crate::error::invalid_arg("model", format!("has no {:?} head", req.head)))?;
    let g = columns.len();
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
                    req.head,
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
        let (mean, _, _) = latent(model, 0, data, cells, true, 1, req.batch_size, device)?;
        let flags = inliers(&mean.values, mean.n_cols, 0.1, req.seed);
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
    Ok((a1[..j * g].to_vec(), a2[..j * g].to_vec(), g))
}

/// Samples both groups, pairs them and computes the DE statistics (scvi.md §9.2-9.7).
pub fn differential_expression<B: Backend, M: ExpressionModule<B>>(
    model: &M,
    data: &DataSet,
    req: &DeRequest,
    device: &B::Device,
) -> Result<DeTable> {
    let (a1, a2, g) = paired_samples(model, data, req, device)?;
    let columns = model
        .head_columns(req.head)
        .ok_or_else(|| crate::error::invalid_arg("model", format!("has no {:?} head", req.head)))?;
    let (p1, p2) = (
        Samples {
            values: &a1,
            n_genes: g,
        },
        Samples {
            values: &a2,
            n_genes: g,
        },
    );
    let [mean1, nz1, norm1] = raw_stats(data, req.cells1, &columns)?;
    let [mean2, nz2, norm2] = raw_stats(data, req.cells2, &columns)?;
    let mut columns: Vec<(String, Vec<f64>)> = Vec::new();
    let mut is_de = None;
    if req.change_mode {
        let pc = match req.pseudocount {
            Some(pc) => pc,
            None => {
                let zero = |m: &[f64]| m.iter().map(|&v| v < 0.01).collect::<Vec<bool>>();
                pseudocount(&p1, &p2, &zero(&mean1), &zero(&mean2))
            }
        };
        let s = change_mode(&p1, &p2, pc, req.delta, req.test_mode, &req.interval_levels)?;
        is_de = Some(fdr_flags(&s.proba_de, req.fdr_target));
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
        let [m1, m2, bf, s1, s2] = vanilla_mode(&p1, &p2)?;
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
