//! The fast DAS path — frozen runs cached, the positions before the first intervened one kept
//! as keys and values (`das::prepare`'s shared base runs), only the later positions recomputed at
//! each step — equals the plain path (a full forward with the intervention as a hook) within
//! 1e-5, on logits and on the intervention's gradient: for the tiny GPT-2, GPT-NeoX and Llama,
//! at a block output, a block input and the embeddings, on left-padded batches of different
//! lengths with two intervened positions per example, including batches assembled from bases
//! and sources that were run (once each) in other groups. The training loss (`das::loss`, taken at
//! the head without the logits) equals the plain path's cross-entropy, value and gradient.

use burn::backend::Autodiff;
use burn::tensor::{Int, Tensor, TensorData, loss::cross_entropy_with_logits};
use ferrovene_data::{LabelId, TokenizedExample, TokenizedInput};
use ferrovene_interventions::das::DasLowRank;
use ferrovene_interventions::{Intervention, Orthogonal, Rng};
use ferrovene_models::{Component, NoHooks, Site, Transformer, forward, gather_positions, load_folder};
use ferrovene_trainer::objectives::das::{logits, logits_plain, loss as das_loss, prepare};

type B = Autodiff<ferrovene_models::Cpu>;

fn tiny(arch: &str) -> std::path::PathBuf {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/tiny").join(arch);
    assert!(
        p.join("config.json").exists(),
        "golden files missing: this test reads tests/golden/tiny/{arch} (copied from ../shared/golden) ({})",
        p.display()
    );
    p
}

/// Pairs of different lengths (so the batch is left-padded), intervening at two positions that
/// start at 2 or later, so every row has an unchanged prefix. The last two pairs reuse the
/// first and third pairs' bases and sources (bases and sources are run once per distinct one).
fn pairs() -> Vec<TokenizedExample> {
    let mut rng = Rng::new(7);
    let mut ids = |n: usize| (0..n).map(|_| 3 + (rng.uniform() * 90.0) as u32).collect::<Vec<u32>>();
    let mut pairs: Vec<TokenizedExample> =
        [(7, 6, [3, 5], [2, 4]), (9, 8, [4, 7], [3, 6]), (8, 9, [2, 6], [5, 7]), (10, 7, [5, 8], [2, 3])]
            .into_iter()
            .enumerate()
            .map(|(i, (nb, ns, pb, ps))| TokenizedExample::Pair {
                base: TokenizedInput { ids: ids(nb), positions: pb.to_vec() },
                sources: vec![TokenizedInput { ids: ids(ns), positions: ps.to_vec() }],
                base_label: None,
                label: LabelId::Token(10 + i as u32),
            })
            .collect();
    let (TokenizedExample::Pair { base: b0, .. }, TokenizedExample::Pair { base: b2, sources: s2, .. }) =
        (pairs[0].clone(), pairs[2].clone())
    else {
        unreachable!()
    };
    pairs.push(TokenizedExample::Pair { base: b0, sources: s2, base_label: None, label: LabelId::Token(20) });
    let TokenizedExample::Pair { sources: s1, .. } = pairs[1].clone() else { unreachable!() };
    pairs.push(TokenizedExample::Pair { base: b2, sources: s1, base_label: None, label: LabelId::Token(21) });
    pairs
}

fn values<const D: usize>(t: Tensor<ferrovene_models::Cpu, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn cached_prefix_equals_the_plain_forward_on_logits_and_gradients() {
    let device = Default::default();
    for arch in ["gpt2", "gpt_neox", "llama"] {
        let loaded = load_folder::<B>(&tiny(arch), &device).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert!(loaded.model.head_map().is_some(), "{arch}: the head is a plain map, so the loss takes the one pass");
        let examples = pairs();
        let refs: Vec<&TokenizedExample> = examples.iter().collect();
        for site in [
            Site::new(1, Component::BlockOutput),
            Site::new(1, Component::BlockInput),
            Site::new(0, Component::Embeddings),
        ] {
            let name = format!("{arch} at {site}");
            // One batch of the first four pairs, then batches of three (whose bases and sources
            // were run in other groups than the batch's).
            let one = prepare(&loaded.model, site, &refs[..4], 0, 4, &device).unwrap();
            let threes = prepare(&loaded.model, site, &refs, 0, 3, &device).unwrap();
            // The first four bases are left-padded to 10 tokens; the earliest intervened
            // position after padding is 4 (10 − 8 + 2), so positions 0..4 are cached.
            let prefix =
                one[0].prefix.as_ref().unwrap_or_else(|| panic!("{name}: a causal model's batch caches its prefix"));
            assert_eq!(prefix.start, 4, "{name}: the prefix ends at the first intervened position");
            assert_eq!(one[0].checkpoint.input.dims()[1], 6, "{name}: the step recomputes positions 4..10 only");
            for (i, batch) in one.iter().chain(&threes).enumerate() {
                let name = format!("{name}, batch {i}");
                let prefix =
                    batch.prefix.as_ref().unwrap_or_else(|| panic!("{name}: a causal model's batch caches its prefix"));
                let iv = Intervention::DasLowRank(DasLowRank {
                    rotation: Orthogonal::random(4, 32, &mut Rng::new(3), &device),
                });
                let labels = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(batch.labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [batch.labels.len()]),
                    &device,
                );
                let rotation_grad = |loss: Tensor<B, 1>, logits: Option<Vec<f32>>| {
                    let value = values(loss.clone().inner())[0];
                    let grads = loss.backward();
                    let Some(Orthogonal::Torch(t)) = iv.rotation() else { panic!("a torch rotation") };
                    (logits.unwrap_or_default(), values(t.x.grad(&grads).expect("X has a gradient")), value)
                };
                let loss_and_grad = |logits: Tensor<B, 2>| {
                    let v = logits.dims()[1];
                    let loss = cross_entropy_with_logits(logits.clone(), labels.clone().one_hot::<2>(v).float());
                    rotation_grad(loss, Some(values(logits.inner())))
                };
                let (fast, fast_grad, _) = loss_and_grad(logits(&loaded.model, batch, Some(&iv)).unwrap());
                let (plain, plain_grad, plain_loss) = loss_and_grad(logits_plain(&loaded.model, batch, &iv).unwrap());
                let d = max_diff(&fast, &plain);
                assert!(d < 1e-5, "{name}: logits differ by {d}");
                let g = max_diff(&fast_grad, &plain_grad);
                let scale = plain_grad.iter().fold(0f32, |m, x| m.max(x.abs()));
                assert!(scale > 0.0 && g < 1e-5, "{name}: gradients differ by {g} (largest entry {scale})");
                // The training loss, taken at the head without the logits (one pass over the head),
                // equals the plain path's cross-entropy, in value and gradient.
                let (_, loss_grad, loss) = rotation_grad(das_loss(&loaded.model, batch, &iv).unwrap(), None);
                assert!((loss - plain_loss).abs() < 1e-5, "{name}: training loss {loss} against {plain_loss}");
                let g = max_diff(&loss_grad, &plain_grad);
                assert!(g < 1e-5, "{name}: the training loss's gradient differs by {g} (largest entry {scale})");

                // Without an intervention too (the no-intervention control): a plain forward of the
                // whole base input, the head at the label positions.
                let none = values(logits(&loaded.model, batch, None).unwrap().inner());
                let hidden = forward(&loaded.model, &prefix.input, &mut NoHooks);
                let at = gather_positions(hidden, batch.label_positions.clone() + prefix.start as i64);
                let all = values(loaded.model.head(at).unwrap().inner());
                let d = max_diff(&none, &all);
                assert!(d < 1e-5, "{name}: logits without intervention differ by {d}");
            }
        }
    }
}
