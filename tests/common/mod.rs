//! Helpers shared by the end-to-end tests: the binary run in a test directory with no data or tokenizer from
//! the environment, and what its output and run directories say.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_collapse-lab");

/// `collapse-lab ARGS` in `dir`, offline, with its own token cache and no data or tokenizer from the
/// environment.
pub fn command(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(dir)
        .env_remove("COLLAPSE_DATA")
        .env_remove("COLLAPSE_TOKENIZER")
        .env("COLLAPSE_CACHE", dir.join("cache"))
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null());
    c
}

/// A temporary directory holding the committed real sample (300 plots) as `plots.csv.zst`, in which the
/// binary runs.
pub struct SampleDir {
    pub dir: tempfile::TempDir,
}

impl SampleDir {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sample =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample/movie_plots_sample.csv.zst");
        std::fs::copy(sample, dir.path().join("plots.csv.zst")).unwrap();
        Self { dir }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        command(self.dir.path(), args)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).unwrap();
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The error line of a failed command: exactly one line starting with `error:`.
pub fn error_line(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected failure, got success: {}",
        stderr(o)
    );
    let errs: Vec<&str> = std::str::from_utf8(&o.stderr)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errs.len(), 1, "one error line expected: {}", stderr(o));
    errs[0].to_string()
}

/// metrics.jsonl without wall-clock times, which are the only thing allowed to differ between runs.
pub fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut()
                .unwrap()
                .retain(|k, _| !k.starts_with("wall_"));
            v
        })
        .collect()
}

/// A `[curation]` section with one filter of every kind, for the tests that run them all.
pub const FILTERS: &str = r#"
[curation]
max_candidates = 20

[[curation.filters]]
name = "none"
kind = "none"

[[curation.filters]]
name = "oracle"
kind = "oracle"
e1 = 0.1
e2 = 0.3

[[curation.filters]]
name = "verifier"
kind = "verifier"
docs = 30
steps = 20
fraction = 0.5

[[curation.filters]]
name = "self-nll"
kind = "self"
score = "nll"
keep = "confident"
fraction = 0.5

[[curation.filters]]
name = "self-entropy"
kind = "self"
score = "entropy"
keep = "unconfident"
fraction = 0.4

[[curation.filters]]
name = "diversity"
kind = "diversity"
ngram = 2
fraction = 0.5

[[curation.filters]]
name = "longest"
kind = "longest"
fraction = 0.5
"#;
