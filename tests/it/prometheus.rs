//! The `prometheus` probe against a real Prometheus server: the Debian package's binary,
//! started by each test on a free loopback port with its configuration and storage in a
//! temporary directory, and killed by PID when the test ends, however it ends.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use faultline::experiment::model::NoData;
use faultline::plan::{Check, Comparison, ProbeKind, ProbeSpec};
use faultline::probe::Sample;
use serde_json::{Value, json};

use crate::util::{self, Runner, Workspace, events_of};

/// Installed by the `prometheus` package (scripts/test.sh installs it where it is missing).
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Prometheus replays an empty write-ahead log and opens its web API in about a second.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// The experiment's own bounds (a 20 s gate, a 2 s start, a 10 s recovery check) plus room.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// A Prometheus server this test started; killed (SIGKILL to its PID) and reaped on drop, then
/// its directory is removed. Its storage is thrown away, so there is nothing to shut down
/// gracefully for.
struct PrometheusServer {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// A ready server scraping `targets` (`host:port`) every second as job `demo`.
    fn start(targets: &[&str]) -> PrometheusServer {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: install the `prometheus` package (scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        // 800 ms leaves a scrape time for the demo's 250 ms worker ping and must stay within
        // the interval, which Prometheus requires.
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 800ms}}\n\
             scrape_configs:\n  \
             - job_name: demo\n    \
             static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let address = format!("127.0.0.1:{}", util::free_port());
        let log = dir.path().join("prometheus.log");
        let output = std::fs::File::create(&log).expect("create the log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone the log file"))
            .stderr(output)
            .spawn()
            .expect("start prometheus");
        let mut server = PrometheusServer {
            child,
            url: format!("http://{address}"),
            log,
            _dir: dir,
        };
        server.wait_until_ready(address.parse().expect("a socket address"));
        server
    }

    fn wait_until_ready(&mut self, address: SocketAddr) {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("prometheus exited ({status}):\n{}", self.log_text());
            }
            if http_status(address, "/-/ready") == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within {READY_LIMIT:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of `GET path`, or `None` when nothing answers within a second or two.
fn http_status(address: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

#[test]
fn a_frozen_worker_breaks_the_slo_read_from_prometheus_and_the_run_aborts() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let listen = format!("127.0.0.1:{}", util::free_port());
    let prometheus = PrometheusServer::start(&[&listen]);
    let file = shipped("experiments/prometheus-slo-aborts.yaml");
    let vars = [
        "--var".to_string(),
        format!("listen={listen}"),
        "--var".to_string(),
        format!("prometheus={}", prometheus.url),
    ];
    let mut runner = Runner::spawn_with(&ws, &[&file], &vars);
    let code = runner.wait(RUN_LIMIT);
    assert_eq!(code, Some(2), "aborted:\n{}", runner.stderr());

    let events = ws.journal();
    let experiment = &events_of(&events, "run_started")[0]["experiment"];
    assert_eq!(experiment["vars"]["prometheus"], prometheus.url.as_str());
    let injected = events_of(&events, "fault_injected")[0]["t_ms"]
        .as_f64()
        .unwrap();
    let samples: Vec<&Value> = events_of(&events, "probe_sample")
        .into_iter()
        .filter(|e| e["probe"] == "worker-up")
        .collect();
    let t_ms = |sample: &Value| sample["t_ms"].as_f64().unwrap();

    // The steady state held on real data: before the freeze the probe passed, each time on
    // the one series Prometheus scraped from this demo, at 1.
    let passed_before: Vec<&&Value> = samples
        .iter()
        .filter(|s| s["ok"] == true && t_ms(s) < injected)
        .collect();
    assert!(
        passed_before.iter().any(|s| s["phase"] == "before"),
        "the gate passed on Prometheus data: {samples:?}"
    );
    let during_before_fault = passed_before
        .iter()
        .filter(|s| s["phase"] == "during")
        .count();
    assert!(
        during_before_fault >= 3,
        "2 s of 500 ms samples passed before the freeze: {samples:?}"
    );
    for sample in &passed_before {
        let value = &sample["value"];
        assert_eq!(value["result_type"], "vector", "{sample}");
        assert_eq!(value["series_count"], 1, "{sample}");
        let series = &value["series"][0];
        assert_eq!(
            series["labels"],
            json!({"__name__": "demo_worker_up", "instance": listen, "job": "demo"}),
            "{sample}"
        );
        assert_eq!(series["value"], 1.0, "{sample}");
    }

    // The freeze shows in the next scrape, the probe fails on it, and the run aborts.
    let abort = events_of(&events, "abort")[0];
    assert_eq!(abort["trigger"], "probe_failure");
    assert_eq!(abort["probe"], "worker-up");
    let offender = format!(
        "demo_worker_up{{instance=\"{listen}\",job=\"demo\"}} = 0, expected == 1 (1 of 1 series fails)"
    );
    assert!(
        abort["reason"].as_str().unwrap().ends_with(&offender),
        "{abort}"
    );
    let failed = samples
        .iter()
        .find(|s| s["ok"] == false && t_ms(s) > injected)
        .expect("a failed sample after the freeze");
    assert_eq!(failed["value"]["series"][0]["value"], 0.0, "{failed}");
    assert_eq!(failed["value"]["failing"], 1, "{failed}");

    // The worker is frozen at `injected`. The first scrape to start after that is at most one
    // scrape interval (1 s) later, and records 0 once the worker's ping has timed out
    // (250 ms). The probe's next sample, at most one interval (500 ms) later, reads it in a
    // few ms, and the revert follows within a millisecond: 1.75 s, plus 750 ms for scheduling
    // on a busy 2-vCPU host.
    let freeze_to_thawed = abort["all_reverted_t_ms"].as_f64().unwrap() - injected;
    println!(
        "freeze -> detected by Prometheus -> all reverted: {freeze_to_thawed:.1} ms \
         (breach -> all reverted {:.3} ms)",
        abort["breach_to_all_reverted_ms"].as_f64().unwrap()
    );
    assert!(
        freeze_to_thawed <= 2_500.0,
        "aborted {freeze_to_thawed:.1} ms after the freeze"
    );

    // The worker was resumed: the revert came from the abort, and Prometheus saw it answer
    // again in the `after` check.
    assert_eq!(events_of(&events, "fault_reverted")[0]["cause"], "abort");
    let recovered = samples
        .iter()
        .find(|s| s["phase"] == "after" && s["ok"] == true)
        .expect("the after check passed");
    assert_eq!(recovered["value"]["series"][0]["value"], 1.0);
    let worker = events_of(&events, "fault_intent")[0]["details"]["picked"][0]["pid"]
        .as_u64()
        .unwrap();
    assert_ne!(util::proc_state(worker as u32), Some('T'));
    assert_eq!(ws.state_records(), 0);

    let pid = prometheus.pid();
    drop(prometheus);
    assert_eq!(
        util::proc_state(pid),
        None,
        "prometheus was killed and reaped"
    );
}

fn spec(url: &str, query: &str, check: Check) -> ProbeSpec {
    ProbeSpec {
        name: "slo".into(),
        kind: ProbeKind::Prometheus {
            url: url.to_string(),
            query: query.to_string(),
            headers: BTreeMap::new(),
        },
        check,
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
        failure_threshold: 1,
        slo: None,
    }
}

fn comparing(comparisons: &[Comparison]) -> Check {
    Check {
        comparisons: comparisons.to_vec(),
        ..Check::default()
    }
}

/// One sample of a probe on `url`, as the engine takes it.
fn sample_once(url: &str, query: &str, check: Check) -> Sample {
    let probe = faultline::probe::build(&spec(url, query, check));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(probe.sample())
}

/// The error of a sample that must have failed.
fn error_of(sample: &Sample) -> &str {
    assert!(!sample.ok, "expected a failed sample: {sample:?}");
    sample.error.as_deref().unwrap_or_default()
}

/// Every kind of answer, from the server itself rather than from canned bodies: the probe's
/// reading of the API must hold for what Prometheus really sends.
#[test]
fn the_probe_judges_what_a_real_prometheus_answers() {
    let _serial = util::serial();
    let prometheus = PrometheusServer::start(&[]);
    let sample = |query: &str, check: Check| sample_once(&prometheus.url, query, check);

    let one = sample("vector(1)", comparing(&[Comparison::Equals(1.0)]));
    assert!(one.ok, "{one:?}");
    assert_eq!(
        one.value,
        Some(json!({
            "result_type": "vector",
            "series": [{"labels": {}, "value": 1.0}],
            "series_count": 1
        }))
    );

    // Two series, one over the bound; quotes, commas and braces survive the URL encoding.
    let shards = r#"label_replace(vector(1), "shard", "a", "", "") or label_replace(vector(5), "shard", "b", "", "")"#;
    let over = sample(shards, comparing(&[Comparison::Below(3.0)]));
    assert_eq!(
        error_of(&over),
        r#"{shard="b"} = 5, expected < 3 (1 of 2 series fails)"#
    );
    assert_eq!(over.value.as_ref().unwrap()["series_count"], 2);

    let no_traffic = sample("0/0", comparing(&[Comparison::Below(0.01)]));
    let error = error_of(&no_traffic);
    assert!(
        error.starts_with("scalar = NaN, expected < 0.01 (NaN fails every comparison"),
        "{error}"
    );
    let infinite = sample("1/0", comparing(&[Comparison::Above(0.0)]));
    assert!(infinite.ok, "{infinite:?}");
    assert_eq!(infinite.value.unwrap()["value"], "+Inf");

    let missing = sample("no_such_metric", comparing(&[Comparison::Below(1.0)]));
    let error = error_of(&missing);
    assert!(error.starts_with("no data for the query"), "{error}");
    let absent_is_fine = Check {
        no_data: NoData::Pass,
        ..comparing(&[Comparison::Below(1.0)])
    };
    assert!(sample("no_such_metric", absent_is_fine).ok);

    let range = sample("vector(1)[1m:10s]", comparing(&[Comparison::Equals(1.0)]));
    let error = error_of(&range);
    assert!(
        error.starts_with("the query returned a range vector (1 series)"),
        "{error}"
    );
    let text = sample(r#""ok""#, comparing(&[Comparison::Equals(1.0)]));
    assert_eq!(
        error_of(&text),
        r#"the query returned the string "ok", not a number"#
    );

    let typo = sample("sum(rate(x[1m)", comparing(&[Comparison::Below(1.0)]));
    let error = error_of(&typo);
    assert!(
        error.starts_with(
            "Prometheus rejected the query (HTTP 400, bad_data): invalid parameter \"query\": "
        ),
        "{error}"
    );
    let below_the_api = format!("{}/api/v1", prometheus.url);
    let wrong_base = sample_once(
        &below_the_api,
        "vector(1)",
        comparing(&[Comparison::Equals(1.0)]),
    );
    let error = error_of(&wrong_base);
    assert!(
        error.starts_with("HTTP 404") && error.contains("is `url` the server's base URL"),
        "{error}"
    );
}
