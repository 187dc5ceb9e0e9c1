//! Running probes: the `during` sampling loops, and the retry-until-pass checks used by the
//! `before` gate and the `after` recovery check.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::plan::ProbeSpec;
use crate::probe::{Probe, Sample};
use crate::report::event::{Event, Phase};
use std::borrow::Cow;

/// One sample, bounded by the probe's timeout whatever the probe does.
pub async fn sample_bounded(spec: &ProbeSpec, probe: &dyn Probe) -> Sample {
    let began = Instant::now();
    match tokio::time::timeout(spec.timeout, probe.sample()).await {
        Ok(sample) => sample,
        Err(_) => Sample::fail(
            began.elapsed(),
            None,
            format!(
                "timed out after {}",
                humantime::format_duration(spec.timeout)
            ),
        ),
    }
}

/// Sample `probe` every `interval` until `stop`, sending each sample to the engine. Each
/// probe has its own loop, so a slow probe never delays another probe or the abort.
pub async fn sample_loop(
    index: usize,
    spec: ProbeSpec,
    probe: Arc<dyn Probe>,
    samples: mpsc::UnboundedSender<(usize, Instant, Sample)>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(spec.interval);
    // A sample that overran its slot is not made up with a burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let sample = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            s = sample_bounded(&spec, probe.as_ref()) => s,
        };
        if samples.send((index, Instant::now(), sample)).is_err() {
            return;
        }
    }
}

/// Sample every probe once per round (concurrently) until a round where all pass, or until
/// `budget` is spent. A zero budget means a single round. Returns the number of rounds, or
/// why the last round failed.
pub async fn until_all_pass(
    shared: &Shared,
    phase: Phase,
    probes: &[(ProbeSpec, Arc<dyn Probe>)],
    budget: Duration,
) -> Result<u32, String> {
    if probes.is_empty() {
        shared.emit(&Event::Gate {
            t_ms: shared.t_ms(),
            phase,
            passed: true,
            attempts: 0,
            probes: 0,
            reason: None,
        });
        return Ok(0);
    }
    let deadline = Instant::now() + budget;
    let pause = probes
        .iter()
        .map(|(spec, _)| spec.interval)
        .min()
        .unwrap_or(Duration::from_secs(1));
    let mut rounds = 0;
    loop {
        rounds += 1;
        let round_start = Instant::now();
        let results = futures_join_all(probes).await;
        let mut failures = Vec::new();
        for ((spec, _), sample) in probes.iter().zip(&results) {
            shared.journal.write(&Event::ProbeSample {
                t_ms: shared.t_ms(),
                phase,
                probe: spec.name.as_str().into(),
                sample: Cow::Borrowed(sample),
                consecutive_failures: None,
            });
            if !sample.ok {
                failures.push(format!(
                    "{}: {}",
                    spec.name,
                    sample.error.as_deref().unwrap_or("failed")
                ));
            }
        }
        let passed = failures.is_empty();
        let next = round_start + pause;
        if passed || next > deadline {
            let reason = failures.join("; ");
            shared.emit(&Event::Gate {
                t_ms: shared.t_ms(),
                phase,
                passed,
                attempts: rounds,
                probes: u32::try_from(probes.len()).unwrap_or(u32::MAX),
                reason: (!passed).then(|| reason.clone()),
            });
            return if passed {
                Ok(rounds)
            } else {
                Err(format!(
                    "{reason} (after {rounds} attempt{})",
                    if rounds == 1 { "" } else { "s" }
                ))
            };
        }
        tokio::time::sleep_until(next).await;
    }
}

async fn futures_join_all(probes: &[(ProbeSpec, Arc<dyn Probe>)]) -> Vec<Sample> {
    let mut set = tokio::task::JoinSet::new();
    for (index, (spec, probe)) in probes.iter().enumerate() {
        let spec = spec.clone();
        let probe = probe.clone();
        set.spawn(async move { (index, sample_bounded(&spec, probe.as_ref()).await) });
    }
    let mut results: Vec<Option<Sample>> = vec![None; probes.len()];
    while let Some(joined) = set.join_next().await {
        if let Ok((index, sample)) = joined {
            results[index] = Some(sample);
        }
    }
    results
        .into_iter()
        .map(|s| s.unwrap_or_else(|| Sample::fail(Duration::ZERO, None, "probe task panicked")))
        .collect()
}
