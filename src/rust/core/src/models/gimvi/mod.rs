//! gimVI (gimvi.md): one VAE over an scRNA-seq dataset (`SEQ`, index 0) and a spatial
//! dataset (`SPATIAL`, index 1) whose genes are a subset of the sequencing genes. Each dataset has its own encoder head,
//! the latent space and the decoder are shared, and the decoder always outputs every
//! sequencing gene, which is how unmeasured spatial genes are imputed.

pub mod model;
pub mod neighbours;
pub mod scvi_tools;

pub use model::{GimviKind, GimviModel};

use burn::module::{Module, Param, RunningState};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{activation, backend::Backend, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::batch::host;
use crate::data::{library_prior, DataSet};
use crate::dist;
use crate::dist::surrogate::fused_log_likelihood_from_logits;
use crate::error::{invalid_arg, Error, Result};
use crate::models::options::{
    check_count_likelihoods, check_dropout_rates, check_sizes, Dispersion, GeneLikelihood,
};
use crate::nn;
use crate::nn::{Encoder, FcLayers, FcOptions};

/// Index of the sequencing dataset.
pub const SEQ: usize = 0;
/// Index of the spatial dataset.
pub const SPATIAL: usize = 1;
/// Variance floor of the library encoders (the z encoder has none, G4).
const LIBRARY_VAR_EPS: f64 = 1e-4;
/// Width of the library encoders (G4).
const LIBRARY_HIDDEN: usize = 128;

/// Hyperparameters and the data dimensions the module is built from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GimviConfig {
    /// Decoder width G: the sequencing genes.
    pub n_genes: usize,
    /// Position among the sequencing genes of each spatial gene (M_1).
    pub spatial_gene_index: Vec<usize>,
    /// Batch categories of each dataset (K_0, K_1); spatial codes are offset by K_0.
    pub n_batch: [usize; 2],
    pub generative_distributions: [GeneLikelihood; 2],
    pub model_library_size: [bool; 2],
    pub n_latent: usize,
    pub n_layers_encoder_individual: usize,
    pub n_layers_encoder_shared: usize,
    pub dim_hidden_encoder: usize,
    pub n_layers_decoder_individual: usize,
    pub n_layers_decoder_shared: usize,
    pub dim_hidden_decoder_individual: usize,
    pub dim_hidden_decoder_shared: usize,
    pub dropout_rate_encoder: f64,
    pub dropout_rate_decoder: f64,
    pub dispersion: Dispersion,
    pub log_variational: bool,
}

impl GimviConfig {
    /// The reference's defaults for the given data dimensions.
    pub fn new(n_genes: usize, spatial_gene_index: Vec<usize>, n_batch: [usize; 2]) -> Self {
        Self {
            n_genes,
            spatial_gene_index,
            n_batch,
            generative_distributions: [GeneLikelihood::Zinb, GeneLikelihood::Nb],
            model_library_size: [true, false],
            n_latent: 10,
            n_layers_encoder_individual: 1,
            n_layers_encoder_shared: 1,
            dim_hidden_encoder: 64,
            n_layers_decoder_individual: 0,
            n_layers_decoder_shared: 0,
            dim_hidden_decoder_individual: 64,
            dim_hidden_decoder_shared: 64,
            dropout_rate_encoder: 0.2,
            dropout_rate_decoder: 0.2,
            dispersion: Dispersion::GeneBatch,
            log_variational: true,
        }
    }

    /// Joint number of batch codes K = K_0 + K_1.
    pub fn n_batch_total(&self) -> usize {
        self.n_batch[0] + self.n_batch[1]
    }

    /// Offset added to a dataset's own batch codes (K_0 for the spatial dataset, G6).
    pub fn batch_offset(&self, dataset: usize) -> usize {
        if dataset == SPATIAL {
            self.n_batch[0]
        } else {
            0
        }
    }

    /// Genes measured in `dataset` (G_i).
    pub fn n_genes_of(&self, dataset: usize) -> usize {
        if dataset == SPATIAL {
            self.spatial_gene_index.len()
        } else {
            self.n_genes
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_count_likelihoods(&[
            ("generative_distributions", self.generative_distributions[0]),
            ("generative_distributions", self.generative_distributions[1]),
        ])?;
        check_sizes(
            &[
                ("n_latent", self.n_latent),
                (
                    "n_layers_encoder_individual",
                    self.n_layers_encoder_individual,
                ),
                ("n_layers_encoder_shared", self.n_layers_encoder_shared),
                ("dim_hidden_encoder", self.dim_hidden_encoder),
                (
                    "dim_hidden_decoder_individual",
                    self.dim_hidden_decoder_individual,
                ),
                ("dim_hidden_decoder_shared", self.dim_hidden_decoder_shared),
            ],
            self.n_genes,
        )?;
        check_dropout_rates(&[
            ("dropout_rate_encoder", self.dropout_rate_encoder),
            ("dropout_rate_decoder", self.dropout_rate_decoder),
        ])?;
        if self.dispersion == Dispersion::GeneLabel {
            // G9: the reference cannot train it either.
            return Err(invalid_arg(
                "dispersion",
                "\"gene-label\" is not supported by GIMVI; use \"gene-batch\", \"gene\" or \"gene-cell\"",
            ));
        }
        if self.n_genes == 0 || self.spatial_gene_index.is_empty() {
            return Err(invalid_arg(
                "x_spatial",
                "must share at least one gene with x_seq",
            ));
        }
        if let Some(&j) = self.spatial_gene_index.iter().find(|&&j| j >= self.n_genes) {
            return Err(invalid_arg(
                "x_spatial",
                format!(
                    "gene index {j} is outside the {} sequencing genes",
                    self.n_genes
                ),
            ));
        }
        if self.n_batch.contains(&0) {
            return Err(invalid_arg(
                "batch",
                "each dataset needs at least one batch",
            ));
        }
        Ok(())
    }

    fn dispersion_columns(&self) -> usize {
        match self.dispersion {
            Dispersion::GeneBatch => self.n_batch_total(),
            _ => 1,
        }
    }
}

/// Shared z encoder: a head per dataset, a shared stack, then mean and log-variance.
#[derive(Module, Debug)]
pub struct MultiEncoder<B: Backend> {
    pub encoders: Vec<FcLayers<B>>,
    pub encoder_shared: FcLayers<B>,
    pub mean_encoder: Linear<B>,
    pub var_encoder: Linear<B>,
}

/// The decoder shared by both datasets (G3): optional batch-conditioned and shared hidden
/// layers (none by default), then the scale, zero-inflation and dispersion heads.
#[derive(Module, Debug)]
pub struct MultiDecoder<B: Backend> {
    pub px_decoder_conditioned: Option<FcLayers<B>>,
    pub px_decoder_final: Option<FcLayers<B>>,
    pub px_scale_decoder: Linear<B>,
    pub px_dropout_decoder: Linear<B>,
    pub px_r_decoder: Linear<B>,
}

/// The JVAE module (state names follow scvi-tools' where Burn allows).
#[derive(Module, Debug)]
pub struct Jvae<B: Backend> {
    pub z_encoder: MultiEncoder<B>,
    /// Library encoder of each dataset whose library is modelled.
    pub l_encoders: Vec<Option<Encoder<B>>>,
    pub decoder: MultiDecoder<B>,
    /// Log inverse dispersion (columns, G): K columns for gene-batch, else 1.
    pub px_r: Param<Tensor<B, 2>>,
    /// Library prior of each dataset over the joint batch codes, (2, K).
    pub library_log_means: RunningState<Tensor<B, 2>>,
    pub library_log_vars: RunningState<Tensor<B, 2>>,
    #[module(skip)]
    pub config: GimviConfig,
}

/// A minibatch of one dataset on the device.
pub struct GimviBatch<B: Backend> {
    pub dataset: usize,
    pub x: Tensor<B, 2>,
    pub x_log: Tensor<B, 2>,
    /// Observed log library over the dataset's own genes, (n, 1).
    pub log_library: Tensor<B, 2>,
    pub log_factorial: Tensor<B, 1>,
    /// One-hot of the joint batch code, (n, K).
    pub batch_onehot: Tensor<B, 2>,
}

impl<B: Backend> GimviBatch<B> {
    pub fn new(
        config: &GimviConfig,
        dataset: usize,
        data: &DataSet,
        cells: &[usize],
        device: &B::Device,
    ) -> Self {
        let h = data.host_batch(cells, None);
        let (n, g, k) = (cells.len(), data.n_genes(), config.n_batch_total());
        let offset = config.batch_offset(dataset);
        let mut onehot = vec![0f32; n * k];
        for (r, &c) in cells.iter().enumerate() {
            onehot[r * k + offset + data.batch.codes[c] as usize] = 1.0;
        }
        let mat = |v: Vec<f32>, cols: usize| {
            Tensor::<B, 2>::from_data(TensorData::new(v, [n, cols]), device)
        };
        Self {
            dataset,
            x: mat(h.x, g),
            x_log: mat(h.x_log, g),
            log_library: mat(h.log_library, 1),
            log_factorial: Tensor::from_data(TensorData::new(h.log_factorial, [n]), device),
            batch_onehot: mat(onehot, k),
        }
    }

    pub fn n_cells(&self) -> usize {
        self.x.dims()[0]
    }
}

pub struct GimviInference<B: Backend> {
    pub qz_mean: Tensor<B, 2>,
    pub qz_var: Tensor<B, 2>,
    pub z: Tensor<B, 2>,
    pub ql: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    /// Log library fed to the decoder, (n, 1).
    pub library: Tensor<B, 2>,
}

pub struct GimviGenerative<B: Backend> {
    /// ρ renormalised over the decode mode's genes, (n, G).
    pub scale: Tensor<B, 2>,
    /// μ = ρ e^ℓ, (n, G).
    pub rate: Tensor<B, 2>,
    /// θ, (1 or n, G).
    pub theta: Tensor<B, 2>,
    pub dropout_logits: Tensor<B, 2>,
}

/// Per-cell loss terms of one dataset's minibatch.
pub struct GimviLoss<B: Backend> {
    /// Σ over cells of R + β (KL_z + KL_ℓ) (a sum, G2).
    pub loss_sum: Tensor<B, 1>,
    pub reconstruction: Tensor<B, 1>,
    /// KL_z + KL_ℓ (unweighted).
    pub kl_local: Tensor<B, 1>,
    /// The sampled latent (input of the adversarial classifier).
    pub z: Tensor<B, 2>,
}

/// ρ̃ renormalised to sum to one over the genes of decode mode `mode` (G10, G11); for the
/// sequencing mode the division by Σ over all genes is kept although it is ≈ 1.
pub fn renormalize<B: Backend>(
    rho_tilde: Tensor<B, 2>,
    mode_genes: Option<&Tensor<B, 1, Int>>,
) -> Tensor<B, 2> {
    let denom = match mode_genes {
        Some(idx) => rho_tilde.clone().select(1, idx.clone()).sum_dim(1),
        None => rho_tilde.clone().sum_dim(1),
    };
    rho_tilde / denom
}

impl<B: Backend> Jvae<B> {
    /// `library_priors[i]` = (means, vars) over dataset i's own batch codes (length K_i).
    pub fn new(
        config: GimviConfig,
        library_priors: [(Vec<f32>, Vec<f32>); 2],
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let (g, d, k) = (c.n_genes, c.n_latent, c.n_batch_total());
        let fc = |n_in, n_out, n_cov, n_layers, n_hidden, dropout| FcOptions {
            n_in,
            n_out,
            n_cov,
            n_layers,
            n_hidden,
            dropout,
            batch_norm: true,
            layer_norm: false,
            inject_covariates: true,
            leaky_relu: false,
        };
        let h = c.dim_hidden_encoder;
        let heads = (0..2)
            .map(|i| {
                FcLayers::new(
                    &fc(
                        c.n_genes_of(i),
                        h,
                        0,
                        c.n_layers_encoder_individual,
                        h,
                        c.dropout_rate_encoder,
                    ),
                    device,
                )
            })
            .collect();
        let shared = FcLayers::new(
            &fc(
                h,
                h,
                0,
                c.n_layers_encoder_shared,
                h,
                c.dropout_rate_encoder,
            ),
            device,
        );
        let l_encoders = (0..2)
            .map(|i| {
                c.model_library_size[i].then(|| {
                    let o = fc(
                        c.n_genes_of(i),
                        LIBRARY_HIDDEN,
                        0,
                        1,
                        LIBRARY_HIDDEN,
                        c.dropout_rate_encoder,
                    );
                    Encoder::new(&o, 1, LIBRARY_VAR_EPS, device)
                })
            })
            .collect();
        let (n_ind, n_sh) = (c.n_layers_decoder_individual, c.n_layers_decoder_shared);
        let n_cond_out = if n_sh > 0 {
            c.dim_hidden_decoder_individual
        } else {
            c.dim_hidden_decoder_shared
        };
        let conditioned = (n_ind > 0).then(|| {
            let cov = if k > 1 { k } else { 0 };
            FcLayers::new(
                &fc(
                    d,
                    n_cond_out,
                    cov,
                    n_ind,
                    c.dim_hidden_decoder_individual,
                    c.dropout_rate_decoder,
                ),
                device,
            )
        });
        let final_in = if n_ind > 0 { n_cond_out } else { d };
        let final_layers = (n_sh > 0).then(|| {
            FcLayers::new(
                &fc(
                    final_in,
                    c.dim_hidden_decoder_shared,
                    0,
                    n_sh,
                    c.dim_hidden_decoder_shared,
                    c.dropout_rate_decoder,
                ),
                device,
            )
        });
        let head_in = if n_sh > 0 {
            c.dim_hidden_decoder_shared
        } else {
            final_in
        };
        let mut means = vec![0f32; 2 * k];
        let mut vars = vec![1f32; 2 * k];
        for (i, (m, v)) in library_priors.iter().enumerate() {
            if m.len() != c.n_batch[i] || v.len() != c.n_batch[i] {
                return Err(invalid_arg(
                    "batch",
                    "library prior does not match the batches",
                ));
            }
            let off = i * k + c.batch_offset(i);
            means[off..off + m.len()].copy_from_slice(m);
            vars[off..off + v.len()].copy_from_slice(v);
        }
        Ok(Self {
            z_encoder: MultiEncoder {
                encoders: heads,
                encoder_shared: shared,
                mean_encoder: LinearConfig::new(h, d).init(device),
                var_encoder: LinearConfig::new(h, d).init(device),
            },
            l_encoders,
            decoder: MultiDecoder {
                px_decoder_conditioned: conditioned,
                px_decoder_final: final_layers,
                px_scale_decoder: LinearConfig::new(head_in, g).init(device),
                px_dropout_decoder: LinearConfig::new(head_in, g).init(device),
                px_r_decoder: LinearConfig::new(head_in, g).init(device),
            },
            px_r: crate::nn::lazy_normal([c.dispersion_columns(), g], device),
            library_log_means: RunningState::new(Tensor::from_data(
                TensorData::new(means, [2, k]),
                device,
            )),
            library_log_vars: RunningState::new(Tensor::from_data(
                TensorData::new(vars, [2, k]),
                device,
            )),
            config,
        })
    }

    /// Indices of the spatial genes among the decoder's outputs, on the device.
    pub fn spatial_genes(&self, device: &B::Device) -> Tensor<B, 1, Int> {
        let idx: Vec<i64> = self
            .config
            .spatial_gene_index
            .iter()
            .map(|&j| j as i64)
            .collect();
        Tensor::from_data(TensorData::new(idx.clone(), [idx.len()]), device)
    }

    /// Encoder pass of `b` with its own head (gimvi.md §4). `deterministic`: z = μ_z and
    /// ℓ = μ_ℓ (or the observed library).
    pub fn inference(
        &self,
        b: &GimviBatch<B>,
        training: bool,
        deterministic: bool,
    ) -> GimviInference<B> {
        let i = b.dataset;
        let x = if self.config.log_variational {
            b.x_log.clone()
        } else {
            b.x.clone()
        };
        let e = &self.z_encoder;
        let h = e.encoders[i].forward(x.clone(), None, training);
        let h = e.encoder_shared.forward(h, None, training);
        let qz_mean = nn::linear(&e.mean_encoder, h.clone());
        let qz_var = nn::linear(&e.var_encoder, h).exp();
        let z = if deterministic {
            qz_mean.clone()
        } else {
            crate::nn::resample(&qz_mean, &qz_var)
        };
        let (ql, library) = match &self.l_encoders[i] {
            Some(enc) => {
                let q = enc.forward(x, None, training);
                let l = if deterministic {
                    q.mean.clone()
                } else {
                    q.sample
                };
                (Some((q.mean, q.var)), l)
            }
            None => (None, b.log_library.clone()),
        };
        GimviInference {
            qz_mean,
            qz_var,
            z,
            ql,
            library,
        }
    }

    /// Decoder network up to its heads: scale logits, θ and zero-inflation logits, (n, G).
    fn decoder_outputs(
        &self,
        z: Tensor<B, 2>,
        batch_onehot: &Tensor<B, 2>,
        training: bool,
    ) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
        let dec = &self.decoder;
        let mut h = z;
        if let Some(cond) = &dec.px_decoder_conditioned {
            let cov = (self.config.n_batch_total() > 1).then_some(batch_onehot);
            h = cond.forward(h, cov, training);
        }
        if let Some(fin) = &dec.px_decoder_final {
            h = fin.forward(h, None, training);
        }
        let theta = match self.config.dispersion {
            Dispersion::GeneBatch => batch_onehot.clone().matmul(self.px_r.val()).exp(),
            Dispersion::GeneCell => nn::linear(&dec.px_r_decoder, h.clone()).exp(),
            _ => self.px_r.val().exp(),
        };
        (
            nn::linear(&dec.px_scale_decoder, h.clone()),
            theta,
            nn::linear(&dec.px_dropout_decoder, h),
        )
    }

    /// Decoder pass in decode mode `mode` (0: sequencing genes, 1: spatial panel).
    pub fn generative(
        &self,
        z: Tensor<B, 2>,
        library: Tensor<B, 2>,
        batch_onehot: &Tensor<B, 2>,
        mode: usize,
        training: bool,
    ) -> GimviGenerative<B> {
        let (logits, theta, dropout_logits) = self.decoder_outputs(z, batch_onehot, training);
        let rho_tilde = activation::softmax(logits, 1);
        let mode_genes = (mode == SPATIAL).then(|| self.spatial_genes(&library.device()));
        let scale = renormalize(rho_tilde, mode_genes.as_ref());
        let rate = scale.clone() * library.exp();
        GimviGenerative {
            scale,
            rate,
            theta,
            dropout_logits,
        }
    }

    /// Forward pass and loss of one dataset's minibatch (gimvi.md §5): only the dataset's
    /// measured genes enter the reconstruction.
    pub fn loss(&self, b: &GimviBatch<B>, kl_weight: f64, training: bool) -> GimviLoss<B> {
        let i = b.dataset;
        let inf = self.inference(b, training, false);
        // ρ renormalised over the dataset's genes, at those genes, is the softmax of the
        // logits restricted to them: the fused kernel takes the (selected) logits directly.
        let (logits, theta, pi) = self.decoder_outputs(inf.z.clone(), &b.batch_onehot, training);
        let (logits, theta, pi) = if i == SPATIAL {
            let idx = self.spatial_genes(&b.x.device());
            let cols = |t: Tensor<B, 2>| t.select(1, idx.clone());
            (cols(logits), cols(theta), cols(pi))
        } else {
            (logits, theta, pi)
        };
        let lik = self.config.generative_distributions[i];
        let pi = (lik == GeneLikelihood::Zinb).then_some(pi);
        let lp = fused_log_likelihood_from_logits(
            lik,
            b.x.clone(),
            logits,
            theta,
            pi,
            inf.library.clone(),
            training,
        );
        let reconstruction = b.log_factorial.clone() - lp;
        let kl_z = dist::kl_standard_normal(inf.qz_mean, inf.qz_var)
            .sum_dim(1)
            .squeeze_dim::<1>(1);
        let kl_local = match inf.ql {
            Some((m, v)) => {
                let (pm, pv) = self.library_prior(b);
                kl_z + dist::kl_normal(m, v, pm, pv).squeeze_dim::<1>(1)
            }
            None => kl_z,
        };
        let loss_sum = (reconstruction.clone() + kl_local.clone() * kl_weight).sum();
        GimviLoss {
            loss_sum,
            reconstruction,
            kl_local,
            z: inf.z,
        }
    }

    /// Library prior (mean, var) of each cell of `b`, from its dataset's prior at the cell's
    /// joint batch code; (n, 1) each.
    pub fn library_prior(&self, b: &GimviBatch<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let k = self.config.n_batch_total();
        let row = |t: Tensor<B, 2>| t.slice([b.dataset..b.dataset + 1, 0..k]).reshape([k, 1]);
        (
            b.batch_onehot
                .clone()
                .matmul(row(self.library_log_means.value_sync())),
            b.batch_onehot
                .clone()
                .matmul(row(self.library_log_vars.value_sync())),
        )
    }
}

/// Library priors of both datasets over their own batch codes.
pub fn library_priors(data: [&DataSet; 2]) -> [(Vec<f32>, Vec<f32>); 2] {
    [library_prior(data[0]), library_prior(data[1])]
}

/// Checks that both datasets match what the module was built for.
pub fn check_data(config: &GimviConfig, data: [&DataSet; 2]) -> Result<()> {
    check_data_one(config, SEQ, data[SEQ])?;
    check_data_one(config, SPATIAL, data[SPATIAL])
}

/// Checks that `data` fits the module as dataset `dataset`.
pub fn check_data_one(config: &GimviConfig, dataset: usize, data: &DataSet) -> Result<()> {
    let arg = if dataset == SPATIAL {
        "x_spatial"
    } else {
        "x_seq"
    };
    if data.n_genes() != config.n_genes_of(dataset) {
        return Err(invalid_arg(
            arg,
            format!(
                "has {} genes but the model expects {}",
                data.n_genes(),
                config.n_genes_of(dataset)
            ),
        ));
    }
    if data.batch.n_categories != config.n_batch[dataset] {
        return Err(invalid_arg(
            arg,
            format!(
                "has {} batch categories but the model expects {}",
                data.batch.n_categories, config.n_batch[dataset]
            ),
        ));
    }
    if let Some(c) = data.log_library.iter().position(|l| !l.is_finite()) {
        // G5: an empty cell has log library -inf.
        return Err(Error::InvalidData(format!(
            "cell {} of `{arg}` has no counts; remove empty cells first",
            c + 1
        )));
    }
    Ok(())
}

/// The data fit the module and a minibatch fits in memory (an allocation failure would abort
/// R).
fn check_query<B: Backend>(
    module: &Jvae<B>,
    dataset: usize,
    data: &DataSet,
    cells: &[usize],
    batch_size: usize,
) -> Result<()> {
    check_data_one(&module.config, dataset, data)?;
    crate::train::check_minibatch_memory(batch_size.min(cells.len()), module.config.n_genes)
}

/// Imputed expression of every sequencing gene for `cells` of `dataset` (gimvi.md §7):
/// ρ renormalised over decode mode `mode` (default: the dataset's own), or μ = ρ e^ℓ when
/// `normalized` is false. Row-major n x G.
#[allow(clippy::too_many_arguments)]
pub fn imputed_values<B: Backend>(
    module: &Jvae<B>,
    dataset: usize,
    data: &DataSet,
    cells: &[usize],
    deterministic: bool,
    normalized: bool,
    mode: Option<usize>,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<f32>> {
    check_query(module, dataset, data, cells, batch_size)?;
    let mode = mode.unwrap_or(dataset);
    let mut out = Vec::with_capacity(cells.len() * module.config.n_genes);
    for (done, chunk) in cells.chunks(batch_size.max(1)).enumerate() {
        crate::interrupt::step(done, cells.len().div_ceil(batch_size.max(1)))?;
        let b = GimviBatch::<B>::new(&module.config, dataset, data, chunk, device);
        let inf = module.inference(&b, false, deterministic);
        let gen = module.generative(inf.z, inf.library, &b.batch_onehot, mode, false);
        out.extend(host(if normalized { &gen.scale } else { &gen.rate }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Categorical, CsrMatrix};
    use burn::backend::Flex;

    type B = Flex;

    pub(super) fn dataset(rows: &[Vec<f32>], batch: Vec<u32>, n_batch: usize) -> DataSet {
        let g = rows[0].len();
        let mut indptr = vec![0];
        let (mut idx, mut val) = (vec![], vec![]);
        for r in rows {
            for (j, &v) in r.iter().enumerate() {
                if v > 0.0 {
                    idx.push(j as u32);
                    val.push(v);
                }
            }
            indptr.push(val.len());
        }
        let n = rows.len();
        let counts = CsrMatrix::new(n, g, indptr, idx, val).unwrap();
        DataSet::with_batches(
            counts,
            Categorical {
                codes: batch,
                n_categories: n_batch,
            },
        )
        .unwrap()
    }

    fn values(t: Tensor<B, 2>) -> Vec<f32> {
        host(&t)
    }

    #[test]
    fn shape_inventory_matches_the_reference() {
        // gimvi.md §10.1: G_0 = 20, G_1 = 8, K_0 = K_1 = 1, defaults.
        let dev = Default::default();
        let cfg = GimviConfig::new(20, (0..8).collect(), [1, 1]);
        let m =
            Jvae::<B>::new(cfg, [(vec![1.0], vec![1.0]), (vec![1.0], vec![1.0])], &dev).unwrap();
        let e = &m.z_encoder;
        assert_eq!(e.encoders[0].layers[0].linear.weight.dims(), [20, 64]);
        assert_eq!(e.encoders[1].layers[0].linear.weight.dims(), [8, 64]);
        assert_eq!(e.encoder_shared.layers.len(), 1);
        assert_eq!(e.encoder_shared.layers[0].linear.weight.dims(), [64, 64]);
        assert_eq!(e.mean_encoder.weight.dims(), [64, 10]);
        let l0 = m.l_encoders[0].as_ref().expect("seq library is modelled");
        assert_eq!(l0.encoder.layers[0].linear.weight.dims(), [20, 128]);
        assert_eq!(l0.mean_encoder.weight.dims(), [128, 1]);
        assert!(m.l_encoders[1].is_none());
        assert!(m.decoder.px_decoder_conditioned.is_none() && m.decoder.px_decoder_final.is_none());
        assert_eq!(m.decoder.px_scale_decoder.weight.dims(), [10, 20]);
        assert_eq!(m.px_r.dims(), [2, 20]);
        assert_eq!(m.library_log_means.value_sync().dims(), [2, 2]);
    }

    #[test]
    fn library_prior_is_per_dataset_over_joint_codes() {
        // gimvi.md §10.2: seq totals 1 and 100 in batch 0 -> m = ln 10, population variance.
        let dev = Default::default();
        let seq = dataset(&[vec![1.0, 0.0], vec![60.0, 40.0]], vec![0, 0], 1);
        let spatial = dataset(&[vec![3.0], vec![5.0]], vec![0, 0], 1);
        let cfg = GimviConfig::new(2, vec![1], [1, 1]);
        let m = Jvae::<B>::new(cfg.clone(), library_priors([&seq, &spatial]), &dev).unwrap();
        let means = values(m.library_log_means.value_sync());
        let vars = values(m.library_log_vars.value_sync());
        assert!((means[0] - std::f32::consts::LN_10).abs() < 1e-6); // 2.3025851
        assert!((vars[0] - 5.301_898).abs() < 1e-5);
        // Code 1 (the spatial batch) in the seq prior: (0, 1); the spatial row uses code 1.
        assert_eq!((means[1], vars[1]), (0.0, 1.0));
        assert_eq!((means[2], vars[2]), (0.0, 1.0));
        assert!((means[3] - ((3f32.ln() + 5f32.ln()) / 2.0)).abs() < 1e-6);
        // Batch offset: spatial cells get joint code K_0 + own code.
        let b = GimviBatch::<B>::new(&cfg, SPATIAL, &spatial, &[0, 1], &dev);
        assert_eq!(values(b.batch_onehot.clone()), vec![0.0, 1.0, 0.0, 1.0]);
        let (pm, _) = m.library_prior(&b);
        assert!((values(pm)[0] - means[3]).abs() < 1e-7);
    }

    #[test]
    fn renormalization_matches_the_reference_vector() {
        // gimvi.md §10.3: ρ̃ = (.1,.2,.3,.4), M_1 = (3, 1), spatial total 12.
        let dev = Default::default();
        let rho =
            Tensor::<B, 2>::from_data(TensorData::new(vec![0.1f32, 0.2, 0.3, 0.4], [1, 4]), &dev);
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![3i64, 1], [2]), &dev);
        let r1 = renormalize(rho.clone(), Some(&idx));
        let want = [1.0 / 6.0, 1.0 / 3.0, 0.5, 2.0 / 3.0];
        let got = values(r1.clone());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w as f32).abs() < 1e-6, "{got:?}");
        }
        let mu = r1 * 12.0;
        let sel = values(mu.clone().select(1, idx));
        assert!((sel[0] - 8.0).abs() < 1e-5 && (sel[1] - 4.0).abs() < 1e-5);
        let r0 = values(renormalize(rho, None));
        assert!((r0[3] - 0.4).abs() < 1e-6);
    }

    #[test]
    fn spatial_loss_uses_only_panel_genes_at_their_decoder_positions() {
        // With Poisson on the spatial side, R_n = Σ_j [μ_{M[j]} - x_j log μ_{M[j]} + log x_j!].
        let _guard = crate::TEST_RNG_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dev = Default::default();
        let seq = dataset(
            &[vec![1.0, 2.0, 3.0, 4.0], vec![2.0, 2.0, 0.0, 1.0]],
            vec![0, 0],
            1,
        );
        let spatial = dataset(&[vec![5.0, 1.0], vec![0.0, 3.0]], vec![0, 0], 1);
        let mut cfg = GimviConfig::new(4, vec![3, 1], [1, 1]);
        cfg.generative_distributions = [GeneLikelihood::Nb, GeneLikelihood::Poisson];
        let mut m = Jvae::<B>::new(cfg.clone(), library_priors([&seq, &spatial]), &dev).unwrap();
        // σ_z ≈ 0, so the loss's sampled z is the posterior mean.
        let var = &mut m.z_encoder.var_encoder;
        var.weight = Param::from_tensor(var.weight.val().zeros_like());
        var.bias = Some(Param::from_tensor(Tensor::full([10], -40.0, &dev)));
        let b = GimviBatch::<B>::new(&cfg, SPATIAL, &spatial, &[0, 1], &dev);
        let inf = m.inference(&b, false, true);
        let gen = m.generative(
            inf.z.clone(),
            inf.library.clone(),
            &b.batch_onehot,
            SPATIAL,
            false,
        );
        let mu = values(gen.rate);
        let x = [[5.0f32, 1.0], [0.0, 3.0]];
        let lf = |k: f32| (1..=k as u32).map(|v| (v as f32).ln()).sum::<f32>();
        let want: Vec<f32> = (0..2)
            .map(|n| {
                [3usize, 1]
                    .iter()
                    .enumerate()
                    .map(|(j, &g)| {
                        let m = mu[n * 4 + g];
                        m - x[n][j] * m.ln() + lf(x[n][j])
                    })
                    .sum()
            })
            .collect();
        // Observed library on the spatial side: Σ_j μ_{M[j]} equals the cell's total.
        for (n, total) in [6.0f32, 3.0].iter().enumerate() {
            assert!((mu[n * 4 + 3] + mu[n * 4 + 1] - total).abs() < 1e-4);
        }
        let l = m.loss(&b, 0.0, false);
        let rec = values(l.reconstruction.unsqueeze_dim(0));
        for n in 0..2 {
            assert!((rec[n] - want[n]).abs() < 1e-4, "{rec:?} vs {want:?}");
        }
    }
}
