//! SAEs in the formats people publish them (`sae_formats`): Gemma Scope's `params.npz` (files
//! numpy wrote, both layouts, against numpy's own numbers; and files this test writes), SAELens
//! folders (`cfg.json` + `sae_weights.safetensors`: standard, JumpReLU with `threshold` or
//! `log_threshold`, TopK in SAELens 6's and 5's configs, `apply_b_dec_to_input`, the run-time
//! normalisations, BF16 weights), each against the formulas computed here in f64 within 1e-6;
//! TransformerLens hook names mapped to sites, and clear refusals.

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use ferrovene_interventions::Intervention;
use ferrovene_interventions::sae::Sae;
use ferrovene_interventions::sae_formats::{hook_site, load_sae};
use ferrovene_models::rng::Rng;
use ferrovene_models::{Component, Site};

type B = ferrovene_models::Cpu;

fn dev() -> ferrovene_models::CpuDevice {
    Default::default()
}

fn golden() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/sae");
    assert!(p.exists(), "golden {} is missing (made by tests/golden/make_sae_goldens.py)", p.display());
    p
}

fn row(v: &[f32]) -> Tensor<B, 3> {
    Tensor::<B, 3>::from_data(TensorData::new(v.to_vec(), [1, 1, v.len()]), &dev())
}

fn values(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((*g as f64 - w).abs() < 1e-6, "{what}: [{i}] {g} vs {w}");
    }
}

#[test]
fn gemma_scope_npz_files_numpy_wrote_give_numpys_numbers() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden().join("expected.json")).unwrap()).unwrap();
    let floats =
        |k: &str| -> Vec<f64> { expected[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
    let (base, source) = (floats("base"), floats("source"));
    let as32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let folder = golden().join("gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_3");
    for path in [folder.join("params.npz"), folder.clone(), golden().join("compressed.npz")] {
        let loaded = load_sae::<B>(&path, &dev()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(loaded.format, "Gemma Scope");
        if path != golden().join("compressed.npz") {
            assert_eq!(loaded.site, Ok(Site::new(1, Component::BlockOutput)), "the hub path names the site");
        } else {
            assert!(loaded.site.unwrap_err().contains("--site"));
        }
        close(&values(loaded.sae.encode(row(&as32(&base)))), &floats("base_latents"), "latents");
        let sae = loaded.sae.acting_on(vec![1, 4, 7], None).unwrap();
        let out = Intervention::Sae(sae).apply(row(&as32(&base)), Some(row(&as32(&source)))).unwrap();
        close(&values(out), &floats("interchanged"), &format!("{}: interchange", path.display()));
    }
}

/// An SAE's weights, in f32, with the settings SAELens' config gives.
struct Spec {
    d: usize,
    m: usize,
    w_enc: Vec<f32>,
    b_enc: Vec<f32>,
    w_dec: Vec<f32>,
    b_dec: Vec<f32>,
    threshold: Vec<f32>,
}

impl Spec {
    fn random(seed: u64) -> Self {
        let (d, m) = (8, 16);
        let rng = &mut Rng::new(seed);
        let mut v = |n: usize, s: f64| (0..n).map(|_| (rng.normal() * s) as f32).collect::<Vec<f32>>();
        let (w_enc, b_enc, w_dec, b_dec) = (v(d * m, 0.3), v(m, 0.1), v(m * d, 0.3), v(d, 0.1));
        let threshold = v(m, 0.1).into_iter().map(f32::abs).collect();
        Spec { d, m, w_enc, b_enc, w_dec, b_dec, threshold }
    }
}

/// What the formulas give, in f64: `(latents, reconstruction)` of `x`, with the latents in
/// `replace` set to the given values before decoding.
#[derive(Clone, Copy)]
enum Act {
    Relu,
    Jump,
    TopK(usize),
}

#[derive(Clone, Copy, PartialEq)]
enum Norm {
    None,
    Rescale,
    Layer,
}

fn reference(
    s: &Spec,
    x: &[f32],
    act: Act,
    input_bias: bool,
    norm: Norm,
    replace: &[(usize, f64)],
) -> (Vec<f64>, Vec<f64>) {
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let d = s.d as f64;
    let (xn, undo): (Vec<f64>, Box<dyn Fn(f64) -> f64>) = match norm {
        Norm::None => (x.clone(), Box::new(|y| y)),
        Norm::Rescale => {
            let c = d.sqrt() / x.iter().map(|v| v * v).sum::<f64>().sqrt();
            (x.iter().map(|v| v * c).collect(), Box::new(move |y| y / c))
        }
        Norm::Layer => {
            let mu = x.iter().sum::<f64>() / d;
            let std = (x.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / (d - 1.0)).sqrt();
            (x.iter().map(|v| (v - mu) / (std + 1e-5)).collect(), Box::new(move |y| y * std + mu))
        }
    };
    let xin: Vec<f64> =
        xn.iter().enumerate().map(|(i, v)| if input_bias { v - s.b_dec[i] as f64 } else { *v }).collect();
    let pre: Vec<f64> = (0..s.m)
        .map(|j| (0..s.d).map(|i| xin[i] * s.w_enc[i * s.m + j] as f64).sum::<f64>() + s.b_enc[j] as f64)
        .collect();
    let mut z: Vec<f64> = match act {
        Act::Relu => pre.iter().map(|p| p.max(0.0)).collect(),
        Act::Jump => pre.iter().zip(&s.threshold).map(|(p, t)| if *p > *t as f64 { p.max(0.0) } else { 0.0 }).collect(),
        Act::TopK(k) => {
            let mut order: Vec<usize> = (0..s.m).collect();
            order.sort_by(|a, b| pre[*b].total_cmp(&pre[*a]));
            let mut z = vec![0.0; s.m];
            for &j in &order[..k] {
                z[j] = pre[j].max(0.0);
            }
            z
        }
    };
    let latents = z.clone();
    for &(j, v) in replace {
        z[j] = v;
    }
    let out = (0..s.d)
        .map(|i| undo((0..s.m).map(|j| z[j] * s.w_dec[j * s.d + i] as f64).sum::<f64>() + s.b_dec[i] as f64))
        .collect();
    (latents, out)
}

/// Writes `spec` as a SAELens folder with `cfg` (and `threshold_name` for JumpReLU), the
/// weights in `dtype`.
fn saelens_folder(
    dir: &Path,
    s: &Spec,
    cfg: serde_json::Value,
    threshold_name: Option<&str>,
    dtype: safetensors::Dtype,
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cfg.json"), cfg.to_string()).unwrap();
    let encode = |v: &[f32]| -> Vec<u8> {
        match dtype {
            safetensors::Dtype::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
            _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    };
    let mut tensors = vec![
        ("W_enc".to_string(), encode(&s.w_enc), vec![s.d, s.m]),
        ("b_enc".to_string(), encode(&s.b_enc), vec![s.m]),
        ("W_dec".to_string(), encode(&s.w_dec), vec![s.m, s.d]),
        ("b_dec".to_string(), encode(&s.b_dec), vec![s.d]),
    ];
    match threshold_name {
        Some("log_threshold") => {
            let log: Vec<f32> = s.threshold.iter().map(|t| t.ln()).collect();
            tensors.push(("log_threshold".into(), encode(&log), vec![s.m]));
        }
        Some(name) => tensors.push((name.into(), encode(&s.threshold), vec![s.m])),
        None => {}
    }
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, b, shape)| (n.clone(), safetensors::tensor::TensorView::new(dtype, shape.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("sae_weights.safetensors")).unwrap();
}

/// The spec as the SAE will see it (BF16 weights rounded).
fn rounded(s: &Spec) -> Spec {
    let r = |v: &[f32]| v.iter().map(|x| half::bf16::from_f32(*x).to_f32()).collect();
    Spec {
        d: s.d,
        m: s.m,
        w_enc: r(&s.w_enc),
        b_enc: r(&s.b_enc),
        w_dec: r(&s.w_dec),
        b_dec: r(&s.b_dec),
        threshold: r(&s.threshold),
    }
}

#[test]
fn saelens_folders_load_and_give_the_formulas() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = Spec::random(9);
    let rng = &mut Rng::new(4);
    let base: Vec<f32> = (0..spec.d).map(|_| rng.normal() as f32).collect();
    let source: Vec<f32> = (0..spec.d).map(|_| rng.normal() as f32).collect();
    use safetensors::Dtype::{BF16, F32};
    // (name, cfg, threshold tensor, dtype, activation, apply_b_dec_to_input, normalisation, site)
    let cases: Vec<(&str, serde_json::Value, Option<&str>, safetensors::Dtype, Act, bool, Norm, Site)> = vec![
        (
            "standard-v5",
            serde_json::json!({"architecture": "standard", "d_in": 8, "d_sae": 16, "hook_name": "blocks.3.hook_resid_post", "apply_b_dec_to_input": true, "normalize_activations": "none"}),
            None,
            F32,
            Act::Relu,
            true,
            Norm::None,
            Site::new(3, Component::BlockOutput),
        ),
        (
            "jumprelu-v6",
            serde_json::json!({"architecture": "jumprelu", "d_in": 8, "d_sae": 16, "apply_b_dec_to_input": false, "meta": {"hook_name": "blocks.5.hook_mlp_out"}}),
            Some("threshold"),
            F32,
            Act::Jump,
            false,
            Norm::None,
            Site::new(5, Component::MlpOutput),
        ),
        (
            "jumprelu-log-threshold",
            serde_json::json!({"architecture": "jumprelu", "d_in": 8, "d_sae": 16, "apply_b_dec_to_input": true, "hook_name": "blocks.0.attn.hook_z"}),
            Some("log_threshold"),
            F32,
            Act::Jump,
            true,
            Norm::None,
            Site::new(0, Component::AttentionValueOutput),
        ),
        (
            "topk-v6",
            serde_json::json!({"architecture": "topk", "k": 3, "d_in": 8, "d_sae": 16, "apply_b_dec_to_input": true, "normalize_activations": "constant_norm_rescale", "meta": {"hook_name": "blocks.2.hook_resid_pre"}}),
            None,
            F32,
            Act::TopK(3),
            true,
            Norm::Rescale,
            Site::new(2, Component::BlockInput),
        ),
        (
            "topk-v5",
            serde_json::json!({"architecture": "standard", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4}, "d_in": 8, "d_sae": 16, "apply_b_dec_to_input": false, "normalize_activations": "layer_norm", "hook_name": "blocks.1.hook_attn_out"}),
            None,
            F32,
            Act::TopK(4),
            false,
            Norm::Layer,
            Site::new(1, Component::AttentionOutput),
        ),
        (
            "standard-bf16",
            serde_json::json!({"architecture": "standard", "d_in": 8, "d_sae": 16, "hook_name": "blocks.4.mlp.hook_post", "normalize_activations": "expected_average_only_in", "dtype": "bfloat16"}),
            None,
            BF16,
            Act::Relu,
            true,
            Norm::None,
            Site::new(4, Component::MlpActivation),
        ),
    ];
    for (name, cfg, threshold, dtype, act, bias, norm, site) in cases {
        let dir = tmp.path().join(name);
        saelens_folder(&dir, &spec, cfg, threshold, dtype);
        let loaded = load_sae::<B>(&dir, &dev()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((loaded.format, loaded.site.clone()), ("SAELens", Ok(site)), "{name}");
        let s = if dtype == BF16 { rounded(&spec) } else { Spec::random(9) };
        let (zb, recon) = reference(&s, &base, act, bias, norm, &[]);
        close(&values(loaded.sae.encode(row(&base))), &zb, &format!("{name}: latents"));
        close(&values(loaded.sae.reconstruct(row(&base))), &recon, &format!("{name}: reconstruction"));
        if let Act::TopK(k) = act {
            assert!(zb.iter().filter(|v| **v != 0.0).count() <= k, "{name}: at most k active");
        }
        // Interchange latents 2 and 5 from the source; clamp them to 3.0 instead.
        let (zs, _) = reference(&s, &source, act, bias, norm, &[]);
        let (_, swapped) = reference(&s, &base, act, bias, norm, &[(2, zs[2]), (5, zs[5])]);
        let sae: Sae<B> = loaded.sae.acting_on(vec![2, 5], None).unwrap();
        let got = Intervention::Sae(sae.clone()).apply(row(&base), Some(row(&source))).unwrap();
        close(&values(got), &swapped, &format!("{name}: interchange"));
        let (_, clamped) = reference(&s, &base, act, bias, norm, &[(2, 3.0), (5, 3.0)]);
        let clamp = Intervention::Sae(sae.acting_on(vec![2, 5], Some(3.0)).unwrap());
        assert!(!clamp.needs_source(), "{name}: clamping reads no source");
        close(&values(clamp.apply(row(&base), None).unwrap()), &clamped, &format!("{name}: clamp"));
    }
}

#[test]
fn hook_names_map_to_sites_and_unknown_ones_are_refused_with_the_mapping() {
    let cases = [
        ("blocks.12.hook_resid_post", Site::new(12, Component::BlockOutput)),
        ("blocks.0.hook_resid_pre", Site::new(0, Component::BlockInput)),
        ("blocks.7.hook_attn_out", Site::new(7, Component::AttentionOutput)),
        ("blocks.7.hook_mlp_out", Site::new(7, Component::MlpOutput)),
        ("blocks.3.attn.hook_z", Site::new(3, Component::AttentionValueOutput)),
        ("blocks.3.attn.hook_q", Site::new(3, Component::QueryOutput)),
        ("blocks.9.mlp.hook_post", Site::new(9, Component::MlpActivation)),
        ("blocks.9.ln1.hook_normalized", Site::new(9, Component::AttentionInput)),
        ("blocks.9.ln2.hook_normalized", Site::new(9, Component::MlpInput)),
    ];
    for (hook, site) in cases {
        assert_eq!(hook_site(hook), Ok(site), "{hook}");
    }
    let e = hook_site("blocks.6.hook_resid_mid").unwrap_err();
    assert!(
        e.contains("blocks.6.hook_resid_mid") && e.contains("`blocks.{L}.hook_resid_post` → L.block_output"),
        "{e}"
    );
}

#[test]
fn bad_sae_files_are_refused_naming_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = Spec::random(3);
    let dir = tmp.path().join("gated");
    saelens_folder(
        &dir,
        &spec,
        serde_json::json!({"architecture": "gated", "d_in": 8, "d_sae": 16}),
        None,
        safetensors::Dtype::F32,
    );
    let e = load_sae::<B>(&dir, &dev()).err().unwrap().to_string();
    assert!(e.contains("architecture `gated`") && e.contains("cfg.json"), "{e}");
    let dir = tmp.path().join("wrong-d");
    saelens_folder(
        &dir,
        &spec,
        serde_json::json!({"architecture": "standard", "d_in": 9, "d_sae": 16}),
        None,
        safetensors::Dtype::F32,
    );
    let e = load_sae::<B>(&dir, &dev()).err().unwrap().to_string();
    assert!(e.contains("`d_in` is 9 but the weights give 8"), "{e}");
    let dir = tmp.path().join("no-hook");
    saelens_folder(&dir, &spec, serde_json::json!({"architecture": "standard"}), None, safetensors::Dtype::F32);
    assert!(load_sae::<B>(&dir, &dev()).unwrap().site.unwrap_err().contains("no `hook_name`"));
    let dir = tmp.path().join("jump-without-threshold");
    saelens_folder(&dir, &spec, serde_json::json!({"architecture": "jumprelu"}), None, safetensors::Dtype::F32);
    let e = load_sae::<B>(&dir, &dev()).err().unwrap().to_string();
    assert!(e.contains("`threshold` (or `log_threshold`)"), "{e}");
    let e = load_sae::<B>(tmp.path(), &dev()).err().unwrap().to_string();
    assert!(e.contains("neither SAELens' cfg.json"), "{e}");
    let e = Sae::<B>::clone(&load_sae::<B>(&tmp.path().join("no-hook"), &dev()).unwrap().sae)
        .acting_on(vec![], Some(1.0))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("clamping needs the latents"), "{e}");
}
