//! End to end: build a configuration with gyrectl alone, save it, stop gyred with SIGTERM,
//! restart it from the saved file, and find the same bdevs (names, UUIDs, sizes, stacking)
//! over the same data.

mod common;

use std::time::Duration;

use common::{gyrectl, gyrectl_ok, Gyred, TempDir};
use serde_json::Value;

fn bdevs(socket: &std::path::Path) -> Vec<Value> {
    let out = gyrectl_ok(socket, &["--json", "bdev", "list"]);
    let v: Value = serde_json::from_str(&out).expect("bdev list --json is JSON");
    v.as_array().expect("an array").clone()
}

/// The parts of a bdev that must survive a restart.
fn identity(b: &Value) -> (String, String, String, u64, u64, Value) {
    (
        b["name"].as_str().unwrap_or_default().to_string(),
        b["module"].as_str().unwrap_or_default().to_string(),
        b["uuid"].as_str().unwrap_or_default().to_string(),
        b["size_bytes"].as_u64().unwrap_or(0),
        b["block_size"].as_u64().unwrap_or(0),
        b["holders"].clone(),
    )
}

#[test]
fn configuration_built_with_gyrectl_survives_save_and_restart() {
    let dir = TempDir::new("persist");
    let config = dir.path("gyred.json");
    std::fs::write(&config, "{\"version\": 1, \"modules\": []}\n").unwrap();
    // The backing file of the uring bdev, with a known pattern in it.
    let disk = dir.path("disk.img");
    let pattern: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&disk, &pattern).unwrap();

    let mut g = Gyred::start(&dir.0, &["--config", config.to_str().unwrap()]);
    assert!(
        bdevs(&g.socket).is_empty(),
        "an empty config makes no bdevs"
    );
    let disk_s = disk.to_str().unwrap();
    let out = gyrectl_ok(
        &g.socket,
        &[
            "bdev",
            "create",
            "uring",
            "--name",
            "u0",
            "--filename",
            disk_s,
        ],
    );
    assert!(out.starts_with("created bdev u0 (uuid "), "{out}");
    gyrectl_ok(
        &g.socket,
        &[
            "bdev",
            "create",
            "malloc",
            "--name",
            "m0",
            "--size",
            "16M",
            "--block-size",
            "512",
        ],
    );
    gyrectl_ok(
        &g.socket,
        &["bdev", "create", "inject", "--name", "i0", "--base", "u0"],
    );
    let before = bdevs(&g.socket);
    assert_eq!(before.len(), 3);

    // A human table lists the same.
    let table = gyrectl_ok(&g.socket, &["bdev", "list"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("inject bdev 'i0'"), "{table}");

    let saved = gyrectl_ok(&g.socket, &["config", "save"]);
    assert!(saved.contains("gyred.json"), "{saved}");
    let text = std::fs::read_to_string(&config).unwrap();
    let file: gyre_api::ConfigFile = serde_json::from_str(&text).expect("saved config parses");
    let methods: Vec<&str> = file.modules[0]
        .config
        .iter()
        .map(|c| c.method.as_str())
        .collect();
    assert_eq!(
        methods,
        [
            "bdev_uring_create",
            "bdev_malloc_create",
            "bdev_inject_create"
        ]
    );

    g.signal(libc::SIGTERM);
    let st = g
        .wait_exit(Duration::from_secs(20))
        .expect("gyred exits after SIGTERM");
    assert_eq!(st.code(), Some(0), "exit status; stderr:\n{}", g.stderr());
    assert!(!g.socket.exists(), "socket removed on exit");

    // Nothing listens now: gyrectl says so and exits 2.
    let out = gyrectl(&g.socket, &["bdev", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no gyred listening on") && err.contains("start it with `gyred`"),
        "{err}"
    );

    let g2 = Gyred::start(&dir.0, &["--config", config.to_str().unwrap()]);
    let after = bdevs(&g2.socket);
    let a: Vec<_> = before.iter().map(identity).collect();
    let b: Vec<_> = after.iter().map(identity).collect();
    assert_eq!(a, b, "same bdevs after restart");
    let m0 = after.iter().find(|b| b["name"] == "m0").unwrap();
    assert_eq!(
        (m0["size_bytes"].as_u64(), m0["block_size"].as_u64()),
        (Some(16 << 20), Some(512))
    );
    let i0 = gyrectl_ok(&g2.socket, &["--json", "bdev", "get", "i0"]);
    let i0: Value = serde_json::from_str(&i0).unwrap();
    assert_eq!(i0["driver"]["base_bdev"], "u0");
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        pattern,
        "the data is untouched"
    );

    // Saving again gives the same file.
    gyrectl_ok(&g2.socket, &["config", "save"]);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
}

#[test]
fn a_live_socket_is_refused_and_a_stale_one_replaced() {
    let dir = TempDir::new("socket");
    let g = Gyred::start(&dir.0, &[]);
    // The default configuration has a 1 GiB RAM bdev and says how to reach the daemon.
    let banner = g.stdout();
    assert!(banner.contains("bdev malloc0: malloc, 1G"), "{banner}");
    assert!(
        banner.contains(&format!("JSON-RPC 2.0 on {}", g.socket.display())),
        "{banner}"
    );
    let mode = std::fs::metadata(&g.socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600);

    // A second daemon on the same socket refuses to start.
    let other = TempDir::new("socket2");
    let mut second = Gyred::spawn_on(&other.0, &g.socket, &[]);
    let st = second
        .wait_exit(Duration::from_secs(20))
        .expect("second gyred exits");
    assert_eq!(st.code(), Some(1));
    assert!(
        second
            .stderr()
            .contains("another gyred is already listening"),
        "{}",
        second.stderr()
    );
    drop(g);

    // A stale socket file (its daemon was killed) is replaced.
    let stale = dir.path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let g3 = Gyred::start_on(&other.0, &stale, &[]);
    let out = gyrectl_ok(&g3.socket, &["reactor", "list"]);
    assert!(out.starts_with("REACTOR"), "{out}");
}
