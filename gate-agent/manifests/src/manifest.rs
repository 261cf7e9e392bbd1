//! Reading manifests: YAML documents, what kind each is, and the fields the checks need.
//!
//! Files are split into documents on `---` and `...` lines (as YAML defines them), so a broken
//! document never hides the ones after it, and each keeps its first line for locating findings.
//! A document parses through `serde_yaml_ng::Value`, which rejects duplicate keys as kubectl does.
//! Known kinds are read into small typed views that ignore fields no check needs; a wrong type
//! in a field that is read is a `schema` error naming its path.

use std::collections::BTreeMap;

use canary_core::config::{self, PluginConfig, RouteConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::report::{Check, Findings, Severity, Site};
use canary_rollout::spec::Spec;

/// The Istio networking versions whose VirtualService and DestinationRule are read.
const NETWORKING_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];
/// The Gateway API versions whose HTTPRoute is read.
const GATEWAY_VERSIONS: [&str; 2] = ["v1", "v1beta1"];
/// This project's own group, for the `Rollout` wrapper around a rollout spec.
pub const ROLLOUT_API_VERSION: &str = "canary-gate.dev/v1";

/// Which argument a file came from; decides which checks its documents get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// FILE arguments: checked.
    Input,
    /// `--spec`: must hold a rollout spec.
    Spec,
    /// `--live`: what is applied now; read for context only.
    Live,
}

/// One non-empty YAML document.
#[derive(Debug, Clone)]
pub(crate) struct Doc<'a> {
    pub file: &'a str,
    /// Position of the file among everything read, for ordering findings.
    pub file_seq: usize,
    /// 1-based among the file's non-empty documents.
    pub index: usize,
    /// 1-based line of the document's first line in the file.
    pub first_line: usize,
    pub text: &'a str,
    pub origin: Origin,
}

/// The object's identity, for messages and for matching live objects to new ones.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meta {
    pub kind: &'static str,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

impl Meta {
    /// `VirtualService production/payment-svc`.
    pub fn describe(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => format!("{} {ns}/{name}", self.kind),
            (None, Some(name)) => format!("{} {name}", self.kind),
            _ => self.kind.to_owned(),
        }
    }

    /// The same object: same name, and the same namespace when both say.
    pub fn same_object(&self, other: &Meta) -> bool {
        self.kind == other.kind
            && self.name.is_some()
            && self.name == other.name
            && (self.namespace.is_none() || other.namespace.is_none() || self.namespace == other.namespace)
    }
}

/// A read object of a known kind.
#[derive(Debug, Clone)]
pub(crate) struct Obj<T> {
    /// Index into [`Loaded::docs`].
    pub doc: usize,
    /// Path prefix of the object inside its document (`items[2]` in a `List`), or empty.
    pub base: String,
    pub meta: Meta,
    pub body: T,
}

impl<T> Obj<T> {
    /// The document path of a field of this object.
    pub fn path(&self, field: &str) -> String {
        join(&self.base, field)
    }
}

pub(crate) fn join(base: &str, field: &str) -> String {
    match (base.is_empty(), field.is_empty()) {
        (true, _) => field.to_owned(),
        (false, true) => base.to_owned(),
        (false, false) => format!("{base}.{field}"),
    }
}

/// Istio's protocol sections of a VirtualService, and a Gateway API HTTPRoute's `rules`; each
/// holds routes with weighted destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http,
    Tcp,
    Tls,
    /// An HTTPRoute's `rules`: destinations are `backendRefs` (Services), weights default to 1.
    Rules,
}

impl Protocol {
    pub fn field(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Rules => "rules",
        }
    }

    /// The field of a route that lists its weighted destinations.
    pub fn destinations(self) -> &'static str {
        match self {
            Protocol::Rules => "backendRefs",
            _ => "route",
        }
    }

    /// The weight a destination without one gets: Istio reads 0 (100 for a lone one), the
    /// Gateway API 1.
    pub fn default_weight(self) -> u64 {
        match self {
            Protocol::Rules => 1,
            _ => 0,
        }
    }

    /// Who applies the weights, for messages.
    pub fn api(self) -> &'static str {
        match self {
            Protocol::Rules => "the Gateway API",
            _ => "Istio",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct VirtualService {
    pub routes: Vec<Route>,
}

/// One entry of `http`, `tcp` or `tls` (VirtualService), or of `rules` (HTTPRoute).
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub protocol: Protocol,
    pub index: usize,
    pub name: Option<String>,
    /// One of its conditions matches on headers (a dark launch, typically).
    pub header_match: bool,
    /// Exact header matches: (path of the value below the route, header name, value).
    pub exact_headers: Vec<(String, String, String)>,
    pub destinations: Vec<Dest>,
    /// Every weight is a whole number Istio accepts; else the weight checks skip this route.
    pub weights_valid: bool,
}

impl Route {
    /// `spec.http[1]`.
    pub fn path(&self) -> String {
        format!("spec.{}[{}]", self.protocol.field(), self.index)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Dest {
    pub host: String,
    pub subset: Option<String>,
    /// As written; `None` when omitted (Istio reads 0, or 100 for a lone destination).
    pub weight: Option<u64>,
}

impl Dest {
    /// What the destination is called in messages and role rules: its subset, else its host
    /// (the service-per-version pattern, `payment` and `payment-canary`).
    pub fn id(&self) -> &str {
        self.subset.as_deref().unwrap_or(&self.host)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DestinationRule {
    pub host: String,
    pub subsets: Vec<SubsetDef>,
    pub hashing: Vec<Hashing>,
}

#[derive(Debug, Clone)]
pub(crate) struct SubsetDef {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A `consistentHash` load balancer and the path it was found at.
#[derive(Debug, Clone)]
pub(crate) struct Hashing {
    pub path: String,
    pub key: HashKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HashKey {
    Header(String),
    Cookie(String),
    /// Source IP, a query parameter, or unspecified: no filter equivalent.
    Other(&'static str),
}

/// A canary-gate route configuration, from a WasmPlugin's `spec.pluginConfig` or a bare JSON
/// config document; already accepted by `canary_core::config::parse`.
#[derive(Debug, Clone)]
pub(crate) struct FilterConfig {
    pub route: RouteConfig,
    /// Path of the configuration in the document (`spec.pluginConfig`, or empty).
    pub at: String,
}

/// Everything read from the inputs.
#[derive(Debug, Default)]
pub(crate) struct Loaded<'a> {
    pub docs: Vec<Doc<'a>>,
    pub virtual_services: Vec<Obj<VirtualService>>,
    pub destination_rules: Vec<Obj<DestinationRule>>,
    pub filters: Vec<Obj<FilterConfig>>,
    pub specs: Vec<Obj<Spec>>,
    pub files: usize,
    /// Kinds the caller reads (see [`KindReader`]).
    pub readers: Vec<&'a dyn KindReader>,
}

/// A kind this crate does not know itself, read by the caller: gate-agent reads `CanaryGate`
/// objects with its controller's own conversion, which needs types this pure crate does not hold.
pub trait KindReader: std::fmt::Debug {
    /// The `kind` and API group this reader takes.
    fn kind(&self) -> (&'static str, &'static str);
    /// Where in the object the rollout spec it stands for sits (`spec.analysis`), for findings.
    fn spec_at(&self) -> &'static str;
    /// The rollout spec the object stands for, or what is wrong and where.
    fn read(&self, object: &Value) -> Result<Spec, KindError>;
}

/// Why a [`KindReader`] refused an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindError {
    /// The field's path inside the object (`spec.analysis.stepWeights[2]`).
    pub field: String,
    pub problem: String,
    pub fix: String,
    /// A shape error (wrong type, unknown field) rather than a rollout spec the agent would refuse.
    pub schema: bool,
}

impl<'a> Loaded<'a> {
    pub fn origin<T>(&self, obj: &Obj<T>) -> Origin {
        self.docs.get(obj.doc).map_or(Origin::Input, |d| d.origin)
    }

    pub fn doc<T>(&self, obj: &Obj<T>) -> Option<&Doc<'a>> {
        self.docs.get(obj.doc)
    }

    /// Reads one file's documents, reporting what cannot be read into `out`.
    pub fn read_file(&mut self, file: &'a str, text: &'a str, origin: Origin, out: &mut Findings) {
        let file_seq = self.files;
        self.files += 1;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut index = 0;
        for chunk in split_documents(text) {
            if !has_content(chunk.text) {
                continue;
            }
            index += 1;
            let doc = Doc { file, file_seq, index, first_line: chunk.first_line, text: chunk.text, origin };
            let place = Place { doc_at: self.docs.len(), doc: &doc, base: "" };
            match parse_yaml(chunk.text, chunk.first_line) {
                Ok(value) => self.read_object(place, &value, out),
                Err((message, line)) => out.error(
                    &Site { line, ..place.site(None, "") },
                    Check::Yaml,
                    message,
                    "Fix the YAML syntax (kubectl would reject this document too); `yamllint` shows the exact spot."
                        .into(),
                ),
            }
            self.docs.push(doc);
        }
        if index == 0 {
            out.file(
                file,
                file_seq,
                Severity::Warning,
                Check::Empty,
                "no YAML documents: nothing was checked".into(),
                "Check that the file (or the command piped into `-`) produced the manifests you meant to check.",
            );
        }
    }

    fn read_object(&mut self, place: Place<'_, 'a>, value: &Value, out: &mut Findings) {
        let Some(map) = value.as_object() else {
            out.error(
                &place.site(None, ""),
                Check::Schema,
                format!("{} is not a Kubernetes object (a mapping with apiVersion and kind)", type_name(value)),
                "Give each document apiVersion, kind, metadata and spec; a stray line of text or a list at the top \
                 level is not a manifest."
                    .into(),
            );
            return;
        };
        let text = |key: &str| map.get(key).and_then(Value::as_str);
        let (Some(kind), Some(api_version)) = (text("kind"), text("apiVersion")) else {
            return self.read_bare(place, value, out);
        };
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let known: Option<(&str, &str, &[&str])> = match (kind, group) {
            ("VirtualService" | "DestinationRule", "networking.istio.io") => {
                Some((kind, "v1", NETWORKING_VERSIONS.as_slice()))
            }
            ("WasmPlugin" | "TrafficExtension", "extensions.istio.io") => {
                Some((kind, "v1alpha1", ["v1alpha1"].as_slice()))
            }
            ("HTTPRoute", "gateway.networking.k8s.io") => Some((kind, "v1", GATEWAY_VERSIONS.as_slice())),
            _ => None,
        };
        if let Some((kind, assumed, versions)) = known
            && !versions.contains(&version)
        {
            let all: Vec<String> = versions.iter().map(|v| format!("{group}/{v}")).collect();
            out.warning(
                &place.site(None, "apiVersion"),
                Check::Schema,
                format!("{kind} {api_version} is not a version this command knows; checked as {group}/{assumed}"),
                format!("Use {}.", all.join(" or ")),
            );
        }
        if let Some(reader) = self.readers.iter().copied().find(|r| r.kind() == (kind, group)) {
            self.read_by(reader, place, map, value, out);
            return;
        }
        match (kind, group) {
            ("VirtualService", "networking.istio.io") => {
                if let Some(obj) = typed::<RawObject<RawVsSpec>>(place, value, "VirtualService", out) {
                    let meta = obj.metadata.into_meta("VirtualService");
                    let body = virtual_service(obj.spec, place, &meta, out);
                    self.virtual_services.push(Obj { doc: place.doc_at, base: place.base.to_owned(), meta, body });
                }
            }
            ("DestinationRule", "networking.istio.io") => {
                if let Some(obj) = typed::<RawObject<RawDrSpec>>(place, value, "DestinationRule", out) {
                    let meta = obj.metadata.into_meta("DestinationRule");
                    if let Some(body) = destination_rule(obj.spec, place, &meta, out) {
                        self.destination_rules.push(Obj { doc: place.doc_at, base: place.base.to_owned(), meta, body });
                    }
                }
            }
            ("WasmPlugin", "extensions.istio.io") => {
                if let Some(obj) = typed::<RawObject<RawWasmPluginSpec>>(place, value, "WasmPlugin", out) {
                    let meta = obj.metadata.into_meta("WasmPlugin");
                    self.read_wasm_plugin(place, meta, obj.spec, "spec", out);
                }
            }
            // WasmPlugin's successor (Istio 1.30): the same plugin fields under spec.wasm.
            ("TrafficExtension", "extensions.istio.io") => {
                if let Some(obj) = typed::<RawObject<RawTrafficExtensionSpec>>(place, value, "TrafficExtension", out) {
                    let meta = obj.metadata.into_meta("TrafficExtension");
                    match obj.spec.wasm {
                        Some(wasm) => self.read_wasm_plugin(place, meta, wasm, "spec.wasm", out),
                        None if place.doc.origin == Origin::Live => {}
                        None => out.info(
                            &place.site(Some(meta.describe()), ""),
                            Check::UnknownKind,
                            "a TrafficExtension without spec.wasm (Lua) is not canary-gate's; not checked".into(),
                            String::new(),
                        ),
                    }
                }
            }
            ("HTTPRoute", "gateway.networking.k8s.io") => {
                if let Some(obj) = typed::<RawObject<RawHttpRouteSpec>>(place, value, "HTTPRoute", out) {
                    let meta = obj.metadata.into_meta("HTTPRoute");
                    let body = http_route(obj.spec, place, &meta, out);
                    self.virtual_services.push(Obj { doc: place.doc_at, base: place.base.to_owned(), meta, body });
                }
            }
            ("Rollout", "canary-gate.dev") => {
                if api_version == ROLLOUT_API_VERSION {
                    self.read_rollout(place, map, out);
                } else {
                    out.error(
                        &place.site(None, "apiVersion"),
                        Check::Schema,
                        format!("{api_version} is not a version gate-agent reads"),
                        format!("Write apiVersion: {ROLLOUT_API_VERSION}."),
                    );
                }
            }
            ("List", "") => match map.get("items") {
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let base = join(place.base, &format!("items[{i}]"));
                        self.read_object(Place { base: &base, ..place }, item, out);
                    }
                }
                None | Some(Value::Null) => {}
                Some(other) => out.error(
                    &place.site(None, "items"),
                    Check::Schema,
                    format!("List items is {}, not a list of objects", type_name(other)),
                    "Write items as a list of objects (as `kubectl get -o yaml` does).".into(),
                ),
            },
            // `--live` is context (often `kubectl get ... -o yaml` of many kinds): no notes for it.
            _ if place.doc.origin == Origin::Live => {}
            _ => out.info(
                &place.site(None, ""),
                Check::UnknownKind,
                format!("{kind} ({api_version}) is not checked"),
                String::new(),
            ),
        }
    }

    /// A document without apiVersion/kind: a bare rollout spec (what `run --spec` reads), a bare
    /// filter config (what `check-config` reads), or a mistake.
    fn read_bare(&mut self, place: Place<'_, 'a>, value: &Value, out: &mut Findings) {
        let has = |key: &str| value.get(key).is_some();
        if has("kind") || has("apiVersion") {
            out.error(
                &place.site(None, ""),
                Check::Schema,
                "apiVersion and kind must both be strings".into(),
                "Write both, e.g. apiVersion: networking.istio.io/v1 and kind: VirtualService.".into(),
            );
        } else if has("version") && (has("rollout") || has("role") || has("canary_weight")) {
            let meta = Meta { kind: "filter config", ..Meta::default() };
            self.read_filter_config(place, meta, value, "", out);
        } else if has("stable") && has("canary") {
            let meta = Meta { kind: "rollout spec", ..Meta::default() };
            self.read_spec(place, meta, value.clone(), "", out);
        } else {
            out.error(
                &place.site(None, ""),
                Check::Schema,
                "no apiVersion and kind, and not a rollout spec (stable, canary, ...) or a filter config (version, \
                 rollout, ...)"
                    .into(),
                "Give the document apiVersion and kind, or remove it.".into(),
            );
        }
    }

    /// A WasmPlugin's spec, or a TrafficExtension's `spec.wasm` (`at`, the path of those fields).
    fn read_wasm_plugin(
        &mut self,
        place: Place<'_, 'a>,
        meta: Meta,
        spec: RawWasmPluginSpec,
        at: &str,
        out: &mut Findings,
    ) {
        const CONFIG_KEYS: [&str; 5] = ["rollout", "canary_weight", "role", "stable", "canary"];
        const URL_NAMES: [&str; 3] = ["canary-gate", "canary-filter", "canary_filter"];
        let config = spec.plugin_config.as_ref().and_then(Value::as_object);
        let ours = config.is_some_and(|m| CONFIG_KEYS.iter().any(|k| m.contains_key(*k)))
            || spec.url.as_deref().is_some_and(|u| URL_NAMES.iter().any(|n| u.contains(n)))
            || spec.plugin_name.as_deref() == Some("canary-gate");
        if !ours {
            if place.doc.origin == Origin::Live {
                return;
            }
            out.info(
                &place.site(Some(meta.describe()), ""),
                Check::UnknownKind,
                format!(
                    "not canary-gate's {} (no canary-gate url, pluginName or pluginConfig fields); not checked",
                    meta.kind
                ),
                String::new(),
            );
            return;
        }
        let config_at = format!("{at}.pluginConfig");
        match spec.plugin_config {
            Some(config) => self.read_filter_config(place, meta, &config, &config_at, out),
            None => out.error(
                &place.site(Some(meta.describe()), &config_at),
                Check::PluginConfig,
                format!("canary-gate's {} has no {config_at}: the filter refuses to start without one", meta.kind),
                "Add spec.pluginConfig with at least version, rollout, stable, canary and canary_weight (check it \
                 with `gate-agent check-config`)."
                    .into(),
            ),
        }
    }

    /// Parses a filter configuration with the filter's own parser, so the two never disagree.
    fn read_filter_config(&mut self, place: Place<'_, 'a>, meta: Meta, config: &Value, at: &str, out: &mut Findings) {
        let at = join(place.base, at);
        let bytes = serde_json::to_vec(config).unwrap_or_default();
        match config::parse(&bytes) {
            Ok(PluginConfig::Route(route)) => {
                let body = FilterConfig { route: *route, at };
                self.filters.push(Obj { doc: place.doc_at, base: place.base.to_owned(), meta, body });
            }
            Ok(PluginConfig::SnapshotEndpoint(_)) => {}
            Err(e) => {
                let (path, field) = if e.field == "." {
                    (at, "the configuration".to_owned())
                } else {
                    (join(&at, &e.field), format!("`{}`", e.field))
                };
                out.error(
                    &Site::new(place.doc, Some(meta.describe()), path),
                    Check::PluginConfig,
                    format!("the filter would reject this configuration: {field}: {}", e.problem),
                    format!(
                        "Fix {field}; the filter refuses the whole configuration, so nothing would be gated. \
                         `gate-agent check-config` runs the same parser."
                    ),
                );
            }
        }
    }

    /// `kind: Rollout`: its `spec` holds the rollout spec fields; `spec.name` defaults to
    /// `metadata.name`.
    fn read_rollout(&mut self, place: Place<'_, 'a>, map: &serde_json::Map<String, Value>, out: &mut Findings) {
        let metadata = map.get("metadata").unwrap_or(&Value::Null);
        let meta = match Option::<RawMeta>::deserialize(metadata) {
            Ok(raw) => raw.unwrap_or_default().into_meta("Rollout"),
            Err(e) => {
                out.error(
                    &place.site(None, "metadata"),
                    Check::Schema,
                    format!("Rollout metadata: {e}"),
                    "Write metadata as a mapping with name (and namespace).".into(),
                );
                return;
            }
        };
        let mut spec = map.get("spec").cloned().unwrap_or(Value::Null);
        if let (Some(fields), Some(name)) = (spec.as_object_mut(), &meta.name)
            && !fields.contains_key("name")
        {
            fields.insert("name".into(), Value::String(name.clone()));
        }
        self.read_spec(place, meta, spec, "spec", out);
    }

    /// An object of a kind the caller reads (see [`KindReader`]).
    fn read_by(
        &mut self,
        reader: &dyn KindReader,
        place: Place<'_, 'a>,
        map: &serde_json::Map<String, Value>,
        value: &Value,
        out: &mut Findings,
    ) {
        let (kind, _) = reader.kind();
        let metadata = map.get("metadata").unwrap_or(&Value::Null);
        let meta = Option::<RawMeta>::deserialize(metadata).ok().flatten().unwrap_or_default().into_meta(kind);
        match reader.read(value) {
            Ok(spec) => {
                let base = join(place.base, reader.spec_at());
                self.specs.push(Obj { doc: place.doc_at, base, meta, body: spec });
            }
            Err(e) => {
                let check = if e.schema { Check::Schema } else { Check::RolloutSpec };
                let site = Site::new(place.doc, Some(meta.describe()), join(place.base, &e.field));
                out.error(&site, check, e.problem, e.fix);
            }
        }
    }

    /// Reads a rollout spec with gate-agent's own parser (`Spec::from_yaml_or_json`).
    fn read_spec(&mut self, place: Place<'_, 'a>, meta: Meta, spec: Value, at: &str, out: &mut Findings) {
        let at = join(place.base, at);
        let json = serde_json::to_string(&spec).unwrap_or_default();
        match Spec::from_yaml_or_json(&json) {
            Ok(spec) => self.specs.push(Obj { doc: place.doc_at, base: at, meta, body: spec }),
            Err(e) => {
                let path = if e.field == "." { at } else { join(&at, &e.field) };
                out.error(
                    &Site::new(place.doc, Some(meta.describe()), path),
                    Check::RolloutSpec,
                    format!("gate-agent would reject this rollout spec: {e}"),
                    "Fix the field; `gate-agent check-spec FILE` reads specs the same way.".into(),
                );
            }
        }
    }
}

/// Where an object being read sits: its document and its path prefix inside it.
#[derive(Debug, Clone, Copy)]
struct Place<'p, 'a> {
    doc_at: usize,
    doc: &'p Doc<'a>,
    base: &'p str,
}

impl<'p, 'a> Place<'p, 'a> {
    fn site(&self, object: Option<String>, field: &str) -> Site<'p, 'a> {
        Site::new(self.doc, object, join(self.base, field))
    }
}

/// A stretch of a file holding at most one YAML document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk<'a> {
    pub text: &'a str,
    pub first_line: usize,
}

/// Splits at `---` (a new document, the marker line included) and after `...` (end of one).
/// YAML forbids both at the start of a line inside a document, so this is exact.
pub(crate) fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 1, 0);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let line_no = i + 1;
        let bare = line.trim_end_matches(['\n', '\r']);
        let starts_doc = is_marker(bare, "---");
        let ends_doc = is_marker(bare, "...");
        if starts_doc && offset > start {
            chunks.push(Chunk { text: text.get(start..offset).unwrap_or(""), first_line: start_line });
            start = offset;
            start_line = line_no;
        }
        offset += line.len();
        if ends_doc {
            chunks.push(Chunk { text: text.get(start..offset).unwrap_or(""), first_line: start_line });
            start = offset;
            start_line = line_no + 1;
        }
    }
    if offset > start {
        chunks.push(Chunk { text: text.get(start..).unwrap_or(""), first_line: start_line });
    }
    chunks
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// Anything but blank lines, comments and markers.
fn has_content(text: &str) -> bool {
    text.lines().any(|line| {
        let rest = if is_marker(line, "---") || is_marker(line, "...") { line.get(3..).unwrap_or("") } else { line };
        let rest = rest.trim();
        !rest.is_empty() && !rest.starts_with('#')
    })
}

/// YAML text to JSON-like data. An error says where, in lines of the file (not of the chunk).
fn parse_yaml(text: &str, first_line: usize) -> Result<Value, (String, Option<usize>)> {
    let offset = first_line - 1;
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line() + offset);
        (format!("not valid YAML: {}", shift_lines(&e.to_string(), offset)), line)
    })?;
    serde_json::to_value(&yaml).map_err(|e| (format!("not a Kubernetes manifest: {e} (keys must be strings)"), None))
}

/// Adds `offset` to every `line N` in a parser message.
fn shift_lines(message: &str, offset: usize) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("line ") {
        let (head, tail) = rest.split_at(at + "line ".len());
        out.push_str(head);
        let digits = tail.find(|c: char| !c.is_ascii_digit()).unwrap_or(tail.len());
        let (number, after) = tail.split_at(digits);
        match number.parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(number),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "an empty value",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Reads a known kind into its typed view; a wrong type is a `schema` error at its path.
fn typed<T: DeserializeOwned>(place: Place<'_, '_>, value: &Value, kind: &str, out: &mut Findings) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(t) => Some(t),
        Err(e) => {
            let field = e.path().to_string();
            let name = value.pointer("/metadata/name").and_then(Value::as_str);
            let object = Some(name.map_or_else(|| kind.to_owned(), |n| format!("{kind} {n}")));
            out.error(
                &place.site(object, if field == "." { "" } else { &field }),
                Check::Schema,
                format!("{kind} field `{field}`: {}", e.into_inner()),
                format!("Fix the field's type; the API server would reject this {kind}."),
            );
            None
        }
    }
}

/// `null` reads as the default (empty), as Kubernetes treats it.
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "S: Default + Deserialize<'de>"))]
struct RawObject<S> {
    #[serde(default, deserialize_with = "nullable")]
    metadata: RawMeta,
    #[serde(default, deserialize_with = "nullable")]
    spec: S,
}

#[derive(Default, Deserialize)]
struct RawMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    annotations: BTreeMap<String, String>,
}

impl RawMeta {
    fn into_meta(self, kind: &'static str) -> Meta {
        Meta { kind, name: self.name, namespace: self.namespace, annotations: self.annotations }
    }
}

#[derive(Default, Deserialize)]
struct RawVsSpec {
    #[serde(default, deserialize_with = "nullable")]
    http: Vec<RawRoute>,
    #[serde(default, deserialize_with = "nullable")]
    tcp: Vec<RawRoute>,
    #[serde(default, deserialize_with = "nullable")]
    tls: Vec<RawRoute>,
}

#[derive(Deserialize)]
struct RawRoute {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "match", deserialize_with = "nullable")]
    matches: Vec<Value>,
    #[serde(default, deserialize_with = "nullable")]
    route: Vec<RawDest>,
}

#[derive(Deserialize)]
struct RawDest {
    destination: RawDestination,
    /// Read loosely so a quoted or fractional weight gets a message made for it.
    #[serde(default)]
    weight: Option<Value>,
}

#[derive(Deserialize)]
struct RawDestination {
    host: String,
    #[serde(default)]
    subset: Option<String>,
}

fn virtual_service(spec: RawVsSpec, place: Place<'_, '_>, meta: &Meta, out: &mut Findings) -> VirtualService {
    let mut routes = Vec::new();
    for (protocol, raw_routes) in [(Protocol::Http, spec.http), (Protocol::Tcp, spec.tcp), (Protocol::Tls, spec.tls)] {
        for (index, raw) in raw_routes.into_iter().enumerate() {
            let mut weights_valid = true;
            let mut destinations = Vec::new();
            for (d, dest) in raw.route.into_iter().enumerate() {
                let path = format!("spec.{}[{index}].route[{d}].weight", protocol.field());
                let weight = match dest.weight.as_ref().map(istio_weight).transpose() {
                    Ok(w) => w,
                    Err(problem) => {
                        weights_valid = false;
                        out.error(
                            &place.site(Some(meta.describe()), &path),
                            Check::Schema,
                            problem,
                            "Istio weights are whole numbers of 0 or more, written without quotes; they are relative, \
                             so for a finer split use larger numbers (e.g. 995 and 5)."
                                .into(),
                        );
                        None
                    }
                };
                destinations.push(Dest { host: dest.destination.host, subset: dest.destination.subset, weight });
            }
            let header_match = raw.matches.iter().any(|m| m.get("headers").is_some_and(|h| !h.is_null()));
            let exact_headers = raw
                .matches
                .iter()
                .enumerate()
                .filter_map(|(i, m)| Some((i, m.get("headers")?.as_object()?)))
                .flat_map(|(i, headers)| {
                    headers.iter().filter_map(move |(name, v)| {
                        let value = v.get("exact")?.as_str()?.to_owned();
                        Some((format!("match[{i}].headers.{name}.exact"), name.to_ascii_lowercase(), value))
                    })
                })
                .collect();
            routes.push(Route {
                protocol,
                index,
                name: raw.name,
                header_match,
                exact_headers,
                destinations,
                weights_valid,
            });
        }
    }
    VirtualService { routes }
}

/// A weight as Istio's validation reads it (an int32 of 0 or more).
fn istio_weight(value: &Value) -> Result<u64, String> {
    match value {
        Value::Number(n) => {
            if let Some(w) = n.as_u64() {
                return if w <= i32::MAX as u64 {
                    Ok(w)
                } else {
                    Err(format!("weight {w} is too large for Istio (int32)"))
                };
            }
            if n.as_i64().is_some() {
                return Err(format!("weight {n} is negative; Istio rejects negative weights"));
            }
            match n.as_f64() {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // whole, in range: exact
                Some(f) if f.fract() == 0.0 && (0.0..=f64::from(i32::MAX)).contains(&f) => Ok(f as u64),
                _ => Err(format!("weight {n} is not a whole number; Istio weights are integers")),
            }
        }
        Value::String(s) => Err(format!("weight is the string {s:?}; Istio wants a number (write it without quotes)")),
        Value::Null => Err("weight is empty; write a number or leave the key out".into()),
        other => Err(format!("weight is {}, not a number", type_name(other))),
    }
}

#[derive(Default, Deserialize)]
struct RawDrSpec {
    host: String,
    #[serde(default, deserialize_with = "nullable")]
    subsets: Vec<RawSubset>,
    #[serde(default, rename = "trafficPolicy")]
    traffic_policy: Option<RawTrafficPolicy>,
}

#[derive(Deserialize)]
struct RawSubset {
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    labels: BTreeMap<String, String>,
    #[serde(default, rename = "trafficPolicy")]
    traffic_policy: Option<RawTrafficPolicy>,
}

#[derive(Deserialize)]
struct RawTrafficPolicy {
    #[serde(default, rename = "loadBalancer")]
    load_balancer: Option<RawLoadBalancer>,
    #[serde(default, rename = "portLevelSettings", deserialize_with = "nullable")]
    port_level_settings: Vec<RawPortPolicy>,
}

#[derive(Deserialize)]
struct RawPortPolicy {
    #[serde(default, rename = "loadBalancer")]
    load_balancer: Option<RawLoadBalancer>,
}

#[derive(Deserialize)]
struct RawLoadBalancer {
    #[serde(default, rename = "consistentHash")]
    consistent_hash: Option<RawHash>,
}

#[derive(Deserialize)]
struct RawHash {
    #[serde(default, rename = "httpHeaderName")]
    http_header_name: Option<String>,
    #[serde(default, rename = "httpCookie")]
    http_cookie: Option<RawCookie>,
    #[serde(default, rename = "useSourceIp")]
    use_source_ip: Option<bool>,
    #[serde(default, rename = "httpQueryParameterName")]
    http_query_parameter_name: Option<String>,
}

#[derive(Deserialize)]
struct RawCookie {
    name: String,
}

impl RawHash {
    fn key(self) -> HashKey {
        if let Some(h) = self.http_header_name {
            HashKey::Header(h)
        } else if let Some(c) = self.http_cookie {
            HashKey::Cookie(c.name)
        } else if self.use_source_ip == Some(true) {
            HashKey::Other("the source IP")
        } else if self.http_query_parameter_name.is_some() {
            HashKey::Other("a query parameter")
        } else {
            HashKey::Other("a hash key")
        }
    }
}

fn destination_rule(spec: RawDrSpec, place: Place<'_, '_>, meta: &Meta, out: &mut Findings) -> Option<DestinationRule> {
    let base = place.base;
    if spec.host.is_empty() {
        out.error(
            &place.site(Some(meta.describe()), "spec.host"),
            Check::Schema,
            "DestinationRule has no spec.host".into(),
            "Name the service the subsets belong to in spec.host.".into(),
        );
        return None;
    }
    let mut hashing = Vec::new();
    let mut policy = |p: Option<RawTrafficPolicy>, at: &str| {
        let Some(p) = p else { return };
        if let Some(hash) = p.load_balancer.and_then(|lb| lb.consistent_hash) {
            hashing.push(Hashing { path: join(base, &format!("{at}.loadBalancer.consistentHash")), key: hash.key() });
        }
        for (i, port) in p.port_level_settings.into_iter().enumerate() {
            if let Some(hash) = port.load_balancer.and_then(|lb| lb.consistent_hash) {
                let path = join(base, &format!("{at}.portLevelSettings[{i}].loadBalancer.consistentHash"));
                hashing.push(Hashing { path, key: hash.key() });
            }
        }
    };
    policy(spec.traffic_policy, "spec.trafficPolicy");
    let mut subsets = Vec::new();
    for (i, s) in spec.subsets.into_iter().enumerate() {
        policy(s.traffic_policy, &format!("spec.subsets[{i}].trafficPolicy"));
        subsets.push(SubsetDef { name: s.name, labels: s.labels });
    }
    Some(DestinationRule { host: spec.host, subsets, hashing })
}

#[derive(Default, Deserialize)]
struct RawTrafficExtensionSpec {
    #[serde(default)]
    wasm: Option<RawWasmPluginSpec>,
}

#[derive(Default, Deserialize)]
struct RawHttpRouteSpec {
    #[serde(default, deserialize_with = "nullable")]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
struct RawRule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    matches: Vec<Value>,
    #[serde(default, rename = "backendRefs", deserialize_with = "nullable")]
    backend_refs: Vec<RawBackendRef>,
}

#[derive(Deserialize)]
struct RawBackendRef {
    name: String,
    /// Read loosely so a quoted or fractional weight gets a message made for it.
    #[serde(default)]
    weight: Option<Value>,
}

/// The Gateway API's largest backendRef weight.
const GATEWAY_MAX_WEIGHT: u64 = 1_000_000;

/// An HTTPRoute as the weight checks see a VirtualService: each rule a route, each backendRef a
/// destination named by its Service (one Service per version), weights defaulting to 1.
fn http_route(spec: RawHttpRouteSpec, place: Place<'_, '_>, meta: &Meta, out: &mut Findings) -> VirtualService {
    let mut routes = Vec::new();
    for (index, raw) in spec.rules.into_iter().enumerate() {
        let mut weights_valid = true;
        let mut destinations = Vec::new();
        for (d, backend) in raw.backend_refs.into_iter().enumerate() {
            let path = format!("spec.rules[{index}].backendRefs[{d}].weight");
            let checked = backend.weight.as_ref().map(istio_weight).transpose().and_then(|w| match w {
                Some(w) if w > GATEWAY_MAX_WEIGHT => Err(format!("weight {w} is above the Gateway API's 1000000")),
                w => Ok(w),
            });
            let weight = match checked {
                Ok(w) => w,
                Err(problem) => {
                    weights_valid = false;
                    out.error(
                        &place.site(Some(meta.describe()), &path),
                        Check::Schema,
                        problem.replace("Istio", "the Gateway API"),
                        "Gateway API weights are whole numbers from 0 to 1000000, written without quotes; they are \
                         relative, so for a finer split use larger numbers (e.g. 995 and 5)."
                            .into(),
                    );
                    None
                }
            };
            destinations.push(Dest { host: backend.name, subset: None, weight });
        }
        let headers_of = |m: &Value| m.get("headers").and_then(Value::as_array).cloned().unwrap_or_default();
        let header_match = raw.matches.iter().any(|m| !headers_of(m).is_empty());
        let mut exact_headers = Vec::new();
        for (i, m) in raw.matches.iter().enumerate() {
            for (k, h) in headers_of(m).iter().enumerate() {
                let exact = h.get("type").and_then(Value::as_str).unwrap_or("Exact") == "Exact";
                if let (true, Some(name), Some(value)) =
                    (exact, h.get("name").and_then(Value::as_str), h.get("value").and_then(Value::as_str))
                {
                    exact_headers.push((
                        format!("matches[{i}].headers[{k}].value"),
                        name.to_ascii_lowercase(),
                        value.to_owned(),
                    ));
                }
            }
        }
        routes.push(Route {
            protocol: Protocol::Rules,
            index,
            name: raw.name,
            header_match,
            exact_headers,
            destinations,
            weights_valid,
        });
    }
    VirtualService { routes }
}

#[derive(Default, Deserialize)]
struct RawWasmPluginSpec {
    #[serde(default)]
    url: Option<String>,
    #[serde(default, rename = "pluginName")]
    plugin_name: Option<String>,
    #[serde(default, rename = "pluginConfig")]
    plugin_config: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_on_markers_and_keep_their_first_line() {
        let text = "a: 1\n---\nb: 2\n--- # c\nc: 3\n...\nd: 4\n---\n";
        let chunks = split_documents(text);
        let firsts: Vec<usize> = chunks.iter().map(|c| c.first_line).collect();
        assert_eq!(firsts, [1, 2, 4, 7, 8]);
        assert_eq!(chunks[1].text, "---\nb: 2\n");
        assert_eq!(chunks[2].text, "--- # c\nc: 3\n...\n");
        assert!(!has_content(chunks[4].text), "a trailing marker is no document");
        assert!(has_content("--- {a: 1}\n") && !has_content("# only\n---\n"));
        assert!(split_documents("").is_empty());
    }

    #[test]
    fn parser_lines_are_the_files() {
        let (e, line) = parse_yaml("a: 1\nb: [\n", 10).unwrap_err();
        assert!(e.contains("at line 12 column 1"), "{e}");
        assert_eq!(line, Some(12));
        assert_eq!(shift_lines("line 3, line x, line 40", 2), "line 5, line x, line 42");
        assert!(parse_yaml("a: 1\na: 2\n", 1).unwrap_err().0.contains("duplicate"));
    }

    #[test]
    fn weights_read_as_istio_reads_them() {
        assert_eq!(istio_weight(&serde_json::json!(90)), Ok(90));
        assert_eq!(istio_weight(&serde_json::json!(10.0)), Ok(10));
        assert!(istio_weight(&serde_json::json!(-1)).unwrap_err().contains("negative"));
        assert!(istio_weight(&serde_json::json!(12.5)).unwrap_err().contains("whole"));
        assert!(istio_weight(&serde_json::json!("90")).unwrap_err().contains("without quotes"));
        assert!(istio_weight(&serde_json::json!(3_000_000_000u64)).unwrap_err().contains("int32"));
    }
}
