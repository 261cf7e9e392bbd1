//! The observability that ships in deploy/: the Prometheus rules pass `promtool check rules` and
//! their own unit tests (`promtool test rules`), and every metric the rules and the Grafana
//! dashboard query is one that the filter (through real Envoy) or gate-agent really exports, with
//! the labels the queries match on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use canary_e2e::{Fixture, paths, route};
use gate_agent::api::render_metrics;
use gate_agent::status::{EvidenceView, ObservedWeight, StatusView, SubsetView, VerdictView};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    paths::workspace_root().join("deploy").join(path)
}

/// `promtool`, or `None` (the caller skips with a message) when it is not installed.
fn promtool() -> Option<Command> {
    if Command::new("promtool").arg("--version").output().is_ok() {
        Some(Command::new("promtool"))
    } else {
        eprintln!("SKIPPED: promtool is not installed; `make tools` installs it (CI has it)");
        None
    }
}

fn run(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn the_prometheus_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(mut check) = promtool() else { return };
    check.args(["check", "rules"]).arg(deploy("prometheus/rules.yaml"));
    let report = run(check);
    assert!(report.contains("SUCCESS"), "{report}");
    let Some(mut test) = promtool() else { return };
    test.args(["test", "rules"]).arg(deploy("prometheus/rules_test.yaml"));
    let report = run(test);
    assert!(report.contains("SUCCESS"), "{report}");
}

// ---------------------------------------------------------------------------------------------
// Which metric names (and labels) a PromQL expression selects
// ---------------------------------------------------------------------------------------------

/// Words that are followed by a label list or stand between operands, not metric names.
const KEYWORDS: [&str; 12] =
    ["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "atan2"];

/// Index just past the bracket that closes the one at `open`, skipping quoted strings.
fn close(chars: &[char], open: usize) -> usize {
    let (o, c) = (
        chars[open],
        match chars[open] {
            '(' => ')',
            '[' => ']',
            _ => '}',
        },
    );
    let (mut depth, mut i) = (0, open);
    while i < chars.len() {
        match chars[i] {
            q @ ('"' | '\'' | '`') => i = skip_string(chars, i, q) - 1,
            x if x == o => depth += 1,
            x if x == c => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unbalanced {o} in {:?}", chars.iter().collect::<String>())
}

fn skip_string(chars: &[char], start: usize, quote: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

fn ident(chars: &[char], mut i: usize) -> (String, usize) {
    let start = i;
    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
        i += 1;
    }
    (chars[start..i].iter().collect(), i)
}

fn next_non_space(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Every `metric{label=...}` the expression selects: the name and its matchers' label names.
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i, c);
        } else if c == '[' {
            i = close(&chars, i);
        } else if c.is_ascii_digit() || c == '$' {
            // A number (`1e6`, `0.99`) or a Grafana variable.
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '.' | '_')) {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let (name, end) = ident(&chars, i);
            let next = next_non_space(&chars, end);
            let followed_by = chars.get(next).copied();
            // `sum by (le) (...)`: an aggregation whose grouping comes first.
            let grouping = matches!(ident(&chars, next).0.as_str(), "by" | "without");
            if KEYWORDS.contains(&name.as_str()) {
                i = if followed_by == Some('(') { close(&chars, next) } else { end };
            } else if followed_by == Some('(') || grouping {
                i = end; // a function or an aggregation
            } else {
                let mut labels = Vec::new();
                i = end;
                if followed_by == Some('{') {
                    let stop = close(&chars, next);
                    let mut j = next + 1;
                    while j < stop - 1 {
                        if matches!(chars[j], '"' | '\'' | '`') {
                            j = skip_string(&chars, j, chars[j]);
                        } else if chars[j].is_ascii_alphabetic() || chars[j] == '_' {
                            let (label, e) = ident(&chars, j);
                            labels.push(label);
                            j = e;
                        } else {
                            j += 1;
                        }
                    }
                    i = stop;
                }
                out.push((name, labels));
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn the_selector_reader_finds_metric_names_and_their_matched_labels() {
    let found = selectors(
        r#"histogram_quantile(0.99, sum by (le) (rate(x_bucket{subset="$canary",a=~"b|c"}[$__rate_interval]))) / 1e6
           > on (rollout) group_left max by (rollout) (y) unless z{q="}"} offset 5m"#,
    );
    let want = vec![
        ("x_bucket".to_string(), vec!["subset".to_string(), "a".to_string()]),
        ("y".to_string(), vec![]),
        ("z".to_string(), vec!["q".to_string()]),
    ];
    assert_eq!(found, want);
}

// ---------------------------------------------------------------------------------------------
// What is really exported
// ---------------------------------------------------------------------------------------------

/// Series name -> label names, from Prometheus text.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let chars: Vec<char> = line.chars().collect();
        let (name, end) = ident(&chars, 0);
        let labels = out.entry(name).or_default();
        if chars.get(end) == Some(&'{') {
            let stop = close(&chars, end);
            let mut j = end + 1;
            while j < stop - 1 {
                let (label, e) = ident(&chars, j);
                labels.insert(label);
                j = skip_string(&chars, e + 1, '"') + 1; // past `="value"` and the comma
            }
        }
    }
    out
}

/// A status with every figure set, so that every family has samples.
fn populated() -> StatusView {
    let subset = |name: &str, role: &str| SubsetView {
        subset: name.into(),
        role: role.into(),
        requests_total: 1000,
        failures_total: 2,
        success_rate_percent: Some(99.8),
        p50_ms: Some(1.2),
        p99_ms: Some(8.5),
    };
    StatusView {
        rollout: "demo".into(),
        phase: "progressing".into(),
        canary_weight_percent: 10.0,
        written_weight_percent: 10.0,
        observed_weight_percent: Some(ObservedWeight { min_percent: 10.0, max_percent: 10.0 }),
        max_weight_percent: 50.0,
        step: Some(0),
        steps: 3,
        threshold: 5,
        subsets: vec![subset("v1", "stable"), subset("v2", "canary")],
        evidence: vec![EvidenceView { test: "errors: canary vs stable".into(), log_evidence: 1.0, log_threshold: 6.0 }],
        recent_verdicts: vec![VerdictView {
            at_unix_ms: 1,
            verdict: "pass".into(),
            reasons: vec![],
            kind: Some(gate_agent::VerdictKind::Pass),
        }],
        proxies_reporting: 1,
        ..StatusView::default()
    }
}

/// The filter's metrics as real Envoy exports them, once traffic went through both subsets and
/// the histograms were flushed.
async fn envoy_exports() -> String {
    let fx = Fixture::start(route(50.0, 1, "").unwrap(), 1).await.unwrap();
    fx.canary.fail_per_mille(100);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let _ = fx.send(50, &[]).await;
        let text = fx.envoy.prometheus().await.unwrap();
        let buckets = |s: &str| {
            text.lines().any(|l| {
                l.starts_with("canary_gate_request_duration_microseconds_bucket{")
                    && l.contains(&format!("subset=\"{s}\""))
            })
        };
        if buckets("v1") && buckets("v2") {
            return text;
        }
        assert!(Instant::now() < deadline, "no latency histogram after 15 s:\n{text}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Every PromQL expression in the dashboard (panels, annotations) and every templating query.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    // `label_values(<selector>, <label>)`: the selector is PromQL.
                    ("definition", Value::String(d)) => {
                        let inner = d.strip_prefix("label_values(").and_then(|d| d.rsplit_once(',')).unwrap();
                        out.push(inner.0.to_string());
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| dashboard_queries(i, out)),
        _ => {}
    }
}

fn rule_queries(rules: &serde_yaml_ng::Value) -> (Vec<String>, BTreeSet<String>) {
    let (mut exprs, mut recorded) = (Vec::new(), BTreeSet::new());
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_string());
            if let Some(name) = rule.get("record").and_then(serde_yaml_ng::Value::as_str) {
                recorded.insert(name.to_string());
            }
        }
    }
    (exprs, recorded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_rules_query_is_exported_by_the_filter_or_the_agent() {
    let mut known = exported(&render_metrics(&populated()));
    let agent_names: Vec<String> = known.keys().cloned().collect();
    let envoy_text = envoy_exports().await;
    // The shipped bucket bounds reach Prometheus: a bound at a common SLO bound (200 ms) that Envoy's
    // defaults lack.
    assert!(
        envoy_text
            .lines()
            .any(|l| l.starts_with("canary_gate_request_duration_microseconds_bucket{") && l.contains("le=\"200000\"")),
        "no 200 ms bucket bound:\n{envoy_text}"
    );
    let envoy = exported(&envoy_text);
    for (name, labels) in envoy.into_iter().filter(|(n, _)| n.starts_with("canary_gate_")) {
        known.entry(name).or_default().extend(labels);
    }
    for name in ["canary_gate_requests_total", "canary_gate_request_duration_microseconds_bucket"] {
        assert!(known.contains_key(name), "Envoy does not export {name}: {:?}", known.keys());
    }

    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/canary-gate.json")).unwrap()).unwrap();
    let mut dash = Vec::new();
    dashboard_queries(&dashboard, &mut dash);
    assert!(dash.len() >= 20, "the dashboard's queries were found: {dash:#?}");
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(deploy("prometheus/rules.yaml")).unwrap()).unwrap();
    let (rule_exprs, recorded) = rule_queries(&rules);

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (source, exprs) in [("grafana/canary-gate.json", &dash), ("prometheus/rules.yaml", &rule_exprs)] {
        for expr in exprs {
            let found = selectors(expr);
            assert!(!found.is_empty(), "{source}: no metric in {expr:?}");
            for (name, labels) in found {
                used.insert(name.clone());
                if recorded.contains(&name) && source == "prometheus/rules.yaml" {
                    continue;
                }
                match known.get(&name) {
                    None => problems.push(format!("{source}: {name} is exported by neither the filter nor the agent")),
                    Some(have) => {
                        for label in labels.iter().filter(|l| !have.contains(*l)) {
                            problems.push(format!("{source}: {name} has no label {label:?} (it has {have:?})"));
                        }
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // The dashboard shows both sides: the filter's own series and the agent's judgement.
    for name in ["canary_gate_request_duration_microseconds_bucket", "canary_gate_agent_evidence_log"] {
        assert!(used.contains(name), "nothing queries {name}");
    }
    let unused: Vec<&String> = agent_names.iter().filter(|n| !used.contains(*n)).collect();
    eprintln!("agent metrics neither the dashboard nor the rules use: {unused:?}");
}
