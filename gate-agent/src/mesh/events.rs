//! Phase changes as Kubernetes Events on the WasmPlugin, so `kubectl describe wasmplugin` and
//! `kubectl get events` show what the agent did and why.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use super::{FIELD_MANAGER, bounded};
use crate::notify::{Notice, NoticeKind, Notifier};

/// Component name in every Event.
pub const COMPONENT: &str = "canary-gate-agent";
/// Kubernetes caps an Event message at 1 KiB.
const MAX_MESSAGE: usize = 1024;

/// Posts one core/v1 Event per phase change, regarding one object.
#[derive(Clone)]
pub struct KubeEvents {
    api: Api<Event>,
    regarding: ObjectReference,
    instance: String,
    timeout: Duration,
}

impl std::fmt::Debug for KubeEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeEvents").field("regarding", &self.regarding.name).finish()
    }
}

impl KubeEvents {
    /// Events regarding `regarding`, reported by this replica (`instance`, the pod name).
    pub fn new(api: Api<Event>, regarding: ObjectReference, instance: &str, timeout: Duration) -> Self {
        KubeEvents { api, regarding, instance: instance.to_owned(), timeout }
    }
}

/// The Event for one notice: Warning for a rollback or a foreign write, Normal otherwise.
pub fn event_for(notice: &Notice, regarding: &ObjectReference, instance: &str, now: Timestamp) -> Event {
    let (kind, reason) = match (notice.kind, notice.to.as_str()) {
        (NoticeKind::ForeignWrite, _) => ("Warning", "ForeignWrite"),
        (_, "rolled_back") => ("Warning", "RolledBack"),
        (_, "succeeded") => ("Normal", "Promoted"),
        (_, "paused") => ("Normal", "Paused"),
        _ => ("Normal", "PhaseChanged"),
    };
    let message = match notice.kind {
        NoticeKind::ForeignWrite => format!("rollout {}: {}", notice.rollout, notice.reason),
        NoticeKind::PhaseChange => format!(
            "rollout {}: {} -> {} at {}% canary: {}",
            notice.rollout, notice.from, notice.to, notice.weight_percent, notice.reason
        ),
    };
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", regarding.name.as_deref().unwrap_or("canary-gate"))),
            namespace: regarding.namespace.clone(),
            ..ObjectMeta::default()
        },
        involved_object: regarding.clone(),
        reason: Some(reason.to_owned()),
        message: Some(canary_core::record::truncate(&message, MAX_MESSAGE).to_owned()),
        type_: Some(kind.to_owned()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        action: Some(match notice.kind {
            NoticeKind::ForeignWrite => "RevertForeignWrite".to_owned(),
            NoticeKind::PhaseChange => format!("{}To{}", notice.from, notice.to),
        }),
        reporting_component: Some(COMPONENT.to_owned()),
        reporting_instance: Some(instance.to_owned()),
        source: Some(EventSource { component: Some(COMPONENT.to_owned()), host: None }),
        ..Event::default()
    }
}

impl Notifier for KubeEvents {
    async fn post(&self, notice: &Notice) -> Result<(), String> {
        let event = event_for(notice, &self.regarding, &self.instance, Timestamp::now());
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
        bounded(self.timeout, self.api.create(&params, &event)).await.map(|_| ())
    }
}

/// Posts every notice to two notifiers (e.g. Events and a webhook); both are tried.
#[derive(Debug, Clone)]
pub struct Both<A, B>(pub A, pub B);

impl<A: Notifier, B: Notifier> Notifier for Both<A, B> {
    async fn post(&self, notice: &Notice) -> Result<(), String> {
        let (a, b) = tokio::join!(self.0.post(notice), self.1.post(notice));
        match (a, b) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(format!("{a}; {b}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_is_a_warning_with_the_reason() {
        let notice = Notice {
            kind: NoticeKind::PhaseChange,
            rollout: "demo".into(),
            from: "progressing".into(),
            to: "rolled_back".into(),
            weight_percent: 0.0,
            reason: "rollback: decisive breach".into(),
        };
        let regarding = ObjectReference {
            api_version: Some("extensions.istio.io/v1alpha1".into()),
            kind: Some("WasmPlugin".into()),
            name: Some("canary-gate".into()),
            namespace: Some("shop".into()),
            ..ObjectReference::default()
        };
        let e = event_for(&notice, &regarding, "agent-0", Timestamp::UNIX_EPOCH);
        assert_eq!((e.type_.as_deref(), e.reason.as_deref()), (Some("Warning"), Some("RolledBack")));
        assert!(e.message.as_deref().unwrap().contains("decisive breach"));
        assert_eq!(e.involved_object.kind.as_deref(), Some("WasmPlugin"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("shop"));
        let foreign = Notice {
            kind: NoticeKind::ForeignWrite,
            to: "progressing".into(),
            reason: "foreign write: revision 9: canary_weight 99% (the rollout's: 10%)".into(),
            ..notice
        };
        let e = event_for(&foreign, &regarding, "agent-0", Timestamp::UNIX_EPOCH);
        assert_eq!((e.type_.as_deref(), e.reason.as_deref()), (Some("Warning"), Some("ForeignWrite")));
        assert!(e.message.as_deref().unwrap().contains("canary_weight 99%"));
    }
}
