//! The Llama family (Touvron et al. 2023): Llama 2/3, SmolLM2, Mistral, Qwen 2 and 3, Phi-3.
//!
//! Pre-norm decoder: `h = x + Attn(RMSNorm(x))`, `y = h + MLP(RMSNorm(h))`, where attention uses
//! rotary positions and grouped-query heads, and `MLP(x) = W_down(SiLU(W_gate x) ⊙ W_up x)`.
//! The members differ only inside attention ([`super::attention`]): Mistral and Phi-3 attend
//! through a sliding window, Qwen 3 normalises each query and key head, Phi-3 keeps q/k/v and
//! gate/up fused in one matrix each (split on load) and may rotate part of each head.

use burn::module::Module;
use burn::tensor::{Tensor, activation::silu, backend::Backend};

use super::attention::{AttentionShape, QkNorm, SelfAttention};
use super::common::standard_block_sites;
use crate::config::{GgufDims, HfConfig, WindowLayers};
use crate::error::Result;
use crate::hooks::{Hooks, hook};
use crate::layers::{Embedding, Linear, RmsNorm, RopeScaling, Scores, rope_inv_freq};
use crate::model::{Context, Input, Transformer};
use crate::precision::{to_dtype, to_f32};
use crate::site::{Component as C, Site, SiteInfo};
use crate::weights::Loader;

/// The numbers that define a Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Number of tokens.
    pub vocab_size: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP hidden width.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_layers: usize,
    /// Attention (query) heads.
    pub num_heads: usize,
    /// Key/value heads (fewer than query heads under grouped-query attention).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm ε.
    pub rms_norm_eps: f64,
    /// Rotary base θ.
    pub rope_theta: f64,
    /// Rotary frequency scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// The output head is the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub qkv_bias: bool,
    /// The architecture's name: `llama` (Llama, Mistral, Qwen 2, SmolLM2), `qwen3` or `phi3`.
    pub arch: &'static str,
    /// Query/key norms (per head for Qwen 3).
    pub qk_norm: QkNorm,
    /// Each layer's sliding window (`None`: full attention).
    pub windows: Vec<Option<usize>>,
    /// Dimensions of each head that rotate (Phi-3's `partial_rotary_factor`; else `head_dim`).
    pub rotary_dim: usize,
    /// q/k/v in one `qkv_proj` and gate/up in one `gate_up_proj` (Phi-3).
    pub fused_projections: bool,
}

impl LlamaConfig {
    /// From a Hugging Face `config.json` (`model_type` llama, mistral, qwen2, qwen3 or phi3).
    pub fn from_hf(c: &HfConfig) -> Result<Self> {
        let hidden_size = c.usize("hidden_size")?;
        let num_heads = c.usize("num_attention_heads")?;
        let model_type = c.str_or("model_type", "llama")?;
        let (arch, qk_norm, window_rule) = match model_type {
            "qwen3" => ("qwen3", QkNorm::PerHead, WindowLayers::FromMaxWindowLayers),
            "phi3" => ("phi3", QkNorm::None, WindowLayers::All),
            "qwen2" => ("llama", QkNorm::None, WindowLayers::FromMaxWindowLayers),
            _ => ("llama", QkNorm::None, WindowLayers::All),
        };
        let num_kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = c.opt_usize("head_dim")?;
        crate::config::check_heads(c.path, hidden_size, num_heads, num_kv_heads, head_dim.is_some())?;
        let head_dim = head_dim.unwrap_or(hidden_size / num_heads);
        let num_layers = c.usize("num_hidden_layers")?;
        let rotary_dim = (head_dim as f64 * c.f64_or("partial_rotary_factor", 1.0)?) as usize;
        Ok(LlamaConfig {
            vocab_size: c.usize("vocab_size")?,
            hidden_size,
            intermediate_size: c.usize("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: c.f64_or("rms_norm_eps", 1e-6)?,
            rope_theta: c.f64_or("rope_theta", 10_000.0)?,
            rope_scaling: c.rope_scaling()?,
            tie_word_embeddings: c.bool_or("tie_word_embeddings", false)?,
            qkv_bias: c.bool_or("attention_bias", model_type == "qwen2")?,
            arch,
            qk_norm,
            windows: c.layer_windows(num_layers, window_rule)?,
            rotary_dim: rotary_dim.clamp(2, head_dim) & !1,
            fused_projections: model_type == "phi3",
        })
    }
}

/// One decoder layer.
#[derive(Module, Debug)]
pub struct LlamaBlock<B: Backend> {
    input_norm: RmsNorm<B>,
    attn: SelfAttention<B>,
    post_attention_norm: RmsNorm<B>,
    gate: Linear<B>,
    up: Linear<B>,
    down: Linear<B>,
}

/// A Llama-family causal language model.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    embed_tokens: Embedding<B>,
    layers: Vec<LlamaBlock<B>>,
    norm: RmsNorm<B>,
    lm_head: Linear<B>,
    #[module(skip)]
    config: LlamaConfig,
    #[module(skip)]
    inv_freq: Vec<f32>,
    /// The head is a copy of the embedding matrix (tied), not parameters of its own.
    #[module(skip)]
    tied_head: bool,
}

impl<B: Backend> Llama<B> {
    /// Loads the weights named as in Hugging Face's `LlamaForCausalLM`.
    pub fn load(config: LlamaConfig, w: &Loader<B>) -> Result<Self> {
        let c = &config;
        let (d, hd) = (c.hidden_size, c.head_dim);
        let mut layers = Vec::with_capacity(c.num_layers);
        let (q_width, kv_width) = (c.num_heads * hd, c.num_kv_heads * hd);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            let ([q, k, v], [gate, up]) = if c.fused_projections {
                let qkv = w.linear_split(&format!("{p}.self_attn.qkv_proj"), d, &[q_width, kv_width, kv_width])?;
                let gate_up = w.linear_split(&format!("{p}.mlp.gate_up_proj"), d, &[c.intermediate_size; 2])?;
                (take(qkv), take(gate_up))
            } else {
                (
                    [
                        w.linear(&format!("{p}.self_attn.q_proj"), d, q_width, c.qkv_bias)?,
                        w.linear(&format!("{p}.self_attn.k_proj"), d, kv_width, c.qkv_bias)?,
                        w.linear(&format!("{p}.self_attn.v_proj"), d, kv_width, c.qkv_bias)?,
                    ],
                    [
                        w.linear(&format!("{p}.mlp.gate_proj"), d, c.intermediate_size, false)?,
                        w.linear(&format!("{p}.mlp.up_proj"), d, c.intermediate_size, false)?,
                    ],
                )
            };
            let (q_norm, k_norm) = match c.qk_norm {
                QkNorm::None => (None, None),
                _ => (
                    Some(w.rms_norm(&format!("{p}.self_attn.q_norm.weight"), hd, c.rms_norm_eps)?),
                    Some(w.rms_norm(&format!("{p}.self_attn.k_norm.weight"), hd, c.rms_norm_eps)?),
                ),
            };
            let shape = AttentionShape {
                heads: c.num_heads,
                kv_heads: c.num_kv_heads,
                head_dim: hd,
                qk_norm: c.qk_norm,
                scores: Scores::default(),
                window: c.windows.get(l).copied().flatten(),
                local_rotary: false,
            };
            layers.push(LlamaBlock {
                input_norm: w.rms_norm(&format!("{p}.input_layernorm.weight"), d, c.rms_norm_eps)?,
                attn: SelfAttention {
                    q,
                    k,
                    v,
                    o: w.linear(&format!("{p}.self_attn.o_proj"), q_width, d, false)?,
                    q_norm,
                    k_norm,
                    shape,
                },
                post_attention_norm: w.rms_norm(&format!("{p}.post_attention_layernorm.weight"), d, c.rms_norm_eps)?,
                gate,
                up,
                down: w.linear(&format!("{p}.mlp.down_proj"), c.intermediate_size, d, false)?,
            });
        }
        let embed_tokens = w.embedding("model.embed_tokens.weight", c.vocab_size, d)?;
        // A checkpoint without `lm_head.weight` ties the head to the embeddings.
        let (lm_head, tied_head) = w.causal_lm_head(c.tie_word_embeddings, d, c.vocab_size)?;
        let inv_freq = rope_inv_freq(c.rotary_dim, c.rope_theta, c.rope_scaling.as_ref());
        Ok(Llama {
            embed_tokens,
            layers,
            norm: w.rms_norm("model.norm.weight", d, c.rms_norm_eps)?,
            lm_head,
            config,
            inv_freq,
            tied_head,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Parameters counted twice by `num_params` (a tied head repeats the embeddings).
    pub fn shared_parameters(&self) -> usize {
        if self.tied_head { self.config.vocab_size * self.config.hidden_size } else { 0 }
    }
}

impl<B: Backend> Transformer<B> for Llama<B> {
    fn arch(&self) -> &'static str {
        self.config.arch
    }
    fn causal(&self) -> bool {
        true
    }
    fn n_layers(&self) -> usize {
        self.config.num_layers
    }
    fn width(&self) -> usize {
        self.config.hidden_size
    }
    fn block_sites(&self, layer: usize) -> Vec<SiteInfo> {
        let c = &self.config;
        standard_block_sites(layer, c.hidden_size, (c.num_heads, c.num_kv_heads, c.head_dim), c.intermediate_size)
    }
    fn embed(&self, input: &Input<B>) -> Tensor<B, 3> {
        self.embed_tokens.forward(input.ids.clone())
    }
    fn context(&self, input: &Input<B>) -> Context<B> {
        Context::new(input, true, Some((&self.inv_freq, self.config.head_dim)), self.dtype())
    }
    fn block(&self, layer: usize, x: Tensor<B, 3>, ctx: &Context<B>, hooks: &mut dyn Hooks<B>) -> Tensor<B, 3> {
        let b = &self.layers[layer];

        // Attention: h = x + W_o · softmax(RoPE(q) RoPE(k)ᵀ/√d + mask) v
        let a_in = hook(hooks, Site::new(layer, C::AttentionInput), b.input_norm.forward(x.clone()));
        let attn = b.attn.forward(layer, a_in, ctx, hooks);
        let attn_out = hook(hooks, Site::new(layer, C::AttentionOutput), attn);
        let h = x + attn_out;

        // MLP: y = h + W_down(SiLU(W_gate m) ⊙ W_up m), m = RMSNorm(h)
        let mut at = |component, h| hook(hooks, Site::new(layer, component), h);
        let m = at(C::MlpInput, b.post_attention_norm.forward(h.clone()));
        let act = at(C::MlpActivation, silu(b.gate.forward(m.clone())) * b.up.forward(m));
        let mlp_out = at(C::MlpOutput, b.down.forward(act));
        h + mlp_out
    }
    fn final_norm(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.norm.forward(x)
    }
    fn head(&self, hidden: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        Some(to_f32(self.lm_head.forward(to_dtype(hidden, self.dtype()))))
    }
    fn head_map(&self) -> Option<&Linear<B>> {
        Some(&self.lm_head)
    }
    fn dtype(&self) -> burn::tensor::DType {
        self.embed_tokens.dtype()
    }
}

impl LlamaConfig {
    /// From a GGUF file's metadata: `llama` (q/k rows permuted by llama.cpp), `qwen2`, `qwen3`
    /// or `phi3` (`rope.dimension_count` rotated dims, `attention.sliding_window` on every
    /// layer). A file without `output.weight` has its head tied to the embeddings.
    pub fn from_gguf(file: &crate::weights::gguf::GgufFile) -> Result<Self> {
        let g = GgufDims::read(file)?;
        let key = |k: &str| format!("{}.{k}", g.arch);
        let rope_scaling = match file.metadata.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => None,
            Some("linear") => Some(RopeScaling::Linear { factor: file.meta_f64(&key("rope.scaling.factor"))? }),
            Some(other) => {
                return Err(crate::error::ModelError::config(
                    file.path(),
                    format!("{}.rope.scaling.type `{other}` is not supported (supported: none, linear)", g.arch),
                ));
            }
        };
        if file.tensors.contains_key("rope_factors_long.weight") {
            return Err(crate::error::ModelError::config(
                file.path(),
                "Phi-3's long-context rotary factors (`rope_factors_long`) are not supported; use a 4k-context model",
            ));
        }
        let arch = match g.arch.as_str() {
            "qwen3" => "qwen3",
            "phi3" => "phi3",
            _ => "llama",
        };
        let rotary_dim = file
            .metadata
            .get(&key("rope.dimension_count"))
            .and_then(|v| v.as_u64())
            .map_or(g.head_dim, |v| v as usize)
            .min(g.head_dim);
        Ok(LlamaConfig {
            vocab_size: g.vocab_size,
            hidden_size: g.hidden_size,
            intermediate_size: g.intermediate_size,
            num_layers: g.num_layers,
            num_heads: g.num_heads,
            num_kv_heads: g.num_kv_heads,
            head_dim: g.head_dim,
            rms_norm_eps: g.rms_norm_eps,
            rope_theta: g.rope_theta,
            rope_scaling,
            tie_word_embeddings: !file.tensors.contains_key("output.weight"),
            qkv_bias: file.tensors.contains_key("blk.0.attn_q.bias"),
            arch,
            qk_norm: if arch == "qwen3" { QkNorm::PerHead } else { QkNorm::None },
            windows: vec![g.sliding_window; g.num_layers],
            rotary_dim,
            fused_projections: arch == "phi3",
        })
    }
}

/// The maps of a fused matrix split in `N`, as an array.
fn take<B: Backend, const N: usize>(maps: Vec<Linear<B>>) -> [Linear<B>; N] {
    maps.try_into().unwrap_or_else(|_| unreachable!("linear_split returns one map per width"))
}
