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
    /// n base^t, rounded to whole documents.
    Exponential { n: usize, base: f64 },
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
///
/// Accumulation has two readings of n_t. By default each round adds n_t new documents to D_{t-1}, so
/// |D_t| = n_0 + ... + n_t. With `size_is_total`, n_t is |D_t| itself: round t adds n_t - n_{t-1} new
/// documents (n_t must grow every round), with the same fresh fraction alpha_t among them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub size: Size,
    pub alpha: Alpha,
    pub accumulate: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub size_is_total: bool,
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
    /// The control of setting 3 (not one of the paper's): n fresh real documents each round and nothing
    /// synthetic. Its fresh documents are drawn from the pool in the same order and amounts as setting 3's,
    /// so round t of both trains on the same n fresh plots and differs only by setting 3's t n synthetic ones.
    FreshOnly,
}

impl Setting {
    /// Every preset, numbered by position.
    pub const ALL: [Setting; 5] = [
        Setting::SyntheticOnly,
        Setting::Accumulate,
        Setting::FixedAlpha,
        Setting::DecayingAlpha,
        Setting::FreshOnly,
    ];

    /// The paper's four settings (a config's default).
    pub const PAPER: [Setting; 4] = [
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
            Setting::FreshOnly => "fresh-only",
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
                size_is_total: false,
            },
            Setting::Accumulate => Schedule {
                size: Size::Fixed { n },
                alpha: Alpha::Zero,
                accumulate: true,
                size_is_total: false,
            },
            Setting::FixedAlpha => Schedule {
                size: Size::Fixed { n },
                alpha: Alpha::Fixed { alpha },
                accumulate: false,
                size_is_total: false,
            },
            Setting::DecayingAlpha => Schedule {
                size: Size::Linear { n },
                alpha: Alpha::Power { p: 1.0 },
                accumulate: false,
                size_is_total: false,
            },
            Setting::FreshOnly => Schedule {
                size: Size::Fixed { n },
                alpha: Alpha::Fixed { alpha: 1.0 },
                accumulate: false,
                size_is_total: false,
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
            Size::Exponential { n, base } => {
                if !(base.is_finite() && *base >= 1.0) {
                    return Err(Error::Schedule(format!(
                        "an exponential size needs base >= 1, got {base}"
                    )));
                }
                (*n as f64 * base.powi(t as i32)).round() as usize
            }
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
            Size::Fixed { n: 0 }
            | Size::Linear { n: 0 }
            | Size::Quadratic { n: 0 }
            | Size::Exponential { n: 0, .. } => {
                return Err(Error::Schedule("n must be positive".into()))
            }
            _ => {}
        }
        if self.size_is_total && !self.accumulate {
            return Err(Error::Schedule(
                "size_is_total reads n_t as |D_t| of an accumulating schedule: set accumulate = true".into(),
            ));
        }
        if let Alpha::List { values } = &self.alpha {
            if values.is_empty() {
                return Err(Error::Schedule("the alpha list is empty".into()));
            }
        }
        let mut out = Vec::with_capacity(rounds);
        let (mut offset, mut total) = (0, 0);
        for t in 0..rounds {
            let n = if self.size_is_total && t > 0 {
                let (now, before) = (self.size(t)?, self.size(t - 1)?);
                if now <= before {
                    return Err(Error::Schedule(format!(
                        "with size_is_total, |D_t| = n_t must grow every round: round {t} has n_t = {now} after {before}"
                    )));
                }
                now - before
            } else {
                self.size(t)?
            };
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

    /// The two readings of accumulation: n_t new documents a round, or |D_t| = n_t in total.
    #[test]
    fn accumulation_adds_n_t_or_grows_to_n_t() {
        let each = Schedule {
            size: Size::Linear { n: 10 },
            alpha: Alpha::Fixed { alpha: 0.5 },
            accumulate: true,
            size_is_total: false,
        };
        let p = each.plan(4, usize::MAX).unwrap();
        let totals: Vec<usize> = p.rounds.iter().map(|r| r.total).collect();
        assert_eq!(totals, [10, 30, 60, 100]);
        let total = Schedule {
            size_is_total: true,
            ..each.clone()
        };
        let p = total.plan(4, usize::MAX).unwrap();
        let rows: Vec<(usize, usize, usize)> = p
            .rounds
            .iter()
            .map(|r| (r.new_docs, r.fresh, r.total))
            .collect();
        assert_eq!(rows, [(10, 10, 10), (10, 5, 20), (10, 5, 30), (10, 5, 40)]);
        let fixed = Schedule {
            size: Size::Fixed { n: 10 },
            ..total.clone()
        };
        assert!(fixed
            .plan(2, usize::MAX)
            .unwrap_err()
            .to_string()
            .contains("must grow every round"));
        let not_acc = Schedule {
            accumulate: false,
            ..total
        };
        assert!(not_acc
            .plan(2, 100)
            .unwrap_err()
            .to_string()
            .contains("accumulate = true"));
        let exp = Schedule {
            size: Size::Exponential { n: 10, base: 2.0 },
            alpha: Alpha::Zero,
            accumulate: false,
            size_is_total: false,
        };
        let sizes: Vec<usize> = exp
            .plan(4, usize::MAX)
            .unwrap()
            .rounds
            .iter()
            .map(|r| r.new_docs)
            .collect();
        assert_eq!(sizes, [10, 20, 40, 80]);
        let bad = Schedule {
            size: Size::Exponential { n: 10, base: 0.5 },
            ..exp
        };
        assert!(bad
            .plan(2, usize::MAX)
            .unwrap_err()
            .to_string()
            .contains("base >= 1"));
    }

    /// Fresh-only takes exactly setting 3's fresh documents: the same pool positions and counts every round.
    #[test]
    fn fresh_only_draws_the_fresh_documents_of_setting_3() {
        for n in [1, 7, 24, 96, 1000] {
            let rounds = 12;
            let s3 = Setting::DecayingAlpha
                .schedule(n, 0.5)
                .plan(rounds, usize::MAX)
                .unwrap();
            let f = Setting::FreshOnly
                .schedule(n, 0.5)
                .plan(rounds, usize::MAX)
                .unwrap();
            for (a, b) in s3.rounds.iter().zip(&f.rounds) {
                assert_eq!(
                    (a.pool_offset, a.fresh),
                    (b.pool_offset, b.fresh),
                    "n {n}: {a:?} {b:?}"
                );
                assert_eq!(b.synthetic, 0);
            }
            assert_eq!(s3.fresh_total, f.fresh_total);
        }
        assert_eq!(Setting::parse("fresh-only").unwrap().number(), 4);
        assert_eq!(Setting::parse("4").unwrap(), Setting::FreshOnly);
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
