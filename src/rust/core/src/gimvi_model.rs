//! A GIMVI model as users hold it (module on the CPU, training state, both registries), its
//! training loop (gimvi.md §6: cyclic minibatch pairs, KL warm-up, module and adversarial
//! classifier optimised in alternation) and save/load.

use std::path::Path;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::adversarial::{adversarial_loss, cyclic_schedule, one_hot, Classifier};
use crate::backend::{Cpu, CpuTrain, DeviceKind};
use crate::data::{make_split, split_sizes, DataSet, Split};
use crate::error::{invalid_arg, Error, Result};
use crate::gimvi::{check_data, library_priors, GimviBatch, GimviConfig, GimviLoss, Jvae};
use crate::model::{load_weights, read_meta, save_files, FORMAT_VERSION};
use crate::train::{
    adam_config, kl_weight, validate_config, EpochRecord, Observer, Sums, TrainConfig, TrainSummary,
};

/// Default number of epochs of `GIMVI.train`.
pub const DEFAULT_MAX_EPOCHS: usize = 200;

/// What survives between `train()` calls and is saved with the model.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GimviState {
    pub is_trained: bool,
    pub history: Vec<EpochRecord>,
    /// Train/validation/test split of each dataset (seq, spatial).
    pub splits: [Split; 2],
}

pub struct GimviModel {
    pub module: Jvae<Cpu>,
    pub state: GimviState,
    /// Both registries and gene lists, written by the front end and stored verbatim.
    pub registry: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct SavedMeta {
    format: String,
    format_version: u32,
    package_version: String,
    model: String,
    config: GimviConfig,
    state: GimviState,
    registry: serde_json::Value,
}

/// A module with blank parameters of the right shapes (weights are loaded over it).
fn blank<B: Backend>(c: &GimviConfig, device: &B::Device) -> Result<Jvae<B>> {
    let prior = |k: usize| (vec![0.0; k], vec![1.0; k]);
    Jvae::new(
        c.clone(),
        [prior(c.n_batch[0]), prior(c.n_batch[1])],
        device,
    )
}

#[cfg(feature = "cuda")]
fn convert<A: Backend, Z: Backend>(m: &Jvae<A>, device: &Z::Device) -> Result<Jvae<Z>> {
    crate::model::transfer(m, blank::<Z>(&m.config, device)?, device)
}

/// Adds one dataset's minibatch terms to `sums`; false when a value is not finite.
fn add_terms<B: Backend>(sums: &mut Sums, t: &GimviLoss<B>) -> bool {
    let n = t.reconstruction.dims()[0];
    sums.add(
        t.loss_sum.clone().detach() / n as f64,
        t.reconstruction.clone().detach(),
        t.kl_local.clone().detach(),
        n,
    )
}

/// Validation terms (gimvi.md §6.3): each dataset with its own head, eval mode, summed over
/// both datasets and divided by the number of validation cells.
fn evaluate<B: Backend>(
    module: &Jvae<B>,
    data: [&DataSet; 2],
    splits: &[Split; 2],
    batch_size: usize,
    kl_w: f64,
    device: &B::Device,
) -> Option<(f64, f64, f64)> {
    let mut sums = Sums::default();
    for (i, split) in splits.iter().enumerate() {
        for chunk in split.validation.chunks(batch_size) {
            let b = GimviBatch::<B>::new(&module.config, i, data[i], chunk, device);
            if !add_terms(&mut sums, &module.loss(&b, kl_w, false)) {
                return None;
            }
        }
    }
    Some(sums.means())
}

/// Fits `module` on both datasets. `kappa` scales the adversarial terms (0 disables the
/// classifier). On a non-finite loss the parameters of the last finished epoch come back
/// with the error.
#[allow(clippy::too_many_arguments)]
pub fn train<B: AutodiffBackend>(
    module: Jvae<B::InnerBackend>,
    data: [&DataSet; 2],
    cfg: &TrainConfig,
    kappa: f64,
    state: &mut GimviState,
    observer: &mut dyn Observer,
    device: &B::Device,
) -> (Jvae<B::InnerBackend>, Result<TrainSummary>) {
    if let Err(e) = validate_config(cfg).and_then(|_| check_data(&module.config, data)) {
        return (module, Err(e));
    }
    if !(kappa >= 0.0 && kappa.is_finite()) {
        return (
            module,
            Err(invalid_arg(
                "kappa",
                format!("must be a number >= 0, got {kappa}"),
            )),
        );
    }
    let seed = cfg.seed.unwrap_or_else(|| rand::random::<u32>() as u64);
    B::seed(device, seed);
    let mut splits: [Split; 2] = Default::default();
    for (i, d) in data.iter().enumerate() {
        let n = d.n_cells();
        match split_sizes(
            n,
            cfg.train_size,
            cfg.validation_size,
            cfg.batch_size,
            false,
        ) {
            Ok(sizes) => splits[i] = make_split(n, sizes, cfg.shuffle_set_split, seed as u32),
            Err(e) => return (module, Err(e)),
        }
    }
    let max_epochs = cfg.max_epochs.unwrap_or(DEFAULT_MAX_EPOCHS);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(1));
    let module = module.map(&mut crate::nn::Retrainable);
    let config = module.config.clone();
    let mut model = <Jvae<B> as AutodiffModule<B>>::from_inner(module);
    let mut classifier = Classifier::<B>::adversarial(config.n_latent, 2, device);
    let mut opt_module = adam_config(cfg).init::<B, Jvae<B>>();
    let mut opt_classifier = adam_config(cfg).init::<B, Classifier<B>>();
    let mut last_good = model.valid();

    let epoch_offset = state.history.last().map_or(0, |r| r.epoch + 1);
    let start = Instant::now();
    let mut step = 0usize;
    let mut summary = TrainSummary {
        epochs_run: 0,
        max_epochs,
        interrupted: false,
        early_stopped: false,
        seconds: 0.0,
    };
    let mut train_cells = [splits[0].train.clone(), splits[1].train.clone()];
    for epoch in 0..max_epochs {
        let epoch_start = Instant::now();
        let kl_w = kl_weight(cfg, epoch, step);
        for cells in train_cells.iter_mut() {
            cells.shuffle(&mut rng);
        }
        let mut sums = Sums::default();
        for pair in cyclic_schedule(&train_cells, cfg.batch_size) {
            if pair.iter().any(|c| c.len() < 2) {
                continue; // batch norm cannot use a single cell; the split rules avoid this
            }
            let beta = kl_weight(cfg, epoch, step);
            let batches: Vec<GimviBatch<B>> = pair
                .iter()
                .enumerate()
                .map(|(i, cells)| GimviBatch::new(&config, i, data[i], cells, device))
                .collect();
            let dataset_of: Vec<usize> = pair
                .iter()
                .enumerate()
                .flat_map(|(i, c)| std::iter::repeat_n(i, c.len()))
                .collect();
            let n_total = dataset_of.len() as f64;
            let terms: Vec<_> = batches.iter().map(|b| model.loss(b, beta, true)).collect();
            if !terms.iter().all(|t| add_terms(&mut sums, t)) {
                let msg = format!(
                    "training produced a non-finite loss in epoch {} (step {}); the model keeps \
                     the parameters of the last completed epoch. Try a lower `lr` or check the counts",
                    epoch_offset + epoch + 1,
                    step / 2 + 1
                );
                state.is_trained = state.is_trained || epoch > 0;
                return (last_good, Err(Error::NonFinite(msg)));
            }
            let labels = one_hot::<B>(&dataset_of, 2, device);
            let loss_sum = Tensor::cat(terms.iter().map(|t| t.loss_sum.clone()).collect(), 0).sum();
            let mut objective = loss_sum / n_total;
            if kappa > 0.0 {
                let z = Tensor::cat(terms.into_iter().map(|t| t.z).collect(), 0);
                let logits = classifier.forward(z, true);
                objective = objective + adversarial_loss(logits, labels.clone(), false) * kappa;
            }
            let grads = GradientsParams::from_grads(objective.backward(), &model);
            model = opt_module.step(cfg.lr, model, grads);
            if kappa > 0.0 {
                // G8: the classifier sees a fresh encoder pass of the updated module.
                let z = batches
                    .iter()
                    .map(|b| model.inference(b, true, false).z.detach())
                    .collect();
                let logits = classifier.forward(Tensor::cat(z, 0), true);
                let loss = adversarial_loss(logits, labels, true) * kappa;
                let grads = GradientsParams::from_grads(loss.backward(), &classifier);
                classifier = opt_classifier.step(cfg.lr, classifier, grads);
            }
            step += 2; // two optimisers: the reference's global step advances twice
            if observer.should_stop() {
                summary.interrupted = true;
                break;
            }
        }
        let mut record = sums.record(epoch_offset + epoch, kl_w);
        last_good = model.valid();
        let validate = cfg.check_val_every_n_epoch > 0
            && splits.iter().any(|s| !s.validation.is_empty())
            && ((epoch + 1) % cfg.check_val_every_n_epoch == 0 || epoch + 1 == max_epochs);
        if validate && !summary.interrupted {
            record.set_validation(evaluate(
                &last_good,
                data,
                &splits,
                cfg.batch_size,
                kl_w,
                device,
            ));
        }
        record.seconds = epoch_start.elapsed().as_secs_f64();
        summary.epochs_run = epoch + 1;
        observer.on_epoch(
            &record,
            epoch + 1,
            max_epochs,
            start.elapsed().as_secs_f64(),
        );
        state.history.push(record);
        if summary.interrupted {
            break;
        }
    }
    summary.seconds = start.elapsed().as_secs_f64();
    state.is_trained = true;
    state.splits = splits;
    (last_good, Ok(summary))
}

impl GimviModel {
    pub fn new(
        config: GimviConfig,
        data: [&DataSet; 2],
        registry: serde_json::Value,
    ) -> Result<Self> {
        check_data(&config, data)?;
        Ok(Self {
            module: Jvae::new(config, library_priors(data), &Default::default())?,
            state: GimviState::default(),
            registry,
        })
    }

    pub fn config(&self) -> &GimviConfig {
        &self.module.config
    }

    /// Trains in place; on failure the model keeps the parameters of the last completed
    /// epoch (or its previous ones).
    pub fn train(
        &mut self,
        data: [&DataSet; 2],
        cfg: &TrainConfig,
        kappa: f64,
        device: DeviceKind,
        observer: &mut dyn Observer,
    ) -> Result<TrainSummary> {
        match device {
            DeviceKind::Cpu => {
                let (m, r) = train::<CpuTrain>(
                    self.module.clone(),
                    data,
                    cfg,
                    kappa,
                    &mut self.state,
                    observer,
                    &Default::default(),
                );
                self.module = m;
                r
            }
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => {
                let dev = Default::default();
                let on_gpu = convert::<Cpu, crate::backend::Gpu>(&self.module, &dev)?;
                let (m, r) = train::<crate::backend::GpuTrain>(
                    on_gpu,
                    data,
                    cfg,
                    kappa,
                    &mut self.state,
                    observer,
                    &dev,
                );
                self.module = convert::<crate::backend::Gpu, Cpu>(&m, &Default::default())?;
                r
            }
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda => Err(Error::Device("rscvi was built without CUDA support".into())),
        }
    }

    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<()> {
        let meta = SavedMeta {
            format: "rscvi".into(),
            format_version: FORMAT_VERSION,
            package_version: env!("CARGO_PKG_VERSION").into(),
            model: "GIMVI".into(),
            config: self.module.config.clone(),
            state: self.state.clone(),
            registry: self.registry.clone(),
        };
        save_files(dir, overwrite, &self.module, &meta)
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let meta: SavedMeta = read_meta(dir, "GIMVI")?;
        let module = load_weights(dir, blank::<Cpu>(&meta.config, &Default::default())?)?;
        Ok(Self {
            module,
            state: meta.state,
            registry: meta.registry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Categorical, CsrMatrix};
    use crate::gimvi::{imputed_values, latent, SEQ, SPATIAL};
    use crate::train::Silent;

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
            DataSet::new(
                counts,
                Categorical::constant(n),
                Categorical::constant(n),
                vec![],
                vec![],
                None,
            )
            .unwrap()
        };
        let seq_genes: Vec<usize> = (0..12).collect();
        let spatial_genes = vec![7, 1, 4, 0, 3, 6, 2, 5];
        (
            make(60, &seq_genes, 1.0),
            make(40, &spatial_genes, 2.0),
            spatial_genes,
        )
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
            ..Default::default()
        };
        let s = m
            .train([&seq, &spatial], &tc, 5.0, DeviceKind::Cpu, &mut Silent)
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
        assert_eq!(crate::model::saved_model_kind(&dir).unwrap(), "GIMVI");
        let back = GimviModel::load(&dir).unwrap();
        let a = latent(&m.module, SEQ, &seq, &cells[..5], true, 128, &dev).unwrap();
        let b = latent(&back.module, SEQ, &seq, &cells[..5], true, 128, &dev).unwrap();
        assert_eq!(a, b);
        assert_eq!(back.registry["k"], 1);
        assert!(crate::model::ScviModel::load(&dir).is_err());
        std::fs::remove_dir_all(&dir).ok();

        // A second train() call trains again (parameters stay trainable after reloading).
        let mut back = back;
        let before = latent(&back.module, SEQ, &seq, &cells[..5], true, 128, &dev).unwrap();
        let tc1 = TrainConfig {
            max_epochs: Some(1),
            ..tc
        };
        back.train([&seq, &spatial], &tc1, 5.0, DeviceKind::Cpu, &mut Silent)
            .unwrap();
        let after = latent(&back.module, SEQ, &seq, &cells[..5], true, 128, &dev).unwrap();
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
        bad.dispersion = crate::scvi::Dispersion::GeneLabel;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("gene-label"));
    }
}
