//! The one place the round pipeline meets models: a [`Models`] maps a `[model]` section to a
//! [`lm::ModelKind`]. The binary provides it, and it alone names model crates; a second kind of model needs
//! an implementation of `lm`'s traits and a line in that mapping, nothing here.

use crate::config::ModelSection;

/// A [`Models`] reports its errors in its own types (the binary's, with their context).
pub type ModelsResult<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub trait Models: Sync {
    /// Checks a `[model]` section before anything runs (one line saying what is wrong).
    fn validate(&self, model: &ModelSection) -> ModelsResult<()>;
    /// The kind of model a `[model]` section describes, for a tokenizer of `vocab_size` tokens (reading and
    /// checking `init_from`, if any).
    fn kind(&self, model: &ModelSection, vocab_size: usize)
        -> ModelsResult<Box<dyn lm::ModelKind>>;
}
