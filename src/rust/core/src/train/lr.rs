//! Learning-rate schedules of scvi-tools' training plans: ReduceLROnPlateau on a monitored
//! metric (mode "min", absolute threshold) and StepLR (splicevi.md §7.2; scvi-tools'
//! `reduce_lr_on_plateau`).

use serde::{Deserialize, Serialize};

use crate::error::{invalid_arg, Result};
use crate::train::history::{EpochRecord, MONITORS};

/// A learning-rate schedule; without one the learning rate stays constant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LrSchedule {
    /// Multiply by `factor` (not below `min_lr`) after more than `patience` validation epochs
    /// without `metric` falling below its best minus `threshold`.
    Plateau {
        factor: f64,
        patience: usize,
        threshold: f64,
        min_lr: f64,
        metric: String,
    },
    /// Multiply by `gamma` every `step_size` validation epochs.
    Step { step_size: usize, gamma: f64 },
}

impl LrSchedule {
    pub fn validate(&self) -> Result<()> {
        let positive_below_one = |name: &str, v: f64| {
            if v > 0.0 && v < 1.0 {
                Ok(())
            } else {
                Err(invalid_arg(name, format!("must be in (0, 1), got {v}")))
            }
        };
        match self {
            Self::Plateau {
                factor,
                threshold,
                min_lr,
                metric,
                ..
            } => {
                positive_below_one("lr_factor", *factor)?;
                if !(*threshold >= 0.0 && threshold.is_finite()) {
                    return Err(invalid_arg("lr_threshold", "must be a number >= 0"));
                }
                if !(*min_lr >= 0.0 && min_lr.is_finite()) {
                    return Err(invalid_arg("lr_min", "must be a number >= 0"));
                }
                if !MONITORS.contains(&metric.as_str()) {
                    return Err(invalid_arg(
                        "lr_scheduler_metric",
                        format!("must be one of {}", MONITORS.join(", ")),
                    ));
                }
                Ok(())
            }
            Self::Step { step_size, gamma } => {
                positive_below_one("lr_factor", *gamma)?;
                if *step_size == 0 {
                    return Err(invalid_arg("step_size", "must be >= 1"));
                }
                Ok(())
            }
        }
    }
}

/// The learning rate during a run.
pub struct LrState {
    pub lr: f64,
    schedule: Option<LrSchedule>,
    best: f64,
    bad_epochs: usize,
    validations: usize,
}

impl LrState {
    pub fn new(lr: f64, schedule: Option<LrSchedule>) -> Self {
        Self {
            lr,
            schedule,
            best: f64::INFINITY,
            bad_epochs: 0,
            validations: 0,
        }
    }

    /// Steps the schedule after an epoch: StepLR counts validation epochs, the plateau rule
    /// reads its metric whenever the epoch has it.
    pub fn after_epoch(&mut self, record: &EpochRecord) {
        match &self.schedule {
            None => {}
            Some(LrSchedule::Step { step_size, gamma }) => {
                if record.elbo_validation.is_none() {
                    return;
                }
                self.validations += 1;
                if self.validations.is_multiple_of(*step_size) {
                    self.lr *= gamma;
                }
            }
            Some(LrSchedule::Plateau {
                factor,
                patience,
                threshold,
                min_lr,
                metric,
            }) => {
                let Some(v) = record.metric(metric) else {
                    return;
                };
                if v < self.best - threshold {
                    self.best = v;
                    self.bad_epochs = 0;
                } else {
                    self.bad_epochs += 1;
                }
                if self.bad_epochs > *patience {
                    let reduced = (self.lr * factor).max(*min_lr);
                    // torch ignores reductions smaller than 1e-8
                    if self.lr - reduced > 1e-8 {
                        self.lr = reduced;
                    }
                    self.bad_epochs = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(v: f64) -> EpochRecord {
        EpochRecord {
            elbo_validation: Some(v),
            ..Default::default()
        }
    }

    #[test]
    fn plateau_reduces_after_patience_bad_epochs_like_torch() {
        let schedule = LrSchedule::Plateau {
            factor: 0.5,
            patience: 2,
            threshold: 0.1,
            min_lr: 0.3,
            metric: "elbo_validation".into(),
        };
        let mut s = LrState::new(1.0, Some(schedule));
        // 10 best; 9.95 is not better by 0.1; three bad epochs > patience 2 -> 0.5
        let lrs: Vec<f64> = [10.0, 9.95, 9.95, 9.95, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0]
            .iter()
            .map(|&v| {
                s.after_epoch(&record(v));
                s.lr
            })
            .collect();
        assert_eq!(
            lrs,
            vec![1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3]
        );
    }

    #[test]
    fn step_multiplies_every_step_size_validations() {
        let mut s = LrState::new(
            1.0,
            Some(LrSchedule::Step {
                step_size: 2,
                gamma: 0.1,
            }),
        );
        let lrs: Vec<f64> = (0..5)
            .map(|_| {
                s.after_epoch(&record(1.0));
                s.lr
            })
            .collect();
        assert!((lrs[1] - 0.1).abs() < 1e-12 && (lrs[3] - 0.01).abs() < 1e-12);
        assert_eq!(lrs[0], 1.0);
        assert!(LrSchedule::Step {
            step_size: 0,
            gamma: 0.1
        }
        .validate()
        .is_err());
    }
}
