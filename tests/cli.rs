//! End-to-end tests of the binary on a tiny config: resume after SIGKILL is exact, bad input gets one clear
//! line and leaves the run directory resumable, and `report` / `status` work on partial runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{error_line, metrics, stderr, SampleDir as Fixture};

/// The tiny config every test here starts from, over the committed sample.
trait Tiny {
    fn tiny() -> Self;
    fn write_config(&self, name: &str, steps: u64);
    /// Runs config.toml to the end in `out` and returns its metrics.
    fn finished_run(&self, out: &str) -> Vec<Value>;
}

impl Tiny for Fixture {
    fn tiny() -> Self {
        let f = Fixture::new();
        f.write_config("config.toml", 120);
        f
    }

    fn write_config(&self, name: &str, steps: u64) {
        let cfg = format!(
            r#"[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 16

[training]
steps = {steps}
batch_size = 4
lr = {{ kind = "constant", lr = 3e-3 }}
checkpoint_every = 15
log_every = 5
eval_batch_size = 8

[data]
source = "{src}"
tokenizer = "train:300"
heldout_docs = 6

[generation]
max_new_tokens = 24
batch_size = 8
min_docs = 4

[schedule]
n = 12
rounds = 3
settings = ["synthetic-only", "accumulate", "decaying-alpha"]

[experiment]
repetitions = 1
seed = 7
"#,
            src = self.path("plots.csv.zst").display()
        );
        std::fs::write(self.path(name), cfg).unwrap();
    }

    fn finished_run(&self, out: &str) -> Vec<Value> {
        let o = self.run(&["run", "config.toml", "--out", out]);
        assert!(o.status.success(), "{}", stderr(&o));
        metrics(&self.path(out))
    }
}

/// A fingerprint of the durable progress under a run directory: every file below a setting's directory, with
/// its length and modification time. Root-level files (lock, frozen config, tokenizer) are left out because a
/// resumed process may touch them before it does any new work.
fn progress(root: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, u64, std::time::SystemTime)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                walk(&e.path(), depth + 1, out);
            } else if depth > 0 {
                out.push((e.path(), meta.len(), meta.modified().unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, 0, &mut out);
    out.sort();
    out
}

#[test]
fn killed_and_resumed_runs_give_bit_identical_metrics() {
    let f = Fixture::tiny();
    // Long enough (a few seconds) that kills land inside training, evaluation and generation.
    f.write_config("long.toml", 600);
    let started = std::time::Instant::now();
    let o = f.run(&["run", "long.toml", "--out", "straight"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let full_ms = started.elapsed().as_millis() as u64;
    let reference = metrics(&f.path("straight"));
    assert_eq!(reference.len(), 9);
    // Every round says what it trained and sampled on.
    for r in &reference {
        assert_eq!(r["train_device"], "cpu, f32", "{r}");
        assert_eq!(r["generate_device"], "cpu, f32", "{r}");
    }
    // Round 0 is shared: the chains that read its files from disk (all but the one that computed it) have the
    // computed chain's numbers to the last bit (JSON floats read back exactly).
    let round0: Vec<Value> = reference
        .iter()
        .filter(|r| r["round"] == 0)
        .map(|r| {
            let mut r = r.clone();
            let o = r.as_object_mut().unwrap();
            o.remove("setting");
            o.remove("setting_number");
            r
        })
        .collect();
    assert_eq!(round0.len(), 3);
    assert!(
        round0.windows(2).all(|w| w[0] == w[1]),
        "round 0 differs between the settings that share it: {round0:?}"
    );

    // SIGKILL each attempt at a pseudo-random moment after it has made new durable progress, until the run
    // finishes on its own. Waiting for progress first, rather than a fixed share of the uninterrupted run's
    // time, keeps the number of kills independent of how loaded the machine was while `straight` ran (the
    // tests of this file run in parallel). Each kill then lands up to 8% of an uninterrupted run later.
    let killed = f.path("killed");
    let mut kills = 0;
    let mut x = 12345u64;
    for _ in 0..60 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay_ms = full_ms * ((x >> 33) % 81) / 1000;
        let before = progress(&killed);
        let mut child = f
            .cmd(&["run", "long.toml", "--out", "killed"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if progress(&killed) != before {
                std::thread::sleep(Duration::from_millis(delay_ms));
                break child.try_wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        match finished {
            Some(status) => {
                assert!(status.success(), "resumed run failed");
                break;
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
            }
        }
    }
    let o = f.run(&["run", "long.toml", "--out", "killed"]);
    assert!(o.status.success(), "{}", stderr(&o));
    eprintln!("{kills} kills landed");
    assert!(kills >= 3, "only {kills} kills landed: make the run longer");
    assert_eq!(metrics(&killed), reference, "after {kills} kills");
    let rows = metrics(&f.path("killed"));
    let ppl = |s: &str, t: u64| {
        rows.iter()
            .find(|r| r["setting"] == s && r["round"] == t)
            .unwrap()["heldout_perplexity"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(
        ppl("synthetic-only", 0),
        ppl("accumulate", 0),
        "round 0 is the same for every setting"
    );
    let acc = rows
        .iter()
        .find(|r| r["setting"] == "accumulate" && r["round"] == 2)
        .unwrap();
    assert_eq!(acc["total_docs"], 36);
    assert_eq!(acc["synthetic_docs"], 12);
}

/// `--help` gives every command its own one-line description.
#[test]
fn help_describes_every_command() {
    let f = Fixture::new();
    let o = f.run(&["--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    let commands: Vec<(&str, &str)> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            l.trim()
                .split_once(' ')
                .map_or((l.trim(), ""), |(c, d)| (c, d.trim()))
        })
        .collect();
    assert!(commands.len() >= 13, "{help}");
    for (c, d) in &commands {
        assert!(!d.is_empty(), "{c} has no description: {help}");
    }
    let mut descriptions: Vec<&str> = commands.iter().map(|c| c.1).collect();
    descriptions.sort();
    descriptions.dedup();
    assert_eq!(
        descriptions.len(),
        commands.len(),
        "two commands share a description: {help}"
    );
}

#[test]
fn report_and_status_work_on_a_partial_run() {
    let f = Fixture::tiny();
    let o = f.run(&[
        "run",
        "config.toml",
        "--out",
        "part",
        "--only",
        "accumulate/0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = f.run(&["status", "part"]);
    let s = String::from_utf8_lossy(&o.stdout);
    // Round 0 is the repetition's, shared: the other settings need only write its metrics.
    assert!(
        s.contains("accumulate")
            && s.contains("3/3")
            && s.contains("synthetic-only")
            && s.contains("round 0: metrics"),
        "{s}"
    );
    // Unfinished chains are counted, and each setting says how many repetitions every round has.
    assert!(s.contains("1 of 3 chains finished; 2 not finished"), "{s}");
    assert!(s.contains("synthetic-only    0, 0, 0"), "{s}");
    let o = f.run(&["report", "part"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rd = f.path("part/report");
    let png = std::fs::read(rd.join("perplexity.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "the PNG should hold a drawn plot");
    let svg = std::fs::read_to_string(rd.join("perplexity.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("accumulate"));
    let md = std::fs::read_to_string(rd.join("summary.md")).unwrap();
    assert!(
        md.lines().any(|l| l.starts_with("| accumulate | 1 |")),
        "{md}"
    );
    assert!(
        md.contains("change of mean NLL against each repetition's round 0")
            && md.contains("verdict"),
        "{md}"
    );
    // The chains that have not finished are flagged, with the repetitions each round has.
    assert!(md.contains("### Incomplete chains"), "{md}");
    assert!(
        md.contains(
            "| synthetic-only: 0 of 1 repetitions finished; repetitions by round: 0, 0, 0 |"
        ),
        "{md}"
    );
    for plot in ["change.png", "text-stats.png", "paired.csv"] {
        assert!(rd.join(plot).exists(), "{plot}");
    }
    let html = std::fs::read_to_string(rd.join("report.html")).unwrap();
    assert!(html.contains("<img src=\"perplexity.svg\"") && html.contains("<td>accumulate</td>"));
    let csv = std::fs::read_to_string(f.path("part/metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.starts_with("setting,setting_number,repetition,round,"));

    let dir = f.path("part/accumulate/rep-0/round-2");
    let o = f.run(&[
        "generate",
        dir.join("model.safetensors").to_str().unwrap(),
        "--count",
        "2",
        "--max-new-tokens",
        "10",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches("=== sample")
            .count(),
        2
    );
    let o = f.run(&[
        "eval",
        dir.join("model.safetensors").to_str().unwrap(),
        "--data",
        "plots.csv.zst",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["perplexity"].as_f64().unwrap() > 1.0);
    let e = error_line(&f.run(&["report", "nowhere"]));
    assert!(e.contains("nowhere is not a run directory"), "{e}");
}

#[test]
fn bad_configs_and_sources_get_one_clear_line() {
    let f = Fixture::tiny();
    let e = error_line(&f.run(&["run", "missing.toml"]));
    assert!(e.contains("cannot read config missing.toml"), "{e}");

    std::fs::write(f.path("broken.toml"), "[training\nsteps = 3\n").unwrap();
    let e = error_line(&f.run(&["run", "broken.toml"]));
    assert!(e.contains("broken.toml line 1"), "{e}");

    let cfg = std::fs::read_to_string(f.path("config.toml")).unwrap();
    std::fs::write(
        f.path("unknown.toml"),
        cfg.replace("log_every = 5", "log_every = 5\nlog_evry = 5"),
    )
    .unwrap();
    let e = error_line(&f.run(&["run", "unknown.toml"]));
    assert!(
        e.contains("unknown.toml line 13") && e.contains("log_evry"),
        "{e}"
    );

    std::fs::write(
        f.path("setting.toml"),
        cfg.replace("\"accumulate\"", "\"acumulate\""),
    )
    .unwrap();
    let e = error_line(&f.run(&["run", "setting.toml"]));
    assert!(
        e.contains("unknown setting \"acumulate\"") && e.contains("synthetic-only"),
        "{e}"
    );

    let e = error_line(&f.run(&["run", "config.toml", "--out", "o1", "--data", "nothere.csv"]));
    assert!(e.contains("nothere.csv does not exist"), "{e}");

    std::fs::write(f.path("empty.csv"), "Title,Plot\n").unwrap();
    let e = error_line(&f.run(&["run", "config.toml", "--out", "o2", "--data", "empty.csv"]));
    assert!(e.contains("contains no documents"), "{e}");

    std::fs::write(f.path("big.toml"), cfg.replace("n = 12", "n = 120")).unwrap();
    let e = error_line(&f.run(&["run", "big.toml", "--out", "o3"]));
    assert!(
        e.contains("short by") && e.contains("decaying-alpha"),
        "{e}"
    );

    let e = error_line(&f.run(&["run", "config.toml", "--device", "cuda"]));
    assert!(
        e.contains("built without the `cuda` feature") || e.contains("CUDA device"),
        "{e}"
    );

    std::fs::write(f.path("a-file"), "").unwrap();
    let e = error_line(&f.run(&["run", "config.toml", "--out", "a-file/sub"]));
    assert!(e.contains("cannot create the output directory"), "{e}");
}

#[test]
fn a_changed_config_corrupt_checkpoints_and_a_second_process_are_refused() {
    let f = Fixture::tiny();
    let reference = f.finished_run("r");

    f.write_config("changed.toml", 121);
    let e = error_line(&f.run(&["run", "changed.toml", "--out", "r"]));
    assert!(
        e.contains("different config") && e.contains("training.steps: 120 -> 121"),
        "{e}"
    );

    // A truncated model: the round is refused with what to do, and redone once the file is deleted.
    let rd = f.path("r/synthetic-only/rep-0/round-2");
    for p in ["metrics.json", "eval.json", "samples.jsonl.zst"] {
        std::fs::remove_file(rd.join(p)).unwrap();
    }
    let model = rd.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 3]).unwrap();
    let e = error_line(&f.run(&["run", "config.toml", "--out", "r"]));
    assert!(
        e.contains("model.safetensors is corrupt (its SHA-256")
            && e.contains("delete it to retrain this round"),
        "{e}"
    );
    let e = error_line(&f.run(&["generate", model.to_str().unwrap()]));
    assert!(e.contains("model.safetensors is corrupt"), "{e}");
    std::fs::remove_file(&model).unwrap();
    assert!(f
        .run(&["run", "config.toml", "--out", "r"])
        .status
        .success());
    assert_eq!(metrics(&f.path("r")), reference);

    // A model of another shape in place of a round's model.
    let other = f.path("r2");
    f.write_config("wide.toml", 120);
    let wide = std::fs::read_to_string(f.path("wide.toml"))
        .unwrap()
        .replace("n_embd = 16", "n_embd = 32");
    std::fs::write(f.path("wide.toml"), wide).unwrap();
    assert!(f
        .run(&[
            "run",
            "wide.toml",
            "--out",
            other.to_str().unwrap(),
            "--only",
            "accumulate/0"
        ])
        .status
        .success());
    let theirs = other.join("accumulate/rep-0/round-1/model.safetensors");
    for p in ["metrics.json", "eval.json", "samples.jsonl.zst"] {
        std::fs::remove_file(rd.join(p)).unwrap();
    }
    std::fs::copy(&theirs, &model).unwrap();
    std::fs::copy(
        other.join("accumulate/rep-0/round-1/model.safetensors.sha256"),
        rd.join("model.safetensors.sha256"),
    )
    .unwrap();
    let e = error_line(&f.run(&["run", "config.toml", "--out", "r"]));
    assert!(e.contains("another config"), "{e}");
    std::fs::remove_file(&model).unwrap();
    assert!(f
        .run(&["run", "config.toml", "--out", "r"])
        .status
        .success());
    assert_eq!(metrics(&f.path("r")), reference);

    // A chain another process works on is left to it: this one says so, touching nothing of that chain, and
    // exits with the busy status (75) and one line, as the chain is not finished; `status` shows it running.
    // With --jobs the parent says the same of its worker.
    let lock = std::fs::File::options()
        .write(true)
        .open(f.path("r/accumulate/rep-0/lock"))
        .unwrap();
    lock.lock().unwrap();
    std::fs::remove_file(f.path("r/accumulate/rep-0/round-2/metrics.json")).unwrap();
    for jobs in ["1", "2"] {
        let o = f.run(&["run", "config.toml", "--out", "r", "--jobs", jobs]);
        assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
        let e = error_line(&o);
        assert!(
            e.contains("1 chain(s) are busy in another process and not finished (accumulate/0)"),
            "{e}"
        );
    }
    let o = f.run(&["run", "config.toml", "--out", "r", "--jobs", "1"]);
    assert!(
        stderr(&o).contains("chain accumulate/0 is busy in another process"),
        "{}",
        stderr(&o)
    );
    // Chains that are finished are not busy, whoever holds their lock.
    let o = f.run(&[
        "run",
        "config.toml",
        "--out",
        "r",
        "--only",
        "synthetic-only",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!f.path("r/accumulate/rep-0/round-2/metrics.json").exists());
    let st = String::from_utf8_lossy(&f.run(&["status", "r"]).stdout).into_owned();
    assert!(st.contains("running in another process"), "{st}");
    drop(lock);
    assert!(f
        .run(&["run", "config.toml", "--out", "r"])
        .status
        .success());
    assert_eq!(metrics(&f.path("r")), reference);
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_during_a_checkpoint_loses_nothing() {
    use std::os::unix::process::CommandExt;
    let f = Fixture::tiny();
    let reference = f.finished_run("ref");
    std::fs::create_dir(f.path("full")).unwrap();
    for p in [
        "config.toml",
        "config.toml.sha256",
        "tokenizer.json",
        "tokenizer.json.sha256",
    ] {
        std::fs::copy(f.path("ref").join(p), f.path("full").join(p)).unwrap();
    }
    // Files may not grow past 8 KB: the manifest fits, the first checkpoint does not. Writes then fail with
    // EFBIG, as on a full disk.
    let mut cmd = f.cmd(&["run", "config.toml", "--out", "full"]);
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 8 << 10,
                rlim_max: 8 << 10,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    let e = error_line(&o);
    assert!(e.contains("disk full"), "{e}");
    let rd = f.path("full/round-0/n-12/rep-0");
    assert!(rd.join("manifest.json").exists());
    assert!(
        std::fs::read_dir(&rd).unwrap().flatten().all(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !n.starts_with("ckpt-") || n.ends_with(".partial")
        }),
        "no torn checkpoint passes for a finished one"
    );
    assert!(f
        .run(&["run", "config.toml", "--out", "full"])
        .status
        .success());
    assert_eq!(metrics(&f.path("full")), reference);
}

/// Text statistics are measured on the first `min_docs` generated documents of every round, however many
/// the round generated; rows written before that rule (no `stats_docs`, no checksum) are recomputed by
/// `report`. Every row counts empty, cut and U+FFFD documents.
#[test]
fn text_statistics_use_the_same_number_of_documents_everywhere() {
    let f = Fixture::tiny();
    assert!(f
        .run(&["run", "config.toml", "--out", "r"])
        .status
        .success());
    let rows = metrics(&f.path("r"));
    let generated: std::collections::BTreeSet<u64> = rows
        .iter()
        .map(|r| r["generated_docs"].as_u64().unwrap())
        .collect();
    assert!(
        generated.len() > 1,
        "rounds generate different numbers of documents: {generated:?}"
    );
    for r in &rows {
        assert_eq!(r["stats_docs"], 4, "{r}");
        let counted =
            ["gen_empty", "gen_truncated", "gen_replacement_char"].map(|k| r[k].as_u64().unwrap());
        assert!(
            counted
                .iter()
                .all(|&c| c <= r["generated_docs"].as_u64().unwrap()),
            "{r}"
        );
    }
    assert!(
        rows.iter()
            .any(|r| r["gen_truncated"].as_u64().unwrap() > 0),
        "a 24-token limit cuts some documents"
    );

    // An old row: statistics of all documents, no stats_docs, no checksum.
    let m = f.path("r/decaying-alpha/rep-0/round-2/metrics.json");
    let mut old: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    let want = old["gen_distinct_1"].clone();
    old.as_object_mut().unwrap().remove("stats_docs");
    old["gen_distinct_1"] = serde_json::json!(0.123);
    std::fs::write(&m, serde_json::to_vec(&old).unwrap()).unwrap();
    std::fs::remove_file(f.path("r/decaying-alpha/rep-0/round-2/metrics.json.sha256")).unwrap();
    let o = f.run(&["report", "r"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(f.path("r/metrics.csv")).unwrap();
    let mut rd = csv::Reader::from_reader(csv.as_bytes());
    let headers = rd.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let row = rd
        .records()
        .map(|r| r.unwrap())
        .find(|r| &r[col("setting")] == "decaying-alpha" && &r[col("round")] == "2")
        .unwrap();
    assert_eq!(&row[col("stats_docs")], "4");
    assert_eq!(
        row[col("gen_distinct_1")].parse::<f64>().unwrap(),
        want.as_f64().unwrap()
    );
}

/// `export` writes transformers' layout; `eval`, `generate` and `model.init_from` read it back, with the same
/// numbers as the original checkpoint. Every file of a run directory has the same permissions.
#[test]
fn export_and_import_in_the_hugging_face_layout() {
    let f = Fixture::tiny();
    let o = f.run(&[
        "run",
        "config.toml",
        "--out",
        "r",
        "--only",
        "synthetic-only/0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ck = f.path("r/synthetic-only/rep-0/round-1/model.safetensors");
    let o = f.run(&["export", ck.to_str().unwrap(), "--out", "hf"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert!(f.path("hf").join(file).exists(), "{file}");
    }
    let ppl = |model: &str| {
        let o = f.run(&["eval", model, "--data", "plots.csv.zst", "--max-docs", "20"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["perplexity"].as_f64().unwrap()
    };
    assert_eq!(ppl(ck.to_str().unwrap()), ppl("hf"));
    let o = f.run(&["generate", "hf", "--count", "2", "--max-new-tokens", "8"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Every round starts from the exported weights: round 0's loss starts where the checkpoint ended.
    let cfg = std::fs::read_to_string(f.path("config.toml")).unwrap();
    let init = cfg.replace("block_size = 16\n", "block_size = 16\ninit_from = \"hf\"\n");
    std::fs::write(f.path("init.toml"), &init).unwrap();
    let o = f.run(&[
        "run",
        "init.toml",
        "--out",
        "i",
        "--only",
        "synthetic-only/0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first_loss = |dir: &str| -> f64 {
        let v: Value = serde_json::from_slice(
            &std::fs::read(f.path(dir).join("round-0/n-12/rep-0/train.json")).unwrap(),
        )
        .unwrap();
        v["losses"][0][1].as_f64().unwrap()
    };
    assert!(
        first_loss("i") < first_loss("r") - 0.3,
        "from the trained weights the first logged loss ({}) is below a random start's ({})",
        first_loss("i"),
        first_loss("r")
    );
    std::fs::write(
        f.path("wide.toml"),
        init.replace("n_embd = 16", "n_embd = 32"),
    )
    .unwrap();
    let e = error_line(&f.run(&["run", "wide.toml", "--out", "w"]));
    assert!(
        e.contains("model.init_from") && e.contains("n_embd 16") && e.contains("n_embd 32"),
        "{e}"
    );

    // One permission for every file the run wrote (0644 under the usual umask of 022).
    let mut modes = std::collections::BTreeSet::new();
    fn walk(d: &Path, modes: &mut std::collections::BTreeSet<u32>) {
        use std::os::unix::fs::PermissionsExt;
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                walk(&e.path(), modes);
            } else {
                modes.insert(m.permissions().mode() & 0o777);
            }
        }
    }
    walk(&f.path("r"), &mut modes);
    walk(&f.path("cache"), &mut modes);
    let octal: Vec<String> = modes.iter().map(|m| format!("{m:o}")).collect();
    assert_eq!(modes.len(), 1, "mixed permissions: {octal:?}");
}

/// A schedule of the config's own runs beside the presets, under its name, with the counts it planned.
#[test]
fn a_custom_schedule_runs_and_reports_under_its_name() {
    let f = Fixture::tiny();
    let cfg = std::fs::read_to_string(f.path("config.toml")).unwrap();
    // With a second evaluation set (the committed 2020s sample), which the report treats like the first.
    let second =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample/movies_2020s_sample.csv.zst");
    let cfg = cfg.replace(
        "heldout_docs = 6\n",
        &format!(
            "heldout_docs = 6\nsecond_eval = \"{}\"\nsecond_eval_docs = 10\n",
            second.display()
        ),
    );
    let custom = format!(
        "{cfg}\n[[schedule.custom]]\nname = \"n-fresh-plus-n-synthetic\"\nsize = {{ kind = \"fixed\", n = 24 }}\nalpha = {{ kind = \"fixed\", alpha = 0.5 }}\n"
    );
    std::fs::write(f.path("custom.toml"), custom).unwrap();
    let o = f.run(&[
        "run",
        "custom.toml",
        "--out",
        "c",
        "--only",
        "n-fresh-plus-n-synthetic/0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = metrics(&f.path("c"));
    assert_eq!(rows.len(), 3);
    for (t, r) in rows.iter().enumerate() {
        assert_eq!(r["setting"], "n-fresh-plus-n-synthetic");
        // After the presets 0-4 (the paper's four and fresh-only).
        assert_eq!(r["setting_number"], 5);
        let want = if t == 0 { (24, 0) } else { (12, 12) };
        assert_eq!(
            (
                r["fresh_docs"].as_u64().unwrap(),
                r["synthetic_docs"].as_u64().unwrap()
            ),
            want,
            "{r}"
        );
    }
    let o = f.run(&["status", "c"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("n-fresh-plus-n-synthetic"));
    assert!(f.run(&["report", "c"]).status.success());
    let md = std::fs::read_to_string(f.path("c/report/summary.md")).unwrap();
    assert!(md.contains("| n-fresh-plus-n-synthetic | 1 |"), "{md}");
    assert!(
        md.contains("### Second evaluation set: change of mean NLL"),
        "{md}"
    );
    assert!(f.path("c/report/second-change.png").exists());
    assert!(rows
        .iter()
        .all(|r| r["second_perplexity"].as_f64().unwrap() > 1.0));
    let e = error_line(&f.run(&["run", "custom.toml", "--out", "c", "--only", "nope"]));
    assert!(e.contains("setting \"nope\" is not in this config"), "{e}");
}

/// `theory` runs the paper's Figure 2 grid from its config: 55 schedules x 20 rounds (four size schedules,
/// accumulation read both ways), the exact recurrence inside the simulated band's neighbourhood, exact ratios
/// in the summary, and the plot and page.
#[test]
fn theory_runs_the_figure_2_grid() {
    let f = Fixture::tiny();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/theory-figure2.toml");
    let o = f.run(&["theory", cfg.to_str().unwrap(), "--out", "th"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<Value> = std::fs::read_to_string(f.path("th/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 55 * 20);
    for r in &rows {
        let (exact, mean, se) = (
            r["exact_risk"].as_f64().unwrap(),
            r["sim_mean"].as_f64().unwrap(),
            r["sim_se"].as_f64().unwrap(),
        );
        assert!((mean - exact).abs() < 5.0 * se + 1e-12, "{r}");
    }
    let exact = |name: &str, t: u64| {
        rows.iter()
            .find(|r| r["setting"] == name && r["round"] == t)
            .unwrap()["exact_risk"]
            .as_f64()
            .unwrap()
    };
    // Growing to |D_t| = (t + 1) n adds n a round: the recurrence of fixed n accumulating.
    for t in 0..20 {
        assert_eq!(
            exact("inverse-linear-acc-total", t),
            exact("inverse-fixed-acc", t)
        );
    }
    // Identical recurrences read identical exact ratios in the summary (x1.589), not two simulated ones.
    let md = std::fs::read_to_string(f.path("th/summary.md")).unwrap();
    for name in ["zero-quadratic", "zero-fixed-acc"] {
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap();
        assert!(
            line.contains("| 8.1935e-3 |") && line.contains("| 1.589 |"),
            "{line}"
        );
    }
    for file in [
        "risk.png",
        "risk.svg",
        "report.html",
        "summary.md",
        "metrics.csv",
    ] {
        assert!(f.path("th").join(file).exists(), "{file}");
    }
    std::fs::write(f.path("bad-theory.toml"), "[theory]\nrepetitions = 1\n").unwrap();
    let e = error_line(&f.run(&["theory", "bad-theory.toml"]));
    assert!(e.contains("repetitions must be at least 2"), "{e}");
}

/// Several processes on one run directory: two `--only` selections at once, a chain killed mid-round in one
/// process and resumed by another, and `run --jobs 2` all give a single process's metrics, bit for bit.
#[test]
fn processes_share_a_run_directory_by_chain() {
    let f = Fixture::tiny();
    let reference = f.finished_run("ref");
    // Round 0 was trained once for the repetition, not once per setting.
    assert!(f.path("ref/round-0/n-12/rep-0/model.safetensors").exists());
    for s in ["synthetic-only", "accumulate", "decaying-alpha"] {
        let own = f.path("ref").join(s).join("rep-0/round-0");
        assert!(
            own.join("metrics.json").exists() && !own.join("model.safetensors").exists(),
            "{s}"
        );
    }

    let spawn = |only: &str| {
        f.cmd(&["run", "config.toml", "--out", "p", "--only", only])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn("synthetic-only");
    let mut b = spawn("accumulate");
    // Kill b once its first training checkpoint of round 1 exists: mid-round (round 0 is shared with a).
    let round1 = f.path("p/accumulate/rep-0/round-1");
    while finished_checkpoint(&round1).is_none() {
        assert!(
            b.try_wait().unwrap().is_none(),
            "accumulate finished before a checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    b.kill().unwrap();
    b.wait().unwrap();
    let out = a.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another process resumes the killed chain, and the rest.
    let o = f.run(&["run", "config.toml", "--out", "p"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming training"), "{}", stderr(&o));
    assert_eq!(metrics(&f.path("p")), reference);

    let o = f.run(&["run", "config.toml", "--out", "j", "--jobs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("[worker 1"), "{}", stderr(&o));
    assert_eq!(metrics(&f.path("j")), reference);
}

/// `slurm` writes a job array with one task per chain, each a resumable `run --only` of the frozen config.
#[test]
fn slurm_writes_a_job_array_of_chains() {
    let f = Fixture::tiny();
    let o = f.run(&[
        "slurm",
        "config.toml",
        "--out",
        "s",
        "--partition",
        "gpu",
        "--gpus-per-task",
        "1",
        "--time",
        "01:00:00",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let script = std::fs::read_to_string(f.path("s/slurm/collapse-lab.sbatch")).unwrap();
    for want in [
        "#SBATCH --array=0-2\n",
        "#SBATCH --requeue",
        "#SBATCH --partition=gpu",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --time=01:00:00",
        "CHAINS=(synthetic-only/0 accumulate/0 decaying-alpha/0)",
        "CHAIN=${CHAINS[$SLURM_ARRAY_TASK_ID]}",
        "--device 'cuda' --only \"$CHAIN\"",
        "if [ \"$status\" -eq 75 ]; then",
        "scontrol requeue \"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\"",
    ] {
        assert!(script.contains(want), "{want} missing from:\n{script}");
    }
    assert!(
        f.path("s/config.toml").exists(),
        "the config is frozen before any task runs"
    );

    // A directory frozen for the CPU (a short test run first) is not silently given GPU tasks that would
    // train on the CPU: refused in one line unless told, and then every task line says cuda.
    let o = f.run(&["slurm", "config.toml", "--out", "c", "--time", "00:10:00"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cpu = std::fs::read_to_string(f.path("c/slurm/collapse-lab.sbatch")).unwrap();
    assert!(cpu.contains("--device 'cpu' --only"), "{cpu}");
    let gpu = ["slurm", "config.toml", "--out", "c", "--gpus-per-task", "1"];
    let e = error_line(&f.run(&gpu));
    assert!(
        e.contains("was started on device \"cpu\"; these tasks would run on \"cuda\": pass --switch-device"),
        "{e}"
    );
    let o = f.run(&[&gpu[..], &["--switch-device"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let moved = std::fs::read_to_string(f.path("c/slurm/collapse-lab.sbatch")).unwrap();
    assert!(moved.contains("--device 'cuda' --only"), "{moved}");
}

/// A round's finished training checkpoint (`ckpt-STEP`, not `.partial`), if it has one.
fn finished_checkpoint(round_dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(round_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("ckpt-") && !n.ends_with(".partial")
        })
}

/// Flips one bit of `path` in its middle; returns the original bytes.
fn flip_a_bit(path: &Path) -> Vec<u8> {
    let orig = std::fs::read(path).unwrap();
    let mut bytes = orig.clone();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(path, &bytes).unwrap();
    orig
}

/// One flipped bit in any file a run reads back is an error that names the file and what to delete; with
/// the file restored the run finishes with the same metrics. A corrupt token cache is rebuilt.
#[test]
fn a_flipped_bit_in_any_file_a_run_reads_back_is_caught() {
    let f = Fixture::tiny();
    let reference = f.finished_run("r");
    let rd = f.path("r/accumulate/rep-0/round-1");
    for (file, remedy) in [
        ("config.toml", "another --out"),
        ("tokenizer.json", "delete it"),
        ("accumulate/rep-0/round-1/manifest.json", "delete it"),
        ("accumulate/rep-0/round-1/model.safetensors", "delete it"),
        ("accumulate/rep-0/round-1/train.json", "delete it"),
        ("accumulate/rep-0/round-1/eval.json", "delete it"),
        ("accumulate/rep-0/round-1/samples.jsonl.zst", "delete it"),
        ("round-0/n-12/rep-0/manifest.json", "delete it"),
        ("round-0/n-12/rep-0/samples.jsonl.zst", "delete it"),
    ] {
        // Re-entering every round of the chain, and composing round 2 again from round 1's manifest and
        // samples.
        for p in [
            "round-0/metrics.json",
            "round-1/metrics.json",
            "round-2/metrics.json",
            "round-2/manifest.json",
        ] {
            let _ = std::fs::remove_file(f.path("r/accumulate/rep-0").join(p));
        }
        let path = f.path("r").join(file);
        let orig = flip_a_bit(&path);
        let e = error_line(&f.run(&["run", "config.toml", "--out", "r"]));
        assert!(
            e.contains(&format!("r/{file} is corrupt")) && e.contains(remedy),
            "{file}: {e}"
        );
        std::fs::write(&path, orig).unwrap();
    }
    assert!(rd.exists());
    assert!(f
        .run(&["run", "config.toml", "--out", "r"])
        .status
        .success());
    assert_eq!(metrics(&f.path("r")), reference);

    // A mid-training checkpoint: stop a run once one exists, flip a bit in its model, then its optimizer.
    let mut child = f
        .cmd(&["run", "config.toml", "--out", "k"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let round0 = f.path("k/round-0/n-12/rep-0");
    while finished_checkpoint(&round0).is_none() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its first checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let ck = finished_checkpoint(&round0).expect("a finished checkpoint");
    for file in ["state.json", "model.safetensors", "optimizer.safetensors"] {
        let path = ck.join(file);
        let orig = flip_a_bit(&path);
        let e = error_line(&f.run(&["run", "config.toml", "--out", "k"]));
        let rel = path.strip_prefix(f.dir.path()).unwrap();
        assert!(
            e.contains(&format!("{} is corrupt", rel.display()))
                && e.contains("to redo this round's training"),
            "{file}: {e}"
        );
        std::fs::write(&path, orig).unwrap();
    }

    // The token cache: reported, rebuilt, and the run is unchanged.
    let cache = std::fs::read_dir(f.path("cache"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("tokens-")
        })
        .expect("a token cache file");
    flip_a_bit(&cache);
    let o = f.run(&["run", "config.toml", "--out", "k"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("fails its checksum"), "{}", stderr(&o));
    assert_eq!(metrics(&f.path("k")), reference);
}

#[test]
fn gpu_check_runs_its_checks_on_the_cpu() {
    let f = Fixture::tiny();
    let o = f.run(&["gpu-check", "--device", "cpu", "--steps", "20"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["pass"], true);
    assert!(v["loss_curve_max_rel_diff_f32"].as_f64().unwrap() < 1e-3);
}

/// The report page as a browser shows it: headless Chromium (Debian's `chromium`) renders `report.html` to a
/// screenshot. Skipped, with a note, where Chromium is not installed.
#[test]
fn the_report_page_renders_in_headless_chromium() {
    let Some(chromium) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!(
            "chromium is not installed: skipping the browser check (apt-get install chromium)"
        );
        return;
    };
    let f = Fixture::tiny();
    assert!(f
        .run(&[
            "run",
            "config.toml",
            "--out",
            "page",
            "--only",
            "synthetic-only/0"
        ])
        .status
        .success());
    assert!(f.run(&["report", "page"]).status.success());
    let shot = f.path("shot.png");
    let profile = f.path("chromium-profile");
    let o = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1000,1000")
        .arg(format!(
            "file://{}",
            f.path("page/report/report.html").display()
        ))
        .output()
        .unwrap();
    let png = std::fs::read(&shot).unwrap_or_else(|_| panic!("no screenshot: {}", stderr(&o)));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 20_000,
        "a page with a plot and a table, not a blank one ({} bytes)",
        png.len()
    );
}

/// A worker that dies by a signal is reported with the signal and what to do, not with its last progress
/// line: here a file-size limit (SIGXFSZ) stops the first large write of a worker (the token cache), while
/// the parent, which writes only small files, reports it.
#[test]
fn a_worker_killed_by_a_signal_is_reported_as_such() {
    let f = Fixture::tiny();
    let o = Command::new("sh")
        .args([
            "-c",
            "ulimit -f 64 && exec \"$0\" run config.toml --out x --jobs 2",
            common::BIN,
        ])
        .current_dir(f.path(""))
        .env_remove("COLLAPSE_DATA")
        .env_remove("COLLAPSE_TOKENIZER")
        .env("COLLAPSE_CACHE", f.path("cache"))
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let e = error_line(&o);
    assert!(e.contains("killed by signal SIGXFSZ"), "{e}");
    assert!(e.contains("ulimit -f"), "{e}");
    assert!(
        !e.contains("tokenising"),
        "the last progress line is no reason: {e}"
    );
    // Without the limit the same command resumes and finishes.
    let o = f.run(&["run", "config.toml", "--out", "x", "--jobs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
