//! Proof that steady-state I/O allocates nothing: a counting global allocator, and an I/O loop
//! running as a poller on a real reactor (so the reactor loop is measured too).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use gyre_bdev::{Bdev, BdevRegistry, IoCompletion, IoOp, IoRequest, MallocBdev, NullBdev};
use gyre_reactor::{
    local, BufferPool, ClassConfig, CoreList, IdlePolicy, PollStatus, PoolConfig, ReactorConfig,
    Reactors,
};

struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations_on_this_thread() -> u64 {
    ALLOCS.with(|c| c.get())
}

const QD: usize = 32;
const WARMUP: u64 = 20_000;
const MEASURED: u64 = 200_000;

/// Runs WARMUP then MEASURED random 4 KiB reads and writes at QD 32 on the reactor and returns
/// (allocations during the measured part, I/Os measured).
fn measure(bdev: Arc<dyn Bdev>) -> (u64, u64) {
    let reactors = Reactors::start(&ReactorConfig {
        cores: CoreList::first_available(1).unwrap(),
        idle: IdlePolicy::hybrid(),
    })
    .unwrap();
    let reg = BdevRegistry::new();
    let name = bdev.info().name().to_string();
    reg.register(bdev).unwrap();
    let desc = Arc::new(reg.open(&name, true, "zero-alloc test", None).unwrap());
    let pool = BufferPool::new(&PoolConfig {
        classes: vec![ClassConfig {
            size: 4096,
            count: 256,
        }],
        prefer_hugepages: false,
    })
    .unwrap();
    let (tx, rx) = crossbeam::channel::bounded(1);
    let d = desc.clone();
    reactors
        .get(0)
        .unwrap()
        .send(move || {
            let mut ch = d.channel().unwrap();
            let nblocks = ch.info().num_blocks() / 8;
            let cache = pool.local();
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for tag in 0..QD as u64 {
                let buf = cache.try_alloc(4096).unwrap();
                ch.submit(IoRequest::new(
                    IoOp::Write,
                    (next() % nblocks) * 8,
                    8,
                    buf,
                    tag,
                ));
            }
            let mut done: Vec<IoCompletion> = Vec::with_capacity(QD);
            let mut ios = 0u64;
            let mut start_allocs = 0;
            local().unwrap().register_poller("io", move || {
                ch.poll(|c| done.push(c));
                if done.is_empty() {
                    return PollStatus::Idle;
                }
                for c in done.drain(..) {
                    assert_eq!(c.status, Ok(()));
                    ios += 1;
                    if ios == WARMUP {
                        start_allocs = allocations_on_this_thread();
                    }
                    if ios >= WARMUP + MEASURED {
                        continue;
                    }
                    let mut req = c.req;
                    let r = next();
                    req.op = if r & 1 == 0 { IoOp::Read } else { IoOp::Write };
                    req.offset_blocks = ((r >> 1) % nblocks) * 8;
                    ch.submit(req);
                }
                if ch.in_flight() == 0 {
                    let delta = allocations_on_this_thread() - start_allocs;
                    let _ = tx.send((delta, ios - WARMUP));
                    return PollStatus::Done;
                }
                PollStatus::Busy
            });
        })
        .unwrap();
    let r = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("I/O loop finished");
    drop(reactors);
    r
}

#[test]
fn malloc_io_allocates_nothing_in_steady_state() {
    let (allocs, ios) = measure(MallocBdev::create("m", 64 << 20, 512).unwrap());
    assert!(ios >= MEASURED, "only {ios} I/Os");
    assert_eq!(allocs, 0, "{allocs} heap allocations during {ios} I/Os");
}

#[test]
fn null_io_allocates_nothing_in_steady_state() {
    let (allocs, ios) = measure(NullBdev::create("n", 1 << 30, 512).unwrap());
    assert!(ios >= MEASURED, "only {ios} I/Os");
    assert_eq!(allocs, 0, "{allocs} heap allocations during {ios} I/Os");
}

#[test]
fn the_counter_sees_allocations() {
    // Guards the guard: a test that cannot fail proves nothing.
    let before = allocations_on_this_thread();
    let v: Vec<u64> = Vec::with_capacity(std::hint::black_box(10));
    drop(std::hint::black_box(v));
    assert_eq!(allocations_on_this_thread() - before, 1);
}
