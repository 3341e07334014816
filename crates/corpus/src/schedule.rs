//! How many documents each round trains on and how many of them are fresh real ones.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// n_t: new documents composed in round t.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Size {
    /// n every round.
    Fixed { n: usize },
    /// (t + 1) n.
    Linear { n: usize },
    /// (t + 1)^2 n.
    Quadratic { n: usize },
    /// One size per round.
    List { sizes: Vec<usize> },
}

/// alpha_t: the fraction of round t's new documents that are fresh real ones (round 0 is always all real).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Alpha {
    Zero,
    Fixed {
        alpha: f64,
    },
    /// (t + 1)^-p.
    Power {
        p: f64,
    },
    List {
        values: Vec<f64>,
    },
}

/// The general schedule: sizes, fresh fractions, and whether D_t keeps D_{t-1}.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub size: Size,
    pub alpha: Alpha,
    pub accumulate: bool,
}

/// The paper's four settings, presets of [`Schedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setting {
    /// 0: D_t = n synthetic documents from model_{t-1}.
    SyntheticOnly,
    /// 1: D_t = D_{t-1} plus n synthetic documents from model_{t-1}.
    Accumulate,
    /// 2: D_t = alpha n fresh real + (1 - alpha) n synthetic.
    FixedAlpha,
    /// 3: alpha_t = 1/(t+1), n_t = (t+1) n: n fresh real + t n synthetic.
    DecayingAlpha,
}

impl Setting {
    pub const ALL: [Setting; 4] = [
        Setting::SyntheticOnly,
        Setting::Accumulate,
        Setting::FixedAlpha,
        Setting::DecayingAlpha,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Setting::SyntheticOnly => "synthetic-only",
            Setting::Accumulate => "accumulate",
            Setting::FixedAlpha => "fixed-alpha",
            Setting::DecayingAlpha => "decaying-alpha",
        }
    }

    /// The paper's number of the setting.
    pub fn number(self) -> usize {
        Self::ALL.iter().position(|&s| s == self).expect("listed")
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|x| x.name() == s || x.number().to_string() == s)
            .ok_or_else(|| {
                Error::Schedule(format!(
                    "unknown setting {s:?}: use one of {}",
                    Self::ALL.map(|x| x.name()).join(", ")
                ))
            })
    }

    /// The setting's schedule for `n` documents per round; `alpha` is setting 2's fresh fraction.
    pub fn schedule(self, n: usize, alpha: f64) -> Schedule {
        match self {
            Setting::SyntheticOnly => Schedule {
                size: Size::Fixed { n },
                alpha: Alpha::Zero,
                accumulate: false,
            },
            Setting::Accumulate => Schedule {
                size: Size::Fixed { n },
                alpha: Alpha::Zero,
                accumulate: true,
            },
            Setting::FixedAlpha => Schedule {
                size: Size::Fixed { n },
                alpha: Alpha::Fixed { alpha },
                accumulate: false,
            },
            Setting::DecayingAlpha => Schedule {
                size: Size::Linear { n },
                alpha: Alpha::Power { p: 1.0 },
                accumulate: false,
            },
        }
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The counts of one round, decided before the run starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundPlan {
    pub round: usize,
    /// n_t: new documents this round.
    pub new_docs: usize,
    pub fresh: usize,
    pub synthetic: usize,
    /// |D_t|: the new documents plus, when accumulating, all of D_{t-1}.
    pub total: usize,
    /// alpha_t as scheduled (1 in round 0).
    pub alpha: f64,
    /// fresh / n_t after rounding to whole documents.
    pub realized_alpha: f64,
    /// Index in the pool of this round's first fresh document: fresh documents are drawn in pool order, each
    /// at most once.
    pub pool_offset: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub rounds: Vec<RoundPlan>,
    pub fresh_total: usize,
}

impl Plan {
    /// Synthetic documents the model of round `t` must write for round `t + 1` (0 after the last round).
    pub fn to_generate_after(&self, t: usize) -> usize {
        self.rounds.get(t + 1).map_or(0, |r| r.synthetic)
    }
}

impl Schedule {
    fn size(&self, t: usize) -> Result<usize> {
        let n = match &self.size {
            Size::Fixed { n } => *n,
            Size::Linear { n } => (t + 1) * n,
            Size::Quadratic { n } => (t + 1) * (t + 1) * n,
            Size::List { sizes } => *sizes.get(t).ok_or_else(|| {
                Error::Schedule(format!(
                    "the size list has {} entries, round {t} needs one",
                    sizes.len()
                ))
            })?,
        };
        if n == 0 {
            return Err(Error::Schedule(format!(
                "round {t} would have n = 0 documents: n must be positive"
            )));
        }
        Ok(n)
    }

    fn alpha(&self, t: usize) -> Result<f64> {
        let a = match &self.alpha {
            Alpha::Zero => 0.0,
            Alpha::Fixed { alpha } => *alpha,
            Alpha::Power { p } => {
                if p.is_nan() || *p < 0.0 {
                    return Err(Error::Schedule(format!(
                        "power decay needs p >= 0, got {p}"
                    )));
                }
                (t as f64 + 1.0).powf(-p)
            }
            Alpha::List { values } => *values.get(t).ok_or_else(|| {
                Error::Schedule(format!(
                    "the alpha list has {} entries, round {t} needs one",
                    values.len()
                ))
            })?,
        };
        if !(0.0..=1.0).contains(&a) {
            return Err(Error::Schedule(format!(
                "alpha must be in [0, 1], round {t} has {a}"
            )));
        }
        Ok(a)
    }

    /// Every round's counts, or the reason the schedule cannot run with a pool of `pool_size` documents.
    pub fn plan(&self, rounds: usize, pool_size: usize) -> Result<Plan> {
        if rounds == 0 {
            return Err(Error::Schedule(
                "the number of rounds must be at least 1".into(),
            ));
        }
        match &self.size {
            Size::List { sizes } if sizes.is_empty() => {
                return Err(Error::Schedule("the size list is empty".into()))
            }
            Size::Fixed { n: 0 } | Size::Linear { n: 0 } | Size::Quadratic { n: 0 } => {
                return Err(Error::Schedule("n must be positive".into()))
            }
            _ => {}
        }
        if let Alpha::List { values } = &self.alpha {
            if values.is_empty() {
                return Err(Error::Schedule("the alpha list is empty".into()));
            }
        }
        let mut out = Vec::with_capacity(rounds);
        let (mut offset, mut total) = (0, 0);
        for t in 0..rounds {
            let n = self.size(t)?;
            let alpha = if t == 0 { 1.0 } else { self.alpha(t)? };
            let fresh = (alpha * n as f64).round() as usize;
            let synthetic = n - fresh;
            total = if self.accumulate { total + n } else { n };
            out.push(RoundPlan {
                round: t,
                new_docs: n,
                fresh,
                synthetic,
                total,
                alpha,
                realized_alpha: fresh as f64 / n as f64,
                pool_offset: offset,
            });
            offset += fresh;
        }
        if offset > pool_size {
            return Err(Error::Schedule(format!(
                "the schedule needs {offset} fresh documents over {rounds} rounds but the pool has {pool_size} \
                 (short by {}): lower n or the number of rounds, hold out fewer documents, or use a larger corpus",
                offset - pool_size
            )));
        }
        Ok(Plan {
            rounds: out,
            fresh_total: offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_settings_plan_as_the_paper_says() {
        let p = Setting::SyntheticOnly
            .schedule(100, 0.5)
            .plan(3, 1000)
            .unwrap();
        assert_eq!(
            p.rounds
                .iter()
                .map(|r| (r.fresh, r.synthetic, r.total))
                .collect::<Vec<_>>(),
            [(100, 0, 100), (0, 100, 100), (0, 100, 100)]
        );
        let p = Setting::Accumulate
            .schedule(100, 0.5)
            .plan(3, 1000)
            .unwrap();
        assert_eq!(
            p.rounds
                .iter()
                .map(|r| (r.fresh, r.synthetic, r.total))
                .collect::<Vec<_>>(),
            [(100, 0, 100), (0, 100, 200), (0, 100, 300)]
        );
        let p = Setting::FixedAlpha
            .schedule(100, 0.5)
            .plan(3, 1000)
            .unwrap();
        assert_eq!(
            p.rounds
                .iter()
                .map(|r| (r.fresh, r.synthetic, r.total))
                .collect::<Vec<_>>(),
            [(100, 0, 100), (50, 50, 100), (50, 50, 100)]
        );
        let p = Setting::DecayingAlpha
            .schedule(100, 0.5)
            .plan(3, 1000)
            .unwrap();
        assert_eq!(
            p.rounds
                .iter()
                .map(|r| (r.fresh, r.synthetic, r.total))
                .collect::<Vec<_>>(),
            [(100, 0, 100), (100, 100, 200), (100, 200, 300)]
        );
        assert_eq!(p.fresh_total, 300);
        assert_eq!(p.rounds[2].pool_offset, 200);
        assert_eq!(p.to_generate_after(1), 200);
        assert_eq!(p.to_generate_after(2), 0);
    }

    #[test]
    fn every_refusal_says_why() {
        let s = Setting::DecayingAlpha.schedule(100, 0.5);
        let e = s.plan(10, 900).unwrap_err().to_string();
        assert!(
            e.contains(
                "needs 1000 fresh documents over 10 rounds but the pool has 900 (short by 100)"
            ),
            "{e}"
        );
        let bad_alpha = Schedule {
            alpha: Alpha::Fixed { alpha: 1.5 },
            ..Setting::FixedAlpha.schedule(10, 0.5)
        };
        assert!(bad_alpha
            .plan(2, 100)
            .unwrap_err()
            .to_string()
            .contains("alpha must be in [0, 1]"));
        let neg = Schedule {
            alpha: Alpha::List {
                values: vec![1.0, -0.1],
            },
            ..Setting::FixedAlpha.schedule(10, 0.5)
        };
        assert!(neg
            .plan(2, 100)
            .unwrap_err()
            .to_string()
            .contains("alpha must be in [0, 1], round 1 has -0.1"));
        assert!(Setting::FixedAlpha
            .schedule(0, 0.5)
            .plan(2, 100)
            .unwrap_err()
            .to_string()
            .contains("n must be positive"));
        let empty = Schedule {
            size: Size::List { sizes: vec![] },
            ..Setting::FixedAlpha.schedule(1, 0.5)
        };
        assert!(empty
            .plan(2, 100)
            .unwrap_err()
            .to_string()
            .contains("size list is empty"));
        let empty_a = Schedule {
            alpha: Alpha::List { values: vec![] },
            ..Setting::FixedAlpha.schedule(1, 0.5)
        };
        assert!(empty_a
            .plan(2, 100)
            .unwrap_err()
            .to_string()
            .contains("alpha list is empty"));
        let short = Schedule {
            size: Size::List { sizes: vec![5] },
            ..Setting::FixedAlpha.schedule(1, 0.5)
        };
        assert!(short
            .plan(2, 100)
            .unwrap_err()
            .to_string()
            .contains("size list has 1 entries, round 1 needs one"));
        assert!(Setting::FixedAlpha
            .schedule(10, 0.5)
            .plan(0, 100)
            .unwrap_err()
            .to_string()
            .contains("at least 1"));
        assert!(Setting::parse("bogus")
            .unwrap_err()
            .to_string()
            .contains("unknown setting \"bogus\""));
        assert_eq!(Setting::parse("2").unwrap(), Setting::FixedAlpha);
        assert_eq!(Setting::parse("accumulate").unwrap(), Setting::Accumulate);
    }
}
