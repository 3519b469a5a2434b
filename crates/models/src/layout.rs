//! Row-major copies of strided tensors where the backend walks strides slowly.
//!
//! burn-flex runs an elementwise op on a contiguous tensor with SIMD, and on a strided view (a
//! transpose, for instance) one element at a time through a strided index. A gradient that comes
//! out of autodiff as a transposed view (the weight of `x · Wᵀ`) then makes every optimizer
//! operation on it a strided walk: Adam takes two per step. One copy into row-major order first
//! costs one walk and leaves the values as they are.

use std::any::Any;

use burn::backend::flex::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

/// `t` in row-major order: on burn-flex (plain or under autodiff's inner backend) a strided
/// view is copied into a tensor of its own; every other tensor, and every other backend's,
/// comes back as it is. The values are unchanged.
pub fn contiguous<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    let t: Box<dyn Any> = Box::new(t);
    match t.downcast::<Tensor<Flex, D>>() {
        Ok(t) => {
            let flex = t.into_primitive().tensor();
            let flex = if flex.is_contiguous() { flex } else { flex.to_contiguous() };
            same_type(Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(flex)))
        }
        // Every other backend, autodiff included (there the view is part of the graph).
        Err(t) => *t.downcast::<Tensor<B, D>>().expect("the tensor given in"),
    }
}

/// `t` as the type it is (a `TypeId` match made it a concrete backend's tensor): the cast back
/// after a `downcast` chose the backend-specific path.
pub(crate) fn same_type<T: 'static, U: 'static>(t: T) -> U {
    *(Box::new(t) as Box<dyn Any>).downcast::<U>().expect("a tensor of the backend it came from")
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::Distribution;

    use super::*;

    /// A transposed view comes back row-major with the same values; a contiguous tensor and an
    /// autodiff tensor come back as they are.
    #[test]
    fn a_transposed_view_is_copied_row_major_with_its_values() {
        let device = Default::default();
        let t = Tensor::<Flex, 2>::random([5, 7], Distribution::Normal(0.0, 1.0), &device).transpose();
        assert!(!t.clone().into_primitive().tensor().is_contiguous(), "a transpose is a strided view");
        let copied = contiguous(t.clone());
        assert!(copied.clone().into_primitive().tensor().is_contiguous());
        assert_eq!(copied.into_data(), t.into_data());
        let tracked = Tensor::<Autodiff<Flex>, 2>::random([3, 4], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(contiguous(tracked.clone().transpose()).into_data(), tracked.transpose().into_data());
    }
}
