//! `trainer`: the ferrovene command line.


use trainer::{device, eval, predict};

use anyhow::Result;
use clap::{Parser, Subcommand};

use device::{dispatch, DeviceKind};

/// ferrovene: train and apply learned interventions (DAS, ReFT, probes, steering) on frozen models.
#[derive(Parser)]
#[command(name = "trainer", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's next-token distribution after a prompt.
    ///
    /// Example: trainer predict --model smollm2-135m --prompt "The capital of France is" --top 5
    Predict {
        /// A registry name (smollm2-135m, minilm-l6), a Hugging Face folder, a .gguf file, or a
        /// hub id `org/name[@revision]` (HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE are honoured).
        #[arg(long, default_value = ferrovene_models::registry::DEFAULT_MODEL)]
        model: String,
        /// The text whose continuation to predict.
        #[arg(long)]
        prompt: String,
        /// How many of the most likely next tokens to show.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// Print JSON (for scripts) instead of a table.
        #[arg(long)]
        json: bool,
        /// Where to compute: cpu, or wgpu / cuda in builds with those features.
        #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
        device: DeviceKind,
    },
    /// Evaluate an exported intervention on a pair file: IIA and p(label) > p(base label), each
    /// beside the no-intervention control.
    ///
    /// Example: trainer eval --intervention runs/x/intervention.safetensors --pairs pairs.jsonl --by template
    Eval {
        /// The export (intervention.safetensors).
        #[arg(long)]
        intervention: std::path::PathBuf,
        /// A pair file (JSONL; see datasets/README.md).
        #[arg(long)]
        pairs: std::path::PathBuf,
        /// The model (default: the one the export was trained on).
        #[arg(long)]
        model: Option<String>,
        /// Break the results down by this metadata field (e.g. template, construction).
        #[arg(long)]
        by: Option<String>,
        /// Pairs per batch.
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// Skip bad lines of the pair file (counted and reported) instead of stopping at the first.
        #[arg(long)]
        skip_bad: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Where to compute.
        #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
        device: DeviceKind,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Predict { model, prompt, top, json, device } => {
            dispatch(device, predict::Predict { model, prompt, top, json })
        }
        Command::Eval { intervention, pairs, model, by, batch_size, skip_bad, json, device } => {
            dispatch(device, eval::Eval { intervention, pairs, model, by, batch_size, skip_bad, json })
        }
    }
}
