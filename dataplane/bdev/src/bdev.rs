//! The block device abstraction: what a bdev is, how its backend serves I/O on one thread,
//! and the validated channel that consumers submit to.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use gyre_reactor::clock::ticks;
use uuid::Uuid;

use crate::io::{IoCompletion, IoError, IoOp, IoRequest, IoStatus, IoTypes};
use crate::rangelock::RangeLock;
use crate::stats::{BdevIoStats, IoCounters, IoStatsSnapshot, OpKind, TicksToNs};
use crate::BdevError;

/// What every bdev describes about itself.
pub struct BdevInfo {
    name: String,
    uuid: Uuid,
    block_size: u32,
    num_blocks: AtomicU64,
    io_types: IoTypes,
    module: &'static str,
    volatile_write_cache: bool,
    removed: AtomicBool,
    assigned_uuid: OnceLock<Uuid>,
    io_stats: BdevIoStats,
    /// Ranges held by atomic read-modify-write commands, for every consumer of the bdev.
    range_lock: RangeLock,
}

impl BdevInfo {
    /// Checks the geometry: block size 512 or 4096, at least one block, a usable name.
    pub fn new(
        name: &str,
        module: &'static str,
        block_size: u32,
        num_blocks: u64,
        io_types: IoTypes,
    ) -> Result<Self, BdevError> {
        validate_name(name)?;
        if block_size != 512 && block_size != 4096 {
            return Err(BdevError::InvalidBlockSize(block_size));
        }
        if num_blocks == 0 {
            return Err(BdevError::ZeroSize(name.to_string()));
        }
        if num_blocks.checked_mul(block_size as u64).is_none() {
            return Err(BdevError::TooLarge(name.to_string()));
        }
        Ok(BdevInfo {
            name: name.to_string(),
            uuid: Uuid::new_v4(),
            block_size,
            num_blocks: AtomicU64::new(num_blocks),
            io_types,
            module,
            volatile_write_cache: false,
            removed: AtomicBool::new(false),
            assigned_uuid: OnceLock::new(),
            io_stats: BdevIoStats::default(),
            range_lock: RangeLock::default(),
        })
    }

    /// The range lock atomic read-modify-write commands take on this bdev.
    pub fn range_lock(&self) -> &RangeLock {
        &self.range_lock
    }

    pub fn with_uuid(mut self, uuid: Uuid) -> Self {
        self.uuid = uuid;
        self
    }

    /// Marks the device as having a volatile write cache (flush is needed for durability).
    pub fn with_volatile_write_cache(mut self, on: bool) -> Self {
        self.volatile_write_cache = on;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uuid(&self) -> Uuid {
        self.assigned_uuid.get().copied().unwrap_or(self.uuid)
    }

    /// Gives an already built bdev the UUID it had before (from a saved configuration), for
    /// backends whose constructor draws a random one. Call it before registering the bdev.
    /// Only the first assignment counts; returns whether this one did.
    pub fn assign_uuid(&self, uuid: Uuid) -> bool {
        self.assigned_uuid.set(uuid).is_ok()
    }

    /// I/O statistics of every channel this bdev has had.
    pub fn io_stats(&self) -> IoStatsSnapshot {
        self.io_stats.snapshot()
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }

    /// For bdevs that can be resized; holders are told through the registry.
    pub fn set_num_blocks(&self, n: u64) {
        self.num_blocks.store(n, Ordering::Release);
    }

    pub fn size_bytes(&self) -> u64 {
        self.num_blocks() * self.block_size as u64
    }

    pub fn io_types(&self) -> IoTypes {
        self.io_types
    }

    pub fn supports(&self, op: IoOp) -> bool {
        self.io_types.supports(op)
    }

    /// The backend module's name (`malloc`, `null`, `uring`, ...).
    pub fn module(&self) -> &'static str {
        self.module
    }

    pub fn volatile_write_cache(&self) -> bool {
        self.volatile_write_cache
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }
}

impl fmt::Debug for BdevInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BdevInfo")
            .field("name", &self.name)
            .field("module", &self.module)
            .field("uuid", &self.uuid())
            .field("block_size", &self.block_size)
            .field("num_blocks", &self.num_blocks())
            .finish()
    }
}

pub(crate) fn validate_name(name: &str) -> Result<(), BdevError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(BdevError::InvalidName(name.to_string()))
    }
}

/// A block device. Shared by all threads; I/O goes through per-thread channels.
pub trait Bdev: Send + Sync + 'static {
    fn info(&self) -> &BdevInfo;

    /// Creates an I/O channel for the calling thread (a reactor). Control path: may allocate.
    fn create_channel(self: Arc<Self>) -> Result<Box<dyn IoChannelBackend>, BdevError>;

    /// Called once when the bdev is unregistered, after new opens became impossible.
    fn on_remove(&self) {}
}

/// A backend's per-thread I/O queue. `!Send`: it lives on the thread that created it.
pub trait IoChannelBackend {
    /// Starts `req`. Every submitted request completes exactly once, through `poll`, never
    /// from inside `submit`.
    fn submit(&mut self, req: IoRequest);

    /// Hands finished requests to `done`; returns how many.
    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize;

    /// Requests submitted and not yet handed back.
    fn in_flight(&self) -> usize;
}

/// Counters of one channel (per reactor, per open bdev). Plain integers: only the owning
/// thread writes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub write_bytes: u64,
    pub other_ops: u64,
    pub errors: u64,
}

impl ChannelStats {
    fn from_snapshot(s: &IoStatsSnapshot) -> Self {
        ChannelStats {
            reads: s.read.ops,
            read_bytes: s.read.bytes,
            writes: s.write.ops,
            write_bytes: s.write.bytes,
            other_ops: s.other.ops,
            errors: s.errors(),
        }
    }

    pub fn add(&mut self, o: &ChannelStats) {
        self.reads += o.reads;
        self.read_bytes += o.read_bytes;
        self.writes += o.writes;
        self.write_bytes += o.write_bytes;
        self.other_ops += o.other_ops;
        self.errors += o.errors;
    }
}

/// What consumers submit I/O to: a backend channel behind checks of every request against
/// the bdev (supported op, block range, buffer size, write permission, removal), so that no
/// backend ever sees an invalid request.
pub struct BdevChannel {
    bdev: Arc<dyn Bdev>,
    backend: Box<dyn IoChannelBackend>,
    writable: bool,
    rejected: VecDeque<IoCompletion>,
    counters: Arc<IoCounters>,
    ticks_to_ns: TicksToNs,
}

impl BdevChannel {
    pub(crate) fn new(bdev: Arc<dyn Bdev>, writable: bool) -> Result<Self, BdevError> {
        let backend = bdev.clone().create_channel()?;
        Ok(BdevChannel {
            backend,
            writable,
            rejected: VecDeque::with_capacity(64),
            counters: bdev.info().io_stats.register(),
            ticks_to_ns: TicksToNs::new(),
            bdev,
        })
    }

    pub fn info(&self) -> &BdevInfo {
        self.bdev.info()
    }

    /// Starts `req`; it completes (possibly with an error) through [`BdevChannel::poll`].
    #[inline]
    pub fn submit(&mut self, mut req: IoRequest) {
        req.submitted_at = ticks();
        match self.check(&req) {
            Ok(()) => self.backend.submit(req),
            Err(e) => self.rejected.push_back(IoCompletion {
                status: Err(e),
                req,
            }),
        }
    }

    /// Hands finished requests to `done`; returns how many.
    #[inline]
    pub fn poll(&mut self, mut done: impl FnMut(IoCompletion)) -> usize {
        let block_size = self.bdev.info().block_size() as u64;
        let counters = &*self.counters;
        let conv = self.ticks_to_ns;
        // Read the clock once per poll that completes something.
        let mut now = 0;
        let mut record = |c: &IoCompletion| {
            let kind = OpKind::of(c.req.op);
            if c.status.is_err() {
                counters.record_error(kind);
                return;
            }
            if now == 0 {
                now = ticks();
            }
            let bytes = if matches!(c.req.op, IoOp::Read | IoOp::Write) {
                c.req.num_blocks * block_size
            } else {
                0
            };
            let latency = conv.ns(now.saturating_sub(c.req.submitted_at));
            counters.record_ok(kind, bytes, latency);
        };
        let mut n = 0;
        while let Some(c) = self.rejected.pop_front() {
            record(&c);
            done(c);
            n += 1;
        }
        n + self.backend.poll(&mut |c| {
            record(&c);
            done(c)
        })
    }

    pub fn in_flight(&self) -> usize {
        self.backend.in_flight() + self.rejected.len()
    }

    /// This channel's counts so far (the bdev's totals are [`BdevInfo::io_stats`]).
    pub fn stats(&self) -> ChannelStats {
        ChannelStats::from_snapshot(&self.counters.snapshot())
    }

    fn check(&self, req: &IoRequest) -> IoStatus {
        let info = self.bdev.info();
        if info.is_removed() {
            return Err(IoError::Removed);
        }
        if !self.writable && matches!(req.op, IoOp::Write | IoOp::WriteZeroes | IoOp::Unmap) {
            return Err(IoError::ReadOnly);
        }
        check_request(info, req)
    }
}

impl Drop for BdevChannel {
    fn drop(&mut self) {
        self.bdev.info().io_stats.retire(&self.counters);
    }
}

/// Checks a request against the device: operation supported, block range inside the device
/// (without overflow), buffers large enough. Every channel applies it; a backend that can be
/// driven directly may apply it again.
#[inline]
pub fn check_request(info: &BdevInfo, req: &IoRequest) -> IoStatus {
    let op = req.op;
    if !info.supports(op) {
        return Err(IoError::Unsupported(op));
    }
    if op.has_range() {
        if req.num_blocks == 0 {
            return Err(IoError::Empty(op));
        }
        let num_blocks = info.num_blocks();
        let in_range = req
            .offset_blocks
            .checked_add(req.num_blocks)
            .is_some_and(|end| end <= num_blocks);
        if !in_range {
            return Err(IoError::OutOfRange {
                offset: req.offset_blocks,
                count: req.num_blocks,
                num_blocks,
            });
        }
    }
    if op.has_data() {
        let need = req.num_blocks.saturating_mul(info.block_size() as u64);
        let have = req.buf.len() as u64;
        if have < need {
            return Err(IoError::BufferTooSmall { need, have });
        }
    }
    Ok(())
}
