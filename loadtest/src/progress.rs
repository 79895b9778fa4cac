//! Progress while the run goes on: a bar with the live rate on a terminal, a line every five
//! seconds otherwise (CI logs), nothing with --quiet.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::run::Run;

/// Runs until `done` fires; draws on stderr.
pub async fn show(run: Arc<Run>, quiet: bool, done: tokio::sync::watch::Receiver<bool>) {
    if quiet {
        return;
    }
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(5)
    };
    let bar = terminal.then(|| {
        let bar = ProgressBar::new(1000);
        bar.set_style(
            ProgressStyle::with_template("{elapsed:>4} [{bar:32}] {percent:>3}%  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    });
    let mut done = done;
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    let (mut last_at, mut last_done) = (Instant::now(), 0);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = done.changed() => break,
        }
        let now = Instant::now();
        let finished = run.live.done.load(Ordering::Relaxed);
        let errors = run.live.errors.load(Ordering::Relaxed);
        let rate = (finished - last_done) as f64 / (now - last_at).as_secs_f64();
        (last_at, last_done) = (now, finished);
        let line = format!("{finished} requests  {rate:.0}/s  {errors} errors");
        match &bar {
            Some(bar) => {
                bar.set_position((run.plan.progress(now, finished) * 1000.0) as u64);
                bar.set_message(line);
            }
            None => eprintln!(
                "loadtest: {:>3.0}%  {line}",
                run.plan.progress(now, finished) * 100.0
            ),
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}
