//! A frozen linear map's products on the CPU's bf16 unit, as one burn op with its backward.
//!
//! With `--dtype bf16` on the CPU backend (burn-flex), where the CPU has AVX512-BF16, loaders
//! keep each frozen `Linear` layer's weight packed twice ([`Bf16Weight`]): once for
//! the forward `y = x Wᵀ`, once for the input gradient `dx = dy W` (`vdpbf16ps` pairs values along
//! the summed dimension, which differs between the two). Activations, norms, the head and the
//! intervention stay f32; only the products' operands are rounded to bf16, with f32 sums (as
//! PyTorch's CPU autocast does). The weight gets no gradient: the model is frozen.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::backend::flex::{Flex, FlexTensor, Layout};
use burn::tensor::backend::Backend;
use burn::tensor::{Bytes, DType, Shape, Tensor, TensorPrimitive};

use crate::bf16_gemm::{self, PackedB};
use crate::layout::same_type;

/// A `[out, in]` weight rounded to bf16 and packed for the forward and the input gradient.
#[derive(Debug)]
pub struct Bf16Weight {
    /// `Wᵀ` `[in, out]`: `y = x Wᵀ`.
    forward: PackedB,
    /// `W` `[out, in]`: `dx = dy W`.
    backward: PackedB,
}

/// Bytes the packings alive in this process take (modules do not visit them: see
/// [`packed_bytes`]).
static PACKED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes all [`Bf16Weight`]s alive now take, to add to a model's parameter bytes.
pub fn packed_bytes() -> usize {
    PACKED_BYTES.load(Ordering::Relaxed)
}

impl Bf16Weight {
    /// Packs `w` (`[d_out, d_in]`, row-major, PyTorch's layout).
    pub fn new(w: &[f32], d_out: usize, d_in: usize) -> Self {
        assert_eq!(w.len(), d_out * d_in, "bf16 weight: {} values for [{d_out}, {d_in}]", w.len());
        let weight = Bf16Weight {
            forward: PackedB::pack(d_in, d_out, |k, n| w[n * d_in + k]),
            backward: PackedB::pack(d_out, d_in, |k, n| w[k * d_in + n]),
        };
        PACKED_BYTES.fetch_add(weight.bytes(), Ordering::Relaxed);
        weight
    }

    /// Bytes both packings take.
    pub fn bytes(&self) -> usize {
        self.forward.bytes() + self.backward.bytes()
    }

    /// `x Wᵀ` (`x` `[rows, in]`, f32) on burn-flex, plain or under autodiff (its gradient then
    /// flows to `x`). Gives `x` back unchanged on any other backend or dtype.
    pub fn product<B: Backend>(self: &Arc<Self>, x: Tensor<B, 2>) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
        if x.dtype() != DType::F32 {
            return Err(x);
        }
        let x: Box<dyn Any> = Box::new(x);
        let x = match x.downcast::<Tensor<Flex, 2>>() {
            Ok(x) => {
                let y = flex_product(x.into_primitive().tensor(), &self.forward);
                return Ok(same_type(Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(y))));
            }
            Err(x) => x,
        };
        match x.downcast::<Tensor<Autodiff<Flex>, 2>>() {
            Ok(x) => {
                let x: burn::tensor::ops::FloatTensor<Autodiff<Flex>> = x.into_primitive().tensor();
                let y = flex_product(x.primitive.clone(), &self.forward);
                let y = InputGradient(self.clone())
                    .prepare::<NoCheckpointing>([x.node.clone()])
                    .compute_bound()
                    .stateless(y);
                Ok(same_type(Tensor::<Autodiff<Flex>, 2>::from_primitive(TensorPrimitive::Float(y))))
            }
            Err(x) => Err(*x.downcast::<Tensor<B, 2>>().expect("the tensor given in")),
        }
    }
}

impl Drop for Bf16Weight {
    fn drop(&mut self) {
        PACKED_BYTES.fetch_sub(self.bytes(), Ordering::Relaxed);
    }
}

/// Whether products on backend `B` take the bf16 kernel: burn-flex (plain or autodiff) on a CPU
/// with AVX512-BF16.
pub fn runs_on<B: Backend>() -> bool {
    use std::any::TypeId;
    let flex = TypeId::of::<B>() == TypeId::of::<Flex>() || TypeId::of::<B>() == TypeId::of::<Autodiff<Flex>>();
    flex && bf16_gemm::available()
}

/// `x · b` for a `[rows, b.k()]` f32 tensor, as a `[rows, b.n()]` f32 tensor.
fn flex_product(x: FlexTensor, b: &PackedB) -> FlexTensor {
    let rows = x.layout().shape().num_elements() / b.k();
    let y = match x.as_slice::<f32>() {
        Some(values) => bf16_gemm::matmul(values, rows, b),
        None => bf16_gemm::matmul(x.to_contiguous().as_slice::<f32>().expect("a contiguous f32 tensor"), rows, b),
    };
    FlexTensor::new(Bytes::from_elems(y), Layout::contiguous(Shape::new([rows, b.n()])), DType::F32)
}

/// The backward of [`Bf16Weight::product`]: `dx = dy W`, in bf16 products as well.
#[derive(Debug)]
struct InputGradient(Arc<Bf16Weight>);

impl Backward<Flex, 1> for InputGradient {
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<Flex, _>(ops.parents, ops.node, grads, |dy| flex_product(dy, &self.0.backward));
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, TensorData, Tolerance};

    use super::*;

    type Ad = Autodiff<Flex>;

    /// y = x Wᵀ and dL/dx for L = Σ y ⊙ g, through the bf16 op and through f32 burn ops on the
    /// bf16-rounded weight: equal within the bound of the inputs' bf16 rounding.
    #[test]
    fn forward_and_input_gradient_match_f32_on_the_rounded_weight() {
        if !runs_on::<Ad>() {
            eprintln!("this CPU has no AVX512-BF16: the bf16 op is not used here");
            return;
        }
        let device = Default::default();
        let (rows, d_in, d_out) = (19, 70, 45);
        let w = Tensor::<Flex, 2>::random([d_out, d_in], Distribution::Uniform(-1.0, 1.0), &device);
        let w_values: Vec<f32> = w.to_data().to_vec().unwrap();
        let rounded: Vec<f32> = w_values.iter().map(|&v| burn::tensor::bf16::from_f32(v).to_f32()).collect();
        let packed = Arc::new(Bf16Weight::new(&w_values, d_out, d_in));
        let x = Tensor::<Ad, 2>::random([rows, d_in], Distribution::Uniform(-1.0, 1.0), &device);
        let g = Tensor::<Ad, 2>::random([rows, d_out], Distribution::Uniform(-1.0, 1.0), &device);

        let x_ours = x.clone().require_grad();
        let y_ours = packed.product(x_ours.clone()).expect("burn-flex under autodiff takes the bf16 op");
        let dx_ours = (y_ours.clone() * g.clone()).sum().backward();
        let dx_ours = x_ours.grad(&dx_ours).expect("x has a gradient");

        let w_ref = Tensor::<Ad, 2>::from_data(TensorData::new(rounded, [d_out, d_in]), &device);
        let x_ref = x.require_grad();
        let y_ref = x_ref.clone().matmul(w_ref.transpose());
        let dx_ref = (y_ref.clone() * g).sum().backward();
        let y_ref = y_ref.inner();
        let dx_ref = x_ref.grad(&dx_ref).expect("x has a gradient");

        // Rounding x (|x| ≤ 1, 70 terms of |w| ≤ 1) moves each output by at most 2⁻⁹ · 70 · 1.
        let tolerance = Tolerance::absolute(70.0 / 512.0);
        y_ours.to_data().assert_approx_eq::<f32>(&y_ref.to_data(), tolerance);
        dx_ours.to_data().assert_approx_eq::<f32>(&dx_ref.to_data(), tolerance);
        // Not the f32 product itself: the operands really were rounded.
        let diff: f32 = (y_ours.clone().inner() - y_ref.clone()).abs().max().into_scalar();
        assert!(diff > 0.0, "the bf16 op gave exactly the f32 product");
        // Plain burn-flex (no autodiff) takes the same op.
        let y_plain = packed.product(x_ref.inner()).expect("burn-flex takes the bf16 op");
        y_plain.to_data().assert_approx_eq::<f32>(&y_ref.to_data(), tolerance);
    }

    #[test]
    fn another_dtype_is_given_back() {
        let device = Default::default();
        let packed = Arc::new(Bf16Weight::new(&[1.0; 6], 2, 3));
        let x = Tensor::<Flex, 2>::ones([4, 3], &device).cast(burn::tensor::FloatDType::BF16);
        assert!(packed.product(x).is_err(), "a bf16 input must take the ordinary product");
    }
}
