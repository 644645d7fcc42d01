//! One NVMe/TCP queue pair (admin or I/O) as a poll-driven state machine.
//!
//! Commands live in slots preallocated at connect time; a command's CID is its slot index, so a
//! response finds its command without a search, and a CID the target made up is refused. Each
//! slot owns the memory its PDUs are sent from (the capsule header, the H2CData headers of its
//! R2Ts, their data digests), so queuing a PDU is pushing iovecs — header from the slot, data
//! straight from the caller's buffer — onto the connection's [`SendQueue`]; nothing is copied
//! and nothing allocated per command.
//!
//! [`QueuePair::poll`] flushes everything queued with one `sendmsg`, then receives: headers land
//! in a staging buffer (small data staged along with them is copied out), a C2HData payload not
//! yet staged is read with `readv` straight into the command's buffer at DATAO (with its padding,
//! data digest and the following headers in the same call). R2Ts are answered with H2CData PDUs
//! of at most MAXH2CDATA bytes each, flushed in the same poll.
//!
//! Every value the target controls is checked before use: CIDs (in range, in flight, of the
//! right kind), DATAO/DATAL against the command's transfer and the order of arrival, R2T ranges
//! and counts, PDU lengths and digests (by the shared codec). A violation sends an H2CTermReq
//! (when the stream allows), closes the connection and fails every command in flight with a
//! transport error; a wrong data digest fails only its command.
//!
//! A slot is released only when its response arrived *and* every byte queued for it left the
//! send queue, so a target answering early can never make us reuse memory still being sent.

use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use gyre_net::{Recv, SendQueue, TcpConnection, NO_COOKIE};
use gyre_nvme::command::PSDT_SGL_MPTR_CONTIGUOUS;
use gyre_nvme::{Command, Completion, SglDescriptor, Status};
use gyre_reactor::clock::ticks;
use smallvec::SmallVec;

use super::buffer::{count_regions, DataBuffer};
use super::error::{CommandError, HostError, SubmitError, SubmitRejection, TransportError};
use crate::tcp::digest::{DataDigest, DIGEST_LEN};
use crate::tcp::pdu::{
    check_data_range, parse_header, C2hData, CapsuleCmd, H2cData, HeaderParse, IcReq, Pdu,
    PduError, PduLayout, PduRules, R2t, Role, TermReq, MAX_TERM_REQ_PLEN, PFV_1_0,
};

/// Bytes reserved per PDU header in a slot: the header, its digest and padding up to PDO
/// (at most 128 with the largest CPDA), then 4 bytes for the data digest.
const AREA: usize = 136;
const HDR_MAX: usize = 128;
const DDGST_AT: usize = 128;
/// Receive staging: room for many small PDUs per `recv`, while a large payload not yet
/// received goes straight to its buffer.
const STAGING: usize = 16 * 1024;
/// Data iovecs offered to one `readv` (buffers with more segments take several calls).
const MAX_RX_DATA_IOV: usize = 16;
/// Receive calls per poll at most (a poll keeps going while data keeps arriving).
const MAX_RECV_PER_POLL: usize = 8;
/// In-capsule data the Admin queue always accepts (NVMe/TCP: 8 KiB).
pub const ADMIN_IN_CAPSULE: u32 = 8192;

/// The data of a command and which way it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    None,
    /// Host to controller: in the capsule if it fits the queue's in-capsule limit, else
    /// after R2T.
    HostToController(u32),
    /// Host to controller, always in the capsule (Fabrics Connect data), up to 8 KiB.
    InCapsule(u32),
    /// Controller to host (C2HData).
    ControllerToHost(u32),
}

impl Transfer {
    pub fn len(&self) -> u32 {
        match *self {
            Transfer::None => 0,
            Transfer::HostToController(n)
            | Transfer::InCapsule(n)
            | Transfer::ControllerToHost(n) => n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_to_host(self) -> bool {
        matches!(self, Transfer::ControllerToHost(_))
    }
}

/// How a queue pair is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Commands in flight at most (slots).
    pub depth: u16,
    /// Largest data transfer of one command.
    pub max_transfer: u32,
    /// Most bytes of in-capsule data (0: always use R2T).
    pub in_capsule_max: u32,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Whether the Connect of this queue disables SQ flow control, which is what allows the
    /// controller to use C2HData SUCCESS.
    pub sq_flow_disabled: bool,
    /// Whether a command must receive all the data it asked for (I/O reads) or may be given
    /// less (admin commands: a log page shorter than the request ends early, and a success
    /// response then completes it).
    pub exact_c2h: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    InFlight,
    /// The outcome is known but bytes queued for the command have not all left.
    AwaitTx,
    /// In the completed queue, to be handed out by `poll`.
    Done,
}

#[derive(Debug, Clone, Copy)]
struct R2tState {
    ttag: u16,
    next: u32,
    end: u32,
}

struct Slot<B> {
    state: SlotState,
    tag: u64,
    transfer: Transfer,
    in_capsule: bool,
    buf: Option<B>,
    /// C2H bytes landed, in order.
    received: u32,
    /// Bytes asked for by R2Ts so far.
    requested: u32,
    r2t: Option<R2tState>,
    h2c_queued: bool,
    /// H2CData PDUs built for this command (each has its own header area).
    h2c_pdus: u16,
    /// Groups of send-queue entries not yet sent.
    tx_pending: u16,
    digest_error: bool,
    submitted_at: u64,
    result: Option<Result<Completion, CommandError>>,
    /// Header areas: [0] the capsule, [1..] H2CData PDUs.
    area: Box<[u8]>,
}

#[derive(Debug, Clone, Copy)]
struct DataRx {
    slot: u16,
    pad_left: usize,
    offset: usize,
    data_left: usize,
    digest: Option<DataDigest>,
    ddgst_have: usize,
    success: bool,
}

#[derive(Debug, Clone, Copy)]
enum Rx {
    Header,
    Data(DataRx),
}

/// A fatal problem on the connection: what to tell the target (if anything) and the error.
struct Fault {
    error: TransportError,
    termreq: Option<(PduError, usize, usize)>,
}

impl From<TransportError> for Fault {
    fn from(error: TransportError) -> Self {
        Fault {
            error,
            termreq: None,
        }
    }
}

/// An NVMe/TCP connection carrying one submission/completion queue pair.
pub struct QueuePair<B: DataBuffer> {
    conn: TcpConnection,
    peer: SocketAddr,
    rules: PduRules,
    cfg: QueueConfig,
    sendq: SendQueue,
    slots: Box<[Slot<B>]>,
    free: Vec<u16>,
    h2c_fifo: VecDeque<u16>,
    completed: VecDeque<u16>,
    rx: Rx,
    stage: Box<[u8]>,
    stage_start: usize,
    stage_end: usize,
    rx_pad: [u8; 256],
    rx_ddgst: [u8; DIGEST_LEN],
    h2c_areas: usize,
    dead: Option<TransportError>,
    /// Data of the last Fabrics Connect sent (kept while it may be in the send queue).
    connect_data: Option<Box<[u8]>>,
}

// SAFETY: the only non-Send parts are the raw pointers in the send queue, and they point at
// heap memory this value owns (slot header areas, the data buffers held by slots), which moves
// with it. Whether the whole is Send is then decided by the buffer type.
unsafe impl<B: DataBuffer + Send> Send for QueuePair<B> {}

impl<B: DataBuffer> std::fmt::Debug for QueuePair<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("peer", &self.peer)
            .field("depth", &self.cfg.depth)
            .field("outstanding", &self.outstanding())
            .field("dead", &self.dead)
            .finish()
    }
}

fn pdu_fault(e: PduError, hdr_at: usize, hdr_len: usize) -> Fault {
    Fault {
        error: TransportError::Pdu(e),
        termreq: Some((e, hdr_at, hdr_len)),
    }
}

// Refused submissions hand the buffer back by value (no allocation on the I/O path).
#[allow(clippy::result_large_err)]
impl<B: DataBuffer> QueuePair<B> {
    /// Connects to `addr` and exchanges ICReq/ICResp (blocking, bounded by `timeout`). The
    /// queue is then ready for its Fabrics Connect command.
    pub fn connect(
        addr: SocketAddr,
        cfg: QueueConfig,
        timeout: Duration,
    ) -> Result<Self, HostError> {
        if cfg.depth == 0 {
            return Err(HostError::InvalidArgument("queue depth 0".into()));
        }
        let deadline = Instant::now() + timeout;
        let conn = TcpConnection::connect(addr, timeout)
            .map_err(|source| HostError::Connect { addr, source })?;
        let req = IcReq {
            pfv: PFV_1_0,
            hpda: 0,
            header_digest: cfg.header_digest,
            data_digest: cfg.data_digest,
            maxr2t: 0,
        };
        let mut out = [0u8; 128];
        let n = req
            .encode(&mut out)
            .map_err(|e| HostError::InvalidArgument(e.to_string()))?;
        send_all(&conn, &out[..n], deadline)?;

        let mut rules = PduRules::host(cfg.max_transfer);
        let mut buf = [0u8; MAX_TERM_REQ_PLEN as usize];
        let mut have = 0;
        let resp = loop {
            match parse_header(&buf[..have], &rules) {
                Ok(HeaderParse::NeedMore(n)) => {
                    let n = n.min(buf.len());
                    have += recv_some(&conn, &mut buf[have..n], deadline)?;
                }
                Ok(HeaderParse::Complete {
                    pdu: Pdu::IcResp(r),
                    ..
                }) => break r,
                Ok(HeaderParse::Complete {
                    pdu: Pdu::C2hTermReq(t),
                    ..
                }) => {
                    return Err(TransportError::TerminatedByTarget {
                        fes: t.fes,
                        fei: t.fei,
                    }
                    .into())
                }
                Ok(HeaderParse::Complete { .. }) => {
                    return Err(TransportError::Pdu(PduError::sequence("expected ICResp")).into())
                }
                Err(e) => return Err(TransportError::Pdu(e).into()),
            }
        };
        rules
            .accept_icresp(&req, &resp)
            .map_err(TransportError::Pdu)?;
        Ok(Self::with_connection(conn, addr, rules, cfg))
    }

    fn with_connection(
        conn: TcpConnection,
        peer: SocketAddr,
        rules: PduRules,
        cfg: QueueConfig,
    ) -> Self {
        let depth = cfg.depth as usize;
        // H2CData PDUs one command may need: its data cut at MAXH2CDATA, plus slack for R2T
        // boundaries that do not fall on those cuts.
        let h2c_areas = (cfg.max_transfer as usize).div_ceil(rules.maxh2cdata.max(1) as usize) + 8;
        let slots: Box<[Slot<B>]> = (0..depth)
            .map(|_| Slot {
                state: SlotState::Free,
                tag: 0,
                transfer: Transfer::None,
                in_capsule: false,
                buf: None,
                received: 0,
                requested: 0,
                r2t: None,
                h2c_queued: false,
                h2c_pdus: 0,
                tx_pending: 0,
                digest_error: false,
                submitted_at: 0,
                result: None,
                area: vec![0u8; AREA * (1 + h2c_areas)].into_boxed_slice(),
            })
            .collect();
        QueuePair {
            conn,
            peer,
            rules,
            cfg,
            // Room for every slot's capsule with a fragmented buffer, and then some for H2C.
            sendq: SendQueue::with_capacity(depth * 24 + 1024),
            slots,
            free: (0..depth as u16).rev().collect(),
            h2c_fifo: VecDeque::with_capacity(depth),
            completed: VecDeque::with_capacity(depth),
            rx: Rx::Header,
            stage: vec![0u8; STAGING].into_boxed_slice(),
            stage_start: 0,
            stage_end: 0,
            rx_pad: [0u8; 256],
            rx_ddgst: [0u8; DIGEST_LEN],
            h2c_areas,
            dead: None,
            connect_data: None,
        }
    }

    /// The negotiated PDU rules (digests, alignment, MAXH2CDATA).
    pub fn rules(&self) -> &PduRules {
        &self.rules
    }

    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Commands submitted and not yet handed back by `poll`.
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// Why the connection is down, once it is.
    pub fn failure(&self) -> Option<TransportError> {
        self.dead
    }

    pub fn is_connected(&self) -> bool {
        self.dead.is_none()
    }

    /// Sets the in-capsule limit once Identify Controller told it (I/O queues are connected
    /// knowing it already; this is for queues connected before).
    pub fn set_in_capsule_max(&mut self, n: u32) {
        self.cfg.in_capsule_max = n.min(self.cfg.max_transfer);
    }

    /// Queues a command. Its CID and data pointer are set here; `tag` comes back with the
    /// completion. The command goes out on the next `poll`, and completes only through `poll`
    /// (on a dead connection: with the transport error, at the next poll).
    pub fn submit(
        &mut self,
        mut cmd: Command,
        transfer: Transfer,
        mut buf: Option<B>,
        tag: u64,
    ) -> Result<u16, SubmitError<B>> {
        let len = transfer.len() as usize;
        let reject = |reason, buf| Err(SubmitError { reason, buf });
        if len > 0 {
            let Some(b) = buf.as_ref() else {
                return reject(
                    SubmitRejection::Invalid("data transfer without a buffer"),
                    buf,
                );
            };
            let max = match transfer {
                Transfer::InCapsule(_) => ADMIN_IN_CAPSULE as usize,
                _ => self.cfg.max_transfer as usize,
            };
            if len > max {
                return reject(SubmitRejection::TooLarge { len, max }, buf);
            }
            if b.data_len() < len {
                return reject(
                    SubmitRejection::BufferTooShort {
                        have: b.data_len(),
                        need: len,
                    },
                    buf,
                );
            }
        }
        let in_capsule = match transfer {
            Transfer::InCapsule(n) => n > 0,
            Transfer::HostToController(n) => n > 0 && n <= self.cfg.in_capsule_max,
            _ => false,
        };
        let regions = match (&mut buf, in_capsule) {
            (Some(b), true) => count_regions(b, 0, len),
            _ => 0,
        };
        // Header, data regions, data digest, and the empty entry that carries the cookie.
        if self.dead.is_none() && self.sendq.room() < regions + 3 {
            return reject(SubmitRejection::QueueFull, buf);
        }
        let Some(slot) = self.free.pop() else {
            return reject(SubmitRejection::QueueFull, buf);
        };
        cmd.cid = slot;
        cmd.psdt = PSDT_SGL_MPTR_CONTIGUOUS;
        cmd.dptr = match transfer {
            Transfer::None => SglDescriptor::default(),
            _ if in_capsule => SglDescriptor::data_block_offset(0, len as u32),
            _ => SglDescriptor::transport_data_block(len as u32),
        };
        let rules = self.rules;
        let s = &mut self.slots[slot as usize];
        s.state = SlotState::InFlight;
        s.tag = tag;
        s.transfer = transfer;
        s.in_capsule = in_capsule;
        s.buf = buf;
        s.received = 0;
        s.requested = 0;
        s.r2t = None;
        s.h2c_pdus = 0;
        s.tx_pending = 0;
        s.digest_error = false;
        s.result = None;
        s.submitted_at = ticks();
        if let Some(e) = self.dead {
            self.finish(slot, Err(CommandError::Transport(e)));
            return Ok(slot);
        }
        let icd = if in_capsule { len as u32 } else { 0 };
        let hdr = match (CapsuleCmd { sqe: cmd }).encode(icd, &rules, &mut s.area[..HDR_MAX]) {
            Ok(h) => h,
            Err(_) => {
                // Only an impossible length gets here; give the slot and buffer back.
                s.state = SlotState::Free;
                let buf = s.buf.take();
                self.free.push(slot);
                return reject(SubmitRejection::Invalid("capsule does not encode"), buf);
            }
        };
        let sendq = &mut self.sendq;
        // SAFETY (all pushes below): header areas belong to the slot and data regions to the
        // buffer it holds; neither is released or rewritten before the cookie pushed last
        // comes back (or the queue is cleared).
        unsafe { sendq.push(s.area.as_ptr(), hdr.len, NO_COOKIE) };
        if in_capsule {
            let mut digest = DataDigest::new();
            if let Some(b) = s.buf.as_mut() {
                b.for_each_region(0, len, &mut |p, n| {
                    // SAFETY: the region is valid for n bytes (DataBuffer contract).
                    let chunk = unsafe { std::slice::from_raw_parts(p, n) };
                    if hdr.data_digest {
                        digest.update(chunk);
                    }
                    unsafe { sendq.push(p, n, NO_COOKIE) };
                });
            }
            if hdr.data_digest {
                s.area[DDGST_AT..DDGST_AT + DIGEST_LEN].copy_from_slice(&digest.to_wire());
                unsafe { sendq.push(s.area[DDGST_AT..].as_ptr(), DIGEST_LEN, NO_COOKIE) };
            }
        }
        unsafe { sendq.push(s.area.as_ptr(), 0, u32::from(slot)) };
        s.tx_pending = 1;
        Ok(slot)
    }

    /// Sends what is queued, receives what arrived, and hands every finished command to `done`
    /// as (tag, outcome, buffer). The completion's status is the controller's; a transport
    /// failure is an error. Returns how many commands finished.
    pub fn poll(
        &mut self,
        mut done: impl FnMut(u64, Result<Completion, CommandError>, Option<B>),
    ) -> usize {
        if self.dead.is_none() {
            self.generate_h2c();
            self.flush();
        }
        if self.dead.is_none() {
            if let Err(f) = self.receive() {
                self.fault(f);
            }
        }
        if self.dead.is_none() && !self.h2c_fifo.is_empty() {
            // Data asked for by R2Ts that arrived just now leaves in this poll.
            self.generate_h2c();
            self.flush();
        }
        let mut n = 0;
        while let Some(slot) = self.completed.pop_front() {
            let s = &mut self.slots[slot as usize];
            let result = s
                .result
                .take()
                .unwrap_or(Err(CommandError::Transport(TransportError::LocalClose)));
            let buf = s.buf.take();
            let tag = s.tag;
            s.state = SlotState::Free;
            self.free.push(slot);
            n += 1;
            done(tag, result, buf);
        }
        n
    }

    /// Fails the connection with [`TransportError::Timeout`] if a command has been in flight
    /// longer than `limit_ticks` (see [`gyre_reactor::clock`]). Scans the slots: call it at a
    /// coarse interval, not every poll.
    pub fn check_timeouts(&mut self, now_ticks: u64, limit_ticks: u64) -> bool {
        if self.dead.is_some() {
            return false;
        }
        let late = self.slots.iter().position(|s| {
            matches!(s.state, SlotState::InFlight | SlotState::AwaitTx)
                && now_ticks.saturating_sub(s.submitted_at) > limit_ticks
        });
        if let Some(cid) = late {
            let s = &self.slots[cid];
            tracing::warn!(
                peer = %self.peer,
                cid,
                state = ?s.state,
                transfer = ?s.transfer,
                received = s.received,
                requested = s.requested,
                tx_pending = s.tx_pending,
                outstanding = self.outstanding(),
                "nvmf host: command timed out; dropping the connection"
            );
            self.fail(TransportError::Timeout);
        }
        late.is_some()
    }

    /// Closes the connection; commands in flight complete (at the next poll) with
    /// [`TransportError::LocalClose`].
    pub fn close(&mut self) {
        self.fail(TransportError::LocalClose);
    }

    /// Submits `cmd` and polls until it completes (control path; bounded by `timeout`).
    /// Completions of other commands go to `other`.
    pub fn run_blocking(
        &mut self,
        cmd: Command,
        transfer: Transfer,
        buf: Option<B>,
        tag: u64,
        timeout: Duration,
        other: impl FnMut(u64, Result<Completion, CommandError>, Option<B>),
    ) -> Result<(Result<Completion, CommandError>, Option<B>), HostError> {
        self.submit(cmd, transfer, buf, tag)
            .map_err(|e| HostError::InvalidArgument(e.reason.to_string()))?;
        self.wait_for(tag, timeout, other)
    }

    /// Polls until the command submitted with `tag` completes (control path). On timeout the
    /// connection is dropped: nothing else could finish the command cleanly.
    pub fn wait_for(
        &mut self,
        tag: u64,
        timeout: Duration,
        mut other: impl FnMut(u64, Result<Completion, CommandError>, Option<B>),
    ) -> Result<(Result<Completion, CommandError>, Option<B>), HostError> {
        let deadline = Instant::now() + timeout;
        let mut mine = None;
        loop {
            let n = self.poll(|t, r, b| {
                if t == tag && mine.is_none() {
                    mine = Some((r, b));
                } else {
                    other(t, r, b);
                }
            });
            if let Some(m) = mine.take() {
                return Ok(m);
            }
            if Instant::now() >= deadline {
                self.fail(TransportError::Timeout);
                let _ = self.poll(|t, r, b| {
                    if t != tag {
                        other(t, r, b)
                    }
                });
                return Err(HostError::Timeout("command"));
            }
            if n == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Queues a Fabrics Connect with its 1024-byte data in the capsule. The data is kept by the
    /// queue (it needs no buffer of type `B`); the command completes through `poll`.
    pub fn submit_connect(
        &mut self,
        cmd: Command,
        data: &[u8],
        tag: u64,
    ) -> Result<u16, HostError> {
        if data.len() > ADMIN_IN_CAPSULE as usize {
            return Err(HostError::InvalidArgument("Connect data too long".into()));
        }
        if self.sendq.room() < 4 {
            return Err(HostError::InvalidArgument("send queue full".into()));
        }
        if let Some(e) = self.dead {
            return Err(e.into());
        }
        let Some(slot) = self.free.pop() else {
            return Err(HostError::InvalidArgument("no free command slot".into()));
        };
        let mut cmd = cmd;
        cmd.cid = slot;
        cmd.psdt = PSDT_SGL_MPTR_CONTIGUOUS;
        cmd.dptr = SglDescriptor::data_block_offset(0, data.len() as u32);
        let rules = self.rules;
        // The data lives in the queue from now on (control path: one allocation per Connect).
        let held: &[u8] = self.connect_data.insert(data.to_vec().into_boxed_slice());
        let s = &mut self.slots[slot as usize];
        *s = Slot {
            state: SlotState::InFlight,
            tag,
            transfer: Transfer::InCapsule(data.len() as u32),
            in_capsule: true,
            buf: None,
            received: 0,
            requested: 0,
            r2t: None,
            h2c_queued: false,
            h2c_pdus: 0,
            tx_pending: 1,
            digest_error: false,
            submitted_at: ticks(),
            result: None,
            area: std::mem::take(&mut s.area),
        };
        let hdr = (CapsuleCmd { sqe: cmd })
            .encode(held.len() as u32, &rules, &mut s.area[..HDR_MAX])
            .map_err(|e| HostError::InvalidArgument(e.to_string()))?;
        if hdr.data_digest {
            let mut d = DataDigest::new();
            d.update(held);
            s.area[DDGST_AT..DDGST_AT + DIGEST_LEN].copy_from_slice(&d.to_wire());
        }
        // SAFETY: the header area belongs to the slot and the data to `connect_data`, which is
        // only replaced by the next Connect (after this one completed).
        unsafe {
            self.sendq.push(s.area.as_ptr(), hdr.len, NO_COOKIE);
            self.sendq.push(held.as_ptr(), held.len(), NO_COOKIE);
            if hdr.data_digest {
                self.sendq
                    .push(s.area[DDGST_AT..].as_ptr(), DIGEST_LEN, NO_COOKIE);
            }
            self.sendq.push(s.area.as_ptr(), 0, u32::from(slot));
        }
        Ok(slot)
    }

    // --- internals --------------------------------------------------------------------------

    fn finish(&mut self, slot: u16, result: Result<Completion, CommandError>) {
        let s = &mut self.slots[slot as usize];
        s.result = Some(result);
        s.r2t = None;
        if s.tx_pending == 0 {
            s.state = SlotState::Done;
            self.completed.push_back(slot);
        } else {
            s.state = SlotState::AwaitTx;
        }
    }

    fn sent(slots: &mut [Slot<B>], completed: &mut VecDeque<u16>, cookie: u32) {
        let Some(s) = slots.get_mut(cookie as usize) else {
            return;
        };
        s.tx_pending = s.tx_pending.saturating_sub(1);
        if s.tx_pending == 0 && s.state == SlotState::AwaitTx {
            s.state = SlotState::Done;
            completed.push_back(cookie as u16);
        }
    }

    fn flush(&mut self) {
        let Self {
            sendq,
            conn,
            slots,
            completed,
            ..
        } = self;
        if let Err(e) = sendq.flush(conn, |c| Self::sent(slots, completed, c)) {
            self.fail(e.into());
        }
    }

    fn fault(&mut self, f: Fault) {
        if let Some((e, at, len)) = f.termreq {
            // Best effort, and only on a clean PDU boundary of our output.
            if self.sendq.is_empty() {
                if let Some(t) = TermReq::for_error(&e) {
                    let end = (at + len).min(self.stage.len());
                    let offending = self.stage.get(at..end).unwrap_or(&[]);
                    let mut out = [0u8; MAX_TERM_REQ_PLEN as usize];
                    if let Ok(n) = t.encode(Role::Host, offending, &mut out) {
                        let _ = self.conn.send(&out[..n]);
                    }
                }
            }
        }
        self.fail(f.error);
    }

    fn fail(&mut self, e: TransportError) {
        if self.dead.is_some() {
            return;
        }
        self.dead = Some(e);
        self.conn.shutdown();
        let Self {
            sendq,
            slots,
            completed,
            ..
        } = self;
        sendq.clear(|c| Self::sent(slots, completed, c));
        for i in 0..self.slots.len() {
            if self.slots[i].state == SlotState::InFlight {
                self.finish(i as u16, Err(CommandError::Transport(e)));
            }
        }
        self.rx = Rx::Header;
        self.stage_start = 0;
        self.stage_end = 0;
        self.h2c_fifo.clear();
        for s in self.slots.iter_mut() {
            s.h2c_queued = false;
        }
    }

    /// Builds H2CData PDUs for pending R2Ts while the send queue has room.
    fn generate_h2c(&mut self) {
        let rules = self.rules;
        let maxh2c = rules.maxh2cdata.max(4);
        while let Some(&slot) = self.h2c_fifo.front() {
            let s = &mut self.slots[slot as usize];
            let active = s.state == SlotState::InFlight;
            let Some(mut r) = s.r2t.filter(|_| active) else {
                s.h2c_queued = false;
                self.h2c_fifo.pop_front();
                continue;
            };
            let Some(buf) = s.buf.as_mut() else {
                s.r2t = None;
                continue;
            };
            while r.next < r.end {
                let len = (r.end - r.next).min(maxh2c);
                let regions = count_regions(buf, r.next as usize, len as usize);
                if self.sendq.room() < regions + 3 {
                    s.r2t = Some(r);
                    return;
                }
                let k = 1 + s.h2c_pdus as usize;
                if k > self.h2c_areas {
                    self.fail(TransportError::Pdu(PduError::R2tLimitExceeded));
                    return;
                }
                let area = &mut s.area[k * AREA..(k + 1) * AREA];
                let h = H2cData {
                    cccid: slot,
                    ttag: r.ttag,
                    datao: r.next,
                    datal: len,
                    last: r.next + len == r.end,
                };
                let Ok(hdr) = h.encode(&rules, &mut area[..HDR_MAX]) else {
                    self.fail(TransportError::Protocol("H2CData does not encode"));
                    return;
                };
                let sendq = &mut self.sendq;
                let mut digest = DataDigest::new();
                // SAFETY: as in submit: slot areas and buffer regions outlive the cookie.
                unsafe { sendq.push(area.as_ptr(), hdr.len, NO_COOKIE) };
                buf.for_each_region(r.next as usize, len as usize, &mut |p, n| {
                    if hdr.data_digest {
                        // SAFETY: the region is valid for n bytes.
                        digest.update(unsafe { std::slice::from_raw_parts(p, n) });
                    }
                    unsafe { sendq.push(p, n, NO_COOKIE) };
                });
                if hdr.data_digest {
                    area[DDGST_AT..DDGST_AT + DIGEST_LEN].copy_from_slice(&digest.to_wire());
                    unsafe { sendq.push(area[DDGST_AT..].as_ptr(), DIGEST_LEN, NO_COOKIE) };
                }
                unsafe { sendq.push(area.as_ptr(), 0, u32::from(slot)) };
                s.tx_pending += 1;
                s.h2c_pdus += 1;
                r.next += len;
            }
            s.r2t = None;
            s.h2c_queued = false;
            self.h2c_fifo.pop_front();
        }
    }

    fn receive(&mut self) -> Result<(), Fault> {
        for _ in 0..MAX_RECV_PER_POLL {
            self.process_staged()?;
            let got = match self.rx {
                Rx::Header => {
                    if self.stage_start > 0 {
                        self.stage.copy_within(self.stage_start..self.stage_end, 0);
                        self.stage_end -= self.stage_start;
                        self.stage_start = 0;
                    }
                    let end = self.stage_end;
                    match self
                        .conn
                        .recv(&mut self.stage[end..])
                        .map_err(TransportError::from)?
                    {
                        Recv::Data(n) => {
                            self.stage_end += n;
                            true
                        }
                        Recv::WouldBlock => false,
                        Recv::Closed => return Err(TransportError::Closed.into()),
                    }
                }
                Rx::Data(d) => self.receive_direct(d)?,
            };
            if !got {
                return Ok(());
            }
        }
        self.process_staged()
    }

    /// One `readv` for the rest of a C2HData PDU: its padding, the data straight into the
    /// command's buffer, the data digest, and then whatever follows into staging.
    fn receive_direct(&mut self, mut d: DataRx) -> Result<bool, Fault> {
        // Staging is empty here (process_staged consumed it before leaving a data state).
        self.stage_start = 0;
        self.stage_end = 0;
        let Self {
            conn,
            slots,
            stage,
            rx_pad,
            rx_ddgst,
            ..
        } = self;
        let Some(buf) = slots.get_mut(d.slot as usize).and_then(|s| s.buf.as_mut()) else {
            return Err(TransportError::Protocol("data for a command without a buffer").into());
        };
        let mut iov: SmallVec<[IoSliceMut<'_>; MAX_RX_DATA_IOV + 4]> = SmallVec::new();
        if d.pad_left > 0 {
            let Some(pad) = rx_pad.get_mut(..d.pad_left) else {
                return Err(TransportError::Protocol("padding longer than PDO allows").into());
            };
            iov.push(IoSliceMut::new(pad));
        }
        let mut offered = 0usize;
        let mut stopped = false;
        buf.for_each_region(d.offset, d.data_left, &mut |p, n| {
            if stopped || iov.len() > MAX_RX_DATA_IOV {
                stopped = true;
                return;
            }
            // SAFETY: the region is valid and exclusively ours for n bytes; the slice lives
            // only for this readv.
            iov.push(IoSliceMut::new(unsafe {
                std::slice::from_raw_parts_mut(p, n)
            }));
            offered += n;
        });
        let all_data = offered == d.data_left;
        let want_digest = d.digest.is_some();
        if all_data {
            if want_digest && d.ddgst_have < DIGEST_LEN {
                iov.push(IoSliceMut::new(&mut rx_ddgst[d.ddgst_have..]));
            }
            iov.push(IoSliceMut::new(&mut stage[..]));
        }
        let n = match conn.recv_vectored(&mut iov).map_err(TransportError::from)? {
            Recv::Data(n) => n,
            Recv::WouldBlock => return Ok(false),
            Recv::Closed => return Err(TransportError::Closed.into()),
        };
        drop(iov);
        let mut left = n;
        let p = left.min(d.pad_left);
        d.pad_left -= p;
        left -= p;
        let k = left.min(offered);
        if k > 0 {
            if let Some(dg) = d.digest.as_mut() {
                buf.for_each_region(d.offset, k, &mut |p, n| {
                    // SAFETY: these bytes were just received into the region.
                    dg.update(unsafe { std::slice::from_raw_parts(p, n) });
                });
            }
            d.offset += k;
            d.data_left -= k;
            left -= k;
        }
        if d.data_left == 0 && want_digest {
            let g = left.min(DIGEST_LEN - d.ddgst_have);
            d.ddgst_have += g;
            left -= g;
        }
        self.stage_end = left;
        self.rx = Rx::Data(d);
        self.maybe_finish_data(d);
        Ok(true)
    }

    /// Works through staged bytes: headers, then data of the PDU being received.
    fn process_staged(&mut self) -> Result<(), Fault> {
        loop {
            match self.rx {
                Rx::Header => {
                    let at = self.stage_start;
                    let staged = &self.stage[at..self.stage_end];
                    if staged.is_empty() {
                        return Ok(());
                    }
                    match parse_header(staged, &self.rules) {
                        Ok(HeaderParse::NeedMore(_)) => return Ok(()),
                        Ok(HeaderParse::Complete { layout, pdu }) => {
                            self.stage_start += layout.header_len;
                            self.on_pdu(&layout, pdu)
                                .map_err(|e| pdu_fault(e, at, layout.header_len))?;
                        }
                        Err(PduError::Incomplete { .. }) => return Ok(()),
                        Err(e) => {
                            let len = staged.len().min(128);
                            return Err(pdu_fault(e, at, len));
                        }
                    }
                    if let Some(e) = self.dead {
                        return Err(e.into());
                    }
                }
                Rx::Data(mut d) => {
                    let avail = self.stage_end - self.stage_start;
                    if avail == 0 {
                        return Ok(());
                    }
                    let mut at = self.stage_start;
                    let p = avail.min(d.pad_left);
                    d.pad_left -= p;
                    at += p;
                    let k = (self.stage_end - at).min(d.data_left);
                    if k > 0 {
                        let src = &self.stage[at..at + k];
                        if let Some(dg) = d.digest.as_mut() {
                            dg.update(src);
                        }
                        let Some(buf) = self
                            .slots
                            .get_mut(d.slot as usize)
                            .and_then(|s| s.buf.as_mut())
                        else {
                            return Err(TransportError::Protocol(
                                "data for a command without a buffer",
                            )
                            .into());
                        };
                        let mut from = 0;
                        buf.for_each_region(d.offset, k, &mut |p, n| {
                            // SAFETY: the region is valid for n bytes; src does not overlap
                            // it (staging is ours).
                            unsafe { std::ptr::copy_nonoverlapping(src[from..].as_ptr(), p, n) };
                            from += n;
                        });
                        d.offset += k;
                        d.data_left -= k;
                        at += k;
                    }
                    if d.data_left == 0 && d.digest.is_some() {
                        let g = (self.stage_end - at).min(DIGEST_LEN - d.ddgst_have);
                        self.rx_ddgst[d.ddgst_have..d.ddgst_have + g]
                            .copy_from_slice(&self.stage[at..at + g]);
                        d.ddgst_have += g;
                        at += g;
                    }
                    self.stage_start = at;
                    self.rx = Rx::Data(d);
                    if !self.maybe_finish_data(d) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Ends the data part of a C2HData PDU once padding, data and digest are all in.
    fn maybe_finish_data(&mut self, d: DataRx) -> bool {
        let digest_done = d.digest.is_none() || d.ddgst_have == DIGEST_LEN;
        if d.pad_left > 0 || d.data_left > 0 || !digest_done {
            return false;
        }
        self.rx = Rx::Header;
        let digest_ok = d.digest.is_none_or(|dg| dg.matches(self.rx_ddgst));
        let Some(s) = self.slots.get_mut(d.slot as usize) else {
            return true;
        };
        s.received = d.offset as u32;
        if !digest_ok {
            s.digest_error = true;
        }
        if d.success {
            let r = if s.digest_error {
                Err(CommandError::DataDigest)
            } else {
                // C2HData SUCCESS stands for a response with a success status and nothing else.
                Ok(Completion::new(d.slot, Status::SUCCESS))
            };
            self.finish(d.slot, r);
        }
        true
    }

    fn on_pdu(&mut self, layout: &PduLayout, pdu: Pdu) -> Result<(), PduError> {
        match pdu {
            Pdu::C2hTermReq(t) => {
                self.fail(TransportError::TerminatedByTarget {
                    fes: t.fes,
                    fei: t.fei,
                });
                Ok(())
            }
            Pdu::CapsuleResp(r) => self.on_response(r.cqe),
            Pdu::C2hData(d) => self.on_c2h_data(layout, d),
            Pdu::R2t(r) => self.on_r2t(r),
            _ => Err(PduError::sequence("unexpected PDU type")),
        }
    }

    fn in_flight(
        &mut self,
        cid: u16,
        offset: u32,
        what: &'static str,
    ) -> Result<&mut Slot<B>, PduError> {
        match self.slots.get_mut(cid as usize) {
            Some(s) if s.state == SlotState::InFlight => Ok(s),
            _ => Err(PduError::invalid_field(offset, what)),
        }
    }

    fn on_response(&mut self, cqe: Completion) -> Result<(), PduError> {
        let exact = self.cfg.exact_c2h;
        // CID sits at byte 12 of the CQE, byte 20 of the PDU.
        let s = self.in_flight(cqe.cid, 20, "response for a command not in flight")?;
        let result = if s.digest_error {
            Err(CommandError::DataDigest)
        } else if exact
            && cqe.status.is_success()
            && s.transfer.is_to_host()
            && s.received != s.transfer.len()
        {
            Err(CommandError::Transport(TransportError::Protocol(
                "success reported before all data arrived",
            )))
        } else {
            Ok(cqe)
        };
        self.finish(cqe.cid, result);
        Ok(())
    }

    fn on_c2h_data(&mut self, layout: &PduLayout, d: C2hData) -> Result<(), PduError> {
        let sq_flow_disabled = self.cfg.sq_flow_disabled;
        let exact = self.cfg.exact_c2h;
        let s = self.in_flight(d.cccid, 8, "C2HData for a command not in flight")?;
        let Transfer::ControllerToHost(total) = s.transfer else {
            return Err(PduError::invalid_field(
                8,
                "C2HData for a command that reads no data",
            ));
        };
        if d.datao != s.received {
            return Err(PduError::out_of_range("C2HData out of order"));
        }
        check_data_range(d.datao, d.datal, u64::from(total))?;
        if exact && d.last && d.datao + d.datal != total {
            return Err(PduError::out_of_range(
                "LAST_PDU before the end of the data",
            ));
        }
        if d.success && !sq_flow_disabled {
            return Err(PduError::invalid_field(
                1,
                "SUCCESS while SQ flow control is on",
            ));
        }
        self.rx = Rx::Data(DataRx {
            slot: d.cccid,
            pad_left: layout.pad_len,
            offset: d.datao as usize,
            data_left: d.datal as usize,
            digest: layout.data_digest.then(DataDigest::new),
            ddgst_have: 0,
            success: d.success,
        });
        Ok(())
    }

    fn on_r2t(&mut self, r: R2t) -> Result<(), PduError> {
        let s = self.in_flight(r.cccid, 8, "R2T for a command not in flight")?;
        let Transfer::HostToController(total) = s.transfer else {
            return Err(PduError::invalid_field(
                8,
                "R2T for a command without data to send",
            ));
        };
        if s.in_capsule {
            return Err(PduError::invalid_field(
                8,
                "R2T for a command whose data was in the capsule",
            ));
        }
        if s.r2t.is_some() {
            return Err(PduError::R2tLimitExceeded);
        }
        check_data_range(r.r2to, r.r2tl, u64::from(total))?;
        let requested = s.requested.saturating_add(r.r2tl);
        if requested > total {
            return Err(PduError::out_of_range(
                "R2Ts ask for more than the command's data",
            ));
        }
        s.requested = requested;
        s.r2t = Some(R2tState {
            ttag: r.ttag,
            next: r.r2to,
            end: r.r2to + r.r2tl,
        });
        if !s.h2c_queued {
            s.h2c_queued = true;
            self.h2c_fifo.push_back(r.cccid);
        }
        Ok(())
    }
}

impl<B: DataBuffer> AsRawFd for QueuePair<B> {
    /// The socket, for a reactor's wake set (readable when the target sent something).
    fn as_raw_fd(&self) -> RawFd {
        self.conn.as_raw_fd()
    }
}

fn send_all(conn: &TcpConnection, mut buf: &[u8], deadline: Instant) -> Result<(), HostError> {
    while !buf.is_empty() {
        let n = conn.send(buf).map_err(TransportError::from)?;
        buf = &buf[n..];
        if n == 0 {
            if Instant::now() >= deadline {
                return Err(HostError::Timeout("ICReq"));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    Ok(())
}

fn recv_some(conn: &TcpConnection, buf: &mut [u8], deadline: Instant) -> Result<usize, HostError> {
    loop {
        match conn.recv(buf).map_err(TransportError::from)? {
            Recv::Data(n) => return Ok(n),
            Recv::Closed => return Err(TransportError::Closed.into()),
            Recv::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(HostError::Timeout("ICResp"));
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }
}
