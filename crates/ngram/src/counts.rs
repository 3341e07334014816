//! n-gram counts of a token stream, sorted (so the same stream always gives the same bytes), in one
//! compressed-row table per context length: contexts sorted by key, each with its following tokens sorted by
//! id and their counts, and the continuation counts Kneser-Ney's lower orders use.

use crate::{Error, Result};

/// The longest n-gram: contexts of up to three tokens are packed in one u64 key.
pub const MAX_ORDER: usize = 4;
/// Token ids are packed 20 bits each.
const BITS: u32 = 20;
pub(crate) const MAX_VOCAB: usize = 1 << BITS;

/// The key of a context of at most `MAX_ORDER - 1` tokens: its length in the top bits, then its tokens.
pub(crate) fn key(context: &[u32]) -> u64 {
    let mut k = (context.len() as u64) << 60;
    for (i, &t) in context.iter().enumerate() {
        k |= (t as u64) << (BITS * i as u32);
    }
    k
}

/// The tokens of a context key.
pub(crate) fn unkey(k: u64) -> Vec<u32> {
    let len = (k >> 60) as usize;
    (0..len)
        .map(|i| ((k >> (BITS * i as u32)) & ((1 << BITS) - 1)) as u32)
        .collect()
}

/// The counts of one context length j: n-grams of j + 1 tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Level {
    /// Context keys, sorted.
    pub contexts: Vec<u64>,
    /// Context i's following tokens are `words[start[i]..start[i + 1]]`, sorted, with `counts`.
    pub start: Vec<usize>,
    pub words: Vec<u32>,
    pub counts: Vec<u32>,
    /// n(c): occurrences of context i followed by something.
    pub total: Vec<u64>,
    /// Per (context, word): N1+(. c w), the distinct tokens seen before c w (0 where c w only opens the
    /// stream); per context their sum N1+(. c .) and how many words have one. Empty at the longest level.
    pub cont: Vec<u32>,
    pub cont_total: Vec<u64>,
    pub cont_types: Vec<u32>,
}

impl Level {
    /// The number of a context, if it was seen followed by something.
    pub fn find(&self, context: &[u32]) -> Option<usize> {
        self.contexts.binary_search(&key(context)).ok()
    }

    pub fn range(&self, ci: usize) -> std::ops::Range<usize> {
        self.start[ci]..self.start[ci + 1]
    }

    /// The position of `word` among context `ci`'s following tokens.
    pub fn entry(&self, ci: usize, word: u32) -> Option<usize> {
        let r = self.range(ci);
        self.words[r.clone()]
            .binary_search(&word)
            .ok()
            .map(|p| r.start + p)
    }

    /// The level from (context key, word) pairs, one per occurrence.
    fn from_pairs(mut pairs: Vec<(u64, u32)>) -> Self {
        pairs.sort_unstable();
        let mut entries: Vec<(u64, u32, u32)> = Vec::new();
        for (c, w) in pairs {
            match entries.last_mut() {
                Some(e) if (e.0, e.1) == (c, w) => e.2 += 1,
                _ => entries.push((c, w, 1)),
            }
        }
        Self::from_entries(&entries)
    }

    /// The level from (context key, word, count) entries sorted by (context, word).
    fn from_entries(entries: &[(u64, u32, u32)]) -> Self {
        let mut l = Level {
            start: vec![0],
            ..Default::default()
        };
        for &(c, w, n) in entries {
            if l.contexts.last() != Some(&c) {
                if !l.contexts.is_empty() {
                    l.start.push(l.words.len());
                }
                l.contexts.push(c);
                l.total.push(0);
            }
            l.words.push(w);
            l.counts.push(n);
            *l.total.last_mut().expect("a context") += n as u64;
        }
        if !l.contexts.is_empty() {
            l.start.push(l.words.len());
        }
        l
    }
}

/// Every count an n-gram model of some order needs from one token stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    pub(crate) vocab_size: usize,
    /// `levels[j]` holds the n-grams of j + 1 tokens, j = 0 .. levels - 1.
    pub(crate) levels: Vec<Level>,
}

impl Counts {
    /// Counts the n-grams of 1 to `levels` tokens of `stream`: at position i, every context of length j <= i
    /// ending just before token i.
    pub fn of(stream: &[u32], levels: usize, vocab_size: usize) -> Result<Self> {
        if levels == 0 || levels > MAX_ORDER {
            return Err(Error::Config(format!(
                "n-gram orders 1 to {MAX_ORDER} are supported, not {levels}"
            )));
        }
        if vocab_size > MAX_VOCAB {
            return Err(Error::Config(format!(
                "vocabularies of at most {MAX_VOCAB} tokens are supported, not {vocab_size}"
            )));
        }
        if let Some(&t) = stream.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(Error::Config(format!(
                "token id {t} is outside the vocabulary of {vocab_size}"
            )));
        }
        let mut out: Vec<Level> = (0..levels)
            .map(|j| {
                let pairs = (j..stream.len())
                    .map(|i| (key(&stream[i - j..i]), stream[i]))
                    .collect();
                Level::from_pairs(pairs)
            })
            .collect();
        add_continuations(&mut out);
        Ok(Self {
            vocab_size,
            levels: out,
        })
    }

    pub fn levels(&self) -> usize {
        self.levels.len()
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The stored form: every level's (context tokens, word, count) in order, little-endian u32s, after a
    /// header of the vocabulary size and the number of levels. Continuation counts are derived on reading.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |v: u32| out.extend_from_slice(&v.to_le_bytes());
        put(self.vocab_size as u32);
        put(self.levels.len() as u32);
        for l in &self.levels {
            put(l.words.len() as u32);
            for ci in 0..l.contexts.len() {
                let ctx = unkey(l.contexts[ci]);
                for e in l.range(ci) {
                    for &t in &ctx {
                        put(t);
                    }
                    put(l.words[e]);
                    put(l.counts[e]);
                }
            }
        }
        out
    }

    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Self> {
        let bad = |msg: &str| Error::Corrupt {
            what: what.to_string(),
            msg: msg.to_string(),
        };
        if !bytes.len().is_multiple_of(4) {
            return Err(bad("its length is not a whole number of u32s"));
        }
        let mut it = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")));
        let mut next = || it.next().ok_or_else(|| bad("it ends early"));
        let vocab_size = next()? as usize;
        let n_levels = next()? as usize;
        if n_levels == 0 || n_levels > MAX_ORDER || vocab_size > MAX_VOCAB {
            return Err(bad("its header is not an n-gram model's"));
        }
        let mut levels = Vec::with_capacity(n_levels);
        for j in 0..n_levels {
            let n = next()? as usize;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let ctx: Vec<u32> = (0..j).map(|_| next()).collect::<Result<_>>()?;
                let (w, c) = (next()?, next()?);
                if w as usize >= vocab_size || ctx.iter().any(|&t| t as usize >= vocab_size) {
                    return Err(bad("a token id is outside its vocabulary"));
                }
                if c == 0 {
                    return Err(bad("it holds a count of 0"));
                }
                entries.push((key(&ctx), w, c));
            }
            if entries
                .windows(2)
                .any(|e| (e[0].0, e[0].1) >= (e[1].0, e[1].1))
            {
                return Err(bad("its n-grams are not sorted"));
            }
            levels.push(Level::from_entries(&entries));
        }
        if it.next().is_some() {
            return Err(bad("it has bytes after its last level"));
        }
        add_continuations(&mut levels);
        Ok(Self { vocab_size, levels })
    }
}

/// The continuation counts of every level but the longest, from the level above: each n-gram (u c w) seen
/// adds one to N1+(. c w).
fn add_continuations(levels: &mut [Level]) {
    for j in 0..levels.len().saturating_sub(1) {
        let (lower, upper) = levels.split_at_mut(j + 1);
        let (l, up) = (&mut lower[j], &upper[0]);
        l.cont = vec![0; l.words.len()];
        for ci in 0..up.contexts.len() {
            let ctx = unkey(up.contexts[ci]);
            let shorter = l
                .find(&ctx[1..])
                .expect("a suffix of a seen context is seen");
            for e in up.range(ci) {
                let at = l
                    .entry(shorter, up.words[e])
                    .expect("a seen n-gram's suffix is seen");
                l.cont[at] += 1;
            }
        }
        l.cont_total = (0..l.contexts.len())
            .map(|ci| l.range(ci).map(|e| l.cont[e] as u64).sum())
            .collect();
        l.cont_types = (0..l.contexts.len())
            .map(|ci| l.range(ci).filter(|&e| l.cont[e] > 0).count() as u32)
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts of "a b a b c" by hand: unigrams a2 b2 c1; bigrams ab2 ba1 bc1; continuations N1+(. b) = 1
    /// (only a precedes b), N1+(. a) = 1, N1+(. c) = 1.
    #[test]
    fn counts_of_a_short_stream() {
        let (a, b, c) = (1u32, 2, 3);
        let n = Counts::of(&[a, b, a, b, c], 2, 4).unwrap();
        let uni = &n.levels[0];
        assert_eq!(uni.contexts, [key(&[])]);
        assert_eq!(uni.words, [a, b, c]);
        assert_eq!(uni.counts, [2, 2, 1]);
        assert_eq!(uni.total, [5]);
        assert_eq!(uni.cont, [1, 1, 1]);
        assert_eq!((uni.cont_total[0], uni.cont_types[0]), (3, 3));
        let bi = &n.levels[1];
        let ca = bi.find(&[a]).unwrap();
        assert_eq!(bi.total[ca], 2);
        assert_eq!(bi.counts[bi.entry(ca, b).unwrap()], 2);
        let cb = bi.find(&[b]).unwrap();
        assert_eq!(bi.total[cb], 2);
        assert!(
            bi.find(&[c]).is_none(),
            "c ends the stream: followed by nothing"
        );
        // The stored form reads back to the same counts.
        let back = Counts::from_bytes(&n.to_bytes(), "test").unwrap();
        assert_eq!(back, n);
        assert!(Counts::from_bytes(&n.to_bytes()[..10], "test").is_err());
        assert!(Counts::of(&[5], 1, 4).is_err());
        assert!(Counts::of(&[1], 5, 4).is_err());
    }

    #[test]
    fn keys_pack_and_unpack() {
        for ctx in [vec![], vec![7], vec![0, 1_048_575], vec![3, 2, 1]] {
            assert_eq!(unkey(key(&ctx)), ctx);
        }
        assert_ne!(key(&[0]), key(&[]));
        assert_ne!(key(&[0, 0]), key(&[0]));
    }
}
