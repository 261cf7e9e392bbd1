//! The load and what is watched while it runs: open-loop requests at a fixed rate, every answer
//! counted by the backend that served it; Envoy's snapshot read every 200 ms for the weight and
//! revision it applies; resident memory and CPU sampled for the memory checks and `memory.csv`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canary_core::{Role, Snapshot};

use super::{Cpu, Options, Rig, mib, percent_text};

/// How often the driver reads Envoy's snapshot to see the weight it applies.
pub(super) const SNAPSHOT_EVERY: Duration = Duration::from_millis(200);
/// Time allowed for requests in flight to finish once the load stops.
pub(super) const DRAIN: Duration = Duration::from_secs(15);

/// What the load generator saw.
#[derive(Debug, Default)]
pub(super) struct Answers {
    /// 200 answers per backend (`x-served-by`).
    pub(super) served: BTreeMap<String, u64>,
    /// Any other answer: `"<status> from <x-served-by or none>"`.
    pub(super) other: BTreeMap<String, u64>,
    /// No answer (connection refused or reset, timeout, a body cut short).
    pub(super) transport_errors: u64,
    /// The first few problems, for the report.
    pub(super) examples: Vec<String>,
    /// Latency of every answer, in µs.
    pub(super) latencies_us: Vec<u32>,
}

impl Answers {
    pub(super) const EXAMPLES: usize = 10;

    pub(super) fn record(&mut self, outcome: Result<(String, u16), String>, latency: Duration) {
        match outcome {
            Ok((by, 200)) if by == "v1" || by == "v2" => *self.served.entry(by).or_default() += 1,
            Ok((by, status)) => {
                let what = format!("{status} from {by}");
                if self.examples.len() < Self::EXAMPLES {
                    self.examples.push(what.clone());
                }
                *self.other.entry(what).or_default() += 1;
            }
            Err(e) => {
                if self.examples.len() < Self::EXAMPLES {
                    self.examples.push(e);
                }
                self.transport_errors += 1;
            }
        }
        self.latencies_us.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    pub(super) fn answered(&self) -> u64 {
        self.served.values().sum::<u64>() + self.other.values().sum::<u64>()
    }

    pub(super) fn served(&self, backend: &str) -> u64 {
        self.served.get(backend).copied().unwrap_or(0)
    }
}

/// Open-loop load at a fixed rate: a request every `1/rps` s whatever the answers take, each
/// counted when sent and when it ends. Unlike `traffic::Steady` it knows how many it sent and
/// how many are still in flight, so a lost request cannot hide at the end of the run.
#[derive(Debug)]
pub(super) struct Load {
    pub(super) sent: Arc<AtomicU64>,
    pub(super) in_flight: Arc<AtomicU64>,
    pub(super) answers: Arc<Mutex<Answers>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) task: tokio::task::JoinHandle<()>,
    pub(super) started: Instant,
}

impl Load {
    pub(super) fn start(client: reqwest::Client, url: String, rps: u32) -> Load {
        let sent = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicU64::new(0));
        let answers = Arc::new(Mutex::new(Answers::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, f, a, st) = (Arc::clone(&sent), Arc::clone(&in_flight), Arc::clone(&answers), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1) / rps.max(1));
            // A driver that was descheduled catches up, so the total stays rps × seconds.
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                every.tick().await;
                if st.load(Ordering::SeqCst) {
                    break;
                }
                s.fetch_add(1, Ordering::SeqCst);
                f.fetch_add(1, Ordering::SeqCst);
                let (client, url, a, f) = (client.clone(), url.clone(), Arc::clone(&a), Arc::clone(&f));
                tokio::spawn(async move {
                    let began = Instant::now();
                    let outcome = match client.get(&url).send().await {
                        Ok(resp) => {
                            let by = canary_e2e::traffic::served_by(&resp);
                            let status = resp.status().as_u16();
                            match resp.bytes().await {
                                Ok(_) => Ok((by, status)),
                                Err(e) => Err(format!("{status} from {by}, body cut short: {e}")),
                            }
                        }
                        Err(e) => Err(format!("no answer: {e}")),
                    };
                    let latency = began.elapsed();
                    if let Ok(mut answers) = a.lock() {
                        answers.record(outcome, latency);
                    }
                    f.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Load { sent, in_flight, answers, stop, task, started: Instant::now() }
    }

    pub(super) fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    pub(super) fn answered(&self) -> u64 {
        self.answers.lock().map(|a| a.answered()).unwrap_or(0)
    }

    /// Stops sending and waits up to `within` for requests in flight. Returns how long the load
    /// ran, what it saw, and how many requests were still unfinished.
    pub(super) async fn stop(self, within: Duration) -> (Duration, u64, Answers, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let ran = self.started.elapsed();
        let _ = self.task.await;
        let deadline = Instant::now() + within;
        while self.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let unfinished = self.in_flight.load(Ordering::SeqCst);
        let answers = self.answers.lock().map(|mut a| std::mem::take(&mut *a)).unwrap_or_default();
        (ran, self.sent.load(Ordering::SeqCst), answers, unfinished)
    }
}

/// What the driver saw of the weights Envoy applied, from its snapshots.
#[derive(Debug, Default)]
pub(super) struct WeightWatch {
    pub(super) reads: u64,
    pub(super) read_errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) weight_changes: u64,
    pub(super) revision_changes: u64,
    pub(super) first_revision: Option<u64>,
    pub(super) revision: u64,
    pub(super) weight_bp: Option<u16>,
    pub(super) instances: Vec<String>,
    /// Times a subset's counters were lower than on the previous read.
    pub(super) counters_backwards: u64,
    pub(super) last_counts: Option<(u64, u64)>,
}

impl WeightWatch {
    pub(super) fn observe(&mut self, snap: Result<Snapshot, String>) {
        let snap = match snap {
            Ok(s) => s,
            Err(e) => {
                self.read_errors += 1;
                self.first_error.get_or_insert(e);
                return;
            }
        };
        self.reads += 1;
        if !self.instances.contains(&snap.instance.id) {
            self.instances.push(snap.instance.id.clone());
        }
        let counts = subset_requests(&snap);
        if let Some((s0, c0)) = self.last_counts
            && (counts.0 < s0 || counts.1 < c0)
        {
            self.counters_backwards += 1;
        }
        self.last_counts = Some(counts);
        if let Some(r) = &snap.route {
            let bp = r.canary_weight.basis_points();
            if self.weight_bp.is_some_and(|w| w != bp) {
                self.weight_changes += 1;
            }
            if self.first_revision.is_some() && r.revision != self.revision {
                self.revision_changes += 1;
            }
            self.first_revision.get_or_insert(r.revision);
            self.weight_bp = Some(bp);
            self.revision = r.revision;
        }
    }
}

/// (stable, canary) requests in a snapshot.
pub(super) fn subset_requests(s: &Snapshot) -> (u64, u64) {
    let n = |role| s.subset(role).map_or(0, |x| x.counters.requests);
    (n(Role::Stable), n(Role::Canary))
}

/// One sample of the memory-over-time series.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    pub(super) t_s: f64,
    pub(super) envoy_rss: u64,
    pub(super) agent_rss: u64,
    /// Bytes Envoy's own allocator has handed out (admin `/memory`), when it answered: tells
    /// growth of Envoy's C++ heap apart from V8's and the wasm module's memory, which it does not
    /// count.
    pub(super) envoy_heap_allocated: Option<u64>,
    pub(super) envoy_cpu_s: f64,
    pub(super) agent_cpu_s: f64,
    pub(super) driver_cpu_s: f64,
    pub(super) sent: u64,
    pub(super) answered: u64,
    pub(super) revision: u64,
    pub(super) weight_bp: Option<u16>,
}

pub(super) async fn snapshot_of(client: &reqwest::Client, url: &str) -> Result<Snapshot, String> {
    let r = client.get(url).send().await.map_err(|e| format!("snapshot: {e}"))?;
    let status = r.status();
    let body = r.bytes().await.map_err(|e| format!("snapshot body: {e}"))?;
    if !status.is_success() {
        return Err(format!("snapshot: {status}: {}", String::from_utf8_lossy(&body)));
    }
    Snapshot::from_json(&body).map_err(|e| e.to_string())
}

/// What happened while the load ran.
#[derive(Debug)]
pub(super) struct Driven {
    pub(super) ran: Duration,
    pub(super) sent: u64,
    pub(super) answers: Answers,
    pub(super) unfinished: u64,
    pub(super) samples: Vec<Sample>,
    pub(super) sample_every: Duration,
    pub(super) watch: WeightWatch,
    /// Weight and revision changes Envoy applied while the load ran.
    pub(super) weight_changes: u64,
    pub(super) revision_changes: u64,
    pub(super) ecds_before: (u64, u64),
    pub(super) cpu_before: Cpu,
    /// Envoy or the agent went away (the run stopped early).
    pub(super) gone: Option<String>,
}

/// Runs the load for `o.seconds`, reading Envoy's snapshot every 200 ms and sampling memory and
/// CPU, then stops it and lets requests in flight finish.
pub(super) async fn drive(rig: &Rig, o: &Options) -> Driven {
    let duration = Duration::from_secs(o.seconds);
    let sample_every = Duration::from_secs((o.seconds / 150).max(1));
    let progress_every = Duration::from_secs((o.seconds / 10).max(10));
    println!(
        "soak: {} s at {} req/s; Envoy pid {} (http://{}), agent pid {} (http://{}/status), RSS every {} s",
        o.seconds,
        o.rps,
        rig.fx.envoy.pid(),
        rig.fx.envoy.public,
        rig.agent.pid(),
        rig.agent.api,
        sample_every.as_secs()
    );
    let ecds_before = rig.ecds().await;
    let cpu_before = rig.cpu();
    let mut watch = WeightWatch::default();
    watch.observe(rig.snapshot().await);
    let (weight_changes_before, revision_changes_before) = (watch.weight_changes, watch.revision_changes);
    let load = Load::start(rig.fx.envoy.http().clone(), rig.fx.envoy.url("/"), o.rps);
    let mut samples = Vec::new();
    let mut gone = None;
    let (mut next_sample, mut next_progress) = (Duration::ZERO, progress_every);
    let mut ticks = tokio::time::interval(SNAPSHOT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let t = load.started.elapsed();
        if t >= duration {
            break;
        }
        watch.observe(rig.snapshot().await);
        if t < next_sample {
            continue;
        }
        next_sample += sample_every;
        let (envoy_rss, agent_rss) = match rig.rss() {
            Ok(rss) => rss,
            Err(e) => {
                gone = Some(e);
                break;
            }
        };
        let cpu = rig.cpu().since(cpu_before);
        let s = Sample {
            t_s: t.as_secs_f64(),
            envoy_rss,
            agent_rss,
            envoy_heap_allocated: rig.heap_allocated().await,
            envoy_cpu_s: cpu.envoy,
            agent_cpu_s: cpu.agent,
            driver_cpu_s: cpu.driver,
            sent: load.sent(),
            answered: load.answered(),
            revision: watch.revision,
            weight_bp: watch.weight_bp,
        };
        if t >= next_progress {
            next_progress += progress_every;
            println!(
                "{:>6.0} s  sent {:>7}  answered {:>7}  canary {:>6}%  revision {:>5}  Envoy {}  agent {}",
                s.t_s,
                s.sent,
                s.answered,
                s.weight_bp.map_or_else(|| "-".to_owned(), |bp| percent_text(u32::from(bp))),
                s.revision,
                mib(s.envoy_rss),
                mib(s.agent_rss)
            );
        }
        samples.push(s);
    }
    let (ran, sent, answers, unfinished) = load.stop(DRAIN).await;
    Driven {
        ran,
        sent,
        answers,
        unfinished,
        samples,
        sample_every,
        weight_changes: watch.weight_changes - weight_changes_before,
        revision_changes: watch.revision_changes - revision_changes_before,
        watch,
        ecds_before,
        cpu_before,
        gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_backend_200_is_an_answer_the_backends_sent() {
        let mut a = Answers::default();
        a.record(Ok(("v1".into(), 200)), Duration::from_millis(1));
        a.record(Ok(("v2".into(), 200)), Duration::from_millis(1));
        a.record(Ok(("none".into(), 503)), Duration::from_millis(1));
        a.record(Ok(("v2".into(), 500)), Duration::from_millis(1));
        a.record(Err("no answer: reset".into()), Duration::from_millis(1));
        assert_eq!((a.served("v1"), a.served("v2"), a.answered(), a.transport_errors), (1, 1, 4, 1));
        assert_eq!(a.other.keys().collect::<Vec<_>>(), ["500 from v2", "503 from none"]);
        assert_eq!(a.latencies_us.len(), 5);
    }
}
