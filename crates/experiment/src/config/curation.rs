//! `[curation]`: the filters, and how many candidates each curated chain draws in each round (planned
//! before any training, with the reason when a filter would need too many). What a filter keeps is the
//! pipeline's curation phase; the rules themselves are the corpus crate's.

use std::collections::HashMap;

use corpus::{fraction_candidates, OracleStream, Plan};
use serde::{Deserialize, Serialize};

use super::{bail, ConfigError, ModelSection, Result, SettingSpec, CURATION_STRIDE};

/// `[curation]`: every filter runs with every setting, as a chain named `SETTING+FILTER`; round 0 (no
/// synthetic candidates) stays shared by all of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CurationSection {
    pub filters: Vec<FilterSpec>,
    /// The most candidates a filter may need in a round, as a multiple of the round's new documents n_t: a
    /// filter that needs more is refused when the run is planned, with the numbers.
    pub max_candidates: f64,
}

impl Default for CurationSection {
    fn default() -> Self {
        Self {
            filters: Vec::new(),
            max_candidates: 10.0,
        }
    }
}

/// One curation filter, `[[curation.filters]]` with a `name` (it names the chains) and a `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FilterSpec {
    /// Every candidate is kept: the unfiltered baseline beside the filters, on the same documents.
    None { name: String },
    /// The paper's appendix-D classifier simulated from provenance over the whole candidate mix: a real
    /// document is rejected with probability `e1`, a synthetic one kept with probability `e2`.
    Oracle { name: String, e1: f64, e2: f64 },
    /// A GPT trained once per repetition on `docs` real documents no chain uses (for `steps` steps, the
    /// run's by default; `n_layer` / `n_head` / `n_embd` override the run's architecture), scoring each
    /// synthetic candidate by its per-token NLL: keep the best `fraction`, or the first candidates under
    /// `threshold` nats per token.
    Verifier {
        name: String,
        docs: usize,
        #[serde(default)]
        fraction: Option<f64>,
        #[serde(default)]
        threshold: Option<f64>,
        #[serde(default)]
        steps: Option<u64>,
        #[serde(default)]
        n_layer: Option<usize>,
        #[serde(default)]
        n_head: Option<usize>,
        #[serde(default)]
        n_embd: Option<usize>,
    },
    /// The generating model's own score of each synthetic candidate (`score = "nll"`, per-token NLL, or
    /// `"entropy"`, the mean entropy of its next-token distributions): keep the `fraction` it is most
    /// (`keep = "confident"`) or least (`"unconfident"`) confident of.
    #[serde(rename = "self")]
    SelfScore {
        name: String,
        score: SelfScore,
        keep: Confidence,
        fraction: f64,
    },
    /// Greedy selection of the `fraction` of synthetic candidates that maximises the distinct token
    /// `ngram`-grams of the kept set.
    Diversity {
        name: String,
        #[serde(default = "default_ngram")]
        ngram: usize,
        fraction: f64,
    },
    /// The length-matched control: keep the longest `fraction` of the synthetic candidates (by tokens). A
    /// filter that keeps longer documents trains on more tokens at fixed steps; beside this control, its
    /// effect can be told from the length it keeps.
    Longest { name: String, fraction: f64 },
}

fn default_ngram() -> usize {
    3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelfScore {
    Nll,
    Entropy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Confidence {
    /// Lowest NLL or entropy first.
    Confident,
    /// Highest first.
    Unconfident,
}

impl FilterSpec {
    pub fn name(&self) -> &str {
        match self {
            FilterSpec::None { name }
            | FilterSpec::Oracle { name, .. }
            | FilterSpec::Verifier { name, .. }
            | FilterSpec::SelfScore { name, .. }
            | FilterSpec::Diversity { name, .. }
            | FilterSpec::Longest { name, .. } => name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            FilterSpec::None { .. } => "none",
            FilterSpec::Oracle { .. } => "oracle",
            FilterSpec::Verifier { .. } => "verifier",
            FilterSpec::SelfScore { .. } => "self",
            FilterSpec::Diversity { .. } => "diversity",
            FilterSpec::Longest { .. } => "longest",
        }
    }

    pub(super) fn validate(&self) -> Result<()> {
        let name = self.name();
        let prob = |what: &str, v: f64| -> Result<()> {
            if !(0.0..=1.0).contains(&v) {
                bail!("curation filter {name:?}: {what} must be in [0, 1], got {v}");
            }
            Ok(())
        };
        let fraction = |v: f64| -> Result<()> {
            if !(v > 0.0 && v <= 1.0) {
                bail!("curation filter {name:?}: fraction must be in (0, 1], got {v}");
            }
            Ok(())
        };
        match self {
            FilterSpec::None { .. } => {}
            FilterSpec::Oracle { e1, e2, .. } => {
                prob("e1", *e1)?;
                prob("e2", *e2)?;
            }
            FilterSpec::Verifier {
                docs,
                fraction: f,
                threshold,
                steps,
                ..
            } => {
                match (f, threshold) {
                    (Some(f), None) => fraction(*f)?,
                    (None, Some(t)) if t.is_finite() => {}
                    (None, Some(t)) => bail!("curation filter {name:?}: threshold must be finite, got {t}"),
                    _ => bail!("curation filter {name:?}: a verifier needs exactly one of fraction and threshold"),
                }
                if *docs == 0 {
                    bail!("curation filter {name:?}: the verifier needs at least 1 training document (docs)");
                }
                if *steps == Some(0) {
                    bail!("curation filter {name:?}: steps must be at least 1");
                }
            }
            FilterSpec::SelfScore { fraction: f, .. } | FilterSpec::Longest { fraction: f, .. } => {
                fraction(*f)?
            }
            FilterSpec::Diversity {
                ngram, fraction: f, ..
            } => {
                fraction(*f)?;
                if *ngram == 0 {
                    bail!("curation filter {name:?}: ngram must be at least 1");
                }
            }
        }
        Ok(())
    }
}

impl FilterSpec {
    /// A verifier's model: the run's `[model]` with the filter's overrides, trained from scratch.
    pub fn verifier_model(&self, run: &ModelSection) -> ModelSection {
        let mut m = run.clone();
        m.init_from = None;
        if let FilterSpec::Verifier {
            n_layer,
            n_head,
            n_embd,
            ..
        } = self
        {
            m.n_layer = n_layer.unwrap_or(m.n_layer);
            m.n_head = n_head.unwrap_or(m.n_head);
            m.n_embd = n_embd.unwrap_or(m.n_embd);
        }
        m
    }
}

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
    max_candidates: f64,
    spec: &SettingSpec,
    plan: &Plan,
) -> Result<Vec<RoundCandidates>> {
    let Some(filter) = &spec.curation else {
        bail!("setting {spec} is not curated");
    };
    let factor = max_candidates;
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
                ConfigError::Value(format!(
                    "curation filter {:?} needs {need} candidates for the {} synthetic documents of round {} of \
                     {}, more than curation.max_candidates = {factor} x n_t = {cap}: raise max_candidates or the fraction",
                    filter.name(),
                    rp.synthetic,
                    rp.round,
                    spec.name
                ))
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
                        .map_err(|source| ConfigError::Plan {
                            at: format!("round {} of {}", rp.round, spec.name),
                            source,
                        })?;
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
pub fn verifier_reserve(curation: Option<&CurationSection>) -> usize {
    curation
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
    curation: Option<&CurationSection>,
    specs: &[SettingSpec],
    plans: &mut HashMap<String, Plan>,
    pool_len: usize,
) -> Result<HashMap<String, Vec<RoundCandidates>>> {
    let mut out = HashMap::new();
    let Some(cur) = curation else {
        return Ok(out);
    };
    let reserve = verifier_reserve(curation);
    let mut groups: Vec<Vec<&SettingSpec>> = Vec::new();
    for s in specs {
        match groups.last_mut() {
            Some(g) if g[0].number / CURATION_STRIDE == s.number / CURATION_STRIDE => g.push(s),
            _ => groups.push(vec![s]),
        }
    }
    for group in groups {
        let counts: Vec<Vec<RoundCandidates>> = group
            .iter()
            .map(|s| candidate_counts(cur.max_candidates, s, &plans[&s.name]))
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
