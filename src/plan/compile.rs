//! Stage two: the semantic checks that turn a parsed `Experiment` into a `Plan`.
//!
//! `compile` runs every check and reports all problems together, each pointing at the value
//! that is wrong and saying how to fix it. It imports the experiment model; nothing in the
//! model imports the plan.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use super::jsonpath::JsonPath;
use super::{
    AfterSpec, Check, CommandSpec, FaultAction, FaultSpec, GateSpec, Plan, ProbeKind, ProbeSpec,
    TargetSpec, WindowSloSpec,
};
use crate::experiment::diagnostic::{describe_invisible, is_invisible, nearest, suggest};
use crate::experiment::model::{
    self as model, Command, Expect, FaultDef, NoData, ProbeDef, ProcessSelector, StatusItem,
    StatusSet, WindowSlo,
};
use crate::experiment::params::ParamChecks;
use crate::experiment::vars::{self, ColumnMap};
use crate::experiment::{Diagnostic, Diagnostics, Dur, Experiment, Pos, Source, Sp};
use crate::secrets::SecretSource;
use crate::sys::proc::CompiledSelector;

mod network;
mod prometheus;
mod target;

/// `a -> b -> a`; a long cycle shows its first and last few faults and how many between.
fn cycle_words(path: &[&str]) -> String {
    const SHOWN: usize = 4;
    if path.len() <= 2 * SHOWN + 1 {
        return path.join(" -> ");
    }
    format!(
        "{} -> ... ({} more) -> {}",
        path[..SHOWN].join(" -> "),
        path.len() - 2 * SHOWN,
        path[path.len() - SHOWN..].join(" -> ")
    )
}

fn dur(d: Duration) -> Dur {
    Dur(d)
}

// ---------------------------------------------------------------------------------------------
// Stage two: Experiment → Plan

pub fn compile(source: &Source, experiment: Experiment) -> Result<Plan, Diagnostics> {
    let mut checker = Checker {
        experiment: &experiment,
        problems: Vec::new(),
        compiled_targets: HashMap::new(),
    };
    let parts = checker.run();
    let mut problems = checker.problems;
    let (secrets, secret_problems) = secrets(source, &experiment);
    if !problems.is_empty() || !secret_problems.is_empty() {
        // Positions come from the substituted text; show them in the file as written.
        let columns = ColumnMap::of(&source.text, &experiment.vars);
        problems = problems.into_iter().map(|d| columns.restore(d)).collect();
        problems.extend(secret_problems);
        // File order reads best; problems without a position go last.
        problems.sort_by_key(|d| d.pos.map_or((u32::MAX, u32::MAX), |p| (p.line, p.column)));
        return Err(Diagnostics::new(source, problems));
    }
    Ok(Plan {
        name: experiment.metadata.name.value.clone(),
        source: source.path.clone(),
        targets: parts.targets,
        probes: parts.probes,
        before: parts.before,
        during: parts.during,
        after: parts.after,
        faults: parts.faults,
        abort_on_probe_failure: experiment.abort.on_probe_failure,
        revert_timeout: parts.revert_timeout,
        check_timeout: parts.check_timeout,
        max_duration: parts.max_duration,
        setup: parts.setup,
        cleanup: parts.cleanup,
        secrets,
        experiment,
    })
}

const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_AFTER_WITHIN: Duration = Duration::from_secs(30);
const DEFAULT_REVERT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(15);
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The secrets an experiment declares, and what is wrong with them or with their uses:
/// `${secret.NAME}` may stand only in a probe's URL, its headers' values or its command's env
/// values (what the probe sends), must name a declared secret, and each secret comes from
/// exactly one of `env` and `file`. Positions are in the file as written.
fn secrets(
    source: &Source,
    experiment: &Experiment,
) -> (BTreeMap<String, SecretSource>, Vec<Diagnostic>) {
    let mut problems = Vec::new();
    let mut sources = BTreeMap::new();
    for (name, def) in &experiment.secrets {
        if !vars::is_var_name(name) {
            problems.push(
                Diagnostic::at(
                    def.pos,
                    format!("`{name}` is not a secret name"),
                    "invalid name",
                )
                .with_hint(
                    "secret names start with a letter or `_` and hold letters, digits, `_` and `-`",
                ),
            );
        }
        match (&def.env, &def.file) {
            (Some(var), None) if !var.is_empty() && !var.contains(['=', '\0']) => {
                sources.insert(name.clone(), SecretSource::Env(var.value.clone()));
            }
            (None, Some(path)) if path.starts_with('/') => {
                sources.insert(name.clone(), SecretSource::File(path.value.clone()));
            }
            (Some(var), None) => problems.push(
                Diagnostic::at(var.pos, format!("secret `{name}`: `{}` is not an environment variable name", var.value), "not a name")
                    .with_hint("write the variable's name, such as `API_TOKEN`"),
            ),
            (None, Some(path)) => problems.push(
                Diagnostic::at(path.pos, format!("secret `{name}`: `{}` is not an absolute path", path.value), "relative")
                    .with_hint("give the file's full path, such as `/run/secrets/api-token`, so the run does not depend on its directory"),
            ),
            _ => problems.push(
                Diagnostic::at(def.pos, format!("secret `{name}` needs exactly one of `env` and `file`"), "where from?")
                    .with_hint("write `{env: API_TOKEN}` or `{file: /run/secrets/api-token}`"),
            ),
        }
    }
    // Every string the experiment holds, with where it is; only the probe fields that are
    // sent may carry a secret.
    let mut uses: Vec<(Vec<String>, bool, String)> = Vec::new();
    collect_strings(
        &serde_json::to_value(experiment).unwrap_or_default(),
        &mut Vec::new(),
        &mut uses,
    );
    let mut reported = std::collections::BTreeSet::new();
    for (path, is_key, text) in &uses {
        for name in crate::secrets::references(text) {
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            let sent = !is_key
                && matches!(
                    segments.as_slice(),
                    ["probes", _, "http", "url"]
                        | ["probes", _, "http", "headers", _]
                        | ["probes", _, "prometheus", "url"]
                        | ["probes", _, "prometheus", "headers", _]
                        | ["probes", _, "command", "env", _]
                );
            let problem = if !sent {
                Some((
                    format!("a secret cannot stand in `{}`", path.join(".")),
                    "a secret can stand only in a probe's `url`, the values of its `headers`, or the values of a command probe's `env`: what the probe sends".to_string(),
                ))
            } else if !experiment.secrets.contains_key(name) {
                Some((
                    format!("unknown secret `{name}`"),
                    match nearest(name, experiment.secrets.keys().map(String::as_str)) {
                        Some(best) => format!("did you mean `{best}`?"),
                        None => format!(
                            "declare it at the top of the file: `secrets: {{{name}: {{env: API_TOKEN}}}}`"
                        ),
                    },
                ))
            } else {
                None
            };
            if let Some((message, hint)) = problem
                && reported.insert((name.to_string(), path.join(".")))
            {
                let pos = position_of(&source.text, &crate::secrets::placeholder(name));
                problems.push(Diagnostic::at(pos, message, "here").with_hint(hint));
            }
        }
    }
    (sources, problems)
}

/// Every string in `value` with its path, and whether it is a map key.
fn collect_strings(
    value: &serde_json::Value,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, bool, String)>,
) {
    match value {
        serde_json::Value::String(text) => out.push((path.clone(), false, text.clone())),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                collect_strings(item, path, out);
                path.pop();
            }
        }
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                path.push(key.clone());
                out.push((path.clone(), true, key.clone()));
                collect_strings(item, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Line and column of the first `needle` in `text`.
fn position_of(text: &str, needle: &str) -> Pos {
    let Some(at) = text.find(needle) else {
        return Pos::UNKNOWN;
    };
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |n| n + 1)..]
        .chars()
        .count()
        + 1;
    Pos {
        line: u32::try_from(line).unwrap_or(u32::MAX),
        column: u32::try_from(column).unwrap_or(u32::MAX),
    }
}

/// Everything in a [`Plan`] except what is copied straight from the experiment.
struct PlanParts {
    targets: BTreeMap<String, TargetSpec>,
    probes: BTreeMap<String, ProbeSpec>,
    before: Option<GateSpec>,
    during: Vec<String>,
    after: Option<AfterSpec>,
    faults: Vec<FaultSpec>,
    revert_timeout: Duration,
    check_timeout: Duration,
    max_duration: Duration,
    setup: Vec<CommandSpec>,
    cleanup: Vec<CommandSpec>,
}

struct Checker<'a> {
    experiment: &'a Experiment,
    problems: Vec<Diagnostic>,
    /// Process targets compiled by `targets`, for the probes that name them.
    compiled_targets: HashMap<String, CompiledSelector>,
}

/// A container's name or ID prefix (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`, as Docker and Podman
/// allow them), or a label as `key=value` with a key and no control characters.
fn is_container_reference(reference: &str) -> bool {
    match reference.split_once('=') {
        Some((key, _)) => !key.is_empty() && !reference.chars().any(char::is_control),
        None => {
            reference
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
                && reference
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        }
    }
}

impl<'a> Checker<'a> {
    /// Check a target's `container` (a reference Docker or Podman could resolve) and that a
    /// `runtime` comes with one.
    fn container_reference(
        &mut self,
        container: Option<&Sp<String>>,
        runtime: Option<&Sp<crate::sys::container::Runtime>>,
        owner: &str,
    ) {
        if let Some(container) = container
            && !is_container_reference(container)
        {
            self.report(
                Diagnostic::at(
                    container.pos,
                    format!("{owner}: `{}` is not a container reference", crate::experiment::diagnostic::visible(container)),
                    "not a container",
                )
                .with_hint("give a container's name or its ID as `docker ps` shows it (`web-1`, `4f1c2d3e4f5a`), or a label as `key=value`"),
            );
        }
        if let (Some(runtime), None) = (runtime, container) {
            self.report(
                Diagnostic::at(runtime.pos, format!("{owner} has `runtime` but no `container`"), "not used")
                    .with_hint("`runtime` says which API to ask about `container`; add `container:` or remove `runtime`"),
            );
        }
    }

    /// The experiment, borrowed for `'a` rather than for as long as `self` is.
    fn exp(&self) -> &'a Experiment {
        self.experiment
    }

    fn report(&mut self, diagnostic: Diagnostic) {
        self.problems.push(diagnostic);
    }

    /// Where a fault kind's parameter checks report.
    fn params(&mut self) -> ParamChecks<'_> {
        ParamChecks::new(&mut self.problems)
    }

    fn run(&mut self) -> PlanParts {
        let experiment = self.exp();
        self.header();
        let targets = self.targets();
        let probes = self.probes();
        let (before, during, after) = self.steady_state();
        let max_duration = self.positive(
            &experiment.max_duration,
            "max_duration",
            "the run needs time to happen",
        );
        let faults = self.faults(max_duration);
        let abort = &experiment.abort;
        let revert_timeout = abort
            .revert_timeout
            .as_ref()
            .map_or(DEFAULT_REVERT_TIMEOUT, |t| {
                self.positive(t, "abort.revert_timeout", "a revert needs time to finish")
            });
        let check_timeout = abort
            .check_timeout
            .as_ref()
            .map_or(DEFAULT_CHECK_TIMEOUT, |t| {
                self.positive(
                    t,
                    "abort.check_timeout",
                    "the checks before injecting need time to answer",
                )
            });
        let setup = self.commands(&experiment.setup, "setup");
        let cleanup = self.commands(&experiment.cleanup, "cleanup");
        PlanParts {
            targets,
            probes,
            before,
            during,
            after,
            faults,
            revert_timeout,
            check_timeout,
            max_duration,
            setup,
            cleanup,
        }
    }

    /// A duration that must be longer than zero; returns it either way so checking goes on.
    fn positive(&mut self, value: &Sp<Dur>, key: &str, why: &str) -> Duration {
        if value.get().is_zero() {
            self.report(
                Diagnostic::at(value.pos, format!("`{key}` must be longer than 0s"), "zero")
                    .with_hint(format!("{why}; give a duration such as `500ms` or `10s`")),
            );
        }
        value.get()
    }

    fn header(&mut self) {
        let experiment = self.exp();
        let version = &experiment.api_version;
        if version.value != model::API_VERSION {
            let hint = if version.starts_with("faultline/") {
                format!(
                    "this faultline reads `{}` files; a file for another version needs a matching faultline",
                    model::API_VERSION
                )
            } else {
                format!("write `apiVersion: {}`", model::API_VERSION)
            };
            self.report(
                Diagnostic::at(
                    version.pos,
                    format!("unsupported apiVersion `{}`", version.value),
                    format!("expected `{}`", model::API_VERSION),
                )
                .with_hint(hint),
            );
        }
        let name = &experiment.metadata.name;
        if name.trim().is_empty() {
            self.report(
                Diagnostic::at(name.pos, "`metadata.name` is empty", "empty name")
                    .with_hint("name the experiment; the name appears in reports and the journal"),
            );
        }
        // The name is printed on the operator's terminal and in reports: an escape sequence
        // or a line break in it would act there.
        if let Some(c) = name.chars().find(|c| is_invisible(*c)) {
            self.report(
                Diagnostic::at(
                    name.pos,
                    format!("`metadata.name` holds {}", describe_invisible(c)),
                    "invisible character",
                )
                .with_hint("names are printed on terminals and in reports; use visible characters on one line"),
            );
        }
    }

    // -- targets ------------------------------------------------------------------------------

    fn targets(&mut self) -> BTreeMap<String, TargetSpec> {
        let mut specs = BTreeMap::new();
        for (name, target) in &self.exp().targets {
            let owner = format!("target `{name}`");
            match (&target.process, &target.network) {
                (Some(selector), None) => {
                    if let Some(compiled) = self.selector(selector, target.pos, &owner) {
                        self.compiled_targets.insert(name.clone(), compiled.clone());
                        specs.insert(name.clone(), TargetSpec::Process(compiled));
                    }
                }
                (None, Some(selector)) => {
                    let compiled = self.network_selector(selector, &owner);
                    specs.insert(name.clone(), TargetSpec::Network(compiled));
                }
                (Some(_), Some(_)) => self.report(
                    Diagnostic::at(target.pos, format!("{owner} has two kinds"), "process and network")
                        .with_hint("a target is either `process:` or `network:`; split it into two targets"),
                ),
                (None, None) => self.report(
                    Diagnostic::at(target.pos, format!("{owner} has no kind"), "no kind key").with_hint(
                        "add a kind key such as `process: {name: my-server}` or `network: {remote: [db.internal]}`",
                    ),
                ),
            }
        }
        specs
    }

    /// Check a process selector and compile its patterns, once: `owner` names where it is
    /// written, for messages ("target `worker`"). What is wrong is reported (the plan is then
    /// not built) and left out of what is returned.
    fn selector(
        &mut self,
        selector: &ProcessSelector,
        pos: Pos,
        owner: &str,
    ) -> Option<CompiledSelector> {
        let has_filter = selector.pid.is_some()
            || selector.pidfile.is_some()
            || selector.name.is_some()
            || selector.cmdline.is_some()
            || selector.cgroup.is_some()
            || selector.container.is_some()
            || selector.uid.is_some();
        if !has_filter {
            self.report(
                Diagnostic::at(pos, format!("{owner} would select every process on the host"), "no filter")
                    .with_hint("add at least one filter: `pid`, `pidfile`, `name`, `cmdline`, `cgroup`, `container` or `uid`"),
            );
        }
        self.container_reference(
            selector.container.as_ref(),
            selector.runtime.as_ref(),
            owner,
        );
        if let Some(cgroup) = &selector.cgroup
            && (!cgroup.starts_with('/')
                || cgroup.split('/').any(|part| part == ".." || part == ".")
                || cgroup.chars().any(char::is_control))
        {
            self.report(
                Diagnostic::at(pos, format!("{owner}: `{}` is not a cgroup path", crate::experiment::diagnostic::visible(cgroup)), "not a cgroup")
                    .with_hint("write the path as /proc/PID/cgroup shows it, from the top: `/system.slice/nginx.service` (no `..`)"),
            );
        }
        if selector.pid == Some(0) {
            self.report(
                Diagnostic::at(pos, format!("{owner} has `pid: 0`"), "not a process")
                    .with_hint("PIDs start at 1; give the PID of the process to act on"),
            );
        }
        if let Some(name) = &selector.name
            && name.chars().count() > 15
        {
            let short: String = name.chars().take(15).collect();
            self.report(
                Diagnostic::at(
                    pos,
                    format!("{owner}: `name: {name}` can never match"),
                    "name too long",
                )
                .with_hint(format!(
                    "the kernel keeps at most 15 characters of a process name (`/proc/PID/comm`); \
                             write `name: {short}` or match the command line with `cmdline`"
                )),
            );
        }
        let cmdline = selector
            .cmdline
            .as_ref()
            .and_then(|pattern| self.regex(pattern, "cmdline"));
        let exclude_cmdline = selector
            .exclude
            .as_ref()
            .and_then(|e| e.cmdline.as_ref())
            .and_then(|pattern| self.regex(pattern, "exclude.cmdline"));
        if let (Some(_), Some(percent)) = (&selector.count, &selector.percent) {
            self.report(
                Diagnostic::at(percent.pos, format!("{owner} has both `count` and `percent`"), "second limit")
                    .with_hint("`count` picks a fixed number of matches and `percent` a share of them; keep one"),
            );
        }
        if let Some(percent) = &selector.percent
            && !(1..=100).contains(&percent.value)
        {
            self.report(
                Diagnostic::at(
                    percent.pos,
                    format!("`percent: {}` is out of range", percent.value),
                    "not 1-100",
                )
                .with_hint("give a share of the matches from 1 to 100"),
            );
        }
        if let Some(count) = &selector.count
            && count.value == 0
        {
            self.report(
                Diagnostic::at(count.pos, "`count: 0` selects nothing", "zero")
                    .with_hint("give at least 1, or leave `count` out to act on every match"),
            );
        }
        if selector.seed.is_some() && !selector.random {
            self.report(
                Diagnostic::at(
                    pos,
                    format!("{owner} has a `seed` but not `random: true`"),
                    "seed unused",
                )
                .with_hint(
                    "`seed` makes random picks repeatable; add `random: true` or remove `seed`",
                ),
            );
        }
        CompiledSelector::from_compiled(selector.into(), cmdline, exclude_cmdline)
    }

    fn regex(&mut self, pattern: &Sp<String>, key: &str) -> Option<regex::Regex> {
        match regex::Regex::new(pattern) {
            Ok(regex) => Some(regex),
            Err(error) => {
                // The regex crate's message is a multi-line drawing; its last line says what is wrong.
                let text = error.to_string();
                let reason = text
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .trim_start_matches("error: ");
                let hint = if matches!(error, regex::Error::CompiledTooBig(_)) {
                    "the pattern compiles into more than faultline allows (its repetitions multiply); match a shorter, simpler pattern"
                } else {
                    "the syntax is that of Rust's `regex` crate; escape special characters with `\\`"
                };
                self.report(
                    Diagnostic::at(
                        pattern.pos,
                        format!("`{key}` is not a valid regular expression"),
                        reason,
                    )
                    .with_hint(hint),
                );
                None
            }
        }
    }

    // -- probes -------------------------------------------------------------------------------

    fn probes(&mut self) -> BTreeMap<String, ProbeSpec> {
        let mut specs = BTreeMap::new();
        for (name, def) in &self.exp().probes {
            if let Some(spec) = self.probe(name, def) {
                specs.insert(name.clone(), spec);
            }
        }
        specs
    }

    fn probe(&mut self, name: &str, def: &Sp<ProbeDef>) -> Option<ProbeSpec> {
        let kinds: Vec<&str> = [
            ("http", def.http.is_some()),
            ("tcp", def.tcp.is_some()),
            ("command", def.command.is_some()),
            ("process", def.process.is_some()),
            ("prometheus", def.prometheus.is_some()),
        ]
        .into_iter()
        .filter_map(|(kind, given)| given.then_some(kind))
        .collect();
        let kind_name = match kinds.as_slice() {
            [kind] => Some(*kind),
            [] => {
                self.report(
                    Diagnostic::at(
                        def.pos,
                        format!("probe `{name}` has no kind"),
                        "no kind key",
                    )
                    .with_hint("add one of `http`, `tcp`, `command`, `process` or `prometheus`"),
                );
                None
            }
            many => {
                self.report(
                    Diagnostic::at(
                        def.pos,
                        format!("probe `{name}` has {} kinds", many.len()),
                        "one kind per probe",
                    )
                    .with_hint(format!(
                        "a probe checks one thing; split {} into separate probes",
                        many.iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(" and ")
                    )),
                );
                None
            }
        };
        let kind = self.probe_kind(name, def);
        let interval = match &def.interval {
            Some(interval) => self.positive(interval, "interval", "samples are taken this often"),
            None => DEFAULT_INTERVAL,
        };
        let timeout = match &def.timeout {
            Some(timeout) => {
                let value = self.positive(timeout, "timeout", "a sample needs time to run");
                if value > interval {
                    self.report(
                        Diagnostic::at(
                            timeout.pos,
                            format!("probe `{name}`: `timeout` {} is longer than `interval` {}", timeout.value, dur(interval)),
                            "longer than the interval",
                        )
                        .with_hint(format!(
                            "a sample must finish before the next one is due; make `timeout` at most {} or raise `interval`",
                            dur(interval)
                        )),
                    );
                }
                value
            }
            None => DEFAULT_TIMEOUT.min(interval),
        };
        let failure_threshold = match &def.failure_threshold {
            Some(threshold) if threshold.value == 0 => {
                self.report(
                    Diagnostic::at(threshold.pos, "`failure_threshold: 0` would fail before any sample", "zero")
                        .with_hint("give the number of consecutive failed samples that count as failing, at least 1"),
                );
                1
            }
            Some(threshold) => threshold.value,
            None => 1,
        };
        let slo = def.slo.as_ref().map(|slo| self.slo(name, slo, interval));
        let check = kind_name.map(|kind_name| self.check(name, kind_name, &def.expect, def.pos));
        Some(ProbeSpec {
            name: name.to_string(),
            kind: kind?,
            check: check?,
            interval,
            timeout,
            failure_threshold,
            slo,
        })
    }

    /// The probe's one kind; `None` when there is not exactly one (already reported) or it is invalid.
    fn probe_kind(&mut self, name: &str, def: &Sp<ProbeDef>) -> Option<ProbeKind> {
        let mut kinds = Vec::new();
        if let Some(http) = &def.http {
            kinds.push(self.http(http));
        }
        if let Some(tcp) = &def.tcp {
            kinds.push(self.tcp_address(&tcp.address).then(|| ProbeKind::Tcp {
                address: tcp.address.value.clone(),
            }));
        }
        if let Some(command) = &def.command {
            kinds.push(
                self.argv(&command.argv, &command.env)
                    .then(|| ProbeKind::Command {
                        argv: command.argv.value.clone(),
                        env: command.env.clone(),
                    }),
            );
        }
        if let Some(process) = &def.process {
            kinds.push(self.process_probe(name, process, def.pos));
        }
        if let Some(prometheus) = &def.prometheus {
            kinds.push(self.prometheus_probe(prometheus));
        }
        match kinds.len() {
            1 => kinds.pop().flatten(),
            _ => None,
        }
    }

    fn http(&mut self, http: &model::HttpProbe) -> Option<ProbeKind> {
        let mut valid = self
            .http_url(&http.url, "http://127.0.0.1:8080/health")
            .is_some();
        let method = match &http.method {
            Some(method) => {
                let token = !method.is_empty()
                    && method
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !token {
                    valid = false;
                    self.report(
                        Diagnostic::at(
                            method.pos,
                            format!("`{}` is not an HTTP method", method.value),
                            "invalid method",
                        )
                        .with_hint("use a method such as `GET`, `HEAD` or `POST`"),
                    );
                }
                method.value.clone()
            }
            None => "GET".to_string(),
        };
        valid &= self.headers(&http.headers, http.url.pos);
        valid.then(|| ProbeKind::Http {
            url: http.url.value.clone(),
            method,
            headers: http.headers.clone(),
            body: http.body.clone(),
        })
    }

    /// An `http://` or `https://` URL; `example` shows a good one in the hint.
    fn http_url(&mut self, url: &Sp<String>, example: &str) -> Option<reqwest::Url> {
        // The URL parser quietly drops or encodes control characters: the probe would ask for
        // another URL than the one written.
        if let Some(c) = url.chars().find(|c| c.is_control()) {
            self.report(
                Diagnostic::at(
                    url.pos,
                    format!(
                        "the URL holds {}",
                        crate::experiment::diagnostic::describe_invisible(c)
                    ),
                    "control character",
                )
                .with_hint("a URL is visible text; percent-encode a byte you mean (`%00`)"),
            );
            return None;
        }
        match reqwest::Url::parse(url) {
            Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => {
                self.report(
                    Diagnostic::at(
                        url.pos,
                        format!("`{}` is not an HTTP URL", url.value),
                        "scheme",
                    )
                    .with_hint(format!(
                        "use `http://` or `https://` (not `{}://`)",
                        parsed.scheme()
                    )),
                );
                None
            }
            Ok(parsed) => Some(parsed),
            Err(error) => {
                self.report(
                    Diagnostic::at(
                        url.pos,
                        format!("`{}` is not a valid URL", url.value),
                        error.to_string(),
                    )
                    .with_hint(format!("write a full URL such as `{example}`")),
                );
                None
            }
        }
    }

    /// Headers that can be sent as written; a header map carries no positions, so problems
    /// point at `pos` (the probe's URL).
    fn headers(&mut self, headers: &BTreeMap<String, String>, pos: Pos) -> bool {
        let mut valid = true;
        for (header, value) in headers {
            let name_ok = reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_ok();
            let value_ok = reqwest::header::HeaderValue::from_str(value).is_ok();
            if !(name_ok && value_ok) {
                valid = false;
                self.report(
                    Diagnostic::at(pos, format!("header `{header}` cannot be sent"), "in this probe")
                        .with_hint("header names are letters, digits and `-`; values are visible text on one line"),
                );
            }
        }
        valid
    }

    fn tcp_address(&mut self, address: &Sp<String>) -> bool {
        match check_socket_address(address) {
            Ok(()) => true,
            Err(reason) => {
                self.report(
                    Diagnostic::at(
                        address.pos,
                        format!("`{}` is not a TCP address", address.value),
                        reason,
                    )
                    .with_hint("write `host:port`, for example `127.0.0.1:8080` or `[::1]:8080`"),
                );
                false
            }
        }
    }

    /// A program, its arguments and its environment as the kernel can take them. `env` has
    /// no positions of its own: its problems point at `argv`.
    fn argv(&mut self, argv: &Sp<Vec<String>>, env: &BTreeMap<String, String>) -> bool {
        if argv.first().is_none_or(|program| program.trim().is_empty()) {
            self.report(
                Diagnostic::at(argv.pos, "`argv` has no program", "empty").with_hint(
                    "give the program and its arguments, for example `argv: [curl, -sf, http://127.0.0.1:8080/]`",
                ),
            );
            return false;
        }
        let mut valid = true;
        if let Some(arg) = argv.iter().find(|arg| arg.contains('\0')) {
            valid = false;
            self.report(
                Diagnostic::at(argv.pos, format!("`argv` holds a NUL byte (in `{arg}`)"), "NUL")
                    .with_hint("the kernel ends each argument at a NUL, so the program would get another one; remove it"),
            );
        }
        for (name, value) in env {
            let problem = if name.is_empty() {
                Some("an empty name".to_string())
            } else if name.contains('=') {
                Some(format!(
                    "`{name}`: a name with `=` (the kernel splits at the first `=`)"
                ))
            } else if name.contains('\0') || value.contains('\0') {
                Some(format!("`{name}`: a NUL byte"))
            } else {
                None
            };
            if let Some(problem) = problem {
                valid = false;
                self.report(
                    Diagnostic::at(argv.pos, format!("`env` has {problem}"), "in this command's env")
                        .with_hint("env names are letters, digits and `_` (such as `APP_MODE`); names and values hold no NUL"),
                );
            }
        }
        valid
    }

    fn process_probe(
        &mut self,
        name: &str,
        process: &model::ProcessProbe,
        probe_pos: Pos,
    ) -> Option<ProbeKind> {
        match (&process.target, &process.select) {
            (Some(target), None) => {
                self.process_target_ref(target, &format!("probe `{name}`"))?;
                // Not there when the target's own selector is wrong (reported with it).
                let selector = Box::new(self.compiled_targets.get(target.as_str())?.clone());
                Some(ProbeKind::Process { selector })
            }
            (None, Some(selector)) => {
                let selector =
                    Box::new(self.selector(selector, probe_pos, &format!("probe `{name}`"))?);
                Some(ProbeKind::Process { selector })
            }
            (Some(target), Some(_)) => {
                self.report(
                    Diagnostic::at(
                        target.pos,
                        format!("probe `{name}` has both `target` and `select`"),
                        "second selection",
                    )
                    .with_hint("count either a named target or an inline selection; keep one"),
                );
                None
            }
            (None, None) => {
                self.report(
                    Diagnostic::at(
                        probe_pos,
                        format!("process probe `{name}` selects nothing"),
                        "no selection",
                    )
                    .with_hint("add `target: <name of a target>` or `select: {name: my-server}`"),
                );
                None
            }
        }
    }

    /// The selector of the process target named by `reference`, reporting unknown or
    /// non-process targets on behalf of `owner`.
    fn process_target_ref(
        &mut self,
        reference: &Sp<String>,
        owner: &str,
    ) -> Option<ProcessSelector> {
        let targets = &self.exp().targets;
        match targets.get(reference.as_str()) {
            Some(target) if target.process.is_some() => target.process.clone(),
            Some(_) => {
                self.report(
                    Diagnostic::at(
                        reference.pos,
                        format!(
                            "{owner} needs a process target, but `{}` selects network traffic",
                            reference.value
                        ),
                        "not a process target",
                    )
                    .with_hint(
                        "define a target with `process: {name: ...}` for process faults and probes",
                    ),
                );
                None
            }
            None => {
                self.unknown_target(reference, owner);
                None
            }
        }
    }

    fn unknown_target(&mut self, reference: &Sp<String>, owner: &str) {
        let targets = &self.exp().targets;
        self.report(
            Diagnostic::at(
                reference.pos,
                format!("{owner} names unknown target `{}`", reference.value),
                "no such target",
            )
            .with_hint(suggest(
                reference,
                targets.keys().map(String::as_str),
                "targets",
            )),
        );
    }

    fn check(&mut self, name: &str, kind: &str, expect: &Expect, probe_pos: Pos) -> Check {
        let mut fits = true;
        let keys: [(&str, Option<Pos>, &[&str]); 15] = [
            ("status", pos_of(&expect.status), &["http"]),
            (
                "max_latency",
                pos_of(&expect.max_latency),
                &["http", "tcp", "prometheus"],
            ),
            (
                "body_contains",
                expect.body_contains.as_ref().map(|_| probe_pos),
                &["http"],
            ),
            ("json_path", pos_of(&expect.json_path), &["http"]),
            ("exit_code", pos_of(&expect.exit_code), &["command"]),
            (
                "stdout_contains",
                expect.stdout_contains.as_ref().map(|_| probe_pos),
                &["command"],
            ),
            (
                "stdout_matches",
                pos_of(&expect.stdout_matches),
                &["command"],
            ),
            ("min_count", pos_of(&expect.min_count), &["process"]),
            ("max_count", pos_of(&expect.max_count), &["process"]),
            ("below", pos_of(&expect.below), &["prometheus"]),
            ("at_most", pos_of(&expect.at_most), &["prometheus"]),
            ("above", pos_of(&expect.above), &["prometheus"]),
            ("at_least", pos_of(&expect.at_least), &["prometheus"]),
            ("equals", pos_of(&expect.equals), &["prometheus"]),
            ("no_data", pos_of(&expect.no_data), &["prometheus"]),
        ];
        let accepted: Vec<String> = keys
            .iter()
            .filter(|(_, _, kinds)| kinds.contains(&kind))
            .map(|(key, _, _)| format!("`{key}`"))
            .collect();
        for (key, pos, kinds) in keys {
            if let Some(pos) = pos
                && !kinds.contains(&kind)
            {
                fits = false;
                self.report(
                    Diagnostic::at(
                        pos,
                        format!("`expect.{key}` does not apply to {kind} probe `{name}`"),
                        format!("only for {} probes", kinds.join(" and ")),
                    )
                    .with_hint(format!(
                        "remove it; the `expect` of this {kind} probe takes {}",
                        accepted.join(", ")
                    )),
                );
            }
        }
        if !fits {
            return Check::default();
        }
        let mut check = Check {
            max_latency: expect
                .max_latency
                .as_ref()
                .map(|d| self.positive(d, "max_latency", "no sample is that fast")),
            body_contains: expect.body_contains.clone(),
            stdout_contains: expect.stdout_contains.clone(),
            ..Check::default()
        };
        match kind {
            "http" => {
                check.status = match &expect.status {
                    Some(status) => self.status(status),
                    None => vec![(200, 299)],
                };
                if let Some(json) = &expect.json_path {
                    if let Err(reason) = JsonPath::parse(&json.path) {
                        self.report(
                            Diagnostic::at(
                                json.pos,
                                "`json_path.path` is not a JSON path",
                                "invalid path",
                            )
                            .with_hint(reason),
                        );
                    }
                    check.json_path = Some((json.path.clone(), json.equals.clone()));
                }
            }
            "command" => {
                check.exit_code = Some(expect.exit_code.as_ref().map_or(0, |code| code.value));
                check.stdout_matches = expect
                    .stdout_matches
                    .as_ref()
                    .and_then(|p| self.regex(p, "stdout_matches"));
            }
            "process" => {
                let min = expect.min_count.as_ref().map_or(1, |m| m.value);
                if let Some(max) = &expect.max_count
                    && max.value < min
                {
                    self.report(
                            Diagnostic::at(
                                max.pos,
                                format!("`max_count` {} is below `min_count` {min}", max.value),
                                "no count passes",
                            )
                            .with_hint("no number of processes could pass; raise `max_count` or lower `min_count`"),
                        );
                }
                check.min_count = Some(min);
                check.max_count = expect.max_count.as_ref().map(|m| m.value);
            }
            "prometheus" => {
                check.comparisons = self.comparisons(name, expect, probe_pos);
                check.no_data = expect
                    .no_data
                    .as_ref()
                    .map_or_else(NoData::default, |n| n.value);
            }
            _ => {}
        }
        check
    }

    fn status(&mut self, status: &Sp<StatusSet>) -> Vec<(u16, u16)> {
        let ranges = match &status.value {
            StatusSet::One(code) => status_code(*code).map(|c| vec![(c, c)]),
            StatusSet::Range(text) => status_range(text).map(|r| vec![r]),
            StatusSet::List(items) if items.is_empty() => {
                Err("an empty list accepts no status at all; list at least one code".to_string())
            }
            StatusSet::List(items) => items
                .iter()
                .map(|item| match item {
                    StatusItem::Code(code) => status_code(*code).map(|c| (c, c)),
                    StatusItem::Range(text) => status_range(text),
                })
                .collect(),
        };
        ranges.unwrap_or_else(|reason| {
            self.report(
                Diagnostic::at(status.pos, "invalid `expect.status`", "not a status")
                    .with_hint(reason),
            );
            Vec::new()
        })
    }

    fn slo(&mut self, name: &str, slo: &Sp<WindowSlo>, interval: Duration) -> WindowSloSpec {
        let window = self.positive(
            &slo.window,
            "slo.window",
            "the window holds the samples judged",
        );
        if let Some(ratio) = &slo.success_ratio
            && !(ratio.value > 0.0 && ratio.value <= 1.0)
        {
            let hint = if ratio.value > 1.0 && ratio.value <= 100.0 {
                format!(
                    "it is a fraction, not a percentage: did you mean `{}`?",
                    ratio.value / 100.0
                )
            } else {
                "give the share of samples that must pass, above 0 and at most 1 (0.99 means 99%)"
                    .to_string()
            };
            self.report(
                Diagnostic::at(
                    ratio.pos,
                    format!("`success_ratio: {}` is out of range", ratio.value),
                    "not in (0, 1]",
                )
                .with_hint(hint),
            );
        }
        if let Some(latency) = &slo.latency {
            let percentile = &latency.percentile;
            if !(percentile.value > 0.0 && percentile.value < 100.0) {
                self.report(
                    Diagnostic::at(
                        percentile.pos,
                        format!("`percentile: {}` is out of range", percentile.value),
                        "not in (0, 100)",
                    )
                    .with_hint(
                        "give a percentile above 0 and below 100, such as `50`, `99` or `99.9`",
                    ),
                );
            }
            self.positive(&latency.below, "latency.below", "no sample is that fast");
        }
        if slo.success_ratio.is_none() && slo.latency.is_none() {
            self.report(
                Diagnostic::at(
                    slo.pos,
                    format!("the SLO of probe `{name}` checks nothing"),
                    "empty SLO",
                )
                .with_hint(
                    "add `success_ratio: 0.99` and/or `latency: {percentile: 99, below: 300ms}`",
                ),
            );
        }
        let min_samples = match &slo.min_samples {
            Some(min) if min.value == 0 => {
                self.report(
                    Diagnostic::at(
                        min.pos,
                        "`min_samples: 0` would judge an empty window",
                        "zero",
                    )
                    .with_hint("give at least 1"),
                );
                1
            }
            Some(min) => {
                // A window never holds more samples than fit in it; a higher minimum means the
                // SLO is silently never judged.
                if !interval.is_zero() && !window.is_zero() {
                    let capacity = (window.as_nanos() / interval.as_nanos()) + 1;
                    if u128::from(min.value) > capacity {
                        self.report(
                            Diagnostic::at(
                                min.pos,
                                format!("`min_samples: {}` can never be reached", min.value),
                                format!("at most {capacity} fit"),
                            )
                            .with_hint(format!(
                                "a {} window holds at most {capacity} samples taken every {}; lower `min_samples` or widen `window`",
                                dur(window),
                                dur(interval)
                            )),
                        );
                    }
                }
                min.value
            }
            None => 1,
        };
        WindowSloSpec {
            window,
            success_ratio: slo.success_ratio.as_ref().map(|r| r.value),
            latency: slo
                .latency
                .as_ref()
                .map(|l| (l.percentile.value, l.below.get())),
            min_samples,
        }
    }

    // -- steady state -------------------------------------------------------------------------

    fn probe_refs(&mut self, references: &[Sp<String>], section: &str) -> Vec<String> {
        let probes = &self.exp().probes;
        for reference in references {
            if !probes.contains_key(reference.as_str()) {
                self.report(
                    Diagnostic::at(
                        reference.pos,
                        format!(
                            "`steady_state.{section}` names unknown probe `{}`",
                            reference.value
                        ),
                        "no such probe",
                    )
                    .with_hint(suggest(
                        reference,
                        probes.keys().map(String::as_str),
                        "probes",
                    )),
                );
            }
        }
        references.iter().map(|r| r.value.clone()).collect()
    }

    fn steady_state(&mut self) -> (Option<GateSpec>, Vec<String>, Option<AfterSpec>) {
        let steady = &self.exp().steady_state;
        let before = steady.before.as_ref().map(|gate| GateSpec {
            probes: self.probe_refs(&gate.probes, "before"),
            wait_until: gate.wait_until.as_ref().map_or(Duration::ZERO, |wait| {
                self.positive(wait, "wait_until", "leave it out for a single try")
            }),
        });
        let during = steady
            .during
            .as_ref()
            .map(|during| self.probe_refs(&during.probes, "during"))
            .unwrap_or_default();
        let after = steady.after.as_ref().map(|after| AfterSpec {
            probes: self.probe_refs(&after.probes, "after"),
            within: after
                .within
                .as_ref()
                .map_or(DEFAULT_AFTER_WITHIN, |within| {
                    self.positive(within, "within", "recovery needs time")
                }),
        });
        (before, during, after)
    }

    // -- faults -------------------------------------------------------------------------------

    fn faults(&mut self, max_duration: Duration) -> Vec<FaultSpec> {
        let faults = &self.exp().faults;
        let mut index_of: HashMap<&str, usize> = HashMap::new();
        for (index, fault) in faults.iter().enumerate() {
            let id = fault.id.trim();
            if id.is_empty() {
                self.report(
                    Diagnostic::at(fault.id.pos, "fault `id` is empty", "empty id")
                        .with_hint("give each fault a short unique id such as `kill-worker`"),
                );
            } else if let Some(&first) = index_of.get(id) {
                self.report(
                    Diagnostic::at(fault.id.pos, format!("duplicate fault id `{id}`"), "used again here").with_hint(
                        format!(
                            "first used on line {}; ids must be unique because `after` and reports refer to them",
                            faults[first].id.pos.line
                        ),
                    ),
                );
            } else {
                index_of.insert(id, index);
            }
        }
        let specs: Vec<FaultSpec> = faults
            .iter()
            .map(|fault| self.fault(fault, &index_of))
            .collect();
        let in_cycle = self.after_cycles(&index_of);
        self.schedule(&in_cycle, max_duration);
        specs
    }

    fn fault(&mut self, fault: &Sp<FaultDef>, index_of: &HashMap<&str, usize>) -> FaultSpec {
        let id = fault.id.value.as_str();
        let kind = fault.kind.value;
        self.params_fit(fault);
        let target = self.fault_target(fault);
        // Unknown targets and targets of the wrong kind are reported by the lookup.
        match (target, kind.is_network()) {
            (Some(target), false) => {
                self.process_target_ref(target, &format!("fault `{id}`"));
            }
            (Some(target), true) => {
                self.network_target_ref(target, &format!("fault `{id}` ({})", kind.as_str()));
            }
            (None, _) => {}
        }
        // The kind's module checks and compiles its parameters; a placeholder stands in for
        // what it refused (the plan is refused with the problems it reported).
        let action = crate::fault::compile(fault, &mut self.params())
            .unwrap_or(FaultAction::ProcessStop(crate::fault::process::Stop));
        let duration = fault
            .duration
            .as_ref()
            .map(|d| self.positive(d, "duration", "the fault must stay injected for some time"));
        let repeat_every = fault.repeat.as_ref().map(|repeat| {
            let every = repeat.every.get();
            match duration {
                None => self.report(
                    Diagnostic::at(repeat.pos, format!("fault `{id}` repeats but has no `duration`"), "repeat without duration")
                        .with_hint("add `duration:`; the fault is injected again at each period until the duration is over"),
                ),
                Some(_) if every.is_zero() => self.report(
                    Diagnostic::at(repeat.pos, "`repeat` period must be longer than 0s", "zero period")
                        .with_hint("write it like `every 10s`"),
                ),
                Some(duration) if every > duration => self.report(
                    Diagnostic::at(repeat.pos, format!("fault `{id}` repeats every {} but lasts {}", repeat.every, dur(duration)), "never repeats")
                        .with_hint("make the period at most the duration, or drop `repeat` for a single injection"),
                ),
                Some(_) => {}
            }
            every
        });
        if let (Some(delay), true) = (&fault.delay, fault.after.is_empty()) {
            self.report(
                Diagnostic::at(delay.pos, format!("fault `{id}` has a `delay` but no `after`"), "delay after nothing")
                    .with_hint("`delay` counts from the faults named in `after`; use `at` for an offset from the start"),
            );
        }
        for dependency in &fault.after {
            if dependency.value == id {
                self.report(
                    Diagnostic::at(
                        dependency.pos,
                        format!("fault `{id}` waits for itself"),
                        "self-reference",
                    )
                    .with_hint(
                        "`after` names other faults that must start first; remove this entry",
                    ),
                );
            } else if !index_of.contains_key(dependency.as_str()) {
                self.report(
                    Diagnostic::at(
                        dependency.pos,
                        format!(
                            "fault `{id}` waits for unknown fault `{}`",
                            dependency.value
                        ),
                        "no such fault",
                    )
                    .with_hint(suggest(
                        dependency,
                        fault_ids(self.exp()),
                        "faults",
                    )),
                );
            }
        }
        FaultSpec {
            id: id.to_string(),
            kind,
            target: fault.target.as_ref().map(|t| t.value.clone()),
            action,
            at: fault.at.as_ref().map_or(Duration::ZERO, |at| at.get()),
            after: fault.after.iter().map(|a| a.value.clone()).collect(),
            delay: fault.delay.as_ref().map_or(Duration::ZERO, |d| d.get()),
            duration,
            repeat_every,
        }
    }

    /// The `after` edges that close a cycle, reported as `a -> b -> a`. Returns the faults on a
    /// cycle, whose start cannot be computed.
    fn after_cycles(&mut self, index_of: &HashMap<&str, usize>) -> Vec<bool> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        let faults = &self.exp().faults;
        let mut marks = vec![Mark::New; faults.len()];
        let mut in_cycle = vec![false; faults.len()];
        // Iterative depth-first search (stack of (fault, next edge)) in file order, so the
        // reported cycles are deterministic.
        for root in 0..faults.len() {
            if marks[root] != Mark::New || index_of.get(faults[root].id.as_str()) != Some(&root) {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
            marks[root] = Mark::Active;
            while let Some(top) = stack.last_mut() {
                let node = top.0;
                let Some(dependency) = faults[node].after.get(top.1) else {
                    marks[node] = Mark::Done;
                    stack.pop();
                    continue;
                };
                top.1 += 1;
                let Some(&next) = index_of.get(dependency.as_str()) else {
                    continue;
                };
                if next == node {
                    continue; // self-reference, reported with the fault
                }
                match marks[next] {
                    Mark::New => {
                        marks[next] = Mark::Active;
                        stack.push((next, 0));
                    }
                    Mark::Active => {
                        let start = stack.iter().position(|&(n, _)| n == next).unwrap_or(0);
                        let mut path: Vec<&str> = stack[start..]
                            .iter()
                            .map(|&(n, _)| faults[n].id.as_str())
                            .collect();
                        path.push(faults[next].id.as_str());
                        for &(n, _) in &stack[start..] {
                            in_cycle[n] = true;
                        }
                        self.report(
                            Diagnostic::at(dependency.pos, format!("`after` forms a cycle: {}", cycle_words(&path)), "closes the cycle")
                                .with_hint("faults in a cycle wait for each other forever; remove one of these `after` entries"),
                        );
                    }
                    Mark::Done => {}
                }
            }
        }
        in_cycle
    }

    /// Earliest start of each fault (`max(at, last dependency's start + delay)`) must leave
    /// it inside `max_duration`.
    fn schedule(&mut self, in_cycle: &[bool], max_duration: Duration) {
        let faults = &self.exp().faults;
        let inputs: Vec<crate::plan::ScheduleInput<'_>> = faults
            .iter()
            .map(|f| crate::plan::ScheduleInput {
                id: f.id.as_str(),
                at: f.at.as_ref().map_or(Duration::ZERO, |at| at.get()),
                after: f.after.iter().map(|a| a.as_str()).collect(),
                delay: f.delay.as_ref().map_or(Duration::ZERO, |d| d.get()),
            })
            .collect();
        let starts: Vec<Option<Duration>> = crate::plan::earliest_starts(&inputs)
            .into_iter()
            .enumerate()
            .map(|(i, s)| if in_cycle[i] { None } else { s })
            .collect();
        if max_duration.is_zero() {
            return;
        }
        for (fault, start) in faults.iter().zip(&starts) {
            let Some(start) = *start else { continue };
            let id = fault.id.as_str();
            let start_pos = fault
                .delay
                .as_ref()
                .or(fault.at.as_ref())
                .map(|d| d.pos)
                .or(fault.after.first().map(|a| a.pos))
                .unwrap_or(fault.id.pos);
            if start >= max_duration {
                self.report(
                    Diagnostic::at(
                        start_pos,
                        format!("fault `{id}` would start at {}, not before max_duration {}", dur(start), dur(max_duration)),
                        "starts too late",
                    )
                    .with_hint("the run ends at max_duration, so this fault would never run; start it earlier or raise `max_duration`"),
                );
            } else if let Some(duration) = &fault.duration {
                let end = start + duration.get();
                if end > max_duration {
                    self.report(
                        Diagnostic::at(
                            duration.pos,
                            format!(
                                "fault `{id}` would run from {} to {}, past max_duration {}",
                                dur(start),
                                dur(end),
                                dur(max_duration)
                            ),
                            "ends too late",
                        )
                        .with_hint(format!(
                            "shorten `duration` to at most {}, start the fault earlier, or raise `max_duration`",
                            dur(max_duration - start)
                        )),
                    );
                }
            }
        }
    }

    // -- setup and cleanup --------------------------------------------------------------------

    fn commands(&mut self, commands: &[Sp<Command>], section: &str) -> Vec<CommandSpec> {
        commands
            .iter()
            .filter_map(|command| {
                let has_program = self.argv(&command.argv, &command.env);
                if command.background && section != "setup" {
                    self.report(
                        Diagnostic::at(command.pos, format!("`background: true` in `{section}`"), "only for setup")
                            .with_hint(format!("{section} commands must finish; only setup commands may run in the background")),
                    );
                }
                let timeout = command.timeout.as_ref().map_or(DEFAULT_COMMAND_TIMEOUT, |timeout| {
                    self.positive(timeout, "timeout", "the command needs time to run")
                });
                if !has_program {
                    return None;
                }
                let program = &command.argv[0];
                let name = command.name.clone().unwrap_or_else(|| {
                    Path::new(program)
                        .file_name()
                        .map_or_else(|| program.clone(), |n| n.to_string_lossy().into_owned())
                });
                let mut argv = command.argv.value.clone();
                if program == "faultline" {
                    match std::env::current_exe() {
                        Ok(exe) => argv[0] = exe.to_string_lossy().into_owned(),
                        Err(error) => self.report(
                            Diagnostic::at(command.argv.pos, format!("cannot find this faultline binary: {error}"), "")
                                .with_hint("give the full path of the faultline binary instead"),
                        ),
                    }
                }
                Some(CommandSpec {
                    name,
                    argv,
                    env: command.env.clone(),
                    background: command.background,
                    timeout,
                })
            })
            .collect()
    }
}

/// Fault ids in file order, so suggestions are deterministic.
fn fault_ids(experiment: &Experiment) -> impl Iterator<Item = &str> + Clone {
    experiment
        .faults
        .iter()
        .map(|f| f.id.as_str())
        .filter(|id| !id.trim().is_empty())
}

fn pos_of<T>(value: &Option<Sp<T>>) -> Option<Pos> {
    value.as_ref().map(|v| v.pos)
}

fn status_code(code: u16) -> Result<u16, String> {
    if (100..=599).contains(&code) {
        Ok(code)
    } else {
        Err(format!(
            "`{code}` is not an HTTP status code; codes run from 100 to 599"
        ))
    }
}

fn status_range(text: &str) -> Result<(u16, u16), String> {
    let parse = |part: &str| {
        part.trim()
            .parse::<u16>()
            .map_err(|_| format!("`{text}` is not a status range; write it like `\"200-299\"`"))
            .and_then(status_code)
    };
    match text.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi {
                return Err(format!(
                    "`{text}` is backwards; write the lower code first: `\"{hi}-{lo}\"`"
                ));
            }
            Ok((lo, hi))
        }
        None => parse(text).map(|code| (code, code)),
    }
}

/// `host:port` or `[v6]:port`, with a port that is not zero.
fn check_socket_address(address: &str) -> Result<(), &'static str> {
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or("no port after the bracketed address")?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| "not an IPv6 address in brackets")?;
        (host, port)
    } else {
        let (host, port) = address.rsplit_once(':').ok_or("no port")?;
        if host.contains(':') {
            return Err("an IPv6 address needs brackets");
        }
        (host, port)
    };
    if host.is_empty() {
        return Err("no host");
    }
    match port.parse::<u16>() {
        Ok(0) => Err("port 0"),
        Ok(_) => Ok(()),
        Err(_) => Err("the port is not a number from 1 to 65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_are_checked() {
        assert_eq!(status_range("200-299").unwrap(), (200, 299));
        assert_eq!(status_range("204").unwrap(), (204, 204));
        assert!(status_range("299-200").is_err());
        assert!(status_range("200-999").is_err());
        assert!(status_range("2xx").is_err());
    }

    #[test]
    fn socket_addresses_need_a_port() {
        assert!(check_socket_address("127.0.0.1:8080").is_ok());
        assert!(check_socket_address("localhost:80").is_ok());
        assert!(check_socket_address("[::1]:8080").is_ok());
        assert!(check_socket_address("127.0.0.1").is_err());
        assert!(check_socket_address("::1:8080").is_err());
        assert!(check_socket_address("127.0.0.1:0").is_err());
        assert!(check_socket_address(":8080").is_err());
    }
}
