//! Checks for `prometheus` probes: the server's base URL, the query, and the comparisons
//! its numbers are judged by. Nothing here talks to the server: the query is parsed with
//! the PromQL grammar (`promql-parser`, which follows Prometheus 3), so a typo fails
//! `validate` in CI rather than the first sample of a run.

use super::Checker;
use crate::experiment::model::{Expect, PrometheusProbe};
use crate::experiment::{Diagnostic, Pos, Sp};
use crate::plan::{Comparison, ProbeKind};

/// Where the query API lives below the base URL; a `url` that already contains it would be
/// queried at `.../api/v1/query/api/v1/query`.
const API_PATH: &str = "/api/v1/";

impl<'a> Checker<'a> {
    pub(super) fn prometheus_probe(&mut self, prometheus: &PrometheusProbe) -> Option<ProbeKind> {
        let url = &prometheus.url;
        let mut valid = match self.http_url(url, "http://127.0.0.1:9090") {
            Some(parsed) => self.base_url(url, &parsed),
            None => false,
        };
        if prometheus.query.trim().is_empty() {
            valid = false;
            self.report(
                Diagnostic::at(prometheus.query.pos, "`query` is empty", "no PromQL").with_hint(
                    "write a PromQL expression that returns numbers, for example \
                         `sum(rate(http_requests_total{code=~\"5..\"}[1m]))`",
                ),
            );
        } else {
            valid &= self.promql(&prometheus.query);
        }
        valid &= self.headers(&prometheus.headers, url.pos);
        valid.then(|| ProbeKind::Prometheus {
            url: url.value.clone(),
            query: prometheus.query.value.clone(),
            headers: prometheus.headers.clone(),
        })
    }

    /// The query parses, and gives numbers: an instant vector or a scalar, not a range
    /// vector (`x[5m]`) or a string, which no threshold can judge.
    fn promql(&mut self, query: &Sp<String>) -> bool {
        use promql_parser::parser::{self, value::ValueType};
        let problem = match parser::parse(&query.value) {
            Err(error) => Some((
                format!("`query` is not valid PromQL: {error}"),
                "checked with Prometheus 3's PromQL grammar; try the query in Prometheus's \
                 expression browser"
                    .to_string(),
            )),
            Ok(expr) => match expr.value_type() {
                ValueType::Vector | ValueType::Scalar => None,
                ValueType::Matrix => Some((
                    "`query` returns a range vector, not numbers".to_string(),
                    "wrap the range in a function that gives one value per series, for \
                     example `rate(...[1m])` or `max_over_time(...[1m])`"
                        .to_string(),
                )),
                ValueType::String => Some((
                    "`query` returns a string, not numbers".to_string(),
                    "write an expression whose value is a number per series".to_string(),
                )),
            },
        };
        match problem {
            None => true,
            Some((message, hint)) => {
                self.report(Diagnostic::at(query.pos, message, "this query").with_hint(hint));
                false
            }
        }
    }

    /// The URL names the server, not an API call: faultline appends the API path and the
    /// query itself.
    fn base_url(&mut self, url: &Sp<String>, parsed: &reqwest::Url) -> bool {
        // `/api/v1/...`, or `/api/v1` at the very end.
        let api_at = format!("{}/", parsed.path()).find(API_PATH);
        if api_at.is_none() && parsed.query().is_none() && parsed.fragment().is_none() {
            return true;
        }
        let mut base = parsed.clone();
        base.set_query(None);
        base.set_fragment(None);
        if let Some(at) = api_at {
            let prefix = parsed.path()[..at].to_string();
            base.set_path(&prefix);
        }
        let base = base.as_str().trim_end_matches('/').to_string();
        self.report(
            Diagnostic::at(
                url.pos,
                format!("`{}` is not a Prometheus server's base URL", url.value),
                "an API call",
            )
            .with_hint(format!(
                "write `url: {base}`; faultline adds `/api/v1/query?query=...` itself"
            )),
        );
        false
    }

    /// The comparisons a prometheus probe's numbers must pass: at least one, at most one bound
    /// from each side (or `equals` alone), and some number that passes. Thresholds are finite:
    /// the YAML parser already refuses `.nan` and `.inf`.
    pub(super) fn comparisons(
        &mut self,
        name: &str,
        expect: &Expect,
        probe_pos: Pos,
    ) -> Vec<Comparison> {
        // Lower bounds first, so a range reads `>= 0 and < 0.01` in plans and errors.
        let given: Vec<(&str, &Sp<f64>, Comparison)> = [
            (
                "above",
                &expect.above,
                Comparison::Above as fn(f64) -> Comparison,
            ),
            ("at_least", &expect.at_least, Comparison::AtLeast),
            ("below", &expect.below, Comparison::Below),
            ("at_most", &expect.at_most, Comparison::AtMost),
            ("equals", &expect.equals, Comparison::Equals),
        ]
        .into_iter()
        .filter_map(|(key, value, make)| value.as_ref().map(|v| (key, v, make(v.value))))
        .collect();
        if given.is_empty() {
            self.report(
                Diagnostic::at(
                    probe_pos,
                    format!("prometheus probe `{name}` compares its result with nothing"),
                    "no comparison",
                )
                .with_hint(
                    "add one to `expect`: `below`, `at_most`, `above`, `at_least` or `equals`, \
                     for example `expect: {below: 0.01}`",
                ),
            );
            return Vec::new();
        }
        let mut valid = true;
        let upper: Vec<_> = given
            .iter()
            .filter(|(key, _, _)| matches!(*key, "below" | "at_most"))
            .collect();
        let lower: Vec<_> = given
            .iter()
            .filter(|(key, _, _)| matches!(*key, "above" | "at_least"))
            .collect();
        for (side, bounds, hint) in [
            ("upper", &upper, "`below` is `<`, `at_most` is `<=`"),
            ("lower", &lower, "`above` is `>`, `at_least` is `>=`"),
        ] {
            if let [_, (_, second, _)] = bounds.as_slice() {
                valid = false;
                self.report(
                    Diagnostic::at(
                        second.pos,
                        format!("two {side} bounds in the `expect` of probe `{name}`"),
                        "second bound",
                    )
                    .with_hint(format!("keep one: {hint}")),
                );
            }
        }
        if let Some((_, equals, _)) = given.iter().find(|(key, _, _)| *key == "equals")
            && given.len() > 1
        {
            valid = false;
            self.report(
                Diagnostic::at(
                    equals.pos,
                    format!("`expect.equals` of probe `{name}` comes with another comparison"),
                    "not alone",
                )
                .with_hint(
                    "`equals` says which one value passes; remove it or the other comparisons",
                ),
            );
        }
        if let ([(_, _, high)], [(_, _, low)]) = (upper.as_slice(), lower.as_slice()) {
            let (high, low) = (*high, *low);
            let touching_allowed =
                matches!((high, low), (Comparison::AtMost(_), Comparison::AtLeast(_)));
            let empty =
                low.bound() > high.bound() || (low.bound() == high.bound() && !touching_allowed);
            if valid && empty {
                valid = false;
                let at = upper[0].1.pos;
                self.report(
                    Diagnostic::at(
                        at,
                        format!("no number is both {low} and {high}"),
                        "empty range",
                    )
                    .with_hint(
                        "every sample would fail; the lower bound (`above`/`at_least`) must be \
                         below the upper one (`below`/`at_most`)",
                    ),
                );
            }
        }
        if valid {
            given
                .into_iter()
                .map(|(_, _, comparison)| comparison)
                .collect()
        } else {
            Vec::new()
        }
    }
}
