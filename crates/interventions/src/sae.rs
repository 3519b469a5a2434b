//! Sparse-autoencoder interchange [pyvene JumpReLUAutoencoderIntervention]: encode base and source
//! with a JumpReLU SAE (Gemma Scope's `W_enc`, `b_enc`, `W_dec`, `b_dec`, `threshold`),
//! interchange chosen latents, decode.

use burn::module::{Module, Param};
use burn::tensor::{activation::relu, backend::Backend, Tensor};

use crate::linalg::{row, times};

/// A JumpReLU SAE with the latents to interchange.
#[derive(Module, Debug)]
pub struct JumpReluSae<B: Backend> {
    /// `[d, m]`.
    pub w_enc: Param<Tensor<B, 2>>,
    /// `[m]`.
    pub b_enc: Param<Tensor<B, 1>>,
    /// `[m, d]`.
    pub w_dec: Param<Tensor<B, 2>>,
    /// `[d]`.
    pub b_dec: Param<Tensor<B, 1>>,
    /// `[m]`.
    pub threshold: Param<Tensor<B, 1>>,
    /// Latents taken from the source (all when empty).
    #[module(skip)]
    pub latents: Vec<usize>,
}

impl<B: Backend> JumpReluSae<B> {
    /// Latent activations: `relu(pre) ⊙ [pre > threshold]`, `pre = x W_enc + b_enc`.
    pub fn encode(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let pre = times(x, self.w_enc.val()) + row(self.b_enc.val());
        let on = pre.clone().greater(row(self.threshold.val()).expand(pre.dims())).float();
        relu(pre) * on
    }

    /// Reconstruction `z W_dec + b_dec`.
    pub fn decode(&self, z: Tensor<B, 3>) -> Tensor<B, 3> {
        times(z, self.w_dec.val()) + row(self.b_dec.val())
    }

    /// Decode(base latents with the chosen ones from the source).
    pub fn forward(&self, base: Tensor<B, 3>, source: Tensor<B, 3>) -> Tensor<B, 3> {
        let (zb, zs) = (self.encode(base), self.encode(source));
        let m = zb.dims()[2];
        let z = if self.latents.is_empty() {
            zs
        } else {
            let device = zb.device();
            let chosen: Vec<f32> = (0..m).map(|i| if self.latents.contains(&i) { 1.0 } else { 0.0 }).collect();
            let mask = row(Tensor::<B, 1>::from_floats(chosen.as_slice(), &device));
            zb.clone() + (zs - zb) * mask
        };
        self.decode(z)
    }
}
