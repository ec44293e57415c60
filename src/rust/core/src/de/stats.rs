//! DE statistics on paired posterior samples (scvi.md §9.3-9.6): change and vanilla modes,
//! the pseudocount rule, HPD intervals, posterior expected FDR; and the latent-space outlier
//! filter.

use crate::error::{invalid_arg, Result};

/// Row-major J x G samples.
pub struct Samples<'a> {
    pub values: &'a [f32],
    pub n_genes: usize,
}

impl Samples<'_> {
    fn rows(&self) -> usize {
        self.values.len().checked_div(self.n_genes).unwrap_or(0)
    }
    fn column_max(&self) -> Vec<f64> {
        let mut m = vec![f64::NEG_INFINITY; self.n_genes];
        for row in self.values.chunks(self.n_genes) {
            for (g, &v) in row.iter().enumerate() {
                m[g] = m[g].max(v as f64);
            }
        }
        m
    }
    fn column_mean(&self) -> Vec<f64> {
        let mut m = vec![0.0; self.n_genes];
        for row in self.values.chunks(self.n_genes) {
            for (g, &v) in row.iter().enumerate() {
                m[g] += v as f64;
            }
        }
        let j = self.rows().max(1) as f64;
        m.iter().map(|v| v / j).collect()
    }
}

/// NumPy's default (linear-interpolation) quantile.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (pos - lo as f64) * (v[hi] - v[lo])
}

/// The estimated pseudocount (scvi.md §9.5.1). `zero1` / `zero2` flag the genes whose raw mean
/// count in the group is below 0.01.
pub fn pseudocount(p1: &Samples, p2: &Samples, zero1: &[bool], zero2: &[bool]) -> f64 {
    let edge = |p: &Samples, zero: &[bool]| {
        let mx = p.column_max();
        let sel: Vec<f64> = mx
            .iter()
            .zip(zero)
            .filter(|(_, &z)| z)
            .map(|(&m, _)| m)
            .collect();
        if sel.is_empty() {
            1e-10
        } else {
            quantile(&sel, 0.9)
        }
    };
    let g = p1.n_genes as f64;
    (edge(p1, zero1).max(edge(p2, zero2)) / g).max(1e-10)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestMode {
    Two,
    Three,
}

/// Per-gene change-mode results, in gene order.
#[derive(Clone, Debug, Default)]
pub struct ChangeStats {
    pub proba_de: Vec<f64>,
    pub proba_not_de: Vec<f64>,
    pub bayes_factor: Vec<f64>,
    pub scale1: Vec<f64>,
    pub scale2: Vec<f64>,
    pub pseudocount: f64,
    pub delta: f64,
    pub lfc_mean: Vec<f64>,
    pub lfc_median: Vec<f64>,
    pub lfc_std: Vec<f64>,
    pub lfc_min: Vec<f64>,
    pub lfc_max: Vec<f64>,
    /// (level, lower, upper) HPD intervals of the LFC for each requested level.
    pub intervals: Vec<(f64, Vec<f64>, Vec<f64>)>,
}

fn check_pair(p1: &Samples, p2: &Samples) -> Result<()> {
    if p1.n_genes != p2.n_genes || p1.rows() != p2.rows() || p1.rows() == 0 {
        return Err(invalid_arg(
            "samples",
            "the two groups' paired samples must have the same, non-zero shape",
        ));
    }
    Ok(())
}

fn bayes_factor(p: f64) -> f64 {
    (p + 1e-8).ln() - (1.0 - p + 1e-8).ln()
}

/// Highest-posterior-density interval of `sorted` values at `level` (scvi.md §9.5.7).
pub fn hpd(sorted: &[f64], level: f64) -> (f64, f64) {
    let j = sorted.len();
    let k = ((level * j as f64).floor() as usize).min(j - 1);
    let mut best = 0;
    for i in 0..j - k {
        if sorted[i + k] - sorted[i] < sorted[best + k] - sorted[best] {
            best = i;
        }
    }
    (sorted[best], sorted[best + k])
}

/// Change mode (scvi.md §9.5): LFC tests against `delta` with pseudocount `pc`.
pub fn change_mode(
    p1: &Samples,
    p2: &Samples,
    pc: f64,
    delta: f64,
    test_mode: TestMode,
    interval_levels: &[f64],
) -> Result<ChangeStats> {
    check_pair(p1, p2)?;
    let (j, g) = (p1.rows(), p1.n_genes);
    let mut s = ChangeStats {
        scale1: p1.column_mean(),
        scale2: p2.column_mean(),
        pseudocount: pc,
        delta,
        ..Default::default()
    };
    let small = pc * 1e-3;
    let mut lfc = vec![0f64; j];
    let mut intervals: Vec<(Vec<f64>, Vec<f64>)> =
        interval_levels.iter().map(|_| (vec![], vec![])).collect();
    for gene in 0..g {
        let (mut up, mut down) = (0usize, 0usize);
        for (r, l) in lfc.iter_mut().enumerate() {
            let (a, b) = (
                p1.values[r * g + gene] as f64,
                p2.values[r * g + gene] as f64,
            );
            let test = (a + pc).log2() - (b + pc).log2();
            up += (test >= delta) as usize;
            down += (test < -delta) as usize;
            *l = (a + small).log2() - (b + small).log2();
        }
        let (pu, pd) = (up as f64 / j as f64, down as f64 / j as f64);
        let pde = match test_mode {
            TestMode::Three => pu.max(pd),
            TestMode::Two => pu + pd,
        };
        s.proba_de.push(pde);
        s.proba_not_de.push(1.0 - pde);
        s.bayes_factor.push(bayes_factor(pde));
        let mean = lfc.iter().sum::<f64>() / j as f64;
        s.lfc_mean.push(mean);
        s.lfc_std
            .push((lfc.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / j as f64).sqrt());
        lfc.sort_by(|a, b| a.total_cmp(b));
        s.lfc_median.push(if j % 2 == 1 {
            lfc[j / 2]
        } else {
            0.5 * (lfc[j / 2 - 1] + lfc[j / 2])
        });
        s.lfc_min.push(lfc[0]);
        s.lfc_max.push(lfc[j - 1]);
        for (lvl, (lo, hi)) in interval_levels.iter().zip(intervals.iter_mut()) {
            let (a, b) = hpd(&lfc, *lvl);
            lo.push(a);
            hi.push(b);
        }
    }
    s.intervals = interval_levels
        .iter()
        .cloned()
        .zip(intervals)
        .map(|(l, (a, b))| (l, a, b))
        .collect();
    Ok(s)
}

/// Vanilla mode (scvi.md §9.4): (proba_m1, proba_m2, bayes_factor, scale1, scale2).
pub fn vanilla_mode(p1: &Samples, p2: &Samples) -> Result<[Vec<f64>; 5]> {
    check_pair(p1, p2)?;
    let (j, g) = (p1.rows(), p1.n_genes);
    let mut m1 = vec![0f64; g];
    for (r1, r2) in p1.values.chunks(g).zip(p2.values.chunks(g)) {
        for ((m, a), b) in m1.iter_mut().zip(r1).zip(r2) {
            *m += (a > b) as u8 as f64;
        }
    }
    let m1: Vec<f64> = m1.iter().map(|v| v / j as f64).collect();
    let m2 = m1.iter().map(|v| 1.0 - v).collect();
    let bf = m1.iter().map(|&p| bayes_factor(p)).collect();
    Ok([m1, m2, bf, p1.column_mean(), p2.column_mean()])
}

/// Posterior expected FDR control (scvi.md §9.6): flags the largest set of genes, in
/// decreasing `proba_de`, whose mean (1 - proba_de) stays at or below `target`.
pub fn fdr_flags(proba_de: &[f64], target: f64) -> Vec<bool> {
    let mut order: Vec<usize> = (0..proba_de.len()).collect();
    order.sort_by(|&a, &b| proba_de[b].total_cmp(&proba_de[a]));
    let mut cum = 0.0;
    let mut d = 0;
    for (k, &i) in order.iter().enumerate() {
        cum += 1.0 - proba_de[i];
        if cum / (k + 1) as f64 <= target {
            d = k + 1;
        }
    }
    let mut flags = vec![false; proba_de.len()];
    for &i in &order[..d] {
        flags[i] = true;
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: [f32; 20] = [
        0.40, 0.30, 0.20, 0.10, 0.50, 0.25, 0.15, 0.10, 0.45, 0.35, 0.12, 0.08, 0.42, 0.28, 0.20,
        0.10, 0.48, 0.30, 0.14, 0.08,
    ];
    const P2: [f32; 20] = [
        0.20, 0.30, 0.40, 0.10, 0.25, 0.32, 0.35, 0.08, 0.22, 0.28, 0.42, 0.08, 0.18, 0.35, 0.37,
        0.10, 0.30, 0.25, 0.38, 0.07,
    ];

    fn close(got: &[f64], want: &[f64], tol: f64) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < tol, "got {got:?}, want {want:?}");
        }
    }

    /// scvi.md §12.7.
    #[test]
    fn de_toy_parity() {
        let (a, b) = (
            Samples {
                values: &P1,
                n_genes: 4,
            },
            Samples {
                values: &P2,
                n_genes: 4,
            },
        );
        let pc = pseudocount(
            &a,
            &b,
            &[false, false, false, true],
            &[false, false, true, true],
        );
        assert!((pc - 0.097).abs() < 1e-7, "pseudocount {pc}");
        let s = change_mode(&a, &b, pc, 0.25, TestMode::Three, &[]).unwrap();
        close(&s.proba_de, &[1.0, 0.2, 1.0, 0.0], 1e-12);
        close(
            &s.bayes_factor,
            &[18.420_680_75, -1.386_294_324, 18.420_680_75, -18.420_680_75],
            1e-6,
        );
        close(
            &s.lfc_mean,
            &[
                0.986_262_459_7,
                -0.018_616_051_80,
                -1.271_035_536,
                0.102_794_825_9,
            ],
            1e-5,
        );
        close(
            &s.lfc_median,
            &[0.999_720_198_6, 0.0, -1.221_859_557, 0.0],
            1e-5,
        );
        close(
            &s.lfc_std,
            &[
                0.174_984_670_0,
                0.283_303_102_0,
                0.328_228_688_3,
                0.132_359_329_4,
            ],
            1e-5,
        );
        close(
            &s.lfc_min,
            &[0.677_897_024_3, -0.356_021_403_8, -1.806_522_370, 0.0],
            1e-5,
        );
        close(
            &s.lfc_max,
            &[
                1.221_948_334,
                0.321_828_167_9,
                -0.887_203_903_8,
                0.321_578_622_7,
            ],
            1e-5,
        );
        close(&s.scale1, &[0.45, 0.296, 0.162, 0.092], 1e-6);
        close(&s.scale2, &[0.23, 0.30, 0.384, 0.086], 1e-6);
        let [m1, _, bf, _, _] = vanilla_mode(&a, &b).unwrap();
        close(&m1, &[1.0, 0.4, 0.0, 0.4], 1e-12);
        close(
            &bf,
            &[
                18.420_680_75,
                -0.405_465_099_8,
                -18.420_680_75,
                -0.405_465_099_8,
            ],
            1e-6,
        );
    }

    #[test]
    fn fdr_and_hpd_parity() {
        assert_eq!(
            fdr_flags(&[0.99, 0.2, 0.97, 0.8, 0.9, 0.5], 0.05),
            vec![true, false, true, false, true, false]
        );
        let mut v = vec![0.1, 0.5, 0.2, 0.9, 0.3, 0.35, 2.0, 0.4, 0.45, 0.25];
        v.sort_by(|a: &f64, b| a.total_cmp(b));
        assert_eq!(hpd(&v, 0.5), (0.2, 0.45));
        assert_eq!(hpd(&v, 0.8), (0.1, 0.9));
        assert!((quantile(&[0.10, 0.42], 0.9) - 0.388).abs() < 1e-12);
    }
}

/// Cholesky factor (lower, row-major) of a symmetric positive-definite d x d matrix.
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let v = a[i * d + i] - s;
                if v <= 0.0 {
                    return None;
                }
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// Mean, covariance Cholesky factor and log-determinant of the rows `subset` of `x` (n x d).
fn gaussian_fit(x: &[f64], d: usize, subset: &[usize]) -> Option<(Vec<f64>, Vec<f64>, f64)> {
    let k = subset.len() as f64;
    let mut mean = vec![0.0; d];
    for &r in subset {
        for j in 0..d {
            mean[j] += x[r * d + j] / k;
        }
    }
    let mut cov = vec![0.0; d * d];
    for &r in subset {
        for a in 0..d {
            for b in 0..=a {
                cov[a * d + b] += (x[r * d + a] - mean[a]) * (x[r * d + b] - mean[b]) / k;
            }
        }
    }
    for a in 0..d {
        for b in 0..a {
            cov[b * d + a] = cov[a * d + b];
        }
        cov[a * d + a] += 1e-9; // keeps a degenerate subset factorable
    }
    let l = cholesky(&cov, d)?;
    let logdet = 2.0 * (0..d).map(|i| l[i * d + i].ln()).sum::<f64>();
    Some((mean, l, logdet))
}

/// Squared Mahalanobis distance of every row under (mean, Cholesky factor).
fn mahalanobis(x: &[f64], d: usize, mean: &[f64], l: &[f64]) -> Vec<f64> {
    x.chunks(d)
        .map(|row| {
            // solve L y = (row - mean) by forward substitution
            let mut y = vec![0.0; d];
            for i in 0..d {
                let s: f64 = (0..i).map(|k| l[i * d + k] * y[k]).sum();
                y[i] = (row[i] - mean[i] - s) / l[i * d + i];
            }
            y.iter().map(|v| v * v).sum()
        })
        .collect()
}

/// Inlier flags of an embedding (n x d, row-major) under a robust Gaussian fit: minimum
/// covariance determinant by random starts and concentration steps (the FastMCD idea),
/// then the `contamination` fraction of cells farthest in Mahalanobis distance are
/// outliers, as sklearn's EllipticEnvelope decides (not bitwise: random starts differ).
pub fn inliers(embedding: &[f32], d: usize, contamination: f64, seed: u64) -> Vec<bool> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let n = embedding.len().checked_div(d).unwrap_or(0);
    if n <= d + 1 {
        return vec![true; n];
    }
    let x: Vec<f64> = embedding.iter().map(|&v| v as f64).collect();
    let h = (n + d).div_ceil(2); // floor((n + d + 1) / 2)
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut best: Option<(f64, Vec<f64>)> = None;
    let mut all: Vec<usize> = (0..n).collect();
    for _ in 0..10 {
        all.shuffle(&mut rng);
        let mut subset = all[..d + 1].to_vec();
        let mut fit: Option<(f64, Vec<f64>)> = None;
        for _ in 0..30 {
            let Some((mean, l, logdet)) = gaussian_fit(&x, d, &subset) else {
                break;
            };
            let dist = mahalanobis(&x, d, &mean, &l);
            let converged = fit.as_ref().is_some_and(|f| logdet >= f.0 - 1e-12);
            if subset.len() == h {
                fit = Some((logdet, dist.clone()));
            }
            if converged {
                break;
            }
            // concentration step: the h cells closest under the current fit
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| dist[a].total_cmp(&dist[b]));
            subset = order[..h].to_vec();
        }
        if let Some(f) = fit {
            if best.as_ref().is_none_or(|b| f.0 < b.0) {
                best = Some(f);
            }
        }
    }
    let Some((_, dist)) = best else {
        return vec![true; n];
    };
    let cut = quantile(&dist, 1.0 - contamination);
    dist.iter().map(|&v| v <= cut).collect()
}

#[cfg(test)]
mod outlier_tests {
    #[test]
    fn far_points_are_outliers_and_the_bulk_is_kept() {
        // 200 points on a tight 2-D grid plus 10 far away
        let mut emb = Vec::new();
        for i in 0..200 {
            emb.push((i % 20) as f32 * 0.1);
            emb.push((i / 20) as f32 * 0.1);
        }
        for i in 0..10 {
            emb.push(50.0 + i as f32);
            emb.push(-40.0);
        }
        let keep = super::inliers(&emb, 2, 0.1, 0);
        assert!(keep[200..].iter().all(|&k| !k), "far points kept");
        assert!(keep[..200].iter().filter(|&&k| k).count() >= 185);
    }
}
