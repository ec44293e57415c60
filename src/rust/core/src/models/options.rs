//! Model options shared by the family (scvi-tools' names and spellings).

use serde::{Deserialize, Serialize};

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
