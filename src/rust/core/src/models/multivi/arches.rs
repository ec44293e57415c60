//! scArches reference mapping of MULTIVI (scvi-tools' ArchesMixin on MULTIVAE, on the
//! family's shared pieces in family::arches): a query model starts from the reference's
//! weights, grown where the query adds categories, and trains only the weights of the
//! covariate one-hots. scvi-tools decides what trains by module names, so each FCLayers
//! stack carries its scvi-tools name here.

use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::error::{invalid_arg, Error, Result};
use crate::family::arches::{
    covariate_rows_rule, drop_linear, fc_rules, freeze_batchnorm_statistics, grow_encoder, grow_fc,
    grow_linear, grow_param, FreezeSpec,
};
use crate::models::multivi::{
    AccessibilityDecoder, ExpressionDecoder, LibraryEncoder, ModalityWeights, Multivae,
    ProteinDecoder,
};
use crate::nn::FcLayers;
use crate::train::grad::GradRule;

/// `g(reference, fresh)` where both have the part, None where neither has it.
fn both<T, U>(r: &Option<T>, f: &Option<T>, g: impl Fn(&T, &T) -> Result<U>) -> Result<Option<U>> {
    match (r, f) {
        (Some(r), Some(f)) => Ok(Some(g(r, f)?)),
        (None, None) => Ok(None),
        _ => Err(Error::InvalidData(
            "the query model does not match the reference: a modality is missing on one side"
                .into(),
        )),
    }
}

fn grow_library<B: Backend>(
    r: &LibraryEncoder<B>,
    f: &LibraryEncoder<B>,
) -> Result<LibraryEncoder<B>> {
    Ok(LibraryEncoder {
        px_decoder: grow_fc(&r.px_decoder, &f.px_decoder)?,
        output: grow_linear(&r.output, &f.output)?,
    })
}

/// `fresh` (built for the query's categories) with the reference's weights: equal shapes are
/// copied, grown ones (new batch and covariate one-hot rows, per-batch protein dispersions)
/// keep the reference's values first and fresh values after them. A reference with one
/// modality weight per training cell cannot map other cells.
pub fn transfer_weights<B: Backend>(
    reference: &Multivae<B>,
    fresh: Multivae<B>,
) -> Result<Multivae<B>> {
    let (r, f) = (reference, &fresh);
    if r.config.modality_weights == ModalityWeights::Cell {
        return Err(invalid_arg(
            "reference",
            "was built with modality_weights = \"cell\" (one weight per training cell); it cannot map query cells",
        ));
    }
    Ok(Multivae {
        z_encoder_expression: grow_encoder(&r.z_encoder_expression, &f.z_encoder_expression)?,
        l_encoder_expression: grow_library(&r.l_encoder_expression, &f.l_encoder_expression)?,
        z_encoder_accessibility: grow_encoder(
            &r.z_encoder_accessibility,
            &f.z_encoder_accessibility,
        )?,
        l_encoder_accessibility: grow_library(
            &r.l_encoder_accessibility,
            &f.l_encoder_accessibility,
        )?,
        z_decoder_expression: both(&r.z_decoder_expression, &f.z_decoder_expression, |r, f| {
            Ok(ExpressionDecoder {
                px_decoder: grow_fc(&r.px_decoder, &f.px_decoder)?,
                px_scale_decoder: grow_linear(&r.px_scale_decoder, &f.px_scale_decoder)?,
                px_dropout_decoder: grow_linear(&r.px_dropout_decoder, &f.px_dropout_decoder)?,
            })
        })?,
        z_decoder_accessibility: both(
            &r.z_decoder_accessibility,
            &f.z_decoder_accessibility,
            |r, f| {
                Ok(AccessibilityDecoder {
                    px_decoder: grow_fc(&r.px_decoder, &f.px_decoder)?,
                    output: grow_linear(&r.output, &f.output)?,
                })
            },
        )?,
        z_encoder_protein: both(&r.z_encoder_protein, &f.z_encoder_protein, grow_encoder)?,
        z_decoder_pro: both(&r.z_decoder_pro, &f.z_decoder_pro, |r, f| {
            Ok(ProteinDecoder {
                py_back_decoder: grow_fc(&r.py_back_decoder, &f.py_back_decoder)?,
                py_back_mean_log_alpha: grow_linear(
                    &r.py_back_mean_log_alpha,
                    &f.py_back_mean_log_alpha,
                )?,
                py_back_mean_log_beta: grow_linear(
                    &r.py_back_mean_log_beta,
                    &f.py_back_mean_log_beta,
                )?,
                py_fore_decoder: grow_fc(&r.py_fore_decoder, &f.py_fore_decoder)?,
                py_fore_scale_decoder: grow_linear(
                    &r.py_fore_scale_decoder,
                    &f.py_fore_scale_decoder,
                )?,
                sigmoid_decoder: grow_fc(&r.sigmoid_decoder, &f.sigmoid_decoder)?,
                py_background_decoder: grow_linear(
                    &r.py_background_decoder,
                    &f.py_background_decoder,
                )?,
            })
        })?,
        py_r: both(&r.py_r, &f.py_r, grow_param)?,
        px_r: grow_param(&r.px_r, &f.px_r)?,
        region_factors: both(&r.region_factors, &f.region_factors, grow_param)?,
        mod_weights: both(&r.mod_weights, &f.mod_weights, grow_param)?,
        config: f.config.clone(),
    })
}

/// Each FCLayers stack with its scvi-tools name and the width of its covariate block.
fn stacks<B: Backend>(m: &Multivae<B>) -> Vec<(&'static str, &FcLayers<B>, usize)> {
    let cov = m.config.covariate_width();
    let enc_cov = if m.config.encode_covariates { cov } else { 0 };
    let mut out = vec![
        (
            "z_encoder_expression.encoder",
            &m.z_encoder_expression.encoder,
            enc_cov,
        ),
        (
            "l_encoder_expression.px_decoder",
            &m.l_encoder_expression.px_decoder,
            enc_cov,
        ),
        (
            "z_encoder_accessibility.encoder",
            &m.z_encoder_accessibility.encoder,
            enc_cov,
        ),
        (
            "l_encoder_accessibility.px_decoder",
            &m.l_encoder_accessibility.px_decoder,
            enc_cov,
        ),
    ];
    if let Some(e) = &m.z_encoder_protein {
        out.push(("z_encoder_protein.encoder", &e.encoder, enc_cov));
    }
    if let Some(d) = &m.z_decoder_expression {
        out.push(("z_decoder_expression.px_decoder", &d.px_decoder, cov));
    }
    if let Some(d) = &m.z_decoder_accessibility {
        out.push(("z_decoder_accessibility.px_decoder", &d.px_decoder, cov));
    }
    if let Some(d) = &m.z_decoder_pro {
        out.push(("z_decoder_pro.py_back_decoder", &d.py_back_decoder, cov));
        out.push(("z_decoder_pro.py_fore_decoder", &d.py_fore_decoder, cov));
        out.push(("z_decoder_pro.sigmoid_decoder", &d.sigmoid_decoder, cov));
    }
    out
}

/// What freezing does to the module itself: batch norms named as frozen stop their running
/// statistics, and `freeze_dropout` switches every dropout off.
pub fn apply_module_freeze<B: Backend>(mut m: Multivae<B>, spec: &FreezeSpec) -> Multivae<B> {
    if spec.unfrozen {
        return m;
    }
    let freeze = |name: &str, stack: &mut FcLayers<B>| {
        if (name.contains("decoder") && spec.freeze_batchnorm_decoder)
            || (name.contains("encoder") && spec.freeze_batchnorm_encoder)
        {
            freeze_batchnorm_statistics(stack);
        }
        if spec.freeze_dropout {
            stack.dropout = 0.0;
        }
    };
    // The stacks of stacks(), with the same names.
    freeze("z_encoder_expression", &mut m.z_encoder_expression.encoder);
    freeze(
        "l_encoder_expression.px_decoder",
        &mut m.l_encoder_expression.px_decoder,
    );
    freeze(
        "z_encoder_accessibility",
        &mut m.z_encoder_accessibility.encoder,
    );
    freeze(
        "l_encoder_accessibility.px_decoder",
        &mut m.l_encoder_accessibility.px_decoder,
    );
    if let Some(e) = m.z_encoder_protein.as_mut() {
        freeze("z_encoder_protein", &mut e.encoder);
    }
    if let Some(d) = m.z_decoder_expression.as_mut() {
        freeze("z_decoder_expression.px_decoder", &mut d.px_decoder);
    }
    if let Some(d) = m.z_decoder_accessibility.as_mut() {
        freeze("z_decoder_accessibility.px_decoder", &mut d.px_decoder);
    }
    if let Some(d) = m.z_decoder_pro.as_mut() {
        freeze("z_decoder_pro", &mut d.py_back_decoder);
        freeze("z_decoder_pro", &mut d.py_fore_decoder);
        freeze("z_decoder_pro", &mut d.sigmoid_decoder);
    }
    m
}

/// The gradient rules of a query model (scvi-tools' `_set_params_online_update` on
/// MULTIVAE's names): every stack learns only its covariate one-hot rows, its first layer
/// entirely where `freeze_expression` (encoders) or `freeze_decoder_first_layer`
/// ("px_decoder" stacks, the library encoders' included) is off; batch-norm scale and shift
/// train in stacks named as not frozen; the protein decoder's heads learn their covariate
/// rows; every other weight stays as the reference left it.
pub fn grad_rules<B: AutodiffBackend>(
    m: &Multivae<B>,
    spec: &FreezeSpec,
) -> Vec<GradRule<B::InnerBackend>> {
    let mut rules = Vec::new();
    if spec.unfrozen {
        return rules;
    }
    for (name, stack, n_cov) in stacks(m) {
        let first_layer_free = (!spec.freeze_expression && name.contains("encoder"))
            || (!spec.freeze_decoder_first_layer && name.contains("px_decoder"));
        let bn_trainable = (name.contains("encoder") && !spec.freeze_batchnorm_encoder)
            || (name.contains("decoder") && !spec.freeze_batchnorm_decoder);
        fc_rules(stack, n_cov, first_layer_free, !bn_trainable, &mut rules);
    }
    let cov = m.config.covariate_width();
    if let Some(d) = &m.z_decoder_pro {
        for head in [
            &d.py_back_mean_log_alpha,
            &d.py_back_mean_log_beta,
            &d.py_fore_scale_decoder,
            &d.py_background_decoder,
        ] {
            covariate_rows_rule(head, cov, &mut rules);
        }
    }
    let mut frozen = vec![
        &m.z_encoder_expression.mean_encoder,
        &m.z_encoder_expression.var_encoder,
        &m.l_encoder_expression.output,
        &m.z_encoder_accessibility.mean_encoder,
        &m.z_encoder_accessibility.var_encoder,
        &m.l_encoder_accessibility.output,
    ];
    if let Some(e) = &m.z_encoder_protein {
        frozen.extend([&e.mean_encoder, &e.var_encoder]);
    }
    if let Some(d) = &m.z_decoder_expression {
        frozen.extend([&d.px_scale_decoder, &d.px_dropout_decoder]);
    }
    if let Some(d) = &m.z_decoder_accessibility {
        frozen.push(&d.output);
    }
    for lin in frozen {
        drop_linear(lin, &mut rules);
    }
    rules.push(GradRule::Drop1(m.px_r.id));
    if let Some(r) = &m.region_factors {
        rules.push(GradRule::Drop1(r.id));
    }
    for p in [&m.py_r, &m.mod_weights].into_iter().flatten() {
        rules.push(GradRule::Drop2(p.id));
    }
    rules
}
