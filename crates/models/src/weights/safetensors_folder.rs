//! Weights from a Hugging Face folder: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`; memory-mapped; f32, f16 and bf16 read as f32.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::WeightSource;
use crate::error::{ModelError, Result};

/// One memory-mapped safetensors file.
struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// All tensors of a folder's safetensors files, by name.
pub struct SafetensorsFolder {
    root: PathBuf,
    shards: Vec<Shard>,
    /// tensor name → (shard index, dtype, shape)
    index: HashMap<String, (usize, Dtype, Vec<usize>)>,
}

impl SafetensorsFolder {
    /// Opens `dir/model.safetensors`, or the shards named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_file = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_file.exists() {
            shard_names(&index_file)?.into_iter().map(|n| dir.join(n)).collect()
        } else {
            return Err(ModelError::MissingTensor {
                path: dir.to_path_buf(),
                tensor: "model.safetensors (or model.safetensors.index.json with shards)".into(),
            });
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: the file is opened read-only; we never write through the map. A file changed
            // under us by another process is the one thing this cannot guard against.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| ModelError::corrupt(&path, format!("not a valid safetensors file: {e}")))?;
            for (name, view) in st.tensors() {
                index.insert(name, (i, view.dtype(), view.shape().to_vec()));
            }
            shards.push(Shard { path, map });
        }
        Ok(SafetensorsFolder { root: dir.to_path_buf(), shards, index })
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.index.keys().cloned().collect();
        n.sort();
        n
    }
}

impl WeightSource for SafetensorsFolder {
    fn path(&self) -> &Path {
        &self.root
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.index.get(name).map(|(_, _, s)| s.clone())
    }

    fn read(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (i, dtype, shape) = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.root.clone(), tensor: name.to_string() })?;
        let shard = &self.shards[*i];
        let st = SafeTensors::deserialize(&shard.map)
            .map_err(|e| ModelError::corrupt(&shard.path, format!("not a valid safetensors file: {e}")))?;
        let view = st.tensor(name).map_err(|e| ModelError::corrupt(&shard.path, format!("tensor `{name}`: {e}")))?;
        let bytes = view.data();
        let values = super::f32_of(*dtype, bytes).ok_or_else(|| ModelError::UnsupportedDtype {
            path: shard.path.clone(),
            tensor: name.to_string(),
            dtype: format!("{dtype:?}"),
            supported: "F32, F16, BF16".into(),
        })?;
        Ok((values, shape.clone()))
    }
}

/// The shard file names a `model.safetensors.index.json` lists, sorted, each once.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::corrupt(index, format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::corrupt(index, "no `weight_map` object"))?;
    let mut names: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_string)).collect();
    names.sort();
    names.dedup();
    Ok(names)
}
