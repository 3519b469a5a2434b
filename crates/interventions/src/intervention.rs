//! One type for every intervention family, applied to the vectors at selected positions.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use crate::das::{BoundlessDas, DasFull, DasLowRank, SigmoidMask};
use crate::error::{InterventionError, Result};
use crate::fixed::{Fixed, FixedOp};
use crate::probe::LinearProbe;
use crate::reft::{ReftFamily, ReftIntervention};
use crate::sae::JumpReluSae;
use crate::steering::Steering;

/// Any intervention. Each acts on `[batch, k, width]` vectors (the activations at `k` selected
/// positions of each example, restricted to a subspace when one is given at placement).
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
    /// JumpReLU SAE interchange.
    Sae(JumpReluSae<B>),
}

impl<B: Backend> Intervention<B> {
    /// The family's stable name (used in exports).
    pub fn kind(&self) -> &'static str {
        match self {
            Intervention::Fixed(f) => match f.op {
                FixedOp::Interchange => "interchange",
                FixedOp::Addition => "addition",
                FixedOp::Subtraction => "subtraction",
                FixedOp::Zero => "zero",
                FixedOp::Mean => "mean",
                FixedOp::Noise => "noise",
                FixedOp::Collect => "collect",
            },
            Intervention::DasFull(_) => "das_full",
            Intervention::DasLowRank(_) => "das_low_rank",
            Intervention::Boundless(_) => "das_boundless",
            Intervention::SigmoidMask(m) => {
                if m.rotation.is_some() { "sigmoid_mask_rotated" } else { "sigmoid_mask" }
            }
            Intervention::Reft(r) => match r.family {
                ReftFamily::LoReft => "loreft",
                ReftFamily::NoReft => "noreft",
                ReftFamily::ConsReft => "consreft",
                ReftFamily::LoBiReft => "lobireft",
                ReftFamily::DiReft => "direft",
                ReftFamily::NoDiReft => "nodireft",
            },
            Intervention::Probe(_) => "linear_probe",
            Intervention::Steering(_) => "steering",
            Intervention::Sae(_) => "jumprelu_sae",
        }
    }

    /// The width of the vectors it acts on, for kinds with parameters of that width.
    pub fn width(&self) -> Option<usize> {
        match self {
            Intervention::Fixed(f) => f.vector.as_ref().map(|v| v.val().dims()[0]),
            Intervention::DasFull(i) => Some(i.rotation.dims()[1]),
            Intervention::DasLowRank(i) => Some(i.rotation.dims()[1]),
            Intervention::Boundless(i) => Some(i.rotation.dims()[1]),
            Intervention::SigmoidMask(i) => Some(i.mask.val().dims()[0]),
            Intervention::Reft(r) => Some(match (&r.rotation, &r.learned_source, &r.proj_layer) {
                (Some(rot), _, _) => rot.dims()[1],
                (None, Some(p), _) | (None, None, Some(p)) => p.weight.val().dims()[1],
                (None, None, None) => return None,
            }),
            Intervention::Probe(p) => Some(p.weight.val().dims()[1]),
            Intervention::Steering(s) => Some(s.vector.val().dims()[0]),
            Intervention::Sae(s) => Some(s.w_enc.val().dims()[0]),
        }
    }

    /// The same intervention with its rotation replaced by a random fixed one (the usual control
    /// for DAS and ReFT), or `None` for kinds without a rotation.
    pub fn with_random_rotation(&self, rng: &mut ferrovene_models::rng::Rng) -> Option<Self> {
        use crate::orthogonal::Orthogonal;
        let mut random = |r: &Orthogonal<B>| {
            let [k, d] = r.dims();
            let device = r.matrix().device();
            Orthogonal::fixed(Orthogonal::<B>::random(k, d, rng, &device).matrix())
        };
        let mut out = self.clone();
        match &mut out {
            Intervention::DasFull(i) => i.rotation = random(&i.rotation),
            Intervention::DasLowRank(i) => i.rotation = random(&i.rotation),
            Intervention::Boundless(i) => i.rotation = random(&i.rotation),
            Intervention::SigmoidMask(i) => i.rotation = Some(random(i.rotation.as_ref()?)),
            Intervention::Reft(i) => i.rotation = Some(random(i.rotation.as_ref()?)),
            _ => return None,
        }
        Some(out)
    }

    /// Its learned rotation, for kinds that have one (to log its orthogonality error).
    pub fn rotation(&self) -> Option<&crate::orthogonal::Orthogonal<B>> {
        match self {
            Intervention::DasFull(i) => Some(&i.rotation),
            Intervention::DasLowRank(i) => Some(&i.rotation),
            Intervention::Boundless(i) => Some(&i.rotation),
            Intervention::SigmoidMask(i) => i.rotation.as_ref(),
            Intervention::Reft(i) => i.rotation.as_ref(),
            _ => None,
        }
    }

    /// Whether it reads a source activation.
    pub fn needs_source(&self) -> bool {
        match self {
            Intervention::Fixed(f) => f.needs_source(),
            Intervention::DasFull(_)
            | Intervention::DasLowRank(_)
            | Intervention::Boundless(_)
            | Intervention::SigmoidMask(_)
            | Intervention::Sae(_) => true,
            Intervention::Reft(_) | Intervention::Probe(_) | Intervention::Steering(_) => false,
        }
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
            Intervention::Sae(i) => i.forward(base, src()),
        })
    }
}
