//! The next-token loss at the head and its gradient in the hidden state, at SmolLM2-135M's head
//! (576 → 49,152, f32) and the rows of a DAS step (16 pairs) and of a larger batch (64): burn's
//! ops (logits, log-softmax, gather, backward) against the one-pass fused loss
//! (`ferrovene_models::head_loss`), under autodiff on the CPU backend.
//!
//! Run: `RAYON_NUM_THREADS=2 cargo bench --bench head_loss`. Prints the median of 15 runs after
//! 3 warm-ups.

use burn::backend::Autodiff;
use burn::module::Param;
use burn::tensor::{Distribution, Tensor};
use ferrovene_models::head_loss::{composed_nll, next_token_nll};
use ferrovene_models::layers::Linear;

type B = Autodiff<ferrovene_models::Cpu>;

mod common;

/// Median milliseconds of `f` over 15 runs after 3 warm-ups.
fn millis(f: impl Fn()) -> f64 {
    common::median_millis(3, 15, f)
}

fn main() {
    let device = Default::default();
    let (width, vocab) = (576, 49_152);
    let head = Linear::<B> {
        weight: Param::from_tensor(Tensor::random([vocab, width], Distribution::Uniform(-0.1, 0.1), &device))
            .set_require_grad(false),
        bias: None,
        bf16: None,
    };
    println!("rows  burn's ops ms  fused ms  ratio");
    for rows in [16, 64] {
        let x = Tensor::<B, 2>::random([rows, width], Distribution::Default, &device);
        let labels: Vec<usize> = (0..rows).map(|i| (i * 7919) % vocab).collect();
        let run = |fused: bool| {
            let x = x.clone().require_grad();
            let loss =
                if fused { next_token_nll(x.clone(), &head, &labels) } else { composed_nll(x.clone(), &head, &labels) };
            let grads = loss.mean().backward();
            let _ = x.grad(&grads).expect("a gradient").into_data();
        };
        let (composed, fused) = (millis(|| run(false)), millis(|| run(true)));
        println!("{rows:4}  {composed:13.2}  {fused:8.2}  {:5.2}x", composed / fused);
    }
}
