//! `gate-agent validate`'s input: YAML manifests (`validate::validate`). The input is the text of
//! the manifest file; a line `#%spec` starts the `--spec` file and a line `#%live` a `--live`
//! file (both are YAML comments, so a seed stays a valid manifest). Whatever the text, the report
//! is consistent: its counts match its findings, the exit code follows the errors, lines are in
//! the file, and both renderings work.
#![no_main]

use canary_manifests::{EXIT_CLEAN, EXIT_ERRORS, Input, Inputs, Severity, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The command reads files with `read_to_string`: text that is not UTF-8 is refused first.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut inputs = Inputs::default();
    let mut name = "manifests.yaml".to_owned();
    let mut current = String::new();
    let mut lives = 0;
    let finish = |name: &str, text: String, inputs: &mut Inputs| {
        let input = Input { name: name.to_owned(), text };
        match name {
            "spec.yaml" => inputs.spec = Some(input),
            n if n.starts_with("live") => inputs.live.push(input),
            _ => inputs.files.push(input),
        }
    };
    for line in text.split_inclusive('\n') {
        let next = match line.trim_end() {
            "#%spec" if inputs.spec.is_none() && name != "spec.yaml" => Some("spec.yaml".to_owned()),
            "#%live" => {
                lives += 1;
                Some(format!("live-{lives}.yaml"))
            }
            _ => None,
        };
        match next {
            Some(next) => finish(&std::mem::replace(&mut name, next), std::mem::take(&mut current), &mut inputs),
            None => current.push_str(line),
        }
    }
    finish(&name, current, &mut inputs);

    let report = validate(&inputs);
    let count = |s: Severity| report.findings.iter().filter(|f| f.severity == s).count();
    assert_eq!(report.errors, count(Severity::Error));
    assert_eq!(report.warnings, count(Severity::Warning));
    assert_eq!(report.exit_code(), if report.errors == 0 { EXIT_CLEAN } else { EXIT_ERRORS });
    let all: Vec<&Input> = inputs.files.iter().chain(&inputs.spec).chain(&inputs.live).collect();
    assert_eq!(report.files, all.len());
    for f in &report.findings {
        let Some(file) = all.iter().find(|i| i.name == f.file) else {
            panic!("finding about a file that was not read: {f:?}");
        };
        // Lines as YAML counts them (CR, LF and CRLF all end one). A YAML error at the end of the
        // input is at the line after the last, as the parser's message says (`manifest::parse_yaml`
        // pins this in its tests).
        if let Some(line) = f.line {
            let lines = file.text.replace("\r\n", "\n").matches(['\n', '\r']).count() + 1;
            assert!(line >= 1 && line <= lines + 1, "line {line} is not in {}: {f:?}", f.file);
        }
        assert!(f.document.is_none_or(|d| d >= 1 && d <= report.documents), "document out of range: {f:?}");
    }
    match serde_json::from_str::<serde_json::Value>(&report.to_json()) {
        Ok(v) => assert_eq!(v["findings"].as_array().map(Vec::len), Some(report.findings.len())),
        Err(e) => panic!("the JSON report is not JSON: {e}"),
    }
    assert!(report.to_text().lines().count() > report.findings.len());
});
