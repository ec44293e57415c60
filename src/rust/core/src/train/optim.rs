//! Adam (coupled L2 weight decay, scvi-tools' `Adam`) and AdamW (decoupled, MULTIVI's) as one
//! optimiser: on the CPU each parameter is updated in one pass over its value, gradient and
//! moments, in place. Burn's own Adam/AdamW make about fourteen passes, each into a fresh
//! buffer; on MULTIVI's 24,744 x 128 weight matrices that was a third of a step. The
//! arithmetic is Burn's, operation for operation in f32, so both paths give the same numbers
//! (tested bit for bit); other backends (CUDA) run it as tensor ops.

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{LearningRate, SimpleOptimizer};
use burn::record::Record;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::backend::{cpu_values_mut, HostValues};

/// Adam's constants; `decoupled` makes it AdamW.
#[derive(Clone, Debug)]
pub struct FusedAdam {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    pub decoupled: bool,
}

/// A parameter's step count and moment estimates.
#[derive(Record, Clone)]
pub struct MomentState<B: Backend, const D: usize> {
    pub time: usize,
    pub moment_1: Tensor<B, D>,
    pub moment_2: Tensor<B, D>,
}

impl FusedAdam {
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(self) -> OptimizerAdaptor<Self, M, B> {
        OptimizerAdaptor::from(self)
    }

    /// The scalars of step `time` at learning rate `lr`, rounded to f32 where Burn rounds
    /// them.
    fn scalars(&self, lr: LearningRate, time: usize) -> Scalars {
        let t = time as i32;
        let (c1, c2) = (1.0 - self.beta_1.powi(t), 1.0 - self.beta_2.powi(t));
        Scalars {
            b1: self.beta_1,
            b2: self.beta_2,
            f1: 1.0 - self.beta_1,
            f2: 1.0 - self.beta_2,
            lr: lr as f32,
            c1,
            c2,
            combined: c2.sqrt() / c1,
            eps_scaled: self.epsilon * c2.sqrt(),
            eps: self.epsilon,
            wd: self.weight_decay,
            keep: (1.0 - lr * self.weight_decay as f64) as f32,
            decoupled: self.decoupled,
        }
    }
}

#[derive(Clone, Copy)]
struct Scalars {
    b1: f32,
    b2: f32,
    f1: f32,
    f2: f32,
    lr: f32,
    c1: f32,
    c2: f32,
    /// Adam's bias corrections folded as Burn folds them.
    combined: f32,
    eps_scaled: f32,
    eps: f32,
    wd: f32,
    keep: f32,
    decoupled: bool,
}

impl Scalars {
    /// One element: value `p`, gradient `g`, moments `m`, `v` (Burn's order of operations).
    /// The modes are constants so that the loops over slices vectorise.
    #[inline(always)]
    fn element<const DECOUPLED: bool, const DECAY: bool>(
        &self,
        p: &mut f32,
        g: f32,
        m: &mut f32,
        v: &mut f32,
    ) {
        let g = if !DECOUPLED && DECAY {
            *p * self.wd + g
        } else {
            g
        };
        *m = *m * self.b1 + g * self.f1;
        *v = *v * self.b2 + (g * g) * self.f2;
        if DECOUPLED {
            let delta = (*m / self.c1) / ((*v / self.c2).sqrt() + self.eps);
            let kept = if DECAY { *p * self.keep } else { *p };
            *p = kept - delta * self.lr;
        } else {
            let delta = (*m * self.combined) / (v.sqrt() + self.eps_scaled);
            *p -= delta * self.lr;
        }
    }

    #[inline(always)]
    fn slices<const DECOUPLED: bool, const DECAY: bool>(
        &self,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) {
        let n = p.len().min(g.len()).min(m.len()).min(v.len());
        let (p, g, m, v) = (&mut p[..n], &g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            self.element::<DECOUPLED, DECAY>(&mut p[i], g[i], &mut m[i], &mut v[i]);
        }
    }

    #[inline(always)]
    fn slices_any_cpu(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        match (self.decoupled, self.wd > 0.0) {
            (true, true) => self.slices::<true, true>(p, g, m, v),
            (true, false) => self.slices::<true, false>(p, g, m, v),
            (false, true) => self.slices::<false, true>(p, g, m, v),
            (false, false) => self.slices::<false, false>(p, g, m, v),
        }
    }

    /// One optimiser step over a chunk of a parameter.
    fn update(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        update_widest(self, p, g, m, v)
    }

    /// The same update as tensor ops (any backend).
    fn update_tensors<B: Backend, const D: usize>(
        &self,
        p: Tensor<B, D>,
        g: Tensor<B, D>,
        m: Tensor<B, D>,
        v: Tensor<B, D>,
    ) -> [Tensor<B, D>; 3] {
        let g = if !self.decoupled && self.wd > 0.0 {
            p.clone().mul_scalar(self.wd).add(g)
        } else {
            g
        };
        let m = m.mul_scalar(self.b1).add(g.clone().mul_scalar(self.f1));
        let v = v.mul_scalar(self.b2).add(g.square().mul_scalar(self.f2));
        let p = if self.decoupled {
            let delta = m
                .clone()
                .div_scalar(self.c1)
                .div(v.clone().div_scalar(self.c2).sqrt().add_scalar(self.eps));
            let kept = if self.wd > 0.0 {
                p.mul_scalar(self.keep)
            } else {
                p
            };
            kept - delta.mul_scalar(self.lr)
        } else {
            let delta = m
                .clone()
                .mul_scalar(self.combined)
                .div(v.clone().sqrt().add_scalar(self.eps_scaled));
            p - delta.mul_scalar(self.lr)
        };
        [p, m, v]
    }
}

// No level contracts a product and a sum into an FMA, so every product and sum is rounded
// as Burn's tensor ops round it.
crate::widest! {
    fn update_widest(s: &Scalars, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32])
        = Scalars::slices_any_cpu;
}

/// Elements per parallel task: large enough to amortise scheduling, small enough to share
/// a big matrix among the threads.
const CHUNK: usize = 1 << 16;

impl<B: Backend> SimpleOptimizer<B> for FusedAdam {
    type State<const D: usize> = MomentState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let time = state.as_ref().map_or(1, |s| s.time + 1);
        let s = self.scalars(lr, time);
        // Burn starts the moments from the first gradient; zeros give the same values. Fresh
        // zeroed pages: the first touch happens in the parallel update, not here.
        let (m, v) = match state {
            Some(st) => (st.moment_1, st.moment_2),
            None => {
                let zeros = || {
                    let shape = grad.shape();
                    let data = TensorData::new(vec![0f32; shape.num_elements()], shape);
                    Tensor::from_data(data, &grad.device())
                };
                (zeros(), zeros())
            }
        };
        if !crate::backend::computes_on_host::<B>() {
            // On a device the update stays there (host_values would copy every gradient down).
            let [p, m, v] = s.update_tensors(tensor, grad, m, v);
            return (
                p,
                Some(MomentState {
                    time,
                    moment_1: m,
                    moment_2: v,
                }),
            );
        }
        let grad_values = crate::backend::host_values(&grad);
        // Moved, not cloned: a buffer shared with another tensor would be copied first.
        let mut prims = [tensor, m, v].map(|t| t.into_primitive());
        let in_place = match &mut prims {
            [TensorPrimitive::Float(p), TensorPrimitive::Float(m), TensorPrimitive::Float(v)]
                if matches!(grad_values, HostValues::Borrowed(_)) =>
            {
                match (cpu_values_mut(p), cpu_values_mut(m), cpu_values_mut(v)) {
                    (Some(p), Some(m), Some(v))
                        if p.len() == grad_values.len()
                            && m.len() == p.len()
                            && v.len() == p.len() =>
                    {
                        p.par_chunks_mut(CHUNK)
                            .zip(m.par_chunks_mut(CHUNK))
                            .zip(v.par_chunks_mut(CHUNK))
                            .zip(grad_values.par_chunks(CHUNK))
                            .for_each(|(((p, m), v), g)| s.update(p, g, m, v));
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        let [p, m, v] = prims.map(Tensor::from_primitive);
        let [p, m, v] = if in_place {
            [p, m, v]
        } else {
            s.update_tensors(p, grad, m, v)
        };
        (
            p,
            Some(MomentState {
                time,
                moment_1: m,
                moment_2: v,
            }),
        )
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.moment_1 = state.moment_1.to_device(device);
        state.moment_2 = state.moment_2.to_device(device);
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Cpu, CpuTrain};
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::decay::WeightDecayConfig;
    use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, Optimizer};

    fn values(m: &Linear<CpuTrain>) -> Vec<f32> {
        let mut v = m.weight.val().into_data().into_vec::<f32>().unwrap();
        v.extend(
            m.bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .into_vec::<f32>()
                .unwrap(),
        );
        v
    }

    /// Steps of `optim` from `m` on a linear map fitted to fixed data (lr changes between
    /// steps).
    fn run<O: Optimizer<Linear<CpuTrain>, CpuTrain>>(
        mut optim: O,
        mut m: Linear<CpuTrain>,
    ) -> Vec<f32> {
        let dev = Default::default();
        let x = Tensor::<CpuTrain, 2>::from_data(
            TensorData::new(
                (0..60)
                    .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
                    .collect(),
                [10, 6],
            ),
            &dev,
        );
        for step in 0..6 {
            let loss = m.forward(x.clone()).powi_scalar(2).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            m = optim.step(1e-2 / (1 + step) as f64, m, grads);
        }
        values(&m)
    }

    #[test]
    fn fused_adam_and_adamw_equal_burns_bit_for_bit() {
        let start: Linear<CpuTrain> = LinearConfig::new(6, 4).init(&Default::default());
        // Burn initialises parameters lazily: read them once so every run starts here.
        let initial = values(&start);
        for (decoupled, wd) in [(false, 0.0f32), (false, 1e-2), (true, 0.0), (true, 1e-2)] {
            let fused = FusedAdam {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-8,
                weight_decay: wd,
                decoupled,
            };
            let fused = run(fused.init(), start.clone());
            let burn = if decoupled {
                let o = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(wd);
                run(o.init(), start.clone())
            } else {
                let decay = (wd > 0.0).then(|| WeightDecayConfig::new(wd));
                let o = AdamConfig::new()
                    .with_epsilon(1e-8)
                    .with_weight_decay(decay);
                run(o.init(), start.clone())
            };
            assert!(fused != initial, "the parameters moved");
            let same = fused.iter().zip(&burn).filter(|(a, b)| a == b).count();
            assert_eq!(same, burn.len(), "decoupled {decoupled}, weight decay {wd}");
        }
    }

    /// The tensor-op path (other backends) and the in-place path give the same numbers.
    #[test]
    fn tensor_path_equals_in_place_path() {
        let dev = Default::default();
        // Fixed pseudo-random values (Burn's generator is shared by the tests running at once).
        let t = |k: u64| {
            let v = (0..1000u64)
                .map(|i| {
                    let h = (i * 2_654_435_761 + k * 40_503).wrapping_mul(0x9E37_79B9) % 10_007;
                    (h as f32 / 10_007.0 - 0.5) * 4.0
                })
                .collect();
            Tensor::<Cpu, 1>::from_data(TensorData::new(v, [1000]), &dev)
        };
        let v = |t: Tensor<Cpu, 1>| t.into_data().into_vec::<f32>().unwrap();
        for decoupled in [false, true] {
            let opt = FusedAdam {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-2,
                weight_decay: 1e-3,
                decoupled,
            };
            let s = opt.scalars(3e-3, 4);
            let [tp, tm, tv] = s.update_tensors(t(1), t(2), t(3), t(4).abs()).map(v);
            let (mut hp, g, mut hm, mut hv) = (v(t(1)), v(t(2)), v(t(3)), v(t(4).abs()));
            s.update(&mut hp, &g, &mut hm, &mut hv);
            for (a, b) in [(&tp, &hp), (&tm, &hm), (&tv, &hv)] {
                let same = a.iter().zip(b.iter()).filter(|(x, y)| x == y).count();
                assert_eq!(same, a.len(), "decoupled {decoupled}");
            }
        }
    }
}
