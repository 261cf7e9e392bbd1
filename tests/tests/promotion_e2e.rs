//! The promotion gate end to end (issue 19): the real gate-agent binary, with the default
//! promotion settings (gate on, error margin max(2 × stable, stable + 0.5 pp), p99 margin +20%,
//! α 0.01), judging real Envoy running the filter, at about 10 canary requests a second.
//!
//! Both scenarios run the same rollout; the bad canary is watched for [`BUDGET`], the healthy one
//! gets [`HEALTHY_BUDGET`]:
//! * a canary failing 1% of its requests against a stable failing 0.1% (10×, outside the
//!   margin) passes every check of the spec (success rate ≥ 98%) and, before the gate, was
//!   promoted on that alone. It must never be promoted: it is held with *insufficient evidence*,
//!   which `/status`, the verdict text, `/metrics`, Flagger's `confirm-*` hooks (412), Argo's
//!   `/v1/verdict` (`inconclusive`) and the query endpoint's `canary_gate_verdict` (no sample) all
//!   say, or rolled back once the comparison test decides;
//! * a healthy canary (no failures, the same stable) must be promoted within the same budget, and
//!   while it is held the status says how much more is needed ("about N more canary requests,
//!   about T at the current rate").
//!
//! Why these steps: 100 requests a second with a first step of 10% is the 10 canary requests a
//! second the issue asks about. The gate's evidence accumulates over the whole rollout and holds
//! the *first* step until it shows; at 10 canary requests a second that takes about 1,400 canary
//! requests for errors (the margin is about 0.5% above a stable near 0.1%; no canary failure yet
//! rules out 0.5% only after that many) and, for latency, 2,000 stable requests to fix the p99
//! reference and about 1,000 canary requests after it. A rollout of many steps would add only
//! `interval` per step once the evidence is there, but each step at 10% would keep the canary
//! rate at 10/s; so two steps, 10% then 50%: the second is reached only through the gate, and it
//! shows the gate does not hold a step once the evidence stands. A healthy canary that fails as
//! often as the stable (0.1%) would need about 4,000 canary requests, some 7 minutes at this rate;
//! the healthy canary here fails never, which is within the margin by the widest gap: it was
//! promoted after 138–179 s (about 1,650 canary requests on the first step), and the bad canary
//! rolled back by the comparison test after 50–80 s, in runs on a loaded 2-core machine. Under
//! load the latency gate needs more: at a load average of 8–10 (other builds) the healthy canary's
//! share of requests slower than 1.2 × the stable's p99 was 0.32%, and ruling out the 1% margin
//! took about 2,600 canary requests, past 240 s (one run of 2026-12-03). The latency gate compares
//! with the stable's concurrent slow share since issue 19's drift fix, so a slowdown common to both
//! versions no longer holds it for good (it held it past the budget in three of six runs before);
//! [`HEALTHY_BUDGET`] leaves room for that load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::time::{Duration, Instant};

use canary_e2e::traffic::Steady;
use canary_e2e::{Agent, Fixture, route};
use serde_json::{Value, json};

/// 100 requests a second: 10 a second on the canary at the first step.
const RPS: u32 = 100;

/// The time each scenario gets: the healthy canary must be promoted within it, the bad one must
/// not be.
const BUDGET: Duration = Duration::from_secs(240);

/// The time the healthy canary gets to be promoted: about 4,000 canary requests at 10 a second
/// after the first step starts, against the ~2,600 the latency gate needed on a loaded machine.
const HEALTHY_BUDGET: Duration = Duration::from_secs(420);

/// Default α and promotion settings; checks a 1% canary passes (98% over 10 s at 10/s). The
/// duration SLO is 5 s, not the usual 1 s: this test is about the promotion gate, and with the
/// load average at 14 on 2 cores the debug build's p99 passed 2 s and the latency SLO test rolled
/// back even the healthy canary (the latency gate still compares canary with stable).
const SPEC: &str = "
name: demo
stable: v1
canary: v2
interval: 5s
threshold: 3
stepWeights: [10, 50]
maxWeight: 50
minRequests: 50
metrics:
  - name: request-success-rate
    thresholdRange: { min: 98 }
    interval: 10s
  - name: request-duration
    thresholdRange: { max: 5000 }
    interval: 10s
";

fn weight(s: &Value) -> f64 {
    s["canary_weight_percent"].as_f64().unwrap_or(-1.0)
}

fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or("")
}

fn held(s: &Value) -> bool {
    s["insufficient_evidence"].is_object()
}

/// What every reader of the agent said about one held moment.
#[derive(Debug)]
struct HeldAnswers {
    status: Value,
    metrics: String,
    confirm_traffic_increase: (u16, Value),
    confirm_promotion: (u16, Value),
    argo: Value,
    query: Value,
}

/// Asks every endpoint while the gate holds, and keeps the answers only if the status before and
/// after is the same held step (the same `since_ms`), so that they describe one moment.
async fn while_held(agent: &Agent, http: &reqwest::Client) -> Option<HeldAnswers> {
    let before = agent.status().await.ok()?;
    if !held(&before) {
        return None;
    }
    let flagger = |hook: &'static str| {
        let payload = json!({"name": "demo", "namespace": "shop", "phase": "Progressing", "checksum": "1"});
        let url = format!("http://{}/flagger/{hook}", agent.api);
        async move {
            let r = http.post(url).json(&payload).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let confirm_traffic_increase = flagger("confirm-traffic-increase").await;
    let confirm_promotion = flagger("confirm-promotion").await;
    let (_, argo) = agent.get("/v1/verdict?rollout=demo&namespace=shop").await.ok()?;
    let (_, query) = agent.get("/api/v1/query?query=canary_gate_verdict").await.ok()?;
    let (_, metrics) = agent.get("/metrics").await.ok()?;
    let after = agent.status().await.ok()?;
    let same = held(&after)
        && after["insufficient_evidence"]["since_ms"] == before["insufficient_evidence"]["since_ms"]
        && after["step"] == before["step"]
        && after["recent_verdicts"].as_array().and_then(|v| v.last())
            == before["recent_verdicts"].as_array().and_then(|v| v.last());
    same.then(|| HeldAnswers {
        status: before,
        metrics,
        confirm_traffic_increase,
        confirm_promotion,
        argo: serde_json::from_str(&argo).unwrap(),
        query: serde_json::from_str(&query).unwrap(),
    })
}

/// Every reader says "held, insufficient evidence" in its own terms.
fn assert_held_everywhere(a: &HeldAnswers) {
    let s = &a.status;
    let text = s["insufficient_evidence"]["text"].as_str().unwrap();
    assert!(text.starts_with("insufficient evidence to advance at 10%"), "{text}");
    let latest = s["recent_verdicts"].as_array().and_then(|v| v.last()).unwrap();
    assert_eq!(latest["verdict"], "pass (insufficient evidence to promote)", "{latest}");
    assert_eq!(latest["reasons"][0].as_str(), Some(text), "the verdict text says why it is held: {latest}");
    assert!(a.metrics.contains("canary_gate_agent_insufficient_evidence{rollout=\"demo\"} 1"), "{}", a.metrics);
    for (hook, (code, body)) in
        [("confirm-traffic-increase", &a.confirm_traffic_increase), ("confirm-promotion", &a.confirm_promotion)]
    {
        assert_eq!(*code, 412, "{hook}: {body}");
        assert!(body["reason"].as_str().unwrap().starts_with("insufficient evidence"), "{hook}: {body}");
    }
    assert_eq!(a.argo["result"], "inconclusive", "{}", a.argo);
    assert_eq!(a.query["status"], "success", "{}", a.query);
    assert_eq!(a.query["data"]["result"], json!([]), "canary_gate_verdict has no sample while held: {}", a.query);
}

/// "about N more canary requests, about T at the current rate (R/s)": N, and T in seconds.
fn how_much_more(text: &str) -> Option<(u64, f64)> {
    let (before, after) = text.split_once(" more canary requests, about ")?;
    let n = before.rsplit_once("about ")?.1.parse().ok()?;
    let (t, _) = after.split_once(" at the current rate")?;
    Some((n, seconds(t)?))
}

/// `1m30s`, `45s`, `2h3m` as seconds (the agent's `human_duration`).
fn seconds(text: &str) -> Option<f64> {
    let (mut total, mut number) = (0.0, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600.0,
            'm' => 60.0,
            's' => 1.0,
            _ => return None,
        };
        total += number.parse::<f64>().ok()? * unit;
        number.clear();
    }
    number.is_empty().then_some(total)
}

#[test]
fn how_much_more_reads_the_agents_sentence() {
    let text = "insufficient evidence to advance at 10%: about 1234 more canary requests, about 2m3s at the current rate (10.0/s); errors: ...";
    assert_eq!(how_much_more(text), Some((1234, 123.0)));
    assert_eq!(
        how_much_more("insufficient evidence to advance at 10%: not expected at the canary's current rates"),
        None
    );
    assert_eq!(seconds("1h1s"), Some(3601.0));
    assert_eq!(seconds("5x"), None);
}

/// Starts the fixture and agent with the stable failing 0.1% and the canary `canary_per_mille`.
async fn start(canary_per_mille: u32) -> (Fixture, Agent, Steady) {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 2).await.unwrap();
    fx.stable.fail_per_mille(1);
    fx.canary.fail_per_mille(canary_per_mille);
    let agent = Agent::start(&fx.envoy, SPEC, "250ms").await.unwrap();
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), RPS);
    (fx, agent, traffic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_failing_ten_times_as_often_as_the_stable_is_never_promoted_at_10_canary_requests_a_second() {
    let (fx, agent, traffic) = start(10).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let started = Instant::now();
    let (mut max_weight, mut first_held, mut checked, mut not_expected) = (0.0f64, None, None, false);
    let mut last = Value::Null;
    while started.elapsed() < BUDGET {
        let s = agent.status().await.unwrap();
        max_weight = max_weight.max(weight(&s));
        assert!(
            !matches!(phase(&s), "promoting" | "succeeded") && weight(&s) <= 10.0,
            "a canary failing 10× the stable's rate went past its first step after {:?}: {s}\n{}",
            started.elapsed(),
            agent.log_tail(30)
        );
        if phase(&s) == "rolled_back" {
            last = s;
            break;
        }
        if held(&s) {
            first_held.get_or_insert(started.elapsed());
            let text = s["insufficient_evidence"]["text"].as_str().unwrap_or("");
            // Once the canary's own failures are in, the gate says it does not expect to show.
            not_expected |= text.contains("not expected at the canary's current rates");
            if checked.is_none()
                && let Some(answers) = while_held(&agent, &http).await
            {
                assert_held_everywhere(&answers);
                checked = Some(started.elapsed());
            }
        }
        last = s;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let samples = traffic.stop(Duration::from_millis(300)).await;
    let canary: Vec<_> = samples.iter().filter(|x| x.served_by == "v2").collect();
    let failed = canary.iter().filter(|x| x.status >= 500).count();
    assert!(first_held.is_some(), "the gate never held the step: {last}\n{}", agent.log_tail(30));
    assert!(checked.is_some(), "never a stable held moment to ask every endpoint in: {last}");
    let outcome = if phase(&last) == "rolled_back" {
        let reason = last["reason"].as_str().unwrap_or("");
        assert!(reason.contains("rollback") || reason.contains("roll"), "{last}");
        format!("rolled back after {:.1}s: {reason}", started.elapsed().as_secs_f64())
    } else {
        assert!(not_expected, "held, but never saying the canary is not expected to show: {last}");
        assert!(held(&last) && weight(&last) == 10.0, "still held on the first step: {last}");
        format!("still held at 10% after {:.0}s: {}", BUDGET.as_secs_f64(), last["insufficient_evidence"]["text"])
    };
    // The durable configuration never went past the first step either.
    assert!(max_weight <= 10.0);
    eprintln!(
        "bad canary: {} canary requests ({failed} failed) of {}; held from {:.1}s, every endpoint checked at {:.1}s; {outcome}",
        canary.len(),
        samples.len(),
        first_held.unwrap_or_default().as_secs_f64(),
        checked.unwrap_or_default().as_secs_f64(),
    );
    drop(fx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_canary_is_promoted_at_10_canary_requests_a_second_and_says_how_much_more_it_needs_meanwhile() {
    let (fx, agent, traffic) = start(0).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let started = Instant::now();
    let (mut first_held, mut checked, mut estimate, mut advanced) = (None, None, None, None);
    let mut not_expected = 0u32;
    let mut last = Value::Null;
    while started.elapsed() < HEALTHY_BUDGET {
        let s = agent.status().await.unwrap();
        assert_ne!(phase(&s), "rolled_back", "a healthy canary was rolled back: {s}\n{}", agent.log_tail(30));
        if weight(&s) > 10.0 {
            advanced.get_or_insert(started.elapsed());
        }
        if phase(&s) == "succeeded" {
            last = s;
            break;
        }
        if held(&s) && weight(&s) == 10.0 {
            first_held.get_or_insert(started.elapsed());
            let text = s["insufficient_evidence"]["text"].as_str().unwrap_or("");
            // Once every test has its margin (the latency test's waits for the stable's p99) and
            // the canary a rate, a held status says how much more, and how long. (Not always: the
            // estimate assumes the canary goes on at its rate or the stable's, whichever is
            // higher, so a stable briefly slower than its reference reads "not expected".)
            if text.contains("not expected") {
                not_expected += 1;
            }
            if s["insufficient_evidence"]["more_canary_requests"].is_number()
                && s["insufficient_evidence"]["canary_requests_per_s"].is_number()
            {
                let (n, t) = how_much_more(text).unwrap_or_else(|| panic!("no \"about N more ..., about T\": {text}"));
                assert_eq!(s["insufficient_evidence"]["more_canary_requests"].as_u64(), Some(n), "{s}");
                estimate.get_or_insert((started.elapsed(), n, t));
            }
            if checked.is_none()
                && estimate.is_some()
                && let Some(answers) = while_held(&agent, &http).await
            {
                assert_held_everywhere(&answers);
                // The gauge of how much more: the status's figure, or no sample when it has none
                // (under load the estimate may read "not expected" for a moment; see above).
                let needed = answers.status["insufficient_evidence"]["more_canary_requests"].as_u64();
                let gauge = "canary_gate_agent_evidence_needed_requests{rollout=\"demo\"}";
                match needed {
                    Some(n) => assert!(answers.metrics.contains(&format!("{gauge} {n}")), "{}", answers.metrics),
                    None => assert!(!answers.metrics.contains(gauge), "{}", answers.metrics),
                }
                checked = Some(started.elapsed());
            }
        }
        last = s;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let samples = traffic.stop(Duration::from_millis(300)).await;
    assert_eq!(
        phase(&last),
        "succeeded",
        "a healthy canary was not promoted within {HEALTHY_BUDGET:?}: {last}\n{}",
        agent.log_tail(30)
    );
    let promoted = started.elapsed();
    let (first_held, checked) = (first_held.expect("the gate held the first step"), checked.expect("checked"));
    let (at, n, t) = estimate.expect("an estimate of how much more");
    let advanced = advanced.expect("advanced past 10%");
    // The step advanced through the gate: its reason names the evidence.
    let canary = samples.iter().filter(|x| x.served_by == "v2").count();
    eprintln!(
        "healthy canary: promoted after {:.1}s ({canary} canary requests of {}); held at 10% from {:.1}s, \
         first estimate at {:.1}s: about {n} more canary requests, about {t:.0}s; past 10% at {:.1}s \
         ({:.0}s after that estimate); every endpoint checked at {:.1}s; {not_expected} polls read \"not expected\"",
        promoted.as_secs_f64(),
        samples.len(),
        first_held.as_secs_f64(),
        at.as_secs_f64(),
        advanced.as_secs_f64(),
        (advanced - at).as_secs_f64(),
        checked.as_secs_f64()
    );
    drop(fx);
}
