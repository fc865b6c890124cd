//! The handoff: `entitlement.json`, written atomically on success only, so the main container
//! (or `entitlement-gate verify`) can re-check the token this run verified.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::{self, FileError};

pub const FILE_NAME: &str = "entitlement.json";

/// The contents of `entitlement.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handoff {
    pub product_code: String,
    pub public_key_version: u32,
    pub nonce: String,
    /// The RegisterUsage token (JWT) exactly as AWS sent it.
    pub signature: String,
    /// The token's `iat`, epoch seconds.
    pub issued_at: u64,
    /// When the gate verified the token, RFC 3339.
    pub verified_at: String,
    pub region: String,
    pub gate_version: String,
    /// Epoch seconds, present only when AWS sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_rotation_timestamp: Option<i64>,
    /// Where the workload identity the nonce is bound to came from (`configured`,
    /// `ecs-task-arn`, `hostname`), for diagnosis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_id_source: Option<String>,
}

pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// The largest handoff read; real ones are about 1.5 KiB.
pub const MAX_HANDOFF_BYTES: usize = 64 * 1024;

/// Readies `dir` for a run's proof `name`, before any metered call: proves it a writable
/// directory (a mistake there is configuration), then removes the proof an earlier run left, so
/// a failing run leaves nothing behind for the app to trust.
pub fn prepare(dir: &Path, name: &str) -> Result<(), HandoffError> {
    check_writable(dir)?;
    remove_in(dir, name).map_err(|source| HandoffError::RemoveStale {
        dir: dir.to_owned(),
        source,
    })
}

/// Removes `dir/name` if it is there (a symlink itself, never its target).
pub fn remove_in(dir: &Path, name: &str) -> io::Result<()> {
    match fs::remove_file(dir.join(name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `handoff` to `dir/entitlement.json`, atomically.
pub fn write(dir: &Path, handoff: &Handoff) -> io::Result<PathBuf> {
    write_json(dir, FILE_NAME, handoff)
}

/// Writes `value` as JSON to `dir/name` via a temporary file (created with O_EXCL under an
/// unpredictable name, so nothing planted in the directory is followed or overwritten) and a
/// rename, so a reader sees either no file or the whole file, old or new.
pub fn write_json(dir: &Path, name: &str, value: &impl serde::Serialize) -> io::Result<PathBuf> {
    let path = dir.join(name);
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)?;
    serde_json::to_writer_pretty(&mut temp, value)?;
    temp.write_all(b"\n")?;
    temp.as_file().sync_all()?;
    temp.persist(&path).map_err(|e| e.error)?;
    Ok(path)
}

/// Reads and parses a handoff file: a regular file of at most [`MAX_HANDOFF_BYTES`].
pub fn read(path: &Path) -> Result<Handoff, FileError> {
    let bytes = files::read_limited(path, MAX_HANDOFF_BYTES)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| FileError::Io(io::Error::new(io::ErrorKind::InvalidData, e)))
}

/// Why the handoff directory cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("handoff directory {} is not a writable directory: {reason}", path.display())]
    Directory { path: PathBuf, reason: String },
    #[error("cannot remove the old handoff in {}: {source}", dir.display())]
    RemoveStale { dir: PathBuf, source: io::Error },
    #[error("cannot write the handoff in {}: {source}", dir.display())]
    Write { dir: PathBuf, source: io::Error },
}

/// Proves `dir` a writable directory by creating and removing a file in it, before any
/// metered call: mode bits alone miss read-only mounts, ownership and full volumes.
pub fn check_writable(dir: &Path) -> Result<(), HandoffError> {
    let reason = match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => "it is not a directory".to_owned(),
        Ok(_) => match tempfile::Builder::new()
            .prefix(".entitlement-gate-probe")
            .tempfile_in(dir)
        {
            // Dropping the probe removes it; a failure to remove is caught by the next write.
            Ok(_probe) => return Ok(()),
            Err(e) => {
                let (user, group) = files::effective_ids();
                format!("cannot create a file in it as user {user} (group {group}): {e}")
            }
        },
        Err(e) => e.to_string(),
    };
    Err(HandoffError::Directory {
        path: dir.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::domain::time::rfc3339;
    use std::time::SystemTime;

    fn sample() -> Handoff {
        Handoff {
            product_code: "prod".into(),
            public_key_version: 1,
            nonce: "n".into(),
            signature: "a.b.c".into(),
            issued_at: 1_800_000_000,
            verified_at: rfc3339(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_001),
            ),
            region: "us-east-1".into(),
            gate_version: "0.1.0".into(),
            public_key_rotation_timestamp: None,
            workload_id_source: Some("configured".into()),
        }
    }

    #[test]
    fn writes_camel_case_json_that_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &sample()).unwrap();
        assert_eq!(path, dir.path().join("entitlement.json"));
        let json: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["productCode"], "prod");
        assert_eq!(json["issuedAt"], 1_800_000_000u64);
        assert_eq!(json["verifiedAt"], "2027-01-15T08:00:01Z");
        assert!(json.get("publicKeyRotationTimestamp").is_none());
        assert_eq!(read(&path).unwrap(), sample());
        // No temporary file is left beside it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "readable by the app container's user");
    }

    #[test]
    fn includes_the_rotation_timestamp_when_aws_sent_one() {
        let dir = tempfile::tempdir().unwrap();
        let handoff = Handoff {
            public_key_rotation_timestamp: Some(1_900_000_000),
            ..sample()
        };
        let path = write(dir.path(), &handoff).unwrap();
        assert!(fs::read_to_string(path)
            .unwrap()
            .contains("\"publicKeyRotationTimestamp\": 1900000000"));
    }

    #[test]
    fn failed_write_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        assert!(write(&missing, &sample()).is_err());
        assert!(!missing.exists());
    }

    #[test]
    fn write_never_follows_a_symlink_planted_where_a_temporary_file_could_be() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join("precious");
        fs::write(&precious, "keep me").unwrap();
        // The predictable name earlier versions used for their temporary file.
        let planted = dir
            .path()
            .join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&precious, &planted).unwrap();
        write(dir.path(), &sample()).unwrap();
        assert_eq!(fs::read_to_string(&precious).unwrap(), "keep me");
        assert_eq!(read(&path_in(dir.path())).unwrap(), sample());
    }

    #[test]
    fn preparing_removes_a_symlink_never_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join("precious");
        fs::write(&precious, "keep me").unwrap();
        std::os::unix::fs::symlink(&precious, path_in(dir.path())).unwrap();
        prepare(dir.path(), FILE_NAME).unwrap();
        assert!(!path_in(dir.path()).exists());
        assert_eq!(fs::read_to_string(&precious).unwrap(), "keep me");
    }

    #[test]
    fn only_a_directory_this_process_can_write_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable(dir.path()).is_ok());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no probe left"
        );
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        assert!(check_writable(&file).is_err());
        assert!(check_writable(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn preparing_tolerates_absence_and_refuses_what_is_no_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(prepare(dir.path(), FILE_NAME).is_ok());
        write(dir.path(), &sample()).unwrap();
        prepare(dir.path(), FILE_NAME).unwrap();
        assert!(!path_in(dir.path()).exists());
        // A regular file where the directory should be is the configuration's mistake.
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        assert!(matches!(
            prepare(&file, FILE_NAME),
            Err(HandoffError::Directory { .. })
        ));
    }
}
