//! Pools and volumes on a RAM base, served by real reactors in hybrid idle mode: thin and
//! thick volumes, snapshots frozen while their origin changes, clones diverging, inflate and
//! merge, resize both ways, unmap, a full pool, reopening, and requests across clusters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre_bdev::{BdevRegistry, IoError, IoOp, IoRequest, IoStatus, MallocBdev};
use gyre_lvol::{LvolError, MetaError, Pool};
use gyre_reactor::{
    global_pool, init_global_pool, local, ClassConfig, CoreList, IdlePolicy, PollStatus,
    PoolConfig, ReactorConfig, ReactorHandle, Reactors,
};

const CLUSTER: u64 = 64 << 10;
const BS: u64 = 512;

struct Env {
    reactors: Reactors,
    reg: BdevRegistry,
}

fn env(base_bytes: u64) -> Env {
    let _ = init_global_pool(&PoolConfig {
        classes: vec![
            ClassConfig {
                size: 4096,
                count: 1024,
            },
            ClassConfig {
                size: 128 << 10,
                count: 128,
            },
        ],
        prefer_hugepages: false,
    });
    let reactors = Reactors::start(&ReactorConfig {
        cores: CoreList::first_available(2).expect("cores"),
        idle: IdlePolicy::hybrid(),
    })
    .expect("reactors");
    let reg = BdevRegistry::new();
    reg.register(MallocBdev::create("base", base_bytes, BS as u32).expect("malloc"))
        .expect("register");
    Env { reactors, reg }
}

impl Env {
    fn owner(&self) -> ReactorHandle {
        self.reactors.get(0).expect("reactor 0").clone()
    }

    /// The reactor the I/O is submitted from (not the owner, to cross cores).
    fn io_reactor(&self) -> ReactorHandle {
        self.reactors
            .get(1)
            .or_else(|| self.reactors.get(0))
            .expect("reactor")
            .clone()
    }

    fn create(&self) -> Pool {
        Pool::create(&self.reg, self.owner(), "base", "pool0", CLUSTER).expect("pool create")
    }

    /// One request on `bdev` from the I/O reactor; returns its status and data.
    fn io(&self, bdev: &str, op: IoOp, lba: u64, data: &[u8], blocks: u64) -> (IoStatus, Vec<u8>) {
        let desc = Arc::new(self.reg.open(bdev, true, "test", None).expect("open"));
        let (tx, rx) = crossbeam::channel::bounded(1);
        let data = data.to_vec();
        let d = desc.clone();
        self.io_reactor()
            .send(move || {
                let mut ch = d.channel().expect("channel");
                let len = (blocks * BS) as usize;
                let mut buf = gyre_reactor::SgList::new();
                if op.has_data() {
                    buf = global_pool()
                        .expect("pool")
                        .local()
                        .try_alloc(len)
                        .expect("buffers");
                    if op == IoOp::Write {
                        buf.copy_from_slice(&data);
                    }
                }
                ch.submit(IoRequest::new(op, lba, blocks, buf, 7));
                local()
                    .expect("reactor")
                    .register_poller("test-io", move || {
                        let mut got = None;
                        ch.poll(|c| got = Some(c));
                        match got {
                            None => PollStatus::Idle,
                            Some(c) => {
                                assert_eq!(c.req.tag, 7);
                                assert_eq!(c.req.offset_blocks, lba);
                                let mut out = vec![0u8; if op == IoOp::Read { len } else { 0 }];
                                c.req.buf.copy_to_slice(&mut out);
                                let _ = tx.send((c.status, out));
                                PollStatus::Done
                            }
                        }
                    });
            })
            .expect("send");
        rx.recv_timeout(Duration::from_secs(30))
            .expect("I/O completes")
    }

    fn write(&self, bdev: &str, lba: u64, data: &[u8]) -> IoStatus {
        self.io(bdev, IoOp::Write, lba, data, data.len() as u64 / BS)
            .0
    }

    fn read(&self, bdev: &str, lba: u64, blocks: u64) -> Vec<u8> {
        let (s, d) = self.io(bdev, IoOp::Read, lba, &[], blocks);
        assert_eq!(s, Ok(()), "read of {bdev} at {lba}");
        d
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i % 251) as u8))
        .collect()
}

#[test]
fn thin_volume_reads_zeroes_then_data_and_allocates_on_first_write() {
    let e = env(16 << 20);
    let pool = e.create();
    let v = pool.create_volume("v", 4 << 20, true).unwrap();
    assert_eq!(v.bdev_name, "pool0/v");
    assert_eq!(v.allocated_bytes, 0);
    assert!(e.read("pool0/v", 0, 8).iter().all(|&b| b == 0));
    let d = pattern(1, 4096);
    assert_eq!(e.write("pool0/v", 130, &d), Ok(()));
    assert_eq!(e.read("pool0/v", 130, 8), d);
    // The rest of the newly allocated cluster reads as zeroes.
    assert!(e.read("pool0/v", 0, 130).iter().all(|&b| b == 0));
    assert_eq!(pool.volume("v").unwrap().allocated_bytes, CLUSTER);
    let info = pool.info().unwrap();
    assert_eq!(info.provisioned_bytes, 4 << 20);
    assert_eq!(info.used_bytes(), CLUSTER);
    assert!(info.overcommit_ratio > 0.2);
    // A second write to the same cluster takes no new cluster.
    assert_eq!(e.write("pool0/v", 128, &pattern(2, 512)), Ok(()));
    assert_eq!(pool.volume("v").unwrap().allocated_bytes, CLUSTER);
}

#[test]
fn requests_across_clusters_are_split_and_reassembled() {
    let e = env(16 << 20);
    let pool = e.create();
    pool.create_volume("v", 1 << 20, true).unwrap();
    let cb = CLUSTER / BS;
    // Three clusters' worth starting in the middle of one.
    let d = pattern(3, (2 * CLUSTER) as usize);
    let lba = cb - 16;
    assert_eq!(e.write("pool0/v", lba, &d), Ok(()));
    let back = e.read("pool0/v", lba, d.len() as u64 / BS);
    let first_bad = back.iter().zip(&d).position(|(a, b)| a != b);
    assert_eq!(first_bad, None);
    assert_eq!(pool.volume("v").unwrap().allocated_bytes, 3 * CLUSTER);
    // A read across an unallocated cluster: data, then zeroes.
    let end = lba + d.len() as u64 / BS;
    let r = e.read("pool0/v", end - 8, 8 + cb);
    assert_eq!(end / cb, 2);
    assert_eq!(&r[..4096], &d[d.len() - 4096..]);
    assert!(r[4096..].iter().all(|&b| b == 0));
}

#[test]
fn snapshot_stays_frozen_while_origin_changes_and_clones_diverge() {
    let e = env(16 << 20);
    let pool = e.create();
    pool.create_volume("v", 1 << 20, false).unwrap();
    let a = pattern(10, 8192);
    assert_eq!(e.write("pool0/v", 0, &a), Ok(()));
    let s = pool.snapshot("v", "s1").unwrap();
    assert!(s.snapshot);
    assert_eq!(pool.volume("v").unwrap().parent.as_deref(), Some("s1"));
    // Snapshots refuse writes.
    assert_eq!(
        e.write("pool0/s1", 0, &a),
        Err(IoError::Unsupported(IoOp::Write))
    );
    let b = pattern(11, 4096);
    assert_eq!(e.write("pool0/v", 4, &b), Ok(()));
    assert_eq!(e.read("pool0/s1", 0, 16), a);
    let mut expect = a.clone();
    expect[2048..6144].copy_from_slice(&b);
    assert_eq!(e.read("pool0/v", 0, 16), expect);

    let c = pool.clone_volume("s1", "c1").unwrap();
    assert_eq!(c.parent.as_deref(), Some("s1"));
    assert_eq!(e.read("pool0/c1", 0, 16), a);
    let x = pattern(12, 512);
    assert_eq!(e.write("pool0/c1", 0, &x), Ok(()));
    let mut cexp = a.clone();
    cexp[..512].copy_from_slice(&x);
    assert_eq!(e.read("pool0/c1", 0, 16), cexp);
    assert_eq!(e.read("pool0/s1", 0, 16), a);
    assert_eq!(e.read("pool0/v", 0, 16), expect);

    // Two children: the snapshot cannot go. Inflate the clone, delete the origin: the
    // snapshot has no children left; delete it, data of the clone stays.
    assert!(matches!(
        pool.delete_volume("s1"),
        Err(LvolError::Meta(MetaError::HasChildren { .. }))
    ));
    let used_before = pool.info().unwrap().used_bytes();
    pool.inflate("c1").unwrap();
    assert!(pool.info().unwrap().used_bytes() > used_before);
    assert_eq!(pool.volume("c1").unwrap().parent, None);
    assert_eq!(e.read("pool0/c1", 0, 16), cexp);
    // Merge: the snapshot with one child (v) is deleted; v keeps its content.
    pool.delete_volume("s1").unwrap();
    assert_eq!(pool.volume("v").unwrap().parent, None);
    assert_eq!(e.read("pool0/v", 0, 16), expect);
    assert!(e.reg.get("pool0/s1").is_none());
}

#[test]
fn resize_both_ways_keeps_data() {
    let e = env(16 << 20);
    let pool = e.create();
    pool.create_volume("v", 2 * CLUSTER, true).unwrap();
    let d = pattern(20, 4096);
    assert_eq!(e.write("pool0/v", 0, &d), Ok(()));
    let v = pool.resize("v", 8 * CLUSTER).unwrap();
    assert_eq!(v.size_bytes, 8 * CLUSTER);
    assert_eq!(
        e.reg.get("pool0/v").unwrap().info().num_blocks(),
        8 * CLUSTER / BS
    );
    let far = 7 * CLUSTER / BS;
    assert_eq!(e.write("pool0/v", far, &d), Ok(()));
    assert_eq!(e.read("pool0/v", far, 8), d);
    assert_eq!(pool.volume("v").unwrap().allocated_bytes, 2 * CLUSTER);
    pool.resize("v", CLUSTER).unwrap();
    assert_eq!(pool.volume("v").unwrap().allocated_bytes, CLUSTER);
    assert_eq!(e.read("pool0/v", 0, 8), d);
    let (s, _) = e.io("pool0/v", IoOp::Read, far, &[], 8);
    assert!(matches!(s, Err(IoError::OutOfRange { .. })));
    // Grow again: the dropped tail is gone (zeroes), not resurrected.
    pool.resize("v", 8 * CLUSTER).unwrap();
    assert!(e.read("pool0/v", far, 8).iter().all(|&b| b == 0));
    assert_eq!(e.read("pool0/v", 0, 8), d);
}

#[test]
fn unmap_releases_whole_clusters_and_zeroes_partial_ranges() {
    let e = env(16 << 20);
    let pool = e.create();
    pool.create_volume("v", 4 * CLUSTER, true).unwrap();
    let cb = CLUSTER / BS;
    let d = pattern(30, (2 * CLUSTER) as usize);
    assert_eq!(e.write("pool0/v", 0, &d), Ok(()));
    assert_eq!(pool.volume("v").unwrap().allocated_bytes, 2 * CLUSTER);
    // Cluster 0 whole plus the first 8 blocks of cluster 1.
    let (s, _) = e.io("pool0/v", IoOp::Unmap, 0, &[], cb + 8);
    assert_eq!(s, Ok(()));
    assert_eq!(pool.volume("v").unwrap().allocated_bytes, CLUSTER);
    assert!(e.read("pool0/v", 0, cb + 8).iter().all(|&b| b == 0));
    let rest = e.read("pool0/v", cb + 8, 8);
    let at = ((cb + 8) * BS) as usize;
    assert_eq!(rest, d[at..at + 4096]);
    // Write zeroes of a whole cluster releases it too.
    let (s, _) = e.io("pool0/v", IoOp::WriteZeroes, cb, &[], cb);
    assert_eq!(s, Ok(()));
    assert_eq!(pool.volume("v").unwrap().allocated_bytes, 0);
    assert_eq!(pool.info().unwrap().used_bytes(), 0);
}

#[test]
fn a_full_pool_refuses_writes_cleanly_and_keeps_what_it_had() {
    let e = env(4 << 20);
    let pool = e.create();
    let total = pool.info().unwrap().total_clusters;
    pool.create_volume("big", (total + 8) * CLUSTER, true)
        .unwrap();
    assert!(pool.info().unwrap().overcommit_ratio > 1.0);
    let cb = CLUSTER / BS;
    for i in 0..total {
        assert_eq!(
            e.write("pool0/big", i * cb, &pattern(i as u8, 512)),
            Ok(()),
            "cluster {i}"
        );
    }
    assert_eq!(
        e.write("pool0/big", total * cb, &pattern(0, 512)),
        Err(IoError::NoSpace)
    );
    // Thick volumes that do not fit are refused up front.
    assert!(matches!(
        pool.create_volume("thick", CLUSTER, false),
        Err(LvolError::Meta(MetaError::NoSpace))
    ));
    for i in 0..total {
        assert_eq!(e.read("pool0/big", i * cb, 1), pattern(i as u8, 512));
    }
    // Freeing a cluster makes room again.
    let (s, _) = e.io("pool0/big", IoOp::Unmap, 0, &[], cb);
    assert_eq!(s, Ok(()));
    assert_eq!(e.write("pool0/big", total * cb, &pattern(9, 512)), Ok(()));
}

#[test]
fn a_reopened_pool_has_its_volumes_and_data() {
    let e = env(16 << 20);
    let pool = e.create();
    let uuid = pool.uuid();
    pool.create_volume("v", 1 << 20, true).unwrap();
    pool.create_volume("t", 2 * CLUSTER, false).unwrap();
    let d = pattern(40, 8192);
    assert_eq!(e.write("pool0/v", 100, &d), Ok(()));
    pool.snapshot("v", "s").unwrap();
    assert_eq!(e.write("pool0/v", 100, &pattern(41, 512)), Ok(()));
    pool.rename("t", "thick").unwrap();
    let before = pool.volumes().unwrap();
    pool.close(false).unwrap();
    drop(pool);
    assert!(e.reg.get("pool0/v").is_none());

    let sb = Pool::probe(&e.reg, &e.owner(), "base").unwrap().unwrap();
    assert_eq!(sb.uuid, uuid);
    let pool = Pool::open(&e.reg, e.owner(), "base").unwrap();
    assert_eq!(pool.name(), "pool0");
    assert_eq!(pool.volumes().unwrap(), before);
    assert_eq!(e.read("pool0/s", 100, 16), d);
    let mut now = d.clone();
    now[..512].copy_from_slice(&pattern(41, 512));
    assert_eq!(e.read("pool0/v", 100, 16), now);
    assert!(e.read("pool0/thick", 0, 8).iter().all(|&b| b == 0));
}

#[test]
fn a_bdev_without_a_pool_is_not_opened() {
    let e = env(4 << 20);
    assert!(Pool::probe(&e.reg, &e.owner(), "base").unwrap().is_none());
    assert!(matches!(
        Pool::open(&e.reg, e.owner(), "base"),
        Err(LvolError::NotAPool(_))
    ));
    // The probe left the base free to be claimed.
    let _pool = e.create();
}

#[test]
fn snapshot_chains_merge_when_middle_snapshots_are_deleted() {
    let e = env(16 << 20);
    let pool = e.create();
    pool.create_volume("v", 16 * CLUSTER, true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for round in 0..4u8 {
        let d = pattern(round, 4096);
        assert_eq!(e.write("pool0/v", (round as u64) * 200, &d), Ok(()));
        let name = format!("s{round}");
        pool.snapshot("v", &name).unwrap();
        assert_eq!(e.read(&format!("pool0/{name}"), round as u64 * 200, 8), d);
        assert!(Instant::now() < deadline);
    }
    // Snapshot chain s0 <- s1 <- s2 <- s3 <- v: deleting the middle ones merges.
    pool.delete_volume("s1").unwrap();
    pool.delete_volume("s2").unwrap();
    assert_eq!(pool.volume("s3").unwrap().parent.as_deref(), Some("s0"));
    for round in 0..4u8 {
        assert_eq!(
            e.read("pool0/v", round as u64 * 200, 8),
            pattern(round, 4096)
        );
    }
}

/// A writer keeps rewriting blocks (each filled with its version number) from another
/// reactor while snapshots are taken: every block of a snapshot holds a version acknowledged
/// no earlier than before the snapshot began and submitted no later than when it returned,
/// whole (never torn), and stays so while the origin moves on.
#[test]
fn snapshots_taken_under_writes_are_consistent_points_in_time() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    const BLOCKS: u64 = 64;
    let e = env(16 << 20);
    let pool = e.create();
    pool.create_volume("v", 8 * CLUSTER, true).unwrap();
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..BLOCKS).map(|_| AtomicU64::new(0)).collect());
    let submitted: Arc<Vec<AtomicU64>> = Arc::new((0..BLOCKS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let desc = Arc::new(e.reg.open("pool0/v", true, "writer", None).unwrap());
    let (a, s, st, f, d) = (
        acked.clone(),
        submitted.clone(),
        stop.clone(),
        failed.clone(),
        desc.clone(),
    );
    let (done_tx, done_rx) = crossbeam::channel::bounded(1);
    e.io_reactor()
        .send(move || {
            let mut ch = d.channel().expect("channel");
            let cache = global_pool().expect("pool").local();
            let mut version = 0u64;
            let mut next_block = 0u64;
            let mut in_flight = 0;
            local()
                .expect("reactor")
                .register_poller("writer", move || {
                    let mut busy = false;
                    while in_flight < 4 && !st.load(Ordering::Acquire) {
                        version += 1;
                        // Blocks spread over all clusters of the volume.
                        let block = next_block % BLOCKS;
                        next_block += 1;
                        let lba = block * (8 * CLUSTER / BS / BLOCKS);
                        let mut buf = cache.try_alloc(BS as usize).expect("buffer");
                        let mut data = [0u8; BS as usize];
                        for c in data.chunks_mut(8) {
                            c.copy_from_slice(&version.to_le_bytes());
                        }
                        buf.copy_from_slice(&data);
                        s[block as usize].store(version, Ordering::SeqCst);
                        ch.submit(IoRequest::new(
                            IoOp::Write,
                            lba,
                            1,
                            buf,
                            block << 32 | version,
                        ));
                        in_flight += 1;
                        busy = true;
                    }
                    ch.poll(|c| {
                        in_flight -= 1;
                        if c.status.is_err() {
                            f.store(true, Ordering::SeqCst);
                        }
                        let block = (c.req.tag >> 32) as usize;
                        a[block].fetch_max(c.req.tag & 0xFFFF_FFFF, Ordering::SeqCst);
                    });
                    if st.load(Ordering::Acquire) && in_flight == 0 {
                        let _ = done_tx.send(());
                        return PollStatus::Done;
                    }
                    if busy {
                        PollStatus::Busy
                    } else {
                        PollStatus::Idle
                    }
                });
        })
        .expect("send");
    let version_of = |data: &[u8]| -> u64 {
        let v = u64::from_le_bytes(data[..8].try_into().unwrap());
        assert!(data.chunks(8).all(|c| c == v.to_le_bytes()), "torn block");
        v
    };
    let mut snaps = Vec::new();
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(30));
        let lo: Vec<u64> = acked.iter().map(|x| x.load(Ordering::SeqCst)).collect();
        let name = format!("snap{round}");
        pool.snapshot("v", &name).unwrap();
        let hi: Vec<u64> = submitted.iter().map(|x| x.load(Ordering::SeqCst)).collect();
        let mut seen = Vec::new();
        for b in 0..BLOCKS {
            let lba = b * (8 * CLUSTER / BS / BLOCKS);
            let v = version_of(&e.read(&format!("pool0/{name}"), lba, 1));
            assert!(
                lo[b as usize] <= v && v <= hi[b as usize],
                "{name} block {b}: version {v} outside [{}, {}]",
                lo[b as usize],
                hi[b as usize]
            );
            seen.push(v);
        }
        snaps.push((name, seen));
    }
    stop.store(true, Ordering::Release);
    done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("writer stops");
    assert!(!failed.load(Ordering::SeqCst), "a write failed");
    assert!(acked.iter().all(|x| x.load(Ordering::SeqCst) > 0));
    // The snapshots did not move while the origin went on.
    for (name, seen) in snaps {
        for b in 0..BLOCKS {
            let lba = b * (8 * CLUSTER / BS / BLOCKS);
            let v = version_of(&e.read(&format!("pool0/{name}"), lba, 1));
            assert_eq!(v, seen[b as usize], "{name} block {b} changed");
        }
    }
}

/// Shadow paging: when the newest metadata image is damaged (a torn write), opening the pool
/// falls back to the previous one, whole.
#[test]
fn a_damaged_newest_image_falls_back_to_the_previous_one() {
    let e = env(16 << 20);
    let pool = e.create(); // image 1, region A
    pool.create_volume("a", CLUSTER, true).unwrap(); // image 2, region B
    pool.create_volume("b", CLUSTER, true).unwrap(); // image 3, region A
    pool.close(false).unwrap();
    drop(pool);
    // Flip one byte inside image 3 (past its header): its checksum no longer matches.
    let region_a_lba = 4096 / BS;
    let mut block = e.read("base", region_a_lba, 1);
    block[100] ^= 0xFF;
    assert_eq!(e.write("base", region_a_lba, &block), Ok(()));
    let pool = Pool::open(&e.reg, e.owner(), "base").unwrap();
    let names: Vec<String> = pool
        .volumes()
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, vec!["a".to_string()]);
    // The pool goes on from there: the next image overwrites the damaged one.
    pool.create_volume("c", CLUSTER, true).unwrap();
    pool.close(false).unwrap();
    drop(pool);
    let pool = Pool::open(&e.reg, e.owner(), "base").unwrap();
    let names: Vec<String> = pool
        .volumes()
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, vec!["a".to_string(), "c".to_string()]);
}
