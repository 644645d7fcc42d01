//! The model workload on a hybrid-idle reactor: submission goes through the end-of-iteration
//! poller (one `io_uring_enter` per iteration), and a reactor asleep in epoll is woken by the
//! ring's eventfd when a completion lands.
//!
//! The wake-up is shown with lone flushes: each has dirty page cache to write back, so it
//! outlasts the reactor's 200 µs spin and the reactor goes to sleep with it in flight. A
//! flush completes on an io-wq worker, which signals nothing but the eventfd; without the
//! eventfd the reactor would sleep until its 1 s safety timeout.

mod common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::{assert_file_matches, random_content, Config, TempFile, Workload};
use gyre_bdev::{Bdev, BdevRegistry, IoOp, IoRequest};
use gyre_reactor::{CoreList, IdlePolicy, PollStatus, ReactorConfig, Reactors};
use gyre_uring::{thread_ring_stats, RingStats, UringBdev, UringOptions};

const SIZE: usize = 8 << 20;
const QUIET_ROUNDS: usize = 12;

struct Outcome {
    model: Vec<u8>,
    stats: common::WorkStats,
    ring: RingStats,
    /// (latency, whether the reactor slept while the flush was in flight)
    flushes: Vec<(Duration, bool)>,
}

enum Phase {
    Random,
    QuietSubmit,
    QuietWait { since: Instant, sleeps_before: u64 },
}

#[test]
fn reactor_batches_submissions_and_wakes_on_completions() {
    let content = random_content(31, SIZE);
    let file = TempFile::create(&std::env::temp_dir(), "reactor", &content);
    let bdev = UringBdev::open("r0", &file.path, &UringOptions::default()).expect("open");
    assert!(bdev.is_direct());
    let bs = bdev.info().block_size();
    let reg = BdevRegistry::new();
    reg.register(bdev.clone()).unwrap();
    let desc = reg.open("r0", true, "test", None).unwrap();
    // A second, buffered handle on the file dirties page cache for the flushes to write.
    let dirtier = std::fs::OpenOptions::new()
        .write(true)
        .open(&file.path)
        .unwrap();

    let mut reactors = Reactors::start(&ReactorConfig {
        cores: CoreList::new(vec![0]).unwrap(),
        idle: IdlePolicy::hybrid(),
    })
    .expect("start reactor");
    let handle = reactors.get(0).unwrap().clone();
    let (tx, rx) = crossbeam::channel::bounded::<Result<Outcome, String>>(1);
    let h2 = handle.clone();
    handle
        .call(
            move || {
                let local = gyre_reactor::local().expect("on the reactor");
                let mut ch = match desc.channel() {
                    Ok(ch) => ch,
                    Err(e) => {
                        let _ = tx.send(Err(format!("channel: {e}")));
                        return;
                    }
                };
                let mut w = Workload::new(
                    Config {
                        seed: 41,
                        ops: 1500,
                        ..Config::default()
                    },
                    content,
                    bs,
                );
                let mut phase = Phase::Random;
                let mut flushes = Vec::new();
                let mut dirty_at = 0u64;
                local.register_poller("model", move || {
                    let _keep = &desc;
                    let fail = |e: String| {
                        let _ = tx.send(Err(e));
                        PollStatus::Done
                    };
                    match phase {
                        Phase::Random => match w.step(&mut ch) {
                            Err(e) => fail(e),
                            Ok(progress) => {
                                if w.finished() {
                                    if let Err(e) = w.check_coverage() {
                                        return fail(e);
                                    }
                                    phase = Phase::QuietSubmit;
                                }
                                if progress {
                                    PollStatus::Busy
                                } else {
                                    PollStatus::Idle
                                }
                            }
                        },
                        Phase::QuietSubmit => {
                            if flushes.len() == QUIET_ROUNDS {
                                let ring = thread_ring_stats().unwrap_or_default();
                                let _ = tx.send(Ok(Outcome {
                                    model: std::mem::take(&mut w.model),
                                    stats: w.stats,
                                    ring,
                                    flushes: std::mem::take(&mut flushes),
                                }));
                                return PollStatus::Done;
                            }
                            // Rewrite 2 MiB with the same bytes through the page cache.
                            let len = 2 << 20;
                            let off = dirty_at % (SIZE as u64 - len);
                            dirty_at += len;
                            let bytes = &w.model[off as usize..(off + len) as usize];
                            if let Err(e) = dirtier.write_all_at(bytes, off) {
                                return fail(format!("dirtying the page cache: {e}"));
                            }
                            ch.submit(IoRequest::control(IoOp::Flush, 0, 0, 9000));
                            phase = Phase::QuietWait {
                                since: Instant::now(),
                                sleeps_before: h2.load().sleeps,
                            };
                            PollStatus::Busy
                        }
                        Phase::QuietWait {
                            since,
                            sleeps_before,
                        } => {
                            let mut got = None;
                            ch.poll(|c| got = Some(c.status));
                            match got {
                                None => PollStatus::Idle,
                                Some(Err(e)) => fail(format!("flush failed: {e}")),
                                Some(Ok(())) => {
                                    let slept = h2.load().sleeps > sleeps_before;
                                    flushes.push((since.elapsed(), slept));
                                    phase = Phase::QuietSubmit;
                                    PollStatus::Busy
                                }
                            }
                        }
                    }
                });
            },
            Duration::from_secs(10),
        )
        .expect("reactor call");

    let outcome = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the reactor workload finished in time")
        .unwrap_or_else(|e| panic!("{e}"));
    let load = handle.load();
    reactors.stop();
    eprintln!(
        "{:?}\n{:?}\nflushes: {:?}\nload: {:?}",
        outcome.stats, outcome.ring, outcome.flushes, load
    );

    let ring = outcome.ring;
    assert!(ring.on_reactor);
    assert!(ring.fixed_buffers && ring.fixed_files);
    assert!(
        ring.enters < ring.sqes,
        "one enter per iteration batches SQEs: {} enters for {} SQEs",
        ring.enters,
        ring.sqes
    );
    assert!(ring.eventfd_arms > 0);
    assert!(ring.eventfd_signals > 0, "the kernel signalled the eventfd");
    let slept = outcome.flushes.iter().filter(|(_, s)| *s).count();
    assert!(
        slept > 0,
        "the reactor slept with a flush in flight at least once: {:?}",
        outcome.flushes
    );
    for (lat, s) in &outcome.flushes {
        assert!(
            *lat < Duration::from_millis(500),
            "a flush took {lat:?} (slept: {s}): the eventfd did not wake the reactor"
        );
    }
    assert!(load.sleeps > 0);

    drop(reg);
    assert_file_matches(&file.path, &outcome.model, bs as usize);
}

/// A completion posted to the ring from another thread (`MSG_RING` from a second ring) runs
/// no task work on the reactor: only the eventfd can wake it. Each of several messages must
/// wake the sleeping reactor well before its 1 s safety timeout (which, counted from when it
/// fell asleep about 30 ms before the message, would fire some 970 ms after it).
#[test]
fn sleeping_reactor_is_woken_by_the_ring_eventfd() {
    let content = random_content(32, 1 << 20);
    let file = TempFile::create(&std::env::temp_dir(), "wake", &content);
    let bdev = UringBdev::open("w0", &file.path, &UringOptions::default()).expect("open");
    let mut reactors = Reactors::start(&ReactorConfig {
        cores: CoreList::new(vec![0]).unwrap(),
        idle: IdlePolicy::hybrid(),
    })
    .expect("start reactor");
    let handle = reactors.get(0).unwrap().clone();
    let b = bdev.clone();
    let ring_fd = handle
        .call(
            move || {
                let ch = b.create_channel().expect("channel");
                let fd = gyre_uring::thread_ring_fd();
                // Keep the channel (and so the ring's poller) alive without doing anything.
                let local = gyre_reactor::local().expect("on the reactor");
                local.register_poller("holder", move || {
                    let _ = &ch;
                    PollStatus::Idle
                });
                fd
            },
            Duration::from_secs(10),
        )
        .expect("reactor call")
        .expect("the reactor has a ring");

    let mut sender = io_uring::IoUring::new(8).expect("sender ring");
    let mut wake_times = Vec::new();
    for i in 0..5u64 {
        // Let the reactor settle into its sleep.
        std::thread::sleep(Duration::from_millis(30));
        let before = handle.load();
        let entry =
            io_uring::opcode::MsgRingData::new(io_uring::types::Fd(ring_fd), 0, u64::MAX - i, None)
                .build();
        // SAFETY: the entry refers to no memory.
        unsafe { sender.submission().push(&entry) }.expect("push");
        let t0 = Instant::now();
        sender.submit_and_wait(1).expect("msg_ring");
        let res = sender
            .completion()
            .next()
            .expect("msg_ring completion")
            .result();
        assert!(res >= 0, "MSG_RING failed: {res}");
        let deadline = t0 + Duration::from_millis(500);
        loop {
            if handle.load().iterations > before.iterations + 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "message {i}: the reactor did not wake (it only would at its 1 s timeout)"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        wake_times.push(t0.elapsed());
    }
    let ring = handle
        .call(thread_ring_stats, Duration::from_secs(10))
        .expect("call")
        .expect("ring");
    reactors.stop();
    eprintln!("wake times {wake_times:?}\n{ring:?}");
    assert_eq!(ring.stray_cqes, 5, "every message was reaped and ignored");
    assert!(
        ring.eventfd_signals >= 5,
        "each message signalled the eventfd"
    );
}
