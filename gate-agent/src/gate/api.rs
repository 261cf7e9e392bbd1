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
//! | `POST /flagger/{confirm-rollout,confirm-traffic-increase,confirm-promotion,rollback,event}` | Flagger's webhooks, for the gate its payload's `namespace` and `name` name |
//! | `GET`/`POST /api/v1/query` | Prometheus-shaped queries; `rollout="..."` and `namespace="..."` select gates, one sample per gate (labelled `rollout` and `namespace`) |
//! | `GET /v1/verdict?rollout=NAME[&namespace=NS]` | Argo's verdict for one gate |
//!
//! The integrations ([`crate::integrations`]) answer exactly as `gate-agent run` does, from the
//! status of the gate a request names: [`GatesApi`] is their [`StatusLookup`]. A gate this
//! replica does not run is 404 with a JSON error naming it; a name two namespaces run, asked
//! without a namespace (Argo's `namespace=` left out), is 400 asking for it; a standby replica
//! answers 503, as the single-rollout agent does.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde_json::json;
use tokio::sync::oneshot;

use super::controller::GateIndex;
use crate::api::Command;
use crate::integrations::flagger::FlaggerEvents;
use crate::mesh::lease::Leadership;
use crate::status::{FlaggerEventView, Found, Refusal, StatusLookup, StatusView};

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
        .merge(crate::integrations::routes::<GatesApi, GatesApi>())
        .layer(axum::Extension(FlaggerEvents::default()))
        .with_state(state)
}

/// The integrations find a gate by namespace and name in the running gates' index.
impl StatusLookup for GatesApi {
    fn find(&self, name: &str, namespace: Option<&str>, _: Option<&str>) -> Result<StatusView, Refusal> {
        if name.is_empty() {
            return Err(Refusal::new(StatusCode::BAD_REQUEST, "the request names no CanaryGate"));
        }
        let mut found = self.select(Some(name), namespace, None)?;
        match (found.pop(), found.is_empty()) {
            (Some(one), true) => Ok(one.view),
            (Some(last), false) => {
                let namespaces: Vec<String> = found.iter().chain([&last]).filter_map(|f| f.namespace.clone()).collect();
                Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "CanaryGate {name:?} runs in namespaces {}: add the namespace (namespace=NS) to say which",
                        namespaces.join(", ")
                    ),
                ))
            }
            (None, _) => Err(Refusal::new(StatusCode::NOT_FOUND, "no CanaryGate matches")),
        }
    }

    fn select(&self, name: Option<&str>, namespace: Option<&str>, _: Option<&str>) -> Result<Vec<Found>, Refusal> {
        if !self.leadership.is_leader() {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this replica is a standby (only the leader runs gates); ask the leader",
            ));
        }
        let index = self
            .index
            .read()
            .map_err(|_| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "the gates' index is poisoned"))?;
        let namespace = namespace.filter(|ns| !ns.is_empty());
        let found: Vec<Found> = index
            .iter()
            .filter(|((ns, n), _)| name.is_none_or(|want| want == n) && namespace.is_none_or(|want| want == ns))
            .map(|((ns, _), h)| Found { namespace: Some(ns.clone()), view: h.status.borrow().clone() })
            .collect();
        if found.is_empty() {
            let which = match (namespace, name) {
                (Some(ns), Some(name)) => format!("CanaryGate {ns}/{name}"),
                (None, Some(name)) => format!("CanaryGate named {name:?} in any namespace"),
                (Some(ns), None) => format!("CanaryGate in namespace {ns:?}"),
                (None, None) => "CanaryGate".to_string(),
            };
            return Err(Refusal::new(StatusCode::NOT_FOUND, format!("no running {which} on this replica")));
        }
        Ok(found)
    }

    fn published_at_unix_ms(&self) -> u64 {
        self.index
            .read()
            .map_or(0, |index| index.values().map(|h| h.status.borrow().published_at_unix_ms).max().unwrap_or(0))
    }
}

async fn readyz(State(s): State<GatesApi>) -> Response {
    if s.leadership.is_leader() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "standby: another replica leads\n").into_response()
    }
}

/// A gate's status with the Flagger events posted for it.
fn with_events(h: &super::controller::GateHandle, events: &[FlaggerEventView], ns: &str, name: &str) -> StatusView {
    let mut view = h.status.borrow().clone();
    view.flagger_events = events.iter().filter(|e| e.namespace == ns && e.name == name).cloned().collect();
    view
}

async fn all(State(s): State<GatesApi>, Extension(events): Extension<FlaggerEvents>) -> Response {
    let events = events.recent();
    let Ok(index) = s.index.read() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    let list: Vec<_> = index
        .iter()
        .map(|((ns, name), h)| {
            json!({ "namespace": ns, "canarygate": name, "status": with_events(h, &events, ns, name) })
        })
        .collect();
    axum::Json(list).into_response()
}

async fn metrics(State(s): State<GatesApi>) -> Response {
    let Ok(index) = s.index.read() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    let texts: Vec<_> =
        index.iter().map(|(key, h)| (key.clone(), crate::api::render_metrics(&h.status.borrow()))).collect();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], super::metrics::merge(&texts)).into_response()
}

async fn one(
    State(s): State<GatesApi>,
    Extension(events): Extension<FlaggerEvents>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let events = events.recent();
    let Ok(index) = s.index.read() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    match index.get(&(ns.clone(), name.clone())) {
        Some(h) => axum::Json(with_events(h, &events, &ns, &name)).into_response(),
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

/// The integrations through the controller's router, no socket: two gates named `web` (in `shop`
/// and `blog`) and one `api` (in `shop`), each answering differently.
#[cfg(test)]
mod integrations {
    use std::collections::BTreeMap;
    use std::sync::RwLock;

    use axum::body::Body;
    use axum::http::Request;
    use serde_json::Value;
    use tokio::sync::{mpsc, watch};
    use tower::ServiceExt;

    use super::*;
    use crate::gate::controller::GateHandle;
    use crate::status::fixtures::{decisive, passing, with};

    fn handle(view: StatusView) -> GateHandle {
        let (_, status) = watch::channel(view);
        let (commands, _) = mpsc::channel(1);
        GateHandle { status, commands }
    }

    fn gates() -> Router {
        let web = |v: StatusView| StatusView { rollout: "web".into(), ..v };
        let index = BTreeMap::from([
            (("shop".to_string(), "web".to_string()), handle(web(passing()))),
            (("blog".to_string(), "web".to_string()), handle(web(decisive()))),
            (("shop".to_string(), "api".to_string()), handle(with(|v| v.rollout = "api".into()))),
        ]);
        app(GatesApi { index: Arc::new(RwLock::new(index)), leadership: Leadership::always(), token: None })
    }

    async fn call(app: &Router, req: Request<Body>) -> (u16, Value) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, body)
    }

    fn flagger(hook: &str, ns: &str, name: &str) -> Request<Body> {
        let body = json!({ "name": name, "namespace": ns, "phase": "Progressing" }).to_string();
        Request::post(format!("/flagger/{hook}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    }

    #[tokio::test]
    async fn flagger_hooks_answer_for_the_gate_the_payload_names() {
        let app = gates();
        let (code, body) = call(&app, flagger("confirm-promotion", "shop", "web")).await;
        assert_eq!((code, body["decision"].as_str()), (200, Some("allow")), "{body}");
        let (code, body) = call(&app, flagger("confirm-promotion", "blog", "web")).await;
        assert_eq!((code, body["decision"].as_str()), (403, Some("refuse")), "{body}");
        let (code, body) = call(&app, flagger("rollback", "blog", "web")).await;
        assert_eq!((code, body["decision"].as_str()), (200, Some("roll_back")), "{body}");
        let (code, _) = call(&app, flagger("rollback", "shop", "web")).await;
        assert_eq!(code, 404, "the passing gate is not rolled back");
        let (code, body) = call(&app, flagger("confirm-rollout", "shop", "payments")).await;
        assert_eq!(code, 404, "{body}");
        assert!(body["error"].as_str().unwrap().contains("shop/payments"), "{body}");
    }

    #[tokio::test]
    async fn flagger_events_show_in_the_status_of_their_gate_only() {
        let app = gates();
        let (code, body) = call(&app, flagger("event", "blog", "web")).await;
        assert_eq!(code, 200, "{body}");
        let get = |path: &str| Request::get(path.to_string()).body(Body::empty()).unwrap();
        let (_, blog) = call(&app, get("/gates/blog/web/status")).await;
        assert_eq!(blog["flagger_events"][0]["namespace"], "blog", "{blog}");
        let (_, shop) = call(&app, get("/gates/shop/web/status")).await;
        assert_eq!(shop["flagger_events"], json!([]), "{shop}");
    }

    #[tokio::test]
    async fn argo_needs_the_namespace_only_when_the_name_is_ambiguous() {
        let app = gates();
        let get = |q: &str| Request::get(format!("/v1/verdict?{q}")).body(Body::empty()).unwrap();
        let (code, body) = call(&app, get("rollout=web&namespace=shop")).await;
        assert_eq!((code, body["result"].as_str()), (200, Some("pass")), "{body}");
        let (code, body) = call(&app, get("rollout=web&namespace=blog")).await;
        assert_eq!((code, body["result"].as_str()), (200, Some("fail")), "{body}");
        let (code, body) = call(&app, get("rollout=api")).await;
        assert_eq!((code, body["rollout"].as_str()), (200, Some("api")), "one gate of that name: {body}");
        let (code, body) = call(&app, get("rollout=web")).await;
        assert_eq!(code, 400, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("blog, shop") && error.contains("add the namespace"), "{error}");
        let (code, body) = call(&app, get("rollout=web&namespace=docs")).await;
        assert_eq!(code, 404, "{body}");
        assert!(body["error"].as_str().unwrap().contains("docs/web"), "{body}");
    }

    #[tokio::test]
    async fn a_query_answers_one_labelled_sample_per_gate_it_selects() {
        let app = gates();
        let query = |q: &str| {
            let q =
                q.replace('{', "%7B").replace('}', "%7D").replace('"', "%22").replace('=', "%3D").replace(',', "%2C");
            Request::get(format!("/api/v1/query?query={q}")).body(Body::empty()).unwrap()
        };
        let (code, body) = call(&app, query("canary_gate_verdict{rollout=\"web\"}")).await;
        assert_eq!(code, 200, "{body}");
        let samples: Vec<(String, String)> = body["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["metric"]["namespace"].as_str().unwrap().into(), s["value"][1].as_str().unwrap().into()))
            .collect();
        assert_eq!(samples, [("blog".into(), "0".into()), ("shop".into(), "1".into())], "{body}");
        let (code, body) = call(&app, query("canary_gate_verdict{rollout=\"web\",namespace=\"shop\"}")).await;
        assert_eq!((code, body["data"]["result"].as_array().map(Vec::len)), (200, Some(1)), "{body}");
        assert_eq!(body["data"]["result"][0]["metric"]["rollout"], "web");
        let (code, body) = call(&app, query("canary_gate_success_rate{subset=\"canary\",namespace=\"shop\"}")).await;
        assert_eq!((code, body["data"]["result"].as_array().map(Vec::len)), (200, Some(2)), "{body}");
        let (code, body) = call(&app, query("canary_gate_verdict{rollout=\"payments\"}")).await;
        assert_eq!((code, body["errorType"].as_str()), (404, Some("not_found")), "{body}");
        assert!(body["error"].as_str().unwrap().contains("\"payments\""), "{body}");
    }
}
