//! Helpers for the end-to-end tests: temporary directories, a gyred child process, gyrectl,
//! and a strict reader of Prometheus/OpenMetrics text.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "gyred-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep gyred's logs and files of a failed test for a post-mortem.
            eprintln!("test files kept in {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn gyred_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gyred"))
}

/// gyrectl, built next to gyred (same target directory and profile) on first use.
pub fn gyrectl_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let gyred = gyred_bin();
            let profile_dir = gyred.parent().expect("bin dir");
            let target_dir = profile_dir.parent().expect("target dir");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "--quiet", "-p", "gyrectl", "--target-dir"])
                .arg(target_dir);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("cargo build gyrectl");
            assert!(st.success(), "building gyrectl failed");
            profile_dir.join("gyrectl")
        })
        .clone()
}

/// A gyred child process, killed if the test ends while it runs.
pub struct Gyred {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

impl Gyred {
    /// Starts gyred on core 0 in hybrid mode with its socket in `dir`, and waits until it
    /// accepts RPCs.
    pub fn start(dir: &Path, extra: &[&str]) -> Gyred {
        let g = Self::spawn(dir, extra);
        g.wait_ready()
    }

    pub fn spawn(dir: &Path, extra: &[&str]) -> Gyred {
        Self::spawn_on(dir, &dir.join("gyred.sock"), extra)
    }

    /// Like [`Gyred::start`] with the socket at `socket`.
    pub fn start_on(dir: &Path, socket: &Path, extra: &[&str]) -> Gyred {
        Self::spawn_on(dir, socket, extra).wait_ready()
    }

    pub fn spawn_on(dir: &Path, socket: &Path, extra: &[&str]) -> Gyred {
        let socket = socket.to_path_buf();
        let out = std::fs::File::create(dir.join("gyred.out")).expect("stdout file");
        let err = std::fs::File::create(dir.join("gyred.err")).expect("stderr file");
        let child = Command::new(gyred_bin())
            .args(["--cores", "0", "--idle", "hybrid", "--rpc-socket"])
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn gyred");
        Gyred {
            child,
            socket,
            dir: dir.to_path_buf(),
        }
    }

    fn wait_ready(mut self) -> Gyred {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if UnixStream::connect(&self.socket).is_ok() && self.stdout().contains("is running") {
                return self;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "gyred exited ({st}) before it was ready:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gyred not ready:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("gyred.out")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("gyred.err")).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child by its pid.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The metrics address printed in the banner.
    pub fn metrics_addr(&self) -> String {
        let out = self.stdout();
        let line = out
            .lines()
            .find(|l| l.contains("metrics: http://"))
            .unwrap_or_else(|| panic!("no metrics line in:\n{out}"));
        let url = line.split("http://").nth(1).expect("url");
        url.trim_end_matches("/metrics").trim().to_string()
    }

    pub fn client(&self) -> gyre_api::Client {
        gyre_api::Client::connect(&self.socket, Duration::from_secs(20)).expect("connect")
    }
}

impl Drop for Gyred {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs gyrectl against `socket`.
pub fn gyrectl(socket: &Path, args: &[&str]) -> Output {
    Command::new(gyrectl_bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run gyrectl")
}

/// Runs gyrectl, insists on success, returns stdout.
pub fn gyrectl_ok(socket: &Path, args: &[&str]) -> String {
    let out = gyrectl(socket, args);
    assert!(
        out.status.success(),
        "gyrectl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET /metrics from `addr`; returns the body.
pub fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read metrics");
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP head");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text"),
        "{head}"
    );
    body.to_string()
}

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A strict reader of the OpenMetrics text format: every sample belongs to a family declared
/// by `# TYPE` before it, names and labels are well formed, values parse, histograms are
/// cumulative, and the text ends with `# EOF`. Panics on anything else.
pub fn parse_openmetrics(text: &str) -> Vec<Sample> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut saw_eof = false;
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for (i, line) in text.lines().enumerate() {
        assert!(!saw_eof, "line {i} after # EOF: {line}");
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap_or("");
            let name = parts.next().unwrap_or("");
            assert!(valid_name(name), "line {i}: bad family name in {line}");
            match kind {
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "info",
                            "unknown",
                            "stateset",
                            "summary"
                        ]
                        .contains(&t),
                        "line {i}: unknown type {t}"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "line {i}: family {name} declared twice"
                    );
                }
                "HELP" | "UNIT" => {}
                _ => panic!("line {i}: unknown comment {line}"),
            }
            continue;
        }
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("line {i}: no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("line {i}: bad value {v}")),
        };
        let (name, labels) = match name_labels.split_once('{') {
            None => (name_labels, BTreeMap::new()),
            Some((n, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("line {i}: unclosed labels"));
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, after) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("line {i}: bad label in {body}"));
                    assert!(valid_name(k), "line {i}: bad label name {k}");
                    let end = after
                        .find('"')
                        .unwrap_or_else(|| panic!("line {i}: unterminated label value"));
                    labels.insert(k.to_string(), after[..end].to_string());
                    rest = after[end + 1..]
                        .strip_prefix(',')
                        .unwrap_or(&after[end + 1..]);
                }
                (n, labels)
            }
        };
        assert!(valid_name(name), "line {i}: bad metric name {name}");
        let family = types
            .keys()
            .filter(|f| {
                name == f.as_str()
                    || name.strip_prefix(f.as_str()).is_some_and(|s| {
                        ["_total", "_bucket", "_sum", "_count", "_created", "_info"].contains(&s)
                    })
            })
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("line {i}: sample {name} of no declared family"));
        let t = &types[family];
        if t == "counter" {
            assert!(
                name.ends_with("_total") || name.ends_with("_created"),
                "line {i}: counter sample {name}"
            );
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    assert!(saw_eof, "no # EOF at the end");
    // Histogram buckets are cumulative and end with +Inf equal to the count.
    let mut last: BTreeMap<(String, Vec<(String, String)>), f64> = BTreeMap::new();
    for s in &samples {
        if let Some(base) = s.name.strip_suffix("_bucket") {
            let mut key: Vec<(String, String)> = s
                .labels
                .clone()
                .into_iter()
                .filter(|(k, _)| k != "le")
                .collect();
            key.sort();
            let prev = last.insert((base.to_string(), key), s.value).unwrap_or(0.0);
            assert!(s.value >= prev, "histogram {base} is not cumulative");
        }
    }
    samples
}

/// The value of the sample named `name` with exactly these labels.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// A loopback port nobody listens on right now (for a listener a test restarts on).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
