//! A stacked MLP layer, `relu(x Wᵀ + b)` per model, as one autodiff node on burn-flex.
//!
//! Tiny models (the 16-wide MLPs of hierarchical equality) spend a step on per-operation
//! bookkeeping, not arithmetic: under burn's autodiff a layer is five recorded operations
//! (transpose, product, bias repeat, add, ReLU), each registered in a graph behind a global lock
//! and walked again backward. Here the layer is one node whose forward and backward run exactly
//! the inner operations those five would, in the same order and on the same layouts, so values
//! and gradients are the composed layer's to the bit (tested below), for a fifth of the nodes.

use std::any::Any;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::TensorMetadata;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ActivationOps, FloatTensorOps};
use burn::tensor::{Tensor, TensorPrimitive};

use crate::layout::same_type;

/// `x Wᵀ + b` per model (and its ReLU when `relu`): `x` `[models, rows, in]`, `w`
/// `[models, out, in]`, `b` `[models, 1, out]`. Under autodiff on burn-flex one recorded node;
/// on every other backend the composed burn operations, with the same values.
pub fn stacked_affine<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 3>, b: Tensor<B, 3>, relu: bool) -> Tensor<B, 3> {
    let x: Box<dyn Any> = Box::new(x);
    match x.downcast::<Tensor<Autodiff<Flex>, 3>>() {
        Ok(x) => {
            let (w, b): (Tensor<Autodiff<Flex>, 3>, Tensor<Autodiff<Flex>, 3>) = (same_type(w), same_type(b));
            same_type(fused(*x, w, b, relu))
        }
        Err(x) => composed(*x.downcast::<Tensor<B, 3>>().expect("the tensor given in"), w, b, relu),
    }
}

/// The layer as burn operations: what [`fused`] equals.
fn composed<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 3>, b: Tensor<B, 3>, relu: bool) -> Tensor<B, 3> {
    let y = x.matmul(w.swap_dims(1, 2));
    // The bias repeated over the rows first: burn-flex adds a `[models, 1, out]` broadcast one
    // element by element (a strided walk), two contiguous operands with SIMD. The values and the
    // gradient (a sum over the rows) are the same.
    let rows = y.dims()[1];
    let y = y + b.repeat_dim(1, rows);
    if relu { burn::tensor::activation::relu(y) } else { y }
}

/// What the backward needs: the input (for `dW`), the weight (for `dx`), the output (for the
/// ReLU's mask), each kept only when a gradient needs it.
#[derive(Debug, Clone)]
struct Saved {
    x: Option<FlexTensor>,
    w: Option<FlexTensor>,
    out: Option<FlexTensor>,
}

/// The backward of [`fused`], as the composed operations' backward steps run it.
#[derive(Debug)]
struct AffineBackward;

impl Backward<Flex, 3> for AffineBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let Saved { x, w, out } = ops.state;
        let [node_x, node_w, node_b] = ops.parents;
        let mut grad = grads.consume::<Flex>(&ops.node);
        if let Some(out) = out {
            grad = Flex::relu_backward(out, grad);
        }
        if let Some(node) = node_b {
            // repeat_dim's backward for a length-1 dimension repeated over the rows.
            grads.register::<Flex>(node.id, Flex::float_sum_dim(grad.clone(), 1));
        }
        if let Some(node) = node_x {
            // matmul's lhs gradient: dy (Wᵀ)ᵀ, with Wᵀ the transposed view of W.
            let wt = Flex::float_swap_dims(w.clone().expect("kept when x needs a gradient"), 1, 2);
            grads.register::<Flex>(node.id, Flex::float_matmul(grad.clone(), Flex::float_transpose(wt)));
        }
        if let Some(node) = node_w {
            // matmul's rhs gradient xᵀ dy, then swap_dims' backward.
            let x = x.expect("kept when W needs a gradient");
            let dwt = Flex::float_matmul(Flex::float_transpose(x), grad);
            grads.register::<Flex>(node.id, Flex::float_swap_dims(dwt, 2, 1));
        }
    }
}

/// [`composed`] as one autodiff node.
fn fused(
    x: Tensor<Autodiff<Flex>, 3>,
    w: Tensor<Autodiff<Flex>, 3>,
    b: Tensor<Autodiff<Flex>, 3>,
    relu: bool,
) -> Tensor<Autodiff<Flex>, 3> {
    let (x, w, b) = (x.into_primitive().tensor(), w.into_primitive().tensor(), b.into_primitive().tensor());
    let rows = x.primitive.shape()[1];
    let forward = |x: FlexTensor, w: FlexTensor, b: FlexTensor| {
        let y = Flex::float_matmul(x, Flex::float_swap_dims(w, 1, 2));
        let y = Flex::float_add(y, Flex::float_repeat_dim(b, 1, rows));
        if relu { Flex::relu(y) } else { y }
    };
    let (x_tracked, w_tracked) = (x.is_tracked(), w.is_tracked());
    let out = match AffineBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (saved_x, saved_w) = (w_tracked.then(|| x.primitive.clone()), x_tracked.then(|| w.primitive.clone()));
            let y = forward(x.primitive, w.primitive, b.primitive);
            prep.finish(Saved { x: saved_x, w: saved_w, out: relu.then(|| y.clone()) }, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive, w.primitive, b.primitive)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    type Ad = Autodiff<Flex>;

    /// The values of a tensor, bit for bit.
    fn bits<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<u32> {
        t.into_data().to_vec::<f32>().expect("f32 values").into_iter().map(f32::to_bits).collect()
    }

    /// The fused node and the composed operations under autodiff: the same output and the same
    /// gradients for x, W and b, to the bit, with and without the ReLU and with W frozen.
    #[test]
    fn fused_layer_equals_the_composed_operations_to_the_bit() {
        let device = Default::default();
        let (models, rows, d_in, d_out) = (3, 37, 16, 11);
        for relu in [true, false] {
            for w_trained in [true, false] {
                let x = Tensor::<Ad, 3>::random([models, rows, d_in], Distribution::Normal(0.0, 1.0), &device);
                let w = Tensor::<Ad, 3>::random([models, d_out, d_in], Distribution::Normal(0.0, 0.5), &device);
                let b = Tensor::<Ad, 3>::random([models, 1, d_out], Distribution::Normal(0.0, 0.5), &device);
                let g = Tensor::<Ad, 3>::random([models, rows, d_out], Distribution::Normal(0.0, 1.0), &device);
                let run = |fuse: bool| {
                    let (x, b) = (x.clone().require_grad(), b.clone().require_grad());
                    let w = if w_trained { w.clone().require_grad() } else { w.clone() };
                    let y = if fuse {
                        stacked_affine(x.clone(), w.clone(), b.clone(), relu)
                    } else {
                        composed(x.clone(), w.clone(), b.clone(), relu)
                    };
                    let grads = (y.clone() * g.clone()).sum().backward();
                    let dw = w.grad(&grads).map(bits);
                    (bits(y), bits(x.grad(&grads).expect("dx")), dw, bits(b.grad(&grads).expect("db")))
                };
                let (fused, reference) = (run(true), run(false));
                assert_eq!(fused.0, reference.0, "output, relu {relu}, W trained {w_trained}");
                assert_eq!(fused.1, reference.1, "dx, relu {relu}, W trained {w_trained}");
                assert_eq!(fused.2, reference.2, "dW, relu {relu}, W trained {w_trained}");
                assert_eq!(fused.3, reference.3, "db, relu {relu}, W trained {w_trained}");
                assert_eq!(fused.2.is_some(), w_trained, "dW exists exactly when W is trained");
            }
        }
    }

    /// Off autodiff the composed path runs: the same values as the fused node's forward.
    #[test]
    fn plain_backend_values_equal_the_fused_forward() {
        let device = Default::default();
        let x = Tensor::<Flex, 3>::random([2, 5, 4], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<Flex, 3>::random([2, 3, 4], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<Flex, 3>::random([2, 1, 3], Distribution::Normal(0.0, 1.0), &device);
        let plain = stacked_affine(x.clone(), w.clone(), b.clone(), true);
        let fused = stacked_affine(Tensor::<Ad, 3>::from_inner(x), Tensor::from_inner(w), Tensor::from_inner(b), true);
        assert_eq!(bits(plain), bits(fused.inner()));
    }
}
