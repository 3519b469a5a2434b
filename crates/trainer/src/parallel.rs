//! Data-parallel training of an intervention over several devices of one machine, with burn's
//! collective operations: each device holds the frozen model and a shard of every batch; after
//! each backward pass the gradients are averaged across devices by burn's all-reduce, and every
//! device takes the same optimizer step, so the replicas stay equal. With equal shards this is
//! the single-device run on the whole batch (the mean of the shards' mean losses is the batch's
//! mean loss), up to float rounding.
//!
//! Several machines do not go through burn's collective (its global all-reduce hangs on the second
//! call in 0.21): `--nodes` sums each step through ferrovene's orchestrator ([`crate::nodes`]).

use anyhow::{Result, anyhow, bail};
use burn::collective::{
    CollectiveConfig, CollectiveError, PeerId, ReduceOperation, all_reduce, finish_collective, register,
};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorPrimitive};

use crate::divergence::{Diverged, first_non_finite};
use crate::fit::{FitConfig, Objective, Trainable};
use crate::schedule::LrSchedule;

/// One device's part: the device and the objective over its shard of every batch.
pub struct Shard<B: AutodiffBackend, O> {
    /// Where this replica computes.
    pub device: B::Device,
    /// Its shard of every batch (all shards have the same number of batches, in the same order).
    pub objective: O,
}

/// What a data-parallel run ends with: the trained module (from the first device) and each
/// step's loss averaged over the devices.
pub struct ParallelFit<M> {
    /// The trained module, as every replica holds it.
    pub module: M,
    /// Mean over devices of each step's loss.
    pub losses: Vec<f32>,
}

/// Trains `module` for `cfg.epochs` passes over the shards' batches (in index order; learning
/// rate, warmup, decay, weight decay and clipping from `cfg`), one replica per shard, gradients
/// averaged by all-reduce after every step.
pub fn fit_data_parallel<B, M, O>(shards: Vec<Shard<B, O>>, module: M, cfg: &FitConfig) -> Result<ParallelFit<M>>
where
    B: AutodiffBackend,
    M: Trainable<B> + AutodiffModule<B> + Send,
    O: Objective<B, M> + Send,
{
    cfg.check()?;
    let n = shards.len();
    if n == 0 {
        bail!("data-parallel training needs at least one device");
    }
    let batches = shards[0].objective.batches();
    if let Some((i, s)) = shards.iter().enumerate().find(|(_, s)| s.objective.batches() != batches) {
        bail!(
            "shard {i} has {} batches and shard 0 has {batches}: every device needs a shard of every batch",
            s.objective.batches()
        );
    }
    let total = (cfg.epochs * batches).max(1);
    let schedule = LrSchedule::new(cfg.lr, cfg.warmup, total, cfg.decay);
    let config = CollectiveConfig::default().with_num_devices(n);
    let results: Vec<Result<(M, Vec<f32>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .into_iter()
            .enumerate()
            .map(|(i, shard)| {
                let replica = module.clone().fork(&shard.device);
                let (config, schedule) = (config.clone(), &schedule);
                scope
                    .spawn(move || replica_loop(PeerId::from(i as u32), shard, replica, cfg, config, schedule, batches))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a replica's thread panicked")))).collect()
    });
    let mut replicas = Vec::with_capacity(n);
    for r in results {
        replicas.push(r?);
    }
    // Every replica holds the same module and the same all-reduced losses.
    let (module, losses) = replicas.swap_remove(0);
    Ok(ParallelFit { module, losses })
}

/// One replica: register with the collective, then loss → backward → all-reduce → step. The
/// loss is all-reduced with the gradients, so every replica sees the same mean loss and the same
/// updated parameters, and all stop at the same step if either goes non-finite (a replica that
/// stopped alone would leave the others waiting in the next all-reduce).
fn replica_loop<B, M, O>(
    peer: PeerId,
    shard: Shard<B, O>,
    mut module: M,
    cfg: &FitConfig,
    config: CollectiveConfig,
    schedule: &LrSchedule,
    batches: usize,
) -> Result<(M, Vec<f32>)>
where
    B: AutodiffBackend,
    M: Trainable<B> + AutodiffModule<B>,
    O: Objective<B, M>,
{
    register::<B::InnerBackend>(peer, shard.device.clone(), config)
        .map_err(|e| anyhow!("registering {peer} with burn's collective: {e:?}"))?;
    let collective = |what: &str, step: usize, e: CollectiveError| {
        anyhow!("all-reduce of the {what} at step {step} on {peer}: {e:?}")
    };
    let mut opt = cfg.optimizer::<B, M>();
    let mut losses: Vec<f32> = Vec::new();
    for step in 0..cfg.epochs * batches {
        let loss = shard.objective.loss(&module, step % batches)?;
        let mean_loss =
            all_reduce::<B::InnerBackend>(peer, loss.clone().inner().into_primitive().tensor(), ReduceOperation::Mean)
                .map_err(|e| collective("loss", step + 1, e))?;
        let value =
            Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(mean_loss)).into_scalar().elem::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &module)
            .all_reduce::<B::InnerBackend>(peer, ReduceOperation::Mean)
            .map_err(|e| collective("gradients", step + 1, e))?;
        let diverged =
            |what: String| Diverged { step: step + 1, what, last_finite_loss: losses.last().copied(), lr: cfg.lr };
        if !value.is_finite() {
            return Err(diverged(format!("the loss ({value})")).into());
        }
        module = opt.step(schedule.at(step), module, grads);
        if let Some((name, sum)) = first_non_finite(&module.valid()) {
            return Err(diverged(format!("parameter `{name}` (its entries sum to {sum})")).into());
        }
        losses.push(value);
    }
    finish_collective::<B::InnerBackend>(peer).map_err(|e| anyhow!("leaving burn's collective on {peer}: {e:?}"))?;
    Ok((module, losses))
}
