//! The handoff: `entitlement.json`, written atomically on success only, so the main container
//! (or `entitlement-gate verify`) can re-check the token this run verified.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aws_sdk_marketplacemetering::primitives::{DateTime, DateTimeFormat};
use serde::{Deserialize, Serialize};

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
}

pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Removes a handoff left by an earlier run, so a failing run leaves nothing behind.
pub fn remove_stale(dir: &Path) -> io::Result<()> {
    match fs::remove_file(path_in(dir)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `handoff` to `dir/entitlement.json` via a temporary file and a rename, so a reader
/// sees either no file or the whole file.
pub fn write(dir: &Path, handoff: &Handoff) -> io::Result<PathBuf> {
    let path = path_in(dir);
    let temp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&temp)?;
        serde_json::to_writer_pretty(&mut file, handoff)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&temp, &path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map(|()| path)
}

/// Reads and parses a handoff file.
pub fn read(path: &Path) -> io::Result<Handoff> {
    let text = fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// RFC 3339 in UTC, e.g. `2026-11-23T10:00:00Z`.
pub fn rfc3339(time: SystemTime) -> String {
    DateTime::from(time)
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_else(|_| "unrepresentable time".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn remove_stale_tolerates_absence() {
        let dir = tempfile::tempdir().unwrap();
        assert!(remove_stale(dir.path()).is_ok());
        write(dir.path(), &sample()).unwrap();
        remove_stale(dir.path()).unwrap();
        assert!(!path_in(dir.path()).exists());
    }
}
