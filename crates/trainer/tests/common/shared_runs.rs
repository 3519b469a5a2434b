//! What the tests of shared training (`--devices`, `--nodes`) run and compare: recipes on the
//! tiny Llama over made-up token sequences, each step's loss from the events, and what training
//! determined from the export.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use ferrovene_interventions::export;
use ferrovene_models::Cpu;

use super::common::*;

/// `n` random ids in 1..97 from a small generator.
pub fn ids(state: &mut u64, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            1 + (*state >> 33) as u32 % 96
        })
        .collect()
}

pub fn text(ids: &[u32]) -> String {
    ids.iter().map(|i| format!("t{i}")).collect::<Vec<_>>().join(" ")
}

/// `n` DAS pairs of made-up token sequences (bases and sources of 7 tokens, the intervened
/// position 3, a one-token label), drawn from `state`, as JSON lines.
pub fn das_pairs(state: &mut u64, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "base": text(&ids(state, 7)), "sources": [text(&ids(state, 7))], "positions": [3],
                "label": format!(" t{}", ids(state, 1)[0]), "meta": {"pair": i.to_string()}
            })
            .to_string()
        })
        .collect()
}

/// A recipe of `kind` on the tiny Llama in `dir`, with `body`'s keys and `lines` as its examples.
pub fn recipe(dir: &Path, kind: &str, body: &str, lines: &[String]) -> PathBuf {
    let model = dir.join("llama");
    if !model.exists() {
        tiny_with_tokenizer("llama", &model);
    }
    let pairs = dir.join(format!("{kind}.jsonl"));
    std::fs::write(&pairs, lines.join("\n") + "\n").unwrap();
    let path = dir.join(format!("{kind}-shared.toml"));
    std::fs::write(
        &path,
        format!(
            "description = \"{kind} on the tiny Llama\"\nkind = \"{kind}\"\nmodel = {:?}\npairs = {:?}\nseed = 5\n\
             dev_fraction = 0.25\nsplit_by = \"pair\"\n{body}",
            model.display().to_string(),
            pairs.display().to_string()
        ),
    )
    .unwrap();
    path
}

/// Runs `recipe` with `args`; the run folder.
pub fn run(recipe: &Path, args: &[&str], out: &Path) -> PathBuf {
    let o = trainer().arg(recipe).arg("--quiet").args(args).arg("--out").arg(out).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    only_run(&out.join(recipe.file_stem().unwrap()))
}

/// Every step's training loss, from the run's TensorBoard events.
pub fn losses(run: &Path) -> Vec<f32> {
    let mut l: Vec<(i64, f32)> = read_scalars(&run.join("tensorboard"))
        .into_iter()
        .filter(|(tag, _, _)| tag == "train/loss")
        .map(|(_, step, v)| (step, v))
        .collect();
    l.sort_by_key(|&(s, _)| s);
    l.into_iter().map(|(_, v)| v).collect()
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn values<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// What training determined: for a rotation, its subspace (the projector `RᵀR`; DAS's loss does
/// not change when `R` turns inside it); for the other parameters, their values.
pub fn trained(run: &Path) -> Vec<f32> {
    let (set, _) = export::load_set::<Cpu>(&run.join("intervention.safetensors"), &Default::default()).unwrap();
    let iv = set.first();
    if let Some(r) = iv.rotation() {
        let r = r.matrix();
        let mut v = values(r.clone().transpose().matmul(r));
        if let ferrovene_interventions::Intervention::Boundless(b) = iv {
            v.extend(values(b.boundary.val()));
        }
        return v;
    }
    struct All(Vec<f32>);
    impl ModuleVisitor<Cpu> for All {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Cpu, D>>) {
            self.0.extend(values(param.val()));
        }
    }
    let mut all = All(Vec::new());
    iv.visit(&mut all);
    all.0
}
