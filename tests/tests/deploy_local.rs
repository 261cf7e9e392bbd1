//! The shipped local setup (deploy/local) as Envoy and Prometheus see it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::io::Write;
use std::process::{Command, Stdio};

use canary_core::ecds;
use canary_e2e::envoy::local_bootstrap;
use canary_e2e::{Backend, Envoy, Fixture, LocalSetup, paths, route};

#[tokio::test]
async fn the_shipped_config_passes_envoy_validate_with_the_filter_loaded() {
    let stable = Backend::start("v1").await.unwrap();
    let canary = Backend::start("v2").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ecds")).unwrap();
    let wasm = dir.path().join("canary_filter.wasm");
    std::fs::copy(paths::filter_wasm().unwrap(), &wasm).unwrap();
    let setup = LocalSetup {
        stable: stable.addr,
        canary: canary.addr,
        concurrency: 1,
        route: route(10.0, 1, "").unwrap(),
        raw_plugin_config: None,
        shape: Default::default(),
    };
    let file = ecds::discovery_file(&wasm.to_string_lossy(), &setup.route).unwrap();
    std::fs::write(dir.path().join("ecds/canary-gate.json"), file.to_string()).unwrap();
    let config = dir.path().join("envoy.json");
    std::fs::write(&config, local_bootstrap(&setup, dir.path()).unwrap().to_string()).unwrap();
    // Validate mode instantiates the wasm VMs and runs on_configure of the inline filters.
    let out = Command::new(paths::envoy_bin().unwrap())
        .args(["--mode", "validate", "--base-id", "9", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "envoy --mode validate failed:\n{stderr}");
    assert!(stderr.contains("canary-gate: serving snapshots"), "the snapshot filter was configured:\n{stderr}");
}

#[test]
fn the_committed_watched_file_is_what_the_renderer_writes() {
    let path = paths::deploy_local().join("ecds/canary-gate.json");
    let committed: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let plugin = committed["resources"][0]["typed_config"]["config"]["configuration"]["value"].as_str().unwrap();
    let route = canary_core::config::parse_route(plugin.as_bytes()).unwrap();
    let rendered = ecds::discovery_file("/etc/canary-gate/canary_filter.wasm", &route).unwrap();
    assert_eq!(committed, rendered, "{} drifted from canary_core::ecds; regenerate it", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_rejected_at_start_up_serves_zero_percent_canary() {
    let stable = Backend::start("v1").await.unwrap();
    let canary = Backend::start("v2").await.unwrap();
    let envoy = Envoy::start(&LocalSetup {
        stable: stable.addr,
        canary: canary.addr,
        concurrency: 1,
        route: route(50.0, 1, "").unwrap(),
        raw_plugin_config: Some(
            r#"{"version":1,"rollout":"demo","stable":"v1","canary":"v2","canary_weight":"50"}"#.into(),
        ),
        shape: Default::default(),
    })
    .await
    .unwrap();
    let t = canary_e2e::traffic::send(envoy.http(), &envoy.url("/"), &[], 100, 8).await;
    assert_eq!(t.served("v1"), 100, "the default config (0% canary) serves: {t:?}");
    assert_eq!(canary.received(), 0);
    assert!(!envoy.log_lines("canary-gate: rejected configuration").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_exports_per_subset_metrics_that_promtool_accepts() {
    let f = Fixture::start(route(50.0, 1, "").unwrap(), 2).await.unwrap();
    f.canary.fail_per_mille(500);
    let _ = f.send(200, &[]).await;
    let snap = f.envoy.snapshot().await.unwrap();
    let text = f.envoy.prometheus().await.unwrap();
    for s in &snap.subsets {
        let line = format!("canary_gate_requests_total{{subset=\"{}\"}} {}", s.subset, s.counters.requests);
        assert!(text.lines().any(|l| l == line), "missing {line:?}");
        let line = format!("canary_gate_failures_total{{subset=\"{}\"}} {}", s.subset, s.counters.failures);
        assert!(text.lines().any(|l| l == line), "missing {line:?}");
    }
    assert!(text.contains("# TYPE canary_gate_request_duration_microseconds histogram"));
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: run `make tools`");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    // Exit 0: clean; 3: lint remarks only. Envoy writes no HELP lines and names its own stats in
    // its own units, so lint remarks are expected; a parse error (exit 1) is not.
    assert!(matches!(out.status.code(), Some(0 | 3)), "promtool rejected the scrape:\n{report}");
    let ours: Vec<&str> = report.lines().filter(|l| l.starts_with("canary_gate_")).collect();
    let unexpected: Vec<&&str> =
        ours.iter().filter(|l| !l.contains("no help text") && !l.contains("use base unit \"seconds\"")).collect();
    assert!(unexpected.is_empty(), "promtool remarks on our metrics: {unexpected:#?}");
}

#[test]
fn the_shipped_rollout_spec_is_valid_and_matches_the_shipped_filter_config() {
    let bin = canary_e2e::paths::gate_agent_bin().unwrap();
    let dir = canary_e2e::paths::deploy_local();
    let out = std::process::Command::new(&bin).arg("check-spec").arg(dir.join("rollout.yaml")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("ecds/canary-gate.json")).unwrap()).unwrap();
    let route =
        canary_core::config::parse_route(canary_core::ecds::plugin_config_of(&file).unwrap().as_bytes()).unwrap();
    let expected = format!("rollout {} ({} -> {})", route.rollout, route.stable, route.canary);
    assert!(text.contains(&expected), "the spec names the filter's rollout and subsets: {text}");
}

/// docker-compose.yaml as a first `up` needs it (issue 16). No container engine runs here, so this
/// and `docker-compose config` (make test-deploy) are all that is checked of it.
#[test]
fn the_compose_setup_writes_weights_to_a_volume_and_builds_the_projects_own_backends() {
    let dir = paths::deploy_local();
    let compose: serde_yaml_ng::Value =
        serde_yaml_ng::from_slice(&std::fs::read(dir.join("docker-compose.yaml")).unwrap()).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let service = |name: &str| &compose["services"][name];
    let volumes = |name: &str| -> Vec<String> {
        service(name)["volumes"]
            .as_sequence()
            .map_or(Vec::new(), |v| v.iter().map(|m| m.as_str().unwrap().to_owned()).collect())
    };
    // The tracked ./ecds is only ever read: the weights live in the named volume.
    for (name, _) in services {
        for m in volumes(name.as_str().unwrap()) {
            assert!(!m.starts_with("./ecds") || m.ends_with(":ro"), "{name:?} mounts the tracked ./ecds writable: {m}");
        }
    }
    for name in ["ecds-init", "envoy", "gate-agent"] {
        assert!(volumes(name).contains(&"ecds:/etc/canary-gate/ecds".to_owned()), "{name} shares the ecds volume");
    }
    assert!(compose["volumes"]["ecds"].is_mapping(), "ecds is a named volume");
    let init = service("ecds-init")["command"].as_sequence().unwrap().last().unwrap().as_str().unwrap();
    assert!(init.contains("cp /seed/canary-gate.json") && init.contains("chown -R 65532:65532"), "{init}");
    for name in ["envoy", "gate-agent"] {
        assert_eq!(
            service(name)["depends_on"]["ecds-init"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{name} starts after the volume is seeded"
        );
    }
    // Every image built here has its Dockerfile, and the backends run the project's own binary
    // with the subset names of the shipped rollout.
    for (name, s) in services {
        if let Some(build) = s.get("build") {
            let file = dir.join(build["context"].as_str().unwrap()).join(build["dockerfile"].as_str().unwrap());
            assert!(file.is_file(), "{name:?}: {} is missing", file.display());
        }
    }
    let dockerfile = std::fs::read_to_string(dir.join("backend.Dockerfile")).unwrap();
    assert!(dockerfile.contains("-p canary-e2e --bin backend"), "{dockerfile}");
    assert!(paths::workspace_root().join("tests/src/bin/backend.rs").is_file());
    for (name, subset) in [("stable", "v1"), ("canary", "v2")] {
        assert_eq!(service(name)["build"]["dockerfile"].as_str(), Some("deploy/local/backend.Dockerfile"));
        let args: Vec<&str> =
            service(name)["command"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(args[..2], ["--name", subset], "{name}");
    }
}
