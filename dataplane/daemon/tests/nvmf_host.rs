//! Gyre's NVMe/TCP host against the real `gyred`: discovery, I/O with header and data
//! digests, and an I/O queue that reconnects by itself after gyred is killed and started
//! again on the same port and configuration, with verified I/O afterwards.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{free_port, Gyred, TempDir};
use gyre_nvmf::host::{
    discover, Controller, HostOptions, IoCompletion, IoQueue, Namespace, QueueState,
    ReconnectPolicy,
};
use gyre_reactor::{BufferPool, ClassConfig, PoolCache, PoolConfig, SgList};

const NQN: &str = "nqn.2016-06.io.gyre:hosttest";
const TIMEOUT: Duration = Duration::from_secs(20);
/// Discovery log SUBTYPE values (NVMe over Fabrics): an NVM subsystem, and the discovery
/// subsystem being asked.
const SUBTYPE_NVME: u8 = 2;
const SUBTYPE_CURRENT_DISCOVERY: u8 = 3;

/// A configuration exporting a 64 MiB RAM disk as NSID 1 of `NQN` on `port`.
fn write_config(path: &Path, port: u16) {
    let cfg = format!(
        r#"{{
  "version": 1,
  "modules": [
    {{ "module": "bdev", "config": [
      {{ "method": "bdev_malloc_create", "params": {{ "name": "m0", "size": "64M", "block_size": 4096 }} }}
    ] }},
    {{ "module": "nvmf", "config": [
      {{ "method": "nvmf_create_subsystem", "params": {{ "nqn": "{NQN}", "allow_any_host": true }} }},
      {{ "method": "nvmf_subsystem_add_ns", "params": {{ "nqn": "{NQN}", "bdev_name": "m0" }} }},
      {{ "method": "nvmf_subsystem_add_listener", "params": {{ "nqn": "{NQN}", "address": "127.0.0.1:{port}" }} }}
    ] }}
  ]
}}
"#
    );
    std::fs::write(path, cfg).expect("config");
}

fn start(dir: &TempDir, port: u16) -> Gyred {
    let config = dir.path("gyred.json");
    if !config.exists() {
        write_config(&config, port);
    }
    Gyred::start(&dir.0, &["--config", config.to_str().unwrap()])
}

fn pool() -> (BufferPool, PoolCache) {
    let pool = BufferPool::new(&PoolConfig {
        classes: vec![
            ClassConfig {
                size: 4096,
                count: 512,
            },
            ClassConfig {
                size: 128 * 1024,
                count: 16,
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
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    out
}

fn buf(cache: &PoolCache, data: &[u8]) -> SgList {
    let mut sg = cache.try_alloc(data.len()).expect("buffer");
    assert!(sg.copy_from_slice(data));
    sg
}

/// Writes then reads back `len` bytes at `slba` with the data checked.
fn verified_io(
    q: &mut IoQueue,
    ns: Namespace,
    cache: &PoolCache,
    slba: u64,
    len: usize,
    seed: u64,
) {
    let data = pattern(seed, len);
    let nlb = (len / ns.block_size as usize) as u32;
    q.submit_write(ns, slba, nlb, buf(cache, &data), 1).unwrap();
    let c = wait(q, 1).pop().unwrap();
    assert_eq!(c.result, Ok(()), "write {len} at {slba}");
    q.submit_read(ns, slba, nlb, buf(cache, &vec![0u8; len]), 2)
        .unwrap();
    let c = wait(q, 1).pop().unwrap();
    assert_eq!(c.result, Ok(()), "read {len} at {slba}");
    let mut got = vec![0u8; len];
    assert!(c.buf.unwrap().copy_to_slice(&mut got));
    assert_eq!(got, data, "{len} bytes at {slba}");
}

#[test]
fn discovery_and_io_with_digests() {
    let dir = TempDir::new("nvmf-host");
    let port = free_port();
    let _g = start(&dir, port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let opts = HostOptions::default();

    let log = discover(addr, &opts).expect("discovery");
    let e = log
        .entries
        .iter()
        .find(|e| e.subnqn == NQN)
        .unwrap_or_else(|| panic!("{NQN} not in {:?}", log.entries));
    assert_eq!(e.subtype, SUBTYPE_NVME);
    assert_eq!((e.trtype, e.adrfam), (3, 1), "TCP over IPv4");
    assert_eq!(e.socket_addr(), Some(addr));
    assert!(log
        .entries
        .iter()
        .any(|e| e.subtype == SUBTYPE_CURRENT_DISCOVERY));

    let (_pool, cache) = pool();
    for (hd, dd) in [(false, false), (true, true)] {
        let opts = HostOptions {
            header_digest: hd,
            data_digest: dd,
            ..HostOptions::default()
        };
        let mut ctrl = Controller::connect(addr, NQN, &opts).expect("connect");
        let ns = ctrl.identify_namespace(1).expect("namespace 1").handle();
        assert_eq!(ns.block_size, 4096);
        let mut q = ctrl.connect_io_queue().expect("I/O queue");
        // In the capsule, by R2T, and the largest transfer.
        for (i, len) in [4096usize, 65536, 131072].into_iter().enumerate() {
            verified_io(
                &mut q,
                ns,
                &cache,
                100 * i as u64,
                len,
                i as u64 + 10 * hd as u64,
            );
        }
        drop(q);
        ctrl.disconnect().expect("shutdown");
    }
}

#[test]
fn io_queue_reconnects_after_gyred_restarts() {
    let dir = TempDir::new("nvmf-host-restart");
    let port = free_port();
    let mut g = start(&dir, port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let opts = HostOptions {
        header_digest: true,
        data_digest: true,
        keep_alive_timeout: Duration::from_secs(5),
        reconnect: ReconnectPolicy {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            max_attempts: Some(200),
        },
        ..HostOptions::default()
    };
    let (_pool, cache) = pool();
    let mut ctrl = Controller::connect(addr, NQN, &opts).expect("connect");
    let ns = ctrl.identify_namespace(1).unwrap().handle();
    let mut q = ctrl.connect_io_queue().unwrap();
    verified_io(&mut q, ns, &cache, 8, 16384, 1);

    // The target dies with reads in flight: they fail with a path error.
    for i in 0..8u64 {
        q.submit_read(ns, i, 1, buf(&cache, &[0u8; 4096]), 10 + i)
            .unwrap();
    }
    g.child.kill().expect("kill gyred");
    g.child.wait().expect("reap gyred");
    let mut failed = 0;
    let deadline = Instant::now() + TIMEOUT;
    while q.outstanding() > 0 {
        q.poll(|c| {
            if let Err(e) = c.result {
                assert!(e.is_path_error(), "{e:?}");
                failed += 1;
            }
        });
        ctrl.poll().expect("admin keeps trying");
        assert!(Instant::now() < deadline, "in-flight reads never failed");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(failed, 8, "every read in flight failed");

    // Back on the same port and configuration: the controller and the queue find it.
    drop(g);
    let _g2 = start(&dir, port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        ctrl.poll().expect("admin reconnect");
        q.poll(|_| {});
        if ctrl.is_connected() && q.state() == QueueState::Connected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reconnect: admin {:?}, queue {:?}",
            ctrl.failure(),
            q.state()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(ctrl.info().subnqn, NQN);
    // Verified I/O resumes on the same queue object.
    for (i, len) in [4096usize, 65536, 131072].into_iter().enumerate() {
        verified_io(&mut q, ns, &cache, 500 + 64 * i as u64, len, 100 + i as u64);
    }
    drop(q);
    ctrl.disconnect().expect("shutdown");
}
