//! The counter snapshot that the filter serves and gate-agent reads.
//!
//! Counters are monotonic since `instance.started_at_unix_ms`; a reader that sees a new
//! `instance.id` (or counters going down) knows the proxy restarted and must not take the drop
//! as a negative delta, nor a quiet period as a restart.
//!
//! The snapshot travels in one of two forms. The **JSON form** ([`SNAPSHOT_FORMAT`],
//! `application/json`) spells every counter out; it is what any client gets by default. The
//! **compact form** ([`SNAPSHOT_FORMAT_COMPACT`], [`COMPACT_CONTENT_TYPE`]) is the same JSON
//! object with each subset's `counters` (and `dark_launch`) replaced by a string: base64 of the
//! filter's counter record in its format 1 ([`SubsetCounters::encode_v1`]: LEB128 varints, bucket
//! indexes delta-coded; a reader also accepts format 2, [`crate::counter_record`]). It exists for
//! the agent, which reads every proxy every tick: parsing the JSON form's ~950 histogram integers
//! per snapshot was two thirds of its instructions (bench/PROFILE.md). A client asks for it in `Accept`; a filter that predates it ignores the
//! header and answers the JSON form, so the reader picks the decoder by the answer's
//! `Content-Type` ([`Snapshot::from_body`]), never by what it asked for.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::config::{RouteConfig, SubsetName};
use crate::counters::SubsetCounters;
use crate::kill::KillRecord;
use crate::served::Misrouted;
use crate::split::Role;

/// Format tag of [`Snapshot`]; bumped on any incompatible change.
pub const SNAPSHOT_FORMAT: &str = "canary-gate.snapshot.v1";

/// Format tag of the compact form of a v1 snapshot (see the module docs). A tag of its own, so a
/// reader that takes a compact body for the JSON form (or the reverse) refuses it by its tag
/// instead of misreading it; bumped together with [`SNAPSHOT_FORMAT`] or with the counter
/// record's own format byte. A decoded compact snapshot is a v1 [`Snapshot`] (its `format` is
/// [`SNAPSHOT_FORMAT`]).
pub const SNAPSHOT_FORMAT_COMPACT: &str = "canary-gate.snapshot.compact.v1";

/// Content type of the compact form: asked for in `Accept`, declared in the answer's
/// `Content-Type`.
pub const COMPACT_CONTENT_TYPE: &str = "application/vnd.canary-gate.snapshot.compact+json";

/// The longest base64 counter record a compact snapshot may carry. The largest real record (all
/// 1,920 buckets filled with 10-byte counts, the sticky section full) is about 25 KB, 34 KB in
/// base64; anything longer is refused before it is decoded.
pub const MAX_COMPACT_COUNTERS_CHARS: usize = 64 * 1024;

/// Identifies one proxy process (one Envoy, whatever its worker count).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceInfo {
    /// Random at start; changes on every restart.
    pub id: String,
    pub started_at_unix_ms: u64,
}

/// One subset's counters in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsetSnapshot {
    pub subset: SubsetName,
    pub role: Role,
    pub counters: SubsetCounters,
}

/// Everything a reader needs from one proxy at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Always [`SNAPSHOT_FORMAT`].
    pub format: String,
    pub instance: InstanceInfo,
    pub taken_at_unix_ms: u64,
    /// The route configuration the proxy is applying; `None` before any was accepted.
    pub route: Option<RouteConfig>,
    /// Stable first, then canary, for the route's rollout.
    pub subsets: Vec<SubsetSnapshot>,
    /// The kill order in force for the route's rollout, if any (see [`crate::kill`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill: Option<KillRecord>,
    /// Requests whose label the route table did not follow (see [`crate::served`]); absent
    /// when there were none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misrouted: Option<Misrouted>,
    /// Dark-launch requests to the canary, counted apart from the split's (not judged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dark_launch: Option<SubsetCounters>,
    /// Every rollout this proxy runs; the snapshot describes one of them (`?rollout=NAME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<SubsetName>,
}

/// Why bytes are not a snapshot this build can read.
#[derive(Debug)]
pub enum SnapshotError {
    Json(serde_json::Error),
    /// The body's `format` tag is not the one the answer's content type promised.
    Format {
        got: String,
        want: &'static str,
    },
    /// A compact snapshot's counter record is not one; `field` names it (`subsets[1].counters`).
    Counters {
        field: String,
        error: String,
    },
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Json(e) => write!(f, "snapshot is not valid: {e}"),
            Self::Format { got, want } => write!(f, "snapshot format {got:?} is not {want:?}"),
            Self::Counters { field, error } => write!(f, "snapshot {field}: {error}"),
        }
    }
}

impl std::error::Error for SnapshotError {}

/// Reads the snapshot endpoint's query: empty, or `rollout=NAME`.
pub fn snapshot_query(query: &str) -> Result<Option<SubsetName>, String> {
    if query.is_empty() {
        return Ok(None);
    }
    match query.split_once('=') {
        Some(("rollout", v)) => SubsetName::try_from(v).map(Some).map_err(|e| format!("rollout: {e}")),
        _ => Err(format!("unexpected query {query:?}; the only parameter is `rollout`")),
    }
}

/// Whether an `Accept` header (raw bytes) asks for the compact form: one of its media ranges is
/// [`COMPACT_CONTENT_TYPE`] without `q=0`. Wildcards do not count: the compact form is only for
/// a client that knows it.
pub fn accepts_compact(accept: &[u8]) -> bool {
    accept.split(|b| *b == b',').any(|range| {
        let mut parts = range.split(|b| *b == b';');
        let media = parts.next().unwrap_or_default().trim_ascii();
        media.eq_ignore_ascii_case(COMPACT_CONTENT_TYPE.as_bytes())
            && !parts.any(|p| {
                let p = p.trim_ascii();
                let q = p.split_first().filter(|(k, _)| k.eq_ignore_ascii_case(&b'q')).map(|(_, rest)| rest);
                let value = q.and_then(|rest| rest.strip_prefix(b"="));
                value.and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse::<f64>().ok()) == Some(0.0)
            })
    })
}

/// Whether a `Content-Type` (raw bytes) declares the compact form.
pub fn is_compact_content_type(content_type: &[u8]) -> bool {
    let media = content_type.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
    media.eq_ignore_ascii_case(COMPACT_CONTENT_TYPE.as_bytes())
}

/// Just the tag, to say which format a body that did not parse claims to be.
#[derive(Deserialize)]
struct FormatOnly {
    format: String,
}

/// The parse error, or the wrong tag if the body names another format (clearer than a type error
/// deep inside it).
fn parse_error(bytes: &[u8], e: serde_json::Error, want: &'static str) -> SnapshotError {
    match serde_json::from_slice::<FormatOnly>(bytes) {
        Ok(f) if f.format != want => SnapshotError::Format { got: f.format, want },
        _ => SnapshotError::Json(e),
    }
}

/// The compact form as written: the snapshot, with counter records in base64.
#[derive(Serialize)]
struct CompactOut<'a> {
    format: &'static str,
    instance: &'a InstanceInfo,
    taken_at_unix_ms: u64,
    route: &'a Option<RouteConfig>,
    subsets: Vec<CompactSubsetOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kill: Option<&'a KillRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    misrouted: Option<&'a Misrouted>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dark_launch: Option<String>,
    #[serde(skip_serializing_if = "<[SubsetName]>::is_empty")]
    rollouts: &'a [SubsetName],
}

#[derive(Serialize)]
struct CompactSubsetOut<'a> {
    subset: &'a SubsetName,
    role: Role,
    counters: String,
}

/// The compact form as read. The counter strings are borrowed from the body where they can be
/// (base64 needs no JSON escapes), so they are not copied before decoding.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactIn<'a> {
    format: String,
    instance: InstanceInfo,
    taken_at_unix_ms: u64,
    route: Option<RouteConfig>,
    #[serde(borrow)]
    subsets: Vec<CompactSubsetIn<'a>>,
    #[serde(default)]
    kill: Option<KillRecord>,
    #[serde(default)]
    misrouted: Option<Misrouted>,
    #[serde(default, borrow)]
    dark_launch: Option<Cow<'a, str>>,
    #[serde(default)]
    rollouts: Vec<SubsetName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactSubsetIn<'a> {
    subset: SubsetName,
    role: Role,
    #[serde(borrow)]
    counters: Cow<'a, str>,
}

/// Format 1 of the counter record (varints), not the stored format 2: it is the smaller of the
/// two (format 2's fixed-width pairs are for counting in place), and every reader of the compact
/// form reads both ([`SubsetCounters::decode`]).
fn encode_counters(c: &SubsetCounters) -> String {
    BASE64.encode(c.encode_v1())
}

/// One counter record of a compact snapshot, checked as the JSON form's counters are.
fn decode_counters(text: &str, field: impl FnOnce() -> String) -> Result<SubsetCounters, SnapshotError> {
    let fail = |field: String, error: String| SnapshotError::Counters { field, error };
    if text.len() > MAX_COMPACT_COUNTERS_CHARS {
        return Err(fail(
            field(),
            format!("{} characters, more than a counter record takes ({MAX_COMPACT_COUNTERS_CHARS})", text.len()),
        ));
    }
    if text.is_empty() {
        return Err(fail(field(), "empty, not a counter record".into()));
    }
    let bytes = match BASE64.decode(text) {
        Ok(b) => b,
        Err(e) => return Err(fail(field(), format!("not base64: {e}"))),
    };
    SubsetCounters::decode(&bytes).map_err(|e| fail(field(), e.to_string()))
}

impl Snapshot {
    /// Reads the JSON form.
    pub fn from_json(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let s: Snapshot = serde_json::from_slice(bytes).map_err(|e| parse_error(bytes, e, SNAPSHOT_FORMAT))?;
        if s.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format { got: s.format, want: SNAPSHOT_FORMAT });
        }
        Ok(s)
    }

    /// Reads the compact form (see the module docs).
    pub fn from_compact_json(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let c: CompactIn<'_> =
            serde_json::from_slice(bytes).map_err(|e| parse_error(bytes, e, SNAPSHOT_FORMAT_COMPACT))?;
        if c.format != SNAPSHOT_FORMAT_COMPACT {
            return Err(SnapshotError::Format { got: c.format, want: SNAPSHOT_FORMAT_COMPACT });
        }
        let mut subsets = Vec::with_capacity(c.subsets.len());
        for (i, s) in c.subsets.into_iter().enumerate() {
            let counters = decode_counters(&s.counters, || format!("subsets[{i}].counters ({})", s.subset))?;
            subsets.push(SubsetSnapshot { subset: s.subset, role: s.role, counters });
        }
        let dark_launch = match c.dark_launch {
            Some(text) => Some(decode_counters(&text, || "dark_launch".to_owned())?),
            None => None,
        };
        Ok(Snapshot {
            format: SNAPSHOT_FORMAT.to_owned(),
            instance: c.instance,
            taken_at_unix_ms: c.taken_at_unix_ms,
            route: c.route,
            subsets,
            kill: c.kill,
            misrouted: c.misrouted,
            dark_launch,
            rollouts: c.rollouts,
        })
    }

    /// Reads an answer of the snapshot endpoint in the form its `Content-Type` declares: the
    /// compact form if it says [`COMPACT_CONTENT_TYPE`], the JSON form otherwise (an older filter,
    /// which answers `application/json` whatever was asked).
    pub fn from_body(content_type: Option<&[u8]>, bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        if content_type.is_some_and(is_compact_content_type) {
            Snapshot::from_compact_json(bytes)
        } else {
            Snapshot::from_json(bytes)
        }
    }

    /// Writes the compact form. Its counters decode to exactly these counters (the record format
    /// round-trips every valid record).
    pub fn to_compact_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        // Destructured so that a field added to `Snapshot` does not compile until the compact
        // form carries it too.
        let Snapshot { format: _, instance, taken_at_unix_ms, route, subsets, kill, misrouted, dark_launch, rollouts } =
            self;
        serde_json::to_vec(&CompactOut {
            format: SNAPSHOT_FORMAT_COMPACT,
            instance,
            taken_at_unix_ms: *taken_at_unix_ms,
            route,
            subsets: subsets
                .iter()
                .map(|s| CompactSubsetOut { subset: &s.subset, role: s.role, counters: encode_counters(&s.counters) })
                .collect(),
            kill: kill.as_ref(),
            misrouted: misrouted.as_ref(),
            dark_launch: dark_launch.as_ref().map(encode_counters),
            rollouts,
        })
    }

    pub fn subset(&self, role: Role) -> Option<&SubsetSnapshot> {
        self.subsets.iter().find(|s| s.role == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_with_sticky_clusters_reads_and_round_trips() {
        // The fuzz seed with keyed counters (36 of 40 stable requests keyed, 1 of 5 canary).
        let bytes = include_bytes!("../../../fuzz/corpus/snapshot/sticky-clusters.json");
        let s = Snapshot::from_json(bytes).unwrap();
        let stable = &s.subset(Role::Stable).unwrap().counters;
        assert_eq!((stable.requests, stable.sticky.total_requests()), (40, 36));
        let again = Snapshot::from_json(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(again, s);
    }

    fn seed() -> Snapshot {
        Snapshot::from_json(include_bytes!("../../../fuzz/corpus/snapshot/sticky-clusters.json")).unwrap()
    }

    #[test]
    fn the_compact_form_reads_back_as_the_same_snapshot() {
        let mut s = seed();
        s.dark_launch = Some(s.subsets[1].counters.clone());
        s.rollouts = vec![SubsetName::try_from("demo").unwrap()];
        let compact = s.to_compact_json().unwrap();
        let json = serde_json::to_vec(&s).unwrap();
        assert!(compact.len() < json.len(), "{} bytes against {}", compact.len(), json.len());
        let text = String::from_utf8(compact.clone()).unwrap();
        assert!(text.starts_with(r#"{"format":"canary-gate.snapshot.compact.v1","#), "{text}");
        assert!(!text.contains("buckets"), "{text}");
        assert_eq!(Snapshot::from_compact_json(&compact).unwrap(), s);
        assert_eq!(Snapshot::from_body(Some(COMPACT_CONTENT_TYPE.as_bytes()), &compact).unwrap(), s);
        assert_eq!(Snapshot::from_body(Some(b"application/json"), &json).unwrap(), s);
        assert_eq!(Snapshot::from_body(None, &json).unwrap(), s);
    }

    #[test]
    fn the_compact_fuzz_seed_is_the_json_seed() {
        // Written apart from this code (a script following counters.rs's format), so a change to
        // the record's bytes shows here.
        let bytes = include_bytes!("../../../fuzz/corpus/snapshot/sticky-clusters.compact.json");
        assert_eq!(Snapshot::from_compact_json(bytes).unwrap(), seed());
    }

    #[test]
    fn each_form_is_refused_by_its_tag_when_taken_for_the_other() {
        let s = seed();
        let compact = s.to_compact_json().unwrap();
        let json = serde_json::to_vec(&s).unwrap();
        // What an agent built before the compact form would say, had it been sent one.
        let e = Snapshot::from_json(&compact).unwrap_err().to_string();
        assert!(e.contains("\"canary-gate.snapshot.compact.v1\" is not \"canary-gate.snapshot.v1\""), "{e}");
        let e = Snapshot::from_body(Some(b"application/json; charset=utf-8"), &compact).unwrap_err().to_string();
        assert!(e.contains("is not \"canary-gate.snapshot.v1\""), "{e}");
        let e = Snapshot::from_compact_json(&json).unwrap_err().to_string();
        assert!(e.contains("\"canary-gate.snapshot.v1\" is not \"canary-gate.snapshot.compact.v1\""), "{e}");
    }

    #[test]
    fn a_bad_counter_record_is_refused_naming_its_field() {
        let s = seed();
        let text = String::from_utf8(s.to_compact_json().unwrap()).unwrap();
        let canary = BASE64.encode(s.subsets[1].counters.encode_v1());
        let with = |counters: &str| text.replace(&canary, counters);
        let err = |body: String| Snapshot::from_compact_json(body.as_bytes()).unwrap_err().to_string();
        let e = err(with("***"));
        assert!(e.starts_with("snapshot subsets[1].counters (v2): not base64"), "{e}");
        let truncated = BASE64.encode(&s.subsets[1].counters.encode_v1()[..3]);
        assert_eq!(err(with(&truncated)), "snapshot subsets[1].counters (v2): counter record is truncated");
        assert!(err(with("")).contains("subsets[1].counters (v2): empty"));
        let huge = "A".repeat(MAX_COMPACT_COUNTERS_CHARS + 4);
        assert!(err(with(&huge)).contains("more than a counter record takes"), "{}", err(with(&huge)));
        // Counters that do not add up, as the JSON form refuses them.
        let mut bad = s.subsets[1].counters.clone();
        bad.failures += 1;
        assert!(err(with(&BASE64.encode(bad.encode_v1()))).contains("inconsistent"));
        assert!(err(with(&BASE64.encode(bad.encode()))).contains("inconsistent"), "format 2 is checked alike");
        // The snapshot carries format 1; a record in the stored format 2 is read as well.
        let stored =
            Snapshot::from_compact_json(with(&BASE64.encode(s.subsets[1].counters.encode())).as_bytes()).unwrap();
        assert_eq!(stored.subsets[1].counters, s.subsets[1].counters);
        let mut dark = s.clone();
        dark.dark_launch = Some(bad);
        let e = Snapshot::from_compact_json(&dark.to_compact_json().unwrap()).unwrap_err().to_string();
        assert!(e.starts_with("snapshot dark_launch: "), "{e}");
        // Unknown fields are refused, as in the JSON form.
        let e = err(text.replacen("\"instance\"", "\"extra\":1,\"instance\"", 1));
        assert!(e.contains("unknown field `extra`"), "{e}");
    }

    #[test]
    fn only_a_client_that_names_the_compact_form_gets_it() {
        assert!(accepts_compact(COMPACT_CONTENT_TYPE.as_bytes()));
        assert!(accepts_compact(b"application/json;q=0.5, Application/Vnd.Canary-Gate.Snapshot.Compact+JSON"));
        assert!(accepts_compact(b"application/vnd.canary-gate.snapshot.compact+json; q=0.9"));
        assert!(!accepts_compact(b"application/vnd.canary-gate.snapshot.compact+json;q=0"));
        assert!(!accepts_compact(b"*/*"));
        assert!(!accepts_compact(b"application/json"));
        assert!(!accepts_compact(b""));
        assert!(is_compact_content_type(b"application/vnd.canary-gate.snapshot.compact+json; charset=utf-8"));
        assert!(!is_compact_content_type(b"application/json"));
    }

    #[test]
    fn the_snapshot_query_names_one_rollout() {
        assert_eq!(snapshot_query(""), Ok(None));
        assert_eq!(snapshot_query("rollout=payment").unwrap().unwrap().as_str(), "payment");
        assert!(snapshot_query("rollout=Pay ment").unwrap_err().starts_with("rollout:"));
        assert!(snapshot_query("x=1").unwrap_err().contains("`rollout`"));
        assert!(snapshot_query("rollout=a&rollout=b").is_err());
    }
}
