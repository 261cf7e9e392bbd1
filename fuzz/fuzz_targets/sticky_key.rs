//! The request headers the split reads (dark launch, sticky header, `Cookie`), as raw bytes
//! from any client, through the same path the filter takes: the host module hands
//! `choose_subset` the bytes Envoy returns (`get_map_value_bytes`), invalid UTF-8 included. The
//! input is lines: the `Cookie` header, the cookie name, the salt, the dark-launch value; the
//! rest of the bytes are the sticky header's value. Nothing panics; a header that is not UTF-8
//! is absent (it neither opts in nor carries a key); cookie parsing returns a non-empty piece of
//! the header; hashing is deterministic and lands in `[0, 10_000)`; and the split follows the
//! bucket: the request is on the canary exactly when its bucket is below the weight, so raising
//! the weight never moves a canary user back.
#![no_main]

use canary_core::config::{RouteConfig, parse_route};
use canary_core::hash::{Bucket, sticky_bucket, sticky_hash};
use canary_core::split::{Reason, RequestHeaders, Role, affinity_value, choose_subset, cookie_value, header_text};
use canary_core::weight::FULL;
use canary_core::{StickyKey, Weight};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(5, |b| *b == b'\n');
    let cookie_header = parts.next().unwrap_or_default().to_vec();
    let cookie_name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let salt = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let dark_value = parts.next().unwrap_or_default().to_vec();
    let raw_key = parts.next().unwrap_or_default().to_vec();

    let bucket = sticky_bucket(&salt, &raw_key);
    assert!(bucket.get() < FULL, "bucket {} out of range", bucket.get());
    assert_eq!(Bucket::new(bucket.get()), Some(bucket));
    assert_eq!(sticky_bucket(&salt, &raw_key), bucket, "hashing is not deterministic");
    assert_eq!(Bucket::from_random(sticky_hash(&salt, &raw_key)), bucket);

    let cookie_text = header_text(Some(cookie_header.clone()));
    let cookie = cookie_text.as_deref().and_then(|h| cookie_value(h, &cookie_name));
    if let (Some(v), Some(h)) = (cookie, cookie_text.as_deref()) {
        assert!(!v.is_empty(), "empty cookie value");
        assert!(!v.contains(';'), "cookie value {v:?} spans pairs");
        assert!(h.contains(v), "cookie value {v:?} is not in the header");
        assert!(
            h.split(';').any(|pair| pair.split_once('=').is_some_and(|(k, _)| k.trim() == cookie_name)),
            "{v:?} returned for a cookie name that is not in the header"
        );
    }

    // The bytes exactly as Envoy hands them to the filter.
    let headers = |name: &str| match name {
        "cookie" => Some(cookie_header.clone()),
        "x-user-id" => Some(raw_key.clone()),
        "x-canary" => Some(dark_value.clone()),
        _ => None,
    };
    let key_config = |sticky: serde_json::Value| {
        let mut cfg = serde_json::json!({
            "version": 1, "rollout": "fuzz", "stable": "v1", "canary": "v2", "canary_weight": 0,
            "sticky": sticky,
            "dark_launch": {"header": "x-canary", "value": "a-dark-launch-secret"},
        });
        if !salt.is_empty() && salt.len() <= 256 {
            cfg["sticky_salt"] = salt.clone().into();
        }
        parse_route(cfg.to_string().as_bytes()).ok()
    };
    let random = sticky_hash("random", data);
    let dark = dark_value == b"a-dark-launch-secret";
    if let Some(cfg) = key_config(serde_json::json!({ "cookie": cookie_name })) {
        assert!(matches!(cfg.sticky, Some(StickyKey::Cookie(_))));
        check_split(&cfg, &headers, random, cookie, dark);
    }
    let header_key = header_text(Some(raw_key.clone())).filter(|v| !v.is_empty());
    if let Some(cfg) = key_config(serde_json::json!({ "header": "x-user-id" })) {
        check_split(&cfg, &headers, random, header_key.as_deref(), dark);
    }
    if std::str::from_utf8(&raw_key).is_err() {
        assert_eq!(header_key, None, "a header that is not UTF-8 is absent");
    }
    // The affinity cookie: a fresh value is one the filter honours.
    assert!(canary_core::split::is_affinity_value(&affinity_value(random)));
});

/// With `key` the sticky key the request carries (or `None`), the choice at every weight follows
/// the key's bucket, and without a key the random draw's; a matching dark-launch value wins.
fn check_split(cfg: &RouteConfig, headers: &impl RequestHeaders, random: u64, key: Option<&str>, dark: bool) {
    let (bucket, reason) = match key {
        Some(k) => (sticky_bucket(&cfg.salt(), k.as_bytes()), Reason::Sticky),
        None => (Bucket::from_random(random), Reason::Weighted),
    };
    let b = bucket.get();
    for bp in [0, b, b.saturating_add(1), FULL / 2, FULL] {
        let Some(weight) = Weight::from_basis_points(bp) else { continue };
        let at = RouteConfig { canary_weight: weight, ..cfg.clone() };
        let choice = choose_subset(&at, headers, random);
        if dark {
            assert_eq!((choice.role, choice.reason), (Role::Canary, Reason::DarkLaunch));
            continue;
        }
        assert_eq!(choice.reason, reason, "key {key:?}");
        assert_eq!(choice.role == Role::Canary, b < bp, "bucket {b} at weight {bp} bp chose {:?}", choice.role);
    }
}
