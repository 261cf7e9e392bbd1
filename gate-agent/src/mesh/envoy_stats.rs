//! Reading a waypoint replica: its Envoy stats at `<pod IP>:<stats port>/stats/prometheus` (Istio's
//! 15090), turned into a snapshot by [`canary_rollout::envoy_stats`]. A waypoint has no snapshot
//! listener on a pod port and no direct kill path: the kill is the durable write the rollout
//! makes anyway (weight 0, rolled back, a higher revision, fenced), and each replica's gauges
//! confirm it (docs/mesh.md, "Ambient waypoints").

use std::time::Duration;

use canary_core::{KillOrder, KillRecord, RouteConfig, Snapshot};
use canary_rollout::envoy_stats::replica_snapshot;

use crate::source::{CounterSource, FetchError, KillSwitch};

/// Istio's Prometheus stats port, on every proxy its bootstrap configures, gateways included.
pub const DEFAULT_STATS_PORT: u16 = 15090;
/// Envoy's Prometheus stats, only the filter's (`filter` is a regex on the stat names).
pub const STATS_PATH: &str = "/stats/prometheus?filter=canary_gate_";
/// A waypoint's stats, filtered to the filter's, are a few KB; anything far larger is not them.
const MAX_STATS_BYTES: usize = 4 << 20;

/// Reads one rollout's counters and gauges from each waypoint replica's Envoy stats.
#[derive(Debug, Clone)]
pub struct EnvoyStatsSource {
    client: reqwest::Client,
    /// The rollout's configuration as generated: its names (rollout, stable, canary).
    route: RouteConfig,
    timeout: Duration,
}

impl EnvoyStatsSource {
    pub fn new(route: RouteConfig, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).build()?;
        Ok(EnvoyStatsSource { client, route, timeout })
    }

    fn failure(&self, target: &str, e: &reqwest::Error) -> FetchError {
        if e.is_timeout() {
            FetchError::Timeout { target: target.to_owned(), timeout: self.timeout }
        } else {
            FetchError::Unreachable { target: target.to_owned(), message: e.to_string() }
        }
    }
}

impl CounterSource for EnvoyStatsSource {
    async fn fetch(&self, target: &str) -> Result<Snapshot, FetchError> {
        let url = format!("http://{target}{STATS_PATH}");
        let resp = self.client.get(&url).send().await.map_err(|e| self.failure(target, &e))?;
        if !resp.status().is_success() {
            return Err(FetchError::Status { target: target.to_owned(), status: resp.status().as_u16() });
        }
        let too_large = || FetchError::Invalid { target: target.to_owned(), message: "stats too large".into() };
        if resp.content_length().is_some_and(|n| n > MAX_STATS_BYTES as u64) {
            return Err(too_large());
        }
        let body = resp.bytes().await.map_err(|e| self.failure(target, &e))?;
        if body.len() > MAX_STATS_BYTES {
            return Err(too_large());
        }
        replica_snapshot(&body, &self.route, crate::time::unix_ms())
            .map_err(|e| FetchError::Invalid { target: target.to_owned(), message: e.to_string() })
    }
}

impl KillSwitch for EnvoyStatsSource {
    /// There is none: a waypoint replica serves no control path (only the route role runs there,
    /// and it answers none). The rollback's durable write reaches every replica through istiod;
    /// the tick sees each replica's gauges and names any that does not apply it in time.
    async fn kill(&self, target: &str, order: &KillOrder) -> Result<KillRecord, FetchError> {
        Err(FetchError::Unreachable {
            target: target.to_owned(),
            message: format!(
                "a waypoint replica has no direct kill path: the durable rollback (revision above {}) \
                 reaches it through the mesh's configuration push",
                order.revision
            ),
        })
    }
}
