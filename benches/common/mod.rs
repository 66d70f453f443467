//! What the benchmarks that measure stalls share: latency samples, percentiles, and the
//! server's own time for a locked transaction. (Each bench uses part of it.)
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// One statement of the steady load: when it began and how long it took.
#[derive(Clone, Copy)]
pub struct Sample {
    pub start: Instant,
    pub latency: Duration,
}

/// The `p` quantile (0..=1) of sorted latencies; zero when there are none.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The server's CPU and elapsed time (ms) for the last locked flip transaction logged in
/// `log` from byte `from` on: `log_statement_stats` lines, then the statement. The part that
/// holds the live locks is the last round trip that begins the transaction or takes the locks
/// (what needs no lock of the live relations goes first, in a round trip of its own).
pub fn locked_cpu(log: &std::path::Path, from: u64) -> Option<(f64, f64)> {
    let text = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned();
    let mut usage: Option<(f64, f64)> = None;
    let mut found = None;
    for line in text.lines() {
        if line.contains("QUERY STATISTICS") {
            usage = None;
        } else if usage.is_none() && line.contains(" s user, ") && line.contains(" s elapsed") {
            // `!	0.012345 s user, 0.001234 s system, 0.020000 s elapsed`
            let nums: Vec<f64> = line
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .filter_map(|x| x.parse().ok())
                .collect();
            if nums.len() >= 3 {
                usage = Some(((nums[0] + nums[1]) * 1000.0, nums[2] * 1000.0));
            }
        } else if line.contains("STATEMENT:  BEGIN; SET LOCAL lock_timeout")
            || line.contains("STATEMENT:  LOCK TABLE ")
            // (The live locks' step, bounded by lock_timeout as a whole, after work on green.)
            || line.contains("STATEMENT:  SET LOCAL statement_timeout")
        {
            found = usage.or(found);
        }
    }
    found
}
