use candle_core::Tensor;
use gpt::Gpt;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Exact next-token statistics of a model over a token stream.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub nll_sum: f64,
    /// Tokens predicted: every token of the stream but the first.
    pub tokens: usize,
    pub mean_nll: f64,
    pub perplexity: f64,
}

/// Perplexity `exp(mean NLL)` over every token of `tokens`, predicted from consecutive `block_size` windows
/// (token `i` is predicted from the window it falls in, never sampled), so the same model and stream always
/// give the same number. `batch_size` windows are evaluated at once.
pub fn perplexity(model: &Gpt, tokens: &[u32], batch_size: usize) -> Result<Evaluation> {
    let t = model.config().block_size;
    if tokens.len() < 2 {
        return Err(Error::TooFewTokens {
            len: tokens.len(),
            need: 2,
        });
    }
    let predicted = tokens.len() - 1;
    let full = predicted / t;
    let dev = model.device();
    let mut nll_sum = 0.0;
    let batch_size = batch_size.max(1);
    let mut w = 0;
    while w < full {
        let b = batch_size.min(full - w);
        let x: Vec<u32> = (w..w + b)
            .flat_map(|i| tokens[i * t..i * t + t].iter().copied())
            .collect();
        let y: Vec<u32> = (w..w + b)
            .flat_map(|i| tokens[i * t + 1..i * t + t + 1].iter().copied())
            .collect();
        nll_sum += model.nll_sum(
            &Tensor::from_vec(x, (b, t), dev)?,
            &Tensor::from_vec(y, (b, t), dev)?,
        )?;
        w += b;
    }
    let rest = predicted - full * t;
    if rest > 0 {
        let s = full * t;
        let x = Tensor::from_vec(tokens[s..s + rest].to_vec(), (1, rest), dev)?;
        let y = Tensor::from_vec(tokens[s + 1..s + rest + 1].to_vec(), (1, rest), dev)?;
        nll_sum += model.nll_sum(&x, &y)?;
    }
    let mean_nll = nll_sum / predicted as f64;
    Ok(Evaluation {
        nll_sum,
        tokens: predicted,
        mean_nll,
        perplexity: mean_nll.exp(),
    })
}
