//! One NVMe/TCP connection on the target side: a queue pair of one controller.
//!
//! The connection is a state machine driven by its poll group: `on_ready` reads and parses
//! PDUs (headers through a staging buffer, payload straight into the pool buffers of the
//! command it belongs to), starts commands, and `progress` polls the bdev channels, delivers
//! events, and flushes everything produced with one `sendmsg`.
//!
//! Each command lives in a slot preallocated for the deepest queue we accept; the slot index
//! is the command's bdev tag, its R2T transfer tag and the cookie of its last queued PDU, so
//! nothing is looked up by search and nothing is allocated per command.

use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;

use gyre_bdev::{
    BdevChannel, IoCompletion, IoError, IoFlags, IoOp, IoRequest, RangeGuard, WriteGate,
};
use gyre_net::{FlushOutcome, Interest, PollGroup, Readiness, Recv, SendQueue, TcpConnection};
use gyre_nvme::{Command, Completion, Fuse, SglKind, Status};
use gyre_reactor::{PoolCache, SgList};
use smallvec::SmallVec;

use crate::config::ListenAddress;
use crate::target::controller::Controller;
use crate::target::subsystem::{Namespace, SubsystemKind};
use crate::target::{admin, TargetShared};
use crate::tcp::digest::sg_data_digest;
use crate::tcp::pdu::{
    self, C2hData, CapsuleResp, HeaderParse, Pdu, PduError, PduRules, R2t, Role, TermReq,
    MAX_TERM_REQ_DATA,
};

/// What a poll of the connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnStatus {
    Busy,
    Idle,
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the host's ICReq.
    AwaitIcReq,
    Ready,
    /// A termination request (or nothing) is being sent; then the socket closes.
    Terminating,
    /// The socket is closed; waiting for bdev I/O in flight to come back.
    Draining,
    Finished,
}

/// Where received bytes go next.
#[derive(Debug, Clone, Copy)]
enum Rx {
    Header,
    /// Skip padding (or data we refuse) before going on.
    Skip {
        remaining: usize,
        then: AfterSkip,
    },
    /// Land payload in slot `slot`'s buffer.
    Payload {
        slot: u16,
        offset: usize,
        remaining: usize,
        /// Where this PDU's data started in the buffer, and its length (for the digest).
        pdu_offset: usize,
        pdu_len: usize,
        kind: PayloadKind,
    },
    /// Read the 4-byte data digest of the payload just landed.
    DataDigest {
        slot: u16,
        pdu_offset: usize,
        pdu_len: usize,
        kind: PayloadKind,
    },
    /// In-capsule data arrived but no buffer is free: wait before reading on.
    AwaitBuffer {
        slot: u16,
        len: usize,
        pad: usize,
    },
}

#[derive(Debug, Clone, Copy)]
enum AfterSkip {
    /// Padding skipped: land this payload next.
    Payload {
        slot: u16,
        offset: usize,
        len: usize,
        kind: PayloadKind,
    },
    /// Refused data skipped: send the response already set in `slot`.
    CompleteSlot(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PayloadKind {
    InCapsule,
    H2cData { last: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Receiving in-capsule data.
    InCapsule,
    /// R2T sent; receiving H2CData.
    AwaitData,
    /// Waiting for pool buffers.
    AwaitBuffer,
    /// Waiting for a range held by an atomic command (a write), or for the range lock and
    /// the writes it must outlast (the Compare of a fused pair).
    AwaitRange,
    /// A fused command whose data is in, waiting for its partner's.
    AwaitPartner,
    /// Bdev requests in flight.
    Executing,
    /// Parked Asynchronous Event Request.
    AwaitEvent,
    /// Response PDUs queued; freed when the last one is sent.
    Sending,
}

/// Byte layout of a slot's PDU header area.
/// The C2HData header with its digest and padding to the host's HPDA: up to 128 bytes
/// (HPDA 31).
const TX_DATA_HDR: usize = 0;
const TX_DDGST: usize = 128; // data digest trailer
const TX_RESP: usize = 136; // CapsuleResp header (+ digest)
const TX_R2T: usize = 168; // R2T header (+ digest)
const TX_LEN: usize = 200;

struct Slot {
    state: SlotState,
    cmd: Command,
    /// Data to or from the host.
    buf: SgList,
    /// Second buffer (compare emulation, fused compare-and-write).
    aux: SgList,
    /// Bytes of data the command moves (0 for none).
    data_len: usize,
    /// Bytes of host data landed so far.
    received: usize,
    cqe: Completion,
    /// Bdev sub-requests outstanding.
    outstanding: u16,
    /// Host data goes to the controller (write-like) rather than from it.
    host_to_ctrl: bool,
    /// [`CID_CONFLICT`] when the command reused a CID in flight, else [`NO_SLOT`].
    partner: u16,
    /// Fused operations: this command's role, its partner's slot and a status it must end
    /// with once its data is in (the partner failed or never came).
    fuse: Fuse,
    fuse_partner: u16,
    fuse_abort: Option<Status>,
    /// The range a fused Compare-and-Write holds (on its first command's slot).
    range: Option<(RangeGuard, Arc<Namespace>)>,
    tx: [u8; TX_LEN],
}

impl Slot {
    fn new() -> Self {
        Self {
            state: SlotState::Free,
            cmd: Command::default(),
            buf: SgList::new(),
            aux: SgList::new(),
            data_len: 0,
            received: 0,
            cqe: Completion::default(),
            outstanding: 0,
            host_to_ctrl: false,
            partner: NO_SLOT,
            fuse: Fuse::Normal,
            fuse_partner: NO_SLOT,
            fuse_abort: None,
            range: None,
            tx: [0; TX_LEN],
        }
    }
}

const NO_SLOT: u16 = u16::MAX;

/// A namespace as one I/O queue sees it: its own bdev channel on this reactor.
struct NsChannel {
    ns: Arc<Namespace>,
    chan: BdevChannel,
    /// This channel's writes as the bdev's range lock counts them.
    gate: Arc<WriteGate>,
    block_size: usize,
    /// ANA state through this connection's listener allows I/O.
    accessible: bool,
    ana_status: Status,
}

/// The queue pair this connection became with its Connect.
struct QueueBinding {
    qid: u16,
    ctrl: Arc<Controller>,
    /// SQ size (entries).
    entries: u16,
    sq_head: u16,
    /// CATTR "disable SQ flow control": then C2HData may carry SUCCESS.
    sq_flow_disabled: bool,
    namespaces: Vec<Option<NsChannel>>,
    ns_generation: u64,
}

/// One NVMe/TCP connection of the target.
pub(crate) struct TargetConnection {
    id: u64,
    socket: TcpConnection,
    peer: SocketAddr,
    listener: ListenAddress,
    target: Arc<TargetShared>,
    pool: PoolCache,
    phase: Phase,
    /// What ICReq/ICResp negotiated: digests, alignments, data limits.
    rules: PduRules,
    /// Where in staging the PDU header being handled starts.
    header_at: usize,
    /// The receive budget ran out with input possibly staged: receive again next progress.
    rx_pending: bool,
    rx: Rx,
    staging: Box<[u8]>,
    rs: usize,
    re: usize,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Command IDs in flight (bit per CID).
    cids: Box<[u64; 1024]>,
    sendq: SendQueue,
    /// Connection-level PDUs (ICResp, C2HTermReq).
    conn_tx: Box<[u8; 256]>,
    write_blocked: bool,
    interest_write: bool,
    waiting_buffers: VecDeque<u16>,
    aers: VecDeque<u16>,
    queue: Option<QueueBinding>,
    /// Channels of removed namespaces that still have I/O in flight.
    /// Channels of namespaces gone from the queue, kept until their I/O returns.
    retiring: Vec<(BdevChannel, Arc<WriteGate>)>,
    /// Bdev completions of one poll (capacity kept across polls).
    completions: Vec<(u16, Status, Option<SgList>)>,
    /// Slots waiting for a range lock (writes into a locked range, fused pairs).
    waiting_range: VecDeque<u16>,
    /// The first command of a fused pair, until the next command arrives.
    fused_first: u16,
    /// The first command of a fused pair failed before its second arrived.
    fused_first_failed: bool,
    /// Recorded when the connection ends, for the log line.
    close_reason: Option<&'static str>,
    /// A Disconnect was answered: close once the answer is out.
    close_after_flush: bool,
}

/// Receive staging: headers and small payloads pass through here.
const STAGING: usize = 32 * 1024;
/// Most PDUs handled per readiness event before others get their turn.
const RX_BUDGET: usize = 128;

impl TargetConnection {
    pub(crate) fn new(
        id: u64,
        socket: TcpConnection,
        peer: SocketAddr,
        listener: ListenAddress,
        target: Arc<TargetShared>,
    ) -> Self {
        let opts = target.options;
        let depth = usize::from(opts.max_queue_depth.max(opts.max_admin_queue_depth));
        let pool = gyre_reactor::global_pool()
            .map(|p| p.local())
            .expect("the global buffer pool is initialised before the target starts");
        Self {
            id,
            socket,
            peer,
            listener,
            pool,
            phase: Phase::AwaitIcReq,
            // The header-level cap on in-capsule data is the largest any queue accepts;
            // each queue checks its own limit per command.
            rules: PduRules::controller(
                opts.max_h2c_data,
                opts.in_capsule_data_size.max(ADMIN_IN_CAPSULE_MIN),
            ),
            header_at: 0,
            rx_pending: false,
            rx: Rx::Header,
            staging: vec![0u8; STAGING].into_boxed_slice(),
            rs: 0,
            re: 0,
            slots: (0..depth).map(|_| Slot::new()).collect(),
            free: (0..depth as u16).rev().collect(),
            cids: Box::new([0u64; 1024]),
            // Per command: data header, up to 8 data segments, digest, response.
            sendq: SendQueue::with_capacity(depth * 12 + 8),
            conn_tx: Box::new([0u8; 256]),
            write_blocked: false,
            interest_write: false,
            waiting_buffers: VecDeque::with_capacity(depth),
            aers: VecDeque::with_capacity(8),
            queue: None,
            retiring: Vec::new(),
            completions: Vec::with_capacity(depth * 2),
            waiting_range: VecDeque::with_capacity(depth),
            fused_first: NO_SLOT,
            fused_first_failed: false,
            close_reason: None,
            close_after_flush: false,
            target,
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(crate) fn socket(&self) -> &TcpConnection {
        &self.socket
    }

    /// Closes the connection without a termination request (shutdown, controller teardown).
    pub(crate) fn close(&mut self, why: &'static str) {
        if matches!(self.phase, Phase::Draining | Phase::Finished) {
            return;
        }
        self.close_reason.get_or_insert(why);
        self.socket.shutdown();
        self.phase = Phase::Draining;
        self.release_queue();
    }

    // --- receive ----------------------------------------------------------------------------

    pub(crate) fn on_ready(&mut self, r: Readiness) {
        if r.writable {
            self.write_blocked = false;
        }
        if r.readable || r.closed {
            self.receive();
        }
    }

    fn receive(&mut self) {
        let mut budget = RX_BUDGET;
        self.rx_pending = false;
        while matches!(self.phase, Phase::AwaitIcReq | Phase::Ready) {
            if budget == 0 {
                // Bytes may already sit in staging, where no socket readiness will announce
                // them again: the next progress carries on.
                self.rx_pending = true;
                break;
            }
            match self.step_rx() {
                Ok(true) => budget -= 1,
                Ok(false) => break,
                Err(RxStop::Fault(f)) => {
                    self.terminate(f);
                    break;
                }
                Err(RxStop::Closed(why)) => {
                    self.close(why);
                    break;
                }
            }
        }
    }

    /// Reads more bytes into staging. Ok(false) when none are available now.
    fn fill(&mut self) -> Result<bool, RxStop> {
        if self.rs == self.re {
            self.rs = 0;
            self.re = 0;
        } else if self.re == self.staging.len() {
            self.staging.copy_within(self.rs..self.re, 0);
            self.re -= self.rs;
            self.rs = 0;
        }
        match self.socket.recv(&mut self.staging[self.re..]) {
            Ok(Recv::Data(n)) => {
                self.re += n;
                Ok(true)
            }
            Ok(Recv::WouldBlock) => Ok(false),
            Ok(Recv::Closed) => Err(RxStop::Closed("host closed the connection")),
            Err(e) => {
                tracing::info!(id = self.id, peer = %self.peer, error = %e, "nvmf: receive failed");
                Err(RxStop::Closed("receive error"))
            }
        }
    }

    fn avail(&self) -> usize {
        self.re - self.rs
    }

    /// One step of the receive state machine. Ok(true) when it made progress.
    fn step_rx(&mut self) -> Result<bool, RxStop> {
        match self.rx {
            Rx::Header => {
                // A fatal error echoes the header that starts here in its C2HTermReq.
                self.header_at = self.rs;
                let staged = &self.staging[self.rs..self.re];
                match pdu::parse_header(staged, &self.rules) {
                    Ok(HeaderParse::NeedMore(need)) => {
                        debug_assert!(need > staged.len());
                        self.fill()
                    }
                    Ok(HeaderParse::Complete { layout, pdu }) => {
                        self.rs += layout.header_len;
                        self.on_pdu(pdu, layout.pad_len, layout.data_len)?;
                        Ok(true)
                    }
                    Err(error) => Err(RxStop::Fault(error)),
                }
            }
            Rx::Skip { remaining, then } => {
                if self.avail() == 0 && !self.fill()? {
                    return Ok(false);
                }
                let n = remaining.min(self.avail());
                self.rs += n;
                if n < remaining {
                    self.rx = Rx::Skip {
                        remaining: remaining - n,
                        then,
                    };
                    return Ok(true);
                }
                match then {
                    AfterSkip::Payload {
                        slot,
                        offset,
                        len,
                        kind,
                    } => self.begin_payload(slot, 0, offset, len, kind),
                    AfterSkip::CompleteSlot(s) => {
                        self.rx = Rx::Header;
                        self.respond(s);
                    }
                }
                Ok(true)
            }
            Rx::AwaitBuffer { slot, len, pad } => {
                let Some(buf) = self.pool.try_alloc(len) else {
                    return Ok(false);
                };
                let s = &mut self.slots[usize::from(slot)];
                s.buf = buf;
                s.state = SlotState::InCapsule;
                self.begin_payload(slot, pad, 0, len, PayloadKind::InCapsule);
                Ok(true)
            }
            Rx::Payload {
                slot,
                offset,
                remaining,
                pdu_offset,
                pdu_len,
                kind,
            } => {
                let landed = self.land_payload(slot, offset, remaining)?;
                if landed == 0 {
                    return Ok(false);
                }
                let remaining = remaining - landed;
                if remaining > 0 {
                    self.rx = Rx::Payload {
                        slot,
                        offset: offset + landed,
                        remaining,
                        pdu_offset,
                        pdu_len,
                        kind,
                    };
                    return Ok(true);
                }
                if self.rules.data_digest {
                    self.rx = Rx::DataDigest {
                        slot,
                        pdu_offset,
                        pdu_len,
                        kind,
                    };
                } else {
                    self.rx = Rx::Header;
                    self.payload_done(slot, pdu_len, kind, true);
                }
                Ok(true)
            }
            Rx::DataDigest {
                slot,
                pdu_offset,
                pdu_len,
                kind,
            } => {
                if self.avail() < 4 {
                    return self.fill();
                }
                let mut got = [0u8; 4];
                got.copy_from_slice(&self.staging[self.rs..self.rs + 4]);
                self.rs += 4;
                let want = sg_data_digest(&self.slots[usize::from(slot)].buf, pdu_offset, pdu_len);
                let ok = want == Some(u32::from_le_bytes(got));
                if !ok {
                    self.target
                        .data_digest_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(id = self.id, peer = %self.peer, "nvmf: data digest mismatch");
                }
                self.rx = Rx::Header;
                self.payload_done(slot, pdu_len, kind, ok);
                Ok(true)
            }
        }
    }

    /// Moves up to `remaining` payload bytes into the slot's buffer at `offset`: first what
    /// staging already holds, then straight from the socket (with staging behind the buffer
    /// so the next headers arrive in the same call). Returns bytes landed.
    fn land_payload(
        &mut self,
        slot: u16,
        offset: usize,
        remaining: usize,
    ) -> Result<usize, RxStop> {
        let s = &mut self.slots[usize::from(slot)];
        let staged = remaining.min(self.re - self.rs);
        if staged > 0 {
            let src = &self.staging[self.rs..self.rs + staged];
            let mut at = 0;
            s.buf.for_each_chunk_mut(offset, staged, |dst| {
                dst.copy_from_slice(&src[at..at + dst.len()]);
                at += dst.len();
            });
            self.rs += staged;
            return Ok(staged);
        }
        // Staging is empty: receive into the buffer directly.
        self.rs = 0;
        self.re = 0;
        let mut iov: SmallVec<[IoSliceMut<'_>; 10]> = s
            .buf
            .chunks_mut(offset, remaining)
            .map(IoSliceMut::new)
            .collect();
        iov.push(IoSliceMut::new(&mut self.staging[..]));
        match self.socket.recv_vectored(&mut iov) {
            Ok(Recv::Data(n)) => {
                let to_payload = n.min(remaining);
                self.re = n - to_payload;
                Ok(to_payload)
            }
            Ok(Recv::WouldBlock) => Ok(0),
            Ok(Recv::Closed) => Err(RxStop::Closed("host closed the connection")),
            Err(e) => {
                tracing::info!(id = self.id, peer = %self.peer, error = %e, "nvmf: receive failed");
                Err(RxStop::Closed("receive error"))
            }
        }
    }

    fn begin_payload(
        &mut self,
        slot: u16,
        pad: usize,
        offset: usize,
        len: usize,
        kind: PayloadKind,
    ) {
        if pad > 0 {
            self.rx = Rx::Skip {
                remaining: pad,
                then: AfterSkip::Payload {
                    slot,
                    offset,
                    len,
                    kind,
                },
            };
            return;
        }
        if len == 0 {
            self.rx = Rx::Header;
            self.payload_done(slot, 0, kind, true);
            return;
        }
        self.rx = Rx::Payload {
            slot,
            offset,
            remaining: len,
            pdu_offset: offset,
            pdu_len: len,
            kind,
        };
    }

    fn payload_done(&mut self, slot: u16, len: usize, kind: PayloadKind, digest_ok: bool) {
        let s = &mut self.slots[usize::from(slot)];
        s.received += len;
        if !digest_ok {
            s.cqe.status = Status::TRANSIENT_TRANSPORT_ERROR;
        }
        let complete = match kind {
            PayloadKind::InCapsule => true,
            PayloadKind::H2cData { last } => last || s.received >= s.data_len,
        };
        if !complete {
            return;
        }
        if !s.cqe.status.is_success() {
            self.respond(slot);
            return;
        }
        self.execute(slot);
    }

    fn on_pdu(&mut self, pdu: Pdu, pad: usize, data_len: usize) -> Result<(), RxStop> {
        // The codec has already checked the PDU against the connection's phase (ICReq first
        // and once) and the negotiated digests and limits.
        match pdu {
            Pdu::IcReq(req) => {
                let resp = self.rules.accept_icreq(&req, 0, true, true);
                let n = resp
                    .encode(&mut self.conn_tx[..])
                    .map_err(|_| RxStop::Closed("ICResp does not fit its buffer"))?;
                // SAFETY: conn_tx lives as long as the connection and is not rewritten until
                // the connection ends (ICResp is sent once).
                unsafe {
                    self.sendq
                        .push(self.conn_tx.as_ptr(), n, gyre_net::NO_COOKIE)
                };
                self.phase = Phase::Ready;
                Ok(())
            }
            Pdu::H2cTermReq(t) => {
                tracing::warn!(
                    id = self.id,
                    peer = %self.peer,
                    fes = t.fes,
                    fei = t.fei,
                    "nvmf: host terminated the connection (H2CTermReq)"
                );
                self.close("host sent H2CTermReq");
                Err(RxStop::Closed("host sent H2CTermReq"))
            }
            Pdu::CapsuleCmd(c) => self.on_command(c.sqe, pad, data_len),
            Pdu::H2cData(d) => {
                let Some(s) = self.slots.get(usize::from(d.ttag)) else {
                    return Err(RxStop::Fault(PduError::invalid_field(10, "unknown TTAG")));
                };
                if s.state != SlotState::AwaitData || s.cmd.cid != d.cccid {
                    return Err(RxStop::Fault(PduError::invalid_field(
                        8,
                        "H2CData for a command not awaiting data",
                    )));
                }
                let datao = d.datao as usize;
                let datal = d.datal as usize;
                if datao != s.received || datao + datal > s.data_len {
                    return Err(RxStop::Fault(PduError::out_of_range(
                        "H2CData outside the requested range",
                    )));
                }
                if d.last && datao + datal != s.data_len {
                    return Err(RxStop::Fault(PduError::sequence(
                        "LAST_PDU before the end of data",
                    )));
                }
                let kind = PayloadKind::H2cData { last: d.last };
                self.begin_payload(d.ttag, pad, datao, datal, kind);
                Ok(())
            }
            // `validate` refuses PDUs of the controller's own direction.
            Pdu::IcResp(_)
            | Pdu::C2hTermReq(_)
            | Pdu::CapsuleResp(_)
            | Pdu::C2hData(_)
            | Pdu::R2t(_) => Err(RxStop::Fault(PduError::invalid_field(
                0,
                "PDU type not sent by a host",
            ))),
        }
    }
}

impl TargetConnection {
    // --- commands ---------------------------------------------------------------------------

    fn on_command(&mut self, cmd: Command, pad: usize, data_len: usize) -> Result<(), RxStop> {
        let Some(slot) = self.free.pop() else {
            return Err(RxStop::Fault(PduError::sequence(
                "more commands outstanding than the submission queue holds",
            )));
        };
        let conflict = self.cid_in_use(cmd.cid);
        if !conflict {
            self.set_cid(cmd.cid, true);
        }
        let sqid = self.queue.as_ref().map_or(0, |q| q.qid);
        let s = &mut self.slots[usize::from(slot)];
        s.state = SlotState::Executing;
        s.cmd = cmd;
        s.cqe = Completion::new(cmd.cid, Status::SUCCESS);
        s.cqe.sqid = sqid;
        s.data_len = 0;
        s.received = 0;
        s.outstanding = 0;
        s.host_to_ctrl = false;
        s.partner = if conflict { CID_CONFLICT } else { NO_SLOT };
        self.advance_sq_head();
        self.pair_fused(slot);
        if conflict {
            self.slots[usize::from(slot)].cqe.status = Status::COMMAND_ID_CONFLICT.with_dnr();
        }

        if data_len > 0 {
            // In-capsule data: the SGL must describe exactly it, at offset 0.
            let sgl = cmd.dptr;
            let max = self.in_capsule_limit();
            let bad = if sgl.kind() != SglKind::DataBlockOffset {
                Some(Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr())
            } else if sgl.address() != 0 {
                Some(Status::SGL_OFFSET_INVALID.with_dnr())
            } else if sgl.length() as usize != data_len || data_len > max {
                Some(Status::DATA_SGL_LENGTH_INVALID.with_dnr())
            } else {
                None
            };
            let s = &mut self.slots[usize::from(slot)];
            if let Some(status) = bad.or(conflict.then_some(s.cqe.status)) {
                s.cqe.status = status;
                let skip = pad + data_len + if self.rules.data_digest { 4 } else { 0 };
                self.rx = Rx::Skip {
                    remaining: skip,
                    then: AfterSkip::CompleteSlot(slot),
                };
                return Ok(());
            }
            s.data_len = data_len;
            s.host_to_ctrl = true;
            match self.pool.try_alloc(data_len) {
                Some(buf) => {
                    let s = &mut self.slots[usize::from(slot)];
                    s.buf = buf;
                    s.state = SlotState::InCapsule;
                    self.begin_payload(slot, pad, 0, data_len, PayloadKind::InCapsule);
                }
                None => {
                    self.slots[usize::from(slot)].state = SlotState::AwaitBuffer;
                    self.rx = Rx::AwaitBuffer {
                        slot,
                        len: data_len,
                        pad,
                    };
                }
            }
            return Ok(());
        }
        if conflict {
            self.respond(slot);
            return Ok(());
        }
        self.dispatch(slot);
        Ok(())
    }

    fn in_capsule_limit(&self) -> usize {
        if self.queue.is_none() || self.queue.as_ref().is_some_and(|q| q.qid == 0) {
            // Connect data, and admin commands, which we accept in-capsule up to 8 KiB too.
            self.target
                .options
                .in_capsule_data_size
                .max(ADMIN_IN_CAPSULE_MIN) as usize
        } else {
            self.target.options.in_capsule_data_size as usize
        }
    }

    fn cid_in_use(&self, cid: u16) -> bool {
        self.cids[usize::from(cid >> 6)] & (1 << (cid & 63)) != 0
    }

    fn set_cid(&mut self, cid: u16, on: bool) {
        let w = &mut self.cids[usize::from(cid >> 6)];
        if on {
            *w |= 1 << (cid & 63);
        } else {
            *w &= !(1 << (cid & 63));
        }
    }

    fn advance_sq_head(&mut self) {
        if let Some(q) = self.queue.as_mut() {
            q.sq_head = (q.sq_head + 1) % q.entries.max(1);
        }
    }

    /// A command whose capsule (and in-capsule data) has arrived.
    fn dispatch(&mut self, slot: u16) {
        let s = &self.slots[usize::from(slot)];
        let cmd = s.cmd;
        if s.data_len == 0
            && cmd.data_direction() == gyre_nvme::command::DataDirection::HostToController
            && !cmd.is_fabrics()
            && cmd.dptr.length() > 0
        {
            // Data comes by R2T: check what we can first, so doomed commands cost no transfer.
            if let Err(status) = self.precheck(slot) {
                self.finish(slot, status);
                return;
            }
            if cmd.dptr.kind() != SglKind::TransportDataBlock {
                self.finish(slot, Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr());
                return;
            }
            let len = cmd.dptr.length() as usize;
            if len > self.target.options.max_io_size as usize {
                self.finish(slot, Status::DATA_SGL_LENGTH_INVALID.with_dnr());
                return;
            }
            let s = &mut self.slots[usize::from(slot)];
            s.data_len = len;
            s.host_to_ctrl = true;
            self.request_data(slot);
            return;
        }
        self.execute(slot);
    }

    /// Allocates the buffer for host data and sends the R2T (or waits for buffers).
    fn request_data(&mut self, slot: u16) {
        let len = self.slots[usize::from(slot)].data_len;
        let Some(buf) = self.pool.try_alloc(len) else {
            self.slots[usize::from(slot)].state = SlotState::AwaitBuffer;
            self.waiting_buffers.push_back(slot);
            return;
        };
        let s = &mut self.slots[usize::from(slot)];
        s.buf = buf;
        s.received = 0;
        s.state = SlotState::AwaitData;
        let r2t = R2t {
            cccid: s.cmd.cid,
            ttag: slot,
            r2to: 0,
            r2tl: len as u32,
        };
        // The R2T area holds a header with its digest: the encoder cannot run out of room.
        let n = r2t.encode(&self.rules, &mut s.tx[TX_R2T..]).unwrap_or(0);
        // SAFETY: the slot's tx area outlives the queue entry (slots are never reallocated
        // and the R2T area is not rewritten while the command awaits data).
        unsafe {
            self.sendq
                .push(s.tx[TX_R2T..].as_ptr(), n, gyre_net::NO_COOKIE)
        };
    }

    /// All data for the command is here: run it.
    fn execute(&mut self, slot: u16) {
        let cmd = self.slots[usize::from(slot)].cmd;
        if cmd.is_fabrics() {
            self.fabrics(slot);
            return;
        }
        let Some(q) = self.queue.as_ref() else {
            self.finish(slot, Status::COMMAND_SEQUENCE_ERROR.with_dnr());
            return;
        };
        if q.qid == 0 {
            self.admin(slot);
        } else {
            self.io(slot);
        }
    }

    // --- fabrics ----------------------------------------------------------------------------

    fn fabrics(&mut self, slot: u16) {
        let cmd = self.slots[usize::from(slot)].cmd;
        match cmd.fctype() {
            Some(0x01) => self.connect(slot),
            Some(0x04) | Some(0x00) => {
                let Some(q) = self.queue.as_ref() else {
                    self.finish(slot, Status::COMMAND_SEQUENCE_ERROR.with_dnr());
                    return;
                };
                if q.qid != 0 {
                    // Properties live on the admin queue only.
                    self.finish(slot, Status::INVALID_FIELD.with_dnr());
                    return;
                }
                let ctrl = q.ctrl.clone();
                let (status, value) = admin::property(&ctrl, &self.target, &cmd);
                let s = &mut self.slots[usize::from(slot)];
                s.cqe.dw0 = value as u32;
                s.cqe.dw1 = (value >> 32) as u32;
                self.finish(slot, status);
            }
            Some(0x08) => {
                // Disconnect: respond, then close once the response is out.
                self.finish(slot, Status::SUCCESS);
                self.close_after_flush = true;
            }
            _ => self.finish(slot, Status::INVALID_OPCODE.with_dnr()),
        }
    }

    fn connect(&mut self, slot: u16) {
        if self.queue.is_some() {
            self.finish(slot, Status::COMMAND_SEQUENCE_ERROR.with_dnr());
            return;
        }
        let s = &self.slots[usize::from(slot)];
        let mut data = [0u8; gyre_nvme::ConnectData::SIZE];
        if s.data_len < data.len() {
            self.connect_reply(slot, admin::ConnectReply::data_error());
            return;
        }
        s.buf.for_each_chunk(0, data.len(), {
            let mut at = 0;
            let data = &mut data;
            move |c| {
                data[at..at + c.len()].copy_from_slice(c);
                at += c.len();
            }
        });
        let reply = admin::connect(&self.target, &s.cmd, &data, &self.listener, &self.peer);
        match reply {
            admin::ConnectOutcome::Admin {
                ctrl,
                entries,
                sq_flow_disabled,
            } => {
                self.bind(0, ctrl.clone(), entries, sq_flow_disabled);
                let s = &mut self.slots[usize::from(slot)];
                s.cqe.dw0 = u32::from(ctrl.cntlid);
                self.finish(slot, Status::SUCCESS);
            }
            admin::ConnectOutcome::Io {
                ctrl,
                qid,
                entries,
                sq_flow_disabled,
            } => {
                self.bind(qid, ctrl.clone(), entries, sq_flow_disabled);
                let s = &mut self.slots[usize::from(slot)];
                s.cqe.dw0 = u32::from(ctrl.cntlid);
                self.finish(slot, Status::SUCCESS);
            }
            admin::ConnectOutcome::Refused(r) => self.connect_reply(slot, r),
        }
    }

    fn connect_reply(&mut self, slot: u16, r: admin::ConnectReply) {
        let s = &mut self.slots[usize::from(slot)];
        s.cqe.dw0 = r.dw0;
        self.finish(slot, r.status);
    }

    fn bind(&mut self, qid: u16, ctrl: Arc<Controller>, entries: u16, sq_flow_disabled: bool) {
        let mut binding = QueueBinding {
            qid,
            ctrl,
            entries,
            // The Connect itself was the first entry consumed.
            sq_head: 1 % entries.max(1),
            sq_flow_disabled,
            namespaces: Vec::new(),
            ns_generation: 0,
        };
        if qid != 0 {
            refresh_namespaces(&mut binding, &self.listener, &mut self.retiring);
        }
        tracing::info!(
            id = self.id,
            peer = %self.peer,
            nqn = %binding.ctrl.subsystem.nqn,
            cntlid = binding.ctrl.cntlid,
            qid,
            entries,
            "nvmf: queue connected"
        );
        self.queue = Some(binding);
    }

    fn release_queue(&mut self) {
        let Some(q) = self.queue.as_mut() else {
            return;
        };
        if q.qid == 0 {
            // The admin queue's end ends the association.
            q.ctrl.fail("admin queue closed");
            q.ctrl.subsystem.remove_controller(q.ctrl.cntlid);
        } else {
            q.ctrl.release_io_queue(q.qid);
        }
        for ns in q.namespaces.drain(..).flatten() {
            if ns.chan.in_flight() > 0 {
                self.retiring.push((ns.chan, ns.gate));
            }
        }
    }

    // --- admin ------------------------------------------------------------------------------

    fn admin(&mut self, slot: u16) {
        let Some(q) = self.queue.as_ref() else {
            return;
        };
        let ctrl = q.ctrl.clone();
        let s = &self.slots[usize::from(slot)];
        let cmd = s.cmd;
        let host_data: &SgList = &s.buf;
        let reply = admin::execute(
            &ctrl,
            &self.target,
            &self.listener,
            &cmd,
            host_data,
            s.data_len,
        );
        match reply {
            admin::AdminReply::ParkEvent => {
                if self.aers.len() >= admin::MAX_AERS {
                    self.finish(slot, Status::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED);
                } else {
                    self.slots[usize::from(slot)].state = SlotState::AwaitEvent;
                    self.aers.push_back(slot);
                }
            }
            admin::AdminReply::Done { status, dw0, data } => {
                self.slots[usize::from(slot)].cqe.dw0 = dw0;
                match data {
                    Some(bytes) if status.is_success() => self.send_data(slot, &bytes),
                    _ => self.finish(slot, status),
                }
            }
        }
    }

    /// Sends controller-built data (admin) to the host through a pool buffer.
    fn send_data(&mut self, slot: u16, bytes: &[u8]) {
        let sgl = self.slots[usize::from(slot)].cmd.dptr;
        let want = (sgl.length() as usize).min(bytes.len());
        if want == 0 {
            self.finish(slot, Status::SUCCESS);
            return;
        }
        if sgl.kind() != SglKind::TransportDataBlock {
            self.finish(slot, Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr());
            return;
        }
        let Some(mut buf) = self.pool.try_alloc(want) else {
            self.finish(slot, Status::INTERNAL_ERROR);
            return;
        };
        buf.copy_from_slice(&bytes[..want]);
        let s = &mut self.slots[usize::from(slot)];
        s.buf = buf;
        s.data_len = want;
        s.host_to_ctrl = false;
        self.finish(slot, Status::SUCCESS);
    }

    /// Delivers queued asynchronous events to parked requests.
    fn deliver_events(&mut self) -> bool {
        let Some(q) = self.queue.as_ref() else {
            return false;
        };
        if q.qid != 0 || self.aers.is_empty() || !q.ctrl.has_pending_events() {
            return false;
        }
        let ctrl = q.ctrl.clone();
        let mut delivered = false;
        while let Some(&slot) = self.aers.front() {
            let Some(ev) = ctrl.take_event() else {
                break;
            };
            self.aers.pop_front();
            self.slots[usize::from(slot)].cqe.dw0 = admin::event_dw0(ev);
            self.finish(slot, Status::SUCCESS);
            delivered = true;
        }
        delivered
    }

    // --- I/O --------------------------------------------------------------------------------

    /// Checks an I/O command before its data is fetched.
    fn precheck(&mut self, slot: u16) -> Result<(), Status> {
        let Some(q) = self.queue.as_mut() else {
            return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
        };
        if q.qid == 0 {
            return Ok(());
        }
        let cmd = self.slots[usize::from(slot)].cmd;
        let ns = lookup(q, cmd.nsid)?;
        match cmd.opcode {
            OPC_WRITE | OPC_COMPARE => {
                let rw = gyre_nvme::RwCommand::from_command(&cmd);
                check_range(ns, rw.slba, u64::from(rw.nlb))?;
                let len = rw.nlb as usize * ns.block_size;
                if len > self.target.options.max_io_size as usize {
                    return Err(Status::INVALID_FIELD.with_dnr());
                }
                if (cmd.dptr.length() as usize) < len {
                    return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn io(&mut self, slot: u16) {
        let Some(q) = self.queue.as_mut() else {
            return;
        };
        if !q.ctrl.is_ready() {
            self.finish(slot, Status::COMMAND_SEQUENCE_ERROR);
            return;
        }
        let cmd = self.slots[usize::from(slot)].cmd;
        if cmd.fuse != Fuse::Normal {
            self.fused_ready(slot);
            return;
        }
        let ns = match lookup(q, cmd.nsid) {
            Ok(ns) => ns,
            Err(st) => {
                self.finish(slot, st);
                return;
            }
        };
        let bs = ns.block_size;
        let s = &mut self.slots[usize::from(slot)];
        let tag = u64::from(slot);
        let waiting_range = &mut self.waiting_range;
        // A write into a range an atomic command holds waits for it (NVMe fused pairs and
        // SCSI COMPARE AND WRITE on the same bdev).
        let mut wait_for_range = |s: &mut Slot| {
            s.state = SlotState::AwaitRange;
            waiting_range.push_back(slot);
        };
        let outcome: Result<(), Status> = (|| match cmd.opcode {
            OPC_READ | OPC_WRITE | OPC_COMPARE => {
                let rw = gyre_nvme::RwCommand::from_command(&cmd);
                check_range(ns, rw.slba, u64::from(rw.nlb))?;
                let len = rw.nlb as usize * bs;
                if len > self.target.options.max_io_size as usize {
                    return Err(Status::INVALID_FIELD.with_dnr());
                }
                if (cmd.dptr.length() as usize) < len {
                    return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
                }
                let op = match cmd.opcode {
                    OPC_READ => {
                        if cmd.dptr.kind() != SglKind::TransportDataBlock {
                            return Err(Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr());
                        }
                        let Some(buf) = self.pool.try_alloc(len) else {
                            s.data_len = len;
                            s.state = SlotState::AwaitBuffer;
                            self.waiting_buffers.push_back(slot);
                            return Ok(());
                        };
                        s.buf = buf;
                        s.data_len = len;
                        s.host_to_ctrl = false;
                        IoOp::Read
                    }
                    OPC_WRITE => IoOp::Write,
                    _ if ns.chan.info().supports(IoOp::Compare) => IoOp::Compare,
                    _ => {
                        // Emulated: read into a buffer of its own, compare when it returns.
                        let Some(read_buf) = self.pool.try_alloc(len) else {
                            wait_for_range(s);
                            return Ok(());
                        };
                        trim(&mut s.buf, len);
                        s.aux = std::mem::replace(&mut s.buf, read_buf);
                        s.data_len = len;
                        IoOp::Read
                    }
                };
                if op != IoOp::Read {
                    // Only the blocks the command names go to the bdev.
                    s.data_len = len;
                    trim(&mut s.buf, len);
                }
                let mut tag = tag;
                if op == IoOp::Write {
                    if !admit_writes(ns, &[(rw.slba, u64::from(rw.nlb))]) {
                        wait_for_range(s);
                        return Ok(());
                    }
                    tag |= TAG_GATED;
                }
                let mut req = IoRequest::new(
                    op,
                    rw.slba,
                    u64::from(rw.nlb),
                    std::mem::take(&mut s.buf),
                    tag,
                );
                req.flags = IoFlags { fua: rw.fua };
                s.outstanding = 1;
                s.state = SlotState::Executing;
                ns.chan.submit(req);
                Ok(())
            }
            OPC_FLUSH => {
                if !ns.chan.info().supports(IoOp::Flush) {
                    return Err(Status::SUCCESS);
                }
                s.outstanding = 1;
                s.state = SlotState::Executing;
                ns.chan.submit(IoRequest::control(IoOp::Flush, 0, 0, tag));
                Ok(())
            }
            OPC_WRITE_ZEROES => {
                let wz = gyre_nvme::WriteZeroesCommand::from_command(&cmd);
                check_range(ns, wz.slba, u64::from(wz.nlb))?;
                if !ns.chan.info().supports(IoOp::WriteZeroes) {
                    return Err(Status::INVALID_OPCODE.with_dnr());
                }
                if !admit_writes(ns, &[(wz.slba, u64::from(wz.nlb))]) {
                    wait_for_range(s);
                    return Ok(());
                }
                let mut req = IoRequest::control(
                    IoOp::WriteZeroes,
                    wz.slba,
                    u64::from(wz.nlb),
                    tag | TAG_GATED,
                );
                req.flags = IoFlags { fua: wz.fua };
                s.outstanding = 1;
                s.state = SlotState::Executing;
                ns.chan.submit(req);
                Ok(())
            }
            OPC_DSM => {
                let nr = (cmd.cdw10 & 0xFF) as usize + 1;
                let deallocate = cmd.cdw11 & (1 << 2) != 0;
                if s.data_len < nr * 16 {
                    return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
                }
                let mut ranges = [(0u64, 0u64); 256];
                for (i, r) in ranges.iter_mut().enumerate().take(nr) {
                    let mut raw = [0u8; 16];
                    let mut at = 0;
                    s.buf.for_each_chunk(i * 16, 16, |c| {
                        raw[at..at + c.len()].copy_from_slice(c);
                        at += c.len();
                    });
                    let nlb = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
                    let slba = u64::from_le_bytes([
                        raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
                    ]);
                    check_range(ns, slba, u64::from(nlb))?;
                    *r = (slba, u64::from(nlb));
                }
                if !deallocate || !ns.chan.info().supports(IoOp::Unmap) {
                    // Attributes are hints; deallocation is advisory without Unmap support.
                    return Err(Status::SUCCESS);
                }
                if !admit_writes(ns, &ranges[..nr]) {
                    wait_for_range(s);
                    return Ok(());
                }
                s.state = SlotState::Executing;
                s.outstanding = 0;
                for &(slba, nlb) in ranges.iter().take(nr) {
                    if nlb == 0 {
                        continue;
                    }
                    s.outstanding += 1;
                    ns.chan
                        .submit(IoRequest::control(IoOp::Unmap, slba, nlb, tag | TAG_GATED));
                }
                if s.outstanding == 0 {
                    return Err(Status::SUCCESS);
                }
                Ok(())
            }
            _ => Err(Status::INVALID_OPCODE.with_dnr()),
        })();
        if let Err(status) = outcome {
            self.finish(slot, status);
        }
    }

    /// Polls the bdev channels of this queue; returns whether anything completed.
    fn poll_io(&mut self) -> bool {
        // A buffer kept across polls (its capacity covers every slot), taken out while the
        // channels are borrowed.
        let mut done = std::mem::take(&mut self.completions);
        if let Some(q) = self.queue.as_mut() {
            for ns in q.namespaces.iter_mut().flatten() {
                if ns.chan.in_flight() == 0 {
                    continue;
                }
                let gate = &ns.gate;
                ns.chan.poll(|c: IoCompletion| {
                    if c.req.tag & TAG_GATED != 0 {
                        gate.end();
                    }
                    let status = match c.status {
                        Ok(()) => Status::SUCCESS,
                        Err(e) => io_status(c.req.op, e),
                    };
                    let buf = c.req.op.has_data().then_some(c.req.buf);
                    done.push((c.req.tag as u16, status, buf));
                });
            }
        }
        self.retiring.retain_mut(|(chan, gate)| {
            chan.poll(|c| {
                if c.req.tag & TAG_GATED != 0 {
                    gate.end();
                }
            });
            chan.in_flight() > 0
        });
        let any = !done.is_empty();
        for (slot, status, buf) in done.drain(..) {
            self.io_done(slot, status, buf);
        }
        self.completions = done;
        any
    }

    fn io_done(&mut self, slot: u16, status: Status, buf: Option<SgList>) {
        let Some(s) = self.slots.get_mut(usize::from(slot)) else {
            return;
        };
        if let Some(b) = buf {
            s.buf = b;
        }
        if !status.is_success() && s.cqe.status.is_success() {
            s.cqe.status = status;
        }
        s.outstanding = s.outstanding.saturating_sub(1);
        if s.outstanding > 0 {
            return;
        }
        if s.fuse != Fuse::Normal {
            self.fused_step_done(slot);
            return;
        }
        if s.cmd.opcode == OPC_COMPARE && !s.aux.is_empty() {
            if s.cqe.status.is_success() && !sg_equal(&s.buf, &s.aux, s.data_len) {
                s.cqe.status = Status::COMPARE_FAILURE.with_dnr();
            }
            s.aux = SgList::new();
        }
        let status = s.cqe.status;
        if s.cmd.opcode != OPC_READ || !status.is_success() {
            s.data_len = 0;
        }
        self.finish(slot, status);
    }

    // --- fused Compare-and-Write ------------------------------------------------------------
    //
    // NVMe Base 2.x §3.4.2: a Compare marked "first" and the Write marked "second" that comes
    // right after it on the same queue run as one atomic unit on the same LBA range; the
    // Write happens only if the Compare matched. Atomicity against every other writer of the
    // bdev comes from its range lock, held from before the Compare until the Write is done.

    /// Pairs a new command with a first half waiting for its second, by arrival order.
    fn pair_fused(&mut self, slot: u16) {
        let fuse = self.slots[usize::from(slot)].cmd.fuse;
        let first = std::mem::replace(&mut self.fused_first, NO_SLOT);
        let first_failed = std::mem::take(&mut self.fused_first_failed);
        let s = &mut self.slots[usize::from(slot)];
        s.fuse = fuse;
        s.fuse_partner = NO_SLOT;
        s.fuse_abort = None;
        if first != NO_SLOT && fuse == Fuse::Second {
            self.slots[usize::from(first)].fuse_partner = slot;
            self.slots[usize::from(slot)].fuse_partner = first;
            return;
        }
        if first != NO_SLOT {
            self.abort_fused(first, Status::ABORTED_MISSING_FUSED);
        }
        let s = &mut self.slots[usize::from(slot)];
        match fuse {
            Fuse::Normal => {}
            Fuse::First => {
                if self.queue.as_ref().is_some_and(|q| q.qid == 0) {
                    // No fused admin commands exist.
                    s.fuse_abort = Some(Status::INVALID_FIELD.with_dnr());
                } else {
                    self.fused_first = slot;
                }
            }
            Fuse::Second => {
                s.fuse_abort = Some(if first_failed {
                    Status::ABORTED_FAILED_FUSED
                } else {
                    Status::ABORTED_MISSING_FUSED
                });
            }
            Fuse::Reserved => s.fuse_abort = Some(Status::INVALID_FIELD.with_dnr()),
        }
    }

    /// Ends a fused command with `status` now if it only waits for its partner, else as soon
    /// as its data is in.
    fn abort_fused(&mut self, slot: u16, status: Status) {
        let s = &mut self.slots[usize::from(slot)];
        s.fuse_partner = NO_SLOT;
        if s.state == SlotState::AwaitPartner {
            self.finish(slot, status);
        } else {
            s.fuse_abort.get_or_insert(status);
        }
    }

    /// A fused command's data is in: wait for the partner's, then run the pair.
    fn fused_ready(&mut self, slot: u16) {
        let s = &mut self.slots[usize::from(slot)];
        if let Some(status) = s.fuse_abort {
            self.finish(slot, status);
            return;
        }
        s.state = SlotState::AwaitPartner;
        let partner = s.fuse_partner;
        let first = if s.fuse == Fuse::First { slot } else { partner };
        if partner != NO_SLOT && self.slots[usize::from(partner)].state == SlotState::AwaitPartner {
            self.run_fused(first);
        }
    }

    /// Takes the range lock and starts the Compare of the pair whose first half is `first`
    /// (or leaves it waiting for the lock, the writes it must outlast, or a buffer).
    fn run_fused(&mut self, first: u16) {
        let second = self.slots[usize::from(first)].fuse_partner;
        if second == NO_SLOT {
            return;
        }
        let c1 = self.slots[usize::from(first)].cmd;
        let c2 = self.slots[usize::from(second)].cmd;
        let r1 = gyre_nvme::RwCommand::from_command(&c1);
        let r2 = gyre_nvme::RwCommand::from_command(&c2);
        let max_io = self.target.options.max_io_size as usize;
        let slots = &mut self.slots;
        let pool = &mut self.pool;
        let step: Result<bool, Status> = (|| {
            if c1.opcode != OPC_COMPARE
                || c2.opcode != OPC_WRITE
                || c1.nsid != c2.nsid
                || r1.slba != r2.slba
                || r1.nlb != r2.nlb
            {
                return Err(Status::INVALID_FIELD.with_dnr());
            }
            let q = self.queue.as_mut().ok_or(Status::COMMAND_SEQUENCE_ERROR)?;
            if !q.ctrl.is_ready() {
                return Err(Status::COMMAND_SEQUENCE_ERROR);
            }
            let ns = lookup(q, c1.nsid)?;
            let blocks = u64::from(r1.nlb);
            check_range(ns, r1.slba, blocks)?;
            let len = r1.nlb as usize * ns.block_size;
            if len > max_io {
                return Err(Status::INVALID_FIELD.with_dnr());
            }
            if slots[usize::from(first)].data_len < len || slots[usize::from(second)].data_len < len
            {
                return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
            }
            let lock = ns.chan.info().range_lock();
            let s1 = &mut slots[usize::from(first)];
            if s1.range.is_none() {
                match lock.try_acquire(r1.slba, blocks) {
                    Some(guard) => s1.range = Some((guard, ns.ns.clone())),
                    None => return Ok(false),
                }
            }
            // Writes admitted before the lock was published must be done before we read.
            if !s1.range.as_mut().is_some_and(|(g, _)| lock.drained(g)) {
                return Ok(false);
            }
            trim(&mut s1.buf, len);
            s1.data_len = len;
            let op = if ns.chan.info().supports(IoOp::Compare) {
                IoOp::Compare
            } else {
                let Some(read_buf) = pool.try_alloc(len) else {
                    return Ok(false);
                };
                s1.aux = std::mem::replace(&mut s1.buf, read_buf);
                IoOp::Read
            };
            let req = IoRequest::new(
                op,
                r1.slba,
                blocks,
                std::mem::take(&mut s1.buf),
                u64::from(first),
            );
            s1.outstanding = 1;
            s1.state = SlotState::Executing;
            ns.chan.submit(req);
            Ok(true)
        })();
        match step {
            Ok(true) => {}
            Ok(false) => {
                self.slots[usize::from(first)].state = SlotState::AwaitRange;
                self.waiting_range.push_back(first);
            }
            Err(status) => self.end_fused(first, second, status, Status::ABORTED_FAILED_FUSED),
        }
    }

    /// A bdev step of a fused pair is done: after the Compare, the Write (if it matched);
    /// after the Write, both completions.
    fn fused_step_done(&mut self, slot: u16) {
        let s = &mut self.slots[usize::from(slot)];
        let partner = s.fuse_partner;
        if s.fuse != Fuse::First {
            let status = s.cqe.status;
            self.end_fused(partner, slot, Status::SUCCESS, status);
            return;
        }
        let (first, second) = (slot, partner);
        let mut status = s.cqe.status;
        if !s.aux.is_empty() {
            if status.is_success() && !sg_equal(&s.buf, &s.aux, s.data_len) {
                status = Status::COMPARE_FAILURE.with_dnr();
            }
            s.aux = SgList::new();
        }
        if !status.is_success() {
            self.end_fused(first, second, status, Status::ABORTED_FAILED_FUSED);
            return;
        }
        let cmd = self.slots[usize::from(second)].cmd;
        let rw = gyre_nvme::RwCommand::from_command(&cmd);
        let started = match self.queue.as_mut().map(|q| lookup(q, cmd.nsid)) {
            Some(Ok(ns)) => {
                let s2 = &mut self.slots[usize::from(second)];
                let len = rw.nlb as usize * ns.block_size;
                trim(&mut s2.buf, len);
                s2.data_len = len;
                // Under the range lock: this write is not gated by it.
                let mut req = IoRequest::new(
                    IoOp::Write,
                    rw.slba,
                    u64::from(rw.nlb),
                    std::mem::take(&mut s2.buf),
                    u64::from(second),
                );
                req.flags = IoFlags { fua: rw.fua };
                s2.outstanding = 1;
                s2.state = SlotState::Executing;
                ns.chan.submit(req);
                Ok(())
            }
            Some(Err(st)) => Err(st),
            None => Err(Status::COMMAND_SEQUENCE_ERROR),
        };
        if let Err(st) = started {
            self.end_fused(first, second, Status::ABORTED_FAILED_FUSED, st);
        }
    }

    /// Releases the pair's range and completes both halves.
    fn end_fused(&mut self, first: u16, second: u16, first_status: Status, second_status: Status) {
        for slot in [first, second] {
            if let Some(s) = self.slots.get_mut(usize::from(slot)) {
                s.fuse_partner = NO_SLOT;
                if let Some((guard, ns)) = s.range.take() {
                    ns.desc.info().range_lock().release(guard);
                }
            }
        }
        if usize::from(first) < self.slots.len() {
            self.finish(first, first_status);
        }
        if usize::from(second) < self.slots.len() {
            self.finish(second, second_status);
        }
    }

    /// Retries slots that waited for a range lock (or a buffer to compare into).
    fn retry_ranges(&mut self) -> bool {
        let before = self.waiting_range.len();
        for _ in 0..before {
            let Some(slot) = self.waiting_range.pop_front() else {
                break;
            };
            let s = &self.slots[usize::from(slot)];
            if s.state != SlotState::AwaitRange {
                continue;
            }
            if s.fuse == Fuse::First {
                self.run_fused(slot);
            } else {
                self.io(slot);
            }
        }
        self.waiting_range.len() < before
    }

    // --- responses --------------------------------------------------------------------------

    /// Completes a command with `status`: queues its data (reads) and response.
    fn finish(&mut self, slot: u16, status: Status) {
        let s = &mut self.slots[usize::from(slot)];
        if status != Status::SUCCESS || s.cqe.status.is_success() {
            s.cqe.status = status;
        }
        let failed = !s.cqe.status.is_success();
        if s.fuse != Fuse::Normal && failed {
            // A fused command that fails takes its partner with it.
            let partner = std::mem::replace(&mut s.fuse_partner, NO_SLOT);
            if partner != NO_SLOT {
                self.slots[usize::from(partner)].fuse_partner = NO_SLOT;
                self.abort_fused(partner, Status::ABORTED_FAILED_FUSED);
            } else if self.fused_first == slot {
                self.fused_first = NO_SLOT;
                self.fused_first_failed = true;
            }
        }
        self.respond(slot);
    }

    fn respond(&mut self, slot: u16) {
        let rules = self.rules;
        let (sq_head, success_flag_ok) = match self.queue.as_ref() {
            Some(q) => (
                q.sq_head,
                q.sq_flow_disabled && self.target.options.c2h_success,
            ),
            None => (0, false),
        };
        let s = &mut self.slots[usize::from(slot)];
        s.state = SlotState::Sending;
        s.cqe.sqhd = sq_head;
        let ok = s.cqe.status.is_success();
        let sends_data = ok && !s.host_to_ctrl && s.data_len > 0;
        // The response capsule may be skipped when C2HData says SUCCESS and the completion
        // carries nothing else (dw0/dw1 zero).
        let skip_resp = sends_data && success_flag_ok && s.cqe.dw0 == 0 && s.cqe.dw1 == 0;
        let mut entries: SmallVec<[(*const u8, usize); 12]> = SmallVec::new();
        if sends_data {
            let len = s.data_len;
            let c2h = C2hData {
                cccid: s.cmd.cid,
                datao: 0,
                datal: len as u32,
                last: true,
                success: skip_resp,
            };
            // The area fits the header, its digest and padding to any HPDA (≤ 128 bytes).
            let Ok(hdr) = c2h.encode(&rules, &mut s.tx[TX_DATA_HDR..TX_DDGST]) else {
                tracing::error!(id = self.id, "nvmf: C2HData header does not fit; closing");
                self.close("C2HData header overflow");
                return;
            };
            entries.push((s.tx[TX_DATA_HDR..].as_ptr(), hdr.len));
            let mut left = len;
            for seg in s.buf.segments() {
                if left == 0 {
                    break;
                }
                let take = seg.len().min(left);
                entries.push((seg.as_ptr(), take));
                left -= take;
            }
            if hdr.data_digest {
                // The buffer holds `len` bytes (it was sized for the command).
                let d = sg_data_digest(&s.buf, 0, len).unwrap_or(!0);
                s.tx[TX_DDGST..TX_DDGST + 4].copy_from_slice(&d.to_le_bytes());
                entries.push((s.tx[TX_DDGST..].as_ptr(), 4));
            }
        }
        if !skip_resp {
            let resp = CapsuleResp { cqe: s.cqe };
            let n = resp.encode(&rules, &mut s.tx[TX_RESP..TX_R2T]).unwrap_or(0);
            entries.push((s.tx[TX_RESP..].as_ptr(), n));
        }
        if self.sendq.room() < entries.len() {
            // Cannot happen with the queue sized for every slot; refuse loudly rather than
            // corrupt the stream.
            tracing::error!(
                id = self.id,
                "nvmf: send queue full; closing the connection"
            );
            self.close("send queue overflow");
            return;
        }
        let last = entries.len() - 1;
        for (i, (ptr, len)) in entries.into_iter().enumerate() {
            let cookie = if i == last {
                u32::from(slot)
            } else {
                gyre_net::NO_COOKIE
            };
            // SAFETY: slot memory (tx area and pool buffers) stays put until this cookie is
            // reported and the slot is freed.
            unsafe { self.sendq.push(ptr, len, cookie) };
        }
    }

    /// The last PDU of a command is in the kernel: free its slot.
    fn release_slot(&mut self, slot: u16) {
        let Some(s) = self.slots.get_mut(usize::from(slot)) else {
            return;
        };
        if s.state == SlotState::Free {
            return;
        }
        let cid = s.cmd.cid;
        let conflicted = s.partner == CID_CONFLICT;
        s.state = SlotState::Free;
        s.buf = SgList::new();
        s.aux = SgList::new();
        s.data_len = 0;
        s.partner = NO_SLOT;
        s.fuse = Fuse::Normal;
        s.fuse_partner = NO_SLOT;
        s.fuse_abort = None;
        if let Some((guard, ns)) = s.range.take() {
            ns.desc.info().range_lock().release(guard);
        }
        if !conflicted {
            self.set_cid(cid, false);
        }
        self.free.push(slot);
    }

    // --- the poll ---------------------------------------------------------------------------

    /// Everything but reading: completions, buffers, events, output, teardown.
    pub(crate) fn progress(&mut self, sockets: &mut PollGroup, token: u64) -> ConnStatus {
        let mut busy = false;
        if self.phase == Phase::Ready {
            if let Some(q) = self.queue.as_mut() {
                if q.ctrl.is_failed() {
                    self.close("controller torn down");
                } else if q.qid != 0 && !q.ctrl.is_ready() {
                    self.close("controller disabled");
                } else if q.qid != 0 && q.ns_generation != q.ctrl.subsystem.generation() {
                    refresh_namespaces(q, &self.listener, &mut self.retiring);
                }
            }
        }
        busy |= self.poll_io();
        if self.phase == Phase::Ready {
            busy |= self.retry_buffers();
            busy |= self.retry_ranges();
            busy |= self.deliver_events();
            if self.rx_pending || matches!(self.rx, Rx::AwaitBuffer { .. }) {
                busy = true;
                self.receive();
            }
        }
        if !self.sendq.is_empty() && !self.write_blocked && self.phase != Phase::Draining {
            busy = true;
            let mut sent: SmallVec<[u32; 64]> = SmallVec::new();
            let outcome = self.sendq.flush(&self.socket, |c| sent.push(c));
            for c in sent {
                self.release_slot(c as u16);
            }
            match outcome {
                Ok(FlushOutcome::Empty) => {}
                Ok(FlushOutcome::Blocked) => self.write_blocked = true,
                Err(e) => {
                    tracing::info!(id = self.id, peer = %self.peer, error = %e, "nvmf: send failed");
                    self.close("send error");
                }
            }
        }
        // Ask for write readiness only while output is stuck.
        let want_write = self.write_blocked && !self.sendq.is_empty();
        if want_write != self.interest_write && self.phase != Phase::Draining {
            let interest = if want_write {
                Interest::READ_WRITE
            } else {
                Interest::READ
            };
            if sockets.modify(&self.socket, token, interest).is_ok() {
                self.interest_write = want_write;
            }
        }
        if self.sendq.is_empty() && (self.phase == Phase::Terminating || self.close_after_flush) {
            self.close(if self.close_after_flush {
                "host disconnected"
            } else {
                "terminated"
            });
        }
        if self.phase == Phase::Draining {
            self.sendq.clear(|_| {});
            let in_flight = self.retiring.iter().map(|c| c.0.in_flight()).sum::<usize>()
                + self.queue.as_ref().map_or(0, |q| {
                    q.namespaces
                        .iter()
                        .flatten()
                        .map(|n| n.chan.in_flight())
                        .sum()
                });
            if in_flight == 0 {
                self.phase = Phase::Finished;
                tracing::debug!(
                    id = self.id,
                    why = self.close_reason.unwrap_or(""),
                    "nvmf: drained"
                );
                return ConnStatus::Finished;
            }
            return ConnStatus::Busy;
        }
        if busy {
            ConnStatus::Busy
        } else {
            ConnStatus::Idle
        }
    }

    fn retry_buffers(&mut self) -> bool {
        let mut any = false;
        while let Some(&slot) = self.waiting_buffers.front() {
            let s = &self.slots[usize::from(slot)];
            let Some(buf) = self.pool.try_alloc(s.data_len) else {
                break;
            };
            self.waiting_buffers.pop_front();
            any = true;
            let s = &mut self.slots[usize::from(slot)];
            if s.host_to_ctrl {
                drop(buf);
                self.request_data(slot);
            } else {
                s.buf = buf;
                s.state = SlotState::Executing;
                self.io(slot);
            }
        }
        any
    }

    /// Sends a C2HTermReq for a fatal transport error, then closes.
    fn terminate(&mut self, error: PduError) {
        self.target
            .fatal_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            id = self.id,
            peer = %self.peer,
            fes = ?error.fes(),
            fei = error.fei(),
            %error,
            "nvmf: fatal transport error; terminating the connection"
        );
        // The offending PDU's header, as far as it was received (staging is untouched
        // since it was parsed).
        let staged = &self.staging[self.header_at.min(self.re)..self.re];
        let hlen = staged.get(2).map_or(0, |&h| usize::from(h)).max(8);
        let offending = &staged[..staged.len().min(hlen).min(MAX_TERM_REQ_DATA)];
        let n = TermReq::for_error(&error)
            .and_then(|t| {
                t.encode(Role::Controller, offending, &mut self.conn_tx[..])
                    .ok()
            })
            .unwrap_or(0);
        if n == 0 {
            self.close("fatal transport error");
            return;
        }
        // SAFETY: conn_tx stays alive and unchanged until the connection ends.
        unsafe {
            self.sendq
                .push(self.conn_tx.as_ptr(), n, gyre_net::NO_COOKIE)
        };
        self.phase = Phase::Terminating;
        self.release_queue();
    }

    /// Keep-alive expiry: the admin queue of a silent host tears its controller down.
    pub(crate) fn check_keep_alive(&mut self) {
        let Some(q) = self.queue.as_ref() else {
            return;
        };
        if q.qid == 0 && q.ctrl.keep_alive_expired() {
            tracing::warn!(
                id = self.id,
                peer = %self.peer,
                cntlid = q.ctrl.cntlid,
                kato_ms = q.ctrl.kato_ms(),
                "nvmf: keep-alive timeout expired"
            );
            q.ctrl.fail("keep-alive timeout");
            self.close("keep-alive timeout");
        }
    }
}

/// A slot whose command reused a CID in flight: its response must not clear the CID.
const CID_CONFLICT: u16 = u16::MAX - 1;

const OPC_FLUSH: u8 = 0x00;
const OPC_WRITE: u8 = 0x01;
const OPC_READ: u8 = 0x02;
const OPC_COMPARE: u8 = 0x05;
const OPC_WRITE_ZEROES: u8 = 0x08;
const OPC_DSM: u8 = 0x09;

/// Whether the first `len` bytes of two buffers are equal.
fn sg_equal(a: &SgList, b: &SgList, len: usize) -> bool {
    let mut equal = a.len() >= len && b.len() >= len;
    let mut at = 0;
    if equal {
        a.for_each_chunk(0, len, |ca| {
            let mut off = 0;
            b.for_each_chunk(at, ca.len(), |cb| {
                equal &= ca[off..off + cb.len()] == *cb;
                off += cb.len();
            });
            at += ca.len();
        });
    }
    equal
}

/// Marks a bdev request whose completion ends a count in its channel's [`WriteGate`].
const TAG_GATED: u64 = 1 << 32;

/// Admits writes of `ranges` (LBA, blocks; empty ranges ignored) against the bdev's range
/// lock: counts them in the channel's gate first, then looks for a held range (the order the
/// lock relies on), and takes the counts back if one is blocked. Each admitted range's
/// request must carry [`TAG_GATED`].
fn admit_writes(ns: &NsChannel, ranges: &[(u64, u64)]) -> bool {
    let n = ranges.iter().filter(|r| r.1 > 0).count();
    for _ in 0..n {
        ns.gate.begin();
    }
    let lock = ns.chan.info().range_lock();
    if ranges
        .iter()
        .all(|&(lba, blocks)| blocks == 0 || lock.write_may_proceed(lba, blocks))
    {
        return true;
    }
    for _ in 0..n {
        ns.gate.end();
    }
    false
}

fn lookup(q: &mut QueueBinding, nsid: u32) -> Result<&mut NsChannel, Status> {
    let idx = (nsid as usize).wrapping_sub(1);
    match q.namespaces.get_mut(idx) {
        Some(Some(ns)) => {
            if ns.accessible {
                Ok(ns)
            } else {
                Err(ns.ana_status)
            }
        }
        _ => Err(Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr()),
    }
}

fn check_range(ns: &NsChannel, slba: u64, nlb: u64) -> Result<(), Status> {
    let blocks = ns.chan.info().num_blocks();
    match slba.checked_add(nlb) {
        Some(end) if end <= blocks => Ok(()),
        _ => Err(Status::LBA_OUT_OF_RANGE.with_dnr()),
    }
}

/// Shortens an SgList to `len` bytes (host data may be longer than the blocks named).
fn trim(buf: &mut SgList, len: usize) {
    let mut left = len;
    for seg in buf.segments_mut() {
        let take = seg.len().min(left);
        seg.set_len(take);
        left -= take;
    }
}

/// The NVMe status for a failed bdev request.
fn io_status(op: IoOp, e: IoError) -> Status {
    match e {
        IoError::OutOfRange { .. } => Status::LBA_OUT_OF_RANGE.with_dnr(),
        IoError::Unsupported(_) => Status::INVALID_OPCODE.with_dnr(),
        IoError::BufferTooSmall { .. } | IoError::Empty(_) => Status::INVALID_FIELD.with_dnr(),
        IoError::Miscompare { .. } => Status::COMPARE_FAILURE.with_dnr(),
        IoError::NoSpace => Status::CAPACITY_EXCEEDED.with_dnr(),
        IoError::Aborted => Status::ABORTED_BY_REQUEST,
        IoError::ReadOnly => Status::NAMESPACE_WRITE_PROTECTED.with_dnr(),
        IoError::Removed => Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr(),
        IoError::Device(_) => match op {
            IoOp::Read | IoOp::Compare => Status::UNRECOVERED_READ_ERROR,
            _ => Status::WRITE_FAULT,
        },
    }
}

/// Rebuilds a queue's namespace table after the subsystem changed: channels of namespaces
/// still present are kept, new ones opened, removed ones retired once idle.
fn refresh_namespaces(
    q: &mut QueueBinding,
    listener: &ListenAddress,
    retiring: &mut Vec<(BdevChannel, Arc<WriteGate>)>,
) {
    let sub = q.ctrl.subsystem.clone();
    q.ns_generation = sub.generation();
    if sub.kind == SubsystemKind::Discovery {
        return;
    }
    let max = sub.max_namespaces as usize;
    if q.namespaces.len() < max {
        q.namespaces.resize_with(max, || None);
    }
    let current = sub.namespaces();
    let listeners = sub.listeners();
    let ana = listeners
        .iter()
        .find(|(a, _)| a == listener)
        .map(|(_, l)| l.clone());
    for idx in 0..q.namespaces.len() {
        let nsid = idx as u32 + 1;
        let want = current.iter().find(|n| n.nsid == nsid);
        let keep = match (&q.namespaces[idx], want) {
            (Some(have), Some(w)) => Arc::ptr_eq(&have.ns, w),
            _ => false,
        };
        if !keep {
            if let Some(old) = q.namespaces[idx].take() {
                if old.chan.in_flight() > 0 {
                    retiring.push((old.chan, old.gate));
                }
            }
            if let Some(w) = want {
                match w.desc.channel() {
                    Ok(chan) => {
                        q.namespaces[idx] = Some(NsChannel {
                            gate: w.desc.info().range_lock().new_gate(),
                            block_size: w.desc.info().block_size() as usize,
                            ns: w.clone(),
                            chan,
                            accessible: true,
                            ana_status: Status::SUCCESS,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(nsid, error = %e, "nvmf: cannot open a channel for a namespace");
                    }
                }
            }
        }
        if let Some(ns) = q.namespaces[idx].as_mut() {
            let state = ana
                .as_ref()
                .map(|l| l.state(ns.ns.ana_group))
                .unwrap_or(crate::config::AnaState::Inaccessible);
            ns.accessible = state.serves_io();
            ns.ana_status = match state {
                crate::config::AnaState::PersistentLoss => {
                    Status::ASYMMETRIC_ACCESS_PERSISTENT_LOSS
                }
                crate::config::AnaState::Change => Status::ASYMMETRIC_ACCESS_TRANSITION,
                _ => Status::ASYMMETRIC_ACCESS_INACCESSIBLE,
            };
        }
    }
}

/// Why the receive loop stopped early.
enum RxStop {
    /// A fatal transport error: send C2HTermReq and close.
    Fault(PduError),
    /// The socket is gone.
    Closed(&'static str),
}

/// In-capsule data accepted on the admin queue (Connect data is 1 KiB) even when I/O queues
/// take less.
const ADMIN_IN_CAPSULE_MIN: u32 = 1024;
