//! A minibatch on the device: dense counts, their log, library and covariates of the
//! selected cells, built from a [`HostBatch`] (or gathered from a device-resident dataset).

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::data::HostBatch;

/// Device-side copy of a [`HostBatch`].
pub struct Batch<B: Backend> {
    pub x: Tensor<B, 2>,
    pub x_log: Tensor<B, 2>,
    pub log_library: Tensor<B, 2>,
    pub log_factorial: Tensor<B, 1>,
    pub batch_onehot: Tensor<B, 2>,
    pub labels_onehot: Tensor<B, 2>,
    pub covariates: Option<Tensor<B, 2>>,
    pub continuous: Option<Tensor<B, 2>>,
    pub log_size_factor: Option<Tensor<B, 2>>,
    /// A minified dataset's posterior (means, variances) of the cells: the encoder's output.
    pub latent_posterior: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
}

impl<B: Backend> Batch<B> {
    pub fn from_host(h: &HostBatch, n_genes: usize, device: &B::Device) -> Self {
        let n = h.n;
        let mat = |v: &Vec<f32>, cols: usize| {
            Tensor::<B, 2>::from_data(TensorData::new(v.clone(), [n, cols]), device)
        };
        let nb = h.batch_onehot.len() / n.max(1);
        let nl = h.labels_onehot.len() / n.max(1);
        let u = h.continuous.len() / n.max(1);
        Self {
            x: mat(&h.x, n_genes),
            x_log: mat(&h.x_log, n_genes),
            log_library: mat(&h.log_library, 1),
            log_factorial: Tensor::from_data(TensorData::new(h.log_factorial.clone(), [n]), device),
            batch_onehot: mat(&h.batch_onehot, nb),
            labels_onehot: mat(&h.labels_onehot, nl),
            covariates: (h.covariate_width > 0).then(|| mat(&h.covariates, h.covariate_width)),
            continuous: (u > 0).then(|| mat(&h.continuous, u)),
            log_size_factor: h.size_factor.as_ref().map(|sf| {
                let logs: Vec<f32> = sf.iter().map(|v| v.ln()).collect();
                mat(&logs, 1)
            }),
            latent_posterior: h.latent_posterior.as_ref().map(|(m, v)| {
                let l = m.len() / n.max(1);
                (mat(m, l), mat(v, l))
            }),
        }
    }
}

/// A copy of a matrix's values on the host, row-major (to read them in place:
/// [`crate::backend::host_values`]).
pub(crate) fn host<B: Backend>(t: &Tensor<B, 2>) -> Vec<f32> {
    crate::backend::host_values(t).to_vec()
}

impl<B: Backend> Batch<B> {
    /// Rows `idx` of every field (a minibatch of a device-resident dataset).
    pub fn select(&self, idx: Tensor<B, 1, burn::tensor::Int>) -> Self {
        let rows = |t: &Tensor<B, 2>| t.clone().select(0, idx.clone());
        Self {
            x: rows(&self.x),
            x_log: rows(&self.x_log),
            log_library: rows(&self.log_library),
            log_factorial: self.log_factorial.clone().select(0, idx.clone()),
            batch_onehot: rows(&self.batch_onehot),
            labels_onehot: rows(&self.labels_onehot),
            covariates: self.covariates.as_ref().map(rows),
            continuous: self.continuous.as_ref().map(rows),
            log_size_factor: self.log_size_factor.as_ref().map(rows),
            latent_posterior: self
                .latent_posterior
                .as_ref()
                .map(|(m, v)| (rows(m), rows(v))),
        }
    }

    /// Concatenates batches along cells.
    pub fn cat(parts: Vec<Self>) -> Self {
        let cat2 =
            |f: &dyn Fn(&Self) -> Tensor<B, 2>| Tensor::cat(parts.iter().map(f).collect(), 0);
        let opt = |f: &dyn Fn(&Self) -> Option<Tensor<B, 2>>| {
            let v: Option<Vec<_>> = parts.iter().map(f).collect();
            v.map(|v| Tensor::cat(v, 0))
        };
        Self {
            x: cat2(&|b| b.x.clone()),
            x_log: cat2(&|b| b.x_log.clone()),
            log_library: cat2(&|b| b.log_library.clone()),
            log_factorial: Tensor::cat(parts.iter().map(|b| b.log_factorial.clone()).collect(), 0),
            batch_onehot: cat2(&|b| b.batch_onehot.clone()),
            labels_onehot: cat2(&|b| b.labels_onehot.clone()),
            covariates: opt(&|b| b.covariates.clone()),
            continuous: opt(&|b| b.continuous.clone()),
            log_size_factor: opt(&|b| b.log_size_factor.clone()),
            latent_posterior: opt(&|b| b.latent_posterior.as_ref().map(|p| p.0.clone()))
                .zip(opt(&|b| b.latent_posterior.as_ref().map(|p| p.1.clone()))),
        }
    }
}
