//! Rotary self-attention as the decoder families write it, with the variations they add:
//! grouped-query heads, RMSNorms on queries and keys (per head: Qwen 3, Gemma 3; over the whole
//! projection: OLMo 2), a score scale and soft cap (Gemma 2), and a sliding window per layer
//! (Mistral, Gemma, Phi-3), with rotary angles of their own for window layers (Gemma 3).
//!
//! `Attn(x) = W_o · softmax(cap(RoPE(n_q(W_q x)) RoPE(n_k(W_k x))ᵀ · s) + mask) · W_v x`

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};

use super::common::{hook_attention_values, hook_qkv};
use crate::error::Result;
use crate::hooks::Hooks;
use crate::layers::{Linear, RmsNorm, Scores, attend_scored, split_heads};
use crate::model::Context;
use crate::weights::Loader;

/// Where a model normalises its queries and keys, before the rotary map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    /// No norm (Llama, Mistral, Qwen 2, Phi-3, Gemma 2).
    None,
    /// One RMSNorm over each head's `head_dim` values, shared by the heads (Qwen 3, Gemma 3).
    PerHead,
    /// One RMSNorm over the whole projection, `heads · head_dim` wide (OLMo 2).
    Whole,
}

/// The fixed facts of one layer's attention.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (fewer than query heads under grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Where queries and keys are normalised.
    pub qk_norm: QkNorm,
    /// The score scale and soft cap.
    pub scores: Scores,
    /// Sliding window of this layer (`None`: every earlier position).
    pub window: Option<usize>,
    /// Whether the layer takes the context's local rotary angles (Gemma 3's window layers).
    pub local_rotary: bool,
}

/// One layer's attention: the four projections and the optional query/key norms.
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    /// `W_q`.
    pub q: Linear<B>,
    /// `W_k`.
    pub k: Linear<B>,
    /// `W_v`.
    pub v: Linear<B>,
    /// `W_o`.
    pub o: Linear<B>,
    /// `n_q`, where [`AttentionShape::qk_norm`] is not `None`.
    pub q_norm: Option<RmsNorm<B>>,
    /// `n_k`, likewise.
    pub k_norm: Option<RmsNorm<B>>,
    /// Heads, norms, scores and window.
    #[module(skip)]
    pub shape: AttentionShape,
}

impl<B: Backend> SelfAttention<B> {
    /// Loads `{prefix}.{q,k,v,o}_proj` (q/k/v with biases where `bias`) for the residual width
    /// `d`, with the query/key norms given.
    pub fn load(
        w: &Loader<B>,
        prefix: &str,
        d: usize,
        bias: bool,
        (q_norm, k_norm): (Option<RmsNorm<B>>, Option<RmsNorm<B>>),
        shape: AttentionShape,
    ) -> Result<Self> {
        let (q_width, kv_width) = (shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim);
        let linear = |name: &str, d_in, d_out, bias| w.linear(&format!("{prefix}.{name}"), d_in, d_out, bias);
        Ok(SelfAttention {
            q: linear("q_proj", d, q_width, bias)?,
            k: linear("k_proj", d, kv_width, bias)?,
            v: linear("v_proj", d, kv_width, bias)?,
            o: linear("o_proj", q_width, d, false)?,
            q_norm,
            k_norm,
            shape,
        })
    }

    /// The attention output `W_o · values` of layer `layer` for the normed residual `x`,
    /// hooking q/k/v (as projected, before any norm) and the values.
    pub fn forward(&self, layer: usize, x: Tensor<B, 3>, ctx: &Context<B>, hooks: &mut dyn Hooks<B>) -> Tensor<B, 3> {
        let s = &self.shape;
        let (q, k, v) = hook_qkv(hooks, layer, self.q.forward(x.clone()), self.k.forward(x.clone()), self.v.forward(x));
        let (q, k) = match (s.qk_norm, &self.q_norm, &self.k_norm) {
            (QkNorm::Whole, Some(nq), Some(nk)) => (nq.forward(q), nk.forward(k)),
            _ => (q, k),
        };
        let (q, k) = (split_heads(q, s.heads), split_heads(k, s.kv_heads));
        let (q, k) = match (s.qk_norm, &self.q_norm, &self.k_norm) {
            (QkNorm::PerHead, Some(nq), Some(nk)) => (per_head(nq, q), per_head(nk, k)),
            _ => (q, k),
        };
        let global = ctx.rotary.as_ref().expect("a rotary model's context has rotary angles");
        let rotary = if s.local_rotary { ctx.rotary_local.as_ref().unwrap_or(global) } else { global };
        let q = rotary.apply(q);
        let k = rotary.apply(k).swap_dims(1, 2);
        let (k, v) = ctx.keys_values(layer, k, split_heads(v, s.kv_heads).swap_dims(1, 2));
        let bias = ctx.bias_for_window(s.kv_heads, s.heads / s.kv_heads, s.window);
        let values = hook_attention_values(hooks, layer, attend_scored(q, k, v, bias, s.scores));
        self.o.forward(values)
    }
}

/// An RMSNorm over the last dimension of `[batch, seq, heads, head_dim]`.
fn per_head<B: Backend>(norm: &RmsNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [batch, seq, heads, d] = x.dims();
    norm.forward(x.reshape([batch, seq * heads, d])).reshape([batch, seq, heads, d])
}
