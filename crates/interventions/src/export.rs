//! `intervention.safetensors`: an intervention's tensors under stable names, with its JSON
//! config (kind, placement, model, hyper-parameters, training summary) in the file's metadata
//! under the key `ferrovene`. Loading checks the config against the target model; writing goes
//! to a temporary file renamed into place, so a crash never leaves a half-written file over a
//! good one.
//!
//! Tensor names (all f32, row-major; `R` is `k × d` with orthonormal rows, i.e. pyvene's `W`
//! transposed):
//!
//! | name | kinds | shape |
//! | --- | --- | --- |
//! | `R` | every kind with a rotation (materialised; what other tools should read) | `[k, d]` |
//! | `rotation.householder` / `rotation.exp_weight` | trainable rotations: the parameter behind `R` | `[k, d]` / `[d, d]` |
//! | `boundary` | das_boundless (β, before clamping) | `[1]` |
//! | `mask` | sigmoid_mask, sigmoid_mask_rotated (logits) | `[d]` |
//! | `learned_source.weight`, `learned_source.bias` | loreft, noreft, direft, nodireft | `[k, d]`, `[k]` |
//! | `proj_layer.weight`, `proj_layer.bias` | noreft, nodireft | `[k, d]`, `[k]` |
//! | `learned_bias` | consreft, lobireft (pyreft's `learned_source` vector) | `[k]` |
//! | `probe.weight`, `probe.bias` | linear_probe | `[classes, d]`, `[classes]` |
//! | `vector` | steering (v), mean (the mean), noise (σ) | `[d]` |
//! | `W_enc`, `b_enc`, `W_dec`, `b_dec`, `threshold` | jumprelu_sae | `[d, m]`, `[m]`, `[m, d]`, `[d]`, `[m]` |

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::activation::Activation;
use crate::das::{BoundlessDas, DasFull, DasLowRank, SigmoidMask};
use crate::error::{InterventionError, Result};
use crate::fixed::{Fixed, FixedOp};
use crate::intervention::Intervention;
use crate::orthogonal::Orthogonal;
use crate::placement::Composition;
use crate::probe::LinearProbe;
use crate::reft::{Projection, ReftFamily, ReftIntervention};
use crate::sae::JumpReluSae;
use crate::steering::Steering;

/// The metadata key that holds the config.
pub const METADATA_KEY: &str = "ferrovene";
/// The export format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Kind-specific scalars (absent where they do not apply).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    /// Interchanged coordinates (das_full).
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
    /// Interchanged latents (jumprelu_sae; empty = all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latents: Option<Vec<usize>>,
}

/// Where the intervention was trained to act.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementConfig {
    /// Sites, as `LAYER.COMPONENT` (several when they share the parameters).
    pub sites: Vec<String>,
    /// The position rule, as the recipe wrote it (e.g. `last`, `f1+l1`).
    pub positions: String,
    /// Width of the site's activation.
    pub site_width: usize,
    /// The subspace of the site it acts on (all dims when empty).
    #[serde(default)]
    pub dims: Vec<usize>,
    /// How it combines with others at the same site.
    #[serde(default)]
    pub composition: Composition,
}

/// The model the intervention belongs to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The model spec it was trained on (name, path or hub id).
    pub id: String,
    /// Hub revision, when known.
    #[serde(default)]
    pub revision: Option<String>,
    /// Architecture (`llama`, `gpt2`, …).
    pub arch: String,
    /// Residual stream width.
    pub hidden_size: usize,
}

/// The JSON config stored in an export's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportConfig {
    /// Format version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// The intervention's kind ([`Intervention::kind`]).
    pub kind: String,
    /// Width of the vectors it acts on.
    pub width: usize,
    /// Kind-specific scalars.
    #[serde(default)]
    pub hyper: Hyper,
    /// Where it acts.
    pub placement: PlacementConfig,
    /// Which model.
    pub model: ModelConfig,
    /// Free training summary (steps, seed, metrics, data hash …).
    #[serde(default)]
    pub training: serde_json::Value,
}

/// What an export is loaded into: the model's identity and its sites.
pub struct Target<'a> {
    /// Architecture.
    pub arch: &'a str,
    /// Residual stream width.
    pub hidden_size: usize,
    /// The model's sites.
    pub sites: &'a [ferrovene_models::SiteInfo],
}

impl ExportConfig {
    /// Refuses a target that differs from the one the export was trained for, saying what differs.
    pub fn check_target(&self, path: &Path, target: &Target) -> Result<()> {
        let mismatch = |reason: String| InterventionError::Mismatch { path: path.to_path_buf(), reason };
        if self.model.arch != target.arch || self.model.hidden_size != target.hidden_size {
            return Err(mismatch(format!(
                "it was trained on a {} model of width {} (`{}`), the target is a {} model of width {}",
                self.model.arch, self.model.hidden_size, self.model.id, target.arch, target.hidden_size
            )));
        }
        for name in &self.placement.sites {
            let site: ferrovene_models::Site = name.parse().map_err(|e| mismatch(format!("{e}")))?;
            let info = target.sites.iter().find(|s| s.site == site).ok_or_else(|| {
                mismatch(format!("the target model has no site `{name}`"))
            })?;
            if info.width != self.placement.site_width {
                return Err(mismatch(format!(
                    "site `{name}` is {} wide in the target, {} in the export",
                    info.width, self.placement.site_width
                )));
            }
        }
        Ok(())
    }
}

fn data<B: Backend, const D: usize>(t: Tensor<B, D>) -> TensorData {
    t.into_data().convert::<f32>()
}

fn rotation_tensors<B: Backend>(r: &Orthogonal<B>, out: &mut Vec<(String, TensorData)>) {
    out.push(("R".into(), data(r.matrix())));
    match r {
        Orthogonal::Householder(v) => out.push(("rotation.householder".into(), data(v.val()))),
        Orthogonal::Exp(w) => out.push(("rotation.exp_weight".into(), data(w.val()))),
        Orthogonal::Fixed(_) => {}
    }
}

/// The intervention's tensors under their stable names, and its kind-specific scalars.
pub fn tensors_of<B: Backend>(iv: &Intervention<B>) -> (Vec<(String, TensorData)>, Hyper) {
    let mut t = Vec::new();
    let mut h = Hyper::default();
    match iv {
        Intervention::Fixed(f) => {
            if let Some(v) = &f.vector {
                t.push(("vector".into(), data(v.val())));
            }
        }
        Intervention::DasFull(i) => {
            rotation_tensors(&i.rotation, &mut t);
            h.k = Some(i.k);
        }
        Intervention::DasLowRank(i) => rotation_tensors(&i.rotation, &mut t),
        Intervention::Boundless(i) => {
            rotation_tensors(&i.rotation, &mut t);
            t.push(("boundary".into(), data(i.boundary.val())));
            h.temperature = Some(i.temperature);
        }
        Intervention::SigmoidMask(i) => {
            if let Some(r) = &i.rotation {
                rotation_tensors(r, &mut t);
            }
            t.push(("mask".into(), data(i.mask.val())));
            h.temperature = Some(i.temperature);
        }
        Intervention::Reft(r) => {
            if let Some(rot) = &r.rotation {
                rotation_tensors(rot, &mut t);
            }
            for (prefix, p) in [("learned_source", &r.learned_source), ("proj_layer", &r.proj_layer)] {
                if let Some(p) = p {
                    t.push((format!("{prefix}.weight"), data(p.weight.val())));
                    t.push((format!("{prefix}.bias"), data(p.bias.val())));
                }
            }
            if let Some(c) = &r.learned_bias {
                t.push(("learned_bias".into(), data(c.val())));
            }
            h.act = Some(r.act);
            h.dropout = Some(r.dropout.prob);
        }
        Intervention::Probe(p) => {
            t.push(("probe.weight".into(), data(p.weight.val())));
            t.push(("probe.bias".into(), data(p.bias.val())));
        }
        Intervention::Steering(s) => {
            t.push(("vector".into(), data(s.vector.val())));
            h.alpha = Some(s.alpha);
        }
        Intervention::Sae(s) => {
            for (n, v) in [("W_enc", data(s.w_enc.val())), ("b_enc", data(s.b_enc.val())), ("W_dec", data(s.w_dec.val())), ("b_dec", data(s.b_dec.val())), ("threshold", data(s.threshold.val()))] {
                t.push((n.into(), v));
            }
            h.latents = Some(s.latents.clone());
        }
    }
    (t, h)
}

/// A written temporary file waiting to replace the target; dropped without
/// [`PendingExport::commit`], it is removed and the target is untouched.
pub struct PendingExport {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl PendingExport {
    /// Renames the temporary file over the target (atomic on POSIX file systems).
    pub fn commit(mut self) -> Result<PathBuf> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| InterventionError::Io { path: self.path.clone(), source: e })?;
        self.committed = true;
        Ok(self.path.clone())
    }
}

impl Drop for PendingExport {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes the export to a temporary file beside `path` (synced to disk), ready to commit.
/// `config.kind`, `config.width` and `config.hyper` are filled in from the intervention.
pub fn prepare<B: Backend>(iv: &Intervention<B>, mut config: ExportConfig, path: &Path) -> Result<PendingExport> {
    let (tensors, hyper) = tensors_of(iv);
    config.format = FORMAT_VERSION;
    config.kind = iv.kind().to_string();
    config.hyper = hyper;
    if let Some(w) = iv.width() {
        config.width = w;
    }
    let json = serde_json::to_string(&config).expect("the config serialises");
    let metadata: HashMap<String, String> = [(METADATA_KEY.to_string(), json)].into();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, d.shape.to_vec(), d.as_bytes())
                .expect("f32 data of its own shape");
            (n.clone(), view)
        })
        .collect();
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| InterventionError::Corrupt { path: path.to_path_buf(), reason: format!("cannot serialise: {e}") })?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "intervention.safetensors".into());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let io = |e| InterventionError::Io { path: tmp.clone(), source: e };
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    let pending = PendingExport { tmp: tmp.clone(), path: path.to_path_buf(), committed: false };
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(pending)
}

/// Writes the export to `path` atomically (temporary file, then rename).
pub fn save<B: Backend>(iv: &Intervention<B>, config: ExportConfig, path: &Path) -> Result<PathBuf> {
    prepare(iv, config, path)?.commit()
}

/// Reads an export: the intervention (parameters trainable again where they were) and its config.
pub fn load<B: Backend>(path: &Path, device: &B::Device) -> Result<(Intervention<B>, ExportConfig)> {
    let corrupt = |reason: String| InterventionError::Corrupt { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| InterventionError::Io { path: path.to_path_buf(), source: e })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| corrupt(format!("not a ferrovene export: no `{METADATA_KEY}` config in its metadata")))?;
    let config: ExportConfig = serde_json::from_str(json).map_err(|e| corrupt(format!("bad `{METADATA_KEY}` config: {e}")))?;
    if config.format != FORMAT_VERSION {
        return Err(corrupt(format!("export format {} is not supported (this build reads {FORMAT_VERSION})", config.format)));
    }
    let get = |name: &str| -> Result<TensorData> {
        let view = st.tensor(name).map_err(|_| corrupt(format!("missing tensor `{name}` for kind `{}`", config.kind)))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(corrupt(format!("tensor `{name}` is {:?}, expected F32", view.dtype())));
        }
        let values = ferrovene_models::weights::f32_from_le(view.data());
        Ok(TensorData::new(values, view.shape().to_vec()))
    };
    let has = |name: &str| st.tensor(name).is_ok();
    let t1 = |name: &str| -> Result<Tensor<B, 1>> { Ok(Tensor::from_data(get(name)?, device)) };
    let t2 = |name: &str| -> Result<Tensor<B, 2>> {
        let d = get(name)?;
        if d.shape.len() != 2 {
            return Err(corrupt(format!("tensor `{name}` has shape {:?}, expected 2 dimensions", d.shape)));
        }
        Ok(Tensor::from_data(d, device))
    };
    let param1 = |name: &str| -> Result<Param<Tensor<B, 1>>> { Ok(Param::from_tensor(t1(name)?)) };
    let param2 = |name: &str| -> Result<Param<Tensor<B, 2>>> { Ok(Param::from_tensor(t2(name)?)) };
    let rotation = || -> Result<Orthogonal<B>> {
        if has("rotation.householder") {
            Ok(Orthogonal::Householder(param2("rotation.householder")?))
        } else if has("rotation.exp_weight") {
            Ok(Orthogonal::Exp(param2("rotation.exp_weight")?))
        } else {
            Ok(Orthogonal::fixed(t2("R")?))
        }
    };
    let hyper = &config.hyper;
    let need = |v: Option<f64>, what: &str| v.ok_or_else(|| corrupt(format!("kind `{}` needs `hyper.{what}`", config.kind)));
    let projection = |prefix: &str| -> Result<Projection<B>> {
        Ok(Projection { weight: param2(&format!("{prefix}.weight"))?, bias: param1(&format!("{prefix}.bias"))? })
    };
    let reft = |family: ReftFamily| -> Result<Intervention<B>> {
        // Each family's parameters must all be there (a missing one is a damaged file, not a panic later).
        let (rot, learned, proj, bias) = family.parts();
        Ok(Intervention::Reft(ReftIntervention {
            family,
            rotation: if rot { Some(rotation()?) } else { None },
            learned_source: if learned { Some(projection("learned_source")?) } else { None },
            proj_layer: if proj { Some(projection("proj_layer")?) } else { None },
            learned_bias: if bias { Some(param1("learned_bias")?) } else { None },
            act: hyper.act.unwrap_or_default(),
            dropout: burn::nn::DropoutConfig::new(hyper.dropout.unwrap_or(0.0)).init(),
        }))
    };
    let fixed = |op: FixedOp| -> Result<Intervention<B>> {
        Ok(Intervention::Fixed(if matches!(op, FixedOp::Mean | FixedOp::Noise) { Fixed::with_vector(op, t1("vector")?) } else { Fixed::new(op) }))
    };
    let iv = match config.kind.as_str() {
        "interchange" => fixed(FixedOp::Interchange)?,
        "addition" => fixed(FixedOp::Addition)?,
        "subtraction" => fixed(FixedOp::Subtraction)?,
        "zero" => fixed(FixedOp::Zero)?,
        "mean" => fixed(FixedOp::Mean)?,
        "noise" => fixed(FixedOp::Noise)?,
        "collect" => fixed(FixedOp::Collect)?,
        "das_full" => Intervention::DasFull(DasFull {
            rotation: rotation()?,
            k: hyper.k.ok_or_else(|| corrupt("kind `das_full` needs `hyper.k`".into()))?,
        }),
        "das_low_rank" => Intervention::DasLowRank(DasLowRank { rotation: rotation()? }),
        "das_boundless" => Intervention::Boundless(BoundlessDas {
            rotation: rotation()?,
            boundary: param1("boundary")?,
            temperature: need(hyper.temperature, "temperature")?,
        }),
        "sigmoid_mask" | "sigmoid_mask_rotated" => Intervention::SigmoidMask(SigmoidMask {
            mask: param1("mask")?,
            rotation: if config.kind == "sigmoid_mask_rotated" { Some(rotation()?) } else { None },
            temperature: need(hyper.temperature, "temperature")?,
        }),
        "loreft" => reft(ReftFamily::LoReft)?,
        "noreft" => reft(ReftFamily::NoReft)?,
        "consreft" => reft(ReftFamily::ConsReft)?,
        "lobireft" => reft(ReftFamily::LoBiReft)?,
        "direft" => reft(ReftFamily::DiReft)?,
        "nodireft" => reft(ReftFamily::NoDiReft)?,
        "linear_probe" => Intervention::Probe(LinearProbe { weight: param2("probe.weight")?, bias: param1("probe.bias")? }),
        "steering" => Intervention::Steering(Steering { vector: param1("vector")?, alpha: need(hyper.alpha, "alpha")? }),
        "jumprelu_sae" => Intervention::Sae(JumpReluSae {
            w_enc: param2("W_enc")?,
            b_enc: param1("b_enc")?,
            w_dec: param2("W_dec")?,
            b_dec: param1("b_dec")?,
            threshold: param1("threshold")?,
            latents: hyper.latents.clone().unwrap_or_default(),
        }),
        other => return Err(corrupt(format!("unknown intervention kind `{other}`"))),
    };
    if let Some(w) = iv.width() {
        if w != config.width {
            return Err(corrupt(format!("its tensors act on width {w} but its config says {}", config.width)));
        }
    }
    Ok((iv, config))
}

/// Loads an export and checks it fits `target`; see [`ExportConfig::check_target`].
pub fn load_for<B: Backend>(path: &Path, target: &Target, device: &B::Device) -> Result<(Intervention<B>, ExportConfig)> {
    let (iv, config) = load(path, device)?;
    config.check_target(path, target)?;
    Ok((iv, config))
}
