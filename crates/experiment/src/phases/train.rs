//! Phase 2: train the round's model from scratch on D_t (or from its last checkpoint): steps planned from
//! D_t's tokens, a checkpoint every `checkpoint_every` steps renamed into place, the held-out curve, and the
//! model (and optimizer state) written at the end.

use std::path::{Path, PathBuf};
use std::time::Instant;

use corpus::Manifest;
use lm::{LanguageModel, ModelKind, TrainConfig, Training};
use serde::{Deserialize, Serialize};

use crate::config::Steps;
use crate::context::Ctx;
use crate::phases::compose::round_stream;
use crate::plan::derive_seed;
use crate::progress::Progress;
use crate::round::Round;
use crate::rundir::{read_json, read_verified, write_json, write_verified};
use crate::samples::SampleStore;
use crate::{io, At, Error, Result};

/// Training in progress, saved in each checkpoint directory beside its model and optimizer: the step and
/// the loss log so far.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TrainState {
    step: u64,
    losses: Vec<(u64, f64)>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "lm::float::pairs"
    )]
    heldout: Vec<(u64, f64)>,
    wall_s: f64,
    /// What the steps so far ran on (see `lm::ModelKind::device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<String>,
}

/// The newest complete training checkpoint of a round (`ckpt-STEP`; a `.partial` one was never finished).
pub(crate) fn latest_checkpoint(rd: &Path) -> Option<(PathBuf, u64)> {
    std::fs::read_dir(rd)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("ckpt-")?.parse::<u64>().ok()?;
            Some((e.path(), step))
        })
        .max_by_key(|(_, step)| *step)
}

/// A finished training phase.
#[derive(Debug, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Planned from D_t's token count before training (see `training.steps`).
    pub steps: u64,
    /// Passes over D_t's tokens those steps make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passes: Option<f64>,
    pub train_tokens: usize,
    pub final_loss: f64,
    pub losses: Vec<(u64, f64)>,
    /// Held-out mean NLL per token during training, (step, NLL), with `training.eval_every`.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "lm::float::pairs"
    )]
    pub heldout: Vec<(u64, f64)>,
    /// SHA-256 of D_t's token stream (little-endian u32 ids), so what a round trained on can be checked
    /// against its documents without keeping the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_sha256: Option<String>,
    pub wall_s: f64,
    /// The device and precision it trained with, and the earlier one where a checkpoint written on another
    /// device was resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// SHA-256 of a token stream as little-endian u32s.
pub fn stream_sha256(stream: &[u32]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for t in stream {
        h.update(t.to_le_bytes());
    }
    format!("{:x}", h.finalize())
}

impl TrainRecord {
    /// The lowest point of the held-out curve.
    pub fn heldout_best(&self) -> Option<(u64, f64)> {
        self.heldout
            .iter()
            .copied()
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
    }
}

/// The round's model and training record (read if this phase ran before).
pub(crate) fn phase(
    r: &Round,
    samples: &mut SampleStore,
    manifest: &Manifest,
) -> Result<(Box<dyn LanguageModel>, TrainRecord)> {
    let (ctx, dir, progress, setting) = (r.ctx, r.dir, r.progress, r.setting);
    let (rep, t, pd) = (r.rep, r.t, &r.pd);
    let manifest_path = pd.join("manifest.json");
    let model_path = pd.join(ctx.kind.model_file());
    Ok(if model_path.exists() {
        let model = load_model(&*ctx.kind, &model_path, "delete it to retrain this round")?;
        (model, read_json::<TrainRecord>(&pd.join("train.json"))?)
    } else {
        let stream = round_stream(
            ctx,
            &dir.root,
            samples,
            &setting.name,
            rep,
            manifest,
            &manifest_path,
        )?;
        train(ctx, pd, progress, stream, &round_job(ctx, rep, t))?
    })
}

/// A round's model (or a verifier's) saved in the run directory, checked against its SHA-256 and its kind's
/// configuration; `remedy` ends the error line.
pub(crate) fn load_model(
    kind: &dyn ModelKind,
    path: &Path,
    remedy: &str,
) -> Result<Box<dyn LanguageModel>> {
    let bytes = read_verified(path, remedy)?;
    kind.load(&bytes, &path.display().to_string())
        .map_err(|e| Error::Invalid(format!("{e}: {remedy}")))
}

/// What one training phase trains: the kind of model, the training settings, and its seeds.
pub(crate) struct TrainJob<'a> {
    pub kind: &'a dyn ModelKind,
    pub tc: TrainConfig,
    /// How many steps, given the stream's tokens.
    pub steps: Steps,
    /// The held-out stream of the repetition, for the curve during training.
    pub heldout: &'a [u32],
    pub init_seed: u64,
    pub batch_seed: u64,
}

/// Round `t`'s training job: the run's model kind and settings, seeds keyed by (repetition, round).
pub(crate) fn round_job<'a>(ctx: &'a Ctx, rep: usize, t: usize) -> TrainJob<'a> {
    let cfg = &ctx.cfg;
    let seed = cfg.experiment.seed;
    TrainJob {
        kind: &*ctx.kind,
        tc: cfg.train(),
        steps: cfg.training.steps.clone(),
        heldout: &ctx.heldout[rep],
        init_seed: derive_seed(seed, &[&"init", &rep, &t]),
        batch_seed: derive_seed(seed, &[&"batches", &rep, &t]),
    }
}

pub(crate) fn train(
    ctx: &Ctx,
    rd: &Path,
    progress: &Progress,
    stream: Vec<u32>,
    job: &TrainJob,
) -> Result<(Box<dyn LanguageModel>, TrainRecord)> {
    let cfg = &ctx.cfg;
    let mut tc = job.tc.clone();
    // Planned from D_t's tokens before the first step, so a resumed round plans the same number.
    tc.steps = job
        .steps
        .for_tokens(stream.len(), tc.batch_size, cfg.model.block_size);
    let train_tokens = stream.len();
    let sha = stream_sha256(&stream);
    let lm_job = lm::TrainJob {
        settings: tc.clone(),
        init_seed: job.init_seed,
        batch_seed: job.batch_seed,
        stream,
    };
    let device = job.kind.device();
    let (mut training, mut losses, mut heldout, wall_before, device_before) =
        if let Some((ck, _)) = latest_checkpoint(rd) {
            let bad = || format!("delete {} to redo this round's training", ck.display());
            let st: TrainState = read_json(&ck.join("state.json")).at(bad)?;
            let parts = job
                .kind
                .parts()
                .iter()
                .map(|name| Ok((*name, read_verified(&ck.join(name), &bad())?)))
                .collect::<Result<Vec<_>>>()?;
            let training = job
                .kind
                .resume(lm_job, &parts, st.step)
                .map_err(|e| Error::Invalid(format!("{}: {e}: {}", ck.display(), bad())))?;
            progress.note(&format!("resuming training at step {}", st.step));
            (training, st.losses, st.heldout, st.wall_s, st.device)
        } else {
            let training = job
                .kind
                .start(lm_job)
                .at(|| format!("cannot train on the corpus of {}", rd.display()))?;
            (training, Vec::new(), Vec::new(), 0.0, None)
        };
    // The held-out curve (nanoGPT's eval_interval): exact mean NLL over the first `eval_tokens` held-out
    // tokens. It draws nothing random, so it leaves training bit-identical.
    let every = cfg.training.eval_every;
    // The kind has the last word on its steps (a model that counts takes one, and has no curve).
    let steps = training.steps();
    let curve_tokens = match (every, cfg.training.eval_tokens) {
        _ if steps <= 1 => None,
        (0, _) => None,
        (_, 0) => Some(job.heldout),
        (_, n) => Some(&job.heldout[..n.min(job.heldout.len())]),
    };
    let eval_now = |t: &dyn Training| -> Result<f64> {
        let toks = curve_tokens.expect("asked only with a curve");
        Ok(t.evaluate(toks, cfg.training.eval_batch_size)?.mean_nll)
    };
    if curve_tokens.is_some() && training.step() == 0 && heldout.is_empty() {
        heldout.push((0, eval_now(&*training)?));
    }
    progress.phase("train", steps);
    let started = Instant::now();
    let tokens_per_step = training.tokens_per_step() as f64;
    let mut last_loss = losses.last().map_or(f64::NAN, |l| l.1);
    while training.step() < steps {
        // The loss is read (a device synchronises) only when it is logged.
        let next = training.step() + 1;
        let log = next % cfg.training.log_every == 0 || next == steps;
        let loss = training.train_step(log)?;
        let step = training.step();
        if let Some(loss) = loss {
            last_loss = loss;
            losses.push((step, last_loss));
            let tps = tokens_per_step * step as f64
                / (started.elapsed().as_secs_f64() + wall_before).max(1e-9);
            progress.update(step, steps, format!("loss {last_loss:.4}  {tps:.0} tok/s"));
        }
        if curve_tokens.is_some() && (step % every == 0 || step == steps) {
            heldout.push((step, eval_now(&*training)?));
        }
        if step % cfg.training.checkpoint_every == 0 && step < steps {
            save_checkpoint(
                rd,
                &*training,
                &losses,
                &heldout,
                wall_before + started.elapsed().as_secs_f64(),
                &device,
            )?;
        }
    }
    let rec = TrainRecord {
        steps,
        passes: Some(steps as f64 * tokens_per_step / train_tokens.max(1) as f64),
        train_tokens,
        final_loss: last_loss,
        losses,
        heldout,
        stream_sha256: Some(sha),
        wall_s: wall_before + started.elapsed().as_secs_f64(),
        device: Some(match device_before {
            Some(d) if d != device => format!("{device} (resumed a checkpoint written on {d})"),
            _ => device.clone(),
        }),
    };
    write_json(&rd.join("train.json"), &rec)?;
    // The model is its kind's first part; the rest (an optimizer's state) is kept only when asked.
    let parts = training.parts()?;
    let (model_part, rest) = parts
        .split_first()
        .ok_or_else(|| Error::Invalid("a training without a model".into()))?;
    if cfg.training.keep_optimizer_state {
        for (name, bytes) in rest {
            write_verified(&rd.join(name), bytes)?;
        }
    }
    write_verified(&rd.join(model_part.0), &model_part.1)
        .at(|| "cannot write the round's model".into())?;
    remove_checkpoints(rd, None)?;
    Ok((training.into_model(), rec))
}

/// Writes model, optimizer and training state into a new directory and renames it into place: a crash at
/// any moment leaves the previous checkpoint valid. No file is ever overwritten, so each keeps the SHA-256
/// written beside it.
pub(crate) fn save_checkpoint(
    rd: &Path,
    training: &dyn Training,
    losses: &[(u64, f64)],
    heldout: &[(u64, f64)],
    wall_s: f64,
    device: &str,
) -> Result<()> {
    let name = format!("ckpt-{}", training.step());
    let partial = rd.join(format!("{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)
        .map_err(io(|| format!("cannot create {}", partial.display())))?;
    for (file, bytes) in training.parts()? {
        write_verified(&partial.join(file), &bytes)
            .at(|| "cannot write a training checkpoint".into())?;
    }
    write_json(
        &partial.join("state.json"),
        &TrainState {
            step: training.step(),
            losses: losses.to_vec(),
            heldout: heldout.to_vec(),
            wall_s,
            device: Some(device.to_string()),
        },
    )?;
    let done = rd.join(&name);
    let _ = std::fs::remove_dir_all(&done);
    std::fs::rename(&partial, &done)
        .map_err(io(|| format!("cannot rename {}", partial.display())))?;
    remove_checkpoints(rd, Some(&name))
}

pub(crate) fn remove_checkpoints(rd: &Path, keep: Option<&str>) -> Result<()> {
    for e in std::fs::read_dir(rd)
        .map_err(io(|| format!("cannot read {}", rd.display())))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("ckpt-") && Some(name.as_str()) != keep {
            std::fs::remove_dir_all(e.path())
                .map_err(io(|| format!("cannot remove {}", e.path().display())))?;
        }
    }
    Ok(())
}
