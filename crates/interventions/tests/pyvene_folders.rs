//! Folders pyvene 0.1.8 and pyreft 0.1.0 saved for the tiny GPT-2 (tests/golden/pyvene_saves:
//! low-rank DAS, Boundless DAS, two low-rank DAS at two layers, LoReFT; each trained 20 steps),
//! read by `pyvene::read_folder`: each materialised rotation equals the one pyvene had within
//! 1e-6, and the model with the interventions placed as pyvene placed them gives pyvene's logits
//! within 1e-5. Also: an orthonormal completion keeps `W` exactly, and bad folders are refused by
//! file and key.

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};
use ferrovene_interventions::orthogonal::orthonormal_completion;
use ferrovene_interventions::pyvene::read_folder;
use ferrovene_interventions::{Composition, Intervene, Placement};
use ferrovene_models::{Capture, Input, Transformer, forward, gather_positions, load_folder};

type B = ferrovene_models::Cpu;

fn golden(rest: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden").join(rest);
    assert!(p.exists(), "golden {} is missing (copied from ../shared/golden)", p.display());
    p
}

/// `reference.safetensors`: its tensors as `(values, shape)` and its metadata.
fn reference(dir: &Path) -> (Vec<(String, Vec<f32>, Vec<usize>)>, std::collections::HashMap<String, String>) {
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, ferrovene_models::weights::f32_from_le(v.data()), v.shape().to_vec()))
        .collect();
    (tensors, meta.metadata().clone().unwrap())
}

fn ints(rows: &[i64]) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(rows.to_vec(), [1, rows.len()]), &Default::default())
}

#[test]
fn pyvene_and_pyreft_folders_give_their_rotations_and_logits() {
    let dev = Default::default();
    let model = load_folder::<B>(&golden("tiny/gpt2"), &dev).unwrap().model;
    for case in ["lowrank_das", "boundless_das", "two_sites", "loreft"] {
        let dir = golden(&format!("pyvene_saves/{case}"));
        let folder = read_folder::<B>(&dir, &dev).unwrap_or_else(|e| panic!("{case}: {e}"));
        let (tensors, meta) = reference(&dir);
        let get = |name: &str| tensors.iter().find(|(n, _, _)| n == name).map(|(_, v, s)| (v.clone(), s.clone()));
        // Rotations: pyvene's W (d × k, rotated = h W) is our Rᵀ.
        for (i, iv) in folder.set.members.iter().enumerate() {
            let Some((w, shape)) = get(&format!("W.{i}")) else { continue };
            let r: Vec<f32> = iv.rotation().unwrap().matrix().into_data().to_vec().unwrap();
            let (d, k) = (shape[0], shape[1]);
            let worst = (0..d)
                .flat_map(|a| (0..k).map(move |b| (a, b)))
                .map(|(a, b)| (w[a * k + b] - r[b * d + a]).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-6, "{case}: W.{i} differs by {worst}");
        }
        // Logits, with pyvene's unit locations: sources[i] → base[i] for intervention i.
        let parse = |k: &str| -> serde_json::Value { serde_json::from_str(&meta[k]).unwrap() };
        let (base_ids, source_ids, locations) = (parse("base_ids"), parse("source_ids"), parse("unit_locations"));
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            v[0].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
        };
        let (base, source) = (ids(&base_ids), ids(&source_ids));
        let positions = |v: &serde_json::Value| -> Vec<i64> {
            v[0].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
        };
        let mut capture = Capture::new(folder.set.sites());
        forward(&model, &Input::<B>::from_ids(std::slice::from_ref(&source), &dev), &mut capture);
        let pairs = &locations["sources->base"];
        let placements: Vec<Placement<'_, B>> = folder
            .set
            .layout
            .slots
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let at = ints(&positions(&pairs[1][i]));
                let source = (!pairs[0].is_null())
                    .then(|| gather_positions(capture.get(slot.site).unwrap(), ints(&positions(&pairs[0][i]))));
                Placement::new(
                    model.site_info(slot.site).unwrap(),
                    &folder.set.members[slot.member],
                    at,
                    source,
                    vec![],
                )
                .unwrap()
            })
            .collect();
        let hidden = forward(
            &model,
            &Input::<B>::from_ids(std::slice::from_ref(&base), &dev),
            &mut Intervene::new(placements, Composition::Parallel),
        );
        let logits: Vec<f32> = model.head(hidden).unwrap().into_data().to_vec().unwrap();
        let (want, _) = get("logits").unwrap();
        let worst = logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        eprintln!("{case}: {} ({:?}), logits within {worst:e}", folder.classes.join(", "), folder.set.layout.members);
        assert!(worst < 1e-5, "{case}: logits differ from pyvene's by {worst}");
    }
}

#[test]
fn an_orthonormal_completion_keeps_w_and_is_orthonormal() {
    let dir = golden("pyvene_saves/lowrank_das");
    let folder = read_folder::<B>(&dir, &Default::default()).unwrap();
    let r: Vec<f32> = folder.set.members[0].rotation().unwrap().matrix().into_data().to_vec().unwrap();
    let (k, d) = (4, 32);
    let w: Vec<f32> = (0..d * k).map(|i| r[(i % k) * d + i / k]).collect();
    let full = orthonormal_completion(&w, d, k);
    for i in 0..d {
        for j in 0..k {
            assert_eq!(full[i * d + j], w[i * k + j], "the first k columns are W itself");
        }
    }
    for a in 0..d {
        for b in 0..d {
            let dot: f64 = (0..d).map(|i| full[i * d + a] as f64 * full[i * d + b] as f64).sum();
            let want = if a == b { 1.0 } else { 0.0 };
            assert!((dot - want).abs() < 1e-6, "columns {a}, {b}: {dot}");
        }
    }
}

#[test]
fn bad_folders_are_refused_naming_the_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let src = golden("pyvene_saves/lowrank_das");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let cfg = std::fs::read_to_string(tmp.path().join("config.json")).unwrap();
    let write = |text: String| std::fs::write(tmp.path().join("config.json"), text).unwrap();
    write(cfg.replace("\"block_output\"", "\"resid_mid\""));
    let e = read_folder::<B>(tmp.path(), &Default::default()).err().unwrap().to_string();
    assert!(
        e.contains("config.json") && e.contains("representations[0] (component)") && e.contains("resid_mid"),
        "{e}"
    );
    write(cfg.replace("LowRankRotatedSpaceIntervention", "NoiseIntervention"));
    let e = read_folder::<B>(tmp.path(), &Default::default()).err().unwrap().to_string();
    assert!(e.contains("class `NoiseIntervention` is not read here") && e.contains(".bin"), "{e}");
    write(cfg.replace("LowRankRotatedSpaceIntervention", "SigmoidMaskIntervention"));
    let e = read_folder::<B>(tmp.path(), &Default::default()).err().unwrap().to_string();
    assert!(e.contains("SigmoidMaskIntervention needs `mask`"), "{e}");
    write(cfg.replace("LowRankRotatedSpaceIntervention", "LoreftIntervention"));
    let e = read_folder::<B>(tmp.path(), &Default::default()).err().unwrap().to_string();
    assert!(e.contains("LoreftIntervention needs `rotate_layer`"), "{e}");
}

/// `(key, shape, dtype)` of every tensor in a torch file, by burn-store's reader.
fn structure(path: &Path) -> Vec<(String, Vec<usize>, String)> {
    let reader = burn_store::pytorch::PytorchReader::new(path).unwrap();
    let mut out: Vec<(String, Vec<usize>, String)> =
        reader.tensors().iter().map(|(k, t)| (k.clone(), t.shape.to_vec(), format!("{:?}", t.dtype))).collect();
    out.sort();
    out
}

fn bin_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bin"))
        .collect();
    v.sort();
    v
}

#[test]
fn written_folders_have_pyvenes_structure_and_read_back_the_same() {
    let dev = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    for case in ["lowrank_das", "boundless_das", "two_sites", "loreft"] {
        let dir = golden(&format!("pyvene_saves/{case}"));
        let folder = read_folder::<B>(&dir, &dev).unwrap();
        let out = tmp.path().join(case);
        let keys = ferrovene_interventions::pyvene_save::write_folder(&folder.set, &|_| 32, &out).unwrap();
        assert_eq!(keys, folder.keys, "{case}: pyvene's keys");
        assert_eq!(bin_files(&out), bin_files(&dir), "{case}: the same files");
        for f in bin_files(&dir) {
            assert_eq!(structure(&out.join(&f)), structure(&dir.join(&f)), "{case}/{f}: keys, shapes, dtypes");
        }
        let json = |d: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap()
        };
        let (ours, theirs) = (json(&out), json(&dir));
        for field in [
            "intervention_types",
            "representations",
            "sorted_keys",
            "intervention_dimensions",
            "intervention_constant_sources",
            "mode",
        ] {
            assert_eq!(ours[field], theirs[field], "{case}: config.json `{field}`");
        }
        // Read back: every parameter as it was.
        let back = read_folder::<B>(&out, &dev).unwrap();
        for (a, b) in folder.set.members.iter().zip(&back.set.members) {
            let (wa, wb) = (a.written(), b.written());
            assert_eq!(wa.tensors.len(), wb.tensors.len(), "{case}");
            for ((na, da), (nb, db)) in wa.tensors.iter().zip(&wb.tensors) {
                assert_eq!(na, nb);
                let (va, vb) = (da.to_vec::<f32>().unwrap(), db.to_vec::<f32>().unwrap());
                let worst = va.iter().zip(&vb).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                assert!(worst < 1e-6, "{case}: `{na}` differs by {worst} after write and read");
            }
        }
    }
}

#[test]
fn a_rotation_outside_torchs_parametrisation_is_written_so_that_torchs_gives_it_back() {
    use ferrovene_interventions::das::DasLowRank;
    use ferrovene_interventions::{Intervention, InterventionSet, Orthogonal};
    let dev = Default::default();
    let r = Orthogonal::<B>::random(3, 32, &mut ferrovene_models::rng::Rng::new(5), &dev).matrix();
    let iv = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::fixed(r.clone()) });
    let set = InterventionSet::single(iv, "1.block_output".parse().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    ferrovene_interventions::pyvene_save::write_folder(&set, &|_| 32, tmp.path()).unwrap();
    let back = read_folder::<B>(tmp.path(), &dev).unwrap();
    let got: Vec<f32> = back.set.members[0].rotation().unwrap().matrix().into_data().to_vec().unwrap();
    let want: Vec<f32> = r.into_data().to_vec().unwrap();
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(worst < 1e-6, "torch's parametrisation of the written base and X gives R within {worst}");
}

/// The keys of each pyreft / pyvene class's `state_dict()`, as pyreft 0.1.0's and pyvene 0.1.8's
/// sources define them (pyvene's `Intervention` registers the `embed_dim` and `interchange_dim`
/// buffers; torch's orthogonal parametrisation keeps `original` and `0.base`).
const ROTATION: [&str; 2] =
    ["rotate_layer.parametrizations.weight.0.base", "rotate_layer.parametrizations.weight.original"];

#[test]
fn every_reft_family_and_the_sigmoid_masks_are_written_with_their_classs_keys_and_read_back_the_same() {
    use ferrovene_interventions::activation::Activation;
    use ferrovene_interventions::das::SigmoidMask;
    use ferrovene_interventions::reft::{ReftFamily, ReftIntervention};
    use ferrovene_interventions::{Intervention, InterventionSet, Orthogonal};
    let dev = Default::default();
    let mut rng = ferrovene_models::rng::Rng::new(11);
    let (d, k) = (32, 3);
    let buffers = ["embed_dim", "interchange_dim"];
    let projections = |names: &[&str]| -> Vec<String> {
        names.iter().flat_map(|n| [format!("{n}.weight"), format!("{n}.bias")]).collect()
    };
    let reft = |family, rng: &mut ferrovene_models::rng::Rng| {
        let mut r = ReftIntervention::<B>::new(family, d, k, Activation::Identity, 0.0, rng, &dev);
        // A bias other than the zero it starts at, so that reading it back is a real check.
        r.learned_bias = r.learned_bias.map(|_| burn::module::Param::from_tensor(rng.normal_tensor([k], &dev)));
        Intervention::Reft(r)
    };
    let mut cases: Vec<(Intervention<B>, &str, Vec<String>)> = vec![];
    for (family, class, mut keys) in [
        (ReftFamily::LoReft, "LoreftIntervention", vec!["weight".into(), "bias".into(), "rotate_layer".into()]),
        (ReftFamily::NoReft, "NoreftIntervention", projections(&["proj_layer", "learned_source"])),
        (ReftFamily::NoDiReft, "NodireftIntervention", projections(&["proj_layer", "learned_source"])),
        (
            ReftFamily::DiReft,
            "DireftIntervention",
            [projections(&["learned_source"]), ROTATION.map(String::from).to_vec()].concat(),
        ),
        (
            ReftFamily::ConsReft,
            "ConsreftIntervention",
            [vec!["learned_source".into()], ROTATION.map(String::from).to_vec()].concat(),
        ),
        (
            ReftFamily::LoBiReft,
            "LobireftIntervention",
            [vec!["learned_source".into()], ROTATION.map(String::from).to_vec()].concat(),
        ),
    ] {
        if family != ReftFamily::LoReft {
            keys.extend(buffers.map(String::from));
        }
        cases.push((reft(family, &mut rng), class, keys));
    }
    let mask = |rotation, rng: &mut ferrovene_models::rng::Rng| {
        let mask = burn::module::Param::from_tensor(rng.normal_tensor([d], &dev));
        Intervention::SigmoidMask(SigmoidMask::<B> { mask, rotation, temperature: 0.7 })
    };
    let rotation = Some(Orthogonal::random(d, d, &mut rng, &dev));
    let rotated_keys = [&buffers[..], &["masks", "temperature"], &ROTATION[..]].concat();
    cases.push((
        mask(rotation, &mut rng),
        "SigmoidMaskRotatedSpaceIntervention",
        rotated_keys.iter().map(|s| s.to_string()).collect(),
    ));
    cases.push((
        mask(None, &mut rng),
        "SigmoidMaskIntervention",
        [&buffers[..], &["mask", "temperature"]].concat().iter().map(|s| s.to_string()).collect(),
    ));

    let base = rng.normal_tensor::<B, 3>([2, 4, d], &dev);
    let source = rng.normal_tensor::<B, 3>([2, 4, d], &dev);
    for (iv, class, mut keys) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let source = iv.needs_source().then(|| source.clone());
        let want: Vec<f32> = iv.apply(base.clone(), source.clone()).unwrap().into_data().to_vec().unwrap();
        let set = InterventionSet::single(iv, "1.block_output".parse().unwrap());
        let written = ferrovene_interventions::pyvene_save::write_folder(&set, &|_| d, tmp.path()).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap()).unwrap();
        let types = config["intervention_types"][0].as_str().unwrap();
        assert!(types.ends_with(&format!(".{class}'>")), "{class}: config.json names {types}");
        let got_keys: Vec<String> =
            structure(&tmp.path().join(format!("intkey_{}.bin", written[0]))).into_iter().map(|(k, _, _)| k).collect();
        keys.sort();
        assert_eq!(got_keys, keys, "{class}: the state dict's keys");
        let back = read_folder::<B>(tmp.path(), &dev).unwrap();
        let got: Vec<f32> = back.set.members[0].apply(base.clone(), source).unwrap().into_data().to_vec().unwrap();
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-5, "{class}: read back, it computes within {worst} of what was written");
    }
}
