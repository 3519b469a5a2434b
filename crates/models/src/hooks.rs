//! Hooks: how code outside a model reads or replaces the activation at a site during a forward.
//!
//! A model calls [`Hooks::at`] with the full `[batch, seq, width]` activation at every site for
//! which [`Hooks::wants`] is true, and continues with whatever the hook returns. Per-example
//! positions (`[batch, k]` index tensors) are read with [`gather_positions`] and written with
//! [`scatter_positions`]: one tensor op each, no per-example loops.

use std::collections::BTreeMap;

use burn::tensor::{IndexingUpdateOp, Int, Tensor, backend::Backend};

use crate::precision::{to_dtype, to_f32};
use crate::site::Site;

/// Reads or replaces activations at sites during a forward pass.
pub trait Hooks<B: Backend> {
    /// Whether this hook wants to see `site` (models skip the call, and any copy, otherwise).
    fn wants(&self, site: Site) -> bool;
    /// Called with the activation at `site` (`[batch, seq, width]`); returns what flows on.
    fn at(&mut self, site: Site, h: Tensor<B, 3>) -> Tensor<B, 3>;
}

/// No hooks: the plain forward.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl<B: Backend> Hooks<B> for NoHooks {
    fn wants(&self, _site: Site) -> bool {
        false
    }
    fn at(&mut self, _site: Site, h: Tensor<B, 3>) -> Tensor<B, 3> {
        h
    }
}

/// Applies a hook only if it wants the site; what every model calls at each site. Hooks see f32
/// whatever the model's precision, and what they return goes on in the model's.
pub(crate) fn hook<B: Backend>(hooks: &mut dyn Hooks<B>, site: Site, h: Tensor<B, 3>) -> Tensor<B, 3> {
    if !hooks.wants(site) {
        return h;
    }
    let dtype = h.dtype();
    to_dtype(hooks.at(site, to_f32(h)), dtype)
}

/// The vectors at per-example positions: `h[b, positions[b, j], :]`, shape `[batch, k, width]`.
pub fn gather_positions<B: Backend>(h: Tensor<B, 3>, positions: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    let [batch, k] = positions.dims();
    let width = h.dims()[2];
    let index = positions.unsqueeze_dim::<3>(2).expand([batch, k, width]);
    h.gather(1, index)
}

/// `h` with `h[b, positions[b, j], :]` replaced by `values[b, j, :]` exactly (positions distinct
/// per row). Gradients flow to `values` at the chosen positions and to `h` everywhere else.
pub fn scatter_positions<B: Backend>(
    h: Tensor<B, 3>,
    positions: Tensor<B, 2, Int>,
    values: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [batch, seq, width] = h.dims();
    let k = positions.dims()[1];
    let index = positions.clone().unsqueeze_dim::<3>(2).expand([batch, k, width]);
    let placed = h.zeros_like().scatter(1, index, values, IndexingUpdateOp::Add);
    let chosen = Tensor::<B, 2, Int>::zeros([batch, seq], &positions.device())
        .scatter(1, positions.clone(), positions.ones_like(), IndexingUpdateOp::Add)
        .greater_elem(0)
        .reshape([batch, seq, 1])
        .expand([batch, seq, width]);
    h.mask_where(chosen, placed)
}

/// Records the full activation at each of its sites (it changes nothing).
#[derive(Debug, Clone)]
pub struct Capture<B: Backend> {
    sites: Vec<Site>,
    /// What was seen, by site (the last call wins if a site is visited twice).
    pub seen: BTreeMap<Site, Tensor<B, 3>>,
}

impl<B: Backend> Capture<B> {
    /// A capture of the given sites.
    pub fn new(sites: impl IntoIterator<Item = Site>) -> Self {
        Capture { sites: sites.into_iter().collect(), seen: BTreeMap::new() }
    }
    /// The activation seen at `site`, if it was visited.
    pub fn get(&self, site: Site) -> Option<Tensor<B, 3>> {
        self.seen.get(&site).cloned()
    }
}

impl<B: Backend> Hooks<B> for Capture<B> {
    fn wants(&self, site: Site) -> bool {
        self.sites.contains(&site)
    }
    fn at(&mut self, site: Site, h: Tensor<B, 3>) -> Tensor<B, 3> {
        self.seen.insert(site, h.clone());
        h
    }
}

/// Replaces the vectors at chosen positions of chosen sites with given values (pyvene's vanilla
/// interchange when the values were gathered from a source run).
#[derive(Debug, Clone)]
pub struct Replace<B: Backend> {
    edits: Vec<(Site, Tensor<B, 2, Int>, Tensor<B, 3>)>,
}

impl<B: Backend> Replace<B> {
    /// No edits yet.
    pub fn new() -> Self {
        Replace { edits: Vec::new() }
    }
    /// Adds an edit: at `site`, `h[b, positions[b, j]] = values[b, j]`.
    pub fn at(mut self, site: Site, positions: Tensor<B, 2, Int>, values: Tensor<B, 3>) -> Self {
        self.edits.push((site, positions, values));
        self
    }
}

impl<B: Backend> Default for Replace<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> Hooks<B> for Replace<B> {
    fn wants(&self, site: Site) -> bool {
        self.edits.iter().any(|(s, _, _)| *s == site)
    }
    fn at(&mut self, site: Site, mut h: Tensor<B, 3>) -> Tensor<B, 3> {
        for (s, positions, values) in &self.edits {
            if *s == site {
                h = scatter_positions(h, positions.clone(), values.clone());
            }
        }
        h
    }
}

/// A hook from a closure, for the sites listed.
pub struct FnHook<F> {
    sites: Vec<Site>,
    f: F,
}

impl<F> FnHook<F> {
    /// Calls `f(site, h)` at each of `sites`.
    pub fn new(sites: impl IntoIterator<Item = Site>, f: F) -> Self {
        FnHook { sites: sites.into_iter().collect(), f }
    }
}

impl<B: Backend, F: FnMut(Site, Tensor<B, 3>) -> Tensor<B, 3>> Hooks<B> for FnHook<F> {
    fn wants(&self, site: Site) -> bool {
        self.sites.contains(&site)
    }
    fn at(&mut self, site: Site, h: Tensor<B, 3>) -> Tensor<B, 3> {
        (self.f)(site, h)
    }
}
