//! The run directory: the only state of a run. Every file is written atomically, a lock keeps a second
//! process out, and the frozen config makes a resumed run refuse a different experiment.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use corpus::Setting;

use crate::config::Config;

pub struct RunDir {
    pub root: PathBuf,
    /// Held for the life of the run; the kernel releases it if the process dies, even by SIGKILL.
    _lock: File,
}

impl RunDir {
    /// Opens (or creates) a run directory for `cfg`: takes the lock, then freezes the config or checks that it
    /// is the frozen one.
    pub fn open(root: &Path, cfg: &Config) -> Result<Self> {
        std::fs::create_dir_all(root).with_context(|| {
            format!(
                "cannot create the output directory {}: choose a writable --out",
                root.display()
            )
        })?;
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| {
                format!(
                    "cannot write in {}: choose a writable --out",
                    root.display()
                )
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another collapse-lab process is running on {} (lock file {}); wait for it or stop it",
                root.display(),
                lock_path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
            }
        }
        let dir = Self {
            root: root.to_path_buf(),
            _lock: lock,
        };
        let frozen = dir.root.join("config.toml");
        if frozen.exists() {
            let old = Config::load(&frozen).with_context(|| {
                format!("the frozen config of {} is unreadable", root.display())
            })?;
            let diff = old.diff(cfg);
            if !diff.is_empty() {
                bail!(
                    "{} holds a run of a different config ({}); use another --out, or the run's own config.toml",
                    root.display(),
                    diff.join("; ")
                );
            }
        } else {
            write_atomic(&frozen, cfg.to_toml().as_bytes())?;
        }
        Ok(dir)
    }

    pub fn round_dir(&self, setting: Setting, rep: usize, round: usize) -> PathBuf {
        round_dir(&self.root, setting, rep, round)
    }
}

pub fn round_dir(root: &Path, setting: Setting, rep: usize, round: usize) -> PathBuf {
    root.join(setting.name())
        .join(format!("rep-{rep}"))
        .join(format!("round-{round}"))
}

/// Temp file in the same directory, fsync, rename, fsync of the directory: a crash (or a full disk) leaves
/// the previous file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    gpt::atomic_write(path, bytes).with_context(|| {
        format!(
            "cannot write {} (disk full or not writable?)",
            path.display()
        )
    })
}

pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let s =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&s).with_context(|| {
        format!(
            "{} is corrupt: delete it to redo that phase",
            path.display()
        )
    })
}
