//! `trainer`: the ferrovene command line; each subcommand is a function of [`ferrovene_trainer::commands`].

use anyhow::Result;
use clap::{Parser, Subcommand};
use ferrovene_trainer::commands::{self, apply, eval, export, import, predict, run, sae, steer, sweep};
use ferrovene_trainer::device::{Compute, dispatch};
use ferrovene_trainer::generate::{Choice, Decoding};

/// mimalloc keeps freed large blocks for reuse; glibc unmaps them, so every step paid page faults
/// and page zeroing for its activations (about 6% of a DAS step in perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// ferrovene: train and apply learned interventions (DAS, ReFT, probes, steering) on frozen models.
#[derive(Parser)]
#[command(name = "trainer", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the recipes in recipes/ (or $FERROVENE_RECIPES) with their descriptions.
    List,
    /// Any other word is a recipe: `trainer das-capitals [--seed N] [--epochs N] [--model M]
    /// [--device D] [--dtype T] [--out DIR] [--set key=value ...] [--resume RUN_DIR]`; `trainer das-capitals
    /// --help` lists the options.
    #[command(external_subcommand)]
    Recipe(Vec<String>),
    /// Show a model's next-token distribution after a prompt.
    ///
    /// Example: trainer predict --model smollm2-135m --prompt "The capital of France is" --top 5
    Predict {
        /// A registry name (smollm2-135m, minilm-l6), a Hugging Face folder, a .gguf file, or a
        /// hub id `org/name[@revision]` (HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE are honoured;
        /// FERROVENE_HUB_TIMEOUT: seconds without an answer before giving up, default 60).
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
        #[command(flatten)]
        compute: Compute,
    },
    /// Evaluate an exported intervention on a pair file: IIA and p(label) > p(base label), each
    /// beside the no-intervention control.
    ///
    /// Example: trainer eval --intervention runs/x/intervention.safetensors --pairs pairs.jsonl --by template
    Eval {
        /// The export (intervention.safetensors), or `org/name[@revision][:file]` on the Hugging
        /// Face hub; for `apply`, also an SAE (SAELens folder, Gemma Scope params.npz).
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
        #[command(flatten)]
        compute: Compute,
    },
    /// Build a steering vector: the difference of the mean `L.block_output` activations at the last
    /// token of positive and negative texts, exported like any intervention.
    ///
    /// Example: trainer steer --positive happy.txt --negative sad.txt --layer 12 --scale 4 --out steer.safetensors
    ///   then:  trainer apply --intervention steer.safetensors --prompt "Today I" --generate 20 --every-token
    Steer {
        /// Model spec.
        #[arg(long, default_value = ferrovene_models::registry::DEFAULT_MODEL)]
        model: String,
        /// Texts with the behaviour to add: one per line, or JSONL with a `text` field.
        #[arg(long)]
        positive: std::path::PathBuf,
        /// Texts with its opposite.
        #[arg(long)]
        negative: std::path::PathBuf,
        /// Layer whose block_output is read and steered.
        #[arg(long)]
        layer: usize,
        /// The scale α stored in the export (trainer apply --scale overrides it).
        #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
        scale: f64,
        /// Where to write the export (an existing file is kept unless --force).
        #[arg(long, default_value = "steering.safetensors")]
        out: std::path::PathBuf,
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        compute: Compute,
    },
    /// Run a sweep recipe over sites: `trainer sweep das-filler-gap --layers 0,6,12 --positions
    /// filler,verb`, or `--full` for every layer and position; `trainer sweep syntax-suites
    /// --tasks npi_licensing --methods das,mean --layers 4,12 --regions label,last` for the
    /// benchmark of every method on template suites (`--templates FILE` for your own suite).
    /// Writes the heatmaps (SVG, PNG), the numbers (CSV, JSON) and a summary into the run folder.
    Sweep {
        /// The recipe (a sweep kind: filler-gap, suite).
        recipe: String,
        /// Layers to sweep (comma-separated).
        #[arg(long, value_delimiter = ',')]
        layers: Option<Vec<usize>>,
        /// Filler-gap: positions to sweep (comma-separated span names: filler, article, noun, verb).
        #[arg(long, value_delimiter = ',')]
        positions: Option<Vec<String>>,
        /// Suites: regions to sweep in each task (comma-separated: `label` for the label
        /// variable's slot, `last` for the last token, slot names, or `all`).
        #[arg(long, value_delimiter = ',')]
        regions: Option<Vec<String>>,
        /// Suites: tasks to run (comma-separated names from the suite file).
        #[arg(long, value_delimiter = ',')]
        tasks: Option<Vec<String>>,
        /// Suites: methods (comma-separated from das, probe, mean, pca, kmeans, lda, random).
        #[arg(long, value_delimiter = ',')]
        methods: Option<Vec<String>>,
        /// Suites: a template file in CausalGym's format instead of the recipe's suite.
        #[arg(long)]
        templates: Option<std::path::PathBuf>,
        /// Every layer of the model and every position (or region).
        #[arg(long, conflicts_with_all = ["layers", "positions", "regions"])]
        full: bool,
        /// Skip the generalisation experiments after the sweep.
        #[arg(long)]
        no_generalization: bool,
        /// Suites: generate every task's pairs and print, per task, its pair counts, filler
        /// combinations and swept regions (and the slots left out, with why), then stop: no model
        /// is loaded and nothing is trained or written. Checks a template file before a long run.
        #[arg(long, conflicts_with = "resume")]
        dry_run: bool,
        /// Override any recipe key: --set train_pairs=200.
        #[arg(long = "set")]
        sets: Vec<String>,
        /// Where runs go.
        #[arg(long, default_value = "runs")]
        out: std::path::PathBuf,
        #[command(flatten)]
        compute: Compute,
        /// Go on with an interrupted sweep: its run folder (runs/NAME/STAMP). The units it
        /// finished (in units.jsonl) are kept, the others run, and the final files are those of
        /// an uninterrupted run. The sweep's settings are the ones saved in the folder.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["layers", "positions", "regions", "tasks", "methods", "templates", "full", "no_generalization", "sets", "shard"])]
        resume: Option<std::path::PathBuf>,
        /// Run shard I of N (0-based, `--shard 0/4`): a deterministic quarter of the sweep's
        /// units (sites; a suite's task layers), balanced by estimated cost. Without the flag,
        /// a Slurm array task (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT) or a Kubernetes
        /// indexed Job (JOB_COMPLETION_INDEX, with FERROVENE_SHARD_COUNT) sets it. Join the
        /// shards' folders with `trainer merge`.
        #[arg(long, value_name = "I/N")]
        shard: Option<ferrovene_trainer::shard::Shard>,
        /// Share the sweep between several devices of one kind: cuda:0,cuda:1 (cpu,cpu for
        /// tests). Each device runs one shard of the units at the same time (`--shard i/N` on
        /// device i), and the shards are merged into the run folder one device writes, with its
        /// numbers.
        #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with_all = ["device", "shard", "resume", "dry_run"], value_name = "DEVICE,DEVICE,...")]
        devices: Vec<ferrovene_trainer::device::DeviceSpec>,
    },
    /// Join the run folders of a sweep's shards (`trainer sweep … --shard I/N`) into the folder
    /// one run would have written: the numbers (CSV, JSON), heatmaps, summary, report.json and,
    /// for filler-gap, the best site's export and the follow-up experiments (which need the
    /// model, so they run here).
    ///
    /// Example: trainer merge runs/das-filler-gap/20261206-1* --out runs
    #[command(verbatim_doc_comment)]
    Merge {
        /// Every shard's run folder, once each.
        #[arg(required = true)]
        dirs: Vec<std::path::PathBuf>,
        /// Where the merged run goes (runs/NAME/STAMP under it).
        #[arg(long, default_value = "runs")]
        out: std::path::PathBuf,
        #[command(flatten)]
        compute: Compute,
    },
    /// Serve several-node runs (`trainer <recipe> --nodes N`): gather the nodes of a run (checking
    /// that every one came, with the same recipe and data; a node that waits too long says which
    /// ranks are missing), then sum each training step's gradients for them. Start it once, on a
    /// machine every node reaches; it serves one run after another until Ctrl-C.
    ///
    /// Example, two nodes (hosts a and b; the orchestrator on a):
    ///   a$ trainer orchestrator --port 3000
    ///   a$ trainer das-capitals --nodes 2 --node-rank 0 --orchestrator a:3000
    ///   b$ trainer das-capitals --nodes 2 --node-rank 1 --orchestrator a:3000
    #[command(verbatim_doc_comment)]
    Orchestrator {
        /// The port to listen on (every interface).
        #[arg(long)]
        port: u16,
    },
    /// Apply an exported intervention to a prompt: the next-token prediction before and after, or
    /// generated text without and with it.
    ///
    /// Examples:
    ///   trainer apply --intervention runs/das-capitals/…/intervention.safetensors
    ///       --prompt "The capital of France is" --source "The capital of Italy is" --positions 3
    ///   trainer apply --intervention runs/reft-memorise/…/intervention.safetensors --prompt "GO->" --generate 60
    ///   trainer apply --intervention runs/reft-instruct-emoji/…/intervention.safetensors --chat
    ///       --prompt "How do I cook pasta?" --generate 12
    ///   trainer apply --intervention steer.safetensors --prompt "Today I" --generate 30 --every-token
    ///       --temperature 0.8 --top-p 0.9 --seed 1
    #[command(verbatim_doc_comment)]
    Apply {
        /// The export (intervention.safetensors), or `org/name[@revision][:file]` on the Hugging
        /// Face hub; for `apply`, also an SAE (SAELens folder, Gemma Scope params.npz).
        #[arg(long)]
        intervention: std::path::PathBuf,
        /// The prompt (the base input).
        #[arg(long)]
        prompt: String,
        /// The source text, for interventions that read one (DAS).
        #[arg(long)]
        source: Option<String>,
        /// Token positions to intervene on: `last`, `all`, indices (negative from the end), or `f<k>`/`l<k>` for
        /// the first/last k tokens (`f5+l5`, pyreft's rule); comma-separated. Default: the
        /// export's own rule when it is one of these, else `last`.
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        positions: Option<Vec<String>>,
        /// Wrap the prompt in the chat template (ChatML with SmolLM2's system message), as the
        /// reft-instruct-emoji recipe trains.
        #[arg(long)]
        chat: bool,
        /// Positions in the source (default: the same as --positions).
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        source_positions: Option<Vec<String>>,
        /// The model (default: the one the export was trained on).
        #[arg(long)]
        model: Option<String>,
        /// Generate this many tokens without and with the intervention (greedy unless
        /// --temperature is given).
        #[arg(long)]
        generate: Option<usize>,
        /// While generating, also intervene at every generated token (steering, ReFT).
        #[arg(long)]
        every_token: bool,
        /// Sample generated tokens at this temperature instead of taking the most probable.
        #[arg(long)]
        temperature: Option<f64>,
        /// With --temperature: sample only from the most probable tokens that make up this share
        /// of the probability (nucleus sampling); 1 keeps all.
        #[arg(long, default_value_t = 1.0, requires = "temperature")]
        top_p: f64,
        /// With --temperature: seed of the draws (the same seed gives the same text).
        #[arg(long, default_value_t = 0, requires = "temperature")]
        seed: u64,
        /// Recompute the whole sequence at every generated token instead of keeping a KV cache
        /// (slower; the same tokens).
        #[arg(long)]
        no_cache: bool,
        /// How many candidates to show.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// For a steering vector: the scale α (default: the export's).
        #[arg(long, allow_hyphen_values = true)]
        scale: Option<f64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        sae: sae::SaeOptions,
        #[command(flatten)]
        compute: Compute,
    },
    /// Import a folder that pyvene (IntervenableModel.save) or pyreft (ReftModel.save) wrote, as a
    /// ferrovene export that `trainer eval` and `trainer apply` take.
    ///
    /// Reads pyvene's LowRankRotatedSpace, RotatedSpace, BoundlessRotatedSpace, SigmoidMask,
    /// SigmoidMaskRotatedSpace and Vanilla interventions and pyreft's LoReFT, NoReFT, ConsReFT, LoBiReFT, DiReFT and NoDiReFT, one or
    /// several representations; pyvene's component names and layers are ours.
    ///
    /// Example: trainer import ./my_pyvene_das --model gpt2 --out das.safetensors
    #[command(verbatim_doc_comment)]
    Import {
        /// The folder (config.json and intkey_*.bin files), or a hub id `org/name[@revision]`.
        folder: std::path::PathBuf,
        /// The model the interventions were trained on (registry name, folder, .gguf, hub id).
        #[arg(long)]
        model: String,
        /// Where to write the export.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Replace an existing file at --out.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        compute: Compute,
    },
    /// Write an export as the folder pyvene (IntervenableModel.save) or pyreft (ReftModel.save)
    /// writes, for IntervenableModel.load(DIR, model) / ReftModel.load(DIR, model).
    ///
    /// Writes low-rank, full and Boundless DAS, sigmoid masks and interchange for pyvene, and
    /// the six ReFT families for pyreft. pyreft 0.1.0 rebuilds the learned projections in
    /// bfloat16 and cannot rebuild NoReFT/NoDiReFT from config.json: the command prints the
    /// lines that load the folder with our numbers.
    ///
    /// Example: trainer export runs/das-capitals/…/intervention.safetensors --to pyvene das_folder
    #[command(verbatim_doc_comment)]
    Export {
        /// Our export (intervention.safetensors).
        intervention: std::path::PathBuf,
        /// Which library's folder: pyvene or pyreft.
        #[arg(long, value_enum)]
        to: export::Flavour,
        /// The folder to write.
        dir: std::path::PathBuf,
        /// Write into a folder that already has files.
        #[arg(long)]
        force: bool,
    },
    /// A published SAE on a prompt: its format, site and size, how much of each position's
    /// activation it leaves unexplained, and with --features the most active latents there.
    /// Reads SAELens folders (cfg.json + sae_weights.safetensors), Gemma Scope's params.npz, or a
    /// safetensors file of W_enc, b_enc, W_dec, b_dec, threshold.
    ///
    /// Examples:
    ///   trainer sae --sae gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82 --model google/gemma-2-2b
    ///       --prompt "The Eiffel Tower is in" --features
    ///   trainer sae --sae my-saelens-folder --model smollm2-135m --prompt "Hello" --features --top 10
    /// Then interchange or clamp latents with: trainer apply --intervention SAE --latents 10,42 [--clamp 5]
    #[command(verbatim_doc_comment)]
    Sae {
        /// The SAE: a SAELens folder, a Gemma Scope folder or params.npz, or a safetensors file.
        #[arg(long)]
        sae: std::path::PathBuf,
        /// The model it reads (registry name, folder, .gguf, hub id).
        #[arg(long, default_value = ferrovene_models::registry::DEFAULT_MODEL)]
        model: String,
        /// The text to encode.
        #[arg(long)]
        prompt: String,
        /// The site it reads, when its file names none (e.g. 12.block_output).
        #[arg(long)]
        site: Option<ferrovene_models::Site>,
        /// List each position's most active latents.
        #[arg(long)]
        features: bool,
        /// How many latents per position.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        compute: Compute,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // On a rayon worker: each parallel product then wakes no sleeping caller (threads.rs).
    ferrovene_trainer::threads::on_worker(move || command(cli))
}

/// `trainer apply`'s decoding of `max_new` generated tokens: greedy, or sampled at `temperature`.
fn decoding(
    max_new: Option<usize>,
    temperature: Option<f64>,
    top_p: f64,
    seed: u64,
    no_cache: bool,
) -> Result<Option<Decoding>> {
    let choice = match temperature {
        Some(temperature) => Choice::Sample { temperature, top_p, seed },
        None => Choice::Greedy,
    };
    let decoding = Decoding { max_new: 0, choice, cache: !no_cache };
    decoding.check()?;
    Ok(max_new.map(|max_new| Decoding { max_new, ..decoding }))
}

/// Runs the parsed command.
fn command(cli: Cli) -> Result<()> {
    match cli.command {
        Command::List => commands::list(),
        Command::Recipe(args) => run::run_recipe(args),
        Command::Sweep {
            recipe,
            layers,
            positions,
            regions,
            tasks,
            methods,
            templates,
            full,
            no_generalization,
            dry_run,
            sets,
            out,
            compute,
            resume,
            shard,
            devices,
        } => sweep::sweep(sweep::SweepArgs {
            recipe,
            layers,
            positions,
            regions,
            tasks,
            methods,
            templates,
            full,
            no_generalization,
            dry_run,
            sets,
            out,
            compute,
            resume,
            shard,
            devices: ferrovene_trainer::device::Devices { devices },
        }),
        Command::Merge { dirs, out, compute } => commands::merge::merge(dirs, out, compute),
        Command::Orchestrator { port } => ferrovene_trainer::nodes::serve_orchestrator(port),
        Command::Predict { model, prompt, top, json, compute } => {
            dispatch(compute, predict::Predict { model, prompt, top, json })
        }
        Command::Eval { intervention, pairs, model, by, batch_size, skip_bad, json, compute } => {
            dispatch(compute, eval::Eval { intervention, pairs, model, by, batch_size, skip_bad, json })
        }
        Command::Apply {
            intervention,
            prompt,
            source,
            positions,
            chat,
            source_positions,
            model,
            generate,
            every_token,
            temperature,
            top_p,
            seed,
            no_cache,
            top,
            scale,
            json,
            sae,
            compute,
        } => {
            let generate = decoding(generate, temperature, top_p, seed, no_cache)?;
            dispatch(
                compute,
                apply::Apply {
                    intervention,
                    prompt,
                    source,
                    positions,
                    chat,
                    source_positions,
                    model,
                    generate,
                    every_token,
                    top,
                    scale,
                    json,
                    sae,
                },
            )
        }
        Command::Export { intervention, to, dir, force } => export::Export { intervention, to, dir, force }.run(),
        Command::Import { folder, model, out, force, compute } => {
            dispatch(compute, import::Import { folder, model, out, force })
        }
        Command::Sae { sae: path, model, prompt, site, features, top, json, compute } => {
            dispatch(compute, sae::SaeCommand { sae: path, model, prompt, site, features, top, json })
        }
        Command::Steer { model, positive, negative, layer, scale, out, force, compute } => {
            dispatch(compute, steer::Steer { model, positive, negative, layer, scale, out, force })
        }
    }
}
