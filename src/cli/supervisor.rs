//! The process around a command: signal handling from the first instruction, a watchdog that
//! does not depend on the async runtime making progress, and the one place a failed run is
//! concluded.
//!
//! Three parties may end a run: the command itself, the signal thread (SIGTERM, SIGINT or
//! SIGHUP that the command did not act on in time), and the watchdog (the deadline passed and the command is
//! stuck, say in a blocking read). Whoever concludes first writes the sentence and decides the
//! exit code; the others then do nothing, so an operator never reads two reasons.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entitlement_gate::domain::mesh::Mesh;
use entitlement_gate::gate::check::Progress;
use entitlement_gate::outcome::{self, GateError};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::watch;

/// `concluded` before anyone concluded.
const RUNNING: u8 = u8::MAX;
/// How long a stuck party may take to write its sentence to stderr before the process ends
/// anyway (a stderr pipe nobody reads blocks writes).
const LAST_WORDS: Duration = Duration::from_millis(250);

/// What a signal means for the current command.
#[derive(Debug, Clone, Copy)]
pub struct SignalPolicy {
    /// How long the command has to act on a signal before the signal thread ends the process.
    pub grace: Duration,
    /// The error that ends the process then.
    pub overrun: fn(&'static str) -> GateError,
}

impl SignalPolicy {
    /// A one-shot command: it stops at once (exit 8) and has a fraction of a second to say so.
    pub const STOP: SignalPolicy = SignalPolicy {
        grace: Duration::from_millis(200),
        overrun: |signal| GateError::Interrupted { signal },
    };
}

struct State {
    /// The exit code of whoever concluded, or [`RUNNING`].
    concluded: AtomicU8,
    termination_log: Mutex<Option<PathBuf>>,
    policy: Mutex<SignalPolicy>,
    stop: watch::Sender<Option<&'static str>>,
}

/// The process's supervisor; cheap to clone.
#[derive(Clone)]
pub struct Supervisor(Arc<State>);

impl Supervisor {
    /// Installs SIGTERM, SIGINT and SIGHUP handling on a dedicated thread. Call it first thing:
    /// until it runs, those signals kill the process without a word. SIGHUP (a closed terminal,
    /// a supervisor that stops with it) stops a command as SIGTERM does: a sidecar flushes or
    /// checks in, instead of dying with what it holds.
    pub fn install() -> Supervisor {
        let supervisor = Supervisor(Arc::new(State {
            concluded: AtomicU8::new(RUNNING),
            termination_log: Mutex::new(None),
            policy: Mutex::new(SignalPolicy::STOP),
            stop: watch::Sender::new(None),
        }));
        match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
            Ok(mut signals) => {
                let handler = supervisor.clone();
                std::thread::spawn(move || {
                    for number in signals.forever() {
                        handler.on_signal(match number {
                            SIGTERM => "SIGTERM",
                            SIGHUP => "SIGHUP",
                            _ => "SIGINT",
                        });
                    }
                });
            }
            // Without handlers the default action still stops the process on SIGTERM.
            Err(e) => eprintln_safely(&format!("cannot install signal handlers: {e}")),
        }
        supervisor
    }

    pub fn set_termination_log(&self, path: Option<PathBuf>) {
        *lock(&self.0.termination_log) = path;
    }

    /// What a signal means for the command now running (by default: stop at once).
    pub fn set_signal_policy(&self, policy: SignalPolicy) {
        *lock(&self.0.policy) = policy;
    }

    /// Resolves to the signal's name once SIGTERM, SIGINT or SIGHUP arrived.
    pub async fn stopped(&self) -> &'static str {
        let mut receiver = self.0.stop.subscribe();
        let signal = receiver.wait_for(Option::is_some).await;
        signal.ok().and_then(|signal| *signal).unwrap_or("SIGTERM")
    }

    /// Runs `work` until it ends or a signal stops it.
    pub async fn until_stopped<T, E: Into<GateError>>(
        &self,
        work: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, GateError> {
        tokio::select! {
            result = work => result.map_err(Into::into),
            signal = self.stopped() => Err(GateError::Interrupted { signal }),
        }
    }

    /// The signal received so far, if any.
    pub fn stop_requested(&self) -> Option<&'static str> {
        *self.0.stop.borrow()
    }

    /// Ends the process with exit 7 and the deadline sentence if it is still running
    /// `deadline` plus a second from now (the command's own deadline normally fires first),
    /// unless the returned watchdog is disarmed before.
    pub fn arm_watchdog(&self, deadline: Duration, progress: Progress) -> Watchdog {
        let watchdog = self.clone();
        let armed = Arc::new(AtomicBool::new(true));
        let still_armed = armed.clone();
        std::thread::spawn(move || {
            std::thread::sleep(deadline.saturating_add(Duration::from_secs(1)));
            if still_armed.load(Ordering::SeqCst) {
                let error = GateError::DeadlineExceeded {
                    phase: progress.current(),
                    deadline,
                };
                watchdog.conclude_and_exit(error);
            }
        });
        Watchdog(armed)
    }

    /// Concludes a failed run (sentence on stderr and in the termination log) and returns its
    /// exit code; if another party concluded first, returns theirs without a second sentence.
    pub fn conclude(&self, error: &GateError) -> u8 {
        match self.claim(outcome::report(error).exit_code) {
            Ok(()) => {
                let path = lock(&self.0.termination_log).clone();
                outcome::conclude(error, path.as_deref(), mesh())
            }
            Err(code) => code,
        }
    }

    /// Marks the run as decided without a failure (exit 0): signals and the watchdog no
    /// longer end it. `Err` with the exit code if another party concluded first.
    pub fn conclude_success(&self) -> Result<(), u8> {
        self.claim(0)
    }

    /// Hands the process over to the program `exec` becomes: as [`Self::conclude_success`].
    pub fn hand_over(&self) -> Result<(), u8> {
        self.claim(0)
    }

    /// The program could not be started after [`Self::hand_over`]: concludes with `error` even
    /// though the run was already handed over.
    pub fn hand_over_failed(&self, error: &GateError) -> u8 {
        let path = lock(&self.0.termination_log).clone();
        let code = outcome::conclude(error, path.as_deref(), mesh());
        self.0.concluded.store(code, Ordering::SeqCst);
        code
    }

    /// Reports the error and ends the process now, without waiting for anything else: for the
    /// signal thread and the watchdog, whose process may be stuck.
    fn conclude_and_exit(&self, error: GateError) {
        let code = outcome::report(&error).exit_code;
        if self.claim(code).is_err() {
            return;
        }
        let path = lock(&self.0.termination_log).clone();
        // The termination log cannot block (non-blocking open, regular file); stderr can, so
        // both are written on a thread given a bounded moment.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            outcome::conclude(&error, path.as_deref(), mesh());
            let _ = done.send(());
        });
        let _ = finished.recv_timeout(LAST_WORDS);
        // SAFETY: _exit ends the process at once; nothing after it runs.
        unsafe { libc::_exit(i32::from(code)) }
    }

    fn claim(&self, code: u8) -> Result<(), u8> {
        self.0
            .concluded
            .compare_exchange(RUNNING, code, Ordering::SeqCst, Ordering::SeqCst)
            .map(drop)
    }

    fn on_signal(&self, signal: &'static str) {
        let already = self.0.stop.send_replace(Some(signal)).is_some();
        let policy = *lock(&self.0.policy);
        let error = (policy.overrun)(signal);
        if already {
            // A second signal: the operator insists.
            self.conclude_and_exit(error);
            return;
        }
        let supervisor = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(policy.grace);
            supervisor.conclude_and_exit(error);
        });
    }
}

/// A watchdog armed by [`Supervisor::arm_watchdog`].
pub struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    /// A long-running command past its start-up: its deadline no longer applies.
    pub fn disarm(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A mutex that a panicking holder cannot make unusable: the data here stays consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes a line to stderr, ignoring failure: a full or closed stderr must never decide the
/// exit code.
pub fn eprintln_safely(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The mesh this pod is in, from the annotations the chart passes in.
fn mesh() -> Option<Mesh> {
    Mesh::detect(|name| std::env::var(name).ok())
}
