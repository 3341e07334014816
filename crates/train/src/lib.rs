//! Training and evaluation of a [`gpt::Gpt`]: AdamW as nanoGPT configures it, the learning-rate schedule,
//! gradient clipping, seeded batches of token windows, the training loop, exact held-out perplexity and
//! per-document scores (NLL, entropy) that curation ranks by.
//!
//! It consumes token streams and a model; it knows nothing of documents, tokenizers, schedules of rounds or
//! run directories (the caller decides where state is saved, with the save/load functions here).

mod batch;
mod eval;
mod optim;
mod stats;
mod trainer;

pub use batch::Batcher;
pub use eval::{perplexity, score_document, DocumentScore, Evaluation};
pub use optim::{AdamW, AdamWConfig, LrSchedule};
pub use stats::{mtld, LengthRobustStats, TextStats, MTLD_THRESHOLD};
pub use trainer::{TrainConfig, Trainer};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid training settings: {0}")]
    Config(String),
    #[error("token stream of {len} tokens is too short for windows of {need}")]
    TooFewTokens { len: usize, need: usize },
    #[error("optimizer state {path}: {msg}")]
    State { path: String, msg: String },
    #[error(transparent)]
    Model(#[from] gpt::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
