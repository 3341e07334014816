//! The curation phase of a curated round (rounds 1 on): draw the planned candidates, score them with the model
//! a filter ranks by (the verifier, trained here once per repetition, or the model that wrote them), keep
//! what the filter keeps, and compose D_t with every decision in the manifest.

use corpus::{
    compose_selected, greedy_distinct_ngrams, keep_lowest, keep_under, oracle_select, token_stream,
    CurationCounts, CurationRecord, Decision, Document, Manifest, RoundPlan,
};
use lm::LanguageModel;
use serde::{Deserialize, Serialize};

use crate::config::{Confidence, FilterSpec, RoundCandidates, SelfScore, Steps};
use crate::context::Ctx;
use crate::phases::train::{load_model, train, TrainJob};
use crate::plan::derive_seed;
use crate::progress::Progress;
use crate::round::Round;
use crate::rundir::{phase_dir, write_json, RunDir};
use crate::samples::{RoundSamples, SampleStore};
use crate::{invalid, io, Error, Result};

/// Round `t` (t >= 1) of a curated chain: draw the planned candidates, score them as the filter needs,
/// keep what it keeps, and compose D_t with every decision in the manifest.
pub(crate) fn phase(
    r: &Round,
    samples: &mut SampleStore,
    filter: &FilterSpec,
    pool: &[&Document],
    previous: Option<&Manifest>,
) -> Result<Manifest> {
    let (ctx, dir, progress, setting, rep, t) = (r.ctx, r.dir, r.progress, r.setting, r.rep, r.t);
    let plan = &ctx.plans[&setting.name];
    let rp = &plan.rounds[t];
    let cand = ctx.candidates[&setting.name][t];
    let end = cand.real_offset + cand.real;
    if end > pool.len() {
        invalid!(
            "round {t} needs pool documents up to {end}, the pool has {}",
            pool.len()
        );
    }
    let real = &pool[cand.real_offset..end];
    // The model a scoring filter ranks by: the verifier, or the model that wrote the candidates.
    let scorer = match filter {
        FilterSpec::Verifier { .. } => Some(verifier(ctx, dir, progress, filter, rep)?),
        FilterSpec::SelfScore { .. } => {
            let n0 = r.n0;
            let path =
                phase_dir(&dir.root, &setting.name, n0, rep, t - 1).join(ctx.kind.model_file());
            Some(load_model(
                &*ctx.kind,
                &path,
                "delete it to retrain that round",
            )?)
        }
        _ => None,
    };
    let synthetic: Vec<(&Document, &[u32])> = if cand.synthetic == 0 {
        Vec::new()
    } else {
        let RoundSamples { docs, tokens } =
            samples.get(ctx, &dir.root, &setting.name, rep, t - 1)?;
        if docs.len() < cand.synthetic {
            invalid!(
                "round {t} needs {} synthetic candidates, round {} wrote {}",
                cand.synthetic,
                t - 1,
                docs.len()
            );
        }
        docs[..cand.synthetic]
            .iter()
            .map(|d| (d, tokens[&d.id].0.as_slice()))
            .collect()
    };
    if cand.synthetic > 0 {
        progress.note(&format!(
            "curation {}: {} real and {} synthetic candidates",
            filter.name(),
            real.len(),
            synthetic.len()
        ));
    }
    let seed = derive_seed(ctx.cfg.experiment.seed, &[&"curation", &rep, &t]);
    let (fresh, kept, record) = select(
        filter,
        &cand,
        rp,
        real,
        &synthetic,
        scorer.as_deref().map(|m| (m, ctx.tok.eot())),
        seed,
    )?;
    let kept: Vec<Document> = kept.into_iter().cloned().collect();
    Ok(compose_selected(
        plan,
        t,
        rep,
        setting.schedule.accumulate,
        &fresh,
        previous,
        &kept,
        Some(record),
    )?)
}

/// The verifier of a filter for one repetition, trained on the head of the repetition's pool (documents no
/// chain draws), its held-out perplexity written beside it in `eval.json`. Shared by every chain of the
/// repetition under that filter: the first computes it while the others wait.
pub(crate) fn verifier(
    ctx: &Ctx,
    dir: &RunDir,
    progress: &Progress,
    filter: &FilterSpec,
    rep: usize,
) -> Result<Box<dyn LanguageModel>> {
    let FilterSpec::Verifier { docs, steps, .. } = filter else {
        invalid!("filter {} is not a verifier", filter.name());
    };
    let vd = verifier_dir(&dir.root, filter.name(), rep);
    std::fs::create_dir_all(&vd).map_err(io(|| format!("cannot create {}", vd.display())))?;
    let _lock = dir.lock_round0(&vd)?;
    let kind = ctx
        .models
        .kind(&filter.verifier_model(&ctx.cfg.model), ctx.tok.vocab_size())
        .map_err(Error::Models)?;
    let model_path = vd.join(kind.model_file());
    let model = if model_path.exists() {
        load_model(&*kind, &model_path, "delete it to retrain the verifier")?
    } else {
        let ids: Vec<usize> = ctx.splits[rep].pool[..*docs].to_vec();
        let docs_path = vd.join("documents.json");
        if !docs_path.exists() {
            let names: Vec<&str> = ids.iter().map(|&i| ctx.docs[i].id.as_str()).collect();
            write_json(&docs_path, &names)?;
        }
        let stream = token_stream(
            ids.iter().map(|&i| ctx.doc_tokens[i].as_slice()),
            ctx.tok.eot(),
        );
        progress.note(&format!(
            "training verifier {} for repetition {rep} on {} real documents",
            filter.name(),
            ids.len()
        ));
        let seed = ctx.cfg.experiment.seed;
        let job = TrainJob {
            kind: &*kind,
            init_seed: derive_seed(seed, &[&"verifier-init", &filter.name(), &rep]),
            batch_seed: derive_seed(seed, &[&"verifier-batches", &filter.name(), &rep]),
            tc: ctx.cfg.train(),
            steps: steps.map_or(ctx.cfg.training.steps.clone(), Steps::Count),
            heldout: &ctx.heldout[rep],
        };
        train(ctx, &vd, progress, stream, &job)?.0
    };
    let eval_path = vd.join("eval.json");
    if !eval_path.exists() {
        let e = model.evaluate(&ctx.heldout[rep], ctx.cfg.training.eval_batch_size)?;
        write_json(&eval_path, &e)?;
        progress.note(&format!(
            "verifier {} held-out perplexity {:.3}",
            filter.name(),
            e.perplexity
        ));
    }
    Ok(model)
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
    scorer: Option<(&dyn LanguageModel, u32)>,
    seed: u64,
) -> Result<(Vec<&'d Document>, Vec<&'d Document>, CurationRecord)> {
    let (needed_fresh, needed_synthetic) = (rp.fresh, rp.synthetic);
    let name = filter.name();
    let record = |decisions| CurationRecord::new(name, filter.kind(), decisions);
    // The others keep the scheduled fresh documents and choose among the synthetic candidates.
    let score_all = |entropy: bool| -> Result<Vec<f64>> {
        let (model, eot) = scorer.ok_or_else(|| {
            Error::Invalid(format!(
                "curation filter {name:?} has no model to score with"
            ))
        })?;
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
            let stream = cand
                .oracle
                .ok_or_else(|| Error::Invalid("the oracle's stream was not planned".into()))?;
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
                Some(th) => keep_under(&scores, *th, needed_synthetic).ok_or_else(|| {
                    Error::Invalid(format!(
                        "curation filter {name:?}: only {} of {} candidates score under {th} nats per token, \
                         {needed_synthetic} are needed: raise the threshold or curation.max_candidates",
                        scores.iter().filter(|s| **s < *th).count(),
                        scores.len()
                    ))
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
