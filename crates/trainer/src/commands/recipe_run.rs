//! A recipe run as the commands start it: on whatever backend `--device` picks (with autodiff
//! on top), with the flags Ctrl-C and SIGTERM raise.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock};

use anyhow::Result;
use burn::tensor::backend::Backend;

use crate::device::OnBackend;
use crate::experiments::{Recipe, RunEnd, RunOptions};
use crate::nodes::NodePlan;

/// Set by Ctrl-C and SIGTERM; the training loop checkpoints and stops after the current step.
pub static INTERRUPT: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// Set by SIGTERM (what `timeout`, `docker stop` and job schedulers send): the run exits with
/// 143 instead of Ctrl-C's 130.
pub static TERMINATED: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// A recipe run on whatever backend `--device` picks (with autodiff on top).
pub struct RecipeRun {
    /// The recipe's name (runs go to `out/name/`).
    pub name: String,
    /// The recipe, checked.
    pub recipe: Recipe,
    /// Where runs go.
    pub out: PathBuf,
    /// The run folder to resume.
    pub resume: Option<PathBuf>,
    /// Progress bars.
    pub progress: bool,
    /// Most bytes the frozen cache may take.
    pub cache_budget: u64,
    /// This node's part in a several-node run.
    pub nodes: Option<NodePlan>,
}

impl OnBackend for RecipeRun {
    type Output = RunEnd;

    fn run<B: Backend>(self, device: B::Device) -> Result<RunEnd> {
        self.run_on_devices::<B>(vec![device])
    }

    fn run_on_devices<B: Backend>(self, devices: Vec<B::Device>) -> Result<RunEnd> {
        let opts = RunOptions {
            name: &self.name,
            out_root: &self.out,
            resume: self.resume.as_deref(),
            interrupt: Some(&**INTERRUPT),
            progress: self.progress,
            cache_budget: self.cache_budget,
            nodes: self.nodes.as_ref(),
        };
        self.recipe.run::<burn::backend::Autodiff<B>>(opts, &devices)
    }
}
