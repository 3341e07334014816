//! The exact risk of the categorical model (derivations in the crate docs).

use corpus::{Plan, Schedule};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The classifier of the paper's appendix D: `e1` = P(a real sample is called synthetic and removed),
/// `e2` = P(a synthetic sample is called real and kept). `e1 = 0, e2 = 1` keeps everything (no filter);
/// `e1 = e2 = 0` is a perfect filter that removes all synthetic data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub e1: f64,
    pub e2: f64,
}

impl Filter {
    pub const NONE: Filter = Filter { e1: 0.0, e2: 1.0 };

    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.e1) || !(0.0..=1.0).contains(&self.e2) {
            return Err(Error::Config(format!(
                "filter errors must be in [0, 1], got e1 = {}, e2 = {}",
                self.e1, self.e2
            )));
        }
        if self.e1 == 1.0 {
            return Err(Error::Config(
                "a filter with e1 = 1 removes all real data".into(),
            ));
        }
        Ok(())
    }

    /// (alpha', n') after filtering a mixture of weight `alpha` and size `n`.
    pub fn apply(&self, alpha: f64, n: f64) -> (f64, f64) {
        let kept = alpha * (1.0 - self.e1) + (1.0 - alpha) * self.e2;
        if kept <= 0.0 {
            return (1.0, 0.0);
        }
        (alpha * (1.0 - self.e1) / kept, n * kept)
    }
}

/// R_t of the categorical model for every round of `plan` (`c = 1 - ‖p‖²`), through `filter`.
pub fn categorical_risk(plan: &Plan, accumulate: bool, c: f64, filter: Filter) -> Result<Vec<f64>> {
    filter.validate()?;
    let mut out = Vec::with_capacity(plan.rounds.len());
    let (mut r, mut big_n) = (0.0, 0.0);
    for rp in &plan.rounds {
        let (alpha, n) = filter.apply(rp.alpha, rp.new_docs as f64);
        if n < 1.0 {
            return Err(Error::Config(format!(
                "round {}: the filter keeps {n:.2} of {} samples on average; the risk needs at least one",
                rp.round, rp.new_docs
            )));
        }
        let prev = if accumulate { big_n } else { 0.0 };
        big_n = prev + n;
        let a = (prev + n * (1.0 - alpha)) / big_n;
        r = if rp.round == 0 {
            c / n
        } else {
            (a * a - n / (big_n * big_n) * (1.0 - alpha).powi(2)) * r + n * c / (big_n * big_n)
        };
        out.push(r);
    }
    Ok(out)
}

/// One round's realised sample counts (for a categorical model of tokens: token counts), the data of the
/// recurrence when the counts are fixed rather than drawn: `carried` samples kept from D_{t-1}, `real` fresh
/// draws from p, and `synthetic` draws from the previous round's estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RoundCounts {
    pub carried: f64,
    pub real: f64,
    pub synthetic: f64,
}

/// How the fresh real samples are drawn: from a population of `pool` samples whose proportions are p,
/// without replacement and never twice across rounds (`pool` = infinity: independent draws), with a
/// `design` effect on their variance (1 for single samples; real tokens come in documents, whose tokens
/// are not independent, so a fresh part of `a` tokens has error E‖r − p‖² = design c (1/a − 1/pool)).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RealDraws {
    pub design: f64,
    pub pool: f64,
}

impl RealDraws {
    pub const INDEPENDENT: RealDraws = RealDraws {
        design: 1.0,
        pool: f64::INFINITY,
    };
}

/// R_t when every round's counts are fixed ([`RoundCounts`]) and its fresh real part is drawn as `real`
/// says.
///
/// With N = carried + real + m, ρ_t = r_t − p the fresh part's error and ξ_t the synthetic draws' deviation
/// from p̂_{t−1} (conditional mean 0, E‖ξ_t‖² = (1 − E‖p̂_{t−1}‖²)/m = (c − R_{t−1})/m as p̂ stays unbiased),
/// e_t = p̂_t − p = A e_{t−1} + B ρ_t + C ξ_t with A = (carried + m)/N, B = real/N, C = m/N. Disjoint draws
/// from a finite pool are negatively correlated, E⟨ρ_s, ρ_t⟩ = −design c / pool, and e_{t−1} holds earlier
/// fresh parts with total weight g_{t−1} (g_0 = 1, g_t = A g_{t−1} + B), so
///
/// R_t = A² R_{t−1} + B² design c (1/real − 1/pool) + m (c − R_{t−1}) / N² − 2 A B g_{t−1} design c / pool,
///
/// and R_0 = design c (1/real_0 − 1/pool). Drawing each sample from the mixture instead (the paper's model,
/// [`categorical_risk`]) adds alpha (1 − alpha) R_{t−1} / n to a round without accumulation: the variance
/// of the real/synthetic split.
pub fn counted_risk(rounds: &[RoundCounts], c: f64, real: RealDraws) -> Result<Vec<f64>> {
    let positive = |x: f64| x.partial_cmp(&0.0) == Some(std::cmp::Ordering::Greater);
    if !positive(real.design) || !positive(real.pool) {
        return Err(Error::Config(format!(
            "the design effect and the pool must be positive, got {real:?}"
        )));
    }
    let cov = -real.design * c / real.pool;
    let var = |a: f64| real.design * c * (1.0 / a - 1.0 / real.pool);
    let mut out: Vec<f64> = Vec::with_capacity(rounds.len());
    let mut g = 0.0;
    for (t, k) in rounds.iter().enumerate() {
        let n = k.carried + k.real + k.synthetic;
        if [k.carried, k.real, k.synthetic]
            .iter()
            .any(|x| x.is_nan() || *x < 0.0)
            || n < 1.0
        {
            return Err(Error::Config(format!(
                "round {t}: counts must be non-negative and hold a sample, got {k:?}"
            )));
        }
        let (a, b) = ((k.carried + k.synthetic) / n, k.real / n);
        let fresh = if k.real > 0.0 {
            b * b * var(k.real)
        } else {
            0.0
        };
        let r = match out.last() {
            None if k.carried + k.synthetic > 0.0 => {
                return Err(Error::Config(
                    "round 0 has nothing to carry or sample from".into(),
                ))
            }
            None => fresh,
            Some(&prev) => {
                a * a * prev + fresh + k.synthetic * (c - prev) / (n * n) + 2.0 * a * b * g * cov
            }
        };
        g = a * g + b;
        out.push(r);
    }
    Ok(out)
}

/// The limit of R_t for fixed alpha and fixed n without accumulation: c / (n - (n - 1)(1 - alpha)^2), which
/// is c (a point mass) when alpha = 0.
pub fn fixed_point(c: f64, n: f64, alpha: f64) -> f64 {
    c / (n - (n - 1.0) * (1.0 - alpha).powi(2))
}

/// The limit of R_t with accumulation, alpha = 0 and fixed n: the error stays bounded, at
/// c (1 - sin(π/√n) / (π/√n)). From the recurrence, c - R_t = (c - R_{t-1}) (1 - 1/(n (t+1)^2)), and
/// Π_{k>=2} (1 - x^2/k^2) = sin(πx) / (πx (1 - x^2)) with x = 1/√n.
pub fn accumulated_collapse_limit(c: f64, n: f64) -> f64 {
    let x = std::f64::consts::PI / n.sqrt();
    c * (1.0 - x.sin() / x)
}

/// The plan of `schedule` for `rounds` rounds with no limit on fresh data (the theory draws from p freely).
pub fn unlimited_plan(schedule: &Schedule, rounds: usize) -> Result<Plan> {
    Ok(schedule.plan(rounds, usize::MAX)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Multinomial counts of `n` draws from `q` (the simulations' sampler), as f64.
    fn draw(q: &[f64], n: u64, rng: &mut ChaCha8Rng) -> Vec<f64> {
        let mut out = vec![0; q.len()];
        crate::simulate::multinomial(rng, n, q, &mut out);
        out.into_iter().map(|k| k as f64).collect()
    }

    /// Mean and standard error of ‖p̂_t − p‖² per round over `reps` simulated repetitions of `rounds`:
    /// carried counts kept, synthetic draws from the previous estimate, and the fresh counts `fresh(t, n)`
    /// gives (called at round 0 first in each repetition).
    fn simulate(
        p: &[f64],
        rounds: &[RoundCounts],
        reps: usize,
        seed: u64,
        mut fresh: impl FnMut(usize, u64, &mut ChaCha8Rng) -> Vec<f64>,
    ) -> Vec<(f64, f64)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut sum, mut sum2) = (vec![0.0; rounds.len()], vec![0.0; rounds.len()]);
        for _ in 0..reps {
            let mut counts = vec![0.0; p.len()];
            for (t, r) in rounds.iter().enumerate() {
                let total: f64 = counts.iter().sum();
                let prev: Vec<f64> = counts.iter().map(|x| x / total.max(1.0)).collect();
                let kept = if r.carried > 0.0 {
                    counts.clone()
                } else {
                    vec![0.0; p.len()]
                };
                let real = fresh(t, r.real as u64, &mut rng);
                let synth = draw(&prev, r.synthetic as u64, &mut rng);
                counts = (0..p.len()).map(|i| kept[i] + real[i] + synth[i]).collect();
                let n: f64 = counts.iter().sum();
                let e: f64 = (0..p.len()).map(|i| (counts[i] / n - p[i]).powi(2)).sum();
                sum[t] += e;
                sum2[t] += e * e;
            }
        }
        (0..rounds.len())
            .map(|t| {
                let mean = sum[t] / reps as f64;
                (
                    mean,
                    ((sum2[t] / reps as f64 - mean * mean) / reps as f64).sqrt(),
                )
            })
            .collect()
    }

    fn k(carried: f64, real: f64, synthetic: f64) -> RoundCounts {
        RoundCounts {
            carried,
            real,
            synthetic,
        }
    }

    const P: [f64; 4] = [0.5, 0.3, 0.15, 0.05];

    fn c() -> f64 {
        1.0 - P.iter().map(|x| x * x).sum::<f64>()
    }

    /// The fixed-count recurrence against a simulation of the same rounds with independent fresh draws.
    #[test]
    fn counted_risk_matches_a_simulation() {
        let cases = [
            (
                "synthetic-only",
                [
                    k(0., 20., 0.),
                    k(0., 0., 20.),
                    k(0., 0., 20.),
                    k(0., 0., 25.),
                ],
            ),
            (
                "accumulate",
                [
                    k(0., 20., 0.),
                    k(20., 0., 20.),
                    k(40., 0., 20.),
                    k(60., 0., 20.),
                ],
            ),
            (
                "fixed",
                [
                    k(0., 20., 0.),
                    k(0., 10., 10.),
                    k(0., 12., 8.),
                    k(0., 10., 10.),
                ],
            ),
            (
                "decaying",
                [
                    k(0., 20., 0.),
                    k(0., 20., 20.),
                    k(0., 20., 40.),
                    k(0., 20., 60.),
                ],
            ),
        ];
        for (name, rounds) in cases {
            let want = counted_risk(&rounds, c(), RealDraws::INDEPENDENT).unwrap();
            let got = simulate(&P, &rounds, 40_000, 7, |_, n, rng| draw(&P, n, rng));
            for (t, (mean, se)) in got.into_iter().enumerate() {
                assert!(
                    (mean - want[t]).abs() < 4.0 * se,
                    "{name} round {t}: simulated {mean:.5} ± {se:.5}, recurrence {:.5}",
                    want[t]
                );
            }
        }
    }

    /// Fresh draws without replacement from a finite population, never twice (each repetition shuffles the
    /// population and takes consecutive slices), as the runs draw fresh documents from their pool.
    #[test]
    fn counted_risk_with_a_finite_pool_matches_a_simulation() {
        use rand::seq::SliceRandom;
        let pool = 1000usize;
        let mut order: Vec<usize> = P
            .iter()
            .enumerate()
            .flat_map(|(i, x)| std::iter::repeat_n(i, (x * pool as f64) as usize))
            .collect();
        let rounds = [
            k(0., 100., 0.),
            k(0., 100., 100.),
            k(0., 100., 200.),
            k(0., 100., 300.),
        ];
        let draws = RealDraws {
            design: 1.0,
            pool: pool as f64,
        };
        let want = counted_risk(&rounds, c(), draws).unwrap();
        let independent = counted_risk(&rounds, c(), RealDraws::INDEPENDENT).unwrap();
        let mut next = 0;
        let got = simulate(&P, &rounds, 40_000, 11, |t, n, rng| {
            if t == 0 {
                order.shuffle(rng);
                next = 0;
            }
            let mut out = vec![0.0; P.len()];
            for &i in &order[next..next + n as usize] {
                out[i] += 1.0;
            }
            next += n as usize;
            out
        });
        for (t, (mean, se)) in got.into_iter().enumerate() {
            assert!(
                (mean - want[t]).abs() < 4.0 * se,
                "round {t}: simulated {mean:.6} ± {se:.6}, recurrence {:.6}",
                want[t]
            );
            // The pool matters here: independent draws would be far off.
            assert!((mean - independent[t]).abs() > 10.0 * se, "round {t}");
        }
    }

    #[test]
    fn counted_risk_without_accumulation_is_the_paper_s_less_the_split_variance() {
        let c = 0.6;
        let (n, alpha) = (40.0, 0.25);
        let plan_like = [
            RoundCounts {
                carried: 0.0,
                real: n,
                synthetic: 0.0,
            },
            RoundCounts {
                carried: 0.0,
                real: alpha * n,
                synthetic: (1.0 - alpha) * n,
            },
        ];
        let r = counted_risk(&plan_like, c, RealDraws::INDEPENDENT).unwrap();
        let paper = c / n + (n - 1.0) / n * (1.0 - alpha).powi(2) * r[0];
        let split = alpha * (1.0 - alpha) * r[0] / n;
        assert!(
            (r[1] + split - paper).abs() < 1e-15,
            "{} + {split} vs {paper}",
            r[1]
        );
        assert!(counted_risk(
            &[RoundCounts {
                carried: 0.0,
                real: 0.0,
                synthetic: 5.0
            }],
            c,
            RealDraws::INDEPENDENT
        )
        .is_err());
    }
}
