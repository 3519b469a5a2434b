//! Learning-rate schedules: a linear warmup to the peak, then a linear or cosine decay to zero,
//! or a constant rate. A pure function of the step, so a resumed run follows the same curve.

use serde::{Deserialize, Serialize};

/// How the rate falls after the warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Straight down to zero at the last step (pyvene's and pyreft's default).
    #[default]
    Linear,
    /// Half a cosine down to zero at the last step.
    Cosine,
    /// Stays at the peak.
    Constant,
}

/// The rate at every optimizer step of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Peak rate.
    pub peak: f64,
    /// Steps of linear warmup (at least 1: the first step uses `peak / warmup_steps`).
    pub warmup_steps: usize,
    /// Steps in the whole run.
    pub total_steps: usize,
    /// The decay after the warmup.
    pub decay: Decay,
}

impl LrSchedule {
    /// A schedule spending `warmup` (a share, 0–1) of `total_steps` on the warmup.
    pub fn new(peak: f64, warmup: f64, total_steps: usize, decay: Decay) -> Self {
        let total_steps = total_steps.max(1);
        let warmup_steps = ((warmup.clamp(0.0, 1.0) * total_steps as f64).ceil() as usize).clamp(1, total_steps);
        Self { peak, warmup_steps, total_steps, decay }
    }

    /// The rate for optimizer step `step` (counted from 0).
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = (self.total_steps - self.warmup_steps).max(1) as f64;
        let left = (self.total_steps.saturating_sub(step)) as f64 / span; // 1 just after warmup → 1/span at the end
        match self.decay {
            Decay::Linear => self.peak * left,
            Decay::Cosine => self.peak * 0.5 * (1.0 - (std::f64::consts::PI * left).cos()),
            Decay::Constant => self.peak,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = LrSchedule::new(1.0, 0.1, 100, Decay::Linear);
        assert_eq!(s.warmup_steps, 10);
        assert!((s.at(0) - 0.1).abs() < 1e-12 && (s.at(9) - 1.0).abs() < 1e-12);
        assert!((s.at(10) - 1.0).abs() < 1e-12 && (s.at(55) - 0.5).abs() < 1e-12);
        assert!((s.at(99) - 1.0 / 90.0).abs() < 1e-12);
        let c = LrSchedule::new(1.0, 0.1, 100, Decay::Cosine);
        assert!((c.at(10) - 1.0).abs() < 1e-12 && (c.at(55) - 0.5).abs() < 1e-12);
        assert!(c.at(30) > s.at(30), "cosine stays higher early");
        assert!(c.at(99) < 1e-3 && c.at(99) > 0.0);
        assert_eq!(LrSchedule::new(2.0, 0.0, 5, Decay::Constant).at(4), 2.0);
    }
}
