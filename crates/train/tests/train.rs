//! Training end to end on tiny models: it learns, it is reproducible, it resumes exactly, it evaluates exactly.

use candle_core::{DType, Device, Tensor};
use gpt::{Gpt, GptConfig};
use train::{perplexity, AdamW, LrSchedule, TrainConfig, Trainer};

/// A text whose every character determines the next, as byte tokens below 64.
fn repeated_text(len: usize) -> Vec<u32> {
    (0..len).map(|i| (i % 26) as u32 + 1).collect()
}

fn tiny_trainer(seed: u64, steps: u64) -> Trainer {
    let cfg = GptConfig::tiny(64);
    let model = Gpt::new(&cfg, seed, DType::F32, &Device::Cpu).unwrap();
    let tc = TrainConfig {
        steps,
        batch_size: 8,
        lr: LrSchedule::Constant { lr: 1e-2 },
        ..TrainConfig::default()
    };
    Trainer::new(model, tc, seed).unwrap()
}

fn losses(t: &mut Trainer, tokens: &[u32], until: u64) -> Vec<f32> {
    let mut out = Vec::new();
    t.train(tokens, until, |_, _, l| {
        out.push(l.to_scalar::<f32>().unwrap());
        Ok(true)
    })
    .unwrap();
    out
}

#[test]
fn a_tiny_model_learns_a_repeated_text() {
    let tokens = repeated_text(2000);
    let mut t = tiny_trainer(1, 150);
    let l = losses(&mut t, &tokens, 150);
    assert!(l[0] > 3.0, "initial loss {} should be near ln(64)", l[0]);
    let last = *l.last().unwrap();
    assert!(last < 0.1, "final loss {last}");
    let ppl = perplexity(&t.model, &tokens[..500], 4).unwrap();
    assert!(ppl.perplexity < 1.2, "{ppl:?}");
}

#[test]
fn the_same_seed_gives_a_bit_identical_loss_curve() {
    let tokens = repeated_text(3000);
    let a = losses(&mut tiny_trainer(5, 30), &tokens, 30);
    let b = losses(&mut tiny_trainer(5, 30), &tokens, 30);
    assert_eq!(a, b);
    let c = losses(&mut tiny_trainer(6, 30), &tokens, 30);
    assert_ne!(a, c);
}

#[test]
fn training_resumed_from_saved_state_is_bit_identical() {
    let tokens: Vec<u32> = (0..4000u32).map(|i| (i * 7919 % 61) + 1).collect();
    let straight = losses(&mut tiny_trainer(3, 24), &tokens, 24);
    let dir = tempfile::tempdir().unwrap();
    let mut first = tiny_trainer(3, 24);
    let mut resumed = losses(&mut first, &tokens, 10);
    first.model.save(&dir.path().join("m.safetensors")).unwrap();
    first.opt.save(&dir.path().join("o.safetensors")).unwrap();
    drop(first);
    let model = Gpt::load(&dir.path().join("m.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let opt = AdamW::load(&dir.path().join("o.safetensors"), model.params()).unwrap();
    let cfg = tiny_trainer(3, 24).cfg;
    let mut second = Trainer::resume(model, opt, cfg, 3).unwrap();
    assert_eq!(second.step(), 10);
    resumed.extend(losses(&mut second, &tokens, 24));
    assert_eq!(straight, resumed);
}

#[test]
fn perplexity_is_exact_and_covers_every_token() {
    let cfg = GptConfig::tiny(64);
    let m = Gpt::new(&cfg, 2, DType::F32, &Device::Cpu).unwrap();
    // 16-token windows: 50 tokens -> 49 predictions in 3 full windows and one of 1.
    let tokens: Vec<u32> = (0..50u32).map(|i| (i * 13) % 64).collect();
    let e = perplexity(&m, &tokens, 2).unwrap();
    assert_eq!(e.tokens, 49);
    assert_eq!(
        e,
        perplexity(&m, &tokens, 2).unwrap(),
        "same model, data and batch: same number"
    );
    assert!((e.nll_sum - perplexity(&m, &tokens, 3).unwrap().nll_sum).abs() < 1e-6);
    let mut want = 0.0;
    for s in (0..49).step_by(16) {
        let w = 16.min(49 - s);
        let x = Tensor::from_vec(tokens[s..s + w].to_vec(), (1, w), &Device::Cpu).unwrap();
        let logits = m
            .forward(&x)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (j, row) in logits.iter().enumerate() {
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let lse = row
                .iter()
                .map(|&l| (l as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            want += lse - row[tokens[s + j + 1] as usize] as f64;
        }
    }
    assert!((e.nll_sum - want).abs() < 1e-4, "{} vs {want}", e.nll_sum);
    assert!((e.perplexity - (want / 49.0).exp()).abs() < 1e-4);
    // A freshly initialised model is close to uniform over the vocabulary.
    assert!((e.perplexity - 64.0).abs() < 8.0, "{}", e.perplexity);
    assert!(perplexity(&m, &tokens[..1], 2).is_err());
}
