//! The seam between the round pipeline and a kind of language model.
//!
//! The pipeline (crate `experiment`) creates, trains, checkpoints, evaluates, samples, scores and loads models
//! only through [`ModelKind`], [`Training`] and [`LanguageModel`]; each kind of model implements them in its
//! own crates (the GPT in `train`), and only the binary's mapping from `[model]` to an implementation names
//! them. This crate also holds the plain data both sides exchange: training settings, evaluations, document
//! scores and sampling settings.
//!
//! It knows nothing of tensors, tokenizers, run directories or rounds.

use std::any::Any;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Errors of the seam; each says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid training settings: {0}")]
    Settings(String),
    /// A saved model or checkpoint that is not the kind's configured model (another shape or vocabulary).
    #[error("{0}")]
    Mismatch(String),
    /// Anything a model implementation reports, with its own message.
    #[error("{0}")]
    Model(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// torch.optim.AdamW's hyper-parameters as nanoGPT sets them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to every tensor of two or more dimensions (embeddings included) and
    /// to no bias or LayerNorm parameter.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<()> {
        let ok = (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps > 0.0
            && self.weight_decay >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(Error::Settings(format!(
                "AdamW needs betas in [0, 1), eps > 0, weight_decay >= 0: {self:?}"
            )))
        }
    }
}

/// Learning rate per step: constant, or nanoGPT's linear warm-up then cosine decay to a floor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LrSchedule {
    Constant {
        lr: f64,
    },
    Cosine {
        lr: f64,
        warmup_steps: u64,
        decay_steps: u64,
        min_lr: f64,
    },
}

impl LrSchedule {
    pub fn at(&self, step: u64) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::Cosine {
                lr,
                warmup_steps,
                decay_steps,
                min_lr,
            } => {
                if step < warmup_steps {
                    return lr * (step + 1) as f64 / (warmup_steps + 1) as f64;
                }
                if step > decay_steps {
                    return min_lr;
                }
                let ratio =
                    (step - warmup_steps) as f64 / (decay_steps - warmup_steps).max(1) as f64;
                min_lr + 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()) * (lr - min_lr)
            }
        }
    }

    pub fn validate(&self) -> Result<()> {
        let ok = match *self {
            LrSchedule::Constant { lr } => lr > 0.0,
            LrSchedule::Cosine {
                lr,
                warmup_steps,
                decay_steps,
                min_lr,
            } => lr > 0.0 && (0.0..=lr).contains(&min_lr) && decay_steps >= warmup_steps,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Settings(format!(
                "invalid learning-rate schedule {self:?}"
            )))
        }
    }
}

/// One training run from scratch, as the paper configures it by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: LrSchedule,
    pub adamw: AdamWConfig,
    /// Clip gradients to this global norm (nanoGPT's `grad_clip`); `None` disables clipping.
    pub grad_clip: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 3000,
            batch_size: 32,
            lr: LrSchedule::Constant { lr: 1e-3 },
            adamw: AdamWConfig::default(),
            grad_clip: Some(1.0),
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.batch_size == 0 {
            return Err(Error::Settings(
                "steps and batch_size must be positive".into(),
            ));
        }
        if self.grad_clip.is_some_and(|c| c <= 0.0) {
            return Err(Error::Settings("grad_clip must be positive".into()));
        }
        self.lr.validate()?;
        self.adamw.validate()
    }
}

/// Exact next-token statistics of a model over a token stream.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    #[serde(with = "float")]
    pub nll_sum: f64,
    /// Tokens predicted: every token of the stream but the first.
    pub tokens: usize,
    #[serde(with = "float")]
    pub mean_nll: f64,
    #[serde(with = "float")]
    pub perplexity: f64,
}

/// How a model sees one document: its per-token NLL and the mean entropy of its next-token distributions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DocumentScore {
    /// Tokens predicted: the document's and the closing `<|endoftext|>`.
    pub tokens: usize,
    pub mean_nll: f64,
    /// Mean entropy (nats) of the next-token distribution at each predicted position; NaN unless asked for.
    pub mean_entropy: f64,
}

/// How new tokens are drawn and when a sequence stops.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    /// A sequence ends when it draws this token (`<|endoftext|>`), which is not returned.
    pub stop_token: Option<u32>,
}

/// What one training trains on and how: its settings (steps already planned), its seeds, and D_t's stream.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub settings: TrainConfig,
    /// Seeds the initial weights (or whatever a kind draws once).
    pub init_seed: u64,
    /// Seeds every step's draws (batches, dropout): step s draws from a stream keyed by (seed, s), so a
    /// resumed training continues exactly.
    pub batch_seed: u64,
    pub stream: Vec<u32>,
}

/// A trained language model, as the round pipeline uses it.
pub trait LanguageModel: Send + Sync {
    /// Exact next-token statistics over `tokens`, `batch` windows at a time.
    fn evaluate(&self, tokens: &[u32], batch: usize) -> Result<Evaluation>;
    /// `doc` as it appears in training, `<|endoftext|>` + tokens + `<|endoftext|>`: its per-token NLL with
    /// exactly [`LanguageModel::evaluate`]'s arithmetic, and with `entropy` the mean next-token entropy.
    fn score(&self, doc: &[u32], eot: u32, entropy: bool) -> Result<DocumentScore>;
    /// `count` continuations of `prompt`: sequence i draws from its own RNG stream (seed, first_stream + i),
    /// so its text does not depend on the batch it ran in. The new tokens of each, without the stop token.
    fn generate(
        &self,
        prompt: &[u32],
        count: usize,
        sampling: &Sampling,
        seed: u64,
        first_stream: u64,
    ) -> Result<Vec<Vec<u32>>>;
    /// The model as its kind's [`ModelKind::load`] reads it back.
    fn to_bytes(&self) -> Result<Vec<u8>>;
    /// A distance of the model from its kind's reference ([`ModelKind::reference`]): `None` for kinds
    /// without one.
    fn risk(&self, _reference: &dyn Reference) -> Result<Option<f64>> {
        Ok(None)
    }
}

/// What a kind measures its models' risk against, built once from the whole corpus (see
/// [`ModelKind::reference`]); each kind downcasts its own.
pub trait Reference: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    /// Where the risk is the squared distance of one categorical estimate from the reference distribution
    /// q (and only there): c = 1 - ‖q‖², the constant of the paper's recurrence for the categorical model.
    fn categorical_c(&self) -> Option<f64> {
        None
    }
}

/// One training in progress.
pub trait Training {
    /// Steps this training takes (planned before the first).
    fn steps(&self) -> u64;
    /// Training tokens one step reads (batch x block for a GPT; the whole stream for a model that counts).
    fn tokens_per_step(&self) -> usize;
    /// Steps done.
    fn step(&self) -> u64;
    /// One step; its loss when `read_loss` (reading it may make a device wait).
    fn train_step(&mut self, read_loss: bool) -> Result<Option<f64>>;
    /// The model as trained so far, evaluated as [`LanguageModel::evaluate`] would (the held-out curve).
    fn evaluate(&self, tokens: &[u32], batch: usize) -> Result<Evaluation>;
    fn into_model(self: Box<Self>) -> Box<dyn LanguageModel>;
    /// The parts a checkpoint needs to continue exactly, as (file name, bytes): the model first.
    fn parts(&self) -> Result<Vec<(&'static str, Vec<u8>)>>;
}

/// A kind of model with its configuration: the pipeline's only way to make, train and load models.
pub trait ModelKind: Send + Sync {
    /// The file names of a training's checkpoint parts ([`Training::parts`]), the model's first.
    fn parts(&self) -> &'static [&'static str];
    /// The file a round's model is saved in (its first part).
    fn model_file(&self) -> &'static str {
        self.parts()[0]
    }
    /// A new training from the job's seeds (or the kind's starting weights).
    fn start(&self, job: TrainJob) -> Result<Box<dyn Training>>;
    /// The training saved as `parts` (named as [`Training::parts`] names them) after `step` steps.
    fn resume(
        &self,
        job: TrainJob,
        parts: &[(&str, Vec<u8>)],
        step: u64,
    ) -> Result<Box<dyn Training>>;
    /// A saved model; `what` names it in errors. A model of another configuration is [`Error::Mismatch`].
    fn load(&self, bytes: &[u8], what: &str) -> Result<Box<dyn LanguageModel>>;
    /// Where and how its models train and sample, recorded with every round ("cpu (2 threads), f32",
    /// "cuda:0 NVIDIA H200, tf32"): a resumed run may switch devices, and results depend on it.
    fn device(&self) -> String {
        "cpu".into()
    }
    /// Whether [`ModelKind::reference`] wants the whole corpus's token stream (building it costs a pass).
    fn wants_reference(&self) -> bool {
        false
    }
    /// The reference its models' [`LanguageModel::risk`] is measured against, from the whole corpus's token
    /// stream (every document, each followed by `<|endoftext|>`).
    fn reference(&self, _stream: &[u32]) -> Result<Option<Arc<dyn Reference>>> {
        Ok(None)
    }
}

/// Floats that may be infinite (the held-out perplexity of a model that gives an event probability 0) as
/// JSON: finite ones as numbers (as serde writes them), the others as the strings "inf", "-inf" and "NaN"
/// (JSON has no such numbers, and serde would write `null`). Use with `#[serde(with = "lm::float")]`; the
/// submodules do the same for `Option<f64>`, `Option<Vec<f64>>` and `Vec<(u64, f64)>`.
pub mod float {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// A float as JSON writes it; parsed from a number or one of the strings.
    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
    }

    fn repr(x: f64) -> Repr {
        if x.is_finite() {
            Repr::Number(x)
        } else if x.is_nan() {
            Repr::Text("NaN".into())
        } else if x > 0.0 {
            Repr::Text("inf".into())
        } else {
            Repr::Text("-inf".into())
        }
    }

    fn value<E: serde::de::Error>(r: Repr) -> Result<f64, E> {
        match r {
            Repr::Number(x) => Ok(x),
            Repr::Text(t) => match t.as_str() {
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                "NaN" => Ok(f64::NAN),
                _ => Err(E::custom(format!("{t:?} is not a number"))),
            },
        }
    }

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        repr(*x).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        value(Repr::deserialize(d)?)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            x.map(repr).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            Option::<Repr>::deserialize(d)?.map(value).transpose()
        }
    }

    pub mod vec_option {
        use super::*;

        pub fn serialize<S: Serializer>(x: &Option<Vec<f64>>, s: S) -> Result<S::Ok, S::Error> {
            x.as_ref()
                .map(|v| v.iter().map(|&x| repr(x)).collect::<Vec<_>>())
                .serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f64>>, D::Error> {
            Option::<Vec<Repr>>::deserialize(d)?
                .map(|v| v.into_iter().map(value).collect())
                .transpose()
        }
    }

    pub mod pairs {
        use super::*;

        pub fn serialize<S: Serializer>(x: &[(u64, f64)], s: S) -> Result<S::Ok, S::Error> {
            x.iter()
                .map(|&(k, v)| (k, repr(v)))
                .collect::<Vec<_>>()
                .serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u64, f64)>, D::Error> {
            Vec::<(u64, Repr)>::deserialize(d)?
                .into_iter()
                .map(|(k, r)| value(r).map(|v| (k, v)))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finite floats are written as before (numbers); infinite ones survive a round trip.
    #[test]
    fn infinite_evaluations_read_back() {
        let e = Evaluation {
            nll_sum: f64::INFINITY,
            tokens: 3,
            mean_nll: f64::INFINITY,
            perplexity: f64::INFINITY,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"nll_sum":"inf","tokens":3,"mean_nll":"inf","perplexity":"inf"}"#
        );
        let back: Evaluation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
        let finite = Evaluation {
            nll_sum: 1.5,
            tokens: 2,
            mean_nll: 0.75,
            perplexity: 0.75f64.exp(),
        };
        let json = serde_json::to_string(&finite).unwrap();
        assert!(
            json.starts_with(r#"{"nll_sum":1.5,"tokens":2,"mean_nll":0.75,"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Evaluation>(&json).unwrap(), finite);
    }
}
