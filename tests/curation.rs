//! End-to-end tests of `[curation]` on the committed sample and a tiny model: no section changes nothing, a
//! `none` filter is the uncurated run, every filter meets the schedule's counts and records each decision,
//! the scores in the manifest are the models' own NLL and entropy, a killed curated run resumes bit for bit,
//! and impossible filters are refused before any training.

use std::path::Path;
use std::process::Stdio;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

mod common;
use common::{error_line, metrics, stderr, SampleDir as Fixture, FILTERS};

const BASE: &str = r#"[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 16

[training]
steps = 30
batch_size = 4
lr = { kind = "constant", lr = 3e-3 }
checkpoint_every = 10
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

[schedule]
n = 12
rounds = 3
settings = ["synthetic-only", "fixed-alpha"]

[experiment]
repetitions = 1
seed = 11
"#;

fn setting_is(row: &Value, base: &str) -> bool {
    row["setting"]
        .as_str()
        .is_some_and(|s| s.starts_with(&format!("{base}+")))
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Per-token NLL and mean next-token entropy of `<|endoftext|>` + `doc` + `<|endoftext|>`, computed here
/// from the model's logits alone (consecutive windows of block_size, as the run's evaluation does).
fn own_scores(model: &gpt::Gpt, doc: &[u32], eot: u32) -> (f64, f64) {
    let mut s = vec![eot];
    s.extend_from_slice(doc);
    s.push(eot);
    let t = model.config().block_size;
    let predicted = s.len() - 1;
    let (mut nll, mut ent) = (0.0, 0.0);
    for w in (0..predicted).step_by(t) {
        let len = t.min(predicted - w);
        let x = Tensor::from_vec(s[w..w + len].to_vec(), (1, len), &Device::Cpu).unwrap();
        let rows = model
            .forward(&x)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (i, row) in rows.iter().enumerate() {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let lse = m + row.iter().map(|&l| (l as f64 - m).exp()).sum::<f64>().ln();
            nll += lse - row[s[w + i + 1] as usize] as f64;
            ent -= row
                .iter()
                .map(|&l| (l as f64 - lse).exp() * (l as f64 - lse))
                .sum::<f64>();
        }
    }
    (nll / predicted as f64, ent / predicted as f64)
}

/// The documents a round generated, by id.
fn samples(path: &Path) -> std::collections::HashMap<String, String> {
    let bytes = zstd::decode_all(std::fs::File::open(path).unwrap()).unwrap();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Without `[curation]` nothing changes (the frozen config has no such section and rows have no curation
/// field); with only a `none` filter, every chain `SETTING+none` is the uncurated chain, value for value and
/// document for document.
#[test]
fn a_none_filter_is_the_uncurated_run() {
    let f = Fixture::new();
    f.write("plain.toml", BASE);
    f.write(
        "none.toml",
        &format!("{BASE}\n[curation]\n[[curation.filters]]\nname = \"none\"\nkind = \"none\"\n"),
    );
    for (cfg, out) in [("plain.toml", "p"), ("none.toml", "n")] {
        let o = f.run(&["run", cfg, "--out", out]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let frozen = std::fs::read_to_string(f.path("p/config.toml")).unwrap();
    assert!(!frozen.contains("curation"), "{frozen}");
    let plain = metrics(&f.path("p"));
    let none = metrics(&f.path("n"));
    assert_eq!(plain.len(), 6);
    assert_eq!(none.len(), 6);
    assert!(plain.iter().all(|r| r.get("curation").is_none()));
    for r in &none {
        let setting = r["setting"].as_str().unwrap();
        let base = setting.strip_suffix("+none").expect("named SETTING+none");
        let mut r = r.clone();
        let p = plain
            .iter()
            .find(|p| p["setting"] == base && p["round"] == r["round"])
            .unwrap();
        let o = r.as_object_mut().unwrap();
        let cur = o.remove("curation");
        assert_eq!(cur.is_some(), o["round"] != 0);
        o.insert("setting".into(), p["setting"].clone());
        o.insert("setting_number".into(), p["setting_number"].clone());
        assert_eq!(&r, p);
        let t = r["round"].as_u64().unwrap();
        if t > 0 {
            // The same documents (a synthetic one's origin names its chain's model path).
            let docs = |root: &str, s: &str| -> Vec<Value> {
                json(&f.path(&format!("{root}/{s}/rep-0/round-{t}/manifest.json")))["documents"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["id"].clone())
                    .collect()
            };
            assert_eq!(docs("n", setting), docs("p", base));
        }
    }
}

/// Every filter keeps exactly the schedule's counts and records each decision; the verifier's and the
/// generating model's scores in the manifest are those models' own NLL / entropy of the document; a killed
/// curated run, resumed by processes of another size, gives the same metrics bit for bit; the report has the
/// curation table and per-setting plots.
#[test]
fn curated_runs_meet_the_schedule_score_honestly_and_resume_exactly() {
    let f = Fixture::new();
    f.write("cur.toml", &format!("{BASE}{FILTERS}"));
    let o = f.run(&["run", "cur.toml", "--out", "a", "--jobs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = metrics(&f.path("a"));
    assert_eq!(rows.len(), 2 * 7 * 3);

    for r in &rows {
        let (t, n) = (
            r["round"].as_u64().unwrap(),
            r["new_docs"].as_u64().unwrap(),
        );
        assert_eq!(
            r["fresh_docs"].as_u64().unwrap() + r["synthetic_docs"].as_u64().unwrap(),
            n,
            "{r}"
        );
        if t == 0 {
            continue;
        }
        let c = &r["curation"];
        // The oracle filters the whole mix; the others rank synthetic candidates and keep the planned count.
        let planned_synthetic = if setting_is(r, "synthetic-only") {
            n
        } else {
            n / 2
        };
        if c["kind"] == "oracle" {
            assert_eq!(
                c["kept_real"].as_u64().unwrap() + c["kept_synthetic"].as_u64().unwrap(),
                n,
                "{r}"
            );
        } else {
            assert_eq!(
                c["kept_synthetic"].as_u64().unwrap(),
                planned_synthetic,
                "{r}"
            );
            assert_eq!(
                r["synthetic_docs"].as_u64().unwrap(),
                planned_synthetic,
                "{r}"
            );
        }
        let setting = r["setting"].as_str().unwrap();
        let m = json(&f.path(&format!("a/{setting}/rep-0/round-{t}/manifest.json")));
        let docs: Vec<&str> = m["documents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        let decisions = m["curation"]["decisions"].as_array().unwrap();
        let kept: Vec<&str> = decisions
            .iter()
            .filter(|d| d["kept"].as_bool().unwrap())
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        // Every kept candidate is in D_t, and every synthetic document of D_t was kept by the filter.
        assert!(kept.iter().all(|k| docs.contains(k)), "{setting} {t}");
        assert!(docs
            .iter()
            .filter(|d| d.starts_with("syn:"))
            .all(|d| kept.contains(d)));
        if c["kind"] == "longest" {
            // The length control keeps the longest candidates: no kept one is shorter than one left out.
            let len = |kept: bool| {
                decisions
                    .iter()
                    .filter(|d| d["kept"].as_bool().unwrap() == kept)
                    .map(|d| d["score"].as_f64().unwrap())
                    .collect::<Vec<_>>()
            };
            let shortest_kept = len(true).into_iter().fold(f64::INFINITY, f64::min);
            let longest_left = len(false).into_iter().fold(0.0, f64::max);
            assert!(
                shortest_kept >= longest_left,
                "{setting} {t}: {decisions:?}"
            );
        }
        let syn_candidates = decisions.iter().filter(|d| d["real"] == false).count();
        assert_eq!(
            syn_candidates as u64,
            c["candidates_synthetic"].as_u64().unwrap()
        );
    }

    // Scores of round 1's candidates (written by the shared round 0's model) against the models themselves.
    let tok =
        corpus::Tokenizer::from_json(&std::fs::read_to_string(f.path("a/tokenizer.json")).unwrap())
            .unwrap();
    let r0 = f.path("a/round-0/n-12/rep-0");
    let texts = samples(&r0.join("samples.jsonl.zst"));
    let generator =
        gpt::Gpt::load(&r0.join("model.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let verifier = gpt::Gpt::load(
        &f.path("a/verifier/verifier/rep-0/model.safetensors"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let mut checked = 0;
    for (chain, model, entropy) in [
        ("synthetic-only+self-nll", &generator, false),
        ("fixed-alpha+self-entropy", &generator, true),
        ("synthetic-only+verifier", &verifier, false),
    ] {
        let m = json(&f.path(&format!("a/{chain}/rep-0/round-1/manifest.json")));
        for d in m["curation"]["decisions"].as_array().unwrap() {
            let toks = tok.encode(&texts[d["id"].as_str().unwrap()]).unwrap();
            let (nll, ent) = own_scores(model, &toks, tok.eot());
            let want = if entropy { ent } else { nll };
            let got = d["score"].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-4 * want.abs().max(1.0),
                "{chain} {d}: {want}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 24 + 15 + 24);
    let v = json(&f.path("a/verifier/verifier/rep-0/eval.json"));
    assert!(v["perplexity"].as_f64().unwrap() > 1.0);

    // Killed twice at different moments, resumed by one and then two processes.
    for (limit_ms, jobs) in [(2500u64, "1"), (1500, "2")] {
        let mut child = f
            .cmd(&["run", "cur.toml", "--out", "b", "--jobs", jobs])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(limit_ms));
        // The workers die with their parent.
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let o = f.run(&["run", "cur.toml", "--out", "b"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metrics(&f.path("b")), rows);

    let o = f.run(&["report", "a"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(f.path("a/report/summary.md")).unwrap();
    assert!(md.contains("### Curation: what each filter did"), "{md}");
    assert!(md.contains("| fixed-alpha+oracle | 2 |"), "{md}");
    assert!(f.path("a/report/change-synthetic-only.png").exists());
    assert!(f.path("a/report/change-fixed-alpha.png").exists());
    let csv = std::fs::read_to_string(f.path("a/curation.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 7 * 2);
}

/// A filter that needs unbounded or too many candidates, or is malformed, is refused with one line before
/// any training.
#[test]
fn impossible_filters_are_refused_at_plan_time() {
    let f = Fixture::new();
    let cases = [
        (
            "[curation]\n[[curation.filters]]\nname = \"o\"\nkind = \"oracle\"\ne1 = 0.1\ne2 = 0.0\n",
            "keeps nothing at alpha = 0",
        ),
        (
            "[curation]\n[[curation.filters]]\nname = \"o\"\nkind = \"oracle\"\ne1 = 0.1\ne2 = 0.05\n",
            "12 documents need about 240 candidates and more than 120",
        ),
        (
            "[curation]\n[[curation.filters]]\nname = \"d\"\nkind = \"diversity\"\nfraction = 0.05\n",
            "needs 240 candidates for the 12 synthetic documents of round 1",
        ),
        (
            "[curation]\n[[curation.filters]]\nname = \"v\"\nkind = \"verifier\"\ndocs = 5\nfraction = 0.5\nthreshold = 4.0\n",
            "exactly one of fraction and threshold",
        ),
        (
            "[curation]\n[[curation.filters]]\nname = \"x\"\nkind = \"none\"\n[[curation.filters]]\nname = \"x\"\nkind = \"none\"\n",
            "\"x\" is taken",
        ),
        (
            "[curation]\n[[curation.filters]]\nname = \"s\"\nkind = \"self\"\nscore = \"nll\"\nkeep = \"bold\"\nfraction = 0.5\n",
            "bold",
        ),
        ("[curation]\n", "[curation] has no filter"),
    ];
    for (i, (section, want)) in cases.iter().enumerate() {
        let name = format!("bad{i}.toml");
        f.write(&name, &format!("{BASE}\n{section}"));
        let e = error_line(&f.run(&["run", &name, "--out", &format!("o{i}")]));
        assert!(e.contains(want), "{want:?} not in {e}");
        assert!(!f.path(&format!("o{i}/round-0")).exists());
    }
    // The pool must hold the verifier's documents and every round's candidates.
    f.write(
        "big.toml",
        &format!("{BASE}\n[curation]\n[[curation.filters]]\nname = \"v\"\nkind = \"verifier\"\ndocs = 280\nfraction = 0.5\n"),
    );
    let o = f.run(&["run", "big.toml", "--out", "big", "--jobs", "1"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("under curation needs") && stderr(&o).contains("pool has 294"),
        "{}",
        stderr(&o)
    );
}
