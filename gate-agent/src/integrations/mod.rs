//! Gates for the orchestrators platform teams already run, answered from the in-proxy verdict:
//! Flagger's webhooks, a Prometheus-shaped query endpoint for Flagger's `prometheus` metric
//! provider, and a JSON verdict for Argo Rollouts' `web` analysis provider.
//!
//! Every answer is a pure function of the latest [`StatusView`](crate::status::StatusView) the
//! control loop published ([`flagger::answer_hook`], [`prometheus::prometheus_answer`],
//! [`argo::argo_answer`]); the handlers only parse requests and call them. Nothing here decides
//! or acts: Flagger's rollback hook *asks*, and its answer reports what the agent has already
//! decided. The one piece of state is a bounded log of the events Flagger posts
//! ([`flagger::FlaggerEvents`]), shown in `/status`. It lives in the API rather than the control
//! loop because events never feed a decision; the loop's only inputs stay the proxies and the
//! operator.
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
//!   0 fail or rolled back, no sample while the table below holds: not enough data, insufficient
//!   evidence, paused, not ready; [`prometheus::verdict_value`]); see [`prometheus::parse_query`]. Answers are
//!   Prometheus's instant-vector JSON; anything else is 400 `bad_data`. `time=` (RFC 3339 or Unix
//!   seconds) is honoured as far as the agent can: it holds only its latest status, so a time
//!   before that status was published, or after now, is 400 `bad_data` (see [`prometheus::eval_time`]).
//! * `/api/v1/query_range`: 422 `execution`, as Prometheus in agent mode answers it: the agent
//!   has no history to give a range of; the Prometheus that scrapes its `/metrics` has.
//! * `GET /v1/verdict?rollout=NAME[&namespace=NS]`: [`argo::ArgoVerdict`] as JSON, errors as
//!   `{"error": ...}` with a 4xx.
//!
//! Each router finds the status a request names through a
//! [`StatusLookup`](crate::status::StatusLookup). `gate-agent run` serves one rollout
//! (`StatusView::rollout`): a request must name it (Flagger's `name`, Argo's `rollout=`), or it is
//! answered 404 with a JSON error; a namespace is recorded, and checked only when the router
//! carries an [`ExpectedNamespace`](crate::status::ExpectedNamespace) extension. `gate-agent
//! controller` (`gate::api`) finds the CanaryGate by namespace and name: unknown is 404 naming
//! it, a name two namespaces run asked without a namespace is 400, and a Prometheus selector
//! matching several gates answers one sample per gate, labelled `rollout` and `namespace`.
//!
//! How the latest status reads, most serious first ([`crate::status::standing`]), and what each
//! endpoint says:
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
//!
//! This module owns only the composition ([`routes`]). Each integration is a module of its own
//! ([`flagger`], [`prometheus`], [`argo`]; [`form`] decodes the form-encoded parameters the last
//! two take), and each reads the status through [`crate::status`] alone: none depends on
//! [`crate::api`], which merges these routes into its router.

pub mod argo;
pub mod flagger;
pub mod form;
pub mod prometheus;

use axum::Router;
use axum::extract::FromRef;

use crate::status::StatusLookup;

/// The routes, for any router state that hands out a [`StatusLookup`]: `api::app` (the
/// single-rollout agent, [`LatestStatus`](crate::status::LatestStatus)) and `gate::api::app`
/// (the controller, one status per CanaryGate) merge them and provide the
/// [`flagger::FlaggerEvents`] extension.
pub fn routes<S, L>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    L: StatusLookup + FromRef<S> + Send + Sync + 'static,
{
    Router::new().merge(flagger::routes::<S, L>()).merge(prometheus::routes::<S, L>()).merge(argo::routes::<S, L>())
}

/// The agent's whole router, as the orchestrators call it, for the integrations' tests.
#[cfg(test)]
mod through_the_app {
    use std::sync::Arc;

    use axum::Router;
    use axum::body::Body;
    use axum::http::Request;
    use serde_json::Value;
    use tokio::sync::{mpsc, watch};
    use tower::ServiceExt;

    use crate::api::{ApiState, CommandRequest, app};
    use crate::status::StatusView;

    pub(super) fn app_with(view: StatusView) -> (Router, watch::Sender<StatusView>, mpsc::Receiver<CommandRequest>) {
        let (tx, status) = watch::channel(view);
        let (commands, rx) = mpsc::channel(1);
        (app(ApiState { status, commands, token: Some(Arc::from("s3cret")) }), tx, rx)
    }

    pub(super) async fn call(app: &Router, req: Request<Body>) -> (u16, Value) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, body)
    }
}
