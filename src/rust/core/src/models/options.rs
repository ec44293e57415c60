//! Model options shared by the family (scvi-tools' names and spellings).

use serde::{Deserialize, Serialize};

use crate::data::DataSet;
use crate::error::{invalid_arg, Result};

/// Most network weights a model may ask for (4 GB in f32; training needs about four times
/// that). scvi-tools' models have up to tens of millions.
const MAX_NETWORK_WEIGHTS: f64 = 1e9;

/// Every named size (layer counts: names with "layers"; widths: the others) must be at
/// least 1, and together with the `n_features` inputs and outputs they must not ask for
/// more network weights than [`MAX_NETWORK_WEIGHTS`]: the weights are allocated before
/// training, and an allocation that fails aborts the process, so an absurd size is refused
/// here, naming it.
pub(crate) fn check_sizes(sizes: &[(&str, usize)], n_features: usize) -> Result<()> {
    if let Some((name, v)) = sizes.iter().find(|(_, v)| *v < 1) {
        return Err(invalid_arg(name, format!("must be >= 1, got {v}")));
    }
    let is_depth = |name: &str| name.contains("layers");
    let width = sizes
        .iter()
        .filter(|(n, _)| !is_depth(n))
        .map(|&(_, v)| v as f64)
        .fold(1.0, f64::max);
    let depth: f64 = sizes
        .iter()
        .filter(|(n, _)| is_depth(n))
        .map(|&(_, v)| v as f64)
        .sum();
    let widths: f64 = sizes
        .iter()
        .filter(|(n, _)| !is_depth(n))
        .map(|&(_, v)| v as f64)
        .sum();
    // A model has at most eight networks, each from (or to) the features through its layers.
    let estimate = 8.0 * (n_features as f64 + widths + depth * width) * width;
    if estimate <= MAX_NETWORK_WEIGHTS {
        return Ok(());
    }
    // Name the size furthest above what models usually use (1,024 units, 4 layers).
    let culprit = sizes.iter().max_by(|a, b| {
        let r = |&(n, v): &(&str, usize)| v as f64 / if is_depth(n) { 4.0 } else { 1024.0 };
        r(a).total_cmp(&r(b))
    });
    let (name, value) = culprit.map_or(("x", n_features), |&(n, v)| (n, v));
    Err(invalid_arg(
        name,
        format!(
            "= {value} asks for about {estimate:.1e} network weights with the other sizes, more \
             than rscvi builds ({MAX_NETWORK_WEIGHTS:.0e}, 4 GB); choose a smaller value"
        ),
    ))
}

/// The count likelihoods every model has; the Normal is SCVI's alone (as in scvi-tools).
pub(crate) fn check_count_likelihoods(likelihoods: &[(&str, GeneLikelihood)]) -> Result<()> {
    match likelihoods
        .iter()
        .find(|(_, l)| *l == GeneLikelihood::Normal)
    {
        Some((name, _)) => Err(invalid_arg(
            name,
            "must be a count likelihood (zinb, nb or poisson); \"normal\" is SCVI's only",
        )),
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
    /// Normal(μ, σ) with σ the exponentiated dispersion parameter: SCVI only, experimental
    /// in scvi-tools as here.
    Normal,
}

/// How SCVI's networks see the batch: one-hot covariate columns at every layer, or a learned
/// embedding ([`BATCH_EMBEDDING_DIM`] numbers per batch) appended to the input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchRepresentation {
    #[default]
    #[serde(rename = "one-hot")]
    OneHot,
    #[serde(rename = "embedding")]
    Embedding,
}

/// Width of a batch embedding (scvi-tools' default `embedding_dim`).
pub const BATCH_EMBEDDING_DIM: usize = 5;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_that_cannot_be_allocated_are_refused_by_name() {
        let ok = [("n_hidden", 128), ("n_latent", 10), ("n_layers", 2)];
        assert!(check_sizes(&ok, 100_000).is_ok());
        for (sizes, culprit) in [
            (
                [
                    ("n_hidden", 1_000_000_000),
                    ("n_latent", 10),
                    ("n_layers", 1),
                ],
                "n_hidden",
            ),
            (
                [
                    ("n_hidden", 128),
                    ("n_latent", 1_000_000_000),
                    ("n_layers", 1),
                ],
                "n_latent",
            ),
            (
                [
                    ("n_hidden", 128),
                    ("n_latent", 10),
                    ("n_layers", 10_000_000),
                ],
                "n_layers",
            ),
        ] {
            let e = check_sizes(&sizes, 2_000).unwrap_err().to_string();
            assert!(e.contains(culprit) && e.contains("network weights"), "{e}");
        }
        let e = check_sizes(&[("n_hidden", 0)], 10).unwrap_err().to_string();
        assert!(e.contains("must be >= 1"), "{e}");
    }
}
