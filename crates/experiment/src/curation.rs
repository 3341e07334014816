//! The curation phase of a curated round: draw the planned candidates, score them with the model a filter
//! ranks by, keep what the filter keeps, and record every decision.

use anyhow::{Context, Result};
use corpus::{
    greedy_distinct_ngrams, keep_lowest, keep_under, oracle_select, CurationCounts, CurationRecord,
    Decision, Document, RoundPlan,
};
use lm::LanguageModel;
use serde::{Deserialize, Serialize};

use crate::config::{Confidence, FilterSpec, RoundCandidates, SelfScore};

/// Applies a chain's filter to the candidates of round `rp`: returns the kept fresh and synthetic documents (in
/// candidate order) and the record of every decision. `scorer` is the model a scoring filter ranks by: the
/// verifier for `verifier`, the model that wrote the candidates for `self`.
pub fn select<'d>(
    filter: &FilterSpec,
    cand: &RoundCandidates,
    rp: &RoundPlan,
    real: &[&'d Document],
    synthetic: &[(&'d Document, &[u32])],
    scorer: Option<(&dyn LanguageModel, u32)>,
    seed: u64,
) -> Result<(Vec<&'d Document>, Vec<&'d Document>, CurationRecord)> {
    let (needed_fresh, needed_synthetic) = (rp.fresh, rp.synthetic);
    let name = filter.name();
    let record = |decisions| CurationRecord::new(name, filter.kind(), decisions);
    // The others keep the scheduled fresh documents and choose among the synthetic candidates.
    let score_all = |entropy: bool| -> Result<Vec<f64>> {
        let (model, eot) = scorer
            .with_context(|| format!("curation filter {name:?} has no model to score with"))?;
        synthetic
            .iter()
            .map(|(_, toks)| {
                let s = model.score(toks, eot, entropy)?;
                Ok(if entropy { s.mean_entropy } else { s.mean_nll })
            })
            .collect()
    };
    let (scores, kept): (Vec<Option<f64>>, Vec<bool>) = match filter {
        // The oracle filters the whole mix of real and synthetic candidates.
        FilterSpec::Oracle { .. } => {
            let stream = cand.oracle.context("the oracle's stream was not planned")?;
            let real_ids: Vec<String> = real.iter().map(|d| d.id.clone()).collect();
            let syn_ids: Vec<String> = synthetic.iter().map(|(d, _)| d.id.clone()).collect();
            let (decisions, kr, ks) = oracle_select(&stream, &real_ids, &syn_ids, seed)?;
            return Ok((
                kr.iter().map(|&i| real[i]).collect(),
                ks.iter().map(|&i| synthetic[i].0).collect(),
                record(decisions),
            ));
        }
        FilterSpec::None { .. } => (vec![None; synthetic.len()], vec![true; synthetic.len()]),
        FilterSpec::Verifier { threshold, .. } => {
            let scores = score_all(false)?;
            let kept = match threshold {
                None => keep_lowest(&scores, needed_synthetic),
                Some(th) => keep_under(&scores, *th, needed_synthetic).with_context(|| {
                    format!(
                        "curation filter {name:?}: only {} of {} candidates score under {th} nats per token, \
                         {needed_synthetic} are needed: raise the threshold or curation.max_candidates",
                        scores.iter().filter(|s| **s < *th).count(),
                        scores.len()
                    )
                })?,
            };
            (scores.into_iter().map(Some).collect(), kept)
        }
        FilterSpec::SelfScore { score, keep, .. } => {
            let scores = score_all(*score == SelfScore::Entropy)?;
            let rank: Vec<f64> = match keep {
                Confidence::Confident => scores.clone(),
                Confidence::Unconfident => scores.iter().map(|s| -s).collect(),
            };
            let kept = keep_lowest(&rank, needed_synthetic);
            (scores.into_iter().map(Some).collect(), kept)
        }
        FilterSpec::Longest { .. } => {
            // Ranked by length, longest first; the score recorded is the candidate's token count.
            let lengths: Vec<f64> = synthetic.iter().map(|(_, t)| t.len() as f64).collect();
            let rank: Vec<f64> = lengths.iter().map(|l| -l).collect();
            let kept = keep_lowest(&rank, needed_synthetic);
            (lengths.into_iter().map(Some).collect(), kept)
        }
        FilterSpec::Diversity { ngram, .. } => {
            let toks: Vec<&[u32]> = synthetic.iter().map(|(_, t)| *t).collect();
            let (kept, gains) = greedy_distinct_ngrams(&toks, *ngram, needed_synthetic);
            (gains, kept)
        }
    };
    let decisions = synthetic
        .iter()
        .zip(&scores)
        .zip(&kept)
        .map(|(((d, _), score), kept)| Decision {
            id: d.id.clone(),
            real: false,
            score: *score,
            kept: *kept,
        })
        .collect();
    let kept_synthetic = synthetic
        .iter()
        .zip(&kept)
        .filter(|(_, k)| **k)
        .map(|((d, _), _)| *d)
        .collect();
    Ok((
        real.iter().take(needed_fresh).copied().collect(),
        kept_synthetic,
        record(decisions),
    ))
}

/// A round's curation in its metrics row (absent in uncurated runs, so their rows are what they were).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurationMetrics {
    #[serde(flatten)]
    pub counts: CurationCounts,
    /// The verifier's held-out perplexity (verifier filters only).
    pub verifier_perplexity: Option<f64>,
}

/// Where a verifier filter keeps its model, training record and evaluation for one repetition.
pub fn verifier_dir(root: &std::path::Path, filter: &str, rep: usize) -> std::path::PathBuf {
    root.join("verifier")
        .join(filter)
        .join(format!("rep-{rep}"))
}
