//! Fused CPU evaluation of the count log-likelihoods and of their partial derivatives in
//! one pass over the minibatch. On the CPU backend the composed tensor version (dist.rs)
//! spends most of a training step in ~40 elementwise passes and their backward passes; here
//! each element is visited once, zero counts skip the lgamma/digamma work, and the
//! transcendental functions are inlined. Same formulas as dist.rs (scvi.md §5); the tests
//! check values against the parity vectors and gradients against autodiff of dist.rs.

use rayon::prelude::*;

use crate::dist::EPS;

const EPS32: f32 = EPS as f32;
const HALF_LN_2PI: f32 = 0.918_938_5;

/// Natural log, Cephes-style minimax polynomial (about 1 ulp). Branch-free so that loops
/// over it vectorise; valid for positive normal finite inputs (callers guarantee that and
/// check finiteness separately).
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let e = ((bits >> 23) as i32) - 126;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000); // [0.5, 1)
    let small = m < std::f32::consts::FRAC_1_SQRT_2;
    let e = e - small as i32;
    let m = if small { m + m - 1.0 } else { m - 1.0 };
    let z = m * m;
    let mut y = 7.037_683_6e-2_f32;
    y = y * m - 1.151_461e-1;
    y = y * m + 1.167_699_9e-1;
    y = y * m - 1.242_014_1e-1;
    y = y * m + 1.424_932_3e-1;
    y = y * m - 1.666_805_8e-1;
    y = y * m + 2.000_071_5e-1;
    y = y * m - 2.499_999_4e-1;
    y = y * m + 3.333_333e-1;
    y *= m * z;
    let ef = e as f32;
    y += -2.121_944_4e-4 * ef;
    y += -0.5 * z;
    m + y + 0.693_359_4 * ef
}

/// Exponential, Cephes-style range reduction + polynomial; branch-free, inputs clamped to
/// [-87, 88].
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E;
    // Round to nearest by adding 1.5·2^23 (|t| < 2^22): unlike a float-to-int cast, which
    // Rust saturates, this keeps the loops that call exp vectorised.
    const SHIFTER: f32 = 12_582_912.0;
    let shifted = t + SHIFTER;
    let nf = shifted - SHIFTER;
    let n = shifted.to_bits() as i32 - SHIFTER.to_bits() as i32;
    let r = x - nf * 0.693_359_4 + nf * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n + 127) as u32) << 23)
}

/// log Γ(z) and ψ(z) for z > 0, sharing the shift and the log: Γ(z) = Γ(z+3)/(z(z+1)(z+2)),
/// Stirling / asymptotic series for w = z+3 ≥ 3 (errors < 5e-8 and < 2e-7).
#[inline(always)]
pub fn lgamma_digamma(z: f32) -> (f32, f32) {
    let (z1, z2) = (z + 1.0, z + 2.0);
    let shift = z * z1 * z2;
    let w = z + 3.0;
    let r = 1.0 / w;
    let r2 = r * r;
    let lw = ln(w);
    let lg_series =
        r * (((r2 * (1.0 / 1680.0) - 1.0 / 1260.0) * r2 + 1.0 / 360.0) * -r2 + 1.0 / 12.0);
    let lgamma = (w - 0.5) * lw - w + lg_series + HALF_LN_2PI - ln(shift);
    let dg_series =
        r2 * (1.0 / 12.0 - r2 * (1.0 / 120.0 - r2 * (1.0 / 252.0 - r2 * (1.0 / 240.0))));
    // 1/z + 1/(z+1) + 1/(z+2) with one division
    let recips = (z1 * z2 + z * z2 + z * z1) / shift;
    (lgamma, lw - 0.5 * r - dg_series - recips)
}

pub fn lgamma(z: f32) -> f32 {
    lgamma_digamma(z).0
}

pub fn digamma(z: f32) -> f32 {
    lgamma_digamma(z).1
}

/// softplus(u) and σ(u), sharing one exponential.
#[inline(always)]
fn softplus_sigmoid(u: f32) -> (f32, f32) {
    let e = exp(-u.abs());
    let inv = 1.0 / (1.0 + e);
    (
        u.max(0.0) + ln(1.0 + e),
        if u >= 0.0 { inv } else { e * inv },
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Likelihood {
    Zinb,
    Nb,
    Poisson,
    /// Normal(μ, σ = θ): scvi-tools' experimental "normal" gene likelihood (not a count law).
    Normal,
}

/// Per-cell sums of log p(x) (without the lgamma(x+1) constant) and, if asked, the partial
/// derivatives with respect to μ, θ and the zero-inflation logit π, element by element.
pub struct FusedOut {
    pub per_cell: Vec<f32>,
    pub d_mu: Vec<f32>,
    pub d_theta: Vec<f32>,
    pub d_pi: Vec<f32>,
    /// ∂/∂ℓ per cell (only from logits).
    pub d_library: Vec<f32>,
}

/// θ per gene (shared by all cells) or per element.
pub struct Theta<'a> {
    pub values: &'a [f32],
    pub per_gene: bool,
}

/// Quantities of θ alone, per gene (or per element for per-cell dispersion).
#[derive(Default)]
struct ThetaConsts {
    theta: Vec<f32>,
    log_theta_eps: Vec<f32>,
    theta_ratio: Vec<f32>,
    lgamma: Vec<f32>,
    digamma: Vec<f32>,
}

impl ThetaConsts {
    /// The constants of the genes `idx` of `src` (nothing for Poisson, which has none).
    fn gather(&mut self, src: &ThetaConsts, idx: &[u32]) {
        let pick = |dst: &mut Vec<f32>, from: &[f32]| {
            dst.clear();
            if !from.is_empty() {
                dst.extend(idx.iter().map(|&j| from[j as usize]));
            }
        };
        pick(&mut self.theta, &src.theta);
        pick(&mut self.log_theta_eps, &src.log_theta_eps);
        pick(&mut self.theta_ratio, &src.theta_ratio);
        pick(&mut self.lgamma, &src.lgamma);
        pick(&mut self.digamma, &src.digamma);
    }

    fn fill(&mut self, theta: &[f32]) {
        self.theta.clear();
        self.theta.extend_from_slice(theta);
        self.log_theta_eps = theta.iter().map(|&t| ln(t + EPS32)).collect();
        self.theta_ratio = theta.iter().map(|&t| t / (t + EPS32)).collect();
        let (lg, dg): (Vec<f32>, Vec<f32>) = theta.iter().map(|&t| lgamma_digamma(t)).unzip();
        self.lgamma = lg;
        self.digamma = dg;
    }
}

struct Row<'a> {
    x: &'a [f32],
    mu: &'a [f32],
    pi: &'a [f32],
    k: &'a ThetaConsts,
}

struct RowOut<'a> {
    value: &'a mut [f32],
    d_mu: &'a mut [f32],
    d_theta: &'a mut [f32],
    d_pi: &'a mut [f32],
}

/// One cell, branch-free over genes so the loop vectorises. Zero counts contribute through
/// 0/1 factors (both branches are computed, as in the reference). With `ZEROS` every count
/// is taken as 0 (`r.x` is not read), which skips the count terms: the dense part of
/// [`cross_log_likelihood`].
impl<'a> RowOut<'a> {
    fn values_only(value: &'a mut [f32]) -> Self {
        RowOut {
            value,
            d_mu: &mut [],
            d_theta: &mut [],
            d_pi: &mut [],
        }
    }
}

#[inline(always)]
fn nb_row<const ZINB: bool, const GRAD: bool, const ZEROS: bool>(r: &Row, o: &mut RowOut) {
    // Re-slicing everything to one length lets the compiler drop the bounds checks, which
    // would otherwise stop the loop from vectorising.
    let g = r.mu.len();
    let (xs, mus, k) = (if ZEROS { &[][..] } else { &r.x[..g] }, &r.mu[..g], r.k);
    let (ths, ltes, ratios, lgs, dgs) = (
        &k.theta[..g],
        &k.log_theta_eps[..g],
        &k.theta_ratio[..g],
        &k.lgamma[..g],
        &k.digamma[..g],
    );
    let pis = if ZINB { &r.pi[..g] } else { &[][..] };
    let values = &mut o.value[..g];
    let d_mus = if GRAD { &mut o.d_mu[..g] } else { &mut [][..] };
    let d_ths = if GRAD {
        &mut o.d_theta[..g]
    } else {
        &mut [][..]
    };
    let d_pis = if GRAD && ZINB {
        &mut o.d_pi[..g]
    } else {
        &mut [][..]
    };
    for j in 0..g {
        let (x, mu, th) = (if ZEROS { 0.0 } else { xs[j] }, mus[j], ths[j]);
        let lte = ltes[j];
        let tme = th + mu + EPS32;
        let inv_tme = 1.0 / tme;
        let lt = ln(tme);
        let a = th * (lte - lt);
        let nonzero = if x >= EPS32 { 1.0f32 } else { 0.0 };
        let (mut value, mut coef, mut d_pi) = (a, 1.0f32, 0.0f32);
        if ZINB {
            let pi = pis[j];
            let t = a - pi;
            let (sp_neg_pi, sig_neg_pi) = softplus_sigmoid(-pi);
            let (sp_neg_t, sig_neg_t) = softplus_sigmoid(-t);
            let zero = 1.0 - nonzero;
            value = t - sp_neg_pi + zero * sp_neg_t;
            coef = 1.0 - zero * sig_neg_t;
            d_pi = sig_neg_pi - coef;
        }
        if ZEROS {
            values[j] = value;
            continue;
        }
        let inv_mu = 1.0 / (mu + EPS32);
        let (lg, dg) = lgamma_digamma(x + th);
        value += x * (ln(mu + EPS32) - lt) + nonzero * (lg - lgs[j]);
        values[j] = value;
        if GRAD {
            d_mus[j] = -coef * th * inv_tme + x * (inv_mu - inv_tme);
            d_ths[j] = coef * (lte - lt + ratios[j] - th * inv_tme) - x * inv_tme
                + nonzero * (dg - dgs[j]);
            if ZINB {
                d_pis[j] = d_pi;
            }
        }
    }
}

#[inline(always)]
fn poisson_row<const GRAD: bool, const ZEROS: bool>(r: &Row, o: &mut RowOut) {
    for j in 0..r.mu.len() {
        if ZEROS {
            o.value[j] = -r.mu[j];
            continue;
        }
        let (x, mu) = (r.x[j], r.mu[j].max(f32::MIN_POSITIVE));
        o.value[j] = x * ln(mu) - mu;
        if GRAD {
            o.d_mu[j] = x / mu - 1.0;
        }
    }
}

/// Normal(μ, σ = θ). Callers subtract Σ lgamma(x+1) from every kernel's result (the count
/// laws leave it out); this one adds it, so that they get log p(x) here too.
#[inline(always)]
fn normal_row<const GRAD: bool, const ZEROS: bool>(r: &Row, o: &mut RowOut) {
    for j in 0..r.mu.len() {
        let (x, mu, sigma) = (if ZEROS { 0.0 } else { r.x[j] }, r.mu[j], r.k.theta[j]);
        let inv_var = 1.0 / (sigma * sigma);
        let dev = x - mu;
        let value = -HALF_LN_2PI - ln(sigma) - 0.5 * dev * dev * inv_var;
        o.value[j] = if ZEROS {
            value
        } else {
            value + lgamma(x + 1.0)
        };
        if GRAD {
            o.d_mu[j] = dev * inv_var;
            o.d_theta[j] = (dev * dev * inv_var - 1.0) / sigma;
        }
    }
}

/// What a row pass computes: values and derivatives, values only, or the values every gene
/// would have with a zero count.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Gradient,
    Value,
    ZeroCounts,
}

#[inline(always)]
fn row_dispatch(lik: Likelihood, pass: Pass, r: &Row, o: &mut RowOut) {
    use Pass::*;
    match (lik, pass) {
        (Likelihood::Zinb, Gradient) => nb_row::<true, true, false>(r, o),
        (Likelihood::Zinb, Value) => nb_row::<true, false, false>(r, o),
        (Likelihood::Zinb, ZeroCounts) => nb_row::<true, false, true>(r, o),
        (Likelihood::Nb, Gradient) => nb_row::<false, true, false>(r, o),
        (Likelihood::Nb, Value) => nb_row::<false, false, false>(r, o),
        (Likelihood::Nb, ZeroCounts) => nb_row::<false, false, true>(r, o),
        (Likelihood::Poisson, Gradient) => poisson_row::<true, false>(r, o),
        (Likelihood::Poisson, Value) => poisson_row::<false, false>(r, o),
        (Likelihood::Poisson, ZeroCounts) => poisson_row::<false, true>(r, o),
        (Likelihood::Normal, Gradient) => normal_row::<true, false>(r, o),
        (Likelihood::Normal, Value) => normal_row::<false, false>(r, o),
        (Likelihood::Normal, ZeroCounts) => normal_row::<false, true>(r, o),
    }
}

crate::widest! {
    fn row(lik: Likelihood, pass: Pass, r: &Row, o: &mut RowOut) = row_dispatch;
}

/// True when every value is finite (integer test on the exponent bits, vectorises).
fn all_finite(v: &[f32]) -> bool {
    v.iter().fold(0u32, |acc, x| {
        acc | (((x.to_bits() >> 23) & 0xff) == 0xff) as u32
    }) == 0
}

/// One mutable row per cell, or empty rows when the buffer is not used.
fn split_rows(v: &mut [f32], n: usize, g: usize) -> Vec<&mut [f32]> {
    if v.is_empty() {
        (0..n).map(|_| <&mut [f32]>::default()).collect()
    } else {
        v.chunks_mut(g).collect()
    }
}

/// Where μ comes from: given, or softmax(logits)·exp(log library) per cell.
#[derive(Clone, Copy)]
enum Mean<'a> {
    Given(&'a [f32]),
    Logits {
        raw: &'a [f32],
        log_library: &'a [f32],
    },
}

/// Evaluates `lik` on n cells x g genes (row-major `x`, `mu`, `pi`). A cell whose μ, θ or π
/// is not finite gets a NaN value, so divergence is still detected.
pub fn log_likelihood(
    lik: Likelihood,
    x: &[f32],
    mu: &[f32],
    theta: Theta,
    pi: Option<&[f32]>,
    g: usize,
    grad: bool,
) -> FusedOut {
    run(lik, x, Mean::Given(mu), theta, pi, g, grad)
}

/// As [`log_likelihood`] with μ = exp(ℓ)·softmax(raw) per cell; `d_mu` then holds ∂/∂raw and
/// `d_library` ∂/∂ℓ, folding the softmax and the library scaling into the same pass.
#[allow(clippy::too_many_arguments)]
pub fn log_likelihood_from_logits(
    lik: Likelihood,
    x: &[f32],
    raw: &[f32],
    log_library: &[f32],
    theta: Theta,
    pi: Option<&[f32]>,
    g: usize,
    grad: bool,
) -> FusedOut {
    run(
        lik,
        x,
        Mean::Logits { raw, log_library },
        theta,
        pi,
        g,
        grad,
    )
}

/// softmax(raw)·exp(ℓ) into `mu`; returns the softmax normaliser's scale exp(ℓ)/Σe.
#[inline(always)]
fn softmax_mean(raw: &[f32], log_library: f32, mu: &mut [f32]) {
    let g = raw.len();
    let (raw, mu) = (&raw[..g], &mut mu[..g]);
    let max = raw.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for j in 0..g {
        mu[j] = exp(raw[j] - max);
    }
    let scale = ((log_library as f64).exp() / sum_f64(mu)) as f32;
    for v in mu.iter_mut() {
        *v *= scale;
    }
}

/// Lanes of the f64 sums below: independent accumulators, so that the additions vectorise
/// (one serial chain of 2,000 dependent f64 additions per sum cost ~9% of an SCVI step).
const LANES: usize = 8;

/// Σ v in f64.
#[inline(always)]
fn sum_f64(v: &[f32]) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&x| x as f64).sum();
    for c in chunks {
        for k in 0..LANES {
            acc[k] += c[k] as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Σ a·b in f64.
#[inline(always)]
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = (ca.remainder().iter().zip(cb.remainder()))
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += x[k] as f64 * y[k] as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// One cell of [`run`]: its mean (softmax of the logits), its row, its value and, from the
/// logits, the softmax's part of the gradient.
struct Cell<'a> {
    lik: Likelihood,
    pass: Pass,
    x: &'a [f32],
    mean: CellMean<'a>,
    pi: &'a [f32],
    k: &'a ThetaConsts,
}

#[derive(Clone, Copy)]
enum CellMean<'a> {
    Given(&'a [f32]),
    Logits { raw: &'a [f32], log_library: f32 },
}

/// Returns the cell's log-likelihood (NaN when μ, θ or π is not finite); `mu_buf` holds μ
/// from logits; with logits and gradients `d_library` gets ∂/∂ℓ.
#[inline(always)]
fn cell_body(c: &Cell, mu_buf: &mut [f32], o: &mut RowOut, d_library: Option<&mut f32>) -> f32 {
    let mu: &[f32] = match c.mean {
        CellMean::Given(mu) => mu,
        CellMean::Logits { raw, log_library } => {
            softmax_mean(raw, log_library, mu_buf);
            mu_buf
        }
    };
    let r = Row {
        x: c.x,
        mu,
        pi: c.pi,
        k: c.k,
    };
    row_dispatch(c.lik, c.pass, &r, o);
    let finite = all_finite(mu) && all_finite(&c.k.theta) && all_finite(c.pi);
    let value = if finite {
        sum_f64(o.value) as f32
    } else {
        f32::NAN
    };
    if let (CellMean::Logits { .. }, Some(dl)) = (c.mean, d_library) {
        // μ_j = e^ℓ s_j: ∂/∂raw_j = μ_j g_j - s_j Σ_k μ_k g_k and ∂/∂ℓ = Σ_k μ_k g_k.
        let g = mu.len();
        let dm = &mut o.d_mu[..g];
        let t = dot_f64(dm, mu);
        let t_over_total = (t / sum_f64(mu)) as f32;
        for j in 0..g {
            dm[j] = mu[j] * (dm[j] - t_over_total);
        }
        *dl = t as f32;
    }
    value
}

crate::widest! {
    fn cell(c: &Cell, mu_buf: &mut [f32], o: &mut RowOut, d_library: Option<&mut f32>) -> f32
        = cell_body;
}

fn run(
    lik: Likelihood,
    x: &[f32],
    mean: Mean,
    theta: Theta,
    pi: Option<&[f32]>,
    g: usize,
    grad: bool,
) -> FusedOut {
    let n = x.len().checked_div(g).unwrap_or(0);
    let mut shared = ThetaConsts::default();
    if theta.per_gene && lik != Likelihood::Poisson {
        shared.fill(theta.values);
    }
    let grad_len = if grad { n * g } else { 0 };
    let pi_len = if grad && pi.is_some() { n * g } else { 0 };
    let mut out = FusedOut {
        per_cell: vec![0.0; n],
        d_mu: vec![0.0; grad_len],
        d_theta: vec![0.0; grad_len],
        d_pi: vec![0.0; pi_len],
        d_library: vec![0.0; if grad { n } else { 0 }],
    };
    let (mut d_mu, mut d_theta, mut d_pi) = (
        std::mem::take(&mut out.d_mu),
        std::mem::take(&mut out.d_theta),
        std::mem::take(&mut out.d_pi),
    );
    let mut d_lib = std::mem::take(&mut out.d_library);
    let lib_slots: Vec<Option<&mut f32>> = if grad {
        d_lib.iter_mut().map(Some).collect()
    } else {
        (0..n).map(|_| None).collect()
    };
    let jobs: Vec<_> = out
        .per_cell
        .iter_mut()
        .zip(split_rows(&mut d_mu, n, g))
        .zip(split_rows(&mut d_theta, n, g))
        .zip(split_rows(&mut d_pi, n, g))
        .zip(lib_slots)
        .enumerate()
        .collect();
    jobs.into_par_iter().for_each_init(
        || (vec![0f32; g], vec![0f32; g], ThetaConsts::default()),
        |(values, mu_buf, own), (c, ((((v, dm), dt), dp), dl))| {
            let cells = c * g..(c + 1) * g;
            let k = if theta.per_gene || lik == Likelihood::Poisson {
                &shared
            } else {
                own.fill(&theta.values[cells.clone()]);
                &*own
            };
            let c = Cell {
                lik,
                pass: if grad { Pass::Gradient } else { Pass::Value },
                x: &x[cells.clone()],
                mean: match mean {
                    Mean::Given(mu) => CellMean::Given(&mu[cells.clone()]),
                    Mean::Logits { raw, log_library } => CellMean::Logits {
                        raw: &raw[cells.clone()],
                        log_library: log_library[c],
                    },
                },
                pi: pi.map_or(&[][..], |p| &p[cells.clone()]),
                k,
            };
            let mut o = RowOut {
                value: values,
                d_mu: dm,
                d_theta: dt,
                d_pi: dp,
            };
            *v = cell(&c, mu_buf, &mut o, dl);
        },
    );
    out.d_mu = d_mu;
    out.d_theta = d_theta;
    out.d_pi = d_pi;
    out.d_library = d_lib;
    out
}

/// One cell's counts in sparse form with their total: an anchor of [`cross_log_likelihood`].
pub struct SparseCounts<'a> {
    pub genes: &'a [u32],
    pub counts: &'a [f32],
    pub total: f32,
}

/// Σ_g log p(x_ag | μ = ρ_rg·t_a, θ_rg, π_rg), without the lgamma(x+1) constant, for every row
/// r of `rho` (n x g) against the counts x_a (total t_a) of every anchor a: n x anchors,
/// row-major. The importance weights of scvi.md §8.10 score each posterior draw against
/// other cells' counts this way. Per pair, one vectorised pass takes every count as zero and
/// only the anchor's nonzero genes are then recomputed, so dense work is a few
/// transcendental functions per gene. A row whose ρ, θ or π is not finite scores NaN.
pub fn cross_log_likelihood(
    lik: Likelihood,
    rho: &[f32],
    theta: Theta,
    pi: Option<&[f32]>,
    anchors: &[SparseCounts],
    g: usize,
) -> Vec<f64> {
    let n_anchors = anchors.len();
    let n = rho.len().checked_div(g).unwrap_or(0);
    let mut shared = ThetaConsts::default();
    if theta.per_gene && lik != Likelihood::Poisson {
        shared.fill(theta.values);
    }
    let mut out = vec![0f64; n * n_anchors];
    if n_anchors == 0 {
        return out;
    }
    out.par_chunks_mut(n_anchors).enumerate().for_each_init(
        || {
            let gathered = (Vec::new(), Vec::new(), Vec::new(), ThetaConsts::default());
            (
                vec![0f32; g],
                vec![0f32; g],
                ThetaConsts::default(),
                gathered,
            )
        },
        |(mu, values, own, (sub_mu, sub_pi, sub_values, sub_k)), (r, scores)| {
            let cells = r * g..(r + 1) * g;
            let k = if theta.per_gene || lik == Likelihood::Poisson {
                &shared
            } else {
                own.fill(&theta.values[cells.clone()]);
                &*own
            };
            let rho_r = &rho[cells.clone()];
            let pi_r = pi.map_or(&[][..], |p| &p[cells.clone()]);
            if !(all_finite(rho_r) && all_finite(&k.theta) && all_finite(pi_r)) {
                scores.fill(f64::NAN);
                return;
            }
            for (a, score) in anchors.iter().zip(scores.iter_mut()) {
                for (m, &p) in mu.iter_mut().zip(rho_r) {
                    *m = p * a.total;
                }
                let dense = Row {
                    x: &[],
                    mu,
                    pi: pi_r,
                    k,
                };
                row(
                    lik,
                    Pass::ZeroCounts,
                    &dense,
                    &mut RowOut::values_only(values),
                );
                let mut sum: f64 = values.iter().map(|&v| v as f64).sum();
                sub_mu.clear();
                sub_mu.extend(a.genes.iter().map(|&j| mu[j as usize]));
                sub_pi.clear();
                if !pi_r.is_empty() {
                    sub_pi.extend(a.genes.iter().map(|&j| pi_r[j as usize]));
                }
                sub_k.gather(k, a.genes);
                sub_values.resize(a.genes.len(), 0.0);
                let sparse = Row {
                    x: a.counts,
                    mu: sub_mu,
                    pi: sub_pi,
                    k: sub_k,
                };
                row(
                    lik,
                    Pass::Value,
                    &sparse,
                    &mut RowOut::values_only(sub_values),
                );
                for (&j, &v) in a.genes.iter().zip(sub_values.iter()) {
                    sum += v as f64 - values[j as usize] as f64;
                }
                *score = sum;
            }
        },
    );
    out
}

#[cfg(test)]
// Reference values are written with the digits their sources give; the gradient checks index
// several parallel arrays per element.
#[allow(clippy::excessive_precision, clippy::needless_range_loop)]
mod tests {
    use super::*;
    use crate::data::ln_factorial;
    use crate::dist;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Tensor, TensorData};

    #[test]
    fn fast_ln_and_exp_are_accurate() {
        let mut x = 1e-8f32;
        while x < 1e8 {
            let rel = ((ln(x) as f64 - (x as f64).ln()) / (x as f64).ln().abs().max(1.0)).abs();
            assert!(rel < 3e-7, "ln({x}) = {} vs {}", ln(x), (x as f64).ln());
            x *= 1.37;
        }
        let mut y = -80.0f32;
        while y < 80.0 {
            let rel = ((exp(y) as f64 - (y as f64).exp()) / (y as f64).exp()).abs();
            assert!(rel < 3e-7, "exp({y})");
            y += 0.731;
        }
    }

    #[test]
    fn lgamma_and_digamma_match_known_values() {
        assert!((lgamma(0.5) - 0.572_364_94).abs() < 1e-6);
        assert!((lgamma(30.0) - 71.257_04).abs() < 1e-4);
        // ψ(1) = -γ, ψ(0.5) = -γ - 2 ln 2
        assert!((digamma(1.0) + 0.577_215_66).abs() < 1e-6);
        assert!((digamma(0.5) + 1.963_510_03).abs() < 1e-6);
    }

    /// Parity vectors of scvi.md §12.1-12.3 through the fused path.
    #[test]
    fn fused_values_match_parity_vectors() {
        use crate::parity::{tolerance, NB, POISSON, ZINB};
        let one = |lik, x: f32, mu: f32, th: f32, pi: Option<f32>| {
            let pi = pi.map(|p| vec![p]);
            let out = log_likelihood(
                lik,
                &[x],
                &[mu],
                Theta {
                    values: &[th],
                    per_gene: false,
                },
                pi.as_deref(),
                1,
                false,
            );
            out.per_cell[0] as f64 - ln_factorial(x as f64)
        };
        for (i, &(x, mu, th, want)) in NB.iter().enumerate() {
            let got = one(Likelihood::Nb, x, mu, th, None);
            assert!(
                (got - want).abs() <= tolerance(th, want),
                "nb[{i}]: {got} vs {want}"
            );
        }
        for (i, &(x, mu, th, pi, want)) in ZINB.iter().enumerate() {
            let got = one(Likelihood::Zinb, x, mu, th, Some(pi));
            assert!(
                (got - want).abs() <= tolerance(th, want),
                "zinb[{i}]: {got} vs {want}"
            );
        }
        // Normal(2.5, σ 0.4) at 3: log p = -½ln2π - ln 0.4 - ½(0.5/0.4)².
        let want = -0.918_938_533 - 0.4f64.ln() - 0.5 * (0.5f64 / 0.4).powi(2);
        let got = one(Likelihood::Normal, 3.0, 2.5, 0.4, None);
        assert!((got - want).abs() < 1e-4, "normal: {got} vs {want}");
        for (i, &(x, lambda, want)) in POISSON.iter().enumerate() {
            let got = one(Likelihood::Poisson, x, lambda, 1.0, None);
            assert!(
                (got - want).abs() <= tolerance(1.0, want),
                "poisson[{i}]: {got} vs {want}"
            );
        }
    }

    /// The fused derivatives equal autodiff through the tensor formulas of dist.rs.
    #[test]
    fn fused_gradients_match_autodiff() {
        type AD = Autodiff<Flex>;
        let dev = Default::default();
        let x = [0.0f32, 3.0, 0.0, 12.0, 1.0, 0.0];
        let mu = [0.7f32, 2.5, 5.0, 9.0, 0.2, 30.0];
        let th = [1.3f32, 0.4, 7.0];
        // No logit at exactly 0: the composed softplus has a kink there (measure zero).
        let pi = [-1.0f32, 0.5, 2.0, -3.0, 0.3, 1.5];
        let t2 =
            |v: &[f32], r, c| Tensor::<AD, 2>::from_data(TensorData::new(v.to_vec(), [r, c]), &dev);
        use crate::models::options::GeneLikelihood;
        for (lik, gene_lik, name) in [
            (Likelihood::Zinb, GeneLikelihood::Zinb, "zinb"),
            (Likelihood::Nb, GeneLikelihood::Nb, "nb"),
            (Likelihood::Normal, GeneLikelihood::Normal, "normal"),
        ] {
            let (xt, mt, tt, pt) = (
                t2(&x, 2, 3),
                t2(&mu, 2, 3).require_grad(),
                t2(&th, 1, 3).require_grad(),
                t2(&pi, 2, 3).require_grad(),
            );
            let pi_t = (lik == Likelihood::Zinb).then(|| pt.clone());
            let lp = dist::gene_log_prob_unnormalized(gene_lik, xt, mt.clone(), tt.clone(), pi_t);
            let total: f32 = lp.clone().sum().into_scalar();
            let grads = lp.sum().backward();
            let gm: Vec<f32> = mt.grad(&grads).unwrap().into_data().to_vec().unwrap();
            let gt: Vec<f32> = tt.grad(&grads).unwrap().into_data().to_vec().unwrap();
            let out = log_likelihood(
                lik,
                &x,
                &mu,
                Theta {
                    values: &th,
                    per_gene: true,
                },
                (lik == Likelihood::Zinb).then_some(&pi[..]),
                3,
                true,
            );
            let fused_total: f32 = out.per_cell.iter().sum();
            assert!(
                (total - fused_total).abs() < 1e-4,
                "{name} value {total} vs {fused_total}"
            );
            for i in 0..6 {
                assert!(
                    (gm[i] - out.d_mu[i]).abs() < 1e-5,
                    "{name} d_mu[{i}] {} vs {}",
                    gm[i],
                    out.d_mu[i]
                );
            }
            for j in 0..3 {
                let fused = out.d_theta[j] + out.d_theta[3 + j];
                assert!(
                    (gt[j] - fused).abs() < 1e-4,
                    "{name} d_theta[{j}] {} vs {fused}",
                    gt[j]
                );
            }
            if lik == Likelihood::Zinb {
                let gp: Vec<f32> = pt.grad(&grads).unwrap().into_data().to_vec().unwrap();
                for i in 0..6 {
                    assert!(
                        (gp[i] - out.d_pi[i]).abs() < 1e-5,
                        "d_pi[{i}] {} vs {}",
                        gp[i],
                        out.d_pi[i]
                    );
                }
            }
        }
    }

    /// The logits variant equals the tensor chain softmax -> ·exp(ℓ) -> likelihood, with its
    /// gradients in the logits and the library.
    #[test]
    fn logits_path_matches_autodiff_through_softmax() {
        type AD = Autodiff<Flex>;
        let dev = Default::default();
        let x = [0.0f32, 3.0, 0.0, 12.0, 1.0, 0.0];
        let raw = [0.3f32, -1.0, 2.0, 0.5, 0.0, -0.7];
        let lib = [2.0f32, 3.5];
        let th = [1.3f32, 0.4, 7.0];
        let pi = [-1.0f32, 0.5, 2.0, -3.0, 0.3, 1.5];
        let t2 =
            |v: &[f32], r, c| Tensor::<AD, 2>::from_data(TensorData::new(v.to_vec(), [r, c]), &dev);
        let (rt, lt) = (t2(&raw, 2, 3).require_grad(), t2(&lib, 2, 1).require_grad());
        let mu = burn::tensor::activation::softmax(rt.clone(), 1) * lt.clone().exp();
        let lp = dist::zinb_log_prob_unnormalized(t2(&x, 2, 3), mu, t2(&th, 1, 3), t2(&pi, 2, 3));
        let total: f32 = lp.clone().sum().into_scalar();
        let grads = lp.sum().backward();
        let gr: Vec<f32> = rt.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let gl: Vec<f32> = lt.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let out = log_likelihood_from_logits(
            Likelihood::Zinb,
            &x,
            &raw,
            &lib,
            Theta {
                values: &th,
                per_gene: true,
            },
            Some(&pi),
            3,
            true,
        );
        assert!((total - out.per_cell.iter().sum::<f32>()).abs() < 1e-4);
        for i in 0..6 {
            assert!(
                (gr[i] - out.d_mu[i]).abs() < 1e-5,
                "d_raw[{i}] {} vs {}",
                gr[i],
                out.d_mu[i]
            );
        }
        for c in 0..2 {
            assert!(
                (gl[c] - out.d_library[c]).abs() < 1e-4,
                "d_lib[{c}] {} vs {}",
                gl[c],
                out.d_library[c]
            );
        }
    }

    /// Scoring rows against other cells' counts equals the direct evaluation with μ = ρ·t_a
    /// and the anchor's counts on every row, for each likelihood and both θ layouts.
    #[test]
    fn cross_scores_equal_direct_evaluation() {
        let (n, g) = (3, 5);
        let rho: Vec<f32> = (0..n * g).map(|i| 0.02 + (i % 7) as f32 * 0.03).collect();
        let theta_rows: Vec<f32> = (0..n * g).map(|i| 0.3 + (i % 4) as f32 * 1.7).collect();
        let pi: Vec<f32> = (0..n * g).map(|i| -2.0 + (i % 5) as f32 * 0.9).collect();
        let dense_anchors = [[0.0f32, 4.0, 0.0, 1.0, 9.0], [2.0, 0.0, 0.0, 0.0, 0.0]];
        let sparse: Vec<(Vec<u32>, Vec<f32>)> = dense_anchors
            .iter()
            .map(|x| {
                (0..g)
                    .filter(|&j| x[j] > 0.0)
                    .map(|j| (j as u32, x[j]))
                    .unzip()
            })
            .collect();
        let anchors: Vec<SparseCounts> = sparse
            .iter()
            .map(|(genes, counts)| SparseCounts {
                genes,
                counts,
                total: counts.iter().sum(),
            })
            .collect();
        for lik in [
            Likelihood::Zinb,
            Likelihood::Nb,
            Likelihood::Poisson,
            Likelihood::Normal,
        ] {
            for per_gene in [true, false] {
                let theta_values = if per_gene {
                    &theta_rows[..g]
                } else {
                    &theta_rows
                };
                let theta = || Theta {
                    values: theta_values,
                    per_gene,
                };
                let pi = (lik == Likelihood::Zinb).then_some(&pi[..]);
                let got = cross_log_likelihood(lik, &rho, theta(), pi, &anchors, g);
                for (a, x) in dense_anchors.iter().enumerate() {
                    let total: f32 = x.iter().sum();
                    let mu: Vec<f32> = rho.iter().map(|&p| p * total).collect();
                    let xs: Vec<f32> = (0..n).flat_map(|_| x.iter().copied()).collect();
                    let want = log_likelihood(lik, &xs, &mu, theta(), pi, g, false).per_cell;
                    for r in 0..n {
                        let (v, w) = (got[r * 2 + a], want[r] as f64);
                        assert!(
                            (v - w).abs() < 1e-4 * (1.0 + w.abs()),
                            "{lik:?} per_gene={per_gene} row {r} anchor {a}: {v} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
