//! What every transformer offers: the forward with hooks, and its two halves (run to a site;
//! go on from a site) that let a trainer cache the frozen part of the computation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use burn::tensor::{DType, Int, Tensor, backend::Backend};

use crate::error::{ModelError, Result};
use crate::hooks::{Hooks, NoHooks, hook};
use crate::layers::{Rotary, attention_bias, outside_window, positions_from_mask};
use crate::precision::{to_dtype, to_f32};
use crate::site::{Component, Site, SiteInfo};

/// A padded batch of token ids.
#[derive(Debug, Clone)]
pub struct Input<B: Backend> {
    /// `[batch, seq]` token ids.
    pub ids: Tensor<B, 2, Int>,
    /// `[batch, seq]`, 1 for real tokens, 0 for padding.
    pub mask: Tensor<B, 2, Int>,
    /// `[batch, seq]` segment ids (BERT); zeros when absent.
    pub token_types: Option<Tensor<B, 2, Int>>,
    /// The cache of the earlier positions this input continues (generation with a KV cache):
    /// the tokens here come after the cached ones, and [`forward`] adds their keys and values.
    pub past: Option<KvCache<B>>,
}

impl<B: Backend> Input<B> {
    /// Equal-length rows of ids, no padding.
    pub fn from_ids(rows: &[Vec<u32>], device: &B::Device) -> Self {
        let batch = rows.len();
        let seq = rows.first().map_or(0, Vec::len);
        assert!(rows.iter().all(|r| r.len() == seq), "Input::from_ids needs equal-length rows; use `padded`");
        let flat: Vec<i64> = rows.iter().flatten().map(|&i| i as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_ints(flat.as_slice(), device).reshape([batch, seq]);
        let mask = Tensor::ones([batch, seq], device);
        Input { ids, mask, token_types: None, past: None }
    }

    /// Rows of different lengths, padded with `pad_id` on the right (`left = false`) or left.
    pub fn padded(rows: &[Vec<u32>], pad_id: u32, left: bool, device: &B::Device) -> Self {
        let batch = rows.len();
        let seq = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch * seq);
        let mut mask = Vec::with_capacity(batch * seq);
        for r in rows {
            let pad = seq - r.len();
            let (ids_row, mask_row): (Vec<i64>, Vec<i64>) = if left {
                (
                    std::iter::repeat_n(pad_id as i64, pad).chain(r.iter().map(|&i| i as i64)).collect(),
                    std::iter::repeat_n(0, pad).chain(std::iter::repeat_n(1, r.len())).collect(),
                )
            } else {
                (
                    r.iter().map(|&i| i as i64).chain(std::iter::repeat_n(pad_id as i64, pad)).collect(),
                    std::iter::repeat_n(1, r.len()).chain(std::iter::repeat_n(0, pad)).collect(),
                )
            };
            ids.extend(ids_row);
            mask.extend(mask_row);
        }
        Input {
            ids: Tensor::<B, 1, Int>::from_ints(ids.as_slice(), device).reshape([batch, seq]),
            mask: Tensor::<B, 1, Int>::from_ints(mask.as_slice(), device).reshape([batch, seq]),
            token_types: None,
            past: None,
        }
    }

    /// `[batch, seq]`.
    pub fn dims(&self) -> [usize; 2] {
        self.ids.dims()
    }

    /// This input as the continuation of the positions held in `cache`.
    pub fn continuing(mut self, cache: &KvCache<B>) -> Self {
        self.past = Some(cache.clone());
        self
    }

    /// The mask of every position seen so far: the cached ones, then these.
    fn full_mask(&self) -> Tensor<B, 2, Int> {
        match self.past.as_ref().and_then(KvCache::mask) {
            Some(past) => Tensor::cat(vec![past, self.mask.clone()], 1),
            None => self.mask.clone(),
        }
    }

    /// `[batch, seq]` position of each token among the real tokens of its row, counting the cached
    /// ones: what learned position embeddings and rotary angles are indexed by.
    pub fn positions(&self) -> Tensor<B, 2, Int> {
        let seq = self.dims()[1];
        let all = positions_from_mask(self.full_mask());
        let total = all.dims()[1];
        all.narrow(1, total - seq, seq)
    }
}

/// The keys and values of the positions a model has already read, per layer, so that generation
/// feeds each new token alone instead of the whole sequence again. A handle: clones share one
/// cache. Use it with [`forward`] only (not with [`run_to`] / [`resume`], which would add the
/// same positions twice), except a frozen one (below), which they read and never add to.
///
/// A frozen cache ([`KvCache::from_parts`]) reads the cached positions without adding to them:
/// the keys and values of a prefix that many continuations share (the positions before an
/// intervention, which training recomputes after at every step).
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    state: Arc<Mutex<KvState<B>>>,
    frozen: bool,
}

#[derive(Debug)]
struct KvState<B: Backend> {
    /// Per layer, keys and values `[batch, kv_heads, cached, head_dim]` as attention reads them.
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// `[batch, cached]` mask of the cached positions.
    mask: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> Default for KvCache<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> KvCache<B> {
    /// An empty cache.
    pub fn new() -> Self {
        KvCache { state: Arc::new(Mutex::new(KvState { layers: Vec::new(), mask: None })), frozen: false }
    }

    fn lock(&self) -> MutexGuard<'_, KvState<B>> {
        // A panic elsewhere cannot leave the state half-written: every write is one assignment.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.lock().mask.as_ref().map_or(0, |m| m.dims()[1])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn mask(&self) -> Option<Tensor<B, 2, Int>> {
        self.lock().mask.clone()
    }

    /// A frozen cache of given keys and values — inputs continuing it attend to them and leave
    /// them as they were, any number of times: per layer
    /// `[batch, kv_heads, cached, head_dim]` as attention reads them (`None` for layers never
    /// read), and `mask` (`[batch, cached]`) of the cached positions.
    pub fn from_parts(layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>, mask: Tensor<B, 2, Int>) -> Self {
        KvCache { state: Arc::new(Mutex::new(KvState { layers, mask: Some(mask) })), frozen: true }
    }

    /// The keys and values cached at `layer`, if any.
    pub fn layer(&self, layer: usize) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        self.lock().layers.get(layer).cloned().flatten()
    }

    /// Appends the new positions' keys and values at `layer` and returns all of them (a frozen
    /// cache returns them without keeping the new ones).
    fn extend(
        &self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        full_mask: &Tensor<B, 2, Int>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        if self.frozen {
            let state = self.lock();
            return match state.layers.get(layer) {
                Some(Some((pk, pv))) => (Tensor::cat(vec![pk.clone(), k], 2), Tensor::cat(vec![pv.clone(), v], 2)),
                _ => (k, v),
            };
        }
        let mut state = self.lock();
        if state.layers.len() <= layer {
            state.layers.resize_with(layer + 1, || None);
        }
        let (k, v) = match state.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        state.layers[layer] = Some((k.clone(), v.clone()));
        state.mask = Some(full_mask.clone());
        (k, v)
    }
}

/// Per-batch tensors every block needs: the attention bias, the rotary angles, and the KV cache.
#[derive(Debug, Clone)]
pub struct Context<B: Backend> {
    /// `[batch, 1, seq, cached + seq]` additive attention bias.
    pub bias: Tensor<B, 4>,
    /// Rotary angles for the batch's positions, if the model uses them.
    pub rotary: Option<Rotary<B>>,
    /// Rotary angles of the sliding-window layers, where they have a base of their own (Gemma 3).
    pub rotary_local: Option<Rotary<B>>,
    /// The cache being extended, with the mask of every position (cached and new).
    cache: Option<(KvCache<B>, Tensor<B, 2, Int>)>,
    /// `bias` repeated to the shape attention adds it to (per head count, group count and
    /// sliding window), built by the first block that asks.
    bias_by_heads: std::cell::RefCell<Vec<(BiasKey, Tensor<B, 5>)>>,
}

impl<B: Backend> Context<B> {
    /// Bias from the input's mask (and its cache's), and rotary angles when `rotary` (the
    /// inverse frequencies and the head width) is given.
    /// `dtype` is the model's precision (see [`crate::precision`]).
    pub fn new(input: &Input<B>, causal: bool, rotary: Option<(&[f32], usize)>, dtype: DType) -> Self {
        let rotary = rotary.map(|(f, head_dim)| Rotary::new(input.positions(), f, head_dim, dtype));
        let full = input.full_mask();
        let bias = attention_bias(full.clone(), input.dims()[1], causal, dtype);
        Context {
            bias,
            rotary,
            rotary_local: None,
            cache: input.past.clone().map(|c| (c, full)),
            bias_by_heads: Default::default(),
        }
    }

    /// This context with rotary angles of their own for sliding-window layers (Gemma 3's
    /// `rope_local_base_freq`): `inv_freq` and the head width, as for [`Context::new`].
    pub fn with_local_rotary(mut self, input: &Input<B>, inv_freq: &[f32], head_dim: usize, dtype: DType) -> Self {
        self.rotary_local = Some(Rotary::new(input.positions(), inv_freq, head_dim, dtype));
        self
    }

    /// The bias as [`crate::layers::attend`] adds it, `[batch, kv_heads, groups, seq, total]`:
    /// repeated once per batch rather than broadcast in every block (a broadcast add walks the
    /// scores element by element on the CPU backend).
    pub fn bias_for(&self, kv_heads: usize, groups: usize) -> Tensor<B, 5> {
        self.bias_for_window(kv_heads, groups, None)
    }

    /// [`Context::bias_for`] of a layer that attends only to the last `window` positions
    /// (sliding-window attention, [`crate::layers::outside_window`]); `None` is full attention.
    pub fn bias_for_window(&self, kv_heads: usize, groups: usize, window: Option<usize>) -> Tensor<B, 5> {
        let key = BiasKey { kv_heads, groups, window };
        let mut cached = self.bias_by_heads.borrow_mut();
        if let Some((_, bias)) = cached.iter().find(|(k, _)| *k == key) {
            return bias.clone();
        }
        let bias = match window {
            None => self.bias.clone(),
            Some(window) => {
                let [batch, one, queries, total] = self.bias.dims();
                let blocked = outside_window::<B>(queries, total, window, &self.bias.device())
                    .reshape([1, 1, queries, total])
                    .expand([batch, one, queries, total]);
                let score = crate::precision::blocked_score(self.bias.dtype());
                self.bias.clone().mask_fill(blocked, score)
            }
        };
        let bias = bias.unsqueeze_dim::<5>(1).repeat_dim(1, kv_heads).repeat_dim(2, groups);
        cached.push((key, bias.clone()));
        bias
    }

    /// The keys and values attention reads at `layer`: the new ones `[batch, heads, seq, d]`,
    /// after the cached ones when the input continues a cache (which then keeps them all).
    pub fn keys_values(&self, layer: usize, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        match &self.cache {
            Some((cache, full_mask)) => cache.extend(layer, k, v, full_mask),
            None => (k, v),
        }
    }
}

/// What a repeated attention bias was built for (see [`Context::bias_for_window`]).
#[derive(Debug, Clone, Copy, PartialEq)]
struct BiasKey {
    kv_heads: usize,
    groups: usize,
    window: Option<usize>,
}

/// One transformer architecture, written as embeddings → blocks → final norm → head.
/// The driver functions below ([`forward`], [`run_to`], [`resume`]) are shared by all.
pub trait Transformer<B: Backend> {
    /// Architecture name (`llama`, `gpt2`, …), for messages.
    fn arch(&self) -> &'static str;
    /// Whether each position sees only itself and earlier ones (decoders), so that tokens after
    /// the last position of interest can be dropped without changing anything before it.
    fn causal(&self) -> bool;
    /// Number of blocks.
    fn n_layers(&self) -> usize;
    /// Residual stream width.
    fn width(&self) -> usize;
    /// The most positions an input may have, for models with a table of learned position
    /// embeddings (GPT-2, BERT); `None` where positions are computed (rotary).
    fn max_positions(&self) -> Option<usize> {
        None
    }
    /// Every site inside block `layer` except `block_input`/`block_output`, with its shape facts.
    fn block_sites(&self, layer: usize) -> Vec<SiteInfo>;
    /// The embeddings of a batch (token, plus position / token type where the model has them).
    fn embed(&self, input: &Input<B>) -> Tensor<B, 3>;
    /// The per-batch context (attention bias, rotary angles).
    fn context(&self, input: &Input<B>) -> Context<B>;
    /// Block `layer` on residual stream `x`, calling `hooks` at its inner sites.
    fn block(&self, layer: usize, x: Tensor<B, 3>, ctx: &Context<B>, hooks: &mut dyn Hooks<B>) -> Tensor<B, 3>;
    /// The final norm applied to the last block's output (identity for post-LN encoders).
    fn final_norm(&self, x: Tensor<B, 3>) -> Tensor<B, 3>;
    /// Next-token logits (f32) from final hidden states, for language models; `None` for encoders.
    fn head(&self, hidden: Tensor<B, 3>) -> Option<Tensor<B, 3>>;
    /// The head's linear map, where [`Transformer::head`] is exactly that map applied to the
    /// hidden state in the model's precision (no bias term of its own, no soft-capping): a loss
    /// at the head can then skip the logits ([`crate::head_loss`]). `None` otherwise.
    fn head_map(&self) -> Option<&crate::layers::Linear<B>> {
        None
    }
    /// The precision of the weights and of the activations inside (f32, f16, bf16). Whatever it
    /// is, hooks, checkpoints, [`forward`] and [`Transformer::head`] hand out f32.
    fn dtype(&self) -> DType;

    /// Every site of the model, embeddings first, then each layer's in a fixed order.
    fn sites(&self) -> Vec<SiteInfo> {
        let w = self.width();
        let mut all = vec![SiteInfo { site: Site::new(0, Component::Embeddings), width: w, heads: 1 }];
        for l in 0..self.n_layers() {
            all.push(SiteInfo { site: Site::new(l, Component::BlockInput), width: w, heads: 1 });
            all.extend(self.block_sites(l));
            all.push(SiteInfo { site: Site::new(l, Component::BlockOutput), width: w, heads: 1 });
        }
        all
    }

    /// Shape facts of `site`, or an error listing the valid sites.
    fn site_info(&self, site: Site) -> Result<SiteInfo> {
        let all = self.sites();
        all.iter().find(|i| i.site == site).copied().ok_or_else(|| {
            let components: Vec<String> = {
                let mut c: Vec<&str> = all.iter().map(|i| i.site.component.name()).collect();
                c.sort();
                c.dedup();
                c.into_iter().map(str::to_string).collect()
            };
            ModelError::UnknownSite {
                site: site.to_string(),
                arch: self.arch().to_string(),
                valid: format!(
                    "layers 0 to {} with components {}",
                    self.n_layers().saturating_sub(1),
                    components.join(", ")
                ),
            }
        })
    }
}

/// The full forward: final hidden states `[batch, seq, width]` (after the final norm).
/// Logits come from [`Transformer::head`], on all positions or only on those scored.
pub fn forward<B: Backend, M: Transformer<B> + ?Sized>(
    model: &M,
    input: &Input<B>,
    hooks: &mut dyn Hooks<B>,
) -> Tensor<B, 3> {
    let ctx = model.context(input);
    let x = hook(hooks, Site::new(0, Component::Embeddings), model.embed(input));
    let x = run_blocks(model, x, &ctx, 0, true, hooks);
    to_f32(model.final_norm(x))
}

/// Blocks `from..` on `x`, with `block_input` hooks (if `hook_first_input`) and `block_output` hooks.
fn run_blocks<B: Backend, M: Transformer<B> + ?Sized>(
    model: &M,
    mut x: Tensor<B, 3>,
    ctx: &Context<B>,
    from: usize,
    hook_first_input: bool,
    hooks: &mut dyn Hooks<B>,
) -> Tensor<B, 3> {
    for l in from..model.n_layers() {
        if l != from || hook_first_input {
            x = hook(hooks, Site::new(l, Component::BlockInput), x);
        }
        x = model.block(l, x, ctx, hooks);
        x = hook(hooks, Site::new(l, Component::BlockOutput), x);
    }
    x
}

/// The state of a forward stopped at a site: the activation there and what is needed to go on.
#[derive(Debug, Clone)]
pub struct Checkpoint<B: Backend> {
    /// Where the run stopped.
    pub site: Site,
    /// The activation at the site, `[batch, seq, width]`.
    pub activation: Tensor<B, 3>,
    /// For sites inside a block: the residual stream entering that block (from which the block's
    /// other activations — keys and values of every position included — are recomputed).
    pub block_input: Option<Tensor<B, 3>>,
    /// The batch (its mask and positions are needed downstream).
    pub input: Input<B>,
}

/// Runs `input` up to `site` and returns the activation there with what is needed to go on.
pub fn run_to<B: Backend, M: Transformer<B> + ?Sized>(
    model: &M,
    input: &Input<B>,
    site: Site,
) -> Result<Checkpoint<B>> {
    model.site_info(site)?;
    let ctx = model.context(input);
    let mut x = model.embed(input);
    let done = |activation, block_input| Checkpoint {
        site,
        activation: to_f32(activation),
        block_input,
        input: input.clone(),
    };
    if site.component == Component::Embeddings {
        return Ok(done(x, None));
    }
    for l in 0..site.layer {
        x = model.block(l, x, &ctx, &mut NoHooks);
    }
    Ok(match site.component {
        Component::BlockInput => done(x, None),
        Component::BlockOutput => done(model.block(site.layer, x, &ctx, &mut NoHooks), None),
        _ => {
            let mut grab = crate::hooks::Capture::new([site]);
            model.block(site.layer, x.clone(), &ctx, &mut grab);
            let act = grab.get(site).expect("every listed block site is visited by its block");
            done(act, Some(x))
        }
    })
}

/// Runs `input` through blocks `0..=through` and keeps the `block_output` of each of `layers`
/// (f32, as every activation leaving the model), with the last block's output as computed (to go
/// on with, e.g. [`Transformer::final_norm`]): what sweeps need of one frozen forward for many
/// layers at once.
pub fn block_outputs<B: Backend, M: Transformer<B> + ?Sized>(
    model: &M,
    input: &Input<B>,
    layers: &[usize],
    through: usize,
) -> (BTreeMap<usize, Tensor<B, 3>>, Tensor<B, 3>) {
    let ctx = model.context(input);
    let mut x = model.embed(input);
    let mut kept = BTreeMap::new();
    for l in 0..=through {
        x = model.block(l, x, &ctx, &mut NoHooks);
        if layers.contains(&l) {
            kept.insert(l, to_f32(x.clone()));
        }
    }
    (kept, x)
}

/// Goes on from a checkpoint with `activation` (possibly changed) in place of the one there,
/// calling `hooks` at every later site. Returns the final hidden states, as [`forward`] does.
pub fn resume<B: Backend, M: Transformer<B> + ?Sized>(
    model: &M,
    checkpoint: &Checkpoint<B>,
    activation: Tensor<B, 3>,
    hooks: &mut dyn Hooks<B>,
) -> Result<Tensor<B, 3>> {
    let site = checkpoint.site;
    let expected = checkpoint.activation.dims();
    if activation.dims() != expected {
        return Err(ModelError::ActivationShape {
            site: site.to_string(),
            found: activation.dims().to_vec(),
            expected: expected.to_vec(),
        });
    }
    let ctx = model.context(&checkpoint.input);
    let activation = to_dtype(activation, model.dtype());
    let x = match site.next_block() {
        // A block input is the first block's input itself: not hooked twice.
        Some(from) => run_blocks(model, activation, &ctx, from, site.component != Component::BlockInput, hooks),
        None => {
            let block_input = checkpoint.block_input.clone().expect("run_to keeps the block input for inner sites");
            let mut overlay = Overlay { site, activation: Some(activation), rest: hooks };
            let x = model.block(site.layer, block_input, &ctx, &mut overlay);
            let x = hook(overlay.rest, Site::new(site.layer, Component::BlockOutput), x);
            run_blocks(model, x, &ctx, site.layer + 1, true, overlay.rest)
        }
    };
    Ok(to_f32(model.final_norm(x)))
}

/// The keys and values of every position of a stopped run at every block after its site (a
/// site between blocks): the checkpoint's activation run through those blocks into a cache.
/// The checkpoint already holds what comes before, so nothing before the site is recomputed.
pub fn keys_values_after<B: Backend, M: Transformer<B> + ?Sized>(model: &M, checkpoint: &Checkpoint<B>) -> KvCache<B> {
    let cache = KvCache::new();
    let input = Input { past: Some(cache.clone()), ..checkpoint.input.clone() };
    let site = checkpoint.site;
    let ctx = model.context(&input);
    run_blocks(
        model,
        to_dtype(checkpoint.activation.clone(), model.dtype()),
        &ctx,
        site.next_block().unwrap_or(0),
        site.component != Component::BlockInput,
        &mut NoHooks,
    );
    cache
}

/// Puts a given activation at one site and defers every other site to the caller's hooks.
struct Overlay<'a, B: Backend> {
    site: Site,
    activation: Option<Tensor<B, 3>>,
    rest: &'a mut dyn Hooks<B>,
}

impl<B: Backend> Hooks<B> for Overlay<'_, B> {
    fn wants(&self, site: Site) -> bool {
        site == self.site || self.rest.wants(site)
    }
    fn at(&mut self, site: Site, h: Tensor<B, 3>) -> Tensor<B, 3> {
        if site == self.site { self.activation.take().unwrap_or(h) } else { self.rest.at(site, h) }
    }
}
