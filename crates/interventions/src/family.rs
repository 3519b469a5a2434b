//! What every intervention family implements, so that [`crate::Intervention`] and the export
//! format delegate to one place per family: the names its values take in exports, its tensors,
//! how it reads back, and what it can do. The name ↔ value table of a family is written once, in
//! its own file, and used both ways.

use burn::module::Param;
use burn::tensor::{ElementConversion, Tensor, TensorData, backend::Backend};
use safetensors::SafeTensors;

use serde::{Deserialize, Serialize};

use crate::activation::Activation;
use crate::error::{InterventionError, Result};
use crate::orthogonal::Orthogonal;

/// One family of interventions (a variant of [`crate::Intervention`]).
pub trait Family<B: Backend>: Sized {
    /// Every export name this family's values take.
    fn kinds() -> Vec<&'static str>;
    /// This value's export name (one of [`Family::kinds`]).
    fn kind(&self) -> &'static str;
    /// The width of the vectors it acts on, when its parameters fix it.
    fn width(&self) -> Option<usize>;
    /// Whether it reads a source activation.
    fn needs_source(&self) -> bool;
    /// Writes its tensors under their stable names, and its scalars.
    fn write(&self, out: &mut Written);
    /// Reads the value named `kind` (one of [`Family::kinds`]) from an export.
    fn read(kind: &str, parts: &Parts<'_, B>) -> Result<Self>;
    /// Its learned rotation, for families that have one.
    fn rotation(&self) -> Option<&Orthogonal<B>> {
        None
    }
    /// The same, to replace it (random-rotation controls).
    fn rotation_mut(&mut self) -> Option<&mut Orthogonal<B>> {
        None
    }
    /// Whether it only reads the activations (collect, probes).
    fn reads_only(&self) -> bool {
        false
    }
    /// Sets the annealed temperature, for families that have one.
    fn set_temperature(&mut self, _tau: f64) {}
}

/// Kind-specific scalars (absent where they do not apply).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    /// Interchanged coordinates (das_full); active latents (topk_sae).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// τ (das_boundless, sigmoid masks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// α (steering).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Activation (ReFT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Activation>,
    /// Dropout (ReFT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// Interchanged or clamped latents (SAEs; empty = all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latents: Option<Vec<usize>>,
    /// SAEs: subtract `b_dec` from the input before encoding (SAELens `apply_b_dec_to_input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sae_input_bias: Option<bool>,
    /// SAEs: run-time input normalisation, as SAELens' `normalize_activations` names it
    /// (`constant_norm_rescale`, `layer_norm`; absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sae_normalize: Option<String>,
    /// SAEs: clamp the chosen latents to this value instead of reading a source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clamp: Option<f64>,
}

/// An intervention's tensors and scalars on their way into an export.
#[derive(Default)]
pub struct Written {
    /// `(stable name, f32 data)`.
    pub tensors: Vec<(String, TensorData)>,
    /// Kind-specific scalars.
    pub hyper: Hyper,
}

impl Written {
    /// Adds a tensor under `name`, as f32.
    pub fn tensor<const D: usize, B: Backend>(&mut self, name: &str, t: Tensor<B, D>) {
        self.tensors.push((name.to_string(), t.into_data().convert::<f32>()));
    }

    /// Adds a rotation: `R` materialised (what other tools read) and its trainable parameter.
    pub fn rotation<B: Backend>(&mut self, r: &Orthogonal<B>) {
        self.tensor("R", r.matrix());
        match r {
            Orthogonal::Householder(v) => self.tensor("rotation.householder", v.val()),
            Orthogonal::Exp(w) => self.tensor("rotation.exp_weight", w.val()),
            Orthogonal::Torch(t) => {
                self.tensor("rotation.base", t.base.val());
                self.tensor("rotation.x", t.x.val());
            }
            Orthogonal::Fixed(_) => {}
        }
    }
}

/// An export's tensors and config, read back on `device`; every error names the file, the
/// tensor and the kind.
pub struct Parts<'a, B: Backend> {
    /// The file (for errors).
    pub path: &'a std::path::Path,
    /// Its tensors.
    pub st: &'a SafeTensors<'a>,
    /// The kind its config names.
    pub kind: &'a str,
    /// Its config's kind-specific scalars.
    pub hyper: &'a Hyper,
    /// Where the tensors go.
    pub device: &'a B::Device,
    /// Prefix of its tensors' names: empty for a single intervention, `MEMBER.` for a member of
    /// a set ([`crate::set`]).
    pub prefix: &'a str,
}

impl<B: Backend> Parts<'_, B> {
    /// The error for a damaged export.
    pub fn corrupt(&self, reason: String) -> InterventionError {
        InterventionError::Corrupt { path: self.path.to_path_buf(), reason }
    }

    /// Whether the export has tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.st.tensor(&format!("{}{name}", self.prefix)).is_ok()
    }

    fn data(&self, name: &str) -> Result<TensorData> {
        let name = &format!("{}{name}", self.prefix);
        let view = self
            .st
            .tensor(name)
            .map_err(|_| self.corrupt(format!("missing tensor `{name}` for kind `{}`", self.kind)))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(self.corrupt(format!("tensor `{name}` is {:?}, expected F32", view.dtype())));
        }
        Ok(TensorData::new(ferrovene_models::weights::f32_from_le(view.data()), view.shape().to_vec()))
    }

    /// Tensor `name`, one-dimensional.
    pub fn t1(&self, name: &str) -> Result<Tensor<B, 1>> {
        Ok(Tensor::from_data(self.data(name)?, self.device))
    }

    /// Tensor `name`, two-dimensional.
    pub fn t2(&self, name: &str) -> Result<Tensor<B, 2>> {
        let d = self.data(name)?;
        if d.shape.len() != 2 {
            return Err(self.corrupt(format!("tensor `{name}` has shape {:?}, expected 2 dimensions", d.shape)));
        }
        Ok(Tensor::from_data(d, self.device))
    }

    /// Tensor `name` as a parameter (trainable again).
    pub fn param1(&self, name: &str) -> Result<Param<Tensor<B, 1>>> {
        Ok(Param::from_tensor(self.t1(name)?))
    }

    /// Tensor `name` as a parameter (trainable again).
    pub fn param2(&self, name: &str) -> Result<Param<Tensor<B, 2>>> {
        Ok(Param::from_tensor(self.t2(name)?))
    }

    /// The rotation: trainable from its parameter where there is one, else fixed from `R`.
    ///
    /// A trainable rotation's stored `R` (what other tools read) must be the one its parameters
    /// give, within 1e-5: an `R` edited or damaged apart from them is refused, not ignored.
    pub fn rotation(&self) -> Result<Orthogonal<B>> {
        let trainable = if self.has("rotation.householder") {
            Orthogonal::Householder(self.param2("rotation.householder")?)
        } else if self.has("rotation.exp_weight") {
            Orthogonal::Exp(self.param2("rotation.exp_weight")?)
        } else if self.has("rotation.x") {
            Orthogonal::Torch(crate::orthogonal::TorchOrthogonal::new(
                self.t2("rotation.base")?,
                self.t2("rotation.x")?,
            ))
        } else {
            return Ok(Orthogonal::fixed(self.t2("R")?));
        };
        if self.has("R") {
            let stored = self.t2("R")?;
            if stored.dims() != trainable.dims() {
                return Err(self.corrupt(format!(
                    "`R` is {:?} but its parameters give {:?}",
                    stored.dims(),
                    trainable.dims()
                )));
            }
            let diff: f32 = (trainable.matrix() - stored).abs().max().into_scalar().elem();
            if diff.is_nan() || diff > 1e-5 {
                return Err(self.corrupt(format!(
                    "the stored `R` differs from the one its parameters (`rotation.*`) give by {diff:e} (max |ΔR|, allowed 1e-5): \
                     the file was edited or damaged; export it again, or remove the `rotation.*` tensors to load `R` as a fixed rotation"
                )));
            }
        }
        Ok(trainable)
    }

    /// A scalar the kind needs from `hyper`.
    pub fn need<T: Copy>(&self, value: Option<T>, what: &str) -> Result<T> {
        value.ok_or_else(|| self.corrupt(format!("kind `{}` needs `hyper.{what}`", self.kind)))
    }

    /// The hyper-parameters.
    pub fn hyper(&self) -> &Hyper {
        self.hyper
    }
}

/// Looks `kind` up in a family's name table.
pub fn named<T: Copy + PartialEq>(table: &[(T, &'static str)], kind: &str) -> Option<T> {
    table.iter().find(|(_, n)| *n == kind).map(|(v, _)| *v)
}

/// The name of `value` in a family's name table.
pub fn name_of<T: Copy + PartialEq>(table: &[(T, &'static str)], value: T) -> &'static str {
    table.iter().find(|(v, _)| *v == value).map_or("", |(_, n)| n)
}
