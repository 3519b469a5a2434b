//! Sparse autoencoders as interventions [pyvene JumpReLUAutoencoderIntervention; SAELens]:
//! encode the base (and the source), interchange or clamp chosen latents, decode.
//!
//! As SAELens computes them (`sae_lens/saes/*.py`):
//!
//! - input: `x' = norm_in(x)`, then `x'' = x' − b_dec` when `apply_b_dec_to_input`;
//! - pre-activation: `pre = x'' W_enc + b_enc`;
//! - latents: ReLU `relu(pre)`; JumpReLU `relu(pre) ⊙ [pre > θ]` (Gemma Scope's); TopK the `k`
//!   largest of `pre` through a ReLU, the others 0;
//! - output: `norm_out(z W_dec + b_dec)`.
//!
//! `norm_in`/`norm_out` (`normalize_activations`): none (also SAELens' `expected_average_only_in`,
//! whose factor is folded into the weights of a saved SAE); `constant_norm_rescale`: `x · √d/‖x‖`
//! and back; `layer_norm`: `(x − μ)/(σ + 1e-5)` with torch's unbiased σ, and back as `y σ + μ`.
//! The output is denormalised with the base's statistics (it replaces the base).

use burn::module::{Module, Param};
use burn::tensor::{IndexingUpdateOp, Tensor, activation::relu, backend::Backend};

use crate::error::{InterventionError, Result};
use crate::family::{Family, Parts, Written};
use crate::linalg::{row, times};

/// How latents are computed from the pre-activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaeActivation {
    /// `relu(pre)` (SAELens `standard`).
    Relu,
    /// `relu(pre) ⊙ [pre > θ]` (SAELens `jumprelu`, Gemma Scope).
    JumpRelu,
    /// The `k` largest pre-activations through a ReLU, the others 0 (SAELens `topk`).
    TopK(usize),
}

/// SAELens' `normalize_activations`, as applied when the SAE runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaeNorm {
    /// Identity (also `expected_average_only_in`, folded into the weights when saved).
    #[default]
    None,
    /// `x · √d / ‖x‖`, undone on the output.
    ConstantNormRescale,
    /// `(x − μ) / (σ + 1e-5)` (σ unbiased), undone on the output as `y σ + μ`.
    LayerNorm,
}

impl SaeNorm {
    /// SAELens' name for it.
    pub fn name(self) -> &'static str {
        match self {
            SaeNorm::None => "none",
            SaeNorm::ConstantNormRescale => "constant_norm_rescale",
            SaeNorm::LayerNorm => "layer_norm",
        }
    }

    /// The normalisation SAELens' `normalize_activations` names; `expected_average_only_in` is
    /// none at run time (its factor is folded into a saved SAE's weights).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "none" | "expected_average_only_in" => SaeNorm::None,
            "constant_norm_rescale" => SaeNorm::ConstantNormRescale,
            "layer_norm" => SaeNorm::LayerNorm,
            _ => return None,
        })
    }
}

/// What the input normalisation did to the base, to undo on the output.
enum NormState<B: Backend> {
    Identity,
    Scale(Tensor<B, 3>),
    Shift { mean: Tensor<B, 3>, std: Tensor<B, 3> },
}

/// A sparse autoencoder with the latents it interchanges (from the source) or clamps.
#[derive(Module, Debug)]
pub struct Sae<B: Backend> {
    /// `[d, m]`.
    pub w_enc: Param<Tensor<B, 2>>,
    /// `[m]`.
    pub b_enc: Param<Tensor<B, 1>>,
    /// `[m, d]`.
    pub w_dec: Param<Tensor<B, 2>>,
    /// `[d]`.
    pub b_dec: Param<Tensor<B, 1>>,
    /// `[m]`, JumpReLU's θ.
    pub threshold: Option<Param<Tensor<B, 1>>>,
    /// How latents are computed.
    #[module(skip)]
    pub activation: SaeActivation,
    /// Subtract `b_dec` from the input before encoding (SAELens `apply_b_dec_to_input`).
    #[module(skip)]
    pub input_bias: bool,
    /// Run-time normalisation of the input (SAELens `normalize_activations`).
    #[module(skip)]
    pub normalize: SaeNorm,
    /// Latents taken from the source, or clamped (all when empty).
    #[module(skip)]
    pub latents: Vec<usize>,
    /// Clamp the chosen latents to this value instead of taking them from a source.
    #[module(skip)]
    pub clamp: Option<f64>,
}

/// The name this type had when JumpReLU was its only activation.
pub type JumpReluSae<B> = Sae<B>;

impl<B: Backend> Sae<B> {
    /// A JumpReLU SAE as Gemma Scope publishes it (no input bias, no normalisation), frozen,
    /// interchanging `latents`.
    pub fn jumprelu(
        w_enc: Tensor<B, 2>,
        b_enc: Tensor<B, 1>,
        w_dec: Tensor<B, 2>,
        b_dec: Tensor<B, 1>,
        threshold: Tensor<B, 1>,
        latents: Vec<usize>,
    ) -> Self {
        let frozen1 = |t| Param::from_tensor(t).set_require_grad(false);
        Sae {
            w_enc: Param::from_tensor(w_enc).set_require_grad(false),
            b_enc: frozen1(b_enc),
            w_dec: Param::from_tensor(w_dec).set_require_grad(false),
            b_dec: frozen1(b_dec),
            threshold: Some(frozen1(threshold)),
            activation: SaeActivation::JumpRelu,
            input_bias: false,
            normalize: SaeNorm::None,
            latents,
            clamp: None,
        }
    }

    /// Input width `d` and latent count `m`.
    pub fn dims(&self) -> (usize, usize) {
        let [d, m] = self.w_enc.val().dims();
        (d, m)
    }

    /// The same SAE acting on `latents`: interchanged from a source, or clamped to `clamp`.
    pub fn acting_on(mut self, latents: Vec<usize>, clamp: Option<f64>) -> Result<Self> {
        let (_, m) = self.dims();
        let bad = |reason: String| InterventionError::BadParameter {
            kind: self.kind().into(),
            parameter: "latents".into(),
            reason,
        };
        if let Some(&l) = latents.iter().find(|&&l| l >= m) {
            return Err(bad(format!("latent {l} is past the SAE's {m} latents (0 to {})", m - 1)));
        }
        if clamp.is_some() && latents.is_empty() {
            return Err(bad("clamping needs the latents to clamp (e.g. --latents 10,42)".into()));
        }
        self.latents = latents;
        self.clamp = clamp;
        Ok(self)
    }

    fn normalise_in(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, NormState<B>) {
        let d = x.dims()[2] as f64;
        match self.normalize {
            SaeNorm::None => (x, NormState::Identity),
            SaeNorm::ConstantNormRescale => {
                let coeff = x.clone().powf_scalar(2.0).sum_dim(2).sqrt().recip() * d.sqrt();
                (x * coeff.clone(), NormState::Scale(coeff))
            }
            SaeNorm::LayerNorm => {
                let mean = x.clone().mean_dim(2);
                let centred = x - mean.clone();
                let std = (centred.clone().powf_scalar(2.0).sum_dim(2) / (d - 1.0)).sqrt();
                (centred / (std.clone() + 1e-5), NormState::Shift { mean, std })
            }
        }
    }

    fn normalise_out(y: Tensor<B, 3>, state: NormState<B>) -> Tensor<B, 3> {
        match state {
            NormState::Identity => y,
            NormState::Scale(coeff) => y / coeff,
            NormState::Shift { mean, std } => y * std + mean,
        }
    }

    /// Pre-activations `[batch, k, m]` and the normalisation to undo on the output.
    fn pre(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, NormState<B>) {
        let (x, state) = self.normalise_in(x);
        let x = if self.input_bias { x - row(self.b_dec.val()) } else { x };
        (times(x, self.w_enc.val()) + row(self.b_enc.val()), state)
    }

    fn activate(&self, pre: Tensor<B, 3>) -> Tensor<B, 3> {
        match self.activation {
            SaeActivation::Relu => relu(pre),
            SaeActivation::JumpRelu => {
                let on = match &self.threshold {
                    Some(t) => pre.clone().greater(row(t.val()).expand(pre.dims())).float(),
                    None => pre.clone().greater_elem(0.0).float(),
                };
                relu(pre) * on
            }
            SaeActivation::TopK(k) => {
                let k = k.min(pre.dims()[2]);
                let (values, indices) = pre.clone().topk_with_indices(k, 2);
                pre.zeros_like().scatter(2, indices, relu(values), IndexingUpdateOp::Add)
            }
        }
    }

    /// Latent activations `[batch, k, m]` of `x` `[batch, k, d]`.
    pub fn encode(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.activate(self.pre(x).0)
    }

    /// Reconstruction `z W_dec + b_dec` (before any output denormalisation).
    pub fn decode(&self, z: Tensor<B, 3>) -> Tensor<B, 3> {
        times(z, self.w_dec.val()) + row(self.b_dec.val())
    }

    /// The SAE's reconstruction of `x`, as SAELens' `forward` gives it (without an error term).
    pub fn reconstruct(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let (pre, state) = self.pre(x);
        Self::normalise_out(self.decode(self.activate(pre)), state)
    }

    /// `[1, 1, m]`: 1 at the chosen latents (all when none are chosen).
    fn chosen(&self, m: usize, device: &B::Device) -> Tensor<B, 3> {
        let chosen: Vec<f32> =
            (0..m).map(|i| if self.latents.is_empty() || self.latents.contains(&i) { 1.0 } else { 0.0 }).collect();
        row(Tensor::<B, 1>::from_floats(chosen.as_slice(), device))
    }

    /// Decode(base latents with the chosen ones taken from the source, or clamped), denormalised
    /// as the base was.
    pub fn forward(&self, base: Tensor<B, 3>, source: Option<Tensor<B, 3>>) -> Result<Tensor<B, 3>> {
        let (pre, state) = self.pre(base);
        let zb = self.activate(pre);
        let m = zb.dims()[2];
        let mask = self.chosen(m, &zb.device());
        let z = match (self.clamp, source) {
            (Some(v), _) => zb.clone() + (zb.ones_like() * v - zb) * mask,
            (None, Some(source)) => {
                let zs = self.encode(source);
                zb.clone() + (zs - zb) * mask
            }
            (None, None) => return Err(InterventionError::MissingSource { kind: self.kind().into() }),
        };
        Ok(Self::normalise_out(self.decode(z), state))
    }
}

const KINDS: [(SaeActivation, &str); 3] = [
    (SaeActivation::JumpRelu, "jumprelu_sae"),
    (SaeActivation::Relu, "relu_sae"),
    (SaeActivation::TopK(0), "topk_sae"),
];

impl<B: Backend> Family<B> for Sae<B> {
    fn kinds() -> Vec<&'static str> {
        KINDS.iter().map(|(_, n)| *n).collect()
    }

    fn kind(&self) -> &'static str {
        match self.activation {
            SaeActivation::JumpRelu => "jumprelu_sae",
            SaeActivation::Relu => "relu_sae",
            SaeActivation::TopK(_) => "topk_sae",
        }
    }

    fn width(&self) -> Option<usize> {
        Some(self.dims().0)
    }

    fn needs_source(&self) -> bool {
        self.clamp.is_none()
    }

    fn write(&self, out: &mut Written) {
        out.tensor("W_enc", self.w_enc.val());
        out.tensor("b_enc", self.b_enc.val());
        out.tensor("W_dec", self.w_dec.val());
        out.tensor("b_dec", self.b_dec.val());
        if let Some(t) = &self.threshold {
            out.tensor("threshold", t.val());
        }
        out.hyper.latents = Some(self.latents.clone());
        if let SaeActivation::TopK(k) = self.activation {
            out.hyper.k = Some(k);
        }
        out.hyper.sae_input_bias = self.input_bias.then_some(true);
        out.hyper.sae_normalize = (self.normalize != SaeNorm::None).then(|| self.normalize.name().to_string());
        out.hyper.clamp = self.clamp;
    }

    fn read(kind: &str, parts: &Parts<'_, B>) -> Result<Self> {
        let hyper = parts.hyper();
        let activation = match kind {
            "jumprelu_sae" => SaeActivation::JumpRelu,
            "relu_sae" => SaeActivation::Relu,
            _ => SaeActivation::TopK(parts.need(hyper.k, "k")?),
        };
        let threshold = if activation == SaeActivation::JumpRelu { Some(parts.param1("threshold")?) } else { None };
        let sae = Sae {
            w_enc: parts.param2("W_enc")?,
            b_enc: parts.param1("b_enc")?,
            w_dec: parts.param2("W_dec")?,
            b_dec: parts.param1("b_dec")?,
            threshold,
            activation,
            input_bias: hyper.sae_input_bias.unwrap_or(false),
            normalize: match &hyper.sae_normalize {
                None => SaeNorm::None,
                Some(n) => SaeNorm::from_name(n)
                    .ok_or_else(|| parts.corrupt(format!("unknown `hyper.sae_normalize` `{n}`")))?,
            },
            latents: Vec::new(),
            clamp: None,
        };
        sae.acting_on(hyper.latents.clone().unwrap_or_default(), hyper.clamp).map_err(|e| parts.corrupt(e.to_string()))
    }
}
