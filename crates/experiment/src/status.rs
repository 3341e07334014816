//! `collapse-lab status`: where each chain of a run stands, and how many repetitions each round has.

use std::path::Path;

use crate::phases::train::latest_checkpoint;
use crate::rundir::{chain_busy, frozen_config, phase_dir, round_dir};
use crate::Result;

/// Where each (setting, repetition) stands: rounds finished and the phase of the next one.
pub fn status(root: &Path) -> Result<String> {
    let cfg = frozen_config(root)?;
    let settings = cfg.settings()?;
    let w = settings
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0)
        .max(16);
    let mut out = format!("{:<w$} {:>4}  {:>7}  next\n", "setting", "rep", "rounds");
    let (mut finished, mut chains) = (0, 0);
    let mut by_round = Vec::new();
    for s in settings {
        let mut reps_at = vec![0usize; cfg.schedule.rounds];
        let n0 = s.schedule.plan(cfg.schedule.rounds, usize::MAX)?.rounds[0].new_docs;
        for rep in 0..cfg.experiment.repetitions {
            let done = (0..cfg.schedule.rounds)
                .take_while(|&t| {
                    round_dir(root, &s.name, rep, t)
                        .join("metrics.json")
                        .exists()
                })
                .count();
            for r in reps_at.iter_mut().take(done) {
                *r += 1;
            }
            chains += 1;
            finished += usize::from(done == cfg.schedule.rounds);
            let next = if done == cfg.schedule.rounds {
                "done".to_string()
            } else {
                let rd = phase_dir(root, &s.name, n0, rep, done);
                let phase = if rd.join("tails.json").exists() {
                    "metrics"
                } else if rd.join("samples.jsonl.zst").exists() {
                    "tails"
                } else if rd.join("eval.json").exists() {
                    "generate"
                } else if has_model(&rd) {
                    "eval"
                } else if rd.join("manifest.json").exists() {
                    "train"
                } else {
                    "compose"
                };
                let step = latest_checkpoint(&rd)
                    .map(|(_, s)| format!(" (checkpoint at step {s})"))
                    .unwrap_or_default();
                format!("round {done}: {phase}{step}")
            };
            let next = if chain_busy(root, &s.name, rep) {
                format!("{next} (running in another process)")
            } else {
                next
            };
            out.push_str(&format!(
                "{:<w$} {:>4}  {:>3}/{:<3}  {next}\n",
                s.name, rep, done, cfg.schedule.rounds
            ));
        }
        by_round.push((s.name, reps_at));
    }
    // What a report made now would rest on: how many repetitions each round has.
    out.push_str(&format!(
        "\n{finished} of {chains} chains finished{}\nrepetitions with each round finished (round 0, 1, ...):\n",
        if finished < chains {
            format!("; {} not finished", chains - finished)
        } else {
            String::new()
        }
    ));
    for (name, reps) in by_round {
        let reps: Vec<String> = reps.iter().map(usize::to_string).collect();
        out.push_str(&format!("{name:<w$}  {}\n", reps.join(", ")));
    }
    Ok(out)
}

/// Whether a round directory holds its model (`model.*`, whatever the kind's file is called).
fn has_model(rd: &Path) -> bool {
    std::fs::read_dir(rd).is_ok_and(|d| {
        d.flatten().any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("model.") && !n.ends_with(".sha256")
        })
    })
}
