//! The `http` probe: one request, judged on status, latency and body.
//!
//! The probes share one client that keeps no idle connections, so every sample pays for its
//! own TCP (and TLS) handshake: an SLO probe should see what a new user of the service sees,
//! and a fault that breaks new connections (a partition, a SYN drop) must show up on the next
//! sample instead of hiding behind a pooled connection. Redirects are not followed: a 3xx is a
//! status to judge like any other. Proxies from the environment (`HTTP_PROXY`, `NO_PROXY`)
//! apply, as they do for curl.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method, RequestBuilder, Response, Url};
use serde_json::{Value, json};

use super::slo::exceeds_max_latency;
use super::tcp::describe_io_error;
use super::{Probe, Sample};
use crate::experiment::Dur;
use crate::plan::jsonpath::JsonPath;
use crate::plan::{Check, ProbeKind, ProbeSpec};

/// Enough for any health or status document; a larger body is judged on its first MiB.
const BODY_CAP: usize = 1024 * 1024;

const DEFAULT_STATUS: (u16, u16) = (200, 299);

pub struct HttpProbe {
    /// Everything that can be wrong with the spec is found once, here; a bad spec fails every
    /// sample with the same message instead of panicking.
    request: Result<PreparedRequest, String>,
    json_path: Option<(String, Result<JsonPath, String>, Value)>,
    check: Check,
    timeout: Duration,
}

struct PreparedRequest {
    client: Client,
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<String>,
}

pub(super) struct CappedResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// The body was longer than the cap and was cut there.
    pub truncated: bool,
}

impl HttpProbe {
    pub fn new(spec: &ProbeSpec) -> HttpProbe {
        let json_path = spec
            .check
            .json_path
            .as_ref()
            .map(|(path, expected)| (path.clone(), JsonPath::parse(path), expected.clone()));
        HttpProbe {
            request: prepare(&spec.kind),
            json_path,
            check: spec.check.clone(),
            timeout: spec.timeout,
        }
    }

    /// Every check the response fails, in a fixed order, each naming what was observed.
    fn judge(&self, response: &CappedResponse, latency: Duration) -> Vec<String> {
        let mut failures = Vec::new();
        let ranges: &[(u16, u16)] = if self.check.status.is_empty() {
            &[DEFAULT_STATUS]
        } else {
            &self.check.status
        };
        if !ranges
            .iter()
            .any(|&(low, high)| (low..=high).contains(&response.status))
        {
            failures.push(format!(
                "status {} not in {}",
                response.status,
                describe_ranges(ranges)
            ));
        }
        failures.extend(exceeds_max_latency(latency, self.check.max_latency));
        if let Some(needle) = &self.check.body_contains
            && !String::from_utf8_lossy(&response.body).contains(needle.as_str())
        {
            failures.push(format!("body does not contain `{needle}`"));
        }
        if let Some((path_text, path, expected)) = &self.json_path {
            let outcome = match path {
                Ok(path) => judge_json(path_text, path, expected, response),
                Err(error) => Err(error.clone()),
            };
            failures.extend(outcome.err());
        }
        failures
    }
}

fn prepare(kind: &ProbeKind) -> Result<PreparedRequest, String> {
    let ProbeKind::Http {
        url,
        method,
        headers,
        body,
    } = kind
    else {
        return Err("not an http probe".to_string());
    };
    let url = Url::parse(url).map_err(|e| format!("invalid URL `{url}`: {e}"))?;
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("invalid HTTP method `{method}`"))?;
    Ok(PreparedRequest {
        client: probe_client(&url)?,
        method,
        url,
        headers: header_map(headers)?,
        body: body.clone(),
    })
}

/// The client of every probe that speaks HTTP: no pooled connections, no redirects, and a
/// user agent that names faultline in the server's logs. One per process, shared by every
/// probe (it holds no connection, so sharing changes nothing a sample sees); the host's
/// root certificates are read only for a probe whose connection can need them: parsing the
/// certificate store took a tenth of a run's CPU and 200-400 KB per probe.
pub(super) fn probe_client(url: &Url) -> Result<Client, String> {
    static PLAIN: std::sync::OnceLock<Result<Client, String>> = std::sync::OnceLock::new();
    static TLS: std::sync::OnceLock<Result<Client, String>> = std::sync::OnceLock::new();
    let (client, roots) = if needs_tls(url) {
        (&TLS, true)
    } else {
        (&PLAIN, false)
    };
    client.get_or_init(|| build_client(roots)).clone()
}

/// An `https` URL, or any URL sent through a proxy reached over TLS.
fn needs_tls(url: &Url) -> bool {
    url.scheme() != "http"
        || ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
            .iter()
            .filter_map(std::env::var_os)
            .any(|proxy| !proxy.to_string_lossy().trim_start().starts_with("http://"))
}

fn build_client(roots: bool) -> Result<Client, String> {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .tls_built_in_root_certs(roots)
        .user_agent(concat!("faultline/", env!("CARGO_PKG_VERSION"), " (probe)"))
        .build()
        .map_err(|e| {
            format!(
                "cannot set up the HTTP client: {}",
                describe_request_error(&e)
            )
        })
}

pub(super) fn header_map(headers: &BTreeMap<String, String>) -> Result<HeaderMap, String> {
    let mut header_map = HeaderMap::new();
    for (name, value) in headers {
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name `{name}`"))?;
        let header_value = HeaderValue::from_str(value)
            .map_err(|_| format!("header `{name}` has an invalid value"))?;
        header_map.append(header_name, header_value);
    }
    Ok(header_map)
}

/// Send `request` (or the reason the spec could not make one) and read at most `cap` bytes of
/// the body, all within `timeout`. The response and the sample's latency, or the failed sample,
/// whose error says what went wrong and in which phase.
pub(super) async fn exchange(
    request: Result<RequestBuilder, &String>,
    timeout: Duration,
    cap: usize,
) -> Result<(CappedResponse, Duration), Sample> {
    let started = Instant::now();
    let request = request.map_err(|error| Sample::fail(Duration::ZERO, None, error.clone()))?;
    let mut got_headers = false;
    let round_trip = async {
        let response = request.send().await?;
        got_headers = true;
        read_capped(response, cap).await
    };
    let error = match tokio::time::timeout(timeout, round_trip).await {
        Ok(Ok(response)) => return Ok((response, started.elapsed())),
        Ok(Err(error)) => {
            let cause = describe_request_error(&error);
            if got_headers {
                format!("reading the body: {cause}")
            } else {
                cause
            }
        }
        Err(_) => {
            let phase = if got_headers {
                "reading the body"
            } else {
                "waiting for the response"
            };
            format!("timed out after {} {phase}", Dur(timeout))
        }
    };
    Err(Sample::fail(started.elapsed(), None, error))
}

#[async_trait::async_trait]
impl Probe for HttpProbe {
    async fn sample(&self) -> Sample {
        let request = self.request.as_ref().map(PreparedRequest::builder);
        let (response, latency) = match exchange(request, self.timeout, BODY_CAP).await {
            Ok(answer) => answer,
            Err(failed) => return failed,
        };
        let mut value = json!({ "status": response.status, "bytes": response.body.len() });
        if response.truncated {
            value["truncated"] = json!(true);
        }
        let failures = self.judge(&response, latency);
        if failures.is_empty() {
            Sample::pass(latency, value)
        } else {
            Sample::fail(latency, Some(value), failures.join("; "))
        }
    }
}

impl PreparedRequest {
    fn builder(&self) -> RequestBuilder {
        let builder = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone());
        match &self.body {
            Some(body) => builder.body(body.clone()),
            None => builder,
        }
    }
}

async fn read_capped(mut response: Response, cap: usize) -> reqwest::Result<CappedResponse> {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok(CappedResponse {
                status,
                body,
                truncated: true,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(CappedResponse {
        status,
        body,
        truncated: false,
    })
}

fn judge_json(
    path_text: &str,
    path: &JsonPath,
    expected: &Value,
    response: &CappedResponse,
) -> Result<(), String> {
    let document: Value = serde_json::from_slice(&response.body).map_err(|e| {
        let read = if response.truncated {
            " (first 1 MiB read)"
        } else {
            ""
        };
        format!("{path_text}: body is not JSON{read}: {e}")
    })?;
    match path.find(&document) {
        None => Err(format!("{path_text} not found in the body")),
        Some(found) if found == expected => Ok(()),
        Some(found) => Err(format!("{path_text} = {found}, expected {expected}")),
    }
}

/// "200-299", "200-299, 304": the accepted statuses as the error message shows them.
fn describe_ranges(ranges: &[(u16, u16)]) -> String {
    ranges
        .iter()
        .map(|&(low, high)| {
            if low == high {
                low.to_string()
            } else {
                format!("{low}-{high}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The innermost cause of a request failure, which is the part that says what happened
/// ("connection refused", "invalid peer certificate: UnknownIssuer"); the outer layers only
/// repeat the URL.
fn describe_request_error(error: &reqwest::Error) -> String {
    let mut innermost: &(dyn std::error::Error + 'static) = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let text = match innermost.downcast_ref::<std::io::Error>() {
        Some(io_error) => describe_io_error(io_error),
        None => innermost.to_string(),
    };
    if text.contains("certificate") {
        format!(
            "{text} (this host must trust the server's CA: add it to the system store, \
             or point SSL_CERT_FILE at a PEM bundle that contains it)"
        )
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const HEALTH_JSON: &str = r#"{"status":"ok","db":"down","replicas":[{"lag":0}]}"#;
    const SLOW_DELAY: Duration = Duration::from_secs(5);
    const SERVER_LIFETIME: Duration = Duration::from_secs(30);

    /// A minimal HTTP/1.1 server on an ephemeral 127.0.0.1 port. Routes: `/health` (200 JSON),
    /// `/down` (503), `/slow` (answers after `SLOW_DELAY`), `/redirect` (302), `/big` (2 MiB),
    /// `/echo` (200, the request's method, `x-probe` header and body as JSON). It stops after
    /// `SERVER_LIFETIME` or when the test's runtime ends.
    async fn serve() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(tokio::time::timeout(SERVER_LIFETIME, async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(answer(stream));
            }
        }));
        address
    }

    async fn answer(mut stream: TcpStream) {
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        let head_end = loop {
            if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buffer[..n]),
            }
            if request.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&request[..head_end]).to_string();
        let header = |name: &str| {
            head.lines()
                .find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    key.eq_ignore_ascii_case(name)
                        .then(|| value.trim().to_string())
                })
                .unwrap_or_default()
        };
        let content_length: usize = header("content-length").parse().unwrap_or(0);
        while request.len() < head_end + content_length {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buffer[..n]),
            }
        }
        let mut request_line = head.lines().next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_string();
        let path = request_line.next().unwrap_or_default().to_string();
        let (status, extra, body) = match path.as_str() {
            "/health" => ("200 OK", "", HEALTH_JSON.to_string()),
            "/down" => ("503 Service Unavailable", "", "unavailable".to_string()),
            "/slow" => {
                tokio::time::sleep(SLOW_DELAY).await;
                ("200 OK", "", "late".to_string())
            }
            "/redirect" => ("302 Found", "Location: /health\r\n", String::new()),
            "/big" => ("200 OK", "", "x".repeat(2 * BODY_CAP)),
            "/echo" => {
                let body = String::from_utf8_lossy(&request[head_end..]).to_string();
                let echoed =
                    json!({ "method": method, "x_probe": header("x-probe"), "body": body });
                ("200 OK", "", echoed.to_string())
            }
            _ => ("404 Not Found", "", String::new()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    fn spec(url: String, check: Check) -> ProbeSpec {
        ProbeSpec {
            name: "web".into(),
            kind: ProbeKind::Http {
                url,
                method: "GET".into(),
                headers: BTreeMap::new(),
                body: None,
            },
            check,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            failure_threshold: 1,
            slo: None,
        }
    }

    async fn fetch(url: String, check: Check) -> Sample {
        HttpProbe::new(&spec(url, check)).sample().await
    }

    fn error(sample: &Sample) -> &str {
        assert!(!sample.ok, "expected a failed sample: {sample:?}");
        sample.error.as_deref().unwrap()
    }

    #[tokio::test]
    async fn healthy_endpoint_passes_every_check() {
        let server = serve().await;
        let check = Check {
            status: vec![(200, 299)],
            max_latency: Some(Duration::from_secs(1)),
            body_contains: Some("\"ok\"".into()),
            json_path: Some(("$.replicas[0].lag".into(), json!(0))),
            ..Check::default()
        };
        let sample = fetch(format!("http://{server}/health"), check).await;
        assert!(sample.ok, "{sample:?}");
        assert_eq!(
            sample.value,
            Some(json!({ "status": 200, "bytes": HEALTH_JSON.len() }))
        );
    }

    #[tokio::test]
    async fn status_outside_the_ranges_fails() {
        let server = serve().await;
        let check = Check {
            status: vec![(200, 299), (304, 304)],
            ..Check::default()
        };
        let sample = fetch(format!("http://{server}/down"), check).await;
        assert_eq!(error(&sample), "status 503 not in 200-299, 304");
        assert_eq!(sample.value, Some(json!({ "status": 503, "bytes": 11 })));
    }

    #[tokio::test]
    async fn default_status_range_is_2xx_and_redirects_are_not_followed() {
        let server = serve().await;
        let sample = fetch(format!("http://{server}/redirect"), Check::default()).await;
        assert_eq!(error(&sample), "status 302 not in 200-299");
    }

    #[tokio::test]
    async fn latency_bound_fails_with_the_observed_latency() {
        let server = serve().await;
        let check = Check {
            max_latency: Some(Duration::ZERO),
            ..Check::default()
        };
        let sample = fetch(format!("http://{server}/health"), check).await;
        let error = error(&sample);
        assert!(
            error.starts_with("latency ") && error.ends_with("ms > 0s"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn body_contains_names_the_missing_text() {
        let server = serve().await;
        let check = Check {
            body_contains: Some("healthy".into()),
            ..Check::default()
        };
        let sample = fetch(format!("http://{server}/health"), check).await;
        assert_eq!(error(&sample), "body does not contain `healthy`");
    }

    #[tokio::test]
    async fn json_path_mismatch_shows_observed_and_expected() {
        let server = serve().await;
        let check = Check {
            json_path: Some(("$.db".into(), json!("up"))),
            ..Check::default()
        };
        let sample = fetch(format!("http://{server}/health"), check).await;
        assert_eq!(error(&sample), r#"$.db = "down", expected "up""#);

        let check = Check {
            json_path: Some(("$.cache".into(), json!("up"))),
            ..Check::default()
        };
        let sample = fetch(format!("http://{server}/health"), check).await;
        assert_eq!(error(&sample), "$.cache not found in the body");

        let check = Check {
            json_path: Some(("$.db".into(), json!("up"))),
            status: vec![(500, 599)],
            ..Check::default()
        };
        let sample = fetch(format!("http://{server}/down"), check).await;
        assert!(
            error(&sample).starts_with("$.db: body is not JSON: "),
            "{sample:?}"
        );
    }

    #[tokio::test]
    async fn several_failed_checks_are_all_reported() {
        let server = serve().await;
        let check = Check {
            body_contains: Some("ok".into()),
            ..Check::default()
        };
        let sample = fetch(format!("http://{server}/down"), check).await;
        assert_eq!(
            error(&sample),
            "status 503 not in 200-299; body does not contain `ok`"
        );
    }

    #[tokio::test]
    async fn slow_response_times_out_within_the_timeout() {
        let server = serve().await;
        let started = Instant::now();
        let sample = fetch(format!("http://{server}/slow"), Check::default()).await;
        let elapsed = started.elapsed();
        assert_eq!(
            error(&sample),
            "timed out after 2s waiting for the response"
        );
        assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(2100), "{elapsed:?}");
    }

    #[tokio::test]
    async fn closed_port_is_connection_refused() {
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let sample = fetch(format!("http://{closed}/health"), Check::default()).await;
        assert_eq!(error(&sample), "connection refused");
        assert_eq!(sample.value, None);
    }

    #[tokio::test]
    async fn body_read_is_capped_at_one_mebibyte() {
        let server = serve().await;
        let sample = fetch(format!("http://{server}/big"), Check::default()).await;
        assert!(sample.ok, "{sample:?}");
        assert_eq!(
            sample.value,
            Some(json!({ "status": 200, "bytes": BODY_CAP, "truncated": true }))
        );
    }

    #[tokio::test]
    async fn method_headers_and_body_are_sent() {
        let server = serve().await;
        let mut spec = spec(format!("http://{server}/echo"), Check::default());
        spec.check.json_path = Some((
            "$".into(),
            json!({ "method": "POST", "x_probe": "chaos", "body": "{\"ping\":1}" }),
        ));
        spec.kind = ProbeKind::Http {
            url: format!("http://{server}/echo"),
            method: "post".into(),
            headers: BTreeMap::from([("X-Probe".to_string(), "chaos".to_string())]),
            body: Some("{\"ping\":1}".into()),
        };
        let sample = HttpProbe::new(&spec).sample().await;
        assert!(sample.ok, "{sample:?}");
    }

    #[tokio::test]
    async fn an_invalid_spec_fails_every_sample_without_panicking() {
        let sample = fetch("not a url".into(), Check::default()).await;
        assert!(
            error(&sample).starts_with("invalid URL `not a url`: "),
            "{sample:?}"
        );
        let check = Check {
            json_path: Some(("db".into(), json!(1))),
            ..Check::default()
        };
        let server = serve().await;
        let sample = fetch(format!("http://{server}/health"), check).await;
        assert!(
            error(&sample).starts_with("JSON path `db` must start with `$`"),
            "{sample:?}"
        );
    }

    /// Not a pass/fail check: prints what one sample costs against a local server, so the
    /// number in reports comes from a command anyone can rerun
    /// (`cargo test --lib http::tests::sample_overhead -- --ignored --nocapture`).
    #[tokio::test]
    #[ignore]
    async fn sample_overhead() {
        let server = serve().await;
        let probe = HttpProbe::new(&spec(format!("http://{server}/health"), Check::default()));
        let mut latencies = Vec::new();
        for _ in 0..50 {
            let sample = probe.sample().await;
            assert!(sample.ok, "{sample:?}");
            latencies.push(sample.latency);
        }
        latencies.sort();
        println!(
            "http sample latency over 50: p50 {:?}, p90 {:?}, max {:?}",
            latencies[24], latencies[44], latencies[49]
        );
    }
}
