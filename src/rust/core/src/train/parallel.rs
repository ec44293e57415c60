//! Data-parallel training: several workers, one per device, each holding a replica of the
//! module, on Burn's collective operations (burn-collective). Every worker takes its shard of
//! each minibatch and the workers add up their gradients, weighted by shard size, before every
//! optimizer step, so that the replicas take the same steps as one model on the whole
//! minibatch.
//!
//! What keeps a run exact and reproducible: the replicas start from rank 0's weights (a
//! broadcast); every worker derives the same split and minibatch schedule from the seed and
//! takes a contiguous shard of each minibatch; batch-norm running statistics are averaged at
//! the end of every epoch; the KL warm-up counts global steps; training and validation sums are
//! added up across workers, so that the history, the learning-rate schedule and early stopping
//! see all cells and decide alike everywhere; each worker draws its noise from its own stream
//! (seed and rank); rank 0 reports progress. A Ctrl-C and a non-finite loss travel with the
//! gradients, so every worker stops at the same step; a failed worker stops the others with
//! an error instead of leaving them waiting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, CollectiveError, PeerId, ReduceOperation};

use crate::error::{Error, Result};
use crate::train::history::{EpochRecord, Observer, Sums, TrainState, TrainSummary};

/// The most workers one run takes.
pub const MAX_WORKERS: usize = 256;

/// One worker's place in a data-parallel run.
pub(crate) struct Peer {
    rank: usize,
    n: usize,
    /// Set when a worker failed: the others stop at their next collective operation.
    failed: Arc<AtomicBool>,
}

const OTHER_FAILED: &str = "stopped because another worker failed";

impl Peer {
    pub(crate) fn rank(&self) -> usize {
        self.rank
    }

    pub(crate) fn workers(&self) -> usize {
        self.n
    }

    /// This worker's contiguous part of a minibatch (sizes differ by at most one cell).
    pub(crate) fn shard<'a>(&self, cells: &'a [usize]) -> &'a [usize] {
        let len = cells.len();
        &cells[self.rank * len / self.n..(self.rank + 1) * len / self.n]
    }

    fn lost(&self, e: CollectiveError) -> Error {
        if self.failed.load(Ordering::SeqCst) {
            Error::Workers(OTHER_FAILED.into())
        } else {
            Error::Workers(format!("worker {} lost the others ({e:?})", self.rank))
        }
    }

    fn check(&self) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::Workers(OTHER_FAILED.into()));
        }
        Ok(())
    }

    /// The element-wise sum of every worker's `t`.
    fn sum<B: Backend>(&self, t: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        self.check()?;
        let id = PeerId::from(self.rank);
        let out =
            burn_collective::all_reduce::<B>(id, t.into_primitive().tensor(), ReduceOperation::Sum)
                .map_err(|e| self.lost(e))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }

    /// Rank 0's `t`, on every worker.
    fn broadcast_rank0<B: Backend>(&self, t: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        self.check()?;
        let id = PeerId::from(self.rank);
        let mine = (self.rank == 0).then(|| t.into_primitive().tensor());
        let out = burn_collective::broadcast::<B>(id, mine).map_err(|e| self.lost(e))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }

    /// Sums of host numbers across workers (as f32: history values and flags).
    pub(crate) fn sum_host<B: Backend>(
        &self,
        values: &[f64],
        device: &B::Device,
    ) -> Result<Vec<f64>> {
        let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
        let t = Tensor::<B, 1>::from_data(TensorData::new(v, [values.len()]), device);
        Ok(host(self.sum(t)?).into_iter().map(f64::from).collect())
    }

    /// An epoch's sums, over every worker's cells.
    pub(crate) fn sum_sums<B: Backend>(&self, sums: &Sums, device: &B::Device) -> Result<Sums> {
        let v = self.sum_host::<B>(&sums.to_array(), device)?;
        Ok(Sums::from_array([v[0], v[1], v[2], v[3]]))
    }

    /// Rank 0's parameters and running statistics in every replica.
    pub(crate) fn replicate<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: M,
    ) -> Result<M> {
        let gathered = flatten(&module, |_| true);
        match gathered {
            Some(all) => {
                let all = self.broadcast_rank0(all)?;
                Ok(module.map(&mut Scatter::<B, _> {
                    values: all,
                    offset: 0,
                    pick: |_| true,
                }))
            }
            None => Ok(module),
        }
    }

    /// Batch-norm running statistics averaged over the replicas (every worker updated its own
    /// from its shards; the average is the running mean of the shards' statistics).
    pub(crate) fn average_running<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: M,
    ) -> Result<M> {
        let running = |p: bool| !p;
        match flatten(&module, running) {
            Some(stats) => {
                let mean = self.sum(stats)? / self.n as f64;
                Ok(module.map(&mut Scatter::<B, _> {
                    values: mean,
                    offset: 0,
                    pick: running,
                }))
            }
            None => Ok(module),
        }
    }

    /// Replaces this worker's gradients of `module` by their sum over workers (each worker's
    /// loss was weighted by its share of the minibatch), in one all-reduce that also adds up
    /// `flags`; returns the summed flags. A parameter without a gradient on every worker
    /// keeps none (the optimizer then leaves it alone, as with one worker).
    pub(crate) fn reduce_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
        grads: &mut GradientsParams,
        flags: &[f64],
        device: &B::Device,
    ) -> Result<Vec<f64>> {
        let mut pack = PackGradients::<B> {
            grads,
            parts: Vec::new(),
            present: Vec::new(),
        };
        module.visit(&mut pack);
        let (mut parts, present) = (pack.parts, pack.present);
        let mut tail: Vec<f32> = flags.iter().map(|&f| f as f32).collect();
        tail.extend(present.iter().map(|&p| f32::from(u8::from(p))));
        let n_tail = tail.len();
        parts.push(Tensor::from_data(TensorData::new(tail, [n_tail]), device));
        let summed = self.sum(Tensor::cat(parts, 0))?;
        let total = summed.dims()[0];
        let tail = host(summed.clone().narrow(0, total - n_tail, n_tail));
        let (flags_out, present_out) = tail.split_at(flags.len());
        let mut unpack = UnpackGradients::<B> {
            grads,
            values: summed,
            offset: 0,
            present: present_out.iter().map(|&p| p > 0.0).collect(),
            index: 0,
        };
        module.visit(&mut unpack);
        Ok(flags_out.iter().map(|&f| f64::from(f)).collect())
    }
}

fn host<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap_or_default()
}

/// The module's float tensors that `pick` selects by their require-grad flag (parameters:
/// true; running statistics: false), flattened in visit order into one vector.
fn flatten<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    pick: impl Fn(bool) -> bool,
) -> Option<Tensor<B::InnerBackend, 1>> {
    struct Gather<B: AutodiffBackend, F> {
        parts: Vec<Tensor<B::InnerBackend, 1>>,
        pick: F,
    }
    impl<B: AutodiffBackend, F: Fn(bool) -> bool> ModuleVisitor<B> for Gather<B, F> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if (self.pick)(param.is_require_grad()) {
                let t = param.val().inner();
                let n = t.shape().num_elements();
                self.parts.push(t.reshape([n]));
            }
        }
    }
    let mut g = Gather::<B, _> {
        parts: Vec::new(),
        pick,
    };
    module.visit(&mut g);
    (!g.parts.is_empty()).then(|| Tensor::cat(g.parts, 0))
}

/// Writes consecutive slices of `values` into the float tensors `pick` selects, in visit order
/// (the inverse of [`flatten`]).
struct Scatter<B: AutodiffBackend, F> {
    values: Tensor<B::InnerBackend, 1>,
    offset: usize,
    pick: F,
}

impl<B: AutodiffBackend, F: Fn(bool) -> bool> ModuleMapper<B> for Scatter<B, F> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let require_grad = param.is_require_grad();
        if !(self.pick)(require_grad) {
            return param;
        }
        let (id, tensor, _) = param.consume();
        let dims = tensor.dims();
        let n: usize = dims.iter().product();
        let slice = self.values.clone().narrow(0, self.offset, n).reshape(dims);
        self.offset += n;
        let value = Tensor::<B, D>::from_inner(slice);
        Param::initialized(
            id,
            if require_grad {
                value.require_grad()
            } else {
                value
            },
        )
    }
}

/// Every trainable parameter's gradient (zeros where it has none), and whether it had one.
struct PackGradients<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
    present: Vec<bool>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for PackGradients<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.is_require_grad() {
            return;
        }
        let value = param.val().inner();
        let n = value.shape().num_elements();
        let part = match self.grads.get::<B::InnerBackend, D>(param.id) {
            Some(g) => {
                self.present.push(true);
                g.reshape([n])
            }
            None => {
                self.present.push(false);
                Tensor::zeros([n], &value.device())
            }
        };
        self.parts.push(part);
    }
}

/// The summed gradients back in place of the worker's own.
struct UnpackGradients<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    values: Tensor<B::InnerBackend, 1>,
    offset: usize,
    present: Vec<bool>,
    index: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for UnpackGradients<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.is_require_grad() {
            return;
        }
        let id: ParamId = param.id;
        let dims = param.val().dims();
        let n: usize = dims.iter().product();
        self.grads.remove::<B::InnerBackend, D>(id);
        if self.present.get(self.index).copied().unwrap_or(false) {
            let g = self.values.clone().narrow(0, self.offset, n).reshape(dims);
            self.grads.register::<B::InnerBackend, D>(id, g);
        }
        self.offset += n;
        self.index += 1;
    }
}

/// What rank 0 reports at the end of an epoch, for the front end's observer on its thread.
struct EpochReport {
    record: EpochRecord,
    epoch_in_run: usize,
    max_epochs: usize,
    elapsed: f64,
}

/// A worker's observer: rank 0 passes its epochs on to the supervising thread; every worker
/// sees a Ctrl-C caught there.
struct Relay {
    report: Option<mpsc::Sender<EpochReport>>,
    stop: Arc<AtomicBool>,
}

impl Observer for Relay {
    fn on_epoch(&mut self, record: &EpochRecord, epoch: usize, max_epochs: usize, elapsed: f64) {
        if let Some(tx) = &self.report {
            let _ = tx.send(EpochReport {
                record: record.clone(),
                epoch_in_run: epoch,
                max_epochs,
                elapsed,
            });
        }
    }
    fn should_stop(&mut self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Runs `work` (one worker's training) on a thread of rayon's pool while the calling thread
/// passes its epochs on to `observer` and polls that for Ctrl-C (R's check may only run on
/// R's thread). On the CPU backend the trainer then takes part in the parallel passes of its
/// own step: called from outside the pool it sleeps through each of them while the pool's
/// threads share the cores with it, waking and yielding at every hand-off (CLI A/B, 30k
/// cells, 8 alternated rounds: 1.96 -> 1.82 s/epoch). A panic in `work` reaches the caller.
pub(crate) fn on_pool_thread<R: Send>(
    observer: &mut dyn Observer,
    work: impl FnOnce(&mut dyn Observer) -> R + Send,
) -> R {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<EpochReport>();
    let mut relay = Relay {
        report: Some(tx),
        stop: stop.clone(),
    };
    let mut outcome = None;
    rayon::in_place_scope(|s| {
        let slot = &mut outcome;
        // The relay (and its sender) goes when the work ends, however it ends.
        s.spawn(move |_| *slot = Some(work(&mut relay)));
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(r) => observer.on_epoch(&r.record, r.epoch_in_run, r.max_epochs, r.elapsed),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if observer.should_stop() {
                stop.store(true, Ordering::SeqCst);
            }
        }
    });
    outcome.expect("the scope ends after the work it spawned")
}

/// What a worker thread ended with: its module and result, or why it stopped (a panic).
type Joined<M> = std::result::Result<(M, Result<TrainSummary>), String>;

/// burn-collective keeps one session per backend and process: data-parallel runs take turns.
static SESSION: Mutex<()> = Mutex::new(());

/// What a worker runs: its own input (its replica), its place, its training state (rank 0:
/// the caller's) and observer.
pub(crate) type Worker<'a, W, M> =
    dyn Fn(W, Peer, &mut TrainState, &mut dyn Observer) -> (M, Result<TrainSummary>) + Sync + 'a;

/// Runs one worker per device on threads of this process while the calling thread (R's) reports
/// rank 0's progress and polls for Ctrl-C. Returns rank 0's module and the run's result: the
/// first failure of any worker, which stops the others (`fallback` when rank 0 itself did not
/// return a module).
pub(crate) fn supervise<B: Backend, W: Send, M: Send>(
    devices: &[B::Device],
    inputs: Vec<W>,
    state: &mut TrainState,
    observer: &mut dyn Observer,
    fallback: M,
    worker: &Worker<'_, W, M>,
) -> (M, Result<TrainSummary>) {
    let _session = SESSION.lock().unwrap_or_else(|p| p.into_inner());
    let n = devices.len();
    burn_collective::reset_collective::<B>();
    let failed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<EpochReport>();
    let mut scratch: Vec<TrainState> = (1..n).map(|_| state.clone()).collect();
    let outcome = std::thread::scope(|s| {
        let mut states: Vec<&mut TrainState> = vec![state];
        states.extend(scratch.iter_mut());
        let mut handles: Vec<_> = states
            .into_iter()
            .zip(inputs)
            .enumerate()
            .map(|(rank, (st, input))| {
                let peer = Peer {
                    rank,
                    n,
                    failed: failed.clone(),
                };
                let mut relay = Relay {
                    report: (rank == 0).then(|| tx.clone()),
                    stop: stop.clone(),
                };
                let device = devices[rank].clone();
                let failed = failed.clone();
                Some(s.spawn(move || {
                    let id = PeerId::from(rank);
                    let config = CollectiveConfig::default().with_num_devices(n);
                    if let Err(e) = burn_collective::register::<B>(id, device, config) {
                        failed.store(true, Ordering::SeqCst);
                        return Err(format!("worker {rank} could not join the others ({e:?})"));
                    }
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        worker(input, peer, st, &mut relay)
                    }));
                    // A failed worker stays registered, so that the others wait for it (and
                    // are then released with an error) instead of going on without it.
                    if matches!(&out, Ok((_, Ok(_)))) {
                        let _ = burn_collective::finish_collective::<B>(id);
                    }
                    out.map_err(|p| {
                        let what = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        format!("worker {rank} stopped on an internal error: {what}")
                    })
                }))
            })
            .collect();
        drop(tx);
        let mut results: Vec<Option<Joined<M>>> = (0..n).map(|_| None).collect();
        let forward = |r: EpochReport, observer: &mut dyn Observer| {
            observer.on_epoch(&r.record, r.epoch_in_run, r.max_epochs, r.elapsed)
        };
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(r) => forward(r, observer),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if observer.should_stop() {
                stop.store(true, Ordering::SeqCst);
            }
            for (rank, h) in handles.iter_mut().enumerate() {
                if h.as_ref().is_some_and(|h| h.is_finished()) {
                    let joined = h.take().map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(format!("worker {rank} panicked")))
                    });
                    if let Some(r) = joined {
                        if !matches!(&r, Ok((_, Ok(_)))) {
                            failed.store(true, Ordering::SeqCst);
                        }
                        results[rank] = Some(r);
                    }
                }
            }
            if failed.load(Ordering::SeqCst) {
                // Drops the operations the others wait on; they return at once.
                burn_collective::reset_collective::<B>();
            }
            if handles.iter().all(Option::is_none) {
                break;
            }
        }
        while let Ok(r) = rx.try_recv() {
            forward(r, observer);
        }
        results
    });
    burn_collective::reset_collective::<B>();
    let mut modules = Vec::with_capacity(n);
    let mut results = Vec::with_capacity(n);
    for (rank, r) in outcome.into_iter().enumerate() {
        let (m, r) = match r {
            Some(Ok((m, r))) => (Some(m), r),
            Some(Err(msg)) => (None, Err(Error::Workers(msg))),
            None => (
                None,
                Err(Error::Workers(format!("worker {rank} did not finish"))),
            ),
        };
        modules.push(m);
        results.push(r);
    }
    // The first failure that was not the others stopping for it.
    let root = results
        .iter()
        .position(|r| matches!(r, Err(e) if !matches!(e, Error::Workers(m) if m == OTHER_FAILED)))
        .unwrap_or(0);
    let module = modules.into_iter().next().flatten().unwrap_or(fallback);
    (module, results.swap_remove(root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use crate::train::Silent;

    fn ones(n: usize) -> Tensor<Cpu, 1> {
        Tensor::ones([n], &Default::default())
    }

    /// Three workers on threads running `worker`.
    fn three<M: Send>(fallback: M, worker: &Worker<'_, (), M>) -> (M, Result<TrainSummary>) {
        let devices = vec![Default::default(); 3];
        let mut state = TrainState::default();
        supervise::<Cpu, _, _>(
            &devices,
            vec![(); 3],
            &mut state,
            &mut Silent,
            fallback,
            worker,
        )
    }

    #[test]
    fn workers_add_up_and_a_failed_worker_stops_the_others_with_its_error() {
        let sum_everywhere =
            |_: (), peer: Peer, _: &mut TrainState, _: &mut dyn Observer| match peer
                .sum(ones(4) * (peer.rank() + 1) as f64)
            {
                Ok(t) => (host(t), Ok(summary())),
                Err(e) => (Vec::new(), Err(e)),
            };
        let (v, r) = three(Vec::new(), &sum_everywhere);
        r.unwrap();
        assert_eq!(v, vec![6.0; 4]);

        // Worker 2 fails after two steps; the others would go on for ever.
        let failing = |_: (), peer: Peer, _: &mut TrainState, _: &mut dyn Observer| {
            for step in 0.. {
                if peer.rank() == 2 && step == 2 {
                    return (0, Err(Error::InvalidData("worker 2's minibatch".into())));
                }
                if let Err(e) = peer.sum(ones(8)) {
                    return (step, Err(e));
                }
            }
            unreachable!()
        };
        let (steps, r) = three(usize::MAX, &failing);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("worker 2's minibatch"), "{e}");
        assert_eq!(steps, 2, "rank 0 took a step the others did not");

        // A panic is an error too, and the process can run another session afterwards.
        let panics = |_: (), peer: Peer, _: &mut TrainState, _: &mut dyn Observer| {
            if peer.rank() == 1 {
                panic!("boom");
            }
            (0, peer.sum(ones(2)).map(|_| summary()))
        };
        let (_, r) = three(0, &panics);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("worker 1") && e.contains("boom"), "{e}");
        let (v, r) = three(Vec::new(), &sum_everywhere);
        r.unwrap();
        assert_eq!(v, vec![6.0; 4]);
    }

    fn summary() -> TrainSummary {
        TrainSummary {
            epochs_run: 0,
            max_epochs: 0,
            interrupted: false,
            early_stopped: false,
            seconds: 0.0,
        }
    }
}
