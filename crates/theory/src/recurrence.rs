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
