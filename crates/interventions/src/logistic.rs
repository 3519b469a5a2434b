//! L2-regularised binary logistic regression, fitted to convergence as scikit-learn's
//! `LogisticRegression(C = c)` fits it: the minimiser of
//!
//! ```text
//! ½‖w‖² + C Σᵢ log(1 + exp(−sᵢ (w·xᵢ + b))),    sᵢ = ±1,
//! ```
//!
//! with the intercept `b` not penalised. The objective is smooth and strictly convex, so Newton's
//! method with a backtracking line search reaches its minimum from zero in a handful of steps; the
//! fit stops when every gradient entry is below [`TOLERANCE`] times the data's own scale and
//! errors if that takes more than [`MAX_STEPS`]. The one logistic regression of the project: the
//! suite's probe direction and steer-iti's head probes both call [`fit`] (each after its own
//! scaling of the activations). Checked against scikit-learn 1.5.2 (`tests/golden/logistic/`).

/// Gradient entries below this fraction of `1 + C·n` count as zero.
pub const TOLERANCE: f64 = 1e-10;
/// Newton steps allowed before the fit is called non-convergent.
pub const MAX_STEPS: usize = 100;

/// A fitted model: `P(true | x) = σ(w·x + b)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    /// `w`.
    pub weights: Vec<f64>,
    /// `b`.
    pub intercept: f64,
    /// Newton steps taken.
    pub steps: usize,
}

impl Logistic {
    /// `w·x + b`: positive where the model says class `true`.
    pub fn score(&self, x: &[f64]) -> f64 {
        dot(&self.weights, x) + self.intercept
    }
}

/// `a · b`.
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `log(1 + eᵗ)` without overflow.
fn softplus(t: f64) -> f64 {
    t.max(0.0) + (-t.abs()).exp().ln_1p()
}

/// The objective at `(w, b)`.
fn objective(xs: &[Vec<f64>], ys: &[bool], c: f64, w: &[f64], b: f64) -> f64 {
    let loss: f64 = xs.iter().zip(ys).map(|(x, &y)| softplus(if y { -1.0 } else { 1.0 } * (dot(w, x) + b))).sum();
    0.5 * dot(w, w) + c * loss
}

/// Fits `n` vectors `xs` of width `d` with classes `ys` at inverse regularisation `c` (> 0).
/// Errors name what is wrong: ragged or empty input, a bad `c`, non-finite values, or no
/// convergence.
pub fn fit(xs: &[Vec<f64>], ys: &[bool], c: f64) -> Result<Logistic, String> {
    let d = xs.first().map_or(0, Vec::len);
    if xs.is_empty() || xs.len() != ys.len() || xs.iter().any(|x| x.len() != d) {
        return Err(format!(
            "logistic regression: needs one class per vector and vectors of one width ({} vectors, {} classes)",
            xs.len(),
            ys.len()
        ));
    }
    if !(c > 0.0 && c.is_finite()) {
        return Err(format!("logistic regression: C = {c}; give a positive finite number"));
    }
    if xs.iter().flatten().any(|v| !v.is_finite()) {
        return Err("logistic regression: the vectors hold a non-finite value".into());
    }
    let scale = 1.0 + c * xs.len() as f64;
    let (mut w, mut b) = (vec![0.0; d], 0.0);
    let mut f = objective(xs, ys, c, &w, b);
    for step in 0..=MAX_STEPS {
        // Gradient and Hessian in (w, b), b last.
        let mut g: Vec<f64> = w.iter().copied().chain([0.0]).collect();
        let mut h = vec![vec![0.0; d + 1]; d + 1];
        for (i, row) in h.iter_mut().enumerate().take(d) {
            row[i] = 1.0;
        }
        for (x, &y) in xs.iter().zip(ys) {
            let p = 1.0 / (1.0 + (-(dot(&w, x) + b)).exp());
            let (e, curvature) = (c * (p - if y { 1.0 } else { 0.0 }), c * p * (1.0 - p));
            for (gj, xj) in g.iter_mut().zip(x) {
                *gj += e * xj;
            }
            g[d] += e;
            let extended: Vec<f64> = x.iter().copied().chain([1.0]).collect();
            for (j, row) in h.iter_mut().enumerate() {
                let weight = curvature * extended[j];
                for (hk, xk) in row[..=j].iter_mut().zip(&extended) {
                    *hk += weight * xk;
                }
            }
        }
        let largest = g.iter().fold(0f64, |m, v| m.max(v.abs()));
        if largest <= TOLERANCE * scale {
            return Ok(Logistic { weights: w, intercept: b, steps: step });
        }
        if step == MAX_STEPS {
            break;
        }
        // The intercept's curvature can vanish when every probability saturates.
        h[d][d] += 1e-12 * scale;
        let direction: Vec<f64> = solve_spd(h, &g).into_iter().map(|v| -v).collect();
        let slope = dot(&g, &direction);
        // Near the minimum (a Newton decrement −slope this small) the step is taken whole: the
        // quadratic model is exact there, and the decrease it promises is below the rounding of
        // the objective, which a line search would read as no decrease.
        let near = -slope <= 1e-8 * (1.0 + f.abs());
        let mut t = 1.0;
        loop {
            let w_new: Vec<f64> = w.iter().zip(&direction).map(|(a, s)| a + t * s).collect();
            let b_new = b + t * direction[d];
            let f_new = objective(xs, ys, c, &w_new, b_new);
            if near || f_new <= f + 1e-4 * t * slope || t < 1e-12 {
                (w, b, f) = (w_new, b_new, f_new);
                break;
            }
            t *= 0.5;
        }
    }
    Err(format!("logistic regression: no convergence in {MAX_STEPS} Newton steps (C = {c}, {} vectors)", xs.len()))
}

/// `A⁻¹ b` for symmetric positive definite `A` (its lower triangle read) by Cholesky.
pub(crate) fn solve_spd(mut a: Vec<Vec<f64>>, b: &[f64]) -> Vec<f64> {
    let d = b.len();
    for j in 0..d {
        let s = a[j][j] - (0..j).map(|k| a[j][k] * a[j][k]).sum::<f64>();
        a[j][j] = s.max(1e-300).sqrt();
        for i in j + 1..d {
            let s = a[i][j] - (0..j).map(|k| a[i][k] * a[j][k]).sum::<f64>();
            a[i][j] = s / a[j][j];
        }
    }
    let mut y = vec![0.0; d];
    for i in 0..d {
        y[i] = (b[i] - (0..i).map(|k| a[i][k] * y[k]).sum::<f64>()) / a[i][i];
    }
    let mut x = vec![0.0; d];
    for i in (0..d).rev() {
        x[i] = (y[i] - (i + 1..d).map(|k| a[k][i] * x[k]).sum::<f64>()) / a[i][i];
    }
    x
}
