//! `collapse-lab gpu-check`: the engine's correctness checks on a device, as one JSON report. On CUDA they
//! compare the GPU path (plain candle ops, device sampling) with the CPU; on a CPU they compare the CPU kernels
//! with the plain-op path that GPUs run, so the command itself is tested without a GPU.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use gpt::{generate, generate_on_device, Decoder, GenerateConfig, Gpt, GptConfig};
use rand::{Rng, SeedableRng};
use serde_json::json;
use train::{Batcher, LrSchedule, TrainConfig, Trainer};

use crate::device::{parse_device, set_tf32};

#[derive(Args, Debug)]
#[command(
    after_help = "Example (on a GPU machine):\n  collapse-lab gpu-check --device cuda > gpu-check.json"
)]
pub struct CheckArgs {
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Training steps of the CPU-vs-device loss-curve comparison.
    #[arg(long, default_value_t = 100)]
    pub steps: u64,
}

/// The largest relative difference of the 100-step loss curve from the CPU's that passes (see `run`).
const LOSS_CURVE_GATE: f64 = 1e-3;

fn model_on(cfg: &GptConfig, seed: u64, dev: &Device) -> Result<Gpt> {
    let mut m = Gpt::new(cfg, seed, DType::F32, dev)?;
    // On the CPU, the "device" side takes the path GPUs take.
    m.set_cpu_kernels(false);
    Ok(m)
}

fn losses(model: Gpt, tokens: &[u32], steps: u64) -> Result<Vec<f64>> {
    let tc = TrainConfig {
        steps,
        batch_size: 8,
        lr: LrSchedule::Constant { lr: 3e-3 },
        ..TrainConfig::default()
    };
    let block = model.config().block_size;
    let mut t = Trainer::new(model, tc, 11)?;
    let b = Batcher::new(tokens, block, 8, 11)?;
    let mut out = Vec::new();
    for _ in 0..steps {
        out.push(t.train_step(&b)?.to_dtype(DType::F64)?.to_scalar::<f64>()?);
    }
    Ok(out)
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(1e-12))
        .fold(0.0, f64::max)
}

pub fn run(a: CheckArgs) -> Result<()> {
    let dev = parse_device(&a.device)?;
    let cfg = GptConfig {
        block_size: 16,
        ..GptConfig::tiny(64)
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let tokens: Vec<u32> = (0..5000)
        .map(|i| ((i * 7 + rng.random_range(0..3)) % 64) as u32)
        .collect();
    let mut failures = Vec::new();

    // 1. Every parameter receives a non-zero gradient on the device.
    let m = model_on(&cfg, 1, &dev)?;
    let (x, y) = Batcher::new(&tokens, cfg.block_size, 4, 1)?.batch(0, &dev)?;
    let grads = m.loss(&x, &y, None)?.backward()?;
    let mut zero = Vec::new();
    for (name, v) in m.params() {
        let n = grads
            .get(v)
            .map(|g| g.sqr()?.sum_all()?.to_scalar::<f32>())
            .transpose()?
            .unwrap_or(0.0);
        if !(n > 0.0 && n.is_finite()) {
            zero.push(name.clone());
        }
    }
    if !zero.is_empty() {
        failures.push(format!("no gradient for {zero:?}"));
    }

    // 2. Cached decoding equals a full recompute, before and after block_size.
    let mut dec = Decoder::new(&m, vec![vec![1, 2, 3]; 4])?;
    let mut worst_cache = 0f32;
    for step in 0..2 * cfg.block_size {
        let ctx = dec.tokens().to_vec();
        let len = ctx[0].len();
        let s = len.saturating_sub(cfg.block_size);
        let flat: Vec<u32> = ctx.iter().flat_map(|t| t[s..].to_vec()).collect();
        let full = m
            .forward(&Tensor::from_vec(flat, (ctx.len(), len - s), &dev)?)?
            .narrow(1, len - s - 1, 1)?
            .squeeze(1)?;
        worst_cache = worst_cache.max(
            (full - dec.logits())?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?,
        );
        dec.push(&[(step % 60) as u32 + 1; 4])?;
    }
    if worst_cache >= 1e-4 {
        failures.push(format!(
            "cached decoding differs from recompute by {worst_cache}"
        ));
    }

    // 3. Loss curves from the same initial weights: CPU against the device, TF32 off and on.
    let cpu = losses(
        Gpt::new(&cfg, 5, DType::F32, &Device::Cpu)?,
        &tokens,
        a.steps,
    )?;
    set_tf32(&dev, false);
    let strict = losses(model_on(&cfg, 5, &dev)?, &tokens, a.steps)?;
    set_tf32(&dev, true);
    let tf32 = losses(model_on(&cfg, 5, &dev)?, &tokens, a.steps)?;
    let (rel_strict, rel_tf32) = (max_rel(&cpu, &strict), max_rel(&cpu, &tf32));
    // The scale of a rounding difference after `steps` steps: the CPU run again from weights moved by one
    // relative f32 ulp (9.3e-8 after 100 steps on an Intel Xeon, where the CPU's own plain-op path, which
    // sums in another order, differs by 1.2e-7). Correct kernels that sum in yet another order (cuBLAS)
    // stay near that scale; the gate sits 10^4 above it, so it cannot be flaky across cuBLAS versions, and
    // what passes it matches the CPU's losses to 0.1% at every step.
    let rounding = losses(
        {
            let m = Gpt::new(&cfg, 5, DType::F32, &Device::Cpu)?;
            for (_, v) in m.params() {
                v.set(&(v.as_tensor() * (1.0 + f32::EPSILON as f64))?)?;
            }
            m
        },
        &tokens,
        a.steps,
    )?;
    let rel_rounding = max_rel(&cpu, &rounding);
    if rel_strict >= LOSS_CURVE_GATE {
        failures.push(format!(
            "loss curve differs from the CPU's by {rel_strict:e} (relative, f32 matmuls; gate {LOSS_CURVE_GATE:e}, \
             one ulp of the weights moves it {rel_rounding:e})"
        ));
    }

    // 4. Device sampling: greedy decoding equals the CPU host sampler's.
    let gc = GenerateConfig {
        max_new_tokens: 40,
        temperature: 0.0,
        top_k: None,
        top_p: None,
        stop_token: None,
    };
    set_tf32(&dev, false);
    let host = generate(
        &Gpt::new(&cfg, 9, DType::F32, &Device::Cpu)?,
        &[0],
        8,
        &gc,
        0,
        0,
    )?;
    let on_dev = generate_on_device(&model_on(&cfg, 9, &dev)?, &[0], 8, &gc, 0)?;
    let agree = host.iter().zip(&on_dev).filter(|(a, b)| a == b).count();
    if agree < 7 {
        failures.push(format!("greedy decoding agrees on {agree}/8 sequences"));
    }
    set_tf32(&dev, true);

    // 5. Device sampling draws from the softmax: first-token frequencies of 20,000 sequences against it, by
    // chi-square at the 1e-6 level, at T = 1 and T = 0.7.
    let mut sampler = Vec::new();
    let m = model_on(&cfg, 21, &dev)?;
    for (_, v) in m.params() {
        v.set(&(v.as_tensor() * 3.0)?)?;
    }
    for (temperature, top_k, top_p) in [
        (1.0f32, None, None),
        (0.7, None, None),
        (0.8, Some(20), Some(0.8)),
    ] {
        let gc = GenerateConfig {
            max_new_tokens: 1,
            temperature,
            top_k,
            top_p,
            stop_token: None,
        };
        let c = gpt::device_sampler_chi_square(&m, &[3, 7], 20_000, &gc, 5)?;
        if !c.passes() {
            failures.push(format!(
                "device sampling at T = {temperature}, top-k {top_k:?}, top-p {top_p:?} does not follow the host \
                 sampler's distribution: chi-square {:.1} on {} df (bound {:.1})",
                c.statistic, c.degrees_of_freedom, c.bound
            ));
        }
        sampler.push(
            json!({ "temperature": temperature, "top_k": top_k, "top_p": top_p, "chi_square": c }),
        );
    }

    let report = json!({
        "device": a.device,
        "parameters_without_gradient": zero,
        "cache_vs_recompute_max_abs_diff": worst_cache,
        "loss_curve_steps": a.steps,
        "loss_curve_max_rel_diff_f32": rel_strict,
        "loss_curve_max_rel_diff_tf32": rel_tf32,
        "loss_curve_max_rel_diff_one_ulp_of_weights": rel_rounding,
        "loss_curve_gate": LOSS_CURVE_GATE,
        "loss_first_last_cpu": [cpu.first(), cpu.last()],
        "greedy_sequences_equal_to_cpu": agree,
        "sampler_chi_square": sampler,
        "failures": failures,
        "pass": failures.is_empty(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !failures.is_empty() {
        bail!("gpu-check failed: {}", failures.join("; "));
    }
    Ok(())
}
