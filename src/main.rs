//! The tracknum binary: read the configuration, start logging, run until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use tracknum::{Application, Config};

// Requests allocate small short-lived buffers; mimalloc serves them faster than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    no_transparent_huge_pages();
    let config = match Config::load() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("tracknum: {message}");
            return ExitCode::from(2);
        }
    };
    let _log_writer = tracknum::telemetry::init(config.log_format);
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(err) => {
            eprintln!("tracknum: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tracknum: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process. mimalloc asks for them; each first touch
/// of a 2 MiB page then zeroes all of it, and redb's page buffers come and go often enough that
/// this was half the embedded import's kernel time. Measured in one run (release, 2 cores):
/// import of 300,000 rows 32.5k -> 37.5k rows/s, and `ratio.sh` embedded 66,965 -> 69,488
/// requests/s, p99 2.75 -> 2.26 ms. (`MIMALLOC_ALLOW_THP=0` does the same, but is read before
/// `main` runs.)
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
