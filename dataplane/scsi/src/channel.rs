//! `LunChannel`: one LUN on one reactor. The transport calls [`LunChannel::prepare`] when a
//! command arrives (direction and exact byte count, before any data moves),
//! [`LunChannel::submit`] once the data-out payload sits in pool buffers, and
//! [`LunChannel::poll`] from its poller to collect [`ScsiCompletion`]s. No callbacks: every
//! submitted task comes back exactly once through `poll`, with its tag.
//!
//! READ and WRITE go straight to the bdev channel with the task's own buffers: no lock, no
//! heap allocation (slots, queues and scratch space are reused), no per-I/O logging. Unit
//! attentions, reservations and ALUA states are checked against per-channel snapshots
//! guarded by atomic generations. Commands the LUN answers itself build their data into a
//! scratch vector and copy it into a pool buffer, truncated to the allocation length.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use gyre_bdev::{BdevChannel, IoCompletion, IoError, IoFlags, IoOp, IoRequest};
use gyre_reactor::{global_pool, PoolCache, SgList};

use crate::cdb::{decode, Cdb, Command, CommandInfo, Limits};
use crate::emulate::{self, InquiryCtx, ModeCtx, ModeValues};
use crate::lun::{AluaState, NexusId, ScsiLun, TmfResponse};
use crate::pr::{parse_pr_out, AccessClass, NexusIdent, PrOutcome, ReservationView};
use crate::rangelock::{RangeGuard, WriteGate};
use crate::sense::{Asc, Sense, SenseBuf, SenseKey};
use crate::ScsiError;

/// SAM-5 task attributes. We run every task as SIMPLE: the bdev layer has no ordering
/// barriers, and initiators that need ordering wait for completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskAttr {
    #[default]
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

/// SCSI status codes (SAM-5 5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ScsiStatus {
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    TaskAborted = 0x40,
}

/// One command from the transport.
#[derive(Debug)]
pub struct ScsiTask {
    pub cdb: Cdb,
    pub nexus: NexusId,
    pub attr: TaskAttr,
    /// The transport's identification of the task, returned untouched.
    pub tag: u64,
    /// The data-out payload (writes, parameter lists), as received.
    pub data_out: SgList,
}

impl ScsiTask {
    pub fn new(cdb: &[u8], nexus: NexusId, tag: u64) -> ScsiTask {
        ScsiTask {
            cdb: Cdb::new(cdb),
            nexus,
            attr: TaskAttr::Simple,
            tag,
            data_out: SgList::new(),
        }
    }
}

/// A finished command.
#[derive(Debug)]
pub struct ScsiCompletion {
    pub tag: u64,
    pub status: ScsiStatus,
    /// Sense data (non-empty with CHECK CONDITION).
    pub sense: SenseBuf,
    /// Data to send to the initiator: the first `data_in_len` bytes.
    pub data_in: SgList,
    pub data_in_len: usize,
    /// The task's data-out buffers, for reuse.
    pub data_out: SgList,
}

/// Where a bdev request's buffers go when it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home {
    DataOut,
    DataIn,
    Aux,
}

/// What a slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Free,
    /// Waiting for pool buffers, a range lock, or a COMPARE AND WRITE to finish.
    Waiting,
    /// A bdev request is in flight.
    Io,
}

/// Steps of the multi-step commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Main,
    Compare,
    Write,
}

enum Fail {
    Check(Sense),
    Status(ScsiStatus),
}

struct Slot {
    phase: Phase,
    step: Step,
    tag: u64,
    nexus: NexusId,
    cmd: Command,
    data_out: SgList,
    data_in: SgList,
    data_in_len: usize,
    aux: SgList,
    home: Home,
    range: Option<RangeGuard>,
    gate_open: bool,
    aborted: bool,
    epoch: u64,
    /// Progress of looping commands (blocks written, descriptors done).
    cursor: u64,
    fua: bool,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            phase: Phase::Free,
            step: Step::Main,
            tag: 0,
            nexus: NexusId(0),
            cmd: Command::TestUnitReady,
            data_out: SgList::new(),
            data_in: SgList::new(),
            data_in_len: 0,
            aux: SgList::new(),
            home: Home::Aux,
            range: None,
            gate_open: false,
            aborted: false,
            epoch: 0,
            cursor: 0,
            fua: false,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct NexusCache {
    known: bool,
    initiator: Option<Arc<str>>,
    rtpi: u16,
    group: Option<usize>,
    /// The unit-attention generation at which this nexus had none pending (0: unknown).
    ua_clean: u64,
}

/// Blocks per sub-write of WRITE SAME.
const WRITE_SAME_CHUNK_BYTES: u64 = 128 << 10;

/// One LUN on one reactor. `!Send`.
pub struct LunChannel {
    lun: Arc<ScsiLun>,
    bdev: BdevChannel,
    pool: PoolCache,
    gate: Arc<WriteGate>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    waiting: VecDeque<u32>,
    io_done: VecDeque<IoCompletion>,
    done: VecDeque<ScsiCompletion>,
    scratch: Vec<u8>,
    params: Vec<u8>,
    lun_ids: Vec<u64>,
    res: ReservationView,
    nexus: Vec<NexusCache>,
    nexus_gen: u64,
    reset_epoch: u64,
    abort_epoch: u64,
    writable: bool,
    pr_uas: Vec<crate::pr::PrUnitAttention>,
}

impl ScsiLun {
    /// A channel for the calling reactor thread. Control path.
    pub fn channel(self: &Arc<Self>) -> Result<LunChannel, ScsiError> {
        let bdev = self.desc.channel()?;
        let pool = global_pool()?.local();
        Ok(LunChannel {
            gate: self.range_lock().new_gate(),
            res: self.reservation_view(),
            reset_epoch: self.reset_epoch.load(Ordering::Acquire),
            abort_epoch: self.abort_epoch.load(Ordering::Acquire),
            writable: self.desc.is_writable(),
            lun: self.clone(),
            bdev,
            pool,
            slots: Vec::with_capacity(128),
            free: Vec::with_capacity(128),
            waiting: VecDeque::with_capacity(128),
            io_done: VecDeque::with_capacity(128),
            done: VecDeque::with_capacity(128),
            scratch: Vec::with_capacity(4096),
            params: Vec::with_capacity(4096),
            lun_ids: Vec::with_capacity(64),
            nexus: Vec::new(),
            nexus_gen: 0,
            pr_uas: Vec::new(),
        })
    }
}

/// Which commands an ALUA state lets through (SPC-4 5.15.2.4).
fn alua_allows(state: AluaState, cmd: &Command) -> Result<(), Sense> {
    let always = matches!(
        cmd,
        Command::Inquiry { .. }
            | Command::ReportLuns { .. }
            | Command::ReportTargetPortGroups { .. }
            | Command::RequestSense { .. }
            | Command::ReportSupportedOpcodes { .. }
            | Command::ReportSupportedTmfs { .. }
    );
    match state {
        AluaState::ActiveOptimized | AluaState::ActiveNonOptimized => Ok(()),
        _ if always => Ok(()),
        AluaState::Standby
            if matches!(
                cmd,
                Command::ModeSense { .. }
                    | Command::ModeSelect { .. }
                    | Command::PersistentReserveIn { .. }
                    | Command::PersistentReserveOut { .. }
            ) =>
        {
            Ok(())
        }
        AluaState::Standby => Err(Sense::new(
            SenseKey::NotReady,
            Asc::LU_NOT_ACCESSIBLE_STANDBY,
        )),
        AluaState::Unavailable => Err(Sense::new(
            SenseKey::NotReady,
            Asc::LU_NOT_ACCESSIBLE_UNAVAILABLE,
        )),
        AluaState::Transitioning => Err(Sense::new(
            SenseKey::NotReady,
            Asc::LU_NOT_ACCESSIBLE_TRANSITIONING,
        )),
    }
}

/// How reservations treat a command (SPC-4 5.13.1 table, SBC-3 4.17).
fn access_class(cmd: &Command) -> AccessClass {
    match cmd {
        Command::Inquiry { .. }
        | Command::ReportLuns { .. }
        | Command::RequestSense { .. }
        | Command::ReportSupportedOpcodes { .. }
        | Command::ReportSupportedTmfs { .. }
        | Command::ReportTargetPortGroups { .. }
        | Command::PersistentReserveOut { .. } => AccessClass::Always,
        Command::Reserve | Command::Release => AccessClass::Spc2,
        Command::TestUnitReady
        | Command::ReadCapacity10
        | Command::ReadCapacity16 { .. }
        | Command::PersistentReserveIn { .. } => AccessClass::Meta,
        Command::Read { .. }
        | Command::Verify { .. }
        | Command::GetLbaStatus { .. }
        | Command::ModeSense { .. }
        | Command::PreFetch { .. } => AccessClass::Read,
        _ => AccessClass::Write,
    }
}

/// Sense for a failed bdev request.
fn io_sense(e: IoError, reading: bool) -> Fail {
    match e {
        IoError::OutOfRange { .. } => Fail::Check(Sense::lba_out_of_range()),
        IoError::Miscompare { offset } => Fail::Check(Sense::miscompare(offset)),
        IoError::NoSpace => Fail::Check(Sense::new(
            SenseKey::DataProtect,
            Asc::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
        )),
        IoError::ReadOnly => Fail::Check(Sense::new(SenseKey::DataProtect, Asc::WRITE_PROTECTED)),
        IoError::Aborted => Fail::Status(ScsiStatus::TaskAborted),
        IoError::Removed => Fail::Check(Sense::illegal(Asc::LOGICAL_UNIT_NOT_SUPPORTED)),
        IoError::Device(_) => Fail::Check(Sense::new(
            SenseKey::MediumError,
            if reading {
                Asc::UNRECOVERED_READ_ERROR
            } else {
                Asc::WRITE_ERROR
            },
        )),
        IoError::Unsupported(_) | IoError::BufferTooSmall { .. } | IoError::Empty(_) => {
            Fail::Check(Sense::illegal(Asc::INTERNAL_TARGET_FAILURE))
        }
    }
}

fn is_zero(sg: &SgList, len: usize) -> bool {
    let mut zero = true;
    sg.for_each_chunk(0, len, |c| zero &= c.iter().all(|&b| b == 0));
    zero
}

/// Fills `dst` (`total` bytes) with copies of the first `unit` bytes of `src`.
fn replicate(src: &SgList, unit: usize, dst: &mut SgList, total: usize) {
    let mut block = [0u8; 4096];
    let unit = unit.min(block.len());
    src.copy_to_slice(&mut block[..unit]);
    let mut pos = 0usize;
    dst.for_each_chunk_mut(0, total, |c| {
        for b in c.iter_mut() {
            *b = block[pos % unit];
            pos += 1;
        }
    });
}

impl LunChannel {
    pub fn lun(&self) -> &Arc<ScsiLun> {
        &self.lun
    }

    /// Tasks submitted and not yet returned by `poll`.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.phase != Phase::Free).count() + self.done.len()
    }

    fn limits(&self) -> Limits {
        self.lun.limits()
    }

    /// Direction and exact transfer length of `cdb`, before any data moves. An error means
    /// the command will fail without data: submit it anyway (with no data) and its CHECK
    /// CONDITION comes back through `poll`, with unit attentions taking precedence.
    pub fn prepare(&self, cdb: &Cdb) -> Result<CommandInfo, Sense> {
        let lim = self.limits();
        decode(cdb, &lim).map(|c| c.info(lim.block_size))
    }

    fn refresh_nexus(&mut self, n: NexusId) -> usize {
        let g = self.lun.nexuses.generation();
        if g != self.nexus_gen {
            self.nexus_gen = g;
            for c in &mut self.nexus {
                *c = NexusCache::default();
            }
        }
        let i = n.0 as usize;
        if i >= self.nexus.len() {
            // Grows once per new nexus index, never per I/O.
            self.nexus.resize(i + 1, NexusCache::default());
        }
        if !self.nexus[i].known {
            let (init, rtpi) = match self.lun.nexus_ident(n) {
                Some((a, b)) => (Some(a), b),
                None => (None, 0),
            };
            let group = self.lun.group_of(rtpi);
            self.nexus[i] = NexusCache {
                known: true,
                initiator: init,
                rtpi,
                group,
                ua_clean: 0,
            };
        }
        i
    }

    fn check_epoch(&mut self) {
        let a = self.lun.abort_epoch.load(Ordering::Acquire);
        if a != self.abort_epoch {
            let slots = &mut self.slots;
            self.abort_epoch = self.lun.aborts_since(self.abort_epoch, |n| {
                for s in slots.iter_mut() {
                    if s.phase != Phase::Free && s.nexus == n {
                        s.aborted = true;
                    }
                }
            });
        }
        let e = self.lun.reset_epoch.load(Ordering::Acquire);
        if e != self.reset_epoch {
            self.reset_epoch = e;
            for s in &mut self.slots {
                if s.phase != Phase::Free && s.epoch != e {
                    s.aborted = true;
                }
            }
        }
    }

    /// Starts `task`; its completion comes from [`LunChannel::poll`].
    pub fn submit(&mut self, task: ScsiTask) {
        self.check_epoch();
        let lim = self.limits();
        let decoded = decode(&task.cdb, &lim);
        let ni = self.refresh_nexus(task.nexus);
        let idx = self.alloc_slot();
        {
            let s = &mut self.slots[idx as usize];
            s.phase = Phase::Waiting;
            s.step = Step::Main;
            s.tag = task.tag;
            s.nexus = task.nexus;
            s.data_out = task.data_out;
            s.data_in_len = 0;
            s.aborted = false;
            s.epoch = self.reset_epoch;
            s.cursor = 0;
            s.gate_open = false;
            s.fua = false;
        }
        let opcode = task.cdb.opcode();
        // Unit attentions (SPC-4 5.14): INQUIRY and REPORT LUNS neither see nor clear them;
        // REQUEST SENSE returns one as its data.
        let ua_exempt = matches!(
            opcode,
            crate::cdb::op::INQUIRY | crate::cdb::op::REPORT_LUNS | crate::cdb::op::REQUEST_SENSE
        );
        let ua_gen = self.lun.ua_gen.load(Ordering::Acquire);
        if !ua_exempt && self.nexus[ni].ua_clean != ua_gen {
            let (ua, empty) = self.lun.pending_ua(task.nexus, true);
            if empty {
                self.nexus[ni].ua_clean = ua_gen;
            }
            if let Some(asc) = ua {
                return self.finish(idx, Err(Fail::Check(Sense::unit_attention(asc))));
            }
        }
        let cmd = match decoded {
            Ok(c) => c,
            Err(sense) => return self.finish(idx, Err(Fail::Check(sense))),
        };
        self.slots[idx as usize].cmd = cmd;
        if let Some(g) = self.nexus[ni].group {
            if let Err(sense) = alua_allows(self.lun.alua_state(g), &cmd) {
                return self.finish(idx, Err(Fail::Check(sense)));
            }
        }
        let res_gen = self.lun.res_gen.load(Ordering::Acquire);
        if res_gen != self.res.generation {
            self.res = self.lun.reservation_view();
        }
        if !self.res.is_open() {
            let nc = &self.nexus[ni];
            let ident = NexusIdent {
                initiator: nc.initiator.as_deref().unwrap_or(""),
                rtpi: nc.rtpi,
            };
            if self.res.conflicts(access_class(&cmd), &ident) {
                return self.finish(idx, Err(Fail::Status(ScsiStatus::ReservationConflict)));
            }
        }
        if cmd.writes_medium() && !self.writable {
            return self.finish(
                idx,
                Err(Fail::Check(Sense::new(
                    SenseKey::DataProtect,
                    Asc::WRITE_PROTECTED,
                ))),
            );
        }
        // A WRITE whose payload is shorter than its transfer length (the transport's expected
        // data transfer length was smaller) writes the whole blocks that arrived, as
        // initiators and libiscsi's residual tests expect; other commands need all of it.
        let info = cmd.info(lim.block_size);
        let have = self.slots[idx as usize].data_out.len() as u64;
        if info.exact && have != info.transfer_len {
            return self.finish(
                idx,
                Err(Fail::Check(Sense::illegal(
                    Asc::INVALID_FIELD_IN_INFORMATION_UNIT,
                ))),
            );
        }
        if info.direction == crate::cdb::DataDirection::Out && have < info.transfer_len {
            let whole = (have / lim.block_size as u64) as u32;
            match cmd {
                Command::Write { lba, fua, .. } => {
                    self.slots[idx as usize].cmd = Command::Write {
                        lba,
                        blocks: whole,
                        fua,
                    };
                }
                Command::WriteAndVerify { lba, bytchk, .. } => {
                    self.slots[idx as usize].cmd = Command::WriteAndVerify {
                        lba,
                        blocks: whole,
                        bytchk,
                    };
                }
                Command::Unmap { .. }
                | Command::ModeSelect { .. }
                | Command::PersistentReserveOut { .. } => {}
                _ => {
                    return self.finish(
                        idx,
                        Err(Fail::Check(Sense::illegal(
                            Asc::INVALID_FIELD_IN_INFORMATION_UNIT,
                        ))),
                    )
                }
            }
        }
        self.start(idx, &lim);
    }

    fn alloc_slot(&mut self) -> u32 {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::empty());
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn submit_io(&mut self, idx: u32, op: IoOp, lba: u64, blocks: u64, home: Home) {
        let s = &mut self.slots[idx as usize];
        let buf = match home {
            Home::DataOut => std::mem::take(&mut s.data_out),
            Home::DataIn => std::mem::take(&mut s.data_in),
            Home::Aux => std::mem::take(&mut s.aux),
        };
        s.home = home;
        s.phase = Phase::Io;
        let mut req = IoRequest::new(op, lba, blocks, buf, idx as u64);
        req.flags = IoFlags { fua: s.fua };
        self.bdev.submit(req);
    }

    fn wait(&mut self, idx: u32) {
        self.slots[idx as usize].phase = Phase::Waiting;
        self.waiting.push_back(idx);
    }

    /// Write admission: counts the write in this channel's gate and checks the range lock.
    fn admit_write(&mut self, idx: u32, lba: u64, blocks: u64) -> bool {
        if self.slots[idx as usize].gate_open {
            return true;
        }
        self.gate.begin();
        if self.lun.range_lock().write_may_proceed(lba, blocks) {
            self.slots[idx as usize].gate_open = true;
            true
        } else {
            self.gate.end();
            false
        }
    }

    /// Takes the range lock for an atomic command; false while waiting for it.
    fn acquire_range(&mut self, idx: u32, lba: u64, blocks: u64) -> bool {
        let s = &mut self.slots[idx as usize];
        if s.range.is_none() {
            match self.lun.range_lock().try_acquire(lba, blocks) {
                Some(g) => s.range = Some(g),
                None => return false,
            }
        }
        match s.range.as_mut() {
            Some(g) => self.lun.range_lock().drained(g),
            None => false,
        }
    }

    fn write_fua(&self, fua: bool) -> bool {
        fua || !self.lun.wce.load(Ordering::Relaxed)
    }

    /// Runs or continues slot `idx` from its current step (not in I/O).
    fn start(&mut self, idx: u32, lim: &Limits) {
        if self.slots[idx as usize].aborted {
            return self.finish(idx, Err(Fail::Status(ScsiStatus::TaskAborted)));
        }
        let bs = lim.block_size as u64;
        let cmd = self.slots[idx as usize].cmd;
        match cmd {
            Command::Read { lba, blocks, .. } => {
                if blocks == 0 {
                    return self.finish(idx, Ok(()));
                }
                let len = blocks as u64 * bs;
                match self.pool.try_alloc(len as usize) {
                    Some(buf) => {
                        let s = &mut self.slots[idx as usize];
                        s.data_in = buf;
                        s.data_in_len = len as usize;
                        s.fua = false;
                        self.submit_io(idx, IoOp::Read, lba, blocks as u64, Home::DataIn);
                    }
                    None => self.wait(idx),
                }
            }
            Command::Write { lba, blocks, fua } => {
                if blocks == 0 {
                    return self.finish(idx, Ok(()));
                }
                if !self.admit_write(idx, lba, blocks as u64) {
                    return self.wait(idx);
                }
                self.slots[idx as usize].fua = self.write_fua(fua);
                self.submit_io(idx, IoOp::Write, lba, blocks as u64, Home::DataOut);
            }
            Command::WriteAndVerify { lba, blocks, .. } => {
                if blocks == 0 {
                    return self.finish(idx, Ok(()));
                }
                if !self.admit_write(idx, lba, blocks as u64) {
                    return self.wait(idx);
                }
                // Verification reads the medium: write through the cache first.
                self.slots[idx as usize].fua = true;
                self.submit_io(idx, IoOp::Write, lba, blocks as u64, Home::DataOut);
            }
            Command::Verify {
                lba,
                blocks,
                bytchk,
            } => {
                if blocks == 0 {
                    return self.finish(idx, Ok(()));
                }
                let len = (blocks as u64 * bs) as usize;
                if bytchk == 1 {
                    self.slots[idx as usize].step = Step::Compare;
                    return self.submit_io(idx, IoOp::Compare, lba, blocks as u64, Home::DataOut);
                }
                let Some(mut buf) = self.pool.try_alloc(len) else {
                    return self.wait(idx);
                };
                let op = if bytchk == 3 {
                    replicate(
                        &self.slots[idx as usize].data_out,
                        bs as usize,
                        &mut buf,
                        len,
                    );
                    self.slots[idx as usize].step = Step::Compare;
                    IoOp::Compare
                } else {
                    IoOp::Read
                };
                self.slots[idx as usize].aux = buf;
                self.submit_io(idx, op, lba, blocks as u64, Home::Aux);
            }
            Command::SynchronizeCache { .. } => {
                if self.lun.desc.info().supports(IoOp::Flush) {
                    self.submit_io(idx, IoOp::Flush, 0, 0, Home::Aux);
                } else {
                    self.finish(idx, Ok(()));
                }
            }
            Command::PreFetch { .. } | Command::StartStopUnit | Command::PreventAllow { .. } => {
                self.finish(idx, Ok(()))
            }
            Command::TestUnitReady => self.finish(idx, Ok(())),
            Command::WriteSame {
                lba,
                blocks,
                unmap,
                ndob,
            } => self.write_same(idx, lba, blocks, unmap, ndob, bs),
            Command::Unmap { param_len } => self.unmap(idx, param_len, lim),
            Command::CompareAndWrite { lba, blocks, fua } => {
                if blocks == 0 {
                    return self.finish(idx, Ok(()));
                }
                if !self.acquire_range(idx, lba, blocks as u64) {
                    return self.wait(idx);
                }
                let s = &mut self.slots[idx as usize];
                s.fua = fua;
                s.step = Step::Compare;
                self.submit_io(idx, IoOp::Compare, lba, blocks as u64, Home::DataOut);
            }
            Command::OrWrite { lba, blocks, fua } => {
                if blocks == 0 {
                    return self.finish(idx, Ok(()));
                }
                if !self.acquire_range(idx, lba, blocks as u64) {
                    return self.wait(idx);
                }
                let len = (blocks as u64 * bs) as usize;
                let Some(buf) = self.pool.try_alloc(len) else {
                    return self.wait(idx);
                };
                let s = &mut self.slots[idx as usize];
                s.aux = buf;
                s.fua = fua;
                s.step = Step::Main;
                self.submit_io(idx, IoOp::Read, lba, blocks as u64, Home::Aux);
            }
            _ => self.emulate(idx, lim),
        }
    }

    fn write_same(&mut self, idx: u32, lba: u64, blocks: u32, unmap: bool, ndob: bool, bs: u64) {
        let lun = self.lun.clone();
        let info = lun.desc.info();
        let zero = ndob || is_zero(&self.slots[idx as usize].data_out, bs as usize);
        if !self.admit_write(idx, lba, blocks as u64) {
            return self.wait(idx);
        }
        if zero && unmap && info.supports(IoOp::Unmap) {
            return self.submit_io(idx, IoOp::Unmap, lba, blocks as u64, Home::Aux);
        }
        if zero && info.supports(IoOp::WriteZeroes) {
            return self.submit_io(idx, IoOp::WriteZeroes, lba, blocks as u64, Home::Aux);
        }
        let chunk_blocks = (WRITE_SAME_CHUNK_BYTES / bs).min(blocks as u64);
        let len = (chunk_blocks * bs) as usize;
        let Some(mut buf) = self.pool.try_alloc(len) else {
            return self.wait(idx);
        };
        let s = &mut self.slots[idx as usize];
        if ndob {
            buf.fill(len, 0);
        } else {
            replicate(&s.data_out, bs as usize, &mut buf, len);
        }
        s.aux = buf;
        s.step = Step::Write;
        s.cursor = 0;
        self.write_same_next(idx, bs);
    }

    fn write_same_next(&mut self, idx: u32, bs: u64) {
        let s = &self.slots[idx as usize];
        let Command::WriteSame { lba, blocks, .. } = s.cmd else {
            return;
        };
        let done = s.cursor;
        if done >= blocks as u64 {
            return self.finish(idx, Ok(()));
        }
        let per = (s.aux.len() as u64 / bs).max(1);
        let n = per.min(blocks as u64 - done);
        self.slots[idx as usize].cursor += n;
        self.submit_io(idx, IoOp::Write, lba + done, n, Home::Aux);
    }

    fn unmap(&mut self, idx: u32, param_len: u32, lim: &Limits) {
        let s = &self.slots[idx as usize];
        let n = s.data_out.len().min(param_len as usize);
        self.params.clear();
        self.params.resize(n, 0);
        s.data_out.copy_to_slice(&mut self.params);
        let count = match emulate::parse_unmap(param_len, &self.params, lim) {
            Ok(c) => c,
            Err(e) => return self.finish(idx, Err(Fail::Check(e))),
        };
        if !self.slots[idx as usize].gate_open {
            // Admission against COMPARE AND WRITE ranges, descriptor by descriptor: count
            // the write first, then look (the order the range lock relies on).
            self.gate.begin();
            for i in 0..count {
                if let Some(d) = emulate::unmap_descriptor(&self.params, i) {
                    if d.blocks > 0
                        && !self
                            .lun
                            .range_lock()
                            .write_may_proceed(d.lba, d.blocks as u64)
                    {
                        self.gate.end();
                        return self.wait(idx);
                    }
                }
            }
            self.slots[idx as usize].gate_open = true;
        }
        self.unmap_next(idx, count);
    }

    fn unmap_next(&mut self, idx: u32, count: usize) {
        let op = if self.lun.desc.info().supports(IoOp::Unmap) {
            IoOp::Unmap
        } else {
            IoOp::WriteZeroes
        };
        loop {
            let i = self.slots[idx as usize].cursor as usize;
            if i >= count {
                return self.finish(idx, Ok(()));
            }
            self.slots[idx as usize].cursor += 1;
            if let Some(d) = emulate::unmap_descriptor(&self.params, i) {
                if d.blocks > 0 {
                    return self.submit_io(idx, op, d.lba, d.blocks as u64, Home::Aux);
                }
            }
        }
    }

    fn emulate(&mut self, idx: u32, lim: &Limits) {
        let cmd = self.slots[idx as usize].cmd;
        let nexus = self.slots[idx as usize].nexus;
        let r = self.build(idx, nexus, &cmd, lim);
        match r {
            Ok(Some(alloc)) => {
                let n = self.scratch.len().min(alloc as usize);
                if n == 0 {
                    return self.finish(idx, Ok(()));
                }
                match self.pool.try_alloc(n) {
                    Some(mut buf) => {
                        buf.copy_from_slice(&self.scratch[..n]);
                        let s = &mut self.slots[idx as usize];
                        s.data_in = buf;
                        s.data_in_len = n;
                        self.finish(idx, Ok(()))
                    }
                    None => self.finish(idx, Err(Fail::Status(ScsiStatus::Busy))),
                }
            }
            Ok(None) => self.finish(idx, Ok(())),
            Err(f) => self.finish(idx, Err(f)),
        }
    }

    fn mode_ctx(&self, lim: &Limits) -> ModeCtx {
        let vwc = self.lun.desc.info().volatile_write_cache();
        ModeCtx {
            current: ModeValues {
                wce: self.lun.wce.load(Ordering::Acquire),
                d_sense: self.lun.d_sense.load(Ordering::Acquire),
            },
            default: ModeValues {
                wce: vwc,
                d_sense: false,
            },
            wce_changeable: vwc,
            write_protected: !self.writable,
            limits: *lim,
        }
    }

    fn copy_params(&mut self, idx: u32, param_len: u32) {
        let s = &self.slots[idx as usize];
        let n = s.data_out.len().min(param_len as usize);
        self.params.clear();
        self.params.resize(n, 0);
        s.data_out.copy_to_slice(&mut self.params);
    }

    /// Builds the data of an emulated command into `scratch`; returns the allocation length
    /// (None: no data).
    fn build(
        &mut self,
        idx: u32,
        nexus: NexusId,
        cmd: &Command,
        lim: &Limits,
    ) -> Result<Option<u32>, Fail> {
        let out = &mut self.scratch;
        out.clear();
        match *cmd {
            Command::Inquiry { evpd, page, alloc } => {
                let nc = self
                    .nexus
                    .get(nexus.0 as usize)
                    .cloned()
                    .unwrap_or_default();
                let tpg = nc
                    .group
                    .and_then(|g| self.lun.cfg.port_groups.get(g))
                    .map(|g| g.id);
                let c = InquiryCtx {
                    product: &self.lun.cfg.product,
                    revision: &self.lun.cfg.revision,
                    serial: &self.lun.serial,
                    naa: &self.lun.naa,
                    protocol_id: self.lun.cfg.protocol_id,
                    rtpi: nc.initiator.as_ref().map(|_| nc.rtpi),
                    tpg,
                    limits: *lim,
                };
                if evpd {
                    emulate::inquiry_vpd(&c, page, out).map_err(Fail::Check)?;
                } else {
                    emulate::inquiry_standard(&c, out);
                }
                Ok(Some(alloc))
            }
            Command::RequestSense { desc, alloc } => {
                let (ua, _) = self.lun.pending_ua(nexus, true);
                let sense = match ua {
                    Some(asc) => Sense::unit_attention(asc),
                    None => Sense::new(SenseKey::NoSense, Asc::NO_ADDITIONAL_SENSE),
                };
                out.extend_from_slice(SenseBuf::encode(&sense, desc).as_slice());
                Ok(Some(alloc))
            }
            Command::ReportLuns { select, alloc } => {
                self.lun.lun_list(&mut self.lun_ids);
                emulate::report_luns(select, &self.lun_ids, out);
                Ok(Some(alloc))
            }
            Command::ReadCapacity10 => {
                emulate::read_capacity10(lim, out);
                Ok(Some(8))
            }
            Command::ReadCapacity16 { alloc } => {
                emulate::read_capacity16(lim, out);
                Ok(Some(alloc))
            }
            Command::GetLbaStatus { lba, alloc } => {
                emulate::get_lba_status(lba, lim, out);
                Ok(Some(alloc))
            }
            Command::ModeSense {
                ten,
                dbd,
                llbaa,
                pc,
                page,
                subpage,
                alloc,
            } => {
                let c = self.mode_ctx(lim);
                let out = &mut self.scratch;
                emulate::mode_sense(ten, dbd, llbaa, pc, page, subpage, &c, out)
                    .map_err(Fail::Check)?;
                Ok(Some(alloc))
            }
            Command::ModeSelect { ten, param_len } => {
                self.copy_params(idx, param_len);
                let c = self.mode_ctx(lim);
                let v = emulate::parse_mode_select(ten, param_len, &self.params, &c)
                    .map_err(Fail::Check)?;
                if v != c.current {
                    self.lun.wce.store(v.wce, Ordering::Release);
                    self.lun.d_sense.store(v.d_sense, Ordering::Release);
                    self.lun.mode_changed(nexus);
                }
                Ok(None)
            }
            Command::ReportSupportedOpcodes {
                rctd,
                options,
                opcode,
                service_action,
                alloc,
            } => {
                emulate::report_supported_opcodes(
                    rctd,
                    options,
                    opcode,
                    service_action,
                    lim.unmap,
                    out,
                )
                .map_err(Fail::Check)?;
                Ok(Some(alloc))
            }
            Command::ReportSupportedTmfs { repd, alloc } => {
                emulate::report_supported_tmfs(repd, out);
                Ok(Some(alloc))
            }
            Command::ReportTargetPortGroups { extended, alloc } => {
                let lun = &self.lun;
                emulate::report_target_port_groups(
                    extended,
                    &lun.cfg.port_groups,
                    |i| lun.alua_state(i),
                    out,
                );
                Ok(Some(alloc))
            }
            Command::Reserve | Command::Release => {
                let nc = self
                    .nexus
                    .get(nexus.0 as usize)
                    .cloned()
                    .unwrap_or_default();
                let init = nc.initiator.clone().unwrap_or_else(|| "".into());
                let ident = NexusIdent {
                    initiator: &init,
                    rtpi: nc.rtpi,
                };
                let reserve = matches!(cmd, Command::Reserve);
                let r = self.lun.with_pr(|_, st| {
                    let before = st.pr.spc2_holder.clone();
                    let r = if reserve {
                        st.pr.spc2_reserve(&ident)
                    } else {
                        st.pr.spc2_release(&ident)
                    };
                    let changed = before != st.pr.spc2_holder;
                    (r, changed)
                });
                pr_result(r)
            }
            Command::PersistentReserveIn {
                service_action,
                alloc,
            } => {
                let proto = self.lun.cfg.protocol_id;
                let st = self.lun.lock();
                st.pr.pr_in(service_action, proto, out);
                drop(st);
                Ok(Some(alloc))
            }
            Command::PersistentReserveOut {
                service_action,
                scope,
                rtype,
                param_len,
            } => {
                self.copy_params(idx, param_len);
                let p =
                    parse_pr_out(service_action, param_len, &self.params).map_err(Fail::Check)?;
                let nc = self
                    .nexus
                    .get(nexus.0 as usize)
                    .cloned()
                    .unwrap_or_default();
                let init = nc.initiator.clone().unwrap_or_else(|| "".into());
                let ident = NexusIdent {
                    initiator: &init,
                    rtpi: nc.rtpi,
                };
                let uas = &mut self.pr_uas;
                uas.clear();
                let mut preempted = Vec::new();
                let r = self.lun.with_pr(|lun, st| {
                    let gen = st.pr.generation;
                    let res = st.pr.reservation.clone();
                    let regs = st.pr.registrations.len();
                    let r = st.pr.pr_out(&ident, service_action, scope, rtype, &p, uas);
                    if r == PrOutcome::Good && service_action == crate::pr::sa::PREEMPT_AND_ABORT {
                        lun.nexuses_named(st, uas, Asc::REGISTRATIONS_PREEMPTED, &mut preempted);
                    }
                    lun.establish_pr_uas(st, uas);
                    let changed = gen != st.pr.generation
                        || res != st.pr.reservation
                        || regs != st.pr.registrations.len();
                    (r, changed)
                });
                // PREEMPT AND ABORT: the preempted nexuses' tasks end, on every reactor.
                self.lun.abort_nexus_tasks(&preempted);
                pr_result(r)
            }
            _ => Err(Fail::Check(Sense::invalid_opcode())),
        }
    }

    /// Completes slot `idx` and frees it.
    fn finish(&mut self, idx: u32, result: Result<(), Fail>) {
        let d_sense = self.lun.d_sense.load(Ordering::Relaxed);
        let s = &mut self.slots[idx as usize];
        if s.gate_open {
            self.gate.end();
            s.gate_open = false;
        }
        if let Some(g) = s.range.take() {
            self.lun.range_lock().release(g);
        }
        let result = if s.aborted {
            Err(Fail::Status(ScsiStatus::TaskAborted))
        } else {
            result
        };
        let (status, sense) = match result {
            Ok(()) => (ScsiStatus::Good, SenseBuf::EMPTY),
            Err(Fail::Check(sense)) => (
                ScsiStatus::CheckCondition,
                SenseBuf::encode(&sense, d_sense),
            ),
            Err(Fail::Status(st)) => (st, SenseBuf::EMPTY),
        };
        let ok = status == ScsiStatus::Good;
        let mut data_in = std::mem::take(&mut s.data_in);
        let data_in_len = if ok { s.data_in_len } else { 0 };
        if !ok {
            data_in.clear();
        }
        s.aux.clear();
        let c = ScsiCompletion {
            tag: s.tag,
            status,
            sense,
            data_in,
            data_in_len,
            data_out: std::mem::take(&mut s.data_out),
        };
        s.phase = Phase::Free;
        self.free.push(idx);
        self.done.push_back(c);
    }

    /// Continues slot `idx` after its bdev request completed.
    fn on_io(&mut self, c: IoCompletion, lim: &Limits) {
        let idx = c.req.tag as u32;
        let Some(s) = self.slots.get_mut(idx as usize) else {
            return;
        };
        if s.phase != Phase::Io {
            return;
        }
        match s.home {
            Home::DataOut => s.data_out = c.req.buf,
            Home::DataIn => s.data_in = c.req.buf,
            Home::Aux => s.aux = c.req.buf,
        }
        s.phase = Phase::Waiting;
        let op = c.req.op;
        if let Err(e) = c.status {
            return self.finish(
                idx,
                Err(io_sense(e, matches!(op, IoOp::Read | IoOp::Compare))),
            );
        }
        if s.aborted {
            return self.finish(idx, Err(Fail::Status(ScsiStatus::TaskAborted)));
        }
        let bs = lim.block_size as u64;
        match s.cmd {
            Command::WriteAndVerify { lba, blocks, .. } if s.step == Step::Main => {
                s.step = Step::Compare;
                self.submit_io(idx, IoOp::Compare, lba, blocks as u64, Home::DataOut);
            }
            Command::CompareAndWrite { lba, blocks, .. } if s.step == Step::Compare => {
                // Matched: write the second half of the data-out buffer.
                let len = (blocks as u64 * bs) as usize;
                let Some(mut buf) = self.pool.try_alloc(len) else {
                    return self.finish(idx, Err(Fail::Status(ScsiStatus::Busy)));
                };
                let s = &mut self.slots[idx as usize];
                let mut at = 0usize;
                s.data_out.for_each_chunk(len, len, |src| {
                    buf.for_each_chunk_mut(at, src.len(), |dst| {
                        let n = dst.len();
                        dst.copy_from_slice(&src[..n]);
                    });
                    at += src.len();
                });
                s.aux = buf;
                s.step = Step::Write;
                self.submit_io(idx, IoOp::Write, lba, blocks as u64, Home::Aux);
            }
            Command::OrWrite { lba, blocks, .. } if s.step == Step::Main => {
                let len = (blocks as u64 * bs) as usize;
                let s = &mut self.slots[idx as usize];
                let mut at = 0usize;
                let (src, dst) = (&s.data_out, &mut s.aux);
                src.for_each_chunk(0, len, |chunk| {
                    let mut k = 0usize;
                    dst.for_each_chunk_mut(at, chunk.len(), |d| {
                        for b in d.iter_mut() {
                            *b |= chunk[k];
                            k += 1;
                        }
                    });
                    at += chunk.len();
                });
                s.step = Step::Write;
                self.submit_io(idx, IoOp::Write, lba, blocks as u64, Home::Aux);
            }
            Command::WriteSame { .. } if s.step == Step::Write => self.write_same_next(idx, bs),
            Command::Unmap { param_len } => {
                // The parameter list was checked at the start; re-read it (params is shared).
                self.copy_params(idx, param_len);
                match emulate::parse_unmap(param_len, &self.params, lim) {
                    Ok(count) => self.unmap_next(idx, count),
                    Err(e) => self.finish(idx, Err(Fail::Check(e))),
                }
            }
            _ => self.finish(idx, Ok(())),
        }
    }

    /// Moves finished bdev requests along and hands finished tasks to `done`; returns how
    /// many tasks completed.
    pub fn poll(&mut self, mut done: impl FnMut(ScsiCompletion)) -> usize {
        self.check_epoch();
        let lim = self.limits();
        let q = &mut self.io_done;
        self.bdev.poll(|c| q.push_back(c));
        while let Some(c) = self.io_done.pop_front() {
            self.on_io(c, &lim);
        }
        for _ in 0..self.waiting.len() {
            let Some(idx) = self.waiting.pop_front() else {
                break;
            };
            if self.slots[idx as usize].phase == Phase::Waiting {
                self.start(idx, &lim);
            }
        }
        let mut n = 0;
        while let Some(c) = self.done.pop_front() {
            done(c);
            n += 1;
        }
        n
    }

    /// ABORT TASK: the task finishes with TASK ABORTED (at once if it waits, else when its
    /// bdev request returns).
    pub fn abort_task(&mut self, tag: u64) -> TmfResponse {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.phase != Phase::Free && s.tag == tag)
        else {
            return TmfResponse::TaskNotFound;
        };
        self.slots[i].aborted = true;
        TmfResponse::FunctionComplete
    }

    /// ABORT TASK SET / CLEAR TASK SET for `nexus` (task sets are per I_T nexus here).
    pub fn abort_task_set(&mut self, nexus: NexusId) -> TmfResponse {
        for s in &mut self.slots {
            if s.phase != Phase::Free && s.nexus == nexus {
                s.aborted = true;
            }
        }
        TmfResponse::FunctionComplete
    }

    pub fn clear_task_set(&mut self, nexus: NexusId) -> TmfResponse {
        self.abort_task_set(nexus)
    }
}

fn pr_result(r: PrOutcome) -> Result<Option<u32>, Fail> {
    match r {
        PrOutcome::Good => Ok(None),
        PrOutcome::Conflict => Err(Fail::Status(ScsiStatus::ReservationConflict)),
        PrOutcome::Check(s) => Err(Fail::Check(s)),
    }
}
