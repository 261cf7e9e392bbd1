//! The line of a field in a document's text.
//!
//! serde_yaml_ng gives values, not positions, so the line is found by walking the block-style YAML
//! that a path names (`spec.http[1].route[0].weight`): each key is looked for at the column of its
//! parent mapping, each index among the items of its parent sequence. Anything else (flow style
//! `{a: 1}`, keys with dots, complex keys) falls back to the nearest ancestor that was found, so a
//! finding always points somewhere sensible and never somewhere wrong by more than a few lines.

/// One step of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg<'p> {
    Key(&'p str),
    Index(usize),
}

/// Splits `a.b[1].c` into keys and indexes. `""` and `"."` are the document itself.
fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(at) => part.split_at(at),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else { break };
            let (number, tail) = inner.split_at(end);
            match number.parse() {
                Ok(i) => out.push(Seg::Index(i)),
                Err(_) => return out,
            }
            rest = tail.strip_prefix(']').unwrap_or(tail);
        }
    }
    out
}

/// What a line holds, for the walk: its indentation, the columns of its `- ` item markers, and
/// the key it starts (after the markers) with that key's column.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    indent: usize,
    dashes: Vec<usize>,
    key: Option<(usize, String)>,
    /// Something follows the markers (a key or a scalar).
    content: bool,
}

/// `None` for lines without content: blank, comment-only, or a document marker.
fn scan(line: &str) -> Option<Line> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let trimmed = line.trim_start_matches(' ');
    if trimmed.trim().is_empty() || trimmed.starts_with('#') || is_marker(line) {
        return None;
    }
    let indent = line.len() - trimmed.len();
    let mut col = indent;
    let mut rest = trimmed;
    let mut dashes = Vec::new();
    while rest == "-" || rest.starts_with("- ") || rest.starts_with("-\t") {
        dashes.push(col);
        let after = rest.get(1..).unwrap_or("");
        let body = after.trim_start_matches([' ', '\t']);
        col += 1 + after.len() - body.len();
        rest = body;
    }
    let content = !rest.is_empty() && !rest.starts_with('#');
    let key = key_of(rest).map(|k| (col, k));
    Some(Line { indent, dashes, key, content })
}

fn is_marker(line: &str) -> bool {
    ["---", "..."]
        .iter()
        .any(|m| line.strip_prefix(m).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r'])))
}

/// The mapping key a line's content starts with (`route:`, `"x-canary":`), if any.
fn key_of(rest: &str) -> Option<String> {
    let (key, after) = if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted.find('"')?;
        let (key, tail) = quoted.split_at(end);
        (key, tail.get(1..)?)
    } else if let Some(quoted) = rest.strip_prefix('\'') {
        let end = quoted.find('\'')?;
        let (key, tail) = quoted.split_at(end);
        (key, tail.get(1..)?)
    } else {
        if rest.starts_with(['{', '[', '#', '&', '*', '!', '|', '>', '%', '@', '`', '?']) {
            return None;
        }
        let colon = rest.char_indices().find_map(|(i, c)| {
            let next = rest.get(i + 1..).unwrap_or("");
            (c == ':' && (next.is_empty() || next.starts_with([' ', '\t']))).then_some(i)
        })?;
        let (key, tail) = rest.split_at(colon);
        (key.trim_end(), tail)
    };
    let after = after.trim_start_matches([' ', '\t']);
    let value = after.strip_prefix(':')?;
    (value.is_empty() || value.starts_with([' ', '\t'])).then(|| key.to_owned())
}

/// A node found so far: the document, a key (its line and column), or a sequence item (its
/// line and the column of its `-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Root,
    Key { line: usize, col: usize },
    Item { line: usize, col: usize },
}

/// The 1-based line within `text` of the node at `path`, or of its nearest ancestor found in
/// block style. `None` only for a document without content.
pub(crate) fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<Option<Line>> = text.lines().map(scan).collect();
    let (first, _) = next_content(&lines, 0)?;
    let mut at = At::Root;
    let mut found = first;
    for seg in segments(path) {
        let next = match seg {
            Seg::Key(key) => find_key(&lines, at, key),
            Seg::Index(i) => find_item(&lines, at, i),
        };
        match next {
            Some(n @ (At::Key { line, .. } | At::Item { line, .. })) => {
                found = line;
                at = n;
            }
            Some(At::Root) | None => break,
        }
    }
    Some(found + 1)
}

fn next_content(lines: &[Option<Line>], from: usize) -> Option<(usize, &Line)> {
    lines.iter().enumerate().skip(from).find_map(|(i, l)| l.as_ref().map(|l| (i, l)))
}

/// Looks for `key` in the mapping under `at`.
fn find_key(lines: &[Option<Line>], at: At, key: &str) -> Option<At> {
    let (start, col) = match at {
        At::Root => {
            let (i, l) = next_content(lines, 0)?;
            (i, l.key.as_ref().filter(|_| l.dashes.is_empty())?.0)
        }
        At::Key { line, col } => {
            let (i, l) = next_content(lines, line + 1)?;
            if l.indent <= col || !l.dashes.is_empty() {
                return None;
            }
            (i, l.indent)
        }
        At::Item { line, col } => {
            let l = lines.get(line)?.as_ref()?;
            if l.dashes.last() != Some(&col) {
                return None; // `- - a`: an item of a nested sequence
            }
            match &l.key {
                Some((k_col, k)) if k == key => return Some(At::Key { line, col: *k_col }),
                Some((k_col, _)) => (line + 1, *k_col),
                None if l.content => return None, // a scalar item
                None => {
                    let (i, next) = next_content(lines, line + 1)?;
                    if next.indent <= col || !next.dashes.is_empty() {
                        return None;
                    }
                    (i, next.indent)
                }
            }
        }
    };
    for (i, l) in lines.iter().enumerate().skip(start) {
        let Some(l) = l else { continue };
        if l.indent < col {
            break;
        }
        if l.indent == col
            && l.dashes.is_empty()
            && let Some((_, k)) = &l.key
            && k == key
        {
            return Some(At::Key { line: i, col });
        }
    }
    None
}

/// Looks for item `index` of the block sequence under the key `at`.
fn find_item(lines: &[Option<Line>], at: At, index: usize) -> Option<At> {
    let At::Key { line, col } = at else { return None };
    let (start, first) = next_content(lines, line + 1)?;
    let seq_col = first.indent;
    // Kubernetes writes both styles: items indented under their key, or flush with it.
    if seq_col < col || first.dashes.first() != Some(&seq_col) {
        return None;
    }
    let mut seen = 0;
    for (i, l) in lines.iter().enumerate().skip(start) {
        let Some(l) = l else { continue };
        if l.indent < seq_col {
            break;
        }
        if l.indent == seq_col {
            if l.dashes.first() != Some(&seq_col) {
                break; // a sibling key flush with the sequence ends it
            }
            if seen == index {
                return Some(At::Item { line: i, col: seq_col });
            }
            seen += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "\
# the explainer's manifest
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: payment-svc
spec:
  hosts:
  - payment-svc
  http:
  - match:
    - headers:
        x-canary:
          exact: \"true\"
    route:
    - destination:
        host: payment-svc
        subset: v2
  - route:
    - destination:
        host: payment-svc
        subset: v1
      weight: 90
    - destination: { host: payment-svc, subset: v2 }
      weight: 10
";

    #[test]
    fn paths_split_into_keys_and_indexes() {
        assert_eq!(segments("spec.http[1].route[0].weight").len(), 6);
        assert_eq!(segments("a[2][3]"), vec![Seg::Key("a"), Seg::Index(2), Seg::Index(3)]);
        assert!(segments(".").is_empty() && segments("").is_empty());
    }

    #[test]
    fn block_paths_find_their_line() {
        assert_eq!(line_of(VS, ""), Some(2), "the document is its first content line");
        assert_eq!(line_of(VS, "kind"), Some(3));
        assert_eq!(line_of(VS, "spec.http[0].match[0].headers"), Some(11));
        assert_eq!(line_of(VS, "spec.http[0].route[0].destination.subset"), Some(17));
        assert_eq!(line_of(VS, "spec.http[1].route"), Some(18));
        assert_eq!(line_of(VS, "spec.http[1].route[0].weight"), Some(22));
        assert_eq!(line_of(VS, "spec.http[1].route[1].weight"), Some(24));
    }

    #[test]
    fn flow_style_and_missing_fields_fall_back_to_an_ancestor() {
        assert_eq!(line_of(VS, "spec.http[1].route[1].destination.subset"), Some(23));
        assert_eq!(line_of(VS, "spec.http[7].route"), Some(9), "the sequence's key");
        assert_eq!(line_of(VS, "spec.tcp"), Some(6));
        assert_eq!(line_of("# nothing\n", "spec"), None);
    }

    #[test]
    fn indented_sequences_and_quoted_keys() {
        let text =
            "spec:\n  http:\n    - route:\n        - destination:\n            host: a\n          \"weight\": 5\n";
        assert_eq!(line_of(text, "spec.http[0].route[0].weight"), Some(6));
        assert_eq!(line_of(text, "spec.http[0].route[0].destination.host"), Some(5));
    }

    #[test]
    fn odd_lines_never_confuse_the_walk() {
        for line in ["-", "- - a: 1", "--- !tag", "a:b", "'unterminated: x", "- 'k': v", "\u{feff}x: 1", "\t- y"] {
            let _ = scan(line);
            let _ = line_of(line, "a[0].b");
        }
        assert_eq!(key_of("'k': v"), Some("k".into()));
        assert_eq!(key_of("http://x"), None);
        assert!(is_marker("--- # doc") && !is_marker("---x"));
    }
}
