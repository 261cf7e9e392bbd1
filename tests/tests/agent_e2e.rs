//! gate-agent end to end: the real agent binary against real Envoy running the filter, with
//! steady open-loop traffic at 200 requests per second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::time::Duration;

use canary_e2e::traffic::{Steady, time_to_zero};
use canary_e2e::{Agent, Fixture, route};
use serde_json::Value;

const RPS: u32 = 200;

/// The shared fast spec ([`canary_e2e::FAST_SPEC`]) with `extra` lines appended.
fn spec(extra: &str) -> String {
    format!("{}{extra}", canary_e2e::FAST_SPEC)
}

fn weight(s: &Value) -> f64 {
    s["canary_weight_percent"].as_f64().unwrap_or(-1.0)
}

fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or("")
}

/// The route the watched file holds now (what a restarted agent or Envoy would read).
fn durable(fx: &Fixture) -> canary_core::RouteConfig {
    let text = std::fs::read_to_string(fx.envoy.ecds_dir().join("canary-gate.json")).unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    canary_core::config::parse_route(canary_core::ecds::plugin_config_of(&file).unwrap().as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_is_at_zero_within_two_seconds_of_its_first_failure() {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 2).await.unwrap();
    let agent = Agent::start(&fx.envoy, &spec(""), "250ms").await.unwrap();
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), RPS);
    // Healthy on the first step, then broken: 30% of its requests fail.
    agent.wait_for(Duration::from_secs(15), "canary on a step", |s| weight(s) >= 10.0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fx.canary.fail_per_mille(300);
    let status = agent.wait_for(Duration::from_secs(10), "rolled back", |s| phase(s) == "rolled_back").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // 400 more requests, all of which must be stable
    let samples = traffic.stop(Duration::from_millis(300)).await;

    let cut = time_to_zero(&samples, "v1", "v2", 100)
        .unwrap_or_else(|| panic!("the canary was never cut off; status {status}\n{}", agent.log_tail(20)));
    assert!(cut <= Duration::from_secs(2), "canary traffic reached 0% {cut:?} after its first failure");
    assert!(status["reason"].as_str().unwrap().contains("rollback"), "{status}");
    assert!(samples.iter().all(|s| s.status != 0), "every request got a response");
    // The durable configuration agrees with the kill: weight 0, recorded as rolled back.
    let d = durable(&fx);
    assert_eq!(d.canary_weight.basis_points(), 0);
    assert_eq!(d.rollout_state.map(|r| r.phase), Some(canary_core::RolloutPhase::RolledBack));
    let snap = fx.envoy.snapshot().await.unwrap();
    assert!(snap.kill.is_some(), "the kill order reached the proxy: {snap:?}");
    eprintln!("canary at 0% {cut:?} after its first failure ({} requests)", samples.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_canary_is_promoted_through_every_step() {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 2).await.unwrap();
    let agent = Agent::start(&fx.envoy, &spec(""), "250ms").await.unwrap();
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), RPS);
    let mut seen = vec![0.0];
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while std::time::Instant::now() < deadline {
        let s = agent.status().await.unwrap();
        if seen.last() != Some(&weight(&s)) {
            seen.push(weight(&s));
        }
        if phase(&s) == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // From when the proxy reports 100% (and its workers have had time to take it), every
    // request goes to the canary. On a loaded machine that can be later than `succeeded`.
    let full = std::time::Instant::now() + Duration::from_secs(10);
    while fx.envoy.snapshot().await.map(|s| s.route.map(|r| r.canary_weight.basis_points())) != Ok(Some(10_000)) {
        assert!(std::time::Instant::now() < full, "the proxy never applied 100%");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let applied_at = traffic.elapsed() + Duration::from_millis(250);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let samples = traffic.stop(Duration::from_millis(300)).await;
    assert_eq!(seen, vec![0.0, 10.0, 30.0, 60.0, 100.0], "every step in order, then promotion\n{}", agent.log_tail(20));
    let s = agent.status().await.unwrap();
    assert_eq!(phase(&s), "succeeded");
    let d = durable(&fx);
    assert_eq!(d.canary_weight.basis_points(), 10_000);
    assert_eq!(d.rollout_state.map(|r| r.phase), Some(canary_core::RolloutPhase::Succeeded));
    let last: Vec<_> = samples.iter().filter(|s| s.sent >= applied_at).collect();
    assert!(last.len() >= 50, "{}", last.len());
    assert!(last.iter().all(|s| s.served_by == "v2"), "{last:?}");
    assert!(samples.iter().all(|s| s.status == 200));
    let (code, metrics) = agent.get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    // /metrics reflects it: the weight written, and the weight the proxy reports it applies.
    for line in [
        "canary_gate_agent_written_canary_weight_ratio{rollout=\"demo\"} 1",
        "canary_gate_agent_canary_weight_ratio{rollout=\"demo\",observed=\"max\"} 1",
        "canary_gate_agent_canary_weight_ratio{rollout=\"demo\",observed=\"min\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_200ms_slower_than_stable_is_rolled_back() {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 2).await.unwrap();
    // The absolute bound (1 s) would never catch it: the canary-vs-stable latency test must.
    let agent = Agent::start(&fx.envoy, &spec(""), "250ms").await.unwrap();
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), RPS);
    agent.wait_for(Duration::from_secs(15), "canary on a step", |s| weight(s) >= 10.0).await.unwrap();
    fx.canary.delay(Duration::from_millis(200));
    let status = agent.wait_for(Duration::from_secs(20), "rolled back", |s| phase(s) == "rolled_back").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = traffic.stop(Duration::from_millis(500)).await;
    let reason = status["reason"].as_str().unwrap();
    assert!(reason.contains("latency"), "rolled back for latency: {reason}");
    assert!(samples.iter().all(|s| s.status == 200), "slow, not failing");
    assert_eq!(durable(&fx).canary_weight.basis_points(), 0);
    let last: Vec<_> = samples.iter().rev().take(150).collect();
    assert!(
        last.iter().all(|s| s.served_by == "v1"),
        "{:?}",
        last.iter().filter(|s| s.served_by != "v1").collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_and_restarted_agent_resumes_the_same_step() {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 2).await.unwrap();
    // Slow steps (4 s) so the restart lands well inside one.
    let slow = spec("").replace("interval: 1s", "interval: 4s");
    let mut agent = Agent::start(&fx.envoy, &slow, "250ms").await.unwrap();
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), RPS);
    // Durable at 30% (the write runs in its own task: the decided weight can be ahead of it).
    agent.wait_for(Duration::from_secs(20), "second step", |s| s["written_weight_percent"] == 30.0).await.unwrap();
    agent.kill(); // SIGKILL: no chance to write anything on the way out
    let before = durable(&fx);
    assert_eq!(before.canary_weight.basis_points(), 3000);

    let agent = Agent::start(&fx.envoy, &slow, "250ms").await.unwrap();
    // The API answers before the rollout has read the durable state (the first status is empty).
    let s = agent.wait_for(Duration::from_secs(5), "resumed", |s| !matches!(phase(s), "" | "starting")).await.unwrap();
    assert_eq!((phase(&s), weight(&s), s["step"].as_u64()), ("progressing", 30.0, Some(1)), "{s}");
    // It never goes back to 10% or 0%, and moves on to 60% after a full interval.
    let resumed = std::time::Instant::now();
    let mut seen = Vec::new();
    while std::time::Instant::now() < resumed + Duration::from_secs(20) {
        let s = agent.status().await.unwrap();
        if seen.last() != Some(&weight(&s)) {
            seen.push(weight(&s));
        }
        if weight(&s) == 60.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, vec![30.0, 60.0], "{}", agent.log_tail(20));
    assert!(resumed.elapsed() >= Duration::from_secs(3), "a full interval on the resumed step first");
    assert!(durable(&fx).revision > before.revision);
    let _ = traffic.stop(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolled_back_rollout_stays_rolled_back_across_restarts_and_answers_operators() {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 1).await.unwrap();
    let mut agent = Agent::start(&fx.envoy, &spec(""), "250ms").await.unwrap();
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), 100);
    agent.wait_for(Duration::from_secs(15), "canary on a step", |s| weight(s) >= 10.0).await.unwrap();
    let (code, answer) = agent.post("/pause").await.unwrap();
    assert_eq!(code, 200, "{answer}");
    let (code, answer) = agent.post("/rollback").await.unwrap();
    assert_eq!(code, 200, "{answer}");
    let (code, answer) = agent.post("/promote").await.unwrap();
    assert_eq!(code, 409, "a rolled-back rollout cannot be promoted: {answer}");
    assert!(answer["error"].as_str().unwrap().contains("rolled_back"), "{answer}");
    assert_eq!(agent.terminate(Duration::from_secs(5)).unwrap(), Some(0), "graceful shutdown on SIGTERM");

    let agent = Agent::start(&fx.envoy, &spec(""), "250ms").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = agent.status().await.unwrap();
    assert_eq!((phase(&s), weight(&s)), ("rolled_back", 0.0), "{s}");
    let samples = traffic.stop(Duration::from_millis(200)).await;
    let last: Vec<_> = samples.iter().rev().take(250).collect();
    assert!(last.iter().all(|s| s.served_by == "v1"), "no canary traffic after a restart: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_and_flags_exit_64_naming_the_field() {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 1).await.unwrap();
    let bad = spec("").replace("threshold: 3", "treshold: 3");
    let err = Agent::start(&fx.envoy, &bad, "250ms").await.unwrap_err();
    assert!(err.contains("exited with exit status: 64"), "{err}");
    assert!(err.contains("treshold"), "names the field: {err}");
    let other = spec("").replace("canary: v2", "canary: v3");
    let err = Agent::start(&fx.envoy, &other, "250ms").await.unwrap_err();
    assert!(err.contains("exit status: 64") && err.contains("`canary`"), "{err}");
    let err = Agent::start(&fx.envoy, &spec(""), "soon").await.unwrap_err();
    assert!(err.contains("exit status: 64") && err.contains("--tick"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_table_that_does_not_follow_the_label_holds_the_rollout_and_says_why() {
    // The next release is labelled v3, but the route table still sends only `v2` to the canary
    // cluster: every "canary" request is served by stable.
    let json = format!(
        r#"{{"version":1,"rollout":"demo","stable":"v1","canary":"v3","canary_weight":0,"revision":1,{}}}"#,
        canary_e2e::LOCAL_SERVED_BY
    );
    let fx = Fixture::start(canary_core::config::parse_route(json.as_bytes()).unwrap(), 2).await.unwrap();
    let agent = Agent::start(&fx.envoy, &spec("").replace("canary: v2", "canary: v3"), "250ms").await.unwrap();
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), RPS);
    let held = agent
        .wait_for(Duration::from_secs(15), "a route mismatch", |s| {
            s["reason"].as_str().is_some_and(|r| r.contains("route mismatch"))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail(30)));
    assert!(held["reason"].as_str().unwrap().contains("cluster stable"), "{held}");
    // A healthy canary would pass every step of the fast spec in this time.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let s = agent.status().await.unwrap();
    let _ = traffic.stop(Duration::from_millis(300)).await;
    assert_eq!(weight(&s), 10.0, "nothing advances on misrouted traffic: {s}");
    assert_eq!(phase(&s), "progressing", "a mismatch is not a breach: {s}");
    assert_eq!(fx.canary.received(), 0);
    let snap = fx.envoy.snapshot().await.unwrap();
    let m = snap.misrouted.as_ref().unwrap();
    assert!(m.canary_label > 0 && m.last_cluster.as_deref() == Some("stable"), "{snap:?}");
    assert_eq!(snap.subsets[1].counters.requests, 0, "counted by what served them, not by their label");
    let (_, metrics) = agent.get("/metrics").await.unwrap();
    let line = metrics.lines().find(|l| l.starts_with("canary_gate_agent_misrouted_requests_total{")).unwrap();
    assert!(line.rsplit(' ').next().unwrap().parse::<u64>().unwrap() > 0, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_incident_replayed_the_proxy_refuses_a_hand_typed_99_percent() {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 2).await.unwrap();
    // Slow steps, so the rollout sits at 10% while the typo lands.
    let slow = spec("").replace("interval: 1s", "interval: 30s");
    let agent = Agent::start(&fx.envoy, &slow, "250ms").await.unwrap();
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), RPS);
    agent.wait_for(Duration::from_secs(15), "canary at 10%", |s| weight(s) == 10.0).await.unwrap();
    let applied = durable(&fx);
    let guard = applied.guard.expect("the agent writes the spec's guard with the weight");
    assert_eq!((guard.max_weight.percent(), guard.max_raise.percent()), (60.0, 30.0));
    let rejected = "extension_config_discovery.http_filter.canary-gate.update_rejected";
    let before = fx.envoy.stat(rejected).await.unwrap_or(0);
    let typed_at = traffic.elapsed();

    // Someone edits the live file by hand: 1 and 99 swapped, a new revision, an atomic rename.
    let mut typo = applied.clone();
    typo.canary_weight = canary_core::Weight::from_percent(99.0).unwrap();
    typo.revision += 1;
    fx.envoy.write_route(&typo).unwrap();
    fx.envoy.wait_for_stat(rejected, before + 1, Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let samples = traffic.stop(Duration::from_millis(300)).await;

    let after: Vec<_> = samples.iter().filter(|s| s.sent >= typed_at).collect();
    let lines = fx.envoy.log_lines("rejected configuration");
    assert!(
        lines.iter().any(|l| l.contains("99%") && l.contains("guard.max_weight 60%")),
        "the log names the field and both values: {lines:#?}"
    );
    let snap = fx.envoy.snapshot().await.unwrap();
    assert_eq!(snap.route.as_ref().unwrap().canary_weight.percent(), 10.0, "the previous weights keep serving");
    // The canary's share never rose: 10% of ~600 requests is 60 (binomial sd ≈ 7.3).
    assert!(after.len() >= 500, "load kept running: {} requests after the typo", after.len());
    let canary = after.iter().filter(|s| s.served_by == "v2").count();
    let expected = after.len() / 10;
    assert!(canary <= expected + 40, "{canary} of {} requests reached the canary after the typo", after.len());
    assert_eq!(weight(&agent.status().await.unwrap()), 10.0);
}

/// Writes `weight` into the watched file as a person would: the applied config, the weight
/// changed, a new revision, with or without the guard block.
fn hand_write(fx: &Fixture, weight: f64, keep_guard: bool) -> u64 {
    let mut typed = durable(fx);
    typed.canary_weight = canary_core::Weight::from_percent(weight).unwrap();
    typed.revision += 1;
    if !keep_guard {
        typed.guard = None;
    }
    fx.envoy.write_route(&typed).unwrap();
    typed.revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raise_written_around_the_guard_is_reverted_within_a_tick_and_counts_for_nothing() {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 2).await.unwrap();
    let slow = spec("").replace("interval: 1s", "interval: 30s");
    let agent = Agent::start(&fx.envoy, &slow, "250ms").await.unwrap();
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), RPS);
    agent.wait_for(Duration::from_secs(15), "canary at 10%", |s| weight(s) == 10.0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let typed_at = traffic.elapsed();
    let revision = hand_write(&fx, 99.0, false);
    let s = agent
        .wait_for(Duration::from_secs(5), "the foreign write seen", |s| s["foreign_writes_total"].as_u64() >= Some(1))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail(20)));
    assert!(s["last_foreign_write"].as_str().unwrap().contains("99%"), "{s}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let samples = traffic.stop(Duration::from_millis(300)).await;
    let d = durable(&fx);
    assert!(d.revision > revision, "the rollout's weight was written over it");
    assert_eq!(d.canary_weight.percent(), 10.0);
    let s = agent.status().await.unwrap();
    assert_eq!((phase(&s), weight(&s)), ("progressing", 10.0), "{s}");
    // (That the step's evidence restarted is checked tick by tick in rollout.rs's unit tests.)
    // From 1 s after the write on, 250-ms bins are back at or below the agent's weight.
    let settled = typed_at + Duration::from_secs(1);
    let late: Vec<_> = samples.iter().filter(|x| x.sent >= settled).collect();
    assert!(late.len() >= 300, "{}", late.len());
    for bin in late.chunks(50) {
        let canary = bin.iter().filter(|x| x.served_by == "v2").count();
        assert!(canary <= 5 + 8, "{canary} of {} on the canary a second after the write", bin.len());
    }
    let (_, metrics) = agent.get("/metrics").await.unwrap();
    assert!(metrics.contains("canary_gate_agent_foreign_writes_total{rollout=\"demo\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreign_writes_to_zero_and_to_a_lower_weight_are_a_rollback_and_a_pause() {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 2).await.unwrap();
    let slow = spec("").replace("interval: 1s", "interval: 3s");
    let agent = Agent::start(&fx.envoy, &slow, "250ms").await.unwrap();
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), RPS);
    agent.wait_for(Duration::from_secs(20), "canary at 30%", |s| weight(s) == 30.0).await.unwrap();
    hand_write(&fx, 5.0, true);
    let s = agent.wait_for(Duration::from_secs(5), "paused", |s| phase(s) == "paused").await.unwrap();
    assert_eq!(weight(&s), 5.0, "{s}");
    assert!(s["reason"].as_str().unwrap().contains("paused at 5%"), "{s}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(weight(&agent.status().await.unwrap()), 5.0, "a pause holds");
    assert_eq!(durable(&fx).rollout_state.map(|r| r.phase), Some(canary_core::RolloutPhase::Paused));
    hand_write(&fx, 0.0, true);
    let s = agent.wait_for(Duration::from_secs(5), "rolled back", |s| phase(s) == "rolled_back").await.unwrap();
    assert!(s["reason"].as_str().unwrap().contains("operator rollback"), "{s}");
    let _ = traffic.stop(Duration::from_millis(300)).await;
    assert_eq!(durable(&fx).rollout_state.map(|r| r.phase), Some(canary_core::RolloutPhase::RolledBack));
}
