//! A cheap monotonic tick counter for per-poller accounting and I/O latency.
//!
//! On x86_64 this is the TSC (constant and non-stop on the machines we target), read in a few
//! nanoseconds without a syscall; elsewhere it falls back to `Instant`. Ticks are converted to
//! time with a rate calibrated once per process.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Current tick count.
#[inline]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc is available on every x86_64 CPU.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        epoch().elapsed().as_nanos() as u64
    }
}

/// Ticks per second, measured once against the OS monotonic clock.
pub fn ticks_per_sec() -> u64 {
    static RATE: OnceLock<u64> = OnceLock::new();
    *RATE.get_or_init(|| {
        if cfg!(not(target_arch = "x86_64")) {
            return 1_000_000_000;
        }
        let _ = epoch();
        let t0 = Instant::now();
        let c0 = ticks();
        std::thread::sleep(Duration::from_millis(20));
        let c1 = ticks();
        let dt = t0.elapsed();
        let rate = ((c1.wrapping_sub(c0)) as f64 / dt.as_secs_f64()) as u64;
        rate.max(1)
    })
}

/// Converts a tick count to nanoseconds.
#[inline]
pub fn ticks_to_ns(t: u64) -> u64 {
    ((t as u128 * 1_000_000_000u128) / ticks_per_sec() as u128) as u64
}

/// Converts a duration to ticks.
pub fn duration_to_ticks(d: Duration) -> u64 {
    ((d.as_nanos() * ticks_per_sec() as u128) / 1_000_000_000u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_advance_and_convert() {
        let a = ticks();
        std::thread::sleep(Duration::from_millis(5));
        let b = ticks();
        let ns = ticks_to_ns(b - a);
        assert!(ns >= 4_000_000, "5ms sleep measured as {ns}ns");
        assert!(ns < 2_000_000_000, "5ms sleep measured as {ns}ns");
        let t = duration_to_ticks(Duration::from_millis(1));
        let back = ticks_to_ns(t);
        assert!((999_000..=1_001_000).contains(&back), "{back}");
    }
}
