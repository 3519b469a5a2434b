//! Interventions placed in a real (tiny) model: the cached path (run to the site, intervene, go
//! on) equals the hooked forward; shared parameters at two sites receive both sites' gradients.

use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Int, Tensor, backend::AutodiffBackend};
use ferrovene_interventions::das::DasLowRank;
use ferrovene_interventions::{Composition, Intervene, Intervention, Orthogonal, Placement, Rng};
use ferrovene_models::{Component, Input, Site, Transformer, forward, gather_positions, load_folder, resume, run_to};

type B = ferrovene_models::Cpu;
type AD = Autodiff<B>;

fn tiny() -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/tiny/llama");
    assert!(p.exists(), "golden folder {} is missing", p.display());
    p
}

fn pos<BK: burn::tensor::backend::Backend>(v: &[i64], device: &BK::Device) -> Tensor<BK, 2, Int> {
    Tensor::<BK, 1, Int>::from_ints(v, device).reshape([v.len(), 1])
}

#[test]
fn cached_path_equals_hooked_forward() {
    let dev = Default::default();
    let model = load_folder::<B>(&tiny(), &dev).unwrap().model;
    let site = Site::new(1, Component::BlockOutput);
    let info = model.site_info(site).unwrap();
    let base = Input::<B>::from_ids(&[vec![5, 17, 42, 8], vec![1, 2, 3, 4]], &dev);
    let source = Input::<B>::from_ids(&[vec![9, 9, 30, 31], vec![60, 61, 62, 63]], &dev);
    let p = pos::<B>(&[2, 1], &dev);
    let src = gather_positions(run_to(&model, &source, site).unwrap().activation, p.clone());
    let iv = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(3, 32, &mut Rng::new(4), &dev) });
    let placements = || vec![Placement::new(info, &iv, p.clone(), Some(src.clone()), vec![]).unwrap()];

    let mut hooks = Intervene::new(placements(), Composition::Parallel);
    let hooked: Vec<f32> = model.head(forward(&model, &base, &mut hooks)).unwrap().into_data().to_vec().unwrap();

    let ckpt = run_to(&model, &base, site).unwrap();
    let changed = Intervene::new(placements(), Composition::Parallel).apply_at(site, ckpt.activation.clone());
    let cached: Vec<f32> = model
        .head(resume(&model, &ckpt, changed, &mut ferrovene_models::NoHooks).unwrap())
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    assert!(hooked == cached, "the cached path differs from the hooked forward");
    let plain: Vec<f32> =
        model.head(forward(&model, &base, &mut ferrovene_models::NoHooks)).unwrap().into_data().to_vec().unwrap();
    assert!(plain.iter().zip(&hooked).any(|(a, b)| (a - b).abs() > 1e-4), "the intervention changed nothing");
}

struct GradOf<'a> {
    grads: &'a <AD as AutodiffBackend>::Gradients,
    out: Vec<Vec<f32>>,
}

impl ModuleVisitor<AD> for GradOf<'_> {
    fn visit_float<const N: usize>(&mut self, param: &Param<Tensor<AD, N>>) {
        if let Some(g) = param.val().grad(self.grads) {
            self.out.push(g.into_data().to_vec().unwrap());
        }
    }
}

#[test]
fn a_shared_intervention_gets_the_gradients_of_every_site() {
    // d/dθ f(θ, θ) = ∂₁f + ∂₂f: one intervention placed at two sites gets exactly the sum of the
    // gradients two separate copies (same values, separate parameters) get in the same forward.
    let dev = Default::default();
    let model = load_folder::<AD>(&tiny(), &dev).unwrap().model;
    let sites = [Site::new(0, Component::BlockOutput), Site::new(1, Component::BlockOutput)];
    let base = Input::<AD>::from_ids(&[vec![5, 17, 42, 8]], &dev);
    let source = Input::<AD>::from_ids(&[vec![9, 9, 30, 31]], &dev);
    let p = pos::<AD>(&[2], &dev);
    let make = || Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(2, 32, &mut Rng::new(8), &dev) });
    let run = |ivs: [&Intervention<AD>; 2]| -> Vec<Vec<f32>> {
        let placements = sites
            .iter()
            .zip(ivs)
            .map(|(&s, iv)| {
                let src = gather_positions(run_to(&model, &source, s).unwrap().activation, p.clone()).detach();
                Placement::new(model.site_info(s).unwrap(), iv, p.clone(), Some(src), vec![]).unwrap()
            })
            .collect();
        let mut hooks = Intervene::new(placements, Composition::Series);
        let loss = model.head(forward(&model, &base, &mut hooks)).unwrap().slice([0..1, 3..4, 0..5]).sum();
        let grads = loss.backward();
        let mut out = Vec::new();
        for iv in ivs {
            let mut g = GradOf { grads: &grads, out: vec![] };
            iv.visit(&mut g);
            out.push(g.out.concat());
        }
        out
    };
    let shared = make();
    let together = run([&shared, &shared]).remove(0);
    let (a, b) = (make(), make());
    let apart = run([&a, &b]);
    assert!(
        apart[0].iter().any(|x| x.abs() > 1e-6) && apart[1].iter().any(|x| x.abs() > 1e-6),
        "both sites contribute"
    );
    for (i, g) in together.iter().enumerate() {
        let sum = apart[0][i] + apart[1][i];
        assert!((g - sum).abs() <= 1e-5 * sum.abs().max(1.0), "entry {i}: shared {g}, sum of copies {sum}");
    }
}

#[test]
fn skipping_a_block_passes_its_input_through() {
    let dev = Default::default();
    let model = load_folder::<B>(&tiny(), &dev).unwrap().model;
    let input = Input::<B>::from_ids(&[vec![5, 17, 42, 8]], &dev);
    let all = pos::<B>(&[0, 1, 2, 3], &dev).reshape([1, 4]);
    let (inp, out) = (Site::new(1, Component::BlockInput), Site::new(1, Component::BlockOutput));
    let mut skip =
        ferrovene_interventions::Skip::new(model.site_info(inp).unwrap(), model.site_info(out).unwrap(), all).unwrap();
    let skipped: Vec<f32> = forward(&model, &input, &mut skip).into_data().to_vec().unwrap();
    // Same as going on from block 2 with block 1's input.
    let ckpt = run_to(&model, &input, inp).unwrap();
    let two = run_to(&model, &input, Site::new(2, Component::BlockInput)).unwrap();
    let want: Vec<f32> = resume(&model, &two, ckpt.activation.clone(), &mut ferrovene_models::NoHooks)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    assert!(skipped == want, "skip differs from feeding block 1's input to block 2");
    let mlp = model.site_info(Site::new(1, Component::MlpActivation)).unwrap();
    assert!(ferrovene_interventions::Skip::<B>::new(mlp, model.site_info(out).unwrap(), pos::<B>(&[0], &dev)).is_err());
}

#[test]
fn named_partitions() {
    use ferrovene_interventions::subspace::Partition;
    let p = Partition::new([("WX".to_string(), (0..8).collect()), ("YZ".to_string(), (8..16).collect())]).unwrap();
    assert_eq!(p.dims("YZ").unwrap(), (8..16).collect::<Vec<_>>().as_slice());
    let e = p.dims("AB").unwrap_err().to_string();
    assert!(e.contains("WX, YZ"), "{e}");
    let e = Partition::new([("a".to_string(), vec![0, 1]), ("b".to_string(), vec![1, 2])]).unwrap_err().to_string();
    assert!(e.contains("dim 1") && e.contains("overlap"), "{e}");
}
