//! Proof that steady-state I/O on malloc and null allocates nothing, measured on a real
//! reactor so that the reactor loop is covered too.

use gyre_bdev::testing::{allocations_on_this_thread, steady_state_allocations, CountingAlloc};
use gyre_bdev::{MallocBdev, NullBdev};
use gyre_reactor::{BufferPool, ClassConfig, PoolConfig};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const MEASURED: u64 = 200_000;

fn pool() -> BufferPool {
    BufferPool::new(&PoolConfig {
        classes: vec![ClassConfig {
            size: 4096,
            count: 256,
        }],
        prefer_hugepages: false,
    })
    .unwrap()
}

#[test]
fn malloc_io_allocates_nothing_in_steady_state() {
    let bdev = MallocBdev::create("m", 64 << 20, 512).unwrap();
    let r = steady_state_allocations(bdev, pool(), 32, 20_000, MEASURED);
    assert!(r.ios >= MEASURED, "only {} I/Os", r.ios);
    assert_eq!(
        r.allocations, 0,
        "{} heap allocations during {} I/Os",
        r.allocations, r.ios
    );
}

#[test]
fn null_io_allocates_nothing_in_steady_state() {
    let bdev = NullBdev::create("n", 1 << 30, 4096).unwrap();
    let r = steady_state_allocations(bdev, pool(), 32, 20_000, MEASURED);
    assert!(r.ios >= MEASURED, "only {} I/Os", r.ios);
    assert_eq!(
        r.allocations, 0,
        "{} heap allocations during {} I/Os",
        r.allocations, r.ios
    );
}

#[test]
fn the_counter_sees_allocations() {
    // Guards the guard: a test that cannot fail proves nothing.
    let before = allocations_on_this_thread();
    let v: Vec<u64> = Vec::with_capacity(std::hint::black_box(10));
    drop(std::hint::black_box(v));
    assert_eq!(allocations_on_this_thread() - before, 1);
}
