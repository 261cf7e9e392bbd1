//! Crashes and restarts with real processes: Envoy SIGKILLed mid-rollout and started again, the
//! agent SIGKILLed at random points while it writes the filter configuration, the agent SIGKILLed
//! while the promotion gate holds a step (its evidence resumes from the checkpoint), and a
//! configuration directory that becomes unwritable and then writable again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canary_core::RouteConfig;
use canary_e2e::traffic::Steady;
use canary_e2e::{Agent, Envoy, FAST_SPEC, Fixture, route};
use gate_agent::router::STAGING_DIR;
use serde_json::Value;

/// The file Envoy watches, in its watched directory.
const WATCHED: &str = "canary-gate.json";

const REJECTED: &str = "extension_config_discovery.http_filter.canary-gate.update_rejected";

fn weight(s: &Value) -> f64 {
    s["canary_weight_percent"].as_f64().unwrap_or(-1.0)
}

fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or("")
}

/// Canary requests the agent has counted since it started.
fn canary_requests(s: &Value) -> u64 {
    let subsets = s["subsets"].as_array().map(Vec::as_slice).unwrap_or_default();
    subsets.iter().find(|v| v["role"] == "canary").and_then(|v| v["requests_total"].as_u64()).unwrap_or(0)
}

/// A sample's value in Prometheus text, by its name and labels (`name{labels}`).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A watched file's route, or why the bytes are not a complete, valid watched file.
fn parse_watched(bytes: &[u8]) -> Result<RouteConfig, String> {
    let file: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    canary_core::ecds::wasm_path_of(&file).ok_or("no wasm module path")?;
    let text = canary_core::ecds::plugin_config_of(&file).ok_or("no canary-gate plugin configuration")?;
    canary_core::config::parse_route(text.as_bytes()).map_err(|e| e.to_string())
}

/// The route the watched file holds now.
fn durable(envoy: &Envoy) -> RouteConfig {
    let path = envoy.ecds_dir().join(WATCHED);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_watched(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The agent's evidence checkpoint, which it keeps in the staging directory.
const EVIDENCE: &str = "canary-gate.json.evidence.json";

/// The files in the staging directory but the evidence checkpoint, sorted; none before the
/// agent's first write created it.
fn staged(staging: &Path) -> Vec<String> {
    if staging.exists() { entries(staging).into_iter().filter(|n| n != EVIDENCE).collect() } else { Vec::new() }
}

/// The process id in a staged temporary file's name (`canary-gate.json.<pid>.<n>.tmp`, or
/// `canary-gate.json.evidence.<pid>.tmp` for the evidence checkpoint).
fn temp_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(&format!("{WATCHED}."))?.strip_suffix(".tmp")?;
    rest.strip_prefix("evidence.").unwrap_or(rest).split('.').next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Envoy killed mid-rollout
// ---------------------------------------------------------------------------------------------

/// Two steps (20%, 50%), a check every 5 s. The metrics look back 20 s, so the data from before
/// an outage of a few seconds is still in their windows: only the agent's knowing that no proxy
/// answered keeps a check that falls due in the outage from passing on stale data.
const TWO_STEPS: &str = "
name: demo
stable: v1
canary: v2
interval: 5s
threshold: 3
stepWeights: [20, 50]
maxWeight: 50
minRequests: 50
metrics:
  - name: request-success-rate
    thresholdRange: { min: 99 }
    interval: 20s
  - name: request-duration
    thresholdRange: { max: 1000 }
    interval: 20s
# About restarts, not evidence: steps advance on passing checks alone.
promotion: { requireEvidence: false }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_killed_mid_rollout_and_restarted_holds_the_step_sees_the_reset_and_carries_on() {
    let mut fx = Fixture::start(route(0.0, 1, "").unwrap(), 2).await.unwrap();
    let agent = Agent::start(&fx.envoy, TWO_STEPS, "250ms").await.unwrap();
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), 200);
    let last_step = agent.wait_for(Duration::from_secs(30), "the last step", |s| weight(s) == 50.0).await.unwrap();
    // Enough canary requests on the step that only its interval holds it: its check falls due
    // while Envoy is down.
    let at_entry = canary_requests(&last_step);
    let s = agent
        .wait_for(Duration::from_secs(20), "minRequests on the last step", |s| {
            canary_requests(s) >= at_entry + 100 || weight(s) != 50.0
        })
        .await
        .unwrap();
    assert_eq!(weight(&s), 50.0, "moved on before Envoy could be killed mid-step\n{}", agent.log_tail(20));
    let before = durable(&fx.envoy);
    let instance_before = fx.envoy.snapshot().await.unwrap().instance.id;
    let (_, metrics) = agent.get("/metrics").await.unwrap();
    assert_eq!(sample(&metrics, "canary_gate_agent_proxy_resets_total{rollout=\"demo\"}"), Some(0.0), "{metrics}");

    fx.envoy.kill();
    let killed = Instant::now();
    let mut noticed_down = false;
    while killed.elapsed() < Duration::from_secs(7) {
        let s = agent.status().await.unwrap();
        assert_eq!(
            (phase(&s), weight(&s), s["step"].as_u64()),
            ("progressing", 50.0, Some(1)),
            "the step holds while Envoy is down: {s}\n{}",
            agent.log_tail(20)
        );
        noticed_down |=
            s["proxies_reporting"] == 0 && s["not_ready"].as_str().is_some_and(|r| r.starts_with("no proxy answered"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(noticed_down, "the agent never reported that no proxy answered\n{}", agent.log_tail(20));
    let (code, body) = agent.get("/readyz").await.unwrap();
    assert_eq!(code, 503, "not ready while no proxy answers: {body}");
    assert_eq!(durable(&fx.envoy), before, "nothing was written while Envoy was down");

    fx.envoy.restart().await.unwrap();
    let snap = fx.envoy.snapshot().await.unwrap();
    assert_ne!(snap.instance.id, instance_before, "a new Envoy, with counters from zero");
    let applied = snap.route.as_ref().map(|r| r.revision);
    assert!(applied >= Some(before.revision), "the restarted Envoy applies the durable config: {snap:?}");
    agent
        .wait_for(Duration::from_secs(20), "the reset seen", |s| s["proxy_resets_total"].as_u64() >= Some(1))
        .await
        .unwrap();
    let logged = std::fs::read_to_string(agent.log_path()).unwrap();
    let resets: Vec<&str> = logged.lines().filter(|l| l.contains("proxy counters reset")).collect();
    assert_eq!(resets.len(), 1, "one reset logged:\n{}", agent.log_tail(30));
    assert!(resets[0].contains(&fx.envoy.snapshot.to_string()), "names the proxy: {}", resets[0]);

    // From the same step to promotion: nothing in between, nothing back.
    let mut seen = vec![50.0];
    let deadline = Instant::now() + Duration::from_secs(30);
    let end = loop {
        let s = agent.status().await.unwrap();
        if seen.last() != Some(&weight(&s)) {
            seen.push(weight(&s));
        }
        if phase(&s) == "succeeded" || Instant::now() >= deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(phase(&end), "succeeded", "{end}\n{}", agent.log_tail(30));
    assert_eq!(seen, vec![50.0, 100.0], "carried on from the step it was on\n{}", agent.log_tail(30));
    assert_eq!(end["proxy_resets_total"], 1, "{end}");
    let after = durable(&fx.envoy);
    assert_eq!(after.canary_weight.basis_points(), 10_000);
    assert_eq!(after.rollout_state.map(|r| r.phase), Some(canary_core::RolloutPhase::Succeeded));
    assert_eq!(after.revision, before.revision + 2, "only the promotion and its completion were written");
    let (_, metrics) = agent.get("/metrics").await.unwrap();
    assert_eq!(sample(&metrics, "canary_gate_agent_proxy_resets_total{rollout=\"demo\"}"), Some(1.0), "{metrics}");
    assert_eq!(agent.get("/readyz").await.unwrap().0, 200);

    // The restarted Envoy took the promotion: every request now goes to the canary.
    fx.envoy.wait_for_revision(after.revision, Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = traffic.stop(Duration::from_millis(300)).await;
    let last: Vec<_> = samples.iter().rev().take(50).collect();
    assert!(last.iter().all(|s| s.served_by == "v2" && s.status == 200), "{last:?}");
}

// ---------------------------------------------------------------------------------------------
// The agent killed while the promotion gate holds a step
// ---------------------------------------------------------------------------------------------

/// The gate on, a check every 2 s: at a few canary requests a second a healthy canary is held on
/// its first step for minutes, gathering evidence.
const GATED: &str = "
name: demo
stable: v1
canary: v2
interval: 2s
threshold: 3
stepWeights: [10, 50]
maxWeight: 50
minRequests: 10
metrics:
  - name: request-success-rate
    thresholdRange: { min: 90 }
    interval: 10s
";

/// The gate's error test's canary requests, while the gate holds.
fn gate_trials(s: &Value) -> Option<u64> {
    s["insufficient_evidence"]["tests"].as_array()?.first()?["canary_trials"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_while_the_gate_holds_resumes_the_evidence_instead_of_starting_from_zero() {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 2).await.unwrap();
    let mut agent = Agent::start(&fx.envoy, GATED, "250ms").await.unwrap();
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), 40);
    let s = agent
        .wait_for(Duration::from_secs(40), "the gate holding with 60 canary requests", |s| {
            gate_trials(s).is_some_and(|n| n >= 60)
        })
        .await
        .unwrap();
    assert_eq!(weight(&s), 10.0, "{s}");
    // Past one save period (5 s), so a checkpoint holds most of it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = agent.status().await.unwrap();
    let at_kill = gate_trials(&before).unwrap();
    let revision = durable(&fx.envoy).revision;
    agent.kill();
    let evidence = fx.envoy.ecds_dir().join(STAGING_DIR).join(EVIDENCE);
    let bytes = std::fs::read(&evidence).unwrap();
    eprintln!("evidence checkpoint: {} bytes", bytes.len());
    let saved: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(saved["revision"], revision, "the checkpoint names the durable revision");
    let saved_trials = saved["judge"]["gate_errors"][0]["trials"].as_u64().unwrap();
    // The status is read a moment before the kill, and the agent may save once in between (one
    // run saved 91 against 88 read): allow 5 s of canary requests (about 4 a second) above it.
    assert!(saved_trials >= 60 && saved_trials <= at_kill + 20, "saved {saved_trials}, {at_kill} at the kill");
    tokio::time::sleep(Duration::from_secs(2)).await; // requests while no agent runs are left out

    let agent = Agent::start(&fx.envoy, GATED, "250ms").await.unwrap();
    let s =
        agent.wait_for(Duration::from_secs(20), "the gate holding again", |s| gate_trials(s).is_some()).await.unwrap();
    let (resumed, counted) = (gate_trials(&s).unwrap(), canary_requests(&s));
    eprintln!(
        "evidence: {at_kill} canary requests at the kill, {saved_trials} saved, {resumed} after the restart of which {counted} new"
    );
    assert_eq!(weight(&s), 10.0, "the same step: {s}");
    assert_eq!(durable(&fx.envoy).revision, revision, "a restart writes nothing");
    assert!(
        resumed >= saved_trials + counted.saturating_sub(5) && resumed > counted,
        "the gate's evidence continues from the checkpoint ({saved_trials}) rather than from zero: {resumed}, {counted} counted since the restart\n{}",
        agent.log_tail(20)
    );
    let logged = std::fs::read_to_string(agent.log_path()).unwrap();
    assert!(logged.contains("resumed the statistics from the evidence checkpoint"), "{}", agent.log_tail(20));
    let listed: Vec<String> = entries(&fx.envoy.ecds_dir()).into_iter().filter(|n| n != STAGING_DIR).collect();
    assert_eq!(listed, [WATCHED], "the checkpoint is not in the watched directory");
    traffic.stop(Duration::from_millis(300)).await;
}

// ---------------------------------------------------------------------------------------------
// The agent killed while it writes
// ---------------------------------------------------------------------------------------------

/// Steps 30 s apart, so the rollout stays on its first step; the writes come from operator pauses
/// and resumes, each of which the agent writes durably.
const SLOW_STEPS: &str = "
name: demo
stable: v1
canary: v2
interval: 30s
threshold: 3
stepWeights: [10, 20, 30, 40, 50]
maxWeight: 50
minRequests: 50
metrics:
  - name: request-success-rate
    thresholdRange: { min: 99 }
    interval: 2s
promotion: { requireEvidence: false }
";

/// What the watcher of the watched directory found.
#[derive(Debug, Default)]
struct Watched {
    /// Every complete file seen, by revision.
    files: BTreeMap<u64, RouteConfig>,
    /// What should never be there.
    violations: Vec<String>,
    looks: u64,
}

/// What Envoy applied, read over and over from its snapshot listener.
#[derive(Debug, Default)]
struct Applied {
    /// (revision, route), in the order read.
    routes: Vec<(u64, RouteConfig)>,
    /// Revisions Envoy applied that were newer than the watched file read right after.
    newer_than_disk: Vec<String>,
}

/// Polls the watched directory as fast as it reasonably can, in its own thread: every entry must
/// be the watched file, complete and valid, or the agent's staging directory.
fn watch_directory(dir: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Watched> {
    std::thread::spawn(move || {
        let mut w = Watched::default();
        while !stop.load(Ordering::SeqCst) {
            w.looks += 1;
            // Gone only when the test is over (a failed test drops the fixture under this thread).
            let Ok(listing) = std::fs::read_dir(&dir) else { break };
            for entry in listing {
                let Ok(entry) = entry else { continue };
                let name = entry.file_name().to_string_lossy().into_owned();
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if name == STAGING_DIR && is_dir {
                    continue;
                }
                if name != WATCHED {
                    w.violations.push(format!("{name} appeared in the watched directory"));
                    continue;
                }
                let bytes = match std::fs::read(entry.path()) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => panic!("{}: {e}", entry.path().display()),
                };
                match parse_watched(&bytes) {
                    Ok(route) => {
                        let revision = route.revision;
                        if let Some(earlier) = w.files.insert(revision, route.clone())
                            && earlier != route
                        {
                            w.violations.push(format!("two different files with revision {revision}"));
                        }
                    }
                    Err(e) => w.violations.push(format!("{WATCHED} ({} bytes) is not complete: {e}", bytes.len())),
                }
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        w
    })
}

/// Pauses and resumes the rollout through `api` as fast as the agent answers, until aborted;
/// counts the actions it accepted (each one a durable write).
async fn pause_resume(api: std::net::SocketAddr, accepted: Arc<AtomicU64>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    for action in ["pause", "resume"].iter().cycle() {
        match http.post(format!("http://{api}/{action}")).send().await {
            Ok(r) if r.status().is_success() => {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// xorshift64: random kill times without a dependency; the seed is printed to replay a run.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_while_writing_never_leaves_a_partial_file_where_envoy_watches() {
    const ROUNDS: usize = 30;
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 1).await.unwrap();
    let ecds = fx.envoy.ecds_dir();
    let staging = ecds.join(STAGING_DIR);
    let first = durable(&fx.envoy).revision;
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), 100);

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_directory(ecds.clone(), Arc::clone(&stop));
    let applied: Arc<Mutex<Applied>> = Arc::default();
    let poller = {
        let (applied, stop) = (Arc::clone(&applied), Arc::clone(&stop));
        let (http, url) = (fx.envoy.http().clone(), format!("http://{}/canary-gate/v1/snapshot", fx.envoy.snapshot));
        let path = ecds.join(WATCHED);
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let snap = match http.get(&url).send().await {
                    Ok(r) => r.bytes().await.ok().and_then(|b| canary_core::Snapshot::from_json(&b).ok()),
                    Err(_) => None,
                };
                if let Some(route) = snap.and_then(|s| s.route) {
                    let on_disk = std::fs::read(&path).ok().and_then(|b| parse_watched(&b).ok()).map(|r| r.revision);
                    let mut a = applied.lock().unwrap();
                    if on_disk.is_none_or(|d| d < route.revision) {
                        let seen = format!("Envoy applies revision {} but the file holds {on_disk:?}", route.revision);
                        a.newer_than_disk.push(seen);
                    }
                    a.routes.push((route.revision, route));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("kill times from seed {seed}");
    let mut rng = seed;
    let accepted = Arc::new(AtomicU64::new(0));
    let (mut killed_mid_write, mut removed_at_start) = (0, 0);
    let mut stale: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        let mut agent = Agent::start(&fx.envoy, SLOW_STEPS, "100ms").await.unwrap();
        // Before it serves, the new agent has removed what killed agents left in staging.
        let others: Vec<String> = staged(&staging).into_iter().filter(|n| temp_owner(n) != Some(agent.pid())).collect();
        assert!(others.is_empty(), "round {round}: stale temporary files survived a restart: {others:?}");
        removed_at_start += stale.len();
        let hammer = tokio::spawn(pause_resume(agent.api, Arc::clone(&accepted)));
        tokio::time::sleep(Duration::from_millis(next_random(&mut rng) % 400)).await;
        agent.kill();
        hammer.abort();
        let _ = hammer.await;
        let listed: Vec<String> = entries(&ecds).into_iter().filter(|n| n != STAGING_DIR).collect();
        assert_eq!(listed, [WATCHED], "round {round}: only the watched file (and the staging directory)");
        durable(&fx.envoy); // complete and valid, or the test fails here
        stale = staged(&staging);
        killed_mid_write += usize::from(!stale.is_empty());
    }
    stop.store(true, Ordering::SeqCst);
    let watched = watcher.join().unwrap();
    poller.await.unwrap();
    let last = durable(&fx.envoy);
    fx.envoy.wait_for_revision(last.revision, Duration::from_secs(10)).await.unwrap();
    let samples = traffic.stop(Duration::from_millis(300)).await;
    eprintln!(
        "{ROUNDS} agents killed; {} actions accepted; revisions {first}..={}; {} complete files seen in {} looks; \
         {killed_mid_write} kills left a temporary file in staging ({removed_at_start} removed at the next start)",
        accepted.load(Ordering::Relaxed),
        last.revision,
        watched.files.len(),
        watched.looks,
    );

    assert!(watched.violations.is_empty(), "{:?}", watched.violations);
    assert!(last.revision >= first + ROUNDS as u64, "the agents wrote: {first} to {}", last.revision);
    let Applied { routes: applied, newer_than_disk } = std::mem::take(&mut *applied.lock().unwrap());
    assert!(newer_than_disk.is_empty(), "{newer_than_disk:?}");
    for pair in applied.windows(2) {
        assert!(pair[0].0 <= pair[1].0, "Envoy went back from revision {} to {}", pair[0].0, pair[1].0);
    }
    let mut compared = 0;
    for (revision, route) in &applied {
        if let Some(file) = watched.files.get(revision) {
            assert_eq!(route, file, "Envoy applies revision {revision} as the complete file had it");
            compared += 1;
        }
    }
    assert!(compared > 0, "no revision Envoy applied was seen on disk");
    assert_eq!(fx.envoy.stat(REJECTED).await.unwrap_or(0), 0, "Envoy was never offered a broken file");
    let bad: Vec<_> = samples.iter().filter(|s| s.status != 200).collect();
    assert!(bad.is_empty(), "Envoy kept serving throughout: {} of {} failed: {:?}", bad.len(), samples.len(), bad);
}

// ---------------------------------------------------------------------------------------------
// The configuration directory unwritable
// ---------------------------------------------------------------------------------------------

/// The effective user id of this process.
fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// The unprivileged user (`nobody`) the agent runs as when the tests run as root, who ignores
/// permission bits.
const NOBODY: (u32, u32) = (65534, 65534);

/// Puts `dir`'s permission bits back when dropped, so a failed test leaves nothing it cannot clean.
struct RestoreMode<'a>(&'a Path);

impl Drop for RestoreMode<'_> {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions(self.0, std::fs::Permissions::from_mode(0o755));
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unwritable_config_directory_is_reported_keeps_the_last_weights_and_recovers() {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 1).await.unwrap();
    let ecds = fx.envoy.ecds_dir();
    let user = (effective_uid() == 0).then_some(NOBODY);
    if let Some((uid, gid)) = user {
        // The agent's user must reach the watched directory and own it, as in a deployment.
        set_mode(ecds.parent().unwrap(), 0o711);
        for path in [ecds.clone(), ecds.join(WATCHED)] {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
    }
    let agent = Agent::start_as(&fx.envoy, FAST_SPEC, "250ms", &[], user).await.unwrap();
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), 200);
    agent.wait_for(Duration::from_secs(20), "the first step", |s| weight(s) == 10.0).await.unwrap();
    let before = durable(&fx.envoy);
    assert_eq!(before.canary_weight.basis_points(), 1000);

    let _restore = RestoreMode(&ecds);
    set_mode(&ecds, 0o555);
    let s = agent
        .wait_for(Duration::from_secs(20), "the failed write reported", |s| {
            s["not_ready"].as_str().is_some_and(|r| r.starts_with("cannot write the weight"))
        })
        .await
        .unwrap();
    let reason = s["not_ready"].as_str().unwrap();
    assert!(reason.contains(WATCHED) && reason.contains("ermission denied"), "names the file and why: {reason}");
    let (code, body) = agent.get("/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("cannot write the weight"), "{body}");
    let logged = std::fs::read_to_string(agent.log_path()).unwrap();
    assert!(
        logged.lines().any(|l| l.contains("ERROR") && l.contains("cannot write the weight") && l.contains(WATCHED)),
        "logged as an error:\n{}",
        agent.log_tail(20)
    );
    // Retried with backoff; meanwhile nothing changes on disk or in Envoy.
    let s = agent
        .wait_for(Duration::from_secs(20), "a retry", |s| s["router_errors_total"].as_u64() >= Some(2))
        .await
        .unwrap();
    let (_, metrics) = agent.get("/metrics").await.unwrap();
    let errors = sample(&metrics, "canary_gate_agent_router_errors_total{rollout=\"demo\"}").unwrap();
    assert!(errors >= 2.0, "{metrics}");
    assert_eq!(sample(&metrics, "canary_gate_agent_ready{rollout=\"demo\"}"), Some(0.0), "{metrics}");
    assert_eq!(s["revision"].as_u64(), Some(before.revision), "{s}");
    assert_eq!(durable(&fx.envoy), before, "the watched file is untouched");
    assert_eq!(entries(&ecds), [STAGING_DIR, WATCHED]);
    assert!(staged(&ecds.join(STAGING_DIR)).is_empty(), "no temporary file left from the failed writes");
    let snap = fx.envoy.snapshot().await.unwrap();
    let route = snap.route.unwrap();
    assert_eq!((route.revision, route.canary_weight.basis_points()), (before.revision, 1000), "Envoy keeps 10%");
    let recent = traffic.samples();
    let last: Vec<_> = recent.iter().rev().take(400).collect();
    assert!(last.iter().all(|s| s.status == 200), "traffic is served");
    let canary = last.iter().filter(|s| s.served_by == "v2").count();
    assert!(canary < 100, "{canary} of the last 400 requests on the canary: more than the 10% in force");

    // Writable again: the held step lands, the agent is ready, and the rollout goes on step by step.
    set_mode(&ecds, 0o755);
    let mut seen = vec![10.0];
    let deadline = Instant::now() + Duration::from_secs(40);
    let end = loop {
        let d = durable(&fx.envoy).canary_weight.percent();
        if seen.last() != Some(&d) {
            seen.push(d);
        }
        let s = agent.status().await.unwrap();
        if phase(&s) == "succeeded" || Instant::now() >= deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = traffic.stop(Duration::from_millis(100)).await;
    assert_eq!(phase(&end), "succeeded", "{end}\n{}", agent.log_tail(30));
    assert_eq!(seen, vec![10.0, 30.0, 60.0, 100.0], "the held step was applied, none skipped");
    assert!(end["not_ready"].is_null(), "{end}");
    assert_eq!(agent.get("/readyz").await.unwrap().0, 200);
    let (_, metrics) = agent.get("/metrics").await.unwrap();
    assert_eq!(sample(&metrics, "canary_gate_agent_ready{rollout=\"demo\"}"), Some(1.0), "{metrics}");
}
