//! `faultline plan`: what a run would do, and what each target matches right now.
//! Reads /proc; injects nothing and needs no root.

use std::fmt::Write;

use crate::experiment::model::NoData;
use crate::fault::summary::dur;
use crate::plan::{Check, FaultAction, Plan, ProbeKind, ProbeSpec, TargetSpec};
use crate::sys::proc;

/// Each container a process target's `container` means now: runtime, ID and name, main PID,
/// cgroup (and its version) and network namespace.
fn describe_containers(out: &mut String, selector: &proc::CompiledSelector) {
    let containers = match selector.containers() {
        Ok(containers) => containers,
        Err(e) => {
            let _ = writeln!(out, "    container: {e}");
            return;
        }
    };
    if containers.is_empty() {
        let _ = writeln!(out, "    container: none has that label now");
    }
    for c in &containers {
        let _ = write!(
            out,
            "    container {} {} ({})",
            c.short_id(),
            c.name,
            c.runtime.as_str()
        );
        if !c.running {
            let _ = writeln!(out, ": not running");
            continue;
        }
        let _ = write!(out, ": main pid {}", c.pid);
        if let Some(placement) = c.placement() {
            let _ = write!(
                out,
                ", cgroup {} (v{}), netns {}",
                placement.cgroup, placement.cgroup_version, placement.netns
            );
        }
        if !c.restart_policy.is_empty() && c.restart_policy != "no" {
            let _ = write!(out, ", restart {}", c.restart_policy);
        }
        let _ = writeln!(out);
    }
}

fn describe_probe(p: &ProbeSpec) -> String {
    let what = match &p.kind {
        ProbeKind::Http { url, method, .. } => format!("http {method} {url}"),
        ProbeKind::Tcp { address } => format!("tcp connect {address}"),
        ProbeKind::Command { argv, .. } => format!("command {argv:?}"),
        ProbeKind::Process { selector } => {
            format!("process count of [{}]", selector.selector().describe())
        }
        ProbeKind::Prometheus { url, query, .. } => {
            let comparisons: Vec<String> =
                p.check.comparisons.iter().map(|c| c.to_string()).collect();
            format!(
                "prometheus {}: {query} {}",
                describe_server(url),
                comparisons.join(" and ")
            )
        }
    };
    let mut line = format!(
        "{what}; every {}, timeout {}, fails after {} consecutive failure{}",
        dur(p.interval),
        dur(p.timeout),
        p.failure_threshold,
        if p.failure_threshold == 1 { "" } else { "s" }
    );
    let expect = describe_check(&p.check, &p.kind);
    if !expect.is_empty() {
        let _ = write!(line, "; expect {expect}");
    }
    if let Some(slo) = &p.slo {
        let mut parts = Vec::new();
        if let Some(r) = slo.success_ratio {
            parts.push(format!("success ratio >= {r}"));
        }
        if let Some((pct, bound)) = slo.latency {
            parts.push(format!("p{pct} < {}", dur(bound)));
        }
        let _ = write!(
            line,
            "; SLO over {} (min {} samples): {}",
            dur(slo.window),
            slo.min_samples,
            parts.join(", ")
        );
    }
    line
}

fn describe_check(c: &Check, kind: &ProbeKind) -> String {
    let mut parts = Vec::new();
    if matches!(kind, ProbeKind::Http { .. }) && !c.status.is_empty() {
        let ranges: Vec<String> = c
            .status
            .iter()
            .map(|(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        parts.push(format!("status {}", ranges.join(",")));
    }
    if let Some(l) = c.max_latency {
        parts.push(format!("latency <= {}", dur(l)));
    }
    if let Some(b) = &c.body_contains {
        parts.push(format!("body contains {b:?}"));
    }
    if let Some((path, value)) = &c.json_path {
        parts.push(format!("{path} == {value}"));
    }
    if let Some(code) = c.exit_code {
        parts.push(format!("exit code {code}"));
    }
    if let Some(s) = &c.stdout_contains {
        parts.push(format!("stdout contains {s:?}"));
    }
    if let Some(re) = &c.stdout_matches {
        parts.push(format!("stdout matches /{}/", re.as_str()));
    }
    if let Some(n) = c.min_count {
        parts.push(format!("count >= {n}"));
    }
    if let Some(n) = c.max_count {
        parts.push(format!("count <= {n}"));
    }
    if matches!(kind, ProbeKind::Prometheus { .. }) && c.no_data == NoData::Pass {
        parts.push("no data passes".to_string());
    }
    parts.join(", ")
}

/// `127.0.0.1:9090`, `monitoring.internal/prometheus`; the scheme only when it is https, the
/// one thing about the transport a reader of the plan needs to know.
fn describe_server(url: &str) -> String {
    let without_http = url.strip_prefix("http://").unwrap_or(url);
    without_http.trim_end_matches('/').to_string()
}

/// The human-readable plan.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "experiment {} ({})", plan.name, plan.source.display());
    let _ = writeln!(
        out,
        "  max_duration {}; {}; revert timeout {}{}",
        dur(plan.max_duration),
        if plan.abort_on_probe_failure {
            "a failing during-probe aborts at once"
        } else {
            "a failing during-probe marks the run deviated (no abort)"
        },
        dur(plan.revert_timeout),
        if plan.check_timeout == crate::plan::compile::DEFAULT_CHECK_TIMEOUT {
            String::new()
        } else {
            format!(
                "; checks before injecting given {}",
                dur(plan.check_timeout)
            )
        }
    );

    if !plan.experiment.vars.is_empty() {
        let vars: Vec<String> = plan
            .experiment
            .vars
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        let _ = writeln!(out, "  vars: {}", vars.join(", "));
    }

    let _ = writeln!(out, "\ntargets (matched now)");
    let protected = plan.protected_flows();
    for (name, target) in &plan.targets {
        let selector = match target {
            TargetSpec::Process(selector) => selector,
            TargetSpec::Network(selector) => {
                describe_network(&mut out, name, selector, &protected);
                continue;
            }
        };
        let _ = writeln!(
            out,
            "  {name}: process [{}]",
            selector.selector().describe()
        );
        if selector.selector().container.is_some() {
            describe_containers(&mut out, selector);
        }
        match selector.select() {
            Ok(selection) => {
                if selection.picked.is_empty() {
                    let _ = writeln!(out, "    matches nothing now (setup may start it)");
                }
                for p in &selection.picked {
                    let _ = writeln!(
                        out,
                        "    would hit pid {} ({}) {}",
                        p.pid,
                        p.name,
                        truncate(&p.cmdline, 60)
                    );
                }
                if selection.matched > selection.picked.len() {
                    let _ = writeln!(
                        out,
                        "    ({} of {} matches picked)",
                        selection.picked.len(),
                        selection.matched
                    );
                }
                for (pid, why) in &selection.refused {
                    let _ = writeln!(
                        out,
                        "    refused pid {pid}: {why} (set force: true to allow)"
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "    cannot resolve now: {e}");
            }
        }
    }

    let _ = writeln!(out, "\nprobes");
    for (name, probe) in &plan.probes {
        let _ = writeln!(out, "  {name}: {}", describe_probe(probe));
    }

    let _ = writeln!(out, "\nsteady state");
    match &plan.before {
        Some(g) if g.wait_until.is_zero() => {
            let _ = writeln!(out, "  before: {} (one try)", g.probes.join(", "));
        }
        Some(g) => {
            let _ = writeln!(
                out,
                "  before: {} (retry for up to {})",
                g.probes.join(", "),
                dur(g.wait_until)
            );
        }
        None => {
            let _ = writeln!(out, "  before: no gate");
        }
    }
    if plan.during.is_empty() {
        let _ = writeln!(out, "  during: nothing watched");
    } else {
        let _ = writeln!(
            out,
            "  during: {} (from T0 until the last fault ends)",
            plan.during.join(", ")
        );
    }
    match &plan.after {
        Some(a) => {
            let _ = writeln!(
                out,
                "  after:  {} within {}",
                a.probes.join(", "),
                dur(a.within)
            );
        }
        None => {
            let _ = writeln!(out, "  after:  no recovery check");
        }
    }

    let _ = writeln!(
        out,
        "\ntimeline (offsets from T0, the moment the gate passes)"
    );
    let starts = plan.earliest_starts();
    let mut order: Vec<usize> = (0..plan.faults.len()).collect();
    order.sort_by_key(|&i| (starts[i], i));
    for i in order {
        let f = &plan.faults[i];
        let start = starts[i].unwrap_or_default();
        let window = match f.duration {
            Some(d) => format!("+{} .. +{}", dur(start), dur(start + d)),
            None => format!("+{}", dur(start)),
        };
        let action = format!("{} ({})", f.kind.as_str(), f.action.effect());
        let mut extra = Vec::new();
        if !f.after.is_empty() {
            extra.push(format!("after {} + {}", f.after.join(", "), dur(f.delay)));
        }
        if let Some(every) = f.repeat_every {
            extra.push(format!("repeat every {}", dur(every)));
        }
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!("  [{}]", extra.join("; "))
        };
        let _ = writeln!(
            out,
            "  {window:<18} {}: {action} -> {}{extra}",
            f.id,
            f.target.as_deref().unwrap_or("the host")
        );
    }
    if plan.faults.is_empty() {
        let _ = writeln!(out, "  no faults");
    }

    for (title, commands) in [("setup", &plan.setup), ("cleanup", &plan.cleanup)] {
        if commands.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{title}");
        for c in commands {
            let _ = writeln!(
                out,
                "  {}: {:?}{}",
                c.name,
                c.argv,
                if c.background { " (background)" } else { "" }
            );
        }
    }
    let network_kinds: Vec<&str> = plan
        .faults
        .iter()
        .filter(|f| f.kind.is_network())
        .map(|f| f.kind.as_str())
        .collect();
    if !network_kinds.is_empty() {
        let report = crate::doctor::examine(None);
        let _ = writeln!(out, "\nbackends on this host (details: faultline doctor)");
        for f in plan.faults.iter().filter(|f| f.kind.is_network()) {
            // A forced backend goes through the same choice as a run's, which may refuse it.
            let forced = match &f.action {
                FaultAction::Network(crate::plan::NetworkAction::Delay { backend, .. })
                    if *backend != crate::plan::DelayBackend::Auto =>
                {
                    Some(crate::host::HostCaps::get().delay_route(*backend))
                }
                _ => None,
            };
            let line = match (forced, report.backend_for(f.kind.as_str())) {
                (Some(Ok(route)), _) => format!("{} (forced by the experiment)", route.as_str()),
                (Some(Err(why)), _) => format!("UNAVAILABLE: {why}"),
                (None, Some(choice)) => match &choice.backend {
                    Some(backend) => backend.clone(),
                    None => format!("UNAVAILABLE: {}", choice.detail),
                },
                (None, None) => "unknown".into(),
            };
            let _ = writeln!(out, "  {}: {line}", f.id);
        }
        if !report.leftovers.is_empty() {
            let _ = writeln!(
                out,
                "  left behind by an earlier run: {}",
                report.leftovers.join("; ")
            );
        }
    }
    let _ = writeln!(out, "\nnothing was injected (plan only)");
    out
}

fn describe_network(
    out: &mut String,
    name: &str,
    selector: &crate::fault::network::NetworkTarget,
    protected: &[crate::net::Protected],
) {
    let _ = writeln!(out, "  {name}: network");
    let traffic = match crate::fault::network::resolve(selector, protected) {
        Ok(traffic) => traffic,
        Err(e) => {
            let _ = writeln!(out, "    cannot resolve now: {e}");
            return;
        }
    };
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "any".to_string()
        } else {
            items.join(", ")
        }
    };
    let _ = writeln!(
        out,
        "    {} {} traffic{}{}",
        format!("{:?}", traffic.direction).to_lowercase(),
        format!("{:?}", traffic.protocol).to_lowercase(),
        traffic
            .netns
            .as_ref()
            .map(|n| format!(" in netns {n}"))
            .unwrap_or_default(),
        if traffic.interfaces.is_empty() {
            String::new()
        } else {
            format!(" on {}", traffic.interfaces.join(", "))
        },
    );
    let _ = writeln!(
        out,
        "    remote {} ports {}; local {} ports {}",
        list(traffic.remote.iter().map(ToString::to_string).collect()),
        list(
            traffic
                .remote_ports
                .iter()
                .map(ToString::to_string)
                .collect()
        ),
        list(traffic.local.iter().map(ToString::to_string).collect()),
        list(
            traffic
                .local_ports
                .iter()
                .map(ToString::to_string)
                .collect()
        ),
    );
    if let Some(cgroup) = &traffic.cgroup {
        let _ = writeln!(out, "    only processes in cgroup {cgroup}");
    }
    if !selector.lockout_protection {
        let _ = writeln!(
            out,
            "    lockout protection OFF: SSH and probe traffic can be hit"
        );
    }
    for p in &traffic.protected {
        let port = p.remote_port.map(|p| format!(":{p}")).unwrap_or_default();
        let _ = writeln!(out, "    never touched: {}{port} ({})", p.addr, p.reason);
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    }
}
