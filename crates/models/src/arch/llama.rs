//! The Llama family (Touvron et al. 2023): Llama 2/3, SmolLM2, Mistral, Qwen2.
//!
//! Pre-norm decoder: `h = x + Attn(RMSNorm(x))`, `y = h + MLP(RMSNorm(h))`, where attention uses
//! rotary positions and grouped-query heads, and `MLP(x) = W_down(SiLU(W_gate x) ⊙ W_up x)`.

use burn::module::Module;
use burn::tensor::{Tensor, activation::silu, backend::Backend};

use super::common::{hook_attention_values, hook_qkv, standard_block_sites};
use crate::config::HfConfig;
use crate::error::Result;
use crate::hooks::{Hooks, hook};
use crate::layers::{Embedding, Linear, RmsNorm, RopeScaling, attend, rope_inv_freq, split_heads};
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
}

impl LlamaConfig {
    /// From a Hugging Face `config.json` (`model_type` llama, mistral or qwen2).
    pub fn from_hf(c: &HfConfig) -> Result<Self> {
        let hidden_size = c.usize("hidden_size")?;
        let num_heads = c.usize("num_attention_heads")?;
        let qwen = c.str_or("model_type", "llama")? == "qwen2";
        let num_kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = c.opt_usize("head_dim")?;
        crate::config::check_heads(c.path, hidden_size, num_heads, num_kv_heads, head_dim.is_some())?;
        Ok(LlamaConfig {
            vocab_size: c.usize("vocab_size")?,
            hidden_size,
            intermediate_size: c.usize("intermediate_size")?,
            num_layers: c.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim: head_dim.unwrap_or(hidden_size / num_heads),
            rms_norm_eps: c.f64_or("rms_norm_eps", 1e-6)?,
            rope_theta: c.f64_or("rope_theta", 10_000.0)?,
            rope_scaling: c.rope_scaling()?,
            tie_word_embeddings: c.bool_or("tie_word_embeddings", false)?,
            qkv_bias: c.bool_or("attention_bias", qwen)?,
        })
    }
}

/// One decoder layer.
#[derive(Module, Debug)]
pub struct LlamaBlock<B: Backend> {
    input_norm: RmsNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    o: Linear<B>,
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
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            layers.push(LlamaBlock {
                input_norm: w.rms_norm(&format!("{p}.input_layernorm.weight"), d, c.rms_norm_eps)?,
                q: w.linear(&format!("{p}.self_attn.q_proj"), d, c.num_heads * hd, c.qkv_bias)?,
                k: w.linear(&format!("{p}.self_attn.k_proj"), d, c.num_kv_heads * hd, c.qkv_bias)?,
                v: w.linear(&format!("{p}.self_attn.v_proj"), d, c.num_kv_heads * hd, c.qkv_bias)?,
                o: w.linear(&format!("{p}.self_attn.o_proj"), c.num_heads * hd, d, false)?,
                post_attention_norm: w.rms_norm(&format!("{p}.post_attention_layernorm.weight"), d, c.rms_norm_eps)?,
                gate: w.linear(&format!("{p}.mlp.gate_proj"), d, c.intermediate_size, false)?,
                up: w.linear(&format!("{p}.mlp.up_proj"), d, c.intermediate_size, false)?,
                down: w.linear(&format!("{p}.mlp.down_proj"), c.intermediate_size, d, false)?,
            });
        }
        let embed_tokens = w.embedding("model.embed_tokens.weight", c.vocab_size, d)?;
        // A checkpoint without `lm_head.weight` ties the head to the embeddings.
        let head_name =
            if c.tie_word_embeddings || !w.has("lm_head.weight") { "model.embed_tokens" } else { "lm_head" };
        let lm_head = w.head(head_name, d, c.vocab_size)?;
        let tied_head = head_name == "model.embed_tokens";
        let inv_freq = rope_inv_freq(hd, c.rope_theta, c.rope_scaling.as_ref());
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
        "llama"
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
        let c = &self.config;
        let rotary = ctx.rotary.as_ref().expect("llama context has rotary angles");

        // Attention: h = x + W_o · softmax(RoPE(q) RoPE(k)ᵀ/√d + mask) v
        let a_in = hook(hooks, Site::new(layer, C::AttentionInput), b.input_norm.forward(x.clone()));
        let (q, k, v) = hook_qkv(hooks, layer, b.q.forward(a_in.clone()), b.k.forward(a_in.clone()), b.v.forward(a_in));
        let q = rotary.apply(split_heads(q, c.num_heads));
        let k = rotary.apply(split_heads(k, c.num_kv_heads)).swap_dims(1, 2);
        let (k, v) = ctx.keys_values(layer, k, split_heads(v, c.num_kv_heads).swap_dims(1, 2));
        let bias = ctx.bias_for(c.num_kv_heads, c.num_heads / c.num_kv_heads);
        let values = hook_attention_values(hooks, layer, attend(q, k, v, bias));
        let attn_out = hook(hooks, Site::new(layer, C::AttentionOutput), b.o.forward(values));
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
    /// From a llama-architecture GGUF file's `llama.*` metadata. A file without `output.weight`
    /// has its head tied to the embeddings.
    pub fn from_gguf(file: &crate::weights::gguf::GgufFile) -> Result<Self> {
        let arch = file.meta_str("general.architecture")?;
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = file.meta_u64(&key("embedding_length"))? as usize;
        let num_heads = file.meta_u64(&key("attention.head_count"))? as usize;
        let num_kv_heads = file
            .metadata
            .get(&key("attention.head_count_kv"))
            .and_then(|v| v.as_u64())
            .map_or(num_heads, |v| v as usize);
        let head_dim = file.metadata.get(&key("attention.key_length")).and_then(|v| v.as_u64()).map(|v| v as usize);
        crate::config::check_heads(file.path(), hidden_size, num_heads, num_kv_heads, head_dim.is_some())?;
        let vocab_size = match file.metadata.get(&key("vocab_size")).and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => file.meta_strings("tokenizer.ggml.tokens")?.len(),
        };
        let rope_scaling = match file.metadata.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => None,
            Some("linear") => Some(RopeScaling::Linear { factor: file.meta_f64(&key("rope.scaling.factor"))? }),
            Some(other) => {
                return Err(crate::error::ModelError::config(
                    file.path(),
                    format!("{arch}.rope.scaling.type `{other}` is not supported (supported: none, linear)"),
                ));
            }
        };
        Ok(LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: file.meta_u64(&key("feed_forward_length"))? as usize,
            num_layers: file.meta_u64(&key("block_count"))? as usize,
            num_heads,
            num_kv_heads,
            head_dim: head_dim.unwrap_or(hidden_size / num_heads),
            rms_norm_eps: file.meta_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: file.metadata.get(&key("rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(10_000.0),
            rope_scaling,
            tie_word_embeddings: !file.tensors.contains_key("output.weight"),
            qkv_bias: file.tensors.contains_key("blk.0.attn_q.bias"),
        })
    }
}
