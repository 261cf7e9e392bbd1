//! Gates for the orchestrators platform teams already run, answered from the in-proxy verdict:
//! Flagger's webhooks, a Prometheus-shaped query endpoint for Flagger's `prometheus` metric
//! provider, and a JSON verdict for Argo Rollouts' `web` analysis provider.
//!
//! Every answer is a pure function of the latest [`StatusView`] the control loop published
//! ([`answer_hook`], [`prometheus_answer`], [`argo_answer`]); the handlers only parse requests and
//! call them. Nothing here decides or acts: Flagger's rollback hook *asks*, and its answer reports
//! what the agent has already decided. The one piece of state is a bounded log of the events
//! Flagger posts ([`FlaggerEvents`]), shown in `/status`. It lives in the API rather than the
//! control loop because events never feed a decision; the loop's only inputs stay the proxies and
//! the operator.
//!
//! Endpoints (no token: they only read, and Flagger's webhooks cannot send one):
//! * `POST /flagger/confirm-rollout`, `/flagger/confirm-traffic-increase`,
//!   `/flagger/confirm-promotion`, `/flagger/rollback`: Flagger's `CanaryWebhookPayload`, answered
//!   by the table below with `{"rollout","hook","decision","phase","verdict","reason"}`;
//!   `POST /flagger/event`: logged (tracing) and kept for `/status`.
//! * `GET` or form-encoded `POST /api/v1/query?query=Q`, Q one of `vector(1)`,
//!   `canary_gate_success_rate{subset="canary"}` (percent), `canary_gate_latency_p50_ms{...}`,
//!   `canary_gate_latency_p99_ms{...}` (ms; `subset` is `canary`, `stable` or a subset name;
//!   optional `rollout="..."` and `namespace="..."` matchers) and `canary_gate_verdict` (1 pass,
//!   0 fail or rolled back, no sample without enough data); see [`parse_query`]. Answers are
//!   Prometheus's instant-vector JSON; anything else is 400 `bad_data`. `time=` (RFC 3339 or Unix
//!   seconds) is honoured as far as the agent can: it holds only its latest status, so a time
//!   before that status was published, or after now, is 400 `bad_data` (see [`eval_time`]).
//! * `/api/v1/query_range`: 422 `execution`, as Prometheus in agent mode answers it: the agent
//!   has no history to give a range of; the Prometheus that scrapes its `/metrics` has.
//! * `GET /v1/verdict?rollout=NAME[&namespace=NS]`: [`ArgoVerdict`] as JSON, errors as
//!   `{"error": ...}` with a 4xx.
//!
//! The agent serves one rollout (`StatusView::rollout`): a request must name it (Flagger's
//! `name`, Argo's `rollout=`), or it is answered 404 with a JSON error. A namespace is recorded,
//! and checked only when the router carries an [`ExpectedNamespace`] extension.
//!
//! How the latest status reads, most serious first ([`standing`]), and what each endpoint says:
//!
//! | standing | confirm-rollout | confirm-traffic-increase, confirm-promotion | rollback | Argo `result` |
//! |---|---|---|---|---|
//! | nothing published yet, or a standby replica | 503 | 503 | 503 | 503 (JSON error) |
//! | breach: rolled back, or the latest verdict is a decisive failure | 403 | 403 | **200** | `fail` |
//! | paused by an operator | 409 | 409 | 404 | `inconclusive` |
//! | not ready (no proxy answers, or the weight cannot be written) | 412 | 412 | 404 | `inconclusive` |
//! | the latest verdict failed a check (not decisive) | 403 | 403 | 404 | `inconclusive` |
//! | insufficient evidence: the checks pass, the promotion gate holds | 200 | 412 | 404 | `inconclusive` |
//! | not enough data, or no verdict yet | 200 | 412 | 404 | `inconclusive` |
//! | the latest verdict passed | 200 | 200 | 404 | `pass` |
//!
//! Flagger passes a hook on any status up to 202, so "no rollback" is 404, never 204. A failed
//! check that is not decisive does not roll back: the agent counts it toward `threshold` and
//! rolls back itself when it gets there, which then reads as a breach.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{ApiState, EvidenceView, FlaggerEventView, StatusView, SubsetView};
use crate::judge::VerdictKind;
use crate::rollout::Phase;
use crate::time::unix_ms;

/// How many of Flagger's events `/status` keeps.
pub const FLAGGER_EVENTS_KEPT: usize = 20;
/// Longest event message kept (bytes); Flagger's are a sentence.
const EVENT_MESSAGE_MAX: usize = 1024;

/// Set on the router (`app(state).layer(Extension(ExpectedNamespace(..)))`) to require Flagger
/// payloads, Argo's `namespace=` and queries' `namespace="..."` to name this namespace.
#[derive(Debug, Clone)]
pub struct ExpectedNamespace(pub Arc<str>);

/// The last [`FLAGGER_EVENTS_KEPT`] events Flagger posted, shared by the handlers and `/status`.
#[derive(Debug, Clone, Default)]
pub struct FlaggerEvents(Arc<Mutex<VecDeque<FlaggerEventView>>>);

impl FlaggerEvents {
    pub fn record(&self, event: FlaggerEventView) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        kept.push_back(event);
        while kept.len() > FLAGGER_EVENTS_KEPT {
            kept.pop_front();
        }
    }

    /// Oldest first.
    pub fn recent(&self) -> Vec<FlaggerEventView> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }
}

/// The routes; `api::app` merges them and provides the [`FlaggerEvents`] extension.
pub fn routes() -> Router<ApiState> {
    let mut router = Router::new();
    for hook in Hook::ALL {
        router =
            router.route(hook.path(), post(move |s, ns, body| flagger_hook(s, ns, body, hook)).fallback(not_allowed));
    }
    router
        .route("/flagger/event", post(flagger_event).fallback(not_allowed))
        .route("/api/v1/query", get(prometheus_get).post(prometheus_post).fallback(prometheus_not_allowed))
        .route("/api/v1/query_range", get(range_refused).post(range_refused).fallback(prometheus_not_allowed))
        .route("/v1/verdict", get(argo).fallback(not_allowed))
}

// ---------------------------------------------------------------------------------------------
// What the latest status says
// ---------------------------------------------------------------------------------------------

/// Where the canary stands according to the latest status, most serious first. Each carries a
/// sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Nothing published yet, or a standby replica: this agent knows nothing about the canary.
    Unavailable(String),
    /// Rolled back, or the latest verdict is a decisive failure.
    Breach(String),
    /// An operator paused the rollout at the agent.
    Paused(String),
    /// No proxy answers, or the weight cannot be written.
    NotReady(String),
    /// The latest verdict failed a check that is not decisive.
    Failing(String),
    /// The checks pass (or lack data) but the promotion gate holds: the data does not yet show
    /// the canary within the promotion margins.
    InsufficientEvidence(String),
    /// Not enough data, or no verdict yet.
    NoData(String),
    Passing(String),
}

impl Standing {
    pub fn sentence(&self) -> &str {
        match self {
            Standing::Unavailable(s)
            | Standing::Breach(s)
            | Standing::Paused(s)
            | Standing::NotReady(s)
            | Standing::Failing(s)
            | Standing::InsufficientEvidence(s)
            | Standing::NoData(s)
            | Standing::Passing(s) => s,
        }
    }
}

/// The latest verdict's kind: the last entry of `recent_verdicts` is always the latest verdict
/// (the control loop drops only repeats of it).
pub fn latest_verdict(view: &StatusView) -> Option<VerdictKind> {
    view.recent_verdicts.last()?.kind
}

fn latest_reasons(view: &StatusView) -> &[String] {
    view.recent_verdicts.last().map_or(&[], |v| v.reasons.as_slice())
}

pub fn standing(view: &StatusView) -> Standing {
    if view.rollout.is_empty() {
        return Standing::Unavailable("the agent has not published a status yet".into());
    }
    if view.phase == "standby" {
        let why = view.not_ready.as_deref().unwrap_or("another replica leads");
        return Standing::Unavailable(format!("this replica is a standby ({why}); ask the leader"));
    }
    let latest = latest_verdict(view);
    if view.phase == Phase::RolledBack.as_str() {
        return Standing::Breach(format!("rolled back: {}", view.reason));
    }
    if latest == Some(VerdictKind::Fail { decisive: true }) {
        return Standing::Breach("the latest verdict is a decisive failure".into());
    }
    if view.phase == Phase::Paused.as_str() {
        return Standing::Paused(format!("paused by an operator: {}", view.reason));
    }
    if let Some(why) = &view.not_ready {
        return Standing::NotReady(format!("the agent is not ready: {why}"));
    }
    if let Some(held) = &view.insufficient_evidence
        && latest != Some(VerdictKind::Fail { decisive: false })
    {
        return Standing::InsufficientEvidence(held.text.clone());
    }
    match latest {
        Some(VerdictKind::Pass) => Standing::Passing("the latest verdict passed".into()),
        Some(VerdictKind::Fail { .. }) => Standing::Failing(format!(
            "the latest verdict failed a check ({} of {} failed checks so far)",
            view.failed_checks, view.threshold
        )),
        Some(VerdictKind::NotEnoughData) => Standing::NoData("not enough data to judge the canary yet".into()),
        None => Standing::NoData("no verdict yet".into()),
    }
}

/// The standing's sentence followed by the latest verdict's reasons.
fn explain(standing: &Standing, view: &StatusView) -> String {
    let reasons = latest_reasons(view);
    if reasons.is_empty() || matches!(standing, Standing::Unavailable(_)) {
        standing.sentence().to_string()
    } else {
        format!("{}: {}", standing.sentence(), reasons.join("; "))
    }
}

/// `canary_gate_verdict`: 1 when the latest verdict passed, 0 when it failed or the rollout is
/// rolled back, no sample while there is not enough data.
pub fn verdict_value(view: &StatusView) -> Option<f64> {
    if view.phase == Phase::RolledBack.as_str() {
        return Some(0.0);
    }
    match latest_verdict(view)? {
        VerdictKind::Pass => Some(1.0),
        VerdictKind::Fail { .. } => Some(0.0),
        VerdictKind::NotEnoughData => None,
    }
}

/// Why a request is not answered: a status and a sentence, sent as `{"error": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub error: String,
}

impl Refusal {
    fn new(status: StatusCode, error: impl Into<String>) -> Refusal {
        Refusal { status, error: error.into() }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.error }))).into_response()
    }
}

/// Whether a request naming `name` (and `namespace`, when it gives one) is for this agent's
/// rollout.
pub fn check_target(
    view: &StatusView,
    name: &str,
    namespace: Option<&str>,
    expected_namespace: Option<&str>,
) -> Result<(), Refusal> {
    if view.rollout.is_empty() {
        return Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "the agent has not published a status yet"));
    }
    if name.is_empty() {
        return Err(Refusal::new(StatusCode::BAD_REQUEST, "the request names no rollout"));
    }
    if name != view.rollout {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("this agent serves rollout {:?}, not {name:?}", view.rollout),
        ));
    }
    if let (Some(want), Some(got)) = (expected_namespace, namespace)
        && want != got
    {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("this agent serves rollout {:?} in namespace {want:?}, not in {got:?}", view.rollout),
        ));
    }
    Ok(())
}

fn expected(ns: Option<&Extension<ExpectedNamespace>>) -> Option<&str> {
    ns.map(|Extension(ExpectedNamespace(ns))| &**ns)
}

async fn not_allowed(method: Method, uri: Uri) -> Refusal {
    Refusal::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} {} is not supported", uri.path()))
}

// ---------------------------------------------------------------------------------------------
// Flagger webhooks
// ---------------------------------------------------------------------------------------------

/// A Flagger webhook type this agent answers, each at its own path (Flagger's payload does not
/// say which hook it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    ConfirmRollout,
    ConfirmTrafficIncrease,
    ConfirmPromotion,
    Rollback,
}

impl Hook {
    pub const ALL: [Hook; 4] =
        [Hook::ConfirmRollout, Hook::ConfirmTrafficIncrease, Hook::ConfirmPromotion, Hook::Rollback];

    /// Flagger's name for the webhook type.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::ConfirmRollout => "confirm-rollout",
            Hook::ConfirmTrafficIncrease => "confirm-traffic-increase",
            Hook::ConfirmPromotion => "confirm-promotion",
            Hook::Rollback => "rollback",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Hook::ConfirmRollout => "/flagger/confirm-rollout",
            Hook::ConfirmTrafficIncrease => "/flagger/confirm-traffic-increase",
            Hook::ConfirmPromotion => "/flagger/confirm-promotion",
            Hook::Rollback => "/flagger/rollback",
        }
    }
}

/// What Flagger posts to every webhook (`CanaryWebhookPayload`). Unknown fields are ignored, so
/// a newer Flagger still gets answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FlaggerPayload {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub checksum: String,
    /// The hook's `metadata`; for events also `eventMessage`, `eventType` and `timestamp` (ms).
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

pub fn parse_payload(body: &[u8]) -> Result<FlaggerPayload, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!(
                "not a Flagger webhook payload ({{\"name\",\"namespace\",\"phase\",\"checksum\",\"metadata\"}}): {e}"
            ),
        )
    })
}

/// A hook's answer. The status is what Flagger acts on; the body says why, for its event log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HookAnswer {
    #[serde(skip)]
    pub status: StatusCode,
    pub rollout: String,
    pub hook: &'static str,
    /// `allow` or `refuse` for the confirm hooks; `roll_back` or `hold` for the rollback hook.
    pub decision: &'static str,
    pub phase: String,
    /// The latest verdict (`pass`, `fail`, `fail (decisive)`, `not enough data`).
    pub verdict: Option<String>,
    pub reason: String,
}

/// How `hook` is answered for the latest status (see the module's table).
pub fn answer_hook(hook: Hook, view: &StatusView) -> HookAnswer {
    let standing = standing(view);
    let status = match (hook, &standing) {
        (_, Standing::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        (Hook::Rollback, Standing::Breach(_)) => StatusCode::OK,
        (Hook::Rollback, _) => StatusCode::NOT_FOUND,
        (_, Standing::Breach(_) | Standing::Failing(_)) => StatusCode::FORBIDDEN,
        (_, Standing::Paused(_)) => StatusCode::CONFLICT,
        (_, Standing::NotReady(_)) => StatusCode::PRECONDITION_FAILED,
        (Hook::ConfirmRollout, Standing::NoData(_) | Standing::InsufficientEvidence(_)) | (_, Standing::Passing(_)) => {
            StatusCode::OK
        }
        (_, Standing::NoData(_) | Standing::InsufficientEvidence(_)) => StatusCode::PRECONDITION_FAILED,
    };
    let decision = match (hook, status == StatusCode::OK) {
        (Hook::Rollback, true) => "roll_back",
        (Hook::Rollback, false) => "hold",
        (_, true) => "allow",
        (_, false) => "refuse",
    };
    HookAnswer {
        status,
        rollout: view.rollout.clone(),
        hook: hook.as_str(),
        decision,
        phase: view.phase.clone(),
        verdict: view.recent_verdicts.last().map(|v| v.verdict.clone()),
        reason: explain(&standing, view),
    }
}

async fn flagger_hook(
    State(s): State<ApiState>,
    ns: Option<Extension<ExpectedNamespace>>,
    body: Bytes,
    hook: Hook,
) -> Response {
    let view = s.status.borrow().clone();
    let answered = parse_payload(&body).and_then(|p| {
        check_target(&view, &p.name, Some(&p.namespace), expected(ns.as_ref()))?;
        Ok((answer_hook(hook, &view), p))
    });
    match answered {
        Ok((answer, payload)) => {
            let noteworthy = (hook == Hook::Rollback) == (answer.status == StatusCode::OK);
            if noteworthy {
                tracing::info!(
                    rollout = %answer.rollout, namespace = %payload.namespace, flagger_phase = %payload.phase,
                    hook = answer.hook, status = answer.status.as_u16(), "flagger {}: {}", answer.decision, answer.reason
                );
            } else {
                tracing::debug!(rollout = %answer.rollout, hook = answer.hook, "flagger {}", answer.decision);
            }
            (answer.status, Json(answer)).into_response()
        }
        Err(refused) => {
            tracing::warn!(hook = hook.as_str(), status = refused.status.as_u16(), "flagger: {}", refused.error);
            refused.into_response()
        }
    }
}

/// The event as `/status` keeps it: Flagger's timestamp when it sent one, fields clipped.
pub fn event_of(p: &FlaggerPayload, received_unix_ms: u64) -> FlaggerEventView {
    let meta = |key: &str| p.metadata.as_ref().and_then(|m| m.get(key)).map_or("", String::as_str);
    FlaggerEventView {
        at_unix_ms: meta("timestamp").parse().unwrap_or(received_unix_ms),
        name: clip(&p.name, 253),
        namespace: clip(&p.namespace, 253),
        phase: clip(&p.phase, 64),
        event_type: clip(meta("eventType"), 64),
        message: clip(meta("eventMessage"), EVENT_MESSAGE_MAX),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary, control characters (a newline that
/// would forge a log line) made spaces: anyone who reaches the API can post an event.
fn clip(s: &str, max: usize) -> String {
    s.char_indices()
        .take_while(|(i, c)| i + c.len_utf8() <= max)
        .map(|(_, c)| if c.is_control() { ' ' } else { c })
        .collect()
}

async fn flagger_event(
    State(s): State<ApiState>,
    ns: Option<Extension<ExpectedNamespace>>,
    Extension(events): Extension<FlaggerEvents>,
    body: Bytes,
) -> Response {
    let view = s.status.borrow().clone();
    let payload = match parse_payload(&body)
        .and_then(|p| check_target(&view, &p.name, Some(&p.namespace), expected(ns.as_ref())).map(|()| p))
    {
        Ok(p) => p,
        Err(refused) => {
            tracing::warn!(hook = "event", status = refused.status.as_u16(), "flagger: {}", refused.error);
            return refused.into_response();
        }
    };
    let event = event_of(&payload, unix_ms());
    if event.event_type.eq_ignore_ascii_case("warning") {
        tracing::warn!(rollout = %event.name, namespace = %event.namespace, flagger_phase = %event.phase, "flagger event: {}", event.message);
    } else {
        tracing::info!(rollout = %event.name, namespace = %event.namespace, flagger_phase = %event.phase, "flagger event: {}", event.message);
    }
    events.record(event.clone());
    (StatusCode::OK, Json(json!({ "recorded": event }))).into_response()
}

// ---------------------------------------------------------------------------------------------
// Prometheus-shaped queries for Flagger's `prometheus` provider
// ---------------------------------------------------------------------------------------------

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
    /// 1 pass, 0 fail or rolled back; no sample while there is not enough data.
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

/// The instant vector `query` selects from the latest status. No value (no requests in the
/// window, not enough data) is an empty vector, as for an absent series.
pub fn evaluate(
    query: &PromQuery,
    view: &StatusView,
    expected_namespace: Option<&str>,
) -> Result<Vec<Sample>, PromError> {
    let PromQuery::Select { series, subset, rollout, namespace } = query else {
        return Ok(vec![Sample { labels: BTreeMap::new(), value: 1.0 }]);
    };
    if let Standing::Unavailable(why) = standing(view) {
        return Err(PromError { status: StatusCode::SERVICE_UNAVAILABLE, error_type: "unavailable", error: why });
    }
    if let Some(r) = rollout.as_deref()
        && r != view.rollout
    {
        return Err(PromError::bad_data(format!("this agent serves rollout {:?}, not {r:?}", view.rollout)));
    }
    if let (Some(want), Some(got)) = (expected_namespace, namespace.as_deref())
        && want != got
    {
        return Err(PromError::bad_data(format!("this agent serves namespace {want:?}, not {got:?}")));
    }
    let mut labels = BTreeMap::from([("__name__", series.name().to_string()), ("rollout", view.rollout.clone())]);
    let value = match subset {
        None => verdict_value(view),
        Some(wanted) => {
            let Some(s) = view.subsets.iter().find(|s| &s.role == wanted || &s.subset == wanted) else {
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
    Ok(value.map(|value| Sample { labels, value }).into_iter().collect())
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

/// Decodes `application/x-www-form-urlencoded` text (a URL's query or a POST body).
pub fn parse_form(text: &str) -> Result<Vec<(String, String)>, String> {
    fn hex(b: Option<u8>) -> Option<u8> {
        char::from(b?).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    fn decode(s: &str) -> Result<String, String> {
        let mut bytes = Vec::with_capacity(s.len());
        let mut it = s.bytes();
        while let Some(b) = it.next() {
            match b {
                b'+' => bytes.push(b' '),
                b'%' => match (hex(it.next()), hex(it.next())) {
                    (Some(hi), Some(lo)) => bytes.push(hi << 4 | lo),
                    _ => return Err(format!("bad percent-encoding in {s:?}")),
                },
                b => bytes.push(b),
            }
        }
        String::from_utf8(bytes).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
    }
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
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
pub fn eval_time(params: &[(String, String)], view: &StatusView, now_unix_ms: u64) -> Result<u64, PromError> {
    let mut times = params.iter().filter(|(k, _)| k == "time").map(|(_, t)| t);
    let text = match (times.next(), times.next()) {
        (None, _) => return Ok(now_unix_ms),
        (Some(t), None) => t,
        (Some(_), Some(_)) => return Err(PromError::bad_data("invalid parameter \"time\": given more than once")),
    };
    let at = parse_time(text).map_err(PromError::bad_data)?;
    let now = i64::try_from(now_unix_ms).unwrap_or(i64::MAX);
    let published = i64::try_from(view.published_at_unix_ms).unwrap_or(i64::MAX).min(now);
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

/// The answer to `/api/v1/query` with these (decoded) parameters: `query`, evaluated at `time`
/// (see [`eval_time`]) and stamped with it, as Prometheus stamps an instant vector. `timeout`
/// is ignored: the answer is read from memory.
pub fn prometheus_answer(
    params: &[(String, String)],
    view: &StatusView,
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
    let at = eval_time(params, view, now_unix_ms)?;
    Ok(vector_json(&evaluate(&parsed, view, expected_namespace)?, at))
}

fn prometheus_reply(
    s: &ApiState,
    ns: Option<&Extension<ExpectedNamespace>>,
    params: Result<Vec<(String, String)>, String>,
) -> Response {
    let answer = params.map_err(PromError::bad_data).and_then(|params| {
        let view = s.status.borrow().clone();
        prometheus_answer(&params, &view, expected(ns), unix_ms())
    });
    match answer {
        Ok(body) => Json(body).into_response(),
        Err(e) => {
            tracing::debug!(status = e.status.as_u16(), "query refused: {}", e.error);
            e.into_response()
        }
    }
}

async fn prometheus_get(State(s): State<ApiState>, ns: Option<Extension<ExpectedNamespace>>, uri: Uri) -> Response {
    prometheus_reply(&s, ns.as_ref(), parse_form(uri.query().unwrap_or_default()))
}

/// As Prometheus: parameters in the URL and, when form-encoded, in the body.
async fn prometheus_post(
    State(s): State<ApiState>,
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

// ---------------------------------------------------------------------------------------------
// Argo Rollouts' `web` provider
// ---------------------------------------------------------------------------------------------

/// `GET /v1/verdict?rollout=NAME`: for `successCondition: result.result == "pass"` and
/// `failureCondition: result.result == "fail"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArgoVerdict {
    pub rollout: String,
    /// `pass`, `fail` (breach: the agent has rolled the canary back or is doing so) or
    /// `inconclusive` (not enough data, insufficient evidence for promotion, a failed check the
    /// agent is still counting, paused, not ready).
    pub result: &'static str,
    pub phase: String,
    pub canary_weight_percent: f64,
    /// The latest verdict as `/status` words it.
    pub verdict: Option<String>,
    /// Why: the standing first, then the latest verdict's reasons.
    pub reasons: Vec<String>,
    pub figures: Figures,
}

/// The numbers behind an [`ArgoVerdict`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    pub stable: Option<SubsetView>,
    pub canary: Option<SubsetView>,
    pub failed_checks: u32,
    pub threshold: u32,
    pub max_weight_percent: f64,
    pub proxies_reporting: usize,
    pub evidence: Vec<EvidenceView>,
}

pub fn argo_verdict(view: &StatusView) -> Result<ArgoVerdict, Refusal> {
    let standing = standing(view);
    let result = match &standing {
        Standing::Unavailable(why) => return Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, why.clone())),
        Standing::Breach(_) => "fail",
        Standing::Passing(_) => "pass",
        Standing::Paused(_)
        | Standing::NotReady(_)
        | Standing::Failing(_)
        | Standing::InsufficientEvidence(_)
        | Standing::NoData(_) => "inconclusive",
    };
    let role = |r: &str| view.subsets.iter().find(|s| s.role == r).cloned();
    let mut reasons = vec![standing.sentence().to_string()];
    reasons.extend(latest_reasons(view).iter().cloned());
    Ok(ArgoVerdict {
        rollout: view.rollout.clone(),
        result,
        phase: view.phase.clone(),
        canary_weight_percent: view.canary_weight_percent,
        verdict: view.recent_verdicts.last().map(|v| v.verdict.clone()),
        reasons,
        figures: Figures {
            stable: role("stable"),
            canary: role("canary"),
            failed_checks: view.failed_checks,
            threshold: view.threshold,
            max_weight_percent: view.max_weight_percent,
            proxies_reporting: view.proxies_reporting,
            evidence: view.evidence.clone(),
        },
    })
}

/// The answer to `/v1/verdict` with this raw query string. Parameters: `rollout` (required, the
/// agent's rollout) and `namespace` (optional; checked against [`ExpectedNamespace`] if set).
pub fn argo_answer(
    query: Option<&str>,
    view: &StatusView,
    expected_namespace: Option<&str>,
) -> Result<ArgoVerdict, Refusal> {
    let bad = |e: String| Refusal::new(StatusCode::BAD_REQUEST, e);
    let (mut rollout, mut namespace) = (None, None);
    for (key, value) in parse_form(query.unwrap_or_default()).map_err(bad)? {
        let slot = match key.as_str() {
            "rollout" => &mut rollout,
            "namespace" => &mut namespace,
            other => return Err(bad(format!("unknown parameter {other:?}; accepted: rollout (required), namespace"))),
        };
        if slot.replace(value).is_some() {
            return Err(bad(format!("parameter {key:?} is given more than once")));
        }
    }
    let rollout = rollout.ok_or_else(|| bad("missing parameter: /v1/verdict?rollout=NAME".into()))?;
    check_target(view, &rollout, namespace.as_deref(), expected_namespace)?;
    argo_verdict(view)
}

async fn argo(State(s): State<ApiState>, ns: Option<Extension<ExpectedNamespace>>, uri: Uri) -> Response {
    let view = s.status.borrow().clone();
    match argo_answer(uri.query(), &view, expected(ns.as_ref())) {
        Ok(verdict) => Json(verdict).into_response(),
        Err(refused) => refused.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CommandRequest, VerdictView, app};
    use axum::body::Body;
    use axum::http::Request;
    use tokio::sync::{mpsc, watch};
    use tower::ServiceExt;

    fn subset(name: &str, role: &str, rate: Option<f64>) -> SubsetView {
        SubsetView {
            subset: name.into(),
            role: role.into(),
            requests_total: 1000,
            failures_total: 3,
            success_rate_percent: rate,
            p50_ms: rate.map(|_| 1.5),
            p99_ms: rate.map(|_| 12.25),
        }
    }

    fn verdict(kind: VerdictKind, reasons: &[&str]) -> VerdictView {
        VerdictView {
            at_unix_ms: 1,
            verdict: kind.to_string(),
            reasons: reasons.iter().map(|r| (*r).to_string()).collect(),
            kind: Some(kind),
        }
    }

    const VERDICT_KINDS: [VerdictKind; 4] = [
        VerdictKind::Pass,
        VerdictKind::Fail { decisive: false },
        VerdictKind::Fail { decisive: true },
        VerdictKind::NotEnoughData,
    ];

    /// A rollout on its first step whose latest verdict passed.
    fn passing() -> StatusView {
        StatusView {
            rollout: "demo".into(),
            phase: "progressing".into(),
            canary_weight_percent: 10.0,
            max_weight_percent: 60.0,
            step: Some(0),
            steps: 3,
            threshold: 3,
            subsets: vec![subset("v1", "stable", Some(100.0)), subset("v2", "canary", Some(99.5))],
            evidence: vec![EvidenceView {
                test: "errors: canary vs stable".into(),
                log_evidence: 0.5,
                log_threshold: 6.0,
            }],
            recent_verdicts: vec![verdict(VerdictKind::Pass, &["request-success-rate 99.50% >= 99%"])],
            proxies_reporting: 1,
            ..StatusView::default()
        }
    }

    fn with(f: impl FnOnce(&mut StatusView)) -> StatusView {
        let mut v = passing();
        f(&mut v);
        v
    }

    fn decisive() -> StatusView {
        with(|v| {
            v.recent_verdicts.push(verdict(VerdictKind::Fail { decisive: true }, &["errors: evidence ln 7 >= ln 6"]));
        })
    }

    fn rolled_back() -> StatusView {
        with(|v| {
            v.phase = "rolled_back".into();
            v.canary_weight_percent = 0.0;
            v.reason = "decisive breach: errors".into();
            v.recent_verdicts.push(verdict(VerdictKind::NotEnoughData, &["no canary requests"]));
        })
    }

    fn codes(view: &StatusView) -> [u16; 4] {
        Hook::ALL.map(|h| answer_hook(h, view).status.as_u16())
    }

    #[test]
    fn the_latest_verdict_is_the_last_one_published() {
        for kind in VERDICT_KINDS {
            let v = with(|v| v.recent_verdicts.push(verdict(kind, &[])));
            assert_eq!(latest_verdict(&v), Some(kind));
        }
        assert_eq!(latest_verdict(&StatusView::default()), None);
    }

    #[test]
    fn the_rollback_hook_says_200_on_a_breach_and_404_otherwise_never_204() {
        // [confirm-rollout, confirm-traffic-increase, confirm-promotion, rollback]
        assert_eq!(codes(&passing()), [200, 200, 200, 404]);
        assert_eq!(codes(&decisive()), [403, 403, 403, 200]);
        assert_eq!(codes(&rolled_back()), [403, 403, 403, 200], "rolled back, even once the verdicts say no data");
        for view in [passing(), decisive(), rolled_back()] {
            assert!(codes(&view).iter().all(|c| *c != 204 && (*c == 200 || *c >= 400)), "{view:?}");
        }
        let a = answer_hook(Hook::Rollback, &rolled_back());
        assert_eq!((a.decision, a.phase.as_str()), ("roll_back", "rolled_back"));
        assert!(a.reason.contains("decisive breach: errors"), "{}", a.reason);
    }

    #[test]
    fn confirm_hooks_refuse_with_a_status_per_cause() {
        let failing = with(|v| {
            v.failed_checks = 1;
            v.recent_verdicts.push(verdict(VerdictKind::Fail { decisive: false }, &["p99 1200 ms > 1000 ms"]));
        });
        assert_eq!(codes(&failing), [403, 403, 403, 404], "a failed check the agent is still counting");
        let a = answer_hook(Hook::ConfirmPromotion, &failing);
        assert_eq!(a.decision, "refuse");
        assert!(a.reason.contains("1 of 3 failed checks") && a.reason.contains("p99 1200 ms"), "{}", a.reason);

        let paused = with(|v| v.phase = "paused".into());
        assert_eq!(codes(&paused), [409, 409, 409, 404]);
        let not_ready = with(|v| v.not_ready = Some("no proxy answered".into()));
        assert_eq!(codes(&not_ready), [412, 412, 412, 404]);
        let no_data = with(|v| v.recent_verdicts.push(verdict(VerdictKind::NotEnoughData, &["no canary requests"])));
        assert_eq!(codes(&no_data), [200, 412, 412, 404], "a rollout may start before there is data; steps wait");
        let nothing_yet = with(|v| v.recent_verdicts.clear());
        assert_eq!(codes(&nothing_yet), [200, 412, 412, 404]);
        // The checks pass, but the promotion gate holds: no step, no promotion, Argo waits.
        let held = with(|v| {
            v.recent_verdicts.push(verdict(VerdictKind::Pass, &["request-success-rate 100.00% ≥ 99%"]));
            v.insufficient_evidence = Some(crate::rollout::InsufficientEvidence {
                since_ms: 6_000,
                more_canary_requests: Some(900),
                canary_requests_per_s: Some(10.0),
                eta_s: Some(90.0),
                gives_up_in_s: None,
                tests: Vec::new(),
                text: "insufficient evidence to advance at 10%: about 900 more canary requests, about 1m30s at the current rate (10.0/s)".into(),
            });
        });
        assert_eq!(codes(&held), [200, 412, 412, 404]);
        let a = answer_hook(Hook::ConfirmPromotion, &held);
        assert!(
            a.reason.starts_with("insufficient evidence to advance at 10%: about 900 more canary requests"),
            "{}",
            a.reason
        );
        let argo = argo_verdict(&held).unwrap();
        assert_eq!(argo.result, "inconclusive");
        assert!(argo.reasons[0].contains("about 1m30s at the current rate"), "{:?}", argo.reasons);
        assert!(
            crate::api::render_metrics(&held)
                .contains("canary_gate_agent_evidence_needed_requests{rollout=\"demo\"} 900")
        );
        assert_eq!(codes(&StatusView::default()), [503; 4], "nothing published yet");
        let standby = StatusView { rollout: "demo".into(), phase: "standby".into(), ..StatusView::default() };
        assert_eq!(codes(&standby), [503; 4]);
        // A breach outranks a pause: a paused rollout still rolls back.
        let paused_breach = with(|v| {
            v.phase = "paused".into();
            v.recent_verdicts.push(verdict(VerdictKind::Fail { decisive: true }, &[]));
        });
        assert_eq!(codes(&paused_breach), [403, 403, 403, 200]);
    }

    #[test]
    fn a_request_for_another_rollout_or_namespace_is_refused() {
        let v = passing();
        assert_eq!(check_target(&v, "demo", Some("shop"), None), Ok(()));
        let other = check_target(&v, "payments", Some("shop"), None).unwrap_err();
        assert_eq!(other.status, StatusCode::NOT_FOUND);
        assert!(other.error.contains("\"demo\"") && other.error.contains("\"payments\""), "{}", other.error);
        assert_eq!(check_target(&v, "", None, None).unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(check_target(&v, "demo", Some("shop"), Some("shop")), Ok(()));
        assert_eq!(check_target(&v, "demo", Some("web"), Some("shop")).unwrap_err().status, StatusCode::NOT_FOUND);
        assert_eq!(check_target(&v, "demo", None, Some("shop")), Ok(()), "Argo may leave the namespace out");
    }

    #[test]
    fn a_flagger_event_keeps_flaggers_timestamp_and_clips_long_text() {
        let p = FlaggerPayload {
            name: "demo".into(),
            namespace: "shop".into(),
            phase: "Progressing".into(),
            metadata: Some(BTreeMap::from([
                ("eventMessage".into(), "é".repeat(600)),
                ("eventType".into(), "Normal".into()),
                ("timestamp".into(), "1700000000123".into()),
            ])),
            ..FlaggerPayload::default()
        };
        let e = event_of(&p, 5);
        assert_eq!(
            (e.at_unix_ms, e.event_type.as_str(), e.phase.as_str()),
            (1_700_000_000_123, "Normal", "Progressing")
        );
        assert_eq!(e.message.len(), EVENT_MESSAGE_MAX, "512 two-byte characters");
        assert_eq!(event_of(&FlaggerPayload::default(), 5).at_unix_ms, 5, "no timestamp: when it was received");
        let forged = FlaggerPayload { phase: "Failed\nINFO fake log line".into(), ..p.clone() };
        assert_eq!(event_of(&forged, 5).phase, "Failed INFO fake log line");
        let events = FlaggerEvents::default();
        for i in 0..30 {
            events.record(FlaggerEventView { at_unix_ms: i, ..e.clone() });
        }
        let kept = events.recent();
        assert_eq!(kept.len(), FLAGGER_EVENTS_KEPT);
        assert_eq!(kept.first().map(|e| e.at_unix_ms), Some(10), "the oldest are dropped");
    }

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

    #[test]
    fn form_encoding_is_decoded_as_prometheus_clients_send_it() {
        let form = parse_form("query=canary_gate_success_rate%7Bsubset%3D%22canary%22%7D&time=1.5&&x").unwrap();
        assert_eq!(
            form,
            vec![
                ("query".into(), "canary_gate_success_rate{subset=\"canary\"}".into()),
                ("time".into(), "1.5".into()),
                ("x".into(), String::new()),
            ]
        );
        assert_eq!(parse_form("query=vector(+1+)").unwrap(), vec![("query".into(), "vector( 1 )".into())]);
        assert!(parse_form("query=%zz").is_err());
        assert!(parse_form("query=%ff").is_err(), "not UTF-8");
    }

    #[test]
    fn argo_reads_pass_fail_or_inconclusive_with_the_figures() {
        let pass = argo_verdict(&passing()).unwrap();
        assert_eq!((pass.result, pass.canary_weight_percent), ("pass", 10.0));
        assert_eq!(pass.figures.canary.as_ref().map(|c| c.subset.as_str()), Some("v2"));
        assert_eq!(pass.reasons.first().map(String::as_str), Some("the latest verdict passed"));
        assert!(pass.reasons.iter().any(|r| r.contains("99.50%")));
        assert_eq!(argo_verdict(&decisive()).unwrap().result, "fail");
        let back = argo_verdict(&rolled_back()).unwrap();
        assert_eq!((back.result, back.phase.as_str()), ("fail", "rolled_back"));
        for inconclusive in [
            with(|v| v.phase = "paused".into()),
            with(|v| v.not_ready = Some("no proxy answered".into())),
            with(|v| v.recent_verdicts.push(verdict(VerdictKind::Fail { decisive: false }, &[]))),
            with(|v| v.recent_verdicts.push(verdict(VerdictKind::NotEnoughData, &[]))),
        ] {
            assert_eq!(argo_verdict(&inconclusive).unwrap().result, "inconclusive", "{inconclusive:?}");
        }
        let json = serde_json::to_value(&pass).unwrap();
        for key in ["rollout", "result", "phase", "canary_weight_percent", "reasons", "figures"] {
            assert!(json.get(key).is_some(), "{key} in {json}");
        }
    }

    #[test]
    fn argo_requests_are_checked_strictly() {
        let v = passing();
        assert_eq!(argo_answer(Some("rollout=demo"), &v, None).map(|a| a.result), Ok("pass"));
        assert_eq!(argo_answer(Some("rollout=demo&namespace=shop"), &v, Some("shop")).map(|a| a.result), Ok("pass"));
        for (query, status, says) in [
            (None, 400, "missing parameter"),
            (Some("rollout="), 400, "names no rollout"),
            (Some("name=demo"), 400, "unknown parameter \"name\""),
            (Some("rollout=demo&rollout=demo"), 400, "more than once"),
            (Some("rollout=payments"), 404, "not \"payments\""),
            (Some("rollout=demo&namespace=web"), 404, "namespace"),
        ] {
            let e = argo_answer(query, &v, Some("shop")).unwrap_err();
            assert_eq!(e.status.as_u16(), status, "{query:?}: {e:?}");
            assert!(e.error.contains(says), "{query:?}: {}", e.error);
        }
    }

    // ---- through the app, as the orchestrators call it -----------------------------------

    fn app_with(view: StatusView) -> (Router, watch::Sender<StatusView>, mpsc::Receiver<CommandRequest>) {
        let (tx, status) = watch::channel(view);
        let (commands, rx) = mpsc::channel(1);
        (app(ApiState { status, commands, token: Some(Arc::from("s3cret")) }), tx, rx)
    }

    async fn call(app: &Router, req: Request<Body>) -> (u16, Value) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, body)
    }

    fn flagger(path: &str, name: &str, metadata: Value) -> Request<Body> {
        // Exactly what Flagger's CallWebhook / CallEventWebhook send.
        let payload = json!({"name": name, "namespace": "shop", "phase": "Progressing", "checksum": "6d5f9c", "metadata": metadata});
        Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(payload.to_string()))
            .unwrap()
    }

    #[tokio::test]
    async fn flagger_hooks_answer_from_the_latest_status_without_a_token() {
        let (app, tx, mut commands) = app_with(passing());
        let (code, body) = call(&app, flagger("/flagger/rollback", "demo", json!({}))).await;
        assert_eq!((code, body["decision"].as_str()), (404, Some("hold")), "{body}");
        let (code, body) = call(&app, flagger("/flagger/confirm-promotion", "demo", json!({}))).await;
        assert_eq!((code, body["decision"].as_str()), (200, Some("allow")), "{body}");
        tx.send_replace(rolled_back());
        let (code, body) = call(&app, flagger("/flagger/rollback", "demo", json!({}))).await;
        assert_eq!((code, body["decision"].as_str()), (200, Some("roll_back")), "{body}");
        let (code, body) = call(&app, flagger("/flagger/confirm-promotion", "demo", json!({}))).await;
        assert_eq!(code, 403, "{body}");
        assert!(body["reason"].as_str().unwrap().contains("rolled back"), "{body}");
        assert!(commands.try_recv().is_err(), "no hook sends the control loop anything");
    }

    #[tokio::test]
    async fn flagger_requests_for_another_rollout_or_not_from_flagger_get_json_errors() {
        let (app, _tx, _rx) = app_with(passing());
        let (code, body) = call(&app, flagger("/flagger/rollback", "payments", json!({}))).await;
        assert_eq!(code, 404);
        assert!(body["error"].as_str().unwrap().contains("serves rollout \"demo\""), "{body}");
        let not_json = Request::post("/flagger/confirm-rollout").body(Body::from("hello")).unwrap();
        let (code, body) = call(&app, not_json).await;
        assert_eq!(code, 400);
        assert!(body["error"].as_str().unwrap().contains("Flagger webhook payload"), "{body}");
        let (code, body) = call(&app, Request::get("/flagger/rollback").body(Body::empty()).unwrap()).await;
        assert_eq!(code, 405, "{body}");
        // A configured namespace must match.
        let ns_app = app.layer(Extension(ExpectedNamespace(Arc::from("web"))));
        let (code, body) = call(&ns_app, flagger("/flagger/confirm-rollout", "demo", json!({}))).await;
        assert_eq!(code, 404, "{body}");
        assert!(body["error"].as_str().unwrap().contains("namespace \"web\""), "{body}");
    }

    #[tokio::test]
    async fn flagger_events_are_recorded_and_shown_in_status() {
        let (app, _tx, _rx) = app_with(passing());
        let meta = json!({"eventMessage": "Advance demo.shop canary weight 10", "eventType": "Normal", "timestamp": "1700000000000"});
        let (code, body) = call(&app, flagger("/flagger/event", "demo", meta)).await;
        assert_eq!(code, 200, "{body}");
        let (code, _) = call(&app, flagger("/flagger/event", "payments", json!({"eventMessage": "x"}))).await;
        assert_eq!(code, 404, "another rollout's events are not kept");
        let (code, status) = call(&app, Request::get("/status").body(Body::empty()).unwrap()).await;
        assert_eq!(code, 200);
        assert_eq!(
            status["flagger_events"],
            json!([{"at_unix_ms": 1_700_000_000_000_u64, "name": "demo", "namespace": "shop", "phase": "Progressing",
                    "event_type": "Normal", "message": "Advance demo.shop canary weight 10"}])
        );
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

    #[tokio::test]
    async fn the_argo_verdict_is_json_in_every_case() {
        let (app, tx, _rx) = app_with(passing());
        let get = |q: &str| Request::get(format!("/v1/verdict{q}")).body(Body::empty()).unwrap();
        let (code, body) = call(&app, get("?rollout=demo")).await;
        assert_eq!((code, body["result"].as_str()), (200, Some("pass")), "{body}");
        assert_eq!(body["figures"]["canary"]["success_rate_percent"], 99.5);
        for (q, want) in [("", 400), ("?rollout=payments", 404), ("?rollout=demo&extra=1", 400), ("?rollout=%zz", 400)]
        {
            let (code, body) = call(&app, get(q)).await;
            assert_eq!(code, want, "{q}: {body}");
            assert!(body["error"].is_string(), "{q}: {body}");
        }
        let (code, body) = call(&app, Request::post("/v1/verdict?rollout=demo").body(Body::empty()).unwrap()).await;
        assert_eq!(code, 405, "{body}");
        tx.send_replace(decisive());
        let (_, body) = call(&app, get("?rollout=demo")).await;
        assert_eq!(body["result"], "fail");
        tx.send_replace(StatusView::default());
        let (code, body) = call(&app, get("?rollout=demo")).await;
        assert_eq!(code, 503, "{body}");
    }
}
