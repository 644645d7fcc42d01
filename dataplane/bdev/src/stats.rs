//! Per-bdev I/O statistics that the hot path keeps without locks or allocation.
//!
//! Every [`crate::BdevChannel`] owns an `Arc` of one cache-line-aligned [`IoCounters`] block.
//! Only the channel's thread writes it, so each update is a relaxed load and store (no locked
//! read-modify-write); any thread may read it. The block is registered with the bdev's
//! [`BdevIoStats`] when the channel is created (control path: a mutex is fine there), and the
//! bdev's totals are the sum of its live blocks plus what channels that closed had counted.
//!
//! Latency is measured from the tick at which the channel accepted a request to the tick at
//! which it handed the completion back, converted to nanoseconds with a fixed-point factor
//! computed once per channel, and counted in power-of-two buckets: bucket `i` holds latencies
//! in `[2^(i-1), 2^i)` ns (bucket 0 holds 0 ns), the last bucket everything longer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use gyre_reactor::clock::ticks_per_sec;

use crate::io::IoOp;

/// Number of latency buckets: up to 2^38 ns (about 275 s) in its own bucket, longer in the last.
pub const LATENCY_BUCKETS: usize = 40;

/// The kinds of I/O counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Read = 0,
    Write = 1,
    /// Flush, write-zeroes, unmap, reset, compare.
    Other = 2,
}

impl OpKind {
    pub const ALL: [OpKind; 3] = [OpKind::Read, OpKind::Write, OpKind::Other];

    pub fn of(op: IoOp) -> OpKind {
        match op {
            IoOp::Read => OpKind::Read,
            IoOp::Write => OpKind::Write,
            _ => OpKind::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Other => "other",
        }
    }
}

/// The inclusive upper bound, in nanoseconds, of latency bucket `i` (`None` for the last,
/// unbounded one).
pub fn latency_bucket_upper_ns(i: usize) -> Option<u64> {
    if i + 1 >= LATENCY_BUCKETS {
        None
    } else {
        Some((1u64 << i).saturating_sub(1))
    }
}

/// The bucket a latency of `ns` nanoseconds falls in.
#[inline]
pub fn latency_bucket(ns: u64) -> usize {
    ((u64::BITS - ns.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1)
}

#[repr(align(64))]
struct KindCounters {
    ops: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    latency_sum_ns: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for KindCounters {
    fn default() -> Self {
        KindCounters {
            ops: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency_sum_ns: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// One channel's counters. Written by the owning thread only; read by anyone.
#[derive(Default)]
#[repr(align(64))]
pub struct IoCounters {
    kinds: [KindCounters; 3],
}

#[inline]
fn bump(c: &AtomicU64, by: u64) {
    // Single writer: a relaxed load and store is exact and needs no locked instruction.
    c.store(
        c.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

impl IoCounters {
    /// Counts a successful request of `bytes` bytes that took `latency_ns`.
    #[inline]
    pub fn record_ok(&self, kind: OpKind, bytes: u64, latency_ns: u64) {
        let k = &self.kinds[kind as usize];
        bump(&k.ops, 1);
        bump(&k.bytes, bytes);
        bump(&k.latency_sum_ns, latency_ns);
        bump(&k.latency[latency_bucket(latency_ns)], 1);
    }

    /// Counts a failed request.
    #[inline]
    pub fn record_error(&self, kind: OpKind) {
        bump(&self.kinds[kind as usize].errors, 1);
    }

    /// A copy of the counts so far.
    pub fn snapshot(&self) -> IoStatsSnapshot {
        let mut s = IoStatsSnapshot::default();
        s.add_counters(self);
        s
    }
}

/// Counts of one kind of I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindStats {
    /// Requests that completed successfully.
    pub ops: u64,
    /// Bytes they moved (data ops only: read and write).
    pub bytes: u64,
    /// Requests that completed with an error.
    pub errors: u64,
    /// Sum of the latencies of the successful requests.
    pub latency_sum_ns: u64,
    /// Successful requests per latency bucket (see [`latency_bucket_upper_ns`]).
    pub latency_buckets: [u64; LATENCY_BUCKETS],
}

impl Default for KindStats {
    fn default() -> Self {
        KindStats {
            ops: 0,
            bytes: 0,
            errors: 0,
            latency_sum_ns: 0,
            latency_buckets: [0; LATENCY_BUCKETS],
        }
    }
}

impl KindStats {
    fn add(&mut self, o: &KindStats) {
        self.ops += o.ops;
        self.bytes += o.bytes;
        self.errors += o.errors;
        self.latency_sum_ns += o.latency_sum_ns;
        for (a, b) in self
            .latency_buckets
            .iter_mut()
            .zip(o.latency_buckets.iter())
        {
            *a += b;
        }
    }

    /// Mean latency of the successful requests, in nanoseconds.
    pub fn mean_latency_ns(&self) -> u64 {
        self.latency_sum_ns.checked_div(self.ops).unwrap_or(0)
    }
}

/// Statistics of a bdev (or one channel), summed at the time of reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStatsSnapshot {
    pub read: KindStats,
    pub write: KindStats,
    pub other: KindStats,
}

impl IoStatsSnapshot {
    pub fn kind(&self, kind: OpKind) -> &KindStats {
        match kind {
            OpKind::Read => &self.read,
            OpKind::Write => &self.write,
            OpKind::Other => &self.other,
        }
    }

    fn kind_mut(&mut self, kind: OpKind) -> &mut KindStats {
        match kind {
            OpKind::Read => &mut self.read,
            OpKind::Write => &mut self.write,
            OpKind::Other => &mut self.other,
        }
    }

    pub fn add(&mut self, o: &IoStatsSnapshot) {
        for kind in OpKind::ALL {
            self.kind_mut(kind).add(o.kind(kind));
        }
    }

    fn add_counters(&mut self, c: &IoCounters) {
        for kind in OpKind::ALL {
            let src = &c.kinds[kind as usize];
            let dst = self.kind_mut(kind);
            dst.ops += src.ops.load(Ordering::Relaxed);
            dst.bytes += src.bytes.load(Ordering::Relaxed);
            dst.errors += src.errors.load(Ordering::Relaxed);
            dst.latency_sum_ns += src.latency_sum_ns.load(Ordering::Relaxed);
            for (d, s) in dst.latency_buckets.iter_mut().zip(src.latency.iter()) {
                *d += s.load(Ordering::Relaxed);
            }
        }
    }

    /// Errors of all kinds.
    pub fn errors(&self) -> u64 {
        self.read.errors + self.write.errors + self.other.errors
    }
}

#[derive(Default)]
struct StatsList {
    live: Vec<Arc<IoCounters>>,
    retired: IoStatsSnapshot,
}

/// The counters blocks of a bdev's channels. Control path only.
#[derive(Default)]
pub struct BdevIoStats {
    list: Mutex<StatsList>,
}

impl BdevIoStats {
    fn lock(&self) -> MutexGuard<'_, StatsList> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new counters block, counted in this bdev's totals from now on.
    pub fn register(&self) -> Arc<IoCounters> {
        let c = Arc::new(IoCounters::default());
        self.lock().live.push(c.clone());
        c
    }

    /// Folds a closed channel's counts into the totals and forgets its block. The channel must
    /// not count anything after this.
    pub fn retire(&self, counters: &Arc<IoCounters>) {
        let mut l = self.lock();
        if let Some(i) = l.live.iter().position(|c| Arc::ptr_eq(c, counters)) {
            let c = l.live.swap_remove(i);
            l.retired.add_counters(&c);
        }
    }

    /// The bdev's totals: every channel it ever had.
    pub fn snapshot(&self) -> IoStatsSnapshot {
        let l = self.lock();
        let mut s = l.retired;
        for c in &l.live {
            s.add_counters(c);
        }
        s
    }

    /// Channels currently counting.
    pub fn live_channels(&self) -> usize {
        self.lock().live.len()
    }
}

/// Converts tick differences to nanoseconds with one multiply: `ns = ticks * factor >> 32`.
#[derive(Debug, Clone, Copy)]
pub struct TicksToNs {
    factor: u64,
}

impl TicksToNs {
    pub fn new() -> Self {
        let factor = ((1_000_000_000u128 << 32) / ticks_per_sec().max(1) as u128) as u64;
        TicksToNs { factor }
    }

    #[inline]
    pub fn ns(&self, ticks: u64) -> u64 {
        ((ticks as u128 * self.factor as u128) >> 32).min(u64::MAX as u128) as u64
    }
}

impl Default for TicksToNs {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 1);
        assert_eq!(latency_bucket(2), 2);
        assert_eq!(latency_bucket(3), 2);
        assert_eq!(latency_bucket(4), 3);
        assert_eq!(latency_bucket(1023), 10);
        assert_eq!(latency_bucket(1024), 11);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
        // Every bucket's bound holds exactly the values that map to it.
        for i in 0..LATENCY_BUCKETS - 1 {
            let upper = latency_bucket_upper_ns(i).unwrap();
            assert_eq!(latency_bucket(upper), i, "bucket {i}");
            assert_eq!(latency_bucket(upper + 1), i + 1, "bucket {i}");
        }
        assert_eq!(latency_bucket_upper_ns(LATENCY_BUCKETS - 1), None);
    }

    #[test]
    fn counts_and_sums_across_live_and_retired_channels() {
        let stats = BdevIoStats::default();
        let a = stats.register();
        let b = stats.register();
        a.record_ok(OpKind::Read, 4096, 1500);
        a.record_ok(OpKind::Read, 4096, 700);
        b.record_ok(OpKind::Write, 512, 3000);
        b.record_error(OpKind::Write);
        b.record_ok(OpKind::Other, 0, 10);
        stats.retire(&b);
        drop(b);
        a.record_error(OpKind::Other);
        let s = stats.snapshot();
        assert_eq!(stats.live_channels(), 1);
        assert_eq!((s.read.ops, s.read.bytes, s.read.errors), (2, 8192, 0));
        assert_eq!(s.read.latency_sum_ns, 2200);
        assert_eq!(s.read.mean_latency_ns(), 1100);
        assert_eq!(s.read.latency_buckets[11], 1); // 1500 ns: [1024, 2048)
        assert_eq!(s.read.latency_buckets[10], 1); // 700 ns: [512, 1024)
        assert_eq!(s.read.latency_buckets.iter().sum::<u64>(), 2);
        assert_eq!((s.write.ops, s.write.bytes, s.write.errors), (1, 512, 1));
        assert_eq!(s.write.latency_buckets[12], 1); // 3000 ns: [2048, 4096)
        assert_eq!((s.other.ops, s.other.errors), (1, 1));
        assert_eq!(s.errors(), 2);
    }

    #[test]
    fn ticks_convert_to_nanoseconds() {
        let conv = TicksToNs::new();
        let one_sec = ticks_per_sec();
        let ns = conv.ns(one_sec);
        assert!((999_000_000..=1_001_000_000).contains(&ns), "{ns}");
        assert_eq!(conv.ns(0), 0);
    }

    #[test]
    fn counters_block_is_cache_line_aligned() {
        assert_eq!(std::mem::align_of::<IoCounters>(), 64);
        let c = IoCounters::default();
        assert_eq!(&c as *const _ as usize % 64, 0);
    }

    #[test]
    fn channels_count_real_io_into_the_bdev_totals() {
        use crate::{BdevRegistry, IoOp, IoRequest, MallocBdev};
        use gyre_reactor::{BufferPool, ClassConfig, PoolConfig};

        let pool = BufferPool::new(&PoolConfig {
            classes: vec![ClassConfig {
                size: 4096,
                count: 8,
            }],
            prefer_hugepages: false,
        })
        .unwrap();
        let cache = pool.local();
        let reg = BdevRegistry::new();
        reg.register(MallocBdev::create("m", 1 << 20, 512).unwrap())
            .unwrap();
        let desc = reg.open("m", true, "stats test", None).unwrap();
        let bdev = desc.bdev().clone();
        let run = |ch: &mut crate::BdevChannel, req: IoRequest| {
            ch.submit(req);
            let mut got = None;
            while got.is_none() {
                ch.poll(|c| got = Some(c));
            }
            got.unwrap()
        };
        let mut ch = desc.channel().unwrap();
        for i in 0..3 {
            let buf = cache.try_alloc(4096).unwrap();
            let c = run(&mut ch, IoRequest::new(IoOp::Write, i * 8, 8, buf, i));
            assert_eq!(c.status, Ok(()));
        }
        let buf = cache.try_alloc(4096).unwrap();
        assert_eq!(
            run(&mut ch, IoRequest::new(IoOp::Read, 0, 2, buf, 9)).status,
            Ok(())
        );
        // Out of range: rejected by the channel, counted as a read error.
        let buf = cache.try_alloc(4096).unwrap();
        assert!(run(&mut ch, IoRequest::new(IoOp::Read, 4096, 1, buf, 10))
            .status
            .is_err());
        assert_eq!(
            run(&mut ch, IoRequest::control(IoOp::Flush, 0, 0, 11)).status,
            Ok(())
        );
        let per_channel = ch.stats();
        assert_eq!((per_channel.writes, per_channel.write_bytes), (3, 3 * 4096));
        assert_eq!((per_channel.reads, per_channel.read_bytes), (1, 1024));
        assert_eq!((per_channel.other_ops, per_channel.errors), (1, 1));

        // A second channel counts into the same totals; closing one keeps its counts.
        let mut ch2 = desc.channel().unwrap();
        let buf = cache.try_alloc(4096).unwrap();
        assert_eq!(
            run(&mut ch2, IoRequest::new(IoOp::Read, 8, 8, buf, 12)).status,
            Ok(())
        );
        drop(ch);
        let s = bdev.info().io_stats();
        assert_eq!((s.write.ops, s.write.bytes, s.write.errors), (3, 12288, 0));
        assert_eq!(
            (s.read.ops, s.read.bytes, s.read.errors),
            (2, 1024 + 4096, 1)
        );
        assert_eq!((s.other.ops, s.other.bytes), (1, 0));
        assert_eq!(s.write.latency_buckets.iter().sum::<u64>(), 3);
        assert_eq!(s.read.latency_buckets.iter().sum::<u64>(), 2);
        assert!(s.write.latency_sum_ns > 0);
        drop(ch2);
        assert_eq!(bdev.info().io_stats(), s);
    }
}
