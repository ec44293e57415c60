//! MULTIVI (multivi.md): one VAE over gene expression, chromatin accessibility and
//! optionally surface proteins of the same cells, where any cell may lack some of the
//! modalities (paired, RNA-only and ATAC-only cells in one model). Each modality has its own
//! encoder; the posteriors of the modalities a cell has are mixed into one joint latent (§4),
//! which every decoder reads.

pub mod arches;
pub mod model;
mod scvi_tools;

pub use model::{Modality, MultiviKind, MultiviModel};

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{activation, backend::Backend, Distribution, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::{covariate_width, DataSet};
use crate::dist;
use crate::dist::surrogate::{
    fused_bernoulli_cross_entropy, fused_log_likelihood, fused_log_likelihood_from_logits,
};
use crate::error::{invalid_arg, Result};
use crate::models::options::{
    check_count_likelihoods, check_dropout_rates, check_modality_columns, check_sizes,
    GeneLikelihood, LatentDistribution, NormPlacement,
};
use crate::nn;
use std::sync::Arc;

use crate::nn::{Encoder, FcLayers, FcOptions, SparseInput, SparseRows};

/// Added to a registered RNA size factor before its log (§4 step 3).
const SIZE_FACTOR_EPS: f64 = 1e-6;
/// The masked softmax's stand-in for an absent modality (Q8) and its denominator guard.
const MASKED_WEIGHT: f64 = 1e-30;
/// How the modality posteriors are weighted (§2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModalityWeights {
    /// Fixed equal logits.
    Equal,
    /// One trainable logit per modality.
    Universal,
    /// Trainable logits per cell (the cell's row is selected by its index).
    Cell,
}

/// The penalty that aligns the modality posteriors of paired cells (§5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModalityPenalty {
    Jeffreys,
    #[serde(rename = "MMD")]
    Mmd,
    None,
}

/// How the protein dispersion θ^p is shared (§2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProteinDispersion {
    /// One θ per protein.
    #[default]
    Protein,
    /// One θ per protein and batch.
    ProteinBatch,
}

/// Hyperparameters and the data dimensions the module is built from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MultiviConfig {
    /// Genes (G), regions (R) and proteins (P): the data's columns in this order.
    pub n_genes: usize,
    pub n_regions: usize,
    #[serde(default)]
    pub n_proteins: usize,
    #[serde(default)]
    pub protein_dispersion: ProteinDispersion,
    pub n_batch: usize,
    pub n_cats_per_cov: Vec<usize>,
    pub n_continuous_cov: usize,
    /// Cells of the training data (rows of per-cell modality weights).
    pub n_cells: usize,
    pub n_hidden: usize,
    pub n_latent: usize,
    pub n_layers_encoder: usize,
    pub n_layers_decoder: usize,
    pub dropout_rate: f64,
    pub region_factors: bool,
    pub gene_likelihood: GeneLikelihood,
    pub modality_weights: ModalityWeights,
    pub modality_penalty: ModalityPenalty,
    pub use_batch_norm: NormPlacement,
    pub use_layer_norm: NormPlacement,
    pub latent_distribution: LatentDistribution,
    pub deeply_inject_covariates: bool,
    pub encode_covariates: bool,
    pub fully_paired: bool,
    /// Registered size factors (RNA, ATAC) replace the library encoders (§4 step 3).
    #[serde(default)]
    pub use_size_factor: bool,
}

impl MultiviConfig {
    /// scvi-tools' defaults for G genes, R regions and K batches; hidden and latent widths
    /// follow the reference's rule (§2).
    pub fn new(n_genes: usize, n_regions: usize, n_batch: usize) -> Self {
        let n_hidden = default_n_hidden(n_genes, n_regions);
        Self {
            n_genes,
            n_regions,
            n_proteins: 0,
            protein_dispersion: ProteinDispersion::Protein,
            n_batch,
            n_cats_per_cov: vec![],
            n_continuous_cov: 0,
            n_cells: 0,
            n_hidden,
            n_latent: default_n_latent(n_hidden),
            n_layers_encoder: 2,
            n_layers_decoder: 2,
            dropout_rate: 0.1,
            region_factors: true,
            gene_likelihood: GeneLikelihood::Zinb,
            modality_weights: ModalityWeights::Equal,
            modality_penalty: ModalityPenalty::Jeffreys,
            use_batch_norm: NormPlacement::None,
            use_layer_norm: NormPlacement::Both,
            latent_distribution: LatentDistribution::Normal,
            deeply_inject_covariates: false,
            encode_covariates: false,
            fully_paired: false,
            use_size_factor: false,
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_count_likelihoods(&[("gene_likelihood", self.gene_likelihood)])?;
        if self.n_genes == 0 && self.n_regions == 0 {
            return Err(invalid_arg(
                "rna",
                "and `atac` are both empty; MULTIVI needs expression or accessibility",
            ));
        }
        check_sizes(
            &[
                ("n_hidden", self.n_hidden),
                ("n_latent", self.n_latent),
                ("n_layers_encoder", self.n_layers_encoder),
                ("n_layers_decoder", self.n_layers_decoder),
            ],
            self.n_features(),
        )?;
        check_dropout_rates(&[("dropout_rate", self.dropout_rate)])?;
        if self.modality_weights == ModalityWeights::Cell && self.n_cells == 0 {
            return Err(invalid_arg(
                "modality_weights",
                "= \"cell\" needs the number of cells",
            ));
        }
        Ok(())
    }

    pub fn covariate_width(&self) -> usize {
        covariate_width(self.n_batch, &self.n_cats_per_cov)
    }

    /// Columns of the data: expression, accessibility, then proteins.
    pub fn n_features(&self) -> usize {
        self.n_genes + self.n_regions + self.n_proteins
    }

    /// Modalities mixed into the joint posterior: expression and accessibility (each
    /// encoder exists even when its data do not, §1.1), and proteins when there are any.
    pub fn n_modalities(&self) -> usize {
        2 + usize::from(self.n_proteins > 0)
    }
}

/// `min(128, floor(sqrt(R)))` with regions, else from the genes.
pub fn default_n_hidden(n_genes: usize, n_regions: usize) -> usize {
    let n = if n_regions > 0 { n_regions } else { n_genes };
    ((n as f64).sqrt().floor() as usize).clamp(1, 128)
}

/// `floor(sqrt(n_hidden))`.
pub fn default_n_latent(n_hidden: usize) -> usize {
    ((n_hidden as f64).sqrt().floor() as usize).max(1)
}

/// A library encoder: an FCLayers stack and one output unit.
#[derive(Module, Debug)]
pub struct LibraryEncoder<B: Backend> {
    pub px_decoder: FcLayers<B>,
    pub output: Linear<B>,
}

/// The expression decoder: ρ logits and zero-inflation logits over the genes.
#[derive(Module, Debug)]
pub struct ExpressionDecoder<B: Backend> {
    pub px_decoder: FcLayers<B>,
    pub px_scale_decoder: Linear<B>,
    pub px_dropout_decoder: Linear<B>,
}

/// The accessibility decoder: a probability per region.
#[derive(Module, Debug)]
pub struct AccessibilityDecoder<B: Backend> {
    pub px_decoder: FcLayers<B>,
    pub output: Linear<B>,
}

/// The totalVI-style protein decoder (§3.3): a background and a foreground rate per protein
/// and the logits of their mixture. Every stack injects the covariates at every layer; each
/// head reads its stack's output, the decoder input and the covariates.
#[derive(Module, Debug)]
pub struct ProteinDecoder<B: Backend> {
    pub py_back_decoder: FcLayers<B>,
    pub py_back_mean_log_alpha: Linear<B>,
    pub py_back_mean_log_beta: Linear<B>,
    pub py_fore_decoder: FcLayers<B>,
    pub py_fore_scale_decoder: Linear<B>,
    pub sigmoid_decoder: FcLayers<B>,
    pub py_background_decoder: Linear<B>,
}

/// The protein decoder's output for a minibatch, (n, P) each.
pub struct ProteinGenerative<B: Backend> {
    pub rate_back: Tensor<B, 2>,
    pub rate_fore: Tensor<B, 2>,
    /// Logits of the background's share π^p.
    pub mixing_logits: Tensor<B, 2>,
}

/// Dropout of the protein decoder's stacks, fixed by the reference (§2).
const PROTEIN_DECODER_DROPOUT: f64 = 0.1;

impl<B: Backend> ProteinDecoder<B> {
    fn new(stack: &FcOptions, n_proteins: usize, device: &B::Device) -> Self {
        let head_in = stack.n_hidden + stack.n_in + stack.n_cov;
        let head = || LinearConfig::new(head_in, n_proteins).init(device);
        Self {
            py_back_decoder: FcLayers::new(stack, device),
            py_back_mean_log_alpha: head(),
            py_back_mean_log_beta: head(),
            py_fore_decoder: FcLayers::new(stack, device),
            py_fore_scale_decoder: head(),
            sigmoid_decoder: FcLayers::new(stack, device),
            py_background_decoder: head(),
        }
    }

    /// The background is a fresh draw of its log-normal rate, also outside training (Q9).
    fn forward(
        &self,
        u: &Tensor<B, 2>,
        cov: Option<&Tensor<B, 2>>,
        training: bool,
    ) -> ProteinGenerative<B> {
        let head = |linear: &Linear<B>, h: Tensor<B, 2>| {
            let mut input = vec![h, u.clone()];
            input.extend(cov.cloned());
            nn::linear(linear, Tensor::cat(input, 1))
        };
        let h = self.py_back_decoder.forward(u.clone(), cov, training);
        let alpha = head(&self.py_back_mean_log_alpha, h.clone());
        let beta = head(&self.py_back_mean_log_beta, h).exp();
        let noise = crate::nn::draw(
            alpha.dims(),
            Distribution::Normal(0.0, 1.0),
            &alpha.device(),
        );
        let rate_back = (alpha + beta * noise).exp();
        let h = self.py_fore_decoder.forward(u.clone(), cov, training);
        let fore_scale = activation::relu(head(&self.py_fore_scale_decoder, h)) + (1.0 + 1e-8);
        let h = self.sigmoid_decoder.forward(u.clone(), cov, training);
        ProteinGenerative {
            rate_fore: rate_back.clone() * fore_scale,
            rate_back,
            mixing_logits: head(&self.py_background_decoder, h),
        }
    }
}

/// The MULTIVAE module. Parameter names follow scvi-tools' state dict (multivi.md §3.2).
#[derive(Module, Debug)]
pub struct Multivae<B: Backend> {
    pub z_encoder_expression: Encoder<B>,
    pub l_encoder_expression: LibraryEncoder<B>,
    pub z_encoder_accessibility: Encoder<B>,
    pub l_encoder_accessibility: LibraryEncoder<B>,
    /// None without genes.
    pub z_decoder_expression: Option<ExpressionDecoder<B>>,
    /// None without regions.
    pub z_decoder_accessibility: Option<AccessibilityDecoder<B>>,
    /// The protein encoder and decoder, None without proteins.
    pub z_encoder_protein: Option<Encoder<B>>,
    pub z_decoder_pro: Option<ProteinDecoder<B>>,
    /// Log protein dispersion, (P, 1) or per batch (P, K); None without proteins.
    pub py_r: Option<Param<Tensor<B, 2>>>,
    /// Log inverse dispersion per gene.
    pub px_r: Param<Tensor<B, 1>>,
    /// Region factors (logits), when enabled and there are regions.
    pub region_factors: Option<Param<Tensor<B, 1>>>,
    /// Modality logits: (1, M) universal or (cells, M) per cell, M modalities; None for
    /// equal weights.
    pub mod_weights: Option<Param<Tensor<B, 2>>>,
    #[module(skip)]
    pub config: MultiviConfig,
}

/// A minibatch on the device.
pub struct MultiviBatch<B: Backend> {
    /// Raw counts (the encoders see no log1p, Q10); a zero column when absent.
    pub x_rna: Tensor<B, 2>,
    /// Dense accessibility counts, only for encoders that read the covariates with them
    /// (`encode_covariates`); everything else reads `atac_rows`.
    pub x_atac: Option<Tensor<B, 2>>,
    /// Protein counts, when the model has proteins.
    pub y: Option<Tensor<B, 2>>,
    /// Σ lgamma(x + 1) over the cell's genes, and over its proteins.
    pub log_factorial: Tensor<B, 1>,
    pub protein_log_factorial: Tensor<B, 1>,
    /// Whether each cell has expression / accessibility [/ proteins] (nonzero total),
    /// (n, modalities).
    pub masks: Tensor<B, 2>,
    /// Whether any cell of the minibatch has proteins (else the protein decoder sits out
    /// the step, as in the reference).
    pub any_protein: bool,
    /// Registered size factors (RNA, ATAC), (n, 2), in size-factor mode.
    pub size_factors: Option<Tensor<B, 2>>,
    /// Covariate one-hots (batch and categorical covariates with > 1 category).
    pub covariates: Option<Tensor<B, 2>>,
    pub continuous: Option<Tensor<B, 2>>,
    /// Each cell's row of per-cell modality weights.
    pub cells: Tensor<B, 1, Int>,
    /// Batch code of each cell (the adversarial classifier's classes).
    pub batch_codes: Vec<usize>,
    pub n_cells: usize,
    /// The same counts as sparse rows, for the encoders' sparse first layers.
    pub rna_rows: Arc<SparseRows>,
    pub atac_rows: Arc<SparseRows>,
}

impl<B: Backend> MultiviBatch<B> {
    /// Assembles `cells` of `data` (expression columns first, then regions, then proteins),
    /// decoding as batch `transform_batch` when given.
    pub fn new(
        config: &MultiviConfig,
        data: &DataSet,
        cells: &[usize],
        transform_batch: Option<u32>,
        device: &B::Device,
    ) -> Self {
        let (n, g, r, p) = (
            cells.len(),
            config.n_genes,
            config.n_regions,
            config.n_proteins,
        );
        let (gw, rw, m) = (g.max(1), r.max(1), config.n_modalities());
        let mut x_rna = vec![0f32; n * gw];
        let dense_atac = dense_inputs::<B>(config);
        let mut x_atac = vec![0f32; if dense_atac { n * rw } else { 0 }];
        let mut y = vec![0f32; n * p];
        let mut log_factorial = vec![0f32; n];
        let mut protein_log_factorial = vec![0f32; n];
        let mut masks = vec![0f32; n * m];
        let (mut rna_rows, mut atac_rows) = (SparseRows::default(), SparseRows::default());
        rna_rows.indptr.push(0);
        atac_rows.indptr.push(0);
        for (row, &c) in cells.iter().enumerate() {
            let (idx, val) = data.counts.row(c);
            let mut totals = [0f64; 3];
            let (mut lf, mut protein_lf) = (0f64, 0f64);
            for (&j, &v) in idx.iter().zip(val) {
                let j = j as usize;
                if j < g {
                    x_rna[row * gw + j] = v;
                    totals[0] += v as f64;
                    lf += crate::data::ln_factorial(v as f64);
                    rna_rows.indices.push(j as u32);
                    rna_rows.values.push(v);
                } else if j < g + r {
                    if dense_atac {
                        x_atac[row * rw + j - g] = v;
                    }
                    totals[1] += v as f64;
                    atac_rows.indices.push((j - g) as u32);
                    atac_rows.values.push(v);
                } else {
                    y[row * p + j - g - r] = v;
                    totals[2] += v as f64;
                    protein_lf += crate::data::ln_factorial(v as f64);
                }
            }
            rna_rows.indptr.push(rna_rows.values.len());
            atac_rows.indptr.push(atac_rows.values.len());
            log_factorial[row] = lf as f32;
            protein_log_factorial[row] = protein_lf as f32;
            for (k, total) in totals.iter().take(m).enumerate() {
                masks[row * m + k] = (*total > 0.0) as u8 as f32;
            }
        }
        let any_protein = p > 0 && (0..n).any(|row| masks[row * m + 2] > 0.0);
        let cov = data.covariate_rows(cells, transform_batch);
        let mat = |v: Vec<f32>, cols: usize| {
            Tensor::<B, 2>::from_data(TensorData::new(v, [n, cols]), device)
        };
        let u = config.n_continuous_cov;
        let batch_codes = cells
            .iter()
            .map(|&c| transform_batch.unwrap_or(data.batch.codes[c]) as usize)
            .collect();
        let vector = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [n]), device);
        let size_factors = config.use_size_factor.then(|| {
            let columns = &data.size_factors[..2];
            let v = cells
                .iter()
                .flat_map(|&c| columns.iter().map(move |col| col[c]))
                .collect();
            mat(v, 2)
        });
        Self {
            x_rna: mat(x_rna, gw),
            x_atac: dense_atac.then(|| mat(x_atac, rw)),
            y: (p > 0).then(|| mat(y, p)),
            log_factorial: vector(log_factorial),
            protein_log_factorial: vector(protein_log_factorial),
            masks: mat(masks, m),
            any_protein,
            size_factors,
            covariates: (cov.width > 0).then(|| mat(cov.covariates, cov.width)),
            continuous: (u > 0).then(|| mat(cov.continuous, u)),
            cells: Tensor::from_data(
                TensorData::new(cells.iter().map(|&c| c as i64).collect(), [n]),
                device,
            ),
            batch_codes,
            n_cells: n,
            rna_rows: Arc::new(rna_rows),
            atac_rows: Arc::new(atac_rows),
        }
    }

    fn mask(&self, m: usize) -> Tensor<B, 1> {
        self.masks
            .clone()
            .slice([0..self.n_cells, m..m + 1])
            .squeeze_dim::<1>(1)
    }
}

/// The encoder side of a minibatch (§4).
pub struct MultiviInference<B: Backend> {
    /// Per modality (expression, accessibility [, proteins]): posterior mean, variance and
    /// own draw.
    pub qz_m: Vec<Tensor<B, 2>>,
    pub qz_v: Vec<Tensor<B, 2>>,
    pub z_m: Vec<Tensor<B, 2>>,
    /// Mixing weights of the modalities, (n, modalities).
    pub weights: Tensor<B, 2>,
    /// The joint posterior and its draw (after the latent transform).
    pub qz_mean: Tensor<B, 2>,
    pub qz_var: Tensor<B, 2>,
    pub z: Tensor<B, 2>,
    /// Log library of the expression (ℓ_e) and accessibility factor d, (n, 1).
    pub library_expression: Tensor<B, 2>,
    pub library_accessibility: Tensor<B, 2>,
    /// The encoders' sparse first layers, pending their weight gradients.
    pub sparse_inputs: Vec<SparseInput<B>>,
}

/// The decoder side: expression logits, zero-inflation logits, region probabilities,
/// protein rates.
pub struct MultiviGenerative<B: Backend> {
    pub expression_logits: Option<Tensor<B, 2>>,
    pub dropout_logits: Option<Tensor<B, 2>>,
    /// Logits of p, the decoder's region probabilities before the library and region
    /// factors.
    pub accessibility_logits: Option<Tensor<B, 2>>,
    pub protein: Option<ProteinGenerative<B>>,
}

/// Loss terms of a minibatch (§5.5).
pub struct MultiviLoss<B: Backend> {
    /// Mean over cells of R + β KL + Pen.
    pub loss: Tensor<B, 1>,
    /// Masked reconstruction R_n.
    pub reconstruction: Tensor<B, 1>,
    /// Its masked parts M_m R_m: expression, accessibility [, protein].
    pub reconstruction_by_modality: Vec<(&'static str, Tensor<B, 1>)>,
    pub kl_z: Tensor<B, 1>,
    pub penalty: Tensor<B, 1>,
    /// The joint draw (input of the adversarial classifier).
    pub z: Tensor<B, 2>,
    pub sparse_inputs: Vec<SparseInput<B>>,
}

/// Masked softmax of the modality logits (§4 step 4): exp(ω) where the modality is
/// measured, 1e-30 where not, normalised with a 1e-30 guard.
pub fn mixing_weights<B: Backend>(logits: Tensor<B, 2>, masks: Tensor<B, 2>) -> Tensor<B, 2> {
    let w = logits.exp() * masks.clone() + (masks.neg() + 1.0) * MASKED_WEIGHT;
    w.clone() / (w.sum_dim(1) + MASKED_WEIGHT)
}

/// Joint posterior (§4 step 5, Q2): μ = Σ w μ_m, v = Σ sqrt(w) v_m.
pub fn mix<B: Backend>(
    weights: &Tensor<B, 2>,
    means: &[Tensor<B, 2>],
    vars: &[Tensor<B, 2>],
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let n = weights.dims()[0];
    let w = |m: usize| weights.clone().slice([0..n, m..m + 1]);
    let mut mean = means[0].clone() * w(0);
    let mut var = vars[0].clone() * w(0).sqrt();
    for m in 1..means.len() {
        mean = mean + means[m].clone() * w(m);
        var = var + vars[m].clone() * w(m).sqrt();
    }
    (mean, var)
}

/// Symmetric KL (Jeffreys) between N(μ_1, sqrt(v_1)) and N(μ_2, sqrt(v_2)) per cell,
/// summed over the latent dimensions (§5.4, Q3: the variances are sqrt(v)).
pub fn jeffreys<B: Backend>(
    mean1: Tensor<B, 2>,
    var1: Tensor<B, 2>,
    mean2: Tensor<B, 2>,
    var2: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let (s1, s2) = (var1.sqrt(), var2.sqrt());
    let delta2 = (mean1 - mean2).powf_scalar(2.0);
    let t = (s1.clone() + delta2.clone()) / (s2.clone() * 2.0) + (s2 + delta2) / (s1 * 2.0) - 1.0;
    t.sum_dim(1).squeeze_dim::<1>(1)
}

/// The "MMD" penalty (§5.4, Q5): the summed Euclidean distance between the modality means of
/// the paired cells of the minibatch, given to every cell.
pub fn mmd_penalty<B: Backend>(
    mean1: Tensor<B, 2>,
    mean2: Tensor<B, 2>,
    paired: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let n = paired.dims()[0];
    let distance = (mean1 - mean2)
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .squeeze_dim::<1>(1);
    (distance * paired).sum().expand([n])
}

/// Whether the minibatch's counts enter the encoders dense: when the encoders read
/// covariates with them, and on a device backend (where the batch's counts are already on the
/// device and a host sparse product would copy the weights down and back every step).
fn dense_inputs<B: Backend>(config: &MultiviConfig) -> bool {
    config.encode_covariates || !crate::backend::computes_on_host::<B>()
}

impl<B: Backend> Multivae<B> {
    pub fn new(config: MultiviConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let cov = c.covariate_width();
        let enc_cov = if c.encode_covariates { cov } else { 0 };
        let enc_extra = if c.encode_covariates {
            c.n_continuous_cov
        } else {
            0
        };
        let (h, d) = (c.n_hidden, c.n_latent);
        let enc = |n_in: usize, dropout: f64, inject: bool| FcOptions {
            n_in: n_in + enc_extra,
            n_out: h,
            n_cov: enc_cov,
            n_layers: c.n_layers_encoder,
            n_hidden: h,
            dropout,
            batch_norm: c.use_batch_norm.encoder(),
            layer_norm: c.use_layer_norm.encoder(),
            inject_covariates: inject,
            leaky_relu: true,
        };
        let dec = |leaky: bool| FcOptions {
            n_in: d + c.n_continuous_cov,
            n_out: h,
            n_cov: cov,
            n_layers: c.n_layers_decoder,
            n_hidden: h,
            dropout: 0.0,
            batch_norm: c.use_batch_norm.decoder(),
            layer_norm: c.use_layer_norm.decoder(),
            inject_covariates: c.deeply_inject_covariates,
            leaky_relu: leaky,
        };
        let (g, r) = (c.n_genes, c.n_regions);
        let deep = c.deeply_inject_covariates;
        let library = |n_in: usize| LibraryEncoder {
            px_decoder: FcLayers::new(&enc(n_in, 0.0, deep), device),
            output: LinearConfig::new(h, 1).init(device),
        };
        let m = c.n_modalities();
        let mod_weights = match c.modality_weights {
            ModalityWeights::Equal => None,
            ModalityWeights::Universal => Some(crate::nn::trainable(Tensor::ones([1, m], device))),
            ModalityWeights::Cell => {
                Some(crate::nn::trainable(Tensor::ones([c.n_cells, m], device)))
            }
        };
        let p = c.n_proteins;
        let protein_stack = FcOptions {
            dropout: PROTEIN_DECODER_DROPOUT,
            inject_covariates: true,
            ..dec(false)
        };
        let dispersion_columns = match c.protein_dispersion {
            ProteinDispersion::Protein => 1,
            ProteinDispersion::ProteinBatch => c.n_batch,
        };
        Ok(Self {
            z_encoder_expression: Encoder::new(
                &enc(g.max(1), c.dropout_rate, deep),
                d,
                0.0,
                device,
            ),
            l_encoder_expression: library(g.max(1)),
            // Q6: the accessibility z-encoder injects covariates into every layer.
            z_encoder_accessibility: Encoder::new(
                &enc(r.max(1), c.dropout_rate, true),
                d,
                0.0,
                device,
            ),
            l_encoder_accessibility: library(r.max(1)),
            z_decoder_expression: (g > 0).then(|| ExpressionDecoder {
                px_decoder: FcLayers::new(&dec(false), device),
                px_scale_decoder: LinearConfig::new(h, g).init(device),
                px_dropout_decoder: LinearConfig::new(h, g).init(device),
            }),
            z_decoder_accessibility: (r > 0).then(|| AccessibilityDecoder {
                px_decoder: FcLayers::new(&dec(true), device),
                output: LinearConfig::new(h, r).init(device),
            }),
            // Like the accessibility z-encoder, it injects covariates into every layer (Q6).
            z_encoder_protein: (p > 0)
                .then(|| Encoder::new(&enc(p, c.dropout_rate, true), d, 0.0, device)),
            z_decoder_pro: (p > 0).then(|| ProteinDecoder::new(&protein_stack, p, device)),
            py_r: (p > 0).then(|| {
                crate::nn::lazy_random(
                    [p, dispersion_columns],
                    Distribution::Uniform(0.0, 2.0),
                    device,
                )
            }),
            px_r: crate::nn::lazy_normal([g.max(1)], device),
            region_factors: (c.region_factors && r > 0)
                .then(|| crate::nn::trainable(Tensor::zeros([r], device))),
            mod_weights,
            config,
        })
    }

    /// An encoder's data input: the counts, with the continuous covariates when encoded.
    fn encoder_input(&self, x: &Tensor<B, 2>, b: &MultiviBatch<B>) -> Tensor<B, 2> {
        match (&b.continuous, self.config.encode_covariates) {
            (Some(u), true) => Tensor::cat(vec![x.clone(), u.clone()], 1),
            _ => x.clone(),
        }
    }

    fn encoder_covariates<'a>(&self, b: &'a MultiviBatch<B>) -> Option<&'a Tensor<B, 2>> {
        if self.config.encode_covariates {
            b.covariates.as_ref()
        } else {
            None
        }
    }

    pub fn transform_latent(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.config.latent_distribution {
            LatentDistribution::Normal => z,
            LatentDistribution::Ln => activation::softmax(z, 1),
        }
    }

    /// The modality logits of the minibatch's cells, (n, modalities).
    fn modality_logits(&self, b: &MultiviBatch<B>) -> Tensor<B, 2> {
        let device = b.masks.device();
        match &self.mod_weights {
            None => Tensor::ones([b.n_cells, self.config.n_modalities()], &device),
            Some(w) => match self.config.modality_weights {
                ModalityWeights::Cell => w.val().select(0, b.cells.clone()),
                _ => w.val().repeat_dim(0, b.n_cells),
            },
        }
    }

    /// Encoder pass (§4): the modality posteriors, their mixture and one joint draw.
    pub fn inference(&self, b: &MultiviBatch<B>, training: bool) -> MultiviInference<B> {
        let cov = self.encoder_covariates(b);
        // The counts are mostly zeros (99.7% for ATAC): on the host, without encoded
        // covariates, the encoders' first layers multiply the sparse rows (same values, far
        // fewer products); dense inputs (None: sparse) otherwise (see `dense_inputs`).
        let dense = dense_inputs::<B>(&self.config);
        let xe = dense.then(|| self.encoder_input(&b.x_rna, b));
        // (The batch holds dense accessibility counts exactly when `dense`.)
        let xa = b.x_atac.as_ref().map(|x| self.encoder_input(x, b));
        let mut sparse_inputs = Vec::new();
        let mut encode =
            |enc: &Encoder<B>, x: &Option<Tensor<B, 2>>, rows: &Arc<SparseRows>| match x {
                Some(x) => enc.forward(x.clone(), cov, training),
                None => {
                    let (q, pending) = enc.forward_sparse(rows, training);
                    sparse_inputs.push(pending);
                    q
                }
            };
        let qa = encode(&self.z_encoder_accessibility, &xa, &b.atac_rows);
        let qe = encode(&self.z_encoder_expression, &xe, &b.rna_rows);
        let mut library =
            |enc: &LibraryEncoder<B>, x: Option<Tensor<B, 2>>, rows: &Arc<SparseRows>| {
                let h = match x {
                    Some(x) => enc.px_decoder.forward(x, cov, training),
                    None => {
                        let (h, pending) = enc.px_decoder.forward_sparse(rows, training);
                        sparse_inputs.push(pending);
                        h
                    }
                };
                nn::linear(&enc.output, h)
            };
        let (library_expression, library_accessibility) = match &b.size_factors {
            // Size-factor mode: ℓ_e = log(s_e + 1e-6), d = s_a; no library encoder runs.
            Some(sf) => (
                (sf.clone().slice([0..b.n_cells, 0..1]) + SIZE_FACTOR_EPS).log(),
                sf.clone().slice([0..b.n_cells, 1..2]),
            ),
            None => (
                activation::leaky_relu(library(&self.l_encoder_expression, xe, &b.rna_rows), 0.01),
                activation::sigmoid(library(&self.l_encoder_accessibility, xa, &b.atac_rows)),
            ),
        };
        let qp = self
            .z_encoder_protein
            .as_ref()
            .zip(b.y.as_ref())
            .map(|(enc, y)| enc.forward(self.encoder_input(y, b), cov, training));
        let posteriors: Vec<_> = [qe, qa].into_iter().chain(qp).collect();
        let qz_m: Vec<_> = posteriors.iter().map(|q| q.mean.clone()).collect();
        let qz_v: Vec<_> = posteriors.iter().map(|q| q.var.clone()).collect();
        let weights = mixing_weights(self.modality_logits(b), b.masks.clone());
        let (qz_mean, qz_var) = mix(&weights, &qz_m, &qz_v);
        let z = self.transform_latent(crate::nn::resample(&qz_mean, &qz_var));
        MultiviInference {
            z_m: posteriors
                .into_iter()
                .map(|q| self.transform_latent(q.sample))
                .collect(),
            qz_m,
            qz_v,
            weights,
            qz_mean,
            qz_var,
            z,
            library_expression,
            library_accessibility,
            sparse_inputs,
        }
    }

    /// Decoder pass from the latent `z` (the joint draw, or its mean downstream).
    pub fn generative(
        &self,
        b: &MultiviBatch<B>,
        z: Tensor<B, 2>,
        training: bool,
    ) -> MultiviGenerative<B> {
        let u = match &b.continuous {
            Some(c) => Tensor::cat(vec![z, c.clone()], 1),
            None => z,
        };
        let cov = b.covariates.as_ref();
        let (expression_logits, dropout_logits) = match &self.z_decoder_expression {
            Some(dec) => {
                let h = dec.px_decoder.forward(u.clone(), cov, training);
                (
                    Some(nn::linear(&dec.px_scale_decoder, h.clone())),
                    Some(nn::linear(&dec.px_dropout_decoder, h)),
                )
            }
            None => (None, None),
        };
        let accessibility_logits = self.z_decoder_accessibility.as_ref().map(|dec| {
            let h = dec.px_decoder.forward(u.clone(), cov, training);
            nn::linear(&dec.output, h)
        });
        let protein = self
            .z_decoder_pro
            .as_ref()
            .map(|dec| dec.forward(&u, cov, training));
        MultiviGenerative {
            expression_logits,
            dropout_logits,
            accessibility_logits,
            protein,
        }
    }

    /// θ^p of the minibatch's cells: (1, P), or (n, P) per batch.
    fn protein_theta(&self, b: &MultiviBatch<B>, py_r: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.config.protein_dispersion {
            ProteinDispersion::Protein => py_r.transpose().exp(),
            ProteinDispersion::ProteinBatch => {
                let onehot = crate::nn::adversarial::one_hot::<B>(
                    &b.batch_codes,
                    self.config.n_batch,
                    &b.masks.device(),
                );
                onehot.matmul(py_r.transpose()).exp()
            }
        }
    }

    /// −log p(y) per cell under the background / foreground NB mixture (§5.2).
    fn protein_nll(&self, b: &MultiviBatch<B>, gen: &MultiviGenerative<B>) -> Option<Tensor<B, 1>> {
        let (Some(pg), Some(y), Some(py_r)) = (&gen.protein, &b.y, &self.py_r) else {
            return None;
        };
        let theta = self.protein_theta(b, py_r.val());
        let lp = dist::mixture_nb_log_prob_unnormalized(
            y.clone(),
            pg.rate_back.clone(),
            pg.rate_fore.clone(),
            theta,
            pg.mixing_logits.clone(),
        );
        Some(b.protein_log_factorial.clone() - lp.sum_dim(1).squeeze_dim::<1>(1))
    }

    /// ρ from the expression decoder's logits: softmax, or softplus in size-factor mode (§5.1).
    pub fn expression_scale(&self, logits: Tensor<B, 2>) -> Tensor<B, 2> {
        if self.config.use_size_factor {
            dist::softplus(logits)
        } else {
            activation::softmax(logits, 1)
        }
    }

    /// σ(region factors), or None when disabled.
    pub fn region_factor_values(&self) -> Option<Tensor<B, 1>> {
        self.region_factors
            .as_ref()
            .map(|r| activation::sigmoid(r.val()))
    }

    /// Forward pass and loss (§5).
    pub fn loss(&self, b: &MultiviBatch<B>, kl_weight: f64, training: bool) -> MultiviLoss<B> {
        let inf = self.inference(b, training);
        let gen = self.generative(b, inf.z.clone(), training);
        let n = b.n_cells;
        let device = b.masks.device();
        let zeros = || Tensor::<B, 1>::zeros([n], &device);
        let reconstruction_expression = match (&gen.expression_logits, &gen.dropout_logits) {
            (Some(logits), pi) => {
                let lik = self.config.gene_likelihood;
                let theta = self.px_r.val().exp().unsqueeze_dim::<2>(0);
                let pi = (lik == GeneLikelihood::Zinb).then(|| pi.clone()).flatten();
                let x = b.x_rna.clone();
                let library = inf.library_expression.clone();
                let lp = if self.config.use_size_factor {
                    let mu = library.exp() * self.expression_scale(logits.clone());
                    fused_log_likelihood(lik, x, mu, theta, pi, training)
                } else {
                    fused_log_likelihood_from_logits(
                        lik,
                        x,
                        logits.clone(),
                        theta,
                        pi,
                        library,
                        training,
                    )
                };
                b.log_factorial.clone() - lp
            }
            (None, _) => zeros(),
        };
        let masks: Vec<_> = (0..self.config.n_modalities()).map(|m| b.mask(m)).collect();
        let (me, ma) = (masks[0].clone(), masks[1].clone());
        let (reconstruction_accessibility, region_gradient) = match &gen.accessibility_logits {
            Some(logits) => fused_bernoulli_cross_entropy(
                &b.atac_rows,
                b.x_atac.as_ref(),
                logits.clone(),
                inf.library_accessibility.clone(),
                self.region_factors.as_ref().map(|r| r.val()),
                ma.clone(),
                training,
            ),
            None => (zeros(), None),
        };
        // The protein decoder joins only steps with a protein-measured cell (§5.2).
        let reconstruction_protein = b
            .any_protein
            .then(|| self.protein_nll(b, &gen))
            .flatten()
            .unwrap_or_else(zeros);
        // R_n = Σ_m M_m R_m (§5.2), kept by modality for the reconstruction queries.
        let mut reconstruction_by_modality = vec![
            ("expression", reconstruction_expression * me),
            ("accessibility", reconstruction_accessibility * ma),
        ];
        if let Some(mp) = masks.get(2) {
            reconstruction_by_modality.push(("protein", reconstruction_protein * mp.clone()));
        }
        let reconstruction = reconstruction_by_modality
            .iter()
            .map(|(_, r)| r.clone())
            .reduce(|a, b| a + b)
            .unwrap_or_else(zeros);
        let kl_z = dist::kl_standard_normal(inf.qz_mean.clone(), inf.qz_var.clone())
            .sum_dim(1)
            .squeeze_dim::<1>(1);
        // Summed over every pair of modalities both measured in a cell (§5.4).
        let n_mod = masks.len();
        let pairs = (0..n_mod).flat_map(|i| (i + 1..n_mod).map(move |j| (i, j)));
        let pair_penalty = |(i, j): (usize, usize)| {
            let paired = masks[i].clone() * masks[j].clone();
            let (mi, mj) = (inf.qz_m[i].clone(), inf.qz_m[j].clone());
            match self.config.modality_penalty {
                ModalityPenalty::Jeffreys => {
                    jeffreys(mi, inf.qz_v[i].clone(), mj, inf.qz_v[j].clone()) * paired
                }
                ModalityPenalty::Mmd => mmd_penalty(mi, mj, paired),
                ModalityPenalty::None => zeros(),
            }
        };
        let penalty = pairs
            .map(pair_penalty)
            .reduce(|a, b| a + b)
            .unwrap_or_else(zeros);
        let mut loss = (reconstruction.clone() + kl_z.clone() * kl_weight + penalty.clone()).mean();
        if let Some(g) = region_gradient {
            loss = loss + g;
        }
        MultiviLoss {
            loss,
            reconstruction,
            reconstruction_by_modality,
            kl_z,
            penalty,
            z: inf.z,
            sparse_inputs: inf.sparse_inputs,
        }
    }
}

/// Checks that `data` holds the model's features and categories, and in size-factor mode
/// its two size factors (RNA > 0, ATAC in (0, 1]).
pub fn check_data(config: &MultiviConfig, data: &DataSet) -> Result<()> {
    if config.use_size_factor {
        if data.size_factors.len() != 2 {
            return Err(invalid_arg(
                "size_factor_key",
                format!(
                    "must name 2 columns (RNA and ATAC size factors), got {}",
                    data.size_factors.len()
                ),
            ));
        }
        if data.size_factors[1].iter().any(|&v| !(v > 0.0 && v <= 1.0)) {
            return Err(invalid_arg(
                "size_factor_key",
                "ATAC size factors (its second column) must lie in (0, 1]",
            ));
        }
    }
    let weighted = (config.modality_weights == ModalityWeights::Cell).then_some(config.n_cells);
    check_modality_columns(
        data,
        &[
            (config.n_genes, "genes"),
            (config.n_regions, "regions"),
            (config.n_proteins, "proteins"),
        ],
        config.n_batch,
        weighted,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::binary_cross_entropy;
    use burn::backend::Flex;

    type B = Flex;

    fn mat(v: &[f32], rows: usize, cols: usize) -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(v.to_vec(), [rows, cols]),
            &Default::default(),
        )
    }

    fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    #[test]
    fn masked_softmax_matches_the_closed_form_values() {
        // §10.4 with three modalities: masks (1,1,0), (1,0,0), (0,0,0), logits 1.
        let w = mixing_weights(
            mat(&[1.0; 9], 3, 3),
            mat(&[1., 1., 0., 1., 0., 0., 0., 0., 0.], 3, 3),
        );
        let w = values(w);
        assert!((w[0] - 0.5).abs() < 1e-7 && (w[1] - 0.5).abs() < 1e-7);
        assert!((w[2] / 1.8394e-31 - 1.0).abs() < 1e-3, "{}", w[2]);
        assert!(
            (w[4].sqrt() / 6.0653e-16 - 1.0).abs() < 1e-3,
            "{}",
            w[4].sqrt()
        );
        // No modality: 1e-30 / (3e-30 + 1e-30) = 1/4 each (the guard counts).
        assert!(
            w[6..9].iter().all(|&v| (v - 0.25).abs() < 1e-6),
            "{:?}",
            &w[6..9]
        );
        // Two modalities as the module mixes them: sqrt(0.5) on paired variances.
        let (m, v) = mix(
            &mixing_weights(mat(&[1.0; 2], 1, 2), mat(&[1.0, 1.0], 1, 2)),
            &[mat(&[2.0], 1, 1), mat(&[4.0], 1, 1)],
            &[mat(&[1.0], 1, 1), mat(&[3.0], 1, 1)],
        );
        assert!((values(m)[0] - 3.0).abs() < 1e-6);
        assert!((values(v)[0] - std::f32::consts::FRAC_1_SQRT_2 * 4.0).abs() < 1e-5);
    }

    #[test]
    fn jeffreys_penalty_compares_variances_sqrt_v() {
        // §10.4: μ = (0, 1), v = (1, 4) → 1.0 (1.75 without Q3); μ = (0.5, -0.5),
        // v = (0.25, 0.0625) → 3.25.
        let j = |m1: f32, v1: f32, m2: f32, v2: f32| {
            values(jeffreys(
                mat(&[m1], 1, 1),
                mat(&[v1], 1, 1),
                mat(&[m2], 1, 1),
                mat(&[v2], 1, 1),
            ))[0]
        };
        assert!((j(0.0, 1.0, 1.0, 4.0) - 1.0).abs() < 1e-6);
        assert!((j(0.5, 0.25, -0.5, 0.0625) - 3.25).abs() < 1e-5);
        // KL for μ = 0.5, v = 0.25 → 0.4431472.
        let kl = dist::kl_standard_normal(mat(&[0.5], 1, 1), mat(&[0.25], 1, 1));
        assert!((values(kl)[0] - 0.443_147_2).abs() < 1e-6);
    }

    #[test]
    fn binary_cross_entropy_clamps_its_logs() {
        // §10.4: q = 0, t = 1 → 100; q = 0.25, t = 0 → -log(0.75).
        let bce = values(binary_cross_entropy(
            mat(&[0.0, 0.25], 1, 2),
            mat(&[3.0, 0.0], 1, 2),
        ));
        assert!((bce[0] - (100.0 - 0.75f32.ln())).abs() < 1e-4, "{bce:?}");
    }

    /// The fused accessibility likelihood equals the tensor formula (the device path), in value
    /// and in the gradients autodiff gives to the logits, the library factor and the region
    /// factors.
    #[test]
    fn fused_accessibility_likelihood_matches_the_tensor_formula() {
        use burn::backend::Autodiff;
        type A = Autodiff<B>;
        let dev = Default::default();
        let t = |v: &[f32], dims: [usize; 2]| {
            Tensor::<A, 2>::from_data(TensorData::new(v.to_vec(), dims), &dev).require_grad()
        };
        // Counts [[1, 0, 2], [0, 0, 1]] as sparse rows.
        let open = SparseRows {
            indptr: vec![0, 2, 3],
            indices: vec![0, 2, 2],
            values: vec![1.0, 2.0, 1.0],
        };
        let a = [0.3f32, -1.2, 2.0, 0.5, -0.4, 1.1];
        let (d, rl) = ([0.7f32, 0.4], [0.2f32, -0.5, 1.5]);
        let mask = Tensor::<A, 1>::from_data(TensorData::new(vec![1.0f32, 1.0], [2]), &dev);
        let grads = |fused: bool| {
            let (la, ld) = (t(&a, [2, 3]), t(&d, [2, 1]));
            let lr =
                Tensor::<A, 1>::from_data(TensorData::new(rl.to_vec(), [3]), &dev).require_grad();
            let loss = if fused {
                let (v, g) = fused_bernoulli_cross_entropy(
                    &open,
                    None,
                    la.clone(),
                    ld.clone(),
                    Some(lr.clone()),
                    mask.clone(),
                    true,
                );
                v.mean() + g.unwrap()
            } else {
                // The device backends' path: the tensor formula on the densified rows.
                let x = Tensor::<A, 2>::from_data(TensorData::new(open.to_dense(3), [2, 3]), &dev);
                crate::dist::surrogate::tensor_bernoulli_cross_entropy(
                    x,
                    la.clone(),
                    ld.clone(),
                    Some(lr.clone()),
                )
                .mean()
            };
            let value: f32 = loss.clone().into_scalar();
            let g = loss.backward();
            let flat = |v: Tensor<B, 2>| values(v);
            (
                value,
                flat(la.grad(&g).unwrap()),
                flat(ld.grad(&g).unwrap()),
                values(lr.grad(&g).unwrap()),
            )
        };
        let (fv, fa, fd, fr) = grads(true);
        let (tv, ta, td, tr) = grads(false);
        assert!((fv - tv).abs() < 1e-4, "{fv} vs {tv}");
        for (f, t) in fa
            .iter()
            .chain(&fd)
            .chain(&fr)
            .zip(ta.iter().chain(&td).chain(&tr))
        {
            assert!((f - t).abs() < 1e-4, "{f} vs {t}");
        }
    }

    #[test]
    fn shape_inventory_matches_the_reference() {
        // §10.1: G = 50, R = 80, K = 2, defaults → H = 8, D = 2.
        let c = MultiviConfig::new(50, 80, 2);
        assert_eq!((c.n_hidden, c.n_latent), (8, 2));
        let m = Multivae::<B>::new(c, &Default::default()).unwrap();
        let w = |l: &Linear<B>| l.weight.dims();
        let enc = &m.z_encoder_expression;
        // Burn's Linear weights are [in, out], the transpose of PyTorch's (out, in).
        assert_eq!(w(&enc.encoder.layers[0].linear), [50, 8]);
        assert_eq!(w(&enc.encoder.layers[1].linear), [8, 8]);
        assert_eq!(w(&enc.mean_encoder), [8, 2]);
        assert_eq!(
            w(&m.l_encoder_expression.px_decoder.layers[0].linear),
            [50, 8]
        );
        assert_eq!(w(&m.l_encoder_expression.output), [8, 1]);
        let de = m.z_decoder_expression.as_ref().unwrap();
        assert_eq!(w(&de.px_decoder.layers[0].linear), [4, 8]);
        assert_eq!(w(&de.px_decoder.layers[1].linear), [8, 8]);
        assert_eq!(w(&de.px_scale_decoder), [8, 50]);
        let ea = &m.z_encoder_accessibility.encoder;
        assert_eq!(w(&ea.layers[0].linear), [80, 8]);
        let da = m.z_decoder_accessibility.as_ref().unwrap();
        assert_eq!(w(&da.px_decoder.layers[0].linear), [4, 8]);
        assert_eq!(w(&da.output), [8, 80]);
        assert_eq!(w(&m.l_encoder_accessibility.output), [8, 1]);
        assert_eq!(m.px_r.dims(), [50]);
        assert_eq!(m.region_factors.as_ref().unwrap().dims(), [80]);
        assert!(m.mod_weights.is_none());
        // No BatchNorm by default; LayerNorm everywhere; LeakyReLU except the RNA decoder.
        assert!(enc
            .encoder
            .layers
            .iter()
            .all(|l| l.batch_norm.is_none() && l.layer_norm));
        assert!(enc.encoder.leaky_relu && da.px_decoder.leaky_relu);
        assert!(!de.px_decoder.leaky_relu);
    }

    #[test]
    fn protein_networks_have_the_reference_shapes() {
        // §10.1 with P = 5 proteins: H = 8, D = 2, K = 2; the protein stacks inject the
        // covariates at every layer, the heads read [h, u, one-hots].
        let mut c = MultiviConfig::new(50, 80, 2);
        c.n_proteins = 5;
        c.modality_weights = ModalityWeights::Universal;
        let m = Multivae::<B>::new(c.clone(), &Default::default()).unwrap();
        let w = |l: &Linear<B>| l.weight.dims();
        let ep = m.z_encoder_protein.as_ref().unwrap();
        assert_eq!(w(&ep.encoder.layers[0].linear), [5, 8]);
        let dp = m.z_decoder_pro.as_ref().unwrap();
        assert_eq!(w(&dp.py_back_decoder.layers[0].linear), [4, 8]);
        assert_eq!(w(&dp.py_back_decoder.layers[1].linear), [10, 8]);
        assert_eq!(w(&dp.py_fore_scale_decoder), [12, 5]);
        assert_eq!(w(&dp.py_background_decoder), [12, 5]);
        assert_eq!(dp.sigmoid_decoder.dropout, 0.1);
        assert_eq!(m.py_r.as_ref().unwrap().dims(), [5, 1]);
        assert_eq!(m.mod_weights.as_ref().unwrap().dims(), [1, 3]);
        c.protein_dispersion = ProteinDispersion::ProteinBatch;
        let m = Multivae::<B>::new(c, &Default::default()).unwrap();
        assert_eq!(m.py_r.as_ref().unwrap().dims(), [5, 2]);
        let r: Vec<f32> = values(m.py_r.as_ref().unwrap().val());
        assert!(r.iter().all(|&v| (0.0..2.0).contains(&v)), "{r:?}");
        // Without proteins nothing of them exists.
        let m = Multivae::<B>::new(MultiviConfig::new(50, 80, 2), &Default::default()).unwrap();
        assert!(m.z_encoder_protein.is_none() && m.z_decoder_pro.is_none() && m.py_r.is_none());
    }

    #[test]
    fn mmd_penalty_is_a_minibatch_sum_given_to_every_cell() {
        // §10.4: two paired cells with mean distances 3 and 4 → Pen = 7 for both.
        let qe = mat(&[0.0, 0.0, 0.0, 0.0], 2, 2);
        let qa = mat(&[3.0, 0.0, 0.0, 4.0], 2, 2);
        let both = Tensor::<B, 1>::ones([2], &Default::default());
        assert_eq!(
            values(mmd_penalty(qe.clone(), qa.clone(), both)),
            vec![7.0, 7.0]
        );
        // An unpaired cell does not count.
        let one =
            Tensor::<B, 1>::from_data(TensorData::new(vec![1.0f32, 0.0], [2]), &Default::default());
        assert_eq!(values(mmd_penalty(qe, qa, one)), vec![3.0, 3.0]);
    }
}
