//! Attention and rotary embeddings as written for speed (grouped heads by broadcasting, rotary as
//! `x ⊙ cos + (x P) ⊙ sin`) against the textbook forms they replace (key/value heads copied per
//! query head; rotate-half by slicing and concatenating): equal outputs and equal gradients.

use burn::backend::Autodiff;
use burn::tensor::{Distribution, Int, Tensor, TensorData, activation::softmax};
use ferrovene_models::layers::{Rotary, attend, attention_bias};

type B = Autodiff<ferrovene_models::Cpu>;

fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
    <ferrovene_models::Cpu as burn::tensor::backend::Backend>::seed(&Default::default(), seed);
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default()).require_grad()
}

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec().expect("f32")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The textbook form: `[b, heads, seq, d]` queries, each key/value head repeated `groups` times.
fn attend_textbook(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, seq, heads, d] = q.dims();
    let [_, kv_heads, total, _] = k.dims();
    let groups = heads / kv_heads;
    let repeat = |t: Tensor<B, 4>| {
        t.unsqueeze_dim::<5>(2).expand([batch, kv_heads, groups, total, d]).reshape([batch, heads, total, d])
    };
    let q = q.swap_dims(1, 2);
    let scores = q.matmul(repeat(k).swap_dims(2, 3)) / (d as f64).sqrt() + bias;
    softmax(scores, 3).matmul(repeat(v)).swap_dims(1, 2).reshape([batch, seq, heads * d])
}

#[test]
fn grouped_attention_equals_repeated_heads_with_gradients() {
    // 6 query heads on 2 key/value heads, a left-padded row, two cached positions before 3 new.
    let (batch, seq, total, heads, kv_heads, d) = (2, 3, 5, 6, 2, 8);
    let mask = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![1i64, 1, 1, 1, 1, 0, 1, 1, 1, 1], [batch, total]),
        &Default::default(),
    );
    let bias = attention_bias(mask, seq, true, burn::tensor::DType::F32);
    let (q, k, v) = (
        random([batch, seq, heads, d], 1),
        random([batch, kv_heads, total, d], 2),
        random([batch, kv_heads, total, d], 3),
    );
    let weights = random([batch, seq, heads * d], 4).detach();
    let bias5 = bias.clone().unsqueeze_dim::<5>(1).repeat_dim(1, kv_heads).repeat_dim(2, heads / kv_heads);
    let fast = attend(q.clone(), k.clone(), v.clone(), bias5);
    let slow = attend_textbook(q.clone(), k.clone(), v.clone(), bias);
    assert!(max_diff(&values(fast.clone()), &values(slow.clone())) < 1e-5, "outputs differ");
    let g_fast = (fast * weights.clone()).sum().backward();
    let g_slow = (slow * weights).sum().backward();
    for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
        let (a, b) = (t.grad(&g_fast).expect("a gradient"), t.grad(&g_slow).expect("a gradient"));
        let diff = max_diff(&a.into_data().to_vec::<f32>().unwrap(), &b.into_data().to_vec::<f32>().unwrap());
        assert!(diff < 1e-5, "gradient of {name} differs by {diff}");
    }
}

/// The textbook rotate-half: `x ⊙ cos + cat(−x₂, x₁) ⊙ sin` on the first `r` dims, the rest passed.
fn rotary_textbook(x: Tensor<B, 4>, positions: &[i64], inv_freq: &[f32]) -> Tensor<B, 4> {
    let [batch, seq, _, d] = x.dims();
    let r = 2 * inv_freq.len();
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for &p in positions {
        for i in 0..r {
            let angle = p as f32 * inv_freq[i % inv_freq.len()];
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let dev = Default::default();
    let cos = Tensor::<B, 4>::from_data(TensorData::new(cos, [batch, seq, 1, r]), &dev);
    let sin = Tensor::<B, 4>::from_data(TensorData::new(sin, [batch, seq, 1, r]), &dev);
    let rot = x.clone().narrow(3, 0, r);
    let (x1, x2) = (rot.clone().narrow(3, 0, r / 2), rot.clone().narrow(3, r / 2, r / 2));
    let out = rot * cos + Tensor::cat(vec![x2.neg(), x1], 3) * sin;
    if r == d { out } else { Tensor::cat(vec![out, x.narrow(3, r, d - r)], 3) }
}

#[test]
fn rotary_equals_slicing_and_concatenating_with_gradients() {
    // Full rotary (Llama) and partial rotary (GPT-NeoX: 4 of 8 dims), left-padded positions.
    let positions = [0i64, 0, 1, 2, 0, 1, 2, 3];
    for inv_freq in [vec![1.0f32, 0.1, 0.01, 0.001], vec![1.0, 0.01]] {
        let (batch, seq, heads, d) = (2, 4, 3, 8);
        let pos =
            Tensor::<B, 2, Int>::from_data(TensorData::new(positions.to_vec(), [batch, seq]), &Default::default());
        let rotary = Rotary::new(pos, &inv_freq, d, burn::tensor::DType::F32);
        let x = random([batch, seq, heads, d], 5);
        let weights = random([batch, seq, heads, d], 6).detach();
        let fast = rotary.apply(x.clone());
        let slow = rotary_textbook(x.clone(), &positions, &inv_freq);
        assert!(
            max_diff(&values(fast.clone()), &values(slow.clone())) < 1e-6,
            "rotary outputs differ (rotary dims {})",
            2 * inv_freq.len()
        );
        let (g_fast, g_slow) = ((fast * weights.clone()).sum().backward(), (slow * weights).sum().backward());
        let (a, b) = (x.grad(&g_fast).expect("a gradient"), x.grad(&g_slow).expect("a gradient"));
        assert!(
            max_diff(&a.into_data().to_vec::<f32>().unwrap(), &b.into_data().to_vec::<f32>().unwrap()) < 1e-6,
            "rotary gradients differ"
        );
    }
}
