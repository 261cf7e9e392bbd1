//! Findings and the report: what went wrong where, how bad it is, and how to fix it, as text for
//! people and as JSON for tools (the shape is documented in the parent module and kept stable).

use std::fmt::Write as _;

use serde::Serialize;

use crate::locate;
use crate::manifest::Doc;

/// Exit code: no errors (warnings and notes allowed).
pub const EXIT_CLEAN: u8 = 0;
/// Exit code: at least one error.
pub const EXIT_ERRORS: u8 = 1;
/// Exit code: a bad flag, or an input that cannot be read at all.
pub const EXIT_USAGE: u8 = 2;

/// How bad a finding is. Only errors fail the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The manifest is wrong or dangerous: exit 1.
    Error,
    /// Probably not what was meant; the run still passes.
    Warning,
    /// For the record (e.g. a kind that is not checked).
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// Which rule produced a finding. The kebab-case names are part of the JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// The text is not YAML (or has duplicate keys, which kubectl rejects).
    Yaml,
    /// A document of a known kind has a wrong type or a missing field, or is not an object.
    Schema,
    /// A kind this command does not check (reported as info).
    UnknownKind,
    /// An input with no YAML documents at all (a warning: nothing was checked).
    Empty,
    /// The canary gets more than the stable subset, with no promotion in progress.
    DirectionSwap,
    /// Weights that do not sum to 100 (Istio splits them in proportion), or all zero.
    WeightSum,
    /// The canary's share is above the rollout's `maxWeight`.
    MaxWeight,
    /// The canary would rise by more than one step from the weight applied now.
    StepJump,
    /// A route names a subset that no DestinationRule defines: 503s until one does.
    MissingSubset,
    /// `consistentHash` on a host that is split by weight: users flip between versions.
    StickyHash,
    /// A pluginConfig (or bare filter config) the filter would reject.
    PluginConfig,
    /// A rollout spec gate-agent would reject.
    RolloutSpec,
    /// The filter config and the rollout spec name different subsets.
    SpecMismatch,
    /// A route's label match is not the label the filter writes (`<canary>` or
    /// `<canary>.<label_token>`): the filter's requests miss the canary, or a client's label
    /// can reach it where nothing strips it.
    LabelMatch,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Yaml => "yaml",
            Check::Schema => "schema",
            Check::UnknownKind => "unknown-kind",
            Check::Empty => "empty",
            Check::DirectionSwap => "direction-swap",
            Check::WeightSum => "weight-sum",
            Check::MaxWeight => "max-weight",
            Check::StepJump => "step-jump",
            Check::MissingSubset => "missing-subset",
            Check::StickyHash => "sticky-hash",
            Check::PluginConfig => "plugin-config",
            Check::RolloutSpec => "rollout-spec",
            Check::SpecMismatch => "spec-mismatch",
            Check::LabelMatch => "label-match",
        }
    }
}

/// One problem, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The file as given on the command line (`<stdin>` for `-`).
    pub file: String,
    /// 1-based position among the file's non-empty YAML documents; `None` for the file itself.
    pub document: Option<usize>,
    /// `Kind namespace/name` of the object, when known.
    pub object: Option<String>,
    /// Field path inside the document (`spec.http[1].route[0].weight`); empty for the document.
    pub path: String,
    /// 1-based line in the file, when it could be found.
    pub line: Option<usize>,
    pub severity: Severity,
    pub check: Check,
    pub message: String,
    /// What to do about it, in plain words.
    pub fix: String,
    /// Orders findings by input position (file, then document), not serialised.
    #[serde(skip)]
    pub(crate) order: (usize, usize),
}

/// Where in the input a finding points.
#[derive(Debug, Clone)]
pub(crate) struct Site<'d, 'a> {
    pub doc: &'d Doc<'a>,
    pub object: Option<String>,
    pub path: String,
    /// The line in the file when it is known better than the path says (a parser error).
    pub line: Option<usize>,
}

impl<'d, 'a> Site<'d, 'a> {
    pub fn new(doc: &'d Doc<'a>, object: Option<String>, path: impl Into<String>) -> Self {
        Site { doc, object, path: path.into(), line: None }
    }
}

/// Collects findings while documents are read and checked.
#[derive(Debug, Default)]
pub(crate) struct Findings(pub Vec<Finding>);

impl Findings {
    pub fn add(&mut self, site: &Site<'_, '_>, severity: Severity, check: Check, message: String, fix: String) {
        let doc = site.doc;
        let line = site.line.or_else(|| locate::line_of(doc.text, &site.path).map(|l| l + doc.first_line - 1));
        self.0.push(Finding {
            file: doc.file.to_owned(),
            document: Some(doc.index),
            object: site.object.clone(),
            path: site.path.clone(),
            line,
            severity,
            check,
            message,
            fix,
            order: (doc.file_seq, doc.index),
        });
    }

    pub fn error(&mut self, site: &Site<'_, '_>, check: Check, message: String, fix: String) {
        self.add(site, Severity::Error, check, message, fix);
    }

    pub fn warning(&mut self, site: &Site<'_, '_>, check: Check, message: String, fix: String) {
        self.add(site, Severity::Warning, check, message, fix);
    }

    pub fn info(&mut self, site: &Site<'_, '_>, check: Check, message: String, fix: String) {
        self.add(site, Severity::Info, check, message, fix);
    }

    /// A finding about a whole file (e.g. one with no documents).
    pub fn file(&mut self, file: &str, file_seq: usize, severity: Severity, check: Check, message: String, fix: &str) {
        self.0.push(Finding {
            file: file.to_owned(),
            document: None,
            object: None,
            path: String::new(),
            line: None,
            severity,
            check,
            message,
            fix: fix.to_owned(),
            order: (file_seq, 0),
        });
    }
}

/// Everything `validate` found, in input order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Files read (FILE arguments, `--spec` and `--live`).
    pub files: usize,
    /// Non-empty YAML documents in them.
    pub documents: usize,
    pub errors: usize,
    pub warnings: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    pub(crate) fn new(files: usize, documents: usize, mut findings: Vec<Finding>) -> Report {
        // Stable: findings of one document keep the order of the checks that made them.
        findings.sort_by_key(|f| (f.order, f.line.unwrap_or(0)));
        let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
        Report { files, documents, errors: count(Severity::Error), warnings: count(Severity::Warning), findings }
    }

    /// 0 when there is no error, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.errors == 0 { EXIT_CLEAN } else { EXIT_ERRORS }
    }

    /// The documented JSON shape (see the module doc).
    pub fn to_json(&self) -> String {
        // Only strings, integers and options: serialising cannot fail, but never panic anyway.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// One block per finding (`file:line: severity[check]: message`, then where and the fix), and
    /// a summary line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let place = match f.line {
                Some(line) => format!("{}:{line}", f.file),
                None => f.file.clone(),
            };
            let _ = writeln!(out, "{place}: {}[{}]: {}", f.severity.as_str(), f.check.as_str(), f.message);
            let mut at = Vec::new();
            if let Some(object) = &f.object {
                at.push(object.clone());
            }
            if let Some(document) = f.document {
                at.push(format!("document {document}"));
            }
            if !f.path.is_empty() {
                at.push(f.path.clone());
            }
            if !at.is_empty() {
                let _ = writeln!(out, "  at: {}", at.join(", "));
            }
            if !f.fix.is_empty() {
                let _ = writeln!(out, "  fix: {}", f.fix);
            }
        }
        let _ = writeln!(
            out,
            "{} {}, {} {}: {} {}, {} {}",
            self.files,
            plural(self.files, "file", "files"),
            self.documents,
            plural(self.documents, "document", "documents"),
            self.errors,
            plural(self.errors, "error", "errors"),
            self.warnings,
            plural(self.warnings, "warning", "warnings"),
        );
        out
    }
}

fn plural<'s>(n: usize, one: &'s str, many: &'s str) -> &'s str {
    if n == 1 { one } else { many }
}
