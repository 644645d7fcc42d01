//! The iSCSI target through gyred: groups and a target built with `gyrectl rpc`, an initiator
//! logging in and moving data, sessions and connection metrics, errors for duplicates and
//! objects in use, and the same export after `config save` and a restart.

mod common;

use std::time::{Duration, Instant};

use common::{gyrectl, gyrectl_ok, parse_openmetrics, sample, scrape, Gyred, TempDir};
use gyre_iscsi::bhs::Isid;
use gyre_iscsi::initiator::{ConnectOptions, IscsiInitiator};
use gyre_iscsi::login::{InitiatorAuth, InitiatorLoginConfig};
use gyre_iscsi::negotiate::OperationalConfig;
use gyre_iscsi::text::TextLimits;
use gyre_iscsi::Lun;
use serde_json::Value;

const IQN: &str = "iqn.2016-06.io.gyre:ctl";
const INITIATOR: &str = "iqn.2024-01.io.gyre:daemon-test";
const T: Duration = Duration::from_secs(10);

fn rpc(socket: &std::path::Path, method: &str, params: &str) -> Value {
    let out = gyrectl_ok(socket, &["--json", "rpc", method, params]);
    serde_json::from_str(&out).unwrap_or(Value::Null)
}

fn login(portal: &str) -> IscsiInitiator {
    IscsiInitiator::connect(ConnectOptions {
        portal: portal.parse().expect("portal"),
        login: InitiatorLoginConfig {
            initiator_name: INITIATOR.to_string(),
            initiator_alias: None,
            target_name: Some(IQN.to_string()),
            auth: InitiatorAuth::None,
            operational: OperationalConfig::default(),
            text_limits: TextLimits::default(),
            isid: Isid([0x80, 0, 0, 0, 0, 1]),
            tsih: 0,
            cid: 0,
            itt: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        },
        queue_depth: 8,
        timeout: T,
    })
    .expect("login")
}

#[test]
fn target_built_over_rpc_serves_and_survives_save_and_restart() {
    let dir = TempDir::new("iscsi");
    let config = dir.path("gyred.json");
    std::fs::write(&config, "{\"version\": 1, \"modules\": []}\n").unwrap();
    let mut g = Gyred::start(
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
    let pg = rpc(
        &sock,
        "iscsi_create_portal_group",
        r#"{"tag":1,"portals":["127.0.0.1:0"]}"#,
    );
    let portal = pg["portals"][0].as_str().expect("bound portal").to_string();
    assert!(!portal.ends_with(":0"), "{pg}");
    rpc(
        &sock,
        "iscsi_create_initiator_group",
        &format!(r#"{{"tag":1,"initiators":["{INITIATOR}"],"networks":["127.0.0.0/8"]}}"#),
    );
    rpc(
        &sock,
        "iscsi_create_target",
        &format!(
            r#"{{"name":"{IQN}","alias":"ctl","luns":[{{"lun":0,"bdev_name":"m0"}}],
                "portal_groups":[1],"initiator_groups":[1]}}"#
        ),
    );

    // An initiator logs in and moves data; the session is listed and counted.
    let mut ini = login(&portal);
    let lun0 = Lun::from_index(0);
    let data: Vec<u8> = (0..65_536u32).map(|i| (i * 7 + 3) as u8).collect();
    ini.write(lun0, 16, data.clone(), 512, false, T)
        .expect("write");
    let back = ini.read(lun0, 16, 128, 512, true, T).expect("read");
    assert!(back == data);
    let sessions = rpc(&sock, "iscsi_get_sessions", "{}");
    assert_eq!(sessions[0]["initiator_name"], INITIATOR, "{sessions}");
    assert_eq!(sessions[0]["target_name"], IQN);
    assert_eq!(sessions[0]["isid"], "800000000001");
    let samples = parse_openmetrics(&scrape(&g.metrics_addr()));
    let conns: f64 = ["0"]
        .iter()
        .filter_map(|r| sample(&samples, "gyre_iscsi_connections", &[("reactor", r)]))
        .sum();
    assert_eq!(conns, 1.0);
    assert_eq!(
        sample(&samples, "gyre_iscsi_sessions", &[("target", IQN)]),
        Some(1.0)
    );

    // The bdev is in use, by the target; groups in use cannot go; duplicates are errors.
    let out = gyrectl(&sock, &["bdev", "delete", "m0"]);
    assert!(!out.status.success());
    let msg =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        msg.contains(&format!("iscsi target '{IQN}' lun 0")),
        "{msg}"
    );
    let busy = gyrectl(&sock, &["rpc", "iscsi_delete_portal_group", r#"{"tag":1}"#]);
    assert!(!busy.status.success());
    let dup = gyrectl(
        &sock,
        &[
            "rpc",
            "iscsi_create_initiator_group",
            r#"{"tag":1,"initiators":["ANY"]}"#,
        ],
    );
    assert!(!dup.status.success());
    let bad = gyrectl(
        &sock,
        &[
            "rpc",
            "iscsi_create_target",
            r#"{"name":"not-an-iqn","portal_groups":[1],"initiator_groups":[1]}"#,
        ],
    );
    assert!(!bad.status.success());

    // A second LUN at run time: REPORT LUNS sees it.
    gyrectl_ok(
        &sock,
        &["bdev", "create", "malloc", "--name", "m1", "--size", "8M"],
    );
    rpc(
        &sock,
        "iscsi_target_add_lun",
        &format!(r#"{{"name":"{IQN}","lun":3,"bdev_name":"m1"}}"#),
    );
    let deadline = Instant::now() + T;
    loop {
        let luns = ini.report_luns(T).unwrap_or_default();
        if luns.contains(&Lun::from_index(3)) {
            break;
        }
        assert!(Instant::now() < deadline, "LUN 3 never reported: {luns:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    ini.logout(T).expect("logout");

    let listed = rpc(&sock, "iscsi_get_targets", "{}");
    assert_eq!(listed[0]["name"], IQN);
    assert_eq!(
        listed[0]["luns"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    let groups = rpc(&sock, "iscsi_get_portal_groups", "{}");
    gyrectl_ok(&sock, &["config", "save"]);
    g.signal(libc::SIGTERM);
    let st = g.wait_exit(Duration::from_secs(20)).expect("gyred exits");
    assert_eq!(st.code(), Some(0));

    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(saved.contains("iscsi_create_target"), "{saved}");
    let g2 = Gyred::start(&dir.0, &["--config", config.to_str().unwrap()]);
    assert_eq!(rpc(&g2.socket, "iscsi_get_targets", "{}"), listed);
    assert_eq!(rpc(&g2.socket, "iscsi_get_portal_groups", "{}"), groups);
    let mut ini = login(&portal);
    // A RAM disk starts empty again; the export is the same.
    let back = ini
        .read(lun0, 16, 128, 512, false, T)
        .expect("read after restart");
    assert_eq!(back.len(), data.len());
    ini.logout(T).expect("logout");
}
