//! The `CanaryGate` custom resource (`canary-gate.dev/v1alpha1`, namespaced): one per gated
//! service, written by the user; its status is written by the controller.
//!
//! The CRD shipped in `deploy/crd/canarygate.yaml` (and the Helm chart) is [`crd`]'s output: the
//! schema kube derives from these types, plus the admission rules in [`admission_rules`] (CEL and
//! patterns) that catch typos before the controller ever sees them. A test keeps the shipped file
//! equal to [`crd`], so types and schema cannot drift apart.
//!
//! Not `Rollout` or `Canary`: those kinds belong to Argo Rollouts and Flagger, and `kubectl get
//! rollouts` would become ambiguous in clusters that run them.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The snapshot port when the gate does not name one (deploy/istio uses it too).
pub const DEFAULT_SNAPSHOT_PORT: u16 = 15290;

/// What a user writes to gate one service's canary.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "canary-gate.dev",
    version = "v1alpha1",
    kind = "CanaryGate",
    plural = "canarygates",
    shortname = "cgate",
    category = "canary-gate",
    namespaced,
    status = "CanaryGateStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Weight","type":"number","description":"canary weight the proxies apply (percent)","jsonPath":".status.weight"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".status.step"}"#,
    printcolumn = r#"{"name":"Verdict","type":"string","jsonPath":".status.verdict"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CanaryGateSpec {
    /// The gated service and port: the route WasmPlugin runs on the callers' outbound requests
    /// to this port.
    pub service: GatedService,
    /// The calling workloads whose sidecars split the traffic (and serve the snapshots).
    pub workload: Workload,
    /// The stable version: a subset of the DestinationRule (route kind VirtualService), or the
    /// stable backend Service (route kind HTTPRoute, one Service per version).
    pub stable: String,
    /// The canary version, as `stable`. A change of it starts a new rollout.
    pub canary: String,
    /// The user's route object, checked for the label-header match to the canary.
    pub route: RouteRef,
    /// Steps, interval and health checks: the fields of gate-agent's rollout spec.
    pub analysis: Analysis,
    /// The secret part of the label the filter writes (`<canary>.<labelToken>`), 16-128 of
    /// A-Z a-z 0-9 _ -; the route must match exactly that label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_token: Option<String>,
    /// Keep each user on one version (a header or a cookie names the user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// Requests with this header and value always go to the canary (for testers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dark_launch: Option<DarkLaunch>,
    /// Changing this (any text, usually a timestamp) starts the rollout again from its first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<String>,
    /// Where the route filter runs: the callers' sidecars (the default) or the gated Service's
    /// ambient waypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
}

/// Where the route filter runs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// `sidecar` (the callers' sidecars, selected by `spec.workload.selector`) or `waypoint` (the
    /// Service's Istio ambient waypoint, attached by `targetRefs` to the Service).
    #[serde(default)]
    pub mode: AttachmentMode,
    /// With `waypoint`: the waypoint's Gateway (in the gate's namespace). Without it, the
    /// Service's `istio.io/use-waypoint` label names it, or else its namespace's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AttachmentMode {
    #[default]
    Sidecar,
    Waypoint,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatedService {
    /// The Service's name (a host of the route object).
    pub name: String,
    pub port: u16,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Labels of the calling pods (the WasmPlugins' `selector.matchLabels`).
    pub selector: BTreeMap<String, String>,
    /// The port of the snapshot listener on those pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_port: Option<u16>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteRef {
    /// `VirtualService` (Istio, `networking.istio.io`; the default) or `HTTPRoute` (Gateway API,
    /// `gateway.networking.k8s.io`), in the gate's namespace.
    #[serde(default = "virtual_service")]
    pub kind: String,
    pub name: String,
}

/// `spec.route.kind` of a Gateway API HTTPRoute.
pub const HTTP_ROUTE: &str = "HTTPRoute";
/// `spec.route.kind` of an Istio VirtualService (the default).
pub const VIRTUAL_SERVICE: &str = "VirtualService";

fn virtual_service() -> String {
    VIRTUAL_SERVICE.into()
}

/// gate-agent's rollout spec fields (docs/agent.md), Flagger's names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// How often a check counts, and the least time on a step (`30s`, `1m`, `1m30s`).
    pub interval: String,
    /// Failed checks before rollback (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    /// Equal steps up to `maxWeight` (percent); or give `stepWeights`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight: Option<f64>,
    /// The canary weights in percent, ascending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weights: Option<Vec<f64>>,
    /// The highest canary weight before promotion (percent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<f64>,
    /// Canary requests needed on each step before it may advance (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// False-alarm level of the sequential tests (default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Without it the rollout holds while there is too little traffic to judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_data: Option<NoData>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<GateMetric>,
    /// The promotion gate: advance and promote only on evidence that the canary is not worse than
    /// the stable by more than these margins. On by default, with the rollout spec's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<GatePromotion>,
}

/// The rollout spec's `promotion` (docs/agent.md), the same fields and defaults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatePromotion {
    /// Hold each step until the evidence shows the canary within the margins (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_evidence: Option<bool>,
    /// Failures may be up to `max(ratio × stable, stable + absolute)` (defaults 2 and 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_margin: Option<GateErrorMargin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_margin: Option<GateLatencyMargin>,
    /// Roll back after waiting this long for evidence on a step (`2h`); no limit by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct GateErrorMargin {
    /// Times the stable's failure rate, at least 1 (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Percentage points above the stable's failure rate, in [0, 100) (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateLatencyMargin {
    /// How much higher the canary's p99 may be than the stable's: `20%` or `20`, in (0, 100].
    #[schemars(schema_with = "int_or_string")]
    pub p99_increase: PercentText,
}

/// A percentage written `20%` (a string) or `20` (a number).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum PercentText {
    Number(f64),
    Text(String),
}

fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-int-or-string": true })
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct NoData {
    /// Roll back after this long without judgeable data (`5m`).
    pub fail: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateMetric {
    /// `request-success-rate` (min, percent) or `request-duration` (max, ms, p99).
    pub name: String,
    pub threshold_range: ThresholdRange,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ThresholdRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// Where the user's identity is read: exactly one of the two.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Sticky {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DarkLaunch {
    pub header: String,
    pub value: String,
    /// Whether dark-launch requests still reach the canary while a kill order holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub during_kill: Option<bool>,
}

/// What the controller reports; `kubectl get canarygates` shows phase, weight, step and verdict.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryGateStatus {
    /// `initializing`, `progressing`, `paused`, `promoting`, `succeeded`, `rolled_back`; or
    /// `pending` while the rollout cannot start (see the conditions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The canary weight the proxies apply (percent): the durable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Where the rollout wants the canary (above `weight` while a write is failing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_weight: Option<f64>,
    /// `2/5`: the step and how many there are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_checks: Option<u32>,
    /// The latest verdict: `pass`, `fail`, `no_data`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// The latest verdict's reasons, in words and numbers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxies_reporting: Option<u32>,
    /// Why the rollout is where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Promoted`, `RolledBack`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<GateCondition>,
}

/// A condition as `metav1.Condition` has it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A CEL rule (or a schema keyword) added to the derived schema at a JSON pointer below
/// `openAPIV3Schema`.
#[derive(Debug, Clone)]
pub struct AdmissionRule {
    /// `/properties/spec/properties/analysis`
    pub at: &'static str,
    pub rule: Value,
}

const ANALYSIS: &str = "/properties/spec/properties/analysis";
const SPEC: &str = "/properties/spec";

/// The rules the API server enforces at admission, each with the message the user sees. They
/// repeat the rollout spec's checks that a schema can express (the controller checks everything
/// again with gate-agent's own parser, and names the field when it refuses).
pub fn admission_rules() -> Vec<AdmissionRule> {
    let cel = |at, rule: &str, message: &str| AdmissionRule {
        at,
        rule: json!({ "x-kubernetes-validations": [{ "rule": rule, "message": message }] }),
    };
    let keyword = |at, rule| AdmissionRule { at, rule };
    let duration = "^([0-9]+(ms|s|m|h))+$";
    vec![
        keyword(
            "",
            json!({ "x-kubernetes-validations": [{
            "rule": "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63",
            "message": "metadata.name names the rollout in the filter: at most 63 of a-z, 0-9 and '-'" }] }),
        ),
        AdmissionRule {
            at: SPEC,
            rule: json!({ "x-kubernetes-validations": [
                { "rule": "self.stable != self.canary", "message": "spec.canary must differ from spec.stable" },
                { "rule": "self.route.kind != 'HTTPRoute' || [self.stable, self.canary].all(s, size(s) <= 63 && s.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$'))",
                  "message": "with spec.route.kind HTTPRoute, spec.stable and spec.canary are the backend Services' names (DNS labels)" },
            ] }),
        },
        keyword("/properties/spec/properties/service/properties/port", json!({ "minimum": 1, "maximum": 65535 })),
        keyword(
            "/properties/spec/properties/workload/properties/snapshotPort",
            json!({ "minimum": 1, "maximum": 65535 }),
        ),
        keyword("/properties/spec/properties/workload/properties/selector", json!({ "minProperties": 1 })),
        keyword("/properties/spec/properties/route/properties/kind", json!({ "enum": [VIRTUAL_SERVICE, HTTP_ROUTE] })),
        keyword("/properties/spec/properties/labelToken", json!({ "pattern": "^[A-Za-z0-9_-]{16,128}$" })),
        keyword("/properties/spec/properties/analysis/properties/interval", json!({ "pattern": duration })),
        keyword(
            "/properties/spec/properties/analysis/properties/noData/properties/fail",
            json!({ "pattern": duration }),
        ),
        keyword(
            "/properties/spec/properties/analysis/properties/metrics/items/properties/interval",
            json!({ "pattern": duration }),
        ),
        keyword(
            "/properties/spec/properties/analysis/properties/metrics/items/properties/name",
            json!({ "enum": ["request-success-rate", "request-duration"] }),
        ),
        keyword("/properties/spec/properties/analysis/properties/metrics", json!({ "maxItems": 2 })),
        keyword(
            "/properties/spec/properties/analysis/properties/stepWeights",
            json!({ "maxItems": 100, "minItems": 1 }),
        ),
        keyword("/properties/spec/properties/analysis/properties/threshold", json!({ "minimum": 1 })),
        keyword(
            "/properties/spec/properties/analysis/properties/alpha",
            json!({ "exclusiveMinimum": true, "minimum": 0, "maximum": 0.5 }),
        ),
        AdmissionRule {
            at: ANALYSIS,
            rule: json!({ "x-kubernetes-validations": [
                { "rule": "has(self.stepWeight) != has(self.stepWeights)",
                  "message": "give exactly one of spec.analysis.stepWeight and spec.analysis.stepWeights" },
                { "rule": "!has(self.stepWeights) || self.stepWeights.all(w, w > 0.0 && w <= 100.0)",
                  "message": "spec.analysis.stepWeights must each be above 0 and at most 100 (percent)" },
                { "rule": "!has(self.stepWeights) || (self.stepWeights.isSorted() && self.stepWeights.all(w, self.stepWeights.exists_one(x, x == w)))",
                  "message": "spec.analysis.stepWeights must be strictly ascending" },
                { "rule": "!has(self.maxWeight) || (self.maxWeight > 0.0 && self.maxWeight <= 100.0)",
                  "message": "spec.analysis.maxWeight must be above 0 and at most 100 (percent)" },
                { "rule": "!has(self.stepWeights) || !has(self.maxWeight) || self.stepWeights.all(w, w <= self.maxWeight)",
                  "message": "spec.analysis.stepWeights must not go above spec.analysis.maxWeight" },
                { "rule": "!has(self.stepWeight) || (has(self.maxWeight) && self.stepWeight > 0.0 && self.stepWeight <= self.maxWeight)",
                  "message": "spec.analysis.stepWeight needs spec.analysis.maxWeight, and must be above 0 and at most it" },
            ] }),
        },
        cel(
            "/properties/spec/properties/analysis/properties/metrics/items",
            "self.name == 'request-success-rate' ? (has(self.thresholdRange.min) && !has(self.thresholdRange.max) && self.thresholdRange.min > 0.0 && self.thresholdRange.min < 100.0) : (has(self.thresholdRange.max) && !has(self.thresholdRange.min) && self.thresholdRange.max > 0.0)",
            "request-success-rate takes only thresholdRange.min, in (0, 100) percent; request-duration only thresholdRange.max, above 0 ms",
        ),
        AdmissionRule {
            at: "/properties/spec/properties/analysis/properties/promotion/properties/errorMargin",
            rule: json!({ "x-kubernetes-validations": [
                { "rule": "!has(self.ratio) || (self.ratio >= 1.0 && self.ratio <= 1000.0)",
                  "message": "spec.analysis.promotion.errorMargin.ratio must be at least 1 and at most 1000 (times the stable's failure rate)" },
                { "rule": "!has(self.absolute) || (self.absolute >= 0.0 && self.absolute < 100.0)",
                  "message": "spec.analysis.promotion.errorMargin.absolute must be at least 0 and below 100 (percentage points)" },
                { "rule": "!has(self.ratio) || !has(self.absolute) || self.ratio > 1.0 || self.absolute > 0.0",
                  "message": "spec.analysis.promotion.errorMargin: ratio 1 with absolute 0 leaves no margin, so even a canary as good as the stable could never be promoted" },
            ] }),
        },
        cel(
            "/properties/spec/properties/analysis/properties/promotion/properties/latencyMargin/properties/p99Increase",
            "type(self) == int ? (self > 0 && self <= 100) : (self.matches('^ *(100([.]0*)?|[0-9]{1,2}([.][0-9]*)?) *%?$') && !self.matches('^ *0*([.]0*)? *%?$'))",
            "spec.analysis.promotion.latencyMargin.p99Increase must be above 0% and at most 100% (20% or 20)",
        ),
        keyword(
            "/properties/spec/properties/analysis/properties/promotion/properties/maxWait",
            json!({ "pattern": duration }),
        ),
        cel(
            "/properties/spec/properties/attachment",
            "!has(self.waypoint) || (has(self.mode) && self.mode == 'waypoint')",
            "spec.attachment.waypoint names a waypoint: it needs spec.attachment.mode: waypoint",
        ),
        cel(
            "/properties/spec/properties/sticky",
            "has(self.header) != has(self.cookie)",
            "spec.sticky takes exactly one of header and cookie",
        ),
    ]
}

/// The CRD as shipped: kube's derived schema with [`admission_rules`] merged in.
pub fn crd() -> Result<CustomResourceDefinition, String> {
    use kube::CustomResourceExt;
    let mut value = serde_json::to_value(CanaryGate::crd()).map_err(|e| e.to_string())?;
    let schema =
        value.pointer_mut("/spec/versions/0/schema/openAPIV3Schema").ok_or("the derived CRD has no openAPIV3Schema")?;
    known_formats(schema);
    for AdmissionRule { at, rule } in admission_rules() {
        let node = schema.pointer_mut(at).ok_or_else(|| format!("no schema node at {at}"))?;
        let (Some(node), Some(rule)) = (node.as_object_mut(), rule.as_object()) else {
            return Err(format!("the schema node at {at} is not an object"));
        };
        for (k, v) in rule {
            node.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// schemars writes `uint32`/`uint64`, which the API server does not know (kubectl warns about
/// them on every apply); the unsigned range is already in `minimum: 0`.
fn known_formats(node: &mut Value) {
    match node {
        Value::Object(map) => {
            match map.get("format").and_then(Value::as_str) {
                Some("uint32" | "uint16") => {
                    map.insert("format".into(), json!("int32"));
                }
                Some("uint64") => {
                    map.insert("format".into(), json!("int64"));
                }
                _ => {}
            }
            map.values_mut().for_each(known_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(known_formats),
        _ => {}
    }
}

/// [`crd`] as the YAML document shipped in `deploy/crd/canarygate.yaml`.
pub fn crd_yaml() -> Result<String, String> {
    let crd = crd()?;
    let body = serde_yaml_ng::to_string(&crd).map_err(|e| e.to_string())?;
    Ok(format!(
        "# Generated by `gate-agent crd` from gate-agent/src/gate/crd.rs; do not edit by hand\n\
         # (gate-agent/tests/gate_crd.rs checks that this file is that output).\n{body}"
    ))
}
