//! `gate-agent validate`: the weight-typo guard for Kubernetes manifests, run in CI and before
//! `kubectl apply`.
//!
//! The incident this exists for: a VirtualService applied with `v1: 1, v2: 99` instead of
//! `v1: 90, v2: 10`. Istio accepted it (weights are relative) and a buggy canary took 99% of the
//! traffic. This module reads manifests and says, with file, document, field path and line, what
//! is wrong and how to fix it. Deciding is plain Rust over parsed documents ([`validate`]); the
//! caller reads the files and prints the [`Report`].
//!
//! # What is read
//!
//! YAML files with any number of documents (`---`), and `kind: List` (what `kubectl get -o yaml`
//! prints). Recognised documents:
//!
//! * Istio `VirtualService` and `DestinationRule` (`networking.istio.io/v1`, `v1beta1`, `v1alpha3`).
//! * Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`, `v1beta1`), read as a
//!   VirtualService: each rule a route, each backendRef a destination named by its Service (one
//!   Service per version), a missing weight read as 1 (the Gateway API's default), findings at
//!   `spec.rules[i].backendRefs[j].weight` and `spec.rules[i].matches[k].headers[h].value`.
//! * Istio `WasmPlugin` (`extensions.istio.io/v1alpha1`) that is canary-gate's (its url or
//!   `pluginName` says canary-gate, or its `spec.pluginConfig` has canary-gate fields). Its
//!   `spec.pluginConfig` is serialised to JSON and parsed by `canary_core::config::parse`, the
//!   filter's own parser, so the two can never disagree. `TrafficExtension` (WasmPlugin's
//!   successor in Istio 1.30) the same way, at `spec.wasm.pluginConfig`.
//! * A rollout spec, in either of two forms. The wrapper form is
//!   `apiVersion: canary-gate.dev/v1`, `kind: Rollout`, with the spec fields under `spec`
//!   (`spec.name` defaults to `metadata.name`); the bare form is the document `gate-agent run
//!   --spec` reads: no `apiVersion`/`kind`, with `stable` and `canary` (and the other spec
//!   fields). Both are read by [`Spec::from_yaml_or_json`](canary_rollout::spec::Spec::from_yaml_or_json).
//! * Kinds the caller reads ([`KindReader`]): gate-agent reads `CanaryGate`
//!   (`canary-gate.dev/v1alpha1`) with its controller's own checks, reported at the gate's field
//!   (`spec.analysis.stepWeights[2]`); its analysis is then the rollout spec for the other checks.
//! * A bare filter config (what `gate-agent check-config` reads): no `apiVersion`/`kind`, with
//!   `version` and `rollout`, `role` or `canary_weight`.
//!
//! Other kinds are not checked and are reported as `info` (`unknown-kind`), so a misspelt kind
//! does not pass unseen; info never fails the run. A document that is not YAML, not a mapping, or
//! of a known kind with a wrongly typed field is an error.
//!
//! `--spec FILE` gives the rollout spec separately. `--live FILE` (repeatable) gives what is
//! applied now, e.g. `kubectl get virtualservice,destinationrule,wasmplugin -o yaml`; live
//! documents are context only: they are never checked for weight problems themselves.
//!
//! # Checks
//!
//! Each finding names its check (the JSON `check` field) and a severity:
//!
//! * `direction-swap` (error): the stable subset gets less than the canary, with no promotion in
//!   progress. The message names both weights and what was probably meant.
//! * `weight-sum` (warning): weights that do not sum to 100, with the split Istio 1.15+ really
//!   applies (it reads weights in proportion; older Istio rejects them), or a weight on a lone
//!   destination (which gets everything anyway). An error when every weight is 0: Istio rejects it.
//! * `max-weight` (error): the canary's share, or a filter config's `canary_weight`, is above the
//!   rollout spec's `maxWeight`.
//! * `step-jump` (error): the canary rises by more than one step of the spec from the weight
//!   applied now.
//! * `missing-subset` (error): a route names a subset that no DestinationRule in the input or in
//!   `--live` defines: requests routed to it get 503 until one does.
//! * `sticky-hash` (warning): `consistentHash` on a host a VirtualService splits by weight; users
//!   flip between versions. The fix points to the filter's sticky key.
//! * `plugin-config` (error): a pluginConfig or bare filter config the filter would reject.
//! * `rollout-spec` (error): a rollout spec gate-agent would reject.
//! * `spec-mismatch` (error): a filter config names other subsets than the rollout spec of the
//!   same name (`gate-agent run` would refuse to start).
//! * `yaml`, `schema` (error): not YAML, duplicate keys, not an object, a wrongly typed field of a
//!   known kind. An unknown apiVersion of a known kind is a `schema` warning (checked anyway).
//! * `unknown-kind` (info): a kind that is not checked. `empty` (warning): an input with no YAML
//!   documents, so nothing was checked.
//!
//! Who is stable, for `direction-swap`: the rollout spec (`--spec` first, then the input) whose
//! `stable` and `canary` both appear in the route; else canary-gate's filter config; else a
//! header-matched route that sends only to one of the two (a dark launch: that one is the
//! canary); else DestinationRule labels or names (`canary`; `stable`, `primary`); else version
//! order (`v1` is older than `v2`, from the subset's `version` label or its name); else the
//! route's first destination. The message says which. A promotion in progress (the VirtualService
//! annotated `canary-gate.dev/promotion: "true"`, or canary-gate's config for the same subsets in
//! phase `promoting` or `succeeded`) allows the canary above stable and above `maxWeight`.
//!
//! The weight applied now, for `step-jump`: the same route of the `--live` VirtualService with
//! the same name and namespace (by route name, else position; a header-matched route is only
//! compared with a header-matched one); else `canary_weight` of canary-gate's
//! config for the same subsets, from `--live`, else from the input. A WasmPlugin in the input is
//! compared with the `--live` one of the same rollout. The steps are the rollout spec's, and the
//! rule is gate-agent's own (`rollout::guard`): decreases are always allowed.
//!
//! # Output
//!
//! Text: one block per finding, `file:line: severity[check]: message`, then `at:` (object,
//! document, path) and `fix:`, and a summary line. JSON (`--format json`), stable:
//!
//! ```json
//! {
//!   "files": 2,
//!   "documents": 2,
//!   "errors": 1,
//!   "warnings": 0,
//!   "findings": [
//!     {
//!       "file": "payment-vs.yaml",
//!       "document": 1,
//!       "object": "VirtualService production/payment-svc",
//!       "path": "spec.http[0].route[1].weight",
//!       "line": 18,
//!       "severity": "error",
//!       "check": "direction-swap",
//!       "message": "v1: 1, v2: 99 sends 99% to the canary v2; did you mean v1: 99, v2: 1? (stable is ...)",
//!       "fix": "Give the stable subset the larger weight (v1: 99, v2: 1) and raise the canary one step at a time, ..."
//!     }
//!   ]
//! }
//! ```
//!
//! `files` counts every file read (FILE arguments, `--spec`, `--live`); `documents` the non-empty
//! YAML documents in them. `document` is 1-based among a file's non-empty documents (`null` for a
//! finding about the whole file); `object` is `Kind namespace/name` or `null`; `path` is the field
//! path in the document (`""` for the document itself; `items[2].spec...` inside a List); `line`
//! is 1-based in the file, or `null` when it cannot be found; `severity` is `error`, `warning` or
//! `info`; `check` is one of the names above. Fields may be added; none will be renamed or removed.
//!
//! # Exit codes
//!
//! [`EXIT_CLEAN`] (0) no errors (warnings and info allowed), [`EXIT_ERRORS`] (1) at least one
//! error, [`EXIT_USAGE`] (2) a bad flag or an input that cannot be read (the caller's job).

mod checks;
mod locate;
mod manifest;
mod report;
mod weights;

pub use checks::PROMOTION_ANNOTATION;
pub use manifest::{KindError, KindReader, ROLLOUT_API_VERSION};
pub use report::{Check, EXIT_CLEAN, EXIT_ERRORS, EXIT_USAGE, Finding, Report, Severity};

use manifest::{Loaded, Origin};
use report::Findings;

/// One file's text and the name to report it by (`<stdin>` for `-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub name: String,
    pub text: String,
}

/// Everything `validate` reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// The manifests to check.
    pub files: Vec<Input>,
    /// `--spec`: a rollout spec (bare or `kind: Rollout`).
    pub spec: Option<Input>,
    /// `--live`: what is applied now.
    pub live: Vec<Input>,
}

/// Checks the manifests. Pure: never reads a file, never panics, whatever the text.
pub fn validate(inputs: &Inputs) -> Report {
    validate_with(inputs, &[])
}

/// [`validate`], with kinds the caller reads (see [`KindReader`]).
pub fn validate_with(inputs: &Inputs, readers: &[&dyn KindReader]) -> Report {
    let mut out = Findings::default();
    let mut loaded = Loaded { readers: readers.to_vec(), ..Loaded::default() };
    for file in &inputs.files {
        loaded.read_file(&file.name, &file.text, Origin::Input, &mut out);
    }
    if let Some(spec) = &inputs.spec {
        let file_seq = loaded.files;
        let reported = out.0.len();
        loaded.read_file(&spec.name, &spec.text, Origin::Spec, &mut out);
        let found = loaded.specs.iter().any(|s| loaded.doc(s).is_some_and(|d| d.origin == Origin::Spec));
        let failed = out.0.iter().skip(reported).any(|f| f.severity == Severity::Error);
        if !found && !failed {
            out.file(
                &spec.name,
                file_seq,
                Severity::Error,
                Check::RolloutSpec,
                "--spec holds no rollout spec".into(),
                "Pass the rollout spec gate-agent runs with (the file given to `gate-agent run --spec`).",
            );
        }
    }
    for file in &inputs.live {
        loaded.read_file(&file.name, &file.text, Origin::Live, &mut out);
    }
    checks::run(&loaded, &mut out);
    Report::new(loaded.files, loaded.docs.len(), out.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_rollout::Spec;
    use serde_json::Value;

    /// Reads `kind: Widget` (`example.com`): its `spec.analysis` is a rollout spec.
    #[derive(Debug)]
    struct Widgets;

    impl KindReader for Widgets {
        fn kind(&self) -> (&'static str, &'static str) {
            ("Widget", "example.com")
        }
        fn spec_at(&self) -> &'static str {
            "spec.analysis"
        }
        fn read(&self, object: &Value) -> Result<Spec, KindError> {
            let analysis = &object["spec"]["analysis"];
            Spec::from_yaml_or_json(&analysis.to_string()).map_err(|e| KindError {
                field: format!("spec.analysis.{}", e.field),
                problem: format!("the reader would refuse it: {e}"),
                fix: "Fix the field.".into(),
                schema: false,
            })
        }
    }

    fn widget(steps: &str) -> Inputs {
        let text = format!(
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: shop, namespace: prod}}\nspec:\n  analysis:\n    \
             name: shop\n    stable: v1\n    canary: v2\n    interval: 30s\n    threshold: 3\n    stepWeights: {steps}\n"
        );
        Inputs { files: vec![Input { name: "widget.yaml".into(), text }], spec: None, live: vec![] }
    }

    #[test]
    fn a_kind_the_caller_reads_is_checked_at_its_own_field_paths() {
        let bad = validate_with(&widget("[10, 200]"), &[&Widgets]);
        let found = bad.findings.iter().find(|f| f.check == Check::RolloutSpec).unwrap();
        assert!(found.path.starts_with("spec.analysis."), "{found:?}");
        assert_eq!(found.object.as_deref(), Some("Widget prod/shop"));
        let good = validate_with(&widget("[10, 50]"), &[&Widgets]);
        assert_eq!(good.errors, 0, "{:?}", good.findings);
        // Without the reader the kind is not one this crate knows.
        assert!(validate(&widget("[10, 200]")).findings.iter().all(|f| f.check != Check::RolloutSpec));
    }
}
