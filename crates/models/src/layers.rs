//! The building blocks the architectures share: linear maps, norms, rotary embeddings, attention.
//!
//! Written out as the equations so that each architecture file reads like its paper.

use burn::module::{Module, Param};
use burn::tensor::{activation::softmax, backend::Backend, Bool, Int, Tensor};

/// `y = x W + b`, with `W` stored `[in, out]` (PyTorch's `[out, in]` is transposed on load).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[in, out]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]`, if the layer has one.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// Applies the map to the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        // One [rows, in] × [in, out] product: a broadcast batched matmul would copy W per row.
        let mut dims = x.dims();
        let [d_in, d_out] = self.weight.val().dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        dims[D - 1] = d_out;
        let y: Tensor<B, D> = x.reshape([rows, d_in]).matmul(self.weight.val()).reshape(dims);
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }
    /// Output width.
    pub fn d_out(&self) -> usize {
        self.weight.val().dims()[1]
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
    /// Normalises the last dimension.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let rms = (x.clone().square().mean_dim(2) + self.eps).sqrt();
        (x / rms) * self.gamma.val().unsqueeze()
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
    /// Normalises the last dimension.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let centred = x.clone() - x.mean_dim(2);
        let var = centred.clone().square().mean_dim(2);
        centred / (var + self.eps).sqrt() * self.gamma.val().unsqueeze() + self.beta.val().unsqueeze()
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
}

/// `[batch, seq, heads·head_dim]` to `[batch, heads, seq, head_dim]`.
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [batch, seq, width] = x.dims();
    x.reshape([batch, seq, heads, width / heads]).swap_dims(1, 2)
}

/// `[batch, heads, seq, head_dim]` to `[batch, seq, heads·head_dim]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, heads, seq, head_dim] = x.dims();
    x.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}

/// Position of each token among the real (unmasked) tokens of its row: `cumsum(mask) − 1`,
/// clamped at 0. Equals `0..seq` without padding, and stays right under left padding.
pub fn positions_from_mask<B: Backend>(mask: Tensor<B, 2, Int>) -> Tensor<B, 2, Int> {
    (mask.cumsum(1) - 1).clamp_min(0)
}

/// The additive attention bias `[batch, 1, queries, total]` for the last `queries` of the `total`
/// positions in `mask` (all of them without a KV cache): 0 where a query may see a key, a large
/// negative number elsewhere (later keys when `causal`, padded keys always).
pub fn attention_bias<B: Backend>(mask: Tensor<B, 2, Int>, queries: usize, causal: bool) -> Tensor<B, 4> {
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
    Tensor::<B, 4>::zeros(shape, &device).mask_fill(blocked, f32::MIN / 2.0)
}

/// Scaled dot-product attention: `softmax(q kᵀ / √d + bias) v`, all `[batch, heads, seq, d]`.
pub fn attend<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, bias: Tensor<B, 4>) -> Tensor<B, 4> {
    let head_dim = q.dims()[3];
    let scores = q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt() + bias;
    softmax(scores, 3).matmul(v)
}

/// Repeats each of `kv_heads` key/value heads `groups` times (grouped-query attention).
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [batch, kv_heads, seq, d] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([batch, kv_heads, groups, seq, d]).reshape([batch, kv_heads * groups, seq, d])
}

/// Rotary position embedding (Su et al. 2021) in the "rotate half" layout of Hugging Face:
/// the first `rotary_dim` dims of each head are rotated, the rest pass through.
#[derive(Debug, Clone)]
pub struct Rotary<B: Backend> {
    /// `[batch, 1, seq, rotary_dim]`.
    cos: Tensor<B, 4>,
    /// `[batch, 1, seq, rotary_dim]`.
    sin: Tensor<B, 4>,
    rotary_dim: usize,
}

impl<B: Backend> Rotary<B> {
    /// Angles `pos · inv_freq[i]` for the given positions; `inv_freq` has `rotary_dim / 2` entries.
    pub fn new(positions: Tensor<B, 2, Int>, inv_freq: &[f32]) -> Self {
        let [batch, seq] = positions.dims();
        let device = positions.device();
        let half = inv_freq.len();
        let freq = Tensor::<B, 1>::from_floats(inv_freq, &device).reshape([1, 1, half]);
        let angles = positions.float().reshape([batch, seq, 1]) * freq; // [batch, seq, half]
        let angles = Tensor::cat(vec![angles.clone(), angles], 2).reshape([batch, 1, seq, 2 * half]);
        Rotary { cos: angles.clone().cos(), sin: angles.sin(), rotary_dim: 2 * half }
    }

    /// Rotates `x` (`[batch, heads, seq, head_dim]`).
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let head_dim = x.dims()[3];
        let r = self.rotary_dim;
        let (rot, pass) = if r == head_dim {
            (x, None)
        } else {
            (x.clone().narrow(3, 0, r), Some(x.narrow(3, r, head_dim - r)))
        };
        let x1 = rot.clone().narrow(3, 0, r / 2);
        let x2 = rot.clone().narrow(3, r / 2, r / 2);
        let rotated_half = Tensor::cat(vec![x2.neg(), x1], 3);
        let out = rot * self.cos.clone() + rotated_half * self.sin.clone();
        match pass {
            Some(p) => Tensor::cat(vec![out, p], 3),
            None => out,
        }
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
    let base: Vec<f64> =
        (0..rotary_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / rotary_dim as f64)).collect();
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
