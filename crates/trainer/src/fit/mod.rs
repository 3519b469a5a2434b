//! The one training loop, for every module that trains (interventions, and the MLP of the
//! hierarchical-equality task): AdamW with warmup and linear or cosine decay, gradient clipping
//! and accumulation, temperature annealing (Boundless DAS), validation with early stopping,
//! checkpoints every N steps, Ctrl-C, `--resume`, TensorBoard scalars and a progress bar.
//!
//! What differs between DAS, ReFT, probes and the MLP is only the [`Objective`] (the loss of one
//! batch and the validation score) and the [`Trainable`] module.
//!
//! Determinism: the order of the batches in epoch `e` is a shuffle seeded by `(seed, e)`, the
//! rate and temperature are functions of the step, and checkpoints keep the optimizer state at
//! full precision; so a run stopped at a checkpoint and resumed ends with the same weights as a
//! run never stopped.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::AdamW;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use ferrovene_interventions::das::TemperatureSchedule;
use ferrovene_interventions::orthogonal::orthogonality_error;
use ferrovene_interventions::{Intervention, InterventionSet};
use ferrovene_models::arch::mlp::Mlp;
use ferrovene_models::layout::contiguous;
use ferrovene_models::rng::Rng;

mod config;

pub use config::{EarlyStopping, FitConfig, StopOn};

use crate::checkpoint::{self, Evaluation, LoopState};
use crate::divergence::{Diverged, first_non_finite};
use crate::events::{Events, progress_if};
use crate::grad_sum::{AllSum, sum_step};
use crate::schedule::LrSchedule;

/// A module the loop can train: any burn autodiff module, with the hooks the loop calls on the
/// ones that have them.
pub trait Trainable<B: AutodiffBackend>: AutodiffModule<B> + Clone {
    /// Sets the annealed temperature τ (Boundless DAS, sigmoid masks); others ignore it.
    fn set_temperature(&mut self, _tau: f64) {}
    /// `‖RRᵀ − I‖` of a learned rotation, logged beside the validation numbers.
    fn orthogonality_error(&self) -> Option<f32> {
        None
    }
}

impl<B: AutodiffBackend> Trainable<B> for Intervention<B> {
    fn set_temperature(&mut self, tau: f64) {
        Intervention::set_temperature(self, tau);
    }

    fn orthogonality_error(&self) -> Option<f32> {
        self.rotation().map(|r| orthogonality_error(r.matrix()))
    }
}

impl<B: AutodiffBackend> Trainable<B> for InterventionSet<B> {
    fn set_temperature(&mut self, tau: f64) {
        for m in &mut self.members {
            m.set_temperature(tau);
        }
    }

    /// The largest error of the set's rotations.
    fn orthogonality_error(&self) -> Option<f32> {
        self.members.iter().filter_map(Trainable::<B>::orthogonality_error).reduce(f32::max)
    }
}

impl<B: AutodiffBackend> Trainable<B> for Mlp<B> {}

impl<B: AutodiffBackend> Trainable<B> for ferrovene_models::arch::mlp::StackedMlp<B> {}

/// What is being trained for: a loss per batch and a validation score.
pub trait Objective<B: AutodiffBackend, M = Intervention<B>> {
    /// Batches per epoch.
    fn batches(&self) -> usize;
    /// The loss of batch `index` (a mean over its examples), with the module's graph.
    fn loss(&self, module: &M, index: usize) -> Result<Tensor<B, 1>>;
    /// `(loss, accuracy)` on the validation examples, or `None` when there are none.
    fn validate(&self, module: &M) -> Result<Option<(f32, f32)>>;
    /// Whether a validation accuracy means the goal is met and training can stop there (e.g.
    /// exact recall of a memorised passage). Never, by default.
    fn reached(&self, _accuracy: f32) -> bool {
        false
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
    /// In a several-node run (`--nodes`), sums every step's gradients, loss and Ctrl-C with the
    /// other nodes' ([`crate::grad_sum`]); the objective's losses are this node's share.
    pub nodes: Option<&'a dyn AllSum>,
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
pub struct Fitted<M> {
    /// The trained module (the best one under early stopping).
    pub module: M,
    /// The loop's counters, losses and validations.
    pub state: LoopState,
    /// How it ended.
    pub outcome: Outcome,
}

/// `grads` with every gradient in row-major order ([`contiguous`]): the weight of `x · Wᵀ` gets
/// a transposed view from autodiff, and the optimizer's elementwise ops on a view walk its
/// strides one element at a time on the CPU (a seventh of a hierarchical-equality MLP step).
/// The values are unchanged.
fn contiguous_grads<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: GradientsParams) -> GradientsParams {
    struct Copier(GradientsParams);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Copier {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = self.0.remove::<B::InnerBackend, D>(param.id) {
                self.0.register::<B::InnerBackend, D>(param.id, contiguous(grad));
            }
        }
    }
    let mut copier = Copier(grads);
    module.visit(&mut copier);
    copier.0
}

/// Micro-batch `m` of the run (over all epochs): the batch index in its epoch's order.
fn batch_at(m: usize, n: usize, cfg: &FitConfig, order: &mut (usize, Vec<usize>)) -> usize {
    if !cfg.shuffle {
        return m % n;
    }
    let epoch = m / n;
    if order.1.len() != n || order.0 != epoch {
        *order = (epoch, epoch_order(cfg.seed, epoch, n));
    }
    order.1[m % n]
}

/// The order of `n` batches in epoch `epoch` of a shuffled run seeded by `seed`: what [`fit`]
/// goes through, for trainers that lay out several runs' batches themselves (stacked models).
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut o: Vec<usize> = (0..n).collect();
    Rng::new(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut o);
    o
}

/// Trains `module` on `objective`.
///
/// ```
/// use burn::backend::Autodiff;
/// use burn::tensor::Tensor;
/// use ferrovene_interventions::{Intervention, InterventionSet};
/// use ferrovene_interventions::steering::Steering;
/// use ferrovene_models::Cpu;
/// use ferrovene_trainer::fit::{FitConfig, FitIo, Objective, fit};
///
/// type B = Autodiff<Cpu>;
///
/// /// Pull a learned steering vector towards `target`: loss = |v − target|².
/// struct TowardsTarget(Tensor<B, 1>);
///
/// impl Objective<B> for TowardsTarget {
///     fn batches(&self) -> usize { 1 }
///     fn loss(&self, iv: &Intervention<B>, _batch: usize) -> anyhow::Result<Tensor<B, 1>> {
///         let Intervention::Steering(s) = iv else { anyhow::bail!("a steering vector") };
///         Ok((s.vector.val() - self.0.clone()).powf_scalar(2.0).sum())
///     }
///     fn validate(&self, _: &Intervention<B>) -> anyhow::Result<Option<(f32, f32)>> { Ok(None) }
/// }
///
/// let device = Default::default();
/// let target = Tensor::<B, 1>::from_floats([1.0, -2.0, 0.5], &device);
/// let mut start = Steering::fixed(Tensor::zeros([3], &device), 1.0);
/// start.vector = start.vector.set_require_grad(true);
/// let cfg = FitConfig::constant(300, 0.05, 0, false); // 300 epochs of one batch, Adam at 0.05
/// let fitted = fit(&TowardsTarget(target), Intervention::Steering(start), &cfg, FitIo::default())?;
/// let losses = &fitted.state.losses;
/// assert_eq!(losses.len(), 300);
/// assert!(losses[299] < 1e-3 * losses[0], "{} → {}", losses[0], losses[299]);
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn fit<B, M, O>(objective: &O, module: M, cfg: &FitConfig, io: FitIo<'_>) -> Result<Fitted<M>>
where
    B: AutodiffBackend,
    M: Trainable<B>,
    O: Objective<B, M> + ?Sized,
{
    let n = objective.batches();
    if n == 0 {
        bail!("no training batches");
    }
    cfg.check()?;
    let show = io.progress;
    let (mut run, mut module) = Loop::start(objective, module, cfg, n, io)?;
    if run.state.stopped_early || run.state.step >= run.total {
        let outcome = if run.state.stopped_early { Outcome::StoppedEarly } else { Outcome::Finished };
        return Ok(run.finish(module, outcome));
    }
    let bar = progress_if(show, run.total, "training");
    bar.set_position(run.state.step as u64);
    bar.reset_eta();
    let mut outcome = Outcome::Finished;
    while run.state.step < run.total {
        let loss;
        (module, loss) = run.step(module)?;
        bar.inc(1);
        if show {
            bar.set_message(format!("loss {loss:.4}"));
        }
        if let Some(end) = run.after_step(&module)? {
            outcome = end;
            break;
        }
    }
    bar.finish_and_clear();
    Ok(run.finish(module, outcome))
}

/// The loop between steps: the optimizer and the counters (the module itself is passed along,
/// so the optimizer gets it by value and can update its tensors in place).
struct Loop<'a, B: AutodiffBackend, M: Trainable<B>, O: ?Sized> {
    objective: &'a O,
    cfg: &'a FitConfig,
    optimizer: OptimizerAdaptor<AdamW, M, B>,
    best: Option<M>,
    state: LoopState,
    /// Batches per epoch.
    n: usize,
    /// Optimizer steps in the run.
    total: usize,
    schedule: LrSchedule,
    tau: Option<TemperatureSchedule>,
    order: (usize, Vec<usize>),
    run_dir: Option<&'a Path>,
    events: Option<&'a mut Events>,
    interrupt: Option<&'a AtomicBool>,
    /// The other nodes of a several-node run.
    nodes: Option<&'a dyn AllSum>,
    /// Whether a node was interrupted before the last step's sum (several nodes: all stop
    /// after the same step).
    nodes_interrupted: bool,
    /// When the last checkpoint was written (or the loop started).
    last_checkpoint: std::time::Instant,
}

impl<'a, B, M, O> Loop<'a, B, M, O>
where
    B: AutodiffBackend,
    M: Trainable<B>,
    O: Objective<B, M> + ?Sized,
{
    /// A fresh loop and its module, or the ones a checkpoint left (with `io.resume`).
    fn start(objective: &'a O, module: M, cfg: &'a FitConfig, n: usize, io: FitIo<'a>) -> Result<(Self, M)> {
        let device = module.devices().first().cloned().unwrap_or_default();
        let FitIo { run_dir, events, interrupt, resume, progress: _, fingerprint, nodes } = io;
        let total = cfg.total_steps(n);
        let (module, optimizer, best, state) = if resume {
            let dir = run_dir.ok_or_else(|| anyhow::anyhow!("--resume needs the run folder"))?;
            let r = checkpoint::load(dir, module, cfg.optimizer::<B, M>(), &device)?;
            if r.state.fingerprint != fingerprint {
                bail!(
                    "the checkpoint in {} was made with another recipe or pair file (fingerprint {} ≠ {}); start a new run instead",
                    dir.display(),
                    r.state.fingerprint,
                    fingerprint
                );
            }
            (r.module, r.optimizer, r.best, r.state)
        } else {
            (module, cfg.optimizer::<B, M>(), None, LoopState { fingerprint, ..Default::default() })
        };
        let run = Loop {
            objective,
            cfg,
            optimizer,
            best,
            state,
            n,
            total,
            schedule: LrSchedule::new(cfg.lr, cfg.warmup, total, cfg.decay),
            tau: cfg
                .temperature
                .map(|t| TemperatureSchedule { steps: if t.steps == 0 { total } else { t.steps }, ..t }),
            order: (usize::MAX, Vec::new()),
            run_dir,
            events,
            interrupt,
            nodes,
            nodes_interrupted: false,
            last_checkpoint: std::time::Instant::now(),
        };
        Ok((run, module))
    }

    /// One optimizer step over its micro-batches; returns the updated module and the step's loss.
    fn step(&mut self, mut module: M) -> Result<(M, f32)> {
        let (step, acc) = (self.state.step, self.cfg.accumulate.max(1));
        if let Some(t) = &self.tau {
            module.set_temperature(t.at(step));
        }
        let (from, to) = (step * acc, ((step + 1) * acc).min(self.cfg.epochs * self.n));
        let mut step_loss = 0.0f32;
        let grads = if to - from == 1 {
            // One micro-batch (no accumulation): its gradients as they are. Dividing by 1 and
            // adding to an empty accumulator change no value, only cost operations per step,
            // which is most of a step for tiny models.
            let loss = self.objective.loss(&module, batch_at(from, self.n, self.cfg, &mut self.order))?;
            step_loss = loss.clone().into_scalar().elem::<f32>();
            GradientsParams::from_grads(loss.backward(), &module)
        } else {
            let mut grads = GradientsAccumulator::<M>::new();
            for m in from..to {
                let index = batch_at(m, self.n, self.cfg, &mut self.order);
                let loss = self.objective.loss(&module, index)? / (to - from) as f64;
                step_loss += loss.clone().into_scalar().elem::<f32>();
                grads.accumulate(&module, GradientsParams::from_grads(loss.backward(), &module));
            }
            grads.grads()
        };
        let grads = match self.nodes {
            Some(sum) => {
                let here = self.interrupt.is_some_and(|f| f.load(Ordering::SeqCst));
                let summed = sum_step(&module, grads, step_loss, here, sum)?;
                (step_loss, self.nodes_interrupted) = (summed.loss, summed.interrupted);
                summed.grads
            }
            None => grads,
        };
        if !step_loss.is_finite() {
            return Err(self.diverged(format!("the loss ({step_loss})")));
        }
        let rate = self.schedule.at(step);
        let grads = contiguous_grads(&module, grads);
        let module = self.optimizer.step(rate, module, grads);
        if let Some((name, sum)) = first_non_finite(&module.valid()) {
            return Err(self.diverged(format!("parameter `{name}` (its entries sum to {sum})")));
        }
        self.state.step += 1;
        self.state.losses.push(step_loss);
        if let Some(ev) = self.events.as_deref_mut() {
            ev.scalar("train/loss", step_loss as f64, self.state.step);
            ev.scalar("train/lr", rate, self.state.step);
            if let Some(t) = &self.tau {
                ev.scalar("train/temperature", t.at(step), self.state.step);
            }
        }
        Ok((module, step_loss))
    }

    /// The error that ends a run whose step `state.step + 1` made `what` non-finite; with a run
    /// folder, its report says so (the checkpoints there are all from finite steps).
    fn diverged(&self, what: String) -> anyhow::Error {
        let d = Diverged {
            step: self.state.step + 1,
            what,
            last_finite_loss: self.state.losses.last().copied(),
            lr: self.cfg.lr,
        };
        if let Some(dir) = self.run_dir {
            // Every value a number or a string: no step may have had a finite loss.
            let last = d.last_finite_loss.map_or_else(|| serde_json::json!("none"), |l| serde_json::json!(l));
            let report = serde_json::json!({
                "outcome": "diverged", "step": d.step, "what": d.what, "last_finite_loss": last, "lr": d.lr, "error": d.to_string(),
            });
            if let Err(e) = crate::run_dir::write_atomic(
                &dir.join("report.json"),
                serde_json::to_string_pretty(&report).unwrap_or_default().as_bytes(),
            ) {
                eprintln!("warning: could not write the report of the diverged run: {e:#}");
            }
        }
        d.into()
    }

    /// Validation, early stopping, checkpoints and Ctrl-C after a step; `Some` ends the loop.
    fn after_step(&mut self, module: &M) -> Result<Option<Outcome>> {
        let mut outcome = None;
        if self.validation_due() {
            outcome = self.validate(module)?;
        }
        // Several nodes stop together, after the step whose sum saw a node interrupted.
        let interrupted = match self.nodes {
            Some(_) => self.nodes_interrupted,
            None => self.interrupt.is_some_and(|f| f.load(Ordering::SeqCst)),
        };
        let epoch_end = (self.state.step * self.cfg.accumulate.max(1)).is_multiple_of(self.n);
        let minutes = self.cfg.checkpoint_minutes > 0.0
            && self.last_checkpoint.elapsed().as_secs_f64() >= 60.0 * self.cfg.checkpoint_minutes;
        let due = epoch_end
            || minutes
            || (self.cfg.checkpoint_every > 0 && self.state.step.is_multiple_of(self.cfg.checkpoint_every));
        if let Some(dir) = self.run_dir
            && (due || interrupted || self.state.stopped_early)
        {
            let events = self.events.as_deref_mut();
            checkpoint::save_then(dir, module, &self.optimizer, self.best.as_ref(), &self.state, || {
                if let Some(ev) = events {
                    ev.flush();
                }
            })?;
            self.last_checkpoint = std::time::Instant::now();
        }
        if self.state.stopped_early {
            return Ok(Some(outcome.unwrap_or(Outcome::StoppedEarly)));
        }
        Ok(interrupted.then_some(Outcome::Interrupted))
    }

    /// Whether this step ends an epoch or an `eval_every` period.
    fn validation_due(&self) -> bool {
        let (step, acc) = (self.state.step, self.cfg.accumulate.max(1));
        let to = (step * acc).min(self.cfg.epochs * self.n);
        if self.cfg.eval_every == 0 {
            to % self.n == 0 || to == self.cfg.epochs * self.n
        } else {
            step % self.cfg.eval_every == 0 || step == self.total
        }
    }

    /// Validates; keeps the best module under early stopping; `Some(Reached)` when the goal is met.
    fn validate(&mut self, module: &M) -> Result<Option<Outcome>> {
        let Some((loss, accuracy)) = self.objective.validate(module)? else { return Ok(None) };
        let e = Evaluation { step: self.state.step, loss, accuracy };
        self.state.history.push(e);
        if let Some(ev) = self.events.as_deref_mut() {
            ev.scalar("dev/loss", loss as f64, e.step);
            ev.scalar("dev/accuracy", accuracy as f64, e.step);
            if let Some(err) = module.orthogonality_error() {
                ev.scalar("train/orthogonality_error", err as f64, e.step);
            }
            // With checkpoints, scalars reach the event file with them (see `Events`).
            if self.run_dir.is_none() {
                ev.flush();
            }
        }
        if self.objective.reached(accuracy) {
            self.state.stopped_early = true;
            return Ok(Some(Outcome::Reached));
        }
        let Some(es) = &self.cfg.early_stopping else { return Ok(None) };
        let better = match (&self.state.best, es.metric) {
            (None, _) => true,
            (Some(b), StopOn::Accuracy) => accuracy > b.accuracy,
            (Some(b), StopOn::Loss) => loss < b.loss,
        };
        if better {
            self.state.best = Some(e);
            self.state.evals_since_best = 0;
            self.best = Some(module.clone());
        } else {
            self.state.evals_since_best += 1;
            self.state.stopped_early |= self.state.evals_since_best >= es.patience;
        }
        Ok(None)
    }

    /// The result: the best module under early stopping (unless the goal was reached or the run
    /// interrupted), else the last.
    fn finish(mut self, module: M, outcome: Outcome) -> Fitted<M> {
        if let Some(ev) = self.events.as_deref_mut() {
            ev.flush();
        }
        let module = match (&self.cfg.early_stopping, outcome) {
            (Some(_), Outcome::Finished | Outcome::StoppedEarly) => self.best.unwrap_or(module),
            _ => module,
        };
        Fitted { module, state: self.state, outcome }
    }
}
