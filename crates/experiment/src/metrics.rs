//! The round's metrics (the last phase) and the run's index of them.

use std::path::Path;

use lm::Evaluation;
use serde::{Deserialize, Serialize};

use crate::config::FilterSpec;
use crate::phases::curate::{verifier_dir, CurationMetrics};
use crate::phases::evaluate::EvalRecord;
use crate::phases::generate::Generated;
use crate::phases::tails::TailsRecord;
use crate::phases::train::TrainRecord;
use crate::round::Round;
use crate::rundir::{read_json, write_atomic, write_json, RunDir};
use crate::samples::set_generation_stats;
use crate::Result;

/// One row of `metrics.jsonl`: a (setting, repetition, round).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub setting: String,
    pub setting_number: usize,
    pub repetition: usize,
    pub round: usize,
    pub new_docs: usize,
    pub fresh_docs: usize,
    pub synthetic_docs: usize,
    pub total_docs: usize,
    pub alpha: f64,
    pub realized_alpha: f64,
    pub real_fraction: f64,
    pub train_tokens: usize,
    pub train_steps: u64,
    pub final_train_loss: f64,
    #[serde(with = "lm::float")]
    pub heldout_perplexity: f64,
    pub heldout_tokens: usize,
    #[serde(default, with = "lm::float::option")]
    pub second_perplexity: Option<f64>,
    pub generated_docs: usize,
    /// The text statistics below are of the round's first `stats_docs` generated documents, the same number
    /// in every round and setting (0 in rows written before that rule: `report` recomputes them).
    #[serde(default)]
    pub stats_docs: usize,
    pub gen_mean_words: f64,
    pub gen_distinct_1: f64,
    pub gen_distinct_2: f64,
    pub gen_unigram_entropy: f64,
    /// Of all generated documents: empty (an immediate `<|endoftext|>`), cut at `max_new_tokens`, and
    /// holding U+FFFD after decoding (a token sequence that is not valid UTF-8).
    #[serde(default)]
    pub gen_empty: usize,
    #[serde(default)]
    pub gen_truncated: usize,
    #[serde(default)]
    pub gen_replacement_char: usize,
    /// Length-robust statistics of the generated plots (see [`corpus::LengthRobustStats`]): distinct-1/2 over
    /// the first `stats_words` words of the round's documents (absent when they hold fewer), and MTLD over
    /// the words of the first `stats_docs` documents. Absent from rows written before them.
    #[serde(default)]
    pub stats_words: usize,
    #[serde(default)]
    pub gen_distinct_1_words: Option<f64>,
    #[serde(default)]
    pub gen_distinct_2_words: Option<f64>,
    #[serde(default)]
    pub gen_mtld: Option<f64>,
    /// How the round generated: the cap on new tokens, what a document cut at it became, how synthetic
    /// documents reach the next round, and the documents drawn for this chain (more than `generated_docs`
    /// under `truncated = "redraw"`; `gen_truncated` counts the cut ones among them).
    #[serde(default)]
    pub gen_max_new_tokens: usize,
    #[serde(default)]
    pub gen_truncation: Option<String>,
    #[serde(default)]
    pub gen_carry: Option<String>,
    #[serde(default)]
    pub gen_drawn: usize,
    /// The model's risk against its kind's reference (an n-gram's distance from the whole corpus's
    /// conditional distributions, see the ngram crate); absent for kinds without one.
    #[serde(default)]
    pub model_risk: Option<f64>,
    /// Tokens of D_t's real documents, each with its separator (the rest of `train_tokens` was generated):
    /// the realised counts the order-1 n-gram's bridge to the categorical recurrence needs.
    #[serde(default)]
    pub real_tokens: Option<usize>,
    /// c = 1 - ‖q‖² of the reference distribution q, where the risk is one categorical estimate's (an
    /// order-1 n-gram): the constant of the paper's recurrence.
    #[serde(default)]
    pub categorical_c: Option<f64>,
    /// Tokens of every document of the source, each with its separator: with the held-out tokens, the size
    /// of the pool fresh documents are drawn from (without replacement, which the bridge accounts for).
    #[serde(default)]
    pub corpus_tokens: Option<usize>,
    /// What the round trained and sampled on: the device, its name and the precision of its matmuls (see
    /// README, "Reproducibility"). Absent from rows written before they were recorded.
    #[serde(default)]
    pub train_device: Option<String>,
    #[serde(default)]
    pub generate_device: Option<String>,
    /// Passes over D_t's tokens: steps x batch x block / train_tokens.
    #[serde(default)]
    pub train_passes: Option<f64>,
    /// With `training.eval_every`: the step of the lowest held-out mean NLL during training, and that NLL.
    #[serde(default)]
    pub heldout_best_step: Option<u64>,
    #[serde(default, with = "lm::float::option")]
    pub heldout_best_nll: Option<f64>,
    /// The tails: quantiles (5, 25, 50, 75, 95%) of per-document perplexity of the held-out plots under this
    /// round's model, and of the round's first `stats_docs` generated plots under the repetition's round-0
    /// model. Absent from rows written before them.
    #[serde(default, with = "lm::float::option")]
    pub heldout_doc_ppl_q05: Option<f64>,
    #[serde(default, with = "lm::float::option")]
    pub heldout_doc_ppl_q25: Option<f64>,
    #[serde(default, with = "lm::float::option")]
    pub heldout_doc_ppl_q50: Option<f64>,
    #[serde(default, with = "lm::float::option")]
    pub heldout_doc_ppl_q75: Option<f64>,
    #[serde(default, with = "lm::float::option")]
    pub heldout_doc_ppl_q95: Option<f64>,
    #[serde(default, with = "lm::float::option")]
    pub gen_round0_ppl_q05: Option<f64>,
    #[serde(default, with = "lm::float::option")]
    pub gen_round0_ppl_q25: Option<f64>,
    #[serde(default, with = "lm::float::option")]
    pub gen_round0_ppl_q50: Option<f64>,
    #[serde(default, with = "lm::float::option")]
    pub gen_round0_ppl_q75: Option<f64>,
    #[serde(default, with = "lm::float::option")]
    pub gen_round0_ppl_q95: Option<f64>,
    pub wall_compose_s: f64,
    pub wall_train_s: f64,
    pub wall_eval_s: f64,
    pub wall_generate_s: f64,
    /// What the round's filter did, in curated runs (rounds 1 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curation: Option<CurationMetrics>,
}

/// Phase 6: the round's metrics row, in the chain's own round directory.
pub(crate) fn phase(
    r: &Round,
    manifest: &corpus::Manifest,
    wall_compose: f64,
    train_rec: &TrainRecord,
    eval: &EvalRecord,
    generated: &Generated,
    tails: &TailsRecord,
) -> Result<()> {
    let gen = &generated.stats;
    let (ctx, dir, setting, rep, t, rd) = (r.ctx, r.dir, r.setting, r.rep, r.t, &r.rd);
    let cfg = &ctx.cfg;
    let rp = &manifest.plan;
    let stats = gen.text;
    let q = |v: &Option<Vec<f64>>, i: usize| v.as_ref().and_then(|a| a.get(i).copied());
    let mut row = MetricsRow {
        setting: setting.name.clone(),
        setting_number: setting.number,
        repetition: rep,
        round: t,
        new_docs: rp.new_docs,
        fresh_docs: manifest.fresh,
        synthetic_docs: manifest.synthetic,
        total_docs: manifest.documents.len(),
        alpha: rp.alpha,
        realized_alpha: manifest.fresh as f64 / rp.new_docs as f64,
        real_fraction: manifest.real_fraction(),
        train_tokens: train_rec.train_tokens,
        train_steps: train_rec.steps,
        final_train_loss: train_rec.final_loss,
        heldout_perplexity: eval.heldout.perplexity,
        heldout_tokens: eval.heldout.tokens,
        second_perplexity: eval.second.map(|e| e.perplexity),
        generated_docs: 0,
        stats_docs: stats.documents,
        gen_mean_words: 0.0,
        gen_distinct_1: 0.0,
        gen_distinct_2: 0.0,
        gen_unigram_entropy: 0.0,
        gen_empty: 0,
        gen_truncated: 0,
        gen_replacement_char: 0,
        stats_words: 0,
        gen_distinct_1_words: None,
        gen_distinct_2_words: None,
        gen_mtld: None,
        gen_max_new_tokens: ctx.max_new_tokens,
        gen_truncation: Some(enum_name(&cfg.generation.truncated)),
        gen_carry: Some(enum_name(&cfg.generation.carry)),
        gen_drawn: 0,
        model_risk: eval.risk,
        categorical_c: ctx.reference.as_ref().and_then(|r| r.categorical_c()),
        train_device: train_rec.device.clone(),
        generate_device: generated.device.clone(),
        corpus_tokens: Some(ctx.doc_tokens.iter().map(|d| d.len() + 1).sum()),
        real_tokens: Some(
            manifest
                .documents
                .iter()
                .filter(|d| matches!(d.origin, corpus::Origin::Real { .. }))
                .filter_map(|d| ctx.by_id.get(&d.id).map(|&i| ctx.doc_tokens[i].len() + 1))
                .sum(),
        ),
        // Recorded by the training since passes existed; a GPT's batch x block before that.
        train_passes: train_rec.passes.or(Some(
            (train_rec.steps as usize * cfg.training.batch_size * cfg.model.block_size) as f64
                / train_rec.train_tokens.max(1) as f64,
        )),
        heldout_best_step: train_rec.heldout_best().map(|b| b.0),
        heldout_best_nll: train_rec.heldout_best().map(|b| b.1),
        heldout_doc_ppl_q05: q(&tails.heldout_doc_ppl, 0),
        heldout_doc_ppl_q25: q(&tails.heldout_doc_ppl, 1),
        heldout_doc_ppl_q50: q(&tails.heldout_doc_ppl, 2),
        heldout_doc_ppl_q75: q(&tails.heldout_doc_ppl, 3),
        heldout_doc_ppl_q95: q(&tails.heldout_doc_ppl, 4),
        gen_round0_ppl_q05: q(&tails.generated_round0_ppl, 0),
        gen_round0_ppl_q25: q(&tails.generated_round0_ppl, 1),
        gen_round0_ppl_q50: q(&tails.generated_round0_ppl, 2),
        gen_round0_ppl_q75: q(&tails.generated_round0_ppl, 3),
        gen_round0_ppl_q95: q(&tails.generated_round0_ppl, 4),
        wall_compose_s: wall_compose,
        wall_train_s: train_rec.wall_s,
        wall_eval_s: eval.wall_s,
        wall_generate_s: generated.wall_s,
        curation: match (&manifest.curation, &setting.curation) {
            (Some(r), Some(f)) => Some(CurationMetrics {
                counts: r.counts.clone(),
                // Written when the verifier was trained, before this round's manifest.
                verifier_perplexity: match f {
                    FilterSpec::Verifier { .. } => Some(
                        read_json::<Evaluation>(
                            &verifier_dir(&dir.root, f.name(), rep).join("eval.json"),
                        )?
                        .perplexity,
                    ),
                    _ => None,
                },
            }),
            _ => None,
        },
    };
    set_generation_stats(&mut row, gen);
    Ok(write_json(&rd.join("metrics.json"), &row)?)
}

/// A config enum's name as the config writes it ("open", "tokens").
pub(crate) fn enum_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Every finished round's metrics, sorted by (setting, repetition, round).
pub fn collect_metrics(root: &Path) -> Result<Vec<MetricsRow>> {
    let mut rows = Vec::new();
    // Every SETTING/rep-R/round-T/metrics.json below the root, whatever the settings are called.
    for sdir in std::fs::read_dir(root)
        .map_err(crate::io(|| format!("cannot read {}", root.display())))?
        .flatten()
    {
        let Ok(reps) = std::fs::read_dir(sdir.path()) else {
            continue;
        };
        for rep in reps
            .flatten()
            .filter(|r| r.file_name().to_string_lossy().starts_with("rep-"))
        {
            let Ok(rounds) = std::fs::read_dir(rep.path()) else {
                continue;
            };
            for r in rounds.flatten() {
                let m = r.path().join("metrics.json");
                if m.exists() {
                    rows.push(read_json::<MetricsRow>(&m)?);
                }
            }
        }
    }
    rows.sort_by_key(|r| (r.setting_number, r.repetition, r.round));
    Ok(rows)
}

/// `metrics.jsonl` rebuilt from every round's own `metrics.json`, under the directory's lock.
pub(crate) fn rebuild_metrics(dir: &RunDir) -> Result<()> {
    let _shared = dir.lock_shared_files()?;
    let mut out = String::new();
    for r in collect_metrics(&dir.root)? {
        out.push_str(&serde_json::to_string(&r).expect("a metrics row serialises"));
        out.push('\n');
    }
    Ok(write_atomic(
        &dir.root.join("metrics.jsonl"),
        out.as_bytes(),
    )?)
}
