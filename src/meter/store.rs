//! The state directory: acknowledged usage, what became of each hour, and the ledger that
//! accounts for every unit, in a redb database (one file, transactional, crash-safe, locked
//! against a second process).
//!
//! Usage is kept in micro-units, aggregated per (hour, dimension, tag set), so the file stays
//! small whatever the report rate. An hour is *open* until it closes (its time passed, or the
//! sidecar stops); each dimension's hour is then billed once ([`billing`]): whole units and
//! their allocations by tag set, fixed for every resend, and the fraction carried into the
//! dimension's next hour. Each closed (hour, dimension) has a record: unsent, sent (with AWS's
//! record ID), refused as a duplicate, carried into a later hour, or left in doubt (AWS may hold
//! it).
//!
//! The ledger counts per dimension what was acknowledged, billed, refused and left in doubt, in
//! the same transactions that change the usage, so that at every commit
//! `acknowledged = billed + refused + in doubt + unsent + carried fraction`, exactly.
//!
//! Report IDs are kept as keyed 128-bit hashes (16 bytes each) in one table per ID window, and
//! forgotten a whole table at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rand::rngs::OsRng;
use rand::TryRngCore as _;
use redb::{
    Database, Durability, ReadableDatabase as _, ReadableTable, StorageBackend, TableDefinition,
    TableHandle as _,
};
use serde::{Deserialize, Serialize};

use super::billing::{self, Rounding};
use super::period::Period;
use super::report::{self, Report, Tags, MAX_ALLOCATIONS, MAX_QUANTITY, MAX_REPORT_QUANTITY};
use crate::aws::metering::BILLABLE_STEP;
use crate::domain::quantity::Quantity;
use crate::domain::time::epoch_seconds;

/// `(hour, dimension, tag set key)` to the micro-units acknowledged, for open hours.
const USAGE: TableDefinition<(u64, &str, &str), u64> = TableDefinition::new("usage");
/// `(hour, dimension, tag set key)` to the micro-units billed (whole steps), for closed hours
/// not yet settled: the record's `UsageAllocations`, the same for every resend.
const ALLOCATED: TableDefinition<(u64, &str, &str), u64> = TableDefinition::new("allocated");
/// `(hour, dimension)` to the JSON of its [`HourRecord`], for closed hours.
const HOURS: TableDefinition<(u64, &str), &str> = TableDefinition::new("hours");
/// A dimension to the micro-units carried into its next hour: within (-1, 1) unit.
const FRACTIONS: TableDefinition<&str, i64> = TableDefinition::new("fractions");
/// `(dimension, part)` to micro-units since the state was created (see [`Part`]).
const LEDGER: TableDefinition<(&str, u8), u128> = TableDefinition::new("ledger");
/// Who this state belongs to, and how far it got.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// The prefix of the report ID tables, one per ID window: `ids-<window number>`.
const IDS_PREFIX: &str = "ids-";

/// The database file inside the state directory.
pub const FILE_NAME: &str = "meter.redb";
/// The state format this build writes and reads.
const SCHEMA: &str = "2";
/// The read cache: the hot data (open hours) is small, and RSS stays low.
const CACHE_BYTES: usize = 4 << 20;
/// How many periods a closed hour's record is kept for status once it is settled.
const SETTLED_KEPT_PERIODS: u64 = 48;

/// The ledger's counted parts; unsent usage and the carried fraction are read from the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Acknowledged = 0,
    Billed = 1,
    Refused = 2,
    InDoubt = 3,
}

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
    #[error("the state in {} was written by another version of the meter (format {found}, this one reads {SCHEMA})", path.display())]
    OtherFormat { path: PathBuf, found: String },
    #[error("the state in {} cannot be used: {detail}", path.display())]
    Storage { path: PathBuf, detail: String },
    /// The disk refused a read or write (full, or failing): redb then refuses every write until
    /// the database is opened again.
    #[error("the state in {} cannot be written: {detail}", path.display())]
    Unwritable { path: PathBuf, detail: String },
}

/// What became of a closed (hour, dimension). Quantities are the micro-units billed: whole
/// steps of [`BILLABLE_STEP`].
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

    /// The ledger part a settled record's units move to, if any (a carried hour's units moved
    /// to an open hour, where they are unsent again).
    fn settles_into(&self) -> Option<(Part, u64)> {
        match self {
            HourRecord::Sent { quantity, .. } => Some((Part::Billed, *quantity)),
            HourRecord::Duplicate { quantity, .. } => Some((Part::Refused, *quantity)),
            HourRecord::InDoubt { quantity, .. } => Some((Part::InDoubt, *quantity)),
            HourRecord::Unsent { .. } | HourRecord::Carried { .. } => None,
        }
    }
}

/// A closed hour of one dimension still to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsent {
    pub hour: u64,
    pub dimension: String,
    /// Micro-units billed (whole steps).
    pub quantity: u64,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub in_doubt: bool,
}

/// Where every acknowledged micro-unit of one dimension is, since the state was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ledger {
    pub acknowledged: u128,
    /// Sent to AWS and recorded there (a `MeteringRecordId`).
    pub billed: u128,
    /// Refused by AWS as a duplicate of another quantity for the hour: not billed.
    pub refused: u128,
    /// Left MeterUsage's window after an attempt without an answer: AWS may or may not hold it.
    pub in_doubt: u128,
    /// In open hours, or in closed hours still to send.
    pub unsent: u128,
    /// Carried into the dimension's next hour: under one unit (negative after rounding up).
    pub carried_fraction: i128,
}

impl Ledger {
    /// Whether `acknowledged = billed + refused + in doubt + unsent + carried fraction`.
    pub fn balances(&self) -> bool {
        self.acknowledged as i128
            == (self.billed + self.refused + self.in_doubt + self.unsent) as i128
                + self.carried_fraction
    }
}

/// The totals of one dimension in one open hour, for the limit checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Micro-units.
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
    pub counted: BTreeMap<String, (u64, Quantity)>,
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

/// How long report IDs are remembered, and the key their hashes are made with.
struct Ids {
    key: aws_lc_rs::hmac::Key,
    window_secs: u64,
    /// The oldest ID window still kept, as far as this process knows.
    oldest_kept: Option<u64>,
}

impl Ids {
    /// The keyed 128-bit hash an ID is remembered by: 16 bytes of state, and a client cannot
    /// make two IDs collide without the state's key.
    fn hash(&self, id: &str) -> u128 {
        let tag = aws_lc_rs::hmac::sign(&self.key, id.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&tag.as_ref()[..16]);
        u128::from_be_bytes(bytes)
    }

    fn window_at(&self, now: SystemTime) -> u64 {
        epoch_seconds(now) / self.window_secs
    }
}

fn ids_table(window: u64) -> String {
    format!("{IDS_PREFIX}{window:020}")
}

/// The state, open for this process alone.
pub struct Store {
    volume: Arc<dyn Volume>,
    current: Current,
    path: PathBuf,
    period: Period,
    pub instance_id: String,
    ids: Ids,
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
    schema: Option<String>,
    id_key: Option<String>,
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
            schema: read("schema")?,
            id_key: read("id_key")?,
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
    /// draws the instance ID every MeterUsage `ClientToken` of this state derives from, and the
    /// key report IDs are hashed with. Report IDs are remembered for at least `id_window` and
    /// at most twice that.
    pub fn open(
        dir: &Path,
        product_code: &str,
        period: Period,
        id_window: Duration,
    ) -> Result<Store, StoreError> {
        Store::open_on(
            Arc::new(StateFile::lock(dir)?),
            product_code,
            period,
            id_window,
        )
    }

    /// Opens (or creates) the state on `volume`.
    pub fn open_on(
        volume: Arc<dyn Volume>,
        product_code: &str,
        period: Period,
        id_window: Duration,
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
            match (
                &meta.instance_id,
                &meta.product_code,
                &meta.period,
                &meta.schema,
            ) {
                (Some(_), Some(product), Some(seconds), Some(schema))
                    if schema == SCHEMA && meta.id_key.is_some() =>
                {
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
                (Some(_), ..) => {
                    return Err(StoreError::OtherFormat {
                        path,
                        found: meta.schema.unwrap_or_else(|| "1".to_owned()),
                    })
                }
                (None, ..) => {
                    let id = hex(&random::<16>().map_err(storage)?);
                    let key = hex(&random::<32>().map_err(storage)?);
                    for (name, value) in [
                        ("instance_id", id.as_str()),
                        ("product_code", product_code),
                        ("period", &period.seconds().to_string()),
                        ("schema", SCHEMA),
                        ("id_key", key.as_str()),
                    ] {
                        table.insert(name, value).map_err(|e| failed(&path, e))?;
                    }
                    Meta {
                        instance_id: Some(id),
                        id_key: Some(key),
                        ..meta
                    }
                }
            }
        };
        txn.commit().map_err(|e| failed(&path, e))?;
        let key_bytes = meta
            .id_key
            .as_deref()
            .and_then(unhex)
            .ok_or_else(|| storage("its ID key is damaged".to_owned()))?;
        let mut store = Store {
            volume,
            current: Arc::new(RwLock::new(Some(Arc::new(db)))),
            path,
            period,
            instance_id: meta.instance_id.unwrap_or_default(),
            ids: Ids {
                key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key_bytes),
                window_secs: id_window.as_secs().max(1),
                oldest_kept: None,
            },
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
        if let Ok(usage) = txn.open_table(USAGE) {
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

    /// The size of the state file, as the volume counts it.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// The bytes the state holds (allocated pages), which can be less than the file: pages
    /// freed by forgotten IDs are reused before the file grows. Walks the database: call it
    /// rarely.
    pub fn live_bytes(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(|e| self.storage(e))?;
        let stats = txn.stats().map_err(|e| self.storage(e))?;
        let live = stats.allocated_pages() * stats.page_size() as u64;
        txn.abort().map_err(|e| self.storage(e))?;
        Ok(live)
    }

    /// Starts a group of changes that commit together, with one sync.
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
            acknowledged: BTreeMap::new(),
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
        Ok(self
            .records()?
            .into_iter()
            .filter_map(|(hour, dimension, record)| match record {
                HourRecord::Unsent {
                    quantity,
                    attempts,
                    last_error,
                    in_doubt,
                } => Some(Unsent {
                    hour,
                    dimension,
                    quantity,
                    attempts,
                    last_error,
                    in_doubt,
                }),
                _ => None,
            })
            .collect())
    }

    /// Every closed (hour, dimension) record, for status.
    pub fn records(&self) -> Result<Vec<(u64, String, HourRecord)>, StoreError> {
        let db = current(&self.current, &self.path)?;
        let txn = db.begin_read().map_err(|e| self.storage(e))?;
        records_in(&txn).map_err(|e| self.storage(e))
    }

    /// The `UsageAllocations` of one closed, unsettled (hour, dimension): micro-units by tag
    /// set, summing to its record's quantity; empty for untagged usage.
    pub fn allocations(&self, hour: u64, dimension: &str) -> Result<Vec<(Tags, u64)>, StoreError> {
        let db = current(&self.current, &self.path)?;
        let txn = db.begin_read().map_err(|e| self.storage(e))?;
        let Ok(allocated) = txn.open_table(ALLOCATED) else {
            return Ok(Vec::new());
        };
        let mut allocations = Vec::new();
        for entry in allocated
            .range((hour, dimension, "")..=(hour, dimension, "\u{10ffff}"))
            .map_err(|e| self.storage(e))?
        {
            let (key, micros) = entry.map_err(|e| self.storage(e))?;
            let (_, _, tags) = key.value();
            allocations.push((report::tags_of(tags), micros.value()));
        }
        Ok(allocations)
    }

    /// The ledger of every dimension with usage or a record, from one consistent snapshot.
    pub fn ledger(&self) -> Result<BTreeMap<String, Ledger>, StoreError> {
        let db = current(&self.current, &self.path)?;
        let txn = db.begin_read().map_err(|e| self.storage(e))?;
        ledger_in(&txn).map_err(|e| self.storage(e))
    }

    fn storage(&self, error: impl Into<redb::Error>) -> StoreError {
        failed(&self.path, error)
    }
}

/// Every closed record in `txn`.
fn records_in(txn: &redb::ReadTransaction) -> Result<Vec<(u64, String, HourRecord)>, redb::Error> {
    let hours = match txn.open_table(HOURS) {
        Ok(hours) => hours,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut records = Vec::new();
    for entry in hours.iter()? {
        let (key, record) = entry?;
        let (hour, dimension) = key.value();
        if let Ok(record) = serde_json::from_str(record.value()) {
            records.push((hour, dimension.to_owned(), record));
        }
    }
    Ok(records)
}

/// The ledger per dimension as of `txn`.
fn ledger_in(txn: &redb::ReadTransaction) -> Result<BTreeMap<String, Ledger>, redb::Error> {
    let mut ledgers: BTreeMap<String, Ledger> = BTreeMap::new();
    if let Ok(counted) = txn.open_table(LEDGER) {
        for entry in counted.iter()? {
            let (key, micros) = entry?;
            let (dimension, part) = key.value();
            let ledger = ledgers.entry(dimension.to_owned()).or_default();
            let micros = micros.value();
            match part {
                p if p == Part::Acknowledged as u8 => ledger.acknowledged = micros,
                p if p == Part::Billed as u8 => ledger.billed = micros,
                p if p == Part::Refused as u8 => ledger.refused = micros,
                p if p == Part::InDoubt as u8 => ledger.in_doubt = micros,
                _ => {}
            }
        }
    }
    if let Ok(usage) = txn.open_table(USAGE) {
        for entry in usage.iter()? {
            let (key, micros) = entry?;
            let (_, dimension, _) = key.value();
            ledgers.entry(dimension.to_owned()).or_default().unsent += u128::from(micros.value());
        }
    }
    for (_, dimension, record) in records_in(txn)? {
        if let HourRecord::Unsent { quantity, .. } = record {
            ledgers.entry(dimension).or_default().unsent += u128::from(quantity);
        }
    }
    if let Ok(fractions) = txn.open_table(FRACTIONS) {
        for entry in fractions.iter()? {
            let (dimension, micros) = entry?;
            ledgers
                .entry(dimension.value().to_owned())
                .or_default()
                .carried_fraction = i128::from(micros.value());
        }
    }
    Ok(ledgers)
}

/// `N` random bytes from the OS.
fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| format!("the OS random number generator failed: {e}"))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (text.len() % 2 == 0)
        .then(|| {
            (0..text.len())
                .step_by(2)
                .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
                .collect()
        })
        .flatten()
}

/// Changes that commit together.
pub struct Batch<'a> {
    txn: Option<redb::WriteTransaction>,
    store: &'a mut Store,
    /// Micro-units acknowledged in this batch, by dimension, for the ledger at commit.
    acknowledged: BTreeMap<String, u128>,
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
    fn txn(&self) -> &redb::WriteTransaction {
        self.txn.as_ref().expect("open until committed")
    }

    /// Maps a redb error to this state's storage error (owns the path, so that the batch
    /// stays borrowable).
    fn fail(&self) -> impl Fn(redb::Error) -> StoreError {
        let path = self.store.path.clone();
        move |e| failed(&path, e)
    }

    /// Adds each submission to `hour`, each all or none: a submission is refused (with the
    /// reason) if a record would push its dimension's hour past MeterUsage's quantity or
    /// allocation limits. Reports whose ID was counted within the ID window (earlier in this
    /// batch included) are skipped. The tables are opened once for the whole group commit.
    pub fn accept(
        &mut self,
        submissions: &[&[Report]],
        hour: u64,
        now: SystemTime,
    ) -> Result<Vec<Result<Accepted, report::Invalid>>, StoreError> {
        let Batch {
            txn,
            store,
            acknowledged,
        } = self;
        let path = store.path.clone();
        let fail = |e: redb::Error| failed(&path, e);
        let txn = txn.as_ref().expect("open until committed");
        let window = store.ids.window_at(now);
        let mut tables = Accepting {
            ids: txn
                .open_table(TableDefinition::new(&ids_table(window)))
                .map_err(|e| fail(e.into()))?,
            previous_ids: window
                .checked_sub(1)
                .map(|w| txn.open_table(TableDefinition::new(&ids_table(w))))
                .transpose()
                .map_err(|e| fail(e.into()))?,
            usage: txn.open_table(USAGE).map_err(|e| fail(e.into()))?,
        };
        submissions
            .iter()
            .map(|reports| {
                let result = accept_one(store, &mut tables, reports, hour).map_err(&fail)?;
                if let Ok(accepted) = &result {
                    for (dimension, (_, quantity)) in &accepted.counted {
                        *acknowledged.entry(dimension.clone()).or_default() +=
                            u128::from(quantity.micros());
                    }
                }
                Ok(result)
            })
            .collect()
    }

    /// Forgets report IDs from windows before the one before `now`'s: a whole table at a
    /// time.
    pub fn forget_ids(&mut self, now: SystemTime) -> Result<(), StoreError> {
        let keep_from = self.store.ids.window_at(now).saturating_sub(1);
        if self
            .store
            .ids
            .oldest_kept
            .is_some_and(|oldest| oldest >= keep_from)
        {
            return Ok(());
        }
        let keep_name = ids_table(keep_from);
        let fail = self.fail();
        let txn = self.txn();
        let old: Vec<String> = txn
            .list_tables()
            .map_err(|e| fail(e.into()))?
            .map(|table| table.name().to_owned())
            .filter(|name| name.starts_with(IDS_PREFIX) && *name < keep_name)
            .collect();
        for name in &old {
            txn.delete_table(TableDefinition::<u128, ()>::new(name))
                .map_err(|e| fail(e.into()))?;
        }
        self.store.ids.oldest_kept = Some(keep_from);
        Ok(())
    }

    /// Closes every open hour before `before` (and `also`, the accepting hour when the sidecar
    /// stops), billing each dimension with usage, and with `send_zero` every one of
    /// `dimensions`, an unsent record. Every hour bills its whole units and carries the
    /// fraction; the last hour closed rounds by `last` (the final fraction at shutdown).
    /// Returns the hours closed.
    pub fn close(
        &mut self,
        before: u64,
        also: Option<u64>,
        dimensions: &BTreeSet<String>,
        send_zero: bool,
        last: Rounding,
    ) -> Result<Vec<u64>, StoreError> {
        let first_open = self.store.last_closed.map_or(0, |hour| hour + 1);
        // Open hours include those the sidecar was up in without usage (see `mark_open`), which
        // close with zero records.
        let mut closing: BTreeSet<u64> = self
            .store
            .open
            .keys()
            .copied()
            .filter(|hour| (first_open..before).contains(hour))
            .collect();
        if let Some(hour) = also {
            closing.insert(hour);
        }
        let Some(&final_hour) = closing.last() else {
            return Ok(Vec::new());
        };
        let path = self.store.path.clone();
        let fail = |e: redb::Error| failed(&path, e);
        let txn = self.txn.as_ref().expect("open until committed");
        {
            let mut usage = txn.open_table(USAGE).map_err(|e| fail(e.into()))?;
            let mut allocated = txn.open_table(ALLOCATED).map_err(|e| fail(e.into()))?;
            let mut hours = txn.open_table(HOURS).map_err(|e| fail(e.into()))?;
            let mut fractions = txn.open_table(FRACTIONS).map_err(|e| fail(e.into()))?;
            for &hour in &closing {
                let totals = self.store.open.remove(&hour).unwrap_or_default();
                let rounding = if hour == final_hour {
                    last
                } else {
                    Rounding::Down
                };
                let mut names: BTreeSet<String> = totals.keys().cloned().collect();
                if send_zero {
                    names.extend(dimensions.iter().cloned());
                }
                if rounding == Rounding::Up {
                    // A fraction left to round up needs a record to be billed in.
                    for entry in fractions.iter().map_err(|e| fail(e.into()))? {
                        let (dimension, micros) = entry.map_err(|e| fail(e.into()))?;
                        if micros.value() > 0 {
                            names.insert(dimension.value().to_owned());
                        }
                    }
                }
                for dimension in &names {
                    let rows: Vec<(String, u64)> = usage
                        .extract_from_if(
                            (hour, dimension.as_str(), "")
                                ..=(hour, dimension.as_str(), "\u{10ffff}"),
                            |_, _| true,
                        )
                        .map_err(|e| fail(e.into()))?
                        .map(|entry| {
                            entry.map(|(key, micros)| (key.value().2.to_owned(), micros.value()))
                        })
                        .collect::<Result<_, _>>()
                        .map_err(|e| fail(e.into()))?;
                    let carried_in = fractions
                        .get(dimension.as_str())
                        .map_err(|e| fail(e.into()))?
                        .map_or(0, |v| v.value());
                    let bill = billing::bill_hour(
                        carried_in,
                        &rows,
                        rounding,
                        BILLABLE_STEP,
                        MAX_REPORT_QUANTITY.micros(),
                    );
                    let tagged = rows.iter().any(|(tags, _)| !tags.is_empty());
                    if tagged {
                        for (tags, units) in &bill.allocations {
                            allocated
                                .insert((hour, dimension.as_str(), tags.as_str()), units)
                                .map_err(|e| fail(e.into()))?;
                        }
                    }
                    fractions
                        .insert(dimension.as_str(), bill.carried_out)
                        .map_err(|e| fail(e.into()))?;
                    let record = HourRecord::Unsent {
                        quantity: bill.quantity,
                        attempts: 0,
                        last_error: None,
                        in_doubt: false,
                    };
                    hours
                        .insert((hour, dimension.as_str()), json(&record).as_str())
                        .map_err(|e| fail(e.into()))?;
                }
            }
        }
        if self
            .store
            .last_closed
            .is_none_or(|closed| final_hour > closed)
        {
            let mut meta = txn.open_table(META).map_err(|e| fail(e.into()))?;
            meta.insert("last_closed", final_hour.to_string().as_str())
                .map_err(|e| fail(e.into()))?;
            self.store.last_closed = Some(final_hour);
        }
        forget_settled(txn, final_hour).map_err(fail)?;
        Ok(closing.into_iter().collect())
    }

    /// Notes that the sidecar is up in `hour`, so that it closes with zero records even if
    /// nothing is reported in it, whatever restarts happen meanwhile.
    pub fn mark_open(&mut self, hour: u64) -> Result<(), StoreError> {
        if self.store.open.contains_key(&hour) {
            return Ok(());
        }
        let fail = self.fail();
        let mut meta = self.txn().open_table(META).map_err(|e| fail(e.into()))?;
        meta.insert("up_in", hour.to_string().as_str())
            .map_err(|e| fail(e.into()))?;
        drop(meta);
        self.store.open.entry(hour).or_default();
        Ok(())
    }

    /// Records the outcome of sending a closed (hour, dimension); a settled hour's units move
    /// in the ledger (billed, refused or in doubt) once, and its allocations are no longer
    /// needed.
    pub fn settle(
        &mut self,
        hour: u64,
        dimension: &str,
        record: &HourRecord,
    ) -> Result<(), StoreError> {
        let fail = self.fail();
        let txn = self.txn();
        let mut hours = txn.open_table(HOURS).map_err(|e| fail(e.into()))?;
        let was_unsent = match hours.get((hour, dimension)).map_err(|e| fail(e.into()))? {
            Some(before) => !serde_json::from_str::<HourRecord>(before.value())
                .is_ok_and(|before| before.is_settled()),
            None => false,
        };
        hours
            .insert((hour, dimension), json(record).as_str())
            .map_err(|e| fail(e.into()))?;
        drop(hours);
        if record.is_settled() {
            let mut allocated = txn.open_table(ALLOCATED).map_err(|e| fail(e.into()))?;
            allocated
                .retain_in(
                    (hour, dimension, "")..=(hour, dimension, "\u{10ffff}"),
                    |_, _| false,
                )
                .map_err(|e| fail(e.into()))?;
        }
        if let (true, Some((part, quantity))) = (was_unsent, record.settles_into()) {
            count(txn, dimension, part, u128::from(quantity)).map_err(fail)?;
        }
        Ok(())
    }

    /// Moves the bill of a closed (hour, dimension) into open hours from `into` on, each tag
    /// set into the first hour that can take it within MeterUsage's limits, and marks the hour
    /// carried.
    pub fn carry(
        &mut self,
        hour: u64,
        dimension: &str,
        into: u64,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let path = self.store.path.clone();
        let fail = |e: redb::Error| failed(&path, e);
        let txn = self.txn.as_ref().expect("open until committed");
        let quantity = match txn
            .open_table(HOURS)
            .map_err(|e| fail(e.into()))?
            .get((hour, dimension))
            .map_err(|e| fail(e.into()))?
            .map(|record| serde_json::from_str::<HourRecord>(record.value()))
        {
            Some(Ok(HourRecord::Unsent { quantity, .. })) => quantity,
            _ => return Ok(()),
        };
        let mut rows: Vec<(String, u64)> = txn
            .open_table(ALLOCATED)
            .map_err(|e| fail(e.into()))?
            .range((hour, dimension, "")..=(hour, dimension, "\u{10ffff}"))
            .map_err(|e| fail(e.into()))?
            .map(|entry| entry.map(|(key, micros)| (key.value().2.to_owned(), micros.value())))
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.into()))?;
        if rows.is_empty() && quantity > 0 {
            rows.push((String::new(), quantity));
        }
        {
            let mut usage = txn.open_table(USAGE).map_err(|e| fail(e.into()))?;
            for (tags, micros) in &rows {
                let micros = *micros;
                let mut target = into;
                loop {
                    let totals = self
                        .store
                        .open
                        .entry(target)
                        .or_default()
                        .entry(dimension.to_owned())
                        .or_default();
                    let mut with = totals.clone();
                    with.quantity += micros;
                    with.tag_sets.insert(tags.clone());
                    if with.quantity <= MAX_REPORT_QUANTITY.micros()
                        && with.allocations() <= MAX_ALLOCATIONS
                    {
                        *totals = with;
                        break;
                    }
                    target += 1;
                }
                add(&mut usage, (target, dimension, tags), micros).map_err(&fail)?;
            }
        }
        self.settle(
            hour,
            dimension,
            &HourRecord::Carried {
                quantity,
                into,
                at: epoch_seconds(now),
            },
        )
    }

    /// Commits every change of the batch with one sync. After a failure the store's view is
    /// not the file's: the store must be reopened ([`Store::reopen`]) before it writes again.
    pub fn commit(mut self) -> Result<(), StoreError> {
        let txn = self.txn.take().expect("open until committed");
        let fail = |e| failed(&self.store.path, e);
        for (dimension, micros) in &self.acknowledged {
            count(&txn, dimension, Part::Acknowledged, *micros).map_err(fail)?;
        }
        txn.commit().map_err(|e| failed(&self.store.path, e))?;
        self.store.commits += 1;
        Ok(())
    }
}

/// The tables a group of submissions writes to, opened once.
struct Accepting<'txn> {
    ids: redb::Table<'txn, u128, ()>,
    previous_ids: Option<redb::Table<'txn, u128, ()>>,
    usage: redb::Table<'txn, (u64, &'static str, &'static str), u64>,
}

/// One submission, all or none (see [`Batch::accept`]).
fn accept_one(
    store: &mut Store,
    tables: &mut Accepting<'_>,
    reports: &[Report],
    hour: u64,
) -> Result<Result<Accepted, report::Invalid>, redb::Error> {
    let mut fresh = Vec::with_capacity(reports.len());
    let mut fresh_ids = Vec::new();
    let mut duplicates = 0;
    for (index, report) in reports.iter().enumerate() {
        if let Some(id) = &report.id {
            let hash = store.ids.hash(id);
            let counted = fresh_ids.contains(&hash)
                || tables.ids.get(hash)?.is_some()
                || match &tables.previous_ids {
                    Some(previous) => previous.get(hash)?.is_some(),
                    None => false,
                };
            if counted {
                duplicates += 1;
                continue;
            }
            fresh_ids.push(hash);
        }
        fresh.push((index, report));
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
        totals.quantity += report.quantity.micros();
        if report.quantity > Quantity::ZERO {
            totals.tag_sets.insert(report::tags_key(&report.tags));
        }
        let record = if reports.len() > 1 {
            format!("record {index}: ")
        } else {
            String::new()
        };
        if totals.quantity > MAX_REPORT_QUANTITY.micros() {
            return Ok(Err(report::Invalid(format!(
                "{record}the hour's total for {:?} would be {}, over MeterUsage's maximum of {MAX_QUANTITY}",
                report.dimension,
                Quantity::from_micros(totals.quantity)
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
    for (_, report) in fresh.iter().filter(|(_, r)| r.quantity > Quantity::ZERO) {
        *sums
            .entry((&report.dimension, report::tags_key(&report.tags)))
            .or_default() += report.quantity.micros();
    }
    for ((dimension, tags), micros) in &sums {
        let key = (hour, *dimension, tags.as_str());
        let before = tables.usage.get(key)?.map_or(0, |v| v.value());
        tables.usage.insert(key, before + micros)?;
    }
    for hash in &fresh_ids {
        tables.ids.insert(hash, ())?;
    }
    let open = store.open.entry(hour).or_default();
    for (dimension, totals) in tentative {
        open.insert(dimension.to_owned(), totals);
    }
    let mut counted: BTreeMap<String, (u64, Quantity)> = BTreeMap::new();
    for (_, report) in &fresh {
        let (reports, quantity) = counted
            .entry(report.dimension.clone())
            .or_insert((0, Quantity::ZERO));
        *reports += 1;
        *quantity = Quantity::from_micros(quantity.micros() + report.quantity.micros());
    }
    Ok(Ok(Accepted {
        records: reports.len(),
        duplicates,
        hour,
        counted,
    }))
}

/// Adds `micros` to the ledger's `part` of `dimension`.
fn count(
    txn: &redb::WriteTransaction,
    dimension: &str,
    part: Part,
    micros: u128,
) -> Result<(), redb::Error> {
    let mut ledger = txn.open_table(LEDGER)?;
    let before = ledger
        .get((dimension, part as u8))?
        .map_or(0, |v| v.value());
    ledger.insert((dimension, part as u8), before + micros)?;
    Ok(())
}

/// Adds `micros` to the usage row at `key`.
fn add(
    usage: &mut redb::Table<'_, (u64, &str, &str), u64>,
    key: (u64, &str, &str),
    micros: u64,
) -> Result<(), redb::Error> {
    let before = usage.get(key)?.map_or(0, |v| v.value());
    usage.insert(key, before + micros)?;
    Ok(())
}

/// Forgets settled hour records older than [`SETTLED_KEPT_PERIODS`], as of the hour just
/// closed (the ledger keeps their units).
fn forget_settled(txn: &redb::WriteTransaction, closed: u64) -> Result<(), redb::Error> {
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
    use crate::domain::quantity::MICROS_PER_UNIT;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    const UNIT: u64 = MICROS_PER_UNIT;
    const WINDOW: Duration = Duration::from_secs(3600);

    fn report(dimension: &str, micros: u64, tags: &[(&str, &str)], id: Option<&str>) -> Report {
        Report {
            dimension: dimension.to_owned(),
            quantity: Quantity::from_micros(micros),
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

    fn open(dir: &Path) -> Store {
        Store::open(dir, "prod", Period::HOUR, WINDOW).unwrap()
    }

    /// One submission in `batch`.
    fn one(
        batch: &mut Batch<'_>,
        reports: &[Report],
        hour: u64,
    ) -> Result<Accepted, report::Invalid> {
        batch.accept(&[reports], hour, at(hour)).unwrap().remove(0)
    }

    fn accept(store: &mut Store, reports: &[Report], hour: u64) -> Accepted {
        let mut batch = store.batch().unwrap();
        let accepted = one(&mut batch, reports, hour).unwrap();
        batch.commit().unwrap();
        accepted
    }

    fn close(store: &mut Store, before: u64, also: Option<u64>, last: Rounding) -> Vec<u64> {
        let mut batch = store.batch().unwrap();
        let closed = batch.close(before, also, &dims(), true, last).unwrap();
        batch.commit().unwrap();
        closed
    }

    fn settle(store: &mut Store, hour: u64, dimension: &str, record: HourRecord) {
        let mut batch = store.batch().unwrap();
        batch.settle(hour, dimension, &record).unwrap();
        batch.commit().unwrap();
    }

    fn sent(quantity: u64) -> HourRecord {
        HourRecord::Sent {
            quantity,
            record_id: "r".into(),
            sent_at: 1,
        }
    }

    fn ledger(store: &Store, dimension: &str) -> Ledger {
        let ledger = store.reader().ledger().unwrap()[dimension];
        assert!(ledger.balances(), "{dimension}: {ledger:?}");
        ledger
    }

    #[test]
    fn accepted_usage_survives_reopening_and_ids_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let instance = {
            let mut store = open(dir.path());
            let mut batch = store.batch().unwrap();
            let first = one(
                &mut batch,
                &[
                    report("requests", 3 * UNIT, &[], Some("a")),
                    report("requests", 250_000, &[("team", "x")], None),
                ],
                10,
            )
            .unwrap();
            assert_eq!((first.records, first.duplicates), (2, 0));
            let again = one(
                &mut batch,
                &[report("requests", 3 * UNIT, &[], Some("a"))],
                10,
            )
            .unwrap();
            assert_eq!((again.records, again.duplicates), (1, 1));
            batch.commit().unwrap();
            store.instance_id.clone()
        };
        let mut store = open(dir.path());
        assert_eq!(store.instance_id, instance, "the instance ID is kept");
        let totals = &store.open_hours()[&10]["requests"];
        assert_eq!(totals.quantity, 3_250_000);
        assert_eq!(totals.allocations(), 2);
        let resent = accept(
            &mut store,
            &[report("requests", 3 * UNIT, &[], Some("a"))],
            10,
        );
        assert_eq!(resent.duplicates, 1, "remembered across a restart");
        let counted = ledger(&store, "requests");
        assert_eq!(counted.acknowledged, 3_250_000);
        assert_eq!(counted.unsent, 3_250_000);
    }

    #[test]
    fn the_state_stays_locked_while_it_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        store.reopen().unwrap();
        assert!(matches!(
            Store::open(dir.path(), "prod", Period::HOUR, WINDOW),
            Err(StoreError::InUse { .. })
        ));
        // An earlier sidecar opened the file with redb's own backend, which also takes flock.
        assert!(matches!(
            Database::create(dir.path().join(FILE_NAME)),
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
        ));
        accept(&mut store, &[report("users", 2 * UNIT, &[], None)], 10);
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.open_hours()[&10]["users"].quantity, 2 * UNIT);
        assert_eq!(store.commits(), 1, "the batch was numbered");
    }

    #[test]
    fn submissions_of_one_group_commit_are_each_all_or_none_and_see_each_others_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let first = [report("users", UNIT, &[], Some("a"))];
        let too_much = [
            report("users", 2 * UNIT, &[], Some("b")),
            report("users", MAX_QUANTITY * UNIT, &[], None),
        ];
        let again = [
            report("users", UNIT, &[], Some("a")),
            report("users", 3 * UNIT, &[], Some("b")),
        ];
        let mut batch = store.batch().unwrap();
        let results = batch
            .accept(&[&first, &too_much, &again], 10, at(10))
            .unwrap();
        batch.commit().unwrap();
        assert_eq!(results[0].as_ref().unwrap().duplicates, 0);
        assert!(results[1].is_err(), "over the maximum: refused whole");
        let again = results[2].as_ref().unwrap();
        // "a" was counted by the first submission; "b" only by the refused one, so not at all.
        assert_eq!((again.records, again.duplicates), (2, 1));
        assert_eq!(ledger(&store, "users").acknowledged, 4 * UNIT as u128);
    }

    #[test]
    fn a_second_process_product_period_or_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert!(matches!(
            Store::open(dir.path(), "prod", Period::HOUR, WINDOW),
            Err(StoreError::InUse { .. })
        ));
        drop(store);
        assert!(matches!(
            Store::open(dir.path(), "other", Period::HOUR, WINDOW),
            Err(StoreError::OtherProduct { .. })
        ));
        let short = Period::from_duration(Duration::from_secs(2)).unwrap();
        assert!(matches!(
            Store::open(dir.path(), "prod", short, WINDOW),
            Err(StoreError::OtherPeriod { .. })
        ));
        // A state written before quantities were exact (no format mark) is not misread.
        let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().remove("schema").unwrap();
        txn.commit().unwrap();
        drop(db);
        assert!(matches!(
            Store::open(dir.path(), "prod", Period::HOUR, WINDOW),
            Err(StoreError::OtherFormat { found, .. }) if found == "1"
        ));
    }

    #[test]
    fn limits_refuse_the_whole_submission() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let mut batch = store.batch().unwrap();
        one(
            &mut batch,
            &[report("users", (MAX_QUANTITY - 1) * UNIT, &[], None)],
            10,
        )
        .unwrap();
        let over = one(
            &mut batch,
            &[
                report("requests", UNIT, &[], None),
                report("users", UNIT + 1, &[], None),
            ],
            10,
        )
        .unwrap_err();
        assert!(
            over.0.contains("record 1") && over.0.contains("2147483647.000001"),
            "{over}"
        );
        batch.commit().unwrap();
        assert!(
            !store.open_hours()[&10].contains_key("requests"),
            "nothing of a refused submission is recorded"
        );
        assert_eq!(
            ledger(&store, "users").acknowledged,
            (MAX_QUANTITY - 1) as u128 * 1_000_000
        );
        let mut batch = store.batch().unwrap();
        let many: Vec<Report> = (0..MAX_ALLOCATIONS)
            .map(|i| report("requests", UNIT, &[("n", &i.to_string())], None))
            .collect();
        one(&mut batch, &many, 12).unwrap();
        let one_more = one(
            &mut batch,
            &[report("requests", UNIT, &[("n", "new")], None)],
            12,
        )
        .unwrap_err();
        assert!(one_more.0.contains("2500 allocations"), "{one_more}");
    }

    #[test]
    fn closing_bills_whole_units_and_carries_the_fraction_per_dimension() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        // 0.1 + 0.2 + 2.45 in hour 10: 2 units billed, 0.75 carried.
        accept(
            &mut store,
            &[
                report("requests", 100_000, &[("team", "a")], None),
                report("requests", 200_000, &[("team", "b")], None),
                report("requests", 2_450_000, &[("team", "a")], None),
            ],
            10,
        );
        assert_eq!(close(&mut store, 11, None, Rounding::Down), vec![10]);
        let unsent = store.reader().unsent().unwrap();
        assert_eq!(
            unsent
                .iter()
                .map(|u| (u.hour, u.dimension.as_str(), u.quantity))
                .collect::<Vec<_>>(),
            vec![(10, "requests", 2 * UNIT), (10, "users", 0)],
            "send-zero gives every dimension a record"
        );
        let allocations = store.reader().allocations(10, "requests").unwrap();
        assert_eq!(allocations.iter().map(|(_, q)| q).sum::<u64>(), 2 * UNIT);
        let requests = ledger(&store, "requests");
        assert_eq!(
            (
                requests.acknowledged,
                requests.unsent,
                requests.carried_fraction
            ),
            (2_750_000, 2_000_000, 750_000)
        );
        // Stopped and restarted within hour 10: reports go to hour 11.
        assert_eq!(store.accepting_hour(at(10)), 11);
        // 0.5 more in hour 11: with the 0.75 carried in, 1 unit, 0.25 carried on.
        accept(&mut store, &[report("requests", 500_000, &[], None)], 11);
        close(&mut store, 12, None, Rounding::Down);
        let hour_11 = store.reader().unsent().unwrap();
        assert!(hour_11.iter().any(|u| (u.hour, u.quantity) == (11, UNIT)));
        assert!(
            store
                .reader()
                .allocations(11, "requests")
                .unwrap()
                .is_empty(),
            "untagged"
        );
        settle(&mut store, 10, "requests", sent(2 * UNIT));
        settle(&mut store, 11, "requests", sent(UNIT));
        // A settled record settled again (a resend's answer) does not count twice.
        settle(&mut store, 11, "requests", sent(UNIT));
        let requests = ledger(&store, "requests");
        assert_eq!(
            (requests.billed, requests.unsent, requests.carried_fraction),
            (3_000_000, 0, 250_000)
        );
        assert!(store
            .reader()
            .allocations(10, "requests")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn rounding_up_at_shutdown_bills_a_fraction_even_without_usage_in_the_last_hour() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        accept(&mut store, &[report("requests", 1_400_000, &[], None)], 10);
        close(&mut store, 11, None, Rounding::Down);
        let mut batch = store.batch().unwrap();
        batch.mark_open(11).unwrap();
        batch.commit().unwrap();
        let mut batch = store.batch().unwrap();
        batch
            .close(11, Some(11), &dims(), false, Rounding::Up)
            .unwrap();
        batch.commit().unwrap();
        let last = store.reader().unsent().unwrap();
        assert!(last
            .iter()
            .any(|u| (u.hour, u.dimension.as_str(), u.quantity) == (11, "requests", UNIT)));
        let requests = ledger(&store, "requests");
        assert_eq!(
            requests.carried_fraction, -600_000,
            "a credit for a restart on this state"
        );
    }

    #[test]
    fn a_carried_hour_moves_its_bill_into_the_open_hour_and_refusals_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        accept(
            &mut store,
            &[
                report("requests", 4 * UNIT, &[("team", "a")], None),
                report("requests", 1_500_000, &[], None),
            ],
            10,
        );
        close(&mut store, 11, None, Rounding::Down);
        let mut batch = store.batch().unwrap();
        batch.carry(10, "requests", 16, at(16)).unwrap();
        batch.commit().unwrap();
        assert_eq!(store.open_hours()[&16]["requests"].quantity, 5 * UNIT);
        assert!(store
            .reader()
            .allocations(10, "requests")
            .unwrap()
            .is_empty());
        let requests = ledger(&store, "requests");
        assert_eq!(
            (requests.unsent, requests.carried_fraction),
            (5 * UNIT as u128, 500_000)
        );
        close(&mut store, 17, None, Rounding::Down);
        let allocations = store.reader().allocations(16, "requests").unwrap();
        assert_eq!(allocations.len(), 2);
        assert_eq!(allocations.iter().map(|(_, q)| q).sum::<u64>(), 5 * UNIT);
        settle(
            &mut store,
            16,
            "requests",
            HourRecord::Duplicate {
                quantity: 5 * UNIT,
                message: "m".into(),
                at: 1,
            },
        );
        settle(
            &mut store,
            10,
            "users",
            HourRecord::InDoubt { quantity: 0, at: 1 },
        );
        let requests = ledger(&store, "requests");
        assert_eq!((requests.refused, requests.unsent), (5 * UNIT as u128, 0));
    }

    #[test]
    fn report_ids_are_forgotten_a_window_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        accept(&mut store, &[report("users", UNIT, &[], Some("old"))], 10);
        // The next window still remembers it.
        let again = accept(&mut store, &[report("users", UNIT, &[], Some("old"))], 11);
        assert_eq!(again.duplicates, 1);
        // Two windows on, its table is dropped whole.
        let mut batch = store.batch().unwrap();
        batch.forget_ids(at(12)).unwrap();
        batch.commit().unwrap();
        let tables = |store: &Store| {
            let txn = store.db().unwrap().begin_read().unwrap();
            txn.list_tables()
                .unwrap()
                .map(|t| t.name().to_owned())
                .filter(|name| name.starts_with(IDS_PREFIX))
                .count()
        };
        assert_eq!(tables(&store), 1, "window 10's table is gone, 11's is kept");
        let later = accept(&mut store, &[report("users", UNIT, &[], Some("old"))], 12);
        assert_eq!(later.duplicates, 0, "forgotten");
        assert_eq!(tables(&store), 2, "this window's and the one before");
    }

    /// One step of a random run against the state.
    #[derive(Debug, Clone)]
    enum Step {
        Report {
            dimension: usize,
            micros: u64,
            tag: u8,
            id: Option<u8>,
        },
        NextHour,
        Settle {
            outcome: u8,
        },
        Carry,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0usize..2, 0u64..3_000_000, 0u8..3, proptest::option::of(0u8..20))
                .prop_map(|(dimension, micros, tag, id)| Step::Report { dimension, micros, tag, id }),
            2 => Just(Step::NextHour),
            2 => (0u8..4).prop_map(|outcome| Step::Settle { outcome }),
            1 => Just(Step::Carry),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn every_acknowledged_micro_unit_is_accounted_for_after_every_commit(
            steps in proptest::collection::vec(step(), 1..40),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut store = open(dir.path());
            let reader = store.reader();
            let names = ["requests", "users"];
            let mut hour = 10;
            let mut acknowledged = [0u128; 2];
            let mut billed = [0u128; 2];
            for step in steps {
                let mut batch = store.batch().unwrap();
                match step {
                    Step::Report { dimension, micros, tag, id } => {
                        let tags = [("team", ["a", "b", "c"][tag as usize])];
                        let id = id.map(|n| format!("id-{n}"));
                        let r = report(names[dimension], micros, if tag == 0 { &[] } else { &tags }, id.as_deref());
                        let accepted = one(&mut batch, &[r], hour).unwrap();
                        if accepted.duplicates == 0 {
                            acknowledged[dimension] += u128::from(micros);
                        }
                    }
                    Step::NextHour => {
                        hour += 1;
                        batch.close(hour, None, &dims(), true, Rounding::Down).unwrap();
                    }
                    Step::Settle { outcome } => {
                        if let Some(unsent) = reader.unsent().unwrap().first() {
                            let record = match outcome {
                                0 | 1 => sent(unsent.quantity),
                                2 => HourRecord::Duplicate { quantity: unsent.quantity, message: "m".into(), at: 1 },
                                _ => HourRecord::InDoubt { quantity: unsent.quantity, at: 1 },
                            };
                            if outcome <= 1 {
                                let index = names.iter().position(|n| *n == unsent.dimension).unwrap();
                                billed[index] += u128::from(unsent.quantity);
                            }
                            batch.settle(unsent.hour, &unsent.dimension, &record).unwrap();
                        }
                    }
                    Step::Carry => {
                        if let Some(unsent) = reader.unsent().unwrap().first() {
                            batch.carry(unsent.hour, &unsent.dimension, hour, at(hour)).unwrap();
                        }
                    }
                }
                batch.commit().unwrap();
                let ledgers = store.reader().ledger().unwrap();
                for (index, name) in names.iter().enumerate() {
                    let counted = ledgers.get(*name).copied().unwrap_or_default();
                    prop_assert!(counted.balances(), "{name}: {counted:?}");
                    prop_assert_eq!(counted.acknowledged, acknowledged[index]);
                    prop_assert_eq!(counted.billed, billed[index]);
                    prop_assert!(counted.carried_fraction >= 0 && counted.carried_fraction < UNIT as i128);
                }
            }
        }
    }
}
