//! Flagger, Argo Rollouts and Prometheus-shaped clients against the real gate-agent binary, which
//! judges real Envoy running the filter under steady open-loop traffic at 200 requests per second.
//! The clients call the agent exactly as those tools do and read the answers by their rules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::time::{Duration, Instant};

use canary_e2e::traffic::Steady;
use canary_e2e::{Agent, Fixture, route};
use serde_json::{Value, json};

const RPS: u32 = 200;

const SPEC: &str = canary_e2e::FAST_SPEC;

/// Calls the agent as Flagger does: `POST` JSON `CanaryWebhookPayload` to one URL per hook type.
struct Flagger {
    http: reqwest::Client,
    base: String,
}

impl Flagger {
    fn new(agent: &Agent) -> Flagger {
        Flagger { http: reqwest::Client::new(), base: format!("http://{}/flagger", agent.api) }
    }

    /// The status and JSON body of hook `hook` for canary `name` in namespace `shop`.
    async fn call(&self, hook: &str, name: &str, metadata: Option<Value>) -> (u16, Value) {
        // Flagger's `metadata` is `omitempty`: absent unless the webhook (or the event) has some.
        let mut payload = json!({"name": name, "namespace": "shop", "phase": "Progressing", "checksum": "5c8d6f7b9"});
        if let Some(m) = metadata {
            payload["metadata"] = m;
        }
        let r = self
            .http
            .post(format!("{}/{hook}", self.base))
            .header("content-type", "application/json")
            .body(payload.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{hook}: not JSON ({e}): {text}"));
        (status, body)
    }

    /// Flagger's rule (`callWebhook`): a status up to 202 passes the hook; for the rollback hook
    /// a pass means "roll back now".
    async fn passes(&self, hook: &str) -> bool {
        self.call(hook, "demo", None).await.0 <= 202
    }
}

/// `url.QueryEscape`, as Flagger's Prometheus provider encodes the query.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs a query as Flagger's `prometheus` provider does (whitespace collapsed, `GET
/// ./api/v1/query?query=...`): the status, the body, and the value Flagger would read (the last
/// sample's value parsed as a float; `None` is Flagger's "no values found").
async fn prometheus(agent: &Agent, query: &str) -> (u16, Value, Option<f64>) {
    let trimmed = query.split_whitespace().collect::<Vec<_>>().join(" ");
    let (status, text) = agent.get(&format!("/api/v1/query?query={}", query_escape(&trimmed))).await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{query}: not JSON ({e}): {text}"));
    let value = body["data"]["result"]
        .as_array()
        .and_then(|r| r.last())
        .and_then(|s| s["value"][1].as_str())
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| !v.is_nan());
    (status, body, value)
}

/// `GET /v1/verdict...` as Argo Rollouts' `web` provider does: the status and the JSON body.
async fn argo(agent: &Agent, query: &str) -> (u16, Value) {
    let (status, text) = agent.get(&format!("/v1/verdict{query}")).await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("/v1/verdict{query}: not JSON ({e}): {text}"));
    (status, body)
}

async fn eventually<F: Future<Output = bool>>(within: Duration, what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flagger_is_told_to_roll_back_within_two_seconds_of_a_breach_and_promotion_is_refused_after() {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 2).await.unwrap();
    let agent = Agent::start(&fx.envoy, SPEC, "250ms").await.unwrap();
    let flagger = Flagger::new(&agent);
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), RPS);
    agent.wait_for(Duration::from_secs(15), "canary on a step", |s| s["canary_weight_percent"] == 10.0).await.unwrap();

    // Healthy: Flagger's provider check, the documented queries, every gate open, no rollback.
    let (code, _, one) = prometheus(&agent, "vector(1)").await;
    assert_eq!((code, one), (200, Some(1.0)), "Flagger's IsOnline probe");
    eventually(Duration::from_secs(10), "the verdict passes", || async {
        prometheus(&agent, "canary_gate_verdict").await.2 == Some(1.0)
    })
    .await;
    eventually(Duration::from_secs(5), "confirm-promotion allows", || flagger.passes("confirm-promotion")).await;
    for hook in ["confirm-rollout", "confirm-traffic-increase"] {
        let (code, body) = flagger.call(hook, "demo", None).await;
        assert_eq!((code, body["decision"].as_str()), (200, Some("allow")), "{hook}: {body}");
    }
    let (code, body) = flagger.call("rollback", "demo", None).await;
    assert_eq!((code, body["decision"].as_str()), (404, Some("hold")), "no rollback while healthy: {body}");
    for subset in ["canary", "stable"] {
        let query = format!("canary_gate_success_rate{{ subset=\"{subset}\", namespace=\"shop\" }}");
        let (code, body, rate) = prometheus(&agent, &query).await;
        assert_eq!(code, 200, "{body}");
        assert!(rate.is_some_and(|r| r >= 99.0), "{query}: {body}");
        let (_, body, p99) = prometheus(&agent, &format!("canary_gate_latency_p99_ms{{subset=\"{subset}\"}}")).await;
        assert!(p99.is_some_and(|ms| ms > 0.0 && ms < 1000.0), "p99 in ms: {body}");
        let (_, _, p50) = prometheus(&agent, &format!("canary_gate_latency_p50_ms{{subset=\"{subset}\"}}")).await;
        assert!(p50 <= p99, "p50 {p50:?} <= p99 {p99:?}");
    }
    let (code, verdict) = argo(&agent, "?rollout=demo&namespace=shop").await;
    assert_eq!((code, verdict["result"].as_str()), (200, Some("pass")), "{verdict}");
    assert_eq!(verdict["figures"]["canary"]["subset"], "v2", "{verdict}");

    // The canary breaks: 30% of its requests fail.
    fx.canary.fail_per_mille(300);
    let breach = Instant::now();
    let mut answers = Vec::new();
    loop {
        let (code, body) = flagger.call("rollback", "demo", None).await;
        answers.push(code);
        if code <= 202 {
            assert_eq!((code, body["decision"].as_str()), (200, Some("roll_back")), "{body}");
            break;
        }
        assert!(breach.elapsed() < Duration::from_secs(2), "no rollback 2 s after the breach: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = breach.elapsed();
    assert!(answers.iter().all(|c| *c == 404 || *c == 200), "404 until the breach, then 200: {answers:?}");
    assert!(asked <= Duration::from_secs(2), "{asked:?}");

    // After the breach nothing may go forward, and every reader agrees.
    let (code, body) = flagger.call("confirm-promotion", "demo", None).await;
    assert!((400..500).contains(&code), "promotion refused with a 4xx: {code} {body}");
    assert_eq!(body["decision"], "refuse");
    assert!(body["reason"].as_str().unwrap().contains("rolled back"), "{body}");
    assert!(!flagger.passes("confirm-traffic-increase").await);
    let (_, _, verdict_value) = prometheus(&agent, "canary_gate_verdict").await;
    assert_eq!(verdict_value, Some(0.0));
    let (code, verdict) = argo(&agent, "?rollout=demo").await;
    assert_eq!((code, verdict["result"].as_str(), verdict["phase"].as_str()), (200, Some("fail"), Some("rolled_back")));
    assert!(verdict["reasons"].as_array().is_some_and(|r| !r.is_empty()), "{verdict}");

    // Flagger's event hook ends up in the agent's status.
    let event = json!({"eventMessage": "Canary failed! Scaling down demo.shop", "eventType": "Warning", "timestamp": "1700000000000"});
    let (code, body) = flagger.call("event", "demo", Some(event)).await;
    assert_eq!(code, 200, "{body}");
    let status = agent.status().await.unwrap();
    let events = status["flagger_events"].as_array().unwrap();
    assert_eq!(events.last().map(|e| e["message"].clone()), Some(json!("Canary failed! Scaling down demo.shop")));
    let _ = traffic.stop(Duration::from_millis(200)).await;
    eprintln!("Flagger's rollback hook answered 200 {asked:?} after the canary started failing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_integration_endpoint_answers_bad_requests_with_json_errors() {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 1).await.unwrap();
    let agent = Agent::start(&fx.envoy, SPEC, "250ms").await.unwrap();
    let flagger = Flagger::new(&agent);
    agent.wait_for(Duration::from_secs(15), "a proxy reports", |s| s["proxies_reporting"] == 1).await.unwrap();

    // Argo Rollouts: JSON in every case; errors are 4xx (the web provider records them as errors).
    let (code, verdict) = argo(&agent, "?rollout=demo").await;
    assert_eq!((code, verdict["result"].as_str()), (200, Some("inconclusive")), "no traffic, no verdict: {verdict}");
    for (query, want) in [("", 400), ("?rollout=", 400), ("?rollout=demo&step=2", 400), ("?rollout=payments", 404)] {
        let (code, body) = argo(&agent, query).await;
        assert_eq!(code, want, "{query}: {body}");
        assert!(body["error"].is_string(), "{query}: {body}");
    }
    let r = reqwest::Client::new().post(format!("http://{}/v1/verdict?rollout=demo", agent.api)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());

    // Prometheus shape: vector(1) by GET and by form-encoded POST; anything else is bad_data.
    let (code, _, one) = prometheus(&agent, "vector(1)").await;
    assert_eq!((code, one), (200, Some(1.0)));
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/v1/query", agent.api))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("query={}", query_escape("vector(1)")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"]["result"][0]["value"][1], "1", "{body}");
    for query in
        ["up", "rate(canary_gate_verdict[1m])", "canary_gate_success_rate", "canary_gate_verdict{rollout=\"x\"}"]
    {
        let (code, body, _) = prometheus(&agent, query).await;
        assert_eq!(code, 400, "{query}: {body}");
        assert_eq!((body["status"].as_str(), body["errorType"].as_str()), (Some("error"), Some("bad_data")), "{body}");
    }
    let (code, body) = agent.get("/api/v1/query").await.unwrap();
    assert_eq!(code, 400, "no query: {body}");

    // Flagger: another canary, or a body that is not Flagger's, gets a JSON error; with no data
    // yet a rollout may start, but no step and no promotion is confirmed, and nothing rolls back.
    let (code, body) = flagger.call("confirm-rollout", "payments", None).await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("serves rollout \"demo\""), "{body}");
    let r = reqwest::Client::new()
        .post(format!("http://{}/flagger/rollback", agent.api))
        .header("content-type", "application/json")
        .body("{\"canary\":\"demo\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("name"));
    assert_eq!(flagger.call("confirm-rollout", "demo", None).await.0, 200);
    assert_eq!(flagger.call("confirm-traffic-increase", "demo", None).await.0, 412);
    assert_eq!(flagger.call("confirm-promotion", "demo", None).await.0, 412);
    assert_eq!(flagger.call("rollback", "demo", None).await.0, 404);
}
