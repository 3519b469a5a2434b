//! The `steer-iti` recipe (`recipes/steer-iti.toml`) and where its probes read.

use serde::{Deserialize, Serialize};

/// Where each probed text ends, and so which token the probes read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeAt {
    /// After the context statements, the fact's prompt without its answer: the probe reads the
    /// position that predicts an answer, labelled by whether the statements before it were true.
    NextPrompt,
    /// The fact's own statement with its true or false answer (ITI's position: the answer's last
    /// token), labelled by that statement.
    Statement,
}

/// The recipe (`recipes/steer-iti.toml`). Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteerItiRecipe {
    /// One line for `trainer list`.
    pub description: String,
    /// Model spec.
    pub model: String,
    /// Share of facts held out for the α curve.
    pub held_out_fraction: f64,
    /// Share of facts that rank the heads (probes are fitted on the rest).
    pub validation_fraction: f64,
    /// Statements (all true, or all false, from training facts) before each probed text.
    pub context_statements: usize,
    /// Contexts drawn per train or validation fact (each gives a true and a false text): more
    /// draws average the mass mean over more contexts.
    pub contexts_per_fact: usize,
    /// Where each probed text ends.
    pub probe_at: ProbeAt,
    /// Heads shifted (ITI's K).
    pub top_k: usize,
    /// Scales α of the shift, in units of σ.
    pub alphas: Vec<f64>,
    /// α of the exported shift.
    pub export_alpha: f64,
    /// Random-direction controls averaged at each α.
    pub random_controls: usize,
    /// Inverse regularisation `C` of each head's logistic regression (scikit-learn's; 1 is its
    /// default and what ITI used).
    pub probe_c: f64,
    /// Seed of the false answers, the split, the contexts and the random directions.
    pub seed: u64,
}
