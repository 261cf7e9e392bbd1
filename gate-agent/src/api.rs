//! The agent's HTTP API: health, Prometheus metrics, status, and operator actions; it composes
//! these with the integrations' routes ([`crate::integrations::routes`]) into one router.
//!
//! This module owns the API's state ([`ApiState`]), the operator's [`Command`]s and
//! [`render_metrics`]. Handlers only read the latest [`StatusView`] the control loop publishes
//! and forward actions to it over a channel; they never decide anything themselves.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::judge::VerdictKind;
use crate::status::{LatestStatus, latest_verdict};
// The views live in `status`, which the control loop and the integrations share; they stay
// reachable under their old paths here.
pub use crate::status::{EvidenceView, FlaggerEventView, ObservedWeight, StatusView, SubsetView, VerdictView};

/// An operator action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Rollback,
    Promote,
    Pause,
    Resume,
}

/// An action and where to send its outcome (a sentence for the operator, or why it was refused).
pub type CommandRequest = (Command, oneshot::Sender<Result<String, String>>);

/// Shared by all handlers.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub status: watch::Receiver<StatusView>,
    pub commands: mpsc::Sender<CommandRequest>,
    /// Required as `Authorization: Bearer <token>` on actions when set.
    pub token: Option<Arc<str>>,
}

/// The integrations read only the status.
impl FromRef<ApiState> for LatestStatus {
    fn from_ref(s: &ApiState) -> LatestStatus {
        LatestStatus(s.status.clone())
    }
}

/// The router; tests call it with `oneshot` and no socket.
pub fn app(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/rollback", post(|s, h| action(s, h, Command::Rollback)))
        .route("/promote", post(|s, h| action(s, h, Command::Promote)))
        .route("/pause", post(|s, h| action(s, h, Command::Pause)))
        .route("/resume", post(|s, h| action(s, h, Command::Resume)))
        // Flagger, Argo Rollouts and Prometheus-shaped reads: no token, nothing they do decides.
        .merge(crate::integrations::routes::<ApiState, LatestStatus>())
        .layer(Extension(crate::integrations::flagger::FlaggerEvents::default()))
        .with_state(state)
}

async fn readyz(State(s): State<ApiState>) -> Response {
    match &s.status.borrow().not_ready {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

async fn status(
    State(s): State<ApiState>,
    Extension(flagger): Extension<crate::integrations::flagger::FlaggerEvents>,
) -> Json<StatusView> {
    let mut view = s.status.borrow().clone();
    view.flagger_events = flagger.recent();
    Json(view)
}

fn authorised(token: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(token) = token else { return true };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Constant-time comparison: the token's length is not secret, its bytes are.
    presented.len() == token.len() && presented.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn action(State(s): State<ApiState>, headers: HeaderMap, command: Command) -> Response {
    if !authorised(s.token.as_deref(), &headers) {
        return (StatusCode::UNAUTHORIZED, Json(serde_json::json!({ "error": "missing or wrong bearer token" })))
            .into_response();
    }
    let (tx, rx) = oneshot::channel();
    if s.commands.send((command, tx)).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": "the control loop has stopped" })))
            .into_response();
    }
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(Ok(done))) => (StatusCode::OK, Json(serde_json::json!({ "ok": done }))).into_response(),
        Ok(Ok(Err(refused))) => (StatusCode::CONFLICT, Json(serde_json::json!({ "error": refused }))).into_response(),
        _ => (StatusCode::GATEWAY_TIMEOUT, Json(serde_json::json!({ "error": "no answer from the control loop" })))
            .into_response(),
    }
}

/// Prometheus text format, base units, one family per metric.
pub fn render_metrics(v: &StatusView) -> String {
    let mut out = String::new();
    let rollout = escape(&v.rollout);
    // Three weights, because they differ exactly when something is wrong: the agent decided a
    // step it could not write (desired above written), or the proxies apply a configuration the
    // agent did not write or have not caught up (observed apart from written).
    family(
        &mut out,
        "canary_gate_agent_canary_weight_ratio",
        "gauge",
        "Canary weight the proxies apply, 0 to 1, as read from their snapshots on the last tick: the highest (observed=\"max\") and lowest (observed=\"min\") over the proxies that answered; 0 for a proxy held by a kill order. No sample when none answered.",
    );
    if let Some(observed) = v.observed_weight_percent {
        for (label, percent) in [("max", observed.max_percent), ("min", observed.min_percent)] {
            let _ = writeln!(
                out,
                "canary_gate_agent_canary_weight_ratio{{rollout=\"{rollout}\",observed=\"{label}\"}} {}",
                percent / 100.0
            );
        }
    }
    family(
        &mut out,
        "canary_gate_agent_insufficient_evidence",
        "gauge",
        "1 while the promotion gate holds a step whose checks pass: the data does not yet show the canary within the promotion margins.",
    );
    let _ = writeln!(
        out,
        "canary_gate_agent_insufficient_evidence{{rollout=\"{rollout}\"}} {}",
        u8::from(v.insufficient_evidence.is_some())
    );
    family(
        &mut out,
        "canary_gate_agent_evidence_needed_requests",
        "gauge",
        "About how many more canary requests the promotion gate needs, while it holds; no sample when not held or not expected at the canary's current rates.",
    );
    if let Some(n) = v.insufficient_evidence.as_ref().and_then(|i| i.more_canary_requests) {
        let _ = writeln!(out, "canary_gate_agent_evidence_needed_requests{{rollout=\"{rollout}\"}} {n}");
    }
    family(
        &mut out,
        "canary_gate_agent_written_canary_weight_ratio",
        "gauge",
        "Canary weight in the durable configuration as the agent last wrote it (or read it at start), 0 to 1.",
    );
    let _ = writeln!(
        out,
        "canary_gate_agent_written_canary_weight_ratio{{rollout=\"{rollout}\"}} {}",
        v.written_weight_percent / 100.0
    );
    family(
        &mut out,
        "canary_gate_agent_desired_canary_weight_ratio",
        "gauge",
        "Canary weight the rollout has decided, 0 to 1; above the written weight while a write is failing or in flight.",
    );
    let _ = writeln!(
        out,
        "canary_gate_agent_desired_canary_weight_ratio{{rollout=\"{rollout}\"}} {}",
        v.canary_weight_percent / 100.0
    );
    family(
        &mut out,
        "canary_gate_agent_max_weight_ratio",
        "gauge",
        "The spec's maxWeight, 0 to 1; only a promotion goes above it.",
    );
    let _ =
        writeln!(out, "canary_gate_agent_max_weight_ratio{{rollout=\"{rollout}\"}} {}", v.max_weight_percent / 100.0);
    family(&mut out, "canary_gate_agent_phase", "gauge", "1 for the rollout's current phase.");
    // Every phase the rollout can be in, and `standby` (a replica that does not hold the lease).
    for phase in crate::rollout::Phase::ALL.iter().map(|p| p.as_str()).chain(["standby"]) {
        let on =
            u8::from(v.phase.eq_ignore_ascii_case(phase) || v.phase.to_ascii_lowercase().replace(' ', "_") == phase);
        let _ = writeln!(out, "canary_gate_agent_phase{{rollout=\"{rollout}\",phase=\"{phase}\"}} {on}");
    }
    let per_subset: [(&str, &str, SubsetFigure); 2] = [
        ("canary_gate_agent_requests_total", "Requests seen per subset across the fleet.", |s| s.requests_total),
        ("canary_gate_agent_failures_total", "Failed requests per subset across the fleet.", |s| s.failures_total),
    ];
    for (name, help, value) in per_subset {
        family(&mut out, name, "counter", help);
        for s in &v.subsets {
            let _ = writeln!(
                out,
                "{name}{{rollout=\"{rollout}\",subset=\"{}\",role=\"{}\"}} {}",
                escape(&s.subset),
                escape(&s.role),
                value(s)
            );
        }
    }
    for (name, help, pick) in [
        ("canary_gate_agent_latency_p50_seconds", "Median latency over the judging window.", 0),
        ("canary_gate_agent_latency_p99_seconds", "99th percentile latency over the judging window.", 1),
    ] {
        family(&mut out, name, "gauge", help);
        for s in &v.subsets {
            if let Some(ms) = [s.p50_ms, s.p99_ms].get(pick).copied().flatten() {
                let _ =
                    writeln!(out, "{name}{{rollout=\"{rollout}\",subset=\"{}\"}} {}", escape(&s.subset), ms / 1000.0);
            }
        }
    }
    let per_test: [(&str, &str, EvidenceFigure); 2] = [
        ("canary_gate_agent_evidence_log", "Sequential test evidence (natural log); rollback at the threshold.", |e| {
            e.log_evidence
        }),
        ("canary_gate_agent_evidence_log_threshold", "Threshold of each sequential test (natural log).", |e| {
            e.log_threshold
        }),
    ];
    for (name, help, value) in per_test {
        family(&mut out, name, "gauge", help);
        for e in &v.evidence {
            let _ = writeln!(out, "{name}{{rollout=\"{rollout}\",test=\"{}\"}} {}", escape(&e.test), value(e));
        }
    }
    family(&mut out, "canary_gate_agent_verdict", "gauge", "1 for the latest verdict's kind; all 0 before the first.");
    let latest = latest_verdict(v);
    for (label, kind) in [
        ("pass", VerdictKind::Pass),
        ("fail", VerdictKind::Fail { decisive: false }),
        ("decisive_fail", VerdictKind::Fail { decisive: true }),
        ("not_enough_data", VerdictKind::NotEnoughData),
    ] {
        let on = u8::from(latest == Some(kind));
        let _ = writeln!(out, "canary_gate_agent_verdict{{rollout=\"{rollout}\",verdict=\"{label}\"}} {on}");
    }
    family(&mut out, "canary_gate_agent_failed_checks", "gauge", "Failed checks counted toward the threshold.");
    let _ = writeln!(out, "canary_gate_agent_failed_checks{{rollout=\"{rollout}\"}} {}", v.failed_checks);
    family(&mut out, "canary_gate_agent_failed_checks_threshold", "gauge", "Failed checks that roll the canary back.");
    let _ = writeln!(out, "canary_gate_agent_failed_checks_threshold{{rollout=\"{rollout}\"}} {}", v.threshold);
    family(
        &mut out,
        "canary_gate_agent_proxies_reporting",
        "gauge",
        "Proxies whose snapshot was read on the last tick.",
    );
    let _ = writeln!(out, "canary_gate_agent_proxies_reporting{{rollout=\"{rollout}\"}} {}", v.proxies_reporting);
    family(&mut out, "canary_gate_agent_ready", "gauge", "1 when the agent can read proxies and write weights.");
    let _ = writeln!(out, "canary_gate_agent_ready{{rollout=\"{rollout}\"}} {}", u8::from(v.not_ready.is_none()));
    family(&mut out, "canary_gate_agent_router_errors_total", "counter", "Failed attempts to apply a weight.");
    let _ = writeln!(out, "canary_gate_agent_router_errors_total{{rollout=\"{rollout}\"}} {}", v.router_errors_total);
    family(
        &mut out,
        "canary_gate_agent_proxy_resets_total",
        "counter",
        "Proxy restarts and counter resets seen; counts after a reset are taken from zero.",
    );
    let _ = writeln!(out, "canary_gate_agent_proxy_resets_total{{rollout=\"{rollout}\"}} {}", v.proxy_resets_total);
    family(
        &mut out,
        "canary_gate_agent_misrouted_requests_total",
        "counter",
        "Requests served by another subset's cluster than their label: the route table does not follow the label, and nothing advances.",
    );
    let _ = writeln!(
        out,
        "canary_gate_agent_misrouted_requests_total{{rollout=\"{rollout}\"}} {}",
        v.misrouted_requests_total
    );
    family(
        &mut out,
        "canary_gate_agent_foreign_writes_total",
        "counter",
        "Configurations the proxies applied that gate-agent did not write; each is reverted, or taken as a rollback or a pause.",
    );
    let _ = writeln!(out, "canary_gate_agent_foreign_writes_total{{rollout=\"{rollout}\"}} {}", v.foreign_writes_total);
    family(&mut out, "canary_gate_agent_phase_changes_total", "counter", "Phase transitions.");
    let _ = writeln!(out, "canary_gate_agent_phase_changes_total{{rollout=\"{rollout}\"}} {}", v.phase_changes_total);
    out
}

/// Reads one figure of a subset.
type SubsetFigure = fn(&SubsetView) -> u64;
/// Reads one figure of a sequential test.
type EvidenceFigure = fn(&EvidenceView) -> f64;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

async fn metrics(State(s): State<ApiState>) -> Response {
    let body = render_metrics(&s.status.borrow());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn state(token: Option<&str>) -> (ApiState, mpsc::Receiver<CommandRequest>, watch::Sender<StatusView>) {
        let (status_tx, status) = watch::channel(StatusView {
            rollout: "demo".into(),
            phase: "progressing".into(),
            canary_weight_percent: 10.0,
            written_weight_percent: 10.0,
            observed_weight_percent: Some(ObservedWeight { min_percent: 0.0, max_percent: 10.0 }),
            subsets: vec![SubsetView {
                subset: "v2".into(),
                role: "canary".into(),
                requests_total: 10,
                failures_total: 1,
                p50_ms: Some(1.5),
                p99_ms: Some(9.0),
                ..SubsetView::default()
            }],
            ..StatusView::default()
        });
        let (commands, rx) = mpsc::channel(4);
        (ApiState { status, commands, token: token.map(Arc::from) }, rx, status_tx)
    }

    fn answer_commands(mut rx: mpsc::Receiver<CommandRequest>) {
        tokio::spawn(async move {
            while let Some((c, reply)) = rx.recv().await {
                let _ = reply.send(Ok(format!("{c:?} done")));
            }
        });
    }

    async fn post(app: Router, path: &str, auth: Option<&str>) -> StatusCode {
        let mut req = Request::post(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap().status()
    }

    #[tokio::test]
    async fn actions_need_the_bearer_token_when_one_is_set() {
        let (s, rx, _keep) = state(Some("s3cret"));
        answer_commands(rx);
        assert_eq!(post(app(s.clone()), "/rollback", None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(post(app(s.clone()), "/rollback", Some("Bearer wrong!")).await, StatusCode::UNAUTHORIZED);
        assert_eq!(post(app(s), "/rollback", Some("Bearer s3cret")).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn actions_without_a_token_reach_the_control_loop() {
        let (s, rx, _keep) = state(None);
        answer_commands(rx);
        assert_eq!(post(app(s), "/pause", None).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn readyz_reflects_the_published_status() {
        let (s, _rx, tx) = state(None);
        let get = |s: ApiState| async move {
            app(s).oneshot(Request::get("/readyz").body(Body::empty()).unwrap()).await.unwrap().status()
        };
        assert_eq!(get(s.clone()).await, StatusCode::OK);
        tx.send_modify(|v| v.not_ready = Some("config directory unwritable".into()));
        assert_eq!(get(s).await, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn metrics_name_every_phase_and_verdict_and_the_max_weight_before_any_traffic() {
        let view = StatusView {
            rollout: "demo".into(),
            phase: "initializing".into(),
            max_weight_percent: 50.0,
            threshold: 5,
            subsets: vec![
                SubsetView { subset: "v1".into(), role: "stable".into(), ..SubsetView::default() },
                SubsetView { subset: "v2".into(), role: "canary".into(), ..SubsetView::default() },
            ],
            ..StatusView::default()
        };
        let text = render_metrics(&view);
        for line in [
            "canary_gate_agent_max_weight_ratio{rollout=\"demo\"} 0.5",
            "canary_gate_agent_phase{rollout=\"demo\",phase=\"initializing\"} 1",
            "canary_gate_agent_phase{rollout=\"demo\",phase=\"rolled_back\"} 0",
            "canary_gate_agent_phase{rollout=\"demo\",phase=\"standby\"} 0",
            "canary_gate_agent_verdict{rollout=\"demo\",verdict=\"decisive_fail\"} 0",
            "canary_gate_agent_requests_total{rollout=\"demo\",subset=\"v2\",role=\"canary\"} 0",
            "canary_gate_agent_failures_total{rollout=\"demo\",subset=\"v1\",role=\"stable\"} 0",
            "canary_gate_agent_failed_checks{rollout=\"demo\"} 0",
            "canary_gate_agent_failed_checks_threshold{rollout=\"demo\"} 5",
            "canary_gate_agent_proxy_resets_total{rollout=\"demo\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("phase=\"failed\""), "not a phase the rollout has");
        let kind = VerdictKind::Fail { decisive: true };
        let decisive = VerdictView { verdict: kind.to_string(), kind: Some(kind), ..VerdictView::default() };
        let text = render_metrics(&StatusView { recent_verdicts: vec![decisive], ..view });
        assert!(text.contains("canary_gate_agent_verdict{rollout=\"demo\",verdict=\"decisive_fail\"} 1"), "{text}");
    }

    fn weight_lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#') && l.contains("canary_weight_ratio")).collect()
    }

    #[test]
    fn a_hand_edit_shows_in_the_observed_weight_while_the_written_and_desired_stay_the_rollouts() {
        // Someone wrote 99% by hand: one proxy applies it, the other has not picked it up yet.
        let view = StatusView {
            rollout: "demo".into(),
            canary_weight_percent: 10.0,
            written_weight_percent: 10.0,
            observed_weight_percent: Some(ObservedWeight { min_percent: 10.0, max_percent: 99.0 }),
            ..StatusView::default()
        };
        assert_eq!(
            weight_lines(&render_metrics(&view)),
            [
                "canary_gate_agent_canary_weight_ratio{rollout=\"demo\",observed=\"max\"} 0.99",
                "canary_gate_agent_canary_weight_ratio{rollout=\"demo\",observed=\"min\"} 0.1",
                "canary_gate_agent_written_canary_weight_ratio{rollout=\"demo\"} 0.1",
                "canary_gate_agent_desired_canary_weight_ratio{rollout=\"demo\"} 0.1",
            ]
        );
    }

    #[test]
    fn a_failing_write_shows_the_desired_weight_above_the_written_and_observed_ones() {
        // The step to 25% cannot be written: the proxies still apply the durable 10%.
        let view = StatusView {
            rollout: "demo".into(),
            canary_weight_percent: 25.0,
            written_weight_percent: 10.0,
            observed_weight_percent: Some(ObservedWeight { min_percent: 10.0, max_percent: 10.0 }),
            ..StatusView::default()
        };
        let text = render_metrics(&view);
        for line in [
            "canary_gate_agent_canary_weight_ratio{rollout=\"demo\",observed=\"max\"} 0.1",
            "canary_gate_agent_written_canary_weight_ratio{rollout=\"demo\"} 0.1",
            "canary_gate_agent_desired_canary_weight_ratio{rollout=\"demo\"} 0.25",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn no_proxy_reporting_means_no_observed_weight_sample_rather_than_a_made_up_one() {
        let view = StatusView { rollout: "demo".into(), written_weight_percent: 10.0, ..StatusView::default() };
        let text = render_metrics(&view);
        assert!(text.contains("# TYPE canary_gate_agent_canary_weight_ratio gauge"), "the family is still described");
        assert!(!text.lines().any(|l| l.starts_with("canary_gate_agent_canary_weight_ratio{")), "{text}");
        assert!(text.contains("canary_gate_agent_written_canary_weight_ratio{rollout=\"demo\"} 0.1"), "{text}");
    }

    #[test]
    fn metrics_pass_promtool_when_it_is_installed() {
        let (s, _rx, _keep) = state(None);
        let text = render_metrics(&s.status.borrow());
        assert!(text.contains("canary_gate_agent_failures_total{rollout=\"demo\",subset=\"v2\",role=\"canary\"} 1"));
        let Ok(mut child) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            // `make test` installs promtool; the e2e suite requires it there.
            return;
        };
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
