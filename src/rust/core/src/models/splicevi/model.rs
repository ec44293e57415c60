//! SPLICEVI in the family: its minibatches (expression and junction columns of one dataset),
//! its step loss, the batch classifier of its adversarial plan (§7.2), its expression and
//! splicing heads for normalized values and differential analysis, and the model handle's
//! constructor.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::backend::Cpu;
use crate::data::DataSet;
use crate::dist::splicing::dm_posterior_psi;
use crate::error::{invalid_arg, Result};
use crate::family::{
    Adversary, ClassifierOptimizer, Expression, ExpressionModule, FamilyModule, Head,
    LatentPosterior, Model, ModelKind, NoExtra, StepLoss, Terms, TrainPlan,
};
use crate::models::options::LatentDistribution;
use crate::models::splicevi::{
    check_data, default_n_hidden, default_n_latent, pca, Architecture, SpliceVae, SpliceviBatch,
    SpliceviConfig, SpliceviInference, SplicingEncoder, SplicingLoss,
};
use crate::train::TrainConfig;

/// Default number of epochs of `SPLICEVI.train`.
pub const DEFAULT_MAX_EPOCHS: usize = 500;

/// The SPLICEVI model kind.
pub struct SpliceviKind;

pub type SpliceviModel = Model<SpliceviKind>;

impl<B: Backend> FamilyModule<B> for SpliceVae<B> {
    type Config = SpliceviConfig;
    type Batch = SpliceviBatch<B>;

    fn config(&self) -> &SpliceviConfig {
        &self.config
    }

    fn minibatch(
        config: &SpliceviConfig,
        _dataset: usize,
        data: &DataSet,
        cells: &[usize],
        device: &B::Device,
    ) -> SpliceviBatch<B> {
        SpliceviBatch::new(config, data, cells, None, device)
    }

    fn check_query_data(config: &SpliceviConfig, _dataset: usize, data: &DataSet) -> Result<()> {
        check_data(config, data)
    }

    fn n_latent(&self) -> usize {
        self.config.n_latent_joint()
    }

    /// The joint posterior (modality latents are a separate query).
    fn latent_posterior(&self, batch: &SpliceviBatch<B>) -> LatentPosterior<B> {
        let inf = self.inference(batch, false, 1.0);
        LatentPosterior {
            mean: inf.qz_mean,
            var: inf.qz_var,
            z: inf.z,
        }
    }

    fn transform_latent(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        SpliceVae::transform_latent(self, z)
    }

    fn latent_is_transformed(&self) -> bool {
        self.config.latent_distribution == LatentDistribution::Ln
    }

    fn step_loss(
        &self,
        batches: &[SpliceviBatch<B>],
        kl_weight: f64,
        training: bool,
    ) -> StepLoss<B> {
        let b = batches.first().expect("a training step has a minibatch");
        let t = self.loss(b, kl_weight, training);
        // The penalty is a minibatch sum (§6.4): spread over the cells so that the history's
        // per-cell kl_local sums to Σ KL + P.
        let terms = Terms {
            loss_mean: t.loss,
            reconstruction: t.reconstruction,
            reconstruction_by_modality: vec![
                ("expression", t.reconstruction_expression),
                ("splicing", t.reconstruction_splicing),
            ],
            kl_local: t.kl_z + t.penalty / b.n_cells as f64,
            n_cells: b.n_cells,
        };
        StepLoss::single(terms, Some(t.z), t.sparse_inputs)
    }

    fn adversarial_classes(&self, batches: &[SpliceviBatch<B>]) -> Vec<usize> {
        batches
            .iter()
            .flat_map(|b| b.batch_codes.iter().copied())
            .collect()
    }
}

impl<B: Backend> SpliceVae<B> {
    /// Normalised values of `head` decoded from `z` (eval mode, open gate): ρ for expression,
    /// p or ψ* for splicing.
    pub fn head_values(&self, b: &SpliceviBatch<B>, z: Tensor<B, 2>, head: Head) -> Tensor<B, 2> {
        let gen = self.generative(b, z, 1.0, false);
        match head {
            Head::Splicing | Head::SplicingPosterior => {
                let p = self.splicing_probabilities(b, gen.p_hat);
                if head == Head::Splicing {
                    return p;
                }
                match self.junction_concentration(&b.y.device()) {
                    Some(c) => dm_posterior_psi(p, c, b.y.clone(), b.t.clone()),
                    None => p,
                }
            }
            _ => match self.config.expression_architecture {
                Architecture::Linear => burn::tensor::activation::softmax(gen.expression, 1),
                Architecture::Vanilla => gen.expression,
            },
        }
    }
}

impl<B: Backend> ExpressionModule<B> for SpliceVae<B> {
    type Pass = SpliceviInference<B>;

    fn n_batch(&self) -> usize {
        self.config.n_batch
    }

    fn head_columns(&self, head: Head) -> Option<std::ops::Range<usize>> {
        let (g, j) = (self.config.n_genes, self.config.n_junctions);
        match head {
            Head::Expression => Some(0..g),
            Head::Splicing | Head::SplicingPosterior => Some(g..g + j),
            Head::Accessibility => None,
        }
    }

    fn expression_minibatch(
        config: &SpliceviConfig,
        data: &DataSet,
        cells: &[usize],
        transform_batch: Option<u32>,
        device: &B::Device,
    ) -> SpliceviBatch<B> {
        SpliceviBatch::new(config, data, cells, transform_batch, device)
    }

    fn expression_pass(&self, batch: &SpliceviBatch<B>) -> SpliceviInference<B> {
        self.inference(batch, false, 1.0)
    }

    /// Every head decodes the posterior mean (the reference's `use_z_mean = True` for
    /// normalized values, DE and DS), so every draw is the same and drawing rows picks cells
    /// with replacement.
    fn expression_draw(
        &self,
        batch: &SpliceviBatch<B>,
        pass: &SpliceviInference<B>,
        _k: usize,
        _resample_library: bool,
        head: Head,
    ) -> Expression<B> {
        let scale = self.head_values(batch, pass.qz_mean.clone(), head);
        let rate = match head {
            Head::Expression => scale.clone() * batch.library.clone().exp(),
            _ => scale.clone(),
        };
        Expression { scale, rate }
    }
}

impl ModelKind for SpliceviKind {
    const NAME: &'static str = "SPLICEVI";
    type Config = SpliceviConfig;
    type Module<B: Backend> = SpliceVae<B>;
    type Extra = NoExtra;

    fn blank<B: Backend>(c: &SpliceviConfig, device: &B::Device) -> Result<SpliceVae<B>> {
        SpliceVae::new(c.clone(), device)
    }

    fn check_data(config: &SpliceviConfig, data: &[&DataSet]) -> Result<()> {
        match data {
            [d] => check_data(config, d),
            _ => Err(invalid_arg("x", "SPLICEVI trains on one dataset")),
        }
    }

    /// §7.2: the batch classifier on the joint latent (absent with one batch), κ = 1, its own
    /// Adam.
    fn plan(config: &SpliceviConfig, _data: &[&DataSet], cfg: &TrainConfig) -> Result<TrainPlan> {
        let adversary = (config.n_batch > 1).then(|| Adversary {
            n_latent: config.n_latent_joint(),
            n_classes: config.n_batch,
            n_layers: 2,
            scale: cfg.kappa.unwrap_or(1.0),
            optimizer: Some(ClassifierOptimizer {
                lr: 1e-3,
                eps: 0.01,
                weight_decay: cfg.weight_decay,
            }),
        });
        Ok(TrainPlan {
            default_max_epochs: DEFAULT_MAX_EPOCHS,
            adversary,
        })
    }
}

impl Model<SpliceviKind> {
    /// `config.n_hidden` / `n_latent` of 0 take SpliceVI's rule (§3.1); the junction
    /// embeddings start from the ratios' top singular vectors when asked (§4.9).
    pub fn new(
        mut config: SpliceviConfig,
        data: &DataSet,
        registry: serde_json::Value,
    ) -> Result<Self> {
        config.n_cells = data.n_cells();
        if config.n_hidden == 0 {
            config.n_hidden = default_n_hidden(config.n_genes, config.n_junctions);
        }
        if config.n_latent == 0 {
            config.n_latent = default_n_latent(config.n_hidden);
        }
        config.validate()?;
        check_data(&config, data)?;
        let device = Default::default();
        let mut module = SpliceVae::<Cpu>::new(config, &device)?;
        let c = &module.config;
        let all: Vec<usize> = (0..data.n_cells()).collect();
        let (indptr, indices, values) = junction_ratios_of(c, data, &all);
        if c.initialize_bias_from_psi {
            let bias = decoder_bias_from_psi(c, &indices, &values);
            module.z_decoder_splicing.output.bias = Some(crate::nn::trainable(Tensor::from_data(
                TensorData::new(bias, [c.n_junctions]),
                &device,
            )));
        }
        let c = &module.config;
        if c.initialize_embeddings_from_pca {
            if c.splicing_encoder_architecture != SplicingEncoder::Partial {
                return Err(invalid_arg(
                    "initialize_embeddings_from_pca",
                    "applies to the partial splicing encoder only",
                ));
            }
            let e = pca::top_right_singular_vectors(
                data.n_cells(),
                c.n_junctions,
                &indptr,
                &indices,
                &values,
                c.code_dim,
                0,
            )?;
            let shape = [c.n_junctions, c.code_dim];
            if let Some(p) = module.z_encoder_splicing_partial.as_mut() {
                p.feature_embedding =
                    crate::nn::trainable(Tensor::from_data(TensorData::new(e, shape), &device));
            }
        }
        Ok(Self::from_module(module, registry, NoExtra {}))
    }
}

/// Splicing decoder biases whose output is each junction's mean observed PSI (§4.8): under
/// the Dirichlet-multinomial p is a softmax of the logits within each ATSE, so the bias is
/// log(mean); otherwise p = σ(bias), so the bias is logit(mean). Means are clamped to
/// [1e-3, 1 - 1e-3]; a junction never observed gets 0.
pub(super) fn decoder_bias_from_psi(
    c: &SpliceviConfig,
    indices: &[u32],
    values: &[f32],
) -> Vec<f32> {
    let (mut sum, mut count) = (vec![0f64; c.n_junctions], vec![0f64; c.n_junctions]);
    for (&j, &r) in indices.iter().zip(values) {
        sum[j as usize] += r as f64;
        count[j as usize] += 1.0;
    }
    let dm = c.splicing_loss_type == SplicingLoss::DirichletMultinomial;
    sum.iter()
        .zip(&count)
        .map(|(&s, &n)| {
            if n == 0.0 {
                return 0.0;
            }
            let m = (s / n).clamp(1e-3, 1.0 - 1e-3);
            (if dm { m.ln() } else { (m / (1.0 - m)).ln() }) as f32
        })
        .collect()
}

/// The junction ratios r = y / t of `cells` at their observed junctions (explicit zeros
/// kept), CSR cells x junctions.
pub fn junction_ratios_of(
    c: &SpliceviConfig,
    data: &DataSet,
    cells: &[usize],
) -> (Vec<usize>, Vec<u32>, Vec<f32>) {
    let (atse_ptr, members) = c.atse_junctions();
    let g = c.n_genes;
    let mut totals = vec![0f64; c.n_atse];
    let mut counts = vec![0f32; c.n_junctions];
    let (mut indptr, mut indices, mut values) = (vec![0usize], Vec::new(), Vec::new());
    for &cell in cells {
        let (idx, val) = data.counts.row(cell);
        let mut touched = Vec::new();
        for (&j, &v) in idx.iter().zip(val) {
            let j = j as usize;
            if j >= g && v > 0.0 {
                let a = c.junction_atse[j - g] as usize;
                if totals[a] == 0.0 {
                    touched.push(a);
                }
                totals[a] += v as f64;
                counts[j - g] = v;
            }
        }
        touched.sort_unstable();
        let mut row: Vec<(u32, f32)> = Vec::new();
        for a in touched {
            for &j in &members[atse_ptr[a]..atse_ptr[a + 1]] {
                row.push((j, (counts[j as usize] as f64 / totals[a]) as f32));
                counts[j as usize] = 0.0;
            }
            totals[a] = 0.0;
        }
        row.sort_unstable_by_key(|&(j, _)| j);
        for (j, r) in row {
            indices.push(j);
            values.push(r);
        }
        indptr.push(indices.len());
    }
    (indptr, indices, values)
}
