use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The hyper-parameters of nanoGPT's `GPTConfig`, with the same names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub dropout: f64,
    /// Biases in the Linear layers and LayerNorms, as GPT-2 has.
    pub bias: bool,
}

impl GptConfig {
    /// The model of Bakshi & Chakraborty (arXiv 2602.10531): 4 layers, 4 heads, 256 embd, 128 context,
    /// GPT-2's BPE vocabulary.
    pub fn paper() -> Self {
        Self {
            vocab_size: 50257,
            block_size: 128,
            n_layer: 4,
            n_head: 4,
            n_embd: 256,
            dropout: 0.0,
            bias: true,
        }
    }

    /// A model small enough for unit tests and finite differences.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            block_size: 16,
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            dropout: 0.0,
            bias: true,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.vocab_size == 0 || self.block_size == 0 || self.n_layer == 0 || self.n_head == 0 {
            return bad(format!(
                "vocab_size, block_size, n_layer and n_head must be positive: {self:?}"
            ));
        }
        if self.n_embd == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_embd ({}) must be a positive multiple of n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.vocab_size > u32::MAX as usize {
            return bad(format!(
                "vocab_size {} does not fit token ids",
                self.vocab_size
            ));
        }
        Ok(())
    }

    /// Parameter count of the model this config builds (the tied `lm_head` counted once).
    pub fn num_params(&self, include_position_embeddings: bool) -> usize {
        let c = self.n_embd;
        let b = usize::from(self.bias);
        let ln = c + b * c;
        let attn = c * 3 * c + b * 3 * c + c * c + b * c;
        let mlp = c * 4 * c + b * 4 * c + 4 * c * c + b * c;
        let block = 2 * ln + attn + mlp;
        let wpe = if include_position_embeddings {
            self.block_size * c
        } else {
            0
        };
        self.vocab_size * c + wpe + self.n_layer * block + ln
    }

    /// nanoGPT's `estimate_mfu` numerator: FLOPs of one forward+backward per token, 6N + 12 L H Q T, with N
    /// the parameters nanoGPT counts (position embeddings excluded).
    pub fn train_flops_per_token(&self) -> f64 {
        let n = self.num_params(false) as f64;
        let (l, h, q, t) = (
            self.n_layer as f64,
            self.n_head as f64,
            self.head_dim() as f64,
            self.block_size as f64,
        );
        6.0 * n + 12.0 * l * h * q * t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_preset_has_the_papers_parameter_count() {
        let c = GptConfig::paper();
        assert_eq!(c.num_params(true), 16_058_112);
        assert_eq!(c.num_params(false), 16_025_344);
    }

    #[test]
    fn invalid_configs_are_refused() {
        let mut c = GptConfig::paper();
        c.n_head = 3;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("multiple of n_head"));
        let mut c = GptConfig::paper();
        c.dropout = 1.0;
        assert!(c.validate().is_err());
        assert!(GptConfig::paper().validate().is_ok());
    }
}
