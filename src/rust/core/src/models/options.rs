//! Model options shared by the family (scvi-tools' names and spellings).

use serde::{Deserialize, Serialize};

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
