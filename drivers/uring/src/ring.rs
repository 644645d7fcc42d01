//! One io_uring per thread, shared by every uring channel of that thread.
//!
//! Sharing the ring is what lets a reactor submit everything its pollers produced in one
//! iteration with a single `io_uring_enter`, whatever bdev it was for. The ring registers
//! the global buffer pool's regions as fixed buffers once (index = size class), so that
//! single-segment I/O on pool buffers skips the kernel's per-I/O page pinning, and keeps a
//! sparse fixed-file table in which each channel's file gets an entry, which saves the
//! per-I/O file reference counting.
//!
//! On a reactor thread an end-of-iteration poller submits pending SQEs (one syscall per
//! iteration, none when nothing is pending) and reaps CQEs into the channels' completion
//! queues. The ring's eventfd is registered with the reactor so that a sleeping reactor wakes
//! when a completion lands; notifications are only enabled ("armed") once the ring has gone
//! a whole iteration without activity, and disabled as soon as completions flow, so that a
//! busy ring costs no eventfd writes and the eventfd is drained once per busy-to-idle turn.
//! Off a reactor, a channel's `poll` submits and reaps itself.
//!
//! The ring is set up with `COOP_TASKRUN | TASKRUN_FLAG` (completions that need task work do
//! not interrupt a busy-polling thread with an IPI; the flag in the SQ ring tells us to enter
//! the kernel to run them, which `submit` does), `SINGLE_ISSUER` (the ring is thread-local) and
//! `SUBMIT_ALL`. Kernels that refuse these get a plain ring. `DEFER_TASKRUN` is not used: it
//! would make every reap a syscall.
//!
//! user_data carries (channel id << 32 | slot), so a completion finds its request without a
//! lookup table. Nothing here allocates, locks or makes a syscall per I/O in steady state.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use gyre_bdev::{
    Bdev, BdevError, IoChannelBackend, IoCompletion, IoError, IoOp, IoRequest, IoStatus,
};
use gyre_reactor::{MemRegion, PollStatus};
use io_uring::{squeue, IoUring};

use crate::bdev::UringBdev;
use crate::slot::{build_sqe, slot_op, zero_stage, FileRef, Slab, SqeEnv, SqeKind, Stage};

const SQ_ENTRIES: u32 = 256;
const CQ_ENTRIES: u32 = 4096;
/// Entries of the sparse fixed-file table; channels beyond it use plain fds.
const FILE_TABLE: u32 = 1024;
/// Slots preallocated per channel (the slab grows past this if needed).
const INITIAL_SLOTS: usize = 128;
/// Completions preallocated per channel.
const INITIAL_DONE: usize = 256;
/// Size of the zeroed buffer write-zeroes falls back to.
const ZERO_BUF: usize = 128 << 10;
/// CQEs copied out of the ring at a time before they are processed.
const REAP_BATCH: usize = 64;

/// Counters and setup of the calling thread's ring (see [`thread_ring_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// The global pool's regions are registered buffers.
    pub fixed_buffers: bool,
    /// The sparse fixed-file table is registered.
    pub fixed_files: bool,
    /// The ring runs with `COOP_TASKRUN | TASKRUN_FLAG | SINGLE_ISSUER`.
    pub coop_taskrun: bool,
    /// Submission is batched by the reactor's end-of-iteration poller.
    pub on_reactor: bool,
    /// `io_uring_enter` calls (submissions, running task work, waits at close).
    pub enters: u64,
    /// SQEs the kernel consumed.
    pub sqes: u64,
    /// CQEs reaped.
    pub cqes: u64,
    /// Enters forced by a full SQ.
    pub inline_submits: u64,
    /// SQEs using registered buffers.
    pub fixed_buffer_sqes: u64,
    /// SQEs using `readv`/`writev`.
    pub vectored_sqes: u64,
    /// Short transfers continued with another SQE.
    pub continuations: u64,
    /// Times completion notifications were enabled before the reactor might sleep.
    pub eventfd_arms: u64,
    /// Notifications the kernel posted to the eventfd (read when draining it).
    pub eventfd_signals: u64,
    /// CQEs that matched no request (e.g. messages other rings posted with `MSG_RING`).
    pub stray_cqes: u64,
    /// Channels open (or closing with I/O still in flight).
    pub channels: u64,
}

/// The calling thread's ring statistics, if a uring channel was ever created on it.
pub fn thread_ring_stats() -> Option<RingStats> {
    CTX.try_with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|ctx| ctx.try_borrow().ok().map(|x| x.stats_snapshot()))
    })
    .ok()
    .flatten()
}

/// The calling thread's ring fd, for diagnostics and tests (another ring can post to it
/// with `MSG_RING`; such CQEs are counted as stray and otherwise ignored).
#[doc(hidden)]
pub fn thread_ring_fd() -> Option<std::os::fd::RawFd> {
    CTX.try_with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|ctx| ctx.try_borrow().ok().map(|x| x.ring.as_raw_fd()))
    })
    .ok()
    .flatten()
}

thread_local! {
    static CTX: RefCell<Option<Rc<RefCell<RingCtx>>>> = const { RefCell::new(None) };
}

fn user_data(channel: u32, slot: u32) -> u64 {
    (channel as u64) << 32 | slot as u64
}

fn split_user_data(ud: u64) -> (u32, u32) {
    ((ud >> 32) as u32, ud as u32)
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}

/// A channel's state, owned by the ring so that reaping can complete its requests.
struct ChannelState {
    bdev: Arc<UringBdev>,
    file: FileRef,
    block_size: u64,
    slots: Slab,
    /// Slots in use.
    active: usize,
    next_seq: u64,
    /// Resets waiting for the requests submitted before them (by sequence number).
    resets: VecDeque<(u64, IoRequest)>,
    done: VecDeque<IoCompletion>,
    /// The channel handle is gone; completions are dropped and the state removed when idle.
    closing: bool,
}

impl ChannelState {
    /// The backend's own checks: the bdev layer's channel already did them, but a backend
    /// used directly must not trust its caller either.
    fn check(&self, req: &IoRequest) -> IoStatus {
        gyre_bdev::check_request(self.bdev.info(), req)
    }

    fn complete(&mut self, status: IoStatus, req: IoRequest) {
        if !self.closing {
            self.done.push_back(IoCompletion { status, req });
        }
    }

    /// Completes the resets whose earlier requests have all completed.
    fn release_resets(&mut self) {
        let oldest = if self.active == 0 {
            u64::MAX
        } else {
            self.slots.min_active_seq().unwrap_or(u64::MAX)
        };
        while self.resets.front().is_some_and(|(seq, _)| *seq <= oldest) {
            if let Some((_, req)) = self.resets.pop_front() {
                self.complete(Ok(()), req);
            }
        }
    }
}

enum Next {
    Resubmit,
    Finish(IoStatus),
}

pub(crate) struct RingCtx {
    // Dropped by hand: the ring first, then (only if nothing is in flight) the zero buffer.
    ring: ManuallyDrop<IoUring>,
    channels: Vec<Option<ChannelState>>,
    free_ids: Vec<u32>,
    /// Requests waiting for SQ space (the SQ was full and an inline submit did not help).
    backlog: VecDeque<u64>,
    fixed_pool: Option<u64>,
    fixed_files: bool,
    zero: ManuallyDrop<MemRegion>,
    zero_index: Option<u16>,
    eventfd: Option<OwnedFd>,
    armed: bool,
    on_reactor: bool,
    /// Bumped by every submission and reap; the poller compares it to see an idle iteration.
    activity: u64,
    seen_activity: u64,
    stats: RingStats,
}

fn build_ring() -> io::Result<(IoUring, bool)> {
    let tuned = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_single_issuer()
        .setup_submit_all()
        .build(SQ_ENTRIES);
    match tuned {
        Ok(r) => Ok((r, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::info!("io_uring refused COOP_TASKRUN/SINGLE_ISSUER; using a plain ring");
            let r = IoUring::builder()
                .setup_cqsize(CQ_ENTRIES)
                .build(SQ_ENTRIES)?;
            Ok((r, false))
        }
        Err(e) => Err(e),
    }
}

impl RingCtx {
    /// `wake_eventfd`: whether a sleeping reactor must be woken by completions (hybrid idle);
    /// a busy-polling reactor never sleeps, so it gets no eventfd and no drain syscalls.
    fn new(on_reactor: bool, wake_eventfd: bool) -> Result<Self, BdevError> {
        let (ring, coop) = build_ring().map_err(|source| BdevError::Io {
            context: "cannot create an io_uring".to_string(),
            source,
        })?;
        let zero = MemRegion::allocate(ZERO_BUF, false)?;

        // Fixed buffers: one iovec per pool class region (buf_index = class), then the zero
        // buffer. The pool lives for the whole process; the zero buffer outlives the ring.
        let pool = match gyre_reactor::global_pool() {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "no global buffer pool; io_uring without fixed buffers");
                None
            }
        };
        let mut iovecs: Vec<libc::iovec> = pool
            .iter()
            .flat_map(|p| p.regions())
            .map(|(ptr, len)| libc::iovec {
                iov_base: ptr.cast(),
                iov_len: len,
            })
            .collect();
        let zero_at = iovecs.len();
        iovecs.push(libc::iovec {
            iov_base: zero.as_ptr().cast(),
            iov_len: zero.len(),
        });
        // SAFETY: every iovec is a live mapping: the global pool's regions are never unmapped,
        // and the zero buffer is dropped only after the ring.
        let (fixed_pool, zero_index) = match unsafe { ring.submitter().register_buffers(&iovecs) } {
            Ok(()) => (pool.map(|p| p.id()), u16::try_from(zero_at).ok()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot register fixed buffers; using plain reads and writes");
                (None, None)
            }
        };
        let fixed_files = match ring.submitter().register_files_sparse(FILE_TABLE) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register a fixed-file table; using plain fds");
                false
            }
        };
        let eventfd = if on_reactor && wake_eventfd {
            // SAFETY: plain syscall; the result is checked.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(BdevError::Io {
                    context: "cannot create the io_uring eventfd".to_string(),
                    source: io::Error::last_os_error(),
                });
            }
            // SAFETY: a fresh fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            ring.submitter()
                .register_eventfd(fd.as_raw_fd())
                .map_err(|source| BdevError::Io {
                    context: "cannot register the io_uring eventfd".to_string(),
                    source,
                })?;
            Some(fd)
        } else {
            None
        };
        let mut ctx = RingCtx {
            ring: ManuallyDrop::new(ring),
            channels: Vec::new(),
            free_ids: Vec::new(),
            backlog: VecDeque::with_capacity(SQ_ENTRIES as usize),
            fixed_pool,
            fixed_files,
            zero: ManuallyDrop::new(zero),
            zero_index,
            eventfd,
            armed: false,
            on_reactor,
            activity: 0,
            seen_activity: 0,
            stats: RingStats {
                fixed_buffers: fixed_pool.is_some(),
                fixed_files,
                coop_taskrun: coop,
                on_reactor,
                ..RingStats::default()
            },
        };
        // Notifications start disabled; the poller arms them when the ring goes idle.
        ctx.ring.completion().disable_eventfd();
        tracing::debug!(
            fixed_buffers = fixed_pool.is_some(),
            fixed_files,
            coop_taskrun = coop,
            on_reactor,
            "io_uring thread context created"
        );
        Ok(ctx)
    }

    fn stats_snapshot(&self) -> RingStats {
        RingStats {
            channels: self.channels.iter().flatten().count() as u64,
            ..self.stats
        }
    }

    fn add_channel(&mut self, bdev: Arc<UringBdev>) -> u32 {
        let id = match self.free_ids.pop() {
            Some(id) => id,
            None => {
                self.channels.push(None);
                (self.channels.len() - 1) as u32
            }
        };
        let fd = bdev.raw_fd();
        let file = if self.fixed_files && id < FILE_TABLE {
            match self.ring.submitter().register_files_update(id, &[fd]) {
                Ok(_) => FileRef::Fixed(id),
                Err(e) => {
                    tracing::debug!(error = %e, "fixed-file update failed; using the plain fd");
                    FileRef::Fd(fd)
                }
            }
        } else {
            FileRef::Fd(fd)
        };
        let block_size = bdev.info().block_size() as u64;
        self.channels[id as usize] = Some(ChannelState {
            bdev,
            file,
            block_size,
            slots: Slab::with_capacity(INITIAL_SLOTS),
            active: 0,
            next_seq: 0,
            resets: VecDeque::with_capacity(8),
            done: VecDeque::with_capacity(INITIAL_DONE),
            closing: false,
        });
        id
    }

    fn remove_channel(&mut self, id: u32) {
        let Some(entry) = self.channels.get_mut(id as usize) else {
            return;
        };
        if let Some(ch) = entry.take() {
            if let FileRef::Fixed(i) = ch.file {
                // Drops the ring's reference to the file.
                let _ = self.ring.submitter().register_files_update(i, &[-1]);
            }
            self.free_ids.push(id);
        }
    }

    fn channel(&mut self, id: u32) -> Option<&mut ChannelState> {
        self.channels.get_mut(id as usize)?.as_mut()
    }

    fn submit(&mut self, id: u32, req: IoRequest) {
        self.activity += 1;
        let Some(ch) = self.channels.get_mut(id as usize).and_then(|c| c.as_mut()) else {
            // A live handle always has its state; nothing to complete it on otherwise.
            return;
        };
        if let Err(e) = ch.check(&req) {
            ch.complete(Err(e), req);
            return;
        }
        let stage = match req.op {
            IoOp::Read => Stage::Read,
            IoOp::Write => Stage::Write,
            IoOp::Flush => Stage::Flush,
            IoOp::WriteZeroes | IoOp::Unmap => zero_stage(ch.bdev.next_zero_method(req.op, None)),
            IoOp::Reset => {
                if ch.active == 0 {
                    ch.complete(Ok(()), req);
                } else {
                    ch.resets.push_back((ch.next_seq, req));
                }
                return;
            }
            IoOp::Compare => {
                ch.complete(Err(IoError::Unsupported(IoOp::Compare)), req);
                return;
            }
        };
        let (offset, total) = if stage == Stage::Flush {
            (0, 0)
        } else {
            // Range-checked above, and BdevInfo guarantees the device size fits in a u64.
            (
                req.offset_blocks * ch.block_size,
                req.num_blocks * ch.block_size,
            )
        };
        let Some(si) = ch.slots.alloc() else {
            ch.complete(Err(IoError::Aborted), req);
            return;
        };
        let seq = ch.next_seq;
        let Some(slot) = ch.slots.get_mut(si) else {
            ch.complete(Err(IoError::Aborted), req);
            return;
        };
        slot.stage = stage;
        slot.offset = offset;
        slot.total = total;
        slot.done = 0;
        slot.seq = seq;
        slot.req = Some(req);
        ch.next_seq += 1;
        ch.active += 1;
        self.queue(user_data(id, si));
    }

    /// Builds the SQE of slot `ud` from its current progress.
    fn prep(&mut self, ud: u64) -> Option<squeue::Entry> {
        let (id, si) = split_user_data(ud);
        let ch = self.channels.get_mut(id as usize)?.as_mut()?;
        let env = SqeEnv {
            file: ch.file,
            fixed_pool: self.fixed_pool,
            zero_ptr: self.zero.as_ptr(),
            zero_len: self.zero.len(),
            zero_index: self.zero_index,
        };
        let slot = ch.slots.get_mut(si)?;
        if slot.stage == Stage::Free {
            return None;
        }
        let (entry, kind) = build_sqe(slot, &env);
        match kind {
            SqeKind::Fixed => self.stats.fixed_buffer_sqes += 1,
            SqeKind::Vectored => self.stats.vectored_sqes += 1,
            SqeKind::Plain | SqeKind::Other => {}
        }
        Some(entry.user_data(ud))
    }

    /// Queues slot `ud`'s SQE, behind any backlog.
    fn queue(&mut self, ud: u64) {
        if self.backlog.is_empty() {
            let Some(entry) = self.prep(ud) else {
                return;
            };
            if self.push(&entry) {
                return;
            }
        }
        self.backlog.push_back(ud);
    }

    /// Pushes an SQE; when the SQ is full, submits inline first. False if it still did not fit.
    fn push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: what the entry points to (the request's buffers and the iovecs in its slot,
        // which never moves, or the zero buffer) stays valid until its CQE is reaped.
        if unsafe { self.ring.submission().push(entry) }.is_ok() {
            return true;
        }
        self.stats.inline_submits += 1;
        self.enter();
        // SAFETY: as above.
        unsafe { self.ring.submission().push(entry) }.is_ok()
    }

    fn flush_backlog(&mut self) {
        while let Some(&ud) = self.backlog.front() {
            if let Some(entry) = self.prep(ud) {
                if !self.push(&entry) {
                    return;
                }
            }
            self.backlog.pop_front();
        }
    }

    /// Whether an `io_uring_enter` has work: SQEs to submit, task work to run for
    /// completions (`TASKRUN` flag), or overflowed completions to flush.
    fn needs_enter(&mut self) -> bool {
        let sq = self.ring.submission();
        !sq.is_empty() || sq.taskrun() || sq.cq_overflow()
    }

    /// One `io_uring_enter`: submits what is queued, runs pending task work, flushes overflow.
    fn enter(&mut self) -> usize {
        self.stats.enters += 1;
        match self.ring.submit() {
            Ok(n) => {
                self.stats.sqes += n as u64;
                if n > 0 {
                    self.activity += 1;
                }
                n
            }
            Err(e) => {
                if !is_transient(&e) {
                    tracing::warn!(error = %e, "io_uring_enter failed");
                }
                0
            }
        }
    }

    /// Moves every available CQE to its channel. Shared memory only: no syscall.
    fn reap(&mut self) -> usize {
        let mut total = 0;
        loop {
            let mut batch = [(0u64, 0i32); REAP_BATCH];
            let mut k = 0;
            {
                let mut cq = self.ring.completion();
                while k < REAP_BATCH {
                    match cq.next() {
                        Some(c) => {
                            batch[k] = (c.user_data(), c.result());
                            k += 1;
                        }
                        None => break,
                    }
                }
            }
            if k == 0 {
                break;
            }
            if self.armed {
                // Completions are flowing: no eventfd writes until the ring idles again.
                self.ring.completion().disable_eventfd();
                self.armed = false;
            }
            for &(ud, res) in &batch[..k] {
                self.on_cqe(ud, res);
            }
            total += k;
        }
        if total > 0 {
            self.activity += 1;
            self.stats.cqes += total as u64;
        }
        total
    }

    fn on_cqe(&mut self, ud: u64, res: i32) {
        let (id, si) = split_user_data(ud);
        let Some(ch) = self.channels.get_mut(id as usize).and_then(|c| c.as_mut()) else {
            self.stats.stray_cqes += 1;
            return;
        };
        let bdev = &ch.bdev;
        let Some(slot) = ch.slots.get_mut(si) else {
            self.stats.stray_cqes += 1;
            return;
        };
        let next = match slot.stage {
            Stage::Free => {
                self.stats.stray_cqes += 1;
                return;
            }
            Stage::Read | Stage::Write | Stage::ZeroWrite => {
                if res < 0 {
                    Next::Finish(Err(IoError::Device(-res)))
                } else if res == 0 {
                    // No progress (end of a file that shrank under us): never loop on it.
                    Next::Finish(Err(IoError::Device(libc::EIO)))
                } else {
                    slot.done += res as u64;
                    if slot.done < slot.total {
                        self.stats.continuations += 1;
                        Next::Resubmit
                    } else {
                        Next::Finish(Ok(()))
                    }
                }
            }
            Stage::Flush => Next::Finish(if res < 0 {
                Err(IoError::Device(-res))
            } else {
                Ok(())
            }),
            Stage::Fallocate(method) => {
                if res >= 0 {
                    Next::Finish(Ok(()))
                } else if res == -libc::EOPNOTSUPP || res == -libc::EINVAL {
                    if bdev.zero_method_supported(method) {
                        bdev.disable_zero_method(method);
                        tracing::info!(
                            bdev = bdev.info().name(),
                            refused = ?method,
                            errno = -res,
                            "fallocate method refused; falling back"
                        );
                    }
                    let op = slot_op(slot);
                    slot.stage = zero_stage(bdev.next_zero_method(op, Some(method)));
                    slot.done = 0;
                    Next::Resubmit
                } else {
                    Next::Finish(Err(IoError::Device(-res)))
                }
            }
        };
        match next {
            Next::Resubmit => self.queue(ud),
            Next::Finish(status) => self.finish(id, si, status),
        }
    }

    fn finish(&mut self, id: u32, si: u32, status: IoStatus) {
        let Some(ch) = self.channel(id) else {
            return;
        };
        let Some(slot) = ch.slots.get_mut(si) else {
            return;
        };
        let req = slot.req.take();
        ch.slots.release(si);
        ch.active = ch.active.saturating_sub(1);
        if let Some(req) = req {
            // Dropped here (buffers back to the pool) if the channel is closing.
            ch.complete(status, req);
        }
        if !ch.resets.is_empty() {
            ch.release_resets();
        }
        if ch.closing && ch.active == 0 {
            self.remove_channel(id);
        }
    }

    fn pop_done(&mut self, id: u32) -> Option<IoCompletion> {
        self.channel(id)?.done.pop_front()
    }

    fn in_flight(&self, id: u32) -> usize {
        self.channels
            .get(id as usize)
            .and_then(|c| c.as_ref())
            .map_or(0, |c| c.active + c.resets.len() + c.done.len())
    }

    /// The reactor's end-of-iteration poller: one submit per iteration if anything is pending,
    /// then reap. Arms the eventfd when a whole iteration saw no ring activity.
    fn run_poller(&mut self) -> PollStatus {
        self.flush_backlog();
        if self.needs_enter() {
            self.enter();
        }
        self.reap();
        if self.activity != self.seen_activity {
            self.seen_activity = self.activity;
            return PollStatus::Busy;
        }
        if !self.armed && self.eventfd.is_some() {
            self.arm();
            // A completion that landed before notifications were enabled signalled nothing.
            if self.needs_enter() {
                self.enter();
            }
            if self.reap() > 0 {
                self.seen_activity = self.activity;
                return PollStatus::Busy;
            }
        }
        PollStatus::Idle
    }

    /// Drains the eventfd (the reactor's epoll is level-triggered) and enables notifications.
    fn arm(&mut self) {
        if let Some(fd) = &self.eventfd {
            let mut v: u64 = 0;
            // SAFETY: reading 8 bytes into a valid u64 from our non-blocking eventfd.
            let n = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
            if n == 8 {
                self.stats.eventfd_signals += v;
            }
        }
        self.ring.completion().enable_eventfd();
        // Pairs with the kernel's check of the flag after posting a CQE: either it sees
        // notifications enabled, or our next look at the CQ sees its entry.
        fence(Ordering::SeqCst);
        self.armed = true;
        self.stats.eventfd_arms += 1;
    }

    /// Blocks until `pred` no longer holds, submitting and waiting for completions.
    /// For control paths off the reactor (closing a channel, thread exit). False if the ring
    /// failed and requests may still be in flight.
    fn wait_while(&mut self, mut pred: impl FnMut(&RingCtx) -> bool) -> bool {
        while pred(self) {
            self.flush_backlog();
            self.stats.enters += 1;
            match self.ring.submit_and_wait(1) {
                Ok(n) => self.stats.sqes += n as u64,
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    tracing::error!(error = %e, "io_uring wait failed; leaving requests in flight");
                    return false;
                }
            }
            self.reap();
        }
        true
    }

    fn close_channel(&mut self, id: u32) {
        let Some(ch) = self.channel(id) else {
            return;
        };
        ch.closing = true;
        ch.done.clear();
        ch.resets.clear();
        if ch.active == 0 {
            self.remove_channel(id);
            return;
        }
        if self.on_reactor {
            // The poller reaps the rest; the state goes when its last request completes.
            return;
        }
        // Off a reactor nobody may poll this ring again soon: wait for the kernel to be done
        // with the buffers now.
        self.wait_while(|c| c.channels.get(id as usize).is_some_and(|s| s.is_some()));
    }
}

impl Drop for RingCtx {
    fn drop(&mut self) {
        for ch in self.channels.iter_mut().flatten() {
            ch.closing = true;
            ch.done.clear();
            ch.resets.clear();
        }
        let idle = self.wait_while(|c| c.channels.iter().flatten().any(|s| s.active > 0));
        // SAFETY: neither field is used again; the ring goes first so that it no longer
        // refers to the zero buffer.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
        if idle {
            // SAFETY: as above, and no request is left that could write near it.
            unsafe { ManuallyDrop::drop(&mut self.zero) };
        } else {
            // The kernel may still be using the buffers of the requests in flight: never free
            // them (the zero buffer stays mapped too).
            std::mem::forget(std::mem::take(&mut self.channels));
        }
    }
}

fn thread_ctx() -> Result<Rc<RefCell<RingCtx>>, BdevError> {
    CTX.try_with(|slot| {
        if let Some(c) = slot.borrow().as_ref() {
            return Ok(c.clone());
        }
        let local = gyre_reactor::local();
        let sleeps = local
            .as_ref()
            .is_some_and(|l| l.idle_policy() != gyre_reactor::IdlePolicy::Poll);
        let ctx = Rc::new(RefCell::new(RingCtx::new(local.is_some(), sleeps)?));
        if let Some(local) = local {
            if let Some(fd) = ctx.borrow().eventfd.as_ref() {
                local
                    .register_wake_fd(fd.as_raw_fd())
                    .map_err(|e| BdevError::Backend(format!("io_uring eventfd: {e}")))?;
            }
            let p = ctx.clone();
            local.register_end_of_iteration_poller("uring", move || match p.try_borrow_mut() {
                Ok(mut c) => c.run_poller(),
                Err(_) => PollStatus::Idle,
            });
        }
        *slot.borrow_mut() = Some(ctx.clone());
        Ok(ctx)
    })
    .map_err(|_| BdevError::Backend("the thread is exiting".to_string()))?
}

/// A uring bdev's I/O channel on the calling thread.
pub struct UringChannel {
    ctx: Rc<RefCell<RingCtx>>,
    id: u32,
    /// Requests submitted while the thread's ring context was borrowed (a re-entrant call);
    /// they go in at the next poll rather than being lost.
    deferred: VecDeque<IoRequest>,
}

pub(crate) fn open_channel(bdev: Arc<UringBdev>) -> Result<UringChannel, BdevError> {
    let ctx = thread_ctx()?;
    let id = ctx
        .try_borrow_mut()
        .map_err(|_| BdevError::Backend("io_uring context busy".to_string()))?
        .add_channel(bdev);
    Ok(UringChannel {
        ctx,
        id,
        deferred: VecDeque::new(),
    })
}

impl IoChannelBackend for UringChannel {
    fn submit(&mut self, req: IoRequest) {
        match self.ctx.try_borrow_mut() {
            Ok(mut ctx) => ctx.submit(self.id, req),
            Err(_) => self.deferred.push_back(req),
        }
    }

    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        let ready = {
            let Ok(mut ctx) = self.ctx.try_borrow_mut() else {
                return 0;
            };
            while let Some(req) = self.deferred.pop_front() {
                ctx.submit(self.id, req);
            }
            if !ctx.on_reactor {
                ctx.flush_backlog();
                if ctx.needs_enter() {
                    ctx.enter();
                }
            }
            ctx.reap();
            ctx.channel(self.id).map_or(0, |c| c.done.len())
        };
        // Only what was ready before the first handler runs: a handler that resubmits does
        // not keep us here. The context is not borrowed while a handler runs.
        let mut n = 0;
        while n < ready {
            let c = match self.ctx.try_borrow_mut() {
                Ok(mut ctx) => ctx.pop_done(self.id),
                Err(_) => None,
            };
            let Some(c) = c else {
                break;
            };
            done(c);
            n += 1;
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.deferred.len() + self.ctx.try_borrow().map_or(0, |c| c.in_flight(self.id))
    }
}

impl Drop for UringChannel {
    fn drop(&mut self) {
        if let Ok(mut ctx) = self.ctx.try_borrow_mut() {
            ctx.close_channel(self.id);
        }
    }
}
