//! `gate-agent validate`, the weight-typo guard, as users run it: realistic manifests in
//! (`tests/manifests/`, plus small inline variations), findings, lines and exit codes out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use gate_agent::validate::{Check, EXIT_CLEAN, EXIT_ERRORS, EXIT_USAGE, Input, Inputs, Report, Severity, validate};
use proptest::prelude::*;

fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/manifests")
}

/// A fixture from `tests/manifests/`, reported by its file name.
fn file(name: &str) -> Input {
    let text = std::fs::read_to_string(manifests().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    Input { name: name.into(), text }
}

fn inline(name: &str, text: &str) -> Input {
    Input { name: name.into(), text: text.into() }
}

/// What a finding must be: its rule, severity, path, and words its message must contain.
#[derive(Debug, Clone)]
struct Expect {
    check: Check,
    severity: Severity,
    path: &'static str,
    says: &'static [&'static str],
}

fn error(check: Check, path: &'static str, says: &'static [&'static str]) -> Expect {
    Expect { check, severity: Severity::Error, path, says }
}

fn warning(check: Check, path: &'static str, says: &'static [&'static str]) -> Expect {
    Expect { check, severity: Severity::Warning, path, says }
}

/// One scenario: the inputs, the exit code, and every error and warning expected (in report order).
struct Case {
    name: &'static str,
    inputs: Inputs,
    exit: u8,
    expect: Vec<Expect>,
}

fn case(name: &'static str, files: Vec<Input>, exit: u8, expect: Vec<Expect>) -> Case {
    Case { name, inputs: Inputs { files, ..Inputs::default() }, exit, expect }
}

impl Case {
    fn spec(mut self, spec: Input) -> Self {
        self.inputs.spec = Some(spec);
        self
    }

    fn live(mut self, live: Input) -> Self {
        self.inputs.live.push(live);
        self
    }

    fn check(&self) -> Report {
        let report = validate(&self.inputs);
        let shown = report.to_text();
        let got: Vec<_> = report.findings.iter().filter(|f| f.severity != Severity::Info).collect();
        assert_eq!(
            got.iter().map(|f| (f.check, f.severity, f.path.as_str())).collect::<Vec<_>>(),
            self.expect.iter().map(|e| (e.check, e.severity, e.path)).collect::<Vec<_>>(),
            "{}: findings\n{shown}",
            self.name
        );
        for (f, e) in got.iter().zip(&self.expect) {
            for words in e.says {
                assert!(
                    f.message.contains(words) || f.fix.contains(words),
                    "{}: {words:?} missing in\n{shown}",
                    self.name
                );
            }
            assert!(!f.fix.is_empty(), "{}: every error and warning says how to fix it\n{shown}", self.name);
        }
        assert_eq!(report.exit_code(), self.exit, "{}: exit code\n{shown}", self.name);
        report
    }
}

fn dr() -> Input {
    file("payment-destinationrule.yaml")
}

/// A VirtualService splitting payment-svc between `a` and `b` (subsets), with optional extras
/// (annotations, a header-matched route) spliced in.
fn split_vs(annotations: &str, dark_launch_to: Option<&str>, (a, wa): (&str, &str), (b, wb): (&str, &str)) -> String {
    let dark = dark_launch_to.map_or(String::new(), |to| {
        format!(
            "  - match:
    - headers:
        x-canary:
          exact: \"true\"
    route:
    - destination:
        host: payment-svc
        subset: {to}
"
        )
    });
    payment_vs(
        annotations,
        &format!(
            "{dark}  - route:
    - destination:
        host: payment-svc
        subset: {a}
      weight: {wa}
    - destination:
        host: payment-svc
        subset: {b}
      weight: {wb}
"
        ),
    )
}

/// VirtualService `production/payment-svc` with `annotations` (metadata lines) and `http` routes.
fn payment_vs(annotations: &str, http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: payment-svc
  namespace: production
{annotations}spec:
  hosts:
  - payment-svc
  http:
{http}"
    )
}

fn subsets_dr(subsets: &[(&str, &str)]) -> String {
    let mut text = String::from(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: payment-svc
  namespace: production
spec:
  host: payment-svc
  subsets:
",
    );
    for (name, labels) in subsets {
        text.push_str(&format!("  - name: {name}\n    labels: {labels}\n"));
    }
    text
}

/// canary-gate's WasmPlugin for payment-svc at `weight`, with extra pluginConfig lines.
fn wasm_plugin(weight: &str, extra: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: canary-gate
  namespace: production
spec:
  selector:
    matchLabels:
      app: payment-svc
  url: oci://registry.example/canary-gate/filter:0.1.0
  pluginConfig:
    version: 1
    rollout: payment-svc
    stable: v1
    canary: v2
    canary_weight: {weight}
{extra}"
    )
}

#[test]
fn the_incident_and_its_typos() {
    let cases = [
        case(
            "the explainer's 90/10 with a header match is clean",
            vec![file("payment-canary-90-10.yaml"), dr()],
            EXIT_CLEAN,
            vec![],
        ),
        case(
            "the incident's 1/99 is a direction swap naming both weights and what was meant",
            vec![file("payment-canary-1-99.yaml"), dr()],
            EXIT_ERRORS,
            vec![error(
                Check::DirectionSwap,
                "spec.http[0].route[1].weight",
                &["v1: 1, v2: 99 sends 99% to the canary v2; did you mean v1: 99, v2: 1?", "v1 is older than v2"],
            )],
        ),
        case(
            "10/90 (the 90/10 case written backwards) is a swap too",
            vec![inline("vs.yaml", &split_vs("", None, ("v1", "10"), ("v2", "90"))), dr()],
            EXIT_ERRORS,
            vec![error(Check::DirectionSwap, "spec.http[0].route[1].weight", &["did you mean v1: 90, v2: 10?"])],
        ),
        case(
            "1/99 against the rollout spec is also above maxWeight",
            vec![file("payment-canary-1-99.yaml"), dr()],
            EXIT_ERRORS,
            vec![
                error(
                    Check::DirectionSwap,
                    "spec.http[0].route[1].weight",
                    &["the rollout spec payment-svc (rollout.yaml) says so"],
                ),
                error(Check::MaxWeight, "spec.http[0].route[1].weight", &["v2 gets 99%", "above maxWeight 50%"]),
            ],
        )
        .spec(file("rollout.yaml")),
        case(
            "9/10 warns with the real split, and the canary's majority is a swap",
            vec![file("payment-canary-9-10.yaml"), dr()],
            EXIT_ERRORS,
            vec![
                warning(Check::WeightSum, "spec.http[1].route", &["sum to 19, not 100", "9/10 sends 52.6% to v2"]),
                error(
                    Check::DirectionSwap,
                    "spec.http[1].route[1].weight",
                    &["did you mean v1: 90, v2: 10?", "a dark launch"],
                ),
            ],
        ),
        case(
            "90/100 warns with the real split, and the canary's majority is a swap",
            vec![file("payment-canary-90-100.yaml"), dr()],
            EXIT_ERRORS,
            vec![
                warning(Check::WeightSum, "spec.http[1].route", &["sum to 190", "90/100 sends 52.6% to v2"]),
                error(Check::DirectionSwap, "spec.http[1].route[1].weight", &["did you mean v1: 90, v2: 10?"]),
            ],
        ),
        case(
            "100/90 only warns: stable is still ahead",
            vec![inline("vs.yaml", &split_vs("", None, ("v1", "100"), ("v2", "90"))), dr()],
            EXIT_CLEAN,
            vec![warning(Check::WeightSum, "spec.http[0].route", &["100/90 sends 47.4% to v2", "v1: 53, v2: 47"])],
        ),
        case(
            "a declared promotion may put the canary ahead",
            vec![
                inline(
                    "vs.yaml",
                    &split_vs(
                        "  annotations:\n    canary-gate.dev/promotion: \"true\"\n",
                        None,
                        ("v1", "0"),
                        ("v2", "100"),
                    ),
                ),
                dr(),
            ],
            EXIT_CLEAN,
            vec![],
        )
        .spec(file("rollout.yaml")),
        case(
            "canary-gate recording a promotion allows it too",
            vec![
                inline("vs.yaml", &split_vs("", None, ("v1", "0"), ("v2", "100"))),
                dr(),
                inline("plugin.yaml", &wasm_plugin("100", "    rollout_state: { phase: promoting }\n")),
            ],
            EXIT_CLEAN,
            vec![],
        )
        .spec(file("rollout.yaml")),
    ];
    for c in cases {
        c.check();
    }
}

#[test]
fn who_is_stable_comes_from_the_best_evidence() {
    let cases = [
        case(
            "a dark launch names the canary even without version numbers",
            vec![
                inline("vs.yaml", &split_vs("", Some("green"), ("blue", "10"), ("green", "90"))),
                inline("dr.yaml", &subsets_dr(&[("blue", "{ color: blue }"), ("green", "{ color: green }")])),
            ],
            EXIT_ERRORS,
            vec![error(
                Check::DirectionSwap,
                "spec.http[1].route[1].weight",
                &["to the canary green", "did you mean blue: 90, green: 10?"],
            )],
        ),
        case(
            "header routes to both sides prove nothing; the next rule decides",
            vec![
                inline(
                    "vs.yaml",
                    "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payment-svc, namespace: production }
spec:
  http:
  - match:
    - headers: { x-canary: { exact: \"true\" } }
    route:
    - destination: { host: payment-svc, subset: green }
  - match:
    - headers: { x-force-stable: { exact: \"1\" } }
    route:
    - destination: { host: payment-svc, subset: blue }
  - route:
    - destination: { host: payment-svc, subset: blue }
      weight: 20
    - destination: { host: payment-svc, subset: green }
      weight: 80
",
                ),
                inline("dr.yaml", &subsets_dr(&[("blue", "{ color: blue }"), ("green", "{ color: green }")])),
            ],
            EXIT_ERRORS,
            vec![error(Check::DirectionSwap, "spec.http[2].route[1].weight", &["route's first destination"])],
        ),
        case(
            "DestinationRule labels name the canary",
            vec![
                inline("vs.yaml", &split_vs("", None, ("baseline", "30"), ("candidate", "70"))),
                inline(
                    "dr.yaml",
                    &subsets_dr(&[("baseline", "{ track: stable }"), ("candidate", "{ track: canary }")]),
                ),
            ],
            EXIT_ERRORS,
            vec![error(
                Check::DirectionSwap,
                "spec.http[0].route[1].weight",
                &["to the canary candidate", "track: canary"],
            )],
        ),
        case(
            "the rollout spec beats the version order (rolling back to v1 as a canary)",
            vec![inline("vs.yaml", &split_vs("", None, ("v2", "10"), ("v1", "90"))), dr()],
            EXIT_ERRORS,
            vec![
                error(
                    Check::DirectionSwap,
                    "spec.http[0].route[1].weight",
                    &["v2: 10, v1: 90 sends 90% to the canary v1"],
                ),
                error(Check::MaxWeight, "spec.http[0].route[1].weight", &["above maxWeight 50%"]),
            ],
        )
        .spec(inline(
            "rollback.yaml",
            "name: payment-svc\nstable: v2\ncanary: v1\ninterval: 1m\nstepWeights: [10, 50]\n",
        )),
        case(
            "with nothing else to go on, the first destination is stable",
            vec![
                inline("vs.yaml", &split_vs("", None, ("blue", "20"), ("green", "80"))),
                inline("dr.yaml", &subsets_dr(&[("blue", "{ color: blue }"), ("green", "{ color: green }")])),
            ],
            EXIT_ERRORS,
            vec![error(Check::DirectionSwap, "spec.http[0].route[1].weight", &["route's first destination"])],
        ),
        case(
            "service-per-version hosts: the -canary host is the canary",
            vec![inline(
                "vs.yaml",
                "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: payment
spec:
  hosts: [payment]
  http:
  - route:
    - destination: { host: payment-canary }
      weight: 99
    - destination: { host: payment }
      weight: 1
",
            )],
            EXIT_ERRORS,
            vec![error(
                Check::DirectionSwap,
                "spec.http[0].route[0].weight",
                &["payment: 1, payment-canary: 99", "of the name payment-canary"],
            )],
        ),
    ];
    for c in cases {
        c.check();
    }
}

#[test]
fn subsets_hashing_and_the_filter_config() {
    let cases = [
        case(
            "a subset no DestinationRule defines is the 503 window",
            vec![file("missing-subset.yaml")],
            EXIT_ERRORS,
            vec![error(
                Check::MissingSubset,
                "spec.http[0].route[1].destination.subset",
                &["subset v2 of payment-svc", "503"],
            )],
        ),
        case(
            "a VirtualService checked without its DestinationRule cannot prove its subsets, once per subset",
            vec![file("payment-canary-90-10.yaml")],
            EXIT_ERRORS,
            vec![
                error(
                    Check::MissingSubset,
                    "spec.http[0].route[0].destination.subset",
                    &["no DestinationRule for payment-svc"],
                ),
                error(Check::MissingSubset, "spec.http[1].route[0].destination.subset", &["subset v1"]),
            ],
        ),
        case(
            "the applied DestinationRule given with --live counts",
            vec![file("payment-canary-90-10.yaml")],
            EXIT_CLEAN,
            vec![],
        )
        .live(dr()),
        case(
            "consistentHash on a host split by weight points to the filter's sticky key",
            vec![file("consistent-hash.yaml")],
            EXIT_CLEAN,
            vec![warning(
                Check::StickyHash,
                "spec.trafficPolicy.loadBalancer.consistentHash",
                &["cookie session", "flip between versions", "pluginConfig.sticky to {\"cookie\": \"session\"}"],
            )],
        ),
        case(
            "a pluginConfig the filter would reject is an error at its field",
            vec![file("bad-plugin-config.yaml")],
            EXIT_ERRORS,
            vec![error(Check::PluginConfig, "spec.pluginConfig.canary_wieght", &["unknown field `canary_wieght`"])],
        ),
        case(
            "a pluginConfig weight out of range is rejected as the filter rejects it",
            vec![inline("plugin.yaml", &wasm_plugin("101", ""))],
            EXIT_ERRORS,
            vec![error(Check::PluginConfig, "spec.pluginConfig.canary_weight", &["outside 0..=100"])],
        ),
        case(
            "a WasmPlugin above the spec's maxWeight",
            vec![inline("plugin.yaml", &wasm_plugin("60", ""))],
            EXIT_ERRORS,
            vec![error(
                Check::MaxWeight,
                "spec.pluginConfig.canary_weight",
                &["canary_weight 60% is above maxWeight 50%"],
            )],
        )
        .spec(file("rollout.yaml")),
        case(
            "a filter config naming other subsets than the spec",
            vec![inline("plugin.yaml", &wasm_plugin("10", "").replace("canary: v2", "canary: v3"))],
            EXIT_ERRORS,
            vec![error(
                Check::SpecMismatch,
                "spec.pluginConfig.canary",
                &["canary is v3 here but v2 in the rollout spec payment-svc"],
            )],
        )
        .spec(file("rollout.yaml")),
        case(
            "another plugin's WasmPlugin is not ours to check",
            vec![inline(
                "authz.yaml",
                "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: authz }
spec:
  url: oci://example/authz:1
  pluginConfig: { realm: shop }
",
            )],
            EXIT_CLEAN,
            vec![],
        ),
    ];
    for c in cases {
        c.check();
    }
}

#[test]
fn steps_are_counted_from_the_weight_applied_now() {
    let cases = [
        case(
            "a jump past the next step from the live VirtualService",
            vec![file("payment-canary-50-50.yaml"), dr()],
            EXIT_ERRORS,
            vec![error(
                Check::StepJump,
                "spec.http[1].route[1].weight",
                &[
                    "10% to 50% is more than one step (the next step is 25%)",
                    "live-90-10.yaml",
                    "Raise v2 to 25% at most",
                ],
            )],
        )
        .spec(file("rollout.yaml"))
        .live(file("live-90-10.yaml")),
        case(
            "one step up from the live VirtualService is fine",
            vec![inline("vs.yaml", &split_vs("", None, ("v1", "75"), ("v2", "25"))), dr()],
            EXIT_CLEAN,
            vec![],
        )
        .spec(file("rollout.yaml"))
        .live(file("live-90-10.yaml")),
        case(
            "the input's WasmPlugin is the weight applied now for its VirtualService",
            vec![file("payment-canary-50-50.yaml"), dr(), inline("plugin.yaml", &wasm_plugin("10", ""))],
            EXIT_ERRORS,
            vec![error(
                Check::StepJump,
                "spec.http[1].route[1].weight",
                &["canary_weight of WasmPlugin production/canary-gate (plugin.yaml)"],
            )],
        )
        .spec(file("rollout.yaml")),
        case(
            "a WasmPlugin jumping from its live weight",
            vec![inline("plugin.yaml", &wasm_plugin("25", ""))],
            EXIT_ERRORS,
            vec![error(
                Check::StepJump,
                "spec.pluginConfig.canary_weight",
                &["5% to 25% is more than one step (the next step is 10%)"],
            )],
        )
        .spec(file("rollout.yaml"))
        .live(inline("live.yaml", &wasm_plugin("5", ""))),
        case("going down is always allowed", vec![inline("plugin.yaml", &wasm_plugin("0", ""))], EXIT_CLEAN, vec![])
            .spec(file("rollout.yaml"))
            .live(inline("live.yaml", &wasm_plugin("25", ""))),
    ];
    for c in cases {
        c.check();
    }
}

#[test]
fn documents_that_cannot_be_read_are_errors_and_never_stop_the_rest() {
    let cases = [
        case(
            "garbage is a YAML error at its line, and the next file is still checked",
            vec![file("garbage.yaml"), file("payment-canary-1-99.yaml"), dr()],
            EXIT_ERRORS,
            vec![
                error(Check::Yaml, "", &["not valid YAML"]),
                error(Check::DirectionSwap, "spec.http[0].route[1].weight", &[]),
            ],
        ),
        case(
            "weights Istio would reject are schema errors with their path",
            vec![
                inline("vs.yaml", &split_vs("", None, ("v1", "\"90\""), ("v2", "10"))),
                inline("neg.yaml", &split_vs("", None, ("v1", "110"), ("v2", "-10"))),
                inline("frac.yaml", &split_vs("", None, ("v1", "87.5"), ("v2", "12.5"))),
                dr(),
            ],
            EXIT_ERRORS,
            vec![
                error(Check::Schema, "spec.http[0].route[0].weight", &["the string \"90\"", "without quotes"]),
                error(Check::Schema, "spec.http[0].route[1].weight", &["negative"]),
                error(Check::Schema, "spec.http[0].route[0].weight", &["not a whole number"]),
                error(Check::Schema, "spec.http[0].route[1].weight", &["not a whole number"]),
            ],
        ),
        case(
            "all weights 0 is an error; a lone destination's weight is ignored",
            vec![
                inline("zero.yaml", &split_vs("", None, ("v1", "0"), ("v2", "0"))),
                inline(
                    "lone.yaml",
                    "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: lone }
spec:
  http:
  - route:
    - destination: { host: payment-svc, subset: v2 }
      weight: 10
",
                ),
                dr(),
            ],
            EXIT_ERRORS,
            vec![
                error(Check::WeightSum, "spec.http[0].route", &["total destination weight = 0"]),
                warning(
                    Check::WeightSum,
                    "spec.http[0].route[0].weight",
                    &["gets 100% of this traffic; its weight 10 is ignored"],
                ),
            ],
        ),
        case(
            "a known kind with a wrong type, a stray line, a bare mapping",
            vec![inline(
                "mixed.yaml",
                "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: x }
spec:
  host: payment-svc
  subsets: { name: v1 }
---
just some text
---
foo: bar
",
            )],
            EXIT_ERRORS,
            vec![
                error(Check::Schema, "spec.subsets", &["DestinationRule field `spec.subsets`"]),
                error(Check::Schema, "", &["a string is not a Kubernetes object"]),
                error(Check::Schema, "", &["no apiVersion and kind"]),
            ],
        ),
        case(
            "a rollout spec gate-agent would reject",
            vec![inline(
                "rollout.yaml",
                "apiVersion: canary-gate.dev/v1
kind: Rollout
metadata: { name: payment-svc }
spec:
  stable: v1
  canary: v2
  interval: 1m
  stepWieght: 10
",
            )],
            EXIT_ERRORS,
            vec![error(Check::RolloutSpec, "spec.stepWieght", &["unknown field `stepWieght`"])],
        ),
        case(
            "--spec that holds no rollout spec",
            vec![file("payment-canary-90-10.yaml")],
            EXIT_ERRORS,
            vec![error(Check::RolloutSpec, "", &["--spec holds no rollout spec"])],
        )
        .spec(dr())
        .live(dr()),
        case(
            "an empty input checks nothing, and says so",
            vec![inline("<stdin>", "# nothing here\n---\n")],
            EXIT_CLEAN,
            vec![warning(Check::Empty, "", &["no YAML documents"])],
        ),
    ];
    for c in cases {
        c.check();
    }
}

#[test]
fn a_multi_document_stack_is_read_document_by_document() {
    let report = case(
        "a whole canary-gate stack in one file is clean",
        vec![file("canary-gate-stack.yaml")],
        EXIT_CLEAN,
        vec![],
    )
    .check();
    assert_eq!(report.documents, 5);
    let notes: Vec<_> = report.findings.iter().map(|f| (f.severity, f.check, f.document, f.line)).collect();
    assert_eq!(notes, [(Severity::Info, Check::UnknownKind, Some(1), Some(4))], "the Deployment is noted, not checked");

    // The same stack with the WasmPlugin pushed past maxWeight: the finding names document 5.
    let pushed = file("canary-gate-stack.yaml").text.replace("canary_weight: 10", "canary_weight: 75");
    let report = case(
        "the stack's WasmPlugin past maxWeight",
        vec![inline("stack.yaml", &pushed)],
        EXIT_ERRORS,
        vec![error(Check::MaxWeight, "spec.pluginConfig.canary_weight", &["75% is above maxWeight 50%"])],
    )
    .check();
    let f = &report.findings[1];
    let line = pushed.lines().position(|l| l.contains("canary_weight: 75")).map(|i| i + 1);
    assert_eq!((f.document, f.line, f.object.as_deref()), (Some(5), line, Some("WasmPlugin production/canary-gate")));

    // `kubectl get -o yaml` prints a List: its items are read, and paths say which.
    let listed = file("live-90-10.yaml").text.replace("weight: 90", "weight: 1").replace("weight: 10", "weight: 99");
    case(
        "a List is read item by item",
        vec![inline("list.yaml", &listed), dr()],
        EXIT_ERRORS,
        vec![error(Check::DirectionSwap, "items[0].spec.http[1].route[1].weight", &["v1: 1, v2: 99"])],
    )
    .check();
}

#[test]
fn findings_point_at_the_line_to_fix() {
    let report = validate(&Inputs { files: vec![file("payment-canary-1-99.yaml"), dr()], ..Inputs::default() });
    let f = &report.findings[0];
    assert_eq!((f.file.as_str(), f.document, f.line), ("payment-canary-1-99.yaml", Some(1), Some(19)));
    let report = validate(&Inputs { files: vec![file("payment-canary-9-10.yaml"), dr()], ..Inputs::default() });
    let lines: Vec<_> = report.findings.iter().map(|f| f.line).collect();
    assert_eq!(lines, [Some(21), Some(29)], "the route, then the canary's weight");
    let report = validate(&Inputs { files: vec![file("garbage.yaml")], ..Inputs::default() });
    assert_eq!(report.findings[0].line, Some(4), "the parser's line");
    let text = report.to_text();
    assert!(text.starts_with("garbage.yaml:4: error[yaml]: not valid YAML"), "{text}");
}

#[test]
fn nothing_panics_on_truncated_manifests() {
    for entry in std::fs::read_dir(manifests()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for end in (0..=text.len()).filter(|i| text.is_char_boundary(*i)) {
            let input = inline("cut.yaml", &text[..end]);
            let report = validate(&Inputs { files: vec![input.clone()], spec: Some(input.clone()), live: vec![input] });
            assert!(report.exit_code() <= EXIT_ERRORS);
        }
    }
}

/// YAML-ish noise built from the words the reader looks for.
const NOISE: &str = "(apiVersion|kind|spec|http|route|weight|subset|- |: |\\{|\\[|---|\\n|  |v[12]|[0-9]{1,3}|\"|#)*";

proptest! {
    #[test]
    fn nothing_panics_on_arbitrary_text(text in NOISE) {
        let input = inline("any.yaml", &text);
        let report = validate(&Inputs { files: vec![input.clone()], spec: Some(input.clone()), live: vec![input] });
        let _ = report.to_json();
    }
}

// --- the command line -------------------------------------------------------------------------

fn gate_agent(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gate-agent"))
        .args(args)
        .current_dir(manifests())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn code(out: &Output) -> u8 {
    u8::try_from(out.status.code().unwrap()).unwrap()
}

#[test]
fn exit_codes_are_0_clean_1_errors_2_usage() {
    let clean = gate_agent(&["validate", "payment-canary-90-10.yaml", "payment-destinationrule.yaml"], None);
    assert_eq!(code(&clean), EXIT_CLEAN, "{clean:?}");
    assert!(String::from_utf8_lossy(&clean.stdout).contains("2 files, 2 documents: 0 errors, 0 warnings"));

    let warned = gate_agent(&["validate", "consistent-hash.yaml"], None);
    assert_eq!(code(&warned), EXIT_CLEAN, "warnings pass: {warned:?}");

    let typo = gate_agent(
        &["validate", "--spec", "rollout.yaml", "payment-canary-1-99.yaml", "payment-destinationrule.yaml"],
        None,
    );
    assert_eq!(code(&typo), EXIT_ERRORS);
    let shown = String::from_utf8_lossy(&typo.stdout);
    assert!(
        shown.contains("payment-canary-1-99.yaml:19: error[direction-swap]: v1: 1, v2: 99 sends 99% to the canary v2"),
        "{shown}"
    );
    assert!(shown.contains("  fix: "), "{shown}");

    let piped =
        gate_agent(&["validate", "-", "payment-destinationrule.yaml"], Some(&file("payment-canary-1-99.yaml").text));
    assert_eq!(code(&piped), EXIT_ERRORS);
    assert!(String::from_utf8_lossy(&piped.stdout).contains("<stdin>:19: error[direction-swap]"));

    for usage in [
        vec!["validate"],
        vec!["validate", "--format", "xml", "payment-canary-90-10.yaml"],
        vec!["validate", "--no-such-flag", "payment-canary-90-10.yaml"],
        vec!["validate", "no-such-file.yaml"],
        vec!["validate", "--spec", "no-such-spec.yaml", "payment-canary-90-10.yaml"],
        vec!["validate", "-", "-"],
        vec!["validate", "."],
    ] {
        let out = gate_agent(&usage, None);
        assert_eq!(code(&out), EXIT_USAGE, "{usage:?}: {out:?}");
        assert!(out.stdout.is_empty() && !out.stderr.is_empty(), "{usage:?}: the reason goes to stderr");
    }
    assert_eq!(code(&gate_agent(&["check-spec"], None)), 64, "other commands keep their usage code");
}

#[test]
fn json_output_has_the_documented_shape() {
    let out = gate_agent(
        &[
            "validate",
            "--format",
            "json",
            "--spec",
            "rollout.yaml",
            "payment-canary-9-10.yaml",
            "payment-destinationrule.yaml",
            "canary-gate-stack.yaml",
            "garbage.yaml",
        ],
        None,
    );
    assert_eq!(code(&out), EXIT_ERRORS);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(keys(&json), set(&["files", "documents", "errors", "warnings", "findings"]));
    assert_eq!((json["files"].as_u64(), json["documents"].as_u64()), (Some(5), Some(9)));
    let findings = json["findings"].as_array().unwrap();
    let checks = set(&[
        "yaml",
        "schema",
        "unknown-kind",
        "empty",
        "direction-swap",
        "weight-sum",
        "max-weight",
        "step-jump",
        "missing-subset",
        "sticky-hash",
        "plugin-config",
        "rollout-spec",
        "spec-mismatch",
    ]);
    for f in findings {
        assert_eq!(
            keys(f),
            set(&["file", "document", "object", "path", "line", "severity", "check", "message", "fix"])
        );
        assert!(f["file"].is_string() && f["path"].is_string() && f["message"].is_string() && f["fix"].is_string());
        assert!(f["document"].is_u64() || f["document"].is_null());
        assert!(f["line"].is_u64() || f["line"].is_null());
        assert!(f["object"].is_string() || f["object"].is_null());
        assert!(["error", "warning", "info"].contains(&f["severity"].as_str().unwrap()));
        assert!(checks.contains(f["check"].as_str().unwrap()), "{f}");
    }
    let count = |s: &str| findings.iter().filter(|f| f["severity"] == s).count() as u64;
    assert_eq!(json["errors"].as_u64(), Some(count("error")));
    assert_eq!(json["warnings"].as_u64(), Some(count("warning")));
    let swap = findings.iter().find(|f| f["check"] == "direction-swap").unwrap();
    assert_eq!(swap["file"], "payment-canary-9-10.yaml");
    assert_eq!(swap["document"], 1);
    assert_eq!(swap["object"], "VirtualService production/payment-svc");
    assert_eq!(swap["path"], "spec.http[1].route[1].weight");
    assert_eq!(swap["line"], 29);
    assert_eq!(swap["severity"], "error");
    let garbage = findings.iter().find(|f| f["check"] == "yaml").unwrap();
    assert_eq!(
        (garbage["file"].as_str(), garbage["object"].is_null(), garbage["line"].as_u64()),
        (Some("garbage.yaml"), true, Some(4))
    );
}

/// A VirtualService that sends `x-canary-subset: <value>` to subset v2, everything else to v1.
fn label_vs(value: &str) -> String {
    payment_vs(
        "",
        &format!(
            "  - name: canary
    match:
    - headers:
        x-canary-subset:
          exact: {value}
    route:
    - destination:
        host: payment-svc
        subset: v2
  - name: stable
    route:
    - destination:
        host: payment-svc
        subset: v1
"
        ),
    )
}

#[test]
fn the_route_must_match_the_label_the_filter_writes() {
    let token = "    label_token: s3cret-t0ken-of-payment\n";
    let cases = [
        case(
            "a secret label matched exactly",
            vec![
                inline("vs.yaml", &label_vs("v2.s3cret-t0ken-of-payment")),
                inline("wp.yaml", &wasm_plugin("0", token)),
            ],
            EXIT_CLEAN,
            vec![],
        )
        .live(dr()),
        case(
            "the bare subset name where the filter writes a secret: a client could name the canary",
            vec![inline("vs.yaml", &label_vs("v2")), inline("wp.yaml", &wasm_plugin("0", token))],
            EXIT_ERRORS,
            vec![error(
                Check::LabelMatch,
                "spec.http[0].match[0].headers.x-canary-subset.exact",
                &["never reach the canary", "a client sending v2", "v2.<label_token>"],
            )],
        )
        .live(dr()),
        case(
            "another token than the filter's",
            vec![inline("vs.yaml", &label_vs("v2.an-old-token-0123456")), inline("wp.yaml", &wasm_plugin("0", token))],
            EXIT_ERRORS,
            vec![error(
                Check::LabelMatch,
                "spec.http[0].match[0].headers.x-canary-subset.exact",
                &["a different token"],
            )],
        )
        .live(dr()),
        case(
            "without a token, the subset name",
            vec![inline("vs.yaml", &label_vs("v2")), inline("wp.yaml", &wasm_plugin("0", ""))],
            EXIT_CLEAN,
            vec![],
        )
        .live(dr()),
    ];
    for c in &cases {
        let report = c.check();
        let text = report.to_text();
        assert!(!text.contains("s3cret-t0ken-of-payment"), "{}: the token is a secret; never print it\n{text}", c.name);
    }
}

/// HTTPRoute `production/payment-svc` (GAMMA parent) with `annotations` and the default rule split between the
/// Services `a` and `b`; an empty weight is left out (the Gateway API reads 1).
fn split_http_route(annotations: &str, (a, wa): (&str, &str), (b, wb): (&str, &str)) -> String {
    let weight = |w: &str| if w.is_empty() { String::new() } else { format!("\n      weight: {w}") };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: payment-svc
  namespace: production
{annotations}spec:
  parentRefs:
  - {{ group: \"\", kind: Service, name: payment-svc, port: 8080 }}
  rules:
  - name: canary
    matches:
    - headers:
      - name: x-canary-subset
        value: payment-svc-v2.s3cret-t0ken-of-payment
    backendRefs:
    - name: payment-svc-v2
      port: 8080
  - name: split
    backendRefs:
    - name: {a}
      port: 8080{}
    - name: {b}
      port: 8080{}
",
        weight(wa),
        weight(wb)
    )
}

/// canary-gate's TrafficExtension (WasmPlugin's successor) for payment-svc's waypoint at `weight`, with extra
/// pluginConfig lines.
fn traffic_extension(weight: &str, extra: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1
kind: TrafficExtension
metadata:
  name: payment-svc-canary-gate
  namespace: production
spec:
  targetRefs:
  - {{ kind: Service, group: \"\", name: payment-svc }}
  phase: STATS
  wasm:
    url: oci://registry.example/canary-gate/filter:0.1.0
    pluginConfig:
      version: 1
      rollout: payment-svc
      stable: payment-svc-v1
      canary: payment-svc-v2
      label_token: s3cret-t0ken-of-payment
      canary_weight: {weight}
{extra}"
    )
}

#[test]
fn the_gateway_api_route_and_traffic_extension_get_the_same_checks() {
    let route = |wa: &str, wb: &str| {
        inline("route.yaml", &split_http_route("", ("payment-svc-v1", wa), ("payment-svc-v2", wb)))
    };
    let cases = [
        case("an HTTPRoute at 90/10 with the label rule is clean", vec![route("90", "10")], EXIT_CLEAN, vec![]),
        case(
            "the incident's 1/99 on an HTTPRoute is a direction swap at the backendRef's weight",
            vec![file("httproute-1-99.yaml")],
            EXIT_ERRORS,
            vec![error(
                Check::DirectionSwap,
                "spec.rules[1].backendRefs[1].weight",
                &[
                    "payment-svc-v1: 1, payment-svc-v2: 99 sends 99% to the canary payment-svc-v2",
                    "did you mean payment-svc-v1: 99, payment-svc-v2: 1?",
                    "a dark launch",
                    "annotate the HTTPRoute with canary-gate.dev/promotion",
                    "Give the stable Service the larger weight",
                ],
            )],
        ),
        case(
            "1/99 against the rollout spec is also above maxWeight",
            vec![file("httproute-1-99.yaml")],
            EXIT_ERRORS,
            vec![
                error(Check::DirectionSwap, "spec.rules[1].backendRefs[1].weight", &["rollout-services.yaml"]),
                error(Check::MaxWeight, "spec.rules[1].backendRefs[1].weight", &["payment-svc-v2 gets 99%"]),
            ],
        )
        .spec(file("rollout-services.yaml")),
        case(
            "a weight only on the canary: the stable Service's is 1, so 1/99",
            vec![route("", "99")],
            EXIT_ERRORS,
            vec![error(Check::DirectionSwap, "spec.rules[1].backendRefs[1].weight", &["sends 99% to the canary"])],
        ),
        case(
            "9/10 warns with the real split, without Istio's note, and the canary's majority is a swap",
            vec![route("9", "10")],
            EXIT_ERRORS,
            vec![
                warning(
                    Check::WeightSum,
                    "spec.rules[1].backendRefs",
                    &["sum to 19, not 100: the Gateway API splits in proportion", "9/10 sends 52.6% to payment-svc-v2"],
                ),
                error(
                    Check::DirectionSwap,
                    "spec.rules[1].backendRefs[1].weight",
                    &["did you mean payment-svc-v1: 90"],
                ),
            ],
        ),
        case(
            "a quoted weight is a schema error at its backendRef",
            vec![route("\"90\"", "10")],
            EXIT_ERRORS,
            vec![error(Check::Schema, "spec.rules[1].backendRefs[0].weight", &["the string \"90\""])],
        ),
        case(
            "a declared promotion may put the canary ahead",
            vec![inline(
                "route.yaml",
                &split_http_route(
                    "  annotations:\n    canary-gate.dev/promotion: \"true\"\n",
                    ("payment-svc-v1", "0"),
                    ("payment-svc-v2", "100"),
                ),
            )],
            EXIT_CLEAN,
            vec![],
        )
        .spec(file("rollout-services.yaml")),
        case(
            "a jump past the next step from the live HTTPRoute",
            vec![route("50", "50")],
            EXIT_ERRORS,
            vec![error(
                Check::StepJump,
                "spec.rules[1].backendRefs[1].weight",
                &["10% to 50% is more than one step (the next step is 25%)", "live.yaml"],
            )],
        )
        .spec(file("rollout-services.yaml"))
        .live(inline("live.yaml", &split_http_route("", ("payment-svc-v1", "90"), ("payment-svc-v2", "10")))),
        case(
            "the TrafficExtension's weight is the weight applied now for its HTTPRoute",
            vec![route("50", "50"), inline("te.yaml", &traffic_extension("10", ""))],
            EXIT_ERRORS,
            vec![error(
                Check::StepJump,
                "spec.rules[1].backendRefs[1].weight",
                &["canary_weight of TrafficExtension production/payment-svc-canary-gate (te.yaml)"],
            )],
        )
        .spec(file("rollout-services.yaml")),
        case(
            "a TrafficExtension's pluginConfig is parsed by the filter's parser, at spec.wasm.pluginConfig",
            vec![inline("te.yaml", &traffic_extension("10", "      sticky: { header: \"bad header\" }\n"))],
            EXIT_ERRORS,
            vec![error(Check::PluginConfig, "spec.wasm.pluginConfig.sticky.header", &["the filter would reject"])],
        ),
        case(
            "a TrafficExtension above maxWeight",
            vec![inline("te.yaml", &traffic_extension("60", ""))],
            EXIT_ERRORS,
            vec![error(Check::MaxWeight, "spec.wasm.pluginConfig.canary_weight", &["above maxWeight 50"])],
        )
        .spec(file("rollout-services.yaml")),
        case(
            "the HTTPRoute's label rule must match the label the TrafficExtension's filter writes",
            vec![
                inline(
                    "route.yaml",
                    &split_http_route("", ("payment-svc-v1", "90"), ("payment-svc-v2", "10"))
                        .replace("value: payment-svc-v2.s3cret-t0ken-of-payment", "value: payment-svc-v2"),
                ),
                inline("te.yaml", &traffic_extension("10", "")),
            ],
            EXIT_ERRORS,
            vec![error(
                Check::LabelMatch,
                "spec.rules[0].matches[0].headers[0].value",
                &["never reach the canary", "payment-svc-v2.<label_token>"],
            )],
        ),
        case(
            "a lone backendRef at weight 0 answers 500s",
            vec![inline(
                "route.yaml",
                &split_http_route("", ("payment-svc-v1", "90"), ("payment-svc-v2", "10")).replace(
                    "    - name: payment-svc-v2\n      port: 8080\n  - name: split",
                    "    - name: payment-svc-v2\n      port: 8080\n      weight: 0\n  - name: split",
                ),
            )],
            EXIT_ERRORS,
            vec![error(Check::WeightSum, "spec.rules[0].backendRefs[0].weight", &["every request gets a 500"])],
        ),
    ];
    for c in &cases {
        let report = c.check();
        let text = report.to_text();
        assert!(!text.contains("s3cret-t0ken-of-payment"), "{}: the token is a secret; never print it\n{text}", c.name);
    }
}

#[test]
fn the_shipped_gateway_api_and_ambient_routes_are_clean() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for f in ["deploy/gateway-api/httproute.yaml", "deploy/ambient/httproute.yaml"] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        let report = validate(&Inputs { files: vec![inline(f, &text)], ..Inputs::default() });
        assert_eq!((report.errors, report.warnings), (0, 0), "{f}:\n{}", report.to_text());
        assert!(
            report.findings.iter().all(|f| f.check != Check::UnknownKind),
            "the HTTPRoute is read:\n{}",
            report.to_text()
        );
    }
}
