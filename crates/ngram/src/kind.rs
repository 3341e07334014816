//! The n-gram model behind the pipeline's seam ([`lm::ModelKind`]): training is one step of counting,
//! checkpoints and models are one zstd-compressed file of counts, and the risk is measured against the
//! whole corpus's counts.

use std::any::Any;
use std::sync::Arc;

use lm::{DocumentScore, Evaluation, LanguageModel, Sampling, TrainJob, Training};

use crate::{Counts, Ngram, NgramConfig};

/// The file an n-gram model is saved in.
pub const MODEL_FILE: &str = "model.ngram.zst";

fn err(e: impl std::fmt::Display) -> lm::Error {
    lm::Error::Model(e.to_string())
}

fn compress(bytes: &[u8]) -> lm::Result<Vec<u8>> {
    zstd::encode_all(bytes, 3).map_err(err)
}

impl LanguageModel for Ngram {
    fn evaluate(&self, tokens: &[u32], _batch: usize) -> lm::Result<Evaluation> {
        Ok(Ngram::evaluate(self, tokens))
    }

    fn score(&self, doc: &[u32], eot: u32, entropy: bool) -> lm::Result<DocumentScore> {
        Ok(Ngram::score(self, doc, eot, entropy))
    }

    fn generate(
        &self,
        prompt: &[u32],
        count: usize,
        sampling: &Sampling,
        seed: u64,
        first_stream: u64,
    ) -> lm::Result<Vec<Vec<u32>>> {
        Ok(Ngram::generate(
            self,
            prompt,
            count,
            sampling,
            seed,
            first_stream,
        ))
    }

    fn to_bytes(&self) -> lm::Result<Vec<u8>> {
        compress(&Ngram::to_bytes(self))
    }

    fn risk(&self, reference: &dyn lm::Reference) -> lm::Result<Option<f64>> {
        let Some(r) = reference.as_any().downcast_ref::<Reference>() else {
            return Ok(None);
        };
        Ok(Some(Ngram::risk(self, &r.counts, r.contexts).0))
    }
}

/// The whole corpus's counts at the model's order, and how many of its most frequent contexts the risk
/// averages over.
pub struct Reference {
    pub counts: Counts,
    pub contexts: usize,
}

impl lm::Reference for Reference {
    fn as_any(&self) -> &dyn Any {
        self
    }

    /// Order 1 only: a unigram model is one categorical estimate, and its documents are runs of independent
    /// draws from it; at higher orders the contexts' estimates share tokens and the recurrence does not hold.
    fn categorical_c(&self) -> Option<f64> {
        let l = &self.counts.levels[0];
        (self.counts.levels() == 1).then(|| {
            let n = l.total.first().copied().unwrap_or(0).max(1) as f64;
            1.0 - l
                .counts
                .iter()
                .map(|&k| (k as f64 / n).powi(2))
                .sum::<f64>()
        })
    }
}

/// n-gram models of one configuration; the risk over the `risk_contexts` most frequent contexts.
pub struct NgramKind {
    pub config: NgramConfig,
    pub risk_contexts: usize,
}

impl lm::ModelKind for NgramKind {
    fn parts(&self) -> &'static [&'static str] {
        &[MODEL_FILE]
    }

    fn start(&self, job: TrainJob) -> lm::Result<Box<dyn Training>> {
        Ok(Box::new(NgramTraining {
            config: self.config.clone(),
            stream: job.stream,
            model: None,
        }))
    }

    fn resume(
        &self,
        job: TrainJob,
        parts: &[(&str, Vec<u8>)],
        step: u64,
    ) -> lm::Result<Box<dyn Training>> {
        let (_, bytes) = parts
            .iter()
            .find(|(n, _)| *n == MODEL_FILE)
            .ok_or_else(|| err(format!("the checkpoint has no {MODEL_FILE}")))?;
        let model = (step > 0)
            .then(|| self.load_ngram(bytes, MODEL_FILE))
            .transpose()?;
        Ok(Box::new(NgramTraining {
            config: self.config.clone(),
            stream: job.stream,
            model,
        }))
    }

    fn load(&self, bytes: &[u8], what: &str) -> lm::Result<Box<dyn LanguageModel>> {
        Ok(Box::new(self.load_ngram(bytes, what)?))
    }

    fn wants_reference(&self) -> bool {
        true
    }

    fn reference(&self, stream: &[u32]) -> lm::Result<Option<Arc<dyn lm::Reference>>> {
        let counts = Counts::of(stream, self.config.order, self.config.vocab_size).map_err(err)?;
        Ok(Some(Arc::new(Reference {
            counts,
            contexts: self.risk_contexts,
        })))
    }
}

impl NgramKind {
    fn load_ngram(&self, bytes: &[u8], what: &str) -> lm::Result<Ngram> {
        let raw =
            zstd::decode_all(bytes).map_err(|e| err(format!("{what} is unreadable ({e})")))?;
        let m = Ngram::from_bytes(&raw, what).map_err(err)?;
        if m.config() != &self.config {
            return Err(lm::Error::Mismatch(format!(
                "{what} holds a model of another config"
            )));
        }
        Ok(m)
    }
}

/// Counting D_t: one step.
struct NgramTraining {
    config: NgramConfig,
    stream: Vec<u32>,
    model: Option<Ngram>,
}

impl Training for NgramTraining {
    fn steps(&self) -> u64 {
        1
    }

    fn tokens_per_step(&self) -> usize {
        self.stream.len()
    }

    fn step(&self) -> u64 {
        u64::from(self.model.is_some())
    }

    fn train_step(&mut self, read_loss: bool) -> lm::Result<Option<f64>> {
        let m = Ngram::fit(self.config.clone(), &self.stream).map_err(err)?;
        // The training loss: the model's mean NLL on the stream it counted.
        let loss = read_loss.then(|| Ngram::evaluate(&m, &self.stream).mean_nll);
        self.model = Some(m);
        Ok(loss)
    }

    fn evaluate(&self, tokens: &[u32], _batch: usize) -> lm::Result<Evaluation> {
        match &self.model {
            Some(m) => Ok(Ngram::evaluate(m, tokens)),
            // Before counting the model knows nothing: every token equally likely.
            None => {
                let predicted = tokens.len().saturating_sub(1);
                let nll = (self.config.vocab_size as f64).ln();
                Ok(Evaluation {
                    nll_sum: nll * predicted as f64,
                    tokens: predicted,
                    mean_nll: nll,
                    perplexity: self.config.vocab_size as f64,
                })
            }
        }
    }

    fn into_model(self: Box<Self>) -> Box<dyn LanguageModel> {
        Box::new(self.model.expect("counted before it is used"))
    }

    fn parts(&self) -> lm::Result<Vec<(&'static str, Vec<u8>)>> {
        let m = self
            .model
            .as_ref()
            .ok_or_else(|| err("nothing counted yet"))?;
        Ok(vec![(MODEL_FILE, compress(&Ngram::to_bytes(m))?)])
    }
}
