//! Training and evaluation of a [`gpt::Gpt`]: AdamW as nanoGPT configures it, the learning-rate schedule,
//! gradient clipping, seeded batches of token windows, the training loop, exact held-out perplexity and
//! per-document scores (NLL, entropy) that curation ranks by.
//!
//! It also puts the GPT behind the pipeline's seam ([`GptKind`], implementing `lm`'s traits). It consumes
//! token streams and a model; it knows nothing of documents, tokenizers, schedules of rounds or run
//! directories (the caller decides where state is saved, with the save/load functions here).

mod batch;
mod eval;
mod kind;
mod optim;
mod trainer;

pub use batch::Batcher;
pub use eval::{perplexity, score_document};
pub use kind::{GptKind, MODEL_FILE, OPTIMIZER_FILE};
pub use lm::{AdamWConfig, DocumentScore, Evaluation, LrSchedule, TrainConfig};
pub use optim::AdamW;
pub use trainer::Trainer;

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
    Settings(#[from] lm::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
