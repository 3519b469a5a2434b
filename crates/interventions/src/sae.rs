//! Sparse-autoencoder interchange [pyvene JumpReLUAutoencoderIntervention]: encode base and source
//! with a JumpReLU SAE (Gemma Scope's `W_enc`, `b_enc`, `W_dec`, `b_dec`, `threshold`),
//! interchange chosen latents, decode.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, activation::relu, backend::Backend};

use crate::error::Result;
use crate::family::{Family, Parts, Written};
use crate::linalg::{row, times};

/// A JumpReLU SAE with the latents to interchange.
#[derive(Module, Debug)]
pub struct JumpReluSae<B: Backend> {
    /// `[d, m]`.
    pub w_enc: Param<Tensor<B, 2>>,
    /// `[m]`.
    pub b_enc: Param<Tensor<B, 1>>,
    /// `[m, d]`.
    pub w_dec: Param<Tensor<B, 2>>,
    /// `[d]`.
    pub b_dec: Param<Tensor<B, 1>>,
    /// `[m]`.
    pub threshold: Param<Tensor<B, 1>>,
    /// Latents taken from the source (all when empty).
    #[module(skip)]
    pub latents: Vec<usize>,
}

impl<B: Backend> JumpReluSae<B> {
    /// Latent activations: `relu(pre) ⊙ [pre > threshold]`, `pre = x W_enc + b_enc`.
    pub fn encode(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let pre = times(x, self.w_enc.val()) + row(self.b_enc.val());
        let on = pre.clone().greater(row(self.threshold.val()).expand(pre.dims())).float();
        relu(pre) * on
    }

    /// Reconstruction `z W_dec + b_dec`.
    pub fn decode(&self, z: Tensor<B, 3>) -> Tensor<B, 3> {
        times(z, self.w_dec.val()) + row(self.b_dec.val())
    }

    /// Decode(base latents with the chosen ones from the source).
    pub fn forward(&self, base: Tensor<B, 3>, source: Tensor<B, 3>) -> Tensor<B, 3> {
        let (zb, zs) = (self.encode(base), self.encode(source));
        let m = zb.dims()[2];
        let z = if self.latents.is_empty() {
            zs
        } else {
            let device = zb.device();
            let chosen: Vec<f32> = (0..m).map(|i| if self.latents.contains(&i) { 1.0 } else { 0.0 }).collect();
            let mask = row(Tensor::<B, 1>::from_floats(chosen.as_slice(), &device));
            zb.clone() + (zs - zb) * mask
        };
        self.decode(z)
    }
}

impl<B: Backend> JumpReluSae<B> {
    /// Loads Gemma-Scope-style weights from a safetensors file: `W_enc` `[d, m]`, `b_enc` `[m]`,
    /// `W_dec` `[m, d]`, `b_dec` `[d]`, `threshold` `[m]` (f32). `latents` are those to interchange.
    pub fn from_file(path: &std::path::Path, latents: Vec<usize>, device: &B::Device) -> crate::error::Result<Self> {
        use crate::error::InterventionError;
        let corrupt = |reason: String| InterventionError::Corrupt { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|e| InterventionError::Io { path: path.to_path_buf(), source: e })?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
        let read = |name: &str| -> crate::error::Result<(Vec<f32>, Vec<usize>)> {
            let v = st.tensor(name).map_err(|_| {
                corrupt(format!("missing SAE tensor `{name}` (expected W_enc, b_enc, W_dec, b_dec, threshold)"))
            })?;
            if v.dtype() != safetensors::Dtype::F32 {
                return Err(corrupt(format!("SAE tensor `{name}` is {:?}, expected F32", v.dtype())));
            }
            Ok((ferrovene_models::weights::f32_from_le(v.data()), v.shape().to_vec()))
        };
        let (w_enc, s) = read("W_enc")?;
        let [d, m] = <[usize; 2]>::try_from(s.as_slice())
            .map_err(|_| corrupt(format!("W_enc has shape {s:?}, expected [d, m]")))?;
        let expect = |name: &str, shape: Vec<usize>| -> crate::error::Result<Vec<f32>> {
            let (v, s) = read(name)?;
            if s != shape {
                return Err(corrupt(format!(
                    "SAE tensor `{name}` has shape {s:?}, expected {shape:?} (from W_enc [{d}, {m}])"
                )));
            }
            Ok(v)
        };
        if let Some(&bad) = latents.iter().find(|&&l| l >= m) {
            return Err(InterventionError::BadParameter {
                kind: "jumprelu_sae".into(),
                parameter: "latents".into(),
                reason: format!("latent {bad} is past the SAE's {m} latents"),
            });
        }
        let t1 = |v: Vec<f32>| {
            Param::from_tensor(Tensor::<B, 1>::from_data(burn::tensor::TensorData::new(v.clone(), [v.len()]), device))
                .set_require_grad(false)
        };
        let t2 = |v: Vec<f32>, shape: [usize; 2]| {
            Param::from_tensor(Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(v, shape), device))
                .set_require_grad(false)
        };
        Ok(JumpReluSae {
            w_enc: t2(w_enc, [d, m]),
            b_enc: t1(expect("b_enc", vec![m])?),
            w_dec: t2(expect("W_dec", vec![m, d])?, [m, d]),
            b_dec: t1(expect("b_dec", vec![d])?),
            threshold: t1(expect("threshold", vec![m])?),
            latents,
        })
    }
}

impl<B: Backend> Family<B> for JumpReluSae<B> {
    fn kinds() -> Vec<&'static str> {
        vec!["jumprelu_sae"]
    }

    fn kind(&self) -> &'static str {
        "jumprelu_sae"
    }

    fn width(&self) -> Option<usize> {
        Some(self.w_enc.val().dims()[0])
    }

    fn needs_source(&self) -> bool {
        true
    }

    fn write(&self, out: &mut Written) {
        out.tensor("W_enc", self.w_enc.val());
        out.tensor("b_enc", self.b_enc.val());
        out.tensor("W_dec", self.w_dec.val());
        out.tensor("b_dec", self.b_dec.val());
        out.tensor("threshold", self.threshold.val());
        out.hyper.latents = Some(self.latents.clone());
    }

    fn read(_: &str, parts: &Parts<'_, B>) -> Result<Self> {
        Ok(JumpReluSae {
            w_enc: parts.param2("W_enc")?,
            b_enc: parts.param1("b_enc")?,
            w_dec: parts.param2("W_dec")?,
            b_dec: parts.param1("b_dec")?,
            threshold: parts.param1("threshold")?,
            latents: parts.hyper().latents.clone().unwrap_or_default(),
        })
    }
}
