//! `entitlement-gate exec -- PROGRAM [ARGS...]`: check, then become the program.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use entitlement_gate::outcome::GateError;

/// Finds the program to become before any metered call, as `execvp` would: a name with a `/`
/// as a path, any other name on `path` (the `PATH` variable). It must be a regular file this
/// process may execute, so a typo costs no RegisterUsage call.
pub fn resolve_program(name: &OsStr, path: Option<&OsStr>) -> Result<PathBuf, GateError> {
    let not_started = |reason: String| GateError::ProgramNotStarted {
        program: name.to_string_lossy().into_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(not_started("the program name is empty".to_owned()));
    }
    if name.as_bytes().contains(&b'/') {
        let candidate = PathBuf::from(name);
        return executable(&candidate)
            .map(|()| candidate)
            .map_err(not_started);
    }
    let mut last_problem = None;
    for dir in std::env::split_paths(path.unwrap_or_default()) {
        let candidate = dir.join(name);
        match executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(problem) if candidate.exists() => last_problem = Some(problem),
            Err(_) => {}
        }
    }
    Err(not_started(last_problem.unwrap_or_else(|| {
        "it is not on PATH (use an absolute path, or a program the image has)".to_owned()
    })))
}

/// Why `path` cannot be executed by this process, if it cannot.
fn executable(path: &Path) -> Result<(), String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::access(c_path.as_ptr(), libc::X_OK) } != 0 {
        return Err(format!(
            "{} is not executable by this user ({})",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Replaces this process with the resolved `program`, passing `args` and keeping `name` as its
/// `argv[0]`: it keeps the PID, the environment and the signals, and its exit code becomes the
/// container's. Returns only on failure.
pub fn replace_process(program: &Path, name: &OsStr, args: &[OsString]) -> GateError {
    tracing::info!(program = %program.display(), "entitled: starting the program");
    let error = std::process::Command::new(program)
        .arg0(name)
        .args(args)
        .exec();
    GateError::ProgramNotStarted {
        program: program.display().to_string(),
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn programs_are_found_on_path_or_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::write(&app, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(
            resolve_program(OsStr::new("app"), Some(&path)).unwrap(),
            app
        );
        assert_eq!(resolve_program(app.as_os_str(), None).unwrap(), app);
    }

    #[test]
    fn missing_directories_and_non_executables_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::write(&data, "x").unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.path().as_os_str();
        let reason = |name: &OsStr| match resolve_program(name, Some(path)) {
            Err(GateError::ProgramNotStarted { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert!(reason(OsStr::new("typo")).contains("not on PATH"));
        assert!(reason(data.as_os_str()).contains("not executable"));
        assert!(reason(dir.path().as_os_str()).contains("not a regular file"));
        assert!(reason(OsStr::new("/nonexistent/app")).contains("/nonexistent/app"));
        assert!(reason(OsStr::new("")).contains("empty"));
    }
}
