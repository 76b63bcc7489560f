//! A set of slot numbers held as ranges: what a lease hands out, what a voucher
//! shard keeps, and what goes back to a source.
//!
//! A lease is usually one run of consecutive slots (a source hands fresh slots in
//! order), so a batch of thousands of slots costs a few words instead of four
//! bytes per slot. Invariant: the ranges are sorted, disjoint and never adjacent
//! (touching ranges are coalesced), and `len` is the number of slots in them.

use std::collections::VecDeque;
use std::ops::RangeInclusive;

/// Slot numbers as sorted, coalesced inclusive ranges; handed out lowest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotBatch {
    /// (first, last) of each range, ascending; no two overlap or touch.
    ranges: VecDeque<(u32, u32)>,
    /// Slots in all ranges (u64: a range may span all of u32).
    len: u64,
}

fn range_len(first: u32, last: u32) -> u64 {
    u64::from(last) - u64::from(first) + 1
}

impl SlotBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// The slots `first..=last`; empty when `first > last`.
    pub fn from_range(first: u32, last: u32) -> Self {
        let mut batch = Self::new();
        batch.insert_range(first, last);
        batch
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of ranges the slots form (what the batch costs in memory).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// The lowest slot.
    pub fn first(&self) -> Option<u32> {
        self.ranges.front().map(|&(first, _)| first)
    }

    /// The highest slot.
    pub fn last(&self) -> Option<u32> {
        self.ranges.back().map(|&(_, last)| last)
    }

    pub fn contains(&self, slot: u32) -> bool {
        let index = self.ranges.partition_point(|&(_, last)| last < slot);
        self.ranges
            .get(index)
            .is_some_and(|&(first, _)| first <= slot)
    }

    /// Takes the lowest slot out.
    pub fn pop_lowest(&mut self) -> Option<u32> {
        let front = self.ranges.front_mut()?;
        let slot = front.0;
        if front.0 == front.1 {
            self.ranges.pop_front();
        } else {
            front.0 += 1;
        }
        self.len -= 1;
        Some(slot)
    }

    /// Takes out up to `count` of the lowest slots, as a batch of their own.
    pub fn take_lowest(&mut self, count: usize) -> SlotBatch {
        let mut taken = SlotBatch::new();
        let mut wanted = count as u64;
        while wanted > 0 {
            let Some(front) = self.ranges.front_mut() else {
                break;
            };
            let (first, last) = *front;
            let size = range_len(first, last);
            if size <= wanted {
                self.ranges.pop_front();
                taken.ranges.push_back((first, last));
                taken.len += size;
                self.len -= size;
                wanted -= size;
            } else {
                // wanted < size <= 2^32, so the split point fits a u32.
                let split = first + (wanted as u32);
                front.0 = split;
                taken.ranges.push_back((first, split - 1));
                taken.len += wanted;
                self.len -= wanted;
                wanted = 0;
            }
        }
        taken
    }

    /// Adds one slot; false if it was already in the batch.
    pub fn insert(&mut self, slot: u32) -> bool {
        self.insert_range(slot, slot) == 1
    }

    /// Adds the slots `first..=last` (none when `first > last`); returns how many
    /// were not in the batch yet.
    pub fn insert_range(&mut self, first: u32, last: u32) -> u64 {
        if first > last {
            return 0;
        }
        // Ranges that overlap or touch the new one form the run start..end.
        let start = self
            .ranges
            .partition_point(|&(_, l)| u64::from(l) + 1 < u64::from(first));
        let end = self
            .ranges
            .partition_point(|&(f, _)| u64::from(f) <= u64::from(last) + 1);
        if start == end {
            self.ranges.insert(start, (first, last));
            let added = range_len(first, last);
            self.len += added;
            return added;
        }
        let covered: u64 = self
            .ranges
            .range(start..end)
            .map(|&(f, l)| range_len(f, l))
            .sum();
        let merged = (
            first.min(self.ranges[start].0),
            last.max(self.ranges[end - 1].1),
        );
        self.ranges.drain(start + 1..end);
        self.ranges[start] = merged;
        let added = range_len(merged.0, merged.1) - covered;
        self.len += added;
        added
    }

    /// Takes the slots `first..=last` out (none when `first > last`); returns how
    /// many were in the batch.
    pub fn remove_range(&mut self, first: u32, last: u32) -> u64 {
        if first > last {
            return 0;
        }
        // Ranges that overlap first..=last form the run start..end.
        let start = self.ranges.partition_point(|&(_, l)| l < first);
        let end = self.ranges.partition_point(|&(f, _)| f <= last);
        if start == end {
            return 0;
        }
        let (head, tail) = (self.ranges[start].0, self.ranges[end - 1].1);
        let removed: u64 = self
            .ranges
            .drain(start..end)
            .map(|(f, l)| range_len(f.max(first), l.min(last)))
            .sum();
        // What of the run lies outside first..=last stays.
        let mut at = start;
        if head < first {
            self.ranges.insert(at, (head, first - 1));
            at += 1;
        }
        if tail > last {
            self.ranges.insert(at, (last + 1, tail));
        }
        self.len -= removed;
        removed
    }

    /// Takes every slot of `other` out.
    pub fn remove_all(&mut self, other: &SlotBatch) {
        for (first, last) in &other.ranges {
            self.remove_range(*first, *last);
        }
    }

    /// Adds every slot of `other`.
    pub fn append(&mut self, other: SlotBatch) {
        for (first, last) in other.ranges {
            self.insert_range(first, last);
        }
    }

    /// The ranges, lowest first.
    pub fn ranges(&self) -> impl Iterator<Item = RangeInclusive<u32>> + '_ {
        self.ranges.iter().map(|&(first, last)| first..=last)
    }

    /// Every slot, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ranges().flatten()
    }
}

impl FromIterator<u32> for SlotBatch {
    /// Builds a batch from slots in any order; duplicates count once.
    fn from_iter<I: IntoIterator<Item = u32>>(slots: I) -> Self {
        let mut sorted: Vec<u32> = slots.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut batch = SlotBatch::new();
        for slot in sorted {
            match batch.ranges.back_mut() {
                Some(back) if u64::from(back.1) + 1 == u64::from(slot) => back.1 = slot,
                _ => batch.ranges.push_back((slot, slot)),
            }
            batch.len += 1;
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(batch: &SlotBatch) -> Vec<(u32, u32)> {
        batch.ranges().map(|r| (*r.start(), *r.end())).collect()
    }

    #[test]
    fn slots_go_out_lowest_first() {
        let mut batch: SlotBatch = [7, 3, 4, 5, 1].into_iter().collect();
        assert_eq!(ranges(&batch), vec![(1, 1), (3, 5), (7, 7)]);
        assert_eq!(batch.len(), 5);
        let order: Vec<u32> = std::iter::from_fn(|| batch.pop_lowest()).collect();
        assert_eq!(order, vec![1, 3, 4, 5, 7]);
        assert!(batch.is_empty());
        assert_eq!(batch.range_count(), 0);
    }

    #[test]
    fn inserted_slots_coalesce_with_their_neighbours() {
        let mut batch = SlotBatch::from_range(10, 12);
        assert!(batch.insert(14));
        assert_eq!(ranges(&batch), vec![(10, 12), (14, 14)]);
        assert!(batch.insert(13));
        assert_eq!(ranges(&batch), vec![(10, 14)]);
        assert!(!batch.insert(11), "a slot already held is not added twice");
        assert_eq!(batch.insert_range(1, 20), 15);
        assert_eq!(ranges(&batch), vec![(1, 20)]);
        assert_eq!(batch.len(), 20);
        assert_eq!(batch.insert_range(30, 40), 11);
        assert_eq!(batch.insert_range(22, 28), 7);
        assert_eq!(ranges(&batch), vec![(1, 20), (22, 28), (30, 40)]);
        assert_eq!(batch.insert_range(21, 29), 2);
        assert_eq!(ranges(&batch), vec![(1, 40)]);
        assert_eq!(batch.len(), 40);
    }

    #[test]
    fn taking_the_lowest_splits_a_range() {
        let mut batch: SlotBatch = [1, 2, 3, 10, 11, 12, 13].into_iter().collect();
        let taken = batch.take_lowest(5);
        assert_eq!(ranges(&taken), vec![(1, 3), (10, 11)]);
        assert_eq!(taken.len(), 5);
        assert_eq!(ranges(&batch), vec![(12, 13)]);
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.take_lowest(10).len(), 2);
        assert!(batch.is_empty());
    }

    #[test]
    fn a_large_run_costs_one_range() {
        let batch = SlotBatch::from_range(1, 10_000_000);
        assert_eq!(batch.len(), 10_000_000);
        assert_eq!(batch.range_count(), 1);
        assert!(batch.contains(1) && batch.contains(10_000_000));
        assert!(!batch.contains(0) && !batch.contains(10_000_001));
        let extremes = SlotBatch::from_range(0, u32::MAX);
        assert_eq!(extremes.len() as u64, 1 << 32);
    }

    #[test]
    fn removing_splits_and_drops_ranges() {
        let mut batch: SlotBatch = [1, 2, 3, 4, 5, 8, 9, 12].into_iter().collect();
        assert_eq!(batch.remove_range(3, 8), 4);
        assert_eq!(ranges(&batch), vec![(1, 2), (9, 9), (12, 12)]);
        assert_eq!(batch.len(), 4);
        assert_eq!(batch.remove_range(20, 30), 0);
        assert_eq!(batch.remove_range(10, 11), 0);
        batch.remove_all(&[1, 12].into_iter().collect());
        assert_eq!(ranges(&batch), vec![(2, 2), (9, 9)]);
        let mut big = SlotBatch::from_range(1, 1_000_000);
        assert_eq!(big.remove_range(500_000, 500_000), 1);
        assert_eq!(ranges(&big), vec![(1, 499_999), (500_001, 1_000_000)]);
        assert_eq!(big.len(), 999_999);
        assert_eq!(big.remove_range(0, u32::MAX), 999_999);
        assert!(big.is_empty() && big.range_count() == 0);
    }

    #[test]
    fn append_is_a_union() {
        let mut batch: SlotBatch = [1, 2, 5].into_iter().collect();
        batch.append([2, 3, 9].into_iter().collect());
        assert_eq!(batch.iter().collect::<Vec<_>>(), vec![1, 2, 3, 5, 9]);
        assert_eq!(batch.len(), 5);
    }
}
