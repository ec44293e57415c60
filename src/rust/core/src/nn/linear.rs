//! Linear maps on the host with their output split between the threads. burn-flex hands a
//! large product to gemm's own rayon split, which on the shapes of a decoder head (128 cells
//! x 128 hidden units x 2,000 genes, forward and both backward products) runs on two threads
//! at about the speed of one, and slower than one for the input gradient; one
//! single-threaded gemm per block of output rows (or columns) scales. Every linear map of the
//! models goes through [`linear`]; small products and other backends take Burn's own path.

use std::any::Any;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::nn::Linear;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{backend::Backend, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::backend::{host_values, Cpu, CpuTrain};

/// Below this many multiply-adds a product stays on one thread (burn-flex's own threshold).
const SPLIT_THRESHOLD: usize = 192 * 192 * 192;
/// The fewest output rows (or columns) a thread gets: below this the per-call overhead of
/// gemm's packing outweighs the split.
const MIN_BLOCK: usize = 16;

/// `x · W (+ b)` for a Burn `Linear` (weight stored in x out). On the CPU backend (with or
/// without autodiff) a product of at least [`SPLIT_THRESHOLD`] multiply-adds runs as
/// [`host_product`]s, with its two backward products likewise; otherwise `l.forward(x)`.
pub fn linear<B: Backend>(l: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let w = l.weight.val();
    let [m, k] = x.dims();
    let n = w.dims()[1];
    if m.saturating_mul(n).saturating_mul(k) < SPLIT_THRESHOLD || w.dims()[0] != k {
        return l.forward(x);
    }
    let y = match matmul_on_host(x, w) {
        Ok(y) => y,
        Err(x) => return l.forward(x),
    };
    match &l.bias {
        Some(b) => y + b.val().unsqueeze_dim(0),
        None => y,
    }
}

/// `x · w` through [`host_product`] when `B` is the CPU backend (plain or under autodiff);
/// `x` comes back for any other backend.
fn matmul_on_host<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
) -> std::result::Result<Tensor<B, 2>, Tensor<B, 2>> {
    let back = |t: Box<dyn Any>| -> Tensor<B, 2> {
        let t = *t
            .downcast::<FloatTensor<B>>()
            .expect("the primitive of its own backend");
        Tensor::from_primitive(TensorPrimitive::Float(t))
    };
    let xp: Box<dyn Any> = Box::new(x.into_primitive().tensor());
    let wp: Box<dyn Any> = Box::new(w.into_primitive().tensor());
    if xp.is::<FloatTensor<Cpu>>() && wp.is::<FloatTensor<Cpu>>() {
        let (x, w) = (back(xp), back(wp));
        let (xv, wv) = (host_values(&x), host_values(&w));
        let ([m, k], n) = (x.dims(), w.dims()[1]);
        let y = host_product(m, n, k, View::rows(&xv, k), View::rows(&wv, n));
        return Ok(Tensor::from_data(TensorData::new(y, [m, n]), &x.device()));
    }
    if !(xp.is::<FloatTensor<CpuTrain>>() && wp.is::<FloatTensor<CpuTrain>>()) {
        return Err(back(xp));
    }
    let x = *xp.downcast::<FloatTensor<CpuTrain>>().expect("checked");
    let w = *wp.downcast::<FloatTensor<CpuTrain>>().expect("checked");
    let (x_inner, w_inner) = (inner(&x.primitive), inner(&w.primitive));
    let ([m, k], n) = (x_inner.dims(), w_inner.dims()[1]);
    let y = {
        let (xv, wv) = (host_values(&x_inner), host_values(&w_inner));
        host_product(m, n, k, View::rows(&xv, k), View::rows(&wv, n))
    };
    let y = Tensor::<Cpu, 2>::from_data(TensorData::new(y, [m, n]), &Default::default())
        .into_primitive()
        .tensor();
    let (x_needs_grad, w_needs_grad) =
        (!x.node.requirement.is_none(), !w.node.requirement.is_none());
    let out = match HostMatmul
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        // dW needs x, dx needs W: keep only what a tracked parent will ask for.
        OpsKind::Tracked(prep) => prep.finish(
            (
                w_needs_grad.then_some(x.primitive),
                x_needs_grad.then_some(w.primitive),
            ),
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    let out: Box<dyn Any> = Box::new(out);
    Ok(back(out))
}

fn inner(p: &FloatTensor<Cpu>) -> Tensor<Cpu, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(p.clone()))
}

/// The backward step of [`matmul_on_host`]: for y = x · W, dx = dy · Wᵀ and dW = xᵀ · dy.
/// State: x (kept when W needs its gradient) and W (kept when x does).
#[derive(Debug)]
struct HostMatmul;

impl Backward<Cpu, 2> for HostMatmul {
    type State = (Option<FloatTensor<Cpu>>, Option<FloatTensor<Cpu>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = inner(&grads.consume::<Cpu>(&ops.node));
        let [x_parent, w_parent] = ops.parents;
        let (x, w) = ops.state;
        let [m, n] = dy.dims();
        let dyv = host_values(&dy);
        let register = |grads: &mut Gradients, id, values: Vec<f32>, shape: [usize; 2]| {
            let g =
                Tensor::<Cpu, 2>::from_data(TensorData::new(values, shape), &Default::default());
            grads.register::<Cpu>(id, g.into_primitive().tensor());
        };
        if let (Some(parent), Some(w)) = (x_parent, w) {
            let w = inner(&w);
            let k = w.dims()[0];
            let wv = host_values(&w);
            let dx = host_product(m, k, n, View::rows(&dyv, n), View::transposed(&wv, n));
            register(grads, parent.id, dx, [m, k]);
        }
        if let (Some(parent), Some(x)) = (w_parent, x) {
            let x = inner(&x);
            let k = x.dims()[1];
            let xv = host_values(&x);
            let dw = host_product(k, n, m, View::transposed(&xv, k), View::rows(&dyv, n));
            register(grads, parent.id, dw, [k, n]);
        }
    }
}

/// A matrix read from a row-major buffer: as stored (`rows`) or transposed.
#[derive(Clone, Copy)]
pub struct View<'a> {
    data: &'a [f32],
    row_stride: isize,
    col_stride: isize,
}

impl<'a> View<'a> {
    /// The buffer as a row-major matrix of `width` columns.
    pub fn rows(data: &'a [f32], width: usize) -> Self {
        Self {
            data,
            row_stride: width as isize,
            col_stride: 1,
        }
    }

    /// The transpose of the row-major matrix of `width` columns held in the buffer.
    pub fn transposed(data: &'a [f32], width: usize) -> Self {
        Self {
            data,
            row_stride: 1,
            col_stride: width as isize,
        }
    }

    /// Whether every element of an r x c matrix read this way lies in the buffer.
    fn holds(&self, r: usize, c: usize) -> bool {
        let (rs, cs) = (self.row_stride as usize, self.col_stride as usize);
        r == 0 || c == 0 || (r - 1) * rs + (c - 1) * cs < self.data.len()
    }
}

/// The row-major m x n product a · b of an m x k and a k x n matrix: one single-threaded gemm
/// per block of output rows (or of columns, when there are more of them), one block per
/// thread.
pub fn host_product(m: usize, n: usize, k: usize, a: View, b: View) -> Vec<f32> {
    assert!(
        a.holds(m, k) && b.holds(k, n),
        "operands of a {m} x {k} by {k} x {n} product out of their buffers"
    );
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    let threads = rayon::current_num_threads();
    let by_rows = m >= n;
    let extent = if by_rows { m } else { n };
    let blocks = if m.saturating_mul(n).saturating_mul(k) < SPLIT_THRESHOLD {
        1
    } else {
        threads.min(extent / MIN_BLOCK).max(1)
    };
    let step = extent.div_ceil(blocks);
    // Each block writes its own rows (or columns) of `out`: disjoint, so the raw pointer can
    // be shared between the threads.
    let out_at = out.as_mut_ptr() as usize;
    (0..blocks).into_par_iter().for_each(|i| {
        let start = i * step;
        let len = step.min(extent.saturating_sub(start));
        if len == 0 {
            return;
        }
        let (rows, cols, a_off, b_off, out_off) = if by_rows {
            (len, n, start as isize * a.row_stride, 0, start * n)
        } else {
            (m, len, 0, start as isize * b.col_stride, start)
        };
        // SAFETY: the operands' extents were checked against their buffers above; the
        // output block lies inside `out` and no other block writes to it.
        unsafe {
            gemm::gemm(
                rows,
                cols,
                k,
                (out_at as *mut f32).add(out_off),
                1,
                n as isize,
                false,
                a.data.as_ptr().offset(a_off),
                a.col_stride,
                a.row_stride,
                b.data.as_ptr().offset(b_off),
                b.col_stride,
                b.row_stride,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::AutodiffModule;
    use burn::nn::LinearConfig;
    use burn::tensor::Distribution;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        out
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn host_product_matches_the_definition_for_every_split_and_layout() {
        // Wide (split by columns), tall (by rows) and small (one block) products, with both
        // operands read as stored and transposed.
        for (m, n, k) in [(40, 300, 700), (300, 40, 700), (3, 5, 7), (200, 200, 200)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let want = naive(m, n, k, &a, &b);
            close(
                &host_product(m, n, k, View::rows(&a, k), View::rows(&b, n)),
                &want,
            );
            let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            close(
                &host_product(m, n, k, View::transposed(&at, m), View::transposed(&bt, k)),
                &want,
            );
        }
    }

    #[test]
    fn linear_on_the_host_matches_burn_in_value_and_gradients() {
        let device = Default::default();
        let layer = LinearConfig::new(128, 2000).init::<CpuTrain>(&device);
        let x = Tensor::<CpuTrain, 2>::random([100, 128], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let target = Tensor::<CpuTrain, 2>::random([100, 2000], Distribution::Default, &device);
        let loss = |y: Tensor<CpuTrain, 2>| (y * target.clone()).sin().sum();
        let (ours, theirs) = (linear(&layer, x.clone()), layer.forward(x.clone()));
        close(
            &host_values(&ours.clone().inner()),
            &host_values(&theirs.clone().inner()),
        );
        let (g1, g2) = (loss(ours).backward(), loss(theirs).backward());
        for (a, b) in [
            (x.grad(&g1), x.grad(&g2)),
            (layer.weight.val().grad(&g1), layer.weight.val().grad(&g2)),
        ] {
            close(
                &host_values(&a.expect("a gradient")),
                &host_values(&b.expect("a gradient")),
            );
        }
        let (b1, b2) = (
            layer.bias.as_ref().expect("bias").val().grad(&g1),
            layer.bias.as_ref().expect("bias").val().grad(&g2),
        );
        close(
            &host_values(&b1.expect("a gradient")),
            &host_values(&b2.expect("a gradient")),
        );
        // Inference backend: the same values.
        let plain = layer.valid();
        let xi = x.inner();
        close(
            &host_values(&linear(&plain, xi.clone())),
            &host_values(&plain.forward(xi)),
        );
    }
}
