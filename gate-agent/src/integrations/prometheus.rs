//! The Prometheus-compatible query endpoint, for Flagger's `prometheus` metric provider:
//! `/api/v1/query` answers instant queries for the series in [`Series`] (parsed by
//! [`parse_query`], answered by [`prometheus_answer`]) from the latest status, and
//! `/api/v1/query_range` is refused as Prometheus in agent mode refuses it ([`range_refusal`]).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};

use super::form::parse_form;
use crate::status::{
    ExpectedNamespace, Found, Refusal, Standing, StatusLookup, StatusView, SubsetView, expected, standing,
};
use crate::time::unix_ms;

/// The instant and range query routes, answered from the rollouts `L` finds.
pub fn routes<S, L>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    L: StatusLookup + FromRef<S> + Send + Sync + 'static,
{
    Router::new()
        .route("/api/v1/query", get(prometheus_get::<L>).post(prometheus_post::<L>).fallback(prometheus_not_allowed))
        .route("/api/v1/query_range", get(range_refused).post(range_refused).fallback(prometheus_not_allowed))
}

/// `canary_gate_verdict`, read from where the canary stands ([`standing`]) as the table in
/// [`crate::integrations`] reads it: 1 only where Flagger's gates pass and Argo reads `pass`; 0 on
/// a breach (rolled back, a decisive failure) or a failed check; no sample wherever the gates hold
/// and Argo reads `inconclusive` (not enough data, insufficient evidence for the promotion gate,
/// paused, not ready), which Flagger reads as "no values found" and halts on without counting a
/// failed check. So a query gate never advances past a step the promotion gate holds.
pub fn verdict_value(view: &StatusView) -> Option<f64> {
    match standing(view) {
        Standing::Passing(_) => Some(1.0),
        Standing::Breach(_) | Standing::Failing(_) => Some(0.0),
        Standing::Unavailable(_)
        | Standing::Paused(_)
        | Standing::NotReady(_)
        | Standing::InsufficientEvidence(_)
        | Standing::NoData(_) => None,
    }
}

/// A series the query endpoint answers. These are answers computed from `/status`, not series
/// the agent exports on `/metrics` (those are `canary_gate_agent_*`, in base units).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    /// Percent of successful requests over the status window (10 s), per subset.
    SuccessRate,
    /// Median latency over the status window, ms, per subset.
    LatencyP50,
    /// 99th percentile latency over the status window, ms, per subset.
    LatencyP99,
    /// 1 pass, 0 fail or rolled back; no sample while the rollout holds ([`verdict_value`]).
    Verdict,
}

impl Series {
    pub const ALL: [Series; 4] = [Series::SuccessRate, Series::LatencyP50, Series::LatencyP99, Series::Verdict];

    pub fn name(self) -> &'static str {
        match self {
            Series::SuccessRate => "canary_gate_success_rate",
            Series::LatencyP50 => "canary_gate_latency_p50_ms",
            Series::LatencyP99 => "canary_gate_latency_p99_ms",
            Series::Verdict => "canary_gate_verdict",
        }
    }

    fn per_subset(self) -> bool {
        self != Series::Verdict
    }

    fn of(self, s: &SubsetView) -> Option<f64> {
        match self {
            Series::SuccessRate => s.success_rate_percent,
            Series::LatencyP50 => s.p50_ms,
            Series::LatencyP99 => s.p99_ms,
            Series::Verdict => None,
        }
    }
}

/// A query this endpoint accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromQuery {
    /// `vector(1)`: Flagger's check that the provider is up.
    One,
    Select {
        series: Series,
        subset: Option<String>,
        rollout: Option<String>,
        namespace: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Text(String),
    Number(String),
    Symbol(char),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let take_while = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, ok: fn(char) -> bool| {
        let mut s = String::new();
        while let Some(c) = chars.next_if(|c| ok(*c)) {
            s.push(c);
        }
        s
    };
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            out.push(Token::Ident(take_while(&mut chars, |c| c.is_ascii_alphanumeric() || c == '_' || c == ':')));
        } else if c.is_ascii_digit() || c == '.' {
            out.push(Token::Number(take_while(&mut chars, |c| c.is_ascii_digit() || c == '.')));
        } else if c == '"' || c == '\'' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("a label value is missing its closing quote".into()),
                    Some('\\') => match chars.next() {
                        Some(e @ ('\\' | '"' | '\'')) => s.push(e),
                        Some('n') => s.push('\n'),
                        other => return Err(format!("unsupported escape \\{}", other.unwrap_or(' '))),
                    },
                    Some(q) if q == c => break,
                    Some(other) => s.push(other),
                }
            }
            out.push(Token::Text(s));
        } else if "{}(),=".contains(c) {
            chars.next();
            out.push(Token::Symbol(c));
        } else if c == '!' || c == '~' {
            return Err("only `=` label matchers are supported (no `!=`, `=~`, `!~`)".into());
        } else {
            return Err(format!("unexpected {c:?}; accepted queries are {}", accepted_queries()));
        }
    }
    Ok(out)
}

fn accepted_queries() -> String {
    let mut forms = vec!["vector(1)".to_string()];
    for s in Series::ALL {
        forms.push(if s.per_subset() {
            format!("{}{{subset=\"canary\"|\"stable\"}}", s.name())
        } else {
            s.name().into()
        });
    }
    forms.join(", ")
}

/// Parses a query: `vector(1)`, or one of [`Series`] with `=` matchers on `subset`, `rollout`
/// and `namespace` (values in double or single quotes). Whitespace between tokens is ignored;
/// everything else is refused with a sentence.
pub fn parse_query(text: &str) -> Result<PromQuery, String> {
    let mut it = tokens(text)?.into_iter();
    let name = match it.next() {
        Some(Token::Ident(name)) => name,
        None => return Err("the query is empty".into()),
        Some(_) => return Err(format!("accepted queries are {}", accepted_queries())),
    };
    if name == "vector" {
        return match (it.next(), it.next(), it.next(), it.next()) {
            (Some(Token::Symbol('(')), Some(Token::Number(n)), Some(Token::Symbol(')')), None)
                if matches!(n.as_str(), "1" | "1.0") =>
            {
                Ok(PromQuery::One)
            }
            _ => Err("of vector(...) only vector(1) is supported".into()),
        };
    }
    let Some(series) = Series::ALL.into_iter().find(|s| s.name() == name) else {
        return Err(format!("unknown series {name:?}; accepted queries are {}", accepted_queries()));
    };
    let mut labels = BTreeMap::new();
    match it.next() {
        None => {}
        Some(Token::Symbol('{')) => loop {
            let label = match it.next() {
                Some(Token::Symbol('}')) => break,
                Some(Token::Ident(label)) => label,
                _ => return Err("expected a label name or `}` in the selector".into()),
            };
            let value = match (it.next(), it.next()) {
                (Some(Token::Symbol('=')), Some(Token::Text(value))) => value,
                _ => return Err(format!("expected {label}=\"value\" in the selector")),
            };
            if labels.insert(label.clone(), value).is_some() {
                return Err(format!("label {label:?} is given twice"));
            }
            match it.next() {
                Some(Token::Symbol(',')) => {}
                Some(Token::Symbol('}')) => break,
                _ => return Err("expected `,` or `}` after a label matcher".into()),
            }
        },
        Some(_) => return Err(format!("unexpected text after {name}: expected `{{` or the end of the query")),
    }
    if it.next().is_some() {
        return Err(format!("unexpected text after the selector; accepted queries are {}", accepted_queries()));
    }
    let (mut subset, mut rollout, mut namespace) = (None, None, None);
    for (label, value) in labels {
        match label.as_str() {
            "subset" => subset = Some(value),
            "rollout" => rollout = Some(value),
            "namespace" => namespace = Some(value),
            other => return Err(format!("unknown label {other:?}; accepted labels are subset, rollout and namespace")),
        }
    }
    match (series.per_subset(), &subset) {
        (true, None) => {
            Err(format!("{name} needs a subset: {name}{{subset=\"canary\"}} or {name}{{subset=\"stable\"}}"))
        }
        (false, Some(_)) => Err(format!("{name} has no subset label")),
        _ => Ok(PromQuery::Select { series, subset, rollout, namespace }),
    }
}

/// Prometheus's error answer: `{"status":"error","errorType":...,"error":...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromError {
    pub status: StatusCode,
    pub error_type: &'static str,
    pub error: String,
}

impl PromError {
    fn bad_data(error: impl Into<String>) -> PromError {
        PromError { status: StatusCode::BAD_REQUEST, error_type: "bad_data", error: error.into() }
    }

    /// A lookup's refusal in Prometheus's words: 503 `unavailable`, 404 `not_found`, else
    /// `bad_data`.
    fn of(refused: Refusal) -> PromError {
        let error_type = match refused.status {
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::NOT_FOUND => "not_found",
            _ => "bad_data",
        };
        PromError { status: refused.status, error_type, error: refused.error }
    }
}

impl IntoResponse for PromError {
    fn into_response(self) -> Response {
        let body = json!({ "status": "error", "errorType": self.error_type, "error": self.error });
        (self.status, Json(body)).into_response()
    }
}

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<&'static str, String>,
    pub value: f64,
}

/// The instant vector `query` selects from the rollouts `lookup` finds by its `rollout` and
/// `namespace` matchers: one sample per rollout, as Prometheus answers a selector matching
/// several series. No value (no requests in the window, not enough data) is no sample, as for an
/// absent series. A rollout that cannot answer (no status yet, or no such subset) is left out
/// when others answer; when none does, its refusal is the answer.
pub fn evaluate(
    query: &PromQuery,
    lookup: &impl StatusLookup,
    expected_namespace: Option<&str>,
) -> Result<Vec<Sample>, PromError> {
    let PromQuery::Select { series, subset, rollout, namespace } = query else {
        return Ok(vec![Sample { labels: BTreeMap::new(), value: 1.0 }]);
    };
    let found = lookup.select(rollout.as_deref(), namespace.as_deref(), expected_namespace).map_err(PromError::of)?;
    let (mut samples, mut refused, mut answered) = (Vec::new(), None, false);
    for f in &found {
        match sample_of(*series, subset.as_deref(), f) {
            Ok(sample) => {
                answered = true;
                samples.extend(sample);
            }
            Err(e) => {
                refused.get_or_insert(e);
            }
        }
    }
    match refused {
        Some(e) if !answered => Err(e),
        _ => Ok(samples),
    }
}

/// One rollout's sample of `series` (for `subset`, a role or a subset name), labelled `rollout`
/// and, in the controller, `namespace`.
fn sample_of(series: Series, subset: Option<&str>, found: &Found) -> Result<Option<Sample>, PromError> {
    let view = &found.view;
    if let Standing::Unavailable(why) = standing(view) {
        return Err(PromError { status: StatusCode::SERVICE_UNAVAILABLE, error_type: "unavailable", error: why });
    }
    let mut labels = BTreeMap::from([("__name__", series.name().to_string()), ("rollout", view.rollout.clone())]);
    if let Some(ns) = &found.namespace {
        labels.insert("namespace", ns.clone());
    }
    let value = match subset {
        None => verdict_value(view),
        Some(wanted) => {
            let Some(s) = view.subsets.iter().find(|s| s.role == wanted || s.subset == wanted) else {
                let known: Vec<String> = view.subsets.iter().map(|s| format!("{} ({})", s.subset, s.role)).collect();
                return Err(PromError::bad_data(format!(
                    "no subset {wanted:?}: use canary, stable or a subset name ({})",
                    known.join(", ")
                )));
            };
            labels.insert("subset", s.subset.clone());
            labels.insert("role", s.role.clone());
            series.of(s)
        }
    };
    Ok(value.map(|value| Sample { labels, value }))
}

/// Prometheus's number format: `NaN`, `+Inf`, `-Inf`, or the shortest decimal.
fn prom_number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

/// `{"status":"success","data":{"resultType":"vector","result":[...]}}`, stamped `now`.
pub fn vector_json(samples: &[Sample], now_unix_ms: u64) -> Value {
    #[allow(clippy::cast_precision_loss)] // ms since 1970 stay far below 2^53
    let at = now_unix_ms as f64 / 1000.0;
    let result: Vec<Value> =
        samples.iter().map(|s| json!({ "metric": s.labels, "value": [at, prom_number(s.value)] })).collect();
    json!({ "status": "success", "data": { "resultType": "vector", "result": result } })
}
/// How far a query's `time` may lie outside what the agent holds (its latest status, published
/// at most a tick ago, up to now) and still be answered from it: the client's and the agent's
/// clocks differ, and a client may round `time` down to whole seconds. Figures are over a 10 s
/// trailing window, so a time this much earlier reads almost the same.
pub const TIME_SLACK_MS: i64 = 5_000;

/// A query's evaluation time in Unix ms, as Prometheus reads `time=`: RFC 3339, or Unix
/// seconds with optional decimals (rounded to the millisecond).
pub fn parse_time(text: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "invalid parameter \"time\": cannot parse {text:?} to a valid timestamp \
             (RFC 3339 such as 2024-05-01T12:00:00Z, or Unix seconds such as 1714564800.5)"
        )
    };
    if let Ok(seconds) = text.parse::<f64>() {
        // ±1e14 s is far beyond any clock; it keeps the conversion exact and in range.
        if !seconds.is_finite() || seconds.abs() > 1e14 {
            return Err(bad());
        }
        #[allow(clippy::cast_possible_truncation)] // bounded just above
        return Ok((seconds * 1000.0).round() as i64);
    }
    text.parse::<jiff::Timestamp>().map(jiff::Timestamp::as_millisecond).map_err(|_| bad())
}

/// Unix ms as RFC 3339, for error sentences.
fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| format!("{ms} ms"), |t| t.to_string())
}

/// The time a query is evaluated at: `time=` when given, else now. The agent holds only its
/// latest status, which stands from when it was published until now; a time in that span (give
/// or take [`TIME_SLACK_MS`]) is answered from it. Earlier, the answer would be an older status
/// the agent no longer has, and later, one it does not have yet: both are `bad_data` with a
/// sentence, rather than today's figures stamped with another time.
pub fn eval_time(params: &[(String, String)], published_at_unix_ms: u64, now_unix_ms: u64) -> Result<u64, PromError> {
    let mut times = params.iter().filter(|(k, _)| k == "time").map(|(_, t)| t);
    let text = match (times.next(), times.next()) {
        (None, _) => return Ok(now_unix_ms),
        (Some(t), None) => t,
        (Some(_), Some(_)) => return Err(PromError::bad_data("invalid parameter \"time\": given more than once")),
    };
    let at = parse_time(text).map_err(PromError::bad_data)?;
    let now = i64::try_from(now_unix_ms).unwrap_or(i64::MAX);
    let published = i64::try_from(published_at_unix_ms).unwrap_or(i64::MAX).min(now);
    if at < published.saturating_sub(TIME_SLACK_MS) {
        return Err(PromError::bad_data(format!(
            "invalid parameter \"time\": {} is before this agent's latest status ({}): it keeps no \
             history; query the Prometheus that scrapes its /metrics (canary_gate_agent_*) for the past",
            rfc3339(at),
            rfc3339(published)
        )));
    }
    if at > now.saturating_add(TIME_SLACK_MS) {
        return Err(PromError::bad_data(format!(
            "invalid parameter \"time\": {} is after now ({}): this agent answers about its latest status only",
            rfc3339(at),
            rfc3339(now)
        )));
    }
    Ok(u64::try_from(at).unwrap_or(0))
}

/// The single-rollout agent's answer to `/api/v1/query`: [`prometheus_answer_in`] for one
/// status.
pub fn prometheus_answer(
    params: &[(String, String)],
    view: &StatusView,
    expected_namespace: Option<&str>,
    now_unix_ms: u64,
) -> Result<Value, PromError> {
    prometheus_answer_in(params, view, expected_namespace, now_unix_ms)
}

/// The answer to `/api/v1/query` with these (decoded) parameters: `query`, evaluated at `time`
/// (see [`eval_time`]; the newest status `lookup` holds is the latest it can answer about) and
/// stamped with it, as Prometheus stamps an instant vector. `timeout` is ignored: the answer is
/// read from memory.
pub fn prometheus_answer_in(
    params: &[(String, String)],
    lookup: &impl StatusLookup,
    expected_namespace: Option<&str>,
    now_unix_ms: u64,
) -> Result<Value, PromError> {
    let mut queries = params.iter().filter(|(k, _)| k == "query").map(|(_, q)| q);
    let query = match (queries.next(), queries.next()) {
        (Some(q), None) => q,
        (None, _) => return Err(PromError::bad_data("invalid parameter \"query\": missing")),
        (Some(_), Some(_)) => return Err(PromError::bad_data("invalid parameter \"query\": given more than once")),
    };
    let parsed = parse_query(query).map_err(|e| PromError::bad_data(format!("invalid parameter \"query\": {e}")))?;
    let at = eval_time(params, lookup.published_at_unix_ms(), now_unix_ms)?;
    Ok(vector_json(&evaluate(&parsed, lookup, expected_namespace)?, at))
}

fn prometheus_reply(
    s: &impl StatusLookup,
    ns: Option<&Extension<ExpectedNamespace>>,
    params: Result<Vec<(String, String)>, String>,
) -> Response {
    let answer = params
        .map_err(PromError::bad_data)
        .and_then(|params| prometheus_answer_in(&params, s, expected(ns), unix_ms()));
    match answer {
        Ok(body) => Json(body).into_response(),
        Err(e) => {
            tracing::debug!(status = e.status.as_u16(), "query refused: {}", e.error);
            e.into_response()
        }
    }
}

async fn prometheus_get<L: StatusLookup>(
    State(s): State<L>,
    ns: Option<Extension<ExpectedNamespace>>,
    uri: Uri,
) -> Response {
    prometheus_reply(&s, ns.as_ref(), parse_form(uri.query().unwrap_or_default()))
}

/// As Prometheus: parameters in the URL and, when form-encoded, in the body.
async fn prometheus_post<L: StatusLookup>(
    State(s): State<L>,
    ns: Option<Extension<ExpectedNamespace>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    let params = parse_form(uri.query().unwrap_or_default()).and_then(|mut params| {
        if !body.is_empty() {
            if !form {
                return Err("a POST body must be application/x-www-form-urlencoded".into());
            }
            let text = std::str::from_utf8(&body).map_err(|_| "the POST body is not UTF-8".to_string())?;
            params.extend(parse_form(text)?);
        }
        Ok(params)
    });
    prometheus_reply(&s, ns.as_ref(), params)
}

/// `/api/v1/query_range`. Prometheus in agent mode, which has no history either, answers range
/// queries with 422 `execution`; so does the agent, saying what to use instead.
pub fn range_refusal() -> PromError {
    PromError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        error_type: "execution",
        error: "range queries are not supported: gate-agent holds only its latest status, so it answers \
                instant queries (/api/v1/query) only; for a range, query the Prometheus that scrapes its \
                /metrics (canary_gate_agent_* series)"
            .into(),
    }
}

async fn range_refused() -> PromError {
    range_refusal()
}

async fn prometheus_not_allowed(method: Method) -> PromError {
    PromError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        error_type: "bad_data",
        error: format!("{method} is not supported: use GET or POST"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrations::through_the_app::{app_with, call};
    use crate::judge::VerdictKind;
    use crate::status::fixtures::*;
    use axum::body::Body;
    use axum::http::Request;

    #[test]
    fn the_documented_queries_parse_with_any_whitespace() {
        let select = |series, subset: Option<&str>, rollout: Option<&str>, namespace: Option<&str>| PromQuery::Select {
            series,
            subset: subset.map(Into::into),
            rollout: rollout.map(Into::into),
            namespace: namespace.map(Into::into),
        };
        for (text, want) in [
            ("vector(1)", PromQuery::One),
            (" vector ( 1 ) ", PromQuery::One),
            ("canary_gate_verdict", select(Series::Verdict, None, None, None)),
            ("canary_gate_verdict{}", select(Series::Verdict, None, None, None)),
            ("canary_gate_success_rate{subset=\"canary\"}", select(Series::SuccessRate, Some("canary"), None, None)),
            (
                "canary_gate_success_rate{ subset = 'stable' , }",
                select(Series::SuccessRate, Some("stable"), None, None),
            ),
            (
                "canary_gate_latency_p99_ms{\n  subset=\"v2\",\n  rollout=\"demo\",\n  namespace=\"shop\"\n}",
                select(Series::LatencyP99, Some("v2"), Some("demo"), Some("shop")),
            ),
            ("canary_gate_latency_p50_ms{subset=\"canary\"}", select(Series::LatencyP50, Some("canary"), None, None)),
        ] {
            assert_eq!(parse_query(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn any_other_query_is_refused_with_a_sentence() {
        for (text, says) in [
            ("", "empty"),
            ("vector(2)", "vector(1)"),
            ("up", "unknown series \"up\""),
            ("canary_gate_success_rate", "needs a subset"),
            ("canary_gate_verdict{subset=\"canary\"}", "no subset label"),
            ("canary_gate_success_rate{subset=~\"can.*\"}", "only `=`"),
            ("canary_gate_success_rate{subset!=\"canary\"}", "only `=`"),
            ("canary_gate_success_rate{pod=\"x\",subset=\"canary\"}", "unknown label \"pod\""),
            ("canary_gate_success_rate{subset=\"canary\",subset=\"stable\"}", "twice"),
            ("canary_gate_success_rate{subset=\"canary\"", "expected"),
            ("canary_gate_success_rate{subset=\"canary}", "closing quote"),
            ("canary_gate_success_rate{subset=\"canary\"}[1m]", "unexpected"),
            ("sum(canary_gate_verdict)", "vector(1)"),
            ("canary_gate_verdict > 0", "unexpected"),
            ("canary_gate_verdict offset 1m", "unexpected text"),
        ] {
            let e = parse_query(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    fn ask(query: &str, view: &StatusView) -> Result<Value, PromError> {
        prometheus_answer(&[("query".into(), query.into())], view, None, 1_700_000_000_500)
    }

    #[test]
    fn answers_are_in_prometheus_vector_shape_with_the_status_figures() {
        let one = ask("vector(1)", &StatusView::default()).unwrap();
        assert_eq!(
            one,
            json!({"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1_700_000_000.5,"1"]}]}})
        );
        let rate = ask("canary_gate_success_rate{subset=\"canary\"}", &passing()).unwrap();
        assert_eq!(
            rate["data"]["result"][0],
            json!({"metric":{"__name__":"canary_gate_success_rate","rollout":"demo","subset":"v2","role":"canary"},
                   "value":[1_700_000_000.5,"99.5"]})
        );
        let p99 = ask("canary_gate_latency_p99_ms{subset=\"v1\"}", &passing()).unwrap();
        assert_eq!(p99["data"]["result"][0]["value"][1], "12.25");
        assert_eq!(p99["data"]["result"][0]["metric"]["role"], "stable");
        let p50 = ask("canary_gate_latency_p50_ms{subset=\"stable\"}", &passing()).unwrap();
        assert_eq!(p50["data"]["result"][0]["value"][1], "1.5");
    }

    #[test]
    fn the_verdict_series_is_1_on_pass_0_on_a_failure_or_rollback_and_absent_without_data() {
        let value = |v: &StatusView| ask("canary_gate_verdict", v).unwrap()["data"]["result"][0]["value"][1].clone();
        assert_eq!(value(&passing()), "1");
        assert_eq!(value(&decisive()), "0");
        assert_eq!(value(&rolled_back()), "0");
        let failing = with(|v| v.recent_verdicts.push(verdict(VerdictKind::Fail { decisive: false }, &[])));
        assert_eq!(value(&failing), "0");
        let no_data = with(|v| v.recent_verdicts.push(verdict(VerdictKind::NotEnoughData, &[])));
        let empty = ask("canary_gate_verdict", &no_data).unwrap();
        assert_eq!(empty["data"]["result"], json!([]), "Flagger reads no value as \"no values found\"");
        let quiet = with(|v| v.subsets.iter_mut().for_each(|s| s.success_rate_percent = None));
        let empty = ask("canary_gate_success_rate{subset=\"canary\"}", &quiet).unwrap();
        assert_eq!(empty["data"]["result"], json!([]), "no requests in the window: no sample");
    }

    #[test]
    fn the_verdict_series_has_no_sample_wherever_the_gates_hold_even_after_a_passing_check() {
        let value = |v: &StatusView| {
            let answer = ask("canary_gate_verdict", v).unwrap();
            answer["data"]["result"][0]["value"][1].as_str().map(str::to_owned)
        };
        // The checks pass, but the promotion gate holds the step: Flagger's gates answer 412 and
        // Argo `inconclusive`, so a query gate must not read 1 (it did: it read the verdict alone).
        let held = with(|v| {
            v.insufficient_evidence = Some(crate::rollout::InsufficientEvidence {
                since_ms: 1_000,
                more_canary_requests: Some(1_200),
                canary_requests_per_s: Some(10.0),
                eta_s: Some(120.0),
                gives_up_in_s: None,
                tests: Vec::new(),
                text: "insufficient evidence to advance at 10%: about 1200 more canary requests, about 2m at the current rate (10.0/s)".into(),
            });
        });
        assert_eq!(crate::status::latest_verdict(&held), Some(VerdictKind::Pass), "the fixture's checks pass");
        assert_eq!(value(&held), None);
        assert_eq!(verdict_value(&held), None);
        // Every row of the table in `integrations`: 1 exactly where Argo reads `pass`, 0 where it
        // reads `fail` or the hooks refuse with 403, no sample where they hold.
        let paused = with(|v| v.phase = "paused".into());
        let not_ready = with(|v| v.not_ready = Some("no proxy answered".into()));
        let failing = with(|v| v.recent_verdicts.push(verdict(VerdictKind::Fail { decisive: false }, &[])));
        for (view, want) in [
            (&passing(), Some("1")),
            (&decisive(), Some("0")),
            (&rolled_back(), Some("0")),
            (&failing, Some("0")),
            (&paused, None),
            (&not_ready, None),
            (&held, None),
        ] {
            let argo = crate::integrations::argo::argo_verdict(view).unwrap().result;
            assert_eq!(value(view).as_deref(), want, "{:?} (Argo reads {argo})", standing(view));
            assert_eq!(want == Some("1"), argo == "pass", "{:?}", standing(view));
        }
        // A failed check outranks the gate: it counts toward the threshold, and reads 0.
        let held_and_failing = with(|v| {
            v.insufficient_evidence = held.insufficient_evidence.clone();
            v.recent_verdicts.push(verdict(VerdictKind::Fail { decisive: false }, &[]));
        });
        assert_eq!(value(&held_and_failing).as_deref(), Some("0"));
    }

    #[test]
    fn queries_for_another_rollout_namespace_or_subset_are_bad_data() {
        let e = ask("canary_gate_verdict{rollout=\"payments\"}", &passing()).unwrap_err();
        assert_eq!((e.status, e.error_type), (StatusCode::BAD_REQUEST, "bad_data"));
        assert!(e.error.contains("\"payments\""), "{}", e.error);
        assert!(ask("canary_gate_verdict{rollout=\"demo\",namespace=\"any\"}", &passing()).is_ok());
        let q = [("query".to_string(), "canary_gate_verdict{namespace=\"web\"}".to_string())];
        assert!(prometheus_answer(&q, &passing(), Some("shop"), 0).is_err());
        let e = ask("canary_gate_success_rate{subset=\"v3\"}", &passing()).unwrap_err();
        assert!(e.error.contains("v1 (stable), v2 (canary)"), "{}", e.error);
        let e = ask("canary_gate_verdict", &StatusView::default()).unwrap_err();
        assert_eq!((e.status, e.error_type), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"));
        let missing = prometheus_answer(&[], &passing(), None, 0).unwrap_err();
        assert!(missing.error.contains("missing"), "{}", missing.error);
        let twice = [("query".to_string(), "vector(1)".to_string()), ("query".to_string(), "vector(1)".to_string())];
        assert!(prometheus_answer(&twice, &passing(), None, 0).is_err());
    }

    /// `query` at `time` against a status published at 1700000000 s, asked half a second later.
    fn ask_at(query: &str, time: &str) -> Result<Value, PromError> {
        let view = StatusView { published_at_unix_ms: 1_700_000_000_000, ..passing() };
        let params = [("query".to_string(), query.to_string()), ("time".to_string(), time.to_string())];
        prometheus_answer(&params, &view, None, 1_700_000_000_500)
    }

    #[test]
    fn a_time_within_the_latest_status_is_answered_and_stamped_with_that_time() {
        let stamp = |time: &str| ask_at("canary_gate_verdict", time).unwrap()["data"]["result"][0]["value"][0].clone();
        // Unix seconds with decimals, and RFC 3339 in UTC or with an offset: the same instant.
        for time in ["1700000000.25", "2023-11-14T22:13:20.25Z", "2023-11-14T23:13:20.250+01:00"] {
            assert_eq!(stamp(time), json!(1_700_000_000.25), "{time}");
        }
        // A client whose clock is a few seconds behind, or that rounds down to whole seconds.
        assert_eq!(stamp("1699999997"), json!(1_699_999_997.0));
        let no_time = ask("canary_gate_verdict", &passing()).unwrap();
        assert_eq!(no_time["data"]["result"][0]["value"][0], json!(1_700_000_000.5), "no time: now");
    }

    #[test]
    fn a_time_the_agent_holds_no_status_for_is_bad_data_saying_where_to_look() {
        let e = ask_at("canary_gate_verdict", "1699990000").unwrap_err();
        assert_eq!((e.status, e.error_type), (StatusCode::BAD_REQUEST, "bad_data"));
        assert!(e.error.contains("2023-11-14T19:26:40Z is before this agent's latest status"), "{}", e.error);
        assert!(e.error.contains("the Prometheus that scrapes its /metrics"), "{}", e.error);
        let e = ask_at("canary_gate_verdict", "2023-11-14T23:00:00Z").unwrap_err();
        assert!(e.error.contains("is after now (2023-11-14T22:13:20.5Z)"), "{}", e.error);
        for junk in ["yesterday", "NaN", "inf", "1e300", "2023-11-14 22:13:20", ""] {
            let e = ask_at("canary_gate_verdict", junk).unwrap_err();
            assert_eq!(e.error_type, "bad_data", "{junk:?}");
            assert!(e.error.contains("cannot parse") && e.error.contains("RFC 3339"), "{junk:?}: {}", e.error);
        }
        let twice = [
            ("query".to_string(), "vector(1)".to_string()),
            ("time".to_string(), "1700000000".to_string()),
            ("time".to_string(), "1700000000".to_string()),
        ];
        assert!(prometheus_answer(&twice, &passing(), None, 1_700_000_000_500).is_err());
    }

    #[tokio::test]
    async fn the_query_endpoint_takes_get_and_form_encoded_post_like_prometheus() {
        let (app, _tx, _rx) = app_with(passing());
        let get = Request::get("/api/v1/query?query=vector%281%29").body(Body::empty()).unwrap();
        let (code, body) = call(&app, get).await;
        assert_eq!((code, body["data"]["result"][0]["value"][1].as_str()), (200, Some("1")), "{body}");
        let post = Request::post("/api/v1/query")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("query=canary_gate_success_rate%7Bsubset%3D%22canary%22%7D"))
            .unwrap();
        let (code, body) = call(&app, post).await;
        assert_eq!((code, body["data"]["result"][0]["value"][1].as_str()), (200, Some("99.5")), "{body}");
        let bad = Request::get("/api/v1/query?query=up").body(Body::empty()).unwrap();
        let (code, body) = call(&app, bad).await;
        assert_eq!(code, 400);
        assert_eq!((body["status"].as_str(), body["errorType"].as_str()), (Some("error"), Some("bad_data")));
        let json_post = Request::post("/api/v1/query")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{\"query\":\"vector(1)\"}"))
            .unwrap();
        let (code, body) = call(&app, json_post).await;
        assert_eq!((code, body["errorType"].as_str()), (400, Some("bad_data")), "{body}");
        let (code, body) = call(&app, Request::delete("/api/v1/query").body(Body::empty()).unwrap()).await;
        assert_eq!((code, body["status"].as_str()), (405, Some("error")));
    }

    #[tokio::test]
    async fn range_queries_are_refused_in_prometheus_json_as_prometheus_agent_refuses_them() {
        let (app, _tx, _rx) = app_with(passing());
        let get =
            Request::get("/api/v1/query_range?query=vector%281%29&start=1&end=2&step=1").body(Body::empty()).unwrap();
        let post = Request::post("/api/v1/query_range")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("query=vector%281%29&start=1&end=2&step=1"))
            .unwrap();
        for req in [get, post] {
            let (code, body) = call(&app, req).await;
            assert_eq!(
                (code, body["status"].as_str(), body["errorType"].as_str()),
                (422, Some("error"), Some("execution"))
            );
            let error = body["error"].as_str().unwrap();
            assert!(error.contains("instant queries (/api/v1/query) only") && error.contains("Prometheus"), "{error}");
        }
        let (code, body) = call(&app, Request::delete("/api/v1/query_range").body(Body::empty()).unwrap()).await;
        assert_eq!((code, body["errorType"].as_str()), (405, Some("bad_data")));
    }

    #[tokio::test]
    async fn the_query_endpoint_refuses_a_time_in_the_past_over_http() {
        let (app, tx, _rx) = app_with(passing());
        let req = Request::get("/api/v1/query?query=vector%281%29&time=2020-01-01T00%3A00%3A00Z")
            .body(Body::empty())
            .unwrap();
        let (code, body) = call(&app, req).await;
        // The status was never published (0): any past time is within it, as for `vector(1)`.
        assert_eq!(code, 200, "{body}");
        tx.send_modify(|v| v.published_at_unix_ms = crate::time::unix_ms());
        let req = Request::get("/api/v1/query?query=vector%281%29&time=2020-01-01T00%3A00%3A00Z")
            .body(Body::empty())
            .unwrap();
        let (code, body) = call(&app, req).await;
        assert_eq!((code, body["errorType"].as_str()), (400, Some("bad_data")), "{body}");
        assert!(body["error"].as_str().unwrap().contains("2020-01-01T00:00:00Z is before"), "{body}");
    }
}
