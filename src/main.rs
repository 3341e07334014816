//! collapse-lab: model-collapse experiments on small GPT-2 models. The binary is a thin layer of commands
//! over the library crates: `gpt` (the model), `train` (optimisation and evaluation).

mod bench;
mod device;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "collapse-lab", version, about = "Model-collapse experiments on nanoGPT-size GPT-2 models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure training, evaluation and generation throughput against the device's matmul peak (JSON on stdout).
    Bench(bench::BenchArgs),
    /// Measure loading, cleaning and tokenising a corpus, cold and from the token cache (JSON on stdout).
    BenchCorpus(bench::CorpusBenchArgs),
}

/// Keeps freed memory in the process. Training frees and re-allocates buffers of tens of MB every step;
/// glibc's defaults hand them back to the kernel each time, and the page faults of re-allocating them cost
/// a third of a CPU step (measured with `bench`).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; it is called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

fn main() -> Result<()> {
    keep_freed_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(a) => bench::run(a),
        Command::BenchCorpus(a) => bench::run_corpus(a),
    }
}
