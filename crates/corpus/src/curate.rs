//! Curation: which of a round's candidate documents enter D_t. The rules here see provenance, scores and
//! token ids, never a model: the caller scores candidates (with a verifier or the generating model) and asks
//! these functions which to keep. Every rule keeps exactly the number of documents the schedule asks for,
//! from a number of candidates fixed before the run starts.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{DocId, Error, Result};

/// One candidate's fate, recorded in the round's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub id: DocId,
    pub real: bool,
    /// The score the filter ranked by (per-token NLL, mean entropy, or new n-grams), where it ranks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    pub kept: bool,
}

/// What a round's filter did: its candidates by provenance, what it kept and its measured error rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurationCounts {
    /// The filter's name in the config.
    pub filter: String,
    /// oracle, verifier, self, diversity or none.
    pub kind: String,
    pub candidates_real: usize,
    pub candidates_synthetic: usize,
    pub kept_real: usize,
    pub kept_synthetic: usize,
    /// Type I: real candidates rejected / real candidates (absent when the filter saw no real candidate).
    pub type1: Option<f64>,
    /// Type II: synthetic candidates kept / synthetic candidates (absent when it saw none).
    pub type2: Option<f64>,
}

/// A round's curation as its manifest records it: the counts and every decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurationRecord {
    #[serde(flatten)]
    pub counts: CurationCounts,
    pub decisions: Vec<Decision>,
}

impl CurationRecord {
    pub fn new(filter: &str, kind: &str, decisions: Vec<Decision>) -> Self {
        let count = |real: bool, kept: Option<bool>| {
            decisions
                .iter()
                .filter(|d| d.real == real && kept.is_none_or(|k| d.kept == k))
                .count()
        };
        let (cr, cs) = (count(true, None), count(false, None));
        let (kr, ks) = (count(true, Some(true)), count(false, Some(true)));
        Self {
            counts: CurationCounts {
                filter: filter.to_string(),
                kind: kind.to_string(),
                candidates_real: cr,
                candidates_synthetic: cs,
                kept_real: kr,
                kept_synthetic: ks,
                type1: (cr > 0).then(|| (cr - kr) as f64 / cr as f64),
                type2: (cs > 0).then(|| ks as f64 / cs as f64),
            },
            decisions,
        }
    }
}

/// The candidate stream of the appendix-D oracle for one round: `length` candidates, `real` of them fresh real
/// documents and `synthetic` generated ones, interleaved so that every prefix holds round(k alpha) real ones,
/// with the parameters it was planned for (which [`oracle_select`] walks it with).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OracleStream {
    pub length: usize,
    pub real: usize,
    pub synthetic: usize,
    pub needed: usize,
    pub alpha: f64,
    pub e1: f64,
    pub e2: f64,
}

/// The probability, accepted at plan time, that an oracle stream keeps fewer documents than the round needs.
pub const ORACLE_SHORTFALL: f64 = 1e-9;

fn real_before(k: usize, alpha: f64) -> usize {
    (k as f64 * alpha + 0.5).floor() as usize
}

/// Whether position `i` of an oracle stream with fresh fraction `alpha` is a real candidate.
pub fn oracle_is_real(i: usize, alpha: f64) -> bool {
    real_before(i + 1, alpha) > real_before(i, alpha)
}

impl OracleStream {
    /// The shortest stream that keeps `needed` documents with probability at least 1 - [`ORACLE_SHORTFALL`]
    /// when a real candidate is rejected with probability `e1` and a synthetic one kept with probability `e2`;
    /// an error with the numbers when that needs more than `max_candidates`.
    pub fn plan(
        needed: usize,
        alpha: f64,
        e1: f64,
        e2: f64,
        max_candidates: usize,
    ) -> Result<Self> {
        let keep_real = 1.0 - e1;
        let rate = alpha * keep_real + (1.0 - alpha) * e2;
        if needed > 0 && rate <= 0.0 {
            return Err(Error::Curation(format!(
                "the oracle (e1 = {e1}, e2 = {e2}) keeps nothing at alpha = {alpha}: no number of candidates \
                 gives {needed} documents"
            )));
        }
        // dp[k]: probability that the stream so far kept k < needed documents.
        let mut dp = vec![0.0f64; needed.max(1)];
        dp[0] = 1.0;
        let mut length = 0;
        while needed > 0 && dp.iter().sum::<f64>() > ORACLE_SHORTFALL {
            if length == max_candidates {
                let expected = (needed as f64 / rate).ceil();
                return Err(Error::Curation(format!(
                    "the oracle (e1 = {e1}, e2 = {e2}) at alpha = {alpha} keeps {rate:.3} of its candidates: \
                     {needed} documents need about {expected} candidates and more than {max_candidates} to be \
                     sure of them; raise curation.max_candidates or relax e1 / e2"
                )));
            }
            let p = if oracle_is_real(length, alpha) {
                keep_real
            } else {
                e2
            };
            for k in (0..needed).rev() {
                let stay = dp[k] * (1.0 - p);
                let from_below = if k > 0 { dp[k - 1] * p } else { 0.0 };
                dp[k] = stay + from_below;
            }
            length += 1;
        }
        let real = real_before(length, alpha);
        Ok(Self {
            length,
            real,
            synthetic: length - real,
            needed,
            alpha,
            e1,
            e2,
        })
    }
}

/// Runs the oracle over a planned stream: walks it in order, drawing one uniform per candidate from `seed`
/// (a real one is rejected when u < e1, a synthetic one kept when u < e2), and stops once `needed` are kept.
/// Returns the decisions in stream order (candidates after the stop are not part of them) and the indices of
/// the kept real and synthetic candidates.
pub fn oracle_select(
    stream: &OracleStream,
    real_ids: &[DocId],
    synthetic_ids: &[DocId],
    seed: u64,
) -> Result<(Vec<Decision>, Vec<usize>, Vec<usize>)> {
    if real_ids.len() < stream.real || synthetic_ids.len() < stream.synthetic {
        return Err(Error::Curation(format!(
            "the oracle's stream needs {} real and {} synthetic candidates, got {} and {}",
            stream.real,
            stream.synthetic,
            real_ids.len(),
            synthetic_ids.len()
        )));
    }
    let &OracleStream {
        needed,
        alpha,
        e1,
        e2,
        ..
    } = stream;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut decisions, mut real, mut syn) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ri, mut si) = (0, 0);
    for i in 0..stream.length {
        if real.len() + syn.len() == needed {
            break;
        }
        let u: f64 = rng.random();
        let is_real = oracle_is_real(i, alpha);
        let (id, kept) = if is_real {
            ri += 1;
            (&real_ids[ri - 1], u >= e1)
        } else {
            si += 1;
            (&synthetic_ids[si - 1], u < e2)
        };
        if kept {
            if is_real {
                real.push(ri - 1);
            } else {
                syn.push(si - 1);
            }
        }
        decisions.push(Decision {
            id: id.clone(),
            real: is_real,
            score: None,
            kept,
        });
    }
    if real.len() + syn.len() < needed {
        return Err(Error::Curation(format!(
            "the oracle kept {} of the {needed} documents needed from all {} planned candidates (an event \
             of probability below {ORACLE_SHORTFALL:e} at plan time)",
            real.len() + syn.len(),
            stream.length
        )));
    }
    Ok((decisions, real, syn))
}

/// Candidates a filter that keeps the fraction `q` needs for `needed` documents: ceil(needed / q).
pub fn fraction_candidates(needed: usize, q: f64) -> usize {
    if needed == 0 {
        return 0;
    }
    // The nudge keeps 12 / 0.5 at 24 when the division lands a hair above it.
    ((needed as f64 / q) * (1.0 - 1e-12))
        .ceil()
        .max(needed as f64) as usize
}

/// Marks the `keep` lowest scores (ties by position; NaN ranks last).
pub fn keep_lowest(scores: &[f64], keep: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| {
            if scores[i].is_nan() {
                f64::INFINITY
            } else {
                scores[i]
            }
        };
        key(a).total_cmp(&key(b)).then(a.cmp(&b))
    });
    let mut kept = vec![false; scores.len()];
    for &i in order.iter().take(keep) {
        kept[i] = true;
    }
    kept
}

/// Marks the first `keep` candidates (in order) scoring under `threshold`; `None` when fewer than `keep` do.
pub fn keep_under(scores: &[f64], threshold: f64, keep: usize) -> Option<Vec<bool>> {
    let mut kept = vec![false; scores.len()];
    let mut n = 0;
    for (i, &s) in scores.iter().enumerate() {
        if n == keep {
            break;
        }
        if s < threshold {
            kept[i] = true;
            n += 1;
        }
    }
    (n == keep).then_some(kept)
}

/// Greedy selection of `keep` documents maximising the number of distinct token `n`-grams of the kept set:
/// each step takes the candidate that adds the most n-grams not yet covered (ties to the earlier candidate).
/// Coverage is submodular, so a stale gain bounds the fresh one and the lazy evaluation below picks what the
/// plain greedy would. Returns the marks and each kept candidate's gain when it was taken.
pub fn greedy_distinct_ngrams(
    docs: &[&[u32]],
    n: usize,
    keep: usize,
) -> (Vec<bool>, Vec<Option<f64>>) {
    let grams = |d: &[u32]| -> HashSet<Vec<u32>> {
        if d.len() < n {
            return HashSet::new();
        }
        d.windows(n).map(<[u32]>::to_vec).collect()
    };
    let sets: Vec<HashSet<Vec<u32>>> = docs.iter().map(|d| grams(d)).collect();
    let mut covered: HashSet<Vec<u32>> = HashSet::new();
    let mut heap: BinaryHeap<(usize, Reverse<usize>)> = sets
        .iter()
        .enumerate()
        .map(|(i, s)| (s.len(), Reverse(i)))
        .collect();
    let mut kept = vec![false; docs.len()];
    let mut gains = vec![None; docs.len()];
    let mut taken = 0;
    while taken < keep.min(docs.len()) {
        let (_, Reverse(i)) = heap.pop().expect("candidates remain");
        let gain = sets[i].iter().filter(|g| !covered.contains(*g)).count();
        let best_rest = heap.peek().copied();
        if best_rest.is_none_or(|top| (gain, Reverse(i)) >= top) {
            kept[i] = true;
            gains[i] = Some(gain as f64);
            covered.extend(sets[i].iter().cloned());
            taken += 1;
        } else {
            heap.push((gain, Reverse(i)));
        }
    }
    (kept, gains)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oracle_streams_interleave_exactly_and_are_bounded() {
        let reals = (0..100).filter(|&i| oracle_is_real(i, 0.5)).count();
        assert_eq!(reals, 50);
        assert_eq!((0..30).filter(|&i| oracle_is_real(i, 0.2)).count(), 6);
        assert!((0..50).all(|i| !oracle_is_real(i, 0.0)));
        let s = OracleStream::plan(24, 0.0, 0.1, 0.3, 10_000).unwrap();
        assert_eq!(s.real, 0);
        // 24 kept at rate 0.3 need 80 on average; the 1e-9 tail adds several standard deviations.
        assert!(s.length > 120 && s.length < 260, "{s:?}");
        let e = OracleStream::plan(24, 0.0, 0.1, 0.0, 10_000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("keeps nothing"), "{e}");
        let e = OracleStream::plan(24, 0.0, 0.1, 0.01, 240)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("about 2400 candidates") && e.contains("more than 240"),
            "{e}"
        );
    }

    /// Over many candidates the oracle's measured error rates converge to e1 and e2 (binomial tolerance:
    /// five standard errors), and the realised fresh fraction of what it keeps to
    /// alpha' = alpha (1 - e1) / (alpha (1 - e1) + (1 - alpha) e2).
    #[test]
    fn the_oracle_measures_e1_e2_and_moves_alpha_as_appendix_d_says() {
        for (alpha, e1, e2) in [(0.5, 0.1, 0.3), (0.2, 0.25, 0.6), (0.8, 0.05, 0.1)] {
            let needed = 4_000;
            let stream = OracleStream::plan(needed, alpha, e1, e2, 10 * needed).unwrap();
            let ids = |p: &str, n: usize| (0..n).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
            let (d, kr, ks) = oracle_select(
                &stream,
                &ids("r", stream.real),
                &ids("s", stream.synthetic),
                7,
            )
            .unwrap();
            assert_eq!(kr.len() + ks.len(), needed);
            let r = CurationRecord::new("o", "oracle", d).counts;
            let within = |got: f64, p: f64, n: usize| {
                let se = (p * (1.0 - p) / n as f64).sqrt();
                assert!((got - p).abs() < 5.0 * se, "{got} vs {p} (se {se})");
            };
            within(r.type1.unwrap(), e1, r.candidates_real);
            within(r.type2.unwrap(), e2, r.candidates_synthetic);
            let a_prime = alpha * (1.0 - e1) / (alpha * (1.0 - e1) + (1.0 - alpha) * e2);
            within(r.kept_real as f64 / needed as f64, a_prime, needed);
        }
    }

    proptest::proptest! {
        /// Whatever the schedule and error rates, a planned oracle stream keeps exactly the documents the
        /// round needs (or the plan is refused), and a ranking rule keeps exactly its count.
        #[test]
        fn filtered_counts_always_meet_the_schedule(
            needed in 1usize..60,
            alpha in 0.0f64..=1.0,
            e1 in 0.0f64..=1.0,
            e2 in 0.0f64..=1.0,
            seed in proptest::prelude::any::<u64>(),
            scores in proptest::collection::vec(-5.0f64..5.0, 1..80),
        ) {
            if let Ok(stream) = OracleStream::plan(needed, alpha, e1, e2, 40 * needed) {
                let ids = |p: &str, n: usize| (0..n).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
                let (d, kr, ks) = oracle_select(
                    &stream, &ids("r", stream.real), &ids("s", stream.synthetic), seed,
                ).unwrap();
                proptest::prop_assert_eq!(kr.len() + ks.len(), needed);
                proptest::prop_assert_eq!(d.iter().filter(|x| x.kept).count(), needed);
            }
            let keep = scores.len() / 2;
            proptest::prop_assert_eq!(keep_lowest(&scores, keep).iter().filter(|k| **k).count(), keep);
            let toks: Vec<Vec<u32>> = scores.iter().map(|s| vec![(s.abs() * 3.0) as u32; 4]).collect();
            let refs: Vec<&[u32]> = toks.iter().map(Vec::as_slice).collect();
            let (kept, _) = greedy_distinct_ngrams(&refs, 2, keep);
            proptest::prop_assert_eq!(kept.iter().filter(|k| **k).count(), keep);
        }
    }

    #[test]
    fn greedy_diversity_matches_the_plain_greedy() {
        let docs: Vec<Vec<u32>> = vec![
            vec![1, 2, 3, 4, 5],
            vec![1, 2, 3, 4, 5],
            vec![1, 2, 3, 9, 9],
            vec![7, 8, 7, 8, 7, 8],
            vec![5, 6, 7, 8, 9, 10],
        ];
        let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
        let (kept, gains) = greedy_distinct_ngrams(&refs, 2, 3);
        // The plain greedy: doc 4 (5 bigrams), then doc 0 (4 new; doc 1 ties and is later), then doc 2 (3-9
        // and 9-9 new) over doc 3 (only 8-7 new: doc 4 covers 7-8).
        assert_eq!(kept, [true, false, true, false, true]);
        assert_eq!(gains[4], Some(5.0));
        assert_eq!(gains[0], Some(4.0));
        assert_eq!(gains[2], Some(2.0));
    }

    #[test]
    fn score_rules_keep_what_they_say() {
        assert_eq!(
            keep_lowest(&[3.0, 1.0, f64::NAN, 1.0], 2),
            [false, true, false, true]
        );
        assert_eq!(
            keep_under(&[3.0, 1.0, 0.5, 2.0], 2.5, 2),
            Some(vec![false, true, true, false])
        );
        assert_eq!(keep_under(&[3.0, 1.0], 2.5, 2), None);
        assert_eq!(fraction_candidates(12, 0.5), 24);
        assert_eq!(fraction_candidates(24, 0.3), 80);
        assert_eq!(fraction_candidates(10, 1.0), 10);
    }
}
