//! libiscsi's conformance suite (`iscsi-test-cu`, Debian package `libiscsi-bin`) against a
//! LUN of the real `gyred`: a 256 MiB RAM disk with 512-byte blocks behind two portals, so
//! the multipath tests reach the same LUN by two paths. (With 4096-byte blocks two tests,
//! ExtendedCopy.Simple and GetLBAStatus.UnmapSingle, write 2048 and 257 blocks in one
//! command without looking at MAXIMUM TRANSFER LENGTH, 1 MiB here, and fail on that alone.)
//!
//! Each test family runs in its own `iscsi-test-cu` process with a time bound; the Run
//! Summary of every family and the totals are printed. Any failed test fails this test,
//! except the ones listed in `EXCLUDED` (by name, each with its reason), which are not run.
//! When `iscsi-test-cu` is not installed the test says so and passes without running.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Gyred, TempDir};

const IQN: &str = "iqn.2016-06.io.gyre:conformance";
/// Bound on one family's run.
const FAMILY_TIMEOUT: Duration = Duration::from_secs(120);

/// Tests not run, each with the reason. Keep this list empty unless a test cannot pass yet.
const EXCLUDED: &[(&str, &str)] = &[];

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/local/bin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `tool args` for at most `timeout`; returns (completed, stdout+stderr).
fn run_bounded(tool: &PathBuf, args: &[String], timeout: Duration, log: &PathBuf) -> bool {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("run iscsi-test-cu");
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `tests` row of a CUnit Run Summary: (total, ran, passed, failed).
fn summary(text: &str) -> Option<[u64; 4]> {
    let at = text.find("Run Summary")?;
    let line = text[at..]
        .lines()
        .find(|l| l.trim_start().starts_with("tests"))?;
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    (n.len() >= 4).then(|| [n[0], n[1], n[2], n[3]])
}

/// Names of failed tests in a CUnit report ("Suite X, Test Y had failures").
fn failed_tests(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for l in text.lines() {
        let l = l.trim();
        if let Some(rest) = l.strip_prefix("Test: ") {
            if l.contains("FAILED") {
                out.push(rest.split(" ...").next().unwrap_or(rest).to_string());
            }
        } else if let Some(i) = l.find("Test ") {
            if l.contains("had failures") {
                out.push(l[i + 5..].trim_end_matches(" had failures").to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn libiscsi_conformance_suite() {
    let Some(tool) = find_tool("iscsi-test-cu") else {
        println!(
            "skipping libiscsi_conformance_suite: iscsi-test-cu is not installed \
             (apt-get install libiscsi-bin)"
        );
        return;
    };
    let listing = Command::new(&tool)
        .arg("--list")
        .output()
        .expect("iscsi-test-cu --list");
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    let families: Vec<String> = listing
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("ALL.") && l.matches('.').count() == 1)
        .map(str::to_string)
        .collect();
    assert!(families.len() > 20, "unexpected --list output:\n{listing}");
    let tests_of = |family: &str| -> Vec<String> {
        listing
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with(&format!("{family}.")))
            .map(str::to_string)
            .collect()
    };

    let dir = TempDir::new("iscsi-cu");
    let (p1, p2) = (free_port(), free_port());
    let config = dir.path("gyred.json");
    let cfg = serde_json::json!({
        "version": 1,
        "modules": [
            { "module": "bdev", "config": [
                { "method": "bdev_malloc_create",
                  "params": { "name": "cu0", "size": "256M", "block_size": 512 } }
            ]},
            { "module": "iscsi", "config": [
                { "method": "iscsi_create_portal_group",
                  "params": { "tag": 1, "portals": [
                      format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}") ] } },
                { "method": "iscsi_create_initiator_group",
                  "params": { "tag": 1, "initiators": ["ANY"], "networks": ["127.0.0.0/8"] } },
                { "method": "iscsi_create_target",
                  "params": { "name": IQN, "alias": "conformance",
                              "luns": [ { "lun": 0, "bdev_name": "cu0" } ],
                              "portal_groups": [1], "initiator_groups": [1] } }
            ]}
        ]
    });
    std::fs::write(&config, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let g = Gyred::start(&dir.0, &["--config", config.to_str().unwrap()]);
    let url1 = format!("iscsi://127.0.0.1:{p1}/{IQN}/0");
    let url2 = format!("iscsi://127.0.0.1:{p2}/{IQN}/0");

    let started = Instant::now();
    let mut totals = [0u64; 4];
    let mut failures: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut timeouts = Vec::new();
    // Tests that pass by skipping themselves, by the reason they print.
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    for family in &families {
        let excluded_here: Vec<&(&str, &str)> = EXCLUDED
            .iter()
            .filter(|(t, _)| t.starts_with(&format!("{family}.")))
            .collect();
        // A family with excluded tests runs test by test, without those.
        let runs: Vec<String> = if excluded_here.is_empty() {
            vec![family.clone()]
        } else {
            for (t, why) in &excluded_here {
                println!("excluded {t}: {why}");
            }
            tests_of(family)
                .into_iter()
                .filter(|t| !EXCLUDED.iter().any(|(x, _)| x == t))
                .collect()
        };
        for run in runs {
            let log = dir.path(&format!("{run}.log"));
            let args = vec![
                "-n".to_string(),
                "-d".to_string(),
                "-t".to_string(),
                run.clone(),
                url1.clone(),
                url2.clone(),
            ];
            let t0 = Instant::now();
            let finished = run_bounded(&tool, &args, FAMILY_TIMEOUT, &log);
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if !finished {
                println!("{run}: TIMED OUT after {:?}", t0.elapsed());
                timeouts.push(run.clone());
                continue;
            }
            for l in text.lines().filter(|l| l.contains("[SKIPPED]")) {
                let why = l.trim().trim_start_matches("[SKIPPED]").trim().to_string();
                *skipped.entry(format!("{run}: {why}")).or_default() += 1;
            }
            match summary(&text) {
                Some(s) => {
                    println!(
                        "{run}: tests total {} ran {} passed {} failed {} ({:.1}s)",
                        s[0],
                        s[1],
                        s[2],
                        s[3],
                        t0.elapsed().as_secs_f64()
                    );
                    for (t, v) in totals.iter_mut().zip(s) {
                        *t += v;
                    }
                    if s[3] > 0 {
                        let names = failed_tests(&text);
                        let tail: String = text
                            .lines()
                            .filter(|l| l.contains("FAILED") || l.contains("failed"))
                            .take(20)
                            .collect::<Vec<_>>()
                            .join("\n");
                        println!("{tail}");
                        failures.insert(run.clone(), names);
                    }
                }
                None => {
                    println!("{run}: no Run Summary:\n{text}");
                    failures.insert(run.clone(), vec!["(no summary)".into()]);
                }
            }
        }
    }
    println!(
        "\nRun Summary (all families): tests total {} ran {} passed {} failed {}; \
         {} excluded, {} timed out; {:.0}s",
        totals[0],
        totals[1],
        totals[2],
        totals[3],
        EXCLUDED.len(),
        timeouts.len(),
        started.elapsed().as_secs_f64()
    );
    println!("Skipped by the suite itself (the target lacks the feature or it needs a flag):");
    for (why, n) in &skipped {
        println!("  {n:>3} x {why}");
    }
    drop(g);
    assert!(
        failures.is_empty() && timeouts.is_empty(),
        "failed: {failures:?}; timed out: {timeouts:?}"
    );
}
