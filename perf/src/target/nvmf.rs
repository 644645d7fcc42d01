//! NVMe/TCP targets: `nvmf://HOST:PORT/NQN[?ns=1&hdgst=1&ddgst=1]`.
//!
//! One controller per run: its admin queue is connected by a small control thread that then
//! keeps it alive (Keep Alive at KATO/2, reconnection after a loss) until the run ends, and
//! shuts the controller down cleanly. Each reactor opens its share of `--connections` I/O queues
//! through the controller's link and drives them with the host's zero-copy data path: reads
//! land in the job's pool buffers, writes leave from them, in the capsule when small.

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use gyre_bdev::{IoError, IoOp};
use gyre_nvmf::host::{
    CommandError, Controller, ControllerLink, HostOptions, IoQueue, Namespace, QueueState,
};
use gyre_reactor::SgList;

use super::{Completed, IoSpec, QueuePlan, Target, TargetInfo, TargetOptions, TargetQueue};

/// The NVMe/TCP port unless the URL says otherwise.
pub const DEFAULT_PORT: u16 = 4420;
/// Bound on connecting and on admin commands.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// A command without an answer for this long fails its connection.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the control thread polls the admin queue.
const ADMIN_POLL: Duration = Duration::from_millis(10);

/// A parsed `nvmf://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmfUrl {
    /// Host as written (brackets removed from IPv6 addresses).
    pub host: String,
    pub port: u16,
    pub nqn: String,
    pub nsid: u32,
    pub header_digest: bool,
    pub data_digest: bool,
}

fn flag(v: &str) -> Option<bool> {
    match v {
        "1" | "true" | "on" | "yes" => Some(true),
        "0" | "false" | "off" | "no" => Some(false),
        _ => None,
    }
}

impl NvmfUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| {
            anyhow!(
                "invalid NVMe/TCP URL '{url}': {why} (expected nvmf://HOST:PORT/NQN[?ns=1&hdgst=1&ddgst=1])"
            )
        };
        let rest = url
            .strip_prefix("nvmf://")
            .ok_or_else(|| bad("it must start with nvmf://"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (hostport, nqn) = rest
            .split_once('/')
            .ok_or_else(|| bad("no subsystem NQN"))?;
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in the host"))?;
            let port = match after {
                "" => DEFAULT_PORT,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| bad("bad port"))?,
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                None => (hostport.to_string(), DEFAULT_PORT),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if port == 0 {
            return Err(bad("port 0"));
        }
        if nqn.is_empty() || nqn.contains('/') {
            return Err(bad("bad subsystem NQN"));
        }
        if nqn.len() > 223 || nqn.contains(char::is_whitespace) {
            return Err(bad("bad subsystem NQN"));
        }
        let mut u = NvmfUrl {
            host,
            port,
            nqn: nqn.to_string(),
            nsid: 1,
            header_digest: false,
            data_digest: false,
        };
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(&format!("'{pair}' is not KEY=VALUE")))?;
            match k {
                "ns" => {
                    u.nsid = v
                        .parse()
                        .ok()
                        .filter(|&n| n != 0 && n != u32::MAX)
                        .ok_or_else(|| bad("ns must be a namespace ID"))?
                }
                "hdgst" => u.header_digest = flag(v).ok_or_else(|| bad("hdgst is 0 or 1"))?,
                "ddgst" => u.data_digest = flag(v).ok_or_else(|| bad("ddgst is 0 or 1"))?,
                other => return Err(bad(&format!("unknown option '{other}'"))),
            }
        }
        Ok(u)
    }

    pub fn address(&self) -> Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", self.host))?
            .next()
            .with_context(|| format!("{} has no address", self.host))
    }

    /// The URL in its canonical form, for reports.
    pub fn canonical(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "nvmf://{host}:{}/{}?ns={}&hdgst={}&ddgst={}",
            self.port,
            self.nqn,
            self.nsid,
            u8::from(self.header_digest),
            u8::from(self.data_digest)
        )
    }
}

/// The control thread: owns the controller, polls its admin queue, shuts it down at the end.
struct AdminThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// The NVMe/TCP target, shared by the reactors.
pub struct NvmfHostTarget {
    info: TargetInfo,
    link: ControllerLink,
    ns: Namespace,
    admin: Mutex<AdminThread>,
}

impl NvmfHostTarget {
    /// Connects the controller, identifies the namespace and starts the control thread.
    pub fn connect(url_text: &str, opts: &TargetOptions) -> Result<Self> {
        let url = NvmfUrl::parse(url_text)?;
        let addr = url.address()?;
        let host = HostOptions {
            header_digest: url.header_digest,
            data_digest: url.data_digest,
            io_queues: u16::try_from(opts.connections.max(1))
                .context("too many connections for NVMe/TCP")?,
            io_queue_depth: u16::try_from(opts.queue_depth)
                .context("--qd is too large for NVMe/TCP (65535 at most)")?,
            max_io_size: u32::try_from(opts.io_size.max(128 * 1024))
                .context("--bs is too large for one NVMe command")?,
            connect_timeout: CONTROL_TIMEOUT,
            admin_timeout: CONTROL_TIMEOUT,
            // Well inside the engine's stall detector (30 s): a command the target never
            // answers fails as a transport error and the queue reconnects, instead of the
            // whole run being declared hung.
            io_timeout: Some(IO_TIMEOUT),
            ..HostOptions::default()
        };
        let (tx, rx) = crossbeam::channel::bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let nqn = url.nqn.clone();
        let nsid = url.nsid;
        let handle = std::thread::Builder::new()
            .name("gyre-perf-nvmf-admin".into())
            .spawn(move || {
                let mut ctrl = match Controller::connect(addr, &nqn, &host) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(
                            anyhow!(e).context(format!("cannot connect to {nqn} at {addr}"))
                        ));
                        return;
                    }
                };
                let ns = match ctrl.identify_namespace(nsid) {
                    Ok(ns) => ns,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow!(e).context(format!("namespace {nsid}"))));
                        let _ = ctrl.disconnect();
                        return;
                    }
                };
                let model = String::from_utf8_lossy(&ctrl.info().identify.mn)
                    .trim()
                    .to_string();
                let _ = tx.send(Ok((ctrl.link(), ns, model, ctrl.info().max_transfer)));
                while !thread_stop.load(Ordering::Acquire) {
                    if let Err(e) = ctrl.poll() {
                        tracing::warn!(error = %e, "NVMe/TCP admin queue gave up");
                        break;
                    }
                    std::thread::sleep(ADMIN_POLL);
                }
                if let Err(e) = ctrl.disconnect() {
                    tracing::warn!(error = %e, "NVMe/TCP controller shutdown");
                }
            })
            .context("cannot start the NVMe/TCP control thread")?;
        let admin = AdminThread {
            stop,
            handle: Some(handle),
        };
        let (link, ns, model, max_transfer) = rx
            .recv_timeout(CONTROL_TIMEOUT * 4)
            .map_err(|_| anyhow!("the NVMe/TCP controller did not come up in time"))??;
        if opts.io_size > u64::from(max_transfer) {
            bail!(
                "--bs {} exceeds the controller's largest transfer ({max_transfer} bytes)",
                opts.io_size
            );
        }
        let info = TargetInfo {
            kind: "nvmf",
            spec: url.canonical(),
            name: format!("{} namespace {}", url.nqn, url.nsid),
            module: if model.is_empty() {
                "nvmf".into()
            } else {
                model
            },
            block_size: ns.block_size,
            num_blocks: ns.num_blocks,
            writable: opts.writable,
            direct: None,
        };
        Ok(NvmfHostTarget {
            info,
            link,
            ns: ns.handle(),
            admin: Mutex::new(admin),
        })
    }
}

impl Drop for NvmfHostTarget {
    fn drop(&mut self) {
        let mut admin = self
            .admin
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        admin.stop.store(true, Ordering::Release);
        if let Some(h) = admin.handle.take() {
            let _ = h.join();
        }
    }
}

impl Target for NvmfHostTarget {
    type Queue = NvmfQueue;

    fn info(&self) -> &TargetInfo {
        &self.info
    }

    fn open_queue(&self, plan: &QueuePlan) -> Result<NvmfQueue> {
        let mut conns = Vec::with_capacity(plan.connection_count());
        let mut fds = Vec::with_capacity(plan.connection_count());
        for index in plan.connections.clone() {
            let q = self
                .link
                .connect_io_queue()
                .with_context(|| format!("connection {index}: cannot connect an I/O queue"))?;
            if u32::from(q.depth()) < plan.queue_depth {
                bail!(
                    "connection {index}: the controller allows {} commands per queue, --qd is {}",
                    q.depth(),
                    plan.queue_depth
                );
            }
            let fd = q.raw_fd();
            if let (Some(local), Some(fd)) = (gyre_reactor::local(), fd) {
                local
                    .register_wake_fd(fd)
                    .map_err(|e| anyhow!("cannot watch the socket: {e}"))?;
            }
            fds.push(fd);
            conns.push(q);
        }
        let slots = conns.len() * plan.queue_depth as usize;
        Ok(NvmfQueue {
            failed: vec![false; conns.len()],
            conns,
            fds,
            queue_depth: u64::from(plan.queue_depth.max(1)),
            ns: self.ns,
            refused: VecDeque::with_capacity(slots),
        })
    }
}

/// A reactor's I/O queues. Slot tags `c*qd .. (c+1)*qd` go to queue `c`.
pub struct NvmfQueue {
    conns: Vec<IoQueue>,
    /// The socket registered as a wake fd per queue (it changes when a queue reconnects).
    fds: Vec<Option<RawFd>>,
    /// Whether each queue's trouble was logged already.
    failed: Vec<bool>,
    queue_depth: u64,
    ns: Namespace,
    /// I/Os refused at submission, completed at the next poll.
    refused: VecDeque<Completed>,
}

fn io_status(r: Result<(), CommandError>) -> Result<(), IoError> {
    match r {
        Ok(()) => Ok(()),
        // EIO: the controller reported a failure.
        Err(CommandError::Status(_)) | Err(CommandError::DataDigest) => Err(IoError::Device(5)),
        Err(_) => Err(IoError::Aborted),
    }
}

impl TargetQueue for NvmfQueue {
    #[inline]
    fn submit(&mut self, io: IoSpec, buf: SgList) {
        let c = (io.tag / self.queue_depth) as usize;
        let Some(q) = self.conns.get_mut(c) else {
            self.refused.push_back(Completed {
                tag: io.tag,
                buf,
                status: Err(IoError::Aborted),
            });
            return;
        };
        let nlb = io.num_blocks as u32;
        let r = match io.op {
            IoOp::Read => q.submit_read(self.ns, io.offset_blocks, nlb, buf, io.tag),
            IoOp::Write => q.submit_write(self.ns, io.offset_blocks, nlb, buf, io.tag),
            op => {
                self.refused.push_back(Completed {
                    tag: io.tag,
                    buf,
                    status: Err(IoError::Unsupported(op)),
                });
                return;
            }
        };
        if let Err(e) = r {
            self.refused.push_back(Completed {
                tag: io.tag,
                buf: e.buf.unwrap_or_default(),
                status: Err(IoError::Aborted),
            });
        }
    }

    #[inline]
    fn poll<F: FnMut(Completed)>(&mut self, mut done: F) -> usize {
        let mut n = 0;
        while let Some(c) = self.refused.pop_front() {
            done(c);
            n += 1;
        }
        for (i, q) in self.conns.iter_mut().enumerate() {
            let mut first_bad = None;
            n += q.poll(|c| {
                if let (Err(e), None) = (c.result, first_bad) {
                    first_bad = Some(e);
                }
                done(Completed {
                    tag: c.tag,
                    buf: c.buf.unwrap_or_default(),
                    status: io_status(c.result),
                })
            });
            if let Some(e) = first_bad {
                if !self.failed[i] {
                    self.failed[i] = true;
                    tracing::warn!(queue = i, error = %e, "NVMe/TCP command failed");
                }
            }
            // A reconnected queue has a new socket: watch that one instead.
            let fd = q.raw_fd();
            if fd != self.fds[i] {
                if let Some(local) = gyre_reactor::local() {
                    if let Some(old) = self.fds[i] {
                        let _ = local.unregister_wake_fd(old);
                    }
                    if let Some(new) = fd {
                        let _ = local.register_wake_fd(new);
                    }
                }
                if q.state() == QueueState::Connected {
                    self.failed[i] = false;
                }
                self.fds[i] = fd;
            }
        }
        n
    }

    fn close(&mut self) {
        if let Some(local) = gyre_reactor::local() {
            for fd in self.fds.iter().flatten() {
                let _ = local.unregister_wake_fd(*fd);
            }
        }
        self.fds.clear();
        // Dropping the queues closes their connections.
        self.conns.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nvmf_urls() {
        let u = NvmfUrl::parse("nvmf://127.0.0.1:4420/nqn.2016-06.io.gyre:malloc0").unwrap();
        assert_eq!(
            u,
            NvmfUrl {
                host: "127.0.0.1".into(),
                port: 4420,
                nqn: "nqn.2016-06.io.gyre:malloc0".into(),
                nsid: 1,
                header_digest: false,
                data_digest: false,
            }
        );
        let u = NvmfUrl::parse("nvmf://[::1]:4421/nqn.x:y?ns=2&hdgst=1&ddgst=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.nsid), ("::1", 4421, 2));
        assert!(u.header_digest && u.data_digest);
        assert_eq!(
            u.canonical(),
            "nvmf://[::1]:4421/nqn.x:y?ns=2&hdgst=1&ddgst=1"
        );
        assert_eq!(u.address().unwrap(), "[::1]:4421".parse().unwrap());
        let u = NvmfUrl::parse("nvmf://h.example/nqn.a?ddgst=0").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.data_digest),
            ("h.example", 4420, false)
        );
        for bad in [
            "nvmf://",
            "nvmf://h",
            "nvmf://h/",
            "nvmf://h:0/nqn.a",
            "nvmf://h:x/nqn.a",
            "nvmf://[::1/nqn.a",
            "nvmf:///nqn.a",
            "nvmf://h/nqn.a/b",
            "nvmf://h/nqn.a?ns=0",
            "nvmf://h/nqn.a?ns=x",
            "nvmf://h/nqn.a?hdgst=2",
            "nvmf://h/nqn.a?color=red",
            "nvmf://h/nqn.a?ns",
            "iscsi://h/nqn.a",
        ] {
            assert!(NvmfUrl::parse(bad).is_err(), "'{bad}' should be rejected");
        }
    }
}
