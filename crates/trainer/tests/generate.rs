//! Generation with interventions on SmolLM2: the KV cache gives the same tokens as recomputing
//! the whole sequence at every step — without an intervention, with a steering vector at every
//! generated token, with a ReFT intervention at prompt positions only, and when sampling.

use burn::tensor::{Tensor, TensorData};
use ferrovene_interventions::Intervention;
use ferrovene_interventions::activation::Activation;
use ferrovene_interventions::reft::{ReftFamily, ReftIntervention};
use ferrovene_interventions::steering::Steering;
use ferrovene_models::rng::Rng;
use ferrovene_models::{Component, Site, Transformer, load};
use ferrovene_trainer::generate::{Choice, Decoding, Steer, generate};

type B = ferrovene_models::Cpu;

#[test]
fn kv_cache_generation_equals_cache_free_generation() {
    let dev = Default::default();
    let loaded = load::<B>("smollm2-135m", &dev).expect("the smollm2 fixture (scripts/fetch-fixtures)");
    let (model, tok) = (&loaded.model, loaded.tokenizer.as_ref().unwrap());
    let prompt = tok.encode("The old lighthouse keeper said that").unwrap();
    let site = Site::new(10, Component::BlockOutput);
    let info = model.site_info(site).unwrap();
    let mut rng = Rng::new(5);
    let steering = Intervention::Steering(Steering::fixed(rng.normal_tensor::<B, 1>([info.width], &dev), 4.0));
    let reft = Intervention::Reft(ReftIntervention::new(
        ReftFamily::LoReft,
        info.width,
        4,
        Activation::Identity,
        0.0,
        &mut rng,
        &dev,
    ));
    // Make the ReFT edit large enough to change the text: a big learned bias.
    let reft = match reft {
        Intervention::Reft(mut r) => {
            let src = r.learned_source.as_mut().unwrap();
            src.bias = burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![40.0f32, -40.0, 40.0, -40.0], [4]),
                &dev,
            ));
            Intervention::Reft(r)
        }
        _ => unreachable!(),
    };
    let last = prompt.len() - 1;
    let steer_every = Steer {
        intervention: &steering,
        site: info,
        positions: vec![last],
        sources: Vec::new(),
        dims: vec![],
        every_token: true,
    };
    let reft_prompt = Steer {
        intervention: &reft,
        site: info,
        positions: vec![0, last],
        sources: Vec::new(),
        dims: vec![],
        every_token: false,
    };
    let n = 12;
    let mut texts = Vec::new();
    for (what, steer) in [
        ("no intervention", None),
        ("steering at every token", Some(&steer_every)),
        ("ReFT at prompt positions", Some(&reft_prompt)),
    ] {
        for choice in [Choice::Greedy, Choice::Sample { temperature: 0.9, top_p: 0.9, seed: 3 }] {
            let cached =
                generate(model, &prompt, steer, &Decoding { max_new: n, choice, cache: true }, None, &dev).unwrap();
            let fresh =
                generate(model, &prompt, steer, &Decoding { max_new: n, choice, cache: false }, None, &dev).unwrap();
            assert_eq!(cached.len(), n);
            assert_eq!(
                cached,
                fresh,
                "{what}, {choice:?}: {:?} (cache) vs {:?} (no cache)",
                tok.decode(&cached).unwrap(),
                tok.decode(&fresh).unwrap()
            );
            texts.push(cached);
        }
    }
    // The interventions change the text (so the equalities above are not trivially between
    // unchanged outputs), and sampling differs from greedy.
    assert_ne!(texts[0], texts[2], "steering changed nothing");
    assert_ne!(texts[0], texts[4], "ReFT changed nothing");
    assert_ne!(texts[0], texts[1], "sampling equals greedy");
}

/// A model with a table of learned positions (GPT-2's `n_positions`, 64 in the tiny checkpoint)
/// refuses a generation that would run past it, instead of indexing past the table.
#[test]
fn generation_past_the_position_table_is_refused() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/tiny/gpt2");
    assert!(
        dir.join("config.json").exists(),
        "golden files missing: this test reads tests/golden/tiny/gpt2 (copied from ../shared/golden)"
    );
    let dev = Default::default();
    let loaded = ferrovene_models::load_folder::<ferrovene_models::Cpu>(&dir, &dev).unwrap();
    let e = generate(&loaded.model, &[1, 2, 3], None, &Decoding::greedy(62), None, &dev).unwrap_err().to_string();
    assert!(e.contains("more than the 64 positions") && e.contains("at most 61"), "{e}");
    assert_eq!(
        generate(&loaded.model, &[1, 2, 3], None, &Decoding::greedy(61), None, &dev).unwrap().len(),
        61,
        "up to the last position is allowed"
    );
}
