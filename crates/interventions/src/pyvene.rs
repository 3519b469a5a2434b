//! Folders that pyvene 0.1.8's `IntervenableModel.save` and pyreft 0.1.0's `ReftModel.save`
//! write, read into an [`InterventionSet`]: `config.json` (pyvene's `IntervenableConfig`:
//! `representations` as positional lists, `intervention_types` as class-name strings,
//! `sorted_keys`) and one torch pickle per intervention, `intkey_<key>.bin`, read with burn's own
//! reader (burn-store's `PytorchReader`).
//!
//! What each class keeps, and what it becomes:
//!
//! | class | state dict | here |
//! | --- | --- | --- |
//! | `LowRankRotatedSpaceIntervention` | `rotate_layer.parametrizations.weight.original` (`X`, `d × k`), `…weight.0.base` (`d × d`) | `das_low_rank`, torch's parametrisation as it was |
//! | `RotatedSpaceIntervention` | the same, `d × d`, and `interchange_dim` | `das_full` with `k = interchange_dim` |
//! | `BoundlessRotatedSpaceIntervention` | the same, `intervention_boundaries`, `temperature` | `das_boundless` |
//! | `VanillaIntervention` | nothing learned | `interchange` |
//! | `LoreftIntervention` (pyreft) | `weight`, `bias` (`learned_source`), `rotate_layer` (`W`, materialised) | `loreft`, with `base` an orthonormal completion of `W` and `X = −I` (torch's start, where `W = base[:, :k]`), so it trains on |
//! | `NoreftIntervention`, `NodireftIntervention` | `proj_layer.weight` (`.bias` with `add_bias`), `learned_source.weight`, `.bias` | `noreft`, `nodireft` |
//! | `DireftIntervention` | `rotate_layer.parametrizations…`, `learned_source.weight`, `.bias` | `direft` |
//! | `ConsreftIntervention`, `LobireftIntervention` | `rotate_layer.parametrizations…`, `learned_source` (`[k]`) | `consreft`, `lobireft` |
//! | `SigmoidMaskRotatedSpaceIntervention` | `rotate_layer.parametrizations…` (`d × d`), `masks`, `temperature` | `sigmoid_mask` with its rotation |
//! | `SigmoidMaskIntervention` | `mask`, `temperature` | `sigmoid_mask` in the neuron basis |
//!
//! pyvene's component names are ours; its layers are ours. A representation on another unit than
//! positions (`h.pos`), a class not above, or a key a class needs and lacks is refused, naming
//! the file and the key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::DropoutConfig;
use burn::tensor::{Tensor, TensorData, backend::Backend};
use ferrovene_models::Site;
use serde_json::Value;

use crate::activation::Activation;
use crate::das::{BoundlessDas, DasFull, DasLowRank, SigmoidMask};
use crate::error::{InterventionError, Result};
use crate::fixed::{Fixed, FixedOp};
use crate::intervention::Intervention;
use crate::orthogonal::{Orthogonal, TorchOrthogonal};
use crate::reft::{Projection, ReftFamily, ReftIntervention};
use crate::set::{InterventionSet, Layout, Slot};

/// A pyvene or pyreft folder, read.
pub struct PyveneFolder<B: Backend> {
    /// One member per representation, at its site, at every intervened position.
    pub set: InterventionSet<B>,
    /// pyvene's keys of the interventions (`layer_1_comp_block_output_unit_pos_nunit_1#0`).
    pub keys: Vec<String>,
    /// Their classes (`LowRankRotatedSpaceIntervention`, …).
    pub classes: Vec<String>,
    /// pyvene's `mode` (`parallel` or `serial`).
    pub mode: String,
}

/// The class name in pyvene's `"<class 'pyvene.models.interventions.X'>"` (or a bare name).
fn class_name(t: &str) -> &str {
    let t = t.trim_start_matches("<class '").trim_end_matches("'>");
    t.rsplit('.').next().unwrap_or(t)
}

/// A torch pickle's tensors as f32 values and shapes.
struct Pickle {
    path: PathBuf,
    tensors: HashMap<String, (Vec<f32>, Vec<usize>)>,
}

impl Pickle {
    fn read(path: &Path) -> Result<Self> {
        let corrupt = |reason: String| InterventionError::Corrupt { path: path.to_path_buf(), reason };
        let reader = burn_store::pytorch::PytorchReader::new(path)
            .map_err(|e| corrupt(format!("not a torch file pyvene saved: {e:?}")))?;
        // burn-store reads each storage row-major and drops the strides: views (torch keeps the
        // orthogonal parametrisation's `base` as a transpose) are put back in order here.
        let layouts = crate::torch_strides::file_layouts(path).map_err(corrupt)?;
        let mut tensors = HashMap::new();
        for (name, snapshot) in reader.into_tensors() {
            let data = snapshot.to_data().map_err(|e| corrupt(format!("tensor `{name}`: {e:?}")))?;
            let shape = data.shape.to_vec();
            let mut values: Vec<f32> = data
                .convert::<f32>()
                .to_vec()
                .map_err(|e| corrupt(format!("tensor `{name}` is not numeric: {e:?}")))?;
            if let Some(layout) = layouts.get(&name) {
                values = crate::torch_strides::fix_layout(values, layout)
                    .map_err(|e| corrupt(format!("tensor `{name}`: {e}")))?;
            }
            tensors.insert(name, (values, shape));
        }
        Ok(Pickle { path: path.to_path_buf(), tensors })
    }

    fn corrupt(&self, reason: String) -> InterventionError {
        InterventionError::Corrupt { path: self.path.clone(), reason }
    }

    /// Tensor `name`, which the class needs.
    fn need(&self, name: &str, class: &str) -> Result<&(Vec<f32>, Vec<usize>)> {
        self.tensors.get(name).ok_or_else(|| {
            let mut have: Vec<&String> = self.tensors.keys().collect();
            have.sort();
            self.corrupt(format!("{class} needs `{name}`; the file has {have:?}"))
        })
    }

    fn t1<B: Backend>(&self, name: &str, class: &str, device: &B::Device) -> Result<Tensor<B, 1>> {
        let (v, _) = self.need(name, class)?;
        Ok(Tensor::from_data(TensorData::new(v.clone(), [v.len()]), device))
    }

    fn t2<B: Backend>(&self, name: &str, class: &str, device: &B::Device) -> Result<Tensor<B, 2>> {
        let (v, s) = self.need(name, class)?;
        let [r, c] = <[usize; 2]>::try_from(s.as_slice())
            .map_err(|_| self.corrupt(format!("`{name}` has shape {s:?}, expected 2 dimensions")))?;
        Ok(Tensor::from_data(TensorData::new(v.clone(), [r, c]), device))
    }

    /// A scalar, as a number.
    fn scalar(&self, name: &str, class: &str) -> Result<f64> {
        let (v, _) = self.need(name, class)?;
        v.first().map(|x| *x as f64).ok_or_else(|| self.corrupt(format!("`{name}` is empty")))
    }

    /// torch's orthogonal parametrisation of `rotate_layer`.
    fn rotation<B: Backend>(&self, class: &str, device: &B::Device) -> Result<Orthogonal<B>> {
        let base = self.t2::<B>("rotate_layer.parametrizations.weight.0.base", class, device)?;
        let x = self.t2::<B>("rotate_layer.parametrizations.weight.original", class, device)?;
        let ([d, d2], [dx, _]) = (base.dims(), x.dims());
        if d != d2 || dx != d {
            return Err(self.corrupt(format!(
                "`…weight.0.base` is {:?} and `…weight.original` {:?}: expected d × d and d × k",
                base.dims(),
                x.dims()
            )));
        }
        Ok(Orthogonal::Torch(TorchOrthogonal::new(base, x)))
    }

    fn projection<B: Backend>(&self, prefix: &str, class: &str, device: &B::Device) -> Result<Projection<B>> {
        let weight = self.t2::<B>(&format!("{prefix}.weight"), class, device)?;
        let bias = match self.tensors.get(&format!("{prefix}.bias")) {
            Some(_) => self.t1::<B>(&format!("{prefix}.bias"), class, device)?,
            // pyreft's proj_layer without `add_bias`.
            None => Tensor::zeros([weight.dims()[0]], device),
        };
        Ok(Projection { weight: Param::from_tensor(weight), bias: Param::from_tensor(bias) })
    }
}

fn reft<B: Backend>(family: ReftFamily, rotation: Option<Orthogonal<B>>) -> ReftIntervention<B> {
    ReftIntervention {
        family,
        rotation,
        learned_source: None,
        proj_layer: None,
        learned_bias: None,
        act: Activation::Identity,
        dropout: DropoutConfig::new(0.0).init(),
    }
}

/// One intervention of class `class` from its pickle.
fn intervention<B: Backend>(class: &str, p: &Pickle, device: &B::Device) -> Result<Intervention<B>> {
    Ok(match class {
        "LowRankRotatedSpaceIntervention" => {
            Intervention::DasLowRank(DasLowRank { rotation: p.rotation(class, device)? })
        }
        "RotatedSpaceIntervention" => Intervention::DasFull(DasFull {
            rotation: p.rotation(class, device)?,
            k: p.scalar("interchange_dim", class)? as usize,
        }),
        "BoundlessRotatedSpaceIntervention" => Intervention::Boundless(BoundlessDas {
            rotation: p.rotation(class, device)?,
            boundary: Param::from_tensor(p.t1("intervention_boundaries", class, device)?),
            temperature: p.scalar("temperature", class)?,
        }),
        "VanillaIntervention" => Intervention::Fixed(Fixed::new(FixedOp::Interchange)),
        "SigmoidMaskRotatedSpaceIntervention" => Intervention::SigmoidMask(SigmoidMask {
            mask: Param::from_tensor(p.t1("masks", class, device)?),
            rotation: Some(p.rotation(class, device)?),
            temperature: p.scalar("temperature", class)?,
        }),
        "SigmoidMaskIntervention" => Intervention::SigmoidMask(SigmoidMask {
            mask: Param::from_tensor(p.t1("mask", class, device)?),
            rotation: None,
            temperature: p.scalar("temperature", class)?,
        }),
        "LoreftIntervention" => {
            let (w, s) = p.need("rotate_layer", class)?;
            let [d, k] = <[usize; 2]>::try_from(s.as_slice())
                .map_err(|_| p.corrupt(format!("`rotate_layer` has shape {s:?}, expected d × k")))?;
            let mut iv =
                reft(ReftFamily::LoReft, Some(Orthogonal::Torch(TorchOrthogonal::starting_at(w, d, k, device))));
            // pyreft writes learned_source's own state dict under `weight` and `bias`.
            let (weight, bias) = (p.t2::<B>("weight", class, device)?, p.t1::<B>("bias", class, device)?);
            iv.learned_source = Some(Projection { weight: Param::from_tensor(weight), bias: Param::from_tensor(bias) });
            Intervention::Reft(iv)
        }
        "DireftIntervention" => {
            let mut iv = reft(ReftFamily::DiReft, Some(p.rotation(class, device)?));
            iv.learned_source = Some(p.projection("learned_source", class, device)?);
            Intervention::Reft(iv)
        }
        "NoreftIntervention" | "NodireftIntervention" => {
            let family = if class == "NoreftIntervention" { ReftFamily::NoReft } else { ReftFamily::NoDiReft };
            let mut iv = reft(family, None);
            iv.learned_source = Some(p.projection("learned_source", class, device)?);
            iv.proj_layer = Some(p.projection("proj_layer", class, device)?);
            Intervention::Reft(iv)
        }
        "ConsreftIntervention" | "LobireftIntervention" => {
            let family = if class == "ConsreftIntervention" { ReftFamily::ConsReft } else { ReftFamily::LoBiReft };
            let mut iv = reft(family, Some(p.rotation(class, device)?));
            iv.learned_bias = Some(Param::from_tensor(p.t1("learned_source", class, device)?));
            Intervention::Reft(iv)
        }
        other => {
            return Err(p.corrupt(format!(
                "class `{other}` is not read here (LowRankRotatedSpace, RotatedSpace, BoundlessRotatedSpace, SigmoidMaskRotatedSpace, SigmoidMask, Vanilla; pyreft's Loreft, Noreft, Consreft, Lobireft, Direft, Nodireft)"
            )));
        }
    })
}

/// Reads a folder pyvene or pyreft saved.
pub fn read_folder<B: Backend>(dir: &Path, device: &B::Device) -> Result<PyveneFolder<B>> {
    let cfg_path = dir.join("config.json");
    let bad = |reason: String| InterventionError::Corrupt { path: cfg_path.clone(), reason };
    let text =
        std::fs::read_to_string(&cfg_path).map_err(|e| InterventionError::Io { path: cfg_path.clone(), source: e })?;
    let cfg: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let list = |key: &str| -> Result<&Vec<Value>> {
        cfg.get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("no `{key}` list (pyvene's IntervenableConfig has one)")))
    };
    let (reps, types, keys) = (list("representations")?, list("intervention_types")?, list("sorted_keys")?);
    if reps.len() != keys.len() || (types.len() != keys.len() && types.len() != 1) {
        return Err(bad(format!(
            "{} representations, {} intervention types and {} keys: pyvene writes one of each per intervention",
            reps.len(),
            types.len(),
            keys.len()
        )));
    }
    let (mut members, mut slots, mut classes, mut key_names) = (vec![], vec![], vec![], vec![]);
    for (i, rep) in reps.iter().enumerate() {
        let at = |what: &str| format!("representations[{i}] ({what})");
        let rep = rep.as_array().ok_or_else(|| bad(format!("{} is not a list", at("the whole"))))?;
        let layer =
            rep.first().and_then(Value::as_u64).ok_or_else(|| bad(format!("{}: not a layer number", at("layer"))))?;
        let component =
            rep.get(1).and_then(Value::as_str).ok_or_else(|| bad(format!("{}: not a name", at("component"))))?;
        let unit = rep.get(2).and_then(Value::as_str).unwrap_or("pos");
        if unit != "pos" {
            return Err(bad(format!(
                "{}: unit `{unit}` (pyvene's head units) is not read here; only `pos`",
                at("unit")
            )));
        }
        let site: Site = format!("{layer}.{component}")
            .parse()
            .map_err(|e| bad(format!("{}: component `{component}` has no site here: {e}", at("component"))))?;
        let class = class_name(types.get(i).or(types.first()).and_then(Value::as_str).unwrap_or("")).to_string();
        let key = keys[i].as_str().ok_or_else(|| bad(format!("sorted_keys[{i}] is not a string")))?;
        let file = dir.join(format!("intkey_{key}.bin"));
        let iv = if class == "VanillaIntervention" && !file.exists() {
            Intervention::Fixed(Fixed::new(FixedOp::Interchange))
        } else {
            intervention::<B>(&class, &Pickle::read(&file)?, device)?
        };
        slots.push(Slot { site, position: None, member: members.len() });
        members.push(iv);
        classes.push(class);
        key_names.push(key.to_string());
    }
    // Member names: the site, with the representation's index where a site has several.
    let names: Vec<String> = slots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if slots.iter().filter(|o| o.site == s.site).count() > 1 {
                format!("{}@{i}", s.site)
            } else {
                s.site.to_string()
            }
        })
        .collect();
    let set = InterventionSet::new(members, Layout { slots, members: names })?;
    let mode = cfg.get("mode").and_then(Value::as_str).unwrap_or("parallel").to_string();
    Ok(PyveneFolder { set, keys: key_names, classes, mode })
}
