//! Distributed alignment search (Geiger et al. 2023, Wu et al. 2023): interchange in a learned
//! rotated basis. `R` has orthonormal rows (see [`crate::orthogonal`]).

use burn::module::{Module, Param};
use burn::tensor::{ElementConversion, Int, Tensor, backend::Backend};

use crate::error::Result;
use crate::family::{Family, Parts, Written};
use crate::linalg::{row, sigmoid, times, times_t};
use crate::orthogonal::Orthogonal;

/// Full DAS [pyvene RotatedSpaceIntervention]: `(b Rᵀ with its first k coordinates taken from
/// s Rᵀ) R`, `R` `d × d`.
#[derive(Module, Debug)]
pub struct DasFull<B: Backend> {
    /// The rotation, `d × d`.
    pub rotation: Orthogonal<B>,
    /// How many rotated coordinates are interchanged.
    pub k: usize,
}

impl<B: Backend> DasFull<B> {
    /// The intervention on `base` from `source` (`[batch, n, d]` each).
    pub fn forward(&self, base: Tensor<B, 3>, source: Tensor<B, 3>) -> Tensor<B, 3> {
        let r = self.rotation.matrix();
        let d = r.dims()[1];
        let rb = times_t(base, r.clone());
        let rs = times_t(source, r.clone());
        let mixed = if self.k == 0 {
            rb
        } else if self.k >= d {
            rs
        } else {
            Tensor::cat(vec![rs.narrow(2, 0, self.k), rb.narrow(2, self.k, d - self.k)], 2)
        };
        times(mixed, r)
    }
}

/// Low-rank DAS [pyvene LowRankRotatedSpaceIntervention]: `b + (s − b) Rᵀ R`, `R` `k × d`.
#[derive(Module, Debug)]
pub struct DasLowRank<B: Backend> {
    /// The rotation, `k × d`.
    pub rotation: Orthogonal<B>,
}

impl<B: Backend> DasLowRank<B> {
    /// The intervention on `base` from `source`.
    pub fn forward(&self, base: Tensor<B, 3>, source: Tensor<B, 3>) -> Tensor<B, 3> {
        let r = self.rotation.matrix();
        base.clone() + times(times_t(source - base, r.clone()), r)
    }
}

/// Boundless DAS [pyvene BoundlessRotatedSpaceIntervention]: a soft mask over rotated
/// coordinates, `mᵢ = σ(i/τ)·σ((β·d − i)/τ)`, `((1 − m)⊙bRᵀ + m⊙sRᵀ) R`. The boundary β is
/// learned (clamped to [1e-3, 1]); the temperature τ is annealed by the trainer.
#[derive(Module, Debug)]
pub struct BoundlessDas<B: Backend> {
    /// The rotation, `d × d`.
    pub rotation: Orthogonal<B>,
    /// β, `[1]`.
    pub boundary: Param<Tensor<B, 1>>,
    /// τ (pyvene starts at 50 and anneals to 0.1).
    pub temperature: f64,
}

impl<B: Backend> BoundlessDas<B> {
    /// The mask `m` over the `d` rotated coordinates.
    pub fn mask(&self, d: usize) -> Tensor<B, 1> {
        let device = self.boundary.val().device();
        let i = Tensor::<B, 1, Int>::arange(0..d as i64, &device).float();
        let beta = self.boundary.val().clamp(1e-3, 1.0) * d as f64;
        sigmoid(i.clone() / self.temperature) * sigmoid((beta - i) / self.temperature)
    }

    /// The intervention on `base` from `source`.
    pub fn forward(&self, base: Tensor<B, 3>, source: Tensor<B, 3>) -> Tensor<B, 3> {
        let r = self.rotation.matrix();
        let m = row(self.mask(r.dims()[1]));
        let mixed = (m.ones_like() - m.clone()) * times_t(base, r.clone()) + m * times_t(source, r.clone());
        times(mixed, r)
    }

    /// The learned boundary as a number of dimensions, `β·d` (β clamped).
    pub fn boundary_dims(&self, d: usize) -> f32 {
        let beta: f32 = self.boundary.val().clamp(1e-3, 1.0).into_scalar().elem();
        beta * d as f32
    }
}

/// Sigmoid mask [pyvene SigmoidMaskIntervention / SigmoidMaskRotatedSpaceIntervention]:
/// `(1 − σ(w/τ))⊙b + σ(w/τ)⊙s`, in the neuron basis or in a rotated one (`R` `d × d`).
#[derive(Module, Debug)]
pub struct SigmoidMask<B: Backend> {
    /// Mask logits `w`, `[d]`.
    pub mask: Param<Tensor<B, 1>>,
    /// Optional rotation into the basis where the mask acts.
    pub rotation: Option<Orthogonal<B>>,
    /// τ.
    pub temperature: f64,
}

impl<B: Backend> SigmoidMask<B> {
    /// The intervention on `base` from `source`.
    pub fn forward(&self, base: Tensor<B, 3>, source: Tensor<B, 3>) -> Tensor<B, 3> {
        let m = row(sigmoid(self.mask.val() / self.temperature));
        let mix = |b: Tensor<B, 3>, s: Tensor<B, 3>| (m.ones_like() - m.clone()) * b + m.clone() * s;
        match &self.rotation {
            None => mix(base, source),
            Some(rot) => {
                let r = rot.matrix();
                times(mix(times_t(base, r.clone()), times_t(source, r.clone())), r)
            }
        }
    }
}

/// How τ moves from `start` to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Annealing {
    /// Evenly spaced values (pyvene's `torch.linspace(start, end, steps)`).
    #[default]
    Linear,
    /// Evenly spaced on a log scale: as many steps between 50 and 5 as between 1 and 0.1.
    Geometric,
}

/// Boundless DAS's temperature schedule over `steps` steps, held at `end` afterwards.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TemperatureSchedule {
    /// τ at step 0 (pyvene: 50).
    pub start: f64,
    /// τ at the last step and after (pyvene: 0.1).
    pub end: f64,
    /// Number of annealing steps.
    pub steps: usize,
    /// Linear or geometric.
    pub annealing: Annealing,
}

impl TemperatureSchedule {
    /// τ at `step`.
    pub fn at(&self, step: usize) -> f64 {
        if self.steps <= 1 {
            return self.end;
        }
        let t = step.min(self.steps - 1) as f64 / (self.steps - 1) as f64;
        match self.annealing {
            Annealing::Linear => self.start + (self.end - self.start) * t,
            Annealing::Geometric => self.start * (self.end / self.start).powf(t),
        }
    }
}

impl<B: Backend> Family<B> for DasFull<B> {
    fn kinds() -> Vec<&'static str> {
        vec!["das_full"]
    }

    fn kind(&self) -> &'static str {
        "das_full"
    }

    fn width(&self) -> Option<usize> {
        Some(self.rotation.dims()[1])
    }

    fn needs_source(&self) -> bool {
        true
    }

    fn write(&self, out: &mut Written) {
        out.rotation(&self.rotation);
        out.hyper.k = Some(self.k);
    }

    fn read(_: &str, parts: &Parts<'_, B>) -> Result<Self> {
        Ok(DasFull { rotation: parts.rotation()?, k: parts.need(parts.hyper().k, "k")? })
    }

    fn rotation(&self) -> Option<&Orthogonal<B>> {
        Some(&self.rotation)
    }

    fn rotation_mut(&mut self) -> Option<&mut Orthogonal<B>> {
        Some(&mut self.rotation)
    }
}

impl<B: Backend> Family<B> for DasLowRank<B> {
    fn kinds() -> Vec<&'static str> {
        vec!["das_low_rank"]
    }

    fn kind(&self) -> &'static str {
        "das_low_rank"
    }

    fn width(&self) -> Option<usize> {
        Some(self.rotation.dims()[1])
    }

    fn needs_source(&self) -> bool {
        true
    }

    fn write(&self, out: &mut Written) {
        out.rotation(&self.rotation);
    }

    fn read(_: &str, parts: &Parts<'_, B>) -> Result<Self> {
        Ok(DasLowRank { rotation: parts.rotation()? })
    }

    fn rotation(&self) -> Option<&Orthogonal<B>> {
        Some(&self.rotation)
    }

    fn rotation_mut(&mut self) -> Option<&mut Orthogonal<B>> {
        Some(&mut self.rotation)
    }
}

impl<B: Backend> Family<B> for BoundlessDas<B> {
    fn kinds() -> Vec<&'static str> {
        vec!["das_boundless"]
    }

    fn kind(&self) -> &'static str {
        "das_boundless"
    }

    fn width(&self) -> Option<usize> {
        Some(self.rotation.dims()[1])
    }

    fn needs_source(&self) -> bool {
        true
    }

    fn write(&self, out: &mut Written) {
        out.rotation(&self.rotation);
        out.tensor("boundary", self.boundary.val());
        out.hyper.temperature = Some(self.temperature);
    }

    fn read(_: &str, parts: &Parts<'_, B>) -> Result<Self> {
        Ok(BoundlessDas {
            rotation: parts.rotation()?,
            boundary: parts.param1("boundary")?,
            temperature: parts.need(parts.hyper().temperature, "temperature")?,
        })
    }

    fn rotation(&self) -> Option<&Orthogonal<B>> {
        Some(&self.rotation)
    }

    fn rotation_mut(&mut self) -> Option<&mut Orthogonal<B>> {
        Some(&mut self.rotation)
    }

    fn set_temperature(&mut self, tau: f64) {
        self.temperature = tau;
    }
}

impl<B: Backend> Family<B> for SigmoidMask<B> {
    fn kinds() -> Vec<&'static str> {
        vec!["sigmoid_mask", "sigmoid_mask_rotated"]
    }

    fn kind(&self) -> &'static str {
        if self.rotation.is_some() { "sigmoid_mask_rotated" } else { "sigmoid_mask" }
    }

    fn width(&self) -> Option<usize> {
        Some(self.mask.val().dims()[0])
    }

    fn needs_source(&self) -> bool {
        true
    }

    fn write(&self, out: &mut Written) {
        if let Some(r) = &self.rotation {
            out.rotation(r);
        }
        out.tensor("mask", self.mask.val());
        out.hyper.temperature = Some(self.temperature);
    }

    fn read(kind: &str, parts: &Parts<'_, B>) -> Result<Self> {
        Ok(SigmoidMask {
            mask: parts.param1("mask")?,
            rotation: if kind == "sigmoid_mask_rotated" { Some(parts.rotation()?) } else { None },
            temperature: parts.need(parts.hyper().temperature, "temperature")?,
        })
    }

    fn rotation(&self) -> Option<&Orthogonal<B>> {
        self.rotation.as_ref()
    }

    fn rotation_mut(&mut self) -> Option<&mut Orthogonal<B>> {
        self.rotation.as_mut()
    }

    fn set_temperature(&mut self, tau: f64) {
        self.temperature = tau;
    }
}
