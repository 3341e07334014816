//! The experiment: the config, the run directory (locks, checksummed IO, layout), the run plan, the round
//! pipeline as phases over files (compose, curate, train, evaluate, generate, tails, metrics), workers,
//! Slurm job arrays, status and round 0's calibration.
//!
//! It sees models only through `lm`'s traits, made by a [`Models`] the binary gives it: it knows nothing of
//! tensors, devices or any model's internals, and nothing of command lines, plots or reports (the `report`
//! crate reads a run through [`frozen_config`] and [`collect_metrics`]).

pub mod config;
mod curation;
mod models;
mod pipeline;
pub mod progress;
pub mod rundir;
pub mod slurm;
pub mod workers;

pub use config::Config;
pub use curation::{verifier_dir, CurationMetrics};
pub use models::Models;
pub use pipeline::{
    calibrate, chains, check_models, collect_metrics, default_out, derive_seed, parse_only,
    phase_dir, read_samples_file, refresh_generation_stats, run, status, stream_sha256,
    CalibrateArgs, Calibration, GenerationStats, MetricsRow, Sample, Selection, TrainRecord,
};
pub use rundir::{frozen_config, read_json, read_verified, write_atomic, RunDir};
