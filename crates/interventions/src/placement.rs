//! Interventions placed at model sites, applied in one batched forward through the model's hooks:
//! per-example positions (`[batch, k]`), optional sources, optional subspaces; several at once,
//! in parallel (each reads the unmodified activation) or in series (each sees the previous one's
//! effect). Placements that hold the same [`Intervention`] share its parameters (pyvene's link key).

use burn::tensor::{Int, Tensor, backend::Backend};
use ferrovene_models::{Hooks, Site, SiteInfo, gather_positions, scatter_positions};

use crate::error::{InterventionError, Result};
use crate::intervention::Intervention;
use crate::subspace::{apply_on_dims, replace_dims};

/// How several interventions at one site combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Composition {
    /// Each reads the activation as it arrived at the site (pyvene's default).
    #[default]
    Parallel,
    /// Each reads the activation as the previous one left it.
    Series,
}

/// One intervention at one site.
pub struct Placement<'a, B: Backend> {
    /// Where.
    pub site: Site,
    /// What (shared when several placements hold the same one).
    pub intervention: &'a Intervention<B>,
    /// `[batch, k]` positions in the base.
    pub positions: Tensor<B, 2, Int>,
    /// `[batch, k, width]` source vectors for those positions, for source-reading kinds.
    pub source: Option<Tensor<B, 3>>,
    /// The subspace it acts on (all dims when empty).
    pub dims: Vec<usize>,
}

impl<'a, B: Backend> Placement<'a, B> {
    /// Checks the placement against the site it goes to.
    pub fn new(
        info: SiteInfo,
        intervention: &'a Intervention<B>,
        positions: Tensor<B, 2, Int>,
        source: Option<Tensor<B, 3>>,
        dims: Vec<usize>,
    ) -> Result<Self> {
        let bad = |parameter: &str, reason: String| InterventionError::BadParameter {
            kind: intervention.kind().into(),
            parameter: parameter.into(),
            reason: format!("{reason} (site {})", info.site),
        };
        if intervention.needs_source() && source.is_none() {
            return Err(InterventionError::MissingSource { kind: intervention.kind().into() });
        }
        if let Some(&d) = dims.iter().find(|&&d| d >= info.width) {
            return Err(bad("subspace", format!("dim {d} is outside the site's width {}", info.width)));
        }
        let width = if dims.is_empty() { info.width } else { dims.len() };
        if let Some(w) = intervention.width()
            && w != width
        {
            return Err(bad("width", format!("the intervention acts on {w} dims but the placement gives it {width}")));
        }
        if let Some(s) = &source {
            let [b, k, w] = s.dims();
            if [b, k] != positions.dims() || w != info.width {
                return Err(bad(
                    "source",
                    format!(
                        "source vectors have shape {:?}, expected [{:?}, {}]",
                        s.dims(),
                        positions.dims(),
                        info.width
                    ),
                ));
            }
        }
        Ok(Placement { site: info.site, intervention, positions, source, dims })
    }
}

/// Hooks that apply placed interventions during a forward. Vectors read by `collect` and probe
/// placements are kept in [`Intervene::collected`], by placement index.
pub struct Intervene<'a, B: Backend> {
    placements: Vec<Placement<'a, B>>,
    composition: Composition,
    /// `(placement index, [batch, k, width] vectors read there)`.
    pub collected: Vec<(usize, Tensor<B, 3>)>,
}

impl<'a, B: Backend> Intervene<'a, B> {
    /// Placements applied in the given composition.
    pub fn new(placements: Vec<Placement<'a, B>>, composition: Composition) -> Self {
        Intervene { placements, composition, collected: Vec::new() }
    }

    /// The activation at `site` after this set's interventions there (usable directly on a
    /// checkpoint's activation, to go on with [`ferrovene_models::resume`]).
    pub fn apply_at(&mut self, site: Site, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let original = h.clone();
        let mut h = h;
        for (i, p) in self.placements.iter().enumerate().filter(|(_, p)| p.site == site) {
            let read = match self.composition {
                Composition::Parallel => original.clone(),
                Composition::Series => h.clone(),
            };
            let base = gather_positions(read, p.positions.clone());
            if p.intervention.reads_only() {
                self.collected.push((i, base.clone()));
            }
            let width = base.dims()[2];
            let out = if p.dims.is_empty() {
                p.intervention.apply(base, p.source.clone()).expect("checked by Placement::new")
            } else {
                // Only the placement's own dims are written, onto what earlier placements left.
                let computed = apply_on_dims(p.intervention, base, p.source.clone(), &p.dims, width)
                    .expect("checked by Placement::new");
                replace_dims(gather_positions(h.clone(), p.positions.clone()), computed, &p.dims)
            };
            h = scatter_positions(h, p.positions.clone(), out);
        }
        h
    }
}

impl<B: Backend> Hooks<B> for Intervene<'_, B> {
    fn wants(&self, site: Site) -> bool {
        self.placements.iter().any(|p| p.site == site)
    }
    fn at(&mut self, site: Site, h: Tensor<B, 3>) -> Tensor<B, 3> {
        self.apply_at(site, h)
    }
}

/// pyvene's `SkipIntervention`: a component's output replaced by its input at chosen positions: the
/// activation read at `input` is written at `output` later in the same forward (e.g.
/// `block_input` → `block_output` skips a whole block; `mlp_input` → `mlp_output`).
pub struct Skip<B: Backend> {
    input: Site,
    output: Site,
    positions: Tensor<B, 2, Int>,
    seen: Option<Tensor<B, 3>>,
}

impl<B: Backend> Skip<B> {
    /// Skips from `input` to `output` (same width, `input` earlier in the forward) at `positions`.
    pub fn new(input: SiteInfo, output: SiteInfo, positions: Tensor<B, 2, Int>) -> Result<Self> {
        if input.width != output.width || input.site.layer != output.site.layer || input.site == output.site {
            return Err(InterventionError::BadParameter {
                kind: "skip".into(),
                parameter: "sites".into(),
                reason: format!(
                    "skip needs an input and a later output site of one layer with the same width ({} is {} wide, {} is {})",
                    input.site, input.width, output.site, output.width
                ),
            });
        }
        Ok(Skip { input: input.site, output: output.site, positions, seen: None })
    }
}

impl<B: Backend> Hooks<B> for Skip<B> {
    fn wants(&self, site: Site) -> bool {
        site == self.input || site == self.output
    }
    fn at(&mut self, site: Site, h: Tensor<B, 3>) -> Tensor<B, 3> {
        if site == self.input {
            self.seen = Some(gather_positions(h.clone(), self.positions.clone()));
            h
        } else {
            match self.seen.take() {
                Some(v) => scatter_positions(h, self.positions.clone(), v),
                None => h,
            }
        }
    }
}
