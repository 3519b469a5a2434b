//! What the root package's benches share.

/// Median milliseconds of `f` over `runs` runs after `warmups` unmeasured ones.
pub fn median_millis(warmups: usize, runs: usize, f: impl Fn()) -> f64 {
    for _ in 0..warmups {
        f();
    }
    let mut times: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
