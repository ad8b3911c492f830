//! `ringhold load` (stub: being written).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Server to connect to.
    #[arg(long, env = "RINGHOLD_TARGET", default_value = "127.0.0.1:7000")]
    pub target: String,
}

pub fn run(_args: LoadArgs) -> ExitCode {
    eprintln!("ringhold load: not written yet");
    ExitCode::FAILURE
}
