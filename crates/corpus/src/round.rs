//! The training corpus of one round and the manifest that records it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::tokenizer::write_atomically;
use crate::{CurationRecord, DocId, Document, Error, Origin, Plan, Result, RoundPlan};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub id: DocId,
    pub origin: Origin,
}

/// Which documents D_t holds, with the plan it realises; written with each round so a resumed run rebuilds
/// exactly the same D_t.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub repetition: usize,
    pub plan: RoundPlan,
    pub fresh: usize,
    pub synthetic: usize,
    /// Documents of D_{t-1} kept (accumulation).
    pub carried: usize,
    pub documents: Vec<ManifestEntry>,
    /// The filter's decision on every candidate, when the run curates (absent otherwise, so an uncurated
    /// manifest is what it always was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curation: Option<CurationRecord>,
}

impl Manifest {
    pub fn round(&self) -> usize {
        self.plan.round
    }

    /// Fraction of D_t that is real text (fresh this round or carried from earlier rounds).
    pub fn real_fraction(&self) -> f64 {
        let real = self
            .documents
            .iter()
            .filter(|d| matches!(d.origin, Origin::Real { .. }))
            .count();
        real as f64 / self.documents.len().max(1) as f64
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomically(
            path,
            serde_json::to_string_pretty(self)
                .expect("serialises")
                .as_bytes(),
        )
    }

    pub fn read(path: &Path) -> Result<Self> {
        let s = std::fs::read_to_string(path).map_err(Error::io(path))?;
        serde_json::from_str(&s)
            .map_err(|e| Error::Round(format!("{}: corrupt manifest ({e})", path.display())))
    }
}

/// Composes D_t: the previous corpus if the schedule accumulates, this round's fresh documents (the next
/// `fresh` of `pool`, taken in order from the plan's offset), and the synthetic documents the previous round's
/// model wrote. `pool` is the repetition's fresh pool in draw order.
pub fn compose(
    plan: &Plan,
    round: usize,
    repetition: usize,
    accumulate: bool,
    pool: &[&Document],
    previous: Option<&Manifest>,
    synthetic: &[Document],
) -> Result<Manifest> {
    let rp = plan
        .rounds
        .get(round)
        .ok_or_else(|| Error::Round(format!("round {round} is not in the plan")))?;
    if synthetic.len() != rp.synthetic {
        return Err(Error::Round(format!(
            "round {round} needs {} synthetic documents, got {}",
            rp.synthetic,
            synthetic.len()
        )));
    }
    let end = rp.pool_offset + rp.fresh;
    if end > pool.len() {
        return Err(Error::Round(format!(
            "round {round} needs pool documents up to {end}, the pool has {}",
            pool.len()
        )));
    }
    compose_selected(
        plan,
        round,
        repetition,
        accumulate,
        &pool[rp.pool_offset..end],
        previous,
        synthetic,
        None,
    )
}

/// Composes D_t from the documents a curation filter selected: the previous corpus if the schedule
/// accumulates, then `fresh`, then `synthetic`. Their number must be the round's n_t; how it splits between
/// real and synthetic is the filter's (the oracle moves it), and the manifest records the realised split.
#[allow(clippy::too_many_arguments)]
pub fn compose_selected(
    plan: &Plan,
    round: usize,
    repetition: usize,
    accumulate: bool,
    fresh: &[&Document],
    previous: Option<&Manifest>,
    synthetic: &[Document],
    curation: Option<CurationRecord>,
) -> Result<Manifest> {
    let rp = plan
        .rounds
        .get(round)
        .ok_or_else(|| Error::Round(format!("round {round} is not in the plan")))?
        .clone();
    if fresh.len() + synthetic.len() != rp.new_docs {
        return Err(Error::Round(format!(
            "round {round} needs {} new documents, got {} fresh and {} synthetic",
            rp.new_docs,
            fresh.len(),
            synthetic.len()
        )));
    }
    if let Some(d) = synthetic.iter().find(|d| d.is_real()) {
        return Err(Error::Round(format!(
            "document {} given as synthetic is real",
            d.id
        )));
    }
    if let Some(d) = fresh.iter().find(|d| !d.is_real()) {
        return Err(Error::Round(format!(
            "document {} given as fresh is synthetic",
            d.id
        )));
    }
    let mut documents = Vec::with_capacity(rp.total);
    let carried = if accumulate && round > 0 {
        let prev = previous.ok_or_else(|| {
            Error::Round(format!(
                "round {round} accumulates but has no previous corpus"
            ))
        })?;
        if prev.round() + 1 != round {
            return Err(Error::Round(format!(
                "round {round} given the corpus of round {}",
                prev.round()
            )));
        }
        documents.extend(prev.documents.iter().cloned());
        prev.documents.len()
    } else {
        0
    };
    let entry = |d: &Document| ManifestEntry {
        id: d.id.clone(),
        origin: d.origin.clone(),
    };
    documents.extend(fresh.iter().map(|d| entry(d)));
    documents.extend(synthetic.iter().map(entry));
    if documents.len() != rp.total {
        return Err(Error::Round(format!(
            "round {round} composed {} documents, the plan says {}",
            documents.len(),
            rp.total
        )));
    }
    Ok(Manifest {
        repetition,
        fresh: fresh.len(),
        synthetic: synthetic.len(),
        carried,
        plan: rp,
        documents,
        curation,
    })
}
