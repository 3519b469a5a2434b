//! Linear probe: reads a site and predicts a class; the activation flows on unchanged.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Distribution, Tensor};

use crate::linalg::{row, times_t};

/// `logits = b Wᵀ + c` over `classes` classes.
#[derive(Module, Debug)]
pub struct LinearProbe<B: Backend> {
    /// `W`, `[classes, d]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `c`, `[classes]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> LinearProbe<B> {
    /// A probe with PyTorch's default `Linear` initialisation (seed the backend first).
    pub fn init(d: usize, classes: usize, device: &B::Device) -> Self {
        let bound = 1.0 / (d as f64).sqrt();
        let u = Distribution::Uniform(-bound, bound);
        LinearProbe {
            weight: Param::from_tensor(Tensor::random([classes, d], u, device)),
            bias: Param::from_tensor(Tensor::random([classes], u, device)),
        }
    }

    /// Class logits `[batch, k, classes]` of the vectors `b` (`[batch, k, d]`).
    pub fn logits(&self, b: Tensor<B, 3>) -> Tensor<B, 3> {
        times_t(b, self.weight.val()) + row(self.bias.val())
    }
}
