//! What a run does, independent of where the I/O goes: pattern, mix, size, depth, duration.

use std::fmt;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::target::TargetInfo;
use crate::units::format_size;

/// The access pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RwMode {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Random reads and writes, `--mix` percent reads.
    Randrw,
}

impl RwMode {
    pub fn is_random(self) -> bool {
        matches!(self, RwMode::Randread | RwMode::Randwrite | RwMode::Randrw)
    }

    pub fn name(self) -> &'static str {
        match self {
            RwMode::Read => "read",
            RwMode::Write => "write",
            RwMode::Randread => "randread",
            RwMode::Randwrite => "randwrite",
            RwMode::Randrw => "randrw",
        }
    }
}

impl fmt::Display for RwMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// When a run stops submitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// After this long of measured I/O (not counting the ramp).
    Time(Duration),
    /// After this many measured I/Os in total, shared out evenly over the jobs.
    Ios(u64),
}

/// One run's description. A transport turns it into I/Os against its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub rw: RwMode,
    /// Percentage of reads: 100 for read patterns, 0 for write ones, the mix for `randrw`.
    pub read_pct: u8,
    /// Bytes per I/O.
    pub io_size: u64,
    /// I/Os each job keeps in flight.
    pub queue_depth: u32,
    pub limit: Limit,
    /// Warm-up before measuring: I/O submitted in it is not counted.
    pub ramp: Duration,
    pub seed: u64,
    /// Start of the region to use, in bytes (`--offset`).
    pub region_offset: u64,
    /// Length of the region (`--size`); `None`: to the end of the target.
    pub region_size: Option<u64>,
    /// IOPS cap over all jobs (`--rate`).
    pub rate: Option<u64>,
    /// Write blocks that identify themselves and check every read (`--verify`).
    pub verify: bool,
}

/// Largest queue depth per job: far beyond any device's useful depth, small enough that
/// preallocating the slots is cheap.
pub const MAX_QUEUE_DEPTH: u32 = 4096;
/// Largest I/O size (buffers are single pool buffers of at least this size).
pub const MAX_IO_SIZE: u64 = 64 << 20;
/// Seed used when none is given: runs are reproducible by default, as in fio.
pub const DEFAULT_SEED: u64 = 0x6779_7265_7065_7266;

impl Workload {
    pub fn new(
        rw: RwMode,
        mix: Option<u8>,
        io_size: u64,
        queue_depth: u32,
        limit: Limit,
        ramp: Duration,
        seed: Option<u64>,
    ) -> Result<Self> {
        let read_pct = match (rw, mix) {
            (RwMode::Randrw, m) => m.unwrap_or(70),
            (_, Some(_)) => bail!("--mix applies only to --rw randrw"),
            (RwMode::Read | RwMode::Randread, None) => 100,
            (RwMode::Write | RwMode::Randwrite, None) => 0,
        };
        if read_pct > 100 {
            bail!("--mix {read_pct} is not a percentage");
        }
        if io_size == 0 || io_size > MAX_IO_SIZE {
            bail!(
                "--bs {io_size} is out of range (1 byte to {})",
                format_size(MAX_IO_SIZE)
            );
        }
        if queue_depth == 0 || queue_depth > MAX_QUEUE_DEPTH {
            bail!("--qd {queue_depth} is out of range (1 to {MAX_QUEUE_DEPTH})");
        }
        match limit {
            Limit::Time(d) if d.is_zero() => bail!("--time must be more than zero"),
            Limit::Ios(0) => bail!("--ios must be at least 1"),
            _ => {}
        }
        Ok(Workload {
            rw,
            read_pct,
            io_size,
            queue_depth,
            limit,
            ramp,
            seed: seed.unwrap_or(DEFAULT_SEED),
            region_offset: 0,
            region_size: None,
            rate: None,
            verify: false,
        })
    }

    /// The region `[start, start + len)` of a target of `target_size` bytes this workload
    /// uses, checked to be whole blocks of `block_size` and to hold at least one I/O.
    pub fn region(&self, target_size: u64, block_size: u32) -> Result<(u64, u64)> {
        let bs = u64::from(block_size.max(1));
        let start = self.region_offset;
        if !start.is_multiple_of(bs) {
            bail!("--offset {start} is not a multiple of the block size {bs}");
        }
        if start >= target_size {
            bail!(
                "--offset {} is beyond the end of the target ({})",
                format_size(start),
                format_size(target_size)
            );
        }
        let len = match self.region_size {
            Some(n) if n > target_size - start => bail!(
                "--offset {} + --size {} is beyond the end of the target ({})",
                format_size(start),
                format_size(n),
                format_size(target_size)
            ),
            Some(n) => n,
            None => target_size - start,
        };
        if len < self.io_size {
            bail!(
                "the region of {} cannot hold one I/O of {}",
                format_size(len),
                format_size(self.io_size)
            );
        }
        Ok((start, len))
    }

    pub fn writes(&self) -> bool {
        self.read_pct < 100
    }

    /// Checks the workload fits the target: whole blocks, and at least one I/O in the device.
    pub fn check_against(&self, t: &TargetInfo) -> Result<()> {
        let bs = t.block_size as u64;
        if bs == 0 || !bs.is_power_of_two() {
            bail!(
                "target {} has an unsupported block size {}",
                t.name,
                t.block_size
            );
        }
        if !self.io_size.is_multiple_of(bs) {
            bail!(
                "--bs {} is not a multiple of the block size {} of {}",
                self.io_size,
                bs,
                t.name
            );
        }
        if self.io_size > t.size_bytes() {
            bail!(
                "--bs {} is larger than {} ({})",
                format_size(self.io_size),
                t.name,
                format_size(t.size_bytes())
            );
        }
        self.region(t.size_bytes(), t.block_size)?;
        if self.writes() && !t.writable {
            bail!("the workload writes but {} is read-only", t.name);
        }
        Ok(())
    }

    /// The number of measured I/Os job `index` of `jobs` must do under `--ios`.
    pub fn ios_quota(&self, index: usize, jobs: usize) -> Option<u64> {
        match self.limit {
            Limit::Time(_) => None,
            Limit::Ios(n) => {
                let jobs = jobs.max(1) as u64;
                let i = index as u64;
                Some(n / jobs + u64::from(i < n % jobs))
            }
        }
    }

    /// One line for humans: `randrw 70% reads, bs 4 KiB, qd 32, 10 s (+1 s ramp)`.
    pub fn describe(&self) -> String {
        let mut s = self.rw.to_string();
        if self.rw == RwMode::Randrw {
            s += &format!(" {}% reads", self.read_pct);
        }
        s += &format!(
            ", bs {}, qd {}, ",
            format_size(self.io_size),
            self.queue_depth
        );
        match self.limit {
            Limit::Time(d) => s += &format!("{:.3?}", d),
            Limit::Ios(n) => s += &format!("{n} I/Os"),
        }
        if !self.ramp.is_zero() {
            s += &format!(" (+{:.3?} ramp)", self.ramp);
        }
        if let Some(r) = self.rate {
            s += &format!(", at most {r} IOPS");
        }
        if self.verify {
            s += ", verify";
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wl(rw: RwMode, mix: Option<u8>) -> Result<Workload> {
        Workload::new(
            rw,
            mix,
            4096,
            32,
            Limit::Time(Duration::from_secs(1)),
            Duration::ZERO,
            None,
        )
    }

    #[test]
    fn read_percentage_follows_the_pattern() {
        assert_eq!(wl(RwMode::Read, None).unwrap().read_pct, 100);
        assert_eq!(wl(RwMode::Randread, None).unwrap().read_pct, 100);
        assert_eq!(wl(RwMode::Write, None).unwrap().read_pct, 0);
        assert_eq!(wl(RwMode::Randwrite, None).unwrap().read_pct, 0);
        assert_eq!(wl(RwMode::Randrw, None).unwrap().read_pct, 70);
        assert_eq!(wl(RwMode::Randrw, Some(30)).unwrap().read_pct, 30);
        assert!(wl(RwMode::Randread, Some(30)).is_err());
        assert!(wl(RwMode::Randrw, Some(101)).is_err());
        assert!(!wl(RwMode::Randread, None).unwrap().writes());
        assert!(wl(RwMode::Randrw, Some(100)).is_ok());
    }

    #[test]
    fn rejects_bad_numbers() {
        let t = Limit::Time(Duration::from_secs(1));
        let z = Duration::ZERO;
        assert!(Workload::new(RwMode::Read, None, 0, 1, t, z, None).is_err());
        assert!(Workload::new(RwMode::Read, None, 4096, 0, t, z, None).is_err());
        assert!(Workload::new(RwMode::Read, None, 4096, 5000, t, z, None).is_err());
        assert!(Workload::new(RwMode::Read, None, 4096, 1, Limit::Ios(0), z, None).is_err());
        assert!(Workload::new(RwMode::Read, None, 4096, 1, Limit::Time(z), z, None).is_err());
    }

    #[test]
    fn ios_are_shared_out_exactly() {
        let w = Workload::new(
            RwMode::Randread,
            None,
            4096,
            1,
            Limit::Ios(10),
            Duration::ZERO,
            None,
        )
        .unwrap();
        let q: Vec<u64> = (0..3).map(|i| w.ios_quota(i, 3).unwrap()).collect();
        assert_eq!(q, vec![4, 3, 3]);
        assert_eq!(w.ios_quota(0, 1), Some(10));
        assert_eq!(wl(RwMode::Read, None).unwrap().ios_quota(0, 1), None);
    }

    #[test]
    fn checks_against_the_target() {
        let t = TargetInfo {
            kind: "bdev",
            spec: "malloc:1M".into(),
            name: "m".into(),
            module: "malloc".into(),
            block_size: 4096,
            num_blocks: 256,
            writable: false,
            direct: None,
        };
        let w = wl(RwMode::Randread, None).unwrap();
        assert!(w.check_against(&t).is_ok());
        assert!(wl(RwMode::Randwrite, None)
            .unwrap()
            .check_against(&t)
            .is_err());
        let mut w512 = w.clone();
        w512.io_size = 512;
        assert!(w512.check_against(&t).is_err());
        let mut big = w.clone();
        big.io_size = 2 << 20;
        assert!(big.check_against(&t).is_err());
    }

    #[test]
    fn regions() {
        let mut w = wl(RwMode::Randread, None).unwrap();
        assert_eq!(w.region(1 << 20, 512).unwrap(), (0, 1 << 20));
        w.region_offset = 8192;
        assert_eq!(w.region(1 << 20, 512).unwrap(), (8192, (1 << 20) - 8192));
        w.region_size = Some(16384);
        assert_eq!(w.region(1 << 20, 512).unwrap(), (8192, 16384));
        w.region_size = Some(1 << 20);
        assert!(w.region(1 << 20, 512).is_err(), "past the end");
        w.region_size = Some(2048);
        assert!(w.region(1 << 20, 512).is_err(), "smaller than one I/O");
        w.region_size = None;
        w.region_offset = 100;
        assert!(w.region(1 << 20, 512).is_err(), "unaligned");
        w.region_offset = 1 << 20;
        assert!(w.region(1 << 20, 512).is_err(), "at the end");
    }
}
