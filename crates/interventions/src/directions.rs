//! One-dimensional directions fitted on a site's activations of two classes: the methods
//! CausalGym (Arora, Jurafsky & Potts 2024) compares with DAS — difference of means, a
//! logistic-regression probe, linear discriminant analysis, the first principal component,
//! k-means (k = 2) centroid difference, and a random direction. Each gives a unit vector `u`,
//! applied as an interchange along it, `h_base + u uᵀ (h_source − h_base)`: low-rank DAS with the
//! fixed rotation `R = uᵀ` ([`crate::das::DasLowRank`], [`crate::Orthogonal::fixed`]).
//!
//! Plain f64 code on `[n][d]` activations: these fits run once per site, on a few hundred vectors.

use ferrovene_models::rng::Rng;

use crate::logistic::dot;

/// A way to find a direction from two classes' activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// `μ₁ − μ₀`.
    Mean,
    /// The weight vector of L2-regularised logistic regression (scikit-learn's default, `C = 1`).
    Probe,
    /// `(Σ_w + γ I)⁻¹ (μ₁ − μ₀)`: Fisher's discriminant with a little shrinkage.
    Lda,
    /// The first principal component of all the activations.
    Pca,
    /// The difference of the two centroids of k-means with k = 2.
    KMeans,
    /// A uniformly random unit vector (seeded).
    Random,
}

impl Method {
    /// Every method, in CausalGym's order.
    pub const ALL: [Method; 6] =
        [Method::Probe, Method::Mean, Method::Pca, Method::KMeans, Method::Lda, Method::Random];

    /// The name recipes and `--methods` use.
    pub fn name(self) -> &'static str {
        match self {
            Method::Mean => "mean",
            Method::Probe => "probe",
            Method::Lda => "lda",
            Method::Pca => "pca",
            Method::KMeans => "kmeans",
            Method::Random => "random",
        }
    }

    /// The method of a name, if any.
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The unit direction `method` finds in `xs` (`n` vectors of width `d`) with classes `ys`
/// (`false` / `true`); oriented so that class `true` projects higher on average. Errors when a
/// class is missing or the vectors are ragged.
pub fn fit(method: Method, xs: &[Vec<f32>], ys: &[bool], seed: u64) -> Result<Vec<f32>, String> {
    let d = xs.first().map_or(0, Vec::len);
    if d == 0 || xs.len() != ys.len() || xs.iter().any(|x| x.len() != d) {
        return Err(format!(
            "{}: needs equal-width vectors, one class each ({} vectors, {} classes)",
            method.name(),
            xs.len(),
            ys.len()
        ));
    }
    let xs: Vec<Vec<f64>> = xs.iter().map(|x| x.iter().map(|&v| v as f64).collect()).collect();
    let (mu0, mu1) =
        (mean(&xs, ys, false).ok_or("no vector of class 0")?, mean(&xs, ys, true).ok_or("no vector of class 1")?);
    let gap: Vec<f64> = mu1.iter().zip(&mu0).map(|(a, b)| a - b).collect();
    let raw = match method {
        Method::Mean => gap.clone(),
        Method::Probe => probe(&xs, ys)?,
        Method::Lda => lda(&xs, ys, &mu0, &mu1, &gap),
        Method::Pca => first_component(&xs, seed),
        Method::KMeans => kmeans2(&xs),
        Method::Random => {
            let mut rng = Rng::new(seed);
            (0..d).map(|_| rng.normal()).collect()
        }
    };
    let sign = if method != Method::Random && dot(&raw, &gap) < 0.0 { -1.0 } else { 1.0 };
    let norm = dot(&raw, &raw).sqrt();
    if !(norm > 0.0 && norm.is_finite()) {
        return Err(format!("{}: the direction came out {norm} long (identical classes?)", method.name()));
    }
    Ok(raw.iter().map(|v| (sign * v / norm) as f32).collect())
}

/// The mean of the vectors of class `class`.
fn mean(xs: &[Vec<f64>], ys: &[bool], class: bool) -> Option<Vec<f64>> {
    let members: Vec<&Vec<f64>> = xs.iter().zip(ys).filter(|(_, y)| **y == class).map(|(x, _)| x).collect();
    if members.is_empty() {
        return None;
    }
    let d = xs[0].len();
    Some((0..d).map(|j| members.iter().map(|x| x[j]).sum::<f64>() / members.len() as f64).collect())
}

/// L2-regularised logistic regression (scikit-learn's default, `C = 1`: [`crate::logistic`]), as
/// CausalGym's probe, on the centred activations divided by one common scale (their
/// root-mean-square spread), so that the penalty stays isotropic in the activations' own
/// coordinates: a per-feature standardisation would reweight the direction toward the features
/// that vary least.
fn probe(xs: &[Vec<f64>], ys: &[bool]) -> Result<Vec<f64>, String> {
    let (n, d) = (xs.len() as f64, xs[0].len());
    let mu: Vec<f64> = (0..d).map(|j| xs.iter().map(|x| x[j]).sum::<f64>() / n).collect();
    let spread = (xs.iter().map(|x| x.iter().zip(&mu).map(|(a, m)| (a - m).powi(2)).sum::<f64>()).sum::<f64>() / n)
        .sqrt()
        .max(1e-12);
    let z: Vec<Vec<f64>> = xs.iter().map(|x| x.iter().zip(&mu).map(|(a, m)| (a - m) / spread).collect()).collect();
    Ok(crate::logistic::fit(&z, ys, 1.0).map_err(|e| format!("probe: {e}"))?.weights)
}

/// Fisher's discriminant with the pooled within-class covariance, shrunk by 1e-3 of its mean
/// variance so that it can be solved when `n < d`.
fn lda(xs: &[Vec<f64>], ys: &[bool], mu0: &[f64], mu1: &[f64], gap: &[f64]) -> Vec<f64> {
    let d = gap.len();
    let mut cov = vec![vec![0.0; d]; d];
    for (x, &y) in xs.iter().zip(ys) {
        let mu = if y { mu1 } else { mu0 };
        let c: Vec<f64> = x.iter().zip(mu).map(|(a, b)| a - b).collect();
        for i in 0..d {
            for j in 0..=i {
                cov[i][j] += c[i] * c[j] / xs.len() as f64;
            }
        }
    }
    let trace: f64 = (0..d).map(|i| cov[i][i]).sum();
    let shrink = 1e-3 * trace / d as f64 + 1e-9;
    for (i, row) in cov.iter_mut().enumerate() {
        row[i] += shrink;
    }
    crate::logistic::solve_spd(cov, gap)
}

/// The first principal component of the centred vectors, by 300 power iterations on `XᵀX`
/// (without forming it) from a seeded random start.
fn first_component(xs: &[Vec<f64>], seed: u64) -> Vec<f64> {
    let (n, d) = (xs.len() as f64, xs[0].len());
    let mu: Vec<f64> = (0..d).map(|j| xs.iter().map(|x| x[j]).sum::<f64>() / n).collect();
    let c: Vec<Vec<f64>> = xs.iter().map(|x| x.iter().zip(&mu).map(|(a, b)| a - b).collect()).collect();
    let mut rng = Rng::new(seed);
    let mut v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    for _ in 0..300 {
        let mut next = vec![0.0; d];
        for x in &c {
            let p = dot(x, &v);
            for (t, xv) in next.iter_mut().zip(x) {
                *t += p * xv;
            }
        }
        let norm = dot(&next, &next).sqrt();
        if norm == 0.0 {
            break;
        }
        v = next.iter().map(|t| t / norm).collect();
    }
    v
}

/// Lloyd's k-means with k = 2, started from the vector farthest from the mean and the vector
/// farthest from that one (deterministic); the centroids' difference after 100 rounds.
fn kmeans2(xs: &[Vec<f64>]) -> Vec<f64> {
    let (n, d) = (xs.len() as f64, xs[0].len());
    let mu: Vec<f64> = (0..d).map(|j| xs.iter().map(|x| x[j]).sum::<f64>() / n).collect();
    let dist = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
    let farthest =
        |from: &[f64]| xs.iter().max_by(|a, b| dist(a, from).total_cmp(&dist(b, from))).cloned().unwrap_or_default();
    let c0 = farthest(&mu);
    let c1 = farthest(&c0);
    let mut centroids = [c0, c1];
    for _ in 0..100 {
        let assign: Vec<bool> = xs.iter().map(|x| dist(x, &centroids[1]) < dist(x, &centroids[0])).collect();
        let next = [mean(xs, &assign, false), mean(xs, &assign, true)];
        let [Some(a), Some(b)] = next else { break };
        if a == centroids[0] && b == centroids[1] {
            break;
        }
        centroids = [a, b];
    }
    centroids[1].iter().zip(&centroids[0]).map(|(a, b)| a - b).collect()
}

/// The interchange along the unit vector `u`, `h_base + u uᵀ (h_source − h_base)`: low-rank DAS
/// with the fixed rotation `R = uᵀ`, so that exports, `trainer eval` and `apply` take it as any
/// other DAS intervention.
pub fn interchange_along<B: burn::tensor::backend::Backend>(u: &[f32], device: &B::Device) -> crate::Intervention<B> {
    let r = burn::tensor::Tensor::<B, 1>::from_floats(u, device).reshape([1, u.len()]);
    crate::Intervention::DasLowRank(crate::das::DasLowRank { rotation: crate::Orthogonal::fixed(r) })
}
