//! CPU kernels, with their backward passes, for the transformer body: GELU, LayerNorm and causal
//! self-attention.
//!
//! Written out from candle's elementary ops, each of these is five to fifteen passes over memory forward and
//! as many backward, every one allocating a fresh buffer; GELU's backward alone evaluates `tanh` and two
//! `powf`s per element with libm. Here each is one parallel pass (attention: one task per batch row and head,
//! reading q, k and v in place from the `c_attn` output) and the backward pass is computed directly from the
//! saved inputs. The model uses them on the CPU for f32 and f64; other devices, and tests that compare the two,
//! use the plain ops.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor,
};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::fused::{contiguous_slice, dtype_of, gemm_into_with, Real};

/// Rows per parallel task in the row-wise kernels (LayerNorm's default: [`crate::Chunking`]).
pub(crate) const ROWS_PER_TASK: usize = 64;

/// Reads a CPU tensor as a contiguous slice and runs `f` on it.
fn with_slice<T: Real + candle_core::WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    let Storage::Cpu(s) = &*s else {
        candle_core::bail!("expected a CPU tensor")
    };
    f(contiguous_slice::<T>(s, l)?)
}

// ---------------------------------------------------------------------------------------------- GELU

pub(crate) struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: Real + candle_core::WithDType>(
            s: &CpuStorage,
            l: &Layout,
        ) -> candle_core::Result<CpuStorage> {
            let x = contiguous_slice::<T>(s, l)?;
            let mut y = vec![T::zero(); x.len()];
            y.par_chunks_mut(1 << 14)
                .zip(x.par_chunks(1 << 14))
                .for_each(|(y, x)| T::gelu_slice(x, y));
            Ok(T::wrap(y))
        }
        let out = match dtype_of(s) {
            DType::F32 => run::<f32>(s, l)?,
            DType::F64 => run::<f64>(s, l)?,
            d => candle_core::bail!("gelu: unsupported dtype {d:?}"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        fn run<T: Real + candle_core::WithDType>(
            x: &Tensor,
            dy: &Tensor,
        ) -> candle_core::Result<Tensor> {
            let dx = with_slice::<T, _>(x, |x| {
                with_slice::<T, _>(dy, |dy| {
                    let mut dx = vec![T::zero(); x.len()];
                    dx.par_chunks_mut(1 << 14)
                        .zip(x.par_chunks(1 << 14).zip(dy.par_chunks(1 << 14)))
                        .for_each(|(dx, (x, dy))| T::gelu_grad_slice(x, dy, dx));
                    Ok(dx)
                })
            })?;
            Tensor::from_vec(dx, x.shape(), &Device::Cpu)
        }
        Ok(Some(match x.dtype() {
            DType::F32 => run::<f32>(x, dy)?,
            _ => run::<f64>(x, dy)?,
        }))
    }
}

// ------------------------------------------------------------------------------------------ LayerNorm

/// LayerNorm over the last dimension of `x` `[N, C]` with weight and bias `[C]`.
pub(crate) struct LayerNormOp {
    pub eps: f64,
    /// Rows per parallel task; the backward pass sums dw and db per task, then across tasks in order.
    pub rows_per_task: usize,
}

fn row_stats<T: Real>(row: &[T], eps: f64) -> (T, T) {
    let c = row.len() as f64;
    let mean = row.iter().map(|x| x.as_f64()).sum::<f64>() / c;
    let var = row.iter().map(|x| (x.as_f64() - mean).powi(2)).sum::<f64>() / c;
    (T::cast(mean), T::cast(1.0 / (var + eps).sqrt()))
}

impl LayerNormOp {
    fn fwd<T: Real + candle_core::WithDType>(
        &self,
        (x, lx): (&CpuStorage, &Layout),
        (w, lw): (&CpuStorage, &Layout),
        (b, lb): (&CpuStorage, &Layout),
    ) -> candle_core::Result<CpuStorage> {
        let (x, w, b) = (
            contiguous_slice::<T>(x, lx)?,
            contiguous_slice::<T>(w, lw)?,
            contiguous_slice::<T>(b, lb)?,
        );
        let c = w.len();
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(c * self.rows_per_task)
            .zip(x.par_chunks(c * self.rows_per_task))
            .for_each(|(y, x)| {
                for (yr, xr) in y.chunks_mut(c).zip(x.chunks(c)) {
                    let (mean, rstd) = row_stats(xr, self.eps);
                    for j in 0..c {
                        yr[j] = (xr[j] - mean) * rstd * w[j] + b[j];
                    }
                }
            });
        Ok(T::wrap(y))
    }

    fn bwd_t<T: Real + candle_core::WithDType>(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let c = w.elem_count();
        let (dx, dw, db) = with_slice::<T, _>(x, |x| {
            with_slice::<T, _>(w, |w| {
                with_slice::<T, _>(dy, |dy| {
                    let mut dx = vec![T::zero(); x.len()];
                    // Per-task partial sums of dw and db, added in task order: deterministic.
                    let partial: Vec<(Vec<f64>, Vec<f64>)> = dx
                        .par_chunks_mut(c * self.rows_per_task)
                        .zip(
                            x.par_chunks(c * self.rows_per_task)
                                .zip(dy.par_chunks(c * self.rows_per_task)),
                        )
                        .map(|(dx, (x, dy))| {
                            let (mut dw, mut db) = (vec![0f64; c], vec![0f64; c]);
                            for ((dxr, xr), dyr) in
                                dx.chunks_mut(c).zip(x.chunks(c)).zip(dy.chunks(c))
                            {
                                let (mean, rstd) = row_stats(xr, self.eps);
                                let (mut m1, mut m2) = (0f64, 0f64);
                                for j in 0..c {
                                    let xhat = ((xr[j] - mean) * rstd).as_f64();
                                    let g = (dyr[j] * w[j]).as_f64();
                                    m1 += g;
                                    m2 += g * xhat;
                                    dw[j] += dyr[j].as_f64() * xhat;
                                    db[j] += dyr[j].as_f64();
                                }
                                let (m1, m2) = (m1 / c as f64, m2 / c as f64);
                                for j in 0..c {
                                    let xhat = ((xr[j] - mean) * rstd).as_f64();
                                    let g = (dyr[j] * w[j]).as_f64();
                                    dxr[j] = T::cast(rstd.as_f64() * (g - m1 - xhat * m2));
                                }
                            }
                            (dw, db)
                        })
                        .collect();
                    let (mut dw, mut db) = (vec![0f64; c], vec![0f64; c]);
                    for (pw, pb) in partial {
                        for j in 0..c {
                            dw[j] += pw[j];
                            db[j] += pb[j];
                        }
                    }
                    let cast = |v: Vec<f64>| v.into_iter().map(T::cast).collect::<Vec<T>>();
                    Ok((dx, cast(dw), cast(db)))
                })
            })
        })?;
        Ok((
            Tensor::from_vec(dx, x.shape(), &Device::Cpu)?,
            Tensor::from_vec(dw, c, &Device::Cpu)?,
            Tensor::from_vec(db, c, &Device::Cpu)?,
        ))
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match dtype_of(s1) {
            DType::F32 => self.fwd::<f32>((s1, l1), (s2, l2), (s3, l3))?,
            DType::F64 => self.fwd::<f64>((s1, l1), (s2, l2), (s3, l3))?,
            d => candle_core::bail!("layer-norm: unsupported dtype {d:?}"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = match x.dtype() {
            DType::F32 => self.bwd_t::<f32>(x, w, dy)?,
            _ => self.bwd_t::<f64>(x, w, dy)?,
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

// ---------------------------------------------------------------------------------- causal attention

/// Causal self-attention from the `c_attn` output `qkv` `[B*T, 3C]` (q, k, v side by side, heads contiguous
/// within each) to `y` `[B*T, C]` with heads side by side, ready for `c_proj`. The backward pass recomputes
/// the attention probabilities (a tenth of the layer's FLOPs) rather than keeping them.
pub(crate) struct CausalAttention {
    pub b: usize,
    pub t: usize,
    pub n_head: usize,
}

/// A pointer that parallel tasks may share because each writes a disjoint region.
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);
// SAFETY: tasks write disjoint (batch row, head) blocks; see the callers.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// A method rather than `.0`, so closures capture the `Sync` wrapper and not the raw pointer.
    fn ptr(self) -> *mut T {
        self.0
    }
}

impl CausalAttention {
    /// Scaled, causally masked softmax of `q k^T` for one (batch row, head) into `p` (`T x T`).
    ///
    /// # Safety
    /// `qkv` must hold the batch's `[B*T, 3C]` values and `bh` be in range.
    unsafe fn probs<T: Real>(&self, qkv: &[T], bh: usize, p: &mut [T]) {
        let (t, nh) = (self.t, self.n_head);
        let c3 = qkv.len() / (self.b * t);
        let c = c3 / 3;
        let hd = c / nh;
        let (b, h) = (bh / nh, bh % nh);
        let q = qkv.as_ptr().add(b * t * c3 + h * hd);
        let k = q.add(c);
        gemm_into_with(
            (t, t, hd),
            p.as_mut_ptr(),
            t,
            false,
            q,
            (c3, 1),
            k,
            (1, c3),
            T::one(),
            Parallelism::None,
        );
        let scale = T::cast(1.0 / (hd as f64).sqrt());
        for i in 0..t {
            let row = &mut p[i * t..(i + 1) * t];
            row[..=i].iter_mut().for_each(|x| *x = *x * scale);
            let max = T::max_of(&row[..=i]);
            let sum = T::exp_shift_sum(&mut row[..=i], max);
            T::scale(&mut row[..=i], T::cast(1.0 / sum));
            row[i + 1..].iter_mut().for_each(|x| *x = T::zero());
        }
    }

    fn fwd<T: Real + candle_core::WithDType>(
        &self,
        s: &CpuStorage,
        l: &Layout,
    ) -> candle_core::Result<CpuStorage> {
        let qkv = contiguous_slice::<T>(s, l)?;
        let (t, nh) = (self.t, self.n_head);
        let c3 = qkv.len() / (self.b * t);
        let (c, hd) = (c3 / 3, c3 / 3 / nh);
        let mut y = vec![T::zero(); self.b * t * c];
        let yp = SharedMut(y.as_mut_ptr());
        (0..self.b * nh).into_par_iter().for_each_init(
            || vec![T::zero(); t * t],
            |p, bh| {
                let (b, h) = (bh / nh, bh % nh);
                // SAFETY: qkv has B*T rows of 3C; this task writes only y's rows of batch b, columns of head h.
                unsafe {
                    self.probs(qkv, bh, p);
                    let v = qkv.as_ptr().add(b * t * c3 + 2 * c + h * hd);
                    let dst = yp.ptr().add(b * t * c + h * hd);
                    gemm_into_with(
                        (t, hd, t),
                        dst,
                        c,
                        false,
                        p.as_ptr(),
                        (t, 1),
                        v,
                        (c3, 1),
                        T::one(),
                        Parallelism::None,
                    );
                }
            },
        );
        Ok(T::wrap(y))
    }

    fn bwd_t<T: Real + candle_core::WithDType>(
        &self,
        qkv: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (t, nh) = (self.t, self.n_head);
        let dqkv = with_slice::<T, _>(qkv, |qkv| {
            with_slice::<T, _>(dy, |dy| {
                let c3 = qkv.len() / (self.b * t);
                let (c, hd) = (c3 / 3, c3 / 3 / nh);
                let scale = T::cast(1.0 / (hd as f64).sqrt());
                let mut dqkv = vec![T::zero(); qkv.len()];
                let dp_ptr = SharedMut(dqkv.as_mut_ptr());
                (0..self.b * nh).into_par_iter().for_each_init(
                    || (vec![T::zero(); t * t], vec![T::zero(); t * t]),
                    |(p, ds), bh| {
                        let (b, h) = (bh / nh, bh % nh);
                        // SAFETY: reads are within qkv and dy; writes go to this (b, h)'s q, k and v columns of
                        // dqkv only.
                        unsafe {
                            self.probs(qkv, bh, p);
                            let base = b * t * c3 + h * hd;
                            let (q, k, v) = (
                                qkv.as_ptr().add(base),
                                qkv.as_ptr().add(base + c),
                                qkv.as_ptr().add(base + 2 * c),
                            );
                            let dyp = dy.as_ptr().add(b * t * c + h * hd);
                            // dP = dY V^T
                            gemm_into_with(
                                (t, t, hd),
                                ds.as_mut_ptr(),
                                t,
                                false,
                                dyp,
                                (c, 1),
                                v,
                                (1, c3),
                                T::one(),
                                Parallelism::None,
                            );
                            // dS = P * (dP - rowsum(dP * P)), times the score scale.
                            for i in 0..t {
                                let (pr, dr) =
                                    (&p[i * t..(i + 1) * t], &mut ds[i * t..(i + 1) * t]);
                                let dot = (0..=i).fold(T::zero(), |a, j| a + pr[j] * dr[j]);
                                for j in 0..t {
                                    dr[j] = pr[j] * (dr[j] - dot) * scale;
                                }
                            }
                            let d = dp_ptr.ptr().add(base);
                            // dQ = dS K, dK = dS^T Q, dV = P^T dY
                            gemm_into_with(
                                (t, hd, t),
                                d,
                                c3,
                                false,
                                ds.as_ptr(),
                                (t, 1),
                                k,
                                (c3, 1),
                                T::one(),
                                Parallelism::None,
                            );
                            gemm_into_with(
                                (t, hd, t),
                                d.add(c),
                                c3,
                                false,
                                ds.as_ptr(),
                                (1, t),
                                q,
                                (c3, 1),
                                T::one(),
                                Parallelism::None,
                            );
                            gemm_into_with(
                                (t, hd, t),
                                d.add(2 * c),
                                c3,
                                false,
                                p.as_ptr(),
                                (1, t),
                                dyp,
                                (c, 1),
                                T::one(),
                                Parallelism::None,
                            );
                        }
                    },
                );
                Ok(dqkv)
            })
        })?;
        Tensor::from_vec(dqkv, qkv.shape(), &Device::Cpu)
    }
}

impl CustomOp1 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, c3) = l.shape().dims2()?;
        if rows != self.b * self.t || c3 % (3 * self.n_head) != 0 {
            candle_core::bail!(
                "causal-attention: qkv {rows}x{c3} for B={} T={} heads={}",
                self.b,
                self.t,
                self.n_head
            );
        }
        let out = match dtype_of(s) {
            DType::F32 => self.fwd::<f32>(s, l)?,
            DType::F64 => self.fwd::<f64>(s, l)?,
            d => candle_core::bail!("causal-attention: unsupported dtype {d:?}"),
        };
        Ok((out, Shape::from((rows, c3 / 3))))
    }

    fn bwd(&self, qkv: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(match qkv.dtype() {
            DType::F32 => self.bwd_t::<f32>(qkv, dy)?,
            _ => self.bwd_t::<f64>(qkv, dy)?,
        }))
    }
}

// -------------------------------------------------------------------------------------------- Linear

/// `y = x w^T + b` for `x` `[N, in]`, `w` `[out, in]`, `b` `[out]`, and its backward pass as three direct
/// GEMM/reductions. Through candle's ops the same layer is a matmul against a transposed view, a broadcast
/// add, and a backward pass that materialises transposed gradients and reduces the broadcast separately.
pub(crate) struct LinearOp;

impl LinearOp {
    fn fwd<T: Real + candle_core::WithDType>(
        (x, lx): (&CpuStorage, &Layout),
        (w, lw): (&CpuStorage, &Layout),
        (b, lb): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = lx.shape().dims2()?;
        let (o, k2) = lw.shape().dims2()?;
        if k != k2 || lb.shape().elem_count() != o {
            candle_core::bail!("linear: x {n}x{k}, w {o}x{k2}, b {:?}", lb.shape());
        }
        let (x, w, b) = (
            contiguous_slice::<T>(x, lx)?,
            contiguous_slice::<T>(w, lw)?,
            contiguous_slice::<T>(b, lb)?,
        );
        let mut y = vec![T::zero(); n * o];
        y.par_chunks_mut(o * ROWS_PER_TASK)
            .for_each(|c| c.chunks_mut(o).for_each(|r| r.copy_from_slice(b)));
        // SAFETY: y is n x o, x is n x k, w is o x k.
        unsafe {
            crate::fused::gemm_into(
                (n, o, k),
                y.as_mut_ptr(),
                o,
                true,
                x.as_ptr(),
                (k, 1),
                w.as_ptr(),
                (1, k),
                T::one(),
            );
        }
        Ok((T::wrap(y), Shape::from((n, o))))
    }

    fn bwd_t<T: Real + candle_core::WithDType>(
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (n, k) = x.dims2()?;
        let (o, _) = w.dims2()?;
        let (dx, dw, db) = with_slice::<T, _>(x, |x| {
            with_slice::<T, _>(w, |w| {
                with_slice::<T, _>(dy, |dy| {
                    let mut dx = vec![T::zero(); n * k];
                    let mut dw = vec![T::zero(); o * k];
                    // SAFETY: dx is n x k, dw is o x k, dy is n x o.
                    unsafe {
                        crate::fused::gemm_into(
                            (n, k, o),
                            dx.as_mut_ptr(),
                            k,
                            false,
                            dy.as_ptr(),
                            (o, 1),
                            w.as_ptr(),
                            (k, 1),
                            T::one(),
                        );
                        crate::fused::gemm_into(
                            (o, k, n),
                            dw.as_mut_ptr(),
                            k,
                            false,
                            dy.as_ptr(),
                            (1, o),
                            x.as_ptr(),
                            (k, 1),
                            T::one(),
                        );
                    }
                    let partial: Vec<Vec<T>> = dy
                        .par_chunks(o * ROWS_PER_TASK * 4)
                        .map(|c| {
                            let mut s = vec![T::zero(); o];
                            for r in c.chunks(o) {
                                for j in 0..o {
                                    s[j] += r[j];
                                }
                            }
                            s
                        })
                        .collect();
                    let mut db = vec![T::zero(); o];
                    for p in partial {
                        for j in 0..o {
                            db[j] += p[j];
                        }
                    }
                    Ok((dx, dw, db))
                })
            })
        })?;
        Ok((
            Tensor::from_vec(dx, (n, k), &Device::Cpu)?,
            Tensor::from_vec(dw, (o, k), &Device::Cpu)?,
            Tensor::from_vec(db, o, &Device::Cpu)?,
        ))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match dtype_of(s1) {
            DType::F32 => Self::fwd::<f32>((s1, l1), (s2, l2), (s3, l3)),
            DType::F64 => Self::fwd::<f64>((s1, l1), (s2, l2), (s3, l3)),
            d => candle_core::bail!("linear: unsupported dtype {d:?}"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = match x.dtype() {
            DType::F32 => Self::bwd_t::<f32>(x, w, dy)?,
            _ => Self::bwd_t::<f64>(x, w, dy)?,
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}
