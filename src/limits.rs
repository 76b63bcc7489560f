//! Every bound of the service, with its unit and the reason for its value.
//!
//! Each queue and each wait in voucherd is bounded by one of these constants, so
//! that overload turns into fast, explicit errors (429/503) instead of memory
//! growth or requests that hang.

/// Largest request body accepted; bigger bodies get 413 before any parsing.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Longest voucher code; codes are map keys in memory and in the ledger.
pub const MAX_CODE_CHARS: usize = 64;

/// E.164 allows at most 15 digits; 8 is the shortest real subscriber number we accept.
pub const MIN_PHONE_DIGITS: usize = 8;
/// See [`MIN_PHONE_DIGITS`].
pub const MAX_PHONE_DIGITS: usize = 15;

/// Largest voucher limit: slot numbers are u32 and a shard keeps a voucher's
/// free slots in memory, so the limit bounds that memory.
pub const MAX_VOUCHER_LIMIT: u32 = 10_000_000;

/// Largest page of a report or of a wallet's transactions.
pub const MAX_PAGE_LIMIT: u32 = 1_000;
/// Page size when the client names none.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
/// Largest offset a page request may skip; deeper reads use the cursor, which is O(page).
pub const MAX_PAGE_OFFSET: u32 = 1_000_000;

/// Longest Idempotency-Key header value.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// Longest free-text transaction reference.
pub const MAX_REFERENCE_CHARS: usize = 128;

/// Redemptions admitted past the in-memory fast path at once (per instance).
/// Beyond it, requests get 429 at once instead of queueing in actor mailboxes,
/// which are unbounded.
pub const MAX_REDEMPTIONS_IN_FLIGHT: usize = 16_384;
/// Wallet writes admitted at once (per instance), for the same reason.
pub const MAX_WALLET_WRITES_IN_FLIGHT: usize = 16_384;

/// How long an HTTP request waits for a voucher shard or a wallet actor before 503.
/// Covers one ledger commit under load with a wide margin.
pub const ACTOR_CALL_TIMEOUT_MS: u64 = 10_000;

/// Requests for one voucher that may wait for a slot while the pool is empty but
/// claims are still in flight (a failed claim gives its slot back).
pub const MAX_SLOT_WAITERS_PER_VOUCHER: usize = 4_096;

/// How often one request retries with another slot when the ledger says its slot
/// was already taken (only after a shard restart or a lost slot-source write).
pub const MAX_CLAIM_ATTEMPTS: u32 = 8;

/// Slots a voucher shard takes from the local slot source at a time.
pub const LOCAL_LEASE_BATCH_SLOTS: u32 = 4_096;

/// Slots one Redis lease takes at most; the Lua script also shrinks batches as
/// the pool runs low so one instance does not hoard the last slots.
pub const REDIS_LEASE_BATCH_SLOTS: u32 = 512;

/// How long a lease lives in Redis unless renewed; after an instance dies, its
/// unclaimed slots return to the pool (via reconciliation) after about this long.
pub const LEASE_TTL_MS: u64 = 5_000;

/// How often an instance renews its leases: well inside the TTL so one late
/// renewal does not lose a lease.
pub const LEASE_RENEW_INTERVAL_MS: u64 = 1_000;

/// Longest wait for one Redis operation before the instance falls back to the
/// ledger for slots.
pub const REDIS_OP_TIMEOUT_MS: u64 = 500;

/// How often a degraded instance checks whether Redis is back.
pub const REDIS_HEALTH_INTERVAL_MS: u64 = 500;

/// Least time between two reconciliations of one voucher's Redis pool with the
/// ledger (each reads every taken slot of the voucher).
pub const RECONCILE_INTERVAL_MS: u64 = 1_000;

/// Free slots a reconciliation or pool initialisation sends to Redis per call,
/// which keeps each Lua call short.
pub const REDIS_SLOTS_PER_CALL: usize = 1_000;

/// How long an unknown voucher code is remembered as unknown when the ledger is
/// shared (another instance may create it), so floods of bad codes stay in memory.
pub const UNKNOWN_VOUCHER_CACHE_MS: u64 = 1_000;
/// Unknown codes remembered at most; the cache is cleared when full.
pub const MAX_UNKNOWN_VOUCHER_CACHE_ENTRIES: usize = 100_000;

/// Ledger operations written in one durable commit at most. Larger batches
/// amortise the fsync further but delay the first reply of the batch.
pub const MAX_COMMIT_BATCH_OPS: usize = 2_048;

/// Operations that may wait for the ledger writer; submitters get 503 beyond it.
pub const MAX_LEDGER_QUEUE_OPS: usize = 65_536;

/// Time allowed for in-flight requests to finish after SIGTERM before the
/// server stops waiting for them.
pub const SHUTDOWN_GRACE_MS: u64 = 15_000;

/// How often shutdown checks whether requests are still in flight.
pub const DRAIN_CHECK_INTERVAL_MS: u64 = 50;

/// Default number of voucher shard actors and of wallet actors.
pub const DEFAULT_SHARDS: usize = 8;

// Memory bounds.

/// Vouchers exported one by one in `voucherd_voucher_remaining_slots`. Only
/// vouchers with slots left have a series; beyond this many, further vouchers are
/// not exported individually, so neither the registry's memory nor a scrape grows
/// with the number of vouchers ever created.
pub const MAX_VOUCHER_METRIC_SERIES: usize = 1_000;

const _: () = assert!(DRAIN_CHECK_INTERVAL_MS * 10 <= SHUTDOWN_GRACE_MS);
const _: () = assert!(LEASE_RENEW_INTERVAL_MS * 3 <= LEASE_TTL_MS);
const _: () = assert!(REDIS_LEASE_BATCH_SLOTS <= LOCAL_LEASE_BATCH_SLOTS);
const _: () = assert!(DEFAULT_PAGE_LIMIT <= MAX_PAGE_LIMIT);
const _: () = assert!(MAX_COMMIT_BATCH_OPS <= MAX_LEDGER_QUEUE_OPS);
const _: () =
    assert!(MAX_REDEMPTIONS_IN_FLIGHT + MAX_WALLET_WRITES_IN_FLIGHT <= MAX_LEDGER_QUEUE_OPS);
const _: () = assert!(MIN_PHONE_DIGITS <= MAX_PHONE_DIGITS);
// A phone of MAX_PHONE_DIGITS digits must fit the u64 the ledger keys it by.
const _: () = assert!(MAX_PHONE_DIGITS <= 19);
