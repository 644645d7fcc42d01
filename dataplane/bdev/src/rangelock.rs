//! The bdev-wide range lock for atomic read-modify-write commands.
//!
//! SCSI COMPARE AND WRITE (and ORWRITE) and NVMe fused Compare-and-Write read, compare and
//! write a range as one atomic step, so no other write to that range may land in between,
//! wherever it comes from: another channel, another reactor, another protocol. That is why
//! the lock lives with the bdev ([`crate::BdevInfo::range_lock`]) and every consumer that
//! writes gates its writes through it. Ordinary writes
//! must not pay for this: they take no lock and touch no shared cache line.
//!
//! How: each channel owns a [`WriteGate`] with two counters only its reactor writes
//! (`started`, `finished`). A write bumps `started` and then reads the LUN-wide count of
//! atomic operations in flight (`active`). Zero — the common case — means go. Non-zero means
//! the write looks at the shared table of locked ranges (under a mutex, rare) and waits if it
//! overlaps one. An atomic operation first publishes its range in the table and bumps
//! `active`, then snapshots every gate's `started` and waits until each `finished` reaches
//! its snapshot: every write that may have missed the lock has then completed. Both sides
//! use sequentially consistent operations (store then load, Dekker style), so a write either
//! sees `active != 0` or is counted in the snapshot. Atomic operations on overlapping ranges
//! exclude each other through the table.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Per-channel write counters (written only by the owning reactor).
#[derive(Debug, Default)]
pub struct WriteGate {
    started: AtomicU64,
    finished: AtomicU64,
}

impl WriteGate {
    /// A write is about to be checked and submitted.
    #[inline]
    pub fn begin(&self) {
        let n = self.started.load(Ordering::Relaxed);
        self.started.store(n + 1, Ordering::SeqCst);
    }

    /// A write counted by `begin` has completed (or was deferred without being submitted).
    #[inline]
    pub fn end(&self) {
        let n = self.finished.load(Ordering::Relaxed);
        self.finished.store(n + 1, Ordering::Release);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Locked {
    id: u64,
    lba: u64,
    blocks: u64,
}

#[derive(Default)]
struct Table {
    ranges: Vec<Locked>,
    gates: Vec<Arc<WriteGate>>,
    next_id: u64,
}

/// The LUN-wide part: count of atomic operations in flight, the locked ranges and the gates.
#[derive(Default)]
pub struct RangeLock {
    active: AtomicUsize,
    table: Mutex<Table>,
}

fn overlaps(a_lba: u64, a_blocks: u64, b: &Locked) -> bool {
    let a_end = a_lba.saturating_add(a_blocks.max(1));
    let b_end = b.lba.saturating_add(b.blocks.max(1));
    a_lba < b_end && b.lba < a_end
}

/// A held range plus what its holder still waits for before it may read.
#[derive(Debug, Default)]
pub struct RangeGuard {
    id: u64,
    /// (gate, started count at the snapshot) for gates not yet drained.
    pending: Vec<(Arc<WriteGate>, u64)>,
}

impl RangeLock {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A gate for a new channel.
    pub fn new_gate(&self) -> Arc<WriteGate> {
        let g = Arc::new(WriteGate::default());
        let mut t = self.lock();
        t.gates.retain(|g| Arc::strong_count(g) > 1);
        t.gates.push(g.clone());
        g
    }

    /// Whether a write of `[lba, lba+blocks)` may go now. Call after `gate.begin()`.
    #[inline]
    pub fn write_may_proceed(&self, lba: u64, blocks: u64) -> bool {
        if self.active.load(Ordering::SeqCst) == 0 {
            return true;
        }
        let t = self.lock();
        !t.ranges.iter().any(|r| overlaps(lba, blocks, r))
    }

    /// Tries to lock `[lba, lba+blocks)` for an atomic operation. `None`: an overlapping
    /// atomic operation holds it; retry later. On success the caller must wait until
    /// [`RangeLock::drained`] before reading.
    pub fn try_acquire(&self, lba: u64, blocks: u64) -> Option<RangeGuard> {
        let mut t = self.lock();
        if t.ranges.iter().any(|r| overlaps(lba, blocks, r)) {
            return None;
        }
        t.next_id += 1;
        let id = t.next_id;
        t.ranges.push(Locked { id, lba, blocks });
        self.active.fetch_add(1, Ordering::SeqCst);
        let pending = t
            .gates
            .iter()
            .filter_map(|g| {
                let s = g.started.load(Ordering::SeqCst);
                (g.finished.load(Ordering::Acquire) < s).then(|| (g.clone(), s))
            })
            .collect();
        Some(RangeGuard { id, pending })
    }

    /// True once every write that might have missed the lock has finished.
    pub fn drained(&self, guard: &mut RangeGuard) -> bool {
        if guard.pending.is_empty() {
            return true;
        }
        guard
            .pending
            .retain(|(g, s)| g.finished.load(Ordering::Acquire) < *s);
        guard.pending.is_empty()
    }

    /// Releases a range.
    pub fn release(&self, guard: RangeGuard) {
        let mut t = self.lock();
        let before = t.ranges.len();
        t.ranges.retain(|r| r.id != guard.id);
        if t.ranges.len() < before {
            self.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_go_freely_without_atomic_ops() {
        let l = RangeLock::default();
        let g = l.new_gate();
        g.begin();
        assert!(l.write_may_proceed(0, 8));
        g.end();
    }

    #[test]
    fn overlapping_writes_wait_and_atomic_waits_for_drain() {
        let l = RangeLock::default();
        let g = l.new_gate();
        // A write in flight before the lock.
        g.begin();
        assert!(l.write_may_proceed(10, 1));
        let mut guard = l.try_acquire(8, 4).unwrap();
        assert!(!l.drained(&mut guard));
        g.end();
        assert!(l.drained(&mut guard));
        // New overlapping writes are held back, others pass.
        assert!(!l.write_may_proceed(11, 1));
        assert!(l.write_may_proceed(12, 4));
        assert!(l.try_acquire(0, 9).is_none());
        l.release(guard);
        assert!(l.write_may_proceed(11, 1));
        assert!(l.try_acquire(0, 9).is_some());
    }
}
