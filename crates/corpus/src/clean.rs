use std::collections::HashSet;
use std::sync::LazyLock;

use rayon::prelude::*;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::Document;

/// Which cleaning steps run; all on by default, as the paper's corpus wants.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanConfig {
    /// Remove Wikipedia citation marks such as `[1]` and `[12]`.
    pub strip_citations: bool,
    /// CRLF and lone CR become LF.
    pub normalize_newlines: bool,
    /// Runs of spaces and tabs become one space, three or more newlines become two, ends are trimmed.
    pub collapse_whitespace: bool,
    /// Drop documents that are empty after cleaning.
    pub drop_empty: bool,
    /// Drop documents whose cleaned text repeats an earlier one, before any split, so a held-out set never
    /// shares a text with the training pool.
    pub dedup: bool,
}

impl Default for CleanConfig {
    fn default() -> Self {
        Self {
            strip_citations: true,
            normalize_newlines: true,
            collapse_whitespace: true,
            drop_empty: true,
            dedup: true,
        }
    }
}

/// What cleaning removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanReport {
    pub input: usize,
    pub dropped_empty: usize,
    pub dropped_duplicates: usize,
    pub output: usize,
}

static CITATION: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\[\d+\]").expect("valid regex"));
static SPACES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[ \t\u{a0}]+").expect("valid regex"));
static SPACE_AROUND_NEWLINE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r" ?\n ?").expect("valid regex"));
static NEWLINES: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\n{3,}").expect("valid regex"));

/// One document's text through the enabled steps.
pub fn clean_text(text: &str, cfg: &CleanConfig) -> String {
    let mut s = text.to_string();
    if cfg.normalize_newlines {
        s = s.replace("\r\n", "\n").replace('\r', "\n");
    }
    if cfg.strip_citations {
        s = CITATION.replace_all(&s, "").into_owned();
    }
    if cfg.collapse_whitespace {
        s = SPACES.replace_all(&s, " ").into_owned();
        s = SPACE_AROUND_NEWLINE.replace_all(&s, "\n").into_owned();
        s = NEWLINES.replace_all(&s, "\n\n").into_owned();
        s = s.trim().to_string();
    }
    s
}

/// Cleans documents in parallel, then drops empty ones and later duplicates, keeping the order.
pub fn clean_documents(docs: Vec<Document>, cfg: &CleanConfig) -> (Vec<Document>, CleanReport) {
    let input = docs.len();
    let docs: Vec<Document> = docs
        .into_par_iter()
        .map(|mut d| {
            d.text = clean_text(&d.text, cfg);
            d
        })
        .collect();
    let mut report = CleanReport {
        input,
        ..Default::default()
    };
    let mut seen = HashSet::new();
    let out: Vec<Document> = docs
        .into_iter()
        .filter(|d| {
            if cfg.drop_empty && d.text.trim().is_empty() {
                report.dropped_empty += 1;
                return false;
            }
            if cfg.dedup && !seen.insert(d.text.clone()) {
                report.dropped_duplicates += 1;
                return false;
            }
            true
        })
        .collect();
    report.output = out.len();
    (out, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_does_its_job() {
        let c = CleanConfig::default();
        assert_eq!(
            clean_text("A film.[1] It  won[12].\r\nNext\tline ", &c),
            "A film. It won.\nNext line"
        );
        assert_eq!(clean_text("a\n\n\n\nb", &c), "a\n\nb");
        let off = CleanConfig {
            strip_citations: false,
            ..c.clone()
        };
        assert_eq!(clean_text("x[3]", &off), "x[3]");
        let docs = vec![
            Document::real("s", 0, "same".into()),
            Document::real("s", 1, "  ".into()),
            Document::real("s", 2, "same[4]".into()),
            Document::real("s", 3, "other".into()),
        ];
        let (out, rep) = clean_documents(docs, &c);
        assert_eq!(
            out.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            ["real:0", "real:3"]
        );
        assert_eq!(
            rep,
            CleanReport {
                input: 4,
                dropped_empty: 1,
                dropped_duplicates: 1,
                output: 2
            }
        );
    }
}
