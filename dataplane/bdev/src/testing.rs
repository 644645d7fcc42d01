//! Test support shared by the backends' test suites: a counting global allocator and a
//! steady-state I/O loop on a real reactor, to prove that the I/O path allocates nothing.
//!
//! A test binary installs the allocator with
//! `#[global_allocator] static A: CountingAlloc = CountingAlloc;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use gyre_reactor::{local, BufferPool, CoreList, IdlePolicy, PollStatus, ReactorConfig, Reactors};

use crate::{Bdev, BdevRegistry, IoCompletion, IoOp, IoRequest};

/// Counts heap allocations (and reallocations) per thread.
pub struct CountingAlloc;

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

/// Allocations made so far on the calling thread (counted only where [`CountingAlloc`] is
/// the global allocator).
pub fn allocations_on_this_thread() -> u64 {
    ALLOCS.with(|c| c.get())
}

/// Result of [`steady_state_allocations`].
#[derive(Debug, Clone, Copy)]
pub struct AllocReport {
    /// Heap allocations on the reactor thread during the measured I/Os.
    pub allocations: u64,
    /// I/Os completed in the measured part.
    pub ios: u64,
}

/// Runs `warmup` then `measured` random 4 KiB reads and writes at queue depth `qd` against
/// `bdev` from a poller on one hybrid reactor, with buffers from `pool`, and counts the heap
/// allocations the reactor thread made during the measured part. Panics on an I/O error.
pub fn steady_state_allocations(
    bdev: Arc<dyn Bdev>,
    pool: BufferPool,
    qd: usize,
    warmup: u64,
    measured: u64,
) -> AllocReport {
    let reactors = Reactors::start(&ReactorConfig {
        cores: CoreList::first_available(1).expect("a core"),
        idle: IdlePolicy::hybrid(),
    })
    .expect("reactor");
    let reg = BdevRegistry::new();
    let name = bdev.info().name().to_string();
    reg.register(bdev).expect("register");
    let desc = Arc::new(
        reg.open(&name, true, "allocation test", None)
            .expect("open"),
    );
    let (tx, rx) = crossbeam::channel::bounded(1);
    let d = desc.clone();
    let per_io_blocks = 4096 / d.info().block_size() as u64;
    reactors
        .get(0)
        .expect("reactor 0")
        .send(move || {
            let mut ch = d.channel().expect("channel");
            let slots = ch.info().num_blocks() / per_io_blocks;
            let cache = pool.local();
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for tag in 0..qd as u64 {
                let buf = cache.try_alloc(4096).expect("pool holds qd buffers");
                let lba = (next() % slots) * per_io_blocks;
                ch.submit(IoRequest::new(IoOp::Write, lba, per_io_blocks, buf, tag));
            }
            let mut done: Vec<IoCompletion> = Vec::with_capacity(qd);
            let mut ios = 0u64;
            let mut start_allocs = 0;
            local()
                .expect("on the reactor")
                .register_poller("allocation-test", move || {
                    ch.poll(|c| done.push(c));
                    if done.is_empty() {
                        return PollStatus::Idle;
                    }
                    for c in done.drain(..) {
                        assert_eq!(c.status, Ok(()), "I/O failed");
                        ios += 1;
                        if ios == warmup {
                            start_allocs = allocations_on_this_thread();
                        }
                        if ios >= warmup + measured {
                            continue;
                        }
                        let mut req = c.req;
                        let r = next();
                        req.op = if r & 1 == 0 { IoOp::Read } else { IoOp::Write };
                        req.offset_blocks = ((r >> 1) % slots) * per_io_blocks;
                        ch.submit(req);
                    }
                    if ch.in_flight() == 0 {
                        let allocations = allocations_on_this_thread() - start_allocs;
                        let _ = tx.send(AllocReport {
                            allocations,
                            ios: ios - warmup,
                        });
                        return PollStatus::Done;
                    }
                    PollStatus::Busy
                });
        })
        .expect("send");
    let r = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the I/O loop finished in time");
    drop(reactors);
    r
}
