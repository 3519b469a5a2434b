//! all-MiniLM-L6-v2 (BERT) from its Hugging Face folder against transformers (1e-4 absolute).

mod common;

use common::*;
use ferrovene_models::arch::bert::mean_pool_normalized;
use ferrovene_models::{Capture, Component, Input, Site, forward, load_folder};

#[test]
fn minilm_hidden_states_and_sentence_embeddings_match() {
    let loaded = load_folder::<B>(&fixture("minilm"), &Default::default()).expect("load minilm");
    let tok = loaded.tokenizer.as_ref().expect("minilm ships tokenizer.json");
    let st = read_st(&golden("minilm/forward.safetensors"));
    let sentences = st.meta_json("sentences");
    let want_ids = st.meta_json("ids");
    for (i, s) in sentences.as_array().unwrap().iter().enumerate() {
        let ids = tok.encode(s.as_str().unwrap()).unwrap();
        let want: Vec<u32> = want_ids[i].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(ids, want, "token ids of sentence {i}");
        let input = Input::<B>::from_ids(&[ids], &Default::default());
        let layer3 = Site::new(2, Component::BlockOutput); // hidden_states[3] = output of layer 2
        let mut cap = Capture::new([layer3]);
        let hidden = forward(&loaded.model, &input, &mut cap);
        let d = max_abs_diff(&to_vec(hidden.clone()), &st.get(&format!("s{i}.last_hidden_state")).0);
        assert!(d < 1e-4, "sentence {i}: last_hidden_state differs by {d}");
        let d = max_abs_diff(&to_vec(cap.get(layer3).unwrap()), &st.get(&format!("s{i}.layer3")).0);
        assert!(d < 1e-4, "sentence {i}: hidden_states[3] differs by {d}");
        let emb = to_vec(mean_pool_normalized(hidden, input.mask.clone()));
        let d = max_abs_diff(&emb, &st.get(&format!("s{i}.sentence_embedding")).0);
        assert!(d < 1e-4, "sentence {i}: sentence embedding differs by {d}");
    }
}

#[test]
fn padded_batch_gives_the_same_sentence_embeddings() {
    let loaded = load_folder::<B>(&fixture("minilm"), &Default::default()).expect("load minilm");
    let tok = loaded.tokenizer.as_ref().unwrap();
    let st = read_st(&golden("minilm/forward.safetensors"));
    let rows: Vec<Vec<u32>> = st
        .meta_json("sentences")
        .as_array()
        .unwrap()
        .iter()
        .map(|s| tok.encode(s.as_str().unwrap()).unwrap())
        .collect();
    let input = Input::<B>::padded(&rows, tok.pad_id, false, &Default::default());
    let hidden = forward(&loaded.model, &input, &mut ferrovene_models::NoHooks);
    let emb = to_vec(mean_pool_normalized(hidden, input.mask.clone()));
    for i in 0..rows.len() {
        let d = max_abs_diff(&emb[i * 384..(i + 1) * 384], &st.get(&format!("s{i}.sentence_embedding")).0);
        assert!(d < 1e-4, "padded row {i}: sentence embedding differs by {d}");
    }
}
