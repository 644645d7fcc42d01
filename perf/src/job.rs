//! A job: the poller that drives one reactor's queue to a target.
//!
//! Everything a job needs is made before the first I/O: `qd` slots each owning its buffer, the
//! offset generator, the latency histograms, a list for completed slots. Per I/O it reads the
//! tick counter twice, draws a number or two, records a histogram value and moves the buffer
//! between its slot and the queue — no allocation, lock or syscall. Progress is published
//! with relaxed stores (this job is the only writer) once per poll.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use gyre_bdev::{IoError, IoOp};
use gyre_reactor::clock::{duration_to_ticks, ticks, ticks_per_sec};
use gyre_reactor::{PollStatus, Poller, SgList};
use hdrhistogram::Histogram;

use crate::rng::{mix_seed, OffsetGen, WyRand};
use crate::target::{Completed, IoSpec, TargetQueue};
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
    /// Warming up: I/O is not counted.
    Ramp = 1,
    /// Measuring.
    Measure = 2,
    /// No more submissions; waiting for in-flight I/O.
    Drain = 3,
    /// Finished; results sent.
    Done = 4,
}

impl Phase {
    pub fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Waiting,
            1 => Phase::Ramp,
            2 => Phase::Measure,
            3 => Phase::Drain,
            _ => Phase::Done,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Waiting => "wait",
            Phase::Ramp => "ramp",
            Phase::Measure => "run",
            Phase::Drain => "drain",
            Phase::Done => "done",
        }
    }
}

/// A job's live counters, written only by the job (relaxed stores), read by the main thread.
/// Aligned to its own cache lines so that reading it does not disturb its neighbours.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct JobProgress {
    /// I/Os completed successfully, ramp included.
    pub completed: AtomicU64,
    /// Bytes of those.
    pub bytes: AtomicU64,
    /// Failed I/Os, ramp included.
    pub errors: AtomicU64,
    pub phase: AtomicU8,
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
    /// Failed I/Os, ramp included.
    pub errors: u64,
    pub first_error: Option<IoError>,
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
}

struct Slot {
    buf: Option<SgList>,
    submitted_at: u64,
    op: IoOp,
    measured: bool,
}

/// The per-core load generator, registered as an active poller on its reactor.
pub struct Job<Q: TargetQueue> {
    queue: Q,
    index: usize,
    core: usize,
    slots: Box<[Slot]>,
    /// Slots completed in this poll and waiting to be resubmitted (capacity qd: never grows).
    ready: Vec<u32>,
    in_flight: u32,
    offsets: OffsetGen,
    mix: WyRand,
    read_pct: u8,
    block_shift: u32,
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
    errors: u64,
    first_error: Option<IoError>,
    conv: TickConv,
    read_latency: Histogram<u64>,
    write_latency: Histogram<u64>,
    progress: Arc<JobProgress>,
    results: crossbeam::channel::Sender<JobResult>,
}

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
            buffers.len() == w.queue_depth as usize,
            "{} buffers for queue depth {}",
            buffers.len(),
            w.queue_depth
        );
        anyhow::ensure!(
            buffers.iter().all(|b| b.len() as u64 >= w.io_size),
            "a buffer is smaller than the I/O size"
        );
        let seed = mix_seed(w.seed, plan.index as u64);
        // Sequential jobs start spread over the region so that they do not read the same
        // blocks in lockstep.
        let slots_in_region = plan.region_len / w.io_size;
        let first_slot =
            (slots_in_region as u128 * plan.index as u128 / plan.jobs.max(1) as u128) as u64;
        let offsets = OffsetGen::new(
            w.rw.is_random(),
            plan.region_start,
            plan.region_len,
            w.io_size,
            first_slot,
            seed,
        )?;
        let slots: Box<[Slot]> = buffers
            .into_iter()
            .map(|buf| Slot {
                buf: Some(buf),
                submitted_at: 0,
                op: IoOp::Read,
                measured: false,
            })
            .collect();
        let run_ticks = match w.limit {
            Limit::Time(d) => Some(duration_to_ticks(d)),
            Limit::Ios(_) => None,
        };
        Ok(Job {
            queue,
            index: plan.index,
            core,
            ready: Vec::with_capacity(slots.len()),
            slots,
            in_flight: 0,
            offsets,
            mix: WyRand::new(mix_seed(seed, u64::MAX)),
            read_pct: w.read_pct,
            block_shift: bs.trailing_zeros(),
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
            errors: 0,
            first_error: None,
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

    /// Whether a slot may be (re)submitted now, and whether that I/O is measured.
    #[inline]
    fn admit(&mut self) -> Option<bool> {
        match self.phase {
            Phase::Ramp => Some(false),
            Phase::Measure => match self.quota {
                Some(q) if self.measured_submitted >= q => None,
                _ => {
                    self.measured_submitted += 1;
                    Some(true)
                }
            },
            _ => None,
        }
    }

    #[inline]
    fn submit(&mut self, tag: u32, measured: bool) {
        let op = if self.read_pct == 100 || (self.read_pct != 0 && self.mix.percent(self.read_pct))
        {
            IoOp::Read
        } else {
            IoOp::Write
        };
        let offset = self.offsets.next_offset();
        let slot = &mut self.slots[tag as usize];
        let Some(buf) = slot.buf.take() else {
            // A slot is only ready when its buffer is home; nothing to do otherwise.
            return;
        };
        slot.op = op;
        slot.measured = measured;
        slot.submitted_at = ticks();
        self.in_flight += 1;
        self.queue.submit(
            IoSpec {
                op,
                offset_blocks: offset >> self.block_shift,
                num_blocks: self.blocks_per_io,
                tag: tag as u64,
            },
            buf,
        );
    }

    /// Moves the phase on by the clock and the quota.
    #[inline]
    fn advance(&mut self, now: u64) {
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
    }

    fn start(&mut self, start_tick: u64) {
        self.measure_start = start_tick.saturating_add(self.ramp_ticks);
        self.end_tick = match self.run_ticks {
            Some(t) => self.measure_start.saturating_add(t),
            None => u64::MAX,
        };
        self.set_phase(if self.ramp_ticks > 0 {
            Phase::Ramp
        } else {
            Phase::Measure
        });
        self.advance(ticks());
        for tag in 0..self.slots.len() as u32 {
            match self.admit() {
                Some(measured) => self.submit(tag, measured),
                None => break,
            }
        }
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
        let result = JobResult {
            index: self.index,
            core: self.core,
            reads: self.reads,
            writes: self.writes,
            errors: self.errors,
            first_error: self.first_error,
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
        p.bytes.store(
            self.completed_all.wrapping_mul(self.io_size),
            Ordering::Relaxed,
        );
        p.errors.store(self.errors, Ordering::Relaxed);
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
                self.start(start);
                return PollStatus::Busy;
            }
            Phase::Done => return PollStatus::Done,
            _ => {}
        }

        let conv = self.conv;
        let slots = &mut self.slots;
        let ready = &mut self.ready;
        let read_latency = &mut self.read_latency;
        let write_latency = &mut self.write_latency;
        let mut reads = 0u64;
        let mut writes = 0u64;
        let mut ok = 0u64;
        let mut errors = 0u64;
        let mut first_error = None;
        let mut last = 0u64;
        let n = self.queue.poll(|c: Completed| {
            let t = ticks();
            let Some(slot) = slots.get_mut(c.tag as usize) else {
                // Not one of ours: a broken target. Count it as an error.
                errors += 1;
                return;
            };
            slot.buf = Some(c.buf);
            ready.push(c.tag as u32);
            match c.status {
                Ok(()) => {
                    ok += 1;
                    if slot.measured {
                        let ns = conv.to_ns(t.saturating_sub(slot.submitted_at));
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
        self.in_flight = self.in_flight.saturating_sub(self.ready.len() as u32);
        self.reads += reads;
        self.writes += writes;
        self.completed_all += ok;
        self.errors += errors;
        if self.first_error.is_none() {
            self.first_error = first_error;
        }
        if last != 0 {
            self.last_measured_completion = last;
        }

        self.advance(ticks());
        // Resubmit what came back, as long as the phase allows; the rest stays idle.
        let mut i = 0;
        while i < self.ready.len() {
            let tag = self.ready[i];
            match self.admit() {
                Some(measured) => self.submit(tag, measured),
                None => break,
            }
            i += 1;
        }
        self.ready.clear();
        if n > 0 {
            self.advance(ticks());
            self.publish();
        }

        if self.phase == Phase::Drain && self.in_flight == 0 {
            self.publish();
            self.finish();
            return PollStatus::Done;
        }
        if n > 0 {
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
    fn tick_conversion_matches_the_clock() {
        let c = TickConv::new();
        let one_sec = duration_to_ticks(Duration::from_secs(1));
        let ns = c.to_ns(one_sec);
        assert!((999_000_000..=1_001_000_000).contains(&ns), "{ns}");
        assert_eq!(c.to_ns(0), 0);
    }
}
