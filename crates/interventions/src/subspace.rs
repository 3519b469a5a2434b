//! Restricting an intervention to a subspace of a site: a set of dims, or whole heads.

use burn::tensor::{Bool, Int, Tensor, backend::Backend};

use crate::error::{InterventionError, Result};
use crate::intervention::Intervention;

/// The dims of heads `heads` (each `head_dim` wide) in a `[…, heads·head_dim]` activation.
pub fn head_dims(heads: &[usize], head_dim: usize) -> Vec<usize> {
    heads.iter().flat_map(|h| h * head_dim..(h + 1) * head_dim).collect()
}

/// Applies `iv` to dims `dims` of `base` (and `source`), `[batch, k, width]`; the other dims are
/// the base's. An empty `dims` is a no-op.
pub fn apply_on_dims<B: Backend>(
    iv: &Intervention<B>,
    base: Tensor<B, 3>,
    source: Option<Tensor<B, 3>>,
    dims: &[usize],
    width: usize,
) -> Result<Tensor<B, 3>> {
    if dims.is_empty() {
        return Ok(base);
    }
    if let Some(&bad) = dims.iter().find(|&&d| d >= width) {
        return Err(InterventionError::BadParameter {
            kind: iv.kind().into(),
            parameter: "subspace".into(),
            reason: format!("dim {bad} is outside the site's width {width}"),
        });
    }
    let device = base.device();
    let idx = Tensor::<B, 1, Int>::from_ints(dims.iter().map(|&d| d as i64).collect::<Vec<_>>().as_slice(), &device);
    let sub_base = base.clone().select(2, idx.clone());
    let sub_source = source.map(|s| s.select(2, idx.clone()));
    let out = iv.apply(sub_base, sub_source)?;
    let placed = base.zeros_like().select_assign(2, idx, out, burn::tensor::IndexingUpdateOp::Add);
    Ok(replace_dims(base, placed, dims))
}

/// `into` with dims `dims` taken from `from` (both `[batch, k, width]`), exactly.
pub fn replace_dims<B: Backend>(into: Tensor<B, 3>, from: Tensor<B, 3>, dims: &[usize]) -> Tensor<B, 3> {
    let width = into.dims()[2];
    let chosen: Vec<bool> = (0..width).map(|d| dims.contains(&d)).collect();
    let mask = Tensor::<B, 1, Bool>::from_bool(burn::tensor::TensorData::from(chosen.as_slice()), &into.device())
        .unsqueeze::<3>()
        .expand(into.dims());
    into.mask_where(mask, from)
}

/// A site split into named parts that different causal variables own (pyvene's
/// `subspace_partition`), e.g. `{"WX": 0..8, "YZ": 8..16}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Partition {
    parts: std::collections::BTreeMap<String, Vec<usize>>,
}

impl Partition {
    /// A partition from named dim lists; parts must not overlap.
    pub fn new(parts: impl IntoIterator<Item = (String, Vec<usize>)>) -> Result<Self> {
        let parts: std::collections::BTreeMap<String, Vec<usize>> = parts.into_iter().collect();
        let mut seen = std::collections::BTreeMap::new();
        for (name, dims) in &parts {
            for d in dims {
                if let Some(other) = seen.insert(*d, name.clone()) {
                    return Err(InterventionError::BadParameter {
                        kind: "partition".into(),
                        parameter: name.clone(),
                        reason: format!("dim {d} is also in part `{other}`; parts must not overlap"),
                    });
                }
            }
        }
        Ok(Partition { parts })
    }

    /// The dims of part `name`, or an error listing the parts.
    pub fn dims(&self, name: &str) -> Result<&[usize]> {
        self.parts.get(name).map(Vec::as_slice).ok_or_else(|| InterventionError::BadParameter {
            kind: "partition".into(),
            parameter: name.into(),
            reason: format!("no such part; parts: {}", self.parts.keys().cloned().collect::<Vec<_>>().join(", ")),
        })
    }
}
