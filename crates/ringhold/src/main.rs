//! The `ringhold` binary: `serve` (the echo server), `load` (the load generator), `doctor` (finds the
//! limits that stop a million connections). This crate parses flags, sets up logging, limits, listeners,
//! shard threads and signals; the engines and the connection core live in their own crates.

mod cli;
mod doctor;
mod listen;
mod rlimit;
mod serve;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging();
    match cli.command {
        cli::Command::Serve(args) => serve::run(*args),
        cli::Command::Load(args) => ringhold_load::run(*args),
        cli::Command::Doctor(args) => doctor::run(args),
    }
}

/// tracing to stderr; `RUST_LOG` (or `RINGHOLD_LOG`) sets the level, `info` by default.
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RINGHOLD_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
