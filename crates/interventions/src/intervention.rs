//! One type for every intervention family, applied to the vectors at selected positions. Each
//! family's own file implements [`Family`]; this type delegates to it.
//!
//! Adding a family: its file with the module and its `Family` impl, a variant below, and its line
//! in `each_family!`, [`Intervention::kinds`], [`Intervention::read`] and [`Intervention::apply`].

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};

use crate::das::{BoundlessDas, DasFull, DasLowRank, SigmoidMask};
use crate::error::{InterventionError, Result};
use crate::family::{Family, Parts, Written};
use crate::fixed::Fixed;
use crate::orthogonal::Orthogonal;
use crate::probe::LinearProbe;
use crate::reft::ReftIntervention;
use crate::sae::Sae;
use crate::steering::Steering;

/// Any intervention. Each acts on `[batch, k, width]` vectors (the activations at `k` selected
/// positions of each example, restricted to a subspace when one is given at placement).
// A few interventions per run, built once: boxing the large variants would cost burn's `Module`
// derive its plain field access for no memory anyone would notice.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Intervention<B: Backend> {
    /// Parameter-free operations.
    Fixed(Fixed<B>),
    /// Full-rank DAS.
    DasFull(DasFull<B>),
    /// Low-rank DAS.
    DasLowRank(DasLowRank<B>),
    /// Boundless DAS.
    Boundless(BoundlessDas<B>),
    /// Sigmoid mask (neuron or rotated basis).
    SigmoidMask(SigmoidMask<B>),
    /// The ReFT family.
    Reft(ReftIntervention<B>),
    /// Linear probe (reads, changes nothing).
    Probe(LinearProbe<B>),
    /// Steering vector.
    Steering(Steering<B>),
    /// Sparse-autoencoder interchange or clamping (JumpReLU, ReLU, TopK).
    Sae(Sae<B>),
}

/// Runs `$body` with `$f` bound to the [`Family`] value inside an intervention: the one place that
/// lists every family (beside the enum above and [`Intervention::read`]).
macro_rules! each_family {
    ($iv:expr, $f:ident => $body:expr) => {
        match $iv {
            Intervention::Fixed($f) => $body,
            Intervention::DasFull($f) => $body,
            Intervention::DasLowRank($f) => $body,
            Intervention::Boundless($f) => $body,
            Intervention::SigmoidMask($f) => $body,
            Intervention::Reft($f) => $body,
            Intervention::Probe($f) => $body,
            Intervention::Steering($f) => $body,
            Intervention::Sae($f) => $body,
        }
    };
}

impl<B: Backend> Intervention<B> {
    /// The family's stable name (used in exports).
    pub fn kind(&self) -> &'static str {
        each_family!(self, f => f.kind())
    }

    /// Every name an export's `kind` may have.
    pub fn kinds() -> Vec<&'static str> {
        [
            Fixed::<B>::kinds(),
            DasFull::<B>::kinds(),
            DasLowRank::<B>::kinds(),
            BoundlessDas::<B>::kinds(),
            SigmoidMask::<B>::kinds(),
            ReftIntervention::<B>::kinds(),
            LinearProbe::<B>::kinds(),
            Steering::<B>::kinds(),
            Sae::<B>::kinds(),
        ]
        .concat()
    }

    /// Reads the intervention an export names by `kind`.
    pub fn read(kind: &str, parts: &Parts<'_, B>) -> Result<Self> {
        fn ours<B: Backend, F: Family<B>>(kind: &str) -> bool {
            F::kinds().contains(&kind)
        }
        Ok(if ours::<B, Fixed<B>>(kind) {
            Intervention::Fixed(Fixed::read(kind, parts)?)
        } else if ours::<B, DasFull<B>>(kind) {
            Intervention::DasFull(DasFull::read(kind, parts)?)
        } else if ours::<B, DasLowRank<B>>(kind) {
            Intervention::DasLowRank(DasLowRank::read(kind, parts)?)
        } else if ours::<B, BoundlessDas<B>>(kind) {
            Intervention::Boundless(BoundlessDas::read(kind, parts)?)
        } else if ours::<B, SigmoidMask<B>>(kind) {
            Intervention::SigmoidMask(SigmoidMask::read(kind, parts)?)
        } else if ours::<B, ReftIntervention<B>>(kind) {
            Intervention::Reft(ReftIntervention::read(kind, parts)?)
        } else if ours::<B, LinearProbe<B>>(kind) {
            Intervention::Probe(LinearProbe::read(kind, parts)?)
        } else if ours::<B, Steering<B>>(kind) {
            Intervention::Steering(Steering::read(kind, parts)?)
        } else if ours::<B, Sae<B>>(kind) {
            Intervention::Sae(Sae::read(kind, parts)?)
        } else {
            return Err(
                parts.corrupt(format!("unknown intervention kind `{kind}` (known: {})", Self::kinds().join(", ")))
            );
        })
    }

    /// Its tensors under their stable names, and its kind-specific scalars (for exports).
    pub fn written(&self) -> Written {
        let mut out = Written::default();
        each_family!(self, f => f.write(&mut out));
        out
    }

    /// The width of the vectors it acts on, for kinds with parameters of that width.
    pub fn width(&self) -> Option<usize> {
        each_family!(self, f => f.width())
    }

    /// The same intervention with its rotation replaced by a random fixed one (the usual control
    /// for DAS and ReFT), or `None` for kinds without a rotation.
    pub fn with_random_rotation(&self, rng: &mut ferrovene_models::rng::Rng) -> Option<Self> {
        let mut out = self.clone();
        let r = each_family!(&mut out, f => f.rotation_mut())?;
        let [k, d] = r.dims();
        let device = r.matrix().device();
        *r = Orthogonal::fixed(Orthogonal::<B>::random(k, d, rng, &device).matrix());
        Some(out)
    }

    /// Its learned rotation, for kinds that have one (to log its orthogonality error).
    pub fn rotation(&self) -> Option<&Orthogonal<B>> {
        each_family!(self, f => f.rotation())
    }

    /// How many of its values training updates: every parameter except a rotation's fixed part
    /// (torch's `base`, a `Fixed` matrix), which burn still counts in `num_params`. As pyvene and
    /// pyreft count them (torch's `base` is a buffer there).
    pub fn trainable_params(&self) -> usize {
        self.num_params() - self.rotation().map_or(0, Orthogonal::frozen_params)
    }

    /// Whether it reads a source activation.
    pub fn needs_source(&self) -> bool {
        each_family!(self, f => f.needs_source())
    }

    /// Whether it only reads the activations (collect, probes): what it sees is kept, and the
    /// activations go on unchanged.
    pub fn reads_only(&self) -> bool {
        each_family!(self, f => f.reads_only())
    }

    /// Sets the temperature τ of the kinds that have one (Boundless DAS, sigmoid masks), as
    /// training anneals it; the others have none and are left as they are.
    pub fn set_temperature(&mut self, tau: f64) {
        each_family!(self, f => f.set_temperature(tau))
    }

    /// The result at the selected positions (`[batch, k, width]`).
    pub fn apply(&self, base: Tensor<B, 3>, source: Option<Tensor<B, 3>>) -> Result<Tensor<B, 3>> {
        if self.needs_source() && source.is_none() {
            return Err(InterventionError::MissingSource { kind: self.kind().to_string() });
        }
        let src = || source.clone().expect("checked above");
        Ok(match self {
            Intervention::Fixed(f) => f.forward(base, source),
            Intervention::DasFull(i) => i.forward(base, src()),
            Intervention::DasLowRank(i) => i.forward(base, src()),
            Intervention::Boundless(i) => i.forward(base, src()),
            Intervention::SigmoidMask(i) => i.forward(base, src()),
            Intervention::Reft(i) => i.forward(base),
            Intervention::Probe(_) => base,
            Intervention::Steering(i) => i.forward(base),
            Intervention::Sae(i) => i.forward(base, source)?,
        })
    }
}
