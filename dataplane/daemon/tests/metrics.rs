//! In process: I/O done through the daemon's own bdev registry on its reactor shows up,
//! exactly, in `bdev_iostat` and in the Prometheus exposition at /metrics.
//!
//! Until a protocol module exists there is no way to do I/O through a separate gyred
//! process, so this test runs the daemon as a library and submits I/O on its reactor.

mod common;

use std::time::Duration;

use common::{parse_openmetrics, sample, scrape, TempDir};
use gyre_bdev::{IoOp, IoRequest};
use gyre_daemon::{Daemon, DaemonOptions};
use gyre_reactor::{BufferPool, ClassConfig, IdlePolicy, PoolConfig};
use serde_json::json;

#[test]
fn bdev_counters_match_the_io_done() {
    let dir = TempDir::new("metrics");
    let cfg = dir.path("c.json");
    std::fs::write(&cfg, json!({"version": 1, "modules": [{"module": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "m0", "size": "4M", "block_size": 512}}]}]}).to_string()).unwrap();
    let mut opts = DaemonOptions::new("0".parse().unwrap());
    opts.idle = IdlePolicy::hybrid();
    opts.rpc_socket = dir.path("s.sock");
    opts.config = Some(cfg);
    opts.metrics = Some("127.0.0.1:0".parse().unwrap());
    let running = Daemon::new(opts).expect("daemon").start().expect("start");
    let ctx = running.context().clone();

    // 5 writes of 4 KiB, 3 reads of 2 KiB, 2 flushes and 1 read out of range, on reactor 0.
    let desc = ctx
        .bdevs()
        .open("m0", true, "metrics test", None)
        .expect("open m0");
    let done = ctx.reactors()[0]
        .call(
            move || {
                let pool = BufferPool::new(&PoolConfig {
                    classes: vec![ClassConfig {
                        size: 4096,
                        count: 16,
                    }],
                    prefer_hugepages: false,
                })
                .expect("pool");
                let cache = pool.local();
                let mut ch = desc.channel().expect("channel");
                let mut reqs = Vec::new();
                for i in 0..5 {
                    reqs.push(IoRequest::new(
                        IoOp::Write,
                        i * 8,
                        8,
                        cache.try_alloc(4096).unwrap(),
                        i,
                    ));
                }
                for i in 0..3 {
                    reqs.push(IoRequest::new(
                        IoOp::Read,
                        i * 4,
                        4,
                        cache.try_alloc(4096).unwrap(),
                        10 + i,
                    ));
                }
                reqs.push(IoRequest::control(IoOp::Flush, 0, 0, 20));
                reqs.push(IoRequest::control(IoOp::Flush, 0, 0, 21));
                reqs.push(IoRequest::new(
                    IoOp::Read,
                    1 << 20,
                    1,
                    cache.try_alloc(4096).unwrap(),
                    22,
                ));
                let n = reqs.len();
                for r in reqs {
                    ch.submit(r);
                }
                let mut completed = 0;
                let mut failed = 0;
                for _ in 0..1000 {
                    ch.poll(|c| {
                        completed += 1;
                        failed += usize::from(c.status.is_err());
                    });
                    if completed == n {
                        break;
                    }
                }
                (completed, failed)
            },
            Duration::from_secs(10),
        )
        .expect("I/O on the reactor");
    assert_eq!(done, (11, 1));

    // Over JSON-RPC.
    let mut c = gyre_api::Client::connect(running.socket_path(), Duration::from_secs(10)).unwrap();
    let st = c.call("bdev_iostat", Some(json!({"name": "m0"}))).unwrap();
    let m0 = &st[0];
    assert_eq!(
        (m0["write"]["ops"].as_u64(), m0["write"]["bytes"].as_u64()),
        (Some(5), Some(5 * 4096))
    );
    assert_eq!(
        (
            m0["read"]["ops"].as_u64(),
            m0["read"]["bytes"].as_u64(),
            m0["read"]["errors"].as_u64()
        ),
        (Some(3), Some(3 * 2048), Some(1))
    );
    assert_eq!(
        (m0["other"]["ops"].as_u64(), m0["other"]["bytes"].as_u64()),
        (Some(2), Some(0))
    );
    let buckets: u64 = m0["write"]["latency"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(buckets, 5);

    // Over Prometheus.
    let addr = running.metrics_addr().expect("metrics address").to_string();
    let samples = parse_openmetrics(&scrape(&addr));
    let get = |name: &str, op: &str| sample(&samples, name, &[("bdev", "m0"), ("op", op)]);
    assert_eq!(get("gyre_bdev_ops_total", "write"), Some(5.0));
    assert_eq!(get("gyre_bdev_bytes_total", "write"), Some(20480.0));
    assert_eq!(get("gyre_bdev_ops_total", "read"), Some(3.0));
    assert_eq!(get("gyre_bdev_bytes_total", "read"), Some(6144.0));
    assert_eq!(get("gyre_bdev_errors_total", "read"), Some(1.0));
    assert_eq!(get("gyre_bdev_ops_total", "other"), Some(2.0));
    assert_eq!(get("gyre_bdev_errors_total", "write"), Some(0.0));
    assert_eq!(get("gyre_bdev_latency_seconds_count", "write"), Some(5.0));
    assert_eq!(get("gyre_bdev_latency_seconds_count", "read"), Some(3.0));
    let inf = sample(
        &samples,
        "gyre_bdev_latency_seconds_bucket",
        &[("bdev", "m0"), ("op", "write"), ("le", "+Inf")],
    );
    assert_eq!(inf, Some(5.0));
    assert!(get("gyre_bdev_latency_seconds_sum", "write").unwrap() > 0.0);
    assert!(
        sample(
            &samples,
            "gyre_reactor_iterations_total",
            &[("reactor", "0"), ("core", "0")]
        )
        .unwrap()
            > 0.0
    );

    running.shutdown();
    assert!(!dir.path("s.sock").exists());
}
