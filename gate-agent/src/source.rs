//! Collecting counters: the filter's snapshot from each proxy's loopback snapshot listener.

use std::time::Duration;

use canary_core::snapshot::Snapshot;

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

/// Reads `http://<target><path>` with a per-request timeout.
#[derive(Debug, Clone)]
pub struct HttpSource {
    client: reqwest::Client,
    path: String,
    timeout: Duration,
}

/// Snapshots are small (a few KB); anything far larger is not one.
const MAX_SNAPSHOT_BYTES: usize = 1 << 20;

impl HttpSource {
    pub fn new(path: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).build()?;
        Ok(HttpSource { client, path: path.to_owned(), timeout })
    }
}

impl CounterSource for HttpSource {
    async fn fetch(&self, target: &str) -> Result<Snapshot, FetchError> {
        let url = format!("http://{target}{}", self.path);
        let fail = |e: reqwest::Error| {
            if e.is_timeout() {
                FetchError::Timeout { target: target.to_owned(), timeout: self.timeout }
            } else {
                FetchError::Unreachable { target: target.to_owned(), message: e.to_string() }
            }
        };
        let resp = self.client.get(&url).send().await.map_err(fail)?;
        if !resp.status().is_success() {
            return Err(FetchError::Status { target: target.to_owned(), status: resp.status().as_u16() });
        }
        if resp.content_length().is_some_and(|n| n > MAX_SNAPSHOT_BYTES as u64) {
            return Err(FetchError::Invalid { target: target.to_owned(), message: "snapshot too large".into() });
        }
        let body = resp.bytes().await.map_err(fail)?;
        if body.len() > MAX_SNAPSHOT_BYTES {
            return Err(FetchError::Invalid { target: target.to_owned(), message: "snapshot too large".into() });
        }
        Snapshot::from_json(&body)
            .map_err(|e| FetchError::Invalid { target: target.to_owned(), message: e.to_string() })
    }
}
