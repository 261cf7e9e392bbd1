//! The controller's `/metrics`: every gate's agent metrics (`crate::api::render_metrics`), each
//! sample labelled with the gate's `namespace` and `canarygate`, each family's HELP and TYPE
//! written once (Prometheus refuses a family that appears twice). Pure text work.

use std::fmt::Write;

/// Merges per-gate metric texts, `((namespace, name), text)`, into one exposition.
pub fn merge(gates: &[((String, String), String)]) -> String {
    // (family name, its HELP/TYPE lines, its samples), in first-seen order.
    let mut families: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for ((ns, name), text) in gates {
        let labels = format!("namespace=\"{}\",canarygate=\"{}\"", escape(ns), escape(name));
        let mut current: Option<usize> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let family = rest.split_whitespace().nth(1).unwrap_or_default().to_owned();
                let at = match families.iter().position(|(f, _, _)| *f == family) {
                    Some(at) => at,
                    None => {
                        families.push((family, Vec::new(), Vec::new()));
                        families.len().saturating_sub(1)
                    }
                };
                if let Some((_, head, _)) = families.get_mut(at)
                    && !head.iter().any(|h| h == line)
                {
                    head.push(line.to_owned());
                }
                current = Some(at);
            } else if !line.trim().is_empty() {
                let sample = match line.split_once('{') {
                    Some((metric, rest)) => format!("{metric}{{{labels},{rest}"),
                    None => match line.split_once(' ') {
                        Some((metric, value)) => format!("{metric}{{{labels}}} {value}"),
                        None => continue,
                    },
                };
                if let Some((_, _, samples)) = current.and_then(|at| families.get_mut(at)) {
                    samples.push(sample);
                }
            }
        }
    }
    let mut out = String::new();
    for (_, head, samples) in families {
        for line in head.iter().chain(&samples) {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{StatusView, render_metrics};

    #[test]
    fn two_gates_share_each_family_once_and_their_samples_carry_namespace_and_canarygate() {
        let view = |rollout: &str| StatusView {
            rollout: rollout.into(),
            phase: "progressing".into(),
            ..StatusView::default()
        };
        let text = merge(&[
            (("shop".into(), "alpha".into()), render_metrics(&view("alpha"))),
            (("other".into(), "alpha".into()), render_metrics(&view("alpha"))),
        ]);
        let helps =
            text.lines().filter(|l| l.starts_with("# HELP canary_gate_agent_desired_canary_weight_ratio ")).count();
        assert_eq!(helps, 1, "{text}");
        assert!(
            text.contains(
                "canary_gate_agent_desired_canary_weight_ratio{namespace=\"shop\",canarygate=\"alpha\",rollout=\"alpha\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "canary_gate_agent_desired_canary_weight_ratio{namespace=\"other\",canarygate=\"alpha\",rollout=\"alpha\"} 0"
            ),
            "{text}"
        );
        // Every sample line is labelled.
        assert!(text.lines().filter(|l| !l.starts_with('#')).all(|l| l.contains("canarygate=\"alpha\"")), "{text}");
        if std::process::Command::new("promtool").arg("--version").output().is_ok() {
            let mut check = std::process::Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = check.wait_with_output().unwrap();
            let problems = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            assert!(!problems.contains("error") && !problems.contains("duplicate"), "{problems}");
        }
    }
}
