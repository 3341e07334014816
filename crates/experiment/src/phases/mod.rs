//! The phases of a round, in order: compose D_t (curate, for curated chains), train, evaluate, generate,
//! the tails. Each reads its output if it exists, else computes it and writes it atomically; the round's
//! metrics (`crate::metrics`) come last.

pub(crate) mod compose;
pub(crate) mod curate;
pub(crate) mod evaluate;
pub(crate) mod generate;
pub(crate) mod tails;
pub(crate) mod train;
