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

/// Statistics that do not move with document length, for comparing rounds whose plots shrink or grow:
/// distinct-1 and distinct-2 over a fixed number `k` of words (the first `k` words of the texts in order;
/// distinct-n over a fixed number of *documents* still rises when documents get shorter, since fewer words
/// repeat), and MTLD, the measure of textual lexical diversity of McCarthy & Jarvis (2010).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LengthRobustStats {
    /// The number of words the distinct-n values were measured on (`k`).
    pub words: usize,
    /// Distinct words / k, `None` when the texts hold fewer than `k` words.
    pub distinct_1: Option<f64>,
    /// Distinct adjacent word pairs (within a document) / pairs among the first `k` words.
    pub distinct_2: Option<f64>,
    /// MTLD over every word of the texts (mean of the forward and backward passes, factor threshold 0.72),
    /// `None` without words.
    pub mtld: Option<f64>,
}

/// The factor threshold of MTLD, McCarthy & Jarvis's 0.72.
pub const MTLD_THRESHOLD: f64 = 0.72;

fn words_of(t: &str) -> Vec<String> {
    t.split_whitespace().map(str::to_lowercase).collect()
}

impl LengthRobustStats {
    pub fn of<'a>(texts: impl IntoIterator<Item = &'a str>, k: usize) -> Self {
        let docs: Vec<Vec<String>> = texts.into_iter().map(words_of).collect();
        let total: usize = docs.iter().map(Vec::len).sum();
        let (mut distinct_1, mut distinct_2) = (None, None);
        if k > 0 && total >= k {
            let mut left = k;
            let mut seen = std::collections::HashSet::new();
            let mut pairs = std::collections::HashSet::new();
            let mut n_pairs = 0usize;
            for d in &docs {
                let take = left.min(d.len());
                let part = &d[..take];
                seen.extend(part.iter().cloned());
                for p in part.windows(2) {
                    n_pairs += 1;
                    pairs.insert((p[0].clone(), p[1].clone()));
                }
                left -= take;
                if left == 0 {
                    break;
                }
            }
            distinct_1 = Some(seen.len() as f64 / k as f64);
            distinct_2 = Some(if n_pairs == 0 {
                0.0
            } else {
                pairs.len() as f64 / n_pairs as f64
            });
        }
        let all: Vec<&str> = docs.iter().flatten().map(String::as_str).collect();
        Self {
            words: k,
            distinct_1,
            distinct_2,
            mtld: mtld(&all),
        }
    }
}

/// One MTLD pass: the words divided by the number of factors, a factor ending each time the running
/// type-token ratio falls to the threshold, and the remainder counted as the fraction of a factor it
/// covers, (1 - TTR) / (1 - threshold).
fn mtld_pass<'a>(words: impl Iterator<Item = &'a str>) -> (usize, f64) {
    let mut types = std::collections::HashSet::new();
    let (mut n, mut tokens, mut factors) = (0usize, 0usize, 0.0f64);
    for w in words {
        n += 1;
        tokens += 1;
        types.insert(w);
        if (types.len() as f64 / tokens as f64) <= MTLD_THRESHOLD {
            factors += 1.0;
            types.clear();
            tokens = 0;
        }
    }
    if tokens > 0 {
        let ttr = types.len() as f64 / tokens as f64;
        factors += (1.0 - ttr) / (1.0 - MTLD_THRESHOLD);
    }
    (n, factors)
}

/// MTLD of a word sequence: the mean of the forward and backward passes' words per factor. A sequence that
/// never completes any part of a factor (every word new) counts as one factor, so its length is returned.
/// This is the algorithm (threshold test `<=`, partial last factor, no minimum factor length) of the
/// `lexicalrichness` package's `mtld`, which the tests reproduce.
pub fn mtld(words: &[&str]) -> Option<f64> {
    if words.is_empty() {
        return None;
    }
    let pass = |(n, f): (usize, f64)| if f > 0.0 { n as f64 / f } else { n as f64 };
    let fwd = pass(mtld_pass(words.iter().copied()));
    let bwd = pass(mtld_pass(words.iter().rev().copied()));
    Some((fwd + bwd) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct-n over the first k words does not rise when documents shrink: the same word stream cut into
    /// short or long documents gives the same distinct-1; over a fixed number of documents it does not.
    #[test]
    fn distinct_at_k_words_is_free_of_document_length() {
        let words: Vec<String> = (0..400).map(|i| format!("w{}", (i * 7) % 97)).collect();
        let long: Vec<String> = words.chunks(100).map(|c| c.join(" ")).collect();
        let short: Vec<String> = words.chunks(10).map(|c| c.join(" ")).collect();
        let a = LengthRobustStats::of(long.iter().map(String::as_str), 200);
        let b = LengthRobustStats::of(short.iter().map(String::as_str), 200);
        assert_eq!(a.distinct_1, b.distinct_1);
        assert_eq!(a.distinct_1, Some(97.0 / 200.0));
        // The old statistic over 4 documents: 400 words of long documents, 40 of short ones.
        let old_long = TextStats::of(long.iter().take(4).map(String::as_str));
        let old_short = TextStats::of(short.iter().take(4).map(String::as_str));
        assert!(old_short.distinct_1 > 2.0 * old_long.distinct_1);
        // Fewer words than k: no value.
        assert_eq!(
            LengthRobustStats::of(["a b c"], 4).distinct_1,
            None,
            "3 words cannot give a distinct-1 at 4"
        );
        let s = LengthRobustStats::of(["a b a b", "c d"], 5);
        assert_eq!(s.distinct_1, Some(3.0 / 5.0));
        // Pairs among the first 5 words, within documents: (a b) (b a) (a b) and none from "c".
        assert_eq!(s.distinct_2, Some(2.0 / 3.0));
    }

    /// MTLD by hand, and equal to `LexicalRichness(text).mtld(threshold=0.72)` of the `lexicalrichness`
    /// package (0.7.x) on the same texts: 3.0, 4.24 and 5.0. "a b a b a b" forward: TTR 1, 1, 2/3 (<= 0.72:
    /// a factor), then "b a b": 1, 1, 2/3 (a second factor): 6 words / 2 factors = 3 each way.
    #[test]
    fn mtld_matches_a_hand_computation() {
        let w = ["a", "b", "a", "b", "a", "b"];
        assert_eq!(mtld(&w), Some(3.0));
        // A remainder: "a b a c": factor after "a b a" (2/3), then "c" alone: TTR 1 -> (1 - 1)/0.28 = 0:
        // forward 4 / 1 = 4; backward "c a b a": TTR 1, 1, 1, 3/4 = 0.75 > 0.72: (1 - 0.75) / 0.28 = 0.893
        // factors, 4 / 0.893 = 4.48.
        let v = mtld(&["a", "b", "a", "c"]).unwrap();
        let want = (4.0 + 4.0 / (0.25 / 0.28)) / 2.0;
        assert!((v - want).abs() < 1e-12, "{v} {want}");
        assert_eq!(mtld(&[]), None);
        // Repetitive text has a low MTLD, varied text a high one.
        let rep: Vec<&str> = std::iter::repeat_n(["the", "man", "went"], 50)
            .flatten()
            .collect();
        let var: Vec<String> = (0..150).map(|i| format!("w{i}")).collect();
        let var: Vec<&str> = var.iter().map(String::as_str).collect();
        // "the man went the man" is a factor (TTR 3/5): 150 words / 30 factors.
        assert_eq!(mtld(&rep), Some(5.0));
        assert!(mtld(&var).unwrap() > 100.0);
    }

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
