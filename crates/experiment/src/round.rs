//! The round pipeline: every selected chain, round by round, each round its phases in order.

use std::path::{Path, PathBuf};

use crate::config::{Config, SettingSpec};
use crate::context::{check_models, prepare, Ctx};
use crate::metrics::rebuild_metrics;
use crate::models::Models;
use crate::phases::{compose, evaluate, generate, tails, train};
use crate::plan::{chains, Selection};
use crate::progress::Progress;
use crate::rundir::{phase_dir, RunDir};
use crate::samples::SampleStore;
use crate::{io, Result};

/// Runs (or resumes) the selected chains of `cfg` in `out`, with the model kinds `models` makes.
pub fn run(cfg: Config, out: &Path, models: &dyn Models, sel: Selection) -> Result<()> {
    check_models(&cfg, models)?;
    let dir = RunDir::open(out, &cfg)?;
    let ctx = prepare(cfg, &dir, models)?;
    let rounds = ctx.cfg.schedule.rounds;
    let chains = chains(&sel);
    let done = chains
        .iter()
        .flat_map(|(s, rep)| (0..rounds).map(move |t| (s, *rep, t)))
        .filter(|(s, rep, t)| {
            dir.round_dir(&s.name, *rep, *t)
                .join("metrics.json")
                .exists()
        })
        .count();
    let mut progress = Progress::new((chains.len() * rounds) as u64, done as u64);
    let mut busy = Vec::new();
    for (setting, rep) in &chains {
        let rep = *rep;
        let finished = |t: usize| {
            dir.round_dir(&setting.name, rep, t)
                .join("metrics.json")
                .exists()
        };
        if (0..rounds).all(finished) {
            continue;
        }
        let Some(_chain) = dir.try_lock_chain(&setting.name, rep)? else {
            progress.note(&format!(
                "chain {setting}/{rep} is busy in another process: leaving it to that one"
            ));
            busy.push((setting, rep));
            continue;
        };
        let mut samples = SampleStore::default();
        for t in 0..rounds {
            if finished(t) {
                continue;
            }
            progress.start_round(format!("{setting} rep {rep} round {t}"));
            run_round(&ctx, &dir, &progress, &mut samples, setting, rep, t)?;
            rebuild_metrics(&dir)?;
            progress.finish_round();
        }
    }
    progress.finish();
    rebuild_metrics(&dir)?;
    // A busy chain another process finished meanwhile is no reason to fail.
    busy.retain(|(setting, rep): &(&SettingSpec, usize)| {
        !(0..rounds).all(|t| {
            dir.round_dir(&setting.name, *rep, t)
                .join("metrics.json")
                .exists()
        })
    });
    if !busy.is_empty() {
        return Err(crate::ChainsBusy {
            chains: busy.iter().map(|(s, r)| format!("{s}/{r}")).collect(),
            root: dir.root.clone(),
        }
        .into());
    }
    eprintln!(
        "[collapse-lab] run complete: {} (see `collapse-lab report {}`)",
        dir.root.join("metrics.jsonl").display(),
        dir.root.display()
    );
    Ok(())
}

/// One round of one chain: what it is and where its files go.
pub(crate) struct Round<'a, 'm> {
    pub ctx: &'a Ctx<'m>,
    pub dir: &'a RunDir,
    pub progress: &'a Progress,
    pub setting: &'a SettingSpec,
    pub rep: usize,
    pub t: usize,
    /// The number of documents of round 0 (which settings share it).
    pub n0: usize,
    /// The chain's own round directory: the round's metrics.
    pub rd: PathBuf,
    /// Where phases 1-5 write: for round 0 the repetition's shared directory (computed by whichever chain
    /// gets there first while the others wait), else `rd`.
    pub pd: PathBuf,
}

fn run_round(
    ctx: &Ctx,
    dir: &RunDir,
    progress: &Progress,
    samples: &mut SampleStore,
    setting: &SettingSpec,
    rep: usize,
    t: usize,
) -> Result<()> {
    let n0 = ctx.n0(&setting.name);
    let r = Round {
        ctx,
        dir,
        progress,
        setting,
        rep,
        t,
        n0,
        rd: dir.round_dir(&setting.name, rep, t),
        pd: phase_dir(&dir.root, &setting.name, n0, rep, t),
    };
    for d in [&r.rd, &r.pd] {
        std::fs::create_dir_all(d).map_err(io(|| format!("cannot create {}", d.display())))?;
    }
    let shared = (r.pd != r.rd).then(|| dir.lock_round0(&r.pd)).transpose()?;
    let (manifest, wall_compose) = compose::phase(&r, samples)?;
    let (model, train_rec) = train::phase(&r, samples, &manifest)?;
    let eval = evaluate::phase(&r, &*model)?;
    let generated = generate::phase(&r, &*model)?;
    let tails = tails::phase(&r, &*model, &generated.samples)?;
    drop(shared);
    crate::metrics::phase(
        &r,
        &manifest,
        wall_compose,
        &train_rec,
        &eval,
        &generated,
        &tails,
    )
}
