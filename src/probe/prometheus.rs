//! The `prometheus` probe: an instant query against a Prometheus server's HTTP API
//! (`GET <url>/api/v1/query`), every number in its result judged against the expectation.
//!
//! A scalar is one number. A vector passes only when every series passes, so a query without
//! aggregation checks each instance, and the error names the first series that did not. A
//! vector without any series fails unless `no_data: pass`: a metric that disappeared (its
//! target is no longer scraped, a label was renamed) must not read as healthy. A range vector
//! or a string has no number per series to judge and fails with what to change in the query.
//! NaN fails every comparison (an error ratio over no traffic is 0/0, which says nothing about
//! health); ±Inf compares as infinity.
//!
//! Requests go through the `http` probe's client (a new connection per sample, no redirects,
//! the system's CA store), and ask Prometheus to stop evaluating at the probe's timeout, so a
//! slow query does not keep loading the server after the sample has given up on it.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Client, Url};
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{CappedResponse, exchange, header_map, probe_client};
use super::slo::exceeds_max_latency;
use super::{Probe, Sample};
use crate::experiment::model::NoData;
use crate::plan::{Check, Comparison, ProbeKind, ProbeSpec};

/// Room for a result of some tens of thousands of series; a probe whose query returns more
/// should aggregate it.
const BODY_CAP: usize = 8 * 1024 * 1024;

/// How many series a sample's value keeps for the journal (failing ones first).
const SERIES_KEPT: usize = 10;

/// How much of a body that is not Prometheus API JSON the error quotes.
const BODY_QUOTE_CHARS: usize = 200;

pub struct PrometheusProbe {
    /// A bad spec fails every sample with the same message instead of panicking.
    request: Result<PreparedQuery, String>,
    check: Check,
    timeout: Duration,
}

struct PreparedQuery {
    client: Client,
    url: Url,
    headers: HeaderMap,
}

impl PrometheusProbe {
    pub fn new(spec: &ProbeSpec) -> PrometheusProbe {
        PrometheusProbe {
            request: prepare(&spec.kind, spec.timeout),
            check: spec.check.clone(),
            timeout: spec.timeout,
        }
    }
}

fn prepare(kind: &ProbeKind, timeout: Duration) -> Result<PreparedQuery, String> {
    let ProbeKind::Prometheus {
        url,
        query,
        headers,
    } = kind
    else {
        return Err("not a prometheus probe".to_string());
    };
    let url = query_url(url, query, timeout)?;
    Ok(PreparedQuery {
        client: probe_client(&url)?,
        url,
        headers: header_map(headers)?,
    })
}

/// `<base>/api/v1/query?query=...&timeout=...`, the query percent-encoded. A base URL with a
/// path (a route prefix behind a proxy) keeps it.
fn query_url(base: &str, query: &str, timeout: Duration) -> Result<Url, String> {
    let mut url = Url::parse(base).map_err(|e| format!("invalid URL `{base}`: {e}"))?;
    url.path_segments_mut()
        .map_err(|()| format!("`{base}` cannot be the base of an API URL"))?
        .pop_if_empty()
        .extend(["api", "v1", "query"]);
    url.query_pairs_mut()
        .append_pair("query", query)
        .append_pair("timeout", &format!("{}ms", timeout.as_millis().max(1)));
    Ok(url)
}

#[async_trait::async_trait]
impl Probe for PrometheusProbe {
    async fn sample(&self) -> Sample {
        let request = self.request.as_ref().map(|prepared| {
            prepared
                .client
                .get(prepared.url.clone())
                .headers(prepared.headers.clone())
        });
        let (response, latency) = match exchange(request, self.timeout, BODY_CAP).await {
            Ok(answer) => answer,
            Err(failed) => return failed,
        };
        let Judgement {
            value,
            mut failures,
        } = evaluate(&response, &self.check);
        failures.extend(exceeds_max_latency(latency, self.check.max_latency));
        match (failures.is_empty(), value) {
            (true, Some(value)) => Sample::pass(latency, value),
            (_, value) => Sample::fail(latency, value, failures.join("; ")),
        }
    }
}

/// What one response says: the numbers seen (for the journal) and why the sample fails, if it
/// does. A response that carries no result has no value.
#[derive(Debug, PartialEq)]
struct Judgement {
    value: Option<Value>,
    failures: Vec<String>,
}

impl Judgement {
    fn failed(error: String) -> Judgement {
        Judgement {
            value: None,
            failures: vec![error],
        }
    }
}

/// The body of every `/api/v1/*` answer, success or error.
#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<QueryData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum QueryData {
    /// `[<unix time>, "<value>"]`
    Scalar((f64, String)),
    Vector(Vec<Series>),
    Matrix(Vec<Value>),
    String((f64, String)),
}

#[derive(Deserialize)]
struct Series {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    /// Absent for a native histogram sample (which has `histogram` instead).
    #[serde(default)]
    value: Option<(f64, String)>,
}

/// Judge a response to an instant query. Pure, so every shape of answer is tested without a
/// server.
fn evaluate(response: &CappedResponse, check: &Check) -> Judgement {
    if response.truncated {
        return Judgement::failed(format!(
            "the response is larger than {} MiB; aggregate the query (`sum by (...)`, `topk`) \
             so that it returns fewer series",
            BODY_CAP / (1024 * 1024)
        ));
    }
    let answer: ApiResponse = match serde_json::from_slice(&response.body) {
        Ok(answer) => answer,
        Err(error) => return Judgement::failed(not_an_api_response(response, &error)),
    };
    if answer.status != "success" {
        return Judgement::failed(format!(
            "Prometheus rejected the query (HTTP {}, {}): {}",
            response.status,
            answer.error_type.as_deref().unwrap_or("no errorType"),
            answer.error.as_deref().unwrap_or("no error text")
        ));
    }
    let mut judgement = match answer.data {
        Some(QueryData::Scalar((_, text))) => judge_scalar(&text, check),
        Some(QueryData::Vector(series)) => judge_vector(&series, check),
        Some(QueryData::Matrix(series)) => Judgement::failed(format!(
            "the query returned a range vector ({} series), not one number per series; wrap \
             the range selector in a function such as `rate(...[5m])` or `avg_over_time(...[5m])`",
            series.len()
        )),
        Some(QueryData::String((_, text))) => Judgement::failed(format!(
            "the query returned the string {text:?}, not a number"
        )),
        None => Judgement::failed("the response has no `data`".to_string()),
    };
    if !answer.warnings.is_empty()
        && let Some(Value::Object(value)) = &mut judgement.value
    {
        value.insert("warnings".into(), json!(answer.warnings));
    }
    judgement
}

fn not_an_api_response(response: &CappedResponse, error: &serde_json::Error) -> String {
    let body = String::from_utf8_lossy(&response.body);
    let quote: String = body.trim().chars().take(BODY_QUOTE_CHARS).collect();
    let mut text = if (200..300).contains(&response.status) {
        format!("the response is not Prometheus API JSON ({error})")
    } else {
        format!("HTTP {} and not a Prometheus API answer", response.status)
    };
    if !quote.is_empty() {
        text.push_str(&format!(": {quote}"));
    }
    if response.status == 404 {
        text.push_str(
            " (is `url` the server's base URL, with its route prefix if it has one? \
             faultline adds /api/v1/query)",
        );
    }
    text
}

fn judge_scalar(text: &str, check: &Check) -> Judgement {
    let number = match parse_sample_value(text) {
        Ok(number) => number,
        Err(error) => return Judgement::failed(format!("scalar: {error}")),
    };
    let value = json!({ "result_type": "scalar", "value": json_number(number) });
    let failures = match unmet(number, &check.comparisons) {
        Some(expected) => vec![format!(
            "scalar = {}, expected {expected}{}",
            show(number),
            nan_note(number)
        )],
        None => Vec::new(),
    };
    Judgement {
        value: Some(value),
        failures,
    }
}

fn judge_vector(series: &[Series], check: &Check) -> Judgement {
    if series.is_empty() {
        let value = json!({ "result_type": "vector", "series": [], "series_count": 0 });
        let failures = match check.no_data {
            NoData::Pass => Vec::new(),
            NoData::Fail => vec![
                "no data for the query: it returned no series (a metric not scraped, or \
                 labels that match nothing); if no series is healthy, set `expect.no_data: pass`"
                    .to_string(),
            ],
        };
        return Judgement {
            value: Some(value),
            failures,
        };
    }
    // Each series with its number and, when it fails, why (written to follow its name).
    let judged: Vec<(&Series, Option<f64>, Option<String>)> = series
        .iter()
        .map(|s| {
            let parsed = match &s.value {
                Some((_, text)) => parse_sample_value(text),
                None => Err(
                    "no float value (a native histogram? query a number from it, \
                             such as `histogram_quantile(0.99, ...)`)"
                        .to_string(),
                ),
            };
            match parsed {
                Ok(number) => {
                    let why = unmet(number, &check.comparisons).map(|expected| {
                        format!(
                            " = {}, expected {expected}{}",
                            show(number),
                            nan_note(number)
                        )
                    });
                    (s, Some(number), why)
                }
                Err(error) => (s, None, Some(format!(": {error}"))),
            }
        })
        .collect();
    let failing = judged.iter().filter(|(_, _, why)| why.is_some()).count();
    let mut kept: Vec<&(&Series, Option<f64>, Option<String>)> = judged
        .iter()
        .filter(|(_, _, why)| why.is_some())
        .chain(judged.iter().filter(|(_, _, why)| why.is_none()))
        .take(SERIES_KEPT)
        .collect();
    let failures = match kept.first() {
        Some((first, _, Some(why))) => vec![format!(
            "{}{why} ({failing} of {} series {})",
            series_name(&first.metric),
            series.len(),
            if failing == 1 { "fails" } else { "fail" }
        )],
        _ => Vec::new(),
    };
    let listed: Vec<Value> = kept
        .drain(..)
        .map(|(s, number, _)| {
            json!({
                "labels": s.metric,
                "value": number.map_or(Value::Null, json_number),
            })
        })
        .collect();
    let mut value = json!({
        "result_type": "vector",
        "series": listed,
        "series_count": series.len(),
    });
    if failing > 0 {
        value["failing"] = json!(failing);
    }
    Judgement {
        value: Some(value),
        failures,
    }
}

/// Prometheus writes sample values as strings, with `NaN`, `+Inf` and `-Inf` for the values
/// JSON numbers cannot hold.
fn parse_sample_value(text: &str) -> Result<f64, String> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => text
            .parse::<f64>()
            .map_err(|_| format!("value `{text}` is not a number")),
    }
}

/// The comparisons `number` does not meet, as `< 0.01 and > 0`; `None` when it meets all.
fn unmet(number: f64, comparisons: &[Comparison]) -> Option<String> {
    let unmet: Vec<String> = comparisons
        .iter()
        .filter(|comparison| !comparison.holds(number))
        .map(Comparison::to_string)
        .collect();
    (!unmet.is_empty()).then(|| unmet.join(" and "))
}

fn nan_note(number: f64) -> &'static str {
    if number.is_nan() {
        " (NaN fails every comparison; a ratio is NaN when its denominator is 0, as with no traffic)"
    } else {
        ""
    }
}

/// A number as Prometheus writes it.
fn show(number: f64) -> String {
    if number.is_nan() {
        "NaN".to_string()
    } else if number == f64::INFINITY {
        "+Inf".to_string()
    } else if number == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        number.to_string()
    }
}

/// Finite numbers as JSON numbers; the others as Prometheus's strings, which JSON can hold.
fn json_number(number: f64) -> Value {
    if number.is_finite() {
        json!(number)
    } else {
        json!(show(number))
    }
}

/// `demo_worker_up{instance="127.0.0.1:18080",job="demo"}`, as PromQL writes a series.
fn series_name(labels: &BTreeMap<String, String>) -> String {
    let name = labels.get("__name__").map_or("", String::as_str);
    let pairs: Vec<String> = labels
        .iter()
        .filter(|(key, _)| key.as_str() != "__name__")
        .map(|(key, value)| format!("{key}={value:?}"))
        .collect();
    format!("{name}{{{}}}", pairs.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(comparisons: &[Comparison]) -> Check {
        Check {
            comparisons: comparisons.to_vec(),
            ..Check::default()
        }
    }

    fn answer(status: u16, body: &str) -> CappedResponse {
        CappedResponse {
            status,
            body: body.as_bytes().to_vec(),
            truncated: false,
        }
    }

    fn judge(body: &str, check: &Check) -> Judgement {
        evaluate(&answer(200, body), check)
    }

    fn scalar(value: &str) -> String {
        format!(
            r#"{{"status":"success","data":{{"resultType":"scalar","result":[1700000000.123,"{value}"]}}}}"#
        )
    }

    /// Three series of `demo_request_error_ratio`, one per path.
    const VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"__name__":"demo_request_error_ratio","path":"/","job":"demo"},"value":[1700000000,"0"]},
        {"metric":{"__name__":"demo_request_error_ratio","path":"/health","job":"demo"},"value":[1700000000,"0.25"]},
        {"metric":{"__name__":"demo_request_error_ratio","path":"/work","job":"demo"},"value":[1700000000,"0.005"]}
    ]}}"#;

    #[test]
    fn a_scalar_is_one_number_judged_by_every_comparison() {
        let range = check(&[Comparison::AtLeast(0.5), Comparison::Below(2.0)]);
        let passed = judge(&scalar("1.5"), &range);
        assert_eq!(
            passed,
            Judgement {
                value: Some(json!({"result_type": "scalar", "value": 1.5})),
                failures: vec![],
            }
        );
        let failed = judge(&scalar("2"), &range);
        assert_eq!(failed.failures, vec!["scalar = 2, expected < 2"]);
        assert_eq!(
            failed.value,
            Some(json!({"result_type": "scalar", "value": 2.0}))
        );
        let equal = check(&[Comparison::Equals(1.0)]);
        assert!(judge(&scalar("1"), &equal).failures.is_empty());
        assert!(judge(&scalar("1e0"), &equal).failures.is_empty());
    }

    #[test]
    fn every_series_of_a_vector_must_pass_and_the_first_offender_is_named() {
        let judgement = judge(VECTOR, &check(&[Comparison::Below(0.01)]));
        assert_eq!(
            judgement.failures,
            vec![
                r#"demo_request_error_ratio{job="demo",path="/health"} = 0.25, expected < 0.01 (1 of 3 series fails)"#
            ]
        );
        let value = judgement.value.unwrap();
        assert_eq!(value["series_count"], 3);
        assert_eq!(value["failing"], 1);
        // The failing series comes first, so the journal shows it even when many are kept.
        assert_eq!(value["series"][0]["labels"]["path"], "/health");
        assert_eq!(value["series"][0]["value"], 0.25);
        assert_eq!(value["series"].as_array().unwrap().len(), 3);

        let lenient = judge(VECTOR, &check(&[Comparison::AtMost(0.25)]));
        assert!(lenient.failures.is_empty(), "{lenient:?}");
        assert!(lenient.value.unwrap().get("failing").is_none());
    }

    #[test]
    fn the_count_of_failing_series_is_reported_and_the_journal_keeps_at_most_ten() {
        let series: Vec<String> = (0..25)
            .map(|i| {
                format!(
                    r#"{{"metric":{{"instance":"10.0.0.{i}:9100"}},"value":[1700000000,"{i}"]}}"#
                )
            })
            .collect();
        let body = format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            series.join(",")
        );
        let judgement = judge(&body, &check(&[Comparison::Above(20.0)]));
        assert_eq!(
            judgement.failures,
            vec![r#"{instance="10.0.0.0:9100"} = 0, expected > 20 (21 of 25 series fail)"#]
        );
        let value = judgement.value.unwrap();
        assert_eq!(value["series"].as_array().unwrap().len(), SERIES_KEPT);
        assert_eq!(
            (value["series_count"].clone(), value["failing"].clone()),
            (json!(25), json!(21))
        );
    }

    #[test]
    fn an_empty_vector_is_no_data_and_fails_unless_no_data_passes() {
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        let strict = judge(empty, &check(&[Comparison::Below(0.01)]));
        assert_eq!(strict.failures.len(), 1);
        assert!(
            strict.failures[0].starts_with("no data for the query")
                && strict.failures[0].contains("`expect.no_data: pass`"),
            "{strict:?}"
        );
        assert_eq!(
            strict.value,
            Some(json!({"result_type": "vector", "series": [], "series_count": 0}))
        );
        let lenient = Check {
            no_data: NoData::Pass,
            ..check(&[Comparison::Below(0.01)])
        };
        assert!(judge(empty, &lenient).failures.is_empty());
    }

    #[test]
    fn nan_fails_every_comparison_and_infinities_compare_as_infinite() {
        for comparison in [
            Comparison::Below(1.0),
            Comparison::AtMost(1.0),
            Comparison::Above(1.0),
            Comparison::AtLeast(1.0),
            Comparison::Equals(1.0),
        ] {
            let judgement = judge(&scalar("NaN"), &check(&[comparison]));
            assert_eq!(judgement.failures.len(), 1, "{comparison}: NaN must fail");
            assert!(
                judgement.failures[0]
                    .starts_with(&format!("scalar = NaN, expected {comparison} (NaN fails")),
                "{judgement:?}"
            );
            assert_eq!(
                judgement.value,
                Some(json!({"result_type": "scalar", "value": "NaN"}))
            );
        }
        let bounded = check(&[Comparison::Below(1e9)]);
        let infinite = judge(&scalar("+Inf"), &bounded);
        assert_eq!(
            infinite.failures,
            vec!["scalar = +Inf, expected < 1000000000"]
        );
        assert_eq!(infinite.value.unwrap()["value"], "+Inf");
        assert!(judge(&scalar("-Inf"), &bounded).failures.is_empty());

        let vector_nan = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"ratio"},"value":[1700000000,"NaN"]}]}}"#;
        let judgement = judge(vector_nan, &check(&[Comparison::Below(0.01)]));
        assert!(
            judgement.failures[0]
                .starts_with("ratio{} = NaN, expected < 0.01 (NaN fails every comparison"),
            "{judgement:?}"
        );
        assert_eq!(judgement.value.unwrap()["series"][0]["value"], "NaN");
    }

    #[test]
    fn an_api_error_fails_with_its_type_and_message() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:14: parse error: unexpected right parenthesis ')'"}"#;
        let judgement = evaluate(&answer(400, body), &check(&[Comparison::Below(1.0)]));
        assert_eq!(
            judgement,
            Judgement::failed(
                r#"Prometheus rejected the query (HTTP 400, bad_data): invalid parameter "query": 1:14: parse error: unexpected right parenthesis ')'"#
                    .to_string()
            )
        );
        let timeout = r#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#;
        assert_eq!(
            evaluate(&answer(503, timeout), &Check::default()).failures,
            vec![
                "Prometheus rejected the query (HTTP 503, timeout): query timed out in expression evaluation"
            ]
        );
    }

    #[test]
    fn a_range_vector_or_a_string_has_no_number_to_judge() {
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"__name__":"up"},"values":[[1700000000,"1"],[1700000001,"1"]]}]}}"#;
        let judgement = judge(matrix, &check(&[Comparison::Equals(1.0)]));
        assert_eq!(judgement.value, None);
        assert_eq!(judgement.failures.len(), 1);
        assert!(
            judgement.failures[0].starts_with("the query returned a range vector (1 series)")
                && judgement.failures[0].contains("rate(...[5m])"),
            "{judgement:?}"
        );
        let string =
            r#"{"status":"success","data":{"resultType":"string","result":[1700000000,"hello"]}}"#;
        assert_eq!(
            judge(string, &Check::default()).failures,
            vec![r#"the query returned the string "hello", not a number"#]
        );
    }

    #[test]
    fn what_is_not_an_api_answer_says_what_it_was() {
        let proxy = evaluate(&answer(401, "Unauthorized\n"), &Check::default());
        assert_eq!(
            proxy.failures,
            vec!["HTTP 401 and not a Prometheus API answer: Unauthorized"]
        );
        let wrong_path = evaluate(&answer(404, "404 page not found"), &Check::default());
        assert!(
            wrong_path.failures[0].contains("is `url` the server's base URL"),
            "{wrong_path:?}"
        );
        let html = evaluate(&answer(200, "<html>"), &Check::default());
        assert!(
            html.failures[0].starts_with("the response is not Prometheus API JSON (")
                && html.failures[0].ends_with(": <html>"),
            "{html:?}"
        );
        let cut = CappedResponse {
            truncated: true,
            ..answer(200, "{")
        };
        assert!(
            evaluate(&cut, &Check::default()).failures[0]
                .starts_with("the response is larger than 8 MiB"),
        );
    }

    #[test]
    fn unparsable_values_and_native_histograms_fail_their_series() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"le":"x"},"histogram":[1700000000,{"count":"3","sum":"1","buckets":[]}]},
            {"metric":{},"value":[1700000000,"1"]}]}}"#;
        let judgement = judge(body, &check(&[Comparison::AtLeast(0.0)]));
        assert_eq!(judgement.failures.len(), 1);
        assert!(
            judgement.failures[0].starts_with(r#"{le="x"}: no float value (a native histogram?"#)
                && judgement.failures[0].ends_with("(1 of 2 series fails)"),
            "{judgement:?}"
        );
        assert_eq!(judgement.value.unwrap()["series"][0]["value"], Value::Null);
        assert_eq!(
            judge(&scalar("many"), &Check::default()).failures,
            vec!["scalar: value `many` is not a number"]
        );
    }

    #[test]
    fn warnings_are_kept_in_the_value() {
        let body = r#"{"status":"success","warnings":["PromQL info: metric might not be a counter"],
            "data":{"resultType":"scalar","result":[1700000000,"0"]}}"#;
        let judgement = judge(body, &check(&[Comparison::Equals(0.0)]));
        assert!(judgement.failures.is_empty());
        assert_eq!(
            judgement.value.unwrap()["warnings"],
            json!(["PromQL info: metric might not be a counter"])
        );
    }

    #[test]
    fn the_query_is_percent_encoded_under_the_base_path() {
        let query = r#"sum(rate(demo_requests_total{code!="200"}[30s])) / 2 + 1"#;
        let url = query_url("http://127.0.0.1:9090", query, Duration::from_secs(2)).unwrap();
        assert_eq!(url.path(), "/api/v1/query");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            vec![
                ("query".to_string(), query.to_string()),
                ("timeout".to_string(), "2000ms".to_string())
            ]
        );
        // Form encoding, as Prometheus (Go's ParseForm) decodes it: a space is `+`, so a
        // literal `+` must be `%2B` or the server would read `2   1`.
        let raw = url.query().unwrap();
        let encoded = raw
            .strip_prefix("query=")
            .unwrap()
            .split("&timeout")
            .next()
            .unwrap();
        assert!(encoded.ends_with("+%2F+2+%2B+1"), "{raw}");
        for unsafe_in_a_query in ['{', '}', '"', '[', ']', ' ', '/', '!', '=', '&'] {
            assert!(
                !encoded.contains(unsafe_in_a_query),
                "`{unsafe_in_a_query}` is not encoded in {raw}"
            );
        }
        for base in [
            "https://mon.internal/prometheus",
            "https://mon.internal/prometheus/",
        ] {
            let url = query_url(base, "up", Duration::from_millis(500)).unwrap();
            assert_eq!(
                url.as_str(),
                "https://mon.internal/prometheus/api/v1/query?query=up&timeout=500ms"
            );
        }
    }

    #[tokio::test]
    async fn a_closed_port_fails_the_sample_with_the_transport_error() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap();
        let spec = ProbeSpec {
            name: "slo".into(),
            kind: ProbeKind::Prometheus {
                url: format!("http://{closed}"),
                query: "up".into(),
                headers: BTreeMap::from([("Authorization".into(), "Bearer t".into())]),
            },
            check: check(&[Comparison::Equals(1.0)]),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failure_threshold: 1,
            slo: None,
        };
        let sample = PrometheusProbe::new(&spec).sample().await;
        assert!(!sample.ok);
        assert_eq!(sample.error.as_deref(), Some("connection refused"));
        assert_eq!(sample.value, None);
    }
}
