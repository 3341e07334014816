//! A round's generated documents: the samples file, what the next rounds read of it, and its statistics.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use corpus::{Document, LengthRobustStats, Origin, TextStats};
use serde::{Deserialize, Serialize};

use crate::config::{candidate_counts, Carry, Config, Truncation};
use crate::context::{to_generate_after, Ctx};
use crate::metrics::MetricsRow;
use crate::rundir::{phase_dir, read_verified};
use crate::{Error, Result};

#[derive(Debug, Serialize, Deserialize)]
pub struct Sample {
    pub(crate) id: String,
    pub(crate) origin: Origin,
    pub(crate) text: String,
    pub(crate) new_tokens: usize,
    /// The token ids the model drew (absent in samples written before they were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tokens: Option<Vec<u32>>,
    /// Cut at the cap without drawing `<|endoftext|>` (absent before: then `new_tokens >= cap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) truncated: Option<bool>,
    /// Under `truncated = "redraw"`: a cut draw, recorded for its count and never used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) dropped: bool,
}

impl Sample {
    pub(crate) fn is_truncated(&self, cap: usize) -> bool {
        self.truncated.unwrap_or(self.new_tokens >= cap)
    }
}

/// A round's kept generated documents in order, and per id the tokens the next round trains on with whether
/// an `<|endoftext|>` follows them there (not after a cut document under `truncated = "open"`).
pub(crate) struct RoundSamples {
    pub(crate) docs: Vec<Document>,
    pub(crate) tokens: HashMap<String, (Vec<u32>, bool)>,
}

/// Synthetic documents of earlier rounds of one (setting, repetition), read once and kept with their tokens.
#[derive(Default)]
pub(crate) struct SampleStore {
    pub(crate) rounds: HashMap<usize, RoundSamples>,
}

impl SampleStore {
    pub(crate) fn get(
        &mut self,
        ctx: &Ctx,
        root: &Path,
        setting: &str,
        rep: usize,
        round: usize,
    ) -> Result<&RoundSamples> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.rounds.entry(round) {
            let path =
                phase_dir(root, setting, ctx.n0(setting), rep, round).join("samples.jsonl.zst");
            let kept: Vec<Sample> = read_samples_file(&path)?
                .1
                .into_iter()
                .filter(|s| !s.dropped)
                .collect();
            let gen = &ctx.cfg.generation;
            let toks: Vec<Vec<u32>> = match gen.carry {
                Carry::Text => {
                    let texts: Vec<&str> = kept.iter().map(|s| s.text.as_str()).collect();
                    ctx.tok.encode_all(&texts)?
                }
                Carry::Tokens => kept
                    .iter()
                    .map(|s| {
                        s.tokens.clone().ok_or_else(|| {
                            Error::Invalid(format!(
                                "{} holds no token ids (written before they were kept): use carry = \"text\" \
                                 for this run, or delete the round to regenerate it",
                                path.display()
                            ))
                        })
                    })
                    .collect::<Result<_>>()?,
            };
            let open = gen.truncated == Truncation::Open;
            let tokens = kept
                .iter()
                .zip(toks)
                .map(|(s, t)| {
                    let ends = !(open && s.is_truncated(ctx.max_new_tokens));
                    (s.id.clone(), (t, ends))
                })
                .collect();
            let docs = kept
                .into_iter()
                .map(|s| Document {
                    id: s.id,
                    text: s.text,
                    origin: s.origin,
                })
                .collect();
            slot.insert(RoundSamples { docs, tokens });
        }
        Ok(&self.rounds[&round])
    }
}

fn read_samples_lines(path: &Path) -> Result<Vec<String>> {
    let remedy = "delete it to regenerate";
    let bytes = read_verified(path, remedy)?;
    let corrupt = |e: std::io::Error| {
        Error::Invalid(format!("{} is corrupt ({e}): {remedy}", path.display()))
    };
    let dec = zstd::Decoder::new(bytes.as_slice()).map_err(corrupt)?;
    BufReader::new(dec)
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(corrupt)
}

/// A round's generated documents, in generation order, and the generation phase's wall time (its first line).
pub fn read_samples_file(path: &Path) -> Result<(SamplesMeta, Vec<Sample>)> {
    let mut lines = read_samples_lines(path)?.into_iter();
    let meta = lines
        .next()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok());
    let wall = SamplesMeta {
        wall_s: meta.as_ref().and_then(|m| m["meta"]["wall_s"].as_f64()),
        device: meta
            .as_ref()
            .and_then(|m| m["meta"]["device"].as_str())
            .map(String::from),
    };
    let docs = lines
        .map(|l| {
            serde_json::from_str::<Sample>(&l).map_err(|e| {
                Error::Invalid(format!(
                    "{} is corrupt ({e}): delete it to regenerate",
                    path.display()
                ))
            })
        })
        .collect::<Result<_>>()?;
    Ok((wall, docs))
}

/// The head line of a samples file: how long the generation took and what it ran on (absent from files
/// written before they were recorded).
#[derive(Debug, Clone, Default)]
pub struct SamplesMeta {
    pub wall_s: Option<f64>,
    pub device: Option<String>,
}

/// What a chain's share of a round's generated documents looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationStats {
    /// Of the first `stats_docs` documents only. Distinct-n falls and plug-in entropy rises with the number
    /// of documents measured, and a round generates n, (t+1)n or `min_docs` of them depending on the
    /// setting and round: statistics of all of them would compare samples of different sizes. Each
    /// document is an independent draw from the round's model (its own RNG stream), so the first
    /// `stats_docs` are a uniformly random subset of fixed size, and the same documents however many more
    /// the round generated.
    pub text: TextStats,
    /// Distinct-n over the first `stats_words` words of the chain's documents and MTLD over the words of
    /// the first `stats_docs`: statistics that do not rise when documents shrink.
    pub robust: LengthRobustStats,
    /// The chain's documents (kept ones, under redraw).
    pub generated: usize,
    /// Draws behind them (more than `generated` under redraw) and how many of those were cut at the cap.
    pub drawn: usize,
    pub truncated: usize,
    pub empty: usize,
    pub replacement_char: usize,
}

impl GenerationStats {
    /// The chain's first `own` kept documents of a round's `samples` (in generation order, cut draws of a
    /// redraw among them), under the cap `cap`.
    pub fn of(
        samples: &[Sample],
        own: usize,
        stats_docs: usize,
        stats_words: usize,
        cap: usize,
    ) -> Self {
        // The draws this chain's documents took: up to and including its own-th kept one.
        let mut used = 0;
        let mut kept = Vec::with_capacity(own);
        for s in samples {
            if kept.len() == own {
                break;
            }
            used += 1;
            if !s.dropped {
                kept.push(s);
            }
        }
        let draws = &samples[..used];
        let texts = || kept.iter().map(|s| s.text.as_str());
        let count = |f: &dyn Fn(&Sample) -> bool| kept.iter().filter(|s| f(s)).count();
        let mut robust = LengthRobustStats::of(texts(), stats_words);
        robust.mtld = LengthRobustStats::of(texts().take(stats_docs), stats_words).mtld;
        Self {
            text: TextStats::of(texts().take(stats_docs)),
            robust,
            generated: kept.len(),
            drawn: draws.len(),
            truncated: draws.iter().filter(|s| s.is_truncated(cap)).count(),
            empty: count(&|s| s.new_tokens == 0),
            replacement_char: count(&|s| s.text.contains('\u{FFFD}')),
        }
    }
}

/// Recomputes a row's generation statistics from its round's samples when they were measured under another
/// rule (rows written before fixed-size statistics, or another `min_docs`).
pub fn refresh_generation_stats(root: &Path, cfg: &Config, row: &mut MetricsRow) -> Result<()> {
    let want = cfg.generation.min_docs;
    if row.stats_docs == want.min(row.generated_docs) && row.stats_docs > 0 {
        return Ok(());
    }
    let spec = cfg.setting(&row.setting)?;
    let plan = spec.schedule.plan(cfg.schedule.rounds, usize::MAX)?;
    let n0 = plan.rounds[0].new_docs;
    let path =
        phase_dir(root, &row.setting, n0, row.repetition, row.round).join("samples.jsonl.zst");
    let (_, samples) = read_samples_file(&path)?;
    // Candidate counts depend on the schedule alone, not on the pool.
    let candidates = match (&spec.curation, &cfg.curation) {
        (Some(_), Some(c)) => Some(candidate_counts(c.max_candidates, &spec, &plan)?),
        _ => None,
    };
    let own = to_generate_after(&plan, candidates.as_deref(), row.round).max(want);
    // Rows old enough to need this predate "auto": their config names the cap.
    let cap = match cfg.generation.max_new_tokens {
        crate::config::MaxNewTokens::Tokens(n) => n,
        crate::config::MaxNewTokens::Auto => row.gen_max_new_tokens,
    };
    let g = GenerationStats::of(&samples, own, want, cfg.generation.stats_words, cap);
    set_generation_stats(row, &g);
    Ok(())
}

pub(crate) fn set_generation_stats(row: &mut MetricsRow, g: &GenerationStats) {
    row.generated_docs = g.generated;
    row.stats_docs = g.text.documents;
    row.gen_mean_words = g.text.mean_words;
    row.gen_distinct_1 = g.text.distinct_1;
    row.gen_distinct_2 = g.text.distinct_2;
    row.gen_unigram_entropy = g.text.unigram_entropy;
    row.gen_empty = g.empty;
    row.gen_truncated = g.truncated;
    row.gen_replacement_char = g.replacement_char;
    row.stats_words = g.robust.words;
    row.gen_distinct_1_words = g.robust.distinct_1;
    row.gen_distinct_2_words = g.robust.distinct_2;
    row.gen_mtld = g.robust.mtld;
    row.gen_drawn = g.drawn;
}
