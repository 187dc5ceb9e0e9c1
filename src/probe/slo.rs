//! From samples to a verdict: consecutive-failure threshold plus an optional window SLO
//! (success ratio and latency percentile over the last N seconds).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::experiment::duration::Dur;
use crate::plan::{ProbeSpec, WindowSloSpec};

use super::Sample;

/// A hard ceiling on the samples one window keeps, on top of eviction by age, so a tiny
/// interval over a long window cannot grow memory without bound. At the 1 ms extreme this
/// still covers over a minute of samples.
const MAX_WINDOW_SAMPLES: usize = 100_000;

/// Healthy, or failing with a reason people can read ("3 consecutive failures (threshold 3)",
/// "success ratio 0.80 < 0.99 over 10s (25 samples)", "p99 latency 412ms >= 300ms").
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Healthy,
    Failing { reason: String },
}

#[derive(Clone, Copy, Debug)]
struct WindowEntry {
    at: Instant,
    ok: bool,
    latency: Duration,
}

/// Tracks one probe's samples. Time is passed in, so tests can drive it deterministically.
pub struct SloTracker {
    failure_threshold: u32,
    consecutive_failures: u32,
    last_error: Option<String>,
    window: Option<WindowSloSpec>,
    /// Sorted by time, oldest first; only samples within `window` of the latest one.
    entries: VecDeque<WindowEntry>,
    /// How many of `entries` passed, kept in step so a verdict costs no scan.
    passed_in_window: usize,
}

impl SloTracker {
    pub fn new(spec: &ProbeSpec) -> SloTracker {
        SloTracker {
            // A threshold of 0 would fail before any sample; the strictest meaningful one is 1.
            failure_threshold: spec.failure_threshold.max(1),
            consecutive_failures: 0,
            last_error: None,
            window: spec.slo.clone(),
            entries: VecDeque::new(),
            passed_in_window: 0,
        }
    }

    /// Record a sample taken at `at` and return the verdict after it.
    pub fn record(&mut self, at: Instant, sample: &Sample) -> Verdict {
        if sample.ok {
            self.consecutive_failures = 0;
            self.last_error = None;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            self.last_error = sample.error.clone();
        }
        if self.window.is_some() {
            self.remember(at, sample);
        }

        let mut reasons = Vec::new();
        if self.consecutive_failures >= self.failure_threshold {
            reasons.push(format!(
                "{} consecutive failed samples (threshold {}); last: {}",
                self.consecutive_failures,
                self.failure_threshold,
                self.last_error.as_deref().unwrap_or("no error text")
            ));
        }
        if let Some(window) = &self.window {
            reasons.extend(window_breaches(
                window,
                &self.entries,
                self.passed_in_window,
            ));
        }
        if reasons.is_empty() {
            Verdict::Healthy
        } else {
            Verdict::Failing {
                reason: reasons.join("; "),
            }
        }
    }

    /// Consecutive failed samples right now.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    fn remember(&mut self, at: Instant, sample: &Sample) {
        let Some(window) = &self.window else { return };
        let entry = WindowEntry {
            at,
            ok: sample.ok,
            latency: sample.latency,
        };
        // Samples may arrive slightly out of order from concurrent probe tasks: insert in time
        // order (almost always at the end), so eviction only ever looks at the front.
        let position = self.entries.partition_point(|kept| kept.at <= at);
        self.entries.insert(position, entry);
        self.passed_in_window += usize::from(sample.ok);
        let latest = self.entries.back().map_or(at, |last| last.at);
        let oldest_kept = latest.checked_sub(window.window);
        while let Some(front) = self.entries.front().copied() {
            let too_old = oldest_kept.is_some_and(|oldest| front.at < oldest);
            if !too_old && self.entries.len() <= MAX_WINDOW_SAMPLES {
                break;
            }
            self.entries.pop_front();
            self.passed_in_window -= usize::from(front.ok);
        }
    }
}

/// Every window objective the samples currently breach, as readable reasons.
fn window_breaches(
    window: &WindowSloSpec,
    entries: &VecDeque<WindowEntry>,
    passed: usize,
) -> Vec<String> {
    let count = entries.len();
    if count == 0 || count < window.min_samples as usize {
        return Vec::new();
    }
    let over = format!("over the last {} ({count} samples)", Dur(window.window));
    let mut breaches = Vec::new();
    if let Some(target) = window.success_ratio {
        let ratio = passed as f64 / count as f64;
        if ratio < target {
            let (shown, target_shown) = distinct_decimals(ratio, target);
            breaches.push(format!("success ratio {shown} < {target_shown} {over}"));
        }
    }
    if let Some((percentile, bound)) = window.latency {
        let mut latencies: Vec<Duration> = entries.iter().map(|entry| entry.latency).collect();
        let observed = crate::units::nearest_rank(&mut latencies, percentile).unwrap_or_default();
        if observed >= bound {
            breaches.push(format!(
                "p{percentile} latency {} >= {} {over}",
                format_latency(observed),
                Dur(bound)
            ));
        }
    }
    breaches
}

/// Two ratios with as few decimals as still tell them apart ("0.80" and "0.90", but "0.994"
/// and "0.995"), so a breach never reads as "0.99 < 0.99".
fn distinct_decimals(a: f64, b: f64) -> (String, String) {
    for decimals in 2..6 {
        let (a_text, b_text) = (format!("{a:.decimals$}"), format!("{b:.decimals$}"));
        if a_text != b_text {
            return (a_text, b_text);
        }
    }
    (format!("{a:.6}"), format!("{b:.6}"))
}

/// The `max_latency` check every probe kind shares: why the sample fails, if it does.
pub fn exceeds_max_latency(latency: Duration, max_latency: Option<Duration>) -> Option<String> {
    let bound = max_latency.filter(|&bound| latency > bound)?;
    Some(format!(
        "latency {} > {}",
        format_latency(latency),
        Dur(bound)
    ))
}

/// An observed latency in milliseconds with one decimal ("412.3ms", "2ms"), rounded up so it
/// never reads as equal to a bound it exceeds.
pub fn format_latency(latency: Duration) -> String {
    let tenths = (latency.as_nanos().div_ceil(100_000)) as f64 / 10.0;
    format!("{tenths}ms")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Check, ProbeKind};

    fn spec(failure_threshold: u32, slo: Option<WindowSloSpec>) -> ProbeSpec {
        ProbeSpec {
            name: "api".into(),
            kind: ProbeKind::Tcp {
                address: "127.0.0.1:1".into(),
            },
            check: Check::default(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failure_threshold,
            slo,
        }
    }

    fn window(
        secs: u64,
        success_ratio: Option<f64>,
        latency: Option<(f64, Duration)>,
        min: u32,
    ) -> WindowSloSpec {
        WindowSloSpec {
            window: Duration::from_secs(secs),
            success_ratio,
            latency,
            min_samples: min,
        }
    }

    fn ok(ms: u64) -> Sample {
        Sample::pass(Duration::from_millis(ms), serde_json::json!({}))
    }

    fn failed(error: &str) -> Sample {
        Sample::fail(Duration::from_millis(5), None, error)
    }

    fn reason(verdict: Verdict) -> String {
        match verdict {
            Verdict::Failing { reason } => reason,
            Verdict::Healthy => panic!("expected a failing verdict"),
        }
    }

    #[test]
    fn streak_reaches_threshold_and_success_resets_it() {
        let mut tracker = SloTracker::new(&spec(3, None));
        let t0 = Instant::now();
        assert_eq!(
            tracker.record(t0, &failed("connection refused")),
            Verdict::Healthy
        );
        assert_eq!(
            tracker.record(t0, &failed("connection refused")),
            Verdict::Healthy
        );
        assert_eq!(tracker.consecutive_failures(), 2);
        assert_eq!(tracker.record(t0, &ok(1)), Verdict::Healthy);
        assert_eq!(tracker.consecutive_failures(), 0);

        tracker.record(t0, &failed("a"));
        tracker.record(t0, &failed("b"));
        assert_eq!(
            reason(tracker.record(t0, &failed("status 503 not in 200-299"))),
            "3 consecutive failed samples (threshold 3); last: status 503 not in 200-299"
        );
        assert_eq!(
            reason(tracker.record(t0, &failed("timed out after 2s"))),
            "4 consecutive failed samples (threshold 3); last: timed out after 2s"
        );
        assert_eq!(tracker.record(t0, &ok(1)), Verdict::Healthy);
        assert_eq!(tracker.consecutive_failures(), 0);
    }

    #[test]
    fn success_ratio_waits_for_min_samples() {
        // Threshold high enough that only the window can fail.
        let mut tracker = SloTracker::new(&spec(100, Some(window(10, Some(0.9), None, 10))));
        let t0 = Instant::now();
        // 8 passes, 2 failures: 0.80 < 0.90, but only once the 10th sample arrives.
        for i in 0..9u64 {
            let sample = if i < 2 { failed("x") } else { ok(1) };
            assert_eq!(
                tracker.record(t0 + Duration::from_millis(i * 100), &sample),
                Verdict::Healthy
            );
        }
        assert_eq!(
            reason(tracker.record(t0 + Duration::from_millis(900), &ok(1))),
            "success ratio 0.80 < 0.90 over the last 10s (10 samples)"
        );
        // More passes: 9/11 = 0.82, 10/12 = 0.83, still failing; enough of them recover it.
        let verdict = tracker.record(t0 + Duration::from_millis(1000), &ok(1));
        assert_eq!(
            reason(verdict),
            "success ratio 0.82 < 0.90 over the last 10s (11 samples)"
        );
        let verdict = tracker.record(t0 + Duration::from_millis(1100), &ok(1));
        assert_eq!(
            reason(verdict),
            "success ratio 0.83 < 0.90 over the last 10s (12 samples)"
        );
        for i in 12..30u64 {
            tracker.record(t0 + Duration::from_millis(i * 100), &ok(1));
        }
        assert_eq!(
            tracker.record(t0 + Duration::from_secs(3), &ok(1)),
            Verdict::Healthy
        );
    }

    #[test]
    fn close_ratios_are_printed_distinguishably() {
        assert_eq!(
            distinct_decimals(0.994, 0.995),
            ("0.994".into(), "0.995".into())
        );
        assert_eq!(distinct_decimals(0.8, 0.9), ("0.80".into(), "0.90".into()));
    }

    #[test]
    fn latency_percentile_uses_nearest_rank_and_includes_failures() {
        let bound = Duration::from_millis(300);
        let mut tracker =
            SloTracker::new(&spec(100, Some(window(10, None, Some((99.0, bound)), 5))));
        let t0 = Instant::now();
        // 99 fast samples and one slow one: nearest-rank p99 of 100 is the 99th value (fast).
        for i in 0..99u64 {
            assert_eq!(
                tracker.record(t0 + Duration::from_millis(i), &ok(10)),
                Verdict::Healthy
            );
        }
        let slow_failure = Sample::fail(Duration::from_millis(500), None, "timed out");
        assert_eq!(
            tracker.record(t0 + Duration::from_millis(99), &slow_failure),
            Verdict::Healthy
        );
        // A second slow sample makes p99 of 101 the 100th value: slow, counted although it failed.
        let slow_failure = Sample::fail(Duration::from_micros(412_250), None, "timed out");
        assert_eq!(
            reason(tracker.record(t0 + Duration::from_millis(100), &slow_failure)),
            "p99 latency 412.3ms >= 300ms over the last 10s (101 samples)"
        );
    }

    #[test]
    fn latency_equal_to_bound_breaches() {
        let mut values = vec![Duration::from_millis(300)];
        assert_eq!(
            crate::units::nearest_rank(&mut values, 99.0),
            Some(Duration::from_millis(300))
        );
        let bound = Duration::from_millis(300);
        let mut tracker =
            SloTracker::new(&spec(100, Some(window(10, None, Some((50.0, bound)), 1))));
        assert_eq!(
            reason(tracker.record(Instant::now(), &ok(300))),
            "p50 latency 300ms >= 300ms over the last 10s (1 samples)"
        );
    }

    #[test]
    fn old_samples_are_evicted() {
        let mut tracker = SloTracker::new(&spec(100, Some(window(10, Some(0.5), None, 3))));
        let t0 = Instant::now();
        for i in 0..5u64 {
            tracker.record(t0 + Duration::from_secs(i), &failed("x"));
        }
        assert!(matches!(
            tracker.record(t0 + Duration::from_secs(5), &ok(1)),
            Verdict::Failing { .. }
        ));
        // 20 s later every failure is older than the window: only the new passes count.
        let later = t0 + Duration::from_secs(25);
        for i in 0..3u64 {
            assert_eq!(
                tracker.record(later + Duration::from_secs(i), &ok(1)),
                Verdict::Healthy
            );
        }
        assert_eq!(tracker.entries.len(), 3);
        // A sample exactly `window` old is still inside; one older is gone.
        tracker.record(later + Duration::from_secs(12), &ok(1));
        assert_eq!(tracker.entries.len(), 2);
    }

    #[test]
    fn late_samples_are_placed_in_time_order() {
        let mut tracker = SloTracker::new(&spec(100, Some(window(10, Some(0.5), None, 1))));
        let t0 = Instant::now();
        tracker.record(t0 + Duration::from_secs(5), &ok(1));
        // Recorded late but taken earlier: still part of the window, and evicted by its age.
        assert!(matches!(
            tracker.record(t0 + Duration::from_secs(1), &failed("x")),
            Verdict::Healthy
        ));
        assert!(matches!(
            tracker.record(t0 + Duration::from_secs(2), &failed("x")),
            Verdict::Failing { .. }
        ));
        assert_eq!(tracker.entries.len(), 3);
        assert_eq!(
            tracker.record(t0 + Duration::from_secs(14), &ok(1)),
            Verdict::Healthy
        );
        assert_eq!((tracker.entries.len(), tracker.passed_in_window), (2, 2));
    }

    #[test]
    fn window_memory_is_capped() {
        let mut tracker = SloTracker::new(&spec(1, Some(window(3600, Some(0.5), None, 1))));
        let t0 = Instant::now();
        for i in 0..(MAX_WINDOW_SAMPLES as u64 + 10) {
            tracker.record(t0 + Duration::from_micros(i), &ok(1));
        }
        assert_eq!(tracker.entries.len(), MAX_WINDOW_SAMPLES);
    }

    #[test]
    fn latencies_round_up_to_a_tenth_of_a_millisecond() {
        assert_eq!(format_latency(Duration::from_millis(2)), "2ms");
        assert_eq!(format_latency(Duration::from_micros(300_010)), "300.1ms");
        assert_eq!(format_latency(Duration::from_micros(412_300)), "412.3ms");
    }
}
