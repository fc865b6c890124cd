//! Files named by configuration (keys, handoffs, token files, the termination log).
//!
//! Whoever controls the pod spec controls these paths, so every read and write is bounded: only
//! regular files, opened without blocking (a FIFO would otherwise hang the open or the read past
//! any deadline), read no further than a limit (`/dev/zero` is endless), and written without
//! following a symlink planted at the path.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Why a file could not be used.
#[derive(Debug)]
pub enum FileError {
    /// It exists but is not a regular file (a FIFO, a device, a directory, a socket).
    NotRegular {
        kind: &'static str,
    },
    /// It holds more than the caller accepts.
    TooLarge {
        limit: usize,
    },
    /// A symlink sits where a file is to be written.
    Symlink,
    Io(io::Error),
}

impl FileError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }

    pub fn is_permission_denied(&self) -> bool {
        matches!(self, FileError::Io(e) if e.kind() == io::ErrorKind::PermissionDenied)
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::NotRegular { kind } => write!(f, "it is a {kind}, not a regular file"),
            FileError::TooLarge { limit } => write!(f, "it is larger than {limit} bytes"),
            FileError::Symlink => f.write_str("it is a symbolic link, which is not followed"),
            FileError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for FileError {}

impl From<io::Error> for FileError {
    fn from(error: io::Error) -> Self {
        // O_NOFOLLOW on a symlink fails with ELOOP.
        if error.raw_os_error() == Some(libc::ELOOP) {
            FileError::Symlink
        } else {
            FileError::Io(error)
        }
    }
}

/// What kind of file `file_type` is, for messages.
fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Whether `metadata` is a regular file, or the null device (`AWS_CONFIG_FILE=/dev/null` is a
/// common way to say "no config file": it never blocks and is always empty).
fn regular_or_null(metadata: &std::fs::Metadata) -> Result<(), FileError> {
    use std::os::unix::fs::MetadataExt as _;
    let file_type = metadata.file_type();
    if file_type.is_file() || (file_type.is_char_device() && metadata.rdev() == libc::makedev(1, 3))
    {
        Ok(())
    } else {
        Err(FileError::NotRegular {
            kind: kind_of(file_type),
        })
    }
}

fn ensure_regular(file: &File) -> Result<(), FileError> {
    regular_or_null(&file.metadata()?)
}

/// Reads a regular file (or `/dev/null`) of at most `limit` bytes. Symlinks are followed
/// (Kubernetes mounts ConfigMaps and Secrets through them); FIFOs and devices are refused
/// without blocking.
pub fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>, FileError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    ensure_regular(&file)?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > limit {
        return Err(FileError::TooLarge { limit });
    }
    Ok(bytes)
}

/// [`read_limited`], as UTF-8 text.
pub fn read_limited_to_string(path: &Path, limit: usize) -> Result<String, FileError> {
    String::from_utf8(read_limited(path, limit)?)
        .map_err(|_| FileError::Io(io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text")))
}

/// Checks, without opening it, that `path` is a regular file of at most `limit` bytes: for
/// files a library will read by itself (the AWS SDK reads the config and web identity token
/// files whole and with blocking reads).
pub fn check_regular(path: &Path, limit: usize) -> Result<(), FileError> {
    let metadata = std::fs::metadata(path)?;
    regular_or_null(&metadata)?;
    if metadata.len() > limit as u64 {
        return Err(FileError::TooLarge { limit });
    }
    Ok(())
}

/// Replaces the contents of the regular file at `path` (creating it if absent) with `bytes`,
/// refusing a symlink, a FIFO or a device at that path. Nothing is written unless the opened
/// file is a regular one.
pub fn overwrite_regular(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    ensure_regular(&file)?;
    // Truncate only now that it is known to be a regular file of ours to overwrite.
    file.set_len(0)?;
    file.write_all(bytes)?;
    Ok(())
}

/// This process's effective user and group IDs, for messages about permissions.
pub fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mkfifo(path: &Path) {
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn reads_regular_files_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "0123456789").unwrap();
        assert_eq!(read_limited(&path, 10).unwrap(), b"0123456789");
        assert!(matches!(
            read_limited(&path, 9),
            Err(FileError::TooLarge { limit: 9 })
        ));
        // Through a symlink, as Kubernetes mounts secrets.
        let link = dir.path().join("link");
        symlink(&path, &link).unwrap();
        assert_eq!(read_limited_to_string(&link, 64).unwrap(), "0123456789");
    }

    #[test]
    fn refuses_fifos_devices_and_directories_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        // A blocking open of a FIFO with no writer would hang this test forever.
        assert!(matches!(
            read_limited(&fifo, 64),
            Err(FileError::NotRegular { kind: "FIFO" })
        ));
        assert!(matches!(
            read_limited(Path::new("/dev/zero"), 64),
            Err(FileError::NotRegular {
                kind: "character device"
            })
        ));
        assert!(matches!(
            read_limited(dir.path(), 64),
            Err(FileError::NotRegular { kind: "directory" })
        ));
        assert!(matches!(
            check_regular(&fifo, 64),
            Err(FileError::NotRegular { kind: "FIFO" })
        ));
        // The null device is the one device allowed: it never blocks and is empty.
        assert!(check_regular(Path::new("/dev/null"), 64).is_ok());
        assert_eq!(read_limited(Path::new("/dev/null"), 64).unwrap(), b"");
        assert!(read_limited(&dir.path().join("missing"), 64)
            .unwrap_err()
            .is_not_found());
    }

    #[test]
    fn check_regular_bounds_the_size_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, vec![b'x'; 100]).unwrap();
        assert!(check_regular(&path, 100).is_ok());
        assert!(matches!(
            check_regular(&path, 99),
            Err(FileError::TooLarge { .. })
        ));
    }

    #[test]
    fn overwrites_regular_files_but_never_through_a_symlink_or_into_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        overwrite_regular(&path, b"a long first message").unwrap();
        overwrite_regular(&path, b"short").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"short");

        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        let link = dir.path().join("planted");
        symlink(&target, &link).unwrap();
        assert!(matches!(
            overwrite_regular(&link, b"x"),
            Err(FileError::Symlink)
        ));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");

        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        // No reader: the non-blocking open fails at once instead of waiting for one.
        assert!(overwrite_regular(&fifo, b"x").is_err());
        assert!(matches!(
            overwrite_regular(Path::new("/dev/full"), b"x"),
            Err(FileError::NotRegular { .. })
        ));
    }
}
