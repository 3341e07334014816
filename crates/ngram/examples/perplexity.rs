//! Fits an n-gram model on one stream of token ids and scores another, for the reference check against
//! NLTK (scripts/check-ngram.sh): prints, as JSON, the held-out perplexity and every held-out token's
//! probability given the (up to order - 1) tokens before it.
//!
//!   cargo run -p ngram --example perplexity -- --order 3 --smoothing kneser-ney:0.1:continuation \
//!       --vocab 5000 train.txt heldout.txt

use clap::Parser;
use ngram::{Ngram, NgramConfig, Smoothing};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    order: usize,
    /// none, add-k:K, or kneser-ney:D[:uniform|continuation].
    #[arg(long)]
    smoothing: String,
    /// Token ids are 0 .. vocab - 1.
    #[arg(long)]
    vocab: usize,
    /// Whitespace-separated token ids to count.
    train: std::path::PathBuf,
    /// Whitespace-separated token ids to score.
    heldout: std::path::PathBuf,
}

fn ids(path: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .split_whitespace()
        .map(|t| {
            t.parse()
                .unwrap_or_else(|_| panic!("{t:?} is not a token id"))
        })
        .collect()
}

fn main() {
    let a = Args::parse();
    let parts: Vec<&str> = a.smoothing.split(':').collect();
    let smoothing: Smoothing = match parts.as_slice() {
        ["none"] => serde_json::from_str(r#"{"kind": "none"}"#),
        ["add-k", k] => serde_json::from_str(&format!(r#"{{"kind": "add-k", "k": {k}}}"#)),
        ["kneser-ney", d] => {
            serde_json::from_str(&format!(r#"{{"kind": "kneser-ney", "discount": {d}}}"#))
        }
        ["kneser-ney", d, base] => serde_json::from_str(&format!(
            r#"{{"kind": "kneser-ney", "discount": {d}, "base": "{base}"}}"#
        )),
        _ => panic!("unknown smoothing {:?}", a.smoothing),
    }
    .expect("a smoothing");
    let cfg = NgramConfig {
        order: a.order,
        smoothing,
        vocab_size: a.vocab,
    };
    let model = Ngram::fit(cfg, &ids(&a.train)).unwrap_or_else(|e| panic!("{e}"));
    let heldout = ids(&a.heldout);
    let eval = model.evaluate(&heldout);
    let probs: Vec<f64> = (1..heldout.len())
        .map(|i| model.prob(&heldout[..i], heldout[i]))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "perplexity": eval.perplexity,
            "mean_nll": eval.mean_nll,
            "tokens": eval.tokens,
            "probs": probs,
        })
    );
}
