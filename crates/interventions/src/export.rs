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
//! | `rotation.base`, `rotation.x` | torch-parametrised rotations (`R = (base · Q(x))ᵀ`) | `[d, d]`, `[d, k]` |
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

use burn::tensor::{TensorData, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::error::{InterventionError, Result};
use crate::family::Parts;
use crate::intervention::Intervention;
use crate::placement::Composition;
use crate::set::{InterventionSet, Placed};

/// The metadata key that holds the config.
pub const METADATA_KEY: &str = "ferrovene";
/// The export format version this code writes. Format 2 added torch's orthogonal
/// parametrisation (`rotation.base`, `rotation.x`), which format-1 readers do not know.
pub const FORMAT_VERSION: u32 = 2;
/// The format of a set of interventions at several placements ([`crate::set`]): each member's
/// tensors under its name (`2.block_output#0.R`), the members and slots in `set`. Single
/// interventions are still written as format 2.
pub const SET_FORMAT_VERSION: u32 = 3;
/// The export format versions this code reads: format 1's rotations (`rotation.householder`,
/// `rotation.exp_weight`) load and resume as they did.
pub const FORMATS_READ: [u32; 3] = [1, 2, 3];

pub use crate::family::Hyper;

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
    /// Format 3: the members of a set and where each goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<SetConfig>,
}

/// A set's members (each named; its tensors are `NAME.TENSOR`) and its slots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetConfig {
    /// The members, in order.
    pub members: Vec<MemberConfig>,
    /// Where each member goes.
    pub slots: Vec<crate::set::Slot>,
    /// How the recipe tied parameters (`none`, `positions`, `all`), for people reading the file.
    #[serde(default)]
    pub share: crate::set::Share,
}

/// One member of a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberConfig {
    /// Its name, the prefix of its tensors.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Width of the vectors it acts on.
    pub width: usize,
    /// Kind-specific scalars.
    #[serde(default)]
    pub hyper: Hyper,
}

impl ModelConfig {
    /// The loaded model an intervention is trained on: the spec it was asked for, its hub
    /// revision, architecture and width.
    pub fn of<B: Backend>(loaded: &ferrovene_models::LoadedModel<B>) -> Self {
        use ferrovene_models::Transformer;
        ModelConfig {
            id: loaded.spec.clone(),
            revision: loaded.revision.clone(),
            arch: loaded.model.arch().into(),
            hidden_size: loaded.model.width(),
        }
    }
}

impl ExportConfig {
    /// The config of an export about to be written: where it acts, on which model, and a free
    /// training summary. The kind, width and hyper-parameters are filled in from the intervention
    /// when it is saved.
    pub fn new(placement: PlacementConfig, model: ModelConfig, training: serde_json::Value) -> Self {
        ExportConfig {
            format: FORMAT_VERSION,
            kind: String::new(),
            width: 0,
            hyper: Hyper::default(),
            placement,
            model,
            training,
            set: None,
        }
    }
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
            let info = target
                .sites
                .iter()
                .find(|s| s.site == site)
                .ok_or_else(|| mismatch(format!("the target model has no site `{name}`")))?;
            if let Some(set) = &self.set {
                // Each slot's member acts on its own site's width (sites of one set may differ).
                for slot in set.slots.iter().filter(|s| s.site == site) {
                    let member = set.members.get(slot.member).ok_or_else(|| {
                        mismatch(format!("slot {} names member {}, which the set lacks", slot.name(), slot.member))
                    })?;
                    if self.placement.dims.is_empty() && member.width != 0 && member.width != info.width {
                        return Err(mismatch(format!(
                            "site `{name}` is {} wide in the target; member `{}` placed there acts on {}",
                            info.width, member.name, member.width
                        )));
                    }
                }
            } else if info.width != self.placement.site_width {
                return Err(mismatch(format!(
                    "site `{name}` is {} wide in the target, {} in the export",
                    info.width, self.placement.site_width
                )));
            }
        }
        Ok(())
    }
}

/// The intervention's tensors under their stable names, and its kind-specific scalars.
pub fn tensors_of<B: Backend>(iv: &Intervention<B>) -> (Vec<(String, TensorData)>, Hyper) {
    let w = iv.written();
    (w.tensors, w.hyper)
}

/// A written temporary file waiting to replace the target; dropped without
/// [`PendingExport::commit`], it is removed and the target is untouched
/// ([`ferrovene_models::atomic_file`], the one atomic write of every crate).
pub struct PendingExport(ferrovene_models::atomic_file::PendingFile);

impl PendingExport {
    /// Renames the temporary file over the target (atomic on POSIX file systems) and syncs its
    /// folder.
    pub fn commit(self) -> Result<PathBuf> {
        let path = self.0.path().to_path_buf();
        self.0.commit().map_err(|e| InterventionError::Io { path, source: e })
    }
}

/// Writes the export to a temporary file beside `path` (synced to disk), ready to commit.
/// `config.kind`, `config.width` and `config.hyper` are filled in from the intervention.
pub fn prepare<B: Backend>(iv: &Intervention<B>, mut config: ExportConfig, path: &Path) -> Result<PendingExport> {
    let (tensors, hyper) = tensors_of(iv);
    config.format = FORMAT_VERSION;
    config.kind = iv.kind().to_string();
    config.hyper = hyper;
    config.set = None;
    if let Some(w) = iv.width() {
        config.width = w;
    }
    write_pending(&tensors, &config, path)
}

/// The safetensors file of `tensors` with `config` in its metadata, written beside `path`;
/// refused when a tensor has non-finite values.
fn write_pending(tensors: &[(String, TensorData)], config: &ExportConfig, path: &Path) -> Result<PendingExport> {
    for (name, data) in tensors {
        if let Some(reason) = non_finite(data.as_bytes()) {
            return Err(InterventionError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "not exported: tensor `{name}` {reason} (the training diverged; lower the learning rate)"
                ),
            });
        }
    }
    let json = serde_json::to_string(config).expect("the config serialises");
    let metadata: HashMap<String, String> = [(METADATA_KEY.to_string(), json)].into();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, d.shape.to_vec(), d.as_bytes())
                .expect("f32 data of its own shape");
            (n.clone(), view)
        })
        .collect();
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| InterventionError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("cannot serialise: {e}"),
    })?;
    ferrovene_models::atomic_file::prepare(path, |f| f.write_all(&bytes))
        .map(PendingExport)
        .map_err(|e| InterventionError::Io { path: path.to_path_buf(), source: e })
}

/// Writes the export to `path` atomically (temporary file, then rename).
pub fn save<B: Backend>(iv: &Intervention<B>, config: ExportConfig, path: &Path) -> Result<PathBuf> {
    prepare(iv, config, path)?.commit()
}

/// Writes a set to a temporary file beside `path`, ready to commit: one member at every position
/// of its sites as format 2 (`placement.sites` set to them), anything else as format 3.
pub fn prepare_set<B: Backend>(
    set: &InterventionSet<B>,
    mut config: ExportConfig,
    path: &Path,
) -> Result<PendingExport> {
    config.placement.sites = set.sites().iter().map(ToString::to_string).collect();
    if set.layout.is_plain() {
        return prepare(set.first(), config, path);
    }
    let mut tensors = Vec::new();
    let mut members = Vec::new();
    for (iv, name) in set.members.iter().zip(&set.layout.members) {
        let (t, hyper) = tensors_of(iv);
        tensors.extend(t.into_iter().map(|(n, d)| (format!("{name}.{n}"), d)));
        members.push(MemberConfig {
            name: name.clone(),
            kind: iv.kind().into(),
            width: iv.width().unwrap_or(0),
            hyper,
        });
    }
    config.format = SET_FORMAT_VERSION;
    config.kind = set.kind().to_string();
    config.width = members[0].width;
    config.hyper = Hyper::default();
    let share = config.set.as_ref().map(|s| s.share).unwrap_or_default();
    config.set = Some(SetConfig { members, slots: set.layout.slots.clone(), share });
    write_pending(&tensors, &config, path)
}

/// Writes a set to `path` atomically; see [`prepare_set`].
pub fn save_set<B: Backend>(set: &InterventionSet<B>, config: ExportConfig, path: &Path) -> Result<PathBuf> {
    prepare_set(set, config, path)?.commit()
}

/// An export's bytes and config, checked: a safetensors file with a config of a format this
/// build reads, every f32 tensor finite.
fn open(path: &Path) -> Result<(Vec<u8>, ExportConfig)> {
    let corrupt = |reason: String| InterventionError::Corrupt { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| InterventionError::Io { path: path.to_path_buf(), source: e })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| corrupt(format!("not a ferrovene export: no `{METADATA_KEY}` config in its metadata")))?;
    let config: ExportConfig =
        serde_json::from_str(json).map_err(|e| corrupt(format!("bad `{METADATA_KEY}` config: {e}")))?;
    if !FORMATS_READ.contains(&config.format) {
        return Err(corrupt(format!(
            "export format {} is not supported: this build reads formats {FORMATS_READ:?}; a newer ferrovene wrote it, so load it with that version",
            config.format
        )));
    }
    for (name, view) in st.tensors() {
        if view.dtype() == safetensors::Dtype::F32
            && let Some(reason) = non_finite(view.data())
        {
            return Err(corrupt(format!(
                "tensor `{name}` {reason}: an export with non-finite parameters would only produce NaN; retrain with a lower learning rate"
            )));
        }
    }
    if (config.format == SET_FORMAT_VERSION) != config.set.is_some() {
        return Err(corrupt(format!(
            "format {} with{} a `set` config: format 3 (and only it) lists a set's members",
            config.format,
            if config.set.is_some() { "" } else { "out" }
        )));
    }
    Ok((bytes, config))
}

/// One intervention read from `st`, its tensors named `PREFIX` + the stable names.
fn read_one<B: Backend>(
    path: &Path,
    st: &safetensors::SafeTensors<'_>,
    kind: &str,
    hyper: &Hyper,
    width: usize,
    prefix: &str,
    device: &B::Device,
) -> Result<Intervention<B>> {
    let iv = Intervention::read(kind, &Parts { path, st, kind, hyper, device, prefix })?;
    if let Some(w) = iv.width()
        && w != width
    {
        return Err(InterventionError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{prefix}: its tensors act on width {w} but its config says {width}"),
        });
    }
    Ok(iv)
}

/// Reads an export: the intervention (parameters trainable again where they were) and its config.
pub fn load<B: Backend>(path: &Path, device: &B::Device) -> Result<(Intervention<B>, ExportConfig)> {
    let (bytes, config) = open(path)?;
    if let Some(set) = &config.set {
        return Err(InterventionError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "this export holds {} interventions at {} placements ({}): load it as a set (`export::load_set`), as `trainer eval` and `trainer apply` do",
                set.members.len(),
                set.slots.len(),
                set.slots.iter().map(crate::set::Slot::name).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| InterventionError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("not a valid safetensors file: {e}"),
    })?;
    let iv = read_one(path, &st, &config.kind, &config.hyper, config.width, "", device)?;
    Ok((iv, config))
}

/// Reads any export as a set: format 3's members and slots, or a single intervention at each of
/// its `placement.sites` at every position (tied across them).
pub fn load_set<B: Backend>(path: &Path, device: &B::Device) -> Result<(InterventionSet<B>, ExportConfig)> {
    let (bytes, config) = open(path)?;
    let corrupt = |reason: String| InterventionError::Corrupt { path: path.to_path_buf(), reason };
    let Some(set) = &config.set else {
        let (iv, config) = load(path, device)?;
        let sites = config
            .placement
            .sites
            .iter()
            .map(|s| s.parse::<ferrovene_models::Site>().map_err(|e| corrupt(format!("placement.sites: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        let layout = crate::set::Layout::new(&sites, 1, crate::set::Share::All)
            .map_err(|e| corrupt(format!("placement.sites: {e}")))?;
        return Ok((InterventionSet::new(vec![iv], layout)?, config));
    };
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
    let members = set
        .members
        .iter()
        .map(|m| read_one(path, &st, &m.kind, &m.hyper, m.width, &format!("{}.", m.name), device))
        .collect::<Result<Vec<_>>>()?;
    let layout =
        crate::set::Layout { slots: set.slots.clone(), members: set.members.iter().map(|m| m.name.clone()).collect() };
    let iv = InterventionSet::new(members, layout).map_err(|e| corrupt(format!("its `set` config: {e}")))?;
    Ok((iv, config))
}

/// `Some("has N non-finite values (the first, NaN, at index i)")` for little-endian f32 bytes
/// with NaN or infinite values.
fn non_finite(bytes: &[u8]) -> Option<String> {
    let values = ferrovene_models::weights::f32_from_le(bytes);
    let mut bad = values.into_iter().enumerate().filter(|(_, v)| !v.is_finite());
    let (first, value) = bad.next()?;
    Some(format!("has {} non-finite values (the first, {value}, at index {first})", 1 + bad.count()))
}

/// Loads an export and checks it fits `target`; see [`ExportConfig::check_target`].
pub fn load_for<B: Backend>(
    path: &Path,
    target: &Target,
    device: &B::Device,
) -> Result<(Intervention<B>, ExportConfig)> {
    let (iv, config) = load(path, device)?;
    config.check_target(path, target)?;
    Ok((iv, config))
}
