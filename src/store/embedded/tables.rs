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

use super::*;

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
/// replayable transaction id → sequence: idempotency of client transactions.
const TRANSACTION_IDS: TableDefinition<u128, u64> = TableDefinition::new("transaction_ids");

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
    pub(super) last_sequence: u64,
}

impl<'txn> Tables<'txn> {
    pub(super) fn open(txn: &'txn redb::WriteTransaction, last_sequence: u64) -> Result<Self> {
        Ok(Self {
            vouchers: txn.open_table(VOUCHERS).map_err(db_error)?,
            redeemed: txn.open_table(REDEEMED).map_err(db_error)?,
            slots: txn.open_table(SLOTS).map_err(db_error)?,
            accounts: txn.open_table(ACCOUNTS).map_err(db_error)?,
            transactions: txn.open_table(TRANSACTIONS).map_err(db_error)?,
            transaction_ids: txn.open_table(TRANSACTION_IDS).map_err(db_error)?,
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

        let credit = self.transact(NewTransaction {
            id: redemption_id(&claim.code, claim.phone),
            // The user's key below makes the claim idempotent; the id needs no index.
            replayable: false,
            phone: claim.phone,
            amount,
            reference: voucher_reference(&claim.code),
            at: claim.at,
        })?;
        self.slots
            .insert((code, claim.slot), (phone, claim.at.0))
            .map_err(db_error)?;
        self.accounts
            .insert(
                (phone, code),
                (i64::from(claim.slot), credit.sequence, claim.at.0),
            )
            .map_err(db_error)?;
        self.redeemed.insert(code, redeemed + 1).map_err(db_error)?;
        Ok(Redemption {
            id: credit.id,
            code: claim.code,
            phone: claim.phone,
            amount,
            slot: claim.slot,
            redeemed_at: claim.at,
            status: RedemptionStatus::Credited,
                balance: Some(credit.balance_after),
        })
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
            })?;
            balance = opening.balance_after;
        }
        Ok(Wallet {
            phone: profile.phone,
            balance,
            created_at: profile.at,
        })
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
        let new_balance = wallet::balance_after(balance, transaction.amount)?;
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
