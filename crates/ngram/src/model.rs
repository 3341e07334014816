//! The model: probabilities (the formulas in the crate docs), exact evaluation, document scores, sampling
//! and the risk against a reference.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::counts::{key, Counts, Level, MAX_ORDER, MAX_VOCAB};
use crate::{Error, Result};

/// How counts become probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Smoothing {
    /// The maximum-likelihood estimate.
    None,
    /// Lidstone: add `k` to every count of the longest context.
    AddK { k: f64 },
    /// Interpolated Kneser-Ney with one discount; `base` ends the recursion.
    KneserNey {
        /// 0.75 unless given, a common fixed choice for a single discount (NLTK's default is 0.1; the
        /// reference check passes its discount explicitly).
        #[serde(default = "default_discount")]
        discount: f64,
        #[serde(default)]
        base: Base,
    },
}

fn default_discount() -> f64 {
    0.75
}

/// Where Kneser-Ney's recursion ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Base {
    /// The continuation unigram interpolated with the uniform distribution over the vocabulary: every token
    /// has positive probability.
    #[default]
    Uniform,
    /// The continuation unigram alone, as NLTK's `KneserNeyInterpolated`.
    Continuation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NgramConfig {
    pub order: usize,
    pub smoothing: Smoothing,
    pub vocab_size: usize,
}

impl NgramConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.order == 0 || self.order > MAX_ORDER {
            return bad(format!(
                "order must be 1 to {MAX_ORDER}, got {}",
                self.order
            ));
        }
        if self.vocab_size == 0 || self.vocab_size > MAX_VOCAB {
            return bad(format!(
                "the vocabulary must hold 1 to {MAX_VOCAB} tokens, got {}",
                self.vocab_size
            ));
        }
        match self.smoothing {
            Smoothing::AddK { k } if !(k.is_finite() && k > 0.0) => {
                bad(format!("add-k needs k > 0, got {k}"))
            }
            Smoothing::KneserNey { discount, .. } if !(discount > 0.0 && discount <= 1.0) => bad(
                format!("Kneser-Ney needs a discount in (0, 1], got {discount}"),
            ),
            _ => Ok(()),
        }
    }

    /// Levels of counts the model needs: its order, and bigrams at least for Kneser-Ney's continuation
    /// unigram.
    fn levels(&self) -> usize {
        match self.smoothing {
            Smoothing::KneserNey { .. } => self.order.max(2),
            _ => self.order,
        }
    }
}

/// An n-gram model: its configuration, its counts, and the cumulative weights sampling walks.
#[derive(Debug, Clone)]
pub struct Ngram {
    cfg: NgramConfig,
    counts: Counts,
    /// Per level, cumulative sampling weights over its entries (raw counts, less the discount under
    /// Kneser-Ney; continuation counts at Kneser-Ney's lower levels), restarting at each context.
    cum: Vec<Vec<f64>>,
}

/// A sampling step that found no continuation (a context the MLE never saw followed by anything).
const DEAD_END: Option<u32> = None;

impl Ngram {
    /// The model of `stream`'s counts.
    pub fn fit(cfg: NgramConfig, stream: &[u32]) -> Result<Self> {
        cfg.validate()?;
        let counts = Counts::of(stream, cfg.levels(), cfg.vocab_size)?;
        Self::from_counts(cfg, counts)
    }

    pub fn from_counts(cfg: NgramConfig, counts: Counts) -> Result<Self> {
        cfg.validate()?;
        if counts.levels() != cfg.levels() || counts.vocab_size() != cfg.vocab_size {
            return Err(Error::Config(format!(
                "counts of {} levels over {} tokens do not make an order-{} model over {}",
                counts.levels(),
                counts.vocab_size(),
                cfg.order,
                cfg.vocab_size
            )));
        }
        let d = match cfg.smoothing {
            Smoothing::KneserNey { discount, .. } => discount,
            _ => 0.0,
        };
        let top = cfg.order - 1;
        let cum = counts
            .levels
            .iter()
            .enumerate()
            .map(|(j, l)| {
                let weight = |e: usize| -> f64 {
                    // Kneser-Ney's levels below the highest weigh by continuation counts.
                    let kn_lower = d > 0.0 && j < top;
                    let n = if kn_lower { l.cont[e] } else { l.counts[e] } as f64;
                    (n - d).max(0.0)
                };
                let mut out = vec![0.0; l.words.len()];
                for ci in 0..l.contexts.len() {
                    let mut acc = 0.0;
                    for e in l.range(ci) {
                        acc += weight(e);
                        out[e] = acc;
                    }
                }
                out
            })
            .collect();
        Ok(Self { cfg, counts, cum })
    }

    pub fn config(&self) -> &NgramConfig {
        &self.cfg
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The context the model conditions on after `history`: its last (order - 1) tokens.
    fn context<'a>(&self, history: &'a [u32]) -> &'a [u32] {
        let k = (self.cfg.order - 1).min(history.len());
        &history[history.len() - k..]
    }

    /// P(w | history).
    pub fn prob(&self, history: &[u32], w: u32) -> f64 {
        let ctx = self.context(history);
        let v = self.cfg.vocab_size as f64;
        let level = &self.counts.levels[ctx.len()];
        let seen = level.find(ctx);
        match self.cfg.smoothing {
            Smoothing::None => seen.map_or(0.0, |ci| {
                let n = level.entry(ci, w).map_or(0, |e| level.counts[e]);
                n as f64 / level.total[ci] as f64
            }),
            Smoothing::AddK { k } => {
                let (n, total) = seen.map_or((0, 0), |ci| {
                    (
                        level.entry(ci, w).map_or(0, |e| level.counts[e]),
                        level.total[ci],
                    )
                });
                (n as f64 + k) / (total as f64 + v * k)
            }
            Smoothing::KneserNey { discount, base } => self.kn(ctx, w, discount, base),
        }
    }

    /// Interpolated Kneser-Ney at the level of `ctx` (its length).
    fn kn(&self, ctx: &[u32], w: u32, d: f64, base: Base) -> f64 {
        if ctx.is_empty() {
            return self.kn_base(w, d, base);
        }
        let (l, top) = (
            &self.counts.levels[ctx.len()],
            ctx.len() == self.cfg.order - 1,
        );
        let Some((alpha, gamma)) = self.alpha_gamma(l, top, ctx, Some(w), d) else {
            return self.kn(&ctx[1..], w, d, base);
        };
        alpha + gamma * self.kn(&ctx[1..], w, d, base)
    }

    /// At a context with data: alpha = max(n - D, 0) / total for `w` (0 without `w`) and the back-off weight
    /// gamma = D (types) / total; `None` for a context without data.
    fn alpha_gamma(
        &self,
        l: &Level,
        top: bool,
        ctx: &[u32],
        w: Option<u32>,
        d: f64,
    ) -> Option<(f64, f64)> {
        let ci = l.find(ctx)?;
        let (total, types) = if top {
            (l.total[ci], l.range(ci).len() as u32)
        } else {
            (l.cont_total[ci], l.cont_types[ci])
        };
        if total == 0 {
            // Only a context that opens the stream has counts but no continuation.
            return None;
        }
        let n = w
            .and_then(|w| l.entry(ci, w))
            .map_or(0, |e| if top { l.counts[e] } else { l.cont[e] });
        Some((
            (n as f64 - d).max(0.0) / total as f64,
            d * types as f64 / total as f64,
        ))
    }

    /// Kneser-Ney's base, the empty context: below a higher order the continuation unigram N1+(. w) /
    /// N1+(. .); in a unigram model, whose only level is its highest, the counts n(w) / N themselves, since
    /// Kneser-Ney discounts raw counts at the highest order (Chen & Goodman 1998), and a unigram of
    /// continuation counts would estimate another distribution (end-of-text, preceded by few distinct
    /// tokens, would hardly ever be drawn). Interpolated with the uniform under `Base::Uniform`.
    fn kn_base(&self, w: u32, d: f64, base: Base) -> f64 {
        let v = self.cfg.vocab_size as f64;
        let (total, types) = self.base_total_types();
        if total == 0.0 {
            return 1.0 / v;
        }
        let n = self.counts.levels[0]
            .entry(0, w)
            .map_or(0.0, |e| self.base_n(e));
        match base {
            Base::Continuation => n / total,
            Base::Uniform => (n - d).max(0.0) / total + d * types / total / v,
        }
    }

    /// The base level's total and its number of tokens with a count (see [`Ngram::kn_base`]).
    fn base_total_types(&self) -> (f64, f64) {
        let l = &self.counts.levels[0];
        if self.cfg.order == 1 {
            let total = l.total.first().copied().unwrap_or(0);
            let types = if l.contexts.is_empty() {
                0
            } else {
                l.range(0).len()
            };
            (total as f64, types as f64)
        } else {
            let total = l.cont_total.first().copied().unwrap_or(0);
            (
                total as f64,
                l.cont_types.first().copied().unwrap_or(0) as f64,
            )
        }
    }

    /// The base level's count of its entry `e` (see [`Ngram::kn_base`]).
    fn base_n(&self, e: usize) -> f64 {
        let l = &self.counts.levels[0];
        if self.cfg.order == 1 {
            l.counts[e] as f64
        } else {
            l.cont[e] as f64
        }
    }

    /// The whole conditional distribution after `history`, over the vocabulary.
    pub fn distribution(&self, history: &[u32]) -> Vec<f64> {
        (0..self.cfg.vocab_size as u32)
            .map(|w| self.prob(history, w))
            .collect()
    }

    /// Exact statistics over a token stream: every token but the first predicted from the (up to order - 1)
    /// tokens before it. A token of probability 0 makes the NLL (and perplexity) infinite.
    pub fn evaluate(&self, tokens: &[u32]) -> lm::Evaluation {
        let nll_sum: f64 = (1..tokens.len())
            .map(|i| -self.prob(&tokens[..i], tokens[i]).ln())
            .sum();
        let predicted = tokens.len().saturating_sub(1);
        let mean_nll = nll_sum / predicted.max(1) as f64;
        lm::Evaluation {
            nll_sum,
            tokens: predicted,
            mean_nll,
            perplexity: mean_nll.exp(),
        }
    }

    /// `<|endoftext|>` + doc + `<|endoftext|>`: the per-token NLL of everything after the first token (the
    /// evaluation's arithmetic), and with `entropy` the mean entropy (nats) of the next-token distributions.
    pub fn score(&self, doc: &[u32], eot: u32, entropy: bool) -> lm::DocumentScore {
        let mut s = Vec::with_capacity(doc.len() + 2);
        s.push(eot);
        s.extend_from_slice(doc);
        s.push(eot);
        let e = self.evaluate(&s);
        let mean_entropy = if entropy {
            let total: f64 = (1..s.len())
                .map(|i| {
                    self.distribution(&s[..i])
                        .iter()
                        .filter(|&&p| p > 0.0)
                        .map(|p| -p * p.ln())
                        .sum::<f64>()
                })
                .sum();
            total / e.tokens as f64
        } else {
            f64::NAN
        };
        lm::DocumentScore {
            tokens: e.tokens,
            mean_nll: e.mean_nll,
            mean_entropy,
        }
    }

    /// One token after `history`, or `None` at a dead end (the MLE never saw the context followed by
    /// anything). Exact draws from [`Ngram::prob`], by walking its mixture: the discounted counts of a context
    /// with probability 1 - gamma, else the shorter context.
    fn draw(&self, history: &[u32], rng: &mut ChaCha8Rng) -> Option<u32> {
        let ctx = self.context(history);
        let v = self.cfg.vocab_size;
        match self.cfg.smoothing {
            Smoothing::None => {
                let l = &self.counts.levels[ctx.len()];
                let ci = l.find(ctx)?;
                Some(self.pick(ctx.len(), ci, rng))
            }
            Smoothing::AddK { k } => {
                let l = &self.counts.levels[ctx.len()];
                let total = l.find(ctx).map_or(0, |ci| l.total[ci]) as f64;
                let seen = total / (total + v as f64 * k);
                match l.find(ctx) {
                    Some(ci) if rng.random::<f64>() < seen => Some(self.pick(ctx.len(), ci, rng)),
                    _ => Some(rng.random_range(0..v as u32)),
                }
            }
            Smoothing::KneserNey { discount, base } => {
                let mut ctx = ctx;
                while !ctx.is_empty() {
                    let j = ctx.len();
                    let (l, top) = (&self.counts.levels[j], j == self.cfg.order - 1);
                    if let Some((_, gamma)) = self.alpha_gamma(l, top, ctx, None, discount) {
                        if rng.random::<f64>() >= gamma {
                            let ci = l.find(ctx).expect("a context with data");
                            return Some(self.pick(j, ci, rng));
                        }
                    }
                    ctx = &ctx[1..];
                }
                let (total, types) = self.base_total_types();
                if total == 0.0 {
                    return Some(rng.random_range(0..v as u32));
                }
                match base {
                    Base::Continuation => Some(self.pick_weighted(0, 0, rng, |e| self.base_n(e))),
                    Base::Uniform => {
                        let beta = discount * types / total;
                        if rng.random::<f64>() >= beta {
                            Some(self.pick(0, 0, rng))
                        } else {
                            Some(rng.random_range(0..v as u32))
                        }
                    }
                }
            }
        }
    }

    /// A following token of context `ci` at level `j`, in proportion to the level's sampling weights.
    fn pick(&self, j: usize, ci: usize, rng: &mut ChaCha8Rng) -> u32 {
        let l = &self.counts.levels[j];
        let r = l.range(ci);
        let cum = &self.cum[j][r.clone()];
        let total = *cum.last().expect("a context has a following token");
        let u = rng.random::<f64>() * total;
        // The first entry whose cumulative weight exceeds u (zero-weight entries are never chosen).
        let at = cum.partition_point(|&c| c <= u).min(cum.len() - 1);
        l.words[r.start + at]
    }

    fn pick_weighted(
        &self,
        j: usize,
        ci: usize,
        rng: &mut ChaCha8Rng,
        weight: impl Fn(usize) -> f64,
    ) -> u32 {
        let l = &self.counts.levels[j];
        let r = l.range(ci);
        let total: f64 = r.clone().map(&weight).sum();
        let mut u = rng.random::<f64>() * total;
        for e in r.clone() {
            u -= weight(e);
            if u < 0.0 {
                return l.words[e];
            }
        }
        l.words[r.end - 1]
    }

    /// `count` continuations of `prompt`, sequence i from RNG stream (seed, first_stream + i), each ending
    /// at `stop` (not returned), at a dead end, or after `max_new` tokens.
    pub fn generate(
        &self,
        prompt: &[u32],
        count: usize,
        sampling: &lm::Sampling,
        seed: u64,
        first_stream: u64,
    ) -> Vec<Vec<u32>> {
        (0..count as u64)
            .map(|i| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(first_stream + i);
                let mut history = prompt.to_vec();
                let mut out = Vec::new();
                for _ in 0..sampling.max_new_tokens {
                    let next = if plain(sampling) {
                        self.draw(&history, &mut rng)
                    } else {
                        self.draw_shaped(&history, sampling, &mut rng)
                    };
                    let Some(t) = next else { break };
                    if Some(t) == sampling.stop_token {
                        break;
                    }
                    out.push(t);
                    history.push(t);
                }
                out
            })
            .collect()
    }

    /// A draw under temperature, top-k or top-p, from the whole distribution.
    fn draw_shaped(&self, history: &[u32], s: &lm::Sampling, rng: &mut ChaCha8Rng) -> Option<u32> {
        let p = self.distribution(history);
        if p.iter().all(|&x| x == 0.0) {
            return DEAD_END;
        }
        if s.temperature == 0.0 {
            return p
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                .map(|(i, _)| i as u32);
        }
        let inv_t = 1.0 / s.temperature as f64;
        let mut w: Vec<(u32, f64)> = p
            .iter()
            .enumerate()
            .filter(|(_, &x)| x > 0.0)
            .map(|(i, &x)| (i as u32, x.powf(inv_t)))
            .collect();
        w.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = s.top_k {
            w.truncate(k.max(1));
        }
        if let Some(top_p) = s.top_p.filter(|&p| p < 1.0) {
            let total: f64 = w.iter().map(|x| x.1).sum();
            let mut acc = 0.0;
            let keep = w
                .iter()
                .position(|x| {
                    acc += x.1 / total;
                    acc >= top_p as f64
                })
                .map_or(w.len(), |i| i + 1);
            w.truncate(keep);
        }
        let total: f64 = w.iter().map(|x| x.1).sum();
        let mut u = rng.random::<f64>() * total;
        for (t, x) in &w {
            u -= x;
            if u < 0.0 {
                return Some(*t);
            }
        }
        w.last().map(|x| x.0)
    }

    /// Sum over the vocabulary of P(w | ctx)^2, for the risk; `memo` keeps lower contexts' sums.
    fn sum_sq(&self, ctx: &[u32], memo: &mut std::collections::HashMap<u64, f64>) -> f64 {
        let v = self.cfg.vocab_size as f64;
        let l = &self.counts.levels[ctx.len()];
        match self.cfg.smoothing {
            Smoothing::None => l.find(ctx).map_or(0.0, |ci| {
                let t = l.total[ci] as f64;
                l.range(ci).map(|e| (l.counts[e] as f64 / t).powi(2)).sum()
            }),
            Smoothing::AddK { k } => {
                let (sq, n) = l.find(ctx).map_or((0.0, 0.0), |ci| {
                    let sq: f64 = l.range(ci).map(|e| (l.counts[e] as f64).powi(2)).sum();
                    (sq, l.total[ci] as f64)
                });
                (sq + 2.0 * k * n + v * k * k) / (n + v * k).powi(2)
            }
            Smoothing::KneserNey { discount, base } => {
                if let Some(&s) = memo.get(&key(ctx)) {
                    return s;
                }
                let s = if ctx.is_empty() {
                    let l0 = &self.counts.levels[0];
                    let (total, types) = self.base_total_types();
                    if total == 0.0 {
                        1.0 / v
                    } else {
                        let beta = match base {
                            Base::Uniform => discount * types / total / v,
                            Base::Continuation => 0.0,
                        };
                        let seen: f64 = l0
                            .range(0)
                            .map(|e| self.kn_base(l0.words[e], discount, base).powi(2))
                            .sum();
                        seen + (v - l0.words.len() as f64) * beta * beta
                    }
                } else {
                    let top = ctx.len() == self.cfg.order - 1;
                    match self.alpha_gamma(l, top, ctx, None, discount) {
                        None => self.sum_sq(&ctx[1..], memo),
                        Some((_, gamma)) => {
                            let ci = l.find(ctx).expect("a context with data");
                            let (mut a2, mut cross) = (0.0, 0.0);
                            for e in l.range(ci) {
                                let w = l.words[e];
                                let alpha = self
                                    .alpha_gamma(l, top, ctx, Some(w), discount)
                                    .expect("data")
                                    .0;
                                a2 += alpha * alpha;
                                cross += alpha * self.kn(&ctx[1..], w, discount, base);
                            }
                            a2 + 2.0 * gamma * cross + gamma * gamma * self.sum_sq(&ctx[1..], memo)
                        }
                    }
                };
                memo.insert(key(ctx), s);
                s
            }
        }
    }

    /// The risk against a reference's counts: sum over the reference's contexts c of the model's order (the
    /// empty context for order 1, else the reference's `contexts` most frequent (order - 1)-token contexts),
    /// weighted by their frequency, of sum_w (P(w | c) - p(w | c))^2, where p is the reference's MLE. Finite
    /// for the MLE (its P is 0 for a context it never saw). Returns the risk and the share of the
    /// reference's context occurrences it covers.
    pub fn risk(&self, reference: &Counts, contexts: usize) -> (f64, f64) {
        let j = self.cfg.order - 1;
        let l = &reference.levels[j];
        let all: u64 = l.total.iter().sum();
        let mut by_freq: Vec<usize> = (0..l.contexts.len()).collect();
        by_freq.sort_by(|&a, &b| l.total[b].cmp(&l.total[a]).then(a.cmp(&b)));
        by_freq.truncate(contexts.max(1));
        let covered: u64 = by_freq.iter().map(|&ci| l.total[ci]).sum();
        let mut memo = std::collections::HashMap::new();
        let mut risk = 0.0;
        for &ci in &by_freq {
            let ctx = crate::counts::unkey(l.contexts[ci]);
            let n = l.total[ci] as f64;
            let (mut p2, mut cross) = (0.0, 0.0);
            for e in l.range(ci) {
                let p = l.counts[e] as f64 / n;
                p2 += p * p;
                cross += p * self.prob(&ctx, l.words[e]);
            }
            let r = self.sum_sq(&ctx, &mut memo) - 2.0 * cross + p2;
            risk += n / covered as f64 * r.max(0.0);
        }
        (risk, covered as f64 / all.max(1) as f64)
    }

    /// The stored form: a header line of the configuration as JSON, then the counts.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(&self.cfg).expect("serialises");
        out.push(b'\n');
        out.extend(self.counts.to_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Self> {
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| Error::Corrupt {
                what: what.into(),
                msg: "it has no header".into(),
            })?;
        let cfg: NgramConfig =
            serde_json::from_slice(&bytes[..nl]).map_err(|e| Error::Corrupt {
                what: what.into(),
                msg: format!("its header is unreadable ({e})"),
            })?;
        let counts = Counts::from_bytes(&bytes[nl + 1..], what)?;
        Self::from_counts(cfg, counts)
    }
}

/// Plain sampling: temperature 1, no top-k or top-p (the mixture walk is exact and fast).
fn plain(s: &lm::Sampling) -> bool {
    s.temperature == 1.0 && s.top_k.is_none() && s.top_p.is_none_or(|p| p >= 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(order: usize, smoothing: Smoothing, v: usize) -> NgramConfig {
        NgramConfig {
            order,
            smoothing,
            vocab_size: v,
        }
    }

    const ALL: [Smoothing; 4] = [
        Smoothing::None,
        Smoothing::AddK { k: 0.5 },
        Smoothing::KneserNey {
            discount: 0.75,
            base: Base::Uniform,
        },
        Smoothing::KneserNey {
            discount: 0.1,
            base: Base::Continuation,
        },
    ];

    /// A toy stream of 3 tokens, "a b a b c", by hand. MLE bigram: P(b|a) = 1, P(a|b) = 1/2, P(c|b) = 1/2.
    /// Add-1: P(b|a) = (2 + 1)/(2 + 4), P(x|c) = 1/4 (c was never followed). Kneser-Ney (D = 0.5,
    /// continuation base): N1+(. w) = 1 for a, b, c (3 bigram types), so base = 1/3 each; P(b|a) = (2 -
    /// 0.5)/2 + 0.5 * 1/2 * 1/3; P(c|b) = (1 - 0.5)/2 + 0.5 * 2/2 * 1/3.
    #[test]
    fn probabilities_by_hand() {
        let s = [0u32, 1, 0, 1, 2];
        let mle = Ngram::fit(cfg(2, Smoothing::None, 4), &s).unwrap();
        assert_eq!(mle.prob(&[0], 1), 1.0);
        assert_eq!(mle.prob(&[1], 0), 0.5);
        assert_eq!(mle.prob(&[2], 0), 0.0);
        // Unigram at the stream's start.
        assert_eq!(mle.prob(&[], 0), 0.4);
        let add = Ngram::fit(cfg(2, Smoothing::AddK { k: 1.0 }, 4), &s).unwrap();
        assert!((add.prob(&[0], 1) - 3.0 / 6.0).abs() < 1e-15);
        assert!((add.prob(&[2], 3) - 0.25).abs() < 1e-15);
        let kn = Ngram::fit(
            cfg(
                2,
                Smoothing::KneserNey {
                    discount: 0.5,
                    base: Base::Continuation,
                },
                4,
            ),
            &s,
        )
        .unwrap();
        assert!((kn.prob(&[0], 1) - (0.75 + 0.25 / 3.0)).abs() < 1e-15);
        assert!((kn.prob(&[1], 2) - (0.25 + 0.5 / 3.0)).abs() < 1e-15);
        assert_eq!(kn.prob(&[0], 3), 0.0, "d was never seen after anything");
        // A unigram's only level is its highest: Kneser-Ney discounts the raw counts (2, 2, 1, 0 of N = 5,
        // T = 3 types) towards the uniform, not continuation counts; with the continuation base, the MLE.
        let kn1 = |base| {
            Ngram::fit(
                cfg(
                    1,
                    Smoothing::KneserNey {
                        discount: 0.5,
                        base,
                    },
                    4,
                ),
                &s,
            )
            .unwrap()
        };
        let uniform = kn1(Base::Uniform);
        assert!((uniform.prob(&[], 0) - (1.5 / 5.0 + 0.5 * 3.0 / 5.0 / 4.0)).abs() < 1e-15);
        assert!((uniform.prob(&[1], 2) - (0.5 / 5.0 + 0.5 * 3.0 / 5.0 / 4.0)).abs() < 1e-15);
        assert!((uniform.prob(&[], 3) - 0.5 * 3.0 / 5.0 / 4.0).abs() < 1e-15);
        assert_eq!(kn1(Base::Continuation).prob(&[], 0), 0.4);
        // Perplexity of a held-out stream by hand: MLE of "a b c" = P(b|a) P(c|b) = 1 * 1/2.
        let e = mle.evaluate(&[0, 1, 2]);
        assert_eq!(e.tokens, 2);
        assert!((e.nll_sum - 2f64.ln()).abs() < 1e-15);
        assert!((e.perplexity - 2f64.sqrt()).abs() < 1e-12);
        // An unseen event under the MLE: infinite, not hidden.
        assert_eq!(mle.evaluate(&[0, 3]).perplexity, f64::INFINITY);
    }

    /// Every conditional distribution sums to 1 (the MLE over a context it saw), for orders 1-3 and every
    /// smoothing, on a stream with a repeating and a unique part.
    #[test]
    fn conditional_distributions_sum_to_one() {
        let mut s: Vec<u32> = (0..400).map(|i| (i * 7 + i / 13) % 11).collect();
        s.extend([3, 3, 3, 10, 0, 5]);
        for order in 1..=3 {
            for sm in ALL {
                let m = Ngram::fit(cfg(order, sm, 12), &s).unwrap();
                for h in [&s[..0], &s[..1], &s[..5], &s[100..107], &[11u32, 11][..]] {
                    let p = m.distribution(h);
                    let total: f64 = p.iter().sum();
                    let unseen_mle = sm == Smoothing::None && total == 0.0;
                    assert!(
                        unseen_mle || (total - 1.0).abs() < 1e-12,
                        "order {order} {sm:?} after {h:?}: {total}"
                    );
                    // The risk's closed-form sum of squares is the distribution's.
                    let sq: f64 = p.iter().map(|x| x * x).sum();
                    let closed = m.sum_sq(m.context(h), &mut Default::default());
                    assert!(
                        (closed - sq).abs() < 1e-12,
                        "order {order} {sm:?} after {h:?}: {closed} != {sq}"
                    );
                }
            }
        }
    }

    /// Draws follow the model's probabilities (chi-square over 20,000 draws from one context) and a sequence
    /// does not depend on its batch.
    #[test]
    fn draws_follow_the_probabilities() {
        let s: Vec<u32> = (0..2000)
            .map(|i| ((i * i + 3 * i) % 17) as u32 % 9)
            .collect();
        for (order, sm) in [1, 3].into_iter().flat_map(|o| ALL.map(|sm| (o, sm))) {
            let m = Ngram::fit(cfg(order, sm, 10), &s).unwrap();
            let h = [4u32, 0];
            let p = m.distribution(&h);
            let mut counts = [0usize; 10];
            let mut rng = ChaCha8Rng::seed_from_u64(9);
            let n = 20_000;
            for _ in 0..n {
                counts[m.draw(&h, &mut rng).unwrap() as usize] += 1;
            }
            let chi: f64 = (0..10)
                .filter(|&w| p[w] > 0.0)
                .map(|w| (counts[w] as f64 - n as f64 * p[w]).powi(2) / (n as f64 * p[w]))
                .sum();
            assert!(chi < 40.0, "order {order} {sm:?}: chi-square {chi} on 9 df");
            assert!((0..10).all(|w| p[w] > 0.0 || counts[w] == 0));
        }
        let m = Ngram::fit(cfg(2, ALL[2], 10), &s).unwrap();
        let samp = lm::Sampling {
            max_new_tokens: 30,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            stop_token: Some(9),
        };
        let all = m.generate(&[0], 5, &samp, 7, 0);
        let fourth = m.generate(&[0], 2, &samp, 7, 3);
        assert_eq!(all[3..5], fourth[..]);
    }

    /// The risk for order 1 is the squared distance of the unigram distributions; the MLE of the reference
    /// itself has risk 0; an unseen context counts as a zero vector for the MLE.
    #[test]
    fn risk_of_a_unigram_and_of_the_reference_itself() {
        let reference = Counts::of(&[0, 1, 1, 2, 2, 2], 1, 4).unwrap();
        let m = Ngram::fit(cfg(1, Smoothing::None, 4), &[0, 0, 1, 2]).unwrap();
        let (r, covered) = m.risk(&reference, 10);
        let want =
            (0.5f64 - 1.0 / 6.0).powi(2) + (0.25f64 - 2.0 / 6.0).powi(2) + (0.25f64 - 0.5).powi(2);
        assert!((r - want).abs() < 1e-15 && covered == 1.0, "{r} {want}");
        for order in 1..=3 {
            for sm in ALL {
                let s: Vec<u32> = (0..300).map(|i| (i * 5 % 7) as u32).collect();
                let reference = Counts::of(&s, order, 8).unwrap();
                let m = Ngram::fit(cfg(order, sm, 8), &s).unwrap();
                let (r, _) = m.risk(&reference, 1000);
                if sm == Smoothing::None {
                    assert!(r.abs() < 1e-12, "order {order}: {r}");
                } else {
                    // The smoothed risk against the dense sum over the vocabulary.
                    let l = &reference.levels[order - 1];
                    let all: u64 = l.total.iter().sum();
                    let dense: f64 = (0..l.contexts.len())
                        .map(|ci| {
                            let ctx = crate::counts::unkey(l.contexts[ci]);
                            let p = m.distribution(&ctx);
                            let w = l.total[ci] as f64 / all as f64;
                            w * (0..8u32)
                                .map(|t| {
                                    let q = l.entry(ci, t).map_or(0, |e| l.counts[e]) as f64
                                        / l.total[ci] as f64;
                                    (p[t as usize] - q).powi(2)
                                })
                                .sum::<f64>()
                        })
                        .sum();
                    assert!(
                        (r - dense).abs() < 1e-12,
                        "order {order} {sm:?}: {r} {dense}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_stored_form_reads_back() {
        let s: Vec<u32> = (0..100).map(|i| (i * 3 % 5) as u32).collect();
        for sm in ALL {
            let m = Ngram::fit(cfg(3, sm, 6), &s).unwrap();
            let back = Ngram::from_bytes(&m.to_bytes(), "test").unwrap();
            assert_eq!(back.counts(), m.counts());
            assert_eq!(back.config(), m.config());
            assert_eq!(back.to_bytes(), m.to_bytes());
        }
        assert!(Ngram::from_bytes(b"{\"order\":9}\n", "x").is_err());
        assert!(NgramConfig {
            order: 2,
            smoothing: Smoothing::AddK { k: 0.0 },
            vocab_size: 4
        }
        .validate()
        .is_err());
    }
}
