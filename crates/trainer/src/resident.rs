//! Models kept loaded between runs in one process. The command line loads its model once per
//! process, but a notebook trains, applies and evaluates many times with the model it loaded
//! first; while the caller holds a [`Kept`] handle, every [`crate::device::load_model`] of that
//! model on that device, in that storage, takes a copy of the one in memory (burn's tensors are
//! shared, not copied) instead of reading the weights again.

use std::any::Any;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use ferrovene_models::LoadedModel;
use ferrovene_models::precision::FrozenStorage;

/// A model kept in memory: what it was loaded as, and the model (a `LoadedModel<B>` with its
/// device, behind `Any` so that one list holds every backend's).
struct Entry {
    id: u64,
    spec: String,
    storage: FrozenStorage,
    held: Box<dyn Any + Send>,
}

/// One backend's model and the device it is on.
struct Held<B: Backend> {
    device: B::Device,
    loaded: LoadedModel<B>,
}

/// Every kept model, in the order they were kept.
static KEPT: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// Numbers the handles.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// While this lives, loads of its model on its device in its storage reuse it; dropping it
/// forgets the model (its memory goes when the last copy does).
#[derive(Debug)]
pub struct Kept {
    id: u64,
}

impl Drop for Kept {
    fn drop(&mut self) {
        let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        kept.retain(|e| e.id != self.id);
    }
}

/// Keeps `loaded` (on `device`, stored as models loaded now on `B` are: [`FrozenStorage`]) for
/// the loads of its spec that follow, until the handle is dropped.
pub fn keep<B: Backend>(loaded: &LoadedModel<B>, device: &B::Device) -> Kept {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let entry = Entry {
        id,
        spec: loaded.spec.clone(),
        storage: FrozenStorage::for_backend::<B>(),
        held: Box::new(Held::<B> { device: device.clone(), loaded: loaded.clone() }),
    };
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
    Kept { id }
}

/// A copy of a kept model loaded from `spec` on `device` of `B`, stored as models loaded now
/// would be; `None` if none is kept.
pub fn find<B: Backend>(spec: &str, device: &B::Device) -> Option<LoadedModel<B>> {
    find_stored(spec, device, FrozenStorage::for_backend::<B>())
}

/// [`find`] for a training backend: a model kept on its inner backend (a notebook's, loaded
/// for inference) is found too, wrapped for autodiff (the weights are shared, and stay frozen).
pub fn find_for_training<B: AutodiffBackend>(spec: &str, device: &B::Device) -> Option<LoadedModel<B>> {
    find::<B>(spec, device).or_else(|| {
        let inner = find::<B::InnerBackend>(spec, device)?;
        Some(LoadedModel {
            model: AutodiffModule::<B>::from_inner(inner.model),
            tokenizer: inner.tokenizer,
            spec: inner.spec,
            path: inner.path,
            revision: inner.revision,
        })
    })
}

/// A copy of a kept model loaded from `spec` on `device` of `B` in `storage`.
fn find_stored<B: Backend>(spec: &str, device: &B::Device, storage: FrozenStorage) -> Option<LoadedModel<B>> {
    let kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    kept.iter()
        .filter(|e| e.spec == spec && e.storage == storage)
        .filter_map(|e| e.held.downcast_ref::<Held<B>>())
        .find(|h| &h.device == device)
        .map(|h| h.loaded.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::tensor::FloatDType;
    use ferrovene_models::{Cpu, Input, Site, run_to};

    /// The tiny Llama checkpoint (tests/golden/tiny).
    fn golden() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/tiny/llama")
    }

    /// A copy of the tiny Llama checkpoint in a folder of its own.
    fn tiny_copy() -> tempfile::TempDir {
        let from = golden();
        assert!(from.join("config.json").exists(), "golden tiny llama missing at {}", from.display());
        let dir = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(&from).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
        dir
    }

    #[test]
    fn loads_reuse_a_kept_model_for_its_spec_backend_and_storage_until_it_is_dropped() {
        let device = Default::default();
        let dir = tiny_copy();
        let spec = dir.path().display().to_string();
        let loaded = crate::device::load_model::<Cpu>(&spec, &device).unwrap();
        assert!(find::<Cpu>(&spec, &device).is_none(), "nothing is kept before keep");
        let handle = keep(&loaded, &device);
        // The weights are gone from disk: a load now can only be the kept model.
        for f in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        let again = crate::device::load_model::<Cpu>(&spec, &device).expect("the kept model, not the deleted files");
        let ids = Input::<Cpu>::from_ids(&[vec![1, 5, 9, 2]], &device);
        let site: Site = "1.block_output".parse().unwrap();
        let (a, b) = (run_to(&loaded.model, &ids, site).unwrap(), run_to(&again.model, &ids, site).unwrap());
        assert_eq!(
            a.activation.clone().into_data().to_vec::<f32>().unwrap(),
            b.activation.into_data().to_vec::<f32>().unwrap()
        );
        // Training loads on the autodiff backend: the kept model, wrapped, frozen, the same numbers.
        let training =
            crate::device::load_frozen::<Autodiff<Cpu>>(&spec, &device).expect("the kept model, for training");
        let ad_ids = Input::<Autodiff<Cpu>>::from_ids(&[vec![1, 5, 9, 2]], &device);
        let c = run_to(&training.model, &ad_ids, site).unwrap().activation;
        assert!(!c.is_require_grad(), "the frozen model's output needs no gradient");
        // As a model loaded for training from the files computes (autodiff's kernels round a
        // little differently from flex's alone, so compare like with like).
        let fresh = ferrovene_models::load::<Autodiff<Cpu>>(&golden().display().to_string(), &device).unwrap();
        let d = run_to(&fresh.model, &ad_ids, site).unwrap().activation;
        assert_eq!(c.into_data().to_vec::<f32>().unwrap(), d.into_data().to_vec::<f32>().unwrap());
        assert!(find::<Cpu>("another-model", &device).is_none(), "another spec is not this model");
        let f16 = FrozenStorage::Plain(FloatDType::F16);
        assert_ne!(f16, FrozenStorage::for_backend::<Cpu>());
        assert!(find_stored::<Cpu>(&spec, &device, f16).is_none(), "an f16 load is not this model");
        drop(handle);
        assert!(find::<Cpu>(&spec, &device).is_none(), "a dropped handle forgets the model");
        let err = crate::device::load_model::<Cpu>(&spec, &device).unwrap_err();
        assert!(format!("{err:#}").contains("config.json"), "{err:#}");
    }
}
