//! Does the user's VirtualService send the canary's label to the canary subset? The filter only
//! labels requests (`x-canary-subset: <canary>.<token>`); without a route that matches that label
//! exactly and sends it to the canary subset, no request ever reaches the canary, and the rollout
//! would "pass" on no evidence. Pure: the VirtualService comes in as JSON.

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
}
