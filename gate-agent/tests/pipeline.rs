//! The decision pipeline end to end, without I/O: simulated proxies serve traffic at the weight
//! the rollout last decided, their cumulative snapshots go through a `Fleet`, and each tick's
//! window goes to the `Rollout`, whose decisions a recording router applies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use canary_core::snapshot::SNAPSHOT_FORMAT;
use canary_core::{InstanceInfo, Outcome, Role, Snapshot, SubsetCounters, SubsetName, SubsetSnapshot, Weight};
use gate_agent::{ChangeKind, Decision, Fleet, Phase, Rollout, Spec};

const SPEC: &str = "
name: demo
stable: v1
canary: v2
interval: 5s
threshold: 2
stepWeights: [5, 20, 50]
maxWeight: 50
minRequests: 100
alpha: 0.01
metrics:
  - name: request-success-rate
    thresholdRange: { min: 99 }
    interval: 10s
  - name: request-duration
    thresholdRange: { max: 500 }
    interval: 10s
# About the pipeline's stepping across proxies and restarts, not the promotion gate's evidence.
promotion: { requireEvidence: false }
";

/// One Envoy: cumulative counters since it started, as its snapshot listener would serve them.
struct Proxy {
    id: String,
    started_ms: u64,
    stable: SubsetCounters,
    canary: SubsetCounters,
    served_canary: u64,
}

impl Proxy {
    fn new(id: &str, started_ms: u64) -> Proxy {
        Proxy {
            id: id.into(),
            started_ms,
            stable: SubsetCounters::default(),
            canary: SubsetCounters::default(),
            served_canary: 0,
        }
    }

    /// `n` requests split at `weight`; every `fail_every`-th canary request fails (0: none).
    fn serve(&mut self, n: u64, weight: Weight, fail_every: u64) {
        let canary = n * u64::from(weight.basis_points()) / 10_000;
        for _ in 0..n - canary {
            self.stable.record(Outcome::Success, 20_000);
        }
        for _ in 0..canary {
            self.served_canary += 1;
            let failed = fail_every > 0 && self.served_canary.is_multiple_of(fail_every);
            self.canary.record(if failed { Outcome::Failure } else { Outcome::Success }, 25_000);
        }
    }

    fn snapshot(&self, now_ms: u64) -> Snapshot {
        let name = |s: &str| SubsetName::try_from(s).unwrap();
        Snapshot {
            format: SNAPSHOT_FORMAT.into(),
            instance: InstanceInfo { id: self.id.clone(), started_at_unix_ms: self.started_ms },
            taken_at_unix_ms: now_ms,
            route: None,
            kill: None,
            misrouted: None,
            dark_launch: None,
            rollouts: Vec::new(),
            subsets: vec![
                SubsetSnapshot { subset: name("v1"), role: Role::Stable, counters: self.stable.clone() },
                SubsetSnapshot { subset: name("v2"), role: Role::Canary, counters: self.canary.clone() },
            ],
        }
    }
}

/// The agent's loop, minus I/O: read every proxy, take the window, tick, apply the decision.
struct Agent {
    fleet: Fleet,
    rollout: Rollout,
    /// The weight in force in the proxies (what a router wrote).
    applied: Weight,
    log: Vec<(u64, Decision)>,
}

impl Agent {
    fn new(rollout: Rollout, applied: Weight) -> Agent {
        let spec = rollout.spec().clone();
        Agent { fleet: Fleet::new(spec.name().clone(), Duration::from_secs(10)), rollout, applied, log: Vec::new() }
    }

    fn tick(&mut self, proxies: &[Proxy], now_ms: u64) {
        for (i, p) in proxies.iter().enumerate() {
            self.fleet.observe(&format!("proxy-{i}:9902"), &p.snapshot(now_ms), now_ms);
        }
        let window = self.fleet.take_window(now_ms);
        let decision = self.rollout.tick(&window, now_ms);
        if let Some(change) = decision.set_weight {
            self.applied = change.to;
        }
        if decision.set_weight.is_some() || decision.phase_change.is_some() {
            self.log.push((now_ms, decision));
        }
    }
}

fn spec() -> Spec {
    Spec::from_yaml_or_json(SPEC).unwrap()
}

fn w(p: f64) -> Weight {
    Weight::from_percent(p).unwrap()
}

#[test]
fn a_healthy_canary_walks_up_every_step_across_two_proxies_and_a_restart() {
    let mut agent = Agent::new(Rollout::new(spec(), 0), Weight::ZERO);
    let mut proxies = vec![Proxy::new("a", 0), Proxy::new("b", 0)];
    for p in &mut proxies {
        p.serve(5_000, Weight::ZERO, 0); // history from before the agent started
    }
    for t in 1..=40u64 {
        if t == 9 {
            proxies[1] = Proxy::new("b2", t * 1000 - 500); // proxy b restarts
        }
        for p in &mut proxies {
            p.serve(200, agent.applied, 0);
        }
        agent.tick(&proxies, t * 1000);
    }
    let weights: Vec<(f64, ChangeKind)> =
        agent.log.iter().filter_map(|(_, d)| d.set_weight.map(|c| (c.to.percent(), c.kind))).collect();
    assert_eq!(
        weights,
        vec![
            (5.0, ChangeKind::Step),
            (20.0, ChangeKind::Step),
            (50.0, ChangeKind::Step),
            (100.0, ChangeKind::Promotion)
        ]
    );
    assert_eq!(agent.rollout.phase(), Phase::Succeeded);
}

#[test]
fn a_canary_that_starts_failing_is_at_zero_within_a_tick_or_two() {
    let mut agent = Agent::new(Rollout::new(spec(), 0), Weight::ZERO);
    let mut proxies = vec![Proxy::new("a", 0), Proxy::new("b", 0)];
    let mut first_failure = None;
    for t in 1..=60u64 {
        // From 12 s on, one canary request in five fails (200 req/s per proxy).
        let fail_every = if t >= 12 { 5 } else { 0 };
        if fail_every > 0 && first_failure.is_none() && agent.applied > Weight::ZERO {
            first_failure = Some(t);
        }
        for p in &mut proxies {
            p.serve(200, agent.applied, fail_every);
        }
        agent.tick(&proxies, t * 1000);
        if agent.rollout.phase() == Phase::RolledBack {
            let first = first_failure.unwrap();
            assert!(t - first <= 1, "rolled back {}s after the first failure", t - first);
            assert_eq!(agent.applied, Weight::ZERO);
            let (_, d) = agent.log.last().unwrap();
            assert!(d.reason.contains("decisive breach"), "{}", d.reason);
            return;
        }
    }
    panic!("never rolled back: {:?}", agent.log.iter().map(|(t, d)| (t, &d.reason)).collect::<Vec<_>>());
}

#[test]
fn a_restarted_agent_resumes_the_same_step() {
    let mut proxies = vec![Proxy::new("a", 0)];
    let mut agent = Agent::new(Rollout::new(spec(), 0), Weight::ZERO);
    for t in 1..=7u64 {
        proxies[0].serve(400, agent.applied, 0);
        agent.tick(&proxies, t * 1000);
    }
    assert_eq!(agent.applied, w(20.0));
    // The agent dies; the proxies keep the weight (the durable config) and keep serving.
    let applied = agent.applied;
    proxies[0].serve(4_000, applied, 0);
    let mut agent = Agent::new(Rollout::restore(spec(), applied, None, 20_000), applied);
    assert_eq!(agent.rollout.phase(), Phase::Progressing);
    agent.tick(&proxies, 21_000); // first sighting: a baseline, no data yet
    assert!(agent.log.is_empty(), "nothing changes on the first tick after a restart");
    for t in 22..=40u64 {
        proxies[0].serve(400, agent.applied, 0);
        agent.tick(&proxies, t * 1000);
    }
    let (t, first) = &agent.log[0];
    assert_eq!(first.set_weight.map(|c| c.to), Some(w(50.0)), "the next step after 20%, not a restart from 0%");
    assert!(*t >= 25_000, "only after a full interval on the resumed step, at {t}");
}
