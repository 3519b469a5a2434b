//! The recipe's many small trainings as a few stacked ones: every seed's MLP trained at once
//! (one `[seeds, …]` tensor per weight), then every (layer, seed) rotation at once. A 16-wide MLP
//! step is almost all per-operation overhead, so a step over all seeds costs about what one
//! seed's did. Each model keeps its own data, batch order and Adam state (Adam is elementwise and
//! the models share no parameter), so each ends where its run alone ([`super::run_seed`]) ends,
//! to rounding.

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, Module, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use ferrovene_interventions::orthogonal::{TorchOrthogonal, torch_square_q_stacked};
use ferrovene_models::arch::mlp::{Mlp, StackedMlp};
use ferrovene_models::rng::Rng;
use ferrovene_models::{Component, Site};

use super::{EqualityPair, HierarchicalRecipe, MlpStart, Objects, SeedResult, held_out_accuracy, iia, prepare};
use crate::fit::{FitConfig, FitIo, Objective, epoch_order, fit};

/// Mean cross-entropy of each model's rows: logits `[models, rows, classes]`, labels
/// `[models, rows]`, `weights` `[models, rows]` (1 for a real row, 0 for padding); summed over
/// the models, so each model's gradient is its own mean loss's.
fn summed_mean_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    labels: &[i64],
    weights: Option<&[f32]>,
) -> Tensor<B, 1> {
    let [models, rows, classes] = logits.dims();
    let device = logits.device();
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(labels.to_vec(), [models, rows]), &device)
        .one_hot::<3>(classes)
        .float();
    let per_row = (log_softmax(logits, 2) * targets).sum_dim(2); // [models, rows, 1]
    let per_model = match weights {
        None => per_row.mean_dim(1),
        Some(w) => {
            let real: Vec<f32> = w.chunks(rows).map(|r| r.iter().sum::<f32>().max(1.0)).collect();
            let w = Tensor::<B, 1>::from_floats(w, &device).reshape([models, rows, 1]);
            (per_row * w).sum_dim(1) / Tensor::<B, 1>::from_floats(real.as_slice(), &device).reshape([models, 1, 1])
        }
    };
    per_model.neg().sum()
}

/// Every seed's MLP training as one: batch `i` of the stacked run is batch `i` of each seed's
/// own run (its own samples in its own shuffled order).
struct StackedMlpObjective<'a, B: Backend> {
    /// Per seed: its training samples.
    data: &'a [Vec<Objects>],
    /// Per seed: every batch of every epoch, in training order (indices into its samples).
    batches: &'a [Vec<Vec<usize>>],
    device: B::Device,
}

impl<B: AutodiffBackend> Objective<B, StackedMlp<B>> for StackedMlpObjective<'_, B> {
    fn batches(&self) -> usize {
        self.batches.first().map_or(0, Vec::len)
    }

    fn loss(&self, mlps: &StackedMlp<B>, index: usize) -> Result<Tensor<B, 1>> {
        let seeds = self.data.len();
        let chunk = |s: usize| &self.batches[s][index];
        let rows_per_seed = chunk(0).len();
        let width = self.data.first().and_then(|d| d.first()).map_or(0, |o| o.x.len());
        // One pass, row by row: the samples are scattered in memory, and gathering them
        // element by element through iterator adaptors took a fifth of a step.
        let (mut x, mut labels) = (Vec::with_capacity(seeds * rows_per_seed * width), Vec::new());
        for s in 0..seeds {
            for &i in chunk(s) {
                let sample = &self.data[s][i];
                x.extend_from_slice(&sample.x);
                labels.push(sample.label() as i64);
            }
        }
        let x = Tensor::<B, 3>::from_data(TensorData::new(x, [seeds, rows_per_seed, width]), &self.device);
        let logits = mlps.predict(x);
        Ok(summed_mean_cross_entropy(logits, &labels, None))
    }

    fn validate(&self, _: &StackedMlp<B>) -> Result<Option<(f32, f32)>> {
        Ok(None)
    }
}

/// [`super::train_mlp`] for every seed at once: per seed, its frozen MLP and held-out accuracy,
/// equal to that seed's run alone to rounding.
pub fn train_mlps<B: AutodiffBackend>(
    r: &HierarchicalRecipe,
    seeds: &[u64],
    device: &B::Device,
) -> Result<Vec<(Mlp<B>, f32)>> {
    let (mut rngs, mut mlps, mut data, mut batches) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &seed in seeds {
        // The same draws in the same order as train_mlp.
        let start = MlpStart::<B>::draw(r, seed, device);
        rngs.push(start.rng);
        mlps.push(start.mlp);
        data.push(start.data);
        batches.push(start.batches);
    }
    let objective = StackedMlpObjective { data: &data, batches: &batches, device: device.clone() };
    let stacked = StackedMlp::stack(&mlps)?;
    let trained = fit(&objective, stacked, &FitConfig::constant(1, r.mlp_lr, seeds[0], false), FitIo::default())?
        .module
        .no_grad();
    rngs.iter_mut()
        .enumerate()
        .map(|(s, rng)| {
            let mlp = fresh_mlp(trained.model(s));
            let accuracy = held_out_accuracy(&mlp, rng, r, device)?;
            Ok((mlp, accuracy))
        })
        .collect()
}

/// `mlp` with its parameters copied into fresh row-major tensors (a slice of a stack is a view,
/// which takes other kernel paths than a tensor of its own and rounds an ulp apart).
fn fresh_mlp<B: Backend>(mlp: Mlp<B>) -> Mlp<B> {
    struct Fresh;
    impl<B: Backend> burn::module::ModuleMapper<B> for Fresh {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            param.map(|t| {
                let device = t.device();
                Tensor::from_data(t.into_data(), &device)
            })
        }
    }
    mlp.map(&mut Fresh).no_grad()
}

/// The stacked rotations: per model torch's square parametrisation, `W = base · Q(X)`, `R = Wᵀ`.
#[derive(Module, Debug)]
pub struct StackedRotations<B: Backend> {
    /// `[models, d, d]`, fixed.
    pub base: Param<Tensor<B, 3>>,
    /// `[models, d, d]`, trained.
    pub x: Param<Tensor<B, 3>>,
}

impl<B: AutodiffBackend> crate::fit::Trainable<B> for StackedRotations<B> {}

impl<B: Backend> StackedRotations<B> {
    /// `R` of every model, `[models, d, d]` (rows orthonormal).
    pub fn matrices(&self) -> Tensor<B, 3> {
        self.base.val().matmul(torch_square_q_stacked(self.x.val())).swap_dims(1, 2)
    }
}

/// One of a batch's inputs (base, WX source, YZ source, WX mask, YZ mask).
type BatchInput<B> = fn(&super::EqualityBatch<B>) -> &Tensor<B, 2>;

/// One rotation's labels and row weights (1 for a pair, 0 for padding), per batch; its inputs
/// are in [`StackedDasObjective::inputs`].
struct Aligned {
    labels: Vec<Vec<i64>>,
    weights: Vec<Vec<f32>>,
}

/// Every (layer, seed) DAS training as one: step `i` takes from each model batch `i` of its own
/// run, in the order its seed shuffles.
struct StackedDasObjective<'a, B: Backend> {
    mlps: &'a StackedMlp<B>,
    models: &'a [Aligned],
    /// Every model's batches in one tensor per input (base, WX source, YZ source, WX mask, YZ
    /// mask), `[models · batches, rows, width]`: a step's batches are one `select` of it.
    inputs: [Tensor<B, 3>; 5],
    /// Batches per model.
    n: usize,
    /// Per model, its batch at every step.
    order: Vec<Vec<usize>>,
    /// Models are grouped by layer, in this order: (layer, first model, count).
    groups: Vec<(usize, usize, usize)>,
}

impl<B: AutodiffBackend> Objective<B, StackedRotations<B>> for StackedDasObjective<'_, B> {
    fn batches(&self) -> usize {
        self.order.first().map_or(0, Vec::len)
    }

    fn loss(&self, rotations: &StackedRotations<B>, index: usize) -> Result<Tensor<B, 1>> {
        let rows: Vec<i64> = self.order.iter().enumerate().map(|(m, o)| (m * self.n + o[index]) as i64).collect();
        let device = self.inputs[0].device();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [self.order.len()]), &device);
        let [base, wx, yz, wx_mask, yz_mask] = self.inputs.clone().map(|t| t.select(0, rows.clone()));
        let r = rotations.matrices();
        let rt = r.clone().swap_dims(1, 2);
        let (rb, rw, ry) = (base.matmul(rt.clone()), wx.matmul(rt.clone()), yz.matmul(rt));
        let keep = wx_mask.ones_like() - wx_mask.clone() - yz_mask.clone();
        let h = (rb * keep + rw * wx_mask + ry * yz_mask).matmul(r);
        let logits = Tensor::cat(
            self.groups
                .iter()
                .map(|&(layer, first, count)| self.mlps.resume(layer + 1, h.clone().narrow(0, first, count)))
                .collect(),
            0,
        );
        let labels: Vec<i64> =
            self.models.iter().zip(&self.order).flat_map(|(m, o)| m.labels[o[index]].iter().copied()).collect();
        let weights: Vec<f32> =
            self.models.iter().zip(&self.order).flat_map(|(m, o)| m.weights[o[index]].iter().copied()).collect();
        Ok(summed_mean_cross_entropy(logits, &labels, Some(&weights)))
    }

    fn validate(&self, _: &StackedRotations<B>) -> Result<Option<(f32, f32)>> {
        Ok(None)
    }
}

/// `t` (`[rows, width]`) with zero rows appended up to `rows`.
fn padded<B: Backend>(t: Tensor<B, 2>, rows: usize) -> Tensor<B, 2> {
    let [n, w] = t.dims();
    if n == rows { t } else { Tensor::cat(vec![t.clone(), Tensor::zeros([rows - n, w], &t.device())], 0) }
}

/// The whole recipe with stacked trainings: per seed the same [`SeedResult`] as
/// [`super::run_seed`], to rounding.
pub fn run_seeds<B: AutodiffBackend>(r: &HierarchicalRecipe, device: &B::Device) -> Result<Vec<SeedResult>> {
    let seeds = &r.seeds;
    let trained = train_mlps::<B>(r, seeds, device)?;
    let frozen = StackedMlp::stack(&trained.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>())?;
    let mut pairs = Vec::new();
    for &seed in seeds {
        let mut rng = Rng::new(seed ^ 0xDA5);
        let train = EqualityPair::dataset(&mut rng, r.object_width, r.das_train_pairs);
        let test = EqualityPair::dataset(&mut rng, r.object_width, r.das_test_pairs);
        pairs.push((train, test));
    }
    let mut layer_results = vec![Vec::new(); seeds.len()];
    // One stacked training per hidden width: models of one width share a [models, d, d] stack.
    let mut widths: Vec<usize> = r.layers.iter().map(|&l| r.hidden[l - 1]).collect();
    widths.sort_unstable();
    widths.dedup();
    for width in widths {
        let layers: Vec<usize> = r.layers.iter().copied().filter(|&l| r.hidden[l - 1] == width).collect();
        let rotations = align::<B>(r, &layers, &trained, &frozen, &pairs, device)?;
        for (i, &layer) in layers.iter().enumerate() {
            let site = Site::new(layer - 1, Component::Hidden);
            for (s, (mlp, _)) in trained.iter().enumerate() {
                let test = prepare(mlp, site, &pairs[s].1, 1024, device)?;
                let rotation = &rotations[i * seeds.len() + s];
                let das = iia(mlp, site, &test, rotation)?;
                let neurons = iia(mlp, site, &test, &Tensor::eye(width, device))?;
                layer_results[s].push((layer, das, neurons));
            }
        }
    }
    // Results in the recipe's layer order, as run_seed gives them.
    Ok(trained
        .iter()
        .zip(layer_results)
        .zip(seeds)
        .map(|(((_, accuracy), mut layers), &seed)| {
            layers.sort_by_key(|&(layer, _, _)| r.layers.iter().position(|&l| l == layer));
            SeedResult { seed, mlp_accuracy: *accuracy, layers }
        })
        .collect())
}

/// Trains the rotations of `layers` (one width) for every seed at once; returns `R` per model,
/// layer-major (model `i · seeds + s` is layer `layers[i]` of seed `s`).
pub fn align<B: AutodiffBackend>(
    r: &HierarchicalRecipe,
    layers: &[usize],
    trained: &[(Mlp<B>, f32)],
    frozen: &StackedMlp<B>,
    pairs: &[(Vec<EqualityPair>, Vec<EqualityPair>)],
    device: &B::Device,
) -> Result<Vec<Tensor<B, 2>>> {
    let rows_per_batch = r.das_batch.max(1);
    let (mut models, mut order, mut bases, mut xs, mut groups) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Per input (base, WX source, YZ source, WX mask, YZ mask), each model's padded batches,
    // cached without autodiff (the same values, without its bookkeeping on every operation).
    let mut inputs: [Vec<Tensor<B::InnerBackend, 3>>; 5] = Default::default();
    let mut n = 0;
    for &layer in layers {
        groups.push((layer - 1, models.len(), trained.len()));
        let site = Site::new(layer - 1, Component::Hidden);
        let width = r.hidden[layer - 1];
        for (s, (mlp, _)) in trained.iter().enumerate() {
            let seed = r.seeds[s];
            let mlp = mlp.valid();
            let inner_device = mlp.devices().into_iter().next().context("an MLP without parameters")?;
            let batches = prepare(&mlp, site, &pairs[s].0, rows_per_batch, &inner_device)?;
            n = batches.len();
            let stack = |t: BatchInput<B::InnerBackend>| {
                Tensor::stack::<3>(batches.iter().map(|b| padded(t(b).clone(), rows_per_batch)).collect(), 0)
            };
            let picks: [BatchInput<B::InnerBackend>; 5] =
                [|b| &b.base, |b| &b.wx_source, |b| &b.yz_source, |b| &b.wx_mask, |b| &b.yz_mask];
            for (input, pick) in inputs.iter_mut().zip(picks) {
                input.push(stack(pick));
            }
            models.push(Aligned {
                labels: batches
                    .iter()
                    .map(|b| (0..rows_per_batch).map(|i| b.labels.get(i).map_or(0, |&l| l as i64)).collect())
                    .collect(),
                weights: batches
                    .iter()
                    .map(|b| (0..rows_per_batch).map(|i| (i < b.labels.len()) as u8 as f32).collect())
                    .collect(),
            });
            // fit's shuffled order for the seed, laid out over all epochs.
            order.push((0..r.das_epochs).flat_map(|e| epoch_order(seed, e, n)).collect());
            // The start run_seed draws for this (seed, layer).
            let start =
                TorchOrthogonal::<B>::haar(width, width, &mut Rng::new(seed.wrapping_add(layer as u64)), device);
            bases.push(start.base.val());
            xs.push(start.x.val());
        }
    }
    let rotations = StackedRotations {
        base: Param::from_tensor(Tensor::stack::<3>(bases, 0).detach()).set_require_grad(false),
        x: Param::from_tensor(Tensor::stack::<3>(xs, 0).detach()),
    };
    let inputs = inputs.map(|per_model| Tensor::from_inner(Tensor::cat(per_model, 0)));
    let objective = StackedDasObjective { mlps: frozen, models: &models, inputs, n, order, groups };
    let fitted = fit(&objective, rotations, &FitConfig::constant(1, r.das_lr, r.seeds[0], false), FitIo::default())?;
    let matrices = fitted.module.matrices();
    let [count, d, _] = matrices.dims();
    // Copied out of the stack into tensors of their own, as an export read back would be.
    Ok((0..count)
        .map(|i| Tensor::from_data(matrices.clone().narrow(0, i, 1).reshape([d, d]).into_data(), device))
        .collect())
}

/// [`run_seeds`] with the seeds split over `threads` threads (each trains the stacks of its
/// share of the seeds): a step of a stack costs about the same whatever its size, so on two
/// cores two half-size stacks take about half the time. Each seed's numbers are the same as in
/// one stack, since no model's arithmetic depends on the others. `done` is called once per share.
pub fn run_seeds_in_threads<B: AutodiffBackend>(
    r: &HierarchicalRecipe,
    device: &B::Device,
    threads: usize,
    done: &(dyn Fn() + Sync),
) -> Result<Vec<SeedResult>> {
    let per_thread = r.seeds.len().div_ceil(threads.clamp(1, r.seeds.len().max(1)));
    let shares: Vec<HierarchicalRecipe> = r
        .seeds
        .chunks(per_thread.max(1))
        .map(|seeds| HierarchicalRecipe { seeds: seeds.to_vec(), ..r.clone() })
        .collect();
    let results: Vec<Result<Vec<SeedResult>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .iter()
            .map(|share| {
                scope.spawn(move || {
                    let out = run_seeds::<B>(share, device);
                    done();
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a training thread panicked"))))
            .collect()
    });
    let mut all = Vec::new();
    for share in results {
        all.extend(share?);
    }
    Ok(all)
}
