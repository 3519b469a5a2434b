//! Checkpoints: everything a run needs to go on exactly where it stopped — the intervention, the
//! optimizer's moments, the best intervention so far (early stopping) and the loop's counters.
//!
//! Each checkpoint is a folder `checkpoints/step-NNNNNN/`, written under a temporary name and
//! renamed into place, and `checkpoints/latest` names the newest one (also replaced atomically),
//! so a crash while writing leaves the previous checkpoint intact. The two newest are kept.
//! Tensors are stored at full precision with burn's recorder, so a resumed run continues with
//! bit-identical state.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

/// A validation result during training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Optimizer steps done when it was measured.
    pub step: usize,
    /// Mean loss on the validation examples.
    pub loss: f32,
    /// Accuracy on them (IIA for DAS, class accuracy for probes, target-token accuracy for ReFT).
    pub accuracy: f32,
}

/// The training loop's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Optimizer steps done.
    pub step: usize,
    /// The loss of every optimizer step so far.
    pub losses: Vec<f32>,
    /// Every validation so far.
    pub history: Vec<Evaluation>,
    /// The best validation so far (the one whose intervention is kept when early stopping).
    pub best: Option<Evaluation>,
    /// Validations since the best one (early stopping's patience counter).
    pub evals_since_best: usize,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// A fingerprint of what the run trains on (recipe and data hash); a resume refuses to go on
    /// with different ones.
    pub fingerprint: String,
}

type Rec = BinFileRecorder<FullPrecisionSettings>;

/// A checkpoint read back.
pub struct Restored<M, O> {
    /// The trained module (an intervention, or any module [`crate::fit`] trains) at the checkpoint.
    pub module: M,
    /// The optimizer with its state.
    pub optimizer: O,
    /// The best module so far, when early stopping keeps one.
    pub best: Option<M>,
    /// The loop's counters.
    pub state: LoopState,
}

/// The `checkpoints/` folder of a run folder.
pub fn folder(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Writes a checkpoint of the loop at `state.step`.
pub fn save<B, M, O>(run_dir: &Path, iv: &M, opt: &O, best: Option<&M>, state: &LoopState) -> Result<PathBuf>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    save_then(run_dir, iv, opt, best, state, || {})
}

/// [`save`], calling `before_latest` once the checkpoint's folder is in place and before
/// `latest` names it. The loop flushes its TensorBoard scalars there: a kill after `latest`
/// moves then finds every step up to it on disk, and one before it finds the older checkpoint,
/// whose later steps the resumed run logs again (a kill inside the flush can only cut steps
/// past the checkpoint that `latest` still names).
pub fn save_then<B, M, O>(
    run_dir: &Path,
    iv: &M,
    opt: &O,
    best: Option<&M>,
    state: &LoopState,
    before_latest: impl FnOnce(),
) -> Result<PathBuf>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    if !run_dir.is_dir() {
        bail!(
            "the run folder {} was removed while the run was going: no checkpoint can be written (start the run again)",
            run_dir.display()
        );
    }
    let root = folder(run_dir);
    let name = format!("step-{:06}", state.step);
    let tmp = root.join(format!("{name}.tmp"));
    let done = root.join(&name);
    let _ = std::fs::remove_dir_all(&tmp);
    let written = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(|e| crate::run_dir::io_error(e, "creating checkpoint folder", &tmp))?;
        let rec = Rec::new();
        let fail = |what: &str, e: burn::record::RecorderError| {
            anyhow!("writing the {what} of checkpoint {}: {}", tmp.display(), recorder_reason(&e))
        };
        rec.record(iv.clone().into_record(), tmp.join("intervention")).map_err(|e| fail("intervention", e))?;
        rec.record(opt.to_record(), tmp.join("optimizer")).map_err(|e| fail("optimizer state", e))?;
        if let Some(b) = best {
            rec.record(b.clone().into_record(), tmp.join("best")).map_err(|e| fail("best intervention", e))?;
        }
        let state_path = tmp.join("state.json");
        crate::run_dir::write_atomic(&state_path, &serde_json::to_vec_pretty(state)?)?;
        let _ = std::fs::remove_dir_all(&done);
        std::fs::rename(&tmp, &done).map_err(|e| crate::run_dir::io_error(e, "moving into place checkpoint", &tmp))?;
        crate::run_dir::sync_folder(&root);
        Ok(())
    })();
    if let Err(e) = written {
        // Nothing half-written stays behind (a full disk fails here).
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    before_latest();
    crate::run_dir::write_atomic(&root.join("latest"), name.as_bytes())?;
    // Keep the newest two.
    let mut steps: Vec<PathBuf> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-") && !n.ends_with(".tmp"))
        })
        .collect();
    steps.sort();
    for old in steps.iter().rev().skip(2) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(done)
}

/// A recorder error as the user reads it: a full disk says "no space left on device".
fn recorder_reason(e: &burn::record::RecorderError) -> String {
    let text = format!("{e:?}");
    if text.contains("code: 28") || text.contains("StorageFull") { "no space left on device".into() } else { text }
}

/// Whether `run_dir` has a checkpoint to resume from.
pub fn exists(run_dir: &Path) -> bool {
    folder(run_dir).join("latest").exists()
}

/// Reads the latest checkpoint into `skeleton` (a module of the same shape, e.g. freshly
/// initialised from the recipe) and `opt` (a fresh optimizer of the same configuration). When
/// it cannot be read (a kill while the disk was full, a damaged file), the newest earlier one
/// that can is used instead, saying which was skipped and why.
pub fn load<B, M, O>(run_dir: &Path, skeleton: M, opt: O, device: &B::Device) -> Result<Restored<M, O>>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let root = folder(run_dir);
    let latest = root.join("latest");
    let name = std::fs::read_to_string(&latest).with_context(|| {
        format!(
            "no checkpoint to resume from in {} (runs write one every `checkpoint_every` steps and on Ctrl-C)",
            run_dir.display()
        )
    })?;
    let newest = root.join(name.trim());
    let mut earlier: Vec<PathBuf> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            *p != newest
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-") && !n.ends_with(".tmp"))
        })
        .collect();
    earlier.sort();
    let mut failures: Vec<(PathBuf, anyhow::Error)> = Vec::new();
    for dir in std::iter::once(newest).chain(earlier.into_iter().rev()) {
        match load_from(&dir, skeleton.clone(), opt.clone(), device) {
            Ok(restored) => {
                for (skipped, why) in &failures {
                    eprintln!("warning: skipped checkpoint {}: {why:#}", skipped.display());
                }
                return Ok(restored);
            }
            Err(e) => failures.push((dir, e)),
        }
    }
    let reasons: Vec<String> = failures.iter().map(|(d, e)| format!("{}: {e:#}", d.display())).collect();
    bail!("no checkpoint in {} can be read: {}", root.display(), reasons.join("; "))
}

/// Reads the checkpoint in `dir`.
fn load_from<B, M, O>(dir: &Path, skeleton: M, opt: O, device: &B::Device) -> Result<Restored<M, O>>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    if !dir.is_dir() {
        bail!("the checkpoint folder is missing");
    }
    let rec = Rec::new();
    let fail = |what: &str, e: burn::record::RecorderError| {
        anyhow!("reading the {what} of checkpoint {}: {e:?}", dir.display())
    };
    let module =
        skeleton.clone().load_record(rec.load(dir.join("intervention"), device).map_err(|e| fail("intervention", e))?);
    let optimizer = opt.load_record(rec.load(dir.join("optimizer"), device).map_err(|e| fail("optimizer state", e))?);
    let best = if dir.join("best.bin").exists() {
        Some(skeleton.load_record(rec.load(dir.join("best"), device).map_err(|e| fail("best intervention", e))?))
    } else {
        None
    };
    for (what, m) in [("intervention", Some(&module)), ("best intervention", best.as_ref())] {
        if let Some((name, sum)) = m.and_then(|m| crate::divergence::first_non_finite(m)) {
            bail!(
                "the {what} in checkpoint {} has non-finite values (`{name}` sums to {sum}); start a new run with a lower learning rate",
                dir.display()
            );
        }
    }
    let state_path = dir.join("state.json");
    let state: LoopState = serde_json::from_slice(
        &std::fs::read(&state_path).with_context(|| format!("reading {}", state_path.display()))?,
    )
    .with_context(|| format!("parsing {}", state_path.display()))?;
    Ok(Restored { module, optimizer, best, state })
}
