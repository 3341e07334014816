use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Statistics of a set of texts that show collapse without a model: shorter texts, fewer distinct words and
/// word pairs, lower entropy of the word distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TextStats {
    pub documents: usize,
    pub mean_words: f64,
    /// Distinct words / words.
    pub distinct_1: f64,
    /// Distinct adjacent word pairs (within a document) / pairs.
    pub distinct_2: f64,
    /// Entropy in bits of the unigram (word) distribution of all texts together.
    pub unigram_entropy: f64,
}

impl TextStats {
    /// Words are whitespace-separated and lower-cased.
    pub fn of<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut pairs: HashMap<(String, String), ()> = HashMap::new();
        let (mut docs, mut words, mut n_pairs) = (0, 0usize, 0usize);
        for t in texts {
            docs += 1;
            let ws: Vec<String> = t.split_whitespace().map(str::to_lowercase).collect();
            words += ws.len();
            for w in &ws {
                *counts.entry(w.clone()).or_default() += 1;
            }
            for p in ws.windows(2) {
                n_pairs += 1;
                pairs.insert((p[0].clone(), p[1].clone()), ());
            }
        }
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        // Summed in sorted order: HashMap order changes between processes, and the last bit must not.
        let mut sorted: Vec<usize> = counts.values().copied().collect();
        sorted.sort_unstable();
        let entropy = sorted
            .iter()
            .map(|&c| {
                let p = c as f64 / words as f64;
                -p * p.log2()
            })
            .sum();
        Self {
            documents: docs,
            mean_words: ratio(words, docs),
            distinct_1: ratio(counts.len(), words),
            distinct_2: ratio(pairs.len(), n_pairs),
            unigram_entropy: entropy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_known_texts() {
        let s = TextStats::of(["a b a b", "c"]);
        assert_eq!(s.documents, 2);
        assert_eq!(s.mean_words, 2.5);
        assert_eq!(s.distinct_1, 3.0 / 5.0);
        assert_eq!(s.distinct_2, 2.0 / 3.0);
        let want = -(0.4f64 * 0.4f64.log2()) * 2.0 - 0.2 * 0.2f64.log2();
        assert!((s.unigram_entropy - want).abs() < 1e-12);
        let repetitive = TextStats::of(["the the the the"]);
        assert_eq!(repetitive.unigram_entropy, 0.0);
        assert_eq!(TextStats::of([]).mean_words, 0.0);
    }
}
