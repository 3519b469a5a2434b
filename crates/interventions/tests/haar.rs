//! torch-style starts (`TorchOrthogonal::haar`): `W = base[:, :k]` with `base` Haar-random spans
//! a uniformly random subspace — every entry has `E[W_ij²] = 1/d`, every row alike — while
//! export format 1's start (unstructured Householder vectors, the start for low-rank DAS and ReFT
//! before #13) put most of the subspace on the leading axes. `Orthogonal::random`, where every
//! recipe and the random-rotation control draw their rotations, is the Haar start.

use burn::module::Param;
use burn::tensor::Tensor;
use ferrovene_interventions::orthogonal::{TorchOrthogonal, orthogonality_error};
use ferrovene_interventions::{Orthogonal, Rng};

type B = ferrovene_models::Cpu;

/// Per row `i` of `W` (`d × k`), the mean of `W_ij²` over its columns and `draws` draws.
fn row_mass(draws: usize, d: usize, k: usize, w_of: impl Fn(&mut Rng) -> Tensor<B, 2>) -> Vec<f64> {
    let mut rng = Rng::new(5);
    let mut mass = vec![0.0f64; d];
    for _ in 0..draws {
        let w: Vec<f32> = w_of(&mut rng).into_data().to_vec().unwrap();
        for (i, row) in w.chunks(k).enumerate() {
            mass[i] += row.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / (k * draws) as f64;
        }
    }
    mass
}

#[test]
fn haar_starts_spread_the_subspace_over_every_axis() {
    let (d, k, draws) = (16, 4, 500);
    let device = Default::default();
    let haar = row_mass(draws, d, k, |rng| TorchOrthogonal::<B>::haar(k, d, rng, &device).w());
    for (i, m) in haar.iter().enumerate() {
        // E = 1/d; the sampling sd of the mean is about 3% of it here.
        assert!((m * d as f64 - 1.0).abs() < 0.15, "row {i}: mean W_ij² = {m}, expected {}", 1.0 / d as f64);
    }
    let w = TorchOrthogonal::<B>::haar(32, 576, &mut Rng::new(1), &device).w();
    assert!(orthogonality_error(w.transpose()) < 1e-5, "the columns of W are orthonormal");
    let full = TorchOrthogonal::<B>::haar(24, 24, &mut Rng::new(2), &device);
    assert!(orthogonality_error(full.w()) < 1e-5 && orthogonality_error(full.w().transpose()) < 1e-5);

    // What every rotation starts from.
    let random = row_mass(draws, d, k, |rng| Orthogonal::<B>::random(k, d, rng, &device).matrix().transpose());
    for (i, m) in random.iter().enumerate() {
        assert!(
            (m * d as f64 - 1.0).abs() < 0.15,
            "Orthogonal::random, row {i}: mean W_ij² = {m}, expected {}",
            1.0 / d as f64
        );
    }

    // Format 1's low-rank start, for contrast: the first k rows hold most of the mass.
    let householder = row_mass(draws, d, k, |rng| {
        Orthogonal::<B>::Householder(Param::from_tensor(rng.normal_tensor([k, d], &device))).matrix().transpose()
    });
    let leading: f64 = householder[..k].iter().sum::<f64>() / householder.iter().sum::<f64>();
    assert!(
        leading > 0.5,
        "Householder starts put {leading:.2} of the subspace on the first {k} axes (a uniform subspace: {:.2})",
        k as f64 / d as f64
    );
}

/// The draw as it was first written (a left-to-right f64 sum in every dot product): the fast
/// draw must give the same f32 matrix, so that every recipe's start, and its results, stay put.
fn haar_left_to_right(d: usize, rng: &mut Rng) -> Vec<f32> {
    let mut cols: Vec<Vec<f64>> = (0..d).map(|_| (0..d).map(|_| rng.normal()).collect()).collect();
    for j in 0..d {
        for _ in 0..2 {
            for i in 0..j {
                let dot: f64 = (0..d).map(|r| cols[i][r] * cols[j][r]).sum();
                // Two rows of `cols` at once: an iterator over one would borrow both.
                #[allow(clippy::needless_range_loop)]
                for r in 0..d {
                    cols[j][r] -= dot * cols[i][r];
                }
            }
        }
        let norm = cols[j].iter().map(|x| x * x).sum::<f64>().sqrt();
        cols[j].iter_mut().for_each(|x| *x /= norm);
    }
    (0..d).flat_map(|r| cols.iter().map(move |c| c[r] as f32)).collect()
}

#[test]
fn the_fast_draw_is_the_left_to_right_draw_in_f32() {
    // The recipes' widths and seeds: SmolLM2's 576 (das-capitals seed 3 and its control's
    // 3 ^ 1, boundless, the filler-gap sweep), the hierarchical MLP's 16, an odd width.
    for (d, seed) in [(576, 3), (576, 2), (16, 1), (16, 5), (37, 9)] {
        let fast = ferrovene_interventions::orthogonal::haar(d, &mut Rng::new(seed));
        let reference = haar_left_to_right(d, &mut Rng::new(seed));
        let differing = fast.iter().zip(&reference).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        let worst = fast.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(differing == 0, "d = {d}, seed {seed}: {differing} of {} entries differ (largest by {worst:e})", d * d);
    }
}
