//! `collapse-lab bench`: throughput of training, evaluation and generation of one model on one device, with
//! the device's own matmul peak measured in the same run so that ratios, not noisy absolute times, compare.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use clap::Args;
use gpt::{generate, GenerateConfig, Gpt, GptConfig};
use rand::{Rng, SeedableRng};
use serde_json::json;
use train::{perplexity, Batcher, TrainConfig, Trainer};

use crate::device::{
    describe, page_faults, parse_device, peak_rss_mb, rayon_threads, set_tf32, synchronize,
};

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  collapse-lab bench --vocab 8192 --steps 3 --gen-batches 1,32")]
pub struct BenchArgs {
    /// Vocabulary size of the model (50257 is GPT-2's).
    #[arg(long, default_value_t = 50257)]
    pub vocab: usize,
    /// Training batch size in windows of block_size tokens.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Timed training steps (after one untimed warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: u64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Batch sizes of the generation measurement (200 new tokens from a one-token prompt each).
    #[arg(long, value_delimiter = ',', default_value = "1,32,256")]
    pub gen_batches: Vec<usize>,
    /// New tokens per sequence in the generation measurement.
    #[arg(long, default_value_t = 200)]
    pub gen_tokens: usize,
    /// Full f32 matmuls on CUDA instead of TF32.
    #[arg(long)]
    pub no_tf32: bool,
}

fn matmul_gflops(device: &Device) -> Result<f64> {
    let n = 2048;
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?;
    let _ = a.matmul(&b)?;
    synchronize(device)?;
    let reps = if device.is_cpu() { 5 } else { 50 };
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        synchronize(device)?;
        best = best.min(t.elapsed().as_secs_f64());
        drop(c);
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

pub fn run(args: BenchArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    set_tf32(&device, !args.no_tf32);
    let config = GptConfig {
        vocab_size: args.vocab,
        ..GptConfig::paper()
    };
    config.validate()?;
    let t = config.block_size;
    eprintln!(
        "bench: {} params on {}",
        config.num_params(true),
        describe(&device)
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let tokens: Vec<u32> = (0..200_000)
        .map(|_| rng.random_range(0..args.vocab as u32))
        .collect();

    eprintln!("bench: matmul peak (2048^3 f32)...");
    let peak = matmul_gflops(&device)?;

    let model = Gpt::new(&config, 0, DType::F32, &device)?;
    let params = model.num_params(true);
    let tc = TrainConfig {
        steps: args.steps + 1,
        batch_size: args.batch,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, tc, 0)?;
    let batcher = Batcher::new(&tokens, t, args.batch, 0)?;
    eprintln!("bench: training warm-up step...");
    trainer
        .train_step(&batcher)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    let faults = page_faults();
    let start = Instant::now();
    let mut last_loss = 0.0;
    for s in 0..args.steps {
        last_loss = trainer
            .train_step(&batcher)?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        eprintln!(
            "bench: train step {}/{} loss {last_loss:.4}",
            s + 1,
            args.steps
        );
    }
    synchronize(&device)?;
    let train_s = start.elapsed().as_secs_f64();
    let train_faults = (page_faults() - faults) / args.steps.max(1);
    let train_tps = (args.steps as usize * args.batch * t) as f64 / train_s;
    let train_gflops = train_tps * config.train_flops_per_token() / 1e9;
    let train_rss = peak_rss_mb();
    // The peak is the better of two measurements around training: on a shared machine one can land in a
    // noisy moment, and a low peak would inflate the MFU.
    let peak = peak.max(matmul_gflops(&device)?);
    let model = trainer.model;
    drop(trainer.opt);

    eprintln!("bench: evaluation...");
    let eval_tokens = &tokens[..args.batch * t * 4 + 1];
    perplexity(&model, &eval_tokens[..args.batch * t + 1], args.batch)?;
    let start = Instant::now();
    let e = perplexity(&model, eval_tokens, args.batch)?;
    synchronize(&device)?;
    let eval_tps = e.tokens as f64 / start.elapsed().as_secs_f64();

    let mut gen = serde_json::Map::new();
    let mut gen_faults = serde_json::Map::new();
    let gc = GenerateConfig {
        max_new_tokens: args.gen_tokens,
        stop_token: None,
        ..GenerateConfig::default()
    };
    for &b in &args.gen_batches {
        eprintln!(
            "bench: generation, batch {b} x {} new tokens...",
            args.gen_tokens
        );
        let faults = page_faults();
        let start = Instant::now();
        let out = generate(&model, &[50256 % args.vocab as u32], b, &gc, 0, 0)?;
        synchronize(&device)?;
        let new: usize = out.iter().map(Vec::len).sum();
        gen.insert(
            b.to_string(),
            json!(new as f64 / start.elapsed().as_secs_f64()),
        );
        gen_faults.insert(
            b.to_string(),
            json!((page_faults() - faults) / new.max(1) as u64),
        );
    }

    let report = json!({
        "device": describe(&device),
        "params": params,
        "train_tokens_per_s": train_tps,
        "train_step_s": train_s / args.steps as f64,
        "train_last_loss": last_loss,
        "eval_tokens_per_s": eval_tps,
        "generate_new_tokens_per_s": gen,
        "matmul_gflops": peak,
        "train_gflops": train_gflops,
        "train_mfu": train_gflops / peak,
        "train_peak_rss_mb": train_rss,
        "train_page_faults_per_step": train_faults,
        "generate_page_faults_per_new_token": gen_faults,
        "peak_rss_mb": peak_rss_mb(),
        "tf32": !args.no_tf32 && device.is_cuda(),
        "config": { "model": config, "batch": args.batch, "steps": args.steps, "gen_tokens": args.gen_tokens },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  collapse-lab bench-corpus --data wiki_movie_plots_deduped.csv --tokenizer hf:openai-community/gpt2"
)]
pub struct CorpusBenchArgs {
    /// Data source (file, folder or hf://datasets/OWNER/NAME/FILE); defaults to $COLLAPSE_DATA.
    #[arg(long, env = "COLLAPSE_DATA")]
    pub data: String,
    /// Tokenizer: a tokenizer.json, a folder with vocab.json + merges.txt, or hf:OWNER/NAME.
    #[arg(long, default_value = "hf:openai-community/gpt2")]
    pub tokenizer: String,
}

/// Loading, cleaning and tokenising a whole corpus, cold and then from a fresh token cache.
pub fn run_corpus(args: CorpusBenchArgs) -> Result<()> {
    use corpus::{CleanConfig, RealCorpus, Source, TokenCache, Tokenizer, TokenizerSpec};
    let tok = Tokenizer::load(&TokenizerSpec::parse(&args.tokenizer)?)?;
    let source = Source::new(&args.data, None);
    let cache_dir = tempfile::tempdir()?;
    let cache = TokenCache::new(cache_dir.path());
    let mut timings = Vec::new();
    let mut summary = None;
    for label in ["cold", "cached"] {
        eprintln!("bench-corpus: {label} load...");
        let t0 = Instant::now();
        let c = RealCorpus::load(&source, &CleanConfig::default())?;
        let loaded = t0.elapsed().as_secs_f64();
        let (tokens, hit) = c.tokenize(&tok, Some(&cache))?;
        let total = t0.elapsed().as_secs_f64();
        timings.push(json!({ "pass": label, "load_clean_s": loaded, "tokenize_s": total - loaded, "total_s": total, "cache_hit": hit }));
        let n_tokens: usize = tokens.iter().map(Vec::len).sum();
        let words: usize = c
            .docs
            .iter()
            .map(|d| d.text.split_whitespace().count())
            .sum();
        summary = Some(
            json!({ "documents": c.docs.len(), "clean": c.report, "words": words, "tokens": n_tokens,
            "tokens_with_separators": n_tokens + c.docs.len() }),
        );
    }
    println!(
        "{}",
        serde_json::to_string_pretty(
            &json!({ "corpus": summary, "passes": timings, "threads": rayon_threads() })
        )?
    );
    Ok(())
}
