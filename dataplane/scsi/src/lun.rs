//! The shared side of a logical unit: identity, the bdev, and the state every connection of
//! every reactor sees (reservations, unit attentions, mode parameters, ALUA states).
//!
//! State that changes rarely sits behind one control mutex; the I/O path reads only atomics:
//! a unit-attention generation and a reservation generation (each channel keeps a snapshot
//! and takes the mutex only when the generation moved), the D_SENSE and WCE bits, the ALUA
//! state per port group, and the reset epoch through which a LUN reset reaches the channels
//! of all reactors without a message.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use gyre_bdev::{BdevDesc, IoOp};

use crate::cdb::Limits;
use crate::pr::{NexusIdent, PrState, PrUnitAttention, ReservationView};
use crate::rangelock::RangeLock;
use crate::sense::Asc;
use crate::ScsiError;

/// An I_T nexus, as registered by the transport in a [`NexusTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NexusId(pub u32);

#[derive(Debug)]
struct NexusEntry {
    initiator: Arc<str>,
    rtpi: u16,
    refs: u32,
}

/// The I_T nexuses of a target: initiator port name (for iSCSI "iqn...,i,0x<ISID>") and
/// relative target port id, by small reusable index. Shared by all LUNs of the target.
#[derive(Debug, Default)]
pub struct NexusTable {
    entries: Mutex<Vec<Option<NexusEntry>>>,
    /// Bumped whenever an id starts or stops naming a nexus (channels drop their caches).
    generation: AtomicU64,
}

impl NexusTable {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Option<NexusEntry>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers (or references again) the nexus of `initiator_port` through `rtpi`.
    pub fn register(&self, initiator_port: &str, rtpi: u16) -> NexusId {
        let mut e = self.lock();
        if let Some(i) = e.iter().position(|x| {
            x.as_ref()
                .is_some_and(|x| &*x.initiator == initiator_port && x.rtpi == rtpi)
        }) {
            if let Some(Some(x)) = e.get_mut(i) {
                x.refs += 1;
            }
            return NexusId(i as u32);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        let entry = NexusEntry {
            initiator: initiator_port.into(),
            rtpi,
            refs: 1,
        };
        match e.iter().position(|x| x.is_none()) {
            Some(i) => {
                e[i] = Some(entry);
                NexusId(i as u32)
            }
            None => {
                e.push(Some(entry));
                NexusId((e.len() - 1) as u32)
            }
        }
    }

    /// Drops one reference; the id is free for reuse when the last one goes. Call
    /// [`ScsiLun::nexus_lost`] on each LUN first when the nexus itself is gone.
    pub fn unregister(&self, id: NexusId) {
        let mut e = self.lock();
        if let Some(slot) = e.get_mut(id.0 as usize) {
            if let Some(x) = slot {
                x.refs = x.refs.saturating_sub(1);
                if x.refs == 0 {
                    *slot = None;
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The initiator port name and relative target port id of `id`.
    pub fn get(&self, id: NexusId) -> Option<(Arc<str>, u16)> {
        self.lock()
            .get(id.0 as usize)
            .and_then(|x| x.as_ref())
            .map(|x| (x.initiator.clone(), x.rtpi))
    }
}

/// Asymmetric access states (SPC-4 6.37).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AluaState {
    ActiveOptimized = 0x0,
    ActiveNonOptimized = 0x1,
    Standby = 0x2,
    Unavailable = 0x3,
    Transitioning = 0xF,
}

impl AluaState {
    fn from_code(c: u8) -> AluaState {
        match c {
            0x0 => AluaState::ActiveOptimized,
            0x1 => AluaState::ActiveNonOptimized,
            0x2 => AluaState::Standby,
            0x3 => AluaState::Unavailable,
            _ => AluaState::Transitioning,
        }
    }
}

/// A target port group and the relative target port ids in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGroup {
    pub id: u16,
    pub ports: Vec<u16>,
    pub state: AluaState,
    pub preferred: bool,
}

/// How a LUN presents itself.
#[derive(Debug, Clone)]
pub struct LunConfig {
    /// The LUN number (for REPORT LUNS and logs).
    pub lun: u64,
    /// PRODUCT IDENTIFICATION (16 ASCII characters at most).
    pub product: String,
    /// PRODUCT REVISION LEVEL (4 ASCII characters at most).
    pub revision: String,
    /// UNIT SERIAL NUMBER; derived from the bdev UUID when `None`.
    pub serial: Option<String>,
    /// The 24-bit IEEE company id in the NAA 6 designator.
    pub naa_company_id: u32,
    /// The SCSI transport protocol identifier (5 = iSCSI) used in designators and TransportIDs.
    pub protocol_id: u8,
    /// ALUA target port groups (with the relative target port ids the transport uses). Empty:
    /// one active/optimized group 1 holding port 1.
    pub port_groups: Vec<PortGroup>,
    /// MAXIMUM TRANSFER LENGTH in bytes.
    pub max_transfer_bytes: u32,
}

impl Default for LunConfig {
    fn default() -> Self {
        LunConfig {
            lun: 0,
            product: "Gyre volume".into(),
            revision: "0001".into(),
            serial: None,
            // A locally administered company id (the X bit of the first octet set).
            naa_company_id: 0x0A_4E_59,
            protocol_id: 5,
            port_groups: Vec::new(),
            max_transfer_bytes: 1 << 20,
        }
    }
}

/// Which reset happened, for the unit attention it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    LogicalUnit,
    Target,
}

/// A task management function's response (SAM-5 7.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfResponse {
    FunctionComplete,
    FunctionSucceeded,
    TaskNotFound,
    FunctionRejected,
}

pub(crate) struct LunState {
    pub(crate) pr: PrState,
    ua: HashMap<NexusId, VecDeque<Asc>>,
    seen: HashSet<NexusId>,
    lun_list: Vec<u64>,
}

/// Bytes per WRITE SAME sub-write and the default maximum write same length.
pub(crate) const WRITE_SAME_MAX_BLOCKS: u32 = 1 << 16;
pub(crate) const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
pub(crate) const MAX_UNMAP_DESCRIPTORS: u32 = 256;
pub(crate) const MAX_COMPARE_WRITE_BLOCKS: u8 = 255;

/// A logical unit. `Send + Sync`: shared by every channel on every reactor.
pub struct ScsiLun {
    pub(crate) cfg: LunConfig,
    pub(crate) serial: String,
    pub(crate) desc: BdevDesc,
    pub(crate) nexuses: Arc<NexusTable>,
    pub(crate) naa: [u8; 16],
    state: Mutex<LunState>,
    pub(crate) ua_gen: AtomicU64,
    pub(crate) res_gen: AtomicU64,
    pub(crate) reset_epoch: AtomicU64,
    pub(crate) d_sense: AtomicBool,
    pub(crate) wce: AtomicBool,
    alua: Vec<AtomicU8>,
    /// PREEMPT AND ABORT: nexuses whose tasks every channel must abort, by epoch.
    pub(crate) abort_epoch: AtomicU64,
    aborts: Mutex<VecDeque<(u64, NexusId)>>,
}

impl std::fmt::Debug for ScsiLun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScsiLun")
            .field("lun", &self.cfg.lun)
            .field("bdev", &self.desc.info().name())
            .finish()
    }
}

fn ascii_ok(s: &str, max: usize) -> bool {
    s.len() <= max && s.bytes().all(|b| (0x20..0x7F).contains(&b))
}

impl ScsiLun {
    /// Creates a LUN over an open bdev. Control path.
    pub fn new(
        mut cfg: LunConfig,
        desc: BdevDesc,
        nexuses: Arc<NexusTable>,
    ) -> Result<Arc<ScsiLun>, ScsiError> {
        if !ascii_ok(&cfg.product, 16) {
            return Err(ScsiError::InvalidConfig(
                "product: at most 16 printable ASCII characters".into(),
            ));
        }
        if !ascii_ok(&cfg.revision, 4) {
            return Err(ScsiError::InvalidConfig(
                "revision: at most 4 printable ASCII characters".into(),
            ));
        }
        let uuid = desc.info().uuid();
        let serial = cfg
            .serial
            .clone()
            .unwrap_or_else(|| uuid.simple().to_string());
        if serial.is_empty() || !ascii_ok(&serial, 64) {
            return Err(ScsiError::InvalidConfig(
                "serial: 1 to 64 printable ASCII characters".into(),
            ));
        }
        if cfg.port_groups.is_empty() {
            cfg.port_groups.push(PortGroup {
                id: 1,
                ports: vec![1],
                state: AluaState::ActiveOptimized,
                preferred: false,
            });
        }
        if cfg.max_transfer_bytes < desc.info().block_size() {
            return Err(ScsiError::InvalidConfig(
                "max_transfer_bytes is below one block".into(),
            ));
        }
        // NAA 6 (IEEE Registered Extended): company id, then 100 bits of the UUID.
        let u = uuid.as_bytes();
        let cid = cfg.naa_company_id & 0xFF_FFFF;
        let mut naa = [0u8; 16];
        naa[0] = 0x60 | ((cid >> 20) & 0x0F) as u8;
        naa[1] = (cid >> 12) as u8;
        naa[2] = (cid >> 4) as u8;
        naa[3] = (((cid & 0x0F) << 4) as u8) | (u[0] & 0x0F);
        naa[4..16].copy_from_slice(&u[1..13]);
        let alua = cfg
            .port_groups
            .iter()
            .map(|g| AtomicU8::new(g.state as u8))
            .collect();
        let wce = desc.info().volatile_write_cache();
        Ok(Arc::new(ScsiLun {
            serial,
            desc,
            nexuses,
            naa,
            state: Mutex::new(LunState {
                pr: PrState::default(),
                ua: HashMap::new(),
                seen: HashSet::new(),
                lun_list: vec![cfg.lun],
            }),
            ua_gen: AtomicU64::new(1),
            res_gen: AtomicU64::new(1),
            reset_epoch: AtomicU64::new(0),
            d_sense: AtomicBool::new(false),
            wce: AtomicBool::new(wce),
            alua,
            abort_epoch: AtomicU64::new(0),
            aborts: Mutex::new(VecDeque::new()),
            cfg,
        }))
    }

    /// The bdev's range lock: COMPARE AND WRITE excludes writes from every consumer of the
    /// bdev, not just this LUN's.
    pub(crate) fn range_lock(&self) -> &RangeLock {
        self.desc.info().range_lock()
    }

    pub fn lun(&self) -> u64 {
        self.cfg.lun
    }

    pub fn config(&self) -> &LunConfig {
        &self.cfg
    }

    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn bdev(&self) -> &BdevDesc {
        &self.desc
    }

    pub fn nexus_table(&self) -> &Arc<NexusTable> {
        &self.nexuses
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LunState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the bdev can deallocate (UNMAP and WRITE SAME with UNMAP are offered).
    pub(crate) fn can_unmap(&self) -> bool {
        let i = self.desc.info();
        i.supports(IoOp::Unmap) || i.supports(IoOp::WriteZeroes)
    }

    pub(crate) fn limits(&self) -> Limits {
        let i = self.desc.info();
        let bs = i.block_size();
        Limits {
            block_size: bs,
            num_blocks: i.num_blocks(),
            max_transfer_blocks: self.cfg.max_transfer_bytes / bs,
            // Initiators (libiscsi's WriteSame tests among them) write MAXIMUM WRITE SAME
            // LENGTH blocks with one WRITE: keep it within the transfer limit.
            max_write_same_blocks: WRITE_SAME_MAX_BLOCKS.min(self.cfg.max_transfer_bytes / bs),
            max_compare_write_blocks: (self.cfg.max_transfer_bytes / bs)
                .min(MAX_COMPARE_WRITE_BLOCKS as u32) as u8,
            unmap: self.can_unmap(),
        }
    }

    /// The port group holding relative target port `rtpi`, if any.
    pub(crate) fn group_of(&self, rtpi: u16) -> Option<usize> {
        self.cfg
            .port_groups
            .iter()
            .position(|g| g.ports.contains(&rtpi))
    }

    pub(crate) fn alua_state(&self, group: usize) -> AluaState {
        self.alua
            .get(group)
            .map_or(AluaState::ActiveOptimized, |a| {
                AluaState::from_code(a.load(Ordering::Acquire))
            })
    }

    /// Changes the ALUA state of port group `group_id` (implicit ALUA): every nexus gets
    /// ASYMMETRIC ACCESS STATE CHANGED.
    pub fn set_alua_state(&self, group_id: u16, state: AluaState) -> Result<(), ScsiError> {
        let i = self
            .cfg
            .port_groups
            .iter()
            .position(|g| g.id == group_id)
            .ok_or(ScsiError::UnknownPortGroup(group_id))?;
        self.alua[i].store(state as u8, Ordering::Release);
        self.establish_ua_all(Asc::ASYMMETRIC_ACCESS_STATE_CHANGED, None);
        Ok(())
    }

    /// The LUN numbers REPORT LUNS returns through this LUN.
    pub fn set_lun_list(&self, luns: Vec<u64>) {
        self.lock().lun_list = luns;
    }

    pub(crate) fn lun_list(&self, out: &mut Vec<u64>) {
        out.clear();
        out.extend_from_slice(&self.lock().lun_list);
    }

    /// The target's LUN inventory changed: REPORTED LUNS DATA HAS CHANGED for every nexus.
    pub fn reported_luns_changed(&self) {
        self.establish_ua_all(Asc::REPORTED_LUNS_DATA_HAS_CHANGED, None);
    }

    /// The bdev was resized: CAPACITY DATA HAS CHANGED for every nexus.
    pub fn capacity_changed(&self) {
        self.establish_ua_all(Asc::CAPACITY_DATA_HAS_CHANGED, None);
    }

    /// LUN reset or target reset: releases an SPC-2 reservation, aborts the tasks of every
    /// channel (they finish with TASK ABORTED, noticed through the reset epoch), and leaves
    /// every nexus a reset unit attention. Persistent reservations survive.
    pub fn reset(&self, kind: ResetKind) -> TmfResponse {
        {
            let mut st = self.lock();
            if st.pr.spc2_holder.take().is_some() {
                self.res_gen.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.reset_epoch.fetch_add(1, Ordering::AcqRel);
        let asc = match kind {
            ResetKind::LogicalUnit => Asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED,
            ResetKind::Target => Asc::POWER_ON_RESET,
        };
        self.establish_ua_all(asc, None);
        TmfResponse::FunctionComplete
    }

    /// The I_T nexus `id` is gone (connection and session lost): its SPC-2 reservation is
    /// released and its unit attentions dropped; registrations persist (SPC-4 5.13.1).
    pub fn nexus_lost(&self, id: NexusId) {
        let who = self.nexuses.get(id);
        let mut st = self.lock();
        st.ua.remove(&id);
        st.seen.remove(&id);
        if let (Some((init, rtpi)), Some((hi, hp))) = (&who, &st.pr.spc2_holder) {
            if **init == **hi && rtpi == hp {
                st.pr.spc2_holder = None;
                self.res_gen.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.ua_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// Queues `asc` for every nexus that has talked to this LUN (nexuses that have not yet
    /// get POWER ON anyway), except `except`.
    pub(crate) fn establish_ua_all(&self, asc: Asc, except: Option<NexusId>) {
        let mut st = self.lock();
        let seen: Vec<NexusId> = st.seen.iter().copied().collect();
        for n in seen {
            if Some(n) != except {
                push_ua(&mut st, n, asc);
            }
        }
        self.ua_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// Queues the unit attentions a PR OUT produced, for the nexuses each one names.
    pub(crate) fn establish_pr_uas(&self, st: &mut LunState, uas: &[PrUnitAttention]) {
        if uas.is_empty() {
            return;
        }
        let seen: Vec<NexusId> = st.seen.iter().copied().collect();
        for n in seen {
            let Some((init, rtpi)) = self.nexuses.get(n) else {
                continue;
            };
            for ua in uas {
                let t = &ua.target;
                if *t.initiator == *init && t.rtpi.is_none_or(|p| p == rtpi) {
                    push_ua(st, n, ua.asc);
                }
            }
        }
        self.ua_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// The unit attention pending for `nexus` (establishing POWER ON for a nexus new to this
    /// LUN); removed if `consume`. Also returns whether none remains.
    pub(crate) fn pending_ua(&self, nexus: NexusId, consume: bool) -> (Option<Asc>, bool) {
        let mut st = self.lock();
        if st.seen.insert(nexus) {
            push_ua(&mut st, nexus, Asc::POWER_ON_RESET);
        }
        let Some(q) = st.ua.get_mut(&nexus) else {
            return (None, true);
        };
        let ua = if consume {
            q.pop_front()
        } else {
            q.front().copied()
        };
        let empty = q.is_empty();
        if empty {
            st.ua.remove(&nexus);
        }
        (ua, empty)
    }

    /// A snapshot of the reservation state for a channel.
    pub(crate) fn reservation_view(&self) -> ReservationView {
        let st = self.lock();
        // Read the generation under the lock: changes bump it while holding the lock.
        let gen = self.res_gen.load(Ordering::Acquire);
        ReservationView::from_state(&st.pr, gen)
    }

    /// Runs `f` on the reservation state; bumps the generation if it says so.
    pub(crate) fn with_pr<R>(&self, f: impl FnOnce(&ScsiLun, &mut LunState) -> (R, bool)) -> R {
        let mut st = self.lock();
        let (r, changed) = f(self, &mut st);
        if changed {
            self.res_gen.fetch_add(1, Ordering::AcqRel);
        }
        r
    }

    /// Asks every channel to abort the tasks of `ids` (PREEMPT AND ABORT).
    pub(crate) fn abort_nexus_tasks(&self, ids: &[NexusId]) {
        if ids.is_empty() {
            return;
        }
        let mut q = self.aborts.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = self.abort_epoch.load(Ordering::Acquire) + 1;
        for &id in ids {
            q.push_back((epoch, id));
        }
        while q.len() > 256 {
            q.pop_front();
        }
        self.abort_epoch.store(epoch, Ordering::Release);
    }

    /// Calls `f` for each nexus to abort after epoch `since`; returns the current epoch.
    pub(crate) fn aborts_since(&self, since: u64, mut f: impl FnMut(NexusId)) -> u64 {
        let q = self.aborts.lock().unwrap_or_else(|e| e.into_inner());
        for &(e, id) in q.iter() {
            if e > since {
                f(id);
            }
        }
        self.abort_epoch.load(Ordering::Acquire)
    }

    /// The seen nexuses a PR OUT's unit attentions name with `asc`.
    pub(crate) fn nexuses_named(
        &self,
        st: &LunState,
        uas: &[PrUnitAttention],
        asc: Asc,
        out: &mut Vec<NexusId>,
    ) {
        for &n in &st.seen {
            let Some((init, rtpi)) = self.nexuses.get(n) else {
                continue;
            };
            if uas.iter().any(|ua| {
                ua.asc == asc
                    && *ua.target.initiator == *init
                    && ua.target.rtpi.is_none_or(|p| p == rtpi)
            }) {
                out.push(n);
            }
        }
    }

    pub(crate) fn nexus_ident(&self, id: NexusId) -> Option<(Arc<str>, u16)> {
        self.nexuses.get(id)
    }

    /// Mode parameter change by `by`: the others get MODE PARAMETERS CHANGED.
    pub(crate) fn mode_changed(&self, by: NexusId) {
        self.establish_ua_all(Asc::MODE_PARAMETERS_CHANGED, Some(by));
    }
}

fn push_ua(st: &mut LunState, n: NexusId, asc: Asc) {
    let q = st.ua.entry(n).or_default();
    if asc == Asc::POWER_ON_RESET || asc == Asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED {
        // A reset supersedes everything queued before it (SAM-5 5.14).
        q.clear();
    }
    if !q.contains(&asc) && q.len() < 16 {
        q.push_back(asc);
    }
}

impl NexusIdent<'_> {
    /// Whether two idents name the same nexus.
    pub fn same(&self, initiator: &str, rtpi: u16) -> bool {
        self.initiator == initiator && self.rtpi == rtpi
    }
}
