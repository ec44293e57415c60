//! GIMVI in the family: its minibatches (one per dataset, each with its own encoder head),
//! the step's objective (gimvi.md §6.2: both datasets' loss sums over their cells), the
//! dataset classifier's classes and its fresh encoder pass (G8), and the model handle.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::backend::Cpu;
use crate::data::DataSet;
use crate::error::{invalid_arg, Result};
use crate::family::{
    Adversary, FamilyModule, LatentPosterior, Model, ModelKind, NoExtra, StepLoss, Terms, TrainPlan,
};
use crate::models::gimvi::{
    check_data, check_data_one, library_priors, GimviBatch, GimviConfig, Jvae,
};
use crate::train::TrainConfig;

/// Default number of epochs of `GIMVI.train`.
pub const DEFAULT_MAX_EPOCHS: usize = 200;
/// Default weight of the adversarial terms (`kappa`).
pub const DEFAULT_KAPPA: f64 = 5.0;

/// The GIMVI model kind.
pub struct GimviKind;

pub type GimviModel = Model<GimviKind>;

impl<B: Backend> FamilyModule<B> for Jvae<B> {
    type Config = GimviConfig;
    type Batch = GimviBatch<B>;

    fn config(&self) -> &GimviConfig {
        &self.config
    }

    fn minibatch(
        config: &GimviConfig,
        dataset: usize,
        data: &DataSet,
        cells: &[usize],
        device: &B::Device,
    ) -> GimviBatch<B> {
        GimviBatch::new(config, dataset, data, cells, device)
    }

    fn check_query_data(config: &GimviConfig, dataset: usize, data: &DataSet) -> Result<()> {
        check_data_one(config, dataset, data)
    }

    fn n_latent(&self) -> usize {
        self.config.n_latent
    }

    fn n_datasets(&self) -> usize {
        2
    }

    fn latent_posterior(&self, batch: &GimviBatch<B>) -> LatentPosterior<B> {
        let inf = self.inference(batch, false, false);
        LatentPosterior {
            mean: inf.qz_mean,
            var: inf.qz_var,
            z: inf.z,
        }
    }

    fn step_loss(&self, batches: &[GimviBatch<B>], kl_weight: f64, training: bool) -> StepLoss<B> {
        let losses: Vec<_> = batches
            .iter()
            .map(|b| self.loss(b, kl_weight, training))
            .collect();
        let n_total: usize = batches.iter().map(|b| b.n_cells()).sum();
        let loss_sum = Tensor::cat(losses.iter().map(|t| t.loss_sum.clone()).collect(), 0).sum();
        let z = Tensor::cat(losses.iter().map(|t| t.z.clone()).collect(), 0);
        let terms = losses
            .into_iter()
            .zip(batches)
            .map(|(t, b)| Terms {
                loss_mean: t.loss_sum / b.n_cells() as f64,
                reconstruction: t.reconstruction,
                reconstruction_by_modality: Vec::new(),
                kl_local: t.kl_local,
                n_cells: b.n_cells(),
            })
            .collect();
        StepLoss {
            objective: loss_sum / n_total as f64,
            terms,
            z: Some(z),
            sparse_inputs: Vec::new(),
        }
    }

    /// The dataset each cell comes from.
    fn adversarial_classes(&self, batches: &[GimviBatch<B>]) -> Vec<usize> {
        batches
            .iter()
            .flat_map(|b| std::iter::repeat_n(b.dataset, b.n_cells()))
            .collect()
    }

    /// G8: the classifier sees a fresh encoder pass of the updated module.
    fn classifier_latent(&self, batches: &[GimviBatch<B>]) -> Option<Tensor<B, 2>> {
        let z = batches
            .iter()
            .map(|b| self.inference(b, true, false).z.detach())
            .collect();
        Some(Tensor::cat(z, 0))
    }
}

impl ModelKind for GimviKind {
    const NAME: &'static str = "GIMVI";
    type Config = GimviConfig;
    type Module<B: Backend> = Jvae<B>;
    type Extra = NoExtra;

    fn blank<B: Backend>(c: &GimviConfig, device: &B::Device) -> Result<Jvae<B>> {
        let prior = |k: usize| (vec![0.0; k], vec![1.0; k]);
        Jvae::new(
            c.clone(),
            [prior(c.n_batch[0]), prior(c.n_batch[1])],
            device,
        )
    }

    fn check_data(config: &GimviConfig, data: &[&DataSet]) -> Result<()> {
        match data {
            [seq, spatial] => check_data(config, [seq, spatial]),
            _ => Err(invalid_arg(
                "x",
                "GIMVI trains on two datasets (seq, spatial)",
            )),
        }
    }

    fn plan(config: &GimviConfig, _data: &[&DataSet], cfg: &TrainConfig) -> Result<TrainPlan> {
        Ok(TrainPlan {
            default_max_epochs: DEFAULT_MAX_EPOCHS,
            adversary: Some(Adversary {
                n_latent: config.n_latent,
                n_classes: 2,
                n_layers: 3,
                scale: cfg.kappa.unwrap_or(DEFAULT_KAPPA),
                optimizer: None,
            }),
        })
    }
}

impl Model<GimviKind> {
    pub fn new(
        config: GimviConfig,
        data: [&DataSet; 2],
        registry: serde_json::Value,
    ) -> Result<Self> {
        check_data(&config, data)?;
        let module = Jvae::<Cpu>::new(config, library_priors(data), &Default::default())?;
        Ok(Self::from_module(module, registry, NoExtra {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DeviceKind;
    use crate::data::DataSet;
    use crate::data::{Categorical, CsrMatrix};
    use crate::models::gimvi::{imputed_values, SEQ, SPATIAL};
    use crate::train::{Silent, TrainConfig};

    /// Two cell types with distinct profiles over 12 genes; the spatial side measures genes
    /// 0..8 (in another order) with its own capture efficiency.
    fn pair() -> (DataSet, DataSet, Vec<usize>) {
        let profile = |t: usize, g: usize| -> f32 {
            let hi = g.is_multiple_of(2) == (t == 0);
            if hi {
                8.0
            } else {
                1.0
            }
        };
        let make = |n: usize, genes: &[usize], scale: f32| {
            let mut indptr = vec![0];
            let (mut idx, mut val) = (vec![], vec![]);
            for c in 0..n {
                for (j, &g) in genes.iter().enumerate() {
                    let v =
                        (profile(c % 2, g) * scale * (1.0 + ((c * 7 + g * 3) % 5) as f32 / 5.0))
                            .round();
                    if v > 0.0 {
                        idx.push(j as u32);
                        val.push(v);
                    }
                }
                indptr.push(val.len());
            }
            let counts = CsrMatrix::new(n, genes.len(), indptr, idx, val).unwrap();
            DataSet::with_batches(counts, Categorical::constant(n)).unwrap()
        };
        let seq_genes: Vec<usize> = (0..12).collect();
        let spatial_genes = vec![7, 1, 4, 0, 3, 6, 2, 5];
        (
            make(60, &seq_genes, 1.0),
            make(40, &spatial_genes, 2.0),
            spatial_genes,
        )
    }

    /// Posterior means of `cells` of the sequencing data.
    fn latent(module: &Jvae<Cpu>, seq: &DataSet, cells: &[usize]) -> Vec<f32> {
        let dev = Default::default();
        let (z, _, _) = crate::infer::latent(module, SEQ, seq, cells, true, 1, 128, &dev).unwrap();
        z.values
    }

    #[test]
    fn training_fits_both_datasets_and_round_trips_through_disk() {
        let _guard = crate::TEST_RNG_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (seq, spatial, map) = pair();
        let cfg = GimviConfig::new(12, map, [1, 1]);
        let mut m = GimviModel::new(cfg, [&seq, &spatial], serde_json::json!({"k": 1})).unwrap();
        let tc = TrainConfig {
            max_epochs: Some(60),
            seed: Some(0),
            batch_size: 16,
            check_val_every_n_epoch: 0,
            kappa: Some(5.0),
            ..Default::default()
        };
        let s = m
            .train(&[&seq, &spatial], &tc, DeviceKind::Cpu, &mut Silent)
            .unwrap();
        assert_eq!(s.epochs_run, 60);
        let h = &m.state.history;
        assert!(h.last().unwrap().reconstruction_loss_train < 0.8 * h[0].reconstruction_loss_train);
        // β follows epoch / 400 (G1).
        assert!((h[59].kl_weight - 59.0 / 400.0).abs() < 1e-12);
        // 90% of each dataset trains; the driver is the larger training set (seq: 54 cells).
        assert_eq!(m.state.splits[SEQ].train.len(), 54);
        assert_eq!(m.state.splits[SPATIAL].train.len(), 36);
        // Imputed values of spatial cells: normalised over the panel, so they sum to 1 there.
        let dev = Default::default();
        let cells: Vec<usize> = (0..40).collect();
        let imp = imputed_values(
            &m.module, SPATIAL, &spatial, &cells, true, true, None, 128, &dev,
        )
        .unwrap();
        let panel: f32 = m.config().spatial_gene_index.iter().map(|&g| imp[g]).sum();
        assert!((panel - 1.0).abs() < 1e-4, "{panel}");
        // The held-out genes 8..12 follow the cell type: type 0 is high on even genes.
        let even = |c: usize| imp[c * 12 + 8] + imp[c * 12 + 10];
        let odd = |c: usize| imp[c * 12 + 9] + imp[c * 12 + 11];
        assert!(even(0) > odd(0) && odd(1) > even(1));
        // Unnormalised: scaled by the observed spatial total.
        let raw = imputed_values(
            &m.module,
            SPATIAL,
            &spatial,
            &cells[..1],
            true,
            false,
            None,
            128,
            &dev,
        )
        .unwrap();
        let total: f32 = m.config().spatial_gene_index.iter().map(|&g| raw[g]).sum();
        assert!((total - spatial.log_library[0].exp()).abs() < 1e-2 * total);

        let dir = std::env::temp_dir().join(format!("rscvi-gimvi-{}", std::process::id()));
        m.save(&dir, true).unwrap();
        assert_eq!(crate::io::saved_model_kind(&dir).unwrap(), "GIMVI");
        let back = GimviModel::load(&dir).unwrap();
        let a = latent(&m.module, &seq, &cells[..5]);
        let b = latent(&back.module, &seq, &cells[..5]);
        assert_eq!(a, b);
        assert_eq!(back.registry["k"], 1);
        assert!(crate::models::scvi::ScviModel::load(&dir).is_err());
        std::fs::remove_dir_all(&dir).ok();

        // A second train() call trains again (parameters stay trainable after reloading).
        let mut back = back;
        let before = latent(&back.module, &seq, &cells[..5]);
        let tc1 = TrainConfig {
            max_epochs: Some(1),
            ..tc
        };
        back.train(&[&seq, &spatial], &tc1, DeviceKind::Cpu, &mut Silent)
            .unwrap();
        let after = latent(&back.module, &seq, &cells[..5]);
        assert_ne!(before, after);
    }

    #[test]
    fn data_that_do_not_match_the_model_are_refused() {
        let (seq, spatial, map) = pair();
        let cfg = GimviConfig::new(12, map, [1, 1]);
        let err = GimviModel::new(cfg, [&spatial, &seq], serde_json::json!({}))
            .err()
            .unwrap();
        assert!(err.to_string().contains("x_seq"), "{err}");
        let mut bad = GimviConfig::new(12, vec![3, 12], [1, 1]);
        assert!(bad.validate().is_err());
        bad.spatial_gene_index = vec![3];
        bad.dispersion = crate::models::options::Dispersion::GeneLabel;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("gene-label"));
    }
}
