//! The controller's decisions, free of I/O: from a gate, what exists and what its rollout loop
//! reports, to the status to write and whether a new rollout starts. Tests feed these functions
//! and look at what comes out; the actor ([`super::controller`]) only carries it out.

use super::convert::GateError;
use super::crd::{CanaryGateSpec, CanaryGateStatus, GateCondition};
use crate::api::StatusView;

/// Annotation on the route WasmPlugin naming the rollout its durable state belongs to.
pub const ROLLOUT_ANNOTATION: &str = "canary-gate.dev/rollout";

/// What starts a new rollout: a new canary subset, or a new `spec.restartedAt`. Anything else
/// (steps, thresholds, metrics, sticky settings) resumes the running rollout on its step.
pub fn rollout_identity(spec: &CanaryGateSpec) -> String {
    match &spec.restarted_at {
        Some(at) => format!("{}@{at}", spec.canary),
        None => spec.canary.clone(),
    }
}

/// Whether the durable state in the route WasmPlugin (annotated with `recorded`) belongs to an
/// earlier rollout, and is cleared before the loop starts. A WasmPlugin without the annotation
/// was just created (nothing to clear) or predates the controller: its state is kept.
pub fn starts_new_rollout(spec: &CanaryGateSpec, recorded: Option<&str>) -> bool {
    recorded.is_some_and(|r| r != rollout_identity(spec))
}

/// Why a gate's rollout is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// The gate cannot be run; the field and why.
    Invalid(GateError),
    /// The route object does not send the canary's label to the canary: what is missing and the fix.
    RouteLabelMatchMissing(String),
    /// The route object cannot be read.
    RouteUnreadable(String),
    /// The generated objects could not be applied.
    ApplyFailed(String),
    /// Waypoint mode, and the Service has no waypoint that runs the filter (ztunnel-only, an
    /// agentgateway waypoint, ...), or its replicas cannot be read yet: the reason and the fix
    /// ([`crate::mesh::waypoint::WaypointProblem`]).
    Waypoint { reason: &'static str, message: String },
    /// Another gate in the namespace gates the same service and port for overlapping workloads,
    /// and wins ([`conflict_winner`]): the winner, and the fix.
    Conflict(String),
}

impl Blocked {
    fn reason(&self) -> &'static str {
        match self {
            Blocked::Invalid(_) => "InvalidSpec",
            Blocked::RouteLabelMatchMissing(_) => "RouteLabelMatchMissing",
            Blocked::RouteUnreadable(_) => "RouteUnreadable",
            Blocked::ApplyFailed(_) => "ApplyFailed",
            Blocked::Waypoint { reason, .. } => reason,
            Blocked::Conflict(_) => "Conflict",
        }
    }

    fn message(&self) -> String {
        match self {
            Blocked::Invalid(e) => e.to_string(),
            Blocked::RouteLabelMatchMissing(m)
            | Blocked::RouteUnreadable(m)
            | Blocked::ApplyFailed(m)
            | Blocked::Conflict(m) => m.clone(),
            Blocked::Waypoint { message, .. } => message.clone(),
        }
    }
}

/// The gate's status: from its running loop's view, or from why it is not running.
pub fn status(
    generation: Option<i64>,
    running: Result<&StatusView, &Blocked>,
    previous: &[GateCondition],
    now: &str,
) -> CanaryGateStatus {
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        // The transition time moves only when the status does.
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.to_owned(), |c| c.last_transition_time.clone());
        GateCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time,
            observed_generation: generation,
        }
    };
    let view = match running {
        Err(blocked) => {
            let (reason, message) = (blocked.reason(), blocked.message());
            return CanaryGateStatus {
                phase: Some("pending".into()),
                message: Some(message.clone()),
                observed_generation: generation,
                conditions: vec![
                    cond("Ready", false, reason, message.clone()),
                    cond("Progressing", false, reason, message),
                    cond("Promoted", false, "NotStarted", String::new()),
                    cond("RolledBack", false, "NotStarted", String::new()),
                ],
                ..CanaryGateStatus::default()
            };
        }
        Ok(view) => view,
    };
    let phase = view.phase.as_str();
    // A loop that has not read the durable state yet (a new leader taking over) knows no weight:
    // its figures are left out, so the merge patch keeps the last ones written instead of
    // reporting 0% while the proxies still apply the canary's weight.
    if phase == "starting" {
        let why = view.not_ready.clone().unwrap_or_else(|| "reading the durable state".into());
        return CanaryGateStatus {
            phase: Some(phase.to_owned()),
            message: Some(why.clone()),
            observed_generation: generation,
            conditions: vec![
                cond("Ready", false, "Starting", why.clone()),
                cond("Progressing", false, "Starting", why),
            ]
            .into_iter()
            // Promoted and RolledBack are not known again until the state is read: kept.
            .chain(["Promoted", "RolledBack"].into_iter().map(|t| {
                previous
                    .iter()
                    .find(|c| c.type_ == t)
                    .cloned()
                    .unwrap_or_else(|| cond(t, false, "Starting", String::new()))
            }))
            .collect(),
            ..CanaryGateStatus::default()
        };
    }
    let latest = view.recent_verdicts.last();
    let step = view.step.map(|s| format!("{}/{}", s.saturating_add(1), view.steps));
    let ready = view.not_ready.is_none() && phase != "starting" && phase != "standby";
    let progressing = matches!(phase, "initializing" | "progressing" | "promoting");
    let reason_word = camel(phase);
    // The promotion gate holding the step: said in the Progressing condition and the message.
    let held = view.insufficient_evidence.as_ref().filter(|_| progressing).map(|h| h.text.clone());
    let (progress_reason, progress_message) = match &held {
        Some(text) => ("InsufficientEvidence".to_owned(), text.clone()),
        None => (reason_word.clone(), view.reason.clone()),
    };
    CanaryGateStatus {
        phase: Some(phase.to_owned()),
        // What the proxies apply (the highest, when they differ); the written weight until one reports.
        weight: Some(view.observed_weight_percent.as_ref().map_or(view.written_weight_percent, |o| o.max_percent)),
        desired_weight: Some(view.canary_weight_percent),
        step,
        failed_checks: Some(view.failed_checks),
        verdict: latest.map(|v| v.verdict.clone()),
        reasons: latest.map(|v| v.reasons.clone()).unwrap_or_default(),
        proxies_reporting: Some(u32::try_from(view.proxies_reporting).unwrap_or(u32::MAX)),
        message: Some(held.unwrap_or_else(|| view.reason.clone())),
        observed_generation: generation,
        conditions: vec![
            cond(
                "Ready",
                ready,
                if ready { "RolloutRunning" } else { "NotReady" },
                view.not_ready.clone().unwrap_or_default(),
            ),
            cond("Progressing", progressing, &progress_reason, progress_message),
            cond("Promoted", phase == "succeeded", &reason_word, String::new()),
            cond(
                "RolledBack",
                phase == "rolled_back",
                &reason_word,
                if phase == "rolled_back" { view.reason.clone() } else { String::new() },
            ),
        ],
    }
}

/// A running gate's status ([`status`]) in waypoint mode, where the rollback's durable write is
/// the only kill: while some replica has not confirmed it within the loop's apply deadline,
/// `Ready=False` with reason `KillNotConfirmed` naming it, also in the `RolledBack` message.
/// (A sidecar behind on the revision is held at 0% by the kill order the loop sends it directly,
/// so sidecar mode does not use this.)
pub fn with_unconfirmed_kill(
    mut status: CanaryGateStatus,
    view: &StatusView,
    previous: &[GateCondition],
    now: &str,
) -> CanaryGateStatus {
    let Some(message) = unconfirmed_kill(view) else { return status };
    if view.not_ready.is_some() {
        return status; // the loop's own reason (no replica answers, a write fails) comes first
    }
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "KillNotConfirmed")
        .map_or_else(|| now.to_owned(), |c| c.last_transition_time.clone());
    for c in &mut status.conditions {
        if c.type_ == "Ready" {
            c.status = "False".into();
            c.reason = "KillNotConfirmed".into();
            c.message.clone_from(&message);
            c.last_transition_time.clone_from(&last_transition_time);
        } else if c.type_ == "RolledBack" {
            c.message = format!("{} ({message})", view.reason);
        }
    }
    status
}

/// A rolled-back rollout whose kill some replica has not confirmed within the loop's apply
/// deadline (it still reports an older revision than the durable rollback): which replicas, and
/// the fix. Replicas are confirmed from their own state (a waypoint replica's gauges), never
/// assumed from the write.
pub fn unconfirmed_kill(view: &StatusView) -> Option<String> {
    if view.phase != "rolled_back" {
        return None;
    }
    let late: Vec<String> = view
        .proxies_behind
        .iter()
        .filter(|b| b.rejected)
        .map(|b| format!("{} (applies revision {}, {} s)", b.target, b.revision, b.for_ms / 1000))
        .collect();
    if late.is_empty() {
        return None;
    }
    Some(format!(
        "the rollback (revision {}) is not confirmed on {}: they may still send canary traffic. Fix: delete \
         those pods (their Deployment replaces them, and a new replica starts from the rolled-back \
         configuration), or check why they reject it",
        view.revision,
        late.join(", ")
    ))
}

/// What a gate claims: the proxies of the workloads its selector picks, for one service and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// `metadata.creationTimestamp`; a gate without one (not yet stored) ranks last.
    pub created: Option<k8s_openapi::jiff::Timestamp>,
    pub service: &'a str,
    pub port: u16,
    pub selector: &'a std::collections::BTreeMap<String, String>,
}

impl Claim<'_> {
    /// Two gates would generate route plugins on the same proxies for the same port: same
    /// namespace, service and port, and selectors that can pick one pod (no label both name with
    /// different values).
    fn overlaps(&self, other: &Claim<'_>) -> bool {
        self.namespace == other.namespace
            && self.service == other.service
            && self.port == other.port
            && self.selector.iter().all(|(k, v)| other.selector.get(k).is_none_or(|w| w == v))
    }

    /// Older first, then by name; a gate without a creation time after every gate with one.
    fn rank(&self) -> (bool, Option<k8s_openapi::jiff::Timestamp>, &str) {
        (self.created.is_none(), self.created, self.name)
    }
}

/// The gate `gate` loses to, if any: of the gates it overlaps with ([`Claim::overlaps`]), the
/// first by age (older `creationTimestamp`, then name). A loser generates nothing and reports
/// `Ready=False Conflict`. Any overlapping gate ranked before it wins, even one that itself loses
/// to a third: the rule stays a function of the pair, so it never flips as other gates come and go.
pub fn conflict_winner<'a>(gate: &Claim<'_>, all: &'a [Claim<'a>]) -> Option<&'a Claim<'a>> {
    all.iter()
        .filter(|other| other.name != gate.name || other.namespace != gate.namespace)
        .filter(|other| gate.overlaps(other) && other.rank() < gate.rank())
        .min_by(|a, b| a.rank().cmp(&b.rank()))
}

/// Why a gate that loses to `winner` does not run, and the fix.
pub fn conflict_message(gate: &Claim<'_>, winner: &Claim<'_>) -> String {
    format!(
        "CanaryGate {} already gates service {} port {} for workloads that overlap this gate's          spec.workload.selector (the older gate wins, then the first by name); this gate generates          nothing. Fix: delete one of the two, or give them disjoint spec.workload.selector labels          or another spec.service",
        winner.name, gate.service, gate.port
    )
}

/// An edit of a running gate that passed admission but that gate-agent refuses: the rollout goes
/// on with the last good spec, and the status says which field to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedEdit {
    /// The generation of the refused spec.
    pub generation: Option<i64>,
    /// The generation still running.
    pub running: Option<i64>,
    pub error: GateError,
}

impl RefusedEdit {
    pub fn message(&self) -> String {
        let generation = |g: Option<i64>| g.map_or_else(|| "?".to_owned(), |g| g.to_string());
        format!(
            "the edit of generation {} is refused ({}); the rollout goes on with the last good spec (generation {}) until the field is fixed",
            generation(self.generation),
            self.error,
            generation(self.running)
        )
    }
}

/// A running gate's status ([`status`]) when its latest edit was refused: `Ready=False` with
/// reason `InvalidSpec` and the field path, the refused generation observed, the rest as the
/// loop (on its last good spec) reports it.
pub fn with_refused_edit(
    mut status: CanaryGateStatus,
    refused: &RefusedEdit,
    previous: &[GateCondition],
    now: &str,
) -> CanaryGateStatus {
    let message = refused.message();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "InvalidSpec")
        .map_or_else(|| now.to_owned(), |c| c.last_transition_time.clone());
    let ready = GateCondition {
        type_: "Ready".into(),
        status: "False".into(),
        reason: "InvalidSpec".into(),
        message: message.clone(),
        last_transition_time,
        observed_generation: refused.generation,
    };
    status.conditions.retain(|c| c.type_ != "Ready");
    status.conditions.insert(0, ready);
    status.message = Some(message);
    status.observed_generation = refused.generation;
    status
}

/// How long a change of only the words (reasons, message) waits before it is written: a status
/// write per gate per tick would be the API server's heaviest load with a hundred gates.
pub const WORDS_ONLY_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Whether `new` is worth a status write after `last` was written `since` ago: at once when what
/// `kubectl get` and the conditions show changed, else (only the words) every [`WORDS_ONLY_EVERY`].
pub fn worth_writing(last: Option<&CanaryGateStatus>, new: &CanaryGateStatus, since: std::time::Duration) -> bool {
    let Some(last) = last else { return true };
    let key = |s: &CanaryGateStatus| {
        let conds: Vec<(String, String, String)> =
            s.conditions.iter().map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone())).collect();
        (
            s.phase.clone(),
            s.weight.map(f64::to_bits),
            s.desired_weight.map(f64::to_bits),
            s.step.clone(),
            s.failed_checks,
            s.verdict.clone(),
            s.proxies_reporting,
            s.observed_generation,
            conds,
        )
    };
    if key(last) != key(new) {
        return true;
    }
    let words = |s: &CanaryGateStatus| (s.reasons.clone(), s.message.clone());
    words(last) != words(new) && since >= WORDS_ONLY_EVERY
}

/// `rolled_back` → `RolledBack` (a condition reason is CamelCase).
fn camel(phase: &str) -> String {
    let word: String = phase
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map_or_else(String::new, |f| f.to_ascii_uppercase().to_string() + c.as_str())
        })
        .collect();
    if word.is_empty() { "Unknown".into() } else { word }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::VerdictView;

    fn spec(canary: &str, restarted: Option<&str>) -> CanaryGateSpec {
        let mut s: CanaryGateSpec = serde_json::from_value(serde_json::json!({
            "service": { "name": "s", "port": 80 }, "workload": { "selector": { "app": "f" } },
            "stable": "v1", "canary": canary, "route": { "name": "s" },
            "analysis": { "interval": "1s", "stepWeights": [10] } }))
        .unwrap();
        s.restarted_at = restarted.map(Into::into);
        s
    }

    #[test]
    fn a_new_canary_or_restart_starts_a_new_rollout_and_other_edits_do_not() {
        assert!(!starts_new_rollout(&spec("v2", None), None), "a fresh plugin has nothing to clear");
        assert!(!starts_new_rollout(&spec("v2", None), Some("v2")));
        assert!(starts_new_rollout(&spec("v3", None), Some("v2")));
        assert!(starts_new_rollout(&spec("v2", Some("2026-12-03T12:00:00Z")), Some("v2")));
    }

    #[test]
    fn of_two_gates_on_one_service_and_port_for_overlapping_workloads_the_older_wins() {
        let t = |s: &str| s.parse::<k8s_openapi::jiff::Timestamp>().ok();
        let (front, front_web, api) = (
            std::collections::BTreeMap::from([("app".to_owned(), "frontend".to_owned())]),
            std::collections::BTreeMap::from([
                ("app".to_owned(), "frontend".to_owned()),
                ("tier".to_owned(), "web".to_owned()),
            ]),
            std::collections::BTreeMap::from([("app".to_owned(), "api".to_owned())]),
        );
        let claim = |name, created: &str, selector| Claim {
            namespace: "shop",
            name,
            created: t(created),
            service: "payment-svc",
            port: 8080,
            selector,
        };
        let old = claim("zeta", "2026-12-03T10:00:00Z", &front);
        let new = claim("alpha", "2026-12-03T11:00:00Z", &front_web);
        let all = [old.clone(), new.clone()];
        assert_eq!(conflict_winner(&new, &all).map(|w| w.name), Some("zeta"), "older wins over the name");
        assert_eq!(conflict_winner(&old, &all), None);
        // Same age: the first by name.
        let twin = claim("beta", "2026-12-03T10:00:00Z", &front);
        let all = [old.clone(), twin.clone()];
        assert_eq!(conflict_winner(&old, &all).map(|w| w.name), Some("beta"));
        assert_eq!(conflict_winner(&twin, &all), None);
        // No conflict: disjoint selectors, another port, another service, another namespace.
        let others = [
            claim("api", "2026-12-03T09:00:00Z", &api),
            Claim { port: 9090, ..claim("p", "2026-12-03T09:00:00Z", &front) },
            Claim { service: "cart", ..claim("s", "2026-12-03T09:00:00Z", &front) },
            Claim { namespace: "blog", ..claim("n", "2026-12-03T09:00:00Z", &front) },
        ];
        let mut all = others.to_vec();
        all.push(new.clone());
        assert_eq!(conflict_winner(&new, &all), None, "{all:?}");
        // A gate not yet stored (no creation time) loses to one that is.
        let unstored = Claim { created: None, ..claim("a", "", &front) };
        let all = [unstored.clone(), old.clone()];
        assert_eq!(conflict_winner(&unstored, &all).map(|w| w.name), Some("zeta"));
        let m = conflict_message(&new, &old);
        assert!(m.contains("CanaryGate zeta") && m.contains("port 8080") && m.contains("Fix:"), "{m}");
    }

    #[test]
    fn a_refused_edit_keeps_the_loops_figures_and_says_which_field_to_fix() {
        let view = StatusView {
            rollout: "r".into(),
            phase: "progressing".into(),
            step: Some(1),
            steps: 3,
            ..StatusView::default()
        };
        let running = status(Some(1), Ok(&view), &[], "2026-12-03T12:00:00Z");
        let refused = RefusedEdit {
            generation: Some(2),
            running: Some(1),
            error: GateError { field: "spec.analysis.promotion.maxWait".into(), problem: "must be above 0".into() },
        };
        let s = with_refused_edit(running.clone(), &refused, &running.conditions, "2026-12-03T12:01:00Z");
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidSpec"));
        assert!(ready.message.contains("spec.analysis.promotion.maxWait"), "{}", ready.message);
        assert!(ready.message.contains("generation 1"), "{}", ready.message);
        assert_eq!(ready.last_transition_time, "2026-12-03T12:01:00Z");
        assert_eq!(
            (s.phase.clone(), s.step.clone(), s.observed_generation),
            (running.phase.clone(), running.step.clone(), Some(2))
        );
        assert_eq!(s.conditions.iter().filter(|c| c.type_ == "Ready").count(), 1);
        assert!(worth_writing(Some(&running), &s, std::time::Duration::ZERO), "written at once");
        let again = with_refused_edit(running.clone(), &refused, &s.conditions, "2026-12-03T12:05:00Z");
        assert_eq!(again.conditions[0].last_transition_time, "2026-12-03T12:01:00Z", "the transition is kept");
    }

    #[test]
    fn a_step_the_promotion_gate_holds_reads_insufficient_evidence() {
        let held = crate::rollout::InsufficientEvidence {
            since_ms: 1,
            more_canary_requests: Some(400),
            canary_requests_per_s: Some(20.0),
            eta_s: Some(20.0),
            gives_up_in_s: None,
            tests: vec![],
            text: "insufficient evidence: about 400 more canary requests".into(),
        };
        let view = StatusView {
            phase: "progressing".into(),
            step: Some(0),
            steps: 3,
            insufficient_evidence: Some(held),
            ..StatusView::default()
        };
        let s = status(Some(1), Ok(&view), &[], "2026-12-03T12:00:00Z");
        let progressing = s.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
        assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("True", "InsufficientEvidence"));
        assert!(progressing.message.contains("400 more canary requests"), "{progressing:?}");
        assert_eq!(s.message.as_deref(), Some("insufficient evidence: about 400 more canary requests"));
        let free =
            status(Some(1), Ok(&StatusView { insufficient_evidence: None, ..view }), &[], "2026-12-03T12:00:00Z");
        assert_eq!(free.conditions.iter().find(|c| c.type_ == "Progressing").unwrap().reason, "Progressing");
    }

    #[test]
    fn a_running_rollout_reports_phase_weight_step_and_verdict() {
        let view = StatusView {
            phase: "progressing".into(),
            written_weight_percent: 10.0,
            canary_weight_percent: 30.0,
            step: Some(0),
            steps: 3,
            proxies_reporting: 2,
            recent_verdicts: vec![VerdictView {
                at_unix_ms: 1,
                verdict: "pass".into(),
                reasons: vec!["fine".into()],
                kind: None,
            }],
            ..StatusView::default()
        };
        let s = status(Some(4), Ok(&view), &[], "2026-12-03T12:00:00Z");
        assert_eq!(s.phase.as_deref(), Some("progressing"));
        assert_eq!((s.weight, s.desired_weight), (Some(10.0), Some(30.0)));
        assert_eq!(s.step.as_deref(), Some("1/3"));
        assert_eq!(s.verdict.as_deref(), Some("pass"));
        assert_eq!(s.observed_generation, Some(4));
        let by = |t: &str| s.conditions.iter().find(|c| c.type_ == t).unwrap().status.clone();
        assert_eq!(
            (by("Ready"), by("Progressing"), by("Promoted"), by("RolledBack")),
            ("True".into(), "True".into(), "False".into(), "False".into())
        );
        let later = status(Some(5), Ok(&view), &s.conditions, "2026-12-03T13:00:00Z");
        assert_eq!(later.conditions[0].last_transition_time, "2026-12-03T12:00:00Z", "no transition, same time");
    }

    #[test]
    fn a_loop_still_starting_reports_no_weight_so_the_last_one_written_stays() {
        let view = StatusView { phase: "starting".into(), ..StatusView::default() };
        let s = status(Some(1), Ok(&view), &[], "t");
        assert_eq!((s.weight, s.desired_weight, s.step.as_deref()), (None, None, None));
        let patch = serde_json::to_value(&s).unwrap();
        assert!(patch.get("weight").is_none(), "a merge patch without `weight` keeps it: {patch}");
    }

    #[test]
    fn a_new_weight_is_written_at_once_and_new_words_only_now_and_then() {
        let base = CanaryGateStatus { phase: Some("progressing".into()), weight: Some(10.0), ..Default::default() };
        let quick = std::time::Duration::from_secs(1);
        assert!(worth_writing(None, &base, quick));
        assert!(!worth_writing(Some(&base), &base.clone(), quick));
        let moved = CanaryGateStatus { weight: Some(30.0), ..base.clone() };
        assert!(worth_writing(Some(&base), &moved, quick));
        let reworded = CanaryGateStatus { reasons: vec!["evidence ln 0.4".into()], ..base.clone() };
        assert!(!worth_writing(Some(&base), &reworded, quick));
        assert!(worth_writing(Some(&base), &reworded, WORDS_ONLY_EVERY));
    }

    #[test]
    fn a_rollback_not_confirmed_on_a_replica_in_time_names_it_and_a_confirmed_one_does_not() {
        let behind = |rejected| crate::rollout::Behind {
            target: "10.1.2.3:15090".into(),
            revision: 4,
            for_ms: 12_000,
            rejected,
        };
        let view = StatusView {
            phase: "rolled_back".into(),
            reason: "rollback: errors".into(),
            revision: 5,
            proxies_behind: vec![behind(true)],
            ..StatusView::default()
        };
        let waypoint = |v: &StatusView| with_unconfirmed_kill(status(Some(1), Ok(v), &[], "t"), v, &[], "t");
        let s = waypoint(&view);
        let by = |s: &CanaryGateStatus, t: &str| s.conditions.iter().find(|c| c.type_ == t).unwrap().clone();
        let ready = by(&s, "Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "KillNotConfirmed"));
        assert!(ready.message.contains("10.1.2.3:15090 (applies revision 4, 12 s)"), "{}", ready.message);
        assert!(ready.message.contains("revision 5") && ready.message.contains("Fix:"), "{}", ready.message);
        assert!(by(&s, "RolledBack").message.contains("10.1.2.3:15090"));
        // Still within the deadline, or confirmed: nothing named.
        for v in [
            StatusView { proxies_behind: vec![behind(false)], ..view.clone() },
            StatusView { proxies_behind: vec![], ..view.clone() },
        ] {
            assert_eq!(by(&waypoint(&v), "Ready").reason, "RolloutRunning");
        }
        // Sidecar mode does not use it: the same view reads as running there.
        assert_eq!(by(&status(Some(1), Ok(&view), &[], "t"), "Ready").reason, "RolloutRunning");
        // A step held by a proxy that rejected its revision is not a kill.
        let stepping = StatusView { phase: "progressing".into(), ..view };
        assert_eq!(unconfirmed_kill(&stepping), None);
    }

    #[test]
    fn a_blocked_gate_says_why_in_its_conditions() {
        let b = Blocked::RouteLabelMatchMissing("add a route".into());
        let s = status(Some(1), Err(&b), &[], "t");
        assert_eq!(s.phase.as_deref(), Some("pending"));
        assert_eq!(s.conditions[0].reason, "RouteLabelMatchMissing");
        assert_eq!(s.conditions[0].message, "add a route");
    }
}
