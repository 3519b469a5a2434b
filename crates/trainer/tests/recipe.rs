//! Recipes: parsing (unknown keys named), overrides, `trainer list`, and a short run of the
//! shipped `das-capitals` recipe whose export `trainer eval` reproduces on the held-out pairs.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferrovene_trainer::experiments::Recipe;
use ferrovene_trainer::experiments::pairs::PairRecipe;

mod common;

use common::{only_run, root, tensors_by_name, trainer};

#[test]
fn recipes_parse_and_refuse_unknown_keys() {
    let r = Recipe::from_file(&root().join("recipes/das-capitals.toml")).unwrap();
    assert_eq!(das(&r).site.unwrap().to_string(), "6.block_output");
    let text = std::fs::read_to_string(root().join("recipes/das-capitals.toml")).unwrap();
    let e = format!("{:#}", Recipe::from_toml(&format!("{text}\nlearning_rate = 0.1\n")).unwrap_err());
    assert!(e.contains("learning_rate"), "{e}");
    let e = format!("{:#}", Recipe::from_toml(&text.replace("kind = \"das\"", "kind = \"steer\"")).unwrap_err());
    assert!(e.contains("steer") && e.contains("das") && e.contains("boundless"), "{e}");
    let o =
        r.with_overrides(&["lr=0.05".into(), "site=\"8.block_output\"".into(), "split_by=template".into()]).unwrap();
    let o = das(&o);
    assert_eq!(
        (o.lr, o.site.unwrap().to_string().as_str(), o.split_by.as_deref()),
        (0.05, "8.block_output", Some("template"))
    );
    let e = format!("{:#}", r.with_overrides(&["lrr=1".into()]).unwrap_err());
    assert!(e.contains("with --set lrr=1: unknown field `lrr`") && e.contains("`lr`"), "{e}");
    // A site that does not parse is refused when the recipe is read, naming it.
    let e = format!("{:#}", r.with_overrides(&["site=\"8.blok_output\"".into()]).unwrap_err());
    assert!(e.contains("8.blok_output") && e.contains("block_output"), "{e}");
}

/// The pair-file recipe inside a `das` recipe.
fn das(r: &Recipe) -> &PairRecipe {
    match r {
        Recipe::Das(p) => p,
        other => panic!("a das recipe: {other:?}"),
    }
}

#[test]
fn a_site_the_model_lacks_is_refused_before_a_run_folder_is_made() {
    let out_dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-badsite-{}", std::process::id()));
    let out =
        trainer().args(["das-capitals", "--set", "site=\"99.block_output\"", "--out"]).arg(&out_dir).output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("99.block_output"), "{e}");
    assert!(!out_dir.join("das-capitals").exists(), "no run folder for a recipe that cannot run");
}

#[test]
fn list_describes_the_recipes() {
    let out = trainer().arg("list").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("das-capitals") && text.contains("DAS (rank 32)"), "{text}");
    let out = trainer().arg("no-such-recipe").output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("no recipe `no-such-recipe`") && e.contains("das-capitals"), "{e}");
}

#[test]
fn a_short_run_leaves_export_report_and_recipe_and_eval_reproduces_it() {
    let out_dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-runs-{}", std::process::id()));
    let out = trainer().args(["das-capitals", "--epochs", "1", "--out"]).arg(&out_dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = only_run(&out_dir.join("das-capitals"));
    for f in ["intervention.safetensors", "report.json", "recipe.toml", "dev.jsonl"] {
        assert!(run.join(f).exists(), "{f} missing in {}", run.display());
    }
    let as_run = Recipe::from_file(&run.join("recipe.toml")).unwrap();
    assert_eq!(das(&as_run).epochs, 1, "the recipe as run records the override");
    let report = common::report(&run);
    assert_eq!(report["metrics"]["controls"]["no_intervention"]["iia"], 0.0);
    assert!(report["data"]["hash_fnv1a64"].as_str().unwrap().len() == 16);
    // What it computed on: the device, burn's backend, the precision and the weights' memory
    // (SmolLM2's 134.5M parameters in f32, its tied head held twice: ~650 MB).
    let compute = &report["compute"];
    assert_eq!((compute["device"].as_str(), compute["dtype"].as_str()), (Some("cpu"), Some("f32")), "{compute}");
    assert!(!compute["backend"].as_str().unwrap_or_default().is_empty(), "{compute}");
    let bytes = compute["model_bytes"].as_u64().unwrap_or_default();
    assert!((600_000_000..700_000_000).contains(&bytes), "model_bytes {bytes}");
    let out = trainer()
        .args(["eval", "--json", "--intervention"])
        .arg(run.join("intervention.safetensors"))
        .arg("--pairs")
        .arg(run.join("dev.jsonl"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(eval["overall"]["iia"], report["metrics"]["dev"]["iia"], "eval reproduces the run's dev IIA");
    assert_eq!(eval["overall"]["iia_no_intervention"], report["metrics"]["controls"]["no_intervention"]["iia"]);
}

/// A small DAS recipe on four countries of the capitals pairs, checkpointing every 2 steps.
fn small_recipe(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("datasets/capitals/capitals.jsonl")).unwrap();
    let keep = ["France", "Japan", "Italy", "Spain"];
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            keep.contains(&v["meta"]["base"].as_str().unwrap_or(""))
        })
        .collect();
    assert!(lines.len() >= 40, "capitals.jsonl has pairs for {keep:?}");
    let pairs = dir.join("pairs.jsonl");
    std::fs::write(&pairs, lines.join("\n")).unwrap();
    let recipe = dir.join("das-small.toml");
    std::fs::write(
        &recipe,
        format!(
            "description = \"small\"\nkind = \"das\"\nmodel = \"smollm2-135m\"\npairs = {:?}\nsite = \"6.block_output\"\nrank = 8\n\
             batch_size = 4\nepochs = 3\nlr = 0.05\nwarmup = 0.1\nschedule = \"cosine\"\ngrad_clip = 5.0\nseed = 3\n\
             dev_fraction = 0.25\nsplit_by = \"base\"\ncheckpoint_every = 2\n",
            pairs.display().to_string()
        ),
    )
    .unwrap();
    recipe
}

#[cfg(unix)]
#[test]
fn ctrl_c_and_sigterm_write_a_checkpoint_and_resume_ends_where_an_uninterrupted_run_ends() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = small_recipe(&dir);

    let straight_root = dir.join("straight");
    let out = trainer().arg(&recipe).arg("--out").arg(&straight_root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let straight = only_run(&straight_root.join("das-small"));

    let report = common::report(&straight);
    // Ctrl-C (SIGINT, exit 130), SIGTERM (what `timeout` and schedulers send, exit 143) and
    // SIGKILL (no chance to write anything) once the first checkpoint is on disk: --resume goes on
    // from the last checkpoint to the uninterrupted run's weights, and TensorBoard has each step
    // once.
    let mut cut = PathBuf::new();
    for (signal, code) in [("-INT", Some(130)), ("-TERM", Some(143)), ("-KILL", None)] {
        let cut_root = dir.join(format!("cut{signal}"));
        let child =
            trainer().arg(&recipe).arg("--out").arg(&cut_root).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let started = std::time::Instant::now();
        let latest = loop {
            let found = std::fs::read_dir(cut_root.join("das-small"))
                .ok()
                .and_then(|mut d| d.next())
                .map(|e| e.unwrap().path().join("checkpoints/latest"));
            if let Some(l) = found.filter(|l| l.exists()) {
                break l;
            }
            assert!(started.elapsed().as_secs() < 300, "no checkpoint appeared");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let status = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), code, "kill {signal}: interrupted runs exit with {code:?}: {stderr}");
        if code.is_some() {
            assert!(stderr.contains("--resume"), "the message says how to go on: {stderr}");
        }
        cut = only_run(&cut_root.join("das-small"));
        assert!(latest.exists() && !cut.join("intervention.safetensors").exists());
        let state: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                cut.join("checkpoints").join(std::fs::read_to_string(&latest).unwrap().trim()).join("state.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let steps_at_cut = state["step"].as_u64().unwrap();
        let total = report["training"]["steps"].as_u64().unwrap();
        assert!(steps_at_cut >= 2 && steps_at_cut < total, "kill {signal}: cut at step {steps_at_cut} of {total}");

        let out = trainer().arg(&recipe).arg("--resume").arg(&cut).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            tensors_by_name(&cut.join("intervention.safetensors")),
            tensors_by_name(&straight.join("intervention.safetensors")),
            "kill {signal}: the resumed run's weights differ from the uninterrupted run's"
        );
        let resumed = common::report(&cut);
        assert_eq!(resumed["metrics"], report["metrics"]);
        assert_eq!(resumed["training"]["resumed"], true);
        // TensorBoard: one event file per process, both in the run's folder.
        let event_files = std::fs::read_dir(cut.join("tensorboard"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("events.out"))
            .count();
        assert_eq!(event_files, 2);
        let scalars = common::read_scalars(&cut.join("tensorboard"));
        let mut loss_steps: Vec<i64> = scalars.iter().filter(|s| s.0 == "train/loss").map(|s| s.1).collect();
        loss_steps.sort();
        assert_eq!(
            loss_steps,
            (1..=total as i64).collect::<Vec<_>>(),
            "kill {signal}: every step's loss once in TensorBoard"
        );
    }
    // --resume takes the recipe as run; overrides are refused.
    let out = trainer().arg(&recipe).arg("--resume").arg(&cut).args(["--seed", "4"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn bad_recipes_say_what_is_wrong() {
    let text = std::fs::read_to_string(root().join("recipes/das-capitals.toml")).unwrap();
    let err = |t: &str| format!("{:#}", Recipe::from_toml(t).unwrap_err());
    assert!(err(&text.replace("rank = 32\n", "")).contains("kind `das` needs `rank`"));
    assert!(err(&format!("{text}\nboundary_penalty = 1.0\n")).contains("`boundary_penalty` is a Boundless DAS key"));
    assert!(
        err(&text.replace("dev_fraction = 0.25", "dev_fraction = 1.5"))
            .contains("`dev_fraction` must be between 0 and 1")
    );
    assert!(err(&text.replace("epochs = 4", "epochs = 0")).contains("at least 1"));
    assert!(err(&format!("{text}\nheld_out = \"test.jsonl\"\n")).contains("either `held_out`"));
    assert!(
        err(&text.replace("dev_fraction = 0.25", ""))
            .contains("`dev_fraction` (a share of `pairs`, with `split_by`) or `held_out`")
    );
    assert!(err(&text.replace("split_by = \"base\"", "")).contains("`split_by`"));
    assert!(err(&text.replace("kind = \"das\"", "kind = \"dass\"")).contains("unknown variant `dass`"));
    assert!(err(&format!("{text}\nschedule = \"cosin\"\n")).contains("cosin"));
    assert!(err(&format!("{text}\n[early_stopping]\npatience = 2\nmetrc = \"loss\"\n")).contains("metrc"));
    let r = Recipe::from_toml(&text).unwrap();
    let e = format!(
        "{:#}",
        r.with_overrides(&["early_stopping={patience=2}".into(), "validation_fraction=0".into()]).unwrap_err()
    );
    assert!(e.contains("validation_fraction"), "{e}");
    let o = r.with_overrides(&["grad_clip=1.0".into(), "schedule=cosine".into(), "accumulate=2".into()]).unwrap();
    let o = das(&o);
    assert_eq!((o.grad_clip, o.schedule, o.accumulate), (Some(1.0), ferrovene_trainer::schedule::Decay::Cosine, 2));
}

fn write_recipe(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn probe_and_reft_recipes_run_end_to_end() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-kinds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // probe: the sentiment word decides the class; held-out words
    let good = ["great", "wonderful", "brilliant", "superb", "lovely", "excellent", "fantastic", "delightful"];
    let bad = ["awful", "terrible", "dreadful", "boring", "horrible", "dull", "painful", "lousy"];
    // the last two words of each class are held out in a file of their own (`held_out`)
    let (mut lines, mut held) = (Vec::new(), Vec::new());
    for (class, words) in [(1, good), (0, bad)] {
        for (i, w) in words.iter().enumerate() {
            for frame in ["I thought this movie was {}.", "The food here is {}.", "Honestly, the book felt {}."] {
                let line = serde_json::json!({"text": frame.replace("{}", w), "class": class, "positions": ["last"], "meta": {"word": w}}).to_string();
                if i < 6 { lines.push(line) } else { held.push(line) }
            }
        }
    }
    std::fs::write(dir.join("texts.jsonl"), lines.join("\n")).unwrap();
    std::fs::write(dir.join("held-out.jsonl"), held.join("\n")).unwrap();
    let recipe = write_recipe(
        &dir,
        "probe-small",
        &format!(
            "description = \"probe\"\nkind = \"probe\"\nmodel = \"smollm2-135m\"\npairs = {:?}\nheld_out = {:?}\nsite = \"20.block_output\"\n\
         batch_size = 8\nepochs = 30\nlr = 0.01\nseed = 1\n",
            dir.join("texts.jsonl").display().to_string(),
            dir.join("held-out.jsonl").display().to_string()
        ),
    );
    let out = trainer().arg(&recipe).arg("--out").arg(dir.join("runs")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = only_run(&dir.join("runs/probe-small"));
    let report = common::report(&run);
    assert_eq!(
        (report["data"]["train"].as_u64(), report["data"]["dev"].as_u64()),
        (Some(36), Some(12)),
        "every line of `pairs` trains; `held_out` is the test set"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("dev.jsonl")).unwrap(),
        held.join("\n") + "\n",
        "dev.jsonl holds the held-out file's lines"
    );
    let acc = report["metrics"]["dev"]["accuracy"].as_f64().unwrap();
    let majority = report["metrics"]["controls"]["majority_class"].as_f64().unwrap();
    assert!(acc >= 0.9 && acc > majority, "probe accuracy {acc} vs majority class {majority}");
    let out = trainer()
        .args(["apply", "--prompt", "What a superb film.", "--intervention"])
        .arg(run.join("intervention.safetensors"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("class probabilities"));
    // A probe intervenes on nothing: `eval` on pairs is refused rather than printing IIA 0.
    let out = trainer()
        .args(["eval", "--pairs"])
        .arg(dir.join("held-out.jsonl"))
        .arg("--intervention")
        .arg(run.join("intervention.safetensors"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("a probe reads its site and changes nothing"), "{e}");

    // reft: a few prompts with their targets; a short run that leaves its numbers
    let lines: Vec<String> = ["red", "blue", "green", "gold", "grey", "pink", "teal", "navy"]
        .iter()
        .map(|c| serde_json::json!({"prompt": format!("Colour {c} ->"), "target": format!(" {c} is my colour"), "positions": ["last"], "meta": {"colour": c}}).to_string())
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), lines.join("\n")).unwrap();
    let recipe = write_recipe(
        &dir,
        "reft-small",
        &format!(
            "description = \"reft\"\nkind = \"reft\"\nfamily = \"loreft\"\nrank = 2\nmodel = \"smollm2-135m\"\npairs = {:?}\nsite = \"24.block_output\"\n\
         batch_size = 4\nepochs = 2\nlr = 0.01\nseed = 1\ndev_fraction = 0.25\nsplit_by = \"colour\"\n",
            dir.join("prompts.jsonl").display().to_string()
        ),
    );
    let out = trainer().arg(&recipe).arg("--out").arg(dir.join("runs")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = only_run(&dir.join("runs/reft-small"));
    let report = common::report(&run);
    for key in ["token_accuracy", "exact", "loss"] {
        assert!(
            report["metrics"]["dev"][key].is_number()
                && report["metrics"]["controls"]["no_intervention"][key].is_number(),
            "{key}: {report}"
        );
    }
    assert_eq!(report["training"]["steps"], 4, "6 training prompts in batches of 4, 2 epochs");
    let (_, config) = ferrovene_interventions::export::load::<ferrovene_models::Cpu>(
        &run.join("intervention.safetensors"),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(config.kind, "loreft");
}

#[test]
fn every_shipped_recipe_parses_and_round_trips_with_its_kind() {
    let files = ferrovene_trainer::recipe::files(&root().join("recipes")).unwrap();
    assert!(files.len() >= 8, "{files:?}");
    for (name, path) in files {
        let r = Recipe::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let text = toml::to_string(&r).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let written: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(table.get("kind"), written.get("kind"), "{name}: the kind is the variant's name");
        assert_eq!(Recipe::from_toml(&text).unwrap(), r, "{name}: a recipe as run reads back the same");
    }
}

#[test]
fn shorthands_and_overrides_set_only_keys_the_kind_has() {
    let out = trainer().args(["das-hierarchical-equality", "--model", "smollm2-135m"]).output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("no `model`") && e.contains("--model"), "{e}");
    let out = trainer().args(["probe-layers", "--set", "rank=3"]).output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("unknown field `rank`") && e.contains("held_out_frames"), "the kind's keys are listed: {e}");
    let out = trainer().args(["sweep", "das-capitals"]).output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("sweep recipes") && e.contains("kind `das`"), "{e}");
    // Only the pair-file kinds checkpoint; the others refuse --resume, naming their kind.
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ferrovene-noresume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(root().join("recipes/probe-layers.toml"), dir.join("recipe.toml")).unwrap();
    let out = trainer().args(["probe-layers", "--resume"]).arg(&dir).output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("kind `probe-layers`") && e.contains("--resume does not apply"), "{e}");
}

#[test]
fn overrides_are_toml_values_and_bare_words_are_strings() {
    use ferrovene_trainer::recipe::Override;
    let o: Override = "lr=0.05".parse().unwrap();
    assert_eq!((o.key.as_str(), o.value.clone()), ("lr", toml::Value::Float(0.05)));
    let o: Override = "layers=[0, 6]".parse().unwrap();
    assert_eq!(o.value, toml::Value::Array(vec![toml::Value::Integer(0), toml::Value::Integer(6)]));
    let o: Override = "split_by=template".parse().unwrap();
    assert_eq!(o.value, toml::Value::String("template".into()));
    let o: Override = "early_stopping={patience = 3}".parse().unwrap();
    assert!(o.value.is_table());
    assert!("no-equals-sign".parse::<Override>().is_err());
}

#[test]
fn over_the_cache_budget_batches_are_prepared_when_used_with_the_same_results() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = small_recipe(&dir);
    let run = |budget: &str, out: &str| {
        let out_root = dir.join(out);
        let o = trainer()
            .arg(&recipe)
            .args(["--quiet", "--cache-budget", budget, "--set", "checkpoint_every=0", "--out"])
            .arg(&out_root)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{stderr}");
        (only_run(&out_root.join("das-small")), stderr)
    };
    let (cached, said) = run("8G", "cached");
    assert!(said.contains("frozen cache of about") && said.contains("budget 8.0 GB"), "{said}");
    let (on_demand, said) = run("1K", "on-demand");
    assert!(
        said.contains("over the budget of 1.0 KB (--cache-budget)") && said.contains("when the batch is used"),
        "{said}"
    );
    let (a, b) = (common::report(&cached), common::report(&on_demand));
    assert_eq!(a["metrics"], b["metrics"], "held-out metrics");
    assert_eq!(a["training"]["loss"], b["training"]["loss"], "first and last loss");
    assert_eq!(a["training"]["validations"], b["training"]["validations"]);
    assert_eq!(
        tensors_by_name(&cached.join("intervention.safetensors")),
        tensors_by_name(&on_demand.join("intervention.safetensors")),
        "the trained intervention"
    );
    let out = trainer().args(["das-capitals", "--cache-budget", "lots"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`lots` is not a size"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn out_of_range_settings_are_refused_with_the_key_named() {
    let recipes = |name: &str| std::fs::read_to_string(root().join("recipes").join(name)).unwrap();
    let err = |t: &str, set: &str| {
        format!("{:#}", Recipe::from_toml(t).and_then(|r| r.with_overrides(&[set.to_string()])).unwrap_err())
    };
    let das = recipes("das-capitals.toml");
    for (set, key) in [
        ("lr=-0.1", "`lr`"),
        ("lr=0", "`lr`"),
        ("lr=inf", "`lr`"),
        ("lr=nan", "`lr`"),
        ("weight_decay=-1", "`weight_decay`"),
        ("grad_clip=-1", "`grad_clip`"),
        ("rank=0", "`rank`"),
        ("checkpoint_minutes=-1", "`checkpoint_minutes`"),
    ] {
        let e = err(&das, set);
        assert!(e.contains(key), "--set {set}: {e}");
    }
    for (recipe, set, key) in [
        ("reft-memorise.toml", "lr=0", "`lr`"),
        ("das-filler-gap.toml", "lr=-1", "`lr`"),
        ("das-filler-gap.toml", "rank=0", "`rank`"),
        ("das-hierarchical-equality.toml", "das_lr=inf", "`das_lr`"),
        ("probe-layers.toml", "lr=nan", "`lr`"),
    ] {
        let e = err(&recipes(recipe), set);
        assert!(e.contains(key), "{recipe} --set {set}: {e}");
    }
    // A rank over the site's width is known once the model is: an error, not a panic.
    let out = trainer()
        .args(["das-capitals", "--set", "rank=1000", "--out"])
        .arg(
            std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("ferrovene-rank-{}", std::process::id())),
        )
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("rank = 1000") && e.contains("1 ≤ rank ≤ 576"), "{e}");
}

#[test]
fn a_diverging_run_stops_with_an_error_and_exports_nothing() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-diverge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = small_recipe(&dir);
    let out = trainer().arg(&recipe).args(["--set", "lr=1e30", "--out"]).arg(dir.join("runs")).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("training diverged at step") && e.contains("is not finite") && e.contains("learning rate"),
        "{e}"
    );
    let run = only_run(&dir.join("runs/das-small"));
    assert!(!run.join("intervention.safetensors").exists(), "a diverged run exported");
    let report = common::report(&run);
    assert_eq!(report["outcome"], "diverged", "{report}");
    assert!(!report.to_string().contains("null"), "non-finite values are written as strings, never null: {report}");
    assert!(report["step"].as_u64().unwrap() >= 1);
    // Every checkpoint the run left is from a finite step, and loads.
    if run.join("checkpoints/latest").exists() {
        let out = trainer().arg(&recipe).arg("--resume").arg(&run).output().unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!e.contains("non-finite values"), "{e}");
    }
}

#[test]
fn a_file_of_the_wrong_kind_of_examples_is_named_by_line() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-kind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pairs = dir.join("prompts.jsonl");
    std::fs::write(&pairs, "{\"base\": \"a b\", \"sources\": [\"c d\"], \"label\": \" x\", \"meta\": {\"base\": \"a\"}}\n{\"prompt\": \"GO->\", \"target\": \" hi\", \"meta\": {\"base\": \"b\"}}\n").unwrap();
    let recipe = write_recipe(
        &dir,
        "das-kind",
        &format!(
            "description = \"x\"\nkind = \"das\"\nmodel = \"smollm2-135m\"\npairs = {:?}\nsite = \"6.block_output\"\nrank = 2\nbatch_size = 2\nepochs = 1\nlr = 0.01\nseed = 1\ndev_fraction = 0.5\nsplit_by = \"base\"\n",
            pairs.display().to_string()
        ),
    );
    let out = trainer().arg(&recipe).arg("--out").arg(dir.join("runs")).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("prompts.jsonl:2:")
            && e.contains("kind `das` trains on counterfactual pairs")
            && e.contains("a prompt example"),
        "{e}"
    );
}

#[test]
fn a_stray_huge_class_id_is_refused_before_building_the_probe() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-classes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let texts = dir.join("texts.jsonl");
    let lines: Vec<String> = (0..8)
        .map(|i| {
            format!(
                "{{\"text\": \"text {i}\", \"class\": {}, \"meta\": {{\"g\": \"{i}\"}}}}",
                if i == 5 { 1_000_000 } else { i % 2 }
            )
        })
        .collect();
    std::fs::write(&texts, lines.join("\n")).unwrap();
    let recipe = write_recipe(
        &dir,
        "probe-classes",
        &format!(
            "description = \"x\"\nkind = \"probe\"\nmodel = \"smollm2-135m\"\npairs = {:?}\nsite = \"6.block_output\"\nbatch_size = 2\nepochs = 1\nlr = 0.01\nseed = 1\ndev_fraction = 0.25\nsplit_by = \"g\"\n",
            texts.display().to_string()
        ),
    );
    let started = std::time::Instant::now();
    let out = trainer().arg(&recipe).arg("--out").arg(dir.join("runs")).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("largest class id is 1000000") && e.contains("at most 10000"), "{e}");
    assert!(started.elapsed().as_secs() < 60, "refused only after {:?}", started.elapsed());
}
