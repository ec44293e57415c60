//! scArches reference mapping (scvi.md §10): a query model that starts from the reference's
//! weights, grown with fresh values where the query adds categories, and trains only the
//! covariate-related weights through gradient masks.

use burn::module::{Param, RunningState};
use burn::nn::Linear;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::scvi::{DecoderScvi, Scvi};
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
fn grow<B: Backend, const D: usize>(
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

fn grow_param<B: Backend, const D: usize>(
    r: &Param<Tensor<B, D>>,
    f: &Param<Tensor<B, D>>,
) -> Result<Param<Tensor<B, D>>> {
    Ok(crate::nn::trainable(grow(r.val(), f.val())?))
}

fn grow_linear<B: Backend>(r: &Linear<B>, f: &Linear<B>) -> Result<Linear<B>> {
    let bias = match (&r.bias, &f.bias) {
        (Some(rb), Some(fb)) => Some(grow_param(rb, fb)?),
        _ => None,
    };
    Ok(Linear {
        weight: grow_param(&r.weight, &f.weight)?,
        bias,
    })
}

fn grow_fc<B: Backend>(r: &FcLayers<B>, f: &FcLayers<B>) -> Result<FcLayers<B>> {
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

fn grow_encoder<B: Backend>(r: &Encoder<B>, f: &Encoder<B>) -> Result<Encoder<B>> {
    Ok(Encoder {
        encoder: grow_fc(&r.encoder, &f.encoder)?,
        mean_encoder: grow_linear(&r.mean_encoder, &f.mean_encoder)?,
        var_encoder: grow_linear(&r.var_encoder, &f.var_encoder)?,
        var_eps: f.var_eps,
    })
}

/// `fresh` (built for the query's dimensions) with the reference's weights transferred:
/// equal shapes are copied, grown ones keep the reference's values first and fresh values
/// in the appended part (new one-hot rows, new px_r rows); library priors keep the
/// reference's values for its batches and the query's for new ones.
pub fn transfer_weights<B: Backend>(reference: &Scvi<B>, fresh: Scvi<B>) -> Result<Scvi<B>> {
    let (r, f) = (reference, &fresh);
    Ok(Scvi {
        z_encoder: grow_encoder(&r.z_encoder, &f.z_encoder)?,
        l_encoder: grow_encoder(&r.l_encoder, &f.l_encoder)?,
        decoder: DecoderScvi {
            px_decoder: grow_fc(&r.decoder.px_decoder, &f.decoder.px_decoder)?,
            px_scale_decoder: grow_linear(
                &r.decoder.px_scale_decoder,
                &f.decoder.px_scale_decoder,
            )?,
            px_r_decoder: grow_linear(&r.decoder.px_r_decoder, &f.decoder.px_r_decoder)?,
            px_dropout_decoder: grow_linear(
                &r.decoder.px_dropout_decoder,
                &f.decoder.px_dropout_decoder,
            )?,
        },
        px_r: grow_param(&r.px_r, &f.px_r)?,
        library_log_means: RunningState::new(grow(
            r.library_log_means.value_sync(),
            f.library_log_means.value_sync(),
        )?),
        library_log_vars: RunningState::new(grow(
            r.library_log_vars.value_sync(),
            f.library_log_vars.value_sync(),
        )?),
        config: f.config.clone(),
        fused_likelihood: f.fused_likelihood,
    })
}

/// The module-level parts of freezing: frozen batch norms stop updating their running
/// statistics (momentum 0; minibatch statistics are still used in training), and with
/// `freeze_dropout` dropout is off outside the library encoder.
pub fn apply_module_freeze<B: Backend>(mut m: Scvi<B>, spec: &FreezeSpec) -> Scvi<B> {
    if spec.unfrozen {
        return m;
    }
    let freeze_bn = |layers: &mut FcLayers<B>, on: bool| {
        for l in layers.layers.iter_mut() {
            if let (Some(bn), true) = (l.batch_norm.as_mut(), on) {
                bn.momentum = 0.0;
            }
        }
    };
    freeze_bn(&mut m.z_encoder.encoder, spec.freeze_batchnorm_encoder);
    freeze_bn(&mut m.decoder.px_decoder, spec.freeze_batchnorm_decoder);
    if spec.freeze_dropout {
        m.z_encoder.encoder.dropout = 0.0;
    }
    m
}

fn fc_rules<B: AutodiffBackend>(
    layers: &FcLayers<B>,
    n_cov: usize,
    first_layer_free: bool,
    bn_frozen: bool,
    rules: &mut Vec<GradRule<B::InnerBackend>>,
) {
    for (i, l) in layers.layers.iter().enumerate() {
        if !(i == 0 && first_layer_free) {
            let w = l.linear.weight.val();
            let [d_in, d_out] = w.dims();
            let injected = n_cov > 0 && (i == 0 || layers.inject_covariates);
            // Burn's weight is [in, out]: the covariate one-hots are the last n_cov input rows
            let keep_rows = if injected { n_cov } else { 0 };
            let mut mask = vec![0f32; d_in * d_out];
            mask[(d_in - keep_rows) * d_out..].fill(1.0);
            let device = w.device();
            rules.push(GradRule::Mask2(
                l.linear.weight.id,
                Tensor::from_data(TensorData::new(mask, [d_in, d_out]), &device),
            ));
            if let Some(b) = &l.linear.bias {
                rules.push(GradRule::Zero1(b.id));
            }
        }
        if let (Some(bn), true) = (&l.batch_norm, bn_frozen) {
            rules.push(GradRule::Drop1(bn.gamma.id));
            rules.push(GradRule::Drop1(bn.beta.id));
        }
    }
}

/// The gradient rules of scvi.md §10.6 for a query model (the library encoder trains freely).
pub fn grad_rules<B: AutodiffBackend>(
    m: &Scvi<B>,
    spec: &FreezeSpec,
) -> Vec<GradRule<B::InnerBackend>> {
    let mut rules = Vec::new();
    if spec.unfrozen {
        return rules;
    }
    let c = &m.config;
    let cov = c.covariate_width();
    let enc_cov = if c.encode_covariates { cov } else { 0 };
    fc_rules(
        &m.z_encoder.encoder,
        enc_cov,
        !spec.freeze_expression,
        spec.freeze_batchnorm_encoder,
        &mut rules,
    );
    fc_rules(
        &m.decoder.px_decoder,
        cov,
        !spec.freeze_decoder_first_layer,
        spec.freeze_batchnorm_decoder,
        &mut rules,
    );
    for lin in [
        &m.z_encoder.mean_encoder,
        &m.z_encoder.var_encoder,
        &m.decoder.px_scale_decoder,
        &m.decoder.px_r_decoder,
        &m.decoder.px_dropout_decoder,
    ] {
        rules.push(GradRule::Drop2(lin.weight.id));
        if let Some(b) = &lin.bias {
            rules.push(GradRule::Drop1(b.id));
        }
    }
    rules.push(GradRule::Drop2(m.px_r.id));
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Cpu, CpuTrain};
    use crate::data::{library_prior, toy_dataset};
    use crate::models::scvi::{ScviConfig, ScviExtra, ScviKind};
    use crate::train::{train, Silent, TrainConfig, TrainState};

    fn vals<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    #[test]
    fn query_grows_new_batch_rows_and_trains_only_covariate_weights() {
        let _rng = crate::TEST_RNG_LOCK.lock();
        let (ref_data, query_data) = (toy_dataset(2), toy_dataset(3));
        let reference = Scvi::<Cpu>::new(
            ScviConfig::new(6, 2),
            library_prior(&ref_data),
            &Default::default(),
        )
        .unwrap();
        let fresh = Scvi::<Cpu>::new(
            ScviConfig::new(6, 3),
            library_prior(&query_data),
            &Default::default(),
        )
        .unwrap();
        let query = apply_module_freeze(
            transfer_weights(&reference, fresh).unwrap(),
            &FreezeSpec::default(),
        );
        // decoder first layer: [n_latent + 3 batches, hidden], the reference's 12 rows first
        let rw = vals(reference.decoder.px_decoder.layers[0].linear.weight.val());
        let before = vals(query.decoder.px_decoder.layers[0].linear.weight.val());
        assert_eq!(before.len(), rw.len() / 12 * 13);
        assert_eq!(&before[..rw.len()], &rw[..]);
        assert_eq!(vals(query.px_r.val()), vals(reference.px_r.val()));
        let (rm, qm) = (
            vals(reference.library_log_means.value_sync()),
            vals(query.library_log_means.value_sync()),
        );
        assert_eq!(&qm[..2], &rm[..]);
        assert_eq!(qm[2], library_prior(&query_data).0[2]);

        let tc = TrainConfig {
            max_epochs: Some(2),
            seed: Some(1),
            batch_size: 16,
            ..Default::default()
        };
        let mut state = TrainState::default();
        let spec = FreezeSpec::default();
        let (after, r) = train::<ScviKind, CpuTrain>(
            query.clone(),
            &[&query_data],
            &tc,
            &ScviExtra {
                freeze: Some(spec.clone()),
            },
            &mut state,
            &mut Silent,
            &Default::default(),
            None,
        );
        r.unwrap();
        assert_eq!(
            vals(after.px_r.val()),
            vals(query.px_r.val()),
            "px_r must stay frozen"
        );
        assert_eq!(
            vals(after.decoder.px_scale_decoder.weight.val()),
            vals(query.decoder.px_scale_decoder.weight.val())
        );
        let after_w = vals(after.decoder.px_decoder.layers[0].linear.weight.val());
        let hidden = 128;
        let moved = |rows: std::ops::Range<usize>| {
            rows.flat_map(|r| (0..hidden).map(move |h| r * hidden + h))
                .map(|i| (after_w[i] - before[i]).abs())
                .fold(0f32, f32::max)
        };
        // latent rows only feel weight decay (tiny); the batch one-hot rows learn
        assert!(moved(0..10) < 1e-6, "latent rows moved by {}", moved(0..10));
        assert!(moved(10..13) > 1e-4, "covariate rows did not train");
        // encoder running statistics are frozen (momentum 0); decoder batch norm still learns
        let enc_rm = |m: &Scvi<Cpu>| {
            vals(
                m.z_encoder.encoder.layers[0]
                    .batch_norm
                    .as_ref()
                    .unwrap()
                    .running_mean
                    .value_sync(),
            )
        };
        assert_eq!(enc_rm(&after), enc_rm(&query));
        let dec_gamma = |m: &Scvi<Cpu>| {
            vals(
                m.decoder.px_decoder.layers[0]
                    .batch_norm
                    .as_ref()
                    .unwrap()
                    .gamma
                    .val(),
            )
        };
        assert_ne!(dec_gamma(&after), dec_gamma(&query));
    }
}
