//! The training loop on a planted probe task (synthetic activations, no model, so each test runs
//! in moments): an interrupted run resumed from its checkpoint ends bit-identical to one never
//! stopped; accumulation equals a larger batch; clipping bounds the step; early stopping stops
//! and keeps the best; the TensorBoard file parses with valid CRCs and holds the losses; the
//! temperature follows its schedule.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use ferrovene_interventions::das::{Annealing, BoundlessDas, TemperatureSchedule};
use ferrovene_interventions::probe::LinearProbe;
use ferrovene_interventions::{Intervention, Orthogonal};
use ferrovene_models::rng::Rng;
use ferrovene_trainer::events::Events;

mod common;

use common::{masked_crc, read_scalars};
use ferrovene_trainer::fit::{EarlyStopping, FitConfig, FitIo, Objective, Outcome, StopOn, fit};
use ferrovene_trainer::objectives::probe::{FeatureBatch, ProbeObjective};
use ferrovene_trainer::schedule::Decay;

type AD = Autodiff<ferrovene_models::Cpu>;
const D: usize = 8;

fn temp(name: &str) -> PathBuf {
    let d = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ferrovene-fit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `n` examples in batches of `bs`: x ~ N(0, 1)^D, class = [x · w > 0] for a planted w.
fn planted(n: usize, bs: usize, seed: u64) -> Vec<FeatureBatch<AD>> {
    let mut rng = Rng::new(seed);
    let w: Vec<f64> = (0..D).map(|i| if i % 2 == 0 { 1.0 } else { -0.5 }).collect();
    let rows: Vec<(Vec<f32>, usize)> = (0..n)
        .map(|_| {
            let x: Vec<f32> = (0..D).map(|_| rng.normal() as f32).collect();
            let c = (x.iter().zip(&w).map(|(a, b)| *a as f64 * b).sum::<f64>() > 0.0) as usize;
            (x, c)
        })
        .collect();
    rows.chunks(bs)
        .map(|chunk| FeatureBatch {
            features: Tensor::from_data(
                TensorData::new(chunk.iter().flat_map(|r| r.0.clone()).collect::<Vec<_>>(), [chunk.len(), 1, D]),
                &Default::default(),
            ),
            classes: chunk.iter().map(|r| r.1).collect(),
        })
        .collect()
}

fn probe(seed: u64) -> Intervention<AD> {
    Intervention::Probe(LinearProbe::init(D, 2, &mut Rng::new(seed), &Default::default()))
}

fn cfg() -> FitConfig {
    FitConfig {
        epochs: 3,
        lr: 0.05,
        warmup: 0.2,
        decay: Decay::Cosine,
        weight_decay: 0.01,
        grad_clip: Some(1.0),
        accumulate: 2,
        temperature: None,
        eval_every: 2,
        early_stopping: None,
        checkpoint_every: 0,
        checkpoint_minutes: 0.0,
        seed: 11,
        shuffle: true,
    }
}

fn weights(iv: &Intervention<AD>) -> Vec<f32> {
    let Intervention::Probe(p) = iv else { panic!("a probe") };
    let mut v: Vec<f32> = p.weight.val().into_data().to_vec().unwrap();
    v.extend(p.bias.val().into_data().to_vec::<f32>().unwrap());
    v
}

fn io<'a>(dir: &'a Path, interrupt: Option<&'a AtomicBool>, resume: bool) -> FitIo<'a> {
    FitIo { run_dir: Some(dir), interrupt, resume, fingerprint: "planted".into(), ..Default::default() }
}

#[test]
fn interrupted_then_resumed_equals_uninterrupted() {
    let (train, val) = (planted(96, 8, 1), planted(32, 8, 2));
    let objective = ProbeObjective { train: &train, validation: &val };
    let cfg = FitConfig { checkpoint_every: 4, checkpoint_minutes: 0.0, ..cfg() };
    let straight = fit(&objective, probe(5), &cfg, io(&temp("straight"), None, false)).unwrap();
    assert_eq!(straight.outcome, Outcome::Finished);
    assert_eq!(straight.state.step, cfg.total_steps(train.len()));

    // Ctrl-C arrives during the first step: the loop checkpoints at step 1 and returns.
    let dir = temp("interrupted");
    let stop = AtomicBool::new(true);
    let first = fit(&objective, probe(5), &cfg, io(&dir, Some(&stop), false)).unwrap();
    assert_eq!((first.outcome, first.state.step), (Outcome::Interrupted, 1));
    // Resumed (into a differently initialised skeleton: the checkpoint's values win) and
    // interrupted again, then resumed to the end.
    let second = fit(&objective, probe(999), &cfg, io(&dir, Some(&stop), true)).unwrap();
    assert_eq!(
        (second.outcome, second.state.step),
        (Outcome::Interrupted, 2),
        "resumed at step 1, stopped after step 2"
    );
    let done = fit(&objective, probe(999), &cfg, io(&dir, None, true)).unwrap();
    assert_eq!(done.outcome, Outcome::Finished);
    assert_eq!(weights(&done.module), weights(&straight.module), "resumed weights differ from the uninterrupted run");
    assert_eq!(done.state.losses, straight.state.losses);
    assert_eq!(done.state.history, straight.state.history);

    // A checkpoint from another recipe or data is refused.
    let e =
        fit(&objective, probe(5), &cfg, FitIo { fingerprint: "other".into(), ..io(&dir, None, true) }).err().unwrap();
    assert!(format!("{e:#}").contains("another recipe or pair file"), "{e:#}");
    // Only the two newest checkpoints are kept.
    let kept = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("step-"))
        .count();
    assert_eq!(kept, 2);
}

/// A damaged newest checkpoint (a kill mid-write on a full disk, a bad sector) does not block
/// `--resume`: the newest earlier one that reads is used, and the run still ends where an
/// uninterrupted one ends.
#[test]
fn resume_falls_back_past_a_damaged_newest_checkpoint() {
    let (train, val) = (planted(96, 8, 1), planted(32, 8, 2));
    let objective = ProbeObjective { train: &train, validation: &val };
    let cfg = FitConfig { checkpoint_every: 1, checkpoint_minutes: 0.0, ..cfg() };
    let straight = fit(&objective, probe(5), &cfg, io(&temp("fallback-straight"), None, false)).unwrap();
    let dir = temp("fallback");
    let stop = AtomicBool::new(true);
    fit(&objective, probe(5), &cfg, io(&dir, Some(&stop), false)).unwrap();
    let second = fit(&objective, probe(5), &cfg, io(&dir, Some(&stop), true)).unwrap();
    assert_eq!(second.state.step, 2);
    let newest = dir.join("checkpoints").join(std::fs::read_to_string(dir.join("checkpoints/latest")).unwrap().trim());
    let damaged: Vec<std::path::PathBuf> = std::fs::read_dir(&newest)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    assert!(!damaged.is_empty(), "checkpoint files in {}", newest.display());
    for f in &damaged {
        std::fs::write(f, b"garbage").unwrap();
    }
    let done = fit(&objective, probe(999), &cfg, io(&dir, None, true)).unwrap();
    assert_eq!(done.outcome, Outcome::Finished);
    assert_eq!(weights(&done.module), weights(&straight.module), "resumed from step 1 after skipping step 2");
    // With every checkpoint damaged the error names them.
    for e in std::fs::read_dir(dir.join("checkpoints")).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            for f in std::fs::read_dir(&p).unwrap() {
                std::fs::write(f.unwrap().path(), b"garbage").unwrap();
            }
        }
    }
    let e = format!("{:#}", fit(&objective, probe(999), &cfg, io(&dir, None, true)).err().unwrap());
    assert!(e.contains("no checkpoint in") && e.contains("step-"), "{e}");
}

#[test]
fn accumulating_two_batches_equals_one_batch_twice_the_size() {
    let (small, big) = (planted(16, 8, 3), planted(16, 16, 3));
    let one_step = FitConfig { epochs: 1, accumulate: 2, grad_clip: None, eval_every: 0, ..cfg() };
    let a = fit(&ProbeObjective { train: &small, validation: &[] }, probe(7), &one_step, FitIo::default()).unwrap();
    let b = fit(
        &ProbeObjective { train: &big, validation: &[] },
        probe(7),
        &FitConfig { accumulate: 1, ..one_step },
        FitIo::default(),
    )
    .unwrap();
    assert_eq!((a.state.step, b.state.step), (1, 1));
    let (wa, wb) = (weights(&a.module), weights(&b.module));
    let diff = wa.iter().zip(&wb).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-6, "accumulated and big-batch steps differ by {diff}");
    let w0 = weights(&probe(7));
    assert!(wa.iter().zip(&w0).any(|(x, y)| (x - y).abs() > 1e-3), "the step moved nothing");
    assert!((a.state.losses[0] - b.state.losses[0]).abs() < 1e-6, "the step's loss is the mean over its batches");
}

#[test]
fn clipping_bounds_the_update() {
    let train = planted(16, 16, 4);
    let one = |clip| {
        let c = FitConfig { epochs: 1, accumulate: 1, grad_clip: clip, weight_decay: 0.0, eval_every: 0, ..cfg() };
        let w = weights(
            &fit(&ProbeObjective { train: &train, validation: &[] }, probe(8), &c, FitIo::default()).unwrap().module,
        );
        w.iter().zip(weights(&probe(8))).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
    };
    // Adam normalises the step, so only a clip far below Adam's ε shows: the step nearly vanishes.
    let (free, clipped) = (one(None), one(Some(1e-12)));
    assert!(free > 1e-2 && clipped < free * 1e-2, "unclipped step {free}, clipped step {clipped}");
}

#[test]
fn early_stopping_stops_and_keeps_the_best() {
    let (train, val) = (planted(64, 8, 5), planted(64, 16, 6));
    let c = FitConfig {
        epochs: 200,
        lr: 0.1,
        eval_every: 1,
        accumulate: 1,
        early_stopping: Some(EarlyStopping { metric: StopOn::Loss, patience: 3 }),
        ..cfg()
    };
    let total = c.total_steps(train.len());
    let dir = temp("early");
    let f = fit(&ProbeObjective { train: &train, validation: &val }, probe(9), &c, io(&dir, None, false)).unwrap();
    assert_eq!(f.outcome, Outcome::StoppedEarly);
    assert!(f.state.step < total, "stopped at {} of {total}", f.state.step);
    let best = f.state.best.unwrap();
    assert_eq!(f.state.step, best.step + 3, "three validations without a better loss");
    assert!(f.state.history.iter().all(|e| e.loss >= best.loss));
    let (acc, loss) = ferrovene_trainer::objectives::probe::evaluate(&f.module, &val).unwrap();
    assert_eq!((acc, loss), (best.accuracy, best.loss), "the returned probe is the best one, not the last");
    assert!(acc >= 0.9, "the planted direction is found: {acc}");
    // Resuming a run that stopped early returns the same best probe without training.
    let again = fit(&ProbeObjective { train: &train, validation: &val }, probe(9), &c, io(&dir, None, true)).unwrap();
    assert_eq!(weights(&again.module), weights(&f.module));
    assert_eq!(again.state, f.state);
}

#[test]
fn tensorboard_file_parses_and_holds_the_run() {
    assert_eq!(masked_crc(b""), 0xA282_EAD8, "masking of the empty CRC");
    let (train, val) = (planted(48, 8, 7), planted(16, 8, 8));
    let dir = temp("tb");
    let mut events = Events::create(&dir).unwrap();
    let c = FitConfig { accumulate: 1, ..cfg() };
    let f = fit(
        &ProbeObjective { train: &train, validation: &val },
        probe(10),
        &c,
        FitIo { events: Some(&mut events), ..Default::default() },
    )
    .unwrap();
    drop(events);
    let scalars = read_scalars(&dir);
    let series = |tag: &str| scalars.iter().filter(|s| s.0 == tag).map(|s| (s.1, s.2)).collect::<Vec<_>>();
    let losses: Vec<f32> = series("train/loss").iter().map(|s| s.1).collect();
    assert_eq!(losses, f.state.losses, "one loss per optimizer step, the values the loop saw");
    assert_eq!(
        series("train/loss").iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=f.state.step as i64).collect::<Vec<_>>()
    );
    let lrs = series("train/lr");
    assert_eq!(lrs.len(), f.state.step);
    let peak = lrs.iter().map(|s| s.1).fold(0.0, f32::max);
    assert!((peak - 0.05).abs() < 1e-6, "the schedule peaks at lr: {peak}");
    let dev = series("dev/accuracy");
    assert_eq!(dev.len(), f.state.history.len());
    assert_eq!(
        dev.iter().map(|s| s.1).collect::<Vec<_>>(),
        f.state.history.iter().map(|e| e.accuracy).collect::<Vec<_>>()
    );
}

/// An objective that only reads the intervention's τ (loss = β, so there is a gradient).
struct Tau<'a>(&'a std::cell::RefCell<Vec<f64>>);

impl Objective<AD> for Tau<'_> {
    fn batches(&self) -> usize {
        5
    }
    fn loss(&self, iv: &Intervention<AD>, _: usize) -> anyhow::Result<Tensor<AD, 1>> {
        let Intervention::Boundless(b) = iv else { anyhow::bail!("boundless") };
        self.0.borrow_mut().push(b.temperature);
        Ok(b.boundary.val().sum())
    }
    fn validate(&self, _: &Intervention<AD>) -> anyhow::Result<Option<(f32, f32)>> {
        Ok(None)
    }
}

#[test]
fn temperature_is_annealed_over_the_run() {
    let dev = Default::default();
    let iv = Intervention::Boundless(BoundlessDas {
        rotation: Orthogonal::random(4, 4, &mut Rng::new(1), &dev),
        boundary: burn::module::Param::from_tensor(Tensor::from_floats([0.5], &dev)),
        temperature: 50.0,
    });
    let seen = std::cell::RefCell::new(Vec::new());
    let c = FitConfig {
        epochs: 2,
        accumulate: 1,
        temperature: Some(TemperatureSchedule { start: 1.0, end: 0.01, steps: 0, annealing: Annealing::Geometric }),
        ..cfg()
    };
    fit(&Tau(&seen), iv, &c, FitIo::default()).unwrap();
    let taus = seen.into_inner();
    assert_eq!(taus.len(), 10);
    assert!((taus[0] - 1.0).abs() < 1e-12 && (taus[9] - 0.01).abs() < 1e-12, "{taus:?}");
    assert!((taus[1] / taus[0] - taus[9] / taus[8]).abs() < 1e-9, "geometric steps: {taus:?}");
}

/// A checkpoint whose parameters are NaN (written by another tool, or damaged in a way that
/// still parses) is refused on resume, naming the parameter.
#[test]
fn a_checkpoint_with_non_finite_values_is_refused() {
    let (train, val) = (planted(96, 8, 1), planted(32, 8, 2));
    let objective = ProbeObjective { train: &train, validation: &val };
    let cfg = FitConfig { checkpoint_every: 1, checkpoint_minutes: 0.0, ..cfg() };
    let dir = temp("nan-checkpoint");
    let stop = AtomicBool::new(true);
    let first = fit(&objective, probe(5), &cfg, io(&dir, Some(&stop), false)).unwrap();
    let Intervention::Probe(p) = probe(5) else { unreachable!() };
    let nan = Intervention::Probe(LinearProbe { weight: p.weight.map(|w| w * f32::NAN), ..p });
    ferrovene_trainer::checkpoint::save(&dir, &nan, &cfg.optimizer::<AD, Intervention<AD>>(), None, &first.state)
        .unwrap();
    let e = format!("{:#}", fit(&objective, probe(5), &cfg, io(&dir, None, true)).err().unwrap());
    assert!(e.contains("non-finite values") && e.contains("weight"), "{e}");
}

/// Without `checkpoint_every`, a run with a folder still checkpoints at the end of every epoch,
/// so a kill loses at most an epoch (the two newest are kept).
#[test]
fn every_epoch_ends_with_a_checkpoint() {
    let (train, val) = (planted(96, 8, 1), planted(32, 8, 2));
    let objective = ProbeObjective { train: &train, validation: &val };
    let cfg = FitConfig { checkpoint_every: 0, checkpoint_minutes: 0.0, accumulate: 1, ..cfg() };
    let dir = temp("epoch-checkpoints");
    let done = fit(&objective, probe(5), &cfg, io(&dir, None, false)).unwrap();
    let per_epoch = train.len();
    assert_eq!(done.state.step, cfg.epochs * per_epoch);
    let mut kept: Vec<String> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    kept.sort();
    let last_two: Vec<String> =
        [cfg.epochs - 1, cfg.epochs].iter().map(|e| format!("step-{:06}", e * per_epoch)).collect();
    assert_eq!(kept, last_two);
}
