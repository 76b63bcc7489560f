//! The claim protocol: the user's key first, then the slot, then the key
//! again. The same driver ([`Inner::drive`]) runs the contender's attempt and
//! recovery's finishing of an interrupted one: each step is chosen from what
//! the key and the slot hold now, and a step answered `NotApplied` or
//! `Unknown` only refreshes that view (a serial read settles the unknown),
//! so two drivers of one attempt agree and a step is never assumed failed.

use uuid::Uuid;

use super::schema::{
    col, get_int, int, key_of, row_of, text, uuid, Attempt, Holder, KeyState, LogEntry, SlotState,
    VoucherRow,
};
use super::store::{Assignment, Cas, CasOutcome, CasStore, Row, RowKey, Value, Write};
use super::Inner;
use voucherd_core::domain::{Redemption, RedemptionStatus};
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::{Claim, HalfKind};

/// Times a claim starts over when the user's key changed under its start.
const START_TRIES: usize = 3;

/// How an attempt ended: it holds the redemption (the key as it now stands),
/// or it lost its slot and its key was released.
pub(super) enum Finish {
    Won(Option<Row>),
    Lost,
}

/// The next step of an attempt, from the slot as last seen (and whether that
/// view is linearizable and newer than the key's: a plain read may be stale,
/// and a key written since may expect another generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The slot holds the attempt: commit the key.
    Commit,
    /// The slot is free at the expected generation: take it.
    Take,
    /// Decide on a serial read.
    Refresh,
    /// The slot was taken and freed since the attempt read it: the take
    /// expecting the old generation can never apply; expect the current one.
    Move(i64),
    /// Another attempt took the slot since: release the key.
    Abort,
}

/// A take expects the generation it saw the slot free at; only a take moves
/// a generation on, by one. So a slot seen (freshly) past that generation,
/// free or held by another, tells that the take can never apply; a slot seen
/// at or before it is a view older than the attempt's, to read again.
fn next_step(slot: &SlotState, fresh: bool, holder: Holder, attempt: &Attempt) -> Step {
    let gen = slot.generation();
    match slot.holder {
        Some(held) if held == holder => Step::Commit,
        None if gen == attempt.gen => Step::Take,
        _ if !fresh || gen <= attempt.gen => Step::Refresh,
        None => Step::Move(gen),
        Some(_) => Step::Abort,
    }
}

fn start_set(voucher: &VoucherRow, claim: &Claim, attempt: &Attempt) -> Vec<Assignment> {
    vec![
        (col::CODE, text(claim.code.as_str())),
        (col::PHONE, int(claim.phone.stored() as i64)),
        (col::AMOUNT, int(voucher.voucher.amount)),
        (col::ATTEMPT, uuid(attempt.nonce)),
        (col::ATTEMPT_SLOT, int(i64::from(attempt.slot))),
        (col::ATTEMPT_GEN, int(attempt.gen)),
        (col::ATTEMPT_AT, int(attempt.at.0)),
    ]
}

fn clear_attempt() -> Vec<Assignment> {
    vec![
        (col::ATTEMPT, None),
        (col::ATTEMPT_SLOT, None),
        (col::ATTEMPT_GEN, None),
        (col::ATTEMPT_AT, None),
    ]
}

fn commit_set(attempt: &Attempt) -> Vec<Assignment> {
    let mut set = vec![
        (
            col::STATUS,
            int(i64::from(RedemptionStatus::Pending.stored())),
        ),
        (col::SLOT, int(i64::from(attempt.slot))),
        (col::SLOT_ATTEMPT, uuid(attempt.nonce)),
        (col::CLAIMED_AT, int(attempt.at.0)),
        (col::BALANCE, None),
    ];
    set.extend(clear_attempt());
    set
}

/// The take of slot `key` by `holder` at the generation `state` shows, and
/// the slot as it stands once applied. The condition names the slot's own
/// row only, so takes of different slots never refuse each other.
fn take_write(key: &RowKey, state: &SlotState, holder: Holder) -> (Cas, SlotState) {
    let taken = SlotState {
        gen: Some(state.generation() + 1),
        holder: Some(holder),
    };
    let write = Write::Update {
        row: key.row.clone(),
        when: vec![(col::GEN, state.gen.map(Value::Int)), (col::HOLDER, None)],
        set: vec![
            (col::GEN, taken.gen.map(Value::Int)),
            (col::HOLDER, uuid(holder.id)),
            (col::ATTEMPT, uuid(holder.attempt)),
        ],
    };
    let cas = Cas {
        partition: key.partition.clone(),
        writes: vec![write],
    };
    (cas, taken)
}

/// The version a key row holds (`None`: no row).
pub(super) fn version_of(row: &Option<Row>) -> Result<Option<i64>> {
    match row {
        Some(row) => get_int(row, col::VERSION),
        None => Ok(None),
    }
}

/// `set` applied to `row`, as the store now holds it after an applied write.
fn assigned(row: &Option<Row>, set: &[Assignment]) -> Row {
    let mut row = row.clone().unwrap_or_default();
    for (column, value) in set {
        match value {
            Some(value) => row.insert(column, value.clone()),
            None => row.remove(column),
        };
    }
    row
}

/// The redemption a user's key holds, as the ledger answers it.
pub(super) fn redemption_of(id: Uuid, key: &KeyState) -> Result<Option<Redemption>> {
    let Some(committed) = key.committed else {
        return Ok(None);
    };
    Ok(Some(Redemption {
        id,
        code: key.code()?,
        phone: key.phone()?,
        amount: key
            .amount
            .ok_or_else(|| Error::storage("a redemption without its amount"))?,
        slot: committed.slot,
        redeemed_at: committed.claimed_at,
        status: committed.status,
        balance: committed.balance,
    }))
}

/// Refuses a claim the user's key does not allow now.
fn refuse(key: &KeyState) -> Result<()> {
    if key.is_live() {
        return Err(Error::AlreadyRedeemed);
    }
    if key.attempt.is_some() {
        return Err(Error::unavailable(
            "another claim of this user is in flight",
        ));
    }
    Ok(())
}

impl<S: CasStore, H: HalfKind> Inner<S, H> {
    /// The key row of redemption `id` (a serial read settles a write in doubt).
    pub(super) async fn key_row(&self, id: Uuid, serial: bool) -> Result<Option<Row>> {
        let key = key_of(id);
        let current = if serial {
            self.store.read_serial(key).await?
        } else {
            self.store.read(key).await?
        };
        Ok(current.rows.into_values().next())
    }

    pub(super) async fn slot_state(
        &self,
        voucher: &VoucherRow,
        slot: u32,
        serial: bool,
    ) -> Result<SlotState> {
        let key = voucher.slot_key(slot);
        let current = self.read_with_statics(key.clone(), serial).await?;
        SlotState::read(current.row(&key.row))
    }

    /// Writes `set` on key `id` if it still is `row` (same version; inserts
    /// it if there was none), bumping the version. Answers the key as it now
    /// stands: written, or as another write left it.
    pub(super) async fn write_key(
        &self,
        id: Uuid,
        row: &Option<Row>,
        mut set: Vec<Assignment>,
    ) -> Result<Option<Row>> {
        let key = key_of(id);
        let version = version_of(row)?;
        set.push((col::VERSION, int(version.unwrap_or(0) + 1)));
        let write = match version {
            None => Write::Insert {
                row: Vec::new(),
                values: row_of(set.clone()),
            },
            Some(v) => Write::Update {
                row: Vec::new(),
                when: vec![(col::VERSION, int(v))],
                set: set.clone(),
            },
        };
        let cas = Cas {
            partition: key.partition.clone(),
            writes: vec![write],
        };
        match self.store.cas(cas).await {
            CasOutcome::Applied => Ok(Some(assigned(row, &set))),
            CasOutcome::NotApplied(current) => Ok(current.rows.into_values().next()),
            CasOutcome::Unknown => self.key_row(id, true).await,
        }
    }

    /// Takes `slot` for `holder` at the generation `state` shows. Answers the
    /// slot as it now stands, or `None` when unknown (read it serially).
    async fn take(
        &self,
        voucher: &VoucherRow,
        slot: u32,
        state: &SlotState,
        holder: Holder,
    ) -> Option<(SlotState, bool)> {
        let key = voucher.slot_key(slot);
        let (cas, taken) = take_write(&key, state, holder);
        match self.store.cas(cas).await {
            CasOutcome::Applied => Some((taken, true)),
            CasOutcome::NotApplied(current) => SlotState::read(current.row(&key.row))
                .ok()
                .map(|s| (s, true)),
            CasOutcome::Unknown => None,
        }
    }

    /// Drives attempt `nonce` of redemption `id` to its end, from the key
    /// `row` and (if known) the slot as last seen.
    pub(super) async fn drive(
        &self,
        voucher: &VoucherRow,
        id: Uuid,
        nonce: Uuid,
        mut row: Option<Row>,
        mut slot: Option<(SlotState, bool)>,
    ) -> Result<Finish> {
        let holder = Holder { id, attempt: nonce };
        for _ in 0..self.options.max_steps {
            let key = KeyState::read(row.as_ref())?;
            let Some(attempt) = key.attempt.filter(|a| a.nonce == nonce) else {
                let won = key.committed_by(nonce).is_some();
                return Ok(if won { Finish::Won(row) } else { Finish::Lost });
            };
            let (state, fresh) = match slot {
                Some(known) => known,
                None => (self.slot_state(voucher, attempt.slot, true).await?, true),
            };
            // A key write below may change what the attempt expects: the
            // slot as seen before it is no ground to move or abort after it.
            slot = Some((state, false));
            match next_step(&state, fresh, holder, &attempt) {
                Step::Commit => row = self.write_key(id, &row, commit_set(&attempt)).await?,
                Step::Take => slot = self.take(voucher, attempt.slot, &state, holder).await,
                Step::Refresh => slot = None,
                Step::Move(gen) => {
                    row = self
                        .write_key(id, &row, vec![(col::ATTEMPT_GEN, int(gen))])
                        .await?
                }
                Step::Abort => row = self.write_key(id, &row, clear_attempt()).await?,
            }
        }
        Err(Error::unavailable("a claim kept being contended"))
    }

    /// A contender's claim (see [`voucherd_core::ledger::VoucherLedger::claim`]) of
    /// redemption `id` (the claim's redemption id).
    pub(super) async fn claim(&self, claim: Claim, id: Uuid) -> Result<Redemption> {
        let voucher = (self.voucher_row(&claim.code).await?).ok_or(Error::VoucherNotFound)?;
        for _ in 0..START_TRIES {
            if let Some(redemption) = self.try_claim(&voucher, id, &claim).await? {
                return Ok(redemption);
            }
        }
        Err(Error::unavailable("the user's key kept changing"))
    }

    /// One attempt; `None` when the key changed before it could start.
    async fn try_claim(
        &self,
        voucher: &VoucherRow,
        id: Uuid,
        claim: &Claim,
    ) -> Result<Option<Redemption>> {
        let (row, slot) = self.admit(voucher, id, claim).await?;
        let attempt = Attempt {
            nonce: self.nonce(),
            slot: claim.slot,
            gen: slot.generation(),
            at: claim.at,
        };
        let entry = self
            .log_attempt(id, claim, &attempt, version_of(&row)?)
            .await?;
        let row = self
            .write_key(id, &row, start_set(voucher, claim, &attempt))
            .await?;
        let key = KeyState::read(row.as_ref())?;
        // Started: in flight, or already driven to a redemption by recovery.
        let started = key.attempt.is_some_and(|a| a.nonce == attempt.nonce)
            || key.committed_by(attempt.nonce).is_some();
        if !started {
            // A failure leaves the entry to recovery; the answer stands.
            let _ = self.abandon(&entry).await;
            refuse(&key)?;
            return Ok(None);
        }
        match self
            .drive(voucher, id, attempt.nonce, row, Some((slot, false)))
            .await?
        {
            Finish::Won(row) => self.won(id, row).await.map(Some),
            Finish::Lost => {
                let _ = self.abandon(&entry).await;
                Err(Error::SlotTaken)
            }
        }
    }

    /// Reads the user's key and the slot (plainly) and refuses, writing
    /// nothing, a claim they already refuse.
    async fn admit(
        &self,
        voucher: &VoucherRow,
        id: Uuid,
        claim: &Claim,
    ) -> Result<(Option<Row>, SlotState)> {
        let (row, slot) = futures::join!(
            self.key_row(id, false),
            self.slot_state(voucher, claim.slot, false)
        );
        let row = row?;
        refuse(&KeyState::read(row.as_ref())?)?;
        if claim.slot == 0 || claim.slot > voucher.voucher.limit {
            return Err(Error::SlotTaken);
        }
        let slot = slot?;
        if slot.holder.is_some() {
            return Err(Error::SlotTaken);
        }
        Ok((row, slot))
    }

    /// Logs an attempt before it starts, so that recovery finds it whatever
    /// happens after.
    async fn log_attempt(
        &self,
        id: Uuid,
        claim: &Claim,
        attempt: &Attempt,
        version: Option<i64>,
    ) -> Result<LogEntry> {
        let entry = LogEntry {
            claimed_at: claim.at,
            id,
            attempt: attempt.nonce,
            code: claim.code.clone(),
            phone: claim.phone,
            slot: claim.slot,
            version,
        };
        let key = entry.key(self.options.log_shards);
        self.store.put(key, entry.values()).await?;
        Ok(entry)
    }

    /// Ends an attempt that is over while the key holds no redemption of it:
    /// frees its slot if the attempt still holds it, then drops its log
    /// entry. "Over" is not always "lost": the attempt may have been driven
    /// to a redemption (by recovery, beside a slow contender) that was then
    /// voided, with a crash between the void and its slot's release, and
    /// its user may have claimed again since, so that the key shows a newer
    /// attempt. Its slot is then nobody's, and only this entry leads to it.
    /// The release is conditioned on the attempt holding the slot, and a
    /// take of the attempt can never land again (the key is past it), so
    /// this is safe whoever else ends the attempt. A failure keeps the
    /// entry, for recovery.
    pub(super) async fn abandon(&self, entry: &LogEntry) -> Result<()> {
        let voucher = self.known_voucher(&entry.code).await?;
        let holder = Holder {
            id: entry.id,
            attempt: entry.attempt,
        };
        self.release(&voucher, entry.slot, holder).await?;
        self.forget(entry).await;
        Ok(())
    }

    /// Drops a log entry nothing needs any more; a failure leaves it to
    /// recovery, which drops it again.
    pub(super) async fn forget(&self, entry: &LogEntry) {
        let _ = self.store.remove(entry.key(self.options.log_shards)).await;
    }

    /// The redemption a won attempt made; in an all-in-one ledger, credited.
    async fn won(&self, id: Uuid, row: Option<Row>) -> Result<Redemption> {
        let key = KeyState::read(row.as_ref())?;
        let redemption =
            redemption_of(id, &key)?.ok_or_else(|| Error::storage("a won claim holds nothing"))?;
        let Some(committed) = key.committed else {
            return Err(Error::storage("a won claim holds nothing"));
        };
        if !self.claims_credit() || redemption.status != RedemptionStatus::Pending {
            return Ok(redemption);
        }
        self.credit_locally(redemption, committed.attempt).await
    }
}
