//! Finite differences (float64, central, ε = 1e-6) agree with autodiff for every trainable
//! family, on every parameter tensor (three entries each).

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData, backend::AutodiffBackend};
use ferrovene_interventions::das::{BoundlessDas, DasFull, DasLowRank, SigmoidMask};
use ferrovene_interventions::probe::LinearProbe;
use ferrovene_interventions::reft::{ReftFamily, ReftIntervention};
use ferrovene_interventions::steering::Steering;
use ferrovene_interventions::{Activation, Intervention, Orthogonal, Rng};

type AD = Autodiff<NdArray<f64>>;
const D: usize = 6;
const K: usize = 2;

/// Gradients of every parameter that requires one, in visiting order.
struct Grads<'a> {
    grads: &'a <AD as AutodiffBackend>::Gradients,
    out: Vec<Option<Vec<f64>>>,
}

impl ModuleVisitor<AD> for Grads<'_> {
    fn visit_float<const N: usize>(&mut self, param: &Param<Tensor<AD, N>>) {
        let t = param.val();
        self.out.push(if t.is_require_grad() {
            Some(
                t.grad(self.grads)
                    .map(|g| g.into_data().to_vec::<f64>().unwrap())
                    .unwrap_or_else(|| vec![0.0; t.shape().num_elements()]),
            )
        } else {
            None
        });
    }
}

/// Adds `delta` to entry `entry` of parameter number `target`.
struct Nudge {
    target: usize,
    entry: usize,
    delta: f64,
    seen: usize,
}

impl ModuleMapper<AD> for Nudge {
    fn map_float<const N: usize>(&mut self, param: Param<Tensor<AD, N>>) -> Param<Tensor<AD, N>> {
        let i = self.seen;
        self.seen += 1;
        if i != self.target {
            return param;
        }
        let (entry, delta) = (self.entry, self.delta);
        param.map(|t| {
            let shape = t.shape();
            let mut bump = vec![0.0f64; shape.num_elements()];
            bump[entry] = delta;
            let bump = Tensor::<AD, N>::from_data(TensorData::new(bump, shape), &t.device());
            let device = shape_device(&t);
            let moved = (t.detach() + bump).into_data();
            Tensor::from_data(moved, &device).require_grad()
        })
    }
}

fn shape_device<const N: usize>(t: &Tensor<AD, N>) -> burn::backend::ndarray::NdArrayDevice {
    t.device()
}

fn check(name: &str, iv: Intervention<AD>, probe: bool) {
    let dev = dev();
    let rng = &mut Rng::new(99);
    let base = f64_normals::<3>(rng, [3, 2, D], &dev);
    let source = f64_normals::<3>(rng, [3, 2, D], &dev);
    let out_width = if probe { 3 } else { D };
    let weights = f64_normals::<3>(rng, [3, 2, out_width], &dev);
    let loss = |iv: &Intervention<AD>| -> Tensor<AD, 1> {
        let out = match iv {
            Intervention::Probe(p) => p.logits(base.clone()),
            _ => iv.apply(base.clone(), Some(source.clone())).unwrap(),
        };
        (out * weights.clone()).sum()
    };
    let grads = loss(&iv).backward();
    let mut g = Grads { grads: &grads, out: Vec::new() };
    iv.visit(&mut g);
    let mut checked = 0;
    for (p, grad) in g.out.iter().enumerate() {
        let Some(grad) = grad else { continue };
        for entry in [0, grad.len() / 2, grad.len() - 1] {
            let eps = 1e-6;
            let at = |delta| {
                let moved = iv.clone().map(&mut Nudge { target: p, entry, delta, seen: 0 });
                loss(&moved).into_scalar()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            let ad = grad[entry];
            assert!(
                (fd - ad).abs() <= 1e-5 * fd.abs().max(1.0),
                "{name}: parameter {p} entry {entry}: autodiff {ad}, finite differences {fd}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "{name}: only {checked} gradient entries checked");
}

fn dev() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

/// Normals drawn in f64 (the f32 path of `Rng::normal_tensor` would do too; this keeps full precision).
fn f64_normals<const N: usize>(
    rng: &mut Rng,
    shape: [usize; N],
    device: &burn::backend::ndarray::NdArrayDevice,
) -> Tensor<AD, N> {
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

#[test]
fn das_full_matrix_exponential() {
    let rng = &mut Rng::new(1);
    check("das_full", Intervention::DasFull(DasFull { rotation: Orthogonal::random(D, D, rng, &dev()), k: K }), false);
}

#[test]
fn das_low_rank_householder() {
    let rng = &mut Rng::new(2);
    check(
        "das_low_rank",
        Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(K, D, rng, &dev()) }),
        false,
    );
}

#[test]
fn boundless_das_rotation_and_boundary() {
    let rng = &mut Rng::new(3);
    let iv = BoundlessDas {
        rotation: Orthogonal::random(D, D, rng, &dev()),
        boundary: Param::from_tensor(Tensor::from_floats([0.4], &dev())),
        temperature: 2.0,
    };
    check("das_boundless", Intervention::Boundless(iv), false);
}

#[test]
fn sigmoid_masks() {
    let rng = &mut Rng::new(4);
    let mask = |rng: &mut Rng| Param::from_tensor(f64_normals::<1>(rng, [D], &dev()));
    check(
        "sigmoid_mask",
        Intervention::SigmoidMask(SigmoidMask { mask: mask(rng), rotation: None, temperature: 0.5 }),
        false,
    );
    let rotated =
        SigmoidMask { mask: mask(rng), rotation: Some(Orthogonal::random(D, D, rng, &dev())), temperature: 0.5 };
    check("sigmoid_mask_rotated", Intervention::SigmoidMask(rotated), false);
}

#[test]
fn reft_family() {
    for (i, family) in [
        ReftFamily::LoReft,
        ReftFamily::NoReft,
        ReftFamily::ConsReft,
        ReftFamily::LoBiReft,
        ReftFamily::DiReft,
        ReftFamily::NoDiReft,
    ]
    .into_iter()
    .enumerate()
    {
        let rng = &mut Rng::new(10 + i as u64);
        let mut iv = ReftIntervention::new(family, D, K, Activation::Tanh, 0.0, rng, &dev());
        if let Some(b) = iv.learned_bias.take() {
            // start away from zero so the test is not at a special point
            iv.learned_bias = Some(b.map(|t| Tensor::from_data((t.detach() + 0.3).into_data(), &dev()).require_grad()));
        }
        check(&format!("{family:?}"), Intervention::Reft(iv), false);
    }
}

#[test]
fn probe_and_learned_steering() {
    let rng = &mut Rng::new(20);
    check("linear_probe", Intervention::Probe(LinearProbe::init(D, 3, rng, &dev())), true);
    let v = Param::from_tensor(f64_normals::<1>(rng, [D], &dev()));
    check("steering", Intervention::Steering(Steering { vector: v, alpha: 1.5 }), false);
}
