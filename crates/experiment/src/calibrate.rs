//! `collapse-lab calibrate`: round 0's training length from its held-out curve.

use std::path::PathBuf;

use corpus::token_stream;
use serde::Serialize;

use crate::config::{Config, Steps};
use crate::context::{check_models, prepare};
use crate::models::Models;
use crate::phases::train::{round_job, train, TrainRecord};
use crate::plan::default_out;
use crate::progress::Progress;
use crate::rundir::{read_json, write_atomic, RunDir};
use crate::{invalid, io, Error, Result};

/// What `calibrate` trains: the config (with the command line's overrides applied) and its choices.
#[derive(Debug, Clone)]
pub struct CalibrateArgs {
    pub config: Config,
    /// Where the config came from (names the default directory).
    pub config_path: PathBuf,
    /// Steps to train round 0 for (default: 4 x the steps the config gives round 0).
    pub steps: Option<u64>,
    /// Held-out loss every this many steps (default: steps / 50).
    pub eval_every: Option<u64>,
    /// The repetition whose split and seeds to use (default: the config's `repetitions`, the first one the
    /// experiment does not run).
    pub rep: Option<usize>,
    /// Where to keep the calibration (default: runs/<config name>-calibrate).
    pub out: Option<PathBuf>,
}

/// What `calibrate` found, written to `calibration.json`.
#[derive(Debug, Serialize)]
pub struct Calibration {
    pub repetition: usize,
    pub documents: usize,
    pub train_tokens: usize,
    pub tokens_per_step: usize,
    pub steps: u64,
    /// What the config gives round 0.
    pub config_steps: u64,
    pub config_heldout_nll: Option<f64>,
    pub best_step: u64,
    pub best_heldout_nll: f64,
    /// Passes over round 0's tokens at the best step: the value for `steps = { passes = ... }`.
    pub best_passes: f64,
    pub heldout: Vec<(u64, f64)>,
    pub losses: Vec<(u64, f64)>,
}

/// Trains round 0 of one repetition with the held-out curve and says where it is lowest. With a constant
/// learning rate a longer run passes through exactly the states of a shorter one (every batch is keyed by
/// its step), so the curve gives round 0's held-out loss at any step count up to `steps`.
/// Returns what it found (also in `OUT/calibration.json`) and the directory OUT.
pub fn calibrate(a: CalibrateArgs, models: &dyn Models) -> Result<(Calibration, PathBuf)> {
    let mut cfg = a.config;
    let rep = a.rep.unwrap_or(cfg.experiment.repetitions);
    cfg.experiment.repetitions = rep + 1;
    if a.eval_every == Some(0) {
        invalid!("--eval-every must be at least 1");
    }
    // The curve is what this is for; its interval is fixed below once the steps are known.
    cfg.training.eval_every = a.eval_every.unwrap_or(1);
    let out = a.out.unwrap_or_else(|| {
        let mut p = default_out(&a.config_path).into_os_string();
        p.push("-calibrate");
        PathBuf::from(p)
    });
    check_models(&cfg, models)?;
    let dir = RunDir::open(&out, &cfg)?;
    let mut ctx = prepare(cfg, &dir, models)?;
    let setting = ctx.cfg.settings()?.remove(0);
    let rp = ctx.plans[&setting.name].rounds[0].clone();
    let ids = &ctx.splits[rep].pool[rp.pool_offset..rp.pool_offset + rp.fresh];
    let stream = token_stream(
        ids.iter().map(|&i| ctx.doc_tokens[i].as_slice()),
        ctx.tok.eot(),
    );
    let (batch, block) = (ctx.cfg.training.batch_size, ctx.cfg.model.block_size);
    let config_steps = ctx
        .cfg
        .training
        .steps
        .for_tokens(stream.len(), batch, block);
    let steps = a.steps.unwrap_or(4 * config_steps);
    if steps == 0 {
        invalid!("--steps must be at least 1");
    }
    ctx.cfg.training.eval_every = a.eval_every.unwrap_or((steps / 50).max(1));
    let cd = out.join("calibration").join(format!("rep-{rep}"));
    std::fs::create_dir_all(&cd).map_err(io(|| format!("cannot create {}", cd.display())))?;
    let mut progress = Progress::new(1, 0);
    progress.start_round(format!("calibration of round 0, repetition {rep}"));
    let mut job = round_job(&ctx, rep, 0);
    job.steps = Steps::Count(steps);
    let rec = if cd.join("train.json").exists() {
        read_json::<TrainRecord>(&cd.join("train.json"))?
    } else {
        train(&ctx, &cd, &progress, stream.clone(), &job)?.1
    };
    progress.finish_round();
    progress.finish();
    let (best_step, best) = rec
        .heldout_best()
        .ok_or_else(|| Error::Invalid("the calibration recorded no held-out curve".into()))?;
    let cal = Calibration {
        repetition: rep,
        documents: ids.len(),
        train_tokens: stream.len(),
        tokens_per_step: batch * block,
        steps: rec.steps,
        config_steps,
        config_heldout_nll: rec
            .heldout
            .iter()
            .find(|(s, _)| *s == config_steps)
            .map(|x| x.1),
        best_step,
        best_heldout_nll: best,
        best_passes: (best_step as usize * batch * block) as f64 / stream.len() as f64,
        heldout: rec.heldout.clone(),
        losses: rec.losses.clone(),
    };
    write_atomic(
        &out.join("calibration.json"),
        serde_json::to_string_pretty(&cal)
            .expect("a calibration serialises")
            .as_bytes(),
    )?;
    Ok((cal, out))
}
