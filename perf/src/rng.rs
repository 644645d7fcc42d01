//! The fast, inline pseudo-random numbers and I/O offsets of a job.
//!
//! Nothing here allocates or branches unpredictably: a random offset costs one wyrand step and
//! one 64×64→128 multiply (Lemire's range reduction, no division); a sequential one an add and
//! a compare.

/// wyrand: a 64-bit generator with one word of state; good statistical quality for load
/// generation, a handful of cycles per number. Not for cryptography.
#[derive(Debug, Clone)]
pub struct WyRand {
    state: u64,
}

impl WyRand {
    pub fn new(seed: u64) -> Self {
        WyRand { state: seed }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let t = (self.state as u128).wrapping_mul((self.state ^ 0xe703_7ed1_a0b4_28db) as u128);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// A number in `[0, n)` (`n > 0`), by multiply-high range reduction.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// True with probability `pct`/100 (`pct` in 0..=100).
    #[inline]
    pub fn percent(&mut self, pct: u8) -> bool {
        self.below(100) < pct as u64
    }
}

/// splitmix64's finaliser: spreads a seed and a job index into independent generator seeds.
pub fn mix_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Why a region cannot be walked with a given I/O size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetError {
    ZeroIoSize,
    RegionTooSmall { region_len: u64, io_size: u64 },
    Overflow,
}

impl std::error::Error for OffsetError {}

impl std::fmt::Display for OffsetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OffsetError::ZeroIoSize => f.write_str("the I/O size is zero"),
            OffsetError::RegionTooSmall {
                region_len,
                io_size,
            } => write!(
                f,
                "the region of {region_len} bytes cannot hold one I/O of {io_size} bytes"
            ),
            OffsetError::Overflow => f.write_str("the region lies beyond 2^64 bytes"),
        }
    }
}

/// Byte offsets of successive I/Os of `io_size` bytes within `[start, start + len)`, each
/// aligned to `io_size` relative to `start`: sequential (wrapping at the end of the region) or
/// uniformly random.
#[derive(Debug, Clone)]
pub struct OffsetGen {
    random: bool,
    rng: WyRand,
    start: u64,
    io_size: u64,
    /// Number of I/O-sized slots in the region.
    slots: u64,
    /// Next slot of a sequential pattern.
    next: u64,
}

impl OffsetGen {
    /// `first_slot` is where a sequential pattern starts (taken modulo the slot count), so
    /// that several jobs on one region do not read the same blocks in lockstep.
    pub fn new(
        random: bool,
        start: u64,
        len: u64,
        io_size: u64,
        first_slot: u64,
        seed: u64,
    ) -> Result<Self, OffsetError> {
        if io_size == 0 {
            return Err(OffsetError::ZeroIoSize);
        }
        let slots = len / io_size;
        if slots == 0 {
            return Err(OffsetError::RegionTooSmall {
                region_len: len,
                io_size,
            });
        }
        if start.checked_add(len).is_none() {
            return Err(OffsetError::Overflow);
        }
        Ok(OffsetGen {
            random,
            rng: WyRand::new(seed),
            start,
            io_size,
            slots,
            next: first_slot % slots,
        })
    }

    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// The byte offset of the next I/O.
    #[inline]
    pub fn next_offset(&mut self) -> u64 {
        let slot = if self.random {
            self.rng.below(self.slots)
        } else {
            let s = self.next;
            self.next += 1;
            if self.next == self.slots {
                self.next = 0;
            }
            s
        };
        self.start + slot * self.io_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wyrand_is_deterministic_and_spreads() {
        let mut a = WyRand::new(42);
        let mut b = WyRand::new(42);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut c = WyRand::new(43);
        assert_ne!(xs[0], c.next_u64());
        // Every bit position flips at least once in 100 draws.
        let or = xs.iter().fold(0u64, |acc, x| acc | x);
        let and = xs.iter().fold(u64::MAX, |acc, x| acc & x);
        assert_eq!(or, u64::MAX);
        assert_eq!(and, 0);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = WyRand::new(7);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] += 1;
        }
        for (i, &n) in seen.iter().enumerate() {
            assert!((800..1200).contains(&n), "bucket {i} got {n} of 10000");
        }
        assert_eq!(r.below(1), 0);
    }

    #[test]
    fn percent_matches_the_mix() {
        let mut r = WyRand::new(1);
        let reads = (0..100_000).filter(|_| r.percent(70)).count();
        assert!((69_000..71_000).contains(&reads), "{reads}");
        assert!((0..1000).all(|_| !r.percent(0)));
        assert!((0..1000).all(|_| r.percent(100)));
    }

    #[test]
    fn mixed_seeds_differ_per_stream() {
        let s: Vec<u64> = (0..8).map(|i| mix_seed(1, i)).collect();
        for i in 0..s.len() {
            for j in i + 1..s.len() {
                assert_ne!(s[i], s[j]);
            }
        }
    }

    #[test]
    fn random_offsets_are_aligned_and_in_range() {
        for &(start, len, io) in &[
            (0u64, 1u64 << 30, 4096u64),
            (0, 64 << 20, 128 << 10),
            (1 << 20, (10 << 20) + 777, 4096),
            (0, 4096, 4096),
            (512, 3 * 512 + 100, 512),
        ] {
            let mut g = OffsetGen::new(true, start, len, io, 0, 99).unwrap();
            let mut min = u64::MAX;
            let mut max = 0;
            for _ in 0..20_000 {
                let off = g.next_offset();
                assert_eq!((off - start) % io, 0, "offset {off} not aligned to {io}");
                assert!(off >= start, "offset {off} before {start}");
                assert!(
                    off + io <= start + len,
                    "I/O at {off}+{io} past {start}+{len}"
                );
                min = min.min(off);
                max = max.max(off);
            }
            if g.slots() <= 16 {
                assert_eq!(min, start);
                assert_eq!(max, start + (g.slots() - 1) * io);
            }
        }
    }

    #[test]
    fn sequential_offsets_walk_and_wrap() {
        let mut g = OffsetGen::new(false, 0, 4 * 4096 + 100, 4096, 0, 0).unwrap();
        let offs: Vec<u64> = (0..9).map(|_| g.next_offset()).collect();
        assert_eq!(
            offs,
            vec![0, 4096, 8192, 12288, 0, 4096, 8192, 12288, 0],
            "the partial slot at the end is never used"
        );
        let mut g = OffsetGen::new(false, 1 << 20, 3 * 8192, 8192, 5, 0).unwrap();
        let offs: Vec<u64> = (0..4).map(|_| g.next_offset()).collect();
        let b = 1 << 20;
        assert_eq!(offs, vec![b + 2 * 8192, b, b + 8192, b + 2 * 8192]);
    }

    #[test]
    fn rejects_impossible_regions() {
        assert_eq!(
            OffsetGen::new(true, 0, 4096, 0, 0, 0).unwrap_err(),
            OffsetError::ZeroIoSize
        );
        assert!(matches!(
            OffsetGen::new(true, 0, 4095, 4096, 0, 0),
            Err(OffsetError::RegionTooSmall { .. })
        ));
        assert_eq!(
            OffsetGen::new(true, u64::MAX - 10, 4096, 4096, 0, 0).unwrap_err(),
            OffsetError::Overflow
        );
    }
}
