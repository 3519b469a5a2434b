//! Site hooking shared by the architectures' attention code.

use burn::tensor::{Tensor, backend::Backend};

use crate::hooks::{Hooks, hook};
use crate::site::{Component as C, Site, SiteInfo};

/// Hooks the query, key and value projections (whole, then per head) and returns what flows on.
pub(crate) fn hook_qkv<B: Backend>(
    hooks: &mut dyn Hooks<B>,
    layer: usize,
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
    let mut at = |c, h| hook(hooks, Site::new(layer, c), h);
    let q = at(C::QueryOutput, q);
    let q = at(C::HeadQueryOutput, q);
    let k = at(C::KeyOutput, k);
    let k = at(C::HeadKeyOutput, k);
    let v = at(C::ValueOutput, v);
    let v = at(C::HeadValueOutput, v);
    (q, k, v)
}

/// Hooks the attention's per-position values (input of the output projection), whole then per head.
pub(crate) fn hook_attention_values<B: Backend>(
    hooks: &mut dyn Hooks<B>,
    layer: usize,
    values: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let values = hook(hooks, Site::new(layer, C::AttentionValueOutput), values);
    hook(hooks, Site::new(layer, C::HeadAttentionValueOutput), values)
}

/// The sites of a standard block, in forward order: widths from the model's dimensions.
pub(crate) fn standard_block_sites(
    layer: usize,
    width: usize,
    (heads, kv_heads, head_dim): (usize, usize, usize),
    mlp_width: usize,
) -> Vec<SiteInfo> {
    let (q, kv) = (heads * head_dim, kv_heads * head_dim);
    let s = |component, width, heads| SiteInfo { site: Site::new(layer, component), width, heads };
    vec![
        s(C::AttentionInput, width, 1),
        s(C::QueryOutput, q, 1),
        s(C::HeadQueryOutput, q, heads),
        s(C::KeyOutput, kv, 1),
        s(C::HeadKeyOutput, kv, kv_heads),
        s(C::ValueOutput, kv, 1),
        s(C::HeadValueOutput, kv, kv_heads),
        s(C::AttentionValueOutput, q, 1),
        s(C::HeadAttentionValueOutput, q, heads),
        s(C::AttentionOutput, width, 1),
        s(C::MlpInput, width, 1),
        s(C::MlpActivation, mlp_width, 1),
        s(C::MlpOutput, width, 1),
    ]
}
