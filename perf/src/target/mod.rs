//! Where the I/O goes. A [`Target`] is created once on the control thread and opens one
//! [`TargetQueue`] per reactor; the engine's jobs drive the queues and know nothing else about
//! the transport. The in-process bdev target is here; NVMe/TCP and iSCSI initiators plug in
//! the same way (a queue per reactor = a queue pair / a session connection).

pub mod bdev;

use gyre_bdev::{IoError, IoOp};
use gyre_reactor::SgList;
use serde::Serialize;

/// What a target says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetInfo {
    /// The transport: `bdev` (later `nvmf`, `iscsi`).
    pub kind: &'static str,
    /// What the user asked for, e.g. `malloc:1G` or `uring:/dev/nvme0n1`.
    pub spec: String,
    pub name: String,
    /// The backend, e.g. `malloc`, `null`, `uring`.
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

/// A device under test, shared by all reactors.
pub trait Target: Send + Sync + 'static {
    type Queue: TargetQueue + 'static;

    fn info(&self) -> &TargetInfo;

    /// Opens the calling reactor's queue. Runs on the reactor thread (control path: it may
    /// allocate and block briefly, e.g. to connect).
    fn open_queue(&self) -> anyhow::Result<Self::Queue>;
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
}
