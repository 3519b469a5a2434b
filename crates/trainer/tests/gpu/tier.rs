// The GPU tier's tests, included once per GPU backend by gpu.rs with `Gpu` set to it.

use burn::backend::Autodiff;
use burn::tensor::FloatDType;
use burn::tensor::backend::Backend;
use crate::golden_runs::{batch, check, full_das, loreft, low_rank_das, max_diff, save_export, tiny_gpt2, torch, values, Golden};
use crate::models_common::{read_st, reference_ids};
use ferrovene_data::{LabelId, TokenizedExample, TokenizedInput};
use ferrovene_interventions::das::DasLowRank;
use ferrovene_interventions::{Intervention as Iv, Orthogonal};
use ferrovene_models::precision::cast_module;
use ferrovene_models::rng::Rng;
use ferrovene_models::{AnyModel, Component, Site};
use ferrovene_models::{forward, load_folder, Input, NoHooks, Transformer};
use ferrovene_trainer::generate::{generate, Decoding};
use ferrovene_trainer::objectives::das::{evaluate, loss};
use ferrovene_trainer::objectives::das::{logits as das_logits, prepare, PairBatch};

type Cpu = ferrovene_models::Cpu;

/// `tests/golden/<rel>`.
fn golden(rel: &str) -> std::path::PathBuf {
    crate::golden_runs::golden_dir().join(rel)
}

fn numpy_ref(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/numpy_refs").join(name)
}

/// All-position logits of `dir`'s model on `rows`, on backend `Bk`.
fn logits<Bk: Backend>(dir: &std::path::Path, rows: &[Vec<u32>]) -> Vec<f32> {
    let dev = Default::default();
    let model = load_folder::<Bk>(dir, &dev).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).model;
    let input = Input::<Bk>::from_ids(rows, &dev);
    values(model.head(forward(&model, &input, &mut NoHooks)).unwrap())
}

#[test]
fn forward_logits_match_the_cpu_and_the_goldens() {
    let cases = [
        (golden("tiny/gpt2"), "transformers"),
        (golden("tiny/gpt_neox"), "transformers"),
        (golden("tiny/llama"), "transformers"),
        (numpy_ref("qwen2"), "float64 NumPy"),
    ];
    for (dir, by) in cases {
        let reference = read_st(&dir.join("reference.safetensors"));
        let rows = reference_ids(&reference);
        let gpu = logits::<Gpu>(&dir, &rows);
        let cpu = logits::<Cpu>(&dir, &rows);
        let d_cpu = max_diff(&gpu, &cpu);
        let d_ref = max_diff(&gpu, &reference.get("logits").0);
        eprintln!("{}: wgpu vs cpu {d_cpu:.2e}, vs {by} {d_ref:.2e}", dir.display());
        assert!(d_cpu < 1e-4, "{}: wgpu logits differ from the CPU's by {d_cpu}", dir.display());
        assert!(d_ref < 1e-4, "{}: wgpu logits differ from {by}'s by {d_ref}", dir.display());
    }
}

type GpuAd = Autodiff<Gpu>;
type CpuAd = Autodiff<Cpu>;

/// The loss of one DAS step and the gradient of its parameter `X`, on backend `Bk`.
fn das_step<Bk: burn::tensor::backend::AutodiffBackend>() -> (f32, Vec<f32>) {
    let dev = Default::default();
    let (name, iv, _) = low_rank_das::<Bk>(&dev);
    let model = tiny_gpt2::<Bk>(&dev);
    let batch = batch(&Golden::read(name), &model, &dev);
    let l = loss(&model, &batch, &iv).unwrap();
    let value = values(l.clone())[0];
    let grads = l.backward();
    (value, values(torch(&iv).x.grad(&grads).expect("X has a gradient")))
}

#[test]
fn one_das_step_matches_the_cpu() {
    let (gpu_loss, gpu_grad) = das_step::<GpuAd>();
    let (cpu_loss, cpu_grad) = das_step::<CpuAd>();
    let d = max_diff(&gpu_grad, &cpu_grad);
    eprintln!("DAS step: loss {gpu_loss} vs {cpu_loss}, gradient of X differs by {d:.2e}");
    assert!((gpu_loss - cpu_loss).abs() < 1e-4, "loss on wgpu {gpu_loss}, on the CPU {cpu_loss}");
    assert!(d < 1e-4, "the gradient of X on wgpu differs from the CPU's by {d}");
}

#[test]
fn low_rank_das_trains_like_pyvene() {
    let dev = Default::default();
    let (name, iv, tol) = low_rank_das::<GpuAd>(&dev);
    check::<GpuAd>(name, iv, tol, &dev);
}

#[test]
fn full_das_trains_like_pyvene() {
    let dev = Default::default();
    let (name, iv, tol) = full_das::<GpuAd>(&dev);
    check::<GpuAd>(name, iv, tol, &dev);
}

#[test]
fn loreft_trains_like_pyreft() {
    let dev = Default::default();
    let (name, iv, tol) = loreft::<GpuAd>(&dev);
    check::<GpuAd>(name, iv, tol, &dev);
}

/// Greedy generation with the KV cache on `Bk`.
fn generated<Bk: Backend>(dir: &std::path::Path, prompt: &[u32], cache: bool) -> Vec<u32> {
    let dev = Default::default();
    let model = load_folder::<Bk>(dir, &dev).unwrap().model;
    generate(&model, prompt, None, &Decoding { cache, ..Decoding::greedy(12) }, None, &dev).unwrap()
}

#[test]
fn kv_cache_generation_gives_the_cpus_tokens() {
    for name in ["tiny/gpt2", "tiny/gpt_neox", "tiny/llama"] {
        let prompt = [5u32, 17, 42, 8];
        let on_gpu = generated::<Gpu>(&golden(name), &prompt, true);
        let on_cpu = generated::<Cpu>(&golden(name), &prompt, true);
        assert_eq!(on_gpu, on_cpu, "{name}: tokens generated on wgpu and on the CPU");
        assert_eq!(on_gpu, generated::<Gpu>(&golden(name), &prompt, false), "{name}: on wgpu, with and without the cache");
        assert_eq!(on_gpu.len(), 12);
    }
}

// ---- Half precision: the frozen model in f16 / bf16, the intervention in f32 ----

/// Half precision's tolerance on the tiny models' logits, relative to their largest magnitude:
/// f16 keeps 11 bits of mantissa (ε ≈ 4.9e-4) and bf16 8 (ε ≈ 3.9e-3); three blocks of
/// rounded products add up to a few ε.
fn half_tolerance(dtype: FloatDType) -> f32 {
    match dtype {
        FloatDType::BF16 => 4e-2,
        _ => 5e-3,
    }
}

#[test]
fn half_precision_forward_is_within_its_tolerance_of_f32() {
    let dev = Default::default();
    for dtype in [FloatDType::F16, FloatDType::BF16] {
        if !Gpu::supports_dtype(&dev, dtype.into()) {
            eprintln!("this adapter has no {dtype:?}: skipped");
            continue;
        }
        for dir in [golden("tiny/gpt2"), golden("tiny/gpt_neox"), golden("tiny/llama"), numpy_ref("qwen2")] {
            let rows = reference_ids(&read_st(&dir.join("reference.safetensors")));
            let model = load_folder::<Gpu>(&dir, &dev).unwrap().model;
            let input = Input::<Gpu>::from_ids(&rows, &dev);
            let full = values(model.head(forward(&model, &input, &mut NoHooks)).unwrap());
            let half = cast_module(model, dtype);
            assert_eq!(FloatDType::from(half.dtype()), dtype);
            let logits = model_logits_f32(&half, &input);
            let scale = full.iter().fold(0f32, |m, x| m.max(x.abs()));
            let d = max_diff(&logits, &full) / scale;
            eprintln!("{}: {dtype:?} logits within {d:.2e} of f32 (relative to the largest, {scale:.2})", dir.display());
            assert!(d < half_tolerance(dtype), "{}: {dtype:?} logits differ from f32 by {d} of their scale", dir.display());
        }
    }
}

/// The head's output, which is f32 whatever the model's precision.
fn model_logits_f32(model: &AnyModel<Gpu>, input: &Input<Gpu>) -> Vec<f32> {
    let logits = model.head(forward(model, input, &mut NoHooks)).unwrap();
    assert_eq!(logits.dtype(), burn::tensor::DType::F32, "the head hands out f32");
    values(logits)
}

/// Where the pairs are intervened: the third of their 6 tokens.
const PAIR_POSITION: usize = 2;

/// `n` random pairs of 6 tokens over the tiny vocabulary, labelled with what an interchange along
/// a planted 4-dimensional subspace of layer 1's vector at [`PAIR_POSITION`] predicts, kept only
/// where that differs from the base's own prediction: no intervention scores 0, a random rank-4
/// rotation about 0.25, and DAS has a causal variable to find.
fn interchange_pairs(n: usize, seed: u64) -> Vec<TokenizedExample> {
    let mut rng = Rng::new(seed);
    let mut row = || (0..6).map(|_| (rng.next_u64() % 97) as u32).collect::<Vec<u32>>();
    let dev = Default::default();
    let model = tiny_gpt2::<Cpu>(&dev);
    let planted = Iv::DasLowRank(DasLowRank { rotation: Orthogonal::random(4, 32, &mut Rng::new(99), &dev) });
    let mut kept = Vec::new();
    while kept.len() < n {
        let candidates: Vec<TokenizedExample> = (0..64)
            .map(|_| TokenizedExample::Pair {
                base: TokenizedInput { ids: row(), positions: vec![PAIR_POSITION] },
                sources: vec![TokenizedInput { ids: row(), positions: vec![PAIR_POSITION] }],
                base_label: None,
                label: LabelId::Token(0),
            })
            .collect();
        let refs: Vec<&TokenizedExample> = candidates.iter().collect();
        let batches = prepare(&model, Site::new(1, Component::BlockOutput), &refs, 0, 64, &dev).unwrap();
        let argmaxes = |iv: Option<&Iv<Cpu>>| -> Vec<u32> { values(das_logits(&model, &batches[0], iv.map(|i| i as &dyn ferrovene_interventions::Placed<Cpu>)).unwrap()).chunks(97).map(ferrovene_trainer::generate::argmax).collect() };
        let (plain, swapped) = (argmaxes(None), argmaxes(Some(&planted)));
        for ((ex, own), y) in candidates.into_iter().zip(plain).zip(swapped) {
            if let (TokenizedExample::Pair { base, sources, base_label, .. }, true) = (ex, own != y && kept.len() < n) {
                kept.push(TokenizedExample::Pair { base, sources, base_label, label: LabelId::Token(y) });
            }
        }
    }
    kept
}

/// Rank-4 DAS trained for 4 epochs (lr 0.02) on `train` at layer 1 of `model`, and its IIA on `test`.
fn train_das(model: &AnyModel<GpuAd>, train: &[TokenizedExample], test: &[TokenizedExample]) -> (Iv<GpuAd>, f32) {
    let dev = Default::default();
    let site = Site::new(1, Component::BlockOutput);
    let batches = |set: &[TokenizedExample]| -> Vec<PairBatch<GpuAd>> { prepare(model, site, &set.iter().collect::<Vec<_>>(), 0, 16, &dev).unwrap() };
    let (train, test) = (batches(train), batches(test));
    let mut iv = untrained_das(&dev);
    let mut opt = crate::golden_runs::torch_adam().optimizer::<GpuAd, Iv<GpuAd>>();
    for _ in 0..4 {
        for b in &train {
            let grads = burn::optim::GradientsParams::from_grads(loss(model, b, &iv).unwrap().backward(), &iv);
            iv = burn::optim::Optimizer::step(&mut opt, 2e-2, iv, grads);
        }
    }
    let iia = evaluate(model, &test, Some(&iv)).unwrap().iia;
    (iv, iia)
}

/// The rank-4 DAS every run here starts from.
fn untrained_das<Bk: Backend>(device: &Bk::Device) -> Iv<Bk> {
    Iv::DasLowRank(DasLowRank { rotation: Orthogonal::random(4, 32, &mut Rng::new(7), device) })
}

/// IIA on `test` of an export, on the CPU.
fn iia_on_the_cpu(export: &std::path::Path, test: &[TokenizedExample]) -> f32 {
    let dev = Default::default();
    let (iv, _) = ferrovene_interventions::export::load::<Cpu>(export, &dev).unwrap();
    let model = tiny_gpt2::<Cpu>(&dev);
    let batches = prepare(&model, Site::new(1, Component::BlockOutput), &test.iter().collect::<Vec<_>>(), 0, 16, &dev).unwrap();
    evaluate(&model, &batches, Some(&iv)).unwrap().iia
}

/// DAS trained on the GPU, on the f32 model and on its f16 cast: both learn the interchange to
/// the same held-out IIA (within 0.02), and the f32 run's export gives that IIA on the CPU.
#[test]
fn das_trained_here_exports_to_the_cpu_and_reaches_the_f32_iia_on_a_half_precision_model() {
    let dev = Default::default();
    let (train, test) = (interchange_pairs(64, 1), interchange_pairs(96, 2));
    let f32_model = tiny_gpt2::<GpuAd>(&dev);
    let (trained, full) = train_das(&f32_model, &train, &test);
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-gpu-export-{}.safetensors", std::process::id()));
    save_export(&trained, &path, &dev);
    let on_cpu = iia_on_the_cpu(&path, &test);
    eprintln!("DAS IIA on held-out pairs: {full} trained here, {on_cpu} from its export on the CPU");
    let untrained = evaluate(&f32_model, &prepare(&f32_model, Site::new(1, Component::BlockOutput), &test.iter().collect::<Vec<_>>(), 0, 16, &dev).unwrap(), Some(&untrained_das(&dev))).unwrap().iia;
    eprintln!("(the same rotation untrained: {untrained}; no intervention: 0 by construction)");
    assert!(full > 0.5 && full > untrained + 0.2, "the f32 run learns the interchange (IIA {full}, untrained {untrained})");
    assert_eq!(full, on_cpu, "the export's IIA on the CPU");
    if !GpuAd::supports_dtype(&dev, FloatDType::F16.into()) {
        panic!("this adapter has no f16: the half-precision test cannot run here");
    }
    let (_, half) = train_das(&cast_module(f32_model, FloatDType::F16), &train, &test);
    eprintln!("on the f16 model: {half}");
    assert!((full - half).abs() <= 0.02, "f16 model IIA {half} vs f32 {full}");
}

// ---- The `trainer` binary on this device ----

/// A folder with the tiny GPT-2 and a word-level tokenizer over its 97 tokens (`t0` … `t96`,
/// split at spaces), so that the binary can run recipes and `eval` on it.
fn tiny_gpt2_with_tokenizer(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(golden("tiny/gpt2").join(f), dir.join(f)).unwrap();
    }
    let vocab: serde_json::Map<String, serde_json::Value> = (0..97).map(|i| (format!("t{i}"), serde_json::json!(i))).collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}

/// The interchange pairs as a pair file (text, with the intervened word's position).
fn pair_file(path: &std::path::Path, pairs: &[TokenizedExample]) {
    let text = |ids: &[u32]| ids.iter().map(|i| format!("t{i}")).collect::<Vec<_>>().join(" ");
    let lines: Vec<String> = pairs
        .iter()
        .enumerate()
        .map(|(i, ex)| match ex {
            TokenizedExample::Pair { base, sources, label: LabelId::Token(y), .. } => serde_json::json!({
                "base": text(&base.ids), "sources": [text(&sources[0].ids)], "positions": [PAIR_POSITION], "label": format!(" t{y}"), "meta": {"pair": i.to_string()}
            })
            .to_string(),
            other => panic!("a pair: {other:?}"),
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// `trainer <recipe> --device <this one>` on the tiny GPT-2: report.json names the device, its
/// backend and precision, and `trainer eval --device cpu` of the export gives the IIA the run
/// reported on the same held-out pairs. A device the machine lacks is a clear error.
#[test]
fn a_recipe_runs_on_this_device_and_its_export_evaluates_the_same_on_the_cpu() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-gpu-recipe-{DEVICE}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let model = dir.join("tiny-gpt2");
    tiny_gpt2_with_tokenizer(&model);
    pair_file(&dir.join("pairs.jsonl"), &interchange_pairs(96, 3));
    let recipe = format!(
        "description = \"DAS on the tiny GPT-2\"\nkind = \"das\"\nmodel = \"{}\"\npairs = \"{}\"\nsite = \"1.block_output\"\nrank = 4\nbatch_size = 16\nepochs = 4\nlr = 0.02\nwarmup = 0.0\nweight_decay = 0.0\nseed = 1\ndev_fraction = 0.25\nsplit_by = \"pair\"\n",
        model.display(),
        dir.join("pairs.jsonl").display()
    );
    std::fs::write(dir.join("tiny-das.toml"), recipe).unwrap();
    let trainer = || std::process::Command::new(env!("CARGO_BIN_EXE_trainer"));
    let out = trainer().arg(dir.join("tiny-das.toml")).args(["--device", DEVICE, "--dtype", "f32", "--quiet", "--out"]).arg(dir.join("runs")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let run = std::fs::read_dir(dir.join("runs/tiny-das")).unwrap().next().unwrap().unwrap().path();
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    let compute = &report["compute"];
    eprintln!("compute: {compute}");
    assert_eq!((compute["device"].as_str(), compute["dtype"].as_str()), (Some(DEVICE), Some("f32")), "{compute}");
    assert!(compute["backend"].as_str().unwrap().contains("cubecl"), "{compute}");
    let iia = report["metrics"]["dev"]["iia"].as_f64().unwrap_or_else(|| panic!("no metrics.dev.iia: {report}"));
    let eval = trainer().args(["eval", "--json", "--device", "cpu", "--intervention"]).arg(run.join("intervention.safetensors")).arg("--pairs").arg(run.join("dev.jsonl")).arg("--model").arg(&model).output().unwrap();
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let on_cpu: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    eprintln!("IIA {iia} on {DEVICE}, eval on the CPU: {}", on_cpu["overall"]);
    assert_eq!(on_cpu["overall"]["iia"].as_f64(), Some(iia), "{on_cpu}");
    assert_eq!(on_cpu["overall"]["iia_no_intervention"].as_f64(), Some(0.0), "{on_cpu}");
    assert!(iia > 0.4, "the run learned something: IIA {iia} (a random rank-4 rotation: about 0.25)");
    assert!(!compute["adapter"]["name"].as_str().unwrap_or_default().is_empty() || DEVICE != "wgpu", "the adapter is named: {compute}");

    let out = trainer().args(["predict", "--prompt", "t5 t17", "--device", &format!("{DEVICE}:7"), "--model"]).arg(&model).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&format!("{DEVICE}:7")), "{stderr}");
}
