//! The mapping from a config's `[model]` to an implementation of the pipeline's model seam: the one place
//! that names a model crate. Today every `[model]` is the GPT (`train::GptKind` on the run's device).

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use experiment::config::ModelSection;
use gpt::GptConfig;
use train::GptKind;

use crate::tools::load_model_on;

/// The models of a run on one device.
pub struct RunModels {
    pub device: Device,
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

impl experiment::Models for RunModels {
    fn validate(&self, m: &ModelSection) -> Result<()> {
        Ok(gpt_config(m, 1).validate()?)
    }

    fn kind(&self, m: &ModelSection, vocab_size: usize) -> Result<Box<dyn lm::ModelKind>> {
        let config = gpt_config(m, vocab_size);
        config.validate()?;
        let kind = GptKind::new(config.clone(), self.device.clone());
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
