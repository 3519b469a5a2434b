//! Weight files: a common interface over safetensors folders and GGUF files, and the typed
//! loader the architectures use to build their layers from it.

pub mod dequant;
pub mod gguf;
pub mod safetensors_folder;

use std::path::Path;
use std::sync::Arc;

use burn::module::Param;
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};

use crate::bf16_linear::Bf16Weight;
use crate::error::{ModelError, Result};
use crate::layers::{Embedding, LayerNorm, Linear, RmsNorm};
use crate::precision::FrozenStorage;

/// A set of named tensors, each readable as f32 in PyTorch's (row-major, `[out, in]`) layout.
pub trait WeightSource {
    /// The file (or folder) the tensors come from, for error messages.
    fn path(&self) -> &Path;
    /// The shape of `name`, if present.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The values of `name` as f32, row-major, with its shape.
    fn read(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)>;
}

/// Builds burn tensors and layers from a [`WeightSource`], checking every shape against the config.
pub struct Loader<'a, B: Backend> {
    source: &'a dyn WeightSource,
    device: B::Device,
    /// The precision the weights are stored in on the device.
    storage: FrozenStorage,
}

impl<'a, B: Backend> Loader<'a, B> {
    /// A loader reading from `source` onto `device`, in the precision set for frozen models
    /// ([`crate::precision::frozen_dtype`]; f32 unless set; see [`FrozenStorage::for_backend`]).
    pub fn new(source: &'a dyn WeightSource, device: &B::Device) -> Self {
        Loader { source, device: device.clone(), storage: FrozenStorage::for_backend::<B>() }
    }

    /// Whether the blocks' linear maps are packed for the bf16 kernel.
    fn packs_linear_maps(&self) -> bool {
        self.storage == FrozenStorage::Bf16Products
    }

    /// `values` (row-major, `shape`) on the device in the loader's precision, converted tensor by
    /// tensor so that a half-precision model never holds its f32 copy.
    fn on_device<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(values, shape), (&self.device, DType::from(self.storage.tensor_dtype())))
    }

    /// Whether the source holds `name`.
    pub fn has(&self, name: &str) -> bool {
        self.source.shape(name).is_some()
    }

    /// The file the weights come from.
    pub fn path(&self) -> &Path {
        self.source.path()
    }

    /// Reads `name` and checks it has shape `expected`.
    pub fn values(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let found = self.source.shape(name).ok_or_else(|| ModelError::MissingTensor {
            path: self.source.path().to_path_buf(),
            tensor: name.to_string(),
        })?;
        if found != expected {
            return Err(ModelError::WrongShape {
                path: self.source.path().to_path_buf(),
                tensor: name.to_string(),
                found,
                expected: expected.to_vec(),
            });
        }
        Ok(self.source.read(name)?.0)
    }

    /// A tensor of rank `D` with the expected shape.
    pub fn tensor<const D: usize>(&self, name: &str, expected: [usize; D]) -> Result<Tensor<B, D>> {
        let values = self.values(name, &expected)?;
        Ok(self.on_device(values, expected))
    }

    /// A frozen parameter from a tensor.
    pub fn param<const D: usize>(&self, name: &str, expected: [usize; D]) -> Result<Param<Tensor<B, D>>> {
        Ok(Param::from_tensor(self.tensor(name, expected)?).set_require_grad(false))
    }

    /// A PyTorch `nn.Linear` (`{prefix}.weight` `[out, in]`, optional `{prefix}.bias`), inside
    /// a block (its products take the bf16 kernel where the loader packs for it).
    pub fn linear(&self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        let weight = self.values(&format!("{prefix}.weight"), &[d_out, d_in])?;
        self.linear_from(prefix, weight, [d_out, d_in], bias, self.packs_linear_maps())
    }

    /// The output head `{name}` `[vocab, in]`, as a linear map without bias that stays in the
    /// activations' dtype (f32 beside the bf16 kernel: the logits decide every metric).
    pub fn head(&self, name: &str, d_in: usize, vocab: usize) -> Result<Linear<B>> {
        let weight = self.values(&format!("{name}.weight"), &[vocab, d_in])?;
        self.linear_from(name, weight, [vocab, d_in], false, false)
    }

    /// A fused `nn.Linear` without bias (`{prefix}.weight`, `[Σ outs, in]`: Phi-3's `qkv_proj`
    /// and `gate_up_proj`) split by rows into one linear map per width of `outs`, in order.
    pub fn linear_split(&self, prefix: &str, d_in: usize, outs: &[usize]) -> Result<Vec<Linear<B>>> {
        let total = outs.iter().sum::<usize>();
        let weight = self.values(&format!("{prefix}.weight"), &[total, d_in])?;
        let mut start = 0;
        outs.iter()
            .map(|&d_out| {
                let rows = weight[start * d_in..(start + d_out) * d_in].to_vec();
                start += d_out;
                self.linear_from(prefix, rows, [d_out, d_in], false, self.packs_linear_maps())
            })
            .collect()
    }

    /// The output head of a `…ForCausalLM` checkpoint whose embeddings are
    /// `model.embed_tokens.weight`: `lm_head.weight`, or the embedding matrix when `tie` or when
    /// the checkpoint has no `lm_head.weight`. Also says whether it is tied (shared parameters).
    pub fn causal_lm_head(&self, tie: bool, d_in: usize, vocab: usize) -> Result<(Linear<B>, bool)> {
        let tied = tie || !self.has("lm_head.weight");
        let head = self.head(if tied { "model.embed_tokens" } else { "lm_head" }, d_in, vocab)?;
        Ok((head, tied))
    }

    /// A GPT-2 `Conv1D` (`{prefix}.weight` `[in, out]`, transposed to a `Linear`'s `[out, in]`;
    /// `{prefix}.bias`).
    pub fn conv1d(&self, prefix: &str, d_in: usize, d_out: usize) -> Result<Linear<B>> {
        let w = self.values(&format!("{prefix}.weight"), &[d_in, d_out])?;
        self.linear_from(prefix, transpose(&w, d_in, d_out), [d_out, d_in], true, self.packs_linear_maps())
    }

    /// A linear map from `[out, in]` values: packed for the bf16 kernel (the weight tensor then
    /// kept in bf16, the values the kernel sees) or a plain tensor in the loader's dtype.
    fn linear_from(
        &self,
        prefix: &str,
        values: Vec<f32>,
        shape: [usize; 2],
        bias: bool,
        pack: bool,
    ) -> Result<Linear<B>> {
        let bias = if bias { Some(self.param(&format!("{prefix}.bias"), [shape[0]])?) } else { None };
        let (weight, bf16) = if pack {
            let packed = Arc::new(Bf16Weight::new(&values, shape[0], shape[1]));
            (Tensor::from_data(TensorData::new(values, shape), (&self.device, DType::BF16)), Some(packed))
        } else {
            (self.on_device(values, shape), None)
        };
        Ok(Linear { weight: Param::from_tensor(weight).set_require_grad(false), bias, bf16 })
    }

    /// An embedding table `{name}` of shape `[rows, width]`.
    pub fn embedding(&self, name: &str, rows: usize, width: usize) -> Result<Embedding<B>> {
        Ok(Embedding { weight: self.param(name, [rows, width])? })
    }

    /// An RMSNorm with weight `{name}`.
    pub fn rms_norm(&self, name: &str, width: usize, eps: f64) -> Result<RmsNorm<B>> {
        Ok(RmsNorm { gamma: self.param(name, [width])?, eps })
    }

    /// An RMSNorm whose scale is `offset + w` for the stored `w`: Gemma keeps `w` around 0 and
    /// scales by `1 + w` (transformers' `Gemma2RMSNorm`); the sum is taken once, in f32.
    pub fn rms_norm_offset(&self, name: &str, width: usize, eps: f64, offset: f32) -> Result<RmsNorm<B>> {
        let values = self.values(name, &[width])?.into_iter().map(|w| offset + w).collect();
        // Kept in f32 whatever the storage: the norm computes in f32, and `1 + w` rounded to
        // half precision would lose what transformers keeps.
        let gamma = Tensor::from_data(TensorData::new(values, [width]), (&self.device, DType::F32));
        Ok(RmsNorm { gamma: Param::from_tensor(gamma).set_require_grad(false), eps })
    }

    /// A LayerNorm `{prefix}.weight` (γ) / `{prefix}.bias` (β).
    pub fn layer_norm(&self, prefix: &str, width: usize, eps: f64) -> Result<LayerNorm<B>> {
        Ok(LayerNorm {
            gamma: self.param(&format!("{prefix}.weight"), [width])?,
            beta: self.param(&format!("{prefix}.bias"), [width])?,
            eps,
        })
    }
}

/// A safetensors tensor's little-endian values as f32, from F32, F16 or BF16 (`None` for other
/// types).
pub fn f32_of(dtype: safetensors::Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    use safetensors::Dtype;
    Some(match dtype {
        Dtype::F32 => f32_from_le(bytes),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => return None,
    })
}

/// Little-endian f32 bytes (as safetensors and GGUF store them) to values.
pub fn f32_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Row-major `[rows, cols]` to row-major `[cols, rows]`.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    // In 32 × 32 tiles, so that both sides stay in cache: an element-by-element walk misses on
    // every write for SmolLM2's [1536, 576] matrices (0.6 s of a model load; 0.1 s in tiles).
    const TILE: usize = 32;
    let mut out = vec![0.0; values.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::transpose;

    #[test]
    fn transpose_moves_every_entry_across_tile_edges() {
        // Shapes below, at and across the 32-wide tiles, ragged on both sides.
        for (rows, cols) in [(1, 1), (3, 70), (32, 32), (33, 65), (100, 7)] {
            let values: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transpose(&values, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], values[r * cols + c], "[{rows}, {cols}] at ({r}, {c})");
                }
            }
        }
    }
}
