//! Reopening, without a restart, once an I/O error (a full disk) has poisoned
//! redb's handle.
//!
//! A write that fails with an I/O error (a full disk) poisons redb's handle: it
//! refuses every later write ("Previous I/O error occurred") until the database
//! is closed and opened again. The writer then turns the ledger unwritable
//! (writes get `NotWritten`, readiness says `ledger_unwritable`), opens a fresh
//! handle (redb's repair falls back to the last durable commit), and probes it
//! with a small write, with backoff, until one succeeds; no restart is needed.
//! A batch whose commit failed is answered only once the fresh handle says
//! whether it reached the disk: its own answers if it did, `NotWritten` if not,
//! `Unavailable` if that cannot be told. So no write is acknowledged that is not
//! durable, and none refused as `NotWritten` was applied.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use backon::{ExponentialBackoff, ExponentialBuilder};
use redb::ReadableTable;
use redb::{Database, Durability};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};
use voucherd_core::domain::Timestamp;
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::HalfKind;
use voucherd_core::limits::{
    LEDGER_ERROR_LOG_INTERVAL_MS, LEDGER_RECOVERY_MAX_DELAY_MS, LEDGER_RECOVERY_MIN_DELAY_MS,
    LEDGER_RECOVERY_POLL_MS, LEDGER_SPACE_PROBE_BYTES,
};

use super::tables::{ACCOUNTS, PROBES, TRANSACTIONS, VOUCHERS, WALLET_HEAD};
use super::writer;
use super::writer::{Applied, Writer};
use super::{db_error, RECOVERING};
use crate::queue::{Queued, QueuedWrite, WriteAnswer};

/// A scratch file the recovering writer writes (and removes) to see whether the
/// disk has room again before it risks a probe write on the database.
const SPACE_PROBE_FILE: &str = "voucherd.space-probe";

/// A batch whose commit failed, waiting for its answers.
pub(super) struct Unresolved {
    pub(super) applied: Vec<Applied>,
    /// The last transaction sequence before the batch.
    pub(super) previous_sequence: u64,
    /// The last transaction sequence the batch would have committed.
    pub(super) batch_sequence: u64,
}

impl Unresolved {
    /// Answers from what the reopened database holds: the batch's own answers if
    /// its commit reached the disk, `NotWritten` if it did not.
    pub(super) fn resolve(self, db: &Database) {
        match self.landed(db) {
            Ok(landed @ (Some(true) | None)) => {
                if landed.is_some() {
                    tracing::warn!(
                        operations = self.applied.len(),
                        "a failed ledger commit reached the disk; its answers stand"
                    );
                }
                for done in self.applied {
                    done.answer(None);
                }
            }
            Ok(Some(false)) => {
                let refusal = Error::not_written("the ledger commit failed");
                for done in self.applied {
                    done.answer(Some(&refusal));
                }
            }
            Err(error) => self.give_up(error),
        }
    }

    /// Answers when the outcome cannot be told: not acknowledged, retry (every
    /// ledger write is safe to repeat by its key, like a lost PostgreSQL commit).
    pub(super) fn give_up(self, cause: impl std::fmt::Display) {
        let unknown = Error::unavailable(format!("outcome of a failed ledger commit: {cause}"));
        for done in self.applied {
            done.answer(Some(&unknown));
        }
    }

    /// Whether the batch is in the database: Some(found), or None when it wrote
    /// nothing (every write was refused on its merits), so its answers hold
    /// either way. A batch commits whole or not at all, so one of its rows
    /// tells: the last transaction it appended, else its first new voucher or
    /// wallet (which did not exist before it, or it would have been refused).
    pub(super) fn landed(&self, db: &Database) -> Result<Option<bool>> {
        let txn = db.begin_read().map_err(db_error)?;
        if self.batch_sequence > self.previous_sequence {
            let transactions = txn.open_table(TRANSACTIONS).map_err(db_error)?;
            let found = transactions
                .get(self.batch_sequence)
                .map_err(db_error)?
                .is_some();
            return Ok(Some(found));
        }
        for done in &self.applied {
            match &done.outcome {
                WriteAnswer::Voucher(Ok(status)) => {
                    let vouchers = txn.open_table(VOUCHERS).map_err(db_error)?;
                    let code = status.voucher.code.as_str();
                    return Ok(Some(vouchers.get(code).map_err(db_error)?.is_some()));
                }
                WriteAnswer::Wallet(Ok(wallet)) => {
                    let accounts = txn.open_table(ACCOUNTS).map_err(db_error)?;
                    let key = (wallet.phone.stored(), WALLET_HEAD);
                    return Ok(Some(accounts.get(key).map_err(db_error)?.is_some()));
                }
                _ => {}
            }
        }
        Ok(None)
    }
}

/// What became of an attempt to replace the poisoned handle.
pub(super) enum Reopen {
    Opened,
    /// Reads still hold the old handle (and with it redb's file lock).
    ReadersBusy,
    Failed(Error),
}

impl<H: HalfKind> Writer<H> {
    /// Runs while the ledger cannot write: refuses every write at once, swaps
    /// the poisoned handle for a fresh one (reads work again on it), answers
    /// the batch whose commit failed as soon as that can be told, and probes
    /// with backoff until a write succeeds. Returns the shutdown request if one
    /// came first: the ledger then stops unrecovered, which loses nothing,
    /// since every write it acknowledged is durable.
    pub(super) fn recover(
        &mut self,
        queue: &mut mpsc::Receiver<Queued<QueuedWrite>>,
        unresolved: Option<Unresolved>,
    ) -> Option<oneshot::Sender<()>> {
        self.database.writable.store(false, Ordering::Release);
        tracing::error!("the ledger cannot write; refusing writes until a probe write succeeds");
        let mut reopening = Reopening::start(unresolved);
        loop {
            if let ControlFlow::Break(shutdown) = reopening.refuse_queued(queue) {
                return shutdown;
            }
            let now = Instant::now();
            if reopening.poisoned && now >= reopening.next_reopen {
                self.reopen_step(&mut reopening, now);
            }
            if !reopening.poisoned
                && now >= reopening.next_probe
                && self.probe_step(&mut reopening, now)
            {
                return None;
            }
            std::thread::sleep(Duration::from_millis(LEDGER_RECOVERY_POLL_MS));
        }
    }

    /// Tries to replace the poisoned handle; once it is replaced, the batch
    /// whose commit failed can be told.
    fn reopen_step(&mut self, reopening: &mut Reopening, now: Instant) {
        match self.reopen() {
            Reopen::Opened => {
                reopening.poisoned = false;
                if let (Some(batch), Some(db)) = (reopening.unresolved.take(), &self.db) {
                    batch.resolve(db);
                }
            }
            Reopen::ReadersBusy => {}
            Reopen::Failed(error) => {
                self.record_failure("reopening the ledger database failed", &error);
                if let Some(batch) = reopening.unresolved.take() {
                    batch.give_up(&error);
                }
                reopening.next_reopen = now + reopening.next_delay();
            }
        }
    }

    /// Probes once; true when the ledger writes again.
    fn probe_step(&mut self, reopening: &mut Reopening, now: Instant) -> bool {
        match self.probe() {
            Ok(last_sequence) => {
                self.last_sequence = last_sequence;
                self.database.writable.store(true, Ordering::Release);
                tracing::info!(
                    unwritable_ms = reopening.since.elapsed().as_millis() as u64,
                    "the ledger writes again"
                );
                return true;
            }
            Err(Probe::NoRoom(error)) => {
                self.record_failure("the ledger's disk has no room yet", &error);
            }
            Err(Probe::Failed(error)) => {
                // The failed write poisoned the handle: replace it at once, so
                // reads go on while the next probe waits.
                self.record_failure("ledger probe write failed", &error);
                reopening.poisoned = true;
                reopening.next_reopen = now;
            }
        }
        reopening.next_probe = now + reopening.next_delay();
        false
    }

    /// Replaces the handle: takes it from readers, waits for those still using
    /// it to finish (they hold redb's file lock), and opens the file again,
    /// which repairs it to its last durable commit.
    pub(super) fn reopen(&mut self) -> Reopen {
        self.database.current.write().take();
        if let Some(db) = self.db.take() {
            match Arc::try_unwrap(db) {
                Ok(db) => drop(db),
                Err(still_read) => {
                    self.db = Some(still_read);
                    return Reopen::ReadersBusy;
                }
            }
        }
        match Database::create(self.database.file()) {
            Ok(db) => {
                let db = Arc::new(db);
                *self.database.current.write() = Some(db.clone());
                self.db = Some(db);
                Reopen::Opened
            }
            Err(error) => Reopen::Failed(Error::unavailable(format!(
                "reopening the ledger database: {error}"
            ))),
        }
    }

    /// Checks that the disk has room, then writes a probe row; returns the last
    /// transaction sequence, read in the same write transaction.
    pub(super) fn probe(&self) -> Result<u64, Probe> {
        has_room(&self.database.directory)
            .map_err(|error| Probe::NoRoom(Error::unavailable(format!("space probe: {error}"))))?;
        let db = self
            .db
            .as_ref()
            .ok_or_else(|| Probe::Failed(Error::unavailable("no database handle")))?;
        probe_write(db).map_err(Probe::Failed)
    }

    pub(super) fn record_failure(&mut self, failure: &'static str, error: &Error) {
        self.metrics.count_ledger_write_error();
        self.errors.log(failure, error);
    }
}

/// Where a recovering writer stands.
struct Reopening {
    since: Instant,
    delays: ExponentialBackoff,
    /// Whether the handle still has to be replaced.
    poisoned: bool,
    next_reopen: Instant,
    next_probe: Instant,
    /// The batch whose commit failed, until it can be told whether it landed.
    unresolved: Option<Unresolved>,
}

impl Reopening {
    fn start(unresolved: Option<Unresolved>) -> Self {
        let since = Instant::now();
        let mut delays = recovery_delays();
        let next_probe = since + next_delay(&mut delays);
        Reopening {
            since,
            delays,
            poisoned: true,
            next_reopen: since,
            next_probe,
            unresolved,
        }
    }

    fn next_delay(&mut self) -> Duration {
        next_delay(&mut self.delays)
    }

    /// Refuses every queued write; breaks (with the shutdown request, if that
    /// is why) when the ledger is to stop, giving up on the unresolved batch.
    fn refuse_queued(
        &mut self,
        queue: &mut mpsc::Receiver<Queued<QueuedWrite>>,
    ) -> ControlFlow<Option<oneshot::Sender<()>>> {
        loop {
            let (why, shutdown) = match queue.try_recv() {
                Ok(Queued::Write(op)) => {
                    writer::refuse(op, Error::not_written(RECOVERING));
                    continue;
                }
                Ok(Queued::Shutdown(done)) => {
                    ("the ledger shut down before it could tell", Some(done))
                }
                Err(TryRecvError::Empty) => return ControlFlow::Continue(()),
                Err(TryRecvError::Disconnected) => {
                    ("the ledger was dropped before it could tell", None)
                }
            };
            if let Some(batch) = self.unresolved.take() {
                batch.give_up(why);
            }
            return ControlFlow::Break(shutdown);
        }
    }
}

/// Why a reopening probe failed.
pub(super) enum Probe {
    /// The scratch file could not be written: the disk is still full. The
    /// database handle was not touched and keeps serving reads.
    NoRoom(Error),
    /// The probe write on the database failed, which poisons the handle.
    Failed(Error),
}

/// The waits between reopening steps: doubling from the least to the longest.
fn recovery_delays() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(LEDGER_RECOVERY_MIN_DELAY_MS))
        .with_max_delay(Duration::from_millis(LEDGER_RECOVERY_MAX_DELAY_MS))
        .without_max_times()
        .build()
}

fn next_delay(delays: &mut ExponentialBackoff) -> Duration {
    delays
        .next()
        .unwrap_or(Duration::from_millis(LEDGER_RECOVERY_MAX_DELAY_MS))
}

/// Writes (durably) and removes a scratch file of [`LEDGER_SPACE_PROBE_BYTES`]
/// beside the database: a cheap sign that the disk has room again, which does
/// not poison the database handle when it fails.
fn has_room(directory: &Path) -> std::io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let path = directory.join(SPACE_PROBE_FILE);
    let written = (|| {
        let mut file = std::fs::File::create(&path)?;
        let mut left = LEDGER_SPACE_PROBE_BYTES;
        while left > 0 {
            let chunk = left.min(ZEROS.len());
            file.write_all(&ZEROS[..chunk])?;
            left -= chunk;
        }
        file.sync_data()
    })();
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}

/// The small durable write that tells the recovering writer the database takes
/// writes again; returns the last transaction sequence.
fn probe_write(db: &Database) -> Result<u64> {
    let mut txn = db.begin_write().map_err(db_error)?;
    txn.set_durability(Durability::Immediate);
    let last_sequence = {
        let mut probes = txn.open_table(PROBES).map_err(db_error)?;
        probes
            .insert("last", Timestamp::now().0)
            .map_err(db_error)?;
        let transactions = txn.open_table(TRANSACTIONS).map_err(db_error)?;
        let last = transactions.last().map_err(db_error)?;
        last.map_or(0, |(key, _)| key.value())
    };
    txn.commit().map_err(db_error)?;
    Ok(last_sequence)
}

/// Logs repeated ledger I/O errors at most once per
/// [`LEDGER_ERROR_LOG_INTERVAL_MS`] (a full disk fails every probe), with the
/// number left out since the last line.
#[derive(Default)]
pub(super) struct ErrorLog {
    pub(super) last: Option<Instant>,
    pub(super) suppressed: u64,
}

impl ErrorLog {
    pub(super) fn log(&mut self, failure: &'static str, error: &Error) {
        let interval = Duration::from_millis(LEDGER_ERROR_LOG_INTERVAL_MS);
        if self.last.is_some_and(|at| at.elapsed() < interval) {
            self.suppressed += 1;
            return;
        }
        tracing::error!(%error, failure, suppressed = self.suppressed, "ledger write failed");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}
