//! GPT-2 (Radford et al. 2019): learned positions, pre-LayerNorm blocks,
//! `h = x + Attn(LN₁(x))`, `y = h + W_proj GELU_tanh(W_fc LN₂(h))`, head tied to the embeddings.
//! Hugging Face stores the projections as `Conv1D`, i.e. already `[in, out]`.

use burn::module::Module;
use burn::tensor::{Tensor, activation::gelu_approximate, backend::Backend};

use super::common::{hook_attention_values, hook_qkv, standard_block_sites};
use crate::config::HfConfig;
use crate::error::Result;
use crate::hooks::{Hooks, hook};
use crate::layers::{Embedding, LayerNorm, Linear, attend, split_heads};
use crate::model::{Context, Input, Transformer};
use crate::precision::{to_dtype, to_f32};
use crate::site::{Component as C, Site, SiteInfo};
use crate::weights::Loader;

/// The numbers that define a GPT-2 model.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    /// Number of tokens.
    pub vocab_size: usize,
    /// Number of learned positions.
    pub n_positions: usize,
    /// Residual stream width.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// MLP hidden width.
    pub n_inner: usize,
    /// LayerNorm ε.
    pub layer_norm_epsilon: f64,
}

impl Gpt2Config {
    /// From a Hugging Face `config.json` (`model_type` gpt2).
    pub fn from_hf(c: &HfConfig) -> Result<Self> {
        let n_embd = c.usize("n_embd")?;
        let act = c.str_or("activation_function", "gelu_new")?;
        if act != "gelu_new" {
            return Err(crate::error::ModelError::config(
                c.path,
                format!("activation_function `{act}` is not supported for gpt2 (only gelu_new)"),
            ));
        }
        let n_head = c.usize("n_head")?;
        crate::config::check_heads(c.path, n_embd, n_head, n_head, false)?;
        Ok(Gpt2Config {
            vocab_size: c.usize("vocab_size")?,
            n_positions: c.usize("n_positions")?,
            n_embd,
            n_layer: c.usize("n_layer")?,
            n_head,
            n_inner: c.opt_usize("n_inner")?.unwrap_or(4 * n_embd),
            layer_norm_epsilon: c.f64_or("layer_norm_epsilon", 1e-5)?,
        })
    }
}

/// One GPT-2 block.
#[derive(Module, Debug)]
pub struct Gpt2Block<B: Backend> {
    ln_1: LayerNorm<B>,
    c_attn: Linear<B>,
    attn_proj: Linear<B>,
    ln_2: LayerNorm<B>,
    c_fc: Linear<B>,
    mlp_proj: Linear<B>,
}

/// A GPT-2 causal language model.
#[derive(Module, Debug)]
pub struct Gpt2<B: Backend> {
    wte: Embedding<B>,
    wpe: Embedding<B>,
    blocks: Vec<Gpt2Block<B>>,
    ln_f: LayerNorm<B>,
    head: Linear<B>,
    #[module(skip)]
    config: Gpt2Config,
}

impl<B: Backend> Gpt2<B> {
    /// Parameters counted twice by `num_params`: the head is always the token embeddings.
    pub fn shared_parameters(&self) -> usize {
        self.config.vocab_size * self.config.n_embd
    }

    /// Loads `GPT2LMHeadModel` / `GPT2Model` weights (with or without the `transformer.` prefix).
    pub fn load(config: Gpt2Config, w: &Loader<B>) -> Result<Self> {
        let c = &config;
        let pre = if w.has("transformer.wte.weight") { "transformer." } else { "" };
        let d = c.n_embd;
        let ln = |name: &str| w.layer_norm(&format!("{pre}{name}"), d, c.layer_norm_epsilon);
        let mut blocks = Vec::with_capacity(c.n_layer);
        for l in 0..c.n_layer {
            let p = format!("{pre}h.{l}");
            blocks.push(Gpt2Block {
                ln_1: ln(&format!("h.{l}.ln_1"))?,
                c_attn: w.conv1d(&format!("{p}.attn.c_attn"), d, 3 * d)?,
                attn_proj: w.conv1d(&format!("{p}.attn.c_proj"), d, d)?,
                ln_2: ln(&format!("h.{l}.ln_2"))?,
                c_fc: w.conv1d(&format!("{p}.mlp.c_fc"), d, c.n_inner)?,
                mlp_proj: w.conv1d(&format!("{p}.mlp.c_proj"), c.n_inner, d)?,
            });
        }
        Ok(Gpt2 {
            wte: w.embedding(&format!("{pre}wte.weight"), c.vocab_size, d)?,
            wpe: w.embedding(&format!("{pre}wpe.weight"), c.n_positions, d)?,
            blocks,
            ln_f: ln("ln_f")?,
            head: w.head(&format!("{pre}wte"), d, c.vocab_size)?,
            config,
        })
    }
}

impl<B: Backend> Transformer<B> for Gpt2<B> {
    fn arch(&self) -> &'static str {
        "gpt2"
    }
    fn causal(&self) -> bool {
        true
    }
    fn n_layers(&self) -> usize {
        self.config.n_layer
    }
    fn width(&self) -> usize {
        self.config.n_embd
    }
    fn max_positions(&self) -> Option<usize> {
        Some(self.config.n_positions)
    }
    fn block_sites(&self, layer: usize) -> Vec<SiteInfo> {
        let c = &self.config;
        standard_block_sites(layer, c.n_embd, (c.n_head, c.n_head, c.n_embd / c.n_head), c.n_inner)
    }
    fn embed(&self, input: &Input<B>) -> Tensor<B, 3> {
        self.wte.forward(input.ids.clone()) + self.wpe.forward(input.positions())
    }
    fn context(&self, input: &Input<B>) -> Context<B> {
        Context::new(input, true, None, self.dtype())
    }
    fn block(&self, layer: usize, x: Tensor<B, 3>, ctx: &Context<B>, hooks: &mut dyn Hooks<B>) -> Tensor<B, 3> {
        let b = &self.blocks[layer];
        let (d, heads) = (self.config.n_embd, self.config.n_head);

        // Attention: h = x + W_proj · softmax(q kᵀ/√d + mask) v, with [q k v] = W_attn LN₁(x)
        let a_in = hook(hooks, Site::new(layer, C::AttentionInput), b.ln_1.forward(x.clone()));
        let qkv = b.c_attn.forward(a_in);
        let (q, k, v) =
            hook_qkv(hooks, layer, qkv.clone().narrow(2, 0, d), qkv.clone().narrow(2, d, d), qkv.narrow(2, 2 * d, d));
        let (k, v) =
            ctx.keys_values(layer, split_heads(k, heads).swap_dims(1, 2), split_heads(v, heads).swap_dims(1, 2));
        let values = hook_attention_values(hooks, layer, attend(split_heads(q, heads), k, v, ctx.bias_for(heads, 1)));
        let attn_out = hook(hooks, Site::new(layer, C::AttentionOutput), b.attn_proj.forward(values));
        let h = x + attn_out;

        // MLP: y = h + W_proj GELU_tanh(W_fc LN₂(h))
        let mut at = |component, t| hook(hooks, Site::new(layer, component), t);
        let m = at(C::MlpInput, b.ln_2.forward(h.clone()));
        let act = at(C::MlpActivation, gelu_approximate(b.c_fc.forward(m)));
        let mlp_out = at(C::MlpOutput, b.mlp_proj.forward(act));
        h + mlp_out
    }
    fn final_norm(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.ln_f.forward(x)
    }
    fn head(&self, hidden: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        Some(to_f32(self.head.forward(to_dtype(hidden, self.dtype()))))
    }
    fn head_map(&self) -> Option<&Linear<B>> {
        Some(&self.head)
    }
    fn dtype(&self) -> burn::tensor::DType {
        self.wte.dtype()
    }
}
