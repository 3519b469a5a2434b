//! Interventions at several sites and positions at once, trained jointly and exported as one:
//! pyreft's LoReFT at layers 2, 10, 18 and 26, at the first and last prompt token, is one
//! [`InterventionSet`] of eight members (or fewer, when they [`Share`] parameters).
//!
//! A set is its members (the parameter sets, a burn module) and its [`Slot`]s: each slot puts one
//! member at one site and at one of the `k` intervened positions of every example (or at all of
//! them). Slots that name the same member share its parameters, so its gradient is the sum of
//! what each slot contributes (autodiff adds the paths).

use burn::module::Module;
use burn::tensor::{Int, Tensor, backend::Backend};
use ferrovene_models::{Site, SiteInfo};
use serde::{Deserialize, Serialize};

use crate::error::{InterventionError, Result};
use crate::intervention::Intervention;
use crate::placement::Placement;

/// Which placements share one parameter set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Share {
    /// One parameter set per site and position (the default).
    #[default]
    None,
    /// One per site, used at every position (pyreft's `share_weights = True`).
    Positions,
    /// One for every site and position.
    All,
}

impl Share {
    /// The recipe word for it.
    pub fn name(self) -> &'static str {
        match self {
            Share::None => "none",
            Share::Positions => "positions",
            Share::All => "all",
        }
    }
}

/// One placement of a set: a member at a site, at one of the intervened positions or all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Where.
    pub site: Site,
    /// Which of the `k` intervened positions of each example (0-based, in the order the position
    /// rule gives them); `None`: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// The member it applies (an index into [`InterventionSet::members`]).
    pub member: usize,
}

impl Slot {
    /// Its name in exports and reports: `2.block_output` (all positions) or `2.block_output#1`.
    pub fn name(&self) -> String {
        match self.position {
            Some(p) => format!("{}#{p}", self.site),
            None => self.site.to_string(),
        }
    }
}

/// Where each member of a set goes: the slots, and each member's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Every placement, sites in the order given, positions in order within a site.
    pub slots: Vec<Slot>,
    /// Each member's name (its tensors' prefix in exports): the name of its first slot, or `all`
    /// when it is shared by every slot of several sites.
    pub members: Vec<String>,
}

impl Layout {
    /// The layout of `sites` (in order, no repeats) at `k` positions with `share`. With one
    /// position, `none` and `positions` are the same layout.
    pub fn new(sites: &[Site], k: usize, share: Share) -> Result<Self> {
        let bad = |reason: String| InterventionError::BadParameter {
            kind: "intervention set".into(),
            parameter: "sites".into(),
            reason,
        };
        if sites.is_empty() {
            return Err(bad("no site given".into()));
        }
        if let Some((i, s)) = sites.iter().enumerate().find(|(i, s)| sites[..*i].contains(s)) {
            return Err(bad(format!("site {s} is listed twice (at {i}); list each site once")));
        }
        let per_position = share == Share::None && k > 1;
        let mut slots = Vec::new();
        for (i, &site) in sites.iter().enumerate() {
            if per_position {
                slots.extend((0..k).map(|p| Slot { site, position: Some(p), member: i * k + p }));
            } else {
                slots.push(Slot { site, position: None, member: if share == Share::All { 0 } else { i } });
            }
        }
        let members = if share == Share::All && sites.len() > 1 {
            vec!["all".to_string()]
        } else {
            let mut names: Vec<String> = Vec::new();
            for s in &slots {
                if s.member == names.len() {
                    names.push(s.name());
                }
            }
            names
        };
        Ok(Layout { slots, members })
    }

    /// One member at one site, at every position: what a single-site run trains.
    pub fn single(site: Site) -> Self {
        Layout { slots: vec![Slot { site, position: None, member: 0 }], members: vec![site.to_string()] }
    }

    /// The distinct sites, in slot order.
    pub fn sites(&self) -> Vec<Site> {
        let mut out: Vec<Site> = Vec::new();
        for s in &self.slots {
            if !out.contains(&s.site) {
                out.push(s.site);
            }
        }
        out
    }

    /// The most positions a slot names (1 + its largest index), 0 when every slot takes all.
    pub fn positions_needed(&self) -> usize {
        self.slots.iter().filter_map(|s| s.position).map(|p| p + 1).max().unwrap_or(0)
    }

    /// Whether it is one member at one or several sites at every position: what export format 2
    /// writes (its `placement.sites`).
    pub fn is_plain(&self) -> bool {
        self.members.len() == 1 && self.slots.iter().all(|s| s.position.is_none() && s.member == 0)
    }
}

/// Interventions placed at several sites and positions, trained and exported as one.
#[derive(Module, Debug)]
pub struct InterventionSet<B: Backend> {
    /// The parameter sets.
    pub members: Vec<Intervention<B>>,
    /// Where each goes.
    #[module(skip)]
    pub layout: Layout,
}

impl<B: Backend> InterventionSet<B> {
    /// `members` placed by `layout` (one member per name the layout gives).
    pub fn new(members: Vec<Intervention<B>>, layout: Layout) -> Result<Self> {
        if members.len() != layout.members.len() {
            return Err(InterventionError::BadParameter {
                kind: "intervention set".into(),
                parameter: "members".into(),
                reason: format!("{} interventions for a layout of {} members", members.len(), layout.members.len()),
            });
        }
        if let Some(s) = layout.slots.iter().find(|s| s.member >= members.len()) {
            return Err(InterventionError::BadParameter {
                kind: "intervention set".into(),
                parameter: "slots".into(),
                reason: format!("slot {} names member {} of {}", s.name(), s.member, members.len()),
            });
        }
        Ok(InterventionSet { members, layout })
    }

    /// Fresh members for `layout`, drawn in member order by `draw(site)`, where `site` is the
    /// site of the member's first slot (its width decides the member's); drawing from one
    /// generator in this order makes a set's start a function of its seed alone.
    pub fn init<E: From<InterventionError>>(
        layout: Layout,
        mut draw: impl FnMut(Site) -> std::result::Result<Intervention<B>, E>,
    ) -> std::result::Result<Self, E> {
        let mut members = Vec::new();
        for m in 0..layout.members.len() {
            let slot = layout.slots.iter().find(|s| s.member == m).ok_or_else(|| InterventionError::BadParameter {
                kind: "intervention set".into(),
                parameter: "slots".into(),
                reason: format!("member {m} ({}) has no slot", layout.members[m]),
            })?;
            members.push(draw(slot.site)?);
        }
        Ok(InterventionSet::new(members, layout)?)
    }

    /// One intervention at one site, at every position.
    pub fn single(iv: Intervention<B>, site: Site) -> Self {
        InterventionSet { members: vec![iv], layout: Layout::single(site) }
    }

    /// The first member (the only one of a single-site set).
    pub fn first(&self) -> &Intervention<B> {
        &self.members[0]
    }

    /// The distinct sites, in slot order.
    pub fn sites(&self) -> Vec<Site> {
        self.layout.sites()
    }

    /// The same set with every rotation replaced by a random fixed one (the control for DAS and
    /// ReFT), members drawn in order; `None` when a member has no rotation.
    pub fn with_random_rotation(&self, rng: &mut ferrovene_models::rng::Rng) -> Option<Self> {
        let members = self.members.iter().map(|m| m.with_random_rotation(rng)).collect::<Option<Vec<_>>>()?;
        Some(InterventionSet { members, layout: self.layout.clone() })
    }
}

/// What places interventions for one batch: a lone [`Intervention`] at the batch's own site, or
/// an [`InterventionSet`] at its slots. The objectives and generation take either.
pub trait Placed<B: Backend> {
    /// The placements for a batch whose own site is `site` (where a lone intervention goes), with
    /// `positions` `[batch, k]`, the `sources` at each site that has them (`[batch, k, width]`)
    /// and the subspace `dims` (all when empty); `info` gives each site's shape.
    fn placements<'a>(
        &'a self,
        site: Site,
        info: &dyn Fn(Site) -> Result<SiteInfo>,
        positions: &Tensor<B, 2, Int>,
        sources: &[(Site, Tensor<B, 3>)],
        dims: &[usize],
    ) -> Result<Vec<Placement<'a, B>>>;

    /// Every parameter set it holds (for penalties on them, e.g. Boundless DAS's boundary).
    fn members(&self) -> Vec<&Intervention<B>>;

    /// Whether any member reads a source activation.
    fn needs_source(&self) -> bool {
        self.members().iter().any(|m| m.needs_source())
    }

    /// The kind of its members when they share one, else `mixed`.
    fn kind(&self) -> &'static str {
        let members = self.members();
        let k = members.first().map_or("empty", |m| m.kind());
        if members.iter().all(|m| m.kind() == k) { k } else { "mixed" }
    }

    /// Whether some member acts at one chosen position of each example rather than at all of
    /// them (`share = "none"` with several positions): such a set cannot act at every generated
    /// token.
    fn per_position(&self) -> bool {
        false
    }
}

impl<B: Backend> Placed<B> for Intervention<B> {
    fn placements<'a>(
        &'a self,
        site: Site,
        info: &dyn Fn(Site) -> Result<SiteInfo>,
        positions: &Tensor<B, 2, Int>,
        sources: &[(Site, Tensor<B, 3>)],
        dims: &[usize],
    ) -> Result<Vec<Placement<'a, B>>> {
        let source = sources.iter().find(|(s, _)| *s == site).map(|(_, t)| t.clone());
        Ok(vec![Placement::new(info(site)?, self, positions.clone(), source, dims.to_vec())?])
    }

    fn members(&self) -> Vec<&Intervention<B>> {
        vec![self]
    }
}

impl<B: Backend> Placed<B> for InterventionSet<B> {
    fn placements<'a>(
        &'a self,
        _site: Site,
        info: &dyn Fn(Site) -> Result<SiteInfo>,
        positions: &Tensor<B, 2, Int>,
        sources: &[(Site, Tensor<B, 3>)],
        dims: &[usize],
    ) -> Result<Vec<Placement<'a, B>>> {
        let k = positions.dims()[1];
        let needed = self.layout.positions_needed();
        if needed > 0 && k != needed {
            return Err(InterventionError::BadParameter {
                kind: self.kind().into(),
                parameter: "positions".into(),
                reason: format!(
                    "this set has separate parameters for each of {needed} intervened positions per example (share = \"none\"), but the example gives {k}; give exactly {needed}"
                ),
            });
        }
        self.layout
            .slots
            .iter()
            .map(|slot| {
                let source = sources.iter().find(|(s, _)| *s == slot.site).map(|(_, t)| t.clone());
                let (at, source) = match slot.position {
                    None => (positions.clone(), source),
                    Some(p) if p < k => (positions.clone().narrow(1, p, 1), source.map(|s| s.narrow(1, p, 1))),
                    Some(p) => {
                        return Err(InterventionError::BadParameter {
                            kind: self.members[slot.member].kind().into(),
                            parameter: "positions".into(),
                            reason: format!(
                                "placement {} acts at intervened position {p}, but the example gives {k}",
                                slot.name()
                            ),
                        });
                    }
                };
                Placement::new(info(slot.site)?, &self.members[slot.member], at, source, dims.to_vec())
            })
            .collect()
    }

    fn members(&self) -> Vec<&Intervention<B>> {
        self.members.iter().collect()
    }

    fn per_position(&self) -> bool {
        self.layout.positions_needed() > 0
    }
}

/// The site a batch's frozen run stops at, before every site of `sites` in the forward: the
/// earliest site when it lies between blocks (the embeddings, a block's input or output) and no
/// other site is in an earlier layer; else the input of the earliest layer, so that every
/// placement inside that block is applied by the block's own hooks. One site is its own.
pub fn checkpoint_site(sites: &[Site]) -> Option<Site> {
    use ferrovene_models::Component;
    let order = |s: &Site| {
        let rank = match s.component {
            Component::Embeddings => 0,
            Component::BlockInput => 1,
            Component::BlockOutput => 3,
            _ => 2,
        };
        (if s.component == Component::Embeddings { 0 } else { s.layer }, rank)
    };
    if let [one] = sites {
        return Some(*one);
    }
    let first = sites.iter().min_by_key(|s| order(s))?;
    Some(match first.next_block() {
        Some(_) => *first,
        None => Site::new(first.layer, Component::BlockInput),
    })
}
