//! Sending requests through Envoy and tallying where they went.

use std::collections::BTreeMap;

/// Where a batch of requests ended up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests per `x-served-by` backend name ("none" when Envoy answered itself).
    pub served_by: BTreeMap<String, u64>,
    /// Requests per status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no response at all.
    pub errors: u64,
}

impl Tally {
    pub fn served(&self, name: &str) -> u64 {
        self.served_by.get(name).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.served_by.values().sum::<u64>() + self.errors
    }
}

/// Sends `n` GET requests to `url` with `headers`, `concurrency` at a time.
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, String)],
    n: u64,
    concurrency: usize,
) -> Tally {
    let mut tally = Tally::default();
    let mut sent = 0u64;
    while sent < n {
        let batch = (n - sent).min(concurrency.max(1) as u64);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let mut req = client.get(url);
            for (k, v) in headers {
                req = req.header(*k, v.as_str());
            }
            tasks.spawn(async move { req.send().await });
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(resp)) => {
                    let by =
                        resp.headers().get("x-served-by").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned();
                    *tally.served_by.entry(by).or_default() += 1;
                    *tally.statuses.entry(resp.status().as_u16()).or_default() += 1;
                    let _ = resp.bytes().await;
                }
                _ => tally.errors += 1,
            }
        }
        sent += batch;
    }
    tally
}
