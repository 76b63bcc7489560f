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

/// Split mode: how long a redeem request waits for its wallet credit before it
/// answers 202 `pending` (the credit goes on; recovery finishes it if needed).
/// Short against a client's patience, long against a healthy credit (a few ms).
pub const REDEEM_CREDIT_DEADLINE_MS: u64 = 2_000;
/// Split mode: how long one call to the wallet service may take before its
/// credits count as `unknown` (asked again by recovery).
pub const WALLET_CALL_TIMEOUT_MS: u64 = 5_000;
/// How long the voucher service waits for a connection to the wallet service.
pub const WALLET_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Credits one call to the wallet service carries at most; one credit is about
/// 150 bytes of JSON, so a full batch stays well under [`MAX_BODY_BYTES`].
pub const MAX_CREDITS_PER_CALL: usize = 64;
/// Calls to the wallet service in flight at once per voucher instance; credits
/// beyond them wait in the batching queue (which is bounded too).
pub const MAX_WALLET_CALLS_IN_FLIGHT: usize = 32;
/// Credits waiting for a call to the wallet service; past it, a credit is
/// `unknown` at once and left to recovery.
pub const MAX_QUEUED_CREDITS: usize = 16_384;
/// A redemption pending for longer than this is taken by recovery. Well above
/// [`WALLET_CALL_TIMEOUT_MS`], so recovery rarely races a credit still in flight
/// (racing is harmless: credits are idempotent).
pub const RECOVERY_PENDING_AFTER_MS: u64 = 10_000;
/// Time between two recovery passes (each instance adds up to half of it as
/// jitter, so instances sharing a ledger do not pass in step).
pub const RECOVERY_INTERVAL_MS: u64 = 2_000;
/// Pending redemptions one recovery pass takes at most (in calls of
/// [`MAX_CREDITS_PER_CALL`]).
pub const RECOVERY_MAX_PER_PASS: usize = 1_024;

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
/// Voided claims remembered at most, so that a claim voided by two paths at once
/// (a redeem's late credit and recovery) is released once; cleared when full (by
/// then those races are long over). Voids are rare: a wallet's final refusal.
pub const MAX_REMEMBERED_VOIDS: usize = 100_000;

/// Ledger operations written in one durable commit at most. Larger batches
/// amortise the fsync further but delay the first reply of the batch.
pub const MAX_COMMIT_BATCH_OPS: usize = 2_048;

/// Operations that may wait for the ledger writer; submitters get 503 beyond it.
pub const MAX_LEDGER_QUEUE_OPS: usize = 65_536;

/// How long an instance keeps serving after SIGTERM while `/readyz` answers 503
/// `draining`, before it stops accepting connections (`--drain-delay-ms`). A load
/// balancer checking every second that takes an instance out after two failed
/// checks (haproxy `inter 1s fall 2`, a Kubernetes readiness probe with
/// `periodSeconds: 1, failureThreshold: 2`) stops sending to it within about 2 s;
/// Kubernetes then takes a second or two more to update every node's endpoints. 5 s
/// covers both with room; meanwhile every answer carries `Connection: close`, so
/// kept-alive client connections move to other instances one request at a time.
pub const DRAIN_DELAY_MS: u64 = 5_000;

/// Time allowed for in-flight requests to finish once the instance stops
/// accepting (after the drain delay) before the server stops waiting for them.
pub const SHUTDOWN_GRACE_MS: u64 = 15_000;

/// How often shutdown checks whether requests are still in flight.
pub const DRAIN_CHECK_INTERVAL_MS: u64 = 50;

/// Default number of voucher shard actors and of wallet actors.
pub const DEFAULT_SHARDS: usize = 8;

// The HTTP edge: connections, timeouts, request heads, access.

/// Client connections served at once when `--max-connections` is not given (it is
/// also lowered to fit the open-file limit, see [`RESERVED_FILE_DESCRIPTORS`]). A
/// connection past the cap is closed at once, so a flood of idle sockets cannot
/// take the descriptors the ledger and the pools need.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// File descriptors left for everything but client connections (ledger files,
/// database and Redis pools, the metrics listener, logs, accept itself) when the
/// default connection cap is derived from the open-file limit.
pub const RESERVED_FILE_DESCRIPTORS: u64 = 64;

/// Longest time from the first byte of a request's head to its last. A client
/// that trickles headers (slowloris) loses its connection after this.
pub const HEADER_READ_TIMEOUT_SECS: u64 = 5;

/// Longest time to receive a request body (at most [`MAX_BODY_BYTES`]) once its
/// head arrived; a stalled body gets 408.
pub const BODY_READ_TIMEOUT_SECS: u64 = 10;

/// Longest time a connection may sit with no request: a fresh connection that
/// sends nothing, or a keep-alive connection between requests. Load balancers
/// that pool connections should use a shorter idle timeout than this.
pub const IDLE_TIMEOUT_SECS: u64 = 15;

/// First pause after a failed `accept` (descriptors exhausted, aborted
/// handshakes); it doubles per consecutive failure up to [`ACCEPT_BACKOFF_MAX_MS`],
/// so the accept loop never spins on a persistent error.
pub const ACCEPT_BACKOFF_MIN_MS: u64 = 5;
/// See [`ACCEPT_BACKOFF_MIN_MS`].
pub const ACCEPT_BACKOFF_MAX_MS: u64 = 500;

/// Least time between two log lines about the same kind of edge event (accept
/// errors, refused connections); the lines carry how many were suppressed.
pub const EDGE_LOG_INTERVAL_MS: u64 = 1_000;

/// Longest request target (path and query) answered with JSON; longer ones get
/// 414. Every route's target is far shorter.
pub const MAX_URI_BYTES: usize = 2_048;
/// Largest header section answered with JSON (names, values and separators);
/// larger ones get 431.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Most header fields answered with JSON; more get 431.
pub const MAX_HEADER_COUNT: usize = 64;
/// The HTTP parser's own bounds, above ours so that most oversized heads still
/// reach the JSON answers above; a head beyond these is refused by the parser
/// itself with an empty body (it cannot be parsed into a request to answer).
pub const PARSER_MAX_HEAD_BYTES: usize = 64 * 1024;
/// See [`PARSER_MAX_HEAD_BYTES`].
pub const PARSER_MAX_HEADERS: usize = 256;

/// Redemptions one phone number may make per second, sustained, by default
/// (`--redeem-rate-per-phone`); a person retrying a timed-out request stays far
/// below it, a script hammering for one phone gets 429.
pub const DEFAULT_REDEEM_RATE_PER_PHONE: u32 = 5;
/// Redemptions one phone number may make in a burst by default (`--redeem-burst-per-phone`).
pub const DEFAULT_REDEEM_BURST_PER_PHONE: u32 = 10;
/// How often phones that are back to a full allowance are forgotten by the rate
/// limiter, which keeps its memory proportional to recent hammering phones.
pub const RATE_LIMIT_SWEEP_INTERVAL_MS: u64 = 1_000;

// Storage faults and recovery.

/// Longest a voucher shard or wallet actor may stay down while its restarts keep
/// failing (a shard's start reads the ledger, which may be unreachable) before the
/// process gives up and exits non-zero for its own supervisor (systemd,
/// Kubernetes) to restart it. Longer than a managed PostgreSQL failover
/// (typically 20-40 s), so that a failover never costs a process restart.
pub const ACTOR_RESTART_BUDGET_MS: u64 = 60_000;
/// First delay before a failed actor restart is tried again; it doubles up to the maximum.
pub const ACTOR_RESTART_MIN_DELAY_MS: u64 = 50;
/// Longest delay between two restart attempts of one actor: how long an actor
/// stays down at most once the cause of its failed restarts is gone.
pub const ACTOR_RESTART_MAX_DELAY_MS: u64 = 1_000;
/// How long one restart attempt (the actor's start, which reads the ledger) may
/// take before it counts as failed; bounds how long the supervisor is busy with it.
pub const ACTOR_START_TIMEOUT_MS: u64 = 5_000;

/// First delay before the embedded ledger's writer, after an I/O error (a full
/// disk), reopens its database and probes it with a small write; it doubles up
/// to the maximum.
pub const LEDGER_RECOVERY_MIN_DELAY_MS: u64 = 50;
/// Longest delay between two recovery probes: how long writes stay refused at
/// most once the disk has room again.
pub const LEDGER_RECOVERY_MAX_DELAY_MS: u64 = 1_000;
/// How often the recovering writer answers queued writes (503) and checks
/// whether it is time for the next probe.
pub const LEDGER_RECOVERY_POLL_MS: u64 = 10;
/// Size of the scratch file the recovering writer writes (and removes) to see
/// whether the disk has room again before it probes the database: a failed
/// write on the database costs a reopen, whose repair reads the whole file.
/// About what one full commit batch adds to the file.
pub const LEDGER_SPACE_PROBE_BYTES: usize = 1024 * 1024;
/// Least time between two log lines about repeated ledger I/O errors (a full
/// disk fails every probe); the ones in between are counted, not logged.
pub const LEDGER_ERROR_LOG_INTERVAL_MS: u64 = 10_000;

/// How often the PostgreSQL ledger checks that its database answers a
/// `SELECT 1`; the answer feeds readiness.
pub const DATABASE_PROBE_INTERVAL_MS: u64 = 1_000;
/// Longest wait for one such check (connecting included); a database slower
/// than this counts as unreachable.
pub const DATABASE_PROBE_TIMEOUT_MS: u64 = 1_000;
// At least one full restart attempt, with the wait before it, fits in the budget;
// a recovering writer looks at its queue more often than it probes; a database
// probe ends before the next one starts.
const _: () = assert!(ACTOR_RESTART_MIN_DELAY_MS <= ACTOR_RESTART_MAX_DELAY_MS);
/// How long the CQL driver waits for one statement's answer before it counts
/// as unknown. Longer than the server's own timeouts (Cassandra's defaults:
/// writes 2 s, CAS contention 1 s, reads 5 s, as `scripts/cassandra.sh`
/// configures them): a round in doubt is then decided by the next Paxos round
/// on its partition, because its coordinator has itself given up (the CAS
/// model assumes it). Shorter than the driver's default of 30 s, so that a
/// frozen coordinator costs seconds, not half a minute.
pub const CQL_REQUEST_TIMEOUT_MS: u64 = 8_000;
/// The longest server-side timeout the above must exceed (a read's).
pub const CQL_SERVER_TIMEOUT_MS: u64 = 5_000;

const _: () = assert!(CQL_SERVER_TIMEOUT_MS < CQL_REQUEST_TIMEOUT_MS);
const _: () =
    assert!(ACTOR_RESTART_MAX_DELAY_MS + ACTOR_START_TIMEOUT_MS < ACTOR_RESTART_BUDGET_MS);
const _: () = assert!(LEDGER_RECOVERY_MIN_DELAY_MS <= LEDGER_RECOVERY_MAX_DELAY_MS);
const _: () = assert!(LEDGER_RECOVERY_POLL_MS <= LEDGER_RECOVERY_MIN_DELAY_MS);
const _: () = assert!(DATABASE_PROBE_TIMEOUT_MS <= DATABASE_PROBE_INTERVAL_MS);

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
const _: () = assert!(ACCEPT_BACKOFF_MIN_MS <= ACCEPT_BACKOFF_MAX_MS);
const _: () = assert!(HEADER_READ_TIMEOUT_SECS <= IDLE_TIMEOUT_SECS);
const _: () = assert!(MAX_URI_BYTES + MAX_HEADER_BYTES < PARSER_MAX_HEAD_BYTES);
const _: () = assert!(MAX_HEADER_COUNT < PARSER_MAX_HEADERS);
// The body timeout must outlast the time a full body takes at a modest rate.
const _: () = assert!(BODY_READ_TIMEOUT_SECS >= HEADER_READ_TIMEOUT_SECS);
const _: () = assert!(
    RECOVERY_PENDING_AFTER_MS > WALLET_CALL_TIMEOUT_MS,
    "recovery must not take redemptions whose credit is normally still in flight"
);
const _: () = assert!(MAX_CREDITS_PER_CALL * 200 < MAX_BODY_BYTES);
