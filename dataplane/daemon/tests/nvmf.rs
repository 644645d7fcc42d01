//! The NVMe-oF target through gyred: a subsystem built with `gyrectl nvmf` alone, a host's
//! controller listed and disconnected, the in-use error naming the subsystem, save and
//! restart with the same export, and an NVMe/TCP host reaching it (ICReq answered on the
//! saved listener).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{gyrectl, gyrectl_ok, Gyred, TempDir};
use gyre_nvmf::host::{Controller, HostOptions, QueueState, ReconnectPolicy};
use serde_json::Value;

const NQN: &str = "nqn.2016-06.io.gyre:ctl";

fn json(out: String) -> Value {
    serde_json::from_str(&out).unwrap_or(Value::Null)
}

fn rpc(socket: &std::path::Path, method: &str, params: &str) -> Value {
    let out = gyrectl_ok(socket, &["--json", "rpc", method, params]);
    serde_json::from_str(&out).unwrap_or(Value::Null)
}

/// Sends an ICReq and checks the ICResp: the listener is a live NVMe/TCP target.
fn icreq(addr: &str) {
    let mut s = TcpStream::connect(addr).expect("connect to the NVMe/TCP listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut ic = [0u8; 128];
    ic[2] = 128;
    ic[4] = 128;
    s.write_all(&ic).unwrap();
    let mut resp = [0u8; 128];
    s.read_exact(&mut resp).unwrap();
    assert_eq!(resp[0], 0x01, "ICResp");
    assert_eq!(resp[2], 128);
}

#[test]
fn subsystem_built_over_rpc_survives_save_and_restart() {
    let dir = TempDir::new("nvmf");
    let config = dir.path("gyred.json");
    std::fs::write(&config, "{\"version\": 1, \"modules\": []}\n").unwrap();
    let mut g = Gyred::start(&dir.0, &["--config", config.to_str().unwrap()]);
    let sock = g.socket.clone();

    gyrectl_ok(
        &sock,
        &["bdev", "create", "malloc", "--name", "m0", "--size", "16M"],
    );
    gyrectl_ok(
        &sock,
        &["nvmf", "subsystem", "create", NQN, "--allow-any-host"],
    );
    let ns = json(gyrectl_ok(
        &sock,
        &["--json", "nvmf", "ns", "add", NQN, "--bdev", "m0"],
    ));
    assert_eq!(ns["nsid"], 1);
    let l = json(gyrectl_ok(
        &sock,
        &["--json", "nvmf", "listener", "add", NQN, "127.0.0.1:0"],
    ));
    let addr = l["address"].as_str().expect("bound address").to_string();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    icreq(&addr);

    // A host connects: its controller is listed, and disconnecting it ends its queues.
    let opts = HostOptions {
        reconnect: ReconnectPolicy {
            max_attempts: Some(0),
            ..ReconnectPolicy::default()
        },
        ..HostOptions::default()
    };
    let sa: SocketAddr = addr.parse().unwrap();
    let ctrl = Controller::connect(sa, NQN, &opts).expect("host connects");
    let mut q = ctrl.connect_io_queue().expect("I/O queue");
    let listed = json(gyrectl_ok(
        &sock,
        &["--json", "nvmf", "controller", "list", NQN],
    ));
    let list = listed.as_array().expect("controller list");
    assert_eq!(list.len(), 1, "{listed}");
    assert_eq!(list[0]["hostnqn"], opts.hostnqn.as_str());
    assert_eq!(list[0]["io_queues"], 1);
    assert_eq!(list[0]["ready"], true);
    assert_eq!(list[0]["address"], addr.as_str());
    let cntlid = list[0]["cntlid"].as_u64().expect("cntlid").to_string();
    gyrectl_ok(
        &sock,
        &["nvmf", "controller", "disconnect", NQN, "--cntlid", &cntlid],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while q.state() == QueueState::Connected {
        q.poll(|_| {});
        assert!(
            Instant::now() < deadline,
            "I/O queue still up after disconnect"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    while json(gyrectl_ok(&sock, &["--json", "nvmf", "controller", "list"])) != json("[]".into()) {
        assert!(Instant::now() < deadline, "controller still listed");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop((q, ctrl));
    let gone = gyrectl(
        &sock,
        &["nvmf", "controller", "disconnect", NQN, "--cntlid", "999"],
    );
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("no controller 999"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );

    // The bdev is in use, and the error says by what.
    let out = gyrectl(&sock, &["bdev", "delete", "m0"]);
    assert!(!out.status.success());
    let msg =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(msg.contains(&format!("nvmf subsystem '{NQN}'")), "{msg}");
    // Duplicates and unknown objects get their own errors.
    let dup = gyrectl(
        &sock,
        &[
            "rpc",
            "nvmf_create_subsystem",
            &format!("{{\"nqn\":\"{NQN}\"}}"),
        ],
    );
    assert!(!dup.status.success());
    let missing = gyrectl(
        &sock,
        &[
            "rpc",
            "nvmf_subsystem_add_ns",
            "{\"nqn\":\"nqn.2016-06.io.gyre:none\",\"bdev_name\":\"m0\"}",
        ],
    );
    assert!(!missing.status.success());

    let listed = rpc(&sock, "nvmf_get_subsystems", "{}");
    assert_eq!(listed[0]["nqn"], NQN);
    assert_eq!(listed[0]["namespaces"][0]["bdev_name"], "m0");
    assert_eq!(listed[0]["listeners"][0]["address"], addr.as_str());

    gyrectl_ok(&sock, &["config", "save"]);
    g.signal(libc::SIGTERM);
    let st = g.wait_exit(Duration::from_secs(20)).expect("gyred exits");
    assert_eq!(st.code(), Some(0));

    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(saved.contains("nvmf_subsystem_add_listener"), "{saved}");
    let g2 = Gyred::start(&dir.0, &["--config", config.to_str().unwrap()]);
    let again = rpc(&g2.socket, "nvmf_get_subsystems", "{}");
    assert_eq!(again, listed, "the same export after restart");
    icreq(&addr);
}

#[test]
fn metrics_count_connections_controllers_and_transport_errors() {
    let dir = TempDir::new("nvmf-metrics");
    let config = dir.path("gyred.json");
    std::fs::write(&config, "{\"version\": 1, \"modules\": []}\n").unwrap();
    let g = Gyred::start(
        &dir.0,
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let sock = g.socket.clone();
    gyrectl_ok(
        &sock,
        &["bdev", "create", "malloc", "--name", "m0", "--size", "16M"],
    );
    gyrectl_ok(
        &sock,
        &["nvmf", "subsystem", "create", NQN, "--allow-any-host"],
    );
    gyrectl_ok(&sock, &["nvmf", "ns", "add", NQN, "--bdev", "m0"]);
    let l = json(gyrectl_ok(
        &sock,
        &["--json", "nvmf", "listener", "add", NQN, "127.0.0.1:0"],
    ));
    let addr = l["address"].as_str().expect("address").to_string();

    // One host with an I/O queue (two connections), and one connection that sends garbage.
    let sa: SocketAddr = addr.parse().unwrap();
    let ctrl = Controller::connect(sa, NQN, &HostOptions::default()).expect("connect");
    let _q = ctrl.connect_io_queue().expect("I/O queue");
    let mut bad = TcpStream::connect(&addr).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut garbage = [0u8; 24];
    garbage[0] = 0x42;
    garbage[2] = 24;
    garbage[4] = 24;
    bad.write_all(&garbage).unwrap();
    let mut sink = Vec::new();
    let _ = bad.read_to_end(&mut sink);
    assert_eq!(sink.first(), Some(&0x03), "C2HTermReq for garbage");

    // The garbage connection leaves the count once its reactor has retired it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (samples, connections) = loop {
        let samples = common::parse_openmetrics(&common::scrape(&g.metrics_addr()));
        let connections: f64 = samples
            .iter()
            .filter(|s| s.name == "gyre_nvmf_connections")
            .map(|s| s.value)
            .sum();
        if connections == 2.0 || Instant::now() > deadline {
            break (samples, connections);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(connections, 2.0, "admin and I/O queue connections");
    assert_eq!(
        common::sample(&samples, "gyre_nvmf_controllers", &[("subsystem", NQN)]),
        Some(1.0)
    );
    assert_eq!(
        common::sample(&samples, "gyre_nvmf_connections_accepted_total", &[]),
        Some(3.0)
    );
    assert_eq!(
        common::sample(
            &samples,
            "gyre_nvmf_transport_errors_total",
            &[("kind", "fatal")]
        ),
        Some(1.0)
    );
    assert_eq!(
        common::sample(
            &samples,
            "gyre_nvmf_transport_errors_total",
            &[("kind", "data_digest")]
        ),
        Some(0.0)
    );
}
