//! End-to-end tests of `[model] kind = "ngram"` on the committed sample: the whole pipeline (every setting,
//! `--jobs`, curation, `report`) runs unchanged, a killed or partly deleted run resumes bit for bit, an
//! unsmoothed model's infinite perplexity is reported as such beside its finite risk, and the order-1 model's
//! risk follows the categorical recurrence (and stops following it when documents are decoded and
//! re-encoded between rounds).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{metrics, stderr, SampleDir as Fixture, FILTERS};

const SETTINGS: &str =
    r#"["synthetic-only", "accumulate", "fixed-alpha", "decaying-alpha", "fresh-only"]"#;

fn config(model: &str, generation: &str, rounds: usize, reps: usize) -> String {
    format!(
        r#"[model]
kind = "ngram"

[model.ngram]
{model}

[data]
source = "plots.csv.zst"
tokenizer = "train:300"
heldout_docs = 20

[generation]
min_docs = 10
stats_words = 100
{generation}

[schedule]
n = 20
rounds = {rounds}
settings = {SETTINGS}

[experiment]
repetitions = {reps}
seed = 5
"#
    )
}

fn finished(f: &Fixture, cfg: &str, out: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["run", cfg, "--out", out];
    args.extend_from_slice(extra);
    let o = f.run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    metrics(&f.path(out))
}

fn report(f: &Fixture, out: &str) -> String {
    let o = f.run(&["report", out]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::read_to_string(f.path(out).join("report/summary.md")).unwrap()
}

/// Deletes `name` (and its checksum) in every round directory below `dir` whose path passes `pick`.
fn delete_everywhere(dir: &Path, name: &str, pick: &mut dyn FnMut(&Path) -> bool) -> usize {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            n += delete_everywhere(&p, name, pick);
        } else if p.file_name().is_some_and(|f| f == name) && pick(&p) {
            // A model is written after its training record, so a record may stand alone but a model
            // never does: the record goes with it.
            let with: &[&str] = if name.starts_with("model.") {
                &[name, "train.json"]
            } else {
                &[name]
            };
            for w in with {
                std::fs::remove_file(p.with_file_name(w)).unwrap();
                let _ = std::fs::remove_file(p.with_file_name(format!("{w}.sha256")));
            }
            n += 1;
        }
    }
    n
}

#[test]
fn an_ngram_runs_every_setting_in_parallel_and_resumes_bit_for_bit() {
    let f = Fixture::new();
    let kn = r#"order = 3
smoothing = { kind = "kneser-ney", discount = 0.75 }"#;
    f.write(
        "kn.toml",
        &config(kn, "max_new_tokens = 400\ncarry = \"tokens\"", 3, 2),
    );
    let one = finished(&f, "kn.toml", "one", &["--jobs", "1"]);
    assert_eq!(one.len(), 5 * 2 * 3);
    for r in &one {
        let ppl = r["heldout_perplexity"].as_f64().unwrap();
        let risk = r["model_risk"].as_f64().unwrap();
        // Kneser-Ney over a uniform base gives every token probability: a finite perplexity, below the
        // vocabulary's 300 a uniform model would have.
        assert!(ppl.is_finite() && ppl > 1.0 && ppl < 300.0, "{r}");
        assert!(risk.is_finite() && risk > 0.0, "{r}");
        assert_eq!(r["train_steps"], 1, "a model that counts takes one step");
    }
    let fresh = |t: u64| {
        one.iter()
            .find(|r| r["setting"] == "fresh-only" && r["round"] == t && r["repetition"] == 0)
            .unwrap()
            .clone()
    };
    assert_eq!(fresh(2)["synthetic_docs"], 0);
    assert_eq!(fresh(2)["fresh_docs"], 20);

    // Two workers write exactly what one process writes.
    assert_eq!(finished(&f, "kn.toml", "two", &["--jobs", "2"]), one);

    // Every phase reads its output where it exists and recomputes it where not: delete each kind of output
    // in some round directories, resume, and get the same bits.
    for (name, every) in [
        ("metrics.json", 1),
        ("tails.json", 2),
        ("samples.jsonl.zst", 3),
        ("eval.json", 2),
        ("model.ngram.zst", 3),
    ] {
        let mut i = 0;
        let gone = delete_everywhere(&f.path("two"), name, &mut |_| {
            i += 1;
            i % every == 0
        });
        assert!(gone > 0, "no {name} to delete");
    }
    std::fs::remove_file(f.path("two/metrics.jsonl")).unwrap();
    assert_eq!(
        finished(&f, "kn.toml", "two", &["--jobs", "1"]),
        one,
        "resumed after deletions"
    );

    // SIGKILL at pseudo-random moments until a run finishes on its own.
    let started = std::time::Instant::now();
    finished(&f, "kn.toml", "timing", &["--jobs", "1"]);
    let full_ms = started.elapsed().as_millis() as u64;
    let mut kills = 0;
    let mut x = 99u64;
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(full_ms * ((x >> 33) % 60) / 100);
        let mut child = f
            .cmd(&["run", "kn.toml", "--out", "killed", "--jobs", "1"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        match child.try_wait().unwrap() {
            Some(s) => {
                assert!(s.success(), "a resumed run failed");
                break;
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
            }
        }
    }
    assert!(kills >= 3, "only {kills} kills landed");
    assert_eq!(
        finished(&f, "kn.toml", "killed", &["--jobs", "1"]),
        one,
        "after {kills} kills"
    );

    let summary = report(&f, "one");
    assert!(summary.contains("Held-out plots: change of mean NLL"));
    assert!(summary.contains("Risk against the reference distribution: change of log risk"));
    for plot in ["perplexity", "change", "risk", "tails", "text-stats"] {
        assert!(
            f.path("one/report").join(format!("{plot}.png")).exists(),
            "{plot}.png"
        );
    }
    // A model fitted in one pass has no training curve to draw.
    assert!(!f.path("one/report/heldout-training.png").exists());
}

#[test]
fn an_unsmoothed_model_has_infinite_perplexity_and_a_finite_risk() {
    let f = Fixture::new();
    let mle = "order = 2\nsmoothing = { kind = \"none\" }";
    f.write("mle.toml", &config(mle, "max_new_tokens = 400", 2, 2));
    let rows = finished(&f, "mle.toml", "mle", &[]);
    for r in &rows {
        // JSON has no infinity: the row says "inf", and reads back as such.
        assert_eq!(r["heldout_perplexity"], "inf", "{r}");
        assert!(r["model_risk"].as_f64().unwrap().is_finite());
    }
    let csv = std::fs::read_to_string(f.path("mle/metrics.jsonl")).unwrap();
    assert!(csv.contains("\"heldout_perplexity\":\"inf\""));
    let summary = report(&f, "mle");
    assert!(
        summary.contains(&format!(
            "{} of {} finished rounds give some held-out token probability 0",
            rows.len(),
            rows.len()
        )),
        "{summary}"
    );
    assert!(summary.contains("change of log risk"));
    assert!(!summary.contains("Held-out plots: change of mean NLL"));
    assert!(f.path("mle/report/risk.png").exists());
    assert!(!f.path("mle/report/perplexity.png").exists());
}

#[test]
fn every_curation_filter_runs_on_an_ngram() {
    let f = Fixture::new();
    let cfg = r#"[model]
kind = "ngram"

[model.ngram]
order = 2
smoothing = { kind = "add-k", k = 0.1 }

[data]
source = "plots.csv.zst"
tokenizer = "train:300"
heldout_docs = 6

[generation]
max_new_tokens = 200
min_docs = 4

[schedule]
n = 12
rounds = 3
settings = ["synthetic-only", "fixed-alpha"]

[experiment]
repetitions = 1
seed = 11

"#;
    f.write("cur.toml", &format!("{cfg}{FILTERS}"));
    let rows = finished(&f, "cur.toml", "cur", &[]);
    assert_eq!(rows.len(), 2 * 7 * 3);
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(
            f.path("cur/fixed-alpha+self-entropy/rep-0/round-2/manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let c = &manifest["curation"];
    let decisions = c["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 15);
    assert_eq!(c["kept_synthetic"], 6);
    // The self filter scored every candidate with the n-gram's own mean entropy: positive nats, below the
    // uniform's ln 300.
    assert!(
        decisions.iter().all(|d| {
            let s = d["score"].as_f64().unwrap();
            s > 0.0 && s < 300f64.ln()
        }),
        "{decisions:?}"
    );
    let summary = report(&f, "cur");
    assert!(
        summary.contains("### Curation: what each filter did"),
        "{summary}"
    );
}

/// The order-1 model is the categorical MLE and its documents are runs of independent draws from it: its
/// risk follows the recurrence fed the realised token counts (`report`'s bridge, Holm over every chain and
/// round). Carried as text, a generated document is re-tokenised into other tokens than were drawn, and the
/// bridge must see it.
#[test]
fn the_unigram_risk_follows_the_recurrence_only_when_tokens_carry() {
    let f = Fixture::new();
    let uni = "order = 1\nsmoothing = { kind = \"none\" }";
    for (name, carry, departs) in [("tokens", "tokens", false), ("text", "text", true)] {
        f.write(
            &format!("{name}.toml"),
            &config(
                uni,
                &format!("max_new_tokens = 5000\ntruncated = \"open\"\ncarry = \"{carry}\""),
                4,
                20,
            ),
        );
        finished(&f, &format!("{name}.toml"), name, &[]);
        let summary = report(&f, name);
        let table: Vec<&str> = summary
            .split("### The order-1 bridge")
            .nth(1)
            .unwrap_or_else(|| panic!("no bridge in {summary}"))
            .split("\n### ")
            .next()
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| chain"))
            .collect();
        assert_eq!(table.len(), 5 * 3, "{table:?}");
        let departing = table.iter().filter(|l| l.ends_with("| departs |")).count();
        if departs {
            assert!(departing >= 10, "{carry}: {table:#?}");
        } else {
            assert_eq!(departing, 0, "{carry}: {table:#?}");
        }
        assert!(f.path(name).join("report/bridge.png").exists());
    }
}
