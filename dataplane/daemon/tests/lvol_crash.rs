//! Crash consistency of logical volumes: a child `gyred` serves a thin volume (on a pool on a
//! file through io_uring) over NVMe/TCP; this process writes verified blocks at random, unmaps
//! whole clusters (so clusters are released and allocated again all along), and flushes
//! now and then; gyred is killed with SIGKILL at a random moment with I/O in flight, started
//! again on its saved configuration (which re-imports the pool), and every block this process
//! ever wrote is read back: it must hold the last version acknowledged before a completed
//! flush, or a version written after it, never anything else. The pool's accounting is checked
//! too: the clusters in use are exactly those the volume references.
//!
//! `LVOL_CRASH_CYCLES` sets the number of kill cycles (default 20).

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{free_port, Gyred, TempDir};
use gyre_nvmf::host::{Controller, HostOptions, IoQueue, Namespace};
use gyre_reactor::{BufferPool, ClassConfig, PoolCache, PoolConfig};
use serde_json::{json, Value};

const NQN: &str = "nqn.2016-06.io.gyre:lvolcrash";
const BS: usize = 4096;
/// 16 MiB volume in 4 KiB blocks, 64 KiB clusters.
const VOLUME_BLOCKS: u64 = 4096;
const CLUSTER_BLOCKS: u64 = 16;
const QD: usize = 8;
const TIMEOUT: Duration = Duration::from_secs(20);

fn rpc(g: &Gyred, method: &str, params: Value) -> Value {
    g.client()
        .call(method, Some(params))
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

/// A tiny xorshift generator, seeded per run and printed, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a block may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Zero,
    Seq(u64),
}

fn block_data(lba: u64, seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    b[..8].copy_from_slice(&lba.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    let mut x = (lba << 32 ^ seq).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for byte in &mut b[16..] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    b
}

/// The version a block read back holds, or `None` if it is none of ours (torn, misplaced).
fn decode(lba: u64, b: &[u8]) -> Option<Version> {
    if b.iter().all(|&x| x == 0) {
        return Some(Version::Zero);
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&b[..8]);
    if u64::from_le_bytes(n) != lba {
        return None;
    }
    n.copy_from_slice(&b[8..16]);
    let seq = u64::from_le_bytes(n);
    (block_data(lba, seq) == b).then_some(Version::Seq(seq))
}

/// Per block: every version submitted, in order, and the index of the last one known durable
/// (acknowledged before a flush that completed).
struct Block {
    versions: Vec<Version>,
    durable: usize,
}

#[derive(Default)]
struct Model {
    blocks: HashMap<u64, Block>,
    next_seq: u64,
}

impl Model {
    fn push(&mut self, lba: u64, v: Version) -> usize {
        let b = self.blocks.entry(lba).or_insert_with(|| Block {
            versions: vec![Version::Zero],
            durable: 0,
        });
        b.versions.push(v);
        b.versions.len() - 1
    }

    fn make_durable(&mut self, lba: u64, idx: usize) {
        if let Some(b) = self.blocks.get_mut(&lba) {
            b.durable = b.durable.max(idx);
        }
    }
}

enum Pending {
    Write { lba: u64, idx: usize },
    Unmap { lbas: Vec<(u64, usize)> },
    Flush { covered: Vec<(u64, usize)> },
}

struct Host {
    ctrl: Controller,
    q: IoQueue,
    ns: Namespace,
}

fn connect(addr: SocketAddr) -> Host {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match Controller::connect(addr, NQN, &HostOptions::default()) {
            Ok(mut ctrl) => {
                let ns = ctrl.identify_namespace(1).expect("namespace 1").handle();
                assert_eq!(ns.block_size as usize, BS);
                let q = ctrl.connect_io_queue().expect("I/O queue");
                return Host { ctrl, q, ns };
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Writes, unmaps and flushes at random for `run`, keeping `QD` commands in flight; returns
/// with commands still in flight (the caller kills gyred then).
fn load(h: &mut Host, cache: &PoolCache, m: &mut Model, rng: &mut Rng, run: Duration) -> u64 {
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let mut busy: HashSet<u64> = HashSet::new();
    let mut acked: Vec<(u64, usize)> = Vec::new();
    let mut flushing = false;
    let mut tag = 0u64;
    let mut ops = 0u64;
    let end = Instant::now() + run;
    while Instant::now() < end {
        while pending.len() < QD {
            tag += 1;
            let r = rng.below(100);
            if r < 4 && !flushing && !acked.is_empty() {
                let covered = std::mem::take(&mut acked);
                h.q.submit_flush(h.ns, tag).expect("submit flush");
                pending.insert(tag, Pending::Flush { covered });
                flushing = true;
            } else if r < 7 {
                let first = rng.below(VOLUME_BLOCKS / CLUSTER_BLOCKS) * CLUSTER_BLOCKS;
                if (first..first + CLUSTER_BLOCKS).any(|l| busy.contains(&l)) {
                    continue;
                }
                let lbas: Vec<(u64, usize)> = (first..first + CLUSTER_BLOCKS)
                    .map(|l| {
                        busy.insert(l);
                        (l, m.push(l, Version::Zero))
                    })
                    .collect();
                h.q.submit_write_zeroes(h.ns, first, CLUSTER_BLOCKS as u32, true, tag)
                    .expect("submit unmap");
                pending.insert(tag, Pending::Unmap { lbas });
            } else {
                let lba = rng.below(VOLUME_BLOCKS);
                if busy.contains(&lba) {
                    continue;
                }
                m.next_seq += 1;
                let seq = m.next_seq;
                let mut buf = cache.try_alloc(BS).expect("buffer");
                buf.copy_from_slice(&block_data(lba, seq));
                let idx = m.push(lba, Version::Seq(seq));
                busy.insert(lba);
                h.q.submit_write(h.ns, lba, 1, buf, tag)
                    .expect("submit write");
                pending.insert(tag, Pending::Write { lba, idx });
            }
        }
        let mut done = Vec::new();
        if h.q.poll(|c| done.push((c.tag, c.result))) == 0 {
            let _ = h.ctrl.poll();
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        for (t, result) in done {
            let p = pending.remove(&t).expect("known tag");
            if let Err(e) = result {
                panic!("I/O failed while gyred ran: {e:?}");
            }
            ops += 1;
            match p {
                Pending::Write { lba, idx } => {
                    busy.remove(&lba);
                    acked.push((lba, idx));
                }
                Pending::Unmap { lbas } => {
                    for &(l, idx) in &lbas {
                        busy.remove(&l);
                        acked.push((l, idx));
                    }
                }
                Pending::Flush { covered } => {
                    flushing = false;
                    for (l, idx) in covered {
                        m.make_durable(l, idx);
                    }
                }
            }
        }
    }
    ops
}

/// Reads back every block ever written and checks it against the model; afterwards the
/// value read is what the block holds for good. Returns the blocks checked.
fn verify(h: &mut Host, cache: &PoolCache, m: &mut Model, cycle: usize) -> u64 {
    let lbas: Vec<u64> = m.blocks.keys().copied().collect();
    let mut next = 0;
    let mut in_flight = 0;
    let mut checked = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while checked < lbas.len() {
        while in_flight < 16 && next < lbas.len() {
            let buf = cache.try_alloc(BS).expect("buffer");
            h.q.submit_read(h.ns, lbas[next], 1, buf, lbas[next])
                .expect("submit read");
            next += 1;
            in_flight += 1;
        }
        let mut done = Vec::new();
        if h.q.poll(|c| done.push(c)) == 0 {
            assert!(Instant::now() < deadline, "verification reads stalled");
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        for c in done {
            in_flight -= 1;
            checked += 1;
            let lba = c.tag;
            assert_eq!(c.result, Ok(()), "read of block {lba}");
            let mut data = vec![0u8; BS];
            c.buf.expect("read buffer").copy_to_slice(&mut data);
            let b = m.blocks.get_mut(&lba).expect("modelled block");
            let got = decode(lba, &data);
            let allowed = &b.versions[b.durable..];
            match got {
                Some(v) if allowed.contains(&v) => {
                    b.versions = vec![v];
                    b.durable = 0;
                }
                _ => panic!(
                    "cycle {cycle}: block {lba} holds {got:?}; durable {:?}, allowed {allowed:?}",
                    b.versions[b.durable]
                ),
            }
        }
    }
    checked as u64
}

fn write_initial_config(path: &Path, disk: &Path) {
    let cfg = json!({
        "version": 1,
        "modules": [
            { "module": "bdev", "config": [
                { "method": "bdev_uring_create",
                  "params": { "name": "u0", "filename": disk.to_str().unwrap() } }
            ] }
        ]
    });
    std::fs::write(path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}

/// The pool's clusters in use are exactly the volume's (it is the only volume).
fn check_accounting(g: &Gyred) {
    let pools = rpc(g, "lvol_pool_list", json!({}));
    let vols = rpc(g, "lvol_volume_list", json!({ "pool": "p" }));
    assert_eq!(
        pools[0]["used_bytes"], vols[0]["allocated_bytes"],
        "{pools} {vols}"
    );
}

#[test]
fn acknowledged_and_flushed_writes_survive_sigkill() {
    let cycles: usize = std::env::var("LVOL_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    println!("lvol crash test: seed {seed}, {cycles} cycles");
    let mut rng = Rng(seed);
    let dir = TempDir::new("lvol-crash");
    let disk = dir.path("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .expect("disk file");
    let config = dir.path("gyred.json");
    write_initial_config(&config, &disk);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = config.to_str().unwrap().to_string();

    // Build the pool, the volume and the export once, and save that configuration.
    {
        let g = Gyred::start(&dir.0, &["--config", &cfg]);
        rpc(
            &g,
            "lvol_pool_create",
            json!({ "name": "p", "base_bdev": "u0", "cluster_size": "64K" }),
        );
        rpc(
            &g,
            "lvol_volume_create",
            json!({ "pool": "p", "name": "v", "size": VOLUME_BLOCKS * BS as u64 }),
        );
        rpc(
            &g,
            "nvmf_create_subsystem",
            json!({ "nqn": NQN, "allow_any_host": true }),
        );
        rpc(
            &g,
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN, "bdev_name": "p/v" }),
        );
        rpc(
            &g,
            "nvmf_subsystem_add_listener",
            json!({ "nqn": NQN, "address": addr.to_string() }),
        );
        rpc(&g, "save_config", json!({}));
    }

    let pool = BufferPool::new(&PoolConfig {
        classes: vec![ClassConfig {
            size: 4096,
            count: 256,
        }],
        prefer_hugepages: false,
    })
    .expect("pool");
    let cache = pool.local();
    let mut model = Model::default();
    let mut checked = 0u64;
    let mut ops = 0u64;
    for cycle in 0..=cycles {
        let mut g = Gyred::start(&dir.0, &["--config", &cfg]);
        let mut h = connect(addr);
        checked += verify(&mut h, &cache, &mut model, cycle);
        check_accounting(&g);
        if cycle == cycles {
            drop(h);
            g.signal(libc::SIGTERM);
            assert!(g.wait_exit(TIMEOUT).is_some(), "gyred exits");
            break;
        }
        let run = Duration::from_millis(200 + rng.below(1000));
        ops += load(&mut h, &cache, &mut model, &mut rng, run);
        // Kill with commands in flight.
        g.child.kill().expect("SIGKILL gyred");
        g.child.wait().expect("reap gyred");
        drop(h);
    }
    println!(
        "lvol crash test: {cycles} SIGKILL cycles clean, {ops} commands completed, {checked} blocks verified"
    );
    assert!(checked > 0);
}
