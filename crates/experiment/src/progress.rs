//! Progress on stderr: two bars on a terminal (the whole grid with an ETA, and the current phase), plain log
//! lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Progress {
    bars: Option<(MultiProgress, ProgressBar, ProgressBar)>,
    round: String,
    last_log: std::cell::Cell<Instant>,
}

impl Progress {
    pub fn new(total_rounds: u64, done_rounds: u64) -> Self {
        let bars = std::io::stderr().is_terminal().then(|| {
            let multi = MultiProgress::new();
            let grid = multi.add(ProgressBar::new(total_rounds));
            grid.set_style(
                ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} rounds  {elapsed} elapsed, ETA {eta}  {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            grid.set_prefix("grid");
            grid.set_position(done_rounds);
            let phase = multi.add(ProgressBar::new(1));
            phase.set_style(
                ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len}  {msg}").expect("valid template").progress_chars("=> "),
            );
            (multi, grid, phase)
        });
        if bars.is_none() {
            eprintln!("[collapse-lab] {done_rounds}/{total_rounds} rounds already done");
        }
        Self {
            bars,
            round: String::new(),
            last_log: std::cell::Cell::new(Instant::now()),
        }
    }

    pub fn start_round(&mut self, label: String) {
        match &self.bars {
            Some((_, grid, _)) => grid.set_message(label.clone()),
            None => eprintln!("[collapse-lab] {label}: start"),
        }
        self.round = label;
    }

    pub fn phase(&self, name: &str, total: u64) {
        match &self.bars {
            Some((_, _, bar)) => {
                bar.set_prefix(name.to_string());
                bar.set_length(total);
                bar.set_position(0);
                bar.set_message("");
            }
            None => eprintln!("[collapse-lab] {}: {name}", self.round),
        }
    }

    /// Updates the phase bar; without a terminal, logs at most every 10 seconds (and at the end).
    pub fn update(&self, pos: u64, total: u64, msg: String) {
        match &self.bars {
            Some((_, _, bar)) => {
                bar.set_position(pos);
                bar.set_message(msg);
            }
            None => {
                if pos == total || self.last_log.get().elapsed() > Duration::from_secs(10) {
                    self.last_log.set(Instant::now());
                    eprintln!("[collapse-lab] {}: {pos}/{total} {msg}", self.round);
                }
            }
        }
    }

    pub fn note(&self, msg: &str) {
        match &self.bars {
            Some((multi, _, _)) => {
                let _ = multi.println(format!("{}: {msg}", self.round));
            }
            None => eprintln!("[collapse-lab] {}: {msg}", self.round),
        }
    }

    pub fn finish_round(&self) {
        match &self.bars {
            Some((_, grid, _)) => grid.inc(1),
            None => eprintln!("[collapse-lab] {}: done", self.round),
        }
    }

    pub fn finish(&self) {
        if let Some((_, grid, phase)) = &self.bars {
            phase.finish_and_clear();
            grid.finish();
        }
    }
}
