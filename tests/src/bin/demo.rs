//! `make demo`: real Envoy with canary-filter in front of two local backends, steady traffic,
//! and the canary weight moved through Envoy's watched directory, as gate-agent will do it.
//! Shows the configured weight next to the split that Envoy actually made and the filter's
//! per-subset counters, then stops by itself.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use canary_core::counters::SubsetCounters;
use canary_core::snapshot::Snapshot;
use canary_core::split::Role;
use canary_e2e::{Fixture, route};

const RATE_PER_SEC: u64 = 200;
const STEP: Duration = Duration::from_secs(3);

fn fmt_ms(us: Option<u64>) -> String {
    us.map_or("-".into(), |us| format!("{:.1}ms", us as f64 / 1000.0))
}

fn describe(c: &SubsetCounters) -> String {
    format!(
        "{:>6} req {:>4} fail  p50 {:>7} p99 {:>7}",
        c.requests,
        c.failures,
        fmt_ms(c.latency.quantile(0.5)),
        fmt_ms(c.latency.quantile(0.99))
    )
}

fn counters(s: &Snapshot, role: Role) -> SubsetCounters {
    s.subset(role).map(|x| x.counters.clone()).unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "canary-gate demo: Envoy {} + canary-filter, backends v1 (stable) and v2 (canary)",
        env!("CARGO_PKG_VERSION")
    );
    let f = Arc::new(Fixture::start(route(0.0, 1, r#","sticky":{"header":"x-user-id"}"#)?, 2).await?);
    println!(
        "Envoy pid {} public http://{}  snapshot http://{}{}  admin http://{}",
        f.envoy.pid(),
        f.envoy.public,
        f.envoy.snapshot,
        canary_core::config::DEFAULT_SNAPSHOT_PATH,
        f.envoy.admin
    );
    println!(
        "traffic: {RATE_PER_SEC} requests/s, one in four with a sticky x-user-id; the canary fails 2% of its requests\n"
    );
    f.canary.fail_per_mille(20);

    let running = Arc::new(AtomicBool::new(true));
    let load = {
        let (f, running) = (Arc::clone(&f), Arc::clone(&running));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE_PER_SEC));
            let mut n = 0u64;
            while running.load(Ordering::SeqCst) {
                tick.tick().await;
                n += 1;
                let mut req = f.envoy.http().get(f.envoy.url("/"));
                if n.is_multiple_of(4) {
                    req = req.header("x-user-id", format!("user-{}", n % 97));
                }
                tokio::spawn(async move {
                    let _ = req.send().await;
                });
            }
        })
    };

    let tty = std::io::stdout().is_terminal();
    let mut rows = Vec::new();
    for (revision, weight) in [(1u64, 0.0), (2, 5.0), (3, 25.0), (4, 50.0)] {
        if revision > 1 {
            let started = Instant::now();
            f.envoy.write_route(&route(weight, revision, r#","sticky":{"header":"x-user-id"}"#)?)?;
            f.envoy.wait_for_revision(revision, Duration::from_secs(5)).await?;
            println!("\nweight -> {weight}% (revision {revision}) applied in {:?}, no restart", started.elapsed());
        }
        let start = f.envoy.snapshot().await?;
        let deadline = Instant::now() + STEP;
        let mut last = start.clone();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            last = f.envoy.snapshot().await?;
            let (s, c) = (counters(&last, Role::Stable), counters(&last, Role::Canary));
            let line = format!("  v1 {} | v2 {}", describe(&s), describe(&c));
            if tty {
                print!("\r{line}");
                let _ = std::io::stdout().flush();
            } else {
                println!("{line}");
            }
        }
        let ds = counters(&last, Role::Stable).since(&counters(&start, Role::Stable)).unwrap_or_default();
        let dc = counters(&last, Role::Canary).since(&counters(&start, Role::Canary)).unwrap_or_default();
        rows.push((weight, ds.requests, dc.requests, dc.failures));
    }

    println!("\n\ndark launch: 20 requests with x-canary: true at 50% weight");
    let t = f.send(20, &[("x-canary", "true".to_owned())]).await;
    println!("  served by v2: {} of 20", t.served("v2"));
    println!("client-sent label: 20 requests with x-canary-subset: v2");
    let t = f.send(20, &[("x-canary-subset", "v2".to_owned())]).await;
    println!("  served by v1: {}, v2: {} (the filter's own label decides)", t.served("v1"), t.served("v2"));

    running.store(false, Ordering::SeqCst);
    let _ = load.await;
    println!("\n  weight | stable req | canary req | canary share | canary failures");
    for (w, s, c, fails) in rows {
        let share = if s + c == 0 { 0.0 } else { 100.0 * c as f64 / (s + c) as f64 };
        println!("  {w:>5}% | {s:>10} | {c:>10} | {share:>11.1}% | {fails:>6}");
    }
    let last = f.envoy.snapshot().await?;
    println!(
        "\nfinal snapshot from proxy instance {} (started {} ms since epoch):",
        last.instance.id, last.instance.started_at_unix_ms
    );
    println!("  v1 {}\n  v2 {}", describe(&counters(&last, Role::Stable)), describe(&counters(&last, Role::Canary)));
    println!("\nthe same counters as Envoy stats (Prometheus):");
    for line in f
        .envoy
        .prometheus()
        .await?
        .lines()
        .filter(|l| l.starts_with("canary_gate_requests_total") || l.starts_with("canary_gate_failures_total"))
    {
        println!("  {line}");
    }
    Ok(())
}
