//! The building blocks the architectures share: linear maps, norms, rotary embeddings, attention.
//!
//! Written out as the equations so that each architecture file reads like its paper.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::tensor::{Bool, DType, Int, Tensor, activation::softmax, backend::Backend};

use crate::bf16_linear::Bf16Weight;
use crate::precision::{blocked_score, to_dtype, to_f32};

/// `y = x W + b`, with `W` stored `[in, out]` (PyTorch's `[out, in]` is transposed on load).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[out, in]`, PyTorch's layout: checkpoints load without a transpose, and the product
    /// reads it as a transposed operand, which burn-flex's matrix product packs faster than a
    /// contiguous `[in, out]` (SmolLM2's head at 47 rows, forward and backward: 53 against 82 ms).
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]`, if the layer has one.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The weight packed for the CPU's bf16 kernel, where the loader chose it
    /// ([`crate::precision::FrozenStorage::Bf16Products`]); `weight` then holds its bf16 values.
    #[module(skip)]
    pub bf16: Option<Arc<Bf16Weight>>,
}

impl<B: Backend> Linear<B> {
    /// Applies the map to the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        // One [rows, in] × [in, out] product: a broadcast batched matmul would copy W per row.
        let mut dims = x.dims();
        let [d_out, d_in] = self.weight.val().dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        dims[D - 1] = d_out;
        let x = x.reshape([rows, d_in]);
        // The bf16 kernel where the loader packed for it and the backend runs it, else burn's product.
        let bf16 = match &self.bf16 {
            Some(packed) => packed.product(x),
            None => Err(x),
        };
        let y: Tensor<B, D> = bf16
            .unwrap_or_else(|x| {
                let dtype = x.dtype();
                x.matmul(to_dtype(self.weight.val(), dtype).transpose())
            })
            .reshape(dims);
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }
    /// Output width.
    pub fn d_out(&self) -> usize {
        self.weight.val().dims()[0]
    }
}

/// RMSNorm (Zhang & Sennrich 2019): `x / sqrt(mean(x²) + ε) · γ`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `γ`, `[width]`.
    pub gamma: Param<Tensor<B, 1>>,
    /// `ε`.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Normalises the last dimension, in f32 whatever the model's precision (a half-precision
    /// mean of squares overflows), as transformers does.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let x = to_f32(x);
        let rms = (x.clone().square().mean_dim(2) + self.eps).sqrt();
        to_dtype((x / rms) * to_f32(self.gamma.val()).unsqueeze(), dtype)
    }
}

/// LayerNorm (Ba et al. 2016): `(x − mean) / sqrt(var + ε) · γ + β`.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// `γ`, `[width]`.
    pub gamma: Param<Tensor<B, 1>>,
    /// `β`, `[width]`.
    pub beta: Param<Tensor<B, 1>>,
    /// `ε`.
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Normalises the last dimension, in f32 whatever the model's precision.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let x = to_f32(x);
        let centred = x.clone() - x.mean_dim(2);
        let var = centred.clone().square().mean_dim(2);
        let y = centred / (var + self.eps).sqrt() * to_f32(self.gamma.val()).unsqueeze()
            + to_f32(self.beta.val()).unsqueeze();
        to_dtype(y, dtype)
    }
}

/// A lookup table: row `i` is the vector of token (or position) `i`.
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    /// `[rows, width]`.
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Embedding<B> {
    /// `[batch, seq]` ids to `[batch, seq, width]` vectors.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = ids.dims();
        let width = self.weight.val().dims()[1];
        self.weight.val().select(0, ids.reshape([batch * seq])).reshape([batch, seq, width])
    }
    /// The precision of the table (and so of the model that embeds with it).
    pub fn dtype(&self) -> DType {
        self.weight.val().dtype()
    }
}

/// `[batch, seq, heads·head_dim]` to `[batch, seq, heads, head_dim]` (attention moves the heads
/// before the positions itself; keys and values are kept as `[batch, heads, seq, head_dim]`).
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [batch, seq, width] = x.dims();
    x.reshape([batch, seq, heads, width / heads])
}

/// Position of each token among the real (unmasked) tokens of its row: `cumsum(mask) − 1`,
/// clamped at 0. Equals `0..seq` without padding, and stays right under left padding.
pub fn positions_from_mask<B: Backend>(mask: Tensor<B, 2, Int>) -> Tensor<B, 2, Int> {
    (mask.cumsum(1) - 1).clamp_min(0)
}

/// `[queries, total]`: true where a query is more than `window − 1` positions after a key, so
/// that each query sees itself and the `window − 1` keys before it (sliding-window attention, as
/// transformers masks it: key index > query index − window). The queries are the last `queries`
/// of the `total` positions.
pub fn outside_window<B: Backend>(
    queries: usize,
    total: usize,
    window: usize,
    device: &B::Device,
) -> Tensor<B, 2, Bool> {
    let past = total - queries;
    let blocked: Vec<bool> = (0..queries).flat_map(|i| (0..total).map(move |j| past + i >= j + window)).collect();
    Tensor::from_data(burn::tensor::TensorData::new(blocked, [queries, total]), device)
}

/// The additive attention bias `[batch, 1, queries, total]` for the last `queries` of the `total`
/// positions in `mask` (all of them without a KV cache): 0 where a query may see a key, a large
/// negative number elsewhere (later keys when `causal`, padded keys always), in `dtype`.
pub fn attention_bias<B: Backend>(mask: Tensor<B, 2, Int>, queries: usize, causal: bool, dtype: DType) -> Tensor<B, 4> {
    let [batch, total] = mask.dims();
    let device = mask.device();
    let shape = [batch, 1, queries, total];
    let padded: Tensor<B, 4, Bool> = mask.equal_elem(0).reshape([batch, 1, 1, total]).expand(shape);
    let blocked = if causal {
        // burn's `tril_mask` is true *outside* the lower triangle; offset by the cached positions,
        // query i (position total − queries + i) sees keys up to its own position.
        let past = (total - queries) as i64;
        let future = Tensor::<B, 2, Bool>::tril_mask([queries, total], past, &device).reshape([1, 1, queries, total]);
        padded.bool_or(future.expand(shape))
    } else {
        padded
    };
    to_dtype(Tensor::<B, 4>::zeros(shape, &device).mask_fill(blocked, blocked_score(dtype)), dtype)
}

/// Scaled dot-product attention, `softmax(q kᵀ / √d + bias) v`, with grouped-query heads:
/// query head `i` reads key/value head `i / groups` (Ainslie et al. 2023; `groups` = 1 is plain
/// multi-head attention). `q` is `[batch, seq, heads, d]`, `k` and `v` are `[batch, kv_heads,
/// total, d]`, `bias` is `[batch, kv_heads, groups, seq, total]` (see
/// [`crate::model::Context::bias_for`]); returns `[batch, seq, heads·d]`, heads concatenated.
///
/// The groups share their key/value head by broadcasting, not by copying it per query head.
pub fn attend<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, bias: Tensor<B, 5>) -> Tensor<B, 3> {
    attend_scored(q, k, v, bias, Scores::default())
}

/// How attention turns `q kᵀ` into scores before the bias: the scale (`1/√d` unless given) and
/// an optional soft cap `c · tanh(s / c)` (Gemma 2).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scores {
    /// Multiplies `q kᵀ`; `None` divides by `√head_dim`.
    pub scale: Option<f64>,
    /// Soft-capping of the scaled scores, `c · tanh(s / c)`.
    pub softcap: Option<f64>,
}

/// [`attend`] with the scores of `scores`: `softmax(cap(q kᵀ · scale) + bias) v`.
pub fn attend_scored<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Tensor<B, 5>,
    scores: Scores,
) -> Tensor<B, 3> {
    let [batch, seq, heads, d] = q.dims();
    let kv_heads = k.dims()[1];
    let groups = heads / kv_heads;
    let q = q.reshape([batch, seq, kv_heads, groups, d]).permute([0, 2, 3, 1, 4]); // [b, kv, g, seq, d]
    let k_t = k.unsqueeze_dim::<5>(2).swap_dims(3, 4); // [b, kv, 1, d, total]
    let raw = q.matmul(k_t);
    let scaled = match scores.scale {
        None => raw / (d as f64).sqrt(),
        Some(scale) => raw * scale,
    };
    let capped = match scores.softcap {
        None => scaled,
        Some(cap) => (scaled / cap).tanh() * cap,
    };
    let scores = capped + bias;
    // The softmax in f32 whatever the model's precision, as transformers does.
    let weights = to_dtype(softmax(to_f32(scores), 4), v.dtype());
    let values = weights.matmul(v.unsqueeze_dim::<5>(2)); // [b, kv, g, seq, d]
    values.permute([0, 3, 1, 2, 4]).reshape([batch, seq, heads * d])
}

/// Rotary position embedding (Su et al. 2021) in the "rotate half" layout of Hugging Face:
/// the first `rotary_dim` dims of each head are rotated, the rest pass through.
///
/// Written as `x ⊙ cos + (x P) ⊙ sin`, where `P` is the fixed "rotate half" map (`−x₂, x₁` on
/// the rotated dims, 0 on the others) and `cos`/`sin` are 1/0 on the passed-through dims: the
/// same numbers as slicing and concatenating, in a few whole-tensor operations.
#[derive(Debug, Clone)]
pub struct Rotary<B: Backend> {
    /// `[batch, seq, 1, head_dim]`.
    cos: Tensor<B, 4>,
    /// `[batch, seq, 1, head_dim]`.
    sin: Tensor<B, 4>,
    /// `[head_dim, head_dim]`: `P`.
    half_turn: Tensor<B, 2>,
    /// `cos` and `sin` repeated for a number of heads, as applied (built once per head count).
    per_heads: std::cell::RefCell<Vec<(usize, Tensor<B, 2>, Tensor<B, 2>)>>,
}

impl<B: Backend> Rotary<B> {
    /// Angles `pos · inv_freq[i]` for the given positions; `inv_freq` has `rotary_dim / 2`
    /// entries, `rotary_dim ≤ head_dim`. Computed in f32, kept in `dtype` (the model's).
    pub fn new(positions: Tensor<B, 2, Int>, inv_freq: &[f32], head_dim: usize, dtype: DType) -> Self {
        let [batch, seq] = positions.dims();
        let device = positions.device();
        let half = inv_freq.len();
        let (r, d) = (2 * half, head_dim);
        let freq = Tensor::<B, 1>::from_floats(inv_freq, &device).reshape([1, 1, half]);
        let angles = positions.float().reshape([batch, seq, 1]) * freq; // [batch, seq, half]
        let angles = Tensor::cat(vec![angles.clone(), angles], 2);
        let (mut cos, mut sin) = (angles.clone().cos(), angles.sin());
        if d > r {
            cos = Tensor::cat(vec![cos, Tensor::ones([batch, seq, d - r], &device)], 2);
            sin = Tensor::cat(vec![sin, Tensor::zeros([batch, seq, d - r], &device)], 2);
        }
        let mut p = vec![0f32; d * d];
        for i in 0..half {
            p[(i + half) * d + i] = -1.0; // out[i] = −x[i + r/2]
            p[i * d + i + half] = 1.0; // out[i + r/2] = x[i]
        }
        let half_turn = Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(p, [d, d]), &device);
        let (cos, sin, half_turn) = (to_dtype(cos, dtype), to_dtype(sin, dtype), to_dtype(half_turn, dtype));
        Rotary {
            cos: cos.reshape([batch, seq, 1, d]),
            sin: sin.reshape([batch, seq, 1, d]),
            half_turn,
            per_heads: Default::default(),
        }
    }

    /// Rotates `x`, `[batch, seq, heads, head_dim]` (heads not yet moved before positions).
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, seq, heads, d] = x.dims();
        let rows = batch * seq * heads;
        let (cos, sin) = self.for_heads(heads);
        let x = x.reshape([rows, d]);
        let turned = x.clone().matmul(self.half_turn.clone());
        (x * cos + turned * sin).reshape([batch, seq, heads, d])
    }

    /// `cos` and `sin` as `[batch·seq·heads, head_dim]`, the shape [`Self::apply`] multiplies by.
    fn for_heads(&self, heads: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let mut cached = self.per_heads.borrow_mut();
        if let Some((_, c, s)) = cached.iter().find(|(h, _, _)| *h == heads) {
            return (c.clone(), s.clone());
        }
        let [batch, seq, _, d] = self.cos.dims();
        let repeat = |t: &Tensor<B, 4>| t.clone().repeat_dim(2, heads).reshape([batch * seq * heads, d]);
        let (c, s) = (repeat(&self.cos), repeat(&self.sin));
        cached.push((heads, c.clone(), s.clone()));
        (c, s)
    }
}

/// Rotary frequency scaling read from a config's `rope_scaling`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor` (all frequencies divided by `factor`).
    Linear {
        /// Divisor of every frequency.
        factor: f64,
    },
    /// Llama 3's piecewise scaling of low frequencies.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are fully scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was trained with.
        original_max_position_embeddings: f64,
    },
}

/// The inverse frequencies `θ^(−2i/d)` for `i < d/2`, after optional scaling.
pub fn rope_inv_freq(rotary_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let base: Vec<f64> = (0..rotary_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / rotary_dim as f64)).collect();
    let scaled: Vec<f64> = match scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            let low_wavelen = original_max_position_embeddings / low_freq_factor;
            let high_wavelen = original_max_position_embeddings / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    };
    scaled.into_iter().map(|f| f as f32).collect()
}
