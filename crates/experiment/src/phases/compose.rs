//! Phase 1: compose D_t, recorded in `manifest.json` (curated chains through the curation phase), and D_t
//! as the token stream training reads.

use std::path::Path;
use std::time::Instant;

use corpus::{compose, token_stream_with_ends, Document, Manifest, Origin};

use crate::context::Ctx;
use crate::phases::curate;
use crate::round::Round;
use crate::rundir::{phase_dir, read_json, write_json};
use crate::samples::SampleStore;
use crate::{Error, Result};

/// D_t's manifest (read if this phase ran before) and the phase's wall time.
pub(crate) fn phase(r: &Round, samples: &mut SampleStore) -> Result<(Manifest, f64)> {
    let (ctx, dir, progress, setting, rep, t, n0) =
        (r.ctx, r.dir, r.progress, r.setting, r.rep, r.t, r.n0);
    let pd = &r.pd;
    let plan = &ctx.plans[&setting.name];
    let schedule = &setting.schedule;
    let started = Instant::now();
    let manifest_path = pd.join("manifest.json");
    let manifest = if manifest_path.exists() {
        read_json::<Manifest>(&manifest_path)?
    } else {
        progress.phase("compose", 1);
        let previous = if schedule.accumulate && t > 0 {
            Some(read_json::<Manifest>(
                &phase_dir(&dir.root, &setting.name, n0, rep, t - 1).join("manifest.json"),
            )?)
        } else {
            None
        };
        let pool: Vec<&Document> = ctx.splits[rep].pool.iter().map(|&i| &ctx.docs[i]).collect();
        let m = match (&setting.curation, t) {
            (Some(filter), 1..) => curate::phase(r, samples, filter, &pool, previous.as_ref())?,
            _ => {
                let synthetic: Vec<Document> = if plan.rounds[t].synthetic > 0 {
                    let docs = &samples.get(ctx, &dir.root, &setting.name, rep, t - 1)?.docs;
                    docs[..plan.rounds[t].synthetic].to_vec()
                } else {
                    Vec::new()
                };
                compose(
                    plan,
                    t,
                    rep,
                    schedule.accumulate,
                    &pool,
                    previous.as_ref(),
                    &synthetic,
                )?
            }
        };
        write_json(&manifest_path, &m)?;
        m
    };
    let wall_compose = started.elapsed().as_secs_f64();

    Ok((manifest, wall_compose))
}

/// D_t as one token stream: each document's tokens in manifest order, each followed by `<|endoftext|>` (but
/// a generated document cut at the cap under `truncated = "open"`).
pub(crate) fn round_stream(
    ctx: &Ctx,
    root: &Path,
    samples: &mut SampleStore,
    setting: &str,
    rep: usize,
    manifest: &Manifest,
    manifest_path: &Path,
) -> Result<Vec<u32>> {
    // Load every round the manifest draws synthetic documents from, so the lookups below can borrow them.
    for d in &manifest.documents {
        if let Origin::Synthetic { round, .. } = d.origin {
            samples.get(ctx, root, setting, rep, round)?;
        }
    }
    let docs = manifest
        .documents
        .iter()
        .map(|d| match &d.origin {
            Origin::Real { .. } => ctx
                .by_id
                .get(&d.id)
                .map(|&i| (ctx.doc_tokens[i].as_slice(), true))
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{}: document {} is not in the corpus",
                        manifest_path.display(),
                        d.id
                    ))
                }),
            Origin::Synthetic { round, .. } => samples.rounds[round]
                .tokens
                .get(&d.id)
                .map(|(t, ends)| (t.as_slice(), *ends))
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "synthetic document {} is missing from round {round}'s samples",
                        d.id
                    ))
                }),
        })
        .collect::<Result<Vec<(&[u32], bool)>>>()?;
    Ok(token_stream_with_ends(docs, ctx.tok.eot()))
}
