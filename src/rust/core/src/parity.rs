//! The parity vectors of scvi.md §12.1-12.4 and a backend-generic check of the tensor
//! likelihoods against them: unit tests run it on the CPU backend, `rscvi-cli gpu-check` on
//! CUDA.

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::dist;

/// (x, μ, θ, log p) — scvi.md §12.1.
pub const NB: [(f32, f32, f32, f64); 9] = [
    (0.0, 0.5, 2.0, -0.446_287_100_6),
    (0.0, 5.0, 0.1, -0.393_182_553_5),
    (3.0, 2.5, 1.5, -2.098_495_417),
    (10.0, 1.0, 0.5, -6.340_109_482),
    (1.0, 100.0, 10.0, -21.771_677_81),
    (7.0, 7.0, 1000.0, -1.907_278_694),
    (25.0, 3.0, 0.01, -7.926_632_082),
    (0.0, 1e-6, 1.0, -9.999_994_899e-07),
    (2.0, 0.0, 1.0, -36.841_361_51),
];

/// (x, μ, θ, π logit, log p) — scvi.md §12.2.
pub const ZINB: [(f32, f32, f32, f32, f64); 9] = [
    (0.0, 0.5, 2.0, -1.0, -0.305_413_125_8),
    (0.0, 5.0, 0.1, 0.0, -0.177_390_416_9),
    (0.0, 3.0, 2.0, 2.0, -0.105_505_475_5),
    (3.0, 2.5, 1.5, -1.0, -2.411_757_105),
    (3.0, 2.5, 1.5, 3.0, -5.147_082_769),
    (10.0, 1.0, 0.5, -5.0, -6.346_824_831),
    (1.0, 100.0, 10.0, 0.5, -22.745_754_79),
    (0.0, 20.0, 5.0, -20.0, -8.047_183_115),
    (2.0, 0.0, 1.0, 0.0, -37.534_508_69),
];

/// (x, λ, log p) — scvi.md §12.3.
pub const POISSON: [(f32, f32, f64); 5] = [
    (0.0, 0.5, -0.5),
    (3.0, 2.5, -1.542_887_274),
    (10.0, 1.0, -16.104_412_57),
    (0.0, 0.001, -0.001),
    (50.0, 40.0, -4.033_794_246),
];

/// Tolerance of one f32 value: scvi.md §12 allows ~1e-3 where θ ≥ 100 (lgamma cancellation).
pub fn tolerance(theta: f32, want: f64) -> f64 {
    if theta >= 100.0 {
        1e-3
    } else {
        2e-6 + 2e-6 * want.abs()
    }
}

/// One checked value.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub got: f64,
    pub want: f64,
    pub ok: bool,
}

fn row<B: Backend>(v: Vec<f32>, device: &B::Device) -> Tensor<B, 2> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [1, n]), device)
}

fn values<B: Backend>(t: Tensor<B, 2>) -> Vec<f64> {
    let v: Vec<f32> = t.into_data().convert::<f32>().to_vec().unwrap_or_default();
    v.into_iter().map(f64::from).collect()
}

/// Evaluates the tensor likelihoods and Gaussian pieces on `B` against the vectors.
pub fn check_tensor_likelihoods<B: Backend>(device: &B::Device) -> Vec<Check> {
    let mut out = Vec::new();
    let mut push = |name: String, got: f64, want: f64, tol: f64| {
        out.push(Check {
            ok: (got - want).abs() <= tol,
            name,
            got,
            want,
        });
    };
    let col = |f: &dyn Fn(usize) -> f32, n: usize| row::<B>((0..n).map(f).collect(), device);
    let x = col(&|i| NB[i].0, NB.len());
    let lp = dist::nb_log_prob_unnormalized(x.clone(), col(&|i| NB[i].1, 9), col(&|i| NB[i].2, 9))
        - dist::log_factorial_tensor(x);
    for (i, got) in values(lp).into_iter().enumerate() {
        push(
            format!("nb[{i}]"),
            got,
            NB[i].3,
            tolerance(NB[i].2, NB[i].3),
        );
    }
    let x = col(&|i| ZINB[i].0, 9);
    let lp = dist::zinb_log_prob_unnormalized(
        x.clone(),
        col(&|i| ZINB[i].1, 9),
        col(&|i| ZINB[i].2, 9),
        col(&|i| ZINB[i].3, 9),
    ) - dist::log_factorial_tensor(x);
    for (i, got) in values(lp).into_iter().enumerate() {
        push(
            format!("zinb[{i}]"),
            got,
            ZINB[i].4,
            tolerance(ZINB[i].2, ZINB[i].4),
        );
    }
    let x = col(&|i| POISSON[i].0, 5);
    let lp = dist::poisson_log_prob_unnormalized(x.clone(), col(&|i| POISSON[i].1, 5))
        - dist::log_factorial_tensor(x);
    for (i, got) in values(lp).into_iter().enumerate() {
        push(
            format!("poisson[{i}]"),
            got,
            POISSON[i].2,
            tolerance(1.0, POISSON[i].2),
        );
    }
    let kl = values(dist::kl_standard_normal(
        row::<B>(vec![0.5, -1.0, 0.0], device),
        row::<B>(vec![0.25, 2.0, 1.0], device),
    ));
    push("kl_z".into(), kl.iter().sum(), 1.096_573_590, 1e-6);
    let kl_l = values(dist::kl_normal(
        row::<B>(vec![8.0], device),
        row::<B>(vec![0.04], device),
        row::<B>(vec![7.5], device),
        row::<B>(vec![0.36], device),
    ));
    push("kl_library".into(), kl_l[0], 1.001_390_066, 1e-6);
    let lpn = values(dist::normal_log_prob(
        row::<B>(vec![0.3], device),
        row::<B>(vec![0.5], device),
        row::<B>(vec![0.25], device),
    ));
    push("normal_log_prob".into(), lpn[0], -0.305_791_352_6, 1e-6);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn tensor_likelihoods_match_parity_vectors_on_cpu() {
        let failed: Vec<_> =
            super::check_tensor_likelihoods::<burn::backend::Flex>(&Default::default())
                .into_iter()
                .filter(|c| !c.ok)
                .collect();
        assert!(failed.is_empty(), "{failed:?}");
    }
}
