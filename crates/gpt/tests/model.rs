//! Correctness of the model: gradients, finite differences, the fused loss, cached decoding, checkpoints.

use candle_core::{DType, Device, Tensor};
use gpt::{generate, Chunking, Decoder, GenerateConfig, Gpt, GptConfig, Sampler};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// max |t| over every element.
fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn batch(cfg: &GptConfig, b: usize, t: usize, seed: u64, dev: &Device) -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let toks: Vec<u32> = (0..b * (t + 1))
        .map(|_| rng.random_range(0..cfg.vocab_size as u32))
        .collect();
    let x: Vec<u32> = (0..b)
        .flat_map(|i| toks[i * (t + 1)..i * (t + 1) + t].to_vec())
        .collect();
    let y: Vec<u32> = (0..b)
        .flat_map(|i| toks[i * (t + 1) + 1..(i + 1) * (t + 1)].to_vec())
        .collect();
    (
        Tensor::from_vec(x, (b, t), dev).unwrap(),
        Tensor::from_vec(y, (b, t), dev).unwrap(),
    )
}

#[test]
fn the_paper_model_has_16_058_112_parameters() {
    let m = Gpt::new(&GptConfig::paper(), 0, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m.num_params(true), 16_058_112);
    assert_eq!(m.num_params(false), 16_025_344);
    let names: Vec<&str> = m.params().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "transformer.wte.weight");
    assert!(names.contains(&"transformer.h.0.attn.c_attn.weight"));
    assert!(names.contains(&"transformer.h.3.mlp.c_proj.bias"));
    assert_eq!(*names.last().unwrap(), "transformer.ln_f.bias");
}

#[test]
fn initialisation_follows_gpt2_and_is_seeded() {
    let cfg = GptConfig {
        n_embd: 64,
        n_head: 4,
        vocab_size: 512,
        ..GptConfig::tiny(512)
    };
    let a = Gpt::new(&cfg, 7, DType::F32, &Device::Cpu).unwrap();
    let b = Gpt::new(&cfg, 7, DType::F32, &Device::Cpu).unwrap();
    let c = Gpt::new(&cfg, 8, DType::F32, &Device::Cpu).unwrap();
    let std_of = |m: &Gpt, name: &str| {
        let v = m
            .params()
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32).sqrt()
    };
    assert!((std_of(&a, "transformer.wte.weight") - 0.02).abs() < 0.001);
    let resid = 0.02 / (2.0f32 * cfg.n_layer as f32).sqrt();
    assert!((std_of(&a, "transformer.h.1.mlp.c_proj.weight") - resid).abs() < 0.001);
    assert!((std_of(&a, "transformer.h.0.attn.c_attn.weight") - 0.02).abs() < 0.001);
    for (n, v) in a.params() {
        let vals = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if n.ends_with(".bias") {
            assert!(vals.iter().all(|&x| x == 0.0), "{n}");
        }
        if n.contains("ln_") && n.ends_with(".weight") {
            assert!(vals.iter().all(|&x| x == 1.0), "{n}");
        }
    }
    let first = |m: &Gpt| {
        m.params()[0]
            .1
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(first(&a), first(&b));
    assert_ne!(first(&a), first(&c));
}

fn check_every_parameter_gets_a_gradient(fused: bool) {
    let cfg = GptConfig::tiny(64);
    let dev = Device::Cpu;
    let mut m = Gpt::new(&cfg, 1, DType::F32, &dev).unwrap();
    m.set_cpu_kernels(fused);
    let (x, y) = batch(&cfg, 3, cfg.block_size, 2, &dev);
    let loss = m.loss(&x, &y, None).unwrap();
    let grads = loss.backward().unwrap();
    for (name, v) in m.params() {
        let g = grads
            .get(v)
            .unwrap_or_else(|| panic!("{name} received no gradient"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name}: gradient norm {norm}"
        );
    }
}

#[test]
fn every_parameter_gets_a_nonzero_gradient() {
    check_every_parameter_gets_a_gradient(true);
    check_every_parameter_gets_a_gradient(false);
}

/// Analytic gradients of both loss paths against central finite differences in f64, for a sample of entries
/// of every tensor.
#[test]
fn gradients_match_finite_differences() {
    let cfg = GptConfig::tiny(64);
    let dev = Device::Cpu;
    let mut m = Gpt::new(&cfg, 3, DType::F64, &dev).unwrap();
    // Larger weights than GPT-2's init so every path (attention, GELU curvature) carries signal.
    // Seeded (candle's CPU randn is not), so the sampled entries are the same every run.
    let mut noise_rng = ChaCha8Rng::seed_from_u64(33);
    for (_, v) in m.params() {
        let t = v.as_tensor();
        let noise: Vec<f64> = (0..t.elem_count())
            .map(|_| noise_rng.random_range(-0.5..0.5))
            .collect();
        let noise = Tensor::from_vec(noise, t.shape(), &dev).unwrap();
        v.set(&(t + noise).unwrap()).unwrap();
    }
    let (x, y) = batch(&cfg, 2, 12, 4, &dev);
    // 24 rows: the fused loss in chunks of 5, 5, 5, 5 and 4 rows, LayerNorm in tasks of 5 rows (ragged last
    // one), as well as the default single chunk and task.
    let small = Chunking {
        lce_rows: Some(5),
        layer_norm_rows: 5,
    };
    for (fused, chunking) in [
        (true, Chunking::default()),
        (true, small),
        (false, Chunking::default()),
    ] {
        m.set_cpu_kernels(fused);
        m.set_chunking(chunking);
        let loss_of =
            |m: &Gpt| -> f64 { m.loss(&x, &y, None).unwrap().to_scalar::<f64>().unwrap() };
        let grads = m.loss(&x, &y, None).unwrap().backward().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut worst: f64 = 0.0;
        for (name, v) in m.params() {
            let g = grads
                .get(v)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let orig = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for _ in 0..6 {
                let i = rng.random_range(0..orig.len());
                // Fourth-order central difference: truncation error O(h^4), rounding O(1e-16 / h).
                let h = 1e-3;
                let at = |d: f64| -> f64 {
                    let mut p = orig.clone();
                    p[i] = orig[i] + d;
                    v.set(&Tensor::from_vec(p, v.shape(), &dev).unwrap())
                        .unwrap();
                    loss_of(&m)
                };
                let fd = (8.0 * (at(h) - at(-h)) - (at(2.0 * h) - at(-2.0 * h))) / (12.0 * h);
                v.set(&Tensor::from_vec(orig.clone(), v.shape(), &dev).unwrap())
                    .unwrap();
                let rel = (g[i] - fd).abs() / g[i].abs().max(fd.abs()).max(1e-5);
                worst = worst.max(rel);
                assert!(rel < 1e-4, "fused={fused} {chunking:?} {name}[{i}]: analytic {} vs finite difference {fd} (rel {rel:e})", g[i]);
            }
        }
        eprintln!("fused={fused} {chunking:?}: worst relative gradient error {worst:e}");
    }
}

#[test]
fn cpu_kernels_equal_plain_ops() {
    let cfg = GptConfig {
        vocab_size: 300,
        ..GptConfig::tiny(300)
    };
    let dev = Device::Cpu;
    let mut m = Gpt::new(&cfg, 9, DType::F32, &dev).unwrap();
    let (x, y) = batch(&cfg, 4, 16, 10, &dev);
    let a = m.loss(&x, &y, None).unwrap();
    m.set_cpu_kernels(false);
    let b = m.loss(&x, &y, None).unwrap();
    m.set_cpu_kernels(true);
    let (la, lb) = (a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
    assert!((la - lb).abs() < 1e-5 * lb.abs(), "{la} vs {lb}");
    let (ga, gb) = (a.backward().unwrap(), b.backward().unwrap());
    for (name, v) in m.params() {
        let d = max_abs(&(ga.get(v).unwrap() - gb.get(v).unwrap()).unwrap());
        let s = max_abs(gb.get(v).unwrap());
        assert!(d <= 1e-4 * s.max(1e-3), "{name}: max diff {d}, scale {s}");
    }
    let nll = m.nll_sum(&x, &y).unwrap();
    assert!((nll / 64.0 - lb as f64).abs() < 1e-5, "{nll}");
    // Inference off the CPU kernels runs candle-nn's fused LayerNorm and softmax, as GPUs do.
    let fused = m.forward(&x).unwrap();
    m.set_cpu_kernels(false);
    let plain = m.forward(&x).unwrap();
    let d = max_abs(&(fused - plain).unwrap());
    assert!(d < 1e-4, "inference paths differ by {d}");
}

/// Loss, gradients and the evaluator's NLL sum do not depend on how the CPU kernels chunk their work beyond
/// rounding: several chunks of the fused loss (and a ragged last one), several LayerNorm tasks.
#[test]
fn chunked_kernels_equal_one_chunk() {
    let cfg = GptConfig::tiny(300);
    let dev = Device::Cpu;
    let mut m = Gpt::new(&cfg, 12, DType::F64, &dev).unwrap();
    let (x, y) = batch(&cfg, 3, 16, 13, &dev);
    let run = |m: &Gpt| {
        let loss = m.loss(&x, &y, None).unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<Vec<f64>> = m
            .params()
            .iter()
            .map(|(_, v)| {
                grads
                    .get(v)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect();
        (
            loss.to_scalar::<f64>().unwrap(),
            g,
            m.nll_sum(&x, &y).unwrap(),
        )
    };
    let (l1, g1, n1) = run(&m);
    for (lce_rows, layer_norm_rows) in [(7, 5), (1, 1), (47, 13)] {
        m.set_chunking(Chunking {
            lce_rows: Some(lce_rows),
            layer_norm_rows,
        });
        let (l2, g2, n2) = run(&m);
        assert!((l1 - l2).abs() < 1e-12, "{l1} vs {l2}");
        assert!((n1 - n2).abs() < 1e-9, "{n1} vs {n2}");
        for ((name, _), (a, b)) in m.params().iter().zip(g1.iter().zip(&g2)) {
            let d = a
                .iter()
                .zip(b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f64::max);
            assert!(
                d < 1e-12,
                "{name}: chunks of {lce_rows}/{layer_norm_rows} rows differ by {d}"
            );
        }
    }
}

/// At every step, before and after the context passes block_size, the cached decoder's logits equal those of
/// a full recompute over the cropped context (nanoGPT's semantics).
#[test]
fn cached_decoding_equals_full_recompute() {
    let cfg = GptConfig {
        block_size: 8,
        ..GptConfig::tiny(64)
    };
    let dev = Device::Cpu;
    let m = Gpt::new(&cfg, 11, DType::F32, &dev).unwrap();
    let prompts = vec![vec![1u32, 2, 3], vec![4, 5, 6], vec![7, 8, 9]];
    let mut dec = Decoder::new(&m, prompts).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for step in 0..20 {
        let ctx = dec.tokens().to_vec();
        let len = ctx[0].len();
        let start = len.saturating_sub(cfg.block_size);
        let flat: Vec<u32> = ctx.iter().flat_map(|t| t[start..].to_vec()).collect();
        let idx = Tensor::from_vec(flat, (ctx.len(), len - start), &dev).unwrap();
        let full = m
            .forward(&idx)
            .unwrap()
            .narrow(1, len - start - 1, 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let diff = max_abs(&(full - dec.logits()).unwrap());
        assert!(
            diff < 1e-4,
            "step {step} (context {len}): max |cached - recompute| = {diff}"
        );
        if step == 10 {
            dec.retain(&[true, false, true]).unwrap();
        }
        let n = dec.tokens().len();
        let next: Vec<u32> = (0..n).map(|_| rng.random_range(0..64)).collect();
        dec.push(&next).unwrap();
    }
    assert!(dec.tokens()[0].len() > 2 * cfg.block_size);
}

#[test]
fn generation_is_seeded_and_independent_of_batching() {
    let cfg = GptConfig::tiny(64);
    let m = Gpt::new(&cfg, 13, DType::F32, &Device::Cpu).unwrap();
    let gc = GenerateConfig {
        max_new_tokens: 40,
        temperature: 1.0,
        top_k: None,
        top_p: None,
        stop_token: Some(0),
    };
    let all = generate(&m, &[0], 6, &gc, 99, 0).unwrap();
    assert_eq!(all, generate(&m, &[0], 6, &gc, 99, 0).unwrap());
    let tail = generate(&m, &[0], 3, &gc, 99, 3).unwrap();
    assert_eq!(&all[3..], tail.as_slice());
    assert_ne!(all, generate(&m, &[0], 6, &gc, 100, 0).unwrap());
    assert!(all.iter().all(|s| s.len() <= 40 && !s.contains(&0)));
    assert!(
        all.iter().any(|s| s.len() > 20),
        "sequences should pass block_size 16: {all:?}"
    );
}

#[test]
fn sampler_respects_top_k_top_p_and_greedy() {
    let logits: Vec<f32> = (0..100).map(|i| i as f32 * 0.1).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let greedy = Sampler {
        temperature: 0.0,
        top_k: None,
        top_p: None,
    };
    assert_eq!(greedy.sample(&mut logits.clone(), &mut rng), 99);
    let top5 = Sampler {
        temperature: 1.0,
        top_k: Some(5),
        top_p: None,
    };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..500 {
        let t = top5.sample(&mut logits.clone(), &mut rng);
        assert!(t >= 95, "top-5 drew {t}");
        seen.insert(t);
    }
    assert_eq!(seen.len(), 5);
    // Probabilities 0.5, 0.3, 0.2 (and negligible rest): top_p 0.7 keeps exactly the first two.
    let mut l = vec![-1e9f32; 10];
    l[3] = 0.5f32.ln();
    l[7] = 0.3f32.ln();
    l[1] = 0.2f32.ln();
    let nucleus = Sampler {
        temperature: 1.0,
        top_k: None,
        top_p: Some(0.7),
    };
    let mut counts = [0; 10];
    for _ in 0..2000 {
        counts[nucleus.sample(&mut l.clone(), &mut rng) as usize] += 1;
    }
    assert_eq!(counts[1], 0);
    assert!(
        (counts[3] as f64 / 2000.0 - 0.625).abs() < 0.05,
        "{counts:?}"
    );
    assert!(GenerateConfig {
        top_p: Some(1.5),
        ..Default::default()
    }
    .validate()
    .is_err());
    assert!(GenerateConfig {
        temperature: -1.0,
        ..Default::default()
    }
    .validate()
    .is_err());
}

#[test]
fn checkpoints_round_trip_and_corruption_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let cfg = GptConfig::tiny(64);
    let m = Gpt::new(&cfg, 21, DType::F32, &Device::Cpu).unwrap();
    m.save(&path).unwrap();
    let back = Gpt::load(&path, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(back.config(), &cfg);
    for ((n1, a), (n2, b)) in m.params().iter().zip(back.params()) {
        assert_eq!(n1, n2);
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = Gpt::load(&path, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("truncated or corrupt"), "{err}");
    std::fs::write(&path, b"not a checkpoint at all").unwrap();
    assert!(Gpt::load(&path, DType::F32, &Device::Cpu).is_err());
    assert!(Gpt::load(&dir.path().join("missing"), DType::F32, &Device::Cpu).is_err());
}

/// The device sampler (used on GPUs) run on the CPU: greedy decoding must match the host path token for
/// token, across the block_size boundary and with stop tokens; random decoding must stop and stay in range.
#[test]
fn device_sampling_matches_host_greedy_decoding() {
    let cfg = GptConfig {
        block_size: 8,
        ..GptConfig::tiny(64)
    };
    let m = Gpt::new(&cfg, 17, DType::F32, &Device::Cpu).unwrap();
    for stop in [None, Some(5)] {
        let gc = GenerateConfig {
            max_new_tokens: 30,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            stop_token: stop,
        };
        let host = generate(&m, &[1, 2], 3, &gc, 0, 0).unwrap();
        let dev = gpt::generate_on_device(&m, &[1, 2], 3, &gc, 0).unwrap();
        assert_eq!(host, dev, "stop {stop:?}");
    }
    let gc = GenerateConfig {
        max_new_tokens: 40,
        temperature: 1.0,
        top_k: None,
        top_p: None,
        stop_token: Some(3),
    };
    let out = gpt::generate_on_device(&m, &[0], 16, &gc, 1).unwrap();
    assert!(out
        .iter()
        .all(|s| s.len() <= 40 && s.iter().all(|&t| t < 64 && t != 3)));
    assert!(
        out.iter().any(|s| s.len() < 40),
        "with 64 tokens some sequence draws the stop token in 40 steps"
    );
}

/// Export to transformers' layout and import back: identical logits, for models with and without biases and
/// with a square `c_proj`; every Conv1D weight is stored transposed, everything else as is.
#[test]
fn hf_export_import_round_trips_with_conv1d_weights_transposed() {
    let dir = tempfile::tempdir().unwrap();
    for bias in [true, false] {
        let cfg = GptConfig {
            bias,
            ..GptConfig::tiny(50)
        };
        let m = Gpt::new(&cfg, 31, DType::F32, &Device::Cpu).unwrap();
        // Non-zero biases, so a bias that went missing or moved would show in the logits.
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for (_, v) in m.params() {
            let noise: Vec<f32> = (0..v.elem_count())
                .map(|_| rng.random_range(-0.1..0.1))
                .collect();
            let noise = Tensor::from_vec(noise, v.shape(), &Device::Cpu).unwrap();
            v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
        }
        let (config, weights) = m.to_hf(Some(49)).unwrap();
        let out = dir.path().join(format!("bias-{bias}"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("config.json"), &config).unwrap();
        std::fs::write(out.join("model.safetensors"), &weights).unwrap();

        let c: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(c["model_type"], "gpt2");
        assert_eq!(c["activation_function"], "gelu_new");
        assert_eq!(c["n_positions"], cfg.block_size);
        assert_eq!(c["n_embd"], cfg.n_embd);
        assert_eq!(c["tie_word_embeddings"], true);
        assert_eq!(c["layer_norm_epsilon"], 1e-5);

        let (tensors, meta) =
            gpt::deserialize_safetensors(&weights, "export", &Device::Cpu).unwrap();
        assert_eq!(
            meta["format"], "pt",
            "transformers refuses safetensors without format = pt"
        );
        assert!(!tensors.contains_key("lm_head.weight"), "tied to wte");
        let ours: std::collections::HashMap<&str, Tensor> = m
            .params()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_tensor().clone()))
            .collect();
        let mut conv1d = 0;
        for (name, t) in &tensors {
            match ours.get(name.as_str()) {
                Some(w) if gpt::is_conv1d_weight(name) => {
                    conv1d += 1;
                    let want = w.t().unwrap();
                    assert_eq!(t.dims(), want.dims(), "{name}");
                    assert_eq!(
                        max_abs(&(t - want).unwrap()),
                        0.0,
                        "{name} is not transposed"
                    );
                    if t.dims() == w.dims() {
                        // Square (attn.c_proj): the shape cannot tell, the values do.
                        assert_ne!(max_abs(&(t - w).unwrap()), 0.0, "{name} left as is");
                    }
                }
                Some(w) => assert_eq!(max_abs(&(t - w).unwrap()), 0.0, "{name}"),
                None => {
                    assert!(!bias && name.ends_with(".bias"), "unexpected {name}");
                    assert_eq!(max_abs(t), 0.0, "a missing bias is exported as zeros");
                }
            }
        }
        assert_eq!(conv1d, 4 * cfg.n_layer);

        let back = Gpt::from_hf_dir(&out, DType::F32, &Device::Cpu).unwrap();
        let (x, _) = batch(&cfg, 2, cfg.block_size, 3, &Device::Cpu);
        let d = max_abs(&(m.forward(&x).unwrap() - back.forward(&x).unwrap()).unwrap());
        assert_eq!(d, 0.0, "bias {bias}: logits differ by {d}");
    }

    // A checkpoint without the `transformer.` prefix (as the Hub's gpt2 is) and with old buffers loads too;
    // one whose c_proj is not transposed computes something else, which the logits show.
    let cfg = GptConfig::tiny(50);
    let m = Gpt::new(&cfg, 5, DType::F32, &Device::Cpu).unwrap();
    let (config, weights) = m.to_hf(None).unwrap();
    let (tensors, _) = gpt::deserialize_safetensors(&weights, "export", &Device::Cpu).unwrap();
    for (name, fix_c_proj) in [("bare", false), ("untransposed", true)] {
        let mut renamed: Vec<(String, Tensor)> = tensors
            .iter()
            .map(|(n, t)| {
                let t = if fix_c_proj && n.ends_with("attn.c_proj.weight") {
                    t.t().unwrap().contiguous().unwrap()
                } else {
                    t.clone()
                };
                (n.trim_start_matches("transformer.").to_string(), t)
            })
            .collect();
        renamed.push((
            "h.0.attn.bias".into(),
            Tensor::ones((1, 1, 16, 16), DType::F32, &Device::Cpu).unwrap(),
        ));
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("config.json"), &config).unwrap();
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        std::fs::write(
            out.join("model.safetensors"),
            gpt::serialize_safetensors(&renamed, meta).unwrap(),
        )
        .unwrap();
        let back = Gpt::from_hf_dir(&out, DType::F32, &Device::Cpu).unwrap();
        let (x, _) = batch(&cfg, 1, 8, 4, &Device::Cpu);
        let d = max_abs(&(m.forward(&x).unwrap() - back.forward(&x).unwrap()).unwrap());
        if fix_c_proj {
            assert!(
                d > 1e-4,
                "a square c_proj loaded untransposed must change the logits"
            );
        } else {
            assert_eq!(d, 0.0);
        }
    }

    // What the model cannot compute is refused with the reason.
    let out = dir.path().join("erf");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("config.json"), config.replace("gelu_new", "gelu")).unwrap();
    std::fs::write(out.join("model.safetensors"), &weights).unwrap();
    let e = Gpt::from_hf_dir(&out, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("activation_function \"gelu\""), "{e}");
}

/// The same weights give the same checkpoint bytes every time (the metadata map's order no longer leaks into
/// the file), and the bytes load back to the same model.
#[test]
fn checkpoints_are_byte_identical_for_identical_weights() {
    let cfg = GptConfig {
        vocab_size: 50,
        block_size: 8,
        n_layer: 1,
        n_head: 2,
        n_embd: 8,
        dropout: 0.0,
        bias: true,
    };
    let m = Gpt::new(&cfg, 5, DType::F32, &Device::Cpu).unwrap();
    let first = m.to_safetensors().unwrap();
    // Every HashMap gets its own random order: 40 fresh serialisations would disagree without sorting.
    for _ in 0..40 {
        assert_eq!(m.to_safetensors().unwrap(), first);
    }
    let back = Gpt::from_safetensors(&first, "mem", DType::F32, &Device::Cpu).unwrap();
    assert_eq!(back.config(), &cfg);
    assert_eq!(back.to_safetensors().unwrap(), first);
}
