//! Does the user's route object send the canary's label to the canary? The filter only labels
//! requests (`x-canary-subset: <canary>.<token>`); without a route that matches that label exactly
//! and sends it to the canary, no request ever reaches the canary, and the rollout would "pass" on
//! no evidence. Two kinds: an Istio VirtualService ([`check_label_route`], the canary is a subset)
//! and a Gateway API HTTPRoute ([`check_httproute_label_rule`], the canary is a backend Service).
//! Pure: the object comes in as JSON.

use serde_json::Value;

/// The label the filter writes for the canary: the subset name, then `.` and the token if any.
pub fn canary_label(canary: &str, label_token: Option<&str>) -> String {
    match label_token {
        Some(t) => format!("{canary}.{t}"),
        None => canary.to_owned(),
    }
}

/// `Ok(())` when an `http` route of `vs` matches header `header` exactly equal to `label` and
/// routes only to subset `canary`; otherwise what is missing and the exact fix, in words and
/// YAML.
pub fn check_label_route(vs: &Value, header: &str, label: &str, canary: &str, host: &str) -> Result<(), String> {
    let routes = vs.pointer("/spec/http").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let matches_label = |route: &Value| {
        route.get("match").and_then(Value::as_array).is_some_and(|ms| {
            ms.iter().any(|m| m.pointer(&format!("/headers/{header}/exact")).and_then(Value::as_str) == Some(label))
        })
    };
    let to_canary = |route: &Value| {
        route.get("route").and_then(Value::as_array).is_some_and(|ds| {
            !ds.is_empty()
                && ds.iter().all(|d| d.pointer("/destination/subset").and_then(Value::as_str) == Some(canary))
        })
    };
    // Istio takes the first route that matches: a catch-all before the label route shadows it.
    for (i, route) in routes.iter().enumerate() {
        if matches_label(route) {
            if to_canary(route) {
                return Ok(());
            }
            return Err(format!(
                "spec.http[{i}] matches {header}: {label} but does not send it only to subset {canary}; \
                 set its route to [{{destination: {{host: {host}, subset: {canary}}}}}]"
            ));
        }
        if route.get("match").is_none() {
            return Err(format!(
                "spec.http[{i}] has no match and comes before any route matching the canary's label, so it takes \
                 every request; add before it:\n{}",
                fix(header, label, canary, host)
            ));
        }
    }
    Err(format!(
        "no http route matches header {header} exactly equal to {label:?} and routes it to subset {canary}; \
         add as the first entry of spec.http:\n{}",
        fix(header, label, canary, host)
    ))
}

fn fix(header: &str, label: &str, canary: &str, host: &str) -> String {
    format!(
        "- name: canary\n  match:\n  - headers:\n      {header}:\n        exact: {label}\n  route:\n  - destination:\n      \
         host: {host}\n      subset: {canary}"
    )
}

/// How a Gateway API implementation ranks a match against another (the spec's precedence, from
/// the most to the least important): an exact path over a prefix, the longer prefix, a method
/// match, the most header matches, the most query-parameter matches. Ties go to the earlier rule
/// (within one HTTPRoute: its order). A rule without `matches` is `PathPrefix /`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    exact_path: bool,
    prefix_len: usize,
    method: bool,
    headers: usize,
    query: usize,
}

fn rank(m: &Value) -> Rank {
    let kind = m.pointer("/path/type").and_then(Value::as_str).unwrap_or("PathPrefix");
    let value = m.pointer("/path/value").and_then(Value::as_str).unwrap_or("/");
    let count = |field: &str| m.get(field).and_then(Value::as_array).map_or(0, Vec::len);
    Rank {
        exact_path: kind == "Exact",
        prefix_len: value.trim_end_matches('/').len(),
        method: m.get("method").is_some(),
        headers: count("headers"),
        query: count("queryParams"),
    }
}

/// A match with no condition but the label: any path (no path, or `PathPrefix /`), no method, no
/// other header, no query parameter.
fn only_the_label(m: &Value) -> bool {
    let r = rank(m);
    !r.exact_path && r.prefix_len == 0 && !r.method && r.headers == 1 && r.query == 0
}

/// The rule's matches, or the one implicit `PathPrefix /` match of a rule without any.
fn matches_of(rule: &Value) -> Vec<Value> {
    match rule.get("matches").and_then(Value::as_array) {
        Some(ms) if !ms.is_empty() => ms.clone(),
        _ => vec![serde_json::json!({})],
    }
}

/// Whether match `m` requires header `header` exactly equal to `label` (type `Exact`, the default).
fn requires_label(m: &Value, header: &str, label: &str) -> bool {
    m.get("headers").and_then(Value::as_array).is_some_and(|hs| {
        hs.iter().any(|h| {
            h.get("name").and_then(Value::as_str).is_some_and(|n| n.eq_ignore_ascii_case(header))
                && h.get("value").and_then(Value::as_str) == Some(label)
                && h.get("type").and_then(Value::as_str).unwrap_or("Exact") == "Exact"
        })
    })
}

/// `Ok(())` when the HTTPRoute `route` has a rule that matches header `header` exactly equal to
/// `label` on every path and sends it only to the Service `canary`, and no rule without the label
/// outranks it (Gateway API picks the most specific match, not the first: a rule with a longer
/// path, a method or more header matches wins over the label rule for the requests it matches).
/// Otherwise what is wrong and the exact fix, in words and YAML. `port` is the backends' port.
pub fn check_httproute_label_rule(
    route: &Value,
    header: &str,
    label: &str,
    canary: &str,
    port: u16,
) -> Result<(), String> {
    let rules = route.pointer("/spec/rules").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let found = rules.iter().enumerate().find_map(|(i, rule)| {
        matches_of(rule)
            .iter()
            .position(|m| requires_label(m, header, label) && only_the_label(m))
            .map(|j| (i, j, rule))
    });
    let Some((i, j, rule)) = found else {
        let partial = rules.iter().enumerate().find_map(|(i, rule)| {
            matches_of(rule).iter().position(|m| requires_label(m, header, label)).map(|j| (i, j))
        });
        let why = match partial {
            Some((i, j)) => format!(
                "spec.rules[{i}].matches[{j}] matches {header}: {label} only with another condition (path, method, header or query), \
                 so the canary gets only part of its traffic; "
            ),
            None => format!("no rule matches header {header} exactly equal to {label:?}; "),
        };
        return Err(format!(
            "{why}add to spec.rules (Gateway API ranks it above the default rule wherever it stands):\n{}",
            httproute_fix(header, label, canary, port)
        ));
    };
    let refs = rule.get("backendRefs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let is_canary = |b: &Value| {
        b.get("name").and_then(Value::as_str) == Some(canary)
            && b.get("kind").and_then(Value::as_str).unwrap_or("Service") == "Service"
            && b.get("group").and_then(Value::as_str).unwrap_or("").is_empty()
    };
    if refs.is_empty() || !refs.iter().all(is_canary) {
        return Err(format!(
            "spec.rules[{i}] matches {header}: {label} but does not send it only to the Service {canary}; \
             set its backendRefs to [{{name: {canary}, port: {port}}}]"
        ));
    }
    if refs.len() > 1 || refs.iter().any(|b| b.get("weight").and_then(Value::as_u64) == Some(0)) {
        return Err(format!(
            "spec.rules[{i}] matches {header}: {label} but splits it by weight ({} backendRefs, weights {}); \
             the filter already chose the canary: set its backendRefs to [{{name: {canary}, port: {port}}}] with no weight",
            refs.len(),
            refs.iter()
                .map(|b| b
                    .get("weight")
                    .and_then(Value::as_u64)
                    .map_or_else(|| "1 (default)".to_owned(), |w| w.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let label_rank = matches_of(rule).get(j).map(rank);
    for (k, other) in rules.iter().enumerate() {
        for (l, m) in matches_of(other).iter().enumerate() {
            if requires_label(m, header, label) {
                continue;
            }
            let r = rank(m);
            let outranks = label_rank.is_some_and(|lr| r > lr || (r == lr && k < i));
            if outranks {
                return Err(format!(
                    "spec.rules[{k}].matches[{l}] does not require {header}: {label} and ranks above the label rule \
                     spec.rules[{i}] (Gateway API prefers an exact or longer path, then a method, then more header \
                     matches, then the earlier rule), so it takes the canary's requests it matches; add the label \
                     header to a copy of that match in spec.rules[{i}], e.g. a rule before spec.rules[{k}]:\n{}",
                    httproute_fix_for(m, header, label, canary, port)
                ));
            }
        }
    }
    Ok(())
}

fn httproute_fix(header: &str, label: &str, canary: &str, port: u16) -> String {
    format!(
        "- name: canary\n  matches:\n  - headers:\n    - name: {header}\n      value: {label}\n  backendRefs:\n  \
         - name: {canary}\n    port: {port}"
    )
}

/// The label rule restricted to what the outranking match `m` matches, so it wins there too.
fn httproute_fix_for(m: &Value, header: &str, label: &str, canary: &str, port: u16) -> String {
    let mut with_label = m.clone();
    let extra = serde_json::json!({ "name": header, "value": label });
    match with_label.get_mut("headers").and_then(Value::as_array_mut) {
        Some(hs) => hs.push(extra),
        None => {
            if let Some(o) = with_label.as_object_mut() {
                o.insert("headers".into(), serde_json::json!([extra]));
            }
        }
    }
    let rule = serde_json::json!({
        "name": "canary-shadowed",
        "matches": [with_label],
        "backendRefs": [{ "name": canary, "port": port }],
    });
    let yaml = serde_yaml_ng::to_string(&vec![rule]).unwrap_or_default();
    yaml.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vs(http: Value) -> Value {
        json!({ "spec": { "hosts": ["payment-svc"], "http": http } })
    }

    #[test]
    fn the_shipped_shape_passes() {
        let v = vs(json!([
            { "match": [{ "headers": { "x-canary-subset": { "exact": "v2.tok" } } }],
              "route": [{ "destination": { "host": "payment-svc", "subset": "v2" } }] },
            { "route": [{ "destination": { "host": "payment-svc", "subset": "v1" } }] }
        ]));
        assert_eq!(check_label_route(&v, "x-canary-subset", "v2.tok", "v2", "payment-svc"), Ok(()));
    }

    #[test]
    fn a_missing_match_says_what_to_add() {
        let v = vs(json!([{ "route": [{ "destination": { "host": "payment-svc", "subset": "v1" } }] }]));
        let e = check_label_route(&v, "x-canary-subset", "v2", "v2", "payment-svc").unwrap_err();
        assert!(e.contains("exact: v2") && e.contains("subset: v2"), "{e}");
        let stale = vs(json!([
            { "match": [{ "headers": { "x-canary-subset": { "exact": "v1" } } }],
              "route": [{ "destination": { "host": "payment-svc", "subset": "v1" } }] },
        ]));
        assert!(check_label_route(&stale, "x-canary-subset", "v2", "v2", "payment-svc").is_err());
    }

    fn httproute(rules: Value) -> Value {
        json!({ "spec": { "parentRefs": [{ "group": "", "kind": "Service", "name": "payment-svc" }], "rules": rules } })
    }

    fn label_rule(backends: Value) -> Value {
        json!({ "matches": [{ "headers": [{ "name": "x-canary-subset", "value": "payment-svc-v2.tok" }] }],
                "backendRefs": backends })
    }

    fn stable_rule() -> Value {
        json!({ "backendRefs": [{ "name": "payment-svc-v1", "port": 8080 }] })
    }

    fn check(route: &Value) -> Result<(), String> {
        check_httproute_label_rule(route, "x-canary-subset", "payment-svc-v2.tok", "payment-svc-v2", 8080)
    }

    #[test]
    fn the_shipped_httproute_shape_passes_in_either_order() {
        let canary = label_rule(json!([{ "name": "payment-svc-v2", "port": 8080 }]));
        assert_eq!(check(&httproute(json!([canary.clone(), stable_rule()]))), Ok(()));
        // Unlike a VirtualService, order does not shadow: the header match ranks above the catch-all.
        assert_eq!(check(&httproute(json!([stable_rule(), canary]))), Ok(()));
    }

    #[test]
    fn an_httproute_without_the_label_rule_gets_the_yaml_to_add() {
        let e = check(&httproute(json!([stable_rule()]))).unwrap_err();
        assert!(e.starts_with("no rule matches header x-canary-subset exactly equal to \"payment-svc-v2.tok\""), "{e}");
        assert!(e.contains("    - name: x-canary-subset\n      value: payment-svc-v2.tok\n"), "{e}");
        assert!(e.contains("  - name: payment-svc-v2\n    port: 8080"), "{e}");
        // A stale label (the previous canary), a regex match and a path-limited match are not the rule.
        let stale = json!({ "matches": [{ "headers": [{ "name": "x-canary-subset", "value": "payment-svc-v1.tok" }] }],
                            "backendRefs": [{ "name": "payment-svc-v2", "port": 8080 }] });
        assert!(check(&httproute(json!([stale, stable_rule()]))).is_err());
        let regex = json!({ "matches": [{ "headers": [{ "name": "x-canary-subset", "type": "RegularExpression",
                                                         "value": "payment-svc-v2.tok" }] }],
                            "backendRefs": [{ "name": "payment-svc-v2", "port": 8080 }] });
        assert!(check(&httproute(json!([regex, stable_rule()]))).is_err());
        let partial = json!({ "matches": [{ "path": { "type": "PathPrefix", "value": "/api" },
                                            "headers": [{ "name": "x-canary-subset", "value": "payment-svc-v2.tok" }] }],
                              "backendRefs": [{ "name": "payment-svc-v2", "port": 8080 }] });
        let e = check(&httproute(json!([partial, stable_rule()]))).unwrap_err();
        assert!(
            e.starts_with("spec.rules[0].matches[0] matches x-canary-subset: payment-svc-v2.tok only with another"),
            "{e}"
        );
        let with_other_header = json!({ "matches": [{ "headers": [
                { "name": "x-canary-subset", "value": "payment-svc-v2.tok" }, { "name": "x-beta", "value": "1" }] }],
            "backendRefs": [{ "name": "payment-svc-v2", "port": 8080 }] });
        assert!(
            check(&httproute(json!([with_other_header, stable_rule()]))).unwrap_err().contains("only with another")
        );
    }

    #[test]
    fn an_httproute_label_rule_to_the_wrong_backend_is_named() {
        let wrong = label_rule(json!([{ "name": "payment-svc-v1", "port": 8080 }]));
        let e = check(&httproute(json!([wrong, stable_rule()]))).unwrap_err();
        assert!(
            e.starts_with("spec.rules[0] matches x-canary-subset: payment-svc-v2.tok but does not send it only"),
            "{e}"
        );
        let not_a_service =
            label_rule(json!([{ "group": "example.com", "kind": "Backend", "name": "payment-svc-v2" }]));
        assert!(check(&httproute(json!([not_a_service, stable_rule()]))).is_err());
        let none = label_rule(json!([]));
        assert!(check(&httproute(json!([none, stable_rule()]))).is_err());
    }

    #[test]
    fn weights_on_the_httproute_label_rule_are_refused() {
        let split = label_rule(json!([{ "name": "payment-svc-v2", "port": 8080, "weight": 1 },
                                      { "name": "payment-svc-v1", "port": 8080, "weight": 99 }]));
        assert!(check(&httproute(json!([split, stable_rule()]))).unwrap_err().contains("does not send it only"));
        let twice = label_rule(json!([{ "name": "payment-svc-v2", "port": 8080, "weight": 1 },
                                      { "name": "payment-svc-v2", "port": 8080, "weight": 99 }]));
        let e = check(&httproute(json!([twice, stable_rule()]))).unwrap_err();
        assert!(e.contains("splits it by weight (2 backendRefs, weights 1, 99)"), "{e}");
        let zero = label_rule(json!([{ "name": "payment-svc-v2", "port": 8080, "weight": 0 }]));
        assert!(check(&httproute(json!([zero, stable_rule()]))).unwrap_err().contains("weights 0"));
        let lone = label_rule(json!([{ "name": "payment-svc-v2", "port": 8080, "weight": 5 }]));
        assert_eq!(check(&httproute(json!([lone, stable_rule()]))), Ok(()), "a weight on a lone backend is harmless");
    }

    #[test]
    fn a_more_specific_rule_without_the_label_shadows_the_label_rule() {
        let canary = label_rule(json!([{ "name": "payment-svc-v2", "port": 8080 }]));
        let api = json!({ "matches": [{ "path": { "type": "PathPrefix", "value": "/api" } }],
                          "backendRefs": [{ "name": "payment-svc-v1", "port": 8080 }] });
        let e = check(&httproute(json!([canary.clone(), api, stable_rule()]))).unwrap_err();
        assert!(e.starts_with("spec.rules[1].matches[0] does not require x-canary-subset"), "{e}");
        assert!(e.contains("value: /api") && e.contains("value: payment-svc-v2.tok"), "{e}");
        // An earlier catch-all of the same rank (one other header) wins the tie by order.
        let earlier = json!({ "matches": [{ "headers": [{ "name": "x-debug", "value": "1" }] }],
                              "backendRefs": [{ "name": "payment-svc-v1", "port": 8080 }] });
        let e = check(&httproute(json!([earlier.clone(), canary.clone(), stable_rule()]))).unwrap_err();
        assert!(e.starts_with("spec.rules[0].matches[0] does not require"), "{e}");
        // After the label rule, the same match loses the tie.
        assert_eq!(check(&httproute(json!([canary, earlier, stable_rule()]))), Ok(()));
    }
}
