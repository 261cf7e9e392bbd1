//! Where the rollout's evidence checkpoint is kept between agent lives ([`EvidenceStore`]).
//!
//! The statistics accumulate every tick, so their checkpoint ([`canary_rollout::checkpoint`]) is
//! not written into the filter's configuration (every write there reloads every proxy's filter);
//! the control loop saves it here every few seconds and right after each durable write, and a
//! starting agent loads it and resumes the evidence if the checkpoint fits the rollout as the
//! durable state shows it (otherwise the evidence starts from zero and the log says why).
//!
//! [`FileEvidence`] is the store of `gate-agent run --router file`: a JSON file beside the
//! watched configuration, in the agent's staging directory (never watched by Envoy), replaced
//! atomically. With `--lease`, [`crate::mesh::lease::LeaseEvidence`] keeps it on the Lease,
//! written by the leader's renewals. `gate-agent controller` has no store yet: there every new
//! leader starts the evidence from zero, as before.

use std::fmt::Debug;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A checkpoint larger than this is not read: a real one is a few tens of KiB (two latency
/// samples at most a few hundred buckets each, a few hundred numbers of test state).
pub const MAX_CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;

/// Why the store could not load or save.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("evidence file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("evidence file {path} is {size} bytes, more than the {MAX_CHECKPOINT_BYTES} a checkpoint can be")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("the evidence checkpoint cannot be kept: {0}")]
    Rejected(String),
}

/// Keeps one checkpoint (opaque bytes: the rollout crate reads and checks them). Calls block
/// (small local writes); the control loop runs them off its tick.
pub trait EvidenceStore: Debug + Send + Sync {
    /// The last checkpoint saved; `None` when there is none.
    fn load(&self) -> Result<Option<Vec<u8>>, EvidenceError>;
    /// Replaces the checkpoint; after a crash at any point a later [`EvidenceStore::load`]
    /// returns the old one or the new one, whole.
    fn save(&self, checkpoint: &[u8]) -> Result<(), EvidenceError>;
    /// Where it is, for the log.
    fn location(&self) -> String;
}

/// A checkpoint in a local file, replaced by writing a temporary file beside it, flushing it to
/// disk, and renaming it over the old one (then flushing the directory, so the rename survives a
/// power cut too).
#[derive(Debug, Clone)]
pub struct FileEvidence {
    path: PathBuf,
}

impl FileEvidence {
    pub fn new(path: impl Into<PathBuf>) -> FileEvidence {
        FileEvidence { path: path.into() }
    }

    /// The default file for a watched configuration file `<dir>/<name>`:
    /// `<dir>/.gate-agent-staging/<name>.evidence.json`, in the subdirectory where the file router
    /// stages its writes. Envoy's directory watch is not recursive, so saving it reloads nothing,
    /// and the watched directory holds only the watched file, as before.
    pub fn beside(config_file: &Path) -> FileEvidence {
        let name = config_file.file_name().map_or_else(|| "config".into(), |n| n.to_string_lossy().into_owned());
        let dir = config_file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        FileEvidence::new(dir.join(crate::router::STAGING_DIR).join(format!("{name}.evidence.json")))
    }

    /// The temporary file a save writes first: `<file stem>.<pid>.tmp` beside it. For the default
    /// file that is `<name>.evidence.<pid>.tmp`, which the file router's start-up clean-up removes
    /// when a killed agent left it behind.
    fn temporary(&self) -> PathBuf {
        let stem = self.path.file_stem().map_or_else(|| "evidence".into(), |n| n.to_string_lossy().into_owned());
        self.path.with_file_name(format!("{stem}.{}.tmp", std::process::id()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> EvidenceError {
        EvidenceError::Io { path: self.path.clone(), source }
    }
}

impl EvidenceStore for FileEvidence {
    fn load(&self) -> Result<Option<Vec<u8>>, EvidenceError> {
        let size = match std::fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        if size > MAX_CHECKPOINT_BYTES {
            return Err(EvidenceError::TooLarge { path: self.path.clone(), size });
        }
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    fn save(&self, checkpoint: &[u8]) -> Result<(), EvidenceError> {
        let tmp = self.temporary();
        let written = (|| {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(checkpoint)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            match self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                Some(dir) => std::fs::File::open(dir)?.sync_all(),
                None => Ok(()),
            }
        })();
        if written.is_err() {
            // Best effort: a leftover temporary file is harmless (never read), but untidy.
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(|e| self.io(e))
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_no_checkpoint_and_a_saved_one_is_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileEvidence::beside(&dir.path().join("filter.yaml"));
        let staging = dir.path().join(crate::router::STAGING_DIR);
        assert_eq!(store.path(), staging.join("filter.yaml.evidence.json"));
        assert!(store.load().unwrap().is_none());
        store.save(b"{\"version\":1}").unwrap();
        assert_eq!(store.load().unwrap().unwrap(), b"{\"version\":1}");
        store.save(b"second").unwrap();
        assert_eq!(store.load().unwrap().unwrap(), b"second");
        let names = |d: &Path| -> Vec<String> {
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
        };
        assert_eq!(names(&staging), vec!["filter.yaml.evidence.json".to_owned()], "no temporary file is left behind");
        assert_eq!(names(dir.path()), vec![crate::router::STAGING_DIR.to_owned()], "nothing in the watched directory");
    }

    #[test]
    fn a_temporary_file_a_killed_agent_left_is_removed_by_the_routers_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("filter.yaml");
        let store = FileEvidence::beside(&config);
        std::fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        std::fs::write(store.temporary(), b"half a checkp").unwrap();
        store.save(b"whole").unwrap();
        std::fs::write(store.path().with_file_name("filter.yaml.evidence.4242.tmp"), b"half").unwrap();
        let removed = crate::router::FileRouter::new(&config).remove_stale_temps().unwrap();
        assert_eq!(removed, vec![store.path().with_file_name("filter.yaml.evidence.4242.tmp")]);
        assert_eq!(store.load().unwrap().unwrap(), b"whole", "the checkpoint itself stays");
    }

    #[test]
    fn an_unwritable_place_and_an_oversized_file_are_errors_that_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("a-file");
        std::fs::write(&blocker, b"").unwrap();
        let store = FileEvidence::new(blocker.join("evidence.json"));
        let e = store.save(b"x").unwrap_err();
        assert!(e.to_string().contains("a-file/evidence.json"), "{e}");
        let big = FileEvidence::new(dir.path().join("big.json"));
        let f = std::fs::File::create(big.path()).unwrap();
        f.set_len(MAX_CHECKPOINT_BYTES + 1).unwrap();
        assert!(matches!(big.load(), Err(EvidenceError::TooLarge { .. })));
        // A directory where the file should be is an error, not "no checkpoint".
        let odd = FileEvidence::new(dir.path());
        assert!(odd.load().is_err());
    }
}
