//! The sticky key as a request carries it (a header, or one cookie in a `Cookie` header) and its
//! hash. The input is lines: the `Cookie` header, the cookie name, the salt; the rest of the
//! bytes are a raw key. Cookie parsing returns a non-empty piece of the header, hashing is
//! deterministic and lands in `[0, 10_000)`, and the split follows the bucket: the request is on
//! the canary exactly when its bucket is below the weight, so raising the weight never moves a
//! canary user back.
#![no_main]

use canary_core::config::{RouteConfig, parse_route};
use canary_core::hash::{Bucket, sticky_bucket, sticky_hash};
use canary_core::split::{Reason, Role, choose_subset, cookie_value};
use canary_core::weight::FULL;
use canary_core::{StickyKey, Weight};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let cookie_header = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let cookie_name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let salt = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let raw_key = parts.next().unwrap_or_default();

    let bucket = sticky_bucket(&salt, raw_key);
    assert!(bucket.get() < FULL, "bucket {} out of range", bucket.get());
    assert_eq!(Bucket::new(bucket.get()), Some(bucket));
    assert_eq!(sticky_bucket(&salt, raw_key), bucket, "hashing is not deterministic");
    assert_eq!(Bucket::from_random(sticky_hash(&salt, raw_key)), bucket);

    let cookie = cookie_value(&cookie_header, &cookie_name);
    if let Some(v) = cookie {
        assert!(!v.is_empty(), "empty cookie value");
        assert!(!v.contains(';'), "cookie value {v:?} spans pairs");
        assert!(cookie_header.contains(v), "cookie value {v:?} is not in the header");
        assert!(
            cookie_header.split(';').any(|pair| pair.split_once('=').is_some_and(|(k, _)| k.trim() == cookie_name)),
            "{v:?} returned for a cookie name that is not in the header"
        );
    }

    // The same key through the filter's split: by cookie, then by header.
    let key_config = |sticky: serde_json::Value| {
        let mut cfg = serde_json::json!({
            "version": 1, "rollout": "fuzz", "stable": "v1", "canary": "v2", "canary_weight": 0,
            "dark_launch": null, "sticky": sticky,
        });
        if !salt.is_empty() && salt.len() <= 256 {
            cfg["sticky_salt"] = salt.clone().into();
        }
        parse_route(cfg.to_string().as_bytes()).ok()
    };
    let headers = |name: &str| match name {
        "cookie" => Some(cookie_header.clone()),
        "x-user-id" => Some(cookie_name.clone()),
        _ => None,
    };
    let random = sticky_hash("random", data);
    if let Some(cfg) = key_config(serde_json::json!({ "cookie": cookie_name })) {
        assert!(matches!(cfg.sticky, Some(StickyKey::Cookie(_))));
        check_split(&cfg, &headers, random, cookie);
    }
    if let Some(cfg) = key_config(serde_json::json!({ "header": "x-user-id" })) {
        check_split(&cfg, &headers, random, Some(cookie_name.as_str()).filter(|v| !v.is_empty()));
    }
});

/// With `key` the sticky key the request carries (or `None`), the choice at every weight follows
/// the key's bucket, and without a key the random draw's.
fn check_split(cfg: &RouteConfig, headers: &impl Fn(&str) -> Option<String>, random: u64, key: Option<&str>) {
    let (bucket, reason) = match key {
        Some(k) => (sticky_bucket(cfg.salt(), k.as_bytes()), Reason::Sticky),
        None => (Bucket::from_random(random), Reason::Weighted),
    };
    let b = bucket.get();
    // Canary exactly below the bucket's weight: so raising the weight only ever adds users.
    for bp in [0, b, b.saturating_add(1), FULL / 2, FULL] {
        let Some(weight) = Weight::from_basis_points(bp) else { continue };
        let at = RouteConfig { canary_weight: weight, ..cfg.clone() };
        let choice = choose_subset(&at, headers, random);
        assert_eq!(choice.reason, reason, "key {key:?}");
        assert_eq!(choice.role == Role::Canary, b < bp, "bucket {b} at weight {bp} bp chose {:?}", choice.role);
    }
}
