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
//!
//! Writes land in the order they were decided. A write the control loop gave up on (timed out)
//! goes on in its blocking task, so [`FileRouter`] runs one write at a time (a newer write starts
//! once the older one has ended, and reads what it left), and refuses the rename when the file on
//! disk already holds the revision being written or a newer one ([`RouterError::Superseded`]): an
//! older decision never replaces a newer one, such as a rollback, on disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    /// The file already holds this revision or a newer one: a later write landed first.
    #[error("{path} already holds revision {on_disk}, not older than this write's {revision}: not overwriting it")]
    Superseded { path: PathBuf, on_disk: u64, revision: u64 },
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
            RouterError::Superseded { .. } => "superseded",
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
    /// Held by each `apply` from before it reads the file until its blocking write has ended,
    /// even when the caller stopped waiting for it; clones share it.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// Tests only: each write waits here for a go-ahead just before the rename (a stalled disk).
    #[cfg(test)]
    stall: Option<Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>>,
}

impl FileRouter {
    /// A router for the watched file at `path` (its directory is the watched directory).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileRouter {
            path: path.into(),
            guard: None,
            writing: Arc::default(),
            #[cfg(test)]
            stall: None,
        }
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
    /// watched directory never holds a file that is still being written. Refused
    /// ([`RouterError::Superseded`]) when the watched file already holds `route.revision` or a newer
    /// one, checked just before the rename.
    pub fn write(&self, route: &RouteConfig, wasm_path: &str) -> Result<(), RouterError> {
        let (dir, name) = self.place()?;
        let staging = dir.join(STAGING_DIR);
        let seq = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        let tmp = staging.join(format!("{name}.{}.{seq}.tmp", std::process::id()));
        let body = serde_json::to_vec_pretty(&ecds::discovery_file(wasm_path, route)?)?;
        std::fs::create_dir_all(&staging).map_err(|source| RouterError::Io { path: staging.clone(), source })?;
        let result = (|| {
            let io = |e| self.io(e);
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&body).map_err(io)?;
            f.sync_all().map_err(io)?;
            self.wait_if_stalled();
            self.refuse_superseded(route.revision)?;
            std::fs::rename(&tmp, &self.path).map_err(io)?;
            // Make the rename itself durable before reporting success.
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Whether the watched file holds `revision` or a newer one. No file yet, or one that is not a
    /// canary-gate configuration, has no revision to protect. (Another process could still rename
    /// between this read and ours; within this process `apply` runs one write at a time.)
    fn refuse_superseded(&self, revision: u64) -> Result<(), RouterError> {
        match self.read() {
            Ok((on_disk, _)) if on_disk.revision >= revision => {
                Err(RouterError::Superseded { path: self.path.clone(), on_disk: on_disk.revision, revision })
            }
            Err(RouterError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Ok(_) | Err(RouterError::Malformed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    #[cfg(test)]
    fn wait_if_stalled(&self) {
        if let Some(stall) = &self.stall
            && let Ok(go) = stall.lock()
        {
            let _ = go.recv();
        }
    }

    #[cfg(not(test))]
    fn wait_if_stalled(&self) {}

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
        // The guard moves into the blocking task: a write the caller gave up on keeps it until the
        // write has ended, so the next one reads what it left and writes a higher revision.
        let one_at_a_time = Arc::clone(&self.writing).lock_owned().await;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = one_at_a_time;
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
    use canary_core::RolloutPhase;

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
                            match router.write(&next, &wasm) {
                                // The other writer's higher revision landed first.
                                Ok(()) | Err(RouterError::Superseded { .. }) => {}
                                Err(e) => panic!("{e}"),
                            }
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

    /// `router`, whose writes each wait for a go-ahead on the returned sender before the rename.
    fn stalled(router: FileRouter) -> (FileRouter, std::sync::mpsc::Sender<()>) {
        let (go, wait) = std::sync::mpsc::channel();
        (FileRouter { stall: Some(Arc::new(std::sync::Mutex::new(wait))), ..router }, go)
    }

    fn record(phase: canary_core::RolloutPhase, reason: &str) -> RolloutRecord {
        RolloutRecord::new(phase, 0, reason, 9)
    }

    const GIVE_UP: std::time::Duration = std::time::Duration::from_millis(50);

    #[tokio::test]
    async fn a_timed_out_step_lands_before_the_rollback_that_followed_it_never_after() {
        let dir = tempfile::tempdir().unwrap();
        let (router, go) = stalled(seed(dir.path()));
        // The step to 25% stalls on a slow disk, and the control loop stops waiting for it.
        let step = router.apply(Weight::from_percent(25.0).unwrap(), record(RolloutPhase::Progressing, "step 2"));
        assert!(tokio::time::timeout(GIVE_UP, step).await.is_err(), "the step's write stalled");
        // The rollback decided next waits for the stalled write, which is still running.
        let rollback = tokio::spawn({
            let router = router.clone();
            async move { router.apply(Weight::ZERO, record(RolloutPhase::RolledBack, "rollback")).await }
        });
        tokio::time::sleep(GIVE_UP).await;
        assert!(!rollback.is_finished(), "the rollback started while the step was still being written");
        assert_eq!(router.read().unwrap().0.revision, 4, "nothing landed yet");
        // The disk answers: the step lands, then the rollback over it, at the next revision.
        go.send(()).unwrap();
        go.send(()).unwrap();
        let written = rollback.await.unwrap().unwrap();
        assert_eq!((written.canary_weight, written.revision), (Weight::ZERO, 6));
        assert_eq!(router.read().unwrap().0, written, "the rollback is on disk");
        assert!(entries(&dir.path().join(STAGING_DIR)).is_empty());
    }

    #[tokio::test]
    async fn an_older_revision_is_never_renamed_over_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let (router, go) = stalled(seed(dir.path()));
        // The step to 25% reads revision 4 and stalls before its rename, as revision 5.
        let step = tokio::spawn({
            let router = router.clone();
            async move {
                router.apply(Weight::from_percent(25.0).unwrap(), record(RolloutPhase::Progressing, "step 2")).await
            }
        });
        tokio::time::sleep(GIVE_UP).await;
        // Meanwhile a writer that does not share this router's turn (another process) writes a
        // rollback as revision 5.
        let (current, wasm) = router.read().unwrap();
        let rollback = RouteConfig { canary_weight: Weight::ZERO, revision: 5, ..current };
        FileRouter::new(router.path()).write(&rollback, &wasm).unwrap();
        go.send(()).unwrap();
        let refused = step.await.unwrap().unwrap_err();
        assert!(
            matches!(refused, RouterError::Superseded { on_disk: 5, revision: 5, .. }),
            "the stalled write was not refused: {refused}"
        );
        assert_eq!(refused.kind(), "superseded");
        assert_eq!(router.read().unwrap().0, rollback, "the rollback stays on disk");
        assert!(entries(&dir.path().join(STAGING_DIR)).is_empty(), "the refused temp file was removed");
        // An older revision written directly is refused the same way.
        let older = RouteConfig { revision: 3, ..rollback.clone() };
        go.send(()).unwrap();
        assert_eq!(router.write(&older, &wasm).unwrap_err().kind(), "superseded");
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
