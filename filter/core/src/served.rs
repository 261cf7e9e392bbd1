//! Which subset really served a request, from the upstream cluster Envoy sent it to.
//!
//! The filter labels a request for a subset, but the route table decides where it goes. If the
//! route table does not send the label to the canary (the next release labels `v3` while the
//! VirtualService still matches `v2`, a typo in the match, a missing DestinationRule subset),
//! "canary" requests are served by stable; counting them as canary would make both sides look
//! alike and promote a canary that served nothing. So the filter counts each request under the
//! subset whose cluster served it, and counts a label the route table did not follow as
//! *misrouted*, which gate-agent treats as a failed precondition.

use serde::{Deserialize, Serialize};

use crate::config::{RouteConfig, ServedBy, SubsetName};
use crate::split::Role;

/// Where a request went, as far as the cluster name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// A cluster of this subset served it.
    By(Role),
    /// No upstream cluster (Envoy answered itself, or the request ended before routing).
    NoUpstream,
    /// A cluster that names neither subset. With `served_by: auto` it is not checked; with
    /// explicit cluster names it is a mismatch.
    Unknown,
}

/// The subset field of an Istio cluster name (`outbound|8080|v2|reviews.prod.svc.cluster.local`).
fn istio_subset(cluster: &str) -> Option<&str> {
    let mut parts = cluster.split('|');
    let direction = parts.next()?;
    if direction != "outbound" && direction != "inbound" {
        return None;
    }
    let _port = parts.next()?;
    let subset = parts.next()?;
    parts.next()?;
    Some(subset)
}

fn role_of(cfg: &RouteConfig, subset: &str) -> Option<Role> {
    let is = |s: &SubsetName| s.as_str() == subset;
    if is(&cfg.stable) {
        Some(Role::Stable)
    } else if is(&cfg.canary) {
        Some(Role::Canary)
    } else {
        None
    }
}

/// Which subset served a request whose upstream cluster is `cluster` (as Envoy's
/// `xds.cluster_name` gives it: bytes, possibly absent).
pub fn served(cfg: &RouteConfig, cluster: Option<&[u8]>) -> Served {
    let Some(cluster) = cluster.filter(|c| !c.is_empty()) else { return Served::NoUpstream };
    let Ok(cluster) = std::str::from_utf8(cluster) else { return Served::Unknown };
    let role = match &cfg.served_by {
        ServedBy::Auto => istio_subset(cluster).and_then(|s| role_of(cfg, s)).or_else(|| role_of(cfg, cluster)),
        ServedBy::Clusters { stable, .. } if cluster == stable => Some(Role::Stable),
        ServedBy::Clusters { canary, .. } if cluster == canary => Some(Role::Canary),
        ServedBy::Clusters { .. } => None,
    };
    role.map_or(Served::Unknown, Served::By)
}

/// What a finished request counts as: the role whose counters take it, and whether the route
/// table did not follow the label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribution {
    pub counted_as: Role,
    pub misrouted: bool,
}

/// Counts by what happened: a request served by the other subset's cluster counts there and is
/// misrouted; with explicit cluster names an unknown cluster is misrouted too (and counts under
/// the label, the only subset it can be charged to).
pub fn attribute(cfg: &RouteConfig, labelled: Role, served: Served) -> Attribution {
    match served {
        Served::By(role) => Attribution { counted_as: role, misrouted: role != labelled },
        Served::NoUpstream => Attribution { counted_as: labelled, misrouted: false },
        Served::Unknown => {
            Attribution { counted_as: labelled, misrouted: matches!(cfg.served_by, ServedBy::Clusters { .. }) }
        }
    }
}

/// Requests whose label the route table did not follow, per label, since the proxy started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Misrouted {
    /// Labelled for the canary, served by another cluster.
    pub canary_label: u64,
    /// Labelled for stable, served by another cluster.
    pub stable_label: u64,
    /// The cluster of the latest misrouted request, for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cluster: Option<String>,
}

impl Misrouted {
    /// The longest cluster name kept.
    pub const MAX_CLUSTER_BYTES: usize = 256;

    pub fn record(&mut self, labelled: Role, cluster: Option<&[u8]>) {
        match labelled {
            Role::Canary => self.canary_label = self.canary_label.saturating_add(1),
            Role::Stable => self.stable_label = self.stable_label.saturating_add(1),
        }
        self.last_cluster = cluster.map(|c| {
            let c = c.get(..Self::MAX_CLUSTER_BYTES).unwrap_or(c);
            String::from_utf8_lossy(c).into_owned()
        });
    }

    pub fn total(&self) -> u64 {
        self.canary_label.saturating_add(self.stable_label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_route as cfg;

    #[test]
    fn istio_cluster_names_carry_the_subset() {
        let c = cfg("");
        let s = |name: &str| served(&c, Some(name.as_bytes()));
        assert_eq!(s("outbound|8080|v2|reviews.prod.svc.cluster.local"), Served::By(Role::Canary));
        assert_eq!(s("outbound|8080|v1|reviews.prod.svc.cluster.local"), Served::By(Role::Stable));
        assert_eq!(s("outbound|8080|v3|reviews.prod.svc.cluster.local"), Served::Unknown);
        assert_eq!(s("outbound|8080||reviews.prod.svc.cluster.local"), Served::Unknown);
        assert_eq!(s("v2"), Served::By(Role::Canary));
        assert_eq!(s("something-else"), Served::Unknown);
        assert_eq!(served(&c, None), Served::NoUpstream);
        assert_eq!(served(&c, Some(&[0xff, b'|'])), Served::Unknown);
    }

    #[test]
    fn a_canary_label_served_by_stable_counts_as_stable_and_misrouted() {
        let c = cfg("");
        let a = attribute(&c, Role::Canary, served(&c, Some(b"outbound|80|v1|svc")));
        assert_eq!(a, Attribution { counted_as: Role::Stable, misrouted: true });
        let a = attribute(&c, Role::Canary, served(&c, Some(b"outbound|80|v2|svc")));
        assert_eq!(a, Attribution { counted_as: Role::Canary, misrouted: false });
        // Auto does not judge clusters it cannot read.
        let a = attribute(&c, Role::Canary, served(&c, Some(b"passthrough")));
        assert_eq!(a, Attribution { counted_as: Role::Canary, misrouted: false });
    }

    #[test]
    fn explicit_cluster_names_are_exact() {
        let c = cfg(r#","served_by":{"clusters":{"stable":"stable","canary":"canary"}}"#);
        assert_eq!(served(&c, Some(b"canary")), Served::By(Role::Canary));
        assert_eq!(served(&c, Some(b"stable")), Served::By(Role::Stable));
        assert_eq!(served(&c, Some(b"v2")), Served::Unknown);
        let a = attribute(&c, Role::Canary, Served::Unknown);
        assert_eq!(a, Attribution { counted_as: Role::Canary, misrouted: true });
    }

    #[test]
    fn misrouted_requests_keep_the_last_cluster() {
        let mut m = Misrouted::default();
        m.record(Role::Canary, Some(b"outbound|80|v1|svc"));
        m.record(Role::Stable, Some(&[b'x'; 300]));
        assert_eq!((m.canary_label, m.stable_label, m.total()), (1, 1, 2));
        assert_eq!(m.last_cluster.as_deref().map(str::len), Some(Misrouted::MAX_CLUSTER_BYTES));
    }
}
