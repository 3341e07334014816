//! Monte Carlo of iterative training on a mixture of true and synthetic data, for the paper's four model
//! classes, under any schedule and filter. Every repetition draws from its own ChaCha stream of the seed and
//! the repetitions are summed in order, so a seed gives the same bits on any number of threads.

use corpus::Plan;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution, Gamma, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Filter, Result};

/// The model fitted each round, with the risk the paper uses: the squared distance of the estimate to the
/// truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelClass {
    /// K categories, sample proportions; risk ‖p̂ − p‖².
    Categorical,
    /// N(0, 1), mean and variance MLE; risk (μ̂ − μ)² + (σ̂² − σ²)².
    Gaussian,
    /// 0.3 N(−2, 1) + 0.7 N(2, 1), fitted by EM; risk the squared distance of (weight, means, variances),
    /// components ordered by mean.
    Gmm,
    /// y ~ Bernoulli(σ(β·x)), x ~ N(0, I_3), β = (1, −1, 0.5), Newton's method; risk ‖β̂ − β‖². Synthetic
    /// samples keep the true covariate distribution and draw labels from the fitted model.
    Logistic,
}

/// How the categorical truth p is drawn (once per seed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Truth {
    Uniform,
    /// p_k ∝ k^-s, k = 1..K.
    Zipf {
        s: f64,
    },
    /// p ~ Dirichlet(a, …, a).
    Dirichlet {
        a: f64,
    },
}

/// A simulation's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    pub model: ModelClass,
    /// K, for the categorical model.
    pub categories: usize,
    pub truth: Truth,
    pub repetitions: usize,
    pub seed: u64,
    pub filter: Filter,
}

/// The simulated risk at one round across repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Band {
    pub mean: f64,
    /// Standard error of the mean.
    pub se: f64,
    /// mean ± 1.96 se.
    pub lo: f64,
    pub hi: f64,
}

impl Simulation {
    pub fn validate(&self) -> Result<()> {
        self.filter.validate()?;
        if self.repetitions < 2 {
            return Err(Error::Config(
                "theory.repetitions must be at least 2 (a band needs two)".into(),
            ));
        }
        if self.model == ModelClass::Categorical && self.categories < 2 {
            return Err(Error::Config("theory.categories must be at least 2".into()));
        }
        match self.truth {
            Truth::Zipf { s } if !(s >= 0.0 && s.is_finite()) => Err(Error::Config(format!(
                "Zipf exponent must be >= 0, got {s}"
            ))),
            Truth::Dirichlet { a } if !(a > 0.0 && a.is_finite()) => Err(Error::Config(format!(
                "Dirichlet concentration must be > 0, got {a}"
            ))),
            _ => Ok(()),
        }
    }

    /// The categorical truth p.
    pub fn probabilities(&self) -> Vec<f64> {
        let k = self.categories;
        let w: Vec<f64> = match self.truth {
            Truth::Uniform => vec![1.0; k],
            Truth::Zipf { s } => (1..=k).map(|i| (i as f64).powf(-s)).collect(),
            Truth::Dirichlet { a } => {
                let mut rng = stream(self.seed, u64::MAX);
                let g = Gamma::new(a, 1.0).expect("a > 0 was validated");
                (0..k).map(|_| g.sample(&mut rng)).collect()
            }
        };
        let z: f64 = w.iter().sum();
        w.into_iter().map(|x| x / z).collect()
    }

    /// 1 − ‖p‖², the constant of the categorical recurrences.
    pub fn c(&self) -> f64 {
        1.0 - self.probabilities().iter().map(|p| p * p).sum::<f64>()
    }
}

fn stream(seed: u64, id: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(id);
    r
}

fn binomial(rng: &mut ChaCha8Rng, n: u64, p: f64) -> u64 {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return n;
    }
    Binomial::new(n, p).expect("p in (0, 1)").sample(rng)
}

/// Multinomial counts by sequential binomials.
pub(crate) fn multinomial(rng: &mut ChaCha8Rng, n: u64, p: &[f64], out: &mut [u64]) {
    let (mut rest, mut mass) = (n, 1.0f64);
    for (k, (&pk, o)) in p.iter().zip(out.iter_mut()).enumerate() {
        if k + 1 == p.len() {
            *o = rest;
            break;
        }
        let c = binomial(rng, rest, (pk / mass.max(1e-300)).min(1.0));
        *o = c;
        rest -= c;
        mass -= pk;
    }
}

/// How many of a round's `n` draws are real and kept, and synthetic and kept.
fn provenance(rng: &mut ChaCha8Rng, n: u64, alpha: f64, f: Filter) -> (u64, u64) {
    let real = binomial(rng, n, alpha);
    (
        binomial(rng, real, 1.0 - f.e1),
        binomial(rng, n - real, f.e2),
    )
}

/// Mean and 95% band of the risk per round across repetitions.
pub fn simulate(sim: &Simulation, plan: &Plan, accumulate: bool) -> Result<Vec<Band>> {
    sim.validate()?;
    let runs: Vec<Vec<f64>> = (0..sim.repetitions as u64)
        .into_par_iter()
        .map(|rep| {
            let mut rng = stream(sim.seed, rep);
            match sim.model {
                ModelClass::Categorical => categorical(sim, plan, accumulate, &mut rng),
                ModelClass::Gaussian => generic::<Gaussian>(sim, plan, accumulate, &mut rng),
                ModelClass::Gmm => generic::<Gmm>(sim, plan, accumulate, &mut rng),
                ModelClass::Logistic => generic::<Logistic>(sim, plan, accumulate, &mut rng),
            }
        })
        .collect();
    let r = runs.len() as f64;
    Ok((0..plan.rounds.len())
        .map(|t| {
            let mean = runs.iter().map(|v| v[t]).sum::<f64>() / r;
            let var = runs.iter().map(|v| (v[t] - mean).powi(2)).sum::<f64>() / (r - 1.0);
            let se = (var / r).sqrt();
            Band {
                mean,
                se,
                lo: mean - 1.96 * se,
                hi: mean + 1.96 * se,
            }
        })
        .collect())
}

fn categorical(sim: &Simulation, plan: &Plan, accumulate: bool, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let p = sim.probabilities();
    let k = p.len();
    let mut p_hat = p.clone();
    let mut total = vec![0u64; k];
    let (mut real, mut synth) = (vec![0u64; k], vec![0u64; k]);
    let filtering = sim.filter != Filter::NONE;
    let mut risk = Vec::with_capacity(plan.rounds.len());
    for rp in &plan.rounds {
        let n = rp.new_docs as u64;
        if filtering {
            let (r, s) = provenance(rng, n, rp.alpha, sim.filter);
            multinomial(rng, r, &p, &mut real);
            multinomial(rng, s, &p_hat, &mut synth);
        } else {
            // The mixture in one draw: q_t = alpha p + (1 - alpha) p̂.
            let q: Vec<f64> = p
                .iter()
                .zip(&p_hat)
                .map(|(a, b)| rp.alpha * a + (1.0 - rp.alpha) * b)
                .collect();
            multinomial(rng, n, &q, &mut real);
            synth.iter_mut().for_each(|s| *s = 0);
        }
        if !accumulate {
            total.iter_mut().for_each(|c| *c = 0);
        }
        for ((t, r), s) in total.iter_mut().zip(&real).zip(&synth) {
            *t += r + s;
        }
        let n_kept: u64 = total.iter().sum();
        if n_kept > 0 {
            for (ph, &c) in p_hat.iter_mut().zip(&total) {
                *ph = c as f64 / n_kept as f64;
            }
        }
        risk.push(p_hat.iter().zip(&p).map(|(a, b)| (a - b).powi(2)).sum());
    }
    risk
}

/// A model class simulated on its raw samples.
trait Model {
    type Sample: Clone + Send;
    type Estimate: Clone;
    fn truth() -> Self::Estimate;
    fn draw(rng: &mut ChaCha8Rng, from: &Self::Estimate) -> Self::Sample;
    /// The fit on `data`; `previous` may start an iterative fit.
    fn fit(data: &[Self::Sample], previous: &Self::Estimate) -> Self::Estimate;
    fn risk(est: &Self::Estimate) -> f64;
}

fn generic<M: Model>(
    sim: &Simulation,
    plan: &Plan,
    accumulate: bool,
    rng: &mut ChaCha8Rng,
) -> Vec<f64> {
    let truth = M::truth();
    let mut est = truth.clone();
    let mut data: Vec<M::Sample> = Vec::new();
    let mut risk = Vec::with_capacity(plan.rounds.len());
    for rp in &plan.rounds {
        let (r, s) = provenance(rng, rp.new_docs as u64, rp.alpha, sim.filter);
        if !accumulate {
            data.clear();
        }
        data.extend((0..r).map(|_| M::draw(rng, &truth)));
        data.extend((0..s).map(|_| M::draw(rng, &est)));
        if !data.is_empty() {
            est = M::fit(&data, &est);
        }
        risk.push(M::risk(&est));
    }
    risk
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    rng.sample::<f64, _>(StandardNormal)
}

struct Gaussian;

impl Model for Gaussian {
    type Sample = f64;
    /// (mean, variance)
    type Estimate = (f64, f64);
    fn truth() -> (f64, f64) {
        (0.0, 1.0)
    }
    fn draw(rng: &mut ChaCha8Rng, &(m, v): &(f64, f64)) -> f64 {
        m + v.sqrt() * normal(rng)
    }
    fn fit(data: &[f64], _: &(f64, f64)) -> (f64, f64) {
        let n = data.len() as f64;
        let m = data.iter().sum::<f64>() / n;
        (m, data.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n)
    }
    fn risk(&(m, v): &(f64, f64)) -> f64 {
        m * m + (v - 1.0).powi(2)
    }
}

struct Gmm;

/// Two-component 1-D mixture: (weight of the first, means, variances).
type Mix = (f64, [f64; 2], [f64; 2]);

impl Model for Gmm {
    type Sample = f64;
    type Estimate = Mix;
    fn truth() -> Mix {
        (0.3, [-2.0, 2.0], [1.0, 1.0])
    }
    fn draw(rng: &mut ChaCha8Rng, &(w, m, v): &Mix) -> f64 {
        let j = usize::from(rng.random::<f64>() >= w);
        m[j] + v[j].sqrt() * normal(rng)
    }
    fn fit(data: &[f64], previous: &Mix) -> Mix {
        let (mut w, mut m, mut v) = *previous;
        let n = data.len() as f64;
        let mut resp = vec![0.0; data.len()];
        for _ in 0..100 {
            let pdf = |x: f64, j: usize| {
                (-(x - m[j]).powi(2) / (2.0 * v[j])).exp()
                    / (2.0 * std::f64::consts::PI * v[j]).sqrt()
            };
            for (r, &x) in resp.iter_mut().zip(data) {
                let a = w * pdf(x, 0);
                let b = (1.0 - w) * pdf(x, 1);
                *r = if a + b > 0.0 { a / (a + b) } else { 0.5 };
            }
            let n0: f64 = resp.iter().sum();
            let n1 = n - n0;
            let new_w = (n0 / n).clamp(1e-6, 1.0 - 1e-6);
            let m0 = resp.iter().zip(data).map(|(r, x)| r * x).sum::<f64>() / n0.max(1e-12);
            let m1 = resp
                .iter()
                .zip(data)
                .map(|(r, x)| (1.0 - r) * x)
                .sum::<f64>()
                / n1.max(1e-12);
            let v0 = resp
                .iter()
                .zip(data)
                .map(|(r, x)| r * (x - m0).powi(2))
                .sum::<f64>()
                / n0.max(1e-12);
            let v1 = resp
                .iter()
                .zip(data)
                .map(|(r, x)| (1.0 - r) * (x - m1).powi(2))
                .sum::<f64>()
                / n1.max(1e-12);
            let moved = (new_w - w).abs() + (m0 - m[0]).abs() + (m1 - m[1]).abs();
            // A variance floor keeps a component that collapsed onto one point from degenerating.
            (w, m, v) = (new_w, [m0, m1], [v0.max(1e-6), v1.max(1e-6)]);
            if moved < 1e-10 {
                break;
            }
        }
        if m[0] > m[1] {
            (1.0 - w, [m[1], m[0]], [v[1], v[0]])
        } else {
            (w, m, v)
        }
    }
    fn risk(&(w, m, v): &Mix) -> f64 {
        let (tw, tm, tv) = Self::truth();
        (w - tw).powi(2)
            + (m[0] - tm[0]).powi(2)
            + (m[1] - tm[1]).powi(2)
            + (v[0] - tv[0]).powi(2)
            + (v[1] - tv[1]).powi(2)
    }
}

struct Logistic;

const BETA: [f64; 3] = [1.0, -1.0, 0.5];

impl Model for Logistic {
    type Sample = ([f64; 3], bool);
    type Estimate = [f64; 3];
    fn truth() -> [f64; 3] {
        BETA
    }
    fn draw(rng: &mut ChaCha8Rng, beta: &[f64; 3]) -> ([f64; 3], bool) {
        let x = [normal(rng), normal(rng), normal(rng)];
        let z: f64 = x.iter().zip(beta).map(|(a, b)| a * b).sum();
        (x, rng.random::<f64>() < 1.0 / (1.0 + (-z).exp()))
    }
    fn fit(data: &[([f64; 3], bool)], previous: &[f64; 3]) -> [f64; 3] {
        // Newton's method from the previous estimate, with a tiny ridge so separable data stay finite.
        let mut b = *previous;
        for _ in 0..50 {
            let mut g = [0.0; 3];
            let mut h = [[0.0; 3]; 3];
            for (x, y) in data {
                let z: f64 = x.iter().zip(&b).map(|(a, c)| a * c).sum();
                let p = 1.0 / (1.0 + (-z).exp());
                let r = f64::from(u8::from(*y)) - p;
                for i in 0..3 {
                    g[i] += r * x[i];
                    for j in 0..3 {
                        h[i][j] += p * (1.0 - p) * x[i] * x[j];
                    }
                }
            }
            for i in 0..3 {
                g[i] -= 1e-6 * b[i];
                h[i][i] += 1e-6;
            }
            let mut step = solve3(h, g);
            // A trust region: Newton overshoots from far away; a step of at most 1 always converges here.
            let norm = step.iter().map(|s| s * s).sum::<f64>().sqrt();
            if norm > 1.0 {
                step.iter_mut().for_each(|s| *s /= norm);
            }
            for i in 0..3 {
                b[i] += step[i];
            }
            if step.iter().map(|s| s.abs()).sum::<f64>() < 1e-10 {
                break;
            }
        }
        b
    }
    fn risk(b: &[f64; 3]) -> f64 {
        b.iter().zip(&BETA).map(|(a, c)| (a - c).powi(2)).sum()
    }
}

/// Solves the 3 x 3 system `h x = g` by Cramer's rule (h is positive definite here).
fn solve3(h: [[f64; 3]; 3], g: [f64; 3]) -> [f64; 3] {
    let det = |m: [[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(h);
    let mut x = [0.0; 3];
    for (i, xi) in x.iter_mut().enumerate() {
        let mut m = h;
        for r in 0..3 {
            m[r][i] = g[r];
        }
        *xi = det(m) / d;
    }
    x
}
