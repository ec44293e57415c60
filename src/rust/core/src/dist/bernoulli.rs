//! Fused CPU evaluation of the accessibility likelihood of MULTIVI (multivi.md §5.2): per
//! cell the binary cross-entropy of t = [x > 0] under q = σ(a)·d·σ(r), with PyTorch's clamp
//! of each log at -100, and its partial derivatives, in one pass over the cells x regions
//! minibatch. The composed tensor version (`dist::binary_cross_entropy`) needs about ten
//! elementwise passes with their backward passes over the widest matrix of the model.

use rayon::prelude::*;

use crate::dist::fused::{exp, ln};
use crate::nn::SparseRows;

/// Below this q (or 1 - q) the log is clamped (ln(1e-38) ≈ -87.5 > -100, so the clamp only
/// bites on zero and denormal values, where the reference's gradient is zero too).
const TINY: f32 = 1e-38;
const LOG_FLOOR: f32 = -100.0;
/// Cells per parallel task of the gradient pass.
const BLOCK: usize = 8;

pub struct BernoulliOut {
    /// Σ_j of the cross-entropy, per cell (positive).
    pub per_cell: Vec<f32>,
    /// ∂/∂a, cells x regions (empty without gradients).
    pub d_logits: Vec<f32>,
    /// ∂/∂d, per cell.
    pub d_library: Vec<f32>,
    /// ∂/∂r summed over the cells whose `weight` is 1 (the measured cells), per region.
    pub d_region: Vec<f32>,
}

#[inline(always)]
fn sigmoid(u: f32) -> f32 {
    1.0 / (1.0 + exp(-u))
}

/// One region: (log p, h = ∂(-log p)/∂q · q, ∂(-log p)/∂a) for t = [x > 0].
#[inline(always)]
fn element(t: f32, logit: f32, d: f32, region_sigmoid: f32) -> (f32, f32, f32) {
    let s = sigmoid(logit);
    let q = s * d * region_sigmoid;
    // p = q for an open region, 1 - q for a closed one.
    let p = (1.0 - t) + (2.0 * t - 1.0) * q;
    let kept = p > TINY;
    let lp = if kept {
        ln(p.max(TINY)).max(LOG_FLOOR)
    } else {
        LOG_FLOOR
    };
    // ∂(-log p)/∂q = (1 - 2t) / p, zero where the log is clamped.
    let h = if kept {
        (1.0 - 2.0 * t) / p.max(TINY) * q
    } else {
        0.0
    };
    (lp, h, h * (1.0 - s))
}

/// One cell, every region taken as closed: log p into `lp`, and with `GRAD` h into `h` and
/// ∂/∂a into `d_logits` (the caller redoes the open ones, a few percent). No reduction
/// inside, so that the loop vectorises (a float sum would fix the order of additions).
#[inline(always)]
fn row<const GRAD: bool>(
    logits: &[f32],
    d: f32,
    region_sigmoid: &[f32],
    lp: &mut [f32],
    d_logits: &mut [f32],
    h: &mut [f32],
) {
    let r = logits.len();
    let (region_sigmoid, lp) = (&region_sigmoid[..r], &mut lp[..r]);
    // Re-sliced to r so that the loop has no bounds checks (empty without gradients).
    let (d_logits, h) = if GRAD {
        (&mut d_logits[..r], &mut h[..r])
    } else {
        (d_logits, h)
    };
    for j in 0..r {
        let (l, hj, dl) = element(0.0, logits[j], d, region_sigmoid[j]);
        lp[j] = l;
        if GRAD {
            h[j] = hj;
            d_logits[j] = dl;
        }
    }
}

/// Σ v in eight lanes (vectorises; the order of additions differs from a plain loop's).
fn lane_sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f32>() + rest
}

crate::widest! {
    fn row_widest<const GRAD: bool>(
        logits: &[f32],
        d: f32,
        region_sigmoid: &[f32],
        lp: &mut [f32],
        d_logits: &mut [f32],
        h: &mut [f32],
    ) = row;
}

/// One cell, on the widest instructions the CPU has, with its `open` regions (x > 0):
/// (value, Σ_j h).
#[allow(clippy::too_many_arguments)]
fn row_dispatch<const GRAD: bool>(
    open: &[u32],
    logits: &[f32],
    d: f32,
    region_sigmoid: &[f32],
    lp: &mut [f32],
    d_logits: &mut [f32],
    h: &mut [f32],
) -> (f32, f32) {
    row_widest::<GRAD>(logits, d, region_sigmoid, lp, d_logits, h);
    for &j in open {
        let j = j as usize;
        if j < logits.len() {
            let (l, hj, dl) = element(1.0, logits[j], d, region_sigmoid[j]);
            lp[j] = l;
            if GRAD {
                h[j] = hj;
                d_logits[j] = dl;
            }
        }
    }
    (-lane_sum(lp), if GRAD { lane_sum(h) } else { 0.0 })
}

/// Evaluates n cells x r regions: `open` holds each cell's regions with x > 0 (rows of a
/// sparse matrix), `logits` is row-major, `library` = d per cell, `region_logits` = r per
/// region (None: no region factors). `weight` (0/1 per cell) says which cells count towards
/// ∂/∂r.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    open: &SparseRows,
    logits: &[f32],
    library: &[f32],
    region_logits: Option<&[f32]>,
    weight: &[f32],
    r: usize,
    grad: bool,
) -> BernoulliOut {
    let n = library.len();
    // Without region factors σ(r) is 1 for every region.
    let region_sigmoid: Vec<f32> = match region_logits {
        Some(rl) => rl.iter().map(|&v| sigmoid(v)).collect(),
        None => vec![1.0; r],
    };
    let rs = &region_sigmoid;
    let open_in = |c: usize| -> &[u32] {
        match (open.indptr.get(c), open.indptr.get(c + 1)) {
            (Some(&a), Some(&b)) => &open.indices[a..b],
            _ => &[],
        }
    };
    let mut per_cell = vec![0f32; n];
    let mut d_library = vec![0f32; if grad { n } else { 0 }];
    let mut d_logits = vec![0f32; if grad { n * r } else { 0 }];
    let mut d_region = Vec::new();
    if grad {
        // Blocks of cells, each with its own sum of h over the counted cells for ∂/∂r
        // (blocks of a fixed size and added in order: the same result on any number of
        // threads, without a cells x regions matrix of h).
        let with_region = region_logits.is_some();
        let sums: Vec<Vec<f32>> = per_cell
            .par_chunks_mut(BLOCK)
            .zip(d_library.par_chunks_mut(BLOCK))
            .zip(d_logits.par_chunks_mut(BLOCK * r.max(1)))
            .enumerate()
            .map(|(block, ((values, dd), dl))| {
                let (mut lp, mut h) = (vec![0f32; r], vec![0f32; r]);
                let mut sum = vec![0f32; if with_region { r } else { 0 }];
                for (k, (v, dd)) in values.iter_mut().zip(dd.iter_mut()).enumerate() {
                    let c = block * BLOCK + k;
                    let d = library[c];
                    let (value, h_sum) = row_dispatch::<true>(
                        open_in(c),
                        &logits[c * r..(c + 1) * r],
                        d,
                        rs,
                        &mut lp,
                        &mut dl[k * r..(k + 1) * r],
                        &mut h,
                    );
                    *v = value;
                    // q = σ(a)·d·σ(r): ∂q/∂d = q/d, so ∂value/∂d = Σ_j h_j / d.
                    *dd = h_sum / d.max(TINY);
                    if with_region && weight[c] > 0.0 {
                        for (s, &hj) in sum.iter_mut().zip(&h) {
                            *s += hj;
                        }
                    }
                }
                sum
            })
            .collect();
        // ∂value/∂r_j = Σ_cells h_cj (1 - σ(r_j)) over the counted cells.
        if with_region {
            d_region = vec![0f32; r];
            for sum in &sums {
                for (t, &s) in d_region.iter_mut().zip(sum) {
                    *t += s;
                }
            }
            for (t, &sig) in d_region.iter_mut().zip(rs) {
                *t *= 1.0 - sig;
            }
        }
    } else {
        per_cell.par_iter_mut().enumerate().for_each_init(
            || vec![0f32; r],
            |lp, (c, v)| {
                let logits = &logits[c * r..(c + 1) * r];
                *v =
                    row_dispatch::<false>(open_in(c), logits, library[c], rs, lp, &mut [], &mut [])
                        .0;
            },
        );
    }
    BernoulliOut {
        per_cell,
        d_logits,
        d_library,
        d_region,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The open regions of a dense row-major n x r matrix.
    fn open_of(x: &[f32], r: usize) -> SparseRows {
        let mut rows = SparseRows::default();
        rows.indptr.push(0);
        for row in x.chunks(r) {
            for (j, &v) in row.iter().enumerate() {
                if v > 0.0 {
                    rows.indices.push(j as u32);
                    rows.values.push(v);
                }
            }
            rows.indptr.push(rows.indices.len());
        }
        rows
    }

    /// Central differences of the per-cell value.
    #[test]
    fn values_and_gradients_match_the_definition() {
        let x = [1.0, 0.0, 2.0, 0.0, 0.0, 1.0];
        let a = [0.3f32, -1.2, 2.0, 0.5, -0.4, 1.1];
        let d = [0.7f32, 0.4];
        let rl = [0.2f32, -0.5, 1.5];
        let w = [1.0, 1.0];
        let out = cross_entropy(&open_of(&x, 3), &a, &d, Some(&rl), &w, 3, true);
        let sig = |u: f32| 1.0 / (1.0 + (-u).exp());
        let value = |a: &[f32], d: &[f32], rl: &[f32]| -> f32 {
            (0..6)
                .map(|k| {
                    let (c, j) = (k / 3, k % 3);
                    let q = sig(a[k]) * d[c] * sig(rl[j]);
                    -(if x[k] > 0.0 { q.ln() } else { (1.0 - q).ln() })
                })
                .sum()
        };
        let total: f32 = out.per_cell.iter().sum();
        assert!((total - value(&a, &d, &rl)).abs() < 1e-4);
        // Central differences of the summed value along each coordinate of `at`.
        let check = |name: &str, at: &[f32], f: &dyn Fn(&[f32]) -> f32, got: &[f32], tol: f32| {
            let eps = 1e-3f32;
            for k in 0..at.len() {
                let (mut up, mut dn) = (at.to_vec(), at.to_vec());
                up[k] += eps;
                dn[k] -= eps;
                let num = (f(&up) - f(&dn)) / (2.0 * eps);
                assert!(
                    (num - got[k]).abs() < tol,
                    "{name}[{k}]: {num} vs {}",
                    got[k]
                );
            }
        };
        check("a", &a, &|v| value(v, &d, &rl), &out.d_logits, 2e-3);
        check("d", &d, &|v| value(&a, v, &rl), &out.d_library, 5e-3);
        check("r", &rl, &|v| value(&a, &d, v), &out.d_region, 2e-3);
        // An unmeasured cell does not move the region factors.
        let (all, first_cell) = (open_of(&x, 3), open_of(&x[..3], 3));
        let half = cross_entropy(&all, &a, &d, Some(&rl), &[1.0, 0.0], 3, true);
        let first = cross_entropy(&first_cell, &a[..3], &d[..1], Some(&rl), &[1.0], 3, true);
        for j in 0..3 {
            assert!((half.d_region[j] - first.d_region[j]).abs() < 1e-6);
        }
    }

    #[test]
    fn logs_are_clamped_at_minus_100() {
        // q = 0 for an open region: 100, and no gradient.
        let out = cross_entropy(
            &open_of(&[1.0], 1),
            &[-200.0],
            &[1.0],
            None,
            &[1.0],
            1,
            true,
        );
        assert!(
            (out.per_cell[0] - 100.0).abs() < 1e-3,
            "{}",
            out.per_cell[0]
        );
        assert_eq!(out.d_logits[0], 0.0);
    }
}
