//! The suite sweep's machinery on tiny models: a stack of blocks (several interventions on one
//! cached batch in one forward, going on from the first touched position with the frozen run's
//! keys and values) equals each intervention alone through the plain forward; DAS blocks trained
//! together equal each trained alone; and DAS, the difference of means and the probe recover a
//! variable planted in a tiny GPT-2 where it is causal (random directions do not).

#[path = "common/golden_runs.rs"]
mod golden_runs;

use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use ferrovene_data::TokenizedInput;
use ferrovene_interventions::das::DasLowRank;
use ferrovene_interventions::directions::Method;
use ferrovene_interventions::{Composition, Intervene, Intervention, Orthogonal, Placement, Rng};
use ferrovene_models::{Component, Input, Site, Transformer, forward, gather_positions, load_folder, run_to};
use ferrovene_trainer::experiments::suite::stack::logits;
use ferrovene_trainer::experiments::suite::{DasSettings, Labels, Methods, SuitePair, cache, score_layer, train_das};

use golden_runs::{golden_dir, max_diff, values};

type B = Autodiff<ferrovene_models::Cpu>;
type Device = <B as burn::tensor::backend::BackendTypes>::Device;

/// Pairs of random ids of different lengths (left-padded in a batch), regions at a middle
/// position and at the last token.
fn random_pairs(n: usize, seed: u64) -> Vec<SuitePair> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let mut ids = |len: usize| (0..len).map(|_| 3 + (rng.uniform() * 90.0) as u32).collect::<Vec<u32>>();
            let (lb, ls) = (5 + i % 4, 5 + (i + 1) % 4);
            TokenizedTwo {
                base: TokenizedInput { ids: ids(lb), positions: vec![2 + i % 2, lb - 1] },
                source: TokenizedInput { ids: ids(ls), positions: vec![2 + (i + 1) % 2, ls - 1] },
            }
            .pair(i)
        })
        .collect()
}

struct TokenizedTwo {
    base: TokenizedInput,
    source: TokenizedInput,
}

impl TokenizedTwo {
    fn pair(self, i: usize) -> SuitePair {
        SuitePair {
            base: self.base,
            source: self.source,
            task: [10 + (i % 3) as u32, 20],
            control: [30, 40 + (i % 2) as u32],
            class: i % 2 == 1,
            fit_positions: None,
        }
    }
}

fn input(ids: &[u32], device: &Device) -> Input<B> {
    let n = ids.len();
    let ids = Tensor::from_data(TensorData::new(ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), [1, n]), device);
    Input { mask: Tensor::ones([1, n], device), ids, token_types: None, past: None }
}

fn rank1(seed: u64, width: usize, device: &Device) -> Intervention<B> {
    Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(1, width, &mut Rng::new(seed), device) })
}

/// One pair's next-token logits at its last token with `iv` at `site` and region `r`, by the
/// plain path: the source run to the site alone, the base's whole forward with the intervention
/// as a hook, no padding, no cache.
fn plain_logits<M: Transformer<B>>(
    model: &M,
    p: &SuitePair,
    site: Site,
    r: usize,
    iv: &Intervention<B>,
    device: &Device,
) -> Vec<f32> {
    let at = |pos: usize| Tensor::from_data(TensorData::new(vec![pos as i64], [1, 1]), device);
    let source = gather_positions(
        run_to(model, &input(&p.source.ids, device), site).unwrap().activation,
        at(p.source.positions[r]),
    );
    let placement =
        Placement::new(model.site_info(site).unwrap(), iv, at(p.base.positions[r]), Some(source), vec![]).unwrap();
    let mut hooks = Intervene::new(vec![placement], Composition::Parallel);
    let hidden = forward(model, &input(&p.base.ids, device), &mut hooks);
    let last = model.head(gather_positions(hidden, at(p.base.ids.len() - 1))).unwrap();
    values(last)
}

#[test]
fn a_stack_of_blocks_equals_each_intervention_alone_through_the_plain_forward() {
    let device = Default::default();
    for arch in ["gpt2", "gpt_neox", "llama"] {
        let model = load_folder::<B>(&golden_dir().join("tiny").join(arch), &device)
            .unwrap_or_else(|e| panic!("{arch}: {e}"))
            .model;
        let pairs = random_pairs(6, 3);
        let layer = 1;
        let cached = cache(&model, 0, &pairs, &[0, layer], 6, &device).unwrap();
        let ivs = [rank1(1, model.width(), &device), rank1(2, model.width(), &device)];
        // Whole batch, then a range of rows (a DAS batch inside a frozen chunk).
        for rows in [0..6, 2..5] {
            let stack =
                cached[0].stack(layer, &[(0, Labels::Task), (1, Labels::Control)], rows.clone(), &device).unwrap();
            let got = values(logits(&model, &stack, &ivs).unwrap());
            let v = got.len() / (2 * rows.len());
            for (k, iv) in ivs.iter().enumerate() {
                for (j, p) in pairs[rows.clone()].iter().enumerate() {
                    let row = k * rows.len() + j;
                    let want = plain_logits(&model, p, Site::new(layer, Component::BlockOutput), k, iv, &device);
                    let d = max_diff(&got[row * v..(row + 1) * v], &want);
                    assert!(
                        d < 1e-4,
                        "{arch}: block {k}, pair {}: stacked logits differ from the plain forward by {d}",
                        rows.start + j
                    );
                }
            }
        }
    }
}

#[test]
fn das_blocks_trained_together_equal_each_trained_alone() {
    let device = Default::default();
    let model = load_folder::<B>(&golden_dir().join("tiny/llama"), &device).unwrap().model;
    let pairs = random_pairs(12, 5);
    let cached = cache(&model, 0, &pairs, &[1], 8, &device).unwrap();
    let s = DasSettings { batch_size: 4, epochs: 3, lr: 0.02, warmup: 0.1, seed: 9 };
    let blocks = [(0, Labels::Task), (1, Labels::Control)];
    let together = train_das(&model, &cached, 1, &blocks, s, &device).unwrap();
    for (k, block) in blocks.iter().enumerate() {
        let alone = train_das(&model, &cached, 1, &[*block], s, &device).unwrap();
        let matrix = |iv: &Intervention<B>| values(iv.rotation().unwrap().matrix());
        let start = matrix(&rank1(0, model.width(), &device));
        let (a, b) = (matrix(&together[k]), matrix(&alone[0]));
        let d = max_diff(&a, &b);
        assert!(d < 1e-5, "block {k}: trained together vs alone differ by {d}");
        assert!(max_diff(&a, &start) > 1e-3, "block {k} trained");
    }
}

/// The tiny GPT-2 with a variable planted where it is causal: tokens A and B get embeddings
/// `±v` (unit; tied to the output head), so the residual stream at the last token carries which of
/// them it is along `v`, and the model predicts the same token again.
fn planted_gpt2(a: usize, b: usize, dir: &std::path::Path) -> Vec<f32> {
    let src = golden_dir().join("tiny/gpt2");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut rng = Rng::new(11);
    let v: Vec<f32> = (0..32).map(|_| rng.normal() as f32).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let v: Vec<f32> = v.iter().map(|x| x / norm).collect();
    let mut owned: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (name, view) in st.tensors() {
        let mut data = view.data().to_vec();
        if name == "transformer.wte.weight" {
            let mut w: Vec<f32> = data.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            for j in 0..32 {
                w[a * 32 + j] = v[j];
                w[b * 32 + j] = -v[j];
            }
            data = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        }
        owned.push((name, data, view.shape().to_vec()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    std::fs::write(dir.join("model.safetensors"), safetensors::tensor::serialize(views, None).unwrap()).unwrap();
    v
}

#[test]
fn das_and_the_supervised_directions_recover_a_planted_causal_variable() {
    let device = Default::default();
    let (a, b) = (5u32, 6u32);
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-planted-{}", std::process::id()));
    planted_gpt2(a as usize, b as usize, &dir);
    let model = load_folder::<B>(&dir, &device).unwrap().model;
    // Same prefix, last token A or B; the label is the last token (the model copies it).
    let mut rng = Rng::new(4);
    let mut pairs = Vec::new();
    for i in 0..300 {
        let prefix: Vec<u32> = (0..5).map(|_| 10 + (rng.uniform() * 80.0) as u32).collect();
        let with = |t: u32| TokenizedInput { ids: prefix.iter().copied().chain([t]).collect(), positions: vec![5] };
        let (base, source) = if i % 2 == 0 { (a, b) } else { (b, a) };
        pairs.push(SuitePair {
            base: with(base),
            source: with(source),
            task: [source, base],
            control: [40 + (base == a) as u32, 40 + (base == b) as u32],
            class: base == b,
            fit_positions: None,
        });
    }
    let train = cache(&model, 0, &pairs[..200], &[1], 64, &device).unwrap();
    let test = cache(&model, 0, &pairs[200..], &[1], 64, &device).unwrap();
    let plain: Vec<[f32; 4]> = test.iter().flat_map(|c| c.plain().to_vec()).collect();
    assert!(plain.iter().all(|p| p[1] > p[0]), "the planted model prefers the base's own last token");
    let methods = Methods {
        das: Some(DasSettings { batch_size: 4, epochs: 2, lr: 0.005, warmup: 0.1, seed: 1 }),
        vanilla: true,
        fitted: vec![Method::Probe, Method::Mean, Method::Random],
        seed: 1,
    };
    let scores = score_layer(&model, &train, &test, 1, &[0], &methods, &device).unwrap();
    let by = |m: &str| scores.iter().find(|(_, s)| s.method == m).unwrap().1.clone();
    for m in ["das", "vanilla", "probe", "mean"] {
        let s = by(m);
        assert!(s.task.iia >= 0.9, "{m} finds the planted variable: IIA {} (odds-ratio {})", s.task.iia, s.task.odds);
        assert!(s.task.odds > 1.0, "{m}: odds-ratio {}", s.task.odds);
    }
    assert!(by("random").task.iia < 0.3, "a random direction does not carry it: IIA {}", by("random").task.iia);
    std::fs::remove_dir_all(&dir).ok();
}
