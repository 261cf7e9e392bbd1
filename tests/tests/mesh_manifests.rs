//! Every shipped Kubernetes manifest, as a cluster with Istio's, the Gateway API's and canary-gate's CRDs would
//! take it: `kubectl apply --dry-run=server` on a real kube-apiserver (gate-agent/tests/support/kube.rs) of
//!
//! * deploy/crd/canarygate.yaml and the Helm chart's copy (then installed for real, for what follows);
//! * deploy/istio (sidecars, VirtualService), deploy/gateway-api (sidecars, HTTPRoute with a Service parent: GAMMA)
//!   and deploy/ambient (namespace in ambient mode, waypoint Gateway, HTTPRoute), each as its kustomization renders
//!   it, and the examples (deploy/crd/example.yaml, deploy/istio/client-workload-example.yaml).
//!
//! The CRDs are the pinned ones `make tools-kube` fetches: Istio's from istio.io/api (with TrafficExtension) and the
//! Gateway API's standard channel (v1.6.3). The same CRDs reject typos in these manifests, so the dry run can fail.
//! What a dry run cannot show: that istiod programs a sidecar or waypoint from them (no istiod, ztunnel or waypoint
//! runs here; docs/gateway-api.md has the manual check).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

#[path = "../../gate-agent/tests/support/kube.rs"]
mod kube_support;

use canary_e2e::paths;
use canary_e2e::tool::text;
use kube_support::ControlPlane;
use serde::Deserialize;
use serde_json::{Value, json};

/// The namespace every kustomization puts its objects in.
const NAMESPACE: &str = "shop";
/// The directories of kustomizations, and the YAML files in each that are not among its resources.
const KUSTOMIZATIONS: [(&str, &[&str]); 3] = [
    ("deploy/istio", &["kustomization.yaml", "client-workload-example.yaml"]),
    ("deploy/gateway-api", &["kustomization.yaml"]),
    ("deploy/ambient", &["kustomization.yaml"]),
];
/// Applied on their own, not by a kustomization.
const EXAMPLES: [&str; 2] = ["deploy/crd/example.yaml", "deploy/istio/client-workload-example.yaml"];
const CRDS: [&str; 2] = ["deploy/crd/canarygate.yaml", "deploy/helm/canary-gate/crds/canarygate.yaml"];

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(paths::workspace_root().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// Runs `cmd` (feeding `stdin`), naming the tool and how to get it when it cannot start.
fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    canary_e2e::tool::run(cmd, stdin, "run `make tools`").unwrap()
}

fn kind_and_name(o: &Value) -> (String, String) {
    (o["kind"].as_str().unwrap().to_owned(), o["metadata"]["name"].as_str().unwrap().to_owned())
}

/// The control plane with the CanaryGate CRD installed for real and the namespace `shop`, once per test binary.
fn cluster() -> &'static ControlPlane {
    static READY: OnceLock<()> = OnceLock::new();
    let cp = ControlPlane::shared();
    READY.get_or_init(|| {
        for crd in CRDS {
            let out = dry_run(cp, None, &documents(&read(crd)));
            assert!(out.status.success(), "the API server rejects {crd}:\n{}", text(&out));
            assert!(text(&out).contains("canarygates.canary-gate.dev created (server dry run)"), "{}", text(&out));
        }
        let crd = paths::workspace_root().join(CRDS[0]);
        let out = run(cp.kubectl().args(["apply", "--server-side", "-f"]).arg(&crd), None);
        assert!(out.status.success(), "{}", text(&out));
        let out = run(
            cp.kubectl().args([
                "wait",
                "--for=condition=Established",
                "crd/canarygates.canary-gate.dev",
                "--timeout=60s",
            ]),
            None,
        );
        assert!(out.status.success(), "{}", text(&out));
        let out = run(cp.kubectl().args(["create", "namespace", NAMESPACE]), None);
        assert!(out.status.success(), "{}", text(&out));
    });
    cp
}

/// `kubectl apply --dry-run=server` of `objects` (in `namespace`, when given).
fn dry_run(cp: &ControlPlane, namespace: Option<&str>, objects: &[Value]) -> Output {
    let list = json!({ "apiVersion": "v1", "kind": "List", "items": objects });
    let mut cmd = cp.kubectl();
    cmd.args(["apply", "--dry-run=server"]);
    if let Some(ns) = namespace {
        cmd.args(["--namespace", ns]);
    }
    run(cmd.args(["-f", "-"]), Some(&serde_json::to_vec(&list).unwrap()))
}

/// `dir` as `kubectl kustomize` renders it.
fn kustomize(cp: &ControlPlane, dir: &str) -> Vec<Value> {
    let out = run(cp.kubectl().arg("kustomize").arg(paths::workspace_root().join(dir)), None);
    assert!(out.status.success(), "kubectl kustomize {dir} failed:\n{}", text(&out));
    documents(&String::from_utf8(out.stdout).unwrap())
}

/// Asserts the dry run succeeded and lists every object (created, or configured for one that exists).
fn assert_accepted(what: &str, objects: &[Value], out: &Output) {
    let report = text(out);
    assert!(out.status.success(), "the API server rejects {what}:\n{report}");
    for o in objects {
        let (kind, name) = kind_and_name(o);
        let listed = report.lines().any(|l| {
            l.to_lowercase().contains(&kind.to_lowercase())
                && ["created", "configured", "unchanged"]
                    .iter()
                    .any(|v| l.ends_with(&format!("/{name} {v} (server dry run)")))
        });
        assert!(listed, "{what}: {kind} {name} is not in the report:\n{report}");
    }
}

fn yaml_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect()
}

#[test]
fn the_gateway_api_and_ambient_manifests_pass_yamllint() {
    let root = paths::workspace_root();
    let out = run(
        Command::new("yamllint").current_dir(&root).args([
            "-c",
            ".yamllint.yaml",
            "--strict",
            "deploy/gateway-api",
            "deploy/ambient",
        ]),
        None,
    );
    assert!(out.status.success(), "yamllint found problems:\n{}", text(&out));
}

#[test]
fn every_kustomization_lists_every_manifest_of_its_directory() {
    for (dir, not_resources) in KUSTOMIZATIONS {
        let kustomization = &documents(&read(&format!("{dir}/kustomization.yaml")))[0];
        assert_eq!(kustomization["namespace"], NAMESPACE, "{dir}");
        let listed: BTreeSet<String> =
            kustomization["resources"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect();
        let present: BTreeSet<String> = yaml_files(&paths::workspace_root().join(dir))
            .into_iter()
            .filter(|n| !not_resources.contains(&n.as_str()))
            .collect();
        assert_eq!(
            listed, present,
            "{dir}/kustomization.yaml lists every manifest but the examples, and no other file"
        );
    }
}

#[tokio::test]
async fn every_shipped_manifest_passes_a_server_side_dry_run_with_istio_gateway_api_and_canarygate_crds() {
    let cp = cluster();
    for (dir, _) in KUSTOMIZATIONS {
        let rendered = kustomize(cp, dir);
        assert!(!rendered.is_empty(), "{dir} renders objects");
        let out = dry_run(cp, Some(NAMESPACE), &rendered);
        assert_accepted(dir, &rendered, &out);
    }
    for example in EXAMPLES {
        let objects = documents(&read(example));
        let out = dry_run(cp, Some(NAMESPACE), &objects);
        assert_accepted(example, &objects, &out);
    }
}

/// `dir`'s rendered object of `kind`.
fn rendered_object(cp: &ControlPlane, dir: &str, kind: &str) -> Value {
    kustomize(cp, dir).into_iter().find(|o| o["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in {dir}"))
}

#[tokio::test]
async fn the_real_crds_reject_typos_in_the_gateway_api_and_ambient_manifests() {
    let cp = cluster();
    let mut kind_typo = rendered_object(cp, "deploy/gateway-api", "CanaryGate");
    kind_typo["spec"]["route"]["kind"] = json!("HTTPRoutes");
    let mut subset_name = rendered_object(cp, "deploy/gateway-api", "CanaryGate");
    subset_name["spec"]["stable"] = json!("v1.0");
    let mut match_typo = rendered_object(cp, "deploy/gateway-api", "HTTPRoute");
    match_typo["spec"]["rules"][0]["matches"][0]["headers"][0]["type"] = json!("Exakt");
    let mut negative_weight = rendered_object(cp, "deploy/ambient", "HTTPRoute");
    negative_weight["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(-1);
    let mut listener = rendered_object(cp, "deploy/ambient", "Gateway");
    listener["spec"]["listeners"][0]["port"] = json!(150080);
    for (broken, field) in
        [(kind_typo, "spec.route.kind"), (match_typo, "type"), (negative_weight, "weight"), (listener, "port")]
    {
        let (kind, _) = kind_and_name(&broken);
        let out = dry_run(cp, Some(NAMESPACE), &[broken]);
        assert!(!out.status.success(), "the API server accepted a {kind} with a broken {field}:\n{}", text(&out));
        assert!(text(&out).contains(field), "the rejection of the {kind} names {field}:\n{}", text(&out));
    }
}

/// The example files exist where the constants say (a rename would otherwise skip them silently).
#[test]
fn the_listed_files_exist() {
    for f in EXAMPLES.iter().chain(CRDS.iter()) {
        assert!(paths::workspace_root().join(f).exists(), "{f}");
    }
}
