//! The Full Feature Phase of one initiator connection, sans I/O: commands in, PDUs out as
//! bytes, PDUs in as bytes, completions out.
//!
//! Tasks live in a fixed table of `queue_depth` slots; the ITT is the slot index plus a
//! generation, so a late or forged PDU for a reused slot is recognised. Commands that do
//! not fit the CmdSN window (MaxCmdSN) wait in order and leave when the target opens it.
//! Writes carry immediate data and unsolicited Data-Out as negotiated (ImmediateData,
//! InitialR2T, FirstBurstLength) in PDUs no longer than the target's
//! MaxRecvDataSegmentLength; the rest follows R2Ts. NOP-In pings are answered.

use crate::bhs::{
    Bhs, BhsBody, DataOut, LogoutReason, LogoutRequest, NopOut, RejectReason, ScsiCommand,
    ScsiResponseCode, TaskAttribute, TextRequest, RESERVED_TAG,
};
use crate::framing::{encode_pdu, parse_pdu, Digests, FramingError, Parsed};
use crate::lun::Lun;
use crate::negotiate::SessionParams;
use std::collections::VecDeque;
use thiserror::Error;

/// Direction of a command's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirection {
    None,
    /// Data-In into the command's buffer (its length is the expected transfer length).
    Read,
    /// Data-Out from the command's buffer.
    Write,
}

/// Why a command did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    #[error("SCSI status {status:#04x} (sense {sense:02x?})")]
    Scsi { status: u8, sense: Vec<u8> },
    #[error("iSCSI response {0:#04x}: target failure")]
    Response(u8),
    #[error("the target rejected the command: {0:?}")]
    Rejected(RejectReason),
    #[error("the connection failed before the command completed")]
    ConnectionLost,
    #[error("the command timed out")]
    Timeout,
}

/// A finished command.
#[derive(Debug)]
pub struct Completion {
    pub user_tag: u64,
    /// The buffer handed to `submit`, filled for reads.
    pub buffer: Vec<u8>,
    /// Residual count when the target moved less (underflow) or wanted more (overflow).
    pub residual: i64,
    pub result: Result<(), CommandError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error("protocol violation by the target: {0}")]
    Protocol(&'static str),
    #[error("the target dropped or is dropping the connection (async event {0})")]
    Dropped(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SubmitError {
    #[error("all {0} task slots are busy")]
    QueueFull(usize),
    #[error("CDB longer than 16 bytes")]
    CdbTooLong,
    #[error("buffer of {0} bytes is larger than a command can move")]
    BufferTooLarge(usize),
    #[error("the session is closed")]
    Closed,
}

#[derive(Debug)]
struct Task {
    itt: u32,
    user_tag: u64,
    lun: Lun,
    cdb: [u8; 16],
    direction: DataDirection,
    buffer: Vec<u8>,
    sent: bool,
}

/// What is outstanding besides commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    None,
    Text { itt: u32 },
    Logout { itt: u32 },
}

/// One connection's Full Feature Phase state.
#[derive(Debug)]
pub struct InitiatorSession {
    params: SessionParams,
    digests: Digests,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    slots: Vec<Option<Task>>,
    generations: Vec<u16>,
    free: Vec<u16>,
    waiting: VecDeque<u16>,
    completions: VecDeque<Completion>,
    tx: Vec<u8>,
    rx: Vec<u8>,
    special: Special,
    text: Vec<u8>,
    text_done: Option<Vec<u8>>,
    logged_out: bool,
    logout_requested: bool,
    next_special_itt: u32,
    closed: bool,
}

/// Serial number arithmetic (RFC 1982) for 32-bit sequence numbers: a <= b.
fn sn_le(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) >= 0
}

/// ITTs of text and logout requests have the top bit set; command ITTs never do.
const SPECIAL_ITT_BASE: u32 = 0x8000_0000;

impl InitiatorSession {
    /// `cmd_sn`, `exp_stat_sn` and `max_cmd_sn` come from the login result.
    pub fn new(
        params: SessionParams,
        cmd_sn: u32,
        exp_stat_sn: u32,
        max_cmd_sn: u32,
        queue_depth: u16,
    ) -> Self {
        let qd = usize::from(queue_depth.max(1));
        let digests = Digests {
            header: params.header_digest,
            data: params.data_digest,
        };
        InitiatorSession {
            digests,
            cmd_sn,
            exp_stat_sn,
            max_cmd_sn,
            slots: (0..qd).map(|_| None).collect(),
            generations: vec![0; qd],
            free: (0..qd as u16).rev().collect(),
            waiting: VecDeque::with_capacity(qd),
            completions: VecDeque::with_capacity(qd),
            tx: Vec::with_capacity(256 * 1024),
            rx: Vec::with_capacity(256 * 1024),
            special: Special::None,
            text: Vec::new(),
            text_done: None,
            logged_out: false,
            logout_requested: false,
            next_special_itt: SPECIAL_ITT_BASE,
            closed: false,
            params,
        }
    }

    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// Commands in flight or waiting for the CmdSN window.
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// True once the target asked (Asynchronous Message) for a logout.
    pub fn logout_requested(&self) -> bool {
        self.logout_requested
    }

    pub fn logged_out(&self) -> bool {
        self.logged_out
    }

    /// CmdSN, ExpStatSN and MaxCmdSN, for handing the session to another driver.
    pub(crate) fn sequence_numbers(&self) -> (u32, u32, u32) {
        (self.cmd_sn, self.exp_stat_sn, self.max_cmd_sn)
    }

    /// Task slots (the queue depth).
    pub fn queue_depth(&self) -> usize {
        self.slots.len()
    }

    /// Nothing outstanding, queued to send, or partly received.
    pub(crate) fn is_quiet(&self) -> bool {
        self.outstanding() == 0
            && self.tx.is_empty()
            && self.rx.is_empty()
            && self.special == Special::None
            && !self.closed
            && !self.logged_out
    }

    /// Bytes waiting to be sent.
    pub fn pending_tx(&self) -> &[u8] {
        &self.tx
    }

    /// The transport sent `n` bytes of [`pending_tx`](Self::pending_tx).
    pub fn consume_tx(&mut self, n: usize) {
        let n = n.min(self.tx.len());
        self.tx.drain(..n);
    }

    /// Next finished command.
    pub fn next_completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    fn window_open(&self) -> bool {
        sn_le(self.cmd_sn, self.max_cmd_sn)
    }

    /// Queues a command. `buffer` is the data to write, or the space to read into.
    pub fn submit(
        &mut self,
        lun: Lun,
        cdb: &[u8],
        direction: DataDirection,
        buffer: Vec<u8>,
        user_tag: u64,
    ) -> Result<(), SubmitError> {
        if self.closed || self.logged_out {
            return Err(SubmitError::Closed);
        }
        if cdb.len() > 16 {
            return Err(SubmitError::CdbTooLong);
        }
        if u32::try_from(buffer.len()).is_err() {
            return Err(SubmitError::BufferTooLarge(buffer.len()));
        }
        let Some(slot) = self.free.pop() else {
            return Err(SubmitError::QueueFull(self.slots.len()));
        };
        let s = usize::from(slot);
        // 15-bit generation: command ITTs never have the top bit (special requests do) and
        // are never the reserved 0xffffffff.
        self.generations[s] = self.generations[s].wrapping_add(1) & 0x7fff;
        let itt = u32::from(self.generations[s]) << 16 | u32::from(slot);
        let mut c = [0u8; 16];
        c[..cdb.len()].copy_from_slice(cdb);
        self.slots[s] = Some(Task {
            itt,
            user_tag,
            lun,
            cdb: c,
            direction,
            buffer,
            sent: false,
        });
        self.waiting.push_back(slot);
        self.send_waiting();
        Ok(())
    }

    fn send_waiting(&mut self) {
        while self.window_open() {
            let Some(slot) = self.waiting.pop_front() else {
                return;
            };
            self.send_command(slot);
        }
    }

    fn push_pdu(&mut self, bhs: Bhs, data: &[u8]) {
        // Lengths are bounded by the negotiated limits, which fit the 24-bit field.
        if encode_pdu(&bhs, &[], data, self.digests, &mut self.tx).is_err() {
            self.closed = true;
        }
    }

    fn send_command(&mut self, slot: u16) {
        let cmd_sn = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let exp_stat_sn = self.exp_stat_sn;
        let p = &self.params;
        let mrdsl = p.target_max_recv_data_segment_length.max(512) as usize;
        let first_burst = p.first_burst_length as usize;
        let (immediate_data, initial_r2t) = (p.immediate_data, p.initial_r2t);
        let Some(task) = self.slots[usize::from(slot)].as_mut() else {
            return;
        };
        task.sent = true;
        let len = task.buffer.len();
        let write = task.direction == DataDirection::Write;
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
            read: task.direction == DataDirection::Read,
            write,
            attr: TaskAttribute::Simple,
            lun: task.lun,
            itt: task.itt,
            expected_data_transfer_length: len as u32,
            cmd_sn,
            exp_stat_sn,
            cdb: task.cdb,
        };
        let (itt, lun) = (task.itt, task.lun);
        // Taken out while PDUs are written, put back after.
        let buffer = std::mem::take(&mut task.buffer);
        self.push_pdu(Bhs::new(BhsBody::ScsiCommand(cmd)), &buffer[..imm]);
        if unsolicited_end > imm {
            self.push_data_out(itt, lun, RESERVED_TAG, &buffer, imm, unsolicited_end, mrdsl);
        }
        if let Some(task) = self.slots[usize::from(slot)].as_mut() {
            task.buffer = buffer;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push_data_out(
        &mut self,
        itt: u32,
        lun: Lun,
        ttt: u32,
        buffer: &[u8],
        start: usize,
        end: usize,
        mrdsl: usize,
    ) {
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
            self.push_pdu(Bhs::new(BhsBody::DataOut(d)), &buffer[at..at + n]);
            at += n;
            data_sn = data_sn.wrapping_add(1);
        }
    }

    /// Sends a text request (e.g. `SendTargets=All`); the answer is collected by
    /// [`take_text_response`](Self::take_text_response).
    pub fn send_text(&mut self, text: &[u8]) -> Result<(), SubmitError> {
        if self.closed || self.special != Special::None {
            return Err(SubmitError::Closed);
        }
        let itt = self.special_itt();
        self.special = Special::Text { itt };
        self.text.clear();
        self.text_done = None;
        let req = TextRequest {
            immediate: true,
            final_: true,
            continue_: false,
            lun: Lun::default(),
            itt,
            ttt: RESERVED_TAG,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.push_pdu(Bhs::new(BhsBody::TextRequest(req)), text);
        Ok(())
    }

    pub fn take_text_response(&mut self) -> Option<Vec<u8>> {
        self.text_done.take()
    }

    /// Asks to close the session.
    pub fn logout(&mut self) -> Result<(), SubmitError> {
        if self.closed || self.special != Special::None {
            return Err(SubmitError::Closed);
        }
        let itt = self.special_itt();
        self.special = Special::Logout { itt };
        let req = LogoutRequest {
            immediate: true,
            reason: LogoutReason::CloseSession,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.push_pdu(Bhs::new(BhsBody::LogoutRequest(req)), &[]);
        Ok(())
    }

    fn special_itt(&mut self) -> u32 {
        let itt = self.next_special_itt;
        self.next_special_itt =
            SPECIAL_ITT_BASE | (self.next_special_itt.wrapping_add(1) & 0x7fff_ffff);
        if self.next_special_itt == RESERVED_TAG {
            self.next_special_itt = SPECIAL_ITT_BASE;
        }
        itt
    }

    /// Bytes the transport received. Complete PDUs are processed; a partial one waits.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.rx.extend_from_slice(bytes);
        let limit = self.params.initiator_max_recv_data_segment_length;
        // Taken out so PDUs can be handled while borrowing it; put back below.
        let rx = std::mem::take(&mut self.rx);
        let mut used = 0;
        let result = loop {
            match parse_pdu(&rx[used..], self.digests, limit) {
                Ok(Parsed::Complete(pdu, n)) => {
                    used += n;
                    if let Err(e) = self.handle(pdu.bhs, pdu.data) {
                        break Err(e);
                    }
                }
                Ok(Parsed::Incomplete(_)) => break Ok(()),
                Err(e) => break Err(e.into()),
            }
        };
        self.rx = rx;
        self.rx.drain(..used);
        if result.is_err() {
            self.fail_all();
        }
        result
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

    fn task_slot(&self, itt: u32) -> Option<usize> {
        let s = (itt & 0xffff) as usize;
        match self.slots.get(s) {
            Some(Some(t)) if t.itt == itt && t.sent => Some(s),
            _ => None,
        }
    }

    fn complete(&mut self, slot: usize, residual: i64, result: Result<(), CommandError>) {
        if let Some(task) = self.slots[slot].take() {
            self.completions.push_back(Completion {
                user_tag: task.user_tag,
                buffer: task.buffer,
                residual,
                result,
            });
            self.free.push(slot as u16);
        }
    }

    fn fail_all(&mut self) {
        self.closed = true;
        self.waiting.clear();
        for s in 0..self.slots.len() {
            self.complete(s, 0, Err(CommandError::ConnectionLost));
        }
    }

    /// Fails every command (e.g. on a timeout or a transport error).
    pub fn abort_all(&mut self) {
        self.fail_all();
    }

    fn handle(&mut self, bhs: Bhs, data: &[u8]) -> Result<(), SessionError> {
        use SessionError::Protocol as P;
        match bhs.body {
            BhsBody::DataIn(d) => {
                self.update_window(d.exp_cmd_sn, d.max_cmd_sn);
                let slot = self
                    .task_slot(d.itt)
                    .ok_or(P("Data-In for an unknown task"))?;
                let task = self.slots[slot].as_mut().ok_or(P("no task"))?;
                if task.direction != DataDirection::Read && !data.is_empty() {
                    return Err(P("Data-In for a command without read data"));
                }
                let off = d.buffer_offset as usize;
                let dst = task
                    .buffer
                    .get_mut(off..off + data.len())
                    .ok_or(P("Data-In beyond the expected transfer length"))?;
                dst.copy_from_slice(data);
                if d.status_present {
                    self.status_seen(d.stat_sn);
                    let residual = signed_residual(d.underflow, d.overflow, d.residual_count);
                    let result = if d.status == 0 {
                        Ok(())
                    } else {
                        Err(CommandError::Scsi {
                            status: d.status,
                            sense: Vec::new(),
                        })
                    };
                    self.complete(slot, residual, result);
                }
            }
            BhsBody::ScsiResponse(r) => {
                self.status_seen(r.stat_sn);
                self.update_window(r.exp_cmd_sn, r.max_cmd_sn);
                let slot = self
                    .task_slot(r.itt)
                    .ok_or(P("SCSI Response for an unknown task"))?;
                let residual = signed_residual(r.underflow, r.overflow, r.residual_count);
                let result = match r.response {
                    ScsiResponseCode::CommandCompleted if r.status == 0 => Ok(()),
                    ScsiResponseCode::CommandCompleted => {
                        // Data segment: SenseLength (2 bytes) then sense data.
                        let sense = data
                            .get(0..2)
                            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                            .and_then(|n| data.get(2..2 + n))
                            .unwrap_or(&[])
                            .to_vec();
                        Err(CommandError::Scsi {
                            status: r.status,
                            sense,
                        })
                    }
                    ScsiResponseCode::TargetFailure => Err(CommandError::Response(1)),
                    ScsiResponseCode::VendorSpecific(v) => Err(CommandError::Response(v)),
                };
                self.complete(slot, residual, result);
            }
            BhsBody::R2t(r) => {
                self.update_window(r.exp_cmd_sn, r.max_cmd_sn);
                let slot = self.task_slot(r.itt).ok_or(P("R2T for an unknown task"))?;
                let mrdsl = self.params.target_max_recv_data_segment_length.max(512) as usize;
                let task = self.slots[slot].as_mut().ok_or(P("no task"))?;
                if task.direction != DataDirection::Write {
                    return Err(P("R2T for a command without write data"));
                }
                let start = r.buffer_offset as usize;
                let end = start
                    .checked_add(r.desired_data_transfer_length as usize)
                    .filter(|&e| e <= task.buffer.len() && e > start)
                    .ok_or(P("R2T outside the write buffer"))?;
                let (itt, lun) = (task.itt, task.lun);
                let buffer = std::mem::take(&mut task.buffer);
                self.push_data_out(itt, lun, r.ttt, &buffer, start, end, mrdsl);
                if let Some(task) = self.slots[slot].as_mut() {
                    task.buffer = buffer;
                }
            }
            BhsBody::NopIn(n) => {
                self.update_window(n.exp_cmd_sn, n.max_cmd_sn);
                if n.itt != RESERVED_TAG {
                    // Answer to a NOP-Out of ours; StatSN advanced.
                    self.status_seen(n.stat_sn);
                }
                if n.ttt != RESERVED_TAG {
                    // A ping from the target: answer with its TTT, echoing the data.
                    let out = NopOut {
                        immediate: true,
                        lun: n.lun,
                        itt: RESERVED_TAG,
                        ttt: n.ttt,
                        cmd_sn: self.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                    };
                    self.push_pdu(Bhs::new(BhsBody::NopOut(out)), data);
                }
            }
            BhsBody::TextResponse(t) => {
                self.status_seen(t.stat_sn);
                self.update_window(t.exp_cmd_sn, t.max_cmd_sn);
                if self.special != (Special::Text { itt: t.itt }) {
                    return Err(P("Text Response without a Text Request"));
                }
                if self.text.len() + data.len() > 1 << 20 {
                    return Err(P("text response over 1 MiB"));
                }
                self.text.extend_from_slice(data);
                if t.continue_ {
                    // Ask for the rest with an empty request carrying the target's TTT.
                    let req = TextRequest {
                        immediate: true,
                        final_: true,
                        continue_: false,
                        lun: Lun::default(),
                        itt: t.itt,
                        ttt: t.ttt,
                        cmd_sn: self.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                    };
                    self.push_pdu(Bhs::new(BhsBody::TextRequest(req)), &[]);
                } else {
                    self.special = Special::None;
                    self.text_done = Some(std::mem::take(&mut self.text));
                }
            }
            BhsBody::LogoutResponse(l) => {
                self.status_seen(l.stat_sn);
                if self.special != (Special::Logout { itt: l.itt }) {
                    return Err(P("Logout Response without a Logout Request"));
                }
                self.special = Special::None;
                self.logged_out = true;
                self.fail_all();
            }
            BhsBody::AsyncMessage(a) => {
                self.status_seen(a.stat_sn);
                self.update_window(a.exp_cmd_sn, a.max_cmd_sn);
                match a.event {
                    crate::bhs::AsyncEvent::LogoutRequested => self.logout_requested = true,
                    crate::bhs::AsyncEvent::ConnectionDropped
                    | crate::bhs::AsyncEvent::AllConnectionsDropped => {
                        return Err(SessionError::Dropped(a.event.code()))
                    }
                    _ => {}
                }
            }
            BhsBody::Reject(r) => {
                self.status_seen(r.stat_sn);
                self.update_window(r.exp_cmd_sn, r.max_cmd_sn);
                // The data segment is the rejected PDU's header: find its task.
                let itt = data
                    .get(16..20)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                match itt.and_then(|itt| self.task_slot(itt)) {
                    Some(slot) => self.complete(slot, 0, Err(CommandError::Rejected(r.reason))),
                    None => return Err(P("Reject of a PDU we cannot match")),
                }
            }
            BhsBody::TaskMgmtResponse(t) => {
                self.status_seen(t.stat_sn);
                self.update_window(t.exp_cmd_sn, t.max_cmd_sn);
            }
            _ => return Err(P("an initiator opcode from the target")),
        }
        self.send_waiting();
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bhs::{DataIn, NopIn, R2t, ScsiResponse};

    fn params() -> SessionParams {
        SessionParams {
            target_max_recv_data_segment_length: 4096,
            initiator_max_recv_data_segment_length: 8192,
            first_burst_length: 8192,
            max_burst_length: 16384,
            immediate_data: true,
            initial_r2t: false,
            ..SessionParams::default()
        }
    }

    /// Every PDU the session queued, decoded.
    fn sent(s: &mut InitiatorSession) -> Vec<(Bhs, Vec<u8>)> {
        let mut out = Vec::new();
        let tx = s.pending_tx().to_vec();
        let mut at = 0;
        while at < tx.len() {
            let Parsed::Complete(p, n) = parse_pdu(&tx[at..], Digests::default(), 1 << 20).unwrap()
            else {
                panic!("partial PDU in tx")
            };
            out.push((p.bhs, p.data.to_vec()));
            at += n;
        }
        s.consume_tx(tx.len());
        out
    }

    fn feed(s: &mut InitiatorSession, body: BhsBody, data: &[u8]) -> Result<(), SessionError> {
        let mut wire = Vec::new();
        encode_pdu(&Bhs::new(body), &[], data, Digests::default(), &mut wire).unwrap();
        // Delivered in two pieces to exercise reassembly.
        let (a, b) = wire.split_at(wire.len() / 2);
        s.receive(a)?;
        s.receive(b)
    }

    fn response(itt: u32, stat_sn: u32, max_cmd_sn: u32, status: u8) -> BhsBody {
        BhsBody::ScsiResponse(ScsiResponse {
            bidi_read_overflow: false,
            bidi_read_underflow: false,
            overflow: false,
            underflow: false,
            response: ScsiResponseCode::CommandCompleted,
            status,
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

    #[test]
    fn write_with_immediate_unsolicited_and_r2t_data() {
        let mut s = InitiatorSession::new(params(), 10, 5, 20, 4);
        let data: Vec<u8> = (0..20000u32).map(|i| i as u8).collect();
        s.submit(
            Lun::from_index(1),
            &[0x8a; 16],
            DataDirection::Write,
            data.clone(),
            7,
        )
        .unwrap();
        let pdus = sent(&mut s);
        assert_eq!(pdus.len(), 2);
        let BhsBody::ScsiCommand(c) = pdus[0].0.body else {
            panic!()
        };
        assert!(c.write && !c.final_, "unsolicited Data-Out follows");
        assert_eq!((c.cmd_sn, c.exp_stat_sn), (10, 5));
        assert_eq!(c.expected_data_transfer_length, 20000);
        assert_eq!(
            pdus[0].1,
            data[..4096],
            "immediate data up to MaxRecvDataSegmentLength"
        );
        let BhsBody::DataOut(d) = pdus[1].0.body else {
            panic!()
        };
        assert_eq!(
            (d.ttt, d.data_sn, d.buffer_offset, d.final_),
            (RESERVED_TAG, 0, 4096, true)
        );
        assert_eq!(
            pdus[1].1,
            data[4096..8192],
            "unsolicited up to FirstBurstLength"
        );

        let itt = c.itt;
        feed(
            &mut s,
            BhsBody::R2t(R2t {
                lun: Lun::from_index(1),
                itt,
                ttt: 0x55,
                stat_sn: 5,
                exp_cmd_sn: 11,
                max_cmd_sn: 20,
                r2t_sn: 0,
                buffer_offset: 8192,
                desired_data_transfer_length: 11808,
            }),
            &[],
        )
        .unwrap();
        let pdus = sent(&mut s);
        let got: Vec<(u32, u32, u32, bool, usize)> = pdus
            .iter()
            .map(|(b, d)| {
                let BhsBody::DataOut(o) = b.body else {
                    panic!()
                };
                (o.ttt, o.data_sn, o.buffer_offset, o.final_, d.len())
            })
            .collect();
        assert_eq!(
            got,
            [
                (0x55, 0, 8192, false, 4096),
                (0x55, 1, 12288, false, 4096),
                (0x55, 2, 16384, true, 3616)
            ]
        );
        assert_eq!(pdus[2].1, data[16384..]);
        feed(&mut s, response(itt, 5, 20, 0), &[]).unwrap();
        let c = s.next_completion().unwrap();
        assert_eq!((c.user_tag, c.result), (7, Ok(())));
        assert_eq!(s.outstanding(), 0);
        // R2T beyond the buffer is a protocol violation.
        s.submit(
            Lun::default(),
            &[0x8a],
            DataDirection::Write,
            vec![0; 100],
            8,
        )
        .unwrap();
        let BhsBody::ScsiCommand(c) = sent(&mut s)[0].0.body else {
            panic!()
        };
        let bad = BhsBody::R2t(R2t {
            itt: c.itt,
            ttt: 1,
            buffer_offset: 50,
            desired_data_transfer_length: 51,
            ..R2t::default()
        });
        assert!(feed(&mut s, bad, &[]).is_err());
        let c = s.next_completion().unwrap();
        assert_eq!(c.result, Err(CommandError::ConnectionLost));
    }

    #[test]
    fn cmdsn_window_holds_commands() {
        // ExpCmdSN 10, MaxCmdSN 11: two commands may go.
        let mut s = InitiatorSession::new(params(), 10, 1, 11, 8);
        for tag in 0..3 {
            s.submit(
                Lun::default(),
                &[0x28],
                DataDirection::Read,
                vec![0; 512],
                tag,
            )
            .unwrap();
        }
        let pdus = sent(&mut s);
        assert_eq!(pdus.len(), 2);
        let BhsBody::ScsiCommand(first) = pdus[0].0.body else {
            panic!()
        };
        // Data-In with status completes the first and opens the window by one.
        let data = vec![0xabu8; 512];
        feed(
            &mut s,
            BhsBody::DataIn(DataIn {
                final_: true,
                status_present: true,
                itt: first.itt,
                ttt: RESERVED_TAG,
                stat_sn: 1,
                exp_cmd_sn: 11,
                max_cmd_sn: 12,
                ..DataIn::default()
            }),
            &data,
        )
        .unwrap();
        let c = s.next_completion().unwrap();
        assert_eq!((c.user_tag, c.result.clone(), c.buffer), (0, Ok(()), data));
        let pdus = sent(&mut s);
        assert_eq!(pdus.len(), 1);
        let BhsBody::ScsiCommand(third) = pdus[0].0.body else {
            panic!()
        };
        assert_eq!((third.cmd_sn, third.exp_stat_sn), (12, 2));
        // A window update with MaxCmdSN < ExpCmdSN - 1 is ignored.
        s.update_window(20, 5);
        assert_eq!(s.max_cmd_sn, 12);
    }

    #[test]
    fn nop_in_ping_is_answered_and_sense_is_returned() {
        let mut s = InitiatorSession::new(params(), 1, 1, 10, 2);
        feed(
            &mut s,
            BhsBody::NopIn(NopIn {
                itt: RESERVED_TAG,
                ttt: 0x77,
                stat_sn: 1,
                exp_cmd_sn: 1,
                max_cmd_sn: 10,
                ..NopIn::default()
            }),
            b"ping",
        )
        .unwrap();
        let pdus = sent(&mut s);
        let BhsBody::NopOut(n) = pdus[0].0.body else {
            panic!()
        };
        assert!(n.immediate);
        assert_eq!((n.itt, n.ttt, n.cmd_sn), (RESERVED_TAG, 0x77, 1));
        assert_eq!(pdus[0].1, b"ping");

        s.submit(
            Lun::default(),
            &[0x88],
            DataDirection::Read,
            vec![0; 512],
            3,
        )
        .unwrap();
        let BhsBody::ScsiCommand(c) = sent(&mut s)[0].0.body else {
            panic!()
        };
        let sense = [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0];
        let mut seg = vec![0, sense.len() as u8];
        seg.extend_from_slice(&sense);
        feed(&mut s, response(c.itt, 1, 10, 2), &seg).unwrap();
        let done = s.next_completion().unwrap();
        assert_eq!(
            done.result,
            Err(CommandError::Scsi {
                status: 2,
                sense: sense.to_vec()
            })
        );
        // Data-In for a task that does not exist.
        assert!(feed(
            &mut s,
            BhsBody::DataIn(DataIn {
                itt: 0x1234,
                ..DataIn::default()
            }),
            &[0; 4]
        )
        .is_err());
        assert_eq!(
            s.submit(Lun::default(), &[0], DataDirection::None, Vec::new(), 0),
            Err(SubmitError::Closed)
        );
    }
}
