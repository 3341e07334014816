//! `generate` and `eval` on a single checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::DType;
use clap::Args;
use corpus::{token_stream, CleanConfig, RealCorpus, Source, TokenCache, Tokenizer, TokenizerSpec};
use gpt::{GenerateConfig, Gpt};

use crate::device::parse_device;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A model.safetensors written by `run`.
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
    /// A model.safetensors written by `run`.
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
}

/// The tokenizer given, or the `tokenizer.json` of the run directory that holds the checkpoint.
fn tokenizer_for(checkpoint: &Path, given: Option<&str>) -> Result<Tokenizer> {
    if let Some(spec) = given {
        return Ok(Tokenizer::load(&TokenizerSpec::parse(spec)?)?);
    }
    let found = checkpoint
        .ancestors()
        .skip(1)
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

fn load_model(path: &Path, device: &str) -> Result<Gpt> {
    let dev = parse_device(device)?;
    Gpt::load(path, DType::F32, &dev)
        .with_context(|| format!("cannot load checkpoint {}", path.display()))
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let model = load_model(&a.checkpoint, &a.device)?;
    let tok = tokenizer_for(&a.checkpoint, a.tokenizer.as_deref())?;
    if tok.vocab_size() != model.config().vocab_size {
        anyhow::bail!(
            "the tokenizer has {} tokens, the model {}: pass the run's tokenizer",
            tok.vocab_size(),
            model.config().vocab_size
        );
    }
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
    let c = RealCorpus::load(
        &Source::new(&a.data, Some(&a.column)),
        &CleanConfig::default(),
    )?;
    let (toks, _) = c.tokenize(&tok, Some(&TokenCache::new(TokenCache::default_dir())))?;
    let n = a.max_docs.unwrap_or(toks.len()).min(toks.len());
    let stream = token_stream(toks[..n].iter().map(Vec::as_slice), tok.eot());
    let e = train::perplexity(&model, &stream, 32)?;
    println!(
        "{}",
        serde_json::json!({ "checkpoint": a.checkpoint, "data": a.data, "documents": n, "tokens": e.tokens, "mean_nll": e.mean_nll, "perplexity": e.perplexity })
    );
    Ok(())
}
