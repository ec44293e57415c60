//! The one training loop of the family (scvi.md §7, gimvi.md §6): seeded split of every
//! dataset, per-epoch shuffling, the minibatch schedule over the datasets, KL warm-up, Adam
//! with the reference's epsilon and coupled weight decay, an optional adversarial classifier
//! trained in alternation, history, validation, early stopping, progress and Ctrl-C.

pub mod config;
pub mod grad;
pub mod history;
pub mod lr;
pub mod memory;
pub mod optim;
pub mod parallel;
pub mod schedule;

pub use config::{
    kl_weight, max_epochs_heuristic, optimizer, validate_config, OptimizerKind, TrainConfig,
};
pub use history::{EpochRecord, Observer, Silent, TrainState, TrainSummary, MONITORS};
pub use memory::{available_memory, check_memory, check_minibatch_memory};

use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::{make_split, split_sizes, DataSet, Split};
use crate::error::{invalid_arg, Error, Result};
use crate::family::{FamilyModule, ModelKind};
use crate::nn::adversarial::{adversarial_loss, one_hot, Classifier};
use history::Sums;
use parallel::Peer;
use schedule::cyclic_schedule;

/// Adds one step's per-dataset terms to `sums`; false when a value is not finite.
fn add_terms<B: Backend>(sums: &mut Sums, terms: &[crate::family::Terms<B>]) -> bool {
    add_packed(sums, pack_terms(terms))
}

/// Each dataset's loss values of a step in one tensor, with its cells (see [`Sums::pack`]).
type Packed<B> = Vec<(burn::tensor::Tensor<B, 1>, usize)>;

fn pack_terms<B: Backend>(terms: &[crate::family::Terms<B>]) -> Packed<B> {
    terms
        .iter()
        .map(|t| {
            let packed = Sums::pack(
                t.loss_mean.clone().detach(),
                t.reconstruction.clone().detach(),
                t.kl_local.clone().detach(),
            );
            (packed, t.n_cells)
        })
        .collect()
}

fn add_packed<B: Backend>(sums: &mut Sums, packed: Packed<B>) -> bool {
    packed.into_iter().all(|(p, n)| sums.add(p, n))
}

/// Loss sums (eval mode) over the validation cells of every dataset, each minibatch with its
/// own dataset's pass (None: a value was not finite). Counts in a file are read in file order
/// (the sums do not depend on the order). A worker of a data-parallel run evaluates its
/// share of the minibatches.
fn evaluate<B: Backend, M: FamilyModule<B>>(
    module: &M,
    data: &[&DataSet],
    splits: &[Split],
    batch_size: usize,
    kl_w: f64,
    device: &B::Device,
    peer: Option<&Peer>,
) -> Result<Option<Sums>> {
    let mut sums = Sums::default();
    let (rank, n) = peer.map_or((0, 1), |p| (p.rank(), p.workers()));
    for (i, split) in splits.iter().enumerate() {
        let mut cells = split.validation.clone();
        if data[i].file.is_some() {
            cells.sort_unstable();
        }
        for chunk in cells.chunks(batch_size).skip(rank).step_by(n) {
            data[i].load(chunk)?;
            let b = M::minibatch(module.config(), i, data[i], chunk, device);
            if !add_terms(&mut sums, &module.step_loss(&[b], kl_w, false).terms) {
                return Ok(None);
            }
        }
    }
    Ok(Some(sums))
}

/// On a device (one worker), a step's loss values are read once the next step is queued, so
/// that the host does not wait for the device mid-epoch; a non-finite loss then stops training
/// one step later, with the same outcome (the last completed epoch's weights).
fn defers_loss_reads<B: Backend>(peer: Option<&Peer>) -> bool {
    #[cfg(test)]
    if training_tests::DEFER_ON_HOST.load(std::sync::atomic::Ordering::SeqCst) {
        return peer.is_none();
    }
    !crate::backend::computes_on_host::<B>() && peer.is_none()
}

/// Frees the windows of counts read from files once training is over.
fn release(data: &[&DataSet]) {
    for d in data {
        if let Some(f) = &d.file {
            f.release();
        }
    }
}

/// What every worker of a run derives alike before the first epoch.
struct Prepared {
    plan: crate::family::TrainPlan,
    splits: Vec<Split>,
    seed: u64,
    max_epochs: usize,
}

/// Checks the data and options and draws the split of every dataset.
fn prepare<K: ModelKind, B: Backend>(
    module: &K::Module<B>,
    data: &[&DataSet],
    cfg: &TrainConfig,
    workers: usize,
) -> Result<Prepared> {
    let config = module.config().clone();
    validate_config(&TrainConfig {
        devices: workers,
        ..cfg.clone()
    })?;
    data.iter().try_for_each(|d| d.require_counts("training"))?;
    K::check_data(&config, data)?;
    data.iter()
        .try_for_each(|d| check_minibatch_memory(cfg.batch_size.min(d.n_cells()), d.n_genes()))?;
    if workers > 1 && data.iter().any(|d| d.file.is_some()) {
        return Err(invalid_arg(
            "devices",
            "must be 1 when the counts stay in a file; read them into memory to train on \
             several devices",
        ));
    }
    let plan = K::plan(&config, data, cfg)?;
    let seed = cfg.seed.unwrap_or_else(|| rand::random::<u32>() as u64);
    let mut splits = Vec::with_capacity(data.len());
    for d in data {
        let n = d.n_cells();
        let sizes = split_sizes(
            n,
            cfg.train_size,
            cfg.validation_size,
            cfg.batch_size,
            false,
        )?;
        splits.push(make_split(n, sizes, cfg.shuffle_set_split, seed as u32));
    }
    let no_validation = splits.iter().all(|s| s.validation.is_empty());
    if cfg.early_stopping && no_validation && cfg.early_stopping_monitor.ends_with("validation") {
        return Err(invalid_arg(
            "early_stopping",
            "needs a non-empty validation set",
        ));
    }
    // Minibatches smaller than 2 cells per worker are skipped: there must be larger ones.
    if let Some(s) = splits.iter().find(|s| s.train.len() < 2 * workers) {
        return Err(invalid_arg(
            "devices",
            format!(
                "= {workers} needs at least {} training cells in each dataset (2 per worker), \
                 got {}; use fewer devices",
                2 * workers,
                s.train.len()
            ),
        ));
    }
    let max_epochs = cfg.max_epochs.unwrap_or(plan.default_max_epochs);
    Ok(Prepared {
        plan,
        splits,
        seed,
        max_epochs,
    })
}

/// Fits `module` on `data` (one set per dataset of the model), with one worker per device in
/// `devices` (data-parallel when there are several; see [`parallel`]). On a non-finite loss
/// the parameters of the last finished epoch come back with the error (the caller keeps its
/// previous model). `resident_budget` (bytes) keeps the data on the device when the model
/// supports it and the copy fits (GPU training); otherwise minibatches are assembled on the
/// host from the sparse counts.
#[allow(clippy::too_many_arguments)]
pub fn train<K: ModelKind, B: AutodiffBackend>(
    module: K::Module<B::InnerBackend>,
    data: &[&DataSet],
    cfg: &TrainConfig,
    extra: &K::Extra,
    state: &mut TrainState,
    observer: &mut dyn Observer,
    devices: &[B::Device],
    resident_budget: Option<usize>,
) -> (K::Module<B::InnerBackend>, Result<TrainSummary>)
where
    K::Module<B>: AutodiffModule<B, InnerModule = K::Module<B::InnerBackend>>,
{
    let Some(device) = devices.first() else {
        return (
            module,
            Err(invalid_arg("devices", "must name at least one device")),
        );
    };
    let prepared = match prepare::<K, B::InnerBackend>(&module, data, cfg, devices.len()) {
        Ok(p) => p,
        Err(e) => return (module, Err(e)),
    };
    B::seed(device, prepared.seed);
    let fresh = module.clone().map(&mut crate::nn::Retrainable);
    let model = <K::Module<B> as AutodiffModule<B>>::from_inner(fresh);
    let adversary = prepared.plan.adversary.as_ref();
    let classifier = adversary
        .map(|a| Classifier::<B>::new(a.n_latent, 32, a.n_classes, a.n_layers, 0.1, device));
    let run = |model: K::Module<B>,
               classifier: Option<Classifier<B>>,
               state: &mut TrainState,
               observer: &mut dyn Observer,
               device: &B::Device,
               peer: Option<&Peer>| {
        fit::<K, B>(
            model,
            classifier,
            data,
            cfg,
            extra,
            &prepared,
            state,
            observer,
            device,
            resident_budget,
            peer,
        )
    };
    if devices.len() == 1 {
        // Counts read from a file stay on the caller's thread: HDF5's own reads must happen
        // there (io::h5, RawRows).
        let from_outside_the_pool = crate::backend::computes_on_host::<B>()
            && rayon::current_num_threads() > 1
            && rayon::current_thread_index().is_none()
            && data.iter().all(|d| d.file.is_none());
        if !from_outside_the_pool {
            return run(model, classifier, state, observer, device, None);
        }
        return parallel::on_pool_thread(observer, |relay| {
            run(model, classifier, state, relay, device, None)
        });
    }
    // Every random initial value is drawn here, on one thread, before the replicas exist.
    let model = crate::nn::initialized(model);
    let classifier = classifier.map(crate::nn::initialized);
    // Replicas through the inner module: clones would share their running statistics
    // (Burn's RunningState keeps one per thread behind a shared lock and averages them).
    fn replica<B: AutodiffBackend, M: AutodiffModule<B>>(m: &M, device: &B::Device) -> M {
        M::from_inner(m.valid().map(&mut crate::nn::Retrainable)).fork(device)
    }
    let replicas: Vec<_> = devices
        .iter()
        .map(|d| {
            (
                replica(&model, d),
                classifier.as_ref().map(|c| replica(c, d)),
            )
        })
        .collect();
    let worker = |(model, classifier): (K::Module<B>, Option<Classifier<B>>),
                  peer: Peer,
                  state: &mut TrainState,
                  observer: &mut dyn Observer| {
        let device = &devices[peer.rank()];
        crate::nn::set_worker_rng(Some(
            prepared.seed ^ (peer.rank() as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ));
        let out = run(model, classifier, state, observer, device, Some(&peer));
        crate::nn::set_worker_rng(None);
        out
    };
    parallel::supervise::<B::InnerBackend, _, _>(
        devices, replicas, state, observer, module, &worker,
    )
}

/// The training loop of one worker (`peer`: its place in a data-parallel run, None alone).
#[allow(clippy::too_many_arguments)]
fn fit<K: ModelKind, B: AutodiffBackend>(
    model: K::Module<B>,
    classifier: Option<Classifier<B>>,
    data: &[&DataSet],
    cfg: &TrainConfig,
    extra: &K::Extra,
    prepared: &Prepared,
    state: &mut TrainState,
    observer: &mut dyn Observer,
    device: &B::Device,
    resident_budget: Option<usize>,
    peer: Option<&Peer>,
) -> (K::Module<B::InnerBackend>, Result<TrainSummary>)
where
    K::Module<B>: AutodiffModule<B, InnerModule = K::Module<B::InnerBackend>>,
{
    let config = model.config().clone();
    let Prepared {
        plan,
        splits,
        seed,
        max_epochs,
    } = prepared;
    let (seed, max_epochs) = (*seed, *max_epochs);
    let no_validation = splits.iter().all(|s| s.validation.is_empty());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(1));

    // Counts in a file stay there: no device copy of the whole dataset.
    let resident = resident_budget
        .filter(|_| data.iter().all(|d| d.file.is_none()))
        .and_then(|max| K::Module::<B>::device_minibatches(&config, data, device, max));
    let minibatch = |i: usize, cells: &[usize]| match &resident {
        Some(gather) => gather(i, cells),
        None => K::Module::<B>::minibatch(&config, i, data[i], cells, device),
    };
    let mut last_good = model.valid();
    let (mut model, mut classifier) = match peer {
        Some(p) => {
            let synced = p.replicate(model).and_then(|m| {
                let c = classifier.map(|c| p.replicate(c)).transpose()?;
                Ok((m, c))
            });
            match synced {
                Ok(replicas) => replicas,
                Err(e) => return (last_good, Err(e)),
            }
        }
        None => (model, classifier),
    };
    let grad_rules = K::grad_rules(&model, extra);
    let mut optim = optimizer(cfg).init::<B, K::Module<B>>();
    // The adversarial classifier and its optimiser (scvi-tools' adversarial training plans).
    let adversary = plan.adversary.as_ref();
    let classifier_cfg = adversary
        .and_then(|a| a.optimizer.as_ref())
        .map(|o| TrainConfig {
            optimizer: OptimizerKind::Adam,
            lr: o.lr,
            eps: o.eps,
            weight_decay: o.weight_decay,
            ..cfg.clone()
        })
        .unwrap_or_else(|| cfg.clone());
    let mut classifier_optim =
        adversary.map(|_| optimizer(&classifier_cfg).init::<B, Classifier<B>>());

    let epoch_offset = state.history.last().map_or(0, |r| r.epoch + 1);
    let start = Instant::now();
    let mut step = 0usize;
    let mut best = f64::INFINITY;
    // Checks of the monitored metric so far (the first warm-up ones are ignored).
    let mut checks = 0usize;
    let mut lr = lr::LrState::new(cfg.lr, cfg.lr_scheduler.clone());
    let mut wait = 0usize;
    let mut summary = TrainSummary {
        epochs_run: 0,
        max_epochs,
        interrupted: false,
        early_stopped: false,
        seconds: 0.0,
    };
    // Each minibatch is split between the workers: every part needs 2 cells (batch norm).
    let min_cells = 2 * peer.map_or(1, |p| p.workers());
    let shard = |c: &'_ [usize]| -> Vec<usize> { peer.map_or(c, |p| p.shard(c)).to_vec() };
    let non_finite = |epoch: usize, step: usize| {
        Error::NonFinite(format!(
            "training produced a non-finite loss in epoch {} (step {}); the model keeps the \
             parameters of the last completed epoch. Try a lower `lr`, check the counts, or \
             use gene_likelihood = \"nb\"",
            epoch_offset + epoch + 1,
            step + 1
        ))
    };
    let mut train_cells: Vec<Vec<usize>> = splits.iter().map(|s| s.train.clone()).collect();
    let defer_reads = defers_loss_reads::<B>(peer);
    for epoch in 0..max_epochs {
        let epoch_start = Instant::now();
        let kl_w = kl_weight(cfg, epoch, step);
        for (i, cells) in train_cells.iter_mut().enumerate() {
            match &data[i].file {
                // Blocks of the file in random order, shuffled within a window of blocks.
                Some(file) => {
                    let (order, windows) = file.epoch_order(&splits[i].train, &mut rng);
                    *cells = order;
                    file.set_plan(windows);
                }
                None => cells.shuffle(&mut rng),
            }
        }
        let mut sums = Sums::default();
        let mut unread: Option<(Packed<B>, usize)> = None;
        for global in cyclic_schedule(&train_cells, cfg.batch_size) {
            if global.iter().any(|c| c.len() < min_cells) {
                continue; // batch norm cannot use a single cell; the split rules avoid this
            }
            let cells: Vec<Vec<usize>> = global.iter().map(|c| shard(c)).collect();
            let kl_step = kl_weight(cfg, epoch, step);
            if let Err(e) = cells
                .iter()
                .enumerate()
                .try_for_each(|(i, c)| data[i].load(c))
            {
                release(data);
                return (last_good, Err(e));
            }
            let batches: Vec<_> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| minibatch(i, c))
                .collect();
            let loss = model.step_loss(&batches, kl_step, true);
            let optimizer_step = step / (1 + adversary.is_some() as usize);
            let packed = pack_terms(&loss.terms);
            let (finite, read_step) = match (defer_reads, unread.take()) {
                (true, previous) => {
                    unread = Some((packed, optimizer_step));
                    previous.map_or((true, optimizer_step), |(p, at)| {
                        (add_packed(&mut sums, p), at)
                    })
                }
                (false, _) => (add_packed(&mut sums, packed), optimizer_step),
            };
            if !finite && peer.is_none() {
                state.is_trained = state.is_trained || epoch > 0;
                release(data);
                return (last_good, Err(non_finite(epoch, read_step)));
            }
            let classes = adversary
                .map(|a| one_hot::<B>(&model.adversarial_classes(&batches), a.n_classes, device));
            let scale = adversary.map_or(0.0, |a| a.scale);
            // Each worker's gradient of its part's mean loss, weighted by the part's share of
            // the minibatch: their sum is the gradient of the whole minibatch's mean loss.
            let weight = {
                let local: usize = cells.iter().map(Vec::len).sum();
                let whole: usize = global.iter().map(|c| c.len()).sum();
                local as f64 / whole as f64
            };
            let mut grads = if finite {
                let mut objective = loss.objective;
                if let (Some(c), Some(classes), Some(z), true) =
                    (&classifier, &classes, &loss.z, scale > 0.0)
                {
                    let logits = c.forward(z.clone(), true);
                    objective =
                        objective + adversarial_loss(logits, classes.clone(), false) * scale;
                }
                if peer.is_some() {
                    objective = objective * weight; // (scales every gradient at no cost)
                }
                let raw = objective.backward();
                let sparse: Vec<_> = (loss.sparse_inputs.iter())
                    .filter_map(|s| Some((s.weight, s.weight_gradient(&raw)?)))
                    .collect();
                let mut grads = GradientsParams::from_grads(raw, &model);
                for (id, g) in sparse {
                    grads.register::<B::InnerBackend, 2>(id, g);
                }
                grads
            } else {
                GradientsParams::new()
            };
            let mut stop = observer.should_stop();
            if let Some(p) = peer {
                let flags = [f64::from(u8::from(stop)), f64::from(u8::from(!finite))];
                match p.reduce_gradients(&model, &mut grads, &flags, device) {
                    Ok(f) => {
                        stop = f[0] > 0.0;
                        if f[1] > 0.0 {
                            state.is_trained = state.is_trained || epoch > 0;
                            return (last_good, Err(non_finite(epoch, optimizer_step)));
                        }
                    }
                    Err(e) => return (last_good, Err(e)),
                }
            }
            grad::apply_grad_rules::<B>(&mut grads, &grad_rules);
            if let Some(max_norm) = cfg.gradient_clipping_max_norm {
                grad::clip_global_norm(&model, &mut grads, max_norm);
            }
            model = optim.step(lr.lr, model, grads);
            if let (Some(c), Some(opt), Some(classes)) =
                (classifier.take(), classifier_optim.as_mut(), classes)
            {
                let z = (scale > 0.0)
                    .then(|| {
                        model
                            .classifier_latent(&batches)
                            .or(loss.z.map(|z| z.detach()))
                    })
                    .flatten();
                classifier = Some(match z {
                    Some(z) => {
                        let l = adversarial_loss(c.forward(z, true), classes, true) * scale;
                        let l = if peer.is_some() { l * weight } else { l };
                        let mut grads = GradientsParams::from_grads(l.backward(), &c);
                        if let Some(p) = peer {
                            if let Err(e) = p.reduce_gradients(&c, &mut grads, &[], device) {
                                return (last_good, Err(e));
                            }
                        }
                        opt.step(classifier_cfg.lr, c, grads)
                    }
                    None => c,
                });
                step += 1; // the classifier's optimiser: the reference's global step counts it
            }
            step += 1;
            if stop {
                summary.interrupted = true;
                break;
            }
        }
        if let Some((p, at)) = unread.take() {
            if !add_packed(&mut sums, p) {
                state.is_trained = state.is_trained || epoch > 0;
                release(data);
                return (last_good, Err(non_finite(epoch, at)));
            }
        }
        if let Some(p) = peer {
            // valid() first: it folds the last step's running-statistics update in.
            let _ = model.valid();
            let synced = p
                .sum_sums::<B::InnerBackend>(&sums, device)
                .and_then(|s| Ok((s, p.average_running(model.clone())?)));
            match synced {
                Ok((s, m)) => {
                    sums = s;
                    model = m;
                }
                Err(e) => return (last_good, Err(e)),
            }
        }
        let mut record = sums.record(epoch_offset + epoch, kl_w);
        last_good = model.valid();
        let validate = !no_validation
            && cfg.check_val_every_n_epoch > 0
            && ((epoch + 1) % cfg.check_val_every_n_epoch == 0 || epoch + 1 == max_epochs);
        if validate && !summary.interrupted {
            let evaluated = evaluate(&last_good, data, splits, cfg.batch_size, kl_w, device, peer)
                .and_then(|v| match peer {
                    // Every worker's sums, and whether any was not finite.
                    Some(p) => {
                        let mut v4 = v.as_ref().map_or([0.0; 4], Sums::to_array).to_vec();
                        v4.push(f64::from(u8::from(v.is_none())));
                        let all = p.sum_host::<B::InnerBackend>(&v4, device)?;
                        Ok((all[4] == 0.0)
                            .then(|| Sums::from_array([all[0], all[1], all[2], all[3]])))
                    }
                    None => Ok(v),
                });
            match evaluated {
                Ok(v) => record.set_validation(v.map(|s| s.means())),
                Err(e) => {
                    release(data);
                    return (last_good, Err(e));
                }
            }
        }
        record.lr = Some(lr.lr);
        lr.after_epoch(&record);
        record.seconds = epoch_start.elapsed().as_secs_f64();
        summary.epochs_run = epoch + 1;
        observer.on_epoch(
            &record,
            epoch + 1,
            max_epochs,
            start.elapsed().as_secs_f64(),
        );
        let monitored = record.metric(&cfg.early_stopping_monitor);
        state.history.push(record);
        if summary.interrupted {
            break;
        }
        if cfg.early_stopping {
            if let Some(v) = monitored {
                if !v.is_finite() {
                    summary.early_stopped = true;
                    break;
                }
                checks += 1;
                if checks <= cfg.early_stopping_warmup_epochs {
                    continue;
                }
                if v < best - cfg.early_stopping_min_delta {
                    best = v;
                    wait = 0;
                } else {
                    wait += 1;
                    if wait >= cfg.early_stopping_patience {
                        summary.early_stopped = true;
                        break;
                    }
                }
            }
        }
    }
    release(data);
    summary.seconds = start.elapsed().as_secs_f64();
    state.is_trained = true;
    state.splits = splits.clone();
    (last_good, Ok(summary))
}

#[cfg(test)]
mod training_tests {
    use super::*;
    use crate::backend::{Cpu, CpuTrain};
    use crate::data::DataSet;
    use crate::models::scvi::{Scvi, ScviConfig, ScviExtra, ScviKind};

    fn toy_data() -> DataSet {
        crate::data::toy_dataset(2)
    }

    /// Makes the CPU read the loss values one step late, as a device does (a static, not a
    /// thread-local: training runs on a thread of rayon's pool).
    pub(super) static DEFER_ON_HOST: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    /// Reading the loss one step late (the GPU's way) gives the same history as reading it at
    /// once, and a diverging run ends in the non-finite error either way, keeping the last
    /// completed epoch's finite weights.
    #[test]
    fn late_loss_reads_give_the_same_history_and_still_catch_divergence() {
        let _rng = crate::TEST_RNG_LOCK.lock();
        let data = toy_data();
        let run = |defer: bool, lr: f64| {
            DEFER_ON_HOST.store(defer, std::sync::atomic::Ordering::SeqCst);
            let tc = TrainConfig {
                max_epochs: Some(4),
                seed: Some(5),
                batch_size: 16,
                lr,
                ..Default::default()
            };
            let prior = crate::data::library_prior(&data);
            let fresh = Scvi::<Cpu>::new(ScviConfig::new(6, 2), prior, &Default::default());
            let mut state = TrainState::default();
            let (m, r) = train_scvi(fresh.unwrap(), &data, &tc, &mut state, None);
            DEFER_ON_HOST.store(false, std::sync::atomic::Ordering::SeqCst);
            (m, r, state)
        };
        let (at_once, r1, s1) = run(false, 1e-3);
        let (late, r2, s2) = run(true, 1e-3);
        r1.unwrap();
        r2.unwrap();
        let elbos =
            |s: &TrainState| -> Vec<f64> { s.history.iter().map(|r| r.elbo_train).collect() };
        assert_eq!(elbos(&s1), elbos(&s2));
        assert_eq!(flat(at_once.px_r.val()), flat(late.px_r.val()));
        for defer in [false, true] {
            let (m, r, state) = run(defer, 1e9);
            let err = r.expect_err("lr 1e9 diverges").to_string();
            assert!(err.contains("non-finite loss"), "{err}");
            assert!(state.history.len() < 4);
            assert!(flat(m.px_r.val()).iter().all(|v| v.is_finite()));
        }
    }

    /// On the CPU, training runs on a thread of rayon's pool; the observer stays on the
    /// caller's thread (R's checks may only run there), sees every epoch there, and its stop
    /// reaches the trainer.
    #[test]
    fn the_observer_is_called_on_the_callers_thread_and_can_stop_training() {
        struct Watch {
            caller: std::thread::ThreadId,
            epochs: usize,
            polls_elsewhere: usize,
            stop_after: usize,
        }
        impl Observer for Watch {
            fn on_epoch(&mut self, _: &EpochRecord, _: usize, _: usize, _: f64) {
                self.epochs += 1;
                self.polls_elsewhere += usize::from(std::thread::current().id() != self.caller);
            }
            fn should_stop(&mut self) -> bool {
                self.polls_elsewhere += usize::from(std::thread::current().id() != self.caller);
                self.epochs >= self.stop_after
            }
        }
        let _rng = crate::TEST_RNG_LOCK.lock();
        let data = toy_data();
        let prior = crate::data::library_prior(&data);
        let tc = TrainConfig {
            max_epochs: Some(400),
            seed: Some(1),
            batch_size: 16,
            ..Default::default()
        };
        let mut watch = Watch {
            caller: std::thread::current().id(),
            epochs: 0,
            polls_elsewhere: 0,
            stop_after: 2,
        };
        let fresh = Scvi::<Cpu>::new(ScviConfig::new(6, 2), prior, &Default::default()).unwrap();
        let mut state = TrainState::default();
        let (_, r) = train::<ScviKind, CpuTrain>(
            fresh,
            &[&data],
            &tc,
            &ScviExtra::default(),
            &mut state,
            &mut watch,
            &[Default::default()],
            None,
        );
        let summary = r.unwrap();
        assert!(summary.interrupted, "the observer's stop ends the run");
        assert!(state.history.len() < 400);
        assert!(watch.epochs >= 2);
        assert_eq!(watch.polls_elsewhere, 0);
    }

    /// The loop on the CPU for an SCVI module without scArches freezing.
    fn train_scvi(
        module: Scvi<Cpu>,
        data: &DataSet,
        tc: &TrainConfig,
        state: &mut TrainState,
        resident_budget: Option<usize>,
    ) -> (Scvi<Cpu>, Result<TrainSummary>) {
        let devices = vec![Default::default(); tc.devices];
        let extra = ScviExtra::default();
        train::<ScviKind, CpuTrain>(
            module,
            &[data],
            tc,
            &extra,
            state,
            &mut Silent,
            &devices,
            resident_budget,
        )
    }

    fn flat<const D: usize>(t: burn::tensor::Tensor<Cpu, D>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    #[test]
    fn training_updates_every_kind_of_parameter_and_a_seed_reproduces_it() {
        let _rng = crate::TEST_RNG_LOCK.lock();
        let data = toy_data();
        let fresh = || {
            let prior = crate::data::library_prior(&data);
            Scvi::<Cpu>::new(ScviConfig::new(6, 2), prior, &Default::default()).unwrap()
        };
        let tc = TrainConfig {
            max_epochs: Some(2),
            seed: Some(3),
            batch_size: 16,
            ..Default::default()
        };
        let run = || {
            let mut state = TrainState::default();
            let (m, r) = train_scvi(fresh(), &data, &tc, &mut state, None);
            r.unwrap();
            (m, state)
        };
        // The initialisation train() draws: seed, then materialise the parameters.
        <CpuTrain as burn::tensor::backend::Backend>::seed(&Default::default(), 3);
        let init = <Scvi<CpuTrain> as AutodiffModule<CpuTrain>>::from_inner(fresh()).valid();
        let (after, state) = run();
        let changed = |a: Vec<f32>, b: Vec<f32>| a.iter().zip(&b).any(|(x, y)| x != y);
        assert!(
            changed(flat(init.px_r.val()), flat(after.px_r.val())),
            "px_r frozen"
        );
        let bn = |m: &Scvi<Cpu>| {
            m.z_encoder.encoder.layers[0]
                .batch_norm
                .as_ref()
                .unwrap()
                .gamma
                .val()
        };
        assert!(
            changed(flat(bn(&init)), flat(bn(&after))),
            "batch-norm gamma frozen"
        );
        let w = |m: &Scvi<Cpu>| m.decoder.px_scale_decoder.weight.val();
        assert!(
            changed(flat(w(&init)), flat(w(&after))),
            "decoder weights frozen"
        );
        assert_eq!(state.history.len(), 2);
        assert_eq!(
            state.splits[0].validation.len() + state.splits[0].train.len(),
            40
        );
        let (again, state2) = run();
        assert_eq!(state.history[1].elbo_train, state2.history[1].elbo_train);
        assert_eq!(flat(after.px_r.val()), flat(again.px_r.val()));
    }

    #[test]
    fn two_workers_train_like_one_and_a_seed_reproduces_them() {
        let _rng = crate::TEST_RNG_LOCK.lock();
        let data = crate::data::toy_dataset(2);
        let run = |devices: usize| {
            let tc = TrainConfig {
                max_epochs: Some(30),
                seed: Some(11),
                batch_size: 16,
                devices,
                ..Default::default()
            };
            let prior = crate::data::library_prior(&data);
            let m = Scvi::<Cpu>::new(ScviConfig::new(6, 2), prior, &Default::default()).unwrap();
            let mut state = TrainState::default();
            let (m, r) = train_scvi(m, &data, &tc, &mut state, None);
            let summary = r.unwrap();
            assert_eq!(summary.epochs_run, 30);
            assert_eq!(state.history.len(), 30);
            let last = state.history.last().unwrap();
            (
                flat(m.px_r.val()),
                last.elbo_validation.unwrap(),
                last.elbo_train,
            )
        };
        let (_, one, _) = run(1);
        let (px_r, two, two_train) = run(2);
        let (px_r_again, two_again, two_train_again) = run(2);
        assert_eq!(
            px_r, px_r_again,
            "two workers: a seed did not reproduce the weights"
        );
        assert_eq!((two, two_train), (two_again, two_train_again));
        let first = {
            let prior = crate::data::library_prior(&data);
            let m = Scvi::<Cpu>::new(ScviConfig::new(6, 2), prior, &Default::default()).unwrap();
            let tc = TrainConfig {
                max_epochs: Some(1),
                seed: Some(11),
                batch_size: 16,
                ..Default::default()
            };
            let mut state = TrainState::default();
            train_scvi(m, &data, &tc, &mut state, None).1.unwrap();
            state.history[0].elbo_validation.unwrap()
        };
        // Both learned, and about as well.
        assert!(
            two < first && one < first,
            "one {one}, two {two}, untrained {first}"
        );
        assert!((two - one).abs() / one.abs() < 0.05, "one {one}, two {two}");
    }

    #[test]
    fn device_resident_data_trains_like_host_minibatches() {
        let _rng = crate::TEST_RNG_LOCK.lock();
        let data = toy_data();
        let tc = TrainConfig {
            max_epochs: Some(2),
            seed: Some(5),
            batch_size: 16,
            ..Default::default()
        };
        let run = |budget| {
            let prior = crate::data::library_prior(&data);
            let m = Scvi::<Cpu>::new(ScviConfig::new(6, 2), prior, &Default::default()).unwrap();
            let mut state = TrainState::default();
            let (m, r) = train_scvi(m, &data, &tc, &mut state, budget);
            r.unwrap();
            (flat(m.px_r.val()), state.history[1].elbo_train)
        };
        let (host_px_r, host_elbo) = run(None);
        let (dev_px_r, dev_elbo) = run(Some(usize::MAX));
        assert_eq!(host_elbo, dev_elbo);
        assert_eq!(host_px_r, dev_px_r);
        // A budget too small for the data falls back to host minibatches.
        assert_eq!(run(Some(1)).1, host_elbo);
    }

    /// Regression: a model that was used, cloned, trained before or reloaded must still
    /// learn (Burn resets require_grad on cloned/loaded inner-backend parameters).
    #[test]
    fn a_used_or_trained_model_keeps_learning() {
        let _rng = crate::TEST_RNG_LOCK.lock();
        let data = toy_data();
        let tc = TrainConfig {
            max_epochs: Some(1),
            seed: Some(2),
            batch_size: 16,
            ..Default::default()
        };
        let prior = crate::data::library_prior(&data);
        let m = Scvi::<Cpu>::new(ScviConfig::new(6, 2), prior, &Default::default()).unwrap();
        let w = |m: &Scvi<Cpu>| flat(m.decoder.px_scale_decoder.weight.val());
        let _ = w(&m); // use it first: parameters are now initialised
        let before = w(&m);
        let mut state = TrainState::default();
        let (once, r) = train_scvi(m.clone(), &data, &tc, &mut state, None);
        r.unwrap();
        assert_ne!(w(&once), before, "a used model did not train");
        let (twice, r) = train_scvi(once.clone(), &data, &tc, &mut state, None);
        r.unwrap();
        assert_ne!(w(&twice), w(&once), "a trained model did not train further");
        assert_eq!(state.history.len(), 2);
        assert_eq!(state.history[1].epoch, 1);
    }

    #[test]
    fn an_impossible_batch_size_is_refused_not_allocated() {
        if available_memory().is_some() {
            let e = check_minibatch_memory(usize::MAX / 1024, 1_000_000).unwrap_err();
            assert!(e.to_string().contains("batch_size"), "{e}");
        }
        assert!(check_minibatch_memory(128, 2000).is_ok());
    }
}
