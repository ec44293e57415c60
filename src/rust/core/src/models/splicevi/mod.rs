//! SPLICEVI (splicevi.md): one VAE over gene expression and alternative splicing of the same
//! cells. Splicing is read as junction counts grouped into ATSEs (alternative transcript
//! structure events); the splicing encoder sees the observed (junction, ratio) pairs of a
//! cell only (a permutation-invariant set encoder, §4.4), the two modality posteriors are
//! mixed into one joint latent (§4.6), and the junction probabilities are scored by a
//! Dirichlet-multinomial per ATSE, a beta-binomial or a binomial per junction (§5).

pub mod model;
mod partial;
pub mod pca;
pub mod queries;
#[cfg(test)]
mod tests;

pub use model::{SpliceviKind, SpliceviModel};
pub use partial::PartialEncoder;

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{
    activation, backend::Backend, Distribution, ElementConversion, Int, Tensor, TensorData,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::data::{covariate_width, DataSet};
use crate::dist;
use crate::dist::splicing::{self as lik, AtseGroups};
use crate::dist::surrogate::fused_log_likelihood_from_logits;
use crate::error::{invalid_arg, Result};
use crate::nn;
// SpliceVI sizes its layers by MultiVI's rule (§3.1): min(128, floor(sqrt(J))), or the genes
// without junctions; n_latent = floor(sqrt(n_hidden)).
pub use crate::models::multivi::{default_n_hidden, default_n_latent};
use crate::models::multivi::{jeffreys, mix, mixing_weights, mmd_penalty};
use crate::models::options::{
    check_count_likelihoods, check_dropout_rates, check_modality_columns, check_sizes, Dispersion,
    GeneLikelihood, LatentDistribution, NormPlacement,
};
use crate::nn::{Encoder, FcLayers, FcOptions, Posterior, SparseInput, SparseRows};

/// Floor of the mixed variance (§4.6).
const VAR_FLOOR: f64 = 1e-6;
/// The KL weight from which the cross gate opens (hard mode, §7.3).
const GATE_OPEN: f64 = 0.999;
/// Offset of the observed library, ℓ = log(s + 1e-6) (§4.5).
const LIBRARY_EPS: f64 = 1e-6;
/// Initial raw concentration θ: N(log 100, 0.5²) per ATSE or junction; 4.6 as a scalar (§4.7).
const THETA_INIT_MEAN: f64 = 4.605_170_185_988_092;
const THETA_INIT_SD: f64 = 0.5;
const THETA_INIT_SCALAR: f32 = 4.6;

/// How the modality posteriors become the joint posterior (§4.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpliceModalityWeights {
    Equal,
    Universal,
    Cell,
    Concatenate,
    PerDimensionWeightedAverage,
}

pub use crate::models::multivi::ModalityPenalty;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Linear,
    Vanilla,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplicingEncoder {
    Partial,
    Vanilla,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplicingLoss {
    DirichletMultinomial,
    BetaBinomial,
    Binomial,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmConcentration {
    Atse,
    Scalar,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Mean,
    Sum,
}

/// Hyperparameters and the data dimensions the module is built from (§3.1).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpliceviConfig {
    /// Genes (G) and junctions (J): the expression columns come first in the data.
    pub n_genes: usize,
    pub n_junctions: usize,
    /// ATSEs (A) and the ATSE of every junction (0-based, in the sorted order of the event
    /// ids, §2.2): the data contract the per-ATSE concentrations are indexed by.
    pub n_atse: usize,
    pub junction_atse: Vec<u32>,
    pub n_batch: usize,
    pub n_cats_per_cov: Vec<usize>,
    pub n_continuous_cov: usize,
    /// Cells of the training data (rows of per-cell modality weights).
    pub n_cells: usize,
    pub n_hidden: usize,
    /// Per encoder; the joint latent is twice as wide with `concatenate`.
    pub n_latent: usize,
    pub n_layers_encoder: usize,
    pub n_layers_decoder: usize,
    pub dropout_rate: f64,
    pub gene_likelihood: GeneLikelihood,
    pub dispersion: Dispersion,
    pub modality_weights: SpliceModalityWeights,
    pub modality_penalty: ModalityPenalty,
    pub splicing_encoder_architecture: SplicingEncoder,
    pub splicing_decoder_architecture: Architecture,
    pub expression_architecture: Architecture,
    pub splicing_loss_type: SplicingLoss,
    /// A fixed beta-binomial concentration (not trained, no prior term).
    pub splicing_concentration: Option<f64>,
    pub dm_concentration: DmConcentration,
    pub encoder_hidden_dim: usize,
    pub code_dim: usize,
    pub h_hidden_dim: usize,
    pub pool_mode: PoolMode,
    /// Observed pairs per chunk of the partial encoder; <= 0: one chunk.
    pub max_nobs: i64,
    pub initialize_embeddings_from_pca: bool,
    /// Start the splicing decoder's biases at the junctions' mean observed PSI (not in the
    /// reference, which starts them at random: at its learning rate of 1e-4 they move about
    /// 1e-4 per step, far too slowly to reach the logits of rarely or mostly used junctions,
    /// and the reference's imputation stays below the per-junction mean).
    #[serde(default = "enabled")]
    pub initialize_bias_from_psi: bool,
    pub fully_paired: bool,
    pub use_batch_norm: NormPlacement,
    pub use_layer_norm: NormPlacement,
    pub latent_distribution: LatentDistribution,
    pub deeply_inject_covariates: bool,
    pub encode_covariates: bool,
    pub splicing_loss_weight: f64,
    pub lambda_prior: f64,
}

impl SpliceviConfig {
    /// SpliceVI's defaults for G genes and junctions grouped by `junction_atse`, K batches.
    pub fn new(n_genes: usize, junction_atse: Vec<u32>, n_batch: usize) -> Self {
        let n_junctions = junction_atse.len();
        let n_atse = junction_atse
            .iter()
            .map(|&a| a as usize + 1)
            .max()
            .unwrap_or(0);
        let n_hidden = default_n_hidden(n_genes, n_junctions);
        Self {
            n_genes,
            n_junctions,
            n_atse,
            junction_atse,
            n_batch,
            n_cats_per_cov: vec![],
            n_continuous_cov: 0,
            n_cells: 0,
            n_hidden,
            n_latent: default_n_latent(n_hidden),
            n_layers_encoder: 2,
            n_layers_decoder: 2,
            dropout_rate: 0.1,
            gene_likelihood: GeneLikelihood::Zinb,
            dispersion: Dispersion::Gene,
            modality_weights: SpliceModalityWeights::Equal,
            modality_penalty: ModalityPenalty::Jeffreys,
            splicing_encoder_architecture: SplicingEncoder::Partial,
            splicing_decoder_architecture: Architecture::Linear,
            expression_architecture: Architecture::Linear,
            splicing_loss_type: SplicingLoss::DirichletMultinomial,
            splicing_concentration: None,
            dm_concentration: DmConcentration::Atse,
            encoder_hidden_dim: 128,
            code_dim: 16,
            h_hidden_dim: 64,
            pool_mode: PoolMode::Mean,
            max_nobs: -1,
            initialize_embeddings_from_pca: false,
            initialize_bias_from_psi: true,
            fully_paired: false,
            use_batch_norm: NormPlacement::None,
            use_layer_norm: NormPlacement::Both,
            latent_distribution: LatentDistribution::Normal,
            deeply_inject_covariates: false,
            encode_covariates: false,
            splicing_loss_weight: 1.0,
            lambda_prior: 1e-2,
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_count_likelihoods(&[("gene_likelihood", self.gene_likelihood)])?;
        if self.n_genes == 0 {
            return Err(invalid_arg("expression", "has no genes"));
        }
        if self.n_junctions == 0 {
            return Err(invalid_arg("junctions", "has no junctions"));
        }
        if self.junction_atse.len() != self.n_junctions {
            return Err(invalid_arg(
                "atse",
                format!(
                    "has {} event ids for {} junctions",
                    self.junction_atse.len(),
                    self.n_junctions
                ),
            ));
        }
        if let Some(&a) = self
            .junction_atse
            .iter()
            .find(|&&a| a as usize >= self.n_atse)
        {
            return Err(invalid_arg(
                "atse",
                format!("event code {a} is beyond the {} events", self.n_atse),
            ));
        }
        check_sizes(
            &[
                ("n_hidden", self.n_hidden),
                ("n_latent", self.n_latent),
                ("n_layers_encoder", self.n_layers_encoder),
                ("n_layers_decoder", self.n_layers_decoder),
                ("encoder_hidden_dim", self.encoder_hidden_dim),
                ("code_dim", self.code_dim),
                ("h_hidden_dim", self.h_hidden_dim),
            ],
            self.n_genes + self.n_junctions,
        )?;
        check_dropout_rates(&[("dropout_rate", self.dropout_rate)])?;
        if self.modality_weights == SpliceModalityWeights::Cell && self.n_cells == 0 {
            return Err(invalid_arg(
                "modality_weights",
                "= \"cell\" needs the number of cells",
            ));
        }
        if self.dispersion == Dispersion::GeneCell
            && self.expression_architecture == Architecture::Linear
        {
            return Err(invalid_arg(
                "dispersion",
                "= \"gene-cell\" needs a hidden layer: use expression_architecture = \"vanilla\"",
            ));
        }
        if let Some(c) = self.splicing_concentration {
            if !(c.is_finite() && c > 0.0) {
                return Err(invalid_arg(
                    "splicing_concentration",
                    format!("must be a positive number, got {c}"),
                ));
            }
        }
        for (name, v) in [
            ("splicing_loss_weight", self.splicing_loss_weight),
            ("lambda_prior", self.lambda_prior),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid_arg(name, format!("must be >= 0, got {v}")));
            }
        }
        Ok(())
    }

    pub fn covariate_width(&self) -> usize {
        covariate_width(self.n_batch, &self.n_cats_per_cov)
    }

    /// Columns of the data: expression, then junctions.
    pub fn n_features(&self) -> usize {
        self.n_genes + self.n_junctions
    }

    /// Width of the joint latent.
    pub fn n_latent_joint(&self) -> usize {
        match self.modality_weights {
            SpliceModalityWeights::Concatenate => 2 * self.n_latent,
            _ => self.n_latent,
        }
    }

    /// Whether θ (the raw concentrations) is a trained parameter, and its length.
    fn theta_len(&self) -> Option<usize> {
        match (self.splicing_loss_type, self.dm_concentration) {
            (SplicingLoss::Binomial, _) => None,
            (SplicingLoss::BetaBinomial, _) if self.splicing_concentration.is_some() => None,
            (SplicingLoss::BetaBinomial, _) => Some(self.n_junctions),
            (SplicingLoss::DirichletMultinomial, DmConcentration::Atse) => Some(self.n_atse),
            (SplicingLoss::DirichletMultinomial, DmConcentration::Scalar) => Some(1),
        }
    }

    /// The junctions of every ATSE (CSR over ATSEs).
    pub fn atse_junctions(&self) -> (Vec<usize>, Vec<u32>) {
        let mut indptr = vec![0usize; self.n_atse + 1];
        for &a in &self.junction_atse {
            indptr[a as usize + 1] += 1;
        }
        for k in 0..self.n_atse {
            indptr[k + 1] += indptr[k];
        }
        let mut next = indptr.clone();
        let mut members = vec![0u32; self.n_junctions];
        for (j, &a) in self.junction_atse.iter().enumerate() {
            members[next[a as usize]] = j as u32;
            next[a as usize] += 1;
        }
        (indptr, members)
    }
}

fn enabled() -> bool {
    true
}

/// The expression decoder (§4.8): `linear` is LinearDecoderSCVI (two bias-free linear maps,
/// optionally normalised); `vanilla` is DecoderSCVI with a softplus scale (a size factor is
/// always registered).
#[derive(Module, Debug)]
pub struct ExpressionDecoder<B: Backend> {
    /// Linear: the scale map itself; vanilla: the hidden layers.
    pub factor_regressor: FcLayers<B>,
    /// Linear: the zero-inflation map; vanilla: None (`px_dropout_decoder` below).
    pub px_dropout_linear: Option<FcLayers<B>>,
    pub px_scale_decoder: Option<Linear<B>>,
    pub px_dropout_decoder: Option<Linear<B>>,
    pub px_r_decoder: Option<Linear<B>>,
}

/// The splicing decoder (§4.8): one linear map of the latent and covariates (`linear`) or an
/// MLP with covariates injected into every layer (`vanilla`), then a sigmoid.
#[derive(Module, Debug)]
pub struct SplicingDecoder<B: Backend> {
    pub px_decoder: Option<FcLayers<B>>,
    pub output: Linear<B>,
}

/// The SPLICEVAE module.
#[derive(Module, Debug)]
pub struct SpliceVae<B: Backend> {
    pub z_encoder_expression: Encoder<B>,
    /// The splicing encoder: the partial (set) encoder or a plain encoder of the ratios.
    pub z_encoder_splicing_partial: Option<PartialEncoder<B>>,
    pub z_encoder_splicing: Option<Encoder<B>>,
    pub z_decoder_expression: ExpressionDecoder<B>,
    pub z_decoder_splicing: SplicingDecoder<B>,
    /// Log inverse dispersion, genes x (1 or batches); None for gene-cell.
    pub px_r: Option<Param<Tensor<B, 2>>>,
    /// Raw concentrations θ (φ = softplus θ): per ATSE, per junction or one (§4.7).
    pub log_phi_j: Option<Param<Tensor<B, 1>>>,
    /// Modality logits: (1, 2) universal or (cells, 2) per cell.
    pub mod_weights: Option<Param<Tensor<B, 2>>>,
    /// ρ of `per_dimension_weighted_average`, one per latent dimension.
    pub dim_weights_raw: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub config: SpliceviConfig,
}

/// A minibatch on the device.
pub struct SpliceviBatch<B: Backend> {
    /// Raw expression counts (no log1p before the encoder, §11.1).
    pub x_rna: Tensor<B, 2>,
    pub rna_rows: Arc<SparseRows>,
    /// Σ_g lgamma(x + 1).
    pub log_factorial: Tensor<B, 1>,
    /// ℓ = log(s + 1e-6), (n, 1).
    pub library: Tensor<B, 2>,
    /// 1 where the cell has expression counts, (n).
    pub has_expression: Tensor<B, 1>,
    /// Dense junction counts y, ATSE totals t (repeated per junction), the observed mask
    /// 1[t > 0] and the ratios r = y/t (0 where unobserved), (n, J).
    pub y: Tensor<B, 2>,
    pub t: Tensor<B, 2>,
    pub mask: Tensor<B, 2>,
    /// The ratios as sparse rows over the observed junctions (explicit zeros kept): the
    /// vanilla splicing encoder's sparse input.
    pub ratio_rows: Arc<SparseRows>,
    /// Observed (cell, junction) pairs, cell-major, and their ratios: the partial encoder's
    /// input.
    pub observed: ObservedPairs<B>,
    pub groups: AtseGroups<B>,
    pub covariates: Option<Tensor<B, 2>>,
    pub continuous: Option<Tensor<B, 2>>,
    pub cells: Tensor<B, 1, Int>,
    pub batch_codes: Vec<usize>,
    pub n_cells: usize,
}

/// The observed pairs of a minibatch (§4.4 step 2).
pub struct ObservedPairs<B: Backend> {
    /// Row of the minibatch and junction of each pair; None when nothing is observed.
    pub rows: Option<Tensor<B, 1, Int>>,
    pub junctions: Option<Tensor<B, 1, Int>>,
    /// (n_obs, 1).
    pub ratio: Option<Tensor<B, 2>>,
    pub n_pairs: usize,
    /// Observed junctions per cell, (n, 1).
    pub per_cell: Tensor<B, 2>,
}

impl<B: Backend> SpliceviBatch<B> {
    /// Assembles `cells` of `data` (genes first, then junctions), decoding as batch
    /// `transform_batch` when given. The ATSE totals are the sums of the cell's junction counts
    /// over each ATSE (§2.2), so the invariants hold by construction.
    pub fn new(
        config: &SpliceviConfig,
        data: &DataSet,
        cells: &[usize],
        transform_batch: Option<u32>,
        device: &B::Device,
    ) -> Self {
        let (n, g, jn) = (cells.len(), config.n_genes, config.n_junctions);
        let (atse_ptr, atse_members) = config.atse_junctions();
        let mut x_rna = vec![0f32; n * g];
        let mut y = vec![0f32; n * jn];
        let mut t = vec![0f32; n * jn];
        let mut mask = vec![0f32; n * jn];
        let mut log_factorial = vec![0f32; n];
        let mut library = vec![0f32; n];
        let mut has_expression = vec![0f32; n];
        let mut rna_rows = SparseRows::default();
        let mut ratio_rows = SparseRows::default();
        rna_rows.indptr.push(0);
        ratio_rows.indptr.push(0);
        let (mut pair_rows, mut pair_junctions, mut pair_ratio) = (vec![], vec![], vec![]);
        let mut per_cell = vec![0f32; n];
        let mut totals = vec![0f64; config.n_atse];
        let mut touched: Vec<usize> = Vec::new();
        for (row, &c) in cells.iter().enumerate() {
            let (idx, val) = data.counts.row(c);
            let (mut total, mut lf) = (0f64, 0f64);
            for (&j, &v) in idx.iter().zip(val) {
                let j = j as usize;
                if j < g {
                    x_rna[row * g + j] = v;
                    total += v as f64;
                    lf += crate::data::ln_factorial(v as f64);
                    rna_rows.indices.push(j as u32);
                    rna_rows.values.push(v);
                } else {
                    let jj = j - g;
                    y[row * jn + jj] = v;
                    let a = config.junction_atse[jj] as usize;
                    if totals[a] == 0.0 && v > 0.0 {
                        touched.push(a);
                    }
                    totals[a] += v as f64;
                }
            }
            rna_rows.indptr.push(rna_rows.values.len());
            log_factorial[row] = lf as f32;
            has_expression[row] = (total > 0.0) as u8 as f32;
            let s = data.size_factor().map_or(total, |sf| sf[c] as f64);
            library[row] = (s + LIBRARY_EPS).ln() as f32;
            touched.sort_unstable();
            let mut observed: Vec<(u32, f32)> = Vec::new();
            for &a in &touched {
                let tot = totals[a] as f32;
                for &j in &atse_members[atse_ptr[a]..atse_ptr[a + 1]] {
                    let k = row * jn + j as usize;
                    t[k] = tot;
                    mask[k] = 1.0;
                    observed.push((j, y[k] / tot));
                }
                totals[a] = 0.0;
            }
            touched.clear();
            observed.sort_unstable_by_key(|&(j, _)| j);
            per_cell[row] = observed.len() as f32;
            for (j, r) in observed {
                pair_rows.push(row as i64);
                pair_junctions.push(j as i64);
                pair_ratio.push(r);
                ratio_rows.indices.push(j);
                ratio_rows.values.push(r);
            }
            ratio_rows.indptr.push(ratio_rows.values.len());
        }
        let cov = data.covariate_rows(cells, transform_batch);
        let mat = |v: Vec<f32>, cols: usize| {
            Tensor::<B, 2>::from_data(TensorData::new(v, [n, cols]), device)
        };
        let vec1 = |v: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v, [n]), device);
        let ints = |v: Vec<i64>| {
            let k = v.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(v, [k]), device)
        };
        let n_pairs = pair_rows.len();
        let observed = ObservedPairs {
            rows: (n_pairs > 0).then(|| ints(pair_rows)),
            junctions: (n_pairs > 0).then(|| ints(pair_junctions)),
            ratio: (n_pairs > 0).then(|| {
                Tensor::<B, 2>::from_data(TensorData::new(pair_ratio, [n_pairs, 1]), device)
            }),
            n_pairs,
            per_cell: mat(per_cell, 1),
        };
        let u = config.n_continuous_cov;
        Self {
            x_rna: mat(x_rna, g),
            rna_rows: Arc::new(rna_rows),
            log_factorial: vec1(log_factorial),
            library: mat(library, 1),
            has_expression: vec1(has_expression),
            y: mat(y, jn),
            t: mat(t, jn),
            mask: mat(mask, jn),
            ratio_rows: Arc::new(ratio_rows),
            observed,
            groups: AtseGroups::new(&config.junction_atse, config.n_atse, n, device),
            covariates: (cov.width > 0).then(|| mat(cov.covariates, cov.width)),
            continuous: (u > 0).then(|| mat(cov.continuous, u)),
            cells: ints(cells.iter().map(|&c| c as i64).collect()),
            batch_codes: cells
                .iter()
                .map(|&c| transform_batch.unwrap_or(data.batch.codes[c]) as usize)
                .collect(),
            n_cells: n,
        }
    }

    /// The dense ratios r (0 where unobserved).
    pub fn ratio(&self) -> Tensor<B, 2> {
        (self.y.clone() / self.t.clone().clamp_min(1.0)) * self.mask.clone()
    }
}

/// The encoder side of a minibatch (§4.6).
pub struct SpliceviInference<B: Backend> {
    /// Per modality (expression, splicing): posterior mean, variance and own draw.
    pub qz_m: [Tensor<B, 2>; 2],
    pub qz_v: [Tensor<B, 2>; 2],
    pub z_m: [Tensor<B, 2>; 2],
    /// The joint posterior and its draw (after the latent transform).
    pub qz_mean: Tensor<B, 2>,
    pub qz_var: Tensor<B, 2>,
    pub z: Tensor<B, 2>,
    pub sparse_inputs: Vec<SparseInput<B>>,
}

/// The decoder side: expression logits (linear) or scale (vanilla), zero-inflation logits,
/// per-cell dispersion (gene-cell) and the junction probabilities p̂.
pub struct SpliceviGenerative<B: Backend> {
    /// Linear: the logits of ρ (ρ = softmax); vanilla: ρ itself (softplus).
    pub expression: Tensor<B, 2>,
    pub dropout_logits: Tensor<B, 2>,
    pub theta_cell: Option<Tensor<B, 2>>,
    pub p_hat: Tensor<B, 2>,
}

/// Loss terms of a minibatch (§6).
pub struct SpliceviLoss<B: Backend> {
    pub loss: Tensor<B, 1>,
    /// Per cell: L^e + w L^s, and its parts.
    pub reconstruction: Tensor<B, 1>,
    pub reconstruction_expression: Tensor<B, 1>,
    pub reconstruction_splicing: Tensor<B, 1>,
    pub kl_z: Tensor<B, 1>,
    /// The modality penalty of the minibatch (a sum over cells), shape [1].
    pub penalty: Tensor<B, 1>,
    pub z: Tensor<B, 2>,
    pub sparse_inputs: Vec<SparseInput<B>>,
}

/// `per_dimension_weighted_average` (§4.6): per-dimension splicing weights
/// w^s = clamp(q - mean(q) + 0.5, 1e-4, 1 - 1e-4), q = σ(ρ); the modality masks are ignored.
pub fn per_dimension_weights<B: Backend>(rho: Tensor<B, 1>) -> Tensor<B, 1> {
    let q = activation::sigmoid(rho);
    let mean = q.clone().mean();
    (q - mean + 0.5).clamp(1e-4, 1.0 - 1e-4)
}

/// Mixes standard deviations with per-dimension weights: μ = w^e μ^e + w^s μ^s,
/// v = max((w^e √v^e + w^s √v^s)², 1e-6).
pub fn mix_per_dimension<B: Backend>(
    w_splicing: Tensor<B, 1>,
    means: [Tensor<B, 2>; 2],
    vars: [Tensor<B, 2>; 2],
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let ws = w_splicing.unsqueeze_dim::<2>(0);
    let we = ws.clone().neg() + 1.0;
    let [me, ms] = means;
    let [ve, vs] = vars;
    let mean = me * we.clone() + ms * ws.clone();
    let sd = ve.sqrt() * we + vs.sqrt() * ws;
    (mean, sd.powf_scalar(2.0).clamp_min(VAR_FLOOR))
}

impl<B: Backend> SpliceVae<B> {
    pub fn new(config: SpliceviConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let cov = c.covariate_width();
        let enc_cov = if c.encode_covariates { cov } else { 0 };
        let enc_cont = if c.encode_covariates {
            c.n_continuous_cov
        } else {
            0
        };
        let (h, z, zj) = (c.n_hidden, c.n_latent, c.n_latent_joint());
        let (bn_enc, ln_enc) = (c.use_batch_norm.encoder(), c.use_layer_norm.encoder());
        let (bn_dec, ln_dec) = (c.use_batch_norm.decoder(), c.use_layer_norm.decoder());
        let encoder = |n_in: usize, inject: bool| FcOptions {
            n_in: n_in + enc_cont,
            n_out: h,
            n_cov: enc_cov,
            n_layers: c.n_layers_encoder,
            n_hidden: h,
            dropout: c.dropout_rate,
            batch_norm: bn_enc,
            layer_norm: ln_enc,
            inject_covariates: inject,
            leaky_relu: true,
        };
        let (g, jn) = (c.n_genes, c.n_junctions);
        let dec_in = zj + c.n_continuous_cov;
        let z_decoder_expression = match c.expression_architecture {
            Architecture::Linear => {
                let linear = FcOptions {
                    n_in: dec_in,
                    n_out: g,
                    n_cov: cov,
                    n_layers: 1,
                    n_hidden: g,
                    dropout: 0.0,
                    batch_norm: bn_dec,
                    layer_norm: ln_dec,
                    inject_covariates: false,
                    leaky_relu: false,
                };
                ExpressionDecoder {
                    factor_regressor: FcLayers::new_linear(&linear, device),
                    px_dropout_linear: Some(FcLayers::new_linear(&linear, device)),
                    px_scale_decoder: None,
                    px_dropout_decoder: None,
                    px_r_decoder: None,
                }
            }
            Architecture::Vanilla => ExpressionDecoder {
                factor_regressor: FcLayers::new(
                    &FcOptions {
                        n_in: dec_in,
                        n_out: h,
                        n_cov: cov,
                        n_layers: c.n_layers_decoder,
                        n_hidden: h,
                        dropout: 0.0,
                        batch_norm: bn_dec,
                        layer_norm: ln_dec,
                        inject_covariates: c.deeply_inject_covariates,
                        leaky_relu: false,
                    },
                    device,
                ),
                px_dropout_linear: None,
                px_scale_decoder: Some(LinearConfig::new(h, g).init(device)),
                px_dropout_decoder: Some(LinearConfig::new(h, g).init(device)),
                px_r_decoder: (c.dispersion == Dispersion::GeneCell)
                    .then(|| LinearConfig::new(h, g).init(device)),
            },
        };
        let z_decoder_splicing = match c.splicing_decoder_architecture {
            Architecture::Linear => SplicingDecoder {
                px_decoder: None,
                output: LinearConfig::new(dec_in + cov, jn).init(device),
            },
            Architecture::Vanilla => SplicingDecoder {
                px_decoder: Some(FcLayers::new(
                    &FcOptions {
                        n_in: dec_in,
                        n_out: h,
                        n_cov: cov,
                        n_layers: c.n_layers_decoder,
                        n_hidden: h,
                        dropout: c.dropout_rate,
                        batch_norm: bn_dec,
                        layer_norm: ln_dec,
                        inject_covariates: true,
                        leaky_relu: false,
                    },
                    device,
                )),
                output: LinearConfig::new(h, jn).init(device),
            },
        };
        let px_r_width = match c.dispersion {
            Dispersion::Gene | Dispersion::GeneLabel => Some(1),
            Dispersion::GeneBatch => Some(c.n_batch),
            Dispersion::GeneCell => None,
        };
        let log_phi_j = c.theta_len().map(|len| {
            if c.splicing_loss_type == SplicingLoss::DirichletMultinomial
                && c.dm_concentration == DmConcentration::Scalar
            {
                crate::nn::trainable(Tensor::from_data(
                    TensorData::new(vec![THETA_INIT_SCALAR], [1]),
                    device,
                ))
            } else {
                crate::nn::lazy_random(
                    [len],
                    Distribution::Normal(THETA_INIT_MEAN, THETA_INIT_SD),
                    device,
                )
            }
        });
        let (partial, vanilla) = match c.splicing_encoder_architecture {
            SplicingEncoder::Partial => (Some(PartialEncoder::new(c, device)), None),
            SplicingEncoder::Vanilla => {
                (None, Some(Encoder::new(&encoder(jn, true), z, 0.0, device)))
            }
        };
        Ok(Self {
            z_encoder_expression: Encoder::new(
                &encoder(g, c.deeply_inject_covariates),
                z,
                0.0,
                device,
            ),
            z_encoder_splicing_partial: partial,
            z_encoder_splicing: vanilla,
            z_decoder_expression,
            z_decoder_splicing,
            px_r: px_r_width.map(|w| crate::nn::lazy_normal([g, w], device)),
            log_phi_j,
            mod_weights: match c.modality_weights {
                SpliceModalityWeights::Universal => {
                    Some(crate::nn::trainable(Tensor::ones([1, 2], device)))
                }
                SpliceModalityWeights::Cell => {
                    Some(crate::nn::trainable(Tensor::ones([c.n_cells, 2], device)))
                }
                _ => None,
            },
            dim_weights_raw: (c.modality_weights
                == SpliceModalityWeights::PerDimensionWeightedAverage)
                .then(|| crate::nn::trainable(Tensor::zeros([z], device))),
            config,
        })
    }

    pub fn transform_latent(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.config.latent_distribution {
            LatentDistribution::Normal => z,
            LatentDistribution::Ln => activation::softmax(z, 1),
        }
    }

    fn encoder_covariates<'a>(&self, b: &'a SpliceviBatch<B>) -> Option<&'a Tensor<B, 2>> {
        if self.config.encode_covariates {
            b.covariates.as_ref()
        } else {
            None
        }
    }

    fn encoder_input(&self, x: Tensor<B, 2>, b: &SpliceviBatch<B>) -> Tensor<B, 2> {
        match (&b.continuous, self.config.encode_covariates) {
            (Some(u), true) => Tensor::cat(vec![x, u.clone()], 1),
            _ => x,
        }
    }

    /// The two modality posteriors (§4.2–4.4).
    fn encode(
        &self,
        b: &SpliceviBatch<B>,
        training: bool,
        sparse_inputs: &mut Vec<SparseInput<B>>,
    ) -> [Posterior<B>; 2] {
        let cov = self.encoder_covariates(b);
        // Sparse first layers on the host only: on a device the dense inputs are already
        // there, and a host product would copy the weights down and back every step.
        let sparse = !self.config.encode_covariates && crate::backend::computes_on_host::<B>();
        let mut encode =
            |enc: &Encoder<B>, dense: &dyn Fn() -> Tensor<B, 2>, rows: &Arc<SparseRows>| {
                if sparse {
                    let (q, pending) = enc.forward_sparse(rows, training);
                    sparse_inputs.push(pending);
                    q
                } else {
                    enc.forward(self.encoder_input(dense(), b), cov, training)
                }
            };
        let qe = encode(&self.z_encoder_expression, &|| b.x_rna.clone(), &b.rna_rows);
        let qs = match (&self.z_encoder_splicing_partial, &self.z_encoder_splicing) {
            (Some(p), _) => p.forward(b, cov, &self.config, training),
            (None, Some(enc)) => encode(enc, &|| b.ratio(), &b.ratio_rows),
            (None, None) => unreachable!("a splicing encoder is always built"),
        };
        [qe, qs]
    }

    fn modality_logits(&self, b: &SpliceviBatch<B>) -> Tensor<B, 2> {
        let device = b.y.device();
        match &self.mod_weights {
            None => Tensor::ones([b.n_cells, 2], &device),
            Some(w) => match self.config.modality_weights {
                SpliceModalityWeights::Cell => w.val().select(0, b.cells.clone()),
                _ => w.val().repeat_dim(0, b.n_cells),
            },
        }
    }

    /// The joint posterior (§4.6). `gate` < 1 in training routes one modality, chosen by a
    /// coin per call, as the joint posterior (except with `concatenate`).
    pub fn inference(
        &self,
        b: &SpliceviBatch<B>,
        training: bool,
        gate: f64,
    ) -> SpliceviInference<B> {
        let mut sparse_inputs = Vec::new();
        let [qe, qs] = self.encode(b, training, &mut sparse_inputs);
        let route = training
            && gate < 1.0
            && self.config.modality_weights != SpliceModalityWeights::Concatenate;
        let (qz_mean, qz_var) = if route {
            let coin = crate::nn::draw::<B, 1>([1], Distribution::Bernoulli(0.5), &b.y.device())
                .into_scalar()
                .elem::<f64>();
            if coin > 0.5 {
                (qs.mean.clone(), qs.var.clone())
            } else {
                (qe.mean.clone(), qe.var.clone())
            }
        } else {
            match self.config.modality_weights {
                SpliceModalityWeights::Concatenate => (
                    Tensor::cat(vec![qe.mean.clone(), qs.mean.clone()], 1),
                    Tensor::cat(vec![qe.var.clone(), qs.var.clone()], 1),
                ),
                SpliceModalityWeights::PerDimensionWeightedAverage => mix_per_dimension(
                    per_dimension_weights(
                        self.dim_weights_raw
                            .as_ref()
                            .expect("built with the mode")
                            .val(),
                    ),
                    [qe.mean.clone(), qs.mean.clone()],
                    [qe.var.clone(), qs.var.clone()],
                ),
                _ => {
                    let device = b.y.device();
                    let masks = Tensor::cat(
                        vec![
                            b.has_expression.clone().unsqueeze_dim::<2>(1),
                            Tensor::ones([b.n_cells, 1], &device),
                        ],
                        1,
                    );
                    let w = mixing_weights(self.modality_logits(b), masks);
                    let (m, v) = mix(
                        &w,
                        &[qe.mean.clone(), qs.mean.clone()],
                        &[qe.var.clone(), qs.var.clone()],
                    );
                    (m, v.clamp_min(VAR_FLOOR))
                }
            }
        };
        let z = self.transform_latent(crate::nn::resample(&qz_mean, &qz_var));
        SpliceviInference {
            z_m: [
                self.transform_latent(qe.sample),
                self.transform_latent(qs.sample),
            ],
            qz_m: [qe.mean, qs.mean],
            qz_v: [qe.var, qs.var],
            qz_mean,
            qz_var,
            z,
            sparse_inputs,
        }
    }

    /// Decodes `z` (§4.8); `gate` multiplies the cross halves of a concatenated latent.
    pub fn generative(
        &self,
        b: &SpliceviBatch<B>,
        z: Tensor<B, 2>,
        gate: f64,
        training: bool,
    ) -> SpliceviGenerative<B> {
        let (d_e, d_s) = if self.config.modality_weights == SpliceModalityWeights::Concatenate {
            let (n, k) = (b.n_cells, self.config.n_latent);
            let ze = z.clone().slice([0..n, 0..k]);
            let zs = z.slice([0..n, k..2 * k]);
            (
                Tensor::cat(vec![ze.clone(), zs.clone() * gate], 1),
                Tensor::cat(vec![ze * gate, zs], 1),
            )
        } else {
            (z.clone(), z)
        };
        let with_cont = |d: Tensor<B, 2>| match &b.continuous {
            Some(u) => Tensor::cat(vec![d, u.clone()], 1),
            None => d,
        };
        let (d_e, d_s) = (with_cont(d_e), with_cont(d_s));
        let cov = b.covariates.as_ref();
        let dec = &self.z_decoder_expression;
        let (expression, dropout_logits, theta_cell) = match &dec.px_dropout_linear {
            Some(dropout) => (
                dec.factor_regressor.forward(d_e.clone(), cov, training),
                dropout.forward(d_e, cov, training),
                None,
            ),
            None => {
                let hidden = dec.factor_regressor.forward(d_e, cov, training);
                let head =
                    |l: &Option<Linear<B>>| l.as_ref().map(|l| nn::linear(l, hidden.clone()));
                (
                    dist::softplus(head(&dec.px_scale_decoder).expect("vanilla scale head")),
                    head(&dec.px_dropout_decoder).expect("vanilla dropout head"),
                    head(&dec.px_r_decoder).map(|r| r.exp()),
                )
            }
        };
        let sd = &self.z_decoder_splicing;
        let logits = match &sd.px_decoder {
            Some(mlp) => nn::linear(&sd.output, mlp.forward(d_s, cov, training)),
            None => nn::linear(
                &sd.output,
                match cov {
                    Some(c) => Tensor::cat(vec![d_s, c.clone()], 1),
                    None => d_s,
                },
            ),
        };
        SpliceviGenerative {
            expression,
            dropout_logits,
            theta_cell,
            p_hat: activation::sigmoid(logits),
        }
    }

    /// The generative junction probabilities: group-normalised under DM, else p̂ (§4.8).
    pub fn splicing_probabilities(
        &self,
        b: &SpliceviBatch<B>,
        p_hat: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        match self.config.splicing_loss_type {
            SplicingLoss::DirichletMultinomial => lik::dm_group_normalize(p_hat, &b.groups),
            _ => p_hat,
        }
    }

    /// The concentration of every junction (1 x J or 1 x 1): φ = softplus(θ), gathered per
    /// ATSE under DM `atse`; the fixed value when given; None for the binomial.
    pub fn junction_concentration(&self, device: &B::Device) -> Option<Tensor<B, 2>> {
        let c = &self.config;
        if let Some(fixed) = c
            .splicing_concentration
            .filter(|_| c.splicing_loss_type == SplicingLoss::BetaBinomial)
        {
            return Some(Tensor::full([1, 1], fixed, device));
        }
        let phi = dist::softplus(self.log_phi_j.as_ref()?.val());
        Some(match (c.splicing_loss_type, c.dm_concentration) {
            (SplicingLoss::DirichletMultinomial, DmConcentration::Atse) => {
                let idx = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(
                        c.junction_atse
                            .iter()
                            .map(|&a| a as i64)
                            .collect::<Vec<_>>(),
                        [c.n_junctions],
                    ),
                    device,
                );
                phi.select(0, idx).unsqueeze_dim(0)
            }
            _ => phi.unsqueeze_dim(0),
        })
    }

    /// The θ of the expression likelihood, broadcastable to (n, G).
    fn expression_theta(&self, b: &SpliceviBatch<B>, gen: &SpliceviGenerative<B>) -> Tensor<B, 2> {
        if let Some(t) = &gen.theta_cell {
            return t.clone();
        }
        let px_r = self
            .px_r
            .as_ref()
            .expect("px_r exists unless gene-cell")
            .val();
        if self.config.dispersion == Dispersion::GeneBatch {
            let device = b.y.device();
            let k = self.config.n_batch;
            let mut onehot = vec![0f32; b.n_cells * k];
            for (r, &code) in b.batch_codes.iter().enumerate() {
                onehot[r * k + code] = 1.0;
            }
            let onehot =
                Tensor::<B, 2>::from_data(TensorData::new(onehot, [b.n_cells, k]), &device);
            return onehot.matmul(px_r.transpose()).exp();
        }
        px_r.transpose().exp()
    }

    /// Per-cell −log p(x | z) of the expression.
    fn expression_nll(
        &self,
        b: &SpliceviBatch<B>,
        gen: &SpliceviGenerative<B>,
        training: bool,
    ) -> Tensor<B, 1> {
        let lik = self.config.gene_likelihood;
        let theta = self.expression_theta(b, gen);
        let zinb = lik == GeneLikelihood::Zinb;
        let log_p = if self.z_decoder_expression.px_dropout_linear.is_some() {
            fused_log_likelihood_from_logits(
                lik,
                b.x_rna.clone(),
                gen.expression.clone(),
                theta,
                zinb.then(|| gen.dropout_logits.clone()),
                b.library.clone(),
                training,
            )
        } else {
            let mu = gen.expression.clone() * b.library.clone().exp();
            let x = b.x_rna.clone();
            let pi = zinb.then(|| gen.dropout_logits.clone());
            dist::gene_log_prob_unnormalized(lik, x, mu, theta, pi)
                .sum_dim(1)
                .squeeze_dim::<1>(1)
        };
        b.log_factorial.clone() - log_p
    }

    /// Per-cell splicing reconstruction L^s (§5) and the concentration prior R (§6.5).
    fn splicing_nll(
        &self,
        b: &SpliceviBatch<B>,
        p_hat: Tensor<B, 2>,
    ) -> (Tensor<B, 1>, Option<Tensor<B, 1>>) {
        let device = b.y.device();
        let c = &self.config;
        let nll = match c.splicing_loss_type {
            SplicingLoss::Binomial => {
                lik::binomial_nll(p_hat, b.y.clone(), b.t.clone(), b.mask.clone())
            }
            SplicingLoss::BetaBinomial => lik::beta_binomial_nll(
                p_hat,
                self.junction_concentration(&device)
                    .expect("beta-binomial concentration"),
                b.y.clone(),
                b.t.clone(),
                b.mask.clone(),
            ),
            SplicingLoss::DirichletMultinomial => lik::dirichlet_multinomial_nll(
                lik::dm_group_normalize(p_hat, &b.groups),
                self.junction_concentration(&device)
                    .expect("DM concentration"),
                b.y.clone(),
                b.mask.clone(),
                &b.groups,
            ),
        };
        let prior = self
            .log_phi_j
            .as_ref()
            .map(|t| lik::concentration_prior(t.val(), c.lambda_prior, b.n_cells));
        (nll, prior)
    }

    pub fn loss(&self, b: &SpliceviBatch<B>, kl_weight: f64, training: bool) -> SpliceviLoss<B> {
        // Training opens the cross gate once the KL warm-up is (nearly) over; evaluation always
        // decodes with it open (§7.3–7.4).
        let gate = if !training || kl_weight >= GATE_OPEN {
            1.0
        } else {
            0.0
        };
        let inf = self.inference(b, training, gate);
        let gen = self.generative(b, inf.z.clone(), gate, training);
        let me = b.has_expression.clone();
        let reconstruction_expression = self.expression_nll(b, &gen, training) * me.clone();
        let (splicing, prior) = self.splicing_nll(b, gen.p_hat);
        let reconstruction_splicing = splicing * self.config.splicing_loss_weight;
        let kl_z = dist::kl_standard_normal(inf.qz_mean.clone(), inf.qz_var.clone())
            .sum_dim(1)
            .squeeze_dim::<1>(1);
        let [me_mean, ms_mean] = inf.qz_m.clone();
        let [me_var, ms_var] = inf.qz_v.clone();
        let device = b.y.device();
        let penalty = match (self.config.modality_penalty, self.config.modality_weights) {
            (ModalityPenalty::None, _) | (_, SpliceModalityWeights::Concatenate) => {
                Tensor::<B, 1>::zeros([1], &device)
            }
            (ModalityPenalty::Jeffreys, _) => (jeffreys(me_mean, me_var, ms_mean, ms_var) * me)
                .sum()
                .reshape([1]),
            // mmd_penalty gives the minibatch sum to every cell; SpliceVI adds it once.
            (ModalityPenalty::Mmd, _) => mmd_penalty(me_mean, ms_mean, me).narrow(0, 0, 1),
        };
        let reconstruction = reconstruction_expression.clone() + reconstruction_splicing.clone();
        let mut loss = (reconstruction.clone() + kl_z.clone() * kl_weight).mean() + penalty.clone();
        if let Some(r) = prior {
            loss = loss + r;
        }
        SpliceviLoss {
            loss,
            reconstruction,
            reconstruction_expression,
            reconstruction_splicing,
            kl_z,
            penalty,
            z: inf.z,
            sparse_inputs: inf.sparse_inputs,
        }
    }
}

/// Checks that `data` is laid out as the model expects (genes then junctions, batches).
pub fn check_data(config: &SpliceviConfig, data: &DataSet) -> Result<()> {
    let weighted =
        (config.modality_weights == SpliceModalityWeights::Cell).then_some(config.n_cells);
    check_modality_columns(
        data,
        &[(config.n_genes, "genes"), (config.n_junctions, "junctions")],
        config.n_batch,
        weighted,
    )
}
