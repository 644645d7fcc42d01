//! Logical volumes through gyred: pools and volumes built with gyrectl, a thin volume exported
//! over NVMe/TCP until the pool is full (writes then fail with Capacity Exceeded and nothing
//! written before is lost), snapshots, clones, resize, rename, and the whole pool found again
//! after a restart on the saved configuration.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{free_port, gyrectl, gyrectl_ok, Gyred, TempDir};
use gyre_nvmf::host::{CommandError, Controller, HostOptions, IoQueue, Namespace};
use gyre_reactor::{BufferPool, ClassConfig, PoolCache, PoolConfig};
use serde_json::{json, Value};

const NQN: &str = "nqn.2016-06.io.gyre:lvol";
const BS: usize = 4096;
const CLUSTER: u64 = 64 << 10;

fn json_of(sock: &std::path::Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = gyrectl_ok(sock, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn wait_one(q: &mut IoQueue) -> Result<Vec<u8>, CommandError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut got = None;
        q.poll(|c| got = Some(c));
        if let Some(c) = got {
            return c.result.map(|()| {
                let mut v = vec![0u8; BS];
                if let Some(b) = c.buf {
                    b.copy_to_slice(&mut v);
                }
                v
            });
        }
        assert!(Instant::now() < deadline, "no completion");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn write(
    q: &mut IoQueue,
    ns: Namespace,
    cache: &PoolCache,
    lba: u64,
    byte: u8,
) -> Result<(), CommandError> {
    let mut buf = cache.try_alloc(BS).expect("buffer");
    buf.fill(BS, byte);
    q.submit_write(ns, lba, 1, buf, lba).expect("submit");
    wait_one(q).map(drop)
}

fn read(q: &mut IoQueue, ns: Namespace, cache: &PoolCache, lba: u64) -> Vec<u8> {
    let buf = cache.try_alloc(BS).expect("buffer");
    q.submit_read(ns, lba, 1, buf, lba).expect("submit");
    wait_one(q).expect("read")
}

#[test]
fn pools_and_volumes_through_gyrectl_nvme_and_a_restart() {
    let dir = TempDir::new("lvol");
    let disk = dir.path("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(8 << 20))
        .expect("disk file");
    let config = dir.path("gyred.json");
    std::fs::write(&config, "{\"version\": 1, \"modules\": []}\n").unwrap();
    let cfg = config.to_str().unwrap().to_string();
    let mut g = Gyred::start(&dir.0, &["--config", &cfg]);
    let sock = g.socket.clone();

    gyrectl_ok(
        &sock,
        &[
            "bdev",
            "create",
            "uring",
            "--name",
            "u0",
            "--filename",
            disk.to_str().unwrap(),
        ],
    );
    let table = gyrectl_ok(
        &sock,
        &[
            "pool",
            "create",
            "--name",
            "p",
            "--base",
            "u0",
            "--cluster-size",
            "64K",
        ],
    );
    assert!(table.contains("NAME") && table.contains("u0"), "{table}");
    // A second pool on the same bdev is refused (the first claimed it).
    assert!(
        !gyrectl(&sock, &["pool", "create", "--name", "q", "--base", "u0"])
            .status
            .success()
    );
    // A bad cluster size names the field.
    let bad = gyrectl(
        &sock,
        &[
            "pool",
            "create",
            "--name",
            "q",
            "--base",
            "u0",
            "--cluster-size",
            "3000",
        ],
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cluster_size"));

    let v = json_of(
        &sock,
        &[
            "volume", "create", "--pool", "p", "--name", "v", "--size", "64M",
        ],
    );
    assert_eq!(v["bdev_name"], "p/v");
    assert_eq!(v["thin"], true);
    assert_eq!(v["allocated_bytes"], 0);
    let t = json_of(
        &sock,
        &[
            "volume", "create", "--pool", "p", "--name", "t", "--size", "256K", "--thick",
        ],
    );
    assert_eq!(t["allocated_bytes"], 256 << 10);
    let pools = json_of(&sock, &["pool", "list"]);
    let p = &pools[0];
    assert_eq!(p["name"], "p");
    assert_eq!(p["cluster_size"], CLUSTER);
    assert_eq!(p["used_bytes"], 256 << 10);
    assert!(p["overcommit_ratio"].as_f64().unwrap() > 1.0, "{p}");
    let total = p["total_bytes"].as_u64().unwrap() / CLUSTER;

    // Export the thin volume and fill the pool through NVMe/TCP.
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for (m, params) in [
        (
            "nvmf_create_subsystem",
            json!({ "nqn": NQN, "allow_any_host": true }),
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN, "bdev_name": "p/v" }),
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({ "nqn": NQN, "address": addr.to_string() }),
        ),
    ] {
        g.client().call(m, Some(params)).expect(m);
    }
    let pool = BufferPool::new(&PoolConfig {
        classes: vec![ClassConfig {
            size: 4096,
            count: 64,
        }],
        prefer_hugepages: false,
    })
    .unwrap();
    let cache = pool.local();
    let mut ctrl = Controller::connect(addr, NQN, &HostOptions::default()).expect("connect");
    let ns = ctrl.identify_namespace(1).unwrap().handle();
    let mut q = ctrl.connect_io_queue().unwrap();
    let per_cluster = CLUSTER / BS as u64;
    let free = total - 4;
    for c in 0..free {
        write(&mut q, ns, &cache, c * per_cluster, c as u8 + 1).expect("write while space is left");
    }
    match write(&mut q, ns, &cache, free * per_cluster, 0xEE) {
        Err(CommandError::Status(s)) => {
            // Generic command status, Capacity Exceeded, do not retry.
            assert_eq!((s.sct, s.sc, s.dnr), (0, 0x81, true), "{s:?}");
        }
        other => panic!("a write to a full pool gave {other:?}"),
    }
    for c in 0..free {
        assert_eq!(
            read(&mut q, ns, &cache, c * per_cluster),
            vec![c as u8 + 1; BS]
        );
    }
    // Deallocate of a whole cluster gives space back; the refused write now fits.
    q.submit_write_zeroes(ns, 0, per_cluster as u32, true, 1)
        .expect("submit deallocate");
    wait_one(&mut q).expect("deallocate");
    assert_eq!(read(&mut q, ns, &cache, 0), vec![0u8; BS]);
    write(&mut q, ns, &cache, free * per_cluster, 0xEE).expect("write after deallocate");

    // Snapshots, clones, resize, rename.
    let s = json_of(
        &sock,
        &[
            "volume",
            "snapshot",
            "--pool",
            "p",
            "--name",
            "v",
            "--snapshot",
            "s",
        ],
    );
    assert_eq!(s["snapshot"], true);
    let c = json_of(
        &sock,
        &[
            "volume",
            "clone",
            "--pool",
            "p",
            "--snapshot",
            "s",
            "--name",
            "c",
        ],
    );
    assert_eq!(c["parent"], "s");
    let r = json_of(
        &sock,
        &[
            "volume", "resize", "--pool", "p", "--name", "t", "--size", "128K",
        ],
    );
    assert_eq!(r["size_bytes"], 128 << 10);
    json_of(
        &sock,
        &[
            "volume",
            "rename",
            "--pool",
            "p",
            "--name",
            "t",
            "--new-name",
            "t2",
        ],
    );
    // The snapshot has two children (v and c): refused, with an in-use error.
    let refused = gyrectl(&sock, &["volume", "delete", "--pool", "p", "--name", "s"]);
    assert_eq!(refused.status.code(), Some(1));
    // An exported volume cannot be deleted.
    assert!(
        !gyrectl(&sock, &["volume", "delete", "--pool", "p", "--name", "v"])
            .status
            .success()
    );
    gyrectl_ok(&sock, &["volume", "delete", "--pool", "p", "--name", "c"]);
    let human = gyrectl_ok(&sock, &["volume", "list"]);
    assert!(
        human.contains("p/t2") && human.contains("snapshot"),
        "{human}"
    );
    let before = json_of(&sock, &["volume", "list", "--pool", "p"]);
    assert_eq!(before.as_array().unwrap().len(), 3, "{before}");

    drop(q);
    let _ = ctrl.disconnect();
    gyrectl_ok(&sock, &["config", "save"]);
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(saved.contains("lvol_pool_import"), "{saved}");
    g.signal(libc::SIGTERM);
    assert_eq!(
        g.wait_exit(Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );

    // Restart: the pool is imported from the saved configuration, the export is back.
    let g2 = Gyred::start(&dir.0, &["--config", &cfg]);
    let after = json_of(&g2.socket, &["volume", "list", "--pool", "p"]);
    assert_eq!(after, before);
    let ctrl = Controller::connect(addr, NQN, &HostOptions::default()).expect("reconnect");
    let mut q = ctrl.connect_io_queue().unwrap();
    assert_eq!(read(&mut q, ns, &cache, per_cluster), vec![2u8; BS]);
    assert_eq!(read(&mut q, ns, &cache, free * per_cluster), vec![0xEE; BS]);
    drop(q);
    let _ = ctrl.disconnect();

    // Close and import again by hand.
    let out = gyrectl(&g2.socket, &["pool", "close", "p"]);
    assert!(
        !out.status.success(),
        "closing a pool with an exported volume needs --force"
    );
    gyrectl_ok(
        &g2.socket,
        &[
            "rpc",
            "nvmf_delete_subsystem",
            &format!("{{\"nqn\":\"{NQN}\"}}"),
        ],
    );
    gyrectl_ok(&g2.socket, &["pool", "close", "p"]);
    assert_eq!(json_of(&g2.socket, &["pool", "list"]), json!([]));
    let imported = json_of(&g2.socket, &["pool", "import", "u0"]);
    assert_eq!(imported["name"], "p");
    assert_eq!(imported["volumes"], 3);
    // Or found by scanning every unclaimed bdev.
    gyrectl_ok(&g2.socket, &["pool", "close", "p"]);
    let scanned = json_of(&g2.socket, &["pool", "scan"]);
    assert_eq!(scanned["imported"][0]["name"], "p", "{scanned}");
    assert_eq!(
        json_of(&g2.socket, &["volume", "list", "--pool", "p"]),
        before
    );

    // A configuration file that fails half-way is undone: the pool it created is closed
    // again (its bdev released) and its volume gone.
    gyrectl_ok(
        &g2.socket,
        &["bdev", "create", "malloc", "--name", "m9", "--size", "8M"],
    );
    let bad = dir.path("bad.json");
    let calls = json!({
        "version": 1,
        "modules": [{ "module": "lvol", "config": [
            { "method": "lvol_pool_create", "params": { "name": "q", "base_bdev": "m9", "cluster_size": "64K" } },
            { "method": "lvol_volume_create", "params": { "pool": "q", "name": "x", "size": "1M" } },
            { "method": "lvol_volume_create", "params": { "pool": "nope", "name": "y", "size": "1M" } }
        ] }]
    });
    std::fs::write(&bad, calls.to_string()).unwrap();
    let out = gyrectl(
        &g2.socket,
        &["rpc", "load_config", &json!({ "path": bad }).to_string()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pool 'nope' not found"), "{err}");
    let pools = json_of(&g2.socket, &["pool", "list"]);
    assert_eq!(pools.as_array().unwrap().len(), 1, "{pools}");
    let m9 = json_of(&g2.socket, &["bdev", "get", "m9"]);
    assert!(m9.get("claimed_by").is_none(), "{m9}");
    assert!(g2
        .client()
        .call("bdev_get", Some(json!({"name": "q/x"})))
        .is_err());
}
