//! SIGTERM under load: a host keeps 32 stamped writes in flight over NVMe/TCP to a file-backed
//! (io_uring) namespace when gyred gets SIGTERM. gyred must exit 0 within its drain bound;
//! restarted from the same configuration, every block must hold its last acknowledged write or
//! a later write that was in flight (never acknowledged) — an acknowledged write is never lost
//! and nothing else appears.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{free_port, Gyred, TempDir};
use gyre_nvmf::host::{Controller, HostOptions, IoQueue, Namespace, QueueState, ReconnectPolicy};
use gyre_reactor::{BufferPool, ClassConfig, PoolCache, PoolConfig};

const NQN: &str = "nqn.2016-06.io.gyre:sigterm";
const BLOCKS: u64 = 2048;
const BS: usize = 4096;
const DEPTH: usize = 32;

fn write_config(path: &Path, disk: &Path, port: u16) {
    let cfg = format!(
        r#"{{
  "version": 1,
  "modules": [
    {{ "module": "bdev", "config": [
      {{ "method": "bdev_uring_create", "params": {{ "name": "disk", "filename": "{}", "block_size": 4096 }} }}
    ] }},
    {{ "module": "nvmf", "config": [
      {{ "method": "nvmf_create_subsystem", "params": {{ "nqn": "{NQN}", "allow_any_host": true }} }},
      {{ "method": "nvmf_subsystem_add_ns", "params": {{ "nqn": "{NQN}", "bdev_name": "disk" }} }},
      {{ "method": "nvmf_subsystem_add_listener", "params": {{ "nqn": "{NQN}", "address": "127.0.0.1:{port}" }} }}
    ] }}
  ]
}}"#,
        disk.display()
    );
    std::fs::write(path, cfg).expect("write config");
}

/// A block's content for write generation `gen`: LBA, generation, then bytes derived from both.
fn stamp(lba: u64, gen: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    b[..8].copy_from_slice(&lba.to_le_bytes());
    b[8..16].copy_from_slice(&gen.to_le_bytes());
    let mut x = (lba << 32) ^ gen ^ 0x9E37_79B9_7F4A_7C15;
    for byte in &mut b[16..] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    b
}

fn pool() -> (BufferPool, PoolCache) {
    let pool = BufferPool::new(&PoolConfig {
        classes: vec![ClassConfig {
            size: BS,
            count: 256,
        }],
        prefer_hugepages: false,
    })
    .expect("pool");
    let cache = pool.local();
    (pool, cache)
}

fn connect(addr: SocketAddr) -> (Controller, IoQueue, Namespace) {
    let opts = HostOptions {
        io_queue_depth: DEPTH as u16,
        // A lost connection stays lost: the test wants to see where the writes stand.
        reconnect: ReconnectPolicy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
            max_attempts: Some(0),
        },
        ..HostOptions::default()
    };
    let mut ctrl = Controller::connect(addr, NQN, &opts).expect("connect");
    let ns = ctrl.identify_namespace(1).expect("namespace").handle();
    let q = ctrl.connect_io_queue().expect("I/O queue");
    (ctrl, q, ns)
}

/// What the host knows of each block.
#[derive(Default)]
struct Ledger {
    /// Last acknowledged generation.
    acked: HashMap<u64, u64>,
    /// Generations sent but never acknowledged (failed or cut off): may or may not be there.
    uncertain: HashMap<u64, Vec<u64>>,
}

#[test]
fn sigterm_under_load_loses_no_acknowledged_write() {
    let dir = TempDir::new("sigterm-load");
    let disk = dir.path("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(BLOCKS * BS as u64))
        .expect("disk file");
    let config = dir.path("gyred.json");
    let port = free_port();
    write_config(&config, &disk, port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut g = Gyred::start(&dir.0, &["--config", config.to_str().unwrap()]);

    let (_pool, cache) = pool();
    let (_ctrl, mut q, ns) = connect(addr);
    let mut ledger = Ledger::default();
    // tag = block; one write per block in flight at a time.
    let mut in_flight: HashMap<u64, u64> = HashMap::new();
    let mut next_gen = 1u64;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let started = Instant::now();
    let mut signalled: Option<Instant> = None;
    let mut acked_after_signal = 0u64;
    loop {
        // Keep the queue full while the connection lives.
        while in_flight.len() < DEPTH && (q.state() == QueueState::Connected) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let lba = rng % BLOCKS;
            if in_flight.contains_key(&lba) {
                continue;
            }
            let gen = next_gen;
            next_gen += 1;
            let mut buf = cache.try_alloc(BS).expect("buffer");
            assert!(buf.copy_from_slice(&stamp(lba, gen)));
            match q.submit_write(ns, lba, 1, buf, lba) {
                Ok(()) => {
                    in_flight.insert(lba, gen);
                }
                Err(_) => {
                    // Not sent at all: as if never issued.
                    break;
                }
            }
        }
        let polled = q.poll(|c| {
            let Some(gen) = in_flight.remove(&c.tag) else {
                panic!("completion for a block with nothing in flight: {}", c.tag);
            };
            if c.result.is_ok() {
                ledger.acked.insert(c.tag, gen);
                // Earlier uncertain generations are now overwritten by an acknowledged one.
                ledger.uncertain.remove(&c.tag);
                if signalled.is_some() {
                    acked_after_signal += 1;
                }
            } else {
                ledger.uncertain.entry(c.tag).or_default().push(gen);
            }
        });
        if signalled.is_none()
            && (ledger.acked.len() >= 600 || started.elapsed() > Duration::from_secs(20))
        {
            g.signal(libc::SIGTERM);
            signalled = Some(Instant::now());
        }
        if signalled.is_some() && !(q.state() == QueueState::Connected) && in_flight.is_empty() {
            break;
        }
        if let Some(t) = signalled {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the host's queue is still up 30 s after SIGTERM ({} in flight)",
                in_flight.len()
            );
        }
        if polled == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    let status = g.wait_exit(Duration::from_secs(30)).expect("gyred exits");
    assert!(
        status.success(),
        "gyred exit status {status}:\n{}",
        g.stderr()
    );
    assert!(ledger.acked.len() >= 100, "load before the signal");
    println!(
        "before SIGTERM and during the drain: {} blocks acknowledged ({acked_after_signal} after the signal), {} blocks with unacknowledged writes",
        ledger.acked.len(),
        ledger.uncertain.len()
    );

    // Restart on the same configuration and read every block ever written.
    let _g = Gyred::start(&dir.0, &["--config", config.to_str().unwrap()]);
    let (_ctrl, mut q, ns) = connect(addr);
    let mut written: Vec<u64> = ledger
        .acked
        .keys()
        .chain(ledger.uncertain.keys())
        .copied()
        .collect();
    written.sort_unstable();
    written.dedup();
    let mut checked = 0usize;
    for chunk in written.chunks(DEPTH) {
        for &lba in chunk {
            let buf = cache.try_alloc(BS).expect("buffer");
            q.submit_read(ns, lba, 1, buf, lba).expect("submit read");
        }
        let mut done = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while done < chunk.len() {
            let n = q.poll(|c| {
                assert!(c.result.is_ok(), "read of {}: {:?}", c.tag, c.result);
                let mut got = vec![0u8; BS];
                assert!(c.buf.expect("read buffer").copy_to_slice(&mut got));
                let lba = c.tag;
                let gen = u64::from_le_bytes(got[8..16].try_into().unwrap());
                let acked = ledger.acked.get(&lba).copied();
                let maybe = ledger.uncertain.get(&lba);
                let allowed = Some(gen) == acked
                    || maybe.is_some_and(|m| m.contains(&gen) && acked.is_none_or(|a| gen > a))
                    || (gen == 0 && acked.is_none());
                assert!(
                    allowed,
                    "block {lba}: found generation {gen}, last acknowledged {acked:?}, unacknowledged {maybe:?}"
                );
                if gen != 0 {
                    assert_eq!(got, stamp(lba, gen), "block {lba}: torn or corrupt content");
                }
                checked += 1;
            });
            done += n;
            if n == 0 {
                assert!(Instant::now() < deadline, "reads after restart stalled");
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }
    println!("after restart: {checked} blocks checked, all hold an allowed write");
    assert_eq!(checked, written.len());
}
