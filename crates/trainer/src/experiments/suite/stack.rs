//! Several interventions at one layer trained or scored in one forward: the cached batch
//! repeated once per block, each block with its own region, labels and intervention. The frozen
//! model's work per step is then shared by all the blocks; each block's loss reaches only its own
//! parameters, and Adam updates every parameter from its own gradient, so training the blocks
//! together is training each alone (with one batch order).

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{BasicOps, Int, Tensor, TensorData, TensorKind};
use ferrovene_interventions::{Composition, Intervene, Intervention, Placement};
use ferrovene_models::{Checkpoint, NoHooks, Transformer, gather_positions, resume};

use crate::fit::{Objective, Trainable};

/// Interventions trained together, block `k` on the rows of block `k` of a [`Stack`].
#[derive(Module, Debug)]
pub struct Stacked<B: Backend> {
    /// One per block.
    pub ivs: Vec<Intervention<B>>,
}

impl<B: AutodiffBackend> Trainable<B> for Stacked<B> {}

/// A cached batch repeated into blocks, each with its own positions and labels, going on from
/// the first position any block touches.
pub struct Stack<B: Backend> {
    /// The bases at the site, blocks one after another (`[blocks × n, seq − start, width]`),
    /// with the input of the positions from `start` and the frozen keys and values before it.
    pub checkpoint: Checkpoint<B>,
    /// Per block, `[n, 1]` intervention positions (counted from `start`).
    pub positions: Vec<Tensor<B, 2, Int>>,
    /// Per block, `[n, 1, width]` the sources' vectors.
    pub sources: Vec<Tensor<B, 3>>,
    /// `[blocks × n, 1]` label positions.
    pub label_positions: Tensor<B, 2, Int>,
    /// `[blocks × n, 1]` the trained-on label of every row.
    pub labels: Tensor<B, 2, Int>,
    /// Rows per block.
    pub rows: usize,
}

/// `t` repeated `k` times along the first dimension.
pub fn repeat<B: Backend, const D: usize, K: TensorKind<B> + BasicOps<B>>(
    t: Tensor<B, D, K>,
    k: usize,
) -> Tensor<B, D, K> {
    if k == 1 { t } else { Tensor::cat(vec![t; k], 0) }
}

/// `[rows, 1]` integer tensor of ids.
pub fn column<B: Backend>(ids: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [ids.len(), 1]), device)
}

/// Next-token logits at the label positions (`[blocks × n, vocab]`), block `k` intervened on by
/// `ivs[k]`.
pub fn logits<B: Backend, M: Transformer<B>>(
    model: &M,
    stack: &Stack<B>,
    ivs: &[Intervention<B>],
) -> Result<Tensor<B, 2>> {
    let site = stack.checkpoint.site;
    let info = model.site_info(site)?;
    let n = stack.rows;
    let blocks = ivs
        .iter()
        .enumerate()
        .map(|(k, iv)| -> Result<Tensor<B, 3>> {
            let act = stack.checkpoint.activation.clone().narrow(0, k * n, n);
            let placement =
                Placement::new(info, iv, stack.positions[k].clone(), Some(stack.sources[k].clone()), vec![])?;
            Ok(Intervene::new(vec![placement], Composition::Parallel).apply_at(site, act))
        })
        .collect::<Result<Vec<_>>>()?;
    let hidden = resume(model, &stack.checkpoint, Tensor::cat(blocks, 0), &mut NoHooks)?;
    let logits = model
        .head(gather_positions(hidden, stack.label_positions.clone()))
        .context("a suite needs a language model")?;
    let [rows, _, v] = logits.dims();
    Ok(logits.reshape([rows, v]))
}

/// DAS on stacks: the sum over blocks of each block's mean counterfactual cross-entropy.
pub struct StackedDas<'a, B: Backend, M: Transformer<B>> {
    /// The frozen model.
    pub model: &'a M,
    /// One stack per training batch.
    pub stacks: &'a [Stack<B>],
}

impl<B: AutodiffBackend, M: Transformer<B>> Objective<B, Stacked<B>> for StackedDas<'_, B, M> {
    fn batches(&self) -> usize {
        self.stacks.len()
    }

    fn loss(&self, module: &Stacked<B>, index: usize) -> Result<Tensor<B, 1>> {
        let stack = &self.stacks[index];
        let logits = logits(self.model, stack, &module.ivs)?;
        // Σ_k mean over block k = (sum over every row) / rows per block.
        Ok(log_softmax(logits, 1).gather(1, stack.labels.clone()).sum().neg() / stack.rows as f64)
    }

    fn validate(&self, _: &Stacked<B>) -> Result<Option<(f32, f32)>> {
        Ok(None)
    }
}
