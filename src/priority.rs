//! Background threads make way for the thread that writes the store, which sets
//! the pace of `ingest`: on two cores, the index's threads and the WAL
//! checkpoint kept it waiting for a core for a sixth of the run (measured with
//! `/proc/<tid>/schedstat`: 3.8 s runnable but not running in a 23 s run).

/// How much lower than normal a background thread runs (a nice value). At 10 a
/// thread gets about a tenth of a core that it contends for with one at normal
/// priority, and all of it when nothing else wants it.
const BACKGROUND_NICENESS: i32 = 10;

/// Lowers the calling thread's scheduling priority, and with it that of the
/// threads it starts afterwards, which inherit it (tantivy's indexing and merge
/// threads, started by the thread that opens the index writer). It only ever
/// lowers, so it needs no privilege; where it fails, the thread keeps its
/// priority and says so at debug level.
pub fn run_this_thread_in_background() {
    #[cfg(target_os = "linux")]
    {
        // On Linux a nice value belongs to a thread, not to the process.
        let thread = rustix::thread::gettid();
        let lowered = rustix::process::getpriority_process(Some(thread))
            .and_then(|nice| rustix::process::setpriority_process(Some(thread), nice.max(BACKGROUND_NICENESS)));
        if let Err(error) = lowered {
            tracing::debug!(%error, "the thread keeps its scheduling priority");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn niceness() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[test]
    fn the_thread_and_the_threads_it_starts_run_lowered_and_others_do_not() {
        let normal = niceness();
        let (lowered, inherited) = std::thread::spawn(|| {
            run_this_thread_in_background();
            (niceness(), std::thread::spawn(niceness).join().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(lowered, normal.max(BACKGROUND_NICENESS));
        assert_eq!(inherited, lowered);
        assert_eq!(niceness(), normal, "the caller's priority is its own");
    }
}
