//! The `process` probe: counts the live processes a selector matches.
//!
//! It counts every match, ignoring `count`/`percent` (those choose what a fault hits, not what
//! exists) and ignoring the protections of PID 1, faultline and its ancestors (those keep
//! signals away; looking is harmless). Zombies never count; stopped (`T`) processes do — an
//! HTTP or TCP probe is what notices that a stopped process does not serve.

use std::sync::Arc;
use std::time::Instant;

use super::{Probe, Sample};
use crate::plan::{ProbeKind, ProbeSpec};
use crate::sys::proc::CompiledSelector;

/// At most this many PIDs go into a sample's value.
const PIDS_SHOWN: usize = 20;

pub struct ProcessProbe {
    /// Compiled once; an invalid selector fails every sample with the reason.
    selector: Result<Arc<CompiledSelector>, String>,
    min_count: u32,
    max_count: Option<u32>,
}

impl ProcessProbe {
    pub fn new(spec: &ProbeSpec) -> ProcessProbe {
        let selector = match &spec.kind {
            ProbeKind::Process { selector } => Ok(Arc::new(selector.as_ref().clone())),
            _ => Err(format!("probe `{}` is not a process probe", spec.name)),
        };
        ProcessProbe {
            selector,
            min_count: spec.check.min_count.unwrap_or(1),
            max_count: spec.check.max_count,
        }
    }

    fn judge(&self, count: usize) -> Option<String> {
        let matches = match count {
            1 => "1 process matches".to_string(),
            n => format!("{n} processes match"),
        };
        if count < self.min_count as usize {
            return Some(format!("{matches}, expected at least {}", self.min_count));
        }
        match self.max_count {
            Some(max) if count > max as usize => Some(format!("{matches}, expected at most {max}")),
            _ => None,
        }
    }
}

#[async_trait::async_trait]
impl Probe for ProcessProbe {
    async fn sample(&self) -> Sample {
        let started = Instant::now();
        let selector = match &self.selector {
            Ok(selector) => Arc::clone(selector),
            Err(e) => return Sample::fail(started.elapsed(), None, e.clone()),
        };
        let scan = tokio::task::spawn_blocking(move || selector.matches()).await;
        let latency = started.elapsed();
        let matches = match scan {
            Ok(Ok(matches)) => matches,
            Ok(Err(e)) => return Sample::fail(latency, None, e.to_string()),
            Err(e) => {
                return Sample::fail(latency, None, format!("process scan did not finish: {e}"));
            }
        };
        let mut found: Vec<_> = matches
            .eligible
            .iter()
            .chain(matches.protected.iter().map(|(info, _)| info))
            .map(|info| (info.start_time, info.pid))
            .collect();
        found.sort();
        let mut pids: Vec<u32> = found.into_iter().map(|(_, pid)| pid).collect();
        let count = pids.len();
        pids.truncate(PIDS_SHOWN);
        let value = serde_json::json!({"count": count, "pids": pids});
        match self.judge(count) {
            None => Sample::pass(latency, value),
            Some(error) => Sample::fail(latency, Some(value), error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::experiment::model::testing::by_name;
    use crate::plan::Check;
    use crate::sys::proc::testing::{sleep_named, unique};

    fn probe(name: &str, min_count: u32, max_count: Option<u32>) -> ProcessProbe {
        ProcessProbe::new(&ProbeSpec {
            name: "workers-alive".into(),
            kind: ProbeKind::Process {
                selector: Box::new(
                    CompiledSelector::new(&crate::experiment::model::ProcessSelector {
                        count: Some(crate::experiment::spanned::Sp::new(1)),
                        ..by_name(name)
                    })
                    .expect("a valid selector"),
                ),
            },
            check: Check {
                min_count: Some(min_count),
                max_count,
                ..Default::default()
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            failure_threshold: 1,
            slo: None,
        })
    }

    #[tokio::test]
    async fn counts_every_match_and_judges_min_and_max() {
        let name = unique("prb");
        let children = [sleep_named(&name), sleep_named(&name)];
        let pids: Vec<u32> = children.iter().map(|c| c.pid()).collect();

        // `count: 1` on the selector does not cap what a probe counts.
        let sample = probe(&name, 1, None).sample().await;
        assert!(sample.ok, "{sample:?}");
        assert_eq!(
            sample.value,
            Some(serde_json::json!({"count": 2, "pids": pids}))
        );

        let sample = probe(&name, 3, None).sample().await;
        assert!(!sample.ok);
        assert_eq!(
            sample.error.as_deref(),
            Some("2 processes match, expected at least 3")
        );
        assert_eq!(
            sample.value,
            Some(serde_json::json!({"count": 2, "pids": pids}))
        );

        let sample = probe(&name, 0, Some(1)).sample().await;
        assert_eq!(
            sample.error.as_deref(),
            Some("2 processes match, expected at most 1")
        );
    }

    #[tokio::test]
    async fn stopped_processes_count_and_a_missing_one_fails() {
        let name = unique("prs");
        let child = sleep_named(&name);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.pid() as i32),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .expect("stop child");
        let sample = probe(&name, 1, None).sample().await;
        assert!(sample.ok, "{sample:?}");
        drop(child);
        let sample = probe(&name, 1, None).sample().await;
        assert_eq!(
            sample.error.as_deref(),
            Some("0 processes match, expected at least 1")
        );
    }

    #[test]
    fn a_bad_pattern_in_a_process_probe_is_refused_before_any_probe_runs() {
        let source = crate::experiment::Source {
            path: "bad.yaml".into(),
            text: "apiVersion: faultline/v1\nmetadata: {name: t}\n\
                   probes: {bad: {process: {select: {cmdline: '(unclosed'}}}}\n\
                   steady_state: {before: {probes: [bad]}}\nmax_duration: 1m\n"
                .into(),
        };
        let diagnostics = crate::plan::plan_source(&source, &crate::experiment::Overrides::none())
            .expect_err("no plan, so no probe");
        let text = diagnostics.to_string();
        assert!(
            text.contains("(unclosed")
                && text.contains("bad.yaml:3:")
                && text.matches("-->").count() == 1,
            "the one problem, at the pattern: {text}"
        );
    }
}
