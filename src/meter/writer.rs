//! The one writer of the state: a thread that takes every change from a queue and commits what
//! has queued up meanwhile in one transaction, with one sync (group commit), then answers each
//! sender. Concurrent reports so share a sync, and none is acknowledged before it is durable.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot, Notify};

use super::billing::Rounding;
use super::report::{Invalid, Report};
use super::store::{Accepted, Batch, HourRecord, Store, StoreError};
use crate::domain::time::Clock;

/// The most changes one transaction takes: enough to share a sync widely, few enough that a
/// transaction's answers are not held back long.
const MAX_BATCH: usize = 512;
/// The most changes waiting for the writer; a full queue slows the HTTP handlers down.
const QUEUE: usize = 4096;

/// A submission's answer: durable (or refused as invalid, recording nothing), or not taken.
type SubmitAnswer = Result<Result<Accepted, Invalid>, Refused>;

/// A change to the state, with where its answer goes.
enum Change {
    Submit {
        reports: Vec<Report>,
        answer: oneshot::Sender<SubmitAnswer>,
    },
    /// Close hours whose time has passed.
    Tick {
        answer: oneshot::Sender<Result<(), Refused>>,
    },
    /// Close the accepting hour now and take no more reports: the sidecar is stopping.
    CloseForShutdown {
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

/// Why the writer did not take a change.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    #[error("the sidecar is shutting down")]
    ShuttingDown,
    /// Accepting more would take the state past its budget: nothing of the submission was
    /// recorded; acknowledged usage is never dropped to make room.
    #[error("the state holds {live} bytes, at its budget of {budget} bytes (--state-budget)")]
    OverBudget { live: u64, budget: u64 },
    #[error("the state could not be written: {0}")]
    Storage(String),
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
    /// The state file's size after the last commit.
    pub state_bytes: u64,
    /// Submissions refused because the state was at its budget.
    pub over_budget_refusals: u64,
}

/// A handle on the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Change>,
    /// Woken when hours close, so that the sender looks for work.
    pub closed: Arc<Notify>,
    settled: Arc<Mutex<Settled>>,
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
const LIVE_BYTES_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

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
        let closed = Arc::new(Notify::new());
        let settled = Arc::new(Mutex::new(Settled::default()));
        let thread = Thread {
            store,
            closing,
            budget,
            clock,
            changes,
            closed: closed.clone(),
            settled: settled.clone(),
            shutting_down: false,
        };
        std::thread::Builder::new()
            .name("meter-writer".to_owned())
            .spawn(move || thread.run())
            .expect("a thread for the writer");
        Writer {
            queue,
            closed,
            settled,
        }
    }

    pub async fn submit(&self, reports: Vec<Report>) -> SubmitAnswer {
        self.ask(|answer| Change::Submit { reports, answer })
            .await?
    }

    pub async fn tick(&self) -> Result<(), Refused> {
        self.ask(|answer| Change::Tick { answer }).await?
    }

    /// Closes the accepting hour if its time has begun; returns the open hour left unclosed
    /// because it lies in the future (usage accepted after a restart within a closed hour).
    pub async fn close_for_shutdown(&self) -> Result<Option<u64>, Refused> {
        self.ask(|answer| Change::CloseForShutdown { answer })
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

/// The writer thread's state.
struct Thread {
    store: Store,
    closing: Closing,
    budget: Budget,
    clock: Arc<dyn Clock>,
    changes: mpsc::Receiver<Change>,
    closed: Arc<Notify>,
    settled: Arc<Mutex<Settled>>,
    shutting_down: bool,
}

/// A change applied in the open transaction, waiting for the commit to be answered.
enum Applied {
    Submit(oneshot::Sender<SubmitAnswer>, Result<Accepted, Invalid>),
    Done(oneshot::Sender<Result<(), Refused>>),
    Closed(oneshot::Sender<Result<Option<u64>, Refused>>, Option<u64>),
    /// Answered already (refused before it reached the transaction).
    Answered,
}

impl Thread {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // Blocking here is the point: this thread does nothing but write.
        while let Some(first) = self.changes.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match self.changes.try_recv() {
                    Ok(change) => batch.push(change),
                    Err(_) => break,
                }
            }
            self.write(&mut batch);
        }
    }

    /// Applies `batch` in one transaction and answers every change once it is durable (or
    /// with the reason it is not).
    fn write(&mut self, batch: &mut Vec<Change>) {
        let now = self.clock.now();
        let changes = batch.len() as u64;
        let mut applied = Vec::with_capacity(batch.len());
        let outcome = self.apply(batch, now, &mut applied);
        // Changes the failure left unapplied drop their answer: their senders hear the writer
        // refused them.
        batch.clear();
        match outcome {
            Ok(hours_closed) => {
                {
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
                if hours_closed {
                    self.closed.notify_one();
                }
                for change in applied {
                    match change {
                        Applied::Submit(answer, result) => {
                            let _ = answer.send(Ok(result));
                        }
                        Applied::Done(answer) => {
                            let _ = answer.send(Ok(()));
                        }
                        Applied::Closed(answer, future) => {
                            let _ = answer.send(Ok(future));
                        }
                        Applied::Answered => {}
                    }
                }
            }
            Err(error) => {
                let refused = Refused::Storage(error.to_string());
                tracing::error!(error = %error, "the state could not be written; nothing of this batch was acknowledged");
                // The transaction did not commit: the view of open hours must not keep its
                // changes either.
                if let Err(error) = self.store.load_open() {
                    tracing::error!(error = %error, "the state cannot be read back");
                }
                for change in applied {
                    match change {
                        Applied::Submit(answer, _) => {
                            let _ = answer.send(Err(refused.clone()));
                        }
                        Applied::Done(answer) => {
                            let _ = answer.send(Err(refused.clone()));
                        }
                        Applied::Closed(answer, _) => {
                            let _ = answer.send(Err(refused.clone()));
                        }
                        Applied::Answered => {}
                    }
                }
            }
        }
    }

    /// Applies the changes in one transaction and commits it; returns whether hours closed.
    fn apply(
        &mut self,
        batch: &mut Vec<Change>,
        now: SystemTime,
        applied: &mut Vec<Applied>,
    ) -> Result<bool, StoreError> {
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
        let mut submissions: Vec<(Vec<Report>, oneshot::Sender<SubmitAnswer>)> = Vec::new();
        for change in batch.drain(..) {
            if !matches!(change, Change::Submit { .. }) {
                accept_all(&mut store_batch, &mut submissions, accepting, now, applied)?;
            }
            match change {
                Change::Submit { reports, answer } => {
                    if self.shutting_down {
                        let _ = answer.send(Err(Refused::ShuttingDown));
                        applied.push(Applied::Answered);
                        continue;
                    }
                    if let Some(live) = over_budget {
                        let budget = self.budget.bytes;
                        let mut settled = lock(&self.settled);
                        if settled.over_budget_refusals == 0 || settled.state_bytes < budget {
                            tracing::warn!(live, budget,
                                "the state is at its budget: new reports are refused (503) until report ids older than the id window are forgotten; acknowledged usage is kept");
                        }
                        settled.over_budget_refusals += 1;
                        drop(settled);
                        let _ = answer.send(Err(Refused::OverBudget { live, budget }));
                        applied.push(Applied::Answered);
                        continue;
                    }
                    submissions.push((reports, answer));
                }
                Change::Tick { answer } => applied.push(Applied::Done(answer)),
                Change::CloseForShutdown { answer } => {
                    self.shutting_down = true;
                    // The accepting hour may lie after the clock's (usage after a restart
                    // within a closed hour): it cannot be reported before it begins.
                    let begun = accepting <= clock_hour;
                    let future = (!begun).then_some(accepting);
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
                    applied.push(Applied::Closed(answer, future));
                }
                Change::Settle {
                    hour,
                    dimension,
                    record,
                    answer,
                } => {
                    store_batch.settle(hour, &dimension, &record)?;
                    applied.push(Applied::Done(answer));
                }
                Change::Carry {
                    hour,
                    dimension,
                    answer,
                } => {
                    store_batch.carry(hour, &dimension, accepting, now)?;
                    applied.push(Applied::Done(answer));
                }
            }
        }
        accept_all(&mut store_batch, &mut submissions, accepting, now, applied)?;
        store_batch.commit()?;
        Ok(closed)
    }
}

/// Accepts the submissions gathered so far into `hour`, in one pass over the store.
fn accept_all(
    store_batch: &mut Batch<'_>,
    submissions: &mut Vec<(Vec<Report>, oneshot::Sender<SubmitAnswer>)>,
    hour: u64,
    now: SystemTime,
    applied: &mut Vec<Applied>,
) -> Result<(), StoreError> {
    if submissions.is_empty() {
        return Ok(());
    }
    let reports: Vec<&[Report]> = submissions
        .iter()
        .map(|(reports, _)| &reports[..])
        .collect();
    let results = store_batch.accept(&reports, hour, now)?;
    for ((_, answer), result) in submissions.drain(..).zip(results) {
        applied.push(Applied::Submit(answer, result));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, UNIX_EPOCH};

    use super::super::period::Period;
    use super::*;
    use crate::domain::quantity::Quantity;

    /// A clock the test moves: seconds since the epoch.
    struct TestClock(AtomicU64);

    impl Clock for TestClock {
        fn now(&self) -> SystemTime {
            UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
        }
    }

    fn thread_at(dir: &std::path::Path, seconds: u64) -> (Thread, Arc<TestClock>) {
        let clock = Arc::new(TestClock(AtomicU64::new(seconds)));
        let (_queue, changes) = mpsc::channel(1);
        let thread = Thread {
            budget: Budget::new(u64::MAX),
            store: Store::open(dir, "prod", Period::HOUR, Duration::from_secs(3600)).unwrap(),
            closing: Closing {
                dimensions: BTreeSet::from(["requests".to_owned()]),
                send_zero: true,
                final_fraction: Rounding::Down,
            },
            clock: clock.clone(),
            changes,
            closed: Arc::new(Notify::new()),
            settled: Arc::new(Mutex::new(Settled::default())),
            shutting_down: false,
        };
        (thread, clock)
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
        (Change::Submit { reports, answer }, answered)
    }

    #[test]
    fn queued_reports_share_one_transaction_and_each_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut thread, _) = thread_at(dir.path(), 10 * 3600 + 5);
        let (mut batch, mut answers): (Vec<_>, Vec<_>) = (1..=100).map(submit).unzip();
        thread.write(&mut batch);
        for answer in &mut answers {
            let accepted = answer.try_recv().unwrap().unwrap().unwrap();
            assert_eq!((accepted.records, accepted.hour), (1, 10));
        }
        let settled = lock(&thread.settled).clone();
        assert_eq!((settled.commits, settled.changes), (1, 100));
        assert_eq!(
            settled.open,
            vec![(10, "requests".to_owned(), 5050 * 1_000_000)]
        );
    }

    #[test]
    fn a_passed_hour_closes_and_reports_after_a_shutdown_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut thread, clock) = thread_at(dir.path(), 10 * 3600 + 5);
        let reader = thread.store.reader();
        let (change, _answer) = submit(7);
        thread.write(&mut vec![change]);
        clock.0.store(11 * 3600 + 5, Ordering::SeqCst);
        let (tick, _ticked) = oneshot::channel();
        thread.write(&mut vec![Change::Tick { answer: tick }]);
        let unsent = reader.unsent().unwrap();
        assert_eq!(
            unsent
                .iter()
                .map(|u| (u.hour, u.quantity))
                .collect::<Vec<_>>(),
            vec![(10, 7_000_000)]
        );

        let (close, mut closed) = oneshot::channel();
        let (late, mut refused) = submit(1);
        thread.write(&mut vec![Change::CloseForShutdown { answer: close }, late]);
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
    fn a_state_at_its_budget_refuses_new_reports_whole_and_still_closes_hours() {
        let dir = tempfile::tempdir().unwrap();
        let (mut thread, clock) = thread_at(dir.path(), 10 * 3600 + 5);
        let (change, mut accepted) = submit(7);
        thread.write(&mut vec![change]);
        assert!(accepted.try_recv().unwrap().unwrap().is_ok());
        // Whatever the file holds now is over a budget of one page.
        thread.budget = Budget::new(4096);
        let (change, mut refused) = submit(1);
        thread.write(&mut vec![change]);
        match refused.try_recv().unwrap() {
            Err(Refused::OverBudget { live, budget }) => assert!(live >= budget, "{live} {budget}"),
            other => panic!("not refused for the budget: {other:?}"),
        }
        let settled = lock(&thread.settled).clone();
        assert_eq!(settled.over_budget_refusals, 1);
        assert_eq!(
            settled.open,
            vec![(10, "requests".to_owned(), 7_000_000)],
            "nothing of it recorded"
        );
        // Closing an hour is never refused: acknowledged usage moves on to be sent.
        clock.0.store(11 * 3600 + 5, Ordering::SeqCst);
        let (tick, mut ticked) = oneshot::channel();
        thread.write(&mut vec![Change::Tick { answer: tick }]);
        assert!(ticked.try_recv().unwrap().is_ok());
        assert_eq!(
            thread.store.reader().unsent().unwrap()[0].quantity,
            7_000_000
        );
    }
}
