//! Named places inside a model where an intervention may read or write, with pyvene's names.

use std::fmt;
use std::str::FromStr;

/// A kind of activation inside a layer, named as pyvene names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// Token (plus position / token-type) embeddings, before the first block. Layer is always 0.
    Embeddings,
    /// The residual stream entering a block.
    BlockInput,
    /// The residual stream leaving a block.
    BlockOutput,
    /// The (normed) input of the attention sublayer.
    AttentionInput,
    /// The attention sublayer's output, after its output projection.
    AttentionOutput,
    /// The input of the attention output projection (heads concatenated).
    AttentionValueOutput,
    /// Same activation as `AttentionValueOutput`, with the head as the unit.
    HeadAttentionValueOutput,
    /// Query projection output (before rotary embedding), heads concatenated.
    QueryOutput,
    /// Key projection output (before rotary embedding), heads concatenated.
    KeyOutput,
    /// Value projection output, heads concatenated.
    ValueOutput,
    /// Query projection output with the head as the unit.
    HeadQueryOutput,
    /// Key projection output with the head as the unit.
    HeadKeyOutput,
    /// Value projection output with the head as the unit.
    HeadValueOutput,
    /// The (normed) input of the MLP sublayer.
    MlpInput,
    /// The MLP's hidden activation (after the nonlinearity / gating), input of its down projection.
    MlpActivation,
    /// The MLP sublayer's output, before it joins the residual stream.
    MlpOutput,
    /// A hidden layer's output in the synthetic MLP (after its nonlinearity).
    Hidden,
}

/// Every component with its pyvene name, in a fixed order.
pub const COMPONENTS: [(Component, &str); 17] = [
    (Component::Embeddings, "embeddings"),
    (Component::BlockInput, "block_input"),
    (Component::BlockOutput, "block_output"),
    (Component::AttentionInput, "attention_input"),
    (Component::AttentionOutput, "attention_output"),
    (Component::AttentionValueOutput, "attention_value_output"),
    (Component::HeadAttentionValueOutput, "head_attention_value_output"),
    (Component::QueryOutput, "query_output"),
    (Component::KeyOutput, "key_output"),
    (Component::ValueOutput, "value_output"),
    (Component::HeadQueryOutput, "head_query_output"),
    (Component::HeadKeyOutput, "head_key_output"),
    (Component::HeadValueOutput, "head_value_output"),
    (Component::MlpInput, "mlp_input"),
    (Component::MlpActivation, "mlp_activation"),
    (Component::MlpOutput, "mlp_output"),
    (Component::Hidden, "hidden"),
];

impl Component {
    /// pyvene's name of this component.
    pub fn name(self) -> &'static str {
        COMPONENTS.iter().find(|(c, _)| *c == self).map(|(_, n)| *n).unwrap_or("?")
    }

    /// Whether this component's unit is an attention head rather than a single dimension.
    pub fn is_per_head(self) -> bool {
        matches!(
            self,
            Component::HeadAttentionValueOutput
                | Component::HeadQueryOutput
                | Component::HeadKeyOutput
                | Component::HeadValueOutput
        )
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A place in a model: a component of one layer, e.g. `block_output` of layer 6 (`6.block_output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Site {
    /// 0-based layer (block) index; 0 for the embeddings.
    pub layer: usize,
    /// What activation of that layer.
    pub component: Component,
}

impl Site {
    /// For a site between blocks (the embeddings, a block's input or output): the first block
    /// that reads what flows there; `None` for a site inside a block. Everything the model
    /// computes after such a site is a function of its activation alone.
    pub fn next_block(self) -> Option<usize> {
        match self.component {
            Component::Embeddings => Some(0),
            Component::BlockInput => Some(self.layer),
            Component::BlockOutput => Some(self.layer + 1),
            _ => None,
        }
    }

    /// The site `component` of layer `layer`.
    pub fn new(layer: usize, component: Component) -> Self {
        Site { layer, component }
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.component == Component::Embeddings {
            f.write_str("embeddings")
        } else {
            write!(f, "{}.{}", self.layer, self.component)
        }
    }
}

/// Why a site name could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse site `{input}`: {reason} (write it as LAYER.COMPONENT, e.g. `6.block_output`, or `embeddings`)")]
pub struct SiteParseError {
    /// The text that was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for Component {
    type Err = SiteParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        COMPONENTS.iter().find(|(_, n)| *n == s).map(|(c, _)| *c).ok_or_else(|| SiteParseError {
            input: s.to_string(),
            reason: format!(
                "unknown component; known: {}",
                COMPONENTS.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
            ),
        })
    }
}

/// Reads a site as recipes and exports write it: `LAYER.COMPONENT`, or `embeddings`.
///
/// ```
/// use ferrovene_models::{Component, Site};
///
/// let site: Site = "6.block_output".parse()?;
/// assert_eq!(site, Site::new(6, Component::BlockOutput));
/// assert_eq!(site.to_string(), "6.block_output");
/// assert!("6.residual".parse::<Site>().is_err(), "unknown components are refused");
/// # Ok::<(), ferrovene_models::site::SiteParseError>(())
/// ```
impl FromStr for Site {
    type Err = SiteParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "embeddings" {
            return Ok(Site::new(0, Component::Embeddings));
        }
        let (layer, comp) = s.split_once('.').ok_or_else(|| SiteParseError {
            input: s.to_string(),
            reason: "no `.` between layer and component".into(),
        })?;
        let layer = layer.parse::<usize>().map_err(|_| SiteParseError {
            input: s.to_string(),
            reason: format!("layer `{layer}` is not a non-negative integer"),
        })?;
        let component = comp.parse::<Component>().map_err(|e| SiteParseError { input: s.to_string(), ..e })?;
        Ok(Site::new(layer, component))
    }
}

/// Sites are written as text in recipes and exports (`6.block_output`), so a recipe's site is
/// parsed and checked when the recipe is read.
impl serde::Serialize for Site {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Site {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Shape facts about the activation at a site: `[batch, seq, width]` with `width = units × unit_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteInfo {
    /// The site.
    pub site: Site,
    /// Last-dimension size of the activation.
    pub width: usize,
    /// Number of heads for per-head components (the unit), 1 otherwise.
    pub heads: usize,
}
