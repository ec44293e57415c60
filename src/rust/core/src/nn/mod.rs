//! Neural building blocks with PyTorch semantics (scvi.md §3): batch norm with eps 1e-3,
//! momentum 0.01 and unbiased running variance, non-affine layer norm, covariate injection.
//! Train/eval behaviour is an explicit flag, never inferred from the backend.

pub mod adversarial;
pub mod linear;

pub use linear::linear;

use burn::module::{Module, ModuleMapper, Param, ParamId, RunningState};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{activation, backend::Backend, Distribution, Tensor, TensorData};
use rayon::prelude::*;

pub const BN_EPS: f64 = 1e-3;
pub const BN_MOMENTUM: f64 = 0.01;
pub const LN_EPS: f64 = 1e-5;

/// A trainable parameter holding `t`. `Param::from_tensor` would mark a parameter created on a
/// non-autodiff backend as frozen (its flag is read off the tensor), and models are built on
/// the inner backend, so the flag is set explicitly here.
pub fn trainable<B: Backend, const D: usize>(t: Tensor<B, D>) -> Param<Tensor<B, D>> {
    let (shape, device, data) = (t.shape(), t.device(), t.into_data());
    Param::uninitialized(
        ParamId::new(),
        move |dev, require_grad| {
            Tensor::from_data(data.clone(), dev).set_require_grad(require_grad)
        },
        device,
        true,
        shape,
    )
}

/// Rebuilds every parameter of a module as trainable with its current value. Burn derives a
/// parameter's `require_grad` from its tensor when the parameter is cloned or loaded, and on
/// the inner (non-autodiff) backend that reads false: a model that was cloned after use,
/// trained before or loaded from disk would otherwise silently stop learning. (Running
/// statistics pass through the same mapper; their flag is never used.)
pub struct Retrainable;

impl<B: Backend> ModuleMapper<B> for Retrainable {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, _) = param.consume();
        let (shape, device, data) = (tensor.shape(), tensor.device(), tensor.into_data());
        Param::uninitialized(
            id,
            move |dev, require_grad| {
                Tensor::from_data(data.clone(), dev).set_require_grad(require_grad)
            },
            device,
            true,
            shape,
        )
    }
}

/// The module with every lazily drawn parameter drawn now, in visit order (before replicas
/// of it are made: each would draw its own).
pub fn initialized<B: Backend, M: Module<B>>(module: M) -> M {
    struct Draw;
    impl<B: Backend> burn::module::ModuleVisitor<B> for Draw {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Draw);
    module
}

/// A trainable N(0, 1)-initialised parameter (see [`lazy_random`]).
pub fn lazy_normal<B: Backend, const D: usize>(
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    lazy_random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// A trainable parameter drawn from `distribution`. Like Burn's Linear weights it is drawn
/// lazily, at first use: `train()` seeds the backend first, so the seed also fixes the
/// initialisation.
pub fn lazy_random<B: Backend, const D: usize>(
    shape: [usize; D],
    distribution: Distribution,
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    Param::uninitialized(
        ParamId::new(),
        move |dev, require_grad| {
            Tensor::random(shape, distribution, dev).set_require_grad(require_grad)
        },
        device.clone(),
        true,
        shape.into(),
    )
}

/// `torch.nn.BatchNorm1d` as scvi-tools configures it.
#[derive(Module, Debug)]
pub struct TorchBatchNorm<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
    pub beta: Param<Tensor<B, 1>>,
    pub running_mean: RunningState<Tensor<B, 1>>,
    pub running_var: RunningState<Tensor<B, 1>>,
    /// 0 freezes the running statistics (scArches); minibatch statistics are still used.
    pub momentum: f64,
}

impl<B: Backend> TorchBatchNorm<B> {
    pub fn new(features: usize, device: &B::Device) -> Self {
        Self {
            gamma: trainable(Tensor::ones([features], device)),
            beta: trainable(Tensor::zeros([features], device)),
            running_mean: RunningState::new(Tensor::zeros([features], device)),
            running_var: RunningState::new(Tensor::ones([features], device)),
            momentum: BN_MOMENTUM,
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>, training: bool) -> Tensor<B, 2> {
        let [n, _] = x.dims();
        let (mean, var) = if training {
            let mean = x.clone().mean_dim(0);
            let var = (x.clone() - mean.clone()).powf_scalar(2.0).mean_dim(0);
            if self.momentum > 0.0 {
                let m = self.momentum;
                let unbiased = var.clone().detach() * (n as f64 / (n as f64 - 1.0));
                let rm = self.running_mean.value_sync() * (1.0 - m)
                    + mean.clone().detach().squeeze_dim::<1>(0) * m;
                let rv =
                    self.running_var.value_sync() * (1.0 - m) + unbiased.squeeze_dim::<1>(0) * m;
                self.running_mean.update(rm.detach());
                self.running_var.update(rv.detach());
            }
            (mean, var)
        } else {
            (
                self.running_mean.value_sync().unsqueeze_dim(0),
                self.running_var.value_sync().unsqueeze_dim(0),
            )
        };
        (x - mean) / (var + BN_EPS).sqrt() * self.gamma.val().unsqueeze_dim(0)
            + self.beta.val().unsqueeze_dim(0)
    }
}

/// Row-wise layer norm without affine parameters.
pub fn layer_norm<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let mean = x.clone().mean_dim(1);
    let centered = x - mean;
    let var = centered.clone().powf_scalar(2.0).mean_dim(1);
    centered / (var + LN_EPS).sqrt()
}

thread_local! {
    /// The random stream of a data-parallel training worker. The backend's generator is one
    /// per process: workers drawing from it in turn would make a seed's result depend on
    /// thread timing.
    /// (Boxed: this library's thread-locals live in the static TLS block R's dlopen() has
    /// little room for.)
    static WORKER_RNG: std::cell::RefCell<Option<Box<rand::rngs::StdRng>>> =
        const { std::cell::RefCell::new(None) };
}

/// Gives this thread its own random stream for [`draw`] (None: the backend's again).
pub fn set_worker_rng(seed: Option<u64>) {
    use rand::SeedableRng;
    WORKER_RNG
        .with(|r| *r.borrow_mut() = seed.map(|s| Box::new(rand::rngs::StdRng::seed_from_u64(s))));
}

/// `Tensor::random` for the draws training makes (latent samples, dropout masks): from the
/// worker's own stream when [`set_worker_rng`] set one, else from the backend's generator.
pub fn draw<B: Backend, const D: usize>(
    shape: [usize; D],
    distribution: Distribution,
    device: &B::Device,
) -> Tensor<B, D> {
    use rand::RngExt;
    let host = WORKER_RNG.with(|r| {
        let mut r = r.borrow_mut();
        let rng: &mut rand::rngs::StdRng = r.as_mut()?;
        let n = shape.iter().product::<usize>();
        let one = |rng: &mut rand::rngs::StdRng| -> Option<f64> {
            Some(match distribution {
                Distribution::Normal(mean, std) => mean + std * crate::dist::sample::normal(rng),
                Distribution::Uniform(lo, hi) => lo + (hi - lo) * rng.random::<f64>(),
                Distribution::Bernoulli(p) => f64::from(u8::from(rng.random::<f64>() < p)),
                _ => return None,
            })
        };
        (0..n)
            .map(|_| one(rng).map(|v| v as f32))
            .collect::<Option<Vec<f32>>>()
    });
    match host {
        Some(values) => Tensor::from_data(TensorData::new(values, shape), device),
        None => Tensor::random(shape, distribution, device),
    }
}

/// Inverted dropout, active only in training mode. The mask comes from a SplitMix64 stream
/// on the host seeded by one draw of the backend's RNG (so `train(seed = )` still fixes it):
/// Burn's per-element sampler took a third of a SPLICEVI step, whose partial encoder drops
/// out a layer of every observed (cell, junction) pair.
pub fn dropout<B: Backend>(x: Tensor<B, 2>, p: f64, training: bool) -> Tensor<B, 2> {
    if !training || p <= 0.0 {
        return x;
    }
    let device = x.device();
    let [n, k] = x.dims();
    let draw: Vec<f32> = draw::<B, 1>([2], Distribution::Uniform(0.0, 1.0), &device)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap_or_default();
    let bits = |i: usize| (draw.get(i).copied().unwrap_or(0.5) as f64 * (1u64 << 24) as f64) as u64;
    let mut state = (bits(0) << 24) | bits(1);
    let keep = ((1.0 - p) * 4_294_967_296.0) as u64;
    let scale = (1.0 / (1.0 - p)) as f32;
    let mut mask = Vec::with_capacity(n * k + 1);
    while mask.len() < n * k {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        for half in [z & 0xffff_ffff, z >> 32] {
            mask.push(if half < keep { scale } else { 0.0 });
        }
    }
    mask.truncate(n * k);
    x * Tensor::<B, 2>::from_data(TensorData::new(mask, [n, k]), &device)
}

/// One hidden layer: Linear → [BatchNorm] → [LayerNorm] → [ReLU] → [Dropout].
#[derive(Module, Debug)]
pub struct FcLayer<B: Backend> {
    pub linear: Linear<B>,
    pub batch_norm: Option<TorchBatchNorm<B>>,
    pub layer_norm: bool,
    pub activation: bool,
}

/// Options of an [`FcLayers`] stack.
#[derive(Clone, Debug)]
pub struct FcOptions {
    pub n_in: usize,
    pub n_out: usize,
    /// Width of the one-hot covariate block (0 = none).
    pub n_cov: usize,
    pub n_layers: usize,
    pub n_hidden: usize,
    pub dropout: f64,
    pub batch_norm: bool,
    pub layer_norm: bool,
    pub inject_covariates: bool,
    /// LeakyReLU (slope 0.01) instead of ReLU.
    pub leaky_relu: bool,
}

/// `FCLayers`: the MLP shared by every encoder and decoder.
#[derive(Module, Debug)]
pub struct FcLayers<B: Backend> {
    pub layers: Vec<FcLayer<B>>,
    pub inject_covariates: bool,
    pub dropout: f64,
    #[module(skip)]
    pub leaky_relu: bool,
}

impl<B: Backend> FcLayers<B> {
    pub fn new(o: &FcOptions, device: &B::Device) -> Self {
        let mut widths = vec![o.n_in];
        widths.extend(std::iter::repeat_n(
            o.n_hidden,
            o.n_layers.saturating_sub(1),
        ));
        widths.push(o.n_out);
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let injected = i == 0 || o.inject_covariates;
                let d_in = w[0] + if injected { o.n_cov } else { 0 };
                FcLayer {
                    linear: LinearConfig::new(d_in, w[1]).init(device),
                    batch_norm: o.batch_norm.then(|| TorchBatchNorm::new(w[1], device)),
                    layer_norm: o.layer_norm,
                    activation: true,
                }
            })
            .collect();
        Self {
            layers,
            inject_covariates: o.inject_covariates,
            dropout: o.dropout,
            leaky_relu: o.leaky_relu,
        }
    }

    /// A single linear map without bias or activation, then the optional normalisations
    /// (scvi-tools' `FCLayers(n_layers = 1, use_activation = False, bias = False)`, the maps of
    /// its linear decoders).
    pub fn new_linear(o: &FcOptions, device: &B::Device) -> Self {
        let layer = FcLayer {
            linear: LinearConfig::new(o.n_in + o.n_cov, o.n_out)
                .with_bias(false)
                .init(device),
            batch_norm: o.batch_norm.then(|| TorchBatchNorm::new(o.n_out, device)),
            layer_norm: o.layer_norm,
            activation: false,
        };
        Self {
            layers: vec![layer],
            inject_covariates: false,
            dropout: 0.0,
            leaky_relu: false,
        }
    }

    /// `cov` is the one-hot covariate block (None when the stack has no covariates).
    pub fn forward(
        &self,
        h: Tensor<B, 2>,
        cov: Option<&Tensor<B, 2>>,
        training: bool,
    ) -> Tensor<B, 2> {
        self.forward_from(0, h, cov, training)
    }

    /// As [`FcLayers::forward`] from layer `first` on (its covariates are injected as
    /// usual).
    fn forward_from(
        &self,
        first: usize,
        mut h: Tensor<B, 2>,
        cov: Option<&Tensor<B, 2>>,
        training: bool,
    ) -> Tensor<B, 2> {
        for (i, layer) in self.layers.iter().enumerate().skip(first) {
            if let Some(c) = cov {
                if i == 0 || self.inject_covariates {
                    h = Tensor::cat(vec![h, c.clone()], 1);
                }
            }
            h = self.after_linear(layer, linear(&layer.linear, h), training);
        }
        h
    }

    /// A layer's normalisation, activation and dropout, after its linear map.
    fn after_linear(
        &self,
        layer: &FcLayer<B>,
        mut h: Tensor<B, 2>,
        training: bool,
    ) -> Tensor<B, 2> {
        if let Some(bn) = &layer.batch_norm {
            h = bn.forward(h, training);
        }
        if layer.layer_norm {
            h = layer_norm(h);
        }
        if layer.activation {
            h = if self.leaky_relu {
                activation::leaky_relu(h, 0.01)
            } else {
                activation::relu(h)
            };
        }
        dropout(h, self.dropout, training)
    }

    /// As [`FcLayers::forward`] on sparse input rows without covariates: the first linear
    /// map is a sparse product on the host (the dense product would mostly multiply zeros);
    /// its weight's gradient is left to [`SparseInput::weight_gradient`] after the backward
    /// pass. For the CPU backend: the models give device backends dense inputs instead.
    pub fn forward_sparse(
        &self,
        x: &std::sync::Arc<SparseRows>,
        training: bool,
    ) -> (Tensor<B, 2>, SparseInput<B>) {
        let first = &self.layers[0];
        let weight = first.linear.weight.val();
        let device = weight.device();
        let [d_in, d_out] = weight.dims();
        let y = x.matmul(&crate::backend::host_values(&weight), d_in, d_out);
        let n = x.n_rows();
        let product =
            Tensor::<B, 2>::from_data(TensorData::new(y, [n, d_out]), &device).require_grad();
        let mut h = product.clone();
        if let Some(b) = &first.linear.bias {
            h = h + b.val().unsqueeze_dim(0);
        }
        let h = self.after_linear(first, h, training);
        let pending = SparseInput {
            weight: first.linear.weight.id,
            product,
            input: x.clone(),
            d_in,
        };
        (self.forward_from(1, h, None, training), pending)
    }
}

/// Rows of a sparse matrix (CSR), the input of a sparse first layer.
#[derive(Clone, Debug, Default)]
pub struct SparseRows {
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseRows {
    pub fn n_rows(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }

    /// The rows as a dense row-major matrix of `width` columns.
    pub fn to_dense(&self, width: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.n_rows() * width];
        for (r, row) in out.chunks_mut(width.max(1)).enumerate() {
            for k in self.indptr[r]..self.indptr[r + 1] {
                if let Some(o) = row.get_mut(self.indices[k] as usize) {
                    *o = self.values[k];
                }
            }
        }
        out
    }

    /// Rows x `w` (row-major d_in x d_out), a row per task.
    fn matmul(&self, w: &[f32], d_in: usize, d_out: usize) -> Vec<f32> {
        let mut y = vec![0f32; self.n_rows() * d_out];
        y.par_chunks_mut(d_out.max(1))
            .enumerate()
            .for_each(|(r, out)| {
                for k in self.indptr[r]..self.indptr[r + 1] {
                    let j = self.indices[k] as usize;
                    if j < d_in {
                        let v = self.values[k];
                        for (o, &wj) in out.iter_mut().zip(&w[j * d_out..(j + 1) * d_out]) {
                            *o += v * wj;
                        }
                    }
                }
            });
        y
    }

    /// Rowsᵀ x `dy` (n x d_out): d_in x d_out. The entries are regrouped by column first
    /// (a counting sort), so each output row is one task's and the cells add up in order.
    fn transpose_matmul(&self, dy: &[f32], d_in: usize, d_out: usize) -> Vec<f32> {
        let mut start = vec![0usize; d_in + 1];
        for &j in &self.indices {
            if (j as usize) < d_in {
                start[j as usize + 1] += 1;
            }
        }
        for j in 0..d_in {
            start[j + 1] += start[j];
        }
        let mut next = start.clone();
        let mut entries = vec![(0u32, 0f32); start[d_in]];
        for r in 0..self.n_rows() {
            for k in self.indptr[r]..self.indptr[r + 1] {
                let j = self.indices[k] as usize;
                if j < d_in {
                    entries[next[j]] = (r as u32, self.values[k]);
                    next[j] += 1;
                }
            }
        }
        let mut g = vec![0f32; d_in * d_out];
        g.par_chunks_mut(d_out.max(1))
            .enumerate()
            .for_each(|(j, out)| {
                for &(r, v) in &entries[start[j]..start[j + 1]] {
                    let row = &dy[r as usize * d_out..(r as usize + 1) * d_out];
                    for (o, &d) in out.iter_mut().zip(row) {
                        *o += v * d;
                    }
                }
            });
        g
    }
}

/// The pending weight gradient of a sparse first layer: ∂L/∂W = Xᵀ · ∂L/∂(XW), once the
/// backward pass has given ∂L/∂(XW).
pub struct SparseInput<B: Backend> {
    pub weight: ParamId,
    /// X·W, a leaf of the graph.
    pub product: Tensor<B, 2>,
    pub input: std::sync::Arc<SparseRows>,
    /// Input width of the layer (rows of W).
    pub d_in: usize,
}

impl<B: burn::tensor::backend::AutodiffBackend> SparseInput<B> {
    /// ∂L/∂W from the gradients of a backward pass (None when X·W was not used).
    pub fn weight_gradient(&self, grads: &B::Gradients) -> Option<Tensor<B::InnerBackend, 2>> {
        let dy = self.product.grad(grads)?;
        let device = dy.device();
        let [n, d_out] = dy.dims();
        let dy = crate::backend::host_values(&dy);
        if n != self.input.n_rows() {
            return None;
        }
        let g = self.input.transpose_matmul(&dy, self.d_in, d_out);
        Some(Tensor::from_data(
            TensorData::new(g, [self.d_in, d_out]),
            &device,
        ))
    }
}

/// Gaussian posterior head (scvi.md §3.2): returns mean, variance (exp + `var_eps`) and one
/// reparameterised, untransformed sample.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub encoder: FcLayers<B>,
    pub mean_encoder: Linear<B>,
    pub var_encoder: Linear<B>,
    pub var_eps: f64,
}

pub struct Posterior<B: Backend> {
    pub mean: Tensor<B, 2>,
    pub var: Tensor<B, 2>,
    pub sample: Tensor<B, 2>,
}

impl<B: Backend> Encoder<B> {
    pub fn new(o: &FcOptions, n_output: usize, var_eps: f64, device: &B::Device) -> Self {
        Self {
            encoder: FcLayers::new(o, device),
            mean_encoder: LinearConfig::new(o.n_hidden, n_output).init(device),
            var_encoder: LinearConfig::new(o.n_hidden, n_output).init(device),
            var_eps,
        }
    }

    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        cov: Option<&Tensor<B, 2>>,
        training: bool,
    ) -> Posterior<B> {
        self.head(self.encoder.forward(x, cov, training))
    }

    /// As [`Encoder::forward`] on sparse input rows without covariates (see
    /// [`FcLayers::forward_sparse`]).
    pub fn forward_sparse(
        &self,
        x: &std::sync::Arc<SparseRows>,
        training: bool,
    ) -> (Posterior<B>, SparseInput<B>) {
        let (h, pending) = self.encoder.forward_sparse(x, training);
        (self.head(h), pending)
    }

    fn head(&self, h: Tensor<B, 2>) -> Posterior<B> {
        let mean = linear(&self.mean_encoder, h.clone());
        let var = linear(&self.var_encoder, h).exp() + self.var_eps;
        let noise = draw::<B, 2>(mean.dims(), Distribution::Normal(0.0, 1.0), &mean.device());
        let sample = mean.clone() + var.clone().sqrt() * noise;
        Posterior { mean, var, sample }
    }
}

/// Redraws a sample from an existing posterior (fresh noise).
pub fn resample<B: Backend>(mean: &Tensor<B, 2>, var: &Tensor<B, 2>) -> Tensor<B, 2> {
    let noise = draw::<B, 2>(mean.dims(), Distribution::Normal(0.0, 1.0), &mean.device());
    mean.clone() + var.clone().sqrt() * noise
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    #[test]
    fn dropout_zeroes_a_fraction_p_and_keeps_the_mean() {
        let _guard = crate::TEST_RNG_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dev = Default::default();
        B::seed(&dev, 3);
        let x = Tensor::<B, 2>::ones([300, 101], &dev);
        let y: Vec<f32> = dropout(x.clone(), 0.25, true).into_data().to_vec().unwrap();
        let zero = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
        let mean = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
        assert!(
            (zero - 0.25).abs() < 0.01 && (mean - 1.0).abs() < 0.02,
            "{zero} {mean}"
        );
        B::seed(&dev, 3);
        let again: Vec<f32> = dropout(x, 0.25, true).into_data().to_vec().unwrap();
        assert_eq!(y, again);
    }

    #[test]
    fn batch_norm_training_uses_biased_batch_variance_and_unbiased_running_update() {
        let dev = Default::default();
        let bn = TorchBatchNorm::<B>::new(1, &dev);
        let x =
            Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 6.0], [4, 1]), &dev);
        let y: Vec<f32> = bn.forward(x, true).into_data().to_vec().unwrap();
        // mean 3, biased var 3.5
        let want = (1.0 - 3.0) / (3.5f32 + 1e-3).sqrt();
        assert!((y[0] - want).abs() < 1e-5);
        let rm: Vec<f32> = bn.running_mean.value_sync().into_data().to_vec().unwrap();
        let rv: Vec<f32> = bn.running_var.value_sync().into_data().to_vec().unwrap();
        assert!((rm[0] - 0.03).abs() < 1e-6, "rm = {rm:?}");
        // 0.99 * 1 + 0.01 * (3.5 * 4 / 3)
        assert!((rv[0] - (0.99 + 0.01 * 14.0 / 3.0)).abs() < 1e-6);
    }
}
