//! The run directory: the only state of a run, safe for several processes at once. Every file is written
//! atomically; a chain (one setting's repetition) is worked on by one process at a time under its own lock;
//! the files every chain shares (the frozen config, the tokenizer, the metrics index) are written in short
//! sections under the directory's lock; and the frozen config makes a resumed run refuse a different
//! experiment.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::config::Config;

pub struct RunDir {
    pub root: PathBuf,
}

/// An exclusive advisory lock (flock), released when dropped or when the process dies, even by SIGKILL.
pub struct Lock(#[allow(dead_code)] File);

fn lock_file(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot write {}: choose a writable --out", path.display()))
}

fn wait_for_lock(path: &Path) -> Result<Lock> {
    let f = lock_file(path)?;
    f.lock()
        .with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(Lock(f))
}

impl RunDir {
    /// Opens (or creates) a run directory for `cfg`: freezes the config, or checks that it is the frozen one.
    pub fn open(root: &Path, cfg: &Config) -> Result<Self> {
        std::fs::create_dir_all(root).with_context(|| {
            format!(
                "cannot create the output directory {}: choose a writable --out",
                root.display()
            )
        })?;
        let dir = Self {
            root: root.to_path_buf(),
        };
        let _shared = dir.lock_shared_files()?;
        let frozen = dir.root.join("config.toml");
        if frozen.exists() {
            let old = frozen_config(root)?;
            let diff = old.diff(cfg);
            if !diff.is_empty() {
                bail!(
                    "{} holds a run of a different config ({}); use another --out, or the run's own config.toml",
                    root.display(),
                    diff.join("; ")
                );
            }
        } else {
            write_verified(&frozen, cfg.to_toml().as_bytes())?;
        }
        Ok(dir)
    }

    /// The directory's lock, held (waiting for it if need be) while writing a file every chain shares.
    pub fn lock_shared_files(&self) -> Result<Lock> {
        wait_for_lock(&self.root.join("lock"))
    }

    /// The lock of a shared round 0, waiting while another chain computes it.
    pub fn lock_round0(&self, dir: &Path) -> Result<Lock> {
        wait_for_lock(&dir.join("lock"))
    }

    /// The lock of one chain, if no other process holds it.
    pub fn try_lock_chain(&self, setting: &str, rep: usize) -> Result<Option<Lock>> {
        let path = self
            .root
            .join(setting)
            .join(format!("rep-{rep}"))
            .join("lock");
        let f = lock_file(&path)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(Lock(f))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }

    pub fn round_dir(&self, setting: &str, rep: usize, round: usize) -> PathBuf {
        round_dir(&self.root, setting, rep, round)
    }
}

/// Whether another process works on a chain now (for `status`).
pub fn chain_busy(root: &Path, setting: &str, rep: usize) -> bool {
    let path = root.join(setting).join(format!("rep-{rep}")).join("lock");
    File::options()
        .write(true)
        .open(path)
        .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)))
}

/// The config frozen in a run directory, checked against its SHA-256.
pub fn frozen_config(root: &Path) -> Result<Config> {
    let frozen = root.join("config.toml");
    if !frozen.exists() {
        bail!(
            "{} is not a run directory (it has no config.toml)",
            root.display()
        );
    }
    let text = read_verified(&frozen, "restore it, or start a new run in another --out")?;
    Config::parse(
        &String::from_utf8_lossy(&text),
        &frozen.display().to_string(),
    )
    .with_context(|| format!("the frozen config of {} is unreadable", root.display()))
}

/// `SETTING/rep-R/round-T` under the run directory; `setting` is the setting's name.
pub fn round_dir(root: &Path, setting: &str, rep: usize, round: usize) -> PathBuf {
    root.join(setting)
        .join(format!("rep-{rep}"))
        .join(format!("round-{round}"))
}

/// Temp file in the same directory, fsync, rename, fsync of the directory: a crash (or a full disk) leaves
/// the previous file or the new one. For files nothing reads back (reports, the metrics index); whatever a
/// run reads back goes through [`write_verified`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    persist(dir, path, bytes).with_context(|| {
        format!(
            "cannot write {} (disk full or not writable?)",
            path.display()
        )
    })
}

/// The temporary file gets a random name (several processes, on several nodes of a shared file system, may
/// write the same file) and the permissions of any other new file, 0666 less the umask (tempfile's 0600 would
/// hide a shared run directory from the rest of a cluster group).
fn persist(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `FILE.sha256` beside `FILE`, in `sha256sum` format, so `sha256sum -c` checks a run directory by hand too.
pub fn checksum_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    path.with_file_name(name)
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Writes `bytes` atomically with its SHA-256 beside it. The checksum goes first: a crash between the two
/// leaves a checksum without its file, which is a phase not yet done, never a file that cannot be checked.
pub fn write_verified(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let line = format!("{}  {name}\n", sha256_hex(bytes));
    write_atomic(&checksum_path(path), line.as_bytes())?;
    write_atomic(path, bytes)
}

/// Reads a file written by [`write_verified`] and checks it against its recorded SHA-256; a mismatch is an
/// error that names the file and ends with `remedy` (what to delete). A file without a checksum (a run
/// directory from before checksums) is read with a warning, once per process.
pub fn read_verified(path: &Path, remedy: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let sum_path = checksum_path(path);
    match std::fs::read_to_string(&sum_path) {
        Ok(line) => {
            let want = line.split_whitespace().next().unwrap_or_default();
            let got = sha256_hex(&bytes);
            if want != got {
                bail!(
                    "{} is corrupt (its SHA-256 is {}…, {} recorded {}…): {remedy}",
                    path.display(),
                    &got[..12],
                    sum_path.display(),
                    want.get(..12).unwrap_or(want)
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                eprintln!(
                    "[collapse-lab] warning: {} has no checksum (written before checksums were recorded); files without one are read unverified",
                    path.display()
                )
            });
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", sum_path.display()));
        }
    }
    Ok(bytes)
}

pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    write_verified(path, serde_json::to_string_pretty(value)?.as_bytes())
}

/// Reads JSON written by [`write_json`]; a failed checksum or parse names the file and says to delete it.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = read_verified(path, "delete it to redo that phase")?;
    serde_json::from_slice(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is corrupt ({e}): delete it to redo that phase",
            path.display()
        )
    })
}

/// The repetition's round 0, shared by every setting whose schedule starts with `n0` documents: its
/// manifest, model, evaluation and samples are the same for all of them (every random draw is keyed by
/// repetition and round, never by setting), so they are computed once.
pub fn shared_round0_dir(root: &Path, n0: usize, rep: usize) -> PathBuf {
    root.join("round-0")
        .join(format!("n-{n0}"))
        .join(format!("rep-{rep}"))
}

/// Where round `t` of a chain keeps the files of its phases (all but its metrics): the shared round 0, or
/// the chain's own round directory. Run directories from before the sharing keep round 0 in each chain.
pub fn phase_dir(root: &Path, setting: &str, n0: usize, rep: usize, t: usize) -> PathBuf {
    let own = round_dir(root, setting, rep, t);
    if t > 0 || own.join("manifest.json").exists() {
        own
    } else {
        shared_round0_dir(root, n0, rep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a run writes as JSON and reads back (an evaluation, a round's tails, a metrics row) is the same
    /// f64 to the last bit, so a chain that reads a shared round 0 from disk, or a run resumed between two
    /// phases, records exactly what the uninterrupted process did.
    #[test]
    fn json_floats_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        // Values a run recorded, whose last bit serde_json's fast float parser gets wrong, and many random ones.
        let mut xs = vec![93.62011165578531, 97.49750985150963, 95.24302920146253];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = f64::from_bits(state);
            if x.is_finite() {
                xs.push(x);
            }
            xs.push((state >> 11) as f64 / (1u64 << 53) as f64 * 1000.0);
        }
        write_json(&path, &xs).unwrap();
        let back: Vec<f64> = read_json(&path).unwrap();
        let wrong = xs
            .iter()
            .zip(&back)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(wrong, 0, "{wrong} of {} floats came back changed", xs.len());
    }
}
