//! Representation finetuning (Wu et al. 2024, pyreft): sourceless edits of a hidden vector in a
//! low-rank subspace. `R` (`k × d`) has orthonormal rows; `W`, `W1`, `W2` (`k × d`) do not.

use burn::module::{Module, Param};
use burn::nn::Dropout;
use burn::tensor::{backend::Backend, Tensor};

use crate::activation::Activation;
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
    pub fn new(family: ReftFamily, d: usize, k: usize, act: Activation, dropout: f64, rng: &mut Rng, device: &B::Device) -> Self {
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
