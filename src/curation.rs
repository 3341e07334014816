//! Curation between rounds: how many candidates each curated chain draws in each round (planned before any
//! training, with the reason when a filter would need too many), and which of them a filter keeps. The rules
//! themselves live in the corpus crate; this module scores candidates with the model a rule ranks by.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use corpus::{
    fraction_candidates, greedy_distinct_ngrams, keep_lowest, keep_under, oracle_select,
    CurationCounts, CurationRecord, Decision, Document, OracleStream, Plan, RoundPlan,
};
use gpt::Gpt;
use serde::{Deserialize, Serialize};
use train::score_document;

use crate::config::{Confidence, Config, FilterSpec, SelfScore, SettingSpec, CURATION_STRIDE};

/// What round `t` of a curated chain draws: `real` fresh candidates from pool position `real_offset` on, and
/// the first `synthetic` documents the previous round's model wrote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundCandidates {
    pub real_offset: usize,
    pub real: usize,
    pub synthetic: usize,
    pub oracle: Option<OracleStream>,
}

/// Candidates of every round of one chain (round 0 has no synthetic candidate and is never filtered).
pub fn candidate_counts(
    cfg: &Config,
    spec: &SettingSpec,
    plan: &Plan,
) -> Result<Vec<RoundCandidates>> {
    let Some(filter) = &spec.curation else {
        bail!("setting {spec} is not curated");
    };
    let factor = cfg.curation.as_ref().map_or(10.0, |c| c.max_candidates);
    plan.rounds
        .iter()
        .map(|rp| {
            let plain = RoundCandidates {
                real_offset: 0,
                real: rp.fresh,
                synthetic: rp.synthetic,
                oracle: None,
            };
            if rp.round == 0 {
                return Ok(plain);
            }
            let cap = (factor * rp.new_docs as f64).floor() as usize;
            let too_many = |need: usize| {
                anyhow::anyhow!(
                    "curation filter {:?} needs {need} candidates for the {} synthetic documents of round {} of \
                     {}, more than curation.max_candidates = {factor} x n_t = {cap}: raise max_candidates or the fraction",
                    filter.name(),
                    rp.synthetic,
                    rp.round,
                    spec.name
                )
            };
            let by_fraction = |q: f64| {
                let need = fraction_candidates(rp.synthetic, q);
                if need > cap {
                    return Err(too_many(need));
                }
                Ok(RoundCandidates {
                    synthetic: need,
                    ..plain
                })
            };
            match filter {
                FilterSpec::None { .. } => Ok(plain),
                FilterSpec::Oracle { e1, e2, .. } => {
                    let s = OracleStream::plan(rp.new_docs, rp.realized_alpha, *e1, *e2, cap)
                        .with_context(|| format!("round {} of {}", rp.round, spec.name))?;
                    Ok(RoundCandidates {
                        real_offset: 0,
                        real: s.real,
                        synthetic: s.synthetic,
                        oracle: Some(s),
                    })
                }
                FilterSpec::Verifier {
                    fraction: Some(q), ..
                } => by_fraction(*q),
                // Under a threshold the acceptance rate is unknown before the run: draw up to the cap and
                // stop the round with the numbers if too few pass.
                FilterSpec::Verifier { .. } => Ok(RoundCandidates {
                    synthetic: ((factor * rp.synthetic as f64).floor() as usize).max(rp.synthetic),
                    ..plain
                }),
                FilterSpec::SelfScore { fraction, .. }
                | FilterSpec::Diversity { fraction, .. }
                | FilterSpec::Longest { fraction, .. } => {
                    by_fraction(*fraction)
                }
            }
        })
        .collect()
}

/// Real documents reserved at the head of each repetition's pool for the verifiers (the largest `docs`).
pub fn verifier_reserve(cfg: &Config) -> usize {
    cfg.curation
        .iter()
        .flat_map(|c| &c.filters)
        .filter_map(|f| match f {
            FilterSpec::Verifier { docs, .. } => Some(*docs),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Every curated chain's candidates with their pool positions, and each plan's `pool_offset` moved to match.
/// Chains of one setting draw round t's real candidates from the same position, so the filters of a setting
/// see the same fresh documents (and the same synthetic ones: each chain takes the first of its samples),
/// and the position advances by the most any of them draws. The verifiers' documents come first.
pub fn plan_pool(
    cfg: &Config,
    plans: &mut HashMap<String, Plan>,
    pool_len: usize,
) -> Result<HashMap<String, Vec<RoundCandidates>>> {
    let mut out = HashMap::new();
    if cfg.curation.is_none() {
        return Ok(out);
    }
    let reserve = verifier_reserve(cfg);
    let specs = cfg.settings()?;
    let mut groups: Vec<Vec<&SettingSpec>> = Vec::new();
    for s in &specs {
        match groups.last_mut() {
            Some(g) if g[0].number / CURATION_STRIDE == s.number / CURATION_STRIDE => g.push(s),
            _ => groups.push(vec![s]),
        }
    }
    for group in groups {
        let counts: Vec<Vec<RoundCandidates>> = group
            .iter()
            .map(|s| candidate_counts(cfg, s, &plans[&s.name]))
            .collect::<Result<_>>()?;
        let rounds = counts[0].len();
        let mut offset = reserve;
        let mut offsets = Vec::with_capacity(rounds);
        for t in 0..rounds {
            offsets.push(offset);
            offset += counts.iter().map(|c| c[t].real).max().unwrap_or(0);
        }
        if offset > pool_len {
            let base = group[0].name.split('+').next().unwrap_or_default();
            bail!(
                "setting {base} under curation needs {offset} pool documents ({reserve} for the verifiers, the rest \
                 fresh candidates over {rounds} rounds) but the pool has {pool_len}: lower n, the rounds or the \
                 verifier's docs, or use a larger corpus"
            );
        }
        for (s, mut c) in group.iter().zip(counts) {
            let plan = plans.get_mut(&s.name).expect("planned");
            for t in 0..rounds {
                c[t].real_offset = offsets[t];
                plan.rounds[t].pool_offset = offsets[t];
            }
            plan.fresh_total = offset;
            out.insert(s.name.clone(), c);
        }
    }
    Ok(out)
}

/// Applies a chain's filter to the candidates of round `rp`: returns the kept fresh and synthetic documents (in
/// candidate order) and the record of every decision. `scorer` is the model a scoring filter ranks by: the
/// verifier for `verifier`, the model that wrote the candidates for `self`.
pub fn select<'d>(
    filter: &FilterSpec,
    cand: &RoundCandidates,
    rp: &RoundPlan,
    real: &[&'d Document],
    synthetic: &[(&'d Document, &[u32])],
    scorer: Option<(&Gpt, u32)>,
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
                let s = score_document(model, toks, eot, entropy)?;
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

/// The verifier's architecture: the run's, with the filter's overrides.
pub fn verifier_config(cfg: &Config, filter: &FilterSpec, vocab_size: usize) -> gpt::GptConfig {
    let mut g = cfg.gpt(vocab_size);
    if let FilterSpec::Verifier {
        n_layer,
        n_head,
        n_embd,
        ..
    } = filter
    {
        g.n_layer = n_layer.unwrap_or(g.n_layer);
        g.n_head = n_head.unwrap_or(g.n_head);
        g.n_embd = n_embd.unwrap_or(g.n_embd);
    }
    g
}
