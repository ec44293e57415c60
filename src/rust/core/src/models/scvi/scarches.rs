//! scArches reference mapping of SCVI (scvi.md §10) on the family's shared pieces
//! (family::arches): a query model that starts from the reference's weights, grown with fresh
//! values where the query adds categories, and trains only the covariate-related weights
//! through gradient masks.

use burn::module::RunningState;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::error::Result;
use crate::family::arches::FreezeSpec;
use crate::family::arches::{
    drop_linear, fc_rules, freeze_batchnorm_statistics, grow, grow_encoder, grow_fc, grow_linear,
    grow_param,
};
use crate::models::scvi::{DecoderScvi, Scvi};
use crate::train::grad::GradRule;

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
        // new batches' rows start fresh; the whole table trains (scvi-tools' rule)
        batch_embedding: match (&r.batch_embedding, &f.batch_embedding) {
            (Some(re), Some(fe)) => Some(grow_param(re, fe)?),
            _ => None,
        },
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
    if spec.freeze_batchnorm_encoder {
        freeze_batchnorm_statistics(&mut m.z_encoder.encoder);
    }
    if spec.freeze_batchnorm_decoder {
        freeze_batchnorm_statistics(&mut m.decoder.px_decoder);
    }
    if spec.freeze_dropout {
        m.z_encoder.encoder.dropout = 0.0;
    }
    m
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
        drop_linear(lin, &mut rules);
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
    use burn::tensor::Tensor;

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
            &[Default::default()],
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
