//! The partial splicing encoder (splicevi.md §4.4): a permutation-invariant set encoder over
//! the observed (junction, ratio) pairs of each cell. Only observed pairs are computed: the
//! per-pair network runs on a gather of the pairs and the codes are scatter-added per cell,
//! so nothing of size cells x junctions is formed.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{activation, backend::Backend, IndexingUpdateOp, Int, Tensor};

use crate::dist;
use crate::models::splicevi::{PoolMode, SpliceviBatch, SpliceviConfig};
use crate::nn;
use crate::nn::{dropout, FcLayers, FcOptions, Posterior};

/// Floor of the embedding norms and offset of the splicing variance.
const NORM_FLOOR: f64 = 1e-8;
const VAR_EPS: f64 = 1e-6;

#[derive(Module, Debug)]
pub struct PartialEncoder<B: Backend> {
    /// Junction embeddings E (J x D), L2-normalised at every use.
    pub feature_embedding: Param<Tensor<B, 2>>,
    pub h_layer1: Linear<B>,
    pub h_norm1: LayerNorm<B>,
    pub h_layer2: Linear<B>,
    pub h_norm2: LayerNorm<B>,
    /// The post-pool MLP, D (+ continuous covariates) -> 2Z, ReLU and layer norm throughout.
    pub encoder_mlp: FcLayers<B>,
    pub dropout: f64,
}

impl<B: Backend> PartialEncoder<B> {
    pub fn new(c: &SpliceviConfig, device: &B::Device) -> Self {
        let d = c.code_dim;
        let cov = if c.encode_covariates {
            c.covariate_width()
        } else {
            0
        };
        Self {
            feature_embedding: crate::nn::lazy_normal([c.n_junctions, d], device),
            h_layer1: LinearConfig::new(1 + d, c.h_hidden_dim).init(device),
            h_norm1: LayerNormConfig::new(c.h_hidden_dim).init(device),
            h_layer2: LinearConfig::new(c.h_hidden_dim, d).init(device),
            h_norm2: LayerNormConfig::new(d).init(device),
            encoder_mlp: FcLayers::new(
                &FcOptions {
                    n_in: d + c.n_continuous_cov,
                    n_out: 2 * c.n_latent,
                    n_cov: cov,
                    n_layers: c.n_layers_encoder,
                    n_hidden: c.encoder_hidden_dim,
                    dropout: c.dropout_rate,
                    batch_norm: false,
                    layer_norm: true,
                    inject_covariates: c.encode_covariates,
                    leaky_relu: false,
                },
                device,
            ),
            dropout: c.dropout_rate,
        }
    }

    /// h(u) of a block of pairs: u = [r, r ê_j].
    fn codes(
        &self,
        embedding: &Tensor<B, 2>,
        junctions: Tensor<B, 1, Int>,
        ratio: Tensor<B, 2>,
        training: bool,
    ) -> Tensor<B, 2> {
        let e = embedding.clone().select(0, junctions);
        let u = Tensor::cat(vec![ratio.clone(), e * ratio], 1);
        let h = activation::relu(self.h_norm1.forward(nn::linear(&self.h_layer1, u)));
        let h = dropout(h, self.dropout, training);
        activation::relu(self.h_norm2.forward(nn::linear(&self.h_layer2, h)))
    }

    /// (μ^s, v^s) and a draw. Continuous covariates always reach the MLP's first layer (a
    /// quirk of the reference kept for parity); the categorical ones only with
    /// `encode_covariates`.
    pub fn forward(
        &self,
        b: &SpliceviBatch<B>,
        cov: Option<&Tensor<B, 2>>,
        c: &SpliceviConfig,
        training: bool,
    ) -> Posterior<B> {
        let e = self.feature_embedding.val();
        let device = e.device();
        let d = c.code_dim;
        let norms = e
            .clone()
            .powf_scalar(2.0)
            .sum_dim(1)
            .sqrt()
            .clamp_min(NORM_FLOOR);
        let e = e / norms;
        let mut pooled = Tensor::<B, 2>::zeros([b.n_cells, d], &device);
        let obs = &b.observed;
        if let (Some(rows), Some(junctions), Some(ratio)) = (&obs.rows, &obs.junctions, &obs.ratio)
        {
            let chunk = if c.max_nobs > 0 {
                c.max_nobs as usize
            } else {
                obs.n_pairs
            };
            let mut start = 0;
            while start < obs.n_pairs {
                let end = (start + chunk).min(obs.n_pairs);
                let codes = self.codes(
                    &e,
                    junctions.clone().narrow(0, start, end - start),
                    ratio.clone().narrow(0, start, end - start),
                    training,
                );
                pooled = pooled.select_assign(
                    0,
                    rows.clone().narrow(0, start, end - start),
                    codes,
                    IndexingUpdateOp::Add,
                );
                start = end;
            }
        }
        if c.pool_mode == PoolMode::Mean {
            pooled = pooled / obs.per_cell.clone().clamp_min(1.0);
        }
        let input = match &b.continuous {
            Some(u) => Tensor::cat(vec![pooled, u.clone()], 1),
            None => pooled,
        };
        let o = self.encoder_mlp.forward(input, cov, training);
        let (n, z) = (b.n_cells, c.n_latent);
        let mean = o.clone().slice([0..n, 0..z]);
        let var = dist::softplus(o.slice([0..n, z..2 * z])) + VAR_EPS;
        let sample = crate::nn::resample(&mean, &var);
        Posterior { mean, var, sample }
    }
}
