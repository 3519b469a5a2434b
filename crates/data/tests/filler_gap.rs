//! The filler–gap generator: every pair of every construction is valid for SmolLM2's tokenizer
//! and for a GPT-2-style one (byte-level BPE with GPT-2's pre-tokenizer, trained here on the
//! generator's own sentences, so its segmentation differs from SmolLM2's); the sides differ only
//! in the filler; both directions of every item exist; the continuations' first tokens differ.

use std::collections::HashSet;
use std::path::Path;

use ferrovene_data::filler_gap::{CONSTRUCTIONS, check_continuations, items};
use ferrovene_data::{LabelId, TokenizedExample, tokenize};
use ferrovene_models::TextTokenizer;
use ferrovene_models::weights::gguf::GgufFile;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerImpl};

fn smollm2() -> TextTokenizer {
    let p = ferrovene_models::registry::fixtures_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "fixture {} is missing: run scripts/fetch-fixtures", p.display());
    TextTokenizer::from_gguf(&GgufFile::open(&p).unwrap()).unwrap()
}

/// A byte-level BPE with GPT-2's pre-tokenizer, trained on the generator's sentences.
fn gpt2_style() -> TextTokenizer {
    let mut corpus = Vec::new();
    for c in CONSTRUCTIONS {
        for item in items(c) {
            for gap in [true, false] {
                let s = item.side(gap);
                corpus.push(format!("{}{}", s.text, s.continuation));
            }
        }
    }
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(400)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok: TokenizerImpl<BPE, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper> =
        TokenizerImpl::new(BPE::default());
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true))));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    tok.train(&mut trainer, corpus.iter()).unwrap();
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ferrovene-gpt2-style-{}.json", std::process::id()));
    tokenizers::Tokenizer::from(tok).save(&path, false).unwrap();
    TextTokenizer::from_file(&path).unwrap()
}

fn check_with(tok: &TextTokenizer, name: &str) {
    check_continuations(|t| tok.encode_plain(t).ok().and_then(|ids| ids.first().copied()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut n = 0;
    for c in CONSTRUCTIONS {
        for item in items(c) {
            for position in item.span_names() {
                for gap_in_base in [true, false] {
                    let ex = item.pair(gap_in_base, position);
                    // Built directly, the example is the one its pair-format line parses to.
                    assert_eq!(
                        ex,
                        ferrovene_data::format::parse_line(&item.pair_json(gap_in_base, position).to_string()).unwrap()
                    );
                    let t = tokenize(&ex, tok, Path::new(name), 1)
                        .unwrap_or_else(|e| panic!("{name}: {c} {position}: {e}"));
                    let TokenizedExample::Pair { base, sources, base_label, label } = t else { panic!("a pair") };
                    assert_eq!(base.positions.len(), 1);
                    assert_ne!(base_label, Some(label), "{name}: {c}: the two continuations start alike");
                    assert!(matches!(label, LabelId::Token(_)));
                    // the position is the span's last token in both inputs
                    let (b, s) = (item.side(gap_in_base), item.side(!gap_in_base));
                    let word = |side: &ferrovene_data::filler_gap::Side| {
                        let (_, a, e) = side.spans.iter().find(|sp| sp.0 == position).copied().unwrap();
                        side.text.chars().skip(a).take(e - a).collect::<String>()
                    };
                    if position != "filler" {
                        assert_eq!(word(&b), word(&s), "{c}: span {position} differs between the sides");
                        let last_b = tok.decode(&[base.ids[base.positions[0]]]).unwrap();
                        let last_s = tok.decode(&[sources[0].ids[sources[0].positions[0]]]).unwrap();
                        assert_eq!(last_b, last_s, "{name}: {c}: {position}");
                    }
                    n += 1;
                }
            }
        }
    }
    assert!(n > 5000, "{n} pairs checked");
}

#[test]
fn pairs_are_valid_for_smollm2_and_a_gpt2_style_tokenizer() {
    check_with(&smollm2(), "smollm2");
    let g = gpt2_style();
    assert_ne!(
        g.encode_plain("I wonder whether the lawyer described").unwrap(),
        smollm2().encode_plain("I wonder whether the lawyer described").unwrap(),
        "a different segmentation"
    );
    check_with(&g, "gpt2-style");
}

#[test]
fn sides_differ_only_in_the_filler_and_both_directions_exist() {
    for c in CONSTRUCTIONS {
        let all = items(c);
        let keys: HashSet<String> = all.iter().map(|i| i.key()).collect();
        assert_eq!(keys.len(), all.len(), "{c}: items are distinct");
        assert_eq!(all.iter().filter(|i| i.animate).count(), all.len() / 2);
        assert_eq!(all.iter().filter(|i| i.embedded).count(), all.len() / 2);
        for item in all.iter().take(10) {
            let (g, p) = (item.side(true), item.side(false));
            let filler = |s: &ferrovene_data::filler_gap::Side| {
                let (_, a, e) = s.spans[0];
                (s.text.chars().take(a).collect::<String>(), s.text.chars().skip(e).collect::<String>())
            };
            assert_eq!(filler(&g), filler(&p), "{c}: {:?} vs {:?}", g.text, p.text);
            let forward = item.pair_json(false, "verb");
            let back = item.pair_json(true, "verb");
            assert_eq!(
                (forward["base"].clone(), forward["label"].clone()),
                (back["sources"][0].clone(), back["base_label"].clone())
            );
        }
    }
    let item = &items("matrix_wh")[0];
    assert_eq!(item.side(true).text, "Who did the lawyer see");
    assert_eq!(item.side(false).text, "Did the lawyer see");
    let e = items("embedded_wh_know").into_iter().find(|i| i.embedded).unwrap();
    assert!(e.side(true).text.starts_with("I know who the "), "{}", e.side(true).text);
    assert_eq!(e.span_names(), ["filler", "article_e", "noun_e", "verb_e", "article", "noun", "verb"]);
}
