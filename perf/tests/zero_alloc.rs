//! A job in steady state allocates nothing: a counting global allocator around a job driving
//! malloc and null bdevs, and iSCSI sessions to Debian's tgt, polled on the test thread the way
//! a reactor polls it.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre_bdev::testing::{allocations_on_this_thread, CountingAlloc};
use gyre_perf::engine::allocate_buffers;
use gyre_perf::job::{Job, JobPlan, JobProgress, Phase, StartGate};
use gyre_perf::target::bdev::{BdevOptions, BdevSpec, BdevTarget};
use gyre_perf::target::iscsi::IscsiTarget;
use gyre_perf::target::{QueuePlan, Target, TargetOptions};
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

/// Polls a job over iSCSI sessions to tgt: `warmup` I/Os, then counts allocations over
/// `measured` more.
fn measure_iscsi(
    url: &str,
    rw: RwMode,
    bs: u64,
    qd: u32,
    warmup: u64,
    measured: u64,
) -> (u64, u64) {
    let w = Workload::new(
        rw,
        None,
        bs,
        qd,
        Limit::Time(Duration::from_secs(60)),
        Duration::ZERO,
        Some(5),
    )
    .unwrap();
    let target = IscsiTarget::connect(
        url,
        &TargetOptions {
            writable: true,
            queue_depth: qd,
            io_size: bs,
            connections: 2,
            block_size: None,
            buffered: false,
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
        connections: 2,
        rate: None,
    };
    let gate = Arc::new(StartGate::default());
    let progress = Arc::new(JobProgress::default());
    let (tx, _rx) = crossbeam::channel::unbounded();
    let buffers = allocate_buffers(&w, 0, plan.slots()).unwrap();
    let queue = target
        .open_queue(&QueuePlan {
            reactor: 0,
            connections: 0..2,
            queue_depth: qd,
        })
        .unwrap();
    let mut job = Job::new(&plan, 0, queue, buffers, gate.clone(), progress.clone(), tx).unwrap();
    gate.start_tick
        .store(gyre_reactor::clock::ticks().max(1), Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = || progress.completed.load(Ordering::Relaxed);
    while done() < warmup {
        assert_ne!(job.poll(), PollStatus::Done);
        assert!(Instant::now() < deadline, "warm-up took too long");
    }
    let before_ios = done();
    let before = allocations();
    while done() < before_ios + measured {
        job.poll();
        assert!(Instant::now() < deadline, "measurement took too long");
    }
    let allocs = allocations() - before;
    assert_eq!(progress.errors.load(Ordering::Relaxed), 0, "I/O failed");
    (allocs, done() - before_ios)
}

#[test]
fn iscsi_sessions_allocate_nothing_per_io() {
    let Some(tgt) = common::tgtd_or_skip("iscsi_sessions_allocate_nothing_per_io") else {
        return;
    };
    let url = format!("iscsi://127.0.0.1:{}/{}/1", tgt.port, common::TGT_IQN);
    // 4 KiB mixed (immediate data, Data-In), then 128 KiB writes (R2T-driven Data-Out) and
    // reads (several Data-In PDUs each).
    for (rw, bs, qd, warmup, measured) in [
        (RwMode::Randrw, 4096, 16, 2_000, 10_000),
        (RwMode::Randwrite, 128 << 10, 4, 200, 1_000),
        (RwMode::Randread, 128 << 10, 4, 200, 1_000),
    ] {
        let (allocs, ios) = measure_iscsi(&url, rw, bs, qd, warmup, measured);
        assert!(ios >= measured);
        assert_eq!(
            allocs, 0,
            "{rw} bs {bs}: {allocs} allocations in {ios} I/Os"
        );
    }
}
