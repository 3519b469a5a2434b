//! Training on synthetic frozen models with a planted answer: orthogonality survives 2,000 AdamW
//! steps (our parametrisations and torch's, from Haar starts); low-rank DAS recovers a planted subspace; Boundless DAS finds the planted size; a
//! linear probe reaches the Bayes accuracy.

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Param};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend, loss::cross_entropy_with_logits};
use ferrovene_interventions::das::{Annealing, BoundlessDas, DasFull, DasLowRank, TemperatureSchedule};
use ferrovene_interventions::orthogonal::{orthogonality_error, orthogonality_error_frobenius};
use ferrovene_interventions::probe::LinearProbe;
use ferrovene_interventions::{Intervention, Orthogonal, Rng};

type B = ferrovene_models::Cpu;
type AD = Autodiff<B>;

fn dev() -> ferrovene_models::CpuDevice {
    Default::default()
}

fn randn<BK: Backend<Device = ferrovene_models::CpuDevice>, const N: usize>(
    rng: &mut Rng,
    shape: [usize; N],
) -> Tensor<BK, N> {
    rng.normal_tensor(shape, &dev())
}

fn rotation_of(iv: &Intervention<AD>) -> Tensor<B, 2> {
    match iv {
        Intervention::DasFull(i) => i.rotation.matrix().inner(),
        Intervention::DasLowRank(i) => i.rotation.matrix().inner(),
        Intervention::Boundless(i) => i.rotation.matrix().inner(),
        _ => unreachable!("rotation families only"),
    }
}

/// Export format 1's parametrisations (still loaded and resumed): `k` unstructured Householder
/// vectors, or `exp((W − Wᵀ)/2)` for `k = d`.
fn format_1(k: usize, d: usize, rng: &mut Rng) -> Orthogonal<AD> {
    if k < d {
        Orthogonal::Householder(Param::from_tensor(rng.normal_tensor([k, d], &dev())))
    } else {
        Orthogonal::Exp(Param::from_tensor(rng.normal_tensor::<AD, 2>([d, d], &dev()) / (d as f64).sqrt()))
    }
}

#[test]
fn orthogonality_holds_after_2000_adamw_steps() {
    let cases = [
        ("format 1, full, matrix exponential", 16, 16, false),
        ("format 1, full, matrix exponential", 64, 64, false),
        ("format 1, low rank, Householder", 4, 64, false),
        ("torch, full (matrix exponential)", 64, 64, true),
        ("torch, low rank (Householder)", 4, 64, true),
        ("torch, low rank (Householder)", 32, 64, true),
        ("torch, low rank (Householder)", 4, 576, true),
        ("torch, low rank (Householder)", 32, 576, true),
    ];
    for (name, k, d, torch) in cases {
        check_orthogonality_over_2000_steps(name, k, d, torch);
    }
}

/// The full rotation at SmolLM2's width (d = 576): 2,000 steps of a 576 × 576 matrix exponential
/// take about 10 minutes on 2 cores, too long for every test run; run it with
/// `cargo test --test training -- --ignored` (result in docs/src/correctness.md).
#[test]
#[ignore]
fn orthogonality_holds_after_2000_adamw_steps_full_576() {
    check_orthogonality_over_2000_steps("torch, full (matrix exponential)", 576, 576, true);
}

/// Trains a DAS rotation towards a random target for 2,000 AdamW steps and asserts `R`'s rows
/// stay orthonormal (max deviation below 1e-5, Frobenius below 1e-5 up to k = 64 and growing
/// with k after), checked every 250 steps.
fn check_orthogonality_over_2000_steps(name: &str, k: usize, d: usize, torch: bool) {
    let rng = &mut Rng::new(11);
    let rotation = if torch { Orthogonal::<AD>::random(k, d, rng, &dev()) } else { format_1(k, d, rng) };
    let mut iv = if k == d {
        Intervention::DasFull(DasFull { rotation, k: 5 })
    } else {
        Intervention::DasLowRank(DasLowRank { rotation })
    };
    let mut opt = AdamWConfig::new().with_weight_decay(0.01).init::<AD, Intervention<AD>>();
    let (b, s) = (randn::<AD, 3>(rng, [32, 1, d]), randn::<AD, 3>(rng, [32, 1, d]));
    let target = randn::<AD, 3>(rng, [32, 1, d]);
    let (mut worst, mut worst_frobenius) = (0f32, 0f32);
    for step in 0..2000 {
        let out = iv.apply(b.clone(), Some(s.clone())).unwrap();
        let loss = (out - target.clone()).square().mean();
        let grads = GradientsParams::from_grads(loss.backward(), &iv);
        iv = opt.step(1e-2, iv, grads);
        if step % 250 == 249 {
            worst = worst.max(orthogonality_error(rotation_of(&iv)));
            worst_frobenius = worst_frobenius.max(orthogonality_error_frobenius(rotation_of(&iv)));
        }
    }
    eprintln!("{name}, k = {k}, d = {d}: max |R Rᵀ − I| ≤ {worst:.1e}, ‖R Rᵀ − I‖_F ≤ {worst_frobenius:.1e}");
    assert!(worst < 1e-5, "{name}, d = {d}: max |R Rᵀ − I| reached {worst} during 2,000 AdamW steps");
    // The Frobenius norm sums k² entries of f32 rounding: 1e-5 up to k = 64, then growing with
    // k (at k = 576, 1.4e-5 was measured: 2.5e-8 per entry, under half an ulp of 1.0).
    let frobenius_bound = 1e-5 * (k as f32 / 64.0).max(1.0);
    assert!(
        worst_frobenius < frobenius_bound,
        "{name}, d = {d}: ‖R Rᵀ − I‖_F reached {worst_frobenius} during 2,000 AdamW steps (bound {frobenius_bound:e})"
    );
}

/// A frozen readout that sees only the planted subspace `P` (`[m, d]`): logits = (h Pᵀ) M.
struct Planted {
    p: Tensor<AD, 2>,
    m: Tensor<AD, 2>,
}

impl Planted {
    fn new(rng: &mut Rng, m_dims: usize, d: usize, classes: usize) -> Self {
        let q = Orthogonal::<AD>::random(d, d, rng, &dev()).matrix().inner();
        let p = Tensor::from_inner(q.narrow(0, 0, m_dims));
        Planted { p, m: randn::<AD, 2>(rng, [m_dims, classes]) * 3.0 }
    }
    fn logits(&self, h: Tensor<AD, 2>) -> Tensor<AD, 2> {
        h.matmul(self.p.clone().transpose()).matmul(self.m.clone())
    }
    /// Labels of the counterfactual `b + (s − b) Pᵀ P`.
    fn counterfactual_labels(&self, b: Tensor<AD, 2>, s: Tensor<AD, 2>) -> Tensor<AD, 1, Int> {
        let cf = b.clone() + (s - b).matmul(self.p.clone().transpose()).matmul(self.p.clone());
        self.logits(cf).argmax(1).squeeze_dim(1)
    }
}

fn iia(model: &Planted, iv: &Intervention<AD>, b: Tensor<AD, 2>, s: Tensor<AD, 2>) -> f32 {
    let labels = model.counterfactual_labels(b.clone(), s.clone());
    let [n, d] = b.dims();
    let out = iv.apply(b.reshape([n, 1, d]), Some(s.reshape([n, 1, d]))).unwrap().reshape([n, d]);
    let pred = model.logits(out).argmax(1).squeeze_dim::<1>(1);
    pred.equal(labels).int().sum().into_scalar() as f32 / n as f32
}

fn train(
    rng: &mut Rng,
    model: &Planted,
    mut iv: Intervention<AD>,
    steps: usize,
    (lr, decay): (f64, bool),
    n: usize,
    mut each_step: impl FnMut(usize, &mut Intervention<AD>) -> Option<Tensor<AD, 1>>,
) -> Intervention<AD> {
    let d = model.p.dims()[1];
    let mut opt = AdamWConfig::new().with_weight_decay(0.0).init::<AD, Intervention<AD>>();
    for step in 0..steps {
        let extra = each_step(step, &mut iv);
        let (b, s) = (randn::<AD, 2>(rng, [n, d]), randn::<AD, 2>(rng, [n, d]));
        let labels = model.counterfactual_labels(b.clone(), s.clone());
        let out = iv.apply(b.reshape([n, 1, d]), Some(s.reshape([n, 1, d]))).unwrap().reshape([n, d]);
        let classes = model.m.dims()[1];
        let target = labels.one_hot::<2>(classes).float();
        let mut loss = cross_entropy_with_logits(model.logits(out), target);
        if let Some(e) = extra {
            loss = loss + e;
        }
        let grads = GradientsParams::from_grads(loss.backward(), &iv);
        // optionally a linear decay to zero, so the end of the run settles
        let rate = if decay { lr * (1.0 - step as f64 / steps as f64) } else { lr };
        iv = opt.step(rate, iv, grads);
    }
    iv
}

/// Cosines of the principal angles between the row spaces of two `[2, d]` orthonormal matrices.
fn principal_cosines(r: Tensor<B, 2>, p: Tensor<B, 2>) -> [f32; 2] {
    let c: Vec<f32> = r.matmul(p.transpose()).into_data().to_vec().unwrap(); // 2 × 2
    let (a, b, cc, d) = (c[0], c[1], c[2], c[3]);
    // eigenvalues of C Cᵀ
    let (x, y, z) = (a * a + b * b, a * cc + b * d, cc * cc + d * d);
    let tr = x + z;
    let disc = ((x - z) * (x - z) + 4.0 * y * y).sqrt();
    [((tr + disc) / 2.0).sqrt(), ((tr - disc) / 2.0).max(0.0).sqrt()]
}

#[test]
fn low_rank_das_recovers_a_planted_subspace() {
    let rng = &mut Rng::new(21);
    let (d, k) = (16, 2);
    let model = Planted::new(rng, k, d, 6);
    let iv = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(k, d, rng, &dev()) });
    let before = iia(&model, &iv, randn(rng, [2000, d]), randn(rng, [2000, d]));
    let iv = train(rng, &model, iv, 1500, (0.02, true), 512, |_, _| None);
    let after = iia(&model, &iv, randn(rng, [2000, d]), randn(rng, [2000, d]));
    let cos = principal_cosines(rotation_of(&iv), model.p.clone().inner());
    assert!(cos[0] >= 0.99 && cos[1] >= 0.99, "principal-angle cosines {cos:?} (IIA before {before}, after {after})");
    assert!(after >= 0.99, "held-out IIA {after} (before training {before}; cosines {cos:?})");
}

#[test]
fn boundless_das_learns_the_planted_size() {
    // (Checked: seeds 31 to 37 all land within ±2 dims with these settings.)
    let rng = &mut Rng::new(31);
    let (d, planted) = (16, 4);
    let model = Planted::new(rng, planted, d, 8);
    // Start narrow (β·d = 1.6 dims) and let the task widen the boundary; a penalty on β (pyvene's
    // boundary loss, on the raw parameter so it acts even where the clamp saturates) keeps it
    // as narrow as the task allows (weight 1, as in pyvene's tutorial). τ anneals 1 → 0.1
    // geometrically over the first half, then holds; the learning rate decays linearly to zero.
    let iv = Intervention::Boundless(BoundlessDas {
        rotation: Orthogonal::random(d, d, rng, &dev()),
        boundary: Param::from_tensor(Tensor::from_floats([0.1], &dev())),
        temperature: 1.0,
    });
    let steps = 1500;
    let schedule = TemperatureSchedule { start: 1.0, end: 0.1, steps: steps / 2, annealing: Annealing::Geometric };
    let iv = train(rng, &model, iv, steps, (0.01, true), 128, |step, iv| {
        let Intervention::Boundless(b) = iv else { unreachable!() };
        b.temperature = schedule.at(step);
        Some(b.boundary.val().sum())
    });
    let Intervention::Boundless(b) = &iv else { unreachable!() };
    let learned = b.boundary_dims(d);
    let acc = iia(&model, &iv, randn(rng, [2000, d]), randn(rng, [2000, d]));
    assert!((learned - planted as f32).abs() <= 2.0, "learned boundary {learned} dims, planted {planted} (IIA {acc})");
    assert!(acc >= 0.95, "IIA {acc} with boundary {learned}");
}

#[test]
fn linear_probe_reaches_the_bayes_accuracy() {
    let rng = &mut Rng::new(41);
    let (d, classes, n) = (8, 3, 3000);
    let means = randn::<B, 2>(rng, [classes, d]) * 0.9;
    let sample = |rng: &mut Rng, n: usize| {
        let labels: Vec<i64> = (0..n).map(|_| (rng.next_u64() % classes as u64) as i64).collect();
        let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [n]), &dev());
        let x = means.clone().select(0, labels.clone()) + randn::<B, 2>(rng, [n, d]);
        (x, labels)
    };
    let accuracy = |pred: Tensor<B, 1, Int>, labels: Tensor<B, 1, Int>| {
        pred.equal(labels).int().sum().into_scalar() as f32 / n as f32
    };
    let (x_test, y_test) = sample(rng, n);
    // Bayes rule for equal priors and identity covariance: the nearest mean.
    let dist = (x_test.clone().unsqueeze_dim::<3>(1) - means.clone().unsqueeze_dim::<3>(0))
        .square()
        .sum_dim(2)
        .squeeze_dim::<2>(2);
    let bayes = accuracy(dist.argmin(1).squeeze_dim(1), y_test.clone());

    let mut probe = LinearProbe::<AD>::init(d, classes, rng, &dev());
    let mut opt = AdamWConfig::new().with_weight_decay(0.0).init::<AD, LinearProbe<AD>>();
    let (x_train, y_train) = sample(rng, n);
    let (x_train, y_train) = (Tensor::<AD, 2>::from_inner(x_train), Tensor::<AD, 1, Int>::from_inner(y_train));
    for _ in 0..300 {
        let logits = probe.logits(x_train.clone().reshape([n, 1, d])).reshape([n, classes]);
        let loss = cross_entropy_with_logits(logits, y_train.clone().one_hot::<2>(classes).float());
        let grads = GradientsParams::from_grads(loss.backward(), &probe);
        probe = opt.step(0.05, probe, grads);
    }
    let probe = probe.valid();
    let pred = probe.logits(x_test.reshape([n, 1, d])).reshape([n, classes]).argmax(1).squeeze_dim(1);
    let acc = accuracy(pred, y_test);
    assert!((acc - bayes).abs() <= 0.02, "probe accuracy {acc}, Bayes accuracy {bayes}");
    assert!(bayes < 0.97 && bayes > 0.5, "the classes should overlap (Bayes accuracy {bayes})");
}
