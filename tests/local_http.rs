//! The sidecars' local HTTP server as a process: what a crowd of connections leaves for a real
//! client. The limits themselves (the connection cap, the header-read timeout, the accept
//! backoff) are pinned with controlled time in `src/local_http/server.rs`.

mod support;

use std::os::unix::net::UnixStream;

use support::meter::*;
use support::*;

/// Idle connections to open: the attack that held before the cap must hold with it.
const IDLE: usize = 2_000;

/// Raises this process's soft descriptor limit to `wanted` if the hard limit allows; the
/// sidecar, spawned after, inherits it. Returns the soft limit now in force.
fn raise_descriptor_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    if limit.rlim_cur < wanted {
        limit.rlim_cur = wanted.min(limit.rlim_max);
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    }
    limit.rlim_cur
}

#[test]
fn two_thousand_idle_connections_leave_room_for_a_report_and_a_probe() {
    // The sidecar serves up to half its descriptor limit at once: 2,048 from 4,096 on.
    let limit = raise_descriptor_limit(8_192);
    if limit < 4_096 {
        eprintln!("skipped: a descriptor limit of {limit} is too low to hold {IDLE} connections");
        return;
    }
    away_from_a_boundary(DAY);
    let emulator = metering_emulator(DAY);
    let state = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::ready(meter(&emulator, state.path(), DAY));
    let idle: Vec<UnixStream> = (0..IDLE)
        .map(|_| UnixStream::connect(&sidecar.socket).expect("connect"))
        .collect();
    assert_eq!(sidecar.request("GET", "/readyz", "").0, 200);
    sidecar.accept(r#"{"dimension": "requests", "quantity": 3}"#);
    drop(idle);
    sidecar.stop().expect_code(0);
    assert_eq!(ledger_totals(&emulator.ledger())["requests"], 3);
}
