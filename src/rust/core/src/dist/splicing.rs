//! SPLICEVI's splicing likelihoods as tensor ops (splicevi.md §4.8 DM group normalisation,
//! §5 binomial / beta-binomial / Dirichlet-multinomial, §6 item 5 concentration prior, §8.5
//! PSI*), generic over the backend and differentiable through autodiff. Every lnΓ appears in
//! pairs lnΓ(x + n) − lnΓ(x); `lgamma_diff` evaluates such a pair from `dist::lgamma`'s own
//! formula (shift + Stirling series, elementary ops, so digamma comes for free) written as one
//! difference, which keeps f32 precise when the two lnΓ values are large.
//!
//! Minibatch tensors are dense n x J (cells x junctions): `y` junction counts, `t` the ATSE
//! totals repeated over the ATSE's junctions, `mask` = 1[t > 0]. The junction → ATSE map is an
//! [`AtseGroups`]: group sums are a scatter-add over the ATSE code of every column into n x A,
//! and group values come back to the junctions by a gather.
//!
//! Data invariants the callers guarantee (splicevi.md §2.1, held-out masking §2.2): y > 0 ⇒
//! t > 0; t is constant over an ATSE's junctions; t = Σ_{ATSE} y (t is derived from y, §2.2);
//! masked entries have y = t = 0. Masked entries are multiplied by 0, so their values must be
//! finite: they are under these invariants.
//!
//! f32 note: 1 − 1e-8 rounds to 1 in f32, so the §5 clamp `[1e-8, 1 − 1e-8]` would let
//! 1 − p̄ = 0 (β = 0 in the beta-binomial, log 0 in the binomial, 0 · ∞ = NaN even on masked
//! entries). The upper bound is therefore the largest value below 1 of the tensor's float type
//! when 1 − 1e-8 is not representable (1 − 2⁻²⁴ in f32); it is exactly 1 − 1e-8 in f64.

use crate::dist::stirling_series;
use burn::tensor::{backend::Backend, DType, IndexingUpdateOp, Int, Tensor, TensorData};

/// Lower clamp of p̄ (§5).
const P_EPS: f64 = 1e-8;
/// Odds bounds of the §4.8 clamp p̌ ∈ [1e-6, 1 − 1e-6]: odds = p̌ / (1 − p̌).
const ODDS_MIN: f64 = 1e-6 / (1.0 - 1e-6);
const ODDS_MAX: f64 = (1.0 - 1e-6) / 1e-6;

/// The junction → ATSE map of a minibatch: `index` is n x J and holds the ATSE code a(j) of
/// every column (the same row repeated n times), `n_atse` = A.
///
/// The likelihoods take the first `n` rows of `index` for an n-row minibatch, so one map built
/// for the largest minibatch serves the smaller last one too.
#[derive(Debug, Clone)]
pub struct AtseGroups<B: Backend> {
    pub index: Tensor<B, 2, Int>,
    pub n_atse: usize,
}

impl<B: Backend> AtseGroups<B> {
    /// `junction_atse[j]` = a(j) ∈ 0..n_atse (the ATSE order of §2.2), for `n_cells` rows.
    pub fn new(junction_atse: &[u32], n_atse: usize, n_cells: usize, device: &B::Device) -> Self {
        assert!(
            junction_atse.iter().all(|&a| (a as usize) < n_atse),
            "AtseGroups: an ATSE code is >= n_atse = {n_atse}"
        );
        let j = junction_atse.len();
        let mut codes = Vec::with_capacity(n_cells * j);
        for _ in 0..n_cells {
            codes.extend(junction_atse.iter().map(|&a| a as i64));
        }
        let index = Tensor::from_data(TensorData::new(codes, [n_cells, j]), device);
        Self { index, n_atse }
    }

    /// The index for an `n`-row minibatch (the first n rows).
    fn rows(&self, n: usize) -> Tensor<B, 2, Int> {
        let [rows, _] = self.index.dims();
        assert!(
            n <= rows,
            "AtseGroups built for {rows} cells, minibatch has {n}"
        );
        if n == rows {
            self.index.clone()
        } else {
            self.index.clone().narrow(0, 0, n)
        }
    }

    /// Sum over each ATSE's junctions: n x J -> n x A.
    fn group_sum(&self, values: Tensor<B, 2>) -> Tensor<B, 2> {
        let [n, _] = values.dims();
        Tensor::zeros([n, self.n_atse], &values.device()).scatter(
            1,
            self.rows(n),
            values,
            IndexingUpdateOp::Add,
        )
    }

    /// 1 x A and 1 x J indicators of ATSEs with at least two junctions.
    fn multi_junction(&self, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let first = self.rows(1);
        let [_, j] = first.dims();
        let counts = self.group_sum(Tensor::ones([1, j], device));
        let multi = counts.greater_elem(1.5).float();
        let multi_junction = multi.clone().gather(1, first);
        (multi, multi_junction)
    }
}

/// Upper clamp bound for probabilities: 1 − 1e-8 where the float type resolves it, else the
/// largest value below 1 (see the module note).
fn p_upper(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1.0 - P_EPS,
        DType::F16 => 1.0 - 2f64.powi(-11),
        DType::BF16 => 1.0 - 2f64.powi(-8),
        _ => 1.0 - 2f64.powi(-24),
    }
}

/// p̄ = clamp(p, 1e-8, 1 − 1e-8) (§5).
fn clamp_p<B: Backend>(p: Tensor<B, 2>) -> Tensor<B, 2> {
    let upper = p_upper(p.dtype());
    p.clamp(P_EPS, upper)
}

/// lnΓ(x + n) − lnΓ(x) for x > 0, n ≥ 0 (log of the rising factorial), with `x` and `n`
/// broadcast against each other; exactly 0 where n = 0.
///
/// `dist::lgamma`'s formula (shift by 3, Stirling series at w = z + 3) written as a difference,
/// so that the large terms cancel analytically instead of in f32: with w₀ = x + 3, w₁ = w₀ + n,
/// (w₀ − ½) log1p(n/w₀) + n (ln w₁ − 1) + S(w₁) − S(w₀) − ln Π_{i<3} (x+n+i)/(x+i).
/// Subtracting two lnΓ values of a few hundred loses ~1e-5 absolute in f32 (e.g. lnΓ(110) −
/// lnΓ(100) for the beta-binomial's φ = 100); this form keeps every term of the size of the
/// result. The gradient w.r.t. x (digamma(x+n) − digamma(x)) comes from autodiff.
fn lgamma_diff<B: Backend, const D: usize>(x: Tensor<B, D>, n: Tensor<B, D>) -> Tensor<B, D> {
    let w0 = x.clone() + 3.0;
    let w1 = w0.clone() + n.clone();
    let main = (w0.clone() - 0.5) * (n.clone() / w0.clone()).log1p()
        + n.clone() * (w1.clone().log() - 1.0);
    let xn = x.clone() + n;
    let ratio = (xn.clone() / x.clone())
        * ((xn.clone() + 1.0) / (x.clone() + 1.0))
        * ((xn + 2.0) / (x + 2.0));
    main + stirling_series(w1) - stirling_series(w0) - ratio.log()
}

/// ln n! = lnΓ(n + 1), exactly 0 at n = 0.
fn ln_factorial<B: Backend, const D: usize>(n: Tensor<B, D>) -> Tensor<B, D> {
    lgamma_diff(n.ones_like(), n)
}

/// nbl(n, a) = lnΓ(a) + lnΓ(n+1) − lnΓ(a+n) (§5.3), elementwise; exactly 0 at n = 0.
fn nbl<B: Backend, const D: usize>(n: Tensor<B, D>, a: Tensor<B, D>) -> Tensor<B, D> {
    ln_factorial(n.clone()) - lgamma_diff(a, n)
}

/// DM group normalisation (§4.8): p̌ = clamp(p̂, 1e-6, 1 − 1e-6), ℓ = logit(p̌), and a softmax
/// of ℓ within every ATSE with `+1e-8` inside the log-sum-exp.
///
/// Computed through the odds e^ℓ = p̌ / (1 − p̌) ∈ [1e-6, 1e6], which never overflow, so no group
/// max is needed: p_j = odds_j / (Σ_g odds + 1e-8·max_g odds). The clamp is applied to the odds
/// (the same clamp, by monotonicity), which keeps its bound exact in f32, where 1 − 1e-6 itself
/// is not representable. The 1e-8·max_g odds term is dropped: it is at most 1e-8 of the sum, below
/// half an ulp of any f32 (≥ 2⁻²⁵ ≈ 3e-8 relative), so in f32 adding it rounds back to the same
/// sum and dropping it is exact; in f64 it changes p by at most 1e-8 relative. Consequently each
/// ATSE's p sums to 1 up to rounding (the source: 1 − O(1e-8)).
pub fn dm_group_normalize<B: Backend>(p_hat: Tensor<B, 2>, groups: &AtseGroups<B>) -> Tensor<B, 2> {
    let upper = p_upper(p_hat.dtype());
    let p = p_hat.clamp(0.0, upper);
    let odds = (p.clone() / (p.neg() + 1.0)).clamp(ODDS_MIN, ODDS_MAX);
    let [n, _] = odds.dims();
    let sums = groups.group_sum(odds.clone()).gather(1, groups.rows(n));
    odds / sums
}

/// The per-ATSE and per-junction terms of log DM (§5.3), both masked and with single-junction
/// ATSEs zeroed (their ATSE and junction terms are equal, so the loss drops both exactly):
/// log DM_i = Σ_g atse_ig − Σ_j junction_ij.
fn dm_terms<B: Backend>(
    p: Tensor<B, 2>,
    concentration: Tensor<B, 2>,
    y: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    groups: &AtseGroups<B>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let device = p.device();
    let alpha = clamp_p(p) * concentration;
    let counts = y * mask.clone();
    // A_ig over all junctions of the ATSE, masked or not; n_ig = Σ y·m (= max t, see below).
    let a_g = groups.group_sum(alpha.clone());
    let n_g = groups.group_sum(counts.clone());
    let (multi_atse, multi_junction) = groups.multi_junction(&device);
    let observed = n_g.clone().greater_elem(0.0).float() * multi_atse;
    let atse = nbl(n_g, a_g) * observed;
    let junction = nbl(counts, alpha) * (mask * multi_junction);
    (atse, junction)
}

/// Per-cell Dirichlet-multinomial loss L^s_i = −log DM_i (§5.3), shape [n].
///
/// - `p`: the group-normalised p of [`dm_group_normalize`] (n x J); clamped to [1e-8, 1 − 1e-8]
///   here;
/// - `concentration`: c_j = φ_{a(j)} already gathered per junction (1 x J), or the scalar φ
///   (1 x 1);
/// - `y`, `mask`: junction counts and 1[t > 0] (n x J).
///
/// n_ig is the group sum of y·mask. The source takes max_j t_ij; the two are equal because the
/// caller guarantees t = Σ_{ATSE} y (t is derived from y, §2.2) and y > 0 ⇒ t > 0. A
/// single-junction ATSE contributes exactly 0 (P14.2), and so does every unobserved ATSE.
pub fn dirichlet_multinomial_nll<B: Backend>(
    p: Tensor<B, 2>,
    concentration: Tensor<B, 2>,
    y: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    groups: &AtseGroups<B>,
) -> Tensor<B, 1> {
    let (atse, junction) = dm_terms(p, concentration, y, mask, groups);
    (junction.sum_dim(1) - atse.sum_dim(1)).squeeze_dim(1)
}

/// Per-cell beta-binomial loss (§5.2), shape [n]: −Σ_j m log BB(y | t, p̄φ, (1 − p̄)φ), with
/// `phi` 1 x J (per junction) or 1 x 1. α + β is taken as φ (equal in exact arithmetic); the
/// lnΓ terms are evaluated in pairs as differences (`lgamma_diff`).
pub fn beta_binomial_nll<B: Backend>(
    p: Tensor<B, 2>,
    phi: Tensor<B, 2>,
    y: Tensor<B, 2>,
    t: Tensor<B, 2>,
    mask: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let p = clamp_p(p);
    let alpha = p.clone() * phi.clone();
    let beta = (p.neg() + 1.0) * phi.clone();
    let rest = t.clone() - y.clone();
    // ln C(t, y) = lnΓ(hi+1+lo) − lnΓ(hi+1) − ln lo! with {lo, hi} = {y, t − y}.
    let (lo, hi) = (
        y.clone().min_pair(rest.clone()),
        y.clone().max_pair(rest.clone()),
    );
    let log_binom = lgamma_diff(hi + 1.0, lo.clone()) - ln_factorial(lo);
    // lnΓ(y+α) − lnΓ(α) + lnΓ(t−y+β) − lnΓ(β) − lnΓ(t+α+β) + lnΓ(α+β).
    let log_pmf = log_binom + lgamma_diff(alpha, y) + lgamma_diff(beta, rest) - lgamma_diff(phi, t);
    (log_pmf * mask).sum_dim(1).neg().squeeze_dim(1)
}

/// Per-cell binomial loss without the binomial coefficient (§5.1), shape [n]:
/// −Σ_j m [y log p̄ + (t − y) log(1 − p̄)].
pub fn binomial_nll<B: Backend>(
    p: Tensor<B, 2>,
    y: Tensor<B, 2>,
    t: Tensor<B, 2>,
    mask: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let p = clamp_p(p);
    let log_pmf = y.clone() * p.clone().log() + (t - y) * (p.neg() + 1.0).log();
    (log_pmf * mask).sum_dim(1).neg().squeeze_dim(1)
}

/// Concentration prior R = λ Σθ² / N (§6 item 5) on the raw parameter θ, shape [1].
pub fn concentration_prior<B: Backend>(
    theta: Tensor<B, 1>,
    lambda: f64,
    n_cells: usize,
) -> Tensor<B, 1> {
    (theta.clone() * theta).sum() * (lambda / n_cells as f64)
}

/// PSI* (§8.5): clamp((c p + y) / (c + t + 1e-8), 1e-8, 1 − 1e-8), with `c` 1 x J, 1 x 1 or
/// n x 1, p, y, t n x J.
pub fn dm_posterior_psi<B: Backend>(
    p: Tensor<B, 2>,
    c: Tensor<B, 2>,
    y: Tensor<B, 2>,
    t: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let upper = p_upper(p.dtype());
    ((p * c.clone() + y) / (t + c + 1e-8)).clamp(P_EPS, upper)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::softplus;
    use burn::backend::{Autodiff, Flex};

    type B = Flex;

    fn dev() -> <B as burn::tensor::backend::BackendTypes>::Device {
        Default::default()
    }

    fn mat<BB: Backend>(v: &[f64], rows: usize, cols: usize) -> Tensor<BB, 2> {
        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        Tensor::from_data(TensorData::new(v, [rows, cols]), &Default::default())
    }

    fn vals<const D: usize>(x: Tensor<B, D>) -> Vec<f64> {
        x.into_data()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect()
    }

    /// |got − want| ≤ rel·|want| + abs, element by element.
    fn close(what: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= abs + rel * w.abs(),
                "{what}[{i}]: got {g}, want {w} (rel err {:.2e}; all: {got:?})",
                ((g - w) / w).abs()
            );
        }
    }

    const LN100: f64 = 4.605_170_185_988_091;

    // ---- P1 ----
    #[test]
    fn p1_softplus() {
        let x = [0.0, 4.6, LN100, LN100 - 0.5, LN100 + 0.5];
        let want = [
            std::f64::consts::LN_2, // 0.6931471806
            4.610_001_652_1,
            4.615_120_516_8,
            4.121_522_960_3,
            5.111_217_172_7,
        ];
        close(
            "softplus",
            &vals(softplus(mat::<B>(&x, 1, 5))),
            &want,
            1e-5,
            0.0,
        );
    }

    /// lnΓ(x+n) − lnΓ(x) against f64 values (Python's math.lgamma), from tiny to large x.
    #[test]
    fn lgamma_diff_matches_f64() {
        let cases = [
            (1e-8, 0.0, 0.0),
            (1e-8, 3.0, -17.727_533_548_392_422),
            (0.002, 1.0, -6.214_608_098_422_191),
            (0.5, 10.0, 13.368_260_276_479_063),
            (2.5, 4.0, 5.377_879_189_384_219_5),
            (4.6151, 7.0, 13.953_409_739_229_427),
            (100.0, 10.0, 46.488_090_791_569_45),
            (20.0, 3.0, 9.131_297_164_635_725),
            (1.0, 1000.0, 5_912.128_178_488_163),
            (350.0, 2.0, 11.718_719_377_949_583),
            (1e4, 50.0, 460.639_316_972_534_3),
        ];
        let x: Vec<f64> = cases.iter().map(|c| c.0).collect();
        let n: Vec<f64> = cases.iter().map(|c| c.1).collect();
        let want: Vec<f64> = cases.iter().map(|c| c.2).collect();
        let got = vals(lgamma_diff(mat::<B>(&x, 1, 11), mat::<B>(&n, 1, 11)));
        close("lgamma_diff", &got, &want, 1e-6, 1e-6);
        assert_eq!(got[0], 0.0);
    }

    // ---- P2 ----
    #[test]
    fn p2_nbl() {
        let n = [0.0, 4.0, 10.0, 3.0];
        let a = [2.5, 4.6151, 0.5, 1.0];
        let want = [0.0, -3.996_227_136_2, 1.736_152_296_6, 0.0];
        let got = vals(nbl(mat::<B>(&n, 1, 4), mat::<B>(&a, 1, 4)));
        close("nbl", &got, &want, 1e-5, 1e-7);
        assert_eq!(got[0], 0.0, "nbl(0, a) is exactly 0");
    }

    // ---- P3 ----
    #[test]
    fn p3_dm_log_pmf_one_atse() {
        let cases: [(&[f64], &[f64], f64, f64); 4] = [
            (&[3.0, 0.0, 1.0], &[0.5, 0.3, 0.2], 4.6151, -2.375_327_594_9),
            (&[0.0, 2.0, 0.0], &[0.5, 0.3, 0.2], 4.6151, -2.060_430_161_9),
            (&[10.0, 5.0, 0.0], &[0.6, 0.3, 0.1], 20.0, -3.038_824_404_1),
            (
                &[1.0, 1.0],
                &[0.9, 0.1],
                std::f64::consts::LN_2,
                -2.607_900_382_8,
            ),
        ];
        for (y, p, c, want) in cases {
            let j = y.len();
            let groups = AtseGroups::<B>::new(&vec![0; j], 1, 1, &dev());
            let mask = vec![1.0; j];
            let nll = dirichlet_multinomial_nll(
                mat(p, 1, j),
                mat(&[c], 1, 1),
                mat(y, 1, j),
                mat(&mask, 1, j),
                &groups,
            );
            close("log DM", &vals(nll.neg()), &[want], 1e-5, 0.0);
        }
    }

    // ---- P4 ----
    #[test]
    fn p4_beta_binomial() {
        // One cell per case, one junction each.
        let k = [3.0, 0.0, 7.0, 1.0];
        let n = [4.0, 2.0, 10.0, 1.0];
        let p = [0.5, 0.3, 0.8, 0.999];
        let phi = [4.6151, 4.6151, 100.0, 2.0];
        let want = [
            -1.459_036_863_1,
            -0.639_797_605_7,
            -1.639_450_888_2,
            -0.001_000_500_3,
        ];
        let nll = beta_binomial_nll(
            mat::<B>(&p, 4, 1),
            mat(&phi, 4, 1),
            mat(&k, 4, 1),
            mat(&n, 4, 1),
            mat(&[1.0; 4], 4, 1),
        );
        // The last value, −1.0e-3, is a sum of terms of size ~6 (lnΓ(1.002) − lnΓ(0.002)): f32
        // resolves it to ~1e-7 absolute, not to 1e-5 relative.
        close("log BB", &vals(nll.neg()), &want, 1e-5, 2e-7);
    }

    // ---- P5 ----
    #[test]
    fn p5_binomial() {
        let k = [3.0, 0.0, 7.0];
        let n = [4.0, 2.0, 10.0];
        let p = [0.5, 0.3, 0.8];
        let want = [-2.772_588_722_2, -0.713_349_887_9, -6.390_318_596_5];
        let nll = binomial_nll(
            mat::<B>(&p, 3, 1),
            mat(&k, 3, 1),
            mat(&n, 3, 1),
            mat(&[1.0; 3], 3, 1),
        );
        close("binomial", &vals(nll.neg()), &want, 1e-5, 0.0);
    }

    // ---- P6 ----
    struct Toy {
        p_hat: Tensor<B, 2>,
        y: Tensor<B, 2>,
        t: Tensor<B, 2>,
        mask: Tensor<B, 2>,
        groups: AtseGroups<B>,
    }

    const TOY_ATSE: [u32; 5] = [0, 0, 0, 1, 1];

    fn toy() -> Toy {
        let p_hat = [
            0.70,
            0.20,
            0.40,
            0.90,
            0.50,
            0.10,
            0.60,
            0.30,
            0.999_999_999,
            0.25,
        ];
        let y = [3.0, 0.0, 1.0, 0.0, 2.0, 0.0, 2.0, 0.0, 0.0, 0.0];
        let t = [4.0, 4.0, 4.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0];
        let mask: Vec<f64> = t.iter().map(|&v| if v > 0.0 { 1.0 } else { 0.0 }).collect();
        Toy {
            p_hat: mat(&p_hat, 2, 5),
            y: mat(&y, 2, 5),
            t: mat(&t, 2, 5),
            mask: mat(&mask, 2, 5),
            groups: AtseGroups::new(&TOY_ATSE, 2, 2, &dev()),
        }
    }

    /// c_j = softplus(θ_{a(j)}) as a 1 x J row.
    fn per_junction<BB: Backend>(theta: &[f64], atse: &[u32]) -> Tensor<BB, 2> {
        let phi = softplus(mat::<BB>(theta, 1, theta.len()));
        let idx = AtseGroups::<BB>::new(atse, theta.len(), 1, &Default::default()).index;
        phi.gather(1, idx)
    }

    #[test]
    fn p6_dm_atse_end_to_end() {
        let toy = toy();
        let theta = [LN100, LN100 + 0.3];
        let c = per_junction::<B>(&theta, &TOY_ATSE);
        close(
            "c",
            &vals(c.clone()),
            &[
                4.615_120_516_8,
                4.615_120_516_8,
                4.615_120_516_8,
                4.912_551_062_4,
                4.912_551_062_4,
            ],
            1e-6,
            0.0,
        );
        let p = dm_group_normalize(toy.p_hat, &toy.groups);
        let want_p = [
            0.717_948_712_8,
            0.076_923_076_4,
            0.205_128_203_7,
            0.899_999_991_9,
            0.099_999_999_1,
            0.054_474_707_8,
            0.735_408_554_9,
            0.210_116_730_0,
            0.999_999_656_7,
            3.333_335_5e-7,
        ];
        close("group-normalised p", &vals(p.clone()), &want_p, 1e-5, 0.0);
        let sums = vals(toy.groups.group_sum(p.clone()));
        close("group sums", &sums, &[1.0; 4], 0.0, 2e-7);

        let alpha = clamp_p(p.clone()) * c.clone();
        let want_alpha = [
            3.313_419_834_5,
            0.355_009_268_0,
            0.946_691_381_3,
            4.421_295_916_4,
            0.491_255_101_8,
            0.251_407_341_5,
            3.393_999_110_0,
            0.969_714_031_4,
            4.912_549_375_7,
            // The spec prints 1.6375e-6 (5 digits); this is p₉·c₉ = 3.3333355222e-7 · 4.9125510624.
            1.637_518_096_1e-6,
        ];
        close("alpha", &vals(alpha), &want_alpha, 1e-5, 0.0);

        let (atse, junction) = dm_terms(
            p.clone(),
            c.clone(),
            toy.y.clone(),
            toy.mask.clone(),
            &toy.groups,
        );
        close(
            "ATSE terms",
            &vals(atse),
            &[-3.996_241_008_9, -2.675_723_564_6, -2.561_653_839_1, 0.0],
            1e-5,
            0.0,
        );
        close(
            "Σ m nbl",
            &vals(junction.sum_dim(1)),
            &[-1.479_085_163_2, -2.009_101_495_4],
            1e-5,
            0.0,
        );
        let nll =
            dirichlet_multinomial_nll(p.clone(), c, toy.y.clone(), toy.mask.clone(), &toy.groups);
        close(
            "DM atse",
            &vals(nll),
            &[5.192_879_410_3, 0.552_552_343_7],
            1e-5,
            0.0,
        );

        // DM scalar, c = softplus(4.6).
        let c = softplus(mat::<B>(&[4.6], 1, 1));
        let nll = dirichlet_multinomial_nll(p, c, toy.y, toy.mask, &toy.groups);
        close(
            "DM scalar",
            &vals(nll),
            &[5.161_145_374_3, 0.552_497_400_4],
            1e-5,
            0.0,
        );
    }

    #[test]
    fn p6_binomial_beta_binomial_and_prior() {
        let toy = toy();
        let nll = binomial_nll(
            toy.p_hat.clone(),
            toy.y.clone(),
            toy.t.clone(),
            toy.mask.clone(),
        );
        close(
            "binomial",
            &vals(nll),
            &[11.606_803_991_7, 1.945_722_166_7],
            1e-5,
            0.0,
        );

        let phi = softplus(mat::<B>(&[LN100; 5], 1, 5));
        let nll = beta_binomial_nll(
            toy.p_hat.clone(),
            phi,
            toy.y.clone(),
            toy.t.clone(),
            toy.mask.clone(),
        );
        close(
            "beta-binomial",
            &vals(nll),
            &[8.013_760_474_0, 1.740_384_065_1],
            1e-5,
            0.0,
        );
        // The scalar form broadcasts the same way.
        let phi = softplus(mat::<B>(&[LN100], 1, 1));
        let nll = beta_binomial_nll(toy.p_hat, phi, toy.y, toy.t, toy.mask);
        close(
            "beta-binomial scalar φ",
            &vals(nll),
            &[8.013_760_474_0, 1.740_384_065_1],
            1e-5,
            0.0,
        );

        let theta: Tensor<B, 1> = Tensor::from_data(
            TensorData::new(vec![LN100 as f32, (LN100 + 0.3) as f32], [2]),
            &dev(),
        );
        let r = concentration_prior(theta, 1e-2, 2);
        assert_eq!(r.dims(), [1]);
        close("prior", &vals(r), &[0.226_341_435_0], 1e-5, 0.0);
    }

    /// A sigmoid output of exactly 1 (f32) on a masked or observed entry stays finite.
    #[test]
    fn probabilities_at_one_stay_finite() {
        let p = mat::<B>(&[1.0, 0.0, 1.0, 0.0], 2, 2);
        let y = mat::<B>(&[2.0, 0.0, 0.0, 0.0], 2, 2);
        let t = mat::<B>(&[2.0, 2.0, 0.0, 0.0], 2, 2);
        let m = mat::<B>(&[1.0, 1.0, 0.0, 0.0], 2, 2);
        let phi = mat::<B>(&[3.0], 1, 1);
        let groups = AtseGroups::<B>::new(&[0, 0], 1, 2, &dev());
        let q = dm_group_normalize(p.clone(), &groups);
        let mut all = vals(q.clone());
        all.extend(vals(binomial_nll(
            p.clone(),
            y.clone(),
            t.clone(),
            m.clone(),
        )));
        all.extend(vals(beta_binomial_nll(
            p.clone(),
            phi.clone(),
            y.clone(),
            t.clone(),
            m.clone(),
        )));
        all.extend(vals(dirichlet_multinomial_nll(
            q,
            phi.clone(),
            y.clone(),
            m.clone(),
            &groups,
        )));
        all.extend(vals(dm_posterior_psi(p, phi, y, t)));
        assert!(all.iter().all(|v| v.is_finite()), "{all:?}");
    }

    // ---- P7 ----
    #[test]
    #[allow(clippy::approx_constant)] // the spec's c = 0.6931 (4 digits), not ln 2
    fn p7_psi_star() {
        let c = [4.6151, 4.6151, 20.0, 0.6931];
        let p = [0.3, 0.3, 0.9, 0.5];
        let y = [2.0, 0.0, 0.0, 5.0];
        let t = [4.0, 0.0, 10.0, 5.0];
        let want = [
            0.392_860_210_1,
            0.299_999_999_3,
            0.599_999_999_8,
            0.939_128_065_7,
        ];
        let psi = dm_posterior_psi(
            mat::<B>(&p, 4, 1),
            mat(&c, 4, 1),
            mat(&y, 4, 1),
            mat(&t, 4, 1),
        );
        close("PSI*", &vals(psi), &want, 1e-5, 0.0);
        // 1 x J concentration broadcasts over cells.
        let psi = dm_posterior_psi(
            mat::<B>(&p, 1, 4),
            mat(&c, 1, 4),
            mat(&y, 1, 4),
            mat(&t, 1, 4),
        );
        close("PSI* (1 x J c)", &vals(psi), &want, 1e-5, 0.0);
    }

    /// A small deterministic generator for the structural tests.
    fn lcg(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((*state >> 11) as f64) / (1u64 << 53) as f64
    }

    /// The exact §4.8 formula in f64 on the host (clamp, logit, max-shifted log-sum-exp + 1e-8).
    fn reference_group_normalize(p_hat: &[f32], atse: &[u32], n_atse: usize) -> Vec<f64> {
        let j = atse.len();
        let mut out = vec![0.0; p_hat.len()];
        for (row, o) in p_hat.chunks(j).zip(out.chunks_mut(j)) {
            let l: Vec<f64> = row
                .iter()
                .map(|&v| {
                    let p = (v as f64).clamp(1e-6, 1.0 - 1e-6);
                    p.ln() - (1.0 - p).ln()
                })
                .collect();
            for g in 0..n_atse {
                let members: Vec<usize> = (0..j).filter(|&k| atse[k] as usize == g).collect();
                let m = members
                    .iter()
                    .map(|&k| l[k])
                    .fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = members.iter().map(|&k| (l[k] - m).exp()).sum();
                let lse = (s + 1e-8).ln() + m;
                for &k in &members {
                    o[k] = (l[k] - lse).exp();
                }
            }
        }
        out
    }

    /// Random ATSE map with sizes 1..=4 (so singletons occur), shuffled junction order.
    fn random_groups(state: &mut u64, n_atse: usize) -> Vec<u32> {
        let mut atse = Vec::new();
        for g in 0..n_atse {
            let size = 1 + (lcg(state) * 4.0) as usize;
            atse.extend(std::iter::repeat_n(g as u32, size));
        }
        for i in (1..atse.len()).rev() {
            let k = (lcg(state) * (i + 1) as f64) as usize;
            atse.swap(i, k);
        }
        atse
    }

    /// Dropping the 1e-8·max term matches the exact formula (including extreme p̂) and every
    /// ATSE's p sums to 1 − O(1e-8) (P14.1).
    #[test]
    fn p14_1_group_normalisation_matches_exact_formula() {
        let mut s = 7u64;
        let n_atse = 40;
        let atse = random_groups(&mut s, n_atse);
        let (n, j) = (6, atse.len());
        let p_hat: Vec<f32> = (0..n * j)
            .map(|_| {
                let u = lcg(&mut s);
                match (lcg(&mut s) * 10.0) as u32 {
                    0 => 1.0,
                    1 => 0.0,
                    2 => (1.0 - u * 1e-6) as f32,
                    3 => (u * 1e-6) as f32,
                    _ => u as f32,
                }
            })
            .collect();
        let groups = AtseGroups::<B>::new(&atse, n_atse, n, &dev());
        let p_in = Tensor::<B, 2>::from_data(TensorData::new(p_hat.clone(), [n, j]), &dev());
        let p = dm_group_normalize(p_in, &groups);
        let want = reference_group_normalize(&p_hat, &atse, n_atse);
        close("p vs exact f64", &vals(p.clone()), &want, 1e-5, 0.0);
        for v in vals(groups.group_sum(p)) {
            assert!((v - 1.0).abs() < 5e-7, "group sum {v}");
        }
    }

    /// A single-junction ATSE gives exactly 0 DM loss (P14.2), alone or next to other ATSEs.
    #[test]
    fn p14_2_single_junction_atse_is_exactly_zero() {
        // Cell 0 observes only the singleton (junction 2); cell 1 observes the singleton and
        // the two-junction ATSE; cell 2 observes only the other ATSE.
        let atse = [0u32, 0, 1];
        let groups = AtseGroups::<B>::new(&atse, 2, 3, &dev());
        let p_hat = mat::<B>(&[0.3, 0.6, 0.8, 0.2, 0.9, 0.35, 0.5, 0.5, 0.1], 3, 3);
        let y = mat::<B>(&[0.0, 0.0, 7.0, 1.0, 3.0, 4.0, 2.0, 1.0, 0.0], 3, 3);
        let t = [0.0, 0.0, 7.0, 4.0, 4.0, 4.0, 3.0, 3.0, 0.0];
        let m: Vec<f64> = t.iter().map(|&v| if v > 0.0 { 1.0 } else { 0.0 }).collect();
        let m = mat::<B>(&m, 3, 3);
        let c = mat::<B>(&[3.7, 3.7, 2.2], 1, 3);
        let p = dm_group_normalize(p_hat, &groups);
        let nll = vals(dirichlet_multinomial_nll(
            p.clone(),
            c.clone(),
            y,
            m,
            &groups,
        ));
        assert_eq!(nll[0], 0.0, "singleton alone");
        // Cell 1 again without the singleton's reads: the same loss, bit for bit.
        let y2 = mat::<B>(&[0.0, 0.0, 7.0, 1.0, 3.0, 0.0, 2.0, 1.0, 0.0], 3, 3);
        let m2 = mat::<B>(&[0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0], 3, 3);
        let without = vals(dirichlet_multinomial_nll(p, c, y2, m2, &groups));
        assert_eq!(
            nll[1], without[1],
            "the singleton adds exactly 0 next to another ATSE"
        );
        assert!(nll[1] > 0.0);
        assert!(nll[2] > 0.0);
    }

    /// Loss gradients w.r.t. the decoder logits (through the sigmoid, and for DM the group
    /// normalisation) and w.r.t. the raw concentration θ (through softplus), by autodiff
    /// against central finite differences; for DM, beta-binomial and binomial.
    #[test]
    fn gradients_match_finite_differences() {
        type AD = Autodiff<Flex>;
        let atse = [0u32, 1, 0, 2, 1, 0, 2];
        let (n, j, a) = (3, atse.len(), 3);
        let mut s = 11u64;
        let logits: Vec<f64> = (0..n * j).map(|_| 4.0 * lcg(&mut s) - 2.0).collect();
        let theta = [1.2, 0.4, 2.0];
        // y consistent with t: ATSE totals, some unobserved.
        let y: Vec<f64> = (0..n * j)
            .map(|i| {
                if i % 5 == 3 {
                    0.0
                } else {
                    (lcg(&mut s) * 6.0).floor()
                }
            })
            .collect();
        let mut t = vec![0.0; n * j];
        for i in 0..n {
            for g in 0..a as u32 {
                let tot: f64 = (0..j).filter(|&k| atse[k] == g).map(|k| y[i * j + k]).sum();
                for k in (0..j).filter(|&k| atse[k] == g) {
                    t[i * j + k] = tot;
                }
            }
        }
        let m: Vec<f64> = t.iter().map(|&v| if v > 0.0 { 1.0 } else { 0.0 }).collect();
        let data = [y, t, m];

        #[derive(Clone, Copy, Debug, PartialEq)]
        enum Kind {
            Dm,
            BetaBinomial,
            Binomial,
        }
        fn loss<BB: Backend>(
            kind: Kind,
            logits: Tensor<BB, 2>,
            theta: Tensor<BB, 2>,
            [y, t, m]: &[Vec<f64>; 3],
            atse: &[u32],
        ) -> Tensor<BB, 1> {
            let j = atse.len();
            let n = y.len() / j;
            let groups = AtseGroups::<BB>::new(atse, 3, n, &Default::default());
            let c = softplus(theta).gather(1, groups.rows(1));
            let p_hat = burn::tensor::activation::sigmoid(logits);
            let (y, t, m) = (mat(y, n, j), mat(t, n, j), mat(m, n, j));
            match kind {
                Kind::Dm => {
                    let p = dm_group_normalize(p_hat, &groups);
                    dirichlet_multinomial_nll(p, c, y, m, &groups).sum()
                }
                Kind::BetaBinomial => beta_binomial_nll(p_hat, c, y, t, m).sum(),
                Kind::Binomial => binomial_nll(p_hat, y, t, m).sum() + c.sum() * 0.0,
            }
        }

        for kind in [Kind::Dm, Kind::BetaBinomial, Kind::Binomial] {
            let lt = mat::<AD>(&logits, n, j).require_grad();
            let tt = mat::<AD>(&theta, 1, a).require_grad();
            let grads = loss(kind, lt.clone(), tt.clone(), &data, &atse).backward();
            let g_logits = vals(lt.grad(&grads).unwrap());
            let g_theta = vals(tt.grad(&grads).unwrap());

            let h = 1e-2;
            let f = |lg: &[f64], th: &[f64]| -> f64 {
                vals(loss::<B>(kind, mat(lg, n, j), mat(th, 1, a), &data, &atse))[0]
            };
            let mut fd_logits = Vec::new();
            for i in 0..n * j {
                let (mut up, mut down) = (logits.clone(), logits.clone());
                up[i] += h;
                down[i] -= h;
                fd_logits.push((f(&up, &theta) - f(&down, &theta)) / (2.0 * h));
            }
            let mut fd_theta = Vec::new();
            for g in 0..a {
                let (mut up, mut down) = (theta.to_vec(), theta.to_vec());
                up[g] += h;
                down[g] -= h;
                fd_theta.push((f(&logits, &up) - f(&logits, &down)) / (2.0 * h));
            }
            assert!(g_logits.iter().any(|v| v.abs() > 0.1), "{kind:?}");
            close(
                &format!("{kind:?} d/d logits"),
                &g_logits,
                &fd_logits,
                1e-2,
                2e-4,
            );
            close(
                &format!("{kind:?} d/d theta"),
                &g_theta,
                &fd_theta,
                1e-2,
                2e-4,
            );
        }
    }
}
