//! Pieces of multi-dataset, adversarially trained models (GIMVI now; MULTIVI and SPLICEVI
//! reuse them): the cyclic minibatch schedule over several datasets and the classifier that
//! tries to tell the datasets (or batches) apart from the latent space, with its two losses.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{activation, backend::Backend, Tensor, TensorData};

use crate::nn::{FcLayers, FcOptions};

/// One training step: a minibatch (cell indices) of every dataset, in dataset order.
pub type Step<'a> = Vec<&'a [usize]>;

/// Pairs the minibatches of several datasets for one epoch (gimvi.md §6.1). `train_cells`
/// holds each dataset's (already shuffled) training cells. The dataset with the most training
/// cells drives the epoch (ties: the earlier dataset); every other dataset cycles through
/// the minibatches of its single pass, in the same order, as often as needed.
pub fn cyclic_schedule<'a>(train_cells: &'a [Vec<usize>], batch_size: usize) -> Vec<Step<'a>> {
    let chunks: Vec<Vec<&[usize]>> = train_cells
        .iter()
        .map(|cells| cells.chunks(batch_size.max(1)).collect())
        .collect();
    let driver = train_cells.iter().enumerate().fold(0, |best, (i, c)| {
        if c.len() > train_cells[best].len() {
            i
        } else {
            best
        }
    });
    if chunks.iter().any(|c| c.is_empty()) {
        return Vec::new();
    }
    (0..chunks[driver].len())
        .map(|k| chunks.iter().map(|c| c[k % c.len()]).collect())
        .collect()
}

/// scvi-tools' `Classifier` as the adversarial training plans build it: an FCLayers stack
/// (batch norm, ReLU, dropout) and a linear output of class logits.
#[derive(Module, Debug)]
pub struct Classifier<B: Backend> {
    pub layers: FcLayers<B>,
    pub output: Linear<B>,
}

impl<B: Backend> Classifier<B> {
    /// The adversarial classifier's defaults: 3 hidden layers of 32, dropout 0.1.
    pub fn adversarial(n_input: usize, n_classes: usize, device: &B::Device) -> Self {
        Self::new(n_input, 32, n_classes, 3, 0.1, device)
    }

    pub fn new(
        n_input: usize,
        n_hidden: usize,
        n_classes: usize,
        n_layers: usize,
        dropout: f64,
        device: &B::Device,
    ) -> Self {
        let o = FcOptions {
            n_in: n_input,
            n_out: n_hidden,
            n_cov: 0,
            n_layers,
            n_hidden,
            dropout,
            batch_norm: true,
            layer_norm: false,
            inject_covariates: false,
        };
        Self {
            layers: FcLayers::new(&o, device),
            output: LinearConfig::new(n_hidden, n_classes).init(device),
        }
    }

    pub fn forward(&self, z: Tensor<B, 2>, training: bool) -> Tensor<B, 2> {
        self.output.forward(self.layers.forward(z, None, training))
    }
}

/// One-hot rows of `classes` (n x n_classes).
pub fn one_hot<B: Backend>(
    classes: &[usize],
    n_classes: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let mut v = vec![0f32; classes.len() * n_classes];
    for (r, &c) in classes.iter().enumerate() {
        v[r * n_classes + c] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [classes.len(), n_classes]), device)
}

/// The adversarial cross-entropy (mean over cells). With `true_class` it is the classifier's
/// own loss, -log p(class of the cell); otherwise the encoder's "fool" loss, which puts the
/// target mass 1/(C-1) on every wrong class.
pub fn adversarial_loss<B: Backend>(
    logits: Tensor<B, 2>,
    onehot: Tensor<B, 2>,
    true_class: bool,
) -> Tensor<B, 1> {
    let n_classes = logits.dims()[1];
    let target = if true_class {
        onehot
    } else {
        (onehot.neg() + 1.0) / (n_classes as f64 - 1.0).max(1.0)
    };
    (activation::log_softmax(logits, 1) * target)
        .sum_dim(1)
        .mean()
        .neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    #[test]
    fn shorter_dataset_replays_its_minibatches_in_order() {
        // gimvi.md §10.7: short loader [1, 2], long [10, 11, 12] -> (1,10), (2,11), (1,12).
        let sets = vec![vec![1, 2], vec![10, 11, 12]];
        let steps = cyclic_schedule(&sets, 1);
        let pairs: Vec<(usize, usize)> = steps.iter().map(|s| (s[0][0], s[1][0])).collect();
        assert_eq!(pairs, vec![(1, 10), (2, 11), (1, 12)]);
        // Ties go to the first dataset; its batches are all used once.
        let tie = vec![vec![1, 2, 3], vec![4, 5, 6]];
        let steps = cyclic_schedule(&tie, 2);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1], vec![&[3][..], &[6][..]]);
        // The driver is the dataset with more training cells, not more minibatches.
        let sets = vec![vec![0; 5], vec![1; 6]];
        let steps = cyclic_schedule(&sets, 4);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1][1].len(), 2);
        assert_eq!(steps[1][0].len(), 1);
    }

    #[test]
    fn adversarial_losses_match_the_objective_assembly_vector() {
        // gimvi.md §10.5: equal logits -> fool loss log 2, classifier loss log 2.
        let dev = Default::default();
        let logits = Tensor::<B, 2>::zeros([5, 2], &dev);
        let onehot = one_hot::<B>(&[0, 0, 1, 1, 1], 2, &dev);
        let fool: f32 = adversarial_loss(logits.clone(), onehot.clone(), false).into_scalar();
        let cls: f32 = adversarial_loss(logits, onehot.clone(), true).into_scalar();
        assert!((fool - std::f32::consts::LN_2).abs() < 1e-6);
        assert!((cls - std::f32::consts::LN_2).abs() < 1e-6);
        // A confident, correct classifier: its loss is small, the fool loss large.
        let sure = onehot.clone() * 8.0 - 4.0;
        let cls: f32 = adversarial_loss(sure.clone(), onehot.clone(), true).into_scalar();
        let fool: f32 = adversarial_loss(sure, onehot, false).into_scalar();
        assert!(cls < 0.001 && fool > 7.9, "cls {cls} fool {fool}");
    }
}
