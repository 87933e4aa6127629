//! A fixed-bucket latency histogram that the data path records into with a few relaxed atomic
//! adds and no allocation, rendered in the Prometheus text format at scrape time. (The
//! exporter's own histograms keep every sample until the next scrape, which at hundreds of
//! thousands of requests a second is memory nobody should pay.)

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds: from a loopback round trip to a timeout.
const BOUNDS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Observations at or under each bound (not cumulative; summed when rendered).
    buckets: [AtomicU64; BOUNDS_US.len()],
    /// Observations over the last bound.
    over: AtomicU64,
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records `n` observations of `took` (a run of `n` requests answered together).
    pub(crate) fn record(&self, took: Duration, n: u64) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let slot = BOUNDS_US.iter().position(|&b| us <= b);
        match slot {
            Some(i) => self.buckets[i].fetch_add(n, Ordering::Relaxed),
            None => self.over.fetch_add(n, Ordering::Relaxed),
        };
        self.sum_us
            .fetch_add(us.saturating_mul(n), Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    /// The `_bucket`, `_sum` and `_count` lines of metric `name`, each with `labels`
    /// (`key="value"` pairs, comma-separated, or empty).
    pub(crate) fn render(&self, name: &str, labels: &str) -> String {
        let mut out = String::new();
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in BOUNDS_US.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.over.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_sum_counts_every_request() {
        let h = Histogram::default();
        h.record(Duration::from_micros(80), 3);
        h.record(Duration::from_micros(300), 1);
        h.record(Duration::from_secs(10), 1);
        let text = h.render("x_seconds", r#"u="a""#);
        assert!(
            text.contains("x_seconds_bucket{u=\"a\",le=\"0.0001\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{u=\"a\",le=\"0.00025\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{u=\"a\",le=\"0.0005\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{u=\"a\",le=\"5\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{u=\"a\",le=\"+Inf\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_sum{u=\"a\"} 10.00054\n"), "{text}");
        assert!(text.contains("x_seconds_count{u=\"a\"} 5\n"), "{text}");
    }
}
