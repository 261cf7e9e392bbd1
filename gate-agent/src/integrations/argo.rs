//! Argo Rollouts' `web` analysis provider: `GET /v1/verdict` answers the latest standing as an
//! [`ArgoVerdict`] (`pass`, `fail` or `inconclusive`) with the figures behind it.

use axum::extract::{FromRef, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Serialize;

use super::form::parse_form;
use crate::status::{
    EvidenceView, ExpectedNamespace, Refusal, Standing, StatusLookup, StatusView, SubsetView, expected, latest_reasons,
    not_allowed, standing,
};

/// The verdict's route, answered from the rollouts `L` finds.
pub fn routes<S, L>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    L: StatusLookup + FromRef<S> + Send + Sync + 'static,
{
    Router::new().route("/v1/verdict", get(argo::<L>).fallback(not_allowed))
}

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

/// The answer to `/v1/verdict` with this raw query string, for the single-rollout agent.
/// Parameters: `rollout` (required, the agent's rollout) and `namespace` (optional; checked
/// against [`ExpectedNamespace`] if set).
pub fn argo_answer(
    query: Option<&str>,
    view: &StatusView,
    expected_namespace: Option<&str>,
) -> Result<ArgoVerdict, Refusal> {
    argo_answer_in(query, view, expected_namespace)
}

/// The answer to `/v1/verdict` with this raw query string, for the rollout `lookup` finds by
/// `rollout` (required) and `namespace` (optional; the controller needs it when two namespaces
/// run a CanaryGate of that name).
pub fn argo_answer_in(
    query: Option<&str>,
    lookup: &impl StatusLookup,
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
    let view = lookup.find(&rollout, namespace.as_deref(), expected_namespace)?;
    argo_verdict(&view)
}

async fn argo<L: StatusLookup>(State(s): State<L>, ns: Option<Extension<ExpectedNamespace>>, uri: Uri) -> Response {
    match argo_answer_in(uri.query(), &s, expected(ns.as_ref())) {
        Ok(verdict) => Json(verdict).into_response(),
        Err(refused) => refused.into_response(),
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
