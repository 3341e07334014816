//! Sources of real documents, named by a string a user can type.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::{Document, Error, Result};

/// The paper's corpus on the Hugging Face Hub (a copy of Kaggle's Wikipedia Movie Plots, see data/README.md).
pub const DEFAULT_SOURCE: &str =
    "hf://datasets/vishnupriyavr/wiki-movie-plots-with-summaries/wiki_movie_plots_deduped_with_summaries.csv";

/// A source of documents: `hf://datasets/OWNER/NAME/FILE`, a `.csv`, `.csv.zst`, `.jsonl` or `.jsonl.zst`
/// file, or a folder of `.txt` files (one document each, in file-name order). CSV files take the text from
/// `column` (`Plot` by default); JSONL lines are objects with a `text` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub spec: String,
    pub column: String,
}

enum Kind {
    Csv { zstd: bool },
    Jsonl { zstd: bool },
    TextFolder,
}

impl Source {
    pub fn new(spec: &str, column: Option<&str>) -> Self {
        Self {
            spec: spec.to_string(),
            column: column.unwrap_or("Plot").to_string(),
        }
    }

    /// A local file for the source: the path itself, or the Hub file from hf-hub's cache (downloaded with a
    /// progress bar if missing and the Hub is reachable).
    pub fn resolve(&self) -> Result<PathBuf> {
        match self.spec.strip_prefix("hf://datasets/") {
            Some(rest) => self.download(rest),
            None => {
                let p = PathBuf::from(&self.spec);
                if p.exists() {
                    Ok(p)
                } else {
                    Err(self.err(format!(
                        "{} does not exist (give a CSV, CSV.zst, JSONL or folder of .txt files, or hf://datasets/OWNER/NAME/FILE)",
                        p.display()
                    )))
                }
            }
        }
    }

    fn download(&self, rest: &str) -> Result<PathBuf> {
        let parts: Vec<&str> = rest.splitn(3, '/').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(self.err("expected hf://datasets/OWNER/NAME/FILE".into()));
        }
        let repo = format!("{}/{}", parts[0], parts[1]);
        let file = parts[2];
        let hint = "download it elsewhere and point --data (or COLLAPSE_DATA) at the local file \
                    (data/README.md says where to get it)";
        let cache = hf_hub::Cache::from_env();
        let cached = cache
            .repo(hf_hub::Repo::new(repo.clone(), hf_hub::RepoType::Dataset))
            .get(file);
        if let Some(p) = cached {
            return Ok(p);
        }
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
        if offline {
            return Err(self.err(format!(
                "not in the Hugging Face cache and HF_HUB_OFFLINE is set: {hint}"
            )));
        }
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(true)
            .build()
            .map_err(|e| self.err(format!("cannot start the Hub client ({e}): {hint}")))?;
        api.dataset(repo)
            .get(file)
            .map_err(|e| self.err(format!("download failed ({e}); offline? {hint}")))
    }

    fn err(&self, msg: String) -> Error {
        Error::Source {
            source_name: self.spec.clone(),
            msg,
        }
    }

    fn kind(&self, path: &Path) -> Result<Kind> {
        if path.is_dir() {
            return Ok(Kind::TextFolder);
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let zstd = name.ends_with(".zst");
        let base = name.trim_end_matches(".zst");
        if base.ends_with(".csv") {
            Ok(Kind::Csv { zstd })
        } else if base.ends_with(".jsonl") {
            Ok(Kind::Jsonl { zstd })
        } else {
            Err(self.err(format!(
                "unknown format of {}: expected .csv, .csv.zst, .jsonl, .jsonl.zst or a folder",
                path.display()
            )))
        }
    }

    fn reader(&self, path: &Path, zstd: bool) -> Result<Box<dyn Read>> {
        let f = std::fs::File::open(path).map_err(Error::io(path))?;
        Ok(if zstd {
            Box::new(zstd::Decoder::new(f).map_err(|e| self.err(format!("not a zstd file: {e}")))?)
        } else {
            Box::new(f)
        })
    }

    /// Bytes that identify the source's content, for cache keys: the file itself, or every file of the folder.
    pub fn content_hash(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let path = self.resolve()?;
        let mut h = Sha256::new();
        h.update(self.column.as_bytes());
        let mut files = vec![path.clone()];
        if path.is_dir() {
            files = text_files(&path)?;
        }
        for f in files {
            h.update(
                f.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
                    .as_bytes(),
            );
            h.update(std::fs::read(&f).map_err(Error::io(&f))?);
        }
        Ok(format!("{:x}", h.finalize()))
    }
}

fn text_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    Ok(files)
}

/// Every document of the source, uncleaned, with its row number (for folders, the index in name order).
/// A source that yields no document is an error.
pub fn load_source(source: &Source) -> Result<Vec<Document>> {
    let path = source.resolve()?;
    let label = source.spec.as_str();
    let docs = match source.kind(&path)? {
        Kind::Csv { zstd } => {
            let mut rdr = csv::ReaderBuilder::new()
                .flexible(false)
                .from_reader(source.reader(&path, zstd)?);
            let headers = rdr
                .headers()
                .map_err(|e| source.err(format!("bad CSV header: {e}")))?
                .clone();
            let col = headers
                .iter()
                .position(|h| h == source.column)
                .ok_or_else(|| {
                    source.err(format!(
                        "no column {:?}; columns are {:?}",
                        source.column,
                        headers.iter().collect::<Vec<_>>()
                    ))
                })?;
            let mut docs = Vec::new();
            for (row, rec) in rdr.records().enumerate() {
                let rec = rec.map_err(|e| source.err(format!("CSV row {row}: {e}")))?;
                docs.push(Document::real(
                    label,
                    row,
                    rec.get(col).unwrap_or_default().to_string(),
                ));
            }
            docs
        }
        Kind::Jsonl { zstd } => {
            #[derive(serde::Deserialize)]
            struct Line {
                text: String,
            }
            let mut docs = Vec::new();
            for (row, line) in BufReader::new(source.reader(&path, zstd)?)
                .lines()
                .enumerate()
            {
                let line = line.map_err(|e| source.err(format!("line {}: {e}", row + 1)))?;
                if line.trim().is_empty() {
                    continue;
                }
                let l: Line = serde_json::from_str(&line).map_err(|e| {
                    source.err(format!("line {}: expected {{\"text\": ...}}: {e}", row + 1))
                })?;
                docs.push(Document::real(label, row, l.text));
            }
            docs
        }
        Kind::TextFolder => text_files(&path)?
            .into_iter()
            .enumerate()
            .map(|(row, f)| {
                Ok(Document::real(
                    label,
                    row,
                    std::fs::read_to_string(&f).map_err(Error::io(&f))?,
                ))
            })
            .collect::<Result<_>>()?,
    };
    if docs.is_empty() {
        return Err(source.err("contains no documents".into()));
    }
    Ok(docs)
}
