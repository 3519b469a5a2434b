//! CausalGym's log odds-ratio (Arora, Jurafsky & Potts 2024): how far an intervention moves a
//! model's odds from the base's continuation to the source's, in nats,
//!
//! `[log p_base(y_b) − log p_base(y_s)] + [log p_int(y_s) − log p_int(y_b)]`,
//!
//! where `p_base` is the run without the intervention and `p_int` the run with it. Each bracket is
//! a difference of log-probabilities under one softmax, so it is the difference of the logits.

/// The log odds-ratio of one pair from the next-token logits of the plain run and of the
/// intervened run, with `label` the source's continuation (`y_s`) and `base_label` the base's
/// (`y_b`).
pub fn log_odds_ratio(plain: &[f32], intervened: &[f32], label: usize, base_label: usize) -> f64 {
    let before = plain[base_label] as f64 - plain[label] as f64;
    let after = intervened[label] as f64 - intervened[base_label] as f64;
    before + after
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against log-probabilities computed by hand (an explicit log-softmax, in f64).
    #[test]
    fn equals_the_hand_computation_from_log_probabilities() {
        let log_softmax = |l: &[f32]| -> Vec<f64> {
            let z = l.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
            l.iter().map(|&x| x as f64 - z).collect()
        };
        let plain = [2.0f32, 0.5, -1.0, 0.0];
        let intervened = [0.1f32, 1.5, 3.0, -2.0];
        let (ys, yb) = (2, 0);
        let (p, i) = (log_softmax(&plain), log_softmax(&intervened));
        let by_hand = (p[yb] - p[ys]) + (i[ys] - i[yb]);
        // By hand: (2.0 − (−1.0)) + (3.0 − 0.1) = 5.9.
        assert!((by_hand - 5.9).abs() < 1e-6, "{by_hand}");
        assert!((log_odds_ratio(&plain, &intervened, ys, yb) - by_hand).abs() < 1e-9);
        // No intervention moves nothing; swapping the roles flips the sign.
        assert_eq!(log_odds_ratio(&plain, &plain, ys, yb), 0.0);
        assert!((log_odds_ratio(&plain, &intervened, yb, ys) + by_hand).abs() < 1e-9);
    }
}
