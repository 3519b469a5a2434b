//! What a recipe kind is to the rest of the trainer: an [`Experiment`] that checks its values and
//! runs on a backend, in the [`RunContext`] it is given. Each kind's module implements it; the
//! registry of kinds ([`super::Recipe`]) dispatches to it.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;

/// How a recipe run is called: its name, where runs go, what may stop it, and the recipe as run.
pub struct RunContext<'a> {
    /// The recipe's name (its file name): runs go to `out_root/name/<timestamp>/`.
    pub name: &'a str,
    /// Where run folders go (`runs/`).
    pub out_root: &'a Path,
    /// Go on from this run folder's latest checkpoint (kinds that are [`Experiment::resumable`]).
    pub resume: Option<&'a Path>,
    /// Set by Ctrl-C: checkpoint and stop.
    pub interrupt: Option<&'a AtomicBool>,
    /// Progress bars (drawn only on a terminal anyway).
    pub progress: bool,
    /// The recipe as run, with its kind (TOML): written into the run folder and the report.
    pub as_run: &'a str,
    /// Most bytes the frozen cache may take before batches are prepared when used instead.
    pub cache_budget: u64,
    /// This node's part in a several-node run (`--nodes`), for kinds that are
    /// [`Experiment::data_parallel`].
    pub nodes: Option<&'a crate::nodes::NodePlan>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Done; everything is in this run folder.
    Done(PathBuf),
    /// Stopped by Ctrl-C with a checkpoint in this folder.
    Interrupted(PathBuf),
    /// A node other than rank 0 of a several-node run did its part (rank 0 wrote the run folder
    /// and, when interrupted, the checkpoint).
    NodeDone {
        /// Whether the run was interrupted.
        interrupted: bool,
    },
}

/// The keys `trainer sweep` sets on a sweep recipe.
pub struct SweepAxes {
    /// The key `--positions` (filler-gap) or `--regions` (suites) sets.
    pub positions_key: &'static str,
    /// Every position `--full` sweeps.
    pub every_position: &'static [&'static str],
    /// The boolean key of the follow-up experiments `--no-generalization` turns off, if any.
    pub follow_up: Option<&'static str>,
    /// Whether the kind runs template suites: `--tasks`, `--methods` and `--templates` set its
    /// `tasks`, `methods` and `suite`.
    pub suite: bool,
}

/// What a recipe kind does: check its values, then run on a backend, leaving a run folder.
pub trait Experiment {
    /// One line for `trainer list`.
    fn description(&self) -> String;
    /// Checks the values that need no model (called whenever a recipe is read, after `--set`).
    fn check(&self) -> Result<()>;
    /// Whether `--resume` can go on from a checkpoint (long single trainings); short experiments
    /// just run again.
    fn resumable(&self) -> bool {
        false
    }
    /// For `trainer sweep`: the axes this kind sweeps, or `None` when it is not a sweep.
    fn sweep_axes(&self) -> Option<SweepAxes> {
        None
    }
    /// Runs on backend `B`.
    fn run<B: AutodiffBackend>(&self, ctx: &RunContext<'_>, device: &B::Device) -> Result<RunEnd>;
    /// Whether `--devices` can share this kind's training between several devices
    /// ([`crate::replicas`]).
    fn data_parallel(&self) -> bool {
        false
    }
    /// Whether `--nodes` can share this kind's training between several nodes ([`crate::nodes`]).
    fn several_nodes(&self) -> bool {
        false
    }
    /// Runs on backend `B` with the training shared between `devices` (the first holds the
    /// trained module, the validation and the evaluation); kinds that are
    /// [`Experiment::data_parallel`] override it.
    fn run_shared<B: AutodiffBackend>(&self, ctx: &RunContext<'_>, devices: &[B::Device]) -> Result<RunEnd> {
        let device = devices.first().ok_or_else(|| anyhow::anyhow!("no device to run on"))?;
        self.run::<B>(ctx, device)
    }
}
