//! Training stage of a pair-file run: the frozen parts computed once per split, the intervention
//! trained by [`crate::fit`], and the held-out metrics beside their controls.

use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::module::Param;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use ferrovene_data::TokenizedExample;
use ferrovene_interventions::das::{BoundlessDas, DasLowRank};
use ferrovene_interventions::probe::LinearProbe;
use ferrovene_interventions::reft::{ReftFamily, ReftIntervention};
use ferrovene_interventions::{Activation, Intervention, InterventionSet, Layout, Orthogonal, Placed, Share};
use ferrovene_models::rng::Rng;
use ferrovene_models::{Site, Transformer};
use serde_json::{Value, json};

use super::examples::Examples;
use super::recipe::{Method, PairRecipe};
use crate::events::{Events, progress_if};
use crate::experiments::experiment::RunContext;
use crate::fit::{FitIo, Fitted, Objective, fit};
use crate::memory::human;
use crate::nodes::Joined;
use crate::objectives::batches::BatchList;
use crate::objectives::das::PairBatch;
use crate::objectives::das_batches::{self, OnDemand};
use crate::objectives::{das, probe, reft};
use crate::replicas::{DataParallel, Replica, batch_sizes, split_batches};
use crate::run_dir::RunDir;

/// Batches prepared per call of the preparing function (see `Stage::prepare`).
const PREPARE_BATCHES_AT_ONCE: usize = 256;

/// One device's parts of the training batches (`--devices`).
struct Part<'e> {
    /// Its examples, part after part, in batch order.
    examples: Vec<&'e TokenizedExample>,
    /// The size of its part of a full batch.
    batch_size: usize,
    /// The size of its part of each batch.
    sizes: Vec<usize>,
}

/// A trained intervention (or set of them) with its held-out metrics (as the report writes them).
pub struct Trained<B: AutodiffBackend> {
    /// What the loop returned.
    pub fitted: Fitted<InterventionSet<B>>,
    /// `{"dev": …, "controls": …}`.
    pub metrics: Value,
    /// Seconds `(preparing, training)`.
    pub timings: (f64, f64),
    /// Width of the first site.
    pub width: usize,
}

/// What the training stage needs from the run.
pub struct Stage<'a, B: AutodiffBackend, M: Transformer<B>> {
    /// What to train.
    pub method: Method,
    /// The recipe.
    pub r: &'a PairRecipe,
    /// The frozen model.
    pub model: &'a M,
    /// Its tokenizer's padding id.
    pub pad_id: u32,
    /// The sites, in the recipe's order.
    pub sites: Vec<Site>,
    /// Width of each site.
    pub widths: Vec<usize>,
    /// Intervened positions per example with separate parameters ([`positions_per_example`]).
    pub positions: usize,
    /// Width of the first site.
    pub width: usize,
    /// The examples, split.
    pub examples: &'a Examples,
    /// The run folder (checkpoints, TensorBoard); none on the nodes of a several-node run that
    /// do not write (rank ≠ 0).
    pub dir: Option<&'a RunDir>,
    /// How the run was called.
    pub ctx: &'a RunContext<'a>,
    /// Identifies recipe and data in checkpoints.
    pub fingerprint: String,
    /// When the stage began (for the timings).
    pub started: Instant,
    /// Where to compute.
    pub device: &'a B::Device,
    /// With `--devices`, one frozen model per device, the first being `device` and `model`
    /// (training is shared between them, [`crate::replicas`]); empty on one device.
    pub replicas: &'a [(B::Device, &'a M)],
    /// This node's part in a several-node run (`--nodes`): it trains its part of every batch
    /// and sums each step with the other nodes.
    pub node: Option<&'a Joined>,
}

impl<B: AutodiffBackend, M: Transformer<B>> Stage<'_, B, M> {
    /// Prepares, trains and evaluates the recipe's intervention.
    pub fn train(&self) -> Result<Trained<B>> {
        match self.method {
            Method::Das | Method::Boundless => self.das(),
            Method::Reft => self.reft(),
            Method::Probe => self.probe(),
        }
    }

    /// The frozen parts of the train, validation and held-out examples, batch by batch with a
    /// progress bar; `f` gets a part of a split and the batch size to cut it into (the recipe's
    /// for training, [`PairRecipe::eval_batch_size`] for the two evaluated splits).
    fn prepare<T>(&self, f: impl Fn(&[&TokenizedExample], usize) -> Result<Vec<T>>) -> Result<[Vec<T>; 3]> {
        let mut out: [Vec<T>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for (k, (examples, what, bs)) in self.splits().into_iter().enumerate() {
            if k == 0 && self.data_parallel() {
                continue; // each device prepares its parts ([`Stage::prepare_parts`])
            }
            let bar = progress_if(self.ctx.progress, examples.len(), what);
            // Many batches per call: `f` runs each distinct base and source once across what
            // it is given (DAS), which one call per batch would not share; parts keep the bar
            // moving and the shared runs' memory bounded.
            for part in examples.chunks(bs * PREPARE_BATCHES_AT_ONCE) {
                out[k].extend(f(part, bs)?);
                bar.inc(part.len() as u64);
            }
            bar.finish_and_clear();
        }
        Ok(out)
    }

    /// Whether training is shared between several devices (`--devices`) or nodes (`--nodes`).
    fn data_parallel(&self) -> bool {
        self.replicas.len() > 1 || self.node.is_some()
    }

    /// Whether this process writes the run's outputs (every run but the nodes of rank ≠ 0).
    fn writes(&self) -> bool {
        self.node.is_none_or(|j| j.plan.writes())
    }

    /// This process's devices, each with its frozen model.
    fn local(&self) -> Vec<(B::Device, &M)> {
        if self.replicas.is_empty() {
            vec![(self.device.clone(), self.model)]
        } else {
            self.replicas.iter().map(|(d, m)| (d.clone(), *m)).collect()
        }
    }

    /// This process's devices' parts of the training batches ([`split_batches`] over every
    /// device of every node; node `r`'s are the parts after the first `r` nodes').
    fn parts(&self) -> Result<Vec<Part<'_>>> {
        let [(train, _, batch_size), ..] = self.splits();
        let here = self.local().len();
        let (nodes, rank) = self.node.map_or((1, 0), |j| (j.plan.count, j.plan.rank));
        let split = split_batches(train.len(), batch_size, nodes * here)?;
        Ok((rank * here..(rank + 1) * here)
            .map(|d| Part {
                examples: split.parts[d].iter().map(|&i| train[i]).collect(),
                batch_size: split.part_size[d],
                sizes: split.sizes[d].clone(),
            })
            .collect())
    }

    /// Each device's parts of the training batches, prepared on that device by
    /// `f(model, device, examples, batch_size)`, with the size of each part.
    fn prepare_parts<T>(
        &self,
        f: impl Fn(&M, &B::Device, &[&TokenizedExample], usize) -> Result<Vec<T>>,
    ) -> Result<Vec<(Vec<T>, Vec<usize>)>> {
        let local = self.local();
        let mut out = Vec::with_capacity(local.len());
        for (d, (part, (device, model))) in self.parts()?.into_iter().zip(local).enumerate() {
            let bar = progress_if(self.ctx.progress, part.examples.len(), &format!("train, device {d}"));
            let mut prepared = Vec::new();
            for chunk in part.examples.chunks(part.batch_size * PREPARE_BATCHES_AT_ONCE) {
                prepared.extend(f(model, &device, chunk, part.batch_size)?);
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
            out.push((prepared, part.sizes));
        }
        Ok(out)
    }

    /// The objective that shares `parts` (one per device, [`Stage::prepare_parts`]) and
    /// validates with `whole`.
    fn shared<'o, P: 'o>(
        &self,
        parts: &'o [(Box<dyn Objective<B, P> + 'o>, Vec<usize>)],
        whole: &'o dyn Objective<B, P>,
    ) -> Result<DataParallel<'o, B, P>> {
        let replicas = parts
            .iter()
            .zip(self.local())
            .map(|((objective, sizes), (device, _))| Replica { device, objective: &**objective, sizes: sizes.clone() })
            .collect();
        let [(train, _, batch_size), ..] = self.splits();
        DataParallel::new(replicas, whole, batch_sizes(train.len(), batch_size))
    }

    /// Trains `start` on `objective`; data-parallel ([`Stage::data_parallel`]), on one objective
    /// per device instead, `part(list, model)` of that device's prepared part of the training
    /// batches (`lists`: one per device, with its parts' sizes), summed by [`DataParallel`] and
    /// validated with `objective`.
    fn fit_parts<'l, P: crate::fit::Trainable<B> + 'l, L>(
        &'l self,
        objective: &'l dyn Objective<B, P>,
        start: P,
        lists: &'l [(L, Vec<usize>)],
        part: impl Fn(&'l L, &'l M) -> Box<dyn Objective<B, P> + 'l>,
    ) -> Result<(Fitted<P>, (f64, f64))> {
        if !self.data_parallel() {
            return self.fit(objective, start);
        }
        let parts: Vec<_> =
            lists.iter().zip(self.local()).map(|((list, sizes), (_, m))| (part(list, m), sizes.clone())).collect();
        self.fit(&self.shared(&parts, objective)?, start)
    }

    /// The train, validation and held-out examples, each with its name and batch size (the
    /// recipe's for training, [`PairRecipe::eval_batch_size`] for the two evaluated splits).
    fn splits(&self) -> [(Vec<&TokenizedExample>, &'static str, usize); 3] {
        let ex = self.examples;
        let (train, eval) = (self.r.batch_size.max(1), self.r.eval_batch_size().max(1));
        [
            (ex.pick(&ex.train), "train", train),
            (ex.pick(&ex.validation), "validation", eval),
            (ex.pick(&ex.dev), "held out", eval),
        ]
    }

    /// Trains `iv` on `objective` with the recipe's loop settings, checkpoints and events.
    fn fit<P: crate::fit::Trainable<B>>(
        &self,
        objective: &dyn Objective<B, P>,
        iv: P,
    ) -> Result<(Fitted<P>, (f64, f64))> {
        let t0 = self.started.elapsed().as_secs_f64();
        let mut events = self.dir.map(|d| Events::create(&d.join("tensorboard"))).transpose()?;
        let io = FitIo {
            run_dir: self.dir.map(RunDir::path),
            events: events.as_mut(),
            interrupt: self.ctx.interrupt,
            resume: self.ctx.resume.is_some(),
            progress: self.ctx.progress,
            fingerprint: self.fingerprint.clone(),
            nodes: self.node.map(|j| &*j.sum),
        };
        let fitted = fit(objective, iv, &self.r.fit_config(self.method), io)?;
        Ok((fitted, (t0, self.started.elapsed().as_secs_f64() - t0)))
    }

    /// The freshly initialised interventions (also the skeleton a checkpoint loads into), one per
    /// member of the layout, drawn in order from the recipe's seed (one site at one position is
    /// one draw, as a single intervention always was).
    fn initial(&self) -> Result<InterventionSet<B>> {
        let layout = Layout::new(&self.sites, self.positions, self.r.share)?;
        if let Some(path) = &self.r.init_from {
            return self.loaded_start(path, layout);
        }
        let mut rng = Rng::new(self.r.seed);
        InterventionSet::init(layout, |site| {
            let at = self.sites.iter().position(|s| *s == site).context("a slot's site is the recipe's")?;
            self.initial_member(site, self.widths[at], 0, &mut rng)
        })
    }

    /// The interventions of the export at `path` (ours, or one `trainer import` made from a
    /// pyvene or pyreft folder) as the start of training: the same placements as the recipe's
    /// and, member by member, the kind and shapes a fresh start would have.
    fn loaded_start(&self, path: &std::path::Path, layout: Layout) -> Result<InterventionSet<B>> {
        let why = || format!("the recipe's `init_from = \"{}\"`", path.display());
        let (set, _) = ferrovene_interventions::export::load_set::<B>(path, self.device).with_context(why)?;
        let places = |l: &Layout| l.slots.iter().map(|s| s.name()).collect::<Vec<_>>();
        if places(&set.layout) != places(&layout) || set.members.len() != layout.members.len() {
            bail!(
                "{}: it is placed at {:?} ({} members), the recipe at {:?} ({} members with share = \"{}\"); they must agree",
                why(),
                places(&set.layout),
                set.members.len(),
                places(&layout),
                layout.members.len(),
                self.r.share.name()
            );
        }
        let mut rng = Rng::new(self.r.seed);
        for (m, member) in set.members.iter().enumerate() {
            let slot = layout.slots.iter().find(|s| s.member == m).context("every member has a slot")?;
            let at = self.sites.iter().position(|s| *s == slot.site).context("a slot's site is the recipe's")?;
            let fresh = self.initial_member(slot.site, self.widths[at], 0, &mut rng)?;
            let shape = |iv: &Intervention<B>| (iv.kind(), iv.width(), iv.rotation().map(|r| r.dims()));
            if shape(member) != shape(&fresh) {
                bail!(
                    "{}: member {} is {:?} (kind, width, rotation), the recipe trains {:?}",
                    why(),
                    layout.members[m],
                    shape(member),
                    shape(&fresh)
                );
            }
        }
        Ok(InterventionSet::new(set.members, layout)?)
    }

    /// One freshly initialised intervention for a site of `width`.
    fn initial_member(&self, site: Site, width: usize, classes: usize, rng: &mut Rng) -> Result<Intervention<B>> {
        let (r, device) = (self.r, self.device);
        let rank = || -> Result<usize> {
            let k = r.rank.ok_or_else(|| anyhow!("kind `{}` needs `rank`", self.method.name()))?;
            crate::divergence::check_rank(k, width, &format_args!("site {site}"))?;
            Ok(k)
        };
        Ok(match self.method {
            Method::Das => {
                Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(rank()?, width, rng, device) })
            }
            Method::Boundless => Intervention::Boundless(BoundlessDas {
                rotation: Orthogonal::random(width, width, rng, device),
                boundary: Param::from_tensor(Tensor::from_floats([r.boundary_init.unwrap_or(0.1) as f32], device)),
                temperature: r.temperature.map_or(1.0, |t| t.start),
            }),
            Method::Reft => Intervention::Reft(ReftIntervention::new(
                r.family.unwrap_or(ReftFamily::LoReft),
                width,
                rank()?,
                Activation::Identity,
                0.0,
                rng,
                device,
            )),
            Method::Probe => Intervention::Probe(LinearProbe::init(width, classes, rng, device)),
        })
    }

    /// DAS or Boundless DAS, evaluated beside no intervention and a random rotation.
    fn das(&self) -> Result<Trained<B>> {
        let [train, val, dev] = self.das_batches()?;
        let model = self.model;
        let validation = if val.count() == 0 { &dev } else { &val };
        let penalty = self.r.boundary_penalty.unwrap_or(1.0);
        let objective = das::DasObjective::new(model, &*train, &**validation, penalty);
        let none: Vec<PairBatch<B>> = Vec::new();
        let lists = if self.data_parallel() { self.das_parts()? } else { Vec::new() };
        let (fitted, timings) = self.fit_parts(&objective, self.initial()?, &lists, |list, m| {
            Box::new(das::DasObjective::new(m, &**list, &none, penalty))
        })?;
        if fitted.outcome == crate::fit::Outcome::Interrupted || !self.writes() {
            return Ok(Trained { fitted, metrics: Value::Null, timings, width: self.width });
        }
        let iv = &fitted.module;
        let placed: &dyn Placed<B> = iv;
        // Without a validation split the held-out examples validate: the final validation, if it
        // saw these parameters, already measured them.
        let with = if val.count() == 0 {
            objective.validation_metrics(iv)?
        } else {
            das::evaluate(model, &*dev, Some(placed))?
        };
        let none = das::evaluate(model, &*dev, None)?;
        let random_iv =
            iv.with_random_rotation(&mut Rng::new(self.r.seed ^ 1)).ok_or_else(|| anyhow!("DAS has a rotation"))?;
        let random = das::evaluate(model, &*dev, Some(&random_iv as &dyn Placed<B>))?;
        println!(
            "{}: held-out IIA {:.3} (no intervention {:.3}, random rotation {:.3}) on {} pairs; p(label) > p(base) {}",
            self.ctx.name,
            with.iia,
            none.iia,
            random.iia,
            with.n,
            with.label_beats_base.map_or("-".into(), |v| format!("{v:.3}"))
        );
        let mut dev_metrics = json!(with);
        if let [Intervention::Boundless(b)] = iv.members.as_slice() {
            dev_metrics["boundary_dims"] = json!(b.boundary_dims(self.width));
        }
        let metrics = json!({"dev": dev_metrics, "controls": {"no_intervention": none, "random_rotation": random}});
        Ok(Trained { fitted, metrics, timings, width: self.width })
    }

    /// DAS's train, validation and held-out batches: prepared once and kept when the frozen cache
    /// fits the memory budget (its size is printed first), else prepared whenever used.
    fn das_batches(&self) -> Result<[Box<dyn BatchList<PairBatch<B>> + '_>; 3]> {
        let (model, sites) = (self.model, &self.sites);
        let splits = self.splits();
        let bytes: u64 = splits.iter().map(|(pairs, _, bs)| das_batches::cache_bytes(model, sites, pairs, *bs)).sum();
        let budget = self.ctx.cache_budget;
        let pairs: usize = splits.iter().map(|(p, _, _)| p.len()).sum();
        if bytes <= budget {
            eprintln!(
                "{}: frozen cache of about {} for {pairs} pairs (budget {})",
                self.ctx.name,
                human(bytes),
                human(budget)
            );
            let [train, val, dev] =
                self.prepare(|c, bs| das::prepare_at(model, sites, c, self.pad_id, bs, self.device))?;
            return Ok([Box::new(train), Box::new(val), Box::new(dev)]);
        }
        eprintln!(
            "{}: the frozen cache would take about {} for {pairs} pairs, over the budget of {} (--cache-budget): each batch's frozen part is computed when the batch is used instead (slower, the same numbers)",
            self.ctx.name,
            human(bytes),
            human(budget)
        );
        Ok(splits.map(|(pairs, _, batch_size)| -> Box<dyn BatchList<PairBatch<B>> + '_> {
            Box::new(OnDemand {
                model,
                sites: sites.clone(),
                pairs,
                pad_id: self.pad_id,
                batch_size,
                device: self.device.clone(),
            })
        }))
    }

    /// Each device's DAS batches of its parts, as [`Stage::das_batches`] keeps them: prepared
    /// once when the frozen cache fits the budget, else prepared whenever used.
    #[allow(clippy::type_complexity)]
    fn das_parts(&self) -> Result<Vec<(Box<dyn BatchList<PairBatch<B>> + '_>, Vec<usize>)>> {
        let (model, sites) = (self.model, &self.sites);
        let bytes: u64 =
            self.splits().iter().map(|(pairs, _, bs)| das_batches::cache_bytes(model, sites, pairs, *bs)).sum();
        if bytes <= self.ctx.cache_budget {
            let prepared =
                self.prepare_parts(|m, device, c, bs| das::prepare_at(m, sites, c, self.pad_id, bs, device))?;
            return Ok(prepared
                .into_iter()
                .map(|(list, sizes)| (Box::new(list) as Box<dyn BatchList<PairBatch<B>>>, sizes))
                .collect());
        }
        Ok(self
            .parts()?
            .into_iter()
            .zip(self.local())
            .map(|(part, (device, m))| {
                let list: Box<dyn BatchList<PairBatch<B>> + '_> = Box::new(OnDemand {
                    model: m,
                    sites: sites.clone(),
                    pairs: part.examples,
                    pad_id: self.pad_id,
                    batch_size: part.batch_size,
                    device,
                });
                (list, part.sizes)
            })
            .collect())
    }

    /// ReFT, evaluated beside no intervention and on its own training examples.
    fn reft(&self) -> Result<Trained<B>> {
        let (model, sites) = (self.model, &self.sites);
        let [train, val, dev] =
            self.prepare(|c, bs| reft::prepare_at(model, sites, c, self.pad_id, bs, self.device))?;
        let objective =
            reft::ReftObjective { model, train: &train, validation: if val.is_empty() { &dev } else { &val } };
        let lists = if self.data_parallel() {
            self.prepare_parts(|m, device, c, bs| reft::prepare_at(m, sites, c, self.pad_id, bs, device))?
        } else {
            Vec::new()
        };
        let (fitted, timings) = self.fit_parts(&objective, self.initial()?, &lists, |list, m| {
            Box::new(reft::ReftObjective { model: m, train: list, validation: &[] })
        })?;
        if fitted.outcome == crate::fit::Outcome::Interrupted || !self.writes() {
            return Ok(Trained { fitted, metrics: Value::Null, timings, width: self.width });
        }
        let placed: &dyn Placed<B> = &fitted.module;
        let with = reft::evaluate(model, &dev, Some(placed))?;
        let none = reft::evaluate(model, &dev, None)?;
        let on_train = reft::evaluate(model, &train, Some(placed))?;
        println!(
            "{}: held-out target-token accuracy {:.3} (no intervention {:.3}), exact recall {:.3} (training examples: {:.3})",
            self.ctx.name, with.token_accuracy, none.token_accuracy, with.exact, on_train.exact
        );
        let metrics = json!({"dev": with, "train": on_train, "controls": {"no_intervention": none}});
        Ok(Trained { fitted, metrics, timings, width: self.width })
    }

    /// A linear probe, evaluated beside the majority class.
    fn probe(&self) -> Result<Trained<B>> {
        let (model, site) = (self.model, self.sites[0]);
        let classes = probe::class_count(&self.examples.tokenized.iter().collect::<Vec<_>>());
        if classes < 2 {
            bail!("{}: a probe needs at least two classes (found {classes})", self.r.pairs.display());
        }
        // Classes are counted as the largest id + 1: one stray large id would build (and export)
        // a probe with that many rows.
        const MOST_CLASSES: usize = 10_000;
        if classes > MOST_CLASSES {
            bail!(
                "{}: the largest class id is {}, so the probe would have {classes} classes (at most {MOST_CLASSES}); class ids count from 0 without gaps, so check that line",
                self.r.pairs.display(),
                classes - 1
            );
        }
        let [train, val, dev] = self.prepare(|c, bs| probe::features(model, site, c, self.pad_id, bs, self.device))?;
        let objective = probe::ProbeObjective { train: &train, validation: if val.is_empty() { &dev } else { &val } };
        let probe = self.initial_member(site, self.width, classes, &mut Rng::new(self.r.seed))?;
        let lists = if self.data_parallel() {
            self.prepare_parts(|m, device, c, bs| probe::features(m, site, c, self.pad_id, bs, device))?
        } else {
            Vec::new()
        };
        let (fitted, timings) = self.fit_parts(&objective, probe, &lists, |list, _| {
            Box::new(probe::ProbeObjective { train: list, validation: &[] })
        })?;
        let fitted = Fitted {
            module: InterventionSet::single(fitted.module, site),
            state: fitted.state,
            outcome: fitted.outcome,
        };
        if fitted.outcome == crate::fit::Outcome::Interrupted || !self.writes() {
            return Ok(Trained { fitted, metrics: Value::Null, timings, width: self.width });
        }
        let (acc, loss) = probe::evaluate(fitted.module.first(), &dev)?;
        let majority = probe::majority_share(&dev);
        let n = self.examples.dev.len();
        println!(
            "{}: held-out probe accuracy {acc:.3} (majority class {majority:.3}) on {n} texts, {classes} classes",
            self.ctx.name
        );
        let metrics = json!({"dev": {"accuracy": acc, "loss": loss, "n": n}, "controls": {"majority_class": majority}});
        Ok(Trained { fitted, metrics, timings, width: self.width })
    }
}

/// Positions per example, for the layout: the count every training example gives when
/// parameters are per position (`share = "none"`), else 1 (every position shares them).
pub fn positions_per_example(r: &PairRecipe, examples: &Examples) -> Result<usize> {
    let counts: Vec<usize> = examples
        .tokenized
        .iter()
        .map(|ex| match ex {
            TokenizedExample::Pair { base, .. } => base.positions.len(),
            TokenizedExample::Prompt { prompt, .. } => prompt.positions.len(),
            TokenizedExample::Text { text, .. } => text.positions.len(),
        })
        .collect();
    let k = counts.first().copied().unwrap_or(1);
    if r.share != Share::None || counts.iter().all(|&c| c <= 1) {
        return Ok(1);
    }
    if let Some((i, &c)) = counts.iter().enumerate().find(|(_, c)| **c != k) {
        bail!(
            "{}: `share = \"none\"` (the default) gives each intervened position its own parameters, so every example must give as many positions; the first gives {k} and example {} (counting from 1, `pairs` then `held_out`) gives {c}. Set `share = \"positions\"` to use one set of parameters at every position",
            r.pairs.display(),
            i + 1
        );
    }
    Ok(k)
}
