//! A count-based n-gram language model over token ids: the theory's estimator on real text, behind the same
//! seam as the GPT (`lm`'s traits), so the round pipeline runs it unchanged.
//!
//! Trained by counting D_t's token stream exactly as the GPT sees it (documents joined with their
//! separators; a context may reach back across a document boundary, as a GPT's window does). Conditional
//! probabilities, with k the order and c the (k-1)-token context (shorter at the start of a stream):
//!
//! - **none**, the maximum-likelihood estimate: P(w | c) = n(c w) / n(c), and 0 for a context never seen, so
//!   an unseen event has probability 0 and a held-out stream holding one has infinite perplexity.
//! - **add-k** (Lidstone): P(w | c) = (n(c w) + k) / (n(c) + V k) over the vocabulary of V token ids, at the
//!   highest order only (no back-off), as `nltk.lm.Lidstone`.
//! - **Kneser-Ney**, interpolated with one absolute discount D at every order (Kneser & Ney 1995 as
//!   interpolated by Chen & Goodman 1998, without the modified three-discount variant), as
//!   `nltk.lm.KneserNeyInterpolated`: at the highest order P(w | c) = max(n(c w) - D, 0) / n(c) +
//!   D N1+(c .) / n(c) P(w | c'), where c' drops c's first token; at lower orders the counts are continuation
//!   counts N1+(. c w) (how many distinct tokens precede c w) over N1+(. c .); a context without data passes
//!   straight to c'. The recursion ends at the continuation unigram N1+(. w) / N1+(. .) (`base =
//!   "continuation"`, NLTK's: a token never seen after another has probability 0), or (`base = "uniform"`,
//!   the default) interpolates that unigram with the uniform distribution over the vocabulary with the same
//!   discount, so every token has positive probability. A unigram model's only level is its highest, so there
//!   the base is the raw counts n(w) / N, discounted towards the uniform (`"uniform"`) or not at all
//!   (`"continuation"`, which at order 1 is the MLE); NLTK's order-1 model is the uniform distribution alone.
//!
//! It also measures a risk that stays finite for the MLE ([`Ngram::risk`]): the squared L2 distance of the
//! model's conditional distributions from the whole corpus's, averaged over the corpus's contexts.
//!
//! It knows nothing of documents, tokenizers, rounds or run directories.

mod counts;
mod kind;
mod model;

pub use counts::{Counts, MAX_ORDER};
pub use kind::{NgramKind, Reference, MODEL_FILE};
pub use model::{Ngram, NgramConfig, Smoothing};

/// Errors of the n-gram crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid n-gram settings: {0}")]
    Config(String),
    #[error("n-gram model file {what}: {msg}")]
    Corrupt { what: String, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;
