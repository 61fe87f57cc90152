//! `sluice`: run and submit SQL jobs, list, inspect and cancel them.

use std::process::ExitCode;

use clap::Parser;
use sluice_cli::args::Cli;

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
    sluice_cli::finish_main(log, sluice_cli::dispatch(cli), scratch)
}
