//! An [`InterventionSet`] written as the folder pyvene 0.1.8's `IntervenableModel.save` (or
//! pyreft 0.1.0's `ReftModel.save`) writes, for `IntervenableModel.load(dir, model)` /
//! `ReftModel.load(dir, model)`: `config.json` (pyvene's `IntervenableConfig`) and one
//! `intkey_<key>.bin` per intervention ([`crate::torch_save`]), keyed as pyvene keys its
//! interventions (`layer_1_comp_block_output_unit_pos_nunit_1#0`).
//!
//! | ours | class | state dict |
//! | --- | --- | --- |
//! | `das_low_rank` | `LowRankRotatedSpaceIntervention` | `embed_dim`, `interchange_dim`, `rotate_layer.parametrizations.weight.original` (`X`), `…weight.0.base` |
//! | `das_full` | `RotatedSpaceIntervention` | the same, `interchange_dim = k` |
//! | `das_boundless` | `BoundlessRotatedSpaceIntervention` | the same, `intervention_boundaries`, `temperature`, `intervention_population` |
//! | `interchange` | `VanillaIntervention` | `embed_dim`, `interchange_dim` |
//! | `sigmoid_mask` | `SigmoidMaskRotatedSpaceIntervention` (with a rotation), `SigmoidMaskIntervention` | `embed_dim`, `interchange_dim`, `masks` (`mask`), `temperature`, the rotation's two tensors |
//! | `loreft` | pyreft's `LoreftIntervention` | `weight`, `bias`, `rotate_layer` (`W`, materialised) |
//! | `direft` | pyreft's `DireftIntervention` | `embed_dim`, `interchange_dim`, the rotation's two tensors, `learned_source.weight`, `.bias` |
//! | `consreft`, `lobireft` | pyreft's `ConsreftIntervention`, `LobireftIntervention` | `embed_dim`, `interchange_dim`, `learned_source` (`c`, `[k]`), the rotation's two tensors |
//! | `noreft`, `nodireft` | pyreft's `NoreftIntervention`, `NodireftIntervention` | `embed_dim`, `interchange_dim`, `proj_layer.weight`, `.bias`, `learned_source.weight`, `.bias` |
//!
//! A rotation kept in torch's parametrisation is written as it is; any other (format 1's
//! Householder or exponential, a fixed `R`) as `base` = an orthonormal completion of `W` and
//! `X = −I`, torch's start, where its parametrisation gives `W = base[:, :k]` exactly.
//!
//! pyreft 0.1.0's own load cannot rebuild every family as saved: it builds `learned_source` and
//! `proj_layer` in bfloat16 (no `dtype` reaches the constructor from `config.json`), and
//! `NoreftIntervention`/`NodireftIntervention` need an `add_bias` argument that `config.json`
//! cannot carry (`ReftModel.load` raises `KeyError: 'add_bias'`, on pyreft's own folders too).
//! `docs/src/exports.md` says what to call instead; `benches/pyvene/export_check.py` does it.

use std::path::Path;

use burn::tensor::{Tensor, backend::Backend};
use serde_json::{Value, json};

use crate::activation::Activation;
use crate::error::{InterventionError, Result};
use crate::family::Family;
use crate::fixed::FixedOp;
use crate::intervention::Intervention;
use crate::orthogonal::{Orthogonal, orthonormal_completion, start_x};
use crate::reft::{Projection, ReftFamily, ReftIntervention};
use crate::set::InterventionSet;
use crate::torch_save::{Entry, Values};

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap_or_default()
}

fn f32s<B: Backend, const D: usize>(key: &str, t: Tensor<B, D>) -> Entry {
    let shape = t.dims().to_vec();
    (key.into(), Values::F32(values(t)), shape)
}

/// `W = Rᵀ` (`d × k`, row-major) of a rotation `R` (`k × d`).
fn w_of<B: Backend>(r: &Orthogonal<B>) -> Vec<f32> {
    let [k, d] = r.dims();
    let rr = values(r.matrix());
    (0..d * k).map(|i| rr[(i % k) * d + i / k]).collect()
}

fn scalar(key: &str, v: i64) -> Entry {
    (key.into(), Values::I64(vec![v]), vec![])
}

/// torch's `base` (`d × d`) and `X` (`d × k`) for a rotation.
fn parametrisation<B: Backend>(r: &Orthogonal<B>) -> (Vec<Entry>, usize, usize) {
    let [k, d] = r.dims();
    let (base, x) = match r {
        Orthogonal::Torch(t) => (values(t.base.val()), values(t.x.val())),
        // Torch's start on a base completing W, which gives W back exactly.
        other => (orthonormal_completion(&w_of(other), d, k), start_x(d, k)),
    };
    let entries = vec![
        ("rotate_layer.parametrizations.weight.original".into(), Values::F32(x), vec![d, k]),
        ("rotate_layer.parametrizations.weight.0.base".into(), Values::F32(base), vec![d, d]),
    ];
    (entries, k, d)
}

/// pyvene's class of `iv`, its low-rank dimension, and its state dict.
fn state<B: Backend>(iv: &Intervention<B>, width: usize) -> Result<(&'static str, Option<usize>, Vec<Entry>)> {
    let d = width as i64;
    Ok(match iv {
        Intervention::DasLowRank(i) => {
            let (mut e, k, _) = parametrisation(&i.rotation);
            e.splice(0..0, [scalar("embed_dim", d), scalar("interchange_dim", d)]);
            ("pyvene.models.interventions.LowRankRotatedSpaceIntervention", Some(k), e)
        }
        Intervention::DasFull(i) => {
            let (mut e, _, _) = parametrisation(&i.rotation);
            e.splice(0..0, [scalar("embed_dim", d), scalar("interchange_dim", i.k as i64)]);
            ("pyvene.models.interventions.RotatedSpaceIntervention", None, e)
        }
        Intervention::Boundless(i) => {
            let (rot, _, _) = parametrisation(&i.rotation);
            let mut e = vec![
                f32s("intervention_boundaries", i.boundary.val()),
                ("temperature".into(), Values::F32(vec![i.temperature as f32]), vec![]),
                ("intervention_population".into(), Values::I64((0..d).collect()), vec![width]),
                scalar("embed_dim", d),
                scalar("interchange_dim", d),
            ];
            e.extend(rot);
            ("pyvene.models.interventions.BoundlessRotatedSpaceIntervention", None, e)
        }
        Intervention::Fixed(f) if f.op == FixedOp::Interchange => (
            "pyvene.models.interventions.VanillaIntervention",
            None,
            vec![scalar("embed_dim", d), scalar("interchange_dim", d)],
        ),
        Intervention::SigmoidMask(m) => {
            let mut e = vec![scalar("embed_dim", d), scalar("interchange_dim", d)];
            let temperature = ("temperature".into(), Values::F32(vec![m.temperature as f32]), vec![]);
            match &m.rotation {
                Some(rot) => {
                    e.extend([f32s("masks", m.mask.val()), temperature]);
                    e.extend(parametrisation(rot).0);
                    ("pyvene.models.interventions.SigmoidMaskRotatedSpaceIntervention", None, e)
                }
                None => {
                    e.extend([f32s("mask", m.mask.val()), temperature]);
                    ("pyvene.models.interventions.SigmoidMaskIntervention", None, e)
                }
            }
        }
        Intervention::Reft(r) => reft_state(r, width)?,
        other => {
            return Err(InterventionError::BadParameter {
                kind: other.kind().into(),
                parameter: "kind".into(),
                reason: "not written as a pyvene/pyreft folder yet (das_low_rank, das_full, das_boundless, sigmoid_mask, interchange and the six ReFT families are)".into(),
            });
        }
    })
}

fn missing(kind: &str, part: &str) -> InterventionError {
    InterventionError::BadParameter {
        kind: kind.into(),
        parameter: part.into(),
        reason: format!("a {kind} without its {part}"),
    }
}

/// pyreft's class, rank and state dict of a ReFT intervention. LoReFT writes its own compact
/// state dict (`weight`, `bias`, the materialised `rotate_layer`); the other families keep
/// torch's default one: pyvene's `embed_dim`/`interchange_dim` buffers, then their parameters.
fn reft_state<B: Backend>(r: &ReftIntervention<B>, width: usize) -> Result<(&'static str, Option<usize>, Vec<Entry>)> {
    let kind = r.kind();
    if r.act != Activation::Identity {
        return Err(InterventionError::BadParameter {
            kind: kind.into(),
            parameter: "act".into(),
            reason: format!(
                "pyvene's config.json cannot carry pyreft's `act_fn`, so pyreft would rebuild this {kind} without its {:?}; keep it as safetensors",
                r.act
            ),
        });
    }
    let d = width as i64;
    let projection = |name: &str, p: Option<&Projection<B>>| -> Result<Vec<Entry>> {
        let p = p.ok_or_else(|| missing(kind, name))?;
        Ok(vec![f32s(&format!("{name}.weight"), p.weight.val()), f32s(&format!("{name}.bias"), p.bias.val())])
    };
    let mut e = vec![scalar("embed_dim", d), scalar("interchange_dim", d)];
    let (class, k) = match r.family {
        ReftFamily::LoReft => {
            let rot = r.rotation.as_ref().ok_or_else(|| missing(kind, "rotation"))?;
            let [k, dd] = rot.dims();
            let mut e = projection("learned_source", r.learned_source.as_ref())?;
            for entry in &mut e {
                entry.0 = entry.0.trim_start_matches("learned_source.").into();
            }
            e.push(("rotate_layer".into(), Values::F32(w_of(rot)), vec![dd, k]));
            return Ok(("pyreft.interventions.LoreftIntervention", Some(k), e));
        }
        ReftFamily::DiReft => {
            let rot = r.rotation.as_ref().ok_or_else(|| missing(kind, "rotation"))?;
            let (entries, k, _) = parametrisation(rot);
            e.extend(entries);
            e.extend(projection("learned_source", r.learned_source.as_ref())?);
            ("pyreft.interventions.DireftIntervention", k)
        }
        family @ (ReftFamily::ConsReft | ReftFamily::LoBiReft) => {
            let rot = r.rotation.as_ref().ok_or_else(|| missing(kind, "rotation"))?;
            let bias = r.learned_bias.as_ref().ok_or_else(|| missing(kind, "learned_bias"))?;
            let (entries, k, _) = parametrisation(rot);
            e.push(f32s("learned_source", bias.val()));
            e.extend(entries);
            let class = if family == ReftFamily::ConsReft {
                "pyreft.interventions.ConsreftIntervention"
            } else {
                "pyreft.interventions.LobireftIntervention"
            };
            (class, k)
        }
        family @ (ReftFamily::NoReft | ReftFamily::NoDiReft) => {
            e.extend(projection("proj_layer", r.proj_layer.as_ref())?);
            e.extend(projection("learned_source", r.learned_source.as_ref())?);
            let k = r.proj_layer.as_ref().map_or(0, |p| p.weight.dims()[0]);
            let class = if family == ReftFamily::NoReft {
                "pyreft.interventions.NoreftIntervention"
            } else {
                "pyreft.interventions.NodireftIntervention"
            };
            (class, k)
        }
    };
    Ok((class, Some(k), e))
}

/// Writes `set` (each member at one site, at every position) into `dir` as pyvene saves;
/// `widths` gives each site's width. Returns the keys written.
pub fn write_folder<B: Backend>(
    set: &InterventionSet<B>,
    widths: &dyn Fn(ferrovene_models::Site) -> usize,
    dir: &Path,
) -> Result<Vec<String>> {
    let io = |e: std::io::Error| InterventionError::Io { path: dir.to_path_buf(), source: e };
    std::fs::create_dir_all(dir).map_err(io)?;
    let (mut reps, mut types, mut dims, mut constant, mut keys) = (vec![], vec![], vec![], vec![], vec![]);
    for (m, iv) in set.members.iter().enumerate() {
        let slots: Vec<_> = set.layout.slots.iter().filter(|s| s.member == m).collect();
        let [slot] = slots.as_slice() else {
            return Err(InterventionError::BadParameter {
                kind: iv.kind().into(),
                parameter: "placements".into(),
                reason: format!(
                    "member {} is placed {} times; pyvene folders hold one placement per intervention",
                    set.layout.members[m],
                    slots.len()
                ),
            });
        };
        if slot.position.is_some() {
            return Err(InterventionError::BadParameter {
                kind: iv.kind().into(),
                parameter: "placements".into(),
                reason: format!(
                    "{} acts at one of several positions (share = \"none\"); pyvene applies an intervention where it is told, so export sets shared across positions",
                    slot.name()
                ),
            });
        }
        let width = widths(slot.site);
        let (class, rank, entries) = state(iv, width)?;
        let base_key = format!("layer_{}_comp_{}_unit_pos_nunit_1", slot.site.layer, slot.site.component);
        let n = keys.iter().filter(|k: &&String| k.starts_with(&format!("{base_key}#"))).count();
        let key = format!("{base_key}#{n}");
        crate::torch_save::write(&dir.join(format!("intkey_{key}.bin")), &format!("intkey_{key}"), &entries)
            .map_err(io)?;
        let mut rep =
            vec![json!(slot.site.layer), json!(slot.site.component.name()), json!("pos"), json!(1), json!(rank)];
        rep.extend(std::iter::repeat_n(Value::Null, 9));
        reps.push(Value::Array(rep));
        types.push(format!("<class '{class}'>"));
        dims.push(width);
        constant.push(!iv.needs_source());
        keys.push(key);
    }
    let config = json!({
        "intervention_constant_sources": constant, "intervention_dimensions": dims, "intervention_types": types,
        "mode": "parallel", "representations": reps, "sorted_keys": keys, "transformers_version": "4.45.1",
    });
    let text = serde_json::to_string_pretty(&config).expect("the config serialises");
    std::fs::write(dir.join("config.json"), text).map_err(io)?;
    Ok(keys)
}
