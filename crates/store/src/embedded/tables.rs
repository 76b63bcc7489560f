//! The tables and how each write is applied inside a batch's write
//! transaction. Each operation checks its conditions before it writes anything,
//! so a rejected operation leaves no trace.
//!
//! The layout keeps the pages one claim dirties few, because page writes bound a
//! B-tree's commit rate: a user's wallet head and redemption markers share one
//! key prefix (one leaf), transactions are appended to a log keyed by a global
//! sequence, slots are handed out lowest first (appends too), and only ids that
//! can be replayed (client idempotency keys) get an index. A claim thus touches
//! one randomly placed page instead of four.

use redb::ReadableTable;
use redb::{Database, Table, TableDefinition};
use uuid::Uuid;
use voucherd_core::domain::{
    redemption_id, voucher_reference, wallet, PhoneNumber, Redemption, RedemptionStatus, Timestamp,
    Voucher, VoucherCode, VoucherStatus, Wallet, WalletTransaction, OPENING_BALANCE_REFERENCE,
};
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::{Claim, HalfKind, NewProfile, NewTransaction, Resolution};

use super::db_error;
use super::reads::read_transaction;

/// (amount, limit, starts_at, expires_at, created_at), times in µs.
pub(super) type VoucherRow = (i64, u32, Option<i64>, Option<i64>, i64);
/// (phone, id, amount, reference, created_at, balance_after, previous sequence
/// of the same wallet or 0).
pub(super) type TransactionRow<'a> = (u64, u128, i64, &'a str, i64, i64, u64);
/// Account rows, by (phone, WALLET_HEAD): (balance, last sequence, created_at);
/// by (phone, code): the redemption, (slot, credit sequence, redeemed_at).
type AccountRow = (i64, u64, i64);

/// code → voucher.
pub(super) const VOUCHERS: TableDefinition<&str, VoucherRow> = TableDefinition::new("vouchers");
/// code → number of redemptions (equals the number of its taken slots).
pub(super) const REDEEMED: TableDefinition<&str, u32> = TableDefinition::new("redeemed");
/// (code, slot) → (phone, redeemed_at): the slot claim (I1) and the report index.
pub(super) const SLOTS: TableDefinition<(&str, u32), (u64, i64)> = TableDefinition::new("slots");
/// (phone, "" | code) → wallet head | redemption: the user's key (I2) beside the
/// balance it changes (I5).
pub(super) const ACCOUNTS: TableDefinition<(u64, &str), AccountRow> =
    TableDefinition::new("accounts");
/// sequence → transaction: the append-only wallet log (I3, I5).
pub(super) const TRANSACTIONS: TableDefinition<u64, TransactionRow> =
    TableDefinition::new("transactions");
/// replayable transaction id → sequence: idempotency of client transactions and
/// of the voucher service's credits; [`REFUSED`] marks a credit refused for good.
const TRANSACTION_IDS: TableDefinition<u128, u64> = TableDefinition::new("transaction_ids");
/// The sequence no transaction has: an id mapped to it was refused for good.
const REFUSED: u64 = 0;

/// (status, balance after the credit or -1, phone, code, slot, amount, claimed_at).
pub(super) type StateRow<'a> = (u8, i64, u64, &'a str, u32, i64, i64);
/// redemption id → where it stands; only in a voucher half, where redemptions
/// are born pending (in an all-in-one ledger they are born credited).
pub(super) const STATES: TableDefinition<u128, StateRow> = TableDefinition::new("states");
/// (claimed_at, redemption id) → (): the pending redemptions, oldest first, for recovery.
pub(super) const PENDING: TableDefinition<(i64, u128), ()> = TableDefinition::new("pending");

/// "last" → when the recovering writer last wrote a probe (µs): the small write
/// that tells it the database takes writes again.
pub(super) const PROBES: TableDefinition<&str, i64> = TableDefinition::new("probes");

/// The account row key of a wallet's head. Voucher codes are never empty, so it
/// cannot collide with a redemption, and it sorts first among a phone's rows.
pub(super) const WALLET_HEAD: &str = "";

/// Creates missing tables; returns the last transaction sequence in use.
pub(super) fn create_tables(db: &Database) -> anyhow::Result<u64> {
    let txn = db.begin_write()?;
    txn.open_table(VOUCHERS)?;
    txn.open_table(REDEEMED)?;
    txn.open_table(SLOTS)?;
    txn.open_table(ACCOUNTS)?;
    txn.open_table(TRANSACTION_IDS)?;
    txn.open_table(STATES)?;
    txn.open_table(PENDING)?;
    let last_sequence = {
        let transactions = txn.open_table(TRANSACTIONS)?;
        let last = transactions.last()?.map(|(key, _)| key.value());
        last.unwrap_or(0)
    };
    txn.commit()?;
    Ok(last_sequence)
}

/// The tables of one write transaction, opened once per batch, and the sequence
/// the next transaction gets.
pub(super) struct Tables<'txn> {
    pub(super) vouchers: Table<'txn, &'static str, VoucherRow>,
    pub(super) redeemed: Table<'txn, &'static str, u32>,
    pub(super) slots: Table<'txn, (&'static str, u32), (u64, i64)>,
    pub(super) accounts: Table<'txn, (u64, &'static str), AccountRow>,
    pub(super) transactions: Table<'txn, u64, TransactionRow<'static>>,
    pub(super) transaction_ids: Table<'txn, u128, u64>,
    /// Present in a voucher half: claims are born pending and tracked here.
    pub(super) split: Option<SplitTables<'txn>>,
    pub(super) last_sequence: u64,
}

/// The tables of a voucher half's redemption states.
pub(super) struct SplitTables<'txn> {
    pub(super) states: Table<'txn, u128, StateRow<'static>>,
    pub(super) pending: Table<'txn, (i64, u128), ()>,
}

impl<'txn> Tables<'txn> {
    /// Opens the tables of half `H`: the redemption states only where claims
    /// are born pending.
    pub(super) fn open<H: HalfKind>(
        txn: &'txn redb::WriteTransaction,
        last_sequence: u64,
    ) -> Result<Self> {
        let split = if H::CLAIMS_PENDING {
            Some(SplitTables {
                states: txn.open_table(STATES).map_err(db_error)?,
                pending: txn.open_table(PENDING).map_err(db_error)?,
            })
        } else {
            None
        };
        Ok(Self {
            vouchers: txn.open_table(VOUCHERS).map_err(db_error)?,
            redeemed: txn.open_table(REDEEMED).map_err(db_error)?,
            slots: txn.open_table(SLOTS).map_err(db_error)?,
            accounts: txn.open_table(ACCOUNTS).map_err(db_error)?,
            transactions: txn.open_table(TRANSACTIONS).map_err(db_error)?,
            transaction_ids: txn.open_table(TRANSACTION_IDS).map_err(db_error)?,
            split,
            last_sequence,
        })
    }

    pub(super) fn create_voucher(&mut self, voucher: Voucher) -> Result<VoucherStatus> {
        let code = voucher.code.as_str();
        if self.vouchers.get(code).map_err(db_error)?.is_some() {
            return Err(Error::VoucherExists);
        }
        let row = (
            voucher.amount,
            voucher.limit,
            voucher.starts_at.map(|t| t.0),
            voucher.expires_at.map(|t| t.0),
            voucher.created_at.0,
        );
        self.vouchers.insert(code, row).map_err(db_error)?;
        self.redeemed.insert(code, 0).map_err(db_error)?;
        Ok(VoucherStatus {
            voucher,
            redeemed: 0,
        })
    }

    pub(super) fn claim(&mut self, claim: Claim) -> Result<Redemption> {
        let (amount, redeemed) = self.check_claim(&claim)?;
        let code = claim.code.as_str();
        let phone = claim.phone.stored();
        let id = redemption_id(&claim.code, claim.phone);
        let (status, credit_sequence, balance) = if self.split.is_some() {
            self.record_pending(id, &claim, amount)?;
            (RedemptionStatus::Pending, 0, None)
        } else {
            let credit = self.transact(NewTransaction {
                id,
                // The user's key below makes the claim idempotent; the id needs no index.
                replayable: false,
                phone: claim.phone,
                amount,
                reference: voucher_reference(&claim.code),
                at: claim.at,
                refusal_is_final: false,
            })?;
            let balance = Some(credit.balance_after);
            (RedemptionStatus::Credited, credit.sequence, balance)
        };
        self.slots
            .insert((code, claim.slot), (phone, claim.at.0))
            .map_err(db_error)?;
        self.accounts
            .insert(
                (phone, code),
                (i64::from(claim.slot), credit_sequence, claim.at.0),
            )
            .map_err(db_error)?;
        self.redeemed.insert(code, redeemed + 1).map_err(db_error)?;
        Ok(Redemption {
            id,
            code: claim.code,
            phone: claim.phone,
            amount,
            slot: claim.slot,
            redeemed_at: claim.at,
            status,
            balance,
        })
    }

    /// Checks that the claim can be applied; returns the voucher's amount and
    /// its number of redemptions. Writes nothing.
    fn check_claim(&self, claim: &Claim) -> Result<(i64, u32)> {
        let code = claim.code.as_str();
        let phone = claim.phone.stored();
        let (amount, limit) = match self.vouchers.get(code).map_err(db_error)? {
            Some(row) => {
                let (amount, limit, ..) = row.value();
                (amount, limit)
            }
            None => return Err(Error::VoucherNotFound),
        };
        if self
            .accounts
            .get((phone, code))
            .map_err(db_error)?
            .is_some()
        {
            return Err(Error::AlreadyRedeemed);
        }
        // A slot outside 1..=limit does not exist; the slot source never hands one out.
        if claim.slot == 0 || claim.slot > limit {
            tracing::error!(
                code,
                slot = claim.slot,
                limit,
                "slot outside the voucher's range"
            );
            return Err(Error::SlotTaken);
        }
        if self
            .slots
            .get((code, claim.slot))
            .map_err(db_error)?
            .is_some()
        {
            return Err(Error::SlotTaken);
        }
        let redeemed = self
            .redeemed
            .get(code)
            .map_err(db_error)?
            .map_or(0, |c| c.value());
        // I1: a free slot in range implies a free place under the limit.
        assert!(
            redeemed < limit,
            "I1: {code} has {redeemed} redemptions of {limit} and a free slot"
        );
        Ok((amount, redeemed))
    }

    /// Records a voucher half's new pending redemption. A void redemption of
    /// the same user and voucher (its id) is replaced: the user may claim again.
    fn record_pending(&mut self, id: Uuid, claim: &Claim, amount: i64) -> Result<()> {
        let split = self
            .split
            .as_mut()
            .ok_or_else(|| Error::storage("no redemption states in this ledger"))?;
        let state = (
            RedemptionStatus::Pending.stored(),
            -1,
            claim.phone.stored(),
            claim.code.as_str(),
            claim.slot,
            amount,
            claim.at.0,
        );
        split.states.insert(id.as_u128(), state).map_err(db_error)?;
        split
            .pending
            .insert((claim.at.0, id.as_u128()), ())
            .map_err(db_error)?;
        Ok(())
    }

    /// Settles a pending redemption (see [`voucherd_core::ledger::PendingLedger::settle`]).
    pub(super) fn settle(&mut self, id: Uuid, resolution: Resolution) -> Result<Redemption> {
        let split = self
            .split
            .as_mut()
            .ok_or_else(|| Error::storage("no redemption states in this ledger"))?;
        let key = id.as_u128();
        let Some(row) = split.states.get(key).map_err(db_error)? else {
            return Err(Error::RedemptionNotFound);
        };
        let current = redemption_of_state(id, row.value())?;
        drop(row);
        let target = resolution.status();
        if current.status == target {
            return Ok(current);
        }
        if current.status != RedemptionStatus::Pending {
            return Err(Error::storage(format!(
                "redemption {id} is {} and cannot become {}",
                current.status.as_str(),
                target.as_str()
            )));
        }
        split
            .pending
            .remove((current.redeemed_at.0, key))
            .map_err(db_error)?;
        let balance = match resolution {
            Resolution::Credited { balance } => balance,
            Resolution::Void { .. } => -1,
        };
        let code = current.code.as_str();
        let state = (
            target.stored(),
            balance,
            current.phone.stored(),
            code,
            current.slot,
            current.amount,
            current.redeemed_at.0,
        );
        split.states.insert(key, state).map_err(db_error)?;
        if target == RedemptionStatus::Void {
            self.release(&current)?;
        }
        Ok(Redemption {
            status: target,
            balance: (balance >= 0).then_some(balance),
            ..current
        })
    }

    /// Frees a void redemption's slot and user key.
    fn release(&mut self, redemption: &Redemption) -> Result<()> {
        let code = redemption.code.as_str();
        self.slots
            .remove((code, redemption.slot))
            .map_err(db_error)?;
        self.accounts
            .remove((redemption.phone.stored(), code))
            .map_err(db_error)?;
        let redeemed = self
            .redeemed
            .get(code)
            .map_err(db_error)?
            .map_or(0, |c| c.value());
        let left = redeemed
            .checked_sub(1)
            .ok_or_else(|| Error::storage(format!("{code} has no redemption to release")))?;
        self.redeemed.insert(code, left).map_err(db_error)?;
        Ok(())
    }

    pub(super) fn create_profile(&mut self, profile: NewProfile) -> Result<Wallet> {
        let phone = profile.phone.stored();
        if self
            .accounts
            .get((phone, WALLET_HEAD))
            .map_err(db_error)?
            .is_some()
        {
            return Err(Error::ProfileExists);
        }
        self.accounts
            .insert((phone, WALLET_HEAD), (0, 0, profile.at.0))
            .map_err(db_error)?;
        let mut balance = 0;
        if profile.opening_balance > 0 {
            let opening = self.transact(NewTransaction {
                id: Uuid::new_v4(),
                replayable: false,
                phone: profile.phone,
                amount: profile.opening_balance,
                reference: OPENING_BALANCE_REFERENCE.to_owned(),
                at: profile.at,
                refusal_is_final: false,
            })?;
            balance = opening.balance_after;
        }
        Ok(Wallet {
            phone: profile.phone,
            balance,
            created_at: profile.at,
        })
    }

    /// Answers a refused transaction; a replayable one whose refusal is final
    /// leaves a mark, so its id is refused again whatever the wallet holds later.
    fn refuse(&mut self, transaction: &NewTransaction, refusal: Error) -> Result<Error> {
        if transaction.replayable && transaction.refusal_is_final {
            self.transaction_ids
                .insert(transaction.id.as_u128(), REFUSED)
                .map_err(db_error)?;
        }
        Ok(refusal)
    }

    pub(super) fn transact(&mut self, transaction: NewTransaction) -> Result<WalletTransaction> {
        let phone = transaction.phone.stored();
        let id = transaction.id.as_u128();
        if transaction.replayable {
            let first_sequence = self
                .transaction_ids
                .get(id)
                .map_err(db_error)?
                .map(|s| s.value());
            if first_sequence == Some(REFUSED) {
                return Err(Error::CreditRefused {
                    reason: "refused earlier".to_owned(),
                });
            }
            if let Some(sequence) = first_sequence {
                let first = read_transaction(&self.transactions, sequence)?;
                return wallet::replay(
                    first,
                    transaction.phone,
                    transaction.amount,
                    &transaction.reference,
                );
            }
        }
        let head = self
            .accounts
            .get((phone, WALLET_HEAD))
            .map_err(db_error)?
            .map(|w| w.value());
        let (balance, previous, created_at) = head.unwrap_or((0, 0, transaction.at.0));
        assert!(
            balance >= 0,
            "I5: wallet {phone} holds a negative balance {balance}"
        );
        let new_balance = match wallet::balance_after(balance, transaction.amount) {
            Ok(new_balance) => new_balance,
            Err(refusal) => return Err(self.refuse(&transaction, refusal)?),
        };
        let sequence = self.last_sequence + 1;
        let row = (
            phone,
            id,
            transaction.amount,
            transaction.reference.as_str(),
            transaction.at.0,
            new_balance,
            previous,
        );
        self.transactions.insert(sequence, row).map_err(db_error)?;
        if transaction.replayable {
            self.transaction_ids
                .insert(id, sequence)
                .map_err(db_error)?;
        }
        self.accounts
            .insert((phone, WALLET_HEAD), (new_balance, sequence, created_at))
            .map_err(db_error)?;
        self.last_sequence = sequence;
        assert!(new_balance >= 0, "I5: wallet {phone} would go negative");
        Ok(WalletTransaction {
            id: transaction.id,
            phone: transaction.phone,
            sequence,
            amount: transaction.amount,
            reference: transaction.reference,
            created_at: transaction.at,
            balance_after: new_balance,
        })
    }
}

/// A redemption as its state row holds it.
pub(super) fn redemption_of_state(id: Uuid, row: StateRow<'_>) -> Result<Redemption> {
    let (status, balance, phone, code, slot, amount, claimed_at) = row;
    Ok(Redemption {
        id,
        code: VoucherCode::parse(code).map_err(Error::storage)?,
        phone: PhoneNumber::from_stored(phone),
        amount,
        slot,
        redeemed_at: Timestamp(claimed_at),
        status: RedemptionStatus::from_stored(status)?,
        balance: (balance >= 0).then_some(balance),
    })
}
