//! Running the command-line tools the manifest tests check with (kubectl, yamllint, gate-agent).

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `cmd` to completion, feeding it `stdin`; when it cannot start, the error names the
/// program and `how_to_install` it.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, how_to_install: &str) -> Result<Output, String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}; {how_to_install}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().ok_or_else(|| format!("{program}: no stdin pipe"))?;
        pipe.write_all(input).map_err(|e| format!("writing to {program}: {e}"))?;
    }
    child.wait_with_output().map_err(|e| format!("waiting for {program}: {e}"))
}

/// What the command printed, stdout then stderr.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
