#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code
//! The control loop ([`Controller`]) stepped tick by tick against fakes, with tokio's clock paused.
//!
//! What is faked, and why:
//! * [`FakeFleet`] stands for the proxies. It implements both [`CounterSource`] and [`KillSwitch`],
//!   as the real snapshot listener does. Each proxy keeps cumulative [`SubsetCounters`] since it
//!   started, like the filter, and serves a fixed number of requests per second split at the weight
//!   it applies: the route configuration it last picked up from the router (the durable state),
//!   unless a kill order holds that configuration's revision, in which case weighted canary traffic
//!   goes to stable, exactly as the filter does. Failure rates and latencies are set per side,
//!   failures are spread evenly (deterministic), a proxy's snapshot listener can be made to fail,
//!   and configuration propagation can be frozen (a stalled control plane) so that only the kill
//!   order can stop canary traffic.
//! * [`RecordingRouter`] stands for the durable filter configuration. It holds the configuration
//!   in force (bumping the revision on each write, like the file router), records every `apply`
//!   call with its time, and can be made to fail the next few writes.
//! * [`RecordingNotifier`] keeps every notice.
//!
//! Nothing here waits on real time: each "second" advances tokio's paused clock by one second,
//! lets the proxies serve that second's traffic, then runs one `tick`. Assertions are on what the
//! fakes saw (writes, kill orders, traffic actually served) and on the published status.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canary_core::config::parse_route;
use canary_core::snapshot::SNAPSHOT_FORMAT;
use canary_core::{
    InstanceInfo, KillOrder, KillRecord, Outcome, Role, RolloutRecord, RouteConfig, Snapshot, SubsetCounters,
    SubsetSnapshot, Weight,
};
use gate_agent::api::Command;
use gate_agent::control::{Controller, Settings, StartError};
use gate_agent::evidence::{EvidenceStore, FileEvidence};
use gate_agent::notify::{Notice, NoticeKind, Notifier};
use gate_agent::router::{RouterError, WeightRouter};
use gate_agent::source::{CounterSource, FetchError, KillSwitch};
use gate_agent::status::StatusView;
use gate_agent::{Phase, Spec};
use tokio::sync::watch;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// The two proxies every test runs (snapshot listener addresses).
const TARGETS: [&str; 2] = ["proxy-a:9902", "proxy-b:9902"];

/// Requests each proxy serves per second.
const PER_SECOND: u64 = 200;

/// The proxies' wall clock at the start of a test (their snapshots carry Unix times).
const UNIX_START_MS: u64 = 1_700_000_000_000;

/// The filter configuration before the rollout: canary at 0%, no record, revision 1.
fn route() -> RouteConfig {
    parse_route(br#"{"version":1,"rollout":"demo","stable":"v1","canary":"v2","canary_weight":0,"revision":1}"#)
        .unwrap()
}

/// Steps 10/25/50, a check every `interval_s` seconds, `threshold` failed checks allowed. With two
/// proxies at 200 requests a second, the first step sees 40 canary requests a second, so
/// `minRequests: 60` is met by every full interval of healthy traffic. These tests are about
/// stepping, writes and kills, so the promotion gate is off (`requireEvidence: false`); its own
/// tests are tick by tick in canary-rollout and in the integrations' unit tests.
fn spec(interval_s: u64, threshold: u32) -> Spec {
    Spec::from_yaml_or_json(&spec_text(interval_s, threshold)).unwrap()
}

/// [`spec`] held on its first step: `minRequests` is out of reach, so passing checks never advance.
fn held_spec(interval_s: u64, threshold: u32) -> Spec {
    Spec::from_yaml_or_json(&spec_text(interval_s, threshold).replace("minRequests: 60", "minRequests: 1000000"))
        .unwrap()
}

fn spec_text(interval_s: u64, threshold: u32) -> String {
    format!(
        "
name: demo
stable: v1
canary: v2
interval: {interval_s}s
threshold: {threshold}
stepWeights: [10, 25, 50]
maxWeight: 50
minRequests: 60
promotion: {{ requireEvidence: false }}
metrics:
  - name: request-success-rate
    thresholdRange: {{ min: 99 }}
  - name: request-duration
    thresholdRange: {{ max: 500 }}
"
    )
}

fn w(percent: f64) -> Weight {
    Weight::from_percent(percent).unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap()
}

/// Test time on tokio's paused clock, measured from when the rig was built.
#[derive(Debug, Clone, Copy)]
struct Clock {
    t0: Instant,
}

impl Clock {
    fn now(self) -> Duration {
        self.t0.elapsed()
    }

    fn unix_ms(self) -> u64 {
        UNIX_START_MS + millis(self.now())
    }
}

// ---------------------------------------------------------------------------------------------
// The recording router: the durable configuration
// ---------------------------------------------------------------------------------------------

/// One `apply` call, as the router saw it.
#[derive(Debug, Clone)]
struct Write {
    at: Duration,
    weight: Weight,
    record: RolloutRecord,
    /// The revision written; `None` when the write was made to fail.
    revision: Option<u64>,
}

#[derive(Debug)]
struct RouterState {
    /// The configuration in force (the durable state).
    config: RouteConfig,
    writes: Vec<Write>,
    fail_next: u32,
    /// How long each write takes (a slow API server).
    delay: Duration,
}

/// A [`WeightRouter`] over shared state: clones see the same configuration, so a test keeps one
/// clone to inspect, the fleet one to read the weight from, and a controller owns a third.
#[derive(Debug, Clone)]
struct RecordingRouter {
    clock: Clock,
    state: Arc<Mutex<RouterState>>,
}

impl RecordingRouter {
    fn new(clock: Clock, config: RouteConfig) -> Self {
        RecordingRouter {
            clock,
            state: Arc::new(Mutex::new(RouterState {
                config,
                writes: Vec::new(),
                fail_next: 0,
                delay: Duration::ZERO,
            })),
        }
    }

    fn config(&self) -> RouteConfig {
        self.state.lock().unwrap().config.clone()
    }

    /// The next `n` writes fail (an unwritable file).
    fn fail_next(&self, n: u32) {
        self.state.lock().unwrap().fail_next = n;
    }

    /// From now on every write takes `delay`.
    fn slow(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Someone other than the agent changes the durable configuration (`kubectl patch`, an
    /// editor): not recorded as a write.
    fn hand_edit(&self, edit: impl FnOnce(&mut RouteConfig)) {
        edit(&mut self.state.lock().unwrap().config);
    }

    /// Every `apply` call, failed ones included.
    fn writes(&self) -> Vec<Write> {
        self.state.lock().unwrap().writes.clone()
    }

    /// The writes that landed.
    fn landed(&self) -> Vec<Write> {
        self.writes().into_iter().filter(|w| w.revision.is_some()).collect()
    }
}

impl WeightRouter for RecordingRouter {
    async fn current(&self) -> Result<RouteConfig, RouterError> {
        Ok(self.config())
    }

    async fn apply(&self, weight: Weight, record: RolloutRecord) -> Result<RouteConfig, RouterError> {
        let at = self.clock.now();
        let delay = self.state.lock().unwrap().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut s = self.state.lock().unwrap();
        if s.fail_next > 0 {
            s.fail_next -= 1;
            s.writes.push(Write { at, weight, record, revision: None });
            return Err(RouterError::Io {
                path: PathBuf::from("/etc/canary-gate/canary-gate.json"),
                source: std::io::Error::other("read-only file system"),
            });
        }
        // Like the file router: only the weight, the record and the revision change.
        let next = RouteConfig {
            canary_weight: weight,
            revision: s.config.revision + 1,
            rollout_state: Some(record.clone()),
            ..s.config.clone()
        };
        s.writes.push(Write { at, weight, record, revision: Some(next.revision) });
        s.config = next.clone();
        Ok(next)
    }
}

// ---------------------------------------------------------------------------------------------
// The fake fleet: proxies serving traffic, answering snapshot reads and kill orders
// ---------------------------------------------------------------------------------------------

/// How the proxies' traffic behaves; changed by tests mid-run.
#[derive(Debug, Clone, Copy)]
struct Traffic {
    per_second: u64,
    stable_fail_per_mille: u64,
    canary_fail_per_mille: u64,
    stable_latency_us: u64,
    canary_latency_us: u64,
    /// The control plane has stalled: proxies keep the configuration they have.
    frozen: bool,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            per_second: PER_SECOND,
            stable_fail_per_mille: 0,
            canary_fail_per_mille: 0,
            stable_latency_us: 20_000,
            canary_latency_us: 25_000,
            frozen: false,
        }
    }
}

/// One Envoy with the filter.
#[derive(Debug)]
struct FakeProxy {
    instance: String,
    started_unix_ms: u64,
    /// The route configuration this proxy applies.
    config: RouteConfig,
    /// Kill records by rollout name, as the filter keeps them in shared data.
    kills: BTreeMap<String, KillRecord>,
    stable: SubsetCounters,
    canary: SubsetCounters,
    /// Set when the snapshot listener refuses connections (reads and kill orders fail).
    down: Option<String>,
    /// Set when the proxy refuses every new configuration (its filter's typo guard, a
    /// configuration Envoy will not load) and keeps the one it has.
    rejecting: bool,
}

impl FakeProxy {
    /// The canary weight this proxy routes with: the configuration's, unless a kill holds it.
    fn weight(&self) -> Weight {
        let killed = self
            .kills
            .get(self.config.rollout.as_str())
            .is_some_and(|k| k.holds(self.config.effective_rollout_id(), self.config.revision));
        if killed { Weight::ZERO } else { self.config.canary_weight }
    }

    fn snapshot(&self, now_unix_ms: u64) -> Snapshot {
        Snapshot {
            format: SNAPSHOT_FORMAT.into(),
            instance: InstanceInfo { id: self.instance.clone(), started_at_unix_ms: self.started_unix_ms },
            taken_at_unix_ms: now_unix_ms,
            route: Some(self.config.clone()),
            subsets: vec![
                SubsetSnapshot {
                    subset: self.config.stable.clone(),
                    role: Role::Stable,
                    counters: self.stable.clone(),
                },
                SubsetSnapshot {
                    subset: self.config.canary.clone(),
                    role: Role::Canary,
                    counters: self.canary.clone(),
                },
            ],
            kill: self.kills.get(self.config.rollout.as_str()).cloned(),
            misrouted: None,
            dark_launch: None,
            rollouts: Vec::new(),
        }
    }
}

/// Serves `n` requests into `counters`, failing `per_mille` of them spread evenly over the
/// subset's lifetime (deterministic: the n-th request fails when ⌊n·p⌋ steps up).
fn serve(counters: &mut SubsetCounters, n: u64, per_mille: u64, latency_us: u64) {
    for _ in 0..n {
        let k = counters.requests + 1;
        let failed = k * per_mille / 1000 > (k - 1) * per_mille / 1000;
        counters.record(if failed { Outcome::Failure } else { Outcome::Success }, latency_us);
    }
}

/// A kill order as a proxy received it.
#[derive(Debug, Clone)]
struct KillReceived {
    at: Duration,
    target: String,
    order: KillOrder,
    /// The revision of the configuration the proxy applied when the order came.
    applied_revision: u64,
}

#[derive(Debug)]
struct FleetState {
    proxies: BTreeMap<String, FakeProxy>,
    traffic: Traffic,
    kills: Vec<KillReceived>,
}

#[derive(Debug)]
struct FakeFleet {
    clock: Clock,
    /// Where the proxies pick their configuration up from.
    router: RecordingRouter,
    state: Mutex<FleetState>,
}

impl FakeFleet {
    fn new(clock: Clock, router: RecordingRouter, targets: &[&str]) -> Self {
        let config = router.config();
        let proxies = targets
            .iter()
            .map(|t| {
                let proxy = FakeProxy {
                    instance: format!("{t}/instance-1"),
                    started_unix_ms: clock.unix_ms(),
                    config: config.clone(),
                    kills: BTreeMap::new(),
                    stable: SubsetCounters::default(),
                    canary: SubsetCounters::default(),
                    down: None,
                    rejecting: false,
                };
                ((*t).to_owned(), proxy)
            })
            .collect();
        FakeFleet {
            clock,
            router,
            state: Mutex::new(FleetState { proxies, traffic: Traffic::default(), kills: Vec::new() }),
        }
    }

    /// Proxies pick up the durable configuration unless propagation is frozen.
    fn sync(&self, s: &mut FleetState) {
        if s.traffic.frozen {
            return;
        }
        let config = self.router.config();
        for p in s.proxies.values_mut().filter(|p| !p.rejecting) {
            p.config.clone_from(&config);
        }
    }

    /// One second of traffic on every proxy, at the weight each applies.
    fn serve_one_second(&self) {
        let mut s = self.state.lock().unwrap();
        self.sync(&mut s);
        let t = s.traffic;
        for p in s.proxies.values_mut() {
            let canary = t.per_second * u64::from(p.weight().basis_points()) / 10_000;
            serve(&mut p.stable, t.per_second - canary, t.stable_fail_per_mille, t.stable_latency_us);
            serve(&mut p.canary, canary, t.canary_fail_per_mille, t.canary_latency_us);
        }
    }

    /// `target` alone picks up the durable configuration (the others lag while propagation is
    /// frozen).
    fn deliver(&self, target: &str) {
        let config = self.router.config();
        self.state.lock().unwrap().proxies.get_mut(target).unwrap().config = config;
    }

    fn set_traffic(&self, change: impl FnOnce(&mut Traffic)) {
        change(&mut self.state.lock().unwrap().traffic);
    }

    /// Makes `target`'s snapshot listener fail (`Some(error)`) or answer again (`None`).
    fn set_down(&self, target: &str, error: Option<&str>) {
        self.state.lock().unwrap().proxies.get_mut(target).unwrap().down = error.map(str::to_owned);
    }

    /// Makes `target` refuse every new configuration (`true`) or accept them again (`false`).
    fn set_rejecting(&self, target: &str, rejecting: bool) {
        self.state.lock().unwrap().proxies.get_mut(target).unwrap().rejecting = rejecting;
    }

    /// `target` restarts: a new instance, started now, whose counters and kill records start
    /// empty, serving the durable configuration, its snapshot listener up.
    fn restart(&self, target: &str) {
        let mut s = self.state.lock().unwrap();
        let p = s.proxies.get_mut(target).unwrap();
        p.instance = format!("{target}/instance-{}", self.clock.unix_ms());
        p.started_unix_ms = self.clock.unix_ms();
        p.kills.clear();
        p.stable = SubsetCounters::default();
        p.canary = SubsetCounters::default();
        p.down = None;
    }

    /// Requests served so far, summed over the proxies: (stable, canary).
    fn served(&self) -> (u64, u64) {
        let s = self.state.lock().unwrap();
        s.proxies.values().fold((0, 0), |(st, ca), p| (st + p.stable.requests, ca + p.canary.requests))
    }

    /// The weight each proxy routes with right now.
    fn weights(&self) -> Vec<Weight> {
        let mut s = self.state.lock().unwrap();
        self.sync(&mut s);
        s.proxies.values().map(FakeProxy::weight).collect()
    }

    /// The configuration each proxy applies right now.
    fn configs(&self) -> Vec<RouteConfig> {
        let mut s = self.state.lock().unwrap();
        self.sync(&mut s);
        s.proxies.values().map(|p| p.config.clone()).collect()
    }

    fn kills(&self) -> Vec<KillReceived> {
        self.state.lock().unwrap().kills.clone()
    }
}

impl CounterSource for FakeFleet {
    async fn fetch(&self, target: &str) -> Result<Snapshot, FetchError> {
        let mut s = self.state.lock().unwrap();
        self.sync(&mut s);
        let unreachable =
            |message: &str| FetchError::Unreachable { target: target.to_owned(), message: message.into() };
        let p = s.proxies.get(target).ok_or_else(|| unreachable("no such proxy"))?;
        if let Some(e) = &p.down {
            return Err(unreachable(e));
        }
        Ok(p.snapshot(self.clock.unix_ms()))
    }
}

impl KillSwitch for FakeFleet {
    async fn kill(&self, target: &str, order: &KillOrder) -> Result<KillRecord, FetchError> {
        let now = self.clock.now();
        let unix_ms = self.clock.unix_ms();
        let mut s = self.state.lock().unwrap();
        let unreachable =
            |message: &str| FetchError::Unreachable { target: target.to_owned(), message: message.into() };
        let p = s.proxies.get_mut(target).ok_or_else(|| unreachable("no such proxy"))?;
        if let Some(e) = &p.down {
            return Err(unreachable(e));
        }
        // Kills only widen, as in the filter.
        let record = KillRecord::widened(p.kills.get(order.rollout.as_str()), order, unix_ms);
        p.kills.insert(order.rollout.to_string(), record.clone());
        let applied_revision = p.config.revision;
        s.kills.push(KillReceived { at: now, target: target.to_owned(), order: order.clone(), applied_revision });
        Ok(record)
    }
}

// ---------------------------------------------------------------------------------------------
// The recording notifier
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct RecordingNotifier {
    notices: Mutex<Vec<Notice>>,
}

impl RecordingNotifier {
    /// The phase changes posted, in order: (from, to).
    fn phases(&self) -> Vec<(String, String)> {
        let notices = self.notices.lock().unwrap();
        notices.iter().filter(|n| n.kind == NoticeKind::PhaseChange).map(|n| (n.from.clone(), n.to.clone())).collect()
    }

    /// The foreign writes posted (a Warning Event each in mesh mode).
    fn foreign(&self) -> Vec<Notice> {
        self.notices().into_iter().filter(|n| n.kind == NoticeKind::ForeignWrite).collect()
    }

    fn notices(&self) -> Vec<Notice> {
        self.notices.lock().unwrap().clone()
    }
}

impl Notifier for RecordingNotifier {
    async fn post(&self, notice: &Notice) -> Result<(), String> {
        self.notices.lock().unwrap().push(notice.clone());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The rig: fakes wired together, and the tick-by-tick driver
// ---------------------------------------------------------------------------------------------

type Agent = Controller<FakeFleet, RecordingRouter, RecordingNotifier>;

struct Rig {
    clock: Clock,
    fleet: Arc<FakeFleet>,
    router: RecordingRouter,
    notifier: Arc<RecordingNotifier>,
}

impl Rig {
    /// Two proxies applying `config`, which is also the durable state.
    fn new(config: RouteConfig) -> Rig {
        let clock = Clock { t0: Instant::now() };
        let router = RecordingRouter::new(clock, config);
        let fleet = Arc::new(FakeFleet::new(clock, router.clone(), &TARGETS));
        Rig { clock, fleet, router, notifier: Arc::new(RecordingNotifier::default()) }
    }

    async fn try_start(
        &self,
        spec: Spec,
        targets: &[&str],
    ) -> Result<(Agent, watch::Receiver<StatusView>), StartError> {
        let settings = Settings { targets: targets.iter().map(|t| (*t).to_owned()).collect(), ..Settings::default() };
        self.start_with(spec, settings).await
    }

    async fn start_with(
        &self,
        spec: Spec,
        settings: Settings,
    ) -> Result<(Agent, watch::Receiver<StatusView>), StartError> {
        let (tx, rx) = watch::channel(StatusView::default());
        let agent = Controller::start(
            spec,
            Arc::clone(&self.fleet),
            self.router.clone(),
            Arc::clone(&self.notifier),
            settings,
            tx,
        )
        .await?;
        settle().await;
        Ok((agent, rx))
    }

    /// A controller for `spec` over both proxies and this rig's router.
    async fn start(&self, spec: Spec) -> (Agent, watch::Receiver<StatusView>) {
        self.try_start(spec, &TARGETS).await.unwrap()
    }

    /// One second passes with no agent running: the proxies serve.
    async fn idle(&self, seconds: u64) {
        for _ in 0..seconds {
            tokio::time::advance(secs(1)).await;
            self.fleet.serve_one_second();
        }
    }

    /// One second: the proxies serve at the weight they apply, then the agent ticks.
    async fn second(&self, agent: &mut Agent) {
        tokio::time::advance(secs(1)).await;
        self.fleet.serve_one_second();
        agent.tick().await;
        settle().await;
    }

    async fn seconds(&self, agent: &mut Agent, n: u64) {
        for _ in 0..n {
            self.second(agent).await;
        }
    }

    /// Ticks once a second until `done` holds; the seconds it took, or `None` after `limit`.
    async fn until(&self, agent: &mut Agent, limit: u64, done: impl Fn(&Agent) -> bool) -> Option<u64> {
        for s in 1..=limit {
            self.second(agent).await;
            if done(agent) {
                return Some(s);
            }
        }
        None
    }
}

/// Lets the tasks the controller spawned (webhook posts) run.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// (weight %, phase, failed checks) of each write.
fn summary(writes: &[Write]) -> Vec<(f64, Phase, u32)> {
    writes.iter().map(|w| (w.weight.percent(), w.record.phase, w.record.failed_checks)).collect()
}

fn status(rx: &watch::Receiver<StatusView>) -> StatusView {
    rx.borrow().clone()
}

fn phase_is(phase: Phase) -> impl Fn(&Agent) -> bool {
    move |a| a.rollout().phase() == phase
}

// ---------------------------------------------------------------------------------------------
// 1. Promotion
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_healthy_canary_walks_every_step_and_is_promoted() {
    let rig = Rig::new(route());
    rig.idle(3).await; // history from before the agent started
    let (mut agent, rx) = rig.start(spec(2, 3)).await;
    assert!(rig.router.writes().is_empty(), "nothing is written at start");

    let took = rig.until(&mut agent, 60, phase_is(Phase::Succeeded)).await;
    assert!(took.is_some(), "never promoted: {:?}", summary(&rig.router.writes()));

    let landed = rig.router.landed();
    assert_eq!(rig.router.writes().len(), landed.len(), "no write failed");
    assert_eq!(
        summary(&landed),
        vec![
            (10.0, Phase::Progressing, 0),
            (25.0, Phase::Progressing, 0),
            (50.0, Phase::Progressing, 0),
            (100.0, Phase::Promoting, 0),
            (100.0, Phase::Succeeded, 0),
        ]
    );
    for (i, step) in landed.iter().take(3).enumerate() {
        let want = format!("step {} of 3: canary to {}", i + 1, step.weight);
        assert!(step.record.reason.starts_with(&want), "{:?} does not start with {want:?}", step.record.reason);
    }
    assert!(landed[3].record.reason.starts_with("promotion: every step passed"), "{}", landed[3].record.reason);
    // Every step after the first lasted at least one interval; every write bumped the revision once.
    for pair in landed.windows(2).take(3) {
        assert!(pair[1].at - pair[0].at >= secs(2), "{:?} then {:?}", pair[0], pair[1]);
    }
    let revisions: Vec<u64> = landed.iter().map(|w| w.revision.unwrap()).collect();
    assert_eq!(revisions, (2..2 + landed.len() as u64).collect::<Vec<_>>());

    // The proxies now send every request to the canary.
    let before = rig.fleet.served();
    rig.second(&mut agent).await;
    let after = rig.fleet.served();
    assert_eq!((after.0 - before.0, after.1 - before.1), (0, 2 * PER_SECOND));

    assert_eq!(
        rig.notifier.phases(),
        vec![
            ("initializing".into(), "progressing".into()),
            ("progressing".into(), "promoting".into()),
            ("promoting".into(), "succeeded".into()),
        ]
    );
    assert_eq!(rig.notifier.notices().last().unwrap().weight_percent, 100.0);
    assert!(rig.fleet.kills().is_empty(), "a healthy rollout sends no kill order");
    let s = status(&rx);
    assert_eq!((s.phase.as_str(), s.canary_weight_percent, s.phase_changes_total), ("succeeded", 100.0, 3));
    assert_eq!(s.revision, *revisions.last().unwrap());
}

// ---------------------------------------------------------------------------------------------
// 2. Decisive breach
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_decisive_breach_kills_every_proxy_and_writes_zero() {
    let rig = Rig::new(route());
    let (mut agent, rx) = rig.start(spec(2, 3)).await;
    let on_step_2 = rig.until(&mut agent, 30, |_| rig.fleet.weights() == [w(25.0); 2]).await;
    assert!(on_step_2.is_some(), "never reached 25%: {:?}", summary(&rig.router.writes()));

    // The control plane stalls, so the durable 0% cannot reach the proxies; then the canary starts
    // failing one request in five.
    rig.fleet.set_traffic(|t| {
        t.frozen = true;
        t.canary_fail_per_mille = 200;
    });
    let in_force = rig.fleet.configs()[0].revision;
    let writes_before = rig.router.writes().len();
    let took = rig.until(&mut agent, 2, phase_is(Phase::RolledBack)).await;
    assert!(took.is_some(), "not rolled back within two ticks: {:?}", status(&rx).recent_verdicts);
    let rolled_back_at = rig.clock.now();

    // A kill order reached every proxy, holding the revision it applies.
    let kills = rig.fleet.kills();
    let targets: Vec<&str> = kills.iter().map(|k| k.target.as_str()).collect();
    assert_eq!(targets.len(), TARGETS.len(), "{kills:?}");
    for target in TARGETS {
        assert!(targets.contains(&target), "no kill order for {target}: {kills:?}");
    }
    for k in &kills {
        assert_eq!((k.order.rollout.as_str(), k.at), ("demo", rolled_back_at));
        assert!(k.order.revision >= in_force && k.order.revision >= k.applied_revision, "{k:?} (in force: {in_force})");
    }
    // ... and the durable configuration went to 0% with the rolled-back record, in the same tick.
    let writes = rig.router.writes();
    let rollback = &writes[writes_before..];
    assert_eq!(summary(rollback), vec![(0.0, Phase::RolledBack, 0)]);
    assert_eq!(rollback[0].at, rolled_back_at);
    assert!(rollback[0].record.reason.starts_with("rollback: decisive breach"), "{}", rollback[0].record.reason);

    // The kill alone stops canary traffic: the proxies still apply the old 25% configuration.
    let (_, canary_before) = rig.fleet.served();
    rig.seconds(&mut agent, 3).await;
    assert!(rig.fleet.configs().iter().all(|c| c.canary_weight == w(25.0) && c.revision == in_force));
    assert_eq!(rig.fleet.served().1, canary_before, "canary traffic went on after the kill");

    // The control plane recovers and the canary looks healthy again: nothing raises the weight.
    rig.fleet.set_traffic(|t| {
        t.frozen = false;
        t.canary_fail_per_mille = 0;
    });
    rig.seconds(&mut agent, 20).await;
    assert!(rig.fleet.configs().iter().all(|c| c.canary_weight == Weight::ZERO));
    assert_eq!(rig.fleet.served().1, canary_before, "canary traffic after the rollback");
    assert!(rig.router.writes()[writes_before..].iter().all(|w| w.weight == Weight::ZERO));
    assert_eq!(rig.notifier.phases().last().unwrap(), &("progressing".to_owned(), "rolled_back".to_owned()));
    assert_eq!((status(&rx).phase.as_str(), status(&rx).canary_weight_percent), ("rolled_back", 0.0));
}

#[tokio::test(start_paused = true)]
async fn a_slow_store_holds_neither_the_tick_nor_the_kill() {
    let rig = Rig::new(route());
    let (mut agent, rx) = rig.start(spec(2, 3)).await;
    let on_step_2 = rig.until(&mut agent, 30, |_| rig.fleet.weights() == [w(25.0); 2]).await;
    assert!(on_step_2.is_some(), "never reached 25%: {:?}", summary(&rig.router.writes()));
    // From now on the durable store takes 30 s to answer (an API server brownout).
    rig.router.slow(secs(30));
    let mut longest = Duration::ZERO;
    for _ in 0..6 {
        tokio::time::advance(secs(1)).await;
        rig.fleet.serve_one_second();
        let started = tokio::time::Instant::now();
        agent.tick().await;
        longest = longest.max(started.elapsed());
        settle().await;
    }
    let s = status(&rx);
    assert!(s.canary_weight_percent > s.written_weight_percent, "the next step's write hangs: {s:?}");
    assert!(longest <= Duration::from_millis(100), "a tick waited {longest:?} for the store");
    // The canary breaches while a write hangs: the kill goes out in the tick that decides.
    rig.fleet.set_traffic(|t| t.canary_fail_per_mille = 200);
    let took = rig.until(&mut agent, 2, phase_is(Phase::RolledBack)).await;
    assert!(took.is_some(), "not rolled back within two ticks: {:?}", status(&rx).recent_verdicts);
    let rolled_back_at = rig.clock.now();
    let kills = rig.fleet.kills();
    assert_eq!(kills.len(), TARGETS.len(), "{kills:?}");
    // Sent before the tick's short wait for the (new, hanging) durable write.
    assert!(kills.iter().all(|k| rolled_back_at.saturating_sub(k.at) <= Duration::from_millis(100)), "{kills:?}");
    // The store answers again: the 0% lands, nothing else after it.
    rig.router.slow(Duration::ZERO);
    rig.seconds(&mut agent, 40).await;
    let last = rig.router.landed().last().cloned().unwrap();
    assert_eq!((last.weight, last.record.phase), (Weight::ZERO, Phase::RolledBack));
    assert_eq!(status(&rx).written_weight_percent, 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_proxy_that_missed_the_kill_gets_it_again_when_it_answers() {
    let rig = Rig::new(route());
    let (mut agent, _rx) = rig.start(spec(2, 3)).await;
    let on_step = rig.until(&mut agent, 30, |_| rig.fleet.weights() == [w(25.0); 2]).await;
    assert!(on_step.is_some(), "never reached 25%");
    // The control plane stalls; proxy b's listener is down when the canary breaks.
    rig.fleet.set_traffic(|t| {
        t.frozen = true;
        t.canary_fail_per_mille = 200;
    });
    rig.fleet.set_down(TARGETS[1], Some("connection refused"));
    let took = rig.until(&mut agent, 3, phase_is(Phase::RolledBack)).await;
    assert!(took.is_some(), "not rolled back");
    let kills = rig.fleet.kills();
    assert_eq!(kills.iter().map(|k| k.target.as_str()).collect::<Vec<_>>(), vec![TARGETS[0]]);
    assert_eq!(rig.fleet.weights()[1], w(25.0), "b still routes to the canary (its config is stale)");
    // b answers again, still on the stale 25% configuration: the next tick sends it the kill.
    rig.fleet.set_down(TARGETS[1], None);
    rig.second(&mut agent).await;
    let kills = rig.fleet.kills();
    assert_eq!(kills.last().map(|k| k.target.as_str()), Some(TARGETS[1]), "{kills:?}");
    assert_eq!(rig.fleet.weights(), vec![Weight::ZERO; 2]);
    // Once held, it is not sent again.
    let sent = rig.fleet.kills().len();
    rig.seconds(&mut agent, 3).await;
    assert_eq!(rig.fleet.kills().len(), sent);
}

#[tokio::test(start_paused = true)]
async fn a_slow_canary_is_rolled_back() {
    let rig = Rig::new(route());
    let (mut agent, _rx) = rig.start(spec(2, 3)).await;
    rig.second(&mut agent).await;
    assert_eq!(rig.fleet.weights(), vec![w(10.0); 2]);
    // Every canary request now takes 900 ms against a p99 bound of 500 ms.
    rig.fleet.set_traffic(|t| t.canary_latency_us = 900_000);
    let took = rig.until(&mut agent, 3, phase_is(Phase::RolledBack)).await;
    assert!(took.is_some(), "a canary at 900 ms was not rolled back within three ticks");
    let last = rig.router.landed().pop().unwrap();
    assert_eq!((last.weight, last.record.phase), (Weight::ZERO, Phase::RolledBack));
    assert!(last.record.reason.contains("latency"), "{}", last.record.reason);
    assert_eq!(rig.fleet.kills().len(), TARGETS.len());
}

// ---------------------------------------------------------------------------------------------
// 3. Failed checks toward the threshold
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn failure_bursts_count_failed_checks_durably_until_the_threshold() {
    let rig = Rig::new(route());
    // A clean minute held on the first step, then a burst of 10% failures that the stable
    // shares, against a 99% SLO: the comparison sees nothing, the SLO test's evidence is far
    // below zero after 6,000 clean canary requests, and each check's window (20 failures in
    // 200, which a rate at the bound gives about 10⁻¹¹ of the time) is a significant miss: a
    // failed check, none decisive. (A mild 2% would not count at all: a rate at the bound gives
    // it too often for the checks' share of α.) At 500 requests a second each proxy sends 50 to
    // the canary at 10%.
    rig.fleet.set_traffic(|t| t.per_second = 500);
    let burst = |t: &mut Traffic| {
        t.stable_fail_per_mille = 100;
        t.canary_fail_per_mille = 100;
    };
    let clean = |t: &mut Traffic| {
        t.stable_fail_per_mille = 0;
        t.canary_fail_per_mille = 0;
    };
    let (mut agent, rx) = rig.start(held_spec(2, 3)).await;
    rig.seconds(&mut agent, 60).await;
    rig.fleet.set_traffic(burst);
    let two_failed = rig.until(&mut agent, 20, |a| a.rollout().status().failed_checks == 2).await;
    assert!(two_failed.is_some(), "no two failed checks: {:?}", summary(&rig.router.writes()));
    // Each failed check was written beside the unchanged weight.
    assert_eq!(
        summary(&rig.router.landed()),
        vec![(10.0, Phase::Progressing, 0), (10.0, Phase::Progressing, 1), (10.0, Phase::Progressing, 2)]
    );
    let verdicts = status(&rx).recent_verdicts;
    let failed = verdicts.iter().find(|v| v.verdict == "fail").expect("a failed verdict in the status");
    assert!(
        failed.reasons.iter().any(|r| r.starts_with("request-success-rate 9") && r.contains("< 99%")),
        "{failed:?}"
    );

    // The count is durable: a restarted agent picks it up from the record. Its sequential
    // evidence starts afresh, so it gets its own clean minute before the next burst.
    drop(agent);
    rig.fleet.set_traffic(clean);
    let (mut agent, rx) = rig.start(held_spec(2, 3)).await;
    assert_eq!((status(&rx).failed_checks, status(&rx).threshold), (2, 3));
    assert_eq!(rig.router.landed().len(), 3, "a restart writes nothing");
    rig.seconds(&mut agent, 60).await;
    rig.fleet.set_traffic(burst);

    let took = rig.until(&mut agent, 10, phase_is(Phase::RolledBack)).await;
    assert!(took.is_some(), "the third failed check did not roll back");
    let landed = rig.router.landed();
    assert_eq!(summary(&landed[3..]), vec![(0.0, Phase::RolledBack, 3)]);
    let reason = &landed[3].record.reason;
    assert!(reason.contains("3 failed checks reached the threshold of 3"), "{reason}");
    assert!(!reason.contains("decisive"), "a shared burst is never decisive: {reason}");
    assert!(landed.iter().all(|write| write.weight <= w(10.0)), "a failing canary never advances");
    assert_eq!(rig.fleet.kills().len(), TARGETS.len(), "a threshold rollback also kills");
    assert_eq!(rig.fleet.weights(), vec![Weight::ZERO; 2]);
}

// ---------------------------------------------------------------------------------------------
// 4. Router failures
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_failed_write_is_retried_with_backoff_until_it_lands() {
    let rig = Rig::new(route());
    // Checks every 4 s, so three failed writes all fall within one step.
    let (mut agent, rx) = rig.start(spec(4, 3)).await;
    rig.second(&mut agent).await;
    assert_eq!(summary(&rig.router.landed()), vec![(10.0, Phase::Progressing, 0)]);

    rig.router.fail_next(3);
    let attempted = rig.until(&mut agent, 10, |_| rig.router.writes().len() > 1).await;
    assert!(attempted.is_some(), "the step to 25% was never attempted");
    let first_attempt = rig.clock.now();
    for errors in 1..=3 {
        let s = status(&rx);
        let not_ready = s.not_ready.expect("not ready while the weight cannot be written");
        assert!(not_ready.starts_with("cannot write the weight") && not_ready.contains("read-only file system"));
        assert_eq!(s.router_errors_total, errors);
        assert_eq!(s.canary_weight_percent, 25.0, "the rollout's weight, not yet durable");
        assert_eq!(s.written_weight_percent, 10.0, "the weight the proxies apply");
        assert_eq!(rig.fleet.weights(), vec![w(10.0); 2], "the proxies still apply the durable 10%");
        rig.second(&mut agent).await;
    }

    // Retries back off (0.5 s, 1 s, 2 s after each failure; the loop ticks every second), with
    // the same weight and record each time, until one lands.
    rig.second(&mut agent).await;
    let writes = rig.router.writes();
    let attempts = &writes[1..];
    let times: Vec<Duration> = attempts.iter().map(|w| w.at - first_attempt).collect();
    assert_eq!(times, vec![secs(0), secs(1), secs(2), secs(4)]);
    assert_eq!(summary(attempts), vec![(25.0, Phase::Progressing, 0); 4]);
    assert_eq!(attempts.iter().map(|w| w.revision).collect::<Vec<_>>(), vec![None, None, None, Some(3)]);

    let s = status(&rx);
    assert_eq!((s.not_ready, s.router_errors_total, s.revision), (None, 3, 3));
    assert_eq!(rig.fleet.weights(), vec![w(25.0); 2]);
}

/// While a step's write keeps failing, the proxies still serve the old weight, so the step is not
/// judged: its interval and `minRequests` count from when the weight became durable. Without that
/// hold, checks every 2 s and three failed writes would pass a 25% step the proxies never applied,
/// and the recovered router would write 10% to 50% in one go.
#[tokio::test(start_paused = true)]
async fn no_step_is_skipped_or_shortened_when_writes_fail() {
    let rig = Rig::new(route());
    let (mut agent, _rx) = rig.start(spec(2, 3)).await;
    rig.second(&mut agent).await;
    rig.router.fail_next(3);
    rig.until(&mut agent, 40, phase_is(Phase::Succeeded)).await;
    let landed = rig.router.landed();
    let durable: Vec<f64> = landed.iter().map(|w| w.weight.percent()).collect();
    assert_eq!(durable[..4], [10.0, 25.0, 50.0, 100.0], "durable weights went {durable:?}");
    for pair in landed.windows(2).take(3) {
        assert!(pair[1].at - pair[0].at >= secs(2), "a durable step lasted less than an interval: {landed:?}");
    }
}

/// A step counts from when the proxies apply it. One proxy refuses the 25% configuration (its
/// typo guard, say): the step holds, at the weight it had, the proxy is named in `/status` as
/// having rejected the revision, and the step's full interval runs once it applies it.
#[tokio::test(start_paused = true)]
async fn a_proxy_that_rejects_a_step_holds_it_and_is_reported() {
    let rig = Rig::new(route());
    let (mut agent, rx) = rig.start(spec(2, 3)).await;
    rig.second(&mut agent).await;
    assert_eq!(summary(&rig.router.landed()), vec![(10.0, Phase::Progressing, 0)]);
    rig.second(&mut agent).await; // both apply 10%
    rig.fleet.set_rejecting(TARGETS[1], true);
    let on_step_2 = rig.until(&mut agent, 10, |a| a.rollout().weight() == w(25.0)).await;
    assert!(on_step_2.is_some(), "never decided 25%: {:?}", summary(&rig.router.writes()));
    let step_2 = rig.router.config().revision;
    rig.seconds(&mut agent, 20).await;
    assert_eq!(rig.router.config().canary_weight, w(25.0), "no step while a proxy rejects the last one");
    let s = status(&rx);
    assert_eq!((s.phase.as_str(), s.proxies_reporting), ("progressing", 2));
    let behind: Vec<(&str, u64, bool)> =
        s.proxies_behind.iter().map(|b| (b.target.as_str(), b.revision, b.rejected)).collect();
    assert_eq!(behind, vec![(TARGETS[1], step_2 - 1, true)]);
    let want = format!("1 of 2 proxies rejected revision {step_2} (canary weight 25%): {} applies", TARGETS[1]);
    assert!(s.reason.starts_with(&want), "{}", s.reason);

    // It takes the configuration: the step starts on the tick it reports it.
    rig.fleet.set_rejecting(TARGETS[1], false);
    rig.second(&mut agent).await;
    let applied_at = rig.clock.now();
    let s = status(&rx);
    assert!(s.proxies_behind.is_empty(), "{:?}", s.proxies_behind);
    assert_eq!(s.reason, format!("every reporting proxy applies revision {step_2} now"));
    let next = rig.until(&mut agent, 10, |a| a.rollout().weight() == w(50.0)).await;
    assert!(next.is_some(), "never moved on once every proxy applied 25%");
    let moved = rig.router.landed().last().cloned().unwrap();
    assert!(moved.at - applied_at >= secs(2), "the step lasted {:?}, less than an interval", moved.at - applied_at);
}

// ---------------------------------------------------------------------------------------------
// 5. Restarts
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_restarted_agent_resumes_its_step_after_a_full_interval() {
    let rig = Rig::new(route());
    // Checks every 4 s: long enough that a check run too early (before a full interval on the
    // resumed step) would show.
    let (mut agent, _rx) = rig.start(spec(4, 3)).await;
    let on_step_2 = rig.until(&mut agent, 30, |a| a.rollout().status().step == Some(1)).await;
    assert!(on_step_2.is_some(), "never reached the second step: {:?}", summary(&rig.router.writes()));
    let writes = rig.router.writes().len();

    // The agent dies; the proxies keep the durable 25% and serve for five seconds, now with so much
    // traffic that `minRequests` is met within a second: only the interval can hold the step.
    drop(agent);
    rig.fleet.set_traffic(|t| t.per_second = 1000);
    rig.idle(5).await;
    let (mut agent, rx) = rig.start(spec(4, 3)).await;
    let restarted_at = rig.clock.now();
    let s = status(&rx);
    assert_eq!((s.phase.as_str(), s.canary_weight_percent, s.step), ("progressing", 25.0, Some(1)));
    assert_eq!(rig.router.writes().len(), writes, "a restart writes nothing");

    let next = rig.until(&mut agent, 20, |a| a.rollout().weight() != w(25.0)).await;
    assert!(next.is_some(), "the resumed rollout never moved on");
    let moved = &rig.router.writes()[writes..];
    assert_eq!(summary(moved), vec![(50.0, Phase::Progressing, 0)], "the next step after 25%, never from 0%");
    let after = moved[0].at - restarted_at;
    assert!(after >= secs(4), "moved on {after:?} after the restart, before a full interval");
}

/// Canary trials the errors comparison has seen.
fn trials(agent: &Agent) -> u64 {
    agent.rollout().judge().evidence()[0].canary_trials
}

/// Settings over both proxies with the evidence kept in `store`, saved every `every`.
fn with_evidence(store: &FileEvidence, every: Duration) -> Settings {
    Settings {
        targets: TARGETS.iter().map(|t| (*t).to_owned()).collect(),
        evidence: Some(Arc::new(store.clone())),
        evidence_every: every,
        ..Settings::default()
    }
}

/// Waits (real time) for the save the agent started in a blocking task to reach the disk.
fn saved(store: &FileEvidence) -> canary_rollout::Checkpoint {
    for _ in 0..200 {
        if let Ok(Some(bytes)) = store.load() {
            return canary_rollout::Checkpoint::from_json(&bytes).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no checkpoint in {}", store.location());
}

#[tokio::test(start_paused = true)]
async fn a_restarted_agent_resumes_its_evidence_from_the_checkpoint_instead_of_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileEvidence::beside(&dir.path().join("filter.yaml"));
    let rig = Rig::new(route());
    // Held on the first step (minRequests out of reach), saving every 5 s.
    let (mut agent, _rx) = rig.start_with(held_spec(2, 3), with_evidence(&store, secs(5))).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..30 {
        rig.second(&mut agent).await;
        seen.push(trials(&agent));
    }
    let at_crash = trials(&agent);
    assert!(at_crash > 500, "{at_crash}");

    // The agent is killed (no save on the way out), the proxies serve on for 3 s, and it starts
    // again: the statistics continue from the last checkpoint, at most one save period old.
    drop(agent);
    // A dropped controller's save may still be running in its blocking task (a killed process's
    // would not): let it land, so what the file holds is what the next agent reads.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let on_disk = saved(&store).judge.errors_vs_stable.canary_trials;
    // On tokio's paused clock the 30 ticks take a few real ms, so saves still in flight skip
    // some periods here: which checkpoint was last is not pinned, only that it is one of them.
    assert!(on_disk > 0 && seen.contains(&on_disk), "saved {on_disk}, seen {seen:?}");
    rig.idle(3).await;
    let (mut agent, _rx) = rig.start_with(held_spec(2, 3), with_evidence(&store, secs(5))).await.unwrap();
    let resumed = trials(&agent);
    assert_eq!(resumed, on_disk, "resumed from the file");
    rig.second(&mut agent).await;
    assert_eq!(trials(&agent), resumed, "the first snapshot after the restart is a baseline");
    rig.second(&mut agent).await;
    assert!(trials(&agent) > resumed, "and it carries on");
    assert_eq!(saved(&store).revision, rig.router.landed().last().unwrap().revision.unwrap());

    // Without the store (as before) the statistics start from zero.
    drop(agent);
    let (agent, _rx) = rig.start(held_spec(2, 3)).await;
    assert_eq!(trials(&agent), 0);
    drop(agent);

    // Stopped cleanly, the agent saves on the way out: nothing is lost but the baseline tick.
    let (mut agent, _rx) = rig.start_with(held_spec(2, 3), with_evidence(&store, secs(3600))).await.unwrap();
    rig.seconds(&mut agent, 10).await;
    let at_stop = trials(&agent);
    let (_commands_tx, mut commands) = tokio::sync::mpsc::channel(1);
    agent.run(secs(1), &mut commands, std::future::ready(())).await;
    assert_eq!(saved(&store).judge.errors_vs_stable.canary_trials, at_stop);
    let (agent, _rx) = rig.start_with(held_spec(2, 3), with_evidence(&store, secs(5))).await.unwrap();
    assert_eq!(trials(&agent), at_stop);

    // A checkpoint for another rollout is refused: a new canary starts from zero.
    drop(agent);
    let other = Rig::new(
        parse_route(br#"{"version":1,"rollout":"demo","stable":"v1","canary":"v3","canary_weight":0,"revision":1}"#)
            .unwrap(),
    );
    let spec_v3 = Spec::from_yaml_or_json(&spec_text(2, 3).replace("canary: v2", "canary: v3")).unwrap();
    let (agent, _rx) = other.start_with(spec_v3, with_evidence(&store, secs(5))).await.unwrap();
    assert_eq!(trials(&agent), 0);
}

#[tokio::test(start_paused = true)]
async fn proxies_down_and_restarted_mid_step_hold_the_step_and_count_from_zero() {
    let rig = Rig::new(route());
    let (mut agent, rx) = rig.start(spec(4, 3)).await;
    let on_step_2 = rig.until(&mut agent, 30, |a| a.rollout().status().step == Some(1)).await;
    assert!(on_step_2.is_some(), "never reached the second step: {:?}", summary(&rig.router.writes()));
    // The step starts when the proxies report its revision, a second after the write. Two seconds
    // meet `minRequests`; its check is due three seconds later, while every proxy is down. With
    // no data the check must hold, not pass on what it saw before.
    rig.seconds(&mut agent, 2).await;
    let writes = rig.router.writes().len();
    for t in TARGETS {
        rig.fleet.set_down(t, Some("connection refused"));
    }
    for _ in 0..5 {
        rig.second(&mut agent).await;
        let s = status(&rx);
        assert_eq!((s.phase.as_str(), s.canary_weight_percent, s.step), ("progressing", 25.0, Some(1)));
        assert!(s.not_ready.as_deref().is_some_and(|r| r.starts_with("no proxy answered")), "{:?}", s.not_ready);
    }
    assert_eq!(rig.router.writes().len(), writes, "nothing is decided while no proxy answers");

    // Both come back as new instances whose counters start from zero.
    for t in TARGETS {
        rig.fleet.restart(t);
    }
    rig.second(&mut agent).await;
    let s = status(&rx);
    assert_eq!((s.proxy_resets_total, s.proxies_reporting, s.not_ready), (2, 2, None));
    assert_eq!(s.step, Some(1), "still on the same step");
    let served = rig.fleet.served();
    let canary_total = s.subsets[1].requests_total;
    rig.second(&mut agent).await;
    let s = status(&rx);
    assert_eq!(
        s.subsets[1].requests_total - canary_total,
        rig.fleet.served().1 - served.1,
        "the restarted proxies' requests count in full"
    );

    let done = rig.until(&mut agent, 30, phase_is(Phase::Succeeded)).await;
    assert!(done.is_some(), "never promoted after the restart: {:?}", summary(&rig.router.writes()));
    let after: Vec<(f64, Phase, u32)> = summary(&rig.router.writes()[writes..]);
    assert_eq!(
        after,
        vec![(50.0, Phase::Progressing, 0), (100.0, Phase::Promoting, 0), (100.0, Phase::Succeeded, 0)],
        "carried on from the same step"
    );
    assert_eq!(status(&rx).proxy_resets_total, 2, "a reset is counted once");
}

#[tokio::test(start_paused = true)]
async fn a_rolled_back_rollout_stays_rolled_back_after_a_restart() {
    let record = RolloutRecord::new(Phase::RolledBack, 1, "rollback: decisive breach", UNIX_START_MS);
    let rig = Rig::new(RouteConfig { revision: 7, rollout_state: Some(record), ..route() });
    let (mut agent, rx) = rig.start(spec(2, 3)).await;
    assert_eq!(status(&rx).phase, "rolled_back");
    rig.seconds(&mut agent, 30).await;
    assert!(rig.router.writes().is_empty(), "{:?}", rig.router.writes());
    assert_eq!(rig.fleet.served().1, 0, "no request reached the canary");
    assert!(rig.fleet.kills().is_empty(), "nothing to kill at 0%");
    assert_eq!((status(&rx).phase.as_str(), status(&rx).failed_checks), ("rolled_back", 1));
}

#[tokio::test(start_paused = true)]
async fn a_rolled_back_rollout_raised_by_hand_is_put_back_to_zero_at_start() {
    let record = RolloutRecord::new(Phase::RolledBack, 0, "rollback: requested by the operator", UNIX_START_MS);
    let rig = Rig::new(RouteConfig { canary_weight: w(25.0), revision: 7, rollout_state: Some(record), ..route() });
    rig.idle(2).await;
    assert!(rig.fleet.served().1 > 0, "the hand-raised weight sends canary traffic");

    let (mut agent, rx) = rig.start(spec(2, 3)).await;
    // Before any tick: weight 0 written with the rolled-back record, and every proxy killed.
    assert_eq!(summary(&rig.router.landed()), vec![(0.0, Phase::RolledBack, 0)]);
    let kills = rig.fleet.kills();
    assert_eq!(kills.len(), TARGETS.len());
    assert!(kills.iter().all(|k| k.order.revision >= 7), "{kills:?}");
    assert_eq!((status(&rx).canary_weight_percent, status(&rx).revision), (0.0, 8));

    let (_, canary) = rig.fleet.served();
    rig.seconds(&mut agent, 20).await;
    assert_eq!(rig.fleet.served().1, canary, "canary traffic after the start");
    assert_eq!(rig.router.writes().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 6. Operator commands
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn pause_holds_resume_continues_and_rollback_kills() {
    let rig = Rig::new(route());
    let (mut agent, rx) = rig.start(spec(2, 3)).await;
    rig.second(&mut agent).await;
    assert_eq!(agent.rollout().weight(), w(10.0));

    // Refused: nothing is paused.
    let refused = agent.command(Command::Resume).await.unwrap_err();
    assert_eq!(refused, "cannot resume a rollout that is progressing");

    let answer = agent.command(Command::Pause).await.unwrap();
    assert_eq!(answer, "paused by the operator at 10%");
    assert_eq!(status(&rx).phase, "paused");
    settle().await;
    rig.seconds(&mut agent, 10).await; // five intervals of healthy traffic
    assert_eq!(summary(&rig.router.landed()), vec![(10.0, Phase::Progressing, 0), (10.0, Phase::Paused, 0)]);
    assert_eq!(rig.fleet.weights(), vec![w(10.0); 2], "paused: the weight holds");
    assert!(agent.command(Command::Pause).await.is_err(), "already paused");

    let resumed_at = rig.clock.now();
    assert_eq!(agent.command(Command::Resume).await.unwrap(), "resumed by the operator at 10%");
    let moved = rig.until(&mut agent, 10, |a| a.rollout().weight() == w(25.0)).await;
    assert!(moved.is_some(), "resume did not continue");
    let landed = rig.router.landed();
    assert_eq!(summary(&landed[2..]), vec![(10.0, Phase::Progressing, 0), (25.0, Phase::Progressing, 0)]);
    assert!(landed[3].at - resumed_at >= secs(2), "after a resume the step waits a full interval");

    let answer = agent.command(Command::Rollback).await.unwrap();
    assert_eq!(answer, "rollback: requested by the operator");
    let last = rig.router.landed().pop().unwrap();
    assert_eq!((last.weight, last.record.phase, last.at), (Weight::ZERO, Phase::RolledBack, rig.clock.now()));
    let kills = rig.fleet.kills();
    assert_eq!(kills.len(), TARGETS.len());
    assert!(kills.iter().all(|k| k.order.revision >= k.applied_revision));
    assert_eq!(rig.fleet.weights(), vec![Weight::ZERO; 2]);

    // Final: every further command is refused with a sentence, and nothing is written.
    let writes = rig.router.writes().len();
    assert_eq!(agent.command(Command::Rollback).await.unwrap_err(), "the rollout is already rolled back");
    assert_eq!(agent.command(Command::Promote).await.unwrap_err(), "cannot promote a rollout that is rolled_back");
    assert_eq!(agent.command(Command::Pause).await.unwrap_err(), "cannot pause a rollout that is rolled_back");
    rig.seconds(&mut agent, 5).await;
    assert_eq!(rig.router.writes().len(), writes);
    settle().await;
    assert_eq!(
        rig.notifier.phases(),
        vec![
            ("initializing".into(), "progressing".into()),
            ("progressing".into(), "paused".into()),
            ("paused".into(), "progressing".into()),
            ("progressing".into(), "rolled_back".into()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_operator_may_promote_early() {
    let rig = Rig::new(route());
    let (mut agent, rx) = rig.start(spec(2, 3)).await;
    rig.second(&mut agent).await;
    let answer = agent.command(Command::Promote).await.unwrap();
    assert_eq!(answer, "promotion: requested by the operator");
    assert_eq!(rig.router.landed().pop().map(|w| (w.weight, w.record.phase)), Some((Weight::FULL, Phase::Promoting)));
    assert_eq!(rig.fleet.weights(), vec![Weight::FULL; 2]);
    rig.second(&mut agent).await;
    assert_eq!(status(&rx).phase, "succeeded");
    assert_eq!(agent.command(Command::Promote).await.unwrap_err(), "cannot promote a rollout that is succeeded");
    assert!(rig.fleet.kills().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_command_while_the_router_fails_says_it_is_not_yet_durable() {
    let rig = Rig::new(route());
    let (mut agent, rx) = rig.start(spec(2, 3)).await;
    rig.second(&mut agent).await;
    rig.router.fail_next(2);
    let answer = agent.command(Command::Rollback).await.unwrap();
    assert!(answer.starts_with("rollback: requested by the operator (not yet durable"), "{answer}");
    // The kill does not wait for the durable write.
    assert_eq!(rig.fleet.weights(), vec![Weight::ZERO; 2]);
    rig.seconds(&mut agent, 2).await;
    assert_eq!(summary(&rig.router.landed()[1..]), vec![(0.0, Phase::RolledBack, 0)]);
    assert_eq!((status(&rx).not_ready, status(&rx).router_errors_total), (None, 2));
}

// ---------------------------------------------------------------------------------------------
// 7. Status
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_status_shows_the_rollout_its_traffic_and_the_proxies() {
    let rig = Rig::new(route());
    rig.idle(3).await;
    let (mut agent, rx) = rig.start(spec(2, 3)).await;
    let s = status(&rx);
    assert_eq!((s.rollout.as_str(), s.phase.as_str(), s.step, s.steps), ("demo", "initializing", None, 3));

    rig.second(&mut agent).await; // first sighting: a baseline only; the first step
    let baseline = rig.fleet.served();
    rig.second(&mut agent).await;
    let served = rig.fleet.served();
    let s = status(&rx);
    assert_eq!((s.phase.as_str(), s.canary_weight_percent, s.step, s.revision), ("progressing", 10.0, Some(0), 2));
    assert_eq!((s.proxies_reporting, s.proxies_failing.len(), s.not_ready.as_deref()), (2, 0, None));
    let subsets: Vec<(&str, &str, u64, u64)> =
        s.subsets.iter().map(|v| (v.subset.as_str(), v.role.as_str(), v.requests_total, v.failures_total)).collect();
    assert_eq!(
        subsets,
        vec![("v1", "stable", served.0 - baseline.0, 0), ("v2", "canary", served.1 - baseline.1, 0)],
        "totals count what was served after the first sighting"
    );
    assert_eq!(served.1 - baseline.1, 2 * PER_SECOND / 10, "one second at 10% on two proxies");
    for v in &s.subsets {
        assert_eq!(v.success_rate_percent, Some(100.0));
    }
    let p50 = |i: usize| s.subsets[i].p50_ms.unwrap();
    assert!((p50(0) - 20.0).abs() < 1.0 && (p50(1) - 25.0).abs() < 1.0, "p50 {} and {}", p50(0), p50(1));
    assert_eq!(s.evidence.len(), 4, "{:?}", s.evidence);

    // One proxy's listener fails: it is reported, the other is still judged.
    rig.fleet.set_down("proxy-b:9902", Some("connection refused"));
    rig.second(&mut agent).await;
    let s = status(&rx);
    assert_eq!((s.proxies_reporting, s.not_ready.as_deref()), (1, None));
    assert_eq!(s.proxies_failing.len(), 1, "{:?}", s.proxies_failing);
    assert!(s.proxies_failing[0].starts_with("proxy-b:9902") && s.proxies_failing[0].contains("connection refused"));

    // Both fail: the agent is not ready, and says which.
    rig.fleet.set_down("proxy-a:9902", Some("connection refused"));
    rig.second(&mut agent).await;
    let s = status(&rx);
    assert_eq!((s.proxies_reporting, s.proxies_failing.len()), (0, 2));
    let not_ready = s.not_ready.expect("not ready with no proxy answering");
    assert!(not_ready.starts_with("no proxy answered") && not_ready.contains("proxy-a:9902"), "{not_ready}");

    // They come back: ready again.
    rig.fleet.set_down("proxy-a:9902", None);
    rig.fleet.set_down("proxy-b:9902", None);
    rig.second(&mut agent).await;
    let s = status(&rx);
    assert_eq!((s.proxies_reporting, s.proxies_failing.len(), s.not_ready), (2, 0, None));
}

/// (lowest, highest) weight the proxies apply, in percent, as the last tick observed it.
fn observed(rx: &watch::Receiver<StatusView>) -> Option<(f64, f64)> {
    status(rx).observed_weight_percent.map(|o| (o.min_percent, o.max_percent))
}

#[tokio::test(start_paused = true)]
async fn the_observed_weight_is_what_the_proxies_apply_not_what_the_agent_wrote() {
    let rig = Rig::new(route());
    let (mut agent, rx) = rig.start(spec(2, 3)).await;
    assert_eq!(observed(&rx), None, "no proxy read before the first tick");
    // Propagation stalls: the first step's 10% is written, but no proxy has picked it up.
    rig.fleet.set_traffic(|t| t.frozen = true);
    rig.second(&mut agent).await;
    rig.second(&mut agent).await;
    let s = status(&rx);
    assert_eq!((s.canary_weight_percent, s.written_weight_percent, observed(&rx)), (10.0, 10.0, Some((0.0, 0.0))));

    // One proxy catches up: the fleet spans 0% to 10%.
    rig.fleet.deliver(TARGETS[0]);
    rig.second(&mut agent).await;
    assert_eq!(observed(&rx), Some((0.0, 10.0)));

    // Only the proxies that answer are observed; with none answering there is no observation.
    rig.fleet.set_down(TARGETS[1], Some("connection refused"));
    rig.second(&mut agent).await;
    assert_eq!(observed(&rx), Some((10.0, 10.0)));
    rig.fleet.set_down(TARGETS[0], Some("connection refused"));
    rig.second(&mut agent).await;
    assert_eq!(observed(&rx), None);
    rig.fleet.set_down(TARGETS[0], None);
    rig.fleet.set_down(TARGETS[1], None);

    // A rollback while the 0% has not propagated: both proxies still hold 10% in their
    // configuration, but the kill order holds it, so they apply 0%.
    rig.fleet.deliver(TARGETS[1]);
    agent.command(Command::Rollback).await.unwrap();
    rig.second(&mut agent).await;
    assert!(rig.fleet.configs().iter().all(|c| c.canary_weight == w(10.0)), "the 0% has not propagated");
    assert_eq!(rig.fleet.weights(), vec![Weight::ZERO; 2]);
    assert_eq!(observed(&rx), Some((0.0, 0.0)));
}

// ---------------------------------------------------------------------------------------------
// Start-up checks
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn start_refuses_a_spec_for_another_rollout_or_no_targets() {
    let rig = Rig::new(RouteConfig { canary: "v3".try_into().unwrap(), ..route() });
    let err = rig.try_start(spec(2, 3), &TARGETS).await.expect_err("a mismatched spec must be refused");
    assert!(matches!(err, StartError::Mismatch { field: "canary", .. }), "{err}");
    let err = rig.try_start(spec(2, 3), &[]).await.expect_err("no targets must be refused");
    assert!(matches!(err, StartError::NoTargets), "{err}");
    assert!(rig.router.writes().is_empty() && rig.fleet.kills().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 8. Writes the agent did not make
// ---------------------------------------------------------------------------------------------

/// Runs a rollout to its first step (10%) and one more second on it.
async fn on_first_step(rig: &Rig) -> (Agent, watch::Receiver<StatusView>) {
    let (mut agent, rx) = rig.start(spec(4, 3)).await;
    let on_step = rig.until(&mut agent, 30, |a| a.rollout().weight() == w(10.0)).await;
    assert!(on_step.is_some(), "never reached the first step: {:?}", summary(&rig.router.writes()));
    rig.seconds(&mut agent, 1).await;
    (agent, rx)
}

#[tokio::test(start_paused = true)]
async fn a_weight_patched_in_place_is_caught_held_at_zero_and_reverted() {
    let rig = Rig::new(route());
    let (mut agent, rx) = on_first_step(&rig).await;
    let writes = rig.router.writes().len();
    // `kubectl patch` of canary_weight alone: same revision, the agent's record (stamped 10%) kept.
    rig.router.hand_edit(|c| c.canary_weight = w(99.0));
    let revision = rig.router.config().revision;
    rig.second(&mut agent).await;

    let s = status(&rx);
    assert_eq!(s.foreign_writes_total, 1, "{s:?}");
    let seen = s.last_foreign_write.unwrap_or_default();
    assert!(seen.contains("canary_weight 99%") && seen.contains("edited"), "{seen}");
    assert_eq!(s.canary_weight_percent, 10.0, "the rollout keeps its own weight");
    // Every proxy applying the raise is held at 0% up to its revision, and the rollout's own
    // weight is written over the edit with a higher revision.
    let kills = rig.fleet.kills();
    assert_eq!(kills.len(), TARGETS.len(), "{kills:?}");
    assert!(kills.iter().all(|k| k.order.revision == revision), "{kills:?}");
    assert!(rig.fleet.weights().iter().all(|w| *w <= Weight::from_percent(10.0).unwrap()));
    let reverted = &rig.router.landed()[writes..];
    assert_eq!(summary(reverted), vec![(10.0, Phase::Progressing, 0)]);
    assert_eq!(rig.router.config().revision, revision + 1);
    let foreign = rig.notifier.foreign();
    assert_eq!(foreign.len(), 1, "noticed once: {foreign:?}");
    assert!(foreign[0].reason.contains("revision") && foreign[0].reason.contains("99%"), "{:?}", foreign[0]);

    // Answered once: the following ticks neither count nor write it again, and the step goes on
    // from its restarted evidence.
    rig.seconds(&mut agent, 3).await;
    assert_eq!((status(&rx).foreign_writes_total, rig.notifier.foreign().len()), (1, 1));
    assert_eq!(rig.router.landed().len(), writes + 1);
}

#[tokio::test(start_paused = true)]
async fn a_foreign_write_no_proxy_applies_is_still_reverted_in_the_store() {
    let rig = Rig::new(route());
    let (mut agent, rx) = on_first_step(&rig).await;
    let writes = rig.router.writes().len();
    // Every proxy's guard rejects it (here: propagation frozen), so only the store holds it.
    rig.fleet.set_traffic(|t| t.frozen = true);
    rig.router.hand_edit(|c| {
        c.canary_weight = w(99.0);
        c.revision += 1;
        c.rollout_state = None;
    });
    let took = rig.until(&mut agent, 3, |_| !rig.router.landed()[writes..].is_empty()).await;
    assert!(took.is_some(), "the store kept the foreign write: {:?}", rig.router.config());
    assert_eq!(summary(&rig.router.landed()[writes..]), vec![(10.0, Phase::Progressing, 0)]);
    let s = status(&rx);
    assert_eq!(s.foreign_writes_total, 1);
    assert!(s.last_foreign_write.clone().is_some_and(|l| l.contains("durable configuration")), "{s:?}");
    assert!(rig.fleet.kills().is_empty(), "no proxy applied it: nothing to kill");
}

#[tokio::test(start_paused = true)]
async fn a_hand_raised_weight_found_at_restart_is_reverted_and_never_promoted() {
    let rig = Rig::new(route());
    let (agent, _rx) = on_first_step(&rig).await;
    drop(agent);
    // While no agent runs, someone raises the weight by hand and keeps the agent's record.
    rig.router.hand_edit(|c| {
        c.canary_weight = w(99.0);
        c.revision += 1;
    });
    rig.idle(2).await;
    let writes = rig.router.writes().len();

    let (mut agent, rx) = rig.start(spec(4, 3)).await;
    let s = status(&rx);
    assert_eq!((s.phase.as_str(), s.canary_weight_percent, s.foreign_writes_total), ("progressing", 10.0, 1));
    assert_eq!(summary(&rig.router.landed()[writes..]), vec![(10.0, Phase::Progressing, 0)]);
    assert_eq!(rig.notifier.foreign().len(), 1);
    // The proxies are back at 10% and the rollout walks its steps from there, never jumping.
    rig.second(&mut agent).await;
    assert!(rig.fleet.weights().iter().all(|x| *x == w(10.0)), "{:?}", rig.fleet.weights());
    let done = rig.until(&mut agent, 60, phase_is(Phase::Succeeded)).await;
    assert!(done.is_some());
    let weights: Vec<f64> = summary(&rig.router.landed()[writes..]).iter().map(|(w, _, _)| *w).collect();
    assert_eq!(weights, vec![10.0, 25.0, 50.0, 100.0, 100.0], "stepped from the agent's weight");
}

#[tokio::test(start_paused = true)]
async fn a_succeeded_rollout_stays_succeeded_after_a_restart() {
    let record = RolloutRecord::new(Phase::Succeeded, 0, "promoted", UNIX_START_MS).written_with(Weight::FULL);
    let rig = Rig::new(RouteConfig { canary_weight: w(40.0), revision: 9, rollout_state: Some(record), ..route() });
    let (_agent, rx) = rig.start(spec(4, 3)).await;
    let s = status(&rx);
    assert_eq!((s.phase.as_str(), s.canary_weight_percent, s.foreign_writes_total), ("succeeded", 100.0, 1));
    assert_eq!(summary(&rig.router.landed()), vec![(100.0, Phase::Succeeded, 0)]);
}
