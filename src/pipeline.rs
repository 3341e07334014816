//! The experiment runner: for each repetition, setting and round, compose D_t, train model_t from scratch,
//! evaluate it, generate the next round's synthetic documents, and record metrics. Every phase ends with an
//! atomic write, so `run` on an existing directory continues from the last completed phase, and every random
//! draw is keyed by (seed, repetition, round), so the result does not depend on where a run was interrupted.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use corpus::{
    bpe_training_docs, compose, compose_selected, token_stream, Document, Manifest, Origin, Plan,
    RealCorpus, Source, Split, TokenCache, Tokenizer, TokenizerSpec,
};
use gpt::{Gpt, GptConfig};
use serde::{Deserialize, Serialize};
use train::{perplexity, AdamW, Batcher, Evaluation, TextStats, TrainConfig, Trainer};

use crate::config::{Config, FilterSpec, SettingSpec, EOT_PROMPT};
use crate::curation::{self, CurationMetrics, RoundCandidates};
use crate::progress::Progress;
use crate::rundir::{
    chain_busy, frozen_config, read_json, read_verified, round_dir, write_atomic, write_json,
    write_verified, RunDir,
};
use crate::tools::load_model_on;

/// One row of `metrics.jsonl`: a (setting, repetition, round).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub setting: String,
    pub setting_number: usize,
    pub repetition: usize,
    pub round: usize,
    pub new_docs: usize,
    pub fresh_docs: usize,
    pub synthetic_docs: usize,
    pub total_docs: usize,
    pub alpha: f64,
    pub realized_alpha: f64,
    pub real_fraction: f64,
    pub train_tokens: usize,
    pub train_steps: u64,
    pub final_train_loss: f64,
    pub heldout_perplexity: f64,
    pub heldout_tokens: usize,
    pub second_perplexity: Option<f64>,
    pub generated_docs: usize,
    /// The text statistics below are of the round's first `stats_docs` generated documents, the same number
    /// in every round and setting (0 in rows written before that rule: `report` recomputes them).
    #[serde(default)]
    pub stats_docs: usize,
    pub gen_mean_words: f64,
    pub gen_distinct_1: f64,
    pub gen_distinct_2: f64,
    pub gen_unigram_entropy: f64,
    /// Of all generated documents: empty (an immediate `<|endoftext|>`), cut at `max_new_tokens`, and
    /// holding U+FFFD after decoding (a token sequence that is not valid UTF-8).
    #[serde(default)]
    pub gen_empty: usize,
    #[serde(default)]
    pub gen_truncated: usize,
    #[serde(default)]
    pub gen_replacement_char: usize,
    pub wall_compose_s: f64,
    pub wall_train_s: f64,
    pub wall_eval_s: f64,
    pub wall_generate_s: f64,
    /// What the round's filter did, in curated runs (rounds 1 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curation: Option<CurationMetrics>,
}

/// Training in progress, saved in each checkpoint directory beside its model and optimizer: the step and
/// the loss log so far.
#[derive(Debug, Serialize, Deserialize)]
struct TrainState {
    step: u64,
    losses: Vec<(u64, f64)>,
    wall_s: f64,
}

/// The newest complete training checkpoint of a round (`ckpt-STEP`; a `.partial` one was never finished).
fn latest_checkpoint(rd: &Path) -> Option<(PathBuf, u64)> {
    std::fs::read_dir(rd)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("ckpt-")?.parse::<u64>().ok()?;
            Some((e.path(), step))
        })
        .max_by_key(|(_, step)| *step)
}

/// A finished training phase.
#[derive(Debug, Serialize, Deserialize)]
struct TrainRecord {
    steps: u64,
    train_tokens: usize,
    final_loss: f64,
    losses: Vec<(u64, f64)>,
    wall_s: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct EvalRecord {
    heldout: Evaluation,
    second: Option<Evaluation>,
    wall_s: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Sample {
    id: String,
    origin: Origin,
    text: String,
    new_tokens: usize,
}

/// A seed for one purpose of one (repetition, round), independent of the settings around it.
pub fn derive_seed(base: u64, parts: &[&dyn std::fmt::Display]) -> u64 {
    let mut h = base ^ 0x9e37_79b9_7f4a_7c15;
    for p in parts {
        for b in p.to_string().bytes().chain([0xff]) {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= h >> 31;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 29;
    }
    h
}

/// Everything a round needs that does not change between rounds.
struct Ctx {
    cfg: Config,
    device: Device,
    tok: Tokenizer,
    docs: Vec<Document>,
    doc_tokens: Vec<Vec<u32>>,
    by_id: HashMap<String, usize>,
    splits: Vec<Split>,
    heldout: Vec<Vec<u32>>,
    second: Option<Vec<u32>>,
    /// Each setting's plan, by name.
    plans: HashMap<String, Plan>,
    /// Each curated chain's candidates per round, by setting name.
    candidates: HashMap<String, Vec<RoundCandidates>>,
}

pub struct Selection {
    pub settings: Vec<SettingSpec>,
    pub reps: Vec<usize>,
}

/// `SETTING` or `SETTING/REP`.
pub fn parse_only(only: Option<&str>, cfg: &Config) -> Result<Selection> {
    let all_reps: Vec<usize> = (0..cfg.experiment.repetitions).collect();
    let Some(only) = only else {
        return Ok(Selection {
            settings: cfg.settings()?,
            reps: all_reps,
        });
    };
    let (s, rep) = match only.split_once('/') {
        Some((s, r)) => (
            s,
            Some(
                r.parse::<usize>()
                    .with_context(|| format!("--only {only}: bad repetition {r:?}"))?,
            ),
        ),
        None => (only, None),
    };
    let setting = cfg.setting(s).with_context(|| format!("--only {only}"))?;
    let reps = match rep {
        Some(r) if r >= cfg.experiment.repetitions => bail!(
            "--only {only}: the config has {} repetitions (0-{})",
            cfg.experiment.repetitions,
            cfg.experiment.repetitions - 1
        ),
        Some(r) => vec![r],
        None => all_reps,
    };
    Ok(Selection {
        settings: vec![setting],
        reps,
    })
}

/// The chains of a selection in the order workers take them: setting by setting, so whole settings finish
/// early and a partial report compares complete curves.
pub fn chains(sel: &Selection) -> Vec<(SettingSpec, usize)> {
    sel.settings
        .iter()
        .flat_map(|s| sel.reps.iter().map(move |&r| (s.clone(), r)))
        .collect()
}

pub fn run(cfg: Config, out: &Path, device: Device, sel: Selection) -> Result<()> {
    let dir = RunDir::open(out, &cfg)?;
    let ctx = prepare(cfg, &dir, device)?;
    let rounds = ctx.cfg.schedule.rounds;
    let chains = chains(&sel);
    let done = chains
        .iter()
        .flat_map(|(s, rep)| (0..rounds).map(move |t| (s, *rep, t)))
        .filter(|(s, rep, t)| {
            dir.round_dir(&s.name, *rep, *t)
                .join("metrics.json")
                .exists()
        })
        .count();
    let mut progress = Progress::new((chains.len() * rounds) as u64, done as u64);
    let mut busy = Vec::new();
    for (setting, rep) in &chains {
        let rep = *rep;
        let finished = |t: usize| {
            dir.round_dir(&setting.name, rep, t)
                .join("metrics.json")
                .exists()
        };
        if (0..rounds).all(finished) {
            continue;
        }
        let Some(_chain) = dir.try_lock_chain(&setting.name, rep)? else {
            progress.note(&format!(
                "chain {setting}/{rep} is busy in another process: leaving it to that one"
            ));
            busy.push(format!("{setting}/{rep}"));
            continue;
        };
        let mut samples = SampleStore::default();
        for t in 0..rounds {
            if finished(t) {
                continue;
            }
            progress.start_round(format!("{setting} rep {rep} round {t}"));
            run_round(&ctx, &dir, &progress, &mut samples, setting, rep, t)?;
            rebuild_metrics(&dir)?;
            progress.finish_round();
        }
    }
    progress.finish();
    rebuild_metrics(&dir)?;
    if busy.is_empty() {
        eprintln!(
            "[collapse-lab] run complete: {} (see `collapse-lab report {}`)",
            dir.root.join("metrics.jsonl").display(),
            dir.root.display()
        );
    } else {
        eprintln!(
            "[collapse-lab] done here; {} chain(s) were busy in other processes ({}): `collapse-lab status {}` shows them",
            busy.len(),
            busy.join(", "),
            dir.root.display()
        );
    }
    Ok(())
}

fn prepare(cfg: Config, dir: &RunDir, device: Device) -> Result<Ctx> {
    let source = Source::new(&cfg.data.source, Some(&cfg.data.column));
    eprintln!("[collapse-lab] loading {}", cfg.data.source);
    let real = RealCorpus::load(&source, &cfg.data.clean)?;
    let n = real.docs.len();
    let splits: Vec<Split> = (0..cfg.experiment.repetitions)
        .map(|r| {
            Split::new(
                n,
                cfg.data.heldout_docs,
                derive_seed(cfg.experiment.seed, &[&"split", &r]),
            )
        })
        .collect::<corpus::Result<_>>()?;
    let tok_path = dir.root.join("tokenizer.json");
    // The tokenizer is trained once, whichever process gets here first.
    let _shared = dir.lock_shared_files()?;
    let tok = if tok_path.exists() {
        let json = read_verified(&tok_path, "delete it to rebuild the tokenizer")?;
        Tokenizer::from_json(&String::from_utf8_lossy(&json))
            .with_context(|| format!("{} is unreadable", tok_path.display()))?
    } else {
        let tok = match TokenizerSpec::parse(&cfg.data.tokenizer)? {
            TokenizerSpec::Train { vocab_size } => {
                eprintln!("[collapse-lab] training a byte-level BPE of {vocab_size} tokens on documents held out by no repetition");
                let mut idx = bpe_training_docs(n, &splits);
                if cfg.data.tokenizer_training_docs > 0 {
                    idx.truncate(cfg.data.tokenizer_training_docs);
                }
                Tokenizer::train_bpe(idx.iter().map(|&i| real.docs[i].text.as_str()), vocab_size)?
            }
            spec => Tokenizer::load(&spec)?,
        };
        write_verified(&tok_path, tok.to_json()?.as_bytes())?;
        tok
    };
    drop(_shared);
    eprintln!(
        "[collapse-lab] tokenising {n} documents ({} removed by cleaning)",
        real.report.input - n
    );
    let cache = TokenCache::new(TokenCache::default_dir());
    let (doc_tokens, _) = real.tokenize(&tok, Some(&cache))?;
    let eot = tok.eot();
    let heldout = splits
        .iter()
        .map(|s| token_stream(s.heldout.iter().map(|&i| doc_tokens[i].as_slice()), eot))
        .collect();
    let second = match &cfg.data.second_eval {
        Some(spec) => {
            let src = Source::new(spec, Some(&cfg.data.second_eval_column));
            let c = RealCorpus::load(&src, &cfg.data.clean).context("the second evaluation set")?;
            let (toks, _) = c.tokenize(&tok, Some(&cache))?;
            Some(token_stream(
                toks.iter()
                    .take(cfg.data.second_eval_docs)
                    .map(Vec::as_slice),
                eot,
            ))
        }
        None => None,
    };
    if let Some(init) = &cfg.model.init_from {
        initial_model(&cfg, &device, tok.vocab_size(), init)?;
    }
    let pool_len = n - cfg.data.heldout_docs;
    let mut plans = HashMap::new();
    for s in cfg.settings()? {
        let plan = s
            .schedule
            .plan(cfg.schedule.rounds, pool_len)
            .with_context(|| format!("setting {s} cannot run on {pool_len} pool documents"))?;
        plans.insert(s.name, plan);
    }
    let candidates = curation::plan_pool(&cfg, &mut plans, pool_len)?;
    let by_id = real
        .docs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.clone(), i))
        .collect();
    Ok(Ctx {
        cfg,
        device,
        tok,
        docs: real.docs,
        doc_tokens,
        by_id,
        splits,
        heldout,
        second,
        plans,
        candidates,
    })
}

impl Ctx {
    /// n_0 of a setting: the settings of a repetition whose round 0 has the same size share it.
    fn n0(&self, setting: &str) -> usize {
        self.plans[setting].rounds[0].new_docs
    }

    fn to_generate_after(&self, setting: &str, t: usize) -> usize {
        to_generate_after(
            &self.plans[setting],
            self.candidates.get(setting).map(Vec::as_slice),
            t,
        )
    }
}

/// Documents the model of round `t` must write for the chain's round `t + 1`: its synthetic documents, or
/// under curation its synthetic candidates.
fn to_generate_after(plan: &Plan, candidates: Option<&[RoundCandidates]>, t: usize) -> usize {
    match candidates {
        Some(c) => c.get(t + 1).map_or(0, |r| r.synthetic),
        None => plan.to_generate_after(t),
    }
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

/// A round's generated documents, in order, and their tokens by id.
type RoundSamples = (Vec<Document>, HashMap<String, Vec<u32>>);

/// Synthetic documents of earlier rounds of one (setting, repetition), read once and kept with their tokens.
#[derive(Default)]
struct SampleStore {
    rounds: HashMap<usize, RoundSamples>,
}

impl SampleStore {
    fn get(
        &mut self,
        ctx: &Ctx,
        root: &Path,
        setting: &str,
        rep: usize,
        round: usize,
    ) -> Result<&RoundSamples> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.rounds.entry(round) {
            let docs = read_samples(
                &phase_dir(root, setting, ctx.n0(setting), rep, round).join("samples.jsonl.zst"),
            )?;
            let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
            let toks = ctx.tok.encode_all(&texts)?;
            let map = docs.iter().map(|d| d.id.clone()).zip(toks).collect();
            slot.insert((docs, map));
        }
        Ok(&self.rounds[&round])
    }
}

fn run_round(
    ctx: &Ctx,
    dir: &RunDir,
    progress: &Progress,
    samples: &mut SampleStore,
    setting: &SettingSpec,
    rep: usize,
    t: usize,
) -> Result<()> {
    let cfg = &ctx.cfg;
    // Phases 1-4 write to `pd`: for round 0 the repetition's shared directory, computed by whichever chain
    // gets there first while the others wait; the round's metrics (phase 5) go to the chain's own `rd`.
    let rd = dir.round_dir(&setting.name, rep, t);
    let n0 = ctx.n0(&setting.name);
    let pd = phase_dir(&dir.root, &setting.name, n0, rep, t);
    for d in [&rd, &pd] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let shared = (pd != rd).then(|| dir.lock_round0(&pd)).transpose()?;
    let plan = &ctx.plans[&setting.name];
    let schedule = &setting.schedule;

    // Phase 1: compose D_t.
    let started = Instant::now();
    let manifest_path = pd.join("manifest.json");
    let manifest = if manifest_path.exists() {
        read_json::<Manifest>(&manifest_path)?
    } else {
        progress.phase("compose", 1);
        let previous = if schedule.accumulate && t > 0 {
            Some(read_json::<Manifest>(
                &phase_dir(&dir.root, &setting.name, n0, rep, t - 1).join("manifest.json"),
            )?)
        } else {
            None
        };
        let pool: Vec<&Document> = ctx.splits[rep].pool.iter().map(|&i| &ctx.docs[i]).collect();
        let m = match (&setting.curation, t) {
            (Some(filter), 1..) => curated_compose(
                ctx,
                dir,
                progress,
                samples,
                setting,
                filter,
                rep,
                t,
                &pool,
                previous.as_ref(),
            )?,
            _ => {
                let synthetic: Vec<Document> = if plan.rounds[t].synthetic > 0 {
                    let (docs, _) = samples.get(ctx, &dir.root, &setting.name, rep, t - 1)?;
                    docs[..plan.rounds[t].synthetic].to_vec()
                } else {
                    Vec::new()
                };
                compose(
                    plan,
                    t,
                    rep,
                    schedule.accumulate,
                    &pool,
                    previous.as_ref(),
                    &synthetic,
                )?
            }
        };
        write_json(&manifest_path, &m)?;
        m
    };
    let wall_compose = started.elapsed().as_secs_f64();

    // Phase 2: train model_t from scratch (or from its last checkpoint).
    let model_path = pd.join("model.safetensors");
    let (model, train_rec) = if model_path.exists() {
        let model = load_model_on(&model_path, &ctx.device, "delete it to retrain this round")?;
        if model.config() != &cfg.gpt(ctx.tok.vocab_size()) {
            bail!(
                "{} holds a model of another config: delete it to retrain this round",
                model_path.display()
            );
        }
        (model, read_json::<TrainRecord>(&pd.join("train.json"))?)
    } else {
        let stream = round_stream(
            ctx,
            &dir.root,
            samples,
            &setting.name,
            rep,
            &manifest,
            &manifest_path,
        )?;
        train_phase(ctx, &pd, progress, &stream, &round_job(ctx, rep, t))?
    };

    // Phase 3: evaluate.
    let eval_path = pd.join("eval.json");
    let eval: EvalRecord = if eval_path.exists() {
        read_json(&eval_path)?
    } else {
        progress.phase("eval", 1);
        let started = Instant::now();
        let bs = cfg.training.eval_batch_size;
        let heldout = perplexity(&model, &ctx.heldout[rep], bs)?;
        let second = ctx
            .second
            .as_ref()
            .map(|s| perplexity(&model, s, bs))
            .transpose()?;
        let rec = EvalRecord {
            heldout,
            second,
            wall_s: started.elapsed().as_secs_f64(),
        };
        write_json(&eval_path, &rec)?;
        progress.note(&format!("held-out perplexity {:.3}", heldout.perplexity));
        rec
    };

    // Phase 4: generate the next round's synthetic documents (and at least `min_docs` for statistics).
    let samples_path = pd.join("samples.jsonl.zst");
    let started = Instant::now();
    let own_count = ctx
        .to_generate_after(&setting.name, t)
        .max(cfg.generation.min_docs);
    if !samples_path.exists() {
        // A shared round 0 writes what every setting sharing it needs; each takes the first it needs.
        let count = if pd == rd {
            own_count
        } else {
            ctx.plans
                .iter()
                .filter(|(_, p)| p.rounds[0].new_docs == n0)
                .map(|(name, _)| ctx.to_generate_after(name, 0))
                .fold(own_count, usize::max)
        };
        generate_phase(
            ctx,
            progress,
            &model,
            &samples_path,
            &dir.root,
            &pd,
            count,
            rep,
            t,
        )?;
    }
    drop(shared);
    let (wall_meta, mut generated) = read_samples_file(&samples_path)?;
    generated.truncate(own_count);
    let wall_generate = wall_meta.unwrap_or(started.elapsed().as_secs_f64());
    let gen = GenerationStats::of(
        &generated,
        cfg.generation.min_docs,
        cfg.generation.max_new_tokens,
    );
    let stats = gen.text;

    // Phase 5: the round's metrics.
    let rp = &manifest.plan;
    let row = MetricsRow {
        setting: setting.name.clone(),
        setting_number: setting.number,
        repetition: rep,
        round: t,
        new_docs: rp.new_docs,
        fresh_docs: manifest.fresh,
        synthetic_docs: manifest.synthetic,
        total_docs: manifest.documents.len(),
        alpha: rp.alpha,
        realized_alpha: manifest.fresh as f64 / rp.new_docs as f64,
        real_fraction: manifest.real_fraction(),
        train_tokens: train_rec.train_tokens,
        train_steps: train_rec.steps,
        final_train_loss: train_rec.final_loss,
        heldout_perplexity: eval.heldout.perplexity,
        heldout_tokens: eval.heldout.tokens,
        second_perplexity: eval.second.map(|e| e.perplexity),
        generated_docs: generated.len(),
        stats_docs: stats.documents,
        gen_mean_words: stats.mean_words,
        gen_distinct_1: stats.distinct_1,
        gen_distinct_2: stats.distinct_2,
        gen_unigram_entropy: stats.unigram_entropy,
        gen_empty: gen.empty,
        gen_truncated: gen.truncated,
        gen_replacement_char: gen.replacement_char,
        wall_compose_s: wall_compose,
        wall_train_s: train_rec.wall_s,
        wall_eval_s: eval.wall_s,
        wall_generate_s: wall_generate,
        curation: match (&manifest.curation, &setting.curation) {
            (Some(r), Some(f)) => Some(CurationMetrics {
                counts: r.counts.clone(),
                // Written when the verifier was trained, before this round's manifest.
                verifier_perplexity: match f {
                    FilterSpec::Verifier { .. } => Some(
                        read_json::<Evaluation>(
                            &curation::verifier_dir(&dir.root, f.name(), rep).join("eval.json"),
                        )?
                        .perplexity,
                    ),
                    _ => None,
                },
            }),
            _ => None,
        },
    };
    write_json(&rd.join("metrics.json"), &row)
}

/// Round `t` (t >= 1) of a curated chain: draw the planned candidates, score them as the filter needs,
/// keep what it keeps, and compose D_t with every decision in the manifest.
#[allow(clippy::too_many_arguments)]
fn curated_compose(
    ctx: &Ctx,
    dir: &RunDir,
    progress: &Progress,
    samples: &mut SampleStore,
    setting: &SettingSpec,
    filter: &FilterSpec,
    rep: usize,
    t: usize,
    pool: &[&Document],
    previous: Option<&Manifest>,
) -> Result<Manifest> {
    let plan = &ctx.plans[&setting.name];
    let rp = &plan.rounds[t];
    let cand = ctx.candidates[&setting.name][t];
    let end = cand.real_offset + cand.real;
    if end > pool.len() {
        bail!(
            "round {t} needs pool documents up to {end}, the pool has {}",
            pool.len()
        );
    }
    let real = &pool[cand.real_offset..end];
    // The model a scoring filter ranks by: the verifier, or the model that wrote the candidates.
    let scorer = match filter {
        FilterSpec::Verifier { .. } => Some(verifier(ctx, dir, progress, filter, rep)?),
        FilterSpec::SelfScore { .. } => {
            let n0 = ctx.n0(&setting.name);
            let path =
                phase_dir(&dir.root, &setting.name, n0, rep, t - 1).join("model.safetensors");
            Some(load_model_on(
                &path,
                &ctx.device,
                "delete it to retrain that round",
            )?)
        }
        _ => None,
    };
    let synthetic: Vec<(&Document, &[u32])> = if cand.synthetic == 0 {
        Vec::new()
    } else {
        let (docs, toks) = samples.get(ctx, &dir.root, &setting.name, rep, t - 1)?;
        if docs.len() < cand.synthetic {
            bail!(
                "round {t} needs {} synthetic candidates, round {} wrote {}",
                cand.synthetic,
                t - 1,
                docs.len()
            );
        }
        docs[..cand.synthetic]
            .iter()
            .map(|d| (d, toks[&d.id].as_slice()))
            .collect()
    };
    if cand.synthetic > 0 {
        progress.note(&format!(
            "curation {}: {} real and {} synthetic candidates",
            filter.name(),
            real.len(),
            synthetic.len()
        ));
    }
    let seed = derive_seed(ctx.cfg.experiment.seed, &[&"curation", &rep, &t]);
    let (fresh, kept, record) = curation::select(
        filter,
        &cand,
        rp,
        real,
        &synthetic,
        scorer.as_ref().map(|m| (m, ctx.tok.eot())),
        seed,
    )?;
    let kept: Vec<Document> = kept.into_iter().cloned().collect();
    Ok(compose_selected(
        plan,
        t,
        rep,
        setting.schedule.accumulate,
        &fresh,
        previous,
        &kept,
        Some(record),
    )?)
}

/// The verifier of a filter for one repetition, trained on the head of the repetition's pool (documents no
/// chain draws), its held-out perplexity written beside it in `eval.json`. Shared by every chain of the
/// repetition under that filter: the first computes it while the others wait.
fn verifier(
    ctx: &Ctx,
    dir: &RunDir,
    progress: &Progress,
    filter: &FilterSpec,
    rep: usize,
) -> Result<Gpt> {
    let FilterSpec::Verifier { docs, steps, .. } = filter else {
        bail!("filter {} is not a verifier", filter.name());
    };
    let vd = curation::verifier_dir(&dir.root, filter.name(), rep);
    std::fs::create_dir_all(&vd).with_context(|| format!("cannot create {}", vd.display()))?;
    let _lock = dir.lock_round0(&vd)?;
    let gcfg = curation::verifier_config(&ctx.cfg, filter, ctx.tok.vocab_size());
    let model_path = vd.join("model.safetensors");
    let model = if model_path.exists() {
        let m = load_model_on(
            &model_path,
            &ctx.device,
            "delete it to retrain the verifier",
        )?;
        if m.config() != &gcfg {
            bail!(
                "{} holds a model of another config: delete it to retrain the verifier",
                model_path.display()
            );
        }
        m
    } else {
        let ids: Vec<usize> = ctx.splits[rep].pool[..*docs].to_vec();
        let docs_path = vd.join("documents.json");
        if !docs_path.exists() {
            let names: Vec<&str> = ids.iter().map(|&i| ctx.docs[i].id.as_str()).collect();
            write_json(&docs_path, &names)?;
        }
        let stream = token_stream(
            ids.iter().map(|&i| ctx.doc_tokens[i].as_slice()),
            ctx.tok.eot(),
        );
        progress.note(&format!(
            "training verifier {} for repetition {rep} on {} real documents",
            filter.name(),
            ids.len()
        ));
        let seed = ctx.cfg.experiment.seed;
        let mut tc = ctx.cfg.train();
        tc.steps = steps.unwrap_or(tc.steps);
        let job = TrainJob {
            init_seed: derive_seed(seed, &[&"verifier-init", &filter.name(), &rep]),
            batch_seed: derive_seed(seed, &[&"verifier-batches", &filter.name(), &rep]),
            gcfg,
            tc,
            init_from: None,
        };
        train_phase(ctx, &vd, progress, &stream, &job)?.0
    };
    let eval_path = vd.join("eval.json");
    if !eval_path.exists() {
        let e = perplexity(&model, &ctx.heldout[rep], ctx.cfg.training.eval_batch_size)?;
        write_json(&eval_path, &e)?;
        progress.note(&format!(
            "verifier {} held-out perplexity {:.3}",
            filter.name(),
            e.perplexity
        ));
    }
    Ok(model)
}

/// What one training phase trains: the model's shape, the training settings, and its seeds.
struct TrainJob {
    gcfg: GptConfig,
    tc: TrainConfig,
    init_seed: u64,
    batch_seed: u64,
    /// Weights to start from instead of a random initialisation (`model.init_from`).
    init_from: Option<String>,
}

/// Round `t`'s training job: the run's model and settings, seeds keyed by (repetition, round).
fn round_job(ctx: &Ctx, rep: usize, t: usize) -> TrainJob {
    let cfg = &ctx.cfg;
    let seed = cfg.experiment.seed;
    TrainJob {
        gcfg: cfg.gpt(ctx.tok.vocab_size()),
        tc: cfg.train(),
        init_seed: derive_seed(seed, &[&"init", &rep, &t]),
        batch_seed: derive_seed(seed, &[&"batches", &rep, &t]),
        init_from: cfg.model.init_from.clone(),
    }
}

/// The weights every round starts from under `model.init_from`, with the run's dropout; a model of another
/// shape than the config's is refused with both shapes.
fn initial_model(cfg: &Config, device: &Device, vocab_size: usize, path: &str) -> Result<Gpt> {
    let mut m = load_model_on(Path::new(path), device, "fix model.init_from")
        .with_context(|| format!("model.init_from = {path:?}"))?;
    let want = cfg.gpt(vocab_size);
    let got = m.config().clone();
    let shape = |c: &gpt::GptConfig| {
        (
            c.vocab_size,
            c.block_size,
            c.n_layer,
            c.n_head,
            c.n_embd,
            c.bias,
        )
    };
    if shape(&got) != shape(&want) {
        bail!(
            "model.init_from = {path:?} is a model of vocab {}, block_size {}, {} layers, {} heads, n_embd {}, bias {}; \
             the config's [model] (and tokenizer) say vocab {}, block_size {}, {} layers, {} heads, n_embd {}, bias {}",
            got.vocab_size, got.block_size, got.n_layer, got.n_head, got.n_embd, got.bias,
            want.vocab_size, want.block_size, want.n_layer, want.n_head, want.n_embd, want.bias
        );
    }
    m.set_dropout(want.dropout);
    Ok(m)
}

/// D_t as one token stream: each document's tokens in manifest order, each followed by `<|endoftext|>`.
fn round_stream(
    ctx: &Ctx,
    root: &Path,
    samples: &mut SampleStore,
    setting: &str,
    rep: usize,
    manifest: &Manifest,
    manifest_path: &Path,
) -> Result<Vec<u32>> {
    // Load every round the manifest draws synthetic documents from, so the lookups below can borrow them.
    for d in &manifest.documents {
        if let Origin::Synthetic { round, .. } = d.origin {
            samples.get(ctx, root, setting, rep, round)?;
        }
    }
    let docs = manifest
        .documents
        .iter()
        .map(|d| match &d.origin {
            Origin::Real { .. } => ctx
                .by_id
                .get(&d.id)
                .map(|&i| ctx.doc_tokens[i].as_slice())
                .with_context(|| {
                    format!(
                        "{}: document {} is not in the corpus",
                        manifest_path.display(),
                        d.id
                    )
                }),
            Origin::Synthetic { round, .. } => samples.rounds[round]
                .1
                .get(&d.id)
                .map(Vec::as_slice)
                .with_context(|| {
                    format!(
                        "synthetic document {} is missing from round {round}'s samples",
                        d.id
                    )
                }),
        })
        .collect::<Result<Vec<&[u32]>>>()?;
    Ok(token_stream(docs, ctx.tok.eot()))
}

fn train_phase(
    ctx: &Ctx,
    rd: &Path,
    progress: &Progress,
    stream: &[u32],
    job: &TrainJob,
) -> Result<(Gpt, TrainRecord)> {
    let cfg = &ctx.cfg;
    let tc = job.tc.clone();
    let gcfg = job.gcfg.clone();
    let batch_seed = job.batch_seed;
    let (mut trainer, mut losses, wall_before) = if let Some((ck, _)) = latest_checkpoint(rd) {
        let bad = || format!("delete {} to redo this round's training", ck.display());
        let st: TrainState = read_json(&ck.join("state.json")).with_context(bad)?;
        let model = load_model_on(&ck.join("model.safetensors"), &ctx.device, &bad())?;
        if model.config() != &gcfg {
            bail!(
                "{} holds a model of another config: {}",
                ck.display(),
                bad()
            );
        }
        let opt_path = ck.join("optimizer.safetensors");
        let opt = AdamW::from_safetensors(
            &read_verified(&opt_path, &bad())?,
            &opt_path.display().to_string(),
            model.params(),
        )
        .with_context(|| format!("{} is unreadable: {}", opt_path.display(), bad()))?;
        if opt.steps_taken() != st.step {
            bail!(
                "{}: optimizer at step {}, state says {}: delete the checkpoint to redo training",
                ck.display(),
                opt.steps_taken(),
                st.step
            );
        }
        progress.note(&format!("resuming training at step {}", st.step));
        (
            Trainer::resume(model, opt, tc.clone(), batch_seed)?,
            st.losses,
            st.wall_s,
        )
    } else {
        let model = match &job.init_from {
            Some(init) => initial_model(cfg, &ctx.device, ctx.tok.vocab_size(), init)?,
            None => Gpt::new(&gcfg, job.init_seed, DType::F32, &ctx.device)?,
        };
        (
            Trainer::new(model, tc.clone(), batch_seed)?,
            Vec::new(),
            0.0,
        )
    };
    let batcher = Batcher::new(stream, gcfg.block_size, tc.batch_size, batch_seed)
        .with_context(|| format!("the corpus of {} is too small to train on", rd.display()))?;
    progress.phase("train", tc.steps);
    let started = Instant::now();
    let tokens_per_step = (tc.batch_size * gcfg.block_size) as f64;
    let mut last_loss = losses.last().map_or(f64::NAN, |l| l.1);
    while trainer.step() < tc.steps {
        let loss = trainer.train_step(&batcher)?;
        let step = trainer.step();
        if step % cfg.training.log_every == 0 || step == tc.steps {
            last_loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            losses.push((step, last_loss));
            let tps = tokens_per_step * step as f64
                / (started.elapsed().as_secs_f64() + wall_before).max(1e-9);
            progress.update(
                step,
                tc.steps,
                format!("loss {last_loss:.4}  {tps:.0} tok/s"),
            );
        }
        if step % cfg.training.checkpoint_every == 0 && step < tc.steps {
            save_checkpoint(
                rd,
                &trainer,
                &losses,
                wall_before + started.elapsed().as_secs_f64(),
            )?;
        }
    }
    let rec = TrainRecord {
        steps: tc.steps,
        train_tokens: stream.len(),
        final_loss: last_loss,
        losses,
        wall_s: wall_before + started.elapsed().as_secs_f64(),
    };
    write_json(&rd.join("train.json"), &rec)?;
    if cfg.training.keep_optimizer_state {
        write_verified(
            &rd.join("optimizer.safetensors"),
            &trainer.opt.to_safetensors()?,
        )?;
    }
    write_verified(
        &rd.join("model.safetensors"),
        &trainer.model.to_safetensors()?,
    )
    .context("cannot write the round's model")?;
    remove_checkpoints(rd, None)?;
    Ok((trainer.model, rec))
}

/// Writes model, optimizer and training state into a new directory and renames it into place: a crash at
/// any moment leaves the previous checkpoint valid. No file is ever overwritten, so each keeps the SHA-256
/// written beside it.
fn save_checkpoint(rd: &Path, trainer: &Trainer, losses: &[(u64, f64)], wall_s: f64) -> Result<()> {
    let name = format!("ckpt-{}", trainer.step());
    let partial = rd.join(format!("{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    write_verified(
        &partial.join("model.safetensors"),
        &trainer.model.to_safetensors()?,
    )
    .context("cannot write a training checkpoint")?;
    write_verified(
        &partial.join("optimizer.safetensors"),
        &trainer.opt.to_safetensors()?,
    )
    .context("cannot write a training checkpoint")?;
    write_json(
        &partial.join("state.json"),
        &TrainState {
            step: trainer.step(),
            losses: losses.to_vec(),
            wall_s,
        },
    )?;
    let done = rd.join(&name);
    let _ = std::fs::remove_dir_all(&done);
    std::fs::rename(&partial, &done)
        .with_context(|| format!("cannot rename {}", partial.display()))?;
    remove_checkpoints(rd, Some(&name))
}

fn remove_checkpoints(rd: &Path, keep: Option<&str>) -> Result<()> {
    for e in std::fs::read_dir(rd)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("ckpt-") && Some(name.as_str()) != keep {
            std::fs::remove_dir_all(e.path())
                .with_context(|| format!("cannot remove {}", e.path().display()))?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn generate_phase(
    ctx: &Ctx,
    progress: &Progress,
    model: &Gpt,
    path: &Path,
    root: &Path,
    rd: &Path,
    count: usize,
    rep: usize,
    t: usize,
) -> Result<()> {
    let cfg = &ctx.cfg;
    let gc = cfg.generate(ctx.tok.eot());
    let prompt = if cfg.generation.prompt == EOT_PROMPT {
        vec![ctx.tok.eot()]
    } else {
        ctx.tok.encode(&cfg.generation.prompt)?
    };
    if prompt.is_empty() {
        bail!(
            "generation.prompt {:?} encodes to no tokens",
            cfg.generation.prompt
        );
    }
    let seed = derive_seed(cfg.experiment.seed, &[&"generate", &rep, &t]);
    let model_ref = rd
        .join("model.safetensors")
        .strip_prefix(root)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let model_ref = model_ref.to_string_lossy();
    progress.phase("generate", count as u64);
    let started = Instant::now();
    let mut out = Vec::with_capacity(count);
    let mut new_tokens = 0usize;
    for start in (0..count).step_by(cfg.generation.batch_size) {
        let n = cfg.generation.batch_size.min(count - start);
        let seqs = gpt::generate(model, &prompt, n, &gc, seed, start as u64)?;
        for (i, s) in seqs.iter().enumerate() {
            new_tokens += s.len();
            let d = Document::synthetic(rep, t, start + i, &model_ref, ctx.tok.decode(s)?);
            out.push(Sample {
                id: d.id,
                origin: d.origin,
                text: d.text,
                new_tokens: s.len(),
            });
        }
        let tps = new_tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        progress.update(
            out.len() as u64,
            count as u64,
            format!("{tps:.0} new tokens/s"),
        );
    }
    let mut body = Vec::new();
    {
        let mut enc = zstd::Encoder::new(&mut body, 3)?;
        // zstd's own frame checksum, beside the file's SHA-256: the file also stands alone.
        enc.include_checksum(true)?;
        writeln!(
            enc,
            "{}",
            serde_json::json!({ "meta": { "wall_s": started.elapsed().as_secs_f64(), "new_tokens": new_tokens } })
        )?;
        for s in &out {
            writeln!(enc, "{}", serde_json::to_string(s)?)?;
        }
        enc.finish()?;
    }
    write_verified(path, &body)
}

fn read_samples_lines(path: &Path) -> Result<Vec<String>> {
    let remedy = "delete it to regenerate";
    let bytes = read_verified(path, remedy)?;
    let corrupt =
        |e: std::io::Error| anyhow::anyhow!("{} is corrupt ({e}): {remedy}", path.display());
    let dec = zstd::Decoder::new(bytes.as_slice()).map_err(corrupt)?;
    BufReader::new(dec)
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(corrupt)
}

/// A round's generated documents, in generation order, and the generation phase's wall time (its first line).
pub fn read_samples_file(path: &Path) -> Result<(Option<f64>, Vec<Sample>)> {
    let mut lines = read_samples_lines(path)?.into_iter();
    let meta = lines
        .next()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok());
    let wall = meta.and_then(|m| m["meta"]["wall_s"].as_f64());
    let docs = lines
        .map(|l| {
            serde_json::from_str::<Sample>(&l)
                .with_context(|| format!("{} is corrupt: delete it to regenerate", path.display()))
        })
        .collect::<Result<_>>()?;
    Ok((wall, docs))
}

/// The synthetic documents of a round, in the order they were generated.
pub fn read_samples(path: &Path) -> Result<Vec<Document>> {
    Ok(read_samples_file(path)?
        .1
        .into_iter()
        .map(|s| Document {
            id: s.id,
            text: s.text,
            origin: s.origin,
        })
        .collect())
}

/// What a round's generated documents look like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationStats {
    /// Of the first `stats_docs` documents only. Distinct-n falls and plug-in entropy rises with the number
    /// of documents measured, and a round generates n, (t+1)n or `min_docs` of them depending on the
    /// setting and round: statistics of all of them would compare samples of different sizes. Each
    /// document is an independent draw from the round's model (its own RNG stream), so the first
    /// `stats_docs` are a uniformly random subset of fixed size, and the same documents however many more
    /// the round generated.
    pub text: TextStats,
    pub empty: usize,
    pub truncated: usize,
    pub replacement_char: usize,
}

impl GenerationStats {
    pub fn of(samples: &[Sample], stats_docs: usize, max_new_tokens: usize) -> Self {
        let text = TextStats::of(samples.iter().take(stats_docs).map(|s| s.text.as_str()));
        let count = |f: &dyn Fn(&Sample) -> bool| samples.iter().filter(|s| f(s)).count();
        Self {
            text,
            empty: count(&|s| s.new_tokens == 0),
            truncated: count(&|s| s.new_tokens >= max_new_tokens),
            replacement_char: count(&|s| s.text.contains('\u{FFFD}')),
        }
    }
}

/// Recomputes a row's generation statistics from its round's samples when they were measured under another
/// rule (rows written before fixed-size statistics, or another `min_docs`).
pub fn refresh_generation_stats(root: &Path, cfg: &Config, row: &mut MetricsRow) -> Result<()> {
    let want = cfg.generation.min_docs;
    if row.stats_docs == want.min(row.generated_docs) && row.stats_docs > 0 {
        return Ok(());
    }
    let spec = cfg.setting(&row.setting)?;
    let plan = spec.schedule.plan(cfg.schedule.rounds, usize::MAX)?;
    let n0 = plan.rounds[0].new_docs;
    let path =
        phase_dir(root, &row.setting, n0, row.repetition, row.round).join("samples.jsonl.zst");
    let (_, mut samples) = read_samples_file(&path)?;
    // Candidate counts depend on the schedule alone, not on the pool.
    let candidates = match spec.curation {
        Some(_) => Some(curation::candidate_counts(cfg, &spec, &plan)?),
        None => None,
    };
    samples.truncate(to_generate_after(&plan, candidates.as_deref(), row.round).max(want));
    let g = GenerationStats::of(&samples, want, cfg.generation.max_new_tokens);
    row.generated_docs = samples.len();
    row.stats_docs = g.text.documents;
    row.gen_mean_words = g.text.mean_words;
    row.gen_distinct_1 = g.text.distinct_1;
    row.gen_distinct_2 = g.text.distinct_2;
    row.gen_unigram_entropy = g.text.unigram_entropy;
    row.gen_empty = g.empty;
    row.gen_truncated = g.truncated;
    row.gen_replacement_char = g.replacement_char;
    Ok(())
}

/// Every finished round's metrics, sorted by (setting, repetition, round).
pub fn collect_metrics(root: &Path) -> Result<Vec<MetricsRow>> {
    let mut rows = Vec::new();
    // Every SETTING/rep-R/round-T/metrics.json below the root, whatever the settings are called.
    for sdir in std::fs::read_dir(root)
        .with_context(|| format!("cannot read {}", root.display()))?
        .flatten()
    {
        let Ok(reps) = std::fs::read_dir(sdir.path()) else {
            continue;
        };
        for rep in reps
            .flatten()
            .filter(|r| r.file_name().to_string_lossy().starts_with("rep-"))
        {
            let Ok(rounds) = std::fs::read_dir(rep.path()) else {
                continue;
            };
            for r in rounds.flatten() {
                let m = r.path().join("metrics.json");
                if m.exists() {
                    rows.push(read_json::<MetricsRow>(&m)?);
                }
            }
        }
    }
    rows.sort_by_key(|r| (r.setting_number, r.repetition, r.round));
    Ok(rows)
}

/// `metrics.jsonl` rebuilt from every round's own `metrics.json`, under the directory's lock.
fn rebuild_metrics(dir: &RunDir) -> Result<()> {
    let _shared = dir.lock_shared_files()?;
    let mut out = String::new();
    for r in collect_metrics(&dir.root)? {
        out.push_str(&serde_json::to_string(&r)?);
        out.push('\n');
    }
    write_atomic(&dir.root.join("metrics.jsonl"), out.as_bytes())
}

/// Where each (setting, repetition) stands: rounds finished and the phase of the next one.
pub fn status(root: &Path) -> Result<String> {
    let cfg = frozen_config(root)?;
    let settings = cfg.settings()?;
    let w = settings
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0)
        .max(16);
    let mut out = format!("{:<w$} {:>4}  {:>7}  next\n", "setting", "rep", "rounds");
    for s in settings {
        let n0 = s.schedule.plan(cfg.schedule.rounds, usize::MAX)?.rounds[0].new_docs;
        for rep in 0..cfg.experiment.repetitions {
            let done = (0..cfg.schedule.rounds)
                .take_while(|&t| {
                    round_dir(root, &s.name, rep, t)
                        .join("metrics.json")
                        .exists()
                })
                .count();
            let next = if done == cfg.schedule.rounds {
                "done".to_string()
            } else {
                let rd = phase_dir(root, &s.name, n0, rep, done);
                let phase = if rd.join("samples.jsonl.zst").exists() {
                    "metrics"
                } else if rd.join("eval.json").exists() {
                    "generate"
                } else if rd.join("model.safetensors").exists() {
                    "eval"
                } else if rd.join("manifest.json").exists() {
                    "train"
                } else {
                    "compose"
                };
                let step = latest_checkpoint(&rd)
                    .map(|(_, s)| format!(" (checkpoint at step {s})"))
                    .unwrap_or_default();
                format!("round {done}: {phase}{step}")
            };
            let next = if chain_busy(root, &s.name, rep) {
                format!("{next} (running in another process)")
            } else {
                next
            };
            out.push_str(&format!(
                "{:<w$} {:>4}  {:>3}/{:<3}  {next}\n",
                s.name, rep, done, cfg.schedule.rounds
            ));
        }
    }
    Ok(out)
}

pub fn default_out(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    PathBuf::from("runs").join(stem)
}
