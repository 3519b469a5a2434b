//! The training loop shared by every kind of intervention: AdamW with warmup and linear or
//! cosine decay, gradient clipping and accumulation, temperature annealing (Boundless DAS),
//! validation with early stopping, checkpoints every N steps, Ctrl-C, `--resume`, TensorBoard
//! scalars and a progress bar.
//!
//! What differs between DAS, ReFT and probes is only the [`Objective`]: the loss of one batch
//! and the validation score.
//!
//! Determinism: the order of the batches in epoch `e` is a shuffle seeded by `(seed, e)`, the
//! rate and temperature are functions of the step, and checkpoints keep the optimizer state at
//! full precision; so a run stopped at a checkpoint and resumed ends with the same weights as a
//! run never stopped.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};
use burn::grad_clipping::GradientClippingConfig;
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use ferrovene_interventions::das::TemperatureSchedule;
use ferrovene_interventions::orthogonal::orthogonality_error;
use ferrovene_interventions::Intervention;
use ferrovene_models::rng::Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Evaluation, LoopState};
use crate::events::{progress, Events};
use crate::schedule::{Decay, LrSchedule};

/// What is being trained for: a loss per batch and a validation score.
pub trait Objective<B: AutodiffBackend> {
    /// Batches per epoch.
    fn batches(&self) -> usize;
    /// The loss of batch `index` (a mean over its examples), with the intervention's graph.
    fn loss(&self, iv: &Intervention<B>, index: usize) -> Result<Tensor<B, 1>>;
    /// `(loss, accuracy)` on the validation examples, or `None` when there are none.
    fn validate(&self, iv: &Intervention<B>) -> Result<Option<(f32, f32)>>;
    /// Whether a validation accuracy means the goal is met and training can stop there (e.g.
    /// exact recall of a memorised passage). Never, by default.
    fn reached(&self, _accuracy: f32) -> bool {
        false
    }
}

/// Which validation number early stopping watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StopOn {
    /// Accuracy (IIA for DAS), higher is better.
    #[default]
    Accuracy,
    /// Validation loss, lower is better.
    Loss,
}

/// Stop when the validation number has not improved for `patience` validations, and keep the
/// best intervention.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// What to watch.
    #[serde(default)]
    pub metric: StopOn,
    /// How many validations without improvement end the run.
    pub patience: usize,
}

/// Training settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitConfig {
    /// Passes over the batches.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Share of the optimizer steps spent warming up.
    pub warmup: f64,
    /// Decay after the warmup.
    pub decay: Decay,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Clip each parameter's gradient to this L2 norm (burn's norm clipping, per tensor).
    pub grad_clip: Option<f64>,
    /// Batches whose gradients are summed into one optimizer step.
    pub accumulate: usize,
    /// τ over the optimizer steps, for interventions with a temperature (Boundless DAS, sigmoid
    /// masks); `steps = 0` means the whole run.
    pub temperature: Option<TemperatureSchedule>,
    /// Validate every this many optimizer steps; 0 = at the end of every epoch.
    pub eval_every: usize,
    /// Early stopping on the validation set.
    pub early_stopping: Option<EarlyStopping>,
    /// Write a checkpoint every this many optimizer steps (0: only on Ctrl-C).
    pub checkpoint_every: usize,
    /// Seed of the batch order.
    pub seed: u64,
}

impl FitConfig {
    /// Optimizer steps in the whole run for `batches` batches per epoch.
    pub fn total_steps(&self, batches: usize) -> usize {
        (self.epochs * batches).div_ceil(self.accumulate.max(1)).max(1)
    }

    /// The optimizer, built the same way for a fresh run and a resumed one.
    fn optimizer<B: AutodiffBackend>(&self) -> impl Optimizer<Intervention<B>, B> + use<B>
    where
        Intervention<B>: AutodiffModule<B>,
    {
        AdamWConfig::new()
            .with_weight_decay(self.weight_decay as f32)
            .with_grad_clipping(self.grad_clip.map(|c| GradientClippingConfig::Norm(c as f32)))
            .init::<B, Intervention<B>>()
    }
}

/// Where the loop writes and what may stop it.
#[derive(Default)]
pub struct FitIo<'a> {
    /// The run folder (checkpoints go in `checkpoints/`); none: no checkpoints.
    pub run_dir: Option<&'a Path>,
    /// TensorBoard scalars.
    pub events: Option<&'a mut Events>,
    /// Set by the Ctrl-C handler: write a checkpoint and return.
    pub interrupt: Option<&'a AtomicBool>,
    /// Go on from the run folder's latest checkpoint.
    pub resume: bool,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// Identifies the recipe and data; stored in checkpoints, checked on resume.
    pub fingerprint: String,
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All epochs done.
    Finished,
    /// Early stopping ended it; the best intervention is returned.
    StoppedEarly,
    /// A validation met the objective's goal ([`Objective::reached`]); that intervention is returned.
    Reached,
    /// Ctrl-C: a checkpoint was written; `--resume` goes on.
    Interrupted,
}

/// The result of [`fit`].
pub struct Fitted<B: AutodiffBackend> {
    /// The trained intervention (the best one under early stopping).
    pub intervention: Intervention<B>,
    /// The loop's counters, losses and validations.
    pub state: LoopState,
    /// How it ended.
    pub outcome: Outcome,
}

/// Micro-batch `m` of the run (over all epochs): the batch index in its epoch's shuffled order.
fn batch_at(m: usize, n: usize, seed: u64, order: &mut (usize, Vec<usize>)) -> usize {
    let epoch = m / n;
    if order.1.len() != n || order.0 != epoch {
        let mut o: Vec<usize> = (0..n).collect();
        Rng::new(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut o);
        *order = (epoch, o);
    }
    order.1[m % n]
}

/// Sets τ on interventions that have one.
fn set_temperature<B: AutodiffBackend>(iv: &mut Intervention<B>, tau: f64) {
    match iv {
        Intervention::Boundless(b) => b.temperature = tau,
        Intervention::SigmoidMask(m) => m.temperature = tau,
        _ => {}
    }
}

/// Trains `iv` on `objective`.
pub fn fit<B, O>(objective: &O, iv: Intervention<B>, cfg: &FitConfig, io: FitIo<'_>) -> Result<Fitted<B>>
where
    B: AutodiffBackend,
    Intervention<B>: AutodiffModule<B>,
    O: Objective<B> + ?Sized,
{
    let n = objective.batches();
    if n == 0 {
        bail!("no training batches");
    }
    let device = iv.devices().first().cloned().unwrap_or_default();
    let FitIo { run_dir, mut events, interrupt, resume, progress: show, fingerprint } = io;
    let total = cfg.total_steps(n);
    let acc = cfg.accumulate.max(1);
    let micro_total = cfg.epochs * n;
    let schedule = LrSchedule::new(cfg.lr, cfg.warmup, total, cfg.decay);
    let tau = cfg.temperature.map(|t| TemperatureSchedule { steps: if t.steps == 0 { total } else { t.steps }, ..t });

    let (mut iv, mut opt, mut best, mut state) = if resume {
        let dir = run_dir.ok_or_else(|| anyhow::anyhow!("--resume needs the run folder"))?;
        let r = checkpoint::load(dir, iv, cfg.optimizer::<B>(), &device)?;
        if r.state.fingerprint != fingerprint {
            bail!(
                "the checkpoint in {} was made with another recipe or pair file (fingerprint {} ≠ {}); start a new run instead",
                dir.display(), r.state.fingerprint, fingerprint
            );
        }
        (r.intervention, r.optimizer, r.best, r.state)
    } else {
        (iv, cfg.optimizer::<B>(), None, LoopState { fingerprint: fingerprint.clone(), ..Default::default() })
    };
    if state.stopped_early || state.step >= total {
        let outcome = if state.stopped_early { Outcome::StoppedEarly } else { Outcome::Finished };
        let intervention = if cfg.early_stopping.is_some() { best.unwrap_or(iv) } else { iv };
        return Ok(Fitted { intervention, state, outcome });
    }

    let bar = progress(total, "training");
    if !show {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_position(state.step as u64);
    bar.reset_eta();
    let mut order = (usize::MAX, Vec::new());
    let mut outcome = Outcome::Finished;
    while state.step < total {
        let step = state.step;
        if let Some(t) = &tau {
            set_temperature(&mut iv, t.at(step));
        }
        let (from, to) = (step * acc, ((step + 1) * acc).min(micro_total));
        let mut grads = GradientsAccumulator::<Intervention<B>>::new();
        let mut step_loss = 0.0f32;
        for m in from..to {
            let loss = objective.loss(&iv, batch_at(m, n, cfg.seed, &mut order))? / (to - from) as f64;
            step_loss += loss.clone().into_scalar().elem::<f32>();
            grads.accumulate(&iv, GradientsParams::from_grads(loss.backward(), &iv));
        }
        let rate = schedule.at(step);
        iv = opt.step(rate, iv, grads.grads());
        state.step += 1;
        state.losses.push(step_loss);
        bar.inc(1);
        bar.set_message(format!("loss {step_loss:.4}"));
        if let Some(ev) = events.as_deref_mut() {
            ev.scalar("train/loss", step_loss as f64, state.step);
            ev.scalar("train/lr", rate, state.step);
            if let Some(t) = &tau {
                ev.scalar("train/temperature", t.at(step), state.step);
            }
        }

        let epoch_end = to % n == 0 || to == micro_total;
        let validate_now = if cfg.eval_every == 0 { epoch_end } else { state.step % cfg.eval_every == 0 || state.step == total };
        if validate_now && let Some((loss, accuracy)) = objective.validate(&iv)? {
            let e = Evaluation { step: state.step, loss, accuracy };
            state.history.push(e);
            if let Some(ev) = events.as_deref_mut() {
                ev.scalar("dev/loss", loss as f64, state.step);
                ev.scalar("dev/accuracy", accuracy as f64, state.step);
                if let Some(r) = iv.rotation() {
                    ev.scalar("train/orthogonality_error", orthogonality_error(r.matrix()) as f64, state.step);
                }
                ev.flush();
            }
            if objective.reached(accuracy) {
                outcome = Outcome::Reached;
                state.stopped_early = true;
            } else if let Some(es) = &cfg.early_stopping {
                let better = match (&state.best, es.metric) {
                    (None, _) => true,
                    (Some(b), StopOn::Accuracy) => accuracy > b.accuracy,
                    (Some(b), StopOn::Loss) => loss < b.loss,
                };
                if better {
                    state.best = Some(e);
                    state.evals_since_best = 0;
                    best = Some(iv.clone());
                } else {
                    state.evals_since_best += 1;
                    if state.evals_since_best >= es.patience {
                        state.stopped_early = true;
                    }
                }
            }
        }

        let interrupted = interrupt.is_some_and(|f| f.load(Ordering::SeqCst));
        let due = cfg.checkpoint_every > 0 && state.step % cfg.checkpoint_every == 0;
        if let Some(dir) = run_dir
            && (due || interrupted || state.stopped_early)
        {
            checkpoint::save(dir, &iv, &opt, best.as_ref(), &state)?;
            if let Some(ev) = events.as_deref_mut() {
                ev.flush();
            }
        }
        if state.stopped_early {
            if outcome != Outcome::Reached {
                outcome = Outcome::StoppedEarly;
            }
            break;
        }
        if interrupted {
            outcome = Outcome::Interrupted;
            break;
        }
    }
    bar.finish_and_clear();
    if let Some(ev) = events.as_deref_mut() {
        ev.flush();
    }
    let intervention = match (&cfg.early_stopping, outcome) {
        (Some(_), Outcome::Finished | Outcome::StoppedEarly) => best.unwrap_or(iv),
        // Goal reached (the intervention that met it), interrupted, or no early stopping.
        _ => iv,
    };
    Ok(Fitted { intervention, state, outcome })
}
