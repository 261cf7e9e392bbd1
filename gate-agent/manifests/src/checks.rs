//! The checks: pure functions from the documents read to findings. No I/O here.
//!
//! Only documents from FILE arguments are checked; `--spec` and `--live` documents, and rollout
//! specs and filter configs in the input, are context (who is stable, the steps and `maxWeight`,
//! the weight applied now).

use canary_core::{RolloutPhase, Weight};

use crate::manifest::{
    DestinationRule, Doc, FilterConfig, HashKey, Loaded, Obj, Origin, Protocol, Route, VirtualService,
};
use crate::report::{Check, Findings, Site};
use crate::weights::{above, as_percentages, meant, percent, share};
use canary_rollout::rollout::{ChangeKind, WeightChange, guard};
use canary_rollout::spec::Spec;

/// Annotation on a VirtualService that declares a deliberate promotion (canary above stable).
pub const PROMOTION_ANNOTATION: &str = "canary-gate.dev/promotion";

/// Runs every check over the input documents.
pub(crate) fn run(l: &Loaded<'_>, out: &mut Findings) {
    for vs in l.virtual_services.iter().filter(|vs| l.origin(vs) == Origin::Input) {
        let Some(doc) = l.doc(vs) else { continue };
        for route in &vs.body.routes {
            route_weights(l, doc, vs, route, out);
        }
        subsets(l, doc, vs, out);
        label_match(l, doc, vs, out);
    }
    for dr in l.destination_rules.iter().filter(|dr| l.origin(dr) == Origin::Input) {
        if let Some(doc) = l.doc(dr) {
            sticky_hash(l, doc, dr, out);
        }
    }
    for filter in l.filters.iter().filter(|f| l.origin(f) == Origin::Input) {
        if let Some(doc) = l.doc(filter) {
            filter_config(l, doc, filter, out);
        }
    }
}

/// A route's weights per destination (subset, else host), in the order written.
#[derive(Debug)]
struct Split<'r> {
    parts: Vec<(&'r str, u64)>,
    total: u64,
}

impl<'r> Split<'r> {
    fn of(route: &'r Route) -> Split<'r> {
        let mut parts: Vec<(&str, u64)> = Vec::new();
        for d in &route.destinations {
            let w = d.weight.unwrap_or(route.protocol.default_weight());
            match parts.iter_mut().find(|(id, _)| *id == d.id()) {
                Some(part) => part.1 = part.1.saturating_add(w),
                None => parts.push((d.id(), w)),
            }
        }
        let total = parts.iter().fold(0u64, |t, (_, w)| t.saturating_add(*w));
        Split { parts, total }
    }

    fn weight(&self, id: &str) -> u64 {
        self.parts.iter().find(|(i, _)| *i == id).map_or(0, |(_, w)| *w)
    }

    fn has(&self, id: &str) -> bool {
        self.parts.iter().any(|(i, _)| *i == id)
    }

    /// More than one destination gets traffic.
    fn weighted(&self) -> bool {
        self.parts.iter().filter(|(_, w)| *w > 0).count() > 1
    }

    /// `v1: 90, v2: 10`.
    fn describe(&self) -> String {
        self.parts.iter().map(|(id, w)| format!("{id}: {w}")).collect::<Vec<_>>().join(", ")
    }
}

/// Which destination of a route is stable and which the canary, and how that was decided.
#[derive(Debug)]
struct Roles<'r> {
    stable: &'r str,
    canary: &'r str,
    basis: String,
}

fn object(obj: &Obj<impl Sized>) -> Option<String> {
    Some(obj.meta.describe())
}

fn route_weights(l: &Loaded<'_>, doc: &Doc<'_>, vs: &Obj<VirtualService>, route: &Route, out: &mut Findings) {
    if !route.weights_valid || route.destinations.is_empty() {
        return;
    }
    let split = Split::of(route);
    let dests = route.protocol.destinations();
    let route_site = Site::new(doc, object(vs), vs.path(&format!("{}.{dests}", route.path())));
    if let [lone] = route.destinations.as_slice() {
        let site = Site::new(doc, object(vs), vs.path(&format!("{}.{dests}[0].weight", route.path())));
        if route.protocol == Protocol::Rules {
            // Gateway API: a lone backend's weight is ignored, except 0, which leaves the rule with no backend.
            if lone.weight == Some(0) {
                out.error(
                    &site,
                    Check::WeightSum,
                    format!(
                        "{} is the rule's only backendRef and its weight is 0: every request gets a 500",
                        lone.id()
                    ),
                    format!("Remove the weight of {} (or give it 1).", lone.id()),
                );
            }
            return;
        }
        if let Some(w) = lone.weight.filter(|w| *w != 100) {
            out.warning(
                &site,
                Check::WeightSum,
                format!(
                    "{} is the route's only destination, so it gets 100% of this traffic; its weight {w} is ignored",
                    lone.id()
                ),
                format!(
                    "If {} should get {w}%, add the destination that gets the rest; otherwise remove the weight.",
                    lone.id()
                ),
            );
        }
        return;
    }
    if split.total == 0 {
        out.error(
            &route_site,
            Check::WeightSum,
            if route.protocol == Protocol::Rules {
                format!("{}: every weight is 0; the rule answers every request with a 500", split.describe())
            } else {
                format!(
                    "{}: every weight is 0 or missing; Istio rejects the route (\"total destination weight = 0\")",
                    split.describe()
                )
            },
            "Give each destination its share, e.g. the stable subset 90 and the canary 10.".into(),
        );
        return;
    }
    let roles = roles(l, vs, route, &split);
    if split.total != 100 {
        weight_sum(&route_site, route.protocol, &split, roles.as_ref(), out);
    }
    let Some(roles) = roles else { return };
    let (ws, wc, total) = (split.weight(roles.stable), split.weight(roles.canary), split.total);
    let canary_site = Site::new(doc, object(vs), vs.path(&weight_path(route, roles.canary)));
    let promotion = promotion(l, vs, &roles);
    if wc > ws && !promotion {
        direction_swap(&canary_site, vs.meta.kind, &split, &roles, out);
    }
    let Some(spec) = spec_for(l, roles.stable, roles.canary) else { return };
    let rollout = describe_spec(l, spec);
    let max = spec.body.max_weight();
    if above(wc, total, max) && !promotion {
        // The step rule would only repeat this.
        out.error(
            &canary_site,
            Check::MaxWeight,
            format!(
                "{c} gets {} ({}), above maxWeight {max} of {rollout}",
                percent(wc, total),
                split.describe(),
                c = roles.canary
            ),
            format!(
                "Keep {} at or below {max}; past maxWeight the only way up is a promotion to 100% once the last \
                 step has passed.",
                roles.canary
            ),
        );
    } else if let Some((from, source)) = applied_for_route(l, vs, route, &roles) {
        let change = Move { canary: roles.canary, from, source, to: share(wc, total), promoting: promotion };
        step(&canary_site, spec, &rollout, &change, out);
    }
}

/// The canary gets more than stable: name both weights and what was probably meant.
fn direction_swap(site: &Site<'_, '_>, kind: &str, split: &Split<'_>, roles: &Roles<'_>, out: &mut Findings) {
    let (s, c, total) = (roles.stable, roles.canary, split.total);
    let (ws, wc) = (split.weight(s), split.weight(c));
    let mut message = format!("{s}: {ws}, {c}: {wc} sends {} to the canary {c}", percent(wc, total));
    if total != 100 {
        message.push_str(&format!(" and {} to the stable {s}", percent(ws, total)));
    }
    let suggestion = meant(ws, wc);
    if let Some((s2, c2)) = suggestion {
        message.push_str(&format!("; did you mean {s}: {s2}, {c}: {c2}?"));
    }
    message.push_str(&format!(" (stable is {s} because {})", roles.basis));
    let (s2, c2) = suggestion.unwrap_or_else(|| as_percentages(wc, ws));
    // Gateway API routes to one Service per version; Istio to subsets.
    let version = if kind == "HTTPRoute" { "Service" } else { "subset" };
    out.error(
        site,
        Check::DirectionSwap,
        message,
        format!(
            "Give the stable {version} the larger weight ({s}: {s2}, {c}: {c2}) and raise the canary one step at a time, \
             or let gate-agent move it. If this is a deliberate promotion, annotate the {kind} with \
             {PROMOTION_ANNOTATION}: \"true\"."
        ),
    );
}

/// The path of the canary's weight in a route (its first weighted destination), else the route.
fn weight_path(route: &Route, id: &str) -> String {
    match route.destinations.iter().position(|d| d.id() == id && d.weight.is_some()) {
        Some(j) => format!("{}.{}[{j}].weight", route.path(), route.protocol.destinations()),
        None => format!("{}.{}", route.path(), route.protocol.destinations()),
    }
}

fn weight_sum(
    site: &Site<'_, '_>,
    protocol: Protocol,
    split: &Split<'_>,
    roles: Option<&Roles<'_>>,
    out: &mut Findings,
) {
    let total = split.total;
    let mut message = format!("{} sum to {total}, not 100: {} splits in proportion", split.describe(), protocol.api());
    let fix = match (roles, split.parts.as_slice()) {
        (Some(r), [_, _]) => {
            let (ws, wc) = (split.weight(r.stable), split.weight(r.canary));
            message.push_str(&format!(
                ", so {ws}/{wc} sends {} to {} and {} to {}",
                percent(wc, total),
                r.canary,
                percent(ws, total),
                r.stable
            ));
            match meant(ws, wc) {
                Some((s2, c2)) => format!(
                    "Write weights that sum to 100 so they read as percentages; did you mean {}: {s2}, {}: {c2}?",
                    r.stable, r.canary
                ),
                None => {
                    let (s2, c2) = as_percentages(ws, wc);
                    format!(
                        "Write weights that sum to 100 so they read as percentages; the split you have now is {}: \
                         {s2}, {}: {c2}.",
                        r.stable, r.canary
                    )
                }
            }
        }
        _ => {
            let shares: Vec<String> =
                split.parts.iter().map(|(id, w)| format!("{id} {}", percent(*w, total))).collect();
            message.push_str(&format!(": {}", shares.join(", ")));
            "Write weights that sum to 100 so they read as percentages.".into()
        }
    };
    if protocol != Protocol::Rules {
        message.push_str(" (Istio before 1.15 rejects weights that do not sum to 100)");
    }
    out.warning(site, Check::WeightSum, message, fix);
}

/// Decides who is stable, from the strongest evidence available: the rollout spec, canary-gate's
/// filter config, a header-matched route to one subset (a dark launch), DestinationRule labels
/// or names (`track: canary`, `*-primary`), version order (`v1` before `v2`), and last the
/// route's first destination.
fn roles<'r>(l: &Loaded<'_>, vs: &Obj<VirtualService>, route: &'r Route, split: &Split<'r>) -> Option<Roles<'r>> {
    let ids: Vec<&'r str> = split.parts.iter().map(|(id, _)| *id).collect();
    let found = |stable: &str, canary: &str| -> Option<(&'r str, &'r str)> {
        Some((*ids.iter().find(|i| **i == stable)?, *ids.iter().find(|i| **i == canary)?))
    };
    for spec in specs_in_order(l) {
        if let Some((stable, canary)) = found(spec.body.stable().as_str(), spec.body.canary().as_str()) {
            return Some(Roles { stable, canary, basis: format!("{} says so", describe_spec(l, spec)) });
        }
    }
    for filter in filters_in_order(l) {
        let r = &filter.body.route;
        if let Some((stable, canary)) = found(r.stable.as_str(), r.canary.as_str()) {
            let basis = format!("canary-gate's config in {} says so", describe(l, filter));
            return Some(Roles { stable, canary, basis });
        }
    }
    let [first, second] = ids.as_slice() else { return None };
    let other = |id: &str| if id == *first { *second } else { *first };
    // Header-matched routes that each send everything to one of the pair are dark launches of
    // the canary; if they disagree (one forces stable, say), this rule decides nothing.
    let dark: Vec<(&Route, &'r str)> = vs
        .body
        .routes
        .iter()
        .filter(|r| r.header_match && r.protocol == route.protocol && r.index != route.index)
        .filter_map(|r| match Split::of(r).parts.as_slice() {
            [(only, _)] => ids.iter().find(|id| **id == *only).map(|id| (r, *id)),
            _ => None,
        })
        .collect();
    if let [(by, canary), rest @ ..] = dark.as_slice()
        && rest.iter().all(|(_, other)| other == canary)
    {
        let basis = format!("{} sends header-matched requests only to {canary}, a dark launch", by.path());
        return Some(Roles { stable: other(canary), canary, basis });
    }
    let hints: Vec<Option<(Role, String)>> = ids.iter().map(|id| hint(l, vs, route, id)).collect();
    let (stable, why) = match hints.as_slice() {
        [Some((Role::Canary, why)), None | Some((Role::Stable, _))] => (*second, why.clone()),
        [None | Some((Role::Stable, _)), Some((Role::Canary, why))] => (*first, why.clone()),
        [Some((Role::Stable, why)), None] => (*first, why.clone()),
        [None, Some((Role::Stable, why))] => (*second, why.clone()),
        _ => match (version(l, vs, route, first), version(l, vs, route, second)) {
            (Some(a), Some(b)) if a != b => {
                let (older, newer) = if a < b { (*first, *second) } else { (*second, *first) };
                (older, format!("{older} is older than {newer}"))
            }
            _ => (*first, "it is the route's first destination (nothing else says which is stable)".into()),
        },
    };
    Some(Roles { stable, canary: other(stable), basis: why })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Stable,
    Canary,
}

/// What a destination's name, host or DestinationRule labels say about its role.
fn hint(l: &Loaded<'_>, vs: &Obj<VirtualService>, route: &Route, id: &str) -> Option<(Role, String)> {
    let mut words: Vec<(String, String)> = vec![(id.to_owned(), format!("of the name {id}"))];
    if let Some((dr, subset)) = subset_def(l, vs, route, id) {
        for (k, v) in &subset.labels {
            words.push((v.clone(), format!("{} labels subset {id} {k}: {v}", dr.meta.describe())));
        }
    }
    let find = |role: Role, keys: &[&str]| {
        words
            .iter()
            .find(|(w, _)| keys.iter().any(|k| w.to_ascii_lowercase().contains(k)))
            .map(|(_, why)| (role, why.clone()))
    };
    match (find(Role::Canary, &["canary"]), find(Role::Stable, &["stable", "primary"])) {
        (Some(c), None) => Some(c),
        (None, Some(s)) => Some(s),
        _ => None,
    }
}

/// `v1` → `[1]`, `1.10.2` → `[1, 10, 2]`, `payment-v2` → `[2]`: from the subset's `version` label,
/// else its name.
fn version(l: &Loaded<'_>, vs: &Obj<VirtualService>, route: &Route, id: &str) -> Option<Vec<u64>> {
    let label = subset_def(l, vs, route, id).and_then(|(_, s)| s.labels.get("version").cloned());
    let text = label.unwrap_or_else(|| id.to_owned());
    let tail = text.rsplit(['-', '_']).next().unwrap_or(&text);
    let digits = tail.strip_prefix(['v', 'V']).unwrap_or(tail);
    digits.split('.').map(|n| n.parse().ok()).collect()
}

/// The DestinationRule subset a route's destination names, from the input or `--live`.
fn subset_def<'l>(
    l: &'l Loaded<'_>,
    vs: &Obj<VirtualService>,
    route: &Route,
    id: &str,
) -> Option<(&'l Obj<DestinationRule>, &'l crate::manifest::SubsetDef)> {
    let dest = route.destinations.iter().find(|d| d.subset.as_deref() == Some(id))?;
    l.destination_rules
        .iter()
        .filter(|dr| same_host(&dest.host, vs.meta.namespace.as_deref(), &dr.body.host, dr.meta.namespace.as_deref()))
        .find_map(|dr| dr.body.subsets.iter().find(|s| s.name == id).map(|s| (dr, s)))
}

/// Whether the canary may legitimately get more than stable now: the VirtualService says so, or
/// canary-gate's config for these subsets records a promotion.
fn promotion(l: &Loaded<'_>, vs: &Obj<VirtualService>, roles: &Roles<'_>) -> bool {
    vs.meta.annotations.get(PROMOTION_ANNOTATION).is_some_and(|v| v == "true")
        || filters_in_order(l).any(|f| {
            let r = &f.body.route;
            let phase = r.rollout_state.as_ref().map(|s| s.phase);
            matches!(phase, Some(RolloutPhase::Promoting | RolloutPhase::Succeeded))
                && r.stable.as_str() == roles.stable
                && r.canary.as_str() == roles.canary
        })
}

/// The weight applied now for this route's canary: the same route in a `--live` VirtualService,
/// else canary-gate's config for the same subsets (`--live` first, then the input).
fn applied_for_route(
    l: &Loaded<'_>,
    vs: &Obj<VirtualService>,
    route: &Route,
    roles: &Roles<'_>,
) -> Option<(Weight, String)> {
    let live = l.virtual_services.iter().filter(|o| l.origin(o) == Origin::Live && o.meta.same_object(&vs.meta));
    for applied in live {
        // The same route: by name, else at the same position, else the first of the same shape
        // (a header-matched dark launch is never compared with the weighted catch-all).
        let comparable = |r: &&Route| {
            let split = Split::of(r);
            r.protocol == route.protocol
                && r.header_match == route.header_match
                && r.weights_valid
                && (split.has(roles.stable) || split.has(roles.canary))
        };
        let routes = &applied.body.routes;
        let named =
            route.name.as_ref().and_then(|n| routes.iter().filter(comparable).find(|r| r.name.as_ref() == Some(n)));
        let same = named
            .or_else(|| routes.iter().filter(comparable).find(|r| r.index == route.index))
            .or_else(|| routes.iter().find(comparable));
        let Some(same) = same else { continue };
        let split = Split::of(same);
        let weight = match split.parts.as_slice() {
            [(only, _)] => {
                if *only == roles.canary {
                    Weight::FULL
                } else {
                    Weight::ZERO
                }
            }
            _ if split.total == 0 => continue,
            _ => share(split.weight(roles.canary), split.total),
        };
        let file = l.doc(applied).map(|d| d.file).unwrap_or_default();
        return Some((weight, format!("{} {} in {file}", applied.meta.describe(), applied.path(&same.path()))));
    }
    filters_in_order(l)
        .filter(|f| l.origin(f) != Origin::Spec)
        .find(|f| f.body.route.stable.as_str() == roles.stable && f.body.route.canary.as_str() == roles.canary)
        .map(|f| (f.body.route.canary_weight, format!("canary_weight of {}", describe(l, f))))
}

/// A change of the canary's weight, from what is applied now to what the input sets.
#[derive(Debug)]
struct Move<'s> {
    canary: &'s str,
    from: Weight,
    /// Where `from` was read.
    source: String,
    to: Weight,
    promoting: bool,
}

/// The one-step rule, exactly as gate-agent applies it (`rollout::guard`).
fn step(site: &Site<'_, '_>, spec: &Obj<Spec>, rollout: &str, change: &Move<'_>, out: &mut Findings) {
    let Move { canary, from, ref source, to, promoting } = *change;
    let kind = if promoting && to == Weight::FULL { ChangeKind::Promotion } else { ChangeKind::Step };
    let Err(why) = guard(&spec.body, &WeightChange { from, to, kind }) else { return };
    let next = match spec.body.next_step_above(from) {
        Some(next) => format!("Raise {canary} to {next} at most"),
        None => format!("{from} is the last step of {rollout}; only a promotion to 100% goes higher, so hold it"),
    };
    out.error(
        site,
        Check::StepJump,
        format!("{canary}: {why}; {from} is applied now ({source}), steps from {rollout}"),
        format!("{next}, and let each step pass its checks before the next (gate-agent moves one step at a time)."),
    );
}

/// Every subset a VirtualService names must be defined; each missing one is reported once, where
/// it is first named.
fn subsets(l: &Loaded<'_>, doc: &Doc<'_>, vs: &Obj<VirtualService>, out: &mut Findings) {
    let mut reported: Vec<(&str, &str)> = Vec::new();
    let named = vs.body.routes.iter().flat_map(|r| r.destinations.iter().enumerate().map(move |(j, d)| (r, j, d)));
    for (route, j, dest) in named {
        let Some(subset) = &dest.subset else { continue };
        let host = &dest.host;
        if reported.contains(&(host.as_str(), subset.as_str())) {
            continue;
        }
        let rules: Vec<&Obj<DestinationRule>> = l
            .destination_rules
            .iter()
            .filter(|dr| same_host(host, vs.meta.namespace.as_deref(), &dr.body.host, dr.meta.namespace.as_deref()))
            .collect();
        if rules.iter().any(|dr| dr.body.subsets.iter().any(|s| s.name == *subset)) {
            continue;
        }
        let site = Site::new(doc, object(vs), vs.path(&format!("{}.route[{j}].destination.subset", route.path())));
        let (message, fix) = if rules.is_empty() {
            (
                format!(
                    "subset {subset} of {host}: no DestinationRule for {host} in the input or --live, so Istio has no \
                     such subset and requests routed to it get 503"
                ),
                format!(
                    "Check the DestinationRule that defines subset {subset} together with this VirtualService (or \
                     pass the applied one with --live), and apply it first."
                ),
            )
        } else {
            let names: Vec<String> = rules.iter().map(|dr| dr.meta.describe()).collect();
            let defined: Vec<&str> =
                rules.iter().flat_map(|dr| dr.body.subsets.iter().map(|s| s.name.as_str())).collect();
            let defined = if defined.is_empty() { "no subsets".to_owned() } else { defined.join(", ") };
            (
                format!(
                    "subset {subset} of {host} is not defined by {} (which defines {defined}); requests routed to it \
                     get 503",
                    names.join(", ")
                ),
                format!(
                    "Add subset {subset} (with its pods' labels, e.g. version: {subset}) to {}, and apply the \
                     DestinationRule before the VirtualService.",
                    names.join(", ")
                ),
            )
        };
        out.error(&site, Check::MissingSubset, message, fix);
        reported.push((host, subset));
    }
}

fn sticky_hash(l: &Loaded<'_>, doc: &Doc<'_>, dr: &Obj<DestinationRule>, out: &mut Findings) {
    if dr.body.hashing.is_empty() {
        return;
    }
    let weighted = l
        .virtual_services
        .iter()
        .filter(|vs| l.origin(vs) == Origin::Input)
        .flat_map(|vs| vs.body.routes.iter().map(move |r| (vs, r)))
        .find(|(vs, r)| {
            r.weights_valid
                && Split::of(r).weighted()
                && r.destinations.iter().any(|d| {
                    same_host(&d.host, vs.meta.namespace.as_deref(), &dr.body.host, dr.meta.namespace.as_deref())
                })
        });
    let Some((vs, route)) = weighted else { return };
    for hashing in &dr.body.hashing {
        let (key, sticky) = match &hashing.key {
            HashKey::Header(h) => (format!("header {h}"), format!("{{\"header\": \"{}\"}}", h.to_ascii_lowercase())),
            HashKey::Cookie(c) => (format!("cookie {c}"), format!("{{\"cookie\": \"{c}\"}}")),
            HashKey::Other(what) => {
                ((*what).to_owned(), "{\"header\": \"x-user-id\"} or {\"cookie\": \"session\"}".into())
            }
        };
        out.warning(
            &Site::new(doc, object(dr), hashing.path.clone()),
            Check::StickyHash,
            format!(
                "consistentHash on {key} keeps a user on one pod inside a subset, not on one version: {} splits {} \
                 by weight at {} ({}), and Envoy picks the subset at random for every request before hashing, so \
                 users flip between versions",
                vs.meta.describe(),
                dr.body.host,
                route.path(),
                Split::of(route).describe()
            ),
            format!(
                "To keep each user on one version, let canary-gate split: route on its label header \
                 (x-canary-subset) instead of weights and set pluginConfig.sticky to {sticky}; a user then keeps \
                 their subset as the canary grows. Keep consistentHash only for pod affinity within a version."
            ),
        );
    }
}

fn filter_config(l: &Loaded<'_>, doc: &Doc<'_>, filter: &Obj<FilterConfig>, out: &mut Findings) {
    let config = &filter.body.route;
    let at = |field: &str| crate::manifest::join(&filter.body.at, field);
    let named = specs_in_order(l).find(|s| *s.body.name() == config.rollout);
    if let Some(spec) = named {
        for (field, want, have) in
            [("stable", spec.body.stable(), &config.stable), ("canary", spec.body.canary(), &config.canary)]
        {
            if want != have {
                out.error(
                    &Site::new(doc, object(filter), at(field)),
                    Check::SpecMismatch,
                    format!(
                        "{field} is {have} here but {want} in {}: `gate-agent run` refuses to start with them",
                        describe_spec(l, spec)
                    ),
                    format!("Name the same {field} subset in the filter config and the rollout spec."),
                );
            }
        }
    }
    let Some(spec) = named.filter(|s| *s.body.stable() == config.stable && *s.body.canary() == config.canary) else {
        return;
    };
    let rollout = describe_spec(l, spec);
    let phase = config.rollout_state.as_ref().map(|s| s.phase);
    let promoting = matches!(phase, Some(RolloutPhase::Promoting | RolloutPhase::Succeeded));
    let (to, max) = (config.canary_weight, spec.body.max_weight());
    let site = Site::new(doc, object(filter), at("canary_weight"));
    if to > max && !(promoting && to == Weight::FULL) {
        out.error(
            &site,
            Check::MaxWeight,
            format!("canary_weight {to} is above maxWeight {max} of {rollout}"),
            format!(
                "Keep canary_weight at or below {max}; past maxWeight the only way up is a promotion to 100%, which \
                 gate-agent records as rollout_state.phase: promoting."
            ),
        );
        return;
    }
    let applied = l.filters.iter().find(|f| l.origin(f) == Origin::Live && f.body.route.rollout == config.rollout);
    if let Some(applied) = applied {
        let change = Move {
            canary: config.canary.as_str(),
            from: applied.body.route.canary_weight,
            source: format!("canary_weight of {}", describe(l, applied)),
            to,
            promoting,
        };
        step(&site, spec, &rollout, &change, out);
    }
}

/// A route that sends the filter's label header to the canary subset must match exactly the
/// label the filter writes. With a `label_token`, matching the bare subset name is the unsafe
/// mistake: the filter's requests never match it, and where nothing strips a client's header (an
/// Istio sidecar with the filter absent), a client sending the bare name reaches the canary.
fn label_match(l: &Loaded<'_>, doc: &Doc<'_>, vs: &Obj<VirtualService>, out: &mut Findings) {
    for filter in filters_in_order(l) {
        let config = &filter.body.route;
        let want = config.label_value(&config.canary);
        for route in &vs.body.routes {
            // The canary is a subset (VirtualService) or a backend Service (HTTPRoute).
            if !route.destinations.iter().any(|d| d.id() == config.canary.as_str()) {
                continue;
            }
            for (at, header, value) in &route.exact_headers {
                if header != config.label_header.as_str() || *value == want {
                    continue;
                }
                let path = vs.path(&format!("{}.{at}", route.path()));
                let (message, fix) = if config.label_token.is_some() && value == config.canary.as_str() {
                    (
                        format!(
                            "matches {header}: {value}, but {} writes {}.<label_token>: its requests never reach the \
                             canary, and where nothing strips the header a client sending {value} does",
                            describe(l, filter),
                            config.canary
                        ),
                        format!(
                            "Match exactly {}.<label_token>, the same token as the filter configuration's.",
                            config.canary
                        ),
                    )
                } else {
                    (
                        format!(
                            "matches {header}: {value}, but {} labels canary requests {}",
                            describe(l, filter),
                            if config.label_token.is_some() {
                                format!("{}.<label_token> (a different token)", config.canary)
                            } else {
                                want.clone()
                            }
                        ),
                        "Match exactly the label the filter writes: the canary subset's name, followed by `.` and the \
                         filter's label_token when it has one."
                            .to_owned(),
                    )
                };
                out.error(&Site::new(doc, object(vs), path), Check::LabelMatch, message, fix);
            }
        }
    }
}

/// Rollout specs, `--spec` first.
fn specs_in_order<'l>(l: &'l Loaded<'_>) -> impl Iterator<Item = &'l Obj<Spec>> {
    let from = move |origin: Origin| l.specs.iter().filter(move |s| l.origin(s) == origin);
    from(Origin::Spec).chain(from(Origin::Input)).chain(from(Origin::Live))
}

/// Filter configs, `--live` first (what is applied wins over what is proposed).
fn filters_in_order<'l>(l: &'l Loaded<'_>) -> impl Iterator<Item = &'l Obj<FilterConfig>> {
    let from = move |origin: Origin| l.filters.iter().filter(move |f| l.origin(f) == origin);
    from(Origin::Live).chain(from(Origin::Input)).chain(from(Origin::Spec))
}

fn spec_for<'l>(l: &'l Loaded<'_>, stable: &str, canary: &str) -> Option<&'l Obj<Spec>> {
    specs_in_order(l).find(|s| s.body.stable().as_str() == stable && s.body.canary().as_str() == canary)
}

/// `WasmPlugin canary-gate (live.yaml)`.
fn describe<T>(l: &Loaded<'_>, obj: &Obj<T>) -> String {
    match l.doc(obj) {
        Some(doc) => format!("{} ({})", obj.meta.describe(), doc.file),
        None => obj.meta.describe(),
    }
}

/// `the rollout spec payment-svc (rollout.yaml)`.
fn describe_spec(l: &Loaded<'_>, spec: &Obj<Spec>) -> String {
    let file = l.doc(spec).map(|d| format!(" ({})", d.file)).unwrap_or_default();
    format!("the rollout spec {}{file}", spec.body.name())
}

/// Whether two service hosts name the same service. Istio reads a short name (`payment-svc`) in
/// the namespace of the object that holds it; a DestinationRule host may be a wildcard. A short
/// name whose namespace is not written matches that name in any namespace.
pub(crate) fn same_host(a: &str, a_ns: Option<&str>, b: &str, b_ns: Option<&str>) -> bool {
    let (a, b) = (qualify(a, a_ns), qualify(b, b_ns));
    if let Some(suffix) = b.strip_prefix('*') {
        return a.ends_with(suffix);
    }
    if a == b {
        return true;
    }
    let short = |h: &str| h.split('.').next().unwrap_or_default().to_owned();
    let unresolved = |h: &str| !h.contains('.');
    let in_cluster = |h: &str| unresolved(h) || h.ends_with(".svc.cluster.local");
    (unresolved(&a) || unresolved(&b)) && short(&a) == short(&b) && in_cluster(&a) && in_cluster(&b)
}

fn qualify(host: &str, namespace: Option<&str>) -> String {
    let host = host.to_ascii_lowercase();
    match namespace {
        Some(ns) if !host.contains('.') && !host.starts_with('*') => format!("{host}.{ns}.svc.cluster.local"),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_as_istio_resolves_them() {
        assert!(same_host("payment-svc", Some("prod"), "payment-svc.prod.svc.cluster.local", None));
        assert!(same_host("payment-svc", None, "payment-svc", None));
        assert!(same_host("payment-svc", None, "payment-svc.prod.svc.cluster.local", Some("prod")));
        assert!(!same_host("payment-svc", Some("prod"), "payment-svc", Some("staging")));
        assert!(same_host("payment-svc", Some("prod"), "*.prod.svc.cluster.local", None));
        assert!(same_host("anything", None, "*", None));
        assert!(!same_host("payment-svc", None, "payment-svc.example.com", None));
    }
}
