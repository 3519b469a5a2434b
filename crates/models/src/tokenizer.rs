//! Tokenizers: a Hugging Face `tokenizer.json`, or one rebuilt from a GGUF file's
//! `tokenizer.ggml.*` metadata (byte-level BPE with the pre-tokenizer `tokenizer.ggml.pre` names).

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::error::{ModelError, Result};
use crate::weights::gguf::GgufFile;

/// A text ↔ token-id mapping for one model.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// `inner.get_vocab_size(true)`, computed once: `tokenizers` builds the whole vocabulary map
    /// on every call (tens of milliseconds for a 49k-token vocabulary), and every token-id input
    /// is checked against it.
    vocab_size: usize,
    /// Id used to pad batches (the pad token, else EOS, else 0).
    pub pad_id: u32,
    /// The end-of-sequence token, where the tokenizer names one (generation stops at it).
    pub eos_id: Option<u32>,
    /// The most tokens its model reads (learned position embeddings), when it has a limit.
    pub max_positions: Option<usize>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TextTokenizer({}, vocab {})", self.path.display(), self.vocab_size())
    }
}

/// `tokenizer.ggml.pre` values this crate knows how to rebuild.
pub const GGUF_PRE_TOKENIZERS: &str = "smollm, gpt2, default";

impl TextTokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer { path: path.to_path_buf(), reason: e.to_string() })?;
        // Batching (and its padding side) is ferrovene's job; a file's fixed padding or
        // truncation would silently change sequence lengths.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer { path: path.to_path_buf(), reason: e.to_string() })?;
        let pad_id = ["[PAD]", "<pad>", "<|endoftext|>", "</s>"].iter().find_map(|t| inner.token_to_id(t)).unwrap_or(0);
        let eos_id = ["<|im_end|>", "</s>", "<|endoftext|>", "<eos>"].iter().find_map(|t| inner.token_to_id(t));
        Ok(Self::new(inner, path.to_path_buf(), pad_id, eos_id))
    }

    /// Rebuilds the tokenizer a GGUF file describes.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path().to_path_buf();
        let err = |reason: String| ModelError::Tokenizer { path: path.clone(), reason };
        let model = file.meta_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(err(format!("tokenizer.ggml.model `{model}` is not supported (only `gpt2`, byte-level BPE)")));
        }
        let tokens = file.meta_strings("tokenizer.ggml.tokens")?;
        let merges = file.meta_strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = match file.metadata.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let vocab: ahash_compat::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| err(format!("merge {i} (`{m}`) is not two tokens separated by a space")))
            })
            .collect::<Result<_>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .fuse_unk(false)
            .build()
            .map_err(|e| err(format!("cannot build BPE: {e}")))?;
        let pre = file.metadata.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
        let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
        let pre_tokenizer = match pre {
            "smollm" => Sequence::new(vec![PreTokenizerWrapper::Digits(Digits::new(true)), byte_level]),
            "gpt2" | "default" => Sequence::new(vec![byte_level]),
            other => {
                return Err(err(format!(
                    "tokenizer.ggml.pre `{other}` is not supported; supported: {GGUF_PRE_TOKENIZERS}"
                )));
            }
        };
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevel::new(false, true, true)));
        // Control tokens (type 3) are special: matched whole in text, never split.
        let specials: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == 3)
            .filter_map(|(i, _)| tokens.get(i))
            .map(|t| AddedToken::from(t.clone(), true).normalized(false))
            .collect();
        inner.add_special_tokens(&specials);
        let id = |key: &str| file.metadata.get(key).and_then(|v| v.as_u64()).map(|v| v as u32);
        let add_bos = file.metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        if add_bos {
            let bos = id("tokenizer.ggml.bos_token_id")
                .ok_or_else(|| err("add_bos_token is true but tokenizer.ggml.bos_token_id is missing".into()))?;
            let bos_text =
                tokens.get(bos as usize).cloned().ok_or_else(|| err(format!("bos id {bos} is past the vocabulary")))?;
            let template_err = |e: String| err(format!("BOS template: {e}"));
            let mut builder = TemplateProcessing::builder();
            builder.try_single(format!("{bos_text} $A")).map_err(template_err)?;
            builder.try_pair(format!("{bos_text} $A $B")).map_err(template_err)?;
            builder.special_tokens(vec![(bos_text.clone(), bos)]);
            let template = builder.build().map_err(|e| template_err(e.to_string()))?;
            inner.with_post_processor(Some(template));
        }
        let pad_id = id("tokenizer.ggml.padding_token_id").or(id("tokenizer.ggml.eos_token_id")).unwrap_or(0);
        let eos_id = id("tokenizer.ggml.eos_token_id");
        Ok(Self::new(inner, path, pad_id, eos_id))
    }

    /// The one constructor: the vocabulary size is read here, once.
    fn new(inner: tokenizers::Tokenizer, path: PathBuf, pad_id: u32, eos_id: Option<u32>) -> Self {
        let vocab_size = inner.get_vocab_size(true);
        TextTokenizer { inner, path, vocab_size, pad_id, eos_id, max_positions: None }
    }

    /// Token ids of `text`, with the model's special tokens (BOS, `[CLS]`/`[SEP]`) where it adds them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self.inner.encode(text, true).map(|e| e.get_ids().to_vec()).map_err(|e| ModelError::Tokenizer {
            path: self.path.clone(),
            reason: format!("encoding {text:?}: {e}"),
        })?;
        match self.max_positions {
            Some(max) if ids.len() > max => {
                let head: String = text.chars().take(40).collect();
                Err(ModelError::Tokenizer {
                    path: self.path.clone(),
                    reason: format!(
                        "the text {head:?}… is {} tokens; the model reads at most {max} positions: shorten it",
                        ids.len()
                    ),
                })
            }
            _ => Ok(ids),
        }
    }

    /// Token ids of `text` with each token's byte range in `text` (special tokens the model adds,
    /// like BOS, have an empty range at 0).
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
        self.inner
            .encode(text, true)
            .map(|e| (e.get_ids().to_vec(), e.get_offsets().to_vec()))
            .map_err(|e| ModelError::Tokenizer { path: self.path.clone(), reason: format!("encoding {text:?}: {e}") })
    }

    /// Token ids of `text` alone, without the special tokens the model adds (for labels and
    /// continuations).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer { path: self.path.clone(), reason: format!("encoding {text:?}: {e}") })
    }

    /// Text of `ids` (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer { path: self.path.clone(), reason: format!("decoding {ids:?}: {e}") })
    }

    /// The tokenizer of a model that reads at most `max` positions: longer inputs are refused
    /// when examples are tokenised.
    pub fn with_max_positions(mut self, max: Option<usize>) -> Self {
        self.max_positions = max;
        self
    }

    /// Number of tokens (with added tokens).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The underlying `tokenizers` object, for offsets and other details.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

mod ahash_compat {
    /// The map type `BPE::vocab_and_merges` takes.
    pub type Vocab = tokenizers::models::bpe::Vocab;
}

/// SmolLM2-Instruct's chat template (ChatML with its default system message) for one user turn,
/// ready for the assistant's answer: what `trainer apply --chat` and chat-trained ReFT recipes
/// feed the model.
pub fn chat_prompt(instruction: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
    )
}
