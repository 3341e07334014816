//! Properties of splits, plans and round corpora over random schedules and seeds.

use std::collections::HashSet;

use corpus::{
    bpe_training_docs, compose, Alpha, Document, Manifest, Origin, Schedule, Size, Split,
};
use proptest::prelude::*;

fn size_strategy() -> impl Strategy<Value = Size> {
    prop_oneof![
        (1usize..30).prop_map(|n| Size::Fixed { n }),
        (1usize..15).prop_map(|n| Size::Linear { n }),
        (1usize..6).prop_map(|n| Size::Quadratic { n }),
        prop::collection::vec(1usize..40, 1..8).prop_map(|sizes| Size::List { sizes }),
    ]
}

fn alpha_strategy() -> impl Strategy<Value = Alpha> {
    prop_oneof![
        Just(Alpha::Zero),
        (0.0f64..=1.0).prop_map(|alpha| Alpha::Fixed { alpha }),
        (0.0f64..3.0).prop_map(|p| Alpha::Power { p }),
        prop::collection::vec(0.0f64..=1.0, 1..8).prop_map(|values| Alpha::List { values }),
    ]
}

/// Composes every round of one repetition, with synthetic documents standing in for generated ones.
fn run_rounds(
    schedule: &Schedule,
    rounds: usize,
    docs: &[Document],
    split: &Split,
    rep: usize,
) -> Option<Vec<Manifest>> {
    let pool: Vec<&Document> = split.pool.iter().map(|&i| &docs[i]).collect();
    let plan = schedule.plan(rounds, pool.len()).ok()?;
    let mut out: Vec<Manifest> = Vec::new();
    for t in 0..rounds {
        let synthetic: Vec<Document> = (0..plan.rounds[t].synthetic)
            .map(|i| Document::synthetic(rep, t - 1, i, "model", format!("synthetic {t} {i}")))
            .collect();
        let m = compose(
            &plan,
            t,
            rep,
            schedule.accumulate,
            &pool,
            out.last(),
            &synthetic,
        )
        .unwrap();
        out.push(m);
    }
    Some(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn round_corpora_respect_the_plan(
        size in size_strategy(),
        alpha in alpha_strategy(),
        accumulate in any::<bool>(),
        rounds in 1usize..7,
        n_docs in 30usize..400,
        heldout in 1usize..25,
        seed in any::<u64>(),
    ) {
        prop_assume!(heldout < n_docs);
        let schedule = Schedule {
            size,
            alpha,
            accumulate,
            size_is_total: false,
        };
        let docs: Vec<Document> = (0..n_docs).map(|i| Document::real("test", i, format!("doc {i}"))).collect();
        let split = Split::new(n_docs, heldout, seed).unwrap();
        let pool_len = split.pool.len();
        let Some(manifests) = run_rounds(&schedule, rounds, &docs, &split, 3) else {
            // A refused plan must say why; lists may be too short, or the pool too small.
            let e = schedule.plan(rounds, pool_len).unwrap_err().to_string();
            prop_assert!(e.contains("pool has") || e.contains("entries"), "{}", e);
            return Ok(());
        };
        let plan = schedule.plan(rounds, pool_len).unwrap();
        let heldout_ids: HashSet<String> = split.heldout.iter().map(|&i| docs[i].id.clone()).collect();
        let mut fresh_seen = HashSet::new();
        for (t, m) in manifests.iter().enumerate() {
            let rp = &plan.rounds[t];
            prop_assert_eq!(m.documents.len(), rp.total);
            prop_assert_eq!(m.fresh, rp.fresh);
            prop_assert_eq!(m.synthetic, rp.synthetic);
            let new = &m.documents[m.carried..];
            prop_assert_eq!(new.iter().filter(|d| matches!(d.origin, Origin::Real { .. })).count(), rp.fresh);
            prop_assert_eq!(new.iter().filter(|d| matches!(d.origin, Origin::Synthetic { .. })).count(), rp.synthetic);
            for d in new.iter().filter(|d| matches!(d.origin, Origin::Real { .. })) {
                prop_assert!(fresh_seen.insert(d.id.clone()), "fresh document {} used twice", d.id);
            }
            for d in &m.documents {
                prop_assert!(!heldout_ids.contains(&d.id), "held-out {} in round {}", d.id, t);
            }
            if accumulate && t > 0 {
                prop_assert_eq!(&m.documents[..m.carried], &manifests[t - 1].documents[..]);
            } else {
                prop_assert_eq!(m.carried, 0);
            }
        }
        let again = run_rounds(&schedule, rounds, &docs, &Split::new(n_docs, heldout, seed).unwrap(), 3).unwrap();
        prop_assert_eq!(&again, &manifests);
    }

    #[test]
    fn bpe_training_never_sees_held_out_documents(
        n_docs in 10usize..300,
        heldout in 1usize..9,
        seeds in prop::collection::vec(any::<u64>(), 1..6),
    ) {
        let splits: Vec<Split> = seeds.iter().map(|&s| Split::new(n_docs, heldout, s).unwrap()).collect();
        let train = bpe_training_docs(n_docs, &splits);
        let held: HashSet<usize> = splits.iter().flat_map(|s| s.heldout.iter().copied()).collect();
        prop_assert!(train.iter().all(|i| !held.contains(i)));
        prop_assert_eq!(train.len() + held.len(), n_docs);
    }
}

#[test]
fn manifests_round_trip_through_disk() {
    let docs: Vec<Document> = (0..100)
        .map(|i| Document::real("s", i, format!("d{i}")))
        .collect();
    let split = Split::new(100, 10, 4).unwrap();
    let schedule = corpus::Setting::FixedAlpha.schedule(10, 0.5);
    let ms = run_rounds(&schedule, 3, &docs, &split, 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("manifest.json");
    ms[2].write(&p).unwrap();
    assert_eq!(Manifest::read(&p).unwrap(), ms[2]);
    std::fs::write(&p, "{ broken").unwrap();
    assert!(Manifest::read(&p)
        .unwrap_err()
        .to_string()
        .contains("corrupt manifest"));
}

#[test]
fn compose_refuses_inconsistent_inputs() {
    let docs: Vec<Document> = (0..50)
        .map(|i| Document::real("s", i, format!("d{i}")))
        .collect();
    let pool: Vec<&Document> = docs.iter().collect();
    let schedule = corpus::Setting::Accumulate.schedule(5, 0.5);
    let plan = schedule.plan(3, 50).unwrap();
    let e = compose(&plan, 1, 0, true, &pool, None, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs 5 synthetic documents, got 0"), "{e}");
    let syn: Vec<Document> = (0..5)
        .map(|i| Document::synthetic(0, 0, i, "m", "x".into()))
        .collect();
    assert!(compose(&plan, 1, 0, true, &pool, None, &syn)
        .unwrap_err()
        .to_string()
        .contains("no previous corpus"));
    let as_syn: Vec<Document> = docs[..5].to_vec();
    assert!(compose(&plan, 1, 0, true, &pool, None, &as_syn)
        .unwrap_err()
        .to_string()
        .contains("is real"));
}
