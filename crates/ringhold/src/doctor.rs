//! `ringhold doctor` (stub: being written).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Connections the host should hold.
    #[arg(long, env = "RINGHOLD_DOCTOR_CONNECTIONS", default_value_t = 1_000_000)]
    pub connections: u64,
}

pub fn run(_args: DoctorArgs) -> ExitCode {
    eprintln!("ringhold doctor: not written yet");
    ExitCode::FAILURE
}
