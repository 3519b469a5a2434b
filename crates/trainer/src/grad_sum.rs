//! Summing a training step across the nodes of a several-node run (`--nodes`): each node's loss
//! is its share of the batch's mean loss (its part's mean weighted by the part's size), so the
//! sum over nodes of the losses, and of their gradients, is the whole batch's. [`crate::fit`]
//! calls [`sum_step`] between the backward pass and the optimizer step; every node then takes
//! the same step from the same sums and the replicas stay equal, bit for bit.
//!
//! A step is one [`AllSum`] of one flat vector: every trainable parameter's gradient in the
//! module's own order (the same on every node, unlike burn's `ParamId`s, which are drawn at
//! random per process), a count per parameter of the nodes that had a gradient for it (a node
//! whose part of a short last batch is empty has none, and a parameter no node reached must get
//! no step, as on one device), the loss, and whether any node was interrupted (Ctrl-C on one
//! node stops all of them after the same step, so none waits for the others forever).

use anyhow::{Result, bail};
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};

/// Sums vectors of the same length across the nodes of a run, in the same order on every node
/// (burn's collective all-reduce with [`crate::nodes`], or threads in tests).
pub trait AllSum {
    /// The element-wise sum of every node's `values`.
    fn all_sum(&self, values: Vec<f32>) -> Result<Vec<f32>>;
}

/// A step as every node sees it after [`sum_step`].
pub struct SummedStep {
    /// The sum of the nodes' gradients, for the parameters at least one node had one for.
    pub grads: GradientsParams,
    /// The sum of the nodes' losses: the whole batch's mean loss.
    pub loss: f32,
    /// Whether any node was interrupted.
    pub interrupted: bool,
}

/// Where a trainable parameter's gradient sits in the flat vector.
struct Slot {
    id: ParamId,
    shape: Vec<usize>,
    offset: usize,
}

/// Sums this node's `grads` of `module`, its `loss` and its `interrupted` flag with every other
/// node's through `sum`.
pub fn sum_step<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: GradientsParams,
    loss: f32,
    interrupted: bool,
    sum: &dyn AllSum,
) -> Result<SummedStep> {
    /// Collects the trainable parameters' gradients (zeros where this node has none).
    struct Flatten<'g> {
        grads: &'g GradientsParams,
        values: Vec<f32>,
        present: Vec<f32>,
        slots: Vec<Slot>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if !param.is_require_grad() {
                return;
            }
            let shape = param.shape().to_vec();
            let offset = self.values.len();
            match self.grads.get::<B::InnerBackend, D>(param.id) {
                Some(g) => {
                    self.values.extend(g.into_data().convert::<f32>().iter::<f32>());
                    self.present.push(1.0);
                }
                None => {
                    self.values.resize(offset + shape.iter().product::<usize>(), 0.0);
                    self.present.push(0.0);
                }
            }
            self.slots.push(Slot { id: param.id, shape, offset });
        }
    }
    let mut flat = Flatten { grads: &grads, values: Vec::new(), present: Vec::new(), slots: Vec::new() };
    module.visit(&mut flat);
    let Flatten { mut values, present, slots, .. } = flat;
    let (grads_len, params) = (values.len(), slots.len());
    values.extend(present);
    values.extend([loss, if interrupted { 1.0 } else { 0.0 }]);
    let expected = values.len();
    let summed = sum.all_sum(values)?;
    if summed.len() != expected {
        bail!(
            "the nodes' steps differ in size ({} values here, {} summed): do all nodes train the same recipe?",
            expected,
            summed.len()
        );
    }
    let device = module.devices().first().cloned().unwrap_or_default();
    let mut out = GradientsParams::new();
    /// Puts each parameter's summed gradient back, for those some node had a gradient for.
    struct Unflatten<'a, B: AutodiffBackend> {
        summed: &'a [f32],
        present: &'a [f32],
        slots: std::slice::Iter<'a, Slot>,
        out: &'a mut GradientsParams,
        device: &'a B::Device,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if !param.is_require_grad() {
                return;
            }
            let (Some(slot), Some(&count)) = (self.slots.next(), self.present.first()) else { return };
            self.present = &self.present[1..];
            debug_assert_eq!(slot.id, param.id);
            if count > 0.0 {
                let n = slot.shape.iter().product::<usize>();
                let data = TensorData::new(self.summed[slot.offset..slot.offset + n].to_vec(), slot.shape.clone());
                self.out.register::<B::InnerBackend, D>(slot.id, Tensor::from_data(data, self.device));
            }
        }
    }
    let mut unflatten = Unflatten::<B> {
        summed: &summed[..grads_len],
        present: &summed[grads_len..grads_len + params],
        slots: slots.iter(),
        out: &mut out,
        device: &device,
    };
    module.visit(&mut unflatten);
    Ok(SummedStep { grads: out, loss: summed[expected - 2], interrupted: summed[expected - 1] > 0.0 })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Barrier, Mutex};

    use burn::backend::Autodiff;
    use ferrovene_interventions::Intervention;
    use ferrovene_interventions::steering::Steering;
    use ferrovene_models::Cpu;

    use super::*;
    use crate::fit::{FitConfig, FitIo, Objective, Outcome, fit};
    use crate::replicas::split_batches;

    type B = Autodiff<Cpu>;

    /// Pulls a steering vector towards examples: a batch's loss is the mean of `|v − x|²` over
    /// its examples, times `weight[b]` (a node's share of the whole batch).
    struct Towards<'a> {
        batches: Vec<Vec<[f32; 3]>>,
        weights: Vec<f32>,
        /// Set when batch `.1` is asked for (a Ctrl-C during that step).
        ctrl_c: Option<(&'a AtomicBool, usize)>,
    }

    impl Objective<B> for Towards<'_> {
        fn batches(&self) -> usize {
            self.batches.len()
        }
        fn loss(&self, iv: &Intervention<B>, b: usize) -> Result<Tensor<B, 1>> {
            let Intervention::Steering(s) = iv else { bail!("a steering vector") };
            if let Some((flag, at)) = self.ctrl_c
                && at == b
            {
                flag.store(true, Ordering::SeqCst);
            }
            let device = s.vector.val().device();
            let xs = &self.batches[b];
            if xs.is_empty() {
                return Ok(Tensor::zeros([1], &device).require_grad()); // as DataParallel's
            }
            let flat: Vec<f32> = xs.iter().flatten().copied().collect();
            let x = Tensor::<B, 2>::from_data(TensorData::new(flat, [xs.len(), 3]), &device);
            let d = s.vector.val().unsqueeze::<2>() - x;
            Ok(d.powf_scalar(2.0).sum_dim(1).mean().reshape([1]) * self.weights[b] as f64)
        }
        fn validate(&self, _: &Intervention<B>) -> Result<Option<(f32, f32)>> {
            Ok(None)
        }
    }

    fn start() -> Intervention<B> {
        let mut s = Steering::fixed(Tensor::zeros([3], &Default::default()), 1.0);
        s.vector = s.vector.set_require_grad(true);
        Intervention::Steering(s)
    }

    /// Sums across threads: every thread adds its vector, waits for the others, reads the sum.
    struct ThreadSum(Arc<(Mutex<Vec<f32>>, Barrier)>);

    impl AllSum for ThreadSum {
        fn all_sum(&self, values: Vec<f32>) -> Result<Vec<f32>> {
            let (acc, barrier) = &*self.0;
            {
                let mut a = acc.lock().unwrap();
                a.resize(values.len(), 0.0);
                a.iter_mut().zip(&values).for_each(|(s, v)| *s += v);
            }
            barrier.wait();
            let out = acc.lock().unwrap().clone();
            if barrier.wait().is_leader() {
                acc.lock().unwrap().clear();
            }
            barrier.wait();
            Ok(out)
        }
    }

    fn vector(iv: &Intervention<B>) -> Vec<f32> {
        let Intervention::Steering(s) = iv else { unreachable!() };
        s.vector.val().into_data().convert::<f32>().to_vec().unwrap()
    }

    /// Two nodes, each with its part of every batch (one's part of the last batch empty), train
    /// what one process trains on the whole batches: the same losses and the same vector.
    #[test]
    fn two_summing_nodes_train_what_one_node_trains() {
        let xs: Vec<[f32; 3]> = (0..7).map(|i| [i as f32, 1.0 - i as f32 * 0.5, (i * i) as f32 * 0.1]).collect();
        let cfg = FitConfig { weight_decay: 0.01, ..FitConfig::constant(4, 0.1, 3, true) };
        let whole = Towards { batches: xs.chunks(3).map(<[_]>::to_vec).collect(), weights: vec![1.0; 3], ctrl_c: None };
        let one = fit(&whole, start(), &cfg, FitIo::default()).unwrap();
        let split = split_batches(7, 3, 2).unwrap();
        assert_eq!(split.sizes[0], [1, 1, 0], "node 0's part of the last batch is empty");
        for (losses, v, _) in two_nodes(&xs, &split, &cfg, None) {
            assert_eq!(losses.len(), one.state.losses.len());
            for (a, b) in losses.iter().zip(&one.state.losses) {
                assert!((a - b).abs() < 1e-5, "{losses:?} vs {:?}", one.state.losses);
            }
            for (a, b) in v.iter().zip(vector(&one.module)) {
                assert!((a - b).abs() < 1e-5, "{v:?} vs {:?}", vector(&one.module));
            }
        }
    }

    /// Trains on two nodes (threads) summing through [`ThreadSum`], node 1 interrupted when it
    /// first meets batch `ctrl_c`: each node's losses, vector and outcome.
    fn two_nodes(
        xs: &[[f32; 3]],
        split: &crate::replicas::BatchSplit,
        cfg: &FitConfig,
        ctrl_c: Option<usize>,
    ) -> Vec<(Vec<f32>, Vec<f32>, Outcome)> {
        let sum = Arc::new((Mutex::new(Vec::new()), Barrier::new(2)));
        let nodes: Vec<_> = (0..2)
            .map(|n| {
                let (split, sum, cfg, xs) = (split.clone(), Arc::clone(&sum), *cfg, xs.to_vec());
                std::thread::spawn(move || {
                    let mut parts = split.parts[n].iter().map(|&i| xs[i]);
                    let batches: Vec<Vec<[f32; 3]>> =
                        split.sizes[n].iter().map(|&k| parts.by_ref().take(k).collect()).collect();
                    let totals: Vec<usize> =
                        (0..batches.len()).map(|b| split.sizes.iter().map(|s| s[b]).sum()).collect();
                    let weights = split.sizes[n].iter().zip(totals).map(|(&k, t)| k as f32 / t as f32).collect();
                    let (sum, flag) = (ThreadSum(sum), AtomicBool::new(false));
                    let ctrl_c = ctrl_c.filter(|_| n == 1).map(|b| (&flag, b));
                    let io = FitIo { nodes: Some(&sum), interrupt: Some(&flag), ..FitIo::default() };
                    let f = fit(&Towards { batches, weights, ctrl_c }, start(), &cfg, io).unwrap();
                    (f.state.losses, vector(&f.module), f.outcome)
                })
            })
            .collect();
        nodes.into_iter().map(|n| n.join().unwrap()).collect()
    }

    /// Ctrl-C on one node stops every node after the same step.
    #[test]
    fn ctrl_c_on_one_node_stops_every_node_after_the_same_step() {
        let xs: Vec<[f32; 3]> = (0..12).map(|i| [i as f32, 0.5, -(i as f32)]).collect();
        let split = split_batches(12, 3, 2).unwrap();
        let nodes = two_nodes(&xs, &split, &FitConfig::constant(3, 0.1, 1, false), Some(2));
        for (losses, _, outcome) in &nodes {
            assert_eq!((losses.len(), *outcome), (3, Outcome::Interrupted), "stopped after the step of batch 2");
        }
        assert_eq!(nodes[0].1, nodes[1].1, "the same vector on both");
    }
}
