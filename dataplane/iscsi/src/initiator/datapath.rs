//! The initiator's zero-copy data path, for load generators: SCSI commands whose data lives in
//! the caller's pool buffers ([`SgList`]) from submission to completion.
//!
//! - Data-In payload is received straight into the command's buffer at the PDU's Buffer
//!   Offset: once a Data-In header is in, the rest of its payload is read with one `readv`
//!   over the buffer, the padding/digest trailer and room for exactly the next two headers
//!   (the next Data-In's, or a SCSI Response's and the next Data-In's), so a stream of reads
//!   is received without copies and with about one system call per PDU. Other PDUs
//!   (responses, R2Ts, NOP-Ins) are read into a staging buffer, greedily when no payload has
//!   been seen for a few PDUs (many per call), two headers at a time otherwise; payload that
//!   still arrives in staging with them is copied out (counted in [`DataPathStats::copied`]).
//! - Command PDUs, immediate data and Data-Out are queued as iovecs in a `gyre-net`
//!   [`SendQueue`]: headers from per-slot storage, payload straight from the caller's buffer;
//!   everything queued leaves with one `sendmsg` per [`DataPathConnection::poll`].
//! - Task slots are preallocated (queue depth known at connect time) and indexed by the ITT
//!   (slot index plus a 15-bit generation, so a late PDU for a reused slot is recognised).
//!   Nothing on the path allocates. A slot's buffer goes back to the caller only when its
//!   status has arrived and every byte queued from it has left.
//! - Commands beyond the CmdSN window wait in order for the target to open it.
//!
//! Login, discovery and the blocking helpers stay in [`super::connection`]: a logged-in
//! [`IscsiInitiator`] becomes a data path with [`DataPathConnection::from_initiator`].

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use gyre_net::{FlushOutcome, Recv, SendQueue, TcpConnection, NO_COOKIE};
use gyre_reactor::SgList;
use thiserror::Error;

use super::connection::{InitiatorError, IscsiInitiator};
use super::session::DataDirection;
use crate::bhs::{
    AsyncEvent, Bhs, BhsBody, DataOut, LogoutReason, LogoutRequest, NopOut, RejectReason,
    ScsiCommand, ScsiResponseCode, TaskAttribute, BHS_LEN, RESERVED_TAG,
};
use crate::digest::{padding, DataDigest, DIGEST_LEN};
use crate::framing::{
    check_data_digest, check_header_digest, encode_header, parse_pdu, Digests, FramingError,
    Parsed, PduLayout,
};
use crate::lun::Lun;
use crate::negotiate::SessionParams;

/// How a command ended. `Copy` and allocation-free, so that failures cost nothing either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStatus {
    Good,
    /// A SCSI status other than GOOD, with the sense key and additional sense code when the
    /// target sent sense data.
    Scsi {
        status: u8,
        sense_key: u8,
        asc: u8,
        ascq: u8,
    },
    /// The target moved fewer (positive) or more (negative) bytes than expected.
    Residual(i64),
    /// iSCSI response code other than Command Completed.
    Response(u8),
    Rejected(RejectReason),
    ConnectionLost,
}

impl CommandStatus {
    pub fn is_good(&self) -> bool {
        *self == CommandStatus::Good
    }
}

/// A finished command: the caller's tag and buffer, and its status.
#[derive(Debug)]
pub struct DataCompletion {
    pub tag: u64,
    pub buf: SgList,
    pub status: CommandStatus,
}

/// Why the connection stopped working. Every command in flight completes with
/// [`CommandStatus::ConnectionLost`].
#[derive(Debug, Error)]
pub enum DataPathError {
    #[error("transport: {0}")]
    Io(#[from] io::Error),
    #[error("the target closed the connection")]
    Closed,
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error("protocol violation by the target: {0}")]
    Protocol(&'static str),
    #[error("the target dropped the connection (async event {0})")]
    Dropped(u8),
    #[error("timed out")]
    Timeout,
}

/// Why a command was not accepted; the buffer comes back with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DataSubmitError {
    #[error("all {0} task slots are busy")]
    QueueFull(usize),
    #[error("CDB longer than 16 bytes")]
    CdbTooLong,
    #[error(
        "transfer of {len} bytes does not fit the buffer ({buf} bytes) or the {max}-byte limit"
    )]
    BadLength { len: usize, buf: usize, max: usize },
    #[error("the connection has failed")]
    Failed,
}

/// Where received payload went (read straight into buffers, or copied from the staging
/// buffer), and how often the CmdSN window held a command back: for proof and tuning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataPathStats {
    pub direct: u64,
    pub copied: u64,
    /// Commands that had to wait for the CmdSN window.
    pub window_waits: u64,
}

/// Header storage of one PDU of a slot: BHS + header digest, and the data digest.
#[derive(Clone, Copy)]
struct PduStore {
    header: [u8; BHS_LEN + DIGEST_LEN],
    data_digest: [u8; DIGEST_LEN],
}

const EMPTY_PDU: PduStore = PduStore {
    header: [0; BHS_LEN + DIGEST_LEN],
    data_digest: [0; DIGEST_LEN],
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Waiting for the CmdSN window.
    Queued,
    Active,
}

struct Slot {
    state: SlotState,
    itt: u32,
    tag: u64,
    lun: Lun,
    cdb: [u8; 16],
    direction: DataDirection,
    len: usize,
    buf: Option<SgList>,
    pdus: Box<[PduStore]>,
    pdus_used: usize,
    /// Send-queue entries of this slot not yet in the kernel.
    unsent: u32,
    /// The status, once it arrived (the slot completes when `unsent` is 0 too).
    done: Option<CommandStatus>,
}

/// Control PDUs (NOP-Out answers, the Logout Request) queued at once at most.
const CONTROL_SLOTS: usize = 4;
/// Ping data echoed in a NOP-Out at most; longer ping data is answered without it.
const CONTROL_DATA: usize = 4096;
/// Send-queue cookies at and above this are control slots.
const CONTROL_COOKIE: u32 = 0x4000_0000;
/// ITT of the Logout Request (command ITTs never have the top bit).
const LOGOUT_ITT: u32 = 0x8000_0001;
/// Send-queue entries per PDU at most: header, up to 4 buffer segments, padding, digest.
const IOV_PER_PDU: usize = 8;
/// Segments of a buffer read into with one `readv` at most (the rest on the next one).
const MAX_RX_SEGMENTS: usize = 6;

/// Header reads stay short while a Data-In with payload was among the last this many PDUs.
const DATA_STREAK: u32 = 4;

static ZERO_PAD: [u8; 4] = [0; 4];

struct ControlPdu {
    bytes: Box<[u8]>,
    busy: bool,
}

/// Where the receive side is.
#[derive(Debug, Clone, Copy)]
enum RxState {
    /// Reading headers and small PDUs into the staging buffer.
    Header,
    /// Receiving a Data-In payload into slot `slot`'s buffer.
    Data {
        slot: u16,
        /// Buffer offset and length of this PDU's data.
        pdu_offset: usize,
        pdu_len: usize,
        /// Bytes of data still to come, then bytes of padding + digest.
        left: usize,
        trailer_left: usize,
        trailer_have: usize,
        /// The status this PDU carries (S bit), delivered once its data is in.
        status: Option<CommandStatus>,
    },
}

/// One logged-in connection (single-connection session) with the zero-copy data path.
pub struct DataPathConnection {
    conn: TcpConnection,
    params: SessionParams,
    digests: Digests,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    slots: Box<[Slot]>,
    generations: Box<[u16]>,
    free: Vec<u16>,
    queued: VecDeque<u16>,
    ready: VecDeque<u16>,
    control: Box<[ControlPdu]>,
    send: SendQueue,
    staging: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    rx: RxState,
    trailer: [u8; 8],
    stats: DataPathStats,
    /// PDUs other than Data-In with payload since the last one (steers header reads).
    pdus_since_data: u32,
    max_transfer: usize,
    failed: bool,
    logged_out: bool,
    logout_requested: bool,
}

/// Serial number arithmetic (RFC 1982) for 32-bit sequence numbers: a <= b.
fn sn_le(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) >= 0
}

fn signed_residual(underflow: bool, overflow: bool, count: u32) -> i64 {
    if underflow {
        i64::from(count)
    } else if overflow {
        -i64::from(count)
    } else {
        0
    }
}

/// Sense key, ASC and ASCQ from a SCSI Response data segment (SenseLength then sense data,
/// fixed or descriptor format); zeroes when absent.
fn sense_of(data: &[u8]) -> (u8, u8, u8) {
    let len = data
        .get(0..2)
        .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        .unwrap_or(0);
    let sense = data.get(2..2 + len).unwrap_or(&[]);
    let at = |i: usize| sense.get(i).copied().unwrap_or(0);
    match at(0) & 0x7f {
        0x70 | 0x71 => (at(2) & 0x0f, at(12), at(13)),
        0x72 | 0x73 => (at(1) & 0x0f, at(2), at(3)),
        _ => (0, 0, 0),
    }
}

impl DataPathConnection {
    /// Takes over a logged-in connection with no command outstanding. `max_transfer` is the
    /// largest command data length it will carry (sizes the per-slot header storage).
    pub fn from_initiator(
        ini: IscsiInitiator,
        max_transfer: usize,
    ) -> Result<Self, InitiatorError> {
        let (conn, params, (cmd_sn, exp_stat_sn, max_cmd_sn), queue_depth) = ini.into_parts()?;
        Ok(Self::new(
            conn,
            params,
            (cmd_sn, exp_stat_sn, max_cmd_sn),
            queue_depth,
            max_transfer,
        ))
    }

    /// A data path over `conn`, already in the Full Feature Phase with the negotiated
    /// `params` and (CmdSN, ExpStatSN, MaxCmdSN) `sequence`.
    pub fn new(
        conn: TcpConnection,
        params: SessionParams,
        (cmd_sn, exp_stat_sn, max_cmd_sn): (u32, u32, u32),
        queue_depth: u16,
        max_transfer: usize,
    ) -> Self {
        let qd = usize::from(queue_depth.max(1));
        let target_mrdsl = params.target_max_recv_data_segment_length.max(512) as usize;
        // Data-Out PDUs of one command in one poll: the whole transfer in MRDSL pieces plus
        // one split per burst boundary (bursts come from outstanding R2Ts).
        let r2ts = usize::from(params.max_outstanding_r2t.max(1));
        let pdus_per_slot = max_transfer.div_ceil(target_mrdsl) + 2 + 2 * r2ts;
        let slots: Box<[Slot]> = (0..qd)
            .map(|_| Slot {
                state: SlotState::Free,
                itt: 0,
                tag: 0,
                lun: Lun::default(),
                cdb: [0; 16],
                direction: DataDirection::None,
                len: 0,
                buf: None,
                pdus: vec![EMPTY_PDU; pdus_per_slot].into_boxed_slice(),
                pdus_used: 0,
                unsent: 0,
                done: None,
            })
            .collect();
        let initiator_mrdsl = params.initiator_max_recv_data_segment_length as usize;
        let staging_len = (initiator_mrdsl + 8192).max(64 * 1024);
        let control = (0..CONTROL_SLOTS)
            .map(|_| ControlPdu {
                bytes: vec![0u8; BHS_LEN + 2 * DIGEST_LEN + CONTROL_DATA + 4].into_boxed_slice(),
                busy: false,
            })
            .collect();
        let digests = Digests {
            header: params.header_digest,
            data: params.data_digest,
        };
        DataPathConnection {
            conn,
            digests,
            cmd_sn,
            exp_stat_sn,
            max_cmd_sn,
            generations: vec![0; qd].into_boxed_slice(),
            free: (0..qd as u16).rev().collect(),
            queued: VecDeque::with_capacity(qd),
            ready: VecDeque::with_capacity(qd),
            send: SendQueue::with_capacity(qd * pdus_per_slot * IOV_PER_PDU + 4 * CONTROL_SLOTS),
            slots,
            control,
            staging: vec![0u8; staging_len].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            rx: RxState::Header,
            trailer: [0; 8],
            stats: DataPathStats::default(),
            pdus_since_data: DATA_STREAK,
            max_transfer,
            failed: false,
            logged_out: false,
            logout_requested: false,
            params,
        }
    }

    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    fn header_len(&self) -> usize {
        BHS_LEN + if self.digests.header { DIGEST_LEN } else { 0 }
    }

    /// The socket, to wake a sleeping reactor when data arrives.
    pub fn raw_fd(&self) -> RawFd {
        self.conn.as_raw_fd()
    }

    pub fn queue_depth(&self) -> usize {
        self.slots.len()
    }

    /// Commands accepted and not yet handed back.
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn stats(&self) -> DataPathStats {
        self.stats
    }

    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// True once the target asked (Asynchronous Message) for a logout.
    pub fn logout_requested(&self) -> bool {
        self.logout_requested
    }

    /// Queues a command moving `len` bytes between the target and `buf`. It is sent by the
    /// next [`poll`](Self::poll) (or later, when the CmdSN window is closed) and always
    /// completes through `poll`, never from here. A refused command's buffer comes back with
    /// the reason (by value: the caller's buffer must not be lost or boxed on the I/O path).
    #[allow(clippy::result_large_err)]
    pub fn submit(
        &mut self,
        lun: Lun,
        cdb: &[u8],
        direction: DataDirection,
        buf: SgList,
        len: usize,
        tag: u64,
    ) -> Result<(), (DataSubmitError, SgList)> {
        if self.failed || self.logged_out {
            return Err((DataSubmitError::Failed, buf));
        }
        if cdb.len() > 16 {
            return Err((DataSubmitError::CdbTooLong, buf));
        }
        if len > buf.len() || len > self.max_transfer || u32::try_from(len).is_err() {
            let (buf_len, max) = (buf.len(), self.max_transfer);
            return Err((
                DataSubmitError::BadLength {
                    len,
                    buf: buf_len,
                    max,
                },
                buf,
            ));
        }
        let Some(index) = self.free.pop() else {
            return Err((DataSubmitError::QueueFull(self.slots.len()), buf));
        };
        let i = usize::from(index);
        let g = &mut self.generations[i];
        *g = g.wrapping_add(1) & 0x7fff;
        let itt = u32::from(*g) << 16 | u32::from(index);
        let slot = &mut self.slots[i];
        slot.state = SlotState::Queued;
        slot.itt = itt;
        slot.tag = tag;
        slot.lun = lun;
        slot.cdb = [0; 16];
        slot.cdb[..cdb.len()].copy_from_slice(cdb);
        slot.direction = direction;
        slot.len = len;
        slot.buf = Some(buf);
        slot.pdus_used = 0;
        slot.unsent = 0;
        slot.done = None;
        if !self.window_open() {
            self.stats.window_waits += 1;
        }
        self.queued.push_back(index);
        self.send_queued();
        Ok(())
    }

    fn window_open(&self) -> bool {
        sn_le(self.cmd_sn, self.max_cmd_sn)
    }

    fn send_queued(&mut self) {
        while !self.failed && self.window_open() {
            let Some(index) = self.queued.pop_front() else {
                return;
            };
            if let Err(e) = self.send_command(index) {
                self.fail(&e);
            }
        }
    }

    /// Queues `[offset, offset + len)` of slot `index`'s buffer, cookie'd to the slot.
    fn push_buffer_range(
        &mut self,
        index: usize,
        offset: usize,
        len: usize,
    ) -> Result<(), DataPathError> {
        let slot = &mut self.slots[index];
        let Some(buf) = slot.buf.as_ref() else {
            return Err(DataPathError::Protocol("no buffer"));
        };
        let mut skip = offset;
        let mut left = len;
        for seg in buf.segments() {
            if left == 0 {
                break;
            }
            let s = seg.as_slice();
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            let n = (s.len() - skip).min(left);
            // SAFETY: the buffer stays in the slot (not handed back) until every entry cookie'd
            // to the slot has been reported sent or the queue is cleared.
            if !unsafe { self.send.push(s[skip..].as_ptr(), n, index as u32) } {
                return Err(DataPathError::Protocol("send queue full"));
            }
            slot.unsent += 1;
            skip = 0;
            left -= n;
        }
        if left != 0 {
            return Err(DataPathError::Protocol("buffer shorter than its transfer"));
        }
        Ok(())
    }

    /// Queues one PDU of slot `index`: `bhs` with `[offset, offset + len)` of its buffer.
    fn push_pdu(
        &mut self,
        index: usize,
        bhs: Bhs,
        offset: usize,
        len: usize,
    ) -> Result<(), DataPathError> {
        let digests = self.digests;
        let slot = &mut self.slots[index];
        if slot.pdus_used == slot.pdus.len() {
            return Err(DataPathError::Protocol(
                "too many Data-Out PDUs for one command",
            ));
        }
        let pdu = &mut slot.pdus[slot.pdus_used];
        slot.pdus_used += 1;
        let mut b = bhs;
        b.data_segment_len = len as u32;
        let header_len = encode_header(&b, &[], digests, &mut pdu.header)?;
        if digests.data && len > 0 {
            let mut d = DataDigest::new();
            if let Some(buf) = slot.buf.as_ref() {
                d.update_sg(buf, offset, len);
            }
            pdu.data_digest = d.finish_wire();
        }
        let header = pdu.header.as_ptr();
        let ddgst = pdu.data_digest.as_ptr();
        // SAFETY: the PDU store lives in the slot's boxed slice (a stable address) and is not
        // reused before the slot's entries are all sent (pdus_used resets only then).
        if !unsafe { self.send.push(header, header_len, index as u32) } {
            return Err(DataPathError::Protocol("send queue full"));
        }
        slot.unsent += 1;
        if len > 0 {
            self.push_buffer_range(index, offset, len)?;
            let pad = padding(len);
            // SAFETY: static zero bytes; the digest lives in the slot's PDU store as above.
            unsafe {
                if pad > 0 && !self.send.push(ZERO_PAD.as_ptr(), pad, NO_COOKIE) {
                    return Err(DataPathError::Protocol("send queue full"));
                }
                if digests.data {
                    if !self.send.push(ddgst, DIGEST_LEN, index as u32) {
                        return Err(DataPathError::Protocol("send queue full"));
                    }
                    self.slots[index].unsent += 1;
                }
            }
        }
        Ok(())
    }

    fn send_command(&mut self, index: u16) -> Result<(), DataPathError> {
        let i = usize::from(index);
        let cmd_sn = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let p = &self.params;
        let mrdsl = p.target_max_recv_data_segment_length.max(512) as usize;
        let first_burst = p.first_burst_length as usize;
        let (immediate_data, initial_r2t) = (p.immediate_data, p.initial_r2t);
        let slot = &mut self.slots[i];
        slot.state = SlotState::Active;
        let len = slot.len;
        let write = slot.direction == DataDirection::Write;
        let (imm, unsolicited_end) = if write {
            let imm = if immediate_data {
                len.min(first_burst).min(mrdsl)
            } else {
                0
            };
            let end = if initial_r2t {
                imm
            } else {
                len.min(first_burst)
            };
            (imm, end)
        } else {
            (0, 0)
        };
        let cmd = ScsiCommand {
            immediate: false,
            final_: unsolicited_end == imm,
            read: slot.direction == DataDirection::Read,
            write,
            attr: TaskAttribute::Simple,
            lun: slot.lun,
            itt: slot.itt,
            expected_data_transfer_length: len as u32,
            cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: slot.cdb,
        };
        let (itt, lun) = (slot.itt, slot.lun);
        self.push_pdu(i, Bhs::new(BhsBody::ScsiCommand(cmd)), 0, imm)?;
        if unsolicited_end > imm {
            self.push_data_out(i, itt, lun, RESERVED_TAG, imm, unsolicited_end, mrdsl)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn push_data_out(
        &mut self,
        index: usize,
        itt: u32,
        lun: Lun,
        ttt: u32,
        start: usize,
        end: usize,
        mrdsl: usize,
    ) -> Result<(), DataPathError> {
        let mut at = start;
        let mut data_sn = 0u32;
        while at < end {
            let n = (end - at).min(mrdsl);
            let d = DataOut {
                final_: at + n == end,
                lun,
                itt,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn,
                buffer_offset: at as u32,
            };
            self.push_pdu(index, Bhs::new(BhsBody::DataOut(d)), at, n)?;
            at += n;
            data_sn = data_sn.wrapping_add(1);
        }
        Ok(())
    }

    /// Queues a control PDU (`bhs` with `data`) from a free control slot.
    fn push_control(&mut self, bhs: Bhs, data: &[u8]) -> Result<(), DataPathError> {
        let Some(c) = self.control.iter().position(|c| !c.busy) else {
            return Err(DataPathError::Protocol(
                "NOP-In pings faster than they can be answered",
            ));
        };
        let digests = self.digests;
        let pdu = &mut self.control[c];
        let mut b = bhs;
        b.data_segment_len = data.len() as u32;
        let h = encode_header(&b, &[], digests, &mut pdu.bytes)?;
        let mut at = h;
        pdu.bytes[at..at + data.len()].copy_from_slice(data);
        at += data.len();
        let pad = padding(data.len());
        pdu.bytes[at..at + pad].fill(0);
        at += pad;
        if digests.data && !data.is_empty() {
            let mut d = DataDigest::new();
            d.update(data);
            pdu.bytes[at..at + DIGEST_LEN].copy_from_slice(&d.finish_wire());
            at += DIGEST_LEN;
        }
        pdu.busy = true;
        // SAFETY: the control buffer is boxed and stays busy until its cookie is reported.
        if !unsafe {
            self.send
                .push(pdu.bytes.as_ptr(), at, CONTROL_COOKIE + c as u32)
        } {
            return Err(DataPathError::Protocol("send queue full"));
        }
        Ok(())
    }

    fn update_window(&mut self, exp_cmd_sn: u32, max_cmd_sn: u32) {
        // RFC 7143 §4.2.2.1: ignore a window with MaxCmdSN < ExpCmdSN - 1.
        if !sn_le(exp_cmd_sn.wrapping_sub(1), max_cmd_sn) {
            return;
        }
        if sn_le(self.max_cmd_sn, max_cmd_sn) {
            self.max_cmd_sn = max_cmd_sn;
        }
    }

    fn status_seen(&mut self, stat_sn: u32) {
        if sn_le(self.exp_stat_sn, stat_sn) {
            self.exp_stat_sn = stat_sn.wrapping_add(1);
        }
    }

    fn active_slot(&self, itt: u32) -> Option<usize> {
        let s = (itt & 0xffff) as usize;
        match self.slots.get(s) {
            Some(slot)
                if slot.state == SlotState::Active && slot.itt == itt && slot.done.is_none() =>
            {
                Some(s)
            }
            _ => None,
        }
    }

    /// Records a command's status; it is handed back once its sends are done.
    fn finish(&mut self, index: usize, status: CommandStatus) {
        let slot = &mut self.slots[index];
        if slot.done.is_some() || slot.state == SlotState::Free {
            return;
        }
        slot.done = Some(status);
        if slot.unsent == 0 {
            self.ready.push_back(index as u16);
        }
    }

    /// Fails the connection: nothing more is sent or received; every command completes with
    /// [`CommandStatus::ConnectionLost`] at the next poll.
    fn fail(&mut self, _why: &DataPathError) {
        if self.failed {
            return;
        }
        self.failed = true;
        self.conn.shutdown();
        let slots = &mut self.slots;
        self.send.clear(|cookie| {
            if let Some(s) = slots.get_mut(cookie as usize) {
                s.unsent = 0;
            }
        });
        for c in self.control.iter_mut() {
            c.busy = false;
        }
        self.queued.clear();
        for i in 0..self.slots.len() {
            self.slots[i].unsent = 0;
            if self.slots[i].state != SlotState::Free && self.slots[i].done.is_none() {
                self.slots[i].done = Some(CommandStatus::ConnectionLost);
                self.ready.push_back(i as u16);
            }
        }
    }

    /// One non-blocking round: receive and process what arrived, send everything queued
    /// (one `sendmsg`, more only if the kernel took everything and more is left), then hand
    /// finished commands to `done`. Returns how many finished, or the error that failed the
    /// connection (reported once; its commands still come back through `done`).
    pub fn poll(&mut self, mut done: impl FnMut(DataCompletion)) -> Result<usize, DataPathError> {
        let mut error = None;
        if !self.failed {
            if let Err(e) = self.receive() {
                self.fail(&e);
                error = Some(e);
            }
        }
        if !self.failed && !self.send.is_empty() {
            let slots = &mut self.slots;
            let control = &mut self.control;
            let ready = &mut self.ready;
            let r = self.send.flush(&self.conn, |cookie| {
                if cookie >= CONTROL_COOKIE {
                    if let Some(c) = control.get_mut((cookie - CONTROL_COOKIE) as usize) {
                        c.busy = false;
                    }
                    return;
                }
                if let Some(s) = slots.get_mut(cookie as usize) {
                    s.unsent = s.unsent.saturating_sub(1);
                    if s.unsent == 0 {
                        s.pdus_used = 0;
                        if s.done.is_some() {
                            ready.push_back(cookie as u16);
                        }
                    }
                }
            });
            match r {
                Ok(FlushOutcome::Empty) | Ok(FlushOutcome::Blocked) => {}
                Err(e) => {
                    let e = DataPathError::Io(e);
                    self.fail(&e);
                    error = Some(e);
                }
            }
        }
        let mut n = 0;
        while let Some(i) = self.ready.pop_front() {
            let i = usize::from(i);
            let slot = &mut self.slots[i];
            let (Some(status), Some(buf)) = (slot.done, slot.buf.take()) else {
                continue;
            };
            slot.state = SlotState::Free;
            slot.done = None;
            self.free.push(i as u16);
            n += 1;
            done(DataCompletion {
                tag: slot.tag,
                buf,
                status,
            });
        }
        match error {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Reads everything the socket has, processing PDUs as they complete.
    fn receive(&mut self) -> Result<(), DataPathError> {
        loop {
            match self.rx {
                RxState::Header => {
                    if self.process_staged()? {
                        continue;
                    }
                    // Need more bytes: make room and read greedily.
                    if self.rx_start > 0 && self.rx_end == self.staging.len() {
                        self.staging.copy_within(self.rx_start..self.rx_end, 0);
                        self.rx_end -= self.rx_start;
                        self.rx_start = 0;
                    } else if self.rx_start == self.rx_end {
                        self.rx_start = 0;
                        self.rx_end = 0;
                    }
                    if self.rx_end == self.staging.len() {
                        return Err(DataPathError::Protocol(
                            "PDU larger than the staging buffer",
                        ));
                    }
                    // While Data-In payloads stream in, read at most the next two headers so
                    // that payload is not pulled into staging (and copied); otherwise read
                    // greedily (many small PDUs per call).
                    let end = if self.pdus_since_data < DATA_STREAK {
                        (self.rx_end + 2 * self.header_len()).min(self.staging.len())
                    } else {
                        self.staging.len()
                    };
                    match self.conn.recv(&mut self.staging[self.rx_end..end])? {
                        Recv::Data(n) => self.rx_end += n,
                        Recv::WouldBlock => return Ok(()),
                        // After a Logout Response the target closes: that is the end.
                        Recv::Closed if self.logged_out => return Ok(()),
                        Recv::Closed => return Err(DataPathError::Closed),
                    }
                }
                RxState::Data { .. } => {
                    if !self.receive_data()? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Handles what the staging buffer holds in Header state. Returns whether it made
    /// progress (consumed a PDU or moved to the Data state).
    fn process_staged(&mut self) -> Result<bool, DataPathError> {
        let avail = &self.staging[self.rx_start..self.rx_end];
        let Some(head) = avail.first_chunk::<BHS_LEN>() else {
            return Ok(false);
        };
        let layout = PduLayout::from_bhs_bytes(head, self.digests);
        layout.check_data_len(self.params.initiator_max_recv_data_segment_length)?;
        if avail.len() < layout.header_len() {
            return Ok(false);
        }
        // Data-In: take the header and receive the payload into the command's buffer.
        if head[0] & 0x3f == 0x25 {
            check_header_digest(&avail[..layout.header_len()], &layout)?;
            let bhs = Bhs::decode(head).map_err(FramingError::from)?;
            let BhsBody::DataIn(d) = bhs.body else {
                return Err(DataPathError::Protocol("undecodable Data-In"));
            };
            self.rx_start += layout.header_len();
            self.update_window(d.exp_cmd_sn, d.max_cmd_sn);
            let index = self
                .active_slot(d.itt)
                .ok_or(DataPathError::Protocol("Data-In for an unknown task"))?;
            let slot = &self.slots[index];
            if slot.direction != DataDirection::Read && layout.data_len > 0 {
                return Err(DataPathError::Protocol(
                    "Data-In for a command without read data",
                ));
            }
            let offset = d.buffer_offset as usize;
            if offset
                .checked_add(layout.data_len)
                .is_none_or(|end| end > slot.len)
            {
                return Err(DataPathError::Protocol(
                    "Data-In beyond the expected transfer length",
                ));
            }
            let status = if d.status_present {
                self.status_seen(d.stat_sn);
                let residual = signed_residual(d.underflow, d.overflow, d.residual_count);
                Some(if d.status != 0 {
                    CommandStatus::Scsi {
                        status: d.status,
                        sense_key: 0,
                        asc: 0,
                        ascq: 0,
                    }
                } else if residual != 0 {
                    CommandStatus::Residual(residual)
                } else {
                    CommandStatus::Good
                })
            } else {
                None
            };
            if layout.data_len > 0 {
                self.pdus_since_data = 0;
            }
            self.rx = RxState::Data {
                slot: index as u16,
                pdu_offset: offset,
                pdu_len: layout.data_len,
                left: layout.data_len,
                trailer_left: layout.data_padding + layout.data_digest_len,
                trailer_have: 0,
                status,
            };
            // Payload that came along with the header: copied from staging.
            self.copy_staged_data();
            return Ok(true);
        }
        // Anything else is small: wait for all of it, then handle it from staging.
        let total = layout.total_len();
        if total > self.staging.len() {
            return Err(DataPathError::Protocol(
                "PDU larger than the staging buffer",
            ));
        }
        if avail.len() < total {
            return Ok(false);
        }
        let limit = self.params.initiator_max_recv_data_segment_length;
        let start = self.rx_start;
        // Copy the (small) PDU header out so the staging buffer can be borrowed for its data.
        let parsed = match parse_pdu(&self.staging[start..start + total], self.digests, limit)? {
            Parsed::Complete(p, n) => (p.bhs, n),
            Parsed::Incomplete(_) => return Ok(false),
        };
        let (bhs, n) = parsed;
        let data_start = start + layout.header_len();
        self.rx_start += n;
        self.pdus_since_data = self.pdus_since_data.saturating_add(1);
        self.handle(bhs, data_start, layout.data_len)?;
        Ok(true)
    }

    /// Moves payload bytes already in staging into the current Data-In's buffer.
    fn copy_staged_data(&mut self) {
        let RxState::Data {
            slot,
            pdu_offset,
            pdu_len,
            ref mut left,
            ref mut trailer_left,
            ref mut trailer_have,
            ..
        } = self.rx
        else {
            return;
        };
        let avail = self.rx_end - self.rx_start;
        let n = avail.min(*left);
        if n > 0 {
            let src = &self.staging[self.rx_start..self.rx_start + n];
            let at = pdu_offset + (pdu_len - *left);
            if let Some(buf) = self.slots[usize::from(slot)].buf.as_mut() {
                let mut from = 0;
                buf.for_each_chunk_mut(at, n, |dst| {
                    dst.copy_from_slice(&src[from..from + dst.len()]);
                    from += dst.len();
                });
            }
            *left -= n;
            self.rx_start += n;
            self.stats.copied += n as u64;
        }
        if *left == 0 {
            let t = (self.rx_end - self.rx_start).min(*trailer_left);
            self.trailer[*trailer_have..*trailer_have + t]
                .copy_from_slice(&self.staging[self.rx_start..self.rx_start + t]);
            *trailer_have += t;
            *trailer_left -= t;
            self.rx_start += t;
        }
    }

    /// Receives the rest of a Data-In straight into its buffer (plus its trailer and the next
    /// header), finishing the PDU when complete. Returns false when the socket is empty.
    fn receive_data(&mut self) -> Result<bool, DataPathError> {
        let RxState::Data {
            slot,
            pdu_offset,
            pdu_len,
            left,
            trailer_left,
            trailer_have,
            status,
        } = self.rx
        else {
            return Ok(true);
        };
        if left > 0 || trailer_left > 0 {
            if self.rx_start == self.rx_end {
                self.rx_start = 0;
                self.rx_end = 0;
            }
            // Room for the next two headers: a Data-In's, or a SCSI Response's and the next
            // Data-In's (targets that do not collapse the status into the last Data-In).
            let room_end = (self.rx_end + 2 * self.header_len()).min(self.staging.len());
            let got = {
                let mut iov: [IoSliceMut<'_>; MAX_RX_SEGMENTS + 2] =
                    std::array::from_fn(|_| IoSliceMut::new(&mut []));
                let mut count = 0;
                let mut data_room = 0;
                if left > 0 {
                    let Some(buf) = self.slots[usize::from(slot)].buf.as_mut() else {
                        return Err(DataPathError::Protocol("no buffer"));
                    };
                    let at = pdu_offset + (pdu_len - left);
                    for chunk in buf.chunks_mut(at, left).take(MAX_RX_SEGMENTS) {
                        data_room += chunk.len();
                        iov[count] = IoSliceMut::new(chunk);
                        count += 1;
                    }
                }
                let full_data = data_room == left;
                let mut trailer_room = 0;
                if full_data && trailer_left > 0 {
                    iov[count] = IoSliceMut::new(
                        &mut self.trailer[trailer_have..trailer_have + trailer_left],
                    );
                    trailer_room = trailer_left;
                    count += 1;
                }
                if full_data {
                    iov[count] = IoSliceMut::new(&mut self.staging[self.rx_end..room_end]);
                    count += 1;
                }
                match self.conn.recv_vectored(&mut iov[..count])? {
                    Recv::Data(n) => (n, data_room, trailer_room),
                    Recv::WouldBlock => return Ok(false),
                    Recv::Closed => return Err(DataPathError::Closed),
                }
            };
            let (n, data_room, trailer_room) = got;
            let d = n.min(data_room);
            let t = (n - d).min(trailer_room);
            let h = n - d - t;
            self.stats.direct += d as u64;
            self.rx_end += h;
            if let RxState::Data {
                left: ref mut l,
                trailer_left: ref mut tl,
                trailer_have: ref mut th,
                ..
            } = self.rx
            {
                *l -= d;
                *tl -= t;
                *th += t;
            }
        }
        let RxState::Data {
            left, trailer_left, ..
        } = self.rx
        else {
            return Ok(true);
        };
        if left > 0 || trailer_left > 0 {
            return Ok(true);
        }
        // The PDU is complete: check its digest, deliver its status.
        if self.digests.data && pdu_len > 0 {
            let mut dg = DataDigest::new();
            if let Some(buf) = self.slots[usize::from(slot)].buf.as_ref() {
                dg.update_sg(buf, pdu_offset, pdu_len);
            }
            let pad = padding(pdu_len);
            let mut got = [0u8; DIGEST_LEN];
            got.copy_from_slice(&self.trailer[pad..pad + DIGEST_LEN]);
            check_data_digest(&dg, got)?;
        }
        self.rx = RxState::Header;
        if let Some(s) = status {
            self.finish(usize::from(slot), s);
            self.send_queued();
        }
        Ok(true)
    }

    /// Handles a non-Data-In PDU whose data segment is `staging[data_at..data_at + data_len]`.
    fn handle(&mut self, bhs: Bhs, data_at: usize, data_len: usize) -> Result<(), DataPathError> {
        use DataPathError::Protocol as P;
        match bhs.body {
            BhsBody::ScsiResponse(r) => {
                self.status_seen(r.stat_sn);
                self.update_window(r.exp_cmd_sn, r.max_cmd_sn);
                let index = self
                    .active_slot(r.itt)
                    .ok_or(P("SCSI Response for an unknown task"))?;
                let residual = signed_residual(r.underflow, r.overflow, r.residual_count);
                let status = match r.response {
                    ScsiResponseCode::CommandCompleted if r.status == 0 && residual == 0 => {
                        CommandStatus::Good
                    }
                    ScsiResponseCode::CommandCompleted if r.status == 0 => {
                        CommandStatus::Residual(residual)
                    }
                    ScsiResponseCode::CommandCompleted => {
                        let (sense_key, asc, ascq) =
                            sense_of(&self.staging[data_at..data_at + data_len]);
                        CommandStatus::Scsi {
                            status: r.status,
                            sense_key,
                            asc,
                            ascq,
                        }
                    }
                    ScsiResponseCode::TargetFailure => CommandStatus::Response(1),
                    ScsiResponseCode::VendorSpecific(v) => CommandStatus::Response(v),
                };
                self.finish(index, status);
            }
            BhsBody::R2t(r) => {
                self.update_window(r.exp_cmd_sn, r.max_cmd_sn);
                let index = self
                    .active_slot(r.itt)
                    .ok_or(P("R2T for an unknown task"))?;
                let slot = &self.slots[index];
                if slot.direction != DataDirection::Write {
                    return Err(P("R2T for a command without write data"));
                }
                let start = r.buffer_offset as usize;
                let end = start
                    .checked_add(r.desired_data_transfer_length as usize)
                    .filter(|&e| e <= slot.len && e > start)
                    .ok_or(P("R2T outside the write buffer"))?;
                let (itt, lun) = (slot.itt, slot.lun);
                let mrdsl = self.params.target_max_recv_data_segment_length.max(512) as usize;
                self.push_data_out(index, itt, lun, r.ttt, start, end, mrdsl)?;
            }
            BhsBody::NopIn(n) => {
                self.update_window(n.exp_cmd_sn, n.max_cmd_sn);
                if n.itt != RESERVED_TAG {
                    self.status_seen(n.stat_sn);
                }
                if n.ttt != RESERVED_TAG {
                    let out = NopOut {
                        immediate: true,
                        lun: n.lun,
                        itt: RESERVED_TAG,
                        ttt: n.ttt,
                        cmd_sn: self.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                    };
                    // The ping data is echoed (copied out of staging) unless it is long.
                    let n = if data_len <= CONTROL_DATA {
                        data_len
                    } else {
                        0
                    };
                    let mut ping = [0u8; CONTROL_DATA];
                    ping[..n].copy_from_slice(&self.staging[data_at..data_at + n]);
                    self.push_control(Bhs::new(BhsBody::NopOut(out)), &ping[..n])?;
                }
            }
            BhsBody::AsyncMessage(a) => {
                self.status_seen(a.stat_sn);
                self.update_window(a.exp_cmd_sn, a.max_cmd_sn);
                match a.event {
                    AsyncEvent::LogoutRequested => self.logout_requested = true,
                    AsyncEvent::ConnectionDropped | AsyncEvent::AllConnectionsDropped => {
                        return Err(DataPathError::Dropped(a.event.code()))
                    }
                    _ => {}
                }
            }
            BhsBody::Reject(r) => {
                self.status_seen(r.stat_sn);
                self.update_window(r.exp_cmd_sn, r.max_cmd_sn);
                let data = &self.staging[data_at..data_at + data_len];
                let itt = data
                    .get(16..20)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                match itt.and_then(|itt| self.active_slot(itt)) {
                    Some(index) => self.finish(index, CommandStatus::Rejected(r.reason)),
                    None => return Err(P("Reject of a PDU we cannot match")),
                }
            }
            BhsBody::LogoutResponse(l) => {
                self.status_seen(l.stat_sn);
                if l.itt != LOGOUT_ITT {
                    return Err(P("Logout Response without a Logout Request"));
                }
                self.logged_out = true;
            }
            BhsBody::TaskMgmtResponse(t) => {
                self.status_seen(t.stat_sn);
                self.update_window(t.exp_cmd_sn, t.max_cmd_sn);
            }
            _ => return Err(P("an unexpected opcode from the target")),
        }
        self.send_queued();
        Ok(())
    }

    /// Logs the session out (blocking, bounded by `timeout`) after the commands in flight
    /// finished; their completions are handed to `done` meanwhile. Closes the connection.
    pub fn logout(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(DataCompletion),
    ) -> Result<(), DataPathError> {
        let deadline = Instant::now() + timeout;
        let wait = |this: &mut Self,
                    done: &mut dyn FnMut(DataCompletion),
                    until: &dyn Fn(&Self) -> bool|
         -> Result<(), DataPathError> {
            while !until(this) {
                if this.failed {
                    return Err(DataPathError::Closed);
                }
                let moved = match this.poll(&mut *done) {
                    Ok(n) => n,
                    Err(_) if until(this) => return Ok(()),
                    Err(e) => return Err(e),
                };
                if moved == 0 {
                    if Instant::now() > deadline {
                        return Err(DataPathError::Timeout);
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
            Ok(())
        };
        wait(self, &mut done, &|s: &Self| s.outstanding() == 0)?;
        let req = LogoutRequest {
            immediate: true,
            reason: LogoutReason::CloseSession,
            itt: LOGOUT_ITT,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.push_control(Bhs::new(BhsBody::LogoutRequest(req)), &[])?;
        let r = wait(self, &mut done, &|s: &Self| s.logged_out);
        self.conn.shutdown();
        self.failed = true;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bhs::{DataIn, R2t, ScsiResponse};
    use crate::framing::encode_pdu;
    use gyre_reactor::{BufferPool, ClassConfig, PoolConfig};
    use std::io::{Read, Write};
    use std::net::TcpStream;

    const T: Duration = Duration::from_secs(10);

    /// The initiator's data path and the fake target's end of a loopback connection.
    fn pair(params: SessionParams, max_cmd_sn: u32) -> (DataPathConnection, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ini = TcpConnection::connect(l.local_addr().unwrap(), T).unwrap();
        let (peer, _) = l.accept().unwrap();
        peer.set_nonblocking(true).unwrap();
        (
            DataPathConnection::new(ini, params, (1, 1, max_cmd_sn), 4, 1 << 20),
            peer,
        )
    }

    fn params(digests: bool) -> SessionParams {
        SessionParams {
            header_digest: digests,
            data_digest: digests,
            target_max_recv_data_segment_length: 4096,
            initiator_max_recv_data_segment_length: 65536,
            first_burst_length: 8192,
            immediate_data: true,
            initial_r2t: true,
            ..SessionParams::default()
        }
    }

    fn pool() -> BufferPool {
        BufferPool::new(&PoolConfig {
            classes: vec![ClassConfig {
                size: 64 * 1024,
                count: 8,
            }],
            prefer_hugepages: false,
        })
        .unwrap()
    }

    struct Peer {
        stream: TcpStream,
        rx: Vec<u8>,
        digests: Digests,
    }

    impl Peer {
        /// Polls the initiator until the target side has read one whole PDU.
        fn read_pdu(
            &mut self,
            ini: &mut DataPathConnection,
            done: &mut Vec<DataCompletion>,
        ) -> (Bhs, Vec<u8>) {
            let deadline = Instant::now() + T;
            loop {
                if let Parsed::Complete(p, n) = parse_pdu(&self.rx, self.digests, 1 << 20).unwrap()
                {
                    let out = (p.bhs, p.data.to_vec());
                    self.rx.drain(..n);
                    return out;
                }
                let _ = ini.poll(|c| done.push(c));
                let mut chunk = [0u8; 65536];
                match self.stream.read(&mut chunk) {
                    Ok(0) => panic!("initiator closed"),
                    Ok(n) => self.rx.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
                assert!(Instant::now() < deadline, "no PDU from the initiator");
            }
        }

        fn send(&mut self, body: BhsBody, data: &[u8]) {
            let mut wire = Vec::new();
            encode_pdu(&Bhs::new(body), &[], data, self.digests, &mut wire).unwrap();
            self.stream.set_nonblocking(false).unwrap();
            self.stream.write_all(&wire).unwrap();
            self.stream.set_nonblocking(true).unwrap();
        }
    }

    fn wait_done(ini: &mut DataPathConnection, done: &mut Vec<DataCompletion>, n: usize) {
        let deadline = Instant::now() + T;
        while done.len() < n {
            let _ = ini.poll(|c| done.push(c));
            assert!(Instant::now() < deadline, "commands did not complete");
        }
    }

    fn response(itt: u32, stat_sn: u32, max_cmd_sn: u32) -> BhsBody {
        BhsBody::ScsiResponse(ScsiResponse {
            bidi_read_overflow: false,
            bidi_read_underflow: false,
            overflow: false,
            underflow: false,
            response: ScsiResponseCode::CommandCompleted,
            status: 0,
            itt,
            snack_tag: 0,
            stat_sn,
            exp_cmd_sn: 0,
            max_cmd_sn,
            exp_data_sn: 0,
            bidi_read_residual_count: 0,
            residual_count: 0,
        })
    }

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn reads_land_in_the_buffer_at_their_offsets() {
        for digests in [false, true] {
            let (mut ini, stream) = pair(params(digests), 100);
            let mut peer = Peer {
                stream,
                rx: Vec::new(),
                digests: Digests {
                    header: digests,
                    data: digests,
                },
            };
            let pool = pool();
            let cache = pool.local();
            let mut done = Vec::new();
            for (round, seed) in [(0u32, 7u8), (1, 9)] {
                let buf = cache.try_alloc(65536).unwrap();
                ini.submit(
                    Lun::from_index(1),
                    &[0x88; 16],
                    DataDirection::Read,
                    buf,
                    65536,
                    40 + u64::from(round),
                )
                .unwrap();
                let (bhs, _) = peer.read_pdu(&mut ini, &mut done);
                let BhsBody::ScsiCommand(c) = bhs.body else {
                    panic!("{bhs:?}")
                };
                assert!(c.read && c.final_);
                assert_eq!(
                    (c.expected_data_transfer_length, c.cmd_sn),
                    (65536, 1 + round)
                );
                let data = pattern(seed, 65536);
                // Second half first, then the first half; status in a separate response.
                for (sn, off) in [(0u32, 32768usize), (1, 0)] {
                    peer.send(
                        BhsBody::DataIn(DataIn {
                            itt: c.itt,
                            ttt: RESERVED_TAG,
                            data_sn: sn,
                            buffer_offset: off as u32,
                            max_cmd_sn: 100,
                            exp_cmd_sn: 2 + round,
                            ..DataIn::default()
                        }),
                        &data[off..off + 32768],
                    );
                }
                peer.send(response(c.itt, 1 + round, 100), &[]);
                wait_done(&mut ini, &mut done, 1 + round as usize);
                let d = done.last().unwrap();
                assert_eq!(
                    (d.tag, d.status),
                    (40 + u64::from(round), CommandStatus::Good)
                );
                let mut got = vec![0u8; 65536];
                assert!(d.buf.copy_to_slice(&mut got));
                assert!(got == data, "round {round}: data mismatch");
                let after = ini.stats();
                if round == 1 {
                    // Once Data-In is streaming, payload is read straight into the buffer.
                    assert!(after.direct >= 60_000, "{after:?}");
                }
            }
            assert_eq!(ini.outstanding(), 0);
        }
    }

    #[test]
    fn writes_send_immediate_then_r2t_data_from_the_buffer() {
        for digests in [false, true] {
            let (mut ini, stream) = pair(params(digests), 100);
            let mut peer = Peer {
                stream,
                rx: Vec::new(),
                digests: Digests {
                    header: digests,
                    data: digests,
                },
            };
            let pool = pool();
            let cache = pool.local();
            let mut buf = cache.try_alloc(20000).unwrap();
            let data = pattern(3, 20000);
            assert!(buf.copy_from_slice(&data));
            let mut done = Vec::new();
            ini.submit(
                Lun::from_index(1),
                &[0x8a; 16],
                DataDirection::Write,
                buf,
                20000,
                5,
            )
            .unwrap();
            let (bhs, imm) = peer.read_pdu(&mut ini, &mut done);
            let BhsBody::ScsiCommand(c) = bhs.body else {
                panic!("{bhs:?}")
            };
            assert!(
                c.write && c.final_,
                "InitialR2T=Yes: no unsolicited Data-Out"
            );
            assert_eq!(imm, data[..4096], "immediate data up to the target's MRDSL");
            peer.send(
                BhsBody::R2t(R2t {
                    itt: c.itt,
                    ttt: 0x99,
                    max_cmd_sn: 100,
                    exp_cmd_sn: 2,
                    buffer_offset: 4096,
                    desired_data_transfer_length: 15904,
                    ..R2t::default()
                }),
                &[],
            );
            let mut got = Vec::new();
            for (i, want_len) in [4096usize, 4096, 4096, 3616].into_iter().enumerate() {
                let (bhs, d) = peer.read_pdu(&mut ini, &mut done);
                let BhsBody::DataOut(o) = bhs.body else {
                    panic!("{bhs:?}")
                };
                assert_eq!(
                    (o.ttt, o.data_sn, o.buffer_offset as usize, d.len()),
                    (0x99, i as u32, 4096 + 4096 * i, want_len)
                );
                assert_eq!(o.final_, i == 3);
                got.extend_from_slice(&d);
            }
            assert!(got == data[4096..], "Data-Out carries the buffer");
            peer.send(response(c.itt, 1, 100), &[]);
            wait_done(&mut ini, &mut done, 1);
            assert_eq!((done[0].tag, done[0].status), (5, CommandStatus::Good));
        }
    }

    #[test]
    fn the_cmdsn_window_holds_commands_back() {
        // MaxCmdSN 1 = CmdSN: one command may go.
        let (mut ini, stream) = pair(params(false), 1);
        let mut peer = Peer {
            stream,
            rx: Vec::new(),
            digests: Digests::default(),
        };
        let pool = pool();
        let cache = pool.local();
        let mut done = Vec::new();
        for tag in 0..2 {
            let buf = cache.try_alloc(512).unwrap();
            ini.submit(
                Lun::default(),
                &[0x28; 10],
                DataDirection::Read,
                buf,
                512,
                tag,
            )
            .unwrap();
        }
        assert_eq!(ini.stats().window_waits, 1);
        let (bhs, _) = peer.read_pdu(&mut ini, &mut done);
        let BhsBody::ScsiCommand(first) = bhs.body else {
            panic!()
        };
        for _ in 0..20 {
            let _ = ini.poll(|c| done.push(c));
        }
        assert!(
            peer.rx.is_empty(),
            "the second command waits for the window"
        );
        // Data-In with status completes the first and opens the window by one.
        peer.send(
            BhsBody::DataIn(DataIn {
                final_: true,
                status_present: true,
                itt: first.itt,
                ttt: RESERVED_TAG,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 2,
                ..DataIn::default()
            }),
            &[0xab; 512],
        );
        let (bhs, _) = peer.read_pdu(&mut ini, &mut done);
        let BhsBody::ScsiCommand(second) = bhs.body else {
            panic!()
        };
        assert_eq!((second.cmd_sn, second.exp_stat_sn), (2, 2));
        wait_done(&mut ini, &mut done, 1);
        assert_eq!((done[0].tag, done[0].status), (0, CommandStatus::Good));
    }

    #[test]
    fn nop_in_pings_are_answered_with_their_data() {
        let (mut ini, stream) = pair(params(true), 100);
        let mut peer = Peer {
            stream,
            rx: Vec::new(),
            digests: Digests {
                header: true,
                data: true,
            },
        };
        let mut done = Vec::new();
        peer.send(
            BhsBody::NopIn(crate::bhs::NopIn {
                itt: RESERVED_TAG,
                ttt: 0x77,
                stat_sn: 1,
                exp_cmd_sn: 1,
                max_cmd_sn: 100,
                ..crate::bhs::NopIn::default()
            }),
            b"ping",
        );
        let (bhs, data) = peer.read_pdu(&mut ini, &mut done);
        let BhsBody::NopOut(n) = bhs.body else {
            panic!("{bhs:?}")
        };
        assert!(n.immediate);
        assert_eq!((n.itt, n.ttt, n.cmd_sn), (RESERVED_TAG, 0x77, 1));
        assert_eq!(data, b"ping");
        assert!(!ini.is_failed());
    }

    #[test]
    fn a_protocol_violation_fails_every_command_and_returns_the_buffers() {
        let (mut ini, stream) = pair(params(false), 100);
        let mut peer = Peer {
            stream,
            rx: Vec::new(),
            digests: Digests::default(),
        };
        let pool = pool();
        let cache = pool.local();
        let mut done = Vec::new();
        for tag in 0..3 {
            let buf = cache.try_alloc(4096).unwrap();
            ini.submit(
                Lun::default(),
                &[0x88; 16],
                DataDirection::Read,
                buf,
                4096,
                tag,
            )
            .unwrap();
        }
        let (bhs, _) = peer.read_pdu(&mut ini, &mut done);
        let BhsBody::ScsiCommand(c) = bhs.body else {
            panic!()
        };
        // Data-In past the expected transfer length.
        peer.send(
            BhsBody::DataIn(DataIn {
                itt: c.itt,
                ttt: RESERVED_TAG,
                buffer_offset: 2048,
                ..DataIn::default()
            }),
            &[0u8; 4096],
        );
        let deadline = Instant::now() + T;
        let err = loop {
            match ini.poll(|c| done.push(c)) {
                Err(e) => break e,
                Ok(_) => assert!(Instant::now() < deadline, "no failure"),
            }
        };
        assert!(matches!(err, DataPathError::Protocol(_)), "{err}");
        assert!(ini.is_failed());
        wait_done(&mut ini, &mut done, 3);
        assert!(done
            .iter()
            .all(|d| d.status == CommandStatus::ConnectionLost && d.buf.len() == 4096));
        assert_eq!(ini.outstanding(), 0);
        let buf = cache.try_alloc(512).unwrap();
        let (e, buf) = ini
            .submit(Lun::default(), &[0x28], DataDirection::Read, buf, 512, 9)
            .unwrap_err();
        assert_eq!((e, buf.len()), (DataSubmitError::Failed, 512));
        // A transfer longer than the buffer is refused before anything is sent.
        let (mut ini, _peer) = pair(params(false), 100);
        let buf = cache.try_alloc(512).unwrap();
        let (e, _) = ini
            .submit(Lun::default(), &[0x28], DataDirection::Read, buf, 1024, 1)
            .unwrap_err();
        assert!(
            matches!(e, DataSubmitError::BadLength { len: 1024, .. }),
            "{e}"
        );
    }
}
