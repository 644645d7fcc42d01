//! A job in steady state allocates nothing: a counting global allocator around a job driving
//! malloc and null bdevs, polled on the test thread the way a reactor polls it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre_bdev::testing::{allocations_on_this_thread, CountingAlloc};
use gyre_perf::engine::allocate_buffers;
use gyre_perf::job::{Job, JobPlan, JobProgress, Phase, StartGate};
use gyre_perf::target::bdev::{BdevOptions, BdevSpec, BdevTarget};
use gyre_perf::target::{QueuePlan, Target};
use gyre_perf::workload::{Limit, RwMode, Workload};
use gyre_reactor::{PollStatus, Poller};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> u64 {
    allocations_on_this_thread()
}

/// Polls a randrw job until `warmup` I/Os completed, then counts allocations over `measured`
/// more. Returns (allocations, I/Os in the measured part).
fn measure(spec: &str, rw: RwMode, qd: u32, warmup: u64, measured: u64) -> (u64, u64) {
    let w = Workload::new(
        rw,
        None,
        4096,
        qd,
        Limit::Time(Duration::from_secs(60)),
        Duration::ZERO,
        Some(3),
    )
    .unwrap();
    let target = BdevTarget::create(
        spec,
        &BdevSpec::parse(spec).unwrap(),
        &BdevOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap();
    let plan = JobPlan {
        index: 0,
        jobs: 1,
        workload: w.clone(),
        block_size: target.info().block_size,
        region_start: 0,
        region_len: target.info().size_bytes(),
        connections: 1,
        rate: None,
    };
    let gate = Arc::new(StartGate::default());
    let progress = Arc::new(JobProgress::default());
    let (tx, _rx) = crossbeam::channel::unbounded();
    let buffers = allocate_buffers(&w, 0, plan.slots()).unwrap();
    let queue = target
        .open_queue(&QueuePlan {
            reactor: 0,
            connections: 0..1,
            queue_depth: qd,
        })
        .unwrap();
    let mut job = Job::new(&plan, 0, queue, buffers, gate.clone(), progress.clone(), tx).unwrap();
    gate.start_tick
        .store(gyre_reactor::clock::ticks().max(1), Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = || progress.completed.load(Ordering::Relaxed);
    while done() < warmup {
        assert_ne!(job.poll(), PollStatus::Done);
        assert!(Instant::now() < deadline, "warm-up took too long");
    }
    assert_eq!(progress.phase(), Phase::Measure);
    let before_ios = done();
    let before = allocations();
    while done() < before_ios + measured {
        job.poll();
    }
    let allocs = allocations() - before;
    assert!(Instant::now() < deadline, "measurement took too long");
    (allocs, done() - before_ios)
}

#[test]
fn randrw_on_malloc_allocates_nothing_per_io() {
    let (allocs, ios) = measure("malloc:64M", RwMode::Randrw, 32, 10_000, 200_000);
    assert!(ios >= 200_000);
    assert_eq!(allocs, 0, "{allocs} allocations in {ios} I/Os");
}

#[test]
fn sequential_reads_on_null_allocate_nothing_per_io() {
    let (allocs, ios) = measure("null:1G", RwMode::Read, 1, 1_000, 100_000);
    assert!(ios >= 100_000);
    assert_eq!(allocs, 0, "{allocs} allocations in {ios} I/Os");
}
