//! Every kind of source, and every way a source can be wrong.

use corpus::{load_source, CleanConfig, RealCorpus, Source, Tokenizer};

#[test]
fn csv_jsonl_zstd_and_text_folders_load() {
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("a.csv");
    std::fs::write(&csv_path, "Title,Story\nx,\"two\r\nlines\"\ny,plain\n").unwrap();
    let docs = load_source(&Source::new(csv_path.to_str().unwrap(), Some("Story"))).unwrap();
    assert_eq!(
        docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
        ["two\r\nlines", "plain"]
    );
    let e = load_source(&Source::new(csv_path.to_str().unwrap(), None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no column \"Plot\"") && e.contains("Story"),
        "{e}"
    );

    let jsonl = dir.path().join("b.jsonl.zst");
    let body = "{\"text\": \"first\"}\n\n{\"text\": \"second\"}\n";
    std::fs::write(&jsonl, zstd::encode_all(body.as_bytes(), 3).unwrap()).unwrap();
    let docs = load_source(&Source::new(jsonl.to_str().unwrap(), None)).unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1].text, "second");

    let folder = dir.path().join("txt");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("b.txt"), "bee").unwrap();
    std::fs::write(folder.join("a.txt"), "ay").unwrap();
    std::fs::write(folder.join("ignored.md"), "no").unwrap();
    let docs = load_source(&Source::new(folder.to_str().unwrap(), None)).unwrap();
    assert_eq!(
        docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
        ["ay", "bee"]
    );
}

#[test]
fn bad_sources_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_source(&Source::new("/nonexistent/plots.csv", None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "Plot\n").unwrap();
    assert!(load_source(&Source::new(empty.to_str().unwrap(), None))
        .unwrap_err()
        .to_string()
        .contains("no documents"));
    let blank = dir.path().join("blank.csv");
    std::fs::write(&blank, "Plot\n\"  \"\n\"[1]\"\n").unwrap();
    let e = RealCorpus::load(
        &Source::new(blank.to_str().unwrap(), None),
        &CleanConfig::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("no document left after cleaning"), "{e}");
    let odd = dir.path().join("plots.parquet");
    std::fs::write(&odd, "x").unwrap();
    assert!(load_source(&Source::new(odd.to_str().unwrap(), None))
        .unwrap_err()
        .to_string()
        .contains("unknown format"));
    let bad_json = dir.path().join("bad.jsonl");
    std::fs::write(&bad_json, "{\"txt\": 1}\n").unwrap();
    assert!(load_source(&Source::new(bad_json.to_str().unwrap(), None))
        .unwrap_err()
        .to_string()
        .contains("line 1"));
}

#[test]
fn offline_hub_sources_say_how_to_use_a_local_file() {
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", cache.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let e = load_source(&Source::new(corpus::DEFAULT_SOURCE, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("HF_HUB_OFFLINE") && e.contains("--data"), "{e}");
    let e = load_source(&Source::new("hf://datasets/only-owner", None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("hf://datasets/OWNER/NAME/FILE"), "{e}");
}

#[test]
fn a_trained_bpe_round_trips_and_reserves_end_of_text() {
    let texts: Vec<String> = (0..200)
        .map(|i| format!("The film number {i} follows a detective in Paris."))
        .collect();
    let tok = Tokenizer::train_bpe(texts.iter().map(String::as_str), 400).unwrap();
    assert!(tok.vocab_size() <= 400);
    let ids = tok.encode("The film follows a detective.").unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), "The film follows a detective.");
    assert!(!ids.contains(&tok.eot()));
    assert!(
        ids.len() < "The film follows a detective.".len(),
        "merges were learned"
    );
    let json = tok.to_json().unwrap();
    let back = Tokenizer::from_json(&json).unwrap();
    assert_eq!(
        back.encode("detective").unwrap(),
        tok.encode("detective").unwrap()
    );
    assert!(Tokenizer::train_bpe(texts.iter().map(String::as_str), 100).is_err());
}
