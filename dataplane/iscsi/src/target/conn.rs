//! One iSCSI connection on the target side (and, with MaxConnections=1, its session).
//!
//! The connection is a state machine driven by its poll group: `on_ready` reads PDUs
//! (headers and small data segments through a staging buffer; immediate data and Data-Out
//! straight into the pool buffers of the task they belong to) and starts work; `progress`
//! polls the LUN channels, turns completions into Data-In / SCSI Response PDUs sent from the
//! channel's own buffers, and flushes everything produced with one vectored send.
//!
//! Tasks live in slots preallocated for the session's command window; the slot index (with a
//! generation) is the task's LUN-channel tag and its Target Transfer Tag. PDU headers are
//! written into a ring of send memory that is released, in order, as the socket takes the
//! bytes; nothing on the I/O path allocates or locks.

use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre_net::{FlushOutcome, Interest, PollGroup, Readiness, Recv, SendQueue, TcpConnection};
use gyre_reactor::{PoolCache, SgList};
use gyre_scsi::{
    Asc, Cdb, DataDirection, LunChannel, NexusId, ResetKind, ScsiCompletion, ScsiLun, ScsiStatus,
    ScsiTask, Sense, SenseBuf, SenseKey, TaskAttr,
};
use smallvec::SmallVec;

use crate::bhs::{
    AsyncEvent, AsyncMessage, Bhs, BhsBody, BhsError, DataIn, DataOut, LoginRequest, LogoutRequest,
    LogoutResponse, LogoutResponseCode, NopIn, NopOut, Opcode, R2t, Reject, RejectReason,
    ScsiCommand, ScsiResponse, ScsiResponseCode, TaskAttribute, TaskMgmtRequest, TaskMgmtResponse,
    TextRequest, TextResponse, TmfFunction, TmfResponse, BHS_LEN, RESERVED_TAG,
};
use crate::digest::{padding, DataDigest, DIGEST_LEN};
use crate::framing::{check_header_digest, encode_header, parse_command_ahs, Digests, PduLayout};
use crate::login::{TargetLogin, TargetLoginConfig, TargetLoginStep};
use crate::lun::Lun;
use crate::negotiate::{SessionParams, SessionType};
use crate::sendtargets::{build_response, DiscoveredTarget, Portal, SendTargetsQuery};
use crate::text::{TextLimits, TextList, TextReassembly, NOT_UNDERSTOOD};

use super::login::LoginContext;
use super::{initiator_port_name, lock, Shared, Target};

/// What a poll of the connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnStatus {
    Busy,
    Idle,
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Login,
    FullFeature,
    /// The last PDUs (a login reject, a logout response) are going out; then close.
    Closing,
    /// The socket is closed; waiting for LUN-channel tasks in flight to come back.
    Draining,
    Finished,
}

/// What the bytes of a data segment being received belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataKind {
    Immediate,
    DataOut { final_: bool, solicited: bool },
}

/// Where received bytes go next.
#[derive(Debug, Clone, Copy)]
enum Rx {
    Header,
    /// A PDU whose data segment is handled from staging (login, text, NOP-Out, ...).
    Staged {
        bhs: Bhs,
        layout: PduLayout,
    },
    /// Data of a task: `land` bytes into its buffer at `off`, then `skip` bytes nobody
    /// wants, then `pad`, then the digest when one is in force.
    Land {
        task: u16,
        off: usize,
        land: usize,
        skip: usize,
        pad: usize,
        digest: Option<DataDigest>,
        kind: DataKind,
        len: usize,
    },
    /// Bytes of a PDU we drop.
    Discard {
        remaining: usize,
    },
    /// A write's buffer could not be allocated: wait before reading on.
    AwaitBuffer {
        task: u16,
        imm: usize,
        pad: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    Free,
    /// Receiving data-out (immediate, unsolicited, R2T).
    Collecting,
    /// In the LUN channel.
    Executing,
    /// Completed; Data-In / response PDUs being queued.
    Responding,
    /// Everything queued; freed when the socket took the last byte.
    Sent,
}

struct Task {
    state: TaskState,
    gen: u16,
    itt: u32,
    cmd_sn: u32,
    lun: Lun,
    /// Index into the connection's LUN table, or `NO_LUN`.
    lun_slot: u16,
    cdb: Cdb,
    attr: TaskAttr,
    read: bool,
    write: bool,
    edtl: u32,
    direction: DataDirection,
    transfer_len: u64,
    /// The command failed before execution (bad CDB, data digest): this sense answers it.
    early_sense: Option<Sense>,
    /// Data-out bytes kept (the buffer's length).
    want: usize,
    /// Data-out bytes received (including bytes skipped beyond `want`).
    received: usize,
    unsolicited_limit: usize,
    unsolicited_done: bool,
    exp_data_sn: u32,
    r2t_sn: u32,
    r2t_next: usize,
    r2t_outstanding: u16,
    buf: SgList,
    /// Completion.
    status: ScsiStatus,
    sense: SenseBuf,
    data_in: SgList,
    data_in_len: usize,
    /// Data-In progress.
    din_total: usize,
    din_sent: usize,
    din_burst: usize,
    data_sn: u32,
    aborted: bool,
    tmf: Option<u32>,
}

impl Task {
    fn new() -> Task {
        Task {
            state: TaskState::Free,
            gen: 0,
            itt: 0,
            cmd_sn: 0,
            lun: Lun::default(),
            lun_slot: NO_LUN,
            cdb: Cdb::new(&[0]),
            attr: TaskAttr::Simple,
            read: false,
            write: false,
            edtl: 0,
            direction: DataDirection::None,
            transfer_len: 0,
            early_sense: None,
            want: 0,
            received: 0,
            unsolicited_limit: 0,
            unsolicited_done: true,
            exp_data_sn: 0,
            r2t_sn: 0,
            r2t_next: 0,
            r2t_outstanding: 0,
            buf: SgList::new(),
            status: ScsiStatus::Good,
            sense: SenseBuf::EMPTY,
            data_in: SgList::new(),
            data_in_len: 0,
            din_total: 0,
            din_sent: 0,
            din_burst: 0,
            data_sn: 0,
            aborted: false,
            tmf: None,
        }
    }

    fn tag(&self, idx: u16) -> u32 {
        (u32::from(self.gen) << 16) | u32::from(idx)
    }
}

const NO_LUN: u16 = u16::MAX;

/// One LUN as this connection uses it.
struct ConnLun {
    number: u16,
    lun: Arc<ScsiLun>,
    channel: LunChannel,
    /// Removed from the target; kept until its tasks come back.
    retired: bool,
}

/// A task management function waiting for aborted tasks to come back.
struct PendingTmf {
    id: u32,
    itt: u32,
    response: TmfResponse,
    waiting: u32,
    close_after: bool,
}

/// Ring of send memory for PDU headers and small data segments. Space is handed out in
/// order and released in order (the send queue retires entries first-in first-out), so a
/// release only needs the end offset of the allocation.
struct TxArena {
    buf: Box<[u8]>,
    head: usize,
    tail: usize,
    live: usize,
}

impl TxArena {
    fn new(size: usize) -> TxArena {
        TxArena {
            buf: vec![0u8; size].into_boxed_slice(),
            head: 0,
            tail: 0,
            live: 0,
        }
    }

    fn alloc(&mut self, len: usize) -> Option<usize> {
        let cap = self.buf.len();
        if self.live == 0 {
            self.head = 0;
            self.tail = 0;
        }
        let at = if self.head >= self.tail {
            if cap - self.head >= len {
                self.head
            } else if self.tail > len {
                0
            } else {
                return None;
            }
        } else if self.tail - self.head > len {
            self.head
        } else {
            return None;
        };
        self.head = at + len;
        self.live += 1;
        Some(at)
    }

    fn release(&mut self, end: usize) {
        self.tail = end;
        self.live = self.live.saturating_sub(1);
    }

    fn reset(&mut self) {
        self.head = 0;
        self.tail = 0;
        self.live = 0;
    }
}

const ARENA_COOKIE: u32 = 1 << 31;
/// Receive staging: headers and small data segments pass through here.
const STAGING: usize = 192 * 1024;
const ARENA: usize = 1024 * 1024;
/// Most PDUs handled per readiness event before others get their turn.
const RX_BUDGET: usize = 128;
/// Task slots kept for immediate commands, outside the CmdSN window.
const IMMEDIATE_RESERVE: u32 = 8;
/// A login must finish within this time.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an initiator asked to log out (target removed) has to do so.
const LOGOUT_GRACE: Duration = Duration::from_secs(3);
/// Largest text response kept for continuation.
const MAX_TEXT_RESPONSE: usize = 64 * 1024;

/// The session state of a connection in Full Feature Phase.
struct Session {
    params: SessionParams,
    tsih: u16,
    target: Option<Arc<Target>>,
    kill: Arc<AtomicBool>,
    nexus: Option<NexusId>,
    lun_generation: u64,
}

/// Why the receive loop stopped early.
enum RxStop {
    Closed(&'static str),
}

/// One iSCSI connection of the target.
pub(crate) struct IscsiConnection {
    id: u64,
    socket: TcpConnection,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    portal_group_tag: u16,
    reactor: usize,
    shared: Arc<Shared>,
    pool: PoolCache,
    phase: Phase,
    login: TargetLogin,
    session: Option<Session>,
    digests: Digests,
    rx: Rx,
    staging: Box<[u8]>,
    rs: usize,
    re: usize,
    tasks: Vec<Task>,
    free: Vec<u16>,
    luns: Vec<Option<ConnLun>>,
    completions: Vec<ScsiCompletion>,
    /// Tasks with Data-In or responses still to queue.
    responding: VecDeque<u16>,
    /// Tasks waiting to send R2Ts.
    r2t_waiting: VecDeque<u16>,
    tmfs: Vec<PendingTmf>,
    next_tmf_id: u32,
    /// Tasks inside LUN channels. While there are any the connection counts as busy, so a
    /// hybrid-mode reactor keeps polling the steps of multi-step commands (UNMAP, WRITE SAME)
    /// instead of sleeping between them.
    executing: usize,
    sendq: SendQueue,
    arena: TxArena,
    write_blocked: bool,
    interest_write: bool,
    stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    text: TextReassembly,
    /// The rest of a text response sent in pieces, and the TTT that asks for it.
    text_pending: Vec<u8>,
    text_pending_at: usize,
    text_ttt: u32,
    next_ttt: u32,
    /// NOP-In keepalive: the TTT awaited and its deadline.
    nop_pending: Option<(u32, Instant)>,
    /// The target went away: an Asynchronous Message asked for a logout, which must come by
    /// this time.
    logout_deadline: Option<Instant>,
    rx_seen: bool,
    last_rx: Instant,
    started: Instant,
    close_reason: Option<&'static str>,
}

fn sn_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn attr_of(a: TaskAttribute) -> TaskAttr {
    match a {
        TaskAttribute::Untagged | TaskAttribute::Simple => TaskAttr::Simple,
        TaskAttribute::Ordered => TaskAttr::Ordered,
        TaskAttribute::HeadOfQueue => TaskAttr::HeadOfQueue,
        TaskAttribute::Aca => TaskAttr::Aca,
    }
}

/// Queues one PDU: header (and `data`, copied) in the arena, or header in the arena and the
/// data straight from `sg`; padding and data digest after. Returns false when the arena or
/// the send queue has no room (nothing is queued then).
#[allow(clippy::too_many_arguments)]
fn queue_pdu(
    arena: &mut TxArena,
    sendq: &mut SendQueue,
    digests: Digests,
    bhs: &Bhs,
    data: &[u8],
    sg: Option<(&SgList, usize, usize)>,
    task_cookie: Option<u16>,
) -> bool {
    let data_len = match sg {
        Some((_, _, len)) => len,
        None => data.len(),
    };
    let hlen = BHS_LEN + if digests.header { DIGEST_LEN } else { 0 };
    let pad = padding(data_len);
    let dd = if digests.data && data_len > 0 {
        DIGEST_LEN
    } else {
        0
    };
    let copied = if sg.is_some() { 0 } else { data.len() };
    let total = hlen + copied + pad + dd;
    let segs = sg.map_or(0, |(s, off, len)| count_segments(s, off, len));
    if sendq.room() < segs + 4 {
        return false;
    }
    let Some(at) = arena.alloc(total) else {
        return false;
    };
    let mut b = *bhs;
    b.data_segment_len = data_len as u32;
    let out = &mut arena.buf[at..at + total];
    if encode_header(&b, &[], digests, &mut out[..hlen]).is_err() {
        arena.release(at + total);
        return false;
    }
    out[hlen..hlen + copied].copy_from_slice(data);
    let tail = hlen + copied;
    out[tail..tail + pad].fill(0);
    if dd > 0 {
        let mut d = DataDigest::new();
        match sg {
            Some((s, off, len)) => {
                d.update_sg(s, off, len);
            }
            None => d.update(data),
        }
        out[tail + pad..tail + pad + 4].copy_from_slice(&d.finish_wire());
    }
    let base = arena.buf.as_ptr();
    // SAFETY: arena memory is not reused until the cookie pushed last is retired by the send
    // queue (FIFO), and pool buffers of `sg` belong to a task slot freed only after its own
    // cookie, pushed later, is retired.
    unsafe {
        let p = base.add(at);
        match sg {
            None => {
                sendq.push(p, total, gyre_net::NO_COOKIE);
            }
            Some((s, off, len)) => {
                sendq.push(p, hlen, gyre_net::NO_COOKIE);
                let mut skip = off;
                let mut left = len;
                for seg in s.segments() {
                    if left == 0 {
                        break;
                    }
                    let bytes = seg.as_slice();
                    if skip >= bytes.len() {
                        skip -= bytes.len();
                        continue;
                    }
                    let take = (bytes.len() - skip).min(left);
                    sendq.push(bytes.as_ptr().add(skip), take, gyre_net::NO_COOKIE);
                    left -= take;
                    skip = 0;
                }
                if pad + dd > 0 {
                    sendq.push(p.add(tail), pad + dd, gyre_net::NO_COOKIE);
                }
            }
        }
        sendq.push(p, 0, ARENA_COOKIE | (at + total) as u32);
        if let Some(t) = task_cookie {
            sendq.push(p, 0, u32::from(t));
        }
    }
    true
}

fn count_segments(sg: &SgList, off: usize, len: usize) -> usize {
    let mut n = 0;
    sg.for_each_chunk(off, len, |_| n += 1);
    n
}

impl IscsiConnection {
    pub(crate) fn new(
        id: u64,
        socket: TcpConnection,
        peer: SocketAddr,
        _listener: SocketAddr,
        portal_group_tag: u16,
        reactor: usize,
        shared: Arc<Shared>,
    ) -> Self {
        let depth = usize::from(shared.options.queue_depth);
        let pool = gyre_reactor::global_pool()
            .map(|p| p.local())
            .expect("the global buffer pool is initialised before the target starts");
        let login = TargetLogin::new(TargetLoginConfig {
            operational: shared.options.operational.clone(),
            text_limits: TextLimits::default(),
            initial_stat_sn: 1,
            command_window: (depth as u32).saturating_sub(IMMEDIATE_RESERVE).max(1),
            max_login_data_segment: 8192,
        });
        let now = Instant::now();
        IscsiConnection {
            id,
            local: socket.local_addr().ok(),
            socket,
            peer,
            portal_group_tag,
            reactor,
            pool,
            phase: Phase::Login,
            login,
            session: None,
            digests: Digests::default(),
            rx: Rx::Header,
            // A whole data segment of MaxRecvDataSegmentLength (plus header, padding and
            // digest) must fit.
            staging: vec![
                0u8;
                STAGING.max(
                    shared.options.operational.max_recv_data_segment_length as usize + 2048
                )
            ]
            .into_boxed_slice(),
            rs: 0,
            re: 0,
            tasks: (0..depth).map(|_| Task::new()).collect(),
            free: (0..depth as u16).rev().collect(),
            luns: Vec::new(),
            completions: Vec::with_capacity(depth),
            responding: VecDeque::with_capacity(depth),
            r2t_waiting: VecDeque::with_capacity(depth),
            tmfs: Vec::new(),
            next_tmf_id: 1,
            executing: 0,
            sendq: SendQueue::with_capacity(depth * 24 + 64),
            arena: TxArena::new(ARENA),
            write_blocked: false,
            interest_write: false,
            stat_sn: 1,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            text: TextReassembly::new(MAX_TEXT_RESPONSE),
            text_pending: Vec::new(),
            text_pending_at: 0,
            text_ttt: RESERVED_TAG,
            next_ttt: 1,
            nop_pending: None,
            logout_deadline: None,
            rx_seen: false,
            last_rx: now,
            started: now,
            close_reason: None,
            shared,
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

    /// Closes the connection at once (shutdown, protocol violation, session reinstated).
    pub(crate) fn close(&mut self, why: &'static str) {
        if matches!(self.phase, Phase::Draining | Phase::Finished) {
            return;
        }
        self.close_reason.get_or_insert(why);
        tracing::debug!(id = self.id, peer = %self.peer, why, "iscsi: closing connection");
        self.socket.shutdown();
        self.phase = Phase::Draining;
        for l in self.luns.iter_mut().flatten() {
            let nexus = self.session.as_ref().and_then(|s| s.nexus);
            if let Some(n) = nexus {
                l.channel.abort_task_set(n);
            }
        }
    }

    fn close_after_flush(&mut self, why: &'static str) {
        if matches!(self.phase, Phase::Login | Phase::FullFeature) {
            self.close_reason.get_or_insert(why);
            self.phase = Phase::Closing;
        }
    }

    // --- receive ----------------------------------------------------------------------------

    pub(crate) fn on_ready(&mut self, r: Readiness) {
        if r.writable {
            self.write_blocked = false;
        }
        if r.readable || r.closed {
            self.rx_seen = true;
            self.receive();
        }
    }

    fn receive(&mut self) {
        let mut budget = RX_BUDGET;
        while budget > 0 && matches!(self.phase, Phase::Login | Phase::FullFeature) {
            match self.step_rx() {
                Ok(true) => budget -= 1,
                Ok(false) => break,
                Err(RxStop::Closed(why)) => {
                    self.close(why);
                    break;
                }
            }
        }
    }

    /// Reads more bytes into staging, making room for `need` contiguous bytes from `rs`.
    fn fill(&mut self, need: usize) -> Result<bool, RxStop> {
        if self.rs == self.re {
            self.rs = 0;
            self.re = 0;
        } else if self.rs + need > self.staging.len() || self.re == self.staging.len() {
            self.staging.copy_within(self.rs..self.re, 0);
            self.re -= self.rs;
            self.rs = 0;
        }
        if self.re == self.staging.len() {
            return Ok(false);
        }
        match self.socket.recv(&mut self.staging[self.re..]) {
            Ok(Recv::Data(n)) => {
                self.re += n;
                Ok(true)
            }
            Ok(Recv::WouldBlock) => Ok(false),
            Ok(Recv::Closed) => Err(RxStop::Closed("initiator closed the connection")),
            Err(_) => Err(RxStop::Closed("receive error")),
        }
    }

    fn avail(&self) -> usize {
        self.re - self.rs
    }

    fn max_recv_data_segment(&self) -> u32 {
        match &self.session {
            Some(s) => s.params.target_max_recv_data_segment_length,
            None => self.login.max_data_segment(),
        }
    }

    /// One step of the receive state machine. Ok(true) when it made progress.
    fn step_rx(&mut self) -> Result<bool, RxStop> {
        match self.rx {
            Rx::Header => {
                if self.avail() < BHS_LEN {
                    return self.fill(BHS_LEN);
                }
                let mut head = [0u8; BHS_LEN];
                head.copy_from_slice(&self.staging[self.rs..self.rs + BHS_LEN]);
                let layout = PduLayout::from_bhs_bytes(&head, self.digests);
                let need = layout.header_len();
                if self.avail() < need {
                    return self.fill(need);
                }
                if check_header_digest(&self.staging[self.rs..self.rs + need], &layout).is_err() {
                    tracing::warn!(id = self.id, peer = %self.peer, "iscsi: header digest error");
                    return Err(RxStop::Closed("header digest error"));
                }
                if layout.check_data_len(self.max_recv_data_segment()).is_err() {
                    tracing::warn!(
                        id = self.id,
                        peer = %self.peer,
                        len = layout.data_len,
                        "iscsi: data segment longer than MaxRecvDataSegmentLength"
                    );
                    return Err(RxStop::Closed("data segment too long"));
                }
                let bhs = match Bhs::decode(&head) {
                    Ok(b) => b,
                    Err(e) => {
                        self.rs += need;
                        self.rx = Rx::Discard {
                            remaining: layout.data_wire_len(),
                        };
                        if self.phase == Phase::Login {
                            return Err(RxStop::Closed("undecodable PDU during login"));
                        }
                        let reason = match e {
                            BhsError::UnknownOpcode(_) => RejectReason::CommandNotSupported,
                            _ => RejectReason::InvalidPduField,
                        };
                        self.reject(reason, &head);
                        return Ok(true);
                    }
                };
                let ahs_start = self.rs + BHS_LEN;
                let ahs_end = ahs_start + layout.ahs_len;
                let cdb = match &bhs.body {
                    BhsBody::ScsiCommand(c) => {
                        Some(parse_command_ahs(c, &self.staging[ahs_start..ahs_end]))
                    }
                    _ => None,
                };
                self.rs += need;
                self.on_header(head, bhs, layout, cdb)?;
                Ok(true)
            }
            Rx::Staged { bhs, layout } => {
                let need = layout.data_wire_len();
                if self.avail() < need {
                    return self.fill(need);
                }
                let start = self.rs;
                self.rs += need;
                self.rx = Rx::Header;
                if layout.data_digest_len > 0 {
                    let mut d = DataDigest::new();
                    d.update(&self.staging[start..start + layout.data_len]);
                    let at = start + layout.data_len + layout.data_padding;
                    let mut got = [0u8; 4];
                    got.copy_from_slice(&self.staging[at..at + 4]);
                    if d.finish_wire() != got {
                        tracing::warn!(id = self.id, peer = %self.peer, "iscsi: data digest error");
                        let mut head = [0u8; BHS_LEN];
                        bhs.encode(&mut head);
                        self.reject(RejectReason::DataDigestError, &head);
                        return Ok(true);
                    }
                }
                self.on_staged_pdu(bhs, start, layout.data_len)?;
                Ok(true)
            }
            Rx::Discard { remaining } => {
                if self.avail() == 0 && !self.fill(1)? {
                    return Ok(false);
                }
                let n = remaining.min(self.avail());
                self.rs += n;
                self.rx = if n < remaining {
                    Rx::Discard {
                        remaining: remaining - n,
                    }
                } else {
                    Rx::Header
                };
                Ok(true)
            }
            Rx::AwaitBuffer { task, imm, pad } => {
                let want = self.tasks[usize::from(task)].want;
                let Some(buf) = self.pool.try_alloc(want) else {
                    return Ok(false);
                };
                self.tasks[usize::from(task)].buf = buf;
                self.begin_data(task, 0, imm, pad, DataKind::Immediate);
                if imm == 0 {
                    self.rx = Rx::Header;
                    self.after_data(task);
                }
                Ok(true)
            }
            Rx::Land {
                task,
                off,
                land,
                skip,
                pad,
                mut digest,
                kind,
                len,
            } => {
                if land > 0 {
                    let n = self.land(task, off, land)?;
                    if n == 0 {
                        return Ok(false);
                    }
                    if let Some(d) = digest.as_mut() {
                        d.update_sg(&self.tasks[usize::from(task)].buf, off, n);
                    }
                    self.rx = Rx::Land {
                        task,
                        off: off + n,
                        land: land - n,
                        skip,
                        pad,
                        digest,
                        kind,
                        len,
                    };
                    return Ok(true);
                }
                let rest = skip + pad;
                if rest > 0 {
                    if self.avail() == 0 && !self.fill(1)? {
                        return Ok(false);
                    }
                    let n = rest.min(self.avail());
                    let n_skip = n.min(skip);
                    if let Some(d) = digest.as_mut() {
                        d.update(&self.staging[self.rs..self.rs + n_skip]);
                    }
                    self.rs += n;
                    self.rx = Rx::Land {
                        task,
                        off,
                        land,
                        skip: skip - n_skip,
                        pad: pad - (n - n_skip),
                        digest,
                        kind,
                        len,
                    };
                    return Ok(true);
                }
                let mut ok = true;
                if let Some(d) = digest {
                    if self.avail() < DIGEST_LEN {
                        return self.fill(DIGEST_LEN);
                    }
                    let mut got = [0u8; 4];
                    got.copy_from_slice(&self.staging[self.rs..self.rs + 4]);
                    self.rs += 4;
                    ok = d.finish_wire() == got;
                }
                self.rx = Rx::Header;
                self.data_received(task, kind, len, ok);
                Ok(true)
            }
        }
    }

    /// Moves up to `remaining` bytes into the task's buffer at `offset`: first what staging
    /// holds, then straight from the socket (with staging behind the buffer so the next
    /// headers arrive in the same call). Returns bytes landed.
    fn land(&mut self, task: u16, offset: usize, remaining: usize) -> Result<usize, RxStop> {
        let t = &mut self.tasks[usize::from(task)];
        let staged = remaining.min(self.re - self.rs);
        if staged > 0 {
            let src = &self.staging[self.rs..self.rs + staged];
            let mut at = 0;
            t.buf.for_each_chunk_mut(offset, staged, |dst| {
                dst.copy_from_slice(&src[at..at + dst.len()]);
                at += dst.len();
            });
            self.rs += staged;
            return Ok(staged);
        }
        self.rs = 0;
        self.re = 0;
        let mut iov: SmallVec<[IoSliceMut<'_>; 10]> = t
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
            Ok(Recv::Closed) => Err(RxStop::Closed("initiator closed the connection")),
            Err(_) => Err(RxStop::Closed("receive error")),
        }
    }

    /// Starts receiving `len` data bytes of `task` at buffer offset `off` (bytes beyond the
    /// buffer are skipped).
    fn begin_data(&mut self, task: u16, off: usize, len: usize, pad: usize, kind: DataKind) {
        let want = self.tasks[usize::from(task)].want;
        let land = want.saturating_sub(off).min(len);
        let digest = (self.digests.data && len > 0).then(DataDigest::new);
        self.rx = Rx::Land {
            task,
            off,
            land,
            skip: len - land,
            pad,
            digest,
            kind,
            len,
        };
    }

    // --- PDU dispatch -----------------------------------------------------------------------

    fn on_header(
        &mut self,
        head: [u8; BHS_LEN],
        bhs: Bhs,
        layout: PduLayout,
        cdb: Option<Result<crate::framing::CommandAhs, crate::framing::FramingError>>,
    ) -> Result<(), RxStop> {
        let data_wire = layout.data_wire_len();
        if self.phase == Phase::Login {
            if bhs.opcode() != Opcode::LoginRequest {
                return Err(RxStop::Closed("non-login PDU during login"));
            }
            self.rx = Rx::Staged { bhs, layout };
            return Ok(());
        }
        let discovery = self
            .session
            .as_ref()
            .is_some_and(|s| s.params.session_type == SessionType::Discovery);
        match bhs.body {
            BhsBody::ScsiCommand(cmd) => {
                if discovery {
                    self.rx = Rx::Discard {
                        remaining: data_wire,
                    };
                    self.reject(RejectReason::ProtocolError, &head);
                    return Ok(());
                }
                let cdb = match cdb {
                    Some(Ok(c)) => c,
                    _ => {
                        self.rx = Rx::Discard {
                            remaining: data_wire,
                        };
                        self.reject(RejectReason::InvalidPduField, &head);
                        return Ok(());
                    }
                };
                self.on_scsi_command(&head, cmd, cdb.cdb(), layout)
            }
            BhsBody::DataOut(d) => {
                self.on_data_out(&head, d, layout);
                Ok(())
            }
            BhsBody::LoginRequest(_) => {
                self.rx = Rx::Discard {
                    remaining: data_wire,
                };
                self.reject(RejectReason::ProtocolError, &head);
                Ok(())
            }
            BhsBody::NopOut(_)
            | BhsBody::TextRequest(_)
            | BhsBody::TaskMgmtRequest(_)
            | BhsBody::LogoutRequest(_) => {
                self.rx = Rx::Staged { bhs, layout };
                Ok(())
            }
            BhsBody::SnackRequest(_) => {
                self.rx = Rx::Discard {
                    remaining: data_wire,
                };
                self.reject(RejectReason::ProtocolError, &head);
                Ok(())
            }
            _ => {
                // Target opcodes coming from an initiator.
                self.rx = Rx::Discard {
                    remaining: data_wire,
                };
                self.reject(RejectReason::ProtocolError, &head);
                Ok(())
            }
        }
    }

    fn on_staged_pdu(&mut self, bhs: Bhs, start: usize, len: usize) -> Result<(), RxStop> {
        match bhs.body {
            BhsBody::LoginRequest(req) => self.on_login(&req, start, len),
            BhsBody::NopOut(n) => {
                self.on_nop_out(&bhs, n, start, len);
                Ok(())
            }
            BhsBody::TextRequest(t) => {
                self.on_text(&bhs, t, start, len);
                Ok(())
            }
            BhsBody::TaskMgmtRequest(t) => {
                self.on_tmf(&bhs, t);
                Ok(())
            }
            BhsBody::LogoutRequest(l) => {
                self.on_logout(&bhs, l);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// CmdSN rule for a non-immediate PDU: in order, inside the window; others are dropped
    /// (RFC 7143 §4.2.2.1).
    fn accept_cmd_sn(&mut self, immediate: bool, cmd_sn: u32) -> bool {
        if immediate {
            return true;
        }
        if cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            return true;
        }
        tracing::debug!(
            id = self.id,
            cmd_sn,
            exp = self.exp_cmd_sn,
            "iscsi: command outside the CmdSN window dropped"
        );
        false
    }

    fn window(&mut self) -> (u32, u32) {
        let free = self.free.len() as u32;
        let win = free.saturating_sub(IMMEDIATE_RESERVE);
        let candidate = self.exp_cmd_sn.wrapping_add(win).wrapping_sub(1);
        if sn_lt(self.max_cmd_sn, candidate) {
            self.max_cmd_sn = candidate;
        }
        (self.exp_cmd_sn, self.max_cmd_sn)
    }

    fn next_stat_sn(&mut self) -> u32 {
        let s = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        s
    }

    fn queue_control(&mut self, bhs: &Bhs, data: &[u8]) -> bool {
        let ok = queue_pdu(
            &mut self.arena,
            &mut self.sendq,
            self.digests,
            bhs,
            data,
            None,
            None,
        );
        if !ok {
            tracing::warn!(id = self.id, peer = %self.peer, "iscsi: send space exhausted");
            self.close("send space exhausted");
        }
        ok
    }

    fn reject(&mut self, reason: RejectReason, head: &[u8; BHS_LEN]) {
        let (exp, max) = self.window();
        let stat_sn = self.next_stat_sn();
        let bhs = Bhs::new(BhsBody::Reject(Reject {
            reason,
            stat_sn,
            exp_cmd_sn: exp,
            max_cmd_sn: max,
            data_sn_or_r2t_sn: 0,
        }));
        tracing::debug!(id = self.id, ?reason, "iscsi: PDU rejected");
        self.queue_control(&bhs, head);
    }

    // --- login ------------------------------------------------------------------------------

    fn on_login(&mut self, req: &LoginRequest, start: usize, len: usize) -> Result<(), RxStop> {
        let mut ctx = LoginContext {
            shared: &self.shared,
            portal_group_tag: self.portal_group_tag,
            peer: self.peer,
            reactor: self.reactor,
            bound: None,
        };
        let step = self
            .login
            .on_request(req, &self.staging[start..start + len], &mut ctx);
        let bound = ctx.bound.take();
        match step {
            TargetLoginStep::Continue(pdu) => {
                self.queue_control(&pdu.bhs, &pdu.data);
            }
            TargetLoginStep::Failed(pdu, status, why) => {
                tracing::info!(id = self.id, peer = %self.peer, %status, %why, "iscsi: login failed");
                self.queue_control(&pdu.bhs, &pdu.data);
                self.close_after_flush("login failed");
            }
            TargetLoginStep::FullFeature(pdu, result) => {
                self.queue_control(&pdu.bhs, &pdu.data);
                let Some(bound) = bound else {
                    self.close_after_flush("login without a session");
                    return Ok(());
                };
                self.stat_sn = result.next_stat_sn;
                self.exp_cmd_sn = result.exp_cmd_sn;
                let win = (self.tasks.len() as u32)
                    .saturating_sub(IMMEDIATE_RESERVE)
                    .max(1);
                self.max_cmd_sn = self.exp_cmd_sn.wrapping_add(win).wrapping_sub(1);
                self.digests = Digests {
                    header: result.params.header_digest,
                    data: result.params.data_digest,
                };
                let nexus = bound.target.as_ref().map(|t| {
                    t.nexus.register(
                        &initiator_port_name(&result.params.initiator_name, result.isid),
                        1,
                    )
                });
                tracing::info!(
                    id = self.id,
                    peer = %self.peer,
                    initiator = %result.params.initiator_name,
                    target = result.params.target_name.as_deref().unwrap_or("(discovery)"),
                    tsih = result.tsih,
                    hd = result.params.header_digest,
                    dd = result.params.data_digest,
                    "iscsi: login complete"
                );
                self.session = Some(Session {
                    params: result.params.clone(),
                    tsih: bound.tsih,
                    target: bound.target,
                    kill: bound.kill,
                    nexus,
                    lun_generation: 0,
                });
                self.phase = Phase::FullFeature;
                self.refresh_luns();
            }
        }
        Ok(())
    }

    /// Rebuilds the LUN table after the target's LUN map changed: channels of LUNs still
    /// present are kept, new ones opened, removed ones retired once idle.
    fn refresh_luns(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let Some(target) = s.target.clone() else {
            return;
        };
        s.lun_generation = target.lun_generation.load(Ordering::Acquire);
        let current = target.luns_snapshot();
        for l in self.luns.iter_mut().flatten() {
            if !current.iter().any(|c| Arc::ptr_eq(&c.lun, &l.lun)) {
                l.retired = true;
            }
        }
        for c in current {
            if self
                .luns
                .iter()
                .flatten()
                .any(|l| !l.retired && Arc::ptr_eq(&l.lun, &c.lun))
            {
                continue;
            }
            match c.lun.channel() {
                Ok(channel) => {
                    let entry = ConnLun {
                        number: c.number,
                        lun: c.lun.clone(),
                        channel,
                        retired: false,
                    };
                    match self.luns.iter().position(Option::is_none) {
                        Some(i) => self.luns[i] = Some(entry),
                        None => self.luns.push(Some(entry)),
                    }
                }
                Err(e) => {
                    tracing::warn!(id = self.id, lun = c.number, error = %e, "iscsi: cannot open a LUN channel")
                }
            }
        }
    }

    fn lun_slot(&self, lun: Lun) -> u16 {
        let Some(n) = lun.index() else {
            return NO_LUN;
        };
        self.luns
            .iter()
            .position(|l| l.as_ref().is_some_and(|l| !l.retired && l.number == n))
            .map_or(NO_LUN, |i| i as u16)
    }

    // --- SCSI commands ----------------------------------------------------------------------

    fn on_scsi_command(
        &mut self,
        head: &[u8; BHS_LEN],
        cmd: ScsiCommand,
        cdb: &[u8],
        layout: PduLayout,
    ) -> Result<(), RxStop> {
        let data_len = layout.data_len;
        let data_wire = layout.data_wire_len();
        if !self.accept_cmd_sn(cmd.immediate, cmd.cmd_sn) {
            self.rx = Rx::Discard {
                remaining: data_wire,
            };
            return Ok(());
        }
        // The three parameters this needs, copied (the whole set holds strings).
        let Some((immediate_data, initial_r2t, first_burst)) = self.session.as_ref().map(|s| {
            (
                s.params.immediate_data,
                s.params.initial_r2t,
                s.params.first_burst_length as usize,
            )
        }) else {
            return Err(RxStop::Closed("no session"));
        };
        if data_len > 0
            && (!cmd.write
                || !immediate_data
                || data_len > first_burst
                || data_len > cmd.expected_data_transfer_length as usize)
        {
            self.rx = Rx::Discard {
                remaining: data_wire,
            };
            self.reject(RejectReason::ProtocolError, head);
            return Ok(());
        }
        let Some(idx) = self.free.pop() else {
            self.rx = Rx::Discard {
                remaining: data_wire,
            };
            self.reject(RejectReason::ProtocolError, head);
            return Ok(());
        };
        let lun_slot = self.lun_slot(cmd.lun);
        let info = self
            .luns
            .get(usize::from(lun_slot))
            .and_then(|l| l.as_ref())
            .map(|l| l.channel.prepare(&Cdb::new(cdb)));
        let t = &mut self.tasks[usize::from(idx)];
        t.state = TaskState::Collecting;
        t.gen = t.gen.wrapping_add(1);
        t.itt = cmd.itt;
        t.cmd_sn = cmd.cmd_sn;
        t.lun = cmd.lun;
        t.lun_slot = lun_slot;
        t.cdb = Cdb::new(cdb);
        t.attr = attr_of(cmd.attr);
        t.read = cmd.read;
        t.write = cmd.write;
        t.edtl = cmd.expected_data_transfer_length;
        t.early_sense = None;
        t.direction = DataDirection::None;
        t.transfer_len = 0;
        match info {
            Some(Ok(i)) => {
                t.direction = i.direction;
                t.transfer_len = i.transfer_len;
                if i.exact && cmd.write && u64::from(t.edtl) != i.transfer_len {
                    t.early_sense = Some(Sense::invalid_cdb_field(0, None));
                }
            }
            Some(Err(sense)) => t.early_sense = Some(sense),
            None => {}
        }
        t.want = if t.write && t.direction == DataDirection::Out && t.early_sense.is_none() {
            (t.edtl as u64).min(t.transfer_len) as usize
        } else {
            0
        };
        t.received = 0;
        t.unsolicited_limit = if !t.write {
            0
        } else if initial_r2t {
            data_len
        } else {
            first_burst.min(t.edtl as usize)
        };
        t.unsolicited_done = t.unsolicited_limit <= data_len;
        t.exp_data_sn = 0;
        t.r2t_sn = 0;
        t.r2t_next = 0;
        t.r2t_outstanding = 0;
        t.buf = SgList::new();
        t.aborted = false;
        t.tmf = None;
        t.din_sent = 0;
        t.din_burst = 0;
        t.data_sn = 0;
        let want = t.want;
        if want > 0 {
            match self.pool.try_alloc(want) {
                Some(buf) => self.tasks[usize::from(idx)].buf = buf,
                None => {
                    // Padding and digest are read by the data state.
                    self.rx = Rx::AwaitBuffer {
                        task: idx,
                        imm: data_len,
                        pad: padding(data_len),
                    };
                    return Ok(());
                }
            }
        }
        if data_len > 0 {
            self.begin_data(idx, 0, data_len, padding(data_len), DataKind::Immediate);
        } else {
            self.rx = Rx::Header;
            self.after_data(idx);
        }
        Ok(())
    }

    fn find_task_by_itt(&self, itt: u32) -> Option<u16> {
        self.tasks
            .iter()
            .position(|t| t.state != TaskState::Free && t.itt == itt)
            .map(|i| i as u16)
    }

    fn on_data_out(&mut self, head: &[u8; BHS_LEN], d: DataOut, layout: PduLayout) {
        let data_wire = layout.data_wire_len();
        let len = layout.data_len;
        let solicited = d.ttt != RESERVED_TAG;
        let idx = if solicited {
            let i = (d.ttt & 0xffff) as u16;
            self.tasks
                .get(usize::from(i))
                .filter(|t| t.state == TaskState::Collecting && t.tag(i) == d.ttt && t.itt == d.itt)
                .map(|_| i)
        } else {
            self.find_task_by_itt(d.itt)
                .filter(|&i| self.tasks[usize::from(i)].state == TaskState::Collecting)
        };
        let Some(idx) = idx else {
            // Data for a task that is gone (aborted) or never was: dropped.
            self.rx = Rx::Discard {
                remaining: data_wire,
            };
            return;
        };
        let t = &self.tasks[usize::from(idx)];
        let off = d.buffer_offset as usize;
        let in_range = if solicited {
            off + len <= t.r2t_next
        } else {
            !t.unsolicited_done && off + len <= t.unsolicited_limit
        };
        if off != t.received || d.data_sn != t.exp_data_sn || !in_range || !t.write {
            tracing::debug!(
                id = self.id,
                itt = d.itt,
                off,
                expected = t.received,
                data_sn = d.data_sn,
                exp_data_sn = t.exp_data_sn,
                "iscsi: Data-Out out of sequence"
            );
            self.rx = Rx::Discard {
                remaining: data_wire,
            };
            self.reject(RejectReason::ProtocolError, head);
            return;
        }
        self.begin_data(
            idx,
            off,
            len,
            padding(len),
            DataKind::DataOut {
                final_: d.final_,
                solicited,
            },
        );
        if len == 0 {
            // No bytes: finish at once.
            self.rx = Rx::Header;
            self.data_received(
                idx,
                DataKind::DataOut {
                    final_: d.final_,
                    solicited,
                },
                0,
                true,
            );
        }
    }

    /// A data segment of `task` arrived completely.
    fn data_received(&mut self, idx: u16, kind: DataKind, len: usize, digest_ok: bool) {
        let t = &mut self.tasks[usize::from(idx)];
        if t.state != TaskState::Collecting {
            return;
        }
        t.received += len;
        if !digest_ok {
            tracing::warn!(id = self.id, itt = t.itt, "iscsi: data digest error");
            t.early_sense = Some(Sense::new(SenseKey::AbortedCommand, Asc(0x47, 0x05)));
        }
        match kind {
            DataKind::Immediate => {}
            DataKind::DataOut { final_, solicited } => {
                t.exp_data_sn = t.exp_data_sn.wrapping_add(1);
                if final_ {
                    t.exp_data_sn = 0;
                    if solicited {
                        t.r2t_outstanding = t.r2t_outstanding.saturating_sub(1);
                    } else {
                        t.unsolicited_done = true;
                    }
                }
                if !solicited && t.received >= t.unsolicited_limit {
                    t.unsolicited_done = true;
                }
            }
        }
        if !digest_ok {
            let itt = t.itt;
            let mut head = [0u8; BHS_LEN];
            Bhs::new(BhsBody::DataOut(DataOut {
                itt,
                ..DataOut::default()
            }))
            .encode(&mut head);
            self.reject(RejectReason::DataDigestError, &head);
        }
        self.after_data(idx);
    }

    /// Decides what a collecting task needs next: more unsolicited data, R2Ts, or execution.
    fn after_data(&mut self, idx: u16) {
        let max_r2t = self
            .session
            .as_ref()
            .map_or(1, |s| s.params.max_outstanding_r2t.max(1));
        let t = &mut self.tasks[usize::from(idx)];
        if t.state != TaskState::Collecting {
            return;
        }
        if !t.unsolicited_done {
            return;
        }
        if t.early_sense.is_some() && t.r2t_outstanding == 0 {
            // A failed command takes no more data.
            self.execute(idx);
            return;
        }
        if t.r2t_next < t.received {
            t.r2t_next = t.received;
        }
        if t.received >= t.want && t.r2t_outstanding == 0 {
            self.execute(idx);
            return;
        }
        if t.r2t_next < t.want && t.r2t_outstanding < max_r2t {
            if !self.r2t_waiting.contains(&idx) {
                self.r2t_waiting.push_back(idx);
            }
            self.send_r2ts();
        }
    }

    /// Sends the R2Ts tasks wait for, as far as MaxOutstandingR2T and send space allow.
    fn send_r2ts(&mut self) {
        let Some((max_r2t, max_burst)) = self.session.as_ref().map(|s| {
            (
                s.params.max_outstanding_r2t.max(1),
                s.params.max_burst_length.max(512) as usize,
            )
        }) else {
            return;
        };
        while let Some(&idx) = self.r2t_waiting.front() {
            loop {
                let (exp, max) = self.window();
                let stat_sn = self.stat_sn;
                let t = &self.tasks[usize::from(idx)];
                if t.state != TaskState::Collecting
                    || t.r2t_next >= t.want
                    || t.r2t_outstanding >= max_r2t
                {
                    break;
                }
                let len = (t.want - t.r2t_next).min(max_burst);
                let bhs = Bhs::new(BhsBody::R2t(R2t {
                    lun: t.lun,
                    itt: t.itt,
                    ttt: t.tag(idx),
                    stat_sn,
                    exp_cmd_sn: exp,
                    max_cmd_sn: max,
                    r2t_sn: t.r2t_sn,
                    buffer_offset: t.r2t_next as u32,
                    desired_data_transfer_length: len as u32,
                }));
                if !queue_pdu(
                    &mut self.arena,
                    &mut self.sendq,
                    self.digests,
                    &bhs,
                    &[],
                    None,
                    None,
                ) {
                    return;
                }
                let t = &mut self.tasks[usize::from(idx)];
                t.r2t_sn = t.r2t_sn.wrapping_add(1);
                t.r2t_next += len;
                t.r2t_outstanding += 1;
            }
            self.r2t_waiting.pop_front();
        }
    }

    /// All data of a task is here: submit it to its LUN, or answer it ourselves.
    fn execute(&mut self, idx: u16) {
        let nexus = self.session.as_ref().and_then(|s| s.nexus);
        let t = &mut self.tasks[usize::from(idx)];
        if let Some(sense) = t.early_sense.take() {
            t.buf = SgList::new();
            self.complete_local(idx, ScsiStatus::CheckCondition, &sense, SgList::new(), 0);
            return;
        }
        let lun_slot = t.lun_slot;
        let Some(l) = self
            .luns
            .get_mut(usize::from(lun_slot))
            .and_then(|l| l.as_mut())
        else {
            self.no_such_lun(idx);
            return;
        };
        let Some(nexus) = nexus else {
            self.no_such_lun(idx);
            return;
        };
        t.state = TaskState::Executing;
        let mut buf = std::mem::take(&mut t.buf);
        trim(&mut buf, t.received.min(t.want));
        let task = ScsiTask {
            cdb: t.cdb,
            nexus,
            attr: t.attr,
            tag: u64::from(t.tag(idx)),
            data_out: buf,
        };
        l.channel.submit(task);
        self.executing += 1;
    }

    /// Commands to a LUN the target does not have (SPC-4 / SAM-5: INQUIRY reports no device,
    /// REPORT LUNS lists the LUNs there are, everything else fails).
    fn no_such_lun(&mut self, idx: u16) {
        let cdb = self.tasks[usize::from(idx)].cdb;
        let bytes = cdb.as_slice();
        let op = cdb.opcode();
        match op {
            0x12 => {
                let alloc = usize::from(u16::from_be_bytes([cdb.b(3), cdb.b(4)]));
                let mut data = [0u8; 36];
                data[0] = 0x7f;
                data[2] = 0x06;
                data[3] = 0x02;
                data[4] = 31;
                data[8..16].copy_from_slice(b"GYRE    ");
                data[16..32].copy_from_slice(b"No such LUN     ");
                data[32..36].copy_from_slice(b"0001");
                self.complete_with_data(idx, &data[..alloc.min(36)]);
            }
            0xa0 => {
                let luns: SmallVec<[u16; 16]> = self
                    .luns
                    .iter()
                    .flatten()
                    .filter(|l| !l.retired)
                    .map(|l| l.number)
                    .collect();
                let mut data = [0u8; 8 + 16 * 8];
                let n = luns.len().min(16);
                data[..4].copy_from_slice(&((n * 8) as u32).to_be_bytes());
                for (i, l) in luns.iter().take(n).enumerate() {
                    data[8 + i * 8..16 + i * 8].copy_from_slice(&Lun::from_index(*l).0);
                }
                let alloc = u32::from_be_bytes([cdb.b(6), cdb.b(7), cdb.b(8), cdb.b(9)]) as usize;
                let len = (8 + n * 8).min(alloc);
                if bytes.len() < 12 || alloc < 16 {
                    let sense = Sense::invalid_cdb_field(6, None);
                    self.complete_local(idx, ScsiStatus::CheckCondition, &sense, SgList::new(), 0);
                    return;
                }
                self.complete_with_data(idx, &data[..len]);
            }
            0x03 => {
                let mut data = [0u8; 18];
                data[0] = 0x70;
                data[2] = SenseKey::IllegalRequest as u8;
                data[7] = 10;
                data[12] = Asc::LOGICAL_UNIT_NOT_SUPPORTED.0;
                let alloc = usize::from(cdb.b(4));
                self.complete_with_data(idx, &data[..alloc.min(18)]);
            }
            _ => {
                let sense = Sense::illegal(Asc::LOGICAL_UNIT_NOT_SUPPORTED);
                self.complete_local(idx, ScsiStatus::CheckCondition, &sense, SgList::new(), 0);
            }
        }
    }

    fn complete_with_data(&mut self, idx: u16, data: &[u8]) {
        if data.is_empty() {
            self.complete_local(
                idx,
                ScsiStatus::Good,
                &Sense::illegal(Asc(0, 0)),
                SgList::new(),
                0,
            );
            return;
        }
        match self.pool.try_alloc(data.len()) {
            Some(mut buf) => {
                buf.copy_from_slice(data);
                self.complete_local(
                    idx,
                    ScsiStatus::Good,
                    &Sense::illegal(Asc(0, 0)),
                    buf,
                    data.len(),
                );
            }
            None => self.complete_local(
                idx,
                ScsiStatus::Busy,
                &Sense::illegal(Asc(0, 0)),
                SgList::new(),
                0,
            ),
        }
    }

    fn complete_local(
        &mut self,
        idx: u16,
        status: ScsiStatus,
        sense: &Sense,
        data_in: SgList,
        data_in_len: usize,
    ) {
        let t = &mut self.tasks[usize::from(idx)];
        if data_in_len > 0 {
            t.direction = DataDirection::In;
        }
        let tag = u64::from(t.tag(idx));
        let sense = if status == ScsiStatus::CheckCondition {
            SenseBuf::encode(sense, false)
        } else {
            SenseBuf::EMPTY
        };
        self.on_completion(ScsiCompletion {
            tag,
            status,
            sense,
            data_in,
            data_in_len,
            data_out: SgList::new(),
        });
    }

    /// A task finished: aborted ones disappear, the others queue their answer.
    fn on_completion(&mut self, c: ScsiCompletion) {
        let idx = (c.tag & 0xffff) as u16;
        let Some(t) = self.tasks.get_mut(usize::from(idx)) else {
            return;
        };
        if u64::from(t.tag(idx)) != c.tag || t.state == TaskState::Free {
            return;
        }
        if t.aborted {
            let tmf = t.tmf.take();
            self.free_task(idx);
            if let Some(id) = tmf {
                if let Some(p) = self.tmfs.iter_mut().find(|p| p.id == id) {
                    p.waiting = p.waiting.saturating_sub(1);
                }
                self.answer_tmfs();
            }
            return;
        }
        t.state = TaskState::Responding;
        t.status = c.status;
        t.sense = c.sense;
        t.data_in_len = c.data_in_len;
        t.data_in = c.data_in;
        let exp_in = if t.read { t.edtl as usize } else { 0 };
        t.din_total = if c.status == ScsiStatus::Good || c.status == ScsiStatus::ConditionMet {
            c.data_in_len.min(exp_in)
        } else {
            0
        };
        t.din_sent = 0;
        t.din_burst = 0;
        t.data_sn = 0;
        self.responding.push_back(idx);
    }

    /// (underflow, overflow, residual) of a finished task (RFC 7143 §11.4.5).
    fn residual(t: &Task) -> (bool, bool, u32) {
        let (need, exp) = match t.direction {
            DataDirection::In => (t.data_in_len as u64, if t.read { t.edtl } else { 0 }),
            DataDirection::Out => (t.transfer_len, if t.write { t.edtl } else { 0 }),
            DataDirection::None => (0, t.edtl),
        };
        let exp = u64::from(exp);
        if exp > need {
            (true, false, (exp - need).min(u64::from(u32::MAX)) as u32)
        } else if need > exp {
            (false, true, (need - exp).min(u64::from(u32::MAX)) as u32)
        } else {
            (false, false, 0)
        }
    }

    /// Queues Data-In and the response of tasks that finished, as far as space allows.
    fn send_responses(&mut self) -> bool {
        let mut any = false;
        let Some((mrdsl, max_burst)) = self.session.as_ref().map(|s| {
            (
                s.params.initiator_max_recv_data_segment_length.max(512) as usize,
                s.params.max_burst_length.max(512) as usize,
            )
        }) else {
            return false;
        };
        while let Some(&idx) = self.responding.front() {
            if !self.pump_task(idx, mrdsl, max_burst) {
                break;
            }
            any = true;
            self.responding.pop_front();
        }
        any
    }

    /// Queues what is left of one task's answer. True when all of it is queued.
    fn pump_task(&mut self, idx: u16, mrdsl: usize, max_burst: usize) -> bool {
        loop {
            let (exp, max) = self.window();
            let t = &self.tasks[usize::from(idx)];
            if t.state != TaskState::Responding {
                return true;
            }
            let (under, over, residual) = Self::residual(t);
            let collapse = t.status == ScsiStatus::Good && t.sense.is_empty();
            if t.din_sent < t.din_total {
                let len = (t.din_total - t.din_sent)
                    .min(mrdsl)
                    .min(max_burst - t.din_burst);
                let last = t.din_sent + len == t.din_total;
                let end_of_burst = last || t.din_burst + len == max_burst;
                let status_here = last && collapse;
                let stat_sn = if status_here { self.stat_sn } else { 0 };
                let bhs = Bhs::new(BhsBody::DataIn(DataIn {
                    final_: end_of_burst,
                    acknowledge: false,
                    overflow: status_here && over,
                    underflow: status_here && under,
                    status_present: status_here,
                    status: if status_here { t.status as u8 } else { 0 },
                    lun: t.lun,
                    itt: t.itt,
                    ttt: RESERVED_TAG,
                    stat_sn,
                    exp_cmd_sn: exp,
                    max_cmd_sn: max,
                    data_sn: t.data_sn,
                    buffer_offset: t.din_sent as u32,
                    residual_count: if status_here { residual } else { 0 },
                }));
                let ok = queue_pdu(
                    &mut self.arena,
                    &mut self.sendq,
                    self.digests,
                    &bhs,
                    &[],
                    Some((&t.data_in, t.din_sent, len)),
                    status_here.then_some(idx),
                );
                if !ok {
                    return false;
                }
                if status_here {
                    self.stat_sn = self.stat_sn.wrapping_add(1);
                }
                let t = &mut self.tasks[usize::from(idx)];
                t.din_sent += len;
                t.din_burst = if end_of_burst { 0 } else { t.din_burst + len };
                t.data_sn = t.data_sn.wrapping_add(1);
                if status_here {
                    t.state = TaskState::Sent;
                    return true;
                }
                continue;
            }
            // The SCSI Response.
            let sense = t.sense;
            let mut data = [0u8; 2 + gyre_scsi::sense::MAX_SENSE_LEN];
            let slen = sense.as_slice().len();
            let dlen = if slen > 0 {
                data[..2].copy_from_slice(&(slen as u16).to_be_bytes());
                data[2..2 + slen].copy_from_slice(sense.as_slice());
                2 + slen
            } else {
                0
            };
            let exp_data_sn = if t.direction == DataDirection::Out {
                t.r2t_sn
            } else {
                t.data_sn
            };
            let bhs = Bhs::new(BhsBody::ScsiResponse(ScsiResponse {
                bidi_read_overflow: false,
                bidi_read_underflow: false,
                overflow: over,
                underflow: under,
                response: ScsiResponseCode::CommandCompleted,
                status: t.status as u8,
                itt: t.itt,
                snack_tag: 0,
                stat_sn: self.stat_sn,
                exp_cmd_sn: exp,
                max_cmd_sn: max,
                exp_data_sn,
                bidi_read_residual_count: 0,
                residual_count: residual,
            }));
            if !queue_pdu(
                &mut self.arena,
                &mut self.sendq,
                self.digests,
                &bhs,
                &data[..dlen],
                None,
                Some(idx),
            ) {
                return false;
            }
            self.stat_sn = self.stat_sn.wrapping_add(1);
            self.tasks[usize::from(idx)].state = TaskState::Sent;
            return true;
        }
    }

    fn free_task(&mut self, idx: u16) {
        let Some(t) = self.tasks.get_mut(usize::from(idx)) else {
            return;
        };
        if t.state == TaskState::Free {
            return;
        }
        t.state = TaskState::Free;
        t.buf = SgList::new();
        t.data_in = SgList::new();
        t.aborted = false;
        t.tmf = None;
        self.free.push(idx);
    }

    // --- other PDUs -------------------------------------------------------------------------

    fn on_nop_out(&mut self, _bhs: &Bhs, n: NopOut, start: usize, len: usize) {
        if !self.accept_cmd_sn(n.immediate, n.cmd_sn) {
            return;
        }
        if n.itt == RESERVED_TAG {
            // An answer to our NOP-In (or a ping that wants none).
            if let Some((ttt, _)) = self.nop_pending {
                if ttt == n.ttt {
                    self.nop_pending = None;
                }
            }
            return;
        }
        let (exp, max) = self.window();
        let stat_sn = self.next_stat_sn();
        let bhs = Bhs::new(BhsBody::NopIn(NopIn {
            lun: n.lun,
            itt: n.itt,
            ttt: RESERVED_TAG,
            stat_sn,
            exp_cmd_sn: exp,
            max_cmd_sn: max,
        }));
        // The ping data comes back (as much as the initiator can receive).
        let mrdsl = self.session.as_ref().map_or(8192, |s| {
            s.params.initiator_max_recv_data_segment_length as usize
        });
        let echo = len.min(mrdsl);
        let ok = queue_pdu(
            &mut self.arena,
            &mut self.sendq,
            self.digests,
            &bhs,
            &self.staging[start..start + echo],
            None,
            None,
        );
        if !ok {
            self.close("send space exhausted");
        }
    }

    fn on_text(&mut self, _bhs: &Bhs, t: TextRequest, start: usize, len: usize) {
        if !self.accept_cmd_sn(t.immediate, t.cmd_sn) {
            return;
        }
        let mrdsl = self.session.as_ref().map_or(8192, |s| {
            s.params.initiator_max_recv_data_segment_length.min(8192) as usize
        });
        if t.ttt != RESERVED_TAG {
            if t.ttt == self.text_ttt && self.text_pending_at < self.text_pending.len() {
                self.send_text_piece(t, mrdsl);
            } else {
                // Stale continuation: the negotiation is reset (RFC 7143 §11.10.4).
                self.text_pending.clear();
                self.text_pending_at = 0;
                let mut head = [0u8; BHS_LEN];
                Bhs::new(BhsBody::TextRequest(t)).encode(&mut head);
                self.reject(RejectReason::InvalidPduField, &head);
            }
            return;
        }
        let whole = match self
            .text
            .push(&self.staging[start..start + len], t.continue_)
        {
            Ok(Some(w)) => w,
            Ok(None) => {
                // More request text follows: acknowledge with an empty response.
                self.text_pending.clear();
                self.text_pending_at = 0;
                self.send_text_piece(t, mrdsl);
                return;
            }
            Err(_) => {
                let mut head = [0u8; BHS_LEN];
                Bhs::new(BhsBody::TextRequest(t)).encode(&mut head);
                self.reject(RejectReason::ProtocolError, &head);
                return;
            }
        };
        let keys = TextList::parse(&whole, &TextLimits::default()).unwrap_or_default();
        let mut out = TextList::new();
        for (k, v) in keys.iter() {
            if k == "SendTargets" {
                out.extend(self.send_targets(SendTargetsQuery::parse(v)));
            } else {
                out.push(k, NOT_UNDERSTOOD);
            }
        }
        self.text_pending = out.encode();
        self.text_pending_at = 0;
        self.send_text_piece(t, mrdsl);
    }

    fn send_text_piece(&mut self, t: TextRequest, mrdsl: usize) {
        let rest = self.text_pending.len() - self.text_pending_at;
        let n = rest.min(mrdsl);
        let more = n < rest;
        let ttt = if more {
            self.next_ttt = self.next_ttt.wrapping_add(1) & 0x7fff_ffff;
            self.text_ttt = self.next_ttt;
            self.text_ttt
        } else {
            self.text_ttt = RESERVED_TAG;
            RESERVED_TAG
        };
        let (exp, max) = self.window();
        let stat_sn = self.next_stat_sn();
        let bhs = Bhs::new(BhsBody::TextResponse(TextResponse {
            final_: !more,
            continue_: more,
            lun: t.lun,
            itt: t.itt,
            ttt,
            stat_sn,
            exp_cmd_sn: exp,
            max_cmd_sn: max,
        }));
        let at = self.text_pending_at;
        let ok = queue_pdu(
            &mut self.arena,
            &mut self.sendq,
            self.digests,
            &bhs,
            &self.text_pending[at..at + n],
            None,
            None,
        );
        if !ok {
            self.close("send space exhausted");
            return;
        }
        self.text_pending_at += n;
        if !more {
            self.text_pending.clear();
            self.text_pending_at = 0;
        }
    }

    /// The targets this initiator may see, with their portals (RFC 7143 Appendix C).
    fn send_targets(&self, query: SendTargetsQuery) -> TextList {
        let Some(s) = self.session.as_ref() else {
            return TextList::new();
        };
        let initiator = s.params.initiator_name.clone();
        let own = s.target.as_ref().map(|t| t.name.clone());
        let discovery = s.params.session_type == SessionType::Discovery;
        let targets: Vec<Arc<Target>> = lock(&self.shared.targets).values().cloned().collect();
        let pgs = lock(&self.shared.portal_groups).clone();
        let mut found = Vec::new();
        for t in targets {
            let wanted = match &query {
                SendTargetsQuery::All => discovery || own.as_deref() == Some(t.name.as_str()),
                SendTargetsQuery::Target(n) => t.name.eq_ignore_ascii_case(n),
                SendTargetsQuery::SessionTarget => own.as_deref() == Some(t.name.as_str()),
            };
            if !wanted || t.removed.load(Ordering::Acquire) {
                continue;
            }
            let cfg = lock(&t.cfg).clone();
            if !self
                .shared
                .initiator_allowed(&cfg, &initiator, self.peer.ip())
            {
                continue;
            }
            let mut portals = Vec::new();
            for tag in &cfg.portal_groups {
                let Some(pg) = pgs.get(tag) else {
                    continue;
                };
                for p in &pg.portals {
                    let addr = if p.ip().is_unspecified() {
                        self.local.map_or(*p, |l| SocketAddr::new(l.ip(), p.port()))
                    } else {
                        *p
                    };
                    portals.push(Portal::new(addr.ip(), addr.port(), *tag));
                }
            }
            found.push(DiscoveredTarget {
                name: t.name.clone(),
                portals,
            });
        }
        build_response(&found)
    }

    fn on_tmf(&mut self, _bhs: &Bhs, r: TaskMgmtRequest) {
        if !self.accept_cmd_sn(r.immediate, r.cmd_sn) {
            return;
        }
        let id = self.next_tmf_id;
        self.next_tmf_id = self.next_tmf_id.wrapping_add(1);
        let lun_slot = self.lun_slot(r.lun);
        let nexus = self.session.as_ref().and_then(|s| s.nexus);
        let mut close_after = false;
        let lun_scoped = matches!(
            r.function,
            TmfFunction::AbortTask
                | TmfFunction::AbortTaskSet
                | TmfFunction::ClearTaskSet
                | TmfFunction::ClearAca
                | TmfFunction::LogicalUnitReset
        );
        let mut waiting = 0;
        let response = if lun_scoped && lun_slot == NO_LUN {
            TmfResponse::LunDoesNotExist
        } else {
            match r.function {
                TmfFunction::AbortTask => match self.find_task_by_itt(r.referenced_task_tag) {
                    Some(i) => {
                        waiting += self.abort_task(i, id);
                        TmfResponse::FunctionComplete
                    }
                    None => {
                        if sn_lt(r.ref_cmd_sn, self.exp_cmd_sn) {
                            TmfResponse::TaskDoesNotExist
                        } else {
                            TmfResponse::FunctionComplete
                        }
                    }
                },
                TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet => {
                    waiting += self.abort_matching(Some(lun_slot), id);
                    TmfResponse::FunctionComplete
                }
                TmfFunction::LogicalUnitReset => {
                    if let Some(Some(l)) = self.luns.get(usize::from(lun_slot)) {
                        l.lun.reset(ResetKind::LogicalUnit);
                    }
                    waiting += self.abort_matching(Some(lun_slot), id);
                    TmfResponse::FunctionComplete
                }
                TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => {
                    if let Some(t) = self.session.as_ref().and_then(|s| s.target.clone()) {
                        for l in t.luns_snapshot() {
                            l.lun.reset(ResetKind::Target);
                        }
                    }
                    waiting += self.abort_matching(None, id);
                    close_after = r.function == TmfFunction::TargetColdReset;
                    TmfResponse::FunctionComplete
                }
                TmfFunction::ClearAca => TmfResponse::FunctionNotSupported,
                TmfFunction::TaskReassign => TmfResponse::AllegianceReassignmentNotSupported,
            }
        };
        let _ = nexus;
        self.tmfs.push(PendingTmf {
            id,
            itt: r.itt,
            response,
            waiting,
            close_after,
        });
        self.answer_tmfs();
    }

    /// Aborts one task for TMF `tmf`; returns 1 when the TMF must wait for it.
    fn abort_task(&mut self, idx: u16, tmf: u32) -> u32 {
        let t = &mut self.tasks[usize::from(idx)];
        match t.state {
            TaskState::Collecting => {
                self.r2t_waiting.retain(|&i| i != idx);
                self.free_task(idx);
                0
            }
            TaskState::Executing => {
                if t.aborted {
                    return 0;
                }
                t.aborted = true;
                t.tmf = Some(tmf);
                let tag = u64::from(t.tag(idx));
                if let Some(Some(l)) = self.luns.get_mut(usize::from(t.lun_slot)) {
                    l.channel.abort_task(tag);
                }
                1
            }
            TaskState::Responding => {
                self.responding.retain(|&i| i != idx);
                self.free_task(idx);
                0
            }
            TaskState::Sent | TaskState::Free => 0,
        }
    }

    fn abort_matching(&mut self, lun_slot: Option<u16>, tmf: u32) -> u32 {
        let mut waiting = 0;
        for i in 0..self.tasks.len() as u16 {
            let t = &self.tasks[usize::from(i)];
            if t.state == TaskState::Free || lun_slot.is_some_and(|l| t.lun_slot != l) {
                continue;
            }
            waiting += self.abort_task(i, tmf);
        }
        waiting
    }

    /// Sends the TMF responses whose aborted tasks have all come back, in order.
    fn answer_tmfs(&mut self) {
        while let Some(p) = self.tmfs.first() {
            if p.waiting > 0 {
                break;
            }
            let p = self.tmfs.remove(0);
            let (exp, max) = self.window();
            let stat_sn = self.next_stat_sn();
            let bhs = Bhs::new(BhsBody::TaskMgmtResponse(TaskMgmtResponse {
                response: p.response,
                itt: p.itt,
                stat_sn,
                exp_cmd_sn: exp,
                max_cmd_sn: max,
            }));
            self.queue_control(&bhs, &[]);
            if p.close_after {
                self.close_after_flush("target cold reset");
            }
        }
    }

    fn on_logout(&mut self, _bhs: &Bhs, l: LogoutRequest) {
        if !self.accept_cmd_sn(l.immediate, l.cmd_sn) {
            return;
        }
        let response = match l.reason {
            crate::bhs::LogoutReason::RemoveConnectionForRecovery => {
                LogoutResponseCode::RecoveryNotSupported
            }
            _ => LogoutResponseCode::Closed,
        };
        let (exp, max) = self.window();
        let stat_sn = self.next_stat_sn();
        let bhs = Bhs::new(BhsBody::LogoutResponse(LogoutResponse {
            response,
            itt: l.itt,
            stat_sn,
            exp_cmd_sn: exp,
            max_cmd_sn: max,
            time2wait: 0,
            time2retain: 0,
        }));
        self.queue_control(&bhs, &[]);
        if response == LogoutResponseCode::Closed {
            self.close_after_flush("logout");
        }
    }

    // --- the poll ---------------------------------------------------------------------------

    fn poll_luns(&mut self) -> bool {
        let completions = &mut self.completions;
        for l in self.luns.iter_mut().flatten() {
            l.channel.poll(|c| completions.push(c));
        }
        let mut any = false;
        while let Some(c) = self.completions.pop() {
            any = true;
            self.executing = self.executing.saturating_sub(1);
            if matches!(self.phase, Phase::Draining | Phase::Finished) {
                continue;
            }
            self.on_completion(c);
        }
        // Retired LUNs go once idle (no task refers to them then).
        for slot in self.luns.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|l| l.retired && l.channel.in_flight() == 0)
            {
                *slot = None;
            }
        }
        any
    }

    /// Everything but reading: completions, R2Ts, responses, output, teardown.
    pub(crate) fn progress(&mut self, sockets: &mut PollGroup, token: u64) -> ConnStatus {
        let mut busy = false;
        if self.phase == Phase::FullFeature {
            let (killed, removed, generation) = match &self.session {
                Some(s) => (
                    s.kill.load(Ordering::Acquire),
                    s.target
                        .as_ref()
                        .is_some_and(|t| t.removed.load(Ordering::Acquire)),
                    s.target
                        .as_ref()
                        .map(|t| (t.lun_generation.load(Ordering::Acquire), s.lun_generation)),
                ),
                None => (false, false, None),
            };
            if killed {
                self.close("session reinstated or closed by the target");
            } else if removed {
                self.request_logout();
            } else if let Some((now, mine)) = generation {
                if now != mine {
                    self.refresh_luns();
                }
            }
        }
        busy |= self.poll_luns();
        busy |= self.executing > 0;
        if matches!(self.phase, Phase::FullFeature | Phase::Closing) {
            if !self.r2t_waiting.is_empty() {
                self.send_r2ts();
            }
            busy |= self.send_responses();
            if matches!(self.rx, Rx::AwaitBuffer { .. }) {
                self.receive();
            }
        }
        if !self.sendq.is_empty() && !self.write_blocked && self.phase != Phase::Draining {
            busy = true;
            let mut done: SmallVec<[u32; 64]> = SmallVec::new();
            let arena = &mut self.arena;
            let outcome = self.sendq.flush(&self.socket, |c| {
                if c & ARENA_COOKIE != 0 {
                    arena.release((c & !ARENA_COOKIE) as usize);
                } else {
                    done.push(c);
                }
            });
            for c in done {
                let idx = c as u16;
                if self
                    .tasks
                    .get(usize::from(idx))
                    .is_some_and(|t| t.state == TaskState::Sent)
                {
                    self.free_task(idx);
                }
            }
            match outcome {
                Ok(FlushOutcome::Empty) => {}
                Ok(FlushOutcome::Blocked) => self.write_blocked = true,
                Err(_) => self.close("send error"),
            }
        }
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
        if self.phase == Phase::Closing && self.sendq.is_empty() {
            let why = self.close_reason.unwrap_or("closed");
            self.close(why);
        }
        if self.phase == Phase::Draining {
            self.sendq.clear(|_| {});
            self.arena.reset();
            let in_flight: usize = self
                .luns
                .iter()
                .flatten()
                .map(|l| l.channel.in_flight())
                .sum();
            if in_flight == 0 {
                self.finish_session();
                self.phase = Phase::Finished;
                return ConnStatus::Finished;
            }
            return ConnStatus::Busy;
        }
        if self.phase == Phase::Finished {
            return ConnStatus::Finished;
        }
        if busy {
            ConnStatus::Busy
        } else {
            ConnStatus::Idle
        }
    }

    /// The target was deleted: ask the initiator to log out (Asynchronous Message, event 1,
    /// RFC 7143 §11.9.1) and close the connection if it has not within the time given.
    fn request_logout(&mut self) {
        let now = Instant::now();
        match self.logout_deadline {
            Some(deadline) => {
                if now > deadline {
                    self.close("target removed; no logout in time");
                }
            }
            None => {
                let (exp, max) = self.window();
                let stat_sn = self.next_stat_sn();
                let bhs = Bhs::new(BhsBody::AsyncMessage(AsyncMessage {
                    lun: Lun::default(),
                    stat_sn,
                    exp_cmd_sn: exp,
                    max_cmd_sn: max,
                    event: AsyncEvent::LogoutRequested,
                    vcode: 0,
                    parameter1: 0,
                    parameter2: 0,
                    parameter3: LOGOUT_GRACE.as_secs() as u16,
                }));
                tracing::info!(id = self.id, peer = %self.peer, "iscsi: target removed; asking for a logout");
                self.queue_control(&bhs, &[]);
                self.logout_deadline = Some(now + LOGOUT_GRACE);
            }
        }
    }

    /// The session ends with its only connection: the I_T nexus is lost.
    fn finish_session(&mut self) {
        let Some(s) = self.session.take() else {
            return;
        };
        {
            let mut sessions = lock(&self.shared.sessions);
            if sessions
                .by_tsih
                .get(&s.tsih)
                .is_some_and(|e| Arc::ptr_eq(&e.kill, &s.kill))
            {
                sessions.by_tsih.remove(&s.tsih);
            }
        }
        if let (Some(t), Some(n)) = (&s.target, s.nexus) {
            for l in self.luns.iter().flatten() {
                l.lun.nexus_lost(n);
            }
            t.nexus.unregister(n);
        }
        self.luns.clear();
        tracing::info!(
            id = self.id,
            peer = %self.peer,
            tsih = s.tsih,
            why = self.close_reason.unwrap_or(""),
            "iscsi: session closed"
        );
    }

    /// Timers: login timeout, NOP-In keepalive and its timeout, session kill flags.
    pub(crate) fn check_timers(&mut self, now: Instant) -> bool {
        if self.rx_seen {
            self.rx_seen = false;
            self.last_rx = now;
        }
        match self.phase {
            Phase::Login => {
                if now.duration_since(self.started) > LOGIN_TIMEOUT {
                    self.close("login timeout");
                    return true;
                }
                false
            }
            Phase::FullFeature => {
                let interval = self.shared.options.nop_in_interval;
                let timeout = self.shared.options.nop_in_timeout;
                if let Some((_, deadline)) = self.nop_pending {
                    if now > deadline {
                        tracing::warn!(id = self.id, peer = %self.peer, "iscsi: NOP-In timed out");
                        self.close("NOP-In timeout");
                        return true;
                    }
                    return false;
                }
                if interval.is_zero() || now.duration_since(self.last_rx) < interval {
                    return false;
                }
                self.next_ttt = self.next_ttt.wrapping_add(1) & 0x7fff_ffff;
                let ttt = self.next_ttt;
                let (exp, max) = self.window();
                let bhs = Bhs::new(BhsBody::NopIn(NopIn {
                    lun: Lun::default(),
                    itt: RESERVED_TAG,
                    ttt,
                    stat_sn: self.stat_sn,
                    exp_cmd_sn: exp,
                    max_cmd_sn: max,
                }));
                if self.queue_control(&bhs, &[]) {
                    self.nop_pending = Some((ttt, now + timeout));
                }
                true
            }
            _ => false,
        }
    }
}

/// Shortens an SgList to `len` bytes.
fn trim(buf: &mut SgList, len: usize) {
    let mut left = len;
    for seg in buf.segments_mut() {
        let take = seg.len().min(left);
        seg.set_len(take);
        left -= take;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_hands_out_in_order_and_wraps() {
        let mut a = TxArena::new(100);
        let x = a.alloc(40).unwrap();
        let y = a.alloc(40).unwrap();
        assert_eq!((x, y), (0, 40));
        assert!(
            a.alloc(30).is_none(),
            "20 left at the end, head of ring busy"
        );
        a.release(40);
        let z = a.alloc(30).unwrap();
        assert_eq!(z, 0, "wraps to the start once the first block is released");
        assert!(a.alloc(15).is_none(), "would reach the tail");
        a.release(80);
        a.release(30);
        assert_eq!(a.live, 0);
        assert_eq!(a.alloc(100), Some(0), "an empty ring starts over");
    }

    #[test]
    fn serial_number_comparison_wraps() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(u32::MAX, 0));
        assert!(!sn_lt(5, 5));
        assert!(!sn_lt(0, u32::MAX));
    }

    #[test]
    fn residuals_follow_rfc7143() {
        let mut t = Task::new();
        t.direction = DataDirection::In;
        t.read = true;
        t.edtl = 4096;
        t.data_in_len = 512;
        assert_eq!(IscsiConnection::residual(&t), (true, false, 3584));
        t.data_in_len = 8192;
        assert_eq!(IscsiConnection::residual(&t), (false, true, 4096));
        t.direction = DataDirection::Out;
        t.read = false;
        t.write = true;
        t.transfer_len = 4096;
        assert_eq!(IscsiConnection::residual(&t), (false, false, 0));
        t.write = false;
        assert_eq!(IscsiConnection::residual(&t), (false, true, 4096));
        t.direction = DataDirection::None;
        t.edtl = 512;
        assert_eq!(IscsiConnection::residual(&t), (true, false, 512));
    }
}
