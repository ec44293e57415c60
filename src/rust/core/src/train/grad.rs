//! Per-parameter gradient rules applied between the backward pass and the optimizer step
//! (scArches freezing: dropped parameters, masked weights, zeroed biases).

use burn::module::ParamId;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

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
