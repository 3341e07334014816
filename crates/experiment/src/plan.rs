//! What a run does: the chains a selection runs, in the order workers take them, and the seeds every
//! random draw is keyed by.

use std::path::{Path, PathBuf};

use crate::config::{Config, SettingSpec};
use crate::{invalid, At, Error, Result};

/// A seed for one purpose of one (repetition, round), independent of the settings around it.
pub fn derive_seed(base: u64, parts: &[&dyn std::fmt::Display]) -> u64 {
    let mut h = base ^ 0x9e37_79b9_7f4a_7c15;
    for p in parts {
        for b in p.to_string().bytes().chain([0xff]) {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= h >> 31;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 29;
    }
    h
}

pub struct Selection {
    pub settings: Vec<SettingSpec>,
    pub reps: Vec<usize>,
}

/// `SETTING` or `SETTING/REP`.
pub fn parse_only(only: Option<&str>, cfg: &Config) -> Result<Selection> {
    let all_reps: Vec<usize> = (0..cfg.experiment.repetitions).collect();
    let Some(only) = only else {
        return Ok(Selection {
            settings: cfg.settings()?,
            reps: all_reps,
        });
    };
    let (s, rep) = match only.split_once('/') {
        Some((s, r)) => (
            s,
            Some(r.parse::<usize>().map_err(|e| {
                Error::Invalid(format!("--only {only}: bad repetition {r:?}: {e}"))
            })?),
        ),
        None => (only, None),
    };
    let setting = cfg.setting(s).at(|| format!("--only {only}"))?;
    let reps = match rep {
        Some(r) if r >= cfg.experiment.repetitions => invalid!(
            "--only {only}: the config has {} repetitions (0-{})",
            cfg.experiment.repetitions,
            cfg.experiment.repetitions - 1
        ),
        Some(r) => vec![r],
        None => all_reps,
    };
    Ok(Selection {
        settings: vec![setting],
        reps,
    })
}

/// The chains of a selection in the order workers take them: setting by setting, so whole settings finish
/// early and a partial report compares complete curves.
pub fn chains(sel: &Selection) -> Vec<(SettingSpec, usize)> {
    sel.settings
        .iter()
        .flat_map(|s| sel.reps.iter().map(move |&r| (s.clone(), r)))
        .collect()
}

pub fn default_out(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    PathBuf::from("runs").join(stem)
}
