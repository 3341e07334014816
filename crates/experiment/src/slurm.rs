//! `collapse-lab slurm`: a Slurm job array for a run, one task per chain. Every task is a plain
//! `collapse-lab run` of the run directory's frozen config with `--only SETTING/REP`, so a task that is
//! preempted and requeued resumes from its last checkpoint, tasks never contend for a chain (each has its own
//! lock), and `collapse-lab report` works on the directory while they run.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::plan::{chains, parse_only};
use crate::rundir::{write_atomic, RunDir};
use crate::{invalid, io, Result};

/// What the job array runs and asks Slurm for.
#[derive(Debug, Clone)]
pub struct SlurmArgs {
    /// The experiment's TOML config.
    pub config: PathBuf,
    /// The run directory, on storage every node sees.
    pub out: PathBuf,
    pub partition: Option<String>,
    /// GPUs per task (`--gres=gpu:G`); tasks then run on `cuda`.
    pub gpus_per_task: Option<u32>,
    /// Wall time per task, e.g. 02:00:00.
    pub time: String,
    pub cpus_per_task: u32,
    /// Data source and tokenizer overriding the config's (frozen into the run directory's config).
    pub data: Option<String>,
    pub tokenizer: Option<String>,
    /// Only SETTING or SETTING/REP.
    pub only: Option<String>,
    /// At most this many tasks at once (`--array=...%N`).
    pub max_running: Option<u32>,
    /// Allow tasks on another device than the run directory's frozen config names.
    pub switch_device: bool,
}

/// Seconds a task whose chain is busy waits before it requeues itself, unless `COLLAPSE_BUSY_WAIT` (in the
/// submitting environment, which sbatch passes on) says otherwise.
const BUSY_WAIT_S: u32 = 120;

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(std::path::absolute(p).map_err(io(|| format!("cannot resolve {}", p.display())))?)
}

/// Writes `OUT/slurm/collapse-lab.sbatch` and prints its path.
pub fn write(a: SlurmArgs) -> Result<()> {
    let mut cfg = Config::load(&a.config)?;
    if let Some(d) = &a.data {
        cfg.data.source = d.clone();
    }
    if let Some(t) = &a.tokenizer {
        cfg.data.tokenizer = t.clone();
    }
    if a.gpus_per_task.is_some() {
        cfg.experiment.device = "cuda".into();
    }
    let sel = parse_only(a.only.as_deref(), &cfg)?;
    let out = absolute(&a.out)?;
    // The device is no part of the frozen config's identity (a run may move between devices), so a
    // directory frozen for the CPU would quietly give GPU tasks the CPU: say so unless told.
    let device = cfg.experiment.device.clone();
    if out.join("config.toml").exists() {
        let frozen = crate::rundir::frozen_config(&out)?;
        if frozen.experiment.device != device && !a.switch_device {
            invalid!(
                "{} was started on device {:?}; these tasks would run on {device:?}: pass --switch-device to \
                 move it (each round's metrics record its device), or use another --out",
                out.display(),
                frozen.experiment.device
            );
        }
    }
    // Freeze the config now: every task runs exactly it, and a changed config is refused here, not on a node.
    RunDir::open(&out, &cfg)?;
    let exe =
        std::env::current_exe().map_err(io(|| "cannot find the collapse-lab binary".into()))?;
    let tasks: Vec<String> = chains(&sel)
        .into_iter()
        .map(|(s, r)| format!("{}/{r}", s.name))
        .collect();
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut head = format!(
        "#!/bin/bash\n# {} chains of {} (written by `collapse-lab slurm`). Submit with: sbatch {}\n\
         #SBATCH --job-name=collapse-lab\n#SBATCH --array=0-{}{}\n#SBATCH --requeue\n#SBATCH --open-mode=append\n\
         #SBATCH --output={}/slurm/logs/%A_%a.log\n#SBATCH --time={}\n#SBATCH --cpus-per-task={}\n",
        tasks.len(),
        a.config.display(),
        out.join("slurm/collapse-lab.sbatch").display(),
        tasks.len() - 1,
        a.max_running.map_or(String::new(), |m| format!("%{m}")),
        out.display(),
        a.time,
        a.cpus_per_task
    );
    if let Some(p) = &a.partition {
        head.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    if let Some(g) = a.gpus_per_task {
        head.push_str(&format!("#SBATCH --gres=gpu:{g}\n"));
    }
    let busy = crate::BUSY_EXIT;
    let script = format!(
        "{head}\nset -uo pipefail\nCHAINS=({})\nexport RAYON_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{}}}\n\
         CHAIN=${{CHAINS[$SLURM_ARRAY_TASK_ID]}}\n\
         # A requeued task starts again here and resumes its chain from the last checkpoint.\n\
         {} run {} --out {} --device {} --only \"$CHAIN\"\nstatus=$?\n\
         # {busy}: the chain is held by another process (a dead node's lock the file system has not released\n\
         # yet, or a second submission): wait, then requeue this task rather than end it COMPLETED undone.\n\
         if [ \"$status\" -eq {busy} ]; then\n\
         \x20 echo \"collapse-lab: chain $CHAIN is busy in another process; requeueing task \
         ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} in ${{COLLAPSE_BUSY_WAIT:-{BUSY_WAIT_S}}} s\" >&2\n\
         \x20 sleep \"${{COLLAPSE_BUSY_WAIT:-{BUSY_WAIT_S}}}\"\n\
         \x20 scontrol requeue \"${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}\"\n\
         fi\nexit \"$status\"\n",
        tasks.join(" "),
        a.cpus_per_task,
        q(&exe.to_string_lossy()),
        q(&out.join("config.toml").to_string_lossy()),
        q(&out.to_string_lossy()),
        q(&device),
    );
    let path = out.join("slurm/collapse-lab.sbatch");
    std::fs::create_dir_all(out.join("slurm/logs")).map_err(io(|| {
        format!("cannot create {}", out.join("slurm/logs").display())
    }))?;
    write_atomic(&path, script.as_bytes())?;
    println!("{}", path.display());
    Ok(())
}
