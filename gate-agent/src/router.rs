//! Acting on decisions: putting a canary weight into the proxies' filter configuration.
//!
//! The durable weights live in the filter's own configuration, not in the agent: locally, the
//! file Envoy watches (file-based extension config discovery). An agent that restarts reads the
//! weight back from there, so a rollout resumes where it was.
//!
//! [`FileRouter`] writes each new file in a staging directory, [`STAGING_DIR`], *inside* the
//! watched directory, and renames it over the watched file. Envoy's directory watch is not
//! recursive and reacts only to renames into the directory itself, so it never sees a file being
//! written; the watched directory's own entries are only ever complete files, even when the agent
//! is killed mid-write. Being inside the watched directory, the staging directory is on the same
//! filesystem and mount, so the rename is atomic (a sibling directory would not be, under a
//! container bind mount of just the watched directory). A killed agent can leave a partial file in
//! staging; [`FileRouter::remove_stale_temps`] clears them at start-up.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use canary_core::config::{RouteConfig, parse_route};
use canary_core::guard::Guard;
use canary_core::{RolloutRecord, Weight, ecds};

/// Why a weight could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a canary-gate watched file: {problem}")]
    Malformed { path: PathBuf, problem: String },
    /// A remote store (the WasmPlugin) holds a configuration the filter would reject.
    #[error("{what}: {problem}")]
    Invalid { what: String, problem: String },
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
    /// A newer leader's term wrote last: this replica's lead is over, whatever it believes.
    #[error("{what} was last written in {theirs}, newer than this replica's {ours}: not overwriting it")]
    Fenced { what: String, theirs: String, ours: String },
}

impl RouterError {
    /// A short, fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RouterError::Io { .. } => "io",
            RouterError::Malformed { .. } | RouterError::Invalid { .. } => "malformed",
            RouterError::Serialise(_) => "serialise",
            RouterError::Remote { .. } => "remote",
            RouterError::Conflict { .. } => "conflict",
            RouterError::NotLeader => "not_leader",
            RouterError::Fenced { .. } => "fenced",
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

/// The subdirectory of the watched directory where [`FileRouter`] writes a new file before
/// renaming it into place.
pub const STAGING_DIR: &str = ".gate-agent-staging";

/// Numbers the temporary files of this process: a write abandoned on a timeout may still be
/// running when the next one starts, and the two must not share a file.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// The local router: rewrites the file Envoy watches, atomically (new file in [`STAGING_DIR`],
/// fsync, rename).
#[derive(Debug, Clone)]
pub struct FileRouter {
    path: PathBuf,
    /// The typo guard written with every weight (`canary_core::guard`), from the rollout spec.
    guard: Option<Guard>,
}

impl FileRouter {
    /// A router for the watched file at `path` (its directory is the watched directory).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileRouter { path: path.into(), guard: None }
    }

    /// Writes `guard` into the configuration with every weight, so the proxies refuse a
    /// hand-typed weight outside the spec's bounds.
    pub fn with_guard(self, guard: Guard) -> Self {
        FileRouter { guard: Some(guard), ..self }
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

    /// The watched directory, and the name of the watched file in it.
    fn place(&self) -> Result<(&Path, &str), RouterError> {
        let dir = directory_of(&self.path).ok_or_else(|| self.malformed("has no parent directory"))?;
        let name = self.path.file_name().and_then(|n| n.to_str()).ok_or_else(|| self.malformed("has no file name"))?;
        Ok((dir, name))
    }

    /// Where new files are written before the rename: [`STAGING_DIR`] in the watched directory.
    pub fn staging_dir(&self) -> Result<PathBuf, RouterError> {
        Ok(self.place()?.0.join(STAGING_DIR))
    }

    /// Writes `route` to a fresh file in the staging directory, flushes it to disk, then renames it
    /// over the watched file: Envoy sees either the old file or the new one, never a part, and the
    /// watched directory never holds a file that is still being written.
    pub fn write(&self, route: &RouteConfig, wasm_path: &str) -> Result<(), RouterError> {
        let (dir, name) = self.place()?;
        let staging = dir.join(STAGING_DIR);
        let seq = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        let tmp = staging.join(format!("{name}.{}.{seq}.tmp", std::process::id()));
        let body = serde_json::to_vec_pretty(&ecds::discovery_file(wasm_path, route)?)?;
        std::fs::create_dir_all(&staging).map_err(|source| RouterError::Io { path: staging.clone(), source })?;
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

    /// Removes the temporary files a killed agent left behind: its partial files in the staging
    /// directory, and those that agents before the staging directory left in the watched directory
    /// itself (`.canary-gate.json.<pid>.tmp`). Returns what was removed. Run it at start-up,
    /// before this process writes: it removes any writer's temporary files.
    pub fn remove_stale_temps(&self) -> Result<Vec<PathBuf>, RouterError> {
        let (dir, name) = self.place()?;
        let staged = (format!("{name}."), ".tmp");
        let legacy = (format!(".{name}."), ".tmp");
        let mut removed = Vec::new();
        for (folder, (prefix, suffix)) in [(dir.join(STAGING_DIR), staged), (dir.to_path_buf(), legacy)] {
            let entries = match std::fs::read_dir(&folder) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(RouterError::Io { path: folder, source }),
            };
            for entry in entries {
                let entry = entry.map_err(|source| RouterError::Io { path: folder.clone(), source })?;
                let file_name = entry.file_name();
                let Some(n) = file_name.to_str() else { continue };
                let temp = n.len() > prefix.len() + suffix.len() && n.starts_with(&prefix) && n.ends_with(suffix);
                if temp && entry.file_type().is_ok_and(|t| t.is_file()) {
                    let path = entry.path();
                    std::fs::remove_file(&path).map_err(|source| RouterError::Io { path: path.clone(), source })?;
                    removed.push(path);
                }
            }
        }
        Ok(removed)
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
                guard: this.guard.or(current.guard),
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
        assert_eq!(entries(dir.path()), [STAGING_DIR, "canary-gate.json"], "nothing else in the watched directory");
        assert!(entries(&dir.path().join(STAGING_DIR)).is_empty(), "no temp file left behind");
    }

    /// The names in `dir`, sorted.
    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn while_writers_race_the_watched_directory_holds_only_the_complete_file() {
        let dir = tempfile::tempdir().unwrap();
        let router = seed(dir.path());
        let (current, wasm) = router.read().unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let writers: Vec<_> = (0..2u64)
                .map(|w| {
                    let (router, current, wasm) = (router.clone(), current.clone(), wasm.clone());
                    scope.spawn(move || {
                        for i in 0..200 {
                            let next = RouteConfig { revision: 10 + w * 1000 + i, ..current.clone() };
                            router.write(&next, &wasm).unwrap();
                        }
                    })
                })
                .collect();
            let watcher = scope.spawn(|| {
                let mut looks = 0u32;
                while !done.load(Ordering::Relaxed) || looks == 0 {
                    for name in entries(dir.path()) {
                        assert!(name == "canary-gate.json" || name == STAGING_DIR, "{name} in the watched directory");
                    }
                    let (route, _) = router.read().unwrap();
                    assert!(route.revision == 4 || route.revision >= 10, "{route:?}");
                    looks += 1;
                }
                looks
            });
            for w in writers {
                w.join().unwrap();
            }
            done.store(true, Ordering::Relaxed);
            assert!(watcher.join().unwrap() > 0);
        });
        assert!(entries(&dir.path().join(STAGING_DIR)).is_empty(), "every temp file was renamed");
    }

    #[test]
    fn a_failed_rename_leaves_the_watched_file_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory where the watched file should be: the rename over it fails.
        let path = dir.path().join("canary-gate.json");
        std::fs::create_dir_all(path.join("in-the-way")).unwrap();
        let route =
            parse_route(br#"{"version":1,"rollout":"demo","stable":"v1","canary":"v2","canary_weight":10}"#).unwrap();
        let err = FileRouter::new(&path).write(&route, "/w/canary_filter.wasm").unwrap_err();
        assert_eq!(err.kind(), "io");
        assert!(err.to_string().contains("canary-gate.json"), "{err}");
        assert!(entries(&dir.path().join(STAGING_DIR)).is_empty(), "the temp file was removed");
        assert_eq!(entries(&path), ["in-the-way"]);
    }

    #[test]
    fn stale_temp_files_of_a_killed_agent_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let router = seed(dir.path());
        let staging = dir.path().join(STAGING_DIR);
        std::fs::write(staging.join("canary-gate.json.4242.7.tmp"), "{\"resources\": [").unwrap();
        // Left in the watched directory itself by an agent from before the staging directory.
        std::fs::write(dir.path().join(".canary-gate.json.4242.tmp"), "{").unwrap();
        // Not a gate-agent temp file: an operator's own, and other files.
        for keep in [".canary-gate.json.tmp", "notes.txt"] {
            std::fs::write(dir.path().join(keep), "x").unwrap();
        }
        std::fs::write(staging.join("other.json.1.2.tmp"), "x").unwrap();
        let mut removed = router.remove_stale_temps().unwrap();
        removed.sort();
        assert_eq!(
            removed,
            [dir.path().join(".canary-gate.json.4242.tmp"), staging.join("canary-gate.json.4242.7.tmp")]
        );
        assert_eq!(entries(dir.path()), [".canary-gate.json.tmp", STAGING_DIR, "canary-gate.json", "notes.txt"]);
        assert_eq!(entries(&staging), ["other.json.1.2.tmp"]);
        assert_eq!(router.read().unwrap().0.revision, 4, "the watched file is untouched");
        assert!(router.remove_stale_temps().unwrap().is_empty());
        // No staging directory yet (a fresh watched directory) is not an error.
        let fresh = tempfile::tempdir().unwrap();
        assert!(FileRouter::new(fresh.path().join("canary-gate.json")).remove_stale_temps().unwrap().is_empty());
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
