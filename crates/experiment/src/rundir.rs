//! The run directory: the only state of a run, safe for several processes at once. Every file is written
//! atomically; a chain (one setting's repetition) is worked on by one process at a time under its own lock;
//! the files every chain shares (the frozen config, the tokenizer, the metrics index) are written in short
//! sections under the directory's lock; and the frozen config makes a resumed run refuse a different
//! experiment.

use std::fs::File;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError};

/// A file, directory or process that cannot be created, read, written, locked or started; `what` says which
/// and the source why. Shared by the experiment's errors and the report's.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct IoError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

/// Maps an `std::io::Error` to an [`IoError`] saying `what` could not be done (`?` turns it into the
/// caller's error type).
pub fn io(what: impl FnOnce() -> String) -> impl FnOnce(std::io::Error) -> IoError {
    move |source| IoError {
        what: what(),
        source,
    }
}

/// What can go wrong with a run directory; each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{} holds a run of a different config ({}); use another --out, or the run's own config.toml",
        root.display(), diff.join("; "))]
    OtherConfig { root: PathBuf, diff: Vec<String> },
    #[error("{} is on a file system whose locks other nodes do not see ({why}): two nodes could run one chain \
             at once; use a directory on a local disk or on NFS with working locks (NFSv4, or v3 with lockd and \
             local_lock=none), or set {SINGLE_NODE_ENV}=1 if every process of this run works on this node",
        root.display())]
    NodeLocalLocks { root: PathBuf, why: String },
    #[error("{} is not a run directory (it has no config.toml)", .0.display())]
    NotARun(PathBuf),
    #[error("the frozen config of {} is unreadable", root.display())]
    FrozenConfig {
        root: PathBuf,
        #[source]
        source: ConfigError,
    },
    /// A file whose SHA-256 is not the one recorded beside it.
    #[error("{} is corrupt (its SHA-256 is {got}…, {} recorded {want}…): {remedy}", path.display(), sums.display())]
    Corrupt {
        path: PathBuf,
        sums: PathBuf,
        got: String,
        want: String,
        remedy: String,
    },
    /// The parser's message is part of this one (not a source), so the one-line error says it once.
    #[error("{} is corrupt ({error}): delete it to redo that phase", path.display())]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("cannot serialise {}", path.display())]
    Serialise {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, RunDirError>;

pub struct RunDir {
    pub root: PathBuf,
}

/// An exclusive advisory lock (flock), released when dropped or when the process dies, even by SIGKILL.
pub struct Lock(#[allow(dead_code)] File);

fn lock_file(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(|| format!("cannot create {}", dir.display())))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io(|| {
            format!("cannot write {}: choose a writable --out", path.display())
        }))?;
    Ok(file)
}

fn wait_for_lock(path: &Path) -> Result<Lock> {
    let f = lock_file(path)?;
    f.lock()
        .map_err(io(|| format!("cannot lock {}", path.display())))?;
    Ok(Lock(f))
}

impl RunDir {
    /// Opens (or creates) a run directory for `cfg`: freezes the config, or checks that it is the frozen one.
    pub fn open(root: &Path, cfg: &Config) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(io(|| {
            format!(
                "cannot create the output directory {}: choose a writable --out",
                root.display()
            )
        }))?;
        check_locks(root)?;
        let dir = Self {
            root: root.to_path_buf(),
        };
        let _shared = dir.lock_shared_files()?;
        let frozen = dir.root.join("config.toml");
        if frozen.exists() {
            let old = frozen_config(root)?;
            let diff = old.diff(cfg);
            if !diff.is_empty() {
                return Err(RunDirError::OtherConfig {
                    root: root.to_path_buf(),
                    diff,
                });
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
                Err(io(|| format!("cannot lock {}", path.display()))(e).into())
            }
        }
    }

    pub fn round_dir(&self, setting: &str, rep: usize, round: usize) -> PathBuf {
        round_dir(&self.root, setting, rep, round)
    }
}

/// Set to 1 when every process of a run works on one node: then node-local locks are enough.
pub const SINGLE_NODE_ENV: &str = "COLLAPSE_SINGLE_NODE";

/// Refuses a run directory whose file system keeps flock locks on each node: NFS mounted `nolock` or with
/// `local_lock=flock|all`, or Lustre with `localflock`. Two nodes would then both take one chain's lock and
/// write its files at once. Elsewhere (local disks; NFSv4, or NFSv3 with its lock manager, where the kernel
/// turns flock into a lock the server holds) the locks are trusted.
fn check_locks(root: &Path) -> Result<()> {
    if std::env::var(SINGLE_NODE_ENV).is_ok_and(|v| v == "1") {
        return Ok(());
    }
    let (Ok(path), Ok(info)) = (
        std::fs::canonicalize(root),
        std::fs::read_to_string("/proc/self/mountinfo"),
    ) else {
        return Ok(()); // not Linux, or no such view: nothing to go by
    };
    if let Some(why) = node_local_locks(&info, &path) {
        return Err(RunDirError::NodeLocalLocks {
            root: root.to_path_buf(),
            why,
        });
    }
    Ok(())
}

/// Why the mount holding `path` keeps locks node-local, from `/proc/self/mountinfo`'s text; `None` if it does
/// not (or no mount holds it).
pub(crate) fn node_local_locks(mountinfo: &str, path: &Path) -> Option<String> {
    // Mount points escape spaces and the like as octal: "\040".
    let unescape = |s: &str| -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' && i + 4 <= b.len() {
                if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let mut best: Option<(usize, String, String)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split_whitespace().nth(4).map(unescape) else {
            continue;
        };
        let mut r = right.split_whitespace();
        let (Some(fstype), _, Some(options)) = (r.next(), r.next(), r.next()) else {
            continue;
        };
        if path.starts_with(&mount_point) && best.as_ref().is_none_or(|b| mount_point.len() >= b.0)
        {
            best = Some((mount_point.len(), fstype.to_string(), options.to_string()));
        }
    }
    let (_, fstype, options) = best?;
    let has = |o: &str| options.split(',').any(|x| x == o);
    match fstype.as_str() {
        "nfs" | "nfs4" if has("nolock") => Some(format!("{fstype} mounted nolock")),
        "nfs" | "nfs4" if has("local_lock=flock") || has("local_lock=all") => Some(format!(
            "{fstype} mounted {}",
            options
                .split(',')
                .find(|x| x.starts_with("local_lock="))
                .unwrap_or_default()
        )),
        "lustre" if has("localflock") => Some("lustre mounted localflock".into()),
        _ => None,
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
        return Err(RunDirError::NotARun(root.to_path_buf()));
    }
    let text = read_verified(&frozen, "restore it, or start a new run in another --out")?;
    Config::parse(
        &String::from_utf8_lossy(&text),
        &frozen.display().to_string(),
    )
    .map_err(|source| RunDirError::FrozenConfig {
        root: root.to_path_buf(),
        source,
    })
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
    std::fs::create_dir_all(dir).map_err(io(|| format!("cannot create {}", dir.display())))?;
    persist(path, bytes).map_err(io(|| {
        format!(
            "cannot write {} (disk full or not writable?)",
            path.display()
        )
    }))?;
    Ok(())
}

/// atomic-write-file gives the temporary file a random name (several processes, on several nodes of a shared
/// file system, may write the same file) and a new file the permissions of any other, 0666 less the umask
/// (tempfile's 0600 would hide a shared run directory from the rest of a cluster group).
fn persist(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = atomic_write_file::AtomicWriteFile::open(path)?;
    file.write_all(bytes)?;
    file.commit()
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
    let bytes = std::fs::read(path).map_err(io(|| format!("cannot read {}", path.display())))?;
    let sum_path = checksum_path(path);
    match std::fs::read_to_string(&sum_path) {
        Ok(line) => {
            let want = line.split_whitespace().next().unwrap_or_default();
            let got = sha256_hex(&bytes);
            if want != got {
                return Err(RunDirError::Corrupt {
                    path: path.to_path_buf(),
                    sums: sum_path,
                    got: got[..12].to_string(),
                    want: want.get(..12).unwrap_or(want).to_string(),
                    remedy: remedy.to_string(),
                });
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
            return Err(io(|| format!("cannot read {}", sum_path.display()))(e).into());
        }
    }
    Ok(bytes)
}

pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| RunDirError::Serialise {
        path: path.to_path_buf(),
        source,
    })?;
    write_verified(path, text.as_bytes())
}

/// Reads JSON written by [`write_json`]; a failed checksum or parse names the file and says to delete it.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = read_verified(path, "delete it to redo that phase")?;
    serde_json::from_slice(&bytes).map_err(|error| RunDirError::Json {
        path: path.to_path_buf(),
        error,
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
mod lock_tests {
    use super::node_local_locks;
    use std::path::Path;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 22 0:50 / /scratch rw,relatime - nfs 10.0.0.5:/scratch rw,vers=3,hard,proto=tcp,local_lock=none,addr=10.0.0.5
41 22 0:51 / /scratch/fast rw,relatime - nfs 10.0.0.6:/fast rw,vers=3,nolock,proto=tcp,local_lock=all,addr=10.0.0.6
42 22 0:52 / /home rw,relatime - nfs4 10.0.0.5:/home rw,vers=4.2,local_lock=none,addr=10.0.0.5
43 22 0:53 / /my\\040runs rw,relatime - nfs 10.0.0.7:/r rw,vers=3,local_lock=flock,addr=10.0.0.7
44 22 0:54 / /lus rw - lustre 10.0.0.8@tcp:/lus rw,localflock
";

    #[test]
    fn node_local_locks_are_found_on_the_mount_that_holds_the_path() {
        let at = |p: &str| node_local_locks(MOUNTINFO, Path::new(p));
        assert_eq!(at("/tmp/run"), None);
        assert_eq!(at("/scratch/run"), None, "NFSv3 with lockd: trusted");
        assert_eq!(at("/home/me/run"), None);
        assert_eq!(
            at("/scratch/fast/run").as_deref(),
            Some("nfs mounted nolock")
        );
        assert_eq!(
            at("/my runs/a").as_deref(),
            Some("nfs mounted local_lock=flock")
        );
        assert_eq!(at("/lus/x").as_deref(), Some("lustre mounted localflock"));
        // A path beside a mount point, not under it.
        assert_eq!(at("/scratchy/run"), None);
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
