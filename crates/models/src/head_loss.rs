//! The next-token loss of a linear head without its logits: `−log softmax(x Wᵀ)[label]` and its
//! gradient in `x`, in one pass over `W`.
//!
//! A language model's head is the largest matrix it has (SmolLM2: 49,152 × 576, 113 MB in f32),
//! and a training step that reads it for the logits and again for their gradient spends a
//! quarter of its time there. Here the pass over the vocabulary keeps, per row, a running maximum
//! `m`, a running sum `s = Σ exp(z − m)` and a running `a = Σ exp(z − m) W_v` (the online
//! softmax of Milakov & Gimelshein 2018, rescaled whenever `m` grows), so that after the pass
//!
//! ```text
//! loss = m + ln s − z_label,      ∂loss/∂x = a / s − W_label
//! ```
//!
//! with each block of `W` read from memory once, for both products. The products are `gemm`'s (the
//! crate burn's CPU backend multiplies with), in f32; rayon splits the vocabulary and the partial
//! states are merged as the softmax's own algebra says. The numbers are the two-pass ones up to
//! f32 summation order (tested against f64).
//!
//! [`next_token_nll`] puts it in burn as one autodiff node on burn-flex (the gradient was computed
//! in the forward; the backward only scales it) and falls back to the head's logits, log-softmax
//! and gather anywhere else.

use std::any::Any;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::{Flex, FlexTensor, Layout};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bytes, DType, Int, Shape, Tensor, TensorData, TensorPrimitive};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use crate::layers::Linear;
use crate::layout::same_type;
use crate::model::Transformer;

/// Vocabulary rows per block: a block of `W` (at width 576, 295 KB) stays in L2 between the
/// product that gives its logits and the one that adds it to `a`.
const BLOCK: usize = 128;

/// The loss of each row and its gradient in that row's input.
#[derive(Debug, Clone, PartialEq)]
pub struct NllAndGradient {
    /// `−log softmax(x_i Wᵀ)[label_i]`, `[rows]`.
    pub loss: Vec<f32>,
    /// `∂loss_i/∂x_i`, `[rows, width]` row-major.
    pub gradient: Vec<f32>,
}

/// The running state of the online softmax over part of the vocabulary.
struct Partial {
    /// Running maximum per row.
    max: Vec<f32>,
    /// `Σ exp(z − max)` per row.
    sum: Vec<f32>,
    /// `Σ exp(z − max) W_v` per row, `[rows, width]`.
    acc: Vec<f32>,
    /// The label's logit, where the label fell in this part.
    label_logit: Vec<Option<f32>>,
}

impl Partial {
    fn empty(rows: usize, width: usize) -> Self {
        Partial {
            max: vec![f32::NEG_INFINITY; rows],
            sum: vec![0.0; rows],
            acc: vec![0.0; rows * width],
            label_logit: vec![None; rows],
        }
    }

    /// Both states as one: each rescaled to the larger maximum, then added. A part that saw no
    /// finite logit (its maximum still −∞) adds nothing but its NaNs, so a diverged input gives a
    /// NaN loss, not an error.
    fn merge(mut self, other: Partial, width: usize) -> Partial {
        for i in 0..self.max.len() {
            self.label_logit[i] = self.label_logit[i].or(other.label_logit[i]);
            let max = self.max[i].max(other.max[i]);
            let scale = |m: f32| if m == f32::NEG_INFINITY { 0.0 } else { (m - max).exp() };
            let (mine, theirs) = (scale(self.max[i]), scale(other.max[i]));
            self.sum[i] = self.sum[i] * mine + other.sum[i] * theirs;
            let row = i * width..(i + 1) * width;
            for (a, b) in self.acc[row.clone()].iter_mut().zip(&other.acc[row]) {
                *a = *a * mine + *b * theirs;
            }
            self.max[i] = max;
        }
        self
    }
}

/// Loss and input gradient for `x` (`[rows, width]`, row-major) under the head `w`
/// (`[vocab, width]`, row-major: PyTorch's `[out, in]`), one label per row.
///
/// # Panics
/// If the slices' lengths disagree with `rows`, `width` and `labels`, or a label is not below
/// the vocabulary size: the caller checked its labels against the tokenizer already.
pub fn nll_and_gradient(x: &[f32], rows: usize, width: usize, w: &[f32], labels: &[usize]) -> NllAndGradient {
    assert_eq!(x.len(), rows * width, "head loss: x has {} values, not {rows} × {width}", x.len());
    assert_eq!(labels.len(), rows, "head loss: {} labels for {rows} rows", labels.len());
    assert!(
        width > 0 && w.len().is_multiple_of(width),
        "head loss: W has {} values, not a multiple of {width}",
        w.len()
    );
    let vocab = w.len() / width;
    assert!(labels.iter().all(|&l| l < vocab), "head loss: a label is not below the vocabulary size {vocab}");
    // Enough parts for rayon to balance two cores, each many blocks long.
    let parts = (rayon::current_num_threads() * 4).max(1);
    let part_rows = vocab.div_ceil(parts).div_ceil(BLOCK) * BLOCK;
    let total = (0..vocab.div_ceil(part_rows.max(1)))
        .into_par_iter()
        .map(|p| {
            let (start, end) = (p * part_rows, ((p + 1) * part_rows).min(vocab));
            part(x, rows, width, w, labels, start, end)
        })
        .reduce_with(|a, b| a.merge(b, width))
        .unwrap_or_else(|| Partial::empty(rows, width));
    let mut loss = vec![0f32; rows];
    let mut gradient = total.acc;
    for i in 0..rows {
        let label_logit = total.label_logit[i].expect("every label lies in some part of the vocabulary");
        loss[i] = total.max[i] + total.sum[i].ln() - label_logit;
        let inv = 1.0 / total.sum[i];
        let label_row = &w[labels[i] * width..(labels[i] + 1) * width];
        for (g, wl) in gradient[i * width..(i + 1) * width].iter_mut().zip(label_row) {
            *g = *g * inv - wl;
        }
    }
    NllAndGradient { loss, gradient }
}

/// The online softmax over vocabulary rows `start..end`.
fn part(x: &[f32], rows: usize, width: usize, w: &[f32], labels: &[usize], start: usize, end: usize) -> Partial {
    let mut state = Partial::empty(rows, width);
    let mut z = vec![0f32; rows * BLOCK];
    let mut v0 = start;
    while v0 < end {
        let cols = (end - v0).min(BLOCK);
        let block = &w[v0 * width..(v0 + cols) * width];
        // z[i, j] = x_i · W_{v0 + j}: lhs x [rows, width], rhs Wᵀ of the block [width, cols].
        // SAFETY: every pointer and stride describes memory inside the slices above.
        unsafe {
            gemm(
                rows,
                cols,
                width,
                z.as_mut_ptr(),
                1,
                BLOCK as isize,
                false,
                x.as_ptr(),
                1,
                width as isize,
                block.as_ptr(),
                width as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        for i in 0..rows {
            let zi = &mut z[i * BLOCK..i * BLOCK + cols];
            if (v0..v0 + cols).contains(&labels[i]) {
                state.label_logit[i] = Some(zi[labels[i] - v0]);
            }
            let block_max = zi.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let max = state.max[i].max(block_max);
            if max > state.max[i] && state.max[i] != f32::NEG_INFINITY {
                let scale = (state.max[i] - max).exp();
                state.sum[i] *= scale;
                state.acc[i * width..(i + 1) * width].iter_mut().for_each(|a| *a *= scale);
            }
            state.max[i] = max;
            let mut sum = 0f32;
            for v in zi.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            state.sum[i] += sum;
        }
        // acc += p̃ W_block: lhs p̃ [rows, cols] (row stride BLOCK), rhs the block [cols, width].
        // SAFETY: as above.
        unsafe {
            gemm(
                rows,
                width,
                cols,
                state.acc.as_mut_ptr(),
                1,
                width as isize,
                true,
                z.as_ptr(),
                1,
                BLOCK as isize,
                block.as_ptr(),
                1,
                width as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        v0 += cols;
    }
    state
}

/// `−log softmax(hidden · headᵀ)[label]` per row (`hidden` `[rows, width]`), as a `[rows]` tensor
/// with its gradient in `hidden`. One pass over the head's weight on burn-flex (plain or under
/// autodiff) where the head is an f32 map without bias; the logits, log-softmax and gather
/// otherwise.
pub fn next_token_nll<B: Backend>(hidden: Tensor<B, 2>, head: &Linear<B>, labels: &[usize]) -> Tensor<B, 1> {
    let fused = head.bias.is_none() && head.weight.val().dtype() == DType::F32 && hidden.dtype() == DType::F32;
    let hidden = if fused { flex_nll(hidden, head, labels) } else { Err(hidden) };
    hidden.unwrap_or_else(|hidden| composed_nll(hidden, head, labels))
}

/// The same loss by burn's ops: the logits, their log-softmax, the label's entry.
pub fn composed_nll<B: Backend>(hidden: Tensor<B, 2>, head: &Linear<B>, labels: &[usize]) -> Tensor<B, 1> {
    nll_of_logits(crate::precision::to_f32(head.forward(hidden)), labels)
}

/// `−log softmax(logits)[label]` per row of `[rows, vocab]` logits.
pub fn nll_of_logits<B: Backend>(logits: Tensor<B, 2>, labels: &[usize]) -> Tensor<B, 1> {
    let rows = labels.len();
    let labels = Tensor::<B, 2, Int>::from_data(
        TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [rows, 1]),
        &logits.device(),
    );
    log_softmax(logits, 1).gather(1, labels).reshape([rows]).neg()
}

/// `−log p(label)` per row of final hidden states (`[rows, width]`, f32, after the final norm)
/// under `model`'s head: in one pass over the head where it is a plain map
/// ([`Transformer::head_map`]), from the logits otherwise. `None` for a model without a head.
pub fn model_nll<B: Backend, M: Transformer<B> + ?Sized>(
    model: &M,
    hidden: Tensor<B, 2>,
    labels: &[usize],
) -> Option<Tensor<B, 1>> {
    match model.head_map() {
        Some(head) => Some(next_token_nll(crate::precision::to_dtype(hidden, model.dtype()), head, labels)),
        None => {
            let [rows, width] = hidden.dims();
            let logits = model.head(hidden.reshape([rows, 1, width]))?;
            let vocab = logits.dims()[2];
            Some(nll_of_logits(logits.reshape([rows, vocab]), labels))
        }
    }
}

/// The fused loss where `B` is burn-flex, plain or under autodiff; `hidden` back otherwise.
fn flex_nll<B: Backend>(
    hidden: Tensor<B, 2>,
    head: &Linear<B>,
    labels: &[usize],
) -> Result<Tensor<B, 1>, Tensor<B, 2>> {
    let weight: Box<dyn Any> = Box::new(head.weight.val());
    let hidden: Box<dyn Any> = Box::new(hidden);
    let hidden = match (hidden.downcast::<Tensor<Flex, 2>>(), weight.downcast_ref::<Tensor<Flex, 2>>()) {
        (Ok(x), Some(w)) => {
            let (loss, _) = flex_forward(x.into_primitive().tensor(), w.clone().into_primitive().tensor(), labels);
            return Ok(same_type(Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(loss))));
        }
        (Ok(x), None) => x as Box<dyn Any>,
        (Err(x), _) => x,
    };
    let hidden =
        match (hidden.downcast::<Tensor<Autodiff<Flex>, 2>>(), weight.downcast_ref::<Tensor<Autodiff<Flex>, 2>>()) {
            (Ok(x), Some(w)) => {
                let x: burn::tensor::ops::FloatTensor<Autodiff<Flex>> = x.into_primitive().tensor();
                let w = w.clone().inner().into_primitive().tensor();
                let (loss, gradient) = flex_forward(x.primitive.clone(), w, labels);
                let loss = match HeadNll.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful() {
                    OpsKind::Tracked(prep) => prep.finish(gradient, loss),
                    OpsKind::UnTracked(prep) => prep.finish(loss),
                };
                return Ok(same_type(Tensor::<Autodiff<Flex>, 1>::from_primitive(TensorPrimitive::Float(loss))));
            }
            (Ok(x), None) => x as Box<dyn Any>,
            (Err(x), _) => x,
        };
    Err(*hidden.downcast::<Tensor<B, 2>>().expect("the tensor given in"))
}

/// Loss `[rows]` and gradient `[rows, width]` as burn-flex tensors.
fn flex_forward(x: FlexTensor, w: FlexTensor, labels: &[usize]) -> (FlexTensor, FlexTensor) {
    let [rows, width] = [x.layout().shape()[0], x.layout().shape()[1]];
    let x = if x.as_slice::<f32>().is_some() { x } else { x.to_contiguous() };
    let w = if w.as_slice::<f32>().is_some() { w } else { w.to_contiguous() };
    let out = nll_and_gradient(
        x.as_slice::<f32>().expect("a contiguous f32 tensor"),
        rows,
        width,
        w.as_slice::<f32>().expect("a contiguous f32 tensor"),
        labels,
    );
    let tensor = |values: Vec<f32>, shape: Shape| {
        FlexTensor::new(Bytes::from_elems(values), Layout::contiguous(shape), DType::F32)
    };
    (tensor(out.loss, Shape::new([rows])), tensor(out.gradient, Shape::new([rows, width])))
}

/// The backward of the fused loss: `∂L/∂x_i = (∂L/∂loss_i) · ∂loss_i/∂x_i`, the latter kept from
/// the forward.
#[derive(Debug)]
struct HeadNll;

impl Backward<Flex, 1> for HeadNll {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let gradient = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(ops.state));
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad_loss| {
            let scale = Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(grad_loss));
            (gradient * scale.unsqueeze_dim(1)).into_primitive().tensor()
        });
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tolerance};

    use super::*;

    type Ad = Autodiff<Flex>;

    /// Deterministic values in [−scale, scale).
    fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// Loss and gradient by the textbook two passes, in f64.
    fn reference(x: &[f32], rows: usize, width: usize, w: &[f32], labels: &[usize]) -> (Vec<f64>, Vec<f64>) {
        let vocab = w.len() / width;
        let (mut loss, mut grad) = (vec![0f64; rows], vec![0f64; rows * width]);
        for i in 0..rows {
            let z: Vec<f64> = (0..vocab)
                .map(|v| (0..width).map(|k| x[i * width + k] as f64 * w[v * width + k] as f64).sum())
                .collect();
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|z| (z - max).exp()).sum();
            loss[i] = max + sum.ln() - z[labels[i]];
            for v in 0..vocab {
                let p = (z[v] - max).exp() / sum - if v == labels[i] { 1.0 } else { 0.0 };
                for k in 0..width {
                    grad[i * width + k] += p * w[v * width + k] as f64;
                }
            }
        }
        (loss, grad)
    }

    #[test]
    fn one_pass_equals_the_two_pass_softmax_in_f64() {
        // A vocabulary of several blocks and a partial last one; labels in the first, a middle
        // and the last block; logits large enough that an unshifted exp would overflow.
        let (rows, width, vocab) = (5, 40, 3 * BLOCK + 17);
        let x = values(rows * width, 1, 30.0);
        let w = values(vocab * width, 2, 1.0);
        let labels = [0, BLOCK + 3, vocab - 1, 2 * BLOCK, 7];
        let ours = nll_and_gradient(&x, rows, width, &w, &labels);
        let (loss, grad) = reference(&x, rows, width, &w, &labels);
        for (i, (a, b)) in ours.loss.iter().zip(&loss).enumerate() {
            assert!((*a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()), "row {i}: {a} vs {b}");
        }
        for (j, (a, b)) in ours.gradient.iter().zip(&grad).enumerate() {
            assert!((*a as f64 - b).abs() <= 1e-5, "gradient {j}: {a} vs {b}");
        }
        // Logits past exp's f32 range really were met (a missing shift would overflow there).
        let largest = (0..rows)
            .flat_map(|i| (0..vocab).map(move |v| (i, v)))
            .map(|(i, v)| (0..width).map(|k| x[i * width + k] * w[v * width + k]).sum::<f32>().abs())
            .fold(0f32, f32::max);
        assert!(largest > 89.0, "logits up to {largest} stay inside exp's f32 range");
    }

    #[test]
    fn a_non_finite_input_gives_a_nan_loss_not_a_panic() {
        // What a diverged run hands the loss: the divergence check must see a NaN.
        let (rows, width, vocab) = (3, 8, 2 * BLOCK + 9);
        let mut x = values(rows * width, 3, 1.0);
        x[0] = f32::NAN; // row 0: every logit NaN
        x[width] = f32::INFINITY; // row 1: logits ±∞ or NaN
        let w = values(vocab * width, 4, 1.0);
        let out = nll_and_gradient(&x, rows, width, &w, &[1, vocab - 1, BLOCK]);
        assert!(out.loss[0].is_nan() && out.loss[1].is_nan(), "losses {:?}", out.loss);
        assert!(out.loss[2].is_finite(), "a finite row stays finite: {:?}", out.loss);
    }

    #[test]
    fn the_burn_op_matches_the_composed_loss_and_gradient() {
        let device = Default::default();
        let (rows, width, vocab) = (6, 24, 2 * BLOCK + 5);
        let head = Linear::<Ad> {
            weight: burn::module::Param::from_tensor(Tensor::random(
                [vocab, width],
                Distribution::Uniform(-1.0, 1.0),
                &device,
            )),
            bias: None,
            bf16: None,
        };
        let labels = [3, 0, vocab - 1, BLOCK, 200, 9];
        let x = Tensor::<Ad, 2>::random([rows, width], Distribution::Uniform(-2.0, 2.0), &device);
        let weights = Tensor::<Ad, 1>::from_floats([0.5, -1.0, 2.0, 0.25, 1.0, 3.0], &device);

        let x_ours = x.clone().require_grad();
        let ours = next_token_nll(x_ours.clone(), &head, &labels);
        let grads = (ours.clone() * weights.clone()).sum().backward();
        let dx_ours = x_ours.grad(&grads).expect("x has a gradient");

        let x_ref = x.require_grad();
        let reference = composed_nll(x_ref.clone(), &head, &labels);
        let grads = (reference.clone() * weights).sum().backward();
        let dx_ref = x_ref.grad(&grads).expect("x has a gradient");

        let tolerance = Tolerance::absolute(1e-5);
        ours.to_data().assert_approx_eq::<f32>(&reference.to_data(), tolerance);
        dx_ours.to_data().assert_approx_eq::<f32>(&dx_ref.to_data(), tolerance);
        // The plain backend takes the same op.
        let plain = Linear::<Flex> {
            weight: burn::module::Param::from_tensor(head.weight.val().inner()),
            bias: None,
            bf16: None,
        };
        next_token_nll(x_ref.inner(), &plain, &labels)
            .to_data()
            .assert_approx_eq::<f32>(&reference.to_data(), tolerance);
    }
}
