//! PCA initialisation of the partial encoder's feature embedding E (splicevi.md §4.9): the top
//! right singular vectors of the uncentred cells x junctions `junc_ratio` matrix, as sklearn's
//! `TruncatedSVD(algorithm="randomized", n_iter=5)` computes them.
//!
//! Randomized range finder (Halko, Martinsson & Tropp 2011, Alg. 4.4) on the row space:
//! Q ← orth(Ω) for a Gaussian Ω (J x l, l = k + 10 oversamples, as sklearn), then six
//! alternating half-steps Q_U ← orth(X Q), Q ← orth(Xᵀ Q_U), so that span Q = (XᵀX)⁶ Ω, the
//! subspace whose projection sklearn's 5 power iterations end in (its B = Q_Uᵀ X has row space
//! Xᵀ(XXᵀ)⁵XΩ). Every orthonormalisation is a Gram–Schmidt QR with re-orthogonalisation (CGS2,
//! "twice is enough"). Then the exact SVD of the small problem: C = X Q (n x l) = Q_C R, the
//! one-sided Jacobi SVD of R (l x l) gives R W = U Σ, and V = Q W (Rayleigh–Ritz; V is
//! orthonormal by construction, no division by σ).
//!
//! Conventions:
//! - columns in decreasing singular value;
//! - sign: the largest-|entry| of every column is positive (the convention of sklearn's
//!   `svd_flip(..., u_based_decision=False)`); upstream is unseeded, so parity with it is up to
//!   sign anyway;
//! - deterministic for a seed (fixed reduction orders; rayon only splits independent work);
//! - k > rank(X) (e.g. more components than cells): the columns beyond the rank are random
//!   orthonormal directions of the null space of X (singular value 0), so the result always has
//!   k orthonormal columns;
//! - k > n_cols is an error (k orthonormal vectors do not exist in R^J).
//!
//! Arithmetic is f64 on the host; the sparse products are parallel over output rows.

use rand::{rngs::StdRng, RngExt, SeedableRng};
use rayon::prelude::*;

use crate::error::{invalid_arg, Result};

/// Oversampling of the range finder (sklearn's `n_oversamples`).
const OVERSAMPLES: usize = 10;
/// Multiplications by XᵀX of the start block (sklearn's 5 power iterations, see module note).
const HALF_STEP_PAIRS: usize = 6;
/// A Gram–Schmidt column whose residual is below this fraction of its norm is dependent.
const DEPENDENT: f64 = 1e-10;
/// Row chunk of the parallel loops.
const CHUNK: usize = 2048;
/// Columns of the dense factor per pass of a sparse product.
const BLOCK: usize = 16;

/// A CSR matrix borrowed from the caller, or its transpose built here.
struct Csr<'a> {
    rows: usize,
    cols: usize,
    indptr: std::borrow::Cow<'a, [usize]>,
    indices: std::borrow::Cow<'a, [u32]>,
    values: std::borrow::Cow<'a, [f32]>,
}

impl Csr<'_> {
    /// Xᵀ as CSR (entries of each row in increasing column order).
    fn transpose(&self) -> Csr<'static> {
        let mut counts = vec![0usize; self.cols + 1];
        for &c in self.indices.iter() {
            counts[c as usize + 1] += 1;
        }
        for j in 0..self.cols {
            counts[j + 1] += counts[j];
        }
        let indptr = counts.clone();
        let mut next = counts;
        let nnz = self.indices.len();
        let (mut indices, mut values) = (vec![0u32; nnz], vec![0f32; nnz]);
        for i in 0..self.rows {
            for e in self.indptr[i]..self.indptr[i + 1] {
                let c = self.indices[e] as usize;
                indices[next[c]] = i as u32;
                values[next[c]] = self.values[e];
                next[c] += 1;
            }
        }
        Csr {
            rows: self.cols,
            cols: self.rows,
            indptr: indptr.into(),
            indices: indices.into(),
            values: values.into(),
        }
    }

    /// self · D for D column-major (cols x l); the result is column-major (rows x l).
    ///
    /// Memory-bound (every nonzero reads a random row of D), so D is taken `BLOCK` columns at
    /// a time, as a row-major copy small enough to stay in cache.
    fn times(&self, d: &[f64], l: usize) -> Vec<f64> {
        let mut out = vec![0.0; self.rows * l];
        for c0 in (0..l).step_by(BLOCK) {
            let b = BLOCK.min(l - c0);
            let block = to_row_major(&d[c0 * self.cols..(c0 + b) * self.cols], self.cols, b);
            let mut out_rows = vec![0.0; self.rows * b];
            out_rows
                .par_chunks_mut(CHUNK * b)
                .enumerate()
                .for_each(|(chunk, part)| {
                    for (r, o) in part.chunks_mut(b).enumerate() {
                        let i = chunk * CHUNK + r;
                        for e in self.indptr[i]..self.indptr[i + 1] {
                            let v = self.values[e] as f64;
                            let src = &block[self.indices[e] as usize * b..][..b];
                            for (x, y) in o.iter_mut().zip(src) {
                                *x += v * y;
                            }
                        }
                    }
                });
            let cols = to_col_major(&out_rows, self.rows, b);
            out[c0 * self.rows..(c0 + b) * self.rows].copy_from_slice(&cols);
        }
        out
    }
}

fn to_row_major(col_major: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * cols];
    for c in 0..cols {
        for r in 0..rows {
            out[r * cols + c] = col_major[c * rows + r];
        }
    }
    out
}

fn to_col_major(row_major: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = row_major[r * cols + c];
        }
    }
    out
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box–Muller, cosine branch.
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Removes from `v` its components along the first `j` columns of `q` (column-major, `rows`
/// long), returning the coefficients: one classical Gram–Schmidt pass. The coefficients are
/// computed in parallel (each dot product serially, so the result is deterministic).
fn project_out(q: &[f64], rows: usize, j: usize, v: &mut [f64]) -> Vec<f64> {
    let coef: Vec<f64> = (0..j)
        .into_par_iter()
        .map(|i| dot(&q[i * rows..(i + 1) * rows], v))
        .collect();
    v.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, part)| {
            let start = chunk * CHUNK;
            for (i, &c) in coef.iter().enumerate() {
                let qi = &q[i * rows + start..][..part.len()];
                for (x, y) in part.iter_mut().zip(qi) {
                    *x -= c * y;
                }
            }
        });
    coef
}

/// Thin QR of the column-major rows x l matrix `a` in place (a ← Q) by CGS2, returning R
/// (l x l, column-major). A dependent column (residual below `DEPENDENT` of its norm, or a zero
/// column) is replaced by a random unit vector orthogonal to the previous ones, with R's diagonal
/// entry 0; when no such vector exists (column index ≥ rows) the column is set to 0.
fn qr_in_place(a: &mut [f64], rows: usize, l: usize, rng: &mut StdRng) -> Vec<f64> {
    let mut r = vec![0.0; l * l];
    for j in 0..l {
        let (done, rest) = a.split_at_mut(j * rows);
        let v = &mut rest[..rows];
        let norm0 = dot(v, v).sqrt();
        for _ in 0..2 {
            let coef = project_out(done, rows, j, v);
            for (i, c) in coef.into_iter().enumerate() {
                r[j * l + i] += c;
            }
        }
        let norm = dot(v, v).sqrt();
        if norm > DEPENDENT * norm0 && norm > 0.0 {
            r[j * l + j] = norm;
            v.iter_mut().for_each(|x| *x /= norm);
            continue;
        }
        // Dependent: a random direction orthogonal to the first j columns.
        v.iter_mut().for_each(|x| *x = 0.0);
        if j >= rows {
            continue;
        }
        for _attempt in 0..8 {
            v.iter_mut().for_each(|x| *x = normal(rng));
            let norm0 = dot(v, v).sqrt();
            project_out(done, rows, j, v);
            project_out(done, rows, j, v);
            let norm = dot(v, v).sqrt();
            if norm > 1e-6 * norm0 {
                v.iter_mut().for_each(|x| *x /= norm);
                break;
            }
            v.iter_mut().for_each(|x| *x = 0.0);
        }
    }
    r
}

/// One-sided (Hestenes) Jacobi SVD of the square column-major l x l matrix `a`: rotates column
/// pairs until all are orthogonal, accumulating the rotations in W. Returns (σ, W), σ_i the
/// final column norms and W column-major, unsorted.
fn jacobi_svd(mut a: Vec<f64>, l: usize) -> (Vec<f64>, Vec<f64>) {
    let mut w = vec![0.0; l * l];
    for i in 0..l {
        w[i * l + i] = 1.0;
    }
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..l {
            for q in p + 1..l {
                let (cp, cq) = (&a[p * l..(p + 1) * l], &a[q * l..(q + 1) * l]);
                let alpha = dot(cp, cp);
                let beta = dot(cq, cq);
                let gamma = dot(cp, cq);
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for m in [&mut a, &mut w] {
                    for r in 0..l {
                        let (x, y) = (m[p * l + r], m[q * l + r]);
                        m[p * l + r] = c * x - s * y;
                        m[q * l + r] = s * x + c * y;
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let sigma = (0..l)
        .map(|i| dot(&a[i * l..(i + 1) * l], &a[i * l..(i + 1) * l]).sqrt())
        .collect();
    (sigma, w)
}

/// Top-`k` right singular vectors (n_cols x k, row-major) of the uncentred sparse matrix given
/// as CSR (`n_rows` cells x `n_cols` junctions, `values` the junction ratios), by the randomized
/// SVD of the module note with the given `seed`. Errors when k > n_cols or the CSR arrays are
/// inconsistent.
pub fn top_right_singular_vectors(
    n_rows: usize,
    n_cols: usize,
    indptr: &[usize],
    indices: &[u32],
    values: &[f32],
    k: usize,
    seed: u64,
) -> Result<Vec<f32>> {
    if indptr.len() != n_rows + 1
        || indptr[0] != 0
        || indptr.windows(2).any(|w| w[0] > w[1])
        || indptr[n_rows] != indices.len()
        || indices.len() != values.len()
        || indices.iter().any(|&c| c as usize >= n_cols)
    {
        return Err(invalid_arg(
            "junction ratios",
            "the CSR arrays (indptr, indices, values) are inconsistent with the matrix shape",
        ));
    }
    if k > n_cols {
        return Err(invalid_arg(
            "code_dim",
            format!("the PCA initialisation needs at most as many components as junctions ({n_cols}), got {k}"),
        ));
    }
    if k == 0 {
        return Ok(Vec::new());
    }
    let x = Csr {
        rows: n_rows,
        cols: n_cols,
        indptr: indptr.into(),
        indices: indices.into(),
        values: values.into(),
    };
    let xt = x.transpose();
    let l = (k + OVERSAMPLES).min(n_cols);
    let mut rng = StdRng::seed_from_u64(seed);

    let mut q: Vec<f64> = (0..n_cols * l).map(|_| normal(&mut rng)).collect();
    qr_in_place(&mut q, n_cols, l, &mut rng);
    for _ in 0..HALF_STEP_PAIRS {
        let mut qu = x.times(&q, l);
        qr_in_place(&mut qu, n_rows, l, &mut rng);
        q = xt.times(&qu, l);
        qr_in_place(&mut q, n_cols, l, &mut rng);
    }
    // Rayleigh–Ritz: X Q = Q_C R, R W = U Σ, V = Q W.
    let mut c = x.times(&q, l);
    let r = qr_in_place(&mut c, n_rows, l, &mut rng);
    let (sigma, w) = jacobi_svd(r, l);
    let mut order: Vec<usize> = (0..l).collect();
    order.sort_by(|&a, &b| sigma[b].total_cmp(&sigma[a]).then(a.cmp(&b)));

    let mut out = vec![0f32; n_cols * k];
    let mut column = vec![0.0f64; n_cols];
    for (slot, &o) in order.iter().take(k).enumerate() {
        let wo = &w[o * l..(o + 1) * l];
        column
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(chunk, part)| {
                let start = chunk * CHUNK;
                part.iter_mut().for_each(|v| *v = 0.0);
                for (i, &coef) in wo.iter().enumerate() {
                    let qi = &q[i * n_cols + start..][..part.len()];
                    for (v, y) in part.iter_mut().zip(qi) {
                        *v += coef * y;
                    }
                }
            });
        let norm = dot(&column, &column).sqrt();
        let largest = column
            .iter()
            .copied()
            .fold(0.0f64, |m, v| if v.abs() > m.abs() { v } else { m });
        let scale = if largest < 0.0 { -1.0 } else { 1.0 } / if norm > 0.0 { norm } else { 1.0 };
        for (row, &v) in column.iter().enumerate() {
            out[row * k + slot] = (v * scale) as f32;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator for the test matrices.
    fn lcg(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((*state >> 11) as f64) / (1u64 << 53) as f64
    }

    struct Sparse {
        n: usize,
        j: usize,
        indptr: Vec<usize>,
        indices: Vec<u32>,
        values: Vec<f32>,
    }

    impl Sparse {
        fn from_dense(d: &[f64], n: usize, j: usize) -> Self {
            let (mut indptr, mut indices, mut values) = (vec![0], Vec::new(), Vec::new());
            for i in 0..n {
                for c in 0..j {
                    let v = d[i * j + c] as f32;
                    if v != 0.0 {
                        indices.push(c as u32);
                        values.push(v);
                    }
                }
                indptr.push(indices.len());
            }
            Self {
                n,
                j,
                indptr,
                indices,
                values,
            }
        }

        fn dense(&self) -> Vec<f64> {
            let mut d = vec![0.0; self.n * self.j];
            for i in 0..self.n {
                for e in self.indptr[i]..self.indptr[i + 1] {
                    d[i * self.j + self.indices[e] as usize] = self.values[e] as f64;
                }
            }
            d
        }

        fn svd(&self, k: usize, seed: u64) -> Vec<f32> {
            top_right_singular_vectors(
                self.n,
                self.j,
                &self.indptr,
                &self.indices,
                &self.values,
                k,
                seed,
            )
            .unwrap()
        }
    }

    /// Sparse rows spanned by `rank` sparse profiles with distinct weights, plus optional sparse
    /// noise: junction-ratio-like values in [0, 1].
    fn low_rank(n: usize, j: usize, rank: usize, noise: f64, seed: u64) -> Sparse {
        let mut s = seed;
        let profiles: Vec<Vec<f64>> = (0..rank)
            .map(|_| {
                (0..j)
                    .map(|_| if lcg(&mut s) < 0.3 { lcg(&mut s) } else { 0.0 })
                    .collect()
            })
            .collect();
        let mut d = vec![0.0; n * j];
        for i in 0..n {
            for (r, prof) in profiles.iter().enumerate() {
                // Decaying, distinct scales; a third of the cells skip each profile.
                let w = if lcg(&mut s) < 0.33 {
                    0.0
                } else {
                    (1.0 + lcg(&mut s)) / (1.0 + r as f64).powf(1.5)
                };
                for c in 0..j {
                    d[i * j + c] += w * prof[c];
                }
            }
            for c in 0..j {
                if noise > 0.0 && lcg(&mut s) < 0.05 {
                    d[i * j + c] += noise * lcg(&mut s);
                }
            }
        }
        Sparse::from_dense(&d, n, j)
    }

    /// Exact right singular vectors and values of a dense n x j matrix: cyclic two-sided Jacobi
    /// on XᵀX (an algorithm independent of the one under test). Columns sorted by σ.
    fn exact(d: &[f64], n: usize, j: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
        let mut a = vec![0.0; j * j];
        for p in 0..j {
            for q in 0..j {
                a[p * j + q] = (0..n).map(|i| d[i * j + p] * d[i * j + q]).sum();
            }
        }
        let mut v = vec![0.0; j * j];
        for i in 0..j {
            v[i * j + i] = 1.0;
        }
        for _ in 0..100 {
            let off: f64 = (0..j)
                .flat_map(|p| (0..j).filter(move |&q| q != p).map(move |q| (p, q)))
                .map(|(p, q)| a[p * j + q].powi(2))
                .sum();
            if off < 1e-26 {
                break;
            }
            for p in 0..j {
                for q in p + 1..j {
                    if a[p * j + q] == 0.0 {
                        continue;
                    }
                    let theta = (a[q * j + q] - a[p * j + p]) / (2.0 * a[p * j + q]);
                    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                    let c = 1.0 / (t * t + 1.0).sqrt();
                    let s = t * c;
                    for r in 0..j {
                        let (x, y) = (a[r * j + p], a[r * j + q]);
                        a[r * j + p] = c * x - s * y;
                        a[r * j + q] = s * x + c * y;
                    }
                    for r in 0..j {
                        let (x, y) = (a[p * j + r], a[q * j + r]);
                        a[p * j + r] = c * x - s * y;
                        a[q * j + r] = s * x + c * y;
                    }
                    for r in 0..j {
                        let (x, y) = (v[r * j + p], v[r * j + q]);
                        v[r * j + p] = c * x - s * y;
                        v[r * j + q] = s * x + c * y;
                    }
                }
            }
        }
        let mut order: Vec<usize> = (0..j).collect();
        order.sort_by(|&x, &y| a[y * j + y].total_cmp(&a[x * j + x]));
        let sigma = order
            .iter()
            .map(|&o| a[o * j + o].max(0.0).sqrt())
            .collect();
        let vecs = order
            .iter()
            .map(|&o| (0..j).map(|r| v[r * j + o]).collect())
            .collect();
        (sigma, vecs)
    }

    fn column(v: &[f32], j: usize, k: usize, c: usize) -> Vec<f64> {
        (0..j).map(|r| v[r * k + c] as f64).collect()
    }

    fn assert_orthonormal(v: &[f32], j: usize, k: usize, tol: f64) {
        for a in 0..k {
            for b in 0..k {
                let d = dot(&column(v, j, k, a), &column(v, j, k, b));
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((d - want).abs() < tol, "VᵀV[{a},{b}] = {d}");
            }
        }
    }

    /// Per component up to sign (distinct σ): |cos| = 1 within 1e-4; the largest entry is
    /// positive.
    fn assert_matches_exact(m: &Sparse, v: &[f32], k: usize) {
        let (sigma, exact_v) = exact(&m.dense(), m.n, m.j);
        for c in 0..k {
            assert!(
                sigma[c] > sigma[c + 1] * 1.05,
                "test matrix needs distinct σ: {:?}",
                &sigma[..k + 1]
            );
            let got = column(v, m.j, k, c);
            let cos = dot(&got, &exact_v[c]).abs();
            assert!((1.0 - cos).abs() < 1e-4, "component {c}: |cos| = {cos}");
            let largest = got
                .iter()
                .fold(0.0f64, |a, &b| if b.abs() > a.abs() { b } else { a });
            assert!(largest > 0.0, "sign convention");
        }
        assert_orthonormal(v, m.j, k, 1e-5);
    }

    #[test]
    fn exact_on_low_rank_sparse() {
        let m = low_rank(300, 80, 6, 0.0, 3);
        let nnz = m.indices.len() as f64 / (300.0 * 80.0);
        assert!(nnz < 0.9, "sparse: {nnz}");
        let v = m.svd(4, 1);
        assert_matches_exact(&m, &v, 4);
    }

    #[test]
    fn exact_on_noisy_full_rank_sparse() {
        let m = low_rank(400, 60, 5, 0.3, 5);
        let v = m.svd(5, 2);
        assert_matches_exact(&m, &v, 5);
    }

    /// Seeds change nothing but (at most) the sign convention's ties: with distinct σ the
    /// components agree up to sign, i.e. exactly after the sign convention.
    #[test]
    fn seed_invariance_and_determinism() {
        let m = low_rank(250, 70, 5, 0.2, 9);
        let a = m.svd(4, 10);
        let b = m.svd(4, 11);
        assert_eq!(a, m.svd(4, 10), "deterministic for a seed");
        for c in 0..4 {
            let cos = dot(&column(&a, 70, 4, c), &column(&b, 70, 4, c));
            assert!((1.0 - cos).abs() < 1e-4, "component {c}: cos = {cos}");
        }
    }

    /// More components than the rank (here more than the cells): k orthonormal columns, the
    /// first ones the exact singular vectors, the rest in the null space of X.
    #[test]
    fn pads_beyond_the_rank_with_null_space_directions() {
        let m = low_rank(3, 20, 3, 0.0, 4);
        let k = 8;
        let v = m.svd(k, 0);
        assert_orthonormal(&v, 20, k, 1e-5);
        let (sigma, exact_v) = exact(&m.dense(), m.n, m.j);
        let rank = sigma.iter().filter(|&&s| s > 1e-6 * sigma[0]).count();
        assert!(rank <= 3);
        for (c, exact_c) in exact_v.iter().enumerate().take(rank) {
            let cos = dot(&column(&v, 20, k, c), exact_c).abs();
            assert!((1.0 - cos).abs() < 1e-4, "component {c}: |cos| = {cos}");
        }
        let d = m.dense();
        for c in rank..k {
            let col = column(&v, 20, k, c);
            for i in 0..m.n {
                let xv: f64 = (0..20).map(|r| d[i * 20 + r] * col[r]).sum();
                assert!(
                    xv.abs() < 1e-5,
                    "component {c} is not in the null space: {xv}"
                );
            }
        }
        // All of R^J, and an empty matrix.
        assert_orthonormal(&m.svd(20, 0), 20, 20, 1e-5);
        let empty = top_right_singular_vectors(5, 6, &[0; 6], &[], &[], 3, 0).unwrap();
        assert_orthonormal(&empty, 6, 3, 1e-5);
    }

    #[test]
    fn rejects_too_many_components_and_bad_csr() {
        let m = low_rank(10, 6, 2, 0.0, 1);
        assert!(top_right_singular_vectors(10, 6, &m.indptr, &m.indices, &m.values, 7, 0).is_err());
        assert!(
            top_right_singular_vectors(10, 6, &m.indptr[..10], &m.indices, &m.values, 2, 0)
                .is_err()
        );
        assert!(
            top_right_singular_vectors(10, 6, &m.indptr, &m.indices, &m.values, 0, 0)
                .unwrap()
                .is_empty()
        );
    }
}
