//! Batched sampling with a KV cache.
//!
//! Up to `block_size` tokens, each step feeds one new token per sequence through the cache. Past it, the
//! model must see the last `block_size` tokens at positions `0..block_size` (nanoGPT crops the context and
//! recomputes): with learned absolute positions every cached key and value changes when the window slides,
//! so the window is re-prefilled rather than rotated.

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::fused::fast_exp_slice;
use crate::{Error, Gpt, KvCache, Result};

/// How new tokens are drawn and when a sequence stops.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    /// A sequence ends when it draws this token (GPT-2's `<|endoftext|>`), which is not returned.
    pub stop_token: Option<u32>,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 200,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            stop_token: Some(50256),
        }
    }
}

impl GenerateConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Generate(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1".into());
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!("top_p must be in (0, 1], got {p}"));
            }
        }
        Ok(())
    }

    pub fn sampler(&self) -> Sampler {
        Sampler {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
        }
    }
}

/// Draws one token from one row of logits: temperature, then top-k, then top-p (nucleus), as nanoGPT and
/// Hugging Face apply them.
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
}

impl Sampler {
    /// `logits` is overwritten. Draws one uniform from `rng` (none when greedy).
    pub fn sample(&self, logits: &mut [f32], rng: &mut ChaCha8Rng) -> u32 {
        if self.temperature == 0.0 {
            return self.sample_at(logits, 0.0);
        }
        self.sample_at(logits, rng.random::<f64>())
    }

    /// The token at quantile `r` (in `[0, 1)`) of the sampling distribution; `logits` is overwritten.
    pub fn sample_at(&self, logits: &mut [f32], r: f64) -> u32 {
        let v = logits.len();
        if self.temperature == 0.0 {
            let mut best = 0;
            for (i, &x) in logits.iter().enumerate() {
                if x > logits[best] {
                    best = i;
                }
            }
            return best as u32;
        }
        let inv_t = 1.0 / self.temperature;
        logits.iter_mut().for_each(|x| *x *= inv_t);
        // The fast exp never returns 0 (it clamps its argument), so tokens that top-k masks out are zeroed
        // after it rather than given -inf before it.
        let masked = self.top_k.filter(|&k| k < v).map(|k| {
            let mut sorted = logits.to_vec();
            let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let threshold = *kth;
            logits.iter().map(|&x| x < threshold).collect::<Vec<bool>>()
        });
        let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        fast_exp_slice(logits, max);
        if let Some(masked) = masked {
            for (p, m) in logits.iter_mut().zip(masked) {
                if m {
                    *p = 0.0;
                }
            }
        }
        let probs = logits;
        if let Some(p) = self.top_p.filter(|&p| p < 1.0) {
            let total = probs.iter().map(|&x| x as f64).sum();
            let kept = nucleus(probs, total, p as f64);
            return inverse_cdf(kept.iter().map(|&i| (i, probs[i as usize])), r);
        }
        inverse_cdf(probs.iter().enumerate().map(|(i, &p)| (i as u32, p)), r)
    }
}

impl Sampler {
    /// The distribution [`Sampler::sample_at`] draws from, in f64 with an exact exp (its reference, for
    /// tests and gpu-check): softmax of `logits / temperature` over the tokens at least the k-th largest,
    /// then over the smallest most-probable-first prefix (ties by token id) whose mass reaches p,
    /// renormalised. Not for greedy sampling (temperature 0).
    pub fn distribution(&self, logits: &[f32]) -> Vec<f64> {
        let t = self.temperature as f64;
        let x: Vec<f64> = logits.iter().map(|&l| l as f64 / t).collect();
        let mut order: Vec<usize> = (0..x.len()).collect();
        order.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
        if let Some(k) = self.top_k.filter(|&k| k < x.len()) {
            let kth = x[order[k - 1]];
            order.retain(|&i| x[i] >= kth);
        }
        let max = x[order[0]];
        let e: Vec<f64> = order.iter().map(|&i| (x[i] - max).exp()).collect();
        let mut keep = e.len();
        if let Some(p) = self.top_p.filter(|&p| p < 1.0) {
            let total: f64 = e.iter().sum();
            let mut cum = 0.0;
            keep = e
                .iter()
                .position(|w| {
                    cum += w;
                    cum >= p as f64 * total
                })
                .map_or(e.len(), |j| j + 1);
        }
        let kept: f64 = e[..keep].iter().sum();
        let mut probs = vec![0.0; x.len()];
        for (j, &i) in order[..keep].iter().enumerate() {
            probs[i] = e[j] / kept;
        }
        probs
    }
}

/// The token at quantile `r` in `[0, 1)` of the (unnormalised) weights. The total and the running sum are
/// the same f64 additions in the same order, so the running sum passes `r * total` before the end unless
/// `r * total` rounds up to `total` itself (probability about 2^-53); only then does it fall back to the last
/// token of non-zero weight, which is also what the exact quantile is there.
fn inverse_cdf<I>(weights: I, r: f64) -> u32
where
    I: Iterator<Item = (u32, f32)> + Clone,
{
    let total: f64 = weights.clone().fold(0.0, |acc, (_, w)| acc + w as f64);
    let target = r * total;
    let mut cum = 0.0;
    let mut last = None;
    for (i, w) in weights {
        if w > 0.0 {
            cum += w as f64;
            last = Some(i);
            if cum > target {
                return i;
            }
        }
    }
    last.unwrap_or(0)
}

/// The smallest set of most probable tokens whose mass reaches `p` of `total`, most probable first. Sorts
/// only as many candidates as it needs: the nucleus of a 50k vocabulary is usually a few hundred tokens.
fn nucleus(probs: &[f32], total: f64, p: f64) -> Vec<u32> {
    let mut cand: Vec<u32> = (0..probs.len() as u32)
        .filter(|&i| probs[i as usize] > 0.0)
        .collect();
    let by_prob = |a: &u32, b: &u32| {
        probs[*b as usize]
            .total_cmp(&probs[*a as usize])
            .then(a.cmp(b))
    };
    let mut k = 256.min(cand.len());
    loop {
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, by_prob);
        }
        cand[..k].sort_unstable_by(by_prob);
        let mut cum = 0.0;
        for j in 0..k {
            cum += probs[cand[j] as usize] as f64;
            if cum >= p * total {
                cand.truncate(j + 1);
                return cand;
            }
        }
        if k == cand.len() {
            return cand;
        }
        k = (k * 8).min(cand.len());
    }
}

/// Sequences per forward pass when the window is re-prefilled.
const REPREFILL_ROWS: usize = 32;

/// Step-by-step batched decoding: holds each sequence's context, the KV cache, and the logits of the next
/// token. All sequences have the same length (they start from prompts of equal length and advance together).
pub struct Decoder<'a> {
    model: &'a Gpt,
    cache: KvCache,
    tokens: Vec<Vec<u32>>,
    logits: Tensor,
}

impl<'a> Decoder<'a> {
    pub fn new(model: &'a Gpt, prompts: Vec<Vec<u32>>) -> Result<Self> {
        let len = prompts.first().map_or(0, |p| p.len());
        if len == 0 || prompts.iter().any(|p| p.len() != len) {
            return Err(Error::Generate(
                "prompts must be non-empty and of equal length".into(),
            ));
        }
        let vocab = model.config().vocab_size;
        if prompts.iter().flatten().any(|&t| t as usize >= vocab) {
            return Err(Error::Generate(format!(
                "a prompt token is outside the vocabulary of {vocab}"
            )));
        }
        let mut d = Self {
            model,
            cache: KvCache::default(),
            tokens: prompts,
            logits: Tensor::zeros(1, DType::F32, model.device())?,
        };
        d.prefill()?;
        Ok(d)
    }

    fn prefill(&mut self) -> Result<()> {
        let block = self.model.config().block_size;
        let len = self.tokens[0].len();
        let start = len.saturating_sub(block);
        self.cache.clear();
        if start == 0 {
            let window: Vec<u32> = self.tokens.iter().flatten().copied().collect();
            let idx = Tensor::from_vec(window, (self.tokens.len(), len), self.model.device())?;
            self.logits = self.model.forward_last(&idx, &mut self.cache)?;
            return Ok(());
        }
        // Past block_size every step re-prefills the window, so the cache is never read again: skip it, and
        // go through the batch in slices whose activations stay small enough to be reused step after step.
        let dev = self.model.device();
        let mut parts = Vec::new();
        for rows in self.tokens.chunks(REPREFILL_ROWS) {
            let window: Vec<u32> = rows
                .iter()
                .flat_map(|t| t[start..].iter().copied())
                .collect();
            let idx = Tensor::from_vec(window, (rows.len(), len - start), dev)?;
            parts.push(self.model.forward_last(&idx, &mut KvCache::default())?);
        }
        self.logits = Tensor::cat(&parts, 0)?;
        Ok(())
    }

    /// Logits `[B, vocab]` of the next token of every sequence still in the batch.
    pub fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// The full context of every sequence still in the batch.
    pub fn tokens(&self) -> &[Vec<u32>] {
        &self.tokens
    }

    /// Appends one token to every sequence and computes the next logits.
    pub fn push(&mut self, next: &[u32]) -> Result<()> {
        if next.len() != self.tokens.len() {
            return Err(Error::Generate(format!(
                "{} tokens for {} sequences",
                next.len(),
                self.tokens.len()
            )));
        }
        for (t, &n) in self.tokens.iter_mut().zip(next) {
            t.push(n);
        }
        if self.tokens[0].len() > self.model.config().block_size {
            return self.prefill();
        }
        let idx = Tensor::from_vec(next.to_vec(), (next.len(), 1), self.model.device())?;
        self.logits = self.model.forward_last(&idx, &mut self.cache)?;
        Ok(())
    }

    /// Keeps the sequences whose flag is true, in order.
    pub fn retain(&mut self, keep: &[bool]) -> Result<()> {
        let rows: Vec<u32> = (0..keep.len() as u32)
            .filter(|&i| keep[i as usize])
            .collect();
        if rows.len() == keep.len() {
            return Ok(());
        }
        retain_flagged(&mut self.tokens, keep);
        if rows.is_empty() {
            return Ok(());
        }
        let rows = Tensor::new(rows.as_slice(), self.model.device())?;
        self.cache.retain_rows(&rows)?;
        self.logits = self.logits.index_select(&rows, 0)?;
        Ok(())
    }
}

/// Generates `count` continuations of `prompt` in one batch. Sequence `i` draws from its own RNG stream
/// (`seed`, `first_stream + i`), so its text does not depend on the batch it ran in. Returns the new tokens of
/// each sequence, without the prompt and without the stop token.
pub fn generate(
    model: &Gpt,
    prompt: &[u32],
    count: usize,
    cfg: &GenerateConfig,
    seed: u64,
    first_stream: u64,
) -> Result<Vec<Vec<u32>>> {
    cfg.validate()?;
    if count == 0 || cfg.max_new_tokens == 0 {
        return Ok(vec![Vec::new(); count]);
    }
    if !model.device().is_cpu() {
        return generate_on_device(
            model,
            prompt,
            count,
            cfg,
            seed ^ first_stream.rotate_left(32),
        );
    }
    let sampler = cfg.sampler();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); count];
    let mut rngs: Vec<ChaCha8Rng> = (0..count as u64)
        .map(|i| {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            r.set_stream(first_stream + i);
            r
        })
        .collect();
    let mut active: Vec<usize> = (0..count).collect();
    let mut dec = Decoder::new(model, vec![prompt.to_vec(); count])?;
    let vocab = model.config().vocab_size;
    for step in 0..cfg.max_new_tokens {
        let mut logits = dec
            .logits()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let next: Vec<u32> = logits
            .par_chunks_mut(vocab)
            .zip(rngs.par_iter_mut())
            .map(|(row, rng)| sampler.sample(row, rng))
            .collect();
        let keep: Vec<bool> = next.iter().map(|&t| Some(t) != cfg.stop_token).collect();
        for (&s, (&t, &k)) in active.iter().zip(next.iter().zip(&keep)) {
            if k {
                out[s].push(t);
            }
        }
        if step + 1 == cfg.max_new_tokens {
            break;
        }
        let next_kept: Vec<u32> = next
            .iter()
            .zip(&keep)
            .filter(|(_, &k)| k)
            .map(|(&t, _)| t)
            .collect();
        retain_flagged(&mut active, &keep);
        retain_flagged(&mut rngs, &keep);
        if active.is_empty() {
            break;
        }
        dec.retain(&keep)?;
        dec.push(&next_kept)?;
    }
    Ok(out)
}

/// Sampling without leaving the device: each step draws the whole batch by the Gumbel-max trick (see
/// [`gumbel_argmax`]), feeds the new tokens straight back as the next input, and reads back only a
/// finished-flag every 16 steps and the tokens once at the end. Finished sequences keep running (their tokens
/// are cut at the stop token), which costs less on a GPU than compacting the batch. On a GPU the uniforms are
/// the device's, seeded with `seed`: one generator serves the whole batch, so a sequence's tokens depend on
/// the batch it ran in, and a run is reproducible on one device and batch size, not across them. On the CPU
/// (where candle's generator cannot be seeded) they come from a ChaCha stream seeded with `seed`, so a CPU
/// run of this path is reproducible and testable. Top-k and top-p filter each row on the device by
/// bisecting for its threshold ([`filter_on_device`]): candle's CUDA sort cannot sort vocabulary-wide rows.
/// The batch is drawn [`GUMBEL_ROWS`] rows at a time, which bounds the f64 temporaries of the Gumbel draw.
pub fn generate_on_device(
    model: &Gpt,
    prompt: &[u32],
    count: usize,
    cfg: &GenerateConfig,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    use candle_core::D;
    cfg.validate()?;
    let dev = model.device();
    let mut uniforms = Uniforms::new(dev, seed)?;
    let block = model.config().block_size;
    let prompt_t = Tensor::new(prompt, dev)?.unsqueeze(0)?.repeat((count, 1))?;
    let mut context = prompt_t.clone();
    let mut cache = KvCache::default();
    let start = prompt.len().saturating_sub(block);
    let mut logits = model.forward_last(
        &prompt_t.narrow(1, start, prompt.len() - start)?,
        &mut cache,
    )?;
    let stop = cfg
        .stop_token
        .map(|s| Tensor::full(s, count, dev))
        .transpose()?;
    let mut finished = Tensor::zeros(count, DType::U8, dev)?;
    let mut drawn = Vec::with_capacity(cfg.max_new_tokens);
    for step in 0..cfg.max_new_tokens {
        let next = if cfg.temperature == 0.0 {
            logits.argmax(D::Minus1)?
        } else {
            let mut parts = Vec::new();
            for start in (0..count).step_by(GUMBEL_ROWS) {
                let rows = logits.narrow(0, start, GUMBEL_ROWS.min(count - start))?;
                let rows = filter_on_device(&rows, cfg)?;
                let u = uniforms.draw(rows.shape())?;
                parts.push(gumbel_argmax(&rows, cfg.temperature as f64, &u)?);
            }
            Tensor::cat(&parts, 0)?
        };
        drawn.push(next.clone());
        if let Some(stop) = &stop {
            finished = finished.maximum(&next.eq(stop)?)?;
            if (step + 1) % 16 == 0 && finished.min(0)?.to_scalar::<u8>()? == 1 {
                break;
            }
        }
        if step + 1 == cfg.max_new_tokens {
            break;
        }
        context = Tensor::cat(&[&context, &next.unsqueeze(1)?], 1)?;
        let len = context.dim(1)?;
        logits = if len > block {
            cache.clear();
            model.forward_last(&context.narrow(1, len - block, block)?, &mut cache)?
        } else {
            model.forward_last(&next.unsqueeze(1)?, &mut cache)?
        };
    }
    let all = Tensor::stack(&drawn, 1)?.to_vec2::<u32>()?;
    Ok(all
        .into_iter()
        .map(|row| match cfg.stop_token {
            Some(s) => row.into_iter().take_while(|&t| t != s).collect(),
            None => row,
        })
        .collect())
}

/// Rows of a batch drawn at once on the device. The Gumbel draw holds about seven f64 `[rows, V]`
/// temporaries (uniforms, their clamp and logs, the scaled logits, their sum): at GPT-2's 50,257 tokens that
/// is 180 MB for 64 rows, against 2.8 GB for a batch of 1,000 drawn whole.
pub const GUMBEL_ROWS: usize = 64;

/// Bisection steps for a row's threshold: 64 halvings of an f64 interval reach adjacent values of any f32
/// range a row of logits or probabilities spans.
const BISECTION_STEPS: usize = 64;

/// Top-k, then top-p, of `logits` `[rows, V]` divided by the temperature, on their device: the tokens outside
/// get -inf, the others keep their logits. Each row's threshold is found by bisection (about 3 small kernels
/// a step), as candle has no vocabulary-wide sort on CUDA. Top-k keeps every logit at least the k-th
/// largest, as the host sampler does; top-p keeps every token whose probability is at least the smallest
/// one of the nucleus, so where several tokens tie at that probability all are kept (the host sampler takes
/// as many of them as reach p, in token order).
pub fn filter_on_device(logits: &Tensor, cfg: &GenerateConfig) -> Result<Tensor> {
    use candle_core::D;
    let v = logits.dim(D::Minus1)?;
    let top_k = cfg.top_k.filter(|&k| k < v);
    let top_p = cfg.top_p.filter(|&p| p < 1.0);
    if top_k.is_none() && top_p.is_none() || cfg.temperature == 0.0 {
        return Ok(logits.clone());
    }
    let x = (logits.to_dtype(DType::F32)? / cfg.temperature as f64)?;
    let neg_inf = x.ones_like()?.affine(0.0, f64::NEG_INFINITY)?;
    // The largest threshold per row (f64 [rows, 1]) with `enough(threshold)`, which must hold at `lo` and
    // be monotone: lo stays a value where it holds, hi one where it does not.
    let bisect = |values: &Tensor, enough: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<Tensor> {
        let values = values.to_dtype(DType::F64)?;
        let mut lo = values.min_keepdim(D::Minus1)?;
        let mut hi = (values.max_keepdim(D::Minus1)? + 1.0)?;
        for _ in 0..BISECTION_STEPS {
            let mid = ((&lo + &hi)? * 0.5)?;
            let ok = enough(&mid)?;
            lo = ok.where_cond(&mid, &lo)?;
            hi = ok.where_cond(&hi, &mid)?;
        }
        Ok(lo)
    };
    // The thresholds are found on the tempered logits; the tokens kept keep their own logits, which the
    // Gumbel draw divides by the temperature.
    let (mut x, mut out) = (x, logits.clone());
    let out_neg_inf = out.ones_like()?.affine(0.0, f64::NEG_INFINITY)?;
    if let Some(k) = top_k {
        let x64 = x.to_dtype(DType::F64)?;
        let at_least_k = |t: &Tensor| -> Result<Tensor> {
            let count = x64
                .broadcast_ge(t)?
                .to_dtype(DType::F64)?
                .sum_keepdim(D::Minus1)?;
            Ok(count.ge(k as f64)?)
        };
        let threshold = bisect(&x, &at_least_k)?;
        let keep = x64.broadcast_ge(&threshold)?;
        x = keep.where_cond(&x, &neg_inf)?;
        out = keep.where_cond(&out, &out_neg_inf)?;
    }
    if let Some(p) = top_p {
        let probs = candle_nn::ops::softmax_last_dim(&x)?.to_dtype(DType::F64)?;
        let mass_reaches_p = |t: &Tensor| -> Result<Tensor> {
            let kept = probs.broadcast_ge(t)?.to_dtype(DType::F64)?;
            Ok((kept * &probs)?.sum_keepdim(D::Minus1)?.ge(p as f64)?)
        };
        let threshold = bisect(&probs, &mass_reaches_p)?;
        let keep = probs.broadcast_ge(&threshold)?;
        out = keep.where_cond(&out, &out_neg_inf)?;
    }
    Ok(out)
}

/// The smallest and largest uniform the Gumbel transform sees. In f64 the largest value below 1 is
/// 1 - 2^-53, so the largest Gumbel value is -ln(-ln(1 - 2^-53)) = 36.7; a Gumbel variable exceeds that with
/// probability 1.1e-16, so the truncated tail moves no token's probability by more than about 1e-16 per draw.
/// At the other end, -ln(-ln(f64::MIN_POSITIVE)) = -6.56, exceeded from below with probability e^-708.
pub const GUMBEL_U_MIN: f64 = f64::MIN_POSITIVE;
pub const GUMBEL_U_MAX: f64 = 1.0 - f64::EPSILON / 2.0;

/// One draw per row of `softmax(logits / temperature)` by the Gumbel-max trick: `argmax(logits / T + G)` with
/// `G = -ln(-ln u)` is an exact draw. `u` (f64, the shape of `logits`) is clamped into
/// [`GUMBEL_U_MIN`, `GUMBEL_U_MAX`] first: curand's uniforms lie in (0, 1], and u = 1 would give G = +inf, a
/// uniformly random token whatever its logit. The sum is formed in f64, so the Gumbel tail is not cut at
/// f32's 16.6.
pub fn gumbel_argmax(logits: &Tensor, temperature: f64, u: &Tensor) -> Result<Tensor> {
    let u = u.to_dtype(DType::F64)?.clamp(GUMBEL_U_MIN, GUMBEL_U_MAX)?;
    let gumbel = u.log()?.neg()?.log()?.neg()?;
    let scaled = (logits.to_dtype(DType::F64)? / temperature)?;
    Ok((scaled + gumbel)?.argmax(candle_core::D::Minus1)?)
}

/// Where the device sampler's uniforms come from.
enum Uniforms {
    /// The device's own generator, seeded once.
    Device(candle_core::Device),
    /// A seeded host stream, for the CPU.
    Host(Box<ChaCha8Rng>),
}

impl Uniforms {
    fn new(dev: &candle_core::Device, seed: u64) -> Result<Self> {
        if dev.is_cpu() {
            return Ok(Self::Host(Box::new(ChaCha8Rng::seed_from_u64(seed))));
        }
        dev.set_seed(seed)?;
        Ok(Self::Device(dev.clone()))
    }

    /// Uniforms in [0, 1) (host) or (0, 1] (curand), in f64.
    fn draw(&mut self, shape: &candle_core::Shape) -> Result<Tensor> {
        Ok(match self {
            Self::Device(dev) => Tensor::rand(0f64, 1f64, shape, dev)?,
            Self::Host(rng) => {
                let v: Vec<f64> = (0..shape.elem_count()).map(|_| rng.random()).collect();
                Tensor::from_vec(v, shape, &candle_core::Device::Cpu)?
            }
        })
    }
}

fn retain_flagged<T>(v: &mut Vec<T>, keep: &[bool]) {
    let mut flags = keep.iter();
    v.retain(|_| *flags.next().expect("one flag per element"));
}

/// Pearson's chi-square of the device sampler's first tokens against the softmax it samples from.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ChiSquare {
    pub draws: usize,
    pub statistic: f64,
    pub degrees_of_freedom: usize,
    /// The statistic's upper 1e-6 quantile: a correct sampler exceeds it once in a million checks.
    pub bound: f64,
}

impl ChiSquare {
    pub fn passes(&self) -> bool {
        self.statistic < self.bound
    }
}

/// Draws the first token of `draws` sequences after `prompt` with [`generate_on_device`] under `cfg`'s
/// temperature, top-k and top-p, and compares their frequencies with the distribution the host sampler
/// draws from: `softmax(logits / temperature)` of the prompt's logits (in f64 on the host), restricted to the
/// top k, then to the nucleus of mass p, and renormalised.
pub fn device_sampler_chi_square(
    model: &Gpt,
    prompt: &[u32],
    draws: usize,
    cfg: &GenerateConfig,
    seed: u64,
) -> Result<ChiSquare> {
    let idx = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
    let logits: Vec<f32> = model
        .forward_last(&idx, &mut KvCache::default())?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let probs = cfg.sampler().distribution(&logits);
    let one = GenerateConfig {
        max_new_tokens: 1,
        stop_token: None,
        ..cfg.clone()
    };
    let mut counts = vec![0usize; logits.len()];
    for s in generate_on_device(model, prompt, draws, &one, seed)? {
        counts[s[0] as usize] += 1;
    }
    Ok(ChiSquare::of(&counts, &probs))
}

impl ChiSquare {
    /// Pearson's statistic of `counts` against `probs`; cells expected fewer than 5 times are pooled.
    pub fn of(counts: &[usize], probs: &[f64]) -> Self {
        let draws: usize = counts.iter().sum();
        let (mut statistic, mut cells) = (0.0, 0usize);
        let (mut pool_obs, mut pool_exp) = (0.0, 0.0);
        for (&c, &p) in counts.iter().zip(probs) {
            let expected = p * draws as f64;
            if expected < 5.0 {
                pool_obs += c as f64;
                pool_exp += expected;
            } else {
                statistic += (c as f64 - expected).powi(2) / expected;
                cells += 1;
            }
        }
        if pool_exp > 0.0 {
            statistic += (pool_obs - pool_exp).powi(2) / pool_exp;
            cells += 1;
        }
        let df = cells.saturating_sub(1).max(1);
        // Wilson-Hilferty: chi-square's quantile from the normal's (z = 4.753 at 1e-6), a few percent off
        // for df >= 3, far closer than a broken sampler's statistic comes.
        let a = 2.0 / (9.0 * df as f64);
        let bound = df as f64 * (1.0 - a + 4.753 * a.sqrt()).powi(3);
        Self {
            draws,
            statistic,
            degrees_of_freedom: df,
            bound,
        }
    }
}
