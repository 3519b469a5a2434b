//! For every architecture and every site: running to the site and going on from it equals the
//! plain forward, and a hook that returns its input leaves the output bit-identical. Also: asking
//! for a site that does not exist names the valid ones.

mod common;

use burn::tensor::{Int, Tensor};
use common::*;
use ferrovene_models::arch::mlp::{Mlp, MlpConfig};
use ferrovene_models::{
    AnyModel, Component, FnHook, Input, NoHooks, Site, Transformer, forward, gather_positions, load_folder, resume,
    run_to, scatter_positions,
};

/// Two rows of different lengths (right-padded), so that masks and positions are exercised.
fn batch(vocab: u32) -> Input<B> {
    let rows = vec![vec![5 % vocab, 17 % vocab, 42 % vocab, 8 % vocab, 91 % vocab, 3], vec![1, 2, 3, 4]];
    Input::padded(&rows, 0, false, &Default::default())
}

/// Logits for language models, the last hidden state for encoders.
fn output(model: &AnyModel<B>, hidden: Tensor<B, 3>) -> Vec<f32> {
    match model.head(hidden.clone()) {
        Some(logits) => to_vec(logits),
        None => to_vec(hidden),
    }
}

fn check_all_sites(name: &str, model: &AnyModel<B>, input: &Input<B>) {
    let plain = output(model, forward(model, input, &mut NoHooks));
    let sites = model.sites();
    let components: std::collections::BTreeSet<Component> = sites.iter().map(|s| s.site.component).collect();
    assert_eq!(components.len(), 16, "{name}: every transformer component is a site: {components:?}");
    for info in sites {
        let site = info.site;
        // (a) a hook that returns its input changes nothing, bit for bit
        let mut identity = FnHook::new([site], |_s, h| h);
        let hooked = output(model, forward(model, input, &mut identity));
        assert!(hooked == plain, "{name}: identity hook at {site} changed the output");
        // (b) run to the site, go on from it: the plain forward again
        let ckpt = run_to(model, input, site).unwrap_or_else(|e| panic!("{name}: run_to {site}: {e}"));
        assert_eq!(ckpt.activation.dims()[2], info.width, "{name}: width of {site}");
        let resumed = output(model, resume(model, &ckpt, ckpt.activation.clone(), &mut NoHooks).unwrap());
        let d = max_abs_diff(&resumed, &plain);
        assert!(d == 0.0, "{name}: run_to + resume at {site} differs from forward by {d}");
    }
}

#[test]
fn tiny_gpt2_sites() {
    let m = load_folder::<B>(&golden("tiny/gpt2"), &Default::default()).unwrap().model;
    check_all_sites("gpt2", &m, &batch(97));
}

#[test]
fn tiny_gpt_neox_sites() {
    let m = load_folder::<B>(&golden("tiny/gpt_neox"), &Default::default()).unwrap().model;
    check_all_sites("gpt_neox", &m, &batch(97));
}

#[test]
fn tiny_llama_sites() {
    let m = load_folder::<B>(&golden("tiny/llama"), &Default::default()).unwrap().model;
    check_all_sites("llama", &m, &batch(97));
}

#[test]
fn minilm_bert_sites() {
    let m = load_folder::<B>(&fixture("minilm"), &Default::default()).unwrap().model;
    check_all_sites("bert", &m, &batch(30522));
}

#[test]
fn resume_with_a_changed_activation_equals_a_replacing_hook() {
    // (c) going on from a site with a *changed* activation is what a hook that writes it gives.
    let model = load_folder::<B>(&golden("tiny/llama"), &Default::default()).unwrap().model;
    let input = batch(97);
    let dev = Default::default();
    let positions = Tensor::<B, 1, Int>::from_ints([2, 1, 0, 3], &dev).reshape([2, 2]);
    for component in
        [Component::BlockOutput, Component::HeadValueOutput, Component::MlpActivation, Component::Embeddings]
    {
        let site = if component == Component::Embeddings { Site::new(0, component) } else { Site::new(1, component) };
        let ckpt = run_to(&model, &input, site).unwrap();
        let width = ckpt.activation.dims()[2];
        let new_values = Tensor::<B, 3>::ones([2, 2, width], &dev) * 0.5;
        let changed = scatter_positions(ckpt.activation.clone(), positions.clone(), new_values.clone());
        let got = to_vec(resume(&model, &ckpt, changed, &mut NoHooks).unwrap());
        let mut writer = ferrovene_models::Replace::new().at(site, positions.clone(), new_values.clone());
        let want = to_vec(forward(&model, &input, &mut writer));
        assert!(max_abs_diff(&got, &want) == 0.0, "resume with a change at {site} differs from the hook");
        assert!(
            max_abs_diff(&want, &to_vec(forward(&model, &input, &mut NoHooks))) > 1e-4,
            "the change at {site} had no effect"
        );
        // the written vectors are where they were put
        let read_back = to_vec(gather_positions(
            scatter_positions(ckpt.activation.clone(), positions.clone(), new_values.clone()),
            positions.clone(),
        ));
        assert!(read_back.iter().all(|v| *v == 0.5));
    }
}

#[test]
fn unknown_site_names_the_valid_ones() {
    let model = load_folder::<B>(&golden("tiny/gpt2"), &Default::default()).unwrap().model;
    let err = run_to(&model, &batch(97), Site::new(7, Component::BlockOutput)).unwrap_err().to_string();
    assert!(err.contains("7.block_output") && err.contains("layers 0 to 2") && err.contains("mlp_activation"), "{err}");
    let err = run_to(&model, &batch(97), Site::new(0, Component::Hidden)).unwrap_err().to_string();
    assert!(err.contains("0.hidden") && err.contains("block_output"), "{err}");
    let parse = "6.block_ouput".parse::<Site>().unwrap_err().to_string();
    assert!(parse.contains("unknown component") && parse.contains("block_output"), "{parse}");
    assert_eq!("6.block_output".parse::<Site>().unwrap(), Site::new(6, Component::BlockOutput));
}

#[test]
fn mlp_sites() {
    let dev = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&dev, 3);
    let mlp = Mlp::<B>::init(&MlpConfig { d_in: 16, hidden: vec![16, 12, 16], d_out: 2 }, &dev);
    let x = Tensor::<B, 2>::random([5, 16], burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
    let plain = to_vec(mlp.predict(x.clone()));
    assert_eq!(mlp.sites().len(), 3);
    for info in mlp.sites() {
        let mut identity = FnHook::new([info.site], |_s, h| h);
        assert!(to_vec(mlp.forward(x.clone(), &mut identity)) == plain, "identity hook at {}", info.site);
        let act = mlp.run_to(x.clone(), info.site).unwrap();
        assert_eq!(act.dims(), [5, 1, info.width]);
        let again = to_vec(mlp.resume(info.site, act, &mut NoHooks).unwrap());
        assert!(again == plain, "run_to + resume at {}", info.site);
    }
    let err = mlp.run_to(x, Site::new(3, Component::Hidden)).unwrap_err().to_string();
    assert!(err.contains("0.hidden, 1.hidden, 2.hidden"), "{err}");
}
