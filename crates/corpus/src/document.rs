use serde::{Deserialize, Serialize};

/// A document's identity, unique across a run: `real:ROW` for a row of the source, `syn:REP:ROUND:I` for the
/// `I`-th document written by repetition `REP`'s model of round `ROUND`.
pub type DocId = String;

/// Where a document came from, so that every document of every training corpus can be traced.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Origin {
    /// Row `row` (0-based, data rows only) of the source named `source`.
    Real { source: String, row: usize },
    /// Written by the model trained in round `round` of repetition `repetition`, stored at `model`.
    Synthetic {
        repetition: usize,
        round: usize,
        model: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    pub id: DocId,
    pub text: String,
    pub origin: Origin,
}

impl Document {
    pub fn real(source: &str, row: usize, text: String) -> Self {
        Self {
            id: format!("real:{row}"),
            text,
            origin: Origin::Real {
                source: source.to_string(),
                row,
            },
        }
    }

    pub fn synthetic(
        repetition: usize,
        round: usize,
        index: usize,
        model: &str,
        text: String,
    ) -> Self {
        Self {
            id: format!("syn:{repetition}:{round}:{index}"),
            text,
            origin: Origin::Synthetic {
                repetition,
                round,
                model: model.to_string(),
            },
        }
    }

    pub fn is_real(&self) -> bool {
        matches!(self.origin, Origin::Real { .. })
    }
}
