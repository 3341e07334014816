//! Phase 5: the tails, per-document perplexities of the held-out plots under the round's model and of its
//! generated plots under the repetition's round-0 model (shared with round 0's other settings, like its
//! files).

use std::time::Instant;

use lm::LanguageModel;
use serde::{Deserialize, Serialize};

use crate::phases::train::load_model;
use crate::round::Round;
use crate::rundir::{phase_dir, read_json, write_json};
use crate::samples::Sample;
use crate::Result;

/// Quantiles 5, 25, 50, 75 and 95% (linear interpolation between order statistics, R's type 7).
pub(crate) fn quantiles(xs: &[f64]) -> Option<Vec<f64>> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let h = q * (v.len() - 1) as f64;
        let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
        // Infinite perplexities (a token of probability 0) sort last; inf - inf must not make a NaN.
        if hi == lo || v[hi] == v[lo] {
            v[lo]
        } else {
            v[lo] + (h - lo as f64) * (v[hi] - v[lo])
        }
    };
    Some([0.05, 0.25, 0.5, 0.75, 0.95].map(at).to_vec())
}

/// The tails of a round: per-document perplexity quantiles of the held-out plots under the round's model,
/// and of its generated plots under the repetition's round-0 model (the picture model-collapse papers show:
/// what a later model writes grows improbable under the first one, and real plots improbable under later
/// ones). Written to `tails.json` so `report` needs no model.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TailsRecord {
    pub heldout_docs: usize,
    #[serde(default, with = "lm::float::vec_option")]
    pub heldout_doc_ppl: Option<Vec<f64>>,
    pub generated_docs: usize,
    #[serde(default, with = "lm::float::vec_option")]
    pub generated_round0_ppl: Option<Vec<f64>>,
    pub wall_s: f64,
}

/// The round's tails (read if this phase ran before).
pub(crate) fn phase(
    r: &Round,
    model: &dyn LanguageModel,
    all_samples: &[Sample],
) -> Result<TailsRecord> {
    let (ctx, dir, progress, setting) = (r.ctx, r.dir, r.progress, r.setting);
    let (rep, t, n0, pd) = (r.rep, r.t, r.n0, &r.pd);
    let cfg = &ctx.cfg;
    let tails_path = pd.join("tails.json");
    Ok(if tails_path.exists() {
        read_json(&tails_path)?
    } else {
        progress.phase("tails", 1);
        let started = Instant::now();
        let eot = ctx.tok.eot();
        let heldout = doc_perplexities(
            model,
            ctx.splits[rep]
                .heldout
                .iter()
                .map(|&i| ctx.doc_tokens[i].as_slice()),
            eot,
        )?;
        // What the model drew (re-encoded for samples written before the ids were kept).
        let first: Vec<&Sample> = all_samples
            .iter()
            .filter(|s| !s.dropped)
            .take(cfg.generation.min_docs)
            .collect();
        let toks: Vec<Vec<u32>> = first
            .iter()
            .map(|s| match &s.tokens {
                Some(t) => Ok(t.clone()),
                None => Ok(ctx.tok.encode(&s.text)?),
            })
            .collect::<Result<_>>()?;
        let round0 = if t == 0 {
            None
        } else {
            let path = phase_dir(&dir.root, &setting.name, n0, rep, 0).join(ctx.kind.model_file());
            Some(load_model(
                &*ctx.kind,
                &path,
                "delete it to retrain round 0",
            )?)
        };
        let generated = doc_perplexities(
            round0.as_deref().unwrap_or(model),
            toks.iter().map(Vec::as_slice),
            eot,
        )?;
        let rec = TailsRecord {
            heldout_docs: heldout.len(),
            heldout_doc_ppl: quantiles(&heldout),
            generated_docs: generated.len(),
            generated_round0_ppl: quantiles(&generated),
            wall_s: started.elapsed().as_secs_f64(),
        };
        write_json(&tails_path, &rec)?;
        rec
    })
}

/// Per-document perplexity of each document under `model`, scored as in training (see
/// [`LanguageModel::score`]).
pub(crate) fn doc_perplexities<'a>(
    model: &dyn LanguageModel,
    docs: impl Iterator<Item = &'a [u32]>,
    eot: u32,
) -> Result<Vec<f64>> {
    docs.map(|d| Ok(model.score(d, eot, false)?.mean_nll.exp()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::quantiles;

    #[test]
    fn quantiles_interpolate_and_keep_infinities() {
        let q = quantiles(&[4.0, 0.0, 2.0, 1.0, 3.0]).unwrap();
        assert_eq!(q, vec![0.2, 1.0, 2.0, 3.0, 3.8]);
        // Two of five documents impossible under the model: the upper quantiles are infinite, not NaN.
        let q = quantiles(&[1.0, f64::INFINITY, 2.0, f64::INFINITY, 3.0]).unwrap();
        assert_eq!(q[..3], [1.2, 2.0, 3.0]);
        assert_eq!(q[3..], [f64::INFINITY, f64::INFINITY]);
    }
}
