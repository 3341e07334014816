//! The real corpus of ../shared/data (or $COLLAPSE_DATA): parsing, cleaning, duplicates, GPT-2 tokenisation.

use std::path::PathBuf;

use corpus::{CleanConfig, RealCorpus, Source, TokenCache, Tokenizer};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

fn movie_plots() -> Source {
    let path = std::env::var("COLLAPSE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| data_dir().join("movie_plots.csv.zst"));
    assert!(
        path.exists(),
        "the real corpus is missing at {} (set COLLAPSE_DATA)",
        path.display()
    );
    Source::new(path.to_str().unwrap(), None)
}

fn gpt2() -> Tokenizer {
    Tokenizer::from_file(&data_dir().join("gpt2/tokenizer.json")).unwrap()
}

const RAW: CleanConfig = CleanConfig {
    strip_citations: false,
    normalize_newlines: false,
    collapse_whitespace: false,
    drop_empty: false,
    dedup: false,
};

#[test]
fn every_row_parses_with_multiline_plots_intact() {
    let c = RealCorpus::load(&movie_plots(), &RAW).unwrap();
    assert_eq!(c.docs.len(), 34_886);
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
    let dedup_only = CleanConfig { dedup: true, ..RAW };
    let c = RealCorpus::load(&movie_plots(), &dedup_only).unwrap();
    assert_eq!(c.report.dropped_duplicates, 1_017);
    assert_eq!(c.docs.len(), 34_886 - 1_017);
    let full = RealCorpus::load(&movie_plots(), &CleanConfig::default()).unwrap();
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
    let tok = gpt2();
    assert_eq!(tok.encode("Hello world").unwrap(), [15496, 995]);
    assert_eq!(tok.eot(), 50256);
    assert_eq!(tok.vocab_size(), 50_257);
    let from_files = Tokenizer::gpt2_from_vocab_merges(
        &data_dir().join("gpt2/vocab.json"),
        &data_dir().join("gpt2/merges.txt"),
    )
    .unwrap();
    assert_eq!(from_files.eot(), 50256);
    let c = RealCorpus::load(&movie_plots(), &CleanConfig::default()).unwrap();
    for d in c.docs.iter().step_by(997) {
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
    let tok = gpt2();
    let (a, hit_a) = c.tokenize(&tok, Some(&cache)).unwrap();
    let (b, hit_b) = c.tokenize(&tok, Some(&cache)).unwrap();
    assert!(!hit_a && hit_b);
    assert_eq!(a, b);
    assert_eq!(tok.decode(&a[3]).unwrap(), "Plot number 3.\nIt ends.");
}
