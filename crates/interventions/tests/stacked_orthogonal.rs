//! The stacked matrix exponential and torch's square map (`das-hierarchical-equality`'s stacked
//! rotations) against the same maps on each matrix alone: every slice equal to the bit, with
//! the models needing different numbers of squarings (norms from 0 to about 12), and the
//! gradients through the stack equal to each model's own.

use burn::backend::Autodiff;
use burn::tensor::Tensor;
use ferrovene_interventions::orthogonal::{TorchOrthogonal, expm, expm_stacked, torch_square_q_stacked};
use ferrovene_models::rng::Rng;

type B = Autodiff<ferrovene_models::Cpu>;

/// Four `d × d` matrices scaled to ∞-norms of about 0, 0.5, 3 and 12 (0, 0, 2 and 4 squarings).
fn matrices(d: usize) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(11);
    [0.0f32, 0.5, 3.0, 12.0]
        .iter()
        .map(|&norm| {
            let m: Vec<f32> = (0..d * d).map(|_| rng.normal() as f32).collect();
            let row_sum =
                (0..d).map(|r| m[r * d..(r + 1) * d].iter().map(|x| x.abs()).sum::<f32>()).fold(0.0, f32::max);
            m.iter().map(|x| x * norm / row_sum).collect()
        })
        .collect()
}

fn values<C: burn::tensor::backend::Backend, const D: usize>(t: Tensor<C, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

#[test]
fn each_slice_of_the_stacked_exponential_is_the_exponential_alone() {
    let d = 16;
    let device = Default::default();
    let ms = matrices(d);
    let stack = Tensor::<B, 1>::from_floats(ms.concat().as_slice(), &device).reshape([ms.len(), d, d]);
    let stacked = values(expm_stacked(stack));
    for (i, m) in ms.iter().enumerate() {
        let alone = values(expm(Tensor::<B, 1>::from_floats(m.as_slice(), &device).reshape([d, d])));
        assert_eq!(&stacked[i * d * d..(i + 1) * d * d], alone.as_slice(), "matrix {i}");
    }
}

#[test]
fn the_stacked_square_map_and_its_gradients_are_each_models_own() {
    let d = 16;
    let device = Default::default();
    let xs = matrices(d);
    let x = Tensor::<B, 1>::from_floats(xs.concat().as_slice(), &device).reshape([xs.len(), d, d]).require_grad();
    let q = torch_square_q_stacked(x.clone());
    // A loss that weighs every entry differently, so that no gradient entry is trivially equal.
    let weights: Vec<f32> = (0..xs.len() * d * d).map(|i| ((i * 7919) % 97) as f32 / 97.0).collect();
    let w = Tensor::<B, 1>::from_floats(weights.as_slice(), &device).reshape([xs.len(), d, d]);
    let grads = (q.clone() * w.clone()).sum().backward();
    let stacked_grad = values(x.grad(&grads).unwrap());
    let stacked_q = values(q);
    for (i, xi) in xs.iter().enumerate() {
        // torch's map alone: W = base · Q(X) with base = I.
        let eye: Vec<f32> = (0..d * d).map(|k| (k / d == k % d) as u8 as f32).collect();
        let one = TorchOrthogonal::<B>::new(
            Tensor::<B, 1>::from_floats(eye.as_slice(), &device).reshape([d, d]),
            Tensor::<B, 1>::from_floats(xi.as_slice(), &device).reshape([d, d]),
        );
        let q_alone = one.w();
        let w_alone = w.clone().narrow(0, i, 1).reshape([d, d]);
        let grads_alone = (q_alone.clone() * w_alone).sum().backward();
        let grad_alone = values(one.x.val().grad(&grads_alone).unwrap());
        let slice = i * d * d..(i + 1) * d * d;
        let q_alone = values(q_alone);
        let q_diff = stacked_q[slice.clone()].iter().zip(&q_alone).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        let g_diff = stacked_grad[slice].iter().zip(&grad_alone).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        // base · Q with base = I rounds like Q itself; the gradient passes the same products.
        assert!(q_diff <= 1e-6, "model {i}: Q differs by {q_diff}");
        assert!(g_diff <= 1e-5, "model {i}: the gradient differs by {g_diff}");
    }
}
