//! Host-computed likelihood values entered into the autodiff graph with their exact
//! gradients (the CPU path of every count likelihood). On other backends (CUDA) the same
//! entry points evaluate the tensor formulas of dist/mod.rs on the device.

use std::any::Any;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{backend::Backend, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::backend::{computes_on_host, host_values as host, Cpu, CpuTrain};
use crate::dist::fused::{self, Likelihood, Theta};
use crate::dist::{binary_cross_entropy, gene_log_prob_unnormalized};
use crate::models::options::GeneLikelihood;
use burn::tensor::activation::{sigmoid, softmax};

/// `values` (per cell) as a tensor that back-propagates Σ ∂·t for each (∂, t) pair (∂ is
/// cells x columns of t; t has one row per cell, or one row shared by all cells). On the CPU
/// training backend each pair is a custom autodiff op whose backward pass hands ∂ (times the
/// cell's upstream gradient) to t, so nothing is evaluated forward; elsewhere a surrogate
/// Σ ∂·t is entered and its own value subtracted, so only its gradient remains.
pub(crate) fn with_surrogate<B: Backend>(
    values: Vec<f32>,
    terms: Vec<(Vec<f32>, Tensor<B, 2>)>,
    library: Option<(Vec<f32>, Tensor<B, 2>)>,
    grad: bool,
    n: usize,
    device: &B::Device,
) -> Tensor<B, 1> {
    let mut value = Tensor::<B, 1>::from_data(TensorData::new(values, [n]), device);
    if !grad {
        return value;
    }
    for (d, t) in terms.into_iter().chain(library) {
        value = value
            + match carry_gradient::<B>(d, t, n) {
                Ok(carrier) => carrier,
                Err((d, t)) => surrogate_term(d, t, n, device),
            };
    }
    value
}

/// Σ_j ∂_ij t_ij minus its own value: zero per cell, with the gradient ∂ (any backend).
fn surrogate_term<B: Backend>(
    d: Vec<f32>,
    t: Tensor<B, 2>,
    n: usize,
    device: &B::Device,
) -> Tensor<B, 1> {
    let w = t.dims()[1];
    let s = (Tensor::<B, 2>::from_data(TensorData::new(d, [n, w]), device) * t)
        .sum_dim(1)
        .squeeze_dim::<1>(1);
    s.clone() - s.detach()
}

/// The backward step of [`carry_gradient`]: ∂ (cells x w) for a parameter t of `rows` rows
/// (n, or 1 shared by the n cells).
#[derive(Debug)]
struct CarryGradient {
    d: Vec<f32>,
    n: usize,
    rows: usize,
    w: usize,
}

impl Backward<Cpu, 1> for CarryGradient {
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<Cpu>(&ops.node);
        let [parent] = ops.parents;
        let Some(parent) = parent else { return };
        let g = host(&Tensor::<Cpu, 1>::from_primitive(TensorPrimitive::Float(
            upstream,
        )));
        let (d, n, w) = (&self.d, self.n, self.w.max(1));
        let out: Vec<f32> = if self.rows == n {
            let mut out = vec![0f32; n * w];
            out.par_chunks_mut(w)
                .zip(d.par_chunks(w))
                .zip(g.par_iter())
                .for_each(|((o, d), &gi)| {
                    for (o, &dj) in o.iter_mut().zip(d) {
                        *o = dj * gi;
                    }
                });
            out
        } else {
            let mut out = vec![0f32; w];
            for (d, &gi) in d.chunks(w).zip(g.iter()) {
                for (o, &dj) in out.iter_mut().zip(d) {
                    *o += dj * gi;
                }
            }
            out
        };
        let out =
            Tensor::<Cpu, 2>::from_data(TensorData::new(out, [self.rows, w]), &Default::default());
        grads.register::<Cpu>(parent.id, out.into_primitive().tensor());
    }
}

/// A zero per cell that back-propagates Σ_j ∂_ij t_ij to t, as a custom op of the CPU
/// training backend; the pair comes back for any other backend.
#[allow(clippy::type_complexity)]
fn carry_gradient<B: Backend>(
    d: Vec<f32>,
    t: Tensor<B, 2>,
    n: usize,
) -> std::result::Result<Tensor<B, 1>, (Vec<f32>, Tensor<B, 2>)> {
    let [rows, w] = t.dims();
    if d.len() != n * w || !(rows == n || rows == 1) {
        return Err((d, t));
    }
    let prim: Box<dyn Any> = Box::new(t.into_primitive().tensor());
    let t = match prim.downcast::<FloatTensor<CpuTrain>>() {
        Ok(t) => *t,
        Err(other) => {
            let t = *other
                .downcast::<FloatTensor<B>>()
                .expect("the primitive of its own backend");
            return Err((d, Tensor::from_primitive(TensorPrimitive::Float(t))));
        }
    };
    let zeros = Tensor::<Cpu, 1>::zeros([n], &Default::default())
        .into_primitive()
        .tensor();
    let carrier = CarryGradient { d, n, rows, w }
        .prepare::<NoCheckpointing>([t.node.clone()])
        .compute_bound()
        .stateless(zeros);
    let back: Box<dyn Any> = Box::new(carrier);
    let out = *back
        .downcast::<FloatTensor<B>>()
        .expect("B is the CPU training backend here");
    Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
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
    if !computes_on_host::<B>() {
        return per_cell(gene_log_prob_unnormalized(
            likelihood,
            x,
            mu,
            theta,
            dropout_logits,
        ));
    }
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
    with_surrogate(out.per_cell, terms, None, grad, n, &x.device())
}

/// [`fused_log_likelihood_from_logits`] as tensor ops: the path of device backends.
pub(crate) fn tensor_log_likelihood_from_logits<B: Backend>(
    likelihood: GeneLikelihood,
    x: Tensor<B, 2>,
    raw_scale: Tensor<B, 2>,
    theta: Tensor<B, 2>,
    dropout_logits: Option<Tensor<B, 2>>,
    library: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let mu = library.exp() * softmax(raw_scale, 1);
    per_cell(gene_log_prob_unnormalized(
        likelihood,
        x,
        mu,
        theta,
        dropout_logits,
    ))
}

/// [`fused_bernoulli_cross_entropy`] as tensor ops on the dense counts `x`: the path of
/// device backends. The region factors' gradient flows through the per-cell values (the
/// caller keeps the measured cells' ones), as in the reference.
pub(crate) fn tensor_bernoulli_cross_entropy<B: Backend>(
    x: Tensor<B, 2>,
    logits: Tensor<B, 2>,
    library: Tensor<B, 2>,
    region_logits: Option<Tensor<B, 1>>,
) -> Tensor<B, 1> {
    let mut q = sigmoid(logits) * library;
    if let Some(rl) = region_logits {
        q = q * sigmoid(rl).unsqueeze_dim::<2>(0);
    }
    binary_cross_entropy(q, x)
}

/// Σ over the columns, one value per cell.
fn per_cell<B: Backend>(t: Tensor<B, 2>) -> Tensor<B, 1> {
    t.sum_dim(1).squeeze_dim::<1>(1)
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
    if !computes_on_host::<B>() {
        return tensor_log_likelihood_from_logits(
            likelihood,
            x,
            raw_scale,
            theta,
            dropout_logits,
            library,
        );
    }
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
        &x.device(),
    )
}

/// Per-cell binary cross-entropy of the accessibility of n cells x r regions (`open`: each
/// cell's regions with x > 0; `dense`: the same counts as a tensor, when the batch has them)
/// under q = σ(`logits`)·`library`·σ(`region_logits`), from the fused host kernel
/// (dist/bernoulli.rs) with its exact gradients. Returns the per-cell values (gradients to
/// the logits and the library) and, with region factors, a zero-valued scalar that carries
/// their gradient over the cells of `mask` (add it to the objective once).
pub fn fused_bernoulli_cross_entropy<B: Backend>(
    open: &crate::nn::SparseRows,
    dense: Option<&Tensor<B, 2>>,
    logits: Tensor<B, 2>,
    library: Tensor<B, 2>,
    region_logits: Option<Tensor<B, 1>>,
    mask: Tensor<B, 1>,
    grad: bool,
) -> (Tensor<B, 1>, Option<Tensor<B, 1>>) {
    let [n, r] = logits.dims();
    let device = logits.device();
    if !computes_on_host::<B>() {
        let x = dense.cloned().unwrap_or_else(|| {
            Tensor::from_data(TensorData::new(open.to_dense(r), [n, r]), &device)
        });
        let per_cell = tensor_bernoulli_cross_entropy(x, logits, library, region_logits);
        return (per_cell, None);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The device path's tensor likelihood equals the fused host kernel in value and in the
    /// gradients to the logits, θ (one row shared by the cells), the dropout logits and the
    /// library, under unequal weights of the cells.
    #[test]
    fn tensor_likelihood_from_logits_matches_the_fused_kernel() {
        let dev = Default::default();
        let (n, g) = (3, 5);
        let t = |v: Vec<f32>, dims: [usize; 2]| {
            Tensor::<CpuTrain, 2>::from_data(TensorData::new(v, dims), &dev).require_grad()
        };
        let wave = |k: usize, a: f32, b: f32| (0..k).map(|i| (i as f32 * a).sin() * b).collect();
        let counts: Vec<f32> = (0..n * g).map(|i| ((i * 7) % 5) as f32).collect();
        let x = Tensor::<CpuTrain, 2>::from_data(TensorData::new(counts, [n, g]), &dev);
        let weights =
            Tensor::<CpuTrain, 1>::from_data(TensorData::new(vec![1.0f32, -0.5, 2.0], [n]), &dev);
        for lik in [
            GeneLikelihood::Zinb,
            GeneLikelihood::Nb,
            GeneLikelihood::Poisson,
        ] {
            let run = |fused: bool| {
                let raw = t(wave(n * g, 0.9, 1.5), [n, g]);
                let theta = t(
                    wave(g, 0.4, 1.0).iter().map(|v: &f32| v.exp()).collect(),
                    [1, g],
                );
                let pi = t(wave(n * g, 1.7, 2.0), [n, g]);
                let library = t(vec![1.2f32, 2.5, 0.3], [n, 1]);
                let pi_in = (lik == GeneLikelihood::Zinb).then(|| pi.clone());
                let ll = if fused {
                    fused_log_likelihood_from_logits(
                        lik,
                        x.clone(),
                        raw.clone(),
                        theta.clone(),
                        pi_in,
                        library.clone(),
                        true,
                    )
                } else {
                    tensor_log_likelihood_from_logits(
                        lik,
                        x.clone(),
                        raw.clone(),
                        theta.clone(),
                        pi_in,
                        library.clone(),
                    )
                };
                let value: Vec<f32> = ll.clone().into_data().to_vec().unwrap();
                let grads = (ll * weights.clone()).sum().backward();
                let grad = |p: &Tensor<CpuTrain, 2>| -> Vec<f32> {
                    p.grad(&grads)
                        .map(|g| g.into_data().to_vec().unwrap())
                        .unwrap_or_default()
                };
                let mut all = value;
                for p in [&raw, &theta, &pi, &library] {
                    all.extend(grad(p));
                }
                all
            };
            let (fused, tensor) = (run(true), run(false));
            assert_eq!(fused.len(), tensor.len(), "{lik:?}");
            for (a, b) in fused.iter().zip(&tensor) {
                assert!(
                    (a - b).abs() < 2e-3 * (1.0 + b.abs()),
                    "{lik:?}: {a} vs {b}"
                );
            }
        }
    }

    /// The custom op hands t the same gradient as the surrogate term, for t with a row per
    /// cell, one shared row, and a column (the library), under unequal upstream gradients.
    #[test]
    fn carried_gradients_equal_the_surrogate_terms() {
        let dev = Default::default();
        let n = 3;
        let weights =
            Tensor::<CpuTrain, 1>::from_data(TensorData::new(vec![0.5f32, -2.0, 3.0], [n]), &dev);
        for (rows, w) in [(3usize, 4usize), (1, 4), (3, 1)] {
            let values: Vec<f32> = (0..rows * w).map(|k| (k as f32 * 0.7).sin()).collect();
            let d: Vec<f32> = (0..n * w).map(|k| (k as f32 * 1.3).cos()).collect();
            let grad_of = |carried: bool| {
                let t = Tensor::<CpuTrain, 2>::from_data(
                    TensorData::new(values.clone(), [rows, w]),
                    &dev,
                )
                .require_grad();
                let zero = if carried {
                    carry_gradient(d.clone(), t.clone(), n).expect("the CPU training backend")
                } else {
                    surrogate_term(d.clone(), t.clone(), n, &dev)
                };
                let value: Vec<f32> = zero.clone().into_data().to_vec().unwrap();
                assert!(value.iter().all(|&v| v == 0.0));
                let grads = (zero * weights.clone()).sum().backward();
                t.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap()
            };
            let (carried, surrogate) = (grad_of(true), grad_of(false));
            for (a, b) in carried.iter().zip(&surrogate) {
                assert!((a - b).abs() < 1e-6, "{rows} x {w}: {a} vs {b}");
            }
            assert!(carried.iter().any(|&v| v != 0.0));
        }
    }
}
