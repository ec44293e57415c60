//! The adversarial classifier of multi-dataset and multi-batch models (GIMVI's dataset
//! classifier, MULTIVI's batch classifier): it tries to tell the datasets (or batches) apart
//! from the latent space; its two losses train it and fool it.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{activation, backend::Backend, Tensor, TensorData};

use crate::nn::{FcLayers, FcOptions};

/// scvi-tools' `Classifier` as the adversarial training plans build it: an FCLayers stack
/// (batch norm, ReLU, dropout) and a linear output of class logits.
#[derive(Module, Debug)]
pub struct Classifier<B: Backend> {
    pub layers: FcLayers<B>,
    pub output: Linear<B>,
}

impl<B: Backend> Classifier<B> {
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
            leaky_relu: false,
        };
        Self {
            layers: FcLayers::new(&o, device),
            output: LinearConfig::new(n_hidden, n_classes).init(device),
        }
    }

    pub fn forward(&self, z: Tensor<B, 2>, training: bool) -> Tensor<B, 2> {
        super::linear(&self.output, self.layers.forward(z, None, training))
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
