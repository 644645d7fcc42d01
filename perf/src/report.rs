//! Results: figures per job and in total, as a human table or one JSON object.
//!
//! The JSON object (`--json`) is [`Report`] serialised; its schema is stable (fields are only
//! ever added):
//!
//! ```text
//! { "tool": "gyre-perf", "version": "0.1.0",
//!   "target": { "kind": "bdev|iscsi|nvmf", "spec", "name", "module", "block_size",
//!               "num_blocks", "writable", "direct": bool|null },
//!   "workload": { "rw", "read_pct", "bs", "qd", "connections", "time_s": f|null,
//!                 "ios": n|null, "ramp_s", "offset", "size", "rate": n|null, "verify",
//!                 "seed", "cores": [..], "idle" },
//!   "ios", "reads", "writes", "bytes", "errors", "elapsed_s", "iops", "mib_s",
//!   "read_iops", "write_iops", "busy",
//!   "latency_us" | "read_latency_us" | "write_latency_us":
//!       { "min", "mean", "stdev", "p50", "p90", "p99", "p99_9", "p99_99", "max" },
//!   "first_error": string|null,
//!   "verify": { "blocks_checked", "mismatches", "first_mismatch": null |
//!               { "lba", "offset", "expected", "found", "expected_generation",
//!                 "found_header_valid", "found_lba", "found_generation", "message" } } | null,
//!   "wall_s",
//!   "per_core": [ { "reactor", "core", ...the same figures as the totals... } ] }
//! ```
//!
//! Latencies are in microseconds, rates per second, `busy` a fraction of the reactors'
//! time in [0, 1]; `errors` counts failed I/Os of every phase.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::engine::{limit_parts, EngineConfig, ProgressSample, RunOutcome};
use crate::job::{new_histogram, JobResult};
use crate::target::TargetInfo;
use crate::units::format_size;
use crate::verify::Mismatch;
use crate::workload::Workload;

const MIB: f64 = 1024.0 * 1024.0;

/// Latency figures in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub stdev: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
}

impl Latency {
    pub fn from_ns(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            min: us(h.min()),
            mean: h.mean() / 1000.0,
            stdev: h.stdev() / 1000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p99_9: us(h.value_at_quantile(0.999)),
            p99_99: us(h.value_at_quantile(0.9999)),
            max: us(h.max()),
        }
    }
}

/// The figures of one job or of the whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Measured I/Os that succeeded.
    pub ios: u64,
    pub reads: u64,
    pub writes: u64,
    pub bytes: u64,
    /// Failed I/Os (ramp included).
    pub errors: u64,
    /// Seconds from the start of measurement to the last measured completion.
    pub elapsed_s: f64,
    pub iops: f64,
    pub mib_s: f64,
    pub read_iops: f64,
    pub write_iops: f64,
    /// All measured I/Os.
    pub latency_us: Latency,
    pub read_latency_us: Latency,
    pub write_latency_us: Latency,
    /// Busy fraction of the reactor(s) during measurement, in [0, 1] (averaged over reactors).
    pub busy: f64,
}

/// I/O counts of a job or a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub reads: u64,
    pub writes: u64,
    pub errors: u64,
}

impl Stats {
    fn new(
        Counts {
            reads,
            writes,
            errors,
        }: Counts,
        elapsed_ns: u64,
        io_size: u64,
        read: &Histogram<u64>,
        write: &Histogram<u64>,
        busy: f64,
    ) -> Self {
        let ios = reads + writes;
        let secs = elapsed_ns as f64 / 1e9;
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let mut all = read.clone();
        // Cannot fail: both histograms have the same bounds.
        let _ = all.add(write);
        let bytes = ios * io_size;
        Stats {
            ios,
            reads,
            writes,
            bytes,
            errors,
            elapsed_s: secs,
            iops: rate(ios),
            mib_s: rate(bytes) / MIB,
            read_iops: rate(reads),
            write_iops: rate(writes),
            latency_us: Latency::from_ns(&all),
            read_latency_us: Latency::from_ns(read),
            write_latency_us: Latency::from_ns(write),
            busy,
        }
    }
}

/// One reactor's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoreReport {
    pub reactor: usize,
    pub core: usize,
    #[serde(flatten)]
    pub stats: Stats,
}

/// The parameters of the run, echoed in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadReport {
    pub rw: String,
    pub read_pct: u8,
    pub bs: u64,
    pub qd: u32,
    pub connections: usize,
    pub time_s: Option<f64>,
    pub ios: Option<u64>,
    pub ramp_s: f64,
    pub offset: u64,
    pub size: Option<u64>,
    pub rate: Option<u64>,
    pub verify: bool,
    pub seed: u64,
    pub cores: Vec<usize>,
    pub idle: String,
}

/// The whole report: `--json` prints exactly this.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub target: TargetInfo,
    pub workload: WorkloadReport,
    /// Totals over all reactors.
    #[serde(flatten)]
    pub total: Stats,
    pub first_error: Option<String>,
    /// `--verify` results (`null` without it).
    pub verify: Option<VerifyReport>,
    /// Seconds from the start signal to the end of the drain (ramp included).
    pub wall_s: f64,
    pub per_core: Vec<CoreReport>,
}

/// The first block that failed its check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MismatchReport {
    pub lba: u64,
    /// Offset of the first wrong byte in the block.
    pub offset: usize,
    pub expected: u8,
    pub found: u8,
    pub expected_generation: u32,
    /// Whether the block found starts with gyre-perf's magic (then the next two say what it
    /// claims to be).
    pub found_header_valid: bool,
    pub found_lba: u64,
    pub found_generation: u64,
    pub message: String,
}

impl From<&Mismatch> for MismatchReport {
    fn from(m: &Mismatch) -> Self {
        MismatchReport {
            lba: m.lba,
            offset: m.offset,
            expected: m.expected,
            found: m.found,
            expected_generation: m.expected_generation,
            found_header_valid: m.found_header.magic_ok,
            found_lba: m.found_header.lba,
            found_generation: m.found_header.generation,
            message: m.to_string(),
        }
    }
}

/// What `--verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub blocks_checked: u64,
    pub mismatches: u64,
    pub first_mismatch: Option<MismatchReport>,
}

impl Report {
    /// Whether the run should exit non-zero: any failed I/O or verify mismatch.
    pub fn failed(&self) -> bool {
        self.total.errors > 0 || self.verify.as_ref().is_some_and(|v| v.mismatches > 0)
    }

    pub fn new(
        target: &TargetInfo,
        workload: &Workload,
        engine: &EngineConfig,
        outcome: &RunOutcome,
    ) -> Self {
        let io_size = workload.io_size;
        let mut per_core = Vec::with_capacity(outcome.jobs.len());
        let mut read_all = new_histogram();
        let mut write_all = new_histogram();
        let (mut reads, mut writes, mut errors, mut elapsed) = (0, 0, 0, 0);
        let mut busy_sum = 0.0;
        for (i, j) in outcome.jobs.iter().enumerate() {
            let busy = outcome
                .loads
                .get(i)
                .map(|l| l.busy_fraction())
                .unwrap_or(0.0);
            busy_sum += busy;
            per_core.push(CoreReport {
                reactor: j.index,
                core: j.core,
                stats: job_stats(j, io_size, busy),
            });
            let _ = read_all.add(&j.read_latency);
            let _ = write_all.add(&j.write_latency);
            reads += j.reads;
            writes += j.writes;
            errors += j.errors;
            elapsed = elapsed.max(j.elapsed_ns);
        }
        let busy = if outcome.jobs.is_empty() {
            0.0
        } else {
            busy_sum / outcome.jobs.len() as f64
        };
        let counts = Counts {
            reads,
            writes,
            errors,
        };
        let total = Stats::new(counts, elapsed, io_size, &read_all, &write_all, busy);
        let (time_s, ios) = limit_parts(workload);
        let verify = workload.verify.then(|| {
            // The first mismatch of the lowest-numbered job that saw one.
            let first = outcome.jobs.iter().find_map(|j| j.first_mismatch.as_ref());
            VerifyReport {
                blocks_checked: outcome.jobs.iter().map(|j| j.verified_blocks).sum(),
                mismatches: outcome.jobs.iter().map(|j| j.mismatches).sum(),
                first_mismatch: first.map(MismatchReport::from),
            }
        });
        Report {
            tool: "gyre-perf",
            version: env!("CARGO_PKG_VERSION"),
            target: target.clone(),
            workload: WorkloadReport {
                rw: workload.rw.to_string(),
                read_pct: workload.read_pct,
                bs: io_size,
                qd: workload.queue_depth,
                connections: engine.connections,
                time_s,
                ios,
                ramp_s: workload.ramp.as_secs_f64(),
                offset: workload.region_offset,
                size: workload.region_size,
                rate: workload.rate,
                verify: workload.verify,
                seed: workload.seed,
                cores: engine.cores.cores().to_vec(),
                idle: engine.idle.to_string(),
            },
            total,
            first_error: outcome
                .jobs
                .iter()
                .find_map(|j| j.first_error)
                .map(|e| e.to_string()),
            verify,
            wall_s: outcome.wall.as_secs_f64(),
            per_core,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human summary.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let t = &self.total;
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<8} {:>12} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "reactor", "IOPS", "MiB/s", "busy", "mean µs", "p50 µs", "p99 µs", "p99.9 µs", "max µs"
        );
        let line = |s: &mut String, label: &str, st: &Stats| {
            let l = &st.latency_us;
            let _ = writeln!(
                s,
                "{:<8} {:>12.0} {:>10.2} {:>6.1}% {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                label,
                st.iops,
                st.mib_s,
                st.busy * 100.0,
                l.mean,
                l.p50,
                l.p99,
                l.p99_9,
                l.max
            );
        };
        if self.per_core.len() > 1 {
            for c in &self.per_core {
                line(&mut s, &format!("core {}", c.core), &c.stats);
            }
        }
        line(&mut s, "total", t);
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "I/Os: {} ({} reads, {} writes) in {:.3} s, {} errors",
            t.ios, t.reads, t.writes, t.elapsed_s, t.errors
        );
        let _ = writeln!(
            s,
            "IOPS: {:.0}   bandwidth: {:.2} MiB/s   reactor busy: {:.1}%",
            t.iops,
            t.mib_s,
            t.busy * 100.0
        );
        let lat = |s: &mut String, label: &str, l: &Latency| {
            let _ = writeln!(
                s,
                "{label:<14} min {:.2}  mean {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  p99.99 {:.2}  max {:.2}",
                l.min, l.mean, l.p50, l.p90, l.p99, l.p99_9, l.p99_99, l.max
            );
        };
        lat(&mut s, "latency µs:", &t.latency_us);
        if t.reads > 0 && t.writes > 0 {
            lat(&mut s, "  reads µs:", &t.read_latency_us);
            lat(&mut s, "  writes µs:", &t.write_latency_us);
        }
        if let Some(e) = &self.first_error {
            let _ = writeln!(s, "first error: {e}");
        }
        if let Some(v) = &self.verify {
            let _ = writeln!(
                s,
                "verify: {} blocks checked, {} mismatches",
                v.blocks_checked, v.mismatches
            );
            if let Some(m) = &v.first_mismatch {
                let _ = writeln!(s, "first mismatch: {}", m.message);
            }
        }
        s
    }

    /// The header printed before a run.
    pub fn header(target: &TargetInfo, workload: &Workload, engine: &EngineConfig) -> String {
        format!(
            "gyre-perf {}: {} ({}, {}, {} B blocks): {}; {} reactor(s) on cores {}, idle {}",
            target.kind,
            target.name,
            target.module,
            format_size(target.size_bytes()),
            target.block_size,
            workload.describe(),
            engine.cores.len(),
            engine.cores,
            engine.idle
        )
    }
}

fn job_stats(j: &JobResult, io_size: u64, busy: f64) -> Stats {
    Stats::new(
        Counts {
            reads: j.reads,
            writes: j.writes,
            errors: j.errors,
        },
        j.elapsed_ns,
        io_size,
        &j.read_latency,
        &j.write_latency,
        busy,
    )
}

/// One progress line: `[   3.0s] run   IOPS    1234567  MiB/s    4822.53  p99    25.3µs  busy 100.0%`.
pub fn progress_line(p: &ProgressSample) -> String {
    let mut s = format!(
        "[{:>7.1}s] {:<5} IOPS {:>10.0}  MiB/s {:>10.2}  p99 {:>9}  busy {:>5.1}%",
        p.elapsed.as_secs_f64(),
        p.phase.name(),
        p.iops,
        p.bytes_per_sec / MIB,
        match p.p99_ns {
            Some(ns) => format!("{:.1}µs", ns as f64 / 1000.0),
            None => "-".to_string(),
        },
        p.busy * 100.0
    );
    if p.errors > 0 {
        let _ = write!(s, "  errors {}", p.errors);
    }
    if p.mismatches > 0 {
        let _ = write!(s, "  MISMATCHES {}", p.mismatches);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_figures_in_microseconds() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.saturating_record(v * 1000);
        }
        let l = Latency::from_ns(&h);
        assert!((l.min - 1.0).abs() < 0.01);
        assert!((l.p50 - 5000.0).abs() / 5000.0 < 0.002, "{}", l.p50);
        assert!((l.p99 - 9900.0).abs() / 9900.0 < 0.002, "{}", l.p99);
        assert!((l.max - 10000.0).abs() / 10000.0 < 0.002, "{}", l.max);
        assert_eq!(Latency::from_ns(&new_histogram()), Latency::default());
    }

    #[test]
    fn stats_rates() {
        let mut r = new_histogram();
        let w = new_histogram();
        r.saturating_record(1000);
        let s = Stats::new(
            Counts {
                reads: 1000,
                writes: 0,
                errors: 0,
            },
            1_000_000_000,
            4096,
            &r,
            &w,
            0.5,
        );
        assert_eq!(s.ios, 1000);
        assert!((s.iops - 1000.0).abs() < 1e-6);
        assert!((s.mib_s - 1000.0 * 4096.0 / MIB).abs() < 1e-9);
        let z = Stats::new(
            Counts {
                reads: 0,
                writes: 0,
                errors: 3,
            },
            0,
            4096,
            &r,
            &w,
            0.0,
        );
        assert_eq!(z.iops, 0.0);
        assert_eq!(z.errors, 3);
    }
}
