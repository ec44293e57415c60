//! Host-computed likelihood values entered into the autodiff graph with their exact
//! gradients (the CPU path of every count likelihood).

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::data::batch::host;
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
    let lik = match likelihood {
        GeneLikelihood::Zinb => Likelihood::Zinb,
        GeneLikelihood::Nb => Likelihood::Nb,
        GeneLikelihood::Poisson => Likelihood::Poisson,
    };
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
