use candle_core::Tensor;
use gpt::Gpt;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::{AdamW, Batcher, Result, TrainConfig};

/// A model, its optimizer and the training settings. Every random draw of step `s` (batch windows, dropout
/// masks) comes from RNG streams keyed by `(seed, s)`, so training resumed from a saved model and optimizer
/// continues exactly as if it had never stopped.
pub struct Trainer {
    pub model: Gpt,
    pub opt: AdamW,
    pub cfg: TrainConfig,
    pub seed: u64,
}

impl Trainer {
    pub fn new(model: Gpt, cfg: TrainConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let opt = AdamW::new(model.params(), cfg.adamw.clone())?;
        Ok(Self {
            model,
            opt,
            cfg,
            seed,
        })
    }

    /// Continues from a model and optimizer state saved after `opt.steps_taken()` steps.
    pub fn resume(model: Gpt, opt: AdamW, cfg: TrainConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            model,
            opt,
            cfg,
            seed,
        })
    }

    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.opt.steps_taken()
    }

    /// One optimizer step on the batch of the current step; returns the loss before the update, as a scalar
    /// tensor (not read back, so a GPU does not synchronise).
    pub fn train_step(&mut self, batcher: &Batcher) -> Result<Tensor> {
        let step = self.step();
        let (x, y) = batcher.batch(step, self.model.device())?;
        let mut dropout_rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0xd0_d0_d0_d0);
        dropout_rng.set_stream(step);
        let loss = self.model.loss(&x, &y, Some(&mut dropout_rng))?;
        let grads = loss.backward()?;
        let lr = self.cfg.lr.at(step);
        self.opt
            .step(self.model.params(), &grads, lr, self.cfg.grad_clip)?;
        Ok(loss)
    }

    /// Trains on `tokens` until `until` steps are done (at most `cfg.steps`), calling `on_step(step, loss)`
    /// after each step; `on_step` may stop early by returning `Ok(false)`.
    pub fn train(
        &mut self,
        tokens: &[u32],
        until: u64,
        mut on_step: impl FnMut(&Self, u64, &Tensor) -> Result<bool>,
    ) -> Result<()> {
        let batcher = Batcher::new(
            tokens,
            self.model.config().block_size,
            self.cfg.batch_size,
            self.seed,
        )?;
        let until = until.min(self.cfg.steps);
        while self.step() < until {
            let loss = self.train_step(&batcher)?;
            if !on_step(self, self.step(), &loss)? {
                break;
            }
        }
        Ok(())
    }
}
