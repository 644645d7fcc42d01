//! Where the I/O goes. A [`Target`] is created once on the control thread and opens one
//! [`TargetQueue`] per reactor; the engine's jobs drive the queues and know nothing else about
//! the transport.
//!
//! Targets are named by a URL, and [`with_target`] is the one place that turns a URL into a
//! target:
//!
//! - `bdev:TYPE:ARGS` — a bdev created in this process (`bdev:malloc:1G`, `bdev:null:1G`,
//!   `bdev:uring:/dev/nvme0n1`, and the test aid `bdev:inject:corrupt=LBA:malloc:SIZE`);
//! - `iscsi://[USER%SECRET@]HOST[:PORT]/IQN/LUN` — an iSCSI target, one session per connection;
//! - `nvmf://HOST:PORT/NQN[?ns=1&hdgst=1&ddgst=1]` — NVMe/TCP, one I/O queue per connection.
//!
//! A reactor's queue may carry several connections (`--connections` spread over the cores):
//! the job's slot tags `c*qd .. (c+1)*qd` belong to the queue's connection `c`, so each
//! connection has at most `qd` commands in flight.

pub mod bdev;
pub mod iscsi;
pub mod nvmf;

use std::ops::Range;
use std::sync::Arc;

use anyhow::{bail, Result};
use gyre_bdev::{IoError, IoOp};
use gyre_reactor::SgList;
use serde::Serialize;

/// What a target says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetInfo {
    /// The transport: `bdev`, `iscsi` or `nvmf`.
    pub kind: &'static str,
    /// What the user asked for, e.g. `malloc:1G` or `iscsi://127.0.0.1/iqn.x:y/0`.
    pub spec: String,
    pub name: String,
    /// The backend, e.g. `malloc`, `null`, `uring`, or the remote device's vendor/product.
    pub module: String,
    pub block_size: u32,
    pub num_blocks: u64,
    pub writable: bool,
    /// Whether data bypasses the page cache (O_DIRECT), for file-backed targets.
    pub direct: Option<bool>,
}

impl TargetInfo {
    pub fn size_bytes(&self) -> u64 {
        self.num_blocks.saturating_mul(self.block_size as u64)
    }
}

/// How the user wants the target opened (from the command line, before the target exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetOptions {
    /// The workload writes.
    pub writable: bool,
    /// Commands in flight per connection.
    pub queue_depth: u32,
    /// Largest I/O in bytes.
    pub io_size: u64,
    /// Connections (iSCSI sessions, NVMe/TCP I/O queues) in total, spread over the reactors.
    pub connections: usize,
    /// `--block-size` (bdevs created here).
    pub block_size: Option<u32>,
    /// `--buffered` (uring bdevs).
    pub buffered: bool,
}

/// What one reactor's queue must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePlan {
    /// The reactor's index among the run's reactors.
    pub reactor: usize,
    /// Run-wide indexes of the connections this queue opens (`len()` of them, at least 1);
    /// distinct over the run, e.g. for distinct iSCSI ISIDs.
    pub connections: Range<usize>,
    /// Commands in flight per connection.
    pub queue_depth: u32,
}

impl QueuePlan {
    pub fn connection_count(&self) -> usize {
        self.connections.len().max(1)
    }
}

/// A device under test, shared by all reactors.
pub trait Target: Send + Sync + 'static {
    type Queue: TargetQueue + 'static;

    fn info(&self) -> &TargetInfo;

    /// Opens the calling reactor's queue. Runs on the reactor thread (control path: it may
    /// allocate and block briefly, e.g. to connect and log in).
    fn open_queue(&self, plan: &QueuePlan) -> anyhow::Result<Self::Queue>;
}

/// One I/O as the engine submits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoSpec {
    pub op: IoOp,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    /// The submitter's slot number, returned in the completion.
    pub tag: u64,
}

/// A finished I/O: its tag, its buffers back, and how it went.
#[derive(Debug)]
pub struct Completed {
    pub tag: u64,
    pub buf: SgList,
    pub status: Result<(), IoError>,
}

/// A reactor's submission/completion queue to a target. `!Send`: it lives on its reactor.
/// Neither method may allocate, lock or make a syscall per I/O in steady state (a queue may
/// batch work and flush it once per `poll`).
pub trait TargetQueue {
    /// Starts an I/O with `buf` (at least `num_blocks * block_size` bytes). Every submitted
    /// I/O completes exactly once through [`TargetQueue::poll`], never from inside `submit`.
    fn submit(&mut self, io: IoSpec, buf: SgList);

    /// Hands finished I/Os to `done`; returns how many.
    fn poll<F: FnMut(Completed)>(&mut self, done: F) -> usize;

    /// Called once when the job is finished, on the reactor (control path: a queue may log
    /// out or disconnect here, bounded in time).
    fn close(&mut self) {}
}

/// Something to do with a target once it exists, whatever its type: the runner is generic
/// over [`Target`] so that [`with_target`] can hand it any transport.
pub trait TargetRunner {
    type Output;
    fn run<T: Target>(self, target: Arc<T>) -> Result<Self::Output>;
}

/// The URL schemes gyre-perf understands, for messages.
pub const SCHEMES: &str = "bdev:TYPE:ARGS, iscsi://[USER%SECRET@]HOST[:PORT]/IQN/LUN or nvmf://HOST:PORT/NQN[?ns=1&hdgst=1&ddgst=1]";

/// Creates the target named by `url` and hands it to `runner`. The one place where target
/// URLs are dispatched.
pub fn with_target<R: TargetRunner>(
    url: &str,
    opts: &TargetOptions,
    runner: R,
) -> Result<R::Output> {
    let Some((scheme, rest)) = url.split_once(':') else {
        bail!("invalid target '{url}': expected {SCHEMES}");
    };
    match scheme {
        "bdev" => runner.run(Arc::new(bdev::BdevTarget::from_spec_text(rest, opts)?)),
        "iscsi" => runner.run(Arc::new(iscsi::IscsiTarget::connect(url, opts)?)),
        "nvmf" => runner.run(Arc::new(nvmf::NvmfHostTarget::connect(url, opts)?)),
        other => bail!("invalid target '{url}': unknown scheme '{other}' (expected {SCHEMES})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Kind;
    impl TargetRunner for Kind {
        type Output = &'static str;
        fn run<T: Target>(self, target: Arc<T>) -> Result<&'static str> {
            Ok(target.info().kind)
        }
    }

    fn opts() -> TargetOptions {
        TargetOptions {
            writable: true,
            queue_depth: 4,
            io_size: 4096,
            connections: 1,
            block_size: None,
            buffered: false,
        }
    }

    #[test]
    fn dispatches_by_scheme() {
        assert_eq!(
            with_target("bdev:malloc:1M", &opts(), Kind).unwrap(),
            "bdev"
        );
        // A malformed NVMe/TCP URL is refused before any connection is tried.
        let e = with_target("nvmf://127.0.0.1:0/nqn.x", &opts(), Kind).unwrap_err();
        assert!(e.to_string().contains("port 0"), "{e}");
        for bad in ["", "malloc", "ftp://x/y", "bdev:floppy:1M"] {
            assert!(with_target(bad, &opts(), Kind).is_err(), "{bad}");
        }
    }
}
