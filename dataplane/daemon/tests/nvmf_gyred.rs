//! The NVMe-oF target as `gyred` runs it, driven by Gyre's NVMe/TCP host: a host not on the
//! subsystem's list is refused and does not see it in discovery; an allowed host identifies
//! the controller and namespace, runs every I/O command with the data checked over two I/O
//! queues, with digests off and on; namespaces added and removed with gyrectl reach it through
//! Asynchronous Event Requests and the Changed Namespace List; and a controller whose host
//! stops sending keep-alives is torn down.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{free_port, gyrectl_ok, Gyred, TempDir};
use gyre_nvme::{Command, SglDescriptor, Status};
use gyre_nvmf::host::{
    discover, CommandError, Controller, HostOptions, IoCompletion, IoQueue, Namespace, Transfer,
};
use gyre_reactor::{BufferPool, ClassConfig, PoolCache, PoolConfig, SgList};
use serde_json::Value;

const NQN: &str = "nqn.2016-06.io.gyre:gyred-target";
const ALLOWED: &str = "nqn.2014-08.org.nvmexpress:uuid:0f0e0d0c-0b0a-4908-8706-050403020100";
const BS: usize = 4096;
const T: Duration = Duration::from_secs(20);

fn start(dir: &TempDir, port: u16) -> Gyred {
    let cfg = format!(
        r#"{{
  "version": 1,
  "modules": [
    {{ "module": "bdev", "config": [
      {{ "method": "bdev_malloc_create", "params": {{ "name": "m0", "size": "64M", "block_size": 4096 }} }},
      {{ "method": "bdev_malloc_create", "params": {{ "name": "m1", "size": "16M", "block_size": 4096 }} }}
    ] }},
    {{ "module": "nvmf", "config": [
      {{ "method": "nvmf_create_subsystem", "params": {{ "nqn": "{NQN}", "hosts": ["{ALLOWED}"] }} }},
      {{ "method": "nvmf_subsystem_add_ns", "params": {{ "nqn": "{NQN}", "bdev_name": "m0" }} }},
      {{ "method": "nvmf_subsystem_add_listener", "params": {{ "nqn": "{NQN}", "address": "127.0.0.1:{port}" }} }}
    ] }}
  ]
}}"#
    );
    let path = dir.path("gyred.json");
    std::fs::write(&path, cfg).unwrap();
    Gyred::start(&dir.0, &["--config", path.to_str().unwrap()])
}

fn allowed(digests: bool) -> HostOptions {
    let hostid = [
        0x0f, 0x0e, 0x0d, 0x0c, 0x0b, 0x0a, 0x49, 0x08, 0x87, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
        0x00,
    ];
    HostOptions {
        hostnqn: ALLOWED.to_string(),
        hostid,
        header_digest: digests,
        data_digest: digests,
        io_queues: 2,
        admin_timeout: T,
        ..HostOptions::default()
    }
}

fn pool() -> (BufferPool, PoolCache) {
    let pool = BufferPool::new(&PoolConfig {
        classes: vec![
            ClassConfig {
                size: BS,
                count: 64,
            },
            ClassConfig {
                size: 128 * 1024,
                count: 8,
            },
        ],
        prefer_hugepages: false,
    })
    .expect("pool");
    let cache = pool.local();
    (pool, cache)
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

fn buf(cache: &PoolCache, data: &[u8]) -> SgList {
    let mut sg = cache.try_alloc(data.len()).expect("buffer");
    assert!(sg.copy_from_slice(data));
    sg
}

fn wait(q: &mut IoQueue) -> IoCompletion {
    let deadline = Instant::now() + T;
    let mut done = None;
    while done.is_none() {
        if q.poll(|c| done = Some(c)) == 0 {
            assert!(Instant::now() < deadline, "I/O timed out");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    done.unwrap()
}

fn write(q: &mut IoQueue, ns: Namespace, cache: &PoolCache, lba: u64, data: &[u8]) {
    q.submit_write(ns, lba, (data.len() / BS) as u32, buf(cache, data), 1)
        .expect("submit write");
    assert_eq!(wait(q).result, Ok(()), "write at {lba}");
}

fn read(q: &mut IoQueue, ns: Namespace, cache: &PoolCache, lba: u64, len: usize) -> Vec<u8> {
    q.submit_read(ns, lba, (len / BS) as u32, buf(cache, &vec![0; len]), 2)
        .expect("submit read");
    let c = wait(q);
    assert_eq!(c.result, Ok(()), "read at {lba}");
    let mut out = vec![0u8; len];
    assert!(c.buf.expect("buffer").copy_to_slice(&mut out));
    out
}

fn compare(
    q: &mut IoQueue,
    ns: Namespace,
    cache: &PoolCache,
    lba: u64,
    data: &[u8],
) -> Result<(), CommandError> {
    let mut cmd = Command::new(0x05, 0);
    cmd.nsid = ns.nsid;
    cmd.cdw10 = lba as u32;
    cmd.cdw11 = (lba >> 32) as u32;
    cmd.cdw12 = (data.len() / BS) as u32 - 1;
    cmd.dptr = SglDescriptor::transport_data_block(data.len() as u32);
    q.submit(
        cmd,
        Transfer::HostToController(data.len() as u32),
        Some(buf(cache, data)),
        3,
    )
    .expect("submit compare");
    wait(q).result
}

/// Every I/O command with the data checked, across two I/O queues of one controller.
fn exercise(ctrl: &Controller, ns: Namespace, cache: &PoolCache, seed: u64) {
    let mut q1 = ctrl.connect_io_queue().expect("I/O queue 1");
    let mut q2 = ctrl.connect_io_queue().expect("I/O queue 2");
    assert_ne!(q1.qid(), q2.qid());
    // A small (in-capsule) and a large (R2T) write on one queue, read on the other.
    let small = pattern(seed, BS);
    let big = pattern(seed + 1, 32 * BS);
    write(&mut q1, ns, cache, 10, &small);
    write(&mut q1, ns, cache, 100, &big);
    assert!(
        read(&mut q2, ns, cache, 10, BS) == small,
        "in-capsule write read back"
    );
    assert!(
        read(&mut q2, ns, cache, 100, 32 * BS) == big,
        "R2T write read back"
    );
    // Flush.
    q1.submit_flush(ns, 4).expect("submit flush");
    assert_eq!(wait(&mut q1).result, Ok(()));
    // Write Zeroes over 2 blocks, Deallocate of 4: both read back as zeroes.
    q2.submit_write_zeroes(ns, 102, 2, false, 5)
        .expect("submit write zeroes");
    assert_eq!(wait(&mut q2).result, Ok(()));
    q2.submit_deallocate(ns, &[(110, 4)], buf(cache, &[0u8; 16]), 6)
        .expect("submit deallocate");
    assert_eq!(wait(&mut q2).result, Ok(()));
    let after = read(&mut q1, ns, cache, 100, 32 * BS);
    let mut want = big.clone();
    want[2 * BS..4 * BS].fill(0);
    want[10 * BS..14 * BS].fill(0);
    assert!(
        after == want,
        "write zeroes and deallocate read back as zeroes"
    );
    // Compare: equal, then different.
    assert_eq!(compare(&mut q1, ns, cache, 10, &small), Ok(()));
    match compare(&mut q1, ns, cache, 10, &big[..BS]) {
        Err(CommandError::Status(s)) => {
            assert!(s.same_code(Status::COMPARE_FAILURE), "{s:?}")
        }
        other => panic!("miscompare: {other:?}"),
    }
    // Out of range.
    q1.submit_read(ns, 64 << 20 >> 12, 1, buf(cache, &[0; BS]), 7)
        .expect("submit");
    match wait(&mut q1).result {
        Err(CommandError::Status(s)) => assert!(s.same_code(Status::LBA_OUT_OF_RANGE), "{s:?}"),
        other => panic!("read past the end: {other:?}"),
    }
}

/// Sends an Asynchronous Event Request, runs `trigger` while it waits, returns dword 0.
fn next_event(ctrl: &mut Controller, trigger: impl FnOnce() + Send + 'static) -> u32 {
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        trigger();
    });
    let (cqe, _) = ctrl
        .admin_command(
            "Asynchronous Event Request",
            Command::new(0x0C, 0),
            Transfer::None,
            None,
        )
        .expect("AER completes with an event");
    t.join().unwrap();
    cqe.dw0
}

fn controllers(sock: &std::path::Path) -> Vec<Value> {
    let out = gyrectl_ok(sock, &["--json", "nvmf", "controller", "list", NQN]);
    serde_json::from_str::<Value>(&out)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn gyred_serves_allowed_hosts_every_command_events_and_keep_alive() {
    let dir = TempDir::new("nvmf-gyred");
    let port = free_port();
    let g = start(&dir, port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // A stranger is refused and does not see the subsystem in discovery.
    let stranger = HostOptions::default();
    let err = match Controller::connect(addr, NQN, &stranger) {
        Ok(_) => panic!("a host not on the list connected"),
        Err(e) => e,
    };
    assert!(
        err.status()
            .is_some_and(|s| s.same_code(Status::CONNECT_INVALID_HOST)),
        "{err}"
    );
    let log = discover(addr, &stranger).expect("discovery for a stranger");
    assert!(
        log.entries.iter().all(|e| e.subnqn != NQN),
        "{:?}",
        log.entries
    );
    let log = discover(addr, &allowed(false)).expect("discovery");
    assert!(
        log.entries.iter().any(|e| e.subnqn == NQN),
        "{:?}",
        log.entries
    );

    // Identify and every I/O command, digests off and on.
    let (_pool, cache) = pool();
    for digests in [false, true] {
        let mut ctrl = Controller::connect(addr, NQN, &allowed(digests)).expect("connect");
        assert_eq!(ctrl.info().subnqn, NQN);
        assert_eq!(ctrl.info().io_queues, 2);
        let id = ctrl.identify_namespace(1).expect("namespace 1");
        assert_eq!((id.block_size, id.num_blocks), (4096, (64 << 20) / 4096));
        exercise(&ctrl, id.handle(), &cache, 10 + u64::from(digests));
        ctrl.disconnect().expect("disconnect");
    }

    // Namespace hot add and remove, seen through AEN and the Changed Namespace List.
    let mut ctrl = Controller::connect(addr, NQN, &allowed(false)).expect("connect");
    // Async Event Configuration: namespace attribute notices.
    ctrl.set_feature(0x0B, 1 << 8)
        .expect("enable namespace notices");
    let sock = g.socket.clone();
    let dw0 = next_event(&mut ctrl, move || {
        gyrectl_ok(&sock, &["nvmf", "ns", "add", NQN, "--bdev", "m1"]);
    });
    assert_eq!(dw0 & 0x7, 0x2, "a notice");
    assert_eq!((dw0 >> 8) & 0xff, 0x00, "namespace attribute changed");
    assert_eq!((dw0 >> 16) & 0xff, 0x04, "Changed Namespace List log page");
    let changed = ctrl
        .get_log_page(0x04, 0xFFFF_FFFF, 0, 4096)
        .expect("changed list");
    assert_eq!(u32::from_le_bytes(changed[..4].try_into().unwrap()), 2);
    assert_eq!(ctrl.active_namespaces().expect("active list"), vec![1, 2]);
    let sock = g.socket.clone();
    let dw0 = next_event(&mut ctrl, move || {
        gyrectl_ok(&sock, &["nvmf", "ns", "remove", NQN, "--nsid", "2"]);
    });
    assert_eq!(
        dw0 & 0xffff07,
        0x040002,
        "namespace attribute changed notice"
    );
    let changed = ctrl
        .get_log_page(0x04, 0xFFFF_FFFF, 0, 4096)
        .expect("changed list");
    assert_eq!(u32::from_le_bytes(changed[..4].try_into().unwrap()), 2);
    assert_eq!(ctrl.active_namespaces().expect("active list"), vec![1]);
    ctrl.disconnect().expect("disconnect");

    // Keep-alive: a controller whose host goes silent is torn down after KATO.
    let silent = HostOptions {
        keep_alive_timeout: Duration::from_secs(1),
        ..allowed(false)
    };
    let quiet = Controller::connect(addr, NQN, &silent).expect("connect");
    let cntlid = u64::from(quiet.info().cntlid);
    assert!(controllers(&g.socket).iter().any(|c| c["cntlid"] == cntlid));
    let deadline = Instant::now() + Duration::from_secs(10);
    while controllers(&g.socket).iter().any(|c| c["cntlid"] == cntlid) {
        assert!(
            Instant::now() < deadline,
            "a silent host's controller outlived its KATO"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(quiet);
}
