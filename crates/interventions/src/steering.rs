//! Steering vectors (activation addition; ITI): `b + α·v`.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

use crate::error::Result;
use crate::family::{Family, Parts, Written};
use crate::linalg::row;

/// `b + α·v`, with `v` fixed (e.g. a mean difference) or learned.
#[derive(Module, Debug)]
pub struct Steering<B: Backend> {
    /// `v`, `[d]`.
    pub vector: Param<Tensor<B, 1>>,
    /// α.
    pub alpha: f64,
}

impl<B: Backend> Steering<B> {
    /// A fixed vector (no gradient).
    pub fn fixed(vector: Tensor<B, 1>, alpha: f64) -> Self {
        Steering { vector: Param::from_tensor(vector).set_require_grad(false), alpha }
    }

    /// The difference of the means of two sets of vectors (`[n, d]` each): the usual direction.
    pub fn mean_difference(positive: Tensor<B, 2>, negative: Tensor<B, 2>, alpha: f64) -> Self {
        let v = positive.mean_dim(0) - negative.mean_dim(0);
        let d = v.dims()[1];
        Self::fixed(v.reshape([d]), alpha)
    }

    /// `b + α·v`.
    pub fn forward(&self, b: Tensor<B, 3>) -> Tensor<B, 3> {
        b + row(self.vector.val()) * self.alpha
    }
}

impl<B: Backend> Family<B> for Steering<B> {
    fn kinds() -> Vec<&'static str> {
        vec!["steering"]
    }

    fn kind(&self) -> &'static str {
        "steering"
    }

    fn width(&self) -> Option<usize> {
        Some(self.vector.val().dims()[0])
    }

    fn needs_source(&self) -> bool {
        false
    }

    fn write(&self, out: &mut Written) {
        out.tensor("vector", self.vector.val());
        out.hyper.alpha = Some(self.alpha);
    }

    fn read(_: &str, parts: &Parts<'_, B>) -> Result<Self> {
        Ok(Steering { vector: parts.param1("vector")?, alpha: parts.need(parts.hyper().alpha, "alpha")? })
    }
}
