//! `faultline inject`: one fault from the command line, turned into an ordinary experiment
//! (YAML text) so it goes through the same strict validation, plan, engine, state file and
//! reports as a file would. The text is what `--dry-run` shows and `--save` writes, so an
//! ad-hoc fault that worked can become a reviewed experiment file unchanged.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::cli::InjectArgs;
use crate::experiment::Source;
use crate::experiment::duration::Dur;
use crate::experiment::model::FaultKind;

/// What diagnostics call the generated experiment.
pub const SOURCE_NAME: &str = "<faultline inject>";

/// How long the `--abort-if-*` probes may take to pass before the fault (seconds), and to
/// pass again after it.
const GATE_WAIT_S: u64 = 10;
const RECOVERY_WITHIN_S: u64 = 30;

/// A mistake on the command line that the experiment format cannot point at.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("`{0}` is not PARAM=VALUE")]
    NotAParam(String),
    #[error("param `{0}` is given twice")]
    DuplicateParam(String),
    #[error(
        "`{kind}` needs `--for DURATION`: the fault is reverted when it is over (or at Ctrl-C)"
    )]
    NoDuration { kind: String },
    #[error("{flags} select {selects}, but `{kind}` {takes}")]
    WrongTarget {
        flags: String,
        selects: &'static str,
        kind: String,
        takes: &'static str,
    },
    #[error("`{kind}` acts on {takes}: give {hint}")]
    NoTarget {
        kind: String,
        takes: &'static str,
        hint: &'static str,
    },
    #[error("--max-latency needs --abort-if-http")]
    LatencyWithoutHttp,
    #[error("{0} needs --abort-if-http or --abort-if-tcp")]
    ProbeFlagWithoutProbe(&'static str),
}

/// The experiment an `inject` command line stands for, as YAML text.
pub fn experiment_source(args: &InjectArgs, command_line: &str) -> Result<Source, InjectError> {
    let kind: Option<FaultKind> = serde_json::from_value(json!(args.kind)).ok();
    let params = params(&args.params)?;
    let process = process_selector(args);
    let network = network_selector(args);
    let process_flags = flags_given(&process);
    let network_flags = flags_given(&network);

    let mut targets = BTreeMap::new();
    // An unknown kind gets no target: validation then says what the kind should be.
    if let Some(kind) = kind {
        let name = kind.as_str().to_string();
        if kind.is_network() {
            if !process_flags.is_empty() {
                return Err(wrong_target(
                    process_flags,
                    "processes",
                    kind,
                    "acts on traffic",
                ));
            }
            // An empty selection is every packet on every interface but loopback: in a file
            // that is written out; on a command line it would be a flag forgotten.
            if !network.keys().any(|key| key != "lockout_protection") {
                return Err(InjectError::NoTarget {
                    kind: name,
                    takes: "traffic",
                    hint: "--interface, --remote, --remote-port, --local-port, --protocol, \
                           --netns, --container or --cgroup (for all traffic say so: --remote 0.0.0.0/0)",
                });
            }
            targets.insert("traffic", json!({ "network": network }));
        } else if kind.takes_target() {
            if !network_flags.is_empty() {
                return Err(wrong_target(
                    network_flags,
                    "traffic",
                    kind,
                    "acts on processes",
                ));
            }
            if process.is_empty() {
                return Err(InjectError::NoTarget {
                    kind: name,
                    takes: "processes",
                    hint: "--pid, --pidfile, --name, --cmdline, --container or --cgroup",
                });
            }
            targets.insert("processes", json!({ "process": process }));
        } else {
            let mut given = process_flags;
            given.extend(network_flags);
            if args.cgroup.is_some() {
                given.push("--cgroup".into());
            }
            if !given.is_empty() {
                return Err(wrong_target(
                    given,
                    "a target",
                    kind,
                    "acts on the whole host",
                ));
            }
        }
        if args.duration.is_none() && kind != FaultKind::ProcessKill {
            return Err(InjectError::NoDuration { kind: name });
        }
    }

    let probes = probes(args)?;
    let probe_names: Vec<&String> = probes.keys().collect();
    let steady_state = (!probes.is_empty()).then(|| GeneratedSteadyState {
        before: json!({"probes": probe_names, "wait_until": format!("{GATE_WAIT_S}s")}),
        during: json!({"probes": probe_names}),
        after: json!({"probes": probe_names, "within": format!("{RECOVERY_WITHIN_S}s")}),
    });

    let experiment = Generated {
        api_version: "faultline/v1",
        metadata: GeneratedMetadata {
            name: format!("inject-{}", args.kind),
            description: command_line.to_string(),
        },
        targets,
        probes: probes.clone(),
        steady_state,
        faults: vec![GeneratedFault {
            id: args.kind.clone(),
            kind: args.kind.clone(),
            target: targets_key(kind),
            params,
            duration: args.duration.clone(),
        }],
        max_duration: max_duration(args.duration.as_deref()),
    };
    let yaml = serde_saphyr::to_string(&experiment).expect("plain data serialises");
    Ok(Source {
        path: PathBuf::from(SOURCE_NAME),
        // Nothing given on the command line is a var reference.
        text: yaml.replace("${", "$${"),
    })
}

/// Top-level keys in the order an experiment file has them.
#[derive(Serialize)]
struct Generated {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: GeneratedMetadata,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    targets: BTreeMap<&'static str, Value>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    probes: BTreeMap<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steady_state: Option<GeneratedSteadyState>,
    faults: Vec<GeneratedFault>,
    max_duration: String,
}

#[derive(Serialize)]
struct GeneratedMetadata {
    name: String,
    /// The command line, so reports say where the experiment came from.
    description: String,
}

#[derive(Serialize)]
struct GeneratedSteadyState {
    before: Value,
    during: Value,
    after: Value,
}

#[derive(Serialize)]
struct GeneratedFault {
    id: String,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'static str>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    params: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<String>,
}

fn targets_key(kind: Option<FaultKind>) -> Option<&'static str> {
    match kind {
        Some(kind) if kind.is_network() => Some("traffic"),
        Some(kind) if kind.takes_target() => Some("processes"),
        _ => None,
    }
}

fn wrong_target(
    flags: Vec<String>,
    selects: &'static str,
    kind: FaultKind,
    takes: &'static str,
) -> InjectError {
    InjectError::WrongTarget {
        flags: flags.join(", "),
        selects,
        kind: kind.as_str().to_string(),
        takes,
    }
}

/// `PARAM=VALUE` pairs; each value is read as YAML (`60%` stays text, `2` is a number,
/// `[0, 1]` a list), so params mean exactly what they mean in a file.
fn params(pairs: &[String]) -> Result<Map<String, Value>, InjectError> {
    let mut params = Map::new();
    for pair in pairs {
        let Some((key, raw)) = pair.split_once('=') else {
            return Err(InjectError::NotAParam(pair.clone()));
        };
        if key.is_empty() {
            return Err(InjectError::NotAParam(pair.clone()));
        }
        // Read as a file would be: `yes` is text there, so it is text here.
        let value = match serde_saphyr::from_str_with_options::<Value>(
            raw,
            crate::experiment::parse::yaml_options(),
        ) {
            Ok(Value::Null) | Err(_) => Value::String(raw.to_string()),
            Ok(value) => value,
        };
        if params.insert(key.to_string(), value).is_some() {
            return Err(InjectError::DuplicateParam(key.to_string()));
        }
    }
    Ok(params)
}

/// A selector (or probe) mapping of the keys that were given.
fn given<const N: usize>(entries: [(&str, Option<Value>); N]) -> Map<String, Value> {
    entries
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_string(), value?)))
        .collect()
}

fn process_selector(args: &InjectArgs) -> Map<String, Value> {
    let process = &args.process;
    given([
        ("pid", process.pid.map(Value::from)),
        ("pidfile", process.pidfile.clone().map(Value::from)),
        ("name", process.name.clone().map(Value::from)),
        ("cmdline", process.cmdline.clone().map(Value::from)),
        ("container", args.container.clone().map(Value::from)),
        ("runtime", args.runtime.clone().map(Value::from)),
        ("count", process.count.map(Value::from)),
        ("force", process.force.then_some(Value::Bool(true))),
        ("cgroup", args.cgroup.clone().map(Value::from)),
    ])
}

fn network_selector(args: &InjectArgs) -> Map<String, Value> {
    let network = &args.network;
    let list = |items: &[String]| (!items.is_empty()).then(|| json!(items));
    let ports = |items: &[String]| {
        (!items.is_empty()).then(|| {
            items
                .iter()
                .map(|p| p.parse::<u16>().map_or_else(|_| json!(p), Value::from))
                .collect::<Value>()
        })
    };
    given([
        ("netns", network.netns.clone().map(Value::from)),
        ("container", args.container.clone().map(Value::from)),
        ("runtime", args.runtime.clone().map(Value::from)),
        ("interfaces", list(&network.interfaces)),
        ("direction", network.direction.clone().map(Value::from)),
        ("protocol", network.protocol.clone().map(Value::from)),
        ("remote", list(&network.remote)),
        ("remote_ports", ports(&network.remote_port)),
        ("local", list(&network.local)),
        ("local_ports", ports(&network.local_port)),
        ("cgroup", args.cgroup.clone().map(Value::from)),
        (
            "lockout_protection",
            network.no_lockout_protection.then_some(Value::Bool(false)),
        ),
    ])
}

/// The command-line flags behind a selector's keys (`--cgroup`, `--container` and
/// `--runtime` fit either kind of target, so they do not count as choosing one).
fn flags_given(selector: &Map<String, Value>) -> Vec<String> {
    selector
        .keys()
        .filter(|key| !matches!(key.as_str(), "cgroup" | "container" | "runtime"))
        .map(|key| match key.as_str() {
            "interfaces" => "--interface".to_string(),
            "remote_ports" => "--remote-port".to_string(),
            "local_ports" => "--local-port".to_string(),
            "lockout_protection" => "--no-lockout-protection".to_string(),
            other => format!("--{other}"),
        })
        .collect()
}

fn probes(args: &InjectArgs) -> Result<BTreeMap<String, Value>, InjectError> {
    if args.abort.max_latency.is_some() && args.abort.abort_if_http.is_empty() {
        return Err(InjectError::LatencyWithoutHttp);
    }
    let no_probe = args.abort.abort_if_http.is_empty() && args.abort.abort_if_tcp.is_empty();
    if no_probe && args.abort.probe_interval.is_some() {
        return Err(InjectError::ProbeFlagWithoutProbe("--probe-interval"));
    }
    if no_probe && args.abort.failures.is_some() {
        return Err(InjectError::ProbeFlagWithoutProbe("--failures"));
    }
    let mut probes = BTreeMap::new();
    let mut add = |kind: &str, index: usize, check: Value, expect: Option<Value>| {
        let name = match index {
            0 => kind.to_string(),
            n => format!("{kind}-{}", n + 1),
        };
        let mut probe = Map::new();
        probe.insert(kind.to_string(), check);
        if let Some(expect) = expect {
            probe.insert("expect".into(), expect);
        }
        if let Some(interval) = &args.abort.probe_interval {
            probe.insert("interval".into(), json!(interval));
        }
        if let Some(failures) = args.abort.failures {
            probe.insert("failure_threshold".into(), json!(failures));
        }
        probes.insert(name, Value::Object(probe));
    };
    for (index, url) in args.abort.abort_if_http.iter().enumerate() {
        let expect = args
            .abort
            .max_latency
            .as_ref()
            .map(|latency| json!({ "max_latency": latency }));
        add("http", index, json!({ "url": url }), expect);
    }
    for (index, address) in args.abort.abort_if_tcp.iter().enumerate() {
        add("tcp", index, json!({ "address": address }), None);
    }
    Ok(probes)
}

/// The fault's own duration plus room for the gate before it, the recovery after it and
/// the engine's own steps; a duration the format refuses is left for validation to point at.
fn max_duration(duration: Option<&str>) -> String {
    let fault = duration
        .and_then(|d| d.parse::<Dur>().ok())
        .map_or(0, |d| d.get().as_secs());
    format!("{}s", fault + GATE_WAIT_S + RECOVERY_WITHIN_S + 30)
}

/// The arguments that say what to inject, without those that only say where output goes
/// or that nothing should run (`--dry-run`, `--save FILE`): the saved file must not claim to
/// be a dry run.
pub fn without_output_flags(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut kept = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        match arg.as_str() {
            "--dry-run" => {}
            "--save" | "--report-dir" | "--state-dir" => skip_value = true,
            _ if ["--save=", "--report-dir=", "--state-dir="]
                .iter()
                .any(|flag| arg.starts_with(flag)) => {}
            _ => kept.push(arg),
        }
    }
    kept
}

/// The command line as a reader would retype it (for the generated file's header and
/// description; it is never run).
pub fn quoted_command_line(args: impl IntoIterator<Item = String>) -> String {
    args.into_iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=./:,%@+".contains(c));
            if plain {
                arg
            } else {
                format!("'{}'", arg.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::experiment::Overrides;
    use crate::plan::plan_source;

    fn inject(args: &[&str]) -> Result<Source, InjectError> {
        let mut argv = vec!["faultline", "inject"];
        argv.extend_from_slice(args);
        let Command::Inject(args) = Cli::try_parse_from(&argv).expect("parses").command else {
            panic!("not inject")
        };
        experiment_source(
            &args,
            &quoted_command_line(argv.iter().map(|a| a.to_string())),
        )
    }

    #[test]
    fn a_network_delay_becomes_an_experiment_that_compiles() {
        let source = inject(&[
            "network-delay",
            "delay=200ms",
            "jitter=20ms",
            "correlation=25%",
            "--interface",
            "lo",
            "--remote",
            "127.0.0.1",
            "--remote-port",
            "5432",
            "--remote-port",
            "8000-8100",
            "--for",
            "30s",
            "--abort-if-tcp",
            "127.0.0.1:5433",
        ])
        .unwrap();
        insta::assert_snapshot!(source.text);
        let plan = plan_source(&source, &Overrides::none()).expect("compiles");
        assert_eq!(plan.faults.len(), 1);
        assert_eq!(plan.probes.len(), 1);
        assert_eq!(plan.max_duration, std::time::Duration::from_secs(100));
    }

    #[test]
    fn param_values_are_yaml_so_numbers_lists_and_text_mean_what_they_do_in_a_file() {
        let params = params(&[
            "cores=[0, 1]".into(),
            "load=60%".into(),
            "gap=5".into(),
            "mode=".into(),
            "path=/srv/data=x".into(),
        ])
        .unwrap();
        assert_eq!(params["cores"], json!([0, 1]));
        assert_eq!(params["load"], json!("60%"));
        assert_eq!(params["gap"], json!(5));
        assert_eq!(params["mode"], json!(""));
        assert_eq!(params["path"], json!("/srv/data=x"));
        assert!(matches!(
            params_of(&["load=1", "load=2"]),
            Err(InjectError::DuplicateParam(_))
        ));
        assert!(matches!(params_of(&["=1"]), Err(InjectError::NotAParam(_))));
    }

    fn params_of(pairs: &[&str]) -> Result<Map<String, Value>, InjectError> {
        params(&pairs.iter().map(|p| p.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn host_wide_pressure_takes_no_target_flags() {
        let source = inject(&["cpu-pressure", "load=60%", "cores=1", "--for", "10s"]).unwrap();
        plan_source(&source, &Overrides::none()).expect("compiles");
        assert!(!source.text.contains("targets:"), "{}", source.text);
        assert!(matches!(
            inject(&["cpu-pressure", "load=60%", "--pid", "1", "--for", "10s"]),
            Err(InjectError::WrongTarget { .. })
        ));
    }

    #[test]
    fn cgroup_fits_either_kind_of_target() {
        let limit = inject(&[
            "cpu-limit",
            "quota=50%",
            "--cgroup",
            "/system.slice/x",
            "--for",
            "5s",
        ])
        .unwrap();
        assert!(limit.text.contains("process:"), "{}", limit.text);
        let delay = inject(&[
            "network-delay",
            "delay=5ms",
            "--cgroup",
            "/x",
            "--for",
            "5s",
        ])
        .unwrap();
        assert!(delay.text.contains("network:"), "{}", delay.text);
    }

    #[test]
    fn container_flags_make_a_container_process_or_network_target() {
        let source = inject(&[
            "process-stop",
            "--container",
            "web-1",
            "--runtime",
            "docker",
            "--for",
            "5s",
        ])
        .unwrap();
        plan_source(&source, &Overrides::none()).expect("compiles");
        assert!(source.text.contains("container"), "{}", source.text);
        assert!(source.text.contains("web-1"), "{}", source.text);
        let delay = inject(&[
            "network-delay",
            "delay=5ms",
            "--container",
            "web-1",
            "--for",
            "5s",
        ])
        .unwrap();
        plan_source(&delay, &Overrides::none()).expect("compiles");
        assert!(
            delay.text.contains("network:") && delay.text.contains("container: web-1"),
            "{}",
            delay.text
        );
        let both = inject(&[
            "network-delay",
            "delay=5ms",
            "--container",
            "web-1",
            "--netns",
            "ns1",
            "--for",
            "5s",
        ])
        .unwrap();
        let rendered = plan_source(&both, &Overrides::none())
            .unwrap_err()
            .render(false);
        assert!(
            rendered.contains("both `netns` and `container`"),
            "{rendered}"
        );
    }

    #[test]
    fn an_unknown_kind_is_left_for_validation_to_name_the_right_one() {
        let source = inject(&["process-kil", "--pid", "1"]).unwrap();
        let diagnostics = plan_source(&source, &Overrides::none()).unwrap_err();
        let rendered = diagnostics.render(false);
        assert!(
            rendered.contains("did you mean `process-kill`"),
            "{rendered}"
        );
    }

    #[test]
    fn output_flags_are_not_part_of_what_was_injected() {
        let args = [
            "inject",
            "process-stop",
            "--save",
            "f.yaml",
            "--dry-run",
            "--pid",
            "7",
            "--report-dir=r",
            "--for",
            "5s",
        ]
        .map(String::from);
        assert_eq!(
            without_output_flags(args),
            ["inject", "process-stop", "--pid", "7", "--for", "5s"]
        );
    }

    #[test]
    fn the_command_line_is_quoted_as_a_reader_would_retype_it() {
        let line = quoted_command_line(
            ["inject", "process-stop", "--cmdline", "^sleep 300$", "it's"].map(String::from),
        );
        assert_eq!(
            line,
            r"inject process-stop --cmdline '^sleep 300$' 'it'\''s'"
        );
    }
}
