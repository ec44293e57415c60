//! Host-computed likelihood values entered into the autodiff graph with their exact
//! gradients (the CPU path of every count likelihood).

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::backend::host_values as host;
use crate::dist::fused::{self, Likelihood, Theta};
use crate::models::options::GeneLikelihood;

/// `values` (per cell) as a tensor that back-propagates Σ ∂·t for each (∂, t) pair: the
/// surrogate's own value is subtracted, so only its gradient remains.
pub(crate) fn with_surrogate<B: Backend>(
    values: Vec<f32>,
    terms: Vec<(Vec<f32>, Tensor<B, 2>)>,
    library: Option<(Vec<f32>, Tensor<B, 2>)>,
    grad: bool,
    n: usize,
    g: usize,
    device: &B::Device,
) -> Tensor<B, 1> {
    let value = Tensor::<B, 1>::from_data(TensorData::new(values, [n]), device);
    if !grad {
        return value;
    }
    let mut surrogate: Option<Tensor<B, 2>> = None;
    for (d, t) in terms {
        let term = Tensor::<B, 2>::from_data(TensorData::new(d, [n, g]), device) * t;
        surrogate = Some(match surrogate {
            Some(s) => s + term,
            None => term,
        });
    }
    let mut s = surrogate.expect("at least one term").sum_dim(1);
    if let Some((d, l)) = library {
        s = s + Tensor::<B, 2>::from_data(TensorData::new(d, [n, 1]), device) * l;
    }
    let s = s.squeeze_dim::<1>(1);
    s.clone() - s.detach() + value
}

/// Per-cell log p(x | μ, θ, π) without the lgamma(x+1) constant, from the fused host kernel
/// (fused.rs) with its exact gradients to μ, θ and π. `dropout_logits` only for ZINB.
pub fn fused_log_likelihood<B: Backend>(
    likelihood: GeneLikelihood,
    x: Tensor<B, 2>,
    mu: Tensor<B, 2>,
    theta: Tensor<B, 2>,
    dropout_logits: Option<Tensor<B, 2>>,
    grad: bool,
) -> Tensor<B, 1> {
    let [n, g] = x.dims();
    let lik = fused_kind(likelihood);
    let (xv, mu_v, th) = (host(&x), host(&mu), host(&theta));
    let pi = dropout_logits.as_ref().map(host);
    let per_gene = theta.dims()[0] == 1 && n != 1;
    let out = fused::log_likelihood(
        lik,
        &xv,
        &mu_v,
        Theta {
            values: &th,
            per_gene,
        },
        pi.as_deref(),
        g,
        grad,
    );
    let mut terms = vec![(out.d_mu, mu)];
    if lik != Likelihood::Poisson {
        terms.push((out.d_theta, theta));
    }
    if let Some(p) = dropout_logits {
        terms.push((out.d_pi, p));
    }
    with_surrogate(out.per_cell, terms, None, grad, n, g, &x.device())
}

/// The fused kernel's name of a gene likelihood.
pub(crate) fn fused_kind(likelihood: GeneLikelihood) -> Likelihood {
    match likelihood {
        GeneLikelihood::Zinb => Likelihood::Zinb,
        GeneLikelihood::Nb => Likelihood::Nb,
        GeneLikelihood::Poisson => Likelihood::Poisson,
        GeneLikelihood::Normal => Likelihood::Normal,
    }
}

/// Per-cell log p(x | μ, θ, π) without the lgamma(x+1) constant, with μ = exp(ℓ)·softmax(raw)
/// and `library` = ℓ: the fused host kernel (fused.rs) folds the softmax and the library
/// scaling into one pass and returns the values with ∂/∂raw, ∂/∂θ, ∂/∂π and ∂/∂ℓ; the graph
/// gets them through a surrogate whose value is cancelled out, so the result equals the
/// log-likelihood and back-propagates its exact gradient. `dropout_logits` only for ZINB.
pub fn fused_log_likelihood_from_logits<B: Backend>(
    likelihood: GeneLikelihood,
    x: Tensor<B, 2>,
    raw_scale: Tensor<B, 2>,
    theta: Tensor<B, 2>,
    dropout_logits: Option<Tensor<B, 2>>,
    library: Tensor<B, 2>,
    grad: bool,
) -> Tensor<B, 1> {
    let [n, g] = x.dims();
    let lik = fused_kind(likelihood);
    let (xv, raw, th) = (host(&x), host(&raw_scale), host(&theta));
    let lib = host(&library);
    let pi = dropout_logits.as_ref().map(host);
    let per_gene = theta.dims()[0] == 1 && n != 1;
    let out = fused::log_likelihood_from_logits(
        lik,
        &xv,
        &raw,
        &lib,
        Theta {
            values: &th,
            per_gene,
        },
        pi.as_deref(),
        g,
        grad,
    );
    let mut terms = vec![(out.d_mu, raw_scale)];
    if lik != Likelihood::Poisson {
        terms.push((out.d_theta, theta));
    }
    if let Some(p) = dropout_logits {
        terms.push((out.d_pi, p));
    }
    with_surrogate(
        out.per_cell,
        terms,
        Some((out.d_library, library)),
        grad,
        n,
        g,
        &x.device(),
    )
}

/// Per-cell binary cross-entropy of the accessibility of n cells x r regions (`open`: each
/// cell's regions with x > 0) under q = σ(`logits`)·`library`·σ(`region_logits`), from the
/// fused host kernel
/// (dist/bernoulli.rs) with its exact gradients. Returns the per-cell values (gradients to
/// the logits and the library) and, with region factors, a zero-valued scalar that carries
/// their gradient over the cells of `mask` (add it to the objective once).
pub fn fused_bernoulli_cross_entropy<B: Backend>(
    open: &crate::nn::SparseRows,
    logits: Tensor<B, 2>,
    library: Tensor<B, 2>,
    region_logits: Option<Tensor<B, 1>>,
    mask: Tensor<B, 1>,
    grad: bool,
) -> (Tensor<B, 1>, Option<Tensor<B, 1>>) {
    let [n, r] = logits.dims();
    let device = logits.device();
    let rl = region_logits.as_ref().map(host);
    let out = crate::dist::bernoulli::cross_entropy(
        open,
        &host(&logits),
        &host(&library),
        rl.as_deref(),
        &host(&mask),
        r,
        grad,
    );
    let per_cell = with_surrogate(
        out.per_cell,
        vec![(out.d_logits, logits)],
        Some((out.d_library, library)),
        grad,
        n,
        r,
        &device,
    );
    let region = match (region_logits, grad) {
        (Some(rl), true) => {
            let d = Tensor::<B, 1>::from_data(TensorData::new(out.d_region, [r]), &device);
            // Divided by n: the objective averages the per-cell losses.
            let s = (d * rl).sum() / n.max(1) as f64;
            Some(s.clone() - s.detach())
        }
        _ => None,
    };
    (per_cell, region)
}
