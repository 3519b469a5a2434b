//! `trainer`: the ferrovene command line.


mod device;
mod predict;

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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Predict { model, prompt, top, json, device } => {
            dispatch(device, predict::Predict { model, prompt, top, json })
        }
    }
}
