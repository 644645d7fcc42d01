//! End to end: SIGTERM lets a slow RPC in flight finish, then shuts down cleanly (exit 0,
//! socket removed); a second signal during the shutdown exits at once with a non-zero code.

mod common;

use std::time::{Duration, Instant};

use common::{Gyred, TempDir};
use serde_json::json;

#[test]
fn sigterm_waits_for_a_slow_rpc_then_exits_cleanly() {
    let dir = TempDir::new("term");
    let cfg = dir.path("c.json");
    std::fs::write(&cfg, "{\"version\": 1}").unwrap();
    let mut g = Gyred::start(&dir.0, &["--config", cfg.to_str().unwrap()]);
    let mut slow = g.client();
    let started = Instant::now();
    let rpc =
        std::thread::spawn(move || slow.call("reactor_stats", Some(json!({"sample_ms": 1500}))));
    std::thread::sleep(Duration::from_millis(300));
    g.signal(libc::SIGTERM);
    // New connections are refused soon after the signal, while the slow call still runs.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let refused = match gyre_api::Client::connect(&g.socket, Duration::from_secs(2)) {
            Err(_) => true,
            Ok(mut c) => c.call("bdev_list", None).is_err(),
        };
        if refused {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still serving new requests after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = rpc
        .join()
        .expect("rpc thread")
        .expect("the slow RPC is answered");
    assert_eq!(result["sample_ms"], 1500);
    assert!(started.elapsed() >= Duration::from_millis(1400));
    let st = g.wait_exit(Duration::from_secs(15)).expect("gyred exits");
    assert_eq!(st.code(), Some(0), "stderr:\n{}", g.stderr());
    assert!(!g.socket.exists(), "socket removed");
    let err = g.stderr();
    assert!(
        err.contains("shutting down") && err.contains("gyred stopped"),
        "{err}"
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let dir = TempDir::new("twice");
    let cfg = dir.path("c.json");
    std::fs::write(&cfg, "{\"version\": 1}").unwrap();
    let mut g = Gyred::start(&dir.0, &["--config", cfg.to_str().unwrap()]);
    let mut slow = g.client();
    let rpc =
        std::thread::spawn(move || slow.call("reactor_stats", Some(json!({"sample_ms": 8000}))));
    std::thread::sleep(Duration::from_millis(300));
    g.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        g.child.try_wait().unwrap().is_none(),
        "still draining the slow RPC"
    );
    let t0 = Instant::now();
    g.signal(libc::SIGINT);
    let st = g
        .wait_exit(Duration::from_secs(2))
        .expect("exits at once on the second signal");
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(st.code(), Some(1));
    assert!(
        rpc.join().expect("rpc thread").is_err(),
        "the slow RPC was cut off"
    );
}
