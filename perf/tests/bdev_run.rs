//! Runs the built `gyre-perf` binary against RAM bdevs and checks its JSON report.
//! Every run uses the hybrid idle mode on core 0 and is killed if it overruns its bound.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs gyre-perf with `args`, killing it after `limit`.
fn gyre_perf(args: &[&str], limit: Duration) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gyre-perf"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gyre-perf starts");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for gyre-perf") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gyre-perf {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut stdout).expect("read stdout");
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr).expect("read stderr");
    }
    Run {
        code: status.code(),
        stdout,
        stderr,
    }
}

fn json(run: &Run) -> Value {
    assert_eq!(
        run.code,
        Some(0),
        "gyre-perf failed: stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{}", run.stdout))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("'{key}' is not an unsigned integer in {v}"))
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("'{key}' is not a number in {v}"))
}

const BASE: [&str; 8] = [
    "bdev",
    "--bdev",
    "malloc:64M",
    "--cores",
    "0",
    "--idle",
    "hybrid",
    "--json",
];

#[test]
fn randrw_for_a_second_reports_consistent_figures() {
    let mut args = BASE.to_vec();
    args.extend([
        "--rw", "randrw", "--mix", "70", "--bs", "4k", "--qd", "16", "--time", "1s", "--ramp",
        "200ms",
    ]);
    let run = gyre_perf(&args, Duration::from_secs(60));
    let r = json(&run);

    assert_eq!(r["tool"], "gyre-perf");
    assert_eq!(r["target"]["module"], "malloc");
    assert_eq!(u(&r["target"], "block_size"), 4096);
    assert_eq!(u(&r["target"], "num_blocks"), 64 * 256);
    let w = &r["workload"];
    assert_eq!(w["rw"], "randrw");
    assert_eq!(u(w, "read_pct"), 70);
    assert_eq!(u(w, "bs"), 4096);
    assert_eq!(u(w, "qd"), 16);
    assert_eq!(f(w, "time_s"), 1.0);
    assert_eq!(f(w, "ramp_s"), 0.2);
    assert_eq!(w["cores"], serde_json::json!([0]));

    let ios = u(&r, "ios");
    assert!(ios > 0, "no I/O measured");
    assert!(f(&r, "iops") > 0.0);
    assert!(f(&r, "mib_s") > 0.0);
    assert_eq!(u(&r, "errors"), 0);
    assert!(r["first_error"].is_null());
    let (reads, writes) = (u(&r, "reads"), u(&r, "writes"));
    assert_eq!(reads + writes, ios, "reads + writes = ios");
    assert!(reads > 0 && writes > 0, "a 70/30 mix does both");
    let read_share = reads as f64 / ios as f64;
    assert!((0.6..0.8).contains(&read_share), "read share {read_share}");
    assert_eq!(u(&r, "bytes"), ios * 4096);
    let elapsed = f(&r, "elapsed_s");
    assert!((0.9..2.0).contains(&elapsed), "measured for {elapsed} s");
    let iops = f(&r, "iops");
    assert!((iops - ios as f64 / elapsed).abs() / iops < 1e-6);

    let lat = &r["latency_us"];
    let (min, p50, p99, max) = (f(lat, "min"), f(lat, "p50"), f(lat, "p99"), f(lat, "max"));
    assert!(min > 0.0 && min <= p50 && p50 <= p99 && p99 <= f(lat, "p99_9"));
    assert!(f(lat, "p99_9") <= f(lat, "p99_99") && f(lat, "p99_99") <= max);
    assert!(f(&r["read_latency_us"], "p50") > 0.0);
    assert!(f(&r["write_latency_us"], "p50") > 0.0);
    let busy = f(&r, "busy");
    assert!((0.0..=1.0).contains(&busy));

    let cores = r["per_core"].as_array().expect("per_core is a list");
    assert_eq!(cores.len(), 1);
    assert_eq!(u(&cores[0], "core"), 0);
    assert_eq!(u(&cores[0], "ios"), ios);
    assert_eq!(u(&cores[0], "errors"), 0);
}

#[test]
fn an_io_count_is_met_exactly() {
    let mut args = BASE.to_vec();
    args.extend(["--rw", "randread", "--qd", "8", "--ios", "5000"]);
    let r = json(&gyre_perf(&args, Duration::from_secs(60)));
    assert_eq!(u(&r, "ios"), 5000);
    assert_eq!(u(&r, "reads"), 5000);
    assert_eq!(u(&r, "writes"), 0);
    assert_eq!(u(&r, "errors"), 0);
    assert!(r["workload"]["time_s"].is_null());
    assert_eq!(u(&r["workload"], "ios"), 5000);
}

#[test]
fn sequential_large_writes_with_512_byte_blocks() {
    let args = [
        "bdev",
        "--bdev",
        "malloc:8M",
        "--block-size",
        "512",
        "--cores",
        "0",
        "--idle",
        "hybrid",
        "--json",
        "-q",
        "--rw",
        "write",
        "--bs",
        "128k",
        "--qd",
        "4",
        "--ios",
        "1000",
    ];
    let r = json(&gyre_perf(&args, Duration::from_secs(60)));
    assert_eq!(u(&r["target"], "block_size"), 512);
    assert_eq!(u(&r, "writes"), 1000);
    assert_eq!(u(&r, "bytes"), 1000 * 128 * 1024);
}

#[test]
fn the_text_report_has_progress_and_percentiles() {
    let args = [
        "bdev", "--bdev", "null:1G", "--cores", "0", "--idle", "hybrid", "--rw", "randread",
        "--time", "1100ms",
    ];
    let run = gyre_perf(&args, Duration::from_secs(60));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("IOPS"), "{}", run.stdout);
    assert!(run.stdout.contains("p99.99"), "{}", run.stdout);
    assert!(
        run.stderr.lines().any(|l| l.contains("IOPS")),
        "a progress line each second on stderr:\n{}",
        run.stderr
    );
}

#[test]
fn bad_arguments_fail_with_a_message() {
    for (args, needle) in [
        (
            &["bdev", "--bdev", "malloc:64M", "--rw", "read", "--bs", "6k"][..],
            "block size",
        ),
        (
            &["bdev", "--bdev", "floppy:1M", "--rw", "read"],
            "unknown bdev type",
        ),
        (
            &[
                "bdev",
                "--bdev",
                "malloc:64M",
                "--rw",
                "read",
                "--cores",
                "4000",
            ],
            "core",
        ),
        (
            &[
                "bdev",
                "--bdev",
                "malloc:64M",
                "--rw",
                "read",
                "--mix",
                "50",
            ],
            "--mix",
        ),
        (
            &["bdev", "--bdev", "malloc:64M", "--rw", "read", "--bs", "1T"],
            "--bs",
        ),
    ] {
        let run = gyre_perf(args, Duration::from_secs(30));
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(needle),
            "{args:?}: '{needle}' not in:\n{}",
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
}

#[test]
fn a_file_through_io_uring() {
    let path = std::env::temp_dir().join(format!("gyre-perf-test-{}.img", std::process::id()));
    let file = std::fs::File::create(&path).expect("create the test file");
    file.set_len(16 << 20).expect("size the test file");
    drop(file);
    let spec = format!("uring:{}", path.display());
    let args = [
        "bdev", "--bdev", &spec, "--cores", "0", "--idle", "hybrid", "--json", "-q", "--rw",
        "randrw", "--qd", "8", "--ios", "2000",
    ];
    let run = gyre_perf(&args, Duration::from_secs(60));
    let _ = std::fs::remove_file(&path);
    let r = json(&run);
    assert_eq!(r["target"]["module"], "uring");
    assert!(r["target"]["direct"].is_boolean());
    assert_eq!(u(&r, "ios"), 2000);
    assert_eq!(u(&r, "errors"), 0);
}
