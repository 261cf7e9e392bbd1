//! Harness for end-to-end runs against real Envoy: starts Envoy with the shipped local config
//! (deploy/local), small HTTP backends standing in for the stable and canary versions, and sends
//! traffic. Used by the e2e tests and by `make demo`.

pub mod agent;
pub mod backend;
pub mod envoy;
pub mod grpc;
pub mod paths;
pub mod procfs;
pub mod tool;
pub mod traffic;

pub use agent::Agent;
pub use backend::Backend;
pub use envoy::{Envoy, LocalSetup, Shape, WaypointShape};

/// The rollout spec the agent e2e tests run: rollout `demo`, checks every second, three steps
/// (10, 30, 60%), 50 canary requests per step, success rate ≥ 99% and p99 ≤ 1 s over 2 s. The
/// promotion gate is off: these tests are about stepping, kills and writes, and a few seconds of
/// e2e traffic are far too little evidence for it (canary-rollout tests the gate tick by tick).
pub const FAST_SPEC: &str = "
promotion: { requireEvidence: false }
name: demo
stable: v1
canary: v2
interval: 1s
threshold: 3
stepWeights: [10, 30, 60]
maxWeight: 60
minRequests: 50
metrics:
  - name: request-success-rate
    thresholdRange: { min: 99 }
    interval: 2s
  - name: request-duration
    thresholdRange: { max: 1000 }
    interval: 2s
";

/// What the shipped local setup tells the filter about its clusters: `stable` and `canary`.
pub const LOCAL_SERVED_BY: &str = r#""served_by":{"clusters":{"stable":"stable","canary":"canary"}}"#;

/// A route configuration for rollout `demo` (stable `v1`, canary `v2`) at `weight` percent, with
/// the local setup's cluster names and extra JSON fields (`,"sticky":{...}`).
pub fn route(weight: f64, revision: u64, extra: &str) -> Result<canary_core::RouteConfig, canary_core::ConfigError> {
    let json = format!(
        r#"{{"version":1,"rollout":"demo","stable":"v1","canary":"v2","canary_weight":{weight},"revision":{revision},{LOCAL_SERVED_BY}{extra}}}"#
    );
    canary_core::config::parse_route(json.as_bytes())
}

/// Two backends (`v1` stable, `v2` canary) and an Envoy in front of them.
#[derive(Debug)]
pub struct Fixture {
    pub stable: Backend,
    pub canary: Backend,
    pub envoy: Envoy,
}

impl Fixture {
    pub async fn start(route: canary_core::RouteConfig, concurrency: u32) -> Result<Fixture, String> {
        Self::start_shaped(route, concurrency, Shape::default()).await
    }

    /// The same with a changed bootstrap ([`Shape`]; not `second`, which needs backends of its own).
    pub async fn start_shaped(
        route: canary_core::RouteConfig,
        concurrency: u32,
        shape: Shape,
    ) -> Result<Fixture, String> {
        let stable = Backend::start("v1").await.map_err(|e| e.to_string())?;
        let canary = Backend::start("v2").await.map_err(|e| e.to_string())?;
        let envoy = Envoy::start(&LocalSetup {
            stable: stable.addr,
            canary: canary.addr,
            concurrency,
            route,
            raw_plugin_config: None,
            shape,
        })
        .await?;
        Ok(Fixture { stable, canary, envoy })
    }

    /// Sends `n` requests with `headers` through Envoy.
    pub async fn send(&self, n: u64, headers: &[(&str, String)]) -> traffic::Tally {
        traffic::send(self.envoy.http(), &self.envoy.url("/"), headers, n, 16).await
    }
}
