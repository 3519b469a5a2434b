//! Small helpers: products of `[batch, k, d]` activations with parameter matrices.

use burn::tensor::{Tensor, backend::Backend};

/// `x · m` for `x` `[batch, k, d]` and `m` `[d, n]`, as one 2-D product.
pub fn times<B: Backend>(x: Tensor<B, 3>, m: Tensor<B, 2>) -> Tensor<B, 3> {
    let [batch, k, d] = x.dims();
    let n = m.dims()[1];
    x.reshape([batch * k, d]).matmul(m).reshape([batch, k, n])
}

/// `x · mᵀ` for `x` `[batch, k, d]` and `m` `[n, d]` (PyTorch's `Linear` without bias).
pub fn times_t<B: Backend>(x: Tensor<B, 3>, m: Tensor<B, 2>) -> Tensor<B, 3> {
    times(x, m.transpose())
}

/// A `[n]` vector broadcast over `[batch, k, n]`.
pub fn row<B: Backend>(v: Tensor<B, 1>) -> Tensor<B, 3> {
    v.unsqueeze::<3>()
}

/// `σ(x) = (1 + tanh(x/2)) / 2` in the tensor's own precision (burn's `sigmoid` computes in f32
/// even on f64 backends, which finite-difference checks and f64 runs cannot accept). The tanh
/// form neither overflows nor gives NaN gradients for large |x| (as `1/(1 + e^(−x))` does).
pub fn sigmoid<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    ((x * 0.5).tanh() + 1.0) * 0.5
}
