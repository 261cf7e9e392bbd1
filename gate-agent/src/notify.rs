//! Telling people: an optional webhook for phase changes and foreign writes.

use std::time::Duration;

use serde::Serialize;

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The rollout moved from one phase to another.
    PhaseChange,
    /// Someone else wrote the rollout's weight, revision or record (`from` and `to` are then the
    /// phase the rollout was in, and the weight is the foreign one).
    ForeignWrite,
}

/// One notification: which rollout, what changed, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    pub kind: NoticeKind,
    pub rollout: String,
    pub from: String,
    pub to: String,
    pub weight_percent: f64,
    pub reason: String,
}

/// Where notices go. Failing to notify never blocks a decision.
pub trait Notifier: Send + Sync {
    fn post(&self, notice: &Notice) -> impl Future<Output = Result<(), String>> + Send;
}

/// An optional notifier: `None` notifies nobody.
impl<N: Notifier> Notifier for Option<N> {
    async fn post(&self, notice: &Notice) -> Result<(), String> {
        match self {
            Some(n) => n.post(notice).await,
            None => Ok(()),
        }
    }
}

/// Notifies nobody.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNotifier;

impl Notifier for NoNotifier {
    async fn post(&self, _notice: &Notice) -> Result<(), String> {
        Ok(())
    }
}

/// POSTs each notice as JSON to a URL (Slack-compatible: it also carries a `text` field).
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    client: reqwest::Client,
    url: String,
}

impl WebhookNotifier {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(WebhookNotifier { client: reqwest::Client::builder().timeout(timeout).build()?, url: url.to_owned() })
    }
}

impl Notifier for WebhookNotifier {
    async fn post(&self, notice: &Notice) -> Result<(), String> {
        let text = match notice.kind {
            NoticeKind::PhaseChange => format!(
                "canary-gate {}: {} -> {} at {}% ({})",
                notice.rollout, notice.from, notice.to, notice.weight_percent, notice.reason
            ),
            NoticeKind::ForeignWrite => format!("canary-gate {}: {}", notice.rollout, notice.reason),
        };
        let body = serde_json::json!({ "text": text, "notice": notice });
        let resp = self.client.post(&self.url).json(&body).send().await.map_err(|e| e.to_string())?;
        if resp.status().is_success() { Ok(()) } else { Err(format!("webhook answered {}", resp.status())) }
    }
}
