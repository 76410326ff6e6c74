//! The `contactd` binary: parse flags, start telemetry, load config, run.

use clap::Parser;

/// The pipeline allocates many short-lived strings per event; mimalloc handles
/// that pattern markedly better than the system allocator (measured in the benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = contactd::cli::Cli::parse();
    let config = match contactd::config::Config::load(cli.config.as_deref(), &cli.overrides()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("contactd: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    contactd::telemetry::init(&config.log);
    match contactd::app::run(cli.command, &config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) if contactd::app::is_broken_pipe(&error) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("contactd: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
