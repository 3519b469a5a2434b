//! The activation functions ReFT variants may apply to their learned projection.

use burn::tensor::{Tensor, activation, backend::Backend};
use serde::{Deserialize, Serialize};

/// pyreft's `act_fn` options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// No nonlinearity (pyreft's default).
    #[default]
    Identity,
    /// ReLU.
    Relu,
    /// Exact GELU.
    Gelu,
    /// tanh.
    Tanh,
    /// SiLU.
    Silu,
}

impl Activation {
    /// Applies the function element-wise.
    pub fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Identity => x,
            Activation::Relu => activation::relu(x),
            Activation::Gelu => activation::gelu(x),
            Activation::Tanh => activation::tanh(x),
            Activation::Silu => x.clone() * crate::linalg::sigmoid(x),
        }
    }
}
