//! OLMo 2 (Team OLMo 2024), the fully open model family.
//!
//! A decoder that norms each sublayer's *output*, not its input:
//! `h = x + RMSNorm(Attn(x))`, `y = h + RMSNorm(MLP(h))`, where attention normalises the whole
//! query and key projections (one RMSNorm over `heads · head_dim` each) before the rotary map,
//! and `MLP(x) = W_down(SiLU(W_gate x) ⊙ W_up x)`.

use burn::module::Module;
use burn::tensor::{Tensor, activation::silu, backend::Backend};

use super::attention::{AttentionShape, QkNorm, SelfAttention};
use super::common::standard_block_sites;
use crate::config::{GgufDims, HfConfig};
use crate::error::Result;
use crate::hooks::{Hooks, hook};
use crate::layers::{Embedding, Linear, RmsNorm, RopeScaling, Scores, rope_inv_freq};
use crate::model::{Context, Input, Transformer};
use crate::precision::{to_dtype, to_f32};
use crate::site::{Component as C, Site, SiteInfo};
use crate::weights::Loader;

/// The numbers that define an OLMo 2 model.
#[derive(Debug, Clone, PartialEq)]
pub struct Olmo2Config {
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
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm ε.
    pub rms_norm_eps: f64,
    /// Rotary base θ.
    pub rope_theta: f64,
    /// Rotary frequency scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// q/k/v projections carry biases.
    pub attention_bias: bool,
    /// The output head is the token embedding matrix.
    pub tie_word_embeddings: bool,
}

impl Olmo2Config {
    /// From a Hugging Face `config.json` (`model_type` olmo2).
    pub fn from_hf(c: &HfConfig) -> Result<Self> {
        let hidden_size = c.usize("hidden_size")?;
        let num_heads = c.usize("num_attention_heads")?;
        let num_kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        crate::config::check_heads(c.path, hidden_size, num_heads, num_kv_heads, false)?;
        Ok(Olmo2Config {
            vocab_size: c.usize("vocab_size")?,
            hidden_size,
            intermediate_size: c.usize("intermediate_size")?,
            num_layers: c.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim: hidden_size / num_heads,
            rms_norm_eps: c.f64_or("rms_norm_eps", 1e-5)?,
            rope_theta: c.f64_or("rope_theta", 10_000.0)?,
            rope_scaling: c.rope_scaling()?,
            attention_bias: c.bool_or("attention_bias", false)?,
            tie_word_embeddings: c.bool_or("tie_word_embeddings", false)?,
        })
    }
}

impl Olmo2Config {
    /// From an `olmo2` GGUF file's metadata. A file without `output.weight` has its head tied
    /// to the embeddings.
    pub fn from_gguf(file: &crate::weights::gguf::GgufFile) -> Result<Self> {
        let g = GgufDims::read(file)?;
        Ok(Olmo2Config {
            vocab_size: g.vocab_size,
            hidden_size: g.hidden_size,
            intermediate_size: g.intermediate_size,
            num_layers: g.num_layers,
            num_heads: g.num_heads,
            num_kv_heads: g.num_kv_heads,
            head_dim: g.head_dim,
            rms_norm_eps: g.rms_norm_eps,
            rope_theta: g.rope_theta,
            rope_scaling: None,
            attention_bias: false,
            tie_word_embeddings: !file.tensors.contains_key("output.weight"),
        })
    }
}

/// One decoder layer.
#[derive(Module, Debug)]
pub struct Olmo2Block<B: Backend> {
    attn: SelfAttention<B>,
    post_attention_norm: RmsNorm<B>,
    gate: Linear<B>,
    up: Linear<B>,
    down: Linear<B>,
    post_feedforward_norm: RmsNorm<B>,
}

/// An OLMo 2 causal language model.
#[derive(Module, Debug)]
pub struct Olmo2<B: Backend> {
    embed_tokens: Embedding<B>,
    layers: Vec<Olmo2Block<B>>,
    norm: RmsNorm<B>,
    lm_head: Linear<B>,
    #[module(skip)]
    config: Olmo2Config,
    #[module(skip)]
    inv_freq: Vec<f32>,
    #[module(skip)]
    tied_head: bool,
}

impl<B: Backend> Olmo2<B> {
    /// Loads the weights named as in Hugging Face's `Olmo2ForCausalLM`.
    pub fn load(config: Olmo2Config, w: &Loader<B>) -> Result<Self> {
        let c = &config;
        let (d, hd, eps) = (c.hidden_size, c.head_dim, c.rms_norm_eps);
        let (q_width, kv_width) = (c.num_heads * hd, c.num_kv_heads * hd);
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            let linear = |name: &str, d_in, d_out, bias| w.linear(&format!("{p}.{name}"), d_in, d_out, bias);
            let q_norm = w.rms_norm(&format!("{p}.self_attn.q_norm.weight"), q_width, eps)?;
            let k_norm = w.rms_norm(&format!("{p}.self_attn.k_norm.weight"), kv_width, eps)?;
            let (q_norm, k_norm) = (Some(q_norm), Some(k_norm));
            let shape = AttentionShape {
                heads: c.num_heads,
                kv_heads: c.num_kv_heads,
                head_dim: hd,
                qk_norm: QkNorm::Whole,
                scores: Scores::default(),
                window: None,
                local_rotary: false,
            };
            layers.push(Olmo2Block {
                attn: SelfAttention::load(w, &format!("{p}.self_attn"), d, c.attention_bias, (q_norm, k_norm), shape)?,
                post_attention_norm: w.rms_norm(&format!("{p}.post_attention_layernorm.weight"), d, eps)?,
                gate: linear("mlp.gate_proj", d, c.intermediate_size, false)?,
                up: linear("mlp.up_proj", d, c.intermediate_size, false)?,
                down: linear("mlp.down_proj", c.intermediate_size, d, false)?,
                post_feedforward_norm: w.rms_norm(&format!("{p}.post_feedforward_layernorm.weight"), d, eps)?,
            });
        }
        let embed_tokens = w.embedding("model.embed_tokens.weight", c.vocab_size, d)?;
        let (lm_head, tied_head) = w.causal_lm_head(c.tie_word_embeddings, d, c.vocab_size)?;
        Ok(Olmo2 {
            embed_tokens,
            layers,
            norm: w.rms_norm("model.norm.weight", d, eps)?,
            lm_head,
            tied_head,
            inv_freq: rope_inv_freq(hd, c.rope_theta, c.rope_scaling.as_ref()),
            config,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &Olmo2Config {
        &self.config
    }

    /// Parameters counted twice by `num_params` (a tied head repeats the embeddings).
    pub fn shared_parameters(&self) -> usize {
        if self.tied_head { self.config.vocab_size * self.config.hidden_size } else { 0 }
    }
}

impl<B: Backend> Transformer<B> for Olmo2<B> {
    fn arch(&self) -> &'static str {
        "olmo2"
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
    /// With no norm before a sublayer, `attention_input` and `mlp_input` are the residual stream
    /// itself; `attention_output` and `mlp_output` are what it adds (after the post-norms).
    fn block(&self, layer: usize, x: Tensor<B, 3>, ctx: &Context<B>, hooks: &mut dyn Hooks<B>) -> Tensor<B, 3> {
        let b = &self.layers[layer];

        // Attention: h = x + RMSNorm(Attn(x))
        let a_in = hook(hooks, Site::new(layer, C::AttentionInput), x.clone());
        let attn = b.post_attention_norm.forward(b.attn.forward(layer, a_in, ctx, hooks));
        let h = x + hook(hooks, Site::new(layer, C::AttentionOutput), attn);

        // MLP: y = h + RMSNorm(W_down(SiLU(W_gate h) ⊙ W_up h))
        let mut at = |component, h| hook(hooks, Site::new(layer, component), h);
        let m = at(C::MlpInput, h.clone());
        let act = at(C::MlpActivation, silu(b.gate.forward(m.clone())) * b.up.forward(m));
        let mlp_out = at(C::MlpOutput, b.post_feedforward_norm.forward(b.down.forward(act)));
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
