//! Objects and values the mesh tests share, whichever API server they run against (the real one
//! in `mesh.rs`, the fault-injecting double in `mesh_faults.rs`).
#![allow(dead_code)] // each test binary uses a different part of it

use std::time::{Duration, Instant};

use canary_core::{RolloutPhase, RolloutRecord, Weight};
use gate_agent::mesh::lease::LeaseSettings;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

/// canary-gate's route WasmPlugin for rollout `demo` at `weight` and `revision`, in `namespace`
/// when given (the real server's tests create it through a namespaced API instead).
pub fn wasmplugin(namespace: Option<&str>, weight: u32, revision: u64) -> Value {
    let mut metadata = json!({ "name": "canary-gate", "labels": { "team": "web" } });
    if let Some(ns) = namespace {
        metadata["namespace"] = ns.into();
    }
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": metadata,
        "spec": {
            "url": "oci://registry.example/canary-gate/filter@sha256:0123",
            "failStrategy": "FAIL_OPEN",
            "phase": "AUTHN",
            "match": [{ "mode": "CLIENT" }],
            "pluginConfig": {
                "version": 1, "rollout": "demo", "stable": "v1", "canary": "v2",
                "canary_weight": weight, "sticky": { "header": "x-user-id" }, "revision": revision
            }
        }
    })
}

pub fn record(phase: RolloutPhase) -> RolloutRecord {
    RolloutRecord::new(phase, 0, "test", 1)
}

pub fn w(p: f64) -> Weight {
    Weight::from_percent(p).unwrap_or(Weight::ZERO)
}

/// Lease timings for a handover test: a replica believes it leads for up to 3 s after its last
/// renewal, long enough for a test to take the Lease from it and watch its late writes.
pub fn handover_lease_settings(identity: &str) -> LeaseSettings {
    LeaseSettings {
        lease_duration: Duration::from_millis(4_000),
        renew_deadline: Duration::from_millis(3_000),
        ..lease_settings(identity)
    }
}

/// Makes `holder` the Lease `canary-gate-agent`'s holder with a new transition, as its own
/// election would once the current holder's lease expired; the current holder may renew
/// meanwhile, so a 409 is read again and retried. Returns when the replace that landed began.
pub async fn hand_lease_to(leases: &Api<Lease>, holder: &str) -> Instant {
    loop {
        let mut lease = leases.get("canary-gate-agent").await.unwrap();
        let spec = lease.spec.as_mut().unwrap();
        spec.holder_identity = Some(holder.into());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.renew_time =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now()));
        let began = Instant::now();
        match leases.replace("canary-gate-agent", &PostParams::default(), &lease).await {
            Ok(_) => return began,
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("handing the Lease to {holder}: {e}"),
        }
    }
}

/// Lease timings short enough for a test to see a handover in seconds.
pub fn lease_settings(identity: &str) -> LeaseSettings {
    LeaseSettings {
        lease_duration: Duration::from_millis(2_000),
        renew_deadline: Duration::from_millis(1_200),
        retry_period: Duration::from_millis(200),
        call_timeout: Duration::from_millis(400),
        ..LeaseSettings::new("canary-gate-agent", identity)
    }
}
