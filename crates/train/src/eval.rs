use candle_core::Tensor;
use gpt::Gpt;

use crate::{DocumentScore, Error, Evaluation, Result};

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

/// Scores `doc` as it appears in training, `<|endoftext|>` + tokens + `<|endoftext|>`: the NLL is exactly
/// [`perplexity`]'s over that stream (same windows, same arithmetic), and with `entropy` the mean entropy of
/// the next-token distributions at the same positions.
pub fn score_document(model: &Gpt, doc: &[u32], eot: u32, entropy: bool) -> Result<DocumentScore> {
    let mut stream = Vec::with_capacity(doc.len() + 2);
    stream.push(eot);
    stream.extend_from_slice(doc);
    stream.push(eot);
    let e = perplexity(model, &stream, 64)?;
    let mean_entropy = if entropy {
        let t = model.config().block_size;
        let predicted = stream.len() - 1;
        let mut sum = 0.0f64;
        for s in (0..predicted).step_by(t) {
            let len = t.min(predicted - s);
            let x = Tensor::from_vec(stream[s..s + len].to_vec(), (1, len), model.device())?;
            let logits = model
                .forward(&x)?
                .squeeze(0)?
                .to_dtype(candle_core::DType::F64)?
                .to_vec2::<f64>()?;
            for row in logits {
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = row.iter().map(|l| (l - m).exp()).sum();
                let log_z = z.ln() + m;
                // H = log Z - sum p l.
                let mean_logit: f64 = row.iter().map(|l| (l - log_z).exp() * l).sum();
                sum += log_z - mean_logit;
            }
        }
        sum / predicted as f64
    } else {
        f64::NAN
    };
    Ok(DocumentScore {
        tokens: e.tokens,
        mean_nll: e.mean_nll,
        mean_entropy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use gpt::GptConfig;

    /// A document's NLL score is the model's own NLL of it (a hand-rolled log-softmax over the full logits
    /// agrees), and its entropy is that of the softmax at each position, windows across block_size included.
    #[test]
    fn document_scores_are_the_models_own_nll_and_entropy() {
        let cfg = GptConfig {
            vocab_size: 37,
            block_size: 8,
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            dropout: 0.0,
            bias: true,
        };
        let model = Gpt::new(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
        let doc: Vec<u32> = (0..13).map(|i| (i * 7 % 36 + 1) as u32).collect();
        let s = score_document(&model, &doc, 0, true).unwrap();
        let mut stream = vec![0u32];
        stream.extend(&doc);
        stream.push(0);
        assert_eq!(s.tokens, 14);
        let (mut nll, mut ent) = (0.0f64, 0.0f64);
        for w in [0usize, 8] {
            let len = 8.min(14 - w);
            let x = Tensor::from_vec(stream[w..w + len].to_vec(), (1, len), &Device::Cpu).unwrap();
            let logits = model.forward(&x).unwrap().squeeze(0).unwrap();
            let rows = logits.to_vec2::<f32>().unwrap();
            for (i, row) in rows.iter().enumerate() {
                let lse = row.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
                nll += lse - row[stream[w + i + 1] as usize] as f64;
                ent -= row
                    .iter()
                    .map(|&l| {
                        let lp = l as f64 - lse;
                        lp.exp() * lp
                    })
                    .sum::<f64>();
            }
        }
        assert!(
            (s.mean_nll - nll / 14.0).abs() < 1e-5,
            "{} {}",
            s.mean_nll,
            nll / 14.0
        );
        assert!((s.mean_entropy - ent / 14.0).abs() < 1e-5);
        let e = perplexity(&model, &stream, 4).unwrap();
        assert_eq!(s.mean_nll, e.mean_nll);
    }
}
