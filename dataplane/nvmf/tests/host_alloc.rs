//! The NVMe/TCP host's I/O path allocates nothing in steady state: submissions and polls of
//! reads and writes (in-capsule and R2T-driven, with header and data digests) are counted on
//! the host's thread by a counting global allocator.

use std::time::{Duration, Instant};

use gyre_bdev::testing::{allocations_on_this_thread, CountingAlloc};
use gyre_bdev::{BdevRegistry, MallocBdev};
use gyre_nvmf::host::{Controller, HostOptions, IoCompletion, IoQueue};
use gyre_nvmf::{ListenAddress, NamespaceConfig, NvmfTarget, SubsystemConfig, TransportOptions};
use gyre_reactor::{
    BufferPool, ClassConfig, CoreList, IdlePolicy, PoolConfig, ReactorConfig, Reactors, SgList,
};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const NQN: &str = "nqn.2016-06.io.gyre:alloc";
const QD: usize = 16;

/// Keeps `QD` commands in flight for `ios` completions: 4 KiB writes (in the capsule),
/// 64 KiB writes (R2T, several H2CData PDUs) and reads of both sizes, by slot.
fn run(
    q: &mut IoQueue,
    ns: gyre_nvmf::host::Namespace,
    bufs: &mut [Option<SgList>],
    ready: &mut Vec<usize>,
    ios: u64,
) {
    let size = |slot: usize| if slot.is_multiple_of(2) { 1u32 } else { 16 };
    ready.clear();
    ready.extend(0..QD);
    let mut done = 0u64;
    let mut round = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while done < ios {
        while let Some(slot) = ready.pop() {
            let buf = bufs[slot].take().expect("buffer");
            let slba = (slot as u64) * 16;
            let nlb = size(slot);
            round += 1;
            let r = if (round + slot as u64).is_multiple_of(2) {
                q.submit_write(ns, slba, nlb, buf, slot as u64)
            } else {
                q.submit_read(ns, slba, nlb, buf, slot as u64)
            };
            assert!(r.is_ok(), "submit refused");
        }
        q.poll(|c: IoCompletion| {
            assert!(c.result.is_ok(), "{:?}", c.result);
            let slot = c.tag as usize;
            bufs[slot] = c.buf;
            ready.push(slot);
            done += 1;
        });
        assert!(Instant::now() < deadline, "I/O stalled");
    }
    // Drain.
    while ready.len() < QD {
        q.poll(|c: IoCompletion| {
            bufs[c.tag as usize] = c.buf;
            ready.push(c.tag as usize);
        });
        assert!(Instant::now() < deadline, "drain stalled");
    }
}

#[test]
fn steady_state_io_allocates_nothing() {
    let reactors = Reactors::start(&ReactorConfig {
        cores: "0".parse::<CoreList>().unwrap(),
        idle: IdlePolicy::hybrid(),
    })
    .unwrap();
    let registry = BdevRegistry::new();
    registry
        .register(MallocBdev::create("m0", 16 << 20, 4096).unwrap())
        .unwrap();
    let options = TransportOptions {
        max_h2c_data: 16 * 1024,
        ..TransportOptions::default()
    };
    let target = NvmfTarget::start(reactors.handles(), registry, options).unwrap();
    let mut cfg = SubsystemConfig::new(NQN);
    cfg.allow_any_host = true;
    target.create_subsystem(cfg).unwrap();
    target
        .add_namespace(NQN, NamespaceConfig::new("m0"))
        .unwrap();
    let addr = target
        .add_listener(NQN, "127.0.0.1:0".parse::<ListenAddress>().unwrap())
        .unwrap();

    let opts = HostOptions {
        header_digest: true,
        data_digest: true,
        io_queue_depth: QD as u16,
        ..HostOptions::default()
    };
    let mut ctrl = Controller::connect(addr.0, NQN, &opts).unwrap();
    let ns = ctrl.identify_namespace(1).unwrap().handle();
    let mut q = ctrl.connect_io_queue().unwrap();
    let pool = BufferPool::new(&PoolConfig {
        classes: vec![ClassConfig {
            size: 4096,
            count: 4 * QD * 16,
        }],
        prefer_hugepages: false,
    })
    .unwrap();
    let cache = pool.local();
    // Multi-segment buffers: 64 KiB in 4 KiB pieces.
    let mut bufs: Vec<Option<SgList>> = (0..QD).map(|_| cache.try_alloc(65536)).collect();
    assert!(bufs
        .iter()
        .all(|b| b.as_ref().is_some_and(|b| b.num_segments() == 16)));

    // The test's own list of free slots is allocated once, here.
    let mut ready = Vec::with_capacity(QD);
    run(&mut q, ns, &mut bufs, &mut ready, 2000);
    let before = allocations_on_this_thread();
    run(&mut q, ns, &mut bufs, &mut ready, 5000);
    let allocations = allocations_on_this_thread() - before;
    assert_eq!(allocations, 0, "heap allocations on the I/O path");
    drop(q);
    ctrl.disconnect().unwrap();
}
