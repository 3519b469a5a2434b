//! Identities that must hold exactly (or to float rounding), and how placements compose.

use burn::module::Param;
use burn::tensor::{Int, Tensor};
use ferrovene_interventions::das::{DasFull, DasLowRank};
use ferrovene_interventions::fixed::{Fixed, FixedOp};
use ferrovene_interventions::reft::{Projection, ReftFamily, ReftIntervention};
use ferrovene_interventions::steering::Steering;
use ferrovene_interventions::subspace::{apply_on_dims, head_dims};
use ferrovene_interventions::{Activation, Composition, Intervene, Intervention, Orthogonal, Placement, Rng};
use ferrovene_models::{Component, Site, SiteInfo};

type B = ferrovene_models::Cpu;

fn dev() -> ferrovene_models::CpuDevice {
    Default::default()
}

fn randn(rng: &mut Rng, shape: [usize; 3]) -> Tensor<B, 3> {
    rng.normal_tensor(shape, &dev())
}

fn max_diff(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn interchange_with_source_equal_to_base_returns_base() {
    let rng = &mut Rng::new(1);
    let b = randn(rng, [4, 3, 12]);
    let vanilla = Intervention::<B>::Fixed(Fixed::new(FixedOp::Interchange));
    assert_eq!(max_diff(vanilla.apply(b.clone(), Some(b.clone())).unwrap(), b.clone()), 0.0);
    let low = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(3, 12, rng, &dev()) });
    assert_eq!(max_diff(low.apply(b.clone(), Some(b.clone())).unwrap(), b.clone()), 0.0);
    let full = Intervention::DasFull(DasFull { rotation: Orthogonal::random(12, 12, rng, &dev()), k: 5 });
    assert!(max_diff(full.apply(b.clone(), Some(b.clone())).unwrap(), b) < 1e-5);
}

#[test]
fn full_rank_das_equals_plain_interchange() {
    let rng = &mut Rng::new(2);
    let (b, s) = (randn(rng, [4, 2, 10]), randn(rng, [4, 2, 10]));
    let full = Intervention::DasFull(DasFull { rotation: Orthogonal::random(10, 10, rng, &dev()), k: 10 });
    assert!(max_diff(full.apply(b.clone(), Some(s.clone())).unwrap(), s.clone()) < 1e-5);
    // the rank-d "low rank" form is the same interchange
    let r = Orthogonal::random(10, 10, rng, &dev()).matrix();
    let low = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::fixed(r) });
    assert!(max_diff(low.apply(b, Some(s.clone())).unwrap(), s) < 1e-5);
}

#[test]
fn loreft_with_w_equal_r_and_zero_bias_is_the_identity() {
    let rng = &mut Rng::new(3);
    let b = randn(rng, [4, 3, 12]);
    let r = Orthogonal::<B>::random(3, 12, rng, &dev()).matrix();
    let iv = ReftIntervention {
        family: ReftFamily::LoReft,
        rotation: Some(Orthogonal::fixed(r.clone())),
        learned_source: Some(Projection {
            weight: Param::from_tensor(r),
            bias: Param::from_tensor(Tensor::zeros([3], &dev())),
        }),
        proj_layer: None,
        learned_bias: None,
        act: Activation::Identity,
        dropout: burn::nn::DropoutConfig::new(0.0).init(),
    };
    assert!(max_diff(Intervention::Reft(iv).apply(b.clone(), None).unwrap(), b) < 1e-6);
}

#[test]
fn an_empty_subspace_is_a_no_op() {
    let rng = &mut Rng::new(4);
    let (b, s) = (randn(rng, [2, 3, 8]), randn(rng, [2, 3, 8]));
    let iv = Intervention::<B>::Fixed(Fixed::new(FixedOp::Interchange));
    assert_eq!(max_diff(apply_on_dims(&iv, b.clone(), Some(s), &[], 8).unwrap(), b), 0.0);
}

#[test]
fn subspaces_and_heads_touch_only_their_dims() {
    let rng = &mut Rng::new(5);
    let (b, s) = (randn(rng, [2, 1, 8]), randn(rng, [2, 1, 8]));
    let iv = Intervention::<B>::Fixed(Fixed::new(FixedOp::Interchange));
    let dims = head_dims(&[1, 3], 2); // heads 1 and 3 of 4 heads of width 2
    assert_eq!(dims, vec![2, 3, 6, 7]);
    let out: Vec<f32> = apply_on_dims(&iv, b.clone(), Some(s.clone()), &dims, 8).unwrap().into_data().to_vec().unwrap();
    let (bv, sv): (Vec<f32>, Vec<f32>) = (b.into_data().to_vec().unwrap(), s.into_data().to_vec().unwrap());
    for (i, o) in out.iter().enumerate() {
        let want = if dims.contains(&(i % 8)) { sv[i] } else { bv[i] };
        assert_eq!(*o, want, "dim {i}");
    }
    let err = apply_on_dims(&iv, randn(rng, [1, 1, 8]), Some(randn(rng, [1, 1, 8])), &[8], 8).unwrap_err().to_string();
    assert!(err.contains("dim 8") && err.contains("width 8"), "{err}");
}

fn info(width: usize) -> SiteInfo {
    SiteInfo { site: Site::new(2, Component::BlockOutput), width, heads: 1 }
}

fn positions(rows: &[[i64; 2]]) -> Tensor<B, 2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::<B, 1, Int>::from_ints(flat.as_slice(), &dev()).reshape([rows.len(), 2])
}

#[test]
fn series_sees_the_previous_effect_parallel_does_not() {
    let rng = &mut Rng::new(6);
    let h = randn(rng, [2, 5, 4]);
    let v = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.0, 4.0], &dev());
    let w = Tensor::<B, 1>::from_floats([10.0, 20.0, 30.0, 40.0], &dev());
    let sv = Intervention::Steering(Steering::fixed(v.clone(), 1.0));
    let sw = Intervention::Steering(Steering::fixed(w.clone(), 1.0));
    let pos = positions(&[[0, 3], [1, 4]]);
    let run = |composition| {
        let placements = vec![
            Placement::new(info(4), &sv, pos.clone(), None, vec![]).unwrap(),
            Placement::new(info(4), &sw, pos.clone(), None, vec![]).unwrap(),
        ];
        Intervene::new(placements, composition).apply_at(info(4).site, h.clone())
    };
    let at = |t: Tensor<B, 3>| ferrovene_models::gather_positions(t, pos.clone());
    let base = at(h.clone());
    let series = at(run(Composition::Series));
    let parallel = at(run(Composition::Parallel));
    let vw = (v + w.clone()).unsqueeze::<3>();
    assert!(max_diff(series, base.clone() + vw) < 1e-5, "series: b + v + w");
    assert!(max_diff(parallel, base + w.unsqueeze::<3>()) < 1e-5, "parallel: each reads b; the last write wins");
    // positions not chosen are untouched
    let untouched = |t: Tensor<B, 3>| t.narrow(1, 2, 1);
    assert_eq!(max_diff(untouched(run(Composition::Series)), untouched(h.clone())), 0.0);
}

#[test]
fn parallel_interventions_on_different_subspaces_both_act() {
    let rng = &mut Rng::new(7);
    let (h, s) = (randn(rng, [2, 4, 6]), randn(rng, [2, 2, 6]));
    let pos = positions(&[[0, 1], [2, 3]]);
    let swap = Intervention::<B>::Fixed(Fixed::new(FixedOp::Interchange));
    let zero = Intervention::<B>::Fixed(Fixed::new(FixedOp::Zero));
    let placements = vec![
        Placement::new(info(6), &swap, pos.clone(), Some(s.clone()), vec![0, 1, 2]).unwrap(),
        Placement::new(info(6), &zero, pos.clone(), None, vec![3, 4]).unwrap(),
    ];
    let out = Intervene::new(placements, Composition::Parallel).apply_at(info(6).site, h.clone());
    let got: Vec<f32> = ferrovene_models::gather_positions(out, pos.clone()).into_data().to_vec().unwrap();
    let (sv, bv): (Vec<f32>, Vec<f32>) =
        (s.into_data().to_vec().unwrap(), ferrovene_models::gather_positions(h, pos).into_data().to_vec().unwrap());
    for (i, g) in got.iter().enumerate() {
        let want = match i % 6 {
            0..=2 => sv[i],
            3 | 4 => 0.0,
            _ => bv[i],
        };
        assert_eq!(*g, want, "entry {i}");
    }
}

#[test]
fn placements_are_checked_against_their_site() {
    let rng = &mut Rng::new(8);
    let low = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::<B>::random(2, 6, rng, &dev()) });
    let pos = positions(&[[0, 1]]);
    let e = Placement::new(info(6), &low, pos.clone(), None, vec![]).err().unwrap().to_string();
    assert!(e.contains("reads a source"), "{e}");
    let e = Placement::new(info(8), &low, pos.clone(), Some(randn(rng, [1, 2, 8])), vec![]).err().unwrap().to_string();
    assert!(e.contains("acts on 6 dims") && e.contains("gives it 8") && e.contains("2.block_output"), "{e}");
    let e = Placement::new(info(6), &low, pos, Some(randn(rng, [1, 2, 6])), vec![9]).err().unwrap().to_string();
    assert!(e.contains("dim 9"), "{e}");
}

#[test]
fn collect_records_and_probe_reads_without_changing() {
    let rng = &mut Rng::new(12);
    let h = randn(rng, [2, 5, 4]);
    let pos = positions(&[[0, 3], [1, 4]]);
    let collect = Intervention::<B>::Fixed(Fixed::new(FixedOp::Collect));
    let probe = Intervention::Probe(ferrovene_interventions::probe::LinearProbe::init(4, 3, rng, &dev()));
    let placements = vec![
        Placement::new(info(4), &collect, pos.clone(), None, vec![]).unwrap(),
        Placement::new(info(4), &probe, pos.clone(), None, vec![]).unwrap(),
    ];
    let mut run = Intervene::new(placements, Composition::Parallel);
    let out = run.apply_at(info(4).site, h.clone());
    assert_eq!(max_diff(out, h.clone()), 0.0, "collect and probe leave the activation unchanged");
    assert_eq!(run.collected.len(), 2);
    let want = ferrovene_models::gather_positions(h, pos);
    for (i, (idx, v)) in run.collected.iter().enumerate() {
        assert_eq!(*idx, i);
        assert_eq!(max_diff(v.clone(), want.clone()), 0.0);
    }
    let Intervention::Probe(p) = &probe else { unreachable!() };
    assert_eq!(p.logits(run.collected[1].1.clone()).dims(), [2, 2, 3]);
}

#[test]
fn mean_ablation_and_noise() {
    let rng = &mut Rng::new(13);
    let mean = Tensor::<B, 1>::from_floats([1.0, -2.0, 3.0], &dev());
    let ablate = Intervention::Fixed(Fixed::with_vector(FixedOp::Mean, mean.clone()));
    let out = ablate.apply(randn(rng, [2, 2, 3]), None).unwrap();
    assert_eq!(max_diff(out, mean.unsqueeze::<3>().expand([2, 2, 3])), 0.0);
    // σ = (0.5, 2, 4): the added noise has those standard deviations
    let sigma = Tensor::<B, 1>::from_floats([0.5, 2.0, 4.0], &dev());
    let noise = Intervention::Fixed(Fixed::with_vector(FixedOp::Noise, sigma));
    let zeros = Tensor::<B, 3>::zeros([20_000, 1, 3], &dev());
    let out = noise.apply(zeros, None).unwrap();
    let std: Vec<f32> = out.square().mean_dim(0).sqrt().into_data().to_vec().unwrap();
    for (got, want) in std.iter().zip([0.5f32, 2.0, 4.0]) {
        assert!((got / want - 1.0).abs() < 0.05, "noise std {got}, σ {want}");
    }
}

#[test]
fn random_rotation_control_keeps_everything_but_the_rotation() {
    let rng = &mut Rng::new(14);
    let low = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::<B>::random(3, 12, rng, &dev()) });
    let control = low.with_random_rotation(&mut Rng::new(0)).unwrap();
    let (Intervention::DasLowRank(a), Intervention::DasLowRank(b)) = (&low, &control) else { unreachable!() };
    let (ra, rb) = (a.rotation.matrix(), b.rotation.matrix());
    assert_eq!(rb.dims(), [3, 12]);
    assert!(ferrovene_interventions::orthogonal::orthogonality_error(rb.clone()) < 1e-5);
    assert!((ra - rb).abs().max().into_scalar() > 0.1, "the rotation changed");
    assert!(Intervention::<B>::Fixed(Fixed::new(FixedOp::Zero)).with_random_rotation(rng).is_none());
}
