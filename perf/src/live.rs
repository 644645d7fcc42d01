//! A coarse latency histogram a job updates and the main thread reads while the run goes on,
//! for the p99 of the live line each second.
//!
//! 512 log-linear buckets (8 per power of two: at most 12.5% wide) of relaxed atomic counters.
//! The job is the only writer, so recording is a load and a store, no read-modify-write; the
//! reader takes snapshots and subtracts the previous one to get the last interval.

use std::sync::atomic::{AtomicU64, Ordering};

const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Number of buckets.
pub const BUCKETS: usize = 64 * SUB;

/// The bucket of a value in nanoseconds.
#[inline]
pub fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros();
    let mantissa = ((ns >> (e - SUB_BITS)) as usize) & (SUB - 1);
    ((e - SUB_BITS + 1) as usize) * SUB + mantissa
}

/// The largest value that falls in bucket `i`.
pub fn bucket_high(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let e = (i / SUB) as u32 + SUB_BITS - 1;
    let m = (i % SUB) as u64;
    let low = (SUB as u64 + m) << (e - SUB_BITS);
    low.saturating_add((1u64 << (e - SUB_BITS)) - 1)
}

/// The live histogram of one job.
#[derive(Debug)]
pub struct LiveHistogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for LiveHistogram {
    fn default() -> Self {
        LiveHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LiveHistogram {
    /// Records one latency. Only one thread may record into a histogram.
    #[inline]
    pub fn record(&self, ns: u64) {
        if let Some(b) = self.buckets.get(bucket_of(ns)) {
            b.store(b.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        }
    }

    /// Adds the current counts to `into` (which has [`BUCKETS`] entries).
    pub fn add_to(&self, into: &mut [u64]) {
        for (d, b) in into.iter_mut().zip(self.buckets.iter()) {
            *d = d.wrapping_add(b.load(Ordering::Relaxed));
        }
    }
}

/// The value at quantile `q` of the interval between two snapshots (`now - before`), in
/// nanoseconds (the top of its bucket), or `None` if nothing was recorded.
pub fn quantile_between(now: &[u64], before: &[u64], q: f64) -> Option<u64> {
    let delta = |i: usize| {
        now.get(i)
            .copied()
            .unwrap_or(0)
            .wrapping_sub(before.get(i).copied().unwrap_or(0))
    };
    let total: u64 = (0..BUCKETS).map(delta).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for i in 0..BUCKETS {
        seen += delta(i);
        if seen >= rank {
            return Some(bucket_high(i));
        }
    }
    Some(bucket_high(BUCKETS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_narrow() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(7), 7);
        assert_eq!(bucket_of(8), 8);
        assert_eq!(bucket_of(15), 15);
        assert_eq!(bucket_of(16), 16);
        assert_eq!(bucket_of(17), 16);
        assert_eq!(bucket_of(18), 17);
        assert!(bucket_of(u64::MAX) < BUCKETS);
        let mut prev = 0;
        for v in [1u64, 9, 100, 1000, 12_345, 1 << 20, 1 << 40, u64::MAX] {
            let b = bucket_of(v);
            assert!(b >= prev);
            prev = b;
            let high = bucket_high(b);
            assert!(high >= v, "{v} above its bucket's top {high}");
            assert!(high - v <= v / 8, "bucket of {v} too wide ({high})");
        }
    }

    #[test]
    fn quantiles_of_an_interval() {
        let h = LiveHistogram::default();
        for _ in 0..99 {
            h.record(1000);
        }
        let mut before = vec![0u64; BUCKETS];
        h.add_to(&mut before);
        for _ in 0..990 {
            h.record(10_000);
        }
        for _ in 0..10 {
            h.record(1_000_000);
        }
        let mut now = vec![0u64; BUCKETS];
        h.add_to(&mut now);
        let p50 = quantile_between(&now, &before, 0.5).unwrap();
        assert!((10_000..=11_250).contains(&p50), "{p50}");
        let p99 = quantile_between(&now, &before, 0.99).unwrap();
        assert!((10_000..=11_250).contains(&p99), "{p99}");
        let p999 = quantile_between(&now, &before, 0.999).unwrap();
        assert!((1_000_000..=1_125_000).contains(&p999), "{p999}");
        assert_eq!(quantile_between(&now, &now, 0.99), None);
    }
}
