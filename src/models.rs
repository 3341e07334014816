//! The mapping from a config's `[model]` to an implementation of the pipeline's model seam: the one place
//! that names a model crate. `kind = "gpt"` (the default) is `train::GptKind` on the run's device;
//! `kind = "ngram"` is `ngram::NgramKind`, configured by `[model.ngram]`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use experiment::config::ModelSection;
use experiment::ModelsResult;
use gpt::GptConfig;
use ngram::{NgramConfig, NgramKind, Smoothing};
use serde::Deserialize;
use train::GptKind;

use crate::device::describe_with_precision;
use crate::tools::load_model_on;

/// The models of a run on one device.
pub struct RunModels {
    pub device: Device,
    /// TF32 matmuls on CUDA (recorded with every round).
    pub tf32: bool,
}

/// The GPT a `[model]` section describes, for a tokenizer of `vocab_size` tokens.
pub fn gpt_config(m: &ModelSection, vocab_size: usize) -> GptConfig {
    GptConfig {
        vocab_size,
        block_size: m.block_size,
        n_layer: m.n_layer,
        n_head: m.n_head,
        n_embd: m.n_embd,
        dropout: m.dropout,
        bias: m.bias,
    }
}

/// `[model.ngram]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NgramSection {
    order: usize,
    /// `{ kind = "none" }`, `{ kind = "add-k", k = K }` or `{ kind = "kneser-ney", discount = D }` (D 0.75
    /// unless given; `base = "uniform"`, the default, or `"continuation"`).
    smoothing: Smoothing,
    /// The risk averages over the whole corpus's this many most frequent contexts.
    #[serde(default = "default_risk_contexts")]
    risk_contexts: usize,
}

fn default_risk_contexts() -> usize {
    10_000
}

fn ngram_section(m: &ModelSection) -> Result<NgramSection> {
    let table = m
        .ngram
        .clone()
        .context("kind = \"ngram\" needs a [model.ngram] section (order, smoothing)")?;
    let s: NgramSection = toml::Value::Table(table)
        .try_into()
        .context("invalid [model.ngram] section")?;
    if s.risk_contexts == 0 {
        bail!("model.ngram.risk_contexts must be at least 1");
    }
    Ok(s)
}

fn ngram_config(s: &NgramSection, vocab_size: usize) -> NgramConfig {
    NgramConfig {
        order: s.order,
        smoothing: s.smoothing,
        vocab_size,
    }
}

// The pipeline takes any error type from its models; the binary's carry their anyhow context.
impl experiment::Models for RunModels {
    fn validate(&self, m: &ModelSection) -> ModelsResult<()> {
        Ok(self.check(m)?)
    }

    fn kind(&self, m: &ModelSection, vocab_size: usize) -> ModelsResult<Box<dyn lm::ModelKind>> {
        Ok(self.make(m, vocab_size)?)
    }
}

impl RunModels {
    fn check(&self, m: &ModelSection) -> Result<()> {
        match m.kind.as_str() {
            "gpt" => {
                if m.ngram.is_some() {
                    bail!("[model.ngram] is for kind = \"ngram\"; this [model] is a GPT");
                }
                Ok(gpt_config(m, 1).validate()?)
            }
            "ngram" => Ok(ngram_config(&ngram_section(m)?, 1).validate()?),
            other => bail!("model.kind {other:?} is not a kind of model: use \"gpt\" or \"ngram\""),
        }
    }

    fn make(&self, m: &ModelSection, vocab_size: usize) -> Result<Box<dyn lm::ModelKind>> {
        self.check(m)?;
        if m.kind == "ngram" {
            let s = ngram_section(m)?;
            return Ok(Box::new(NgramKind {
                config: ngram_config(&s, vocab_size),
                risk_contexts: s.risk_contexts,
            }));
        }
        let config = gpt_config(m, vocab_size);
        config.validate()?;
        let kind = GptKind::new(config.clone(), self.device.clone())
            .labelled(describe_with_precision(&self.device, self.tf32));
        Ok(match &m.init_from {
            Some(path) => {
                Box::new(kind.starting_from(&initial_model(&config, &self.device, path)?)?)
            }
            None => Box::new(kind),
        })
    }
}

/// The weights every round starts from under `model.init_from`, with the run's dropout; a model of another
/// shape than the config's is refused with both shapes.
fn initial_model(want: &GptConfig, device: &Device, path: &str) -> Result<gpt::Gpt> {
    let mut m = load_model_on(Path::new(path), device, "fix model.init_from")
        .with_context(|| format!("model.init_from = {path:?}"))?;
    let got = m.config().clone();
    let shape = |c: &GptConfig| {
        (
            c.vocab_size,
            c.block_size,
            c.n_layer,
            c.n_head,
            c.n_embd,
            c.bias,
        )
    };
    if shape(&got) != shape(want) {
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
