//! End to end: bad control input gets its specific JSON-RPC error, and the daemon keeps
//! serving everyone meanwhile (including while another client hangs mid-request).

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{gyrectl, parse_openmetrics, sample, scrape, Gyred, TempDir};
use gyre_api::{codes, ClientError};
use serde_json::{json, Value};

fn rpc_err(r: Result<Value, ClientError>) -> gyre_api::ErrorObject {
    match r {
        Err(ClientError::Rpc(e)) => e,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

fn code_of(resp: &Value) -> i64 {
    resp["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no error in {resp}"))
}

#[test]
fn bad_requests_get_specific_errors_and_the_daemon_keeps_serving() {
    let dir = TempDir::new("bad");
    let config = dir.path("empty.json");
    std::fs::write(&config, "{\"version\": 1}").unwrap();
    let g = Gyred::start(
        &dir.0,
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ],
    );

    // A client that sends half a request and hangs does not block anyone.
    let mut hanging = UnixStream::connect(&g.socket).unwrap();
    hanging
        .write_all(b"{\"jsonrpc\": \"2.0\", \"method\": \"bdev_li")
        .unwrap();

    let mut c = g.client();
    let t0 = Instant::now();
    assert_eq!(c.call("bdev_list", None).unwrap(), json!([]));
    assert!(t0.elapsed() < Duration::from_secs(2));

    // Malformed JSON: parse error, id null, and that connection ends.
    let mut bad = g.client();
    bad.send_raw(b"{\"jsonrpc\": \"2.0\", \"method\": }")
        .unwrap();
    let resp = bad.read_value().unwrap();
    assert_eq!(code_of(&resp), codes::PARSE_ERROR);
    assert_eq!(resp["id"], Value::Null);
    assert!(matches!(bad.read_value(), Err(ClientError::Closed)));

    // Not a request object, wrong version, bad id type.
    let mut raw = g.client();
    for (req, why) in [
        (json!(42), "a request must be a JSON object"),
        (
            json!({"jsonrpc": "1.0", "method": "bdev_list", "id": 1}),
            "jsonrpc must be",
        ),
        (
            json!({"jsonrpc": "2.0", "method": "bdev_list", "id": {"x": 1}}),
            "id must be",
        ),
        (json!({"jsonrpc": "2.0", "id": 3}), "method is missing"),
        (json!([]), "empty batch"),
    ] {
        raw.send_raw(req.to_string().as_bytes()).unwrap();
        let resp = raw.read_value().unwrap();
        assert_eq!(code_of(&resp), codes::INVALID_REQUEST, "{req}");
        assert!(
            resp["error"]["message"].as_str().unwrap().contains(why),
            "{resp}"
        );
    }

    // Ids of every type come back as sent.
    for id in [json!("abc"), json!(7), json!(2.5), Value::Null] {
        raw.send_raw(
            json!({"jsonrpc": "2.0", "method": "reactor_list", "id": id})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let resp = raw.read_value().unwrap();
        assert_eq!(resp["id"], id);
        assert!(resp["result"].is_array());
    }

    // A batch mixing good and bad requests (and a notification, which gets no response).
    let batch = json!([
        {"jsonrpc": "2.0", "method": "bdev_malloc_create", "params": {"name": "b0", "size": "8M"}, "id": 1},
        {"jsonrpc": "2.0", "method": "bdev_lsit", "id": 2},
        {"jsonrpc": "2.0", "method": "bdev_get", "params": {"name": 5}, "id": 3},
        {"foo": 1},
        {"jsonrpc": "2.0", "method": "bdev_malloc_create", "params": {"name": "n0", "size": "4M"}},
        {"jsonrpc": "2.0", "method": "bdev_get", "params": {"name": "n0"}, "id": 4}
    ]);
    raw.send_raw(batch.to_string().as_bytes()).unwrap();
    let resp = raw.read_value().unwrap();
    let arr = resp.as_array().expect("a batch answer is an array");
    assert_eq!(arr.len(), 5, "{resp}");
    assert_eq!(arr[0]["id"], 1);
    assert_eq!(arr[0]["result"]["name"], "b0");
    assert_eq!(code_of(&arr[1]), codes::METHOD_NOT_FOUND);
    assert!(
        arr[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean 'bdev_list'"),
        "{}",
        arr[1]
    );
    assert_eq!(code_of(&arr[2]), codes::INVALID_PARAMS);
    assert_eq!(arr[2]["error"]["data"]["field"], "name");
    assert!(
        arr[2]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("params.name: invalid type"),
        "{}",
        arr[2]
    );
    assert_eq!(code_of(&arr[3]), codes::INVALID_REQUEST);
    assert_eq!(arr[3]["id"], Value::Null);
    assert_eq!(arr[4]["result"]["name"], "n0", "the notification ran");

    // A batch of notifications only: no answer at all; the next request is answered normally.
    raw.send_raw(
        json!([{"jsonrpc": "2.0", "method": "bdev_list"}])
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    raw.send_raw(
        json!({"jsonrpc": "2.0", "method": "bdev_get", "params": {"name": "b0"}, "id": 9})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(raw.read_value().unwrap()["id"], 9);

    // Unknown method.
    let e = rpc_err(c.call("bdev_malloc_destroy", None));
    assert_eq!(e.code, codes::METHOD_NOT_FOUND);
    assert!(
        e.message.contains("method 'bdev_malloc_destroy' not found"),
        "{}",
        e.message
    );

    // Wrong types and unknown fields name the field.
    let e = rpc_err(c.call(
        "bdev_malloc_create",
        Some(json!({"name": "x", "size": true})),
    ));
    assert_eq!(e.code, codes::INVALID_PARAMS);
    assert_eq!(e.message, "params.size: invalid type: boolean `true`, expected a size like \"1G\" or a number of bytes");
    let e = rpc_err(c.call(
        "bdev_malloc_create",
        Some(json!({"name": "x", "size": "1M", "blok_size": 512})),
    ));
    assert_eq!(e.code, codes::INVALID_PARAMS);
    assert!(
        e.message.contains("unknown field `blok_size`"),
        "{}",
        e.message
    );
    let e = rpc_err(c.call(
        "bdev_malloc_create",
        Some(json!({"name": "x", "size": "1M", "block_size": 1000})),
    ));
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            codes::INVALID_PARAMS,
            "params.block_size: block size 1000 is not supported (512 or 4096)"
        )
    );
    let e = rpc_err(c.call("bdev_delete", Some(json!(["b0"]))));
    assert_eq!(e.code, codes::INVALID_PARAMS);

    // In use: the base of an inject bdev cannot be deleted (without force).
    c.call(
        "bdev_inject_create",
        Some(json!({"name": "j0", "base_bdev": "b0"})),
    )
    .unwrap();
    let e = rpc_err(c.call("bdev_delete", Some(json!({"name": "b0"}))));
    assert_eq!(e.code, codes::IN_USE);
    assert_eq!(e.message, "bdev 'b0' is in use by inject bdev 'j0'");
    assert_eq!(e.data.unwrap()["holders"], json!(["inject bdev 'j0'"]));
    let out = gyrectl(&g.socket, &["bdev", "delete", "b0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("is in use by inject bdev 'j0' (error -32003)"));

    // Duplicates: by name, and by UUID.
    let e = rpc_err(c.call(
        "bdev_malloc_create",
        Some(json!({"name": "b0", "size": "1M"})),
    ));
    assert_eq!(
        (e.code, e.message.as_str()),
        (codes::ALREADY_EXISTS, "bdev 'b0' already exists")
    );
    let uuid = c.call("bdev_get", Some(json!({"name": "b0"}))).unwrap()["uuid"].clone();
    let e = rpc_err(c.call(
        "bdev_malloc_create",
        Some(json!({"name": "b1", "size": "1M", "uuid": uuid})),
    ));
    assert_eq!(e.code, codes::ALREADY_EXISTS);

    // Not found.
    let e = rpc_err(c.call("bdev_get", Some(json!({"name": "nope"}))));
    assert_eq!(
        (e.code, e.message.as_str()),
        (codes::NOT_FOUND, "bdev 'nope' not found")
    );

    // A config file with a dangling reference: nothing of it remains (the malloc it made
    // first is undone).
    let dangling = dir.path("dangling.json");
    std::fs::write(
        &dangling,
        json!({"version": 1, "modules": [{"module": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "d0", "size": "1M"}},
            {"method": "bdev_inject_create", "params": {"name": "d1", "base_bdev": "missing"}}
        ]}]})
        .to_string(),
    )
    .unwrap();
    let e = rpc_err(c.call("load_config", Some(json!({"path": dangling}))));
    assert_eq!(e.code, codes::INVALID_CONFIG);
    assert!(
        e.message.starts_with(
            "config: bdev_inject_create 'd1': params.base_bdev: bdev 'missing' not found"
        ),
        "{}",
        e.message
    );
    assert!(e.message.contains("module 'bdev', call 2"), "{}", e.message);
    assert!(e.message.contains("undone"), "{}", e.message);
    let data = e.data.unwrap();
    assert_eq!(
        (
            data["module"].as_str(),
            data["method"].as_str(),
            data["object"].as_str(),
            data["field"].as_str()
        ),
        (
            Some("bdev"),
            Some("bdev_inject_create"),
            Some("d1"),
            Some("base_bdev")
        )
    );
    assert_eq!(
        rpc_err(c.call("bdev_get", Some(json!({"name": "d0"})))).code,
        codes::NOT_FOUND
    );

    // A config file with a bad field is refused before anything is applied.
    let bad_field = dir.path("bad-field.json");
    std::fs::write(
        &bad_field,
        json!({"version": 1, "modules": [{"module": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "ok0", "size": "1M"}},
            {"method": "bdev_malloc_create", "params": {"name": "m9", "size": "1Q"}}
        ]}]})
        .to_string(),
    )
    .unwrap();
    let e = rpc_err(c.call("load_config", Some(json!({"path": bad_field}))));
    assert_eq!(e.code, codes::INVALID_CONFIG);
    assert!(e.message.starts_with("config: bdev_malloc_create 'm9': params.size: expected a size like \"1G\" or a number of bytes"), "{}", e.message);
    assert_eq!(
        rpc_err(c.call("bdev_get", Some(json!({"name": "ok0"})))).code,
        codes::NOT_FOUND
    );

    // Objects that already exist are refused by load_config too.
    let dup = dir.path("dup.json");
    std::fs::write(
        &dup,
        json!({"version": 1, "modules": [{"module": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "b0", "size": "1M"}}]}]})
        .to_string(),
    )
    .unwrap();
    let e = rpc_err(c.call("load_config", Some(json!({"path": dup}))));
    assert!(
        e.message
            .starts_with("config: bdev_malloc_create 'b0': bdev 'b0' already exists"),
        "{}",
        e.message
    );
    assert_eq!(e.data.unwrap()["cause_code"], codes::ALREADY_EXISTS);

    // Unknown module, and a method under the wrong module.
    let wrong = dir.path("wrong.json");
    std::fs::write(
        &wrong,
        json!({"version": 1, "modules": [{"module": "reactor", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "w", "size": "1M"}}]}]})
        .to_string(),
    )
    .unwrap();
    let e = rpc_err(c.call("load_config", Some(json!({"path": wrong}))));
    assert!(
        e.message
            .contains("method belongs to module 'bdev', not 'reactor'"),
        "{}",
        e.message
    );
    std::fs::write(
        &wrong,
        json!({"version": 1, "modules": [{"module": "nvmx", "config": []}]}).to_string(),
    )
    .unwrap();
    let e = rpc_err(c.call("load_config", Some(json!({"path": wrong}))));
    assert!(e.message.contains("unknown module 'nvmx'"), "{}", e.message);

    // A good file applies.
    let good = dir.path("good.json");
    std::fs::write(&good, json!({"version": 1, "modules": [{"module": "bdev", "config": [
        {"method": "bdev_null_create", "params": {"name": "z0", "size": "1G", "block_size": 512}}]}]}).to_string()).unwrap();
    let r = c.call("load_config", Some(json!({"path": good}))).unwrap();
    assert_eq!(r["calls"], 1);

    // A request larger than the limit ends that connection with an error.
    let mut big = g.client();
    let mut req =
        b"{\"jsonrpc\": \"2.0\", \"method\": \"bdev_list\", \"params\": {\"x\": \"".to_vec();
    req.resize(req.len() + (1 << 20) + 10, b'a');
    let _ = big.send_raw(&req);
    let resp = big.read_value().unwrap();
    assert_eq!(code_of(&resp), codes::INVALID_REQUEST);

    // Metrics: well-formed exposition with every bdev and the reactor.
    let samples = parse_openmetrics(&scrape(&g.metrics_addr()));
    for b in ["b0", "j0", "n0", "z0"] {
        assert_eq!(
            sample(
                &samples,
                "gyre_bdev_ops_total",
                &[("bdev", b), ("op", "read")]
            ),
            Some(0.0),
            "{b}"
        );
        assert_eq!(
            sample(
                &samples,
                "gyre_bdev_latency_seconds_count",
                &[("bdev", b), ("op", "write")]
            ),
            Some(0.0)
        );
    }
    assert_eq!(
        sample(&samples, "gyre_bdev_size_bytes", &[("bdev", "z0")]),
        Some((1u64 << 30) as f64)
    );
    let busy = sample(
        &samples,
        "gyre_reactor_busy_ratio",
        &[("reactor", "0"), ("core", "0")],
    )
    .expect("reactor busy ratio");
    assert!((0.0..=1.0).contains(&busy));
    assert!(
        sample(
            &samples,
            "gyre_reactor_idle_seconds_total",
            &[("reactor", "0"), ("core", "0")]
        )
        .unwrap()
            > 0.0
    );

    // Through all this, the daemon kept serving, and the hanging client is still connected.
    let list = c.call("bdev_list", None).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b0", "j0", "n0", "z0"]);
    drop(hanging);
}

#[test]
fn gyred_refuses_a_bad_config_file_with_a_precise_message() {
    let dir = TempDir::new("badcfg");
    let cfg = dir.path("bad.json");
    std::fs::write(
        &cfg,
        json!({"version": 1, "modules": [{"module": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "m0", "size": "lots"}}]}]})
        .to_string(),
    )
    .unwrap();
    let mut g = Gyred::spawn(&dir.0, &["--config", cfg.to_str().unwrap()]);
    let st = g.wait_exit(Duration::from_secs(20)).expect("gyred exits");
    assert_eq!(st.code(), Some(1));
    let err = g.stderr();
    assert!(err.contains("config: bdev_malloc_create 'm0': params.size: expected a size like \"1G\" or a number of bytes, got \"lots\" (module 'bdev', call 1 in"), "{err}");
    assert!(!g.socket.exists(), "no socket left behind");

    std::fs::write(
        &cfg,
        json!({"version": 1, "modules": [{"module": "bdev", "config": [
        {"method": "bdev_inject_create", "params": {"name": "i0", "base_bdev": "nothing"}}]}]})
        .to_string(),
    )
    .unwrap();
    let mut g = Gyred::spawn(&dir.0, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(
        g.wait_exit(Duration::from_secs(20)).and_then(|s| s.code()),
        Some(1)
    );
    assert!(
        g.stderr().contains(
            "config: bdev_inject_create 'i0': params.base_bdev: bdev 'nothing' not found"
        ),
        "{}",
        g.stderr()
    );
}
