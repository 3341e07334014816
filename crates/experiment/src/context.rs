//! Everything the rounds share: the corpus and its tokens, the splits, the plans, the model kind.

use std::collections::HashMap;

use corpus::{
    bpe_training_docs, token_stream, Document, Plan, RealCorpus, Source, Split, TokenCache,
    Tokenizer, TokenizerSpec,
};
use lm::ModelKind;

use crate::config::{plan_pool, Config, FilterSpec, RoundCandidates};
use crate::models::Models;
use crate::plan::derive_seed;
use crate::rundir::{read_verified, write_verified, RunDir};
use crate::{At, Error, Result};

/// Everything a round needs that does not change between rounds.
pub(crate) struct Ctx<'m> {
    pub cfg: Config,
    /// Makes the model kinds (the binary's mapping from `[model]` to an implementation).
    pub models: &'m dyn Models,
    /// The kind of the rounds' models.
    pub kind: Box<dyn ModelKind>,
    pub tok: Tokenizer,
    pub docs: Vec<Document>,
    pub doc_tokens: Vec<Vec<u32>>,
    pub by_id: HashMap<String, usize>,
    pub splits: Vec<Split>,
    pub heldout: Vec<Vec<u32>>,
    pub second: Option<Vec<u32>>,
    /// Each setting's plan, by name.
    pub plans: HashMap<String, Plan>,
    /// Each curated chain's candidates per round, by setting name.
    pub candidates: HashMap<String, Vec<RoundCandidates>>,
    /// `generation.max_new_tokens` resolved for this corpus and tokenizer.
    pub max_new_tokens: usize,
    /// What the kind measures its models' risk against, from the whole corpus (kinds that have one).
    pub reference: Option<std::sync::Arc<dyn lm::Reference>>,
}

/// The run's `[model]` and every verifier's, checked by their kind before anything runs.
pub fn check_models(cfg: &Config, models: &dyn Models) -> Result<()> {
    models
        .validate(&cfg.model)
        .map_err(Error::Models)
        .at(|| "invalid [model] section".into())?;
    for f in cfg.curation.iter().flat_map(|c| &c.filters) {
        if let FilterSpec::Verifier { .. } = f {
            models
                .validate(&f.verifier_model(&cfg.model))
                .map_err(Error::Models)
                .at(|| format!("curation filter {:?}", f.name()))?;
        }
    }
    Ok(())
}

pub(crate) fn prepare<'m>(cfg: Config, dir: &RunDir, models: &'m dyn Models) -> Result<Ctx<'m>> {
    let source = Source::new(&cfg.data.source, Some(&cfg.data.column));
    eprintln!("[collapse-lab] loading {}", cfg.data.source);
    let real = RealCorpus::load(&source, &cfg.data.clean)?;
    let n = real.docs.len();
    let splits: Vec<Split> = (0..cfg.experiment.repetitions)
        .map(|r| {
            Split::new(
                n,
                cfg.data.heldout_docs,
                derive_seed(cfg.experiment.seed, &[&"split", &r]),
            )
        })
        .collect::<corpus::Result<_>>()?;
    let tok_path = dir.root.join("tokenizer.json");
    // The tokenizer is trained once, whichever process gets here first.
    let _shared = dir.lock_shared_files()?;
    let tok = if tok_path.exists() {
        let json = read_verified(&tok_path, "delete it to rebuild the tokenizer")?;
        Tokenizer::from_json(&String::from_utf8_lossy(&json))
            .at(|| format!("{} is unreadable", tok_path.display()))?
    } else {
        let tok = match TokenizerSpec::parse(&cfg.data.tokenizer)? {
            TokenizerSpec::Train { vocab_size } => {
                eprintln!("[collapse-lab] training a byte-level BPE of {vocab_size} tokens on documents held out by no repetition");
                let mut idx = bpe_training_docs(n, &splits);
                if cfg.data.tokenizer_training_docs > 0 {
                    idx.truncate(cfg.data.tokenizer_training_docs);
                }
                Tokenizer::train_bpe(idx.iter().map(|&i| real.docs[i].text.as_str()), vocab_size)?
            }
            spec => Tokenizer::load(&spec)?,
        };
        write_verified(&tok_path, tok.to_json()?.as_bytes())?;
        tok
    };
    drop(_shared);
    eprintln!(
        "[collapse-lab] tokenising {n} documents ({} removed by cleaning)",
        real.report.input - n
    );
    let cache = TokenCache::new(TokenCache::default_dir());
    let (doc_tokens, _) = real.tokenize(&tok, Some(&cache))?;
    let eot = tok.eot();
    let max_new_tokens = cfg
        .generation
        .max_new_tokens
        .resolve(doc_tokens.iter().map(Vec::len));
    let heldout = splits
        .iter()
        .map(|s| token_stream(s.heldout.iter().map(|&i| doc_tokens[i].as_slice()), eot))
        .collect();
    let second = match &cfg.data.second_eval {
        Some(spec) => {
            let src = Source::new(spec, Some(&cfg.data.second_eval_column));
            let c = RealCorpus::load(&src, &cfg.data.clean)
                .at(|| "the second evaluation set".into())?;
            let (toks, _) = c.tokenize(&tok, Some(&cache))?;
            Some(token_stream(
                toks.iter()
                    .take(cfg.data.second_eval_docs)
                    .map(Vec::as_slice),
                eot,
            ))
        }
        None => None,
    };
    // Made (and `model.init_from` read and checked) once, before any round.
    let kind = models
        .kind(&cfg.model, tok.vocab_size())
        .map_err(Error::Models)?;
    // The whole corpus, every document followed by its end-of-text, for kinds that measure a risk.
    let reference = if kind.wants_reference() {
        eprintln!("[collapse-lab] counting the whole corpus for the model's risk");
        kind.reference(&token_stream(doc_tokens.iter().map(Vec::as_slice), eot))?
    } else {
        None
    };
    let pool_len = n - cfg.data.heldout_docs;
    let mut plans = HashMap::new();
    for s in cfg.settings()? {
        let plan = s
            .schedule
            .plan(cfg.schedule.rounds, pool_len)
            .at(|| format!("setting {s} cannot run on {pool_len} pool documents"))?;
        plans.insert(s.name, plan);
    }
    let candidates = plan_pool(
        cfg.curation.as_ref(),
        &cfg.settings()?,
        &mut plans,
        pool_len,
    )?;
    let by_id = real
        .docs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.clone(), i))
        .collect();
    Ok(Ctx {
        cfg,
        models,
        kind,
        tok,
        docs: real.docs,
        doc_tokens,
        by_id,
        splits,
        heldout,
        second,
        plans,
        candidates,
        max_new_tokens,
        reference,
    })
}

impl Ctx<'_> {
    /// n_0 of a setting: the settings of a repetition whose round 0 has the same size share it.
    pub(crate) fn n0(&self, setting: &str) -> usize {
        self.plans[setting].rounds[0].new_docs
    }

    pub(crate) fn to_generate_after(&self, setting: &str, t: usize) -> usize {
        to_generate_after(
            &self.plans[setting],
            self.candidates.get(setting).map(Vec::as_slice),
            t,
        )
    }
}

/// Documents the model of round `t` must write for the chain's round `t + 1`: its synthetic documents, or
/// under curation its synthetic candidates.
pub(crate) fn to_generate_after(
    plan: &Plan,
    candidates: Option<&[RoundCandidates]>,
    t: usize,
) -> usize {
    match candidates {
        Some(c) => c.get(t + 1).map_or(0, |r| r.synthetic),
        None => plan.to_generate_after(t),
    }
}
