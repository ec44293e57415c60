//! The model family. A model is a Burn module that implements [`FamilyModule`] (how to build
//! its minibatches and what one training step costs) plus a [`ModelKind`] marker (its name,
//! config, saved extras and defaults). With those two, the one training loop (`train`),
//! persistence (`io`), device transfer and the model handle [`Model`] serve it unchanged.

pub mod arches;
mod model;

pub use model::{Model, TrainableEverywhere, TrainsOn};

use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::Cpu;
use crate::data::DataSet;
use crate::error::Result;
use crate::train::grad::GradRule;
use crate::train::TrainConfig;

/// One dataset's share of a training step: per-cell terms and the minibatch's mean loss
/// (what the history averages).
pub struct Terms<B: Backend> {
    /// Mean over the minibatch's cells of the weighted loss, shape [1].
    pub loss_mean: Tensor<B, 1>,
    pub reconstruction: Tensor<B, 1>,
    /// The parts of `reconstruction` of each modality, for models of several (empty
    /// otherwise).
    pub reconstruction_by_modality: Vec<(&'static str, Tensor<B, 1>)>,
    /// Unweighted local KL divergences, summed over the latent variables.
    pub kl_local: Tensor<B, 1>,
    pub n_cells: usize,
}

/// The cost of one training step over one minibatch of each dataset.
pub struct StepLoss<B: Backend> {
    /// What the optimizer minimises, shape [1].
    pub objective: Tensor<B, 1>,
    /// Per dataset, in the order of the minibatches.
    pub terms: Vec<Terms<B>>,
    /// The sampled latent of every cell of the step, for models with an adversarial
    /// classifier.
    pub z: Option<Tensor<B, 2>>,
    /// First layers computed as sparse products, whose weight gradients the loop adds after
    /// the backward pass.
    pub sparse_inputs: Vec<crate::nn::SparseInput<B>>,
}

impl<B: Backend> StepLoss<B> {
    /// The step of a model that reads one dataset: its minibatch's terms (the objective is
    /// their mean loss), the latent draw an adversary reads and the pending sparse first
    /// layers.
    pub fn single(
        terms: Terms<B>,
        z: Option<Tensor<B, 2>>,
        sparse_inputs: Vec<crate::nn::SparseInput<B>>,
    ) -> Self {
        Self {
            objective: terms.loss_mean.clone(),
            terms: vec![terms],
            z,
            sparse_inputs,
        }
    }
}

/// q(z | x) of a minibatch in eval mode.
pub struct LatentPosterior<B: Backend> {
    pub mean: Tensor<B, 2>,
    pub var: Tensor<B, 2>,
    /// One draw, in the latent space (after the latent transform).
    pub z: Tensor<B, 2>,
}

/// What the training loop and the shared queries need from a model's module.
pub trait FamilyModule<B: Backend>: Module<B> {
    /// Hyperparameters and data dimensions; enough to build minibatches without the module,
    /// which the optimizer replaces at every step.
    type Config: Clone + Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static;
    type Batch;

    fn config(&self) -> &Self::Config;

    /// A minibatch of `cells` of dataset `dataset`, assembled on the host from sparse counts.
    fn minibatch(
        config: &Self::Config,
        dataset: usize,
        data: &DataSet,
        cells: &[usize],
        device: &B::Device,
    ) -> Self::Batch;

    /// A way to gather minibatches from a copy of the data kept on the device (GPU
    /// training), when the model supports it and the copy fits in `max_bytes`.
    fn device_minibatches<'a>(
        _config: &Self::Config,
        _data: &'a [&'a DataSet],
        _device: &B::Device,
        _max_bytes: usize,
    ) -> Option<DeviceMinibatches<'a, Self::Batch>> {
        None
    }

    /// Checks that `data` can be read as dataset `dataset` of the model (features,
    /// categories), naming the user's argument in the error.
    fn check_query_data(config: &Self::Config, dataset: usize, data: &DataSet) -> Result<()>;

    /// Width of the latent space.
    fn n_latent(&self) -> usize;

    /// Number of datasets the model reads (each with its own minibatches).
    fn n_datasets(&self) -> usize {
        1
    }

    /// q(z | x) of a minibatch in eval mode, with one draw.
    fn latent_posterior(&self, batch: &Self::Batch) -> LatentPosterior<B>;

    /// Maps a Gaussian draw into the latent space; models whose latent is transformed (the
    /// logistic normal) override it and [`FamilyModule::latent_is_transformed`].
    fn transform_latent(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        z
    }

    /// Whether the posterior mean of the latent needs Monte-Carlo draws.
    fn latent_is_transformed(&self) -> bool {
        false
    }

    /// Forward pass and loss of one step: one minibatch of each dataset (validation passes
    /// one minibatch of a single dataset).
    fn step_loss(&self, batches: &[Self::Batch], kl_weight: f64, training: bool) -> StepLoss<B>;

    /// The adversarial classifier's class of each cell of a step.
    fn adversarial_classes(&self, _batches: &[Self::Batch]) -> Vec<usize> {
        Vec::new()
    }

    /// The latent the classifier trains on after the module's update; `None`: the step's own
    /// sample, detached.
    fn classifier_latent(&self, _batches: &[Self::Batch]) -> Option<Tensor<B, 2>> {
        None
    }
}

/// Gathers the minibatch of `cells` of a dataset from its device copy.
pub type DeviceMinibatches<'a, T> = Box<dyn Fn(usize, &[usize]) -> T + 'a>;

/// The adversarial classifier of a model that has one (trained in alternation with the
/// module, scvi-tools' adversarial training plans).
#[derive(Clone, Debug)]
pub struct Adversary {
    /// Width of the latent the classifier reads.
    pub n_latent: usize,
    pub n_classes: usize,
    /// Hidden layers (of 32 units) of the classifier.
    pub n_layers: usize,
    /// Weight of the adversarial terms; 0 keeps the classifier's schedule but not its
    /// effect.
    pub scale: f64,
    /// The classifier's own Adam settings; None: the module's optimiser settings.
    pub optimizer: Option<ClassifierOptimizer>,
}

/// Adam with coupled weight decay for the adversarial classifier.
#[derive(Clone, Debug)]
pub struct ClassifierOptimizer {
    pub lr: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Per-model training defaults.
#[derive(Clone, Debug)]
pub struct TrainPlan {
    /// Used when `max_epochs` is not given.
    pub default_max_epochs: usize,
    pub adversary: Option<Adversary>,
}

/// A model of the family: its name, its module (on any backend) and what it saves beside the
/// weights.
pub trait ModelKind: Sized + 'static {
    /// The name saved models carry and `load_model()` dispatches on.
    const NAME: &'static str;
    type Config: Clone + Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static;
    type Module<B: Backend>: FamilyModule<B, Config = Self::Config>;
    /// Model-specific state saved in the model description (scArches freezing for SCVI).
    type Extra: Clone + Serialize + DeserializeOwned + Default + std::fmt::Debug + Send + Sync;

    /// A module with blank parameters of the shapes `config` describes (weights are loaded
    /// over it).
    fn blank<B: Backend>(config: &Self::Config, device: &B::Device) -> Result<Self::Module<B>>;

    /// Checks that `data` (one set per dataset the model trains on) fits the model.
    fn check_data(config: &Self::Config, data: &[&DataSet]) -> Result<()>;

    /// Training defaults for this run.
    fn plan(config: &Self::Config, data: &[&DataSet], cfg: &TrainConfig) -> Result<TrainPlan>;

    /// Called on a module read from disk (re-applies what is not in the weights).
    fn restore(module: Self::Module<Cpu>, _extra: &Self::Extra) -> Self::Module<Cpu> {
        module
    }

    /// Gradient rules applied at every step (scArches freezing).
    fn grad_rules<B: AutodiffBackend>(
        _module: &Self::Module<B>,
        _extra: &Self::Extra,
    ) -> Vec<GradRule<B::InnerBackend>> {
        Vec::new()
    }
}

/// Saved-state placeholder of models with nothing beyond config, weights and training state.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct NoExtra {}

/// A per-feature output of a model that the expression queries and differential analysis
/// read: the expression head (SCVI, MULTIVI, SPLICEVI), MULTIVI's accessibility head or
/// SPLICEVI's splicing heads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Head {
    #[default]
    Expression,
    Accessibility,
    /// SPLICEVI's junction probabilities p, and their posterior means ψ* given the cell's
    /// own counts (splicevi.md §8.4–8.5).
    Splicing,
    SplicingPosterior,
}

/// One posterior draw decoded by a head: normalised values (ρ, or the accessibility
/// probability) and for expression the mean count μ = ρ times the library, (n, features).
pub struct Expression<B: Backend> {
    pub scale: Tensor<B, 2>,
    pub rate: Tensor<B, 2>,
}

/// A model with per-feature heads: a count-expression head (SCVI; MULTIVI's expression
/// modality) and possibly others (MULTIVI's accessibility). The shared expression queries
/// (`infer::expression`: normalized expression, the `n_samples_overall` sampler) and
/// differential expression and accessibility (`de`) are written once against it.
pub trait ExpressionModule<B: Backend>: FamilyModule<B> {
    /// An eval-mode encoder pass, decoded by [`ExpressionModule::expression_draw`].
    type Pass;

    /// Number of batch codes a `transform_batch` may name.
    fn n_batch(&self) -> usize;

    /// The columns of the data a head models (expression: the first columns); None when
    /// the model has no such head.
    fn head_columns(&self, head: Head) -> Option<std::ops::Range<usize>>;

    /// A minibatch of `cells` with every cell decoded as batch `transform_batch` (None: its
    /// own batch).
    fn expression_minibatch(
        config: &Self::Config,
        data: &DataSet,
        cells: &[usize],
        transform_batch: Option<u32>,
        device: &B::Device,
    ) -> Self::Batch;

    fn expression_pass(&self, batch: &Self::Batch) -> Self::Pass;

    /// Posterior draw `k` of `pass` (0: the pass's own sample) decoded by `head`;
    /// `resample_library` also draws a latent library afresh for k > 0.
    fn expression_draw(
        &self,
        batch: &Self::Batch,
        pass: &Self::Pass,
        k: usize,
        resample_library: bool,
        head: Head,
    ) -> Expression<B>;

    /// `s` importance-weighted posterior draws of ρ for every cell (rows draw-major, s·n x
    /// genes) and the probability of each row (scvi.md §8.10); models without importance
    /// weights refuse.
    #[allow(clippy::too_many_arguments)]
    fn importance_rows<R: rand::Rng>(
        &self,
        _data: &DataSet,
        _cells: &[usize],
        _transform_batch: Option<u32>,
        _s: usize,
        _options: &crate::infer::expression::ImportanceOptions,
        _batch_size: usize,
        _rng: &mut R,
        _device: &B::Device,
    ) -> Result<(Vec<f32>, Vec<f64>)> {
        Err(crate::error::invalid_arg(
            "weights",
            "\"importance\" is not available for this model; use \"uniform\"",
        ))
    }
}
