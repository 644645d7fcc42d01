//! Overhead of a logical volume over its base, in process (no network): 4 KiB random reads
//! and writes at queue depth 32 from one polling reactor on a RAM base bdev directly, then on
//! an allocated thick volume of a pool created on that same base, alternating with runs on a
//! twin RAM bdev (the pool claims its base). Same core throughout.
//!
//! `cargo run --release -p gyre-lvol --example overhead -- [SECONDS] [CORE] [ROUNDS]`
//!
//! This is a timing example, not gyre-perf: it measures IOPS of the bdev layer only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre_bdev::{BdevRegistry, IoOp, IoRequest, MallocBdev};
use gyre_lvol::Pool;
use gyre_reactor::{
    global_pool, local, CoreList, IdlePolicy, PollStatus, ReactorConfig, ReactorHandle, Reactors,
};

const QD: usize = 32;
const BS: u64 = 4096;

/// IOPS of `op` on `bdev` for `secs` from reactor `r`.
fn run(reg: &BdevRegistry, r: &ReactorHandle, bdev: &str, op: IoOp, secs: f64) -> f64 {
    let desc = Arc::new(reg.open(bdev, true, "overhead", None).expect("open"));
    let (tx, rx) = crossbeam::channel::bounded(1);
    let d = desc.clone();
    r.send(move || {
        let mut ch = d.channel().expect("channel");
        let slots = ch.info().num_blocks() * ch.info().block_size() as u64 / BS;
        let per = BS / ch.info().block_size() as u64;
        let cache = global_pool().expect("pool").local();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for tag in 0..QD as u64 {
            let buf = cache.try_alloc(BS as usize).expect("buffer");
            ch.submit(IoRequest::new(op, (next() % slots) * per, per, buf, tag));
        }
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
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
                        req.offset_blocks = (next() % slots) * per;
                        ch.submit(req);
                    }
                }
                if !stopping && Instant::now() >= end {
                    stopping = true;
                }
                if stopping && ch.in_flight() == 0 {
                    let _ = tx.send(done as f64 / start.elapsed().as_secs_f64());
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
    // The pool's base, and a twin of the same kind and size to measure the base path while
    // the pool holds (claims) the real one.
    for name in ["base", "twin"] {
        reg.register(MallocBdev::create(name, 512 << 20, 4096).expect("malloc"))
            .expect("register");
        run(&reg, &r, name, IoOp::Write, 1.0);
    }
    // The base directly, before the pool claims it.
    let direct_read = run(&reg, &r, "base", IoOp::Read, secs);
    let direct_write = run(&reg, &r, "base", IoOp::Write, secs);

    // The pool on that base, a thick volume almost as large, engine on the same core.
    let pool = Pool::create(&reg, r.clone(), "base", "p", 1 << 20).expect("pool");
    let free = pool.info().expect("info").free_bytes();
    pool.create_volume("thick", free, false).expect("volume");
    run(&reg, &r, "p/thick", IoOp::Write, 1.0);
    // Alternate base-twin and volume runs, so that load from elsewhere on the machine hits
    // both alike; report medians.
    let (mut tr, mut vr, mut tw, mut vw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        tr.push(run(&reg, &r, "twin", IoOp::Read, secs));
        vr.push(run(&reg, &r, "p/thick", IoOp::Read, secs));
        tw.push(run(&reg, &r, "twin", IoOp::Write, secs));
        vw.push(run(&reg, &r, "p/thick", IoOp::Write, secs));
    }
    pool.close(true).expect("close");

    println!(
        "4 KiB random, QD {QD}, one polling reactor on core {core}, {secs} s per run, median of {rounds} alternating runs"
    );
    println!(
        "{:<10} {:>14} {:>14} {:>14} {:>12}",
        "", "base (alone)", "base twin", "thick volume", "volume/twin"
    );
    for (name, d, t, v) in [
        ("randread", direct_read, median(tr), median(vr)),
        ("randwrite", direct_write, median(tw), median(vw)),
    ] {
        println!("{name:<10} {d:>14.0} {t:>14.0} {v:>14.0} {:>12.3}", v / t);
    }
}
