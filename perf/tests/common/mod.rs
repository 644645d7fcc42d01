//! Test helpers shared by the integration tests: Debian's tgt with one RAM-backed LUN.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// tgtd with one RAM-backed LUN (LUN 1), killed on drop.
pub struct Tgtd {
    child: Child,
    pub port: u16,
    image: PathBuf,
}

/// The CHAP-protected target (same LUN) and its credentials.
pub const TGT_CHAP_IQN: &str = "iqn.2024-01.io.gyre.perf-test:chap";
pub const TGT_CHAP_USER: &str = "perfuser";
pub const TGT_CHAP_SECRET: &str = "perf-secret-1234";
pub const TGT_IQN: &str = "iqn.2024-01.io.gyre.perf-test:ram";

impl Tgtd {
    pub fn start(tgtd: &Path, tgtadm: &Path) -> Tgtd {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        // tgtd takes control ports up to 32767; keep clear of the iSCSI crate's test.
        let control = (std::process::id() % 20000 + 5000).to_string();
        let image = PathBuf::from(format!("/dev/shm/gyre-perf-tgt-{}.img", std::process::id()));
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(32 << 20))
            .expect("create the LUN image");
        let child = Command::new(tgtd)
            .args(["-f", "-C", &control, "--iscsi"])
            .arg(format!("portal=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tgtd");
        let t = Tgtd { child, port, image };
        let adm = |args: &[&str]| {
            Command::new(tgtadm)
                .args(["-C", &control, "--lld", "iscsi"])
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(adm(&["--op", "show", "--mode", "target"])
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        {
            assert!(Instant::now() < deadline, "tgtd did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        let img = t.image.to_string_lossy().to_string();
        for args in [
            &[
                "--op", "new", "--mode", "target", "--tid", "1", "-T", TGT_IQN,
            ][..],
            &[
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                "1",
                "-b",
                &img,
                "--bstype",
                "rdwr",
            ],
            &[
                "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
            ],
            // A second target, the same LUN behind CHAP.
            &[
                "--op",
                "new",
                "--mode",
                "target",
                "--tid",
                "2",
                "-T",
                TGT_CHAP_IQN,
            ],
            &[
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                "2",
                "--lun",
                "1",
                "-b",
                &img,
                "--bstype",
                "rdwr",
            ],
            &[
                "--op", "bind", "--mode", "target", "--tid", "2", "-I", "ALL",
            ],
            &[
                "--op",
                "new",
                "--mode",
                "account",
                "--user",
                TGT_CHAP_USER,
                "--password",
                TGT_CHAP_SECRET,
            ],
            &[
                "--op",
                "bind",
                "--mode",
                "account",
                "--tid",
                "2",
                "--user",
                TGT_CHAP_USER,
            ],
        ] {
            assert!(adm(args), "tgtadm {args:?}");
        }
        t
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// tgtd with its LUN, or `None` (and a printed reason) when tgt is not installed.
pub fn tgtd_or_skip(test: &str) -> Option<Tgtd> {
    match (find_tool("tgtd"), find_tool("tgtadm")) {
        (Some(d), Some(a)) => Some(Tgtd::start(&d, &a)),
        _ => {
            println!("skipping {test}: tgtd/tgtadm not installed (apt-get install tgt)");
            None
        }
    }
}
