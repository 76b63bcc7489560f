//! The ledger: the one durable source of truth, behind the [`Ledger`] trait.
//!
//! A redemption is one atomic ledger write that claims slot `k` of the voucher and
//! the user's key for it, records the redemption, the wallet transaction (whose id
//! is the redemption id) and the new balance. Uniqueness of the slot enforces I1
//! (limit), uniqueness of the user's key I2 (unique), the single write I3 (credited),
//! a durable commit before the reply I4 (durable), and the balance check inside
//! the same write I5 (balance).
//!
//! Write methods submit their work *when called*, before the returned future is
//! polled: callers that call in some order (an actor handling its mailbox) get
//! their writes applied in that order, while the waiting happens elsewhere. This
//! is what lets a voucher shard or a wallet actor keep serving while the ledger
//! groups many writes into one durable commit.

use futures::future::BoxFuture;
use uuid::Uuid;

use crate::domain::{
    Page, PageRequest, PhoneNumber, Redemption, RedemptionStatus, ReportEntry, Timestamp, Voucher,
    VoucherCode, VoucherStatus, Wallet, WalletTransaction,
};
use crate::error::Result;

/// What a ledger future resolves to.
pub type LedgerFuture<T> = BoxFuture<'static, Result<T>>;

/// A contender's claim of one slot of a voucher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub code: VoucherCode,
    pub phone: PhoneNumber,
    /// The slot number handed out by the slot source, in 1..=limit.
    pub slot: u32,
    pub at: Timestamp,
}

/// A credit (amount > 0) or debit (amount < 0) of a wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransaction {
    /// The transaction's id. When `replayable`, it is an idempotency key: a
    /// second transaction with this id is a no-op that answers the first one.
    pub id: Uuid,
    /// True when the id derives from a client's Idempotency-Key and may come
    /// again; random ids never repeat and are not indexed.
    pub replayable: bool,
    pub phone: PhoneNumber,
    pub amount: i64,
    pub reference: String,
    pub at: Timestamp,
    /// True for the voucher service's credits: a refusal is remembered, so the
    /// id is refused again however its wallet changes later (the credit's
    /// answer is final, which lets the voucher service void the redemption).
    pub refusal_is_final: bool,
}

/// A wallet to open, with an optional opening balance (>= 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProfile {
    pub phone: PhoneNumber,
    pub opening_balance: i64,
    pub at: Timestamp,
}

/// Which slots of a voucher the ledger holds as taken, in compact form: every
/// slot above `highest_taken` is free, and below it exactly those in `gaps`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotUsage {
    pub highest_taken: u32,
    pub gaps: Vec<u32>,
    pub taken: u32,
}

/// Which halves of the ledger a store holds (see `--role`), as a type: a
/// backend is generic over it (`EmbeddedLedger<H>` and the like), reads what
/// it needs from these consts (monomorphised, no runtime check), and
/// implements a ledger trait only for the halves that have it, so that asking
/// a wallet half to claim does not compile. Sealed: the three halves below
/// are all there are.
///
/// - [`AllInOne`] (role `all`): [`VoucherLedger`] and [`WalletLedger`], hence
///   [`Ledger`]; a claim carries its credit (one write).
/// - [`VoucherHalf`] (role `voucher`): [`VoucherLedger`] (with
///   [`PendingLedger`]); claims are born pending and settled later.
/// - [`WalletHalf`] (role `wallet`): [`WalletLedger`] only.
pub trait HalfKind: sealed::Sealed + Send + Sync + 'static {
    /// The role that opens this half, for logs.
    const NAME: &'static str;
    /// A claim credits its winner in the same write (role `all`).
    const CLAIM_CARRIES_CREDIT: bool;
    /// A claim is born pending and tracked until settled (role `voucher`).
    const CLAIMS_PENDING: bool;
    /// The store holds vouchers, slots and redemptions.
    const HOLDS_VOUCHERS: bool;
    /// The store holds wallets and their transactions.
    const HOLDS_WALLETS: bool;
}

/// A half holding the voucher tables: a backend opened for it implements
/// [`VoucherLedger`] and [`PendingLedger`].
pub trait HoldsVouchers: HalfKind {}

/// A half holding the wallet tables: a backend opened for it implements
/// [`WalletLedger`].
pub trait HoldsWallets: HalfKind {}

/// Both halves in one store (role `all`): a claim and its credit are one write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllInOne;

/// The voucher half alone (role `voucher`): claims are born pending.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VoucherHalf;

/// The wallet half alone (role `wallet`): wallets only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalletHalf;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::AllInOne {}
    impl Sealed for super::VoucherHalf {}
    impl Sealed for super::WalletHalf {}
}

impl HalfKind for AllInOne {
    const NAME: &'static str = "all";
    const CLAIM_CARRIES_CREDIT: bool = true;
    const CLAIMS_PENDING: bool = false;
    const HOLDS_VOUCHERS: bool = true;
    const HOLDS_WALLETS: bool = true;
}

impl HalfKind for VoucherHalf {
    const NAME: &'static str = "voucher";
    const CLAIM_CARRIES_CREDIT: bool = false;
    const CLAIMS_PENDING: bool = true;
    const HOLDS_VOUCHERS: bool = true;
    const HOLDS_WALLETS: bool = false;
}

impl HalfKind for WalletHalf {
    const NAME: &'static str = "wallet";
    const CLAIM_CARRIES_CREDIT: bool = false;
    const CLAIMS_PENDING: bool = false;
    const HOLDS_VOUCHERS: bool = false;
    const HOLDS_WALLETS: bool = true;
}

impl HoldsVouchers for AllInOne {}
impl HoldsVouchers for VoucherHalf {}
impl HoldsWallets for AllInOne {}
impl HoldsWallets for WalletHalf {}

/// Whether a ledger can take writes now, as its backend last found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerHealth {
    Healthy,
    /// The embedded ledger failed to write (a full disk, an I/O error) and is
    /// recovering by itself: writes get `NotWritten` meanwhile.
    Unwritable,
    /// The SQL ledger's database did not answer its last probe.
    Unreachable,
}

/// What every ledger half has: a durable shutdown and a health signal.
pub trait Durable: Send + Sync + 'static {
    /// Finishes every write submitted so far, makes it durable, and refuses new ones.
    /// Writes the ledger cannot apply (it is unwritable) are answered as failed;
    /// the shutdown itself still succeeds, since nothing acknowledged is pending.
    fn shutdown(&self) -> LedgerFuture<()>;

    /// Whether writes can succeed now; feeds readiness. Cheap: no I/O.
    fn health(&self) -> LedgerHealth;
}

/// The voucher half: vouchers, slots, user keys and redemptions. Opened alone by
/// the voucher service, where a claim is born `Pending` and settled through
/// [`PendingLedger`]; in an all-in-one ledger a claim carries its credit and is
/// born `Credited`.
pub trait VoucherLedger: Durable + PendingLedger {
    /// Stores a new voucher; `VoucherExists` if the code is taken.
    fn create_voucher(&self, voucher: Voucher) -> LedgerFuture<VoucherStatus>;

    /// Claims `claim.slot` and the user's key in one atomic write, with the
    /// redemption (and, in an all-in-one ledger, the wallet credit).
    /// `AlreadyRedeemed` if the user holds a redemption, `SlotTaken` if another
    /// claim holds the slot, `VoucherNotFound`.
    fn claim(&self, claim: Claim) -> LedgerFuture<Redemption>;

    fn voucher(&self, code: VoucherCode) -> LedgerFuture<Option<VoucherStatus>>;

    fn vouchers(&self) -> LedgerFuture<Vec<VoucherStatus>>;

    /// The user's redemption of the voucher, as it stands (a void one too).
    fn redemption(&self, code: VoucherCode, phone: PhoneNumber)
        -> LedgerFuture<Option<Redemption>>;

    /// The voucher's redemptions (pending and credited) in slot order; the
    /// cursor is a slot number.
    fn report(&self, code: VoucherCode, page: PageRequest) -> LedgerFuture<Page<ReportEntry>>;

    /// Every user holding a redemption of the voucher.
    fn winners(&self, code: VoucherCode) -> LedgerFuture<Vec<PhoneNumber>>;

    fn slot_usage(&self, code: VoucherCode) -> LedgerFuture<SlotUsage>;
}

/// The wallet half: wallets and their transactions. Opened alone by the wallet
/// service, which applies the voucher service's credits as replayable
/// transactions whose refusals are final.
pub trait WalletLedger: Durable {
    /// Opens a wallet; `ProfileExists` if it is open.
    fn create_profile(&self, profile: NewProfile) -> LedgerFuture<Wallet>;

    /// Applies a credit or debit, opening the wallet on a credit if needed.
    /// `InsufficientFunds` if a debit would go below zero; replaying an id
    /// answers the first transaction, or `IdempotencyKeyReused` if it differs.
    /// With `refusal_is_final`, a refusal is remembered and the id is refused
    /// again (`CreditRefused`).
    fn transact(&self, transaction: NewTransaction) -> LedgerFuture<WalletTransaction>;

    /// A wallet and a page of its transactions, newest first; the cursor is the
    /// sequence of the last transaction of the previous page.
    fn wallet(
        &self,
        phone: PhoneNumber,
        page: PageRequest,
    ) -> LedgerFuture<Option<(Wallet, Page<WalletTransaction>)>>;
}

/// Both halves in one store (role `all`), where a claim and its credit are one
/// write. Of the backends, only those opened for [`AllInOne`] are one.
pub trait Ledger: VoucherLedger + WalletLedger {}

impl<T: VoucherLedger + WalletLedger> Ledger for T {}

/// How a pending redemption ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Credited {
        balance: i64,
    },
    /// Releases the redemption's slot and user key.
    Void {
        reason: String,
    },
}

impl Resolution {
    pub fn status(&self) -> RedemptionStatus {
        match self {
            Resolution::Credited { .. } => RedemptionStatus::Credited,
            Resolution::Void { .. } => RedemptionStatus::Void,
        }
    }
}

/// The voucher ledger's part of the protocol.
pub trait PendingLedger: Send + Sync + 'static {
    /// Settles redemption `id`: `Pending` → the resolution's status. Settling
    /// again with the same status is a no-op that answers the redemption;
    /// a settled redemption never changes status (an attempt is a `Storage`
    /// error: it would mean the protocol broke). Voiding releases the slot and
    /// the user key in the same write. `RedemptionNotFound` if no such id.
    fn settle(&self, id: Uuid, resolution: Resolution) -> LedgerFuture<Redemption>;

    /// Up to `limit` redemptions still pending that were claimed before
    /// `claimed_before`, oldest first.
    fn pending(&self, claimed_before: Timestamp, limit: usize) -> LedgerFuture<Vec<Redemption>>;

    /// Finishes or undoes the claims (and the settles) a crash interrupted
    /// between their steps, up to `limit` of those started before
    /// `claimed_before`, oldest first. The recovery pass calls it before it
    /// re-sends credits. A ledger whose claims and settles are one atomic
    /// write has nothing to do: the default does nothing.
    fn recover_claims(
        &self,
        claimed_before: Timestamp,
        limit: usize,
    ) -> LedgerFuture<ClaimsRecovered> {
        let _ = (claimed_before, limit);
        Box::pin(async { Ok(ClaimsRecovered::default()) })
    }
}

/// What one pass over interrupted claims did ([`PendingLedger::recover_claims`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimsRecovered {
    /// Interrupted claims (and settles) the pass looked at.
    pub examined: usize,
    /// Claims finished: the slot taken and the redemption recorded.
    pub finished: usize,
    /// Claims that lost their slot; the user's key was released.
    pub abandoned: usize,
    /// Redemptions found pending (their credit is the credit recovery's).
    pub pending: usize,
    /// Void redemptions whose slot release was finished.
    pub released: usize,
    /// Left-overs of claims that ended or never started, dropped.
    pub cleaned: usize,
    /// Left for the next pass (the store did not answer).
    pub failed: usize,
}
