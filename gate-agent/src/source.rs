//! Talking to proxies: the filter's snapshot from each proxy's loopback snapshot listener, and
//! the fast kill order sent to the same listener.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use canary_core::snapshot::Snapshot;
use canary_core::{KillOrder, KillRecord};

/// Why one proxy gave no snapshot this tick. The agent counts it as no data from that proxy and
/// keeps judging the others.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{target}: timed out after {timeout:?}")]
    Timeout { target: String, timeout: Duration },
    #[error("{target}: {message}")]
    Unreachable { target: String, message: String },
    #[error("{target}: HTTP {status}")]
    Status { target: String, status: u16 },
    #[error("{target}: {message}")]
    Invalid { target: String, message: String },
}

impl FetchError {
    /// A short, fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Timeout { .. } => "timeout",
            FetchError::Unreachable { .. } => "unreachable",
            FetchError::Status { .. } => "status",
            FetchError::Invalid { .. } => "invalid",
        }
    }
}

/// Where snapshots come from. The HTTP source reads real proxies; tests feed fabricated ones.
pub trait CounterSource: Send + Sync {
    fn fetch(&self, target: &str) -> impl Future<Output = Result<Snapshot, FetchError>> + Send;
}

/// The fast kill path: tells one proxy directly to hold the rollout's weighted canary traffic at
/// 0% (see `canary_core::kill`), without waiting for the durable configuration to travel.
pub trait KillSwitch: Send + Sync {
    fn kill(&self, target: &str, order: &KillOrder) -> impl Future<Output = Result<KillRecord, FetchError>> + Send;
}

/// Reads `http://<target><path>` with a per-request timeout, and posts kill orders to
/// `http://<target><kill_path>`.
#[derive(Debug, Clone)]
pub struct HttpSource {
    client: reqwest::Client,
    path: String,
    kill_path: String,
    timeout: Duration,
    /// Each target's snapshot URL, parsed once: formatting and parsing it on every read was 6% of
    /// the agent's instructions at 1,000 proxies (bench/PROFILE.md).
    urls: Arc<Mutex<HashMap<String, reqwest::Url>>>,
}

/// Parsed snapshot URLs kept at most; past it the cache starts over (pods come and go).
const URLS_KEPT: usize = 8_192;

/// The filter's answer to a kill order.
#[derive(Debug, serde::Deserialize)]
struct KillAnswer {
    kill: KillRecord,
}

/// Snapshots are small (a few KB); anything far larger is not one.
const MAX_SNAPSHOT_BYTES: usize = 1 << 20;

/// What the agent asks each proxy for: the compact snapshot, which a filter that predates it
/// ignores, answering the JSON form (`canary_core::snapshot` says why both exist). The answer's
/// `Content-Type` says which one came. Kept in step with `COMPACT_CONTENT_TYPE` by a unit test.
const SNAPSHOT_ACCEPT: &str = "application/vnd.canary-gate.snapshot.compact+json, application/json;q=0.5";

impl HttpSource {
    pub fn new(path: &str, kill_path: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).build()?;
        Ok(HttpSource { client, path: path.to_owned(), kill_path: kill_path.to_owned(), timeout, urls: Arc::default() })
    }

    /// `http://<target><path>`, parsed the first time `target` is read.
    fn snapshot_url(&self, target: &str) -> Result<reqwest::Url, FetchError> {
        let mut urls = self.urls.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(url) = urls.get(target) {
            return Ok(url.clone());
        }
        let url = reqwest::Url::parse(&format!("http://{target}{}", self.path)).map_err(|e| {
            FetchError::Unreachable { target: target.to_owned(), message: format!("snapshot URL: {e}") }
        })?;
        if urls.len() >= URLS_KEPT {
            urls.clear();
        }
        urls.insert(target.to_owned(), url.clone());
        Ok(url)
    }

    fn failure(&self, target: &str, e: &reqwest::Error) -> FetchError {
        if e.is_timeout() {
            FetchError::Timeout { target: target.to_owned(), timeout: self.timeout }
        } else {
            FetchError::Unreachable { target: target.to_owned(), message: e.to_string() }
        }
    }
}

impl KillSwitch for HttpSource {
    async fn kill(&self, target: &str, order: &KillOrder) -> Result<KillRecord, FetchError> {
        let url = format!("http://{target}{}?{}", self.kill_path, order.to_query());
        let resp = self.client.post(&url).send().await.map_err(|e| self.failure(target, &e))?;
        if !resp.status().is_success() {
            return Err(FetchError::Status { target: target.to_owned(), status: resp.status().as_u16() });
        }
        let body = resp.bytes().await.map_err(|e| self.failure(target, &e))?;
        serde_json::from_slice::<KillAnswer>(&body)
            .map(|a| a.kill)
            .map_err(|e| FetchError::Invalid { target: target.to_owned(), message: format!("kill answer: {e}") })
    }
}

impl CounterSource for HttpSource {
    async fn fetch(&self, target: &str) -> Result<Snapshot, FetchError> {
        let url = self.snapshot_url(target)?;
        let fail = |e: reqwest::Error| self.failure(target, &e);
        let resp = self.client.get(url).header(reqwest::header::ACCEPT, SNAPSHOT_ACCEPT).send().await.map_err(fail)?;
        if !resp.status().is_success() {
            return Err(FetchError::Status { target: target.to_owned(), status: resp.status().as_u16() });
        }
        if resp.content_length().is_some_and(|n| n > MAX_SNAPSHOT_BYTES as u64) {
            return Err(FetchError::Invalid { target: target.to_owned(), message: "snapshot too large".into() });
        }
        let content_type = resp.headers().get(reqwest::header::CONTENT_TYPE).cloned();
        let body = resp.bytes().await.map_err(fail)?;
        if body.len() > MAX_SNAPSHOT_BYTES {
            return Err(FetchError::Invalid { target: target.to_owned(), message: "snapshot too large".into() });
        }
        Snapshot::from_body(content_type.as_ref().map(reqwest::header::HeaderValue::as_bytes), &body)
            .map_err(|e| FetchError::Invalid { target: target.to_owned(), message: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_core::snapshot::{COMPACT_CONTENT_TYPE, accepts_compact};

    #[test]
    fn the_agent_asks_for_the_compact_form_first() {
        assert!(accepts_compact(SNAPSHOT_ACCEPT.as_bytes()));
        assert!(SNAPSHOT_ACCEPT.starts_with(COMPACT_CONTENT_TYPE));
    }
}
