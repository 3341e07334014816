//! The real corpus: the sample committed in data/sample always; the full corpus ($COLLAPSE_DATA) and OpenAI's
//! GPT-2 tokenizer ($COLLAPSE_GPT2) when set: parsing, cleaning, duplicates, GPT-2 tokenisation.

use std::io::Write;
use std::path::PathBuf;

use corpus::{CleanConfig, RealCorpus, Source, TokenCache, Tokenizer};

/// Says in one line, past the test harness's capture, that a test was skipped and why.
fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "skipped {test}: {why}");
}

/// The full corpus from `COLLAPSE_DATA`, if set.
fn movie_plots(test: &str) -> Option<Source> {
    let Some(path) = std::env::var_os("COLLAPSE_DATA").map(PathBuf::from) else {
        skip(
            test,
            "it needs the full corpus; set COLLAPSE_DATA (see data/README.md)",
        );
        return None;
    };
    assert!(
        path.exists(),
        "COLLAPSE_DATA is set but {} does not exist",
        path.display()
    );
    Some(Source::new(path.to_str().unwrap(), None))
}

/// The GPT-2 tokenizer folder (tokenizer.json, vocab.json, merges.txt) from `COLLAPSE_GPT2`, if set.
fn gpt2_dir(test: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("COLLAPSE_GPT2").map(PathBuf::from) else {
        skip(
            test,
            "it needs OpenAI's GPT-2 tokenizer files; set COLLAPSE_GPT2 to their folder",
        );
        return None;
    };
    assert!(
        dir.is_dir(),
        "COLLAPSE_GPT2 is set but {} is not a folder",
        dir.display()
    );
    Some(dir)
}

/// The real sample committed in the repository.
fn sample() -> Source {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/sample/movie_plots_sample.csv.zst");
    Source::new(path.to_str().unwrap(), None)
}

const RAW: CleanConfig = CleanConfig {
    strip_citations: false,
    normalize_newlines: false,
    collapse_whitespace: false,
    drop_empty: false,
    dedup: false,
};

/// Rows 0-2 of the corpus are rows 0-2 of the sample: the same checks run on both.
fn check_first_rows(c: &RealCorpus) {
    assert!(c.docs[0]
        .text
        .starts_with("A bartender is working at a saloon, serving drinks to customers."));
    assert!(c.docs[0].text.ends_with("order everybody to leave.[1]"));
    assert_eq!(c.docs[0].text.chars().count(), 500);
    // Row 2 ("The Martyred Presidents") is a quoted plot with an internal CRLF.
    let p = &c.docs[2].text;
    assert_eq!(p.chars().count(), 436);
    assert!(p.contains("each victims of assassination.\r\nIn the second shot, which runs just ov"));
    assert!(p.ends_with("an assassin kneels feet of Lady Justice."));
}

#[test]
fn the_committed_sample_parses_and_cleans_like_the_corpus() {
    let c = RealCorpus::load(&sample(), &RAW).unwrap();
    assert_eq!(c.docs.len(), 300);
    check_first_rows(&c);
    assert!(c.docs.iter().filter(|d| d.text.contains("\r\n")).count() > 100);
    let clean = RealCorpus::load(&sample(), &CleanConfig::default()).unwrap();
    assert!(clean
        .docs
        .iter()
        .all(|d| !d.text.contains("\r\n") && !d.text.contains("[1]") && !d.text.is_empty()));
}

#[test]
fn every_row_parses_with_multiline_plots_intact() {
    let Some(src) = movie_plots("every_row_parses_with_multiline_plots_intact") else {
        return;
    };
    let c = RealCorpus::load(&src, &RAW).unwrap();
    assert_eq!(c.docs.len(), 34_886);
    check_first_rows(&c);
    assert_eq!(
        c.docs.iter().filter(|d| d.text.contains("\r\n")).count(),
        23_400
    );
    let words: usize = c
        .docs
        .iter()
        .map(|d| d.text.split_whitespace().count())
        .sum();
    assert_eq!(words, 12_994_798);
    assert_eq!(c.docs[34_885].id, "real:34885");
}

#[test]
fn duplicates_are_removed_before_any_split() {
    let Some(src) = movie_plots("duplicates_are_removed_before_any_split") else {
        return;
    };
    let dedup_only = CleanConfig { dedup: true, ..RAW };
    let c = RealCorpus::load(&src, &dedup_only).unwrap();
    assert_eq!(c.report.dropped_duplicates, 1_017);
    assert_eq!(c.docs.len(), 34_886 - 1_017);
    let full = RealCorpus::load(&src, &CleanConfig::default()).unwrap();
    assert!(full.report.dropped_duplicates >= 1_017, "{:?}", full.report);
    assert!(full
        .docs
        .iter()
        .all(|d| !d.text.contains("\r\n") && !d.text.contains("[1]") && !d.text.is_empty()));
    assert_eq!(full.docs[0].text.chars().last(), Some('.'));
    let distinct: std::collections::HashSet<&str> =
        full.docs.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(distinct.len(), full.docs.len());
}

#[test]
fn gpt2_round_trips_and_matches_openai_ids() {
    let test = "gpt2_round_trips_and_matches_openai_ids";
    let Some(dir) = gpt2_dir(test) else {
        return;
    };
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(tok.encode("Hello world").unwrap(), [15496, 995]);
    assert_eq!(tok.eot(), 50256);
    assert_eq!(tok.vocab_size(), 50_257);
    let from_files =
        Tokenizer::gpt2_from_vocab_merges(&dir.join("vocab.json"), &dir.join("merges.txt"))
            .unwrap();
    assert_eq!(from_files.eot(), 50256);
    // Every document of the sample; of the full corpus, every 997th as well.
    let mut docs = RealCorpus::load(&sample(), &CleanConfig::default())
        .unwrap()
        .docs;
    if let Some(src) = movie_plots(test) {
        let c = RealCorpus::load(&src, &CleanConfig::default()).unwrap();
        docs.extend(c.docs.into_iter().step_by(997));
    }
    for d in &docs {
        let ids = tok.encode(&d.text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), d.text);
        assert_eq!(from_files.encode(&d.text).unwrap(), ids);
    }
}

#[test]
fn the_token_cache_answers_a_second_time_with_the_same_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = dir.path().join("small.csv");
    let mut w = csv::Writer::from_path(&src_path).unwrap();
    w.write_record(["Title", "Plot"]).unwrap();
    for i in 0..50 {
        w.write_record([
            format!("t{i}"),
            format!("Plot number {i}.\r\nIt ends.[{i}]"),
        ])
        .unwrap();
    }
    w.flush().unwrap();
    let source = Source::new(src_path.to_str().unwrap(), None);
    let c = RealCorpus::load(&source, &CleanConfig::default()).unwrap();
    let cache = TokenCache::new(dir.path().join("cache"));
    let tok = Tokenizer::train_bpe(c.docs.iter().map(|d| d.text.as_str()), 300).unwrap();
    let (a, hit_a) = c.tokenize(&tok, Some(&cache)).unwrap();
    let (b, hit_b) = c.tokenize(&tok, Some(&cache)).unwrap();
    assert!(!hit_a && hit_b);
    assert_eq!(a, b);
    assert_eq!(tok.decode(&a[3]).unwrap(), "Plot number 3.\nIt ends.");
}
