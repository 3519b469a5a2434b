//! Interventions at several sites at once (`sites = [...]`, `share = ...`), on the tiny Llama of
//! tests/golden/tiny:
//!
//! - DAS at three sites and two positions, trained jointly through the cached path (the bases run
//!   once to the site before them all, the later sites applied as hooks on the way on), gives the
//!   loss and every member's gradient that a plain forward per pair gives with the same
//!   placements written out by hand, within 1e-5; with the first site between blocks and inside
//!   one;
//! - tying (`share = "all"`) gives one parameter set whose gradient is the sum of the gradients of
//!   the same values held apart, one set per site (ReFT);
//! - a set's export (format 3) reads back to the same tensors, the single-intervention loader
//!   refuses it by name, and a run interrupted and resumed ends with the uninterrupted weights;
//! - through the command line, a two-site DAS recipe's IIA is what `trainer eval` gives in a fresh
//!   process, and a two-site ReFT recipe's generations are what `trainer apply --generate` gives.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use ferrovene_data::{TokenizedExample, TokenizedInput};
use ferrovene_interventions::das::DasLowRank;
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_interventions::reft::{ReftFamily, ReftIntervention};
use ferrovene_interventions::{
    Activation, Composition, Intervene, Intervention, InterventionSet, Layout, Orthogonal, Placement, Share,
};
use ferrovene_models::rng::Rng;
use ferrovene_models::{Capture, Component, Cpu, Input, Site, Transformer, forward, gather_positions, load_folder};
use ferrovene_trainer::fit::{FitConfig, FitIo, Outcome, fit};
use ferrovene_trainer::objectives::{das, reft};

type AD = Autodiff<Cpu>;

fn tiny() -> PathBuf {
    let dir = root().join("tests/golden/tiny/llama");
    assert!(dir.exists(), "golden checkpoint {} is missing (copied from ../shared/golden)", dir.display());
    dir
}

fn site(s: &str) -> Site {
    s.parse().unwrap()
}

/// `n` random ids in 1..97 from a small generator.
fn ids(state: &mut u64, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            1 + (*state >> 33) as u32 % 96
        })
        .collect()
}

/// Six pairs of 9-token prompts intervened at positions 4 and 8, with random labels.
fn pairs() -> Vec<TokenizedExample> {
    let mut state = 7;
    (0..6)
        .map(|_| {
            let base = TokenizedInput { ids: ids(&mut state, 9), positions: vec![4, 8] };
            let source = TokenizedInput { ids: ids(&mut state, 9), positions: vec![4, 8] };
            let label = ids(&mut state, 1)[0];
            TokenizedExample::Pair {
                base,
                sources: vec![source],
                base_label: None,
                label: ferrovene_data::LabelId::Token(label),
            }
        })
        .collect()
}

/// A DAS set of rank 3 for `sites` at 2 positions with `share`, drawn from `seed`.
fn das_set<B: burn::tensor::backend::Backend>(sites: &[Site], share: Share, seed: u64) -> InterventionSet<B> {
    let layout = Layout::new(sites, 2, share).unwrap();
    let mut rng = Rng::new(seed);
    let members = (0..layout.members.len())
        .map(|_| {
            Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(3, 32, &mut rng, &Default::default()) })
        })
        .collect();
    InterventionSet::new(members, layout).unwrap()
}

/// Every float parameter's gradient, flattened, in visiting order.
fn gradients<B: AutodiffBackend, M: Module<B>>(module: &M, grads: &B::Gradients) -> Vec<Vec<f32>> {
    struct Grads<'a, B: AutodiffBackend>(&'a B::Gradients, Vec<Vec<f32>>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let g = param.val().grad(self.0).map(|g| g.into_data().to_vec::<f32>().unwrap());
            self.1.push(g.unwrap_or_default());
        }
    }
    let mut v = Grads::<B>(grads, Vec::new());
    module.visit(&mut v);
    v.1
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// The mean counterfactual cross-entropy by the plain path, one pair at a time: the source run
/// in full with its activations captured at every site, then the base run in full with each slot
/// of the set written out as its own placement (its member, its one position, its site's source
/// vector at that position), the head on every position.
fn plain_loss<M: Transformer<AD>>(model: &M, set: &InterventionSet<AD>, pairs: &[TokenizedExample]) -> Tensor<AD, 1> {
    let dev = Default::default();
    let mut total: Option<Tensor<AD, 1>> = None;
    for ex in pairs {
        let TokenizedExample::Pair { base, sources, label, .. } = ex else { unreachable!() };
        let ferrovene_data::LabelId::Token(label) = label else { unreachable!() };
        let mut capture = Capture::new(set.sites());
        forward(model, &Input::<AD>::from_ids(std::slice::from_ref(&sources[0].ids), &dev), &mut capture);
        let mut placements = Vec::new();
        for slot in &set.layout.slots {
            let p = slot.position.expect("one position per slot here");
            let at = |positions: &[usize]| {
                Tensor::<AD, 2, Int>::from_data(TensorData::new(vec![positions[p] as i64], [1, 1]), &dev)
            };
            let source = gather_positions(capture.get(slot.site).unwrap(), at(&sources[0].positions));
            placements.push(
                Placement::new(
                    model.site_info(slot.site).unwrap(),
                    &set.members[slot.member],
                    at(&base.positions),
                    Some(source),
                    vec![],
                )
                .unwrap(),
            );
        }
        let mut hooks = Intervene::new(placements, Composition::Parallel);
        let hidden = forward(model, &Input::<AD>::from_ids(std::slice::from_ref(&base.ids), &dev), &mut hooks);
        let logits = model.head(hidden.narrow(1, base.ids.len() - 1, 1)).unwrap();
        let lp = log_softmax(logits, 2).reshape([-1]);
        let nll = -lp.narrow(0, *label as usize, 1);
        total = Some(match total {
            Some(t) => t + nll,
            None => nll,
        });
    }
    total.unwrap() / pairs.len() as f64
}

#[test]
fn das_at_several_sites_equals_the_plain_forward_in_values_and_gradients() {
    let dev = Default::default();
    let model = load_folder::<AD>(&tiny(), &dev).unwrap().model;
    let examples = pairs();
    let refs: Vec<&TokenizedExample> = examples.iter().collect();
    // First site between blocks (the bases stop there and skip their unchanged prefix), and first
    // site inside a block (they stop at that block's input).
    for sites in [
        vec![site("0.block_output"), site("1.attention_output"), site("2.block_output")],
        vec![site("1.mlp_output"), site("2.block_input"), site("2.block_output")],
    ] {
        let set = das_set::<AD>(&sites, Share::None, 3);
        assert_eq!(set.members.len(), 6, "one member per site and position");
        // One batch of all six: the loss of the cached path is the mean over the same pairs.
        let batches = das::prepare_at(&model, &sites, &refs, 0, 6, &dev).unwrap();
        assert_eq!(batches.len(), 1);
        let cached = das::loss(&model, &batches[0], &set).unwrap();
        let plain = plain_loss(&model, &set, &examples);
        let (c, p): (f32, f32) = (cached.clone().into_scalar(), plain.clone().into_scalar());
        assert!((c - p).abs() < 1e-5, "{sites:?}: cached loss {c}, plain {p}");
        let (gc, gp) = (gradients(&set, &cached.backward()), gradients(&set, &plain.backward()));
        // Each member's parameters (torch's fixed base has none): trained, except the last
        // block's output at position 4, which the label at position 8 never reads.
        let per_member = gc.len() / set.members.len();
        for slot in &set.layout.slots {
            let g = &gc[slot.member * per_member..(slot.member + 1) * per_member];
            let moved = g.iter().flatten().any(|v| *v != 0.0);
            let unread = slot.site == site("2.block_output") && slot.position == Some(0);
            assert_eq!(moved, !unread, "{sites:?}: slot {}", slot.name());
        }
        let d = max_diff(&gc, &gp);
        assert!(d < 1e-5, "{sites:?}: gradients differ by {d}");
    }
}

/// Prompt/target examples of 7 + 3 tokens, intervened at the first and last prompt token.
fn prompts() -> Vec<TokenizedExample> {
    let mut state = 99;
    (0..4)
        .map(|_| TokenizedExample::Prompt {
            prompt: TokenizedInput { ids: ids(&mut state, 7), positions: vec![0, 6] },
            target: ids(&mut state, 3),
        })
        .collect()
}

fn loreft(seed: u64) -> Intervention<AD> {
    Intervention::Reft(ReftIntervention::new(
        ReftFamily::LoReft,
        32,
        2,
        Activation::Identity,
        0.0,
        &mut Rng::new(seed),
        &Default::default(),
    ))
}

#[test]
fn tied_parameters_are_one_set_whose_gradient_is_the_sum() {
    let dev = Default::default();
    let model = load_folder::<AD>(&tiny(), &dev).unwrap().model;
    let sites = [site("0.block_output"), site("2.block_output")];
    assert_eq!(Layout::new(&sites, 2, Share::None).unwrap().members.len(), 4);
    assert_eq!(Layout::new(&sites, 2, Share::Positions).unwrap().members.len(), 2);
    let all = Layout::new(&sites, 2, Share::All).unwrap();
    assert_eq!(all.members, ["all"]);
    let examples = prompts();
    let refs: Vec<&TokenizedExample> = examples.iter().collect();
    let batches = reft::prepare_at(&model, &sites, &refs, 0, 4, &dev).unwrap();

    let tied = InterventionSet::new(vec![loreft(5)], all).unwrap();
    // The same values held apart: one set per site (drawn from the same seed, separate parameters).
    let apart =
        InterventionSet::new(vec![loreft(5), loreft(5)], Layout::new(&sites, 2, Share::Positions).unwrap()).unwrap();
    let (lt, la) =
        (reft::loss(&model, &batches[0], Some(&tied)).unwrap(), reft::loss(&model, &batches[0], Some(&apart)).unwrap());
    let (vt, va): (f32, f32) = (lt.clone().into_scalar(), la.clone().into_scalar());
    assert!((vt - va).abs() < 1e-6, "the same values give the same loss: {vt} vs {va}");
    let gt = gradients(&tied, &lt.backward());
    let ga = gradients(&apart, &la.backward());
    let half = ga.len() / 2;
    let summed: Vec<Vec<f32>> =
        ga[..half].iter().zip(&ga[half..]).map(|(a, b)| a.iter().zip(b).map(|(x, y)| x + y).collect()).collect();
    let d = max_diff(&gt, &summed);
    assert!(d < 1e-5, "the tied gradient differs from the sum by {d}");
    assert!(max_diff(&ga[..half], &ga[half..]) > 1e-4, "the two sites contribute different gradients");
}

fn io<'a>(dir: &'a Path, interrupt: Option<&'a AtomicBool>, resume: bool) -> FitIo<'a> {
    FitIo { run_dir: Some(dir), interrupt, resume, fingerprint: "multi".into(), ..Default::default() }
}

fn temp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-multi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config() -> ExportConfig {
    let placement = PlacementConfig { positions: "4, 8".into(), site_width: 32, ..Default::default() };
    let model = ModelConfig { id: "tiny".into(), revision: None, arch: "llama".into(), hidden_size: 32 };
    ExportConfig::new(placement, model, serde_json::Value::Null)
}

#[test]
fn a_set_exports_reads_back_and_resumes_to_the_uninterrupted_weights() {
    let dev = Default::default();
    let dir = temp("export");
    let sites = [site("0.block_output"), site("2.block_output")];
    let set = das_set::<Cpu>(&sites, Share::None, 4);
    let path = dir.join("set.safetensors");
    export::save_set(&set, config(), &path).unwrap();
    let (back, cfg) = export::load_set::<Cpu>(&path, &dev).unwrap();
    assert_eq!(cfg.format, export::SET_FORMAT_VERSION);
    assert_eq!(back.layout, set.layout);
    let names: Vec<String> = tensors_by_name(&path).into_iter().map(|(n, _)| n).filter(|n| n.ends_with(".R")).collect();
    assert_eq!(
        names,
        ["0.block_output#0.R", "0.block_output#1.R", "2.block_output#0.R", "2.block_output#1.R"],
        "each placement named"
    );
    let again = dir.join("again.safetensors");
    export::save_set(&back, config(), &again).unwrap();
    assert_eq!(tensors_by_name(&again), tensors_by_name(&path), "save → load → save keeps every tensor");
    let e = export::load::<Cpu>(&path, &dev).err().unwrap().to_string();
    assert!(e.contains("4 interventions at 4 placements") && e.contains("load_set"), "{e}");
    // One member at one site is still a format-2 file, which loads both ways.
    let one = das_set::<Cpu>(&sites[..1], Share::Positions, 4);
    export::save_set(&one, config(), &dir.join("one.safetensors")).unwrap();
    let (_, c) = export::load::<Cpu>(&dir.join("one.safetensors"), &dev).unwrap();
    assert_eq!((c.format, c.placement.sites.as_slice()), (2, ["0.block_output".to_string()].as_slice()));

    // Resume: interrupted after one step, resumed into a differently drawn skeleton.
    let model = load_folder::<AD>(&tiny(), &dev).unwrap().model;
    let examples = pairs();
    let refs: Vec<&TokenizedExample> = examples.iter().collect();
    let batches = das::prepare_at(&model, &sites, &refs, 0, 2, &dev).unwrap();
    let none = Vec::new();
    let objective = das::DasObjective::new(&model, &batches, &none, 0.0);
    let cfg = FitConfig { checkpoint_every: 1, checkpoint_minutes: 0.0, ..FitConfig::constant(2, 0.05, 1, true) };
    let straight_dir = dir.join("straight");
    std::fs::create_dir_all(&straight_dir).unwrap();
    let straight =
        fit(&objective, das_set::<AD>(&sites, Share::None, 4), &cfg, io(&straight_dir, None, false)).unwrap();
    assert_eq!(straight.outcome, Outcome::Finished);
    let stop = AtomicBool::new(true);
    let cut = dir.join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    let first = fit(&objective, das_set::<AD>(&sites, Share::None, 4), &cfg, io(&cut, Some(&stop), false)).unwrap();
    assert_eq!((first.outcome, first.state.step), (Outcome::Interrupted, 1));
    let done = fit(&objective, das_set::<AD>(&sites, Share::None, 77), &cfg, io(&cut, None, true)).unwrap();
    assert_eq!(done.outcome, Outcome::Finished);
    let values = |s: &InterventionSet<AD>| {
        s.members
            .iter()
            .flat_map(|m| m.rotation().unwrap().matrix().into_data().to_vec::<f32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(values(&done.module), values(&straight.module), "resumed weights differ from the uninterrupted run");
    assert_eq!(done.state.losses, straight.state.losses);
    let _ = std::fs::remove_dir_all(&dir);
}

fn text(ids: &[u32]) -> String {
    ids.iter().map(|t| format!("t{t}")).collect::<Vec<_>>().join(" ")
}

#[test]
fn a_two_site_das_recipe_evaluates_the_same_in_a_fresh_process() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("llama");
    tiny_with_tokenizer("llama", &model);
    let mut state = 3;
    let lines: Vec<String> = (0..40)
        .map(|i| {
            serde_json::json!({
                "base": text(&ids(&mut state, 9)), "sources": [text(&ids(&mut state, 9))], "positions": [4, 8],
                "label": format!(" t{}", ids(&mut state, 1)[0]), "meta": {"pair": i.to_string()}
            })
            .to_string()
        })
        .collect();
    let pairs = tmp.path().join("pairs.jsonl");
    std::fs::write(&pairs, lines.join("\n") + "\n").unwrap();
    // `sites` added to a recipe that has `site` is refused, naming both keys.
    let out = trainer()
        .args(["das-capitals", "--quiet", "--model"])
        .arg(&model)
        .args(["--set", "sites=[\"0.block_output\", \"2.mlp_output\"]", "--out"])
        .arg(tmp.path().join("refused"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("give `site` (one) or `sites` (several), not both"), "{stderr}");
    let recipe = tmp.path().join("two-sites.toml");
    let own = std::fs::read_to_string(root().join("recipes/das-capitals.toml")).unwrap();
    let own: String =
        own.lines().filter(|l| !l.starts_with("site ") && !l.starts_with("site=")).collect::<Vec<_>>().join("\n");
    std::fs::write(&recipe, own + "\nsites = [\"0.block_output\", \"2.mlp_output\"]\n").unwrap();
    let out = trainer()
        .arg(&recipe)
        .args(["--quiet", "--epochs", "2", "--model"])
        .arg(&model)
        .arg("--set")
        .arg(format!("pairs=\"{}\"", pairs.display()))
        .args(["--set", "rank=4", "--set", "split_by=\"pair\"", "--out"])
        .arg(tmp.path().join("runs"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = only_run(&tmp.path().join("runs/two-sites"));
    let iia = report(&run)["metrics"]["dev"]["iia"].as_f64().unwrap();
    let export = run.join("intervention.safetensors");
    let (set, _) = export::load_set::<Cpu>(&export, &Default::default()).unwrap();
    assert_eq!(set.layout.members, ["0.block_output#0", "0.block_output#1", "2.mlp_output#0", "2.mlp_output#1"]);
    let eval = trainer()
        .args(["eval", "--json", "--intervention"])
        .arg(&export)
        .arg("--pairs")
        .arg(run.join("dev.jsonl"))
        .arg("--model")
        .arg(&model)
        .output()
        .unwrap();
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let fresh: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(fresh["overall"]["iia"].as_f64(), Some(iia), "eval in a fresh process: {fresh}");
    assert_eq!(fresh["site"], "0.block_output, 2.mlp_output");

    // Per-position parameters need as many positions in every example: refused before any run
    // folder is made, naming the example and the way out.
    let mut lines = lines;
    lines[5] = lines[5].replace("\"positions\":[4,8]", "\"positions\":[8]");
    let uneven = tmp.path().join("uneven.jsonl");
    std::fs::write(&uneven, lines.join("\n") + "\n").unwrap();
    let out = trainer()
        .arg(&recipe)
        .args(["--quiet", "--model"])
        .arg(&model)
        .arg("--set")
        .arg(format!("pairs=\"{}\"", uneven.display()))
        .args(["--set", "rank=4", "--set", "split_by=\"pair\"", "--out"])
        .arg(tmp.path().join("uneven-runs"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("the first gives 2 and example 6") && stderr.contains("share = \"positions\""), "{stderr}");
    assert!(!tmp.path().join("uneven-runs").exists(), "no run folder for a refused recipe");
}

#[test]
fn a_two_site_reft_recipe_generates_the_same_through_apply_in_a_fresh_process() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("llama");
    tiny_with_tokenizer("llama", &model);
    let mut state = 11;
    let examples: Vec<String> = (0..3)
        .map(|_| {
            format!("{{ prompt = \"{}\", target = \" {}\" }}", text(&ids(&mut state, 6)), text(&ids(&mut state, 3)))
        })
        .collect();
    let recipe = tmp.path().join("reft-two.toml");
    std::fs::write(
        &recipe,
        format!(
            "description = \"two-site LoReFT on the tiny Llama\"\nkind = \"reft-memorise\"\nmodel = \"{}\"\n\
             sites = [\"0.block_output\", \"2.block_output\"]\nrank = 4\npositions = \"f1+l1\"\nlr = 0.02\n\
             max_steps = 60\ncheck_every = 5\nseed = 1\ngenerate = 3\nexamples = [{}]\n",
            model.display(),
            examples.join(", ")
        ),
    )
    .unwrap();
    let out = trainer().arg(&recipe).args(["--quiet", "--out"]).arg(tmp.path().join("runs")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = only_run(&tmp.path().join("runs/reft-two"));
    let r = report(&run);
    let export = run.join("intervention.safetensors");
    let (set, _) = export::load_set::<Cpu>(&export, &Default::default()).unwrap();
    assert_eq!(set.members.len(), 4, "two sites × first and last token");
    let taught = r["taught"].as_array().unwrap_or_else(|| panic!("no `taught` in {r}"));
    for t in taught {
        let prompt = t["prompt"].as_str().unwrap();
        let o = trainer()
            .args(["apply", "--json", "--generate", "3", "--positions", "f1+l1", "--intervention"])
            .arg(&export)
            .args(["--prompt", prompt])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let fresh: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(fresh["with"], t["with"], "{prompt}: apply in a fresh process vs the run: {fresh}");
    }
    // One position for a set with parameters for two: refused, saying how many to give.
    let o = trainer()
        .args(["apply", "--positions", "last", "--intervention"])
        .arg(&export)
        .args(["--prompt", "t1 t2 t3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("at each of 2 positions per prompt"), "{stderr}");
}

#[test]
fn the_cached_das_path_stops_before_every_site() {
    // The batch's checkpoint is the site before them all: between blocks when the first is, else
    // the input of its block.
    let cases = [
        (vec!["2.block_output", "0.block_output"], "0.block_output"),
        (vec!["1.mlp_output", "2.block_output"], "1.block_input"),
        (vec!["1.block_output", "1.mlp_output"], "1.block_input"),
        (vec!["embeddings", "0.block_input"], "embeddings"),
    ];
    for (sites, expected) in cases {
        let sites: Vec<Site> = sites.into_iter().map(site).collect();
        assert_eq!(ferrovene_interventions::checkpoint_site(&sites), Some(site(expected)), "{sites:?}");
    }
    assert_eq!(Site::new(1, Component::BlockInput).to_string(), "1.block_input");
}
