//! Cost per optimiser step of the orthogonal parametrisations: materialising `R` and
//! back-propagating through it, on the CPU backend with autodiff.
//!
//! Run: `cargo bench --bench orthogonal`

use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::Tensor;
use ferrovene_interventions::orthogonal::orthogonality_error;
use ferrovene_interventions::{Orthogonal, Rng};

type AD = Autodiff<ferrovene_models::Cpu>;

fn main() {
    let device = Default::default();
    for (k, d) in [(1, 576), (16, 576), (16, 16), (576, 576)] {
        let rotation = Orthogonal::<AD>::random(k, d, &mut Rng::new(1), &device);
        let weights = Rng::new(2).normal_tensor::<AD, 2>([k, d], &device);
        let step = || {
            let r = rotation.matrix();
            let loss: Tensor<AD, 1> = (r * weights.clone()).sum();
            loss.backward();
        };
        step();
        let runs = if k * d > 100_000 { 5 } else { 50 };
        let t = Instant::now();
        for _ in 0..runs {
            step();
        }
        let per = t.elapsed().as_secs_f64() / runs as f64;
        let kind = if k < d { "Householder" } else { "matrix exponential" };
        let err = orthogonality_error(rotation.matrix().inner());
        println!(
            "{kind:>18}  k = {k:>3}, d = {d:>3}: {:>8.3} ms per forward + backward   max|RRᵀ − I| = {err:.1e}",
            per * 1e3
        );
    }
}
