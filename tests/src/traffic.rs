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

/// Which backend answered: its `x-served-by` header, or "none" when Envoy answered itself.
pub fn served_by(resp: &reqwest::Response) -> String {
    resp.headers().get("x-served-by").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned()
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
                    let by = served_by(&resp);
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

/// One request of a [`Steady`] stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Order of sending.
    pub seq: u64,
    /// When it was sent, since the stream started.
    pub sent: std::time::Duration,
    /// `x-served-by` ("none" when Envoy answered itself, "error" when no response came).
    pub served_by: String,
    pub status: u16,
}

/// Open-loop traffic at a fixed rate: a request every `1/rps` seconds whatever the latency (a slow
/// canary does not slow the stream down), each recorded when it completes.
#[derive(Debug)]
pub struct Steady {
    samples: std::sync::Arc<std::sync::Mutex<Vec<Sample>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    started: std::time::Instant,
}

impl Steady {
    pub fn start(client: reqwest::Client, url: String, rps: u32) -> Steady {
        use std::sync::atomic::Ordering;
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = std::time::Instant::now();
        let (s, st) = (std::sync::Arc::clone(&samples), std::sync::Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1) / rps.max(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut seq = 0u64;
            while !st.load(Ordering::SeqCst) {
                every.tick().await;
                let (client, url, s) = (client.clone(), url.clone(), std::sync::Arc::clone(&s));
                let sent = started.elapsed();
                tokio::spawn(async move {
                    let (served_by, status) = match client.get(&url).send().await {
                        Ok(resp) => {
                            let by = served_by(&resp);
                            let status = resp.status().as_u16();
                            let _ = resp.bytes().await;
                            (by, status)
                        }
                        Err(_) => ("error".to_owned(), 0),
                    };
                    if let Ok(mut v) = s.lock() {
                        v.push(Sample { seq, sent, served_by, status });
                    }
                });
                seq += 1;
            }
        });
        Steady { samples, stop, task, started }
    }

    /// Time since the stream started.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Completed samples so far, in sending order.
    pub fn samples(&self) -> Vec<Sample> {
        let mut v = self.samples.lock().map(|v| v.clone()).unwrap_or_default();
        v.sort_by_key(|s| s.seq);
        v
    }

    /// Stops sending, lets requests in flight finish (up to `grace`), and returns every sample.
    pub async fn stop(self, grace: std::time::Duration) -> Vec<Sample> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let Steady { samples, task, .. } = self;
        let _ = task.await;
        tokio::time::sleep(grace).await;
        let mut v = samples.lock().map(|v| v.clone()).unwrap_or_default();
        v.sort_by_key(|s| s.seq);
        v
    }
}

/// How fast a failing canary was pulled: from the first failed canary response (by send time) to
/// the first of `run` consecutive requests all served by `stable`, after which no request reached
/// the canary at all. `None` when the canary never failed or was never cut off.
pub fn time_to_zero(samples: &[Sample], stable: &str, canary: &str, run: usize) -> Option<std::time::Duration> {
    let first_failure = samples.iter().find(|s| s.served_by == canary && s.status >= 500)?;
    let last_canary = samples.iter().rposition(|s| s.served_by == canary)?;
    let after = samples.get(last_canary.saturating_add(1)..)?;
    if after.len() < run || after.iter().take(run).any(|s| s.served_by != stable) {
        return None;
    }
    let cut = after.first()?;
    Some(cut.sent.saturating_sub(first_failure.sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(seq: u64, ms: u64, by: &str, status: u16) -> Sample {
        Sample { seq, sent: std::time::Duration::from_millis(ms), served_by: by.into(), status }
    }

    #[test]
    fn time_to_zero_counts_from_the_first_canary_failure_to_the_last_canary_request() {
        let mut v = vec![s(0, 0, "v1", 200), s(1, 5, "v2", 200), s(2, 10, "v2", 500), s(3, 15, "v1", 200)];
        v.push(s(4, 20, "v2", 500));
        for i in 5..10 {
            v.push(s(i, i * 5, "v1", 200));
        }
        assert_eq!(time_to_zero(&v, "v1", "v2", 5), Some(std::time::Duration::from_millis(15)));
        assert_eq!(time_to_zero(&v, "v1", "v2", 6), None, "only five stable requests after the last canary one");
        assert_eq!(time_to_zero(&v[..2], "v1", "v2", 1), None, "no failure, nothing to measure");
    }
}
