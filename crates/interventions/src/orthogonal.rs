//! Matrices with orthonormal rows that stay orthonormal for the whole run: a parametrisation,
//! not a penalty, so every optimiser step yields an exactly (to float precision) orthogonal `R`.
//!
//! - `Torch` (what every rotation starts as): torch's `parametrizations.orthogonal`, as pyvene's
//!   rotate layers and pyreft's LoReFT use it: a fixed Haar-random `base` times a Householder
//!   product (`k < d`) or a matrix exponential (`k = d`) of a trained `X` that starts at `−I`, so
//!   the starting subspace is uniformly random and the training runs match pyvene's and pyreft's
//!   step by step (`crates/trainer/tests/training_golden.rs`).
//! - `Householder` and `Exp`: the parametrisations of export format 1 (`k` unstructured
//!   Householder vectors; `exp((W − Wᵀ)/2)`), kept so that those exports load and resume as they
//!   did; nothing new starts from them.
//! - `Fixed`: a rotation loaded from a file that gives the matrix itself (pyvene's materialised
//!   weights, a difference-of-means direction): applied as is, not trained.
//!
//! The matrix exponential is a degree-12 Taylor series after scaling to norm ≤ 1/4, `s`
//! squarings, then two Newton–Schulz steps that remove the rounding the squarings accumulate in
//! f32. Measured (`cargo bench --bench orthogonal`, 2-core CPU, forward + backward): see the
//! book's Performance chapter (docs/src/performance.md).

use burn::module::{Module, Param};
use burn::tensor::{ElementConversion, Tensor, backend::Backend};

use ferrovene_models::rng::Rng;

/// torch's `parametrizations.orthogonal` (what pyvene's rotate layers and pyreft's LoReFT use):
/// `W = base · Q(X)` (`d × k`), with `base` a fixed orthogonal `d × d` matrix and `X` (`d × k`)
/// trained. For `k < d`, `Q(X)` is the Householder product of the columns of `tril(X, −1)` (unit
/// diagonal implied, `τ_j = 2 / (1 + ‖A[:, j]‖²)`), each column times the sign of `X[j, j]`; for
/// `k = d`, `Q(X) = exp(tril(X) − tril(X)ᵀ)` (plus two Newton–Schulz steps against f32
/// rounding). `R = Wᵀ`.
#[derive(Module, Debug)]
pub struct TorchOrthogonal<B: Backend> {
    /// The fixed orthogonal `d × d` matrix (not trained).
    pub base: Param<Tensor<B, 2>>,
    /// The trained `d × k` parameter; `−I` at the start, where `W = base[:, :k]`.
    pub x: Param<Tensor<B, 2>>,
}

impl<B: Backend> TorchOrthogonal<B> {
    /// From torch's `base` and `X` (e.g. a golden file or a pyvene checkpoint).
    pub fn new(base: Tensor<B, 2>, x: Tensor<B, 2>) -> Self {
        TorchOrthogonal { base: Param::from_tensor(base.detach()).set_require_grad(false), x: Param::from_tensor(x) }
    }

    /// torch's start for `k` of `d` dims: `base` drawn from the Haar measure on orthogonal
    /// matrices and `X = −I` (`d × k`), so `W = base[:, :k]` spans a uniformly random
    /// `k`-dimensional subspace (unlike format 1's unstructured Householder vectors, whose
    /// starting subspace leant towards the leading axes).
    pub fn haar(k: usize, d: usize, rng: &mut Rng, device: &B::Device) -> Self {
        assert!(k >= 1 && k <= d, "a rotation needs 1 <= k <= d (k = {k}, d = {d})");
        let base = Tensor::<B, 1>::from_floats(haar(d, rng).as_slice(), device).reshape([d, d]);
        // Built from data, not as a view of `eye(d)`: a strided start would take other kernel
        // paths than the same values read back from an export, and differ from them by an ulp.
        TorchOrthogonal::new(base, Tensor::<B, 1>::from_floats(start_x(d, k).as_slice(), device).reshape([d, k]))
    }

    /// torch's start on a `base` completing `w` (`d × k`, orthonormal columns, row-major): its
    /// `W` is `w` exactly (pyreft's LoReFT keeps only `W`; a fixed or format-1 rotation written
    /// for pyvene).
    pub fn starting_at(w: &[f32], d: usize, k: usize, device: &B::Device) -> Self {
        TorchOrthogonal::new(
            Tensor::from_data(burn::tensor::TensorData::new(orthonormal_completion(w, d, k), [d, d]), device),
            Tensor::from_data(burn::tensor::TensorData::new(start_x(d, k), [d, k]), device),
        )
    }

    /// `W` (`d × k`).
    pub fn w(&self) -> Tensor<B, 2> {
        let x = self.x.val();
        let [d, k] = x.dims();
        // For the square case, two Newton–Schulz steps after the exponential remove the rounding
        // its squarings accumulate in f32 (2e-5 after 2,000 steps at d = 64 without them); they
        // move `W` by that rounding only, far inside the training goldens' tolerances.
        let q = if k < d { householder_product_signed(x) } else { polar_refine(polar_refine(expm(skew_of_tril(x)))) };
        self.base.val().matmul(q)
    }
}

/// torch's starting `X` for `k` of `d` dims, `−I` (`d × k`, row-major), where its
/// parametrisation gives `W = base[:, :k]`.
pub fn start_x(d: usize, k: usize) -> Vec<f32> {
    (0..d * k).map(|i| if i / k == i % k { -1.0 } else { 0.0 }).collect()
}

/// An orthonormal `d × d` matrix whose first `k` columns are `w` (`d × k`, orthonormal columns):
/// `w`, then the unit vectors Gram–Schmidt leaves most of (twice, in f64), in order.
pub fn orthonormal_completion(w: &[f32], d: usize, k: usize) -> Vec<f32> {
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut cols: Vec<Vec<f64>> = (0..k).map(|j| (0..d).map(|i| w[i * k + j] as f64).collect()).collect();
    let mut candidates: Vec<usize> = (0..d).collect();
    while cols.len() < d {
        // The unit vector with the largest part outside the columns so far.
        let residual = |e: usize| {
            let mut v: Vec<f64> = (0..d).map(|i| if i == e { 1.0 } else { 0.0 }).collect();
            for _ in 0..2 {
                for c in &cols {
                    let dot: f64 = c.iter().zip(&v).map(|(a, b)| a * b).sum();
                    v.iter_mut().zip(c).for_each(|(x, a)| *x -= dot * a);
                }
            }
            v
        };
        let (at, best) = candidates
            .iter()
            .enumerate()
            .map(|(at, &e)| (at, residual(e)))
            .max_by(|a, b| norm(&a.1).total_cmp(&norm(&b.1)))
            .expect("fewer than d columns leave a candidate");
        candidates.remove(at);
        let n = norm(&best);
        cols.push(best.into_iter().map(|x| x / n).collect());
    }
    let mut out = vec![0f32; d * d];
    for (j, c) in cols.iter().enumerate() {
        for i in 0..d {
            out[i * d + j] = if j < k { w[i * k + j] } else { c[i] as f32 };
        }
    }
    out
}

/// A `d × d` orthogonal matrix from the Haar measure, row-major: the `Q` of the QR
/// decomposition of a standard Gaussian matrix with `R`'s diagonal made positive (modified
/// Gram–Schmidt in f64, twice for orthogonality to rounding).
pub fn haar(d: usize, rng: &mut Rng) -> Vec<f32> {
    let mut cols: Vec<Vec<f64>> = (0..d).map(|_| (0..d).map(|_| rng.normal()).collect()).collect();
    for j in 0..d {
        let (done, rest) = cols.split_at_mut(j);
        let col = &mut rest[0];
        for _ in 0..2 {
            for q in done.iter() {
                let dot = dot_f64(q, col);
                col.iter_mut().zip(q).for_each(|(c, q)| *c -= dot * q);
            }
        }
        let norm = dot_f64(col, col).sqrt();
        col.iter_mut().for_each(|x| *x /= norm);
    }
    (0..d).flat_map(|r| cols.iter().map(move |c| c[r] as f32)).collect()
}

/// `a · b` in f64 over eight running sums, so that the adds pipeline and vectorise (a
/// left-to-right sum waits on each add: 0.4 s for a Haar draw at d = 576 instead of 0.05 s). The
/// order differs from a plain sum by f64 rounding only, far below the f32 the draw is cast to.
fn dot_f64(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `tril(X) − tril(X)ᵀ` for a square `X`.
fn skew_of_tril<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let l = x.tril(0);
    l.clone() - l.transpose()
}

/// torch's Householder map for a tall `X` (`d × k`): `Q = H_1 ⋯ H_k E` (`E` the first `k`
/// columns of `I`), `H_j = I − τ_j v_j v_jᵀ` with `v_j` column `j` of `tril(X, −1)` plus a unit
/// at row `j` and `τ_j = 2 / (1 + ‖tril(X, −1)[:, j]‖²)`; then column `j` times `sign(X[j, j])`.
fn householder_product_signed<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let [d, k] = x.dims();
    let device = x.device();
    let eye_dk = Tensor::<B, 2>::eye(d, &device).narrow(1, 0, k);
    let a = x.clone().tril(-1);
    let v = a.clone() + eye_dk.clone(); // [d, k], unit diagonal
    let tau = (a.square().sum_dim(0) + 1.0).recip() * 2.0; // [1, k]
    let mut q = eye_dk.clone();
    for j in (0..k).rev() {
        let vj = v.clone().narrow(1, j, 1); // [d, 1]
        let tj = tau.clone().narrow(1, j, 1); // [1, 1]
        q = q.clone() - vj.clone().matmul(vj.transpose().matmul(q)) * tj;
    }
    let sign = (x * eye_dk).sum_dim(0).sign(); // [1, k]: sign of X[j, j]
    q * sign
}

/// How the rotation is represented.
#[derive(Module, Debug)]
pub enum Orthogonal<B: Backend> {
    /// `k` Householder vectors (`[k, d]`), for `k < d` (export format 1).
    Householder(Param<Tensor<B, 2>>),
    /// Unconstrained `W` (`[d, d]`); `R = exp((W − Wᵀ)/2)` (export format 1).
    Exp(Param<Tensor<B, 2>>),
    /// A given matrix with orthonormal rows (`[k, d]`), not trained.
    Fixed(Param<Tensor<B, 2>>),
    /// torch's parametrisation (pyvene, pyreft): `R = (base · Q(X))ᵀ`.
    Torch(TorchOrthogonal<B>),
}

impl<B: Backend> Orthogonal<B> {
    /// A random rotation with `k` orthonormal rows in `d` dims, from `rng`: torch's
    /// parametrisation from a Haar-random `base` ([`TorchOrthogonal::haar`]), so `R` spans a
    /// uniformly random `k`-dimensional subspace.
    ///
    /// ```
    /// use ferrovene_interventions::{Orthogonal, Rng};
    /// use ferrovene_models::Cpu;
    ///
    /// let r = Orthogonal::<Cpu>::random(4, 16, &mut Rng::new(0), &Default::default());
    /// let w = r.matrix(); // [4, 16], orthonormal rows: R Rᵀ = I
    /// let gram: Vec<f32> = w.clone().matmul(w.transpose()).into_data().to_vec().unwrap();
    /// for (i, g) in gram.iter().enumerate() {
    ///     let identity = if i % 5 == 0 { 1.0 } else { 0.0 };
    ///     assert!((g - identity).abs() < 1e-5, "entry {i}: {g}");
    /// }
    /// ```
    pub fn random(k: usize, d: usize, rng: &mut Rng, device: &B::Device) -> Self {
        Orthogonal::Torch(TorchOrthogonal::haar(k, d, rng, device))
    }

    /// A fixed rotation given by its rows (detached from any graph it came from).
    ///
    /// Its values are copied into a fresh row-major tensor: a view (such as the transpose that
    /// [`Orthogonal::matrix`] returns) would take other kernel paths than the same values read
    /// back from an export, and give results an ulp apart.
    pub fn fixed(r: Tensor<B, 2>) -> Self {
        let device = r.device();
        let r = Tensor::from_data(r.into_data(), &device);
        Orthogonal::Fixed(Param::from_tensor(r).set_require_grad(false))
    }

    /// `[k, d]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Orthogonal::Householder(v) | Orthogonal::Fixed(v) => v.val().dims(),
            Orthogonal::Exp(w) => w.val().dims(),
            Orthogonal::Torch(t) => {
                let [d, k] = t.x.val().dims();
                [k, d]
            }
        }
    }

    /// Values it holds that training never changes: torch's fixed `base` (`d × d`), or the
    /// whole of a `Fixed` matrix.
    pub fn frozen_params(&self) -> usize {
        match self {
            Orthogonal::Torch(t) => t.base.val().dims().iter().product(),
            Orthogonal::Fixed(r) => r.val().dims().iter().product(),
            Orthogonal::Householder(_) | Orthogonal::Exp(_) => 0,
        }
    }

    /// The matrix `R` (`[k, d]`, orthonormal rows).
    pub fn matrix(&self) -> Tensor<B, 2> {
        match self {
            Orthogonal::Fixed(r) => r.val(),
            Orthogonal::Householder(v) => householder_rows(v.val()),
            Orthogonal::Exp(w) => {
                let w = w.val();
                polar_refine(polar_refine(expm((w.clone() - w.transpose()) * 0.5)))
            }
            Orthogonal::Torch(t) => t.w().transpose(),
        }
    }
}

/// `E_k H_1 ⋯ H_k` for Householder vectors `v` (`[k, d]`).
fn householder_rows<B: Backend>(v: Tensor<B, 2>) -> Tensor<B, 2> {
    let [k, d] = v.dims();
    let mut m = Tensor::<B, 2>::eye(d, &v.device()).narrow(0, 0, k); // [k, d]
    for i in 0..k {
        let vi = v.clone().narrow(0, i, 1); // [1, d]
        let norm2 = vi.clone().square().sum(); // [1]
        let mv = m.clone().matmul(vi.clone().transpose()); // [k, 1]
        m = m - mv.matmul(vi) * (norm2.recip() * 2.0).reshape([1, 1]);
    }
    m
}

/// The ∞-norm (largest absolute row sum) up to which [`taylor_degree_12`] is exact in f32:
/// torch.matrix_exp's bound for its degree-12 Taylor polynomial (the truncation, ‖A‖¹³/13!, stays
/// under f32's rounding there).
const THETA: f32 = 1.461_661_5;

/// How many squarings a matrix of ∞-norm `norm` needs, scaled by 2^−s to at most [`THETA`]; each
/// squaring saved is three 576³ products per step at SmolLM2's width.
fn squarings_for(norm: f32) -> i32 {
    if norm > THETA { (norm / THETA).log2().ceil() as i32 } else { 0 }
}

/// The identity of `a`'s shape (`[…, d, d]`), materialised: burn-flex walks a broadcast operand
/// element by element, two contiguous ones with SIMD (the same values either way).
fn identity_like<B: Backend, const D: usize>(a: &Tensor<B, D>) -> Tensor<B, D> {
    let dims = a.dims();
    let mut eye = Tensor::<B, 2>::eye(dims[D - 1], &a.device()).unsqueeze::<D>();
    for (axis, &n) in dims.iter().enumerate().take(D - 2) {
        eye = eye.repeat_dim(axis, n);
    }
    eye
}

/// `Σ Aⁿ/n!` for n ≤ 12 of each matrix of an already scaled `a` (`[…, d, d]`), by
/// Paterson–Stockmeyer: `B₀ + A⁴(B₁ + A⁴(B₂ + A⁴/12!))` with `Bⱼ = Σ_{i<4} A^{4j+i}/(4j+i)!`, five
/// products instead of Horner's twelve, forward and backward (Boundless DAS's full rotation at
/// d = 576 spends most of its step here).
fn taylor_degree_12<B: Backend, const D: usize>(a: Tensor<B, D>) -> Tensor<B, D> {
    let eye = identity_like(&a);
    let a2 = a.clone().matmul(a.clone());
    let a3 = a2.clone().matmul(a.clone());
    let a4 = a2.clone().matmul(a2.clone());
    let c = |n: i32| 1.0 / (1..=n).map(f64::from).product::<f64>();
    let block = |j: i32| {
        eye.clone() * c(4 * j) + a.clone() * c(4 * j + 1) + a2.clone() * c(4 * j + 2) + a3.clone() * c(4 * j + 3)
    };
    let inner = block(2) + a4.clone() * c(12);
    let middle = block(1) + a4.clone().matmul(inner);
    block(0) + a4.matmul(middle)
}

/// `exp(A)` for a square `A`, by scaling and squaring a degree-12 Taylor series.
pub fn expm<B: Backend>(a: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm: f32 = a.clone().abs().sum_dim(1).max().into_scalar().elem::<f32>();
    let squarings = squarings_for(norm);
    let mut acc = taylor_degree_12(a / 2f32.powi(squarings));
    for _ in 0..squarings {
        acc = acc.clone().matmul(acc);
    }
    acc
}

/// One Newton–Schulz step towards the nearest orthogonal matrix, `R (3I − RᵀR) / 2`: it squares
/// the orthogonality error (the rounding that repeated squaring in [`expm`] accumulates in f32)
/// and is the identity on an exactly orthogonal `R`.
fn polar_refine<B: Backend, const D: usize>(r: Tensor<B, D>) -> Tensor<B, D> {
    let gram = r.clone().transpose().matmul(r.clone());
    r.matmul(identity_like(&gram) * 3.0 - gram) * 0.5
}

/// `max |R Rᵀ − I|`: how far rows are from orthonormal.
pub fn orthogonality_error<B: Backend>(r: Tensor<B, 2>) -> f32 {
    let k = r.dims()[0];
    let device = r.device();
    let gram = r.clone().matmul(r.transpose());
    (gram - Tensor::eye(k, &device)).abs().max().into_scalar().elem::<f32>()
}

/// `‖R Rᵀ − I‖_F`: the Frobenius norm of the deviation from orthonormal rows.
pub fn orthogonality_error_frobenius<B: Backend>(r: Tensor<B, 2>) -> f32 {
    let k = r.dims()[0];
    let device = r.device();
    let gram = r.clone().matmul(r.transpose());
    (gram - Tensor::eye(k, &device)).square().sum().sqrt().into_scalar().elem::<f32>()
}

/// torch's square orthogonal map for a stack of `d × d` parameters `X` (`[models, d, d]`): per
/// model `Q = polar(polar(exp(tril(X) − tril(X)ᵀ)))`, what [`TorchOrthogonal::w`] computes for one
/// square `X` before it multiplies by `base`, as batched products. Each model keeps its own
/// scaling (the number of squarings its norm calls for), so each slice equals the map of that
/// model alone: the stacked trainings of `das-hierarchical-equality` rely on it.
pub fn torch_square_q_stacked<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    polar_refine(polar_refine(expm_stacked(skew_of_tril(x))))
}

/// [`expm`] for each `d × d` matrix of `a` (`[models, d, d]`), each scaled and squared by its own
/// norm as it would be alone.
pub fn expm_stacked<B: Backend>(a: Tensor<B, 3>) -> Tensor<B, 3> {
    let [models, d, _] = a.dims();
    let device = a.device();
    let norms: Vec<f32> =
        a.clone().abs().sum_dim(2).max_dim(1).into_data().convert::<f32>().to_vec().expect("f32 data reads as f32");
    let squarings: Vec<i32> = norms.into_iter().map(squarings_for).collect();
    // Dividing by 2^s is exact, so multiplying by 2^−s gives the same scaled matrix as alone.
    let scale: Vec<f32> = squarings.iter().map(|&s| 1.0 / 2f32.powi(s)).collect();
    let mut acc = taylor_degree_12(a * Tensor::<B, 1>::from_floats(scale.as_slice(), &device).reshape([models, 1, 1]));
    let most = squarings.iter().copied().max().unwrap_or(0);
    for step in 0..most {
        let squared = acc.clone().matmul(acc.clone());
        let wants: Vec<bool> = squarings.iter().map(|&s| step < s).collect();
        if wants.iter().all(|&w| w) {
            acc = squared;
        } else {
            let mask =
                Tensor::<B, 1, burn::tensor::Bool>::from_data(burn::tensor::TensorData::new(wants, [models]), &device);
            acc = acc.mask_where(mask.reshape([models, 1, 1]).expand([models, d, d]), squared);
        }
    }
    acc
}
