use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One repetition's division of the corpus: documents held out for evaluation, and the fresh pool in the
/// order fresh documents are drawn. Indices refer to the cleaned, deduplicated corpus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub heldout: Vec<usize>,
    pub pool: Vec<usize>,
}

impl Split {
    /// Shuffles `0..n_docs` with the repetition's seed and holds out the first `heldout_docs`.
    pub fn new(n_docs: usize, heldout_docs: usize, seed: u64) -> Result<Self> {
        if heldout_docs == 0 {
            return Err(Error::Split("heldout_docs must be at least 1".into()));
        }
        if heldout_docs >= n_docs {
            return Err(Error::Split(format!(
                "cannot hold out {heldout_docs} of {n_docs} documents and keep a training pool"
            )));
        }
        let mut idx: Vec<usize> = (0..n_docs).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let pool = idx.split_off(heldout_docs);
        Ok(Self { heldout: idx, pool })
    }
}

/// Documents a tokenizer may be trained on: those held out by none of the repetitions, so no evaluation text
/// shapes the vocabulary.
pub fn bpe_training_docs(n_docs: usize, splits: &[Split]) -> Vec<usize> {
    let mut held = vec![false; n_docs];
    for s in splits {
        for &i in &s.heldout {
            held[i] = true;
        }
    }
    (0..n_docs).filter(|&i| !held[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_seeded_disjoint_and_complete() {
        let a = Split::new(100, 10, 1).unwrap();
        assert_eq!(a, Split::new(100, 10, 1).unwrap());
        assert_ne!(a, Split::new(100, 10, 2).unwrap());
        let mut all: Vec<usize> = a.heldout.iter().chain(&a.pool).copied().collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert!(Split::new(10, 10, 0)
            .unwrap_err()
            .to_string()
            .contains("cannot hold out 10 of 10"));
        assert!(Split::new(10, 0, 0).is_err());
    }
}
