//! Exports: bit-exact round trip for every kind, refusal of a wrong target or a damaged file, and
//! an interrupted write that leaves the old file intact. Also Gemma-Scope-style SAE weights.

use burn::module::Param;
use burn::tensor::Tensor;
use ferrovene_interventions::das::{BoundlessDas, DasFull, DasLowRank, SigmoidMask};
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig, Target};
use ferrovene_interventions::fixed::{Fixed, FixedOp};
use ferrovene_interventions::probe::LinearProbe;
use ferrovene_interventions::reft::{ReftFamily, ReftIntervention};
use ferrovene_interventions::sae::{JumpReluSae, SaeActivation, SaeNorm};
use ferrovene_interventions::sae_formats::load_sae;
use ferrovene_interventions::steering::Steering;
use ferrovene_interventions::{Activation, Intervention, Orthogonal, Rng};
use ferrovene_models::{Component, Site, SiteInfo};

type B = ferrovene_models::Cpu;
const D: usize = 8;

fn dev() -> ferrovene_models::CpuDevice {
    Default::default()
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ferrovene-export-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config() -> ExportConfig {
    ExportConfig {
        format: 0,
        kind: String::new(),
        width: D,
        hyper: Default::default(),
        placement: PlacementConfig {
            sites: vec!["1.block_output".into()],
            positions: "last".into(),
            site_width: D,
            dims: vec![],
            composition: Default::default(),
        },
        model: ModelConfig { id: "tiny".into(), revision: None, arch: "llama".into(), hidden_size: D },
        training: serde_json::json!({"steps": 10, "seed": 7}),
        set: None,
    }
}

fn sae(rng: &mut Rng) -> JumpReluSae<B> {
    let p2 = |rng: &mut Rng, s: [usize; 2]| Param::from_tensor(rng.normal_tensor::<B, 2>(s, &dev()));
    let p1 = |rng: &mut Rng, n: usize| Param::from_tensor(rng.normal_tensor::<B, 1>([n], &dev()));
    let sae = JumpReluSae {
        w_enc: p2(rng, [D, 12]),
        b_enc: p1(rng, 12),
        w_dec: p2(rng, [12, D]),
        b_dec: p1(rng, D),
        threshold: Some(p1(rng, 12)),
        activation: SaeActivation::JumpRelu,
        input_bias: false,
        normalize: SaeNorm::None,
        latents: Vec::new(),
        clamp: None,
    };
    sae.acting_on(vec![1, 5], None).unwrap()
}

fn every_kind() -> Vec<Intervention<B>> {
    let rng = &mut Rng::new(5);
    let mut all = vec![
        Intervention::Fixed(Fixed::new(FixedOp::Interchange)),
        Intervention::Fixed(Fixed::new(FixedOp::Addition)),
        Intervention::Fixed(Fixed::new(FixedOp::Subtraction)),
        Intervention::Fixed(Fixed::new(FixedOp::Zero)),
        Intervention::Fixed(Fixed::with_vector(FixedOp::Mean, rng.normal_tensor([D], &dev()))),
        Intervention::Fixed(Fixed::new(FixedOp::Collect)),
        Intervention::Fixed(Fixed::with_vector(FixedOp::Noise, rng.normal_tensor([D], &dev()))),
        Intervention::DasFull(DasFull { rotation: Orthogonal::random(D, D, rng, &dev()), k: 3 }),
        Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(2, D, rng, &dev()) }),
        Intervention::DasLowRank(DasLowRank {
            rotation: Orthogonal::fixed(Orthogonal::<B>::random(2, D, rng, &dev()).matrix()),
        }),
        Intervention::Boundless(BoundlessDas {
            rotation: Orthogonal::random(D, D, rng, &dev()),
            boundary: Param::from_tensor(Tensor::from_floats([0.37], &dev())),
            temperature: 0.7,
        }),
        Intervention::SigmoidMask(SigmoidMask {
            mask: Param::from_tensor(rng.normal_tensor([D], &dev())),
            rotation: None,
            temperature: 0.5,
        }),
        Intervention::SigmoidMask(SigmoidMask {
            mask: Param::from_tensor(rng.normal_tensor([D], &dev())),
            rotation: Some(Orthogonal::random(D, D, rng, &dev())),
            temperature: 0.5,
        }),
        Intervention::Probe(LinearProbe::init(D, 3, rng, &dev())),
        Intervention::Steering(Steering { vector: Param::from_tensor(rng.normal_tensor([D], &dev())), alpha: 2.5 }),
        Intervention::Sae(sae(rng)),
        Intervention::Sae({
            let mut s = sae(rng);
            (s.activation, s.threshold, s.input_bias, s.normalize) =
                (SaeActivation::TopK(3), None, true, SaeNorm::LayerNorm);
            s
        }),
        Intervention::Sae({
            let mut s = sae(rng);
            (s.activation, s.threshold, s.normalize) = (SaeActivation::Relu, None, SaeNorm::ConstantNormRescale);
            s.acting_on(vec![3], Some(2.5)).unwrap()
        }),
    ];
    for family in [
        ReftFamily::LoReft,
        ReftFamily::NoReft,
        ReftFamily::ConsReft,
        ReftFamily::LoBiReft,
        ReftFamily::DiReft,
        ReftFamily::NoDiReft,
    ] {
        let mut r = ReftIntervention::new(family, D, 2, Activation::Gelu, 0.05, rng, &dev());
        if let Some(b) = r.learned_bias.take() {
            r.learned_bias = Some(b.map(|t| t + 0.25));
        }
        all.push(Intervention::Reft(r));
    }
    all
}

#[test]
fn round_trip_is_bit_exact_for_every_kind() {
    let dir = temp("round-trip");
    let rng = &mut Rng::new(9);
    let (b, s) = (rng.normal_tensor::<B, 3>([3, 2, D], &dev()), rng.normal_tensor::<B, 3>([3, 2, D], &dev()));
    for iv in every_kind() {
        let kind = iv.kind();
        let path = dir.join(format!("{kind}.safetensors"));
        export::save(&iv, config(), &path).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let (back, cfg) = export::load::<B>(&path, &dev()).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(back.kind(), kind);
        assert_eq!(cfg.training["seed"], 7, "{kind}: training summary kept");
        let (t1, h1) = export::tensors_of(&iv);
        let (t2, h2) = export::tensors_of(&back);
        assert_eq!(h1, h2, "{kind}: hyper-parameters");
        assert_eq!(t1.len(), t2.len(), "{kind}: tensor count");
        for ((n1, d1), (n2, d2)) in t1.iter().zip(&t2) {
            assert_eq!(n1, n2);
            assert_eq!(d1.as_bytes(), d2.as_bytes(), "{kind}: tensor {n1} is not bit-identical");
        }
        if kind == "noise" {
            continue; // its output is random by design; its tensors were compared above
        }
        let src = iv.needs_source().then(|| s.clone());
        let o1: Vec<f32> = iv.apply(b.clone(), src.clone()).unwrap().into_data().to_vec().unwrap();
        let o2: Vec<f32> = back.apply(b.clone(), src).unwrap().into_data().to_vec().unwrap();
        let diff = o1.iter().zip(&o2).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(o1 == o2, "{kind}: outputs differ after the round trip by {diff:e}");
    }
}

fn sites(width: usize) -> Vec<SiteInfo> {
    (0..3).map(|l| SiteInfo { site: Site::new(l, Component::BlockOutput), width, heads: 1 }).collect()
}

#[test]
fn a_wrong_target_is_refused_saying_what_differs() {
    let dir = temp("target");
    let path = dir.join("iv.safetensors");
    let iv = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::<B>::random(2, D, &mut Rng::new(1), &dev()) });
    export::save(&iv, config(), &path).unwrap();
    let ok = sites(D);
    export::load_for::<B>(&path, &Target { arch: "llama", hidden_size: D, sites: &ok }, &dev())
        .expect("the right target loads");
    let wide = sites(16);
    let e = export::load_for::<B>(&path, &Target { arch: "llama", hidden_size: 16, sites: &wide }, &dev())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("width 8") && e.contains("width 16") && e.contains("iv.safetensors"), "{e}");
    let e = export::load_for::<B>(&path, &Target { arch: "gpt2", hidden_size: D, sites: &ok }, &dev())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("llama") && e.contains("gpt2"), "{e}");
    let one = &ok[..1];
    let e = export::load_for::<B>(&path, &Target { arch: "llama", hidden_size: D, sites: one }, &dev())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no site `1.block_output`"), "{e}");
}

#[test]
fn a_damaged_file_is_refused() {
    let dir = temp("damaged");
    let path = dir.join("iv.safetensors");
    let iv = Intervention::Steering(Steering::<B>::fixed(Tensor::ones([D], &dev()), 1.0));
    export::save(&iv, config(), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
    let e = export::load::<B>(&path, &dev()).err().unwrap().to_string();
    assert!(e.contains("not a valid safetensors file") && e.contains("iv.safetensors"), "{e}");
    std::fs::write(&path, b"garbage").unwrap();
    assert!(export::load::<B>(&path, &dev()).is_err());
    // a safetensors file that is not an export
    let plain = dir.join("plain.safetensors");
    let data = vec![0u8; 4 * D];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![D], &data).unwrap();
    safetensors::serialize_to_file(vec![("vector", view)], None, &plain).unwrap();
    let e = export::load::<B>(&plain, &dev()).err().unwrap().to_string();
    assert!(e.contains("not a ferrovene export"), "{e}");
}

#[test]
fn an_interrupted_write_leaves_the_old_file_intact() {
    let dir = temp("interrupted");
    let path = dir.join("intervention.safetensors");
    let old = Intervention::Steering(Steering::<B>::fixed(Tensor::ones([D], &dev()), 1.0));
    export::save(&old, config(), &path).unwrap();
    let before = std::fs::read(&path).unwrap();
    {
        // The new file is fully written to a temporary file, then the process "dies" before the
        // rename: the pending export is dropped.
        let new = Intervention::Steering(Steering::<B>::fixed(Tensor::zeros([D], &dev()), 3.0));
        let pending = export::prepare(&new, config(), &path).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "the temporary file sits beside the target");
        drop(pending);
    }
    assert_eq!(std::fs::read(&path).unwrap(), before, "the old export is untouched");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left behind");
    let (back, _) = export::load::<B>(&path, &dev()).unwrap();
    assert_eq!(export::tensors_of(&back).1.alpha, Some(1.0));
}

#[test]
fn gemma_scope_style_sae_weights_load_and_interchange_latents() {
    let dir = temp("sae");
    let path = dir.join("params.safetensors");
    let rng = &mut Rng::new(3);
    let (d, m) = (D, 12);
    let vals = |rng: &mut Rng, n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
    let w_enc = vals(rng, d * m);
    let b_enc = vals(rng, m);
    let w_dec = vals(rng, m * d);
    let b_dec = vals(rng, d);
    let threshold: Vec<f32> = (0..m).map(|_| rng.uniform() as f32 * 0.5).collect();
    let bytes = |v: &Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let bufs = [
        ("W_enc", bytes(&w_enc), vec![d, m]),
        ("b_enc", bytes(&b_enc), vec![m]),
        ("W_dec", bytes(&w_dec), vec![m, d]),
        ("b_dec", bytes(&b_dec), vec![d]),
        ("threshold", bytes(&threshold), vec![m]),
    ];
    let views: Vec<_> = bufs
        .iter()
        .map(|(n, b, s)| (*n, safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let loaded = load_sae::<B>(&path, &dev()).unwrap();
    assert_eq!(loaded.format, "safetensors");
    let sae = loaded.sae.acting_on(vec![2, 7], None).unwrap();

    // Reference, by hand: z = relu(x W_enc + b_enc) · [pre > threshold]; out = z' W_dec + b_dec
    let base = vals(rng, d);
    let source = vals(rng, d);
    let encode = |x: &[f32]| -> Vec<f32> {
        (0..m)
            .map(|j| {
                let pre: f32 = (0..d).map(|i| x[i] * w_enc[i * m + j]).sum::<f32>() + b_enc[j];
                if pre > threshold[j] { pre.max(0.0) } else { 0.0 }
            })
            .collect()
    };
    let (zb, zs) = (encode(&base), encode(&source));
    let z: Vec<f32> = (0..m).map(|j| if j == 2 || j == 7 { zs[j] } else { zb[j] }).collect();
    let want: Vec<f32> = (0..d).map(|i| (0..m).map(|j| z[j] * w_dec[j * d + i]).sum::<f32>() + b_dec[i]).collect();
    let t = |v: &Vec<f32>| Tensor::<B, 1>::from_floats(v.as_slice(), &dev()).reshape([1, 1, d]);
    let got: Vec<f32> = Intervention::Sae(sae).apply(t(&base), Some(t(&source))).unwrap().into_data().to_vec().unwrap();
    for i in 0..d {
        assert!((got[i] - want[i]).abs() < 1e-4, "dim {i}: {} vs {}", got[i], want[i]);
    }
    let e = load_sae::<B>(&path, &dev()).unwrap().sae.acting_on(vec![12], None).err().unwrap().to_string();
    assert!(e.contains("latent 12") && e.contains("12 latents"), "{e}");
}

#[test]
fn an_export_missing_a_tensor_its_kind_needs_is_refused() {
    let dir = temp("missing-tensor");
    let path = dir.join("loreft.safetensors");
    let iv = Intervention::Reft(ReftIntervention::<B>::new(
        ReftFamily::LoReft,
        D,
        2,
        Activation::Identity,
        0.0,
        &mut Rng::new(1),
        &dev(),
    ));
    export::save(&iv, config(), &path).unwrap();
    // rewrite the file without `R` and `rotation.householder`
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| !n.starts_with("R") && !n.starts_with("rotation")).collect();
    safetensors::serialize_to_file(kept, meta.metadata().clone(), &path).unwrap();
    let e = export::load::<B>(&path, &dev()).err().unwrap().to_string();
    assert!(e.contains("missing tensor `R`") && e.contains("loreft"), "{e}");
}

/// Rewrites the export at `path` with its stored `R` changed by `edit`, every other tensor and
/// the metadata as they were.
fn edit_r(path: &std::path::Path, edit: impl FnOnce(&mut [f32])) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let r = st.tensor("R").unwrap();
    let mut values = ferrovene_models::weights::f32_from_le(r.data());
    edit(&mut values);
    let changed: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let shape = r.shape().to_vec();
    let mut kept: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| n != "R").collect();
    kept.push(("R".into(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &changed).unwrap()));
    safetensors::serialize_to_file(kept, meta.metadata().clone(), path).unwrap();
}

#[test]
fn an_export_whose_r_disagrees_with_its_parameters_is_refused() {
    let dir = temp("changed-r");
    let path = dir.join("das.safetensors");
    let iv = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::<B>::random(3, D, &mut Rng::new(2), &dev()) });
    export::save(&iv, config(), &path).unwrap();
    assert!(export::load::<B>(&path, &dev()).is_ok(), "an untouched export loads");
    // Change one entry of `R` by 1e-3, leaving the Householder parameters as they are.
    edit_r(&path, |r| r[1] += 1e-3);
    let e = export::load::<B>(&path, &dev()).err().unwrap().to_string();
    assert!(e.contains("das.safetensors") && e.contains("stored `R` differs") && e.contains("1e-5"), "{e}");
}

/// Exports written by format 1 (`tests/fixtures/format-1/`, from ferrovene `7bf71a9`) load as
/// they did: every kind, rotations trainable again from their format-1 parameters
/// (`rotation.householder`, `rotation.exp_weight`), and each gives the output that version
/// computed on the stored inputs.
#[test]
fn format_1_exports_load_and_apply_as_before() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-1");
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let expected = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensor = |name: &str| {
        let t = expected.tensor(name).unwrap_or_else(|_| panic!("expected.safetensors lacks `{name}`"));
        let values = ferrovene_models::weights::f32_from_le(t.data());
        Tensor::<B, 3>::from_data(burn::tensor::TensorData::new(values, t.shape().to_vec()), &dev())
    };
    let (b, s) = (tensor("base"), tensor("source"));
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "safetensors") && !p.ends_with("expected.safetensors"));
    files.sort();
    assert_eq!(files.len(), 21, "the format-1 fixtures are all there");
    let mut trainable_rotations = 0;
    for path in files {
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let (iv, cfg) = export::load::<B>(&path, &dev()).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert_eq!(cfg.format, 1, "{stem}");
        assert!(stem.ends_with(iv.kind()), "{stem} loaded as {}", iv.kind());
        if matches!(iv.rotation(), Some(Orthogonal::Householder(_) | Orthogonal::Exp(_))) {
            trainable_rotations += 1;
        }
        let out: Vec<f32> =
            iv.apply(b.clone(), iv.needs_source().then(|| s.clone())).unwrap().into_data().to_vec().unwrap();
        let then: Vec<f32> = tensor(&format!("out.{stem}")).into_data().to_vec().unwrap();
        let diff = out.iter().zip(&then).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-6, "{stem}: output differs from format 1's by {diff:e}");
    }
    // das_full, one das_low_rank, das_boundless, sigmoid_mask_rotated and the rotated ReFTs.
    assert!(trainable_rotations >= 6, "format-1 rotations load trainable ({trainable_rotations})");
}

/// An export from a newer format is refused with the format named, not misread.
#[test]
fn a_newer_format_is_refused_by_name() {
    let dir = temp("newer-format");
    let iv = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::<B>::random(2, D, &mut Rng::new(3), &dev()) });
    let path = dir.join("iv.safetensors");
    export::save(&iv, config(), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut metadata = meta.metadata().clone().unwrap();
    let json = metadata.get_mut(export::METADATA_KEY).unwrap();
    assert!(json.contains(&format!("\"format\":{}", export::FORMAT_VERSION)), "{json}");
    let newer = export::FORMATS_READ.iter().max().unwrap() + 1;
    *json = json.replace(&format!("\"format\":{}", export::FORMAT_VERSION), &format!("\"format\":{newer}"));
    safetensors::serialize_to_file(st.tensors(), Some(metadata.clone()), &path).unwrap();
    let err = export::load::<B>(&path, &dev()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("export format {newer} is not supported")) && err.contains("iv.safetensors"),
        "{err}"
    );
    // Format 3 (a set of interventions) without its `set` entry is damaged, not misread.
    let json = metadata.get_mut(export::METADATA_KEY).unwrap();
    *json = json.replace(&format!("\"format\":{newer}"), "\"format\":3");
    safetensors::serialize_to_file(st.tensors(), Some(metadata), &path).unwrap();
    let err = export::load_set::<B>(&path, &dev()).unwrap_err().to_string();
    assert!(err.contains("format 3 (and only it) lists a set's members"), "{err}");
}

/// A diverged intervention (NaN or infinite parameters) is never written, and a file that has
/// such values anyway (edited, or from another tool) is refused by name: it could only produce
/// NaN wherever it is applied.
#[test]
fn non_finite_parameters_are_neither_exported_nor_loaded() {
    let dir = temp("non-finite");
    let path = dir.join("steer.safetensors");
    let nan = Intervention::Steering(Steering::<B>::fixed(
        Tensor::from_floats([0.5, f32::NAN, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0], &dev()),
        1.0,
    ));
    let e = export::save(&nan, config(), &path).err().unwrap().to_string();
    assert!(e.contains("not exported") && e.contains("non-finite") && e.contains("NaN"), "{e}");
    assert!(!path.exists(), "nothing was written");

    let iv = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::<B>::random(3, D, &mut Rng::new(2), &dev()) });
    export::save(&iv, config(), &path).unwrap();
    edit_r(&path, |r| r[4] = f32::INFINITY);
    let e = export::load::<B>(&path, &dev()).err().unwrap().to_string();
    assert!(
        e.contains("steer.safetensors") && e.contains("tensor `R`") && e.contains("inf") && e.contains("index 4"),
        "{e}"
    );
}

/// Fuzzing the export loader: 10,000 random mutations of exports of every kind (and random
/// bytes), each loaded and, when it loads, applied. The answer is an intervention or an error
/// naming the file, never a panic.
#[test]
fn mutated_exports_never_panic() {
    let cases: usize = std::env::var("FERROVENE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let dir = temp("fuzz");
    let seeds: Vec<Vec<u8>> = every_kind()
        .iter()
        .enumerate()
        .map(|(i, iv)| {
            let p = dir.join(format!("seed-{i}.safetensors"));
            export::save(iv, config(), &p).unwrap();
            std::fs::read(&p).unwrap()
        })
        .collect();
    let path = dir.join("mutated.safetensors");
    let mut rng = Rng::new(18);
    let mut loaded = 0;
    for case in 0..cases {
        let seed = &seeds[rng.below(seeds.len())];
        let bytes = rng.mutated(seed);
        std::fs::write(&path, &bytes).unwrap();
        let outcome = std::panic::catch_unwind(|| {
            let Ok((iv, _)) = export::load::<B>(&path, &dev()) else { return 0 };
            let x = Tensor::<B, 3>::ones([2, 1, D], &dev());
            let _ = iv.apply(x.clone(), Some(x));
            1
        });
        match outcome {
            Ok(n) => loaded += n,
            Err(_) => {
                std::fs::copy(&path, dir.join(format!("panic-{case}.safetensors"))).unwrap();
                panic!("case {case} panicked; the file is kept in {}", dir.display());
            }
        }
    }
    // Most edits break the header, the config or the stored `R`'s agreement with the parameters
    // (2026-11-29: 174 of 10,000 loaded and were applied).
    assert!(
        loaded > cases / 100,
        "only {loaded} of {cases} mutated exports loaded: the test would not reach the tensors"
    );
}
