//! What a training run leaves behind: the history rows, the state saved with a model, the
//! summary of a `train()` call, the observer that reports progress and polls for Ctrl-C, and
//! the per-epoch sums the rows are made of.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::Split;

/// One row of the training history (per-cell means, unit KL weight in the ELBO).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub elbo_train: f64,
    pub elbo_validation: Option<f64>,
    pub reconstruction_loss_train: f64,
    pub reconstruction_loss_validation: Option<f64>,
    pub kl_local_train: f64,
    pub kl_local_validation: Option<f64>,
    pub kl_weight: f64,
    pub train_loss: f64,
    pub validation_loss: Option<f64>,
    /// Learning rate of the epoch's steps (None in histories saved before it was recorded).
    #[serde(default)]
    pub lr: Option<f64>,
    pub seconds: f64,
}

impl EpochRecord {
    pub(crate) fn metric(&self, name: &str) -> Option<f64> {
        match name {
            "elbo_validation" => self.elbo_validation,
            "reconstruction_loss_validation" => self.reconstruction_loss_validation,
            "validation_loss" => self.validation_loss,
            "elbo_train" => Some(self.elbo_train),
            "reconstruction_loss_train" => Some(self.reconstruction_loss_train),
            "train_loss" => Some(self.train_loss),
            _ => None,
        }
    }
}

pub const MONITORS: [&str; 6] = [
    "elbo_validation",
    "reconstruction_loss_validation",
    "validation_loss",
    "elbo_train",
    "reconstruction_loss_train",
    "train_loss",
];

/// What survives between `train()` calls and is saved with the model.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "SavedState")]
pub struct TrainState {
    pub is_trained: bool,
    pub history: Vec<EpochRecord>,
    /// Train/validation/test split of each dataset the model trains on, in dataset order.
    pub splits: Vec<Split>,
}

/// The saved form of [`TrainState`]; models saved in format 1 hold SCVI's one split as
/// `split`.
#[derive(Deserialize)]
struct SavedState {
    #[serde(default)]
    is_trained: bool,
    #[serde(default)]
    history: Vec<EpochRecord>,
    #[serde(default)]
    splits: Option<Vec<Split>>,
    #[serde(default)]
    split: Option<Split>,
}

impl From<SavedState> for TrainState {
    fn from(s: SavedState) -> Self {
        Self {
            is_trained: s.is_trained,
            history: s.history,
            splits: s.splits.or(s.split.map(|x| vec![x])).unwrap_or_default(),
        }
    }
}

/// How a `train()` call ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainSummary {
    pub epochs_run: usize,
    pub max_epochs: usize,
    pub interrupted: bool,
    pub early_stopped: bool,
    pub seconds: f64,
}

/// Progress reporting and cancellation, implemented by the R bridge and the CLI.
pub trait Observer {
    fn on_epoch(
        &mut self,
        _record: &EpochRecord,
        _epoch_in_run: usize,
        _max_epochs: usize,
        _elapsed: f64,
    ) {
    }
    /// Polled after every optimizer step; `true` stops training after that step.
    fn should_stop(&mut self) -> bool {
        false
    }
}

pub struct Silent;
impl Observer for Silent {}

/// Per-cell sums of an epoch's loss terms.
#[derive(Default)]
pub(crate) struct Sums {
    loss: f64,
    reconstruction: f64,
    kl: f64,
    cells: usize,
}

impl Sums {
    /// A minibatch's mean loss and its summed reconstruction and KL terms in one tensor, so
    /// that they come to the host in one read ([`Sums::add`]).
    pub(crate) fn pack<B: burn::tensor::backend::Backend>(
        loss_mean: Tensor<B, 1>,
        rec: Tensor<B, 1>,
        kl: Tensor<B, 1>,
    ) -> Tensor<B, 1> {
        Tensor::cat(vec![loss_mean, rec.sum(), kl.sum()], 0)
    }
    /// Adds a minibatch of `n` cells (`packed` by [`Sums::pack`]); false when a value is not
    /// finite.
    pub(crate) fn add<B: burn::tensor::backend::Backend>(
        &mut self,
        packed: Tensor<B, 1>,
        n: usize,
    ) -> bool {
        let v: Vec<f32> = packed
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        if v.len() != 3 || v.iter().any(|x| !x.is_finite()) {
            return false;
        }
        self.loss += v[0] as f64 * n as f64;
        self.reconstruction += v[1] as f64;
        self.kl += v[2] as f64;
        self.cells += n;
        true
    }
    /// The sums as numbers to add up across workers, and back.
    pub(crate) fn to_array(&self) -> [f64; 4] {
        [self.loss, self.reconstruction, self.kl, self.cells as f64]
    }
    pub(crate) fn from_array(v: [f64; 4]) -> Self {
        Self {
            loss: v[0],
            reconstruction: v[1],
            kl: v[2],
            cells: v[3].round().max(0.0) as usize,
        }
    }

    pub(crate) fn means(&self) -> (f64, f64, f64) {
        let n = self.cells.max(1) as f64;
        (self.loss / n, self.reconstruction / n, self.kl / n)
    }

    /// The history row of a training epoch.
    pub(crate) fn record(&self, epoch: usize, kl_weight: f64) -> EpochRecord {
        let (train_loss, rec, kl) = self.means();
        EpochRecord {
            epoch,
            elbo_train: rec + kl,
            reconstruction_loss_train: rec,
            kl_local_train: kl,
            kl_weight,
            train_loss,
            ..Default::default()
        }
    }
}

impl EpochRecord {
    /// Validation columns from the means (loss, reconstruction, KL) of an evaluation; a
    /// non-finite evaluation (None) is recorded as a NaN ELBO.
    pub(crate) fn set_validation(&mut self, means: Option<(f64, f64, f64)>) {
        match means {
            Some((vl, vr, vk)) => {
                self.validation_loss = Some(vl);
                self.reconstruction_loss_validation = Some(vr);
                self.kl_local_validation = Some(vk);
                self.elbo_validation = Some(vr + vk);
            }
            None => self.elbo_validation = Some(f64::NAN),
        }
    }
}
