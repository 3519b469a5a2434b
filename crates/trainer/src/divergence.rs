//! The divergence guard: a training step whose loss or updated parameters are not finite stops
//! the run with [`Diverged`] (what went non-finite, at which step, the last finite loss), before
//! anything non-finite can reach a checkpoint or an export; and the checks settings get first
//! (a finite, positive learning rate; finite, non-negative decay and clipping).

use std::fmt;

use anyhow::{Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};

/// Why training stopped: a non-finite loss or parameter at `step`.
#[derive(Debug, Clone, PartialEq)]
pub struct Diverged {
    /// The optimizer step (1-based) that went non-finite.
    pub step: usize,
    /// What did: `the loss (NaN)`, `parameter rotation.x (inf)`, ….
    pub what: String,
    /// The loss of the last step that stayed finite, if any did.
    pub last_finite_loss: Option<f32>,
    /// The peak learning rate of the run.
    pub lr: f64,
}

impl fmt::Display for Diverged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "training diverged at step {}: {} is not finite", self.step, self.what)?;
        match self.last_finite_loss {
            Some(l) => write!(f, " (the last finite loss was {l:.4} at step {})", self.step - 1)?,
            None => write!(f, " (no step had a finite loss)")?,
        }
        write!(
            f,
            "; the learning rate ({:e}) is the likely cause: lower it (--set lr=...) or clip gradients (--set grad_clip=1.0). Nothing non-finite was exported; earlier checkpoints are kept",
            self.lr
        )
    }
}

impl std::error::Error for Diverged {}

/// The name of the first float parameter of `module` with a non-finite value, and that value.
pub fn first_non_finite<B: Backend, M: Module<B>>(module: &M) -> Option<(String, f32)> {
    // First one read of every parameter's sum together (one read instead of one per parameter,
    // which for a tiny model is a good part of a step); only when one is not finite, the walk
    // that names it.
    let mut sums = Sums(Vec::new());
    module.visit(&mut sums);
    if sums.0.is_empty() {
        return None;
    }
    let total: f32 = Tensor::cat(sums.0, 0).sum().into_scalar().elem();
    if total.is_finite() {
        return None;
    }
    let mut v = FiniteCheck { path: Vec::new(), found: None };
    module.visit(&mut v);
    // The sums overflowed together without any one being non-finite: that is divergence too.
    v.found.or(Some(("the parameters together".to_string(), total)))
}

/// Each float parameter's sum, `[1]` each.
struct Sums<B: Backend>(Vec<Tensor<B, 1>>);

impl<B: Backend> ModuleVisitor<B> for Sums<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().sum());
    }
}

struct FiniteCheck {
    path: Vec<String>,
    found: Option<(String, f32)>,
}

impl<B: Backend> ModuleVisitor<B> for FiniteCheck {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.found.is_some() {
            return;
        }
        // The sum of a tensor is finite exactly when no entry is NaN or infinite (or the entries
        // are so large that they overflow together, which is divergence too).
        let sum: f32 = param.val().sum().into_scalar().elem();
        if !sum.is_finite() {
            let name = if self.path.is_empty() { "a parameter".to_string() } else { self.path.join(".") };
            self.found = Some((name, sum));
        }
    }
}

/// A learning rate must be a finite, positive number.
pub fn check_rate(key: &str, lr: f64) -> Result<()> {
    if !(lr.is_finite() && lr > 0.0) {
        bail!("`{key}` must be a finite number above 0, not {lr} (try 1e-3)");
    }
    Ok(())
}

/// A subspace rank must fit the width of the site it acts on (known once the model is loaded).
pub fn check_rank(rank: usize, width: usize, site: &dyn fmt::Display) -> Result<()> {
    if rank == 0 || rank > width {
        bail!("`rank = {rank}` does not fit {site} of width {width}: give 1 ≤ rank ≤ {width}");
    }
    Ok(())
}

/// Weight decay and gradient clipping must be finite and not negative.
pub fn check_non_negative(key: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value >= 0.0) {
        bail!("`{key}` must be a finite number of at least 0, not {value}");
    }
    Ok(())
}
