//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's leaderelection does
//! it, so that of several agent replicas exactly one writes weights.
//!
//! * A candidate reads the Lease. If it is held by someone else whose record has changed within
//!   the last `lease_duration` *as observed by this candidate's own clock* (remote timestamps are
//!   never compared with local ones), it waits. Otherwise it writes itself in as holder with an
//!   optimistic-concurrency update (the resourceVersion it read); of two candidates racing, the
//!   API server lets exactly one win and answers the other 409 Conflict.
//! * The leader renews every `retry_period`. It considers itself leader only until
//!   `renew_deadline` after the start of its last successful renewal, which is shorter than
//!   `lease_duration`: a leader that cannot renew stops writing before any other replica may take
//!   over.
//! * On shutdown the leader releases the Lease (empty holder), so a successor need not wait.
//!
//! [`Leadership`] is the shared answer to "may I write now, until when, and in which term?";
//! [`LeaderGated`] wraps a router so that a write is refused the moment leadership lapses,
//! whatever the control loop is doing. The [`Term`] (the Lease's `leaseTransitions` and holder) is
//! the fencing token a router writes with its data, so that a write from an older term is refused
//! even from a replica that still believes it leads (see `super::wasmplugin`).
//!
//! [`LeaseEvidence`] keeps the rollout's evidence checkpoint in the annotation
//! [`EVIDENCE_ANNOTATION`] of the same Lease: the leader's renewals carry the latest checkpoint, so
//! it is written only by the holder, in the same optimistic-concurrency update that proves it
//! holds the lease (no write of its own that could race a renewal), and a new leader reads what
//! its predecessor last wrote in the read that makes it the holder.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use canary_core::{RolloutRecord, Weight};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{FIELD_MANAGER, bounded, bounded_unless_conflict};
use crate::evidence::{EvidenceError, EvidenceStore};
use crate::router::{RouterError, WeightRouter};

/// The Lease annotation that holds the leader's latest evidence checkpoint (JSON).
pub const EVIDENCE_ANNOTATION: &str = "canary-gate.io/evidence";

/// A checkpoint larger than this is not put on the Lease (annotations may hold 256 KiB in all);
/// a real one is a few tens of KiB.
pub const MAX_EVIDENCE_ANNOTATION_BYTES: usize = 128 * 1024;

/// The evidence checkpoint on the Lease: [`EvidenceStore::save`] hands the bytes to the election
/// loop, whose next renewal writes them; [`EvidenceStore::load`] returns the annotation as the
/// loop last read it (when this replica became the leader: its predecessor's last checkpoint).
/// A checkpoint saved after the last renewal of a term is lost with it (at most `retry_period`).
#[derive(Debug, Clone, Default)]
pub struct LeaseEvidence {
    state: Arc<Mutex<EvidenceOnLease>>,
    lease: String,
}

#[derive(Debug, Default)]
struct EvidenceOnLease {
    /// The annotation as last read.
    read: Option<String>,
    /// The latest checkpoint saved this term, to be written by the next renewal.
    pending: Option<String>,
}

impl LeaseEvidence {
    /// The store for the Lease `lease` (pass the same to [`spawn_election_with`]).
    pub fn new(lease: &str) -> LeaseEvidence {
        LeaseEvidence { state: Arc::default(), lease: lease.to_owned() }
    }

    fn with<T>(&self, f: impl FnOnce(&mut EvidenceOnLease) -> T) -> T {
        // A panic while holding the lock cannot leave these two options inconsistent.
        let mut guard = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// Takes in the Lease as read; `holder_changed`: a new term starts, and a checkpoint saved in
    /// an earlier term of ours is not written over its successor's.
    fn read(&self, lease: &Lease, holder_changed: bool) {
        let annotation = lease.metadata.annotations.as_ref().and_then(|a| a.get(EVIDENCE_ANNOTATION)).cloned();
        self.with(|s| {
            s.read = annotation;
            if holder_changed {
                s.pending = None;
            }
        });
    }

    /// Puts the pending checkpoint on `lease`, about to be written by its holder.
    fn write_into(&self, lease: &mut Lease) {
        if let Some(pending) = self.with(|s| s.pending.clone()) {
            lease.metadata.annotations.get_or_insert_with(Default::default).insert(EVIDENCE_ANNOTATION.into(), pending);
        }
    }
}

impl EvidenceStore for LeaseEvidence {
    fn load(&self) -> Result<Option<Vec<u8>>, EvidenceError> {
        Ok(self.with(|s| s.read.clone()).map(String::into_bytes))
    }

    fn save(&self, checkpoint: &[u8]) -> Result<(), EvidenceError> {
        if checkpoint.len() > MAX_EVIDENCE_ANNOTATION_BYTES {
            return Err(EvidenceError::Rejected(format!(
                "{} bytes, more than the {MAX_EVIDENCE_ANNOTATION_BYTES} the Lease annotation may hold",
                checkpoint.len()
            )));
        }
        let text = String::from_utf8(checkpoint.to_vec())
            .map_err(|e| EvidenceError::Rejected(format!("not UTF-8 text: {e}")))?;
        self.with(|s| s.pending = Some(text));
        Ok(())
    }

    fn location(&self) -> String {
        format!("annotation {EVIDENCE_ANNOTATION} on Lease {}", self.lease)
    }
}

/// Timings, with client-go's defaults.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// The Lease object's name.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is valid after its last renewal, as other replicas see it.
    pub lease_duration: Duration,
    /// How long the leader keeps acting after the start of its last successful renewal.
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    pub retry_period: Duration,
    /// Bound on each API call.
    pub call_timeout: Duration,
}

impl LeaseSettings {
    pub fn new(name: &str, identity: &str) -> Self {
        LeaseSettings {
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            call_timeout: Duration::from_secs(2),
        }
    }

    /// Timings that cannot let two leaders overlap.
    pub fn check(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err("the renew deadline must be shorter than the lease duration".into());
        }
        if self.retry_period.saturating_add(self.call_timeout) > self.renew_deadline {
            return Err("retry period plus call timeout must fit inside the renew deadline".into());
        }
        Ok(())
    }
}

/// A leader's term: how many times the Lease had changed hands when this holder took it, and
/// the holder. Terms only grow while the Lease exists; deleting the Lease starts again from 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub transitions: i32,
    pub holder: String,
}

impl Term {
    /// Whether a write made in `self` must not be overwritten by one made in `ours`: a later term,
    /// or the same term number held by someone else (the Lease was edited by hand).
    pub fn supersedes(&self, ours: &Term) -> bool {
        self.transitions > ours.transitions || (self.transitions == ours.transitions && self.holder != ours.holder)
    }

    /// `transitions/holder`, as written into the object (parsed back by [`Term::parse`]).
    pub fn token(&self) -> String {
        format!("{}/{}", self.transitions, self.holder)
    }

    pub fn parse(token: &str) -> Option<Term> {
        let (transitions, holder) = token.split_once('/')?;
        Some(Term { transitions: transitions.parse().ok()?, holder: holder.to_owned() })
    }
}

impl std::fmt::Display for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "term {} ({})", self.transitions, self.holder)
    }
}

/// This replica's lead: until when it may write, and in which term (none without an election).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lead {
    pub until: Instant,
    pub term: Option<Term>,
}

/// Whether this replica may write right now.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// The current lead; `None` when not leading.
    until: watch::Receiver<Option<Lead>>,
}

impl Leadership {
    /// A leadership that never lapses (a single agent, no election). Its channel is closed from
    /// the start: the value never changes.
    pub fn always() -> Leadership {
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let (_, rx) = watch::channel(Some(Lead { until: far, term: None }));
        Leadership { until: rx }
    }

    pub fn is_leader(&self) -> bool {
        self.until.borrow().as_ref().is_some_and(|lead| Instant::now() < lead.until)
    }

    /// The lead, while this replica has one.
    pub fn lead(&self) -> Option<Lead> {
        self.until.borrow().clone().filter(|lead| Instant::now() < lead.until)
    }

    /// Waits until this replica leads.
    pub async fn acquired(&mut self) {
        loop {
            if self.is_leader() {
                return;
            }
            // Wake on a change, and at least every 100 ms (a deadline passes without a change).
            if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(100), self.until.changed()).await {
                // The election has ended: this replica will never lead again.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until this replica no longer leads.
    pub async fn lost(&mut self) {
        loop {
            let until = self.until.borrow_and_update().as_ref().map(|lead| lead.until);
            match until {
                None => return,
                Some(t) if Instant::now() >= t => return,
                Some(t) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(t) => {}
                        changed = self.until.changed() => {
                            if changed.is_err() {
                                // No more changes can come: the deadline is final.
                                tokio::time::sleep_until(t).await;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The election loop's memory of the Lease as last seen.
#[derive(Debug, Default)]
struct Observed {
    /// (holder, renewTime) of the last record read.
    record: Option<(Option<String>, Option<MicroTime>)>,
    /// When this replica first saw that record.
    at: Option<Instant>,
}

/// Runs the election until `shutdown` resolves, publishing leadership through the returned
/// [`Leadership`]; releases the Lease on the way out if it holds it.
pub fn spawn_election(
    api: Api<Lease>,
    settings: LeaseSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    spawn_election_with(api, settings, None, shutdown)
}

/// [`spawn_election`], keeping `evidence` on the Lease (see [`LeaseEvidence`]).
pub fn spawn_election_with(
    api: Api<Lease>,
    settings: LeaseSettings,
    evidence: Option<LeaseEvidence>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel::<Option<Lead>>(None);
    let task = tokio::spawn(async move {
        let mut observed = Observed::default();
        tokio::pin!(shutdown);
        loop {
            let started = Instant::now();
            match try_acquire_or_renew(&api, &settings, &mut observed, evidence.as_ref()).await {
                Ok(Some(transitions)) => {
                    let term = Term { transitions, holder: settings.identity.clone() };
                    let was = tx.borrow().as_ref().is_some_and(|lead| started < lead.until);
                    if !was {
                        tracing::info!(lease = %settings.name, identity = %settings.identity, %term, "became the leader");
                    }
                    tx.send_replace(Some(Lead { until: started + settings.renew_deadline, term: Some(term) }));
                }
                Ok(None) => lapse(&tx, &settings, "another replica holds the lease"),
                Err(e) => {
                    tracing::warn!(lease = %settings.name, "lease: {e}");
                    lapse(&tx, &settings, "the lease could not be renewed in time");
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(settings.retry_period) => {}
            }
        }
        let leading = tx.borrow().as_ref().is_some_and(|lead| Instant::now() < lead.until);
        tx.send_replace(None);
        if leading && let Err(e) = release(&api, &settings, evidence.as_ref()).await {
            tracing::warn!(lease = %settings.name, "releasing the lease: {e}");
        }
    });
    (Leadership { until: rx }, task)
}

/// Clears leadership once its deadline has passed (it is never extended without a renewal).
fn lapse(tx: &watch::Sender<Option<Lead>>, settings: &LeaseSettings, why: &str) {
    let until = tx.borrow().as_ref().map(|lead| lead.until);
    if let Some(t) = until
        && Instant::now() >= t
    {
        tracing::warn!(lease = %settings.name, identity = %settings.identity, "no longer the leader: {why}");
        tx.send_replace(None);
    }
}

fn post_params() -> PostParams {
    PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// One round of client-go's `tryAcquireOrRenew`. `Ok(Some(leaseTransitions))`: this replica holds
/// the lease now, in that term.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    s: &LeaseSettings,
    observed: &mut Observed,
    evidence: Option<&LeaseEvidence>,
) -> Result<Option<i32>, String> {
    let current = bounded(s.call_timeout, api.get_opt(&s.name)).await?;
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(s.name.clone()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(s.identity.clone()),
                lease_duration_seconds: Some(seconds(s.lease_duration)),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        // A conflict: another replica created it first.
        let created = bounded_unless_conflict(s.call_timeout, api.create(&post_params(), &lease)).await?;
        return Ok(created.map(|_| 0));
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = (holder.clone(), spec.renew_time.clone());
    if observed.record.as_ref() != Some(&record) {
        observed.record = Some(record);
        observed.at = Some(Instant::now());
    }
    let ours = holder.as_deref() == Some(s.identity.as_str());
    if let Some(e) = evidence {
        e.read(&lease, !ours);
    }
    if let Some(other) = &holder
        && !ours
    {
        let duration = spec.lease_duration_seconds.and_then(|d| u64::try_from(d).ok()).map(Duration::from_secs);
        let valid_for = duration.unwrap_or(s.lease_duration);
        if observed.at.is_some_and(|at| Instant::now() < at + valid_for) {
            tracing::debug!(lease = %s.name, holder = %other, "lease held by another replica");
            return Ok(None);
        }
        tracing::info!(lease = %s.name, holder = %other, "lease expired; taking over");
    }
    let transitions = spec.lease_transitions.unwrap_or(0);
    let term = if ours { transitions } else { transitions.saturating_add(1) };
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(s.identity.clone()),
        lease_duration_seconds: Some(seconds(s.lease_duration)),
        acquire_time: if ours { spec.acquire_time.clone() } else { Some(now()) },
        renew_time: Some(now()),
        lease_transitions: Some(term),
        ..spec
    });
    if let Some(e) = evidence {
        e.write_into(&mut lease);
    }
    // `replace` sends the resourceVersion read above: a stale write is a 409, not a takeover.
    let replaced = bounded_unless_conflict(s.call_timeout, api.replace(&s.name, &post_params(), &lease)).await?;
    Ok(replaced.map(|_| term))
}

/// Gives the lease up: empty holder, so the next candidate takes over without waiting.
async fn release(api: &Api<Lease>, s: &LeaseSettings, evidence: Option<&LeaseEvidence>) -> Result<(), String> {
    let Some(mut lease) = bounded(s.call_timeout, api.get_opt(&s.name)).await? else { return Ok(()) };
    let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
    if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    // The checkpoint saved on the way out, if it came before the release: the successor reads it.
    if let Some(e) = evidence {
        e.write_into(&mut lease);
    }
    bounded(s.call_timeout, api.replace(&s.name, &post_params(), &lease)).await.map(|_| ())
}

/// A router that writes only while this replica leads.
#[derive(Debug, Clone)]
pub struct LeaderGated<R> {
    inner: R,
    leadership: Arc<Leadership>,
}

impl<R> LeaderGated<R> {
    pub fn new(inner: R, leadership: Leadership) -> Self {
        LeaderGated { inner, leadership: Arc::new(leadership) }
    }
}

impl<R: WeightRouter> WeightRouter for LeaderGated<R> {
    async fn current(&self) -> Result<canary_core::RouteConfig, RouterError> {
        self.inner.current().await
    }

    async fn apply(&self, weight: Weight, record: RolloutRecord) -> Result<canary_core::RouteConfig, RouterError> {
        if !self.leadership.is_leader() {
            return Err(RouterError::NotLeader);
        }
        self.inner.apply(weight, record).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // With the clock paused, a loop that never goes idle would keep time from advancing and
    // these timeouts would never fire.
    #[tokio::test(start_paused = true)]
    async fn a_closed_leadership_channel_waits_instead_of_spinning() {
        let mut always = Leadership::always();
        assert!(always.is_leader());
        assert!(tokio::time::timeout(Duration::from_secs(3600), always.lost()).await.is_err());

        let (tx, rx) = watch::channel(Some(Lead { until: Instant::now() + Duration::from_secs(5), term: None }));
        let mut ending = Leadership { until: rx };
        drop(tx);
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(60), ending.lost()).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(5), "lost only when the deadline passed");
        assert!(tokio::time::timeout(Duration::from_secs(3600), ending.acquired()).await.is_err());
    }
}
