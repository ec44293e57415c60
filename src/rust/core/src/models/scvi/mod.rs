//! The SCVI variational autoencoder (scvi.md §2–§6): inference, generative model and loss.

pub mod importance;
pub mod model;
pub mod queries;
pub mod scarches;
mod scvi_tools;
pub mod synth;

pub use model::{ScviExtra, ScviKind, ScviModel};

use burn::module::{Module, Param, RunningState};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{activation, backend::Backend, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::batch::Batch;
use crate::data::covariate_width;
use crate::dist;
use crate::dist::fused::Likelihood;
use crate::dist::surrogate::fused_log_likelihood_from_logits;
use crate::error::{invalid_arg, Result};
use crate::models::options::{
    check_dropout_rates, check_sizes, BatchRepresentation, Dispersion, GeneLikelihood,
    LatentDistribution, NormPlacement, BATCH_EMBEDDING_DIM,
};
use crate::nn;
use crate::nn::{Encoder, FcLayers, FcOptions};

/// Model hyperparameters plus the data dimensions needed to rebuild the module.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScviConfig {
    pub n_input: usize,
    pub n_batch: usize,
    pub n_labels: usize,
    pub n_cats_per_cov: Vec<usize>,
    pub n_continuous_cov: usize,
    pub use_size_factor: bool,
    pub n_hidden: usize,
    pub n_latent: usize,
    pub n_layers: usize,
    pub dropout_rate: f64,
    pub dispersion: Dispersion,
    pub gene_likelihood: GeneLikelihood,
    pub latent_distribution: LatentDistribution,
    pub use_observed_lib_size: bool,
    pub log_variational: bool,
    pub encode_covariates: bool,
    pub deeply_inject_covariates: bool,
    pub use_batch_norm: NormPlacement,
    pub use_layer_norm: NormPlacement,
    pub var_eps: f64,
    /// Models saved before the option existed are one-hot.
    #[serde(default)]
    pub batch_representation: BatchRepresentation,
}

impl ScviConfig {
    /// scvi-tools defaults for the given data dimensions.
    pub fn new(n_input: usize, n_batch: usize) -> Self {
        Self {
            n_input,
            n_batch,
            n_labels: 1,
            n_cats_per_cov: vec![],
            n_continuous_cov: 0,
            use_size_factor: false,
            n_hidden: 128,
            n_latent: 10,
            n_layers: 1,
            dropout_rate: 0.1,
            dispersion: Dispersion::Gene,
            gene_likelihood: GeneLikelihood::Zinb,
            latent_distribution: LatentDistribution::Normal,
            use_observed_lib_size: true,
            log_variational: true,
            encode_covariates: false,
            deeply_inject_covariates: true,
            use_batch_norm: NormPlacement::Both,
            use_layer_norm: NormPlacement::None,
            var_eps: 1e-4,
            batch_representation: BatchRepresentation::OneHot,
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_sizes(
            &[
                ("n_hidden", self.n_hidden),
                ("n_latent", self.n_latent),
                ("n_layers", self.n_layers),
            ],
            self.n_input,
        )?;
        check_dropout_rates(&[("dropout_rate", self.dropout_rate)])?;
        if self.n_input == 0 {
            return Err(invalid_arg("x", "has no genes"));
        }
        Ok(())
    }

    /// The size factor replaces the library and forces the observed library size.
    pub fn uses_latent_library(&self) -> bool {
        !self.use_observed_lib_size && !self.use_size_factor
    }

    /// Width of the one-hot covariates the layers take: with a batch embedding the batch is
    /// an input instead, so only the categorical covariates remain.
    pub fn covariate_width(&self) -> usize {
        let batch = if self.embeds_batch() { 1 } else { self.n_batch };
        covariate_width(batch, &self.n_cats_per_cov)
    }

    pub fn embeds_batch(&self) -> bool {
        self.batch_representation == BatchRepresentation::Embedding
    }

    /// Input columns the batch embedding adds (to the decoder; to the encoders with
    /// `encode_covariates`).
    fn batch_embedding_width(&self) -> usize {
        if self.embeds_batch() {
            BATCH_EMBEDDING_DIM
        } else {
            0
        }
    }

    fn dispersion_columns(&self) -> usize {
        match self.dispersion {
            Dispersion::Gene | Dispersion::GeneCell => 1,
            Dispersion::GeneBatch => self.n_batch,
            Dispersion::GeneLabel => self.n_labels,
        }
    }
}

#[derive(Module, Debug)]
pub struct DecoderScvi<B: Backend> {
    pub px_decoder: FcLayers<B>,
    pub px_scale_decoder: Linear<B>,
    pub px_r_decoder: Linear<B>,
    pub px_dropout_decoder: Linear<B>,
}

/// The SCVI module. Parameter names follow scvi-tools' state dict (scvi.md §3.5); Linear
/// weights use Burn's [in, out] layout (the transpose of PyTorch's).
#[derive(Module, Debug)]
pub struct Scvi<B: Backend> {
    pub z_encoder: Encoder<B>,
    pub l_encoder: Encoder<B>,
    pub decoder: DecoderScvi<B>,
    /// Log inverse dispersion, (columns, genes); unused for gene-cell.
    pub px_r: Param<Tensor<B, 2>>,
    pub library_log_means: RunningState<Tensor<B, 1>>,
    pub library_log_vars: RunningState<Tensor<B, 1>>,
    /// The batch embedding (batches, BATCH_EMBEDDING_DIM), `_embeddings_dict.batch.weight`
    /// in scvi-tools; only with `batch_representation = "embedding"`.
    pub batch_embedding: Option<Param<Tensor<B, 2>>>,
    #[module(skip)]
    pub config: ScviConfig,
    /// Evaluate the likelihood with the fused host kernel (CPU backend) instead of tensor ops.
    #[module(skip)]
    pub fused_likelihood: bool,
}

pub struct Inference<B: Backend> {
    pub qz_mean: Tensor<B, 2>,
    pub qz_var: Tensor<B, 2>,
    /// Untransformed Gaussian sample.
    pub z_raw: Tensor<B, 2>,
    /// Sample after the latent transform (softmax for `ln`).
    pub z: Tensor<B, 2>,
    pub ql: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    /// Library fed to the decoder (log scale), (n, 1).
    pub library: Tensor<B, 2>,
}

pub struct DecoderOutputs<B: Backend> {
    pub raw_scale: Tensor<B, 2>,
    pub theta: Tensor<B, 2>,
    pub dropout_logits: Option<Tensor<B, 2>>,
}

pub struct Generative<B: Backend> {
    /// Normalised expression ρ.
    pub scale: Tensor<B, 2>,
    /// μ_x = exp(ℓ) ρ.
    pub rate: Tensor<B, 2>,
    /// Inverse dispersion θ, (1 or n, genes).
    pub theta: Tensor<B, 2>,
    pub dropout_logits: Option<Tensor<B, 2>>,
}

/// Per-cell loss terms.
pub struct LossTerms<B: Backend> {
    /// Minibatch objective (mean over cells of R + β K_z + K_ℓ).
    pub loss: Tensor<B, 1>,
    pub reconstruction: Tensor<B, 1>,
    pub kl_z: Tensor<B, 1>,
    pub kl_l: Tensor<B, 1>,
}

impl<B: Backend> Scvi<B> {
    pub fn new(
        config: ScviConfig,
        library_prior: (Vec<f32>, Vec<f32>),
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let cov = c.covariate_width();
        let enc_cov = if c.encode_covariates { cov } else { 0 };
        let enc_in = c.n_input
            + if c.encode_covariates {
                c.n_continuous_cov + c.batch_embedding_width()
            } else {
                0
            };
        let enc = |n_layers| FcOptions {
            n_in: enc_in,
            n_out: c.n_hidden,
            n_cov: enc_cov,
            n_layers,
            n_hidden: c.n_hidden,
            dropout: c.dropout_rate,
            batch_norm: c.use_batch_norm.encoder(),
            layer_norm: c.use_layer_norm.encoder(),
            inject_covariates: c.deeply_inject_covariates,
            leaky_relu: false,
        };
        let dec = FcOptions {
            n_in: c.n_latent + c.n_continuous_cov + c.batch_embedding_width(),
            n_out: c.n_hidden,
            n_cov: cov,
            n_layers: c.n_layers,
            n_hidden: c.n_hidden,
            dropout: 0.0,
            batch_norm: c.use_batch_norm.decoder(),
            layer_norm: c.use_layer_norm.decoder(),
            inject_covariates: c.deeply_inject_covariates,
            leaky_relu: false,
        };
        let g = c.n_input;
        let (means, vars) = library_prior;
        if means.len() != c.n_batch || vars.len() != c.n_batch {
            return Err(invalid_arg(
                "batch",
                "library prior does not match the number of batches",
            ));
        }
        Ok(Self {
            z_encoder: Encoder::new(&enc(c.n_layers), c.n_latent, c.var_eps, device),
            l_encoder: Encoder::new(&enc(1), 1, c.var_eps, device),
            decoder: DecoderScvi {
                px_decoder: FcLayers::new(&dec, device),
                px_scale_decoder: LinearConfig::new(c.n_hidden, g).init(device),
                px_r_decoder: LinearConfig::new(c.n_hidden, g).init(device),
                px_dropout_decoder: LinearConfig::new(c.n_hidden, g).init(device),
            },
            px_r: crate::nn::lazy_normal([c.dispersion_columns(), g], device),
            library_log_means: RunningState::new(Tensor::from_data(
                TensorData::new(means, [c.n_batch]),
                device,
            )),
            library_log_vars: RunningState::new(Tensor::from_data(
                TensorData::new(vars, [c.n_batch]),
                device,
            )),
            batch_embedding: c
                .embeds_batch()
                .then(|| crate::nn::lazy_normal([c.n_batch, BATCH_EMBEDDING_DIM], device)),
            config,
            fused_likelihood: true,
        })
    }

    /// The one-hot covariates of the layers (see [`ScviConfig::covariate_width`]): the
    /// minibatch's block, without its batch columns when the batch is embedded.
    fn layer_covariates(&self, b: &Batch<B>) -> Option<Tensor<B, 2>> {
        let cov = b.covariates.clone()?;
        let nb = self.config.n_batch;
        if !self.config.embeds_batch() || nb <= 1 {
            return Some(cov);
        }
        let [n, width] = cov.dims();
        (width > nb).then(|| cov.slice([0..n, nb..width]))
    }

    /// Each cell's row of the batch embedding (its decoder batch, so `transform_batch`
    /// applies), or None in one-hot mode.
    pub fn batch_representation(&self, b: &Batch<B>) -> Option<Tensor<B, 2>> {
        self.batch_embedding
            .as_ref()
            .map(|e| b.batch_onehot.clone().matmul(e.val()))
    }

    fn encoder_input(&self, b: &Batch<B>) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        let c = &self.config;
        let mut e = if c.log_variational {
            b.x_log.clone()
        } else {
            b.x.clone()
        };
        if c.encode_covariates {
            if let Some(u) = &b.continuous {
                e = Tensor::cat(vec![e, u.clone()], 1);
            }
            if let Some(emb) = self.batch_representation(b) {
                e = Tensor::cat(vec![e, emb], 1);
            }
        }
        let cov = if c.encode_covariates {
            self.layer_covariates(b)
        } else {
            None
        };
        (e, cov)
    }

    pub fn inference(&self, b: &Batch<B>, training: bool) -> Inference<B> {
        // A minified dataset brings the encoder's output: draw z from it, with the observed
        // library (as scvi-tools' minified mode).
        if let Some((qz_mean, qz_var)) = &b.latent_posterior {
            let z_raw = crate::nn::resample(qz_mean, qz_var);
            return Inference {
                qz_mean: qz_mean.clone(),
                qz_var: qz_var.clone(),
                z: self.transform_latent(z_raw.clone()),
                z_raw,
                ql: None,
                library: b.log_library.clone(),
            };
        }
        let (e, cov) = self.encoder_input(b);
        let qz = self.z_encoder.forward(e.clone(), cov.as_ref(), training);
        let z = self.transform_latent(qz.sample.clone());
        let (ql, library) = if self.config.uses_latent_library() {
            let ql = self.l_encoder.forward(e, cov.as_ref(), training);
            (Some((ql.mean, ql.var)), ql.sample)
        } else {
            (None, b.log_library.clone())
        };
        Inference {
            qz_mean: qz.mean,
            qz_var: qz.var,
            z_raw: qz.sample,
            z,
            ql,
            library,
        }
    }

    pub fn transform_latent(&self, z_raw: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.config.latent_distribution {
            LatentDistribution::Normal => z_raw,
            LatentDistribution::Ln => activation::softmax(z_raw, 1),
        }
    }

    /// The k-th posterior draw of z for an inference pass: its own sample first, then fresh
    /// ones (the reference draws all n_samples at once; same distribution).
    pub fn latent_draw(&self, inf: &Inference<B>, k: usize) -> Tensor<B, 2> {
        if k == 0 {
            inf.z.clone()
        } else {
            self.transform_latent(crate::nn::resample(&inf.qz_mean, &inf.qz_var))
        }
    }

    /// Decoder pass. `library` is on the log scale; a registered size factor replaces it.
    /// Decoder network up to its heads: the unnormalised scale logits, θ and the dropout
    /// logits (ZINB only).
    pub fn decoder_outputs(
        &self,
        b: &Batch<B>,
        z: Tensor<B, 2>,
        training: bool,
    ) -> DecoderOutputs<B> {
        let c = &self.config;
        let mut d = match &b.continuous {
            Some(u) => Tensor::cat(vec![z, u.clone()], 1),
            None => z,
        };
        if let Some(emb) = self.batch_representation(b) {
            d = Tensor::cat(vec![d, emb], 1);
        }
        let h = self
            .decoder
            .px_decoder
            .forward(d, self.layer_covariates(b).as_ref(), training);
        let raw_scale = nn::linear(&self.decoder.px_scale_decoder, h.clone());
        let theta = match c.dispersion {
            Dispersion::Gene => self.px_r.val().exp(),
            Dispersion::GeneBatch => b.batch_onehot.clone().matmul(self.px_r.val()).exp(),
            Dispersion::GeneLabel => b.labels_onehot.clone().matmul(self.px_r.val()).exp(),
            Dispersion::GeneCell => nn::linear(&self.decoder.px_r_decoder, h.clone()).exp(),
        };
        let dropout_logits = (c.gene_likelihood == GeneLikelihood::Zinb)
            .then(|| nn::linear(&self.decoder.px_dropout_decoder, h));
        DecoderOutputs {
            raw_scale,
            theta,
            dropout_logits,
        }
    }

    /// Decoder pass. `library` is on the log scale; a registered size factor replaces it.
    pub fn generative(
        &self,
        b: &Batch<B>,
        z: Tensor<B, 2>,
        library: Tensor<B, 2>,
        training: bool,
    ) -> Generative<B> {
        let out = self.decoder_outputs(b, z, training);
        let (scale, library) = match &b.log_size_factor {
            Some(lsf) => (dist::softplus(out.raw_scale), lsf.clone()),
            None => (activation::softmax(out.raw_scale, 1), library),
        };
        let rate = library.exp() * scale.clone();
        Generative {
            scale,
            rate,
            theta: out.theta,
            dropout_logits: out.dropout_logits,
        }
    }

    /// Per-cell log p(x | z, ℓ) without the lgamma(x+1) constant. `grad` asks for a result
    /// that back-propagates (training); queries skip the derivative work.
    pub fn log_likelihood_unnormalized(
        &self,
        x: Tensor<B, 2>,
        gen: &Generative<B>,
        grad: bool,
    ) -> Tensor<B, 1> {
        if self.fused_likelihood {
            return self.fused_log_likelihood(x, gen, grad);
        }
        dist::gene_log_prob_unnormalized(
            self.config.gene_likelihood,
            x,
            gen.rate.clone(),
            gen.theta.clone(),
            gen.dropout_logits.clone(),
        )
        .sum_dim(1)
        .squeeze_dim::<1>(1)
    }

    pub(crate) fn fused_kind(&self) -> Likelihood {
        crate::dist::surrogate::fused_kind(self.config.gene_likelihood)
    }

    fn fused_log_likelihood(
        &self,
        x: Tensor<B, 2>,
        gen: &Generative<B>,
        grad: bool,
    ) -> Tensor<B, 1> {
        crate::dist::surrogate::fused_log_likelihood(
            self.config.gene_likelihood,
            x,
            gen.rate.clone(),
            gen.theta.clone(),
            gen.dropout_logits.clone(),
            grad,
        )
    }

    /// As `fused_log_likelihood`, from the decoder's scale logits (see
    /// [`fused_log_likelihood_from_logits`]).
    fn fused_log_likelihood_from_logits(
        &self,
        x: Tensor<B, 2>,
        dec: &DecoderOutputs<B>,
        library: Tensor<B, 2>,
        grad: bool,
    ) -> Tensor<B, 1> {
        fused_log_likelihood_from_logits(
            self.config.gene_likelihood,
            x,
            dec.raw_scale.clone(),
            dec.theta.clone(),
            dec.dropout_logits.clone(),
            library,
            grad,
        )
    }

    /// Library prior of each cell's batch: (mean, var), each (n, 1).
    pub fn library_prior(&self, b: &Batch<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let nb = self.config.n_batch;
        let means = self.library_log_means.value_sync().reshape([nb, 1]);
        let vars = self.library_log_vars.value_sync().reshape([nb, 1]);
        (
            b.batch_onehot.clone().matmul(means),
            b.batch_onehot.clone().matmul(vars),
        )
    }

    /// Forward pass and loss terms (scvi.md §6).
    pub fn loss(&self, b: &Batch<B>, kl_weight: f64, training: bool) -> LossTerms<B> {
        let inf = self.inference(b, training);
        let log_lik = if self.fused_likelihood && b.log_size_factor.is_none() {
            let dec = self.decoder_outputs(b, inf.z.clone(), training);
            self.fused_log_likelihood_from_logits(b.x.clone(), &dec, inf.library.clone(), training)
        } else {
            let gen = self.generative(b, inf.z.clone(), inf.library.clone(), training);
            self.log_likelihood_unnormalized(b.x.clone(), &gen, training)
        };
        let reconstruction = b.log_factorial.clone() - log_lik;
        let kl_z = dist::kl_standard_normal(inf.qz_mean, inf.qz_var)
            .sum_dim(1)
            .squeeze_dim::<1>(1);
        let kl_l = match inf.ql {
            Some((m, v)) => {
                let (pm, pv) = self.library_prior(b);
                dist::kl_normal(m, v, pm, pv).squeeze_dim::<1>(1)
            }
            None => kl_z.zeros_like(),
        };
        let loss = (reconstruction.clone() + kl_z.clone() * kl_weight + kl_l.clone()).mean();
        LossTerms {
            loss,
            reconstruction,
            kl_z,
            kl_l,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::HostBatch;
    use burn::backend::Flex;
    use burn::module::Param;

    type B = Flex;

    fn mat(v: &[f32], rows: usize, cols: usize) -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(v.to_vec(), [rows, cols]),
            &Default::default(),
        )
    }
    fn vec1(v: &[f32]) -> Tensor<B, 1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
    }
    /// PyTorch (out, in) weight → Burn Linear.
    fn set_linear(l: &mut Linear<B>, w: &[f32], out: usize, inp: usize, b: &[f32]) {
        l.weight = Param::from_tensor(mat(w, out, inp).transpose());
        l.bias = Some(Param::from_tensor(vec1(b)));
    }
    fn close(t: Tensor<B, 1>, want: &[f64], tol: f64) {
        let got: Vec<f32> = t.into_data().to_vec().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < tol, "got {got:?}, want {want:?}");
        }
    }

    /// scvi.md §12.5: the tiny network in eval mode.
    #[test]
    fn tiny_network_parity() {
        let _rng = crate::TEST_RNG_LOCK.lock();
        let dev = Default::default();
        let mut cfg = ScviConfig::new(3, 2);
        cfg.n_hidden = 2;
        cfg.n_latent = 2;
        let mut m = Scvi::<B>::new(cfg, (vec![0.0; 2], vec![1.0; 2]), &dev).unwrap();
        // Decoder
        let layer = &mut m.decoder.px_decoder.layers[0];
        set_linear(
            &mut layer.linear,
            &[0.1, -0.2, 0.3, 0.4, -0.5, 0.6, -0.7, 0.8],
            2,
            4,
            &[0.05, -0.05],
        );
        let bn = layer.batch_norm.as_mut().unwrap();
        bn.running_mean = RunningState::new(vec1(&[0.1, -0.1]));
        bn.running_var = RunningState::new(vec1(&[0.5, 2.0]));
        bn.gamma = Param::from_tensor(vec1(&[1.5, 0.5]));
        bn.beta = Param::from_tensor(vec1(&[0.1, 0.3]));
        set_linear(
            &mut m.decoder.px_scale_decoder,
            &[1.0, -1.0, 0.5, 0.5, -0.3, 0.2],
            3,
            2,
            &[0.0, 0.1, -0.1],
        );
        set_linear(
            &mut m.decoder.px_dropout_decoder,
            &[0.2, 0.1, -0.4, 0.3, 0.0, -0.6],
            3,
            2,
            &[-1.0, 0.0, 0.5],
        );
        m.px_r = Param::from_tensor(mat(&[0.0, 1.0, -1.0], 1, 3));
        // Encoder
        let layer = &mut m.z_encoder.encoder.layers[0];
        set_linear(
            &mut layer.linear,
            &[0.2, -0.1, 0.3, -0.3, 0.4, 0.1],
            2,
            3,
            &[0.0, 0.1],
        );
        let bn = layer.batch_norm.as_mut().unwrap();
        bn.running_mean = RunningState::new(vec1(&[0.5, -0.5]));
        bn.running_var = RunningState::new(vec1(&[1.0, 0.25]));
        bn.gamma = Param::from_tensor(vec1(&[1.0, 2.0]));
        bn.beta = Param::from_tensor(vec1(&[0.0, 0.1]));
        set_linear(
            &mut m.z_encoder.mean_encoder,
            &[1.0, 0.5, -0.5, 1.0],
            2,
            2,
            &[0.1, -0.1],
        );
        set_linear(
            &mut m.z_encoder.var_encoder,
            &[0.3, -0.2, 0.1, 0.4],
            2,
            2,
            &[-1.0, 0.5],
        );

        let host = HostBatch {
            n: 1,
            x: vec![3.0, 0.0, 7.0],
            x_log: vec![4f32.ln(), 0.0, 8f32.ln()],
            log_library: vec![10f32.ln()],
            log_factorial: vec![
                (crate::data::ln_factorial(3.0) + crate::data::ln_factorial(7.0)) as f32,
            ],
            batch_onehot: vec![0.0, 1.0],
            labels_onehot: vec![1.0],
            covariates: vec![0.0, 1.0],
            covariate_width: 2,
            continuous: vec![],
            size_factor: None,
            latent_posterior: None,
        };
        let b = Batch::<B>::from_host(&host, 3, &dev);
        let gen = m.generative(&b, mat(&[0.5, -1.0], 1, 2), b.log_library.clone(), false);
        close(
            gen.scale.clone().reshape([3]),
            &[0.478_214_197_3, 0.417_505_652_7, 0.104_280_15],
            1e-6,
        );
        close(
            gen.rate.clone().reshape([3]),
            &[4.782_141_973, 4.175_056_527, 1.042_801_5],
            1e-5,
        );
        for fused in [false, true] {
            m.fused_likelihood = fused;
            let ll = |m: &Scvi<B>| {
                b.log_factorial.clone().neg()
                    + m.log_likelihood_unnormalized(b.x.clone(), &gen, false)
            };
            m.config.gene_likelihood = GeneLikelihood::Zinb;
            close(ll(&m), &[-9.163_952_383], 2e-4);
            m.config.gene_likelihood = GeneLikelihood::Nb;
            close(ll(&m), &[-9.593_176_061], 2e-4);
            m.config.gene_likelihood = GeneLikelihood::Poisson;
            close(ll(&m), &[-15.328_879_27], 2e-4);
            // Σ log N(x; μ, σ = e^px_r), by hand
            m.config.gene_likelihood = GeneLikelihood::Normal;
            close(ll(&m), &[-136.636_553_76], 2e-3);
        }

        let inf = m.inference(&b, false);
        close(
            inf.qz_mean.clone().reshape([2]),
            &[1.333_439_097, 1.364_650_845],
            1e-5,
        );
        close(
            inf.qz_var.clone().reshape([2]),
            &[0.297_477_774_3, 3.340_623_796],
            1e-5,
        );
        let kl = dist::kl_standard_normal(inf.qz_mean, inf.qz_var)
            .sum_dim(1)
            .reshape([1]);
        close(kl, &[2.642_345_767], 1e-5);
    }

    /// With a batch embedding the batch is an input, not a one-hot covariate: the decoder's
    /// first layer takes [z; e] (5 columns more, no batch columns) and a cell's output
    /// follows the embedding row of its decoder batch.
    #[test]
    fn batch_embedding_replaces_the_batch_one_hot() {
        let _rng = crate::TEST_RNG_LOCK.lock();
        let dev = Default::default();
        let data = crate::data::toy_dataset(3);
        let mut cfg = ScviConfig::new(6, 3);
        cfg.batch_representation = BatchRepresentation::Embedding;
        let m = Scvi::<B>::new(cfg.clone(), crate::data::library_prior(&data), &dev).unwrap();
        assert_eq!(m.config.covariate_width(), 0);
        let w = m.decoder.px_decoder.layers[0].linear.weight.val();
        assert_eq!(w.dims(), [10 + BATCH_EMBEDDING_DIM, 128]);
        let emb = m.batch_embedding.as_ref().unwrap().val();
        assert_eq!(emb.dims(), [3, BATCH_EMBEDDING_DIM]);
        // the same cells decoded as batch 0 and as batch 2 differ; a one-hot model of the
        // same data has 3 batch columns instead
        let cells = [0, 1, 2, 3];
        let b0 = Batch::<B>::from_host(&data.host_batch(&cells, Some(0)), 6, &dev);
        let b2 = Batch::<B>::from_host(&data.host_batch(&cells, Some(2)), 6, &dev);
        let z = Tensor::<B, 2>::zeros([4, 10], &dev);
        let s0 = m
            .generative(&b0, z.clone(), b0.log_library.clone(), false)
            .scale;
        let s2 = m.generative(&b2, z, b2.log_library.clone(), false).scale;
        let diff: f32 = (s0 - s2).abs().sum().into_scalar();
        assert!(
            diff > 1e-4,
            "the batch embedding does not reach the decoder"
        );
        let rep = m.batch_representation(&b2).unwrap();
        let row2: Vec<f32> = emb
            .slice([2..3, 0..BATCH_EMBEDDING_DIM])
            .into_data()
            .to_vec()
            .unwrap();
        let got: Vec<f32> = rep
            .slice([3..4, 0..BATCH_EMBEDDING_DIM])
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(got, row2);
        cfg.batch_representation = BatchRepresentation::OneHot;
        let one_hot = Scvi::<B>::new(cfg, crate::data::library_prior(&data), &dev).unwrap();
        assert_eq!(one_hot.config.covariate_width(), 3);
        assert!(one_hot.batch_embedding.is_none());
        // with encode_covariates the encoders see the embedding too
        let mut cfg = ScviConfig::new(6, 3);
        cfg.batch_representation = BatchRepresentation::Embedding;
        cfg.encode_covariates = true;
        let enc = Scvi::<B>::new(cfg, crate::data::library_prior(&data), &dev).unwrap();
        let w = enc.z_encoder.encoder.layers[0].linear.weight.val();
        assert_eq!(w.dims(), [6 + BATCH_EMBEDDING_DIM, 128]);
    }
}
