//! The precision of frozen models. A model may hold its weights and compute in f16 or bf16 (half
//! the memory, what makes 1B–8B models fit one GPU) while everything outside it — the activations
//! hooks see, the logits, the interventions and their training — stays f32: the model casts at
//! its boundaries (sites, head, checkpoints), and computes norms and softmax in f32 inside.
//!
//! On the CPU backend (burn-flex), bf16 means something narrower where the CPU has AVX512-BF16
//! ([`FrozenStorage::Bf16Products`]): only the frozen linear maps' products take bf16 operands
//! (with f32 sums, [`crate::bf16_linear`]); every other tensor stays f32, because burn-flex runs
//! its other bf16 ops through f32 conversions, slower than f32 itself. Without the instructions,
//! or with [`set_bf16_kernel`]`(false)`, bf16 on the CPU keeps the whole model in bf16 (the
//! fallback: correct, and about 3× slower than f32).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{DType, FloatDType, Tensor, backend::Backend};

/// The dtype loaders give new frozen models (0 = f32, 1 = f16, 2 = bf16).
static FROZEN: AtomicU8 = AtomicU8::new(0);

/// Sets the dtype that loaders give the weights of models loaded from now on (f32 unless set).
pub fn set_frozen_dtype(dtype: FloatDType) {
    FROZEN.store(
        match dtype {
            FloatDType::F16 => 1,
            FloatDType::BF16 => 2,
            _ => 0,
        },
        Ordering::Relaxed,
    );
}

/// The dtype loaders give frozen weights.
pub fn frozen_dtype() -> FloatDType {
    match FROZEN.load(Ordering::Relaxed) {
        1 => FloatDType::F16,
        2 => FloatDType::BF16,
        _ => FloatDType::F32,
    }
}

/// Whether loaders may use the CPU's bf16 kernel (true unless [`set_bf16_kernel`] said no).
static BF16_KERNEL: AtomicBool = AtomicBool::new(true);

/// Allows (the default) or forbids the bf16 kernel for models loaded from now on; forbidden,
/// bf16 on the CPU takes the fallback (to check one against the other).
pub fn set_bf16_kernel(allowed: bool) {
    BF16_KERNEL.store(allowed, Ordering::Relaxed);
}

/// How loaders store a frozen model's weights on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrozenStorage {
    /// Every weight in this dtype, and the model computes in it.
    Plain(FloatDType),
    /// Linear maps' weights packed in bf16 for the CPU's bf16 kernel, everything else f32.
    Bf16Products,
}

impl FrozenStorage {
    /// How models loaded now on backend `B` store their weights: [`FrozenStorage::Bf16Products`]
    /// for bf16 on burn-flex where the CPU has AVX512-BF16 and the kernel is allowed, else the
    /// frozen dtype as it is.
    pub fn for_backend<B: Backend>() -> Self {
        let dtype = frozen_dtype();
        if dtype == FloatDType::BF16 && BF16_KERNEL.load(Ordering::Relaxed) && crate::bf16_linear::runs_on::<B>() {
            FrozenStorage::Bf16Products
        } else {
            FrozenStorage::Plain(dtype)
        }
    }

    /// The dtype of the weights that are not packed (and of the activations).
    pub fn tensor_dtype(self) -> FloatDType {
        match self {
            FrozenStorage::Plain(dtype) => dtype,
            FrozenStorage::Bf16Products => FloatDType::F32,
        }
    }

    /// What the report calls it: `bf16 products (AVX512-BF16)`, or the dtype.
    pub fn describe(self) -> String {
        match self {
            FrozenStorage::Plain(dtype) => format!("{:?}", DType::from(dtype)).to_lowercase(),
            FrozenStorage::Bf16Products => "bf16 products (AVX512-BF16), f32 elsewhere".into(),
        }
    }
}

/// `t` in f32 (unchanged if it already is).
pub fn to_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    to_dtype(t, DType::F32)
}

/// `t` in `dtype` (unchanged if it already is).
pub fn to_dtype<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype { t } else { t.cast(FloatDType::from(dtype)) }
}

/// The large negative number that blocks attention in `dtype`: half its lowest value, so that
/// adding a score to it stays finite.
pub fn blocked_score(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => -65504.0 / 2.0,
        _ => f32::MIN / 2.0,
    }
}

/// Every float parameter of `module` cast to `dtype` (a frozen model loaded in f32 and wanted in
/// half precision; loaders cast tensor by tensor instead, see [`set_frozen_dtype`]).
pub fn cast_module<B: Backend, M: Module<B>>(module: M, dtype: FloatDType) -> M {
    struct Caster(FloatDType);
    impl<B: Backend> ModuleMapper<B> for Caster {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let dtype = self.0;
            param.map(|t| to_dtype(t, dtype.into()))
        }
    }
    module.map(&mut Caster(dtype))
}

/// Bytes the float parameters of `module` take (a tensor shared by two parameters counted twice).
pub fn parameter_bytes<B: Backend, M: Module<B>>(module: &M) -> u64 {
    struct Bytes(u64);
    impl<B: Backend> ModuleVisitor<B> for Bytes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            self.0 += (t.shape().num_elements() * t.dtype().size()) as u64;
        }
    }
    let mut v = Bytes(0);
    module.visit(&mut v);
    v.0
}
