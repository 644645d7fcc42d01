//! The engine: reactors on the chosen cores, one job per reactor against a [`Target`], a start
//! signal shared by all jobs, progress sampling, and collection of the results.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gyre_reactor::{
    clock::ticks, BufferPool, ClassConfig, CoreList, IdlePolicy, PoolConfig, ReactorConfig,
    ReactorHandle, ReactorLoad, Reactors, SgList,
};

use crate::job::{Job, JobPlan, JobProgress, JobResult, Phase, StartGate};
use crate::live::{quantile_between, BUCKETS};
use crate::rng::WyRand;
use crate::target::{QueuePlan, Target};
use crate::workload::{Limit, Workload};

/// How to run: where and how the reactors poll.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub cores: CoreList,
    pub idle: IdlePolicy,
    /// Connections in total, spread over the reactors (at least one each).
    pub connections: usize,
    /// Time between progress samples.
    pub progress_interval: Duration,
    /// Give up when no I/O completes for this long (a hung device).
    pub stall_timeout: Duration,
}

impl EngineConfig {
    pub fn new(cores: CoreList, idle: IdlePolicy) -> Self {
        EngineConfig {
            connections: cores.len().max(1),
            cores,
            idle,
            progress_interval: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// One progress sample, over the interval since the previous one.
#[derive(Debug, Clone)]
pub struct ProgressSample {
    pub elapsed: Duration,
    /// The least advanced phase of any job.
    pub phase: Phase,
    pub iops: f64,
    pub bytes_per_sec: f64,
    /// Busy fraction of the reactors over the interval, averaged.
    pub busy: f64,
    /// Failed I/Os so far.
    pub errors: u64,
    /// `--verify` mismatches so far.
    pub mismatches: u64,
    /// 99th percentile latency over the interval, in nanoseconds (coarse: ±12.5%).
    pub p99_ns: Option<u64>,
}

/// The connections of reactor `index` of `reactors` when `total` are spread over them
/// (run-wide indexes, contiguous; the first reactors take one more when it does not divide).
pub fn connections_of(index: usize, reactors: usize, total: usize) -> std::ops::Range<usize> {
    let reactors = reactors.max(1);
    let base = total / reactors;
    let extra = total % reactors;
    let start = index * base + index.min(extra);
    start..start + base + usize::from(index < extra)
}

/// The byte region of job `index` of `jobs`: all of `[start, start + len)`, or with
/// `--verify` its own slice of it (whole I/Os), so that each job tracks its blocks alone.
pub fn job_region(w: &Workload, start: u64, len: u64, index: usize, jobs: usize) -> (u64, u64) {
    if !w.verify || jobs <= 1 {
        return (start, len);
    }
    let ios = len / w.io_size;
    let jobs = jobs as u64;
    let i = index as u64;
    let first = ios * i / jobs;
    let end = ios * (i + 1) / jobs;
    (start + first * w.io_size, (end - first) * w.io_size)
}

/// What a run produced: each job's result (in reactor order) and its reactor's load over the
/// measurement.
#[derive(Debug)]
pub struct RunOutcome {
    pub jobs: Vec<JobResult>,
    pub loads: Vec<ReactorLoad>,
    pub wall: Duration,
}

/// Control-path timeout for calls into reactors.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `workload` against `target` and returns when every job has drained.
pub fn run<T: Target>(
    target: Arc<T>,
    workload: &Workload,
    config: &EngineConfig,
    mut on_progress: impl FnMut(&ProgressSample),
) -> Result<RunOutcome> {
    let info = target.info().clone();
    workload.check_against(&info)?;
    let (region_start, region_len) = workload.region(info.size_bytes(), info.block_size)?;
    let mut reactors = Reactors::start(&ReactorConfig {
        cores: config.cores.clone(),
        idle: config.idle,
    })
    .with_context(|| format!("cannot start reactors on cores {}", config.cores))?;
    let handles: Vec<ReactorHandle> = reactors.handles().to_vec();
    let jobs = handles.len();
    if config.connections < jobs {
        bail!(
            "--connections {} is fewer than the {jobs} reactors (each needs one)",
            config.connections
        );
    }
    let gate = Arc::new(StartGate::default());
    let (tx, rx) = crossbeam::channel::unbounded::<JobResult>();
    let mut progress = Vec::with_capacity(jobs);

    for h in &handles {
        let connections = connections_of(h.index(), jobs, config.connections);
        let (start, len) = job_region(workload, region_start, region_len, h.index(), jobs);
        if len < workload.io_size {
            bail!("the region is too small to give each of the {jobs} reactors one I/O");
        }
        let plan = JobPlan {
            index: h.index(),
            jobs,
            workload: workload.clone(),
            block_size: info.block_size,
            region_start: start,
            region_len: len,
            connections: connections.len(),
            rate: workload.rate.map(|r| {
                let share = r / jobs as u64 + u64::from((h.index() as u64) < r % jobs as u64);
                share.max(1)
            }),
        };
        let queue_plan = QueuePlan {
            reactor: h.index(),
            connections,
            queue_depth: workload.queue_depth,
        };
        let p = Arc::new(JobProgress::default());
        progress.push(p.clone());
        let target = target.clone();
        let gate = gate.clone();
        let tx = tx.clone();
        let core = h.core();
        h.call(
            move || setup_job(&plan, &queue_plan, core, target, gate, p, tx),
            CALL_TIMEOUT,
        )
        .map_err(|e| anyhow!("reactor on core {core}: {e}"))?
        .with_context(|| format!("cannot set up the job on core {core}"))?;
    }
    drop(tx);

    // Go: every job starts at the same tick. Wake sleeping (hybrid) reactors so they see it.
    let started = Instant::now();
    gate.start_tick.store(ticks().max(1), Ordering::Release);
    for h in &handles {
        let _ = h.send(|| {});
    }

    let mut results: Vec<Option<JobResult>> = (0..jobs).map(|_| None).collect();
    let mut end_loads: Vec<Option<ReactorLoad>> = vec![None; jobs];
    // The reactors' load is counted from when every job measures (after any prefill and
    // ramp); the engine looks at the phases at each sample and when the ramp should end.
    let mut measure_loads: Option<Vec<ReactorLoad>> = None;
    let min_phase = |progress: &[Arc<JobProgress>]| {
        progress
            .iter()
            .map(|p| p.phase())
            .min_by_key(|p| *p as u8)
            .unwrap_or(Phase::Done)
    };
    let mut measure_at = started + workload.ramp;
    let mut live_prev = vec![0u64; BUCKETS];
    let mut live_now = vec![0u64; BUCKETS];
    let mut prev_loads: Vec<ReactorLoad> = handles.iter().map(|h| h.load()).collect();
    let mut prev_done = 0u64;
    let mut prev_bytes = 0u64;
    let mut prev_at = started;
    let mut next_sample = started + config.progress_interval;
    let mut last_progress = (0u64, Instant::now());
    let mut received = 0;

    while received < jobs {
        let now = Instant::now();
        let mut wake = next_sample;
        if measure_loads.is_none() {
            wake = wake.min(measure_at);
        }
        if now < wake {
            match rx.recv_timeout(wake - now) {
                Ok(r) => {
                    let i = r.index;
                    if i < jobs && results[i].is_none() {
                        end_loads[i] = Some(handles[i].load());
                        results[i] = Some(r);
                        received += 1;
                    }
                    continue;
                }
                Err(crossbeam::channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam::channel::RecvTimeoutError::Disconnected) => {
                    bail!("a reactor stopped before its job finished");
                }
            }
        }
        let now = Instant::now();
        if measure_loads.is_none() && now >= measure_at {
            if min_phase(&progress) as u8 >= Phase::Measure as u8 {
                measure_loads = Some(handles.iter().map(|h| h.load()).collect());
            } else {
                measure_at = now + Duration::from_millis(10);
            }
        }
        if now >= next_sample {
            let done: u64 = progress
                .iter()
                .map(|p| p.completed.load(Ordering::Relaxed))
                .sum();
            let bytes: u64 = progress
                .iter()
                .map(|p| p.bytes.load(Ordering::Relaxed))
                .sum();
            let errors: u64 = progress
                .iter()
                .map(|p| p.errors.load(Ordering::Relaxed))
                .sum();
            let mismatches: u64 = progress
                .iter()
                .map(|p| p.mismatches.load(Ordering::Relaxed))
                .sum();
            live_now.fill(0);
            for p in &progress {
                p.live.add_to(&mut live_now);
            }
            let p99_ns = quantile_between(&live_now, &live_prev, 0.99);
            std::mem::swap(&mut live_now, &mut live_prev);
            let loads: Vec<ReactorLoad> = handles.iter().map(|h| h.load()).collect();
            let busy = loads
                .iter()
                .zip(&prev_loads)
                .map(|(l, p)| l.since(p).busy_fraction())
                .sum::<f64>()
                / jobs as f64;
            let dt = now.duration_since(prev_at).as_secs_f64().max(1e-9);
            let phase = min_phase(&progress);
            on_progress(&ProgressSample {
                elapsed: now.duration_since(started),
                phase,
                iops: done.saturating_sub(prev_done) as f64 / dt,
                bytes_per_sec: bytes.saturating_sub(prev_bytes) as f64 / dt,
                busy,
                errors,
                mismatches,
                p99_ns,
            });
            if done + errors != last_progress.0 {
                last_progress = (done + errors, now);
            } else if now.duration_since(last_progress.1) >= config.stall_timeout {
                bail!(
                    "no I/O completed for {:?}: the target seems hung",
                    config.stall_timeout
                );
            }
            prev_done = done;
            prev_bytes = bytes;
            prev_loads = loads;
            prev_at = now;
            while next_sample <= now {
                next_sample += config.progress_interval;
            }
        }
    }
    let wall = started.elapsed();
    reactors.stop();

    let measure_loads = measure_loads.unwrap_or_default();
    let loads = end_loads
        .iter()
        .enumerate()
        .map(|(i, end)| {
            let end = end.unwrap_or_default();
            match measure_loads.get(i) {
                Some(start) => end.since(start),
                None => ReactorLoad::default(),
            }
        })
        .collect();
    let jobs = results
        .into_iter()
        .map(|r| r.ok_or_else(|| anyhow!("a job returned no result")))
        .collect::<Result<Vec<_>>>()?;
    Ok(RunOutcome { jobs, loads, wall })
}

/// Runs on the reactor: buffers, queue and job, registered as a poller.
fn setup_job<T: Target>(
    plan: &JobPlan,
    queue_plan: &QueuePlan,
    core: usize,
    target: Arc<T>,
    gate: Arc<StartGate>,
    progress: Arc<JobProgress>,
    results: crossbeam::channel::Sender<JobResult>,
) -> Result<()> {
    let w = &plan.workload;
    let local = gyre_reactor::local().context("not on a reactor thread")?;
    let buffers = allocate_buffers(w, plan.index, plan.slots())?;
    let queue = target.open_queue(queue_plan)?;
    let job = Job::new(plan, core, queue, buffers, gate, progress, results)?;
    local.register_poller("gyre-perf-job", job);
    Ok(())
}

/// `qd` buffers of the I/O size (one per slot), filled with pseudo-random bytes so that
/// writes do not carry zeroes a device could optimise away. They come from the global pool
/// when it has room for all of them (its regions are what the io_uring driver registers as
/// fixed buffers), else from a pool of this job's own holding exactly `qd` buffers.
pub fn allocate_buffers(w: &Workload, index: usize, qd: usize) -> Result<Vec<SgList>> {
    let len = w.io_size as usize;
    let mut buffers = match gyre_reactor::global_pool() {
        Ok(pool) => take_buffers(pool, qd, len, true).unwrap_or_default(),
        Err(e) => {
            tracing::debug!(error = %e, "no global buffer pool");
            Vec::new()
        }
    };
    if buffers.len() < qd {
        let class = len.div_ceil(4096) * 4096;
        let pool = BufferPool::new(&PoolConfig {
            classes: vec![ClassConfig {
                size: class,
                count: qd,
            }],
            prefer_hugepages: true,
        })
        .with_context(|| format!("cannot allocate {qd} I/O buffers of {class} bytes"))?;
        buffers = take_buffers(&pool, qd, len, false).context("the job's buffer pool ran dry")?;
    }
    let mut rng = WyRand::new(crate::rng::mix_seed(w.seed ^ 0xb0f, index as u64));
    for sg in &mut buffers {
        for seg in sg.segments_mut() {
            for chunk in seg.as_mut_slice().chunks_mut(8) {
                let v = rng.next_u64().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
    }
    Ok(buffers)
}

/// `n` buffers of `len` bytes from `pool`, each in one segment if `single` (else any), or
/// `None` (everything taken handed back) if the pool cannot provide them.
fn take_buffers(pool: &BufferPool, n: usize, len: usize, single: bool) -> Option<Vec<SgList>> {
    let cache = pool.local();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let sg = cache.try_alloc(len)?;
        if single && sg.num_segments() != 1 {
            return None;
        }
        out.push(sg);
    }
    Some(out)
}

/// Run-wide facts about a limit, for reports.
pub fn limit_parts(w: &Workload) -> (Option<f64>, Option<u64>) {
    match w.limit {
        Limit::Time(d) => (Some(d.as_secs_f64()), None),
        Limit::Ios(n) => (None, Some(n)),
    }
}
