//! The GPT behind the pipeline's seam ([`lm::ModelKind`]): a model configuration on a device, trained by
//! [`Trainer`], evaluated and scored by this crate's [`perplexity`] and [`score_document`], sampled by
//! [`gpt::generate`], saved as safetensors.

use candle_core::{DType, Device};
use gpt::{GenerateConfig, Gpt, GptConfig};
use lm::{DocumentScore, Evaluation, LanguageModel, Sampling, TrainJob, Training};

use crate::{perplexity, score_document, AdamW, Batcher, Trainer};

/// The file names of a GPT's checkpoint parts.
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

fn model_err(e: impl std::fmt::Display) -> lm::Error {
    lm::Error::Model(e.to_string())
}

/// A GPT as the pipeline sees it.
pub struct GptModel(pub Gpt);

impl LanguageModel for GptModel {
    fn evaluate(&self, tokens: &[u32], batch: usize) -> lm::Result<Evaluation> {
        perplexity(&self.0, tokens, batch).map_err(model_err)
    }

    fn score(&self, doc: &[u32], eot: u32, entropy: bool) -> lm::Result<DocumentScore> {
        score_document(&self.0, doc, eot, entropy).map_err(model_err)
    }

    fn generate(
        &self,
        prompt: &[u32],
        count: usize,
        s: &Sampling,
        seed: u64,
        first_stream: u64,
    ) -> lm::Result<Vec<Vec<u32>>> {
        let gc = GenerateConfig {
            max_new_tokens: s.max_new_tokens,
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            stop_token: s.stop_token,
        };
        gpt::generate(&self.0, prompt, count, &gc, seed, first_stream).map_err(model_err)
    }

    fn to_bytes(&self) -> lm::Result<Vec<u8>> {
        self.0.to_safetensors().map_err(model_err)
    }
}

/// GPT models of one configuration on one device, started from a seeded initialisation or from given
/// weights (`model.init_from`).
pub struct GptKind {
    pub config: GptConfig,
    pub device: Device,
    /// The starting weights as safetensors bytes: each training deserialises its own copy (a clone of a
    /// `Gpt` would share, and train, the same variables).
    init: Option<Vec<u8>>,
    /// The device and precision in words, for the records (see [`lm::ModelKind::device`]).
    label: String,
}

impl GptKind {
    pub fn new(config: GptConfig, device: Device) -> Self {
        Self {
            config,
            label: format!("{device:?}"),
            device,
            init: None,
        }
    }

    /// The words [`lm::ModelKind::device`] records (the device's name and the precision of its matmuls,
    /// which only the binary knows).
    pub fn labelled(self, label: String) -> Self {
        Self { label, ..self }
    }

    /// Every training starts from `model`'s weights (with this configuration's dropout); its shape must be
    /// the configuration's.
    pub fn starting_from(mut self, model: &Gpt) -> crate::Result<Self> {
        self.init = Some(model.to_safetensors()?);
        Ok(self)
    }

    fn check(&self, model: &Gpt, what: &str) -> lm::Result<()> {
        if model.config() != &self.config {
            return Err(lm::Error::Mismatch(format!(
                "{what} holds a model of another config"
            )));
        }
        Ok(())
    }

    fn training(
        &self,
        model: Gpt,
        opt: Option<AdamW>,
        job: TrainJob,
    ) -> lm::Result<Box<dyn Training>> {
        let TrainJob {
            settings,
            batch_seed,
            stream,
            ..
        } = job;
        // Refused here, before the first step, when D_t cannot fill one window.
        Batcher::new(
            &stream,
            self.config.block_size,
            settings.batch_size,
            batch_seed,
        )
        .map_err(model_err)?;
        let trainer = match opt {
            Some(opt) => Trainer::resume(model, opt, settings, batch_seed),
            None => Trainer::new(model, settings, batch_seed),
        }
        .map_err(model_err)?;
        Ok(Box::new(GptTraining { trainer, stream }))
    }
}

impl lm::ModelKind for GptKind {
    fn parts(&self) -> &'static [&'static str] {
        &[MODEL_FILE, OPTIMIZER_FILE]
    }

    fn device(&self) -> String {
        self.label.clone()
    }

    fn start(&self, job: TrainJob) -> lm::Result<Box<dyn Training>> {
        let model = match &self.init {
            Some(bytes) => {
                let mut m =
                    Gpt::from_safetensors(bytes, "model.init_from", DType::F32, &self.device)
                        .map_err(model_err)?;
                m.set_dropout(self.config.dropout);
                m
            }
            None => Gpt::new(&self.config, job.init_seed, DType::F32, &self.device)
                .map_err(model_err)?,
        };
        self.training(model, None, job)
    }

    fn resume(
        &self,
        job: TrainJob,
        parts: &[(&str, Vec<u8>)],
        step: u64,
    ) -> lm::Result<Box<dyn Training>> {
        let part = |name: &str| {
            parts
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, b)| b.as_slice())
                .ok_or_else(|| lm::Error::Model(format!("the checkpoint has no {name}")))
        };
        let model = Gpt::from_safetensors(part(MODEL_FILE)?, MODEL_FILE, DType::F32, &self.device)
            .map_err(|e| lm::Error::Model(format!("{MODEL_FILE} is unreadable ({e})")))?;
        self.check(&model, "the checkpoint")?;
        let opt = AdamW::from_safetensors(part(OPTIMIZER_FILE)?, OPTIMIZER_FILE, model.params())
            .map_err(|e| lm::Error::Model(format!("{OPTIMIZER_FILE} is unreadable ({e})")))?;
        if opt.steps_taken() != step {
            return Err(lm::Error::Mismatch(format!(
                "optimizer at step {}, state says {step}",
                opt.steps_taken()
            )));
        }
        self.training(model, Some(opt), job)
    }

    fn load(&self, bytes: &[u8], what: &str) -> lm::Result<Box<dyn LanguageModel>> {
        let model = Gpt::from_safetensors(bytes, what, DType::F32, &self.device)
            .map_err(|e| lm::Error::Model(format!("{what} is unreadable ({e})")))?;
        self.check(&model, what)?;
        Ok(Box::new(GptModel(model)))
    }
}

/// A GPT's training: the trainer (its model wrapped for the seam) and the stream its batches are drawn
/// from.
struct GptTraining {
    trainer: Trainer,
    stream: Vec<u32>,
}

impl Training for GptTraining {
    fn steps(&self) -> u64 {
        self.trainer.cfg.steps
    }

    fn tokens_per_step(&self) -> usize {
        self.trainer.cfg.batch_size * self.trainer.model.config().block_size
    }

    fn step(&self) -> u64 {
        self.trainer.step()
    }

    fn train_step(&mut self, read_loss: bool) -> lm::Result<Option<f64>> {
        let t = &self.trainer;
        let batcher = Batcher::new(
            &self.stream,
            t.model.config().block_size,
            t.cfg.batch_size,
            t.seed,
        )
        .map_err(model_err)?;
        let loss = self.trainer.train_step(&batcher).map_err(model_err)?;
        if !read_loss {
            return Ok(None);
        }
        let v = loss
            .to_dtype(DType::F64)
            .and_then(|l| l.to_scalar::<f64>())
            .map_err(model_err)?;
        Ok(Some(v))
    }

    fn evaluate(&self, tokens: &[u32], batch: usize) -> lm::Result<Evaluation> {
        perplexity(&self.trainer.model, tokens, batch).map_err(model_err)
    }

    fn into_model(self: Box<Self>) -> Box<dyn LanguageModel> {
        Box::new(GptModel(self.trainer.model))
    }

    fn parts(&self) -> lm::Result<Vec<(&'static str, Vec<u8>)>> {
        Ok(vec![
            (
                MODEL_FILE,
                self.trainer.model.to_safetensors().map_err(model_err)?,
            ),
            (
                OPTIMIZER_FILE,
                self.trainer.opt.to_safetensors().map_err(model_err)?,
            ),
        ])
    }
}
