//! Choosing the subset for one request: dark launch first, then the sticky key, else a weighted
//! random draw.

use serde::{Deserialize, Serialize};

use crate::config::{RouteConfig, StickyKey, SubsetName};
use crate::hash::{Bucket, sticky_hash};
use crate::record::RolloutPhase;
use crate::sticky::Cluster;

/// Which side of the split a subset is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Stable,
    Canary,
}

/// Why a request went where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The dark-launch header matched.
    DarkLaunch,
    /// The sticky key's bucket decided.
    Sticky,
    /// No sticky key on the request: a random bucket decided.
    Weighted,
    /// The weighted or sticky split chose the canary, but a kill order holds it at 0%.
    Killed,
}

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub role: Role,
    pub reason: Reason,
    /// The request had no sticky key and the affinity cookie is configured: the choice was made
    /// with the key `affinity_value(random)`, which the response must set as the cookie.
    pub new_affinity: bool,
    /// The sticky key's cluster when a key placed the request (kept under a kill), so the
    /// request is also counted there ([`crate::sticky`]).
    pub cluster: Option<Cluster>,
}

impl Choice {
    pub const fn new(role: Role, reason: Reason) -> Choice {
        Choice { role, reason, new_affinity: false, cluster: None }
    }
}

impl Choice {
    pub fn subset<'a>(&self, cfg: &'a RouteConfig) -> &'a SubsetName {
        match self.role {
            Role::Stable => &cfg.stable,
            Role::Canary => &cfg.canary,
        }
    }
}

impl Choice {
    /// This choice under a kill order: every canary choice goes to stable, except a dark-launch
    /// request when the configuration lets dark launch continue during a kill.
    pub fn under_kill(self, cfg: &RouteConfig) -> Choice {
        match (self.role, self.reason) {
            (Role::Canary, Reason::DarkLaunch) if cfg.dark_launch.as_ref().is_some_and(|d| d.during_kill) => self,
            (Role::Canary, _) => Choice { role: Role::Stable, reason: Reason::Killed, ..self },
            _ => self,
        }
    }
}

/// A request header's value as text, or `None`. Header values are bytes on the wire and a client
/// can send any; one that is not UTF-8 is treated as absent, so it can neither opt in nor carry a
/// sticky key, and it never stops the filter.
pub fn header_text(value: Option<Vec<u8>>) -> Option<String> {
    value.and_then(|v| String::from_utf8(v).ok())
}

/// What the split reads of a request: header values by lower-case name, as the bytes the client
/// sent. The filter's host module answers it from Envoy; tests from a list.
pub trait RequestHeaders {
    fn header(&self, name: &str) -> Option<Vec<u8>>;
}

impl<F: Fn(&str) -> Option<Vec<u8>>> RequestHeaders for F {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self(name)
    }
}

/// The sticky key of a request: the configured header or cookie, else the affinity cookie.
/// Returns the key and whether it came from the affinity cookie.
pub fn sticky_key(cfg: &RouteConfig, headers: &impl RequestHeaders) -> Option<(String, bool)> {
    let cookies = std::cell::OnceCell::new();
    let cookie = |name: &str| {
        cookies
            .get_or_init(|| header_text(headers.header("cookie")))
            .as_deref()
            .and_then(|c| cookie_value(c, name).map(str::to_owned))
    };
    let configured = cfg.sticky.as_ref().and_then(|key| match key {
        StickyKey::Header(name) => header_text(headers.header(name.as_str())).filter(|v| !v.is_empty()),
        StickyKey::Cookie(name) => cookie(name.as_str()),
    });
    if let Some(k) = configured {
        return Some((k, false));
    }
    let affinity = cfg.affinity_cookie.as_ref()?;
    cookie(affinity.name.as_str()).filter(|v| is_affinity_value(v)).map(|k| (k, true))
}

/// An affinity cookie value the filter could have set: 16 lower-case hex digits. Anything else
/// (a forged, truncated or foreign value) is ignored and replaced.
pub fn is_affinity_value(v: &str) -> bool {
    v.len() == 16 && v.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// A new affinity cookie value from 64 random bits.
pub fn affinity_value(random: u64) -> String {
    format!("{random:016x}")
}

/// Picks the subset for a request. `headers` gives request header values by lower-case name;
/// `random` is 64 fresh random bits, used only when no sticky key decides.
pub fn choose_subset(cfg: &RouteConfig, headers: &impl RequestHeaders, random: u64) -> Choice {
    if let Some(dl) = &cfg.dark_launch
        && headers.header(dl.header.as_str()).is_some_and(|v| v == dl.value.as_str().as_bytes())
    {
        let choice = Choice::new(Role::Canary, Reason::DarkLaunch);
        // A rolled-back canary takes no dark-launch traffic either, unless configured to.
        let rolled_back = cfg.rollout_state.as_ref().is_some_and(|s| s.phase == RolloutPhase::RolledBack);
        return if rolled_back && !dl.during_kill { choice.under_kill(cfg) } else { choice };
    }
    // One hash gives both the subset (its high bits) and the key's cluster (its low bits).
    let (hash, reason, new_affinity) = match sticky_key(cfg, headers) {
        Some((key, _)) => (Some(sticky_hash(&cfg.salt(), key.as_bytes())), Reason::Sticky, false),
        // The first request of a session is placed by the key its cookie will carry, so it lands
        // where the session's later requests will.
        None if cfg.affinity_cookie.is_some() => {
            (Some(sticky_hash(&cfg.salt(), affinity_value(random).as_bytes())), Reason::Sticky, true)
        }
        None => (None, Reason::Weighted, false),
    };
    let bucket = Bucket::from_random(hash.unwrap_or(random));
    let role = if bucket.is_canary_at(cfg.canary_weight) { Role::Canary } else { Role::Stable };
    Choice { role, reason, new_affinity, cluster: hash.map(Cluster::of_hash) }
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b="2"`), quotes removed; `None` when
/// absent or empty. The first occurrence wins, as in browsers' ordering by path specificity.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k.trim() != name {
            return None;
        }
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(v);
        (!v.is_empty()).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_route as cfg;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<Vec<u8>> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_bytes().to_vec())
    }

    const DARK: &str = r#","dark_launch":{"header":"x-canary","value":"let-me-in-0123456789"}"#;

    #[test]
    fn dark_launch_header_forces_the_canary_even_at_zero_weight() {
        let c = RouteConfig { canary_weight: crate::Weight::ZERO, ..cfg(DARK) };
        let choice = choose_subset(&c, &headers(&[("x-canary", "let-me-in-0123456789")]), u64::MAX);
        assert_eq!(choice, Choice::new(Role::Canary, Reason::DarkLaunch));
        let choice = choose_subset(&c, &headers(&[("x-canary", "true")]), 0);
        assert_eq!(choice.role, Role::Stable);
    }

    #[test]
    fn dark_launch_is_off_unless_configured() {
        let c = RouteConfig { canary_weight: crate::Weight::ZERO, ..cfg("") };
        assert_eq!(choose_subset(&c, &headers(&[("x-canary", "true")]), u64::MAX).role, Role::Stable);
    }

    #[test]
    fn a_kill_and_a_rollback_stop_dark_launch_unless_it_is_allowed_during_kills() {
        let c = cfg(DARK);
        let dark = Choice::new(Role::Canary, Reason::DarkLaunch);
        assert_eq!(dark.under_kill(&c), Choice::new(Role::Stable, Reason::Killed));
        let rolled_back = cfg(&format!(r#"{DARK},"rollout_state":{{"phase":"rolled_back"}}"#));
        let h = headers(&[("x-canary", "let-me-in-0123456789")]);
        assert_eq!(choose_subset(&rolled_back, &h, 0).role, Role::Stable);
        let during = cfg(
            r#","dark_launch":{"header":"x-canary","value":"let-me-in-0123456789","during_kill":true},"rollout_state":{"phase":"rolled_back"}"#,
        );
        assert_eq!(dark.under_kill(&during), dark);
        assert_eq!(choose_subset(&during, &h, 0), dark);
    }

    #[test]
    fn header_values_that_are_not_utf8_are_treated_as_absent() {
        let c = cfg(&format!(r#"{DARK},"sticky":{{"header":"x-user"}}"#));
        let bad = |name: &str| match name {
            "x-canary" | "x-user" | "cookie" => Some(vec![0xff, 0xfe, b'a']),
            _ => None,
        };
        let choice = choose_subset(&c, &bad, 0);
        assert_eq!(choice.reason, Reason::Weighted, "neither dark launch nor a sticky key");
        let c = cfg(r#","sticky":{"cookie":"sid"}"#);
        assert_eq!(choose_subset(&c, &bad, 0).reason, Reason::Weighted);
        assert_eq!(header_text(Some(vec![0xc3, 0x28])), None);
        assert_eq!(header_text(Some(b"ok".to_vec())).as_deref(), Some("ok"));
    }

    #[test]
    fn the_affinity_cookie_is_a_sticky_key_when_the_request_has_none() {
        let c = cfg(r#","sticky":{"header":"x-user"},"affinity_cookie":{"name":"cg-affinity"}"#);
        let v = affinity_value(0x0123_4567_89ab_cdef);
        assert_eq!(v, "0123456789abcdef");
        let cookie = format!("a=1; cg-affinity={v}");
        let pairs = [("cookie", cookie.as_str())];
        let h = headers(&pairs);
        assert_eq!(sticky_key(&c, &h), Some((v.clone(), true)));
        assert_eq!(choose_subset(&c, &h, 0).reason, Reason::Sticky);
        // The configured key wins over the cookie.
        let pairs = [("cookie", cookie.as_str()), ("x-user", "alice")];
        let h = headers(&pairs);
        assert_eq!(sticky_key(&c, &h), Some(("alice".to_owned(), false)));
        // A forged value is ignored, and the request gets a new cookie, placed by its value.
        let h = headers(&[("cookie", "cg-affinity=v2")]);
        assert_eq!(sticky_key(&c, &h), None);
        for random in [0, 1, u64::MAX, 0x0123_4567_89ab_cdef] {
            let first = choose_subset(&c, &h, random);
            assert!(first.new_affinity);
            let cookie = format!("cg-affinity={}", affinity_value(random));
            let pairs = [("cookie", cookie.as_str())];
            let later = choose_subset(&c, &headers(&pairs), random ^ 0xdead_beef);
            assert_eq!((later.role, later.new_affinity), (first.role, false), "the session stays where it began");
        }
    }

    #[test]
    fn the_default_salt_changes_with_the_release() {
        let a = cfg("");
        let b = RouteConfig { canary: SubsetName::try_from("v3").unwrap(), ..a.clone() };
        assert_eq!(a.salt(), "r/v2");
        assert_eq!(b.salt(), "r/v3");
        let kept = cfg(r#","sticky_salt":"cohort-1""#);
        assert_eq!(kept.salt(), "cohort-1");
    }

    #[test]
    fn sticky_header_ignores_the_random_draw() {
        let c = cfg(r#","sticky":{"header":"x-user"}"#);
        let first = choose_subset(&c, &headers(&[("x-user", "alice")]), 0);
        assert_eq!(first.reason, Reason::Sticky);
        for r in [1, u64::MAX, 0x1234_5678_9abc_def0] {
            assert_eq!(choose_subset(&c, &headers(&[("x-user", "alice")]), r), first);
        }
    }

    #[test]
    fn a_sticky_key_carries_its_cluster_and_keeps_it_under_a_kill() {
        let c = cfg(r#","sticky":{"header":"x-user"}"#);
        let alice = choose_subset(&c, &headers(&[("x-user", "alice")]), 0);
        let want = Cluster::of_hash(sticky_hash(&c.salt(), b"alice"));
        assert_eq!(alice.cluster, Some(want));
        assert_eq!(alice.under_kill(&c).cluster, Some(want));
        assert_eq!(choose_subset(&c, &headers(&[]), 0).cluster, None, "unkeyed requests have no cluster");
        // The cluster does not follow the subset: keys of both subsets share every cluster.
        let mut seen = [[false; 2]; crate::sticky::STICKY_CLUSTERS];
        for i in 0..2_000 {
            let user = format!("user-{i}");
            let ch = choose_subset(&c, &headers(&[("x-user", user.as_str())]), 0);
            seen[ch.cluster.unwrap().index()][usize::from(ch.role == Role::Canary)] = true;
        }
        assert!(seen.iter().all(|s| s[0] && s[1]), "{seen:?}");
    }

    #[test]
    fn missing_sticky_key_falls_back_to_weighted() {
        let c = cfg(r#","sticky":{"cookie":"sid"}"#);
        assert_eq!(choose_subset(&c, &headers(&[("cookie", "other=1")]), 0).reason, Reason::Weighted);
        assert_eq!(choose_subset(&c, &headers(&[("cookie", "sid=abc")]), 0).reason, Reason::Sticky);
    }

    #[test]
    fn weighted_draw_uses_the_weight() {
        let c = cfg("");
        // Bucket::from_random maps the top 32 bits linearly onto 0..10_000.
        assert_eq!(choose_subset(&c, &headers(&[]), 0).role, Role::Canary);
        assert_eq!(choose_subset(&c, &headers(&[]), u64::MAX).role, Role::Stable);
    }

    #[test]
    fn cookie_parsing() {
        assert_eq!(cookie_value("a=1; sid=\"xyz\"; b=2", "sid"), Some("xyz"));
        assert_eq!(cookie_value("sid=first; sid=second", "sid"), Some("first"));
        assert_eq!(cookie_value("sidx=1", "sid"), None);
        assert_eq!(cookie_value("sid=", "sid"), None);
        assert_eq!(cookie_value("garbage;;==;", "sid"), None);
    }
}
