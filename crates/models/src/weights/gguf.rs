//! GGUF files (llama.cpp's format): header, metadata, tensor table, and tensors dequantised to
//! f32. [`GgufLlamaWeights`] presents a llama-architecture GGUF under Hugging Face tensor names,
//! with llama.cpp's q/k row permutation undone, so the Llama model loads it like any folder.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::WeightSource;
use super::dequant::{GgmlType, SUPPORTED, dequantize};
use crate::error::{ModelError, Result};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// A bool.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array of values of one type.
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is an integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::U64(v) => Some(*v),
            Value::I64(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }
    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F64(v) => Some(*v),
            Value::U64(v) => Some(*v as f64),
            Value::I64(v) => Some(*v as f64),
            _ => None,
        }
    }
    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lies in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// PyTorch-order shape (GGUF stores dims innermost first; this is reversed).
    pub shape: Vec<usize>,
    /// Storage type.
    pub ty: GgmlType,
    /// Byte offset from the start of the file.
    pub start: usize,
    /// Length in bytes.
    pub len: usize,
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    /// Metadata key → value.
    pub metadata: HashMap<String, Value>,
    /// Tensor name → location.
    pub tensors: HashMap<String, TensorInfo>,
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            ModelError::corrupt(
                self.path,
                format!(
                    "truncated GGUF: reading {what} at byte {} needs {n} bytes, file has {}",
                    self.pos,
                    self.bytes.len()
                ),
            )
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| ModelError::corrupt(self.path, format!("{what} at byte {} is not UTF-8", self.pos - n)))
    }
    fn value(&mut self, ty: u32, key: &str) -> Result<Value> {
        Ok(match ty {
            0 => Value::U64(self.take(1, key)?[0] as u64),
            1 => Value::I64(self.take(1, key)?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.take(2, key)?.try_into().expect("2")) as u64),
            3 => Value::I64(i16::from_le_bytes(self.take(2, key)?.try_into().expect("2")) as i64),
            4 => Value::U64(self.u32(key)? as u64),
            5 => Value::I64(self.u32(key)? as i32 as i64),
            6 => Value::F64(f32::from_bits(self.u32(key)?) as f64),
            7 => Value::Bool(self.take(1, key)?[0] != 0),
            8 => Value::Str(self.string(key)?),
            9 => {
                let item_ty = self.u32(key)?;
                let n = self.u64(key)? as usize;
                if n > self.bytes.len() {
                    return Err(ModelError::corrupt(
                        self.path,
                        format!("metadata `{key}`: array of {n} items is longer than the file"),
                    ));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_ty, key)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(key)?)),
            other => {
                return Err(ModelError::corrupt(self.path, format!("metadata `{key}` has unknown value type {other}")));
            }
        })
    }
}

impl GgufFile {
    /// Opens and parses `path` (header, metadata and tensor table; tensors are read on demand).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: read-only map of a file we do not write; see SafetensorsFolder::open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let (metadata, tensors) = Self::parse(&map, path)?;
        Ok(GgufFile { path: path.to_path_buf(), map, metadata, tensors })
    }

    #[allow(clippy::type_complexity)]
    fn parse(bytes: &[u8], path: &Path) -> Result<(HashMap<String, Value>, HashMap<String, TensorInfo>)> {
        let mut c = Cursor { bytes, pos: 0, path };
        if c.take(4, "magic")? != b"GGUF" {
            return Err(ModelError::corrupt(path, "not a GGUF file (magic bytes are not `GGUF`)"));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::corrupt(path, format!("GGUF version {version} is not supported (2 or 3 are)")));
        }
        let n_tensors = c.u64("tensor count")? as usize;
        let n_kv = c.u64("metadata count")? as usize;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, &key)?;
            metadata.insert(key, v);
        }
        let mut infos = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims > 4 {
                return Err(ModelError::corrupt(
                    path,
                    format!("tensor `{name}` claims {n_dims} dimensions (at most 4)"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)? as usize);
            }
            let ty = GgmlType::from_id(c.u32(&name)?);
            let offset = c.u64(&name)? as usize;
            dims.reverse();
            infos.push((name, dims, ty, offset));
        }
        let alignment = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(32) as usize;
        let data_start = c.pos.div_ceil(alignment.max(1)) * alignment.max(1);
        let mut tensors = HashMap::new();
        for (name, shape, ty, offset) in infos {
            let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
                ModelError::corrupt(path, format!("tensor `{name}` has impossible dimensions {shape:?}"))
            })?;
            // Unsupported types keep len 0 here; reading them is what fails, naming the type.
            let len = match ty.block() {
                Some((per, bytes_per)) => {
                    if count % per != 0 {
                        return Err(ModelError::corrupt(
                            path,
                            format!("tensor `{name}`: {count} values is not a whole number of {} blocks", ty.name()),
                        ));
                    }
                    (count / per).checked_mul(bytes_per).ok_or_else(|| {
                        ModelError::corrupt(path, format!("tensor `{name}` has impossible dimensions {shape:?}"))
                    })?
                }
                None => 0,
            };
            let end = data_start.checked_add(offset).and_then(|s| s.checked_add(len));
            let start = data_start.saturating_add(offset);
            if end.is_none_or(|end| end > bytes.len()) {
                return Err(ModelError::corrupt(
                    path,
                    format!(
                        "truncated GGUF: tensor `{name}` needs bytes from {start}, {len} long, but the file has {}",
                        bytes.len()
                    ),
                ));
            }
            tensors.insert(name, TensorInfo { shape, ty, start, len });
        }
        Ok((metadata, tensors))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value, or a config error naming the missing key.
    pub fn meta(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).ok_or_else(|| ModelError::config(&self.path, format!("missing metadata key `{key}`")))
    }

    /// A metadata integer, or a config error.
    pub fn meta_u64(&self, key: &str) -> Result<u64> {
        self.meta(key)?
            .as_u64()
            .ok_or_else(|| ModelError::config(&self.path, format!("metadata `{key}` is not an integer")))
    }

    /// A metadata float, or a config error.
    pub fn meta_f64(&self, key: &str) -> Result<f64> {
        self.meta(key)?
            .as_f64()
            .ok_or_else(|| ModelError::config(&self.path, format!("metadata `{key}` is not a number")))
    }

    /// A metadata string, or a config error.
    pub fn meta_str(&self, key: &str) -> Result<&str> {
        self.meta(key)?
            .as_str()
            .ok_or_else(|| ModelError::config(&self.path, format!("metadata `{key}` is not a string")))
    }

    /// A metadata array of strings, or a config error.
    pub fn meta_strings(&self, key: &str) -> Result<Vec<String>> {
        let arr = self
            .meta(key)?
            .as_array()
            .ok_or_else(|| ModelError::config(&self.path, format!("metadata `{key}` is not an array")))?;
        arr.iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ModelError::config(&self.path, format!("metadata `{key}` is not an array of strings")))
    }

    /// Reads tensor `name` as f32 (dequantising if needed), with its PyTorch-order shape.
    pub fn read_tensor(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.path.clone(), tensor: name.to_string() })?;
        let bytes = &self.map[info.start..info.start + info.len];
        let values = dequantize(info.ty, bytes).ok_or_else(|| ModelError::UnsupportedDtype {
            path: self.path.clone(),
            tensor: name.to_string(),
            dtype: info.ty.name(),
            supported: SUPPORTED.into(),
        })?;
        Ok((values, info.shape.clone()))
    }
}

/// A GGUF file seen under Hugging Face's tensor names, as llama.cpp's converter maps them for its
/// architecture (`general.architecture`): only `llama` files have q/k rows permuted for the
/// rotary map (the other architectures rotate halves, as Hugging Face does); Gemma's, OLMo 2's
/// and Phi-3's names differ where their blocks do.
pub struct GgufLlamaWeights {
    /// The file.
    pub file: GgufFile,
    heads: usize,
    kv_heads: usize,
    arch: String,
}

impl GgufLlamaWeights {
    /// Wraps a llama-architecture file; `heads` and `kv_heads` are needed to undo the q/k
    /// permutation.
    pub fn new(file: GgufFile, heads: usize, kv_heads: usize) -> Self {
        Self::for_arch(file, "llama", heads, kv_heads)
    }

    /// Wraps a file of architecture `arch` (llama.cpp's name: `llama`, `qwen2`, `qwen3`, `phi3`,
    /// `gemma2`, `gemma3`, `olmo2`).
    pub fn for_arch(file: GgufFile, arch: &str, heads: usize, kv_heads: usize) -> Self {
        GgufLlamaWeights { file, heads, kv_heads, arch: arch.to_string() }
    }

    /// The GGUF name of a Hugging Face tensor name, and the head count to un-permute by (q/k of
    /// `llama` files).
    fn gguf_name(&self, hf: &str) -> Option<(String, Option<usize>)> {
        match hf {
            "model.embed_tokens.weight" => return Some(("token_embd.weight".into(), None)),
            "model.norm.weight" => return Some(("output_norm.weight".into(), None)),
            "lm_head.weight" => return Some(("output.weight".into(), None)),
            _ => {}
        }
        let permuted = self.arch == "llama";
        let (q_heads, kv_heads) = if permuted { (Some(self.heads), Some(self.kv_heads)) } else { (None, None) };
        // Gemma and OLMo 2 norm the attention's output ("post_attention_norm"); in the other
        // architectures Hugging Face's `post_attention_layernorm` is the MLP's input norm.
        let post_attention = match self.arch.as_str() {
            "gemma2" | "gemma3" | "olmo2" => "post_attention_norm.weight",
            _ => "ffn_norm.weight",
        };
        let rest = hf.strip_prefix("model.layers.")?;
        let (layer, tail) = rest.split_once('.')?;
        let (name, heads) = match tail {
            "self_attn.q_proj.weight" => ("attn_q.weight", q_heads),
            "self_attn.k_proj.weight" => ("attn_k.weight", kv_heads),
            "self_attn.v_proj.weight" => ("attn_v.weight", None),
            "self_attn.o_proj.weight" => ("attn_output.weight", None),
            "self_attn.q_proj.bias" => ("attn_q.bias", q_heads),
            "self_attn.k_proj.bias" => ("attn_k.bias", kv_heads),
            "self_attn.v_proj.bias" => ("attn_v.bias", None),
            "self_attn.qkv_proj.weight" => ("attn_qkv.weight", None),
            "self_attn.q_norm.weight" => ("attn_q_norm.weight", None),
            "self_attn.k_norm.weight" => ("attn_k_norm.weight", None),
            "mlp.gate_proj.weight" => ("ffn_gate.weight", None),
            "mlp.up_proj.weight" | "mlp.gate_up_proj.weight" => ("ffn_up.weight", None),
            "mlp.down_proj.weight" => ("ffn_down.weight", None),
            "input_layernorm.weight" => ("attn_norm.weight", None),
            "post_attention_layernorm.weight" => (post_attention, None),
            "pre_feedforward_layernorm.weight" => ("ffn_norm.weight", None),
            "post_feedforward_layernorm.weight" => ("post_ffw_norm.weight", None),
            _ => return None,
        };
        Some((format!("blk.{layer}.{name}"), heads))
    }
}

/// Undoes llama.cpp's rotary permutation of q/k rows: its converter maps each head's rows
/// `[h, 2, d/2]` to `[h, d/2, 2]` (interleaved pairs); this maps them back to halves.
pub fn unpermute_rows(values: &[f32], shape: &[usize], heads: usize) -> Vec<f32> {
    let rows = shape[0];
    let cols: usize = shape[1..].iter().product();
    let half = rows / heads / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                // GGUF row (h, i, j) holds HF row (h, j, i).
                let src = (h * half * 2 + i * 2 + j) * cols;
                let dst = (h * 2 * half + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
            }
        }
    }
    out
}

impl WeightSource for GgufLlamaWeights {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let (g, _) = self.gguf_name(name)?;
        self.file.tensors.get(&g).map(|t| t.shape.clone())
    }

    fn read(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (g, heads) = self.gguf_name(name).ok_or_else(|| ModelError::MissingTensor {
            path: self.file.path().to_path_buf(),
            tensor: name.to_string(),
        })?;
        let (values, shape) = self.file.read_tensor(&g)?;
        match heads {
            Some(h) if shape[0] % (2 * h) == 0 => Ok((unpermute_rows(&values, &shape, h), shape)),
            Some(h) => Err(ModelError::WrongShape {
                path: self.file.path().to_path_buf(),
                tensor: g,
                found: shape.clone(),
                expected: vec![h * 2 * (shape[0] / (2 * h)).max(1)],
            }),
            None => Ok((values, shape)),
        }
    }
}
