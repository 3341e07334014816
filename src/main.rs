//! collapse-lab: model-collapse experiments on small GPT-2 models. The binary is argument parsing over the
//! library crates (`experiment` runs them, `report` shows them), the mapping from `[model]` to a model kind,
//! and the tools that work on one checkpoint (generate, eval, export), bench and gpu-check.

mod bench;
mod device;
mod gpucheck;
mod models;
mod tools;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "collapse-lab",
    version,
    about = "Model-collapse experiments on nanoGPT-size GPT-2 models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run (or resume) an experiment: settings x repetitions x rounds of compose, train, evaluate, generate.
    #[command(
        after_help = "Examples:\n  collapse-lab run configs/quick.toml\n  collapse-lab run configs/paper.toml --device cuda --data wiki_movie_plots_deduped.csv\n  collapse-lab run configs/paper.toml --only fixed-alpha/3\n\nRunning the same command again resumes from the last completed phase."
    )]
    Run {
        /// The experiment's TOML config.
        config: PathBuf,
        /// Run directory (default: runs/<config name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Data source overriding the config's (a local file, folder or hf://datasets/...).
        #[arg(long, env = "COLLAPSE_DATA")]
        data: Option<String>,
        /// Tokenizer overriding the config's (tokenizer.json, folder with vocab.json + merges.txt, hf:REPO, train:N).
        #[arg(long, env = "COLLAPSE_TOKENIZER")]
        tokenizer: Option<String>,
        /// cpu, cuda or cuda:N (overrides the config's).
        #[arg(long)]
        device: Option<String>,
        /// Run only SETTING, or only SETTING/REP (e.g. synthetic-only/0).
        #[arg(long)]
        only: Option<String>,
        /// Worker processes, each taking one chain (setting x repetition) at a time, with the cores split
        /// between them. Default: on a CPU one per core (measured faster than one process using every
        /// core, see README), on a GPU 1.
        #[arg(long)]
        jobs: Option<usize>,
        /// Devices for the workers, in turn (e.g. cuda:0,cuda:1; several workers may share one GPU).
        #[arg(long, value_delimiter = ',')]
        devices: Vec<String>,
    },
    /// Write a Slurm job array for a run: one task per chain, each `collapse-lab run --only SETTING/REP`.
    #[command(
        after_help = "Example:\n  collapse-lab slurm configs/paper.toml --out /scratch/runs/paper --partition gpu --gpus-per-task 1 --time 02:00:00\n  sbatch /scratch/runs/paper/slurm/collapse-lab.sbatch\n\nTasks are requeued on preemption and resume where they stopped; `collapse-lab report` works on the directory meanwhile."
    )]
    Slurm(SlurmArgs),
    /// Show how far each setting and repetition of a run has come.
    #[command(after_help = "Example:\n  collapse-lab status runs/quick")]
    Status { dir: PathBuf },
    /// Plot held-out perplexity per round (PNG, SVG), summarise it (markdown, HTML) and export metrics.csv.
    #[command(
        after_help = "Examples:\n  collapse-lab report runs/quick && xdg-open runs/quick/report/report.html\n  collapse-lab report --metrics docs/results/miniature/metrics.csv --config configs/miniature.toml --out docs/results/miniature\n\nThe second form re-analyses a published metrics.csv (and curation.csv with --curation) without its run directory."
    )]
    Report {
        /// The run directory (omit with --metrics).
        #[arg(required_unless_present = "metrics")]
        dir: Option<PathBuf>,
        /// Perplexity on a linear axis (default: log).
        #[arg(long)]
        linear: bool,
        /// A metrics.csv written by `report`, to re-analyse without its run directory (needs --config, --out).
        #[arg(long, requires_all = ["config", "out"], conflicts_with = "dir")]
        metrics: Option<PathBuf>,
        /// The config the published metrics come from.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The curation.csv beside the published metrics, for curated runs.
        #[arg(long)]
        curation: Option<PathBuf>,
        /// Where to write the re-analysis.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Find round 0's training length: where its held-out loss is lowest.
    ///
    /// Trains round 0 of one repetition with the held-out loss every few steps and reports the step where
    /// it is lowest (the paper's "going beyond leads to over-fitting"), and the passes that step makes.
    #[command(
        after_help = "Example:\n  collapse-lab calibrate configs/setting3-a-small.toml --steps 1000 --eval-every 20 --out runs/calibrate-small\n\nIt trains on a repetition the experiment does not use (by default the config's `repetitions`, the first one past its own), so the choice it informs is made before any of the experiment's results."
    )]
    Calibrate(CalibrateArgs),
    /// Sample documents from a checkpoint.
    #[command(
        after_help = "Example:\n  collapse-lab generate runs/quick/synthetic-only/rep-0/round-4/model.safetensors --count 3"
    )]
    Generate(tools::GenerateArgs),
    /// Held-out perplexity of a checkpoint on a data source.
    #[command(
        after_help = "Example:\n  collapse-lab eval runs/quick/accumulate/rep-0/round-2/model.safetensors --data data/sample/movies_2020s_sample.csv.zst --column plot"
    )]
    Eval(tools::EvalArgs),
    #[command(
        after_help = "Example:\n  collapse-lab export runs/quick/accumulate/rep-0/round-2/model.safetensors --out hf-model\n  python -c 'import transformers as t; t.GPT2LMHeadModel.from_pretrained(\"hf-model\")'"
    )]
    /// Write a checkpoint in Hugging Face transformers' GPT-2 layout (config.json, model.safetensors, tokenizer).
    Export(tools::ExportArgs),
    /// The paper's theory under the config's schedules: exact risk recurrences and Monte Carlo simulations.
    #[command(
        after_help = "Example:\n  collapse-lab theory configs/theory-figure2.toml --out runs/theory-figure2\n\nThe config's schedules (presets and [[schedule.custom]]) through the model of its [theory] section."
    )]
    Theory {
        config: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Measure training, evaluation and generation throughput against the device's matmul peak (JSON on stdout).
    Bench(bench::BenchArgs),
    /// Check the engine on a device (gradients, cached decoding, loss curve against the CPU, device sampling).
    GpuCheck(gpucheck::CheckArgs),
    /// Measure loading, cleaning and tokenising a corpus, cold and from the token cache (JSON on stdout).
    BenchCorpus(bench::CorpusBenchArgs),
}

#[derive(clap::Args, Debug)]
struct SlurmArgs {
    /// The experiment's TOML config.
    config: PathBuf,
    /// The run directory, on storage every node sees.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    partition: Option<String>,
    /// GPUs per task (`--gres=gpu:G`); tasks then run on `cuda`.
    #[arg(long)]
    gpus_per_task: Option<u32>,
    /// Wall time per task, e.g. 02:00:00.
    #[arg(long, default_value = "04:00:00")]
    time: String,
    #[arg(long, default_value_t = 2)]
    cpus_per_task: u32,
    /// Data source and tokenizer overriding the config's (frozen into the run directory's config).
    #[arg(long, env = "COLLAPSE_DATA")]
    data: Option<String>,
    #[arg(long, env = "COLLAPSE_TOKENIZER")]
    tokenizer: Option<String>,
    /// Only SETTING or SETTING/REP.
    #[arg(long)]
    only: Option<String>,
    /// At most this many tasks at once (`--array=...%N`).
    #[arg(long)]
    max_running: Option<u32>,
    /// Let the tasks run on another device than the one the run directory was frozen with (each round's
    /// metrics record the device it ran on).
    #[arg(long)]
    switch_device: bool,
}

#[derive(clap::Args, Debug)]
struct CalibrateArgs {
    /// The experiment's TOML config.
    config: PathBuf,
    /// Steps to train round 0 for (default: 4 x the steps the config gives round 0).
    #[arg(long)]
    steps: Option<u64>,
    /// Held-out loss every this many steps (default: steps / 50).
    #[arg(long)]
    eval_every: Option<u64>,
    /// The repetition whose split and seeds to use (default: the config's `repetitions`, the first one the
    /// experiment does not run).
    #[arg(long)]
    rep: Option<usize>,
    /// Where to keep the calibration (default: runs/<config name>-calibrate).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, env = "COLLAPSE_DATA")]
    data: Option<String>,
    #[arg(long, env = "COLLAPSE_TOKENIZER")]
    tokenizer: Option<String>,
    /// cpu, cuda or cuda:N (overrides the config's).
    #[arg(long)]
    device: Option<String>,
}

/// The model kinds of a run on the device its config (or --device) names, TF32 as configured.
fn run_models(cfg: &experiment::Config) -> Result<models::RunModels> {
    let device = device::parse_device(&cfg.experiment.device)?;
    device::set_tf32(&device, cfg.experiment.tf32);
    Ok(models::RunModels {
        device,
        tf32: cfg.experiment.tf32,
    })
}

/// Keeps freed memory in the process. Training frees and re-allocates buffers of tens of MB every step;
/// glibc's defaults hand them back to the kernel each time (large ones are separate mappings), and the page
/// faults of re-allocating them cost up to a third of a CPU step (measured with `bench`, which reports page
/// faults per step). Here every allocation comes from the heap, which is never trimmed.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; it is called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            config,
            out,
            data,
            tokenizer,
            device,
            only,
            jobs,
            devices,
        } => {
            let mut cfg = experiment::Config::load(&config)?;
            let mut passthrough = Vec::new();
            if let Some(d) = data {
                passthrough.extend(["--data".to_string(), d.clone()]);
                cfg.data.source = d;
            }
            if let Some(t) = tokenizer {
                passthrough.extend(["--tokenizer".to_string(), t.clone()]);
                cfg.data.tokenizer = t;
            }
            if let Some(d) = device {
                cfg.experiment.device = d;
            }
            let sel = experiment::parse_only(only.as_deref(), &cfg)?;
            let out = out.unwrap_or_else(|| experiment::default_out(&config));
            let chains = experiment::chains(&sel).len();
            let jobs = match jobs {
                Some(0) => anyhow::bail!("--jobs must be at least 1"),
                Some(j) => j,
                None if cfg.experiment.device == "cpu" && devices.is_empty() => {
                    std::thread::available_parallelism()
                        .map_or(1, |n| n.get())
                        .min(chains)
                        .max(1)
                }
                None => 1,
            };
            if jobs > 1 || !devices.is_empty() {
                let devices = if devices.is_empty() {
                    vec![cfg.experiment.device.clone()]
                } else {
                    devices
                };
                for d in &devices {
                    device::parse_device(d)?;
                }
                // A bad [model] is one line here, not one per worker; validating needs no device.
                experiment::check_models(
                    &cfg,
                    &models::RunModels {
                        device: candle_core::Device::Cpu,
                        tf32: false,
                    },
                )?;
                // Freeze the config (or refuse a different one) before any worker starts.
                experiment::RunDir::open(&out, &cfg)?;
                let args = experiment::workers::WorkerArgs {
                    config: &config,
                    out: &out,
                    passthrough,
                    devices,
                };
                return Ok(experiment::workers::run_jobs(args, &sel, jobs)?);
            }
            let models = run_models(&cfg)?;
            Ok(experiment::run(cfg, &out, &models, sel)?)
        }
        Command::Slurm(a) => Ok(experiment::slurm::write(experiment::slurm::SlurmArgs {
            config: a.config,
            out: a.out,
            partition: a.partition,
            gpus_per_task: a.gpus_per_task,
            time: a.time,
            cpus_per_task: a.cpus_per_task,
            data: a.data,
            tokenizer: a.tokenizer,
            only: a.only,
            max_running: a.max_running,
            switch_device: a.switch_device,
        })?),
        Command::Status { dir } => {
            print!("{}", experiment::status(&dir)?);
            Ok(())
        }
        Command::Report {
            dir,
            linear,
            metrics,
            config,
            curation,
            out,
        } => {
            let input = match (dir, metrics, config, out) {
                (Some(dir), None, _, _) => report::Input::RunDir(dir),
                (None, Some(metrics), Some(config), Some(out)) => report::Input::Published {
                    metrics,
                    config,
                    curation,
                    out,
                },
                _ => anyhow::bail!(
                    "report needs a run directory, or --metrics with --config and --out"
                ),
            };
            let out = report::report(&input, report::Options { linear })?;
            println!("{}", out.join("report.html").display());
            Ok(())
        }
        Command::Calibrate(a) => {
            let mut cfg = experiment::Config::load(&a.config)?;
            if let Some(d) = a.data {
                cfg.data.source = d;
            }
            if let Some(t) = a.tokenizer {
                cfg.data.tokenizer = t;
            }
            if let Some(d) = a.device {
                cfg.experiment.device = d;
            }
            let models = run_models(&cfg)?;
            let (cal, out) = experiment::calibrate(
                experiment::CalibrateArgs {
                    config: cfg,
                    config_path: a.config,
                    steps: a.steps,
                    eval_every: a.eval_every,
                    rep: a.rep,
                    out: a.out,
                },
                &models,
            )?;
            report::curve_plot(
                &out.join("calibration"),
                &format!(
                    "Round 0 of repetition {}: {} documents, {} tokens",
                    cal.repetition, cal.documents, cal.train_tokens
                ),
                "training step",
                "mean NLL per token (nats)",
                &[
                    ("held-out".to_string(), cal.heldout.clone()),
                    ("training (batch)".to_string(), cal.losses.clone()),
                ],
            )?;
            println!(
                "{}",
                serde_json::json!({
                    "best_step": cal.best_step,
                    "best_heldout_nll": cal.best_heldout_nll,
                    "best_passes": cal.best_passes,
                    "config_steps": cal.config_steps,
                    "config_heldout_nll": cal.config_heldout_nll,
                    "train_tokens": cal.train_tokens,
                    "file": out.join("calibration.json"),
                })
            );
            Ok(())
        }
        Command::Theory { config, out } => {
            let cfg = experiment::Config::load(&config)?;
            let out = out.unwrap_or_else(|| experiment::default_out(&config));
            let dir = report::theory::run(&cfg, &out)?;
            println!("{}", dir.join("report.html").display());
            Ok(())
        }
        Command::Generate(a) => tools::generate(a),
        Command::Eval(a) => tools::eval(a),
        Command::Export(a) => tools::export(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchCorpus(a) => bench::run_corpus(a),
        Command::GpuCheck(a) => gpucheck::run(a),
    }
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    if let Err(e) = execute(cli) {
        // One line: what went wrong, with its causes, and (in the messages) what to do.
        eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
        // Chains left to other processes are not a failure a scheduler should give up on.
        let busy = e
            .chain()
            .filter_map(|c| c.downcast_ref::<experiment::Error>())
            .any(|x| x.busy().is_some());
        std::process::exit(if busy { experiment::BUSY_EXIT } else { 1 });
    }
}
