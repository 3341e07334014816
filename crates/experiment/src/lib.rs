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
pub use models::{Models, ModelsResult};
pub use phases::curate::{verifier_dir, CurationMetrics};
pub use phases::train::{stream_sha256, TrainRecord};
pub use plan::{chains, default_out, derive_seed, parse_only, Selection};
pub use round::run;
pub use rundir::{
    frozen_config, io, phase_dir, read_json, read_verified, write_atomic, IoError, RunDir,
    RunDirError,
};
pub use samples::{read_samples_file, refresh_generation_stats, GenerationStats, Sample};
pub use status::status;

/// Errors of the experiment. Each message names what failed and, where it can, what to do; [`Error::At`]
/// says where (a setting, a round, a file) as a cause's context, so the binary's one line reads like
/// "round 3 of accumulate/2: cannot write ...: No space left on device".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Corpus(#[from] corpus::Error),
    #[error(transparent)]
    Model(#[from] lm::Error),
    /// What the binary's [`Models`] reported (its own errors, whatever their type).
    #[error(transparent)]
    Models(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Busy(#[from] ChainsBusy),
    #[error(transparent)]
    Io(#[from] IoError),
    /// An argument, a saved file or a state the experiment cannot go on with; the message says what to do.
    #[error("{0}")]
    Invalid(String),
    /// Chains that failed in worker processes, grouped by the reason each worker gave last.
    #[error("{0}")]
    WorkersFailed(String),
    /// Where the failure below happened.
    #[error("{at}")]
    At {
        at: String,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether the failure is, underneath any context, chains left busy by other processes.
    pub fn busy(&self) -> Option<&ChainsBusy> {
        match self {
            Error::Busy(b) => Some(b),
            Error::At { source, .. } => source.busy(),
            _ => None,
        }
    }
}

/// `.at(|| ...)` puts a failure in context, as `anyhow`'s `with_context` would, keeping it typed.
pub(crate) trait At<T> {
    fn at(self, at: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<Error>> At<T> for std::result::Result<T, E> {
    fn at(self, at: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::At {
            at: at(),
            source: Box::new(e.into()),
        })
    }
}

/// Returns early with an [`Error::Invalid`] made from a format string.
macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err($crate::Error::Invalid(format!($($arg)*)))
    };
}
pub(crate) use invalid;

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
