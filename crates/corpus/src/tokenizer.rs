//! Tokenizers through the `tokenizers` crate, and the on-disk cache of a tokenised corpus.

use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::{Error, Result};

/// The separator between documents in a token stream, and the prompt of generation.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Where the tokenizer comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TokenizerSpec {
    /// A Hugging Face `tokenizer.json`.
    File { path: PathBuf },
    /// OpenAI's GPT-2 files (`encoder.json`/`vocab.json` and `vocab.bpe`/`merges.txt`).
    VocabMerges { vocab: PathBuf, merges: PathBuf },
    /// `tokenizer.json` of a Hub model repository, e.g. `openai-community/gpt2`.
    Hub { repo: String },
    /// A byte-level BPE of `vocab_size` tokens trained on the training pool only.
    Train { vocab_size: usize },
}

impl TokenizerSpec {
    /// What a user types: `hf:OWNER/NAME` (the Hub), a folder holding `vocab.json` and `merges.txt`, a path to a
    /// `tokenizer.json`, or `train:N` (a byte-level BPE of N tokens trained on the pool).
    pub fn parse(s: &str) -> Result<Self> {
        if let Some(repo) = s.strip_prefix("hf:") {
            return Ok(Self::Hub {
                repo: repo.to_string(),
            });
        }
        if let Some(n) = s.strip_prefix("train:") {
            let vocab_size = n
                .parse()
                .map_err(|_| Error::Tokenizer(format!("bad vocabulary size in {s:?}")))?;
            return Ok(Self::Train { vocab_size });
        }
        let p = PathBuf::from(s);
        if p.is_dir() {
            return Ok(Self::VocabMerges {
                vocab: p.join("vocab.json"),
                merges: p.join("merges.txt"),
            });
        }
        if p.exists() {
            return Ok(Self::File { path: p });
        }
        Err(Error::Tokenizer(format!(
            "{s:?} is not a tokenizer.json, a folder with vocab.json and merges.txt, hf:OWNER/NAME or train:N"
        )))
    }
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eot: u32,
}

fn tk_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Loads a tokenizer; `Train` specs are built with [`Tokenizer::train_bpe`] instead.
    pub fn load(spec: &TokenizerSpec) -> Result<Self> {
        match spec {
            TokenizerSpec::File { path } => Self::from_file(path),
            TokenizerSpec::VocabMerges { vocab, merges } => {
                Self::gpt2_from_vocab_merges(vocab, merges)
            }
            TokenizerSpec::Hub { repo } => {
                let cached = hf_hub::Cache::from_env()
                    .model(repo.clone())
                    .get("tokenizer.json");
                let path = match cached {
                    Some(p) => p,
                    None => hf_hub::api::sync::ApiBuilder::from_env()
                        .with_progress(true)
                        .build()
                        .and_then(|api| api.model(repo.clone()).get("tokenizer.json"))
                        .map_err(|e| {
                            Error::Tokenizer(format!(
                                "cannot fetch tokenizer.json of {repo} from the Hub ({e}); offline? pass a local \
                                 tokenizer.json, or a folder with vocab.json + merges.txt (--tokenizer)"
                            ))
                        })?,
                };
                Self::from_file(&path)
            }
            TokenizerSpec::Train { .. } => Err(Error::Tokenizer(
                "a trained tokenizer is built from the pool, not loaded".into(),
            )),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Tokenizer(format!(
                "{} does not exist",
                path.display()
            )));
        }
        Self::wrap(
            tokenizers::Tokenizer::from_file(path)
                .map_err(|e| tk_err(format!("{}: {e}", path.display())))?,
        )
    }

    pub fn from_json(json: &str) -> Result<Self> {
        Self::wrap(json.parse::<tokenizers::Tokenizer>().map_err(tk_err)?)
    }

    /// GPT-2's byte-level BPE from OpenAI's vocabulary and merges.
    pub fn gpt2_from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self> {
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| tk_err(format!("{} + {}: {e}", vocab.display(), merges.display())))?;
        let mut tk = tokenizers::Tokenizer::new(bpe);
        tk.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        tk.with_decoder(Some(ByteLevel::default()));
        tk.add_special_tokens([AddedToken::from(END_OF_TEXT, true)])
            .map_err(tk_err)?;
        Self::wrap(tk)
    }

    /// A byte-level BPE of `vocab_size` tokens (`<|endoftext|>` included) trained on `texts`.
    pub fn train_bpe<'a>(
        texts: impl Iterator<Item = &'a str> + Send,
        vocab_size: usize,
    ) -> Result<Self> {
        if vocab_size < 257 {
            return Err(Error::Tokenizer(format!(
                "a byte-level BPE needs at least 257 tokens, not {vocab_size}"
            )));
        }
        let mut tk = tokenizers::Tokenizer::new(BPE::default());
        tk.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        tk.with_decoder(Some(ByteLevel::default()));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        tk.train(&mut trainer, texts).map_err(tk_err)?;
        Self::wrap(tk)
    }

    fn wrap(inner: tokenizers::Tokenizer) -> Result<Self> {
        let eot = inner
            .token_to_id(END_OF_TEXT)
            .ok_or_else(|| Error::Tokenizer(format!("the tokenizer has no {END_OF_TEXT} token")))?;
        Ok(Self { inner, eot })
    }

    pub fn eot(&self) -> u32 {
        self.eot
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tk_err)?
            .get_ids()
            .to_vec())
    }

    /// Encodes every text, in parallel.
    pub fn encode_all(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        texts.par_iter().map(|t| self.encode(t)).collect()
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tk_err)
    }

    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(tk_err)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomically(path, self.to_json()?.as_bytes())
    }

    /// The tokenizer files transformers loads with `AutoTokenizer.from_pretrained(DIR)`: `tokenizer.json`,
    /// GPT-2's `vocab.json` + `merges.txt` (taken from the BPE model inside it), `tokenizer_config.json` and
    /// `special_tokens_map.json`, with `<|endoftext|>` as BOS, EOS and UNK as in GPT-2.
    pub fn hf_files(&self, model_max_length: usize) -> Result<Vec<(String, Vec<u8>)>> {
        let json = self.to_json()?;
        let def: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| tk_err(e.to_string()))?;
        let model = &def["model"];
        if model["type"] != "BPE" {
            return Err(Error::Tokenizer(format!(
                "only BPE tokenizers export vocab.json + merges.txt, this one is {}",
                model["type"]
            )));
        }
        let mut vocab: std::collections::BTreeMap<String, u64> =
            serde_json::from_value(model["vocab"].clone())
                .map_err(|e| tk_err(format!("BPE vocabulary: {e}")))?;
        for t in def["added_tokens"].as_array().into_iter().flatten() {
            if let (Some(c), Some(id)) = (t["content"].as_str(), t["id"].as_u64()) {
                vocab.entry(c.to_string()).or_insert(id);
            }
        }
        let vocab_json = serde_json::to_string(&vocab).expect("serialises");
        let mut merges = String::from("#version: 0.2\n");
        for m in model["merges"].as_array().into_iter().flatten() {
            // tokenizers writes merges as "a b" strings (older files) or ["a", "b"] pairs (newer ones).
            let line = match m {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(p) => p
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => return Err(Error::Tokenizer(format!("unreadable merge {m}"))),
            };
            merges.push_str(&line);
            merges.push('\n');
        }
        let special = serde_json::json!({
            "bos_token": END_OF_TEXT,
            "eos_token": END_OF_TEXT,
            "unk_token": END_OF_TEXT,
        });
        let mut config = special.clone();
        config["tokenizer_class"] = "GPT2Tokenizer".into();
        config["model_max_length"] = model_max_length.into();
        config["add_prefix_space"] = false.into();
        config["clean_up_tokenization_spaces"] = false.into();
        let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("serialises");
        Ok(vec![
            ("tokenizer.json".into(), json.into_bytes()),
            ("vocab.json".into(), vocab_json.into_bytes()),
            ("merges.txt".into(), merges.into_bytes()),
            ("tokenizer_config.json".into(), pretty(&config)),
            ("special_tokens_map.json".into(), pretty(&special)),
        ])
    }

    /// A hash of the tokenizer's full definition, for cache keys.
    pub fn hash(&self) -> Result<String> {
        Ok(format!("{:x}", Sha256::digest(self.to_json()?.as_bytes())))
    }
}

/// Documents' tokens joined into one stream, each document followed by `<|endoftext|>`.
pub fn token_stream<'a>(docs: impl IntoIterator<Item = &'a [u32]>, eot: u32) -> Vec<u32> {
    token_stream_with_ends(docs.into_iter().map(|d| (d, true)), eot)
}

/// Documents' tokens joined into one stream, each followed by `<|endoftext|>` only where its flag says the
/// document ends there: a generated document cut before its end is not, so the stream never teaches that
/// a plot ends where the sampler stopped.
pub fn token_stream_with_ends<'a>(
    docs: impl IntoIterator<Item = (&'a [u32], bool)>,
    eot: u32,
) -> Vec<u32> {
    let mut out = Vec::new();
    for (d, ends) in docs {
        out.extend_from_slice(d);
        if ends {
            out.push(eot);
        }
    }
    out
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    // 0666 less the umask, as for any other file: tempfile's default 0600 would make a shared run directory
    // unreadable to the rest of a cluster group.
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(Error::io(dir))?;
    tmp.write_all(bytes).map_err(Error::io(path))?;
    tmp.as_file().sync_all().map_err(Error::io(path))?;
    tmp.persist(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e.error,
    })?;
    Ok(())
}

/// Tokenised corpora on disk, keyed by everything that determines them, so a second start does not
/// tokenise again. Files: `MAGIC`, document count, token width (2 or 4 bytes), per-document lengths, tokens,
/// and the SHA-256 of everything before it: a cache that fails it is reported and rebuilt, never used.
pub struct TokenCache {
    dir: PathBuf,
}

const MAGIC: &[u8; 8] = b"CLTOKv02";

impl TokenCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$COLLAPSE_CACHE`, else `$XDG_CACHE_HOME/collapse-lab`, else `~/.cache/collapse-lab`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("COLLAPSE_CACHE") {
            return PathBuf::from(d);
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("collapse-lab")
    }

    pub fn key(parts: &[&str]) -> String {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        format!("{:x}", h.finalize())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("tokens-{key}.bin"))
    }

    /// The cached tokens of `n_docs` documents under `key`, if present and intact.
    pub fn get(&self, key: &str, n_docs: usize) -> Option<Vec<Vec<u32>>> {
        let path = self.path(key);
        let mut bytes = std::fs::read(&path).ok()?;
        let body_len = bytes.len().checked_sub(32)?;
        if Sha256::digest(&bytes[..body_len]).as_slice() != &bytes[body_len..] {
            eprintln!(
                "[collapse-lab] token cache {} fails its checksum: tokenising again",
                path.display()
            );
            return None;
        }
        bytes.truncate(body_len);
        let rd = |at: usize, n: usize| bytes.get(at..at + n);
        if rd(0, 8)? != MAGIC {
            return None;
        }
        let n = u64::from_le_bytes(rd(8, 8)?.try_into().ok()?) as usize;
        let width = *bytes.get(16)? as usize;
        if n != n_docs || !(width == 2 || width == 4) {
            return None;
        }
        let lens: Vec<usize> = rd(17, 4 * n)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as usize)
            .collect();
        let total: usize = lens.iter().sum();
        let body = rd(17 + 4 * n, total * width)?;
        if bytes.len() != 17 + 4 * n + total * width {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        let mut at = 0;
        for len in lens {
            let chunk = &body[at * width..(at + len) * width];
            out.push(if width == 2 {
                chunk
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
                    .collect()
            } else {
                chunk
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            });
            at += len;
        }
        Some(out)
    }

    pub fn put(&self, key: &str, docs: &[Vec<u32>]) -> Result<()> {
        let max = docs.iter().flatten().copied().max().unwrap_or(0);
        let width: usize = if max <= u16::MAX as u32 { 2 } else { 4 };
        let total: usize = docs.iter().map(Vec::len).sum();
        let mut bytes = Vec::with_capacity(17 + 4 * docs.len() + width * total);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(docs.len() as u64).to_le_bytes());
        bytes.push(width as u8);
        for d in docs {
            bytes.extend_from_slice(&(d.len() as u32).to_le_bytes());
        }
        for &t in docs.iter().flatten() {
            if width == 2 {
                bytes.extend_from_slice(&(t as u16).to_le_bytes());
            } else {
                bytes.extend_from_slice(&t.to_le_bytes());
            }
        }
        let sum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&sum);
        write_atomically(&self.path(key), &bytes)
    }
}
