//! Arguments of `train()` with the reference's defaults, the epoch heuristic, the KL warm-up
//! schedule and the optimiser settings (scvi.md §7).

use serde::{Deserialize, Serialize};

use crate::error::{invalid_arg, Result};
use crate::train::history::MONITORS;
use crate::train::optim::FusedAdam;

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
    /// Checks of the monitored metric that early stopping ignores at first (neither best
    /// value nor patience; SpliceVI: its KL warm-up epochs).
    pub early_stopping_warmup_epochs: usize,
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
    /// Weight of the adversarial terms of models with an adversarial classifier (GIMVI's
    /// `kappa`); None: the model's default.
    pub kappa: Option<f64>,
    /// Clip the global L2 norm of the module's gradients to this value (SpliceVI's plan);
    /// None: no clipping.
    pub gradient_clipping_max_norm: Option<f64>,
    /// None: constant learning rate.
    pub lr_scheduler: Option<crate::train::lr::LrSchedule>,
    /// Data-parallel workers, one per device (on the CPU, workers sharing the cores); each
    /// step's minibatch of `batch_size` cells is split between them.
    pub devices: usize,
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
            early_stopping_warmup_epochs: 0,
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
            kappa: None,
            gradient_clipping_max_norm: None,
            lr_scheduler: None,
            devices: 1,
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

/// The optimiser of `cfg` with the reference's betas, epsilon and weight decay: Adam's is
/// coupled (L2, scvi-tools' `Adam`), AdamW's decoupled.
pub fn optimizer(cfg: &TrainConfig) -> FusedAdam {
    FusedAdam {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: cfg.eps as f32,
        weight_decay: cfg.weight_decay as f32,
        decoupled: cfg.optimizer == OptimizerKind::AdamW,
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
    if cfg.devices == 0 || cfg.devices > crate::train::parallel::MAX_WORKERS {
        return Err(invalid_arg(
            "devices",
            format!(
                "must be between 1 and {}, got {}",
                crate::train::parallel::MAX_WORKERS,
                cfg.devices
            ),
        ));
    }
    if cfg.batch_size < 2 * cfg.devices {
        return Err(invalid_arg(
            "batch_size",
            format!(
                "must be at least 2 cells per device (>= {}) with devices = {}, got {}",
                2 * cfg.devices,
                cfg.devices,
                cfg.batch_size
            ),
        ));
    }
    if cfg.max_epochs == Some(0) {
        return Err(invalid_arg("max_epochs", "must be >= 1"));
    }
    if let Some(k) = cfg.kappa.filter(|k| !(*k >= 0.0 && k.is_finite())) {
        return Err(invalid_arg(
            "kappa",
            format!("must be a number >= 0, got {k}"),
        ));
    }
    if let Some(m) = cfg
        .gradient_clipping_max_norm
        .filter(|m| !(*m > 0.0 && m.is_finite()))
    {
        return Err(invalid_arg(
            "gradient_clipping_max_norm",
            format!("must be a number > 0, got {m}"),
        ));
    }
    if let Some(s) = &cfg.lr_scheduler {
        s.validate()?;
    }
    if !MONITORS.contains(&cfg.early_stopping_monitor.as_str()) {
        return Err(invalid_arg(
            "early_stopping_monitor",
            format!("must be one of {}", MONITORS.join(", ")),
        ));
    }
    Ok(())
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
