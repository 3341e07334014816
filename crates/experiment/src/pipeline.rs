//! The experiment runner: for each repetition, setting and round, compose D_t, train model_t from scratch,
//! evaluate it, generate the next round's synthetic documents, and record metrics. Every phase ends with an
//! atomic write, so `run` on an existing directory continues from the last completed phase, and every random
//! draw is keyed by (seed, repetition, round), so the result does not depend on where a run was interrupted.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use corpus::{
    bpe_training_docs, compose, compose_selected, token_stream, token_stream_with_ends, Document,
    LengthRobustStats, Manifest, Origin, Plan, RealCorpus, Source, Split, TextStats, TokenCache,
    Tokenizer, TokenizerSpec,
};
use lm::{Evaluation, LanguageModel, ModelKind, TrainConfig, Training};
use serde::{Deserialize, Serialize};

use crate::config::{
    candidate_counts, plan_pool, Carry, Config, FilterSpec, RoundCandidates, SettingSpec, Steps,
    Truncation, EOT_PROMPT,
};
use crate::curation::{self, CurationMetrics};
use crate::models::Models;
use crate::progress::Progress;
use crate::rundir::{
    chain_busy, frozen_config, read_json, read_verified, round_dir, write_atomic, write_json,
    write_verified, RunDir,
};

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
    /// Length-robust statistics of the generated plots (see [`corpus::LengthRobustStats`]): distinct-1/2 over
    /// the first `stats_words` words of the round's documents (absent when they hold fewer), and MTLD over
    /// the words of the first `stats_docs` documents. Absent from rows written before them.
    #[serde(default)]
    pub stats_words: usize,
    #[serde(default)]
    pub gen_distinct_1_words: Option<f64>,
    #[serde(default)]
    pub gen_distinct_2_words: Option<f64>,
    #[serde(default)]
    pub gen_mtld: Option<f64>,
    /// How the round generated: the cap on new tokens, what a document cut at it became, how synthetic
    /// documents reach the next round, and the documents drawn for this chain (more than `generated_docs`
    /// under `truncated = "redraw"`; `gen_truncated` counts the cut ones among them).
    #[serde(default)]
    pub gen_max_new_tokens: usize,
    #[serde(default)]
    pub gen_truncation: Option<String>,
    #[serde(default)]
    pub gen_carry: Option<String>,
    #[serde(default)]
    pub gen_drawn: usize,
    /// Passes over D_t's tokens: steps x batch x block / train_tokens.
    #[serde(default)]
    pub train_passes: Option<f64>,
    /// With `training.eval_every`: the step of the lowest held-out mean NLL during training, and that NLL.
    #[serde(default)]
    pub heldout_best_step: Option<u64>,
    #[serde(default)]
    pub heldout_best_nll: Option<f64>,
    /// The tails: quantiles (5, 25, 50, 75, 95%) of per-document perplexity of the held-out plots under this
    /// round's model, and of the round's first `stats_docs` generated plots under the repetition's round-0
    /// model. Absent from rows written before them.
    #[serde(default)]
    pub heldout_doc_ppl_q05: Option<f64>,
    #[serde(default)]
    pub heldout_doc_ppl_q25: Option<f64>,
    #[serde(default)]
    pub heldout_doc_ppl_q50: Option<f64>,
    #[serde(default)]
    pub heldout_doc_ppl_q75: Option<f64>,
    #[serde(default)]
    pub heldout_doc_ppl_q95: Option<f64>,
    #[serde(default)]
    pub gen_round0_ppl_q05: Option<f64>,
    #[serde(default)]
    pub gen_round0_ppl_q25: Option<f64>,
    #[serde(default)]
    pub gen_round0_ppl_q50: Option<f64>,
    #[serde(default)]
    pub gen_round0_ppl_q75: Option<f64>,
    #[serde(default)]
    pub gen_round0_ppl_q95: Option<f64>,
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    heldout: Vec<(u64, f64)>,
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
pub struct TrainRecord {
    /// Planned from D_t's token count before training (see `training.steps`).
    pub steps: u64,
    pub train_tokens: usize,
    pub final_loss: f64,
    pub losses: Vec<(u64, f64)>,
    /// Held-out mean NLL per token during training, (step, NLL), with `training.eval_every`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heldout: Vec<(u64, f64)>,
    /// SHA-256 of D_t's token stream (little-endian u32 ids), so what a round trained on can be checked
    /// against its documents without keeping the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_sha256: Option<String>,
    pub wall_s: f64,
}

/// SHA-256 of a token stream as little-endian u32s.
pub fn stream_sha256(stream: &[u32]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for t in stream {
        h.update(t.to_le_bytes());
    }
    format!("{:x}", h.finalize())
}

impl TrainRecord {
    /// The lowest point of the held-out curve.
    pub fn heldout_best(&self) -> Option<(u64, f64)> {
        self.heldout
            .iter()
            .copied()
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
    }
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
    /// The token ids the model drew (absent in samples written before they were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tokens: Option<Vec<u32>>,
    /// Cut at the cap without drawing `<|endoftext|>` (absent before: then `new_tokens >= cap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    truncated: Option<bool>,
    /// Under `truncated = "redraw"`: a cut draw, recorded for its count and never used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    dropped: bool,
}

impl Sample {
    fn is_truncated(&self, cap: usize) -> bool {
        self.truncated.unwrap_or(self.new_tokens >= cap)
    }
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
struct Ctx<'m> {
    cfg: Config,
    /// Makes the model kinds (the binary's mapping from `[model]` to an implementation).
    models: &'m dyn Models,
    /// The kind of the rounds' models.
    kind: Box<dyn ModelKind>,
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
    /// `generation.max_new_tokens` resolved for this corpus and tokenizer.
    max_new_tokens: usize,
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

/// Runs (or resumes) the selected chains of `cfg` in `out`, with the model kinds `models` makes.
pub fn run(cfg: Config, out: &Path, models: &dyn Models, sel: Selection) -> Result<()> {
    check_models(&cfg, models)?;
    let dir = RunDir::open(out, &cfg)?;
    let ctx = prepare(cfg, &dir, models)?;
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

/// The run's `[model]` and every verifier's, checked by their kind before anything runs.
pub fn check_models(cfg: &Config, models: &dyn Models) -> Result<()> {
    models
        .validate(&cfg.model)
        .context("invalid [model] section")?;
    for f in cfg.curation.iter().flat_map(|c| &c.filters) {
        if let FilterSpec::Verifier { .. } = f {
            models
                .validate(&f.verifier_model(&cfg.model))
                .with_context(|| format!("curation filter {:?}", f.name()))?;
        }
    }
    Ok(())
}

fn prepare<'m>(cfg: Config, dir: &RunDir, models: &'m dyn Models) -> Result<Ctx<'m>> {
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
    let max_new_tokens = cfg
        .generation
        .max_new_tokens
        .resolve(doc_tokens.iter().map(Vec::len));
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
    // Made (and `model.init_from` read and checked) once, before any round.
    let kind = models.kind(&cfg.model, tok.vocab_size())?;
    let pool_len = n - cfg.data.heldout_docs;
    let mut plans = HashMap::new();
    for s in cfg.settings()? {
        let plan = s
            .schedule
            .plan(cfg.schedule.rounds, pool_len)
            .with_context(|| format!("setting {s} cannot run on {pool_len} pool documents"))?;
        plans.insert(s.name, plan);
    }
    let candidates = plan_pool(
        cfg.curation.as_ref(),
        &cfg.settings()?,
        &mut plans,
        pool_len,
    )?;
    let by_id = real
        .docs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.clone(), i))
        .collect();
    Ok(Ctx {
        cfg,
        models,
        kind,
        tok,
        docs: real.docs,
        doc_tokens,
        by_id,
        splits,
        heldout,
        second,
        plans,
        candidates,
        max_new_tokens,
    })
}

impl Ctx<'_> {
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

/// A round's kept generated documents in order, and per id the tokens the next round trains on with whether
/// an `<|endoftext|>` follows them there (not after a cut document under `truncated = "open"`).
struct RoundSamples {
    docs: Vec<Document>,
    tokens: HashMap<String, (Vec<u32>, bool)>,
}

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
            let path =
                phase_dir(root, setting, ctx.n0(setting), rep, round).join("samples.jsonl.zst");
            let kept: Vec<Sample> = read_samples_file(&path)?
                .1
                .into_iter()
                .filter(|s| !s.dropped)
                .collect();
            let gen = &ctx.cfg.generation;
            let toks: Vec<Vec<u32>> = match gen.carry {
                Carry::Text => {
                    let texts: Vec<&str> = kept.iter().map(|s| s.text.as_str()).collect();
                    ctx.tok.encode_all(&texts)?
                }
                Carry::Tokens => kept
                    .iter()
                    .map(|s| {
                        s.tokens.clone().with_context(|| {
                            format!(
                                "{} holds no token ids (written before they were kept): use carry = \"text\" \
                                 for this run, or delete the round to regenerate it",
                                path.display()
                            )
                        })
                    })
                    .collect::<Result<_>>()?,
            };
            let open = gen.truncated == Truncation::Open;
            let tokens = kept
                .iter()
                .zip(toks)
                .map(|(s, t)| {
                    let ends = !(open && s.is_truncated(ctx.max_new_tokens));
                    (s.id.clone(), (t, ends))
                })
                .collect();
            let docs = kept
                .into_iter()
                .map(|s| Document {
                    id: s.id,
                    text: s.text,
                    origin: s.origin,
                })
                .collect();
            slot.insert(RoundSamples { docs, tokens });
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
                    let docs = &samples.get(ctx, &dir.root, &setting.name, rep, t - 1)?.docs;
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
    let model_path = pd.join(ctx.kind.model_file());
    let (model, train_rec) = if model_path.exists() {
        let model = load_model(&*ctx.kind, &model_path, "delete it to retrain this round")?;
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
        train_phase(ctx, &pd, progress, stream, &round_job(ctx, rep, t))?
    };

    // Phase 3: evaluate.
    let eval_path = pd.join("eval.json");
    let eval: EvalRecord = if eval_path.exists() {
        read_json(&eval_path)?
    } else {
        progress.phase("eval", 1);
        let started = Instant::now();
        let bs = cfg.training.eval_batch_size;
        let heldout = model.evaluate(&ctx.heldout[rep], bs)?;
        let second = ctx
            .second
            .as_ref()
            .map(|s| model.evaluate(s, bs))
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
            &*model,
            &samples_path,
            &dir.root,
            &pd,
            count,
            rep,
            t,
        )?;
    }
    let (wall_meta, all_samples) = read_samples_file(&samples_path)?;
    let wall_generate = wall_meta.unwrap_or(started.elapsed().as_secs_f64());
    let gen = GenerationStats::of(
        &all_samples,
        own_count,
        cfg.generation.min_docs,
        cfg.generation.stats_words,
        ctx.max_new_tokens,
    );

    // Phase 5: the tails, per-document perplexities (shared with round 0's other settings, like its files).
    let tails_path = pd.join("tails.json");
    let tails: TailsRecord = if tails_path.exists() {
        read_json(&tails_path)?
    } else {
        progress.phase("tails", 1);
        let started = Instant::now();
        let eot = ctx.tok.eot();
        let heldout = doc_perplexities(
            &*model,
            ctx.splits[rep]
                .heldout
                .iter()
                .map(|&i| ctx.doc_tokens[i].as_slice()),
            eot,
        )?;
        // What the model drew (re-encoded for samples written before the ids were kept).
        let first: Vec<&Sample> = all_samples
            .iter()
            .filter(|s| !s.dropped)
            .take(cfg.generation.min_docs)
            .collect();
        let toks: Vec<Vec<u32>> = first
            .iter()
            .map(|s| match &s.tokens {
                Some(t) => Ok(t.clone()),
                None => Ok(ctx.tok.encode(&s.text)?),
            })
            .collect::<Result<_>>()?;
        let round0 = if t == 0 {
            None
        } else {
            let path = phase_dir(&dir.root, &setting.name, n0, rep, 0).join(ctx.kind.model_file());
            Some(load_model(
                &*ctx.kind,
                &path,
                "delete it to retrain round 0",
            )?)
        };
        let generated = doc_perplexities(
            round0.as_deref().unwrap_or(&*model),
            toks.iter().map(Vec::as_slice),
            eot,
        )?;
        let rec = TailsRecord {
            heldout_docs: heldout.len(),
            heldout_doc_ppl: quantiles(&heldout),
            generated_docs: generated.len(),
            generated_round0_ppl: quantiles(&generated),
            wall_s: started.elapsed().as_secs_f64(),
        };
        write_json(&tails_path, &rec)?;
        rec
    };
    drop(shared);

    // Phase 6: the round's metrics.
    let rp = &manifest.plan;
    let stats = gen.text;
    let q = |v: Option<[f64; 5]>, i: usize| v.map(|a| a[i]);
    let mut row = MetricsRow {
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
        generated_docs: 0,
        stats_docs: stats.documents,
        gen_mean_words: 0.0,
        gen_distinct_1: 0.0,
        gen_distinct_2: 0.0,
        gen_unigram_entropy: 0.0,
        gen_empty: 0,
        gen_truncated: 0,
        gen_replacement_char: 0,
        stats_words: 0,
        gen_distinct_1_words: None,
        gen_distinct_2_words: None,
        gen_mtld: None,
        gen_max_new_tokens: ctx.max_new_tokens,
        gen_truncation: Some(enum_name(&cfg.generation.truncated)),
        gen_carry: Some(enum_name(&cfg.generation.carry)),
        gen_drawn: 0,
        train_passes: Some(
            (train_rec.steps as usize * cfg.training.batch_size * cfg.model.block_size) as f64
                / train_rec.train_tokens.max(1) as f64,
        ),
        heldout_best_step: train_rec.heldout_best().map(|b| b.0),
        heldout_best_nll: train_rec.heldout_best().map(|b| b.1),
        heldout_doc_ppl_q05: q(tails.heldout_doc_ppl, 0),
        heldout_doc_ppl_q25: q(tails.heldout_doc_ppl, 1),
        heldout_doc_ppl_q50: q(tails.heldout_doc_ppl, 2),
        heldout_doc_ppl_q75: q(tails.heldout_doc_ppl, 3),
        heldout_doc_ppl_q95: q(tails.heldout_doc_ppl, 4),
        gen_round0_ppl_q05: q(tails.generated_round0_ppl, 0),
        gen_round0_ppl_q25: q(tails.generated_round0_ppl, 1),
        gen_round0_ppl_q50: q(tails.generated_round0_ppl, 2),
        gen_round0_ppl_q75: q(tails.generated_round0_ppl, 3),
        gen_round0_ppl_q95: q(tails.generated_round0_ppl, 4),
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
    set_generation_stats(&mut row, &gen);
    write_json(&rd.join("metrics.json"), &row)
}

/// A config enum's name as the config writes it ("open", "tokens").
fn enum_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
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
                phase_dir(&dir.root, &setting.name, n0, rep, t - 1).join(ctx.kind.model_file());
            Some(load_model(
                &*ctx.kind,
                &path,
                "delete it to retrain that round",
            )?)
        }
        _ => None,
    };
    let synthetic: Vec<(&Document, &[u32])> = if cand.synthetic == 0 {
        Vec::new()
    } else {
        let RoundSamples { docs, tokens } =
            samples.get(ctx, &dir.root, &setting.name, rep, t - 1)?;
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
            .map(|d| (d, tokens[&d.id].0.as_slice()))
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
        scorer.as_deref().map(|m| (m, ctx.tok.eot())),
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
) -> Result<Box<dyn LanguageModel>> {
    let FilterSpec::Verifier { docs, steps, .. } = filter else {
        bail!("filter {} is not a verifier", filter.name());
    };
    let vd = curation::verifier_dir(&dir.root, filter.name(), rep);
    std::fs::create_dir_all(&vd).with_context(|| format!("cannot create {}", vd.display()))?;
    let _lock = dir.lock_round0(&vd)?;
    let kind = ctx
        .models
        .kind(&filter.verifier_model(&ctx.cfg.model), ctx.tok.vocab_size())?;
    let model_path = vd.join(kind.model_file());
    let model = if model_path.exists() {
        load_model(&*kind, &model_path, "delete it to retrain the verifier")?
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
        let job = TrainJob {
            kind: &*kind,
            init_seed: derive_seed(seed, &[&"verifier-init", &filter.name(), &rep]),
            batch_seed: derive_seed(seed, &[&"verifier-batches", &filter.name(), &rep]),
            tc: ctx.cfg.train(),
            steps: steps.map_or(ctx.cfg.training.steps.clone(), Steps::Count),
            heldout: &ctx.heldout[rep],
        };
        train_phase(ctx, &vd, progress, stream, &job)?.0
    };
    let eval_path = vd.join("eval.json");
    if !eval_path.exists() {
        let e = model.evaluate(&ctx.heldout[rep], ctx.cfg.training.eval_batch_size)?;
        write_json(&eval_path, &e)?;
        progress.note(&format!(
            "verifier {} held-out perplexity {:.3}",
            filter.name(),
            e.perplexity
        ));
    }
    Ok(model)
}

/// A round's model (or a verifier's) saved in the run directory, checked against its SHA-256 and its kind's
/// configuration; `remedy` ends the error line.
fn load_model(kind: &dyn ModelKind, path: &Path, remedy: &str) -> Result<Box<dyn LanguageModel>> {
    let bytes = read_verified(path, remedy)?;
    kind.load(&bytes, &path.display().to_string())
        .map_err(|e| anyhow::anyhow!("{e}: {remedy}"))
}

/// What one training phase trains: the kind of model, the training settings, and its seeds.
struct TrainJob<'a> {
    kind: &'a dyn ModelKind,
    tc: TrainConfig,
    /// How many steps, given the stream's tokens.
    steps: Steps,
    /// The held-out stream of the repetition, for the curve during training.
    heldout: &'a [u32],
    init_seed: u64,
    batch_seed: u64,
}

/// Round `t`'s training job: the run's model kind and settings, seeds keyed by (repetition, round).
fn round_job<'a>(ctx: &'a Ctx, rep: usize, t: usize) -> TrainJob<'a> {
    let cfg = &ctx.cfg;
    let seed = cfg.experiment.seed;
    TrainJob {
        kind: &*ctx.kind,
        tc: cfg.train(),
        steps: cfg.training.steps.clone(),
        heldout: &ctx.heldout[rep],
        init_seed: derive_seed(seed, &[&"init", &rep, &t]),
        batch_seed: derive_seed(seed, &[&"batches", &rep, &t]),
    }
}

/// D_t as one token stream: each document's tokens in manifest order, each followed by `<|endoftext|>` (but
/// a generated document cut at the cap under `truncated = "open"`).
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
                .map(|&i| (ctx.doc_tokens[i].as_slice(), true))
                .with_context(|| {
                    format!(
                        "{}: document {} is not in the corpus",
                        manifest_path.display(),
                        d.id
                    )
                }),
            Origin::Synthetic { round, .. } => samples.rounds[round]
                .tokens
                .get(&d.id)
                .map(|(t, ends)| (t.as_slice(), *ends))
                .with_context(|| {
                    format!(
                        "synthetic document {} is missing from round {round}'s samples",
                        d.id
                    )
                }),
        })
        .collect::<Result<Vec<(&[u32], bool)>>>()?;
    Ok(token_stream_with_ends(docs, ctx.tok.eot()))
}

fn train_phase(
    ctx: &Ctx,
    rd: &Path,
    progress: &Progress,
    stream: Vec<u32>,
    job: &TrainJob,
) -> Result<(Box<dyn LanguageModel>, TrainRecord)> {
    let cfg = &ctx.cfg;
    let mut tc = job.tc.clone();
    // Planned from D_t's tokens before the first step, so a resumed round plans the same number.
    tc.steps = job
        .steps
        .for_tokens(stream.len(), tc.batch_size, cfg.model.block_size);
    let train_tokens = stream.len();
    let sha = stream_sha256(&stream);
    let lm_job = lm::TrainJob {
        settings: tc.clone(),
        init_seed: job.init_seed,
        batch_seed: job.batch_seed,
        stream,
    };
    let (mut training, mut losses, mut heldout, wall_before) =
        if let Some((ck, _)) = latest_checkpoint(rd) {
            let bad = || format!("delete {} to redo this round's training", ck.display());
            let st: TrainState = read_json(&ck.join("state.json")).with_context(bad)?;
            let parts = job
                .kind
                .parts()
                .iter()
                .map(|name| Ok((*name, read_verified(&ck.join(name), &bad())?)))
                .collect::<Result<Vec<_>>>()?;
            let training = job
                .kind
                .resume(lm_job, &parts, st.step)
                .map_err(|e| anyhow::anyhow!("{}: {e}: {}", ck.display(), bad()))?;
            progress.note(&format!("resuming training at step {}", st.step));
            (training, st.losses, st.heldout, st.wall_s)
        } else {
            let training = job.kind.start(lm_job).map_err(|e| {
                anyhow::anyhow!("cannot train on the corpus of {}: {e}", rd.display())
            })?;
            (training, Vec::new(), Vec::new(), 0.0)
        };
    // The held-out curve (nanoGPT's eval_interval): exact mean NLL over the first `eval_tokens` held-out
    // tokens. It draws nothing random, so it leaves training bit-identical.
    let every = cfg.training.eval_every;
    let curve_tokens = match (every, cfg.training.eval_tokens) {
        (0, _) => None,
        (_, 0) => Some(job.heldout),
        (_, n) => Some(&job.heldout[..n.min(job.heldout.len())]),
    };
    let eval_now = |t: &dyn Training| -> Result<f64> {
        let toks = curve_tokens.expect("asked only with a curve");
        Ok(t.evaluate(toks, cfg.training.eval_batch_size)?.mean_nll)
    };
    if curve_tokens.is_some() && training.step() == 0 && heldout.is_empty() {
        heldout.push((0, eval_now(&*training)?));
    }
    progress.phase("train", tc.steps);
    let started = Instant::now();
    let tokens_per_step = (tc.batch_size * cfg.model.block_size) as f64;
    let mut last_loss = losses.last().map_or(f64::NAN, |l| l.1);
    while training.step() < tc.steps {
        // The loss is read (a device synchronises) only when it is logged.
        let next = training.step() + 1;
        let log = next % cfg.training.log_every == 0 || next == tc.steps;
        let loss = training.train_step(log)?;
        let step = training.step();
        if let Some(loss) = loss {
            last_loss = loss;
            losses.push((step, last_loss));
            let tps = tokens_per_step * step as f64
                / (started.elapsed().as_secs_f64() + wall_before).max(1e-9);
            progress.update(
                step,
                tc.steps,
                format!("loss {last_loss:.4}  {tps:.0} tok/s"),
            );
        }
        if curve_tokens.is_some() && (step % every == 0 || step == tc.steps) {
            heldout.push((step, eval_now(&*training)?));
        }
        if step % cfg.training.checkpoint_every == 0 && step < tc.steps {
            save_checkpoint(
                rd,
                &*training,
                &losses,
                &heldout,
                wall_before + started.elapsed().as_secs_f64(),
            )?;
        }
    }
    let rec = TrainRecord {
        steps: tc.steps,
        train_tokens,
        final_loss: last_loss,
        losses,
        heldout,
        stream_sha256: Some(sha),
        wall_s: wall_before + started.elapsed().as_secs_f64(),
    };
    write_json(&rd.join("train.json"), &rec)?;
    // The model is its kind's first part; the rest (an optimizer's state) is kept only when asked.
    let parts = training.parts()?;
    let (model_part, rest) = parts.split_first().context("a training without a model")?;
    if cfg.training.keep_optimizer_state {
        for (name, bytes) in rest {
            write_verified(&rd.join(name), bytes)?;
        }
    }
    write_verified(&rd.join(model_part.0), &model_part.1)
        .context("cannot write the round's model")?;
    remove_checkpoints(rd, None)?;
    Ok((training.into_model(), rec))
}

/// Writes model, optimizer and training state into a new directory and renames it into place: a crash at
/// any moment leaves the previous checkpoint valid. No file is ever overwritten, so each keeps the SHA-256
/// written beside it.
fn save_checkpoint(
    rd: &Path,
    training: &dyn Training,
    losses: &[(u64, f64)],
    heldout: &[(u64, f64)],
    wall_s: f64,
) -> Result<()> {
    let name = format!("ckpt-{}", training.step());
    let partial = rd.join(format!("{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    for (file, bytes) in training.parts()? {
        write_verified(&partial.join(file), &bytes)
            .context("cannot write a training checkpoint")?;
    }
    write_json(
        &partial.join("state.json"),
        &TrainState {
            step: training.step(),
            losses: losses.to_vec(),
            heldout: heldout.to_vec(),
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
    model: &dyn LanguageModel,
    path: &Path,
    root: &Path,
    rd: &Path,
    count: usize,
    rep: usize,
    t: usize,
) -> Result<()> {
    let cfg = &ctx.cfg;
    let sampling = cfg.sampling(ctx.tok.eot(), ctx.max_new_tokens);
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
        .join(ctx.kind.model_file())
        .strip_prefix(root)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let model_ref = model_ref.to_string_lossy();
    let cap = ctx.max_new_tokens;
    let redraw = cfg.generation.truncated == Truncation::Redraw;
    // Under redraw a cut draw is recorded (for its count) and another is drawn in its place; sequence i
    // always draws from RNG stream i, so which draws were kept does not depend on the batches.
    let max_draws = if redraw {
        (cfg.generation.max_draws * count as f64).ceil() as usize
    } else {
        count
    };
    progress.phase("generate", count as u64);
    let started = Instant::now();
    let mut out = Vec::with_capacity(count);
    let (mut new_tokens, mut kept, mut drawn) = (0usize, 0usize, 0usize);
    while kept < count {
        if drawn >= max_draws {
            bail!(
                "round {t} of repetition {rep}: only {kept} of {drawn} generated documents ended before \
                 max_new_tokens = {cap}, and {count} are needed: raise generation.max_new_tokens or \
                 generation.max_draws, or use truncated = \"open\""
            );
        }
        let n = cfg
            .generation
            .batch_size
            .min(count - kept)
            .min(max_draws - drawn);
        let seqs = model.generate(&prompt, n, &sampling, seed, drawn as u64)?;
        for (i, s) in seqs.into_iter().enumerate() {
            new_tokens += s.len();
            let truncated = s.len() >= cap;
            let dropped = redraw && truncated;
            kept += usize::from(!dropped);
            let d = Document::synthetic(rep, t, drawn + i, &model_ref, ctx.tok.decode(&s)?);
            out.push(Sample {
                id: d.id,
                origin: d.origin,
                text: d.text,
                new_tokens: s.len(),
                tokens: Some(s),
                truncated: Some(truncated),
                dropped,
            });
        }
        drawn += n;
        let tps = new_tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        progress.update(kept as u64, count as u64, format!("{tps:.0} new tokens/s"));
    }
    let mut body = Vec::new();
    {
        let mut enc = zstd::Encoder::new(&mut body, 3)?;
        // zstd's own frame checksum, beside the file's SHA-256: the file also stands alone.
        enc.include_checksum(true)?;
        writeln!(
            enc,
            "{}",
            serde_json::json!({ "meta": {
                "wall_s": started.elapsed().as_secs_f64(),
                "new_tokens": new_tokens,
                "max_new_tokens": cap,
                "drawn": drawn,
            } })
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

/// What a chain's share of a round's generated documents looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationStats {
    /// Of the first `stats_docs` documents only. Distinct-n falls and plug-in entropy rises with the number
    /// of documents measured, and a round generates n, (t+1)n or `min_docs` of them depending on the
    /// setting and round: statistics of all of them would compare samples of different sizes. Each
    /// document is an independent draw from the round's model (its own RNG stream), so the first
    /// `stats_docs` are a uniformly random subset of fixed size, and the same documents however many more
    /// the round generated.
    pub text: TextStats,
    /// Distinct-n over the first `stats_words` words of the chain's documents and MTLD over the words of
    /// the first `stats_docs`: statistics that do not rise when documents shrink.
    pub robust: LengthRobustStats,
    /// The chain's documents (kept ones, under redraw).
    pub generated: usize,
    /// Draws behind them (more than `generated` under redraw) and how many of those were cut at the cap.
    pub drawn: usize,
    pub truncated: usize,
    pub empty: usize,
    pub replacement_char: usize,
}

impl GenerationStats {
    /// The chain's first `own` kept documents of a round's `samples` (in generation order, cut draws of a
    /// redraw among them), under the cap `cap`.
    pub fn of(
        samples: &[Sample],
        own: usize,
        stats_docs: usize,
        stats_words: usize,
        cap: usize,
    ) -> Self {
        // The draws this chain's documents took: up to and including its own-th kept one.
        let mut used = 0;
        let mut kept = Vec::with_capacity(own);
        for s in samples {
            if kept.len() == own {
                break;
            }
            used += 1;
            if !s.dropped {
                kept.push(s);
            }
        }
        let draws = &samples[..used];
        let texts = || kept.iter().map(|s| s.text.as_str());
        let count = |f: &dyn Fn(&Sample) -> bool| kept.iter().filter(|s| f(s)).count();
        let mut robust = LengthRobustStats::of(texts(), stats_words);
        robust.mtld = LengthRobustStats::of(texts().take(stats_docs), stats_words).mtld;
        Self {
            text: TextStats::of(texts().take(stats_docs)),
            robust,
            generated: kept.len(),
            drawn: draws.len(),
            truncated: draws.iter().filter(|s| s.is_truncated(cap)).count(),
            empty: count(&|s| s.new_tokens == 0),
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
    let (_, samples) = read_samples_file(&path)?;
    // Candidate counts depend on the schedule alone, not on the pool.
    let candidates = match (&spec.curation, &cfg.curation) {
        (Some(_), Some(c)) => Some(candidate_counts(c.max_candidates, &spec, &plan)?),
        _ => None,
    };
    let own = to_generate_after(&plan, candidates.as_deref(), row.round).max(want);
    // Rows old enough to need this predate "auto": their config names the cap.
    let cap = match cfg.generation.max_new_tokens {
        crate::config::MaxNewTokens::Tokens(n) => n,
        crate::config::MaxNewTokens::Auto => row.gen_max_new_tokens,
    };
    let g = GenerationStats::of(&samples, own, want, cfg.generation.stats_words, cap);
    set_generation_stats(row, &g);
    Ok(())
}

fn set_generation_stats(row: &mut MetricsRow, g: &GenerationStats) {
    row.generated_docs = g.generated;
    row.stats_docs = g.text.documents;
    row.gen_mean_words = g.text.mean_words;
    row.gen_distinct_1 = g.text.distinct_1;
    row.gen_distinct_2 = g.text.distinct_2;
    row.gen_unigram_entropy = g.text.unigram_entropy;
    row.gen_empty = g.empty;
    row.gen_truncated = g.truncated;
    row.gen_replacement_char = g.replacement_char;
    row.stats_words = g.robust.words;
    row.gen_distinct_1_words = g.robust.distinct_1;
    row.gen_distinct_2_words = g.robust.distinct_2;
    row.gen_mtld = g.robust.mtld;
    row.gen_drawn = g.drawn;
}

/// Quantiles 5, 25, 50, 75 and 95% (linear interpolation between order statistics, R's type 7).
fn quantiles(xs: &[f64]) -> Option<[f64; 5]> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let h = q * (v.len() - 1) as f64;
        let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
        v[lo] + (h - lo as f64) * (v[hi] - v[lo])
    };
    Some([0.05, 0.25, 0.5, 0.75, 0.95].map(at))
}

/// The tails of a round: per-document perplexity quantiles of the held-out plots under the round's model,
/// and of its generated plots under the repetition's round-0 model (the picture model-collapse papers show:
/// what a later model writes grows improbable under the first one, and real plots improbable under later
/// ones). Written to `tails.json` so `report` needs no model.
#[derive(Debug, Serialize, Deserialize)]
struct TailsRecord {
    heldout_docs: usize,
    heldout_doc_ppl: Option<[f64; 5]>,
    generated_docs: usize,
    generated_round0_ppl: Option<[f64; 5]>,
    wall_s: f64,
}

/// Per-document perplexity of each document under `model`, scored as in training (see
/// [`LanguageModel::score`]).
fn doc_perplexities<'a>(
    model: &dyn LanguageModel,
    docs: impl Iterator<Item = &'a [u32]>,
    eot: u32,
) -> Result<Vec<f64>> {
    docs.map(|d| Ok(model.score(d, eot, false)?.mean_nll.exp()))
        .collect()
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
    let (mut finished, mut chains) = (0, 0);
    let mut by_round = Vec::new();
    for s in settings {
        let mut reps_at = vec![0usize; cfg.schedule.rounds];
        let n0 = s.schedule.plan(cfg.schedule.rounds, usize::MAX)?.rounds[0].new_docs;
        for rep in 0..cfg.experiment.repetitions {
            let done = (0..cfg.schedule.rounds)
                .take_while(|&t| {
                    round_dir(root, &s.name, rep, t)
                        .join("metrics.json")
                        .exists()
                })
                .count();
            for r in reps_at.iter_mut().take(done) {
                *r += 1;
            }
            chains += 1;
            finished += usize::from(done == cfg.schedule.rounds);
            let next = if done == cfg.schedule.rounds {
                "done".to_string()
            } else {
                let rd = phase_dir(root, &s.name, n0, rep, done);
                let phase = if rd.join("tails.json").exists() {
                    "metrics"
                } else if rd.join("samples.jsonl.zst").exists() {
                    "tails"
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
        by_round.push((s.name, reps_at));
    }
    // What a report made now would rest on: how many repetitions each round has.
    out.push_str(&format!(
        "\n{finished} of {chains} chains finished{}\nrepetitions with each round finished (round 0, 1, ...):\n",
        if finished < chains {
            format!("; {} not finished", chains - finished)
        } else {
            String::new()
        }
    ));
    for (name, reps) in by_round {
        let reps: Vec<String> = reps.iter().map(usize::to_string).collect();
        out.push_str(&format!("{name:<w$}  {}\n", reps.join(", ")));
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

/// What `calibrate` trains: the config (with the command line's overrides applied) and its choices.
#[derive(Debug, Clone)]
pub struct CalibrateArgs {
    pub config: Config,
    /// Where the config came from (names the default directory).
    pub config_path: PathBuf,
    /// Steps to train round 0 for (default: 4 x the steps the config gives round 0).
    pub steps: Option<u64>,
    /// Held-out loss every this many steps (default: steps / 50).
    pub eval_every: Option<u64>,
    /// The repetition whose split and seeds to use (default: the config's `repetitions`, the first one the
    /// experiment does not run).
    pub rep: Option<usize>,
    /// Where to keep the calibration (default: runs/<config name>-calibrate).
    pub out: Option<PathBuf>,
}

/// What `calibrate` found, written to `calibration.json`.
#[derive(Debug, Serialize)]
pub struct Calibration {
    pub repetition: usize,
    pub documents: usize,
    pub train_tokens: usize,
    pub tokens_per_step: usize,
    pub steps: u64,
    /// What the config gives round 0.
    pub config_steps: u64,
    pub config_heldout_nll: Option<f64>,
    pub best_step: u64,
    pub best_heldout_nll: f64,
    /// Passes over round 0's tokens at the best step: the value for `steps = { passes = ... }`.
    pub best_passes: f64,
    pub heldout: Vec<(u64, f64)>,
    pub losses: Vec<(u64, f64)>,
}

/// Trains round 0 of one repetition with the held-out curve and says where it is lowest. With a constant
/// learning rate a longer run passes through exactly the states of a shorter one (every batch is keyed by
/// its step), so the curve gives round 0's held-out loss at any step count up to `steps`.
/// Returns what it found (also in `OUT/calibration.json`) and the directory OUT.
pub fn calibrate(a: CalibrateArgs, models: &dyn Models) -> Result<(Calibration, PathBuf)> {
    let mut cfg = a.config;
    let rep = a.rep.unwrap_or(cfg.experiment.repetitions);
    cfg.experiment.repetitions = rep + 1;
    if a.eval_every == Some(0) {
        bail!("--eval-every must be at least 1");
    }
    // The curve is what this is for; its interval is fixed below once the steps are known.
    cfg.training.eval_every = a.eval_every.unwrap_or(1);
    let out = a.out.unwrap_or_else(|| {
        let mut p = default_out(&a.config_path).into_os_string();
        p.push("-calibrate");
        PathBuf::from(p)
    });
    check_models(&cfg, models)?;
    let dir = RunDir::open(&out, &cfg)?;
    let mut ctx = prepare(cfg, &dir, models)?;
    let setting = ctx.cfg.settings()?.remove(0);
    let rp = ctx.plans[&setting.name].rounds[0].clone();
    let ids = &ctx.splits[rep].pool[rp.pool_offset..rp.pool_offset + rp.fresh];
    let stream = token_stream(
        ids.iter().map(|&i| ctx.doc_tokens[i].as_slice()),
        ctx.tok.eot(),
    );
    let (batch, block) = (ctx.cfg.training.batch_size, ctx.cfg.model.block_size);
    let config_steps = ctx
        .cfg
        .training
        .steps
        .for_tokens(stream.len(), batch, block);
    let steps = a.steps.unwrap_or(4 * config_steps);
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    ctx.cfg.training.eval_every = a.eval_every.unwrap_or((steps / 50).max(1));
    let cd = out.join("calibration").join(format!("rep-{rep}"));
    std::fs::create_dir_all(&cd).with_context(|| format!("cannot create {}", cd.display()))?;
    let mut progress = Progress::new(1, 0);
    progress.start_round(format!("calibration of round 0, repetition {rep}"));
    let mut job = round_job(&ctx, rep, 0);
    job.steps = Steps::Count(steps);
    let rec = if cd.join("train.json").exists() {
        read_json::<TrainRecord>(&cd.join("train.json"))?
    } else {
        train_phase(&ctx, &cd, &progress, stream.clone(), &job)?.1
    };
    progress.finish_round();
    progress.finish();
    let (best_step, best) = rec
        .heldout_best()
        .context("the calibration recorded no held-out curve")?;
    let cal = Calibration {
        repetition: rep,
        documents: ids.len(),
        train_tokens: stream.len(),
        tokens_per_step: batch * block,
        steps: rec.steps,
        config_steps,
        config_heldout_nll: rec
            .heldout
            .iter()
            .find(|(s, _)| *s == config_steps)
            .map(|x| x.1),
        best_step,
        best_heldout_nll: best,
        best_passes: (best_step as usize * batch * block) as f64 / stream.len() as f64,
        heldout: rec.heldout.clone(),
        losses: rec.losses.clone(),
    };
    write_atomic(
        &out.join("calibration.json"),
        serde_json::to_string_pretty(&cal)?.as_bytes(),
    )?;
    Ok((cal, out))
}
