//! A job: the poller that drives one reactor's queue to a target.
//!
//! Everything a job needs is made before the first I/O: `qd` slots per connection each owning
//! its buffer, the offset generator, the latency histograms, a list of idle slots and, with
//! `--verify`, the block table. Per I/O it reads the tick counter twice, draws a number or two,
//! records a histogram value and moves the buffer between its slot and the queue — no
//! allocation, lock or syscall (with `--verify` it also stamps or checks the blocks). Progress
//! is published with relaxed stores (this job is the only writer) once per poll.
//!
//! Phases: wait for the start signal; with `--verify` and a read-only pattern, a prefill pass
//! writes the job's whole region once (not measured); ramp; measure (until the time or the
//! I/O count); drain; with `--verify` and writes, a read-back pass checks every block written
//! (not measured); done.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use gyre_bdev::{IoError, IoOp};
use gyre_reactor::clock::{duration_to_ticks, ticks, ticks_per_sec};
use gyre_reactor::{PollStatus, Poller, SgList};
use hdrhistogram::Histogram;

use crate::live::LiveHistogram;
use crate::rng::{mix_seed, OffsetGen, WyRand};
use crate::target::{Completed, IoSpec, TargetQueue};
use crate::verify::{self, BlockTable, Mismatch};
use crate::workload::{Limit, Workload};

/// Highest latency the histograms resolve (larger values are clamped): one hour.
pub const MAX_LATENCY_NS: u64 = 3_600_000_000_000;
/// Significant digits of the histograms (0.1% resolution).
pub const LATENCY_SIGFIG: u8 = 3;

/// A latency histogram in nanoseconds.
pub fn new_histogram() -> Histogram<u64> {
    // Cannot fail: the bounds are constants within hdrhistogram's limits.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, LATENCY_SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// Ticks to nanoseconds by a fixed-point multiply (no division on the I/O path).
#[derive(Debug, Clone, Copy)]
pub struct TickConv {
    ns_per_tick_q32: u64,
}

impl TickConv {
    pub fn new() -> Self {
        let tps = ticks_per_sec().max(1) as u128;
        let q = (1_000_000_000u128 << 32) / tps;
        TickConv {
            ns_per_tick_q32: q.min(u64::MAX as u128) as u64,
        }
    }

    #[inline]
    pub fn to_ns(self, t: u64) -> u64 {
        let ns = (t as u128 * self.ns_per_tick_q32 as u128) >> 32;
        ns.min(u64::MAX as u128) as u64
    }
}

impl Default for TickConv {
    fn default() -> Self {
        Self::new()
    }
}

/// The phase a job is in, as published to the main thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Set up, waiting for the start signal.
    Waiting = 0,
    /// `--verify` of a read-only pattern: writing the region once (not measured).
    Prefill = 1,
    /// Warming up: I/O is not counted.
    Ramp = 2,
    /// Measuring.
    Measure = 3,
    /// No more submissions; waiting for in-flight I/O.
    Drain = 4,
    /// `--verify` with writes: reading the region back and checking it (not measured).
    Readback = 5,
    /// Finished; results sent.
    Done = 6,
}

impl Phase {
    pub fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Waiting,
            1 => Phase::Prefill,
            2 => Phase::Ramp,
            3 => Phase::Measure,
            4 => Phase::Drain,
            5 => Phase::Readback,
            _ => Phase::Done,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Waiting => "wait",
            Phase::Prefill => "fill",
            Phase::Ramp => "ramp",
            Phase::Measure => "run",
            Phase::Drain => "drain",
            Phase::Readback => "check",
            Phase::Done => "done",
        }
    }
}

/// A job's live counters, written only by the job (relaxed stores), read by the main thread.
/// Aligned to its own cache lines so that reading it does not disturb its neighbours.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct JobProgress {
    /// I/Os completed successfully, every phase included.
    pub completed: AtomicU64,
    /// Bytes of those.
    pub bytes: AtomicU64,
    /// Failed I/Os, every phase included.
    pub errors: AtomicU64,
    /// Blocks that failed their `--verify` check.
    pub mismatches: AtomicU64,
    pub phase: AtomicU8,
    /// Latencies of the ramp and the measurement, for the live p99.
    pub live: LiveHistogram,
}

impl JobProgress {
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }
}

/// Everything the main thread needs to start and stop the jobs together.
#[derive(Debug, Default)]
pub struct StartGate {
    /// Tick at which the jobs start; 0 until the engine opens the gate.
    pub start_tick: AtomicU64,
}

/// What a job hands back when it finishes.
#[derive(Debug)]
pub struct JobResult {
    pub index: usize,
    pub core: usize,
    /// Measured I/Os that succeeded.
    pub reads: u64,
    pub writes: u64,
    /// Failed I/Os, every phase included.
    pub errors: u64,
    pub first_error: Option<IoError>,
    /// Blocks checked by `--verify`, and how many of them were wrong.
    pub verified_blocks: u64,
    pub mismatches: u64,
    pub first_mismatch: Option<Mismatch>,
    /// Nanoseconds from the start of measurement to the last measured completion.
    pub elapsed_ns: u64,
    pub read_latency: Histogram<u64>,
    pub write_latency: Histogram<u64>,
}

impl JobResult {
    pub fn ios(&self) -> u64 {
        self.reads + self.writes
    }
}

/// How to build a job; `Send`, so it can travel to the reactor.
#[derive(Debug, Clone)]
pub struct JobPlan {
    pub index: usize,
    pub jobs: usize,
    pub workload: Workload,
    pub block_size: u32,
    /// Region of the target to use, in bytes.
    pub region_start: u64,
    pub region_len: u64,
    /// Connections of this job's queue (`queue_depth` slots each).
    pub connections: usize,
    /// This job's share of `--rate`, in IOPS.
    pub rate: Option<u64>,
}

impl JobPlan {
    /// Slots (I/Os in flight at most) of this job.
    pub fn slots(&self) -> usize {
        self.workload.queue_depth as usize * self.connections.max(1)
    }
}

struct Slot {
    buf: Option<SgList>,
    submitted_at: u64,
    op: IoOp,
    measured: bool,
    lba: u64,
    /// The last completion of this slot failed.
    failed: bool,
}

/// A read-only pattern with `--verify` writes the region first; one with writes reads it back.
fn verify_passes(w: &Workload) -> (bool, bool) {
    (w.verify && !w.writes(), w.verify && w.writes())
}

/// The per-core load generator, registered as an active poller on its reactor.
pub struct Job<Q: TargetQueue> {
    queue: Q,
    index: usize,
    core: usize,
    slots: Box<[Slot]>,
    /// Slots at home, not in flight (capacity = slots: never grows).
    idle: Vec<u32>,
    in_flight: u32,
    offsets: OffsetGen,
    mix: WyRand,
    read_pct: u8,
    block_shift: u32,
    block_size: usize,
    blocks_per_io: u64,
    io_size: u64,
    phase: Phase,
    gate: Arc<StartGate>,
    ramp_ticks: u64,
    run_ticks: Option<u64>,
    measure_start: u64,
    end_tick: u64,
    quota: Option<u64>,
    measured_submitted: u64,
    last_measured_completion: u64,
    reads: u64,
    writes: u64,
    completed_all: u64,
    bytes_all: u64,
    errors: u64,
    first_error: Option<IoError>,
    /// Region in blocks, and the cursor of the prefill / read-back passes.
    region_lba: u64,
    region_ios: u64,
    pass_next: u64,
    prefill: bool,
    readback: bool,
    table: Option<BlockTable>,
    seed: u64,
    verified_blocks: u64,
    mismatches: u64,
    first_mismatch: Option<Mismatch>,
    /// Ticks between I/Os under `--rate` (0: no cap) and the tick the next may start.
    rate_ticks: u64,
    rate_burst_ticks: u64,
    next_allowed: u64,
    conv: TickConv,
    read_latency: Histogram<u64>,
    write_latency: Histogram<u64>,
    progress: Arc<JobProgress>,
    results: crossbeam::channel::Sender<JobResult>,
}

/// Offsets drawn per I/O before giving up on finding blocks not in flight (`--verify`).
const CLAIM_TRIES: u32 = 8;

impl<Q: TargetQueue> Job<Q> {
    /// Builds a job around `queue` with `buffers` (one per slot, each at least `io_size`).
    pub fn new(
        plan: &JobPlan,
        core: usize,
        queue: Q,
        buffers: Vec<SgList>,
        gate: Arc<StartGate>,
        progress: Arc<JobProgress>,
        results: crossbeam::channel::Sender<JobResult>,
    ) -> anyhow::Result<Self> {
        let w = &plan.workload;
        let bs = plan.block_size as u64;
        anyhow::ensure!(
            bs.is_power_of_two() && w.io_size.is_multiple_of(bs),
            "I/O size {} is not a multiple of the block size {bs}",
            w.io_size
        );
        anyhow::ensure!(
            buffers.len() == plan.slots(),
            "{} buffers for {} slots",
            buffers.len(),
            plan.slots()
        );
        anyhow::ensure!(
            buffers.iter().all(|b| b.len() as u64 >= w.io_size),
            "a buffer is smaller than the I/O size"
        );
        anyhow::ensure!(
            plan.region_start.is_multiple_of(bs),
            "the region does not start on a block"
        );
        let seed = mix_seed(w.seed, plan.index as u64);
        // Sequential jobs start spread over the region so that they do not read the same
        // blocks in lockstep (with --verify each job has a region of its own).
        let slots_in_region = plan.region_len / w.io_size;
        let first_slot = if w.verify {
            0
        } else {
            (slots_in_region as u128 * plan.index as u128 / plan.jobs.max(1) as u128) as u64
        };
        let offsets = OffsetGen::new(
            w.rw.is_random(),
            plan.region_start,
            plan.region_len,
            w.io_size,
            first_slot,
            seed,
        )?;
        let region_lba = plan.region_start / bs;
        let table = if w.verify {
            anyhow::ensure!(
                bs as usize >= verify::MIN_BLOCK_SIZE,
                "--verify needs blocks of at least {} bytes",
                verify::MIN_BLOCK_SIZE
            );
            anyhow::ensure!(
                buffers
                    .iter()
                    .all(|b| b.num_segments() == 1 && b.len() as u64 >= w.io_size),
                "--verify needs single-segment buffers"
            );
            let blocks = offsets.slots() * (w.io_size / bs);
            Some(BlockTable::new(region_lba, blocks).map_err(anyhow::Error::msg)?)
        } else {
            None
        };
        let slots: Box<[Slot]> = buffers
            .into_iter()
            .map(|buf| Slot {
                buf: Some(buf),
                submitted_at: 0,
                op: IoOp::Read,
                measured: false,
                lba: 0,
                failed: false,
            })
            .collect();
        let run_ticks = match w.limit {
            Limit::Time(d) => Some(duration_to_ticks(d)),
            Limit::Ios(_) => None,
        };
        let rate_ticks = match plan.rate {
            Some(r) if r > 0 => (ticks_per_sec() / r).max(1),
            _ => 0,
        };
        let (prefill, readback) = verify_passes(w);
        let n = slots.len();
        Ok(Job {
            queue,
            index: plan.index,
            core,
            idle: (0..n as u32).rev().collect(),
            slots,
            in_flight: 0,
            region_ios: offsets.slots(),
            offsets,
            mix: WyRand::new(mix_seed(seed, u64::MAX)),
            read_pct: w.read_pct,
            block_shift: bs.trailing_zeros(),
            block_size: bs as usize,
            blocks_per_io: w.io_size / bs,
            io_size: w.io_size,
            phase: Phase::Waiting,
            gate,
            ramp_ticks: duration_to_ticks(w.ramp),
            run_ticks,
            measure_start: 0,
            end_tick: u64::MAX,
            quota: w.ios_quota(plan.index, plan.jobs),
            measured_submitted: 0,
            last_measured_completion: 0,
            reads: 0,
            writes: 0,
            completed_all: 0,
            bytes_all: 0,
            errors: 0,
            first_error: None,
            region_lba,
            pass_next: 0,
            prefill,
            readback,
            table,
            seed: w.seed,
            verified_blocks: 0,
            mismatches: 0,
            first_mismatch: None,
            rate_ticks,
            // A burst of a queue's worth or 10 ms of I/O, whichever is more.
            rate_burst_ticks: rate_ticks
                .saturating_mul(n as u64)
                .max(duration_to_ticks(std::time::Duration::from_millis(10))),
            next_allowed: 0,
            conv: TickConv::new(),
            read_latency: new_histogram(),
            write_latency: new_histogram(),
            progress,
            results,
        })
    }

    fn set_phase(&mut self, p: Phase) {
        self.phase = p;
        self.progress.phase.store(p as u8, Ordering::Relaxed);
    }

    /// Starts the ramp (or the measurement) now.
    fn begin_workload(&mut self, now: u64) {
        self.measure_start = now.saturating_add(self.ramp_ticks);
        self.end_tick = match self.run_ticks {
            Some(t) => self.measure_start.saturating_add(t),
            None => u64::MAX,
        };
        self.next_allowed = now;
        self.set_phase(if self.ramp_ticks > 0 {
            Phase::Ramp
        } else {
            Phase::Measure
        });
        self.advance(now);
    }

    /// Moves the phase on by the clock, the quota and the passes.
    #[inline]
    fn advance(&mut self, now: u64) {
        if self.phase == Phase::Prefill && self.pass_next >= self.region_ios && self.in_flight == 0
        {
            self.begin_workload(now);
        }
        if self.phase == Phase::Ramp && now >= self.measure_start {
            self.set_phase(Phase::Measure);
        }
        if self.phase == Phase::Measure {
            let out_of_time = now >= self.end_tick;
            let out_of_ios = self.quota.is_some_and(|q| self.measured_submitted >= q);
            if out_of_time || out_of_ios {
                self.set_phase(Phase::Drain);
            }
        }
        if self.phase == Phase::Drain && self.in_flight == 0 && self.readback {
            self.pass_next = 0;
            self.set_phase(Phase::Readback);
        }
    }

    /// Chooses the next I/O of the current phase and submits it in slot `tag`. Returns false
    /// (the slot stays idle) when the phase, the quota, the rate or busy blocks hold it back.
    #[inline]
    fn try_submit(&mut self, tag: u32, now: u64) -> bool {
        let (op, offset, measured) = match self.phase {
            Phase::Prefill | Phase::Readback => {
                if self.pass_next >= self.region_ios {
                    return false;
                }
                let offset = (self.region_lba << self.block_shift) + self.pass_next * self.io_size;
                let lba = offset >> self.block_shift;
                if let Some(t) = self.table.as_mut() {
                    if !t.try_claim(lba, self.blocks_per_io) {
                        return false;
                    }
                }
                self.pass_next += 1;
                let op = if self.phase == Phase::Prefill {
                    IoOp::Write
                } else {
                    IoOp::Read
                };
                (op, offset, false)
            }
            Phase::Ramp | Phase::Measure => {
                let measured = self.phase == Phase::Measure;
                if measured && self.quota.is_some_and(|q| self.measured_submitted >= q) {
                    return false;
                }
                if self.rate_ticks != 0 {
                    if now < self.next_allowed {
                        return false;
                    }
                    // After a stall (the thread was descheduled, the queue was full, polls are
                    // far apart) the job may catch up by a bounded burst.
                    self.next_allowed = self
                        .next_allowed
                        .max(now.saturating_sub(self.rate_burst_ticks))
                        + self.rate_ticks;
                }
                let op = if self.read_pct == 100
                    || (self.read_pct != 0 && self.mix.percent(self.read_pct))
                {
                    IoOp::Read
                } else {
                    IoOp::Write
                };
                let mut offset = self.offsets.next_offset();
                if let Some(t) = self.table.as_mut() {
                    let mut tries = 1;
                    while !t.try_claim(offset >> self.block_shift, self.blocks_per_io) {
                        if tries == CLAIM_TRIES {
                            return false;
                        }
                        tries += 1;
                        offset = self.offsets.next_offset();
                    }
                }
                if measured {
                    self.measured_submitted += 1;
                }
                (op, offset, measured)
            }
            _ => return false,
        };
        let lba = offset >> self.block_shift;
        let Some(slot) = self.slots.get_mut(tag as usize) else {
            return false;
        };
        let Some(mut buf) = slot.buf.take() else {
            // A slot is only idle when its buffer is home; nothing to do otherwise.
            return false;
        };
        if op == IoOp::Write {
            if let (Some(t), Some(seg)) = (self.table.as_ref(), buf.segments_mut().first_mut()) {
                let data = seg.as_mut_slice();
                for (i, block) in data
                    .chunks_exact_mut(self.block_size)
                    .take(self.blocks_per_io as usize)
                    .enumerate()
                {
                    let b = lba + i as u64;
                    verify::fill_block(
                        block,
                        b,
                        verify::next_generation(t.generation(b)),
                        self.seed,
                    );
                }
            }
        }
        slot.op = op;
        slot.measured = measured;
        slot.lba = lba;
        slot.submitted_at = ticks();
        self.in_flight += 1;
        self.queue.submit(
            IoSpec {
                op,
                offset_blocks: lba,
                num_blocks: self.blocks_per_io,
                tag: tag as u64,
            },
            buf,
        );
        true
    }

    /// Submits from the idle slots as long as the phase allows.
    #[inline]
    fn fill_queue(&mut self) {
        let now = ticks();
        while let Some(&tag) = self.idle.last() {
            if !self.try_submit(tag, now) {
                break;
            }
            self.idle.pop();
        }
    }

    /// Updates the block table for a finished I/O, checking read data.
    fn verify_completion(&mut self, tag: u32) {
        let Some(table) = self.table.as_mut() else {
            return;
        };
        let Some(slot) = self.slots.get(tag as usize) else {
            return;
        };
        let (lba, n) = (slot.lba, self.blocks_per_io);
        table.release(lba, n);
        match (slot.op, !slot.failed) {
            (IoOp::Write, true) => {
                for b in lba..lba + n {
                    table.set_generation(b, verify::next_generation(table.generation(b)));
                }
            }
            (IoOp::Write, false) => {
                for b in lba..lba + n {
                    table.set_generation(b, verify::UNCERTAIN);
                }
            }
            (IoOp::Read, true) => {
                let Some(seg) = slot.buf.as_ref().and_then(|b| b.segments().first()) else {
                    return;
                };
                for (i, block) in seg
                    .as_slice()
                    .chunks_exact(self.block_size)
                    .take(n as usize)
                    .enumerate()
                {
                    let b = lba + i as u64;
                    let g = table.generation(b);
                    if g == verify::NEVER_WRITTEN || g == verify::UNCERTAIN {
                        continue;
                    }
                    self.verified_blocks += 1;
                    if let Err(m) = verify::check_block(block, b, g, self.seed) {
                        self.mismatches += 1;
                        self.first_mismatch.get_or_insert(m);
                    }
                }
            }
            _ => {}
        }
    }

    fn start(&mut self) {
        let now = ticks();
        if self.prefill {
            self.set_phase(Phase::Prefill);
        } else {
            self.begin_workload(now);
        }
        self.fill_queue();
        self.advance(ticks());
    }

    fn finish(&mut self) {
        let elapsed_ns = if self.reads + self.writes > 0 {
            self.conv.to_ns(
                self.last_measured_completion
                    .saturating_sub(self.measure_start),
            )
        } else {
            0
        };
        self.queue.close();
        let result = JobResult {
            index: self.index,
            core: self.core,
            reads: self.reads,
            writes: self.writes,
            errors: self.errors,
            first_error: self.first_error,
            verified_blocks: self.verified_blocks,
            mismatches: self.mismatches,
            first_mismatch: self.first_mismatch,
            elapsed_ns,
            read_latency: std::mem::replace(
                &mut self.read_latency,
                Histogram::new(1).expect("1 significant digit is valid"),
            ),
            write_latency: std::mem::replace(
                &mut self.write_latency,
                Histogram::new(1).expect("1 significant digit is valid"),
            ),
        };
        // The engine may have given up waiting; then nobody needs the result.
        let _ = self.results.send(result);
        self.set_phase(Phase::Done);
    }

    fn publish(&self) {
        let p = &self.progress;
        p.completed.store(self.completed_all, Ordering::Relaxed);
        p.bytes.store(self.bytes_all, Ordering::Relaxed);
        p.errors.store(self.errors, Ordering::Relaxed);
        p.mismatches.store(self.mismatches, Ordering::Relaxed);
    }
}

impl<Q: TargetQueue> Poller for Job<Q> {
    fn poll(&mut self) -> PollStatus {
        match self.phase {
            Phase::Waiting => {
                let start = self.gate.start_tick.load(Ordering::Acquire);
                if start == 0 {
                    return PollStatus::Idle;
                }
                self.start();
                return PollStatus::Busy;
            }
            Phase::Done => return PollStatus::Done,
            _ => {}
        }

        let conv = self.conv;
        let io_size = self.io_size;
        let verify = self.table.is_some();
        let slots = &mut self.slots;
        let idle = &mut self.idle;
        let read_latency = &mut self.read_latency;
        let write_latency = &mut self.write_latency;
        let live = &self.progress.live;
        let timed = matches!(self.phase, Phase::Ramp | Phase::Measure | Phase::Drain);
        let mut reads = 0u64;
        let mut writes = 0u64;
        let mut ok = 0u64;
        let mut errors = 0u64;
        let mut first_error = None;
        let mut last = 0u64;
        let mut in_flight = self.in_flight;
        // With --verify, the tags of finished I/Os are checked after the queue's poll (the
        // check needs the table, which the closure cannot borrow alongside the slots).
        let first_done = idle.len();
        let n = self.queue.poll(|c: Completed| {
            let t = ticks();
            let Some(slot) = slots.get_mut(c.tag as usize) else {
                // Not one of ours: a broken target. Count it as an error.
                errors += 1;
                return;
            };
            if slot.buf.is_some() {
                // Completed twice: a broken target.
                errors += 1;
                return;
            }
            slot.buf = Some(c.buf);
            slot.failed = c.status.is_err();
            in_flight = in_flight.saturating_sub(1);
            idle.push(c.tag as u32);
            match c.status {
                Ok(()) => {
                    ok += 1;
                    let ns = conv.to_ns(t.saturating_sub(slot.submitted_at));
                    if timed {
                        live.record(ns);
                    }
                    if slot.measured {
                        if slot.op == IoOp::Read {
                            read_latency.saturating_record(ns);
                            reads += 1;
                        } else {
                            write_latency.saturating_record(ns);
                            writes += 1;
                        }
                        last = t;
                    }
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        });
        self.in_flight = in_flight;
        if verify {
            for i in first_done..self.idle.len() {
                let tag = self.idle[i];
                self.verify_completion(tag);
            }
        }
        self.reads += reads;
        self.writes += writes;
        self.completed_all += ok;
        self.bytes_all = self.bytes_all.wrapping_add(ok.wrapping_mul(io_size));
        self.errors += errors;
        if self.first_error.is_none() {
            self.first_error = first_error;
        }
        if last != 0 {
            self.last_measured_completion = last;
        }

        self.advance(ticks());
        self.fill_queue();
        self.advance(ticks());
        if n > 0 {
            self.publish();
        }

        let finished = match self.phase {
            Phase::Drain => self.in_flight == 0,
            Phase::Readback => self.in_flight == 0 && self.pass_next >= self.region_ios,
            _ => false,
        };
        if finished {
            self.publish();
            self.finish();
            return PollStatus::Done;
        }
        let held_by_rate = self.rate_ticks != 0 && !self.idle.is_empty();
        if n > 0 || held_by_rate || (self.in_flight == 0 && !self.idle.is_empty()) {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::time::Duration;

    use crate::workload::RwMode;
    use gyre_reactor::{BufferPool, ClassConfig, PoolConfig};

    /// A queue that completes everything on the next poll and checks every request.
    struct FakeQueue {
        done: VecDeque<Completed>,
        block_size: u64,
        num_blocks: u64,
        fail_every: u64,
        seen: u64,
    }

    impl TargetQueue for FakeQueue {
        fn submit(&mut self, io: IoSpec, buf: SgList) {
            self.seen += 1;
            assert!(io.offset_blocks + io.num_blocks <= self.num_blocks);
            assert!(buf.len() as u64 >= io.num_blocks * self.block_size);
            let status = if self.fail_every != 0 && self.seen.is_multiple_of(self.fail_every) {
                Err(IoError::Device(5))
            } else {
                Ok(())
            };
            self.done.push_back(Completed {
                tag: io.tag,
                buf,
                status,
            });
        }

        fn poll<F: FnMut(Completed)>(&mut self, mut done: F) -> usize {
            let n = self.done.len();
            for _ in 0..n {
                if let Some(c) = self.done.pop_front() {
                    done(c);
                }
            }
            n
        }
    }

    fn run_job(limit: Limit, fail_every: u64) -> JobResult {
        run_job_at(limit, fail_every, None)
    }

    fn run_job_at(limit: Limit, fail_every: u64, rate: Option<u64>) -> JobResult {
        let w = Workload::new(
            RwMode::Randrw,
            Some(50),
            4096,
            8,
            limit,
            Duration::ZERO,
            Some(1),
        )
        .unwrap();
        let plan = JobPlan {
            index: 0,
            jobs: 1,
            workload: w,
            block_size: 512,
            region_start: 0,
            region_len: 1 << 20,
            connections: 1,
            rate,
        };
        let pool = BufferPool::new(&PoolConfig {
            classes: vec![ClassConfig {
                size: 4096,
                count: 8,
            }],
            prefer_hugepages: false,
        })
        .unwrap();
        let cache = pool.local();
        let bufs = (0..8).map(|_| cache.try_alloc(4096).unwrap()).collect();
        let q = FakeQueue {
            done: VecDeque::new(),
            block_size: 512,
            num_blocks: 2048,
            fail_every,
            seen: 0,
        };
        let gate = Arc::new(StartGate::default());
        let progress = Arc::new(JobProgress::default());
        let (tx, rx) = crossbeam::channel::unbounded();
        let mut job = Job::new(&plan, 0, q, bufs, gate.clone(), progress.clone(), tx).unwrap();
        assert_eq!(job.poll(), PollStatus::Idle, "waits for the gate");
        gate.start_tick.store(ticks(), Ordering::Release);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while job.poll() != PollStatus::Done {
            assert!(std::time::Instant::now() < deadline, "job did not finish");
        }
        assert_eq!(progress.phase(), Phase::Done);
        rx.try_recv().unwrap()
    }

    #[test]
    fn counts_exactly_the_requested_ios() {
        let r = run_job(Limit::Ios(1000), 0);
        assert_eq!(r.ios(), 1000);
        assert_eq!(r.errors, 0);
        assert_eq!(r.read_latency.len() + r.write_latency.len(), 1000);
        assert!(
            r.reads > 350 && r.writes > 350,
            "{} / {}",
            r.reads,
            r.writes
        );
        assert!(r.elapsed_ns > 0);
    }

    #[test]
    fn stops_after_the_time_and_counts_errors() {
        let t0 = std::time::Instant::now();
        let r = run_job(Limit::Time(Duration::from_millis(50)), 10);
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert!(r.ios() > 0);
        assert!(r.errors > 0);
        assert_eq!(r.first_error, Some(IoError::Device(5)));
        // Roughly one in ten failed.
        let total = r.ios() + r.errors;
        assert!(r.errors * 10 <= total + 10 && r.errors * 10 + 10 >= total);
    }

    #[test]
    fn the_rate_caps_iops() {
        let r = run_job_at(Limit::Time(Duration::from_millis(400)), 0, Some(5000));
        // 5000 IOPS for 0.4 s: 2000 I/Os, plus at most the initial burst (10 ms: 50 I/Os);
        // fewer only if this thread was starved for long.
        assert!(
            (1600..=2060).contains(&r.ios()),
            "{} I/Os in {} ns",
            r.ios(),
            r.elapsed_ns
        );
        let unlimited = run_job(Limit::Time(Duration::from_millis(100)), 0);
        assert!(
            unlimited.ios() > 5000,
            "{} I/Os without a cap",
            unlimited.ios()
        );
    }

    #[test]
    fn tick_conversion_matches_the_clock() {
        let c = TickConv::new();
        let one_sec = duration_to_ticks(Duration::from_secs(1));
        let ns = c.to_ns(one_sec);
        assert!((999_000_000..=1_001_000_000).contains(&ns), "{ns}");
        assert_eq!(c.to_ns(0), 0);
    }
}
