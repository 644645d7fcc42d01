//! Overhead of a logical volume over its base, in process (no network): 4 KiB random reads
//! and writes at queue depth 32 from one polling reactor, on an allocated thick volume and on
//! its base RAM bdev directly, alternating: the pool is closed while the base is measured
//! (its data stays) and opened again for the volume. On the base the runs keep to the pool's
//! data area, the same memory the volume's clusters map to. Same core throughout.
//!
//! `cargo run --release -p gyre-lvol --example overhead -- [SECONDS] [CORE] [ROUNDS]`
//!
//! This is a timing example of the bdev layer only, the harshest case for the volume: no
//! network or protocol cost dilutes its own. End to end, with gyre-perf over NVMe/TCP, see
//! `ci/bench-lvol.sh`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre_bdev::{BdevRegistry, IoOp, IoRequest, MallocBdev};
use gyre_lvol::Pool;
use gyre_reactor::{
    global_pool, local, CoreList, IdlePolicy, PollStatus, ReactorConfig, ReactorHandle, Reactors,
};

const QD: usize = 32;
const BS: u64 = 4096;

/// IOPS of `op` on `bdev` for `secs` from reactor `r`, at random 4 KiB slots of the region of
/// `len` bytes from byte `start`.
fn run(
    reg: &BdevRegistry,
    r: &ReactorHandle,
    bdev: &str,
    op: IoOp,
    secs: f64,
    (start, len): (u64, u64),
) -> f64 {
    let desc = Arc::new(reg.open(bdev, true, "overhead", None).expect("open"));
    let (tx, rx) = crossbeam::channel::bounded(1);
    let d = desc.clone();
    r.send(move || {
        let mut ch = d.channel().expect("channel");
        let per = BS / ch.info().block_size() as u64;
        let first = start / ch.info().block_size() as u64;
        let slots = len / BS;
        let cache = global_pool().expect("pool").local();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            first + (seed % slots) * per
        };
        for tag in 0..QD as u64 {
            let buf = cache.try_alloc(BS as usize).expect("buffer");
            ch.submit(IoRequest::new(op, next(), per, buf, tag));
        }
        let begin = Instant::now();
        let end = begin + Duration::from_secs_f64(secs);
        let mut done = 0u64;
        let mut stopping = false;
        let mut back = Vec::with_capacity(QD);
        local()
            .expect("reactor")
            .register_poller("overhead", move || {
                ch.poll(|c| back.push(c));
                for c in back.drain(..) {
                    assert_eq!(c.status, Ok(()));
                    done += 1;
                    if !stopping {
                        let mut req = c.req;
                        req.offset_blocks = next();
                        ch.submit(req);
                    }
                }
                if !stopping && Instant::now() >= end {
                    stopping = true;
                }
                if stopping && ch.in_flight() == 0 {
                    let _ = tx.send(done as f64 / begin.elapsed().as_secs_f64());
                    return PollStatus::Done;
                }
                PollStatus::Busy
            });
    })
    .expect("send");
    rx.recv_timeout(Duration::from_secs_f64(secs + 30.0))
        .expect("run ends")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let core: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
    let reactors = Reactors::start(&ReactorConfig {
        cores: CoreList::new(vec![core]).expect("core"),
        idle: IdlePolicy::Poll,
    })
    .expect("reactor");
    let r = reactors.get(0).expect("reactor").clone();
    let reg = BdevRegistry::new();
    reg.register(MallocBdev::create("base", 512 << 20, 4096).expect("malloc"))
        .expect("register");

    // The pool on the base, a thick volume filling it, engine on the same core.
    let pool = Pool::create(&reg, r.clone(), "base", "p", 1 << 20).expect("pool");
    let info = pool.info().expect("info");
    let (data_offset, size) = (info.data_offset, info.free_bytes());
    pool.create_volume("thick", size, false).expect("volume");
    let volume = (0, size);
    let data_area = (data_offset, size);
    run(&reg, &r, "p/thick", IoOp::Write, 1.0, volume);
    pool.close(false).expect("close");
    drop(pool);
    run(&reg, &r, "base", IoOp::Write, 1.0, data_area);

    // Alternate base and volume runs (flipping the order every round), so that load from
    // elsewhere on the machine hits both alike; report medians.
    let (mut br, mut vr, mut bw, mut vw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let on_base = |br: &mut Vec<f64>, bw: &mut Vec<f64>| {
            br.push(run(&reg, &r, "base", IoOp::Read, secs, data_area));
            bw.push(run(&reg, &r, "base", IoOp::Write, secs, data_area));
        };
        let on_volume = |vr: &mut Vec<f64>, vw: &mut Vec<f64>| {
            let pool = Pool::open(&reg, r.clone(), "base").expect("import");
            vr.push(run(&reg, &r, "p/thick", IoOp::Read, secs, volume));
            vw.push(run(&reg, &r, "p/thick", IoOp::Write, secs, volume));
            pool.close(false).expect("close");
        };
        if round % 2 == 0 {
            on_volume(&mut vr, &mut vw);
            on_base(&mut br, &mut bw);
        } else {
            on_base(&mut br, &mut bw);
            on_volume(&mut vr, &mut vw);
        }
    }

    println!(
        "4 KiB random, QD {QD}, one polling reactor on core {core}, {secs} s per run, median of {rounds} alternating runs"
    );
    println!(
        "{:<10} {:>14} {:>14} {:>12}",
        "", "base", "thick volume", "volume/base"
    );
    for (name, b, v) in [
        ("randread", median(br), median(vr)),
        ("randwrite", median(bw), median(vw)),
    ] {
        println!("{name:<10} {b:>14.0} {v:>14.0} {:>12.3}", v / b);
    }
}
