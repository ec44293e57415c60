//! Model options shared by the family (scvi-tools' names and spellings).

use serde::{Deserialize, Serialize};

use crate::data::DataSet;
use crate::error::{invalid_arg, Result};

/// Every named size must be at least 1 (layer counts, widths).
pub(crate) fn check_sizes(sizes: &[(&str, usize)]) -> Result<()> {
    match sizes.iter().find(|(_, v)| *v < 1) {
        Some((name, v)) => Err(invalid_arg(name, format!("must be >= 1, got {v}"))),
        None => Ok(()),
    }
}

/// Every named dropout rate must lie in [0, 1).
pub(crate) fn check_dropout_rates(rates: &[(&str, f64)]) -> Result<()> {
    match rates.iter().find(|(_, p)| !(0.0..1.0).contains(p)) {
        Some((name, p)) => Err(invalid_arg(name, format!("must be in [0, 1), got {p}"))),
        None => Ok(()),
    }
}

/// Checks data of a multimodal model: one dataset whose columns are the modalities' features
/// in order (`modalities`: count and plural name of each), its batches, and with per-cell
/// modality weights (`weighted_cells`: the training cells) that it is the training data.
pub(crate) fn check_modality_columns(
    data: &DataSet,
    modalities: &[(usize, &str)],
    n_batch: usize,
    weighted_cells: Option<usize>,
) -> Result<()> {
    let expected: usize = modalities.iter().map(|m| m.0).sum();
    if data.n_genes() != expected {
        let parts: Vec<String> = modalities.iter().map(|(n, w)| format!("{n} {w}")).collect();
        return Err(invalid_arg(
            "x",
            format!(
                "has {} features but the model expects {expected} ({})",
                data.n_genes(),
                parts.join(" + ")
            ),
        ));
    }
    if data.batch.n_categories != n_batch {
        return Err(invalid_arg(
            "batch_key",
            format!(
                "has {} categories but the model has {n_batch}",
                data.batch.n_categories
            ),
        ));
    }
    if weighted_cells.is_some_and(|n| n != data.n_cells()) {
        return Err(invalid_arg(
            "x",
            "must be the training cells: modality_weights = \"cell\" has one weight per cell",
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dispersion {
    Gene,
    GeneBatch,
    GeneLabel,
    GeneCell,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneLikelihood {
    Zinb,
    Nb,
    Poisson,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatentDistribution {
    Normal,
    Ln,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormPlacement {
    None,
    Encoder,
    Decoder,
    Both,
}

impl NormPlacement {
    pub(crate) fn encoder(self) -> bool {
        matches!(self, Self::Encoder | Self::Both)
    }
    pub(crate) fn decoder(self) -> bool {
        matches!(self, Self::Decoder | Self::Both)
    }
}
