//! `generate`, `eval` and `export` on a single checkpoint: collapse-lab's own, or a Hugging Face GPT-2
//! directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use corpus::{token_stream, CleanConfig, RealCorpus, Source, TokenCache, Tokenizer, TokenizerSpec};
use gpt::{GenerateConfig, Gpt};

use crate::device::parse_device;
use experiment::rundir::{checksum_path, read_verified, write_atomic};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A model.safetensors written by `run`, or a Hugging Face GPT-2 directory (config.json + model.safetensors).
    pub checkpoint: PathBuf,
    /// Tokenizer (default: the run's tokenizer.json found above the checkpoint).
    #[arg(long)]
    pub tokenizer: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    #[arg(long, default_value_t = 200)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A model.safetensors written by `run`, or a Hugging Face GPT-2 directory (config.json + model.safetensors).
    pub checkpoint: PathBuf,
    /// Documents to evaluate on (file, folder or hf://datasets/...).
    #[arg(long)]
    pub data: String,
    /// CSV column holding the text.
    #[arg(long, default_value = "Plot")]
    pub column: String,
    /// Evaluate at most this many documents.
    #[arg(long)]
    pub max_docs: Option<usize>,
    #[arg(long)]
    pub tokenizer: Option<String>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Also write the evaluated token stream and the logits of its first `--dump-windows` windows to this
    /// JSON file, for comparison with another implementation (scripts/check-transformers.sh).
    #[arg(long)]
    pub dump: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    pub dump_windows: usize,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A model.safetensors written by `run`.
    pub checkpoint: PathBuf,
    /// The directory to write (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Tokenizer (default: the run's tokenizer.json found above the checkpoint).
    #[arg(long)]
    pub tokenizer: Option<String>,
}

/// The tokenizer given, or the `tokenizer.json` beside or above the checkpoint (its run directory's).
fn tokenizer_for(checkpoint: &Path, given: Option<&str>) -> Result<Tokenizer> {
    if let Some(spec) = given {
        return Ok(Tokenizer::load(&TokenizerSpec::parse(spec)?)?);
    }
    let found = checkpoint
        .ancestors()
        .skip(usize::from(!checkpoint.is_dir()))
        .map(|d| d.join("tokenizer.json"))
        .find(|p| p.exists());
    let path = found.with_context(|| {
        format!(
            "no tokenizer.json above {}: pass --tokenizer",
            checkpoint.display()
        )
    })?;
    Ok(Tokenizer::from_file(&path)?)
}

/// A collapse-lab checkpoint (checked against its SHA-256 when it has one) or a Hugging Face GPT-2 directory.
pub fn load_model(path: &Path, device: &str) -> Result<Gpt> {
    let dev = parse_device(device)?;
    load_model_on(path, &dev, "it cannot be used")
}

/// [`load_model`] onto a device; `remedy` ends the error line of an unreadable or corrupt checkpoint.
pub fn load_model_on(path: &Path, dev: &Device, remedy: &str) -> Result<Gpt> {
    if gpt::is_hf_dir(path) {
        return Gpt::from_hf_dir(path, DType::F32, dev).with_context(|| {
            format!("cannot load the Hugging Face checkpoint {}", path.display())
        });
    }
    if path.is_dir() {
        bail!(
            "{} is a directory without config.json: pass a model.safetensors, or a Hugging Face GPT-2 directory",
            path.display()
        );
    }
    let bytes = if checksum_path(path).exists() {
        read_verified(path, remedy)?
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    Gpt::from_safetensors(&bytes, &path.display().to_string(), DType::F32, dev)
        .with_context(|| format!("{} is unreadable: {remedy}", path.display()))
}

/// Model and tokenizer must agree on the vocabulary.
fn check_vocab(tok: &Tokenizer, model: &Gpt) -> Result<()> {
    if tok.vocab_size() != model.config().vocab_size {
        bail!(
            "the tokenizer has {} tokens, the model {}: pass the model's own tokenizer (--tokenizer)",
            tok.vocab_size(),
            model.config().vocab_size
        );
    }
    Ok(())
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let model = load_model(&a.checkpoint, &a.device)?;
    let tok = tokenizer_for(&a.checkpoint, a.tokenizer.as_deref())?;
    check_vocab(&tok, &model)?;
    let gc = GenerateConfig {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        stop_token: Some(tok.eot()),
    };
    let seqs = gpt::generate(&model, &[tok.eot()], a.count, &gc, a.seed, 0)?;
    for (i, s) in seqs.iter().enumerate() {
        println!(
            "=== sample {i} ({} tokens) ===\n{}\n",
            s.len(),
            tok.decode(s)?
        );
    }
    Ok(())
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let model = load_model(&a.checkpoint, &a.device)?;
    let tok = tokenizer_for(&a.checkpoint, a.tokenizer.as_deref())?;
    check_vocab(&tok, &model)?;
    let c = RealCorpus::load(
        &Source::new(&a.data, Some(&a.column)),
        &CleanConfig::default(),
    )?;
    let (toks, _) = c.tokenize(&tok, Some(&TokenCache::new(TokenCache::default_dir())))?;
    let n = a.max_docs.unwrap_or(toks.len()).min(toks.len());
    let stream = token_stream(toks[..n].iter().map(Vec::as_slice), tok.eot());
    let e = train::perplexity(&model, &stream, 32)?;
    let summary = serde_json::json!({ "checkpoint": a.checkpoint, "data": a.data, "documents": n, "tokens": e.tokens, "mean_nll": e.mean_nll, "perplexity": e.perplexity });
    if let Some(path) = &a.dump {
        let t = model.config().block_size;
        let windows = (0..a.dump_windows)
            .filter(|w| (w + 1) * t < stream.len())
            .map(|w| {
                let x = Tensor::new(&stream[w * t..(w + 1) * t], model.device())?.unsqueeze(0)?;
                Ok(model.forward(&x)?.squeeze(0)?.to_vec2::<f32>()?)
            })
            .collect::<Result<Vec<_>>>()?;
        let dump = serde_json::json!({ "summary": summary, "block_size": t, "stream": stream, "window_logits": windows });
        write_atomic(path, serde_json::to_string(&dump)?.as_bytes())?;
    }
    println!("{summary}");
    Ok(())
}

/// Writes a checkpoint in Hugging Face transformers' layout: what `GPT2LMHeadModel.from_pretrained(DIR)` and
/// `AutoTokenizer.from_pretrained(DIR)` load.
pub fn export(a: ExportArgs) -> Result<()> {
    let model = load_model_on(&a.checkpoint, &Device::Cpu, "it cannot be used")?;
    let tok = tokenizer_for(&a.checkpoint, a.tokenizer.as_deref())?;
    check_vocab(&tok, &model)?;
    let (config, weights) = model.to_hf(Some(tok.eot()))?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}: choose a writable --out", a.out.display()))?;
    write_atomic(&a.out.join("config.json"), config.as_bytes())?;
    write_atomic(&a.out.join("model.safetensors"), &weights)?;
    for (name, bytes) in tok.hf_files(model.config().block_size)? {
        write_atomic(&a.out.join(name), &bytes)?;
    }
    println!("{}", a.out.display());
    Ok(())
}
