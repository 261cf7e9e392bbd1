//! A **test double** of the Kubernetes API server: an in-process HTTP server on loopback that the
//! real `kube` client talks to. It is not Kubernetes, and it is used only for faults a real API
//! server cannot be made to produce on cue: `tests/mesh_faults.rs` (a 500, answers slower than the
//! client's timeout, an edit landing exactly between the router's read and its write, a leader
//! whose renewals are refused). Everything else (router, Lease, discovery, Events, agent
//! processes, RBAC, re-applied manifests, fencing, a slow API server) runs against a real
//! kube-apiserver: `tests/mesh.rs` and `tests/mesh_agents.rs` with `tests/support/kube.rs`.
//! It behaves like the API server only where gate-agent depends on it:
//!
//! * every object carries a `metadata.resourceVersion` from one global counter, bumped on every
//!   write; `uid`, `creationTimestamp` and `generateName` are filled in on create;
//! * `PUT` (replace) and `PATCH` with a `metadata.resourceVersion` that is not the current one
//!   answer **409 Conflict**; without one they apply unconditionally, as Kubernetes does;
//! * `PATCH` with `application/merge-patch+json` follows RFC 7386 (objects merge, `null` deletes,
//!   everything else replaces);
//! * errors are `Status` bodies (`kind: Status`, `reason`, `code`, `details`): 404 NotFound,
//!   409 Conflict / AlreadyExists, 500 InternalError, 415 for other patch types;
//! * collections list with `labelSelector` equality terms (`app=web,version=v1`).
//!
//! Faults are injected per request: the next N requests fail with 500, every request is delayed,
//! requests that would make a given identity the Lease holder fail, or a concurrent edit lands
//! between an agent's read and its write.
#![allow(dead_code)] // each test binary uses a different part of it

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A mutation applied to a stored object just before the next write to it is handled, as if
/// another client had written in between (its resourceVersion is bumped too).
pub type Interloper = Box<dyn FnOnce(&mut Value) + Send>;

#[derive(Default)]
struct Store {
    /// Path of the object (`/apis/g/v/namespaces/ns/plural/name`) to the object.
    objects: BTreeMap<String, Value>,
    version: u64,
    uid: u64,
    fail_next: u32,
    delay: Duration,
    /// Lease writes that would make this identity the holder fail with 500.
    refuse_holder: Option<String>,
    interlopers: BTreeMap<String, Interloper>,
    /// (method, path, status) of every request.
    log: Vec<(String, String, u16)>,
}

/// The running test double.
#[derive(Clone)]
pub struct FakeApiServer {
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [("content-type", "application/json")], body.to_string()).into_response()
}

fn ok(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| match term.split_once('=') {
        Some((k, v)) => obj["metadata"]["labels"][k.trim()].as_str() == Some(v.trim_start_matches('=').trim()),
        None => false,
    })
}

/// Splits `/api/v1/namespaces/ns/plural[/name]` or `/apis/g/v/namespaces/ns/plural[/name]` into
/// (collection path, name).
fn split(path: &str) -> Option<(String, Option<String>)> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let base = match parts.get(1) {
        Some(&"api") => 3,  // "", api, v1
        Some(&"apis") => 4, // "", apis, group, version
        _ => return None,
    };
    if parts.get(base) != Some(&"namespaces") {
        return None;
    }
    let collection_len = base + 3; // namespaces, ns, plural
    match parts.len() {
        n if n == collection_len => Some((parts.join("/"), None)),
        n if n == collection_len + 1 => {
            Some((parts[..collection_len].join("/"), parts.last().map(|s| (*s).to_owned())))
        }
        _ => None,
    }
}

async fn handle(
    State(store): State<Arc<Mutex<Store>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delay = store.lock().unwrap().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or_default().to_owned();
    let resp = respond(&store, &method, &path, &query, &headers, &body);
    store.lock().unwrap().log.push((method.to_string(), path, resp.status().as_u16()));
    resp
}

fn respond(
    store: &Mutex<Store>,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let mut s = store.lock().unwrap();
    if s.fail_next > 0 {
        s.fail_next -= 1;
        return status(500, "InternalError", "injected failure".into());
    }
    let Some((collection, name)) = split(path) else {
        return status(404, "NotFound", format!("no such path {path}"));
    };
    let parsed: Option<Value> = if body.is_empty() { None } else { serde_json::from_slice(body).ok() };
    match (method.as_str(), name) {
        ("GET", Some(name)) => {
            let key = format!("{collection}/{name}");
            match s.objects.get(&key) {
                Some(obj) => ok(StatusCode::OK, obj),
                None => status(404, "NotFound", format!("\"{name}\" not found")),
            }
        }
        ("GET", None) => {
            let selector = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("labelSelector="))
                .map(|v| v.replace("%3D", "=").replace("%2C", ","))
                .unwrap_or_default();
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|(k, o)| k.starts_with(&format!("{collection}/")) && labels_match(o, &selector))
                .map(|(_, o)| o.clone())
                .collect();
            let rv = s.version.to_string();
            ok(
                StatusCode::OK,
                &json!({ "kind": "List", "apiVersion": "v1", "metadata": { "resourceVersion": rv }, "items": items }),
            )
        }
        ("POST", None) => {
            let Some(mut obj) = parsed else { return status(400, "BadRequest", "body is not JSON".into()) };
            let name = match (obj["metadata"]["name"].as_str(), obj["metadata"]["generateName"].as_str()) {
                (Some(n), _) => n.to_owned(),
                (None, Some(prefix)) => format!("{prefix}{:05}", s.uid + 1),
                (None, None) => return status(400, "BadRequest", "metadata.name is required".into()),
            };
            let key = format!("{collection}/{name}");
            if s.objects.contains_key(&key) {
                return status(409, "AlreadyExists", format!("\"{name}\" already exists"));
            }
            if let Some(refused) = &s.refuse_holder
                && obj["spec"]["holderIdentity"].as_str() == Some(refused.as_str())
            {
                return status(500, "InternalError", "injected failure for this holder".into());
            }
            s.version += 1;
            s.uid += 1;
            obj["metadata"]["name"] = json!(name);
            obj["metadata"]["resourceVersion"] = json!(s.version.to_string());
            obj["metadata"]["uid"] = json!(format!("uid-{}", s.uid));
            obj["metadata"]["creationTimestamp"] = json!("2026-11-25T00:00:00Z");
            s.objects.insert(key, obj.clone());
            ok(StatusCode::CREATED, &obj)
        }
        ("PUT" | "PATCH", Some(name)) => {
            let key = format!("{collection}/{name}");
            if let Some(interlope) = s.interlopers.remove(&key)
                && let Some(obj) = s.objects.get_mut(&key)
            {
                interlope(obj);
                s.version += 1;
                let v = s.version.to_string();
                if let Some(obj) = s.objects.get_mut(&key) {
                    obj["metadata"]["resourceVersion"] = json!(v);
                }
            }
            let Some(current) = s.objects.get(&key).cloned() else {
                return status(404, "NotFound", format!("\"{name}\" not found"));
            };
            let Some(body) = parsed else { return status(400, "BadRequest", "body is not JSON".into()) };
            let mut next = if method == Method::PUT {
                body.clone()
            } else {
                let kind = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
                if !kind.starts_with("application/merge-patch+json") {
                    return status(415, "UnsupportedMediaType", format!("patch type {kind:?} is not supported here"));
                }
                let mut merged = current.clone();
                merge_patch(&mut merged, &body);
                merged
            };
            if let Some(want) = body["metadata"]["resourceVersion"].as_str()
                && Some(want) != current["metadata"]["resourceVersion"].as_str()
            {
                return status(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                    ),
                );
            }
            if let Some(refused) = &s.refuse_holder
                && next["spec"]["holderIdentity"].as_str() == Some(refused.as_str())
            {
                return status(500, "InternalError", "injected failure for this holder".into());
            }
            s.version += 1;
            next["metadata"]["resourceVersion"] = json!(s.version.to_string());
            next["metadata"]["uid"] = current["metadata"]["uid"].clone();
            next["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
            s.objects.insert(key, next.clone());
            ok(StatusCode::OK, &next)
        }
        (m, _) => status(405, "MethodNotAllowed", format!("{m} {path} is not supported by this test double")),
    }
}

impl FakeApiServer {
    /// Starts the double on a free loopback port.
    pub async fn start() -> FakeApiServer {
        let store = Arc::new(Mutex::new(Store::default()));
        let app = axum::Router::new().fallback(handle).with_state(Arc::clone(&store));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApiServer { addr, store }
    }

    /// A `kube` client for it, in namespace `ns`.
    pub fn client(&self, ns: &str) -> kube::Client {
        let mut config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        config.default_namespace = ns.to_owned();
        config.read_timeout = Some(Duration::from_secs(5));
        kube::Client::try_from(config).unwrap()
    }

    /// Stores `obj` under `collection` (e.g. `/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins`).
    pub fn put(&self, collection: &str, mut obj: Value) {
        let mut s = self.store.lock().unwrap();
        s.version += 1;
        s.uid += 1;
        obj["metadata"]["resourceVersion"] = json!(s.version.to_string());
        obj["metadata"]["uid"] = json!(format!("uid-{}", s.uid));
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        s.objects.insert(format!("{collection}/{name}"), obj);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.store.lock().unwrap().objects.get(path).cloned()
    }

    /// Every stored object under a collection.
    pub fn list(&self, collection: &str) -> Vec<Value> {
        let s = self.store.lock().unwrap();
        s.objects.iter().filter(|(k, _)| k.starts_with(&format!("{collection}/"))).map(|(_, v)| v.clone()).collect()
    }

    pub fn remove(&self, path: &str) {
        self.store.lock().unwrap().objects.remove(path);
    }

    pub fn fail_next(&self, n: u32) {
        self.store.lock().unwrap().fail_next = n;
    }

    pub fn set_delay(&self, d: Duration) {
        self.store.lock().unwrap().delay = d;
    }

    pub fn refuse_holder(&self, identity: Option<&str>) {
        self.store.lock().unwrap().refuse_holder = identity.map(str::to_owned);
    }

    /// Before the next write to `path`, applies `edit` as another client's write.
    pub fn interlope(&self, path: &str, edit: Interloper) {
        self.store.lock().unwrap().interlopers.insert(path.to_owned(), edit);
    }

    pub fn log(&self) -> Vec<(String, String, u16)> {
        self.store.lock().unwrap().log.clone()
    }
}
