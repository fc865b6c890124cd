//! The metering sidecar on a disk that fills up, for real: a small tmpfs as its state volume.
//! Reports get 503 with `Retry-After` and `/readyz` fails while the state cannot be written;
//! once space is freed the same process takes usage again, and AWS's ledger holds every
//! acknowledged unit exactly once. (The writer's reopening, backoff and giving up are pinned
//! with a disk that fails on demand in `src/meter/writer.rs`.)
//!
//! Mounting needs root (or CAP_SYS_ADMIN): elsewhere the test says so and passes.

mod support;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::meter::*;
use support::*;

/// A tmpfs mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts `size` bytes of tmpfs, or says why not.
    fn mount(size: u64) -> Result<Tmpfs, std::io::Error> {
        let dir = tempfile::tempdir()?;
        let target = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        let options = CString::new(format!("size={size},mode=0700")).unwrap();
        let mounted = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if mounted != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes an unprivileged writer may still take.
    fn free(&self) -> u64 {
        let path = CString::new(self.path().as_os_str().as_bytes()).unwrap();
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stats) }, 0);
        stats.f_bavail * stats.f_frsize
    }

    /// Fills all but `leave` bytes with a file; returns its path.
    fn fill_leaving(&self, leave: u64) -> PathBuf {
        let filler = self.path().join("filler");
        let size = self.free().saturating_sub(leave);
        let chunk = vec![0u8; 64 * 1024];
        let mut file = std::fs::File::create(&filler).unwrap();
        let mut written = 0;
        while written < size {
            let n = chunk.len().min((size - written) as usize);
            std::io::Write::write_all(&mut file, &chunk[..n]).unwrap();
            written += n as u64;
        }
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.dir.path().as_os_str().as_bytes()).unwrap();
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn a_full_disk_answers_503_until_space_is_freed_then_the_same_process_takes_usage_again() {
    let disk = match Tmpfs::mount(8 * 1024 * 1024) {
        Ok(disk) => disk,
        Err(error) => {
            eprintln!("skipped: cannot mount a tmpfs here ({error}); run the tests as root");
            return;
        }
    };
    away_from_a_boundary(DAY);
    let emulator = metering_emulator(DAY);
    let state = disk.path().join("state");
    let sidecar = Sidecar::ready(meter(&emulator, &state, DAY));
    let mut acknowledged = 0u64;
    let mut report = |n: u64| {
        let body = format!(r#"{{"dimension": "requests", "quantity": {n}, "id": "report-{n}"}}"#);
        let answer =
            http_answer(&sidecar.socket, "POST", "/v1/usage", body.as_bytes()).expect("an answer");
        if answer.status == 200 {
            acknowledged += n;
        }
        answer
    };
    assert_eq!(report(1).status, 200);

    // Leave a little room: every report carries an id, so the state grows until it is full.
    let filler = disk.fill_leaving(64 * 1024);
    let refused = (2..20_000)
        .map(&mut report)
        .find(|answer| answer.status != 200)
        .expect("the disk never filled up");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused.body.contains("No space left on device") && refused.body.contains("send it again"),
        "{}",
        refused.body
    );
    let retry_after: u64 = refused
        .header("retry-after")
        .expect("a Retry-After header")
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry_after), "Retry-After: {retry_after}");
    // While it is full: not ready, saying why, and reports keep getting 503.
    let (status, body) = sidecar.request("GET", "/readyz", "");
    assert_eq!(status, 503);
    assert!(body.contains("cannot be written"), "{body}");
    assert_eq!(report(1_000_000).status, 503);
    assert_eq!(sidecar.metric("entitlement_gate_meter_state_writable"), 0.0);
    assert!(sidecar.metric("entitlement_gate_meter_state_write_failures_total") >= 1.0);

    std::fs::remove_file(filler).unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || sidecar
            .request("GET", "/readyz", "")
            .0
            == 200),
        "not ready again after space was freed:\n{}",
        sidecar.log()
    );
    assert_eq!(report(2_000_000).status, 200);
    let ended = sidecar.stop();
    ended.expect_code(0);
    assert!(
        ended.log.contains("the state is writable again"),
        "{}",
        ended.log
    );
    let ledger = emulator.ledger();
    one_record_per_dimension_and_hour(&ledger);
    assert_eq!(
        ledger_totals(&ledger)["requests"],
        acknowledged,
        "every acknowledged unit, once"
    );
}
