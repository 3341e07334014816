//! GPT-2 as nanoGPT's model.py writes it: token and position embeddings, `n_layer` pre-LayerNorm blocks of
//! causal self-attention and a GELU MLP, a final LayerNorm, and an `lm_head` tied to `wte`.
//!
//! Every op on a training path has a backward pass in candle 0.11: LayerNorm and softmax are written out
//! because `candle_nn`'s fused versions have none and would stop gradients without an error. Inference
//! (no graph) off the CPU kernels uses candle-nn's fused LayerNorm and softmax, which is what GPUs run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::cpu_ops::{CausalAttention, Gelu, LayerNormOp, LinearOp};
use crate::fused::{linear_cross_entropy_sum, LinearCrossEntropy};
use crate::{Error, GptConfig, Result};

pub(crate) const LN_EPS: f64 = 1e-5;

/// A parameter as an op input: tracked for backprop in training; detached in inference, so that no graph is
/// built and every activation is freed as soon as the next one exists.
fn param(v: &Var, grad: bool) -> Tensor {
    if grad {
        v.as_tensor().clone()
    } else {
        v.as_tensor().detach()
    }
}

struct Linear {
    /// `[out, in]`, as `torch.nn.Linear` stores it.
    weight: Var,
    bias: Option<Var>,
}

impl Linear {
    fn forward(&self, x: &Tensor, cpu_kernels: bool, grad: bool) -> Result<Tensor> {
        let w = param(&self.weight, grad);
        let b = self.bias.as_ref().map(|b| param(b, grad));
        if cpu_kernels {
            let bias = match b {
                Some(b) => b,
                None => Tensor::zeros(w.dim(0)?, x.dtype(), x.device())?,
            };
            return Ok(x.apply_op3(&w, &bias, LinearOp)?);
        }
        let y = x.matmul(&w.t()?)?;
        Ok(match b {
            Some(b) => y.broadcast_add(&b)?,
            None => y,
        })
    }
}

struct LayerNorm {
    weight: Var,
    bias: Option<Var>,
}

impl LayerNorm {
    /// `cpu_kernels` carries the CPU kernel's rows per task when it is on.
    fn forward(&self, x: &Tensor, cpu_kernels: Option<usize>, grad: bool) -> Result<Tensor> {
        let w = param(&self.weight, grad);
        let b = self.bias.as_ref().map(|b| param(b, grad));
        if let Some(rows_per_task) = cpu_kernels {
            let bias = match &b {
                Some(b) => b.clone(),
                None => w.zeros_like()?,
            };
            let op = LayerNormOp {
                eps: LN_EPS,
                rows_per_task,
            };
            return Ok(x.apply_op3(&w, &bias, op)?);
        }
        if !grad {
            // No gradient flows: candle-nn's fused kernel (one CUDA launch instead of eight) is safe here.
            let bias = match &b {
                Some(b) => b.clone(),
                None => w.zeros_like()?,
            };
            return Ok(candle_nn::ops::layer_norm(
                &x.contiguous()?,
                &w,
                &bias,
                LN_EPS as f32,
            )?);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xhat = xc.broadcast_div(&(var + LN_EPS)?.sqrt()?)?;
        let y = xhat.broadcast_mul(&w)?;
        Ok(match &b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Softmax over the last dimension from differentiable ops. The max is a constant shift (softmax does not
/// depend on it), so it is detached rather than differentiated.
fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// Inverted dropout with masks from our own seeded RNG, so runs with dropout stay reproducible on CPU.
pub(crate) struct Dropout<'a> {
    pub p: f64,
    pub rng: &'a mut ChaCha8Rng,
}

impl Dropout<'_> {
    fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        if self.p == 0.0 {
            return Ok(x.clone());
        }
        use rand::Rng;
        let keep = 1.0 - self.p;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if self.rng.random::<f64>() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }
}

/// Keys and values of every layer for the positions seen so far, in buffers of `[B, n_head, block_size,
/// head_dim]` allocated once and written in place: growing them by concatenation every step re-allocates
/// megabytes per token, and the kernel's page faults then cost a tenth of generation time.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position; the buffers stay for reuse.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keeps only the batch rows in `rows` (finished sequences leave the batch).
    pub fn retain_rows(&mut self, rows: &Tensor) -> Result<()> {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(rows, 0)?;
            *v = v.index_select(rows, 0)?;
        }
        Ok(())
    }
}

/// Writes `k`, `v` (`[B, H, t, hd]`) at position `past` of a layer's buffers (allocating them at `capacity`
/// positions on first use) and returns views of positions `0..past + t`.
fn cache_append(
    slot: &mut Option<(Tensor, Tensor)>,
    k: &Tensor,
    v: &Tensor,
    past: usize,
    capacity: usize,
) -> Result<(Tensor, Tensor)> {
    let (b, h, t, hd) = k.dims4()?;
    let fits = matches!(slot, Some((kb, _)) if kb.dims4()? == (b, h, capacity, hd));
    if !fits {
        let z = Tensor::zeros((b, h, capacity, hd), k.dtype(), k.device())?;
        *slot = Some((z.clone(), z.zeros_like()?));
    }
    let (kb, vb) = slot.as_ref().expect("allocated above");
    kb.slice_set(&k.contiguous()?, 2, past)?;
    vb.slice_set(&v.contiguous()?, 2, past)?;
    Ok((kb.narrow(2, 0, past + t)?, vb.narrow(2, 0, past + t)?))
}

struct CausalSelfAttention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: usize,
}

impl CausalSelfAttention {
    /// `x`: `[B*T, C]` for T new positions that follow the `past` positions in `cache`, whose buffers hold
    /// `capacity` positions.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        (b, t): (usize, usize),
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        (past, capacity): (usize, usize),
        dropout: &mut Option<Dropout>,
        (cpu_kernels, grad): (bool, bool),
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c = x.dim(1)?;
        let (nh, hd) = (self.n_head, c / self.n_head);
        let qkv = self.c_attn.forward(x, cpu_kernels, grad)?;
        if cpu_kernels && past == 0 && dropout.is_none() {
            // Training, evaluation, and every (re-)prefill of generation: the fused kernel, then the cache (if
            // any) is filled from k and v as they lie in `qkv`.
            let y = qkv.apply_op1(CausalAttention { b, t, n_head: nh })?;
            if let Some(slot) = cache {
                let kv = qkv.reshape((b, t, 3, nh, hd))?;
                let k = kv.narrow(2, 1, 1)?.squeeze(2)?.transpose(1, 2)?;
                let v = kv.narrow(2, 2, 1)?.squeeze(2)?.transpose(1, 2)?;
                cache_append(slot, &k, &v, 0, capacity)?;
            }
            return self.c_proj.forward(&y, cpu_kernels, grad);
        }
        let qkv = qkv.reshape((b, t, 3, nh, hd))?.permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let mut k = qkv.get(1)?.contiguous()?;
        let mut v = qkv.get(2)?.contiguous()?;
        if let Some(slot) = cache {
            (k, v) = cache_append(slot, &k, &v, past, capacity)?;
        }
        let tk = past + t;
        let mut att = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        if t > 1 {
            let mask = mask.ok_or_else(|| {
                Error::Config("attention over several positions needs its mask".into())
            })?;
            debug_assert_eq!(mask.dims2()?, (t, tk));
            att = att.broadcast_add(mask)?;
        }
        let mut att = if grad {
            softmax_last_dim(&att)?
        } else {
            candle_nn::ops::softmax_last_dim(&att.contiguous()?)?
        };
        if let Some(d) = dropout {
            att = d.apply(&att)?;
        }
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b * t, c))?;
        let y = self.c_proj.forward(&y, cpu_kernels, grad)?;
        match dropout {
            Some(d) => d.apply(&y),
            None => Ok(y),
        }
    }
}

struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
}

impl Mlp {
    fn forward(
        &self,
        x: &Tensor,
        dropout: &mut Option<Dropout>,
        (cpu_kernels, grad): (bool, bool),
    ) -> Result<Tensor> {
        let h = self.c_fc.forward(x, cpu_kernels, grad)?;
        // candle's `gelu` is GPT-2's tanh approximation, with a backward pass.
        let h = if cpu_kernels {
            h.apply_op1(Gelu)?
        } else {
            h.gelu()?
        };
        let y = self.c_proj.forward(&h, cpu_kernels, grad)?;
        match dropout {
            Some(d) => d.apply(&y),
            None => Ok(y),
        }
    }
}

struct Block {
    ln_1: LayerNorm,
    attn: CausalSelfAttention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

/// The model. Parameters are candle `Var`s, listed in a fixed order with their GPT-2 names.
pub struct Gpt {
    config: GptConfig,
    wte: Var,
    wpe: Var,
    h: Vec<Block>,
    ln_f: LayerNorm,
    params: Vec<(String, Var)>,
    /// Use the CPU kernels of `cpu_ops` and `fused` where they apply (on by default).
    cpu_kernels: bool,
    chunking: Chunking,
    /// Causal masks by (past, new positions, dtype), on the model's device: built on the host and uploaded
    /// once, not at every forward of every layer.
    masks: Mutex<HashMap<(usize, usize, DType), Tensor>>,
}

/// Masks kept at most: training and evaluation use one, generation one per prompt length it re-fills.
const MAX_MASKS: usize = 64;

/// How the CPU kernels split their work. Results do not depend on it beyond rounding; the tests set small
/// values so several chunks (and a ragged last one) are finite-difference checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunking {
    /// Rows per chunk of the fused `lm_head` + cross-entropy; `None` sizes chunks to 192 MB of logits.
    pub lce_rows: Option<usize>,
    /// Rows per parallel task of LayerNorm (each task's partial sums of dw and db are added in order).
    pub layer_norm_rows: usize,
}

impl Default for Chunking {
    fn default() -> Self {
        Self {
            lce_rows: None,
            layer_norm_rows: crate::cpu_ops::ROWS_PER_TASK,
        }
    }
}

/// How a parameter is initialised (nanoGPT's `_init_weights` plus its scaled residual projections).
#[derive(Clone, Copy)]
pub(crate) enum Init {
    Normal(f64),
    Zeros,
    Ones,
}

/// Every parameter's name, shape and initialisation, in the order they are created, drawn and saved.
pub(crate) fn parameter_specs(cfg: &GptConfig) -> Vec<(String, Vec<usize>, Init)> {
    let c = cfg.n_embd;
    let std = 0.02;
    let resid_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
    let mut specs = vec![
        (
            "transformer.wte.weight".to_string(),
            vec![cfg.vocab_size, c],
            Init::Normal(std),
        ),
        (
            "transformer.wpe.weight".to_string(),
            vec![cfg.block_size, c],
            Init::Normal(std),
        ),
    ];
    let ln = |specs: &mut Vec<_>, p: String| {
        specs.push((format!("{p}.weight"), vec![c], Init::Ones));
        if cfg.bias {
            specs.push((format!("{p}.bias"), vec![c], Init::Zeros));
        }
    };
    let linear = |specs: &mut Vec<_>, p: String, (i, o): (usize, usize), std: f64| {
        specs.push((format!("{p}.weight"), vec![o, i], Init::Normal(std)));
        if cfg.bias {
            specs.push((format!("{p}.bias"), vec![o], Init::Zeros));
        }
    };
    for l in 0..cfg.n_layer {
        let p = format!("transformer.h.{l}");
        ln(&mut specs, format!("{p}.ln_1"));
        linear(&mut specs, format!("{p}.attn.c_attn"), (c, 3 * c), std);
        linear(&mut specs, format!("{p}.attn.c_proj"), (c, c), resid_std);
        ln(&mut specs, format!("{p}.ln_2"));
        linear(&mut specs, format!("{p}.mlp.c_fc"), (c, 4 * c), std);
        linear(&mut specs, format!("{p}.mlp.c_proj"), (4 * c, c), resid_std);
    }
    ln(&mut specs, "transformer.ln_f".to_string());
    specs
}

impl Gpt {
    /// A freshly initialised model. The weights are drawn on the host from `ChaCha8Rng(seed)` (candle's CPU
    /// `randn` cannot be seeded), so the same seed gives the same weights on every device.
    pub fn new(config: &GptConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for (name, shape, init) in parameter_specs(config) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = match init {
                Init::Zeros => vec![0.0; n],
                Init::Ones => vec![1.0; n],
                Init::Normal(std) => {
                    let dist = Normal::new(0.0, std as f32).expect("positive std");
                    (0..n).map(|_| dist.sample(&mut rng)).collect()
                }
            };
            let t = Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?;
            tensors.insert(name, t);
        }
        Self::from_tensors(config, tensors)
    }

    pub(crate) fn from_tensors(
        config: &GptConfig,
        mut tensors: HashMap<String, Tensor>,
    ) -> Result<Self> {
        config.validate()?;
        let mut params = Vec::new();
        for (name, shape, _) in parameter_specs(config) {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| Error::Config(format!("missing tensor {name}")))?;
            if t.dims() != shape.as_slice() {
                return Err(Error::Config(format!(
                    "tensor {name} has shape {:?}, the config needs {shape:?}",
                    t.dims()
                )));
            }
            params.push((name, Var::from_tensor(&t)?));
        }
        if let Some(extra) = tensors.keys().find(|k| k.as_str() != "lm_head.weight") {
            return Err(Error::Config(format!("unexpected tensor {extra}")));
        }
        let by_name: HashMap<&str, &Var> = params.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let get = |n: &str| by_name[n].clone();
        let opt = |n: &str| by_name.get(n).map(|v| (*v).clone());
        let linear = |p: &str| Linear {
            weight: get(&format!("{p}.weight")),
            bias: opt(&format!("{p}.bias")),
        };
        let ln = |p: &str| LayerNorm {
            weight: get(&format!("{p}.weight")),
            bias: opt(&format!("{p}.bias")),
        };
        let h = (0..config.n_layer)
            .map(|l| {
                let p = format!("transformer.h.{l}");
                Block {
                    ln_1: ln(&format!("{p}.ln_1")),
                    attn: CausalSelfAttention {
                        c_attn: linear(&format!("{p}.attn.c_attn")),
                        c_proj: linear(&format!("{p}.attn.c_proj")),
                        n_head: config.n_head,
                    },
                    ln_2: ln(&format!("{p}.ln_2")),
                    mlp: Mlp {
                        c_fc: linear(&format!("{p}.mlp.c_fc")),
                        c_proj: linear(&format!("{p}.mlp.c_proj")),
                    },
                }
            })
            .collect();
        Ok(Self {
            config: config.clone(),
            wte: get("transformer.wte.weight"),
            wpe: get("transformer.wpe.weight"),
            h,
            ln_f: ln("transformer.ln_f"),
            params,
            cpu_kernels: true,
            chunking: Chunking::default(),
            masks: Mutex::default(),
        })
    }

    /// Turns the CPU kernels off (plain candle ops everywhere, as on other devices) or back on; the two paths
    /// must agree, which the tests check.
    pub fn set_cpu_kernels(&mut self, on: bool) {
        self.cpu_kernels = on;
    }

    /// Sets the dropout of training (a run's choice, not a checkpoint's).
    pub fn set_dropout(&mut self, p: f64) {
        self.config.dropout = p;
    }

    /// Sets how the CPU kernels split their work.
    pub fn set_chunking(&mut self, chunking: Chunking) {
        self.chunking = chunking;
    }

    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        self.wte.device()
    }

    pub fn dtype(&self) -> DType {
        self.wte.dtype()
    }

    /// Parameters with their GPT-2 names, in a fixed order (the optimizer relies on it).
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Number of parameters, the tied `lm_head` counted once.
    pub fn num_params(&self, include_position_embeddings: bool) -> usize {
        let all: usize = self.params.iter().map(|(_, v)| v.elem_count()).sum();
        if include_position_embeddings {
            all
        } else {
            all - self.wpe.elem_count()
        }
    }

    /// The additive causal mask `[t, past + t]` in the model's dtype on its device: query i sits at position
    /// past + i and sees keys 0..=past + i.
    fn causal_mask(&self, past: usize, t: usize) -> Result<Tensor> {
        let key = (past, t, self.dtype());
        let mut masks = self.masks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = masks.get(&key) {
            return Ok(m.clone());
        }
        let tk = past + t;
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..tk).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, tk), self.device())?.to_dtype(self.dtype())?;
        if masks.len() >= MAX_MASKS {
            masks.clear();
        }
        masks.insert(key, mask.clone());
        Ok(mask)
    }

    /// Hidden states after `ln_f`, `[B*T, C]`, for tokens `idx` `[B, T]` that follow `cache`'s positions.
    fn hidden(
        &self,
        idx: &Tensor,
        mut cache: Option<&mut KvCache>,
        mut dropout: Option<Dropout>,
        grad: bool,
    ) -> Result<Tensor> {
        let (b, t) = idx.dims2()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        let capacity = self.config.block_size;
        if past + t > capacity {
            return Err(Error::Config(format!(
                "cannot forward {} positions: block_size is {capacity}",
                past + t
            )));
        }
        let tok = param(&self.wte, grad)
            .embedding(&idx.flatten_all()?)?
            .reshape((b, t, self.config.n_embd))?;
        let pos = param(&self.wpe, grad).narrow(0, past, t)?;
        let mut x = tok
            .broadcast_add(&pos)?
            .reshape((b * t, self.config.n_embd))?;
        if let Some(d) = &mut dropout {
            x = d.apply(&x)?;
        }
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize_with(self.h.len(), || None);
        }
        let k = self.uses_fused_cpu_kernel();
        let ln = k.then_some(self.chunking.layer_norm_rows);
        // The fused CPU kernel masks by itself; every other path over several positions adds the mask.
        let fused = k && past == 0 && dropout.is_none();
        let mask = if t > 1 && !fused {
            Some(self.causal_mask(past, t)?)
        } else {
            None
        };
        for (l, block) in self.h.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            let a = block.attn.forward(
                &block.ln_1.forward(&x, ln, grad)?,
                (b, t),
                slot,
                (past, capacity),
                &mut dropout,
                (k, grad),
                mask.as_ref(),
            )?;
            x = (x + a)?;
            let m =
                block
                    .mlp
                    .forward(&block.ln_2.forward(&x, ln, grad)?, &mut dropout, (k, grad))?;
            x = (x + m)?;
        }
        if let Some(c) = cache {
            c.len = past + t;
        }
        self.ln_f.forward(&x, ln, grad)
    }

    /// Logits `[B, T, vocab]` of a full forward pass (no cache), as nanoGPT's `forward` returns with targets.
    /// Inference only: no graph is built.
    pub fn forward(&self, idx: &Tensor) -> Result<Tensor> {
        let (b, t) = idx.dims2()?;
        let h = self.hidden(idx, None, None, false)?;
        Ok(h.matmul(&param(&self.wte, false).t()?)?
            .reshape((b, t, self.config.vocab_size))?)
    }

    /// Logits `[B, vocab]` of the last position of `idx`, which follows the positions in `cache` (and is
    /// appended to it). Inference only: no graph is built.
    pub fn forward_last(&self, idx: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = idx.dims2()?;
        let h = self.hidden(idx, Some(cache), None, false)?;
        let last = h
            .reshape((b, t, self.config.n_embd))?
            .narrow(1, t - 1, 1)?
            .squeeze(1)?;
        Ok(last.matmul(&param(&self.wte, false).t()?)?)
    }

    /// Mean next-token cross-entropy of `idx` `[B, T]` against `targets` `[B, T]`, differentiable with respect
    /// to every parameter. `dropout_rng` turns dropout on (training) when the config has any.
    pub fn loss(
        &self,
        idx: &Tensor,
        targets: &Tensor,
        dropout_rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor> {
        let dropout = match dropout_rng {
            Some(rng) if self.config.dropout > 0.0 => Some(Dropout {
                p: self.config.dropout,
                rng,
            }),
            _ => None,
        };
        let h = self.hidden(idx, None, dropout, true)?;
        let targets = targets.flatten_all()?;
        if self.uses_fused_cpu_kernel() {
            let op = LinearCrossEntropy::new(targets.to_vec1::<u32>()?, self.chunking.lce_rows);
            Ok(h.apply_op2(self.wte.as_tensor(), op)?)
        } else {
            let logits = h.matmul(&self.wte.t()?)?;
            cross_entropy_mean(&logits, &targets)
        }
    }

    /// Sum of next-token NLL over every position of `idx` `[B, T]`, with no gradient and no dropout.
    pub fn nll_sum(&self, idx: &Tensor, targets: &Tensor) -> Result<f64> {
        let h = self.hidden(idx, None, None, false)?;
        let targets = targets.flatten_all()?;
        let w = param(&self.wte, false);
        if self.uses_fused_cpu_kernel() {
            return Ok(linear_cross_entropy_sum(
                &h,
                &w,
                &targets.to_vec1::<u32>()?,
                self.chunking.lce_rows,
            )?);
        }
        let logits = h.matmul(&w.t()?)?;
        let n = logits.dim(0)?;
        Ok((cross_entropy_mean(&logits, &targets)? * n as f64)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?)
    }

    fn uses_fused_cpu_kernel(&self) -> bool {
        self.cpu_kernels
            && self.device().is_cpu()
            && matches!(self.dtype(), DType::F32 | DType::F64)
    }

    /// The parameters under their GPT-2 names and the config as JSON metadata, as safetensors bytes.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let config = serde_json::to_string(&self.config).expect("config serialises");
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "collapse-lab-gpt".to_string());
        meta.insert("config".to_string(), config);
        let tensors: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        serialize_safetensors(&tensors, meta)
    }

    /// Writes [`Gpt::to_safetensors`] atomically: a crash leaves either the previous file or the new one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_safetensors()?;
        atomic_write(path, &bytes).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads a checkpoint written by [`Gpt::save`]; the config comes from the file.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_safetensors(&bytes, &path.display().to_string(), dtype, device)
    }

    /// Parses the bytes of [`Gpt::to_safetensors`]; `name` is the file's name for errors.
    pub fn from_safetensors(
        bytes: &[u8],
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (tensors, meta) = deserialize_safetensors(bytes, name, device)?;
        let ck = |msg: String| Error::Checkpoint {
            path: name.to_string(),
            msg,
        };
        let config = meta.get("config").ok_or_else(|| {
            ck("no model config in its metadata: not a collapse-lab checkpoint".into())
        })?;
        let config: GptConfig =
            serde_json::from_str(config).map_err(|e| ck(format!("bad config metadata: {e}")))?;
        let tensors = tensors
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_dtype(dtype)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        Self::from_tensors(&config, tensors).map_err(|e| ck(e.to_string()))
    }
}

/// Mean cross-entropy of `logits` `[N, V]` against `targets` `[N]` with a log-sum-exp from differentiable ops.
fn cross_entropy_mean(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(1)?.detach();
    let z = logits.broadcast_sub(&max)?;
    let lse = z.exp()?.sum_keepdim(1)?.log()?;
    let target_logit = z.gather(&targets.unsqueeze(1)?, 1)?;
    Ok((lse - target_logit)?.mean_all()?)
}

/// Named tensors and string metadata as safetensors bytes. Everything but f64 is stored as f32: the
/// optimizer's master weights and state are f32.
pub fn serialize_safetensors(
    tensors: &[(String, Tensor)],
    meta: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let data: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = tensors
        .iter()
        .map(|(n, t)| {
            let t = t.to_device(&Device::Cpu)?.contiguous()?;
            let (dtype, bytes): (_, Vec<u8>) = match t.dtype() {
                DType::F64 => {
                    let v = t.flatten_all()?.to_vec1::<f64>()?;
                    (
                        safetensors::Dtype::F64,
                        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    )
                }
                _ => {
                    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    (
                        safetensors::Dtype::F32,
                        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    )
                }
            };
            Ok((n.clone(), bytes, t.dims().to_vec(), dtype))
        })
        .collect::<Result<_>>()?;
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, b, s, d)| {
            let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("sizes match");
            (n.clone(), view)
        })
        .collect();
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Checkpoint {
        path: "(in memory)".into(),
        msg: e.to_string(),
    })?;
    Ok(sorted_header(bytes))
}

/// safetensors writes the metadata map in `HashMap` order, which differs from one map to the next, so the
/// same weights gave different bytes (and SHA-256s) from run to run. The header is rewritten with its keys
/// sorted: reordering keys never lengthens compact JSON, and the space padding keeps every tensor offset.
fn sorted_header(mut bytes: Vec<u8>) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let sorted = (|| -> serde_json::Result<Vec<u8>> {
        let mut top: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..8 + n])?;
        if let Some(m) = top.get_mut("__metadata__") {
            let meta: std::collections::BTreeMap<String, String> =
                serde_json::from_value(m.take())?;
            *m = serde_json::to_value(meta)?;
        }
        serde_json::to_vec(&top)
    })();
    if let Ok(mut h) = sorted {
        if h.len() <= n {
            h.resize(n, b' ');
            bytes[8..8 + n].copy_from_slice(&h);
        }
    }
    bytes
}

/// Writes [`serialize_safetensors`] to `path` through a temp file, fsync and rename.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    meta: HashMap<String, String>,
) -> Result<()> {
    let bytes = serialize_safetensors(tensors, meta)?;
    atomic_write(path, &bytes).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads every tensor of a safetensors file onto `device`, with its metadata.
pub fn load_safetensors(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    deserialize_safetensors(&bytes, &path.display().to_string(), device)
}

/// Parses safetensors bytes (f32 and f64 tensors) onto `device`; `name` is the file's name for errors.
pub fn deserialize_safetensors(
    bytes: &[u8],
    name: &str,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let ck = |msg: String| Error::Checkpoint {
        path: name.to_string(),
        msg,
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| ck(format!("truncated or corrupt safetensors file ({e})")))?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| ck(format!("truncated or corrupt safetensors file ({e})")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let mut out = HashMap::new();
    for (tname, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let t = match view.dtype() {
            safetensors::Dtype::F32 => {
                let v: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                Tensor::from_vec(v, shape, device)?
            }
            safetensors::Dtype::F64 => {
                let v: Vec<f64> = view
                    .data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                Tensor::from_vec(v, shape, device)?
            }
            d => return Err(ck(format!("tensor {tname} has unsupported dtype {d:?}"))),
        };
        if t.elem_count() == 0 && !view.shape().contains(&0) {
            return Err(ck(format!("tensor {tname} is empty")));
        }
        out.insert(tname, t);
    }
    Ok((out, meta))
}

/// Writes `bytes` to `path` so that a crash at any moment leaves the old file or the new one (atomic-write-file:
/// a temp file in the same directory, fsync, rename, fsync of the directory). Its temporary name is random,
/// not the PID's (on a file system several nodes share, two processes may have one PID), and a new file gets
/// 0666 less the umask, not tempfile's 0600, so a run directory shared by a cluster group stays readable.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = atomic_write_file::AtomicWriteFile::open(path)?;
    file.write_all(bytes)?;
    file.commit()
}
