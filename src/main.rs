//! The `contactd` binary: parse flags, start telemetry, load config, run.

use clap::Parser;

/// The pipeline allocates many short-lived strings per event; mimalloc handles
/// that pattern markedly better than the system allocator (measured in the benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h`, which libmimalloc-sys
/// does not name; the test below checks it is the option with its default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// A batch `ingest` keeps the memory it frees for reuse rather than handing it
/// back to the OS a second later: its writing thread frees and refills tens of
/// megabytes per write unit, and touching fresh pages again cost it about 8%
/// (paired 1,000,000-event runs: 48,200-49,100 against 52,500-52,700 events/s,
/// peak memory 750-790 against 910-1,030 MiB). Long-running commands keep the
/// default, so their memory shrinks after a burst.
fn keep_freed_memory() {
    #[expect(unsafe_code, reason = "sets one integer option; mimalloc has no safe wrapper for it")]
    // SAFETY: `mi_option_set` only stores the value; any thread may call it at any time.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}

fn main() -> std::process::ExitCode {
    let cli = contactd::cli::Cli::parse();
    if matches!(cli.command, contactd::cli::Command::Ingest(_)) {
        keep_freed_memory();
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_with_mimallocs_default_of_a_second() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            #[expect(unsafe_code, reason = "reads one integer option")]
            // SAFETY: `mi_option_get` only reads the option.
            let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
            assert_eq!(delay, 1000);
        }
    }
}
