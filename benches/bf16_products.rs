//! The frozen linear maps' products in bf16 (AVX512-BF16, `ferrovene_models::bf16_gemm`) against
//! f32 (burn-flex's `gemm`): one map forward (`x Wᵀ`) and its input gradient (`dY W`), at
//! SmolLM2-135M's shapes and the row counts of a DAS step (16 pairs of ~20 tokens: 320), a ReFT
//! step (47) and a batch of ReFT prompts (480).
//!
//! Run: `cargo bench --bench bf16_products`

use burn::tensor::{Distribution, Tensor};
use ferrovene_models::bf16_gemm::{self, PackedB};

type B = ferrovene_models::Cpu;

mod common;

/// Median milliseconds of `f` over 15 runs after 3 warm-ups.
fn millis(f: impl Fn()) -> f64 {
    common::median_millis(3, 15, f)
}

fn main() {
    if !bf16_gemm::available() {
        println!("this CPU has no AVX512-BF16: the bf16 column is the scalar fallback");
    }
    let device = Default::default();
    let mut totals = [0.0; 2];
    println!("rows  map                 f32 ms   bf16 ms   f32/bf16");
    for m in [47, 320, 480] {
        for (d_in, d_out, name) in [(576, 1536, "gate/up"), (1536, 576, "down"), (576, 576, "q/o"), (576, 192, "k/v")] {
            let x = Tensor::<B, 2>::random([m, d_in], Distribution::Default, &device);
            let dy = Tensor::<B, 2>::random([m, d_out], Distribution::Default, &device);
            let w = Tensor::<B, 2>::random([d_out, d_in], Distribution::Default, &device);
            let f32_ms = millis(|| {
                let _ = x.clone().matmul(w.clone().transpose()).into_data();
                let _ = dy.clone().matmul(w.clone()).into_data();
            });
            let (xv, dyv, wv) = (values(&x), values(&dy), values(&w));
            let forward = PackedB::pack(d_in, d_out, |k, n| wv[n * d_in + k]);
            let backward = PackedB::pack(d_out, d_in, |k, n| wv[k * d_in + n]);
            let bf16_ms = millis(|| {
                std::hint::black_box(bf16_gemm::matmul(&xv, m, &forward));
                std::hint::black_box(bf16_gemm::matmul(&dyv, m, &backward));
            });
            totals[0] += f32_ms;
            totals[1] += bf16_ms;
            println!("{m:>4}  {name:<7} {d_in:>5}→{d_out:<5} {f32_ms:>8.2} {bf16_ms:>9.2} {:>9.2}×", f32_ms / bf16_ms);
        }
    }
    println!("all   {:>27.1} {:>9.1} {:>9.2}×", totals[0], totals[1], totals[0] / totals[1]);
}

fn values(t: &Tensor<B, 2>) -> Vec<f32> {
    t.to_data().to_vec().expect("f32 tensor")
}
