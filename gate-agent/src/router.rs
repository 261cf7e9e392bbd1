//! Acting on decisions: putting a canary weight into the proxies' filter configuration.
//!
//! The durable weights live in the filter's own configuration, not in the agent: locally, the
//! file Envoy watches (file-based extension config discovery). An agent that restarts reads the
//! weight back from there, so a rollout resumes where it was.

use std::io::Write;
use std::path::{Path, PathBuf};

use canary_core::config::{RouteConfig, parse_route};
use canary_core::{RolloutRecord, Weight, ecds};

/// Why a weight could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a canary-gate watched file: {problem}")]
    Malformed { path: PathBuf, problem: String },
    #[error("serialising the route configuration: {0}")]
    Serialise(#[from] serde_json::Error),
    /// A call to a remote store (the Kubernetes API) failed or timed out.
    #[error("{what}: {message}")]
    Remote { what: String, message: String },
    /// Every optimistic-concurrency attempt met a newer version; nothing was overwritten.
    #[error("{what}: still conflicting after {attempts} attempts (someone else keeps writing it)")]
    Conflict { what: String, attempts: u32 },
    /// This replica does not hold the leader lease, so it must not write.
    #[error("not the leader: only the replica holding the lease writes weights")]
    NotLeader,
}

impl RouterError {
    /// A short, fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RouterError::Io { .. } => "io",
            RouterError::Malformed { .. } => "malformed",
            RouterError::Serialise(_) => "serialise",
            RouterError::Remote { .. } => "remote",
            RouterError::Conflict { .. } => "conflict",
            RouterError::NotLeader => "not_leader",
        }
    }
}

/// Where the canary weight is applied. Implementations change only the weight, the rollout
/// record and the revision, and leave every other field of the filter's configuration as the
/// operator wrote it.
pub trait WeightRouter: Send + Sync {
    /// The route configuration currently in force (the durable state).
    fn current(&self) -> impl Future<Output = Result<RouteConfig, RouterError>> + Send;
    /// Applies `weight` with the rollout's `record` in one write, bumping the revision; returns the
    /// configuration written.
    fn apply(
        &self,
        weight: Weight,
        record: RolloutRecord,
    ) -> impl Future<Output = Result<RouteConfig, RouterError>> + Send;
}

/// The local router: rewrites the file Envoy watches, atomically (new file, fsync, rename).
#[derive(Debug, Clone)]
pub struct FileRouter {
    path: PathBuf,
}

impl FileRouter {
    /// A router for the watched file at `path` (its directory is the watched directory).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileRouter { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> RouterError {
        RouterError::Io { path: self.path.clone(), source }
    }

    fn malformed(&self, problem: impl Into<String>) -> RouterError {
        RouterError::Malformed { path: self.path.clone(), problem: problem.into() }
    }

    /// Reads the watched file: the route configuration and the wasm module path it names.
    pub fn read(&self) -> Result<(RouteConfig, String), RouterError> {
        let bytes = std::fs::read(&self.path).map_err(|e| self.io(e))?;
        let file: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| self.malformed(format!("not JSON: {e}")))?;
        let text =
            ecds::plugin_config_of(&file).ok_or_else(|| self.malformed("no canary-gate plugin configuration"))?;
        let wasm = ecds::wasm_path_of(&file).ok_or_else(|| self.malformed("no wasm module path"))?;
        let route = parse_route(text.as_bytes()).map_err(|e| self.malformed(e.to_string()))?;
        Ok((route, wasm.to_owned()))
    }

    /// Writes `route` with a fresh name in the same directory, flushes it to disk, then renames
    /// it over the watched file: Envoy sees either the old file or the new one, never a part.
    pub fn write(&self, route: &RouteConfig, wasm_path: &str) -> Result<(), RouterError> {
        let dir = directory_of(&self.path).ok_or_else(|| self.malformed("has no parent directory"))?;
        let name = self.path.file_name().and_then(|n| n.to_str()).unwrap_or("canary-gate.json");
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let body = serde_json::to_vec_pretty(&ecds::discovery_file(wasm_path, route)?)?;
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            // Make the rename itself durable before reporting success.
            std::fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(|e| self.io(e))
    }
}

/// The directory holding `path`; a bare file name (`canary-gate.json`) is in `.`.
fn directory_of(path: &Path) -> Option<&Path> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(Path::new(".")),
        other => other,
    }
}

impl WeightRouter for FileRouter {
    async fn current(&self) -> Result<RouteConfig, RouterError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read().map(|(r, _)| r))
            .await
            .map_err(|e| self.io(std::io::Error::other(e)))?
    }

    async fn apply(&self, weight: Weight, record: RolloutRecord) -> Result<RouteConfig, RouterError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let (current, wasm) = this.read()?;
            let next = RouteConfig {
                canary_weight: weight,
                revision: current.revision.saturating_add(1),
                rollout_state: Some(record),
                ..current
            };
            this.write(&next, &wasm)?;
            Ok(next)
        })
        .await
        .map_err(|e| self.io(std::io::Error::other(e)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(dir: &Path) -> FileRouter {
        let route = parse_route(
            br#"{"version":1,"rollout":"demo","stable":"v1","canary":"v2","canary_weight":10,"sticky":{"cookie":"sid"},"revision":4}"#,
        )
        .unwrap();
        let router = FileRouter::new(dir.join("canary-gate.json"));
        router.write(&route, "/w/canary_filter.wasm").unwrap();
        router
    }

    #[tokio::test]
    async fn apply_changes_only_weight_record_and_revision() {
        let dir = tempfile::tempdir().unwrap();
        let router = seed(dir.path());
        let before = router.current().await.unwrap();
        let record = RolloutRecord::new(canary_core::RolloutPhase::Progressing, 1, "step 2 of 3", 9);
        let after = router.apply(Weight::from_percent(25.0).unwrap(), record.clone()).await.unwrap();
        assert_eq!(after.canary_weight.basis_points(), 2500);
        assert_eq!(after.revision, 5);
        assert_eq!(after.rollout_state, Some(record));
        assert_eq!(
            RouteConfig { canary_weight: before.canary_weight, revision: 4, rollout_state: None, ..after.clone() },
            before
        );
        assert_eq!(router.current().await.unwrap(), after, "durable: read back from the file");
        assert_eq!(router.read().unwrap().1, "/w/canary_filter.wasm");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("canary-gate.json")], "no temp file left behind");
    }

    #[test]
    fn a_bare_file_name_is_in_the_current_directory() {
        assert_eq!(directory_of(Path::new("canary-gate.json")), Some(Path::new(".")));
        assert_eq!(directory_of(Path::new("ecds/canary-gate.json")), Some(Path::new("ecds")));
        assert_eq!(directory_of(Path::new("/canary-gate.json")), Some(Path::new("/")));
        assert_eq!(directory_of(Path::new("/")), None);
    }

    #[tokio::test]
    async fn a_malformed_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("canary-gate.json");
        std::fs::write(&path, "{\"resources\": []}").unwrap();
        let err = FileRouter::new(&path).current().await.unwrap_err();
        assert!(err.to_string().contains("canary-gate.json"), "{err}");
        assert_eq!(err.kind(), "malformed");
    }
}
