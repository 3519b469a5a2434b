//! Sweeps split over a cluster's job arrays: `--shard I/N` runs a deterministic `1/N` of a
//! sweep's units (sites, or a suite's task layers), balanced by estimated cost, and
//! `trainer merge` joins the shards' folders into what one run would have written.
//!
//! Units go to shards by the longest-processing-time rule: the costliest unit first, each to the
//! shard with the least cost so far (ties to the lower unit index and the lower shard), so every
//! shard of one sweep computes the same assignment.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, anyhow, bail};

/// Shard `index` of `count` (0-based), as `I/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Shard {
    /// Which shard, `0 ≤ index < count`.
    pub index: usize,
    /// How many shards the sweep is split into.
    pub count: usize,
}

impl FromStr for Shard {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || anyhow!("shard {s:?}: expected I/N with 0 ≤ I < N, e.g. 0/3 (the first of three)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) =
            (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl TryFrom<String> for Shard {
    type Error = anyhow::Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Shard> for String {
    fn from(s: Shard) -> String {
        s.to_string()
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The shard a cluster's job array gives this process, when `--shard` is absent: Slurm's
    /// `SLURM_ARRAY_TASK_ID` (less `SLURM_ARRAY_TASK_MIN`) of `SLURM_ARRAY_TASK_COUNT`, or a
    /// Kubernetes indexed Job's `JOB_COMPLETION_INDEX` of `FERROVENE_SHARD_COUNT` (Kubernetes does
    /// not put the Job's `completions` into the environment). Returns the shard and where it came
    /// from, in words.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<(Shard, String)>> {
        let number = |name: &str| -> Result<Option<usize>> {
            var(name).map(|v| v.trim().parse().map_err(|_| anyhow!("{name}={v:?} is not a whole number"))).transpose()
        };
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let count = number("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                anyhow!("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard I/N")
            })?;
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let shard = Shard::from_str(&format!("{}/{count}", id.checked_sub(min).unwrap_or(usize::MAX))).map_err(|e| {
                e.context(format!("SLURM_ARRAY_TASK_ID={id}, SLURM_ARRAY_TASK_MIN={min}, SLURM_ARRAY_TASK_COUNT={count}: use a contiguous --array (e.g. 0-3), or pass --shard I/N"))
            })?;
            return Ok(Some((shard, format!("Slurm array task {id} of {count}"))));
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = number("FERROVENE_SHARD_COUNT")?.ok_or_else(|| {
                anyhow!("JOB_COMPLETION_INDEX is set (a Kubernetes indexed Job) but FERROVENE_SHARD_COUNT is not: set it to the Job's completions, or pass --shard I/N")
            })?;
            let shard = Shard::from_str(&format!("{index}/{count}"))
                .map_err(|e| e.context(format!("JOB_COMPLETION_INDEX={index}, FERROVENE_SHARD_COUNT={count}")))?;
            return Ok(Some((shard, format!("Kubernetes completion index {index} of {count}"))));
        }
        Ok(None)
    }

    /// Whether each unit (estimated cost `costs[u]`) is this shard's.
    pub fn mine(&self, costs: &[f64]) -> Vec<bool> {
        assign(costs, self.count).into_iter().map(|s| s == self.index).collect()
    }
}

/// Which of `units` a run does: all of them without a shard, else the shard's ([`Shard::mine`]),
/// each unit's cost estimated by `cost`.
pub fn pick<T>(shard: Option<Shard>, units: &[T], cost: impl Fn(&T) -> f64) -> Vec<bool> {
    match shard {
        None => vec![true; units.len()],
        Some(s) => s.mine(&units.iter().map(cost).collect::<Vec<_>>()),
    }
}

/// The shard of each unit: the costliest first, each to the least-loaded shard.
pub fn assign(costs: &[f64], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]).then(a.cmp(&b)));
    let mut load = vec![0.0f64; count.max(1)];
    let mut shard_of = vec![0; costs.len()];
    for u in order {
        let s = (0..load.len()).min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b))).unwrap_or(0);
        load[s] += costs[u];
        shard_of[u] = s;
    }
    shard_of
}

/// Checks that `shards` (each with the folder it came from) are every shard of one split once.
pub fn check_complete(shards: &[(Shard, String)]) -> Result<()> {
    let Some(count) = shards.first().map(|(s, _)| s.count) else { bail!("no shard folders given") };
    if let Some((s, dir)) = shards.iter().find(|(s, _)| s.count != count) {
        bail!("{dir} is shard {s}, but {} is a shard of {count}: these folders are not one split", shards[0].1);
    }
    for index in 0..count {
        let of: Vec<&String> = shards.iter().filter(|(s, _)| s.index == index).map(|(_, d)| d).collect();
        match of.as_slice() {
            [] => bail!(
                "shard {index}/{count} is missing: run it (trainer sweep … --shard {index}/{count}) and give its folder too"
            ),
            [_] => {}
            [a, b, ..] => bail!("shard {index}/{count} is given twice: {a} and {b}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_costliest_unit_goes_first_to_the_least_loaded_shard() {
        // Costs 5, 4, 3, 3, 1 over two shards: 5 → 0, 4 → 1, 3 (unit 2) → 1, 3 (unit 3) → 0, 1 → 1.
        assert_eq!(assign(&[5.0, 4.0, 3.0, 3.0, 1.0], 2), vec![0, 1, 1, 0, 1]);
        let s: Shard = "1/2".parse().unwrap();
        assert_eq!(s.mine(&[5.0, 4.0, 3.0, 3.0, 1.0]), vec![false, true, true, false, true]);
    }

    #[test]
    fn a_shard_is_i_of_n_from_the_flag_or_the_job_array() {
        assert_eq!("2/3".parse::<Shard>().unwrap(), Shard { index: 2, count: 3 });
        for bad in ["3/3", "1", "a/3", "0/0"] {
            assert!(bad.parse::<Shard>().unwrap_err().to_string().contains("expected I/N"), "{bad}");
        }
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let slurm = Shard::from_env(env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ]));
        assert_eq!(slurm.unwrap().unwrap().0, Shard { index: 2, count: 3 });
        let k8s = Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "0"), ("FERROVENE_SHARD_COUNT", "4")]));
        assert_eq!(k8s.unwrap().unwrap().0, Shard { index: 0, count: 4 });
        let e = Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "0")])).unwrap_err().to_string();
        assert!(e.contains("FERROVENE_SHARD_COUNT"), "{e}");
        assert!(Shard::from_env(env(&[])).unwrap().is_none());
    }

    #[test]
    fn a_missing_or_doubled_shard_is_named() {
        let s = |t: &str, d: &str| (t.parse::<Shard>().unwrap(), d.to_string());
        assert!(check_complete(&[s("0/2", "a"), s("1/2", "b")]).is_ok());
        let e = check_complete(&[s("0/3", "a"), s("2/3", "c")]).unwrap_err().to_string();
        assert!(e.contains("shard 1/3 is missing"), "{e}");
        let e = check_complete(&[s("0/2", "a"), s("0/2", "b"), s("1/2", "c")]).unwrap_err().to_string();
        assert!(e.contains("shard 0/2 is given twice: a and b"), "{e}");
    }
}
