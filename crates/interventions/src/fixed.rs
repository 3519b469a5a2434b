//! Interventions without learned parameters: interchange, addition, subtraction, zero and mean
//! ablation, Gaussian noise, and collection.

use burn::module::{Module, Param};
use burn::tensor::{Distribution, Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::family::{Family, Parts, Written, name_of, named};
use crate::linalg::row;

/// The parameter-free operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FixedOp {
    /// pyvene's `VanillaIntervention`: the source's vector replaces the base's.
    Interchange,
    /// pyvene's `AdditionIntervention`: `b + s`.
    Addition,
    /// pyvene's `SubtractionIntervention`: `b − s`.
    Subtraction,
    /// pyvene's `ZeroIntervention`: zero.
    Zero,
    /// Mean ablation: a given mean vector (over a reference set).
    Mean,
    /// pyvene's `NoiseIntervention`: `b + σ ⊙ ε`, `ε ~ N(0, I)`; `σ` typically a multiple of the reference
    /// standard deviation (causal tracing). Draws from the backend's generator.
    Noise,
    /// pyvene's `CollectIntervention`: `b` unchanged (the caller records it).
    Collect,
}

/// Each operation's name in exports.
const NAMES: [(FixedOp, &str); 7] = [
    (FixedOp::Interchange, "interchange"),
    (FixedOp::Addition, "addition"),
    (FixedOp::Subtraction, "subtraction"),
    (FixedOp::Zero, "zero"),
    (FixedOp::Mean, "mean"),
    (FixedOp::Noise, "noise"),
    (FixedOp::Collect, "collect"),
];

/// A parameter-free operation, with its vector (`[d]`) for `Mean` (the mean) and `Noise` (σ).
#[derive(Module, Debug)]
pub struct Fixed<B: Backend> {
    /// Which operation.
    #[module(skip)]
    pub op: FixedOp,
    /// The mean (`Mean`) or σ (`Noise`).
    pub vector: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Fixed<B> {
    /// An operation that needs no vector.
    pub fn new(op: FixedOp) -> Self {
        Fixed { op, vector: None }
    }

    /// Mean ablation with the given mean, or noise with the given σ.
    pub fn with_vector(op: FixedOp, v: Tensor<B, 1>) -> Self {
        Fixed { op, vector: Some(Param::from_tensor(v).set_require_grad(false)) }
    }

    /// Whether the operation reads a source.
    pub fn needs_source(&self) -> bool {
        matches!(self.op, FixedOp::Interchange | FixedOp::Addition | FixedOp::Subtraction)
    }

    /// The result for `base` (and `source`, when [`Self::needs_source`]).
    pub fn forward(&self, base: Tensor<B, 3>, source: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let src = || source.clone().expect("checked by Intervention::apply");
        let vector = || row(self.vector.as_ref().expect("Mean and Noise are built with a vector").val());
        match self.op {
            FixedOp::Interchange => src(),
            FixedOp::Addition => base + src(),
            FixedOp::Subtraction => base - src(),
            FixedOp::Zero => base.zeros_like(),
            FixedOp::Mean => base.zeros_like() + vector(),
            FixedOp::Noise => {
                let eps = base.random_like(Distribution::Normal(0.0, 1.0));
                base + eps * vector()
            }
            FixedOp::Collect => base,
        }
    }
}

impl<B: Backend> Family<B> for Fixed<B> {
    fn kinds() -> Vec<&'static str> {
        NAMES.iter().map(|(_, n)| *n).collect()
    }

    fn kind(&self) -> &'static str {
        name_of(&NAMES, self.op)
    }

    fn width(&self) -> Option<usize> {
        self.vector.as_ref().map(|v| v.val().dims()[0])
    }

    fn needs_source(&self) -> bool {
        Fixed::needs_source(self)
    }

    fn write(&self, out: &mut Written) {
        if let Some(v) = &self.vector {
            out.tensor("vector", v.val());
        }
    }

    fn read(kind: &str, parts: &Parts<'_, B>) -> Result<Self> {
        let op = named(&NAMES, kind).ok_or_else(|| parts.corrupt(format!("`{kind}` is not a fixed operation")))?;
        Ok(if matches!(op, FixedOp::Mean | FixedOp::Noise) {
            Fixed::with_vector(op, parts.t1("vector")?)
        } else {
            Fixed::new(op)
        })
    }

    fn reads_only(&self) -> bool {
        self.op == FixedOp::Collect
    }
}
