//! GPT-NeoX / Pythia (Black et al. 2022): rotary on a fraction (`rotary_pct`) of each head,
//! a fused per-head `[q k v]` projection, and (by default) a parallel residual:
//! `y = x + Attn(LN₁(x)) + MLP(LN₂(x))`.

use burn::module::Module;
use burn::tensor::{Tensor, activation::gelu, backend::Backend};

use super::common::{hook_attention_values, hook_qkv, standard_block_sites};
use crate::config::HfConfig;
use crate::error::{ModelError, Result};
use crate::hooks::{Hooks, hook};
use crate::layers::{Embedding, LayerNorm, Linear, RopeScaling, attend, rope_inv_freq, split_heads};
use crate::model::{Context, Input, Transformer};
use crate::precision::{to_dtype, to_f32};
use crate::site::{Component as C, Site, SiteInfo};
use crate::weights::Loader;

/// The numbers that define a GPT-NeoX model.
#[derive(Debug, Clone, PartialEq)]
pub struct GptNeoXConfig {
    /// Number of tokens.
    pub vocab_size: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// Number of blocks.
    pub num_layers: usize,
    /// Attention (query) heads.
    pub num_heads: usize,
    /// MLP hidden width.
    pub intermediate_size: usize,
    /// Dims of each head that are rotated: `head_dim × rotary_pct`, rounded down.
    pub rotary_dim: usize,
    /// Rotary base θ.
    pub rotary_base: f64,
    /// Rotary frequency scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// LayerNorm ε.
    pub layer_norm_eps: f64,
    /// Attention and MLP both read the block input (Pythia) instead of in sequence.
    pub use_parallel_residual: bool,
    /// The output head is the token embedding matrix.
    pub tie_word_embeddings: bool,
}

impl GptNeoXConfig {
    /// From a Hugging Face `config.json` (`model_type` gpt_neox).
    pub fn from_hf(c: &HfConfig) -> Result<Self> {
        let hidden_size = c.usize("hidden_size")?;
        let num_heads = c.usize("num_attention_heads")?;
        let act = c.str_or("hidden_act", "gelu")?;
        if act != "gelu" {
            return Err(ModelError::config(
                c.path,
                format!("hidden_act `{act}` is not supported for gpt_neox (only gelu)"),
            ));
        }
        crate::config::check_heads(c.path, hidden_size, num_heads, num_heads, false)?;
        let head_dim = hidden_size / num_heads;
        let pct = c.f64_or("rotary_pct", c.f64_or("partial_rotary_factor", 1.0)?)?;
        Ok(GptNeoXConfig {
            vocab_size: c.usize("vocab_size")?,
            hidden_size,
            num_layers: c.usize("num_hidden_layers")?,
            num_heads,
            intermediate_size: c.usize("intermediate_size")?,
            rotary_dim: (head_dim as f64 * pct) as usize,
            rotary_base: c.f64_or("rotary_emb_base", c.f64_or("rope_theta", 10_000.0)?)?,
            rope_scaling: c.rope_scaling()?,
            layer_norm_eps: c.f64_or("layer_norm_eps", 1e-5)?,
            use_parallel_residual: c.bool_or("use_parallel_residual", true)?,
            tie_word_embeddings: c.bool_or("tie_word_embeddings", false)?,
        })
    }
}

/// One GPT-NeoX layer.
#[derive(Module, Debug)]
pub struct GptNeoXBlock<B: Backend> {
    input_layernorm: LayerNorm<B>,
    query_key_value: Linear<B>,
    dense: Linear<B>,
    post_attention_layernorm: LayerNorm<B>,
    h_to_4h: Linear<B>,
    four_h_to_h: Linear<B>,
}

/// A GPT-NeoX causal language model.
#[derive(Module, Debug)]
pub struct GptNeoX<B: Backend> {
    embed_in: Embedding<B>,
    layers: Vec<GptNeoXBlock<B>>,
    final_layer_norm: LayerNorm<B>,
    embed_out: Linear<B>,
    #[module(skip)]
    config: GptNeoXConfig,
    #[module(skip)]
    inv_freq: Vec<f32>,
    /// The head is a copy of the embedding matrix (tied), not parameters of its own.
    #[module(skip)]
    tied_head: bool,
}

impl<B: Backend> GptNeoX<B> {
    /// Parameters counted twice by `num_params` (a tied head repeats the embeddings).
    pub fn shared_parameters(&self) -> usize {
        if self.tied_head { self.config.vocab_size * self.config.hidden_size } else { 0 }
    }

    /// Loads `GPTNeoXForCausalLM` weights.
    pub fn load(config: GptNeoXConfig, w: &Loader<B>) -> Result<Self> {
        let c = &config;
        let (d, eps) = (c.hidden_size, c.layer_norm_eps);
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("gpt_neox.layers.{l}");
            layers.push(GptNeoXBlock {
                input_layernorm: w.layer_norm(&format!("{p}.input_layernorm"), d, eps)?,
                query_key_value: w.linear(&format!("{p}.attention.query_key_value"), d, 3 * d, true)?,
                dense: w.linear(&format!("{p}.attention.dense"), d, d, true)?,
                post_attention_layernorm: w.layer_norm(&format!("{p}.post_attention_layernorm"), d, eps)?,
                h_to_4h: w.linear(&format!("{p}.mlp.dense_h_to_4h"), d, c.intermediate_size, true)?,
                four_h_to_h: w.linear(&format!("{p}.mlp.dense_4h_to_h"), c.intermediate_size, d, true)?,
            });
        }
        let head = if c.tie_word_embeddings || !w.has("embed_out.weight") { "gpt_neox.embed_in" } else { "embed_out" };
        Ok(GptNeoX {
            embed_in: w.embedding("gpt_neox.embed_in.weight", c.vocab_size, d)?,
            layers,
            final_layer_norm: w.layer_norm("gpt_neox.final_layer_norm", d, eps)?,
            embed_out: w.head(head, d, c.vocab_size)?,
            tied_head: head == "gpt_neox.embed_in",
            inv_freq: rope_inv_freq(c.rotary_dim, c.rotary_base, c.rope_scaling.as_ref()),
            config,
        })
    }
}

impl<B: Backend> Transformer<B> for GptNeoX<B> {
    fn arch(&self) -> &'static str {
        "gpt_neox"
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
        standard_block_sites(
            layer,
            c.hidden_size,
            (c.num_heads, c.num_heads, c.hidden_size / c.num_heads),
            c.intermediate_size,
        )
    }
    fn embed(&self, input: &Input<B>) -> Tensor<B, 3> {
        self.embed_in.forward(input.ids.clone())
    }
    fn context(&self, input: &Input<B>) -> Context<B> {
        Context::new(input, true, Some((&self.inv_freq, self.config.hidden_size / self.config.num_heads)), self.dtype())
    }
    fn block(&self, layer: usize, x: Tensor<B, 3>, ctx: &Context<B>, hooks: &mut dyn Hooks<B>) -> Tensor<B, 3> {
        let b = &self.layers[layer];
        let heads = self.config.num_heads;
        let rotary = ctx.rotary.as_ref().expect("gpt_neox context has rotary angles");

        // Attention. The fused projection is laid out per head: [q_h k_h v_h] for each head h.
        let a_in = hook(hooks, Site::new(layer, C::AttentionInput), b.input_layernorm.forward(x.clone()));
        let [batch, seq, d] = a_in.dims();
        let hd = d / heads;
        let qkv = b.query_key_value.forward(a_in).reshape([batch, seq, heads, 3 * hd]);
        let part = |i: usize| qkv.clone().narrow(3, i * hd, hd).reshape([batch, seq, d]);
        let (q, k, v) = hook_qkv(hooks, layer, part(0), part(1), part(2));
        let q = rotary.apply(split_heads(q, heads));
        let (k, v) = ctx.keys_values(
            layer,
            rotary.apply(split_heads(k, heads)).swap_dims(1, 2),
            split_heads(v, heads).swap_dims(1, 2),
        );
        let values = hook_attention_values(hooks, layer, attend(q, k, v, ctx.bias_for(heads, 1)));
        let attn_out = hook(hooks, Site::new(layer, C::AttentionOutput), b.dense.forward(values));

        // MLP on LN₂(x) (parallel residual) or on LN₂(x + attn) (sequential).
        let mlp_base = if self.config.use_parallel_residual { x.clone() } else { x.clone() + attn_out.clone() };
        let mut at = |component, t| hook(hooks, Site::new(layer, component), t);
        let m = at(C::MlpInput, b.post_attention_layernorm.forward(mlp_base));
        let act = at(C::MlpActivation, gelu(b.h_to_4h.forward(m)));
        let mlp_out = at(C::MlpOutput, b.four_h_to_h.forward(act));
        x + attn_out + mlp_out
    }
    fn final_norm(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.final_layer_norm.forward(x)
    }
    fn head(&self, hidden: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        Some(to_f32(self.embed_out.forward(to_dtype(hidden, self.dtype()))))
    }
    fn head_map(&self) -> Option<&Linear<B>> {
        Some(&self.embed_out)
    }
    fn dtype(&self) -> burn::tensor::DType {
        self.embed_in.dtype()
    }
}
