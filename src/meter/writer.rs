//! The one writer of the state: a thread that takes every change from a queue and commits what
//! has queued up meanwhile in one transaction, with one sync (group commit), then answers each
//! sender. Concurrent reports so share a sync, and none is acknowledged before it is durable.
//!
//! A failed write (a full disk, an I/O error) leaves redb refusing every later write until the
//! database is opened again. The writer then reopens the state and tries the batch once more at
//! once; if that fails too, the state is *unwritable*: every change is refused (HTTP 503 with
//! `Retry-After`), readiness fails, and the writer reopens the state and tries a write again
//! with a backoff, until one lands or [`UNWRITABLE_LIMIT`] passes and the sidecar gives up (it
//! exits, to be restarted). Nothing acknowledged is lost either way: it is in the file.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::billing::Rounding;
use super::report::{Invalid, Report};
use super::store::{Accepted, Batch, HourRecord, Store, StoreError};
use crate::domain::time::Clock;

/// The most changes one transaction takes: enough to share a sync widely, few enough that a
/// transaction's answers are not held back long.
const MAX_BATCH: usize = 512;
/// The most changes waiting for the writer; a full queue slows the HTTP handlers down.
const QUEUE: usize = 4096;
/// How long the state may stay unwritable before the sidecar gives up and exits, to be
/// restarted (nothing acknowledged is lost, and the restart shows in the pod's status): long
/// enough to ride out a node freeing space (log rotation, the kubelet's image garbage
/// collection), short enough that a sidecar refusing usage is not left so, unseen, for most of
/// the hour it meters.
pub const UNWRITABLE_LIMIT: Duration = Duration::from_secs(300);
/// The first wait before opening an unwritable state again, doubling up to [`REOPEN_CAP`]:
/// each attempt repairs the file as it opens it, work a full disk should not get nonstop.
const REOPEN_FIRST: Duration = Duration::from_millis(100);
const REOPEN_CAP: Duration = Duration::from_secs(5);
/// The free space a full volume must regain before writes are tried again: a write that fits
/// in less would let the next fail at once, so that reports would flap between 200 and 503.
pub const HEADROOM_BYTES: u64 = 1024 * 1024;
/// While the state is unwritable, how often changes that were queued anyway are refused.
const REFUSE_EVERY: Duration = Duration::from_millis(20);

/// A submission's answer: durable (or refused as invalid, recording nothing), or not taken.
type SubmitAnswer = Result<Result<Accepted, Invalid>, Refused>;

/// A change to the state, with where its answer goes and, once applied, what it came to.
enum Change {
    Submit {
        reports: Vec<Report>,
        /// Set when applied; sent once the transaction commits.
        outcome: SubmitAnswer,
        answer: oneshot::Sender<SubmitAnswer>,
    },
    /// Close hours whose time has passed.
    Tick {
        answer: oneshot::Sender<Result<(), Refused>>,
    },
    /// Close the accepting hour now and take no more reports: the sidecar is stopping.
    CloseForShutdown {
        /// Set when applied: the open hour left unclosed because it lies in the future.
        future: Option<u64>,
        answer: oneshot::Sender<Result<Option<u64>, Refused>>,
    },
    Settle {
        hour: u64,
        dimension: String,
        record: HourRecord,
        answer: oneshot::Sender<Result<(), Refused>>,
    },
    Carry {
        hour: u64,
        dimension: String,
        answer: oneshot::Sender<Result<(), Refused>>,
    },
}

impl Change {
    /// Sends the change's outcome, or `refused` when its transaction did not commit.
    fn answer(self, refused: Option<&Refused>) {
        let done = || refused.map_or(Ok(()), |refused| Err(refused.clone()));
        match self {
            Change::Submit {
                outcome, answer, ..
            } => {
                let _ = answer.send(refused.map_or(outcome, |refused| Err(refused.clone())));
            }
            Change::CloseForShutdown { future, answer } => {
                let _ = answer.send(refused.map_or(Ok(future), |refused| Err(refused.clone())));
            }
            Change::Tick { answer }
            | Change::Settle { answer, .. }
            | Change::Carry { answer, .. } => {
                let _ = answer.send(done());
            }
        }
    }
}

/// Why the writer did not take a change.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    #[error("the sidecar is shutting down")]
    ShuttingDown,
    /// Accepting more would take the state past its budget: nothing of the submission was
    /// recorded; acknowledged usage is never dropped to make room.
    #[error("the state holds {live} bytes, at its budget of {budget} bytes (--state-budget)")]
    OverBudget { live: u64, budget: u64 },
    /// The state cannot be written now; the writer is opening it again.
    #[error("{reason}")]
    Unwritable {
        reason: String,
        /// When the next attempt to write is due.
        retry_after: Duration,
    },
    #[error("the state could not be written: {0}")]
    Storage(String),
}

/// Whether the state can be written, as the writer last found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateHealth {
    Writable,
    /// Writes fail; the writer opens the state again and retries, next at `retry_at`.
    Unwritable {
        reason: String,
        retry_at: Instant,
    },
    /// Writes failed for [`UNWRITABLE_LIMIT`]: the sidecar exits to be restarted.
    GaveUp {
        reason: String,
        after: Duration,
    },
}

impl StateHealth {
    /// Why the state cannot be written, and in how many whole seconds (at least 1) a client
    /// should try again; `None` when it can be written.
    pub fn unwritable(&self, now: Instant) -> Option<(&str, u64)> {
        let (reason, wait) = match self {
            StateHealth::Writable => return None,
            StateHealth::Unwritable { reason, retry_at } => {
                (reason, retry_at.saturating_duration_since(now))
            }
            // The sidecar is exiting: the next one may take it.
            StateHealth::GaveUp { reason, .. } => (reason, REOPEN_CAP),
        };
        Some((reason.as_str(), retry_seconds(wait)))
    }

    fn gave_up(&self) -> Option<(String, Duration)> {
        match self {
            StateHealth::GaveUp { reason, after } => Some((reason.clone(), *after)),
            StateHealth::Writable | StateHealth::Unwritable { .. } => None,
        }
    }
}

/// What the writer settles for everyone else to read.
#[derive(Debug, Clone, Default)]
pub struct Settled {
    /// The hour reports go into.
    pub accepting_hour: u64,
    /// Open hours' totals per dimension (the accepting hour, and later ones with carried usage).
    pub open: Vec<(u64, String, u64)>,
    /// Committed transactions and the changes they carried, for group-commit evidence.
    pub commits: u64,
    pub changes: u64,
    /// Writes of the state that failed (each first failure, and each failed retry).
    pub write_failures: u64,
    /// The state file's size after the last commit.
    pub state_bytes: u64,
    /// Submissions refused because the state was at its budget.
    pub over_budget_refusals: u64,
}

/// A handle on the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Change>,
    /// Woken when hours close, or the state is writable again, so that the sender looks for
    /// work.
    pub closed: Arc<Notify>,
    settled: Arc<Mutex<Settled>>,
    health: watch::Receiver<StateHealth>,
}

/// The most the state may hold before new reports are refused, and what it was last found to
/// hold.
#[derive(Debug, Clone)]
pub struct Budget {
    pub bytes: u64,
    /// The live bytes found when the file last reached the budget, and when.
    live: Option<(u64, SystemTime)>,
}

/// How long a measurement of the live bytes stands: measuring walks the whole database.
const LIVE_BYTES_RECHECK: Duration = Duration::from_secs(5);

impl Budget {
    pub fn new(bytes: u64) -> Budget {
        Budget { bytes, live: None }
    }

    /// The live bytes when they are at the budget, `None` while below. Below the budget the
    /// file's size (one `stat`) answers; only a file at the budget is measured inside, since
    /// pages freed by forgotten report IDs are reused before the file grows.
    fn reached(&mut self, store: &Store, now: SystemTime) -> Result<Option<u64>, StoreError> {
        if store.file_bytes() < self.bytes {
            self.live = None;
            return Ok(None);
        }
        let live = match self.live {
            Some((live, at)) if now < at + LIVE_BYTES_RECHECK => live,
            _ => {
                let live = store.live_bytes()?;
                self.live = Some((live, now));
                live
            }
        };
        Ok((live >= self.bytes).then_some(live))
    }
}

/// How hours close.
#[derive(Debug, Clone)]
pub struct Closing {
    pub dimensions: BTreeSet<String>,
    pub send_zero: bool,
    /// How the last hour, closed at shutdown, rounds the fraction left.
    pub final_fraction: Rounding,
}

impl Writer {
    /// Starts the writer thread, which owns `store` until every handle is dropped.
    pub fn start(store: Store, closing: Closing, budget: Budget, clock: Arc<dyn Clock>) -> Writer {
        let (queue, changes) = mpsc::channel(QUEUE);
        let (thread, writer) = Thread::new(store, closing, budget, clock, queue, changes);
        std::thread::Builder::new()
            .name("meter-writer".to_owned())
            .spawn(move || thread.run())
            .expect("a thread for the writer");
        writer
    }

    pub async fn submit(&self, reports: Vec<Report>) -> SubmitAnswer {
        self.ask(|answer| Change::Submit {
            reports,
            outcome: Err(Refused::Storage("not applied".to_owned())),
            answer,
        })
        .await?
    }

    pub async fn tick(&self) -> Result<(), Refused> {
        self.ask(|answer| Change::Tick { answer }).await?
    }

    /// Closes the accepting hour if its time has begun; returns the open hour left unclosed
    /// because it lies in the future (usage accepted after a restart within a closed hour).
    pub async fn close_for_shutdown(&self) -> Result<Option<u64>, Refused> {
        self.ask(|answer| Change::CloseForShutdown {
            future: None,
            answer,
        })
        .await?
    }

    pub async fn settle(
        &self,
        hour: u64,
        dimension: &str,
        record: HourRecord,
    ) -> Result<(), Refused> {
        let dimension = dimension.to_owned();
        self.ask(|answer| Change::Settle {
            hour,
            dimension,
            record,
            answer,
        })
        .await?
    }

    pub async fn carry(&self, hour: u64, dimension: &str) -> Result<(), Refused> {
        let dimension = dimension.to_owned();
        self.ask(|answer| Change::Carry {
            hour,
            dimension,
            answer,
        })
        .await?
    }

    /// What the writer last settled.
    pub fn settled(&self) -> Settled {
        lock(&self.settled).clone()
    }

    /// Whether the state can be written now.
    pub fn health(&self) -> StateHealth {
        self.health.borrow().clone()
    }

    /// Resolves once the state can be written (at once when it can).
    pub async fn writable(&self) {
        let mut health = self.health.clone();
        let _ = health
            .wait_for(|health| *health == StateHealth::Writable)
            .await;
    }

    /// Resolves when the writer gave up on an unwritable state: why, and after how long.
    pub async fn gave_up(&self) -> (String, Duration) {
        let mut health = self.health.clone();
        loop {
            if let Some(gave_up) = health.borrow_and_update().gave_up() {
                return gave_up;
            }
            if health.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    async fn ask<T>(
        &self,
        change: impl FnOnce(oneshot::Sender<T>) -> Change,
    ) -> Result<T, Refused> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(change(answer))
            .await
            .map_err(|_| Refused::Storage("the writer stopped".to_owned()))?;
        answered
            .await
            .map_err(|_| Refused::Storage("the writer stopped".to_owned()))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An unwritable state, as the writer tracks it.
#[derive(Debug)]
struct Failing {
    reason: String,
    since: Instant,
    /// Failed attempts to write again.
    attempts: u32,
    next: Instant,
    gave_up: bool,
}

impl Failing {
    /// The refusal of a change at `now`.
    fn refusal(&self, now: Instant) -> Refused {
        Refused::Unwritable {
            reason: self.reason.clone(),
            retry_after: self.next.saturating_duration_since(now),
        }
    }
}

/// The writer thread's state.
struct Thread {
    store: Store,
    closing: Closing,
    budget: Budget,
    clock: Arc<dyn Clock>,
    changes: mpsc::Receiver<Change>,
    closed: Arc<Notify>,
    settled: Arc<Mutex<Settled>>,
    health: watch::Sender<StateHealth>,
    failing: Option<Failing>,
    shutting_down: bool,
}

impl Thread {
    fn new(
        store: Store,
        closing: Closing,
        budget: Budget,
        clock: Arc<dyn Clock>,
        queue: mpsc::Sender<Change>,
        changes: mpsc::Receiver<Change>,
    ) -> (Thread, Writer) {
        let closed = Arc::new(Notify::new());
        let settled = Arc::new(Mutex::new(Settled::default()));
        let (health, health_seen) = watch::channel(StateHealth::Writable);
        let writer = Writer {
            queue,
            closed: closed.clone(),
            settled: settled.clone(),
            health: health_seen,
        };
        let thread = Thread {
            store,
            closing,
            budget,
            clock,
            changes,
            closed,
            settled,
            health,
            failing: None,
            shutting_down: false,
        };
        (thread, writer)
    }

    fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            if self.failing.is_some() {
                if !self.refuse_until_next_attempt() {
                    return;
                }
                self.recover(Instant::now());
                continue;
            }
            // Blocking here is the point: this thread does nothing but write.
            let Some(first) = self.changes.blocking_recv() else {
                return;
            };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match self.changes.try_recv() {
                    Ok(change) => batch.push(change),
                    Err(_) => break,
                }
            }
            self.write(&mut batch, Instant::now());
        }
    }

    /// Applies `batch` in one transaction and answers every change once it is durable; if the
    /// write fails, opens the state again and retries it once, and if that fails too, refuses
    /// the batch and marks the state unwritable (as of `now`).
    fn write(&mut self, batch: &mut Vec<Change>, now: Instant) {
        let time = self.clock.now();
        let sequence = self.store.commits() + 1;
        let shutting_down = self.shutting_down;
        let written = match self.apply(batch, time) {
            Ok(closed) => Ok(closed),
            Err(error) => {
                self.shutting_down = shutting_down;
                self.count_write_failure();
                tracing::warn!(error = %error, "a write of the state failed; it is opened again and the write retried at once if its volume has room");
                let retried = match self.short_of_room() {
                    Some(_) => Err(error),
                    None => self
                        .store
                        .reopen()
                        .and_then(|()| {
                            if self.store.commits() == sequence {
                                // The commit failed as it synced, yet reached the file: it is
                                // durable, and applying it again would count it twice.
                                self.shutting_down |= batch.iter().any(|change| {
                                    matches!(change, Change::CloseForShutdown { .. })
                                });
                                Ok(true)
                            } else {
                                self.apply(batch, time)
                            }
                        })
                        .inspect_err(|_| self.count_write_failure()),
                };
                if retried.is_err() {
                    self.shutting_down = shutting_down;
                }
                retried
            }
        };
        let refused = match written {
            Ok(hours_closed) => {
                self.publish_settled(time, batch.len() as u64);
                if hours_closed {
                    self.closed.notify_one();
                }
                None
            }
            Err(error) => Some(self.become_unwritable(&error, now)),
        };
        for change in batch.drain(..) {
            change.answer(refused.as_ref());
        }
    }

    /// Applies the changes in one transaction, noting each one's outcome in it, and commits;
    /// returns whether hours closed.
    fn apply(&mut self, batch: &mut [Change], now: SystemTime) -> Result<bool, StoreError> {
        let accepting = self.store.accepting_hour(now);
        let clock_hour = self.store.period().index_at(now);
        let over_budget = self.budget.reached(&self.store, now)?;
        let mut store_batch = self.store.batch()?;
        store_batch.forget_ids(now)?;
        // Hours whose time passed close before anything lands in the accepting hour.
        let mut closed = !store_batch
            .close(
                accepting,
                None,
                &self.closing.dimensions,
                self.closing.send_zero,
                Rounding::Down,
            )?
            .is_empty();
        if !self.shutting_down {
            store_batch.mark_open(accepting)?;
        }
        // Consecutive submissions are accepted together (the tables opened once), before the
        // next change of another kind, so that the order of changes is kept.
        let mut submissions: Vec<&mut Change> = Vec::new();
        for change in batch.iter_mut() {
            if !matches!(change, Change::Submit { .. }) {
                accept_all(&mut store_batch, &mut submissions, accepting, now)?;
            }
            match change {
                Change::Submit { outcome, .. } if self.shutting_down => {
                    *outcome = Err(Refused::ShuttingDown);
                }
                Change::Submit { outcome, .. } if over_budget.is_some() => {
                    let (live, budget) = (over_budget.unwrap_or_default(), self.budget.bytes);
                    let mut settled = lock(&self.settled);
                    if settled.over_budget_refusals == 0 || settled.state_bytes < budget {
                        tracing::warn!(live, budget,
                            "the state is at its budget: new reports are refused (503) until report ids older than the id window are forgotten; acknowledged usage is kept");
                    }
                    settled.over_budget_refusals += 1;
                    *outcome = Err(Refused::OverBudget { live, budget });
                }
                Change::Submit { .. } => submissions.push(change),
                Change::Tick { .. } => {}
                Change::CloseForShutdown { future, .. } => {
                    self.shutting_down = true;
                    // The accepting hour may lie after the clock's (usage after a restart
                    // within a closed hour): it cannot be reported before it begins.
                    let begun = accepting <= clock_hour;
                    *future = (!begun).then_some(accepting);
                    let also = begun.then_some(accepting);
                    closed |= !store_batch
                        .close(
                            accepting,
                            also,
                            &self.closing.dimensions,
                            self.closing.send_zero,
                            self.closing.final_fraction,
                        )?
                        .is_empty();
                }
                Change::Settle {
                    hour,
                    dimension,
                    record,
                    ..
                } => store_batch.settle(*hour, dimension, record)?,
                Change::Carry {
                    hour, dimension, ..
                } => store_batch.carry(*hour, dimension, accepting, now)?,
            }
        }
        accept_all(&mut store_batch, &mut submissions, accepting, now)?;
        store_batch.commit()?;
        Ok(closed)
    }

    /// Publishes the open hours after a commit that carried `changes`.
    fn publish_settled(&self, now: SystemTime, changes: u64) {
        let mut settled = lock(&self.settled);
        settled.commits += 1;
        settled.changes += changes;
        settled.state_bytes = self.store.file_bytes();
        settled.accepting_hour = self.store.accepting_hour(now);
        settled.open = self
            .store
            .open_hours()
            .iter()
            .flat_map(|(hour, dimensions)| {
                dimensions
                    .iter()
                    .map(move |(name, totals)| (*hour, name.clone(), totals.quantity))
            })
            .collect();
    }

    fn count_write_failure(&self) {
        lock(&self.settled).write_failures += 1;
    }

    /// Marks the state unwritable as of `now`; returns the refusal of what waits.
    fn become_unwritable(&mut self, error: &StoreError, now: Instant) -> Refused {
        tracing::error!(error = %error, limit_s = UNWRITABLE_LIMIT.as_secs(),
            "the state cannot be written: reports get 503 and /readyz fails until it can; it is opened again and retried with a backoff, and the sidecar exits to be restarted if that lasts the limit; nothing acknowledged is lost");
        let failing = Failing {
            reason: error.to_string(),
            since: now,
            attempts: 0,
            next: now + REOPEN_FIRST,
            gave_up: false,
        };
        let refusal = failing.refusal(now);
        self.failing = Some(failing);
        self.publish_health(now);
        refusal
    }

    /// Opens the unwritable state again and writes to it (closing the hours that passed): the
    /// state is writable again if that commits. Not tried while the volume has less than
    /// [`HEADROOM_BYTES`] free. Else the next attempt waits longer, and after
    /// [`UNWRITABLE_LIMIT`] the writer gives up.
    fn recover(&mut self, now: Instant) {
        let Some(mut failing) = self.failing.take() else {
            return;
        };
        if failing.gave_up {
            failing.next = now + REOPEN_CAP;
            self.failing = Some(failing);
            return;
        }
        let time = self.clock.now();
        let attempt = match self.short_of_room() {
            // The last failure stays the reason.
            Some(_) => Err(None),
            None => self
                .store
                .reopen()
                .and_then(|()| self.apply(&mut [], time))
                .map_err(Some),
        };
        match attempt {
            Ok(_) => {
                self.publish_settled(time, 0);
                tracing::info!(
                    unwritable_ms = (now - failing.since).as_millis() as u64,
                    attempts = failing.attempts + 1,
                    "the state is writable again: usage is accepted"
                );
                self.publish_health(now);
                // Hours may have closed meanwhile, and outcomes may wait to be recorded.
                self.closed.notify_one();
            }
            Err(error) => {
                if let Some(error) = error {
                    self.count_write_failure();
                    failing.reason = error.to_string();
                }
                failing.attempts += 1;
                failing.next = now + reopen_delay(failing.attempts);
                if now - failing.since >= UNWRITABLE_LIMIT {
                    failing.gave_up = true;
                    tracing::error!(error = %failing.reason, "the state stayed unwritable for the limit: giving up");
                }
                self.failing = Some(failing);
                self.publish_health(now);
            }
        }
    }

    /// The bytes free on the state's volume, when fewer than [`HEADROOM_BYTES`].
    fn short_of_room(&self) -> Option<u64> {
        self.store
            .free_bytes()
            .filter(|free| *free < HEADROOM_BYTES)
    }

    fn publish_health(&self, now: Instant) {
        let health = match &self.failing {
            None => StateHealth::Writable,
            Some(failing) if failing.gave_up => StateHealth::GaveUp {
                reason: failing.reason.clone(),
                after: now - failing.since,
            },
            Some(failing) => StateHealth::Unwritable {
                reason: failing.reason.clone(),
                retry_at: failing.next,
            },
        };
        self.health.send_replace(health);
    }

    /// Refuses every queued change until the next attempt to write is due; `false` once
    /// every handle is gone.
    fn refuse_until_next_attempt(&mut self) -> bool {
        loop {
            let now = Instant::now();
            let Some(failing) = &self.failing else {
                return true;
            };
            let next = failing.next;
            if now >= next {
                return true;
            }
            match self.changes.try_recv() {
                Ok(change) => change.answer(Some(&failing.refusal(now))),
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(REFUSE_EVERY.min(next - now));
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }
}

/// Accepts the submissions gathered so far into `hour`, in one pass over the store, and notes
/// each one's outcome in it.
fn accept_all(
    store_batch: &mut Batch<'_>,
    submissions: &mut Vec<&mut Change>,
    hour: u64,
    now: SystemTime,
) -> Result<(), StoreError> {
    if submissions.is_empty() {
        return Ok(());
    }
    let reports: Vec<&[Report]> = submissions
        .iter()
        .map(|change| match &**change {
            Change::Submit { reports, .. } => &reports[..],
            _ => &[],
        })
        .collect();
    let results = store_batch.accept(&reports, hour, now)?;
    for (change, result) in submissions.drain(..).zip(results) {
        if let Change::Submit { outcome, .. } = change {
            *outcome = Ok(result);
        }
    }
    Ok(())
}

/// `wait` as a `Retry-After`: whole seconds, at least 1.
pub fn retry_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// The wait after `attempts` failed attempts to write again: 100 ms doubling, at most 5 s.
fn reopen_delay(attempts: u32) -> Duration {
    REOPEN_FIRST
        .saturating_mul(1 << attempts.min(16))
        .min(REOPEN_CAP)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::UNIX_EPOCH;

    use redb::StorageBackend;

    use super::super::period::Period;
    use super::super::store::{Descriptor, Reader, StateFile, Volume};
    use super::*;
    use crate::domain::quantity::{Quantity, MICROS_PER_UNIT as UNIT};

    /// Report ids are remembered for an hour.
    const WINDOW: Duration = Duration::from_secs(3600);

    /// A clock the test moves: seconds since the epoch.
    struct TestClock(AtomicU64);

    impl Clock for TestClock {
        fn now(&self) -> SystemTime {
            UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
        }
    }

    /// What the disk does wrong, switched by the test.
    #[derive(Debug, Default)]
    struct Faults {
        /// Every write, and every growth of the file, fails with ENOSPC.
        full: AtomicBool,
        /// The next sync after the header (offset 0) was written fails with EIO: the commit
        /// reached the file, but its caller hears it failed.
        sync_fails_after_header: AtomicBool,
        /// What the file system reports free.
        free: AtomicU64,
    }

    /// A state file whose disk fails on demand; every database opened on it shares `faults`.
    struct TestDisk {
        state: StateFile,
        faults: Arc<Faults>,
    }

    impl TestDisk {
        fn new(dir: &Path) -> Arc<TestDisk> {
            let faults = Faults {
                free: AtomicU64::new(u64::MAX),
                ..Faults::default()
            };
            Arc::new(TestDisk {
                state: StateFile::lock(dir).unwrap(),
                faults: Arc::new(faults),
            })
        }
    }

    impl Volume for TestDisk {
        fn path(&self) -> &Path {
            self.state.path()
        }

        fn open(&self, builder: &redb::Builder) -> Result<redb::Database, redb::DatabaseError> {
            builder.create_with_backend(FaultyBackend {
                file: self.state.descriptor()?,
                faults: self.faults.clone(),
                header_written: AtomicBool::new(false),
            })
        }

        fn free_bytes(&self) -> Option<u64> {
            Some(self.faults.free.load(Ordering::SeqCst))
        }
    }

    #[derive(Debug)]
    struct FaultyBackend {
        file: Descriptor,
        faults: Arc<Faults>,
        header_written: AtomicBool,
    }

    fn full_disk() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::ENOSPC)
    }

    impl StorageBackend for FaultyBackend {
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.file.read(offset, out)
        }

        fn set_len(&self, len: u64) -> std::io::Result<()> {
            if self.faults.full.load(Ordering::SeqCst) && len > self.file.len()? {
                return Err(full_disk());
            }
            self.file.set_len(len)
        }

        fn sync_data(&self) -> std::io::Result<()> {
            if self.header_written.swap(false, Ordering::SeqCst)
                && self
                    .faults
                    .sync_fails_after_header
                    .swap(false, Ordering::SeqCst)
            {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            self.file.sync_data()
        }

        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            if self.faults.full.load(Ordering::SeqCst) {
                return Err(full_disk());
            }
            self.file.write(offset, data)?;
            if offset == 0 {
                self.header_written.store(true, Ordering::SeqCst);
            }
            Ok(())
        }
    }

    fn closing() -> Closing {
        Closing {
            dimensions: BTreeSet::from(["requests".to_owned()]),
            send_zero: true,
            final_fraction: Rounding::Down,
        }
    }

    fn thread_on(
        volume: Arc<dyn Volume>,
        seconds: u64,
    ) -> (Thread, Writer, Arc<TestClock>, Reader) {
        let clock = Arc::new(TestClock(AtomicU64::new(seconds)));
        let store = Store::open_on(volume, "prod", Period::HOUR, WINDOW).unwrap();
        let reader = store.reader();
        let (queue, changes) = mpsc::channel(1);
        let (thread, writer) = Thread::new(
            store,
            closing(),
            Budget::new(u64::MAX),
            clock.clone(),
            queue,
            changes,
        );
        (thread, writer, clock, reader)
    }

    fn thread_at(dir: &Path, seconds: u64) -> (Thread, Arc<TestClock>, Reader) {
        let (thread, _, clock, reader) = thread_on(TestDisk::new(dir), seconds);
        (thread, clock, reader)
    }

    /// A report of `units` whole units.
    fn submit(units: u64) -> (Change, oneshot::Receiver<SubmitAnswer>) {
        let (answer, answered) = oneshot::channel();
        let reports = vec![Report {
            dimension: "requests".to_owned(),
            quantity: Quantity::from_units(units),
            tags: Default::default(),
            id: None,
        }];
        let change = Change::Submit {
            reports,
            outcome: Err(Refused::Storage("not applied".to_owned())),
            answer,
        };
        (change, answered)
    }

    fn settle(hour: u64, record: HourRecord) -> (Change, oneshot::Receiver<Result<(), Refused>>) {
        let (answer, answered) = oneshot::channel();
        let change = Change::Settle {
            hour,
            dimension: "requests".to_owned(),
            record,
            answer,
        };
        (change, answered)
    }

    fn tick() -> Change {
        Change::Tick {
            answer: oneshot::channel().0,
        }
    }

    /// The whole units open in `hour`, as the writer last published them.
    fn open_in(thread: &Thread, hour: u64) -> u64 {
        lock(&thread.settled)
            .open
            .iter()
            .filter(|(open, _, _)| *open == hour)
            .map(|(_, _, micros)| micros / UNIT)
            .sum()
    }

    #[test]
    fn queued_reports_share_one_transaction_and_each_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut thread, _, _) = thread_at(dir.path(), 10 * 3600 + 5);
        let (mut batch, mut answers): (Vec<_>, Vec<_>) = (1..=100).map(submit).unzip();
        thread.write(&mut batch, Instant::now());
        for answer in &mut answers {
            let accepted = answer.try_recv().unwrap().unwrap().unwrap();
            assert_eq!((accepted.records, accepted.hour), (1, 10));
        }
        let settled = lock(&thread.settled).clone();
        assert_eq!((settled.commits, settled.changes), (1, 100));
        assert_eq!(settled.open, vec![(10, "requests".to_owned(), 5050 * UNIT)]);
    }

    #[test]
    fn a_passed_hour_closes_and_reports_after_a_shutdown_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut thread, clock, reader) = thread_at(dir.path(), 10 * 3600 + 5);
        let (change, _answer) = submit(7);
        thread.write(&mut vec![change], Instant::now());
        clock.0.store(11 * 3600 + 5, Ordering::SeqCst);
        thread.write(&mut vec![tick()], Instant::now());
        let unsent = reader.unsent().unwrap();
        assert_eq!(
            unsent
                .iter()
                .map(|u| (u.hour, u.quantity / UNIT))
                .collect::<Vec<_>>(),
            vec![(10, 7)]
        );

        let (close, mut closed) = oneshot::channel();
        let (late, mut refused) = submit(1);
        let close = Change::CloseForShutdown {
            future: None,
            answer: close,
        };
        thread.write(&mut vec![close, late], Instant::now());
        // Hour 11 has begun, so it closes (with a zero record): nothing is left in the future.
        assert_eq!(closed.try_recv().unwrap().unwrap(), None);
        assert!(matches!(
            refused.try_recv().unwrap(),
            Err(Refused::ShuttingDown)
        ));
        let hours: Vec<u64> = reader.unsent().unwrap().iter().map(|u| u.hour).collect();
        assert_eq!(hours, vec![10, 11]);
    }

    #[test]
    fn a_full_disk_refuses_reports_until_the_reopened_state_takes_a_write_again() {
        let dir = tempfile::tempdir().unwrap();
        let disk = TestDisk::new(dir.path());
        let (mut thread, writer, _, reader) = thread_on(disk.clone(), 10 * 3600 + 5);
        let started = Instant::now();
        let (change, mut five) = submit(5);
        thread.write(&mut vec![change], started);
        assert!(five.try_recv().unwrap().unwrap().is_ok());

        disk.faults.full.store(true, Ordering::SeqCst);
        let (change, mut seven) = submit(7);
        thread.write(&mut vec![change], started);
        let Err(Refused::Unwritable {
            reason,
            retry_after,
        }) = seven.try_recv().unwrap()
        else {
            panic!("a report on a full disk must be refused as unwritable");
        };
        assert!(reason.contains("No space left on device"), "{reason}");
        assert_eq!(retry_after, REOPEN_FIRST);
        let (problem, retry) = writer
            .health()
            .unwritable(started)
            .map(|(r, s)| (r.to_owned(), s))
            .unwrap();
        assert_eq!((problem.as_str(), retry), (reason.as_str(), 1));
        assert_eq!(
            lock(&thread.settled).write_failures,
            2,
            "the write and its retry"
        );

        // Still full: each attempt fails, and the next waits twice as long, up to 5 s.
        let mut at = started + REOPEN_FIRST;
        for wait in [200, 400, 800, 1600, 3200, 5000, 5000] {
            thread.recover(at);
            let StateHealth::Unwritable { retry_at, .. } = writer.health() else {
                panic!("still unwritable");
            };
            assert_eq!(retry_at - at, Duration::from_millis(wait));
            at = retry_at;
        }
        // Changes meanwhile are refused at once, naming when to try again.
        let (change, mut refused) = submit(11);
        change.answer(Some(&thread.failing.as_ref().unwrap().refusal(at)));
        assert!(matches!(
            refused.try_recv().unwrap(),
            Err(Refused::Unwritable { .. })
        ));

        disk.faults.full.store(false, Ordering::SeqCst);
        thread.recover(at);
        assert_eq!(writer.health(), StateHealth::Writable);
        let (change, mut eleven) = submit(11);
        thread.write(&mut vec![change], at);
        assert!(eleven.try_recv().unwrap().unwrap().is_ok());
        // Exactly what was acknowledged: 5 and 11, not the refused 7.
        assert_eq!(open_in(&thread, 10), 16);
        assert!(reader.unsent().unwrap().is_empty());
        drop((thread, reader, disk));
        let reopened = Store::open(dir.path(), "prod", Period::HOUR, WINDOW).unwrap();
        assert_eq!(reopened.open_hours()[&10]["requests"].quantity, 16 * UNIT);
    }

    #[test]
    fn a_volume_short_of_room_is_not_written_to_until_it_has_the_headroom() {
        let dir = tempfile::tempdir().unwrap();
        let disk = TestDisk::new(dir.path());
        let (mut thread, writer, _, _) = thread_on(disk.clone(), 10 * 3600 + 5);
        let started = Instant::now();
        disk.faults.full.store(true, Ordering::SeqCst);
        disk.faults.free.store(4096, Ordering::SeqCst);
        let (change, mut refused) = submit(1);
        thread.write(&mut vec![change], started);
        assert!(matches!(
            refused.try_recv().unwrap(),
            Err(Refused::Unwritable { .. })
        ));
        assert_eq!(
            lock(&thread.settled).write_failures,
            1,
            "no retry on a volume short of room"
        );
        // A small write would fit now, but too little is free for the next ones.
        disk.faults.full.store(false, Ordering::SeqCst);
        disk.faults.free.store(HEADROOM_BYTES - 1, Ordering::SeqCst);
        thread.recover(started + REOPEN_FIRST);
        let StateHealth::Unwritable { reason, .. } = writer.health() else {
            panic!("written to a volume short of room");
        };
        assert!(reason.contains("No space left on device"), "{reason}");
        disk.faults.free.store(HEADROOM_BYTES, Ordering::SeqCst);
        thread.recover(started + REOPEN_FIRST * 3);
        assert_eq!(writer.health(), StateHealth::Writable);
    }

    #[test]
    fn an_unwritable_state_is_given_up_after_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let disk = TestDisk::new(dir.path());
        let (mut thread, writer, _, _) = thread_on(disk.clone(), 10 * 3600 + 5);
        let started = Instant::now();
        disk.faults.full.store(true, Ordering::SeqCst);
        thread.write(&mut vec![submit(1).0], started);
        thread.recover(started + UNWRITABLE_LIMIT - Duration::from_secs(1));
        assert!(matches!(writer.health(), StateHealth::Unwritable { .. }));
        thread.recover(started + UNWRITABLE_LIMIT);
        let StateHealth::GaveUp { reason, after } = writer.health() else {
            panic!("not given up after the limit");
        };
        assert!(reason.contains("No space left on device"), "{reason}");
        assert_eq!(after, UNWRITABLE_LIMIT);
        let gave_up = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(writer.gave_up());
        assert_eq!(gave_up, (reason, UNWRITABLE_LIMIT));
    }

    #[test]
    fn an_outcome_that_cannot_be_recorded_leaves_the_hour_in_doubt() {
        let dir = tempfile::tempdir().unwrap();
        let disk = TestDisk::new(dir.path());
        let (mut thread, writer, clock, reader) = thread_on(disk.clone(), 10 * 3600 + 5);
        let now = Instant::now();
        thread.write(&mut vec![submit(5).0], now);
        clock.0.store(11 * 3600 + 5, Ordering::SeqCst);
        thread.write(&mut vec![tick()], now);
        // Marked in doubt before the request leaves ...
        let doubt = HourRecord::Unsent {
            quantity: 5,
            attempts: 0,
            last_error: None,
            in_doubt: true,
        };
        let (change, mut marked) = settle(10, doubt);
        thread.write(&mut vec![change], now);
        assert!(marked.try_recv().unwrap().is_ok());
        // ... then AWS's receipt cannot be recorded.
        disk.faults.full.store(true, Ordering::SeqCst);
        let sent = HourRecord::Sent {
            quantity: 5,
            record_id: "r".to_owned(),
            sent_at: 1,
        };
        let (change, mut recorded) = settle(10, sent);
        thread.write(&mut vec![change], now);
        assert!(matches!(
            recorded.try_recv().unwrap(),
            Err(Refused::Unwritable { .. })
        ));
        disk.faults.full.store(false, Ordering::SeqCst);
        thread.recover(now + REOPEN_FIRST);
        assert_eq!(writer.health(), StateHealth::Writable);
        // Still unsent and in doubt: resent under its token, or never carried.
        let unsent = reader.unsent().unwrap();
        assert_eq!(unsent.len(), 1);
        assert_eq!((unsent[0].hour, unsent[0].in_doubt), (10, true));
    }

    #[test]
    fn a_commit_reported_failed_that_reached_the_file_is_acknowledged_once() {
        let dir = tempfile::tempdir().unwrap();
        let disk = TestDisk::new(dir.path());
        let (mut thread, writer, _, _) = thread_on(disk.clone(), 10 * 3600 + 5);
        disk.faults
            .sync_fails_after_header
            .store(true, Ordering::SeqCst);
        let (change, mut five) = submit(5);
        thread.write(&mut vec![change], Instant::now());
        assert!(
            five.try_recv().unwrap().unwrap().is_ok(),
            "it is durable: acknowledged"
        );
        assert_eq!(lock(&thread.settled).write_failures, 1);
        assert_eq!(writer.health(), StateHealth::Writable);
        // Counted once: retrying it would have made 10.
        assert_eq!(open_in(&thread, 10), 5);
    }

    #[test]
    fn a_state_at_its_budget_refuses_new_reports_whole_and_still_closes_hours() {
        let dir = tempfile::tempdir().unwrap();
        let (mut thread, clock, reader) = thread_at(dir.path(), 10 * 3600 + 5);
        let (change, mut accepted) = submit(7);
        thread.write(&mut vec![change], Instant::now());
        assert!(accepted.try_recv().unwrap().unwrap().is_ok());
        // Whatever the file holds now is over a budget of one page.
        thread.budget = Budget::new(4096);
        let (change, mut refused) = submit(1);
        thread.write(&mut vec![change], Instant::now());
        match refused.try_recv().unwrap() {
            Err(Refused::OverBudget { live, budget }) => {
                assert!(live >= budget, "{live} {budget}")
            }
            other => panic!("not refused for the budget: {other:?}"),
        }
        assert_eq!(lock(&thread.settled).over_budget_refusals, 1);
        assert_eq!(open_in(&thread, 10), 7, "nothing of it recorded");
        // Closing an hour is never refused: acknowledged usage moves on to be sent.
        clock.0.store(11 * 3600 + 5, Ordering::SeqCst);
        thread.write(&mut vec![tick()], Instant::now());
        assert_eq!(reader.unsent().unwrap()[0].quantity, 7 * UNIT);
    }
}
