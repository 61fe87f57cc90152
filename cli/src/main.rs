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
    // SAFETY: no other thread exists yet (the runtime and the logger's
    // writer are created below).
    let scratch = unsafe { sluice_cli::contain_tmpdir() };
    let log = sluice_cli::load_config(&cli)
        .map(|c| c.log)
        .unwrap_or_else(|_| sluice_core::config::DEFAULT_LOG.into());
    let filter = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or(log);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::new(filter))
        .init();
    let runtime = match sluice_cli::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(sluice_cli::dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", sluice_core::error::render(e.as_ref()));
            ExitCode::FAILURE
        }
    };
    // Executors may still hold files open; stop them before removing.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    drop(scratch);
    code
}
