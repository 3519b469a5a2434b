//! Fuzzing the pair format: 10,000 random mutations of valid lines of every kind (and random
//! bytes) through the JSONL reader and the tokeniser with SmolLM2's tokenizer. Whatever the
//! bytes, the answer is an example or an error naming the line, never a panic.

use std::path::Path;

use ferrovene_data::format::{parse_jsonl, utf8};
use ferrovene_data::{OnError, tokenize};
use ferrovene_models::TextTokenizer;
use ferrovene_models::rng::Rng;
use ferrovene_models::weights::gguf::GgufFile;

/// Cases per run; `FERROVENE_FUZZ_CASES` raises it for a long run.
fn cases() -> usize {
    std::env::var("FERROVENE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

const SEEDS: &[&str] = &[
    r#"{"base": "The capital of France is", "spans": {"country": [15, 21]}, "sources": ["The capital of Italy is"], "source_spans": [{"country": [15, 20]}], "positions": [{"span": "country"}], "base_label": " Paris", "label": " Rome", "meta": {"base": "France"}}"#,
    r#"{"base": "a b c d", "sources": ["e f g h", "i j"], "positions": [1, -1, "last", {"chars": [2, 3]}], "source_positions": [[0, 1, 2, 3], [0, 0, 1, 1]], "label": " x"}"#,
    r#"{"base_ids": [1, 2, 3], "source_ids": [[4, 5, 6]], "positions": [0, 2], "label": " y", "base_class": 0}"#,
    r#"{"prompt": "GO->", "target": " the passage", "positions": ["last", 0]}"#,
    r#"{"text": "I loved it.", "class": 1, "positions": ["last"], "meta": {"split": "a"}}"#,
];

#[test]
fn mutated_pair_files_never_panic() {
    let p = ferrovene_models::registry::fixtures_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "fixture {} is missing: run scripts/fetch-fixtures", p.display());
    let tok = TextTokenizer::from_gguf(&GgufFile::open(&p).unwrap()).unwrap();
    let path = Path::new("fuzz.jsonl");
    let mut rng = Rng::new(15);
    let (mut parsed, mut tokenized) = (0, 0);
    for case in 0..cases() {
        let seed = SEEDS[rng.below(SEEDS.len())];
        let file =
            [rng.mutated(seed.as_bytes()), b"\n".to_vec(), SEEDS[rng.below(SEEDS.len())].as_bytes().to_vec()].concat();
        let outcome = std::panic::catch_unwind(|| {
            let Ok(text) = utf8(path, &file) else { return (0, 0) };
            let Ok(loaded) = parse_jsonl(path, text, OnError::Skip) else { return (0, 0) };
            let ok = loaded.examples.iter().filter(|(l, ex)| tokenize(ex, &tok, path, *l).is_ok()).count();
            (loaded.examples.len(), ok)
        });
        match outcome {
            Ok((p, t)) => {
                parsed += p;
                tokenized += t;
            }
            Err(_) => panic!("case {case} panicked on {:?}", String::from_utf8_lossy(&file)),
        }
    }
    // Many inputs must get past the UTF-8 and JSON checks to the tokeniser, or the test would
    // only exercise the first checks (about half of the files stay UTF-8; 2026-11-29: 4,990
    // examples parsed and 4,961 tokenised of 10,000 files).
    assert!(parsed > cases() / 3 && tokenized > cases() / 3, "{parsed} examples parsed, {tokenized} tokenised");
}

#[test]
fn seeds_are_valid() {
    let p = ferrovene_models::registry::fixtures_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let tok = TextTokenizer::from_gguf(&GgufFile::open(&p).unwrap()).unwrap();
    for s in SEEDS {
        let ex = ferrovene_data::format::parse_line(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        tokenize(&ex, &tok, Path::new("seed"), 1).unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}
