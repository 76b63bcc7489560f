//! Reads: plain (LOCAL_QUORUM) reads and slices, merged across the
//! partitions a listing spans (a voucher's slot buckets, the claim log's
//! shards). A listing shows only what a finished write made: a slot counts in
//! the report and the winners when its holder's key holds the redemption
//! that attempt made, so a claim in flight is not shown.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use super::claim::redemption_of;
use super::schema::{
    catalog, col, key_of, log_partition, small, KeyState, LogEntry, SlotState, VoucherRow,
};
use super::store::{CasStore, Clustering, Partition, Row, Scan, Value};
use super::Inner;
use futures::future::join_all;
use voucherd_core::domain::{
    Page, PageRequest, PhoneNumber, Redemption, RedemptionStatus, ReportEntry, Timestamp,
    VoucherCode, VoucherStatus,
};
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::{HalfKind, SlotUsage};

/// Rows a merged listing reads from one partition at a time.
const PAGE: usize = 128;
/// Rows a count of held slots reads from one bucket at a time.
const COUNT_PAGE: usize = 1_000;

/// One partition of a merged listing.
struct Source {
    partition: Partition,
    from: Bound<Clustering>,
    buffer: VecDeque<(Clustering, Row)>,
    exhausted: bool,
}

/// Rows of several partitions in one clustering order.
pub(super) struct Merge {
    sources: Vec<Source>,
    to: Bound<Clustering>,
}

impl Merge {
    pub(super) fn new(
        partitions: Vec<Partition>,
        from: Bound<Clustering>,
        to: Bound<Clustering>,
    ) -> Self {
        let sources = partitions
            .into_iter()
            .map(|partition| Source {
                partition,
                from: from.clone(),
                buffer: VecDeque::new(),
                exhausted: false,
            })
            .collect();
        Merge { sources, to }
    }

    /// The next row in clustering order, over every partition.
    pub(super) async fn next(
        &mut self,
        store: &impl CasStore,
    ) -> Result<Option<(Clustering, Row)>> {
        let empty: Vec<usize> = (0..self.sources.len())
            .filter(|&i| self.sources[i].buffer.is_empty() && !self.sources[i].exhausted)
            .collect();
        let scans = empty.iter().map(|&i| {
            let source = &self.sources[i];
            let scan = Scan {
                from: source.from.clone(),
                to: self.to.clone(),
                descending: false,
                limit: PAGE,
            };
            store.scan(source.partition.clone(), scan)
        });
        let slices = join_all(scans).await;
        for (i, slice) in empty.into_iter().zip(slices) {
            let rows = slice?.rows;
            let source = &mut self.sources[i];
            source.exhausted = rows.len() < PAGE;
            if let Some((last, _)) = rows.last() {
                source.from = Bound::Excluded(last.clone());
            }
            source.buffer.extend(rows);
        }
        let first = (self.sources.iter().enumerate())
            .filter_map(|(i, s)| s.buffer.front().map(|(key, _)| (key, i)))
            .min()
            .map(|(_, i)| i);
        Ok(first.and_then(|i| self.sources[i].buffer.pop_front()))
    }

    /// Up to `n` next rows.
    pub(super) async fn take(
        &mut self,
        store: &impl CasStore,
        n: usize,
    ) -> Result<Vec<(Clustering, Row)>> {
        let mut rows = Vec::new();
        while rows.len() < n {
            match self.next(store).await? {
                Some(row) => rows.push(row),
                None => break,
            }
        }
        Ok(rows)
    }
}

fn slot_number(key: &Clustering) -> Result<u32> {
    match key.as_slice() {
        [Value::Int(slot)] => small(*slot, col::SLOT),
        other => Err(Error::storage(format!("a slot key {other:?}"))),
    }
}

impl<S: CasStore, H: HalfKind> Inner<S, H> {
    fn buckets(voucher: &VoucherRow) -> Vec<Partition> {
        (0..voucher.buckets).map(|b| voucher.bucket(b)).collect()
    }

    fn log_shards(&self) -> Vec<Partition> {
        (0..self.options.log_shards)
            .map(|shard| log_partition(i64::from(shard)))
            .collect()
    }

    /// Slots held by any attempt (a claim in flight too), in slot order.
    fn held_slots(voucher: &VoucherRow, after: Bound<Clustering>) -> Merge {
        Merge::new(Self::buckets(voucher), after, Bound::Unbounded)
    }

    /// The voucher with its count of held slots: a paged scan of every
    /// bucket, which holds a row only for a slot taken at least once, so the
    /// count costs reads in proportion to the winners, not to the limit. It
    /// is exact whenever no claim or release of the voucher is in the middle
    /// of its steps; during a claim it may count the slot a step before the
    /// redemption shows, and a void's slot a step after.
    async fn voucher_of(&self, voucher: Arc<VoucherRow>) -> Result<VoucherStatus> {
        let counts = Self::buckets(&voucher)
            .into_iter()
            .map(|bucket| self.held_in(bucket));
        let mut redeemed: u32 = 0;
        for count in join_all(counts).await {
            redeemed = redeemed.saturating_add(count?);
        }
        Ok(VoucherStatus {
            voucher: voucher.voucher.clone(),
            redeemed,
        })
    }

    /// Slots held in one bucket, read a page at a time.
    async fn held_in(&self, bucket: Partition) -> Result<u32> {
        let mut held = 0u32;
        let mut from = Bound::Unbounded;
        loop {
            let scan = Scan {
                from: from.clone(),
                to: Bound::Unbounded,
                descending: false,
                limit: COUNT_PAGE,
            };
            let rows = self.store.scan(bucket.clone(), scan).await?.rows;
            for (_, row) in &rows {
                if SlotState::read(Some(row))?.holder.is_some() {
                    held += 1;
                }
            }
            match rows.last() {
                Some((last, _)) if rows.len() == COUNT_PAGE => from = Bound::Excluded(last.clone()),
                _ => return Ok(held),
            }
        }
    }

    pub(super) async fn voucher_status(&self, code: &VoucherCode) -> Result<Option<VoucherStatus>> {
        match self.voucher_row(code).await? {
            Some(voucher) => self.voucher_of(voucher).await.map(Some),
            None => Ok(None),
        }
    }

    pub(super) async fn all_vouchers(&self) -> Result<Vec<VoucherStatus>> {
        let everything = Scan {
            from: Bound::Unbounded,
            to: Bound::Unbounded,
            descending: false,
            limit: usize::MAX,
        };
        let slice = self.store.scan(catalog(), everything).await?;
        let mut all = Vec::new();
        for (key, row) in slice.rows {
            let [Value::Text(code)] = key.as_slice() else {
                return Err(Error::storage(format!("a voucher key {key:?}")));
            };
            let code = VoucherCode::parse(code).map_err(Error::storage)?;
            let voucher = Arc::new(VoucherRow::from_row(code, &row)?);
            all.push(self.voucher_of(voucher).await?);
        }
        Ok(all)
    }

    pub(super) async fn redemption(
        &self,
        code: &VoucherCode,
        phone: PhoneNumber,
    ) -> Result<Option<Redemption>> {
        let id = voucherd_core::domain::redemption_id(code, phone);
        let row = self.key_row(id, false).await?;
        let found = redemption_of(id, &KeyState::read(row.as_ref())?)?;
        // An all-in-one ledger voids a claim only when its credit is refused:
        // to its readers, that claim never happened.
        let hidden = |r: &Redemption| H::CLAIM_CARRIES_CREDIT && r.status == RedemptionStatus::Void;
        Ok(found.filter(|r| !hidden(r)))
    }

    /// The report entries of `rows` (slot rows): the slots whose holder's
    /// key holds the redemption that attempt made.
    async fn finished(&self, rows: Vec<(Clustering, Row)>) -> Result<Vec<ReportEntry>> {
        let mut held = Vec::new();
        for (key, row) in rows {
            let state = SlotState::read(Some(&row))?;
            if let Some(holder) = state.holder {
                held.push((slot_number(&key)?, holder));
            }
        }
        let keys = join_all(held.iter().map(|(_, h)| self.store.read(key_of(h.id)))).await;
        let mut entries = Vec::new();
        for ((slot, holder), current) in held.into_iter().zip(keys) {
            let key = KeyState::read(current?.rows.values().next())?;
            let Some(made) = key.committed_by(holder.attempt) else {
                continue;
            };
            if made.status != RedemptionStatus::Void && made.slot == slot {
                entries.push(ReportEntry {
                    slot,
                    phone: key.phone()?,
                    redeemed_at: made.claimed_at,
                    status: made.status,
                });
            }
        }
        Ok(entries)
    }

    /// Up to `want` finished redemptions of the voucher after slot `after`.
    async fn entries(
        &self,
        voucher: &VoucherRow,
        after: Bound<Clustering>,
        want: usize,
    ) -> Result<Vec<ReportEntry>> {
        let mut merge = Self::held_slots(voucher, after);
        let mut entries = Vec::new();
        while entries.len() < want {
            let rows = merge.take(&self.store, PAGE).await?;
            let exhausted = rows.len() < PAGE;
            entries.extend(self.finished(rows).await?);
            if exhausted {
                break;
            }
        }
        entries.truncate(want);
        Ok(entries)
    }

    pub(super) async fn report(
        &self,
        code: &VoucherCode,
        page: PageRequest,
    ) -> Result<Page<ReportEntry>> {
        let Some(voucher) = self.voucher_row(code).await? else {
            return Ok(Page {
                items: Vec::new(),
                next_cursor: None,
            });
        };
        let after = match page.cursor {
            Some(slot) => {
                Bound::Excluded(vec![Value::Int(i64::try_from(slot).unwrap_or(i64::MAX))])
            }
            None => Bound::Unbounded,
        };
        let (offset, limit) = (page.offset as usize, page.limit as usize);
        let mut items = self.entries(&voucher, after, offset + limit + 1).await?;
        let items: Vec<ReportEntry> = items.drain(offset.min(items.len())..).collect();
        let more = items.len() > limit;
        let items: Vec<ReportEntry> = items.into_iter().take(limit).collect();
        let next_cursor = more
            .then(|| items.last().map(|e| u64::from(e.slot)))
            .flatten();
        Ok(Page { items, next_cursor })
    }

    pub(super) async fn winners(&self, code: &VoucherCode) -> Result<Vec<PhoneNumber>> {
        let Some(voucher) = self.voucher_row(code).await? else {
            return Ok(Vec::new());
        };
        let entries = self.entries(&voucher, Bound::Unbounded, usize::MAX).await?;
        Ok(entries.into_iter().map(|e| e.phone).collect())
    }

    pub(super) async fn slot_usage(&self, code: &VoucherCode) -> Result<SlotUsage> {
        let mut usage = SlotUsage::default();
        let Some(voucher) = self.voucher_row(code).await? else {
            return Ok(usage);
        };
        let mut merge = Self::held_slots(&voucher, Bound::Unbounded);
        let mut next_expected = 1u32;
        while let Some((key, row)) = merge.next(&self.store).await? {
            if SlotState::read(Some(&row))?.holder.is_none() {
                continue;
            }
            let slot = slot_number(&key)?;
            usage.gaps.extend(next_expected..slot);
            next_expected = slot + 1;
            usage.taken += 1;
        }
        usage.highest_taken = next_expected - 1;
        Ok(usage)
    }

    /// The claim log, oldest first, up to entries logged before `before`.
    pub(super) fn log_since(&self, before: Timestamp) -> Merge {
        let to = Bound::Excluded(vec![Value::Int(before.0)]);
        Merge::new(self.log_shards(), Bound::Unbounded, to)
    }

    pub(super) async fn pending(
        &self,
        claimed_before: Timestamp,
        limit: usize,
    ) -> Result<Vec<Redemption>> {
        let mut merge = self.log_since(claimed_before);
        let mut found = Vec::new();
        let mut seen = BTreeSet::new();
        while found.len() < limit {
            let rows = merge.take(&self.store, PAGE).await?;
            let exhausted = rows.len() < PAGE;
            for redemption in self.pending_of(rows).await? {
                if found.len() < limit && seen.insert(redemption.id) {
                    found.push(redemption);
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(found)
    }

    /// The pending redemptions log rows name (by the attempt that made them).
    async fn pending_of(&self, rows: Vec<(Clustering, Row)>) -> Result<Vec<Redemption>> {
        let entries: Vec<LogEntry> = (rows.iter())
            .map(|(key, values)| LogEntry::read(key, values))
            .collect::<Result<_>>()?;
        let keys = join_all(entries.iter().map(|e| self.store.read(key_of(e.id)))).await;
        let mut pending = Vec::new();
        for (entry, current) in entries.iter().zip(keys) {
            let key = KeyState::read(current?.rows.values().next())?;
            let made = key.committed_by(entry.attempt);
            if made.is_some_and(|c| c.status == RedemptionStatus::Pending) {
                pending.extend(redemption_of(entry.id, &key)?);
            }
        }
        Ok(pending)
    }
}
