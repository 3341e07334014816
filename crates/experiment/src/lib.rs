//! The experiment: the config, the run directory (locks, checksummed IO, layout), the run plan, the round
//! pipeline as phases over files (compose, curate, train, evaluate, generate, tails, metrics), workers,
//! Slurm job arrays, status and round 0's calibration.
//!
//! It sees models only through `lm`'s traits, made by a [`Models`] the binary gives it: it knows nothing of
//! tensors, devices or any model's internals, and nothing of command lines, plots or reports (the `report`
//! crate reads a run through [`frozen_config`] and [`collect_metrics`]).

mod calibrate;
pub mod config;
mod context;
mod metrics;
mod models;
mod phases;
mod plan;
pub mod progress;
mod round;
pub mod rundir;
mod samples;
pub mod slurm;
mod status;
pub mod workers;

pub use calibrate::{calibrate, CalibrateArgs, Calibration};
pub use config::{Config, ConfigError};
pub use context::check_models;
pub use metrics::{collect_metrics, MetricsRow};
pub use models::Models;
pub use phases::curate::{verifier_dir, CurationMetrics};
pub use phases::train::{stream_sha256, TrainRecord};
pub use plan::{chains, default_out, derive_seed, parse_only, Selection};
pub use round::run;
pub use rundir::{
    frozen_config, phase_dir, read_json, read_verified, write_atomic, RunDir, RunDirError,
};
pub use samples::{read_samples_file, refresh_generation_stats, GenerationStats, Sample};
pub use status::status;

/// The exit status of a `run` that left selected chains unfinished because other processes hold them (a
/// Slurm task requeues itself on it): sysexits' EX_TEMPFAIL, "try again later".
pub const BUSY_EXIT: i32 = 75;

/// Selected chains were busy in other processes and are not finished: nothing failed, but this process did
/// not finish them either.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} chain(s) are busy in another process and not finished ({}): a process on another node or a dead one \
     whose lock the file system still holds; run again later (`collapse-lab status {}` shows them)",
    chains.len(),
    chains.join(", "),
    root.display()
)]
pub struct ChainsBusy {
    pub chains: Vec<String>,
    pub root: std::path::PathBuf,
}
