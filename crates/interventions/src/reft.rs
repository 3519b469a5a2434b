//! Representation finetuning (Wu et al. 2024, pyreft): sourceless edits of a hidden vector in a
//! low-rank subspace. `R` (`k × d`) has orthonormal rows; `W`, `W1`, `W2` (`k × d`) do not.

use burn::module::{Module, Param};
use burn::nn::Dropout;
use burn::tensor::{Tensor, backend::Backend};

use crate::activation::Activation;
use crate::error::Result;
use crate::family::{Family, Parts, Written, name_of, named};
use crate::linalg::{row, times, times_t};
use crate::orthogonal::Orthogonal;
use ferrovene_models::rng::Rng;

/// `x Wᵀ + c`: pyreft's `learned_source` (a `Linear(d, k)`).
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    /// `[k, d]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[k]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Projection<B> {
    /// `x Wᵀ + c`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        times_t(x, self.weight.val()) + row(self.bias.val())
    }
}

/// The six ReFT families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReftFamily {
    /// LoReFT: `b + (act(b Wᵀ + c) − b Rᵀ) R`.
    LoReft,
    /// NoReFT: `b + (act(b W1ᵀ + c1) − (b W2ᵀ + c2)) W2` (pyreft adds `proj_layer`'s bias).
    NoReft,
    /// ConsReFT: `b + (c − b Rᵀ) R`.
    ConsReft,
    /// LoBiReFT: `b + c R`.
    LoBiReft,
    /// DiReFT: `b + act(b Wᵀ + c) R`.
    DiReft,
    /// NoDiReFT: `b + act(b W1ᵀ + c1) W2` (`proj_layer`'s bias is unused, as in pyreft).
    NoDiReft,
}

/// Each family's name in exports.
const NAMES: [(ReftFamily, &str); 6] = [
    (ReftFamily::LoReft, "loreft"),
    (ReftFamily::NoReft, "noreft"),
    (ReftFamily::ConsReft, "consreft"),
    (ReftFamily::LoBiReft, "lobireft"),
    (ReftFamily::DiReft, "direft"),
    (ReftFamily::NoDiReft, "nodireft"),
];

impl ReftFamily {
    /// Which parameters the family has: (rotation, learned_source, proj_layer, learned_bias).
    pub fn parts(self) -> (bool, bool, bool, bool) {
        match self {
            ReftFamily::LoReft | ReftFamily::DiReft => (true, true, false, false),
            ReftFamily::NoReft | ReftFamily::NoDiReft => (false, true, true, false),
            ReftFamily::ConsReft | ReftFamily::LoBiReft => (true, false, false, true),
        }
    }
}

/// A ReFT intervention. Which parameters are present depends on the family: `rotation` (`R`) for
/// LoReFT, ConsReFT, LoBiReFT, DiReFT; `learned_source` (`W`, `c`) for LoReFT, NoReFT, DiReFT,
/// NoDiReFT; `proj_layer` (`W2`, `c2`) for NoReFT, NoDiReFT; `learned_bias` (`c`) for ConsReFT
/// and LoBiReFT. [`ReftIntervention::new`] builds the right set.
#[derive(Module, Debug)]
pub struct ReftIntervention<B: Backend> {
    /// The family.
    #[module(skip)]
    pub family: ReftFamily,
    /// `R`, `k × d`, orthonormal rows.
    pub rotation: Option<Orthogonal<B>>,
    /// `W`/`W1` and `c`/`c1`: pyreft's `learned_source` (a `Linear(d, k)`).
    pub learned_source: Option<Projection<B>>,
    /// `W2`, `c2`: pyreft's `proj_layer`.
    pub proj_layer: Option<Projection<B>>,
    /// `c` of ConsReFT and LoBiReFT (pyreft's `learned_source` parameter), `[k]`.
    pub learned_bias: Option<Param<Tensor<B, 1>>>,
    /// Applied to the learned projection (`act`); identity by default.
    #[module(skip)]
    pub act: Activation,
    /// Dropout on the output while training (pyreft's `dropout`), inactive without autodiff.
    pub dropout: Dropout,
}

impl<B: Backend> ReftIntervention<B> {
    /// A random intervention of rank `k` on width `d`, from `rng`: `R` random orthogonal,
    /// projections with PyTorch's `Linear` initialisation, ConsReFT/LoBiReFT biases zero.
    pub fn new(
        family: ReftFamily,
        d: usize,
        k: usize,
        act: Activation,
        dropout: f64,
        rng: &mut Rng,
        device: &B::Device,
    ) -> Self {
        let bound = 1.0 / (d as f64).sqrt();
        let projection = |rng: &mut Rng| Projection {
            weight: Param::from_tensor(rng.uniform_tensor([k, d], bound, device)),
            bias: Param::from_tensor(rng.uniform_tensor([k], bound, device)),
        };
        let (rot, learned, proj, bias) = family.parts();
        ReftIntervention {
            family,
            rotation: rot.then(|| Orthogonal::random(k, d, rng, device)),
            learned_source: learned.then(|| projection(rng)),
            proj_layer: proj.then(|| projection(rng)),
            learned_bias: bias.then(|| Param::from_tensor(Tensor::zeros([k], device))),
            act,
            dropout: burn::nn::DropoutConfig::new(dropout).init(),
        }
    }

    /// The edited hidden vectors.
    pub fn forward(&self, b: Tensor<B, 3>) -> Tensor<B, 3> {
        let act = self.act;
        let r = || self.rotation.as_ref().expect("this family has a rotation").matrix();
        let learned = || self.learned_source.as_ref().expect("this family has learned_source");
        let proj = || self.proj_layer.as_ref().expect("this family has proj_layer");
        let bias = || self.learned_bias.as_ref().expect("this family has a learned bias").val();
        let out = match self.family {
            ReftFamily::LoReft => {
                let r = r();
                b.clone() + times(act.apply(learned().forward(b.clone())) - times_t(b, r.clone()), r)
            }
            ReftFamily::NoReft => {
                let w2 = proj().weight.val();
                b.clone() + times(act.apply(learned().forward(b.clone())) - proj().forward(b), w2)
            }
            ReftFamily::ConsReft => {
                let r = r();
                b.clone() + times(row(bias()) - times_t(b, r.clone()), r)
            }
            ReftFamily::LoBiReft => {
                let shift = bias().unsqueeze::<2>().matmul(r()); // [1, d]
                b + shift.unsqueeze::<3>()
            }
            ReftFamily::DiReft => b.clone() + times(act.apply(learned().forward(b)), r()),
            ReftFamily::NoDiReft => b.clone() + times(act.apply(learned().forward(b)), proj().weight.val()),
        };
        self.dropout.forward(out)
    }
}

impl<B: Backend> Family<B> for ReftIntervention<B> {
    fn kinds() -> Vec<&'static str> {
        NAMES.iter().map(|(_, n)| *n).collect()
    }

    fn kind(&self) -> &'static str {
        name_of(&NAMES, self.family)
    }

    fn width(&self) -> Option<usize> {
        match (&self.rotation, &self.learned_source, &self.proj_layer) {
            (Some(rot), _, _) => Some(rot.dims()[1]),
            (None, Some(p), _) | (None, None, Some(p)) => Some(p.weight.val().dims()[1]),
            (None, None, None) => None,
        }
    }

    fn needs_source(&self) -> bool {
        false
    }

    fn write(&self, out: &mut Written) {
        if let Some(rot) = &self.rotation {
            out.rotation(rot);
        }
        for (prefix, p) in [("learned_source", &self.learned_source), ("proj_layer", &self.proj_layer)] {
            if let Some(p) = p {
                out.tensor(&format!("{prefix}.weight"), p.weight.val());
                out.tensor(&format!("{prefix}.bias"), p.bias.val());
            }
        }
        if let Some(c) = &self.learned_bias {
            out.tensor("learned_bias", c.val());
        }
        out.hyper.act = Some(self.act);
        out.hyper.dropout = Some(self.dropout.prob);
    }

    /// Each family's parameters must all be there (a missing one is a damaged file, not a panic
    /// later).
    fn read(kind: &str, parts: &Parts<'_, B>) -> Result<Self> {
        let family = named(&NAMES, kind).ok_or_else(|| parts.corrupt(format!("`{kind}` is not a ReFT family")))?;
        let projection = |prefix: &str| -> Result<Projection<B>> {
            Ok(Projection {
                weight: parts.param2(&format!("{prefix}.weight"))?,
                bias: parts.param1(&format!("{prefix}.bias"))?,
            })
        };
        let (rot, learned, proj, bias) = family.parts();
        let dropout = parts.hyper().dropout.unwrap_or(0.0);
        if !(0.0..1.0).contains(&dropout) {
            return Err(parts.corrupt(format!("dropout {dropout} is not a probability in [0, 1)")));
        }
        Ok(ReftIntervention {
            family,
            rotation: if rot { Some(parts.rotation()?) } else { None },
            learned_source: if learned { Some(projection("learned_source")?) } else { None },
            proj_layer: if proj { Some(projection("proj_layer")?) } else { None },
            learned_bias: if bias { Some(parts.param1("learned_bias")?) } else { None },
            act: parts.hyper().act.unwrap_or_default(),
            dropout: burn::nn::DropoutConfig::new(dropout).init(),
        })
    }

    fn rotation(&self) -> Option<&Orthogonal<B>> {
        self.rotation.as_ref()
    }

    fn rotation_mut(&mut self) -> Option<&mut Orthogonal<B>> {
        self.rotation.as_mut()
    }
}
