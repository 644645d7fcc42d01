//! Reactors end to end: pinning, messages between reactors, poller scheduling and accounting,
//! hybrid idle sleep and wake-up, clean stop. All in hybrid mode so that the machine's other
//! core stays usable.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gyre_reactor::{
    local, CallError, CoreList, IdlePolicy, PollStatus, Poller, PollerKind, ReactorConfig,
    ReactorError, Reactors,
};

const T: Duration = Duration::from_secs(5);

fn start(n: usize) -> Reactors {
    let cores = CoreList::first_available(n).expect("cores");
    Reactors::start(&ReactorConfig {
        cores,
        idle: IdlePolicy::hybrid(),
    })
    .expect("reactors start")
}

#[test]
fn reactors_run_pinned_on_their_cores() {
    let reactors = start(2);
    for h in reactors.handles() {
        assert_eq!(
            h.actual_core(),
            Some(h.core()),
            "reactor {} pinned",
            h.index()
        );
        let seen = h.call(gyre_reactor::cores::current_cpu, T).expect("call");
        assert_eq!(seen, Some(h.core()));
        let idx = h.call(|| local().map(|l| l.index()), T).unwrap();
        assert_eq!(idx, Some(h.index()));
    }
}

#[test]
fn unavailable_core_is_refused() {
    let err = Reactors::start(&ReactorConfig {
        cores: CoreList::new(vec![4000]).unwrap(),
        idle: IdlePolicy::hybrid(),
    })
    .err()
    .expect("must fail");
    assert!(matches!(err, ReactorError::CoreNotAvailable(4000)), "{err}");
}

#[test]
fn closures_ping_pong_between_reactors() {
    let reactors = start(2);
    let r0 = reactors.get(0).unwrap().clone();
    let r1 = reactors.get(1).unwrap().clone();
    let (tx, rx) = crossbeam::channel::bounded(1);
    // A counter bounces 1000 times between the reactors; each hop checks where it runs.
    fn hop(
        n: u32,
        here: gyre_reactor::ReactorHandle,
        there: gyre_reactor::ReactorHandle,
        done: crossbeam::channel::Sender<(u32, bool)>,
    ) {
        let on_right_reactor = here.is_current();
        if n == 1000 || !on_right_reactor {
            let _ = done.send((n, on_right_reactor));
            return;
        }
        let (h, t) = (there.clone(), here.clone());
        there.send(move || hop(n + 1, h, t, done)).expect("send");
    }
    let (a, b) = (r0.clone(), r1.clone());
    r0.send(move || hop(0, a, b, tx)).unwrap();
    let (n, ok) = rx.recv_timeout(T).expect("ping-pong finished");
    assert!(ok, "a message ran on the wrong reactor");
    assert_eq!(n, 1000);
}

#[test]
fn typed_channel_delivers_in_order_without_loss() {
    let reactors = start(2);
    let r1 = reactors.get(1).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let sender = r1
        .open_channel(
            64,
            move || {
                let core = local().expect("on reactor").core();
                move |v: u64| {
                    assert_eq!(gyre_reactor::cores::current_cpu(), Some(core));
                    s.lock().unwrap().push(v);
                }
            },
            T,
        )
        .expect("open channel");
    // Send from reactor 0 (another core) and from this thread.
    let s0 = sender.clone();
    reactors
        .get(0)
        .unwrap()
        .call(
            move || {
                for v in 0..500u64 {
                    let mut m = v;
                    while let Err(back) = s0.send(m) {
                        m = back;
                        std::hint::spin_loop();
                    }
                }
            },
            T,
        )
        .unwrap();
    let deadline = Instant::now() + T;
    while seen.lock().unwrap().len() < 500 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let got = seen.lock().unwrap().clone();
    assert_eq!(got, (0..500).collect::<Vec<_>>());
    drop(sender);
}

#[test]
fn call_times_out_and_reports_stop() {
    let mut reactors = start(1);
    let h = reactors.get(0).unwrap().clone();
    let h2 = h.clone();
    // Occupy the reactor, then ask with a short timeout.
    let blocker =
        std::thread::spawn(move || h2.call(|| std::thread::sleep(Duration::from_millis(300)), T));
    std::thread::sleep(Duration::from_millis(50));
    let r = h.call(|| 1, Duration::from_millis(20));
    assert_eq!(r, Err(CallError::Timeout(Duration::from_millis(20))));
    blocker.join().unwrap().unwrap();
    reactors.stop();
    assert_eq!(h.call(|| 1, T), Err(CallError::Stopped));
    assert_eq!(h.send(|| {}), Err(CallError::Stopped));
}

#[test]
fn pollers_are_scheduled_and_accounted() {
    let reactors = start(1);
    let h = reactors.get(0).unwrap();
    let order = Arc::new(Mutex::new(Vec::<&'static str>::new()));
    let timed_runs = Arc::new(AtomicU64::new(0));
    let (o1, o2, tr) = (order.clone(), order.clone(), timed_runs.clone());
    let busy_left = Arc::new(AtomicU64::new(2000));
    let bl = busy_left.clone();
    let ids = h
        .call(
            move || {
                let l = local().unwrap();
                // Registered first, but must run after the active poller in every iteration.
                let flush = l.register_end_of_iteration_poller("flush", move || {
                    let mut o = o1.lock().unwrap();
                    if o.len() < 6 {
                        o.push("flush");
                    }
                    PollStatus::Idle
                });
                let active = l.register_poller("work", move || {
                    {
                        let mut o = o2.lock().unwrap();
                        if o.len() < 6 {
                            o.push("work");
                        }
                    }
                    if bl.load(Ordering::Relaxed) > 0 {
                        bl.fetch_sub(1, Ordering::Relaxed);
                        PollStatus::Busy
                    } else {
                        PollStatus::Idle
                    }
                });
                let timed = l.register_timed_poller("tick", Duration::from_millis(10), move || {
                    tr.fetch_add(1, Ordering::Relaxed);
                    PollStatus::Idle
                });
                (flush, active, timed)
            },
            T,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        order.lock().unwrap().as_slice(),
        &["work", "flush", "work", "flush", "work", "flush"]
    );
    // A 10 ms timer over ~300 ms: generous bounds, the machine is shared.
    let runs = timed_runs.load(Ordering::Relaxed);
    assert!((10..=40).contains(&runs), "timed poller ran {runs} times");

    let stats = h.poller_stats(T).unwrap();
    let work = stats.iter().find(|s| s.id == ids.1).unwrap();
    assert_eq!(work.name, "work");
    assert_eq!(work.kind, PollerKind::Active);
    assert_eq!(work.busy_runs, 2000, "busy runs are counted exactly");
    assert!(work.runs > 2000);
    assert!(work.busy_ns > 0 && work.idle_ns > 0);
    let tick = stats.iter().find(|s| s.id == ids.2).unwrap();
    assert_eq!(tick.kind, PollerKind::Timed(Duration::from_millis(10)));
    assert_eq!(tick.busy_runs, 0);
    let flush = stats.iter().find(|s| s.id == ids.0).unwrap();
    assert_eq!(flush.kind, PollerKind::EndOfIteration);

    // Unregistering stops a poller.
    let before = timed_runs.load(Ordering::Relaxed);
    let id = ids.2;
    h.call(move || local().unwrap().unregister_poller(id), T)
        .unwrap();
    std::thread::sleep(Duration::from_millis(60));
    let after = timed_runs.load(Ordering::Relaxed);
    assert!(
        after <= before + 1,
        "unregistered timed poller kept running"
    );
    assert!(h.poller_stats(T).unwrap().iter().all(|s| s.id != id));
}

#[test]
fn busy_and_idle_time_follow_the_work() {
    let reactors = start(1);
    let h = reactors.get(0).unwrap();
    // Idle reactor: almost all idle.
    let l0 = h.load();
    std::thread::sleep(Duration::from_millis(200));
    let idle = h.load().since(&l0);
    assert!(
        idle.busy_fraction() < 0.2,
        "idle reactor busy {}",
        idle.busy_fraction()
    );
    assert!(h.load().sleeps > 0, "a hybrid reactor sleeps when idle");

    // A poller that is busy for 200 ms: mostly busy.
    let until = Instant::now() + Duration::from_millis(250);
    h.call(
        move || {
            local().unwrap().register_poller("spin", move || {
                if Instant::now() < until {
                    // Simulated work.
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_micros(20) {}
                    PollStatus::Busy
                } else {
                    PollStatus::Done
                }
            });
        },
        T,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let l1 = h.load();
    std::thread::sleep(Duration::from_millis(150));
    let busy = h.load().since(&l1);
    assert!(
        busy.busy_fraction() > 0.8,
        "busy reactor at {}",
        busy.busy_fraction()
    );
    std::thread::sleep(Duration::from_millis(150));
    // The finished poller was removed.
    assert!(h.poller_stats(T).unwrap().iter().all(|s| s.name != "spin"));
}

#[test]
fn hybrid_reactor_wakes_on_message_and_fd_within_bound() {
    let reactors = start(1);
    let h = reactors.get(0).unwrap();
    // Let it fall asleep.
    std::thread::sleep(Duration::from_millis(50));
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let sleeps = h.load().sleeps;
        std::thread::sleep(Duration::from_millis(5));
        assert!(h.load().sleeps >= sleeps);
        let sent = Instant::now();
        let got = h.call(move || sent.elapsed(), T).unwrap();
        worst = worst.max(got);
    }
    // Typical wake-up is tens of microseconds; the bound is generous for a noisy machine.
    assert!(
        worst < Duration::from_millis(50),
        "worst message wake-up {worst:?}"
    );

    // A registered file descriptor wakes it too.
    // SAFETY: plain syscall; the fd is owned below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(efd >= 0);
    // SAFETY: fresh fd.
    let efd = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
    let woke_at = Arc::new(Mutex::new(None::<Instant>));
    let (fd2, w2) = (efd.clone(), woke_at.clone());
    h.call(
        move || {
            let l = local().unwrap();
            l.register_wake_fd(fd2.as_raw_fd()).unwrap();
            l.register_poller("fd", move || {
                let mut v = 0u64;
                // SAFETY: reading 8 bytes into v from a non-blocking eventfd.
                let n = unsafe { libc::read(fd2.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
                if n == 8 {
                    *w2.lock().unwrap() = Some(Instant::now());
                    PollStatus::Busy
                } else {
                    PollStatus::Idle
                }
            });
        },
        T,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let sleeps_before = h.load().sleeps;
    let written = Instant::now();
    let one = 1u64;
    // SAFETY: writing 8 bytes to an eventfd.
    assert_eq!(
        unsafe { libc::write(efd.as_raw_fd(), (&one as *const u64).cast(), 8) },
        8
    );
    let deadline = Instant::now() + T;
    let woke = loop {
        if let Some(t) = *woke_at.lock().unwrap() {
            break t;
        }
        assert!(Instant::now() < deadline, "fd did not wake the reactor");
        std::thread::sleep(Duration::from_micros(200));
    };
    assert!(sleeps_before > 0);
    let latency = woke.duration_since(written);
    assert!(
        latency < Duration::from_millis(50),
        "fd wake-up took {latency:?}"
    );
}

#[test]
fn timed_poller_wakes_a_sleeping_reactor() {
    let reactors = start(1);
    let h = reactors.get(0).unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    h.call(
        move || {
            local()
                .unwrap()
                .register_timed_poller("t", Duration::from_millis(20), move || {
                    r.fetch_add(1, Ordering::Relaxed);
                    PollStatus::Idle
                });
        },
        T,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(250));
    let n = runs.load(Ordering::Relaxed);
    // Each run happens after a sleep, with no busy polling in between.
    assert!((4..=14).contains(&n), "20 ms timer ran {n} times in 250 ms");
    assert!(h.load().sleeps >= n);
}

struct Tracked {
    shut: Arc<AtomicBool>,
}

impl Poller for Tracked {
    fn poll(&mut self) -> PollStatus {
        PollStatus::Idle
    }
    fn shutdown(&mut self) {
        self.shut.store(true, Ordering::SeqCst);
    }
}

#[test]
fn stop_drains_messages_and_shuts_pollers_down() {
    let mut reactors = start(2);
    let shut = Arc::new(AtomicBool::new(false));
    let s = shut.clone();
    reactors
        .get(1)
        .unwrap()
        .call(
            move || {
                local()
                    .unwrap()
                    .register_poller("tracked", Tracked { shut: s });
            },
            T,
        )
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..1000 {
        let r = ran.clone();
        reactors
            .get(1)
            .unwrap()
            .send(move || {
                r.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
    }
    reactors.stop();
    assert_eq!(
        ran.load(Ordering::Relaxed),
        1000,
        "every queued message ran"
    );
    assert!(shut.load(Ordering::SeqCst), "poller shutdown was called");
}

#[test]
fn idle_policy_parses() {
    assert_eq!("poll".parse::<IdlePolicy>().unwrap(), IdlePolicy::Poll);
    assert_eq!(
        "hybrid".parse::<IdlePolicy>().unwrap(),
        IdlePolicy::hybrid()
    );
    assert_eq!(
        "hybrid:50us".parse::<IdlePolicy>().unwrap(),
        IdlePolicy::Hybrid {
            spin: Duration::from_micros(50)
        }
    );
    assert_eq!(
        "hybrid:2ms".parse::<IdlePolicy>().unwrap(),
        IdlePolicy::Hybrid {
            spin: Duration::from_millis(2)
        }
    );
    assert!("sleepy".parse::<IdlePolicy>().is_err());
    assert!("hybrid:xus".parse::<IdlePolicy>().is_err());
}
