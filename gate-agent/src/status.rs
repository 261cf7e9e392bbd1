//! What the control loop publishes and how every reader of it reads the canary's standing.
//!
//! This module owns the status views ([`StatusView`] and its parts: [`SubsetView`],
//! [`VerdictView`], [`EvidenceView`], [`FlaggerEventView`], [`ObservedWeight`]), the handle the
//! read-only endpoints hold on the latest one ([`LatestStatus`]), and what the integrations share
//! in reading it: the latest verdict ([`latest_verdict`]), where the canary stands
//! ([`standing`]), and whether a request is for this agent's rollout ([`check_target`],
//! [`ExpectedNamespace`], answered otherwise with a [`Refusal`]).
//!
//! The control loop publishes here; [`crate::integrations`] and [`crate::api`] read from here.
//! Nothing in this module depends on either of them.

use std::sync::Arc;

use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use crate::judge::VerdictKind;
use crate::rollout::Phase;

/// Figures for one subset over the judging window.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SubsetView {
    pub subset: String,
    pub role: String,
    pub requests_total: u64,
    pub failures_total: u64,
    pub success_rate_percent: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One verdict with its reasons, for people.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct VerdictView {
    pub at_unix_ms: u64,
    /// The verdict in words (`fail (decisive)`).
    pub verdict: String,
    pub reasons: Vec<String>,
    /// The same verdict for code that acts on it (the integrations); not in the JSON.
    #[serde(skip)]
    pub kind: Option<crate::judge::VerdictKind>,
}

/// A sequential test's evidence against its threshold (both in natural log units).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct EvidenceView {
    pub test: String,
    pub log_evidence: f64,
    pub log_threshold: f64,
}

/// An event Flagger posted to `/flagger/event`, as kept for `/status`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FlaggerEventView {
    /// Flagger's `timestamp` (ms) when it sent one, else when the agent received the event.
    pub at_unix_ms: u64,
    pub name: String,
    pub namespace: String,
    /// The Flagger canary's phase (`Progressing`, `Failed`, ...).
    pub phase: String,
    /// `Normal` or `Warning`.
    pub event_type: String,
    pub message: String,
}

/// The canary weight the proxies apply, over those whose snapshot was read on one tick. A proxy
/// whose kill order holds its configuration applies 0%, whatever the configuration says.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct ObservedWeight {
    pub min_percent: f64,
    pub max_percent: f64,
}

/// What the control loop last published.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StatusView {
    pub rollout: String,
    pub phase: String,
    /// The rollout's weight: where the agent has decided the canary should be.
    pub canary_weight_percent: f64,
    /// The weight in the durable configuration as the agent last wrote (or, at start, read) it.
    /// Below `canary_weight_percent` while a write is failing or not yet done. What the proxies
    /// apply is `observed_weight_percent`: a hand edit or a proxy that has not caught up differs.
    pub written_weight_percent: f64,
    /// The weight the proxies apply, as they reported it on the last tick; `None` when no proxy
    /// reported.
    pub observed_weight_percent: Option<ObservedWeight>,
    /// The spec's `maxWeight`: no step goes above it (only a promotion, to 100%).
    pub max_weight_percent: f64,
    /// The durable configuration's revision.
    pub revision: u64,
    /// When the control loop published this status (Unix ms); 0 before it ever did. Queries for
    /// a time before it cannot be answered: the agent keeps no history.
    pub published_at_unix_ms: u64,
    /// Index into the steps; `None` before the first step.
    pub step: Option<usize>,
    pub steps: usize,
    pub failed_checks: u32,
    pub threshold: u32,
    /// Why the rollout is where it is: the last decision that changed something.
    pub reason: String,
    pub subsets: Vec<SubsetView>,
    pub evidence: Vec<EvidenceView>,
    pub recent_verdicts: Vec<VerdictView>,
    pub proxies_reporting: usize,
    pub proxies_failing: Vec<String>,
    /// Proxies that answer but still apply an older revision than the durable one, and those of
    /// them that rejected it (behind for longer than `apply_timeout`). The step holds while any
    /// is listed.
    pub proxies_behind: Vec<crate::rollout::Behind>,
    /// Set when the agent cannot do its job (no proxy reachable, config unwritable).
    pub not_ready: Option<String>,
    pub router_errors_total: u64,
    /// Proxy restarts and counter resets seen (counters that started again from zero).
    pub proxy_resets_total: u64,
    /// Requests the route table did not send where their label said (see `canary_core::served`).
    pub misrouted_requests_total: u64,
    /// Configurations the proxies applied that gate-agent did not write (a hand edit, `kubectl
    /// edit`, a GitOps sync), each answered by the foreign-write policy.
    pub foreign_writes_total: u64,
    /// The latest of them, in words.
    pub last_foreign_write: Option<String>,
    pub phase_changes_total: u64,
    /// Set while the promotion gate holds a step whose checks pass: how much more evidence is
    /// needed and how long that takes at the current rate (see `canary_rollout::noninferiority`).
    pub insufficient_evidence: Option<crate::rollout::InsufficientEvidence>,
    /// The last events Flagger posted (oldest first, at most `FLAGGER_EVENTS_KEPT` of
    /// `integrations::flagger`). Kept by the API, not the control loop, which publishes this
    /// empty; `/status` fills it in.
    pub flagger_events: Vec<FlaggerEventView>,
}

/// The latest status the control loop published, as the read-only endpoints hold it. A router's
/// state hands it out through [`axum::extract::FromRef`], so an endpoint that only reads the
/// status needs no more of the API's state than this.
#[derive(Debug, Clone)]
pub struct LatestStatus(pub watch::Receiver<StatusView>);

impl LatestStatus {
    /// A copy of the latest status, so no lock is held while answering.
    pub fn snapshot(&self) -> StatusView {
        self.0.borrow().clone()
    }
}

/// Set on the router (`app(state).layer(Extension(ExpectedNamespace(..)))`) to require Flagger
/// payloads, Argo's `namespace=` and queries' `namespace="..."` to name this namespace.
#[derive(Debug, Clone)]
pub struct ExpectedNamespace(pub Arc<str>);

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

/// The latest verdict's reasons; none before the first verdict.
pub fn latest_reasons(view: &StatusView) -> &[String] {
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

// ---------------------------------------------------------------------------------------------
// Whether a request is for this agent
// ---------------------------------------------------------------------------------------------

/// Why a request is not answered: a status and a sentence, sent as `{"error": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub error: String,
}

impl Refusal {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Refusal {
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

/// A rollout a lookup found, with the namespace its Prometheus samples are labelled with (`None`
/// for the single-rollout agent, whose samples carry no namespace).
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub namespace: Option<String>,
    pub view: StatusView,
}

/// Where the integrations find the status a request names: the single-rollout agent
/// ([`LatestStatus`], or one [`StatusView`]) and the controller (`gate::api::GatesApi`, one
/// status per CanaryGate) both provide it, so every integration answers from a [`StatusView`]
/// the same way in both modes. `expected_namespace` is the router's [`ExpectedNamespace`], if it
/// carries one (the controller's gates have their own namespaces and ignore it).
pub trait StatusLookup {
    /// The status of the rollout `name` (in `namespace`, when the request gives one).
    fn find(
        &self,
        name: &str,
        namespace: Option<&str>,
        expected_namespace: Option<&str>,
    ) -> Result<StatusView, Refusal>;

    /// Every rollout a query's `rollout` and `namespace` matchers select (a missing matcher
    /// selects any), in a stable order.
    fn select(
        &self,
        name: Option<&str>,
        namespace: Option<&str>,
        expected_namespace: Option<&str>,
    ) -> Result<Vec<Found>, Refusal>;

    /// When the newest status was published (Unix ms), for a query's `time=`.
    fn published_at_unix_ms(&self) -> u64;
}

/// One status is one rollout: the single-rollout agent's answers, checked by [`check_target`].
impl StatusLookup for StatusView {
    fn find(
        &self,
        name: &str,
        namespace: Option<&str>,
        expected_namespace: Option<&str>,
    ) -> Result<StatusView, Refusal> {
        check_target(self, name, namespace, expected_namespace)?;
        Ok(self.clone())
    }

    fn select(
        &self,
        name: Option<&str>,
        namespace: Option<&str>,
        expected_namespace: Option<&str>,
    ) -> Result<Vec<Found>, Refusal> {
        if let Standing::Unavailable(why) = standing(self) {
            return Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, why));
        }
        if let Some(r) = name
            && r != self.rollout
        {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("this agent serves rollout {:?}, not {r:?}", self.rollout),
            ));
        }
        if let (Some(want), Some(got)) = (expected_namespace, namespace)
            && want != got
        {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("this agent serves namespace {want:?}, not {got:?}"),
            ));
        }
        Ok(vec![Found { namespace: None, view: self.clone() }])
    }

    fn published_at_unix_ms(&self) -> u64 {
        self.published_at_unix_ms
    }
}

/// The single-rollout agent's router: its latest status.
impl StatusLookup for LatestStatus {
    fn find(
        &self,
        name: &str,
        namespace: Option<&str>,
        expected_namespace: Option<&str>,
    ) -> Result<StatusView, Refusal> {
        self.0.borrow().find(name, namespace, expected_namespace)
    }

    fn select(
        &self,
        name: Option<&str>,
        namespace: Option<&str>,
        expected_namespace: Option<&str>,
    ) -> Result<Vec<Found>, Refusal> {
        self.0.borrow().select(name, namespace, expected_namespace)
    }

    fn published_at_unix_ms(&self) -> u64 {
        self.0.borrow().published_at_unix_ms
    }
}

/// The namespace the router requires, when it carries an [`ExpectedNamespace`] extension.
pub fn expected(ns: Option<&Extension<ExpectedNamespace>>) -> Option<&str> {
    ns.map(|Extension(ExpectedNamespace(ns))| &**ns)
}

/// The fallback of the integrations' routes: a JSON refusal naming the method and path.
pub async fn not_allowed(method: Method, uri: Uri) -> Refusal {
    Refusal::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} {} is not supported", uri.path()))
}

/// Status views for tests: a rollout whose latest verdict passed, and variations of it.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) fn subset(name: &str, role: &str, rate: Option<f64>) -> SubsetView {
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

    pub(crate) fn verdict(kind: VerdictKind, reasons: &[&str]) -> VerdictView {
        VerdictView {
            at_unix_ms: 1,
            verdict: kind.to_string(),
            reasons: reasons.iter().map(|r| (*r).to_string()).collect(),
            kind: Some(kind),
        }
    }

    pub(crate) const VERDICT_KINDS: [VerdictKind; 4] = [
        VerdictKind::Pass,
        VerdictKind::Fail { decisive: false },
        VerdictKind::Fail { decisive: true },
        VerdictKind::NotEnoughData,
    ];

    /// A rollout on its first step whose latest verdict passed.
    pub(crate) fn passing() -> StatusView {
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

    pub(crate) fn with(f: impl FnOnce(&mut StatusView)) -> StatusView {
        let mut v = passing();
        f(&mut v);
        v
    }

    pub(crate) fn decisive() -> StatusView {
        with(|v| {
            v.recent_verdicts.push(verdict(VerdictKind::Fail { decisive: true }, &["errors: evidence ln 7 >= ln 6"]));
        })
    }

    pub(crate) fn rolled_back() -> StatusView {
        with(|v| {
            v.phase = "rolled_back".into();
            v.canary_weight_percent = 0.0;
            v.reason = "decisive breach: errors".into();
            v.recent_verdicts.push(verdict(VerdictKind::NotEnoughData, &["no canary requests"]));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn the_latest_verdict_is_the_last_one_published() {
        for kind in VERDICT_KINDS {
            let v = with(|v| v.recent_verdicts.push(verdict(kind, &[])));
            assert_eq!(latest_verdict(&v), Some(kind));
        }
        assert_eq!(latest_verdict(&StatusView::default()), None);
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
}
