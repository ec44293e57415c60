//! scArches reference mapping for any model of the family (scvi.md §10): the freezing
//! options, the transfer of a reference's weights into a query model grown for new
//! categories, and the gradient rules that train only the covariate-related weights.

use burn::module::{Param, RunningState};
use burn::nn::Linear;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::{Encoder, FcLayer, FcLayers, TorchBatchNorm};
use crate::train::grad::GradRule;

/// The reference's freezing options, with its defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct FreezeSpec {
    pub unfrozen: bool,
    pub freeze_dropout: bool,
    pub freeze_expression: bool,
    pub freeze_decoder_first_layer: bool,
    pub freeze_batchnorm_encoder: bool,
    pub freeze_batchnorm_decoder: bool,
}

impl Default for FreezeSpec {
    fn default() -> Self {
        Self {
            unfrozen: false,
            freeze_dropout: false,
            freeze_expression: true,
            freeze_decoder_first_layer: true,
            freeze_batchnorm_encoder: true,
            freeze_batchnorm_decoder: false,
        }
    }
}

/// `fresh` with the reference's values in its leading block along every dimension.
pub fn grow<B: Backend, const D: usize>(
    reference: Tensor<B, D>,
    fresh: Tensor<B, D>,
) -> Result<Tensor<B, D>> {
    let (r, f) = (reference.dims(), fresh.dims());
    if r == f {
        return Ok(reference);
    }
    if r.iter().zip(f.iter()).any(|(a, b)| a > b) {
        return Err(Error::InvalidData(format!(
            "the query model does not match the reference: a tensor of shape {r:?} cannot grow into {f:?}"
        )));
    }
    let ranges: [std::ops::Range<usize>; D] = std::array::from_fn(|d| 0..r[d]);
    Ok(fresh.slice_assign(ranges, reference))
}

pub fn grow_param<B: Backend, const D: usize>(
    r: &Param<Tensor<B, D>>,
    f: &Param<Tensor<B, D>>,
) -> Result<Param<Tensor<B, D>>> {
    Ok(crate::nn::trainable(grow(r.val(), f.val())?))
}

pub fn grow_linear<B: Backend>(r: &Linear<B>, f: &Linear<B>) -> Result<Linear<B>> {
    let bias = match (&r.bias, &f.bias) {
        (Some(rb), Some(fb)) => Some(grow_param(rb, fb)?),
        _ => None,
    };
    Ok(Linear {
        weight: grow_param(&r.weight, &f.weight)?,
        bias,
    })
}

pub fn grow_fc<B: Backend>(r: &FcLayers<B>, f: &FcLayers<B>) -> Result<FcLayers<B>> {
    let layers = r
        .layers
        .iter()
        .zip(&f.layers)
        .map(|(rl, fl)| {
            let batch_norm = match (&rl.batch_norm, &fl.batch_norm) {
                (Some(rb), Some(fb)) => Some(TorchBatchNorm {
                    gamma: grow_param(&rb.gamma, &fb.gamma)?,
                    beta: grow_param(&rb.beta, &fb.beta)?,
                    running_mean: RunningState::new(rb.running_mean.value_sync()),
                    running_var: RunningState::new(rb.running_var.value_sync()),
                    momentum: fb.momentum,
                }),
                _ => None,
            };
            Ok(FcLayer {
                linear: grow_linear(&rl.linear, &fl.linear)?,
                batch_norm,
                layer_norm: fl.layer_norm,
                activation: fl.activation,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(FcLayers {
        layers,
        inject_covariates: f.inject_covariates,
        dropout: f.dropout,
        leaky_relu: f.leaky_relu,
    })
}

pub fn grow_encoder<B: Backend>(r: &Encoder<B>, f: &Encoder<B>) -> Result<Encoder<B>> {
    Ok(Encoder {
        encoder: grow_fc(&r.encoder, &f.encoder)?,
        mean_encoder: grow_linear(&r.mean_encoder, &f.mean_encoder)?,
        var_encoder: grow_linear(&r.var_encoder, &f.var_encoder)?,
        var_eps: f.var_eps,
    })
}

/// The rules of one FCLayers stack whose one-hot covariate block has width `n_cov`: each
/// linear layer learns only the rows of its covariate one-hots (none where they are not
/// injected) and not its bias, both still decayed (scvi-tools' gradient hooks), except the
/// first layer when `first_layer_free`; batch-norm scale and shift are dropped when
/// `bn_frozen`.
pub fn fc_rules<B: AutodiffBackend>(
    layers: &FcLayers<B>,
    n_cov: usize,
    first_layer_free: bool,
    bn_frozen: bool,
    rules: &mut Vec<GradRule<B::InnerBackend>>,
) {
    for (i, l) in layers.layers.iter().enumerate() {
        if !(i == 0 && first_layer_free) {
            let injected = n_cov > 0 && (i == 0 || layers.inject_covariates);
            covariate_rows_rule(&l.linear, if injected { n_cov } else { 0 }, rules);
        }
        if let (Some(bn), true) = (&l.batch_norm, bn_frozen) {
            rules.push(GradRule::Drop1(bn.gamma.id));
            rules.push(GradRule::Drop1(bn.beta.id));
        }
    }
}

/// A linear map that learns only its last `n_cov` input rows (its covariate one-hots; none
/// when 0) and not its bias, both still decayed.
pub fn covariate_rows_rule<B: AutodiffBackend>(
    linear: &Linear<B>,
    n_cov: usize,
    rules: &mut Vec<GradRule<B::InnerBackend>>,
) {
    let w = linear.weight.val();
    let [d_in, d_out] = w.dims();
    // Burn's weight is [in, out]: the covariate one-hots are the last n_cov input rows.
    let mut mask = vec![0f32; d_in * d_out];
    mask[(d_in - n_cov) * d_out..].fill(1.0);
    rules.push(GradRule::Mask2(
        linear.weight.id,
        Tensor::from_data(TensorData::new(mask, [d_in, d_out]), &w.device()),
    ));
    if let Some(b) = &linear.bias {
        rules.push(GradRule::Zero1(b.id));
    }
}

/// A linear map that does not train (its parameters leave the optimizer).
pub fn drop_linear<B: Backend, I: Backend>(linear: &Linear<B>, rules: &mut Vec<GradRule<I>>) {
    rules.push(GradRule::Drop2(linear.weight.id));
    if let Some(b) = &linear.bias {
        rules.push(GradRule::Drop1(b.id));
    }
}

/// Stops the running statistics of the stack's batch norms (momentum 0; minibatch
/// statistics are still used in training).
pub fn freeze_batchnorm_statistics<B: Backend>(layers: &mut FcLayers<B>) {
    for l in layers.layers.iter_mut() {
        if let Some(bn) = l.batch_norm.as_mut() {
            bn.momentum = 0.0;
        }
    }
}
