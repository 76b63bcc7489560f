//! The Redis slot source: instances lease batches of slot numbers from a shared
//! pool with one Lua call each, so a hot voucher is served by every instance at
//! once without them colliding in the ledger.
//!
//! Redis is a speed-up, never the authority. Per voucher it keeps `next` (the
//! lowest slot never leased) and a set of given-back slots; each instance keeps a
//! set of the slots it holds, with a TTL it renews while alive. The ledger
//! refuses a second claim of a slot, so whatever Redis loses or double-hands
//! costs a retry, never an over-redemption (I1):
//! - a pool that is missing (FLUSHALL, failover to a replica that lagged) is
//!   initialised again from the ledger's taken slots;
//! - slots that are in no pool, no live holder's set and not in the ledger
//!   (their holder died, or a write was lost) are found by reconciliation with
//!   the ledger when the pool runs dry, and put back;
//! - while Redis cannot be reached, slots come from the ledger directly
//!   ([`LocalSlots::shared`]), and `voucherd_slot_source_degraded` says so.
//!
//! Keys carry the voucher code as a hash tag, `voucherd:{CODE}:...`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::Script;

use super::local::LocalSlots;
use super::{SlotBatch, SlotSource};
use voucherd_core::domain::VoucherCode;
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::VoucherLedger;
use voucherd_core::limits::{
    LEASE_RENEW_INTERVAL_MS, LEASE_TTL_MS, RECONCILE_INTERVAL_MS, REDIS_HEALTH_INTERVAL_MS,
    REDIS_LEASE_BATCH_SLOTS, REDIS_OP_TIMEOUT_MS, REDIS_SLOTS_PER_CALL,
};
use voucherd_metrics::{Metrics, SlotSourceKind};

/// Leases up to ARGV[1] slots into this instance's held set. Returns
/// `{-1}` when the pool does not exist, else `{pool left, slot, slot, ...}`.
/// The batch shrinks to an eighth of what is left, so the last slots spread over
/// instances instead of sitting in one instance's lease.
const LEASE_SCRIPT: &str = r"
local limit = redis.call('HGET', KEYS[1], 'limit')
if not limit then return {-1} end
limit = tonumber(limit)
local next_fresh = tonumber(redis.call('HGET', KEYS[1], 'next'))
local returned = redis.call('SCARD', KEYS[2])
local fresh_left = math.max(0, limit - next_fresh + 1)
local pool = returned + fresh_left
local batch = math.min(tonumber(ARGV[1]), math.max(1, math.floor(pool / 8)))
local out = {}
if returned > 0 then
  for _, s in ipairs(redis.call('SPOP', KEYS[2], math.min(batch, returned))) do
    out[#out + 1] = tonumber(s)
  end
end
local fresh = math.min(batch - #out, fresh_left)
for i = 0, fresh - 1 do out[#out + 1] = next_fresh + i end
if fresh > 0 then redis.call('HSET', KEYS[1], 'next', next_fresh + fresh) end
if #out > 0 then
  redis.call('SADD', KEYS[3], unpack(out))
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
  redis.call('SADD', KEYS[4], ARGV[3])
end
return {pool - #out, unpack(out)}
";

/// Creates the pool from the ledger's view if it does not exist: ARGV = limit,
/// next, then free slots below next. Returns 1 if it created it.
const INIT_SCRIPT: &str = r"
if redis.call('HSETNX', KEYS[1], 'limit', ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'next', ARGV[2])
for i = 3, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
return 1
";

/// Moves slots from this instance's held set back to the pool; slots at or above
/// `next` are already free there (the pool was rebuilt) and are dropped.
const GIVE_BACK_SCRIPT: &str = r"
local next_fresh = redis.call('HGET', KEYS[1], 'next')
if not next_fresh then return 0 end
next_fresh = tonumber(next_fresh)
local given = 0
for i = 1, #ARGV do
  redis.call('SREM', KEYS[3], ARGV[i])
  if tonumber(ARGV[i]) < next_fresh then
    given = given + redis.call('SADD', KEYS[2], ARGV[i])
  end
end
return given
";

/// Puts candidate slots (free in the ledger, ARGV[2..]) back in the pool unless
/// they are already there, still fresh, or held by a live instance (ARGV[1] is the
/// held-set key prefix). Forgets holders whose set expired. Returns how many it added.
const RECONCILE_SCRIPT: &str = r"
local next_fresh = redis.call('HGET', KEYS[1], 'next')
if not next_fresh then return 0 end
next_fresh = tonumber(next_fresh)
local live = {}
for _, holder in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local key = ARGV[1] .. holder
  if redis.call('EXISTS', key) == 1 then live[#live + 1] = key else redis.call('SREM', KEYS[3], holder) end
end
local added = 0
for i = 2, #ARGV do
  local slot = ARGV[i]
  if tonumber(slot) < next_fresh and redis.call('SISMEMBER', KEYS[2], slot) == 0 then
    local held = false
    for _, key in ipairs(live) do
      if redis.call('SISMEMBER', key, slot) == 1 then held = true break end
    end
    if not held then added = added + redis.call('SADD', KEYS[2], slot) end
  end
end
return added
";

/// Moves the pool's cursor up to ARGV[1] (the lowest slot above every slot the
/// ledger shows taken) if it is below: a Redis that failed over to a replica
/// missing the last leases hands those slots out again otherwise. Returns the
/// cursor it found, or -1 when the pool does not exist.
const CLAMP_SCRIPT: &str = r"
local next_fresh = redis.call('HGET', KEYS[1], 'next')
if not next_fresh then return -1 end
next_fresh = tonumber(next_fresh)
if next_fresh < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'next', ARGV[1]) end
return next_fresh
";

/// Where Redis is: one server, or a master found through Sentinel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://host:port/db`
    Direct(String),
    /// `redis+sentinel://host:port,host:port/master_name`
    Sentinel { nodes: Vec<String>, master: String },
}

impl std::str::FromStr for RedisTarget {
    type Err = String;

    fn from_str(raw: &str) -> std::result::Result<Self, Self::Err> {
        if let Some(rest) = raw.strip_prefix("redis+sentinel://") {
            let (hosts, master) = rest
                .split_once('/')
                .ok_or("redis+sentinel:// needs /master_name after the hosts")?;
            let nodes: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{h}"))
                .collect();
            if nodes.is_empty() || master.is_empty() {
                return Err("redis+sentinel:// needs at least one host and a master name".into());
            }
            return Ok(RedisTarget::Sentinel {
                nodes,
                master: master.to_owned(),
            });
        }
        if raw.starts_with("redis://") || raw.starts_with("rediss://") {
            redis::Client::open(raw).map_err(|e| format!("invalid Redis URL: {e}"))?;
            return Ok(RedisTarget::Direct(raw.to_owned()));
        }
        Err("expected redis://host:port or redis+sentinel://host:port,.../master".into())
    }
}

/// A connection to the current master, made again after any failure so that a
/// Sentinel failover is followed on the next call.
struct Link {
    target: RedisTarget,
    sentinel: tokio::sync::Mutex<Option<SentinelClient>>,
    cached: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Link {
    fn new(target: RedisTarget) -> Self {
        Self {
            target,
            sentinel: tokio::sync::Mutex::new(None),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let client = match &self.target {
            RedisTarget::Direct(url) => redis::Client::open(url.as_str())?,
            RedisTarget::Sentinel { nodes, master } => {
                let mut sentinel = self.sentinel.lock().await;
                let client = match sentinel.as_mut() {
                    Some(client) => client,
                    None => sentinel.insert(SentinelClient::build(
                        nodes.clone(),
                        master.clone(),
                        None,
                        SentinelServerType::Master,
                    )?),
                };
                client.async_get_client().await?
            }
        };
        client.get_multiplexed_async_connection().await
    }

    /// The cached connection, or a new one; true when it was cached.
    async fn connection(&self) -> redis::RedisResult<(MultiplexedConnection, bool)> {
        let mut cached = self.cached.lock().await;
        if let Some(connection) = cached.as_ref() {
            return Ok((connection.clone(), true));
        }
        let fresh = self.connect().await?;
        *cached = Some(fresh.clone());
        Ok((fresh, false))
    }

    /// Runs one Redis operation with a bounded wait; any failure drops the
    /// connection so the next call resolves the master again.
    ///
    /// A cached connection whose server went away (killed, failed over) answers
    /// "broken pipe", mostly without having sent anything (see [`is_broken_pipe`]):
    /// then the operation runs once more on a new connection (through Sentinel, to the
    /// new master) within the same bound, instead of turning the instance degraded
    /// for the health interval.
    async fn run<T, F, Fut>(&self, operation: F) -> Result<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let bounded = async {
            let (connection, cached) = self.connection().await?;
            match operation(connection).await {
                Err(error) if cached && is_broken_pipe(&error) => {
                    *self.cached.lock().await = None;
                    let (connection, _) = self.connection().await?;
                    operation(connection).await
                }
                outcome => outcome,
            }
        };
        let outcome =
            tokio::time::timeout(Duration::from_millis(REDIS_OP_TIMEOUT_MS), bounded).await;
        let error = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        *self.cached.lock().await = None;
        Err(Error::unavailable(format!("redis: {error}")))
    }
}

/// The error of a multiplexed connection whose driver already stopped: the command
/// was not written anywhere.
/// A stream that ended answers the requests in flight the same way, so a command may
/// have reached a server that died; its effect then survives only where that server's
/// writes did (a replica that had them), and a lease run twice there leaves slots in
/// this instance's held set that no shard holds: never an over-redemption, at worst
/// slots that wait for this instance's restart.
fn is_broken_pipe(error: &redis::RedisError) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

struct Keys {
    meta: String,
    free: String,
    held: String,
    holders: String,
    held_prefix: String,
}

impl Keys {
    fn new(code: &VoucherCode, instance: &str) -> Self {
        let base = format!("voucherd:{{{code}}}");
        Self {
            meta: format!("{base}:meta"),
            free: format!("{base}:free"),
            held: format!("{base}:held:{instance}"),
            holders: format!("{base}:holders"),
            held_prefix: format!("{base}:held:"),
        }
    }
}

struct Inner {
    link: Link,
    instance: String,
    ledger: Arc<dyn VoucherLedger>,
    fallback: LocalSlots,
    degraded: AtomicBool,
    metrics: Arc<Metrics>,
    /// Vouchers this instance holds slots of: their held sets are renewed.
    held: Mutex<HashSet<VoucherCode>>,
    /// Slots leased from the ledger while degraded, per voucher: Redis has them in no
    /// held set, so when it is reachable again they go into this instance's (else its
    /// reconciliation would hand them to other instances while this one claims them).
    leased_while_degraded: Mutex<HashMap<VoucherCode, SlotBatch>>,
    last_reconcile: Mutex<HashMap<VoucherCode, Instant>>,
    last_realign: Mutex<HashMap<VoucherCode, Instant>>,
    lease: Script,
    init: Script,
    give_back: Script,
    reconcile: Script,
    clamp: Script,
}

/// Slot leases from Redis, with the ledger as fallback.
pub struct RedisSlots {
    inner: Arc<Inner>,
    maintenance: tokio::task::JoinHandle<()>,
}

impl Drop for RedisSlots {
    fn drop(&mut self) {
        self.maintenance.abort();
    }
}

impl RedisSlots {
    /// Starts the source and its maintenance task (lease renewal, health checks).
    /// Redis need not be reachable now: the instance starts degraded and recovers.
    pub fn start(
        target: RedisTarget,
        ledger: Arc<dyn VoucherLedger>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let inner = Arc::new(Inner {
            link: Link::new(target),
            instance,
            fallback: LocalSlots::shared(ledger.clone()),
            ledger,
            degraded: AtomicBool::new(false),
            metrics,
            held: Mutex::default(),
            leased_while_degraded: Mutex::default(),
            last_reconcile: Mutex::default(),
            last_realign: Mutex::default(),
            lease: Script::new(LEASE_SCRIPT),
            init: Script::new(INIT_SCRIPT),
            give_back: Script::new(GIVE_BACK_SCRIPT),
            reconcile: Script::new(RECONCILE_SCRIPT),
            clamp: Script::new(CLAMP_SCRIPT),
        });
        let maintenance = tokio::spawn(maintain(Arc::downgrade(&inner)));
        Self { inner, maintenance }
    }
}

impl SlotSource for RedisSlots {
    fn lease(
        &self,
        code: &VoucherCode,
        limit: u32,
        max: u32,
    ) -> BoxFuture<'static, Result<SlotBatch>> {
        let inner = self.inner.clone();
        let code = code.clone();
        Box::pin(async move {
            let started = Instant::now();
            if !inner.degraded.load(Ordering::Acquire) {
                match inner.lease_from_redis(&code, limit, max).await {
                    Ok(slots) => {
                        inner.metrics.observe_lease(
                            SlotSourceKind::redis,
                            slots.len(),
                            started.elapsed(),
                        );
                        return Ok(slots);
                    }
                    Err(error) => inner.enter_degraded(&error),
                }
            }
            let slots = inner.fallback.lease(&code, limit, max).await?;
            inner
                .leased_while_degraded
                .lock()
                .entry(code.clone())
                .or_default()
                .append(slots.clone());
            inner
                .metrics
                .observe_lease(SlotSourceKind::ledger, slots.len(), started.elapsed());
            Ok(slots)
        })
    }

    fn give_back(&self, code: &VoucherCode, slots: SlotBatch) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        let code = code.clone();
        Box::pin(async move { inner.give_back(&code, slots).await })
    }

    fn taken_elsewhere(
        &self,
        code: &VoucherCode,
        limit: u32,
        rest: SlotBatch,
    ) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        let code = code.clone();
        Box::pin(async move {
            if inner.degraded.load(Ordering::Acquire) {
                inner.no_longer_held_while_degraded(&code, &rest);
                return inner.fallback.taken_elsewhere(&code, limit, rest).await;
            }
            let keys = &Keys::new(&code, &inner.instance);
            if !due(&inner.last_realign, &code) {
                // Realigned a moment ago: the rest goes back as any unused lease does
                // (a taken slot among it costs one more retry until the next realign
                // drops it; dropping them all now would strand the free ones).
                return inner.give_back(&code, rest).await;
            }
            match inner.realign(&code, keys, &rest).await {
                Ok((0, 0)) => {}
                Ok((moved, dropped)) => {
                    tracing::warn!(%code, moved, dropped, "the slot pool in redis was behind the ledger (a failover to a replica that missed writes?): moved its cursor past every taken slot and dropped taken slots from its free set");
                }
                Err(error) => inner.enter_degraded(&error),
            }
            Ok(())
        })
    }

    fn reset(&self, code: &VoucherCode) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        let code = code.clone();
        Box::pin(async move {
            inner.fallback.reset(&code).await?;
            // What this instance held changes now, so reconciliation is due at
            // once rather than after the usual interval.
            inner.last_reconcile.lock().remove(&code);
            let held = &Keys::new(&code, &inner.instance).held;
            // What this instance held is free again unless the ledger has it;
            // dropping the held set lets reconciliation return it.
            let outcome = inner
                .link
                .run(|mut connection| async move {
                    redis::cmd("DEL")
                        .arg(held)
                        .query_async::<i64>(&mut connection)
                        .await
                })
                .await;
            if let Err(error) = outcome {
                inner.enter_degraded(&error);
            }
            Ok(())
        })
    }
}

impl Inner {
    /// Puts leased, unclaimed slots back in the pool (see [`SlotSource::give_back`]).
    async fn give_back(&self, code: &VoucherCode, slots: SlotBatch) -> Result<()> {
        self.metrics.count_slots_returned(slots.len());
        if self.degraded.load(Ordering::Acquire) {
            self.no_longer_held_while_degraded(code, &slots);
            return self.fallback.give_back(code, slots).await;
        }
        let keys = &Keys::new(code, &self.instance);
        let script = &self.give_back;
        // Redis keeps single slots: they go in calls of a bounded size.
        let slots: Vec<u32> = slots.iter().collect();
        for chunk in slots.chunks(REDIS_SLOTS_PER_CALL) {
            let outcome = self
                .link
                .run(|mut connection| async move {
                    let mut call = script.key(&keys.meta);
                    call.key(&keys.free).key(&keys.held).arg(chunk);
                    call.invoke_async::<i64>(&mut connection).await
                })
                .await;
            if let Err(error) = outcome {
                // The slots are in no pool now; reconciliation finds them later.
                self.enter_degraded(&error);
                break;
            }
        }
        Ok(())
    }

    /// Clamps the pool to the ledger: the cursor above every taken slot, no taken
    /// slot left in the free set, and every free slot below the cursor that no live
    /// instance holds in it. Returns (cursor moved by, taken slots dropped).
    async fn realign(
        &self,
        code: &VoucherCode,
        keys: &Keys,
        rest: &SlotBatch,
    ) -> Result<(u32, usize)> {
        self.release(keys, rest).await?;
        let usage = self.ledger.slot_usage(code.clone()).await?;
        let floor = usage.highest_taken + 1;
        let script = &self.clamp;
        let found: i64 = self
            .link
            .run(|mut connection| async move {
                let mut call = script.key(&keys.meta);
                call.arg(floor);
                call.invoke_async(&mut connection).await
            })
            .await?;
        if found < 0 {
            // No pool: the next lease initialises it from the ledger.
            return Ok((0, 0));
        }
        let moved = u32::try_from(found).map_or(0, |cursor| floor.saturating_sub(cursor));
        let free: Vec<i64> = self
            .link
            .run(|mut connection| async move {
                redis::cmd("SMEMBERS")
                    .arg(&keys.free)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        let gaps: HashSet<u32> = usage.gaps.iter().copied().collect();
        let taken: Vec<i64> = free
            .into_iter()
            .filter(|&slot| {
                u32::try_from(slot)
                    .is_ok_and(|slot| slot <= usage.highest_taken && !gaps.contains(&slot))
            })
            .collect();
        self.remove_members(&keys.free, &taken).await?;
        // Free slots below the cursor that no live instance holds (the ledger's gaps,
        // among them whatever of `rest` the ledger shows free) go back to the pool: with
        // the cursor moved up, they may be all that is left. The rest above every taken
        // slot is at or past the cursor, fresh again.
        let mut added = 0;
        for chunk in usage.gaps.chunks(REDIS_SLOTS_PER_CALL) {
            added += self.add_free(keys, chunk).await?;
        }
        if added > 0 {
            self.metrics.count_slots_reclaimed(added);
        }
        Ok((moved, taken.len()))
    }

    /// Takes `slots` out of this instance's held set without putting them in the
    /// free set.
    async fn release(&self, keys: &Keys, slots: &SlotBatch) -> Result<()> {
        let slots: Vec<u32> = slots.iter().collect();
        self.remove_members(&keys.held, &slots).await
    }

    /// `SREM key members…`, in calls of a bounded size.
    async fn remove_members<T>(&self, key: &str, members: &[T]) -> Result<()>
    where
        T: redis::ToRedisArgs + Sync,
    {
        for chunk in members.chunks(REDIS_SLOTS_PER_CALL) {
            self.link
                .run(|mut connection| async move {
                    redis::cmd("SREM")
                        .arg(key)
                        .arg(chunk)
                        .query_async::<i64>(&mut connection)
                        .await
                })
                .await?;
        }
        Ok(())
    }

    fn enter_degraded(&self, error: &Error) {
        if !self.degraded.swap(true, Ordering::AcqRel) {
            tracing::warn!(%error, "redis unreachable; taking slots from the ledger directly");
            self.metrics.set_slot_source_degraded(true);
        }
    }

    async fn lease_from_redis(
        &self,
        code: &VoucherCode,
        limit: u32,
        max: u32,
    ) -> Result<SlotBatch> {
        let keys = &Keys::new(code, &self.instance);
        let max = max.min(REDIS_LEASE_BATCH_SLOTS);
        let (script, instance) = (&self.lease, &self.instance);
        // At most: lease, initialise, lease, reconcile, lease.
        for _ in 0..3 {
            let reply: Vec<i64> = self
                .link
                .run(|mut connection| async move {
                    let mut call = script.key(&keys.meta);
                    call.key(&keys.free)
                        .key(&keys.held)
                        .key(&keys.holders)
                        .arg(max)
                        .arg(LEASE_TTL_MS)
                        .arg(instance);
                    call.invoke_async(&mut connection).await
                })
                .await?;
            match reply.split_first() {
                Some((-1, _)) => self.initialise(code, limit, keys).await?,
                Some((_, slots)) if !slots.is_empty() => {
                    self.held.lock().insert(code.clone());
                    return Ok(slots_in_range(code, limit, slots));
                }
                _ => {
                    if !self.reconcile_due(code) {
                        tracing::debug!(%code, "the redis pool is empty; reconciled a moment ago");
                        return Ok(SlotBatch::new());
                    }
                    if self.reconcile_pool(code, limit, keys).await? == 0 {
                        tracing::debug!(%code, "the redis pool is empty and the ledger shows no slot free outside live leases");
                        return Ok(SlotBatch::new());
                    }
                }
            }
        }
        Ok(SlotBatch::new())
    }

    /// Creates the voucher's pool from the ledger (first use, or after Redis lost it).
    async fn initialise(&self, code: &VoucherCode, limit: u32, keys: &Keys) -> Result<()> {
        let usage = self.ledger.slot_usage(code.clone()).await?;
        let mut chunks = usage.gaps.chunks(REDIS_SLOTS_PER_CALL);
        let first = &chunks.next().unwrap_or_default().to_vec();
        let next = usage.highest_taken + 1;
        let script = &self.init;
        let created: i64 = self
            .link
            .run(|mut connection| async move {
                let mut call = script.key(&keys.meta);
                call.key(&keys.free).arg(limit).arg(next).arg(first);
                call.invoke_async(&mut connection).await
            })
            .await?;
        if created == 1 {
            tracing::info!(%code, next, gaps = usage.gaps.len(), "slot pool initialised from the ledger");
            for chunk in chunks {
                self.add_free(keys, chunk).await?;
            }
        }
        Ok(())
    }

    fn reconcile_due(&self, code: &VoucherCode) -> bool {
        due(&self.last_reconcile, code)
    }
}

/// Whether the interval since the last time `code` was due has passed (then it
/// is due now, and the time is noted).
fn due(last: &Mutex<HashMap<VoucherCode, Instant>>, code: &VoucherCode) -> bool {
    let mut last = last.lock();
    let now = Instant::now();
    let due = last
        .get(code)
        .is_none_or(|at| now.duration_since(*at) >= Duration::from_millis(RECONCILE_INTERVAL_MS));
    if due {
        last.insert(code.clone(), now);
    }
    due
}

impl Inner {
    /// Returns slots that are free in the ledger but in no pool and no live
    /// lease (their holder died, or Redis lost a write). Returns how many.
    async fn reconcile_pool(&self, code: &VoucherCode, limit: u32, keys: &Keys) -> Result<usize> {
        let usage = self.ledger.slot_usage(code.clone()).await?;
        if usage.taken >= limit {
            return Ok(0);
        }
        let candidates: Vec<u32> = usage
            .gaps
            .iter()
            .copied()
            .chain(usage.highest_taken + 1..=limit)
            .collect();
        let mut added = 0;
        for chunk in candidates.chunks(REDIS_SLOTS_PER_CALL) {
            added += self.add_free(keys, chunk).await?;
        }
        if added > 0 {
            tracing::info!(%code, added, "reclaimed slots the ledger shows unclaimed");
            self.metrics.count_slots_reclaimed(added);
        }
        Ok(added)
    }

    async fn add_free(&self, keys: &Keys, slots: &[u32]) -> Result<usize> {
        let script = &self.reconcile;
        let added: i64 = self
            .link
            .run(|mut connection| async move {
                let mut call = script.key(&keys.meta);
                call.key(&keys.free)
                    .key(&keys.holders)
                    .arg(&keys.held_prefix)
                    .arg(slots);
                call.invoke_async(&mut connection).await
            })
            .await?;
        Ok(added.max(0) as usize)
    }

    /// Renews this instance's held sets, or, while degraded, checks whether Redis is back.
    async fn maintain_once(&self) {
        if self.degraded.load(Ordering::Acquire) {
            let ping = self
                .link
                .run(|mut connection| async move {
                    redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await
                })
                .await;
            if ping.is_ok() {
                if let Err(error) = self.hold_what_was_leased_while_degraded().await {
                    tracing::warn!(%error, "redis answers again but did not take this instance's held slots; still degraded");
                    return;
                }
                tracing::info!("redis reachable again; leasing slots from it");
                self.fallback.forget_all();
                self.degraded.store(false, Ordering::Release);
                self.metrics.set_slot_source_degraded(false);
            }
            return;
        }
        let codes: Vec<VoucherCode> = self.held.lock().iter().cloned().collect();
        if codes.is_empty() {
            return;
        }
        let (codes, instance) = (&codes, &self.instance);
        let renewal = self
            .link
            .run(|mut connection| async move {
                let mut pipe = redis::pipe();
                for code in codes {
                    pipe.cmd("PEXPIRE")
                        .arg(Keys::new(code, instance).held)
                        .arg(LEASE_TTL_MS)
                        .ignore();
                }
                pipe.query_async::<()>(&mut connection).await
            })
            .await;
        if let Err(error) = renewal {
            self.enter_degraded(&error);
        }
    }
}

impl Inner {
    /// Slots leased while degraded that went back to the fallback: no shard holds
    /// them, so they must not go into the held set when Redis answers again (there
    /// they would be stranded: reconciliation never returns a live holder's slots).
    fn no_longer_held_while_degraded(&self, code: &VoucherCode, slots: &SlotBatch) {
        let mut leased = self.leased_while_degraded.lock();
        if let Some(held) = leased.get_mut(code) {
            held.remove_all(slots);
            if held.is_empty() {
                leased.remove(code);
            }
        }
    }

    /// Puts the slots leased from the ledger while degraded into this instance's held
    /// sets (some are claimed since: taken, so no reconciliation returns them anyway),
    /// so the pool does not hand them out while this instance's shards still hold them.
    async fn hold_what_was_leased_while_degraded(&self) -> Result<()> {
        let leased: Vec<(VoucherCode, SlotBatch)> =
            self.leased_while_degraded.lock().drain().collect();
        for (index, (code, slots)) in leased.iter().enumerate() {
            let keys = &Keys::new(code, &self.instance);
            let instance = &self.instance;
            let slots: Vec<u32> = slots.iter().collect();
            let mut outcome = Ok(());
            for chunk in slots.chunks(REDIS_SLOTS_PER_CALL) {
                outcome = self
                    .link
                    .run(|mut connection| async move {
                        redis::pipe()
                            .cmd("SADD")
                            .arg(&keys.held)
                            .arg(chunk)
                            .ignore()
                            .cmd("PEXPIRE")
                            .arg(&keys.held)
                            .arg(LEASE_TTL_MS)
                            .ignore()
                            .cmd("SADD")
                            .arg(&keys.holders)
                            .arg(instance)
                            .ignore()
                            .query_async::<()>(&mut connection)
                            .await
                    })
                    .await;
                if outcome.is_err() {
                    break;
                }
            }
            if let Err(error) = outcome {
                // Kept for the next attempt, with what was not handed over yet.
                let mut kept = self.leased_while_degraded.lock();
                for (code, slots) in leased.into_iter().skip(index) {
                    kept.entry(code).or_default().append(slots);
                }
                return Err(error);
            }
            self.held.lock().insert(code.clone());
        }
        Ok(())
    }
}

/// The slots of a lease reply as a batch. Redis is not trusted: a value outside
/// `1..=limit` (a corrupted or foreign key) is dropped, so every batch a source
/// hands to a shard is in range.
fn slots_in_range(code: &VoucherCode, limit: u32, slots: &[i64]) -> SlotBatch {
    let batch: SlotBatch = slots
        .iter()
        .filter_map(|&slot| u32::try_from(slot).ok())
        .filter(|slot| (1..=limit).contains(slot))
        .collect();
    if batch.len() != slots.len() {
        tracing::warn!(%code, leased = slots.len(), kept = batch.len(), "redis leased slots outside the voucher's range or twice; dropped them");
    }
    batch
}

async fn maintain(inner: std::sync::Weak<Inner>) {
    let period = Duration::from_millis(LEASE_RENEW_INTERVAL_MS.min(REDIS_HEALTH_INTERVAL_MS));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.maintain_once().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leased_slots_outside_the_range_are_dropped() {
        let code = VoucherCode::parse("V").unwrap();
        let batch = slots_in_range(&code, 10, &[3, 1, 2, 0, -4, 11, 10, 3]);
        assert_eq!(batch.iter().collect::<Vec<_>>(), vec![1, 2, 3, 10]);
        assert_eq!(batch.range_count(), 2);
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            "redis://127.0.0.1:6379/0".parse::<RedisTarget>(),
            Ok(RedisTarget::Direct("redis://127.0.0.1:6379/0".into()))
        );
        assert_eq!(
            "redis+sentinel://a:26379,b:26380/mymaster".parse::<RedisTarget>(),
            Ok(RedisTarget::Sentinel {
                nodes: vec!["redis://a:26379".into(), "redis://b:26380".into()],
                master: "mymaster".into()
            })
        );
        assert!("redis+sentinel://a:26379".parse::<RedisTarget>().is_err());
        assert!("http://x".parse::<RedisTarget>().is_err());
    }
}
