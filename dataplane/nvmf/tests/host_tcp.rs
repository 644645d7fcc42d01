//! The NVMe/TCP host against the in-process target over loopback: bring-up and identify, I/O
//! of every kind with the data checked (in-capsule writes, R2T writes cut into several H2CData
//! PDUs, reads landing in multi-segment buffers), digests, a deep queue, discovery with paging,
//! keep-alive, a refused host, and an I/O queue that reconnects to a new association.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gyre_bdev::{BdevRegistry, MallocBdev};
use gyre_nvme::log::subtype;
use gyre_nvme::Status;
use gyre_nvmf::host::{
    discover_paged, CommandError, Controller, HostError, HostOptions, IoCompletion, IoQueue,
    Namespace, QueueState, ReconnectPolicy,
};
use gyre_nvmf::{ListenAddress, NamespaceConfig, NvmfTarget, SubsystemConfig, TransportOptions};
use gyre_reactor::{
    BufferPool, ClassConfig, CoreList, IdlePolicy, PoolCache, PoolConfig, ReactorConfig, Reactors,
    SgList,
};

const NQN: &str = "nqn.2016-06.io.gyre:host-test";
const TIMEOUT: Duration = Duration::from_secs(10);
const BS: u32 = 4096;

struct Setup {
    _reactors: Reactors,
    target: NvmfTarget,
    addr: SocketAddr,
}

/// A target with a 64 MiB RAM namespace; MAXH2CDATA 16 KiB and 8 KiB of in-capsule data, so
/// that writes take every path.
fn setup(allow_any_host: bool, hosts: &[&str]) -> Setup {
    let reactors = Reactors::start(&ReactorConfig {
        cores: "0".parse::<CoreList>().unwrap(),
        idle: IdlePolicy::hybrid(),
    })
    .unwrap();
    let registry = BdevRegistry::new();
    registry
        .register(MallocBdev::create("m0", 64 << 20, BS).unwrap())
        .unwrap();
    let options = TransportOptions {
        max_h2c_data: 16 * 1024,
        in_capsule_data_size: 8192,
        ..TransportOptions::default()
    };
    let target = NvmfTarget::start(reactors.handles(), registry, options).unwrap();
    let mut cfg = SubsystemConfig::new(NQN);
    cfg.allow_any_host = allow_any_host;
    cfg.hosts = hosts.iter().map(|h| h.to_string()).collect();
    target.create_subsystem(cfg).unwrap();
    target
        .add_namespace(NQN, NamespaceConfig::new("m0"))
        .unwrap();
    let addr = target
        .add_listener(NQN, "127.0.0.1:0".parse::<ListenAddress>().unwrap())
        .unwrap();
    Setup {
        _reactors: reactors,
        target,
        addr: addr.0,
    }
}

/// Buffers: `whole` hands out single segments (up to 128 KiB), `pieces` only 4 KiB segments, so
/// a larger buffer from it is a multi-segment scatter-gather list.
struct Pools {
    _pools: (BufferPool, BufferPool),
    whole: PoolCache,
    pieces: PoolCache,
}

fn pools() -> Pools {
    let whole = BufferPool::new(&PoolConfig {
        classes: vec![
            ClassConfig {
                size: 4096,
                count: 256,
            },
            ClassConfig {
                size: 128 * 1024,
                count: 80,
            },
        ],
        prefer_hugepages: false,
    })
    .unwrap();
    let pieces = BufferPool::new(&PoolConfig {
        classes: vec![ClassConfig {
            size: 4096,
            count: 2048,
        }],
        prefer_hugepages: false,
    })
    .unwrap();
    Pools {
        whole: whole.local(),
        pieces: pieces.local(),
        _pools: (whole, pieces),
    }
}

fn options() -> HostOptions {
    HostOptions {
        io_queues: 2,
        io_queue_depth: 64,
        ..HostOptions::default()
    }
}

/// A buffer holding `data`, in 4 KiB segments when `fragmented`.
fn buffer(p: &Pools, data: &[u8], fragmented: bool) -> SgList {
    let cache = if fragmented { &p.pieces } else { &p.whole };
    let mut sg = cache.try_alloc(data.len()).expect("buffer");
    if fragmented && data.len() > 4096 {
        assert!(sg.num_segments() > 1);
    }
    assert!(sg.copy_from_slice(data));
    sg
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Polls until `n` commands have completed.
fn wait(q: &mut IoQueue, n: usize) -> Vec<IoCompletion> {
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    while out.len() < n {
        if q.poll(|c| out.push(c)) == 0 {
            assert!(
                Instant::now() < deadline,
                "{} of {n} completions",
                out.len()
            );
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    out
}

fn one(q: &mut IoQueue) -> IoCompletion {
    wait(q, 1).pop().unwrap()
}

fn write(q: &mut IoQueue, ns: Namespace, p: &Pools, slba: u64, data: &[u8], frag: bool) {
    let buf = buffer(p, data, frag);
    q.submit_write(ns, slba, (data.len() / BS as usize) as u32, buf, 7)
        .unwrap();
    let c = one(q);
    assert_eq!(c.tag, 7);
    assert_eq!(c.result, Ok(()), "write at {slba}");
}

fn read(q: &mut IoQueue, ns: Namespace, p: &Pools, slba: u64, len: usize, frag: bool) -> Vec<u8> {
    let buf = buffer(p, &vec![0xEE; len], frag);
    q.submit_read(ns, slba, (len / BS as usize) as u32, buf, 9)
        .unwrap();
    let c = one(q);
    assert_eq!(c.tag, 9);
    assert_eq!(c.result, Ok(()), "read at {slba}");
    let mut out = vec![0u8; len];
    assert!(c.buf.expect("buffer back").copy_to_slice(&mut out));
    out
}

fn connect(s: &Setup, opts: &HostOptions) -> (Controller, Namespace) {
    let mut ctrl = Controller::connect(s.addr, NQN, opts).expect("connect");
    let ns = ctrl.identify_namespace(1).expect("identify namespace");
    assert_eq!(ns.block_size, BS);
    assert_eq!(ns.num_blocks, (64 << 20) / u64::from(BS));
    (ctrl, ns.handle())
}

/// Every data path with the data checked, on one I/O queue.
fn exercise_io(q: &mut IoQueue, ns: Namespace, p: &Pools, base: u64) {
    // 4 KiB: in the capsule (8 KiB limit). 8 KiB: exactly the limit, still in the capsule.
    // 12 KiB: over it, by R2T, one H2CData. 64 KiB and 128 KiB: R2T cut into 16 KiB PDUs.
    for (i, &len) in [4096usize, 8192, 12288, 65536, 131072].iter().enumerate() {
        for frag in [false, true] {
            let slba = base + (i as u64) * 64 + if frag { 32 } else { 0 };
            let data = pattern(slba, len);
            write(q, ns, p, slba, &data, frag);
            assert_eq!(
                read(q, ns, p, slba, len, !frag),
                data,
                "{len} bytes at {slba}"
            );
        }
    }
    // Flush.
    q.submit_flush(ns, 11).unwrap();
    let c = one(q);
    assert_eq!((c.tag, c.result), (11, Ok(())));
    assert!(c.buf.is_none());
    // Write Zeroes over the middle of a written range.
    let slba = base + 1000;
    write(q, ns, p, slba, &pattern(5, 4 * 4096), false);
    q.submit_write_zeroes(ns, slba + 1, 2, false, 12).unwrap();
    assert_eq!(one(q).result, Ok(()));
    let got = read(q, ns, p, slba, 4 * 4096, true);
    let want = pattern(5, 4 * 4096);
    assert_eq!(&got[..4096], &want[..4096]);
    assert!(got[4096..3 * 4096].iter().all(|&b| b == 0));
    assert_eq!(&got[3 * 4096..], &want[3 * 4096..]);
    // Deallocate two ranges (the RAM disk zeroes them).
    let slba = base + 2000;
    write(q, ns, p, slba, &pattern(6, 8 * 4096), false);
    let ranges_buf = p.whole.try_alloc(4096).unwrap();
    q.submit_deallocate(ns, &[(slba, 2), (slba + 6, 2)], ranges_buf, 13)
        .unwrap();
    assert_eq!(one(q).result, Ok(()));
    let got = read(q, ns, p, slba, 8 * 4096, false);
    let want = pattern(6, 8 * 4096);
    assert!(got[..2 * 4096].iter().all(|&b| b == 0));
    assert_eq!(&got[2 * 4096..6 * 4096], &want[2 * 4096..6 * 4096]);
    assert!(got[6 * 4096..].iter().all(|&b| b == 0));
    // Out of range: the controller's status, DNR set, and the buffer comes back.
    let buf = p.whole.try_alloc(4096).unwrap();
    q.submit_read(ns, (64 << 20) / 4096, 1, buf, 14).unwrap();
    let c = one(q);
    match c.result {
        Err(CommandError::Status(s)) => {
            assert!(s.same_code(Status::LBA_OUT_OF_RANGE), "{s:?}");
            assert!(s.dnr);
        }
        other => panic!("expected LBA out of range, got {other:?}"),
    }
    assert!(c.buf.is_some());
}

#[test]
fn connect_identify_and_io_on_two_queues() {
    let s = setup(true, &[]);
    let p = pools();
    let (mut ctrl, ns) = connect(&s, &options());
    let info = ctrl.info().clone();
    assert_eq!(info.subnqn, NQN);
    assert_eq!(info.io_queues, 2);
    assert_eq!(info.in_capsule_data, 8192);
    assert_eq!(info.max_transfer, 128 * 1024);
    assert_eq!(info.identify.subnqn().unwrap().as_str(), NQN);
    assert_eq!(ctrl.active_namespaces().unwrap(), vec![1]);
    assert!(ctrl.identify_namespace(2).is_err(), "inactive namespace");

    let mut q1 = ctrl.connect_io_queue().unwrap();
    let mut q2 = ctrl.link().connect_io_queue().unwrap();
    assert_eq!((q1.qid(), q2.qid()), (1, 2));
    assert!(ctrl.connect_io_queue().is_err(), "only two queues granted");
    assert_eq!(q1.state(), QueueState::Connected);
    exercise_io(&mut q1, ns, &p, 0);
    exercise_io(&mut q2, ns, &p, 8192);
    // What one queue wrote the other reads.
    let data = pattern(77, 4096 * 3);
    write(&mut q1, ns, &p, 5000, &data, true);
    assert_eq!(read(&mut q2, ns, &p, 5000, data.len(), false), data);
    // Too large for the controller: refused at submission, buffer handed back.
    let big = p.pieces.try_alloc(132 * 1024).unwrap();
    let e = q1.submit_read(ns, 0, 33, big, 1).unwrap_err();
    assert!(e.buf.is_some());

    drop(q1);
    drop(q2);
    ctrl.poll().unwrap();
    ctrl.disconnect().expect("clean shutdown");
    // The target forgets the controller's connections.
    let deadline = Instant::now() + TIMEOUT;
    while s.target.connection_counts().iter().sum::<usize>() > 0 {
        assert!(Instant::now() < deadline, "connections left open");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn digests_header_data_and_both() {
    let s = setup(true, &[]);
    let p = pools();
    for (hd, dd) in [(true, false), (false, true), (true, true)] {
        let opts = HostOptions {
            header_digest: hd,
            data_digest: dd,
            ..options()
        };
        let (ctrl, ns) = connect(&s, &opts);
        let mut q = ctrl.connect_io_queue().unwrap();
        exercise_io(&mut q, ns, &p, 12000);
        drop(q);
        ctrl.disconnect().unwrap();
    }
}

#[test]
fn queue_depth_32_with_many_outstanding() {
    let s = setup(true, &[]);
    let p = pools();
    let (ctrl, ns) = connect(&s, &options());
    let mut q = ctrl.connect_io_queue().unwrap();
    const QD: u64 = 32;
    // Mixed sizes: in-capsule and R2T writes interleaved on the wire.
    let len = |i: u64| if i.is_multiple_of(2) { 4096 } else { 32768 };
    for round in 0..4u64 {
        for i in 0..QD {
            let slba = 10000 + i * 8;
            let data = pattern(round * 100 + i, len(i));
            let buf = buffer(&p, &data, i % 3 == 0);
            q.submit_write(ns, slba, (len(i) / 4096) as u32, buf, i)
                .unwrap();
        }
        assert_eq!(q.outstanding(), QD as usize);
        let done = wait(&mut q, QD as usize);
        let mut tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
        tags.sort_unstable();
        assert_eq!(tags, (0..QD).collect::<Vec<_>>());
        assert!(done.iter().all(|c| c.result.is_ok()));
        for i in 0..QD {
            let buf = buffer(&p, &vec![0u8; len(i)], i % 3 == 1);
            q.submit_read(ns, 10000 + i * 8, (len(i) / 4096) as u32, buf, 100 + i)
                .unwrap();
        }
        for c in wait(&mut q, QD as usize) {
            assert_eq!(c.result, Ok(()));
            let i = c.tag - 100;
            let mut got = vec![0u8; len(i)];
            assert!(c.buf.unwrap().copy_to_slice(&mut got));
            assert_eq!(
                got,
                pattern(round * 100 + i, len(i)),
                "command {i} round {round}"
            );
        }
    }
    // Beyond the queue depth: refused, not queued.
    for i in 0..q.depth() as u64 {
        q.submit_flush(ns, i).unwrap();
    }
    let e = q.submit_flush(ns, 999).unwrap_err();
    assert_eq!(e.reason, gyre_nvmf::host::SubmitRejection::QueueFull);
    let depth = q.depth() as usize;
    assert_eq!(wait(&mut q, depth).len(), depth);
}

#[test]
fn discovery_pages_through_several_subsystems() {
    let s = setup(true, &[]);
    // Five more subsystems, two sharing a second listener.
    let mut extra = Vec::new();
    for i in 0..5 {
        let nqn = format!("nqn.2016-06.io.gyre:disc{i}");
        let mut cfg = SubsystemConfig::new(&nqn);
        cfg.allow_any_host = true;
        s.target.create_subsystem(cfg).unwrap();
        let a = s
            .target
            .add_listener(&nqn, "127.0.0.1:0".parse::<ListenAddress>().unwrap())
            .unwrap();
        extra.push((nqn, a.0));
    }
    // A subsystem this host may not see.
    let mut hidden = SubsystemConfig::new("nqn.2016-06.io.gyre:hidden");
    hidden
        .hosts
        .push("nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001".into());
    s.target.create_subsystem(hidden).unwrap();
    s.target
        .add_listener("nqn.2016-06.io.gyre:hidden", ListenAddress(s.addr))
        .unwrap();

    let opts = options();
    for per_page in [1, 2, 16] {
        let log = discover_paged(s.addr, &opts, per_page).expect("discovery");
        assert_eq!(log.genctr, s.target.discovery_generation());
        let nvme: Vec<_> = log
            .entries
            .iter()
            .filter(|e| e.subtype == subtype::NVME)
            .collect();
        assert_eq!(nvme.len(), 6, "{:?}", log.entries);
        assert!(nvme
            .iter()
            .all(|e| e.subnqn != "nqn.2016-06.io.gyre:hidden"));
        let main = nvme.iter().find(|e| e.subnqn == NQN).unwrap();
        assert_eq!(main.socket_addr(), Some(s.addr));
        assert_eq!((main.trtype, main.adrfam), (3, 1));
        for (nqn, addr) in &extra {
            let e = nvme.iter().find(|e| &e.subnqn == nqn).expect(nqn);
            assert_eq!(e.socket_addr(), Some(*addr));
        }
        // One current-discovery entry per listening address (6 of them).
        let current = log
            .entries
            .iter()
            .filter(|e| e.subtype == subtype::CURRENT_DISCOVERY)
            .count();
        assert_eq!(current, 6);
    }
}

#[test]
fn keep_alive_keeps_the_controller_past_kato() {
    let s = setup(true, &[]);
    let p = pools();
    let opts = HostOptions {
        keep_alive_timeout: Duration::from_millis(600),
        ..options()
    };
    let (mut kept, ns) = connect(&s, &opts);
    let mut q = kept.connect_io_queue().unwrap();
    let (mut idle, _) = connect(&s, &opts);
    // Poll only `kept` for more than three KATOs.
    let until = Instant::now() + Duration::from_millis(2200);
    while Instant::now() < until {
        kept.poll().unwrap();
        q.poll(|_| {});
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(kept.is_connected());
    let data = pattern(3, 8192);
    write(&mut q, ns, &p, 300, &data, false);
    assert_eq!(read(&mut q, ns, &p, 300, 8192, false), data);
    kept.keep_alive().unwrap();
    // The controller nobody polled was torn down by the target's keep-alive timer.
    let r = idle.active_namespaces();
    assert!(
        r.is_err(),
        "controller without keep-alive still served: {r:?}"
    );
}

#[test]
fn host_not_allowed_is_refused_with_connect_invalid_host() {
    let allowed = "nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-0000-0000-0000-000000000001";
    let s = setup(false, &[allowed]);
    let e = Controller::connect(s.addr, NQN, &options()).unwrap_err();
    match e {
        HostError::Status { command, status } => {
            assert_eq!(command, "Connect");
            assert!(status.same_code(Status::CONNECT_INVALID_HOST), "{status:?}");
            assert!(status.dnr);
        }
        other => panic!("expected a Connect status, got {other}"),
    }
    // The allowed host gets in; an unknown subsystem is an invalid parameter in the data.
    let ok = HostOptions {
        hostnqn: allowed.to_string(),
        ..options()
    };
    let (ctrl, _) = connect(&s, &ok);
    ctrl.disconnect().unwrap();
    match Controller::connect(s.addr, "nqn.2016-06.io.gyre:nope", &ok).unwrap_err() {
        HostError::ConnectInvalidParameters { in_data, offset } => {
            assert!(in_data);
            assert_eq!(offset, 256, "SUBNQN offset in the Connect data");
        }
        other => panic!("expected invalid parameters, got {other}"),
    }
}

#[test]
fn io_queue_reconnects_to_a_new_association() {
    let s = setup(true, &[]);
    let p = pools();
    let opts = HostOptions {
        reconnect: ReconnectPolicy {
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_attempts: None,
        },
        ..options()
    };
    let (mut ctrl, ns) = connect(&s, &opts);
    let mut q = ctrl.connect_io_queue().unwrap();
    let data = pattern(9, 16384);
    write(&mut q, ns, &p, 64, &data, false);
    let first = ctrl.info().cntlid;

    // The subsystem goes away with its connections, and comes back (a new controller).
    s.target.delete_subsystem(NQN).unwrap();
    let mut cfg = SubsystemConfig::new(NQN);
    cfg.allow_any_host = true;
    s.target.create_subsystem(cfg).unwrap();
    s.target
        .add_namespace(NQN, NamespaceConfig::new("m0"))
        .unwrap();
    // The old listening socket closes on its reactor: retry until the port is free again.
    let deadline = Instant::now() + TIMEOUT;
    while let Err(e) = s.target.add_listener(NQN, ListenAddress(s.addr)) {
        assert!(Instant::now() < deadline, "listener not re-added: {e}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // I/O submitted meanwhile fails with a path error, never inline.
    let deadline = Instant::now() + TIMEOUT;
    let mut saw_error = false;
    loop {
        ctrl.poll().unwrap();
        if q.state() == QueueState::Connected && ctrl.is_connected() && ctrl.info().cntlid != first
        {
            let buf = buffer(&p, &vec![0u8; 16384], false);
            q.submit_read(ns, 64, 4, buf, 5).unwrap();
            let c = one(&mut q);
            if c.result.is_ok() {
                let mut got = vec![0u8; 16384];
                assert!(c.buf.unwrap().copy_to_slice(&mut got));
                assert_eq!(got, data, "data survives on the RAM disk");
                break;
            }
            assert!(c.result.unwrap_err().is_path_error());
            saw_error = true;
        } else {
            let buf = buffer(&p, &vec![0u8; 4096], false);
            q.submit_read(ns, 0, 1, buf, 6).unwrap();
            let c = one(&mut q);
            if let Err(e) = c.result {
                assert!(e.is_path_error(), "{e:?}");
                saw_error = true;
            }
        }
        assert!(Instant::now() < deadline, "no reconnect: {:?}", q.state());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(saw_error, "the loss was visible to I/O");
    assert_ne!(ctrl.info().cntlid, first);
}

#[test]
fn connects_over_ipv6() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let s = setup(true, &[]);
    let p = pools();
    let v6 = s
        .target
        .add_listener(NQN, "[::1]:0".parse::<ListenAddress>().unwrap())
        .unwrap();
    assert!(v6.0.is_ipv6());
    let mut ctrl = Controller::connect(v6.0, NQN, &options()).expect("connect over IPv6");
    let ns = ctrl.identify_namespace(1).unwrap().handle();
    let mut q = ctrl.connect_io_queue().unwrap();
    let data = pattern(61, 8192);
    write(&mut q, ns, &p, 40, &data, true);
    assert_eq!(read(&mut q, ns, &p, 40, 8192, false), data);
    // Discovery over IPv6 reports the IPv6 listener with its address family.
    let log = gyre_nvmf::host::discover(v6.0, &options()).unwrap();
    let e = log
        .entries
        .iter()
        .find(|e| e.subtype == subtype::NVME && e.adrfam == 2)
        .expect("an IPv6 entry");
    assert_eq!(e.socket_addr(), Some(v6.0));
    drop(q);
    ctrl.disconnect().unwrap();
}

#[test]
fn io_queue_reconnects_to_the_same_controller_after_a_reset() {
    let s = setup(true, &[]);
    let p = pools();
    let opts = HostOptions {
        reconnect: ReconnectPolicy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            max_attempts: Some(100),
        },
        ..options()
    };
    let (mut ctrl, ns) = connect(&s, &opts);
    let mut q = ctrl.connect_io_queue().unwrap();
    let generation = ctrl.link().generation();
    let cntlid = ctrl.info().cntlid;
    let data = pattern(21, 8192);
    write(&mut q, ns, &p, 700, &data, false);
    // A read in flight when the path is reset fails with a path error.
    q.submit_read(ns, 700, 2, buffer(&p, &[0u8; 8192], false), 1)
        .unwrap();
    q.reset();
    let c = one(&mut q);
    assert!(c.result.unwrap_err().is_path_error());
    assert!(c.buf.is_some(), "buffer back");
    let deadline = Instant::now() + TIMEOUT;
    while q.state() != QueueState::Connected {
        ctrl.poll().unwrap();
        q.poll(|_| {});
        assert!(Instant::now() < deadline, "no reconnect: {:?}", q.state());
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(ctrl.link().generation(), generation, "same association");
    assert_eq!(ctrl.info().cntlid, cntlid);
    assert_eq!(read(&mut q, ns, &p, 700, 8192, true), data);
    drop(q);
    ctrl.disconnect().unwrap();
}
