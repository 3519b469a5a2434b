//! Linear probe: reads a site and predicts a class; the activation flows on unchanged.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

use crate::error::Result;
use crate::family::{Family, Parts, Written};
use crate::linalg::{row, times_t};
use ferrovene_models::rng::Rng;

/// `logits = b Wᵀ + c` over `classes` classes.
#[derive(Module, Debug)]
pub struct LinearProbe<B: Backend> {
    /// `W`, `[classes, d]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `c`, `[classes]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> LinearProbe<B> {
    /// A probe with PyTorch's default `Linear` initialisation, from `rng`.
    pub fn init(d: usize, classes: usize, rng: &mut Rng, device: &B::Device) -> Self {
        let bound = 1.0 / (d as f64).sqrt();
        LinearProbe {
            weight: Param::from_tensor(rng.uniform_tensor([classes, d], bound, device)),
            bias: Param::from_tensor(rng.uniform_tensor([classes], bound, device)),
        }
    }

    /// Class logits `[batch, k, classes]` of the vectors `b` (`[batch, k, d]`).
    pub fn logits(&self, b: Tensor<B, 3>) -> Tensor<B, 3> {
        times_t(b, self.weight.val()) + row(self.bias.val())
    }
}

impl<B: Backend> Family<B> for LinearProbe<B> {
    fn kinds() -> Vec<&'static str> {
        vec!["linear_probe"]
    }

    fn kind(&self) -> &'static str {
        "linear_probe"
    }

    fn width(&self) -> Option<usize> {
        Some(self.weight.val().dims()[1])
    }

    fn needs_source(&self) -> bool {
        false
    }

    fn write(&self, out: &mut Written) {
        out.tensor("probe.weight", self.weight.val());
        out.tensor("probe.bias", self.bias.val());
    }

    fn read(_: &str, parts: &Parts<'_, B>) -> Result<Self> {
        Ok(LinearProbe { weight: parts.param2("probe.weight")?, bias: parts.param1("probe.bias")? })
    }

    fn reads_only(&self) -> bool {
        true
    }
}
