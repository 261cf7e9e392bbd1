//! Every relative link in README.md and docs/*.md resolves: the file exists, and a `#fragment`
//! names a heading of the target, slugged as GitHub does. Links in code blocks and code spans are
//! not links; `http(s):` and `mailto:` links are not checked (no network here).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use canary_e2e::paths;

/// The lines outside fenced code blocks, numbered from 1.
fn prose(markdown: &str) -> Vec<(usize, String)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m => fence = None,
            (None, None) => lines.push((i + 1, line.to_owned())),
            _ => {}
        }
    }
    lines
}

fn without_code_spans(line: &str) -> String {
    line.split('`').enumerate().filter(|(i, _)| i % 2 == 0).map(|(_, part)| part).collect::<Vec<_>>().join("")
}

/// Link targets on a line: inline `[text](target)` / `![alt](target)` and reference definitions
/// `[label]: target`.
fn targets(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        // `[t](target "title")`: the target is the first word.
        if let Some(target) = after[..end].split_whitespace().next() {
            found.push(target.trim_matches(|c| c == '<' || c == '>').to_owned());
        }
        rest = &after[end..];
    }
    let trimmed = line.trim_start();
    if trimmed.starts_with('[')
        && let Some((label, target)) = trimmed.split_once("]:")
        && !label.contains("](")
        && let Some(target) = target.split_whitespace().next()
    {
        found.push(target.to_owned());
    }
    found
}

/// GitHub's heading anchor: the heading's text lower-cased, every character but letters, digits,
/// `-` and `_` dropped, spaces turned into `-`; a repeated anchor gets `-1`, `-2`, ...
fn slug(heading: &str) -> String {
    // A link in a heading shows its text only.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        match rest[open..].find("](").and_then(|m| rest[open + m..].find(')').map(|c| (open + m, open + m + c))) {
            Some((mid, close)) => {
                text.push_str(&rest[..open]);
                text.push_str(&rest[open + 1..mid]);
                rest = &rest[close + 1..];
            }
            None => break,
        }
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a markdown file's headings.
fn anchors(markdown: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in prose(markdown) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let text = line[hashes..].trim().trim_end_matches('#').trim();
        let base = slug(text);
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// Every broken relative link in `files`, as `file:line: target: why`.
fn broken_links(files: &[PathBuf]) -> Vec<String> {
    let mut broken = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let dir = file.parent().unwrap();
        for (n, line) in prose(&text) {
            for target in targets(&without_code_spans(&line)) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (path, fragment) = match target.split_once('#') {
                    Some((p, f)) => (p, Some(f)),
                    None => (target.as_str(), None),
                };
                let resolved = if path.is_empty() { file.clone() } else { dir.join(path) };
                let at = format!("{}:{n}: {target}", file.display());
                if !resolved.exists() {
                    broken.push(format!("{at}: {} does not exist", resolved.display()));
                    continue;
                }
                let Some(fragment) = fragment else { continue };
                if resolved.extension().is_none_or(|e| e != "md") {
                    broken.push(format!("{at}: an anchor into a file that is not markdown"));
                    continue;
                }
                let known = anchors(&std::fs::read_to_string(&resolved).unwrap());
                if !known.iter().any(|a| a == fragment) {
                    broken.push(format!(
                        "{at}: no heading #{fragment} in {} (it has: {})",
                        resolved.display(),
                        known.join(", ")
                    ));
                }
            }
        }
    }
    broken
}

fn docs(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let files = docs(&paths::workspace_root());
    assert!(files.len() > 1, "docs/ has pages: {files:?}");
    let broken = broken_links(&files);
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn a_missing_file_or_heading_is_reported_and_code_is_not_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page.md");
    std::fs::write(
        dir.path().join("other.md"),
        "# Other page\n\n## In a mesh: `--router wasmplugin`\n## Soak\n## Soak\n",
    )
    .unwrap();
    std::fs::write(
        &page,
        "# Page\n\n[ok](other.md#in-a-mesh---router-wasmplugin) [second](other.md#soak-1) [self](#page)\n\
         [gone](missing.md) [no heading](other.md#nowhere) `[code](nowhere.md)`\n\
         ```\n[in a block](nowhere.md)\n```\n[web](https://example.com/x.md)\n[ref]: other.md#soak\n[bad ref]: other.md#nope\n",
    )
    .unwrap();
    let broken = broken_links(&[page]);
    assert_eq!(broken.len(), 3, "{broken:#?}");
    assert!(broken[0].contains("missing.md") && broken[0].contains("does not exist"), "{}", broken[0]);
    assert!(broken[1].contains("#nowhere"), "{}", broken[1]);
    assert!(broken[2].contains("#nope"), "{}", broken[2]);
}

#[test]
fn anchors_are_slugged_as_github_does() {
    assert_eq!(slug("The tests' Kubernetes control plane"), "the-tests-kubernetes-control-plane");
    assert_eq!(slug("Flagger, Argo Rollouts, Prometheus, Grafana"), "flagger-argo-rollouts-prometheus-grafana");
    assert_eq!(slug("`make demo`"), "make-demo");
    assert_eq!(slug("See [the API](agent.md#api)"), "see-the-api");
}
