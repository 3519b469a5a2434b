//! The one-dimensional methods (`directions::fit`) on planted data: two Gaussian classes that
//! differ along a planted unit vector `u`. The supervised methods (probe, difference of means,
//! LDA) recover `u`; PCA and k-means recover it when the class difference is the data's largest
//! variance and miss it when a class-blind direction varies more (as CausalGym found on models);
//! a random direction does not.

use ferrovene_interventions::Rng;
use ferrovene_interventions::directions::{Method, fit};

const D: usize = 16;

fn unit(v: Vec<f64>) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// `n` vectors per class: ±2·u plus unit noise, plus `nuisance`·g·v along a class-blind `v ⊥ u`.
fn planted(n: usize, nuisance: f64, seed: u64) -> (Vec<Vec<f32>>, Vec<bool>, Vec<f64>) {
    let mut rng = Rng::new(seed);
    let u = unit((0..D).map(|_| rng.normal()).collect());
    let raw: Vec<f64> = (0..D).map(|_| rng.normal()).collect();
    let along = raw.iter().zip(&u).map(|(a, b)| a * b).sum::<f64>();
    let v = unit(raw.iter().zip(&u).map(|(a, b)| a - along * b).collect());
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for i in 0..2 * n {
        let y = i % 2 == 1;
        let (s, g) = (if y { 2.0 } else { -2.0 }, rng.normal());
        xs.push((0..D).map(|j| (s * u[j] + rng.normal() + nuisance * g * v[j] + 0.5) as f32).collect());
        ys.push(y);
    }
    (xs, ys, u)
}

fn cos(a: &[f32], u: &[f64]) -> f64 {
    a.iter().zip(u).map(|(x, y)| *x as f64 * y).sum()
}

#[test]
fn the_supervised_methods_recover_the_planted_direction() {
    let (xs, ys, u) = planted(300, 6.0, 1);
    for m in [Method::Probe, Method::Mean, Method::Lda] {
        let c = cos(&fit(m, &xs, &ys, 0).unwrap(), &u);
        eprintln!("{}: cos {c:.3}", m.name());
        assert!(c > 0.95, "{} finds u: cos {c}", m.name());
    }
}

#[test]
fn pca_and_kmeans_find_the_largest_variance_which_may_not_be_the_variable() {
    let (xs, ys, u) = planted(100, 0.0, 2);
    for m in [Method::Pca, Method::KMeans] {
        let c = cos(&fit(m, &xs, &ys, 0).unwrap(), &u);
        assert!(c > 0.9, "{}: with the classes the largest variance, cos {c}", m.name());
    }
    let (xs, ys, u) = planted(100, 6.0, 2);
    for m in [Method::Pca, Method::KMeans] {
        let c = cos(&fit(m, &xs, &ys, 0).unwrap(), &u).abs();
        assert!(c < 0.5, "{}: with a class-blind direction varying more, cos {c}", m.name());
    }
}

#[test]
fn a_random_direction_is_a_seeded_unit_vector_unrelated_to_the_variable() {
    let (xs, ys, u) = planted(50, 0.0, 3);
    let r = fit(Method::Random, &xs, &ys, 5).unwrap();
    assert_eq!(r, fit(Method::Random, &xs, &ys, 5).unwrap(), "seeded");
    assert_ne!(r, fit(Method::Random, &xs, &ys, 6).unwrap());
    assert!((r.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() - 1.0).abs() < 1e-5);
    assert!(cos(&r, &u).abs() < 0.8);
}

#[test]
fn directions_are_unit_vectors_oriented_toward_class_one() {
    let (xs, ys, _) = planted(60, 3.0, 4);
    let gap: Vec<f64> = (0..D)
        .map(|j| {
            let m =
                |c: bool| xs.iter().zip(&ys).filter(|(_, y)| **y == c).map(|(x, _)| x[j] as f64).sum::<f64>() / 60.0;
            m(true) - m(false)
        })
        .collect();
    for m in Method::ALL {
        let d = fit(m, &xs, &ys, 0).unwrap();
        assert!((d.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() - 1.0).abs() < 1e-5, "{}", m.name());
        if m != Method::Random {
            assert!(cos(&d, &gap) > 0.0, "{} points toward class 1", m.name());
        }
        assert_eq!(Method::from_name(m.name()), Some(m));
    }
}

#[test]
fn one_class_or_ragged_vectors_are_errors() {
    let xs = vec![vec![1.0f32, 2.0], vec![3.0, 4.0]];
    let e = fit(Method::Mean, &xs, &[true, true], 0).unwrap_err();
    assert!(e.contains("class 0"), "{e}");
    let e = fit(Method::Lda, &[vec![1.0], vec![1.0, 2.0]], &[true, false], 0).unwrap_err();
    assert!(e.contains("equal-width"), "{e}");
}

/// A direction becomes the interchange along it: `h_b + u uᵀ (h_s − h_b)`, checked by hand.
#[test]
fn a_direction_intervenes_as_the_interchange_along_it() {
    use burn::tensor::Tensor;
    type B = ferrovene_models::Cpu;
    let dev = Default::default();
    let (xs, ys, _) = planted(40, 0.0, 5);
    let u = fit(Method::Mean, &xs, &ys, 0).unwrap();
    let iv = ferrovene_interventions::directions::interchange_along::<B>(&u, &dev);
    let (hb, hs) = (&xs[0], &xs[1]);
    let base = Tensor::<B, 1>::from_floats(hb.as_slice(), &dev).reshape([1, 1, D]);
    let source = Tensor::<B, 1>::from_floats(hs.as_slice(), &dev).reshape([1, 1, D]);
    let got = iv.apply(base, Some(source)).unwrap().into_data().to_vec::<f32>().unwrap();
    let along: f32 = (0..D).map(|j| u[j] * (hs[j] - hb[j])).sum();
    for j in 0..D {
        let want = hb[j] + u[j] * along;
        assert!((got[j] - want).abs() < 1e-5, "dim {j}: {} vs {want}", got[j]);
    }
    assert!((got.iter().zip(hb).map(|(a, b)| (a - b).abs()).sum::<f32>()) > 1e-3, "it changed the base");
}
