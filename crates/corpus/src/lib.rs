//! The corpus of a collapse experiment: documents and where they come from, sources a user can name (CSV,
//! CSV.zst, JSONL, a folder of text files, the Hugging Face Hub), cleaning, the tokenizer and its on-disk token
//! cache, the held-out split of each repetition, the round schedule (settings 0-3 and their generalisation),
//! the composition of each round's training corpus with a manifest that records it, the curation rules
//! that pick a round's documents from scored candidates, and statistics of a set of texts.
//!
//! It knows nothing of models, training or run directories: it turns text into documents and token ids, and
//! decides which documents each round trains on.

mod clean;
mod curate;
mod document;
mod real;
mod round;
mod schedule;
mod source;
mod split;
mod stats;
mod tokenizer;

pub use clean::{clean_documents, clean_text, CleanConfig, CleanReport};
pub use curate::{
    fraction_candidates, greedy_distinct_ngrams, keep_lowest, keep_under, oracle_is_real,
    oracle_select, CurationCounts, CurationRecord, Decision, OracleStream, ORACLE_SHORTFALL,
};
pub use document::{DocId, Document, Origin};
pub use real::RealCorpus;
pub use round::{compose, compose_selected, Manifest, ManifestEntry};
pub use schedule::{Alpha, Plan, RoundPlan, Schedule, Setting, Size};
pub use source::{load_source, Source, DEFAULT_SOURCE};
pub use split::{bpe_training_docs, Split};
pub use stats::{mtld, LengthRobustStats, TextStats, MTLD_THRESHOLD};
pub use tokenizer::{
    token_stream, token_stream_with_ends, TokenCache, Tokenizer, TokenizerSpec, END_OF_TEXT,
};

/// Errors of the corpus crate; each message says what is wrong and, where it can, what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("data source {source_name}: {msg}")]
    Source { source_name: String, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("schedule: {0}")]
    Schedule(String),
    #[error("split: {0}")]
    Split(String),
    #[error("curation: {0}")]
    Curation(String),
    #[error("round corpus: {0}")]
    Round(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
