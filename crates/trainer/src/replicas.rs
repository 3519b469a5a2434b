//! Data-parallel training from the command line (`--devices cuda:0,cuda:1`): every batch of the
//! single-device run is cut into one part per device, each device holds the frozen model and the
//! frozen cache of its parts, and the loss of a batch is the mean of the parts' mean losses
//! weighted by their sizes, which is the whole batch's mean loss. The intervention lives on the
//! first device; each part's forward pass takes a copy of it through burn's differentiable
//! `to_device`, so one backward pass brings every part's gradient home and [`crate::fit`]
//! (validation, early stopping, checkpoints, Ctrl-C, `--resume`, events) runs unchanged.
//!
//! The result is the single-device run on the whole batch up to float rounding (the parts are
//! padded to their own longest example, and sums go in another order). Validation and the
//! held-out evaluation run on the first device on the whole sets.
//!
//! `ferrovene_trainer::parallel` (feature `collective`) is the other way: one thread per device and burn's collective all-reduce,
//! as a library function without the loop's checkpoints and validation.

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use ferrovene_models::{AnyModel, LoadedModel};

use crate::device::load_model;
use crate::fit::Objective;

/// The frozen model loaded once more for each other distinct device of `devices` (`--devices`;
/// the first device holds the model loaded already, and a device named twice shares one copy):
/// `(index of the device's first mention, its copy)`.
pub fn model_copies<B: Backend>(spec: &str, devices: &[B::Device]) -> Result<Vec<(usize, LoadedModel<B>)>> {
    let mut copies = Vec::new();
    for (d, other) in devices.iter().enumerate().skip(1) {
        if !devices[..d].contains(other) {
            let copy = load_model::<B>(spec, other).with_context(|| format!("loading model `{spec}` on device {d}"))?;
            copies.push((d, copy));
        }
    }
    Ok(copies)
}

/// Each device of `devices` with its frozen model (`first` on the first device and on any
/// device equal to it, else its copy from [`model_copies`]); empty for one device.
pub fn replica_models<'m, B: Backend>(
    devices: &[B::Device],
    first: &'m AnyModel<B>,
    copies: &'m [(usize, LoadedModel<B>)],
) -> Vec<(B::Device, &'m AnyModel<B>)> {
    if devices.len() < 2 {
        return Vec::new();
    }
    devices
        .iter()
        .map(|dev| {
            let at = devices.iter().position(|x| x == dev).unwrap_or(0);
            let model = copies.iter().find(|(d, _)| *d == at).map_or(first, |(_, c)| &c.model);
            (dev.clone(), model)
        })
        .collect()
}

/// How the batches of a split are shared between devices: part `d` of batch `b` is
/// `examples[parts[d]]`'s next `sizes[d][b]` examples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSplit {
    /// Per device, the indices (into the split's examples) of its parts, batch after batch.
    pub parts: Vec<Vec<usize>>,
    /// Per device, the size of its part of each batch (0 only in a last batch smaller than the
    /// number of devices).
    pub sizes: Vec<Vec<usize>>,
    /// Per device, the size of its part of a full batch: the batch size it prepares with.
    pub part_size: Vec<usize>,
}

/// The sizes of the batches of `len` examples in batches of `batch_size`, the last one shorter:
/// what a data-parallel run weights each part's loss by.
pub fn batch_sizes(len: usize, batch_size: usize) -> Vec<usize> {
    (0..len).step_by(batch_size.max(1)).map(|start| batch_size.min(len - start)).collect()
}

/// Cuts the batches of `len` examples in batches of `batch_size` (the single-device run's,
/// the last one shorter) into `devices` contiguous parts each, as equal as they come: part `d`
/// of a batch of `m` is its examples `d·m/n .. (d+1)·m/n`.
pub fn split_batches(len: usize, batch_size: usize, devices: usize) -> Result<BatchSplit> {
    if devices == 0 {
        bail!("data-parallel training needs at least one device");
    }
    if batch_size < devices {
        bail!(
            "batch_size = {batch_size} cannot be shared by {devices} devices: every device needs part of every batch; \
             give batch_size at least {devices} (--set batch_size=…) or fewer --devices"
        );
    }
    let bounds = |m: usize, d: usize| (d * m / devices, (d + 1) * m / devices);
    let mut split = BatchSplit {
        parts: vec![Vec::new(); devices],
        sizes: vec![Vec::new(); devices],
        part_size: (0..devices).map(|d| bounds(batch_size, d)).map(|(a, b)| b - a).collect(),
    };
    let mut start = 0;
    for m in batch_sizes(len, batch_size) {
        for d in 0..devices {
            let (a, b) = bounds(m, d);
            split.parts[d].extend(start + a..start + b);
            split.sizes[d].push(b - a);
        }
        start += m;
    }
    Ok(split)
}

/// One device's share of the training: the objective over its parts of every batch (its
/// batch `b` is its part of batch `b`, so it has as many batches, or one fewer when its part
/// of a short last batch is empty).
pub struct Replica<'a, B: AutodiffBackend, M> {
    /// Where this part computes.
    pub device: B::Device,
    /// The loss of its parts.
    pub objective: &'a dyn Objective<B, M>,
    /// Examples in its part of each batch.
    pub sizes: Vec<usize>,
}

/// The training objective of a data-parallel run: [`Objective::loss`] is the size-weighted
/// mean of the replicas' losses on the first device; validation is `whole`'s.
pub struct DataParallel<'a, B: AutodiffBackend, M> {
    /// One per device; the first device is where the module lives.
    pub replicas: Vec<Replica<'a, B, M>>,
    /// Validates (on the whole validation set) and says when the goal is reached.
    pub whole: &'a dyn Objective<B, M>,
    /// The size of each whole batch, over every device of every node: a part's loss is
    /// weighted by its share of it.
    pub totals: Vec<usize>,
}

impl<'a, B: AutodiffBackend, M> DataParallel<'a, B, M> {
    /// The replicas of a split made by [`split_batches`], with the sizes of the whole batches;
    /// checks that every replica has a batch wherever its part is not empty.
    pub fn new(replicas: Vec<Replica<'a, B, M>>, whole: &'a dyn Objective<B, M>, totals: Vec<usize>) -> Result<Self> {
        let batches = totals.len();
        for (d, r) in replicas.iter().enumerate() {
            let filled = r.sizes.iter().filter(|&&s| s > 0).count();
            if r.sizes.len() != batches || r.objective.batches() != filled {
                bail!(
                    "device {d} has {} batches for {filled} non-empty parts of {batches} batches",
                    r.objective.batches()
                );
            }
        }
        Ok(DataParallel { replicas, whole, totals })
    }
}

impl<B, M> Objective<B, M> for DataParallel<'_, B, M>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Clone,
{
    fn batches(&self) -> usize {
        self.totals.len()
    }

    fn loss(&self, module: &M, index: usize) -> Result<Tensor<B, 1>> {
        let home = module.devices().first().cloned().unwrap_or_default();
        let total = self.totals[index];
        // Every part's forward pass first, then the sum: GPU backends queue each device's work
        // and compute the parts at once; a part moved home early would wait for its device.
        let mut parts = Vec::with_capacity(self.replicas.len());
        for (d, r) in self.replicas.iter().enumerate() {
            let size = r.sizes[index];
            if size == 0 {
                continue;
            }
            let copy = if r.device == home { module.clone() } else { module.clone().to_device(&r.device) };
            let loss = r.objective.loss(&copy, index).with_context(|| format!("device {d}, batch {index}"))?;
            parts.push((loss, size as f64 / total as f64));
        }
        // A node whose parts of a short last batch are all empty adds nothing to its sum: a zero
        // that backward can start from and that gives no parameter a gradient.
        Ok(parts
            .into_iter()
            .map(|(loss, weight)| loss.to_device(&home) * weight)
            .reduce(|a, b| a + b)
            .unwrap_or_else(|| Tensor::zeros([1], &home).require_grad()))
    }

    fn validate(&self, module: &M) -> Result<Option<(f32, f32)>> {
        self.whole.validate(module)
    }

    fn reached(&self, accuracy: f32) -> bool {
        self.whole.reached(accuracy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_goes_to_one_part_of_its_own_batch() {
        let s = split_batches(11, 4, 2).unwrap();
        assert_eq!(s.part_size, [2, 2]);
        assert_eq!(s.parts, [vec![0, 1, 4, 5, 8], vec![2, 3, 6, 7, 9, 10]]);
        assert_eq!(s.sizes, [vec![2, 2, 1], vec![2, 2, 2]]);
        // Uneven parts of a batch, and a last batch with fewer examples than devices.
        let s = split_batches(7, 5, 3).unwrap();
        assert_eq!(s.part_size, [1, 2, 2]);
        assert_eq!(s.parts, [vec![0], vec![1, 2, 5], vec![3, 4, 6]]);
        assert_eq!(s.sizes, [vec![1, 0], vec![2, 1], vec![2, 1]]);
        let e = split_batches(10, 1, 2).unwrap_err().to_string();
        assert!(e.contains("batch_size = 1 cannot be shared by 2 devices"), "{e}");
    }
}
