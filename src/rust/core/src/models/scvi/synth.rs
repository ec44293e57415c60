//! Synthetic count data drawn from a fitted SCVI model, for benchmarks at sizes no shipped
//! dataset has (realistic sparsity and mean-variance structure): z ~ N(0, I), a uniform
//! batch, a log library from that batch's prior, then a draw from p(x | z, ℓ).

use rand::{RngExt, SeedableRng};
use rayon::prelude::*;

use crate::backend::Cpu;
use crate::data::batch::Batch;
use crate::data::{covariate_width, CsrMatrix, HostBatch};
use crate::dist::sample::{gamma, normal, poisson};
use crate::error::Result;
use crate::models::options::GeneLikelihood;
use crate::models::scvi::ScviModel;

/// One chunk of synthetic cells: (per-cell (gene, count) rows, batch codes).
type Chunk = (Vec<Vec<(u32, f32)>>, Vec<u32>);

/// `n` synthetic cells drawn with `rng`.
fn sample_chunk(model: &ScviModel, n: usize, rng: &mut rand::rngs::StdRng) -> Chunk {
    let c = model.config();
    let (g, nb, l) = (c.n_input, c.n_batch, c.n_latent);
    let means: Vec<f32> = model
        .module
        .library_log_means
        .value_sync()
        .into_data()
        .to_vec()
        .unwrap_or_default();
    let vars: Vec<f32> = model
        .module
        .library_log_vars
        .value_sync()
        .into_data()
        .to_vec()
        .unwrap_or_default();
    let width = covariate_width(nb, &c.n_cats_per_cov);
    let device = Default::default();
    let codes: Vec<u32> = (0..n).map(|_| rng.random_range(0..nb as u32)).collect();
    let mut onehot = vec![0f32; n * nb];
    let mut covs = vec![0f32; n * width];
    let mut lib = vec![0f32; n];
    for (r, &b) in codes.iter().enumerate() {
        onehot[r * nb + b as usize] = 1.0;
        if nb > 1 {
            covs[r * width + b as usize] = 1.0; // extra categorical covariates stay at code 0
        }
        lib[r] = means[b as usize] + vars[b as usize].sqrt() * normal(rng) as f32;
    }
    let z: Vec<f32> = (0..n * l).map(|_| normal(rng) as f32).collect();
    let host = HostBatch {
        n,
        x: vec![0.0; n * g],
        x_log: vec![0.0; n * g],
        log_library: lib.clone(),
        log_factorial: vec![0.0; n],
        batch_onehot: onehot,
        // every synthetic cell gets label code 0
        labels_onehot: (0..n * c.n_labels)
            .map(|i| (i % c.n_labels == 0) as u8 as f32)
            .collect(),
        covariates: covs,
        covariate_width: width,
        continuous: vec![0.0; n * c.n_continuous_cov],
        size_factor: c
            .use_size_factor
            .then(|| lib.iter().map(|v| v.exp()).collect()),
        latent_posterior: None,
    };
    let b = Batch::<Cpu>::from_host(&host, g, &device);
    let zt = burn::tensor::Tensor::<Cpu, 2>::from_data(
        burn::tensor::TensorData::new(z, [n, l]),
        &device,
    );
    let m = &model.module;
    let gen = m.generative(&b, m.transform_latent(zt), b.log_library.clone(), false);
    let host_vec = |t: burn::tensor::Tensor<Cpu, 2>| -> Vec<f32> {
        t.into_data().to_vec().unwrap_or_default()
    };
    let rate = host_vec(gen.rate);
    let theta_per_gene = gen.theta.dims()[0] == 1;
    let theta = host_vec(gen.theta);
    let pi = gen.dropout_logits.map(host_vec);
    let rows = (0..n)
        .map(|r| {
            let mut row = Vec::new();
            for j in 0..g {
                let mu = rate[r * g + j] as f64;
                let th = theta[if theta_per_gene { j } else { r * g + j }] as f64;
                let w = match c.gene_likelihood {
                    GeneLikelihood::Poisson => mu,
                    _ => (gamma(rng, th) * mu / th).min(1e8),
                };
                let mut count = poisson(rng, w);
                if let Some(pi) = &pi {
                    let p_zero = 1.0 / (1.0 + (-(pi[r * g + j] as f64)).exp());
                    if rng.random::<f64>() < p_zero {
                        count = 0.0;
                    }
                }
                if count > 0.0 {
                    row.push((j as u32, count as f32));
                }
            }
            row
        })
        .collect();
    (rows, codes)
}

/// `n_cells` synthetic cells: (counts, batch codes). Chunks are drawn in parallel, each with
/// its own stream derived from `seed`, so the result does not depend on the thread count.
pub fn sample(model: &ScviModel, n_cells: usize, seed: u64) -> Result<(CsrMatrix, Vec<u32>)> {
    const CHUNK: usize = 2048;
    let n_chunks = n_cells.div_ceil(CHUNK);
    let chunks: Vec<Chunk> = (0..n_chunks)
        .into_par_iter()
        .map(|k| {
            let n = CHUNK.min(n_cells - k * CHUNK);
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(k as u64),
            );
            sample_chunk(model, n, &mut rng)
        })
        .collect();
    let (mut indptr, mut indices, mut values) = (vec![0usize], Vec::new(), Vec::new());
    let mut batches = Vec::with_capacity(n_cells);
    for (rows, codes) in chunks {
        for row in rows {
            indices.extend(row.iter().map(|e| e.0));
            values.extend(row.iter().map(|e| e.1));
            indptr.push(values.len());
        }
        batches.extend(codes);
    }
    CsrMatrix::new(n_cells, model.config().n_input, indptr, indices, values).map(|m| (m, batches))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_have_the_right_means() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let n = 20_000;
        for shape in [0.3, 2.5] {
            let m: f64 = (0..n).map(|_| gamma(&mut rng, shape)).sum::<f64>() / n as f64;
            assert!(
                (m - shape).abs() < 0.05 * shape.max(1.0),
                "gamma({shape}) mean {m}"
            );
        }
        for lambda in [0.7, 30.0] {
            let m: f64 = (0..n).map(|_| poisson(&mut rng, lambda)).sum::<f64>() / n as f64;
            assert!(
                (m - lambda).abs() < 0.05 * lambda.max(1.0),
                "poisson({lambda}) mean {m}"
            );
        }
    }
}
