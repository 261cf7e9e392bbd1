//! Choosing the subset for one request: dark launch first, then the sticky key, else a weighted
//! random draw.

use serde::{Deserialize, Serialize};

use crate::config::{RouteConfig, StickyKey, SubsetName};
use crate::hash::{Bucket, sticky_bucket};

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
    /// This choice under a kill order: a weighted or sticky canary choice goes to stable; a
    /// dark-launch request still reaches the canary, as it does at 0% (see [`crate::kill`]).
    pub fn under_kill(self) -> Choice {
        match (self.role, self.reason) {
            (Role::Canary, Reason::Sticky | Reason::Weighted) => Choice { role: Role::Stable, reason: Reason::Killed },
            _ => self,
        }
    }
}

/// Picks the subset for a request. `header` returns a request header's value by lower-case
/// name; `random` is 64 fresh random bits, used only when no sticky key decides.
pub fn choose_subset(cfg: &RouteConfig, header: impl Fn(&str) -> Option<String>, random: u64) -> Choice {
    if let Some(dl) = &cfg.dark_launch
        && header(dl.header.as_str()).is_some_and(|v| v == dl.value.as_str())
    {
        return Choice { role: Role::Canary, reason: Reason::DarkLaunch };
    }
    let sticky = cfg.sticky.as_ref().and_then(|key| match key {
        StickyKey::Header(name) => header(name.as_str()).filter(|v| !v.is_empty()),
        StickyKey::Cookie(name) => header("cookie").and_then(|c| cookie_value(&c, name.as_str()).map(str::to_owned)),
    });
    let (bucket, reason) = match sticky {
        Some(key) => (sticky_bucket(cfg.salt(), key.as_bytes()), Reason::Sticky),
        None => (Bucket::from_random(random), Reason::Weighted),
    };
    let role = if bucket.is_canary_at(cfg.canary_weight) { Role::Canary } else { Role::Stable };
    Choice { role, reason }
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
    use crate::config::parse_route;

    fn cfg(extra: &str) -> RouteConfig {
        parse_route(
            format!(r#"{{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":10{extra}}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn dark_launch_header_forces_the_canary_even_at_zero_weight() {
        let c = RouteConfig { canary_weight: crate::Weight::ZERO, ..cfg("") };
        let choice = choose_subset(&c, headers(&[("x-canary", "true")]), u64::MAX);
        assert_eq!(choice, Choice { role: Role::Canary, reason: Reason::DarkLaunch });
        let choice = choose_subset(&c, headers(&[("x-canary", "false")]), 0);
        assert_eq!(choice.role, Role::Stable);
    }

    #[test]
    fn sticky_header_ignores_the_random_draw() {
        let c = cfg(r#","sticky":{"header":"x-user"}"#);
        let first = choose_subset(&c, headers(&[("x-user", "alice")]), 0);
        assert_eq!(first.reason, Reason::Sticky);
        for r in [1, u64::MAX, 0x1234_5678_9abc_def0] {
            assert_eq!(choose_subset(&c, headers(&[("x-user", "alice")]), r), first);
        }
    }

    #[test]
    fn missing_sticky_key_falls_back_to_weighted() {
        let c = cfg(r#","sticky":{"cookie":"sid"}"#);
        assert_eq!(choose_subset(&c, headers(&[("cookie", "other=1")]), 0).reason, Reason::Weighted);
        assert_eq!(choose_subset(&c, headers(&[("cookie", "sid=abc")]), 0).reason, Reason::Sticky);
    }

    #[test]
    fn weighted_draw_uses_the_weight() {
        let c = cfg("");
        // Bucket::from_random maps the top 32 bits linearly onto 0..10_000.
        assert_eq!(choose_subset(&c, headers(&[]), 0).role, Role::Canary);
        assert_eq!(choose_subset(&c, headers(&[]), u64::MAX).role, Role::Stable);
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
