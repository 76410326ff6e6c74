//! What one event costs as the identifiers it carries grow: the same number of
//! identifiers (CONTACTD_BENCH_IDENTIFIERS, default 20000) arrives as events of
//! 1, 10, 100 and 1,000 e-mails each (past 100, the default most an event may
//! carry, with `limits.identifiers_per_event` raised as an operator would), each event
//! a new customer, into a fresh SQLite store in units of the same number of
//! identifiers. Per identifier: store bytes written, change bytes published,
//! peak heap while a unit is processed, and time. A cost that grows with the
//! square of an event's identifiers shows as a ratio to one-per-event that
//! grows with them; a linear one stays near 1.

use std::time::Instant;

use contactd::model::Limits;
use contactd::pipeline;
use contactd::publish::ChangeLog;
use contactd::source::{Origin, RawRecord};
use contactd::store::sqlite::{SqliteOptions, SqliteStore};
use peakmem_alloc::{PeakMemAlloc, PeakMemAllocTrait};
use serde_json::json;

#[global_allocator]
static ALLOCATOR: PeakMemAlloc<mimalloc::MiMalloc> = PeakMemAlloc::new(mimalloc::MiMalloc);

/// Identifiers per write unit, whatever the event size.
const UNIT_IDENTIFIERS: usize = 2_000;

struct Cost {
    store_bytes: f64,
    change_bytes: f64,
    peak_heap: f64,
    micros: f64,
}

fn events(per_event: usize, total: usize) -> Vec<RawRecord> {
    (0..total / per_event)
        .map(|n| {
            let emails: Vec<String> = (0..per_event).map(|k| format!("c{n}.{k}@example.com")).collect();
            let event = json!({
                "schema": "contact-event/v1", "event_id": format!("e{n}"), "tenant_id": "bench",
                "type": "identity.provided", "occurred_at": "2026-11-02T09:00:00Z", "channel": "chat",
                "session_id": format!("s{n}"), "identity": { "emails": emails },
            });
            RawRecord {
                payload: event.to_string().into_bytes(),
                origin: Origin { source: "bench".into(), partition: None, position: n as u64 },
            }
        })
        .collect()
}

fn directory_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).expect("dir").map(|entry| entry.expect("entry").metadata().expect("metadata").len()).sum()
}

fn measure(per_event: usize, total: usize) -> Cost {
    let records = events(per_event, total);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = SqliteStore::open(&dir.path().join("bench.sqlite3"), &SqliteOptions::default()).expect("store");
    let empty = directory_bytes(dir.path());
    let limits = Limits { identifiers_per_event: per_event.max(Limits::default().identifiers_per_event), ..Limits::default() };
    let mut peak_heap = 0;
    let started = Instant::now();
    for unit in records.chunks(UNIT_IDENTIFIERS / per_event) {
        // The peak counts from the reset: what the unit added to the heap at most.
        ALLOCATOR.reset_peak_memory();
        pipeline::process_batch_within(&mut store, unit, &limits).expect("unit");
        peak_heap = peak_heap.max(ALLOCATOR.get_peak_memory());
    }
    let elapsed = started.elapsed();
    let change_bytes: usize = store
        .read_after(0, usize::MAX)
        .expect("outbox")
        .iter()
        .flat_map(|unit| &unit.changes)
        .map(|change| serde_json::to_vec(change).expect("change").len())
        .sum();
    drop(store);
    let total = total as f64;
    Cost {
        store_bytes: (directory_bytes(dir.path()) - empty) as f64 / total,
        change_bytes: change_bytes as f64 / total,
        peak_heap: peak_heap as f64 / UNIT_IDENTIFIERS as f64,
        micros: elapsed.as_secs_f64() * 1e6 / total,
    }
}

fn main() {
    let total = std::env::var("CONTACTD_BENCH_IDENTIFIERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let costs: Vec<(usize, Cost)> =
        [1, 10, 100, 1_000].into_iter().map(|per_event| (per_event, measure(per_event, total))).collect();
    let base = &costs[0].1;
    println!(
        "contactd identifiers benchmark, {total} identifiers, units of {UNIT_IDENTIFIERS}; per identifier, and ratio to 1 per event"
    );
    println!(
        "{:>17} {:>12} {:>6} {:>12} {:>6} {:>12} {:>6} {:>8} {:>6}",
        "ids per event", "store bytes", "ratio", "change bytes", "ratio", "peak heap", "ratio", "µs", "ratio"
    );
    for (per_event, cost) in &costs {
        println!(
            "{per_event:>17} {:>12.0} {:>6.2} {:>12.0} {:>6.2} {:>12.0} {:>6.2} {:>8.1} {:>6.2}",
            cost.store_bytes,
            cost.store_bytes / base.store_bytes,
            cost.change_bytes,
            cost.change_bytes / base.change_bytes,
            cost.peak_heap,
            cost.peak_heap / base.peak_heap,
            cost.micros,
            cost.micros / base.micros,
        );
    }
}
