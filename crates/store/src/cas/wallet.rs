//! The wallet half. A wallet is one partition: statics `balance`, `version`
//! (its number of transactions, the last sequence), `opened_at`,
//! `opened_by`; a row per transaction (kind 0, by sequence); and a marker row
//! per transaction id (kind 1): the sequence it was applied as, or the
//! reason it was refused for good. A transaction is one conditional batch in
//! that partition (the statics `IF version = ?`, the transaction row, the
//! marker `IF NOT EXISTS`), so the balance always equals the sum of the
//! transactions (I5) and an id applies at most once per wallet.
//!
//! An idempotency key must name one request across all wallets, so a
//! replayable id is first bound to its request (phone, amount, reference) in
//! a partition of its own (`transaction_ids`, `IF NOT EXISTS`); only the
//! bound wallet can then apply it. One difference from the embedded ledger:
//! a binding is never released, so after a refusal that is not final (not
//! enough funds) the same request may be sent again and succeed, as there,
//! but another request under the same key is `IdempotencyKeyReused` (the
//! embedded ledger would take it). Releasing a binding safely would need the
//! wallet's and the binding's partitions decided together.

use std::ops::Bound;

use uuid::Uuid;

use super::schema::{col, get_int, get_text, get_uuid, int, need, row_of, text, uuid};
use super::store::{
    Cas, CasOutcome, CasStore, Clustering, Current, Partition, Row, RowKey, Scan, Table, Value,
    Write,
};
use super::Inner;
use voucherd_core::domain::wallet::{balance_after, replay};
use voucherd_core::domain::{Page, PageRequest, PhoneNumber, Timestamp, Wallet, WalletTransaction};
use voucherd_core::error::{Error, ErrorCode, Result};
use voucherd_core::ledger::{HalfKind, NewProfile, NewTransaction};

/// Clustering kinds of a wallet partition.
const TRANSACTION: i64 = 0;
const MARKER: i64 = 1;

fn wallet_of(phone: PhoneNumber) -> Partition {
    Partition {
        table: Table::Wallets,
        key: vec![Value::Int(phone.stored() as i64)],
    }
}

fn transaction_row(sequence: i64, id: Uuid) -> Clustering {
    vec![
        Value::Int(TRANSACTION),
        Value::Int(sequence),
        Value::Uuid(id),
    ]
}

fn marker_row(id: Uuid) -> Clustering {
    vec![Value::Int(MARKER), Value::Int(0), Value::Uuid(id)]
}

/// A wallet's statics as read.
struct Head {
    balance: i64,
    version: Option<i64>,
    opened_at: Option<i64>,
    opened_by: Option<Uuid>,
}

impl Head {
    fn read(statics: &Row) -> Result<Self> {
        Ok(Head {
            balance: get_int(statics, col::BALANCE)?.unwrap_or(0),
            version: get_int(statics, col::VERSION)?,
            opened_at: get_int(statics, col::OPENED_AT)?,
            opened_by: get_uuid(statics, col::OPENED_BY)?,
        })
    }

    /// The statics update of a batch, `IF version = ?` as read.
    fn update(&self, set: Vec<(&'static str, Option<Value>)>) -> Write {
        Write::Update {
            row: Vec::new(),
            when: vec![(col::VERSION, self.version.map(Value::Int))],
            set,
        }
    }
}

/// What a transaction id's marker says.
enum Marker {
    Applied(i64),
    Refused,
}

fn marker_of(current: &Current, id: Uuid) -> Result<Option<Marker>> {
    let Some(row) = current.row(&marker_row(id)) else {
        return Ok(None);
    };
    if get_text(row, col::REFUSED)?.is_some() {
        return Ok(Some(Marker::Refused));
    }
    Ok(Some(Marker::Applied(need(
        get_int(row, col::SEQUENCE)?,
        col::SEQUENCE,
    )?)))
}

fn transaction_of(phone: PhoneNumber, key: &Clustering, row: &Row) -> Result<WalletTransaction> {
    let [_, Value::Int(sequence), Value::Uuid(id)] = key.as_slice() else {
        return Err(Error::storage(format!("a transaction key {key:?}")));
    };
    Ok(WalletTransaction {
        id: *id,
        phone,
        sequence: *sequence as u64,
        amount: need(get_int(row, col::AMOUNT)?, col::AMOUNT)?,
        reference: need(get_text(row, col::REFERENCE)?, col::REFERENCE)?,
        created_at: Timestamp(need(get_int(row, col::CREATED_AT)?, col::CREATED_AT)?),
        balance_after: need(get_int(row, col::BALANCE_AFTER)?, col::BALANCE_AFTER)?,
    })
}

/// What to do with a transaction, from the wallet as read.
enum Decision {
    Answer(Result<WalletTransaction>),
    /// A refusal read from a plain read: confirm on a serial one.
    Confirm,
    /// Write `Cas`; once applied, answer the result.
    Write(Cas, Result<WalletTransaction>),
}

/// The batch that applies `transaction` on top of `head`.
fn apply(transaction: &NewTransaction, head: &Head, balance: i64) -> (Cas, WalletTransaction) {
    let sequence = head.version.unwrap_or(0) + 1;
    let opened_at = head.opened_at.unwrap_or(transaction.at.0);
    let statics = head.update(vec![
        (col::BALANCE, int(balance)),
        (col::VERSION, int(sequence)),
        (col::OPENED_AT, int(opened_at)),
    ]);
    let values = row_of(vec![
        (col::AMOUNT, int(transaction.amount)),
        (col::REFERENCE, text(&transaction.reference)),
        (col::CREATED_AT, int(transaction.at.0)),
        (col::BALANCE_AFTER, int(balance)),
    ]);
    let row = Write::Insert {
        row: transaction_row(sequence, transaction.id),
        values,
    };
    let marker = Write::Insert {
        row: marker_row(transaction.id),
        values: row_of(vec![(col::SEQUENCE, int(sequence))]),
    };
    let cas = Cas {
        partition: wallet_of(transaction.phone),
        writes: vec![statics, row, marker],
    };
    let applied = WalletTransaction {
        id: transaction.id,
        phone: transaction.phone,
        sequence: sequence as u64,
        amount: transaction.amount,
        reference: transaction.reference.clone(),
        created_at: transaction.at,
        balance_after: balance,
    };
    (cas, applied)
}

/// The batch that records a final refusal of `transaction` at `head`.
fn refuse(transaction: &NewTransaction, head: &Head, refusal: &Error) -> Cas {
    let statics = head.update(vec![(col::VERSION, head.version.map(Value::Int))]);
    let marker = Write::Insert {
        row: marker_row(transaction.id),
        values: row_of(vec![(col::REFUSED, text(&refusal.to_string()))]),
    };
    Cas {
        partition: wallet_of(transaction.phone),
        writes: vec![statics, marker],
    }
}

impl<S: CasStore, H: HalfKind> Inner<S, H> {
    /// A wallet's statics and the marker of transaction `id`.
    async fn wallet_state(&self, phone: PhoneNumber, id: Uuid, serial: bool) -> Result<Current> {
        let at = RowKey {
            partition: wallet_of(phone),
            row: marker_row(id),
        };
        self.read_with_statics(at, serial).await
    }

    pub(super) async fn transact(&self, transaction: NewTransaction) -> Result<WalletTransaction> {
        if transaction.replayable {
            self.bind(&transaction).await?;
        }
        let mut current = self
            .wallet_state(transaction.phone, transaction.id, false)
            .await?;
        let mut serial = false;
        for _ in 0..self.options.max_steps {
            match self.decide(&transaction, &current, serial).await? {
                Decision::Answer(answer) => return answer,
                Decision::Confirm => {}
                Decision::Write(cas, answer) => match self.store.cas(cas).await {
                    CasOutcome::Applied => return answer,
                    CasOutcome::NotApplied(now) => {
                        current = now;
                        serial = true;
                        continue;
                    }
                    CasOutcome::Unknown => {}
                },
            }
            current = (self.wallet_state(transaction.phone, transaction.id, true)).await?;
            serial = true;
        }
        Err(Error::unavailable("a wallet write kept being contended"))
    }

    async fn decide(
        &self,
        transaction: &NewTransaction,
        current: &Current,
        serial: bool,
    ) -> Result<Decision> {
        if let Some(marker) = marker_of(current, transaction.id)? {
            return self.answer(transaction, marker).await.map(Decision::Answer);
        }
        let head = Head::read(&current.statics)?;
        Ok(match balance_after(head.balance, transaction.amount) {
            Ok(balance) => {
                let (cas, applied) = apply(transaction, &head, balance);
                Decision::Write(cas, Ok(applied))
            }
            // Recorded whatever `replayable` says: every id has its marker
            // row here, so an id that is no idempotency key (role `all`'s
            // credit, by redemption id) is refused for good the same way.
            Err(refusal) if transaction.refusal_is_final => {
                Decision::Write(refuse(transaction, &head, &refusal), Err(refusal))
            }
            Err(refusal) if serial => Decision::Answer(Err(refusal)),
            Err(_) => Decision::Confirm,
        })
    }

    /// The answer an id's marker gives: its first transaction (replayed), or
    /// its final refusal.
    async fn answer(
        &self,
        transaction: &NewTransaction,
        marker: Marker,
    ) -> Result<Result<WalletTransaction>> {
        let sequence = match marker {
            Marker::Refused => {
                let reason = "refused earlier".to_owned();
                return Ok(Err(Error::CreditRefused { reason }));
            }
            Marker::Applied(sequence) => sequence,
        };
        let (phone, id) = (transaction.phone, transaction.id);
        let first = self.read_transaction(phone, sequence, id).await?;
        if !transaction.replayable {
            return Ok(Ok(first));
        }
        Ok(replay(
            first,
            phone,
            transaction.amount,
            &transaction.reference,
        ))
    }

    async fn read_transaction(
        &self,
        phone: PhoneNumber,
        sequence: i64,
        id: Uuid,
    ) -> Result<WalletTransaction> {
        let at = RowKey {
            partition: wallet_of(phone),
            row: transaction_row(sequence, id),
        };
        let current = self.store.read(at.clone()).await?;
        let row = (current.row(&at.row)).ok_or_else(|| {
            Error::storage(format!("transaction {sequence} is referenced but missing"))
        })?;
        transaction_of(phone, &at.row, row)
    }

    /// Binds a replayable id to its request, or refuses it: `CreditRefused`
    /// if the bound request was refused for good, else `IdempotencyKeyReused`
    /// when the request differs.
    async fn bind(&self, transaction: &NewTransaction) -> Result<()> {
        let at = RowKey {
            partition: Partition {
                table: Table::TransactionIds,
                key: vec![Value::Uuid(transaction.id)],
            },
            row: Vec::new(),
        };
        let values = row_of(vec![
            (col::PHONE, int(transaction.phone.stored() as i64)),
            (col::AMOUNT, int(transaction.amount)),
            (col::REFERENCE, text(&transaction.reference)),
        ]);
        for _ in 0..self.options.max_steps {
            let insert = Write::Insert {
                row: Vec::new(),
                values: values.clone(),
            };
            let cas = Cas {
                partition: at.partition.clone(),
                writes: vec![insert],
            };
            let current = match self.store.cas(cas).await {
                CasOutcome::Applied => return Ok(()),
                CasOutcome::NotApplied(current) => current,
                CasOutcome::Unknown => self.store.read_serial(at.clone()).await?,
            };
            if let Some(bound) = current.rows.values().next() {
                return self.bound(transaction, bound).await;
            }
        }
        Err(Error::unavailable("an idempotency key could not be bound"))
    }

    async fn bound(&self, transaction: &NewTransaction, bound: &Row) -> Result<()> {
        let phone = need(get_int(bound, col::PHONE)?, col::PHONE)?;
        let same = phone == transaction.phone.stored() as i64
            && get_int(bound, col::AMOUNT)? == Some(transaction.amount)
            && get_text(bound, col::REFERENCE)?.as_deref() == Some(transaction.reference.as_str());
        if same {
            return Ok(());
        }
        let owner = PhoneNumber::from_stored(phone as u64);
        let current = self.wallet_state(owner, transaction.id, false).await?;
        match marker_of(&current, transaction.id)? {
            Some(Marker::Refused) => Err(Error::CreditRefused {
                reason: "refused earlier".to_owned(),
            }),
            _ => Err(Error::IdempotencyKeyReused),
        }
    }

    pub(super) async fn create_profile(&self, profile: NewProfile) -> Result<Wallet> {
        let (nonce, opening) = (self.nonce(), self.nonce());
        let statics = RowKey {
            partition: wallet_of(profile.phone),
            row: Vec::new(),
        };
        let wallet = Wallet {
            phone: profile.phone,
            balance: profile.opening_balance,
            created_at: profile.at,
        };
        let mut current = self.store.read(statics.clone()).await?;
        for _ in 0..self.options.max_steps {
            let head = Head::read(&current.statics)?;
            if head.opened_at.is_some() {
                let ours = head.opened_by == Some(nonce);
                return if ours {
                    Ok(wallet)
                } else {
                    Err(Error::ProfileExists)
                };
            }
            current = match self.store.cas(open(&profile, &head, nonce, opening)).await {
                CasOutcome::Applied => return Ok(wallet),
                CasOutcome::NotApplied(now) => now,
                CasOutcome::Unknown => self.store.read_serial(statics.clone()).await?,
            };
        }
        Err(Error::unavailable("a wallet could not be opened"))
    }

    pub(super) async fn wallet(
        &self,
        phone: PhoneNumber,
        page: PageRequest,
    ) -> Result<Option<(Wallet, Page<WalletTransaction>)>> {
        let statics = RowKey {
            partition: wallet_of(phone),
            row: Vec::new(),
        };
        let head = Head::read(&self.store.read(statics).await?.statics)?;
        let Some(opened_at) = head.opened_at else {
            return Ok(None);
        };
        let page = self.transactions(phone, &head, page).await?;
        let wallet = Wallet {
            phone,
            balance: head.balance,
            created_at: Timestamp(opened_at),
        };
        Ok(Some((wallet, page)))
    }

    /// A page of the wallet's transactions, newest first.
    async fn transactions(
        &self,
        phone: PhoneNumber,
        head: &Head,
        page: PageRequest,
    ) -> Result<Page<WalletTransaction>> {
        let to = match page.cursor {
            None => Bound::Excluded(vec![Value::Int(MARKER)]),
            Some(cursor) => {
                Bound::Excluded(vec![Value::Int(TRANSACTION), cursor_of(cursor, head)?])
            }
        };
        let (offset, limit) = (page.offset as usize, page.limit as usize);
        let scan = Scan {
            from: Bound::Included(vec![Value::Int(TRANSACTION)]),
            to,
            descending: true,
            limit: offset + limit + 1,
        };
        let slice = self.store.scan(wallet_of(phone), scan).await?;
        let mut rows = slice.rows.iter().skip(offset);
        let items = (rows.by_ref().take(limit))
            .map(|(key, row)| transaction_of(phone, key, row))
            .collect::<Result<Vec<_>>>()?;
        let more = rows.next().is_some();
        let next_cursor = more.then(|| items.last().map(|t| t.sequence)).flatten();
        Ok(Page { items, next_cursor })
    }
}

/// A cursor must be one of the wallet's sequences (they are 1..=version).
fn cursor_of(cursor: u64, head: &Head) -> Result<Value> {
    let valid = i64::try_from(cursor)
        .ok()
        .filter(|c| (1..=head.version.unwrap_or(0)).contains(c));
    valid.map(Value::Int).ok_or_else(|| {
        Error::invalid(
            ErrorCode::InvalidCursor,
            "cursor must be a next_cursor this service returned",
        )
    })
}

/// The batch that opens a wallet with its opening balance.
fn open(profile: &NewProfile, head: &Head, nonce: Uuid, opening: Uuid) -> Cas {
    let amount = profile.opening_balance;
    let version = head.version.unwrap_or(0) + i64::from(amount > 0);
    let statics = Write::Update {
        row: Vec::new(),
        when: vec![
            (col::OPENED_AT, None),
            (col::VERSION, head.version.map(Value::Int)),
        ],
        set: vec![
            (col::OPENED_AT, int(profile.at.0)),
            (col::OPENED_BY, uuid(nonce)),
            (col::BALANCE, int(amount)),
            (col::VERSION, int(version)),
        ],
    };
    let mut writes = vec![statics];
    if amount > 0 {
        let transaction = NewTransaction {
            id: opening,
            replayable: false,
            phone: profile.phone,
            amount,
            reference: voucherd_core::domain::OPENING_BALANCE_REFERENCE.to_owned(),
            at: profile.at,
            refusal_is_final: false,
        };
        let (batch, _) = apply(&transaction, head, amount);
        writes.extend(batch.writes.into_iter().skip(1));
    }
    Cas {
        partition: wallet_of(profile.phone),
        writes,
    }
}
