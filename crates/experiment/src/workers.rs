//! `run --jobs N`: N worker processes pull chains (one setting's repetition each) from the grid, setting by
//! setting, each a `collapse-lab run --only SETTING/REP` on the same run directory.
//!
//! Processes rather than threads: candle and gemm use one global rayon pool per process, so threads would
//! share (and fight over) one pool, while a process per worker gets its own pool of `cores / N` threads,
//! its own device (`--devices`), and its own fate: a worker that crashes takes one chain down, which the
//! next run resumes. The run directory's per-chain locks keep workers (and any other process) apart.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::plan::{chains, Selection};
use crate::{io, Error, Result};

/// What every worker is given beside its chain.
pub struct WorkerArgs<'a> {
    pub config: &'a Path,
    pub out: &'a Path,
    /// `--data`, `--tokenizer` as given to the parent.
    pub passthrough: Vec<String>,
    /// One device per worker, in turn (`cpu` or `cuda:N`).
    pub devices: Vec<String>,
}

pub fn run_jobs(args: WorkerArgs, sel: &Selection, jobs: usize) -> Result<()> {
    let exe =
        std::env::current_exe().map_err(io(|| "cannot find the collapse-lab binary".into()))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / jobs).max(1);
    let mut queue: std::collections::VecDeque<String> = chains(sel)
        .into_iter()
        .map(|(s, r)| format!("{}/{r}", s.name))
        .collect();
    eprintln!(
        "[collapse-lab] {} chains on {jobs} workers, {threads} thread(s) each",
        queue.len()
    );
    let mut running: Vec<(usize, String, Child, std::thread::JoinHandle<String>)> = Vec::new();
    let mut failed = Vec::new();
    let mut busy = Vec::new();
    let mut next_worker = 0;
    let mut free: Vec<usize> = (0..jobs).rev().collect();
    loop {
        while let (Some(w), Some(chain)) = (free.last().copied(), queue.front().cloned()) {
            free.pop();
            queue.pop_front();
            let device = &args.devices[w % args.devices.len()];
            let mut cmd = Command::new(&exe);
            // Workers die with the parent (Ctrl-C, SIGKILL, a lost node), so no orphan keeps a chain's lock.
            #[cfg(target_os = "linux")]
            {
                use std::os::unix::process::CommandExt;
                let parent = std::process::id() as libc::pid_t;
                // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        if libc::getppid() != parent {
                            libc::_exit(1);
                        }
                        Ok(())
                    });
                }
            }
            let mut child = cmd
                .arg("run")
                .arg(args.config)
                .arg("--out")
                .arg(args.out)
                .args(["--only", &chain, "--device", device])
                .args(&args.passthrough)
                .env("RAYON_NUM_THREADS", threads.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(io(|| "cannot start a worker process".into()))?;
            let stderr = child.stderr.take().expect("piped");
            let label = format!("[worker {w} {chain}]");
            // Every worker's progress, one prefixed line at a time; the last line is kept for errors.
            let reader = std::thread::spawn(move || {
                let mut last = String::new();
                for line in BufReader::new(stderr)
                    .lines()
                    .map_while(std::io::Result::ok)
                {
                    let line = line.trim_start_matches("[collapse-lab] ").to_string();
                    eprintln!("{label} {line}");
                    last = line;
                }
                last
            });
            running.push((w, chain, child, reader));
            next_worker += 1;
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut i = 0;
        while i < running.len() {
            let status = running[i]
                .2
                .try_wait()
                .map_err(io(|| format!("cannot wait for worker {}", running[i].0)))?;
            if let Some(status) = status {
                let (w, chain, _, reader) = running.swap_remove(i);
                let last = reader.join().unwrap_or_default();
                match exit_reason(status, &last) {
                    Exit::Done => {}
                    Exit::Busy => busy.push(chain.to_string()),
                    Exit::Failed(why) => failed.push((chain.to_string(), why)),
                }
                free.push(w);
            } else {
                i += 1;
            }
        }
    }
    if !failed.is_empty() {
        // Chains failing for one reason (a missing data file fails them all) are named once, with the reason.
        let mut reasons: Vec<(String, Vec<String>)> = Vec::new();
        for (chain, last) in &failed {
            match reasons.iter_mut().find(|(r, _)| r == last) {
                Some((_, chains)) => chains.push(chain.clone()),
                None => reasons.push((last.clone(), vec![chain.clone()])),
            }
        }
        let groups: Vec<String> = reasons
            .iter()
            .map(|(reason, chains)| {
                let named = if chains.len() > 3 {
                    format!("{} and {} more", chains[..3].join(", "), chains.len() - 3)
                } else {
                    chains.join(", ")
                };
                format!("{named}: {reason}")
            })
            .collect();
        return Err(Error::WorkersFailed(format!(
            "{} of {next_worker} chains failed ({}); run again to resume them",
            failed.len(),
            groups.join("; ")
        )));
    }
    if !busy.is_empty() {
        return Err(crate::ChainsBusy {
            chains: busy,
            root: args.out.to_path_buf(),
        }
        .into());
    }
    eprintln!(
        "[collapse-lab] all {next_worker} chains done (see `collapse-lab report {}`)",
        args.out.display()
    );
    Ok(())
}

enum Exit {
    Done,
    /// Its chain was held by another process (see [`crate::BUSY_EXIT`]).
    Busy,
    /// Why, in one line: its own error line, or the signal that killed it.
    Failed(String),
}

/// What a worker's exit status says, with its last line of output.
fn exit_reason(status: std::process::ExitStatus, last: &str) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return Exit::Done;
    }
    if status.code() == Some(crate::BUSY_EXIT) {
        return Exit::Busy;
    }
    match status.signal() {
        // A worker killed by a signal wrote no error line: its last line is progress, not a reason.
        Some(sig) => Exit::Failed(format!(
            "killed by signal {} ({}){}",
            signal_name(sig),
            signal_description(sig),
            signal_advice(sig)
        )),
        None => Exit::Failed(last.trim_start_matches("error: ").to_string()),
    }
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig).map_or(format!("{sig}"), |s| s.as_str().to_string())
}

fn signal_description(sig: i32) -> String {
    // SAFETY: strsignal returns a pointer to a static or thread-local string, read at once.
    let s = unsafe { libc::strsignal(sig) };
    if s.is_null() {
        return "unknown signal".into();
    }
    // SAFETY: a non-null strsignal result is a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(s) }
        .to_string_lossy()
        .into_owned()
}

/// What to do about the usual signals; the chain's finished phases are kept either way.
fn signal_advice(sig: i32) -> &'static str {
    match sig {
        libc::SIGXFSZ => {
            ": a file-size limit (ulimit -f) stopped a write; raise it and run again to resume"
        }
        libc::SIGKILL => {
            ": the out-of-memory killer or a scheduler's limit, most often (see dmesg or the job's log); \
             run again to resume, with fewer --jobs if memory ran out"
        }
        libc::SIGXCPU => ": a CPU-time limit (ulimit -t); raise it and run again to resume",
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGABRT => {
            ": a crash; run again to resume, and report it with the chain's log if it repeats"
        }
        _ => ": run again to resume",
    }
}
