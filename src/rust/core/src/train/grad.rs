//! Per-parameter gradient rules applied between the backward pass and the optimizer step
//! (scArches freezing: dropped parameters, masked weights, zeroed biases).

use burn::module::ParamId;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

/// What happens to one parameter's gradient before the optimizer step.
pub enum GradRule<B: Backend> {
    /// Not trained (removed from the optimizer: no weight decay either), by rank.
    Drop1(ParamId),
    Drop2(ParamId),
    /// Gradient times a 0/1 mask of the weight's shape (weight decay still applies).
    Mask2(ParamId, Tensor<B, 2>),
    /// Gradient zeroed (weight decay still applies).
    Zero1(ParamId),
}

/// Applies the rules to one step's gradients.
pub fn apply_grad_rules<B: AutodiffBackend>(
    grads: &mut GradientsParams,
    rules: &[GradRule<B::InnerBackend>],
) {
    for rule in rules {
        match rule {
            GradRule::Drop1(id) => {
                grads.remove::<B::InnerBackend, 1>(*id);
            }
            GradRule::Drop2(id) => {
                grads.remove::<B::InnerBackend, 2>(*id);
            }
            GradRule::Mask2(id, mask) => {
                if let Some(g) = grads.remove::<B::InnerBackend, 2>(*id) {
                    grads.register::<B::InnerBackend, 2>(*id, g * mask.clone());
                }
            }
            GradRule::Zero1(id) => {
                if let Some(g) = grads.remove::<B::InnerBackend, 1>(*id) {
                    grads.register::<B::InnerBackend, 1>(*id, g.zeros_like());
                }
            }
        }
    }
}

/// Scales every gradient of `module` by min(1, max_norm / (‖g‖ + 1e-6)), ‖g‖ the global L2
/// norm over all of them (torch's `clip_grad_norm_`, which SpliceVI's training plan uses).
pub fn clip_global_norm<B: AutodiffBackend, M: burn::module::AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) {
    struct SquaredNorm<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for SquaredNorm<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let s = g.powf_scalar(2.0).sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads
                    .register::<B::InnerBackend, D>(param.id, g * self.factor);
            }
        }
    }
    let mut norm = SquaredNorm::<B> { grads, total: None };
    module.visit(&mut norm);
    let Some(total) = norm.total else { return };
    let total: f64 = total.into_scalar().elem::<f64>().sqrt();
    let factor = max_norm / (total + 1e-6);
    if factor < 1.0 {
        module.visit(&mut Scale { grads, factor });
    }
}
