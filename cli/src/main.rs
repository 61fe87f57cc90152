//! `sluice`: run and submit SQL jobs, list, inspect and cancel them.

use std::process::ExitCode;

use clap::Parser;
use sluice_cli::args::Cli;
use tracing_subscriber::EnvFilter;

// mimalloc, as Ballista's own binaries use: Parquet encoding allocates a
// lot from many threads, and in the embedded cluster all executors share
// one process.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    sluice_core::alloc::tune(-1);
    let cli = Cli::parse();
    // Ballista's in-process executors put their shuffle files in a temporary
    // directory they never remove (the `TempDir` is dropped at once); on a
    // busy machine `/tmp` filled up with gigabytes per run. Giving this
    // process its own `TMPDIR`, removed on exit, keeps them contained. Set
    // before any thread starts: `set_var` is only sound single-threaded.
    let scratch = tempfile::Builder::new().prefix("sluice-run-").tempdir();
    if let Ok(dir) = &scratch {
        // SAFETY: no other thread exists yet (the runtime and the logger's
        // writer are created below).
        unsafe { std::env::set_var("TMPDIR", dir.path()) };
    }
    let log = sluice_cli::load_config(&cli)
        .map(|c| c.log)
        .unwrap_or_else(|_| sluice_core::config::DEFAULT_LOG.into());
    let filter = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or(log);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::new(filter))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 * 1024 * 1024)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(sluice_cli::dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Executors may still hold files open; stop them before removing.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    drop(scratch);
    code
}
