//! The controller's HTTP API: every gate's status, and actions per gate under its namespace and
//! name. `fn app(..)` so tests call it without a socket.
//!
//! | endpoint | |
//! |---|---|
//! | `GET /healthz` | the process is up |
//! | `GET /readyz` | 503 on a standby replica (only the leader runs gates) |
//! | `GET /metrics` | every gate's agent metrics, labelled `namespace` and `canarygate` |
//! | `GET /status` | `[{"namespace","canarygate","status": <the agent's /status>}]`, every gate this replica runs |
//! | `GET /gates/{namespace}/{name}/status` | one gate's status (404 for an unknown gate) |
//! | `POST /gates/{namespace}/{name}/{rollback,promote,pause,resume}` | actions, bearer token as `gate-agent run` |

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::oneshot;

use super::controller::GateIndex;
use crate::api::Command;
use crate::mesh::lease::Leadership;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct GatesApi {
    pub index: GateIndex,
    /// Only the leader runs gates: a standby answers `/readyz` with 503, so the Service sends
    /// people to the leader.
    pub leadership: Leadership,
    pub token: Option<Arc<str>>,
}

pub fn app(state: GatesApi) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(all))
        .route("/metrics", get(metrics))
        .route("/gates/{namespace}/{name}/status", get(one))
        .route("/gates/{namespace}/{name}/{action}", post(action))
        .with_state(state)
}

async fn readyz(State(s): State<GatesApi>) -> Response {
    if s.leadership.is_leader() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "standby: another replica leads\n").into_response()
    }
}

async fn all(State(s): State<GatesApi>) -> Response {
    let Ok(index) = s.index.read() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    let list: Vec<_> = index
        .iter()
        .map(|((ns, name), h)| json!({ "namespace": ns, "canarygate": name, "status": *h.status.borrow() }))
        .collect();
    axum::Json(list).into_response()
}

async fn metrics(State(s): State<GatesApi>) -> Response {
    let Ok(index) = s.index.read() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    let texts: Vec<_> =
        index.iter().map(|(key, h)| (key.clone(), crate::api::render_metrics(&h.status.borrow()))).collect();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], super::metrics::merge(&texts)).into_response()
}

async fn one(State(s): State<GatesApi>, Path((ns, name)): Path<(String, String)>) -> Response {
    let Ok(index) = s.index.read() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    match index.get(&(ns.clone(), name.clone())) {
        Some(h) => axum::Json(h.status.borrow().clone()).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no running CanaryGate {ns}/{name} on this replica\n")).into_response(),
    }
}

async fn action(
    State(s): State<GatesApi>,
    Path((ns, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = &s.token {
        let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_ref()) {
            return (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
        }
    }
    let command = match action.as_str() {
        "rollback" => Command::Rollback,
        "promote" => Command::Promote,
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        other => return (StatusCode::NOT_FOUND, format!("no action {other:?}\n")).into_response(),
    };
    let commands = match s.index.read() {
        Ok(index) => index.get(&(ns.clone(), name.clone())).map(|h| h.commands.clone()),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let Some(commands) = commands else {
        return (StatusCode::NOT_FOUND, format!("no running CanaryGate {ns}/{name} on this replica\n")).into_response();
    };
    let (reply, answer) = oneshot::channel();
    if commands.send((command, reply)).await.is_err() {
        return (StatusCode::CONFLICT, "the rollout loop has stopped\n").into_response();
    }
    match answer.await {
        Ok(Ok(m)) => (StatusCode::OK, m + "\n").into_response(),
        Ok(Err(m)) => (StatusCode::CONFLICT, m + "\n").into_response(),
        Err(_) => (StatusCode::CONFLICT, "the rollout loop has stopped\n").into_response(),
    }
}
