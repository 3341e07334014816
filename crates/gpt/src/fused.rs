//! The CPU kernel for the `lm_head` and cross-entropy, fused and chunked over rows.
//!
//! At the paper's scale the logits of one batch are 32 x 128 x 50,257 floats (822 MB): materialising them,
//! then running softmax, log, gather and their backward as separate tensor ops is half of PyTorch's step
//! time. Here each chunk of rows gets its logits from one GEMM, its softmax, loss and logit gradient in one
//! pass while the chunk is in cache, and its contribution to both input gradients from two more GEMMs, so
//! the full logits never exist and the backward pass costs no extra softmax. Other devices use the plain
//! differentiable ops in `model.rs`.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Bytes of logits one chunk may hold: large enough that the GEMMs run near peak and the gradient of the
/// tied embedding is re-read only a few times a step, small enough to stay far below the full logits.
const CHUNK_BYTES: usize = 192 << 20;

pub(crate) fn parallelism() -> Parallelism {
    let n = rayon::current_num_threads();
    if n > 1 {
        Parallelism::Rayon(n)
    } else {
        Parallelism::None
    }
}

/// The logits buffer of the last call on this thread, kept because buffers this large go back to the kernel
/// when freed and fault in again page by page.
#[derive(Default)]
pub(crate) struct Scratch {
    f32: Vec<f32>,
    f64: Vec<f64>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The float types the kernel runs on; f64 exists for finite-difference tests.
pub(crate) trait Real: num_traits::Float + Send + Sync + 'static + std::fmt::Debug {
    const ZERO: Self;
    const ONE: Self;
    fn cast(x: f64) -> Self;
    fn as_f64(self) -> f64;
    /// Replaces each `x` by `exp(x - shift)`; returns the sum.
    fn exp_shift_sum(xs: &mut [Self], shift: Self) -> f64;
    fn max_of(xs: &[Self]) -> Self;
    fn scale(xs: &mut [Self], s: Self);
    fn wrap(v: Vec<Self>) -> CpuStorage;
    /// A buffer of `len` values (contents unspecified) taken from the scratch space.
    fn scratch(s: &mut Scratch, len: usize) -> Vec<Self>;
    fn unscratch(s: &mut Scratch, v: Vec<Self>);
    /// `y = gelu(x)` (tanh approximation).
    fn gelu_slice(x: &[Self], y: &mut [Self]);
    /// `dx = dy * gelu'(x)`.
    fn gelu_grad_slice(x: &[Self], dy: &[Self], dx: &mut [Self]);
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn cast(x: f64) -> Self {
        x as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
    fn exp_shift_sum(xs: &mut [Self], shift: Self) -> f64 {
        fast_exp_shift_sum(xs, shift) as f64
    }
    fn max_of(xs: &[Self]) -> Self {
        let mut acc = [f32::NEG_INFINITY; 16];
        let mut chunks = xs.chunks_exact(16);
        for c in &mut chunks {
            for i in 0..16 {
                acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
            }
        }
        let mut m = chunks
            .remainder()
            .iter()
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for a in acc {
            m = m.max(a);
        }
        m
    }
    fn scale(xs: &mut [Self], s: Self) {
        xs.iter_mut().for_each(|x| *x *= s);
    }
    fn wrap(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
    fn scratch(s: &mut Scratch, len: usize) -> Vec<Self> {
        let mut v = std::mem::take(&mut s.f32);
        v.resize(len, 0.0);
        v
    }
    fn unscratch(s: &mut Scratch, v: Vec<Self>) {
        s.f32 = v;
    }
    fn gelu_slice(x: &[Self], y: &mut [Self]) {
        gelu_at(Width::detected(), x, y)
    }
    fn gelu_grad_slice(x: &[Self], dy: &[Self], dx: &mut [Self]) {
        gelu_grad_at(Width::detected(), x, dy, dx)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn cast(x: f64) -> Self {
        x
    }
    fn as_f64(self) -> f64 {
        self
    }
    fn exp_shift_sum(xs: &mut [Self], shift: Self) -> f64 {
        let mut s = 0.0;
        for x in xs.iter_mut() {
            *x = (*x - shift).exp();
            s += *x;
        }
        s
    }
    fn max_of(xs: &[Self]) -> Self {
        xs.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b))
    }
    fn scale(xs: &mut [Self], s: Self) {
        xs.iter_mut().for_each(|x| *x *= s);
    }
    fn wrap(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
    fn scratch(s: &mut Scratch, len: usize) -> Vec<Self> {
        let mut v = std::mem::take(&mut s.f64);
        v.resize(len, 0.0);
        v
    }
    fn unscratch(s: &mut Scratch, v: Vec<Self>) {
        s.f64 = v;
    }
    fn gelu_slice(x: &[Self], y: &mut [Self]) {
        for (x, y) in x.iter().zip(y) {
            let u = GELU_C * (x + 0.044715 * x * x * x);
            *y = 0.5 * x * (1.0 + u.tanh());
        }
    }
    fn gelu_grad_slice(x: &[Self], dy: &[Self], dx: &mut [Self]) {
        for ((x, dy), dx) in x.iter().zip(dy).zip(dx) {
            let u = GELU_C * (x + 0.044715 * x * x * x);
            let th = u.tanh();
            let du = GELU_C * (1.0 + 3.0 * 0.044715 * x * x);
            *dx = dy * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du);
        }
    }
}

/// sqrt(2 / pi), GPT-2's GELU constant.
const GELU_C: f64 = 0.797_884_560_802_865_4;

/// The vector widths the element-wise kernels are compiled for, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Width {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Width {
    /// The widest this CPU runs (std caches the feature probe, so this is cheap on hot paths).
    fn detected() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                return if has!("avx512f") {
                    Width::Avx512
                } else {
                    Width::Avx2
                };
            }
        }
        Width::Portable
    }
}

/// Compiles a generic element-wise kernel once per vector width into `name(width, args..)`, which runs the
/// requested width, capped at what the CPU has. Rust does not contract `a * b + c` into an FMA, and every
/// reduction in these kernels names its lanes, so each width gives bit-identical results (tested).
macro_rules! per_width {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $generic:ident;)*) => {$(
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
        fn $name(width: Width, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                match width.min(Width::detected()) {
                    // SAFETY: the width is capped at what the CPU supports.
                    Width::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    Width::Avx2 => return unsafe { avx2($($arg),*) },
                    Width::Portable => {}
                }
            }
            $generic($($arg),*)
        }
    )*};
}

per_width! {
    fn gelu_at(x: &[f32], y: &mut [f32]) = gelu_generic;
    fn gelu_grad_at(x: &[f32], dy: &[f32], dx: &mut [f32]) = gelu_grad_generic;
    fn exp_shift_sum_at(xs: &mut [f32], shift: f32) -> f32 = exp_shift_sum_generic;
}

/// tanh from the vectorisable exp: absolute error below 1e-7, which is what GELU's `1 + tanh` needs.
#[inline(always)]
fn tanh_f32(u: f32) -> f32 {
    1.0 - 2.0 / (exp_f32(2.0 * u) + 1.0)
}

#[inline(always)]
fn gelu_generic(x: &[f32], y: &mut [f32]) {
    const C: f32 = GELU_C as f32;
    for (x, y) in x.iter().zip(y) {
        let u = C * (x + 0.044715 * x * x * x);
        *y = 0.5 * x * (1.0 + tanh_f32(u));
    }
}

#[inline(always)]
fn gelu_grad_generic(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    const C: f32 = GELU_C as f32;
    for ((x, dy), dx) in x.iter().zip(dy).zip(dx) {
        let u = C * (x + 0.044715 * x * x * x);
        let th = tanh_f32(u);
        let du = C * (1.0 + 3.0 * 0.044715 * x * x);
        *dx = dy * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du);
    }
}

/// `exp` of an f32 with Cephes' polynomial (relative error below 2e-7), branch-free so loops over it vectorise.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.336_55, 88.722_83);
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    let n = (x * LOG2E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

#[inline(always)]
fn exp_shift_sum_generic(xs: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = xs.chunks_exact_mut(16);
    for c in &mut chunks {
        for i in 0..16 {
            c[i] = exp_f32(c[i] - shift);
            acc[i] += c[i];
        }
    }
    let mut s: f32 = 0.0;
    for x in chunks.into_remainder() {
        *x = exp_f32(*x - shift);
        s += *x;
    }
    s + acc.iter().sum::<f32>()
}

fn fast_exp_shift_sum(xs: &mut [f32], shift: f32) -> f32 {
    exp_shift_sum_at(Width::detected(), xs, shift)
}

/// Replaces each `x` by `exp(x)` with the vectorised kernel; returns the sum. Used by the sampler.
pub fn fast_exp_slice(xs: &mut [f32], shift: f32) -> f32 {
    fast_exp_shift_sum(xs, shift)
}

/// `dst (m x n) = a * dst + b * lhs (m x k) * rhs (k x n)`, each operand given by (row stride, column stride).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_into<T: Copy + 'static>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const T,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const T,
    (rhs_rs, rhs_cs): (usize, usize),
    one: T,
) {
    gemm_into_with(
        (m, n, k),
        dst,
        dst_rs,
        accumulate,
        lhs,
        (lhs_rs, lhs_cs),
        rhs,
        (rhs_rs, rhs_cs),
        one,
        parallelism(),
    )
}

/// [`gemm_into`] with an explicit parallelism (`None` inside tasks that are already parallel).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_into_with<T: Copy + 'static>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const T,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const T,
    (rhs_rs, rhs_cs): (usize, usize),
    one: T,
    par: Parallelism,
) {
    gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        one,
        one,
        false,
        false,
        false,
        par,
    )
}

/// Gradients with respect to the hidden states and the (tied) embedding matrix.
pub(crate) type Grads<T> = (Vec<T>, Vec<T>);

/// Sum of next-token NLL of `h (n x c) . w^T (c x v)` against `targets`, and, if asked, the gradients of the
/// MEAN loss with respect to `h` and `w`.
/// `chunk_rows` caps the rows per chunk (tests use a few, to cover several chunks and a ragged last one);
/// `None` sizes chunks by [`CHUNK_BYTES`].
pub(crate) fn lce_kernel<T: Real>(
    h: &[T],
    w: &[T],
    targets: &[u32],
    (n, c, v): (usize, usize, usize),
    with_grads: bool,
    chunk_rows: Option<usize>,
) -> (f64, Option<Grads<T>>) {
    assert_eq!(h.len(), n * c);
    assert_eq!(w.len(), v * c);
    assert_eq!(targets.len(), n);
    let rows_max = chunk_rows
        .unwrap_or(CHUNK_BYTES / (v * std::mem::size_of::<T>()))
        .clamp(1, n.max(1));
    let n_chunks = n.div_ceil(rows_max).max(1);
    let rows_per_chunk = n.div_ceil(n_chunks).max(1);
    let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let mut logits = T::scratch(&mut scratch, rows_per_chunk * v);
    let mut dh = if with_grads {
        vec![T::ZERO; n * c]
    } else {
        Vec::new()
    };
    let mut dw = if with_grads {
        vec![T::ZERO; v * c]
    } else {
        Vec::new()
    };
    let mut row_loss = vec![0f64; n];
    for (chunk, r0) in (0..n).step_by(rows_per_chunk).enumerate() {
        let rows = rows_per_chunk.min(n - r0);
        let logits = &mut logits[..rows * v];
        let x = &h[r0 * c..(r0 + rows) * c];
        // SAFETY: every pointer covers the (rows, strides) the call reads or writes.
        unsafe {
            gemm_into(
                (rows, v, c),
                logits.as_mut_ptr(),
                v,
                false,
                x.as_ptr(),
                (c, 1),
                w.as_ptr(),
                (1, c),
                T::ONE,
            );
        }
        logits
            .par_chunks_mut(v)
            .zip(row_loss[r0..r0 + rows].par_iter_mut())
            .zip(targets[r0..r0 + rows].par_iter())
            .for_each(|((row, loss), &t)| {
                let t = t as usize;
                let target_logit = row[t].as_f64();
                let max = T::max_of(row);
                let sum = T::exp_shift_sum(row, max);
                *loss = sum.ln() + max.as_f64() - target_logit;
                if with_grads {
                    T::scale(row, T::cast(1.0 / (sum * n as f64)));
                    row[t] = T::cast(row[t].as_f64() - 1.0 / n as f64);
                }
            });
        if with_grads {
            // SAFETY: as above; dh rows r0.. are this chunk's, dw is (v x c).
            unsafe {
                gemm_into(
                    (rows, c, v),
                    dh[r0 * c..].as_mut_ptr(),
                    c,
                    false,
                    logits.as_ptr(),
                    (v, 1),
                    w.as_ptr(),
                    (c, 1),
                    T::ONE,
                );
                gemm_into(
                    (v, c, rows),
                    dw.as_mut_ptr(),
                    c,
                    chunk > 0,
                    logits.as_ptr(),
                    (1, v),
                    x.as_ptr(),
                    (c, 1),
                    T::ONE,
                );
            }
        }
    }
    let loss_sum = row_loss.iter().sum();
    T::unscratch(&mut scratch, logits);
    SCRATCH.with(|s| *s.borrow_mut() = scratch);
    (loss_sum, with_grads.then_some((dh, dw)))
}

pub(crate) fn dtype_of(s: &CpuStorage) -> DType {
    candle_core::backend::BackendStorage::dtype(s)
}

pub(crate) fn contiguous_slice<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("linear_cross_entropy needs contiguous inputs"),
    }
}

/// Mean cross-entropy of `h . w^T` as a candle op whose gradients are computed in the forward pass.
pub(crate) struct LinearCrossEntropy {
    pub targets: Arc<Vec<u32>>,
    chunk_rows: Option<usize>,
    grads: Mutex<Option<(Tensor, Tensor)>>,
}

impl LinearCrossEntropy {
    pub fn new(targets: Vec<u32>, chunk_rows: Option<usize>) -> Self {
        Self {
            targets: Arc::new(targets),
            chunk_rows,
            grads: Mutex::new(None),
        }
    }

    fn run<T: Real + candle_core::WithDType>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c) = l1.shape().dims2()?;
        let (v, c2) = l2.shape().dims2()?;
        if c != c2 || n != self.targets.len() {
            candle_core::bail!(
                "linear_cross_entropy: h {n}x{c}, w {v}x{c2}, {} targets",
                self.targets.len()
            );
        }
        if let Some(&bad) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("linear_cross_entropy: target {bad} outside the vocabulary of {v}");
        }
        let h = contiguous_slice::<T>(s1, l1)?;
        let w = contiguous_slice::<T>(s2, l2)?;
        let (sum, grads) = lce_kernel(h, w, &self.targets, (n, c, v), true, self.chunk_rows);
        let (dh, dw) = grads.expect("grads requested");
        let dh = Tensor::from_vec(dh, (n, c), &Device::Cpu)?;
        let dw = Tensor::from_vec(dw, (v, c), &Device::Cpu)?;
        *self.grads.lock().expect("poisoned") = Some((dh, dw));
        Ok((
            T::wrap(vec![<T as Real>::cast(sum / n as f64)]),
            Shape::from(()),
        ))
    }
}

impl CustomOp2 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "linear-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match dtype_of(s1) {
            DType::F32 => self.run::<f32>(s1, l1, s2, l2),
            DType::F64 => self.run::<f64>(s1, l1, s2, l2),
            d => candle_core::bail!("linear_cross_entropy: unsupported dtype {d:?}"),
        }
    }

    fn bwd(
        &self,
        _h: &Tensor,
        _w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dh, dw) = self.grads.lock().expect("poisoned").take().ok_or_else(|| {
            candle_core::Error::Msg("linear_cross_entropy: backward ran twice".into())
        })?;
        Ok((
            Some(dh.broadcast_mul(grad_res)?),
            Some(dw.broadcast_mul(grad_res)?),
        ))
    }
}

/// Sum of next-token NLL of `h . w^T` over all rows, with no gradient: the evaluator's exact CPU path.
pub fn linear_cross_entropy_sum(
    h: &Tensor,
    w: &Tensor,
    targets: &[u32],
    chunk_rows: Option<usize>,
) -> candle_core::Result<f64> {
    let (n, c) = h.dims2()?;
    let (v, _) = w.dims2()?;
    let h = h.contiguous()?;
    let w = w.contiguous()?;
    let (hs, hl) = h.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (candle_core::Storage::Cpu(hs), candle_core::Storage::Cpu(ws)) = (&*hs, &*ws) else {
        candle_core::bail!("linear_cross_entropy_sum runs on the CPU");
    };
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("target {bad} outside the vocabulary of {v}");
    }
    let sum = match dtype_of(hs) {
        DType::F32 => {
            lce_kernel(
                contiguous_slice::<f32>(hs, hl)?,
                contiguous_slice::<f32>(ws, wl)?,
                targets,
                (n, c, v),
                false,
                chunk_rows,
            )
            .0
        }
        DType::F64 => {
            lce_kernel(
                contiguous_slice::<f64>(hs, hl)?,
                contiguous_slice::<f64>(ws, wl)?,
                targets,
                (n, c, v),
                false,
                chunk_rows,
            )
            .0
        }
        d => candle_core::bail!("unsupported dtype {d:?}"),
    };
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_std_exp() {
        let xs: Vec<f32> = (-8000..800).map(|i| i as f32 * 0.01).collect();
        let mut ys = xs.clone();
        let s = fast_exp_slice(&mut ys, 0.0);
        let mut want = 0f64;
        for (x, y) in xs.iter().zip(&ys) {
            let e = (*x as f64).exp();
            want += e;
            assert!(
                ((*y as f64 - e) / e).abs() < 5e-7,
                "exp({x}) = {y}, want {e}"
            );
        }
        assert!(((s as f64 - want) / want).abs() < 1e-5);
    }

    /// The AVX-512, AVX2 and portable builds of each element-wise kernel give the same bits, so a run's numbers
    /// do not depend on which one the CPU picks.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_vector_width_gives_the_same_bits() {
        // A pseudo-random mix of magnitudes, 1,003 long so the 16-lane remainder path runs too.
        let mut state = 0x9e37_79b9_u32;
        let xs: Vec<f32> = (0..1003)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32 - 0.5) * 24.0
            })
            .collect();
        let dy: Vec<f32> = xs.iter().map(|x| (x * 0.37).sin()).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let run = |width: Width| {
            let (mut y, mut dx, mut e) = (vec![0f32; xs.len()], vec![0f32; xs.len()], xs.clone());
            gelu_at(width, &xs, &mut y);
            gelu_grad_at(width, &xs, &dy, &mut dx);
            let sum = exp_shift_sum_at(width, &mut e, 3.0);
            (bits(&y), bits(&dx), bits(&e), sum.to_bits())
        };
        let portable = run(Width::Portable);
        for width in [Width::Avx2, Width::Avx512] {
            if width <= Width::detected() {
                assert_eq!(
                    run(width),
                    portable,
                    "{width:?} differs from the portable build"
                );
            }
        }
    }

    #[test]
    fn kernel_matches_a_naive_softmax() {
        let (n, c, v) = (5, 3, 7);
        let h: Vec<f64> = (0..n * c)
            .map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.3)
            .collect();
        let w: Vec<f64> = (0..v * c)
            .map(|i| ((i * 5 % 13) as f64 - 6.0) * 0.2)
            .collect();
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 3) % v as u32).collect();
        let (sum, grads) = lce_kernel(&h, &w, &targets, (n, c, v), true, None);
        let (dh, dw) = grads.unwrap();
        let mut want = 0.0;
        let mut want_dh = vec![0.0; n * c];
        let mut want_dw = vec![0.0; v * c];
        for r in 0..n {
            let logits: Vec<f64> = (0..v)
                .map(|j| (0..c).map(|k| h[r * c + k] * w[j * c + k]).sum())
                .collect();
            let z: f64 = logits.iter().map(|l| l.exp()).sum();
            want += z.ln() - logits[targets[r] as usize];
            for j in 0..v {
                let g = (logits[j].exp() / z - f64::from(j == targets[r] as usize)) / n as f64;
                for k in 0..c {
                    want_dh[r * c + k] += g * w[j * c + k];
                    want_dw[j * c + k] += g * h[r * c + k];
                }
            }
        }
        assert!((sum - want).abs() < 1e-10);
        for (a, b) in dh.iter().zip(&want_dh).chain(dw.iter().zip(&want_dw)) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }
}
