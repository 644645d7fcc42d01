//! `--verify` end to end: the built `gyre-perf` against RAM bdevs (one wrapped in the fault
//! injector that flips the first byte of one block in every read of it), and against Debian's
//! tgt over iSCSI. Every run uses the hybrid idle mode on core 0 and is killed if it overruns.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TGT_IQN;

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
    // Drain both pipes on threads so a chatty run cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
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
    Run {
        code: status.code(),
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        )
    })
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("'{key}' is not an unsigned integer in {v}"))
}

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn a_corrupted_block_is_reported_with_its_lba() {
    for rw in ["randread", "read", "randrw"] {
        let run = gyre_perf(
            &[
                "bdev",
                "--bdev",
                "inject:corrupt=37:malloc:1M",
                "--cores",
                "0",
                "--idle",
                "hybrid",
                "--json",
                "-q",
                "--rw",
                rw,
                "--qd",
                "8",
                "--ios",
                "3000",
                "--verify",
            ],
            LIMIT,
        );
        assert_eq!(
            run.code,
            Some(1),
            "{rw}: a mismatch fails the run: {}",
            run.stderr
        );
        let r = json(&run);
        let v = &r["verify"];
        assert!(u(v, "mismatches") >= 1, "{rw}: {v}");
        let m = &v["first_mismatch"];
        assert_eq!(u(m, "lba"), 37, "{rw}: {m}");
        assert_eq!(u(m, "offset"), 0, "the injector flips the first byte");
        // The injector inverts the byte: found = !expected.
        assert_eq!(u(m, "found"), !u(m, "expected") & 0xff);
        assert_eq!(u(m, "expected"), u64::from(b'G'), "the magic's first byte");
        assert!(
            run.stderr.contains("LBA 37 byte 0"),
            "{rw}: the mismatch is named on stderr:\n{}",
            run.stderr
        );
        assert_eq!(u(&r, "errors"), 0, "no I/O failed: the data was wrong");
    }
}

#[test]
fn clean_runs_pass_in_every_mode() {
    for (rw, extra) in [
        ("randrw", &["--mix", "50", "--ios", "20000"][..]),
        ("randwrite", &["--ios", "5000"]),
        ("write", &["--bs", "16k", "--ios", "500"]),
        ("randread", &["--ios", "5000"]),
    ] {
        let mut args = vec![
            "bdev",
            "--bdev",
            "malloc:2M",
            "--block-size",
            "512",
            "--cores",
            "0",
            "--idle",
            "hybrid",
            "--json",
            "-q",
            "--rw",
            rw,
            "--qd",
            "16",
            "--verify",
        ];
        args.extend_from_slice(extra);
        let run = gyre_perf(&args, LIMIT);
        assert_eq!(run.code, Some(0), "{rw}: {}\n{}", run.stdout, run.stderr);
        let r = json(&run);
        let v = &r["verify"];
        assert_eq!(u(v, "mismatches"), 0, "{rw}: {v}");
        assert!(v["first_mismatch"].is_null());
        assert!(
            u(v, "blocks_checked") > 0,
            "{rw}: something was checked: {v}"
        );
        if rw == "randread" {
            // Prefilled, so every block read was checked: 5000 I/Os of 8 blocks.
            assert_eq!(u(v, "blocks_checked"), 5000 * 8);
        }
        if rw == "write" {
            // Read back: the 2 MiB region in 512-byte blocks, all written.
            assert_eq!(u(v, "blocks_checked"), 4096);
        }
    }
    // Without --verify the report has no verify section.
    let run = gyre_perf(
        &[
            "bdev",
            "--bdev",
            "malloc:1M",
            "--cores",
            "0",
            "--idle",
            "hybrid",
            "--json",
            "-q",
            "--rw",
            "randread",
            "--ios",
            "100",
        ],
        LIMIT,
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(json(&run)["verify"].is_null());
}

#[test]
fn verify_uses_only_the_region_and_two_reactors_split_it() {
    let run = gyre_perf(
        &[
            "run",
            "bdev:malloc:4M",
            "--cores",
            "0-1",
            "--idle",
            "hybrid",
            "--json",
            "-q",
            "--rw",
            "write",
            "--offset",
            "1M",
            "--size",
            "1M",
            "--qd",
            "4",
            "--ios",
            "256",
            "--verify",
        ],
        LIMIT,
    );
    if run.stderr.contains("not available to this process") {
        println!("skipping: fewer than two cores");
        return;
    }
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let r = json(&run);
    // 1 MiB of 4 KiB blocks, read back in full (each job checks its half).
    assert_eq!(u(&r["verify"], "blocks_checked"), 256);
    assert_eq!(u(&r["workload"], "offset"), 1 << 20);
}

#[test]
fn verify_over_iscsi_against_tgt() {
    let Some(tgt) = common::tgtd_or_skip("verify_over_iscsi_against_tgt") else {
        return;
    };
    let url = format!("iscsi://127.0.0.1:{}/{TGT_IQN}/1", tgt.port);
    // Mixed 4 KiB I/O over two sessions, then large writes (R2T and unsolicited data) read
    // back.
    for extra in [
        &[
            "--rw",
            "randrw",
            "--connections",
            "2",
            "--qd",
            "16",
            "--ios",
            "4000",
        ][..],
        &["--rw", "write", "--bs", "256k", "--qd", "4", "--ios", "64"],
        &[
            "--rw", "randread", "--bs", "64k", "--qd", "8", "--ios", "500",
        ],
    ] {
        let mut args = vec![
            "run", &url, "--cores", "0", "--idle", "hybrid", "--json", "-q", "--size", "8M",
            "--verify",
        ];
        args.extend_from_slice(extra);
        let run = gyre_perf(&args, LIMIT);
        assert_eq!(
            run.code,
            Some(0),
            "{extra:?}: {}\n{}",
            run.stdout,
            run.stderr
        );
        let r = json(&run);
        assert_eq!(r["target"]["kind"], "iscsi");
        assert_eq!(u(&r["target"], "block_size"), 512);
        assert_eq!(u(&r, "errors"), 0);
        let v = &r["verify"];
        assert_eq!(u(v, "mismatches"), 0, "{extra:?}: {v}");
        assert!(u(v, "blocks_checked") > 0, "{extra:?}: {v}");
    }
    // CHAP from the URL's credentials; a wrong secret is refused at login.
    let chap = format!(
        "iscsi://{}%{}@127.0.0.1:{}/{}/1",
        common::TGT_CHAP_USER,
        common::TGT_CHAP_SECRET,
        tgt.port,
        common::TGT_CHAP_IQN
    );
    let run = gyre_perf(
        &[
            "run", &chap, "--cores", "0", "--idle", "hybrid", "--json", "-q", "--size", "1M",
            "--rw", "randrw", "--ios", "500", "--verify",
        ],
        LIMIT,
    );
    assert_eq!(run.code, Some(0), "CHAP: {}\n{}", run.stdout, run.stderr);
    let r = json(&run);
    assert!(
        !r["target"]["spec"]
            .as_str()
            .unwrap_or("")
            .contains(common::TGT_CHAP_SECRET),
        "the secret stays out of the report"
    );
    let wrong = format!(
        "iscsi://{}%wrong-secret-99@127.0.0.1:{}/{}/1",
        common::TGT_CHAP_USER,
        tgt.port,
        common::TGT_CHAP_IQN
    );
    let run = gyre_perf(
        &[
            "run", &wrong, "--cores", "0", "--idle", "hybrid", "--rw", "read",
        ],
        LIMIT,
    );
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("cannot log in"), "{}", run.stderr);
    // A wrong target name fails cleanly (exit 2, a message, no panic).
    let bad = format!(
        "iscsi://127.0.0.1:{}/iqn.2024-01.io.gyre.perf-test:nope/1",
        tgt.port
    );
    let run = gyre_perf(
        &[
            "run", &bad, "--cores", "0", "--idle", "hybrid", "--rw", "read",
        ],
        LIMIT,
    );
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("cannot log in"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}
