//! SPLICEVI against its spec: parity vectors (§12 P9, P11, P13), structural checks (P14) and a
//! training run on seeded synthetic data with two cell types.

use super::*;
use crate::backend::DeviceKind;
use crate::backend::{Cpu, CpuTrain};
use crate::data::{Categorical, CsrMatrix};
use crate::family::{FamilyModule, ModelKind};
use crate::models::splicevi::queries::{normalized_splicing, SplicingQuery};
use crate::train::{Silent, TrainConfig};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend as _;
use rand::{RngExt, SeedableRng};

type B = Cpu;

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

fn close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            ((*g as f64) - w).abs() <= tol * w.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
}

/// Two cell types over G genes and 20 three-junction ATSEs, two batches: type 0 prefers the
/// first junction of each ATSE and the first half of the genes, type 1 the last.
pub(crate) fn synthetic(n: usize, seed: u64) -> (DataSet, SpliceviConfig, Vec<usize>) {
    let (g, a) = (40usize, 20usize);
    let atse: Vec<u32> = (0..3 * a).map(|j| (j / 3) as u32).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut indptr, mut indices, mut vals) = (vec![0usize], vec![], vec![]);
    let mut types = vec![];
    for i in 0..n {
        let ty = i % 2;
        types.push(ty);
        for gene in 0..g {
            let rate: f64 = if (gene < g / 2) == (ty == 0) {
                4.0
            } else {
                0.5
            };
            let mut k = 0u32;
            let mut p = (-rate).exp();
            let mut cdf = p;
            let u: f64 = rng.random();
            while u > cdf && k < 50 {
                k += 1;
                p *= rate / k as f64;
                cdf += p;
            }
            if k > 0 {
                indices.push(gene as u32);
                vals.push(k as f32);
            }
        }
        for e in 0..a {
            if rng.random::<f64>() < 0.4 {
                continue;
            }
            let total: u32 = rng.random_range(1..12);
            let pref = if ty == 0 { 0 } else { 2 };
            let mut counts = [0u32; 3];
            for _ in 0..total {
                let j = if rng.random::<f64>() < 0.8 {
                    pref
                } else {
                    rng.random_range(0..3)
                };
                counts[j] += 1;
            }
            for (k, &cnt) in counts.iter().enumerate() {
                if cnt > 0 {
                    indices.push((g + 3 * e + k) as u32);
                    vals.push(cnt as f32);
                }
            }
        }
        indptr.push(indices.len());
    }
    let counts = CsrMatrix::new(n, g + 3 * a, indptr, indices, vals).unwrap();
    let batch = Categorical {
        codes: (0..n).map(|i| ((i / 2) % 2) as u32).collect(),
        n_categories: 2,
    };
    let data = DataSet::with_batches(counts, batch).unwrap();
    let mut config = SpliceviConfig::new(g, atse, 2);
    config.n_hidden = 16;
    config.n_latent = 3;
    (data, config, types)
}

#[test]
fn size_defaults_follow_the_reference_rule() {
    for (j, g, h, z) in [
        (100, 10, 10, 3),
        (1000, 10, 31, 5),
        (10_000, 10, 100, 10),
        (16_384, 10, 128, 11),
        (0, 2000, 44, 6),
    ] {
        assert_eq!(default_n_hidden(g, j), h);
        assert_eq!(default_n_latent(h), z);
    }
}

#[test]
fn mixing_matches_p9() {
    let dev = Default::default();
    let m = |v: [f32; 2]| Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [1, 2]), &dev);
    let (me, ve, ms, vs) = (m([0.2, -1.0]), m([0.5, 2.0]), m([1.0, 0.0]), m([0.7, 0.7]));
    let w = Tensor::<B, 2>::from_data(TensorData::new(vec![0.5f32, 0.5], [1, 2]), &dev);
    let (mean, var) = mix(&w, &[me.clone(), ms.clone()], &[ve.clone(), vs.clone()]);
    close(&values(mean), &[0.6, -0.5], 1e-5);
    close(&values(var), &[0.848_528_137_4, 1.909_188_309_2], 1e-5);
    let rho = Tensor::<B, 1>::from_data(TensorData::new(vec![0.0f32, 2.0], [2]), &dev);
    let ws = per_dimension_weights(rho);
    close(
        &values(ws.clone()),
        &[0.309_601_461_0, 0.690_398_539_0],
        1e-5,
    );
    // P14.9: the weights average 0.5 before clamping
    close(&[values(ws.clone().mean())[0]], &[0.5], 1e-6);
    let (mean, var) = mix_per_dimension(ws, [me, ms], [ve, vs]);
    close(&values(mean), &[0.447_681_168_8, -0.309_601_461_0], 1e-5);
    close(&values(var), &[0.558_332_729_8, 1.031_182_255_7], 1e-5);
}

/// The P13 module: J = 3 junctions (0 and 1 in one ATSE, 2 alone), D = 3, H_h = 4, H_e = 3,
/// Z = 2, weights of the spec.
fn p13(pool_mode: PoolMode, max_nobs: i64) -> (SpliceVae<B>, SpliceviConfig) {
    let dev = Default::default();
    let mut c = SpliceviConfig::new(1, vec![0, 0, 1], 1);
    c.code_dim = 3;
    c.h_hidden_dim = 4;
    c.encoder_hidden_dim = 3;
    c.n_latent = 2;
    c.n_hidden = 4;
    c.pool_mode = pool_mode;
    c.max_nobs = max_nobs;
    let mut m = SpliceVae::<B>::new(c.clone(), &dev).unwrap();
    let mat = |v: &[f32], r: usize, k: usize| {
        crate::nn::trainable(Tensor::<B, 2>::from_data(
            TensorData::new(v.to_vec(), [r, k]),
            &dev,
        ))
    };
    let vec1 = |v: &[f32]| {
        crate::nn::trainable(Tensor::<B, 1>::from_data(
            TensorData::new(v.to_vec(), [v.len()]),
            &dev,
        ))
    };
    let p = m.z_encoder_splicing_partial.as_mut().unwrap();
    p.feature_embedding = mat(&[3., 4., 0., 1., 0., 0., 0., -2., 1.], 3, 3);
    p.h_layer1.weight = mat(
        &[
            0.5, -0.2, 0.1, 0.3, 0.3, 0.8, -0.5, 0., -0.4, 0.2, 0.9, 0.1, 0.2, -0.6, 0.3, 0.5,
        ],
        4,
        4,
    );
    p.h_layer1.bias = Some(vec1(&[0.1, 0., -0.1, 0.2]));
    p.h_layer2.weight = mat(
        &[
            0.7, -0.3, 0.1, 0.2, 0.5, -0.4, -0.6, 0.4, 0.3, 0.1, 0.1, 0.8,
        ],
        4,
        3,
    );
    p.h_layer2.bias = Some(vec1(&[0., 0.05, -0.05]));
    p.encoder_mlp.layers[0].linear.weight =
        mat(&[1., -0.5, 0.2, 0.3, 0.4, -0.7, -0.2, 0.6, 0.5], 3, 3);
    p.encoder_mlp.layers[0].linear.bias = Some(vec1(&[0., 0.1, 0.]));
    p.encoder_mlp.layers[1].linear.weight = mat(
        &[
            0.6, -0.2, 0.3, 0.1, 0.5, 0.9, 0.4, -0.2, 0.4, 0.3, 0.7, -0.5,
        ],
        3,
        4,
    );
    p.encoder_mlp.layers[1].linear.bias = Some(vec1(&[0.05, -0.05, 0., 0.1]));
    (m, c)
}

/// One cell: gene count 1, junction 0 read 3 times, junction 1 observed with 0 reads (same
/// ATSE, r = (0.75, 0)), junction 2 unobserved.
fn p13_cell() -> DataSet {
    let counts = CsrMatrix::new(1, 4, vec![0, 2], vec![0, 1], vec![1.0, 3.0]).unwrap();
    DataSet::with_batches(counts, Categorical::constant(1)).unwrap()
}

#[test]
fn partial_encoder_matches_p13() {
    let dev = Default::default();
    let data = p13_cell();
    for (mode, want_mean, want_var) in [
        (
            PoolMode::Mean,
            [0.413_834_718_4, 0.878_743_973_9],
            [0.917_520_662_2, 0.693_148_180_6],
        ),
        (
            PoolMode::Sum,
            [0.419_378_546_5, 0.838_300_914_5],
            [0.943_608_412_2, 0.693_148_180_6],
        ),
    ] {
        for max_nobs in [-1, 1] {
            let (m, c) = p13(mode, max_nobs);
            let b = SpliceviBatch::<B>::new(&c, &data, &[0], None, &dev);
            let q = m
                .z_encoder_splicing_partial
                .as_ref()
                .unwrap()
                .forward(&b, None, &c, false);
            // f32 layer norms of 3-4 wide vectors: a few 1e-5 relative
            close(&values(q.mean), &want_mean, 5e-5);
            close(&values(q.var), &want_var, 5e-5);
        }
    }
}

#[test]
fn a_cell_without_expression_has_no_expression_loss_or_penalty() {
    let dev = Default::default();
    let (data, config, _) = synthetic(8, 3);
    let m = SpliceVae::<B>::new(config.clone(), &dev).unwrap();
    // Cell 0 with its expression removed.
    let (idx, val) = data.counts.row(0);
    let keep: Vec<(u32, f32)> = idx
        .iter()
        .zip(val)
        .filter(|(&j, _)| j as usize >= config.n_genes)
        .map(|(&j, &v)| (j, v))
        .collect();
    let counts = CsrMatrix::new(
        1,
        config.n_features(),
        vec![0, keep.len()],
        keep.iter().map(|k| k.0).collect::<Vec<u32>>(),
        keep.iter().map(|k| k.1).collect(),
    )
    .unwrap();
    let one = DataSet::with_batches(
        counts,
        Categorical {
            codes: vec![0],
            n_categories: 2,
        },
    )
    .unwrap();
    let b = SpliceviBatch::<B>::new(&config, &one, &[0], None, &dev);
    let l = m.loss(&b, 1.0, false);
    assert_eq!(values(l.reconstruction_expression), vec![0.0]);
    assert_eq!(values(l.penalty), vec![0.0]);
    // P14.8: the penalty is a sum over the minibatch
    let all: Vec<usize> = (0..8).collect();
    let twice: Vec<usize> = all.iter().chain(&all).copied().collect();
    let p1 = values(
        m.loss(
            &SpliceviBatch::<B>::new(&config, &data, &all, None, &dev),
            1.0,
            false,
        )
        .penalty,
    )[0];
    let p2 = values(
        m.loss(
            &SpliceviBatch::<B>::new(&config, &data, &twice, None, &dev),
            1.0,
            false,
        )
        .penalty,
    )[0];
    assert!((p2 - 2.0 * p1).abs() < 1e-3 * p1.abs(), "{p1} {p2}");
}

#[test]
fn a_closed_gate_keeps_the_splicing_half_out_of_the_expression_decoder() {
    let _guard = crate::TEST_RNG_LOCK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dev = Default::default();
    let (data, mut config, _) = synthetic(16, 4);
    config.modality_weights = SpliceModalityWeights::Concatenate;
    let m = <SpliceVae<CpuTrain> as AutodiffModule<CpuTrain>>::from_inner(
        SpliceVae::<Cpu>::new(config.clone(), &dev).unwrap(),
    );
    let m = burn::module::Module::map(m, &mut crate::nn::Retrainable);
    let cells: Vec<usize> = (0..16).collect();
    let b = SpliceviBatch::<CpuTrain>::new(&config, &data, &cells, None, &dev);
    let weight = |m: &SpliceVae<CpuTrain>| {
        m.z_decoder_expression.factor_regressor.layers[0]
            .linear
            .weight
            .clone()
    };
    for (kl_weight, zero) in [(0.5, true), (1.0, false)] {
        let l = m.loss(&b, kl_weight, true);
        let grads = l.reconstruction_expression.sum().backward();
        let g = weight(&m).grad(&grads).unwrap();
        let z = config.n_latent;
        let rows = values(g.slice([z..2 * z, 0..config.n_genes]).abs().sum());
        assert_eq!(rows[0] == 0.0, zero, "kl weight {kl_weight}: {rows:?}");
    }
}

#[test]
fn trains_separates_the_types_and_round_trips_through_disk() {
    let _guard = crate::TEST_RNG_LOCK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (data, config, types) = synthetic(240, 1);
    let mut m = SpliceviModel::new(config.clone(), &data, serde_json::json!({"k": 1})).unwrap();
    let tc = TrainConfig {
        max_epochs: Some(40),
        seed: Some(0),
        batch_size: 64,
        optimizer: crate::train::OptimizerKind::AdamW,
        lr: 1e-2,
        weight_decay: 1e-3,
        eps: 1e-8,
        n_epochs_kl_warmup: Some(10),
        gradient_clipping_max_norm: Some(5.0),
        ..Default::default()
    };
    m.train(&[&data], &tc, DeviceKind::Cpu, &mut Silent)
        .unwrap();
    let h = &m.state.history;
    let rec: Vec<f64> = h.iter().map(|e| e.reconstruction_loss_train).collect();
    assert!(rec.iter().all(|v| v.is_finite()));
    assert!(rec[rec.len() - 1] < 0.9 * rec[0], "{rec:?}");
    let cells: Vec<usize> = (0..data.n_cells()).collect();
    let dev = Default::default();
    let (z, _, _) = crate::infer::latent(&m.module, 0, &data, &cells, true, 1, 128, &dev).unwrap();
    let labels: Vec<u32> = types.iter().map(|&t| t as u32).collect();
    let purity = crate::metrics::knn_purity(&z.values, z.n_cols, &labels, 10).unwrap();
    assert!(purity > 0.9, "purity {purity}");
    // The decoder's p sums to 1 within each ATSE under the Dirichlet-multinomial.
    let q = SplicingQuery {
        cells: &cells[..10],
        transform_batch: vec![],
        junctions: None,
        use_z_mean: true,
        n_samples: 1,
        return_mean: true,
        posterior_mean: false,
        batch_size: 128,
    };
    let p = normalized_splicing(&m.module, &data, &q, &dev).unwrap();
    for row in p.values.chunks(config.n_junctions) {
        for atse in row.chunks(3) {
            assert!((atse.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{atse:?}");
        }
    }
    let dir = std::env::temp_dir().join(format!("rscvi-splicevi-{}", std::process::id()));
    m.save(&dir, true).unwrap();
    let back = SpliceviModel::load(&dir).unwrap();
    let (z2, _, _) =
        crate::infer::latent(&back.module, 0, &data, &cells, true, 1, 128, &dev).unwrap();
    assert_eq!(z.values, z2.values);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gradient_clipping_bounds_the_global_norm() {
    let _guard = crate::TEST_RNG_LOCK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dev = Default::default();
    CpuTrain::seed(&dev, 1);
    let (data, config, _) = synthetic(32, 5);
    let m = <SpliceVae<CpuTrain> as AutodiffModule<CpuTrain>>::from_inner(
        SpliceVae::<Cpu>::new(config.clone(), &dev).unwrap(),
    );
    let m = burn::module::Module::map(m, &mut crate::nn::Retrainable);
    let cells: Vec<usize> = (0..32).collect();
    let b = SpliceviBatch::<CpuTrain>::new(&config, &data, &cells, None, &dev);
    let l = m.step_loss(&[b], 1.0, true);
    let raw = l.objective.backward();
    let mut grads = burn::optim::GradientsParams::from_grads(raw, &m);
    crate::train::grad::clip_global_norm(&m, &mut grads, 0.5);
    struct Norm<'a>(&'a burn::optim::GradientsParams, f64);
    impl burn::module::ModuleVisitor<CpuTrain> for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<CpuTrain, D>>) {
            if let Some(g) = self.0.get::<Cpu, D>(p.id) {
                self.1 += values(g.powf_scalar(2.0).sum())[0] as f64;
            }
        }
    }
    let mut n = Norm(&grads, 0.0);
    burn::module::Module::visit(&m, &mut n);
    assert!((n.1.sqrt() - 0.5).abs() < 1e-3, "norm {}", n.1.sqrt());
    assert!(SpliceviKind::plan(&config, &[], &TrainConfig::default())
        .unwrap()
        .adversary
        .is_some());
}

#[test]
fn early_stopping_ignores_the_warm_up_checks() {
    let _guard = crate::TEST_RNG_LOCK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (data, config, _) = synthetic(40, 6);
    // min_delta so large that only the first counted check improves.
    for (warmup, epochs) in [(0, 2), (4, 6)] {
        let mut m = SpliceviModel::new(config.clone(), &data, serde_json::json!({})).unwrap();
        let tc = TrainConfig {
            max_epochs: Some(10),
            seed: Some(0),
            batch_size: 16,
            early_stopping: true,
            early_stopping_monitor: "reconstruction_loss_validation".into(),
            early_stopping_patience: 1,
            early_stopping_min_delta: 1e9,
            early_stopping_warmup_epochs: warmup,
            ..Default::default()
        };
        let s = m
            .train(&[&data], &tc, DeviceKind::Cpu, &mut Silent)
            .unwrap();
        assert_eq!((s.epochs_run, s.early_stopped), (epochs, true));
    }
}

#[test]
fn decoder_biases_start_at_the_mean_observed_psi() {
    // Junctions 0-1 form one ATSE, 2 its own; cells observe PSI (0.75, 0.25) and (0.25, 0.75)
    // of the first, junction 2 never.
    let mut c = SpliceviConfig::new(1, vec![0, 0, 1], 1);
    let (indices, values) = (vec![0, 1, 0, 1], vec![0.75, 0.25, 0.25, 0.75]);
    let dm = super::model::decoder_bias_from_psi(&c, &indices, &values);
    close(&dm, &[0.5f64.ln(), 0.5f64.ln(), 0.0], 1e-6);
    c.splicing_loss_type = SplicingLoss::Binomial;
    let values = vec![0.9, 0.1, 0.9, 0.1];
    let bin = super::model::decoder_bias_from_psi(&c, &indices, &values);
    close(&bin, &[9f64.ln(), -(9f64.ln()), 0.0], 1e-5);
}

#[test]
fn differential_splicing_matches_p12_and_the_penalty_p8() {
    use crate::models::splicevi::queries::splicing_change;
    let psi1 = [
        0.10f32, 0.50, 0.30, 0.15, 0.55, 0.32, 0.12, 0.40, 0.31, 0.20, 0.45, 0.29,
    ];
    let psi2 = [
        0.40f32, 0.52, 0.10, 0.35, 0.60, 0.12, 0.05, 0.41, 0.33, 0.45, 0.47, 0.13,
    ];
    let s = splicing_change(&psi1, &psi2, 3, 0.1, true, 0.05);
    close(
        &s.proba.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        &[0.75, 0.0, 0.75],
        1e-6,
    );
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    close(&f(&s.scale1), &[0.1425, 0.475, 0.305], 1e-6);
    close(&f(&s.scale2), &[0.3125, 0.5, 0.17], 1e-6);
    let bayes: Vec<f32> = s
        .proba
        .iter()
        .map(|&p| ((p + 1e-8).ln() - (1.0 - p + 1e-8).ln()) as f32)
        .collect();
    close(
        &bayes,
        &[1.098_612_262, -18.420_680_754, 1.098_612_262],
        1e-6,
    );
    // P8: the penalty as implemented (the variances passed through a square root twice).
    let dev = Default::default();
    let t = |v: f32| Tensor::<B, 2>::from_data(TensorData::new(vec![v], [1, 1]), &dev);
    for ((me, ve, ms, vs), want) in [
        ((0.0, 1.0, 1.0, 1.0), 1.0),
        ((0.5, 0.25, 1.2, 0.9), 0.960_459_112_0),
        ((-1.0, 2.0, 0.3, 0.7), 1.748_431_648_9),
    ] {
        close(&values(jeffreys(t(me), t(ve), t(ms), t(vs))), &[want], 1e-5);
    }
}
