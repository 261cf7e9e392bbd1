//! The filter's plugin configuration: parsing and validation.
//!
//! One JSON document per filter instance. The `role` field picks what the instance does:
//! `"route"` (the default) splits and labels traffic and counts outcomes; `"snapshot"` serves the
//! counters to gate-agent on a dedicated loopback listener. Unknown fields, wrong types and
//! out-of-range values are errors that name the field, so a typo never silently becomes a default.
//! gate-agent builds the same [`RouteConfig`] and serialises it, so the two sides cannot disagree.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kill::DEFAULT_KILL_PATH;
use crate::record::{MAX_REASON_BYTES, RolloutRecord};
use crate::weight::Weight;

/// The configuration format this build understands.
pub const CONFIG_VERSION: u32 = 1;
pub const DEFAULT_LABEL_HEADER: &str = "x-canary-subset";
pub const DEFAULT_AFFINITY_MAX_AGE_S: u32 = 86_400;
/// gRPC status codes that count as failures by default: the server-side errors (UNKNOWN,
/// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS). Client errors such as
/// NOT_FOUND or INVALID_ARGUMENT are the gRPC form of a 4xx and do not.
pub const DEFAULT_GRPC_FAILURES: [u8; 6] = [2, 4, 12, 13, 14, 15];
/// Responses of this content type are streams; their latency says nothing about an SLO.
pub const DEFAULT_LATENCY_EXCLUDED_CONTENT_TYPES: [&str; 1] = ["text/event-stream"];
pub const DEFAULT_SNAPSHOT_PATH: &str = "/canary-gate/v1/snapshot";

/// A configuration that was rejected: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path of the offending field (`sticky.cookie`), or `.` for the document itself.
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(field: &str, problem: impl Into<String>) -> Self {
        ConfigError { field: field.to_owned(), problem: problem.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "canary-gate config field `{}`: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// A parsed, validated plugin configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginConfig {
    Route(Box<RouteConfig>),
    SnapshotEndpoint(SnapshotEndpointConfig),
}

/// How the traffic filter splits, labels and counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Always [`CONFIG_VERSION`].
    pub version: u32,
    /// Names the rollout: keys its counters and salts the sticky hash.
    pub rollout: SubsetName,
    /// Subset that serves when nothing else applies (the route table's default route).
    pub stable: SubsetName,
    pub canary: SubsetName,
    /// Percent of requests for the canary; the stable subset gets the rest. 0 when absent: the
    /// shipped WasmPlugin leaves it out, so that re-applying it never resets gate-agent's weight.
    #[serde(default)]
    pub canary_weight: Weight,
    /// Header the filter writes with the chosen subset name; the route table matches on it.
    #[serde(default = "default_label_header")]
    pub label_header: HeaderName,
    /// A secret the label carries (`<subset>.<token>`), so that where nothing strips a client's
    /// label before routing (Istio sidecars), a client cannot name the canary: the route object
    /// matches `v2.<token>`, which only the filter's configuration knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_token: Option<LabelToken>,
    /// Identifies this rollout of `canary` (a release id, a generation); a kill order holds only
    /// the rollout it was made for. Defaults to the canary subset name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<SubsetName>,
    /// Requests with this header and value always go to the canary. Off unless configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dark_launch: Option<DarkLaunch>,
    /// Where a user's identity is read for sticky routing; without one, requests split at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyKey>,
    /// Salt for the sticky hash; defaults to `<rollout>/<canary>`, so each release draws a new
    /// first cohort. Set it to keep the same cohort across releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_salt: Option<String>,
    /// A cookie the filter sets on responses to requests that carry no sticky key, and honours
    /// afterwards as one, so an anonymous browser session stays on one version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_cookie: Option<AffinityCookie>,
    /// Which responses count as failures.
    #[serde(default)]
    pub failure: FailurePolicy,
    /// Which requests are kept out of the latency histogram.
    #[serde(default)]
    pub latency: LatencyPolicy,
    /// How the filter tells which subset really served a request, from the upstream cluster.
    #[serde(default)]
    pub served_by: ServedBy,
    /// Bounds the weight must keep for the filter to accept this configuration (see
    /// [`crate::guard`]); gate-agent writes them from the rollout spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::guard::Guard>,
    /// Set by whoever writes the config (gate-agent increments it) and echoed in snapshots, so a
    /// writer can see when a proxy applies its change.
    #[serde(default)]
    pub revision: u64,
    /// gate-agent's durable record of the rollout (phase, failed checks). The filter validates it
    /// and routes the same with or without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_state: Option<RolloutRecord>,
    /// Name the per-subset metrics `<base>.rollout.<rollout>.subset.<subset>` (see
    /// [`crate::gauges`]): set for waypoints, where one Envoy runs several gates' filters and the
    /// agent reads the counters from Envoy's stats. Off by default (the names dashboards know).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollout_in_metric_names: bool,
}

/// The dark-launch match: an exact header value that forces the canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DarkLaunch {
    pub header: HeaderName,
    /// The value to match; at least 16 bytes, so it works as a shared secret, not a guessable flag.
    pub value: HeaderValue,
    /// Whether dark-launch requests still reach a canary that a kill order holds or that is
    /// rolled back. Off by default: a rollback stops every request to the canary.
    #[serde(default)]
    pub during_kill: bool,
}

/// The minimum length of a dark-launch value.
pub const MIN_DARK_LAUNCH_VALUE_BYTES: usize = 16;

/// The affinity cookie (see [`RouteConfig::affinity_cookie`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffinityCookie {
    pub name: CookieName,
    /// `Max-Age` in seconds.
    #[serde(default = "default_affinity_max_age")]
    pub max_age_s: u32,
    /// Adds `Secure` (set it when clients reach the service over HTTPS).
    #[serde(default)]
    pub secure: bool,
}

impl AffinityCookie {
    /// The `Set-Cookie` value that gives a session the key `value`.
    pub fn set_cookie(&self, value: &str) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{}={value}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax{secure}", self.name, self.max_age_s)
    }
}

/// Which requests are kept out of the latency histogram (they are still counted as successes
/// or failures). Upgraded connections (`101`) always are: their "latency" is the connection's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyPolicy {
    /// Response content types (compared up to any `;` parameter, case-insensitively) that are
    /// streams, such as server-sent events or streaming gRPC.
    #[serde(default = "default_latency_excluded")]
    pub exclude_content_types: Vec<String>,
}

impl Default for LatencyPolicy {
    fn default() -> Self {
        LatencyPolicy { exclude_content_types: default_latency_excluded() }
    }
}

impl LatencyPolicy {
    /// Whether a response with this status and content type is left out of latency.
    pub fn excludes(&self, status: Option<u16>, content_type: Option<&[u8]>) -> bool {
        if status == Some(101) {
            return true;
        }
        let Some(ct) = content_type else { return false };
        let media = ct.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
        self.exclude_content_types.iter().any(|x| x.as_bytes().eq_ignore_ascii_case(media))
    }
}

/// How the upstream cluster that served a request names its subset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ServedBy {
    /// Istio's cluster names (`outbound|8080|v2|reviews.prod.svc.cluster.local`) carry the
    /// subset; a cluster named exactly like a subset is that subset. Any other cluster is not
    /// checked.
    #[default]
    Auto,
    /// The exact cluster names of the two subsets; any other cluster is a mismatch.
    Clusters { stable: String, canary: String },
}

/// Where the sticky user key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StickyKey {
    Header(HeaderName),
    Cookie(CookieName),
}

/// Which completed requests count as failures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailurePolicy {
    /// Status classes (`"5xx"`) or exact codes (`429`) that are failures.
    #[serde(default = "default_failure_statuses")]
    pub statuses: Vec<StatusMatch>,
    /// A request that ended with no response status (upstream reset, connect failure before any
    /// status, stream timeout), or whose response was cut off or timed out after its status
    /// (Envoy's response flags), is a failure.
    #[serde(default = "default_true")]
    pub resets: bool,
    /// gRPC status codes (1-16) that are failures, wherever the status came: trailers-only,
    /// headers or trailers.
    #[serde(default = "default_grpc_failures")]
    pub grpc_statuses: Vec<u8>,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy { statuses: default_failure_statuses(), resets: true, grpc_statuses: default_grpc_failures() }
    }
}

/// One failure status rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub enum StatusMatch {
    /// `"5xx"`: every code from 500 to 599.
    Class(u8),
    Code(u16),
}

impl StatusMatch {
    pub fn matches(self, code: u16) -> bool {
        match self {
            StatusMatch::Class(c) => code / 100 == u16::from(c),
            StatusMatch::Code(c) => code == c,
        }
    }
}

impl TryFrom<Value> for StatusMatch {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        match &v {
            Value::Number(n) => match n.as_u64() {
                Some(c @ 100..=599) => Ok(StatusMatch::Code(c as u16)),
                _ => Err(format!("status code {n} is outside 100..=599")),
            },
            Value::String(s) => {
                let b = s.as_bytes();
                match b {
                    [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => Ok(StatusMatch::Class(d - b'0')),
                    _ => Err(format!("status class {s:?} is not one of \"1xx\"..\"5xx\"")),
                }
            }
            other => Err(format!("expected a status code (429) or class (\"5xx\"), got {other}")),
        }
    }
}

impl From<StatusMatch> for Value {
    fn from(m: StatusMatch) -> Value {
        match m {
            StatusMatch::Class(c) => Value::String(format!("{c}xx")),
            StatusMatch::Code(c) => Value::from(c),
        }
    }
}

/// The snapshot endpoint's configuration (the `"snapshot"` role).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotEndpointConfig {
    pub version: u32,
    /// Request path that returns the snapshot; every other path gets 404.
    #[serde(default = "default_snapshot_path")]
    pub path: String,
    /// Request path that takes a kill order (`POST`, see [`crate::kill`]).
    #[serde(default = "default_kill_path")]
    pub kill_path: String,
}

fn default_kill_path() -> String {
    DEFAULT_KILL_PATH.to_owned()
}
fn default_label_header() -> HeaderName {
    HeaderName(DEFAULT_LABEL_HEADER.to_owned())
}
fn default_affinity_max_age() -> u32 {
    DEFAULT_AFFINITY_MAX_AGE_S
}
fn default_grpc_failures() -> Vec<u8> {
    DEFAULT_GRPC_FAILURES.to_vec()
}
fn default_latency_excluded() -> Vec<String> {
    DEFAULT_LATENCY_EXCLUDED_CONTENT_TYPES.iter().map(|s| (*s).to_owned()).collect()
}
fn default_failure_statuses() -> Vec<StatusMatch> {
    vec![StatusMatch::Class(5)]
}
fn default_true() -> bool {
    true
}
fn default_snapshot_path() -> String {
    DEFAULT_SNAPSHOT_PATH.to_owned()
}

macro_rules! validated_string {
    ($(#[$m:meta])* $name:ident, $check:path) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                $check(s).map($name)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = String;
            fn try_from(s: &str) -> Result<Self, String> {
                $check(s.to_owned()).map($name)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

validated_string!(
    /// A subset or rollout name: a DNS-1123 label, as Istio requires of DestinationRule subsets.
    /// It appears in header values, shared-data keys and metric tags, so nothing else is allowed.
    SubsetName,
    check_dns_label
);
validated_string!(
    /// An HTTP header name, lower-cased (header names are case-insensitive; HTTP/2 sends lower case).
    HeaderName,
    check_header_name
);
validated_string!(
    /// A header value to match exactly: visible ASCII, no surrounding white space.
    HeaderValue,
    check_header_value
);
validated_string!(
    /// A cookie name (an RFC 6265 token).
    CookieName,
    check_cookie_name
);
validated_string!(
    /// The label's secret: 16-128 of `A-Z a-z 0-9 _ -`, so it is safe in a header value, a
    /// route match and a shared-data key.
    LabelToken,
    check_label_token
);

fn check_label_token(s: String) -> Result<String, String> {
    let ok = (16..=128).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    if ok { Ok(s) } else { Err("must be 16-128 of A-Z, a-z, 0-9, '_' and '-' (the value is not shown)".to_owned()) }
}

fn check_dns_label(s: String) -> Result<String, String> {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| alnum(c) || *c == b'-')
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum);
    if ok {
        Ok(s)
    } else {
        Err(format!(
            "{s:?} is not a DNS-1123 label (1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit)"
        ))
    }
}

fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn check_header_name(s: String) -> Result<String, String> {
    if s.is_empty() || s.len() > 128 || !s.bytes().all(is_token_char) {
        return Err(format!("{s:?} is not an HTTP header name (1-128 token characters; no ':' pseudo-headers)"));
    }
    Ok(s.to_ascii_lowercase())
}

fn check_header_value(s: String) -> Result<String, String> {
    let visible = |c: u8| (0x21..=0x7e).contains(&c);
    let ok = !s.is_empty()
        && s.len() <= 256
        && s.bytes().all(|c| visible(c) || c == b' ')
        && !s.starts_with(' ')
        && !s.ends_with(' ');
    if ok { Ok(s) } else { Err(format!("{s:?} is not a header value to match (1-256 visible ASCII characters)")) }
}

fn check_cookie_name(s: String) -> Result<String, String> {
    if s.is_empty() || s.len() > 128 || !s.bytes().all(is_token_char) {
        return Err(format!("{s:?} is not a cookie name (1-128 token characters)"));
    }
    Ok(s)
}

impl RouteConfig {
    /// The salt for sticky hashing: explicit, or `<rollout>/<canary>` (a new cohort per release).
    pub fn salt(&self) -> std::borrow::Cow<'_, str> {
        match &self.sticky_salt {
            Some(s) => std::borrow::Cow::Borrowed(s.as_str()),
            None => std::borrow::Cow::Owned(format!("{}/{}", self.rollout, self.canary)),
        }
    }

    /// The rollout a kill order must name to hold this configuration.
    pub fn effective_rollout_id(&self) -> &SubsetName {
        self.rollout_id.as_ref().unwrap_or(&self.canary)
    }

    /// The label value the filter writes for `subset`: the name, or `<name>.<token>`.
    pub fn label_value(&self, subset: &SubsetName) -> String {
        match &self.label_token {
            Some(t) => format!("{subset}.{t}"),
            None => subset.to_string(),
        }
    }

    /// Cross-field rules that serde cannot express.
    fn validate(&self) -> Result<(), ConfigError> {
        check_version(self.version)?;
        if self.stable == self.canary {
            return Err(ConfigError::new("canary", format!("is the same subset as `stable` ({})", self.stable)));
        }
        if let Some(dl) = &self.dark_launch
            && dl.header == self.label_header
        {
            return Err(ConfigError::new(
                "dark_launch.header",
                format!("must differ from `label_header` ({})", self.label_header),
            ));
        }
        if let Some(dl) = &self.dark_launch
            && dl.value.as_str().len() < MIN_DARK_LAUNCH_VALUE_BYTES
        {
            return Err(ConfigError::new(
                "dark_launch.value",
                format!(
                    "is {} bytes; use a secret of at least {MIN_DARK_LAUNCH_VALUE_BYTES} (any client that knows it reaches the canary)",
                    dl.value.as_str().len()
                ),
            ));
        }
        if let (Some(StickyKey::Cookie(s)), Some(a)) = (&self.sticky, &self.affinity_cookie)
            && *s == a.name
        {
            return Err(ConfigError::new("affinity_cookie.name", format!("must differ from `sticky.cookie` ({s})")));
        }
        if let Some(a) = &self.affinity_cookie
            && a.max_age_s == 0
        {
            return Err(ConfigError::new("affinity_cookie.max_age_s", "must be at least 1"));
        }
        if let Some((i, code)) = self.failure.grpc_statuses.iter().enumerate().find(|(_, c)| !(1..=16).contains(*c)) {
            return Err(ConfigError::new(
                &format!("failure.grpc_statuses[{i}]"),
                format!("{code} is not a gRPC error code (1-16)"),
            ));
        }
        if let ServedBy::Clusters { stable, canary } = &self.served_by {
            for (field, name) in [("served_by.clusters.stable", stable), ("served_by.clusters.canary", canary)] {
                if name.is_empty() || name.len() > 256 {
                    return Err(ConfigError::new(field, "must be a cluster name of 1-256 bytes"));
                }
            }
            if stable == canary {
                return Err(ConfigError::new(
                    "served_by.clusters.canary",
                    format!("is the same cluster as `stable` ({stable})"),
                ));
            }
        }
        if let Some(g) = &self.guard {
            g.validate()?;
        }
        if let Some(StickyKey::Header(h)) = &self.sticky
            && *h == self.label_header
        {
            return Err(ConfigError::new(
                "sticky.header",
                format!("must differ from `label_header` ({}): clients could pick their subset", self.label_header),
            ));
        }
        if let Some(salt) = &self.sticky_salt
            && (salt.is_empty() || salt.len() > 256)
        {
            return Err(ConfigError::new("sticky_salt", "must be 1-256 bytes"));
        }
        if let Some(state) = &self.rollout_state
            && state.reason.len() > MAX_REASON_BYTES
        {
            return Err(ConfigError::new("rollout_state.reason", format!("is longer than {MAX_REASON_BYTES} bytes")));
        }
        if self.failure.statuses.is_empty() && !self.failure.resets {
            return Err(ConfigError::new(
                "failure",
                "counts nothing as a failure; the gate could never see a bad canary",
            ));
        }
        Ok(())
    }

    /// The JSON gate-agent writes (and `parse` reads back to the same value).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

fn check_version(v: u32) -> Result<(), ConfigError> {
    if v == CONFIG_VERSION {
        Ok(())
    } else {
        Err(ConfigError::new("version", format!("{v} is not supported (this filter reads version {CONFIG_VERSION})")))
    }
}

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        // An unknown field named "" has the empty path; it is at the document itself.
        let path = Some(e.path().to_string()).filter(|p| !p.is_empty()).unwrap_or_else(|| ".".to_owned());
        ConfigError { field: path, problem: e.into_inner().to_string() }
    })
}

/// Parses and validates a plugin configuration. Never panics, whatever the bytes.
pub fn parse(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
    let mut value: Value =
        serde_json::from_slice(bytes).map_err(|e| ConfigError::new(".", format!("not valid JSON ({e})")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(ConfigError::new(".", "must be a JSON object"));
    };
    let role = match object.remove("role") {
        None => "route".to_owned(),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(ConfigError::new("role", format!("expected \"route\" or \"snapshot\", got {other}")));
        }
    };
    if !object.contains_key("version") {
        return Err(ConfigError::new("version", format!("is missing (write \"version\": {CONFIG_VERSION})")));
    }
    match role.as_str() {
        "route" => {
            let cfg: RouteConfig = typed(value)?;
            cfg.validate()?;
            Ok(PluginConfig::Route(Box::new(cfg)))
        }
        "snapshot" => {
            let cfg: SnapshotEndpointConfig = typed(value)?;
            check_version(cfg.version)?;
            for (field, path) in [("path", &cfg.path), ("kill_path", &cfg.kill_path)] {
                if !path.starts_with('/') || path.len() > 256 || path.contains('?') {
                    return Err(ConfigError::new(
                        field,
                        format!("{path:?} must be an absolute path of at most 256 bytes, without a query"),
                    ));
                }
            }
            if cfg.path == cfg.kill_path {
                return Err(ConfigError::new("kill_path", "must differ from `path`"));
            }
            Ok(PluginConfig::SnapshotEndpoint(cfg))
        }
        other => Err(ConfigError::new("role", format!("{other:?} is not \"route\" or \"snapshot\""))),
    }
}

/// Parses a configuration that must have the `route` role (what gate-agent reads and writes).
pub fn parse_route(bytes: &[u8]) -> Result<RouteConfig, ConfigError> {
    match parse(bytes)? {
        PluginConfig::Route(r) => Ok(*r),
        PluginConfig::SnapshotEndpoint(_) => {
            Err(ConfigError::new("role", "a route configuration was expected, not \"snapshot\""))
        }
    }
}

/// Rollout `r` (v1 stable, v2 canary at 10%) with extra JSON fields (`,"sticky":{...}`), for the
/// crate's unit tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_route(extra: &str) -> RouteConfig {
    parse_route(
        format!(r#"{{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":10{extra}}}"#).as_bytes(),
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> ConfigError {
        parse(json.as_bytes()).unwrap_err()
    }

    const MINIMAL: &str = r#"{"version":1,"rollout":"payment-svc","stable":"v1","canary":"v2","canary_weight":10}"#;

    #[test]
    fn minimal_route_gets_documented_defaults() {
        let PluginConfig::Route(r) = parse(MINIMAL.as_bytes()).unwrap() else { panic!("not a route") };
        assert_eq!(r.canary_weight.basis_points(), 1000);
        assert_eq!(r.label_header.as_str(), DEFAULT_LABEL_HEADER);
        assert_eq!(r.dark_launch, None, "dark launch is opt-in");
        assert_eq!(
            r.failure,
            FailurePolicy {
                statuses: vec![StatusMatch::Class(5)],
                resets: true,
                grpc_statuses: vec![2, 4, 12, 13, 14, 15]
            }
        );
        assert_eq!(r.salt(), "payment-svc/v2");
        assert_eq!(r.effective_rollout_id().as_str(), "v2");
        assert_eq!(r.served_by, ServedBy::Auto);
        assert_eq!(r.latency.exclude_content_types, vec!["text/event-stream".to_owned()]);
        assert!(r.sticky.is_none());
    }

    #[test]
    fn the_agents_rollout_record_round_trips_and_is_checked() {
        let json = MINIMAL.replace(
            "}",
            r#","rollout_state":{"phase":"rolled_back","failed_checks":2,"reason":"errors","at_unix_ms":5}}"#,
        );
        let r = parse_route(json.as_bytes()).unwrap();
        let state = r.rollout_state.clone().unwrap();
        assert_eq!((state.phase, state.failed_checks), (crate::RolloutPhase::RolledBack, 2));
        assert_eq!(parse_route(r.to_json().unwrap().as_bytes()).unwrap(), r);
        let e = err(&MINIMAL.replace("}", r#","rollout_state":{"phase":"rolledback"}}"#));
        assert_eq!(e.field, "rollout_state.phase");
        let long = "x".repeat(MAX_REASON_BYTES + 1);
        let e = err(&MINIMAL.replace("}", &format!(r#","rollout_state":{{"phase":"paused","reason":"{long}"}}}}"#)));
        assert_eq!(e.field, "rollout_state.reason");
    }

    #[test]
    fn new_fields_are_checked_and_name_the_field() {
        let with = |extra: &str| MINIMAL.replace("}", &format!(",{extra}}}"));
        assert_eq!(err(&with(r#""dark_launch":{"header":"x-canary","value":"true"}"#)).field, "dark_launch.value");
        assert_eq!(err(&with(r#""label_token":"short""#)).field, "label_token");
        assert_eq!(err(&with(r#""label_token":"has space 0123456789""#)).field, "label_token");
        assert_eq!(err(&with(r#""failure":{"grpc_statuses":[14,17]}"#)).field, "failure.grpc_statuses[1]");
        assert_eq!(
            err(&with(r#""served_by":{"clusters":{"stable":"a","canary":"a"}}"#)).field,
            "served_by.clusters.canary"
        );
        assert_eq!(err(&with(r#""served_by":"istio""#)).field, "served_by");
        assert_eq!(err(&with(r#""affinity_cookie":{"name":"sid","max_age_s":0}"#)).field, "affinity_cookie.max_age_s");
        assert_eq!(
            err(&with(r#""sticky":{"cookie":"sid"},"affinity_cookie":{"name":"sid"}"#)).field,
            "affinity_cookie.name"
        );
        assert_eq!(err(&with(r#""rollout_id":"Release 1""#)).field, "rollout_id");
        let r =
            parse_route(with(r#""label_token":"s3cr3t-t0ken-0123456789","rollout_id":"rel-7""#).as_bytes()).unwrap();
        assert_eq!(r.label_value(&r.canary), "v2.s3cr3t-t0ken-0123456789");
        assert_eq!(r.effective_rollout_id().as_str(), "rel-7");
        assert_eq!(parse_route(r.to_json().unwrap().as_bytes()).unwrap(), r);
    }

    #[test]
    fn the_affinity_cookie_has_documented_attributes() {
        let r = parse_route(MINIMAL.replace("}", r#","affinity_cookie":{"name":"cg"}}"#).as_bytes()).unwrap();
        let c = r.affinity_cookie.unwrap();
        assert_eq!(c.set_cookie("0011"), "cg=0011; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax");
        let secure = AffinityCookie { secure: true, max_age_s: 60, ..c };
        assert_eq!(secure.set_cookie("ab"), "cg=ab; Max-Age=60; Path=/; HttpOnly; SameSite=Lax; Secure");
    }

    #[test]
    fn latency_leaves_out_upgrades_and_configured_streams() {
        let p = LatencyPolicy::default();
        assert!(p.excludes(Some(101), None));
        assert!(p.excludes(Some(200), Some(b"text/event-stream; charset=utf-8")));
        assert!(p.excludes(Some(200), Some(b"Text/Event-Stream")));
        assert!(!p.excludes(Some(200), Some(b"application/json")));
        assert!(!p.excludes(Some(200), None));
        assert!(!p.excludes(None, Some(&[0xff])));
    }

    #[test]
    fn snapshot_paths_are_checked() {
        let e = err(r#"{"role":"snapshot","version":1,"kill_path":"/canary-gate/v1/snapshot"}"#);
        assert_eq!(e.field, "kill_path");
        let e = err(r#"{"role":"snapshot","version":1,"path":"/snap?x=1"}"#);
        assert_eq!(e.field, "path");
    }

    #[test]
    fn route_round_trips_through_json() {
        let json = r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":12.5,
            "sticky":{"cookie":"session"},"dark_launch":null,"failure":{"statuses":["5xx",429],"resets":false},"revision":7}"#;
        let r = parse_route(json.as_bytes()).unwrap();
        let again = parse_route(r.to_json().unwrap().as_bytes()).unwrap();
        assert_eq!(r, again);
        assert!(again.dark_launch.is_none());
        assert_eq!(again.revision, 7);
    }

    #[test]
    fn unknown_field_is_named() {
        let e = err(r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":10,"canary_wieght":5}"#);
        assert!(e.problem.contains("unknown field `canary_wieght`"), "{e}");
    }

    /// Found by fuzzing (fuzz/regressions/plugin_config/): an unknown field named "" was reported
    /// at the field "", which says nowhere.
    #[test]
    fn an_unknown_field_with_an_empty_name_is_reported_at_the_document() {
        let e = err(r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":10,"":"r"}"#);
        assert_eq!(e.field, ".", "{e}");
        assert!(e.problem.contains("unknown field ``"), "{e}");
    }

    #[test]
    fn nested_errors_carry_their_path() {
        let e = err(
            r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":10,"sticky":{"cookie":"a b"}}"#,
        );
        assert_eq!(e.field, "sticky.cookie");
        let e = err(
            r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":10,"failure":{"statuses":["6xx"]}}"#,
        );
        assert_eq!(e.field, "failure.statuses[0]");
    }

    #[test]
    fn weight_out_of_range_or_too_precise_is_rejected() {
        let e = err(r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":101}"#);
        assert_eq!(e.field, "canary_weight");
        assert!(e.problem.contains("outside 0..=100"), "{e}");
        let e = err(r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":1.005}"#);
        assert!(e.problem.contains("two decimals"), "{e}");
        let e = err(r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":"10"}"#);
        assert_eq!(e.field, "canary_weight");
    }

    #[test]
    fn cross_field_mistakes_are_rejected() {
        assert_eq!(err(r#"{"version":1,"rollout":"r","stable":"v1","canary":"v1","canary_weight":1}"#).field, "canary");
        let e = err(
            r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":1,"sticky":{"header":"X-Canary-Subset"}}"#,
        );
        assert_eq!(e.field, "sticky.header");
        let e = err(
            r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":1,"failure":{"statuses":[],"resets":false}}"#,
        );
        assert_eq!(e.field, "failure");
    }

    #[test]
    fn version_and_role_are_checked() {
        assert_eq!(err(r#"{"rollout":"r"}"#).field, "version");
        assert_eq!(
            err(r#"{"version":2,"rollout":"r","stable":"v1","canary":"v2","canary_weight":1}"#).field,
            "version"
        );
        assert_eq!(err(r#"{"version":1,"role":"admin"}"#).field, "role");
        assert_eq!(err("[1]").field, ".");
        assert!(err("{").problem.contains("not valid JSON"));
        assert!(err("").problem.contains("not valid JSON"));
    }

    #[test]
    fn bad_names_are_rejected() {
        let e = err(r#"{"version":1,"rollout":"r","stable":"V1","canary":"v2","canary_weight":1}"#);
        assert_eq!(e.field, "stable");
        assert!(e.problem.contains("DNS-1123"), "{e}");
        let e =
            err(r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":1,"label_header":":path"}"#);
        assert_eq!(e.field, "label_header");
    }

    #[test]
    fn header_names_are_lower_cased() {
        let r = parse_route(br#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":1,"sticky":{"header":"X-User-Id"}}"#).unwrap();
        assert_eq!(r.sticky, Some(StickyKey::Header(HeaderName::try_from("x-user-id").unwrap())));
    }

    #[test]
    fn snapshot_role_parses() {
        let c = parse(br#"{"version":1,"role":"snapshot"}"#).unwrap();
        assert_eq!(
            c,
            PluginConfig::SnapshotEndpoint(SnapshotEndpointConfig {
                version: 1,
                path: DEFAULT_SNAPSHOT_PATH.into(),
                kill_path: DEFAULT_KILL_PATH.into()
            })
        );
        assert_eq!(err(r#"{"version":1,"role":"snapshot","path":"x"}"#).field, "path");
        let e = err(r#"{"version":1,"role":"snapshot","canary_weight":3}"#);
        assert_eq!(e.field, "canary_weight");
        assert!(e.problem.contains("unknown field"), "{e}");
    }
}
