use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// Random windows of `block_size + 1` tokens from a token stream, as nanoGPT's `get_batch` draws them. The
/// batch of step `s` comes from its own RNG stream `(seed, s)`, so a resumed run draws exactly the batches an
/// uninterrupted one would, with no RNG state to save.
pub struct Batcher<'a> {
    tokens: &'a [u32],
    block_size: usize,
    batch_size: usize,
    seed: u64,
}

impl<'a> Batcher<'a> {
    pub fn new(tokens: &'a [u32], block_size: usize, batch_size: usize, seed: u64) -> Result<Self> {
        if tokens.len() < block_size + 1 {
            return Err(Error::TooFewTokens {
                len: tokens.len(),
                need: block_size + 1,
            });
        }
        if batch_size == 0 || block_size == 0 {
            return Err(Error::Config(
                "batch_size and block_size must be positive".into(),
            ));
        }
        Ok(Self {
            tokens,
            block_size,
            batch_size,
            seed,
        })
    }

    /// Start offsets of the windows of step `step`.
    pub fn offsets(&self, step: u64) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(step);
        let hi = self.tokens.len() - self.block_size;
        (0..self.batch_size)
            .map(|_| rng.random_range(0..hi))
            .collect()
    }

    /// Inputs and targets `[batch, block_size]` of step `step`.
    pub fn batch(&self, step: u64, device: &Device) -> Result<(Tensor, Tensor)> {
        let t = self.block_size;
        let mut x = Vec::with_capacity(self.batch_size * t);
        let mut y = Vec::with_capacity(self.batch_size * t);
        for o in self.offsets(step) {
            x.extend_from_slice(&self.tokens[o..o + t]);
            y.extend_from_slice(&self.tokens[o + 1..o + t + 1]);
        }
        let shape = (self.batch_size, t);
        Ok((
            Tensor::from_vec(x, shape, device)?,
            Tensor::from_vec(y, shape, device)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_shifted_by_one_and_seeded() {
        let toks: Vec<u32> = (0..100).collect();
        let b = Batcher::new(&toks, 8, 4, 1).unwrap();
        let (x, y) = b.batch(3, &Device::Cpu).unwrap();
        let (x, y) = (x.to_vec2::<u32>().unwrap(), y.to_vec2::<u32>().unwrap());
        for (xr, yr) in x.iter().zip(&y) {
            for j in 0..8 {
                assert_eq!(yr[j], xr[j] + 1);
            }
        }
        assert_eq!(
            b.offsets(3),
            Batcher::new(&toks, 8, 4, 1).unwrap().offsets(3)
        );
        assert_ne!(b.offsets(3), b.offsets(4));
        assert!(b.offsets(0).iter().all(|&o| o + 9 <= 100));
        assert!(matches!(
            Batcher::new(&toks[..8], 8, 4, 1),
            Err(Error::TooFewTokens { .. })
        ));
    }
}
