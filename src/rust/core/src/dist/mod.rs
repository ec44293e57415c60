//! Log-densities and KL divergences on tensors (scvi.md §5), differentiable through Burn's
//! autodiff. `lgamma` is built from elementary ops (recurrence shift + Stirling series) so
//! that its gradient (digamma) comes for free.

pub mod bernoulli;
pub mod fused;
pub mod sample;
pub mod splicing;
pub mod surrogate;

use burn::tensor::{backend::Backend, Tensor};

pub const EPS: f64 = 1e-8;
const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

/// log Γ(z) for z > 0 in f32: Γ(z) = Γ(z+3) / (z(z+1)(z+2)), then the Stirling series for
/// w = z+3 ≥ 3 up to w⁻⁷ (truncation error < 5e-8). The shift product cannot overflow below
/// z ≈ 6e12.
pub fn lgamma<B: Backend, const D: usize>(z: Tensor<B, D>) -> Tensor<B, D> {
    let shift = z.clone() * (z.clone() + 1.0) * (z.clone() + 2.0);
    let w = z + 3.0;
    let series = stirling_series(w.clone());
    (w.clone() - 0.5) * w.clone().log() - w + series + HALF_LN_2PI - shift.log()
}

/// The Stirling series of [`lgamma`] (its w⁻¹..w⁻⁷ terms), for w ≥ 3.
pub(crate) fn stirling_series<B: Backend, const D: usize>(w: Tensor<B, D>) -> Tensor<B, D> {
    let r = w.recip();
    let r2 = r.clone() * r.clone();
    r * (((r2.clone() * (1.0 / 1680.0) - 1.0 / 1260.0) * r2.clone() + 1.0 / 360.0) * r2.neg()
        + 1.0 / 12.0)
}

/// Numerically stable softplus log(1 + e^t) = max(t, 0) + log(1 + e^{-|t|}), with max(t, 0)
/// written (t + |t|) / 2 so that autodiff gives the exact derivative σ(0) = 1/2 at t = 0
/// (`clamp_min` passes 1 there while |t| passes 0). `log(1 + u)` instead of `log1p(u)`:
/// u ≤ 1, so the absolute error is below 6e-8, and libm's scalar log1pf was the single most
/// expensive function of a training step.
pub fn softplus<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    let magnitude = t.clone().abs();
    (t + magnitude.clone()) * 0.5 + (magnitude.neg().exp() + 1.0).log()
}

/// NB log-probability without the `-lgamma(x+1)` term (the caller adds the per-cell constant).
/// `theta` broadcasts against `x` and `mu`.
pub fn nb_log_prob_unnormalized<B: Backend>(
    x: Tensor<B, 2>,
    mu: Tensor<B, 2>,
    theta: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let log_theta_mu_eps = (theta.clone() + mu.clone() + EPS).log();
    let log_theta_eps = (theta.clone() + EPS).log();
    theta.clone() * (log_theta_eps - log_theta_mu_eps.clone())
        + x.clone() * ((mu + EPS).log() - log_theta_mu_eps)
        + lgamma(x + theta.clone())
        - lgamma(theta)
}

/// log(π NB(x; μ₁, θ) + (1 − π) NB(x; μ₂, θ)) without the `-lgamma(x+1)` term, π = σ(`pi_logit`):
/// totalVI's protein likelihood (background μ₁, foreground μ₂). Since log σ(π) = −softplus(−π)
/// and 1 − σ(π) = e^{−π} σ(π), it is LSE(ℓ₁, ℓ₂ − π) − softplus(−π).
pub fn mixture_nb_log_prob_unnormalized<B: Backend>(
    x: Tensor<B, 2>,
    mu1: Tensor<B, 2>,
    mu2: Tensor<B, 2>,
    theta: Tensor<B, 2>,
    pi_logit: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let l1 = nb_log_prob_unnormalized(x.clone(), mu1, theta.clone());
    let l2 = nb_log_prob_unnormalized(x, mu2, theta) - pi_logit.clone();
    let top = l1.clone().max_pair(l2.clone());
    top.clone() + ((l1 - top.clone()).exp() + (l2 - top).exp()).log() - softplus(pi_logit.neg())
}

/// ZINB log-probability without the `-lgamma(x+1)` term. `pi_logit` is the zero-inflation
/// logit. Algebraically the stable form of scvi.md §5.2: with t = -π + θ(log(θ+ε) - log(θ+μ+ε)),
/// case₀ = softplus(t) - softplus(-π) and case₊ = t - softplus(-π) + NB terms; since
/// softplus(t) - t = softplus(-t) and the NB terms vanish at x = 0, both cases are
/// -softplus(-π) + t + [x<ε]·softplus(-t) + NB terms, which needs half the tensor ops.
pub fn zinb_log_prob_unnormalized<B: Backend>(
    x: Tensor<B, 2>,
    mu: Tensor<B, 2>,
    theta: Tensor<B, 2>,
    pi_logit: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let log_theta_eps = (theta.clone() + EPS).log();
    let log_theta_mu_eps = (theta.clone() + mu.clone() + EPS).log();
    let t = theta.clone() * (log_theta_eps - log_theta_mu_eps.clone()) - pi_logit.clone();
    let zero_mask = x.clone().lower_elem(EPS).float();
    t.clone() - softplus(pi_logit.neg())
        + zero_mask * softplus(t.neg())
        + x.clone() * ((mu + EPS).log() - log_theta_mu_eps)
        + lgamma(x + theta.clone())
        - lgamma(theta)
}

/// Poisson log-probability without `-lgamma(x+1)`: x log λ − λ with 0·log 0 = 0.
pub fn poisson_log_prob_unnormalized<B: Backend>(
    x: Tensor<B, 2>,
    rate: Tensor<B, 2>,
) -> Tensor<B, 2> {
    // Clamp only guards an f32 underflow of λ to exactly 0 (then x log λ would be NaN).
    x * rate.clone().clamp_min(f32::MIN_POSITIVE).log() - rate
}

/// Element-wise log p(x | μ, θ, π) of a gene likelihood on tensors (the path of backends
/// without the fused host kernel), with the fused kernel's convention: without lgamma(x+1)
/// for the count laws, and with it added for the Normal (σ = θ), so that subtracting
/// Σ lgamma(x+1) gives log p(x) for all. `dropout_logits` only for ZINB.
pub fn gene_log_prob_unnormalized<B: Backend>(
    likelihood: crate::models::options::GeneLikelihood,
    x: Tensor<B, 2>,
    mu: Tensor<B, 2>,
    theta: Tensor<B, 2>,
    dropout_logits: Option<Tensor<B, 2>>,
) -> Tensor<B, 2> {
    use crate::models::options::GeneLikelihood;
    match (likelihood, dropout_logits) {
        (GeneLikelihood::Zinb, Some(pi)) => zinb_log_prob_unnormalized(x, mu, theta, pi),
        (GeneLikelihood::Zinb, None) | (GeneLikelihood::Nb, _) => {
            nb_log_prob_unnormalized(x, mu, theta)
        }
        (GeneLikelihood::Poisson, _) => poisson_log_prob_unnormalized(x, mu),
        (GeneLikelihood::Normal, _) => {
            let var = theta.powf_scalar(2.0);
            normal_log_prob(x.clone(), mu, var) + log_factorial_tensor(x)
        }
    }
}

/// PyTorch's binary cross-entropy clamps each log at -100.
const BCE_LOG_FLOOR: f64 = -100.0;

/// Per-cell binary cross-entropy of the accessibility t = [x > 0] under q (multivi.md §5.2),
/// with PyTorch's clamp of each log at -100, as tensor ops: the path of backends without
/// the fused host kernel (dist/bernoulli.rs), and the reference that kernel is checked
/// against.
pub fn binary_cross_entropy<B: Backend>(q: Tensor<B, 2>, x: Tensor<B, 2>) -> Tensor<B, 1> {
    let t = x.greater_elem(0.0).float();
    let log_q = q.clone().log().clamp_min(BCE_LOG_FLOOR);
    let log_1q = (q.neg() + 1.0).log().clamp_min(BCE_LOG_FLOOR);
    let ll = t.clone() * log_q + (t.neg() + 1.0) * log_1q;
    ll.sum_dim(1).squeeze_dim::<1>(1).neg()
}

/// Full log-probabilities (with the `lgamma(x+1)` term), used by tests and pointwise queries.
pub fn log_factorial_tensor<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    lgamma(x + 1.0)
}

/// KL(N(mu, sqrt(var)) || N(0, 1)) per element.
pub fn kl_standard_normal<B: Backend, const D: usize>(
    mu: Tensor<B, D>,
    var: Tensor<B, D>,
) -> Tensor<B, D> {
    (var.clone() + mu.powf_scalar(2.0) - 1.0 - var.log()) * 0.5
}

/// KL(N(mu_q, sqrt(var_q)) || N(mu_p, sqrt(var_p))) per element.
pub fn kl_normal<B: Backend, const D: usize>(
    mu_q: Tensor<B, D>,
    var_q: Tensor<B, D>,
    mu_p: Tensor<B, D>,
    var_p: Tensor<B, D>,
) -> Tensor<B, D> {
    let ratio = var_q / var_p.clone();
    (ratio.clone() + (mu_q - mu_p).powf_scalar(2.0) / var_p - 1.0 - ratio.log()) * 0.5
}

/// log N(v; mean, var) summed over the coordinates, on host slices (the importance weights
/// evaluate it for every draw against every anchor's posterior).
pub fn normal_log_density_host(v: &[f32], mean: &[f32], var: &[f32]) -> f64 {
    v.iter()
        .zip(mean)
        .zip(var)
        .map(|((&x, &m), &s2)| {
            let (x, m, s2) = (x as f64, m as f64, s2 as f64);
            -(x - m) * (x - m) / (2.0 * s2) - 0.5 * s2.ln() - HALF_LN_2PI
        })
        .sum()
}

/// log N(x; mu, sqrt(var)) per element.
pub fn normal_log_prob<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    mu: Tensor<B, D>,
    var: Tensor<B, D>,
) -> Tensor<B, D> {
    (x - mu).powf_scalar(2.0).neg() / (var.clone() * 2.0) - var.log() * 0.5 - HALF_LN_2PI
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    fn t(v: &[f64]) -> Tensor<B, 2> {
        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        Tensor::from_data(
            TensorData::new(v.clone(), [1, v.len()]),
            &Default::default(),
        )
    }

    fn vals(x: Tensor<B, 2>) -> Vec<f64> {
        x.into_data()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect()
    }

    fn close(got: &[f64], want: &[f64], rel: f64, abs: f64) {
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= abs + rel * w.abs(),
                "got {g}, want {w} (all: {got:?})"
            );
        }
    }

    #[test]
    fn lgamma_matches_known_values() {
        let z = [0.001, 0.5, 1.0, 2.5, 7.0, 30.0, 1000.0];
        let want = [
            6.907_178_885_383_853,
            0.572_364_942_924_700_1,
            0.0,
            0.284_682_870_472_919_2,
            6.579_251_212_010_101,
            71.257_038_967_168,
            5_905.220_423_209_181,
        ];
        close(&vals(lgamma(t(&z))), &want, 2e-6, 2e-6);
    }

    #[test]
    fn softplus_is_stable() {
        let v = vals(softplus(t(&[-100.0, 0.0, 100.0])));
        close(&v, &[0.0, std::f64::consts::LN_2, 100.0], 1e-6, 1e-6);
    }

    #[test]
    fn protein_mixture_matches_the_reference_values() {
        // multivi.md §10.4: y = 3, μ₁ = 1, μ₂ = 5, θ = 2 → −2.3814029 (π = 0), −2.5830884
        // (π = 1.5); lgamma(3 + 1) = ln 6 is the caller's term.
        let lp = mixture_nb_log_prob_unnormalized(
            t(&[3.0, 3.0]),
            t(&[1.0, 1.0]),
            t(&[5.0, 5.0]),
            t(&[2.0, 2.0]),
            t(&[0.0, 1.5]),
        );
        let full: Vec<f64> = vals(lp).iter().map(|v| v - 6f64.ln()).collect();
        close(&full, &[-2.381_402_9, -2.583_088_4], 1e-6, 1e-6);
    }
}
