//! Choosing the compute device from what a user types.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let ordinal = match spec.as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        s if s.starts_with("cuda:") => s[5..]
            .parse::<usize>()
            .with_context(|| format!("bad device {spec:?}: expected cuda:N with N a GPU index"))?,
        _ => bail!("unknown device {spec:?}: use cpu, cuda or cuda:N"),
    };
    if !cfg!(feature = "cuda") {
        bail!(
            "device {spec:?} needs a CUDA build: this binary was built without the `cuda` feature \
             (build one with scripts/build-cuda.sh, see README \"Running on a GPU\")"
        );
    }
    Device::new_cuda(ordinal).with_context(|| {
        format!("cannot open CUDA device {ordinal}: is there a GPU and its driver?")
    })
}

pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", rayon_threads()),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let ctx = d.cuda_stream().context().clone();
            let name = ctx.name().unwrap_or_else(|e| format!("unnamed ({e})"));
            format!("cuda:{} {name}", ctx.ordinal())
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => "cuda".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}

/// The device and the precision of its f32 matmuls, as each round records them. The CPU's thread count is
/// left out: the CPU kernels give the same bits on any number of threads.
pub fn describe_with_precision(device: &Device, tf32: bool) -> String {
    let precision = if device.is_cuda() && tf32 {
        "tf32 matmuls"
    } else {
        "f32"
    };
    let name = if device.is_cpu() {
        "cpu".to_string()
    } else {
        describe(device)
    };
    format!("{name}, {precision}")
}

/// Worker threads of the CPU backend (rayon's, as `RAYON_NUM_THREADS` sets them).
pub fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Peak resident set size of this process so far, in MB (Linux `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Waits for queued GPU work so a timer reads real time.
pub fn synchronize(device: &Device) -> Result<()> {
    device.synchronize()?;
    Ok(())
}

/// Minor page faults of this process so far: each is a page the kernel had to hand out and zero.
pub fn page_faults() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u.ru_minflt as u64
    }
}

/// TF32 tensor-core matmuls for f32 on CUDA (about 8x the f32 rate on Hopper, 10-bit mantissa products with
/// f32 accumulation). No effect on other devices.
pub fn set_tf32(device: &Device, on: bool) {
    if device.is_cuda() {
        candle_core::cuda::set_gemm_reduced_precision_f32(on);
    }
}
