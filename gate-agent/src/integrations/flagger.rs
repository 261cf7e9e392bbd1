//! Flagger's webhooks: `confirm-rollout`, `confirm-traffic-increase`, `confirm-promotion` and
//! `rollback`, each answered from the latest status by the table in [`crate::integrations`]
//! ([`answer_hook`]), and `/flagger/event`, whose events this module keeps ([`FlaggerEvents`])
//! for `/status`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::status::{
    ExpectedNamespace, FlaggerEventView, Refusal, Standing, StatusLookup, StatusView, expected, latest_reasons,
    not_allowed, standing,
};
use crate::time::unix_ms;

/// How many of Flagger's events `/status` keeps.
pub const FLAGGER_EVENTS_KEPT: usize = 20;
/// Longest event message kept (bytes); Flagger's are a sentence.
const EVENT_MESSAGE_MAX: usize = 1024;

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

/// The webhooks' and the event's routes, answered for the rollout `L` finds by the payload's
/// `name` and `namespace`.
pub fn routes<S, L>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    L: StatusLookup + FromRef<S> + Send + Sync + 'static,
{
    let mut router = Router::new();
    for hook in Hook::ALL {
        router = router
            .route(hook.path(), post(move |s, ns, body| flagger_hook::<L>(s, ns, body, hook)).fallback(not_allowed));
    }
    router.route("/flagger/event", post(flagger_event::<L>).fallback(not_allowed))
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

/// The payload's rollout, as `lookup` finds it by `name` and `namespace`.
pub fn find_target(
    lookup: &impl StatusLookup,
    p: &FlaggerPayload,
    expected_namespace: Option<&str>,
) -> Result<StatusView, Refusal> {
    lookup.find(&p.name, Some(&p.namespace), expected_namespace)
}

async fn flagger_hook<L: StatusLookup>(
    State(s): State<L>,
    ns: Option<Extension<ExpectedNamespace>>,
    body: Bytes,
    hook: Hook,
) -> Response {
    let answered = parse_payload(&body).and_then(|p| {
        let view = find_target(&s, &p, expected(ns.as_ref()))?;
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

async fn flagger_event<L: StatusLookup>(
    State(s): State<L>,
    ns: Option<Extension<ExpectedNamespace>>,
    Extension(events): Extension<FlaggerEvents>,
    body: Bytes,
) -> Response {
    let payload = match parse_payload(&body).and_then(|p| find_target(&s, &p, expected(ns.as_ref())).map(|_| p)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrations::through_the_app::{app_with, call};
    use crate::judge::VerdictKind;
    use crate::status::fixtures::*;
    use axum::body::Body;
    use axum::http::{Request, header};
    use serde_json::Value;

    fn codes(view: &StatusView) -> [u16; 4] {
        Hook::ALL.map(|h| answer_hook(h, view).status.as_u16())
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
        let argo = crate::integrations::argo::argo_verdict(&held).unwrap();
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
}
