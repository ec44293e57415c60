//! SCVI in the family: its minibatches (host-assembled, or gathered from a device-resident
//! copy on the GPU), its step loss, scArches freezing as saved extras and gradient rules,
//! and the model handle's constructors.

use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use crate::backend::Cpu;
use crate::data::batch::Batch;
use crate::data::resident::ResidentData;
use crate::data::{library_prior, DataSet};
use crate::error::{invalid_arg, Error, Result};
use crate::family::arches::FreezeSpec;
use crate::family::{
    DeviceMinibatches, Expression, ExpressionModule, FamilyModule, Head, LatentPosterior, Model,
    ModelKind, StepLoss, Terms, TrainPlan,
};
use crate::infer::expression::ImportanceOptions;
use crate::models::options::LatentDistribution;
use crate::models::scvi::scarches;
use crate::models::scvi::{importance, Inference, Scvi, ScviConfig};
use crate::train::grad::GradRule;
use crate::train::{max_epochs_heuristic, TrainConfig};

/// The SCVI model kind.
pub struct ScviKind;

pub type ScviModel = Model<ScviKind>;

/// What an SCVI model saves beside config, weights and training state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScviExtra {
    /// scArches freezing of a query model (None: everything trains).
    #[serde(default)]
    pub freeze: Option<FreezeSpec>,
}

impl<B: Backend> Scvi<B> {
    /// The data hold the model's genes.
    fn check_genes(config: &ScviConfig, data: &DataSet) -> Result<()> {
        if data.n_genes() == config.n_input {
            return Ok(());
        }
        let msg = format!(
            "has {} genes but the model expects {}",
            data.n_genes(),
            config.n_input
        );
        Err(invalid_arg("x", msg))
    }
}

impl<B: Backend> FamilyModule<B> for Scvi<B> {
    type Config = ScviConfig;
    type Batch = Batch<B>;

    fn config(&self) -> &ScviConfig {
        &self.config
    }

    fn minibatch(
        _config: &ScviConfig,
        _dataset: usize,
        data: &DataSet,
        cells: &[usize],
        device: &B::Device,
    ) -> Batch<B> {
        Batch::from_host(&data.host_batch(cells, None), data.n_genes(), device)
    }

    fn device_minibatches<'a>(
        _config: &ScviConfig,
        data: &'a [&'a DataSet],
        device: &B::Device,
        max_bytes: usize,
    ) -> Option<DeviceMinibatches<'a, Batch<B>>> {
        let resident = ResidentData::<B>::upload(data.first()?, device, max_bytes).ok()?;
        Some(Box::new(move |_, cells: &[usize]| resident.batch(cells)))
    }

    fn check_query_data(config: &ScviConfig, _dataset: usize, data: &DataSet) -> Result<()> {
        Self::check_genes(config, data)
    }

    fn n_latent(&self) -> usize {
        self.config.n_latent
    }

    fn latent_posterior(&self, batch: &Batch<B>) -> LatentPosterior<B> {
        let inf = self.inference(batch, false);
        LatentPosterior {
            mean: inf.qz_mean,
            var: inf.qz_var,
            z: inf.z,
        }
    }

    fn transform_latent(&self, z: burn::tensor::Tensor<B, 2>) -> burn::tensor::Tensor<B, 2> {
        Scvi::transform_latent(self, z)
    }

    fn latent_is_transformed(&self) -> bool {
        self.config.latent_distribution == LatentDistribution::Ln
    }

    fn step_loss(&self, batches: &[Batch<B>], kl_weight: f64, training: bool) -> StepLoss<B> {
        let b = batches.first().expect("a training step has a minibatch");
        let t = self.loss(b, kl_weight, training);
        let terms = Terms {
            loss_mean: t.loss,
            reconstruction: t.reconstruction,
            reconstruction_by_modality: Vec::new(),
            kl_local: t.kl_z + t.kl_l,
            n_cells: b.x.dims()[0],
        };
        StepLoss::single(terms, None, Vec::new())
    }
}

impl<B: Backend> ExpressionModule<B> for Scvi<B> {
    type Pass = Inference<B>;

    fn n_batch(&self) -> usize {
        self.config.n_batch
    }

    fn head_columns(&self, head: Head) -> Option<std::ops::Range<usize>> {
        (head == Head::Expression).then_some(0..self.config.n_input)
    }

    fn expression_minibatch(
        _config: &ScviConfig,
        data: &DataSet,
        cells: &[usize],
        transform_batch: Option<u32>,
        device: &B::Device,
    ) -> Batch<B> {
        Batch::from_host(
            &data.host_batch(cells, transform_batch),
            data.n_genes(),
            device,
        )
    }

    fn expression_pass(&self, batch: &Batch<B>) -> Inference<B> {
        self.inference(batch, false)
    }

    fn expression_draw(
        &self,
        batch: &Batch<B>,
        pass: &Inference<B>,
        k: usize,
        resample_library: bool,
        _head: Head,
    ) -> Expression<B> {
        let z = self.latent_draw(pass, k);
        let library = match (&pass.ql, resample_library && k > 0) {
            (Some((m, v)), true) => crate::nn::resample(m, v),
            _ => pass.library.clone(),
        };
        let gen = self.generative(batch, z, library, false);
        Expression {
            scale: gen.scale,
            rate: gen.rate,
        }
    }

    fn importance_rows<R: rand::Rng>(
        &self,
        data: &DataSet,
        cells: &[usize],
        transform_batch: Option<u32>,
        s: usize,
        options: &ImportanceOptions,
        batch_size: usize,
        rng: &mut R,
        device: &B::Device,
    ) -> Result<(Vec<f32>, Vec<f64>)> {
        let draws = importance::draw(self, data, cells, transform_batch, s, batch_size, device)?;
        let log_w =
            importance::log_weights(self, data, cells, &draws, options, batch_size, rng, device)?;
        let p = importance::probabilities(&log_w, options.truncation)?;
        Ok((draws.rho, p))
    }
}

impl ModelKind for ScviKind {
    const NAME: &'static str = "SCVI";
    type Config = ScviConfig;
    type Module<B: Backend> = Scvi<B>;
    type Extra = ScviExtra;

    fn blank<B: Backend>(c: &ScviConfig, device: &B::Device) -> Result<Scvi<B>> {
        Scvi::new(
            c.clone(),
            (vec![0.0; c.n_batch], vec![1.0; c.n_batch]),
            device,
        )
    }

    fn check_data(config: &ScviConfig, data: &[&DataSet]) -> Result<()> {
        match data {
            [d] => Scvi::<Cpu>::check_genes(config, d),
            _ => Err(invalid_arg("x", "SCVI trains on one dataset")),
        }
    }

    fn plan(_config: &ScviConfig, data: &[&DataSet], _cfg: &TrainConfig) -> Result<TrainPlan> {
        Ok(TrainPlan {
            default_max_epochs: max_epochs_heuristic(data.first().map_or(0, |d| d.n_cells())),
            adversary: None,
        })
    }

    fn restore(module: Scvi<Cpu>, extra: &ScviExtra) -> Scvi<Cpu> {
        match &extra.freeze {
            Some(f) => scarches::apply_module_freeze(module, f),
            None => module,
        }
    }

    fn grad_rules<B: AutodiffBackend>(
        module: &Scvi<B>,
        extra: &ScviExtra,
    ) -> Vec<GradRule<B::InnerBackend>> {
        extra
            .freeze
            .as_ref()
            .map(|f| scarches::grad_rules(module, f))
            .unwrap_or_default()
    }
}

impl Model<ScviKind> {
    pub fn new(config: ScviConfig, data: &DataSet, registry: serde_json::Value) -> Result<Self> {
        if data.n_genes() != config.n_input || data.batch.n_categories != config.n_batch {
            return Err(Error::InvalidData(
                "model dimensions do not match the data".into(),
            ));
        }
        let module = Scvi::new(config, library_prior(data), &Default::default())?;
        Ok(Self::from_module(module, registry, ScviExtra::default()))
    }

    /// A query model for `data` (scArches): `config` has the query's (extended) category
    /// counts; weights come from `reference`, grown where categories were added; `freeze`
    /// says what trains.
    pub fn for_query(
        reference: &ScviModel,
        config: ScviConfig,
        data: &DataSet,
        registry: serde_json::Value,
        freeze: FreezeSpec,
    ) -> Result<Self> {
        let fresh = Self::new(config, data, registry)?;
        let module = scarches::transfer_weights(&reference.module, fresh.module)?;
        let module = scarches::apply_module_freeze(module, &freeze);
        let extra = ScviExtra {
            freeze: Some(freeze),
        };
        Ok(Self::from_module(module, fresh.registry, extra))
    }
}
