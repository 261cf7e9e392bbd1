//! deploy/istio as a platform team applies it, and `make oci` (deploy/oci/build-oci.py) as Istio pulls it.
//!
//! Every manifest passes yamllint, the kustomization builds, core kinds pass `kubernetes-validate --strict`
//! (schemas of two Kubernetes versions), Istio kinds pass Istio's CRD schemas (`@kubernetes-models/istio`,
//! deploy/istio/validate-istio.mjs), and the pieces agree with each other and with the code: the WasmPlugin's
//! pluginConfig parses with the filter's own parser, the rollout spec with gate-agent's, the RBAC grants exactly the
//! calls gate-agent makes, the Deployment's flags exist, and the snapshot port is open to the agent alone.
//!
//! Backing the schema checks, every manifest also passes `kubectl apply --dry-run=server` on a real kube-apiserver
//! with Istio's CRDs from istio.io/api installed (gate-agent/tests/support/kube.rs), which rejects what a cluster
//! would reject.
//!
//! Tools: yamllint, node, Envoy, and what `make tools` installs: `.venv/bin/kubernetes-validate`,
//! `.tools/node_modules/@kubernetes-models/istio`, and the control plane in `.tools/kube` (kubectl with its built-in
//! kustomize, kube-apiserver, etcd, the CRDs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../gate-agent/tests/support/kube.rs"]
mod kube_support;

use canary_core::config::{PluginConfig, RouteConfig};
use canary_e2e::paths;
use canary_e2e::tool::text;
use kube_support::ControlPlane;
use serde::Deserialize;
use serde_json::{Value, json};

/// The namespace the kustomization puts everything in.
const NAMESPACE: &str = "shop";
/// Files in deploy/istio that are not resources of the kustomization.
const NOT_RESOURCES: [&str; 2] = ["kustomization.yaml", "client-workload-example.yaml"];
/// Kinds `kubernetes-validate` checks; everything else must be an Istio kind.
const CORE_KINDS: [&str; 7] =
    ["ConfigMap", "Deployment", "NetworkPolicy", "Role", "RoleBinding", "Service", "ServiceAccount"];
/// Kubernetes versions the core kinds are validated against: an old one still served and the newest schemas.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.27.0", "1.37.0"];

fn istio_dir() -> PathBuf {
    paths::workspace_root().join("deploy/istio")
}

/// The YAML files in deploy/istio, sorted by name.
fn yaml_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(istio_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Every YAML document in `text`, as JSON.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The Kubernetes objects of deploy/istio, with the file each comes from.
struct Manifests(Vec<(String, Value)>);

impl Manifests {
    fn load() -> Manifests {
        let mut objects = Vec::new();
        for path in yaml_files() {
            let name = file_name(&path);
            if name == "kustomization.yaml" {
                continue;
            }
            for doc in documents(&std::fs::read_to_string(&path).unwrap()) {
                objects.push((name.clone(), doc));
            }
        }
        Manifests(objects)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.0
            .iter()
            .map(|(_, o)| o)
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in deploy/istio; there are: {:?}", self.kinds_and_names()))
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().map(|(_, o)| o).filter(|o| o["kind"] == kind).collect()
    }

    fn kinds_and_names(&self) -> BTreeSet<(String, String)> {
        self.0.iter().map(|(_, o)| kind_and_name(o)).collect()
    }

    fn is_istio(object: &Value) -> bool {
        object["apiVersion"].as_str().unwrap().split('/').next().unwrap().ends_with(".istio.io")
    }
}

fn kind_and_name(o: &Value) -> (String, String) {
    (o["kind"].as_str().unwrap().to_owned(), o["metadata"]["name"].as_str().unwrap().to_owned())
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str().unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

/// Runs `cmd` (feeding `stdin`), naming the tool and how to get it when it cannot start.
fn run(cmd: &mut Command, stdin: Option<&[u8]>, how_to_install: &str) -> Output {
    canary_e2e::tool::run(cmd, stdin, how_to_install).unwrap()
}

fn installed(relative: &str, what: &str) -> PathBuf {
    let path = paths::workspace_root().join(relative);
    assert!(path.exists(), "{what} not found at {}: run `make tools`", path.display());
    path
}

/// The route-role plugin's configuration as gate-agent reads it (the filter's own parser, with the agent's
/// fields, which the manifest leaves out, at their starting values).
fn route_config(m: &Manifests) -> RouteConfig {
    let config = &m.get("WasmPlugin", "canary-gate")["spec"]["pluginConfig"];
    gate_agent::mesh::wasmplugin::route_config_of(config)
        .unwrap_or_else(|e| panic!("the canary-gate WasmPlugin's pluginConfig is rejected by the filter: {e}"))
}

fn agent_container(m: &Manifests) -> &Value {
    let containers =
        m.get("Deployment", "canary-gate-agent")["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container: gate-agent");
    &containers[0]
}

/// The value of `--name=value` in gate-agent's arguments.
fn agent_flag(m: &Manifests, name: &str) -> String {
    let args = agent_container(m)["args"].as_array().unwrap();
    let prefix = format!("--{name}=");
    let values: Vec<&str> = args.iter().filter_map(|a| a.as_str().unwrap().strip_prefix(prefix.as_str())).collect();
    assert_eq!(values.len(), 1, "gate-agent gets --{name}=... once: {args:?}");
    values[0].to_owned()
}

/// `matchLabels` as `k=v,...`, the form of gate-agent's --pod-selector.
fn selector_string(match_labels: &Value) -> String {
    let labels = match_labels.as_object().unwrap();
    labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap())).collect::<Vec<_>>().join(",")
}

fn sha256_hex(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path), None, "sha256sum is part of coreutils");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

#[test]
fn every_manifest_passes_yamllint() {
    let root = paths::workspace_root();
    let out = run(
        Command::new("yamllint").current_dir(&root).args(["-c", ".yamllint.yaml", "--strict"]).arg("deploy/istio"),
        None,
        "`make tools` installs yamllint",
    );
    assert!(out.status.success(), "yamllint found problems in deploy/istio:\n{}", text(&out));
}

#[test]
fn the_kustomization_applies_every_manifest_in_one_namespace() {
    let kustomization = &documents(&std::fs::read_to_string(istio_dir().join("kustomization.yaml")).unwrap())[0];
    assert_eq!(kustomization["namespace"], NAMESPACE);
    let listed: BTreeSet<String> =
        kustomization["resources"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect();
    let present: BTreeSet<String> =
        yaml_files().iter().map(|p| file_name(p)).filter(|n| !NOT_RESOURCES.contains(&n.as_str())).collect();
    assert_eq!(listed, present, "kustomization.yaml lists every manifest but the example, and no other file");

    let rendered = kustomize();
    let m = Manifests::load();
    let expected: BTreeSet<(String, String)> =
        m.0.iter().filter(|(file, _)| !NOT_RESOURCES.contains(&file.as_str())).map(|(_, o)| kind_and_name(o)).collect();
    assert_eq!(rendered.iter().map(kind_and_name).collect::<BTreeSet<_>>(), expected);
    for o in &rendered {
        assert_eq!(o["metadata"]["namespace"], NAMESPACE, "{:?} is in the namespace", kind_and_name(o));
    }
    // Applied in order: the port's guards before the plugin that opens it, subsets before the routes naming them,
    // the WasmPlugin before the agent that reads it when it starts.
    let position =
        |kind: &str, name: &str| rendered.iter().position(|o| kind_and_name(o) == (kind.into(), name.into()));
    let before = |a: (&str, &str), b: (&str, &str)| {
        assert!(position(a.0, a.1).unwrap() < position(b.0, b.1).unwrap(), "{a:?} is applied before {b:?}");
    };
    let plugin = ("WasmPlugin", "canary-gate-snapshot");
    before(("AuthorizationPolicy", "canary-gate-snapshot"), plugin);
    before(("NetworkPolicy", "canary-gate-snapshot"), plugin);
    before(("DestinationRule", "payment-svc"), ("VirtualService", "payment-svc"));
    before(("WasmPlugin", "canary-gate"), ("Deployment", "canary-gate-agent"));
    let binding = rendered.iter().find(|o| o["kind"] == "RoleBinding").unwrap();
    assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE, "kustomize sets the ServiceAccount subject's namespace");
}

/// deploy/istio rendered by `kubectl kustomize`, with the kubectl `make tools` builds (.tools/kube/bin/kubectl).
fn kustomize() -> Vec<Value> {
    let kubectl = installed(".tools/kube/bin/kubectl", "kubectl (built by `make tools`, target tools-kube)");
    let out = run(Command::new(kubectl).args(["kustomize"]).arg(istio_dir()), None, "run `make tools`");
    assert!(out.status.success(), "kubectl kustomize deploy/istio failed:\n{}", text(&out));
    documents(&String::from_utf8(out.stdout).unwrap())
}

/// `kubectl apply --dry-run=server` of `objects` on the real API server with Istio's CRDs installed.
fn server_dry_run(cp: &ControlPlane, namespace: &str, objects: &[Value]) -> Output {
    let list = json!({ "apiVersion": "v1", "kind": "List", "items": objects });
    run(
        cp.kubectl().args(["apply", "--dry-run=server", "--namespace", namespace, "-f", "-"]),
        Some(&serde_json::to_vec(&list).unwrap()),
        "run `make tools`",
    )
}

#[tokio::test]
async fn every_manifest_passes_a_server_side_dry_run_on_a_real_api_server_with_istios_crds() {
    let cp = ControlPlane::shared();
    // The kustomization as rendered (namespace shop), and the example client workload on its own.
    let out = run(cp.kubectl().args(["create", "namespace", NAMESPACE]), None, "run `make tools`");
    assert!(out.status.success(), "{}", text(&out));
    let rendered = kustomize();
    let out = server_dry_run(cp, NAMESPACE, &rendered);
    assert!(out.status.success(), "the API server rejects deploy/istio:\n{}", text(&out));
    let report = text(&out);
    for o in &rendered {
        let (kind, name) = kind_and_name(o);
        let line = format!("/{name} created (server dry run)");
        assert!(
            report.lines().any(|l| l.ends_with(&line) && l.to_lowercase().contains(&kind.to_lowercase())),
            "{kind} {name} is in the report:\n{report}"
        );
    }
    let example = documents(&std::fs::read_to_string(istio_dir().join("client-workload-example.yaml")).unwrap());
    let out = server_dry_run(cp, NAMESPACE, &example);
    assert!(out.status.success(), "the API server rejects client-workload-example.yaml:\n{}", text(&out));
}

#[tokio::test]
async fn the_real_crds_reject_what_istio_would_reject() {
    let cp = ControlPlane::shared();
    let namespace = cp.namespace("crds").await.name;
    let m = Manifests::load();
    let mut typo = m.get("WasmPlugin", "canary-gate").clone();
    typo["spec"]["phase"] = json!("STATZ");
    let mut short_pin = m.get("WasmPlugin", "canary-gate").clone();
    short_pin["spec"]["sha256"] = json!("c4abe553");
    let mut unknown_field = m.get("DestinationRule", "payment-svc").clone();
    unknown_field["spec"]["subsetz"] = json!([]);
    for (broken, field) in [(typo, "phase"), (short_pin, "sha256"), (unknown_field, "subsetz")] {
        let out = server_dry_run(cp, &namespace, &[broken]);
        assert!(!out.status.success(), "the API server accepted a broken {field}:\n{}", text(&out));
        assert!(text(&out).contains(field), "the rejection names {field}:\n{}", text(&out));
    }
}

#[test]
fn core_kinds_pass_the_kubernetes_schemas_strictly() {
    let validator = installed(".venv/bin/kubernetes-validate", "kubernetes-validate (PyPI)");
    let m = Manifests::load();
    assert!(m.of_kind("Secret").is_empty(), "no Secret in git: the agent's token is created on the cluster");
    let core: Vec<&Value> = m.0.iter().map(|(_, o)| o).filter(|o| !Manifests::is_istio(o)).collect();
    for o in &core {
        assert!(
            CORE_KINDS.contains(&str_of(&o["kind"], "kind")),
            "{:?} is validated by neither tool",
            kind_and_name(o)
        );
    }
    let files: Vec<PathBuf> = yaml_files().into_iter().filter(|p| file_name(p) != "kustomization.yaml").collect();
    for version in KUBERNETES_VERSIONS {
        let out = run(Command::new(&validator).args(["--strict", "-k", version]).args(&files), None, "");
        let report = text(&out);
        assert!(out.status.success(), "kubernetes-validate --strict -k {version}:\n{report}");
        for o in &core {
            let (kind, name) = kind_and_name(o);
            let line = format!("passed for resource {}/{name} against version", kind.to_lowercase());
            assert!(report.contains(&line), "{kind} {name} was validated against {version}:\n{report}");
        }
    }
}

/// Runs deploy/istio/validate-istio.mjs on `objects`; returns whether all passed, and its report.
fn validate_istio(objects: &[&Value]) -> (bool, String) {
    let models = installed(".tools/node_modules/@kubernetes-models/istio", "@kubernetes-models/istio (npm)");
    let script = istio_dir().join("validate-istio.mjs");
    let node_modules = models.parent().unwrap().parent().unwrap();
    let out = run(
        Command::new("node").arg(&script).arg("--models").arg(node_modules),
        Some(&serde_json::to_vec(objects).unwrap()),
        "`make tools` installs node",
    );
    (out.status.success(), text(&out))
}

#[test]
fn istio_kinds_pass_istios_crd_schemas() {
    let m = Manifests::load();
    let istio: Vec<&Value> = m.0.iter().map(|(_, o)| o).filter(|o| Manifests::is_istio(o)).collect();
    let kinds: BTreeSet<&str> = istio.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, BTreeSet::from(["AuthorizationPolicy", "DestinationRule", "VirtualService", "WasmPlugin"]));
    let (ok, report) = validate_istio(&istio);
    assert!(ok, "Istio's schemas reject a manifest:\n{report}");
    for o in &istio {
        let line = format!(
            "valid {} {} {}",
            o["apiVersion"].as_str().unwrap(),
            o["kind"].as_str().unwrap(),
            o["metadata"]["name"].as_str().unwrap()
        );
        assert!(report.lines().any(|l| l == line), "{line} is in the report:\n{report}");
    }
}

#[test]
fn the_istio_validator_rejects_what_istio_would_reject() {
    let m = Manifests::load();
    let mut typo = m.get("WasmPlugin", "canary-gate").clone();
    typo["spec"]["phase"] = json!("STATZ");
    let mut short_pin = m.get("WasmPlugin", "canary-gate").clone();
    short_pin["spec"]["sha256"] = json!("c4abe553");
    let unknown = json!({"apiVersion": "networking.istio.io/v9", "kind": "VirtualService", "metadata": {"name": "x"}});
    let (ok, report) = validate_istio(&[&typo, &short_pin, &unknown]);
    assert!(!ok, "the validator accepted broken objects:\n{report}");
    assert_eq!(report.lines().filter(|l| l.starts_with("INVALID")).count(), 3, "{report}");
    assert!(report.contains("phase") && report.contains("sha256") && report.contains("no Istio model"), "{report}");
}

#[test]
fn the_route_plugin_is_pinned_fails_open_and_labels_client_side_before_routing() {
    let m = Manifests::load();
    let spec = &m.get("WasmPlugin", "canary-gate")["spec"];
    let url = str_of(&spec["url"], "url");
    assert!(url.starts_with("oci://") && url.contains("/canary-gate/filter"), "{url}: the image `make oci` builds");
    let pin = str_of(&spec["sha256"], "sha256");
    assert!(pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{pin}");
    if let Some((_, in_url)) = url.split_once("@sha256:") {
        assert_eq!(in_url, pin, "a digest in the url must be the sha256 field");
    }
    assert_ne!(spec["imagePullPolicy"], "Always", "with the pin dropped, Always would pull on every weight patch");
    assert_eq!(spec["failStrategy"], "FAIL_OPEN", "a broken filter means no label, so stable");
    // Every phase runs before the router; AUTHN and AUTHZ run before Istio's authn and authz filters, so
    // requests Istio rejects would be labelled and counted.
    assert_eq!(spec["phase"], "STATS");
    let matches = spec["match"].as_array().unwrap();
    assert!(!matches.is_empty() && matches.iter().all(|t| t["mode"] == "CLIENT"), "outbound only: {matches:?}");
    assert!(spec.get("targetRefs").is_none() && spec["selector"]["matchLabels"].is_object(), "a sidecar selector");
    assert_eq!(spec["pluginName"], "canary-gate");
}

#[test]
fn the_route_plugin_config_is_what_the_filter_and_the_agent_accept() {
    let m = Manifests::load();
    let route = route_config(&m);
    assert_eq!((route.rollout.as_str(), route.stable.as_str(), route.canary.as_str()), ("payment-svc", "v1", "v2"));
    // The agent's fields are the agent's alone: left out, so re-applying the manifest (kubectl apply, a GitOps
    // sync) never moves the weight or sends the revision backwards (gate-agent/tests/mesh.rs shows it on a real
    // API server).
    let config = m.get("WasmPlugin", "canary-gate")["spec"]["pluginConfig"].as_object().unwrap();
    for owned in ["canary_weight", "revision", "rollout_state"] {
        assert!(!config.contains_key(owned), "the manifest sets `{owned}`, which gate-agent owns");
    }
    assert_eq!(route.canary_weight.percent(), 0.0, "nothing on the canary until gate-agent starts");
    assert_eq!(route.revision, 0);
    assert!(route.rollout_state.is_none(), "a new rollout carries no agent state");
    // gate-agent reads the object with its own type and finds the same configuration.
    let typed: gate_agent::mesh::wasmplugin::WasmPlugin =
        serde_json::from_value(m.get("WasmPlugin", "canary-gate").clone()).unwrap();
    let seen = gate_agent::mesh::wasmplugin::route_config_of(&typed.spec.plugin_config.unwrap()).unwrap();
    assert_eq!(seen, route);
}

#[test]
fn the_snapshot_plugin_runs_the_same_module_in_the_same_vm_behind_istio_authz() {
    let m = Manifests::load();
    let route = &m.get("WasmPlugin", "canary-gate")["spec"];
    let snapshot = &m.get("WasmPlugin", "canary-gate-snapshot")["spec"];
    // Same code and VM settings: the same VM key, and in any case the same (empty) vm_id, which keys the
    // shared data holding the counters.
    for field in ["url", "sha256", "pluginName", "vmConfig", "imagePullPolicy", "selector"] {
        assert_eq!(route.get(field), snapshot.get(field), "both WasmPlugins have the same {field}");
    }
    let config = canary_core::config::parse(&serde_json::to_vec(&snapshot["pluginConfig"]).unwrap()).unwrap();
    let PluginConfig::SnapshotEndpoint(endpoint) = config else { panic!("the snapshot plugin has the snapshot role") };
    assert_eq!(
        (endpoint.path.as_str(), endpoint.kill_path.as_str()),
        ("/canary-gate/v1/snapshot", "/canary-gate/v1/kill")
    );
    assert_eq!(snapshot["match"], json!([{ "mode": "SERVER", "ports": [{ "number": 15290 }] }]));
    // Not AUTHN/AUTHZ: the AuthorizationPolicy on the port must decide before the plugin answers.
    assert!(snapshot.get("phase").is_none_or(|p| p == "STATS"), "{:?}", snapshot.get("phase"));
    assert_eq!(snapshot["failStrategy"], "FAIL_CLOSE");
}

#[test]
fn the_virtual_service_sends_only_the_label_to_the_canary_and_everything_else_to_stable() {
    let m = Manifests::load();
    let route = route_config(&m);
    let (stable, canary, label) = (route.stable.as_str(), route.canary.as_str(), route.label_header.as_str());
    let clients = &m.get("WasmPlugin", "canary-gate")["spec"]["selector"]["matchLabels"];
    let dr = &m.get("DestinationRule", "payment-svc")["spec"];
    let host = str_of(&dr["host"], "DestinationRule host");
    let subsets: Vec<(&str, &Value)> =
        dr["subsets"].as_array().unwrap().iter().map(|s| (s["name"].as_str().unwrap(), &s["labels"])).collect();
    assert_eq!(subsets, [(stable, &json!({ "version": stable })), (canary, &json!({ "version": canary }))]);
    assert!(!serde_json::to_string(dr).unwrap().contains("consistentHash"), "the filter, not the LB, picks the subset");

    let vs = &m.get("VirtualService", "payment-svc")["spec"];
    assert_eq!(vs["hosts"], json!([host]));
    let routes = vs["http"].as_array().unwrap();
    for r in routes {
        let destinations = r["route"].as_array().unwrap();
        assert_eq!(destinations.len(), 1, "one destination per route, never a weighted split: {r}");
        assert!(destinations[0].get("weight").is_none(), "no weights: {r}");
        assert_eq!(destinations[0]["destination"]["host"], host);
        assert_eq!(r["headers"]["request"]["remove"], json!([label]), "the label does not leak to the next hop");
        assert!(r["timeout"].as_str().is_some_and(|t| t != "0s"), "a hung canary ends in a counted timeout: {r}");
    }
    let (default, labelled) = routes.split_last().unwrap();
    assert!(default.get("match").is_none(), "the last route takes everything: {default}");
    assert_eq!(default["route"][0]["destination"]["subset"], stable, "the default route is stable");
    assert_eq!(labelled.len(), 1);
    // The label the filter writes, with its secret: a client's bare `v2` matches nothing.
    assert!(route.label_token.is_some(), "the shipped filter config has a label_token");
    let secret_label = route.label_value(&route.canary);
    assert_ne!(secret_label, canary);
    assert_eq!(
        labelled[0]["match"],
        json!([{ "headers": { label: { "exact": secret_label } }, "sourceLabels": clients }])
    );
    assert_eq!(labelled[0]["route"][0]["destination"]["subset"], canary);
}

#[test]
fn the_rollout_spec_parses_and_describes_the_plugins_rollout() {
    let m = Manifests::load();
    let data = &m.get("ConfigMap", "canary-gate-rollout")["data"];
    let spec = gate_agent::Spec::from_yaml_or_json(str_of(&data["rollout.yaml"], "rollout.yaml"))
        .unwrap_or_else(|e| panic!("gate-agent rejects the rollout spec: {e:?}"));
    gate_agent::control::check_matches(&spec, &route_config(&m)).unwrap();
    assert!(spec.max_weight().percent() <= 50.0, "the canary never takes the majority before promotion");

    // The Deployment mounts that key at the path it passes as --spec.
    let pod = &m.get("Deployment", "canary-gate-agent")["spec"]["template"]["spec"];
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["configMap"]["name"] == "canary-gate-rollout");
    let volume = volume.expect("a volume from the canary-gate-rollout ConfigMap");
    let mount = agent_container(&m)["volumeMounts"].as_array().unwrap().iter().find(|v| v["name"] == volume["name"]);
    let dir = str_of(&mount.expect("the rollout volume is mounted")["mountPath"], "mountPath");
    let item = &volume["configMap"]["items"][0];
    assert_eq!(item["key"], "rollout.yaml");
    assert_eq!(agent_flag(&m, "spec"), format!("{dir}/{}", str_of(&item["path"], "path")));
}

#[test]
fn the_agent_role_grants_exactly_the_calls_gate_agent_makes() {
    let m = Manifests::load();
    let rules: BTreeSet<String> = m.get("Role", "canary-gate-agent")["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let list = |k: &str| r.get(k).map_or(String::new(), |v| serde_json::to_string(v).unwrap());
            format!("{} {} {} {}", list("apiGroups"), list("resources"), list("resourceNames"), list("verbs"))
        })
        .collect();
    let wasmplugin = agent_flag(&m, "wasmplugin");
    let lease = agent_flag(&m, "lease");
    let expected: BTreeSet<String> = [
        // Read the pluginConfig and its resourceVersion; merge-patch the agent's three fields.
        format!(r#"["extensions.istio.io"] ["wasmplugins"] ["{wasmplugin}"] ["get","patch"]"#),
        // The same for a TrafficExtension of that name (`--router trafficextension`).
        format!(r#"["extensions.istio.io"] ["trafficextensions"] ["{wasmplugin}"] ["get","patch"]"#),
        // Leader election: read, renew and release the one Lease...
        format!(r#"["coordination.k8s.io"] ["leases"] ["{lease}"] ["get","update"]"#),
        // ...and create it the first time (a create names no object, so resourceNames cannot apply).
        r#"["coordination.k8s.io"] ["leases"]  ["create"]"#.to_owned(),
        // Discovery by label selector.
        r#"[""] ["pods"]  ["list"]"#.to_owned(),
        // One Event per phase change.
        r#"[""] ["events"]  ["create"]"#.to_owned(),
    ]
    .into();
    assert_eq!(rules, expected);
    assert_eq!(wasmplugin, "canary-gate");
    m.get("WasmPlugin", &wasmplugin);

    let binding = m.get("RoleBinding", "canary-gate-agent");
    assert_eq!(
        binding["roleRef"],
        json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "canary-gate-agent" })
    );
    assert_eq!(binding["subjects"], json!([{ "kind": "ServiceAccount", "name": "canary-gate-agent" }]));
    m.get("ServiceAccount", "canary-gate-agent");
    let pod = &m.get("Deployment", "canary-gate-agent")["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "canary-gate-agent");
    assert!(
        m.of_kind("ClusterRole").is_empty() && m.of_kind("ClusterRoleBinding").is_empty(),
        "namespaced rights only"
    );
}

#[test]
fn the_agent_deployment_is_hardened_elects_a_leader_and_reads_its_token_from_a_secret() {
    let m = Manifests::load();
    let deployment = &m.get("Deployment", "canary-gate-agent")["spec"];
    assert_eq!(deployment["replicas"], 2);
    // A standby cannot become ready while the old leader holds the Lease: a rolling update would never finish.
    assert_eq!(deployment["strategy"]["type"], "Recreate");
    let pod = &deployment["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = agent_container(&m);
    let sc = &c["securityContext"];
    assert_eq!(
        (&sc["allowPrivilegeEscalation"], &sc["readOnlyRootFilesystem"], &sc["capabilities"]["drop"]),
        (&json!(false), &json!(true), &json!(["ALL"]))
    );
    for k in ["cpu", "memory"] {
        assert!(c["resources"]["requests"][k].is_string() && c["resources"]["limits"][k].is_string(), "{k}");
    }

    let listen = agent_flag(&m, "listen");
    let port: u16 = listen.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_eq!(c["ports"], json!([{ "name": "http-api", "containerPort": port, "protocol": "TCP" }]));
    assert_eq!(c["readinessProbe"]["httpGet"], json!({ "path": "/readyz", "port": "http-api" }));
    assert_eq!(c["livenessProbe"]["httpGet"], json!({ "path": "/healthz", "port": "http-api" }));
    let service = &m.get("Service", "canary-gate-agent")["spec"];
    assert_eq!(service["ports"][0]["targetPort"], "http-api");
    assert_eq!(&service["selector"], &deployment["selector"]["matchLabels"]);

    let env: Vec<&Value> = c["env"].as_array().unwrap().iter().collect();
    let var = |name: &str| env.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("env {name}"));
    assert_eq!(var("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(var("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(
        var("GATE_AGENT_TOKEN")["valueFrom"]["secretKeyRef"],
        json!({ "name": "canary-gate-agent-token", "key": "token" })
    );
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[0], "run");
    assert!(!args.iter().any(|a| a.starts_with("--token")), "the token stays out of the command line");
    assert!(!listen.starts_with("127."), "the API is reachable from the Service, so actions need the token");
    assert_eq!(agent_flag(&m, "router"), "wasmplugin");
    assert_eq!(agent_flag(&m, "namespace"), "$(POD_NAMESPACE)");
    assert_eq!(agent_flag(&m, "identity"), "$(POD_NAME)");
    // The agent reads the very proxies the WasmPlugins run in, on the snapshot plugin's port.
    let plugin = &m.get("WasmPlugin", "canary-gate-snapshot")["spec"];
    assert_eq!(agent_flag(&m, "pod-selector"), selector_string(&plugin["selector"]["matchLabels"]));
    assert_eq!(agent_flag(&m, "pod-port"), plugin["match"][0]["ports"][0]["number"].to_string());
}

#[test]
fn every_flag_the_deployment_passes_exists_in_gate_agent() {
    let bin = paths::gate_agent_bin().unwrap();
    let out = run(Command::new(bin).args(["run", "--help"]), None, "");
    assert!(out.status.success(), "{}", text(&out));
    let help = String::from_utf8(out.stdout).unwrap();
    let m = Manifests::load();
    for arg in agent_container(&m)["args"].as_array().unwrap().iter().skip(1) {
        let flag = str_of(arg, "arg").split('=').next().unwrap();
        assert!(help.contains(&format!("{flag} <")), "gate-agent run has no {flag}:\n{help}");
    }
    assert!(help.contains("[possible values: file, wasmplugin, trafficextension]"), "{help}");
}

#[test]
fn only_the_agent_reaches_the_snapshot_port() {
    let m = Manifests::load();
    let plugin = &m.get("WasmPlugin", "canary-gate-snapshot")["spec"];
    let clients = &plugin["selector"]["matchLabels"];
    let port = plugin["match"][0]["ports"][0]["number"].as_u64().unwrap();
    let agent_sa = m.get("Deployment", "canary-gate-agent")["spec"]["template"]["spec"]["serviceAccountName"].clone();
    let agent_pods = &m.get("Deployment", "canary-gate-agent")["spec"]["template"]["metadata"]["labels"];

    // Istio declares the port as HTTP, so the plugin's inbound chain exists; headless, for mTLS per pod.
    let svc = m.get("Service", "canary-gate-snapshot");
    assert_eq!(svc["metadata"]["annotations"]["networking.istio.io/exportTo"], ".");
    let svc = &svc["spec"];
    assert_eq!((&svc["clusterIP"], &svc["selector"]), (&json!("None"), clients));
    assert_eq!(svc["ports"].as_array().unwrap().len(), 1);
    let svc_port = &svc["ports"][0];
    assert_eq!((svc_port["port"].as_u64(), svc_port["targetPort"].as_u64()), (Some(port), Some(port)));
    assert_eq!(svc_port["appProtocol"], "http");

    // Mesh identity: everyone but the agent's ServiceAccount is denied on that port, and nothing else.
    let policy = &m.get("AuthorizationPolicy", "canary-gate-snapshot")["spec"];
    let principal = format!("*/ns/{NAMESPACE}/sa/{}", str_of(&agent_sa, "serviceAccountName"));
    assert_eq!(
        policy,
        &json!({
            "selector": { "matchLabels": clients },
            "action": "DENY",
            "rules": [{
                "from": [{ "source": { "notPrincipals": [principal] } }],
                "to": [{ "operation": { "ports": [port.to_string()] } }],
            }],
        })
    );

    // Network: only the agent's pods open connections to the port...
    let np = &m.get("NetworkPolicy", "canary-gate-snapshot")["spec"];
    assert_eq!((&np["podSelector"]["matchLabels"], &np["policyTypes"]), (clients, &json!(["Ingress"])));
    let rules = np["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["ports"], json!([{ "protocol": "TCP", "port": port }]));
    let from = rules[0]["from"].as_array().unwrap();
    assert_eq!(from.len(), 1, "one peer: the agent's pods");
    for (k, v) in from[0]["podSelector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&agent_pods[k], v, "the NetworkPolicy's peer selects the agent's pods");
    }
    // ...and the companion policy keeps every other port as open as it was, but not this one.
    let others = &m.get("NetworkPolicy", "canary-gate-snapshot-other-ports")["spec"];
    assert_eq!(&others["podSelector"]["matchLabels"], clients);
    let rules = others["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].get("from").is_none(), "from every source");
    let mut tcp_open = BTreeSet::new();
    for p in rules[0]["ports"].as_array().unwrap() {
        let (lo, hi) = (p["port"].as_u64().unwrap(), p["endPort"].as_u64().unwrap());
        match p["protocol"].as_str().unwrap() {
            "TCP" => tcp_open.extend(lo..=hi),
            _ => assert_eq!((lo, hi), (1, 65535), "{p}"),
        }
    }
    assert_eq!(tcp_open, (1..=65535).filter(|&p| p != port).collect::<BTreeSet<u64>>());
}

#[test]
fn the_proxy_bootstrap_override_labels_subsets_like_the_local_setup_and_envoy_accepts_it() {
    let m = Manifests::load();
    let config_map = m.get("ConfigMap", "canary-gate-proxy-bootstrap");
    let override_json = str_of(&config_map["data"]["custom_bootstrap.json"], "custom_bootstrap.json");
    let bootstrap: Value = serde_json::from_str(override_json).unwrap();
    let stats = &bootstrap["stats_config"];
    assert_eq!(stats["stats_tags"], json!([{ "tag_name": "subset", "regex": canary_core::metrics::SUBSET_TAG_REGEX }]));
    let local: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(paths::deploy_local().join("envoy.yaml")).unwrap()).unwrap();
    let buckets = &local["stats_config"]["histogram_bucket_settings"];
    assert_eq!(&stats["histogram_bucket_settings"], buckets, "the same buckets as the local setup");
    let regex = buckets[0]["match"]["safe_regex"]["regex"].as_str().unwrap();
    assert!(regex.contains(canary_core::metrics::DURATION_US), "{regex}");

    // The client workloads take it by annotation (Istio mounts the ConfigMap into the sidecar).
    let example = &m.get("Deployment", "frontend")["spec"]["template"];
    assert_eq!(example["metadata"]["annotations"]["sidecar.istio.io/bootstrapOverride"], "canary-gate-proxy-bootstrap");
    for (k, v) in m.get("WasmPlugin", "canary-gate")["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&example["metadata"]["labels"][k], v, "the example is a client the plugins select");
    }

    // Envoy merges it into a bootstrap as Istio's sidecar does (--config-yaml): the regex must compile.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("bootstrap.yaml");
    std::fs::write(&base, "node: {id: t, cluster: t}\n").unwrap();
    let out = run(
        Command::new(paths::envoy_bin().unwrap())
            .args(["--mode", "validate", "--base-id", "10", "-c"])
            .arg(&base)
            .args(["--config-yaml", override_json]),
        None,
        "",
    );
    assert!(out.status.success(), "Envoy rejects the bootstrap override:\n{}", text(&out));
}

/// Runs build-oci.py on `wasm` into `out`; returns its output.
fn build_oci(wasm: &Path, out: &Path) -> Output {
    let script = paths::workspace_root().join("deploy/oci/build-oci.py");
    run(
        Command::new("python3").arg(script).arg("--wasm").arg(wasm).arg("--out").arg(out).args(["--tag", "1.2.3"]),
        None,
        "python3 is needed for `make oci`",
    )
}

fn json_file(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The blob a descriptor points at, after checking its digest and size.
fn blob(layout: &Path, descriptor: &Value) -> PathBuf {
    let digest = str_of(&descriptor["digest"], "digest");
    let hex = digest.strip_prefix("sha256:").unwrap();
    let path = layout.join("blobs/sha256").join(hex);
    assert_eq!(sha256_hex(&path), hex, "blob {digest} has that digest");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), descriptor["size"].as_u64().unwrap(), "size of {digest}");
    path
}

#[test]
fn make_oci_builds_the_image_layout_istio_pulls_with_a_stable_digest() {
    let dir = tempfile::tempdir().unwrap();
    let wasm_path = dir.path().join("fake.wasm");
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    wasm.extend((0..5000u32).map(|i| (i * 7 % 251) as u8));
    std::fs::write(&wasm_path, &wasm).unwrap();

    let (first, second) = (dir.path().join("a"), dir.path().join("b"));
    let out = build_oci(&wasm_path, &first);
    let report = text(&out);
    assert!(out.status.success(), "build-oci.py failed:\n{report}");
    assert!(build_oci(&wasm_path, &second).status.success());

    let layout = first.join("canary-gate-filter");
    assert_eq!(json_file(&layout.join("oci-layout")), json!({ "imageLayoutVersion": "1.0.0" }));
    let index = json_file(&layout.join("index.json"));
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifests[0]["annotations"]["org.opencontainers.image.ref.name"], "1.2.3");
    let digest = str_of(&manifests[0]["digest"], "digest").to_owned();

    // The compat variant istio-agent reads: an OCI image whose last layer is a tar+gzip with plugin.wasm.
    let manifest = json_file(&blob(&layout, &manifests[0]));
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    let config = json_file(&blob(&layout, &manifest["config"]));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let layer = blob(&layout, &layers[0]);
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let tar = run(Command::new("tar").arg("-xzf").arg(&layer).arg("-C").arg(&unpacked), None, "tar");
    assert!(tar.status.success(), "{}", text(&tar));
    let names: Vec<String> =
        std::fs::read_dir(&unpacked).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["plugin.wasm"]);
    assert_eq!(std::fs::read(unpacked.join("plugin.wasm")).unwrap(), wasm);
    let gunzip = run(Command::new("gzip").arg("-dc").arg(&layer), None, "gzip");
    let tar_path = dir.path().join("layer.tar");
    std::fs::write(&tar_path, &gunzip.stdout).unwrap();
    assert_eq!(
        config["rootfs"],
        json!({ "type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&tar_path))] })
    );
    let mut blobs: Vec<String> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    blobs.sort();
    let mut referenced: Vec<String> = [&manifests[0], &manifest["config"], &layers[0]]
        .iter()
        .map(|d| d["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned())
        .collect();
    referenced.sort();
    assert_eq!(blobs, referenced, "no stray blobs");

    // What to pin: printed, and written next to the layout.
    assert!(report.contains(&format!("manifest  {digest}")), "{report}");
    assert!(report.contains(&format!("sha256: \"{}\"", digest.trim_start_matches("sha256:"))), "{report}");
    let written = std::fs::read_to_string(first.join("canary-gate-filter.digest")).unwrap();
    assert_eq!(written.trim(), digest);

    // Deterministic: a second build is byte for byte the same, archive included.
    assert_eq!(std::fs::read_to_string(second.join("canary-gate-filter.digest")).unwrap(), written);
    let archive = |d: &Path| std::fs::read(d.join("canary-gate-filter.tar")).unwrap();
    assert_eq!(archive(&first), archive(&second), "the layout archive is reproducible");
    let listing = run(Command::new("tar").arg("-tf").arg(first.join("canary-gate-filter.tar")), None, "tar");
    let listing = String::from_utf8(listing.stdout).unwrap();
    for entry in ["oci-layout", "index.json", &format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))] {
        assert!(listing.lines().any(|l| l == entry), "{entry} in the archive:\n{listing}");
    }
}

#[test]
fn make_oci_refuses_a_file_that_is_not_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let not_wasm = dir.path().join("filter.wasm");
    std::fs::write(&not_wasm, b"#!/bin/sh\n").unwrap();
    let out = build_oci(&not_wasm, &dir.path().join("out"));
    assert!(!out.status.success());
    assert!(text(&out).contains("is not a WebAssembly module"), "{}", text(&out));
    assert!(!dir.path().join("out/canary-gate-filter").exists(), "nothing half-built is left to push");
}
