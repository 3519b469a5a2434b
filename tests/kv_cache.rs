//! The KV cache: feeding a sequence in pieces, each continuing the cache of the earlier ones,
//! gives the logits of the whole sequence run at once — for every decoder (rotary with grouped
//! heads, learned positions, GPT-NeoX's partial rotary, sliding windows past their width), for
//! left-padded batches, and with an intervention hook reading only the new positions.

mod common;

use common::*;
use ferrovene_models::{Component, FnHook, Input, KvCache, NoHooks, Site, Transformer, forward, load_folder};

const VOCAB: usize = 97;

/// Every decoder of tests/golden/tiny; Gemma 2 and 3 and Mistral attend through 4-token windows,
/// which the 8- and 9-token sequences below pass.
const DECODERS: [&str; 9] = [
    "tiny/llama",
    "tiny/gpt2",
    "tiny/gpt_neox",
    "tiny/gemma2",
    "tiny/gemma3",
    "tiny/qwen3",
    "tiny/phi3",
    "tiny/olmo2",
    "tiny/mistral",
];

/// Logits `[positions][vocab]` of `row` fed in pieces ending at `cuts`, one cache throughout.
fn in_pieces<M: Transformer<B>>(model: &M, row: &[u32], cuts: &[usize]) -> Vec<f32> {
    let dev = Default::default();
    let cache = KvCache::<B>::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts {
        let input = Input::<B>::from_ids(&[row[start..end].to_vec()], &dev).continuing(&cache);
        out.extend(to_vec(model.head(forward(model, &input, &mut NoHooks)).unwrap()));
        start = end;
        assert_eq!(cache.len(), end, "the cache holds every position fed");
    }
    out
}

#[test]
fn cached_pieces_equal_the_whole_sequence() {
    for name in DECODERS {
        let model = load_folder::<B>(&golden(name), &Default::default()).unwrap().model;
        let row = vec![5u32, 17, 42, 8, 61, 3, 90, 11];
        let whole = logits_of(&model, std::slice::from_ref(&row));
        // Prompt of 3, then one token at a time; and prompt of 5, then 3 at once.
        for cuts in [vec![3, 4, 5, 6, 7, 8], vec![5, 8]] {
            let got = in_pieces(&model, &row, &cuts);
            let d = max_abs_diff(&got, &whole);
            assert!(d < 1e-5, "{name}, cuts {cuts:?}: cached logits differ by {d}");
        }
        // A wrong cache (positions fed twice) must change the logits: the test can fail.
        let cache = KvCache::<B>::new();
        let dev = Default::default();
        forward(&model, &Input::<B>::from_ids(&[row[..4].to_vec()], &dev).continuing(&cache), &mut NoHooks);
        let twice = to_vec(
            model
                .head(forward(
                    &model,
                    &Input::<B>::from_ids(&[row[..4].to_vec()], &dev).continuing(&cache),
                    &mut NoHooks,
                ))
                .unwrap(),
        );
        assert!(max_abs_diff(&twice, &whole[..4 * VOCAB]) > 1e-3, "{name}: feeding a prompt twice changed nothing");
    }
}

#[test]
fn left_padded_batches_continue_their_cache() {
    for name in DECODERS {
        let model = load_folder::<B>(&golden(name), &Default::default()).unwrap().model;
        let dev = Default::default();
        // Two prompts of different lengths, left-padded, then two more tokens each.
        let (long, short) = (vec![1u32, 2, 3, 4, 5, 6, 7], vec![5u32, 17, 42, 8]);
        let (long_next, short_next) = ([9u32, 10], [33u32, 34]);
        let cache = KvCache::<B>::new();
        forward(
            &model,
            &Input::<B>::padded(&[long.clone(), short.clone()], 0, true, &dev).continuing(&cache),
            &mut NoHooks,
        );
        let next = Input::<B>::from_ids(&[long_next.to_vec(), short_next.to_vec()], &dev).continuing(&cache);
        let got = to_vec(model.head(forward(&model, &next, &mut NoHooks)).unwrap());
        assert_eq!(cache.len(), 9);
        for (r, (prompt, tail)) in [(&long, long_next), (&short, short_next)].into_iter().enumerate() {
            let mut full = prompt.clone();
            full.extend(tail);
            let alone = logits_of(&model, &[full.clone()]);
            let d = max_abs_diff(&got[r * 2 * VOCAB..(r + 1) * 2 * VOCAB], &alone[(full.len() - 2) * VOCAB..]);
            assert!(d < 1e-5, "{name}: row {r} after a left-padded prompt differs by {d}");
        }
    }
}

#[test]
fn hooks_on_a_cached_step_see_only_the_new_positions() {
    let model = load_folder::<B>(&golden("tiny/llama"), &Default::default()).unwrap().model;
    let dev = Default::default();
    let row = vec![5u32, 17, 42, 8, 61];
    let site = Site::new(1, Component::BlockOutput);
    // Adding a vector at the last position: once over the whole sequence, once on a cached step.
    let add = |_: Site, h: burn::tensor::Tensor<B, 3>| {
        let [b, s, w] = h.dims();
        let bump = burn::tensor::Tensor::<B, 3>::ones([b, 1, w], &h.device()) * 0.5;
        let zeros = burn::tensor::Tensor::<B, 3>::zeros([b, s - 1, w], &h.device());
        h + burn::tensor::Tensor::cat(vec![zeros, bump], 1)
    };
    let whole = to_vec(
        model
            .head(forward(
                &model,
                &Input::<B>::from_ids(std::slice::from_ref(&row), &dev),
                &mut FnHook::new([site], add),
            ))
            .unwrap(),
    );
    let cache = KvCache::<B>::new();
    forward(&model, &Input::<B>::from_ids(&[row[..4].to_vec()], &dev).continuing(&cache), &mut NoHooks);
    let step = Input::<B>::from_ids(&[row[4..].to_vec()], &dev).continuing(&cache);
    let got = to_vec(model.head(forward(&model, &step, &mut FnHook::new([site], add))).unwrap());
    let d = max_abs_diff(&got, &whole[4 * VOCAB..]);
    assert!(d < 1e-5, "a hook on a cached step differs from the same hook on the whole sequence by {d}");
    let plain = logits_of(&model, &[row]);
    assert!(max_abs_diff(&got, &plain[4 * VOCAB..]) > 1e-4, "the hook changed nothing");
}
