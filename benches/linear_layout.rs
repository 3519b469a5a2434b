//! Why `Linear` keeps PyTorch's `[out, in]` weight: one linear map forward (`x Wᵀ`) and its
//! input gradient (`dY W`) on the CPU backend, with the weight stored `[out, in]` (read
//! transposed by the forward) against `[in, out]` (read transposed by the backward), at
//! SmolLM2-135M's shapes and the row counts of a DAS step (16), a ReFT step (47) and a batch
//! of ReFT prompts (480).
//!
//! Run: `cargo bench --bench linear_layout`

use burn::tensor::{Distribution, Tensor};

type B = ferrovene_models::Cpu;

/// Mean milliseconds of `f` over 10 runs after 2 warm-ups.
fn millis(f: impl Fn()) -> f64 {
    for _ in 0..2 {
        f();
    }
    let t = std::time::Instant::now();
    for _ in 0..10 {
        f();
    }
    t.elapsed().as_secs_f64() / 10.0 * 1e3
}

fn main() {
    let device = Default::default();
    let mut totals = [0.0; 2];
    println!("rows  map            [in, out] ms  [out, in] ms");
    for m in [16, 47, 480] {
        for (d_in, d_out, name) in
            [(576, 1536, "gate/up"), (1536, 576, "down"), (576, 576, "q/o"), (576, 192, "k/v"), (576, 49152, "head")]
        {
            let x = Tensor::<B, 2>::random([m, d_in], Distribution::Default, &device);
            let dy = Tensor::<B, 2>::random([m, d_out], Distribution::Default, &device);
            let w_in_out = Tensor::<B, 2>::random([d_in, d_out], Distribution::Default, &device);
            let w_out_in = Tensor::<B, 2>::random([d_out, d_in], Distribution::Default, &device);
            let in_out = millis(|| {
                let _ = x.clone().matmul(w_in_out.clone()).into_data();
                let _ = dy.clone().matmul(w_in_out.clone().transpose()).into_data();
            });
            let out_in = millis(|| {
                let _ = x.clone().matmul(w_out_in.clone().transpose()).into_data();
                let _ = dy.clone().matmul(w_out_in.clone()).into_data();
            });
            totals[0] += in_out;
            totals[1] += out_in;
            println!("{m:>4}  {name:<7} {d_in:>5}→{d_out:<5} {in_out:>9.2} {out_in:>13.2}");
        }
    }
    println!("all   {:>24.1} {:>13.1}", totals[0], totals[1]);
}
