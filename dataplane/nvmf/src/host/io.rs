//! An I/O queue: NVM commands over pool buffers, polled from one thread (a reactor), that
//! survives connection loss.
//!
//! When the connection fails, every command in flight completes with the transport error (so a
//! mirror can tell a lost path from a failed request), and later polls reconnect with
//! exponential back-off: ICReq and Fabrics Connect again on the same QID, to the controller the
//! [`ControllerLink`] currently names — the same one after a network blip, the new association
//! after the target restarted (the admin queue's owner builds it; the queue notices the new
//! generation). Commands submitted while disconnected complete at the next poll with
//! [`CommandError::NotConnected`]; submission never completes anything inline.
//!
//! A reconnection attempt (TCP connect, ICReq, Fabrics Connect) runs inside `poll` and blocks
//! the polling thread for at most the connect timeout; attempts are spaced by the back-off, so
//! a reactor pays this only while its target is unreachable.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use gyre_nvme::{
    Command, Completion, DsmCommand, DsmRange, IoOpcode, RwCommand, WriteZeroesCommand,
};
use gyre_reactor::clock::{duration_to_ticks, ticks};
use gyre_reactor::SgList;

use super::controller::{fabrics_connect, ControllerLink, NamespaceInfo};
use super::error::{CommandError, HostError, SubmitError, SubmitRejection, TransportError};
use super::queue::{QueueConfig, QueuePair, Transfer};

/// A namespace as the I/O path needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespace {
    pub nsid: u32,
    pub block_size: u32,
}

impl NamespaceInfo {
    pub fn handle(&self) -> Namespace {
        Namespace {
            nsid: self.nsid,
            block_size: self.block_size,
        }
    }
}

/// A finished I/O command.
#[derive(Debug)]
pub struct IoCompletion {
    pub tag: u64,
    /// The caller's buffer, back (None for commands without data).
    pub buf: Option<SgList>,
    pub result: Result<(), CommandError>,
}

/// Where an I/O queue stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    Connected,
    /// The connection was lost; the queue reconnects when polled.
    Reconnecting {
        error: TransportError,
        failed_attempts: u32,
    },
    /// The reconnect policy gave up, or the controller was disconnected.
    Failed,
}

struct Lost {
    error: TransportError,
    failed_attempts: u32,
    next_try: Instant,
}

/// How often in-flight commands are checked against the I/O timeout.
const TIMEOUT_SCAN: Duration = Duration::from_millis(100);

/// An NVMe/TCP I/O queue pair of a controller.
pub struct IoQueue {
    link: ControllerLink,
    qid: u16,
    depth: u16,
    max_transfer: u32,
    qp: Option<QueuePair<SgList>>,
    generation: u64,
    deferred: VecDeque<(u64, Option<SgList>, CommandError)>,
    lost: Option<Lost>,
    gave_up: bool,
    io_timeout_ticks: Option<u64>,
    scan_ticks: u64,
    next_scan: u64,
}

impl std::fmt::Debug for IoQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoQueue")
            .field("qid", &self.qid)
            .field("depth", &self.depth)
            .field("state", &self.state())
            .finish()
    }
}

// A refused submission hands the caller's buffer back by value: boxing it would allocate on
// the I/O path, which is worse than a large error type.
#[allow(clippy::result_large_err)]
impl IoQueue {
    /// Claims a QID on the link's current association and connects it (blocking).
    pub(crate) fn connect(link: ControllerLink) -> Result<IoQueue, HostError> {
        let qid = link.claim_qid()?;
        let (qp, generation) = match open(&link, qid) {
            Ok(x) => x,
            Err(e) => {
                link.release_qid(qid);
                return Err(e);
            }
        };
        let opts = link.options();
        let depth = qp.config().depth;
        let max_transfer = qp.config().max_transfer;
        Ok(IoQueue {
            qid,
            depth,
            max_transfer,
            qp: Some(qp),
            generation,
            deferred: VecDeque::with_capacity(depth as usize),
            lost: None,
            gave_up: false,
            io_timeout_ticks: opts.io_timeout.map(duration_to_ticks),
            scan_ticks: duration_to_ticks(TIMEOUT_SCAN),
            next_scan: 0,
            link,
        })
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Commands that may be in flight at once.
    pub fn depth(&self) -> u16 {
        self.depth
    }

    /// Largest data transfer of one command.
    pub fn max_transfer(&self) -> u32 {
        self.max_transfer
    }

    /// Submitted and not yet handed back by `poll`.
    pub fn outstanding(&self) -> usize {
        self.qp.as_ref().map_or(0, |q| q.outstanding()) + self.deferred.len()
    }

    pub fn state(&self) -> QueueState {
        if self.gave_up || (self.qp.is_none() && self.link.is_closed()) {
            return QueueState::Failed;
        }
        match (&self.qp, &self.lost) {
            (Some(q), _) if q.is_connected() => QueueState::Connected,
            (_, Some(l)) => QueueState::Reconnecting {
                error: l.error,
                failed_attempts: l.failed_attempts,
            },
            (Some(q), None) => QueueState::Reconnecting {
                error: q.failure().unwrap_or(TransportError::LocalClose),
                failed_attempts: 0,
            },
            (None, None) => QueueState::Failed,
        }
    }

    /// The socket while connected (for a reactor's wake set; it changes on reconnect).
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.qp
            .as_ref()
            .filter(|q| q.is_connected())
            .map(|q| q.as_raw_fd())
    }

    /// Drops the connection now: commands in flight complete at the next poll with
    /// [`TransportError::LocalClose`], and the queue reconnects (same QID, current controller)
    /// after the first back-off delay. For a user that suspects the path.
    pub fn reset(&mut self) {
        if let Some(q) = self.qp.as_mut() {
            q.close();
        }
    }

    /// Reads `nlb` blocks from `slba` into `buf`.
    pub fn submit_read(
        &mut self,
        ns: Namespace,
        slba: u64,
        nlb: u32,
        buf: SgList,
        tag: u64,
    ) -> Result<(), SubmitError<SgList>> {
        self.submit_rw(IoOpcode::Read, ns, slba, nlb, buf, tag)
    }

    /// Writes `nlb` blocks at `slba` from `buf` (in the capsule when small enough, else after
    /// R2T; either way straight from the buffer).
    pub fn submit_write(
        &mut self,
        ns: Namespace,
        slba: u64,
        nlb: u32,
        buf: SgList,
        tag: u64,
    ) -> Result<(), SubmitError<SgList>> {
        self.submit_rw(IoOpcode::Write, ns, slba, nlb, buf, tag)
    }

    /// Flush (the namespace's volatile write cache).
    pub fn submit_flush(&mut self, ns: Namespace, tag: u64) -> Result<(), SubmitError<SgList>> {
        let mut cmd = Command::new(IoOpcode::Flush as u8, 0);
        cmd.nsid = ns.nsid;
        self.submit(cmd, Transfer::None, None, tag)
    }

    /// Write Zeroes over `nlb` blocks at `slba`; `deallocate` lets the target unmap them.
    pub fn submit_write_zeroes(
        &mut self,
        ns: Namespace,
        slba: u64,
        nlb: u32,
        deallocate: bool,
        tag: u64,
    ) -> Result<(), SubmitError<SgList>> {
        let cmd = WriteZeroesCommand {
            nsid: ns.nsid,
            slba,
            nlb,
            deac: deallocate,
            ..Default::default()
        }
        .to_command(0);
        match cmd {
            Ok(cmd) => self.submit(cmd, Transfer::None, None, tag),
            Err(_) => Err(SubmitError {
                reason: SubmitRejection::Invalid("block count must be 1..=65536"),
                buf: None,
            }),
        }
    }

    /// Dataset Management with Deallocate over `ranges` of (first LBA, block count). The
    /// range list (16 bytes per range, at most 256) is written into `buf`, which is sent.
    pub fn submit_deallocate(
        &mut self,
        ns: Namespace,
        ranges: &[(u64, u32)],
        mut buf: SgList,
        tag: u64,
    ) -> Result<(), SubmitError<SgList>> {
        if ranges.is_empty() || ranges.len() > 256 {
            return Err(SubmitError {
                reason: SubmitRejection::Invalid("1..=256 ranges"),
                buf: Some(buf),
            });
        }
        let len = ranges.len() * DsmRange::SIZE;
        if buf.len() < len {
            return Err(SubmitError {
                reason: SubmitRejection::BufferTooShort {
                    have: buf.len(),
                    need: len,
                },
                buf: Some(buf),
            });
        }
        for (i, &(slba, nlb)) in ranges.iter().enumerate() {
            let mut raw = [0u8; DsmRange::SIZE];
            DsmRange {
                context_attributes: 0,
                nlb,
                slba,
            }
            .encode(&mut raw);
            let mut at = 0;
            buf.for_each_chunk_mut(i * DsmRange::SIZE, DsmRange::SIZE, |d| {
                d.copy_from_slice(&raw[at..at + d.len()]);
                at += d.len();
            });
        }
        let cmd = DsmCommand {
            nsid: ns.nsid,
            ranges: ranges.len() as u16,
            ad: true,
            ..Default::default()
        }
        .to_command(0, Default::default());
        match cmd {
            Ok(cmd) => self.submit(cmd, Transfer::HostToController(len as u32), Some(buf), tag),
            Err(_) => Err(SubmitError {
                reason: SubmitRejection::Invalid("range count"),
                buf: Some(buf),
            }),
        }
    }

    fn submit_rw(
        &mut self,
        op: IoOpcode,
        ns: Namespace,
        slba: u64,
        nlb: u32,
        buf: SgList,
        tag: u64,
    ) -> Result<(), SubmitError<SgList>> {
        let len = u64::from(nlb) * u64::from(ns.block_size);
        if len > u64::from(self.max_transfer) {
            return Err(SubmitError {
                reason: SubmitRejection::TooLarge {
                    len: len as usize,
                    max: self.max_transfer as usize,
                },
                buf: Some(buf),
            });
        }
        let rw = RwCommand {
            nsid: ns.nsid,
            slba,
            nlb,
            ..Default::default()
        };
        let cmd = match rw.to_command(op, 0, Default::default()) {
            Ok(c) => c,
            Err(_) => {
                return Err(SubmitError {
                    reason: SubmitRejection::Invalid("block count must be 1..=65536"),
                    buf: Some(buf),
                })
            }
        };
        let transfer = if op == IoOpcode::Read {
            Transfer::ControllerToHost(len as u32)
        } else {
            Transfer::HostToController(len as u32)
        };
        self.submit(cmd, transfer, Some(buf), tag)
    }

    /// Queues any I/O command (its CID and data pointer are filled in).
    pub fn submit(
        &mut self,
        cmd: Command,
        transfer: Transfer,
        buf: Option<SgList>,
        tag: u64,
    ) -> Result<(), SubmitError<SgList>> {
        if self.outstanding() >= self.depth as usize {
            return Err(SubmitError {
                reason: SubmitRejection::QueueFull,
                buf,
            });
        }
        match self.qp.as_mut() {
            Some(q) if q.is_connected() => q.submit(cmd, transfer, buf, tag).map(|_| ()),
            _ => {
                self.deferred
                    .push_back((tag, buf, CommandError::NotConnected));
                Ok(())
            }
        }
    }

    /// Sends, receives, and hands finished commands to `done`; reconnects when due. Returns
    /// how many commands finished.
    pub fn poll(&mut self, mut done: impl FnMut(IoCompletion)) -> usize {
        let mut n = 0;
        while let Some((tag, buf, e)) = self.deferred.pop_front() {
            done(IoCompletion {
                tag,
                buf,
                result: Err(e),
            });
            n += 1;
        }
        let Some(q) = self.qp.as_mut() else {
            self.try_reconnect();
            return n;
        };
        n += q.poll(|t, r, b| done(to_io(t, r, b)));
        if let Some(limit) = self.io_timeout_ticks {
            let now = ticks();
            if now >= self.next_scan {
                self.next_scan = now + self.scan_ticks;
                if q.check_timeouts(now, limit) {
                    n += q.poll(|t, r, b| done(to_io(t, r, b)));
                }
            }
        }
        if q.is_connected() && self.link.generation() != self.generation {
            // The association we joined is gone: move to the new one.
            q.close();
            n += q.poll(|t, r, b| done(to_io(t, r, b)));
        }
        if let Some(error) = q.failure() {
            if q.outstanding() == 0 {
                tracing::warn!(qid = self.qid, addr = %self.link.addr(), %error,
                    "nvmf host: I/O queue connection lost");
                self.qp = None;
                self.lost = Some(Lost {
                    error,
                    failed_attempts: 0,
                    next_try: Instant::now() + self.link.options().reconnect.delay(0),
                });
            }
        }
        n
    }

    fn try_reconnect(&mut self) {
        if self.gave_up || self.link.is_closed() {
            return;
        }
        let now = Instant::now();
        let lost = self.lost.get_or_insert(Lost {
            error: TransportError::LocalClose,
            failed_attempts: 0,
            next_try: now,
        });
        if now < lost.next_try {
            return;
        }
        match open(&self.link, self.qid) {
            Ok((qp, generation)) => {
                tracing::info!(qid = self.qid, addr = %self.link.addr(), generation,
                    "nvmf host: I/O queue reconnected");
                self.depth = self.depth.min(qp.config().depth);
                self.max_transfer = qp.config().max_transfer;
                self.qp = Some(qp);
                self.generation = generation;
                self.lost = None;
            }
            Err(e) => {
                lost.failed_attempts += 1;
                let policy = self.link.options().reconnect;
                tracing::debug!(qid = self.qid, error = %e, attempts = lost.failed_attempts,
                    "nvmf host: I/O queue reconnect failed");
                if policy.allows(lost.failed_attempts) {
                    lost.next_try = Instant::now() + policy.delay(lost.failed_attempts);
                } else {
                    self.gave_up = true;
                }
            }
        }
    }
}

impl Drop for IoQueue {
    fn drop(&mut self) {
        if let Some(q) = self.qp.as_mut() {
            q.close();
        }
        self.link.release_qid(self.qid);
    }
}

fn to_io(tag: u64, r: Result<Completion, CommandError>, buf: Option<SgList>) -> IoCompletion {
    let result = match r {
        Ok(c) if c.status.is_success() => Ok(()),
        Ok(c) => Err(CommandError::Status(c.status)),
        Err(e) => Err(e),
    };
    IoCompletion { tag, buf, result }
}

/// Connects queue `qid` to the link's current association: ICReq, then Fabrics Connect with
/// the association's controller ID. Returns the queue and the association's generation.
fn open(link: &ControllerLink, qid: u16) -> Result<(QueuePair<SgList>, u64), HostError> {
    if link.is_closed() {
        return Err(HostError::NotConnected);
    }
    let assoc = link.association().ok_or(HostError::NotConnected)?;
    let opts = link.options();
    let no_flow = opts.disable_sq_flow_control;
    // With SQ flow control the host keeps one entry free; without it every entry may be used.
    let want = u32::from(opts.io_queue_depth) + u32::from(!no_flow);
    let entries = want
        .min(assoc.max_queue_entries)
        .clamp(2, u32::from(u16::MAX)) as u16;
    let depth = if no_flow { entries } else { entries - 1 };
    let cfg = QueueConfig {
        depth,
        max_transfer: assoc.max_transfer,
        in_capsule_max: assoc.in_capsule_data,
        header_digest: opts.header_digest,
        data_digest: opts.data_digest,
        sq_flow_disabled: no_flow,
        exact_c2h: true,
    };
    let mut qp = QueuePair::connect(link.addr(), cfg, opts.connect_timeout)?;
    let cattr = if no_flow { 0x4 } else { 0 };
    fabrics_connect(
        &mut qp,
        opts,
        link.subnqn(),
        qid,
        assoc.cntlid,
        entries,
        cattr,
        0,
    )?;
    Ok((qp, assoc.generation))
}
