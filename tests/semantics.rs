//! End-to-end tests of what a round does to synthetic data and how long it trains: a document cut at the
//! cap becomes finished, open or redrawn as configured; with `carry = "tokens"` the next round trains on
//! exactly the ids the model drew; steps by passes are planned from D_t's tokens; fresh-only draws setting
//! 3's fresh documents; every row has the tails and length-robust statistics; the report computes the
//! config's endpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::{metrics, stderr, SampleDir as Fixture};

const BASE: &str = r#"[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 16

[training]
steps = 40
batch_size = 4
lr = { kind = "constant", lr = 3e-3 }
checkpoint_every = 100
log_every = 5
eval_batch_size = 8

[data]
source = "plots.csv.zst"
tokenizer = "train:300"
heldout_docs = 6

[generation]
max_new_tokens = 24
batch_size = 8
min_docs = 4
stats_words = 10

[schedule]
n = 12
rounds = 2
settings = ["synthetic-only"]

[experiment]
repetitions = 1
seed = 5
"#;

/// Writes `BASE` with lines replaced and `extra` added as `NAME.toml`, and runs it to the end in `NAME`.
fn run_config(f: &Fixture, name: &str, edits: &[(&str, &str)], extra: &str) -> PathBuf {
    let mut cfg = BASE.to_string();
    for (old, new) in edits {
        assert!(cfg.contains(old), "{old}");
        cfg = cfg.replace(old, new);
    }
    cfg.push_str(extra);
    f.write(&format!("{name}.toml"), &cfg);
    let o = f.run(&["run", &format!("{name}.toml"), "--out", name]);
    assert!(o.status.success(), "{}", stderr(&o));
    f.path(name)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A round's samples file: every line after the meta line.
fn samples(path: &Path) -> Vec<Value> {
    let bytes = zstd::decode_all(std::fs::File::open(path).unwrap()).unwrap();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn eot(run: &Path) -> u32 {
    let tok =
        corpus::Tokenizer::from_json(&std::fs::read_to_string(run.join("tokenizer.json")).unwrap())
            .unwrap();
    tok.eot()
}

fn sha256(stream: &[u32]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for t in stream {
        h.update(t.to_le_bytes());
    }
    format!("{:x}", h.finalize())
}

fn tokens(v: &Value) -> Vec<u32> {
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// The stream round 1 of synthetic-only must have trained on, rebuilt from its manifest and the token ids
/// round 0's model drew: each document followed by end-of-text unless `open` and the document was cut.
fn expected_round1_stream(run: &Path, open: bool) -> (Vec<u32>, usize) {
    let drawn: HashMap<String, Value> = samples(&run.join("round-0/n-12/rep-0/samples.jsonl.zst"))
        .into_iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s))
        .collect();
    let m = json(&run.join("synthetic-only/rep-0/round-1/manifest.json"));
    let eot = eot(run);
    let mut stream = Vec::new();
    let mut cut = 0;
    for d in m["documents"].as_array().unwrap() {
        let s = &drawn[d["id"].as_str().unwrap()];
        assert_eq!(s["dropped"], Value::Null, "a dropped draw is never used");
        stream.extend(tokens(s));
        let truncated = s["truncated"].as_bool().unwrap();
        cut += usize::from(truncated);
        if !(open && truncated) {
            stream.push(eot);
        }
    }
    (stream, cut)
}

/// With `carry = "tokens"` round 1 trains on exactly the ids round 0's model drew (the SHA-256 of its stream
/// is that of the rebuilt one); a cut document is followed by end-of-text when `finished` and not when
/// `open`; under `redraw` cut draws are recorded, counted and never used, and the kept ones all ended.
#[test]
fn a_cut_document_is_finished_open_or_redrawn_and_tokens_carry_bit_exactly() {
    let f = Fixture::new();
    let tok = [(
        "max_new_tokens = 24\n",
        "max_new_tokens = 24\ncarry = \"tokens\"\n",
    )];
    let finished = run_config(&f, "finished", &tok, "");
    let (stream, cut) = expected_round1_stream(&finished, false);
    assert!(
        cut > 0,
        "a 24-token cap cuts some of the tiny model's documents"
    );
    let rec = json(&finished.join("synthetic-only/rep-0/round-1/train.json"));
    assert_eq!(rec["stream_sha256"], sha256(&stream));
    let rows = metrics(&finished);
    assert_eq!(rows[1]["train_tokens"], stream.len());
    assert_eq!(rows[0]["gen_truncation"], "finished");
    assert_eq!(rows[0]["gen_carry"], "tokens");
    assert_eq!(rows[0]["gen_max_new_tokens"], 24);

    let open = run_config(
        &f,
        "open",
        &[(
            "max_new_tokens = 24\n",
            "max_new_tokens = 24\ncarry = \"tokens\"\ntruncated = \"open\"\n",
        )],
        "",
    );
    let (stream, cut_open) = expected_round1_stream(&open, true);
    assert_eq!(cut_open, cut, "round 0 is the same model and draws");
    let rec = json(&open.join("synthetic-only/rep-0/round-1/train.json"));
    assert_eq!(rec["stream_sha256"], sha256(&stream));
    assert_eq!(
        metrics(&open)[1]["train_tokens"].as_u64().unwrap() as usize,
        rows[1]["train_tokens"].as_u64().unwrap() as usize - cut,
        "one end-of-text fewer per cut document"
    );

    let redraw = run_config(
        &f,
        "redraw",
        &[(
            "max_new_tokens = 24\n",
            "max_new_tokens = 24\ncarry = \"tokens\"\ntruncated = \"redraw\"\nmax_draws = 50\n",
        )],
        "",
    );
    let all = samples(&redraw.join("round-0/n-12/rep-0/samples.jsonl.zst"));
    let dropped = all.iter().filter(|s| s["dropped"] == true).count();
    let kept: Vec<&Value> = all.iter().filter(|s| s["dropped"] != true).collect();
    assert!(dropped > 0);
    assert_eq!(kept.len(), 12, "round 0 writes what round 1 needs");
    assert!(kept.iter().all(|s| s["truncated"] == false));
    assert!(all
        .iter()
        .filter(|s| s["dropped"] == true)
        .all(|s| s["truncated"] == true && tokens(s).len() == 24));
    let (stream, cut) = expected_round1_stream(&redraw, false);
    assert_eq!(cut, 0);
    let rec = json(&redraw.join("synthetic-only/rep-0/round-1/train.json"));
    assert_eq!(rec["stream_sha256"], sha256(&stream));
    let r0 = &metrics(&redraw)[0];
    assert_eq!(r0["gen_drawn"], all.len());
    assert_eq!(r0["gen_truncated"], dropped);
    assert_eq!(r0["generated_docs"], 12);
    // Draw i is the same sequence in both runs (its own RNG stream, whatever the batch), so redraw drops
    // exactly the draws that were cut and keeps the others in order.
    let fin: HashMap<String, Vec<u32>> =
        samples(&finished.join("round-0/n-12/rep-0/samples.jsonl.zst"))
            .iter()
            .map(|s| (s["id"].as_str().unwrap().to_string(), tokens(s)))
            .collect();
    let shared: Vec<&Value> = all
        .iter()
        .filter(|s| fin.contains_key(s["id"].as_str().unwrap()))
        .collect();
    assert_eq!(shared.len(), 12);
    for s in shared {
        assert_eq!(tokens(s), fin[s["id"].as_str().unwrap()]);
    }

    // Too few documents end within max_draws: one clear line.
    let mut cfg = BASE.replace(
        "max_new_tokens = 24\n",
        "max_new_tokens = 1\ntruncated = \"redraw\"\nmax_draws = 2\n",
    );
    cfg.push('\n');
    f.write("never.toml", &cfg);
    let e = common::error_line(&f.run(&["run", "never.toml", "--out", "never"]));
    assert!(e.contains("ended before max_new_tokens = 1"), "{e}");
}

/// Steps by passes are planned from each round's token count (rounds of different sizes train different
/// steps); the held-out curve is recorded during training; fresh-only trains round t on exactly setting 3's
/// fresh documents; every row has the tails and length-robust statistics; the report computes the config's
/// recovery and contrast endpoints and draws the tails and the held-out curves.
#[test]
fn passes_fresh_only_tails_and_endpoints() {
    let f = Fixture::new();
    let extra = r#"
[[schedule.custom]]
name = "real-2n"
size = { kind = "list", sizes = [12, 24, 24] }
alpha = { kind = "list", values = [1.0, 1.0, 1.0] }

[[report.recovery]]
name = "f"
round = 1
base = "fresh-only"
mixed = "decaying-alpha"
doubled = "real-2n"

[[report.contrast]]
name = "s3-vs-fresh"
a = "decaying-alpha"
b = "fresh-only"
rounds = [1, 2]
"#;
    let run = run_config(
        &f,
        "p",
        &[
            (
                "steps = 40\n",
                "steps = { passes = 0.5, min = 5, max = 1000 }\neval_every = 10\n",
            ),
            ("rounds = 2\n", "rounds = 3\n"),
            (
                "settings = [\"synthetic-only\"]",
                "settings = [\"decaying-alpha\", \"fresh-only\"]",
            ),
            ("repetitions = 1\n", "repetitions = 2\n"),
            (
                "max_new_tokens = 24\n",
                "max_new_tokens = 24\ncarry = \"tokens\"\n",
            ),
        ],
        extra,
    );
    let rows = metrics(&run);
    assert_eq!(rows.len(), 3 * 2 * 3);
    let mut steps = std::collections::BTreeSet::new();
    for r in &rows {
        let tokens = r["train_tokens"].as_u64().unwrap() as f64;
        let want = ((0.5 * tokens / (4.0 * 16.0)).ceil() as u64).clamp(5, 1000);
        assert_eq!(r["train_steps"].as_u64().unwrap(), want, "{r}");
        steps.insert(want);
        let passes = r["train_passes"].as_f64().unwrap();
        assert!((passes - want as f64 * 64.0 / tokens).abs() < 1e-9);
        assert!(r["heldout_best_step"].as_u64().unwrap() <= want);
        for q in [
            "heldout_doc_ppl_q05",
            "heldout_doc_ppl_q50",
            "heldout_doc_ppl_q95",
            "gen_round0_ppl_q50",
        ] {
            assert!(r[q].as_f64().unwrap() > 1.0, "{q}: {r}");
        }
        assert!(r["heldout_doc_ppl_q05"].as_f64() <= r["heldout_doc_ppl_q95"].as_f64());
        assert!(r["gen_mtld"].as_f64().unwrap() > 0.0);
        assert_eq!(r["stats_words"], 10);
        assert!(r["gen_distinct_1_words"].as_f64().is_some(), "{r}");
    }
    assert!(steps.len() >= 3, "D_t of different sizes: {steps:?}");
    // The curve: step 0, every 10 steps, and the last.
    let rec = json(&run.join("decaying-alpha/rep-1/round-2/train.json"));
    let curve: Vec<u64> = rec["heldout"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect();
    let last = rec["steps"].as_u64().unwrap();
    assert_eq!(curve[0], 0);
    assert_eq!(*curve.last().unwrap(), last);
    assert!(curve.windows(2).all(|w| w[1] - w[0] <= 10));

    let real_ids = |chain: &str, rep: usize, t: usize| -> Vec<String> {
        json(&run.join(format!("{chain}/rep-{rep}/round-{t}/manifest.json")))["documents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .filter(|id| id.starts_with("real:"))
            .collect()
    };
    for rep in 0..2 {
        for t in 1..3 {
            let s3 = real_ids("decaying-alpha", rep, t);
            assert_eq!(s3.len(), 12);
            assert_eq!(real_ids("fresh-only", rep, t), s3, "rep {rep} round {t}");
        }
        assert_eq!(
            real_ids("real-2n", rep, 1)[..12],
            real_ids("fresh-only", rep, 1)[..]
        );
    }

    let o = f.run(&["report", "p"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(run.join("report/summary.md")).unwrap();
    assert!(
        md.contains("### Endpoint f (held-out mean NLL): the share of the doubling gain"),
        "{md}"
    );
    assert!(md.contains("| f | 2 |"), "{md}");
    assert!(
        md.contains(
            "### Endpoint s3-vs-fresh (held-out mean NLL): decaying-alpha - fresh-only by round"
        ),
        "{md}"
    );
    assert!(
        md.contains("Family: the 2 rounds of this contrast (Holm)."),
        "{md}"
    );
    assert!(md.contains("### The tails"), "{md}");
    for plot in [
        "tails.png",
        "heldout-training.png",
        "perplexity.png",
        "change.png",
    ] {
        assert!(run.join("report").join(plot).exists(), "{plot}");
    }
}
