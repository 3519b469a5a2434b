//! A recipe's `prefix`: the tokens go after the tokenizer's own BOS, positions shift past them,
//! and a pair recipe with `prefix` trains exactly as one whose every text begins with it.

mod common;

use std::path::Path;

use common::{only_run, report, tensors_by_name, tiny_with_tokenizer, trainer};
use ferrovene_data::TokenizedInput;
use ferrovene_models::TextTokenizer;
use ferrovene_trainer::experiments::prefix::{CAUSALGYM_PREFIX, Prefix};

/// The word-level tokenizer of `tiny_with_tokenizer`, optionally adding `t96` as a BOS.
fn word_tokenizer(dir: &Path, bos: bool) -> TextTokenizer {
    tiny_with_tokenizer("gpt2", dir);
    let path = dir.join("tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    if bos {
        json["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "t96", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "t96", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"t96": {"id": "t96", "ids": [96], "tokens": ["t96"]}}
        });
    }
    std::fs::write(&path, json.to_string()).unwrap();
    TextTokenizer::from_file(&path).unwrap()
}

#[test]
fn a_prefix_goes_after_the_tokenizers_bos_and_shifts_the_positions_past_it() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = word_tokenizer(&tmp.path().join("plain"), false);
    let with_bos = word_tokenizer(&tmp.path().join("bos"), true);

    let p = Prefix::new("t7 t8", &plain).unwrap();
    assert_eq!((p.ids.as_slice(), p.lead.as_slice()), (&[7, 8][..], &[][..]));
    let got = p.apply(TokenizedInput { ids: vec![1, 2, 3], positions: vec![0, 2] });
    assert_eq!(got, TokenizedInput { ids: vec![7, 8, 1, 2, 3], positions: vec![2, 4] });

    let p = Prefix::new("t7", &with_bos).unwrap();
    assert_eq!((p.ids.as_slice(), p.lead.as_slice()), (&[7][..], &[96][..]));
    // The BOS stays first, and a position on it stays there.
    let got = p.apply(TokenizedInput { ids: vec![96, 1, 2, 3], positions: vec![0, 1, 3] });
    assert_eq!(got, TokenizedInput { ids: vec![96, 7, 1, 2, 3], positions: vec![0, 2, 4] });
    // Token ids given without the BOS get the prefix at the start.
    let got = p.apply(TokenizedInput { ids: vec![1, 2], positions: vec![1] });
    assert_eq!(got, TokenizedInput { ids: vec![7, 1, 2], positions: vec![2] });

    // CausalGym's prefix is <|endoftext|>, which this vocabulary lacks: nothing, and it says so.
    let p = Prefix::new(CAUSALGYM_PREFIX, &plain).unwrap();
    assert!(p.ids.is_empty() && p.about.contains("no <|endoftext|>"), "{p:?}");
    assert!(Prefix::new("", &plain).unwrap().ids.is_empty());
}

#[test]
fn a_pair_recipe_with_a_prefix_trains_as_if_every_text_began_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_with_tokenizer("gpt2", &model);
    // The same pairs twice: bare (trained with `prefix = "t7 t8"`), and with "t7 t8 " written in.
    let line = |i: usize, lead: &str| {
        let w = |k: usize| format!("t{}", (i * 7 + k * 13) % 90 + 1);
        serde_json::json!({
            "base": format!("{lead}{} {} {}", w(1), w(2), w(3)), "sources": [format!("{lead}{} {} {}", w(4), w(5), w(6))],
            "positions": ["last"], "base_label": format!(" {}", w(7)), "label": format!(" {}", w(8)),
            "meta": {"group": (i % 4).to_string()}
        })
        .to_string()
    };
    let mut exports = vec![];
    for (name, lead, prefix) in [("bare", "", "t7 t8"), ("written", "t7 t8 ", "")] {
        let pairs = tmp.path().join(format!("{name}.jsonl"));
        std::fs::write(&pairs, (0..24).map(|i| line(i, lead) + "\n").collect::<String>()).unwrap();
        let recipe = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &recipe,
            format!(
                "description = \"prefix\"\nkind = \"das\"\nmodel = {model:?}\npairs = {pairs:?}\nsite = \"1.block_output\"\n\
                 rank = 2\nbatch_size = 4\nepochs = 2\nlr = 0.05\nseed = 3\ndev_fraction = 0.25\nsplit_by = \"group\"\nprefix = {prefix:?}\n"
            ),
        )
        .unwrap();
        let out = tmp.path().join(format!("runs-{name}"));
        let o = trainer().arg(&recipe).arg("--out").arg(&out).output().unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let run = only_run(&only_run(&out));
        let about = report(&run)["data"]["prefix"].as_str().unwrap().to_string();
        let want = if prefix.is_empty() { "nothing".to_string() } else { "\"t7 t8\" (tokens [7, 8])".to_string() };
        assert_eq!(about, want, "{name}: report.json says what went before every text");
        exports.push(tensors_by_name(&run.join("intervention.safetensors")));
    }
    assert_eq!(exports[0], exports[1], "the prefix trains exactly as the words written into every text");
}

#[test]
fn a_suite_run_from_before_prefix_existed_resumes_without_one() {
    use ferrovene_trainer::experiments::Recipe;
    let tmp = tempfile::tempdir().unwrap();
    let recipe = common::root().join("recipes/syntax-suites.toml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    let resumed = |saved: &str| {
        let dir = tmp.path().join(format!("run{}", saved.len()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("recipe.toml"), format!("# run of recipe: syntax-suites\n{saved}")).unwrap();
        match ferrovene_trainer::commands::run::resume_recipe(&dir, "syntax-suites", &recipe).unwrap() {
            Recipe::Suite(s) => s.prefix,
            other => panic!("{}", other.kind()),
        }
    };
    // The saved recipe of an old run has no `prefix`: it ran with nothing before its sentences.
    let old: String = text.lines().filter(|l| !l.starts_with("prefix")).map(|l| format!("{l}\n")).collect();
    assert_eq!(resumed(&old), "");
    assert_eq!(resumed(&format!("{old}prefix = \"causalgym\"\n")), CAUSALGYM_PREFIX);
}
