//! Gemma 2 (Gemma Team 2024) and Gemma 3 (text), the models Gemma Scope's SAEs are trained on.
//!
//! A "sandwich" decoder: every sublayer is normed before *and* after,
//! `h = x + N₂(Attn(N₁(x)))`, `y = h + N₄(MLP(N₃(h)))`, with RMSNorms that scale by `1 + w`
//! (loaded as such). Embeddings are multiplied by `√hidden`; the MLP is GeGLU with tanh GELU,
//! `W_down(GELU(W_gate m) ⊙ W_up m)`; attention scores are scaled by `query_pre_attn_scalar^−½`.
//! Gemma 2 soft-caps attention scores and the final logits, `c · tanh(z / c)`, and attends
//! through a sliding window on every other layer. Gemma 3 normalises each query and key head
//! instead of capping, chooses window or full attention per layer (`layer_types`), and rotates
//! its window layers with a base of their own (`rope_local_base_freq`).

use burn::module::Module;
use burn::tensor::{Tensor, activation::gelu_approximate, backend::Backend};

use super::attention::{AttentionShape, QkNorm, SelfAttention};
use super::common::standard_block_sites;
use crate::config::{GgufDims, HfConfig, WindowLayers};
use crate::error::{ModelError, Result};
use crate::hooks::{Hooks, hook};
use crate::layers::{Embedding, Linear, RmsNorm, RopeScaling, Scores, rope_inv_freq};
use crate::model::{Context, Input, Transformer};
use crate::precision::{to_dtype, to_f32};
use crate::site::{Component as C, Site, SiteInfo};
use crate::weights::Loader;

/// Which Gemma.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmaVersion {
    /// Gemma 2 (`model_type` gemma2).
    Two,
    /// Gemma 3's text model (`model_type` gemma3_text).
    Three,
}

/// The numbers that define a Gemma 2 or 3 model.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmaConfig {
    /// Gemma 2 or 3.
    pub version: GemmaVersion,
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
    /// Rotary base θ (of the full-attention layers, for Gemma 3).
    pub rope_theta: f64,
    /// Rotary base of the sliding-window layers (Gemma 3), if it differs.
    pub rope_local_theta: Option<f64>,
    /// Rotary scaling of the full-attention layers, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Attention scores are `q kᵀ · query_pre_attn_scalar^−½`.
    pub query_pre_attn_scalar: f64,
    /// Soft cap of the attention scores (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// Soft cap of the final logits (Gemma 2).
    pub final_softcap: Option<f64>,
    /// Each layer's sliding window (`None`: full attention).
    pub windows: Vec<Option<usize>>,
    /// q/k/v projections carry biases.
    pub attention_bias: bool,
    /// The output head is the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// Added to every stored norm weight: 1 for Hugging Face checkpoints (which store `w` and
    /// scale by `1 + w`), 0 for GGUF files (llama.cpp's converter stores `1 + w`).
    pub norm_offset: f32,
}

impl GemmaConfig {
    /// From a Hugging Face `config.json` (`model_type` gemma2 or gemma3_text), with
    /// transformers' defaults for absent keys (a `null` cap means none).
    pub fn from_hf(c: &HfConfig) -> Result<Self> {
        let version = match c.str_or("model_type", "gemma2")? {
            "gemma3_text" => GemmaVersion::Three,
            _ => GemmaVersion::Two,
        };
        let two = version == GemmaVersion::Two;
        let act = match c.json.get("hidden_activation").filter(|v| !v.is_null()) {
            Some(_) => c.str_or("hidden_activation", "gelu_pytorch_tanh")?,
            None => c.str_or("hidden_act", "gelu_pytorch_tanh")?,
        };
        if act != "gelu_pytorch_tanh" {
            return Err(ModelError::config(
                c.path,
                format!("hidden_activation `{act}` is not supported for Gemma (only gelu_pytorch_tanh)"),
            ));
        }
        let hidden_size = c.usize("hidden_size")?;
        let num_heads = c.usize("num_attention_heads")?;
        let num_kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = c.opt_usize("head_dim")?;
        crate::config::check_heads(c.path, hidden_size, num_heads, num_kv_heads, head_dim.is_some())?;
        let head_dim = head_dim.unwrap_or(hidden_size / num_heads);
        let num_layers = c.usize("num_hidden_layers")?;
        let cap = |key: &str, default: Option<f64>| -> Result<Option<f64>> {
            match c.json.get(key) {
                None => Ok(default),
                Some(v) if v.is_null() => Ok(None),
                Some(_) => c.f64_or(key, 0.0).map(Some),
            }
        };
        let rule = if two { WindowLayers::EveryOther } else { WindowLayers::AllButEveryNth };
        Ok(GemmaConfig {
            version,
            vocab_size: c.usize("vocab_size")?,
            hidden_size,
            intermediate_size: c.usize("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: c.f64_or("rms_norm_eps", 1e-6)?,
            rope_theta: c.f64_or("rope_theta", 10_000.0)?,
            rope_local_theta: if two { None } else { Some(c.f64_or("rope_local_base_freq", 10_000.0)?) },
            rope_scaling: c.rope_scaling()?,
            query_pre_attn_scalar: c.f64_or("query_pre_attn_scalar", 256.0)?,
            attn_softcap: cap("attn_logit_softcapping", two.then_some(50.0))?,
            final_softcap: cap("final_logit_softcapping", two.then_some(30.0))?,
            windows: c.layer_windows(num_layers, rule)?,
            attention_bias: c.bool_or("attention_bias", false)?,
            tie_word_embeddings: c.bool_or("tie_word_embeddings", true)?,
            norm_offset: 1.0,
        })
    }
}

impl GemmaConfig {
    /// From a `gemma2` or `gemma3` GGUF file's metadata, as llama.cpp reads it: attention scaled
    /// by the head width (by `hidden / heads` for Gemma 2 27B, 46 layers), Gemma 2's caps
    /// (`attn_logit_softcapping`, `final_logit_softcapping`), the window on every other layer
    /// (Gemma 2) or on five layers of six (Gemma 3, `attention.sliding_window_pattern` where
    /// written), window layers rotated with base 10 000 (`rope.freq_base_swa` where written).
    pub fn from_gguf(file: &crate::weights::gguf::GgufFile) -> Result<Self> {
        let g = GgufDims::read(file)?;
        let two = g.arch == "gemma2";
        let layers = g.num_layers;
        let windows = match g.sliding_window {
            None => vec![None; layers],
            Some(w) if two => (0..layers).map(|l| (l % 2 == 0).then_some(w)).collect(),
            Some(w) => {
                let key = format!("{}.attention.sliding_window_pattern", g.arch);
                let n = file.metadata.get(&key).and_then(|v| v.as_u64()).unwrap_or(6) as usize;
                (0..layers).map(|l| (n == 0 || !(l + 1).is_multiple_of(n)).then_some(w)).collect()
            }
        };
        let scalar = if two && layers == 46 { (g.hidden_size / g.num_heads) as f64 } else { g.head_dim as f64 };
        Ok(GemmaConfig {
            version: if two { GemmaVersion::Two } else { GemmaVersion::Three },
            vocab_size: g.vocab_size,
            hidden_size: g.hidden_size,
            intermediate_size: g.intermediate_size,
            num_layers: layers,
            num_heads: g.num_heads,
            num_kv_heads: g.num_kv_heads,
            head_dim: g.head_dim,
            rms_norm_eps: g.rms_norm_eps,
            rope_theta: g.rope_theta,
            rope_local_theta: if two { None } else { Some(g.opt_f64(file, "rope.freq_base_swa").unwrap_or(10_000.0)) },
            rope_scaling: match g.opt_f64(file, "rope.scaling.factor") {
                Some(factor) if factor != 1.0 => Some(RopeScaling::Linear { factor }),
                _ => None,
            },
            query_pre_attn_scalar: scalar,
            attn_softcap: if two { g.opt_f64(file, "attn_logit_softcapping") } else { None },
            final_softcap: if two { g.opt_f64(file, "final_logit_softcapping") } else { None },
            windows,
            attention_bias: false,
            tie_word_embeddings: !file.tensors.contains_key("output.weight"),
            norm_offset: 0.0,
        })
    }
}

/// One decoder layer: attention and MLP, each between two norms.
#[derive(Module, Debug)]
pub struct GemmaBlock<B: Backend> {
    input_norm: RmsNorm<B>,
    attn: SelfAttention<B>,
    post_attention_norm: RmsNorm<B>,
    pre_feedforward_norm: RmsNorm<B>,
    gate: Linear<B>,
    up: Linear<B>,
    down: Linear<B>,
    post_feedforward_norm: RmsNorm<B>,
}

/// A Gemma 2 or Gemma 3 causal language model.
#[derive(Module, Debug)]
pub struct Gemma<B: Backend> {
    embed_tokens: Embedding<B>,
    layers: Vec<GemmaBlock<B>>,
    norm: RmsNorm<B>,
    lm_head: Linear<B>,
    #[module(skip)]
    config: GemmaConfig,
    #[module(skip)]
    inv_freq: Vec<f32>,
    #[module(skip)]
    inv_freq_local: Option<Vec<f32>>,
    #[module(skip)]
    tied_head: bool,
}

impl<B: Backend> Gemma<B> {
    /// Loads the weights named as in `Gemma2ForCausalLM` / `Gemma3ForCausalLM`, turning each
    /// norm's stored weight into its scale (`norm_offset` + weight).
    pub fn load(config: GemmaConfig, w: &Loader<B>) -> Result<Self> {
        let c = &config;
        let (d, hd, eps) = (c.hidden_size, c.head_dim, c.rms_norm_eps);
        let norm = |name: String, width| w.rms_norm_offset(&name, width, eps, c.norm_offset);
        let three = c.version == GemmaVersion::Three;
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            let linear = |name: &str, d_in, d_out, bias| w.linear(&format!("{p}.{name}"), d_in, d_out, bias);
            let window = c.windows.get(l).copied().flatten();
            let shape = AttentionShape {
                heads: c.num_heads,
                kv_heads: c.num_kv_heads,
                head_dim: hd,
                qk_norm: if three { QkNorm::PerHead } else { QkNorm::None },
                scores: Scores { scale: Some(c.query_pre_attn_scalar.powf(-0.5)), softcap: c.attn_softcap },
                window,
                local_rotary: window.is_some() && c.rope_local_theta.is_some(),
            };
            let (q_norm, k_norm) = if three {
                (
                    Some(norm(format!("{p}.self_attn.q_norm.weight"), hd)?),
                    Some(norm(format!("{p}.self_attn.k_norm.weight"), hd)?),
                )
            } else {
                (None, None)
            };
            layers.push(GemmaBlock {
                input_norm: norm(format!("{p}.input_layernorm.weight"), d)?,
                attn: SelfAttention::load(w, &format!("{p}.self_attn"), d, c.attention_bias, (q_norm, k_norm), shape)?,
                post_attention_norm: norm(format!("{p}.post_attention_layernorm.weight"), d)?,
                pre_feedforward_norm: norm(format!("{p}.pre_feedforward_layernorm.weight"), d)?,
                gate: linear("mlp.gate_proj", d, c.intermediate_size, false)?,
                up: linear("mlp.up_proj", d, c.intermediate_size, false)?,
                down: linear("mlp.down_proj", c.intermediate_size, d, false)?,
                post_feedforward_norm: norm(format!("{p}.post_feedforward_layernorm.weight"), d)?,
            });
        }
        let embed_tokens = w.embedding("model.embed_tokens.weight", c.vocab_size, d)?;
        let (lm_head, tied_head) = w.causal_lm_head(c.tie_word_embeddings, d, c.vocab_size)?;
        let inv_freq = rope_inv_freq(hd, c.rope_theta, c.rope_scaling.as_ref());
        let inv_freq_local = c.rope_local_theta.map(|theta| rope_inv_freq(hd, theta, None));
        Ok(Gemma {
            embed_tokens,
            layers,
            norm: norm("model.norm.weight".into(), d)?,
            lm_head,
            tied_head,
            config,
            inv_freq,
            inv_freq_local,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &GemmaConfig {
        &self.config
    }

    /// Parameters counted twice by `num_params` (a tied head repeats the embeddings).
    pub fn shared_parameters(&self) -> usize {
        if self.tied_head { self.config.vocab_size * self.config.hidden_size } else { 0 }
    }
}

impl<B: Backend> Transformer<B> for Gemma<B> {
    fn arch(&self) -> &'static str {
        match self.config.version {
            GemmaVersion::Two => "gemma2",
            GemmaVersion::Three => "gemma3",
        }
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
    /// `√hidden · E[id]`, the factor rounded to the model's precision as transformers does.
    fn embed(&self, input: &Input<B>) -> Tensor<B, 3> {
        self.embed_tokens.forward(input.ids.clone()) * (self.config.hidden_size as f64).sqrt()
    }
    fn context(&self, input: &Input<B>) -> Context<B> {
        let (dtype, hd) = (self.dtype(), self.config.head_dim);
        let ctx = Context::new(input, true, Some((&self.inv_freq, hd)), dtype);
        match &self.inv_freq_local {
            Some(local) => ctx.with_local_rotary(input, local, hd, dtype),
            None => ctx,
        }
    }
    /// The attention and MLP outputs hooked are what the residual stream adds: after their
    /// post-norms.
    fn block(&self, layer: usize, x: Tensor<B, 3>, ctx: &Context<B>, hooks: &mut dyn Hooks<B>) -> Tensor<B, 3> {
        let b = &self.layers[layer];

        // Attention: h = x + N₂(Attn(N₁(x)))
        let a_in = hook(hooks, Site::new(layer, C::AttentionInput), b.input_norm.forward(x.clone()));
        let attn = b.post_attention_norm.forward(b.attn.forward(layer, a_in, ctx, hooks));
        let h = x + hook(hooks, Site::new(layer, C::AttentionOutput), attn);

        // MLP: y = h + N₄(W_down(GELU(W_gate m) ⊙ W_up m)), m = N₃(h)
        let mut at = |component, h| hook(hooks, Site::new(layer, component), h);
        let m = at(C::MlpInput, b.pre_feedforward_norm.forward(h.clone()));
        let act = at(C::MlpActivation, gelu_approximate(b.gate.forward(m.clone())) * b.up.forward(m));
        let mlp_out = at(C::MlpOutput, b.post_feedforward_norm.forward(b.down.forward(act)));
        h + mlp_out
    }
    fn final_norm(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.norm.forward(x)
    }
    /// Logits, soft-capped `c · tanh(z / c)` where the model caps them (Gemma 2).
    fn head(&self, hidden: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        let logits = to_f32(self.lm_head.forward(to_dtype(hidden, self.dtype())));
        Some(match self.config.final_softcap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        })
    }
    /// The plain map only where no soft cap follows it.
    fn head_map(&self) -> Option<&Linear<B>> {
        self.config.final_softcap.is_none().then_some(&self.lm_head)
    }
    fn dtype(&self) -> burn::tensor::DType {
        self.embed_tokens.dtype()
    }
}
