//! BERT (Devlin et al. 2019) and its distillations (MiniLM): a post-LayerNorm encoder,
//! `h = LN(x + Attn(x))`, `y = LN(h + W₂ GELU(W₁ h))`, over token + position + token-type
//! embeddings; sentence vectors by mean pooling over the attention mask.

use burn::module::Module;
use burn::tensor::{Int, Tensor, activation::gelu, backend::Backend};

use super::common::{hook_attention_values, hook_qkv, standard_block_sites};
use crate::config::HfConfig;
use crate::error::{ModelError, Result};
use crate::hooks::{Hooks, hook};
use crate::layers::{Embedding, LayerNorm, Linear, attend, split_heads};
use crate::model::{Context, Input, Transformer};
use crate::site::{Component as C, Site, SiteInfo};
use crate::weights::Loader;

/// The numbers that define a BERT encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
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
    /// Number of learned positions.
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    pub type_vocab_size: usize,
    /// LayerNorm ε.
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// From a Hugging Face `config.json` (`model_type` bert).
    pub fn from_hf(c: &HfConfig) -> Result<Self> {
        let act = c.str_or("hidden_act", "gelu")?;
        if act != "gelu" {
            return Err(ModelError::config(
                c.path,
                format!("hidden_act `{act}` is not supported for bert (only gelu)"),
            ));
        }
        let pos = c.str_or("position_embedding_type", "absolute")?;
        if pos != "absolute" {
            return Err(ModelError::config(
                c.path,
                format!("position_embedding_type `{pos}` is not supported (only absolute)"),
            ));
        }
        let (hidden_size, num_heads) = (c.usize("hidden_size")?, c.usize("num_attention_heads")?);
        crate::config::check_heads(c.path, hidden_size, num_heads, num_heads, false)?;
        Ok(BertConfig {
            vocab_size: c.usize("vocab_size")?,
            hidden_size,
            num_layers: c.usize("num_hidden_layers")?,
            num_heads,
            intermediate_size: c.usize("intermediate_size")?,
            max_position_embeddings: c.usize("max_position_embeddings")?,
            type_vocab_size: c.opt_usize("type_vocab_size")?.unwrap_or(2),
            layer_norm_eps: c.f64_or("layer_norm_eps", 1e-12)?,
        })
    }
}

/// One encoder layer.
#[derive(Module, Debug)]
pub struct BertBlock<B: Backend> {
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    attn_out: Linear<B>,
    attn_norm: LayerNorm<B>,
    intermediate: Linear<B>,
    output: Linear<B>,
    output_norm: LayerNorm<B>,
}

/// A BERT encoder (no task head): its output is the last hidden state.
#[derive(Module, Debug)]
pub struct Bert<B: Backend> {
    word: Embedding<B>,
    position: Embedding<B>,
    token_type: Embedding<B>,
    embed_norm: LayerNorm<B>,
    layers: Vec<BertBlock<B>>,
    #[module(skip)]
    config: BertConfig,
}

impl<B: Backend> Bert<B> {
    /// Loads `BertModel` weights (with or without the `bert.` prefix).
    pub fn load(config: BertConfig, w: &Loader<B>) -> Result<Self> {
        let c = &config;
        let pre = if w.has("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let (d, eps) = (c.hidden_size, c.layer_norm_eps);
        let ln = |p: &str| w.layer_norm(&format!("{pre}{p}"), d, eps);
        let lin = |p: &str, i, o| w.linear(&format!("{pre}{p}"), i, o, true);
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(BertBlock {
                query: lin(&format!("{p}.attention.self.query"), d, d)?,
                key: lin(&format!("{p}.attention.self.key"), d, d)?,
                value: lin(&format!("{p}.attention.self.value"), d, d)?,
                attn_out: lin(&format!("{p}.attention.output.dense"), d, d)?,
                attn_norm: ln(&format!("{p}.attention.output.LayerNorm"))?,
                intermediate: lin(&format!("{p}.intermediate.dense"), d, c.intermediate_size)?,
                output: lin(&format!("{p}.output.dense"), c.intermediate_size, d)?,
                output_norm: ln(&format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Bert {
            word: w.embedding(&format!("{pre}embeddings.word_embeddings.weight"), c.vocab_size, d)?,
            position: w.embedding(
                &format!("{pre}embeddings.position_embeddings.weight"),
                c.max_position_embeddings,
                d,
            )?,
            token_type: w.embedding(&format!("{pre}embeddings.token_type_embeddings.weight"), c.type_vocab_size, d)?,
            embed_norm: ln("embeddings.LayerNorm")?,
            layers,
            config,
        })
    }
}

impl<B: Backend> Transformer<B> for Bert<B> {
    fn arch(&self) -> &'static str {
        "bert"
    }
    fn causal(&self) -> bool {
        false
    }
    fn n_layers(&self) -> usize {
        self.config.num_layers
    }
    fn width(&self) -> usize {
        self.config.hidden_size
    }
    fn max_positions(&self) -> Option<usize> {
        Some(self.config.max_position_embeddings)
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
        let types = input.token_types.clone().unwrap_or_else(|| input.ids.zeros_like());
        let sum = self.word.forward(input.ids.clone())
            + self.position.forward(input.positions())
            + self.token_type.forward(types);
        self.embed_norm.forward(sum)
    }
    fn context(&self, input: &Input<B>) -> Context<B> {
        Context::new(input, false, None, self.dtype())
    }
    fn block(&self, layer: usize, x: Tensor<B, 3>, ctx: &Context<B>, hooks: &mut dyn Hooks<B>) -> Tensor<B, 3> {
        let b = &self.layers[layer];
        let heads = self.config.num_heads;

        // h = LN(x + W_o · softmax(q kᵀ/√d + padding mask) v)
        let a_in = hook(hooks, Site::new(layer, C::AttentionInput), x);
        let (q, k, v) = hook_qkv(
            hooks,
            layer,
            b.query.forward(a_in.clone()),
            b.key.forward(a_in.clone()),
            b.value.forward(a_in.clone()),
        );
        let (k, v) =
            ctx.keys_values(layer, split_heads(k, heads).swap_dims(1, 2), split_heads(v, heads).swap_dims(1, 2));
        let values = hook_attention_values(hooks, layer, attend(split_heads(q, heads), k, v, ctx.bias_for(heads, 1)));
        let attn_out = hook(hooks, Site::new(layer, C::AttentionOutput), b.attn_out.forward(values));

        // y = LN(h + W₂ GELU(W₁ h))
        let mut at = |component, t| hook(hooks, Site::new(layer, component), t);
        let h = at(C::MlpInput, b.attn_norm.forward(a_in + attn_out));
        let act = at(C::MlpActivation, gelu(b.intermediate.forward(h.clone())));
        let mlp_out = at(C::MlpOutput, b.output.forward(act));
        b.output_norm.forward(h + mlp_out)
    }
    fn final_norm(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        x
    }
    fn head(&self, _hidden: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        None
    }
    fn dtype(&self) -> burn::tensor::DType {
        self.word.dtype()
    }
}

/// Sentence vectors: the mean of `hidden` over real tokens (`mask` = 1), L2-normalised.
pub fn mean_pool_normalized<B: Backend>(hidden: Tensor<B, 3>, mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let [batch, seq, _] = hidden.dims();
    let m = mask.float().reshape([batch, seq, 1]);
    let summed = (hidden * m.clone()).sum_dim(1).squeeze_dim::<2>(1);
    let counts = m.sum_dim(1).squeeze_dim::<2>(1).clamp_min(1e-9);
    let mean = summed / counts;
    let norm = mean.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    mean / norm
}
