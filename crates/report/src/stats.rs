//! The statistics the report publishes: Student-t intervals and two-sided p-values with exact quantiles for
//! every df (statrs), Holm's step-down adjustment within a stated family, and Fieller's interval for a ratio
//! of paired means. Nothing here knows about runs or rounds: it takes numbers.

use statrs::distribution::{ContinuousCDF, StudentsT};

/// The two-sided level of every interval and verdict.
pub const ALPHA: f64 = 0.05;

/// The `p` quantile of Student's t with `df` degrees of freedom.
pub fn t_quantile(df: f64, p: f64) -> f64 {
    StudentsT::new(0.0, 1.0, df)
        .expect("df is positive")
        .inverse_cdf(p)
}

/// Two-sided p-value of a t statistic with `df` degrees of freedom.
pub fn t_p_value(t: f64, df: f64) -> f64 {
    if t.is_nan() {
        return f64::NAN;
    }
    let d = StudentsT::new(0.0, 1.0, df).expect("df is positive");
    // The survival function of |t|, not 1 - cdf, so small p-values keep their digits.
    (2.0 * d.sf(t.abs())).min(1.0)
}

/// A mean with its 95% Student-t interval and the two-sided test of mean = 0: the one-sample test of paired
/// differences. With fewer than 2 values there is no interval (`lo = hi = mean`) and no p-value (NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub n: usize,
    pub mean: f64,
    pub sd: f64,
    pub lo: f64,
    pub hi: f64,
    pub t: f64,
    pub p: f64,
}

impl Estimate {
    pub fn of(xs: &[f64]) -> Self {
        let n = xs.len();
        let mean = if n == 0 {
            f64::NAN
        } else {
            xs.iter().sum::<f64>() / n as f64
        };
        if n < 2 {
            return Self {
                n,
                mean,
                sd: f64::NAN,
                lo: mean,
                hi: mean,
                t: f64::NAN,
                p: f64::NAN,
            };
        }
        let df = (n - 1) as f64;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / df).sqrt();
        let se = sd / (n as f64).sqrt();
        let half = t_quantile(df, 1.0 - ALPHA / 2.0) * se;
        // Identical differences (sd = 0) are a certain sign when the mean is not 0, and no evidence when it is.
        let t = if se > 0.0 {
            mean / se
        } else if mean == 0.0 {
            0.0
        } else {
            mean.signum() * f64::INFINITY
        };
        let p = if t.is_infinite() {
            0.0
        } else {
            t_p_value(t, df)
        };
        Self {
            n,
            mean,
            sd,
            lo: mean - half,
            hi: mean + half,
            t,
            p,
        }
    }

    /// Half-width of the interval (0 without one).
    pub fn half_width(&self) -> f64 {
        self.hi - self.mean
    }
}

/// Holm's step-down adjustment of a family of p-values (NaN entries, tests that could not be made, are left
/// out of the family and stay NaN): the i-th smallest of m becomes max over j <= i of min(1, (m - j + 1) p_(j)).
pub fn holm(ps: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..ps.len()).filter(|&i| !ps[i].is_nan()).collect();
    idx.sort_by(|&a, &b| ps[a].total_cmp(&ps[b]));
    let m = idx.len();
    let mut out = vec![f64::NAN; ps.len()];
    let mut running = 0.0f64;
    for (j, &i) in idx.iter().enumerate() {
        running = running.max(((m - j) as f64 * ps[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// The ratio of two paired means, mean(a) / mean(b), with Fieller's 95% interval (exact under normality of
/// the pairs, unlike the delta method, and honest when mean(b) is not clearly away from 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    pub n: usize,
    pub estimate: f64,
    /// `None` when the interval is unbounded (mean(b) is not significantly different from 0).
    pub interval: Option<(f64, f64)>,
}

pub fn fieller(a: &[f64], b: &[f64]) -> Ratio {
    assert_eq!(a.len(), b.len(), "paired samples");
    let n = a.len();
    let nf = n as f64;
    let (ma, mb) = (
        a.iter().sum::<f64>() / nf.max(1.0),
        b.iter().sum::<f64>() / nf.max(1.0),
    );
    let estimate = ma / mb;
    if n < 2 {
        return Ratio {
            n,
            estimate,
            interval: None,
        };
    }
    let df = nf - 1.0;
    let cov = |x: &[f64], mx: f64, y: &[f64], my: f64| {
        x.iter()
            .zip(y)
            .map(|(u, v)| (u - mx) * (v - my))
            .sum::<f64>()
            / df
    };
    let (saa, sbb, sab) = (cov(a, ma, a, ma), cov(b, mb, b, mb), cov(a, ma, b, mb));
    let t2 = t_quantile(df, 1.0 - ALPHA / 2.0).powi(2) / nf;
    // (ma - θ mb)^2 = t² (saa - 2θ sab + θ² sbb) / n, a quadratic q2 θ² - 2 q1 θ + q0 = 0.
    let q2 = mb * mb - t2 * sbb;
    let q1 = ma * mb - t2 * sab;
    let q0 = ma * ma - t2 * saa;
    // A double root (a exactly proportional to b) can come out a rounding error below 0.
    let disc = match q1 * q1 - q2 * q0 {
        d if d < 0.0 && d > -1e-12 * q1 * q1 => 0.0,
        d => d,
    };
    let interval = (q2 > 0.0 && disc >= 0.0).then(|| {
        let r = disc.sqrt();
        ((q1 - r) / q2, (q1 + r) / q2)
    });
    Ratio {
        n,
        estimate,
        interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two-sided 95% quantiles against published values: the NIST/SEMATECH e-Handbook's t table (1.3.6.7.2,
    /// 3 decimals) and, to 9 digits, scipy.stats.t.ppf (which agrees with R's qt), including df >= 31, where
    /// the old table fell back to 1.96.
    #[test]
    fn t_quantiles_match_published_values() {
        let table = [
            (1.0, 12.706204736),
            (2.0, 4.302652730),
            (4.0, 2.776445105),
            (9.0, 2.262157163),
            (19.0, 2.093024054),
            (30.0, 2.042272456),
            (31.0, 2.039513446),
            (40.0, 2.021075390),
            (100.0, 1.983971519),
        ];
        for (df, want) in table {
            let got = t_quantile(df, 0.975);
            assert!((got - want).abs() < 1e-8, "df {df}: {got} vs {want}");
        }
        // 99% and 90% two-sided, NIST's table to 3 decimals.
        assert!((t_quantile(4.0, 0.995) - 4.604).abs() < 5e-4);
        assert!((t_quantile(10.0, 0.95) - 1.812).abs() < 5e-4);
        // The p-value of the quantile is the level.
        assert!((t_p_value(2.776445105, 4.0) - 0.05).abs() < 1e-9);
        // The curation review's numbers: t = -3.66 on 4 df is p = 0.0216.
        assert!((t_p_value(-3.66, 4.0) - 0.02158).abs() < 1e-4);
    }

    /// Holm against statsmodels' multipletests(p, method="holm") (the same numbers as R's p.adjust(p,
    /// "holm")): the step-down multipliers, the running maximum and the cap at 1.
    #[test]
    fn holm_matches_published_adjustments() {
        let p = [0.01, 0.04, 0.03, 0.005, 0.2];
        // multipletests([0.01, 0.04, 0.03, 0.005, 0.2], method="holm") = 0.04 0.09 0.09 0.025 0.2
        let want = [0.04, 0.09, 0.09, 0.025, 0.2];
        for (g, w) in holm(&p).iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{:?}", holm(&p));
        }
        // The curation review: 10 filter pairs in a setting, smallest p 0.014 -> 0.14; it no longer passes.
        let mut fam = vec![0.5; 10];
        fam[3] = 0.014;
        fam[7] = 0.019;
        let adj = holm(&fam);
        assert!((adj[3] - 0.14).abs() < 1e-12 && (adj[7] - 0.171).abs() < 1e-12);
        assert!(adj.iter().all(|&x| x >= ALPHA));
        // Capped at 1, NaN left out of the family.
        let adj = holm(&[0.6, f64::NAN, 0.7]);
        assert_eq!(adj[0], 1.0);
        assert!(adj[1].is_nan());
        assert_eq!(adj[2], 1.0);
    }

    #[test]
    fn estimates_of_paired_differences() {
        // Differences 10, 12, 8: mean 10, sd 2, t = 10 / (2/sqrt 3) = 8.66 on 2 df.
        let e = Estimate::of(&[10.0, 12.0, 8.0]);
        assert_eq!(e.n, 3);
        assert!((e.mean - 10.0).abs() < 1e-12 && (e.sd - 2.0).abs() < 1e-12);
        let hw = 4.302652730 * 2.0 / 3f64.sqrt();
        assert!((e.half_width() - hw).abs() < 1e-8);
        assert!((e.t - 10.0 / (2.0 / 3f64.sqrt())).abs() < 1e-9);
        assert!((e.p - 0.013072).abs() < 1e-5, "{}", e.p);
        let one = Estimate::of(&[3.0]);
        assert!(one.p.is_nan() && one.lo == 3.0 && one.hi == 3.0);
        let same = Estimate::of(&[2.0, 2.0, 2.0]);
        assert_eq!(same.p, 0.0);
        assert_eq!(Estimate::of(&[0.0, 0.0]).p, 1.0);
    }

    /// Fieller's interval against its quadratic solved by hand, and unbounded when the denominator's mean is
    /// within noise of 0.
    #[test]
    fn fieller_interval_of_a_ratio_of_paired_means() {
        let b = [0.30, 0.32, 0.28, 0.31, 0.29];
        let a: Vec<f64> = b.iter().map(|x| x / 2.0).collect();
        let r = fieller(&a, &b);
        assert!((r.estimate - 0.5).abs() < 1e-12);
        let (lo, hi) = r.interval.unwrap();
        // a = b/2 exactly: every pair has ratio 1/2 and var(a - θb) vanishes at θ = 1/2 only.
        assert!(
            (lo - 0.5).abs() < 1e-9 && (hi - 0.5).abs() < 1e-9,
            "{lo} {hi}"
        );
        let a = [0.10, 0.20, 0.12, 0.18, 0.15];
        let r = fieller(&a, &b);
        let (lo, hi) = r.interval.unwrap();
        assert!(lo < r.estimate && r.estimate < hi);
        // Each end satisfies (ma - θ mb)^2 = t^2 var(a - θ b) / n.
        for th in [lo, hi] {
            let d: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - th * y).collect();
            let e = Estimate::of(&d);
            assert!((e.mean.abs() - e.half_width()).abs() < 1e-9, "{th}: {e:?}");
        }
        let noisy_b = [0.3, -0.3, 0.2, -0.25, 0.04];
        assert!(fieller(&a, &noisy_b).interval.is_none());
    }
}
