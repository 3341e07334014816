//! The experiment's TOML configuration. Defaults are the paper's; unknown keys are errors that name the key
//! and its line.

mod curation;

use std::path::{Path, PathBuf};

use corpus::{Alpha, CleanConfig, Schedule, Setting, Size};
use lm::{AdamWConfig, LrSchedule, Sampling, TrainConfig};
use serde::{Deserialize, Serialize};
use theory::{Filter, ModelClass, Simulation, Truth};

pub use curation::{
    candidate_counts, plan_pool, verifier_reserve, Confidence, CurationSection, FilterSpec,
    RoundCandidates, SelfScore,
};

/// What is wrong with a config: the file, its TOML, or a value the experiment cannot run with. Each message
/// names the file or the key and, where it can, what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: check the path", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML that does not parse, or a key the config does not have.
    #[error("{name}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Syntax {
        name: String,
        line: Option<usize>,
        message: String,
    },
    /// A config that parses but cannot run, with the file's name.
    #[error("invalid config {name}")]
    Invalid {
        name: String,
        #[source]
        source: Box<ConfigError>,
    },
    /// A value outside what the experiment accepts; the message names its key.
    #[error("{0}")]
    Value(String),
    #[error("setting {name:?} is not in this config (it runs {runs})")]
    UnknownSetting { name: String, runs: String },
    /// A schedule or a curation plan the corpus crate refuses, with where (a setting, a round).
    #[error("{at}")]
    Plan {
        at: String,
        #[source]
        source: corpus::Error,
    },
    #[error("invalid [theory] section")]
    Theory(#[source] theory::Error),
    #[error(transparent)]
    Corpus(#[from] corpus::Error),
    #[error(transparent)]
    Training(#[from] lm::Error),
}

pub type Result<T> = std::result::Result<T, ConfigError>;

/// Returns early with a [`ConfigError::Value`] made from a format string.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(ConfigError::Value(format!($($arg)*)))
    };
}
pub(crate) use bail;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelSection,
    pub training: TrainingSection,
    pub data: DataSection,
    pub generation: GenerationSection,
    pub schedule: ScheduleSection,
    pub experiment: ExperimentSection,
    pub theory: TheorySection,
    /// Filters applied to each round's candidates before D_t is composed; absent: every candidate is used,
    /// as before curation existed (and the frozen config is what it was).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curation: Option<CurationSection>,
    /// Endpoints fixed in the config before the run, which `report` computes.
    #[serde(skip_serializing_if = "ReportSection::is_empty")]
    pub report: ReportSection,
}

/// `[report]`: endpoints of an experiment, written into its config before any result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSection {
    /// `[[report.recovery]]`: the fraction of the gain from doubling the real data that synthetic data
    /// recovers at one round, f = [L(base) - L(mixed)] / [L(base) - L(doubled)] on held-out mean NLL per
    /// token (and on log risk, for models that report a risk), paired within repetitions, with Fieller's
    /// 95% interval.
    pub recovery: Vec<Recovery>,
    /// `[[report.contrast]]`: the paired difference a - b of held-out mean NLL (and of log risk, for models
    /// that report one) at each listed round, with Holm's adjustment over those rounds on each scale.
    pub contrast: Vec<Contrast>,
}

impl ReportSection {
    pub fn is_empty(&self) -> bool {
        self.recovery.is_empty() && self.contrast.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recovery {
    pub name: String,
    pub round: usize,
    /// The chain trained on the round's fresh documents alone (e.g. fresh-only).
    pub base: String,
    /// The chain trained on the same fresh documents plus synthetic ones (e.g. decaying-alpha).
    pub mixed: String,
    /// The chain trained on twice the real documents (e.g. a custom schedule of 2 n fresh).
    pub doubled: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contrast {
    pub name: String,
    pub a: String,
    pub b: String,
    pub rounds: Vec<usize>,
}

/// `collapse-lab theory`: the statistical model run under the same schedules as the GPT experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TheorySection {
    /// categorical, gaussian, gmm or logistic.
    pub model: ModelClass,
    /// K, for the categorical model.
    pub categories: usize,
    /// How p is drawn: `{ kind = "uniform" }`, `{ kind = "zipf", s = 1.0 }` or `{ kind = "dirichlet", a = 1.0 }`.
    pub truth: Truth,
    pub repetitions: usize,
    pub seed: u64,
    /// The appendix-D classifier, `{ e1 = 0.1, e2 = 0.3 }`; absent: no filter.
    pub filter: Option<Filter>,
}

impl Default for TheorySection {
    fn default() -> Self {
        Self {
            model: ModelClass::Categorical,
            categories: 10,
            truth: Truth::Zipf { s: 1.0 },
            repetitions: 1000,
            seed: 0,
            filter: None,
        }
    }
}

impl TheorySection {
    pub fn simulation(&self) -> Simulation {
        Simulation {
            model: self.model,
            categories: self.categories,
            truth: self.truth,
            repetitions: self.repetitions,
            seed: self.seed,
            filter: self.filter.unwrap_or(Filter::NONE),
        }
    }
}

/// The model (the paper's GPT-2 shape by default); its vocabulary size comes from the tokenizer. The
/// pipeline does not read these fields: the binary's mapping from `[model]` to a model kind does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Which kind of model: `"gpt"` (the default; the fields below) or `"ngram"` (`[model.ngram]`).
    #[serde(skip_serializing_if = "is_gpt")]
    pub kind: String,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub block_size: usize,
    pub dropout: f64,
    pub bias: bool,
    /// Start every round from these weights instead of a random initialisation: a model.safetensors of a
    /// run, or a Hugging Face GPT-2 directory. Its shape must be the section's (and its vocabulary the
    /// tokenizer's).
    pub init_from: Option<String>,
    /// `[model.ngram]`, the n-gram model's settings (order, smoothing, risk contexts), read by its kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ngram: Option<toml::Table>,
}

fn is_gpt(kind: &str) -> bool {
    kind == "gpt"
}

impl Default for ModelSection {
    /// The paper's model: 4 layers, 4 heads, 256 embd, 128 context, no dropout, biases.
    fn default() -> Self {
        Self {
            kind: "gpt".into(),
            n_layer: 4,
            n_head: 4,
            n_embd: 256,
            block_size: 128,
            dropout: 0.0,
            bias: true,
            init_from: None,
            ngram: None,
        }
    }
}

/// How long a round trains: a fixed number of steps (`steps = 3000`), or passes over the round's training
/// tokens, `steps = { passes = 25.0, min = 100, max = 20000 }`: ceil(passes x |D_t tokens| / (batch x
/// block)) steps, clamped to [min, max], decided from D_t's token count before training starts. The theory's
/// estimator is the fit to all of D_t; a fixed count makes passes fall as D_t grows.
#[derive(Debug, Clone, PartialEq)]
pub enum Steps {
    Count(u64),
    Passes(PassesSpec),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassesSpec {
    pub passes: f64,
    #[serde(default = "default_min_steps")]
    pub min: u64,
    #[serde(default = "default_max_steps")]
    pub max: u64,
}

fn default_min_steps() -> u64 {
    1
}

fn default_max_steps() -> u64 {
    1_000_000
}

impl Steps {
    /// The steps for a token stream of `tokens` tokens in batches of `batch` windows of `block` tokens.
    pub fn for_tokens(&self, tokens: usize, batch: usize, block: usize) -> u64 {
        match self {
            Steps::Count(n) => *n,
            Steps::Passes(p) => {
                let want = (p.passes * tokens as f64 / (batch * block) as f64).ceil() as u64;
                want.clamp(p.min, p.max)
            }
        }
    }

    /// The fewest steps any round may train (for validating the optimizer settings).
    pub fn least(&self) -> u64 {
        match self {
            Steps::Count(n) => *n,
            Steps::Passes(p) => p.min,
        }
    }

    fn validate(&self) -> Result<()> {
        if let Steps::Passes(p) = self {
            if !(p.passes.is_finite() && p.passes > 0.0) {
                bail!("training.steps.passes must be positive, got {}", p.passes);
            }
            if p.min == 0 || p.max < p.min {
                bail!(
                    "training.steps needs 1 <= min <= max, got min = {}, max = {}",
                    p.min,
                    p.max
                );
            }
        }
        Ok(())
    }
}

impl Serialize for Steps {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Steps::Count(n) => s.serialize_u64(*n),
            Steps::Passes(p) => p.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Steps {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Steps;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of steps, or { passes = P, min = A, max = B }")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Steps, E> {
                Ok(Steps::Count(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Steps, E> {
                u64::try_from(v)
                    .map(Steps::Count)
                    .map_err(|_| E::custom(format!("steps must be positive, got {v}")))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<Steps, A::Error> {
                PassesSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Steps::Passes)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSection {
    pub steps: Steps,
    pub batch_size: usize,
    pub lr: LrSchedule,
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip; 0 turns clipping off.
    pub grad_clip: f64,
    /// Save model and optimizer every this many steps, so an interrupted round loses at most this many.
    pub checkpoint_every: u64,
    /// Record the training loss every this many steps.
    pub log_every: u64,
    /// Windows per evaluation batch.
    pub eval_batch_size: usize,
    /// Keep each round's final optimizer state beside its model (128 MB a round at the paper's size).
    pub keep_optimizer_state: bool,
    /// Held-out loss every this many steps during training (nanoGPT's `eval_interval`), recorded in
    /// train.json beside the training loss; 0: only after training.
    pub eval_every: u64,
    /// Held-out tokens that curve is measured on (the first of the repetition's held-out stream); 0: all.
    pub eval_tokens: usize,
}

impl Default for TrainingSection {
    fn default() -> Self {
        let t = TrainConfig::default();
        Self {
            steps: Steps::Count(t.steps),
            batch_size: t.batch_size,
            lr: t.lr,
            adamw: t.adamw,
            grad_clip: 1.0,
            checkpoint_every: 500,
            log_every: 50,
            eval_batch_size: 32,
            keep_optimizer_state: true,
            eval_every: 0,
            eval_tokens: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// A CSV / CSV.zst / JSONL file, a folder of .txt files, or hf://datasets/OWNER/NAME/FILE.
    pub source: String,
    /// The CSV column holding the text.
    pub column: String,
    pub clean: CleanConfig,
    /// `hf:OWNER/NAME`, a tokenizer.json, a folder with vocab.json + merges.txt, or `train:N`.
    pub tokenizer: String,
    /// With `train:N`, train on at most this many documents (0: every document no repetition holds out).
    pub tokenizer_training_docs: usize,
    pub heldout_docs: usize,
    /// A second evaluation set from another source (e.g. the 2020s plots), evaluated every round.
    pub second_eval: Option<String>,
    pub second_eval_column: String,
    /// Use at most this many documents of the second set.
    pub second_eval_docs: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            source: corpus::DEFAULT_SOURCE.to_string(),
            column: "Plot".into(),
            clean: CleanConfig::default(),
            tokenizer: "hf:openai-community/gpt2".into(),
            tokenizer_training_docs: 0,
            heldout_docs: 500,
            second_eval: None,
            second_eval_column: "plot".into(),
            second_eval_docs: 500,
        }
    }
}

/// The most tokens a generated document may have: a number, or `"auto"`, one more than the 99.5th
/// percentile of the corpus documents' token lengths under the run's tokenizer, so that a model that writes
/// plots as long as real ones is rarely cut (1,900 GPT-2 tokens on the movie plots).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxNewTokens {
    Tokens(usize),
    Auto,
}

/// The percentile of real document lengths `"auto"` covers.
pub const AUTO_CAP_QUANTILE: f64 = 0.995;

impl MaxNewTokens {
    /// The cap for a corpus whose documents have these token lengths.
    pub fn resolve(&self, lengths: impl Iterator<Item = usize>) -> usize {
        match self {
            MaxNewTokens::Tokens(n) => *n,
            MaxNewTokens::Auto => {
                let mut l: Vec<usize> = lengths.collect();
                l.sort_unstable();
                if l.is_empty() {
                    return 1;
                }
                // Nearest rank: the smallest length at least 99.5% of documents do not exceed; one more
                // token so that such a document's end-of-text still fits.
                let rank = ((AUTO_CAP_QUANTILE * l.len() as f64).ceil() as usize).clamp(1, l.len());
                l[rank - 1] + 1
            }
        }
    }
}

impl Serialize for MaxNewTokens {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            MaxNewTokens::Tokens(n) => s.serialize_u64(*n as u64),
            MaxNewTokens::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for MaxNewTokens {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MaxNewTokens;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of tokens or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Self::Value, E> {
                Ok(MaxNewTokens::Tokens(v as usize))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Self::Value, E> {
                usize::try_from(v)
                    .map(MaxNewTokens::Tokens)
                    .map_err(|_| E::custom(format!("max_new_tokens must be positive, got {v}")))
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<Self::Value, E> {
                match v {
                    "auto" => Ok(MaxNewTokens::Auto),
                    _ => Err(E::custom(format!(
                        "max_new_tokens must be a number of tokens or \"auto\", got {v:?}"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// What a generated document cut at `max_new_tokens` (without drawing `<|endoftext|>`) becomes in the next
/// round's corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Truncation {
    /// Followed by `<|endoftext|>` like a finished one, as before this option existed: the next model learns
    /// that plots end at the cap.
    Finished,
    /// Kept without the `<|endoftext|>` that says "a plot ends here": the next document follows directly.
    Open,
    /// Dropped and drawn again until the round has enough finished documents (at most `max_draws` x the
    /// documents it needs). Keeps only the plots shorter than the cap: the kept ones are the model's
    /// distribution conditioned on ending in time, biased toward short plots.
    Redraw,
}

/// How synthetic documents reach the next round's corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Carry {
    /// Decoded to text and encoded again, as a web page would be (before this option existed, the only way):
    /// byte sequences that are not UTF-8 become U+FFFD and other token ids.
    Text,
    /// The token ids the model drew (a run's tokenizer is fixed, so they are valid within the run).
    Tokens,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationSection {
    /// A number of tokens, or "auto" (see [`MaxNewTokens`]). The paper's ~150 words are 200 GPT-2 tokens
    /// (1.3 tokens per word in this corpus), which cuts 69% of real plots.
    pub max_new_tokens: MaxNewTokens,
    /// What a document cut at the cap becomes: "finished", "open" or "redraw".
    pub truncated: Truncation,
    /// Under "redraw", the most documents drawn per document a round needs.
    pub max_draws: f64,
    /// How synthetic documents reach the next round: "text" or "tokens".
    pub carry: Carry,
    /// Length-robust statistics of generated plots (distinct-n) are measured on the first this many words of
    /// the round's documents.
    pub stats_words: usize,
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    /// Sequences generated at once.
    pub batch_size: usize,
    /// Every round writes at least this many documents, and the text statistics of generated plots are
    /// measured on the first `min_docs` of each round: the same sample size in every round and setting.
    pub min_docs: usize,
    /// The text every document is generated after: `<|endoftext|>` (the paper's, and the start of a new
    /// document in training), or any text, e.g. "\n" as nanoGPT's sample.py.
    pub prompt: String,
}

impl Default for GenerationSection {
    /// Draws from the model itself: temperature 1, no top-k or top-p, from `<|endoftext|>`.
    fn default() -> Self {
        Self {
            max_new_tokens: MaxNewTokens::Auto,
            truncated: Truncation::Finished,
            max_draws: 10.0,
            carry: Carry::Text,
            stats_words: 1000,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            batch_size: 256,
            min_docs: 100,
            prompt: EOT_PROMPT.into(),
        }
    }
}

/// Names of custom schedules and curation filters become directory names (and `+` joins the two, so it is
/// not allowed in either).
fn is_directory_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_')
}

/// Curated chains are numbered setting x CURATION_STRIDE + filter, so they sort by setting, then filter.
pub const CURATION_STRIDE: usize = 100;

/// The prompt that means "start a new document": GPT-2's end-of-text token, whatever its id.
pub const EOT_PROMPT: &str = "<|endoftext|>";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    /// Documents per round.
    pub n: usize,
    pub rounds: usize,
    /// Names (or numbers 0-3) of the settings to run.
    pub settings: Vec<String>,
    /// Fresh fraction of the fixed-alpha setting.
    pub alpha: f64,
    /// Schedules of the config's own, run after the settings above and reported under their names.
    pub custom: Vec<CustomSchedule>,
}

/// A named schedule beside the presets: `[[schedule.custom]]` with `name`, `size` (`{ kind = "fixed" |
/// "linear" | "quadratic", n = N }` or `{ kind = "list", sizes = [...] }`), `alpha` (`{ kind = "zero" }`,
/// `{ kind = "fixed", alpha = A }`, `{ kind = "power", p = P }` for (t + 1)^-P, or `{ kind = "list", values =
/// [...] }`) and `accumulate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomSchedule {
    pub name: String,
    pub size: Size,
    pub alpha: Alpha,
    #[serde(default)]
    pub accumulate: bool,
    /// With `accumulate`: n_t is |D_t| (each round adds n_t - n_{t-1}), not the documents added.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub size_is_total: bool,
}

impl CustomSchedule {
    pub fn schedule(&self) -> Schedule {
        Schedule {
            size: self.size.clone(),
            alpha: self.alpha.clone(),
            accumulate: self.accumulate,
            size_is_total: self.size_is_total,
        }
    }
}

/// A schedule the config runs, under its name: one of the paper's four settings or a custom one. `number`
/// orders them: the presets' own numbers 0-4, then the custom schedules in the config's order from 5.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingSpec {
    pub name: String,
    pub number: usize,
    pub schedule: Schedule,
    /// The curation filter of this chain (`[curation]` runs every setting under every filter).
    pub curation: Option<FilterSpec>,
}

impl std::fmt::Display for SettingSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Default for ScheduleSection {
    fn default() -> Self {
        Self {
            n: 1000,
            rounds: 10,
            settings: Setting::PAPER
                .iter()
                .map(|s| s.name().to_string())
                .collect(),
            alpha: 0.5,
            custom: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentSection {
    pub repetitions: usize,
    pub seed: u64,
    /// cpu, cuda or cuda:N. Not part of a run's identity: a run may resume on another device.
    pub device: String,
    /// TF32 tensor-core matmuls on CUDA (off: full f32 products).
    pub tf32: bool,
}

impl Default for ExperimentSection {
    fn default() -> Self {
        Self {
            repetitions: 10,
            seed: 0,
            device: "cpu".into(),
            tf32: true,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses TOML; errors name the file, the line and the key.
    pub fn parse(text: &str, name: &str) -> Result<Self> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            name: name.to_string(),
            line: e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
            message: e.message().trim().to_string(),
        })?;
        cfg.validate().map_err(|e| ConfigError::Invalid {
            name: name.to_string(),
            source: Box::new(e),
        })?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// The settings to run: the presets named in `schedule.settings`, then every custom schedule.
    pub fn settings(&self) -> Result<Vec<SettingSpec>> {
        let sc = &self.schedule;
        let mut out: Vec<SettingSpec> = Vec::new();
        for s in &sc.settings {
            let s = Setting::parse(s)?;
            if !out.iter().any(|o| o.number == s.number()) {
                out.push(SettingSpec {
                    name: s.name().to_string(),
                    number: s.number(),
                    schedule: s.schedule(sc.n, sc.alpha),
                    curation: None,
                });
            }
        }
        for (i, c) in sc.custom.iter().enumerate() {
            let name = &c.name;
            if !is_directory_name(name) {
                bail!("schedule.custom name {name:?}: use lower-case letters, digits, '-' and '_' (it names a directory)");
            }
            if Setting::parse(name).is_ok() || out.iter().any(|o| &o.name == name) {
                bail!("schedule.custom name {name:?} is taken: every setting needs its own name");
            }
            out.push(SettingSpec {
                name: name.clone(),
                number: Setting::ALL.len() + i,
                schedule: c.schedule(),
                curation: None,
            });
        }
        if out.is_empty() {
            bail!(
                "no setting to run: name at least one of {} in schedule.settings, or define a [[schedule.custom]]",
                Setting::ALL.map(|s| s.name()).join(", ")
            );
        }
        let Some(cur) = &self.curation else {
            return Ok(out);
        };
        if cur.filters.is_empty() {
            bail!("[curation] has no filter: add [[curation.filters]] (kind = \"none\" is the unfiltered baseline) or remove the section");
        }
        for (i, f) in cur.filters.iter().enumerate() {
            let name = f.name();
            if !is_directory_name(name) {
                bail!("curation filter name {name:?}: use lower-case letters, digits, '-' and '_' (it names directories)");
            }
            if cur.filters[..i].iter().any(|g| g.name() == name) {
                bail!("curation filter name {name:?} is taken: every filter needs its own name");
            }
            f.validate()?;
        }
        // Settings in their order, each under every filter in the config's order.
        Ok(out
            .iter()
            .flat_map(|s| {
                cur.filters
                    .iter()
                    .enumerate()
                    .map(move |(i, f)| SettingSpec {
                        name: format!("{}+{}", s.name, f.name()),
                        number: s.number * CURATION_STRIDE + i,
                        schedule: s.schedule.clone(),
                        curation: Some(f.clone()),
                    })
            })
            .collect())
    }

    /// The setting called `name` (a preset's name or number, or a custom schedule's name).
    pub fn setting(&self, name: &str) -> Result<SettingSpec> {
        let all = self.settings()?;
        let preset = Setting::parse(name).ok();
        all.iter()
            .find(|s| {
                s.name == name
                    || (s.curation.is_none() && preset.is_some_and(|p| p.number() == s.number))
            })
            .cloned()
            .ok_or_else(|| ConfigError::UnknownSetting {
                name: name.to_string(),
                runs: all
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The training settings; `steps` is the fewest a round may train (the pipeline sets each round's from its
    /// token count, see [`Steps`]).
    pub fn train(&self) -> TrainConfig {
        let t = &self.training;
        TrainConfig {
            steps: t.steps.least(),
            batch_size: t.batch_size,
            lr: t.lr.clone(),
            adamw: t.adamw.clone(),
            grad_clip: (t.grad_clip > 0.0).then_some(t.grad_clip),
        }
    }

    /// The sampling settings with the run's resolved cap (see [`MaxNewTokens`]).
    pub fn sampling(&self, stop_token: u32, max_new_tokens: usize) -> Sampling {
        let g = &self.generation;
        Sampling {
            max_new_tokens,
            temperature: g.temperature,
            top_k: g.top_k,
            top_p: g.top_p,
            stop_token: Some(stop_token),
        }
    }

    /// Every section but `[model]`, whose validity is the model kind's (the binary checks it before a run).
    pub fn validate(&self) -> Result<()> {
        self.training.steps.validate()?;
        self.train().validate()?;
        let g = &self.generation;
        if !(g.temperature >= 0.0 && g.temperature.is_finite()) {
            bail!("generation.temperature must be >= 0, got {}", g.temperature);
        }
        if g.top_k == Some(0) {
            bail!("generation.top_k must be at least 1");
        }
        if let Some(p) = g.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            bail!("generation.top_p must be in (0, 1], got {p}");
        }
        // Every schedule plans as far as the config alone decides (the pool's size comes with the data).
        if self.schedule.rounds > 0 {
            for s in self.settings()? {
                let plan = s
                    .schedule
                    .plan(self.schedule.rounds, usize::MAX)
                    .map_err(|source| ConfigError::Plan {
                        at: format!("setting {s}"),
                        source,
                    })?;
                // Candidate counts depend on the schedule alone: a filter that needs too many is refused here.
                if let Some(c) = &self.curation {
                    candidate_counts(c.max_candidates, &s, &plan)?;
                }
            }
        }
        self.theory
            .simulation()
            .validate()
            .map_err(ConfigError::Theory)?;
        if !self.report.is_empty() {
            let names: Vec<String> = self.settings()?.into_iter().map(|s| s.name).collect();
            let known = |what: &str, chain: &str| -> Result<()> {
                if !names.iter().any(|n| n == chain) {
                    bail!(
                        "{what} names the chain {chain:?}, which this config does not run (it runs {})",
                        names.join(", ")
                    );
                }
                Ok(())
            };
            let last = self.schedule.rounds.saturating_sub(1);
            for r in &self.report.recovery {
                let what = format!("[[report.recovery]] {:?}", r.name);
                for c in [&r.base, &r.mixed, &r.doubled] {
                    known(&what, c)?;
                }
                if r.round > last {
                    bail!("{what}: round {} is past the last round, {last}", r.round);
                }
            }
            for c in &self.report.contrast {
                let what = format!("[[report.contrast]] {:?}", c.name);
                known(&what, &c.a)?;
                known(&what, &c.b)?;
                if let Some(r) = c.rounds.iter().find(|&&r| r > last) {
                    bail!("{what}: round {r} is past the last round, {last}");
                }
                if c.rounds.is_empty() {
                    bail!("{what}: list at least one round");
                }
            }
        }
        let checks = [
            (
                self.experiment.repetitions == 0,
                "experiment.repetitions must be at least 1",
            ),
            (
                self.schedule.rounds == 0,
                "schedule.rounds must be at least 1",
            ),
            (self.schedule.n == 0, "schedule.n must be at least 1"),
            (
                self.curation
                    .as_ref()
                    .is_some_and(|c| c.max_candidates.is_nan() || c.max_candidates < 1.0),
                "curation.max_candidates must be at least 1 (a multiple of each round's new documents)",
            ),
            (
                !(0.0..=1.0).contains(&self.schedule.alpha),
                "schedule.alpha must be in [0, 1]",
            ),
            (
                self.data.heldout_docs == 0,
                "data.heldout_docs must be at least 1",
            ),
            (
                self.training.checkpoint_every == 0,
                "training.checkpoint_every must be at least 1",
            ),
            (
                self.training.log_every == 0,
                "training.log_every must be at least 1",
            ),
            (
                self.training.eval_batch_size == 0,
                "training.eval_batch_size must be at least 1",
            ),
            (
                self.generation.batch_size == 0,
                "generation.batch_size must be at least 1",
            ),
            (
                self.generation.max_new_tokens == MaxNewTokens::Tokens(0),
                "generation.max_new_tokens must be at least 1",
            ),
            (
                self.generation.max_draws.is_nan() || self.generation.max_draws < 1.0,
                "generation.max_draws must be at least 1 (draws per document a round needs)",
            ),
            (
                self.generation.stats_words == 0,
                "generation.stats_words must be at least 1",
            ),
            (
                self.training.eval_every > 0 && self.training.eval_tokens == 1,
                "training.eval_tokens must be 0 (all) or at least 2",
            ),
            (
                self.generation.min_docs == 0,
                "generation.min_docs must be at least 1 (text statistics are measured on that many documents)",
            ),
            (
                self.generation.prompt.is_empty(),
                "generation.prompt must not be empty (\"<|endoftext|>\" starts a new document)",
            ),
        ];
        if let Some((_, msg)) = checks.iter().find(|(bad, _)| *bad) {
            bail!("{msg}");
        }
        Ok(())
    }

    /// The keys whose values differ between two configs, as `key: a -> b` lines (the device excluded).
    pub fn diff(&self, other: &Config) -> Vec<String> {
        let mut a = toml::Value::try_from(self).expect("serialises");
        let mut b = toml::Value::try_from(other).expect("serialises");
        for v in [&mut a, &mut b] {
            if let Some(e) = v.get_mut("experiment").and_then(|e| e.as_table_mut()) {
                e.remove("device");
            }
        }
        let mut out = Vec::new();
        diff_values("", &a, &b, &mut out);
        out
    }
}

fn diff_values(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(ta), toml::Value::Table(tb)) => {
            let mut keys: Vec<&String> = ta.keys().chain(tb.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (ta.get(k), tb.get(k)) {
                    (Some(x), Some(y)) => diff_values(&key, x, y, out),
                    (x, y) => out.push(format!("{key}: {} -> {}", show(x), show(y))),
                }
            }
        }
        _ if a != b => out.push(format!("{prefix}: {a} -> {b}")),
        _ => {}
    }
}

fn show(v: Option<&toml::Value>) -> String {
    v.map_or("(unset)".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error with its causes, as the binary prints it.
    fn chain(e: ConfigError) -> String {
        format!("{:#}", anyhow::Error::from(e))
    }

    #[test]
    fn defaults_are_the_papers() {
        let c = Config::parse("", "empty.toml").unwrap();
        assert_eq!(c.model, ModelSection::default());
        assert_eq!(
            (c.model.n_layer, c.model.n_embd, c.model.block_size),
            (4, 256, 128)
        );
        assert_eq!(c.training.steps, Steps::Count(3000));
        assert_eq!(c.training.batch_size, 32);
        assert_eq!(c.training.lr, LrSchedule::Constant { lr: 1e-3 });
        assert_eq!(c.schedule.n, 1000);
        assert_eq!(c.schedule.rounds, 10);
        assert_eq!(c.experiment.repetitions, 10);
        let names: Vec<String> = c.settings().unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, Setting::PAPER.map(|s| s.name().to_string()));
        assert_eq!(c.data.heldout_docs, 500);
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_line() {
        let e = Config::parse("[training]\nsteps = 10\nstepz = 3\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.toml line 3") && e.contains("stepz"), "{e}");
        let e = Config::parse("[trainin]\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("trainin"), "{e}");
        let e = chain(Config::parse("[schedule]\nsettings = [\"bogus\"]\n", "x.toml").unwrap_err());
        assert!(e.contains("unknown setting \"bogus\""), "{e}");
        let e = Config::parse("[training\nsteps = 1", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.toml line 1"), "{e}");
    }

    /// Custom schedules parse, plan and are refused like the presets; the paper's Figure 2 grid and the
    /// other reading of setting 2 are expressible.
    #[test]
    fn custom_schedules_parse_plan_and_refuse_like_presets() {
        let text = r#"
[schedule]
n = 100
rounds = 3
settings = ["fixed-alpha"]

[[schedule.custom]]
name = "n-fresh-plus-n-synthetic"
size = { kind = "fixed", n = 200 }
alpha = { kind = "fixed", alpha = 0.5 }

[[schedule.custom]]
name = "sqrt-decay-quadratic-acc"
size = { kind = "quadratic", n = 10 }
alpha = { kind = "power", p = 0.5 }
accumulate = true
"#;
        let c = Config::parse(text, "custom.toml").unwrap();
        let s = c.settings().unwrap();
        let names: Vec<(&str, usize)> = s.iter().map(|s| (s.name.as_str(), s.number)).collect();
        assert_eq!(
            names,
            [
                ("fixed-alpha", 2),
                ("n-fresh-plus-n-synthetic", 5),
                ("sqrt-decay-quadratic-acc", 6)
            ]
        );
        let plan = s[1].schedule.plan(3, 10_000).unwrap();
        let counts: Vec<(usize, usize, usize)> = plan
            .rounds
            .iter()
            .map(|r| (r.fresh, r.synthetic, r.total))
            .collect();
        assert_eq!(counts, [(200, 0, 200), (100, 100, 200), (100, 100, 200)]);
        let plan = s[2].schedule.plan(3, 10_000).unwrap();
        let counts: Vec<(usize, usize, usize)> = plan
            .rounds
            .iter()
            .map(|r| (r.fresh, r.synthetic, r.total))
            .collect();
        // n_t = 10 (t+1)^2, alpha_t = (t+1)^-1/2, accumulating: 40 x 0.707 = 28.3 -> 28 fresh; 90 / sqrt(3).
        assert_eq!(counts, [(10, 0, 10), (28, 12, 50), (52, 38, 140)]);
        assert!(c
            .setting("4")
            .unwrap_err()
            .to_string()
            .contains("not in this config"));
        assert_eq!(c.setting("n-fresh-plus-n-synthetic").unwrap().number, 5);
        assert_eq!(c.setting("2").unwrap().name, "fixed-alpha");
        let e = s[1].schedule.plan(3, 300).unwrap_err().to_string();
        assert!(e.contains("short by 100"), "{e}");

        let bad = |extra: &str| {
            chain(Config::parse(&format!("{text}{extra}"), "custom.toml").unwrap_err())
        };
        let e = bad("[[schedule.custom]]\nname = \"accumulate\"\nsize = { kind = \"fixed\", n = 1 }\nalpha = { kind = \"zero\" }\n");
        assert!(e.contains("\"accumulate\" is taken"), "{e}");
        let e = bad("[[schedule.custom]]\nname = \"n-fresh-plus-n-synthetic\"\nsize = { kind = \"fixed\", n = 1 }\nalpha = { kind = \"zero\" }\n");
        assert!(e.contains("is taken"), "{e}");
        let e = bad("[[schedule.custom]]\nname = \"Bad Name\"\nsize = { kind = \"fixed\", n = 1 }\nalpha = { kind = \"zero\" }\n");
        assert!(e.contains("lower-case letters"), "{e}");
        let e = bad("[[schedule.custom]]\nname = \"x\"\nsize = { kind = \"cubic\", n = 1 }\nalpha = { kind = \"zero\" }\n");
        assert!(e.contains("line") && e.contains("cubic"), "{e}");
        let e = bad("[[schedule.custom]]\nname = \"x\"\nsize = { kind = \"fixed\", n = 1 }\nalpha = { kind = \"fixed\", alpha = 1.5 }\n");
        assert!(e.contains("alpha must be in [0, 1]"), "{e}");
        let e = bad("[[schedule.custom]]\nname = \"x\"\nsize = { kind = \"fixed\", n = 0 }\nalpha = { kind = \"zero\" }\n");
        assert!(e.contains("n must be positive"), "{e}");
        let e = bad("[[schedule.custom]]\nname = \"x\"\nsize = { kind = \"fixed\", n = 1 }\nalfa = { kind = \"zero\" }\n");
        assert!(e.contains("alfa"), "{e}");
    }

    /// `[curation]` expands every setting under every filter, keeps presets addressable by name only, and
    /// gives a verifier its own architecture when asked.
    #[test]
    fn curation_expands_settings_and_sizes_verifiers() {
        let text = "[schedule]\nsettings = [\"fixed-alpha\", \"synthetic-only\"]\n[curation]\n\
            [[curation.filters]]\nname = \"none\"\nkind = \"none\"\n\
            [[curation.filters]]\nname = \"big\"\nkind = \"verifier\"\ndocs = 50\nfraction = 0.5\n\
            n_layer = 6\nn_embd = 384\n";
        let c = Config::parse(text, "c.toml").unwrap();
        let s: Vec<(String, usize)> = c
            .settings()
            .unwrap()
            .into_iter()
            .map(|s| (s.name, s.number))
            .collect();
        assert_eq!(
            s,
            [
                ("fixed-alpha+none".to_string(), 200),
                ("fixed-alpha+big".to_string(), 201),
                ("synthetic-only+none".to_string(), 0),
                ("synthetic-only+big".to_string(), 1),
            ]
        );
        assert!(c.setting("2").is_err());
        assert_eq!(c.setting("fixed-alpha+big").unwrap().number, 201);
        let v = c.curation.as_ref().unwrap().filters[1].clone();
        let g = v.verifier_model(&c.model);
        assert_eq!((g.n_layer, g.n_head, g.n_embd), (6, 4, 384));
        assert_eq!(g.init_from, None);
    }

    #[test]
    fn diff_lists_changed_keys_but_not_the_device() {
        let a = Config::default();
        let mut b = a.clone();
        b.training.steps = Steps::Count(7);
        b.experiment.device = "cuda".into();
        assert_eq!(a.diff(&b), ["training.steps: 3000 -> 7"]);
        let c = Config::parse(&a.to_toml(), "round-trip").unwrap();
        assert_eq!(c, a);
    }
}
