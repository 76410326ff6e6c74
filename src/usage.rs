//! What a run used of the machine, for the figures `ingest` reports the way
//! `time -v` would: the process's CPU time and peak memory.

use std::time::Duration;

/// Readings taken when a run starts, for [`Mark::usage`] to compare with at its end.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    process_ticks: Option<u64>,
}

/// What a run used; each reading is `None` where the system does not offer it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// CPU time of every thread of the process, user and system.
    pub cpu: Option<Duration>,
    pub peak_memory_bytes: Option<u64>,
}

impl Mark {
    pub fn now() -> Self {
        Self { process_ticks: process_ticks() }
    }

    /// What the process used since this mark.
    pub fn usage(&self) -> Usage {
        let cpu = self.process_ticks.zip(process_ticks()).map(|(then, now)| ticks_to_duration(now.saturating_sub(then)));
        Usage { cpu, peak_memory_bytes: peak_memory_bytes() }
    }
}

fn ticks_to_duration(ticks: u64) -> Duration {
    #[cfg(target_os = "linux")]
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    #[cfg(not(target_os = "linux"))]
    let per_second = 100;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// User plus system time of the process in clock ticks, threads that ended included.
fn process_ticks() -> Option<u64> {
    parse_process_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// `/proc/PID/stat`: the command name in parentheses may hold spaces and
/// parentheses itself, so fields are counted from the last `)`; utime and stime
/// are the 14th and 15th fields, the 12th and 13th after it.
fn parse_process_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// Peak resident memory of this process (Linux).
fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ticks_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (contactd (x) y) R 1 4242 4242 0 -1 4194304 100 0 0 0 1234 56 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_process_ticks(stat), Some(1290));
        assert_eq!(parse_process_ticks("4242 (short) R 1"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_run_that_burns_cpu_reports_its_cpu_time_and_memory() {
        let mark = Mark::now();
        // Clock ticks are coarse: spin until one is counted, within a generous bound.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        let mut usage = mark.usage();
        while usage.cpu.is_some_and(|cpu| cpu.is_zero()) && std::time::Instant::now() < deadline {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
            usage = mark.usage();
        }
        assert!(usage.cpu.is_some_and(|cpu| !cpu.is_zero()), "{usage:?}");
        assert!(usage.peak_memory_bytes.is_some_and(|peak| peak > 0), "{usage:?}");
    }
}
