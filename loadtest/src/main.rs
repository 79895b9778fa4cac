//! `loadtest`: drives a tracknum deployment with keep-alive connections, in closed or open
//! loop, checks every number that comes back, and reports rate, latency and any duplicate.

mod args;
mod check;
mod client;
mod ledger;
mod progress;
mod report;
mod run;
mod stats;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

use args::Args;
use client::Client;
use ledger::Ledger;
use report::{Context, Summary};
use run::{Live, Plan, Run};
use stats::Stats;

fn main() -> ExitCode {
    let args = Args::parse();
    let client = match args.target().and_then(|t| Client::new(t, args.timeout)) {
        Ok(client) => client,
        Err(message) => {
            eprintln!("loadtest: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let summary = runtime.block_on(drive(&args, client));
    if args.json {
        match serde_json::to_string(&summary) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("loadtest: cannot write the summary: {e}"),
        }
    } else {
        print!("{}", summary.human());
    }
    if summary.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn drive(args: &Args, client: Client) -> Summary {
    let target = client.target();
    let label = format!("{} {}", target.method, target.url);
    let started_at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let per_reply = target.numbers_per_reply(args.batch_size);
    let start = Instant::now();
    let run = Arc::new(Run {
        per_reply,
        plan: Plan::new(
            start,
            args.requests,
            args.run_for(),
            args.rate,
            args.timeout,
        ),
        client,
        ledger: Ledger::new(),
        live: Live::default(),
    });

    let (finished, finished_rx) = tokio::sync::watch::channel(false);
    let progress = tokio::spawn(progress::show(run.clone(), args.quiet, finished_rx));
    let interrupt = {
        let run = run.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("loadtest: interrupted; finishing the requests in flight");
                run.plan.stop();
            }
        })
    };
    let workers: Vec<_> = (0..args.concurrency)
        .map(|id| tokio::spawn(run::worker(run.clone(), id)))
        .collect();
    let mut stats = Stats::default();
    for worker in workers {
        match worker.await {
            Ok(worker_stats) => stats.merge(&worker_stats),
            Err(e) => eprintln!("loadtest: a worker failed: {e}"),
        }
    }
    stats.unsent = run.plan.unsent();
    let _ = finished.send(true);
    let _ = progress.await;
    interrupt.abort();

    Summary::new(
        &stats,
        Context {
            target: label,
            connections: args.concurrency,
            target_rate: args.rate,
            started_at_unix_ms,
            // Up to the last reply, so a slow straggler's wait counts but idle time does not.
            elapsed: if stats.last_end.is_zero() {
                start.elapsed()
            } else {
                stats.last_end
            },
            numbers: run.ledger.numbers(),
            duplicates: run.ledger.duplicates(),
            duplicate_examples: run.ledger.duplicate_reports(),
            max_error_rate: args.max_error_rate,
        },
    )
}
