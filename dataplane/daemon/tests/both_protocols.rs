//! The whole life of an export, through gyrectl alone: gyred starts on an empty
//! configuration; a uring bdev on a file, an NVMe-oF subsystem and an iSCSI target on it are
//! built with `gyrectl` subcommands; data is written through both protocols (and each reads
//! what the other wrote); `config save`, SIGTERM, a restart from the saved file, and every
//! byte read back through both protocols again.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{free_port, gyrectl_ok, Gyred, TempDir};
use gyre_iscsi::bhs::Isid;
use gyre_iscsi::initiator::{ConnectOptions, IscsiInitiator};
use gyre_iscsi::login::{InitiatorAuth, InitiatorLoginConfig};
use gyre_iscsi::negotiate::OperationalConfig;
use gyre_iscsi::text::TextLimits;
use gyre_iscsi::Lun;
use gyre_nvmf::host::{Controller, HostOptions, IoQueue, Namespace};
use gyre_reactor::{BufferPool, ClassConfig, PoolCache, PoolConfig};

const NQN: &str = "nqn.2016-06.io.gyre:both";
const IQN: &str = "iqn.2016-06.io.gyre:both";
const INITIATOR: &str = "iqn.2016-06.io.gyre:test-initiator";
const BS: usize = 4096;
const T: Duration = Duration::from_secs(20);

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn pool() -> (BufferPool, PoolCache) {
    let pool = BufferPool::new(&PoolConfig {
        classes: vec![
            ClassConfig {
                size: BS,
                count: 64,
            },
            ClassConfig {
                size: 128 * 1024,
                count: 8,
            },
        ],
        prefer_hugepages: false,
    })
    .expect("pool");
    let cache = pool.local();
    (pool, cache)
}

/// One command on an NVMe/TCP I/O queue, waited for.
fn nvme_io(
    q: &mut IoQueue,
    write: bool,
    ns: Namespace,
    cache: &PoolCache,
    lba: u64,
    data: &mut [u8],
) {
    let mut buf = cache.try_alloc(data.len()).expect("buffer");
    let nlb = (data.len() / BS) as u32;
    if write {
        assert!(buf.copy_from_slice(data));
        q.submit_write(ns, lba, nlb, buf, 1).expect("submit write");
    } else {
        q.submit_read(ns, lba, nlb, buf, 2).expect("submit read");
    }
    let deadline = Instant::now() + T;
    let mut done = None;
    while done.is_none() {
        if q.poll(|c| done = Some(c)) == 0 {
            assert!(Instant::now() < deadline, "NVMe/TCP I/O timed out");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let c = done.unwrap();
    assert_eq!(
        c.result,
        Ok(()),
        "NVMe/TCP {} at {lba}",
        if write { "write" } else { "read" }
    );
    if !write {
        assert!(c.buf.expect("read buffer").copy_to_slice(data));
    }
}

fn nvme_connect(addr: SocketAddr) -> (Controller, IoQueue, Namespace) {
    let mut ctrl =
        Controller::connect(addr, NQN, &HostOptions::default()).expect("NVMe/TCP connect");
    let ns = ctrl.identify_namespace(1).expect("namespace 1").handle();
    assert_eq!(ns.block_size as usize, BS);
    let q = ctrl.connect_io_queue().expect("I/O queue");
    (ctrl, q, ns)
}

fn iscsi_connect(portal: SocketAddr) -> IscsiInitiator {
    IscsiInitiator::connect(ConnectOptions {
        portal,
        login: InitiatorLoginConfig {
            initiator_name: INITIATOR.to_string(),
            initiator_alias: None,
            target_name: Some(IQN.to_string()),
            auth: InitiatorAuth::None,
            operational: OperationalConfig::default(),
            text_limits: TextLimits::default(),
            isid: Isid([0x80, 0x47, 0x59, 0x52, 0x00, 0x01]),
            tsih: 0,
            cid: 0,
            itt: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        },
        queue_depth: 8,
        timeout: T,
    })
    .expect("iSCSI login")
}

/// Reads through iSCSI (the initiator retries the unit attention a new nexus sees first).
fn iscsi_read(i: &mut IscsiInitiator, lba: u64, blocks: u32) -> Vec<u8> {
    i.read(Lun::from_index(0), lba, blocks, BS as u32, false, T)
        .unwrap_or_else(|e| panic!("iSCSI read at {lba}: {e}"))
}

#[test]
fn export_built_with_gyrectl_survives_restart_through_both_protocols() {
    let dir = TempDir::new("both-protocols");
    let disk = dir.path("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .expect("disk file");
    let config = dir.path("gyred.json");
    std::fs::write(&config, "{\"version\": 1, \"modules\": []}\n").unwrap();
    let mut g = Gyred::start(&dir.0, &["--config", config.to_str().unwrap()]);
    let sock = g.socket.clone();
    let (nvme_port, iscsi_port) = (free_port(), free_port());
    let nvme_addr: SocketAddr = format!("127.0.0.1:{nvme_port}").parse().unwrap();
    let iscsi_addr: SocketAddr = format!("127.0.0.1:{iscsi_port}").parse().unwrap();

    let ctl = |args: &[&str]| gyrectl_ok(&sock, args);
    ctl(&[
        "bdev",
        "create",
        "uring",
        "--name",
        "disk",
        "--filename",
        disk.to_str().unwrap(),
    ]);
    ctl(&["nvmf", "subsystem", "create", NQN, "--allow-any-host"]);
    ctl(&["nvmf", "ns", "add", NQN, "--bdev", "disk"]);
    ctl(&["nvmf", "listener", "add", NQN, &nvme_addr.to_string()]);
    ctl(&[
        "iscsi",
        "portal-group",
        "create",
        "1",
        "--portal",
        &iscsi_addr.to_string(),
    ]);
    ctl(&[
        "iscsi",
        "initiator-group",
        "create",
        "1",
        "--initiator",
        "ANY",
    ]);
    ctl(&[
        "iscsi",
        "target",
        "create",
        IQN,
        "--lun",
        "0:disk",
        "--portal-group",
        "1",
        "--initiator-group",
        "1",
    ]);

    // NVMe/TCP writes blocks 0..32, iSCSI writes 64..96; each reads the other's.
    let (_pool, cache) = pool();
    let nvme_data = pattern(1, 32 * BS);
    let iscsi_data = pattern(2, 32 * BS);
    {
        let (ctrl, mut q, ns) = nvme_connect(nvme_addr);
        nvme_io(&mut q, true, ns, &cache, 0, &mut nvme_data.clone());
        let mut i = iscsi_connect(iscsi_addr);
        i.write(
            Lun::from_index(0),
            64,
            iscsi_data.clone(),
            BS as u32,
            false,
            T,
        )
        .expect("iSCSI write");
        assert!(
            iscsi_read(&mut i, 0, 32) == nvme_data,
            "iSCSI reads what NVMe/TCP wrote"
        );
        let mut got = vec![0u8; 32 * BS];
        nvme_io(&mut q, false, ns, &cache, 64, &mut got);
        assert!(got == iscsi_data, "NVMe/TCP reads what iSCSI wrote");
        i.logout(T).expect("logout");

        // Connections are listed, and an operator can end one.
        let mut other = iscsi_connect(iscsi_addr);
        let sessions: serde_json::Value =
            serde_json::from_str(&ctl(&["--json", "iscsi", "sessions"])).expect("JSON");
        let list = sessions.as_array().expect("session list");
        assert_eq!(list.len(), 1, "{sessions}");
        assert_eq!(list[0]["initiator_name"], INITIATOR);
        assert_eq!(list[0]["target_name"], IQN);
        let tsih = list[0]["tsih"].as_u64().expect("tsih").to_string();
        ctl(&["iscsi", "disconnect", &tsih]);
        assert!(
            other
                .read(Lun::from_index(0), 0, 1, BS as u32, false, T)
                .is_err(),
            "the disconnected session no longer serves I/O"
        );
        let deadline = Instant::now() + T;
        while ctl(&["--json", "iscsi", "sessions"]).trim() != "[]" {
            assert!(Instant::now() < deadline, "session still listed");
            std::thread::sleep(Duration::from_millis(20));
        }
        let controllers: serde_json::Value =
            serde_json::from_str(&ctl(&["--json", "nvmf", "controller", "list"])).expect("JSON");
        assert_eq!(
            controllers.as_array().map(Vec::len),
            Some(1),
            "{controllers}"
        );
        drop(q);
        ctrl.disconnect().expect("NVMe/TCP disconnect");
    }

    ctl(&["config", "save"]);
    g.signal(libc::SIGTERM);
    let st = g.wait_exit(T).expect("gyred exits on SIGTERM");
    assert_eq!(st.code(), Some(0), "{}", g.stderr());
    let saved = std::fs::read_to_string(&config).unwrap();
    for method in [
        "bdev_uring_create",
        "nvmf_subsystem_add_ns",
        "iscsi_create_portal_group",
        "iscsi_create_target",
    ] {
        assert!(
            saved.contains(method),
            "{method} missing from the saved configuration:\n{saved}"
        );
    }

    let _g = Gyred::start(&dir.0, &["--config", config.to_str().unwrap()]);
    let (ctrl, mut q, ns) = nvme_connect(nvme_addr);
    let mut i = iscsi_connect(iscsi_addr);
    for (lba, want) in [(0u64, &nvme_data), (64, &iscsi_data)] {
        let mut got = vec![0u8; 32 * BS];
        nvme_io(&mut q, false, ns, &cache, lba, &mut got);
        assert!(&got == want, "NVMe/TCP after restart, blocks from {lba}");
        assert!(
            &iscsi_read(&mut i, lba, 32) == want,
            "iSCSI after restart, blocks from {lba}"
        );
    }
    i.logout(T).expect("logout");
    drop(q);
    ctrl.disconnect().expect("NVMe/TCP disconnect");
}
