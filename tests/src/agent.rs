//! The real gate-agent binary, started against a harness Envoy: its targets are that Envoy's
//! snapshot listener and its router writes that Envoy's watched file. Stopped by its PID on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::envoy::Envoy;
use crate::paths;

/// A running gate-agent.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    pub api: SocketAddr,
    http: reqwest::Client,
}

impl Agent {
    /// Starts gate-agent with rollout spec `spec_yaml` against `envoy`, ticking every `tick`.
    pub async fn start(envoy: &Envoy, spec_yaml: &str, tick: &str) -> Result<Agent, String> {
        Agent::start_with(envoy, spec_yaml, tick, &[]).await
    }

    /// As [`Agent::start`], with extra command-line arguments (more `--target`s, `--listen`, ...).
    pub async fn start_with(envoy: &Envoy, spec_yaml: &str, tick: &str, extra: &[&str]) -> Result<Agent, String> {
        Agent::start_as(envoy, spec_yaml, tick, extra, None).await
    }

    /// As [`Agent::start_with`], run as `user` (uid, gid) when set, so that file permissions apply
    /// to it even when the tests run as root. The agent's own directory (spec, address file) is
    /// handed to that user; the watched directory and the path to the binary are the caller's
    /// business. Setting another user needs root.
    pub async fn start_as(
        envoy: &Envoy,
        spec_yaml: &str,
        tick: &str,
        extra: &[&str],
        user: Option<(u32, u32)>,
    ) -> Result<Agent, String> {
        let bin = paths::gate_agent_bin()?;
        let dir = tempfile::Builder::new().prefix("canary-gate-agent").tempdir().map_err(|e| e.to_string())?;
        let spec = dir.path().join("rollout.yaml");
        std::fs::write(&spec, spec_yaml).map_err(|e| e.to_string())?;
        let address_file = dir.path().join("api-address");
        let log = std::fs::File::create(dir.path().join("agent.log")).map_err(|e| e.to_string())?;
        let mut command = Command::new(&bin);
        if let Some((uid, gid)) = user {
            for path in [dir.path(), spec.as_path()] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {} to {uid}:{gid}: {e}", path.display()))?;
            }
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, gid);
        }
        let child = command
            .arg("run")
            .arg("--spec")
            .arg(&spec)
            .arg("--target")
            .arg(envoy.snapshot.to_string())
            .arg("--config-file")
            .arg(envoy.ecds_dir().join("canary-gate.json"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--listen-address-file")
            .arg(&address_file)
            .arg("--tick")
            .arg(tick)
            .args(extra)
            .env("GATE_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
        let mut agent = Agent { child, dir, api: SocketAddr::from(([127, 0, 0, 1], 0)), http };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Err(format!("gate-agent exited with {status}:\n{}", agent.log_tail(30)));
            }
            if let Some(addr) = std::fs::read_to_string(&address_file).ok().and_then(|s| s.trim().parse().ok()) {
                agent.api = addr;
                return Ok(agent);
            }
            if Instant::now() >= deadline {
                return Err(format!("gate-agent did not start listening:\n{}", agent.log_tail(30)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /status` as JSON.
    pub async fn status(&self) -> Result<Value, String> {
        let r = self.http.get(format!("http://{}/status", self.api)).send().await.map_err(|e| e.to_string())?;
        r.json().await.map_err(|e| e.to_string())
    }

    /// `GET` any API path as text.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let r = self.http.get(format!("http://{}{path}", self.api)).send().await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.text().await.map_err(|e| e.to_string())?))
    }

    /// `POST` an operator action (`/pause`, ...): the status code and the JSON answer.
    pub async fn post(&self, path: &str) -> Result<(u16, Value), String> {
        let r = self.http.post(format!("http://{}{path}", self.api)).send().await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.map_err(|e| e.to_string())?))
    }

    /// Polls `/status` until `done` holds for it, or fails after `within` with the last status.
    pub async fn wait_for(&self, within: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Result<Value, String> {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status().await;
            if let Ok(s) = &status
                && done(s)
            {
                return status;
            }
            if Instant::now() >= deadline {
                return Err(format!("{what}: not within {within:?}; last status {status:?}\n{}", self.log_tail(30)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the agent's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::envoy::file_tail(&self.log_path(), lines)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Stops the agent abruptly (SIGKILL by PID), as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the agent to stop (SIGTERM) and waits up to `within`; returns its exit code.
    pub fn terminate(&mut self, within: Duration) -> Result<Option<i32>, String> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().map_err(|e| e.to_string())?;
        if !sent.success() {
            return Err(format!("kill -TERM {pid} failed"));
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status.code());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!("gate-agent ignored SIGTERM for {within:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}
