//! The exact recurrences against the Monte Carlo, their limits, the filter, and reproducibility.

use corpus::{Alpha, Schedule, Setting, Size};
use theory::{
    categorical_risk, fixed_point, simulate, unlimited_plan, Filter, ModelClass, Simulation, Truth,
};

fn sim(reps: usize, filter: Filter) -> Simulation {
    Simulation {
        model: ModelClass::Categorical,
        categories: 10,
        truth: Truth::Zipf { s: 1.0 },
        repetitions: reps,
        seed: 11,
        filter,
    }
}

fn schedule(size: Size, alpha: Alpha, accumulate: bool) -> Schedule {
    Schedule {
        size,
        alpha,
        accumulate,
        size_is_total: false,
    }
}

/// The Monte Carlo mean is within 2% of the exact recurrence at every round, for three schedules with and
/// without accumulation; 40,000 repetitions put 2% at four standard errors or more. The same data reject a
/// recurrence without the (n - 1)/n factor (the cross term of a biased estimator).
#[test]
fn simulation_matches_the_exact_recurrence() {
    let s = sim(40_000, Filter::NONE);
    let c = s.c();
    let schedules = [
        (
            "collapse",
            schedule(Size::Fixed { n: 20 }, Alpha::Zero, false),
        ),
        (
            "fixed alpha",
            schedule(Size::Fixed { n: 20 }, Alpha::Fixed { alpha: 0.5 }, false),
        ),
        (
            "decaying",
            schedule(Size::Linear { n: 20 }, Alpha::Power { p: 1.0 }, false),
        ),
    ];
    let mut perturbed_rejected = false;
    for (name, base) in schedules {
        for accumulate in [false, true] {
            let sc = Schedule {
                accumulate,
                ..base.clone()
            };
            let plan = unlimited_plan(&sc, 8).unwrap();
            let exact = categorical_risk(&plan, accumulate, c, Filter::NONE).unwrap();
            let mc = simulate(&s, &plan, accumulate).unwrap();
            for (t, (e, b)) in exact.iter().zip(&mc).enumerate() {
                let rel = (b.mean - e).abs() / e;
                assert!(
                    rel < 0.02,
                    "{name}, accumulate {accumulate}, round {t}: simulated {} vs exact {e} ({rel:.4})",
                    b.mean
                );
                assert!(
                    0.02 * e > 4.0 * b.se,
                    "2% must be several standard errors: {b:?}"
                );
            }
            if !accumulate {
                // Without the (n_t - 1)/n_t factor.
                let mut r = 0.0;
                for (rp, b) in plan.rounds.iter().zip(&mc) {
                    let n = rp.new_docs as f64;
                    r = c / n
                        + if rp.round == 0 {
                            0.0
                        } else {
                            (1.0 - rp.alpha).powi(2) * r
                        };
                    perturbed_rejected |= (b.mean - r).abs() / r > 0.02;
                }
            }
        }
    }
    assert!(
        perturbed_rejected,
        "a wrong recurrence must fail the same comparison"
    );
}

/// Closed-form limits against long recurrences.
#[test]
fn limits_match_long_recurrences() {
    let c = 0.8;
    for (n, alpha) in [(20usize, 0.5), (100, 0.1), (7, 0.9), (50, 0.0)] {
        let sc = schedule(Size::Fixed { n }, Alpha::Fixed { alpha }, false);
        let plan = unlimited_plan(&sc, 3000).unwrap();
        let r = categorical_risk(&plan, false, c, Filter::NONE).unwrap();
        let want = fixed_point(c, n as f64, alpha);
        assert!(
            (r.last().unwrap() - want).abs() < 1e-9 * want,
            "n {n}, alpha {alpha}: {} vs {want}",
            r.last().unwrap()
        );
    }
    // alpha = 0: R_t = c (1 - (1 - 1/n)^(t+1)), which tends to c (collapse onto a point mass).
    let plan = unlimited_plan(&schedule(Size::Fixed { n: 10 }, Alpha::Zero, false), 40).unwrap();
    let r = categorical_risk(&plan, false, c, Filter::NONE).unwrap();
    for (t, x) in r.iter().enumerate() {
        let want = c * (1.0 - 0.9f64.powi(t as i32 + 1));
        assert!((x - want).abs() < 1e-12, "round {t}: {x} vs {want}");
    }
    // Accumulation with alpha = 0 and fixed n keeps the error bounded, at c (1 - sinc(π / √n)); the
    // recurrence approaches it like 1/t.
    for n in [10usize, 100] {
        let plan =
            unlimited_plan(&schedule(Size::Fixed { n }, Alpha::Zero, true), 100_000).unwrap();
        let r = categorical_risk(&plan, true, c, Filter::NONE).unwrap();
        let want = theory::accumulated_collapse_limit(c, n as f64);
        assert!(
            (r.last().unwrap() - want).abs() < 1e-4 * want,
            "{} vs {want}",
            r.last().unwrap()
        );
        assert!(want < 0.2 * c);
    }
}

/// A filter that keeps everything is no filter; one that keeps no synthetic sample (e2 = 0) leaves pure real
/// data, so even alpha = 0.2 does not collapse; a real classifier moves alpha as appendix D says.
#[test]
fn filtering_moves_alpha_and_n_as_appendix_d_says() {
    let s = sim(20_000, Filter::NONE);
    let c = s.c();
    let sc = schedule(Size::Fixed { n: 400 }, Alpha::Fixed { alpha: 0.2 }, false);
    let plan = unlimited_plan(&sc, 8).unwrap();
    let keep_all = Filter { e1: 0.0, e2: 1.0 };
    assert_eq!(
        categorical_risk(&plan, false, c, keep_all).unwrap(),
        categorical_risk(&plan, false, c, Filter::NONE).unwrap()
    );
    let f = Filter { e1: 0.1, e2: 0.3 };
    let (a, n) = f.apply(0.2, 400.0);
    assert!((a - 0.2 * 0.9 / (0.2 * 0.9 + 0.8 * 0.3)).abs() < 1e-15);
    assert!((n - 400.0 * (0.2 * 0.9 + 0.8 * 0.3)).abs() < 1e-9);

    // A perfect filter: every round is n alpha real samples, so the risk stays at c / (n alpha).
    let perfect = Filter { e1: 0.0, e2: 0.0 };
    let exact = categorical_risk(&plan, false, c, perfect).unwrap();
    for (t, x) in exact.iter().enumerate() {
        let n = if t == 0 { 400.0 } else { 80.0 };
        assert!((x - c / n).abs() < 1e-12, "round {t}: {x}");
    }
    let mc = simulate(&sim(20_000, perfect), &plan, false).unwrap();
    let unfiltered = simulate(&s, &plan, false).unwrap();
    for (t, (e, b)) in exact.iter().zip(&mc).enumerate() {
        // The kept size is Binomial(400, 0.2) rather than exactly 80: E[1/N] is about 1.3% above 1/E[N].
        assert!(
            (b.mean - e).abs() / e < 0.03,
            "round {t}: {} vs {e}",
            b.mean
        );
    }
    // Unfiltered, the 320 synthetic samples add more data than contamination (R_inf = c / 144.6 < c / 80).
    assert!(unfiltered[7].mean < mc[7].mean);

    // The classifier of appendix D: the simulation filters sample by sample, the recurrence uses (alpha', n').
    let mc = simulate(&sim(20_000, f), &plan, false).unwrap();
    let exact = categorical_risk(&plan, false, c, f).unwrap();
    for (t, (e, b)) in exact.iter().zip(&mc).enumerate() {
        assert!(
            (b.mean - e).abs() / e < 0.02,
            "round {t}: {} vs {e}",
            b.mean
        );
    }
    assert!(Filter { e1: 1.5, e2: 0.0 }.validate().is_err());
}

/// A seed gives the same bits, on any number of threads; another seed other bits.
#[test]
fn a_seed_gives_identical_results() {
    let sc = Setting::DecayingAlpha.schedule(30, 0.5);
    let plan = unlimited_plan(&sc, 5).unwrap();
    for model in [
        ModelClass::Categorical,
        ModelClass::Gaussian,
        ModelClass::Gmm,
        ModelClass::Logistic,
    ] {
        let s = Simulation {
            model,
            repetitions: 16,
            ..sim(16, Filter { e1: 0.1, e2: 0.5 })
        };
        let a = simulate(&s, &plan, false).unwrap();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = one.install(|| simulate(&s, &plan, false).unwrap());
        assert_eq!(a, b, "{model:?}");
        let c = simulate(
            &Simulation {
                seed: 12,
                ..s.clone()
            },
            &plan,
            false,
        )
        .unwrap();
        assert_ne!(a, c, "{model:?}");
    }
}

/// The other model classes: pure real data keep the risk at its round-0 level, alpha = 0 makes it grow.
#[test]
fn every_model_class_collapses_without_fresh_data() {
    for model in [ModelClass::Gaussian, ModelClass::Gmm, ModelClass::Logistic] {
        let s = Simulation {
            model,
            repetitions: 200,
            ..sim(200, Filter::NONE)
        };
        let run = |alpha| {
            let sc = schedule(Size::Fixed { n: 100 }, alpha, false);
            simulate(&s, &unlimited_plan(&sc, 10).unwrap(), false).unwrap()
        };
        let real = run(Alpha::Fixed { alpha: 1.0 });
        let synthetic = run(Alpha::Zero);
        assert!(real.iter().all(|b| b.mean.is_finite()));
        assert!(
            synthetic[9].mean > 2.0 * real[9].mean,
            "{model:?}: alpha = 0 gives {} at round 9, alpha = 1 gives {}",
            synthetic[9].mean,
            real[9].mean
        );
    }
}
