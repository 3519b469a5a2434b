//! Template suites (`ferrovene_data::suite`): reading CausalGym-format files, balanced pairs that
//! differ only in the label variable, spans on every slot, disjoint seeded splits, the
//! continuation check, the control task, and clear errors for bad suites.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use ferrovene_data::suite::{Fillers, Suite, control, read_suite, split};
use ferrovene_data::{Example, Label, Source};

fn shipped() -> Suite {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/suites/syntax.json");
    read_suite(&p).unwrap_or_else(|e| panic!("{e}"))
}

fn text(s: &Source) -> (&str, &BTreeMap<String, (usize, usize)>) {
    match s {
        Source::Text { text, spans } => (text, spans),
        Source::Ids(_) => panic!("text"),
    }
}

fn chars(t: &str, (a, b): (usize, usize)) -> String {
    t.chars().skip(a).take(b - a).collect()
}

fn parts(ex: &Example) -> (&Source, &Source, String, String, String) {
    match ex {
        Example::Pair { base, sources, base_label: Some(Label::Text(bl)), label: Label::Text(l), meta, .. } => {
            (base, &sources[0], bl.clone(), l.clone(), meta["base_class"].as_str().unwrap().to_string())
        }
        other => panic!("a labelled pair: {other:?}"),
    }
}

#[test]
fn the_shipped_suite_has_eight_tasks_across_the_phenomena() {
    let suite = shipped();
    assert!(suite.tasks.len() >= 8, "{:?}", suite.tasks.keys());
    for name in ["agreement_simple", "npi_licensing", "garden_path_npz", "subordination", "filler_gap_embedded"] {
        assert!(suite.tasks.contains_key(name), "{name}");
    }
    for (name, task) in &suite.tasks {
        assert!(task.description.as_deref().is_some_and(|d| !d.is_empty()), "{name} has a description");
        let s = split(&suite, name, 400, 100, 0).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((s.train.len(), s.test.len()), (400, 100), "{name}");
    }
}

#[test]
fn pairs_are_balanced_and_differ_only_in_the_label_variable() {
    let suite = shipped();
    for (name, task) in &suite.tasks {
        let s = split(&suite, name, 400, 100, 7).unwrap();
        let label_var = &task.label.names()[0];
        let Some(Fillers::ByClass(by_class)) = task.variables.get(label_var) else { panic!("{name}") };
        for set in [&s.train, &s.test] {
            let mut per_class: BTreeMap<String, usize> = BTreeMap::new();
            for ex in set.iter() {
                let (base, source, base_label, label, base_class) = parts(ex);
                *per_class.entry(base_class.clone()).or_default() += 1;
                let ((bt, bs), (st, ss)) = (text(base), text(source));
                assert_eq!(bs.keys().collect::<Vec<_>>(), ss.keys().collect::<Vec<_>>(), "{name}: the same slots");
                // Every slot's words: the label's from its class, the others equal on both sides.
                for (slot, &span) in bs {
                    let (bw, sw) = (chars(bt, span), chars(st, ss[slot]));
                    if slot == label_var {
                        let other_class = by_class.keys().find(|c| **c != base_class).unwrap();
                        assert!(
                            by_class[&base_class].contains(&bw) && by_class[other_class].contains(&sw),
                            "{name}: {bw} / {sw}"
                        );
                    } else {
                        assert_eq!(bw, sw, "{name}: slot {slot} differs between base and source");
                        if let Some(Fillers::List(l)) = task.variables.get(slot) {
                            assert!(l.contains(&bw), "{name}: {slot} = {bw:?}");
                        }
                    }
                }
                // Outside the label's span the sentences are the same text.
                let (lb, ls) = (bs[label_var], ss[label_var]);
                assert_eq!(chars(bt, (0, lb.0)), chars(st, (0, ls.0)), "{name}");
                assert_eq!(
                    bt.chars().skip(lb.1).collect::<String>(),
                    st.chars().skip(ls.1).collect::<String>(),
                    "{name}"
                );
                assert_ne!(base_label, label, "{name}: the two classes continue differently");
            }
            let counts: Vec<usize> = per_class.values().copied().collect();
            assert_eq!(counts.len(), 2, "{name}: both directions");
            assert_eq!(counts[0], counts[1], "{name}: balanced directions {per_class:?}");
        }
    }
}

#[test]
fn train_and_test_share_no_filler_combination_and_the_seed_decides() {
    let suite = shipped();
    let key = |ex: &Example| ex.meta()["combination"].as_str().unwrap().to_string();
    let texts = |ex: &Example| {
        let (b, s, ..) = parts(ex);
        (text(b).0.to_string(), text(s).0.to_string())
    };
    for name in suite.tasks.keys() {
        let s = split(&suite, name, 400, 100, 3).unwrap();
        let train: HashSet<String> = s.train.iter().map(key).collect();
        assert_eq!(train.len(), 200, "{name}: 200 combinations, two pairs each");
        assert!(s.test.iter().all(|ex| !train.contains(&key(ex))), "{name}: a test combination was trained on");
        let train_texts: HashSet<(String, String)> = s.train.iter().map(texts).collect();
        assert!(
            s.test.iter().all(|ex| !train_texts.contains(&texts(ex))),
            "{name}: a test pair's sentences were trained on"
        );
        assert_eq!(split(&suite, name, 400, 100, 3).unwrap().test, s.test, "{name}: the same seed, the same pairs");
        assert_ne!(split(&suite, name, 400, 100, 4).unwrap().test, s.test, "{name}: another seed, other pairs");
    }
}

#[test]
fn the_continuation_check_needs_distinct_first_tokens() {
    let suite = shipped();
    let task = &suite.tasks["agreement_simple"];
    // A stand-in tokenizer: the first character's code.
    assert!(task.check_continuations(|c| c.chars().nth(1).map(|ch| ch as u32)).is_ok());
    let e = task.check_continuations(|c| c.chars().next().map(|ch| ch as u32)).unwrap_err();
    assert!(e.contains("\" is\"") && e.contains("\" are\"") && e.contains("same token"), "{e}");
    let e = task.check_continuations(|_| None).unwrap_err();
    assert!(e.contains("has no token"), "{e}");
}

/// Against SmolLM2's own tokenizer, every shipped task's classes start with different tokens.
#[test]
fn the_shipped_tasks_pass_the_continuation_check_for_smollm2() {
    let loaded = ferrovene_models::load::<ferrovene_models::Cpu>("smollm2-135m", &Default::default())
        .unwrap_or_else(|e| panic!("{e} (run scripts/fetch-fixtures)"));
    let tok = loaded.tokenizer.expect("a tokenizer");
    for (name, task) in &shipped().tasks {
        task.check_continuations(|c| tok.encode_plain(c).ok().and_then(|ids| ids.first().copied()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn the_control_task_swaps_each_class_for_its_word() {
    let suite = shipped();
    let task = &suite.tasks["agreement_simple"];
    let pairs = split(&suite, "agreement_simple", 20, 0, 1).unwrap().train;
    let controlled = control(&pairs, task, [" dog", " give"]);
    for (ex, c) in pairs.iter().zip(&controlled) {
        let (b, s, base_label, _, base_class) = parts(ex);
        let (cb, cs, c_base, c_label, _) = parts(c);
        assert_eq!((text(b), text(s)), (text(cb), text(cs)), "the same sentences");
        // Words go by the classes' order (plural, singular): the base's class gets its word.
        let (want_base, want) = if base_class == task.classes()[0] { (" dog", " give") } else { (" give", " dog") };
        assert_eq!((c_base.as_str(), c_label.as_str()), (want_base, want), "{base_label} → {c_base}");
    }
}

fn write_suite(name: &str, json: &str) -> PathBuf {
    let p = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ferrovene-suite-{}-{name}.json", std::process::id()));
    std::fs::write(&p, json).unwrap();
    p
}

#[test]
fn bad_suites_say_which_task_and_what_is_wrong() {
    let task = |body: &str| format!(r#"{{"t": {{{body}}}}}"#);
    let base = r#""templates": ["The {s} near"], "label": "s", "labels": {"a": ["is"], "b": ["are"]}, "variables": {"s": {"a": ["dog"], "b": ["dogs"]}}"#;
    assert!(read_suite(&write_suite("ok", &task(base))).is_ok());
    let cases = [
        ("no-slot", base.replace("The {s} near", "The dog near"), "has no slot of the label variable (`{s}`)"),
        ("unknown", base.replace("The {s} near", "The {s} near {x}"), "`{x}`, which is not in `variables`"),
        ("three", base.replace(r#""b": ["are"]}"#, r#""b": ["are"], "c": ["be"]}"#), "3 classes"),
        ("classes", base.replace(r#""b": ["dogs"]"#, r#""c": ["dogs"]"#), "has classes"),
        ("list-label", base.replace(r#"{"a": ["dog"], "b": ["dogs"]}"#, r#"["dog"]"#), "needs fillers by class"),
        ("empty", base.replace(r#""b": ["dogs"]"#, r#""b": []"#), "empty list"),
        ("brace", base.replace("The {s} near", "The {s near"), "without a closing"),
        ("typo", format!("{base}, \"result_prepend_spaces\": true"), "unknown field"),
        ("dup", format!("{base}, \"label\": \"s\""), "appears twice"),
    ];
    for (name, body, says) in cases {
        let e = read_suite(&write_suite(name, &task(&body))).unwrap_err().to_string();
        assert!(e.contains(says) && (e.contains("task `t`") || name == "typo" || name == "dup"), "{name}: {e}");
        assert!(
            e.contains(&format!("ferrovene-suite-{}-{name}.json", std::process::id())),
            "{name}: names the file: {e}"
        );
    }
    let small = read_suite(&write_suite("small", &task(base))).unwrap();
    let e = split(&small, "t", 400, 100, 0).err().expect("too few combinations").to_string();
    assert!(e.contains("1 filler combinations, fewer than the 250 needed"), "{e}");
    let e = split(&small, "nope", 4, 2, 0).err().expect("no such task").to_string();
    assert!(e.contains("no task `nope`") && e.contains("tasks: t"), "{e}");
}

/// The layout of CausalGym's own `syntaxgym.json` (in our own words): every task carries a
/// `source` URL, which is kept and goes into the report; a wrong type names the task and the
/// field; a filler listed twice is kept once, with a note.
#[test]
fn causalgyms_layout_reads_with_its_source_and_errors_name_task_and_field() {
    let body = r#""source": "https://example.org/suite/1", "templates": ["The {s} by the {o}"], "label": "s",
        "result_prepend_space": true, "labels": {"one": ["is"], "many": ["are"]},
        "variables": {"s": {"one": ["owl"], "many": ["owls"]}, "o": ["tree", "barn", "tree"]}"#;
    let suite = read_suite(&write_suite("canonical", &format!(r#"{{"agr_like": {{{body}}}}}"#))).unwrap();
    let task = &suite.tasks["agr_like"];
    assert_eq!(task.about.get("source").map(String::as_str), Some("https://example.org/suite/1"));
    assert_eq!(task.variables["o"], Fillers::List(vec!["tree".into(), "barn".into()]));
    assert_eq!(task.notes, vec!["`variables.o` lists \"tree\" more than once: kept once".to_string()]);
    let wrong = format!(
        r#"{{"agr_like": {{{}}}}}"#,
        body.replace(r#""templates": ["The {s} by the {o}"]"#, r#""templates": "The {s} by the {o}""#)
    );
    let e = read_suite(&write_suite("wrong-type", &wrong)).unwrap_err().to_string();
    assert!(e.contains("task `agr_like`: templates:") && e.contains("expected a list of template strings"), "{e}");
    let e = read_suite(&write_suite(
        "wrong-label",
        &format!(r#"{{"agr_like": {{{}}}}}"#, body.replace(r#""label": "s""#, r#""label": 3"#)),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("task `agr_like`: label:") && e.contains("or a list of variables"), "{e}");
}

/// A label that is a list of variables (CausalGym's `gss_subord*`: `{subordinator}{the}`) is
/// decided by them jointly, as CausalGym's `Dataset.sample_pair` fills them: every label
/// variable takes the base's class on the base side and the source's class on the source side,
/// each word drawn alone from its class's list; a blank filler (`""`) is a word like any other.
#[test]
fn a_list_valued_label_sets_every_label_variable_from_the_sides_class() {
    let json = r#"{"gss_like": {"source": "x", "templates": ["{sub}{det} {n} {v} the {o}"], "label": ["sub", "det"],
        "result_prepend_space": false, "labels": {"yes": [","], "no": ["."]},
        "variables": {"sub": {"yes": ["When", "After", "Since"], "no": [""]}, "det": {"yes": [" the"], "no": ["The"]},
                      "n": ["cats", "owls", "dogs"], "v": ["saw", "ate"], "o": ["hall", "seeds", "moon"]}}}"#;
    let suite = read_suite(&write_suite("joint", json)).unwrap();
    let task = &suite.tasks["gss_like"];
    assert_eq!(task.label.names(), ["sub", "det"]);
    // 3 × 2 × 3 words of the other slots, times 3 × 1 subordinators and 1 × 1 determiners.
    assert_eq!(task.combination_count(), 18.0 * 3.0);
    assert_eq!(task.blank_slot("sub").as_deref(), Some("`sub` has a blank filler in class `no`"));
    assert_eq!(task.blank_slot("det"), None);
    let pairs = split(&suite, "gss_like", 40, 10, 3).unwrap();
    let (mut seen_subs, mut n) = (std::collections::BTreeSet::new(), 0);
    for ex in pairs.train.iter().chain(&pairs.test) {
        let (base, source, base_label, label, base_class) = parts(ex);
        let ((bt, bs), (st, ss)) = (text(base), text(source));
        let (yes, no) = if base_class == "yes" { ((&bt, &bs), (&st, &ss)) } else { ((&st, &ss), (&bt, &bs)) };
        // The `yes` side: a subordinator and " the"; the `no` side: no subordinator and "The".
        let sub = &yes.0[yes.1["sub"].0..yes.1["sub"].1];
        assert!(["When", "After", "Since"].contains(&sub), "{}", yes.0);
        assert_eq!(&yes.0[yes.1["det"].0..yes.1["det"].1], " the", "{}", yes.0);
        assert_eq!(no.1["sub"].0, no.1["sub"].1, "a blank subordinator covers nothing: {}", no.0);
        assert!(no.0.starts_with("The "), "{}", no.0);
        // The rest is the same words on both sides.
        assert_eq!(&yes.0[yes.1["det"].1..], &no.0[no.1["det"].1..]);
        assert_eq!((base_label.as_str(), label.as_str()), if base_class == "yes" { (",", ".") } else { (".", ",") });
        seen_subs.insert(sub.to_string());
        n += 1;
    }
    assert_eq!(n, 50);
    assert_eq!(seen_subs.len(), 3, "each subordinator is drawn: {seen_subs:?}");
}

/// Dotted variables of one head are chosen together, as CausalGym chooses them: `clause.verb`
/// and `clause.obj` come from the same index; lists of one head must be as long.
#[test]
fn dotted_variables_of_one_head_are_chosen_together() {
    let json = r#"{"t": {"templates": ["The {s} {clause.verb} the {clause.obj}"], "label": "s",
        "labels": {"one": ["is"], "many": ["are"]}, "result_prepend_space": true,
        "variables": {"s": {"one": ["owl"], "many": ["owls"]},
                      "clause.verb": ["ate", "read", "saw"], "clause.obj": ["seeds", "books", "stars"]}}}"#;
    let suite = read_suite(&write_suite("dotted", json)).unwrap();
    let pairs = split(&suite, "t", 4, 2, 0).unwrap();
    for ex in pairs.train.iter().chain(&pairs.test) {
        let (base, _, _, _, _) = parts(ex);
        let (text, _) = text(base);
        assert!(
            ["ate the seeds", "read the books", "saw the stars"].iter().any(|p| text.contains(p)),
            "the verb and its object come from one choice: {text}"
        );
    }
    let e = read_suite(&write_suite("dotted-uneven", &json.replace(r#""stars"]"#, r#""stars", "moons"]"#)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("share the head `clause`") && (e.contains("(3 and 4)") || e.contains("(4 and 3)")), "{e}");
}
