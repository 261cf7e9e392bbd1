//! The agent's snapshot reader (`HttpSource`) against proxies on real sockets: a filter that
//! answers the compact form when asked, one that predates it (answers JSON whatever is asked),
//! and one whose compact answer is broken.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, header};
use canary_core::snapshot::{COMPACT_CONTENT_TYPE, SNAPSHOT_FORMAT, accepts_compact};
use canary_core::{InstanceInfo, Outcome, Role, Snapshot, SubsetCounters, SubsetName, SubsetSnapshot};
use gate_agent::source::{CounterSource, FetchError, HttpSource};

const PATH: &str = "/canary-gate/v1/snapshot";

fn snapshot() -> Snapshot {
    let mut stable = SubsetCounters::default();
    let mut canary = SubsetCounters::default();
    for i in 0..500u64 {
        stable.record(if i % 50 == 0 { Outcome::Failure } else { Outcome::Success }, 1_000 + i * 97);
        canary.record(Outcome::Success, 2_000 + i * 31);
    }
    let name = |s: &str| SubsetName::try_from(s).unwrap();
    Snapshot {
        format: SNAPSHOT_FORMAT.into(),
        instance: InstanceInfo { id: "c084c1cf294415ef".into(), started_at_unix_ms: 1 },
        taken_at_unix_ms: 2,
        route: None,
        subsets: vec![
            SubsetSnapshot { subset: name("v1"), role: Role::Stable, counters: stable },
            SubsetSnapshot { subset: name("v2"), role: Role::Canary, counters: canary },
        ],
        kill: None,
        misrouted: None,
        dark_launch: None,
        rollouts: Vec::new(),
    }
}

#[derive(Clone, Copy)]
enum Filter {
    /// Answers the compact form to a client that asks for it.
    Current,
    /// Built before the compact form: JSON, whatever the `Accept`.
    Old,
    /// Declares the compact form, but the canary's record is cut short.
    Broken,
}

/// A proxy's snapshot listener; returns its address and the content types it answered.
async fn proxy(filter: Filter) -> (String, Arc<Mutex<Vec<String>>>) {
    let served: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&served);
    let app = axum::Router::new().route(
        PATH,
        axum::routing::get(move |headers: HeaderMap| {
            let log = Arc::clone(&log);
            async move {
                let s = snapshot();
                let asked = headers.get(header::ACCEPT).is_some_and(|a| accepts_compact(a.as_bytes()));
                let (content_type, body) = match filter {
                    Filter::Current if asked => (COMPACT_CONTENT_TYPE, s.to_compact_json().unwrap()),
                    Filter::Current | Filter::Old => ("application/json", serde_json::to_vec(&s).unwrap()),
                    Filter::Broken => {
                        let mut v: serde_json::Value = serde_json::from_slice(&s.to_compact_json().unwrap()).unwrap();
                        let record = v["subsets"][1]["counters"].as_str().unwrap()[..8].to_owned();
                        v["subsets"][1]["counters"] = record.into();
                        (COMPACT_CONTENT_TYPE, serde_json::to_vec(&v).unwrap())
                    }
                };
                log.lock().unwrap().push(content_type.to_owned());
                ([(header::CONTENT_TYPE, content_type)], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, served)
}

#[tokio::test]
async fn the_agent_reads_the_compact_form_and_falls_back_to_json_from_an_older_filter() {
    let source = HttpSource::new(PATH, "/canary-gate/v1/kill", Duration::from_secs(5)).unwrap();
    let (current, current_served) = proxy(Filter::Current).await;
    let (old, old_served) = proxy(Filter::Old).await;
    assert_eq!(source.fetch(&current).await.unwrap(), snapshot());
    assert_eq!(source.fetch(&old).await.unwrap(), snapshot());
    assert_eq!(*current_served.lock().unwrap(), [COMPACT_CONTENT_TYPE]);
    assert_eq!(*old_served.lock().unwrap(), ["application/json"]);
}

#[tokio::test]
async fn a_broken_compact_snapshot_is_refused_naming_the_proxy_and_the_field() {
    let source = HttpSource::new(PATH, "/canary-gate/v1/kill", Duration::from_secs(5)).unwrap();
    let (broken, _) = proxy(Filter::Broken).await;
    let e = source.fetch(&broken).await.unwrap_err();
    assert!(matches!(e, FetchError::Invalid { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.starts_with(&format!("{broken}: snapshot subsets[1].counters (v2): ")), "{text}");
}
