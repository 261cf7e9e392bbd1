//! One agent tick over 1,000 proxies: every snapshot merged into the fleet's window, then judged
//! and decided (`Fleet::observe` ×1,000, `Fleet::take_window`, `Rollout::tick`), as
//! `control::Controller::tick` does between reading the proxies and acting. A second benchmark
//! starts from the snapshots' JSON bytes, since the agent parses each one every tick too, and a
//! third from the compact snapshots (`canary_core::snapshot`), which the current agent reads.
//!
//! The snapshots are what canary-filter serves: cumulative counters since the proxy started, with
//! latency histograms in the filter's own buckets. Each proxy has served 2,000 stable and 500
//! canary requests of history (lognormal latency, median 50 ms, p99 200 ms: a few hundred
//! buckets each), and 50 more requests (10% canary, 0.1% failures) per 250-ms tick, the agent's
//! default. The rollout runs the shipped spec (`deploy/local/rollout.yaml`) and keeps judging
//! across iterations, so its window history (30 s of 250-ms ticks) is full as in a long rollout.
//!
//! `cargo bench -p canary-rollout --bench tick`; `make bench` reads criterion's `estimates.json`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // bench code

use std::hint::black_box;
use std::time::{Duration, Instant};

use canary_core::rng::SplitMix64;
use canary_core::snapshot::SNAPSHOT_FORMAT;
use canary_core::{InstanceInfo, Outcome, Role, RouteConfig, Snapshot, SubsetCounters, SubsetName, SubsetSnapshot};
use canary_rollout::{Fleet, Rollout, Spec};
use criterion::{Criterion, criterion_group, criterion_main};

const PROXIES: usize = 1_000;
const TICK_MS: u64 = 250;
const SPEC: &str = include_str!("../../../deploy/local/rollout.yaml");

/// The simulated fleet: each proxy's cumulative [stable, canary] counters.
struct Proxies {
    rng: SplitMix64,
    counters: Vec<[SubsetCounters; 2]>,
    names: [SubsetName; 2],
    route: RouteConfig,
    targets: Vec<String>,
}

impl Proxies {
    fn new() -> Proxies {
        let route = canary_core::config::parse_route(
            br#"{"version":1,"rollout":"demo","stable":"v1","canary":"v2","canary_weight":10,"revision":2}"#,
        )
        .unwrap();
        let mut p = Proxies {
            rng: SplitMix64::new(7),
            counters: (0..PROXIES).map(|_| [SubsetCounters::default(), SubsetCounters::default()]).collect(),
            names: [SubsetName::try_from("v1").unwrap(), SubsetName::try_from("v2").unwrap()],
            route,
            targets: (0..PROXIES).map(|i| format!("10.1.{}.{}:15290", i / 250, i % 250)).collect(),
        };
        for i in 0..PROXIES {
            p.serve(i, 2_000, 500);
        }
        p
    }

    fn uniform(&mut self) -> f64 {
        ((self.rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Lognormal, median 50 ms, p99 200 ms, in µs.
    fn latency_us(&mut self) -> u64 {
        let z = (-2.0 * self.uniform().ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos();
        (50_000.0 * (0.596 * z).exp()) as u64
    }

    fn serve(&mut self, proxy: usize, stable: u64, canary: u64) {
        for (side, n) in [(0, stable), (1, canary)] {
            for _ in 0..n {
                let outcome = if self.uniform() < 0.001 { Outcome::Failure } else { Outcome::Success };
                let us = self.latency_us();
                self.counters[proxy][side].record(outcome, us);
            }
        }
    }

    /// One tick of traffic on every proxy.
    fn advance(&mut self) {
        for i in 0..PROXIES {
            self.serve(i, 45, 5);
        }
    }

    fn snapshots(&self, now_ms: u64) -> Vec<Snapshot> {
        self.counters
            .iter()
            .enumerate()
            .map(|(i, [stable, canary])| Snapshot {
                format: SNAPSHOT_FORMAT.to_owned(),
                instance: InstanceInfo { id: format!("{i:016x}"), started_at_unix_ms: 1_775_000_000_000 },
                taken_at_unix_ms: 1_775_000_000_000 + now_ms,
                route: Some(self.route.clone()),
                kill: None,
                misrouted: None,
                dark_launch: None,
                rollouts: Vec::new(),
                subsets: vec![
                    SubsetSnapshot { subset: self.names[0].clone(), role: Role::Stable, counters: stable.clone() },
                    SubsetSnapshot { subset: self.names[1].clone(), role: Role::Canary, counters: canary.clone() },
                ],
            })
            .collect()
    }
}

/// The agent's decision state, ticking on.
struct Agent {
    fleet: Fleet,
    rollout: Rollout,
    now_ms: u64,
}

impl Agent {
    fn new(proxies: &mut Proxies) -> Agent {
        let spec = Spec::from_yaml_or_json(SPEC).unwrap();
        let mut agent = Agent {
            fleet: Fleet::new(spec.name().clone(), Duration::from_secs(10)),
            rollout: Rollout::new(spec, 0),
            now_ms: 0,
        };
        // 30 s of ticks, so the judge's window history is as full as it gets.
        for _ in 0..=30_000 / TICK_MS {
            let snapshots = proxies.snapshots(agent.now_ms);
            agent.tick(&proxies.targets, &snapshots);
            proxies.advance();
        }
        agent
    }

    fn tick(&mut self, targets: &[String], snapshots: &[Snapshot]) {
        for (target, snapshot) in targets.iter().zip(snapshots) {
            self.fleet.observe(target, snapshot, self.now_ms);
        }
        let window = self.fleet.take_window(self.now_ms);
        black_box(self.rollout.tick(&window, self.now_ms));
        self.now_ms += TICK_MS;
    }
}

fn tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("tick_1000_proxies");
    group.sample_size(20);

    let mut proxies = Proxies::new();
    let mut agent = Agent::new(&mut proxies);
    group.bench_function("merge_and_judge", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let snapshots = proxies.snapshots(agent.now_ms);
                let t = Instant::now();
                agent.tick(&proxies.targets, &snapshots);
                spent += t.elapsed();
                proxies.advance();
            }
            spent
        });
    });

    let mut proxies = Proxies::new();
    let mut agent = Agent::new(&mut proxies);
    group.bench_function("parse_merge_and_judge", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let bodies: Vec<Vec<u8>> =
                    proxies.snapshots(agent.now_ms).iter().map(|s| serde_json::to_vec(s).unwrap()).collect();
                let t = Instant::now();
                let snapshots: Vec<Snapshot> = bodies.iter().map(|b| Snapshot::from_json(b).unwrap()).collect();
                agent.tick(&proxies.targets, &snapshots);
                spent += t.elapsed();
                proxies.advance();
            }
            spent
        });
    });

    let mut proxies = Proxies::new();
    let mut agent = Agent::new(&mut proxies);
    group.bench_function("parse_compact_merge_and_judge", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let bodies: Vec<Vec<u8>> =
                    proxies.snapshots(agent.now_ms).iter().map(|s| s.to_compact_json().unwrap()).collect();
                let t = Instant::now();
                let snapshots: Vec<Snapshot> = bodies.iter().map(|b| Snapshot::from_compact_json(b).unwrap()).collect();
                agent.tick(&proxies.targets, &snapshots);
                spent += t.elapsed();
                proxies.advance();
            }
            spent
        });
    });
    group.finish();
}

criterion_group!(benches, tick);
criterion_main!(benches);
