//! The CPU's matrix products, whichever kernels run: burn-flex's f32 product (through gemm:
//! AVX2/FMA kernels, or with the `avx512` feature AVX-512 ones where the CPU has them) against
//! an f64 reference, at the shapes a SmolLM2 step multiplies.
//!
//! `scripts/check-cpu-fallback` builds this test with `avx512` and runs it natively (AVX-512
//! kernels on an AVX-512 CPU) and a second time under valgrind, which emulates no
//! AVX-512: there the detection must say so and the products must still be right, which is the
//! fallback a CPU without AVX-512 takes (a binary that used AVX-512 unconditionally would stop
//! there on an illegal instruction).

use burn::tensor::{Tensor, TensorData};
use ferrovene_models::Cpu;
use ferrovene_models::cpu_features::CpuFeatures;
use ferrovene_models::rng::Rng;

/// `a · b` in f64, row-major `[m, k] · [k, n]`.
fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p] as f64;
            for j in 0..n {
                out[i * n + j] += x * b[p * n + j] as f64;
            }
        }
    }
    out
}

#[test]
fn f32_products_match_an_f64_reference_with_the_kernels_this_cpu_has() {
    let features = CpuFeatures::detect();
    // Read by scripts/check-cpu-fallback.
    println!("cpu features: {features:?}; f32 kernels: {}", features.f32_kernels());
    let device = Default::default();
    let mut rng = Rng::new(3);
    // Rows of a DAS step (32), SmolLM2's width (576) and MLP width (1536); one odd shape.
    for (m, k, n) in [(32, 576, 1536), (32, 1536, 576), (17, 45, 31)] {
        let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
        let ta = Tensor::<Cpu, 2>::from_data(TensorData::new(a.clone(), [m, k]), &device);
        let tb = Tensor::<Cpu, 2>::from_data(TensorData::new(b.clone(), [k, n]), &device);
        let got: Vec<f32> = ta.matmul(tb).into_data().to_vec().unwrap();
        let want = reference(&a, &b, m, k, n);
        // Each entry is a sum of k products of unit normals: f32 rounding is about
        // √k · 2⁻²⁴ · |terms|, far below 1e-4 · √k.
        let bound = 1e-4 * (k as f64).sqrt();
        let worst = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
        assert!(worst <= bound, "[{m}, {k}] · [{k}, {n}]: largest error {worst:e} over {bound:e}");
    }
}
