//! Which proxies to read: the pods behind a label selector, by pod IP.
//!
//! One agent aggregates a whole fleet. The list is refreshed periodically; a pod that goes away
//! simply stops being read (the fleet reports it until its data ages out), and a new pod is read
//! from its first snapshot on (a baseline, never a delta from zero).

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::sync::watch;

use super::bounded;

/// Lists the ready pods behind `selector` as `ip:port` snapshot targets.
#[derive(Clone)]
pub struct PodTargets {
    api: Api<Pod>,
    selector: String,
    port: u16,
    timeout: Duration,
}

impl std::fmt::Debug for PodTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodTargets").field("selector", &self.selector).field("port", &self.port).finish()
    }
}

impl PodTargets {
    pub fn new(api: Api<Pod>, selector: &str, port: u16, timeout: Duration) -> Self {
        PodTargets { api, selector: selector.to_owned(), port, timeout }
    }

    /// The current targets, sorted.
    pub async fn list(&self) -> Result<Vec<String>, String> {
        // From the API server's watch cache (resourceVersion 0), not a quorum read from etcd: a
        // list a moment old is fine for finding proxies, and a controller with a hundred gates
        // lists every few hundred milliseconds.
        let params = ListParams::default().labels(&self.selector).match_any();
        let pods = bounded(self.timeout, self.api.list(&params)).await?;
        let mut targets: Vec<String> = pods.items.iter().filter_map(|p| target_of(p, self.port)).collect();
        targets.sort();
        targets.dedup();
        Ok(targets)
    }

    /// Refreshes the list every `every` into a watch channel until the receiver is dropped. A
    /// failed listing keeps the last list (the proxies are still there; the API is what failed).
    pub fn spawn(self, first: Vec<String>, every: Duration) -> watch::Receiver<Vec<String>> {
        let (tx, rx) = watch::channel(first);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match self.list().await {
                    Ok(targets) => {
                        if *tx.borrow() != targets {
                            tracing::info!(selector = %self.selector, ?targets, "proxies changed");
                            if tx.send(targets).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::warn!(selector = %self.selector, "listing pods: {e}; keeping the last list"),
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        rx
    }
}

/// `ip:port` for a running, ready pod that is not being deleted.
pub fn target_of(pod: &Pod, port: u16) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ready = status.conditions.as_ref()?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    Some(std::net::SocketAddr::new(ip, port).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, ip: &str, ready: bool, deleting: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p", "deletionTimestamp": if deleting { Some("2026-01-01T00:00:00Z") } else { None } },
            "status": { "phase": phase, "podIP": ip,
                        "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }] }
        }))
        .unwrap()
    }

    #[test]
    fn only_running_ready_pods_with_an_ip_are_read() {
        assert_eq!(target_of(&pod("Running", "10.0.0.7", true, false), 15290).as_deref(), Some("10.0.0.7:15290"));
        assert_eq!(target_of(&pod("Running", "fd00::7", true, false), 15290).as_deref(), Some("[fd00::7]:15290"));
        assert_eq!(target_of(&pod("Pending", "10.0.0.7", true, false), 15290), None);
        assert_eq!(target_of(&pod("Running", "10.0.0.7", false, false), 15290), None);
        assert_eq!(target_of(&pod("Running", "10.0.0.7", true, true), 15290), None);
        assert_eq!(target_of(&pod("Running", "not-an-ip", true, false), 15290), None);
    }
}
