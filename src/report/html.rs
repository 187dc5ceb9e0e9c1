//! The HTML report: one self-contained page (inline CSS and SVG, no script, nothing fetched)
//! with, per run, a header, a timeline of phases, fault injections and probe samples, and
//! tables of the faults, probes, gates and commands. A game day (several runs) starts with a
//! summary table.
//!
//! Everything read from the journal is untrusted text: the template (`templates/report.html`)
//! escapes it, as askama does for every `.html` template. The timeline's geometry is computed
//! here as plain numbers, so the template only places shapes.

use std::fmt;

use askama::Template;

use super::event::{AbortRecord, Phase};
use super::view::{FaultView, OutcomeView, ProbeView};
use super::{Reporter, RunView};
use crate::outcome::Outcome;

pub struct Html;

impl Reporter for Html {
    fn extension(&self) -> &'static str {
        "html"
    }

    fn render(&self, title: &str, runs: &[RunView]) -> String {
        let page = Page {
            title,
            game_day: runs.len() > 1,
            runs: runs
                .iter()
                .enumerate()
                .map(|(i, run)| RunSection::new(i + 1, run))
                .collect(),
        };
        page.render().unwrap_or_else(|e| {
            format!("<!doctype html>\n<p>cannot render the HTML report: {e}</p>\n")
        })
    }
}

#[derive(Template)]
#[template(path = "report.html", whitespace = "minimize")]
struct Page<'a> {
    title: &'a str,
    /// Several runs: a summary table comes first.
    game_day: bool,
    runs: Vec<RunSection<'a>>,
}

/// One run's section, everything precomputed except what the template reads straight from
/// the view (host, run id, gates, commands...).
struct RunSection<'a> {
    /// The section's HTML id (`run-1`...), never journal text, for the summary's links.
    anchor: String,
    run: &'a RunView,
    name: String,
    badge: Badge,
    exit_code: String,
    reason: String,
    duration: String,
    abort: Option<String>,
    timeline: Timeline,
    faults: Vec<FaultRow>,
    probes: Vec<ProbeRow>,
}

impl<'a> RunSection<'a> {
    fn new(number: usize, run: &'a RunView) -> RunSection<'a> {
        let name = if run.name.is_empty() {
            // The journal lost even its first line; its path is all there is.
            run.journal.display().to_string()
        } else {
            run.name.clone()
        };
        RunSection {
            anchor: format!("run-{number}"),
            run,
            name,
            badge: Badge::of(run.outcome.as_ref()),
            exit_code: run
                .outcome
                .as_ref()
                .map_or("—".into(), |o| o.exit_code.to_string()),
            reason: match &run.outcome {
                Some(o) => o.reason.clone(),
                None => super::view::NO_OUTCOME.into(),
            },
            duration: seconds(run.duration_ms()),
            abort: run.abort.as_ref().map(abort_summary),
            timeline: Timeline::new(run),
            faults: run.faults.iter().map(FaultRow::new).collect(),
            probes: run.probes.iter().map(ProbeRow::new).collect(),
        }
    }
}

/// The outcome as a coloured label; the colours follow the JUnit report's reading.
struct Badge {
    label: String,
    class: &'static str,
}

impl Badge {
    fn of(outcome: Option<&OutcomeView>) -> Badge {
        let (label, class) = match outcome.map(|o| o.outcome) {
            None => ("incomplete — crashed or killed", "error"),
            Some(Outcome::Passed) => ("passed", "passed"),
            // The system under test misbehaved.
            Some(o) if o.is_system_failure() => (o.as_str(), "failed"),
            // The experiment itself could not be carried out as asked.
            Some(o) => (o.as_str(), "error"),
        };
        Badge {
            label: label.into(),
            class,
        }
    }
}

fn abort_summary(abort: &AbortRecord) -> String {
    let probe = abort
        .probe
        .as_ref()
        .map_or(String::new(), |p| format!(", probe {p}"));
    format!(
        "abort ({}{probe}) at {}: {} — {} fault(s) reverted, all {:.1} ms after the breach",
        abort.trigger,
        seconds(abort.breach_t_ms),
        abort.reason,
        abort.faults_reverted,
        abort.breach_to_all_reverted_ms
    )
}

struct FaultRow {
    fault: String,
    record: String,
    summary: String,
    injected: String,
    reverted: String,
    cause: String,
    /// What the fault achieved, as compact JSON.
    achieved: Option<String>,
    errors: Vec<String>,
}

impl FaultRow {
    fn new(fault: &FaultView) -> FaultRow {
        let reverted = match fault.reverted_ms {
            Some(t) => seconds(t),
            None if fault.nothing_to_revert => "nothing to revert".into(),
            None if fault.never_reverted() => "not reverted".into(),
            None => "—".into(),
        };
        let mut errors = Vec::new();
        if let Some(error) = &fault.injection_error {
            errors.push(format!("injection failed: {error}"));
        }
        if let Some(error) = &fault.revert_error {
            let remedy = fault.revert_remedy.as_deref().unwrap_or("");
            errors.push(format!("revert failed: {error}. {remedy}"));
        }
        if let Some(message) = fault.never_reverted_message() {
            errors.push(message.into());
        }
        FaultRow {
            fault: fault.fault.clone(),
            record: fault.record.clone().unwrap_or_else(|| "—".into()),
            summary: fault.summary.clone(),
            injected: fault.injected_ms.map_or("—".into(), seconds),
            reverted,
            cause: fault
                .revert_cause
                .map_or_else(|| "—".into(), |c| c.as_str().into()),
            achieved: (!fault.achieved.is_null()).then(|| fault.achieved.to_string()),
            errors,
        }
    }
}

struct ProbeRow {
    name: String,
    samples: usize,
    failed: usize,
    failed_during: usize,
    p50: String,
    p99: String,
    p50_during: String,
    p99_during: String,
    first_error: Option<String>,
}

impl ProbeRow {
    fn new(probe: &ProbeView) -> ProbeRow {
        let latency = |phase, p| {
            probe
                .latency_percentile(phase, p)
                .map_or("—".into(), |ms| format!("{ms:.1} ms"))
        };
        ProbeRow {
            name: probe.name.clone(),
            samples: probe.samples.len(),
            failed: probe.failed(),
            failed_during: probe
                .samples
                .iter()
                .filter(|s| !s.ok && s.phase == Phase::During)
                .count(),
            p50: latency(None, 50.0),
            p99: latency(None, 99.0),
            p50_during: latency(Some(Phase::During), 50.0),
            p99_during: latency(Some(Phase::During), 99.0),
            first_error: probe.samples.iter().find(|s| !s.ok).map(|s| {
                let error = s.error.as_deref().unwrap_or("failed");
                format!("at {} ({}): {error}", seconds(s.t_ms), s.phase)
            }),
        }
    }
}

// The timeline, in SVG user units: the page scales the whole drawing to its width.
const WIDTH: f64 = 1000.0;
/// Lane labels go left of the plot.
const PLOT_LEFT: f64 = 170.0;
/// Notes such as "not reverted" go right of the plot.
const PLOT_RIGHT: f64 = 890.0;
/// Above the lanes: the abort label, then the phase names.
const BANDS_TOP: f64 = 20.0;
const LANES_TOP: f64 = 40.0;
const LANE_HEIGHT: f64 = 22.0;
const BAR_HEIGHT: f64 = 12.0;
/// Wide enough to see a fault that took no time (a kill) or failed at once.
const MARKER_WIDTH: f64 = 4.0;
/// Roughly how wide a character of the labels is, to shorten labels that would not fit.
const CHAR_WIDTH: f64 = 6.0;

/// A coordinate, written with one decimal.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Px(f64);

impl fmt::Display for Px {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1}", self.0)
    }
}

struct Timeline {
    width: Px,
    height: Px,
    plot_left: Px,
    plot_right: Px,
    lane_label_x: Px,
    note_x: Px,
    abort_label_y: Px,
    phase_label_y: Px,
    bands_top: Px,
    bands_height: Px,
    lanes_bottom: Px,
    tick_label_y: Px,
    phases: Vec<PhaseBand>,
    ticks: Vec<Tick>,
    /// One lane per fault injection, then one per probe: a line and a label on the left.
    lanes: Vec<Lane>,
    faults: Vec<FaultBar>,
    samples: Vec<SampleMark>,
    abort: Option<AbortMark>,
}

/// A phase, shaded from its start until the next phase starts (or the run ends).
struct PhaseBand {
    x: Px,
    width: Px,
    label_x: Px,
    class: &'static str,
    /// Only when the band is wide enough for it; the tooltip always names the phase.
    label: Option<String>,
    title: String,
}

struct Tick {
    x: Px,
    label: String,
}

struct Lane {
    mid: Px,
    label_y: Px,
    /// Shortened to fit left of the plot; the tooltip has all of it.
    label: String,
    title: String,
}

/// One injection: a bar from injected to reverted, or a marker when it took no time.
struct FaultBar {
    bar: Rect,
    /// Right of the plot, level with the lane's label.
    note: Option<&'static str>,
    note_y: Px,
}

struct Rect {
    x: Px,
    y: Px,
    width: Px,
    height: Px,
    class: &'static str,
    title: String,
}

struct SampleMark {
    x: Px,
    y: Px,
    class: &'static str,
    title: String,
}

struct AbortMark {
    x: Px,
    label_x: Px,
    anchor: &'static str,
    label: String,
    /// The whole label, when `label` had to be shortened.
    title: String,
}

impl Timeline {
    fn new(run: &RunView) -> Timeline {
        let end_ms = run.end_ms.max(1.0);
        let x = |t_ms: f64| PLOT_LEFT + (t_ms / end_ms).clamp(0.0, 1.0) * (PLOT_RIGHT - PLOT_LEFT);
        let lane_count = (run.faults.len() + run.probes.len()).max(1);
        let lanes_bottom = LANES_TOP + lane_count as f64 * LANE_HEIGHT;
        let (mut lanes, faults): (Vec<Lane>, Vec<FaultBar>) = run
            .faults
            .iter()
            .enumerate()
            .map(|(i, fault)| fault_lane(run, i, fault, end_ms, &x))
            .unzip();
        let mut samples = Vec::new();
        for probe in &run.probes {
            let lane = Lane::new(lanes.len(), "probe", &probe.name);
            samples.extend(sample_marks(&probe.samples, lane.mid, &x));
            lanes.push(lane);
        }
        Timeline {
            width: Px(WIDTH),
            height: Px(lanes_bottom + 22.0),
            plot_left: Px(PLOT_LEFT),
            plot_right: Px(PLOT_RIGHT),
            lane_label_x: Px(PLOT_LEFT - 8.0),
            note_x: Px(PLOT_RIGHT + 8.0),
            abort_label_y: Px(BANDS_TOP - 7.0),
            phase_label_y: Px(LANES_TOP - 6.0),
            bands_top: Px(BANDS_TOP),
            bands_height: Px(lanes_bottom - BANDS_TOP),
            lanes_bottom: Px(lanes_bottom),
            tick_label_y: Px(lanes_bottom + 14.0),
            phases: phase_bands(run, end_ms, &x),
            ticks: ticks(end_ms, &x),
            lanes,
            faults,
            samples,
            abort: run.abort.as_ref().map(|a| abort_mark(a, x(a.breach_t_ms))),
        }
    }
}

impl Lane {
    /// The `index`th lane from the top; `kind` is `fault` or `probe`.
    fn new(index: usize, kind: &str, label: &str) -> Lane {
        let mid = LANES_TOP + (index as f64 + 0.5) * LANE_HEIGHT;
        let room = ((PLOT_LEFT - 12.0) / CHAR_WIDTH) as usize;
        Lane {
            mid: Px(mid),
            label_y: Px(mid + 4.0),
            label: shorten(label, room),
            title: format!("{kind} {label}"),
        }
    }
}

fn phase_bands(run: &RunView, end_ms: f64, x: &impl Fn(f64) -> f64) -> Vec<PhaseBand> {
    let ends = run.phases.iter().skip(1).map(|(_, t)| *t).chain([end_ms]);
    run.phases
        .iter()
        .zip(ends)
        .map(|((phase, start), end)| {
            let name = phase.as_str();
            let width = x(end) - x(*start);
            let fits = width >= (name.chars().count() as f64 + 2.0) * CHAR_WIDTH;
            PhaseBand {
                x: Px(x(*start)),
                width: Px(width),
                label_x: Px(x(*start) + 3.0),
                class: phase_class(*phase),
                label: fits.then(|| name.to_string()),
                title: format!("{name}: {} → {}", seconds(*start), seconds(end)),
            }
        })
        .collect()
}

/// A fill per phase.
fn phase_class(phase: Phase) -> &'static str {
    match phase {
        Phase::Setup => "phase setup",
        Phase::Before => "phase before",
        Phase::T0 => "phase t0",
        Phase::During => "phase during",
        Phase::Revert => "phase revert",
        Phase::After => "phase after",
        Phase::Cleanup => "phase cleanup",
    }
}

/// Round steps, at most about ten of them across the run.
fn ticks(end_ms: f64, x: &impl Fn(f64) -> f64) -> Vec<Tick> {
    const STEPS_S: [f64; 18] = [
        0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
        600.0, 1800.0, 3600.0,
    ];
    let end_s = end_ms / 1000.0;
    let step = STEPS_S
        .into_iter()
        .find(|step| end_s / step <= 10.0)
        .unwrap_or_else(|| (end_s / 10.0 / 3600.0).ceil() * 3600.0);
    let decimals = if step < 0.1 {
        2
    } else if step < 1.0 {
        1
    } else {
        0
    };
    // Tolerate the division's float error (0.3 / 0.05 is 5.999...): the last tick counts.
    let last = (end_s / step + 1e-9).floor() as usize;
    (0..=last)
        .map(|k| {
            let t_s = k as f64 * step;
            Tick {
                x: Px(x(t_s * 1000.0)),
                label: format!("{t_s:.decimals$} s"),
            }
        })
        .collect()
}

fn fault_lane(
    run: &RunView,
    index: usize,
    fault: &FaultView,
    end_ms: f64,
    x: &impl Fn(f64) -> f64,
) -> (Lane, FaultBar) {
    // A fault repeated in the run gets one lane per injection: number them.
    let same_id = |f: &&FaultView| f.fault == fault.fault;
    let label = match run.faults.iter().filter(same_id).count() {
        1 => fault.fault.clone(),
        _ => {
            let nth = run.faults[..index].iter().filter(same_id).count() + 1;
            format!("{} #{nth}", fault.fault)
        }
    };
    let start = fault.injected_ms.unwrap_or(fault.intent_ms);
    let (end, class, note) = if fault.injection_error.is_some() {
        (start, "fault failed", Some("injection failed"))
    } else if fault.nothing_to_revert {
        (start, "fault instant", None)
    } else {
        match fault.reverted_ms {
            Some(to) if fault.revert_error.is_some() => (to, "fault failed", Some("revert failed")),
            Some(to) => (to, "fault live", None),
            None => (end_ms, "fault failed", Some("not reverted")),
        }
    };
    let (from, to) = (x(start), x(end));
    let (bar_x, width) = if to - from < MARKER_WIDTH {
        (from - MARKER_WIDTH / 2.0, MARKER_WIDTH)
    } else {
        (from, to - from)
    };
    let lane = Lane::new(index, "fault", &label);
    let bar = FaultBar {
        bar: Rect {
            x: Px(bar_x),
            y: Px(lane.mid.0 - BAR_HEIGHT / 2.0),
            width: Px(width),
            height: Px(BAR_HEIGHT),
            class,
            title: fault_title(fault),
        },
        note,
        note_y: lane.label_y,
    };
    (lane, bar)
}

fn fault_title(fault: &FaultView) -> String {
    let mut lines = vec![format!("{}: {}", fault.fault, fault.summary)];
    if let Some(t) = fault.injected_ms {
        lines.push(format!("injected at {}", seconds(t)));
    }
    if let Some(t) = fault.reverted_ms {
        let cause = fault.revert_cause.map_or("-", |c| c.as_str());
        lines.push(format!("reverted at {} ({cause})", seconds(t)));
    }
    lines.extend(fault.restarts.iter().cloned());
    if let Some(error) = &fault.injection_error {
        lines.push(format!("injection failed: {error}"));
    }
    if let Some(error) = &fault.revert_error {
        lines.push(format!("revert failed: {error}"));
    }
    lines.join("\n")
}

/// Marks closer than this (in px) would be drawn on top of each other (a mark is 7 px wide).
const MARK_SPACING: f64 = 2.0;

/// One mark per sample, except where samples fall closer together than [`MARK_SPACING`] (a
/// long run sampled often: an hour at 10 Hz is 36,000 samples on a 720 px lane): those make one
/// mark, failed if any of them failed, whose tooltip says how many and the first error. The
/// page (and the memory it is built in) then grows with the plot's width, not the run's length.
fn sample_marks(
    samples: &[super::view::SampleView],
    y: Px,
    x: &impl Fn(f64) -> f64,
) -> Vec<SampleMark> {
    let column = |t_ms: f64| ((x(t_ms) - PLOT_LEFT) / MARK_SPACING).floor() as i64;
    let mut marks = Vec::new();
    let mut rest = samples;
    while let Some(first) = rest.first() {
        let here = column(first.t_ms);
        let together = rest.iter().take_while(|s| column(s.t_ms) == here).count();
        let (group, after) = rest.split_at(together);
        rest = after;
        let failed = group.iter().filter(|s| !s.ok).count();
        let title = match group {
            [one] => sample_title(one),
            _ => merged_title(group, failed),
        };
        marks.push(SampleMark {
            x: Px(x(first.t_ms)),
            y,
            class: if failed == 0 {
                "sample ok"
            } else {
                "sample failed"
            },
            title,
        });
    }
    marks
}

fn merged_title(group: &[super::view::SampleView], failed: usize) -> String {
    let (first, last) = (&group[0], &group[group.len() - 1]);
    let (low, high) = group.iter().fold((f64::MAX, f64::MIN), |(low, high), s| {
        (low.min(s.latency_ms), high.max(s.latency_ms))
    });
    let mut title = format!(
        "{} – {} · {} samples, {failed} failed · {low:.1} – {high:.1} ms",
        seconds(first.t_ms),
        seconds(last.t_ms),
        group.len()
    );
    if let Some(error) = group.iter().find_map(|s| s.error.as_ref()) {
        title.push_str(&format!(" · first error: {error}"));
    }
    title
}

fn sample_title(sample: &super::view::SampleView) -> String {
    let mut title = format!(
        "{} · {} · {:.1} ms",
        seconds(sample.t_ms),
        sample.phase,
        sample.latency_ms
    );
    if let Some(error) = &sample.error {
        title.push_str(&format!(" · {error}"));
    }
    title
}

/// The breach line's label goes on whichever side of the line has more room, shortened to it.
fn abort_mark(abort: &AbortRecord, x: f64) -> AbortMark {
    let label = format!(
        "abort: {} — all reverted in {:.1} ms",
        abort.reason, abort.breach_to_all_reverted_ms
    );
    let (anchor, label_x, room) = if x > WIDTH / 2.0 {
        ("end", x - 4.0, x - 8.0)
    } else {
        ("start", x + 4.0, WIDTH - x - 8.0)
    };
    AbortMark {
        x: Px(x),
        label_x: Px(label_x),
        anchor,
        label: shorten(&label, (room / CHAR_WIDTH) as usize),
        title: label,
    }
}

/// At most `max_chars` characters, the last one an ellipsis when cut.
fn shorten(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let kept: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    format!("{kept}…")
}

fn seconds(ms: f64) -> String {
    format!("{:.3} s", ms / 1000.0)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::report::RunRecord;

    /// A run rebuilt from journal lines, the way `faultline report` reads a journal.
    fn run_of(journal: &str, parts: &[&str]) -> RunView {
        RunView::from_record(&RunRecord {
            journal: PathBuf::from(journal),
            events: parts
                .iter()
                .flat_map(|part| part.lines())
                .filter(|line| !line.trim().is_empty())
                .map(|line| serde_json::from_str(line).expect("a JSON line"))
                .collect(),
        })
    }

    /// A journal's first line.
    fn started(run_id: &str, name: &str) -> String {
        serde_json::json!({
            "event": "run_started", "t_ms": 0.0, "run_id": run_id, "experiment_name": name,
            "host": "web-1", "started_at": "2026-01-02T03:04:05Z", "tool_version": "0.1.0",
        })
        .to_string()
    }

    /// The steady state held before the faults; the faults phase starts at 12 ms.
    const HELD_BEFORE: &str = r#"
{"event":"phase","t_ms":1.5,"phase":"before"}
{"event":"probe_sample","t_ms":10.0,"phase":"before","probe":"api","ok":true,"latency":2.0}
{"event":"gate","t_ms":11.0,"phase":"before","passed":true,"attempts":1}
{"event":"phase","t_ms":12.0,"phase":"t0"}
"#;

    /// A delay injected and reverted, samples fine, recovered after: passed.
    fn passed_run() -> RunView {
        const SETUP: &str = r#"
{"event":"phase","t_ms":0.5,"phase":"setup"}
{"event":"command","t_ms":1.0,"phase":"setup","name":"start-app","argv":["app"],"background":true,"duration_ms":0.4}
"#;
        const FAULTS_AND_AFTER: &str = r#"
{"event":"fault_intent","t_ms":100.0,"fault":"delay","record":"r1-delay-0","summary":"delay 50ms on lo","revert":{"recipe":"network","steps":[]}}
{"event":"fault_injected","t_ms":102.0,"fault":"delay","record":"r1-delay-0","summary":"delay 50ms on lo"}
{"event":"probe_sample","t_ms":300.0,"phase":"during","probe":"api","ok":true,"latency":52.5}
{"event":"fault_reverted","t_ms":600.0,"fault":"delay","record":"r1-delay-0","summary":"removed","cause":"duration_elapsed","achieved":{"packets":3}}
{"event":"phase","t_ms":601.0,"phase":"revert"}
{"event":"phase","t_ms":602.0,"phase":"after"}
{"event":"probe_sample","t_ms":700.0,"phase":"after","probe":"api","ok":true,"latency":2.5}
{"event":"gate","t_ms":701.0,"phase":"after","passed":true,"attempts":2,"reason":"recovered on the second try"}
{"event":"phase","t_ms":702.0,"phase":"cleanup"}
{"event":"outcome","t_ms":800.0,"outcome":"passed","exit_code":0,"reason":"steady state held","finished_at":"2026-01-02T03:04:06Z"}
"#;
        let start = started("r1", "latency-ok");
        run_of(
            "journals/passed.jsonl",
            &[&start, SETUP, HELD_BEFORE, FAULTS_AND_AFTER],
        )
    }

    /// A freeze, two failed samples in a row, an abort that reverts it in 1.2 ms.
    fn aborted_run() -> RunView {
        const FAULTS_AND_AFTER: &str = r#"
{"event":"fault_intent","t_ms":200.0,"fault":"freeze","record":"r2-freeze-0","summary":"SIGSTOP pid 42","revert":{"recipe":"resume_processes","processes":[]}}
{"event":"fault_injected","t_ms":201.0,"fault":"freeze","record":"r2-freeze-0","summary":"SIGSTOP pid 42"}
{"event":"probe_sample","t_ms":250.0,"phase":"during","probe":"api","ok":true,"latency":2.1}
{"event":"probe_sample","t_ms":450.0,"phase":"during","probe":"api","ok":false,"latency":80.0,"error":"timed out"}
{"event":"probe_sample","t_ms":650.0,"phase":"during","probe":"api","ok":false,"latency":80.0,"error":"timed out"}
{"event":"phase","t_ms":651.0,"phase":"revert"}
{"event":"fault_reverted","t_ms":652.0,"fault":"freeze","record":"r2-freeze-0","summary":"SIGCONT pid 42","cause":"abort"}
{"event":"abort","t_ms":651.7,"trigger":"probe_failure","probe":"api","reason":"probe api: 2 consecutive failed samples","breach_t_ms":650.5,"all_reverted_t_ms":651.7,"breach_to_all_reverted_ms":1.2,"faults_reverted":1}
{"event":"phase","t_ms":653.0,"phase":"after"}
{"event":"probe_sample","t_ms":700.0,"phase":"after","probe":"api","ok":true,"latency":2.2}
{"event":"gate","t_ms":701.0,"phase":"after","passed":true,"attempts":1}
{"event":"outcome","t_ms":710.0,"outcome":"aborted","exit_code":2,"reason":"probe api: 2 consecutive failed samples","finished_at":"2026-01-02T03:05:01Z"}
"#;
        let start = started("r2", "freeze-aborts");
        run_of(
            "journals/aborted.jsonl",
            &[&start, HELD_BEFORE, FAULTS_AND_AFTER],
        )
    }

    fn page(title: &str, runs: &[RunView]) -> String {
        Html.render(title, runs)
    }

    fn count(html: &str, needle: &str) -> usize {
        html.matches(needle).count()
    }

    /// An hour sampled at 10 Hz (36,000 samples) draws at most one mark per 2 px of the lane,
    /// and the one failed sample is still there, red, its tooltip saying so and its error;
    /// three samples far apart keep a mark each (the other tests).
    #[test]
    fn a_long_run_sampled_often_draws_a_mark_per_column_and_keeps_its_failure() {
        let mut lines = vec![started("r3", "soak")];
        lines.push(r#"{"event":"phase","t_ms":1.0,"phase":"t0"}"#.to_string());
        for n in 0..36_000u32 {
            let t_ms = 100.0 * f64::from(n) + 50.0;
            let sample = if n == 20_000 {
                serde_json::json!({"event": "probe_sample", "t_ms": t_ms, "phase": "during",
                    "probe": "api", "ok": false, "latency": 80.0, "error": "timed out"})
            } else {
                serde_json::json!({"event": "probe_sample", "t_ms": t_ms, "phase": "during",
                    "probe": "api", "ok": true, "latency": 2.0})
            };
            lines.push(sample.to_string());
        }
        lines.push(
            r#"{"event":"outcome","t_ms":3600100.0,"outcome":"deviated","exit_code":3,"reason":"probe api failed once","finished_at":"2026-01-02T04:04:06Z"}"#
                .to_string(),
        );
        let parts: Vec<&str> = lines.iter().map(String::as_str).collect();
        let html = page("soak", &[run_of("journals/soak.jsonl", &parts)]);
        let marks = count(&html, r#"<circle class="sample"#);
        let columns = ((PLOT_RIGHT - PLOT_LEFT) / MARK_SPACING) as usize + 1;
        assert!(marks > columns / 2 && marks <= columns, "{marks} marks");
        assert_eq!(count(&html, r#"<circle class="sample failed""#), 1);
        assert!(
            html.contains("samples, 1 failed"),
            "the merged mark says what it holds"
        );
        assert!(html.contains("first error: timed out"));
        assert!(html.len() < 400_000, "{} bytes", html.len());
    }

    #[test]
    fn a_passed_run_shows_its_fault_bar_samples_and_tables() {
        let html = page("latency-ok", &[passed_run()]);
        assert!(html.contains(r#"<span class="badge passed">passed</span>"#));
        assert_eq!(count(&html, r#"<rect class="fault live""#), 1);
        assert_eq!(count(&html, r#"<circle class="sample ok""#), 3);
        assert_eq!(count(&html, r#"class="sample failed""#), 0);
        assert!(!html.contains("not reverted"));
        assert!(!html.contains(r#"<line class="abort-line""#) && !html.contains("abort: "));
        // One run: no game-day summary.
        assert!(!html.contains("<h2>Summary</h2>"));
        // Achieved as compact JSON (quotes escaped), revert cause, gate reason, command.
        assert!(html.contains("<pre>{&#34;packets&#34;:3}</pre>"));
        assert!(html.contains("<td>duration_elapsed</td>"));
        assert!(html.contains("recovered on the second try"));
        assert!(html.contains("<td>start-app</td>"));
        // The timeline scales to the page.
        assert!(html.contains(r#"viewBox="0 0 1000.0 "#) && html.contains(r#"width="100%""#));
    }

    #[test]
    fn an_aborted_run_shows_the_breach_and_its_failed_samples() {
        let html = page("freeze-aborts", &[aborted_run()]);
        assert!(html.contains(r#"<span class="badge failed">aborted</span>"#));
        assert!(
            html.contains(
                "abort: probe api: 2 consecutive failed samples — all reverted in 1.2 ms"
            )
        );
        assert_eq!(count(&html, r#"<line class="abort-line""#), 1);
        assert_eq!(count(&html, r#"<circle class="sample failed""#), 2);
        assert_eq!(count(&html, r#"<circle class="sample ok""#), 3);
        assert!(
            html.contains("<td>abort</td>"),
            "revert cause in the faults table"
        );
        assert!(
            html.contains("at 0.450 s (during): timed out"),
            "first error"
        );
    }

    #[test]
    fn a_journal_without_an_outcome_says_incomplete_and_not_reverted() {
        let crashed = r#"
{"event":"phase","t_ms":1.0,"phase":"t0"}
{"event":"fault_intent","t_ms":100.0,"fault":"loss","record":"r3-loss-0","summary":"drop 10% on eth0","revert":{"recipe":"network","steps":[]}}
{"event":"fault_injected","t_ms":101.0,"fault":"loss","record":"r3-loss-0","summary":"drop 10% on eth0"}
{"event":"probe_sample","t_ms":300.0,"phase":"during","probe":"api","ok":true,"latency":3.0}
"#;
        let run = run_of(
            "journals/crashed.jsonl",
            &[&started("r3", "crashed"), crashed],
        );
        let html = page("crashed", std::slice::from_ref(&run));
        assert!(
            html.contains(r#"<span class="badge error">incomplete — crashed or killed</span>"#)
        );
        assert!(html.contains("exit code —"));
        assert!(html.contains(">not reverted</text>"), "the lane's note");
        assert!(
            html.contains(r#"<td class="num">not reverted</td>"#),
            "the table"
        );
        // Drawn in red from the injection to the end of the journal (the plot's right edge).
        let bar = &Timeline::new(&run).faults[0].bar;
        assert_eq!(bar.class, "fault failed");
        assert_eq!(format!("{:.1}", bar.x.0 + bar.width.0), "890.0");
    }

    #[test]
    fn an_injection_failure_is_a_red_marker() {
        let failed = r#"
{"event":"phase","t_ms":1.0,"phase":"t0"}
{"event":"fault_injection_failed","t_ms":50.0,"fault":"loss","error":"needs CAP_NET_ADMIN"}
{"event":"outcome","t_ms":60.0,"outcome":"injection_failed","exit_code":4,"reason":"fault loss could not be applied","finished_at":"2026-01-02T03:07:01Z"}
"#;
        let start = started("r4", "no-privilege");
        let html = page(
            "no-privilege",
            &[run_of("journals/failed.jsonl", &[&start, failed])],
        );
        assert!(html.contains(r#"<span class="badge error">injection_failed</span>"#));
        assert!(html.contains(">injection failed</text>"));
        assert!(html.contains("injection failed: needs CAP_NET_ADMIN"));
        assert_eq!(count(&html, r#"<rect class="fault failed""#), 1);
    }

    #[test]
    fn a_game_day_starts_with_a_summary_of_every_run() {
        let runs = [passed_run(), aborted_run()];
        let html = page("game-day", &runs);
        let summary = &html[html.find("<h2>Summary</h2>").expect("a summary")
            ..html.find(r#"<section id="run-1">"#).expect("a section")];
        assert!(summary.contains(r##"<a href="#run-1">latency-ok</a>"##));
        assert!(summary.contains(r##"<a href="#run-2">freeze-aborts</a>"##));
        assert!(summary.contains(r#"<span class="badge failed">aborted</span>"#));
        assert!(summary.contains("0.710 s"));
        assert_eq!(count(&html, "<svg "), 2);
        assert!(html.contains(r#"<section id="run-2">"#));
    }

    #[test]
    fn journal_text_is_escaped() {
        let hostile = r#"
{"event":"probe_sample","t_ms":10.0,"phase":"before","probe":"api","ok":false,"latency":1.0,"error":"<script>alert(1)</script>"}
"#;
        let start = started("r5", r#"a"&<>b"#);
        let html = page(
            "hostile",
            &[run_of("journals/hostile.jsonl", &[&start, hostile])],
        );
        assert!(!html.contains("<script>"));
        // askama writes numeric character references.
        assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
        assert!(!html.contains(r#"a"&<>b"#));
        assert!(html.contains("a&#34;&#38;&#60;&#62;b"));
    }

    #[test]
    fn ticks_are_round_seconds_across_the_run() {
        let x = |t_ms: f64| t_ms;
        let labels: Vec<String> = ticks(6073.9, &x).into_iter().map(|t| t.label).collect();
        assert_eq!(labels, ["0 s", "1 s", "2 s", "3 s", "4 s", "5 s", "6 s"]);
        let labels: Vec<String> = ticks(300.0, &x).into_iter().map(|t| t.label).collect();
        assert_eq!(
            labels,
            [
                "0.00 s", "0.05 s", "0.10 s", "0.15 s", "0.20 s", "0.25 s", "0.30 s"
            ]
        );
    }

    #[test]
    fn snapshot_of_a_passed_run() {
        insta::assert_snapshot!("passed-run", page("latency-ok", &[passed_run()]));
    }
}
