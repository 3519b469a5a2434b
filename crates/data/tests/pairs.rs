//! The pair format end to end with SmolLM2's tokenizer: positions from indices, spans and
//! character spans; and every bad input named by file and line.

use std::path::PathBuf;

use ferrovene_data::{DataError, LabelId, OnError, TokenizedExample, load_jsonl, tokenize};
use ferrovene_models::TextTokenizer;
use ferrovene_models::weights::gguf::GgufFile;

fn tokenizer() -> TextTokenizer {
    let p = ferrovene_models::registry::fixtures_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "fixture {} is missing: run scripts/fetch-fixtures", p.display());
    TextTokenizer::from_gguf(&GgufFile::open(&p).unwrap()).unwrap()
}

fn file(name: &str, lines: &[&str]) -> PathBuf {
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

fn tokenized(name: &str, lines: &[&str]) -> Result<Vec<TokenizedExample>, DataError> {
    let tok = tokenizer();
    let loaded = load_jsonl(&file(name, lines), OnError::Stop)?;
    loaded.examples.iter().map(|(l, ex)| tokenize(ex, &tok, &loaded.path, *l)).collect()
}

#[test]
fn spans_indices_and_char_spans_resolve_to_tokens() {
    // "The capital of France is" → [504 The, 3575 ␣capital, 282 ␣of, 4649 ␣France, 314 ␣is]
    let line = r#"{"base": "The capital of France is", "spans": {"country": [15, 21]},
        "sources": ["The capital of Italy is"], "source_spans": [{"country": [15, 20]}],
        "positions": [{"span": "country"}, -1, 0, "last", {"chars": [4, 11]}],
        "base_label": " Paris", "label": " Rome", "meta": {"template": "capital"}}"#
        .replace('\n', " ");
    let ex = tokenized("ok.jsonl", &[&line]).unwrap().remove(0);
    let TokenizedExample::Pair { base, sources, base_label, label } = ex else { panic!("a pair") };
    assert_eq!(base.ids, vec![504, 3575, 282, 4649, 314]);
    assert_eq!(base.positions, vec![3, 4, 0, 4, 1]);
    assert_eq!(sources[0].ids, vec![504, 3575, 282, 7158, 314]);
    assert_eq!(sources[0].positions, vec![3, 4, 0, 4, 1]);
    assert_eq!(base_label, Some(LabelId::Token(7042)), "\" Paris\" is token 7042");
    assert_eq!(label, LabelId::Token(7268), "\" Rome\" is token 7268");
}

#[test]
fn sourceless_forms_and_token_ids() {
    let ex = tokenized(
        "forms.jsonl",
        &[
            r#"{"prompt": "GO->", "target": " hello world", "positions": ["last"]}"#,
            r#"{"text": "I loved it", "class": 1}"#,
            r#"{"base_ids": [1, 2, 3], "source_ids": [[4, 5, 6]], "positions": [1], "class": 0}"#,
        ],
    )
    .unwrap();
    assert!(matches!(&ex[0], TokenizedExample::Prompt { target, .. } if !target.is_empty()));
    assert!(matches!(&ex[1], TokenizedExample::Text { class: 1, text } if text.positions == vec![text.ids.len() - 1]));
    assert!(
        matches!(&ex[2], TokenizedExample::Pair { base, label: LabelId::Class(0), .. } if base.positions == vec![1])
    );
}

fn err(name: &str, lines: &[&str]) -> String {
    tokenized(name, lines).expect_err("should fail").to_string()
}

#[test]
fn each_bad_input_names_file_and_line() {
    let good = r#"{"base": "a b", "sources": ["c d"], "label": " x"}"#;
    let cases: &[(&str, &str, &str)] = &[
        ("malformed.jsonl", r#"{"base": "a b", "sources": ["#, "malformed JSON"),
        ("missing.jsonl", r#"{"base": "a b", "sources": ["c d"]}"#, "missing field `label`"),
        ("unknown.jsonl", r#"{"base": "a b", "sources": ["c d"], "label": " x", "lable": 1}"#, "unknown field `lable`"),
        (
            "past.jsonl",
            r#"{"base": "a b", "sources": ["c d"], "positions": [7], "label": " x"}"#,
            "position 7 is past the end of `base`",
        ),
        (
            "negative.jsonl",
            r#"{"base": "a b", "sources": ["c d"], "positions": [-9], "label": " x"}"#,
            "position -9 is past the end",
        ),
        ("nolabel.jsonl", r#"{"base": "a b", "sources": ["c d"], "label": ""}"#, "`label` \"\" tokenises to nothing"),
        (
            "nospan.jsonl",
            r#"{"base": "a b", "sources": ["c d"], "positions": [{"span": "x"}], "label": " x"}"#,
            "no span `x`",
        ),
        ("kind.jsonl", r#"{"foo": 1}"#, "cannot tell the kind"),
        (
            "twice.jsonl",
            r#"{"base": "a b", "sources": ["c d"], "label": " x", "label": " y"}"#,
            "key `label` appears twice",
        ),
        (
            "vocab.jsonl",
            r#"{"base_ids": [1, 2, 49152], "source_ids": [[3, 4, 5]], "label": " x"}"#,
            "`base` token id 49152 (at index 2) is outside the vocabulary of 49152 tokens",
        ),
        (
            "source_vocab.jsonl",
            r#"{"base_ids": [1, 2, 3], "source_ids": [[3, 4000000000, 5]], "label": " x"}"#,
            "`sources[0]` token id 4000000000",
        ),
    ];
    for (name, bad, want) in cases {
        let e = err(name, &[good, bad]);
        assert!(e.contains(&format!("{name}:2:")) && e.contains(want), "{name}: {e}");
    }
    let long = format!(r#"{{"base": "{}", "sources": ["c d"], "label": " x"}}"#, "a ".repeat(600_000));
    let e = err("long.jsonl", &[good, &long]);
    assert!(e.contains("long.jsonl:2:") && e.contains("lines over 1 MiB are refused"), "{e}");
    let e = err("empty.jsonl", &["", "  "]);
    assert!(e.contains("empty.jsonl") && e.contains("empty file"), "{e}");
}

#[test]
fn skipping_counts_bad_lines_and_keeps_their_reasons() {
    let path = file(
        "mixed.jsonl",
        &[
            r#"{"base": "a b", "sources": ["c d"], "label": " x"}"#,
            r#"not json"#,
            r#"{"text": "t"}"#,
            r#"{"text": "t", "class": 0}"#,
        ],
    );
    let loaded = load_jsonl(&path, OnError::Skip).unwrap();
    assert_eq!(loaded.examples.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![1, 4]);
    assert_eq!(loaded.skipped.len(), 2);
    let summary = loaded.skipped_summary().unwrap();
    assert!(
        summary.contains("skipped 2")
            && summary.contains("line 2: malformed JSON")
            && summary.contains("line 3: missing field `class`"),
        "{summary}"
    );
    let e = load_jsonl(&path, OnError::Stop).unwrap_err().to_string();
    assert!(e.contains("mixed.jsonl:2:"), "{e}");
    let all_bad = file("allbad.jsonl", &["x", "y"]);
    let e = load_jsonl(&all_bad, OnError::Skip).unwrap_err().to_string();
    assert!(e.contains("all 2 line(s) were bad"), "{e}");
}

mod batching {
    use ferrovene_data::TokenizedInput;
    use ferrovene_data::batch::{PaddingSide, length_buckets, pad, split_by_group};

    #[test]
    fn padding_shifts_positions_and_masks() {
        let a = TokenizedInput { ids: vec![1, 2, 3, 4], positions: vec![3, 1] };
        let b = TokenizedInput { ids: vec![7, 8], positions: vec![1, 0] };
        let left = pad(&[&a, &b], 0, PaddingSide::Left);
        assert_eq!(left.ids[1], vec![0, 0, 7, 8]);
        assert_eq!(left.mask[1], vec![0, 0, 1, 1]);
        assert_eq!(left.positions, vec![vec![3, 1], vec![3, 2]]);
        let right = pad(&[&a, &b], 0, PaddingSide::Right);
        assert_eq!(right.ids[1], vec![7, 8, 0, 0]);
        assert_eq!(right.positions[1], vec![1, 0]);
        // the token at each shifted position is the one the example meant
        for batch in [&left, &right] {
            for (row, src) in [&a, &b].iter().enumerate() {
                for (k, &p) in batch.positions[row].iter().enumerate() {
                    assert_eq!(batch.ids[row][p], src.ids[src.positions[k]]);
                }
            }
        }
        assert_eq!(PaddingSide::for_model(true), PaddingSide::Left);
        assert_eq!(PaddingSide::for_model(false), PaddingSide::Right);
    }

    #[test]
    fn buckets_are_deterministic_complete_and_length_sorted() {
        let lengths: Vec<usize> = (0..50).map(|i| (i * 7919) % 23 + 1).collect();
        let a = length_buckets(&lengths, 8, 42);
        assert_eq!(a, length_buckets(&lengths, 8, 42), "same seed, same batches");
        assert_ne!(a, length_buckets(&lengths, 8, 43), "another seed, another order");
        let mut all: Vec<usize> = a.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..50).collect::<Vec<_>>(), "every example once");
        // within the sorted order, a batch spans a narrow range of lengths
        let spread: usize = a
            .iter()
            .map(|b| b.iter().map(|&i| lengths[i]).max().unwrap() - b.iter().map(|&i| lengths[i]).min().unwrap())
            .max()
            .unwrap();
        assert!(spread <= 6, "spread {spread}");
    }

    #[test]
    fn splits_keep_groups_apart() {
        let groups: Vec<String> = (0..100).map(|i| format!("template-{}", i % 7)).collect();
        let (train, held) = split_by_group(&groups, 0.2, 5);
        assert_eq!(train.len() + held.len(), 100);
        assert!(held.len() >= 20);
        let held_groups: std::collections::BTreeSet<&String> = held.iter().map(|&i| &groups[i]).collect();
        assert!(train.iter().all(|&i| !held_groups.contains(&groups[i])), "a held-out template leaked into training");
        assert_eq!(split_by_group(&groups, 0.2, 5), (train, held), "deterministic from the seed");
    }
}

/// A byte-order mark (as Windows editors write) is read past; bytes that are not UTF-8 are named
/// by their line.
#[test]
fn byte_order_marks_are_skipped_and_bad_utf8_is_named_by_line() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ferrovene-data-utf8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = r#"{"base": "a b", "sources": ["c d"], "label": " x"}"#;
    let bom = dir.join("bom.jsonl");
    std::fs::write(&bom, [b"\xEF\xBB\xBF".as_slice(), good.as_bytes()].concat()).unwrap();
    assert_eq!(load_jsonl(&bom, OnError::Stop).unwrap().examples.len(), 1);
    let latin1 = dir.join("latin1.jsonl");
    std::fs::write(&latin1, [good.as_bytes(), b"\n", good.as_bytes(), b"\n{\"base\": \"caf\xE9\"}"].concat()).unwrap();
    let e = load_jsonl(&latin1, OnError::Stop).err().unwrap().to_string();
    assert!(e.contains("latin1.jsonl:3:") && e.contains("not UTF-8"), "{e}");
}

/// A model with learned positions (BERT's 512) refuses longer inputs by file and line instead
/// of indexing past its position table.
#[test]
fn inputs_longer_than_the_position_table_are_refused() {
    let tok = tokenizer().with_max_positions(Some(8));
    let path = file(
        "positions.jsonl",
        &[r#"{"base": "one two three four five six seven eight nine ten", "sources": ["a"], "label": " x"}"#],
    );
    let loaded = load_jsonl(&path, OnError::Stop).unwrap();
    let (l, ex) = &loaded.examples[0];
    let e = tokenize(ex, &tok, &loaded.path, *l).err().unwrap().to_string();
    assert!(e.contains("positions.jsonl:1:") && e.contains("the model reads at most 8 positions"), "{e}");
}
