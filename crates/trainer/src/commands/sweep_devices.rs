//! A sweep shared between several devices (`--devices` on a sweep): its units are independent
//! trainings, so each device runs one shard of them at the same time, and the shards are merged
//! into the run folder one device would have written.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};

use crate::device::{Compute, DeviceSpec, OnBackend, dispatch_on};
use crate::experiments::{Recipe, RunEnd, RunOptions};

/// A sweep split over several devices: shard `i` of `n` on device `i`, each on a thread of its
/// own, into run folders under `out/.shards/`.
struct ShardsOnDevices {
    recipe: Recipe,
    name: String,
    root: PathBuf,
}

impl OnBackend for ShardsOnDevices {
    type Output = Vec<PathBuf>;

    fn run<B: burn::tensor::backend::Backend>(self, device: B::Device) -> Result<Vec<PathBuf>> {
        self.run_on_devices::<B>(vec![device])
    }

    fn run_on_devices<B: burn::tensor::backend::Backend>(self, devices: Vec<B::Device>) -> Result<Vec<PathBuf>> {
        let n = devices.len();
        let budget = crate::memory::default_cache_budget() / n as u64;
        let shards = (0..n)
            .map(|i| self.recipe.with_overrides(&[format!("shard = \"{i}/{n}\"")]))
            .collect::<Result<Vec<_>>>()?;
        let ends: Vec<Result<RunEnd>> = std::thread::scope(|scope| {
            let threads: Vec<_> = shards
                .iter()
                .zip(&devices)
                .map(|(recipe, device)| {
                    let opts = RunOptions {
                        name: &self.name,
                        out_root: &self.root,
                        resume: None,
                        interrupt: None,
                        progress: false,
                        cache_budget: budget,
                        nodes: None,
                    };
                    scope.spawn(move || recipe.run::<burn::backend::Autodiff<B>>(opts, std::slice::from_ref(device)))
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|_| Err(anyhow!("a device's thread panicked"))))
                .collect()
        });
        ends.into_iter()
            .enumerate()
            .map(|(i, end)| match end.map_err(|e| e.context(format!("device {i} (shard {i}/{n})")))? {
                RunEnd::Done(dir) => Ok(dir),
                other => bail!("device {i} (shard {i}/{n}) did not finish: {other:?}"),
            })
            .collect()
    }
}

/// Runs `recipe`'s units on `devices`, one shard per device at once, then merges the shards
/// into the run folder one device would have written (and removes the shards' folders).
pub fn on_devices(recipe: Recipe, name: String, out: PathBuf, compute: Compute, devices: &[DeviceSpec]) -> Result<()> {
    let has_shard = toml::Table::try_from(&recipe)?.contains_key("shard");
    if has_shard {
        bail!(
            "--devices splits the sweep between devices itself; it cannot also run one shard of it (--shard, or a job \
             array's variables): drop one"
        );
    }
    let root = out.join(".shards");
    println!("sweeping `{name}` on {} devices, one shard each ({})", devices.len(), root.display());
    let job = ShardsOnDevices { recipe, name, root: root.clone() };
    let dirs = dispatch_on(compute, devices, job)?;
    crate::commands::merge::merge(dirs.clone(), out, Compute { device: devices[0], ..compute })?;
    for dir in &dirs {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing the merged shard {}", dir.display()))?;
    }
    // Leave no empty folders behind.
    for dir in dirs.iter().filter_map(|d| d.parent()).chain([root.as_path()]) {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}
