//! Phase 4: generate the next round's synthetic documents (and at least `min_docs` for statistics), each
//! sequence from its own RNG stream, cut documents finished, open or redrawn as configured.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use corpus::Document;
use lm::LanguageModel;

use crate::config::{Truncation, EOT_PROMPT};
use crate::context::Ctx;
use crate::plan::derive_seed;
use crate::progress::Progress;
use crate::round::Round;
use crate::rundir::write_verified;
use crate::samples::{read_samples_file, GenerationStats, Sample};
use crate::{invalid, io, Result};

/// What the generate phase hands on: the round's samples, this chain's statistics of them, the phase's wall
/// time and the device it ran on (absent in samples written before devices were recorded).
pub(crate) struct Generated {
    pub samples: Vec<Sample>,
    pub stats: GenerationStats,
    pub wall_s: f64,
    pub device: Option<String>,
}

/// The round's samples, written if this phase has not run.
pub(crate) fn phase(r: &Round, model: &dyn LanguageModel) -> Result<Generated> {
    let (ctx, dir, progress, setting, rep, t, n0) =
        (r.ctx, r.dir, r.progress, r.setting, r.rep, r.t, r.n0);
    let (pd, rd) = (&r.pd, &r.rd);
    let cfg = &ctx.cfg;
    let samples_path = pd.join("samples.jsonl.zst");
    let started = Instant::now();
    let own_count = ctx
        .to_generate_after(&setting.name, t)
        .max(cfg.generation.min_docs);
    if !samples_path.exists() {
        // A shared round 0 writes what every setting sharing it needs; each takes the first it needs.
        let count = if pd == rd {
            own_count
        } else {
            ctx.plans
                .iter()
                .filter(|(_, p)| p.rounds[0].new_docs == n0)
                .map(|(name, _)| ctx.to_generate_after(name, 0))
                .fold(own_count, usize::max)
        };
        generate(
            ctx,
            progress,
            model,
            &samples_path,
            &dir.root,
            pd,
            count,
            rep,
            t,
        )?;
    }
    let (meta, all_samples) = read_samples_file(&samples_path)?;
    let wall_s = meta.wall_s.unwrap_or(started.elapsed().as_secs_f64());
    let stats = GenerationStats::of(
        &all_samples,
        own_count,
        cfg.generation.min_docs,
        cfg.generation.stats_words,
        ctx.max_new_tokens,
    );

    Ok(Generated {
        samples: all_samples,
        stats,
        wall_s,
        device: meta.device,
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn generate(
    ctx: &Ctx,
    progress: &Progress,
    model: &dyn LanguageModel,
    path: &Path,
    root: &Path,
    rd: &Path,
    count: usize,
    rep: usize,
    t: usize,
) -> Result<()> {
    let cfg = &ctx.cfg;
    let sampling = cfg.sampling(ctx.tok.eot(), ctx.max_new_tokens);
    let prompt = if cfg.generation.prompt == EOT_PROMPT {
        vec![ctx.tok.eot()]
    } else {
        ctx.tok.encode(&cfg.generation.prompt)?
    };
    if prompt.is_empty() {
        invalid!(
            "generation.prompt {:?} encodes to no tokens",
            cfg.generation.prompt
        );
    }
    let seed = derive_seed(cfg.experiment.seed, &[&"generate", &rep, &t]);
    let model_ref = rd
        .join(ctx.kind.model_file())
        .strip_prefix(root)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let model_ref = model_ref.to_string_lossy();
    let cap = ctx.max_new_tokens;
    let redraw = cfg.generation.truncated == Truncation::Redraw;
    // Under redraw a cut draw is recorded (for its count) and another is drawn in its place; sequence i
    // always draws from RNG stream i, so which draws were kept does not depend on the batches.
    let max_draws = if redraw {
        (cfg.generation.max_draws * count as f64).ceil() as usize
    } else {
        count
    };
    progress.phase("generate", count as u64);
    let started = Instant::now();
    let mut out = Vec::with_capacity(count);
    let (mut new_tokens, mut kept, mut drawn) = (0usize, 0usize, 0usize);
    while kept < count {
        if drawn >= max_draws {
            invalid!(
                "round {t} of repetition {rep}: only {kept} of {drawn} generated documents ended before \
                 max_new_tokens = {cap}, and {count} are needed: raise generation.max_new_tokens or \
                 generation.max_draws, or use truncated = \"open\""
            );
        }
        let n = cfg
            .generation
            .batch_size
            .min(count - kept)
            .min(max_draws - drawn);
        let seqs = model.generate(&prompt, n, &sampling, seed, drawn as u64)?;
        for (i, s) in seqs.into_iter().enumerate() {
            new_tokens += s.len();
            let truncated = s.len() >= cap;
            let dropped = redraw && truncated;
            kept += usize::from(!dropped);
            let d = Document::synthetic(rep, t, drawn + i, &model_ref, ctx.tok.decode(&s)?);
            out.push(Sample {
                id: d.id,
                origin: d.origin,
                text: d.text,
                new_tokens: s.len(),
                tokens: Some(s),
                truncated: Some(truncated),
                dropped,
            });
        }
        drawn += n;
        let tps = new_tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        progress.update(kept as u64, count as u64, format!("{tps:.0} new tokens/s"));
    }
    let meta = serde_json::json!({ "meta": {
        "wall_s": started.elapsed().as_secs_f64(),
        "new_tokens": new_tokens,
        "max_new_tokens": cap,
        "drawn": drawn,
        "device": ctx.kind.device(),
    } });
    let lines = std::iter::once(meta.to_string()).chain(
        out.iter()
            .map(|s| serde_json::to_string(s).expect("a sample serialises")),
    );
    let body = compress(lines).map_err(io(|| {
        format!("cannot compress the samples of {}", path.display())
    }))?;
    Ok(write_verified(path, &body)?)
}

/// The lines, zstd-compressed in memory with zstd's own frame checksum (beside the file's SHA-256: the file
/// also stands alone).
fn compress(lines: impl Iterator<Item = String>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut enc = zstd::Encoder::new(&mut body, 3)?;
    enc.include_checksum(true)?;
    for l in lines {
        writeln!(enc, "{l}")?;
    }
    enc.finish()?;
    Ok(body)
}
