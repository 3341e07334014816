//! Phase 3: evaluate the round's model on the held-out plots (and the second evaluation set), exactly.

use std::time::Instant;

use lm::{Evaluation, LanguageModel};
use serde::{Deserialize, Serialize};

use crate::round::Round;
use crate::rundir::{read_json, write_json};
use crate::Result;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct EvalRecord {
    pub heldout: Evaluation,
    pub second: Option<Evaluation>,
    /// The model's risk against its kind's reference (kinds that have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<f64>,
    pub wall_s: f64,
}

/// The round's evaluation (read if this phase ran before).
pub(crate) fn phase(r: &Round, model: &dyn LanguageModel) -> Result<EvalRecord> {
    let (ctx, progress, rep, pd) = (r.ctx, r.progress, r.rep, &r.pd);
    let cfg = &ctx.cfg;
    let eval_path = pd.join("eval.json");
    Ok(if eval_path.exists() {
        read_json(&eval_path)?
    } else {
        progress.phase("eval", 1);
        let started = Instant::now();
        let bs = cfg.training.eval_batch_size;
        let heldout = model.evaluate(&ctx.heldout[rep], bs)?;
        let second = ctx
            .second
            .as_ref()
            .map(|s| model.evaluate(s, bs))
            .transpose()?;
        let risk = match &ctx.reference {
            Some(r) => model.risk(&**r)?,
            None => None,
        };
        let rec = EvalRecord {
            heldout,
            second,
            risk,
            wall_s: started.elapsed().as_secs_f64(),
        };
        write_json(&eval_path, &rec)?;
        progress.note(&format!("held-out perplexity {:.3}", heldout.perplexity));
        rec
    })
}
