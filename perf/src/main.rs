use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = gyre_perf::cli::Cli::parse();
    gyre_perf::cli::init_logging();
    match gyre_perf::cli::run(cli) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("gyre-perf: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
