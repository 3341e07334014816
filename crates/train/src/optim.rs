//! AdamW with nanoGPT's parameter groups, global-norm gradient clipping, a learning-rate schedule, and state
//! that can be saved and loaded: the pieces candle's `AdamW` lacks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Storage, Tensor, Var};
use rayon::prelude::*;

use crate::{AdamWConfig, Error, Result};

/// First and second moments: plain host vectors on the CPU (updated in place with the parameter in one
/// fused pass), device tensors elsewhere.
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

struct ParamState {
    name: String,
    decay: bool,
    moments: Moments,
}

pub struct AdamW {
    cfg: AdamWConfig,
    step: u64,
    states: Vec<ParamState>,
}

fn host_f32(params: &[(String, Var)]) -> bool {
    params
        .iter()
        .all(|(_, v)| v.device().is_cpu() && v.dtype() == DType::F32)
}

impl AdamW {
    pub fn new(params: &[(String, Var)], cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        let host = host_f32(params);
        let states = params
            .iter()
            .map(|(name, v)| {
                let moments = if host {
                    Moments::Host {
                        m: vec![0.0; v.elem_count()],
                        v: vec![0.0; v.elem_count()],
                    }
                } else {
                    Moments::Device {
                        m: v.zeros_like()?,
                        v: v.zeros_like()?,
                    }
                };
                Ok(ParamState {
                    name: name.clone(),
                    decay: v.rank() >= 2,
                    moments,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            cfg,
            step: 0,
            states,
        })
    }

    /// Number of updates applied so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Clips the gradients to global norm `max_norm` (if any) and applies one AdamW update at `lr`. Returns
    /// the global gradient norm before clipping, as a scalar tensor on the parameters' device (reading it is
    /// the only host synchronisation, left to the caller).
    pub fn step(
        &mut self,
        params: &[(String, Var)],
        grads: &GradStore,
        lr: f64,
        max_norm: Option<f64>,
    ) -> Result<Tensor> {
        if params.len() != self.states.len() {
            return Err(Error::Config(format!(
                "optimizer has {} states for {} parameters",
                self.states.len(),
                params.len()
            )));
        }
        let grads: Vec<Tensor> = params
            .iter()
            .map(|(n, v)| {
                grads
                    .get(v)
                    .cloned()
                    .ok_or_else(|| Error::Config(format!("no gradient for {n}")))
            })
            .collect::<Result<_>>()?;
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.cfg.beta1.powi(t);
        let bc2 = 1.0 - self.cfg.beta2.powi(t);
        let device = params[0].1.device().clone();
        if matches!(self.states[0].moments, Moments::Host { .. }) {
            let sumsq: f64 = grads.iter().map(host_sumsq).sum::<Result<f64>>()?;
            let norm = sumsq.sqrt();
            let clip = max_norm.map_or(1.0, |mx| (mx / (norm + 1e-6)).min(1.0));
            for (((_, p), g), st) in params.iter().zip(&grads).zip(&mut self.states) {
                let Moments::Host { m, v } = &mut st.moments else {
                    unreachable!("all states are host")
                };
                let op = HostAdamStep {
                    m: Mutex::new(m),
                    v: Mutex::new(v),
                    lr: lr as f32,
                    decay: if st.decay {
                        (lr * self.cfg.weight_decay) as f32
                    } else {
                        0.0
                    },
                    b1: self.cfg.beta1 as f32,
                    b2: self.cfg.beta2 as f32,
                    eps: self.cfg.eps as f32,
                    bc1: bc1 as f32,
                    bc2_sqrt: bc2.sqrt() as f32,
                    clip: clip as f32,
                };
                p.as_tensor().inplace_op2(g, &op)?;
            }
            return Ok(Tensor::new(norm as f32, &device)?);
        }
        let mut sumsq = Tensor::zeros((), DType::F32, &device)?;
        for g in &grads {
            sumsq = (sumsq + g.to_dtype(DType::F32)?.sqr()?.sum_all()?)?;
        }
        let norm = sumsq.sqrt()?;
        let clip = match max_norm {
            Some(mx) => ((norm.clone() + 1e-6)?.recip()? * mx)?.clamp(0f32, 1f32)?,
            None => Tensor::ones((), DType::F32, &device)?,
        };
        let (b1, b2, eps) = (self.cfg.beta1, self.cfg.beta2, self.cfg.eps);
        for (((_, p), g), st) in params.iter().zip(&grads).zip(&mut self.states) {
            let Moments::Device { m, v } = &mut st.moments else {
                unreachable!("all states are device")
            };
            let g = g.broadcast_mul(&clip.to_dtype(g.dtype())?)?;
            *m = ((&*m * b1)? + (&g * (1.0 - b1))?)?;
            *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let decayed = if st.decay {
                (p.as_tensor() * (1.0 - lr * self.cfg.weight_decay))?
            } else {
                p.as_tensor().clone()
            };
            let denom = ((v.sqrt()? / bc2.sqrt())? + eps)?;
            let update = ((&*m / denom)? * (lr / bc1))?;
            p.set(&(decayed - update)?)?;
        }
        Ok(norm)
    }

    /// Saves [`AdamW::to_safetensors`] atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_safetensors()?;
        gpt::atomic_write(path, &bytes).map_err(|e| Error::State {
            path: path.display().to_string(),
            msg: e.to_string(),
        })
    }

    /// The moments under `<param>.exp_avg` / `<param>.exp_avg_sq` and the step count, as safetensors bytes.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut tensors = Vec::new();
        for st in &self.states {
            let (m, v) = match &st.moments {
                Moments::Host { m, v } => (
                    Tensor::new(m.as_slice(), &Device::Cpu)?,
                    Tensor::new(v.as_slice(), &Device::Cpu)?,
                ),
                Moments::Device { m, v } => (m.flatten_all()?, v.flatten_all()?),
            };
            tensors.push((format!("{}.exp_avg", st.name), m));
            tensors.push((format!("{}.exp_avg_sq", st.name), v));
        }
        let mut meta = HashMap::new();
        meta.insert("format".into(), "collapse-lab-adamw".into());
        meta.insert("step".into(), self.step.to_string());
        meta.insert(
            "config".into(),
            serde_json::to_string(&self.cfg).expect("serialises"),
        );
        Ok(gpt::serialize_safetensors(&tensors, meta)?)
    }

    /// Restores state saved by [`AdamW::save`] for the same parameters.
    pub fn load(path: &Path, params: &[(String, Var)]) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::State {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        Self::from_safetensors(&bytes, &path.display().to_string(), params)
    }

    /// Parses the bytes of [`AdamW::to_safetensors`]; `name` is the file's name for errors.
    pub fn from_safetensors(bytes: &[u8], name: &str, params: &[(String, Var)]) -> Result<Self> {
        let err = |msg: String| Error::State {
            path: name.to_string(),
            msg,
        };
        let device = params
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(Device::Cpu);
        let (mut tensors, meta) = gpt::deserialize_safetensors(bytes, name, &device)?;
        let step: u64 = meta
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err("no step count".into()))?;
        let cfg: AdamWConfig = meta
            .get("config")
            .and_then(|c| serde_json::from_str(c).ok())
            .ok_or_else(|| err("no optimizer config".into()))?;
        let mut opt = Self::new(params, cfg)?;
        opt.step = step;
        for ((name, var), st) in params.iter().zip(&mut opt.states) {
            let mut take = |suffix: &str| -> Result<Tensor> {
                let key = format!("{name}.{suffix}");
                let t = tensors
                    .remove(&key)
                    .ok_or_else(|| err(format!("missing {key}")))?;
                if t.elem_count() != var.elem_count() {
                    return Err(err(format!(
                        "{key} has {} values, the parameter {}",
                        t.elem_count(),
                        var.elem_count()
                    )));
                }
                Ok(t)
            };
            let (m, v) = (take("exp_avg")?, take("exp_avg_sq")?);
            st.moments = match st.moments {
                Moments::Host { .. } => Moments::Host {
                    m: m.to_dtype(DType::F32)?.to_vec1()?,
                    v: v.to_dtype(DType::F32)?.to_vec1()?,
                },
                Moments::Device { .. } => Moments::Device {
                    m: m.to_dtype(var.dtype())?.reshape(var.shape())?,
                    v: v.to_dtype(var.dtype())?.reshape(var.shape())?,
                },
            };
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(err(format!(
                "unexpected tensor {extra}: state of another model"
            )));
        }
        Ok(opt)
    }
}

fn cpu_f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("expected a contiguous f32 tensor"),
    }
}

fn host_sumsq(g: &Tensor) -> Result<f64> {
    let (s, l) = g.storage_and_layout();
    let Storage::Cpu(s) = &*s else {
        return Err(Error::Config("gradient is not on the CPU".into()));
    };
    let g = cpu_f32_slice(s, l)?;
    Ok(g.par_chunks(1 << 14)
        .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .sum())
}

/// One AdamW update of a parameter in place, its moments alongside, in a single parallel pass.
struct HostAdamStep<'a> {
    m: Mutex<&'a mut Vec<f32>>,
    v: Mutex<&'a mut Vec<f32>>,
    lr: f32,
    decay: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    bc1: f32,
    bc2_sqrt: f32,
    clip: f32,
}

impl InplaceOp2 for HostAdamStep<'_> {
    fn name(&self) -> &'static str {
        "adamw-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let g = cpu_f32_slice(s2, l2)?;
        let (CpuStorage::F32(p), Some((a, b))) = (s1, l1.contiguous_offsets()) else {
            candle_core::bail!("adamw-step: parameter must be contiguous f32");
        };
        let p = &mut p[a..b];
        let mut m = self.m.lock().expect("poisoned");
        let mut v = self.v.lock().expect("poisoned");
        let step_size = self.lr / self.bc1;
        const CHUNK: usize = 1 << 14;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                for i in 0..p.len() {
                    let g = g[i] * self.clip;
                    m[i] = self.b1 * m[i] + (1.0 - self.b1) * g;
                    v[i] = self.b2 * v[i] + (1.0 - self.b2) * g * g;
                    let denom = v[i].sqrt() / self.bc2_sqrt + self.eps;
                    p[i] = p[i] * (1.0 - self.decay) - step_size * m[i] / denom;
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LrSchedule;

    #[test]
    fn cosine_schedule_matches_nanogpt() {
        let s = LrSchedule::Cosine {
            lr: 1e-3,
            warmup_steps: 10,
            decay_steps: 110,
            min_lr: 1e-4,
        };
        assert!((s.at(0) - 1e-3 / 11.0).abs() < 1e-12);
        assert!((s.at(10) - 1e-3).abs() < 1e-12);
        assert!((s.at(60) - 5.5e-4).abs() < 1e-12);
        assert_eq!(s.at(111), 1e-4);
        assert!(LrSchedule::Cosine {
            lr: 1e-3,
            warmup_steps: 10,
            decay_steps: 5,
            min_lr: 0.0
        }
        .validate()
        .is_err());
        assert!(LrSchedule::Constant { lr: 0.0 }.validate().is_err());
    }

    /// The fused host update and the tensor-op update (used on GPUs, and here for f64) agree with a scalar
    /// reference of torch's AdamW, decay groups and clipping included.
    #[test]
    fn host_and_tensor_paths_match_a_scalar_reference() {
        let cfg = AdamWConfig::default();
        let w0 = [0.5f32, -1.0, 2.0, 0.25];
        let b0 = [0.1f32, -0.2];
        let gw = [0.3f32, -0.4, 1.2, 0.0];
        let gb = [2.0f32, 1.0];
        let norm = (gw.iter().chain(&gb).map(|g| (g * g) as f64).sum::<f64>()).sqrt();
        let clip = (1.0 / (norm + 1e-6)).min(1.0);
        let reference = |p: &[f32], g: &[f32], decay: bool| -> Vec<f64> {
            let (mut p, mut m, mut v): (Vec<f64>, Vec<f64>, Vec<f64>) = (
                p.iter().map(|&x| x as f64).collect(),
                vec![0.0; p.len()],
                vec![0.0; p.len()],
            );
            for t in 1..=2 {
                for i in 0..p.len() {
                    let g = g[i] as f64 * clip;
                    if decay {
                        p[i] *= 1.0 - 1e-2 * cfg.weight_decay;
                    }
                    m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g;
                    v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g * g;
                    let (bc1, bc2) = (1.0 - cfg.beta1.powi(t), 1.0 - cfg.beta2.powi(t));
                    p[i] -= 1e-2 / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + cfg.eps);
                }
            }
            p
        };
        for dtype in [DType::F32, DType::F64] {
            let w = Var::from_tensor(
                &Tensor::new(&w0, &Device::Cpu)
                    .unwrap()
                    .reshape((2, 2))
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap();
            let b = Var::from_tensor(
                &Tensor::new(&b0, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap();
            let params = vec![("w".to_string(), w.clone()), ("b".to_string(), b.clone())];
            let mut opt = AdamW::new(&params, cfg.clone()).unwrap();
            for _ in 0..2 {
                // A loss whose gradient is exactly gw and gb.
                let gwt = Tensor::new(&gw, &Device::Cpu)
                    .unwrap()
                    .reshape((2, 2))
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let gbt = Tensor::new(&gb, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let loss = ((w.as_tensor() * gwt).unwrap().sum_all().unwrap()
                    + (b.as_tensor() * gbt).unwrap().sum_all().unwrap())
                .unwrap();
                let grads = loss.backward().unwrap();
                let n = opt.step(&params, &grads, 1e-2, Some(1.0)).unwrap();
                assert!(
                    (n.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap() - norm).abs()
                        < 1e-5
                );
            }
            let got_w = w
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let got_b = b.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            for (a, e) in got_w
                .iter()
                .zip(reference(&w0, &gw, true))
                .chain(got_b.iter().zip(reference(&b0, &gb, false)))
            {
                assert!((a - e).abs() < 1e-6, "{dtype:?}: {a} vs {e}");
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("opt.safetensors");
            opt.save(&path).unwrap();
            let back = AdamW::load(&path, &params).unwrap();
            assert_eq!(back.steps_taken(), 2);
            assert!(AdamW::load(&path, &params[..1]).is_err());
        }
    }
}
