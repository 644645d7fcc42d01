//! The steady-state I/O path of a volume allocates nothing: random 4 KiB reads and writes at
//! queue depth 16 on an allocated thick volume, counted by a global allocator on the reactor
//! that runs them.

use gyre_bdev::testing::{steady_state_allocations, CountingAlloc};
use gyre_bdev::{BdevRegistry, MallocBdev};
use gyre_lvol::Pool;
use gyre_reactor::{
    init_global_pool, BufferPool, ClassConfig, CoreList, IdlePolicy, PoolConfig, ReactorConfig,
    Reactors,
};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn volume_reads_and_writes_allocate_nothing_in_steady_state() {
    let _ = init_global_pool(&PoolConfig {
        classes: vec![
            ClassConfig {
                size: 4096,
                count: 256,
            },
            ClassConfig {
                size: 128 << 10,
                count: 32,
            },
        ],
        prefer_hugepages: false,
    });
    let engine = Reactors::start(&ReactorConfig {
        cores: CoreList::first_available(1).expect("core"),
        idle: IdlePolicy::hybrid(),
    })
    .expect("reactor");
    let reg = BdevRegistry::new();
    reg.register(MallocBdev::create("base", 16 << 20, 4096).expect("malloc"))
        .expect("register");
    let owner = engine.get(0).expect("reactor").clone();
    let pool = Pool::create(&reg, owner, "base", "p", 64 << 10).expect("pool");
    pool.create_volume("thick", 8 << 20, false).expect("volume");
    let bdev = reg.get("p/thick").expect("volume bdev");
    let buffers = BufferPool::new(&PoolConfig {
        classes: vec![ClassConfig {
            size: 4096,
            count: 64,
        }],
        prefer_hugepages: false,
    })
    .expect("buffers");
    let r = steady_state_allocations(bdev, buffers, 16, 2000, 20000);
    assert!(r.ios >= 20000, "{} I/Os", r.ios);
    assert_eq!(r.allocations, 0, "heap allocations on the I/O path");
    pool.close(true).expect("close");
}
