use crate::{
    clean_documents, load_source, CleanConfig, CleanReport, Document, Result, Source, TokenCache,
    Tokenizer,
};

/// The cleaned real documents of a source, in source order.
pub struct RealCorpus {
    pub source: Source,
    pub docs: Vec<Document>,
    pub report: CleanReport,
    clean: CleanConfig,
}

impl RealCorpus {
    /// Loads and cleans a source; a source with no document left after cleaning is an error.
    pub fn load(source: &Source, clean: &CleanConfig) -> Result<Self> {
        let raw = load_source(source)?;
        let (docs, report) = clean_documents(raw, clean);
        if docs.is_empty() {
            return Err(crate::Error::Source {
                source_name: source.spec.clone(),
                msg: format!("no document left after cleaning ({} read)", report.input),
            });
        }
        Ok(Self {
            source: source.clone(),
            docs,
            report,
            clean: clean.clone(),
        })
    }

    /// Every document's tokens (no separators), from `cache` when this source, cleaning and tokenizer were
    /// tokenised before; the flag says whether the cache answered.
    pub fn tokenize(
        &self,
        tok: &Tokenizer,
        cache: Option<&TokenCache>,
    ) -> Result<(Vec<Vec<u32>>, bool)> {
        let key = match cache {
            Some(_) => Some(TokenCache::key(&[
                &self.source.content_hash()?,
                &serde_json::to_string(&self.clean).expect("serialises"),
                &tok.hash()?,
            ])),
            None => None,
        };
        if let (Some(c), Some(k)) = (cache, &key) {
            if let Some(t) = c.get(k, self.docs.len()) {
                return Ok((t, true));
            }
        }
        let texts: Vec<&str> = self.docs.iter().map(|d| d.text.as_str()).collect();
        let tokens = tok.encode_all(&texts)?;
        if let (Some(c), Some(k)) = (cache, &key) {
            c.put(k, &tokens)?;
        }
        Ok((tokens, false))
    }
}
