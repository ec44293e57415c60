//! The training loop (scvi.md §7): split, per-epoch shuffling, KL warm-up, Adam with the
//! reference's epsilon and coupled weight decay, history, validation and early stopping.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::data::{make_split, split_sizes, DataSet, Split};
use crate::error::{invalid_arg, Error, Result};
use crate::resident::ResidentData;
use crate::scarches::{self, FreezeSpec};
use crate::scvi::{Batch, Scvi};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerKind {
    Adam,
    AdamW,
}

/// Arguments of `train()`, with scvi-tools' defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    pub max_epochs: Option<usize>,
    pub train_size: Option<f64>,
    pub validation_size: Option<f64>,
    pub shuffle_set_split: bool,
    pub batch_size: usize,
    pub early_stopping: bool,
    pub early_stopping_monitor: String,
    pub early_stopping_patience: usize,
    pub early_stopping_min_delta: f64,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f64,
    pub eps: f64,
    pub n_epochs_kl_warmup: Option<usize>,
    pub n_steps_kl_warmup: Option<usize>,
    pub min_kl_weight: f64,
    pub max_kl_weight: f64,
    /// Evaluate the validation split after every epoch (history has validation columns).
    pub check_val_every_n_epoch: usize,
    pub seed: Option<u64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            max_epochs: None,
            train_size: None,
            validation_size: None,
            shuffle_set_split: true,
            batch_size: 128,
            early_stopping: false,
            early_stopping_monitor: "elbo_validation".into(),
            early_stopping_patience: 45,
            early_stopping_min_delta: 0.0,
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            weight_decay: 1e-6,
            eps: 0.01,
            n_epochs_kl_warmup: Some(400),
            n_steps_kl_warmup: None,
            min_kl_weight: 0.0,
            max_kl_weight: 1.0,
            check_val_every_n_epoch: 1,
            seed: None,
        }
    }
}

/// scvi-tools' default number of epochs (scvi.md §7.4), rounding half to even.
pub fn max_epochs_heuristic(n_cells: usize) -> usize {
    let e = (20_000.0 / n_cells as f64 * 400.0).round_ties_even();
    e.clamp(1.0, 400.0) as usize
}

/// KL warm-up weight for 0-based `epoch` and global optimizer `step` (scvi.md §7.5).
pub fn kl_weight(cfg: &TrainConfig, epoch: usize, step: usize) -> f64 {
    let delta = cfg.max_kl_weight - cfg.min_kl_weight;
    match (
        cfg.n_epochs_kl_warmup.filter(|&n| n > 0),
        cfg.n_steps_kl_warmup.filter(|&n| n > 0),
    ) {
        (Some(n), _) if epoch < n => cfg.min_kl_weight + delta * epoch as f64 / n as f64,
        (Some(_), _) => cfg.max_kl_weight,
        (None, Some(n)) if step < n => cfg.min_kl_weight + delta * step as f64 / n as f64,
        _ => cfg.max_kl_weight,
    }
}

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
    pub seconds: f64,
}

impl EpochRecord {
    fn metric(&self, name: &str) -> Option<f64> {
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
pub struct TrainState {
    pub is_trained: bool,
    pub history: Vec<EpochRecord>,
    pub split: Split,
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
    /// Adds a minibatch of `n` cells (`loss_mean` is its mean loss); false when a value is
    /// not finite.
    pub(crate) fn add<B: burn::tensor::backend::Backend>(
        &mut self,
        loss_mean: Tensor<B, 1>,
        rec: Tensor<B, 1>,
        kl: Tensor<B, 1>,
        n: usize,
    ) -> bool {
        let packed = Tensor::cat(vec![loss_mean, rec.sum(), kl.sum()], 0);
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

/// Adam with the reference's epsilon and coupled (L2) weight decay.
pub(crate) fn adam_config(cfg: &TrainConfig) -> AdamConfig {
    AdamConfig::new()
        .with_epsilon(cfg.eps as f32)
        .with_weight_decay(
            (cfg.weight_decay > 0.0).then(|| WeightDecayConfig::new(cfg.weight_decay as f32)),
        )
}

/// Mean loss terms of `model` (eval mode) over `cells`.
fn evaluate<B: burn::tensor::backend::Backend>(
    model: &Scvi<B>,
    data: &DataSet,
    cells: &[usize],
    batch_size: usize,
    kl_w: f64,
    device: &B::Device,
) -> Option<(f64, f64, f64)> {
    let mut sums = Sums::default();
    for chunk in cells.chunks(batch_size) {
        let b = Batch::<B>::from_host(&data.host_batch(chunk, None), data.n_genes(), device);
        let t = model.loss(&b, kl_w, false);
        if !sums.add(t.loss, t.reconstruction, t.kl_z + t.kl_l, chunk.len()) {
            return None;
        }
    }
    Some(sums.means())
}

/// Available memory in bytes (Linux /proc/meminfo), if it can be read.
pub(crate) fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses an allocation of `bytes` that cannot fit in the available memory.
pub fn check_memory(bytes: u64, arg: &str, hint: &str) -> Result<()> {
    match available_memory() {
        Some(avail) if bytes > avail => Err(invalid_arg(
            arg,
            format!(
                "needs about {:.1} GB, more than the {:.1} GB of memory available; {hint}",
                bytes as f64 / 1e9,
                avail as f64 / 1e9
            ),
        )),
        _ => Ok(()),
    }
}

/// A minibatch keeps a few dozen cells x genes buffers alive (forward values, gradients);
/// an allocation failure would abort the whole R session, so refuse sizes that cannot fit.
pub fn check_minibatch_memory(batch_size: usize, n_genes: usize) -> Result<()> {
    const LIVE_BUFFERS: u64 = 48;
    let need = (batch_size as u64)
        .saturating_mul(n_genes as u64)
        .saturating_mul(4 * LIVE_BUFFERS);
    match available_memory() {
        Some(avail) if need > avail => Err(invalid_arg(
            "batch_size",
            format!(
                "= {batch_size} with {n_genes} genes needs about {:.1} GB per training step, more than the \
                 {:.1} GB of memory available; use a smaller batch_size",
                need as f64 / 1e9,
                avail as f64 / 1e9
            ),
        )),
        _ => Ok(()),
    }
}

pub fn validate_config(cfg: &TrainConfig) -> Result<()> {
    if cfg.batch_size < 2 {
        return Err(invalid_arg(
            "batch_size",
            format!("must be >= 2, got {}", cfg.batch_size),
        ));
    }
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return Err(invalid_arg(
            "lr",
            format!("must be a positive number, got {}", cfg.lr),
        ));
    }
    if cfg.weight_decay.is_nan() || cfg.weight_decay < 0.0 || cfg.eps.is_nan() || cfg.eps <= 0.0 {
        return Err(invalid_arg(
            "weight_decay",
            "and `eps` must be >= 0 and > 0",
        ));
    }
    if cfg.min_kl_weight > cfg.max_kl_weight {
        return Err(invalid_arg(
            "min_kl_weight",
            "must not exceed max_kl_weight",
        ));
    }
    if cfg.max_epochs == Some(0) {
        return Err(invalid_arg("max_epochs", "must be >= 1"));
    }
    if !MONITORS.contains(&cfg.early_stopping_monitor.as_str()) {
        return Err(invalid_arg(
            "early_stopping_monitor",
            format!("must be one of {}", MONITORS.join(", ")),
        ));
    }
    Ok(())
}

/// Fits `model` on `data`. On a non-finite loss the parameters of the last finished epoch
/// are returned inside the error path's model (the caller keeps its previous model).
/// `resident_budget` (bytes) keeps the whole dataset on the device when it fits (GPU
/// training); otherwise minibatches are assembled on the host from the sparse counts.
#[allow(clippy::too_many_arguments)]
pub fn train<B: AutodiffBackend>(
    model: Scvi<B::InnerBackend>,
    data: &DataSet,
    cfg: &TrainConfig,
    state: &mut TrainState,
    observer: &mut dyn Observer,
    device: &B::Device,
    resident_budget: Option<usize>,
    freeze: Option<&FreezeSpec>,
) -> (Scvi<B::InnerBackend>, Result<TrainSummary>) {
    if let Err(e) = validate_config(cfg) {
        return (model, Err(e));
    }
    if let Err(e) = check_minibatch_memory(cfg.batch_size.min(data.n_cells()), data.n_genes()) {
        return (model, Err(e));
    }
    if data.n_genes() != model.config.n_input {
        let msg = format!(
            "has {} genes but the model expects {}",
            data.n_genes(),
            model.config.n_input
        );
        return (model, Err(invalid_arg("x", msg)));
    }
    let n = data.n_cells();
    let sizes = match split_sizes(
        n,
        cfg.train_size,
        cfg.validation_size,
        cfg.batch_size,
        false,
    ) {
        Ok(s) => s,
        Err(e) => return (model, Err(e)),
    };
    if cfg.early_stopping && sizes.1 == 0 && cfg.early_stopping_monitor.ends_with("validation") {
        return (
            model,
            Err(invalid_arg(
                "early_stopping",
                "needs a non-empty validation set",
            )),
        );
    }
    let seed = cfg.seed.unwrap_or_else(|| rand::random::<u32>() as u64);
    B::seed(device, seed);
    let split = make_split(n, sizes, cfg.shuffle_set_split, seed as u32);
    let max_epochs = cfg.max_epochs.unwrap_or_else(|| max_epochs_heuristic(n));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(1));

    let resident =
        resident_budget.and_then(|max| ResidentData::<B>::upload(data, device, max).ok());
    let minibatch = |cells: &[usize]| match &resident {
        Some(r) => r.batch(cells),
        None => Batch::<B>::from_host(&data.host_batch(cells, None), data.n_genes(), device),
    };
    let model = burn::module::Module::map(model, &mut crate::nn::Retrainable);
    let mut model_ad = <Scvi<B> as AutodiffModule<B>>::from_inner(model);
    let grad_rules = freeze
        .map(|f| scarches::grad_rules(&model_ad, f))
        .unwrap_or_default();
    let mut last_good = model_ad.valid();
    let mut adam =
        (cfg.optimizer == OptimizerKind::Adam).then(|| adam_config(cfg).init::<B, Scvi<B>>());
    let mut adamw = (cfg.optimizer == OptimizerKind::AdamW).then(|| {
        AdamWConfig::new()
            .with_epsilon(cfg.eps as f32)
            .with_weight_decay(cfg.weight_decay as f32)
            .init::<B, Scvi<B>>()
    });

    let epoch_offset = state.history.last().map_or(0, |r| r.epoch + 1);
    let start = Instant::now();
    let mut step = 0usize;
    let mut best = f64::INFINITY;
    let mut wait = 0usize;
    let mut summary = TrainSummary {
        epochs_run: 0,
        max_epochs,
        interrupted: false,
        early_stopped: false,
        seconds: 0.0,
    };
    let mut train_cells = split.train.clone();
    for epoch in 0..max_epochs {
        let epoch_start = Instant::now();
        let kl_w = kl_weight(cfg, epoch, step);
        train_cells.shuffle(&mut rng);
        let mut sums = Sums::default();
        for chunk in train_cells.chunks(cfg.batch_size) {
            if chunk.len() < 2 {
                continue; // batch norm cannot use a single cell; the split rules avoid this
            }
            let kl_step = kl_weight(cfg, epoch, step);
            let b = minibatch(chunk);
            let t = model_ad.loss(&b, kl_step, true);
            let ok = sums.add(
                t.loss.clone().detach(),
                t.reconstruction.detach(),
                (t.kl_z + t.kl_l).detach(),
                chunk.len(),
            );
            if !ok {
                let msg = format!(
                    "training produced a non-finite loss in epoch {} (step {}); the model keeps \
                     the parameters of the last completed epoch. Try a lower `lr`, check the \
                     counts, or use gene_likelihood = \"nb\"",
                    epoch_offset + epoch + 1,
                    step + 1
                );
                state.is_trained = state.is_trained || epoch > 0;
                return (last_good, Err(Error::NonFinite(msg)));
            }
            let mut grads = GradientsParams::from_grads(t.loss.backward(), &model_ad);
            scarches::apply_grad_rules::<B>(&mut grads, &grad_rules);
            model_ad = match (&mut adam, &mut adamw) {
                (Some(o), _) => o.step(cfg.lr, model_ad, grads),
                (_, Some(o)) => o.step(cfg.lr, model_ad, grads),
                _ => unreachable!("one optimizer is always built"),
            };
            step += 1;
            if observer.should_stop() {
                summary.interrupted = true;
                break;
            }
        }
        let mut record = sums.record(epoch_offset + epoch, kl_w);
        last_good = model_ad.valid();
        let validate = !split.validation.is_empty()
            && cfg.check_val_every_n_epoch > 0
            && ((epoch + 1) % cfg.check_val_every_n_epoch == 0 || epoch + 1 == max_epochs);
        if validate && !summary.interrupted {
            record.set_validation(evaluate(
                &last_good,
                data,
                &split.validation,
                cfg.batch_size,
                kl_w,
                device,
            ));
        }
        record.seconds = epoch_start.elapsed().as_secs_f64();
        summary.epochs_run = epoch + 1;
        observer.on_epoch(
            &record,
            epoch + 1,
            max_epochs,
            start.elapsed().as_secs_f64(),
        );
        let monitored = record.metric(&cfg.early_stopping_monitor);
        state.history.push(record);
        if summary.interrupted {
            break;
        }
        if cfg.early_stopping {
            if let Some(v) = monitored {
                if !v.is_finite() {
                    summary.early_stopped = true;
                    break;
                }
                if v < best - cfg.early_stopping_min_delta {
                    best = v;
                    wait = 0;
                } else {
                    wait += 1;
                    if wait >= cfg.early_stopping_patience {
                        summary.early_stopped = true;
                        break;
                    }
                }
            }
        }
    }
    summary.seconds = start.elapsed().as_secs_f64();
    state.is_trained = true;
    state.split = split;
    (last_good, Ok(summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_heuristic_matches_reference() {
        let cases = [
            (500, 400),
            (20_000, 400),
            (25_000, 320),
            (32_000, 250),
            (128_000, 62),
            (160_000, 50),
            (3_200_000, 2),
            (10_000_000, 1),
        ];
        for (n, e) in cases {
            assert_eq!(max_epochs_heuristic(n), e, "n = {n}");
        }
    }

    #[test]
    fn kl_schedules_match_reference() {
        let cfg = TrainConfig::default();
        for (epoch, w) in [
            (0, 0.0),
            (1, 0.0025),
            (100, 0.25),
            (399, 0.9975),
            (400, 1.0),
            (1000, 1.0),
        ] {
            assert!((kl_weight(&cfg, epoch, 0) - w).abs() < 1e-12);
        }
        let steps = TrainConfig {
            n_epochs_kl_warmup: None,
            n_steps_kl_warmup: Some(100),
            ..Default::default()
        };
        assert!((kl_weight(&steps, 3, 50) - 0.5).abs() < 1e-12);
        assert!((kl_weight(&steps, 3, 100) - 1.0).abs() < 1e-12);
    }
}

#[cfg(test)]
mod training_tests {
    use super::*;
    use crate::backend::{Cpu, CpuTrain};
    use crate::data::DataSet;
    use crate::scvi::ScviConfig;

    fn toy_data() -> DataSet {
        crate::data::toy_dataset(2)
    }

    fn flat<const D: usize>(t: burn::tensor::Tensor<Cpu, D>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    #[test]
    fn training_updates_every_kind_of_parameter_and_a_seed_reproduces_it() {
        let _rng = crate::TEST_RNG_LOCK.lock();
        let data = toy_data();
        let fresh = || {
            let prior = crate::data::library_prior(&data);
            Scvi::<Cpu>::new(ScviConfig::new(6, 2), prior, &Default::default()).unwrap()
        };
        let tc = TrainConfig {
            max_epochs: Some(2),
            seed: Some(3),
            batch_size: 16,
            ..Default::default()
        };
        let run = || {
            let mut state = TrainState::default();
            let (m, r) = train::<CpuTrain>(
                fresh(),
                &data,
                &tc,
                &mut state,
                &mut Silent,
                &Default::default(),
                None,
                None,
            );
            r.unwrap();
            (m, state)
        };
        // The initialisation train() draws: seed, then materialise the parameters.
        <CpuTrain as burn::tensor::backend::Backend>::seed(&Default::default(), 3);
        let init = <Scvi<CpuTrain> as AutodiffModule<CpuTrain>>::from_inner(fresh()).valid();
        let (after, state) = run();
        let changed = |a: Vec<f32>, b: Vec<f32>| a.iter().zip(&b).any(|(x, y)| x != y);
        assert!(
            changed(flat(init.px_r.val()), flat(after.px_r.val())),
            "px_r frozen"
        );
        let bn = |m: &Scvi<Cpu>| {
            m.z_encoder.encoder.layers[0]
                .batch_norm
                .as_ref()
                .unwrap()
                .gamma
                .val()
        };
        assert!(
            changed(flat(bn(&init)), flat(bn(&after))),
            "batch-norm gamma frozen"
        );
        let w = |m: &Scvi<Cpu>| m.decoder.px_scale_decoder.weight.val();
        assert!(
            changed(flat(w(&init)), flat(w(&after))),
            "decoder weights frozen"
        );
        assert_eq!(state.history.len(), 2);
        assert_eq!(state.split.validation.len() + state.split.train.len(), 40);
        let (again, state2) = run();
        assert_eq!(state.history[1].elbo_train, state2.history[1].elbo_train);
        assert_eq!(flat(after.px_r.val()), flat(again.px_r.val()));
    }

    #[test]
    fn device_resident_data_trains_like_host_minibatches() {
        let _rng = crate::TEST_RNG_LOCK.lock();
        let data = toy_data();
        let tc = TrainConfig {
            max_epochs: Some(2),
            seed: Some(5),
            batch_size: 16,
            ..Default::default()
        };
        let run = |budget| {
            let prior = crate::data::library_prior(&data);
            let m = Scvi::<Cpu>::new(ScviConfig::new(6, 2), prior, &Default::default()).unwrap();
            let mut state = TrainState::default();
            let (m, r) = train::<CpuTrain>(
                m,
                &data,
                &tc,
                &mut state,
                &mut Silent,
                &Default::default(),
                budget,
                None,
            );
            r.unwrap();
            (flat(m.px_r.val()), state.history[1].elbo_train)
        };
        let (host_px_r, host_elbo) = run(None);
        let (dev_px_r, dev_elbo) = run(Some(usize::MAX));
        assert_eq!(host_elbo, dev_elbo);
        assert_eq!(host_px_r, dev_px_r);
        // A budget too small for the data falls back to host minibatches.
        assert_eq!(run(Some(1)).1, host_elbo);
    }

    /// Regression: a model that was used, cloned, trained before or reloaded must still
    /// learn (Burn resets require_grad on cloned/loaded inner-backend parameters).
    #[test]
    fn a_used_or_trained_model_keeps_learning() {
        let _rng = crate::TEST_RNG_LOCK.lock();
        let data = toy_data();
        let tc = TrainConfig {
            max_epochs: Some(1),
            seed: Some(2),
            batch_size: 16,
            ..Default::default()
        };
        let prior = crate::data::library_prior(&data);
        let m = Scvi::<Cpu>::new(ScviConfig::new(6, 2), prior, &Default::default()).unwrap();
        let w = |m: &Scvi<Cpu>| flat(m.decoder.px_scale_decoder.weight.val());
        let _ = w(&m); // use it first: parameters are now initialised
        let before = w(&m);
        let mut state = TrainState::default();
        let (once, r) = train::<CpuTrain>(
            m.clone(),
            &data,
            &tc,
            &mut state,
            &mut Silent,
            &Default::default(),
            None,
            None,
        );
        r.unwrap();
        assert_ne!(w(&once), before, "a used model did not train");
        let (twice, r) = train::<CpuTrain>(
            once.clone(),
            &data,
            &tc,
            &mut state,
            &mut Silent,
            &Default::default(),
            None,
            None,
        );
        r.unwrap();
        assert_ne!(w(&twice), w(&once), "a trained model did not train further");
        assert_eq!(state.history.len(), 2);
        assert_eq!(state.history[1].epoch, 1);
    }

    #[test]
    fn an_impossible_batch_size_is_refused_not_allocated() {
        if available_memory().is_some() {
            let e = check_minibatch_memory(usize::MAX / 1024, 1_000_000).unwrap_err();
            assert!(e.to_string().contains("batch_size"), "{e}");
        }
        assert!(check_minibatch_memory(128, 2000).is_ok());
    }
}
