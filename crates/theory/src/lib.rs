//! The statistics of iterative training on a mixture of true and synthetic data (Bakshi & Chakraborty,
//! arXiv 2602.10531): exact risk recurrences for the categorical model, and Monte Carlo simulations of the
//! categorical, Gaussian, Gaussian-mixture and logistic models, all driven by the same [`corpus::Schedule`]
//! as the GPT runs, so one config describes an experiment and its theory twin.
//!
//! Owns the recurrences, their closed-form limits, the simulations and the filter of the paper's appendix D.
//! It shares only the schedule with the rest of the workspace and knows nothing of models, tokenizers or run
//! directories.
//!
//! # The categorical model
//!
//! Round t draws n_t samples from q_t = alpha_t p + (1 - alpha_t) p̂_{t-1} (p̂_{-1} is irrelevant: alpha_0 = 1)
//! and fits p̂_t, the sample proportions (the MLE that does not know which samples are synthetic). The risk is
//! R_t = E‖p̂_t − p‖², and c = 1 − ‖p‖².
//!
//! **Without accumulation.** Conditionally on q_t the counts are multinomial, so E[p̂_t | q_t] = q_t and
//! E[‖p̂_t − q_t‖² | q_t] = (1 − ‖q_t‖²)/n_t. Then ‖p̂_t − p‖² = ‖p̂_t − q_t‖² + 2⟨p̂_t − q_t, q_t − p⟩ + ‖q_t − p‖²,
//! whose middle term has conditional mean 0. By induction p̂ is unbiased (E p̂_t = alpha_t p + (1 − alpha_t)
//! E p̂_{t−1} = p), and q_t − p = (1 − alpha_t)(p̂_{t−1} − p), so E‖q_t‖² = ‖p‖² + (1 − alpha_t)² R_{t−1} and
//!
//! R_t = c/n_t + ((n_t − 1)/n_t) (1 − alpha_t)² R_{t−1},  R_0 = c/n_0.
//!
//! With fixed alpha > 0 and n the fixed point is R_∞ = c / (n − (n − 1)(1 − alpha)²); with alpha = 0 and
//! fixed n, R_t = c (1 − (1 − 1/n)^{t+1}) → c: the model collapses onto a point mass.
//!
//! **With accumulation** (the MLE on all data so far, N_t = n_0 + … + n_t samples):
//! N_t p̂_t = N_{t−1} p̂_{t−1} + n_t (q_t + ξ_t) with E[ξ_t | past] = 0 and E‖ξ_t‖² = (1 − E‖q_t‖²)/n_t. Writing
//! e_t = p̂_t − p, e_t = a_t e_{t−1} + (n_t/N_t) ξ_t with a_t = (N_{t−1} + n_t (1 − alpha_t))/N_t, and the cross
//! term vanishes again:
//!
//! R_t = (a_t² − (n_t/N_t²)(1 − alpha_t)²) R_{t−1} + n_t c / N_t²,  R_0 = c/n_0.
//!
//! Without accumulation (N_{t−1} = 0) this is the first recurrence. With alpha = 0 and fixed n the error
//! stays bounded: c − R_t = (c − R_{t−1})(1 − 1/(n (t+1)²)), so R_∞ = c (1 − sin(π/√n) / (π/√n)).
//!
//! **Filtering** (appendix D): a classifier removes what it calls synthetic; it calls a real sample synthetic
//! with probability e1 and a synthetic one real with probability e2. The kept data are a mixture with weight
//! alpha' = alpha (1 − e1) / (alpha (1 − e1) + (1 − alpha) e2) on p, of expected size n' = n (alpha (1 − e1) +
//! (1 − alpha) e2). The recurrences use (alpha'_t, n'_t); the simulations filter sample by sample, so their
//! kept size is random around n'.

mod recurrence;
mod simulate;

pub use recurrence::unlimited_plan;

pub use recurrence::{
    accumulated_collapse_limit, categorical_risk, counted_risk, fixed_point, Filter, RealDraws,
    RoundCounts,
};
pub use simulate::{simulate, Band, ModelClass, Simulation, Truth};

/// Errors of the theory crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid theory settings: {0}")]
    Config(String),
    #[error(transparent)]
    Schedule(#[from] corpus::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
