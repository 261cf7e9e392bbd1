//! The control loop: read every proxy, judge, decide, act — once per tick.
//!
//! [`Controller`] owns the decision state ([`Fleet`], [`Rollout`]) and the three effects behind
//! their traits: a [`CounterSource`] + [`KillSwitch`] (the proxies), a [`WeightRouter`] (the
//! durable configuration) and a [`Notifier`]. Each tick it
//! 1. reads every target's snapshot concurrently (a target that fails is reported, the rest are
//!    judged);
//! 2. turns them into one fleet-wide window and lets the rollout decide;
//! 3. on a rollback, sends every proxy a kill order *and* writes weight 0 with the rolled-back
//!    record, concurrently: the kill reaches each proxy in one loopback round trip, and the
//!    durable configuration agrees with it afterwards (its higher revision supersedes the kill);
//! 4. writes the weight and the rollout record whenever they differ from what is durable — a
//!    failed write is retried with exponential backoff until it lands, and meanwhile the step
//!    is held (its traffic is still at the old weight). The write runs in a task of its own: the
//!    tick waits for it at most `write_wait` (a healthy store answers well within it), so a slow
//!    store (an API server brownout) never delays reading, judging or the kill path. One write
//!    at a time: a new decision is written once the write in flight has ended (landed, failed or
//!    timed out after `write_timeout`), and a landed write is taken in after the tick's decision,
//!    so the next step is decided at least a tick after its weight landed. A landed write is not
//!    yet in force: the step's clock and evidence start on the tick every reporting proxy's
//!    snapshot shows its revision, and the step holds while any reporting proxy applies an older
//!    one (past `apply_timeout`, it is reported as having rejected it; see [`Reach`]);
//! 5. publishes a [`StatusView`] for the API and posts phase changes to the notifier;
//! 6. with an [`EvidenceStore`], saves the statistics' checkpoint every `evidence_every` and right
//!    after every durable write that landed, in a task of its own (never while a write of a new
//!    weight is in flight: the checkpoint is tagged with the durable weight and revision), and on
//!    the way out. [`Controller::start`] resumes the evidence from it when it fits the durable
//!    state ([`canary_rollout::checkpoint`]).
//!
//! Time comes from `tokio::time`, so tests run the loop with the clock paused.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use canary_core::{KillOrder, Role, RouteConfig, Snapshot, SubsetName, Weight};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::api::{Command, CommandRequest};
use crate::collect::{AppliedRevision, Fleet, Observation, Window};
use crate::evidence::EvidenceStore;
use crate::foreign::{self, Foreign, Written};
use crate::judge::{Verdict, VerdictKind};
use crate::latency::SlidingLatency;
use crate::mesh::lease::Leadership;
use crate::notify::{Notice, NoticeKind, Notifier};
use crate::rollout::{Behind, ChangeKind, Decision, Phase, Reach, Rollout, WeightChange, guard, written_weight};
use crate::router::{RouterError, WeightRouter};
use crate::source::{CounterSource, KillSwitch};
use crate::spec::Spec;
use crate::status::{EvidenceView, ObservedWeight, StatusView, SubsetView, VerdictView};
use crate::time::{millis, unix_ms};

/// How the loop runs; the defaults suit a sidecar next to one proxy.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Snapshot listeners to read (`host:port`).
    pub targets: Vec<String>,
    /// A target silent for this long has its last data aged out.
    pub staleness: Duration,
    /// Trailing span of the per-subset figures in `/status` and `/metrics`.
    pub status_window: Duration,
    /// How many distinct recent verdicts `/status` keeps.
    pub recent_verdicts: usize,
    /// Bound on each kill order.
    pub kill_timeout: Duration,
    /// Bound on each durable write; a write that takes longer is retried later.
    pub write_timeout: Duration,
    /// How long a tick waits for the write it started before going on without it (the write
    /// carries on in its own task and is collected by a later tick).
    pub write_wait: Duration,
    /// A failed write is retried after this delay, doubling on every further failure up to
    /// `retry_max` (a struggling API server is not hammered). A new decision is always tried
    /// at once.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// When set, the targets follow this channel (pod discovery) instead of staying fixed.
    pub target_updates: Option<watch::Receiver<Vec<String>>>,
    /// A proxy that answers but still applies an older revision this long after a write landed
    /// (or after it first answered, for a new proxy) is reported as having rejected it.
    pub apply_timeout: Duration,
    /// Where the statistics' checkpoint is kept between agent lives; `None` starts them from zero
    /// on every start.
    pub evidence: Option<Arc<dyn EvidenceStore>>,
    /// How often the checkpoint is saved (besides right after each durable write).
    pub evidence_every: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            targets: Vec::new(),
            staleness: Duration::from_secs(10),
            status_window: Duration::from_secs(10),
            recent_verdicts: 20,
            kill_timeout: Duration::from_millis(500),
            write_timeout: Duration::from_secs(5),
            write_wait: Duration::from_millis(100),
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(8),
            target_updates: None,
            apply_timeout: Duration::from_secs(10),
            evidence: None,
            evidence_every: DEFAULT_EVIDENCE_EVERY,
        }
    }
}

/// How often the evidence checkpoint is saved by default: a crash loses at most this much of the
/// statistics (plus the first tick after the restart, a baseline).
pub const DEFAULT_EVIDENCE_EVERY: Duration = Duration::from_secs(5);

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the filter configuration: {0}")]
    Router(#[from] RouterError),
    #[error(
        "rollout spec field `{field}` is {spec:?}, but the filter configuration has {config:?}; \
         the spec must describe the rollout the filter runs"
    )]
    Mismatch { field: &'static str, spec: String, config: String },
    #[error("no targets: give at least one proxy snapshot listener (host:port)")]
    NoTargets,
}

/// Whether `spec` describes the rollout `route` configures (name and subsets).
pub fn check_matches(spec: &Spec, route: &RouteConfig) -> Result<(), StartError> {
    for (field, want, have) in [
        ("name", spec.name(), &route.rollout),
        ("stable", spec.stable(), &route.stable),
        ("canary", spec.canary(), &route.canary),
    ] {
        if want != have {
            return Err(StartError::Mismatch { field, spec: want.to_string(), config: have.to_string() });
        }
    }
    Ok(())
}

/// Reads the durable configuration once and checks it against `spec`, before anything is served.
pub async fn preflight<R: WeightRouter>(spec: &Spec, router: &R) -> Result<(), StartError> {
    check_matches(spec, &router.current().await?)
}

/// What the durable configuration holds, as far as this agent knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Durable {
    weight: Weight,
    phase: Option<Phase>,
    failed_checks: u32,
    revision: u64,
}

impl Durable {
    fn written(&self) -> Written {
        Written { revision: self.revision, weight: self.weight, phase: self.phase }
    }

    fn of(route: &RouteConfig) -> Durable {
        let state = route.rollout_state.as_ref();
        Durable {
            weight: route.canary_weight,
            phase: state.map(|s| s.phase),
            failed_checks: state.map_or(0, |s| s.failed_checks),
            revision: route.revision,
        }
    }
}

/// The running agent for one rollout.
#[derive(Debug)]
pub struct Controller<S, R, N> {
    source: Arc<S>,
    router: R,
    /// Phase changes, posted in order by one task that owns the notifier.
    notices: mpsc::UnboundedSender<Notice>,
    notifier: std::marker::PhantomData<N>,
    settings: Settings,
    fleet: Fleet,
    rollout: Rollout,
    status: watch::Sender<StatusView>,
    epoch: tokio::time::Instant,
    durable: Durable,
    /// Why the rollout is where it is (the last decision that changed something).
    reason: String,
    highest_revision_seen: u64,
    /// The rollout id of the durable configuration: kill orders name it, so they hold this
    /// rollout and never a later one.
    rollout_id: SubsetName,
    recent: VecDeque<VerdictView>,
    /// (tick time, [stable, canary] (requests, successes)) over the status window.
    trailing: VecDeque<(u64, [(u64, u64); 2])>,
    /// Per-role latency over the same trailing span (stable, canary).
    latency: Option<[SlidingLatency; 2]>,
    proxies_reporting: usize,
    proxies_failing: Vec<String>,
    /// How far the durable revision has reached the proxies, as of the last tick.
    reach: Reach,
    /// When the durable revision landed (ms, the loop's clock).
    landed_at_ms: u64,
    /// Whether `reason` names proxies that rejected the durable revision.
    reason_names_rejects: bool,
    /// (lowest, highest) canary weight the proxies read on the last tick apply; `None` when
    /// none was read.
    observed: Option<(Weight, Weight)>,
    router_error: Option<String>,
    /// The durable write running in its own task, if any.
    writing: Option<tokio::task::JoinHandle<WriteOutcome>>,
    /// Failed writes in a row, and when the next retry is due (ms, the loop's clock).
    write_failures: u32,
    retry_at_ms: u64,
    router_errors_total: u64,
    proxy_resets_total: u64,
    misrouted_requests_total: u64,
    /// Configurations seen on the proxies or in the durable store that this agent did not write.
    foreign_writes_total: u64,
    /// The foreign configurations already answered (newest last): each is answered once, however
    /// many proxies apply it and for however many ticks.
    answered_foreign: VecDeque<ForeignKey>,
    last_foreign_write: Option<String>,
    /// The records of this agent's recent writes that did not land as far as it knows: a write it
    /// stopped waiting for may land late, at a revision it never learnt, and is its own, not a
    /// foreign one.
    attempted: VecDeque<canary_core::RolloutRecord>,
    /// The read of the durable configuration running in its own task, taken in by a later tick.
    reading: Option<tokio::task::JoinHandle<Result<RouteConfig, String>>>,
    phase_changes_total: u64,
    /// When the evidence checkpoint was last saved (ms, the loop's clock); `None` before the first
    /// save, or after a durable write landed (the next tick saves at once).
    evidence_saved_at_ms: Option<u64>,
    /// The save running in its own task, if any.
    saving: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

/// How many answered foreign configurations are remembered.
const ANSWERED_KEPT: usize = 16;

/// A foreign configuration, as far as answering it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ForeignKey {
    revision: u64,
    weight: Weight,
    phase: Option<Phase>,
    stamp: Option<Weight>,
}

impl ForeignKey {
    fn of(route: &RouteConfig) -> ForeignKey {
        let state = route.rollout_state.as_ref();
        ForeignKey {
            revision: route.revision,
            weight: route.canary_weight,
            phase: state.map(|s| s.phase),
            stamp: state.and_then(|s| s.weight),
        }
    }
}

/// What a durable write task returns: the configuration written, a router error, or a timeout.
type WriteOutcome = Result<Result<RouteConfig, RouterError>, tokio::time::error::Elapsed>;

impl<S, R, N> Controller<S, R, N>
where
    S: CounterSource + KillSwitch + 'static,
    R: WeightRouter + Clone + 'static,
    N: Notifier + 'static,
{
    /// Reads the durable state, checks that `spec` describes the rollout the filter runs, and
    /// resumes the rollout from it (see [`Rollout::restore`]). A rollout recorded as rolled back
    /// whose weight was raised by hand is put back to 0% at once.
    pub async fn start(
        spec: Spec,
        source: Arc<S>,
        router: R,
        notifier: Arc<N>,
        settings: Settings,
        status: watch::Sender<StatusView>,
    ) -> Result<Self, StartError> {
        if settings.targets.is_empty() && settings.target_updates.is_none() {
            return Err(StartError::NoTargets);
        }
        let mut settings = settings;
        // Discovered targets are read from the first tick: the pods that exist now are the list's
        // current value, not a change of it.
        if let Some(updates) = &mut settings.target_updates {
            settings.targets = updates.borrow_and_update().clone();
        }
        let route = router.current().await?;
        check_matches(&spec, &route)?;
        let epoch = tokio::time::Instant::now();
        let fleet = Fleet::new(spec.name().clone(), settings.staleness);
        // The weight the last agent wrote, as its record shows it: a different weight in the
        // configuration was written by someone else while no agent watched, and is answered by the
        // foreign-write policy below (never resumed as if it were a step).
        let written = written_weight(&spec, route.canary_weight, route.rollout_state.as_ref());
        let mut rollout = Rollout::restore(spec, written, route.rollout_state.as_ref(), 0);
        if let Some(store) = &settings.evidence {
            resume_evidence(store.as_ref(), &mut rollout, &route);
        }
        let reason = route.rollout_state.as_ref().map_or_else(
            || format!("started with the canary at {}", route.canary_weight),
            |s| format!("resumed {} at {}: {}", s.phase, route.canary_weight, s.reason),
        );
        let span = millis(settings.status_window);
        let latency = match (SlidingLatency::new(span), SlidingLatency::new(span)) {
            (Ok(stable), Ok(canary)) => Some([stable, canary]),
            _ => None,
        };
        let (notices, mut queue) = mpsc::unbounded_channel::<Notice>();
        tokio::spawn(async move {
            while let Some(notice) = queue.recv().await {
                if let Err(e) = notifier.post(&notice).await {
                    tracing::warn!(rollout = %notice.rollout, "webhook: {e}");
                }
            }
        });
        let mut c = Controller {
            source,
            router,
            notices,
            notifier: std::marker::PhantomData,
            settings,
            fleet,
            rollout,
            status,
            epoch,
            durable: Durable::of(&route),
            reason,
            highest_revision_seen: route.revision,
            rollout_id: route.effective_rollout_id().clone(),
            recent: VecDeque::new(),
            trailing: VecDeque::new(),
            latency,
            proxies_reporting: 0,
            proxies_failing: Vec::new(),
            reach: Reach::default(),
            landed_at_ms: 0,
            reason_names_rejects: false,
            observed: None,
            router_error: None,
            writing: None,
            write_failures: 0,
            retry_at_ms: 0,
            router_errors_total: 0,
            proxy_resets_total: 0,
            misrouted_requests_total: 0,
            foreign_writes_total: 0,
            answered_foreign: VecDeque::new(),
            attempted: VecDeque::new(),
            last_foreign_write: None,
            reading: None,
            phase_changes_total: 0,
            evidence_saved_at_ms: None,
            saving: None,
        };
        tracing::info!(
            rollout = %c.rollout.spec().name(),
            phase = %c.rollout.phase(),
            weight = %c.rollout.weight(),
            revision = route.revision,
            "{}", c.reason
        );
        if let Some(change) = c.rollout.pending() {
            c.rollout.settle();
            let d = Decision {
                set_weight: Some(change),
                phase_change: None,
                reason: "rollback: the rollout is recorded as rolled back, but its weight was raised".into(),
                verdict: None,
            };
            c.act(d).await;
        } else if written != route.canary_weight {
            let kind = route
                .rollout_state
                .as_ref()
                .and_then(|s| s.weight)
                .map_or(Foreign::NewerRevision, |w| Foreign::WeightEdited { written: w });
            if let Some(d) = c.answer_foreign(vec![("the durable configuration".into(), route.clone(), kind)], 0) {
                c.act(d).await;
            }
        }
        c.publish();
        Ok(c)
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    pub fn rollout(&self) -> &Rollout {
        &self.rollout
    }

    /// One cycle: read, judge, decide, act, publish.
    pub async fn tick(&mut self) {
        if let Some(updates) = &mut self.settings.target_updates
            && updates.has_changed().unwrap_or(false)
        {
            self.settings.targets = updates.borrow_and_update().clone();
        }
        // The reads run concurrently inside this task rather than as a task each: a spawned task
        // per proxy cost a wake-up across threads per read (see bench/PROFILE.md).
        let source = &self.source;
        let mut reads: FuturesUnordered<_> = self
            .settings
            .targets
            .iter()
            .map(|target| async move { (target.clone(), source.fetch(target).await.map_err(|e| e.to_string())) })
            .collect();
        let mut results = Vec::with_capacity(self.settings.targets.len());
        while let Some(read) = reads.next().await {
            results.push(read);
        }
        drop(reads);
        let now = self.now_ms();
        results.sort_by(|a, b| a.0.cmp(&b.0));
        let mut unkilled = Vec::new();
        let mut raised = Vec::new();
        let mut foreign = self.durable_foreign().await;
        let (written, ours) = (self.durable.written(), (self.rollout.weight(), self.rollout.phase()));
        let mut observed: Option<(Weight, Weight)> = None;
        for (target, result) in results {
            match result {
                Ok(snapshot) => {
                    if let Some(route) = &snapshot.route {
                        if let Some(kind) = self.foreign_kind(route, &written, ours) {
                            foreign.push((target.clone(), route.clone(), kind));
                        }
                        self.highest_revision_seen = self.highest_revision_seen.max(route.revision);
                        let held = snapshot
                            .kill
                            .as_ref()
                            .is_some_and(|k| k.holds(route.effective_rollout_id(), route.revision));
                        if self.rollout.phase() == Phase::RolledBack && route.canary_weight > Weight::ZERO && !held {
                            // A rolled-back rollout must not have canary traffic anywhere: a proxy
                            // that missed the kill (down, restarted) and still applies a weight
                            // gets the order again, until the durable weight 0 reaches it.
                            unkilled.push(target.clone());
                        } else if route.canary_weight > self.rollout.weight() && !held {
                            // Above the rollout's weight (a foreign raise, or a proxy that has
                            // not caught up with a lower weight): held at 0% up to the revision
                            // it applies, until the rollout's own weight is written over it.
                            let order = KillOrder {
                                rollout: self.rollout.spec().name().clone(),
                                id: route.effective_rollout_id().clone(),
                                revision: route.revision,
                            };
                            raised.push((target.clone(), order));
                        }
                    }
                    let observation = self.fleet.observe(&target, &snapshot, now);
                    // A snapshot of another rollout says nothing about this one's weight.
                    if !matches!(observation, Observation::Rejected(_))
                        && let Some(w) = applied_weight(&snapshot)
                    {
                        observed = Some(observed.map_or((w, w), |(lo, hi)| (lo.min(w), hi.max(w))));
                    }
                    if observation == Observation::Reset {
                        self.proxy_resets_total = self.proxy_resets_total.saturating_add(1);
                        tracing::warn!(
                            rollout = %self.rollout.spec().name(),
                            %target,
                            instance = %snapshot.instance.id,
                            started_at_unix_ms = snapshot.instance.started_at_unix_ms,
                            "proxy counters reset (the proxy restarted): counting its requests from zero"
                        );
                    }
                }
                Err(e) => self.fleet.observe_failure(&target, &e, now),
            }
        }
        self.observed = observed;
        if !unkilled.is_empty() {
            let (reached, total) =
                kill_everywhere(Arc::clone(&self.source), unkilled, self.kill_order(), self.settings.kill_timeout)
                    .await;
            tracing::warn!(rollout = %self.rollout.spec().name(), "kill order sent again: {reached} of {total} proxies still had canary weight");
        }
        for (target, order) in raised {
            let (reached, _) =
                kill_everywhere(Arc::clone(&self.source), vec![target.clone()], order, self.settings.kill_timeout)
                    .await;
            tracing::warn!(
                rollout = %self.rollout.spec().name(),
                proxy = %target,
                "canary weight above the rollout's {}: held at 0% ({})",
                self.rollout.weight(),
                if reached == 1 { "kill order taken" } else { "kill order not taken; sent again next tick" }
            );
        }
        let window = self.fleet.take_window(now);
        let reach = reach_of(
            &window.applied,
            &self.settings.targets,
            self.durable.revision,
            self.landed_at_ms,
            millis(self.settings.apply_timeout),
            now,
        );
        let mut decision = self.rollout.tick_reached(&window, &reach, now);
        if window.misrouted > 0 {
            // A failed precondition holds without a weight or phase change; say why in /status.
            self.reason.clone_from(&decision.reason);
        }
        self.report_rejects(reach, &decision);
        self.remember(&window, decision.verdict.as_ref(), now);
        // A breach decided on this tick's traffic wins; otherwise a foreign write is answered now.
        let breach = decision.set_weight.is_some_and(|c| c.kind == ChangeKind::Rollback);
        if !breach && let Some(answer) = self.answer_foreign(foreign, now) {
            decision = answer;
            self.reason.clone_from(&decision.reason);
        }
        self.act(decision).await;
        self.publish();
        self.save_evidence(false).await;
    }

    /// Saves the evidence checkpoint when it is due: every `evidence_every`, and on the first tick
    /// after a durable write landed. Only while the rollout's weight is the durable one and no
    /// write is in flight, so the checkpoint's weight and revision are the durable state's: a
    /// checkpoint taken for a weight that never landed would be refused anyway. `last` waits for
    /// the save (on the way out); otherwise the save runs in its own task.
    async fn save_evidence(&mut self, last: bool) {
        let Some(store) = self.settings.evidence.clone() else { return };
        if let Some(task) = self.saving.take_if(|t| t.is_finished() || last) {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(rollout = %self.rollout.spec().name(), "cannot save the evidence: {e}"),
                Err(e) => tracing::warn!(rollout = %self.rollout.spec().name(), "the evidence save task failed: {e}"),
            }
        }
        let now = self.now_ms();
        let due =
            self.evidence_saved_at_ms.is_none_or(|at| now.saturating_sub(at) >= millis(self.settings.evidence_every));
        let settled = self.writing.is_none()
            && self.router_error.is_none()
            && self.rollout.weight() == self.durable.weight
            && !matches!(self.rollout.phase(), Phase::Succeeded | Phase::RolledBack);
        if self.saving.is_some() || !(due || last) || !settled {
            return;
        }
        let checkpoint = self.rollout.checkpoint(self.rollout_id.as_str(), self.durable.revision, unix_ms());
        let bytes = match checkpoint.to_json() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(rollout = %self.rollout.spec().name(), "cannot save the evidence: {e}");
                return;
            }
        };
        self.evidence_saved_at_ms = Some(now);
        let task = tokio::task::spawn_blocking(move || store.save(&bytes).map_err(|e| e.to_string()));
        if last {
            match task.await {
                Ok(Ok(())) => {
                    tracing::info!(rollout = %self.rollout.spec().name(), "evidence saved for the next start")
                }
                Ok(Err(e)) => tracing::warn!(rollout = %self.rollout.spec().name(), "cannot save the evidence: {e}"),
                Err(e) => tracing::warn!(rollout = %self.rollout.spec().name(), "the evidence save task failed: {e}"),
            }
        } else {
            self.saving = Some(task);
        }
    }

    /// Takes in the last read of the durable configuration (the watched file, or the WasmPlugin
    /// from the API) and starts the next one. The read runs in its own task, so a slow store
    /// never delays the tick; a foreign write found there is answered even before any proxy
    /// applies it (or when every proxy's guard rejects it, so it lingers in the store).
    async fn durable_foreign(&mut self) -> Vec<(String, RouteConfig, Foreign)> {
        let mut found = Vec::new();
        if let Some(task) = self.reading.take_if(|t| t.is_finished()) {
            match task.await {
                // A read that raced the agent's own write in flight is recognised by `classify`
                // (the rollout's weight and phase at a newer revision).
                Ok(Ok(route)) if self.writing.is_none() => {
                    let ours = (self.rollout.weight(), self.rollout.phase());
                    if let Some(kind) = self.foreign_kind(&route, &self.durable.written(), ours) {
                        found.push(("the durable configuration".to_owned(), route, kind));
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(rollout = %self.rollout.spec().name(), "reading the durable configuration: {e}")
                }
                Err(e) => {
                    tracing::debug!(rollout = %self.rollout.spec().name(), "reading the durable configuration: {e}")
                }
            }
        }
        if self.reading.is_none() && self.writing.is_none() {
            let (router, timeout) = (self.router.clone(), self.settings.write_timeout);
            self.reading = Some(tokio::spawn(async move {
                match tokio::time::timeout(timeout, router.current()).await {
                    Ok(read) => read.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("timed out after {timeout:?}")),
                }
            }));
        }
        found
    }

    /// [`foreign::classify`], except that a configuration carrying the record of one of this
    /// agent's writes that it gave up on (with the weight it was written with) is that write
    /// landing late.
    fn foreign_kind(&self, route: &RouteConfig, written: &Written, ours: (Weight, Phase)) -> Option<Foreign> {
        let kind = foreign::classify(route, written, ours)?;
        let own = route.rollout_state.as_ref().is_some_and(|r| self.attempted.contains(r));
        match kind {
            Foreign::WeightEdited { .. } => Some(kind),
            _ if own => None,
            _ => Some(kind),
        }
    }

    /// Says in `/status` (and once in the log) why the step holds when a proxy rejected the
    /// durable revision, and that it is over once every proxy applies it.
    fn report_rejects(&mut self, reach: Reach, decision: &Decision) {
        let rejected: Vec<&Behind> = reach.behind.iter().filter(|b| b.rejected).collect();
        if !rejected.is_empty() && self.rollout.held_by_proxies(&reach) {
            if !self.reason_names_rejects {
                tracing::warn!(rollout = %self.rollout.spec().name(), revision = reach.revision, "{}", decision.reason);
            }
            self.reason.clone_from(&decision.reason);
            self.reason_names_rejects = true;
        } else if self.reason_names_rejects && reach.behind.is_empty() {
            self.reason = format!("every reporting proxy applies revision {} now", reach.revision);
            tracing::info!(rollout = %self.rollout.spec().name(), "{}", self.reason);
            self.reason_names_rejects = false;
        }
        self.reach = reach;
    }

    /// The foreign-write policy (see [`Rollout::foreign_write`]) for configurations this agent did
    /// not write: each is logged per proxy, and the newest one not answered before is counted,
    /// noticed (a Warning Event in mesh mode) and answered: the rollout decides, and its own state
    /// is written over the foreign one. Proxies applying a raise are held at 0% by the tick (see
    /// `raised`). `None` when there is nothing new to answer.
    fn answer_foreign(&mut self, foreign: Vec<(String, RouteConfig, Foreign)>, now: u64) -> Option<Decision> {
        let fresh: Vec<_> =
            foreign.into_iter().filter(|(_, r, _)| !self.answered_foreign.contains(&ForeignKey::of(r))).collect();
        let (_, newest, kind) = fresh.iter().max_by_key(|(_, r, _)| r.revision)?.clone();
        let ours = self.rollout.weight();
        for (target, route, kind) in &fresh {
            tracing::warn!(
                rollout = %self.rollout.spec().name(),
                proxy = %target,
                revision = route.revision,
                "foreign write: canary_weight {} -> {} ({kind}; a write gate-agent did not make)",
                self.durable.weight,
                route.canary_weight
            );
        }
        self.foreign_writes_total = self.foreign_writes_total.saturating_add(1);
        self.answered_foreign.push_back(ForeignKey::of(&newest));
        while self.answered_foreign.len() > ANSWERED_KEPT {
            self.answered_foreign.pop_front();
        }
        let seen_on: Vec<&str> = fresh.iter().map(|(t, _, _)| t.as_str()).collect();
        let line = format!(
            "revision {}: canary_weight {} (the rollout's: {ours}); {kind}; seen on {}",
            newest.revision,
            newest.canary_weight,
            seen_on.join(", ")
        );
        let notice = Notice {
            kind: NoticeKind::ForeignWrite,
            rollout: self.rollout.spec().name().to_string(),
            from: self.rollout.phase().to_string(),
            to: self.rollout.phase().to_string(),
            weight_percent: newest.canary_weight.percent(),
            reason: format!("foreign write: {line}"),
        };
        if self.notices.send(notice).is_err() {
            tracing::warn!(rollout = %self.rollout.spec().name(), "the notifier task has stopped");
        }
        self.last_foreign_write = Some(line);
        let decision = self.rollout.foreign_write(newest.canary_weight, newest.revision, now);
        // What is durable now is the foreign write: the rollout's own state is written over it.
        if newest.revision >= self.durable.revision {
            self.durable = Durable { weight: newest.canary_weight, phase: None, ..Durable::of(&newest) };
        }
        self.highest_revision_seen = self.highest_revision_seen.max(newest.revision);
        Some(decision)
    }

    /// Carries out an operator command; the answer is a sentence for the operator.
    pub async fn command(&mut self, command: Command) -> Result<String, String> {
        let now = self.now_ms();
        let decided = match command {
            Command::Rollback => self.rollout.rollback(now),
            Command::Promote => self.rollout.promote(now),
            Command::Pause => self.rollout.pause(now),
            Command::Resume => self.rollout.resume(now),
        };
        let decision = decided.map_err(|refused| refused.to_string())?;
        tracing::info!(rollout = %self.rollout.spec().name(), ?command, "operator command");
        let reason = decision.reason.clone();
        self.act(decision).await;
        self.publish();
        match &self.router_error {
            None => Ok(reason),
            Some(e) => Ok(format!("{reason} (not yet durable, retrying with backoff: {e})")),
        }
    }

    /// Applies a decision: kill orders on rollback, the durable write, the notification.
    async fn act(&mut self, decision: Decision) {
        let rollout_name = self.rollout.spec().name().clone();
        let counted = self.rollout.status().failed_checks != self.durable.failed_checks;
        if decision.set_weight.is_some() || decision.phase_change.is_some() || counted {
            self.reason.clone_from(&decision.reason);
        }
        let mut kill = None;
        if let Some(change) = decision.set_weight {
            tracing::warn!(
                rollout = %rollout_name,
                from = %change.from,
                to = %change.to,
                kind = ?change.kind,
                "canary weight: {}", decision.reason
            );
            if change.kind == ChangeKind::Rollback {
                kill = Some(tokio::spawn(kill_everywhere(
                    Arc::clone(&self.source),
                    self.settings.targets.clone(),
                    self.kill_order(),
                    self.settings.kill_timeout,
                )));
            }
        }
        if let Some(pc) = decision.phase_change {
            self.phase_changes_total = self.phase_changes_total.saturating_add(1);
            tracing::info!(rollout = %rollout_name, from = %pc.from, to = %pc.to, "phase: {}", decision.reason);
            let notice = Notice {
                kind: NoticeKind::PhaseChange,
                rollout: rollout_name.to_string(),
                from: pc.from.to_string(),
                to: pc.to.to_string(),
                weight_percent: self.rollout.weight().percent(),
                reason: decision.reason.clone(),
            };
            if self.notices.send(notice).is_err() {
                tracing::warn!(rollout = %rollout_name, "the notifier task has stopped");
            }
        }
        let decided = decision.set_weight.is_some() || decision.phase_change.is_some();
        self.persist(decided).await;
        if self.router_error.is_some() || self.writing.is_some() {
            self.rollout.weight_pending();
        } else {
            self.rollout.weight_written(self.durable.revision);
        }
        if let Some(kill) = kill
            && let Ok((reached, total)) = kill.await
        {
            tracing::info!(rollout = %rollout_name, "kill order reached {reached} of {total} proxies");
        }
    }

    /// A kill order covering every revision this agent has seen or written.
    fn kill_order(&self) -> KillOrder {
        KillOrder {
            rollout: self.rollout.spec().name().clone(),
            id: self.rollout_id.clone(),
            revision: self.highest_revision_seen.max(self.durable.revision),
        }
    }

    /// Writes the rollout's weight and record if they differ from what is durable. After a failed
    /// write, retries wait for the backoff unless `decided` (a new decision is tried at once).
    async fn persist(&mut self, decided: bool) {
        self.collect_write().await;
        let status = self.rollout.status();
        let want = (status.canary_weight, Some(status.phase), status.failed_checks);
        let have = (self.durable.weight, self.durable.phase, self.durable.failed_checks);
        if self.writing.is_some() {
            // One write at a time: this one is written once the write in flight has ended (the
            // kill path does not wait for either).
            return;
        }
        if want == have && self.router_error.is_none() {
            return;
        }
        if self.router_error.is_some() && !decided && self.now_ms() < self.retry_at_ms {
            return;
        }
        if status.canary_weight > self.durable.weight {
            // The rollout guards every change it decides; this checks the write itself against
            // what is durable, as the last line of defence.
            let kind = if status.canary_weight == Weight::FULL { ChangeKind::Promotion } else { ChangeKind::Step };
            let change = WeightChange { from: self.durable.weight, to: status.canary_weight, kind };
            if let Err(refused) = guard(self.rollout.spec(), &change) {
                self.router_failed(format!("the weight guard refused {}: {refused}", status.canary_weight));
                return;
            }
        }
        let record = self.rollout.record(&self.reason, unix_ms());
        self.attempted.push_back(record.clone());
        while self.attempted.len() > ANSWERED_KEPT {
            self.attempted.pop_front();
        }
        let (router, weight, timeout) = (self.router.clone(), status.canary_weight, self.settings.write_timeout);
        let mut task = tokio::spawn(async move { tokio::time::timeout(timeout, router.apply(weight, record)).await });
        // A healthy store answers within the wait, and the write is taken in in this tick.
        match tokio::time::timeout(self.settings.write_wait, &mut task).await {
            Ok(joined) => self.write_done(joined),
            Err(_) => self.writing = Some(task),
        }
    }

    /// Takes in the write in flight if it has finished.
    async fn collect_write(&mut self) {
        let Some(task) = self.writing.take_if(|t| t.is_finished()) else { return };
        let joined = task.await;
        self.write_done(joined);
    }

    /// The outcome of a durable write: on success the step waits for the proxies to apply it.
    fn write_done(&mut self, joined: Result<WriteOutcome, tokio::task::JoinError>) {
        match joined {
            Ok(Ok(Ok(route))) => {
                // Landed at a known revision: seen again at another one, it is someone's copy.
                self.attempted.retain(|r| Some(r) != route.rollout_state.as_ref());
                self.durable = Durable::of(&route);
                self.highest_revision_seen = self.highest_revision_seen.max(route.revision);
                self.rollout_id = route.effective_rollout_id().clone();
                self.router_error = None;
                self.write_failures = 0;
                self.landed_at_ms = self.now_ms();
                // The checkpoint on disk names the old revision: save one for this one at once.
                self.evidence_saved_at_ms = None;
            }
            Ok(Ok(Err(e))) => self.router_failed(e.to_string()),
            Ok(Err(_)) => self.router_failed(format!("timed out after {:?}", self.settings.write_timeout)),
            Err(e) => self.router_failed(format!("the write task failed: {e}")),
        }
    }

    fn router_failed(&mut self, error: String) {
        self.router_errors_total = self.router_errors_total.saturating_add(1);
        self.write_failures = self.write_failures.saturating_add(1);
        let doubling = 2u32.saturating_pow(self.write_failures.saturating_sub(1).min(16));
        let backoff = self.settings.retry_min.saturating_mul(doubling).min(self.settings.retry_max);
        self.retry_at_ms = self.now_ms().saturating_add(millis(backoff));
        tracing::error!(
            rollout = %self.rollout.spec().name(),
            retry_in = ?Duration::from_millis(self.retry_at_ms.saturating_sub(self.now_ms())),
            "cannot write the weight: {error}"
        );
        self.router_error = Some(error);
    }

    fn remember(&mut self, window: &Window, verdict: Option<&Verdict>, now: u64) {
        self.proxies_reporting = window.proxies_reporting;
        if window.misrouted > 0 {
            self.misrouted_requests_total = self.misrouted_requests_total.saturating_add(window.misrouted);
            tracing::warn!(
                rollout = %self.rollout.spec().name(),
                misrouted = window.misrouted,
                cluster = window.misrouted_cluster.as_deref().unwrap_or("-"),
                "requests served by another subset's cluster than their label: the route table does not follow the label"
            );
        }
        // The error text already names the target.
        self.proxies_failing = window.failing.iter().map(|p| p.error.clone()).collect();
        self.proxies_failing.extend(window.stale.iter().map(|t| format!("{t}: no snapshot for too long")));
        let tally = |role| {
            let c = window.counts.get(role);
            (c.requests, c.successes)
        };
        self.trailing.push_back((now, [tally(Role::Stable), tally(Role::Canary)]));
        if let Some(latency) = &mut self.latency {
            for (sliding, role) in latency.iter_mut().zip([Role::Stable, Role::Canary]) {
                if let Err(e) = sliding.push(now, &window.counts.get(role).latency) {
                    tracing::warn!("status latency window: {e}");
                }
            }
        }
        let oldest = now.saturating_sub(millis(self.settings.status_window));
        while self.trailing.front().is_some_and(|(t, _)| *t < oldest) {
            self.trailing.pop_front();
        }
        if let Some(v) = verdict {
            // A passing verdict that the promotion gate holds says so, with how much is missing.
            let held = self.rollout.status().insufficient_evidence.filter(|_| v.kind == VerdictKind::Pass);
            let mut reasons: Vec<String> = held.iter().map(|h| h.text.clone()).collect();
            reasons.extend(v.reasons.iter().map(|r| r.text.clone()));
            let view = VerdictView {
                at_unix_ms: unix_ms(),
                verdict: if held.is_some() {
                    format!("{} (insufficient evidence to promote)", v.kind)
                } else {
                    v.kind.to_string()
                },
                reasons,
                kind: Some(v.kind),
            };
            let same = self.recent.back().is_some_and(|last| last.kind == view.kind && last.reasons == view.reasons);
            if !same {
                self.recent.push_back(view);
                while self.recent.len() > self.settings.recent_verdicts {
                    self.recent.pop_front();
                }
            }
        }
    }

    fn publish(&self) {
        let spec = self.rollout.spec();
        let subsets = [(Role::Stable, spec.stable()), (Role::Canary, spec.canary())]
            .into_iter()
            .map(|(role, name)| {
                let total = self.fleet.totals().get(role);
                let side = usize::from(role == Role::Canary);
                let (requests, successes) = self.trailing.iter().fold((0u64, 0u64), |(r, s), (_, t)| {
                    let (tr, ts) = t.get(side).copied().unwrap_or_default();
                    (r.saturating_add(tr), s.saturating_add(ts))
                });
                let sliding = self.latency.as_ref().and_then(|l| l.get(side));
                let ms = |q: f64| sliding.and_then(|l| l.quantile_ms(q));
                SubsetView {
                    subset: name.to_string(),
                    role: match role {
                        Role::Stable => "stable".into(),
                        Role::Canary => "canary".into(),
                    },
                    requests_total: total.requests,
                    failures_total: total.failures,
                    success_rate_percent: (requests > 0).then(|| 100.0 * successes as f64 / requests as f64),
                    p50_ms: ms(0.5),
                    p99_ms: ms(0.99),
                }
            })
            .collect();
        let not_ready = match (&self.router_error, self.proxies_reporting) {
            (Some(e), _) => Some(format!("cannot write the weight: {e}")),
            (None, 0) if !self.proxies_failing.is_empty() => {
                Some(format!("no proxy answered: {}", self.proxies_failing.join("; ")))
            }
            (None, 0) if self.settings.targets.is_empty() => {
                Some("no proxy answered: there is no proxy to read (no ready pod behind the selector)".into())
            }
            (None, 0) => Some("no proxy answered yet".into()),
            _ => None,
        };
        let status = self.rollout.status();
        let view = StatusView {
            rollout: spec.name().to_string(),
            phase: status.phase.to_string(),
            canary_weight_percent: status.canary_weight.percent(),
            written_weight_percent: self.durable.weight.percent(),
            observed_weight_percent: self
                .observed
                .map(|(lo, hi)| ObservedWeight { min_percent: lo.percent(), max_percent: hi.percent() }),
            max_weight_percent: spec.max_weight().percent(),
            revision: self.durable.revision,
            published_at_unix_ms: unix_ms(),
            step: status.step,
            steps: status.steps,
            failed_checks: status.failed_checks,
            threshold: status.threshold,
            reason: self.reason.clone(),
            subsets,
            evidence: self
                .rollout
                .judge()
                .evidence()
                .into_iter()
                .map(|e| EvidenceView { test: e.test, log_evidence: e.log_evidence, log_threshold: e.log_threshold })
                .collect(),
            recent_verdicts: self.recent.iter().cloned().collect(),
            proxies_reporting: self.proxies_reporting,
            proxies_failing: self.proxies_failing.clone(),
            proxies_behind: self.reach.behind.clone(),
            not_ready,
            router_errors_total: self.router_errors_total,
            proxy_resets_total: self.proxy_resets_total,
            misrouted_requests_total: self.misrouted_requests_total,
            foreign_writes_total: self.foreign_writes_total,
            last_foreign_write: self.last_foreign_write.clone(),
            phase_changes_total: self.phase_changes_total,
            insufficient_evidence: status.insufficient_evidence.clone(),
            // The API keeps Flagger's events and adds them to `/status`.
            flagger_events: Vec::new(),
        };
        self.status.send_replace(view);
    }

    /// Runs until `shutdown` completes: a tick every `every`, commands as they come.
    pub async fn run(
        mut self,
        every: Duration,
        commands: &mut mpsc::Receiver<CommandRequest>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = ticks.tick() => self.tick().await,
                Some((command, reply)) = commands.recv() => {
                    let answer = self.command(command).await;
                    let _ = reply.send(answer);
                }
            }
        }
        self.save_evidence(true).await;
        tracing::info!(
            rollout = %self.rollout.spec().name(),
            phase = %self.rollout.phase(),
            weight = %self.rollout.weight(),
            "stopping; the rollout resumes from the durable configuration on the next start"
        );
    }
}

/// Loads the evidence checkpoint and resumes the rollout's statistics from it when it fits the
/// durable state `route` (see [`canary_rollout::checkpoint`]); otherwise they start from zero, and
/// the log says why.
fn resume_evidence(store: &dyn EvidenceStore, rollout: &mut Rollout, route: &RouteConfig) {
    let name = rollout.spec().name().clone();
    let bytes = match store.load() {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            tracing::info!(rollout = %name, store = %store.location(), "no evidence checkpoint: the statistics start from zero");
            return;
        }
        Err(e) => {
            tracing::warn!(rollout = %name, "{e}: the statistics start from zero");
            return;
        }
    };
    let now = unix_ms();
    let resumed = canary_rollout::Checkpoint::from_json(&bytes).and_then(|cp| {
        rollout.resume_evidence(&cp, route.effective_rollout_id().as_str(), route.revision, now)?;
        Ok(cp)
    });
    match resumed {
        Ok(cp) => tracing::info!(
            rollout = %name,
            store = %store.location(),
            age_ms = now.saturating_sub(cp.taken_at_unix_ms),
            canary_trials = cp.judge.errors_vs_stable.canary_trials,
            "resumed the statistics from the evidence checkpoint"
        ),
        Err(e) => tracing::warn!(rollout = %name, store = %store.location(), "{e}: the statistics start from zero"),
    }
}

/// How far `revision`, landed at `landed_at_ms`, has reached the proxies among `targets` (a target
/// discovery dropped no longer counts), from the revision each last reported. A proxy is behind
/// from when the revision landed or from when it started reporting what it applies, whichever is
/// later: a new proxy gets the full `apply_timeout_ms` to load the configuration.
fn reach_of(
    applied: &std::collections::BTreeMap<String, AppliedRevision>,
    targets: &[String],
    revision: u64,
    landed_at_ms: u64,
    apply_timeout_ms: u64,
    now_ms: u64,
) -> Reach {
    let mut reach = Reach { revision, ..Reach::default() };
    // A set, not `targets.contains`: at 1,000 proxies the linear search was a million string
    // comparisons per tick.
    let current: std::collections::HashSet<&str> = targets.iter().map(String::as_str).collect();
    for (target, a) in applied.iter().filter(|(t, _)| current.contains(t.as_str())) {
        match a.revision {
            None => reach.silent += 1,
            Some(r) if r >= revision => reach.applying += 1,
            Some(r) => {
                let for_ms = now_ms.saturating_sub(landed_at_ms.max(a.since_ms));
                let rejected = for_ms >= apply_timeout_ms;
                reach.behind.push(Behind { target: target.clone(), revision: r, for_ms, rejected });
            }
        }
    }
    reach
}

/// The canary weight a proxy applies by its snapshot: its configuration's, or 0% while a kill
/// order holds that configuration (the filter then sends all of the rollout's traffic to
/// stable). `None` before the proxy has accepted a configuration.
fn applied_weight(snapshot: &Snapshot) -> Option<Weight> {
    let route = snapshot.route.as_ref()?;
    let held = snapshot.kill.as_ref().is_some_and(|k| k.holds(route.effective_rollout_id(), route.revision));
    Some(if held { Weight::ZERO } else { route.canary_weight })
}

/// Sends the kill order to every target at once; returns (reached, total).
async fn kill_everywhere<S: KillSwitch + 'static>(
    source: Arc<S>,
    targets: Vec<String>,
    order: KillOrder,
    timeout: Duration,
) -> (usize, usize) {
    let total = targets.len();
    let mut sends = JoinSet::new();
    for target in targets {
        let (source, order) = (Arc::clone(&source), order.clone());
        sends.spawn(async move {
            let result = tokio::time::timeout(timeout, source.kill(&target, &order)).await;
            (target, result)
        });
    }
    let mut reached = 0;
    while let Some(joined) = sends.join_next().await {
        match joined {
            Ok((_, Ok(Ok(_)))) => reached += 1,
            Ok((target, Ok(Err(e)))) => tracing::warn!(%target, "kill order failed: {e}"),
            Ok((target, Err(_))) => tracing::warn!(%target, "kill order timed out after {timeout:?}"),
            Err(e) => tracing::warn!("kill order task failed: {e}"),
        }
    }
    (reached, total)
}

/// What a rollout needs to run, whichever replica leads.
#[derive(Debug)]
pub struct Parts<S, R, N> {
    pub spec: Spec,
    pub source: Arc<S>,
    pub router: R,
    pub notifier: Arc<N>,
    pub settings: Settings,
    pub status: watch::Sender<StatusView>,
    pub tick: Duration,
}

/// Starts this term's controller from the durable state. A failed read (the API server slow or
/// down, a pluginConfig someone broke by hand) is retried with backoff while this replica leads,
/// reported in `/status` and `/readyz`, and never ends the process: every replica would do the
/// same, and a Deployment would crash-loop. `None` when leadership lapsed or `stop` came first.
async fn take_over<S, R, N>(
    p: &Parts<S, R, N>,
    leadership: &mut Leadership,
    commands: &mut mpsc::Receiver<CommandRequest>,
    stop: &watch::Receiver<bool>,
    lease: &str,
) -> Option<Controller<S, R, N>>
where
    S: CounterSource + KillSwitch + 'static,
    R: WeightRouter + Clone + 'static,
    N: Notifier + 'static,
{
    let mut failures: u32 = 0;
    loop {
        let started = Controller::start(
            p.spec.clone(),
            Arc::clone(&p.source),
            p.router.clone(),
            Arc::clone(&p.notifier),
            p.settings.clone(),
            p.status.clone(),
        )
        .await;
        let e = match started {
            Ok(controller) => return Some(controller),
            Err(e) => e,
        };
        failures = failures.saturating_add(1);
        let doubling = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        let backoff = p.settings.retry_min.saturating_mul(doubling).min(p.settings.retry_max);
        let why = format!("cannot start the rollout: {e}; retrying in {backoff:?}");
        tracing::error!(rollout = %p.spec.name(), %lease, "{why}");
        p.status.send_replace(StatusView {
            rollout: p.spec.name().to_string(),
            phase: "starting".into(),
            not_ready: Some(why.clone()),
            router_errors_total: u64::from(failures),
            ..StatusView::default()
        });
        let mut lost = leadership.clone();
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                () = stopped(stop.clone()) => return None,
                () = lost.lost() => return None,
                Some((_, reply)) = commands.recv() => {
                    let _ = reply.send(Err(format!("not ready: {why}")));
                }
            }
        }
    }
}

/// Resolves once `stop` turns true.
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs the rollout whenever this replica leads and stands by otherwise, until `stop` turns
/// true. Each term starts from the durable state ([`Controller::start`]), so a new leader resumes
/// where the last one was; a standby answers actions with "not the leader" and reports itself
/// not ready, so a Service in front of the replicas sends people to the leader.
pub async fn lead<S, R, N>(
    p: Parts<S, R, N>,
    mut leadership: Leadership,
    commands: &mut mpsc::Receiver<CommandRequest>,
    stop: watch::Receiver<bool>,
    lease: &str,
) -> Result<(), StartError>
where
    S: CounterSource + KillSwitch + 'static,
    R: WeightRouter + Clone + 'static,
    N: Notifier + 'static,
{
    loop {
        if !leadership.is_leader() {
            let why = format!("standby: another replica holds the lease {lease}");
            p.status.send_replace(StatusView {
                rollout: p.spec.name().to_string(),
                phase: "standby".into(),
                not_ready: Some(why.clone()),
                ..StatusView::default()
            });
            tracing::info!(%lease, "standing by");
            loop {
                tokio::select! {
                    () = leadership.acquired() => break,
                    () = stopped(stop.clone()) => return Ok(()),
                    Some((_, reply)) = commands.recv() => {
                        let _ = reply.send(Err(format!("not the leader ({why}); send actions to the leader")));
                    }
                }
            }
        }
        let Some(controller) = take_over(&p, &mut leadership, commands, &stop, lease).await else {
            if *stop.borrow() {
                return Ok(());
            }
            continue; // leadership lapsed before the durable state could be read
        };
        let mut lost = leadership.clone();
        let until = async {
            tokio::select! {
                () = stopped(stop.clone()) => {}
                () = lost.lost() => {}
            }
        };
        controller.run(p.tick, commands, until).await;
        if *stop.borrow() {
            return Ok(());
        }
        tracing::warn!(%lease, "lost the lease: stopped acting; standing by");
    }
}
