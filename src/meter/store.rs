//! The state directory: acknowledged usage and what became of each hour, in a redb database
//! (one file, transactional, crash-safe, locked against a second process).
//!
//! Usage is kept aggregated per (hour, dimension, tag set), so the file stays small whatever the
//! report rate. An hour is *open* until it closes (its time passed, or the sidecar stops);
//! each closed (hour, dimension) then has a record: unsent, sent (with AWS's record ID),
//! refused as a duplicate, carried into a later hour, or left in doubt (AWS may hold it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rand::rngs::OsRng;
use rand::TryRngCore as _;
use redb::{
    Database, Durability, ReadableDatabase as _, ReadableTable, StorageBackend, TableDefinition,
};
use serde::{Deserialize, Serialize};

use super::period::Period;
use super::report::{self, Report, Tags, MAX_ALLOCATIONS, MAX_QUANTITY};
use crate::domain::time::epoch_seconds;

/// `(hour, dimension, tag set key)` to the quantity acknowledged.
const USAGE: TableDefinition<(u64, &str, &str), u64> = TableDefinition::new("usage");
/// `(hour, dimension)` to the JSON of its [`HourRecord`], for closed hours.
const HOURS: TableDefinition<(u64, &str), &str> = TableDefinition::new("hours");
/// A client's report ID to the hour it was counted in: resending it counts nothing.
const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen");
/// The same IDs by hour, so that old ones can be forgotten cheaply.
const SEEN_BY_HOUR: TableDefinition<(u64, &str), ()> = TableDefinition::new("seen_by_hour");
/// Who this state belongs to, and how far it got.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// The database file inside the state directory.
pub const FILE_NAME: &str = "meter.redb";
/// The read cache: the hot data (open hours) is small, and RSS stays low.
const CACHE_BYTES: usize = 4 << 20;
/// How many periods a report ID is remembered, so a resent report is not counted twice.
pub const REMEMBERED_PERIODS: u64 = 7;
/// How many periods a closed hour's record is kept for status once it is settled.
const SETTLED_KEPT_PERIODS: u64 = 48;

/// Why the state directory cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state in {} is in use by another process (another sidecar on the same directory would count usage twice)", path.display())]
    InUse { path: PathBuf },
    #[error("the state in {} belongs to product {found}, not {expected}", path.display())]
    OtherProduct {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("the state in {} was written with a {found} s period, not {expected} s", path.display())]
    OtherPeriod {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("the state in {} cannot be used: {detail}", path.display())]
    Storage { path: PathBuf, detail: String },
    /// The disk refused a read or write (full, or failing): redb then refuses every write until
    /// the database is opened again.
    #[error("the state in {} cannot be written: {detail}", path.display())]
    Unwritable { path: PathBuf, detail: String },
}

/// What became of a closed (hour, dimension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum HourRecord {
    /// Closed, to be sent.
    Unsent {
        quantity: u64,
        attempts: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_error: Option<String>,
        /// Set (durably) before every attempt, and cleared only by an answer proving AWS did
        /// not record it: once set, AWS may hold this hour, and only its own answer settles it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        in_doubt: bool,
    },
    Sent {
        quantity: u64,
        record_id: String,
        sent_at: u64,
    },
    /// AWS already holds another quantity for this hour: surfaced, never resent.
    Duplicate {
        quantity: u64,
        message: String,
        at: u64,
    },
    /// About to leave MeterUsage's window unsent: its usage moved to a later hour.
    Carried { quantity: u64, into: u64, at: u64 },
    /// Left MeterUsage's window after an attempt whose answer never came and with no answer
    /// since: AWS may hold it. Not carried (that could bill it twice) and not resent (AWS would
    /// refuse it); its quantity is reported for the seller to reconcile with AWS's reports.
    InDoubt { quantity: u64, at: u64 },
}

impl HourRecord {
    fn is_settled(&self) -> bool {
        !matches!(self, HourRecord::Unsent { .. })
    }
}

/// A closed hour of one dimension still to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsent {
    pub hour: u64,
    pub dimension: String,
    pub quantity: u64,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub in_doubt: bool,
}

/// The totals of one dimension in one open hour, for the limit checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub quantity: u64,
    /// Tag set keys with usage (the untagged set is `""`).
    pub tag_sets: BTreeSet<String>,
}

impl Totals {
    /// The `UsageAllocations` this would need: none without tags, else one per tag set.
    pub fn allocations(&self) -> usize {
        if self.tag_sets.iter().all(String::is_empty) {
            0
        } else {
            self.tag_sets.len()
        }
    }
}

/// What a submission added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Records now durable: counted now, or before (duplicates).
    pub records: usize,
    /// Records whose ID was already counted: durable, not counted again.
    pub duplicates: usize,
    pub hour: u64,
    /// Reports and quantity counted, by dimension.
    pub counted: BTreeMap<String, (u64, u64)>,
}

/// Where the state's database lives; opened again after a write failed.
pub trait Volume: Send + Sync + 'static {
    /// The database file, for messages.
    fn path(&self) -> &Path;

    /// A database on the file, through a descriptor of its own.
    fn open(&self, builder: &redb::Builder) -> Result<Database, redb::DatabaseError>;

    /// Bytes this process may still write on the file's file system, when known.
    fn free_bytes(&self) -> Option<u64>;
}

/// The state file, locked (`flock`) for this process for as long as it runs. Every database
/// opened on it (the first, and each one after a write failed) works through a duplicate of the
/// locked descriptor and takes no lock of its own, so reopening never releases the lock and no
/// other process can open the state in between. (redb's own file backend would release its
/// locks as the failed database closes.) A sidecar of an earlier version, which locks with
/// redb's backend, is refused by this lock too: that backend also takes `flock` on the file.
pub struct StateFile {
    path: PathBuf,
    file: std::fs::File,
}

impl StateFile {
    /// Creates the state directory if needed and locks the state file in it (creating it).
    pub fn lock(dir: &Path) -> Result<StateFile, StoreError> {
        let path = dir.join(FILE_NAME);
        let storage = |detail: String| StoreError::Storage {
            path: path.clone(),
            detail,
        };
        // The volume is usually mounted already; a missing directory (a local run) is made,
        // readable by this user only.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .map_err(|e| storage(e.to_string()))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| storage(e.to_string()))?;
        // SAFETY: flock on a descriptor this function owns.
        let locked = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if locked != 0 {
            let error = std::io::Error::last_os_error();
            return Err(match error.raw_os_error() {
                Some(libc::EWOULDBLOCK) => StoreError::InUse { path },
                _ => storage(format!("cannot lock it: {error}")),
            });
        }
        Ok(StateFile { path, file })
    }

    /// A duplicate of the locked descriptor, for one database.
    pub fn descriptor(&self) -> std::io::Result<Descriptor> {
        self.file.try_clone().map(Descriptor)
    }
}

impl Volume for StateFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self, builder: &redb::Builder) -> Result<Database, redb::DatabaseError> {
        builder.create_with_backend(self.descriptor()?)
    }

    fn free_bytes(&self) -> Option<u64> {
        // SAFETY: fstatvfs fills the struct it is given, for a descriptor this value owns.
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        let read =
            unsafe { libc::fstatvfs(std::os::fd::AsRawFd::as_raw_fd(&self.file), &mut stats) };
        (read == 0).then(|| stats.f_bavail.saturating_mul(stats.f_frsize))
    }
}

/// Reads and writes a file at offsets, taking no lock: the [`StateFile`] holds it.
#[derive(Debug)]
pub struct Descriptor(std::fs::File);

impl StorageBackend for Descriptor {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write_all_at(data, offset)
    }
}

/// The database in use, shared by the writer and the readers; empty while the writer reopens
/// it. Readers hold a clone only while they read, so the writer can wait them out.
type Current = Arc<RwLock<Option<Arc<Database>>>>;

/// The state, open for this process alone.
pub struct Store {
    volume: Arc<dyn Volume>,
    current: Current,
    path: PathBuf,
    period: Period,
    pub instance_id: String,
    /// The last closed hour, if any.
    last_closed: Option<u64>,
    /// Transactions committed over the state's life; each commit also writes its number, so
    /// that after a failed commit the reopened file shows whether it landed.
    commits: u64,
    /// Open hours (the accepting one, and later ones usage was carried into) by dimension.
    open: BTreeMap<u64, BTreeMap<String, Totals>>,
}

/// Who a state belongs to and how far it got, as its `meta` table says.
struct Meta {
    instance_id: Option<String>,
    product_code: Option<String>,
    period: Option<String>,
    last_closed: Option<u64>,
    commits: u64,
}

impl Meta {
    fn read(
        table: &impl ReadableTable<&'static str, &'static str>,
    ) -> Result<Meta, redb::StorageError> {
        let read = |key: &str| {
            table
                .get(key)
                .map(|value| value.map(|v| v.value().to_owned()))
        };
        Ok(Meta {
            instance_id: read("instance_id")?,
            product_code: read("product_code")?,
            period: read("period")?,
            last_closed: read("last_closed")?.and_then(|hour| hour.parse().ok()),
            commits: read("commits")?.and_then(|n| n.parse().ok()).unwrap_or(0),
        })
    }
}

fn builder() -> redb::Builder {
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    builder
}

impl Store {
    /// Opens (or creates) the state in `dir` for `product_code` and `period`; the first open
    /// draws the instance ID every MeterUsage `ClientToken` of this state derives from.
    pub fn open(dir: &Path, product_code: &str, period: Period) -> Result<Store, StoreError> {
        Store::open_on(Arc::new(StateFile::lock(dir)?), product_code, period)
    }

    /// Opens (or creates) the state on `volume`.
    pub fn open_on(
        volume: Arc<dyn Volume>,
        product_code: &str,
        period: Period,
    ) -> Result<Store, StoreError> {
        let path = volume.path().to_owned();
        let storage = |detail: String| StoreError::Storage {
            path: path.clone(),
            detail,
        };
        let db = volume.open(&builder()).map_err(|e| failed(&path, e))?;
        let txn = db.begin_write().map_err(|e| failed(&path, e))?;
        let meta = {
            let mut table = txn.open_table(META).map_err(|e| failed(&path, e))?;
            let meta = Meta::read(&table).map_err(|e| failed(&path, e))?;
            match (&meta.instance_id, &meta.product_code, &meta.period) {
                (Some(_), Some(product), Some(seconds)) => {
                    if product != product_code {
                        return Err(StoreError::OtherProduct {
                            path,
                            found: product.clone(),
                            expected: product_code.to_owned(),
                        });
                    }
                    let seconds: u64 = seconds.parse().unwrap_or(0);
                    if seconds != period.seconds() {
                        return Err(StoreError::OtherPeriod {
                            path,
                            found: seconds,
                            expected: period.seconds(),
                        });
                    }
                    meta
                }
                _ => {
                    let id = new_instance_id().map_err(storage)?;
                    for (key, value) in [
                        ("instance_id", id.as_str()),
                        ("product_code", product_code),
                        ("period", &period.seconds().to_string()),
                    ] {
                        table.insert(key, value).map_err(|e| failed(&path, e))?;
                    }
                    Meta {
                        instance_id: Some(id),
                        ..meta
                    }
                }
            }
        };
        txn.commit().map_err(|e| failed(&path, e))?;
        let mut store = Store {
            volume,
            current: Arc::new(RwLock::new(Some(Arc::new(db)))),
            path,
            period,
            instance_id: meta.instance_id.unwrap_or_default(),
            last_closed: meta.last_closed,
            commits: meta.commits,
            open: BTreeMap::new(),
        };
        store.load_open()?;
        Ok(store)
    }

    /// Opens the state again after a write failed: redb refuses every write after an I/O error
    /// until the database is opened anew (and repairs the file as it opens). Waits for readers
    /// to finish with the old database first, then reloads everything from the file, which
    /// holds every commit that landed and nothing else.
    pub fn reopen(&mut self) -> Result<(), StoreError> {
        let old = write(&self.current).take();
        if let Some(mut old) = old {
            // Readers hold it only for one read.
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => break drop(db),
                    Err(still_read) => {
                        old = still_read;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            }
        }
        let db = self
            .volume
            .open(&builder())
            .map_err(|e| failed(&self.path, e))?;
        let meta = {
            let txn = db.begin_read().map_err(|e| failed(&self.path, e))?;
            let table = txn.open_table(META).map_err(|e| failed(&self.path, e))?;
            Meta::read(&table).map_err(|e| failed(&self.path, e))?
        };
        if meta.instance_id.as_deref() != Some(self.instance_id.as_str()) {
            return Err(StoreError::Storage {
                path: self.path.clone(),
                detail: "the file was replaced while the sidecar ran".to_owned(),
            });
        }
        *write(&self.current) = Some(Arc::new(db));
        self.last_closed = meta.last_closed;
        self.commits = meta.commits;
        self.load_open()
    }

    /// Transactions committed over the state's life.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Bytes the state may still grow by on its volume, when known.
    pub fn free_bytes(&self) -> Option<u64> {
        self.volume.free_bytes()
    }

    /// The database in use.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        current(&self.current, &self.path)
    }

    /// Rebuilds the view of open hours from the file (at open, and after a reopening).
    fn load_open(&mut self) -> Result<(), StoreError> {
        let first_open = self.last_closed.map_or(0, |hour| hour + 1);
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| self.storage(e))?;
        let usage = txn.open_table(USAGE).map_err(|e| self.storage(e));
        let mut open: BTreeMap<u64, BTreeMap<String, Totals>> = BTreeMap::new();
        let up_in = txn
            .open_table(META)
            .ok()
            .and_then(|meta| {
                meta.get("up_in")
                    .ok()
                    .flatten()
                    .map(|v| v.value().to_owned())
            })
            .and_then(|hour| hour.parse::<u64>().ok());
        if let Some(hour) = up_in.filter(|hour| *hour >= first_open) {
            open.entry(hour).or_default();
        }
        if let Ok(usage) = usage {
            for entry in usage
                .range((first_open, "", "")..)
                .map_err(|e| self.storage(e))?
            {
                let (key, quantity) = entry.map_err(|e| self.storage(e))?;
                let (hour, dimension, tags) = key.value();
                let totals = open
                    .entry(hour)
                    .or_default()
                    .entry(dimension.to_owned())
                    .or_default();
                totals.quantity += quantity.value();
                totals.tag_sets.insert(tags.to_owned());
            }
        }
        self.open = open;
        Ok(())
    }

    /// The hour reports go into now: the clock's, unless that one is already closed (the
    /// sidecar stopped and came back within it), then the one after the last closed.
    pub fn accepting_hour(&self, now: SystemTime) -> u64 {
        let clock = self.period.index_at(now);
        match self.last_closed {
            Some(closed) if closed >= clock => closed + 1,
            _ => clock,
        }
    }

    pub fn last_closed(&self) -> Option<u64> {
        self.last_closed
    }

    pub fn period(&self) -> Period {
        self.period
    }

    /// Open hours with their totals per dimension.
    pub fn open_hours(&self) -> &BTreeMap<u64, BTreeMap<String, Totals>> {
        &self.open
    }

    /// Starts a group of changes that commit together, with one sync, and with the number of
    /// the commit.
    pub fn batch(&mut self) -> Result<Batch<'_>, StoreError> {
        let db = self.db()?;
        let mut txn = db.begin_write().map_err(|e| self.storage(e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.storage(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.storage(e))?;
            meta.insert("commits", (self.commits + 1).to_string().as_str())
                .map_err(|e| self.storage(e))?;
        }
        Ok(Batch {
            txn: Some(txn),
            store: self,
            pending_ids: HashMap::new(),
        })
    }

    /// A handle for reading the state while the writer writes.
    pub fn reader(&self) -> Reader {
        Reader {
            current: self.current.clone(),
            path: self.path.clone(),
        }
    }

    fn storage(&self, error: impl Into<redb::Error>) -> StoreError {
        failed(&self.path, error)
    }
}

/// Reads the state, concurrently with the writer (redb readers never block it). Each read
/// holds the database only while it runs, never across an await.
#[derive(Clone)]
pub struct Reader {
    current: Current,
    path: PathBuf,
}

fn write(current: &Current) -> std::sync::RwLockWriteGuard<'_, Option<Arc<Database>>> {
    current
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The database in `current`, or why there is none.
fn current(current: &Current, path: &Path) -> Result<Arc<Database>, StoreError> {
    current
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .ok_or_else(|| StoreError::Unwritable {
            path: path.to_owned(),
            detail: "it is being opened again after a write failed".to_owned(),
        })
}

impl Reader {
    /// Closed hours still to send, oldest first.
    pub fn unsent(&self) -> Result<Vec<Unsent>, StoreError> {
        let db = current(&self.current, &self.path)?;
        let txn = db.begin_read().map_err(|e| self.storage(e))?;
        let Ok(hours) = txn.open_table(HOURS) else {
            return Ok(Vec::new());
        };
        let mut unsent = Vec::new();
        for entry in hours.iter().map_err(|e| self.storage(e))? {
            let (key, record) = entry.map_err(|e| self.storage(e))?;
            let (hour, dimension) = key.value();
            if let Ok(HourRecord::Unsent {
                quantity,
                attempts,
                last_error,
                in_doubt,
            }) = serde_json::from_str(record.value())
            {
                unsent.push(Unsent {
                    hour,
                    dimension: dimension.to_owned(),
                    quantity,
                    attempts,
                    last_error,
                    in_doubt,
                });
            }
        }
        Ok(unsent)
    }

    /// Every closed (hour, dimension) record, for status.
    pub fn records(&self) -> Result<Vec<(u64, String, HourRecord)>, StoreError> {
        let db = current(&self.current, &self.path)?;
        let txn = db.begin_read().map_err(|e| self.storage(e))?;
        let Ok(hours) = txn.open_table(HOURS) else {
            return Ok(Vec::new());
        };
        let mut records = Vec::new();
        for entry in hours.iter().map_err(|e| self.storage(e))? {
            let (key, record) = entry.map_err(|e| self.storage(e))?;
            let (hour, dimension) = key.value();
            if let Ok(record) = serde_json::from_str(record.value()) {
                records.push((hour, dimension.to_owned(), record));
            }
        }
        Ok(records)
    }

    /// The usage of one closed (hour, dimension) by tag set, for MeterUsage's allocations.
    pub fn allocations(&self, hour: u64, dimension: &str) -> Result<Vec<(Tags, u64)>, StoreError> {
        let db = current(&self.current, &self.path)?;
        let txn = db.begin_read().map_err(|e| self.storage(e))?;
        let Ok(usage) = txn.open_table(USAGE) else {
            return Ok(Vec::new());
        };
        let mut allocations = Vec::new();
        for entry in usage
            .range((hour, dimension, "")..=(hour, dimension, "\u{10ffff}"))
            .map_err(|e| self.storage(e))?
        {
            let (key, quantity) = entry.map_err(|e| self.storage(e))?;
            let (_, _, tags) = key.value();
            allocations.push((report::tags_of(tags), quantity.value()));
        }
        Ok(allocations)
    }

    fn storage(&self, error: impl Into<redb::Error>) -> StoreError {
        failed(&self.path, error)
    }
}

/// A random instance ID: 128 bits, hex.
fn new_instance_id() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| format!("the OS random number generator failed: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Changes that commit together.
pub struct Batch<'a> {
    txn: Option<redb::WriteTransaction>,
    store: &'a mut Store,
    /// IDs counted earlier in this batch (not yet in `SEEN`).
    pending_ids: HashMap<String, u64>,
}

/// A failure of the database at `path`: the disk's (full, failing), or another.
fn failed(path: &Path, error: impl Into<redb::Error>) -> StoreError {
    let error = error.into();
    let (path, detail) = (path.to_owned(), error.to_string());
    match error {
        redb::Error::Io(_) | redb::Error::PreviousIo => StoreError::Unwritable { path, detail },
        _ => StoreError::Storage { path, detail },
    }
}

impl Batch<'_> {
    /// The transaction, the store and the batch's IDs, borrowed apart.
    fn parts(
        &mut self,
    ) -> (
        &redb::WriteTransaction,
        &mut Store,
        &mut HashMap<String, u64>,
    ) {
        (
            self.txn.as_ref().expect("open until committed"),
            self.store,
            &mut self.pending_ids,
        )
    }

    /// Adds `reports` to `hour`, all or none: refused (with the reason) if a record would push
    /// its dimension's hour past MeterUsage's quantity or allocation limits. Reports whose ID
    /// was already counted are skipped.
    pub fn accept(
        &mut self,
        reports: &[Report],
        hour: u64,
    ) -> Result<Result<Accepted, report::Invalid>, StoreError> {
        let (txn, store, pending_ids) = self.parts();
        let path = store.path.clone();
        let fail = |e: redb::Error| failed(&path, e);
        let mut fresh = Vec::with_capacity(reports.len());
        let mut duplicates = 0;
        {
            let seen = txn.open_table(SEEN).map_err(|e| fail(e.into()))?;
            let mut ids_here = BTreeSet::new();
            for (index, report) in reports.iter().enumerate() {
                if let Some(id) = &report.id {
                    let counted = pending_ids.contains_key(id)
                        || !ids_here.insert(id.as_str())
                        || seen.get(id.as_str()).map_err(|e| fail(e.into()))?.is_some();
                    if counted {
                        duplicates += 1;
                        continue;
                    }
                }
                fresh.push((index, report));
            }
        }
        // The limits, on what the hour would hold with every fresh record.
        let mut tentative: BTreeMap<&str, Totals> = BTreeMap::new();
        for &(index, report) in &fresh {
            let totals = tentative.entry(&report.dimension).or_insert_with(|| {
                store
                    .open
                    .get(&hour)
                    .and_then(|dimensions| dimensions.get(&report.dimension))
                    .cloned()
                    .unwrap_or_default()
            });
            totals.quantity += report.quantity;
            if report.quantity > 0 {
                totals.tag_sets.insert(report::tags_key(&report.tags));
            }
            let record = if reports.len() > 1 {
                format!("record {index}: ")
            } else {
                String::new()
            };
            if totals.quantity > MAX_QUANTITY {
                return Ok(Err(report::Invalid(format!(
                    "{record}the hour's total for {:?} would be {}, over MeterUsage's maximum of {MAX_QUANTITY}",
                    report.dimension, totals.quantity
                ))));
            }
            if totals.allocations() > MAX_ALLOCATIONS {
                return Ok(Err(report::Invalid(format!(
                    "{record}the hour would hold {} tag sets for {:?}, over MeterUsage's maximum of {MAX_ALLOCATIONS} allocations",
                    totals.allocations(),
                    report.dimension
                ))));
            }
        }
        // Aggregate first: many reports of one tag set cost one update.
        let mut sums: BTreeMap<(&str, String), u64> = BTreeMap::new();
        for (_, report) in fresh.iter().filter(|(_, report)| report.quantity > 0) {
            *sums
                .entry((&report.dimension, report::tags_key(&report.tags)))
                .or_default() += report.quantity;
        }
        {
            let mut usage = txn.open_table(USAGE).map_err(|e| fail(e.into()))?;
            for ((dimension, tags), quantity) in &sums {
                add(&mut usage, (hour, dimension, tags), *quantity).map_err(fail)?;
            }
            let mut seen = txn.open_table(SEEN).map_err(|e| fail(e.into()))?;
            let mut by_hour = txn.open_table(SEEN_BY_HOUR).map_err(|e| fail(e.into()))?;
            for id in fresh.iter().filter_map(|(_, report)| report.id.as_deref()) {
                seen.insert(id, hour).map_err(|e| fail(e.into()))?;
                by_hour.insert((hour, id), ()).map_err(|e| fail(e.into()))?;
                pending_ids.insert(id.to_owned(), hour);
            }
        }
        let open = store.open.entry(hour).or_default();
        for (dimension, totals) in tentative {
            open.insert(dimension.to_owned(), totals);
        }
        let mut counted: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (_, report) in &fresh {
            let (reports, quantity) = counted.entry(report.dimension.clone()).or_default();
            *reports += 1;
            *quantity += report.quantity;
        }
        Ok(Ok(Accepted {
            records: reports.len(),
            duplicates,
            hour,
            counted,
        }))
    }

    /// Closes every open hour before `before` (and `also`, the accepting hour when the sidecar
    /// stops): each dimension with usage, and with `send_zero` every one of `dimensions`, gets an
    /// unsent record. Returns the hours closed.
    pub fn close(
        &mut self,
        before: u64,
        also: Option<u64>,
        dimensions: &BTreeSet<String>,
        send_zero: bool,
    ) -> Result<Vec<u64>, StoreError> {
        let (txn, store, _) = self.parts();
        let path = store.path.clone();
        let fail = |e: redb::Error| failed(&path, e);
        let first_open = store.last_closed.map_or(0, |hour| hour + 1);
        // Open hours include those the sidecar was up in without usage (see `mark_open`), which
        // close with zero records.
        let mut closing: BTreeSet<u64> = store
            .open
            .keys()
            .copied()
            .filter(|hour| (first_open..before).contains(hour))
            .collect();
        if let Some(hour) = also {
            closing.insert(hour);
        }
        let Some(&last) = closing.last() else {
            return Ok(Vec::new());
        };
        {
            let mut hours = txn.open_table(HOURS).map_err(|e| fail(e.into()))?;
            for hour in &closing {
                let totals = store.open.remove(hour).unwrap_or_default();
                let names: BTreeSet<&String> = if send_zero {
                    dimensions.iter().chain(totals.keys()).collect()
                } else {
                    totals.keys().collect()
                };
                for dimension in names {
                    let record = HourRecord::Unsent {
                        quantity: totals.get(dimension).map_or(0, |t| t.quantity),
                        attempts: 0,
                        last_error: None,
                        in_doubt: false,
                    };
                    hours
                        .insert((*hour, dimension.as_str()), json(&record).as_str())
                        .map_err(|e| fail(e.into()))?;
                }
            }
        }
        if store.last_closed.is_none_or(|closed| last > closed) {
            let mut meta = txn.open_table(META).map_err(|e| fail(e.into()))?;
            meta.insert("last_closed", last.to_string().as_str())
                .map_err(|e| fail(e.into()))?;
            store.last_closed = Some(last);
        }
        forget(txn, last).map_err(fail)?;
        Ok(closing.into_iter().collect())
    }

    /// Notes that the sidecar is up in `hour`, so that it closes with zero records even if
    /// nothing is reported in it, whatever restarts happen meanwhile.
    pub fn mark_open(&mut self, hour: u64) -> Result<(), StoreError> {
        let (txn, store, _) = self.parts();
        if store.open.contains_key(&hour) {
            return Ok(());
        }
        let mut meta = txn.open_table(META).map_err(|e| failed(&store.path, e))?;
        meta.insert("up_in", hour.to_string().as_str())
            .map_err(|e| failed(&store.path, e))?;
        store.open.entry(hour).or_default();
        Ok(())
    }

    /// Records the outcome of sending a closed (hour, dimension). A sent or refused hour's
    /// usage rows are no longer needed.
    pub fn settle(
        &mut self,
        hour: u64,
        dimension: &str,
        record: &HourRecord,
    ) -> Result<(), StoreError> {
        let (txn, store, _) = self.parts();
        let fail = |e: redb::Error| failed(&store.path, e);
        let mut hours = txn.open_table(HOURS).map_err(|e| fail(e.into()))?;
        hours
            .insert((hour, dimension), json(record).as_str())
            .map_err(|e| fail(e.into()))?;
        if record.is_settled() {
            let mut usage = txn.open_table(USAGE).map_err(|e| fail(e.into()))?;
            usage
                .retain_in(
                    (hour, dimension, "")..=(hour, dimension, "\u{10ffff}"),
                    |_, _| false,
                )
                .map_err(|e| fail(e.into()))?;
        }
        Ok(())
    }

    /// Moves the usage of a closed (hour, dimension) into open hours from `into` on, each tag
    /// set into the first hour that can take it within MeterUsage's limits, and marks the hour
    /// carried.
    pub fn carry(
        &mut self,
        hour: u64,
        dimension: &str,
        into: u64,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let (txn, store, _) = self.parts();
        let path = store.path.clone();
        let fail = |e: redb::Error| failed(&path, e);
        let mut usage = txn.open_table(USAGE).map_err(|e| fail(e.into()))?;
        let rows: Vec<(String, u64)> = usage
            .range((hour, dimension, "")..=(hour, dimension, "\u{10ffff}"))
            .map_err(|e| fail(e.into()))?
            .filter_map(Result::ok)
            .map(|(key, quantity)| (key.value().2.to_owned(), quantity.value()))
            .collect();
        let total: u64 = rows.iter().map(|(_, quantity)| quantity).sum();
        for (tags, quantity) in &rows {
            let mut target = into;
            loop {
                let totals = store
                    .open
                    .entry(target)
                    .or_default()
                    .entry(dimension.to_owned())
                    .or_default();
                let mut with = totals.clone();
                with.quantity += quantity;
                with.tag_sets.insert(tags.clone());
                if with.quantity <= MAX_QUANTITY && with.allocations() <= MAX_ALLOCATIONS {
                    *totals = with;
                    break;
                }
                target += 1;
            }
            add(&mut usage, (target, dimension, tags), *quantity).map_err(fail)?;
        }
        drop(usage);
        self.settle(
            hour,
            dimension,
            &HourRecord::Carried {
                quantity: total,
                into,
                at: epoch_seconds(now),
            },
        )
    }

    /// Commits every change of the batch with one sync. After a failure the store's view is
    /// not the file's: the store must be reopened ([`Store::reopen`]) before it writes again.
    pub fn commit(mut self) -> Result<(), StoreError> {
        let txn = self.txn.take().expect("open until committed");
        txn.commit().map_err(|e| failed(&self.store.path, e))?;
        self.store.commits += 1;
        Ok(())
    }
}

/// Adds `quantity` to the usage row at `key`.
fn add(
    usage: &mut redb::Table<'_, (u64, &str, &str), u64>,
    key: (u64, &str, &str),
    quantity: u64,
) -> Result<(), redb::Error> {
    let before = usage.get(key)?.map_or(0, |v| v.value());
    usage.insert(key, before + quantity)?;
    Ok(())
}

/// Forgets report IDs older than [`REMEMBERED_PERIODS`] and settled hour records older than
/// [`SETTLED_KEPT_PERIODS`], as of the hour just closed.
fn forget(txn: &redb::WriteTransaction, closed: u64) -> Result<(), redb::Error> {
    let Some(ids_before) = closed.checked_sub(REMEMBERED_PERIODS) else {
        return Ok(());
    };
    let mut by_hour = txn.open_table(SEEN_BY_HOUR)?;
    let mut seen = txn.open_table(SEEN)?;
    let old: Vec<(u64, String)> = by_hour
        .range(..(ids_before, ""))?
        .filter_map(Result::ok)
        .map(|(key, _)| {
            let (hour, id) = key.value();
            (hour, id.to_owned())
        })
        .collect();
    for (hour, id) in &old {
        by_hour.remove((*hour, id.as_str()))?;
        seen.remove(id.as_str())?;
    }
    if let Some(settled_before) = closed.checked_sub(SETTLED_KEPT_PERIODS) {
        let mut hours = txn.open_table(HOURS)?;
        hours.retain_in(..(settled_before, ""), |_, record| {
            serde_json::from_str::<HourRecord>(record).is_ok_and(|r| !r.is_settled())
        })?;
    }
    Ok(())
}

fn json(record: &HourRecord) -> String {
    serde_json::to_string(record).expect("hour records serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn report(dimension: &str, quantity: u64, tags: &[(&str, &str)], id: Option<&str>) -> Report {
        Report {
            dimension: dimension.to_owned(),
            quantity,
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            id: id.map(str::to_owned),
        }
    }

    fn dims() -> BTreeSet<String> {
        ["requests".to_owned(), "users".to_owned()].into()
    }

    fn at(hour: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(hour * 3600 + 10)
    }

    #[test]
    fn accepted_usage_survives_reopening_and_ids_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let instance = {
            let mut store = Store::open(dir.path(), "prod", Period::HOUR).unwrap();
            let mut batch = store.batch().unwrap();
            let first = batch
                .accept(
                    &[
                        report("requests", 3, &[], Some("a")),
                        report("requests", 2, &[("team", "x")], None),
                    ],
                    10,
                )
                .unwrap()
                .unwrap();
            assert_eq!((first.records, first.duplicates), (2, 0));
            let again = batch
                .accept(&[report("requests", 3, &[], Some("a"))], 10)
                .unwrap()
                .unwrap();
            assert_eq!((again.records, again.duplicates), (1, 1));
            batch.commit().unwrap();
            store.instance_id.clone()
        };
        let mut store = Store::open(dir.path(), "prod", Period::HOUR).unwrap();
        assert_eq!(store.instance_id, instance, "the instance ID is kept");
        let totals = &store.open_hours()[&10]["requests"];
        assert_eq!(totals.quantity, 5);
        assert_eq!(totals.allocations(), 2);
        let mut batch = store.batch().unwrap();
        let resent = batch
            .accept(&[report("requests", 3, &[], Some("a"))], 11)
            .unwrap()
            .unwrap();
        assert_eq!(resent.duplicates, 1, "remembered across a restart");
    }

    #[test]
    fn a_second_process_product_or_period_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "prod", Period::HOUR).unwrap();
        assert!(matches!(
            Store::open(dir.path(), "prod", Period::HOUR),
            Err(StoreError::InUse { .. })
        ));
        drop(store);
        assert!(matches!(
            Store::open(dir.path(), "other", Period::HOUR),
            Err(StoreError::OtherProduct { .. })
        ));
        let short = Period::from_duration(Duration::from_secs(2)).unwrap();
        assert!(matches!(
            Store::open(dir.path(), "prod", short),
            Err(StoreError::OtherPeriod { .. })
        ));
    }

    #[test]
    fn the_state_stays_locked_while_it_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), "prod", Period::HOUR).unwrap();
        store.reopen().unwrap();
        assert!(matches!(
            Store::open(dir.path(), "prod", Period::HOUR),
            Err(StoreError::InUse { .. })
        ));
        // An earlier sidecar opened the file with redb's own backend, which also takes flock.
        assert!(matches!(
            Database::create(dir.path().join(FILE_NAME)),
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
        ));
        let mut batch = store.batch().unwrap();
        batch
            .accept(&[report("users", 2, &[], None)], 10)
            .unwrap()
            .unwrap();
        batch.commit().unwrap();
        drop(store);
        let store = Store::open(dir.path(), "prod", Period::HOUR).unwrap();
        assert_eq!(store.open_hours()[&10]["users"].quantity, 2);
        assert_eq!(store.commits(), 1, "the batch was numbered");
    }

    #[test]
    fn limits_refuse_the_whole_submission() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), "prod", Period::HOUR).unwrap();
        let mut batch = store.batch().unwrap();
        batch
            .accept(&[report("users", MAX_QUANTITY - 1, &[], None)], 10)
            .unwrap()
            .unwrap();
        let over = batch
            .accept(
                &[
                    report("requests", 1, &[], None),
                    report("users", 2, &[], None),
                ],
                10,
            )
            .unwrap()
            .unwrap_err();
        assert!(
            over.0.contains("record 1") && over.0.contains("2147483647"),
            "{over}"
        );
        batch.commit().unwrap();
        assert!(
            !store.open_hours()[&10].contains_key("requests"),
            "nothing of a refused submission is recorded"
        );
        let mut batch = store.batch().unwrap();
        let many: Vec<Report> = (0..MAX_ALLOCATIONS)
            .map(|i| report("requests", 1, &[("n", &i.to_string())], None))
            .collect();
        batch.accept(&many, 12).unwrap().unwrap();
        let one_more = batch
            .accept(&[report("requests", 1, &[("n", "new")], None)], 12)
            .unwrap()
            .unwrap_err();
        assert!(one_more.0.contains("2500 allocations"), "{one_more}");
    }

    #[test]
    fn closing_sending_and_carrying() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), "prod", Period::HOUR).unwrap();
        let mut batch = store.batch().unwrap();
        batch
            .accept(
                &[
                    report("requests", 4, &[("team", "a")], None),
                    report("requests", 1, &[], None),
                ],
                10,
            )
            .unwrap()
            .unwrap();
        batch.commit().unwrap();
        assert_eq!(store.accepting_hour(at(10)), 10);
        let mut batch = store.batch().unwrap();
        assert_eq!(batch.close(11, None, &dims(), true).unwrap(), vec![10]);
        batch.commit().unwrap();
        let unsent = store.reader().unsent().unwrap();
        assert_eq!(
            unsent
                .iter()
                .map(|u| (u.hour, u.dimension.as_str(), u.quantity))
                .collect::<Vec<_>>(),
            vec![(10, "requests", 5), (10, "users", 0)],
            "send-zero gives every dimension a record"
        );
        let mut allocations = store.reader().allocations(10, "requests").unwrap();
        allocations.sort();
        assert_eq!(allocations.len(), 2);
        assert_eq!(allocations.iter().map(|(_, q)| q).sum::<u64>(), 5);

        // Stopped and restarted within hour 10: reports go to hour 11.
        assert_eq!(store.accepting_hour(at(10)), 11);

        let mut batch = store.batch().unwrap();
        batch
            .settle(
                10,
                "users",
                &HourRecord::Sent {
                    quantity: 0,
                    record_id: "r".into(),
                    sent_at: 1,
                },
            )
            .unwrap();
        batch.carry(10, "requests", 16, at(16)).unwrap();
        batch.commit().unwrap();
        assert!(store.reader().unsent().unwrap().is_empty());
        assert_eq!(store.open_hours()[&16]["requests"].quantity, 5);
        assert_eq!(store.reader().allocations(16, "requests").unwrap().len(), 2);
        assert!(store
            .reader()
            .allocations(10, "requests")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn report_ids_are_forgotten_after_seven_periods() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), "prod", Period::HOUR).unwrap();
        let mut batch = store.batch().unwrap();
        batch
            .accept(&[report("users", 1, &[], Some("old"))], 10)
            .unwrap()
            .unwrap();
        batch.close(11, None, &dims(), false).unwrap();
        batch.commit().unwrap();
        let mut batch = store.batch().unwrap();
        batch.mark_open(18).unwrap();
        batch.close(19, None, &dims(), false).unwrap();
        let again = batch
            .accept(&[report("users", 1, &[], Some("old"))], 19)
            .unwrap()
            .unwrap();
        assert_eq!(again.duplicates, 0, "forgotten");
        batch.commit().unwrap();
    }
}
