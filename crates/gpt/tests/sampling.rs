//! The samplers against the distribution they claim to draw from: the device sampler (Gumbel-max) by a
//! chi-square test on a CPU run of the same code, the host sampler's inverse CDF on adversarial rows.

use candle_core::{DType, Device, Tensor};
use gpt::{fast_exp_slice, ChiSquare, GenerateConfig, Gpt, GptConfig, KvCache, Sampler};

fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / temperature).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// The device sampler, run on the CPU through `generate_on_device`: the first token of 20,000 sequences
/// follows softmax(logits / T) of the prompt's logits, and the chi-square check has the power to tell T = 1
/// from T = 0.7.
/// The model's next-token logits after `prompt`, on the CPU.
fn last_logits(m: &Gpt, prompt: &[u32]) -> Vec<f32> {
    let idx = Tensor::new(prompt, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward_last(&idx, &mut KvCache::default())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn device_sampler_frequencies_match_the_softmax() {
    let mut cfg = GptConfig::tiny(64);
    cfg.block_size = 8;
    let m = Gpt::new(&cfg, 21, DType::F32, &Device::Cpu).unwrap();
    // Larger weights than GPT-2's init, so the next-token distribution is far from uniform.
    for (_, v) in m.params() {
        v.set(&(v.as_tensor() * 3.0).unwrap()).unwrap();
    }
    let prompt = [3u32, 7];
    let logits = last_logits(&m, &prompt);
    let pmax = softmax(&logits, 1.0).into_iter().fold(0.0, f64::max);
    assert!(
        pmax > 3.0 / 64.0,
        "far from uniform tests the sampler better ({pmax})"
    );
    let draw = |temperature: f32, seed: u64| {
        let gc = GenerateConfig {
            max_new_tokens: 1,
            temperature,
            top_k: None,
            top_p: None,
            stop_token: None,
        };
        let mut counts = vec![0usize; 64];
        for s in gpt::generate_on_device(&m, &prompt, 20_000, &gc, seed).unwrap() {
            counts[s[0] as usize] += 1;
        }
        counts
    };
    for (temperature, other) in [(1.0f32, 0.7f32), (0.7, 1.0)] {
        let counts = draw(temperature, 5);
        let c = ChiSquare::of(&counts, &softmax(&logits, temperature as f64));
        eprintln!("T = {temperature}: {c:?}");
        assert!(c.degrees_of_freedom >= 10, "{c:?}");
        assert!(c.passes(), "T = {temperature}: {c:?}");
        let wrong = ChiSquare::of(&counts, &softmax(&logits, other as f64));
        assert!(
            !wrong.passes(),
            "T = {temperature} draws pass as T = {other}: {wrong:?}"
        );
        // Seeded on the CPU: the same seed gives the same draws, another seed others.
        assert_eq!(counts, draw(temperature, 5));
        assert_ne!(counts, draw(temperature, 6));
        // The library's own check (used by `gpu-check` on CUDA) computes the same.
        let gc = GenerateConfig {
            max_new_tokens: 1,
            temperature,
            top_k: None,
            top_p: None,
            stop_token: None,
        };
        let lib = gpt::device_sampler_chi_square(&m, &prompt, 20_000, &gc, 5).unwrap();
        assert!(
            (lib.statistic - c.statistic).abs() < 1e-6 * c.statistic,
            "{lib:?}"
        );
    }
}

/// With top-k and top-p the device sampler draws from the host sampler's filtered distribution, and the
/// check can tell it from the unfiltered one.
#[test]
fn device_sampler_with_top_k_and_top_p_matches_the_filtered_softmax() {
    let mut cfg = GptConfig::tiny(64);
    cfg.block_size = 8;
    let m = Gpt::new(&cfg, 21, DType::F32, &Device::Cpu).unwrap();
    for (_, v) in m.params() {
        v.set(&(v.as_tensor() * 3.0).unwrap()).unwrap();
    }
    let filtered = GenerateConfig {
        max_new_tokens: 1,
        temperature: 0.8,
        top_k: Some(20),
        top_p: Some(0.8),
        stop_token: None,
    };
    let c = gpt::device_sampler_chi_square(&m, &[3, 7], 20_000, &filtered, 9).unwrap();
    assert!(c.passes(), "{c:?}");
    assert!(c.degrees_of_freedom >= 5, "{c:?}");
    // The same draws against the unfiltered softmax fail: the filter did something.
    let plain = GenerateConfig {
        top_k: None,
        top_p: None,
        ..filtered.clone()
    };
    let mut counts = vec![0usize; 64];
    for s in gpt::generate_on_device(&m, &[3, 7], 20_000, &filtered, 9).unwrap() {
        counts[s[0] as usize] += 1;
    }
    let logits = last_logits(&m, &[3, 7]);
    let wrong = ChiSquare::of(&counts, &softmax(&logits, plain.temperature as f64));
    assert!(!wrong.passes(), "{wrong:?}");
}

/// curand's uniforms include 1.0, where -ln(-ln u) is +inf: such a slot must not win against a token
/// 1,000 nats more probable.
#[test]
fn gumbel_draw_at_u_equal_one_does_not_pick_an_improbable_token() {
    assert!(
        (-(-(1f64.ln())).ln()).is_infinite(),
        "the hazard being tested"
    );
    let logits = Tensor::new(&[[0f32, -1000.0, -5.0]], &Device::Cpu).unwrap();
    for u in [[0.5f64, 1.0, 0.5], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]] {
        let u = Tensor::new(&[u], &Device::Cpu).unwrap();
        let next = gpt::gumbel_argmax(&logits, 1.0, &u).unwrap();
        assert_ne!(
            next.to_vec1::<u32>().unwrap()[0],
            1,
            "u = 1 picked a token of probability e^-1000"
        );
    }
    // The tail is cut at u = GUMBEL_U_MAX, where the Gumbel value is 36.7 (f32 uniforms stop at 16.6).
    let g = -(-(gpt::GUMBEL_U_MAX.ln())).ln();
    assert!(g > 36.0 && g.is_finite(), "{g}");
}

/// Rows where the f32 sum of the probabilities differs from their exact sum. Every token at quantile `r`
/// must be the exact inverse CDF of the probabilities the sampler computed, never a spurious last token.
#[test]
fn host_sampler_inverse_cdf_is_exact_on_adversarial_rows() {
    let v = 4097;
    // One dominant token and many just above half an ulp of 1.0 in f32: an f32 running sum rounds up on
    // every addition, so an f32 total exceeds the exact one. The last token (GPT-2's <|endoftext|> sits
    // there) has probability about 1e-30.
    let tiny = (1.01f64 * 2f64.powi(-24)).ln() as f32;
    let mut row = vec![tiny; v];
    row[0] = 0.0;
    row[v - 1] = -69.0;
    let mut probs = row.clone();
    fast_exp_slice(&mut probs, 0.0);
    let exact: Vec<f64> = probs.iter().map(|&p| p as f64).collect();
    let total: f64 = exact.iter().sum();
    let mut cum = vec![0.0; v + 1];
    for i in 0..v {
        cum[i + 1] = cum[i] + exact[i];
    }
    let sampler = Sampler {
        temperature: 1.0,
        top_k: None,
        top_p: None,
    };
    // Quantiles in the middle of the last few tokens' intervals before <|endoftext|>.
    for i in (v - 40..v - 1).chain([0, 1, v / 2]) {
        let r = (cum[i] + 0.5 * exact[i]) / total;
        let got = sampler.sample_at(&mut row.clone(), r);
        assert_eq!(got as usize, i, "quantile {r} belongs to token {i}");
    }
    // The largest r below 1 lands on a real token, not past the end.
    let got = sampler.sample_at(&mut row.clone(), 1.0 - f64::EPSILON / 2.0);
    assert!(got as usize >= v - 2, "{got}");

    // Top-k: whatever the quantile, the token is one of the k kept.
    let top_k = Sampler {
        top_k: Some(2),
        ..sampler
    };
    let mut row = vec![-3.0f32; 1000];
    row[10] = 1.0;
    row[500] = 0.5;
    for r in [0.0, 0.3, 0.6, 0.999_999, 1.0 - f64::EPSILON / 2.0] {
        let got = top_k.sample_at(&mut row.clone(), r);
        assert!(got == 10 || got == 500, "top-k 2 drew {got} at r = {r}");
    }
    // Top-p as well: with p = 0.5 only the dominant token is in the nucleus.
    let top_p = Sampler {
        top_p: Some(0.5),
        ..sampler
    };
    let mut row = vec![-20.0f32; 1000];
    row[7] = 0.0;
    for r in [0.0, 0.5, 1.0 - f64::EPSILON / 2.0] {
        assert_eq!(top_p.sample_at(&mut row.clone(), r), 7);
    }
}

/// The device's top-k and top-p filter keeps the tokens the host sampler can draw: on random rows (no ties),
/// the same set for every setting, at several temperatures.
#[test]
fn device_top_k_and_top_p_keep_the_host_sampler_s_tokens() {
    use rand::{Rng, SeedableRng};
    let (rows, v) = (6, 3000);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let data: Vec<f32> = (0..rows * v)
        .map(|i| rng.random::<f32>() * 12.0 - if i % v < 5 { 0.0 } else { 6.0 })
        .collect();
    let logits = Tensor::from_vec(data.clone(), (rows, v), &Device::Cpu).unwrap();
    for (temperature, top_k, top_p) in [
        (1.0f32, Some(50), None),
        (0.7, None, Some(0.9f32)),
        (1.3, Some(400), Some(0.5)),
        (1.0, Some(1), None),
        (1.0, None, Some(0.999)),
    ] {
        let gc = GenerateConfig {
            max_new_tokens: 1,
            temperature,
            top_k,
            top_p,
            stop_token: None,
        };
        let kept = gpt::filter_on_device(&logits, &gc).unwrap();
        let kept: Vec<Vec<f32>> = kept.to_vec2().unwrap();
        let sampler = gc.sampler();
        for (r, row) in kept.iter().enumerate() {
            let mine: Vec<usize> = (0..v).filter(|&i| row[i].is_finite()).collect();
            // The tokens the host sampler can draw: those at quantiles spread over [0, 1).
            let mut host: Vec<usize> = Vec::new();
            for q in 0..2_000 {
                let mut l = data[r * v..(r + 1) * v].to_vec();
                host.push(sampler.sample_at(&mut l, (q as f64 + 0.5) / 2_000.0) as usize);
            }
            host.sort();
            host.dedup();
            assert!(
                host.iter().all(|i| mine.contains(i)),
                "T {temperature} k {top_k:?} p {top_p:?}: the host draws a token the device filter drops"
            );
            // And the filter keeps nothing the host excludes: the host's set, computed exactly.
            let dist = sampler.distribution(&data[r * v..(r + 1) * v]);
            let order: Vec<usize> = (0..v).filter(|&i| dist[i] > 0.0).collect();
            assert_eq!(
                mine, order,
                "T {temperature} k {top_k:?} p {top_p:?} row {r}"
            );
            // Kept tokens keep their own logits.
            for &i in &mine {
                assert_eq!(row[i], data[r * v + i]);
            }
        }
    }
}

/// A batch larger than GUMBEL_ROWS is drawn in slices of rows from the same stream of uniforms: the tokens
/// are those of one draw over the whole batch.
#[test]
fn the_device_sampler_s_row_slices_draw_what_the_whole_batch_would() {
    use rand::{Rng, SeedableRng};
    let mut cfg = GptConfig::tiny(64);
    cfg.block_size = 8;
    let m = Gpt::new(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
    let count = gpt::GUMBEL_ROWS * 2 + 17;
    let gc = GenerateConfig {
        max_new_tokens: 1,
        temperature: 0.9,
        top_k: None,
        top_p: None,
        stop_token: None,
    };
    let got: Vec<u32> = gpt::generate_on_device(&m, &[5], count, &gc, 77)
        .unwrap()
        .into_iter()
        .map(|s| s[0])
        .collect();
    let idx = Tensor::new(&[5u32], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let row = m.forward_last(&idx, &mut KvCache::default()).unwrap();
    let logits = row.repeat((count, 1)).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(77);
    let u: Vec<f64> = (0..count * 64).map(|_| rng.random()).collect();
    let u = Tensor::from_vec(u, (count, 64), &Device::Cpu).unwrap();
    let whole: Vec<u32> = gpt::gumbel_argmax(&logits, 0.9, &u)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got, whole);
}
