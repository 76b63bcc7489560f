//! The wallet service model: wallets and their transactions, voucher credits
//! applied idempotently by id with the real rules (`replay`, `balance_after`,
//! `answer_of`), a final answer per credit id (a refusal is kept as a
//! tombstone), client debits and credits, and crashes.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use uuid::Uuid;
use voucherd_core::domain::wallet::{balance_after, replay};
use voucherd_core::domain::{PhoneNumber, WalletTransaction, OPENING_BALANCE_REFERENCE};
use voucherd_core::error::{Error, Result};
use voucherd_core::redemption::{answer_of, is_final_refusal, Credit, CreditAnswer};

use voucherd_test_support::sim::world::{user, World};

/// The first outcome of a credit id, which the wallet answers from then on.
#[derive(Debug, Clone)]
pub enum Outcome {
    Applied(WalletTransaction),
    Refused(String),
}

#[derive(Debug, Default)]
pub struct Account {
    pub balance: i64,
    pub transactions: Vec<WalletTransaction>,
}

#[derive(Debug, Default)]
pub struct WalletState {
    up: bool,
    pub accounts: BTreeMap<PhoneNumber, Account>,
    pub outcomes: BTreeMap<Uuid, Outcome>,
    /// How many times a credit id took effect (pushed a transaction).
    pub applications: BTreeMap<Uuid, u32>,
    /// Deliveries being processed, by token: a crash decides their fate.
    in_flight: BTreeMap<u64, Vec<Credit>>,
    next_token: u64,
    next_sequence: u64,
}

/// Durable state: only `up` and the calls in flight are lost in a crash.
#[derive(Clone)]
pub struct WalletLedger {
    world: Arc<World>,
    /// False for the planted bug "no final-refusal tombstone".
    tombstones: bool,
    state: Arc<Mutex<WalletState>>,
}

impl WalletLedger {
    pub fn new(world: Arc<World>, tombstones: bool) -> Self {
        let state = WalletState {
            up: true,
            ..WalletState::default()
        };
        WalletLedger {
            world,
            tombstones,
            state: Arc::new(Mutex::new(state)),
        }
    }

    pub fn state(&self) -> parking_lot::MutexGuard<'_, WalletState> {
        self.state.lock()
    }

    pub fn open(&self, phone: PhoneNumber, balance: i64) {
        let mut state = self.state.lock();
        let id = state.fresh_id();
        state.push(id, phone, balance, OPENING_BALANCE_REFERENCE, &self.world);
    }

    /// A client's debit (< 0) or credit (> 0), with a fresh id.
    pub fn transact(&self, phone: PhoneNumber, amount: i64) -> Result<WalletTransaction> {
        let mut state = self.state.lock();
        if !state.up {
            return Err(Error::unavailable("wallet down"));
        }
        let id = state.fresh_id();
        let balance = state.balance(phone);
        let applied = balance_after(balance, amount)
            .map(|_| state.push(id, phone, amount, "shop", &self.world));
        let kind = if applied.is_ok() {
            "client.tx"
        } else {
            "client.tx_refused"
        };
        self.world.event(kind, user(phone), amount);
        applied
    }

    /// One delivered credit call: `None` when the caller's connection breaks
    /// (the wallet is down, or crashes while processing).
    pub async fn deliver(&self, credits: Vec<Credit>) -> Option<Vec<CreditAnswer>> {
        let token = self.state.lock().admit(credits)?;
        self.world.pause(1, 20).await;
        let mut state = self.state.lock();
        let credits = state.in_flight.remove(&token)?;
        let answers = credits.iter().map(|c| self.answer(&mut state, c)).collect();
        Some(answers)
    }

    fn answer(&self, state: &mut WalletState, credit: &Credit) -> CreditAnswer {
        if self.world.fault(self.world.knobs.overloaded) {
            self.world.event("wallet.overloaded", user(credit.phone), 0);
            return answer_of(Err(Error::Overloaded));
        }
        answer_of(self.apply(state, credit))
    }

    /// Applies `credit` once per id; the first answer for an id is final.
    fn apply(&self, state: &mut WalletState, credit: &Credit) -> Result<WalletTransaction> {
        let who = user(credit.phone);
        match state.outcomes.get(&credit.id) {
            Some(Outcome::Applied(first)) => {
                self.world.event("wallet.replayed", who, 0);
                return replay(
                    first.clone(),
                    credit.phone,
                    credit.amount,
                    &credit.reference,
                );
            }
            Some(Outcome::Refused(reason)) => {
                self.world.event("wallet.refused_again", who, 0);
                let reason = reason.clone();
                return Err(Error::CreditRefused { reason });
            }
            None => {}
        }
        match balance_after(state.balance(credit.phone), credit.amount) {
            Ok(_) => {
                let (phone, amount) = (credit.phone, credit.amount);
                let tx = state.push(credit.id, phone, amount, &credit.reference, &self.world);
                *state.applications.entry(credit.id).or_default() += 1;
                state
                    .outcomes
                    .insert(credit.id, Outcome::Applied(tx.clone()));
                Ok(tx)
            }
            Err(error) => {
                self.world.event("wallet.refused", who, 0);
                if self.tombstones && is_final_refusal(&error) {
                    let tombstone = Outcome::Refused(error.to_string());
                    state.outcomes.insert(credit.id, tombstone);
                }
                Err(error)
            }
        }
    }

    /// The wallet process dies: calls in flight break, each of their credits
    /// committed or not as the seed says; new calls fail until restart.
    pub fn crash(&self) {
        let mut state = self.state.lock();
        state.up = false;
        self.world.event("wallet.crash", 0, 0);
        for credit in std::mem::take(&mut state.in_flight).into_values().flatten() {
            if self.world.chance(self.world.knobs.crash_applies) {
                self.world
                    .event("wallet.crash_committed", user(credit.phone), 0);
                let _ = self.apply(&mut state, &credit);
            }
        }
    }

    pub fn restart(&self) {
        self.state.lock().up = true;
        self.world.event("wallet.restart", 0, 0);
    }
}

impl WalletState {
    fn admit(&mut self, credits: Vec<Credit>) -> Option<u64> {
        if !self.up {
            return None;
        }
        self.next_token += 1;
        self.in_flight.insert(self.next_token, credits);
        Some(self.next_token)
    }

    fn fresh_id(&mut self) -> Uuid {
        self.next_sequence += 1;
        Uuid::from_u128((1 << 100) | u128::from(self.next_sequence))
    }

    fn balance(&self, phone: PhoneNumber) -> i64 {
        self.accounts.get(&phone).map_or(0, |a| a.balance)
    }

    /// Appends a transaction the rules already allowed.
    fn push(
        &mut self,
        id: Uuid,
        phone: PhoneNumber,
        amount: i64,
        reference: &str,
        world: &World,
    ) -> WalletTransaction {
        self.next_sequence += 1;
        let account = self.accounts.entry(phone).or_default();
        account.balance += amount;
        let tx = WalletTransaction {
            id,
            phone,
            sequence: self.next_sequence,
            amount,
            reference: reference.to_owned(),
            created_at: world.now(),
            balance_after: account.balance,
        };
        account.transactions.push(tx.clone());
        world.event("wallet.applied", user(phone), amount);
        tx
    }
}
